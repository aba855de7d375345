"""The generated world, and the package's independence from nucdata."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from nucdata_models.data import TrainingData
from nucdata_models.study.synthetic import make_synthetic_data


def test_the_core_package_never_imports_the_models():
    # nucdata_models builds on nucdata (its errors are nucdata's typed errors); the other
    # way round would be an upward import: the CLI finds build-merged by entry point.
    code = ("import sys, nucdata, nucdata.cli, nucdata.dataset, nucdata.store._merged;"
            "bad = [m for m in sys.modules if m == 'nucdata_models' or m.startswith('nucdata_models.')];"
            "assert not bad, bad")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def test_generated_data_follow_the_contract():
    data = make_synthetic_data(per_dataset=60, size=20, seed=4)
    assert data.crops.dtype == torch.uint8 and data.crops.shape == (300, 3, 20, 20)
    assert data.dataset_names == ["pannuke", "consep", "monusac", "nucls", "tnbc"]
    unlabelled = data.dataset_index == 4
    for spec in data.label_sets:
        lab, cand, truth = data.labels[spec.name], data.candidates[spec.name], data.truth[spec.name]
        assert bool((lab[unlabelled] == -1).all()) and bool((cand[unlabelled] == 0).all())
        known = lab >= 0
        assert bool((lab[known] == truth[known]).all())  # annotations and mapped exact labels are true
        assert bool((cand[known] == (1 << lab[known])).all())
        amb = (lab == -1) & (cand != 0)
        assert bool((((cand[amb] >> truth[amb].clamp_min(0)) & 1) == 1).all())  # truth among the candidates
        assert bool((truth[lab == -2] == -2).all())
    assert int(((data.candidates["pannuke"] != 0) & (data.labels["pannuke"] == -1)).sum()) > 0  # some ambiguous
    again = make_synthetic_data(per_dataset=60, size=20, seed=4)
    assert torch.equal(again.crops, data.crops)


def test_datasets_differ_in_stain():
    data = make_synthetic_data(per_dataset=200, size=16, seed=0)
    means = [data.crops[data.dataset_index == d].float().mean((0, 2, 3)) for d in range(5)]
    assert min(float((means[0] - m).abs().max()) for m in means[1:]) > 3


def test_contract_violations_are_refused():
    data = make_synthetic_data(per_dataset=5, size=8)
    with pytest.raises(ValueError, match="uint8"):
        TrainingData(data.crops.float(), data.label_sets, data.labels, data.candidates, data.dataset_index,
                     data.dataset_names, data.split)
    bad = dict(data.candidates, pannuke=torch.full((25,), 1 << 7))
    with pytest.raises(ValueError, match="bits beyond"):
        TrainingData(data.crops, data.label_sets, data.labels, bad, data.dataset_index, data.dataset_names,
                     data.split)
