"""Tiles: coverage, nuclei, labels, resampling against skimage, random sampling, crops at an mpp."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.draw import ellipse
from skimage.transform import rescale

import nucdata
from nucdata._util.instances import relabel_sequential
from nucdata.dataset import NucleusDataset
from nucdata.errors import MissingMppError
from nucdata.store import Store, StoreWriter
from nucdata.views._resample import resample_window


def _image(rng: np.random.Generator, h: int, w: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth RGB image and an instance map of ``n`` random ellipses (some touching)."""
    rgb = ndimage.uniform_filter(rng.integers(0, 256, (h, w, 3)).astype(np.float64), (5, 5, 1))
    inst = np.zeros((h, w), np.int32)
    for k in range(1, n + 1):
        rr, cc = ellipse(rng.integers(0, h), rng.integers(0, w), rng.integers(3, 12), rng.integers(3, 12),
                         shape=(h, w), rotation=rng.random() * 3)
        inst[rr, cc] = k
    inst, _ = relabel_sequential(inst)
    return rgb.round().astype(np.uint8), inst


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """A CoNSeP-coded store of images of different sizes and mpps (one without an mpp)."""
    folder = tmp_path_factory.mktemp("tiles") / "store"
    rng = np.random.default_rng(3)
    sizes = [(300, 520, 0.25), (256, 256, 0.5), (100, 90, 0.2), (410, 333, None)]
    with StoreWriter(folder, "consep", "test") as writer:
        for i, (h, w, mpp) in enumerate(sizes):
            rgb, inst = _image(rng, h, w, 40 if h > 200 else 8)
            k = int(inst.max())
            labels = rng.integers(0, 8, k)  # 0 is not a CoNSeP code: it stands for "no label"
            labels = np.where(labels == 0, -1, labels)
            writer.add_image(f"img{i}", "train" if i < 3 else "test", rgb, inst, labels, mpp=mpp)
        writer.publish({})
    return Store(folder)


def test_grid_covers_every_pixel_once_and_every_nucleus(store):
    ds = NucleusDataset(store, "train", "pannuke")
    tiles = ds.tiles(size=64)
    for position, index in enumerate(ds.indices):
        h, w = store.instance_map(int(index)).shape
        covered = np.zeros((h, w), np.int64)
        seen: set[int] = set()
        picked = [t for t in range(len(tiles)) if tiles.locate(t)[1] == position]
        for t in picked:
            s = tiles[t]
            ox, oy = (int(v) for v in s["origin"])
            valid = ~s["padding"].numpy()
            rows, cols = np.nonzero(valid)
            covered[oy + rows, ox + cols] += 1
            # The tile's pixels are the store's pixels; the instance map is relabelled 1..K.
            native_rgb = np.asarray(store.rgb(int(index)))[oy + rows, ox + cols]
            assert (native_rgb == s["image"].numpy()[:, rows, cols].T).all()
            inst = s["instance_map"].numpy()
            k = len(s["labels"])
            assert inst.max(initial=0) == k and set(np.unique(inst[inst > 0])) == set(range(1, k + 1))
            assert (s["image"].numpy()[:, ~valid] == 0).all() and (inst[~valid] == 0).all()
            native = np.asarray(store.instance_map(int(index)))[oy + rows, ox + cols]
            start = store.nucleus_slice(int(index)).start
            rows_k = s["nucleus_index"].numpy()
            assert (rows_k[inst[rows, cols][native > 0] - 1] == start + native[native > 0] - 1).all()
            seen.update(rows_k.tolist())
        assert (covered == 1).all()
        rows = store.nucleus_slice(int(index))
        assert seen == set(range(rows.start, rows.stop))


def test_type_map_agrees_with_labels_and_unlabelled_is_minus_one(store):
    ds = NucleusDataset(store, None, "pannuke")
    tiles = ds.tiles(size=128)
    checked = 0
    for t in range(len(tiles)):
        s = tiles[t]
        inst, types, labels = s["instance_map"].numpy(), s["type_map"].numpy(), s["labels"].numpy()
        assert s["type_map"].dtype == torch.int16  # compact (store schema 2); .long() for a loss
        assert (types[inst == 0] == 0).all()
        for k, label in enumerate(labels, start=1):
            expected = label + 1 if label >= 0 else -1  # -1 missing and -2 outside both -> -1
            assert (types[inst == k] == expected).all()
            checked += 1
        native = np.asarray(store.column("nuclei", "label"))[s["nucleus_index"].numpy()]
        assert (labels == nucdata.translate("consep", native, "pannuke")[0]).all() if native.size else True
    assert checked > 50
    assert any((tiles[t]["type_map"] == -1).any() for t in range(len(tiles)))


