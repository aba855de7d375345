"""Rough edges a new user meets: the demo's data home, table coordinates, load_many splits, CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import demo_home

import nucdata
from nucdata.cli import main
from nucdata.errors import MissingDependencyError
from nucdata.testing._demo import real_data, run_demo


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    with demo_home(tmp_path_factory.mktemp("home"), ("consep", "monusac", "tnbc")) as home:
        yield home


# -- nucdata demo ---------------------------------------------------------------------

def test_demo_uses_nucdata_home_and_prints_the_load_call(home):
    lines: list[str] = []
    results = run_demo(datasets=["tnbc"], echo=lines.append)
    assert Path(results["tnbc"]["store"]).is_relative_to(home)
    assert "$NUCDATA_HOME" in lines[0]
    assert lines[-1].splitlines()[-1].strip() == "nucdata.load('tnbc')"
    assert len(nucdata.load("tnbc")) == results["tnbc"]["images"]  # it stays, loadable
    run_demo(datasets=["tnbc"], seed=1, echo=lines.append)  # a rerun replaces its own demo data


def test_demo_without_a_home_removes_its_temporary_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("NUCDATA_HOME", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    lines: list[str] = []
    results = run_demo(datasets=["tnbc"], echo=lines.append)
    assert not Path(results["tnbc"]["store"]).exists()
    assert list(tmp_path.iterdir()) == []
    assert "removed" in lines[0] and "nucdata demo --root" in "\n".join(lines[-3:])


def test_demo_with_root_prints_root(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--root", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert f"root={str((tmp_path / 'd').resolve())!r}" in result.output.splitlines()[-1]


def test_demo_refuses_to_replace_real_data(home):
    card = nucdata.get_card("tnbc")
    (home / "manual").mkdir()
    real = home / "manual" / card.files[0].name
    real.write_bytes(b"the user's own download")
    assert real_data("tnbc", home) == [str(real)]
    with pytest.raises(nucdata.InvalidArgumentError, match="real data") as info:
        run_demo(datasets=["tnbc", "consep"], echo=lambda _m: None)
    assert str(real) in str(info.value) and "--root" in str(info.value)
    assert real.read_bytes() == b"the user's own download"
    assert not (home / "registry").exists()  # nothing written, not even for consep


# -- xarray views -----------------------------------------------------------------------

def test_tables_count_from_zero_within_the_selection(prepared):
    ds = nucdata.load("consep", split="test", label_set="pannuke")
    whole = nucdata.load("consep", label_set="pannuke")
    images, nuclei = ds.images, ds.nuclei
    assert images.image.values.tolist() == list(range(len(ds)))
    assert str(images.sel(image=0).name.values) == ds[0]["image_id"]
    assert images.store_row.values.tolist() == ds.indices.tolist()
    assert nuclei.nucleus.values.tolist() == list(range(nuclei.sizes["nucleus"]))
    # store rows agree with the whole dataset's table, and with the crops.
    rows = nuclei.store_row.values
    np.testing.assert_array_equal(nuclei.area.values, whole.nuclei.area.values[rows])
    assert ds.crops(size=16).nucleus_index.tolist() == rows.tolist()
    # A nucleus's image is its position in ds; nucleus_start/count index ds.nuclei.
    for i in range(len(ds)):
        start, count = int(images.nucleus_start.values[i]), int(images.nucleus_count.values[i])
        mine = nuclei.sel(nucleus=slice(start, start + count - 1))
        assert (mine.image.values == i).all()
        np.testing.assert_allclose(mine.centroid.values, ds[i]["centroids"].numpy())
    assert (nuclei.image_store_row.values == images.store_row.values[nuclei.image.values]).all()


def test_nuclei_frame_has_one_row_per_nucleus(prepared):
    ds = nucdata.load("monusac", split="train", label_set="pannuke")
    frame = ds.nuclei_frame()
    n = int(ds.nuclei.sizes["nucleus"])
    assert len(frame) == n and frame.index.name == "nucleus"
    assert len(ds.nuclei.to_dataframe()) == 8 * n  # what the recipe avoids
    np.testing.assert_array_equal(frame[["x", "y"]].to_numpy(), ds.nuclei.centroid.values)
    np.testing.assert_array_equal(frame[["x0", "y0", "x1", "y1"]].to_numpy(), ds.nuclei.bbox.values)
    for column in ("label", "candidates", "native_label", "area", "image", "store_row"):
        np.testing.assert_array_equal(frame[column].to_numpy(), ds.nuclei[column].values)


def test_chunked_names_the_dask_extra(prepared, monkeypatch):
    ds = nucdata.load("consep")
    monkeypatch.setitem(sys.modules, "dask", None)
    monkeypatch.setitem(sys.modules, "dask.array", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "nucdata\[dask\]"'):
        ds.chunked("nuclei")
    with pytest.raises(nucdata.InvalidArgumentError, match="nuclei, images"):
        ds.chunked("pixels")


def test_chunked_with_dask(prepared):
    pytest.importorskip("dask")
    ds = nucdata.load("consep", split="train")
    chunked = ds.chunked("nuclei", {"nucleus": 10})
    assert int(chunked.area.sum().compute()) == int(ds.nuclei.area.sum())
    assert ds.chunked("images").image.size == len(ds)


# -- load_many ----------------------------------------------------------------------------

def test_load_many_needs_a_split_for_every_dataset(prepared):
    with pytest.raises(nucdata.InvalidArgumentError, match="no split for monusac") as info:
        nucdata.load_many(["consep", "monusac"], split={"consep": "train"}, label_set="pannuke")
    assert "'monusac': 'train'" in str(info.value)  # the fix, spelled out
    with pytest.raises(nucdata.InvalidArgumentError, match="not loaded: tnbc"):
        nucdata.load_many(["consep"], split={"consep": "train", "tnbc": None})
    many = nucdata.load_many(["consep", "tnbc"], split={"consep": "train", "tnbc": None})
    assert len(many) == len(nucdata.load("consep", "train")) + len(nucdata.load("tnbc"))


# -- CLI ----------------------------------------------------------------------------------

def test_list_has_a_header(home):
    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 0, result.output
    header, *rows = result.output.splitlines()
    assert header.split()[:3] == ["dataset", "state", "licence"]
    assert [r.split()[0] for r in rows] == nucdata.list_datasets()


def test_label_sets_mapping_without_a_name_is_an_error():
    result = CliRunner().invoke(main, ["label-sets", "--mapping", "monusac"])
    assert result.exit_code == 2
    assert "nucdata label-sets NAME --mapping monusac" in result.output
    ok = CliRunner().invoke(main, ["label-sets", "pannuke", "--mapping", "monusac"])
    assert ok.exit_code == 0 and "monusac" in ok.output


# -- benchmark ----------------------------------------------------------------------------

def test_pannuke_benchmark_disk_estimate():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        from pannuke_conversion import NATIVE_PER_PATCH, STORE_PER_PATCH, disk_needed
    finally:
        sys.path.pop(0)
    per_patch = 256 * 256 * 9 * 8  # float64 images (3 channels) and masks (6)
    assert per_patch == NATIVE_PER_PATCH
    # Hard-linked folds: one fold's native files plus a store of three folds.
    assert disk_needed(500, False) == 500 * per_patch + 1500 * STORE_PER_PATCH
    assert disk_needed(500, False) < 3.5e9  # the default fits a laptop
    assert disk_needed(500, True) == 1500 * (per_patch + STORE_PER_PATCH)
