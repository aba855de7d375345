"""PanNuke: demo fold archives in the native zip layout, fetched over loopback HTTP."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_geometry_exact, extract_manual

import nucdata
from nucdata.acquire import is_prepared
from nucdata.datasets.pannuke import CHUNK, _decode, merge_channels
from nucdata.testing import install

TISSUES = {
    "Adrenal_gland", "Bile-duct", "Bladder", "Breast", "Cervix", "Colon", "Esophagus",
    "HeadNeck", "Kidney", "Liver", "Lung", "Ovarian", "Pancreatic", "Prostate", "Skin",
    "Stomach", "Testis", "Thyroid", "Uterus",
}


def _fold_arrays(zip_path: Path, fold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """images, masks, types of one demo zip, read back from the archive itself."""
    with zipfile.ZipFile(zip_path) as zf:
        def read(name: str) -> np.ndarray:
            with zf.open(name) as fh:
                return np.load(fh)
        top = f"Fold {fold}"
        return (read(f"{top}/images/fold{fold}/images.npy"), read(f"{top}/masks/fold{fold}/masks.npy"),
                read(f"{top}/images/fold{fold}/types.npy"))


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def prepared(home, http_server):
    url, served = http_server
    archives = install("pannuke", home, into=served, base_url=url)
    nucdata.prepare("pannuke", root=home)
    return archives, served


def test_download_convert_and_geometry(prepared, home):
    archives, served = prepared
    ds = nucdata.load("pannuke", root=home)
    m = ds.manifest
    assert m["count_check"] == "passed"  # images, annotations per split and classes vs the demo card
    assert m["pixels"]["layout"] == "stacked"
    assert ds.images.tissue.values[0] == "Breast"
    assert m["counts"]["images"] == {**archives.expected["images"], "total": 18}
    assert m["counts"]["classes"] == archives.expected["classes"]
    assert m["annotations_read"] == archives.expected["regions"]
    assert m["extra"]["classes"]["0"] == "Neoplastic" and m["extra"]["classes"]["4"] == "Epithelial"
    assert assert_geometry_exact(ds.store) == m["counts"]["nuclei"]["total"]
    assert set(np.unique(ds.nuclei.label.values).tolist()) <= {0, 1, 2, 3, 4}
    assert [s["sha256"] for s in m["source"]["files"]] == [
        hashlib.sha256((served / p.name).read_bytes()).hexdigest() for p in archives.files]


def test_relabelling_against_the_raw_channels(prepared, home):
    """Every stored nucleus is exactly one (channel, id) of the raw masks."""
    archives, served = prepared
    store = nucdata.load("pannuke", root=home).store
    names = list(store.column("images", "name"))
    label = np.asarray(store.column("nuclei", "label"))
    source_id = np.asarray(store.column("nuclei", "source_id"))
    collisions = overlaps = 0
    for fold in (1, 2, 3):
        images, masks, types = _fold_arrays(served / f"fold_{fold}.zip", fold)
        for i in range(images.shape[0]):
            index = names.index(f"fold{fold}_{i:04d}")
            assert store.column("images", "split")[index] == f"fold{fold}"
            assert store.column("images", "tissue")[index] == types[i]
            np.testing.assert_array_equal(store.rgb(index), images[i].astype(np.uint8))
            inst = np.asarray(store.instance_map(index))
            rows = store.nucleus_slice(index)
            claimed = (masks[i, ..., :5] > 0).sum(-1)
            overlaps += int((claimed > 1).sum())
            ids_per_channel = [set(np.unique(masks[i, ..., c]).tolist()) - {0} for c in range(5)]
            collisions += sum(len(ids_per_channel[a] & ids_per_channel[b]) for a in range(5) for b in range(a + 1, 5))
            for k, row in enumerate(range(rows.start, rows.stop), 1):
                c, nid = int(label[row]), int(source_id[row])
                raw = masks[i, ..., c] == nid
                lower = (masks[i, ..., :c] > 0).any(-1)  # lower channels win shared pixels
                np.testing.assert_array_equal(inst == k, raw & ~lower)
    assert collisions > 0  # the same id in two channels really happens in the demo
    manifest = nucdata.load("pannuke", root=home).manifest
    assert manifest["dropped"]["cross_channel_overlap_pixels"] == overlaps == 1
    assert manifest["dropped"]["fully_overlapped"] == 1
    assert manifest["dropped"]["empty_patches_kept"] == 3


def test_rotations(prepared, home):
    sizes = {"fold1": 6, "fold2": 5, "fold3": 7}
    standard = {1: ("fold1", "fold2", "fold3"), 2: ("fold2", "fold1", "fold3"), 3: ("fold3", "fold2", "fold1")}
    for r, folds in standard.items():
        for part, fold in zip(("train", "val", "test"), folds, strict=True):
            ds = nucdata.load("pannuke", split=f"rotation{r}/{part}", root=home)
            assert len(ds) == sizes[fold]
            assert set(ds.images.split.values.tolist()) == {fold}
    with pytest.raises(nucdata.InvalidArgumentError, match="rotation1/val"):  # lists the valid ones
        nucdata.load("pannuke", split="rotation4/train", root=home)


def test_fast_path_matches_exact_merge():
    rng = np.random.default_rng(3)
    masks = np.zeros((CHUNK, 32, 32, 6))
    for j in range(CHUNK):
        for c in range(5):
            for nid in range(1, 4):
                y, x = rng.integers(0, 28, 2)
                masks[j, y:y + 4, x:x + 4, c] = np.where(masks[j, y:y + 4, x:x + 4, :5].any(-1), 0, nid)
    masks[..., 5] = masks[..., :5].sum(-1) == 0
    masks[0, 0, 0, :2] = (7, 9)  # patch 0: a pixel claimed twice goes to the exact path
    chunk = _decode(0, np.full((CHUNK, 32, 32, 3), 12.0), masks.copy())
    assert not chunk.exact[0] and chunk.exact[1:].all()
    for j in range(1, CHUNK):
        inst, original = chunk.relabelled[j]
        ref_inst, ref_codes, ref_ids, _, overlap = merge_channels(masks[j])
        assert overlap == 0
        np.testing.assert_array_equal(inst, ref_inst)
        np.testing.assert_array_equal(original // chunk.stride, ref_codes)
        np.testing.assert_array_equal(original % chunk.stride, ref_ids)


def test_merge_channels_rule():
    masks = np.zeros((8, 8, 6))
    masks[0:2, 0:2, 0] = 1
    masks[4:6, 4:6, 2] = 1  # same id, another channel: another nucleus
    masks[0, 0, 3] = 5  # claimed twice: channel 0 keeps it, channel 3's nucleus vanishes
    inst, codes, ids, before, overlap = merge_channels(masks)
    assert codes.tolist() == [0, 2] and ids.tolist() == [1, 1] and overlap == 1 and before == 3
    assert (inst == 1).sum() == 4 and (inst == 2).sum() == 4


def _write_fold(folder: Path, images: np.ndarray, masks: np.ndarray, types: np.ndarray) -> Path:
    top = folder / "Fold 2"
    (top / "images" / "fold2").mkdir(parents=True)
    (top / "masks" / "fold2").mkdir(parents=True)
    np.save(top / "images" / "fold2" / "images.npy", images)
    np.save(top / "images" / "fold2" / "types.npy", types)
    np.save(top / "masks" / "fold2" / "masks.npy", masks)
    return folder


def test_float_pixels_rounded_and_clipped(home, tmp_path):
    images = np.zeros((2, 16, 16, 3))
    images[0, 0, 0] = (254.6, -3.0, 300.0)
    images[1, 0, 0] = (0.4, 127.5, 99.49)
    masks = np.zeros((2, 16, 16, 6))
    masks[1, 4:8, 4:8, 1] = 3
    folder = _write_fold(tmp_path / "src", images, masks, np.array(["Colon", "Skin"], "<U13"))
    nucdata.prepare("pannuke", from_dir=folder, root=home, check_counts=False)
    ds = nucdata.load("pannuke", root=home)
    assert ds.store.rgb(0)[0, 0].tolist() == [255, 0, 255]
    assert ds.store.rgb(1)[0, 0].tolist() == [0, 128, 99]
    assert ds.manifest["dropped"]["pixel_values_clipped_patches"] == 1
    assert ds.nuclei.label.values.tolist() == [1] and ds.nuclei.source_id.values.tolist() == [3]
    assert ds.images.split.values.tolist() == ["fold2", "fold2"]


def test_bad_folds_raise_typed_errors_and_publish_nothing(home, tmp_path):
    install("pannuke", home)
    folder = extract_manual(home, ["fold_1.zip", "fold_2.zip"], tmp_path / "x")
    types = folder / "Fold 1" / "images" / "fold1" / "types.npy"
    np.save(types, np.load(types)[:-1])
    before = _digest(folder)
    with pytest.raises(nucdata.MalformedAnnotationError) as err:
        nucdata.prepare("pannuke", from_dir=folder, root=home, check_counts=False)
    message = str(err.value)
    assert "disagree in length" in message and "images.npy has 6" in message and "types.npy has 5" in message
    assert _digest(folder) == before
    np.save(types, np.array(["Breast"] * 6, dtype="<U13"))
    masks = folder / "Fold 2" / "masks" / "fold2" / "masks.npy"
    masks.write_bytes(masks.read_bytes()[:-1000])
    before = _digest(folder)
    with pytest.raises(nucdata.CorruptArchiveError, match=r"Fold 2/masks/fold2/masks\.npy"):
        nucdata.prepare("pannuke", from_dir=folder, root=home, check_counts=False)
    assert _digest(folder) == before
    assert not is_prepared("pannuke", root=home)
    assert not any((home / "stores" / "pannuke").glob("*/manifest.json"))
    assert not any((home / "stores" / "pannuke").glob(".*tmp-*"))


def test_negative_ids_are_refused(home, tmp_path):
    masks = np.zeros((1, 8, 8, 6))
    masks[0, 2, 2, 0] = -4
    folder = _write_fold(tmp_path / "src", np.zeros((1, 8, 8, 3)), masks, np.array(["Colon"], "<U13"))
    with pytest.raises(nucdata.MalformedAnnotationError, match="negative instance id"):
        nucdata.prepare("pannuke", from_dir=folder, root=home, check_counts=False)
    assert not is_prepared("pannuke", root=home)


def test_realdata_types(realdata):
    for fold, n in ((1, 2656), (3, 2722)):
        path = realdata / "pannuke" / f"fold{fold}_types.npy"
        if not path.is_file():
            pytest.skip(f"{path} is absent")
        types = np.load(path)
        assert types.shape == (n,) and types.dtype == np.dtype("<U13")
        assert set(types.tolist()) <= TISSUES


def _overlapping_fold(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 32 x 32 patches: nuclei in every class channel, some pixels claimed twice."""
    images = rng.uniform(-2.0, 258.0, (n, 32, 32, 3))
    masks = np.zeros((n, 32, 32, 6))
    for j in range(n):
        for c in range(5):
            for nid in range(1, int(rng.integers(0, 4)) + 1):
                y, x = rng.integers(0, 28, 2)
                masks[j, y:y + 4, x:x + 4, c] = nid
    masks[..., 5] = masks[..., :5].sum(-1) == 0
    return images, masks


