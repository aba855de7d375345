"""Tiles per second: nucdata's tiles against a naive user, skimage, a copy-only floor and torch-em.

Data: the real MoNuSeg images in ``../shared/realdata/monuseg`` (1000 x 1000 TIFFs with
ImageScope XML), converted once into a store. Without that folder the benchmark stops
with a message, unless ``--synthetic N`` asks for N generated 1000 x 1000 images instead;
rows are then labelled "synthetic", never "MoNuSeg".

Every comparison is interleaved: within each of ``--repeats`` repeats every row runs
once (the order rotating), ours and theirs alternating, and the medians are printed with
the ratio to the row's baseline and its share of the floor. Each row makes the same
``--tiles`` random tiles of ``--size`` pixels (the same windows: the baselines and the
floor cut the windows ``ds.tiles(...).locate(i)`` gives):

* native tiles, ``ds[i]`` one at a time in this process:

  - naive (the baseline): per tile, read the whole image (as the store lays it out) and
    instance map from the same store, cut the window, relabel it with
    ``skimage.segmentation.relabel_sequential`` and look the types up (what a user does
    with ``ds[i]`` and a crop);
  - floor: a numpy script that only builds the sample's three arrays in the output
    format of the code under test (the image window copied from the store into a new
    ``(3, S, S)`` uint8 array, the instance window copied into a new int32 array, and
    a type map of the sample's dtype written from it): no relabelling, no lookups;
  - nucdata grid tiles and random tiles;

* resampled tiles (``mpp=0.5``, about 2x down from MoNuSeg's ~0.25), same layout, the
  baseline being ``skimage.transform.rescale`` (``anti_aliasing=True``; nearest neighbour
  for the instance map) on the native window (plus the filter's margin), the floor the
  native one (a resampled sample holds the same arrays); the first pass over a fresh
  dataset (which fills the resampled-image cache) is printed apart;
* batches of 16 random tiles: ``tiles.loader()`` in-process (the default), with 2
  workers, and a plain ``DataLoader`` with ``nucdata.collate`` and 2 workers;
* torch-em (with ``--torchem-python``, the Python of a virtual environment with torch-em,
  which pins its own torch): ``get_monuseg_dataset(path, patch_shape=(S, S),
  split="test", n_samples=...)`` over the same images written as TIFFs in torch-em's
  layout (``images/test``, ``labels/test``; no download), as its docs allow (enough
  samples that its workers never restart, ``persistent_workers=True``) and like for like
  (its float standardisation and random flips off, uint8 images), ``ds[i]`` in-process
  and a 2-worker ``DataLoader``; each repeat runs it in a fresh process right after our
  rows, so the two alternate.

Run::

    python benchmarks/tiles.py                      # needs ../shared/realdata/monuseg
    python benchmarks/tiles.py --synthetic 6        # generated images, labelled synthetic
    python benchmarks/tiles.py --torchem-python /work/venv-torchem/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import nucdata
from nucdata.dataset import NucleusDataset
from nucdata.store import Store, StoreWriter

sys.path.insert(0, str(Path(__file__).parent))
from _harness import interleaved, print_rows  # noqa: E402

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "monuseg"

_TORCHEM = r"""
import json, sys, time
import numpy as np, torch
from torch_em.data.datasets.histopathology.monuseg import get_monuseg_dataset
path, size, n, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)

def identity(raw):
    return raw

def no_augmentation(raw, labels):
    return raw, labels

def rate(ds, workers):
    if workers == 0:
        for i in range(4):  # warm-up: imports, file cache
            ds[i]
        start = time.perf_counter()
        for i in range(n):
            ds[i % len(ds)]
        return n / (time.perf_counter() - start)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=workers, shuffle=True,
                                         persistent_workers=True)
    it = iter(loader)
    next(it)  # workers started
    start, seen = time.perf_counter(), 0
    while seen < n:
        x, y = next(it)
        seen += x.shape[0]
    return seen / (time.perf_counter() - start)

samples = 16 * n  # enough that an epoch never ends inside a measurement
modes = {
    "documented": dict(n_samples=samples),
    "like for like": dict(n_samples=samples, raw_transform=identity, transform=no_augmentation,
                          dtype=torch.uint8, label_dtype=torch.int32),
}
out = {}
for name, kwargs in modes.items():
    ds = get_monuseg_dataset(path, patch_shape=(size, size), split="test", download=False, **kwargs)
    for workers in (0, 2):
        out[f"torch-em {name}, {'ds[i]' if workers == 0 else '2 workers, batches of 16'}"] = rate(ds, workers)
