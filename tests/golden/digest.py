"""Digests of the demo's store and merged output, for the byte-identity test.

``python tests/golden/digest.py OUT.json`` writes the digests of the current code; the
test (``tests/test_golden.py``) computes them again and compares with the committed
``tests/golden/demo.json``. Only what the run writes deterministically is hashed: the
store's columns and pixels, its manifest without the ``created`` time stamp and the
``card_override`` path (both differ from run to run), and the
merged output's pickles and merged-store columns (not the timings in its report, nor the
torch checkpoint whose zip container records its own layout).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

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


def merged_digests(out: Path) -> dict[str, str]:
    """A tiny ``build-merged --demo`` (CPU, 1 epoch per stage); digest its published labels."""
    import torch

    from nucdata_models.merge.build import BuildOptions, build_merged

    torch.set_num_threads(1)
    options = BuildOptions(out=out, datasets=BUILD_DATASETS, demo=True, demo_scale=1, crop_size=16,
                           overlays=0, config={"epochs": {"A": 1, "B": 1, "C": 1}, "batch_size": 64,
                                               "device": "cpu"})
    build_merged(options, say=lambda _m: None)
    digests = tree_digest(out)
    keep = {k: v for k, v in digests.items()
            if k.endswith(".pkl") or (k.startswith("stores/") and k.endswith((".npy", "manifest.json")))}
    return keep


def main(target: Path) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        digests = {"stores": store_digests(Path(tmp) / "home"),
                   "merged": merged_digests(Path(tmp) / "merged")}
    target.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
