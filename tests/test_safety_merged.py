"""Merged outputs are checked, never trusted (issue 21, point 3).

One tiny demo output is built per module (two datasets, one epoch per stage, ~10 s);
each test tampers with a copy of it the way a damaged or crafted download could, then
opens it every way nucdata does (``load(merged=)``, ``open_merged(...)[set, dataset]``)
and runs ``nucdata verify --merged``. Every tampering is a typed error on opening (never
a raw ``JSONDecodeError`` / ``ValueError`` / ``OverflowError``, never misaligned samples)
and a report line with exit status 1.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import nucdata
from nucdata.cli import main
from nucdata_models.merge.build import BuildOptions, build_merged, demo_key, work_dir

DATASETS = ["pannuke", "tnbc"]


def _options(out: Path) -> BuildOptions:
    return BuildOptions(out=out, datasets=DATASETS, demo=True, demo_scale=1, crop_size=16, overlays=0,
                        config={"epochs": {"A": 1, "B": 1, "C": 1}, "batch_size": 64, "device": "cpu"})


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("merged") / "out"
    build_merged(_options(out), say=lambda _: None)
    return out, work_dir(out) / f"demo-{demo_key(_options(out))}"


@pytest.fixture
def output(built, tmp_path) -> tuple[Path, Path]:
    """A private copy of the output (tests damage it) and the demo home."""
    out, home = built
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    return copy, home


def _load(out: Path, home: Path, label_set: str = "pannuke"):
    return nucdata.load("tnbc", label_set=label_set, root=home, merged=out)


def _pickle(out: Path, label_set: str = "pannuke"):
    # the store layer does not know the label sets: their sizes are given (load(merged=) and
    # verify --merged look them up); without them labels are checked against LABEL_BOUND
    classes = {name: len(nucdata.label_set(name)) for name in ("pannuke", "nucls", "consep", "monusac")}
    return nucdata.open_merged(out, classes=classes)[label_set, "tnbc"]


def _verify(out: Path) -> str:
    result = CliRunner().invoke(main, ["verify", "--merged", str(out)])
    assert "Traceback" not in result.output
    assert result.exit_code == 1, result.output
    return result.output


def _typed(call, match: str) -> nucdata.NucdataError:
    """``call()`` raises nucdata's MergedOutputError (a NucdataError) whose message matches."""
    with pytest.raises(nucdata.NucdataError, match=match) as info:
        call()
    assert type(info.value).__name__ == "MergedOutputError", repr(info.value)
    return info.value


def _column(out: Path, key: str, label_set: str = "pannuke") -> Path:
    return out / "merged" / "tnbc" / label_set / f"{key}.npy"


def _info(out: Path) -> Path:
    return out / "merged" / "tnbc" / "merged.json"


# -- a sound output --------------------------------------------------------------------
def test_a_sound_output_opens_and_verifies(output):
    out, home = output
    ds = _load(out, home)
    assert len(ds.labels) == ds.store.n_nuclei
    assert set(_pickle(out)) == {f"{n}.png" for n in ds.store.column("images", "name")}
    result = CliRunner().invoke(main, ["verify", "--merged", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.count("agree with the store") == len(DATASETS) * 4


# -- merged.json -------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "match"), [
    ("{not json", "not readable JSON"),
    ("[1, 2]", "not an object"),
    (None, "'label_sets' must be a non-empty list"),  # "pannuke" as a string passed a substring test
    ("nuclei", "'nuclei' must be a count"),
    ("sources", "'sources' is"),
])
def test_merged_json_breaking_its_schema_is_refused(output, text, match):
    out, home = output
    info = json.loads(_info(out).read_text())
    if text is None:
        info["label_sets"] = "pannuke nucls"
        _info(out).write_text(json.dumps(info))
    elif text == "nuclei":
        info["nuclei"] = "283"
        _info(out).write_text(json.dumps(info))
    elif text == "sources":
        info["sources"] = list(reversed(info["sources"]))  # codes would mean other provenances
        _info(out).write_text(json.dumps(info))
    else:
        _info(out).write_text(text)
    _typed(lambda: _load(out, home), match)
    assert match.split()[0].strip("'") in _verify(out)


