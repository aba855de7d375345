"""MoNuSeg 2018, end to end from generated archives in the native layout."""

from __future__ import annotations

import shutil
import zipfile

import numpy as np
import pytest
from helpers import assert_geometry_exact

import nucdata
from nucdata._util.home import manual_dir
from nucdata.testing import install


@pytest.fixture
def monuseg(home, http_server):
    url, served = http_server
    install("monuseg", home, into=served, base_url=url)
    nucdata.prepare("monuseg")
    return nucdata.load("monuseg")


def test_monuseg_end_to_end_over_http(monuseg):
    ds = monuseg
    images = ds.images
    assert int((images.split == "train").sum()) == 37
    assert int((images.split == "test").sum()) == 14
    assert int((images.flag == "bonus").sum()) == 7
    assert set(images.flag.values[images.split.values == "test"]) == {""}
    manifest = ds.manifest
    assert manifest["source"]["kind"] == "archives" and manifest["source"]["verified"]
    assert manifest["count_check"] == "passed"
    # Each generated image carries one 2-vertex click: dropped and counted.
    assert manifest["dropped"]["degenerate"] == 51
    assert assert_geometry_exact(ds.store) == manifest["counts"]["nuclei"]["total"]
    assert (ds.nuclei.label == -1).all()


def test_monuseg_image_metadata(monuseg):
    images = monuseg.images
    names = images.name.values.tolist()
    mpp = dict(zip(names, images.mpp.values.tolist(), strict=True))
    assert np.isnan(mpp["TCGA-NH-A8F7-01A-01-TS1"])
    assert mpp["TCGA-HE-7128-01Z-00-DX1"] == pytest.approx(0.5005)
    tissue = dict(zip(names, images.tissue.values.tolist(), strict=True))
    assert tissue["TCGA-A7-A13E-01Z-00-DX1"] == "breast"
    assert tissue["TCGA-44-2665-01B-06-BS6"] == "lung"
    assert tissue["TCGA-BC-A217-01Z-00-DX1"] == ""  # bonus organs are not published
    patient = dict(zip(names, images.patient.values.tolist(), strict=True))
    assert patient["TCGA-A7-A13E-01Z-00-DX1"] == "TCGA-A7-A13E"


def test_split_selection_and_samples(monuseg, home):
    test = nucdata.load("monuseg", split="test")
    assert len(test) == 14
    sample = test[0]
    assert sample["image"].shape == (3, 96, 96) and str(sample["image"].dtype) == "torch.uint8"
    assert sample["instance_map"].shape == (96, 96)
    k = int(sample["instance_map"].max())
    assert sample["centroids"].shape == (k, 2) and sample["labels"].shape == (k,)
    assert sample["dataset"] == "monuseg" and sample["image_id"].startswith("TCGA-")
    # The split is a contiguous run: the xarray table is a view of the memory map.
    assert isinstance(test.nuclei.area.values.base, np.memmap) or test.nuclei.area.values.base is not None
    with pytest.raises(nucdata.InvalidArgumentError, match="valid splits: train, test"):
        nucdata.load("monuseg", split="validation")


def test_transforms_are_dict_to_dict(monuseg):
    ds = nucdata.load("monuseg", split="test", transforms=lambda s: {**s, "flipped": s["image"].flip(-1)})
    assert "flipped" in ds[0]


def _extract(archive, dest):
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(dest)


def test_prepare_from_extracted_folder(home, tmp_path):
    install("monuseg", home)
    folder = tmp_path / "extracted"
    for name in ("MoNuSeg 2018 Training Data.zip", "MoNuSegTestData.zip"):
        _extract(manual_dir(home) / name, folder)
    shutil.rmtree(manual_dir(home))  # nothing to download from: the folder is the source
    nucdata.prepare("monuseg", from_dir=folder)
    manifest = nucdata.load("monuseg").manifest
    assert manifest["source"] == {"kind": "folder", "path": str(folder.resolve()), "verified": False}


def test_malformed_xml_names_file_and_line(home, tmp_path):
    install("monuseg", home)
    folder = tmp_path / "extracted"
    for name in ("MoNuSeg 2018 Training Data.zip", "MoNuSegTestData.zip"):
        _extract(manual_dir(home) / name, folder)
    xml = folder / "MoNuSegTestData" / "TCGA-2Z-A9J9-01A-01-TS1.xml"
    xml.write_text(xml.read_text().replace("</Regions>", "</Region>", 1))
    with pytest.raises(nucdata.MalformedAnnotationError, match=r"TCGA-2Z-A9J9-01A-01-TS1\.xml: line \d+"):
        nucdata.prepare("monuseg", from_dir=folder)
    from nucdata.acquire import is_prepared

    assert not is_prepared("monuseg")


def test_bad_vertex_names_region(home, tmp_path):
    install("monuseg", home)
    folder = tmp_path / "extracted"
    for name in ("MoNuSeg 2018 Training Data.zip", "MoNuSegTestData.zip"):
        _extract(manual_dir(home) / name, folder)
    xml = folder / "MoNuSegTestData" / "TCGA-2Z-A9J9-01A-01-TS1.xml"
    text = xml.read_text()
    start = text.index('X="', text.index("<Region Id=\"3\""))
    xml.write_text(text[:start] + 'X="abc"' + text[text.index(" Y=", start):])
    with pytest.raises(nucdata.MalformedAnnotationError, match="Region Id=3"):
        nucdata.prepare("monuseg", from_dir=folder)


def test_missing_test_folder(home, tmp_path):
    install("monuseg", home)
    folder = tmp_path / "extracted"
    _extract(manual_dir(home) / "MoNuSeg 2018 Training Data.zip", folder)
    with pytest.raises(nucdata.MissingFilesError, match="MoNuSegTestData"):
        nucdata.prepare("monuseg", from_dir=folder)
    with pytest.raises(nucdata.MissingFilesError, match="folder not found"):
        nucdata.prepare("monuseg", from_dir=tmp_path / "nope")
