"""`nucdata verify` reports every damage it can see, never a traceback; stores open as snapshots."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import nucdata
from nucdata.acquire import verify_store
from nucdata.cli import main
from nucdata.errors import StoreError
from nucdata.store import MANIFEST, Store


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A data home with the demo TNBC store, prepared once for this module."""
    from nucdata.testing import install

    root = tmp_path_factory.mktemp("verify-home")
    install("tnbc", root)
    nucdata.prepare("tnbc", root=root)
    return root


@pytest.fixture
def home(prepared, tmp_path, monkeypatch) -> Path:
    """A private copy of the prepared home (tests damage it)."""
    root = tmp_path / "home"
    shutil.copytree(prepared, root)
    monkeypatch.setenv("NUCDATA_HOME", str(root))
    return root


def _store(home: Path) -> Path:
    return home / "stores" / "tnbc" / "1"


def _verify(*args: str):
    result = CliRunner().invoke(main, ["verify", "tnbc", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def test_a_sound_store_verifies_deeply(home):
    assert verify_store(_store(home), deep=True) == []
    result = _verify("--deep")
    assert result.exit_code == 0 and "store complete (50 images" in result.output
    files = json.loads((_store(home) / MANIFEST).read_text())["files"]
    assert files["pixels/rgb.npy"]["shape"][0] == 50 and files["pixels/rgb.npy"]["dtype"] == "|u1"
    assert len(files["nuclei/centroid.npy"]["sha256"]) == 64


def test_truncated_pixels_are_reported(home):
    rgb = _store(home) / "pixels" / "rgb.npy"
    with open(rgb, "r+b") as fh:
        fh.truncate(rgb.stat().st_size - 1000)
    result = _verify()
    assert result.exit_code == 1 and "rgb.npy" in result.output and "truncated" in result.output


def test_deleted_pixels_are_reported(home):
    (_store(home) / "pixels" / "rgb.npy").unlink()
    result = _verify()
    assert result.exit_code == 1 and "rgb.npy: missing" in result.output


def test_scaled_nucleus_count_is_reported_without_deep(home):
    path = _store(home) / "images" / "nucleus_count.npy"
    np.save(path, np.load(path) * 100)
    problems = verify_store(_store(home))
    assert any("nucleus_count.npy: sums to" in p for p in problems)
    assert any("SHA-256" in p for p in verify_store(_store(home), deep=True))


def test_far_centroid_is_reported(home):
    path = _store(home) / "nuclei" / "centroid.npy"
    centroid = np.load(path)
    centroid[3] = [1e9, 5.0]
    np.save(path, centroid)
    result = _verify()
    assert result.exit_code == 1 and "centroid(s) not finite or outside" in result.output and "[3]" in result.output


def test_truncated_column_is_reported_not_raised(home):
    path = _store(home) / "nuclei" / "area.npy"
    path.write_bytes(path.read_bytes()[:140])
    result = _verify()
    assert result.exit_code == 1 and "area.npy" in result.output
    with pytest.raises(StoreError, match="area.npy"):
        Store(_store(home))


def test_every_problem_is_listed(home):
    (_store(home) / "pixels" / "instances.npy").unlink()
    centroid = _store(home) / "nuclei" / "centroid.npy"
    np.save(centroid, np.full_like(np.load(centroid), np.nan))
    result = _verify()
    assert "instances.npy: missing" in result.output and "centroid(s) not finite" in result.output


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "unreadable"),
    ("[1, 2]", "expected a JSON object"),
    (None, "lacks 'columns'"),
])
def test_malformed_manifest_is_typed(home, content, message):
    path = _store(home) / MANIFEST
    if content is None:
        data = json.loads(path.read_text())
        del data["columns"]
        content = json.dumps(data)
    path.write_text(content)
    with pytest.raises(StoreError, match=message) as info:
        Store(_store(home))
    assert "prepare tnbc --force" in str(info.value)
    result = _verify()
    assert result.exit_code == 1 and message in result.output


def test_old_manifest_without_file_records_says_rebuild(home):
    path = _store(home) / MANIFEST
    data = json.loads(path.read_text())
    del data["files"]
    path.write_text(json.dumps(data))
    result = _verify()
    assert result.exit_code == 1 and "rebuild" in result.output.lower() and "--force" in result.output
    assert len(nucdata.load("tnbc")) == 50  # still readable


def test_a_reader_keeps_its_snapshot_across_prepare_force(home):
    """Every column is mapped at open: a rebuild, even a deleted store, does not change what it reads."""
    ds = nucdata.load("tnbc")
    store = ds.store
    expected = {key: np.load(_store(home) / "nuclei" / f"{key}.npy") for key in ("centroid", "area", "image")}
    instance = np.load(_store(home) / "pixels" / "instances.npy")[9]
    nucdata.prepare("tnbc", force=True)
    shutil.rmtree(_store(home))  # nothing left at the path: only the mapped snapshot can answer
    for key, values in expected.items():
        np.testing.assert_array_equal(store.column("nuclei", key), values)
    np.testing.assert_array_equal(store.instance_map(9), instance)
    assert len(ds) == 50 and ds[9] is not None
