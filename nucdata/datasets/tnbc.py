"""TNBC (Naylor et al. 2018): 50 binary masks split into instances.

Instance rule (documented, counted in the manifest): holes of at most
``MAX_HOLE`` background pixels enclosed by foreground are filled (1-px annotation
holes), the mask is split into **8-connected** components (diagonal specks join
their nucleus), and components smaller than ``MIN_AREA`` pixels are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

from nucdata._util.images import read_gray, read_rgb
from nucdata.datasets._base import ConversionReport, Converter, list_files, walk_dirs
from nucdata.errors import MissingFilesError
from nucdata.store import StoreWriter

MIN_AREA = 5
MAX_HOLE = 4
_EIGHT = np.ones((3, 3), bool)


def binary_to_instances(mask: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Split a binary mask into an instance map under the module's rule.

    Returns the int32 instance map (1..K in raster order of each component's first
    pixel) and counts of ``holes_filled``, ``hole_pixels_filled`` and ``specks_dropped``.
    """
    fg = mask > 0
    background, n_bg = ndimage.label(~fg)  # 4-connected background
    sizes = np.bincount(background.ravel(), minlength=n_bg + 1)
    border = np.unique(np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]]))
    small = sizes <= MAX_HOLE
    small[0] = False
    small[border] = False
    holes = small[background]
    fg = fg | holes
    labels, n = ndimage.label(fg, structure=_EIGHT)
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    keep = areas >= MIN_AREA
    keep[0] = False
    lut = np.zeros(n + 1, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    stats = {
        "holes_filled": int(small.sum()),
        "hole_pixels_filled": int(holes.sum()),
        "specks_dropped": int(n - keep.sum()),
    }
    return lut[labels], stats


_PATIENT_DIR = re.compile(r"^Slide_(\d+)$")


class TNBC(Converter):
    """TNBC from ``Slide_NN/NN_k.png`` images and ``GT_NN/NN_k.png`` masks."""

    name = "tnbc"
    version = "1"

    def convert(
        self, folder: Path, writer: StoreWriter, progress: Callable[[str], None] | None = None
    ) -> ConversionReport:
        report = ConversionReport(
            rules={
                "instances": "8-connected components of the binary mask (threshold > 0)",
                "min_area": f"components under {MIN_AREA} px are dropped as specks",
                "holes": f"enclosed background holes of at most {MAX_HOLE} px are filled",
                "split": "no official split: every image is in 'all'; group by 'patient'",
            }
        )
        slides = sorted(
            (d for d in walk_dirs(folder) if _PATIENT_DIR.match(d.name)),
            key=lambda d: (int(_PATIENT_DIR.match(d.name).group(1)), str(d)),
        )
        if not slides:
            raise MissingFilesError(
                f"{folder}: no Slide_NN/ folders found. Extract TNBC_NucleiSegmentation.zip "
                "there, or point --from at the folder holding Slide_01/ ... GT_11/."
            )
        seen: set[str] = set()
        jobs = []
        for slide_dir in slides:
            patient = _PATIENT_DIR.match(slide_dir.name).group(1)
            if patient in seen:  # a doubled top folder in some copies
                report.notes.append(f"duplicate patient folder ignored: {slide_dir}")
                continue
            seen.add(patient)
            gt_dir = slide_dir.parent / f"GT_{patient}"
            if not gt_dir.is_dir():
                raise MissingFilesError(f"{gt_dir}: mask folder for {slide_dir} is missing; re-extract the archive.")
            for image in list_files(slide_dir, (".png",)):
                mask = gt_dir / image.name
                if not mask.is_file():
                    raise MissingFilesError(f"{mask}: mask for {image} is missing; re-extract the archive.")
                jobs.append((patient, image, mask))
        jobs.sort(key=lambda j: (int(j[0]), _image_number(j[1])))
        for patient, image, mask_path in jobs:
            rgb = read_rgb(image)
            mask = read_gray(mask_path)
            if mask.shape != rgb.shape[:2]:
                raise MissingFilesError(f"{mask_path}: mask size {mask.shape} differs from image {rgb.shape[:2]}")
            inst, stats = binary_to_instances(mask)
            report.dropped["specks_dropped"] += stats["specks_dropped"]
            report.dropped["holes_filled"] += stats["holes_filled"]
            report.dropped["hole_pixels_filled"] += stats["hole_pixels_filled"]
            n = writer.add_image(image.stem, "all", rgb, inst, patient=patient)
            report.regions["all"] += n + stats["specks_dropped"]
        return report


def _image_number(path: Path) -> int:
    tail = path.stem.rsplit("_", 1)[-1]
    return int(tail) if tail.isascii() and tail.isdigit() else 0
