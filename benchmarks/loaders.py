"""Crop-serving benchmark: the crop bank against a fair naive user and a numpy gather.

All rows serve shuffled batches of ``--batch-size`` crops (``--size`` px, RGB and the
nucleus's mask, ``(B, 4, S, S)`` uint8) from one generated store (1000 x 1000 images,
``--nuclei`` nuclei each, written through the real writer):

* naive (the baseline): what a user does without a bank: for every nucleus of the batch,
  slice its window out of the memory-mapped store (``store.rgb(i)``,
  ``store.instance_map(i)``; zeros beyond the image), compare the ids with its own, and
  stack the crops;
* floor: a numpy gather of the batch's rows of the bank into a preallocated array
  (``np.take(bank, rows, axis=0, out=..., mode="clip")``): the copy every bank reader
  must make; and
  the same gather into a new array per batch (a loader whose batches the caller may keep
  needs new memory per batch, whose first-touch page faults cost extra);
* ``nucdata.crop_loader`` with 0 and 2 workers, over independently shuffled nuclei and
  over shuffled contiguous runs (``contiguous=True``: each batch one slice of the bank).

Rows are interleaved (every row once per repeat, the order rotating); medians, the ratio
to the naive row and the share of the floor are printed.

    python benchmarks/loaders.py
    python benchmarks/loaders.py --images 4 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _harness import interleaved, print_rows  # noqa: E402


def build_store(home: Path, images: int, nuclei: int) -> None:
    """A store of ``images`` 1000x1000 images written through the real writer."""
    from skimage.segmentation import relabel_sequential

    import nucdata
    from nucdata.store import StoreWriter
    from nucdata.testing import draw_filled, ellipse_polygon, paint, place_nuclei

    rng = np.random.default_rng(0)
    final = home / "stores" / "bench" / "1"
    with StoreWriter(final, "bench", "1") as writer:
        for i in range(images):
            cells = place_nuclei(rng, 1000, 1000, nuclei)
            inst = draw_filled((1000, 1000), [ellipse_polygon(c, 20) for c in cells])
            inst = relabel_sequential(inst)[0]
            writer.add_image(f"img{i}", "all", paint(rng, inst, np.zeros(len(cells), int)), inst)
        writer.publish({"nucdata_version": nucdata.__version__})


class Naive:
    """Per nucleus, a slice of the memory-mapped store (the fair naive)."""

    def __init__(self, store, size: int):
        self.store, self.size = store, size
        self.centroid = np.asarray(store.column("nuclei", "centroid"))
        self.image = np.asarray(store.column("nuclei", "image"))
        self.start = np.asarray(store.column("images", "nucleus_start"))

    def crop(self, row: int) -> np.ndarray:
        i, s = int(self.image[row]), self.size
        rgb, inst = self.store.rgb(i), self.store.instance_map(i)
        h, w = inst.shape
        x, y = (int(round(v)) - s // 2 for v in self.centroid[row])
        out = np.zeros((4, s, s), np.uint8)
        y0, y1, x0, x1 = max(0, y), min(h, y + s), max(0, x), min(w, x + s)
        out[:3, y0 - y : y1 - y, x0 - x : x1 - x] = np.asarray(rgb[y0:y1, x0:x1]).transpose(2, 0, 1)
        out[3, y0 - y : y1 - y, x0 - x : x1 - x] = (inst[y0:y1, x0:x1] == row - int(self.start[i]) + 1) * 255
        return out

    def rate(self, order: np.ndarray, batch: int) -> float:
        start = time.perf_counter()
        for b in range(0, order.size, batch):
            np.stack([self.crop(int(r)) for r in order[b : b + batch]])
        return order.size / (time.perf_counter() - start)


def floor_rate(bank: np.ndarray, order: np.ndarray, batch: int, epochs: int, reuse: bool = True) -> float:
    """Crops per second of a numpy gather of each batch's rows: into one preallocated array
    (``reuse``), or into a new array per batch (what a loader whose batches may be kept makes)."""
    out = np.empty((batch, *bank.shape[1:]), bank.dtype)
    start = time.perf_counter()
    seen = 0
    for _ in range(epochs):
        for b in range(0, order.size - batch + 1, batch):
            if reuse:  # mode="clip": numpy buffers ``out`` (a second copy) under the default mode
                np.take(bank, order[b : b + batch], axis=0, out=out, mode="clip")
            else:
                np.take(bank, order[b : b + batch], axis=0)
            seen += batch
    return seen / (time.perf_counter() - start)


def loader_rate(loader, epochs: int) -> float:
    """Crops per second over ``epochs`` epochs of a crop loader (workers started first)."""
    next(iter(loader))
    start = time.perf_counter()
    seen = 0
    for _ in range(epochs):
        for batch in loader:
            seen += batch["image"].shape[0]
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--nuclei", type=int, default=400, help="per image")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--naive-count", type=int, default=2048, help="nuclei timed for the naive row")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10, help="epochs per bank measurement")
    args = parser.parse_args()

    import torch

    import nucdata
    from nucdata.collection import crops_of
    from nucdata.store import Store
    from nucdata.views import build_bank

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        build_store(home, args.images, args.nuclei)
        store = Store(home / "stores" / "bench" / "1")
        t = time.perf_counter()
        bank = build_bank(store, args.size)
        cut = time.perf_counter() - t
        crops = crops_of([nucdata.NucleusDataset(store)], args.size)
        n = len(crops)
        print(f"generated store: {store.n_images} images of 1000 x 1000, {n} nuclei; bank of {args.size} px crops "
              f"cut once in {cut:.1f} s ({n / cut:,.0f} crops/s); {os.cpu_count()} CPU cores; "
              f"batch size {args.batch_size}", flush=True)
        rng = np.random.default_rng(0)
        naive = Naive(store, args.size)
        bank_array = np.asarray(bank.crops).view(np.ndarray)
        loaders = {f"bank{' contiguous' if c else ''}, {w} workers": nucdata.crop_loader(
            crops, batch_size=args.batch_size, shuffle=True, num_workers=w, contiguous=c)
            for c in (False, True) for w in (0, 2)}
        rows = {
            "naive (slice the memory-mapped store per nucleus)":
                lambda: naive.rate(rng.permutation(n)[: min(args.naive_count, n)], args.batch_size),
            "floor (numpy gather into a preallocated batch)":
                lambda: floor_rate(bank_array, rng.permutation(n), args.batch_size, args.epochs),
            "numpy gather into a new batch each time":
                lambda: floor_rate(bank_array, rng.permutation(n), args.batch_size, args.epochs, reuse=False),
            **{name: (lambda lo=lo: loader_rate(lo, args.epochs)) for name, lo in loaders.items()},
        }
        runs = interleaved(rows, args.repeats)
        medians = {k: statistics.median(v) for k, v in runs.items()}
        print_rows(f"crops, batches of {args.batch_size}, medians of {args.repeats} interleaved repeats", medians,
                   "naive (slice the memory-mapped store per nucleus)", "floor (numpy gather into a preallocated batch)",
                   unit="crops/s", spread=runs)
        print("crop_loader's default is 0 workers (in-process)")


if __name__ == "__main__":
    main()
