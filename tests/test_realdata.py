"""Genuine sample files from ../shared/realdata (skipped when the folder is absent)."""

from __future__ import annotations

import numpy as np
import pytest

import nucdata
from nucdata._util.images import read_gray, read_rgb
from nucdata._util.instances import nucleus_properties
from nucdata.datasets import rasterize_regions, read_imagescope
from nucdata.datasets.tnbc import binary_to_instances
from nucdata.store import StoreWriter

# Region counts from realdata/README.md; TNBC 8-connected counts from datasets.md Appendix A.
MONUSEG_REGIONS = {
    "TCGA-21-5784-01Z-00-DX1": 398, "TCGA-50-5931-01Z-00-DX1": 445,
    "TCGA-A7-A13E-01Z-00-DX1": 314, "TCGA-B0-5698-01Z-00-DX1": 357,
    "TCGA-G9-6362-01Z-00-DX1": 472, "TCGA-NH-A8F7-01A-01-TS1": 363,
}
TNBC_COUNTS = {"01_1": 69, "01_2": 155, "01_3": 13, "01_4": 117, "01_5": 21, "01_6": 8,
               "01_7": 75, "02_1": 21, "02_2": 72, "02_3": 95}


def test_monuseg_pairs(realdata):
    folder = realdata / "monuseg"
    for stem, regions in MONUSEG_REGIONS.items():
        annotation = read_imagescope(folder / "Annotations" / f"{stem}.xml")
        assert len(annotation.regions) == regions
        rgb = read_rgb(folder / "Tissue_Images" / f"{stem}.tif")  # LZW with predictor
        assert rgb.shape == (1000, 1000, 3) and rgb.dtype == np.uint8
        inst, kept, dropped = rasterize_regions(annotation.regions, rgb.shape[:2])
        assert len(kept) + dropped["degenerate"] + dropped["outside_image"] + dropped["fully_overlapped"] == regions
        props = nucleus_properties(inst, len(kept))
        declared = np.array([annotation.regions[i].declared_area for i in kept])
        # The pixel-corner rule reproduces the XML's own Area to within a few percent
        # (first-wins overlaps remove pixels); naive filling would be ~9% too large.
        ratio = props["area"].sum() / declared.sum()
        assert 0.96 < ratio < 1.02, (stem, ratio)
        if stem == "TCGA-50-5931-01Z-00-DX1":
            assert dropped["degenerate"] == 1  # the 2-vertex Area="0" click
        if stem == "TCGA-NH-A8F7-01A-01-TS1":
            assert annotation.mpp is None
        if stem == "TCGA-A7-A13E-01Z-00-DX1":
            assert annotation.mpp == pytest.approx(0.2456)


def test_monuseg_pairs_through_the_kumar_layout(realdata, tmp_path):
    # Six of the thirty Kumar images: the converter must name the 24 missing ones.
    with pytest.raises(nucdata.MissingFilesError, match="24 of Kumar's 30"):
        nucdata.prepare("kumar", from_dir=realdata / "monuseg", root=tmp_path)


def test_tnbc_patients(realdata, tmp_path):
    for name, expected in TNBC_COUNTS.items():
        patient = name[:2]
        rgb = read_rgb(realdata / "tnbc" / f"Slide_{patient}" / f"{name}.png")  # RGBA on disk
        assert rgb.shape == (512, 512, 3)
        mask = read_gray(realdata / "tnbc" / f"GT_{patient}" / f"{name}.png")
        assert set(np.unique(mask).tolist()) <= {0, 255}
        inst, _ = binary_to_instances(mask)
        assert int(inst.max()) == expected, name
    # And through the converter, from the folder as it is.
    path = nucdata.prepare("tnbc", from_dir=realdata / "tnbc", root=tmp_path, check_counts=False)
    ds = nucdata.load("tnbc", root=tmp_path)
    assert path.is_dir() and len(ds) == 10
    assert ds.manifest["counts"]["nuclei"]["total"] == sum(TNBC_COUNTS.values())
    assert ds.manifest["dropped"]["holes_filled"] >= 2  # 01_2 and 02_3 have 1-px holes


def test_writer_accepts_real_tiff(realdata, tmp_path):
    stem = "TCGA-A7-A13E-01Z-00-DX1"
    rgb = read_rgb(realdata / "monuseg" / "Tissue_Images" / f"{stem}.tif")
    annotation = read_imagescope(realdata / "monuseg" / "Annotations" / f"{stem}.xml")
    inst, kept, _ = rasterize_regions(annotation.regions, rgb.shape[:2])
    with StoreWriter(tmp_path / "s" / "1", "monuseg", "1") as writer:
        assert writer.add_image(stem, "train", rgb, inst) == len(kept)
        writer.publish({})
