"""The real-data study (``benchmarks/real_study.py``, ``nucdata_models.study``'s real world) on CRCHisto copies.

A hand-made copy in CRCHisto's official layout (the demo writer's ``.mat`` files and BMP
images, two image folders removed so the numbers do not run 1..N) goes through the whole
study with budgets of seconds; the real images 1-60 run when ``../shared/realdata`` holds
them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from nucdata.errors import InvalidArgumentError, MissingFilesError
from nucdata.testing.crchisto import generate
from nucdata_models import TrainConfig
from nucdata_models.data import AMBIGUOUS, ANNOTATED, MAPPED
from nucdata_models.merge import TEST
from nucdata_models.study import (
    ARMS,
    DERIVED_SETS,
    FAMILY,
    FINE_SET,
    arm_plan,
    derived_table,
    partition,
    prepare_real_world,
)
from nucdata_models.train import CrossTrainer

ROOT = Path(__file__).resolve().parents[1]
#: the keys of the method study's results.json (benchmarks/method_study.py)
METHOD_KEYS = {"config", "arms", "differences", "views", "family", "bootstrap", "oracle_check", "runs"}
TOP = "CRCHistoPhenotypes_2016_04_28"


@pytest.fixture(scope="module")
def crchisto_copy(tmp_path_factory) -> Path:
    """A CRCHisto folder in the official layout: 12 demo images, img1 and img5 removed (10 left)."""
    root = tmp_path_factory.mktemp("crchisto")
    archive = generate(root, np.random.default_rng(3), scale=2)
    with zipfile.ZipFile(archive.files[0]) as z:
        z.extractall(root / "copy")
    for n in (1, 5):
        for sub in ("Detection", "Classification"):
            shutil.rmtree(root / "copy" / TOP / sub / f"img{n}")
    return root / "copy"


@pytest.fixture(scope="module")
def world(crchisto_copy):
    return prepare_real_world(crchisto_copy, 1, 16, n_groups=6, say=lambda _m: None)


def _script():
    spec = importlib.util.spec_from_file_location("real_study", ROOT / "benchmarks" / "real_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- tables and partition ---------------------------------------------------------------------
def test_the_derived_tables_are_exact_where_a_coarse_class_holds_one_fine_class():
    rows = {r["class"]: r for r in derived_table("crc-epithelial", FINE_SET)}
    assert rows[0] == {"source": "crc-epithelial", "class": 0, "target": FINE_SET, "candidates": [0], "kind": "exact"}
    assert rows[1]["candidates"] == [1, 2, 3] and rows[1]["kind"] == "ambiguous"
    other = {r["class"]: r for r in derived_table("crc-inflammatory", "crc-epithelial")}
    assert other[0]["candidates"] == [1] and other[0]["kind"] == "exact"  # inflammatory is not epithelial
    assert other[1]["candidates"] == [0, 1] and other[1]["kind"] == "ambiguous"
    fine = derived_table(FINE_SET, "crc-three")  # every fine class falls into one class: all exact
    assert [r["candidates"] for r in fine] == [[0], [1], [2], [2]] and {r["kind"] for r in fine} == {"exact"}
    for name, d in DERIVED_SETS.items():
        assert sorted(set(d.of_fine)) == list(range(len(d.classes))), name


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_partition_holds_out_whole_groups_of_the_coarse_datasets(seed):
    sizes = [2, 8, 2, 4, 6, 11, 5, 4, 10, 8]
    groups = np.repeat(np.arange(10), sizes)
    role, split = partition(groups, ["fine", "epithelial", "inflammatory"], seed, test=0.4, validation=0.1)
    for g in range(10):
        held = split[groups == g] == TEST
        assert held.all() or not held.any(), "a group is split between held-out and training images"
        assert len(set(role[groups == g].tolist())) == 1
    assert set(role[split == TEST].tolist()) == {1, 2}  # held out: the coarse datasets only, each at least once
    assert (split == TEST).mean() >= 0.4
    for d in range(3):
        assert ((role == d) & (split == 0)).any(), f"dataset {d} has no training image"
    assert not np.isin(groups[split == 1], groups[split == TEST]).any()


def test_partition_and_world_refuse_what_cannot_be_split(tmp_path, crchisto_copy):
    with pytest.raises(InvalidArgumentError, match="too few"):
        partition(np.arange(4), ["fine", "epithelial", "inflammatory"], 1)
    with pytest.raises(MissingFilesError, match="no such folder"):
        prepare_real_world(tmp_path / "absent", 1)
    with pytest.raises(InvalidArgumentError, match="coarse sets"):
        prepare_real_world(crchisto_copy, 1, coarse=["crc-nonsense"])


# -- the world ----------------------------------------------------------------------------------
def test_the_world_hides_the_real_classes_behind_the_coarse_sets(world):
    data = world.data
    assert data.names == [FINE_SET, "crc-epithelial", "crc-inflammatory"]
    assert data.dataset_names == ["crchisto-fine", "crchisto-epithelial", "crchisto-inflammatory"]
    fine = torch.from_numpy(world.fine)
    classified = fine >= 0
    assert torch.equal(data.truth[FINE_SET][classified], fine[classified])
    assert (data.truth[FINE_SET][~classified] == -3).all()
    prov, cand = data.provenance[FINE_SET], data.candidates[FINE_SET]
    epi = (data.dataset_index == 1) & classified
    assert (prov[data.dataset_index == 0][classified[data.dataset_index == 0]] == ANNOTATED).all()
    assert ((prov[epi] == MAPPED) == (fine[epi] == 0)).all()  # epithelial: an exact row
    assert ((prov[epi] == AMBIGUOUS) == (fine[epi] > 0)).all()  # non-epithelial: {inflammatory, fibroblast, misc}
    assert (cand[epi & (fine > 0)] == 0b1110).all()
    assert (data.labels[FINE_SET][epi & (fine > 0)] == -1).all()
    assert (data.provenance["crc-epithelial"][epi] == ANNOTATED).all()


def test_held_out_groups_are_scored_and_never_trained_on(world):
    data = world.data
    split = data.split.numpy()
    cluster, n_clusters = world.clusters
    test = split == TEST
    assert test.any() and (cluster[test] >= 0).all() and (cluster[~test] == -1).all()
    assert n_clusters == world.design["held_out_groups"] == np.unique(cluster[test]).size
    assert (world.fine[test] >= 0).all()  # held-out nuclei without a class are never scored: left out
    assert set(data.dataset_index[torch.from_numpy(test)].tolist()) <= {1, 2}
    images = world.design["images"]
    held = {im["group"] for im in images if im["split"] == "test"}
    trained = {im["group"] for im in images if im["split"] != "test"}
    assert held and trained and not held & trained
    assert sorted(im["name"] for im in images) == sorted(f"img{n}" for n in range(1, 13) if n not in (1, 5))
    # Training never reads a held-out crop: replace them with noise, train again, same model.
    noisy = data.crops.clone()
    noisy[torch.from_numpy(test)] = torch.randint(0, 256, noisy[torch.from_numpy(test)].shape, dtype=torch.uint8)
    plan = arm_plan("nucdata", TrainConfig.recipe("nucdata", encoder="small", epochs={"A": 1, "B": 1, "C": 1},
                                                  batch_size=16, device="cpu", seed=3, score_truth=False))
    seen = torch.from_numpy(~test)
    predictions = []
    for crops in (data.crops, noisy):
        trainer = CrossTrainer(plan.config)
        trainer.fit(dataclasses.replace(data, crops=crops))
        predictions.append(trainer.predict(data.crops[seen])[FINE_SET].probs)
    assert torch.equal(predictions[0], predictions[1])


# -- the harness, end to end --------------------------------------------------------------------
def test_the_script_writes_the_method_studys_schema_with_every_arm(tmp_path, crchisto_copy):
    out = tmp_path / "out"
    results = _script().main(["--quick", "--data", str(crchisto_copy), "--out", str(out), "--groups", "6",
                              "--crop", "16", "--epochs", "1", "1", "1", "--batch-size", "16", "--bootstrap", "50",
                              "--train-seeds", "1", "--transfer-epochs", "1", "--no-label-free"])
    written = json.loads((out / "results.json").read_text())
    assert set(written) >= METHOD_KEYS and written["config"]["label_sets"] == [FINE_SET, "crc-epithelial",
                                                                             "crc-inflammatory"]
    assert list(written["arms"]) == list(ARMS)
    for view in ("published", "model", "merged"):
        assert list(written["views"][view]) == list(ARMS)
    for arm in ARMS:
        for s in written["config"]["label_sets"]:
            entry = written["arms"][arm][s]["macro_f1"]
            assert len(entry["ci"]) == 2 and len(entry["per_seed"]) == 1
    assert list(written["differences"]) == [f"{a} - {r}" for a, r in FAMILY]
    for rows in written["differences"].values():
        for row in rows.values():
            assert {"mean", "ci", "p", "p_holm", "p_tost", "p_tost_holm", "verdict"} <= set(row)
    assert written["family"]["tests"] == len(FAMILY) * 3
    assert written["oracle_check"]["macro_f1"]["checked"]
    assert {r["arm"] for r in written["runs"]} == set(ARMS)
    # the candidate-set likelihood's transition estimate is kept per run, per set and source dataset
    estimate = next(r for r in written["runs"] if r["arm"] == "nucdata")["transition"]
    assert estimate and all(len(t["matrix"]) == len(t["rows"]) == len(t["counts"]) and t["columns"]
                            for per_source in estimate.values() for t in per_source.values())
    transfer = written["transfer"]
    assert {"random", "fine", "1 task", "2 tasks", "3 tasks"} <= set(transfer["encoders"])
    assert {"3 tasks - random", "3 tasks - fine", "3 tasks - 2 tasks"} <= set(transfer["differences"])
    design = written["config"]["worlds"]["1"]["design"]
    held = {im["group"] for im in design["images"] if im["split"] == "test"}
    assert held and not held & {im["group"] for im in design["images"] if im["split"] != "test"}
    markdown = (out / "results.md").read_text()
    assert "## Multitask encoder transfer" in markdown and "| oracle (merged) |" in markdown
    assert results["config"]["seconds"] > 0


# -- the real images, where present ---------------------------------------------------------------
def test_real_crchisto_world(realdata):
    folder = realdata / "crchisto"
    if not folder.is_dir():
        pytest.skip("../shared/realdata/crchisto is not present")
    present = sorted(p.name for p in folder.rglob("Detection/img*") if p.is_dir())
    world = prepare_real_world(folder, 1, 24, max_train=200, max_validation=50, say=lambda _m: None)
    store = world.design["store"]
    assert store["images"] == len(present) and store["classified"] == sum(store["per_class"].values())
    assert world.design["groups"] == min(10, len(present))
    images = world.design["images"]
    held = {im["group"] for im in images if im["split"] == "test"}
    assert not held & {im["group"] for im in images if im["split"] != "test"}
    test = world.data.split.numpy() == TEST
    assert (world.data.split.numpy() == 0).sum() == 200 and test.sum() > 0
    assert (world.fine[test] >= 0).all() and set(world.data.dataset_index[torch.from_numpy(test)].tolist()) <= {1, 2}