def test_jobs_give_the_same_store(home, tmp_path):
    """Chunks decoded by a process pool are written in order: --jobs 2 equals --jobs 1."""
    n = 3 * CHUNK + 3  # several chunks, the last one short
    images, masks = _overlapping_fold(np.random.default_rng(11), n)
    masks[n - 1] = 0  # an empty patch, kept
    folder = _write_fold(tmp_path / "src", images, masks, np.array(["Colon", "Skin", "Liver"] * n, "<U13")[:n])
    stores = {}
    for jobs in (1, 2):
        root = tmp_path / f"home{jobs}"
        stores[jobs] = nucdata.prepare("pannuke", from_dir=folder, root=root, check_counts=False, jobs=jobs)
    one, two = (_digest(stores[j]) for j in (1, 2))
    assert one.keys() == two.keys()
    assert {k for k in one if one[k] != two[k]} <= {"manifest.json"}  # only its creation time may differ
    m1, m2 = (nucdata.load("pannuke", root=tmp_path / f"home{j}").manifest for j in (1, 2))
    assert m1["dropped"] == m2["dropped"] and m1["dropped"]["cross_channel_overlap_pixels"] > 0
    assert {k: v for k, v in m1.items() if k != "created"} == {k: v for k, v in m2.items() if k != "created"}
    assert len(nucdata.load("pannuke", root=tmp_path / "home2")) == n


def test_jobs_errors_reach_the_caller(home, tmp_path):
    images, masks = _overlapping_fold(np.random.default_rng(5), 2 * CHUNK + 1)
    masks[CHUNK + 2, 5, 5, 1] = -1  # in the second chunk, decoded by a worker process
    folder = _write_fold(tmp_path / "src", images, masks, np.array(["Colon"] * (2 * CHUNK + 1), "<U13"))
    with pytest.raises(nucdata.MalformedAnnotationError, match="negative instance id"):
        nucdata.prepare("pannuke", from_dir=folder, root=home, check_counts=False, jobs=2)
    with pytest.raises(nucdata.InvalidArgumentError, match="jobs"):
        nucdata.prepare("pannuke", from_dir=folder, root=home, check_counts=False, jobs=0)
    assert not is_prepared("pannuke", root=home)