print(json.dumps(out))
"""


def build_store(folder: Path, synthetic: int) -> tuple[Store, str]:
    """A MoNuSeg store of the real files, or of ``synthetic`` generated 1000 x 1000 images."""
    path = folder / "store"
    with StoreWriter(path, "monuseg", "bench") as writer:
        if not synthetic:
            from PIL import Image

            from nucdata.datasets import rasterize_regions, read_imagescope

            xmls = sorted((REALDATA / "Annotations").glob("*.xml"))
            for xml in xmls:
                rgb = np.asarray(Image.open(REALDATA / "Tissue_Images" / f"{xml.stem}.tif").convert("RGB"))
                annotation = read_imagescope(xml)
                inst, _, _ = rasterize_regions(annotation.regions, rgb.shape[:2])
                rng = np.random.default_rng(len(writer.images["name"]))
                labels = rng.integers(-1, 4, int(inst.max()))  # types, so that the type map has work
                writer.add_image(xml.stem, "test", rgb, inst, labels, mpp=annotation.mpp or 0.25)
            label = f"MoNuSeg ({len(xmls)} real images)"
        else:
            from skimage.draw import disk
            from skimage.segmentation import relabel_sequential

            rng = np.random.default_rng(0)
            for i in range(synthetic):
                rgb = rng.integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
                inst = np.zeros((1000, 1000), np.int32)
                for k in range(1, 600):
                    rr, cc = disk((rng.integers(0, 1000), rng.integers(0, 1000)), rng.integers(4, 10), shape=inst.shape)
                    inst[rr, cc] = k
                inst = relabel_sequential(inst)[0]
                writer.add_image(f"synthetic_{i}", "test", rgb, inst, rng.integers(-1, 4, int(inst.max())), mpp=0.25)
            label = f"synthetic ({synthetic} generated images)"
        writer.publish({})
    return Store(path), label


def planes_of(store: Store, index: int) -> tuple[np.ndarray, bool]:
    """The image's pixels as stored: ``(3, H, W)`` for a planar store, else ``(H, W, 3)``."""
    if hasattr(store, "planes"):
        return store.planes(index), True
    return store.rgb(index), False


def per_tile_rate(make, windows: list, n: int) -> float:
    """Tiles per second of ``make(window)`` over the first ``n`` windows (after 4 warm-ups)."""
    for w in windows[:4]:
        make(w)
    start = time.perf_counter()
    for w in windows[:n]:
        make(w)
    return n / (time.perf_counter() - start)


