"""Demo MoNuSAC archives: training and test trees of per-patient sub-images.

Quirks reproduced: one ``Annotation`` layer per class with the class in
``Attributes/Attribute@Name`` (``Annotation@Name`` empty), empty class layers, a
``RegionAttributeHeaders`` element before the regions, an ``Ambiguous`` layer in the
test set, RGBA and RGB ``.tif`` images, an image available only as ``.svs``, and the
inconsistent sub-image suffixes ``_1``, ``_001`` and ``-1``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from . import DemoArchives, scratch_folder, zip_tree
from .synth import draw_filled, ellipse_polygon, paint, place_nuclei
from .world import STAIN_SHIFT, World

CLASSES = ["Epithelial", "Lymphocyte", "Neutrophil", "Macrophage"]
LINE_COLOURS = ["255", "65535", "16711680", "65280"]
PATIENTS = {
    "train": ["TCGA-5P-A9K0-01Z-00-DX1", "TCGA-A2-A0ES-01Z-00-DX1", "TCGA-EJ-5495-01Z-00-DX1"],
    "test": ["TCGA-MP-A4T7-01Z-00-DX1", "TCGA-2Z-A9JG-01Z-00-DX1"],
}
SUFFIXES = ["_{}", "_{:03d}", "-{}"]  # all three spellings occur in the real files


def layered_xml(layers: dict[str, list[np.ndarray]], mpp: float) -> str:
    """MoNuSAC-style XML: one Annotation per class layer, in the given order."""
    out = [f'<Annotations MicronsPerPixel="{mpp:.6f}">']
    region_id = 1
    for layer, (name, polygons) in enumerate(layers.items(), 1):
        out.append(f'\t<Annotation Id="{layer}" Name="" ReadOnly="0" Type="4" LineColor="{LINE_COLOURS[(layer - 1) % 4]}" Visible="1">')
        out.append(f'\t\t<Attributes>\n\t\t\t<Attribute Name="{name}" Id="0" Value=""/>\n\t\t</Attributes>')
        out.append('\t\t<Regions>\n\t\t\t<RegionAttributeHeaders>\n\t\t\t\t<AttributeHeader Id="9999" Name="Region" ColumnWidth="-1"/>\n\t\t\t</RegionAttributeHeaders>')
        for poly in polygons:
            out.append(f'\t\t\t<Region Id="{region_id}" Type="0" Zoom="1" Area="0" NegativeROA="0">\n\t\t\t\t<Attributes/>\n\t\t\t\t<Vertices>')
            out += [f'\t\t\t\t\t<Vertex X="{round(x)}" Y="{round(y)}" Z="0"/>' for x, y in poly]
            out.append("\t\t\t\t</Vertices>\n\t\t\t</Region>")
            region_id += 1
        out.append("\t\t</Regions>\n\t\t<Plots/>\n\t</Annotation>")
    out.append("</Annotations>")
    return "\n".join(out) + "\n"


def sub_image(rng: np.random.Generator, world: World | None, with_ambiguous: bool):
    h, w = int(rng.integers(60, 110)), int(rng.integers(60, 110))
    count = int(rng.integers(4, 9))
    kinds = world.kinds_for("monusac", rng, count) if world else None
    appearances = world.appearances() if world else None
    nuclei = place_nuclei(rng, h, w, count, kinds, appearances, margin=3.0)
    polygons = [ellipse_polygon(n, 14) for n in nuclei]
    codes = [world.native_code("monusac", n.kind) if world else int(rng.integers(1, 4)) for n in nuclei]
    # Neutrophil-free images leave that layer empty; Macrophage is never drawn without a world.
    layers: dict[str, list[np.ndarray]] = {name: [] for name in CLASSES}
    order = []
    for poly, code in zip(polygons, codes, strict=True):
        layers[CLASSES[code - 1]].append(poly)
    for name in CLASSES:
        order += [(name, p) for p in layers[name]]
    inst = draw_filled((h, w), [p for _, p in order])
    kind_of = {id(p): n.kind for p, n in zip(polygons, nuclei, strict=True)}
    shift = STAIN_SHIFT["monusac"] if world else (0, 0, 0)
    rgb = paint(rng, inst, np.array([kind_of[id(p)] for _, p in order], int), appearances, shift)
    if with_ambiguous:
        layers["Ambiguous"] = [np.array([[2.0, 2.0], [20.0, 2.0], [20.0, 20.0], [2.0, 20.0]])]
    truth = [(n.cx, n.cy, n.kind) for n in nuclei]
    classes = {}
    for name, _ in order:
        code = str(CLASSES.index(name) + 1)
        classes[code] = classes.get(code, 0) + 1
    return rgb, layers, len(order), classes, truth


def generate(folder: Path, rng: np.random.Generator, world: World | None = None, scale: int = 1) -> DemoArchives:
    tops = {"train": "MoNuSAC_images_and_annotations", "test": "MoNuSAC Testing Data and Annotations"}
    names = {"train": "MoNuSAC_images_and_annotations.zip", "test": "MoNuSAC Testing Data and Annotations.zip"}
    files, roles, images, regions, classes, truth = [], {}, {}, {}, {}, {}
    for split, patients in PATIENTS.items():
        images[split] = regions[split] = 0
        with scratch_folder() as tmp:
            for p, patient in enumerate(patients):
                pdir = tmp / tops[split] / patient
                pdir.mkdir(parents=True)
                for k in range(2 * scale):
                    stem = patient + SUFFIXES[(p + k) % 3].format(k + 1)
                    rgb, layers, n, counts, truth[stem] = sub_image(rng, world, with_ambiguous=(split == "test" and k == 0))
                    mpp = 0.252 if (p + k) % 2 else 0.19448
                    (pdir / f"{stem}.xml").write_text(layered_xml(layers, mpp))
                    if split == "test" and p == 1 and k == 1:  # only an .svs, as some test images
                        Image.fromarray(rgb).save(pdir / f"{stem}.svs", format="TIFF", compression="jpeg")
                    elif k == 0:
                        rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
                        Image.fromarray(rgba, "RGBA").save(pdir / f"{stem}.tif")
                    else:
                        Image.fromarray(rgb).save(pdir / f"{stem}.tif")
                    images[split] += 1
                    regions[split] += n
                    for code, c in counts.items():
                        classes[code] = classes.get(code, 0) + c
            archive = zip_tree(tmp, folder / names[split])
            files.append(archive)
            roles[archive.name] = split
    return DemoArchives(
        "monusac", files, roles,
        {"images": images, "regions": regions, "classes": dict(sorted(classes.items()))}, truth,
    )
