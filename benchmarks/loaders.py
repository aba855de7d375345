"""Crop-serving benchmark: the crop bank against the naive per-nucleus approach.

The naive approach is what the authors' training code does: for every nucleus, read the
whole image and the whole instance mask from disk and cut the crop. The bank approach
cuts every crop once into a memory-mapped uint8 bank and serves batches from it
(``nucdata.crop_loader``), with 0 and 2 DataLoader workers. Both run side by side in one
process on the same generated store (1000x1000 images, ~400 nuclei each); the figures
are medians over ``--repeats``.

    python benchmarks/loaders.py
    python benchmarks/loaders.py --images 4 --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def build_store(home: Path, images: int, nuclei: int) -> None:
    """A store of ``images`` 1000x1000 images written through the real writer."""
    import nucdata
    from nucdata.demo.synth import draw_filled, ellipse_polygon, paint, place_nuclei
    from nucdata.store import StoreWriter

    rng = np.random.default_rng(0)
    final = home / "stores" / "bench" / "1"
    with StoreWriter(final, "bench", "1") as writer:
        for i in range(images):
            cells = place_nuclei(rng, 1000, 1000, nuclei)
            inst = draw_filled((1000, 1000), [ellipse_polygon(c, 20) for c in cells])
            from nucdata.store import relabel_sequential

            inst, _ = relabel_sequential(inst)
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


def bank_rate(crops, workers: int, batch_size: int, epochs: int) -> float:
    import nucdata

    loader = nucdata.crop_loader(crops, batch_size=batch_size, shuffle=True, num_workers=workers)
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
    args = parser.parse_args()

    import torch

    import nucdata
    from nucdata.crops import build_bank
    from nucdata.multi import crops_of
    from nucdata.store import Store

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
        rates: dict[str, list[float]] = {"naive": [], "bank, 0 workers": [], "bank, 2 workers": []}
        (home / "naive").mkdir()
        for _ in range(args.repeats):
            rates["naive"].append(naive_rate(store, home / "naive", args.size, min(args.naive_count, n)))
            rates["bank, 0 workers"].append(bank_rate(crops, 0, args.batch_size, 3))
            rates["bank, 2 workers"].append(bank_rate(crops, 2, args.batch_size, 3))
        med = {k: statistics.median(v) for k, v in rates.items()}
        print(f"\n{'approach':18s} {'crops/s (median)':>18s} {'x naive':>9s}")
        for name, rate in med.items():
            print(f"{name:18s} {rate:18,.0f} {rate / med['naive']:9.0f}")


if __name__ == "__main__":
    main()
