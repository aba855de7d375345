"""Demo TNBC archive: 11 patients, 50 PNG slides (RGBA, three RGB) and 0/255 masks.

Quirks reproduced: RGBA slides except ``Slide_09/09_2``-``09_4``, masks of mode ``L``
with foreground 255, a 1-px hole, a diagonal speck, ``__MACOSX`` entries and the
top folder ``TNBC_NucleiSegmentation/``.
"""

from __future__ import annotations

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

#: What the demo world knows of TNBC (:class:`nucdata.testing.world.DatasetWorld`): no
#: classes; an assumed mix of triple-negative breast cancer, with many lymphocytes.
WORLD = DatasetWorld(
    unlabelled_mix={"tumour": 40, "normal_epithelium": 1, "lymphocyte": 30, "plasma_cell": 5, "macrophage": 4,
                    "neutrophil": 1, "fibroblast": 10, "endothelial": 5, "dead": 2, "mitotic": 2},
    stain=(12, 0, -10), mpp=0.25, blur=1.0,
    demo_nuclei=283,
)

IMAGES_PER_PATIENT = [7, 3, 5, 8, 4, 3, 3, 4, 6, 4, 3]
RGB_ONLY = {"09_2", "09_3", "09_4"}


def generate(folder: Path, rng: np.random.Generator, world: World | None = None,
             scale: float = 1) -> DemoArchives:
    """Write ``TNBC_NucleiSegmentation.zip``; ``scale`` multiplies the nuclei per image."""
    size = int(round(64 * scale ** 0.5))  # more nuclei per image, at the same density
    truth: dict[str, list[tuple[float, float, int]]] = {}
    annotated: dict[str, list[int]] = {}  # no classes: -1 for every nucleus
    appearances = world.appearances("tnbc") if world else None
    shift = world.stain("tnbc") if world else (0, 0, 0)
    blur = world.blur("tnbc") if world else 0.6
    with scratch_folder() as tmp:
        top = tmp / "TNBC_NucleiSegmentation"
        for p, count in enumerate(IMAGES_PER_PATIENT, 1):
            slide, gt = top / f"Slide_{p:02d}", top / f"GT_{p:02d}"
            slide.mkdir(parents=True)
            gt.mkdir()
            for k in range(1, count + 1):
                name = f"{p:02d}_{k}"
                count = int(rng.integers(4, 8) * scale)
                kinds = world.kinds_for("tnbc", rng, count) if world else None
                looks = world.looks_for("tnbc", kinds) if world else None
                nuclei = place_nuclei(rng, size, size, count, kinds, appearances, margin=4.0, looks=looks)
                truth[name] = [(n.cx, n.cy, n.kind) for n in nuclei]
                annotated[name] = [-1] * len(nuclei)
                inst = draw_filled((size, size), [ellipse_polygon(n, 16) for n in nuclei])
                rgb = paint(rng, inst, appearance_kinds(nuclei), appearances, shift, blur=blur)
                mask = np.where(inst > 0, 255, 0).astype(np.uint8)
                if k == 1 and len(nuclei):  # a 1-px hole inside the first nucleus
                    cy, cx = int(nuclei[0].cy), int(nuclei[0].cx)
                    if mask[cy - 1 : cy + 2, cx - 1 : cx + 2].all():
                        mask[cy, cx] = 0
                if k == 2:  # a 1-px speck far from any nucleus
                    free = np.argwhere(ndi_free(mask))
                    if len(free):
                        y, x = free[len(free) // 2]
                        mask[y, x] = 255
                if name in RGB_ONLY:
                    Image.fromarray(rgb, "RGB").save(slide / f"{name}.png")
                else:
                    rgba = np.dstack([rgb, np.full((size, size), 255, np.uint8)])
                    Image.fromarray(rgba, "RGBA").save(slide / f"{name}.png")
                Image.fromarray(mask, "L").save(gt / f"{name}.png")
        archive = zip_tree(tmp, folder / "TNBC_NucleiSegmentation.zip")
    return DemoArchives("tnbc", [archive], {archive.name: "all"}, {"images": {"all": 50}, "regions": None},
                        truth, annotated if world else {})


def ndi_free(mask: np.ndarray) -> np.ndarray:
    """Background pixels at least 3 px from any foreground."""
    from scipy import ndimage

    return ndimage.distance_transform_edt(mask == 0) > 3
