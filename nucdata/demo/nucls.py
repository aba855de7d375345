"""Demo NuCLS archive ``NuCLS_dataset.zip``: ``rgb/``, ``csv/``, ``mask/``, folds.

Quirks reproduced: FOV stems ``<slide>_id-<hex>_left-..._top-..._bottom-..._right-...``,
CSV rows of both types (``polyline`` contours and ``rectangle`` boxes with their five
corners), quoted comma-separated coordinates, raw/main/super classifications,
``csv/ALL_FOV_LOCATIONS.csv`` among the FOV tables, 3-channel mask PNGs (channel 0 the
class code, 253 for the FOV, instance id = channel 1 x channel 2), hospital-based
``train_test_splits/fold_<k>_{train,test}.csv`` and a debug fold 999.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from ..labelsets import mapping, native_vocabulary
from . import DemoArchives, scratch_folder, zip_tree
from .synth import draw_filled, ellipse_polygon, paint, place_nuclei
from .world import STAIN_SHIFT, World

SLIDES = {"TCGA-A2-A0SX-DX1": ("A2", 1), "TCGA-AR-A1AR-DX1": ("AR", 1),
          "TCGA-E2-A1B6-DX1": ("E2", 2), "TCGA-OL-A5D6-DX1": ("OL", 2)}
FOVS_PER_SLIDE = 2


def _hierarchy(code: int, target: str) -> str:
    row = mapping("nucls", target).row(code)
    return row.classes[0] if row.kind == "exact" else "AMBIGUOUS"


def generate(folder: Path, rng: np.random.Generator, world: World | None = None, scale: int = 1) -> DemoArchives:
    fovs = FOVS_PER_SLIDE * scale
    names = {code: name for code, name, _ in native_vocabulary("nucls")}
    raw_codes = [c for c in names if c != 99]
    classes: dict[str, int] = {}
    regions: dict[str, int] = {}
    truth: dict[str, list] = {}
    appearances = world.appearances() if world else None
    with scratch_folder() as tmp:
        top = tmp / "NuCLS_dataset"
        for sub in ("rgb", "csv", "mask", "visualization", "train_test_splits"):
            (top / sub).mkdir(parents=True)
        locations = [["", "fovname", "xmin", "ymin", "xmax", "ymax"]]
        for slide, (_, fold) in SLIDES.items():
            for _ in range(fovs):
                h, w = int(rng.integers(70, 120)), int(rng.integers(70, 120))
                left, top_y = int(rng.integers(1000, 90000)), int(rng.integers(1000, 90000))
                stem = (f"{slide}_id-{rng.integers(0, 16**12):012x}{rng.integers(0, 16**12):012x}"
                        f"_left-{left}_top-{top_y}_bottom-{top_y + h}_right-{left + w}")
                count = int(rng.integers(5, 10))
                kinds = world.kinds_for("nucls", rng, count) if world else None
                nuclei = place_nuclei(rng, h, w, count, kinds, appearances, margin=2.0)
                truth[stem] = [(n.cx, n.cy, n.kind) for n in nuclei]
                codes = [world.native_code("nucls", n.kind) if world else int(rng.choice(raw_codes)) for n in nuclei]
                if not world and nuclei:
                    codes[-1] = 99  # one 'unlabeled' annotation
                polygons = [np.round(ellipse_polygon(n, 14)) for n in nuclei]
                inst = draw_filled((h, w), polygons)
                shift = STAIN_SHIFT["nucls"] if world else (0, 0, 0)
                rgb = paint(rng, inst, np.array([n.kind for n in nuclei], int), appearances, shift)
                rows = [["", "raw_classification", "main_classification", "super_classification", "type",
                         "xmin", "ymin", "xmax", "ymax", "coords_x", "coords_y"]]
                mask = np.zeros((h, w, 3), np.uint8)
                mask[..., 0] = 253
                for i, (poly, code) in enumerate(zip(polygons, codes, strict=True)):
                    xs, ys = poly[:, 0].astype(int), poly[:, 1].astype(int)
                    kind = "rectangle" if i % 4 == 3 else "polyline"
                    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max(), ys.max()
                    if kind == "rectangle":
                        xs, ys = np.array([x0, x1, x1, x0, x0]), np.array([y0, y0, y1, y1, y0])
                    raw = names[code]
                    main = _hierarchy(code, "nucls_main") if code != 99 else "AMBIGUOUS"
                    sup = _hierarchy(code, "nucls_super") if code != 99 else "AMBIGUOUS"
                    rows.append([str(i), raw, main, sup, kind, x0, y0, x1, y1,
                                 ",".join(map(str, xs)), ",".join(map(str, ys))])
                    where = inst == i + 1
                    mask[where] = (code, 1, i + 1)
                    classes[str(code)] = classes.get(str(code), 0) + 1
                split = f"fold{fold}"
                regions[split] = regions.get(split, 0) + len(polygons)
                Image.fromarray(rgb).save(top / "rgb" / f"{stem}.png")
                Image.fromarray(mask).save(top / "mask" / f"{stem}.png")
                Image.fromarray(rgb).save(top / "visualization" / f"{stem}.png")
                with open(top / "csv" / f"{stem}.csv", "w", newline="") as fh:
                    csv.writer(fh, quoting=csv.QUOTE_MINIMAL).writerows(rows)
                locations.append([str(len(locations) - 1), stem, 0, 0, w, h])
        with open(top / "csv" / "ALL_FOV_LOCATIONS.csv", "w", newline="") as fh:
            csv.writer(fh).writerows(locations)
        for k in (1, 2, 999):
            for part in ("train", "test"):
                chosen = [s for s, (_, fold) in SLIDES.items() if (fold == k) == (part == "test")] if k != 999 else list(SLIDES)[:1]
                with open(top / "train_test_splits" / f"fold_{k}_{part}.csv", "w", newline="") as fh:
                    writer = csv.writer(fh)
                    writer.writerow(["", "slide_name", "hospital", "type", "fold"])
                    writer.writerows([[i, s, SLIDES[s][0], "BRCA", k] for i, s in enumerate(chosen)])
        archive = zip_tree(tmp, folder / "NuCLS_dataset.zip")
    n_images = {f"fold{k}": sum(1 for _, f in SLIDES.values() if f == k) * fovs for k in (1, 2)}
    return DemoArchives(
        "nucls", [archive], {archive.name: "all"},
        {"images": n_images, "regions": regions, "classes": dict(sorted(classes.items(), key=lambda kv: int(kv[0])))},
        truth,
    )
