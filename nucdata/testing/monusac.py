"""Demo MoNuSAC archives: training and test trees of per-patient sub-images.

Quirks reproduced (datasets.md §4): one ``Annotation`` layer per class with the class
in ``Attributes/Attribute@Name`` (``Annotation@Name`` empty), layers in the order
Epithelial, Lymphocyte, Neutrophil, Macrophage, empty class layers (Macrophage is never
drawn without a world), a ``RegionAttributeHeaders`` element with five headers before
the regions, ``Region@Id`` restarting at 1 in every layer, ``Area`` = shoelace area of
the integer vertices, polygons closed by repeating the first vertex, CRLF line endings
in some files, an ``Ambiguous`` layer in the test set, RGBA and RGB ``.tif`` images, a
test sub-image available only as ``.svs``, the inconsistent sub-image suffixes ``_1``,
``_001`` and ``-1``, and one patient in both splits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from nucdata.testing._archives import DemoArchives, scratch_folder, zip_tree
from nucdata.testing._draw import draw_filled, ellipse_polygon, paint, place_nuclei, shoelace_area
from nucdata.testing.world import DatasetWorld, World

#: What the demo world knows of MoNuSAC (:class:`nucdata.testing.world.DatasetWorld`).
#: 1 Epithelial, 2 Lymphocyte, 3 Neutrophil, 4 Macrophage; its annotators skip the other
#: types. µm/px between the 0.19448 and 0.252 of its files. The real-shaped mix is assumed.
WORLD = DatasetWorld(
    native={"tumour": 1, "normal_epithelium": 1, "lymphocyte": 2, "plasma_cell": None, "macrophage": 4,
            "neutrophil": 3, "fibroblast": None, "endothelial": None, "dead": None, "mitotic": 1},
    frequencies={"tumour": 3, "normal_epithelium": 1, "lymphocyte": 3, "macrophage": 1, "neutrophil": 1,
                 "mitotic": 0.3},
    real_frequencies={"tumour": 40, "normal_epithelium": 8, "lymphocyte": 45, "macrophage": 3, "neutrophil": 2,
                      "mitotic": 1},
    stain=(-8, 4, 10), mpp=0.22, blur=0.3,
    habit={"macrophage": 2},  # macrophages called "lymphocyte"
    demo_nuclei=58,
)

CLASSES = ["Epithelial", "Lymphocyte", "Neutrophil", "Macrophage"]
LINE_COLOURS = {"Epithelial": "255", "Lymphocyte": "65535", "Neutrophil": "16711680",
                "Macrophage": "65280", "Ambiguous": "16776960"}
PATIENTS = {
    "train": ["TCGA-5P-A9K0-01Z-00-DX1", "TCGA-A2-A0ES-01Z-00-DX1", "TCGA-EJ-5495-01Z-00-DX1"],
    "test": ["TCGA-MP-A4T7-01Z-00-DX1", "TCGA-A2-A0ES-01Z-00-DX1"],
}
SUFFIXES = ["_{}", "_{:03d}", "-{}"]  # all three spellings occur in the real files
TOPS = {"train": "MoNuSAC_images_and_annotations", "test": "MoNuSAC Testing Data and Annotations"}
ARCHIVES = {"train": "MoNuSAC_images_and_annotations.zip", "test": "MoNuSAC Testing Data and Annotations.zip"}
HEADERS = [("9999", "Region"), ("9997", "Length"), ("9996", "Area"), ("9998", "Text"), ("1", "Description")]


def layered_xml(layers: dict[str, list[np.ndarray]], mpp: float, crlf: bool = False) -> str:
    """MoNuSAC-style XML: one ``Annotation`` per class layer, in the given order.

    Vertices are written as integers and each polygon is closed by repeating its
    first vertex; ``Region@Id`` restarts at 1 in every layer.
    """
    out = [f'<Annotations MicronsPerPixel="{mpp:.6f}">']
    for layer, (name, polygons) in enumerate(layers.items(), 1):
        out.append(
            f'\t<Annotation Id="{layer}" Name="" ReadOnly="0" NameReadOnly="0" LineColorReadOnly="0" '
            f'Incremental="0" Type="4" LineColor="{LINE_COLOURS.get(name, "0")}" Visible="1" '
            'Selected="0" MarkupImagePath="" MacroName="">'
        )
        out += ["\t\t<Attributes>", f'\t\t\t<Attribute Name="{name}" Id="0" Value=""/>', "\t\t</Attributes>",
                "\t\t<Regions>", "\t\t\t<RegionAttributeHeaders>"]
        out += [f'\t\t\t\t<AttributeHeader Id="{i}" Name="{n}" ColumnWidth="-1"/>' for i, n in HEADERS]
        out.append("\t\t\t</RegionAttributeHeaders>")
        for region_id, poly in enumerate(polygons, 1):
            ring = np.round(poly).astype(int)
            area = shoelace_area(ring)
            out.append(
                f'\t\t\t<Region Id="{region_id}" Type="0" Zoom="6.541201" Selected="0" ImageLocation="" '
                f'ImageFocus="-1" Length="0.0" Area="{area:.1f}" LengthMicrons="0.0" '
                f'AreaMicrons="{area * mpp * mpp:.1f}" Text="" NegativeROA="0" InputRegionId="0" '
                f'Analyze="1" DisplayId="{region_id}">'
            )
            out += ["\t\t\t\t<Attributes/>", "\t\t\t\t<Vertices>"]
            out += [f'\t\t\t\t\t<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in [*ring, ring[0]]]
            out += ["\t\t\t\t</Vertices>", "\t\t\t</Region>"]
        out += ["\t\t</Regions>", "\t\t<Plots/>", "\t</Annotation>"]
    out.append("</Annotations>")
    return ("\r\n" if crlf else "\n").join(out) + ("\r\n" if crlf else "\n")


def sub_image(rng: np.random.Generator, world: World | None, with_ambiguous: bool):
    """One sub-image: RGB, class layers, nuclei count, per-code counts, truth and written codes."""
    h, w = int(rng.integers(60, 110)), int(rng.integers(60, 110))
    count = int(rng.integers(4, 9))
    kinds = world.kinds_for("monusac", rng, count) if world else None
    looks = world.looks_for("monusac", kinds) if world else None
    appearances = world.appearances("monusac") if world else None
    nuclei = place_nuclei(rng, h, w, count, kinds, appearances, margin=3.0, looks=looks)
    # Integer vertices, as in the real files (the drawn map uses the same rounded rings).
    polygons = [np.round(ellipse_polygon(n, 14)) for n in nuclei]
    if world:
        codes = world.annotate("monusac", [n.kind for n in nuclei])
    else:
        codes = [int(rng.integers(1, 4)) for _ in nuclei]
    layers: dict[str, list[np.ndarray]] = {name: [] for name in CLASSES}
    for poly, code in zip(polygons, codes, strict=True):
        layers[CLASSES[code - 1]].append(poly)
    order = [(name, p) for name in CLASSES for p in layers[name]]  # file order = layer order
    inst = draw_filled((h, w), [p for _, p in order])
    kind_of = {id(p): n.appearance_kind for p, n in zip(polygons, nuclei, strict=True)}
    shift = world.stain("monusac") if world else (0, 0, 0)
    blur = world.blur("monusac") if world else 0.6
    rgb = paint(rng, inst, np.array([kind_of[id(p)] for _, p in order], int), appearances, shift, blur=blur)
    if with_ambiguous:  # an area to ignore; it may cover nuclei, as in the real test set
        layers["Ambiguous"] = [np.array([[2.0, 2.0], [30.0, 2.0], [30.0, 24.0], [2.0, 24.0]])]
    truth = [(n.cx, n.cy, n.kind) for n in nuclei]
    classes: dict[str, int] = {}
    for name, _ in order:
        code = str(CLASSES.index(name) + 1)
        classes[code] = classes.get(code, 0) + 1
    return rgb, layers, len(order), classes, truth, (list(codes) if world else [])


def generate(folder: Path, rng: np.random.Generator, world: World | None = None, scale: float = 1) -> DemoArchives:
    """Write the two MoNuSAC archives into ``folder``.

    Expected counts: ``images`` and ``regions`` (non-Ambiguous ``Region`` elements)
    per split, and ``classes`` ({"<official code>": nuclei}).
    """
    files, roles = [], {}
    images: dict[str, int] = {}
    regions: dict[str, int] = {}
    classes: dict[str, int] = {}
    truth: dict[str, list] = {}
    annotated: dict[str, list[int]] = {}
    for split, patients in PATIENTS.items():
        images[split] = regions[split] = 0
        with scratch_folder() as tmp:
            for p, patient in enumerate(patients):
                pdir = tmp / TOPS[split] / patient
                pdir.mkdir(parents=True)
                first = 1 if split == "train" else 5  # a patient in both splits gets other numbers
                for k in range(max(1, round(2 * scale))):
                    stem = patient + SUFFIXES[(p + k) % 3].format(first + k)
                    ambiguous = split == "test" and k == 0
                    rgb, layers, n, counts, truth[stem], codes = sub_image(rng, world, ambiguous)
                    if world:
                        annotated[stem] = codes
                    mpp = 0.252 if (p + k) % 2 else 0.19448
                    (pdir / f"{stem}.xml").write_bytes(layered_xml(layers, mpp, crlf=(p + k) % 2 == 1).encode())
                    if split == "test" and p == 1 and k == 1:
                        # Only an .svs (JPEG-compressed TIFF, as Aperio writes), no .tif.
                        Image.fromarray(rgb).save(pdir / f"{stem}.svs", format="TIFF", compression="jpeg")
                    else:
                        if k == 0:  # most real .tif files are RGBA
                            Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]), "RGBA").save(pdir / f"{stem}.tif")
                        else:
                            Image.fromarray(rgb).save(pdir / f"{stem}.tif")
                        # The .svs crop ships beside its .tif; the .tif is the one read.
                        Image.fromarray(rgb).save(pdir / f"{stem}.svs", format="TIFF", compression="jpeg")
                    images[split] += 1
                    regions[split] += n
                    for code, c in counts.items():
                        classes[code] = classes.get(code, 0) + c
            archive = zip_tree(tmp, folder / ARCHIVES[split])
            files.append(archive)
            roles[archive.name] = split
    return DemoArchives(
        "monusac", files, roles,
        {"images": images, "regions": regions, "classes": dict(sorted(classes.items()))}, truth, annotated,
    )
