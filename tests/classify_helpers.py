"""A tiny ``build-merged --demo`` output for the classify tests, built once per test session.

Both tests/models/test_classify.py and tests/test_classify_cli.py use it (the first to
call :func:`tiny_model` builds it under the session's base temporary folder, the other
finds it there).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DATASETS = ["pannuke", "consep", "monuseg"]


def tiny_options(out: Path):
    from nucdata_models.merge.build import BuildOptions

    return BuildOptions(out=out, datasets=DATASETS, demo=True, demo_scale=1, crop_size=16, overlays=0,
                        config={"epochs": {"A": 1, "B": 1, "C": 0}, "batch_size": 64, "device": "cpu"})


def tiny_model(tmp_path_factory) -> Path:
    """The output folder of a tiny demo build (three datasets, one epoch, 16 px crops)."""
    import torch

    from nucdata._util.locks import dataset_lock
    from nucdata.store import is_merged_output
    from nucdata_models.merge.build import build_merged

    root = tmp_path_factory.getbasetemp() / "classify-model"
    root.mkdir(parents=True, exist_ok=True)
    out = root / "out"
    with dataset_lock(root):
        if not is_merged_output(out):
            threads = torch.get_num_threads()
            torch.set_num_threads(2)
            try:
                build_merged(tiny_options(out), say=lambda _m: None)
            finally:
                torch.set_num_threads(threads)
    return out


def demo_home(out: Path) -> Path:
    """The data home the demo build prepared its datasets in."""
    from nucdata_models.merge.build import demo_key, work_dir

    return work_dir(out) / f"demo-{demo_key(tiny_options(out))}"


def write_tiles(out: Path, dataset: str, folder: Path, count: int = 3) -> list[str]:
    """Write ``count`` images of a demo store as PNGs with their instance maps (``<stem>_masks.png``)."""
    from PIL import Image

    from nucdata.formats import write_instances
    from nucdata.store import Store

    store = Store(out / "stores" / dataset)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    stems = []
    for i in range(store.n_images):
        if len(stems) == count:
            break
        if store.nucleus_slice(i).stop == store.nucleus_slice(i).start:
            continue
        stem = f"{dataset}-{i}"
        Image.fromarray(np.asarray(store.rgb(i))).save(folder / "images" / f"{stem}.png")
        write_instances(folder / "masks" / f"{stem}_masks.png", np.asarray(store.instance_map(i)))
        stems.append(stem)
    return stems
