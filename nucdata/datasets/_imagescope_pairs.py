"""Image/XML pairs in the MoNuSeg and Kumar layouts, shared by both sources.

Layouts accepted (spaces in folder names optional, any depth, ``__MACOSX`` ignored):

* training: ``<any>/Tissue Images/*.tif[f]`` beside ``<any>/Annotations/*.xml``;
* test: one folder holding ``*.tif`` and ``*.xml`` side by side (``MoNuSegTestData/``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from nucdata._util.images import read_rgb
from nucdata.datasets._base import ConversionReport, id_number, list_files, walk_dirs
from nucdata.datasets._imagescope import rasterize_regions, read_imagescope
from nucdata.errors import MissingFilesError
from nucdata.store import StoreWriter

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")

RASTER_RULES = {
    "coordinates": "ImageScope vertices are pixel corners: a pixel belongs to a region when its centre is inside the polygon",
    "overlap": "first region in file order keeps overlapping pixels (official MATLAB rule)",
    "border": "vertices past the border are kept and the filled polygon is clipped to the image",
    "degenerate": "regions with < 3 distinct vertices or zero area are dropped and counted",
    "fully_overlapped": "regions left with no pixel after earlier regions are dropped and counted",
    "negative_roa": "NegativeROA regions (nucleus-sized, in one bonus image) are kept as nuclei and counted",
}

# Organ per TCGA id (datasets.md §6.4 and §7.5). "liver" is the published label;
# those six ids may actually be lung (TCGA tissue-source codes).
ORGANS = {
    "breast": ["A7-A13E", "A7-A13F", "AR-A1AK", "AR-A1AS", "E2-A1B5", "E2-A14V",
               "AC-A2FO", "AO-A0J2"],
    "kidney": ["B0-5711", "HE-7128", "HE-7129", "HE-7130", "B0-5710", "B0-5698",
               "2Z-A9J9", "GL-6846", "IZ-8196"],
    "liver": ["18-5592", "38-6178", "49-4488", "50-5931", "21-5784", "21-5786"],
    "prostate": ["G9-6336", "G9-6348", "G9-6356", "G9-6363", "CH-5767", "G9-6362",
                 "EJ-A46H", "HC-7209"],
    "bladder": ["DK-A2I6", "G2-A2EK", "CU-A0YN", "ZF-A9R5"],
    "colon": ["AY-A8YK", "NH-A8F7", "A6-6782"],
    "stomach": ["KB-A93J", "RD-A8N9"],
    "lung": ["44-2665", "69-7764"],
    "brain": ["FG-A4MU", "HT-8564"],
}
_ORGAN_OF = {tcga: organ for organ, ids in ORGANS.items() for tcga in ids}

# The 30 classic (Kumar 2017) training images, with full file stems.
_SPECIAL_SUFFIX = {
    "DK-A2I6": "01A-01-TS1", "G2-A2EK": "01A-02-TSB", "AY-A8YK": "01A-01-TS1",
    "NH-A8F7": "01A-01-TS1", "KB-A93J": "01A-01-TS1", "RD-A8N9": "01A-01-TS1",
}
KUMAR_SPLIT = {
    "train": ["18-5592", "21-5784", "38-6178", "50-5931", "A7-A13E", "AR-A1AK", "AR-A1AS",
              "B0-5711", "E2-A14V", "G9-6348", "G9-6356", "G9-6362", "G9-6363", "HE-7128",
              "HE-7129", "HE-7130"],
    "test_same_organ": ["21-5786", "49-4488", "A7-A13F", "CH-5767", "E2-A1B5", "G9-6336",
                        "B0-5698", "B0-5710"],
    "test_different_organ": ["AY-A8YK", "DK-A2I6", "KB-A93J", "NH-A8F7", "RD-A8N9", "G2-A2EK"],
}


def full_stem(tcga_id: str) -> str:
    """File stem of a classic image from its short TCGA id."""
    return f"TCGA-{tcga_id}-{_SPECIAL_SUFFIX.get(tcga_id, '01Z-00-DX1')}"


KUMAR_STEMS = {full_stem(t): split for split, ids in KUMAR_SPLIT.items() for t in ids}


def short_id(stem: str) -> str:
    """``TCGA-A7-A13E-01Z-00-DX1`` -> ``A7-A13E``."""
    parts = stem.split("-")
    return "-".join(parts[1:3]) if len(parts) >= 3 else stem


def organ_of(stem: str) -> str:
    return _ORGAN_OF.get(short_id(stem), "")


def patient_of(stem: str) -> str:
    """TCGA patient barcode (first three fields)."""
    return "-".join(stem.split("-")[:3]) if stem.startswith("TCGA-") else stem


def _norm(name: str) -> str:
    return name.lower().replace(" ", "").replace("_", "")


def find_training_dirs(folder: Path) -> tuple[Path, Path] | None:
    """(images folder, annotations folder) of a training layout under ``folder``."""
    for d in walk_dirs(folder):
        if _norm(d.name) == "tissueimages":
            annotations = [s for s in d.parent.iterdir() if s.is_dir() and _norm(s.name) == "annotations"]
            if annotations:
                return d, annotations[0]
    return None


def find_flat_pair_dir(folder: Path, exclude: tuple[Path, ...] = ()) -> Path | None:
    """A folder holding images and XMLs side by side (the MoNuSeg test layout)."""
    for d in walk_dirs(folder):
        if any(d == e or e in d.parents for e in exclude):
            continue
        if list_files(d, (".xml",)) and list_files(d, IMAGE_SUFFIXES):
            return d
    return None


def pair_files(image_dir: Path, xml_dir: Path) -> dict[str, tuple[Path, Path]]:
    """Pair images and XMLs by stem; fail listing any file without its partner."""
    images = {p.stem: p for p in list_files(image_dir, IMAGE_SUFFIXES)}
    xmls = {p.stem: p for p in list_files(xml_dir, (".xml",))}
    lonely_images = sorted(set(images) - set(xmls))
    lonely_xmls = sorted(set(xmls) - set(images))
    if lonely_images or lonely_xmls:
        lines = [f"  image without XML: {image_dir / s}" for s in lonely_images[:20]]
        lines += [f"  XML without image: {xml_dir / s}.xml" for s in lonely_xmls[:20]]
        raise MissingFilesError(
            "unpaired files (every image needs the annotation XML of the same name):\n"
            + "\n".join(lines) + "\nRe-extract the archive or add the missing files."
        )
    return {stem: (images[stem], xmls[stem]) for stem in sorted(images)}


def convert_pair(
    writer: StoreWriter,
    report: ConversionReport,
    stem: str,
    image_path: Path,
    xml_path: Path,
    split: str,
    flag: str = "",
) -> int:
    """Read, rasterise and write one image/XML pair; return the nuclei written."""
    rgb = read_rgb(image_path)
    annotation = read_imagescope(xml_path)
    regions = annotation.regions
    report.regions[split] += len(regions)
    inst, kept, dropped = rasterize_regions(regions, rgb.shape[:2])
    report.dropped.update(dropped)
    ids = [regions[i].region_id for i in kept]
    report.dropped["duplicate_region_ids_kept"] += len(ids) - len(set(ids))
    report.dropped["negative_roa_kept"] += sum(regions[i].negative for i in kept)
    source_ids = np.array([id_number(r, -1) for r in ids], np.int64)
    return writer.add_image(
        stem, split, rgb, inst, None, source_ids,
        mpp=annotation.mpp, tissue=organ_of(stem), patient=patient_of(stem), flag=flag,
    )


def run_pairs(
    writer: StoreWriter,
    report: ConversionReport,
    jobs: list[tuple[str, Path, Path, str, str]],
    progress: Callable[[str], None] | None,
) -> None:
    """Convert ``(stem, image, xml, split, flag)`` jobs in order, reporting progress."""
    for stem, image, xml, split, flag in jobs:
        convert_pair(writer, report, stem, image, xml, split, flag)
