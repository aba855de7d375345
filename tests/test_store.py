"""The store: streamed .npy columns, nucleus properties, atomic publication, locking."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

import nucdata
from nucdata._util.instances import nucleus_properties, relabel_sequential
from nucdata._util.locks import dataset_lock
from nucdata._util.npy import NpyStreamWriter
from nucdata.acquire import is_prepared, store_path
from nucdata.store import MANIFEST, Store, StoreWriter
from nucdata.testing import install


@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
def test_stream_writer_stacked_and_flat(tmp_path, dtype):
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 100, (4, 5, 3)).astype(dtype) for _ in range(3)]
    writer = NpyStreamWriter(tmp_path / "a.npy", dtype)
    offsets = [writer.append(p) for p in parts]
    writer.close((3, 4, 5, 3))
    loaded = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert loaded.shape == (3, 4, 5, 3) and loaded.dtype == dtype
    np.testing.assert_array_equal(loaded, np.stack(parts))
    assert offsets == [0, 60, 120]
    writer = NpyStreamWriter(tmp_path / "b.npy", dtype)
    for p in parts:
        writer.append(p)
    writer.close((180,))
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), np.concatenate([p.ravel() for p in parts]))


def test_relabel_and_properties_match_brute_force():
    rng = np.random.default_rng(1)
    inst = np.zeros((40, 50), np.int32)
    for label in (7, 3, 12, 40):
        y, x = rng.integers(0, 35), rng.integers(0, 45)
        inst[y : y + rng.integers(2, 6), x : x + rng.integers(2, 6)] = label
    seq, original = relabel_sequential(inst)
    present = sorted(set(np.unique(inst)) - {0})
    assert original.tolist() == present
    props = nucleus_properties(seq, len(present))
    for k in range(1, len(present) + 1):
        ys, xs = np.nonzero(seq == k)
        assert props["area"][k - 1] == ys.size
        np.testing.assert_allclose(props["centroid"][k - 1], [xs.mean(), ys.mean()], rtol=1e-6)
        assert props["bbox"][k - 1].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_heap_layout_for_mixed_sizes(tmp_path):
    with StoreWriter(tmp_path / "s" / "1", "x", "1") as writer:
        for i, (h, w) in enumerate([(5, 7), (9, 4)]):
            inst = np.zeros((h, w), np.int32)
            inst[1:3, 1:3] = 1
            writer.add_image(f"im{i}", "all", np.full((h, w, 3), i, np.uint8), inst, [i], None,
                             boxes=[[0, 0, 2, 2]], box_labels=[5])
        path = writer.publish({})
    store = Store(path)
    assert store.manifest["pixels"]["layout"] == "heap"
    assert store.rgb(1).shape == (9, 4, 3) and int(store.rgb(1)[0, 0, 0]) == 1
    assert store.instance_map(0).shape == (5, 7)
    assert store.column("nuclei", "has_mask").tolist() == [True, False, True, False]
    assert store.column("nuclei", "label").tolist() == [0, 5, 1, 5]
    assert store.column("nuclei", "area").tolist() == [4, 0, 4, 0]


@pytest.mark.parametrize("sizes", [[(6, 8), (6, 8)], [(5, 7), (9, 4)]], ids=["stacked", "heap"])
def test_pixels_are_planar_on_disk_and_seen_both_ways(tmp_path, sizes):
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    with StoreWriter(tmp_path / "s" / "1", "x", "1") as writer:
        for i, rgb in enumerate(images):
            writer.add_image(f"im{i}", "all", rgb, np.zeros(rgb.shape[:2], np.int32))
        path = writer.publish({})
    store = Store(path)
    raw = np.load(path / "pixels" / "rgb.npy")
    if store.manifest["pixels"]["layout"] == "stacked":
        assert raw.shape == (2, 3, 6, 8)  # (N, 3, H, W): channels first
        np.testing.assert_array_equal(raw, np.stack(images).transpose(0, 3, 1, 2))
    else:
        np.testing.assert_array_equal(raw, np.concatenate([im.transpose(2, 0, 1).ravel() for im in images]))
    for i, rgb in enumerate(images):
        planes = store.planes(i)
        assert planes.shape == (3, *rgb.shape[:2]) and planes.flags.c_contiguous
        np.testing.assert_array_equal(planes, rgb.transpose(2, 0, 1))
        np.testing.assert_array_equal(store.rgb(i), rgb)  # the same memory, channels last
        assert np.shares_memory(store.rgb(i), planes)


def test_a_store_of_the_older_layout_is_refused_with_a_rebuild_hint(tmp_path):
    import json

    from nucdata.errors import SchemaVersionError
    from nucdata.store import SCHEMA_VERSION

    assert SCHEMA_VERSION == 2  # planar pixels
    with StoreWriter(tmp_path / "monuseg" / "1", "monuseg", "1") as writer:
        writer.add_image("im", "all", np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.int32))
        path = writer.publish({})
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["schema_version"] = 1  # what a store written before planar pixels says
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SchemaVersionError, match=r"schema version 1.*nucdata prepare monuseg --force"):
        Store(path)


def test_failed_conversion_publishes_nothing(home, monkeypatch):
    install("tnbc", home)
    from nucdata.datasets.tnbc import TNBC

    def boom(self, folder, writer, progress=None):
        writer.add_image("one", "all", np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.int32))
        raise KeyboardInterrupt  # the user pressed Ctrl-C mid-conversion

    monkeypatch.setattr(TNBC, "convert", boom)
    with pytest.raises(KeyboardInterrupt):
        nucdata.prepare("tnbc")
    dataset_dir = store_path("tnbc").parent
    assert not is_prepared("tnbc")
    assert [p.name for p in dataset_dir.iterdir()] == [".lock"]
    with pytest.raises(nucdata.DatasetNotFoundError, match="nucdata prepare tnbc"):
        nucdata.load("tnbc")


def test_leftovers_of_a_killed_run_are_cleaned(home):
    install("tnbc", home)
    dataset_dir = store_path("tnbc").parent
    stale = dataset_dir / ".tmp-1-deadbeef"
    (stale / "nuclei").mkdir(parents=True)
    (stale / "nuclei" / "area.npy").write_bytes(b"half")
    # A final folder without manifest (killed between rename and nothing) is not a store.
    path = nucdata.prepare("tnbc", progress=None)
    assert not stale.exists()
    assert (path / MANIFEST).is_file()
    with pytest.raises(nucdata.StoreError):
        Store(dataset_dir)


def _prepare_in_child(home: str, queue) -> None:
    import os

    os.environ["NUCDATA_HOME"] = home
    import nucdata as nd

    queue.put(str(nd.prepare("tnbc")))


def test_two_processes_preparing_at_once(home):
    install("tnbc", home)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_prepare_in_child, args=(str(home), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    results = [queue.get(timeout=5) for _ in procs]
    assert all(p.exitcode == 0 for p in procs)
    assert results[0] == results[1]
    dataset_dir = Path(results[0]).parent
    assert sorted(p.name for p in dataset_dir.iterdir()) == [".lock", "1"]
    assert nucdata.load("tnbc").store.n_images == 50


def test_lock_timeout_is_typed(tmp_path):
    ctx = mp.get_context("spawn")
    with dataset_lock(tmp_path / "ds"):
        proc = ctx.Process(target=_hold_lock_briefly, args=(str(tmp_path / "ds"),))
        proc.start()
        proc.join(60)
    assert proc.exitcode == 0


def _hold_lock_briefly(folder: str) -> None:
    from nucdata._util.locks import dataset_lock as lock
    from nucdata.errors import StoreLockedError

    try:
        with lock(Path(folder), timeout=0.3):
            raise SystemExit(3)  # must not get the lock
    except StoreLockedError as exc:
        assert ".lock" in str(exc)
        raise SystemExit(0) from None
