"""Kumar 2017: the 30 classic images taken from the MoNuSeg training zip, HoVer-Net split."""

from __future__ import annotations

import json
import zipfile

import pytest
from helpers import assert_geometry_exact

import nucdata
from nucdata._util.home import manual_dir, registry_dir
from nucdata.testing import install
from nucdata.testing.monuseg import KUMAR


def _extract(archive, dest):
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(dest)


def test_kumar_split_and_missing_images(home, tmp_path):
    install("kumar", home)
    nucdata.prepare("kumar")
    ds = nucdata.load("kumar")
    counts = ds.manifest["counts"]["images"]
    assert counts == {"train": 16, "test_same_organ": 8, "test_different_organ": 6, "total": 30}
    assert "TCGA-BC-A217-01Z-00-DX1" not in ds.images.name.values  # bonus images are not Kumar's
    assert set(nucdata.load("kumar", split="test_different_organ").images.tissue.values) == {
        "bladder", "colon", "stomach"}
    assert_geometry_exact(ds.store)

    folder = tmp_path / "extracted"
    _extract(manual_dir(home) / "MoNuSeg 2018 Training Data.zip", folder)
    images = folder / "MoNuSeg 2018 Training Data" / "Tissue Images"
    (images / "TCGA-AY-A8YK-01A-01-TS1.tif").unlink()
    (images / "TCGA-18-5592-01Z-00-DX1.tif").unlink()
    with pytest.raises(nucdata.MissingFilesError) as info:
        nucdata.prepare("kumar", from_dir=folder, force=True)
    assert "2 of Kumar's 30" in str(info.value)
    assert "TCGA-AY-A8YK-01A-01-TS1" in str(info.value) and "TCGA-18-5592-01Z-00-DX1" in str(info.value)
    assert nucdata.load("kumar").store.n_images == 30  # the earlier store is intact


def test_count_check_guards_against_other_releases(home):
    install("kumar", home)
    path = registry_dir(home) / "kumar.json"
    data = json.loads(path.read_text())
    data["expected"]["regions"] = {"all": 16966}
    path.write_text(json.dumps(data))
    with pytest.raises(nucdata.CountMismatchError, match="annotations read"):
        nucdata.prepare("kumar")
    nucdata.prepare("kumar", check_counts=False)
    assert nucdata.load("kumar").manifest["count_check"].startswith("failed")


def test_generator_and_converter_lists_agree():
    """Two independent transcriptions of the published list (datasets.md §6.4, §6.6)."""
    from nucdata.datasets.kumar import KUMAR_STEMS

    assert KUMAR == KUMAR_STEMS
    assert sorted(KUMAR.values()).count("train") == 16
