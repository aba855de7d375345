"""Tiles per second: nucdata's tile path against the naive path and torch-em's MoNuSeg dataset.

Data: the real MoNuSeg images in ``../shared/realdata/monuseg`` (1000 x 1000 TIFFs with
ImageScope XML), converted once into a store; ``--synthetic N`` uses N generated
1000 x 1000 images instead when the folder is absent.

Measured, each for ``--tiles`` tiles of ``--size`` pixels:

* nucdata grid and random tiles, native and resampled (``mpp=0.5``, about 2x down),
  one ``ds[i]`` at a time in this process;
* batches of 16 random tiles: ``tiles.loader()`` in-process (the default) and with 2
  workers (reused shared-memory slots), and a plain ``DataLoader`` with
  ``nucdata.collate`` and 2 workers, each against the in-process loader;
* naive: per tile, read the whole image and instance map from the same store, cut the
  window, relabel it with ``skimage.segmentation.relabel_sequential`` (what a user does
  with ``ds[i]`` and a crop);
* torch-em (optional): ``get_monuseg_dataset(path, patch_shape=(S, S), split="test")``
  over the same images written as TIFFs in torch-em's layout (``images/test``,
  ``labels/test``; no download), run in the Python of ``--torchem-python`` (a separate
  virtual environment, since torch-em pins its own torch). Skipped when not given.

Run::

    python benchmarks/tiles.py                      # nucdata and naive
    python benchmarks/tiles.py --torchem-python /work/venv-torchem/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import nucdata
from nucdata.dataset import NucleusDataset
from nucdata.store import Store, StoreWriter

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "monuseg"

_TORCHEM = r"""
import json, sys, time
import numpy as np, torch
from torch_em.data.datasets.histopathology.monuseg import get_monuseg_dataset
path, size, n, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
ds = get_monuseg_dataset(path, patch_shape=(size, size), split="test", download=False)
for i in range(4):  # warm-up: imports, file cache
    ds[i]
if workers == 0:
    start = time.perf_counter()
    for i in range(n):
        ds[i % len(ds)]
else:
    loader = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=workers)
    start = time.perf_counter()
    seen = 0
    while seen < n:
        for x, y in loader:
            seen += x.shape[0]
            if seen >= n:
                break