# -- merged columns ------------------------------------------------------------------------
def test_truncated_column_is_refused(output):
    out, home = output
    path = _column(out, "label")
    path.write_bytes(path.read_bytes()[:-16])
    _typed(lambda: _load(out, home), "truncated|rows")
    assert "label.npy" in _verify(out)


def test_object_dtype_column_is_refused_unread(output):
    out, home = output
    n = np.load(_column(out, "label")).shape[0]
    np.save(_column(out, "label"), np.array([object()] * 0 + [1] * n, dtype=object), allow_pickle=True)
    _typed(lambda: _load(out, home), "dtype object")
    assert "dtype object" in _verify(out)


def test_a_short_probability_column_is_refused_not_misaligned(output):
    """3 probabilities for all the nuclei: before, accepted; samples took other nuclei's values."""
    out, home = output
    np.save(_column(out, "probability"), np.full(3, 0.5, np.float32))
    _typed(lambda: _load(out, home), "3 rows, but the store has")
    assert "3 rows" in _verify(out)


def test_a_two_dimensional_label_column_is_refused(output):
    out, home = output
    labels = np.load(_column(out, "label"))
    np.save(_column(out, "label"), labels[:, None])
    _typed(lambda: _load(out, home), "shape")
    assert "label.npy: shape" in _verify(out)


def test_a_float_label_column_is_refused(output):
    out, home = output
    np.save(_column(out, "label"), np.load(_column(out, "label")).astype(np.float64))
    _typed(lambda: _load(out, home), "dtype float64")


@pytest.mark.parametrize(("key", "value", "match"), [
    ("source", 9, "provenance codes outside"),
    ("label", 7, "codes outside -2..4"),           # pannuke has 5 classes
    ("predicted", -5, "codes outside -2..4"),
    ("annotation", 2**40, "codes outside -2..4"),
    ("probability", 1.5, "outside \\[0, 1\\]"),
    ("predicted_probability", np.nan, "NaN beside a label other than -2"),
])
def test_codes_and_probabilities_out_of_range_are_refused(output, key, value, match):
    out, home = output
    column = np.load(_column(out, key))
    if key == "probability":  # the nucleus must not be -2, where NaN would be allowed
        column[np.flatnonzero(np.load(_column(out, "label")) >= 0)[0]] = value
    else:
        column[0] = value
    np.save(_column(out, key), column)
    _typed(lambda: _load(out, home), match)
    assert f"{key}.npy" in _verify(out)


def test_outside_provenance_with_a_class_label_is_refused(output):
    out, home = output
    source, label = np.load(_column(out, "source")), np.load(_column(out, "label"))
    row = int(np.flatnonzero(label >= 0)[0])
    source[row] = nucdata.PROVENANCE.index("outside")
    np.save(_column(out, "source"), source)
    _typed(lambda: _load(out, home), "'outside' nuclei whose label is not -2")


# -- the published pickles -----------------------------------------------------------------
def _rewrite_pickle(out: Path, edit, label_set: str = "pannuke") -> None:
    path = out / label_set / "tnbc.pkl"
    table = pickle.loads(path.read_bytes())  # noqa: S301 - our own test file
    edit(table)
    path.write_bytes(pickle.dumps(table, protocol=4))


def _first_rows(table) -> list:
    return next(rows for rows in table.values() if rows)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda t: _first_rows(t)[0].pop(), "3 fields"),                      # raw IndexError before
    (lambda t: _first_rows(t)[0].__setitem__(1, 10**30), "outside -2..4"),  # raw OverflowError before
    (lambda t: _first_rows(t)[0].__setitem__(1, "neoplastic"), "not a whole number"),  # raw ValueError
    (lambda t: _first_rows(t)[0].__setitem__(1, 9), "outside -2..4"),     # accepted before
    (lambda t: _first_rows(t)[0].__setitem__(0, [1.0]), "centroid"),       # raw ValueError before
    (lambda t: _first_rows(t)[0].__setitem__(0, [float("inf"), 0.0]), "not finite"),
    (lambda t: _first_rows(t)[0].__setitem__(2, 7.0), "outside \\[0, 1\\]"),
    (lambda t: _first_rows(t).append("a row"), "not \\[\\[x, y\\]"),
    (lambda t: t.__setitem__(next(iter(t)), {"a": 1}), "not a list of nuclei"),
])
def test_malformed_pickle_rows_are_refused(output, edit, match):
    out, _ = output
    _rewrite_pickle(out, edit)
    _typed(lambda: _pickle(out), match)
    assert "tnbc.pkl" in _verify(out)


