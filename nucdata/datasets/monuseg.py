"""MoNuSeg 2018: 37 training images (30 classic + 7 flagged 'bonus') and 14 test images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nucdata.datasets._base import ConversionReport, Converter
from nucdata.datasets._imagescope_pairs import (
    KUMAR_STEMS,
    RASTER_RULES,
    find_flat_pair_dir,
    find_training_dirs,
    pair_files,
    run_pairs,
)
from nucdata.errors import MissingFilesError
from nucdata.store import StoreWriter


class MoNuSeg(Converter):
    """MoNuSeg 2018 from its training and test archives (or their extracted folders)."""

    name = "monuseg"
    version = "1"

    def convert(
        self, folder: Path, writer: StoreWriter, progress: Callable[[str], None] | None = None
    ) -> ConversionReport:
        report = ConversionReport(rules=dict(RASTER_RULES))
        training = find_training_dirs(folder)
        if training is None:
            raise MissingFilesError(
                f"{folder}: no training folder ('Tissue Images/' beside 'Annotations/') found. "
                "Extract 'MoNuSeg 2018 Training Data.zip' there, or point --from at the folder "
                "holding both extracted archives."
            )
        test_dir = find_flat_pair_dir(folder, exclude=(training[0].parent,))
        if test_dir is None:
            raise MissingFilesError(
                f"{folder}: no test folder (*.tif beside *.xml, as in 'MoNuSegTestData/') found. "
                "Extract 'MoNuSegTestData.zip' there as well."
            )
        train_pairs = pair_files(*training)
        test_pairs = pair_files(test_dir, test_dir)
        jobs = [
            (stem, img, xml, "train", "" if stem in KUMAR_STEMS else "bonus")
            for stem, (img, xml) in train_pairs.items()
        ]
        jobs += [(stem, img, xml, "test", "") for stem, (img, xml) in test_pairs.items()]
        run_pairs(writer, report, jobs, progress)
        bonus = sum(1 for j in jobs if j[4] == "bonus")
        report.notes.append(
            f"{bonus} training images are not among Kumar's 30 classic images and are flagged 'bonus'"
        )
        return report
