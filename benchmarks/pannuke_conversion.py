"""PanNuke conversion benchmark: time and peak memory against reading the fold once.

Generates a PanNuke-shaped fold (float64 ``images.npy`` (N, 256, 256, 3), ``masks.npy``
(N, 256, 256, 6), ``types.npy``) at 1x and 3x ``--patches`` (default 2,000: 9.4 GB and
28 GB of native bytes), then, each in a fresh subprocess and interleaved:

* baseline: stream every byte of images.npy and masks.npy once (memory-mapped slices);
* prepare: ``nucdata.prepare("pannuke", source=fold)`` into a fresh home.

Prints median seconds, the prepare/baseline ratio and the peak resident memory each
subprocess adds over its imports. Flat memory from 1x to 3x is the goal.

    python benchmarks/pannuke_conversion.py                       # 2,000 and 6,000 patches
    python benchmarks/pannuke_conversion.py --patches 300 --repeats 1
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _harness import child_code, measure  # noqa: E402

CHILD = child_code("pannuke", """
for name in ("images/fold1/images.npy", "masks/fold1/masks.npy"):
    array = np.load(folder / "Fold 1" / name, mmap_mode="r")
    for i in range(0, array.shape[0], 16):
        float(np.asarray(array[i:i + 16]).max())  # touches every byte once
""")


def generate(folder: Path, patches: int, seed: int = 0) -> int:
    """Write fold 1 with ``patches`` patches (tiling 64 distinct ones); return nuclei."""
    from nucdata.demo.synth import draw_filled, ellipse_polygon, paint, place_nuclei

    rng = np.random.default_rng(seed)
    top = folder / "Fold 1"
    (top / "images" / "fold1").mkdir(parents=True)
    (top / "masks" / "fold1").mkdir(parents=True)
    distinct = []
    for _ in range(64):
        nuclei = place_nuclei(rng, 256, 256, int(rng.integers(10, 40)))
        inst = draw_filled((256, 256), [ellipse_polygon(n, 16) for n in nuclei])
        masks = np.zeros((256, 256, 6), np.float64)
        channel = rng.integers(0, 5, len(nuclei) + 1)
        ids = np.zeros(5, int)
        for k in range(1, len(nuclei) + 1):
            ids[channel[k]] += 1
            masks[..., channel[k]][inst == k] = ids[channel[k]]
        masks[..., 5] = inst == 0
        distinct.append((paint(rng, inst, np.zeros(len(nuclei), int)).astype(np.float64), masks, len(nuclei)))
    images = np.lib.format.open_memmap(top / "images" / "fold1" / "images.npy", "w+", np.float64, (patches, 256, 256, 3))
    masks = np.lib.format.open_memmap(top / "masks" / "fold1" / "masks.npy", "w+", np.float64, (patches, 256, 256, 6))
    nuclei = 0
    for i in range(patches):
        rgb, mask, n = distinct[i % len(distinct)]
        images[i], masks[i] = rgb, mask
        nuclei += n
    images.flush()
    masks.flush()
    del images, masks
    np.save(top / "images" / "fold1" / "types.npy", np.array(["Breast"] * patches, dtype="<U13"))
    return nuclei


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patches", type=int, default=2000)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the fold (needs ~14 GB per 3,000 patches)")
    args = parser.parse_args()
    rows = []
    for scale in args.scales:
        n = args.patches * scale
        folder = Path(tempfile.mkdtemp(prefix=f"nucdata-pannuke-{n}-", dir=args.workdir))
        try:
            t = time.perf_counter()
            nuclei = generate(folder, n)
            size_gb = sum(p.stat().st_size for p in folder.rglob("*.npy")) / 1e9
            print(f"[{n} patches] generated {size_gb:.1f} GB, {nuclei} nuclei in {time.perf_counter() - t:.0f} s", flush=True)
            med, mem = measure(CHILD, folder, args.repeats)
            rows.append((n, size_gb, med, mem))
            print(f"[{n} patches] read-once {med['baseline']:.1f} s, prepare {med['prepare']:.1f} s, "
                  f"ratio {med['prepare'] / med['baseline']:.2f}; heap peak MiB: read {mem['baseline']:.0f}, "
                  f"prepare {mem['prepare']:.0f}", flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    print("\npatches  native GB  read-once s  prepare s  ratio  heap peak MiB (read / prepare)")
    for n, size_gb, med, mem in rows:
        print(f"{n:7d}  {size_gb:9.1f}  {med['baseline']:11.1f}  {med['prepare']:9.1f}  "
              f"{med['prepare'] / med['baseline']:5.2f}  {mem['baseline']:6.0f} / {mem['prepare']:.0f}")


if __name__ == "__main__":
    main()
