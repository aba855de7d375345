"""The one home of build-merged's defaults: datasets, epochs, demo size, crop sizes.

The dataset list is derived from the registry (the cards' ``order``), never written by
hand; the label sets of the merged dataset are ``nucdata.labels.MERGED_LABEL_SETS``.
Importing this module reads the packaged cards (JSON) only: no torch, no numpy.
"""

from __future__ import annotations

from nucdata._util.deprecation import moved_attributes
from nucdata.catalog import datasets_in_order

#: Every dataset build-merged knows, labelled ones first (the cards' ``order``).
ALL_DATASETS = tuple(datasets_in_order())
#: Epochs per stage of a real build with the nucdata recipe.
EPOCHS = {"A": 10, "B": 10, "C": 10}
#: Epochs per stage of ``--demo`` with the nucdata recipe (a quick run on two cores).
DEMO_EPOCHS = {"A": 6, "B": 4, "C": 4}
#: Size of the ``--demo`` world (4: ~4,800 nuclei; ~300: full scale, ~350,000 nuclei).
DEMO_SCALE = 4
#: Crop side in pixels per recipe (the paper cuts 64 px context crops).
RECIPE_CROP_SIZE = {"nucdata": 32, "paper": 64}
#: torch intra-op threads of build-merged on a CPU of at most two cores: one thread
#: predicted 2-10x faster than two on two shared cores, quiet or beside a busy process,
#: where two threads fight each other and every other job (benchmarks/predict_defaults.py,
#: docs/build-merged.md "CPU defaults"). More cores: torch's own default (not measured).
FEW_CORES_THREADS = 1


def cpu_threads(cores: int | None = None) -> int | None:
    """build-merged's torch thread count on the CPU: :data:`FEW_CORES_THREADS` on <= 2 cores, else ``None`` (torch's)."""
    import os

    cores = os.cpu_count() if cores is None else cores
    return FEW_CORES_THREADS if (cores or 1) <= 2 else None


def _merged_label_sets() -> tuple[str, ...]:
    from nucdata.labels import MERGED_LABEL_SETS

    return MERGED_LABEL_SETS


__getattr__ = moved_attributes(__name__, {"MERGED_SETS": ("nucdata.labels.MERGED_LABEL_SETS", _merged_label_sets)})