def test_cut_flags_and_centroids_in_tile_coordinates(store):
    ds = NucleusDataset(store, "train", None)
    tiles = ds.tiles(size=100)
    bbox = np.asarray(store.column("nuclei", "bbox"))
    centroid = np.asarray(store.column("nuclei", "centroid"))
    for t in range(len(tiles)):
        s = tiles[t]
        ox, oy = (float(v) for v in s["origin"])
        rows = s["nucleus_index"].numpy()
        np.testing.assert_allclose(s["centroids"].numpy(), centroid[rows] - [ox, oy], atol=1e-4)
        h, w = store.instance_map(s["image_index"]).shape
        inside = ((bbox[rows, 0] >= ox) & (bbox[rows, 1] >= oy)
                  & ((bbox[rows, 2] <= ox + 100) | (ox + 100 >= w)) & ((bbox[rows, 3] <= oy + 100) | (oy + 100 >= h)))
        assert (s["cut"].numpy() == ~inside).all()


@pytest.mark.parametrize("scale", [2.0, 0.5, 1.25])
def test_resampled_tile_matches_skimage_rescale(store, scale):
    rgb = np.asarray(store.rgb(0))  # 300 x 520
    y0, x0, hn, wn = 50, 100, 200, 250  # a native region whose corners land on output pixels
    ref = rescale(rgb[y0 : y0 + hn, x0 : x0 + wn], 1 / scale, anti_aliasing=True, channel_axis=-1) * 255
    ours, _ = resample_window(rgb, np.asarray(store.instance_map(0)), int(y0 / scale), int(x0 / scale),
                              ref.shape[0], ref.shape[1], scale)
    # skimage mirrors at the region's edge where we read the true neighbours: compare inside.
    margin = 6
    diff = np.abs(ours.astype(np.float64) - ref)[margin:-margin, margin:-margin]
    assert diff.max() <= 0.51  # rounding to uint8 only
    whole = rescale(rgb, 1 / scale, anti_aliasing=True, channel_axis=-1) * 255 if scale != 1.25 else None
    if whole is not None:  # the whole image (edges included) agrees too
        full, _ = resample_window(rgb, np.asarray(store.instance_map(0)), 0, 0, whole.shape[0], whole.shape[1], scale)
        assert np.abs(full - whole).max() <= 0.51


def test_tiles_at_one_mpp(store):
    ds = NucleusDataset(store, "train", "pannuke")
    tiles = ds.tiles(size=64, mpp=0.5)
    own = np.asarray(store.column("images", "mpp"))[ds.indices]
    for t in range(len(tiles)):
        s = tiles[t]
        m, j, ty, tx = tiles.locate(t)
        assert s["scale"] == pytest.approx(0.5 / own[j])
        np.testing.assert_allclose(s["origin"].numpy(), [tx * s["scale"], ty * s["scale"]])
        # Masks: nearest neighbour of the native map, relabelled.
        native = np.asarray(store.instance_map(s["image_index"]))
        h, w = native.shape
        valid = ~s["padding"].numpy()
        ys, xs = np.nonzero(valid)
        src_y = np.clip(np.floor((ty + ys + 0.5) * s["scale"]).astype(int), 0, h - 1)
        src_x = np.clip(np.floor((tx + xs + 0.5) * s["scale"]).astype(int), 0, w - 1)
        inst = s["instance_map"].numpy()
        start = store.nucleus_slice(s["image_index"]).start
        ids = native[src_y, src_x]
        got = inst[ys, xs]
        assert ((got == 0) == (ids == 0)).all()
        assert (s["nucleus_index"].numpy()[got[got > 0] - 1] == start + ids[ids > 0] - 1).all()
    # 256 px at 0.5 um/px stays 256 px; 300 x 520 at 0.25 becomes 150 x 260.
    assert {tuple(o) for o in tiles._out[0].tolist()} == {(150, 260), (256, 256), (40, 36)}


@pytest.mark.parametrize("sampler", ["grid", "random"])
def test_resampled_tiles_from_the_image_cache_equal_tiles_resampled_alone(store, sampler):
    ds = NucleusDataset(store, "train", "pannuke")
    cached = ds.tiles(size=64, mpp=0.5, sampler=sampler, length=40, stride=48)
    alone = ds.tiles(size=64, mpp=0.5, sampler=sampler, length=40, stride=48, resample_cache_mb=0)
    for t in range(len(cached)):
        a, b = cached[t], alone[t]
        for key in ("image", "instance_map", "type_map", "padding", "centroids", "labels", "nucleus_index"):
            assert torch.equal(a[key], b[key]), (t, key)
    assert cached.__dict__["_resampled"] and not alone.__dict__.get("_resampled")
    with pytest.raises(nucdata.errors.InvalidArgumentError, match="resample_cache_mb"):
        ds.tiles(size=64, mpp=0.5, resample_cache_mb=-1)


