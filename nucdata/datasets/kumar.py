"""Kumar 2017: the 30 classic MoNuSeg training images with the HoVer-Net 16/8/6 split."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nucdata.datasets._base import ConversionReport, Converter
from nucdata.datasets._imagescope_pairs import (
    IMAGE_SUFFIXES,
    KUMAR_SPLIT,
    KUMAR_STEMS,
    RASTER_RULES,
    find_training_dirs,
    full_stem,
    list_files,
    run_pairs,
)
from nucdata.errors import MissingFilesError
from nucdata.store import StoreWriter


class Kumar(Converter):
    """Kumar et al. 2017, read from a 'Tissue Images/' + 'Annotations/' folder."""

    name = "kumar"
    version = "1"

    def convert(
        self, folder: Path, writer: StoreWriter, progress: Callable[[str], None] | None = None
    ) -> ConversionReport:
        report = ConversionReport(rules=dict(RASTER_RULES))
        report.rules["split"] = "HoVer-Net 16/8/6 split (hover_net data/README.md, 2019)"
        training = find_training_dirs(folder)
        if training is None:
            raise MissingFilesError(
                f"{folder}: no 'Tissue Images/' folder beside 'Annotations/' found. Extract "
                "'MoNuSeg 2018 Training Data.zip' (or the original Kumar release) there."
            )
        image_dir, xml_dir = training
        images = {p.stem: p for p in list_files(image_dir, IMAGE_SUFFIXES)}
        xmls = {p.stem: p for p in list_files(xml_dir, (".xml",))}
        absent = [s for s in sorted(KUMAR_STEMS) if s not in images or s not in xmls]
        if absent:
            lines = []
            for s in absent:
                if s not in images:
                    lines.append(f"  {image_dir / s}.tif")
                if s not in xmls:
                    lines.append(f"  {xml_dir / s}.xml")
            raise MissingFilesError(
                f"{folder}: {len(absent)} of Kumar's 30 images are missing or lack their XML:\n"
                + "\n".join(lines)
                + "\nUse the current MoNuSeg 2018 training archive, which holds all 30."
            )
        jobs = [
            (full_stem(t), images[full_stem(t)], xmls[full_stem(t)], split, "")
            for split, ids in KUMAR_SPLIT.items()
            for t in ids
        ]
        run_pairs(writer, report, jobs, progress)
        ignored = sorted(set(images) - set(KUMAR_STEMS))
        if ignored:
            report.notes.append(f"ignored {len(ignored)} images that are not Kumar's 30: {', '.join(ignored)}")
        return report
