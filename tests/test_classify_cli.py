"""``nucdata classify`` end to end: tiles and a generated pyramidal slide, QuPath/HoVer-Net/Parquet
outputs, round trips through our own outputs and exports, a kill mid-slide, Dask."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from classify_helpers import demo_home, tiny_model, write_tiles
from click.testing import CliRunner

from nucdata.cli import main

SETS = ["pannuke", "nucls", "consep", "monusac"]
ALL = "geojson,hovernet-json,parquet"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory)


@pytest.fixture(scope="module")
def tiles(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiles")
    stems = write_tiles(model, "consep", folder, 3)
    return folder, stems


def _classify(*args) -> str:
    result = CliRunner().invoke(main, ["classify", *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def classified(model, tiles, tmp_path_factory):
    folder, stems = tiles
    out = tmp_path_factory.mktemp("classified") / "out"
    text = _classify(model, "--images", folder / "images", "--instances", folder / "masks", "--mpp", "0.25",
                     "--out", out, "--format", ALL, "--quiet")
    return out, stems, text


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    from nucdata.testing.slides import generate_slide

    folder = tmp_path_factory.mktemp("slide")
    for sub in ("slides", "masks", "geojson"):
        (folder / sub).mkdir()
    truth = generate_slide(folder / "slides" / "s1.tif", width=900, height=700, mpp=0.25, density=3000, seed=3,
                           dataset="consep", tile=256, instances=folder / "masks" / "s1.tif",
                           geojson=folder / "geojson" / "s1.geojson")
    return folder, truth


def test_tiles_become_qupath_hovernet_and_parquet(model, classified):
    import shapely.geometry

    from nucdata.formats import read_parquet
    from nucdata.labels import label_set

    out, stems, text = classified
    assert "done in" in text and "nuclei of 3 image(s)" in text
    names = set(label_set("pannuke").names)
    for stem in stems:
        collection = json.loads((out / f"{stem}.geojson").read_text())
        assert collection["type"] == "FeatureCollection" and collection["features"]
        ids = set()
        for feature in collection["features"]:
            geometry = shapely.geometry.shape(feature["geometry"])  # shapely reads every geometry
            assert geometry.geom_type == "Polygon" and geometry.area > 0
            props = feature["properties"]
            assert props["objectType"] == "detection"
            assert props["classification"]["name"] in names and len(props["classification"]["color"]) == 3
            m = props["measurements"]
            assert all(f"{s}: probability" in m for s in SETS)
            assert {"Area µm^2", "Centroid X µm", "Centroid Y µm"} <= set(m)
            ids.add(feature["id"])
        assert len(ids) == len(collection["features"])
        hover = json.loads((out / f"{stem}.json").read_text())
        entry = next(iter(hover["nuc"].values()))
        assert isinstance(entry["type"], int) and 0 <= entry["type_prob"] <= 1 and set(entry["type_sets"]) == set(SETS)
        table = read_parquet(out / f"{stem}.parquet")
        assert len(table["id"]) == len(collection["features"]) == len(hover["nuc"])
        assert all(f"{s}_probability" in table for s in SETS)


def test_the_command_publishes_what_the_classifier_says(model, tiles, classified):
    from nucdata.formats import read_instances, read_parquet
    from nucdata_models import Classifier

    folder, stems = tiles
    out, _, _ = classified
    clf = Classifier.from_pretrained(model, device="cpu")
    for stem in stems:
        want = clf.predict(folder / "images" / f"{stem}.png", instances=read_instances(
            folder / "masks" / f"{stem}_masks.png"), mpp=0.25, check=False)
        table = read_parquet(out / f"{stem}.parquet")
        np.testing.assert_array_equal(table["id"], want.ids)
        for s in SETS:
            np.testing.assert_array_equal(table[f"{s}_id"], want[s].label)
            np.testing.assert_allclose(table[f"{s}_probability"], want[s].probability, atol=1e-6)


def test_a_rerun_is_up_to_date_and_foreign_files_are_kept(model, tiles, classified, tmp_path):
    folder, stems = tiles
    out, _, _ = classified
    before = (out / f"{stems[0]}.geojson").read_bytes()
    text = _classify(model, "--images", folder / "images", "--instances", folder / "masks", "--mpp", "0.25",
                     "--out", out, "--format", ALL)
    assert text.count("up to date") == 3 and (out / f"{stems[0]}.geojson").read_bytes() == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / f"{stems[0]}.geojson").write_text("mine")
    result = CliRunner().invoke(main, ["classify", str(model), "--images", str(folder / "images"), "--instances",
                                       str(folder / "masks"), "--mpp", "0.25", "--out", str(foreign)])
    assert result.exit_code == 2 and "did not write" in result.output
    assert (foreign / f"{stems[0]}.geojson").read_text() == "mine"


def test_runs_with_different_formats_into_one_folder_keep_each_others_outputs(model, tiles, tmp_path):
    folder, stems = tiles
    out = tmp_path / "formats"
    args = ("--images", folder / "images", "--instances", folder / "masks", "--mpp", "0.25", "--out", out)
    _classify(model, *args, "--format", "geojson")
    _classify(model, *args, "--format", "parquet")
    text = _classify(model, *args, "--format", "geojson")  # the first run's files are classify's own
    assert text.count("up to date") == 0 and "did not write" not in text
    for stem in stems:
        assert (out / f"{stem}.geojson").is_file() and (out / f"{stem}.parquet").is_file()
        record = json.loads((out / ".nucdata-classify" / "done" / f"{stem}.json").read_text())
        assert set(record["outputs"]) == {f"{stem}.geojson", f"{stem}.parquet"}


def test_it_refuses_to_guess_the_pixel_size_and_wants_one_input(model, tiles, tmp_path):
    folder, _ = tiles
    result = CliRunner().invoke(main, ["classify", str(model), "--images", str(folder / "images"), "--instances",
                                       str(folder / "masks"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--mpp" in result.output and "metadata" in result.output
    result = CliRunner().invoke(main, ["classify", str(model), "--images", str(folder / "images"), "--instances",
                                       str(folder / "masks"), "--geojson", str(folder), "--mpp", "0.25",
                                       "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "exactly one" in result.output


def _nuclei(out: Path, stem: str):
    from nucdata.formats import read_parquet

    table = read_parquet(out / f"{stem}.parquet")
    order = np.argsort(table["id"])
    return {k: np.asarray(v)[order] for k, v in table.items()}


@pytest.mark.parametrize("flag", ["--geojson", "--hovernet-json"])
def test_our_outputs_read_back_give_the_same_nuclei(model, tiles, classified, tmp_path, flag):
    folder, stems = tiles
    out, _, _ = classified
    again = tmp_path / "again"
    _classify(model, "--images", folder / "images", flag, out, "--mpp", "0.25", "--out", again, "--format",
              "parquet", "--quiet")
    for stem in stems:
        a, b = _nuclei(out, stem), _nuclei(again, stem)
        np.testing.assert_array_equal(a["id"], b["id"])
        assert np.abs(a["x"] - b["x"]).max() < 0.5 and np.abs(a["y"] - b["y"]).max() < 0.5
        for s in SETS:
            np.testing.assert_array_equal(a[f"{s}_id"], b[f"{s}_id"], err_msg=f"{flag} {stem} {s}")


@pytest.mark.parametrize("fmt", ["geojson", "hovernet-json"])
def test_a_datasets_exports_read_back_give_its_nuclei(model, tmp_path, fmt):
    import nucdata

    ds = nucdata.load("consep", root=demo_home(model), label_set="consep")
    exported = tmp_path / "export"
    nucdata.export(ds, fmt, exported)
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    store = ds.store
    names = [str(n) for n in np.asarray(store.column("images", "name"))]
    kept = [i for i in range(store.n_images) if store.nucleus_slice(i).stop > store.nucleus_slice(i).start][:2]
    for i in kept:
        Image.fromarray(np.asarray(store.rgb(i))).save(images / f"{Path(names[i]).stem}.png")
    flag = "--geojson" if fmt == "geojson" else "--hovernet-json"
    source = next(p.parent for p in exported.rglob("*.geojson" if fmt == "geojson" else "*.json")
                  if p.name != "export.json")
    _classify(model, "--images", images, flag, source, "--mpp", "0.25", "--out", tmp_path / "out", "--format",
              "parquet", "--vocabulary", "set:consep", "--quiet")
    centroids = np.asarray(store.column("nuclei", "centroid"))
    labels = ds.labels
    for i in kept:
        rows = store.nucleus_slice(i)
        got = _nuclei(tmp_path / "out", Path(names[i]).stem)
        np.testing.assert_array_equal(got["id"], np.arange(1, rows.stop - rows.start + 1))  # instance values
        assert np.abs(np.stack([got["x"], got["y"]], 1) - centroids[rows]).max() < 0.5
        np.testing.assert_array_equal(got["consep_id"], labels[rows])  # their own labels, annotated


def _run_slide(model, folder, out, env=None):
    import torch

    # the parent's torch threads: a CPU's float sums, hence the last digits, depend on them
    code = (f"import sys, torch; torch.set_num_threads({torch.get_num_threads()}); "
            "from nucdata_models.merge.slides import classify_paths, ClassifyOptions; "
            "classify_paths(sys.argv[1], sys.argv[2], sys.argv[3], instances=sys.argv[4], "
            "options=ClassifyOptions(formats=('geojson', 'hovernet-json', 'parquet'), tile=256, part_nuclei=40))")
    return subprocess.run([sys.executable, "-c", code, str(model), str(folder / "slides"), str(out),
                           str(folder / "masks")], env={**os.environ, "NUCDATA_QUIET": "1", **(env or {})},
                          capture_output=True, text=True, timeout=600)


def test_a_kill_mid_slide_and_a_rerun_give_the_uninterrupted_output(model, slide, tmp_path):
    from nucdata_models.merge.slides import ClassifyOptions, classify_paths

    folder, truth = slide
    options = ClassifyOptions(formats=("geojson", "hovernet-json", "parquet"), tile=256, part_nuclei=40)
    whole = tmp_path / "whole"
    [summary] = classify_paths(model, folder / "slides", whole, instances=folder / "masks", options=options)
    assert summary["nuclei"] == len(truth.ids) and summary["tiles"] > 4 and not summary["gaps"]
    killed = tmp_path / "killed"
    run = _run_slide(model, folder, killed, {"NUCDATA_FAULT": "classify:part-written=kill"})
    assert run.returncode == 137, run.stderr[-2000:]
    assert list((killed / ".nucdata-classify" / "work" / "s1").glob("part-*.npz"))
    assert not list(killed.glob("s1.*"))  # nothing published by the killed run
    [resumed] = classify_paths(model, folder / "slides", killed, instances=folder / "masks", options=options)
    assert resumed["resumed_parts"] >= 1 and not resumed["skipped"]
    for name in ("s1.geojson", "s1.json"):
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name
    a, b = _nuclei(whole, "s1"), _nuclei(killed, "s1")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    np.testing.assert_allclose(np.stack([a["x"], a["y"]], 1), truth.centroids, atol=1e-9)
    assert not (killed / ".nucdata-classify" / "work" / "s1").exists()
    # the GPU path's read-ahead (the next tile cut in a thread while the model runs) changes nothing
    from dataclasses import replace

    ahead = tmp_path / "ahead"
    classify_paths(model, folder / "slides", ahead, instances=folder / "masks", options=replace(options, prefetch=True))
    for name in ("s1.geojson", "s1.json"):
        assert (ahead / name).read_bytes() == (whole / name).read_bytes(), name


def test_a_slides_geojson_input_streams_too(model, slide, tmp_path):
    folder, truth = slide
    out = tmp_path / "out"
    _classify(model, "--images", folder / "slides", "--geojson", folder / "geojson", "--out", out, "--format",
              "parquet", "--tile", "300", "--quiet")  # the slide's µm/px from its TIFF tags
    got = _nuclei(out, "s1")
    np.testing.assert_array_equal(got["id"], truth.ids)
    assert np.abs(np.stack([got["x"], got["y"]], 1) - truth.centroids).max() < 0.5


def test_a_dask_local_cluster_gives_the_serial_result(model, tiles, classified, tmp_path):
    from dask.distributed import Client, LocalCluster

    from nucdata_models.merge.slides import ClassifyOptions, classify_paths

    folder, stems = tiles
    out, _, _ = classified
    options = ClassifyOptions(formats=("geojson", "hovernet-json", "parquet"), mpp=0.25)
    import torch

    from nucdata_models.merge.defaults import cpu_threads

    before = torch.get_num_threads()
    torch.set_num_threads(cpu_threads() or before)  # the threads the command ran `classified` with
    try:
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            results = classify_paths(model, folder / "images", tmp_path / "dask", instances=folder / "masks",
                                     options=options, scheduler=client)
    finally:
        torch.set_num_threads(before)
    assert sorted(r["image"] for r in results) == sorted(stems)
    for stem in stems:
        for suffix in (".geojson", ".json"):
            assert (tmp_path / "dask" / f"{stem}{suffix}").read_bytes() == (out / f"{stem}{suffix}").read_bytes()
        a, b = _nuclei(out, stem), _nuclei(tmp_path / "dask", stem)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_model_card_prints_the_card(model):
    result = CliRunner().invoke(main, ["model-card", str(model)])
    assert result.exit_code == 0 and "## Training data" in result.output and "inherits its terms" in result.output
    result = CliRunner().invoke(main, ["model-card", str(model / "classifier.safetensors"), "--json"])
    assert json.loads(result.output)["format"] == "nucdata-classifier"


def test_the_tutorial_runs(model, tmp_path, monkeypatch, capsys):
    """docs/tutorials/classify.md: its Python blocks, in order, from a segmenter's output to QuPath."""
    import re
    import warnings

    text = (Path(__file__).resolve().parents[1] / "docs" / "tutorials" / "classify.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert len(blocks) >= 7 and "does not segment" in text
    monkeypatch.chdir(tmp_path)
    (tmp_path / "merged").symlink_to(model, target_is_directory=True)
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a tiny demo model: its gaps and noisy fits are not the point here
        for i, block in enumerate(blocks):
            exec(compile(block, f"classify.md block {i + 1}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "nuclei in" in out and "rows;" in out and "'name'" in out
    assert (tmp_path / "classified" / "slide-1.geojson").is_file()
    assert (tmp_path / "merged-lab" / "classifier.safetensors").is_file()
    assert "(own images)->pannuke" in namespace["clf"].calibration.pairs
