"""Exports can neither escape their folder nor mix two exports (issue 21, points 4 and 5).

Names read from a store become file names only through one helper
(``nucdata._util.paths.child_path``); an export is built beside ``--out`` and published
whole, with a marker; ``--out`` holding an earlier export is replaced only with
``--overwrite``, and a folder holding files nucdata did not write never is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import demo_home

import nucdata
import nucdata.exports
from nucdata._util import atomic
from nucdata.cli import main

ESCAPE = "../../../../x"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    with demo_home(tmp_path_factory.mktemp("home"), ("pannuke", "consep", "tnbc")) as home:
        yield home


def _invoke(*args: str, env: dict | None = None):
    result = CliRunner().invoke(main, list(args), env=env)
    assert "Traceback" not in result.output, result.output
    return result


def _rename_image(store: Path, row: int, name: str) -> None:
    """Rename store image ``row`` and update the manifest's record (hash included), as a crafted store would."""
    from nucdata._util.npy import file_record

    path = store / "images" / "name.npy"
    names = np.load(path).tolist()
    names[row] = name
    array = np.asarray(names)
    np.save(path, array)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["files"]["images/name.npy"] = file_record(array, path)
    (store / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def crafted(prepared, tmp_path, monkeypatch) -> Path:
    """A copy of the home whose TNBC store names its first image ``../../../../x``."""
    home = tmp_path / "home"
    shutil.copytree(prepared, home)
    monkeypatch.setenv("NUCDATA_HOME", str(home))
    _rename_image(home / "stores" / "tnbc" / "1", 0, ESCAPE)
    return home


def _all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


# -- names become paths only through the one helper (point 4) -----------------------------
@pytest.mark.parametrize("fmt", ["geojson", "hovernet-json", "hovernet-patches"])
def test_an_image_name_that_escapes_is_refused_and_nothing_lands_outside(crafted, tmp_path, fmt):
    out = tmp_path / "a" / "b" / "c" / "d" / "out"
    before = _all_files(tmp_path / "a") if (tmp_path / "a").exists() else set()
    args = ["export", "tnbc", "--format", fmt, "--out", str(out)]
    if fmt == "hovernet-patches":
        args += ["--label-set", "pannuke", "--win", "64", "--step", "64"]
    result = _invoke(*args)
    assert result.exit_code == 2, result.output
    assert "../../../../x" in result.output and "cannot be a file name" in result.output
    assert "images/name.npy" in result.output  # names the file and the element
    outside = {p for p in _all_files(tmp_path / "a") - before if not p.is_relative_to(out)}
    assert not outside, outside
    assert not out.exists()  # nothing was published


def test_overlays_refuse_an_escaping_name(crafted, tmp_path):
    out = tmp_path / "a" / "b" / "c" / "d" / "out"
    result = _invoke("overlay", "tnbc", "--out", str(out))
    assert result.exit_code == 2 and "cannot be a file name" in result.output
    assert not (tmp_path / "a" / "x.png").exists() and not list((tmp_path / "a").rglob("x.png"))


def test_verify_deep_reports_the_escaping_name(crafted):
    result = _invoke("verify", "tnbc", "--deep")
    assert result.exit_code == 1
    assert "cannot be file names inside an export folder" in result.output and ESCAPE in result.output
    assert "store complete" not in result.output


@pytest.mark.parametrize("name", ["/etc/passwd", "a\\b", "C:x", "CON", "nul.txt", "a\x00b", "..", "", "x" * 300])
def test_the_path_helper_refuses_every_kind_of_escape(tmp_path, name):
    from nucdata._util.paths import child_path

    with pytest.raises(nucdata.NucdataError, match="cannot be a file name") as info:
        child_path(tmp_path, name, "", source="store/images/name.npy", element="row 3")
    assert type(info.value).__name__ == "UnsafeNameError"
    assert "store/images/name.npy: row 3" in str(info.value) and "Fix:" in str(info.value)


def test_plain_names_of_every_dataset_pass(prepared):
    from nucdata._util.paths import name_problem

    for name in ("pannuke", "consep", "tnbc"):
        store = nucdata.load(name).store
        assert all(name_problem(f"{n}.png") is None for n in store.column("images", "name"))


# -- one atomic publish of the whole folder (point 5) -------------------------------------
def _fold_label_sets(out: Path) -> dict[str, str]:
    return {p.parent.name: json.loads(p.read_text())["label_set"] for p in sorted(out.glob("Fold */export.json"))}


def test_an_export_carries_a_marker_listing_what_it_wrote(prepared, tmp_path):
    out = tmp_path / "out"
    assert _invoke("export", "pannuke", "--format", "pannuke", "--label-set", "pannuke",
                   "--size", "64", "--out", str(out)).exit_code == 0
    marker = json.loads((out / ".nucdata-export").read_text())
    assert (marker["format"], marker["dataset"], marker["label_set"]) == ("pannuke", "pannuke", "pannuke")
    assert marker["created"] and marker["nucdata_version"]
    assert set(marker["files"]) == {p.relative_to(out).as_posix() for p in out.rglob("*")
                                    if p.is_file() and p.name != ".nucdata-export"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_another_dataset_replaces_the_whole_export_only_with_overwrite(prepared, tmp_path):
    """Before: dataset B over dataset A's three folds left A's Fold 3 beside B's and exited 0."""
    out = tmp_path / "out"
    assert _invoke("export", "pannuke", "--format", "pannuke", "--label-set", "pannuke",
                   "--size", "64", "--out", str(out)).exit_code == 0
    assert sorted(_fold_label_sets(out)) == ["Fold 1", "Fold 2", "Fold 3"]
    refused = _invoke("export", "consep", "--format", "pannuke", "--label-set", "pannuke", "--size", "64",
                      "--out", str(out))
    assert refused.exit_code == 2 and "--overwrite" in refused.output and "earlier export" in refused.output
    assert json.loads((out / ".nucdata-export").read_text())["dataset"] == "pannuke"  # unchanged
    assert _invoke("export", "consep", "--format", "pannuke", "--label-set", "pannuke", "--size", "64",
                   "--out", str(out), "--overwrite").exit_code == 0
    folds = sorted(_fold_label_sets(out))
    assert folds == ["Fold 1", "Fold 2"]  # consep's train and test; no stale Fold 3 of PanNuke
    assert {json.loads(p.read_text())["dataset"] for p in out.glob("Fold */export.json")} == {"consep"}


@pytest.mark.parametrize("extra", ["notes.txt", "Fold 1/mine.npy"])
def test_a_folder_with_files_we_did_not_write_is_refused_even_with_overwrite(prepared, tmp_path, extra):
    out = tmp_path / "out"
    if extra == "notes.txt":
        out.mkdir()
    else:  # an earlier export, with a file the user added inside it
        assert _invoke("export", "consep", "--format", "pannuke", "--label-set", "pannuke", "--size", "64",
                       "--out", str(out)).exit_code == 0
    (out / extra).parent.mkdir(parents=True, exist_ok=True)
    (out / extra).write_text("mine")
    for flags in ([], ["--overwrite"]):
        result = _invoke("export", "tnbc", "--format", "geojson", "--out", str(out), *flags)
        assert result.exit_code == 2 and "did not write" in result.output, result.output
        assert (out / extra).read_text() == "mine"


def test_export_function_takes_overwrite(prepared, tmp_path):
    ds = nucdata.load("tnbc")
    out = tmp_path / "out"
    first = nucdata.exports.export(ds, "geojson", out)
    assert all(p.is_relative_to(out) and p.is_file() for p in first)
    with pytest.raises(nucdata.OutputFolderError, match="earlier export"):
        nucdata.export(ds, "geojson", out)
    assert len(nucdata.export(ds, "geojson", out, overwrite=True)) == len(first)


_CHILD = """
import inspect, sys
import nucdata, nucdata.exports
ds = nucdata.load(sys.argv[2], label_set=sys.argv[3])
replace = {"overwrite": True} if "overwrite" in inspect.signature(nucdata.exports.export).parameters else {}
nucdata.exports.export(ds, "pannuke", sys.argv[1], size=64, **replace)
"""


@pytest.mark.parametrize("point", ["export:fold-written", "export:old-moved", "export:published"])
def test_a_kill_at_any_step_never_mixes_label_sets(prepared, tmp_path, point):
    """Before: folds were swapped in one at a time, so a kill after the first left Fold 1 under
    the new label set and Folds 2-3 under the old one."""
    out = tmp_path / "out"
    nucdata.exports.export(nucdata.load("pannuke", label_set="pannuke"), "pannuke", out, size=64)
    env = {**os.environ, "NUCDATA_HOME": str(prepared), "NUCDATA_FAULT": f"{point}=kill"}
    child = subprocess.run([sys.executable, "-c", _CHILD, str(out), "pannuke", "consep"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 137, child.stderr
    # what the kill left, once a kill between the two renames is undone (as the next run does)
    atomic.recover(out, complete=lambda folder: (folder / ".nucdata-export").is_file())
    sets = set(_fold_label_sets(out).values())
    assert sets in ({"pannuke"}, {"consep"}), f"folds under {sets}: two exports mixed"
    assert sorted(_fold_label_sets(out)) == ["Fold 1", "Fold 2", "Fold 3"]
    assert json.loads((out / ".nucdata-export").read_text())["label_set"] in sets
    # the next export run cleans the staging up and refuses to replace it without overwrite
    with pytest.raises(nucdata.OutputFolderError, match="earlier export"):
        nucdata.exports.export(nucdata.load("pannuke", label_set="pannuke"), "pannuke", out, size=64)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # staging cleaned


def test_an_empty_out_is_refused(prepared, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _invoke("export", "tnbc", "--format", "geojson", "--out", "")
    assert result.exit_code == 2 and "empty" in result.output
    with pytest.raises(nucdata.InvalidArgumentError, match="empty"):
        nucdata.exports.export(nucdata.load("tnbc"), "geojson", "")
    assert list(tmp_path.iterdir()) == []  # nothing went to the current folder


def test_an_overlay_that_fails_midway_leaves_the_last_good_png(prepared, tmp_path, monkeypatch):
    from PIL import Image

    from nucdata.exports._overlay import write_overlays

    ds = nucdata.load("tnbc", root=prepared)
    out = tmp_path / "overlays"
    first = write_overlays(ds, out, limit=1)[0]
    good = first.read_bytes()
    original = Image.Image.save

    def half_then_fail(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG half")  # what a crash mid-write leaves
        raise OSError("disk gone")

    monkeypatch.setattr(Image.Image, "save", half_then_fail)
    with pytest.raises(OSError, match="disk gone"):
        write_overlays(ds, out, limit=1)
    monkeypatch.setattr(Image.Image, "save", original)
    assert first.read_bytes() == good
    assert sorted(p.name for p in out.iterdir()) == [first.name]  # no temporary file left