print(json.dumps({"seconds": time.perf_counter() - start, "tiles": n}))
"""


def build_store(folder: Path, synthetic: int) -> Store:
    """A MoNuSeg store from the real files (or synthetic 1000 x 1000 images)."""
    path = folder / "store"
    with StoreWriter(path, "monuseg", "bench") as writer:
        if REALDATA.is_dir() and not synthetic:
            from PIL import Image

            from nucdata.datasets import rasterize_regions, read_imagescope

            for xml in sorted((REALDATA / "Annotations").glob("*.xml")):
                rgb = np.asarray(Image.open(REALDATA / "Tissue_Images" / f"{xml.stem}.tif").convert("RGB"))
                annotation = read_imagescope(xml)
                inst, _, _ = rasterize_regions(annotation.regions, rgb.shape[:2])
                writer.add_image(xml.stem, "test", rgb, inst, mpp=annotation.mpp or 0.25)
        else:
            from skimage.draw import disk
            from skimage.segmentation import relabel_sequential

            rng = np.random.default_rng(0)
            for i in range(max(1, synthetic)):
                rgb = rng.integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
                inst = np.zeros((1000, 1000), np.int32)
                for k in range(1, 600):
                    rr, cc = disk((rng.integers(0, 1000), rng.integers(0, 1000)), rng.integers(4, 10), shape=inst.shape)
                    inst[rr, cc] = k
                writer.add_image(f"synthetic_{i}", "test", rgb, relabel_sequential(inst)[0], mpp=0.25)
        writer.publish({})
    return Store(path)


def time_dataset(ds: torch.utils.data.Dataset, n: int, workers: int) -> float:
    """Tiles per second over ``n`` tiles (after a short warm-up): ``ds[i]`` or a plain DataLoader."""
    if workers == 0:
        for i in range(min(4, len(ds))):
            ds[i]
        start = time.perf_counter()
        for i in range(n):
            ds[i % len(ds)]
        return n / (time.perf_counter() - start)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=workers, collate_fn=nucdata.collate,
                                         persistent_workers=True)
    return time_loader(loader, n)


def time_loader(loader, n: int) -> float:
    """Tiles per second over ``n`` tiles of batches from ``loader`` (workers started first)."""
    next(iter(loader))
    start = time.perf_counter()
    seen = 0
    while seen < n:
        for batch in loader:
            seen += batch["image"].shape[0]
            if seen >= n:
                break
    return seen / (time.perf_counter() - start)


class NaiveTiles(torch.utils.data.Dataset):
    """Read the whole image and instance map, cut the window, relabel it."""

    def __init__(self, tiles):
        self.tiles = tiles

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, i: int) -> dict:
        from skimage.segmentation import relabel_sequential

        _, j, ty, tx = self.tiles.locate(i)
        ds = self.tiles.members[0]
        index = int(ds.indices[j])
        rgb = np.array(ds.store.rgb(index))  # the whole image
        inst = np.array(ds.store.instance_map(index))  # and its whole mask
        s = self.tiles.size
        window = np.zeros((s, s, 3), np.uint8)
        part = rgb[ty : ty + s, tx : tx + s]
        window[: part.shape[0], : part.shape[1]] = part
        labels = np.zeros((s, s), np.int32)
        cut = inst[ty : ty + s, tx : tx + s]
        labels[: cut.shape[0], : cut.shape[1]] = relabel_sequential(cut)[0]
        return {"image": torch.from_numpy(window.transpose(2, 0, 1).copy()), "instance_map": torch.from_numpy(labels)}


def write_torchem_layout(store: Store, folder: Path) -> Path:
    """The store's images as torch-em's extracted MoNuSeg layout (images/test, labels/test)."""
    import tifffile

    (folder / "images" / "test").mkdir(parents=True)
    (folder / "labels" / "test").mkdir(parents=True)
    for i in range(store.n_images):
        name = str(store.column("images", "name")[i])
        tifffile.imwrite(folder / "images" / "test" / f"{name}.tif", np.asarray(store.rgb(i)))
        tifffile.imwrite(folder / "labels" / "test" / f"{name}.tif", np.asarray(store.instance_map(i)),
                         compression="zlib")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--tiles", type=int, default=400, help="tiles timed per configuration")
    parser.add_argument("--synthetic", type=int, default=0, help="use N synthetic images instead of realdata")
    parser.add_argument("--torchem-python", default=None, help="python of a venv with torch-em installed")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs; medians are printed")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        store = build_store(Path(tmp), args.synthetic)
        ds = NucleusDataset(store)
        print(f"{store.n_images} images, {store.n_nuclei} nuclei; tiles of {args.size} px; {args.tiles} per row")
        results: dict[str, list[float]] = {}
        loaders: dict[str, list[float]] = {}
        grid = ds.tiles(size=args.size)
        configs = {f"nucdata {sampler}, {'native' if mpp is None else 'mpp 0.5'}, ds[i]":
                   ds.tiles(size=args.size, mpp=mpp, sampler=sampler, length=max(args.tiles, 64))
                   for sampler in ("grid", "random") for mpp in (None, 0.5)}
        batch_rows = {}
        for mpp in (None, 0.5):  # batches of 16 (nucdata.collate), random tiles
            tiles = ds.tiles(size=args.size, mpp=mpp, sampler="random", length=max(args.tiles, 64))
            res = "native" if mpp is None else "mpp 0.5"
            batch_rows[f"{res}: tiles.loader(), 0 workers (default)"] = tiles.loader(batch_size=16)
            batch_rows[f"{res}: tiles.loader(num_workers=2)"] = tiles.loader(batch_size=16, num_workers=2)
            batch_rows[f"{res}: DataLoader + nucdata.collate, 2 workers"] = torch.utils.data.DataLoader(
                tiles, batch_size=16, num_workers=2, collate_fn=nucdata.collate, persistent_workers=True)
        naive_key = "naive (whole image + mask, cut, relabel), ds[i]"
        for _ in range(args.repeats):  # interleaved: load drift hits every row alike
            results.setdefault(naive_key, []).append(time_dataset(NaiveTiles(grid), args.tiles, 0))
            for key, tiles in configs.items():
                results.setdefault(key, []).append(time_dataset(tiles, args.tiles, 0))
            for key, loader in batch_rows.items():
                loaders.setdefault(key, []).append(time_loader(loader, args.tiles))
        rates = {k: statistics.median(v) for k, v in results.items()}
        batch_rates = {k: statistics.median(v) for k, v in loaders.items()}
        if args.torchem_python:
            layout = write_torchem_layout(store, Path(tmp) / "torchem")
            for workers in (0, 2):
                key = f"torch-em get_monuseg_dataset (random), {workers} workers"
                for _ in range(args.repeats):
                    out = subprocess.run([args.torchem_python, "-c", _TORCHEM, str(layout), str(args.size),
                                          str(args.tiles), str(workers)], capture_output=True, text=True)
                    if out.returncode != 0:
                        print(f"{key}: failed\n{out.stderr[-2000:]}")
                        break
                    got = json.loads(out.stdout.strip().splitlines()[-1])
                    results.setdefault(key, []).append(got["tiles"] / got["seconds"])
            rates.update({k: statistics.median(v) for k, v in results.items() if k.startswith("torch-em")})
        naive = rates[naive_key]
        torchem = rates.get("torch-em get_monuseg_dataset (random), 0 workers")
        width = max(map(len, [*rates, *batch_rates]))
        print(f"\nmedians of {args.repeats} interleaved runs; {os.cpu_count()} CPU cores")
        print(f"{'per tile':{width}s}  tiles/s  x naive" + ("  x torch-em" if torchem else ""))
        for key, rate in rates.items():
            line = f"{key:{width}s}  {rate:7.0f}  {rate / naive:7.1f}"
            if torchem:
                line += f"  {rate / torchem:10.1f}"
            print(line)
        print(f"\n{'batches of 16 (random tiles)':{width}s}  tiles/s  x in-process")
        for key, rate in batch_rates.items():
            base = batch_rates[key.split(":")[0] + ": tiles.loader(), 0 workers (default)"]
            print(f"{key:{width}s}  {rate:7.0f}  {rate / base:10.2f}")
        if args.json:
            print(json.dumps({"per_tile": rates, "batches": batch_rates}))

if __name__ == "__main__":
    main()
