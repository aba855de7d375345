"""Demo NuCLS archive ``NuCLS_dataset.zip``: ``rgb/``, ``csv/``, ``mask/``, folds.

Quirks reproduced (datasets.md §5): FOV stems
``<slide>_id-<24 hex>_left-..._top-..._bottom-..._right-...``, CSV rows of both types
(``polyline`` contours and ``rectangle`` boxes listing their five corners), quoted
comma-separated integer coordinates (pixel indices, some slightly outside the FOV or
0), an unnamed pandas index column, raw/main/super classifications, an ``unlabeled``
row, ``csv/ALL_FOV_LOCATIONS.csv`` among the FOV tables, 3-channel mask PNGs
(channel 0 the class code, 253 for the FOV, instance id = channel 1 x channel 2,
boxes painted filled), hospital-based ``train_test_splits/fold_<k>_{train,test}.csv``
whose test lists partition the slides, and a debug fold 999.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from nucdata.testing._archives import DemoArchives, scratch_folder, zip_tree
from nucdata.testing._draw import (
    appearance_kinds,
    draw_filled,
    ellipse_polygon,
    paint,
    place_nuclei,
)
from nucdata.testing.world import DatasetWorld, World

#: What the demo world knows of NuCLS (:class:`nucdata.testing.world.DatasetWorld`):
#: raw codes of nucleus_GTcodes.csv, 0.2 µm/px. The real-shaped mix is assumed.
WORLD = DatasetWorld(
    native={"tumour": 1, "normal_epithelium": 11, "lymphocyte": 3, "plasma_cell": 4, "macrophage": 5,
            "neutrophil": 10, "fibroblast": 2, "endothelial": 7, "dead": 9, "mitotic": 6},
    frequencies={"tumour": 4, "normal_epithelium": 0.5, "lymphocyte": 3, "plasma_cell": 1, "macrophage": 1,
                 "neutrophil": 0.3, "fibroblast": 2, "endothelial": 1, "dead": 0.3, "mitotic": 0.3},
    real_frequencies={"tumour": 40, "normal_epithelium": 1, "lymphocyte": 25, "plasma_cell": 5, "macrophage": 3,
                      "neutrophil": 0.5, "fibroblast": 15, "endothelial": 5, "dead": 1.5, "mitotic": 1},
    stain=(6, 8, -6), mpp=0.20, blur=0.8,
    habit={"mitotic": 1},  # mitotic figures called "tumor"
    demo_nuclei=46,
)

#: Mask channel-0 code of each raw class (``nucleus_GTcodes.csv``; datasets.md §5.5).
#: The generator keeps its own copy, transcribed from the published table.
CODES = {
    "tumor": 1, "fibroblast": 2, "lymphocyte": 3, "plasma_cell": 4, "macrophage": 5,
    "mitotic_figure": 6, "vascular_endothelium": 7, "myoepithelium": 8, "apoptotic_body": 9,
    "neutrophil": 10, "ductal_epithelium": 11, "eosinophil": 12, "unlabeled": 99,
}
#: raw -> (main, super) classification (NuCLS ``NucleusCategories``; datasets.md §5.5).
CLASSIFICATION = {
    "tumor": ("tumor_nonMitotic", "tumor_any"),
    "mitotic_figure": ("tumor_mitotic", "tumor_any"),
    "fibroblast": ("nonTILnonMQ_stromal", "nonTIL_stromal"),
    "vascular_endothelium": ("nonTILnonMQ_stromal", "nonTIL_stromal"),
    "macrophage": ("macrophage", "nonTIL_stromal"),
    "lymphocyte": ("lymphocyte", "sTIL"),
    "plasma_cell": ("plasma_cell", "sTIL"),
    "neutrophil": ("other_nucleus", "other_nucleus"),
    "eosinophil": ("other_nucleus", "other_nucleus"),
    "myoepithelium": ("other_nucleus", "other_nucleus"),
    "ductal_epithelium": ("other_nucleus", "other_nucleus"),
    "apoptotic_body": ("AMBIGUOUS", "AMBIGUOUS"),
    "unlabeled": ("AMBIGUOUS", "AMBIGUOUS"),
}
#: slide -> (hospital, official fold whose test list holds it)
SLIDES = {"TCGA-A2-A0SX-DX1": ("A2", 1), "TCGA-AR-A1AR-DX1": ("AR", 1),
          "TCGA-E2-A1B6-DX1": ("E2", 2), "TCGA-OL-A5D6-DX1": ("OL", 2)}
FOLDS = (1, 2)
FOVS_PER_SLIDE = 2
HEADER = ["", "raw_classification", "main_classification", "super_classification", "type",
          "xmin", "ymin", "xmax", "ymax", "coords_x", "coords_y"]


def fov(rng: np.random.Generator, slide: str, world: World | None, names: dict[int, str]):
    """One field of view: stem, RGB, mask, CSV rows, per-code counts, truth, size and written codes."""
    h, w = int(rng.integers(70, 120)), int(rng.integers(70, 120))
    left, top = int(rng.integers(1000, 90000)), int(rng.integers(1000, 90000))
    stem = (f"{slide}_id-{rng.integers(0, 16**12):012x}{rng.integers(0, 16**12):012x}"
            f"_left-{left}_top-{top}_bottom-{top + h}_right-{left + w}")
    count = int(rng.integers(5, 10))
    kinds = world.kinds_for("nucls", rng, count) if world else None
    looks = world.looks_for("nucls", kinds) if world else None
    appearances = world.appearances("nucls") if world else None
    # margin 0: nuclei may cross the FOV edge, so coordinates can be negative or past it
    nuclei = place_nuclei(rng, h, w, count, kinds, appearances, margin=0.0, looks=looks)
    raw_codes = [c for c in names if c != 99]
    if world:
        codes = world.annotate("nucls", [n.kind for n in nuclei])
    else:
        codes = [int(rng.choice(raw_codes)) for _ in nuclei]
    if not world and nuclei:
        codes[-1] = 99  # one 'unlabeled' annotation
    # Contours as integer pixel indices (centres): the corner-frame ellipse minus 0.5.
    contours = [np.round(ellipse_polygon(n, 14) - 0.5).astype(int) for n in nuclei]
    inst = draw_filled((h, w), [c + 0.5 for c in contours])
    shift = world.stain("nucls") if world else (0, 0, 0)
    blur = world.blur("nucls") if world else 0.6
    rgb = paint(rng, inst, appearance_kinds(nuclei), appearances, shift, blur=blur)
    mask = np.zeros((h, w, 3), np.uint8)
    mask[..., 0] = 253  # the FOV area
    rows = [HEADER]
    counts: dict[str, int] = {}
    for i, (contour, code) in enumerate(zip(contours, codes, strict=True)):
        xs, ys = contour[:, 0], contour[:, 1]
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
        kind = "rectangle" if i % 4 == 3 else "polyline"
        if kind == "rectangle":  # five corners of the closed box
            xs, ys = np.array([x0, x1, x1, x0, x0]), np.array([y0, y0, y1, y1, y0])
            where = np.zeros((h, w), bool)
            where[max(0, y0):y1 + 1, max(0, x0):x1 + 1] = True
        else:
            where = inst == i + 1
        raw = names[code]
        main, sup = CLASSIFICATION[raw]
        rows.append([str(i), raw, main, sup, kind, x0, y0, x1, y1,
                     ",".join(map(str, xs)), ",".join(map(str, ys))])
        mask[where] = (code, 1, i + 1)  # later annotations overwrite earlier ones
        counts[str(code)] = counts.get(str(code), 0) + 1
    truth = [(n.cx, n.cy, n.kind) for n in nuclei]
    return stem, rgb, mask, rows, counts, truth, (w, h), (list(codes) if world else [])


def generate(folder: Path, rng: np.random.Generator, world: World | None = None, scale: float = 1) -> DemoArchives:
    """Write ``NuCLS_dataset.zip`` into ``folder``.

    Expected counts: ``images`` and ``regions`` (nucleus rows) per stored split
    ``fold<k>``, and ``classes`` ({"<GT code>": nuclei}).
    """
    names = {code: name for name, code in CODES.items()}
    classes: dict[str, int] = {}
    regions: dict[str, int] = {}
    images: dict[str, int] = {}
    truth: dict[str, list] = {}
    annotated: dict[str, list[int]] = {}
    with scratch_folder() as tmp:
        top = tmp / "NuCLS_dataset"
        for sub in ("rgb", "csv", "mask", "visualization", "train_test_splits"):
            (top / sub).mkdir(parents=True)
        locations = [["", "fovname", "xmin", "ymin", "xmax", "ymax"]]
        for slide, (_, fold) in SLIDES.items():
            for _ in range(max(1, round(FOVS_PER_SLIDE * scale))):
                stem, rgb, mask, rows, counts, truth_fov, (w, h), codes = fov(rng, slide, world, names)
                truth[stem] = truth_fov
                if world:
                    annotated[stem] = codes
                split = f"fold{fold}"
                images[split] = images.get(split, 0) + 1
                regions[split] = regions.get(split, 0) + len(rows) - 1
                for code, c in counts.items():
                    classes[code] = classes.get(code, 0) + c
                Image.fromarray(rgb).save(top / "rgb" / f"{stem}.png")
                Image.fromarray(mask).save(top / "mask" / f"{stem}.png")
                Image.fromarray(rgb).save(top / "visualization" / f"{stem}.png")
                with open(top / "csv" / f"{stem}.csv", "w", newline="") as fh:
                    csv.writer(fh, quoting=csv.QUOTE_MINIMAL).writerows(rows)
                locations.append([str(len(locations) - 1), stem, 0, 0, w, h])
        with open(top / "csv" / "ALL_FOV_LOCATIONS.csv", "w", newline="") as fh:
            csv.writer(fh).writerows(locations)
        for k in (*FOLDS, 999):
            for part in ("train", "test"):
                if k == 999:  # the tiny debug fold
                    chosen = list(SLIDES)[:1]
                else:
                    chosen = [s for s, (_, f) in SLIDES.items() if (f == k) == (part == "test")]
                with open(top / "train_test_splits" / f"fold_{k}_{part}.csv", "w", newline="") as fh:
                    writer = csv.writer(fh)
                    writer.writerow(["", "slide_name", "hospital", "type", "fold"])
                    writer.writerows([[i, s, SLIDES[s][0], part, k] for i, s in enumerate(chosen)])
        archive = zip_tree(tmp, folder / "NuCLS_dataset.zip")
    order = sorted(images, key=lambda s: int(s[4:]))
    return DemoArchives(
        "nucls", [archive], {archive.name: "all"},
        {"images": {s: images[s] for s in order}, "regions": {s: regions[s] for s in order},
         "classes": dict(sorted(classes.items(), key=lambda kv: int(kv[0])))},
        truth, annotated,
    )
