"""Crop-serving benchmark: the crop bank against the naive per-nucleus approach.

The naive approach is what the authors' training code does: for every nucleus, read the
whole image (PNG) and the whole instance mask (``.npy``) from disk and cut the crop. The
bank approach cuts every crop once into a memory-mapped uint8 bank and serves batches
from it (``nucdata.crop_loader``: one gather per batch), with 0 and 2 DataLoader
workers, over independently shuffled nuclei and over shuffled contiguous runs
(``contiguous=True``: each batch is one slice of the bank). All run side by side in one
process on the same generated store (1000x1000 images, 400 nuclei each, 3,200 nuclei);
the figures are medians over ``--repeats``.

    python benchmarks/loaders.py
    python benchmarks/loaders.py --images 4 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


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


def naive_rate(store, folder: Path, size: int, count: int) -> float:
    """Crops per second when every nucleus re-reads its image (PNG) and mask (npy)."""
    for i in range(store.n_images):
        Image.fromarray(np.asarray(store.rgb(i))).save(folder / f"img{i}.png")
        np.save(folder / f"img{i}.npy", np.asarray(store.instance_map(i)))
    centroids = np.asarray(store.column("nuclei", "centroid"))
    image_of = np.asarray(store.column("nuclei", "image"))
    start = time.perf_counter()
    half = size // 2
    for row in range(count):
        i = int(image_of[row])
        rgb = np.asarray(Image.open(folder / f"img{i}.png").convert("RGB"))
        inst = np.load(folder / f"img{i}.npy")
        x, y = (int(round(v)) for v in centroids[row])
        rgb = np.pad(rgb, ((half, half), (half, half), (0, 0)), mode="reflect")
        inst = np.pad(inst, half)
        crop = rgb[y : y + size, x : x + size]
        mask = inst[y : y + size, x : x + size] == (row - int(store.column("images", "nucleus_start")[i]) + 1)
        assert crop.shape[:2] == mask.shape
    return count / (time.perf_counter() - start)


def bank_rate(crops, workers: int, batch_size: int, epochs: int, contiguous: bool = False) -> float:
    """Crops per second over ``epochs`` shuffled epochs of ``nucdata.crop_loader``."""
    import nucdata

    loader = nucdata.crop_loader(crops, batch_size=batch_size, shuffle=True, num_workers=workers,
                                 contiguous=contiguous)
    next(iter(loader))  # start the workers before timing
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
    parser.add_argument("--naive-count", type=int, default=200, help="nuclei timed for the naive approach")
    parser.add_argument("--repeats", type=int, default=3)
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
        build_bank(store, args.size)
        cut = time.perf_counter() - t
        ds = nucdata.NucleusDataset(store)
        crops = crops_of([ds], args.size)
        n = len(crops)
        print(f"{store.n_images} images, {n} nuclei; bank of {args.size}px crops cut once in {cut:.1f} s "
              f"({n / cut:,.0f} crops/s)", flush=True)
        rates: dict[str, list[float]] = {"naive (PNG + npy per nucleus)": [],
                                         "bank, 0 workers": [], "bank, 2 workers": [],
                                         "bank contiguous, 0 workers": [], "bank contiguous, 2 workers": []}
        (home / "naive").mkdir()
        for _ in range(args.repeats):  # interleaved, so drift hits every approach alike
            rates["naive (PNG + npy per nucleus)"].append(naive_rate(store, home / "naive", args.size, min(args.naive_count, n)))
            for workers in (0, 2):
                rates[f"bank, {workers} workers"].append(bank_rate(crops, workers, args.batch_size, args.epochs))
                rates[f"bank contiguous, {workers} workers"].append(
                    bank_rate(crops, workers, args.batch_size, args.epochs, contiguous=True))
        med = {k: statistics.median(v) for k, v in rates.items()}
        naive = med["naive (PNG + npy per nucleus)"]
        print(f"\n{os.cpu_count()} CPU cores; batch size {args.batch_size}; medians of {args.repeats} runs")
        print(f"{'approach':32s} {'crops/s':>12s} {'x naive':>9s} {'x 0 workers':>12s}")
        for name, rate in med.items():
            base = med.get(name.replace("2 workers", "0 workers"))
            versus = f"{rate / base:12.2f}" if base and name != "naive (PNG + npy per nucleus)" else " " * 12
            print(f"{name:32s} {rate:12,.0f} {rate / naive:9.0f} {versus}")
        print("crop_loader's default is 0 workers (in-process); workers reuse a few shared-memory slots")


if __name__ == "__main__":
    main()
