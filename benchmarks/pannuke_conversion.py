"""PanNuke conversion benchmark: time and peak RSS against reading the native bytes once.

Writes a PanNuke-shaped fold straight through memory maps (float64 ``images.npy``
(N, 256, 256, 3), ``masks.npy`` (N, 256, 256, 6), ``types.npy``; N = ``--patches``,
default 500, i.e. 2.4 GB, tiling 64 distinct synthetic patches). The 3x case adds
``Fold 2`` and ``Fold 3`` as hard links to the same files (3 x N patches, three folds as
in the real dataset) so that it needs no more disk; ``--single-fold`` instead writes one
fold of 3 x N patches. Before writing anything the script prints the disk space it will
need at most (native files plus the largest store; about 3 GB at the default, 12 GB with
``--patches 2000``, the size of a real fold) and stops if the work folder's disk has
less free.

Each measurement runs in a fresh process started by a small wrapper that reports the
worker's own time (after its imports) and ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` (the worker's peak resident
set, which includes the pages of any memory map it touched). Both workers import
nucdata first, so the import footprint is the same on both sides:

* read-once: read every byte of every ``images.npy`` and ``masks.npy`` once, in 16 MB
  positioned reads;
* prepare --jobs J: ``nucdata.prepare("pannuke", from_dir=folder, check_counts=False,
  jobs=J)`` into a fresh data home, for every ``--jobs`` value (default ``1`` and ``2``;
  ``default`` is the cores less one). With a process pool the peak RSS is that of the
  largest single process (``ru_maxrss`` of the children).

Runs are interleaved; medians over ``--repeats`` are printed with the ratios.

    python benchmarks/pannuke_conversion.py --patches 500 --scales 1 3

    python benchmarks/pannuke_conversion.py                  # 500 and 1,500 patches, ~3 GB of disk
    python benchmarks/pannuke_conversion.py --patches 2000 --workdir /big/disk   # a real fold's size, ~12 GB
    python benchmarks/pannuke_conversion.py --patches 300 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WORKER = r"""
import json, os, shutil, sys, tempfile, time
from pathlib import Path
import numpy as np
import nucdata
mode, folder = sys.argv[1], Path(sys.argv[2])
start = time.perf_counter()  # after the imports: they cost the same on both sides
if mode == "read":
    buf = bytearray(16 << 20)
    view = memoryview(buf)
    for path in sorted(folder.rglob("*.npy")):
        if path.name == "types.npy":
            continue
        with open(path, "rb", buffering=0) as fh:
            while fh.readinto(view):
                pass
else:
    home = tempfile.mkdtemp(prefix="nucdata-bench-home-", dir=sys.argv[3])
    try:
        jobs = None if sys.argv[4] == "default" else int(sys.argv[4])
        nucdata.prepare("pannuke", from_dir=folder, root=home, check_counts=False, jobs=jobs)
    finally:
        shutil.rmtree(home, ignore_errors=True)
print(json.dumps({"seconds": time.perf_counter() - start}))
"""

WRAPPER = r"""
import json, resource, subprocess, sys
out = subprocess.run([sys.executable, "-c", sys.argv[1], *sys.argv[2:]], check=True,
                     capture_output=True, text=True)
