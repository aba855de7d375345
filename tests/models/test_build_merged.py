"""build-merged end to end on the CPU with the small encoder (the demo world)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import nucdata
from nucdata._util.faults import inject
from nucdata._util.safe_pickle import load as safe_load
from nucdata.cli import main
from nucdata.errors import InjectedFault
from nucdata_models.merge.build import (
    BuildOptions,
    OutputFolderError,
    build_merged,
    demo_key,
    work_dir,
)

DATASETS = ["pannuke", "monusac", "nucls", "monuseg", "kumar", "tnbc"]
SETS = ["pannuke", "nucls", "consep", "monusac"]


def _options(out, **kw):
    kw = {"overlays": 2, **kw}
    return BuildOptions(out=out, datasets=DATASETS, demo=True, demo_scale=1, crop_size=24,
                        config={"epochs": {"A": 2, "B": 1, "C": 1}, "batch_size": 64, "device": "cpu"}, **kw)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("merged") / "out"
    messages = []
    report = build_merged(_options(out), say=messages.append)
    return out, report, messages


def _home(out):
    return work_dir(out) / f"demo-{demo_key(_options(out))}"


def test_outputs_for_every_set_and_dataset(built):
    out, report, _ = built
    for s in SETS:
        for d in DATASETS:
            assert (out / s / f"{d}.pkl").is_file()
            assert list((out / "overlays" / s / d).glob("*.png"))
    assert (out / "model.pt").is_file() and (out / "model.json").is_file() and (out / ".nucdata-merged").is_file()
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["datasets"] == DATASETS and on_disk["recipe"] == "nucdata"
    assert set(on_disk["validation"]) == {"A", "B", "C"}
    text = (out / "report.md").read_text()
    assert "Filled labels against" in text and "held out" in text
    assert set(report["demo_truth"]["held_out"]["merged"]) == set(SETS)


def test_validation_is_below_one(built):
    _, report, _ = built
    scored = [m["accuracy"] for per_set in report["validation"].values() for m in per_set.values() if m["count"]]
    assert scored and max(scored) < 1.0


def test_pickle_fields_say_what_was_annotated(built):
    out, _, _ = built
    merged = nucdata.open_merged(out)
    # NuCLS nuclei carry no PanNuke annotation: mapped labels are not ground truth
    assert (merged.table("pannuke", "nucls").ground_truth.values == -1).all()
    # PanNuke's own nuclei carry their annotation under PanNuke
    own = merged.table("pannuke", "pannuke").ground_truth.values
    assert (own >= 0).all()
    # annotated nuclei whose class maps outside MoNuSAC (e.g. connective tissue) are -2
    # in field 4 and in field 2, never forced into a MoNuSAC class
    table = merged.table("monusac", "pannuke")
    outside = table.ground_truth.values == -2
    assert outside.any()
    assert (table.predicted.values[outside] == -2).all()


def test_pickles_hold_plain_types_in_the_published_structure(built):
    out, _, _ = built
    data = safe_load(out / "pannuke" / "monusac.pkl")
    assert isinstance(data, dict) and all(isinstance(k, str) and k.endswith(".png") for k in data)
    nucleus = next(v for v in data.values() if v)[0]
    centroid, predicted, probability, truth = nucleus
    assert isinstance(centroid, list) and all(type(c) is float for c in centroid)
    assert type(predicted) is int and type(probability) is float and type(truth) is int
    assert 0 <= probability <= 1


def test_duplicates_are_found_and_trained_once(built):
    _, report, messages = built
    dups = report["splits"]["duplicates"]["kumar"]
    assert dups.get("monuseg", 0) > 0  # the demo's Kumar images are MoNuSeg's, byte for byte
    assert report["splits"]["nuclei"]["duplicate"] > 0
    assert any("byte for byte" in m for m in messages)
    assert report["splits"]["group_key"]["tnbc"] == "patient"


def test_load_with_source_agrees_with_the_merged_columns(built):
    out, _, _ = built
    ds = nucdata.load("monusac", label_set="monusac", root=_home(out), merged=out)
    table = nucdata.open_merged(out).table("monusac", "monusac")
    annotated = table.ground_truth.values >= 0
    assert annotated.all()  # MoNuSAC's own set is exact for every MoNuSAC nucleus
    assert (ds.nuclei.annotation.values == table.ground_truth.values).all()
    assert (ds.nuclei.label.values == table.ground_truth.values).all()
    tnbc = nucdata.load("tnbc", label_set="nucls", root=_home(out), merged=out)
    t = nucdata.open_merged(out).table("nucls", "tnbc")
    np.testing.assert_array_equal(tnbc.nuclei.predicted.values, t.predicted.values)
    np.testing.assert_allclose(tnbc.nuclei.centroid.values, t.centroid.values, rtol=1e-6)
    sample = tnbc[0]
    assert {"probabilities", "sources", "annotated"} <= set(sample)
    with pytest.raises(nucdata.InvalidArgumentError):
        nucdata.load("tnbc", root=_home(out), merged=out)


def test_the_output_stands_alone(built, tmp_path):
    out, _, _ = built
    moved = tmp_path / "elsewhere"
    shutil.copytree(out, moved)
    shutil.rmtree(moved / "stores" / "tnbc" / "crops", ignore_errors=True)
    ds = nucdata.load("tnbc", label_set="pannuke", root=tmp_path / "no-home", merged=moved)
    assert len(ds) > 0 and ds[0]["image"].shape[0] == 3
    assert nucdata.open_merged(moved).datasets == sorted(DATASETS)


def test_rerun_resumes_and_a_new_seed_is_a_new_world(built):
    out, _, _ = built
    messages = []
    build_merged(_options(out), say=messages.append)
    assert sum("reusing" in m for m in messages) == 3
    assert not any(m.startswith("preparing") for m in messages)
    assert demo_key(_options(out)) != demo_key(_options(out, seed=1))


def test_a_crash_leaves_the_previous_output_readable(built):
    out, _, _ = built
    before = (out / "report.json").read_text()
    for point in ("build-merged:dataset-written", "build-merged:staged", "build-merged:old-moved"):
        with inject(point), pytest.raises(InjectedFault):
            build_merged(_options(out), say=lambda m: None)
        assert (out / "report.json").read_text() == before
        assert nucdata.open_merged(out).datasets == sorted(DATASETS)


def test_a_kill_between_the_renames_is_recovered(built):
    out, _, _ = built
    code = ("import sys; from pathlib import Path; sys.path.insert(0, 'tests/models');"
            "from test_build_merged import _options; from nucdata_models.merge.build import build_merged;"
            f"build_merged(_options(Path({str(out)!r})), say=lambda m: None)")
    run = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ,
                                                             "NUCDATA_FAULT": "build-merged:old-moved=kill"},
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 137, run.stderr[-2000:]
    assert not out.exists()  # killed with the old output renamed away
    messages = []
    build_merged(_options(out), say=messages.append)
    assert any("restored the previous copy" in m for m in messages)
    assert not [p for p in out.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_a_folder_we_did_not_write_is_refused(tmp_path):
    out = tmp_path / "project"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(OutputFolderError, match="did not write"):
        build_merged(_options(out), say=lambda m: None)
    assert (out / "thesis.tex").read_text() == "precious"
    result = CliRunner().invoke(main, ["build-merged", "--out", str(out), "--demo", "--epochs", "1"])
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (out / "thesis.tex").read_text() == "precious"


def test_the_current_folder_and_its_parents_are_never_an_output(tmp_path, monkeypatch):
    from nucdata_models.merge.build import check_output_folder

    work = tmp_path / "project" / "code"
    work.mkdir(parents=True)
    (work / "thesis.tex").write_text("precious")
    monkeypatch.chdir(work)
    for out in ("", ".", "..", str(work), "/"):
        with pytest.raises(OutputFolderError, match="current folder"):
            check_output_folder(Path(out), overwrite=True)  # --overwrite does not make it ours
    check_output_folder(Path("merged"), overwrite=False)  # a new folder below is fine
    result = CliRunner().invoke(main, ["build-merged", "--out", "", "--demo", "--overwrite", "--epochs", "1"])
    assert result.exit_code != 0 and "current folder" in result.output
    assert (work / "thesis.tex").read_text() == "precious"


def test_cli_values_are_validated_and_cuda_is_checked(tmp_path):
    runner = CliRunner()
    for args in (["--epochs", "abc"], ["--overlays", "abc"], ["--demo-scale", "0"], ["--batch-size", "0"]):
        result = runner.invoke(main, ["build-merged", "--out", str(tmp_path / "o"), *args])
        assert result.exit_code == 2 and "Traceback" not in result.output, args
    import torch

    if not torch.cuda.is_available():
        result = runner.invoke(main, ["build-merged", "--out", str(tmp_path / "o"), "--device", "cuda"])
        assert result.exit_code == 2 and "no CUDA device" in result.output
        assert len([line for line in result.output.splitlines() if line.startswith("Error")]) == 1


def test_help_shows_the_recipes():
    result = CliRunner().invoke(main, ["build-merged", "--help"])
    assert "--recipe [nucdata|paper]" in result.output


def test_missing_dataset_asked_by_name_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NUCDATA_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(main, ["build-merged", "--out", str(tmp_path / "o"), "--datasets", "consep",
                                       "--epochs", "1"])
    assert result.exit_code == 2
    assert "consep is not available" in result.output and "How to get it" in result.output


def test_checkpoint_mismatch_is_refused(built, tmp_path):
    out, _, _ = built
    options = _options(tmp_path / "o2", checkpoint=out / "model.pt")
    options.label_sets = ["pannuke", "monusac"]
    from nucdata_models import CheckpointMismatchError

    with pytest.raises(CheckpointMismatchError):
        build_merged(options, say=lambda m: None)


def test_the_published_probability_is_calibrated_and_reported(built):
    from nucdata.store import PROVENANCE, read_merged_labels
    from nucdata_models.calibration import Calibration

    out, report, messages = built
    cal = report["calibration"]
    assert cal["method"] == "temperature" and cal["split"] == "validation"
    stored = json.loads((out / "model.json").read_text())["calibration"]
    assert Calibration.from_dict(stored).to_dict() == {k: cal[k] for k in stored}
    assert set(cal["uses"]) == {f"{d}->{s}" for d in DATASETS for s in SETS}
    for s in SETS:
        per_set = cal["scores"][s]
        assert per_set["scored_against"] == "truth"
        filled = per_set["groups"]["filled"]
        assert len(filled["bins"]) == 15 and filled["count"] == sum(b["count"] for b in filled["bins"])
        assert 0 <= filled["ece"] <= 1 and "ece_uncalibrated" in filled and filled["reading"].startswith("ECE")
        assert (out / cal["diagrams"][s]).is_file()
    text = (out / "report.md").read_text()
    assert "## Calibration of the published probability" in text and "![reliability diagram, pannuke]" in text
    assert any(m.startswith("calibration: pannuke: held-out ECE") for m in messages)
    # field 3 belongs to field 2: the merged label's probability where the annotation decides the
    # candidates or says outside, the prediction's elsewhere; ambiguous-resolved ones renormalised
    for d in ("pannuke", "nucls", "tnbc"):
        _, merged = read_merged_labels(out, d, "consep")
        c = merged.columns
        table = nucdata.open_merged(out).table("consep", d)
        decided = np.isin(c["source"], [PROVENANCE.index("ambiguous-resolved"), PROVENANCE.index("outside")])
        # (the pickle lists nuclei image by image, in store order: the merged columns' order)
        np.testing.assert_array_equal(table.probability.values,
                                      np.where(decided, c["probability"], c["predicted_probability"]))
        same = (c["source"] == PROVENANCE.index("ambiguous-resolved")) & (c["label"] == c["predicted"])
        assert (c["probability"][same] >= c["predicted_probability"][same] - 1e-6).all()


def test_a_checkpoint_brings_its_calibration(built, tmp_path):
    out, _, _ = built
    messages = []
    again = tmp_path / "again"
    build_merged(_options(again, checkpoint=out / "model.pt", overlays=0), say=messages.append)
    assert any("using the calibration stored with" in m for m in messages)
    assert (json.loads((again / "model.json").read_text())["calibration"]
            == json.loads((out / "model.json").read_text())["calibration"])
    for s in SETS:
        assert (again / s / "tnbc.pkl").read_bytes() == (out / s / "tnbc.pkl").read_bytes()


def test_the_held_out_dataset_calibration_trains_one_model_per_labelled_dataset(tmp_path):
    out = tmp_path / "held-out"
    messages = []
    options = _options(out, overlays=0)
    options.config["unseen_calibration"] = "held-out-dataset"
    report = build_merged(options, say=messages.append)
    trained = [m for m in messages if m.startswith("held-out-dataset calibration: trained without")]
    assert [m.split()[4] for m in trained] == ["pannuke's", "monusac's", "nucls's"]  # the labelled ones
    cal = report["calibration"]
    assert set(cal["unseen_fitted_on"]) == set(SETS) and all(n > 0 for n in cal["unseen_fitted_on"].values())
    for s in SETS:
        for d in ("monuseg", "kumar", "tnbc"):  # no label information in any set
            assert cal["uses"][f"{d}->{s}"] == ("unseen" if s in cal["unseen"] else
                                               "pooled" if s in cal["pooled"] else "none")
    # the tiny demo has fewer than MIN_NUCLEI such nuclei per set: no temperature, and the report says so
    text = (out / "report.md").read_text()
    assert "held-out-dataset T (nuclei)" in text
    for s, n in cal["unseen_fitted_on"].items():
        assert (s in cal["unseen"]) == (n >= cal["minimum"])
        if s not in cal["unseen"]:
            assert f"none ({n} nuclei)" in text
    stored = json.loads((out / "model.json").read_text())
    assert stored["calibration"]["unseen"] == cal["unseen"]