@pytest.mark.parametrize(("sampler", "mpp"), [("grid", None), ("random", None), ("random", 0.5)])
def test_tiles_through_an_images_run_index_equal_tiles_scanned_alone(store, sampler, mpp, monkeypatch):
    import nucdata.views._tiles as module

    ds = NucleusDataset(store, None, "pannuke")
    # padded edge tiles and empty ones too; at an mpp, run indexes of the cached resampled images
    kwargs = dict(size=64, sampler=sampler, length=200, stride=40, mpp=mpp, assume_mpp=0.25)
    monkeypatch.setattr(module, "_RUNS_AFTER", 10**9)
    scanned = ds.tiles(**kwargs)
    want = [scanned[t] for t in range(len(scanned))]
    assert not any(isinstance(v, module._Runs) for v in scanned.__dict__["_runs"].values())
    monkeypatch.setattr(module, "_RUNS_AFTER", 1)
    indexed = ds.tiles(**kwargs)
    for t, b in enumerate(want):
        a = indexed[t]
        for key in ("image", "instance_map", "type_map", "padding", "centroids", "labels", "nucleus_index", "cut"):
            assert torch.equal(a[key], b[key]), (t, key)
    assert any(isinstance(v, module._Runs) for v in indexed.__dict__["_runs"].values())
    # a budget too small for any index: the scan, the same tiles
    monkeypatch.setattr(module, "_RUNS_MB", 0)
    small = ds.tiles(**kwargs)
    assert all(torch.equal(small[t]["instance_map"], b["instance_map"]) for t, b in enumerate(want))
    assert not any(isinstance(v, module._Runs) for v in small.__dict__["_runs"].values())


def test_a_run_index_finds_exactly_the_ids_of_a_window():
    from nucdata.views._tiles import _Runs

    rng = np.random.default_rng(0)
    inst = rng.integers(0, 6, (37, 53)).astype(np.int32)
    inst[5] = 0  # an empty row
    runs = _Runs.of(inst)
    for _ in range(200):
        ty, tx = int(rng.integers(0, 37)), int(rng.integers(0, 53))
        rows, cols = int(rng.integers(1, 38 - ty)), int(rng.integers(1, 54 - tx))
        want = np.zeros(6, bool)
        want[np.unique(inst[ty : ty + rows, tx : tx + cols])] = True
        want[0] = False
        np.testing.assert_array_equal(runs.present(ty, tx, rows, cols, 6), want)


def test_type_map_holds_large_native_codes(tmp_path):
    """Codes beyond what one packed lookup holds take the two-lookup path: same maps."""
    rng = np.random.default_rng(8)
    rgb, inst = _image(rng, 96, 96, 30)
    k = int(inst.max())
    labels = np.where(rng.random(k) < 0.2, -1, rng.integers(20000, 30000, k))
    with StoreWriter(tmp_path / "s", "consep", "test") as writer:
        writer.add_image("a", "train", rgb, inst, labels)
        writer.publish({})
    # and a tile of 65,536 one-pixel nuclei: more than the packing holds beside such codes
    many = np.arange(1, 256 * 256 + 1, dtype=np.int32).reshape(256, 256)
    with StoreWriter(tmp_path / "m", "consep", "test") as writer:
        writer.add_image("a", "train", np.zeros((256, 256, 3), np.uint8), many, np.full(many.size, 20000))
        writer.publish({})
    samples = [t[i] for t in (NucleusDataset(Store(tmp_path / "s"), None, None).tiles(size=64),
                              NucleusDataset(Store(tmp_path / "m"), None, None).tiles(size=256)) for i in range(len(t))]
    assert len(samples[-1]["labels"]) == 256 * 256
    for s in samples:
        types, ids = s["type_map"].numpy(), s["instance_map"].numpy()
        assert s["type_map"].dtype == torch.int16
        labels = s["labels"].numpy()
        expected = np.concatenate([[0], np.where(labels >= 0, labels + 1, -1)])  # by tile id
        assert (types == expected[ids]).all()


def test_missing_mpp_is_a_typed_error_unless_assumed(store):
    ds = NucleusDataset(store, "test", None)
    with pytest.raises(MissingMppError, match="img3.*assume_mpp"):
        ds.tiles(mpp=0.5)
    tiles = ds.tiles(size=64, mpp=0.5, assume_mpp=0.25)
    assert tiles[0]["scale"] == pytest.approx(2.0)
    with pytest.raises(MissingMppError):
        ds.crops(size=16, mpp=0.5)
    with pytest.raises(nucdata.InvalidArgumentError):
        ds.tiles(mpp=-1)


