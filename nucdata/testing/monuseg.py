"""Demo MoNuSeg archives: the training zip (30 classic + 7 bonus) and the test zip.

Quirks reproduced: LZW TIFFs in training and PackBits in test, spaces in folder
names, ``__MACOSX`` entries, no XML declaration, float and integer vertices,
vertices past the border, a 2-vertex click, an overlapping pair, a second empty
``Annotation`` block, a file without ``MicronsPerPixel``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from nucdata.testing._archives import DemoArchives, scratch_folder, zip_tree
from nucdata.testing._draw import draw_filled, ellipse_polygon, paint, place_nuclei
from nucdata.testing.world import DatasetWorld, World

#: What the demo world knows of MoNuSeg (:class:`nucdata.testing.world.DatasetWorld`): no
#: classes; an assumed multi-organ tumour-field mix for ``WorldConfig.unlabelled_mix``.
WORLD = DatasetWorld(
    unlabelled_mix={"tumour": 35, "normal_epithelium": 10, "lymphocyte": 20, "plasma_cell": 3, "macrophage": 3,
                    "neutrophil": 2, "fibroblast": 15, "endothelial": 8, "dead": 2, "mitotic": 2},
    stain=(-4, -4, 0), mpp=0.25, blur=0.4,
    demo_nuclei=411,
)

#: Kumar 2017's 30 images (the classic MoNuSeg training set) by file stem, with the
#: HoVer-Net 16 / 8 / 6 split they are used with (reference: datasets.md §6.4 for the
#: full stems, §6.6 for the split). The generator keeps its own copy, transcribed
#: from the published lists, so that a wrong list in the converter is caught.
KUMAR: dict[str, str] = {
    **dict.fromkeys([
        "TCGA-18-5592-01Z-00-DX1", "TCGA-21-5784-01Z-00-DX1", "TCGA-38-6178-01Z-00-DX1",
        "TCGA-50-5931-01Z-00-DX1", "TCGA-A7-A13E-01Z-00-DX1", "TCGA-AR-A1AK-01Z-00-DX1",
        "TCGA-AR-A1AS-01Z-00-DX1", "TCGA-B0-5711-01Z-00-DX1", "TCGA-E2-A14V-01Z-00-DX1",
        "TCGA-G9-6348-01Z-00-DX1", "TCGA-G9-6356-01Z-00-DX1", "TCGA-G9-6362-01Z-00-DX1",
        "TCGA-G9-6363-01Z-00-DX1", "TCGA-HE-7128-01Z-00-DX1", "TCGA-HE-7129-01Z-00-DX1",
        "TCGA-HE-7130-01Z-00-DX1"], "train"),
    **dict.fromkeys([
        "TCGA-21-5786-01Z-00-DX1", "TCGA-49-4488-01Z-00-DX1", "TCGA-A7-A13F-01Z-00-DX1",
        "TCGA-CH-5767-01Z-00-DX1", "TCGA-E2-A1B5-01Z-00-DX1", "TCGA-G9-6336-01Z-00-DX1",
        "TCGA-B0-5698-01Z-00-DX1", "TCGA-B0-5710-01Z-00-DX1"], "test_same_organ"),
    **dict.fromkeys([
        "TCGA-AY-A8YK-01A-01-TS1", "TCGA-DK-A2I6-01A-01-TS1", "TCGA-KB-A93J-01A-01-TS1",
        "TCGA-NH-A8F7-01A-01-TS1", "TCGA-RD-A8N9-01A-01-TS1", "TCGA-G2-A2EK-01A-02-TSB"],
        "test_different_organ"),
}
BONUS = ["TCGA-BC-A217-01Z-00-DX1", "TCGA-F9-A8NY-01Z-00-DX1", "TCGA-FG-A87N-01Z-00-DX1",
         "TCGA-MH-A561-01Z-00-DX1", "TCGA-UZ-A9PJ-01Z-00-DX1", "TCGA-UZ-A9PN-01Z-00-DX1",
         "TCGA-XS-A8TJ-01Z-00-DX1"]
TEST = ["TCGA-2Z-A9J9-01A-01-TS1", "TCGA-44-2665-01B-06-BS6", "TCGA-69-7764-01A-01-TS1",
        "TCGA-A6-6782-01A-01-BS1", "TCGA-AC-A2FO-01A-01-TS1", "TCGA-AO-A0J2-01A-01-BSA",
        "TCGA-CU-A0YN-01A-02-BSB", "TCGA-EJ-A46H-01A-03-TSC", "TCGA-FG-A4MU-01B-01-TS1",
        "TCGA-GL-6846-01A-01-BS1", "TCGA-HC-7209-01A-01-TS1", "TCGA-HT-8564-01Z-00-DX1",
        "TCGA-IZ-8196-01A-01-BS1", "TCGA-ZF-A9R5-01A-01-TS1"]
NO_MPP = {"TCGA-AY-A8YK-01A-01-TS1", "TCGA-KB-A93J-01A-01-TS1", "TCGA-NH-A8F7-01A-01-TS1",
          "TCGA-RD-A8N9-01A-01-TS1"}
LOW_MAG = {"TCGA-HE-7128-01Z-00-DX1", "TCGA-HE-7129-01Z-00-DX1", "TCGA-HE-7130-01Z-00-DX1"}


def imagescope_xml(polygons: list[np.ndarray], mpp: float | None, extra_block: bool,
                   layer_class: str = "Description", ids: list[int] | None = None) -> str:
    """ImageScope XML text (no declaration, tab-indented) for one layer of polygons."""
    head = f'<Annotations MicronsPerPixel="{mpp:.6f}">' if mpp else "<Annotations>"
    lines = [head, '\t<Annotation Id="1" Name="" Type="4" LineColor="65280">',
             f'\t\t<Attributes>\n\t\t\t<Attribute Name="{layer_class}" Id="0" Value=""/>\n\t\t</Attributes>',
             "\t\t<Regions>",
             '\t\t\t<RegionAttributeHeaders>\n\t\t\t\t<AttributeHeader Id="9999" Name="Region" ColumnWidth="-1"/>\n\t\t\t</RegionAttributeHeaders>']
    for i, poly in enumerate(polygons):
        rid = ids[i] if ids else i + 2  # Ids start at 2: they are not contiguous from 1
        area = 0.5 * abs(np.dot(poly[:, 0], np.roll(poly[:, 1], -1)) - np.dot(poly[:, 1], np.roll(poly[:, 0], -1))) if len(poly) > 2 else 0.0
        lines.append(f'\t\t\t<Region Id="{rid}" Type="0" Area="{area:.1f}" NegativeROA="0">\n\t\t\t\t<Attributes/>\n\t\t\t\t<Vertices>')
        for j, (x, y) in enumerate(poly):
            # Mix integer and 6-decimal vertices, as the real files do.
            text = (f'X="{x:.6f}" Y="{y:.6f}"' if (i + j) % 3 else f'X="{round(x)}" Y="{round(y)}"')
            lines.append(f"\t\t\t\t\t<Vertex {text}/>")
        lines.append("\t\t\t\t</Vertices>\n\t\t\t</Region>")
    lines += ["\t\t</Regions>", "\t\t<Plots/>", "\t</Annotation>"]
    if extra_block:
        lines.append('\t<Annotation Id="2" Name="" Type="4" LineColor="65280">\n\t\t<Regions/>\n\t</Annotation>')
    lines.append("</Annotations>")
    return "\n".join(lines) + "\n"


def image_pair(
    rng: np.random.Generator, stem: str, size: int = 96, world: World | None = None,
    dataset: str = "monuseg",
) -> tuple[np.ndarray, str, int, list[tuple[float, float, int]]]:
    """An RGB image and its XML.

    Returns (rgb, xml text, number of Region elements, truth) where truth lists
    ``(x, y, latent type)`` of every drawn nucleus (type 0 without a world).
    """
    count = int(rng.integers(6, 11) * (size / 96) ** 2)
    kinds = world.kinds_for(dataset, rng, count) if world else None
    looks = world.looks_for(dataset, kinds) if world else None
    appearances = world.appearances(dataset) if world else None
    nuclei = place_nuclei(rng, size, size, count, kinds, appearances, looks=looks)
    polygons = [ellipse_polygon(n, int(rng.integers(10, 20)), 0.08, rng) for n in nuclei]
    truth = [(n.cx, n.cy, n.kind) for n in nuclei]
    kind_of = [n.appearance_kind for n in nuclei]
    # Quirks: a region overlapping the first one, and a stray 2-vertex click.
    if polygons:
        polygons.append(polygons[0] + np.array([3.0, 2.0]))
        kind_of.append(kind_of[0])
    polygons.append(np.array([[10.0, 10.0], [11.0, 12.0]]))
    kind_of.append(0)
    inst = draw_filled((size, size), polygons)
    shift = world.stain(dataset) if world else (0, 0, 0)
    blur = world.blur(dataset) if world else 0.6
    rgb = paint(rng, inst, np.asarray(kind_of), appearances, shift, blur=blur)
    mpp = None if stem in NO_MPP else (0.5005 if stem in LOW_MAG else 0.2520)
    xml = imagescope_xml(polygons, mpp, extra_block=stem.startswith("TCGA-HE-7129"))
    return rgb, xml, len(polygons), truth


def generate(folder: Path, rng: np.random.Generator, world: World | None = None,
             dataset: str = "monuseg", scale: float = 1) -> DemoArchives:
    """Write both MoNuSeg zips; ``scale`` multiplies the nuclei per image (larger images)."""
    size = int(round(96 * scale ** 0.5))  # more nuclei per image, at the same density
    regions = {"train": 0, "test": 0}
    truth: dict[str, list[tuple[float, float, int]]] = {}
    annotated: dict[str, list[int]] = {}  # no classes: -1 for every nucleus
    with scratch_folder() as tmp:
        top = tmp / "train" / "MoNuSeg 2018 Training Data"
        (top / "Tissue Images").mkdir(parents=True)
        (top / "Annotations").mkdir()
        for stem in sorted([*KUMAR, *BONUS]):
            rgb, xml, n, truth[stem] = image_pair(rng, stem, size, world=world, dataset=dataset)
            annotated[stem] = [-1] * len(truth[stem])
            regions["train"] += n
            Image.fromarray(rgb).save(top / "Tissue Images" / f"{stem}.tif", compression="tiff_lzw")
            (top / "Annotations" / f"{stem}.xml").write_text(xml)
        test = tmp / "test" / "MoNuSegTestData"
        test.mkdir(parents=True)
        for stem in TEST:
            rgb, xml, n, truth[stem] = image_pair(rng, stem, size, world=world, dataset=dataset)
            annotated[stem] = [-1] * len(truth[stem])
            regions["test"] += n
            Image.fromarray(rgb).save(test / f"{stem}.tif", compression="packbits")
            (test / f"{stem}.xml").write_text(xml)
        train_zip = zip_tree(tmp / "train", folder / "MoNuSeg 2018 Training Data.zip")
        test_zip = zip_tree(tmp / "test", folder / "MoNuSegTestData.zip", macos_junk=False)
    return DemoArchives(
        "monuseg", [train_zip, test_zip],
        {train_zip.name: "train", test_zip.name: "test"},
        {"images": {"train": 37, "test": 14}, "regions": regions},
        truth, annotated if world else {},
    )
