"""MoNuSAC 2020: per-patient folders of sub-images with ImageScope XML, one layer per class.

* The class of a layer is ``Annotation/Attributes/Attribute@Name``, matched by name
  (case-insensitive) to the official codes 1 Epithelial, 2 Lymphocyte, 3 Neutrophil,
  4 Macrophage. A layer with another name keeps its nuclei without a label (-1) and
  is counted per name in the manifest, never dropped silently.
* ``Ambiguous`` layers mark areas to ignore: their regions are not nuclei; they are
  counted (image column ``ambiguous_regions``).
* Polygons are rasterised with the ImageScope rule shared with MoNuSeg (pixel-corner
  vertices, first region wins, clipped at the border).
* Images and XMLs pair by identical stem (suffixes ``_1``, ``_001`` and ``-1`` all
  occur); the image is the ``.tif``, else the ``.svs`` when Pillow can decode it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import CorruptArchiveError, MissingFilesError
from ..labelsets import native_vocabulary
from ..readers.images import read_rgb
from ..readers.imagescope import rasterize_regions, read_imagescope
from ..store import StoreWriter
from .base import ConversionReport, Source, list_files, walk_dirs

IGNORE_CLASS = "ambiguous"
SPLIT_HINTS = (("test", "test"), ("train", "train"), ("images_and_annotations", "train"))


def split_of(top: Path) -> str | None:
    name = top.name.lower()
    for hint, split in SPLIT_HINTS:
        if hint in name:
            return split
    return None


def find_split_roots(folder: Path) -> dict[str, Path]:
    """Top folders of the training and test trees (patient folders below them)."""
    roots: dict[str, Path] = {}
    for d in walk_dirs(folder):
        split = split_of(d) if d != folder else None
        if split and split not in roots and any(list_files(p, (".xml",)) for p in d.iterdir() if p.is_dir()):
            roots[split] = d
    return roots


class MoNuSAC(Source):
    """MoNuSAC 2020 from its training and test trees."""

    name = "monusac"
    version = "1"

    def convert(
        self, folder: Path, writer: StoreWriter, progress: Callable[[str], None] | None = None
    ) -> ConversionReport:
        report = ConversionReport(rules={
            "classes": "layer class from Attribute@Name: 1 Epithelial, 2 Lymphocyte, 3 Neutrophil, 4 Macrophage; other names kept unlabelled (-1) and counted",
            "ambiguous": "Ambiguous regions are areas to ignore, not nuclei: counted per image (ambiguous_regions)",
            "coordinates": "ImageScope rule shared with MoNuSeg: pixel-corner vertices, first region wins, clipped",
            "images": ".tif preferred; .svs read with Pillow when there is no .tif, else skipped and listed",
        })
        codes = {name.lower(): code for code, name, _ in native_vocabulary("monusac")}
        roots = find_split_roots(folder)
        if set(roots) != {"train", "test"}:
            missing = sorted({"train", "test"} - set(roots))
            raise MissingFilesError(
                f"{folder}: no MoNuSAC {' or '.join(missing)} tree found (a folder named like "
                "'MoNuSAC_images_and_annotations' or 'MoNuSAC Testing Data and Annotations' with "
                "one folder per patient). Extract both archives there."
            )
        skipped: list[str] = []
        for split in ("train", "test"):
            jobs = []
            for patient_dir in sorted(p for p in roots[split].iterdir() if p.is_dir()):
                images = {p.stem: p for p in list_files(patient_dir, (".tif", ".tiff"))}
                slides = {p.stem: p for p in list_files(patient_dir, (".svs",))}
                for xml in list_files(patient_dir, (".xml",)):
                    image = images.get(xml.stem) or slides.get(xml.stem)
                    if image is None:
                        raise MissingFilesError(f"{xml}: no image of the same name (.tif or .svs) beside it; re-extract the archive.")
                    jobs.append((patient_dir.name, xml, image))
            for i, (patient, xml, image) in enumerate(jobs, 1):
                try:
                    rgb = read_rgb(image)
                except CorruptArchiveError:
                    if image.suffix.lower() != ".svs":
                        raise
                    skipped.append(str(image.relative_to(roots[split])))
                    report.dropped["svs_only_images_skipped"] += 1
                    continue
                n = self._convert_one(writer, report, split, patient, xml, rgb, codes)
                if progress:
                    progress(f"[{split} {i}/{len(jobs)}] {xml.stem}: {n} nuclei")
        if skipped:
            report.notes.append("skipped (only an .svs that Pillow cannot decode): " + ", ".join(skipped))
        return report

    def _convert_one(self, writer: StoreWriter, report: ConversionReport, split: str, patient: str,
                     xml: Path, rgb: np.ndarray, codes: dict[str, int]) -> int:
        annotation = read_imagescope(xml)
        ignore = [r for r in annotation.regions if r.layer_class.lower() == IGNORE_CLASS]
        nuclei = [r for r in annotation.regions if r.layer_class.lower() != IGNORE_CLASS]
        report.regions[split] += len(nuclei)
        report.dropped["ambiguous_regions"] += len(ignore)
        inst, kept, dropped = rasterize_regions(nuclei, rgb.shape[:2])
        report.dropped.update(dropped)
        labels = []
        for i in kept:
            name = nuclei[i].layer_class
            code = codes.get(name.lower(), -1)
            if code == -1:
                report.dropped[f"unknown_class_kept_unlabelled:{name or '(empty)'}"] += 1
            labels.append(code)
        ids = [nuclei[i].region_id for i in kept]
        source_ids = [int(r) if r.lstrip("-").isdigit() else -1 for r in ids]
        return writer.add_image(
            xml.stem, split, rgb, inst, np.asarray(labels, np.int32), np.asarray(source_ids, np.int64),
            mpp=annotation.mpp, patient=patient, image_columns={"ambiguous_regions": len(ignore)},
        )
