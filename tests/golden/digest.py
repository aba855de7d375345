"""Digests of the demo's store and merged output, for the byte-identity test.

``python tests/golden/digest.py OUT.json`` writes the digests of the current code; the
test (``tests/test_golden.py``) computes them again and compares with the committed
``tests/golden/demo.json``. Only what the run writes deterministically is hashed: the
store's columns and pixels, its manifest without the ``created`` time stamp and the
``card_override`` path (both differ from run to run), and the
merged output's pickles and its copies of the stores (not the timings in its report, nor
the torch checkpoint whose zip container records its own layout).

A store is bytes from integer code and is hashed whole. A published pickle holds trained
probabilities, whose last bits depend on the CPU's float kernels (the same commit gave
three different pickles on three machines of this project, whatever the thread count), so
each pickle is summarised (:func:`pickle_summary`): a hash of what integer code writes
(image names, centroids, field 4), the count of every published label (field 2) and the
mean and mean square of the probabilities (field 3), which ``tests/test_golden.py``
compares with a tolerance far below what any change of rule moves them by.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import sys
from pathlib import Path
from typing import Any

DEMO_DATASETS = ("pannuke", "consep", "monusac", "nucls", "kumar", "monuseg", "tnbc")
BUILD_DATASETS = ["pannuke", "consep", "monuseg"]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest_digest(path: Path) -> str:
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest.pop("created", None)  # the time of the run
    manifest.pop("card_override", None)  # the run's own (temporary) registry folder
    return _sha(json.dumps(manifest, sort_keys=True).encode())


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (manifests without their time stamp)."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if path.name in (".lock",) or path.name.startswith(".nucdata"):
            continue
        out[rel] = _manifest_digest(path) if path.name == "manifest.json" else _sha(path.read_bytes())
    return out


def store_digests(home: Path) -> dict[str, str]:
    """Install and prepare every demo dataset in ``home``; digest its stores."""
    import nucdata
    from nucdata.testing import install

    os.environ["NUCDATA_HOME"] = str(home)
    for name in DEMO_DATASETS:
        install(name, home)
        nucdata.prepare(name)
    return tree_digest(home / "stores")


def pickle_summary(path: Path) -> dict[str, Any]:
    """A published pickle (``{image: [[centroid, label, probability, annotation], ...]}``) in a machine-free form.

    ``records``: sha256 of every image name, centroid and field 4, exact; ``labels``: how
    many nuclei carry each field-2 label; ``probability``: the mean and mean square of
    the finite field-3 values, and how many are NaN.
    """
    with path.open("rb") as f:
        table = pickle.load(f)  # our own output, written by the run this summarises
    exact, labels, total, squares, finite, missing = [], {}, 0.0, 0.0, 0, 0
    for name in sorted(table):
        for centroid, label, probability, annotation in table[name]:
            exact.append([name, [float(c) for c in centroid], int(annotation)])
            labels[str(int(label))] = labels.get(str(int(label)), 0) + 1
            if math.isnan(probability):
                missing += 1
            else:
                total, squares, finite = total + probability, squares + probability**2, finite + 1
    return {"records": _sha(json.dumps(exact).encode()), "labels": dict(sorted(labels.items())),
            "probability": {"mean": round(total / max(finite, 1), 6), "mean_square": round(squares / max(finite, 1), 6),
                            "nan": missing}}


def merged_digests(out: Path) -> dict[str, Any]:
    """A tiny ``build-merged --demo`` (CPU, 1 epoch per stage): its stores' digests, its pickles' summaries."""
    import torch

    from nucdata_models.merge.build import BuildOptions, build_merged

    torch.set_num_threads(1)
    options = BuildOptions(out=out, datasets=BUILD_DATASETS, demo=True, demo_scale=1, crop_size=16,
                           overlays=0, config={"epochs": {"A": 1, "B": 1, "C": 1}, "batch_size": 64,
                                               "device": "cpu"})
    build_merged(options, say=lambda _m: None)
    digests = tree_digest(out)
    keep: dict[str, Any] = {k: v for k, v in digests.items()
                            if k.startswith("stores/") and k.endswith((".npy", "manifest.json"))}
    keep.update({k: pickle_summary(out / k) for k in digests if k.endswith(".pkl")})
    return keep


def main(target: Path) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        digests = {"stores": store_digests(Path(tmp) / "home"),
                   "merged": merged_digests(Path(tmp) / "merged")}
    target.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