def test_random_tiles_are_reproducible_and_honour_min_nuclei(store):
    ds = NucleusDataset(store, "train", "pannuke")
    tiles = ds.tiles(size=64, sampler="random", min_nuclei=3, length=30, seed=5)
    first = [tiles.locate(i) for i in range(30)]
    assert first == [tiles.locate(i) for i in range(30)]
    tiles.set_epoch(1)
    assert first != [tiles.locate(i) for i in range(30)]
    for i in range(30):
        s = tiles[i]
        assert s["image"].shape == (3, 64, 64)
        centres = s["centroids"].numpy()
        assert ((centres >= -0.5) & (centres < 63.5)).all(axis=1).sum() >= 3
    grid = ds.tiles(size=64, min_nuclei=3)
    assert 0 < len(grid) < len(ds.tiles(size=64))


def test_collection_weights_and_workers(store):
    a, b = NucleusDataset(store, "train", "pannuke"), NucleusDataset(store, "test", "pannuke")
    many = nucdata.DatasetCollection([a, b])
    tiles = many.tiles(size=32, sampler="random", weights=[0.0, 1.0], length=12, mpp=0.5, assume_mpp=0.25)
    assert {tiles[i]["image_id"] for i in range(12)} == {"img3"}
    with pytest.raises(nucdata.InvalidArgumentError):
        many.tiles(size=32, weights=[1, 1])  # the grid visits every tile
    loader = torch.utils.data.DataLoader(tiles, batch_size=4, num_workers=2, collate_fn=nucdata.collate)
    batches = list(loader)
    assert batches[0]["image"].shape == (4, 3, 32, 32)
    assert isinstance(batches[0]["labels"], list) and isinstance(batches[0]["cut"], list)
    same = [tiles[i]["instance_map"] for i in range(4)]
    assert all(torch.equal(x, y) for x, y in zip(batches[0]["instance_map"], same, strict=True))


def test_crops_at_an_mpp(store):
    ds = NucleusDataset(store, "train", None)
    native = ds.crops(size=16)
    half = ds.crops(size=16, mpp=0.5)
    assert len(native) == len(half)
    assert half.banks[0].path != native.banks[0].path
    own = np.asarray(store.column("images", "mpp"))
    image = half.image_index
    # scale = output pixels per native pixel: 1 / image scale where the nucleus fits the
    # window at 0.5 um/px, less where its enclosing square had to be shrunk further.
    expected = own[image] / 0.5
    assert (half.scale <= expected + 1e-6).all()
    assert np.isclose(half.scale, expected, rtol=1e-5).mean() > 0.6
    assert half.banks[0].manifest["mpp"] == 0.5


def test_tile_loader_with_workers_matches_in_process(store):
    """Workers stack into reused shared-memory slots; held batches stay intact, epochs reach workers."""
    ds = NucleusDataset(store, "train", "pannuke")
    tiles = ds.tiles(size=32, sampler="random", length=40, seed=2)
    in_process = list(tiles.loader(batch_size=3))
    workers = tiles.loader(batch_size=3, num_workers=2)
    held = list(workers)  # 14 batches: more per worker than it has slots
    assert len(held) == len(in_process) == 14
    for a, b in zip(in_process, held, strict=True):
        assert list(a) == list(b)
        for key in ("image", "instance_map", "type_map", "padding", "origin", "scale", "image_index"):
            assert torch.equal(a[key], b[key]), key
        for key in ("centroids", "labels", "candidates", "cut", "nucleus_index"):
            assert isinstance(b[key], list) and all(torch.equal(x, y) for x, y in zip(a[key], b[key], strict=True))
        assert a["image_id"] == b["image_id"]
    tiles.set_epoch(1)  # persistent workers draw the new epoch's tiles
    moved = next(iter(workers))
    assert torch.equal(moved["image"], tiles.loader(batch_size=3).__iter__().__next__()["image"])
    assert not torch.equal(moved["image"], held[0]["image"])
    with pytest.raises(nucdata.InvalidArgumentError):
        tiles.loader(batch_size=0)


def test_tiles_benchmark_refuses_without_the_real_files_unless_synthetic(tmp_path, monkeypatch, capsys):
    """benchmarks/tiles.py never stands in a synthetic image for MoNuSeg silently."""
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(root))
    spec = importlib.util.spec_from_file_location("tiles_benchmark", root / "tiles.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, "REALDATA", tmp_path / "absent")
    monkeypatch.setattr(sys, "argv", ["tiles.py"])
    with pytest.raises(SystemExit) as stop:
        bench.main()
    assert "real MoNuSeg files are not in" in str(stop.value) and "--synthetic N" in str(stop.value)
    store, label = bench.build_store(tmp_path, 1)
    assert label.startswith("synthetic") and "MoNuSeg" not in label and store.n_images == 1
