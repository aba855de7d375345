"""Conversion benchmark: ``prepare`` against reading the native files once.

Generates MoNuSeg-shaped input (1000x1000 LZW TIFFs with ImageScope XML, ~400
nuclei per image, 37 training + 14 test images) at 1x and 10x the image count,
then, each in a fresh subprocess and side by side in one run:

* baseline: read every native file once (decode each TIFF, parse each XML);
* prepare: ``nucdata.prepare("monuseg", from_dir=folder)`` into a fresh home.

Prints medians over ``--repeats`` runs, the prepare/baseline time ratio, and the peak
heap (tracemalloc, numpy buffers included) of one extra traced run of each: resident
memory would count the memory-mapped file pages, which are page cache.

    python benchmarks/conversion.py                 # 1x and 10x, 3 repeats
    python benchmarks/conversion.py --scales 1 --repeats 1
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _harness import child_code, measure  # noqa: E402

CHILD = child_code("monuseg", """
from nucdata._util.images import read_rgb
from nucdata.datasets._imagescope import read_imagescope
for xml in sorted(folder.rglob("*.xml")):
    read_rgb(next(xml.parent.parent.rglob(xml.stem + ".tif")))
    read_imagescope(xml)
""")


def generate(folder: Path, scale: int, seed: int = 0) -> tuple[int, int]:
    """Write a MoNuSeg-layout folder; return (images, regions)."""
    from nucdata.datasets.kumar import KUMAR_STEMS
    from nucdata.testing import draw_filled, ellipse_polygon, paint, place_nuclei
    from nucdata.testing.monuseg import BONUS, TEST, imagescope_xml

    rng = np.random.default_rng(seed)
    train_dir = folder / "MoNuSeg 2018 Training Data"
    (train_dir / "Tissue Images").mkdir(parents=True)
    (train_dir / "Annotations").mkdir()
    test_dir = folder / "MoNuSegTestData"
    test_dir.mkdir()
    unique = []
    for stem in sorted(KUMAR_STEMS) + BONUS + TEST:
        nuclei = place_nuclei(rng, 1000, 1000, 400)
        polygons = [ellipse_polygon(n, 24, 0.05, rng) for n in nuclei]
        inst = draw_filled((1000, 1000), polygons)
        unique.append((stem, paint(rng, inst, np.zeros(len(polygons), int)), imagescope_xml(polygons, 0.252, False)))
    regions = 0
    for copy in range(scale):
        for stem, rgb, xml in unique:
            name = stem if copy == 0 else f"{stem}-copy{copy}"
            if stem in TEST:
                image_path, xml_path = test_dir / f"{name}.tif", test_dir / f"{name}.xml"
            else:
                image_path = train_dir / "Tissue Images" / f"{name}.tif"
                xml_path = train_dir / "Annotations" / f"{name}.xml"
            Image.fromarray(rgb).save(image_path, compression="tiff_lzw")
            xml_path.write_text(xml)
            regions += xml.count("<Region ")
    return len(unique) * scale, regions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for scale in args.scales:
        folder = Path(tempfile.mkdtemp(prefix=f"nucdata-bench-{scale}x-"))
        try:
            t = time.perf_counter()
            images, regions = generate(folder, scale)
            print(f"[{scale}x] generated {images} images, {regions} regions in {time.perf_counter() - t:.0f} s", flush=True)
            med, peak = measure(CHILD, folder, args.repeats)
            rows.append((scale, images, regions, med, peak))
            print(f"[{scale}x] baseline read {med['baseline']:.2f} s, prepare {med['prepare']:.2f} s, "
                  f"ratio {med['prepare'] / med['baseline']:.2f}; heap peak: read-once "
                  f"{peak['baseline']:.0f} MiB, prepare {peak['prepare']:.0f} MiB", flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    print("\nscale  images  regions  read-once s  prepare s  ratio  heap peak MiB (read / prepare)")
    for scale, images, regions, med, peak in rows:
        print(f"{scale:>4}x  {images:6d}  {regions:7d}  {med['baseline']:11.2f}  {med['prepare']:9.2f}  "
              f"{med['prepare'] / med['baseline']:5.2f}  {peak['baseline']:6.0f} / {peak['prepare']:.0f}")


if __name__ == "__main__":
    main()