seconds = json.loads(out.stdout.strip().splitlines()[-1])["seconds"]
print(json.dumps({"seconds": seconds,
                  "rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def write_fold(top: Path, fold: int, patches: int, seed: int = 0) -> int:
    """Write ``top/Fold <fold>/...`` with ``patches`` patches; return the number of nuclei."""
    from nucdata.testing import draw_filled, ellipse_polygon, paint, place_nuclei

    rng = np.random.default_rng(seed)
    root = top / f"Fold {fold}"
    (root / "images" / f"fold{fold}").mkdir(parents=True)
    (root / "masks" / f"fold{fold}").mkdir(parents=True)
    distinct = []
    for _ in range(64):
        nuclei = place_nuclei(rng, 256, 256, int(rng.integers(10, 40)))
        inst = draw_filled((256, 256), [ellipse_polygon(n, 16) for n in nuclei])
        masks = np.zeros((256, 256, 6), np.float64)
        channel = rng.integers(0, 5, len(nuclei) + 1)
        ids = np.zeros(5, int)
        for k in range(1, len(nuclei) + 1):
            ids[channel[k]] += 1  # ids restart per channel, as in PanNuke
            masks[..., channel[k]][inst == k] = ids[channel[k]]
        masks[..., 5] = inst == 0
        rgb = paint(rng, inst, np.zeros(len(nuclei), int)).astype(np.float64)
        distinct.append((rgb, masks, len(nuclei)))
    images = np.lib.format.open_memmap(root / "images" / f"fold{fold}" / "images.npy", "w+", np.float64,
                                       (patches, 256, 256, 3))
    masks = np.lib.format.open_memmap(root / "masks" / f"fold{fold}" / "masks.npy", "w+", np.float64,
                                      (patches, 256, 256, 6))
    nuclei = 0
    block = 64
    tile_rgb = np.stack([d[0] for d in distinct])
    tile_masks = np.stack([d[1] for d in distinct])
    for start in range(0, patches, block):  # whole blocks of 64 patches per assignment
        stop = min(patches, start + block)
        images[start:stop] = tile_rgb[: stop - start]
        masks[start:stop] = tile_masks[: stop - start]
        nuclei += sum(d[2] for d in distinct[: stop - start])
    images.flush()
    masks.flush()
    del images, masks
    np.save(root / "images" / f"fold{fold}" / "types.npy", np.array(["Breast"] * patches, dtype="<U13"))
    return nuclei


#: bytes per patch of the native float64 files (images 3 channels + masks 6 channels)
NATIVE_PER_PATCH = 256 * 256 * (3 + 6) * 8
#: bytes per patch in the store (uint8 RGB and int32 instance map), nucleus columns aside
STORE_PER_PATCH = 256 * 256 * (3 + 4)


def disk_needed(patches: int, single_fold: bool) -> int:
    """Most bytes on disk at once: the native files and the store being prepared from them."""
    at_1x = patches * (NATIVE_PER_PATCH + STORE_PER_PATCH)
    native_3x = 3 * patches if single_fold else patches  # hard links take no space
    return max(at_1x, native_3x * NATIVE_PER_PATCH + 3 * patches * STORE_PER_PATCH)


def link_fold(top: Path, source: int, fold: int) -> None:
    """``Fold <fold>`` as hard links to ``Fold <source>``'s files."""
    for path in (top / f"Fold {source}").rglob("*.npy"):
        rel = path.relative_to(top / f"Fold {source}").as_posix().replace(f"fold{source}", f"fold{fold}")
        target = top / f"Fold {fold}" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, target)


def run(mode: str, folder: Path, scratch: Path, jobs: str = "default") -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", WRAPPER, WORKER, mode, str(folder), str(scratch), jobs],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patches", type=int, default=500,
                        help="patches in fold 1 (default 500, ~3 GB of disk; a real fold has ~2,600)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--single-fold", action="store_true", help="3x as one fold of 3N patches (needs 3x disk)")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 3], choices=[1, 3],
                        help="fold sizes to run, in multiples of --patches (default: 1 3)")
    parser.add_argument("--jobs", nargs="+", default=["1", "2"],
                        help="prepare --jobs values to time side by side (default: 1 2; 'default' = the cores less one)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder for the generated files (created if missing; default: the system temp folder)")
    args = parser.parse_args()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    base = args.workdir if args.workdir is not None else Path(tempfile.gettempdir())
    need = disk_needed(args.patches, args.single_fold)
    free = shutil.disk_usage(base).free
    print(f"will write up to {need / 1e9:.1f} GB under {base} ({free / 1e9:.1f} GB free); "
          f"removed at the end", flush=True)
    if need > free:
        sys.exit(f"not enough free space in {base}: pass a smaller --patches or a --workdir on a larger disk")
    rows = []
    work = Path(tempfile.mkdtemp(prefix="nucdata-pannuke-bench-", dir=args.workdir))
    modes = ["read", *(f"prepare --jobs {j}" for j in args.jobs)]
    try:
        for scale in sorted(set(args.scales)):
            folder = work / f"x{scale}"
            t = time.perf_counter()
            if scale == 1 or args.single_fold:
                if scale == 3:
                    shutil.rmtree(work / "x1", ignore_errors=True)  # disk: one fold at a time
                write_fold(folder, 1, args.patches * scale)
            else:  # 3x: fold 1 of N patches, folds 2 and 3 hard links to it
                if (work / "x1").exists():
                    (work / "x1").rename(folder)
                else:
                    write_fold(folder, 1, args.patches)
                link_fold(folder, 1, 2)
                link_fold(folder, 1, 3)
            native = float(sum(p.stat().st_size for p in folder.rglob("*.npy")))  # links count thrice
            print(f"[{scale}x] {args.patches * scale} patches, {native / 1e9:.1f} GB native "
                  f"(ready in {time.perf_counter() - t:.0f} s)", flush=True)
            runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
            run("read", folder, work)  # warm the page cache alike for every side
            for _ in range(args.repeats):  # interleaved: drift hits every side alike
                for mode in modes:
                    jobs = mode.rsplit(" ", 1)[-1] if mode != "read" else "default"
                    runs[mode].append(run("read" if mode == "read" else "prepare", folder, work, jobs))
            med = {m: {k: statistics.median(r[k] for r in v) for k in ("seconds", "rss_mib")} for m, v in runs.items()}
            rows.append((scale, args.patches * scale, native, med))
            print(f"[{scale}x] " + ", ".join(f"{m} {med[m]['seconds']:.1f} s ({med[m]['rss_mib']:.0f} MiB)" for m in modes),
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nmedians over {args.repeats} runs; {os.cpu_count()} CPUs; default jobs = {max(1, (os.cpu_count() or 1) - 1)}")
    print("scale  patches  native GB  mode                    seconds  x read-once  peak RSS MiB")
    for scale, n, native, med in rows:
        for mode in modes:
            print(f"{scale:4d}x  {n:7d}  {native / 1e9:9.1f}  {mode:22s}  {med[mode]['seconds']:7.1f}"
                  f"  {med[mode]['seconds'] / med['read']['seconds']:11.2f}  {med[mode]['rss_mib']:12.0f}")
    if len(rows) == 2:
        for mode in modes[1:]:
            t1, t3 = rows[0][3][mode], rows[1][3][mode]
            print(f"3x / 1x, {mode}: time {t3['seconds'] / t1['seconds']:.2f}, peak RSS {t3['rss_mib'] / t1['rss_mib']:.2f}")

if __name__ == "__main__":
    main()
