"""The generated training data (the demo world's crops), and the core's independence from the models."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from nucdata.errors import InvalidArgumentError
from nucdata.labels import MERGED_LABEL_SETS, OWN_LABEL_SET
from nucdata.testing import BACKGROUND
from nucdata.testing.world import World, WorldConfig, entries
from nucdata_models.data import ANNOTATED, MAPPED, TrainingData
from nucdata_models.study.synthetic import (
    default_datasets,
    make_synthetic_data,
    table_disagreements,
)

OWNER = {v: k for k, v in OWN_LABEL_SET.items()}


def test_the_core_package_never_imports_the_models():
    # nucdata_models builds on nucdata (its errors are nucdata's typed errors); the other
    # way round would be an upward import: the CLI finds build-merged by entry point.
    code = ("import sys, nucdata, nucdata.cli, nucdata.dataset, nucdata.store._merged;"
            "bad = [m for m in sys.modules if m == 'nucdata_models' or m.startswith('nucdata_models.')];"
            "assert not bad, bad")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def _disagreeing(data, spec, lab, truth):
    """Nuclei whose mapped label is the table's and not the truth (synthetic.table_disagreements)."""
    out = torch.zeros(len(lab), dtype=torch.bool)
    for row in table_disagreements(label_sets=[spec.name]):
        d = data.dataset_names.index(row["dataset"]) if row["dataset"] in data.dataset_names else -1
        out |= (data.dataset_index == d) & (truth == row["truth"]) & (lab == row["mapped"][0])
    return out


def test_generated_data_follow_the_contract():
    data = make_synthetic_data(per_dataset=60, size=20, seed=4)
    names = default_datasets()
    assert data.crops.dtype == torch.uint8 and data.crops.shape == (60 * len(names), 3, 20, 20)
    assert data.dataset_names == names == [d for d in entries() if d != "kumar"]  # Kumar's images are MoNuSeg's
    assert [s.name for s in data.label_sets] == list(MERGED_LABEL_SETS)
    unlabelled = torch.tensor([not entries()[d].labelled for d in names])[data.dataset_index]
    assert bool(unlabelled.any())
    for spec in data.label_sets:
        lab, cand, truth = data.labels[spec.name], data.candidates[spec.name], data.truth[spec.name]
        prov = data.provenance[spec.name]
        assert bool((lab[unlabelled] == -1).all()) and bool((cand[unlabelled] == 0).all())
        own = data.dataset_index == data.dataset_names.index(OWNER[spec.name])
        assert bool((prov[own] != MAPPED).all()) and bool((prov[~own] != ANNOTATED).all())
        assert bool((lab[own] == truth[own]).all())  # the easy world's annotators are right
        # mapped labels are what the tables say: true wherever the tables agree with the world
        wrong = _disagreeing(data, spec, lab, truth)
        known = (lab >= 0) & ~wrong
        assert bool((lab[known] == truth[known]).all())
        assert bool((cand[lab >= 0] == (1 << lab[lab >= 0])).all())
        amb = (lab == -1) & (cand != 0)
        bit = torch.where(truth[amb] >= 0, truth[amb].clamp_min(0), torch.full_like(truth[amb], spec.size))
        assert bool((((cand[amb] >> bit) & 1) == 1).all())  # truth (or outside) among the candidates
        assert bool((truth[(lab == -2) & ~wrong] == -2).all())
    assert int(((data.candidates["pannuke"] != 0) & (data.labels["pannuke"] == -1)).sum()) > 0  # some ambiguous
    again = make_synthetic_data(per_dataset=60, size=20, seed=4)
    assert torch.equal(again.crops, data.crops)


def test_the_tables_disagree_with_the_world_only_on_mitotic_figures():
    """The packaged tables file CoNSeP's malignant epithelium under NuCLS's tumor (and NuCLS's
    mitotic figures under CoNSeP's other): wrong for the world's mitotic nuclei, as it would be for
    real ones. CRCHisto files mitoses as miscellaneous, whose CoNSeP candidates (other, muscle,
    endothelial) miss the world's CoNSeP code for them (malignant epithelium) the same way.
    The synthetic data keep the tables' answer, as the real bridge does."""
    rows = {(r["dataset"], r["type"], r["label_set"]) for r in table_disagreements()}
    assert rows == {("consep", "mitotic", "nucls"), ("nucls", "mitotic", "consep"), ("crchisto", "mitotic", "consep")}


def test_the_hard_world_brings_its_noise_and_look_alikes():
    easy = make_synthetic_data(per_dataset=400, size=16, seed=1, datasets=["pannuke"], label_sets=["pannuke"])
    hard = make_synthetic_data(per_dataset=400, size=16, seed=1, datasets=["pannuke"], label_sets=["pannuke"],
                               world=WorldConfig(label_noise=0.3))
    assert torch.equal(easy.labels["pannuke"], easy.truth["pannuke"])
    flipped = float((hard.labels["pannuke"] != hard.truth["pannuke"]).float().mean())
    assert flipped == pytest.approx(0.3, abs=0.08)
    assert torch.equal(easy.crops, hard.crops)  # a labelling knob leaves the pixels alone
    with pytest.raises(InvalidArgumentError, match="no dataset"):
        make_synthetic_data(per_dataset=2, datasets=["nope"])


def test_datasets_differ_in_stain_as_the_world_says():
    data = make_synthetic_data(per_dataset=200, size=16, channels=4, seed=0)
    world = World(0)
    for d, name in enumerate(data.dataset_names):
        crops = data.crops[data.dataset_index == d].float()
        far = torch.nn.functional.max_pool2d(crops[:, 3:], 5, 1, 2)[:, 0] == 0  # 2 px away from the nucleus
        background = crops[:, :3].permute(1, 0, 2, 3)[:, far].mean(1)
        expected = torch.tensor(BACKGROUND, dtype=torch.float32) + torch.tensor(world.stain(name))
        assert torch.allclose(background, expected, atol=1.0), (name, background, expected)
    stains = {world.stain(name) for name in data.dataset_names}
    assert len(stains) == len(data.dataset_names)  # every dataset its own


def test_contract_violations_are_refused():
    data = make_synthetic_data(per_dataset=5, size=8)
    with pytest.raises(ValueError, match="uint8"):
        TrainingData(data.crops.float(), data.label_sets, data.labels, data.candidates, data.dataset_index,
                     data.dataset_names, data.split)
    bad = dict(data.candidates, pannuke=torch.full((len(data),), 1 << 7))
    with pytest.raises(ValueError, match="bits beyond"):
        TrainingData(data.crops, data.label_sets, data.labels, bad, data.dataset_index, data.dataset_names,
                     data.split)