class Windows:
    """The random tiles' windows and what the baselines and the floor need to cut them."""

    def __init__(self, tiles, n: int):
        from nucdata.views import image_scales

        ds = tiles.members[0]
        self.store, self.size = ds.store, tiles.size
        self.labels = np.asarray(ds.labels, np.int64)
        self.scale = dict(enumerate(image_scales(ds, tiles.mpp).tolist()))
        self.list = []
        for i in range(n):
            _, j, ty, tx = tiles.locate(i)
            self.list.append((int(ds.indices[j]), j, int(ty), int(tx)))
        sample = tiles[0]
        self.type_dtype = sample["type_map"].numpy().dtype
        self.views = {}

    def view(self, index: int):
        if index not in self.views:
            pixels, planar = planes_of(self.store, index)
            self.views[index] = (pixels.view(np.ndarray), planar,
                                 self.store.instance_map(index).view(np.ndarray),
                                 self.store.nucleus_slice(index).start)
        return self.views[index]

    # -- the floor ---------------------------------------------------------------------
    def floor(self, window) -> None:
        """Only build the sample's three arrays (new arrays, the output format's dtypes)."""
        index, _, ty, tx = window
        pixels, planar, inst, _ = self.view(index)
        s = self.size
        ty, tx = min(ty, inst.shape[0] - s), min(tx, inst.shape[1] - s)
        if planar:
            image = np.array(pixels[:, ty : ty + s, tx : tx + s])
        else:
            image = np.ascontiguousarray(pixels[ty : ty + s, tx : tx + s].transpose(2, 0, 1))
        ids = np.array(inst[ty : ty + s, tx : tx + s])
        types = ids.astype(self.type_dtype)
        return image, ids, types

    # -- the naive user ----------------------------------------------------------------
    def _finish(self, window_chw: np.ndarray, cut: np.ndarray, start: int) -> dict:
        from skimage.segmentation import relabel_sequential

        s = self.size
        image = np.zeros((3, s, s), np.uint8)
        image[:, : window_chw.shape[1], : window_chw.shape[2]] = window_chw
        relabelled, _, inverse = relabel_sequential(cut)
        labels = np.zeros((s, s), np.int32)
        labels[: cut.shape[0], : cut.shape[1]] = relabelled
        original = np.asarray(inverse.out_values)  # original id of each new id 0..K
        native = self.labels[start + original[original > 0] - 1]
        lut = np.zeros(original.size + 1, np.int64)
        lut[1 : native.size + 1] = np.where(native >= 0, native + 1, -1)
        return {"image": torch.from_numpy(image),
                "instance_map": torch.from_numpy(labels), "type_map": torch.from_numpy(lut[labels])}

    def naive(self, window) -> dict:
        """Read the whole image and instance map, cut the window, relabel, look the types up."""
        index, _, ty, tx = window
        start = self.store.nucleus_slice(index).start
        pixels, planar = planes_of(self.store, index)
        whole = np.array(pixels)  # the whole image, as stored
        inst = np.array(self.store.instance_map(index))  # and its whole mask
        s = self.size
        window = whole[:, ty : ty + s, tx : tx + s] if planar else whole[ty : ty + s, tx : tx + s].transpose(2, 0, 1)
        return self._finish(window, inst[ty : ty + s, tx : tx + s], start)

    def skimage(self, window) -> dict:
        """skimage ``rescale`` on the native window (and the filter's margin), then as naive."""
        from skimage.transform import rescale

        index, j, ty, tx = window
        scale = self.scale[j]
        start = self.store.nucleus_slice(index).start
        rgb, inst = self.store.rgb(index), self.store.instance_map(index)
        h, w = inst.shape
        s = self.size
        margin = int(4 * max(0.0, (scale - 1) / 2) + 2)
        y0, x0 = max(0, int(ty * scale) - margin), max(0, int(tx * scale) - margin)
        y1, x1 = min(h, int((ty + s) * scale) + margin + 1), min(w, int((tx + s) * scale) + margin + 1)
        small = rescale(np.asarray(rgb[y0:y1, x0:x1]), 1 / scale, anti_aliasing=True, channel_axis=2,
                        preserve_range=True)
        ids = rescale(np.asarray(inst[y0:y1, x0:x1]), 1 / scale, order=0, anti_aliasing=False,
                      preserve_range=True).astype(np.int32)
        oy, ox = int(round(ty - y0 / scale)), int(round(tx - x0 / scale))
        part = np.clip(small[oy : oy + s, ox : ox + s] + 0.5, 0, 255).astype(np.uint8)
        return self._finish(part.transpose(2, 0, 1), ids[oy : oy + s, ox : ox + s], start)


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


