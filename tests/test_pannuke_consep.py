"""PanNuke and CoNSeP from generated archives in their native layouts."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_geometry_exact, extract_manual
from scipy.io import loadmat, savemat

import nucdata
from nucdata.demo import install
from nucdata.prepare import is_prepared
from nucdata.sources.pannuke import merge_channels


def test_pannuke_over_http(home, http_server):
    url, served = http_server
    install("pannuke", home, into=served, base_url=url)
    nucdata.prepare("pannuke")
    ds = nucdata.load("pannuke")
    manifest = ds.manifest
    assert manifest["pixels"]["layout"] == "stacked"
    assert manifest["counts"]["images"] == {"fold1": 6, "fold2": 5, "fold3": 7, "total": 18}
    assert manifest["count_check"] == "passed"  # per-class counts checked too
    assert manifest["dropped"]["fully_overlapped"] == 1
    assert manifest["dropped"]["cross_channel_overlap_pixels"] == 1
    assert manifest["dropped"]["empty_patches_kept"] == 3
    assert set(np.unique(ds.nuclei.label.values)) <= {0, 1, 2, 3, 4}
    assert ds.images.tissue.values[0] == "Breast"
    assert assert_geometry_exact(ds.store) == manifest["counts"]["nuclei"]["total"]


def test_pannuke_rotations(home):
    install("pannuke", home)
    nucdata.prepare("pannuke")
    assert len(nucdata.load("pannuke", split="rotation1/train")) == 6
    assert len(nucdata.load("pannuke", split="rotation3/train")) == 7
    assert set(nucdata.load("pannuke", split="rotation3/test").images.split.values) == {"fold1"}
    with pytest.raises(nucdata.InvalidArgumentError, match="rotation1/val"):
        nucdata.load("pannuke", split="rotation4/train")


def test_pannuke_ids_repeat_across_channels():
    masks = np.zeros((8, 8, 6))
    masks[0:2, 0:2, 0] = 1
    masks[4:6, 4:6, 2] = 1  # same id, another channel: another nucleus
    masks[0, 0, 3] = 5  # claimed twice: channel 0 keeps it, channel 3's nucleus vanishes
    inst, codes, ids, before, overlap = merge_channels(masks)
    assert codes.tolist() == [0, 2] and ids.tolist() == [1, 1] and overlap == 1 and before == 3
    assert (inst == 1).sum() == 4 and (inst == 2).sum() == 4


def test_pannuke_bad_folds(home, tmp_path):
    install("pannuke", home)
    folder = extract_manual(home, ["fold_1.zip"], tmp_path / "x")
    types = folder / "Fold 1" / "images" / "fold1" / "types.npy"
    np.save(types, np.load(types)[:-1])
    with pytest.raises(nucdata.MalformedAnnotationError, match="disagree in length"):
        nucdata.prepare("pannuke", source=folder, check_counts=False)
    np.save(types, np.array(["Breast"] * 6, dtype="<U13"))
    masks = folder / "Fold 1" / "masks" / "fold1" / "masks.npy"
    masks.write_bytes(masks.read_bytes()[:-1000])
    with pytest.raises(nucdata.CorruptArchiveError, match="masks.npy"):
        nucdata.prepare("pannuke", source=folder, check_counts=False)
    assert not is_prepared("pannuke")


def test_pannuke_types_realdata(realdata):
    for fold, n in ((1, 2656), (3, 2722)):
        types = np.load(realdata / "pannuke" / f"fold{fold}_types.npy")
        assert types.shape == (n,) and types.dtype == np.dtype("<U13")
        assert set(types.tolist()) <= {
            "Adrenal_gland", "Bile-duct", "Bladder", "Breast", "Cervix", "Colon", "Esophagus",
            "HeadNeck", "Kidney", "Liver", "Lung", "Ovarian", "Pancreatic", "Prostate", "Skin",
            "Stomach", "Testis", "Thyroid", "Uterus"}


def test_consep_end_to_end(home, http_server):
    url, served = http_server
    install("consep", home, into=served, base_url=url)
    nucdata.prepare("consep")
    ds = nucdata.load("consep")
    manifest = ds.manifest
    assert manifest["counts"]["images"] == {"train": 4, "test": 2, "total": 6}
    assert manifest["extra"]["inst_centroid_max_difference_px"] < 1e-3
    assert set(np.unique(ds.nuclei.label.values)) <= set(range(1, 8))
    assert assert_geometry_exact(ds.store) == manifest["counts"]["nuclei"]["total"]
    # The native label follows inst_type row (id - 1).
    store = ds.store
    assert ds[0]["image"].shape == (3, 96, 96)  # RGBA PNG read as RGB
    assert store.column("nuclei", "source_id")[0] == 1


def test_consep_bad_label_files(home, tmp_path):
    install("consep", home)
    folder = extract_manual(home, ["consep.zip"], tmp_path / "x")
    label = folder / "CoNSeP" / "Train" / "Labels" / "train_2.mat"
    data = {k: v for k, v in loadmat(label).items() if not k.startswith("__")}
    savemat(label, {k: v for k, v in data.items() if k != "inst_type"})
    with pytest.raises(nucdata.MalformedAnnotationError, match=r"train_2\.mat: key 'inst_type' is missing"):
        nucdata.prepare("consep", source=folder, check_counts=False)
    data["inst_type"] = data["inst_type"][:-1]
    savemat(label, data)
    with pytest.raises(nucdata.MalformedAnnotationError, match="inst_type has"):
        nucdata.prepare("consep", source=folder, check_counts=False)
    (folder / "CoNSeP" / "Test" / "Labels").rename(folder / "CoNSeP" / "Test" / "Lbls")
    with pytest.raises(nucdata.MissingFilesError, match="Test/Images"):
        nucdata.prepare("consep", source=folder, check_counts=False)
    assert not is_prepared("consep")
