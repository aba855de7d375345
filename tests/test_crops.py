"""Crop banks and the crop dataset: placement, masks, resizing, invalidation, serving."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from helpers import demo_home

import nucdata
from nucdata.testing import install
from nucdata.views._crops import ContiguousBatchSampler, build_bank, cut_image, place_windows


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """One data home with the demo datasets, shared by this module's read-only tests."""
    with demo_home(tmp_path_factory.mktemp("home"), ("consep", "monusac", "nucls", "tnbc", "pannuke")) as home:
        yield home


def _reflect(i: np.ndarray, n: int) -> np.ndarray:
    """numpy's 'reflect' padding as index arithmetic (edge pixel not repeated)."""
    period = 2 * (n - 1)
    i = np.abs(i) % period
    return np.where(i >= n, period - i, i)


def _check_bank_against_store(ds: nucdata.NucleusDataset, size: int) -> None:
    """Every crop of the bank, recomputed independently from the store's pixels."""
    bank = build_bank(ds.store, size)
    crops, scale, origin, has_mask = (np.asarray(a) for a in (bank.crops, bank.scale, bank.origin, bank.has_mask))
    store = ds.store
    centroid = np.asarray(store.column("nuclei", "centroid"))
    bbox = np.asarray(store.column("nuclei", "bbox"))
    np.testing.assert_array_equal(has_mask, store.column("nuclei", "has_mask"))
    for i in range(store.n_images):
        rgb, inst = np.asarray(store.rgb(i)), np.asarray(store.instance_map(i))
        h, w = inst.shape
        rows = store.nucleus_slice(i)
        for k, row in enumerate(range(rows.start, rows.stop)):
            side = int(round(size / scale[row]))
            x, y = origin[row]
            x0, y0, x1, y1 = bbox[row]
            # The window always encloses the whole nucleus.
            assert x <= x0 and y <= y0 and x + side >= x1 and y + side >= y1
            fits = side == size
            centre = np.floor(centroid[row] + 0.5).astype(int)
            if fits and (x, y) == tuple(centre - size // 2):
                pass  # centred on the centroid
            elif fits:  # moved to enclose the box
                assert (x1 - x0 <= size) and (y1 - y0 <= size)
            else:  # larger than the crop: the enclosing square, resized
                assert side == max(x1 - x0, y1 - y0) and scale[row] == pytest.approx(size / side)
                continue
            ys, xs = np.arange(y, y + size), np.arange(x, x + size)
            expected = rgb[_reflect(ys, h)][:, _reflect(xs, w)]
            np.testing.assert_array_equal(crops[row, :3].transpose(1, 2, 0), expected)
            inside = ((ys >= 0) & (ys < h))[:, None] & ((xs >= 0) & (xs < w))[None, :]
            if has_mask[row]:
                mask = inside & (inst[np.clip(ys, 0, h - 1)][:, np.clip(xs, 0, w - 1)] == k + 1)
                assert int(mask.sum()) == int(store.column("nuclei", "area")[row])
            else:
                mask = ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
            np.testing.assert_array_equal(crops[row, 3], mask.astype(np.uint8) * 255)


@pytest.mark.parametrize("name", ["consep", "monusac", "nucls"])
def test_every_crop_matches_the_store(prepared, name):
    ds = nucdata.load(name)
    _check_bank_against_store(ds, 32)
    _check_bank_against_store(ds, 16)  # small enough that some nuclei are moved or resized
    bank = build_bank(ds.store, 16)
    assert bank.resized.any() and bank.manifest["resized"] == int(bank.resized.sum())


def test_crop_sample_fields(prepared):
    ds = nucdata.load("consep", split="test", label_set="pannuke")
    crops = ds.crops(size=32)
    assert len(crops) == int(ds.nuclei.sizes["nucleus"])
    sample = crops[0]
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.uint8
    assert sample["mask"].shape == (1, 32, 32) and sample["mask"].dtype == torch.uint8
    row = int(sample["nucleus_index"])
    assert row == int(ds.nuclei.store_row.values[0])
    assert int(sample["label"]) == int(ds.nuclei.label.values[0])
    assert int(sample["candidates"]) == int(ds.nuclei.candidates.values[0])
    assert int(sample["native_label"]) == int(ds.nuclei.native_label.values[0])
    assert sample["dataset"] == "consep" and int(sample["dataset_index"]) == 0
    assert int(sample["image_index"]) == int(ds.store.column("nuclei", "image")[row])
    assert bool(sample["has_mask"]) and sample["scale"].dtype == torch.float32
    assert bool(sample["resized"]) == (float(sample["scale"]) != 1.0)
    batch = crops[[0, 2, 1]]
    assert batch["image"].shape == (3, 3, 32, 32)
    torch.testing.assert_close(batch["image"][2], crops[1]["image"])
    repeated = crops[[3, 3, 5]]  # duplicates are not a contiguous run
    torch.testing.assert_close(repeated["image"][1], crops[3]["image"])
    torch.testing.assert_close(repeated["image"][2], crops[5]["image"])
    torch.testing.assert_close(crops[[4, 5, 6]]["mask"][1], crops[5]["mask"])
    assert crops[-1]["nucleus_index"] == crops[len(crops) - 1]["nucleus_index"]
    with pytest.raises(IndexError):
        crops[len(crops)]


def test_native_labels_without_label_set(prepared):
    ds = nucdata.load("pannuke")
    crops = ds.crops(size=16)
    np.testing.assert_array_equal(crops.labels, ds.nuclei.label.values)
    assert (crops.candidates == 0).all()


def test_border_reflection():
    rgb = np.arange(20 * 20 * 3, dtype=np.uint8).reshape(20, 20, 3)
    inst = np.zeros((20, 20), np.int32)
    inst[0:3, 0:3] = 1  # in the corner
    crops, scales, origin = cut_image(rgb, inst, np.array([[1.0, 1.0]]), np.array([[0, 0, 3, 3]]), np.array([True]), 8)
    assert origin.tolist() == [[-3, -3]] and scales.tolist() == [1.0]
    # The row above the image mirrors row 1 (the edge row is not repeated).
    np.testing.assert_array_equal(crops[0, :3, 2, 3:].T, rgb[1, 0:5])
    np.testing.assert_array_equal(crops[0, :3, 3, 3:].T, rgb[0, 0:5])
    assert crops[0, 3, :3].sum() == 0 and crops[0, 3, :, :3].sum() == 0  # no mask outside the image
    assert int((crops[0, 3] > 0).sum()) == 9


def test_large_nucleus_enclosing_square_resized():
    rgb = np.zeros((30, 30, 3), np.uint8)
    inst = np.zeros((30, 30), np.int32)
    inst[5:19, 4:14] = 1  # 10 wide, 14 tall: taller than an 8 px crop
    centroid = np.array([[8.5, 11.5]])
    crops, scales, origin = cut_image(rgb, inst, centroid, np.array([[4, 5, 14, 19]]), np.array([True]), 8)
    assert scales[0] == pytest.approx(8 / 14)
    assert origin.tolist() == [[2, 5]]  # 14 px square centred on the box
    mask = crops[0, 3] > 0
    assert mask[0].any() and mask[-1].any()  # the tall side spans the crop
    assert not mask[:, 0].any() and not mask[:, -1].any()


def test_off_centre_nucleus_is_moved_not_clipped():
    inst = np.zeros((40, 40), np.int32)
    inst[10:17, 10:12] = 1
    inst[10:12, 12:17] = 1  # an L: its centroid sits far from its box centre
    ys, xs = np.nonzero(inst == 1)
    centroid = np.array([[xs.mean(), ys.mean()]])
    bbox = np.array([[10, 10, 17, 17]])
    origin, side = place_windows(centroid, bbox, 8)
    assert side.tolist() == [8] and origin.tolist() == [[10, 10]]
    crops, scales, _ = cut_image(np.zeros((40, 40, 3), np.uint8), inst, centroid, bbox, np.array([True]), 8)
    assert scales[0] == 1 and int((crops[0, 3] > 0).sum()) == int((inst == 1).sum())


def test_context_scales_every_crop():
    inst = np.zeros((50, 50), np.int32)
    inst[20:30, 20:26] = 1
    crops, scales, origin = cut_image(np.zeros((50, 50, 3), np.uint8), inst, np.array([[22.5, 24.5]]),
                                      np.array([[20, 20, 26, 30]]), np.array([True]), 16, context=2.0)
    assert scales[0] == pytest.approx(16 / 20) and origin.tolist() == [[13, 15]]


def test_box_only_nuclei_get_their_box_and_a_flag(prepared):
    ds = nucdata.load("nucls")
    crops = ds.crops(size=24)
    boxes = np.flatnonzero(~ds.nuclei.has_mask.values)
    assert boxes.size and not crops.has_mask[boxes].any()
    sample = crops[int(boxes[0])]
    assert not bool(sample["has_mask"])
    mask = sample["mask"][0].numpy() > 0
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = ds.nuclei.bbox.values[boxes[0]]
    if not bool(sample["resized"]):
        assert (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) == (x1 - x0, y1 - y0)


def test_bank_is_reused_and_invalidated(home):
    install("tnbc", home)
    nucdata.prepare("tnbc")
    ds = nucdata.load("tnbc")
    bank = build_bank(ds.store, 16)
    assert bank.manifest["store"] == {"dataset": "tnbc", "created": ds.store.manifest["created"],
                                      "converter_version": ds.store.manifest["converter_version"],
                                      "content": bank.manifest["store"]["content"]}
    assert len(bank.manifest["store"]["content"]) == 64
    assert bank.path.parent == ds.store.path / "crops" and bank.store_path == ds.store.path
    assert not list(bank.path.parent.glob(".*tmp-*"))
    mtime = (bank.path / "crops.npy").stat().st_mtime_ns
    assert (build_bank(ds.store, 16).path / "crops.npy").stat().st_mtime_ns == mtime
    assert build_bank(ds.store, 24).path != bank.path  # other parameters, other bank
    whole = bank.tensor()
    assert whole.shape == (len(bank), 4, 16, 16) and whole.dtype == torch.uint8
    np.testing.assert_array_equal(whole.numpy(), bank.crops)
    # A bank that records another store is cut again.
    manifest = json.loads((bank.path / "manifest.json").read_text())
    manifest["store"]["created"] = "1970-01-01T00:00:00+00:00"
    (bank.path / "manifest.json").write_text(json.dumps(manifest))
    assert build_bank(ds.store, 16).manifest["store"]["created"] == ds.store.manifest["created"]
    # A store with other content but the same creation second (two builds within a second) is another store.
    manifest = json.loads((bank.path / "manifest.json").read_text())
    manifest["store"]["content"] = "0" * 64
    (bank.path / "manifest.json").write_text(json.dumps(manifest))
    assert build_bank(ds.store, 16).manifest["store"]["content"] != "0" * 64
    # A rebuilt store takes its banks with it.
    nucdata.prepare("tnbc", force=True)
    ds = nucdata.load("tnbc")
    assert not (ds.store.path / "crops").exists()
    assert len(ds.crops(size=16)) == len(bank)


def test_invalid_parameters(prepared):
    ds = nucdata.load("tnbc")
    with pytest.raises(nucdata.InvalidArgumentError):
        ds.crops(size=2)
    with pytest.raises(nucdata.InvalidArgumentError):
        ds.crops(size=16, context=0)


def test_load_many_crops_and_loader_with_workers(prepared):
    many = nucdata.load_many(["consep", "monusac", "tnbc"], label_set="monusac")
    crops = many.crops(size=16)
    assert crops.dataset_index.tolist() == sorted(crops.dataset_index.tolist())
    assert set(crops.dataset_index.tolist()) == {0, 1, 2}
    assert len(crops) == sum(int(d.nuclei.sizes["nucleus"]) for d in many.members)
    # What workers receive: no pixels, no open files, no big Python lists.
    blob = pickle.dumps(crops)
    assert len(blob) < 64 * len(crops) + 20_000
    seen = []
    for batch in nucdata.crop_loader(crops, batch_size=32, shuffle=True, num_workers=2):
        assert batch["image"].shape[1:] == (3, 16, 16) and batch["label"].dtype == torch.int64
        assert len(batch["dataset"]) == batch["image"].shape[0]
        seen += batch["nucleus_index"].add(torch.tensor(crops.offsets)[batch["dataset_index"]]).tolist()
    assert sorted(seen) == list(range(len(crops)))  # every nucleus exactly once
    tnbc = crops.dataset_index == 2  # no labels in any set; MoNuSAC's own set is exact
    assert (crops.labels[tnbc] == -1).all() and (crops.candidates[tnbc] == 0).all()
    assert (crops.labels[crops.dataset_index == 1] >= 0).all()
    # One bank, every label set.
    labels, candidates = crops.labels_under("monusac")
    np.testing.assert_array_equal(labels, crops.labels)
    np.testing.assert_array_equal(candidates, crops.candidates)
    pannuke_labels, _ = crops.labels_under("pannuke")
    expected, _ = nucdata.translate("consep", crops.native_labels[crops.dataset_index == 0], "pannuke")
    np.testing.assert_array_equal(pannuke_labels[crops.dataset_index == 0], expected)
    assert crops.tensor().shape == (len(crops), 4, 16, 16)


def test_plain_dataloader_uses_getitems(prepared):
    crops = nucdata.load("pannuke", split="fold1").crops(size=16)
    loader = torch.utils.data.DataLoader(crops, batch_size=8, num_workers=2, shuffle=True)
    total = 0
    for batch in loader:
        assert batch["image"].shape[1:] == (3, 16, 16) and batch["mask"].shape[1:] == (1, 16, 16)
        assert isinstance(batch["dataset"], list)
        total += batch["image"].shape[0]
    assert total == len(crops)


def test_contiguous_batches_cover_everything_once(prepared):
    sampler = ContiguousBatchSampler(103, 10, shuffle=True, generator=torch.Generator().manual_seed(0))
    batches = list(sampler)
    assert len(batches) == len(sampler) == 11
    assert sorted(i for b in batches for i in b) == list(range(103))
    assert all(b == list(range(b[0], b[0] + len(b))) for b in batches)
    crops = nucdata.load("tnbc").crops(size=16)
    loader = nucdata.crop_loader(crops, batch_size=32, shuffle=True, contiguous=True)
    got = torch.cat([b["nucleus_index"] for b in loader])
    assert sorted(got.tolist()) == list(range(len(crops)))
    first = next(iter(nucdata.crop_loader(crops, batch_size=32)))
    np.testing.assert_array_equal(first["image"].numpy(), crops.banks[0].crops[:32, :3])


def test_worker_batches_held_past_slot_reuse_keep_their_pixels(prepared):
    """Workers reuse a few shared-memory slots; batches kept by the caller must not change."""
    crops = nucdata.load("pannuke", split="fold1").crops(size=16)
    batch_size = max(1, len(crops) // 12)  # more batches per worker than it has slots
    loader = nucdata.crop_loader(crops, batch_size=batch_size, num_workers=2)
    held = list(loader)
    assert len(held) > 2 * 4
    for start, batch in zip(range(0, len(crops), batch_size), held, strict=True):
        stop = min(start + batch_size, len(crops))
        np.testing.assert_array_equal(batch["image"].numpy(), crops.banks[0].crops[start:stop, :3])
        np.testing.assert_array_equal(batch["mask"].numpy(), crops.banks[0].crops[start:stop, 3:])
        assert batch["nucleus_index"].tolist() == crops.nucleus_index[start:stop].tolist()
    again = list(loader)  # persistent workers, second epoch: slots refilled
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(held, again, strict=True))


def test_a_bank_opened_by_its_path_takes_only_the_store_it_was_cut_from(home, tmp_path):
    import shutil

    from nucdata.errors import MissingFilesError
    from nucdata.views import CropBank

    install("tnbc", home)
    nucdata.prepare("tnbc")
    ds = nucdata.load("tnbc")
    bank = build_bank(ds.store, 16)
    opened = CropBank(bank.path)  # by its path alone: the store beside it
    assert opened.store.path == ds.store.path and opened.store_path == ds.store.path
    # copied away from its store, the bank finds it where its manifest recorded it
    copy = tmp_path / "elsewhere" / "crops" / bank.path.name
    shutil.copytree(bank.path, copy)
    assert CropBank(copy).store.path == ds.store.path
    # a bank cut from another store (as after a rebuild with other content): refused, with the fix
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["store"]["created"] = "1970-01-01T00:00:00+00:00"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MissingFilesError, match="cut from the tnbc store created 1970") as info:
        _ = CropBank(copy).store
    assert "ds.crops(size=...)" in str(info.value)