def write_torchem_layout(store: Store, folder: Path) -> Path:
    """The store's images as torch-em's extracted MoNuSeg layout (images/test, labels/test)."""
    import tifffile

    (folder / "images" / "test").mkdir(parents=True)
    (folder / "labels" / "test").mkdir(parents=True)
    for i in range(store.n_images):
        name = str(store.column("images", "name")[i])
        tifffile.imwrite(folder / "images" / "test" / f"{name}.tif", np.ascontiguousarray(store.rgb(i)))
        tifffile.imwrite(folder / "labels" / "test" / f"{name}.tif", np.asarray(store.instance_map(i)),
                         compression="zlib")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--tiles", type=int, default=600, help="tiles timed per row")
    parser.add_argument("--baseline-tiles", type=int, default=100, help="tiles timed for the naive and skimage rows")
    parser.add_argument("--synthetic", type=int, default=0, metavar="N",
                        help="benchmark N generated 1000 x 1000 images instead of the real MoNuSeg files")
    parser.add_argument("--torchem-python", default=None, help="python of a venv with torch-em installed")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats; medians are printed")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()
    if not args.synthetic and not REALDATA.is_dir():
        sys.exit(f"benchmarks/tiles.py: the real MoNuSeg files are not in {REALDATA} (Annotations/*.xml and "
                 "Tissue_Images/*.tif). Put them there, or pass --synthetic N to benchmark N generated "
                 "1000 x 1000 images instead (the rows are then labelled 'synthetic').")
    torch.set_num_threads(1)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store, data = build_store(Path(tmp), args.synthetic)
        ds = NucleusDataset(store)
        n, nb, s = args.tiles, min(args.baseline_tiles, args.tiles), args.size
        print(f"{data}: {store.n_images} images, {store.n_nuclei} nuclei; tiles of {s} px; "
              f"{n} tiles per row ({nb} for the naive and skimage rows); {os.cpu_count()} CPU cores; "
              f"nucdata {nucdata.__version__}")
        length = max(4 * n, 64)
        runs: dict[str, list[float]] = {}
        native_windows = None
        for res, mpp in (("native", None), ("mpp 0.5", 0.5)):
            random_tiles = ds.tiles(size=s, mpp=mpp, sampler="random", length=length)
            grid_tiles = ds.tiles(size=s, mpp=mpp)
            windows = Windows(random_tiles, length)
            native_windows = native_windows or windows  # the floor: a sample's arrays, whatever the mpp
            t0 = time.perf_counter()
            fresh = ds.tiles(size=s, mpp=mpp, sampler="random", length=length)
            for i in range(n):
                fresh[i]
            first = n / (time.perf_counter() - t0)
            baseline = f"{res}: naive (whole image + mask, cut, relabel)" if mpp is None else \
                f"{res}: skimage rescale on the window"
            make_baseline = windows.naive if mpp is None else windows.skimage
            rows = {
                baseline: lambda make=make_baseline, w=windows: per_tile_rate(make, w.list, nb),
                f"{res}: floor (copy the three arrays only)": lambda w=native_windows: per_tile_rate(w.floor, w.list, n),
                f"{res}: nucdata random tiles, ds[i]": lambda t=random_tiles: per_tile_rate(t.__getitem__, list(range(n)), n),
                f"{res}: nucdata grid tiles, ds[i]": lambda t=grid_tiles: per_tile_rate(
                    t.__getitem__, [i % len(t) for i in range(n)], n),
            }
            runs.update(interleaved(rows, args.repeats))
            medians = {k: statistics.median(runs[k]) for k in rows}
            medians[f"{res}: nucdata random tiles, first pass of a fresh dataset"] = first
            print_rows(f"per tile, {res} ({data})", medians, baseline, f"{res}: floor (copy the three arrays only)",
                       spread=runs)
            results[f"per tile, {res}"] = medians

        loaders = {}
        for res, mpp in (("native", None), ("mpp 0.5", 0.5)):
            tiles = ds.tiles(size=s, mpp=mpp, sampler="random", length=length)
            loaders[f"{res}: tiles.loader(), 0 workers (default)"] = tiles.loader(batch_size=16)
            loaders[f"{res}: tiles.loader(num_workers=2)"] = tiles.loader(batch_size=16, num_workers=2)
            loaders[f"{res}: DataLoader + nucdata.collate, 2 workers"] = torch.utils.data.DataLoader(
                tiles, batch_size=16, num_workers=2, collate_fn=nucdata.collate, persistent_workers=True)
        batch_runs = interleaved({k: (lambda lo=lo: time_loader(lo, n)) for k, lo in loaders.items()}, args.repeats)
        for res in ("native", "mpp 0.5"):
            medians = {k: statistics.median(v) for k, v in batch_runs.items() if k.startswith(res)}
            print_rows(f"batches of 16 random tiles, {res}", medians, f"{res}: tiles.loader(), 0 workers (default)",
                       None, spread=batch_runs)
            results[f"batches, {res}"] = medians
        del loaders

        if args.torchem_python:
            layout = write_torchem_layout(store, Path(tmp) / "torchem")
            native = ds.tiles(size=s, sampler="random", length=length)
            loader = native.loader(batch_size=16, num_workers=2)
            theirs: dict[str, list[float]] = {}
            ours: dict[str, list[float]] = {"nucdata random tiles, ds[i]": [],
                                            "nucdata tiles.loader(num_workers=2), batches of 16": []}
            for _ in range(args.repeats):  # ours, then theirs, every repeat
                ours["nucdata random tiles, ds[i]"].append(per_tile_rate(native.__getitem__, list(range(n)), n))
                ours["nucdata tiles.loader(num_workers=2), batches of 16"].append(time_loader(loader, n))
                out = subprocess.run([args.torchem_python, "-c", _TORCHEM, str(layout), str(s), str(n), "1"],
                                     capture_output=True, text=True)
                if out.returncode != 0:
                    print(f"\ntorch-em: failed; its rows are skipped\n{out.stderr[-2000:]}")
                    break
                for key, rate in json.loads(out.stdout.strip().splitlines()[-1]).items():
                    theirs.setdefault(key, []).append(rate)
            if theirs:
                medians = {k: statistics.median(v) for k, v in {**ours, **theirs}.items()}
                print_rows(f"native random tiles against torch-em ({data})", medians, None, None,
                           spread={**ours, **theirs})
                one, batches = medians["nucdata random tiles, ds[i]"], medians["nucdata tiles.loader(num_workers=2), batches of 16"]
                for key, rate in theirs.items():
                    ref = one if "ds[i]" in key else batches
                    print(f"  nucdata is {ref / statistics.median(rate):.1f}x {key}")
                results["torch-em"] = medians
        else:
            print("\ntorch-em: skipped (pass --torchem-python PY, a Python with torch-em installed)")
        if args.json:
            print(json.dumps(results))


if __name__ == "__main__":
    main()
