"""build-merged end to end on the CPU with the small encoder (the demo world)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from click.testing import CliRunner

import nucdata
from nucdata.cli import main
from nucdata_models.merged import BuildOptions, build_merged, work_dir

DATASETS = ["pannuke", "monusac", "tnbc"]
SETS = ["pannuke", "nucls", "consep", "monusac"]


def _options(out, **kw):
    return BuildOptions(out=out, datasets=DATASETS, demo=True, epochs={"A": 2, "B": 1, "C": 1},
                        crop_size=24, batch_size=64, overlays=2, **kw)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("merged") / "out"
    messages = []
    report = build_merged(_options(out), say=messages.append)
    return out, report, messages


def test_outputs_for_every_set_and_dataset(built):
    out, report, _ = built
    for s in SETS:
        for d in DATASETS:
            assert (out / s / f"{d}.pkl").is_file()
            assert list((out / "overlays" / s / d).glob("*.png"))
    assert (out / "model.pt").is_file() and (out / "model.json").is_file()
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["datasets"] == DATASETS
    assert set(on_disk["validation"]) == {"A", "B", "C"}
    assert "Filled labels against" in (out / "report.md").read_text()
    assert set(report["demo_truth"]) == set(SETS)


def test_pickles_hold_plain_types_in_the_published_structure(built):
    out, _, _ = built
    with open(out / "pannuke" / "monusac.pkl", "rb") as fh:
        data = pickle.load(fh)
    assert isinstance(data, dict) and all(isinstance(k, str) and k.endswith(".png") for k in data)
    nucleus = next(v for v in data.values() if v)[0]
    centroid, predicted, probability, truth = nucleus
    assert isinstance(centroid, list) and all(type(c) is float for c in centroid)
    assert type(predicted) is int and type(probability) is float and type(truth) is int
    assert 0 <= probability <= 1


def test_annotated_nuclei_keep_their_annotation(built):
    out, _, _ = built
    merged = nucdata.open_merged(out)
    assert merged.label_sets == sorted(SETS) and merged.datasets == sorted(DATASETS)
    table = merged.table("monusac", "monusac")
    annotated = table.ground_truth.values >= 0
    assert annotated.all()  # MoNuSAC's own set is exact for every MoNuSAC nucleus
    ds = nucdata.load("monusac", label_set="monusac", root=work_dir(out) / "demo-home", source=out)
    assert (ds.nuclei.annotated.values == annotated).all()
    assert (ds.nuclei.label.values == table.ground_truth.values).all()
    # TNBC has no annotation anywhere: every label is predicted.
    tnbc = merged.table("pannuke", "tnbc")
    assert (tnbc.ground_truth.values == -1).all() and (tnbc.predicted.values >= 0).all()


def test_load_with_source_agrees_with_the_pickles(built):
    out, _, _ = built
    home = work_dir(out) / "demo-home"
    ds = nucdata.load("tnbc", label_set="nucls", root=home, source=out)
    table = nucdata.open_merged(out).table("nucls", "tnbc")
    assert int(ds.nuclei.sizes["nucleus"]) == int(table.sizes["nucleus"])
    np.testing.assert_array_equal(ds.nuclei.label.values, table.predicted.values)
    np.testing.assert_allclose(ds.nuclei.probability.values, table.probability.values, rtol=1e-6)
    np.testing.assert_allclose(ds.nuclei.centroid.values, table.centroid.values, rtol=1e-6)
    sample = ds[0]
    assert "probabilities" in sample and "annotated" in sample
    with pytest.raises(nucdata.InvalidArgumentError):
        nucdata.load("tnbc", root=home, source=out)


def test_rerun_resumes_from_finished_stages(built):
    out, _, _ = built
    messages = []
    build_merged(_options(out), say=messages.append)
    assert sum("reusing" in m for m in messages) == 3
    assert not any(m.startswith("preparing") for m in messages)


def test_a_crash_leaves_the_previous_output_readable(built, monkeypatch):
    out, _, _ = built
    before = (out / "report.json").read_text()

    def crash(*args, **kwargs):
        raise RuntimeError("killed mid-stage")

    monkeypatch.setattr("nucdata_models.merged.write_dataset", crash)
    with pytest.raises(RuntimeError, match="killed"):
        build_merged(_options(out), say=lambda m: None)
    assert (out / "report.json").read_text() == before
    assert nucdata.open_merged(out).datasets == sorted(DATASETS)
    assert not [p for p in out.parent.iterdir() if ".tmp-" in p.name]


def test_missing_dataset_asked_by_name_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NUCDATA_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(main, ["build-merged", "--out", str(tmp_path / "o"), "--datasets", "consep", "--epochs", "1"])
    assert result.exit_code == 2
    assert "consep is not available" in result.output and "How to get it" in result.output


def test_checkpoint_mismatch_is_refused(built, tmp_path):
    out, _, _ = built
    options = _options(tmp_path / "o2", checkpoint=out / "model.pt")
    options.label_sets = ["pannuke", "monusac"]
    from nucdata_models import CheckpointMismatchError

    with pytest.raises(CheckpointMismatchError):
        build_merged(options, say=lambda m: None)
