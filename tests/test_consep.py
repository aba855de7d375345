"""CoNSeP: a demo ``consep.zip`` (RGBA PNGs, HoVer-Net ``.mat`` labels) over loopback HTTP."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_geometry_exact, extract_manual
from PIL import Image
from scipy.io import loadmat, savemat

import nucdata
from nucdata.acquire import is_prepared
from nucdata.catalog import get_card
from nucdata.testing import install


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_download_convert_and_check_against_the_mat_files(home, http_server):
    url, served = http_server
    archives = install("consep", home, into=served, base_url=url)
    nucdata.prepare("consep", root=home)
    ds = nucdata.load("consep", root=home)
    m = ds.manifest
    assert m["count_check"] == "passed"  # images per split, regions and classes vs the demo card
    assert m["counts"]["images"] == {"train": 4, "test": 2, "total": 6}
    assert m["counts"]["classes"] == archives.expected["classes"]
    assert m["extra"]["inst_centroid_max_difference_px"] < 1e-3  # same convention: 0-based (x, y)
    assert m["extra"]["type_map_disagreeing_nuclei"] == 0
    assert m["extra"]["classes"]["7"] == "endothelial"
    assert assert_geometry_exact(ds.store) == m["counts"]["nuclei"]["total"]
    assert set(np.unique(ds.nuclei.label.values).tolist()) <= set(range(1, 8))
    assert ds[0]["image"].shape == (3, 96, 96)  # RGBA PNG read as RGB
    assert len(nucdata.load("consep", split="train", root=home)) == 4
    assert len(nucdata.load("consep", split="test", root=home)) == 2

    store = ds.store
    names = list(store.column("images", "name"))
    assert names == ["train_1", "train_2", "train_3", "train_4", "test_1", "test_2"]
    label = np.asarray(store.column("nuclei", "label"))
    source_id = np.asarray(store.column("nuclei", "source_id"))
    with zipfile.ZipFile(served / "consep.zip") as zf:
        for index, name in enumerate(names):
            split = "Train" if name.startswith("train") else "Test"
            png = Image.open(io.BytesIO(zf.read(f"CoNSeP/{split}/Images/{name}.png")))
            assert png.mode == "RGBA"
            np.testing.assert_array_equal(store.rgb(index), np.asarray(png)[..., :3])
            mat = loadmat(io.BytesIO(zf.read(f"CoNSeP/{split}/Labels/{name}.mat")))
            rows = store.nucleus_slice(index)
            ids = source_id[rows]
            np.testing.assert_array_equal(ids, np.arange(1, ids.size + 1))  # ids 1..N kept
            np.testing.assert_array_equal(label[rows], mat["inst_type"][ids - 1, 0])  # row k <-> id k+1
            np.testing.assert_array_equal(np.asarray(store.instance_map(index)), mat["inst_map"])
            assert store.column("images", "split")[index] == split.lower()


@pytest.mark.parametrize("key", ["inst_map", "type_map", "inst_type", "inst_centroid"])
def test_missing_key_names_file_and_key(home, tmp_path, key):
    install("consep", home)
    folder = extract_manual(home, ["consep.zip"], tmp_path / "x")
    label = folder / "CoNSeP" / "Test" / "Labels" / "test_2.mat"
    data = {k: v for k, v in loadmat(label).items() if not k.startswith("__")}
    savemat(label, {k: v for k, v in data.items() if k != key})
    before = _digest(folder)
    with pytest.raises(nucdata.MalformedAnnotationError, match=rf"test_2\.mat: key '{key}' is missing"):
        nucdata.prepare("consep", from_dir=folder, root=home, check_counts=False)
    assert _digest(folder) == before
    assert not is_prepared("consep", root=home)
    assert not any((home / "stores" / "consep").glob(".*tmp-*"))


def test_misaligned_ids_and_missing_folders(home, tmp_path):
    install("consep", home)
    folder = extract_manual(home, ["consep.zip"], tmp_path / "x")
    label = folder / "CoNSeP" / "Train" / "Labels" / "train_2.mat"
    data = {k: v for k, v in loadmat(label).items() if not k.startswith("__")}
    savemat(label, {**data, "inst_type": data["inst_type"][:-1]})
    with pytest.raises(nucdata.MalformedAnnotationError, match=r"train_2\.mat: inst_map has \d+ ids.*inst_type has"):
        nucdata.prepare("consep", from_dir=folder, root=home, check_counts=False)
    savemat(label, data)
    (folder / "CoNSeP" / "Test" / "Labels").rename(folder / "CoNSeP" / "Test" / "Lbls")
    with pytest.raises(nucdata.MissingFilesError, match="Test/Images"):
        nucdata.prepare("consep", from_dir=folder, root=home, check_counts=False)
    assert not is_prepared("consep", root=home)


def test_manual_route_and_card(home):
    card = get_card("consep")
    assert "password" in card.manual_instructions and "opendatalab" in card.manual_instructions.lower()
    assert card.files[0].sha256 is None  # no SHA-256 is published anywhere
    install("consep", home)  # into the manual folder, no mirror
    nucdata.prepare("consep", root=home, download=False)
    assert is_prepared("consep", root=home)
