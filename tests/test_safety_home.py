"""A read-only data home serves loading and crops (derived files go to NUCDATA_CACHE); bad homes are typed."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

import nucdata
from nucdata._util import home as home_module
from nucdata.errors import DataHomeError
from nucdata.store import _layout as layout_module
from nucdata.views import _crops as crops_module


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    from nucdata.testing import install

    root = tmp_path_factory.mktemp("ro-home")
    install("tnbc", root)
    nucdata.prepare("tnbc", root=root)
    return root


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def read_only_home(prepared, tmp_path, monkeypatch) -> Path:
    """A copy of the prepared home with every write bit removed (and, as root, seen as read-only)."""
    root = tmp_path / "shared"
    shutil.copytree(prepared, root)
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    real = home_module.is_writable
    inside = str(root)

    def is_writable(folder) -> bool:  # root ignores permission bits; model what a user sees
        return not str(Path(folder)).startswith(inside) and real(folder)

    monkeypatch.setattr(layout_module, "is_writable", is_writable)
    monkeypatch.setenv("NUCDATA_HOME", str(root))
    monkeypatch.setenv("NUCDATA_CACHE", str(tmp_path / "cache"))
    yield root
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_load_and_crops_work_on_a_read_only_home(read_only_home, tmp_path):
    before = _files(read_only_home)
    ds = nucdata.load("tnbc")
    sample = ds.crops(size=32)[0]
    assert sample["image"].shape[-1] == 32
    bank = crops_module.build_bank(ds.store, 32)
    assert _files(read_only_home) == before  # nothing written into the shared home
    cached = list((tmp_path / "cache" / "readonly-stores").glob("tnbc-1-*/crops/*/crops.npy"))
    assert cached and bank.path.is_relative_to(tmp_path / "cache")
    assert bank.store_path == ds.store.path


def test_prepare_of_a_prepared_store_does_not_take_the_lock(read_only_home, monkeypatch):
    import importlib

    prepare_module = importlib.import_module("nucdata.acquire._prepare")  # the module, not the function

    def no_lock(*_args, **_kwargs):
        raise AssertionError("prepare took the lock of an already-prepared store")

    monkeypatch.setattr(prepare_module, "dataset_lock", no_lock)
    lines: list[str] = []
    path = nucdata.prepare("tnbc", progress=lines.append)
    assert (path / "manifest.json").is_file() and any("already prepared" in line for line in lines)


def test_nucdata_home_that_is_a_file_is_typed(tmp_path, monkeypatch):
    home_file = tmp_path / "home.txt"
    home_file.write_text("not a folder")
    monkeypatch.setenv("NUCDATA_HOME", str(home_file))
    with pytest.raises(DataHomeError, match="is a file, not a folder"):
        nucdata.load("tnbc")
    with pytest.raises(DataHomeError, match="NUCDATA_HOME"):
        nucdata.prepare("tnbc")


def test_cache_that_is_a_file_is_typed(tmp_path, monkeypatch):
    cache_file = tmp_path / "cache"
    cache_file.write_text("")
    monkeypatch.setenv("NUCDATA_CACHE", str(cache_file))
    with pytest.raises(DataHomeError, match="NUCDATA_CACHE"):
        home_module.cache_dir()


def test_an_unwritable_home_is_typed_when_preparing(home, monkeypatch):
    from nucdata.testing import install

    install("tnbc", home)
    (home / "stores").write_text("a file where the stores folder should be")
    with pytest.raises(DataHomeError, match="writable folder"):
        nucdata.prepare("tnbc")


@pytest.mark.skipif(os.name == "nt" or os.geteuid() == 0, reason="permission bits do not bind root")
def test_a_truly_read_only_home_is_typed_when_preparing(home, monkeypatch):
    from nucdata.testing import install

    install("tnbc", home)
    home.chmod(0o555)
    try:
        with pytest.raises(DataHomeError):
            nucdata.prepare("tnbc")
    finally:
        home.chmod(0o755)
