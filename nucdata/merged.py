"""Reading a merged dataset: ``<label_set>/<dataset>.pkl`` files in the published format.

Each pickle is ``{image filename: [[centroid, predicted label, probability of that
label, ground-truth label or -1], ...]}`` — the format of the authors' released merged
dataset and of ``nucdata build-merged``; both open with :func:`open_merged`.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np


# -- reading ---------------------------------------------------------------------------
class MergedData:
    """A merged dataset read from its pickles (nucdata's output or the authors' release).

    ``merged[label_set, dataset]`` is ``{image filename: arrays}`` with ``centroid``
    (K, 2), ``predicted`` (K,), ``probability`` (K,) and ``ground_truth`` (K,; -1 none).
    """

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder)
        self.files = {(p.parent.name, p.stem): p for p in sorted(self.folder.glob("*/*.pkl"))}
        if not self.files:
            from nucdata.errors import MissingFilesError

            raise MissingFilesError(f"{self.folder}: no <label_set>/<dataset>.pkl files; this is not a merged dataset folder.")

    @property
    def label_sets(self) -> list[str]:
        return sorted({k[0] for k in self.files})

    @property
    def datasets(self) -> list[str]:
        return sorted({k[1] for k in self.files})

    def __getitem__(self, key: tuple[str, str]) -> dict[str, dict[str, np.ndarray]]:
        with open(self.files[key], "rb") as fh:
            raw = pickle.load(fh)
        out = {}
        for image, nuclei in raw.items():
            rows = list(nuclei)
            out[image] = {
                "centroid": np.array([np.asarray(r[0], float).reshape(2) for r in rows]).reshape(-1, 2),
                "predicted": np.array([int(r[1]) for r in rows], np.int64),
                "probability": np.array([float(r[2]) for r in rows], np.float32),
                "ground_truth": np.array([int(r[3]) for r in rows], np.int64),
            }
        return out

    def table(self, label_set: str, dataset: str):
        """Every nucleus of one pickle as an ``xarray.Dataset`` (dim ``nucleus``)."""
        import xarray as xr

        images = self[label_set, dataset]
        names = np.concatenate([[name] * len(v["predicted"]) for name, v in images.items()]) if images else np.zeros(0, str)
        cat = {k: np.concatenate([v[k] for v in images.values()]) if images else np.zeros(0) for k in
               ("centroid", "predicted", "probability", "ground_truth")}
        return xr.Dataset({"image": ("nucleus", names), "centroid": (("nucleus", "xy"), cat["centroid"].reshape(-1, 2)),
                           "predicted": ("nucleus", cat["predicted"]), "probability": ("nucleus", cat["probability"]),
                           "ground_truth": ("nucleus", cat["ground_truth"])},
                          coords={"xy": ["x", "y"]}, attrs={"label_set": label_set, "dataset": dataset})


def open_merged(folder: str | os.PathLike[str]) -> MergedData:
    """Open a merged dataset folder of ``<label_set>/<dataset>.pkl`` files."""
    return MergedData(folder)