def test_a_huge_label_is_refused_even_without_the_label_set_sizes(output):
    out, _ = output
    marker = out / ".nucdata-merged"  # an output whose marker records no class counts (as the authors' has none)
    marker.write_text(json.dumps({k: v for k, v in json.loads(marker.read_text()).items() if k != "classes"}))
    _rewrite_pickle(out, lambda t: _first_rows(t)[0].__setitem__(1, 10**30))
    _typed(lambda: nucdata.open_merged(out)["pannuke", "tnbc"], "outside -2..61")


def test_pickle_rows_moved_between_images_are_found_by_verify(output):
    """Rows that still follow the schema but belong to other nuclei: only the store can tell."""
    out, _ = output

    def swap(table):
        a, b = [k for k, rows in table.items() if len(rows) >= 2][:2]
        table[a][0], table[b][0] = table[b][0], table[a][0]

    _rewrite_pickle(out, swap)
    assert _pickle(out)  # well-formed, so it opens
    assert nucdata.open_merged(out)["pannuke", "tnbc"]
    assert "centroids differ from the store's" in _verify(out)


def test_a_pickle_field_that_disagrees_with_the_columns_is_found(output):
    out, _ = output

    def relabel(table):
        row = _first_rows(table)[0]
        row[3] = 4 if row[3] != 4 else 3

    _rewrite_pickle(out, relabel)
    assert "field 4 (ground truth) differs" in _verify(out)


# -- the marker and the output's store -------------------------------------------------------
def test_marker_breaking_its_schema_is_refused(output):
    out, _ = output
    marker = out / ".nucdata-merged"
    info = json.loads(marker.read_text())
    info["datasets"] = ["../../etc"]
    marker.write_text(json.dumps(info))
    _typed(lambda: nucdata.open_merged(out), "not a plain name")
    assert "not a plain name" in _verify(out)


def test_open_merged_checks_label_ranges_by_the_markers_class_counts(output):
    out, _ = output
    marker = out / ".nucdata-merged"
    info = json.loads(marker.read_text())
    assert info["classes"]["pannuke"] == len(nucdata.label_set("pannuke"))
    # a label past the set's classes but below the generic bound: refused without classes=
    _rewrite_pickle(out, lambda table: _first_rows(table)[0].__setitem__(1, 7))  # pannuke has 5 classes
    _typed(lambda: nucdata.open_merged(out)["pannuke", "tnbc"], "-2..4")
    # a marker whose counts break the schema is refused before any pickle is read
    info["classes"] = {"pannuke": 0}
    marker.write_text(json.dumps(info))
    _typed(lambda: nucdata.open_merged(out), "'classes' must map label sets")


def test_a_missing_output_folder_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["verify", "--merged", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "Traceback" not in result.output and "does not exist" in result.output


def test_a_folder_without_marker_is_reported(tmp_path):
    assert "missing; this is not a nucdata build-merged output" in _verify(tmp_path)


def test_a_store_image_named_to_escape_is_reported(output):
    """As a downloaded output's ``stores/`` could carry it, with the manifest's record updated."""
    from nucdata._util.npy import file_record

    out, _ = output
    store = out / "stores" / "tnbc"
    names = np.load(store / "images" / "name.npy")
    names = np.asarray(["../../../../x", *names[1:].tolist()])
    np.save(store / "images" / "name.npy", names)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["files"]["images/name.npy"] = file_record(names, store / "images" / "name.npy")
    (store / "manifest.json").write_text(json.dumps(manifest))
    text = _verify(out)
    assert "cannot be file names inside an export folder" in text and "../../../../x" in text
