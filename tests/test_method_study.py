"""The method study: its statistics on known inputs, its arms, and the harness on a tiny world."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nucdata_models import TrainConfig
from nucdata_models.config import PAPER_KEYS
from nucdata_models.data import AMBIGUOUS, ANNOTATED, NO_LABEL, OUTSIDE_LABEL
from nucdata_models.merge import TEST
from nucdata_models.metrics import classification_metrics
from nucdata_models.study import (
    ARMS,
    ENDPOINT,
    FAMILY,
    METRIC_SPECS,
    N_PROVENANCE,
    REGISTRY,
    ArmPlan,
    PreparedWorld,
    RunScores,
    arm_plan,
    cluster_confusions,
    macro_f1_from_confusion,
    oracle_check,
    oracle_data,
    prepare_world,
    render_arm_table,
    resample_weights,
    score_views,
    summarise,
)
from nucdata_models.study import arm as register_arm
from nucdata_models.study.synthetic import make_synthetic_data
from nucdata_models.train import Prediction

ROOT = Path(__file__).resolve().parents[1]


# -- statistics on known inputs (the bootstrap itself: tests/models/test_study_stats.py) -----
def test_macro_f1_from_confusion_is_classification_metrics_definition():
    rng = np.random.default_rng(0)
    truth, guess = rng.integers(0, 5, 300), rng.integers(0, 4, 300)  # class 4 never predicted
    cm = cluster_confusions(truth, guess, np.zeros(300, np.int64), 1, 6).sum(0)  # class 5 absent
    assert float(macro_f1_from_confusion(cm)) == pytest.approx(classification_metrics(truth, guess, 6)["macro_f1"])
    assert math.isnan(float(macro_f1_from_confusion(np.zeros((3, 3)))))


def _tally(truth: np.ndarray, guess: np.ndarray, group: np.ndarray, groups: int, size: int,
           provenance: int = NO_LABEL) -> np.ndarray:
    """``(G, P, K + 1, K + 1)`` tally of nuclei of one provenance."""
    return cluster_confusions(truth, guess, group * N_PROVENANCE + provenance, groups * N_PROVENANCE,
                              size + 1).reshape(groups, N_PROVENANCE, size + 1, size + 1)


def _scores(arm: str, world: int, tally: np.ndarray, seed: int = 1) -> RunScores:
    return RunScores(arm, world, seed, {v: {"s": tally} for v in ("published", "model", "merged")})


def test_an_outside_prediction_is_a_miss_not_a_class_of_its_own():
    # two classes plus the outside column (2): class 0 all right (4), class 1: 3 right, 1 predicted outside
    truth = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    guess = np.array([0, 0, 0, 0, 1, 1, 1, 2])
    cm = cluster_confusions(truth, guess, np.zeros(8, np.int64), 1, 3).sum(0)
    f1 = [1.0, 2 * 3 / (2 * 3 + 0 + 1)]  # class 1: TP 3, FP 0, FN 1
    assert float(macro_f1_from_confusion(cm, 2)) == pytest.approx(np.mean(f1))
    # averaged in as a third class, its F1 of 0 would cut the score by a third
    assert float(macro_f1_from_confusion(cm)) == pytest.approx(sum(f1) / 3)
    run = _scores("oracle", 1, _tally(truth, guess, np.zeros(8, np.int64), 1, 2, AMBIGUOUS))
    assert summarise([run], {1: 1}, ["s"], draws=5)["arms"]["oracle"]["s"]["macro_f1"]["mean"] == pytest.approx(
        np.mean(f1))


def test_clustered_resampling_keeps_clusters_whole():
    rng = np.random.default_rng(1)
    n, clusters = 200, 17
    truth, guess = rng.integers(0, 3, n), rng.integers(0, 3, n)
    cluster = rng.integers(0, clusters, n)
    per_cluster = cluster_confusions(truth, guess, cluster, clusters, 3)
    weights = resample_weights(clusters, 30, rng)
    assert weights.shape == (30, clusters) and (weights.sum(1) == clusters).all() and weights.dtype.kind == "i"
    for w in weights[:5]:
        # the sample that holds each drawn cluster as many times as drawn, every nucleus of it
        rows = np.concatenate([np.flatnonzero(cluster == c) for c in range(clusters) for _ in range(w[c])])
        expected = cluster_confusions(truth[rows], guess[rows], np.zeros(rows.size, np.int64), 1, 3)[0]
        assert (np.einsum("c,ckl->kl", w, per_cluster) == expected).all()


def _run(arm: str, world: int, correct: int, clusters: int = 12, per: int = 10) -> RunScores:
    """A run whose every cluster holds ``per`` nuclei of which ``correct`` are right (two classes)."""
    truth = np.tile(np.arange(per) % 2, clusters)
    guess = truth.copy()
    wrong = np.tile(np.arange(per) >= correct, clusters)
    guess[wrong] = 1 - guess[wrong]
    return _scores(arm, world, _tally(truth, guess, np.repeat(np.arange(clusters), per), clusters, 2))


def test_the_interval_of_a_constant_difference_is_that_constant():
    # accuracy 0.8 against 0.6 in every image: every resample differs by exactly 0.2
    runs = [_run("own-only", w, 6) for w in (1, 2)] + [_run("nucdata", w, 8) for w in (1, 2)]
    out = summarise(runs, {1: 12, 2: 12}, ["s"], draws=400, family=[("nucdata", "own-only")], endpoint="accuracy")
    diff = out["differences"]["nucdata - own-only"]["s"]
    assert diff["mean"] == pytest.approx(0.2)
    assert diff["ci"] == pytest.approx([0.2, 0.2])
    assert diff["p"] == pytest.approx(2 / 401) and diff["p_holm"] == pytest.approx(2 / 401)
    assert diff["p_tost"] == 1.0 and diff["verdict"] == "gain"
    assert out["arms"]["nucdata"]["s"]["accuracy"]["ci"] == pytest.approx([0.8, 0.8])
    assert out["arms"]["nucdata"]["s"]["accuracy"]["per_seed"] == pytest.approx([0.8, 0.8])
    # an arm against an identical one: difference 0, interval [0, 0], p = 1, equivalent
    same = summarise([_run("own-only", 1, 7), _run("nucdata", 1, 7)], {1: 12}, ["s"], draws=100)
    row = same["differences"]["nucdata - own-only"]["s"]
    assert row["mean"] == 0 and row["ci"] == [0.0, 0.0] and row["p_holm"] == 1.0
    assert row["p_tost"] == pytest.approx(1 / 101) and row["verdict"] == "equivalent"


# -- arms --------------------------------------------------------------------------------
def test_every_arm_gets_equal_optimisation_steps_and_says_what_it_publishes():
    base = TrainConfig(epochs={"A": 4, "B": 2, "C": 3}, device="cpu", batch_size=32, seed=5)
    for arm in ARMS:
        plan = arm_plan(arm, base)
        assert sum(plan.config.epochs.values()) == 9, arm
        assert plan.config.encoder == base.encoder and plan.config.batch_size == 32 and plan.config.seed == 5
        assert plan.publish == ("model" if arm in ("own-only", "paper-a", "paper") else "merged"), arm
    assert arm_plan("own-only", base).config.mapped_labels == "none"
    # tables-only: the own-only model (trained once for both), published through the tables
    assert arm_plan("tables-only", base).key() == arm_plan("own-only", base).key()
    assert arm_plan("tables-only", base).modules == "base"
    assert arm_plan("paper", base).config.input_size is None
    assert arm_plan("paper", base).config.mask_channel is False
    assert arm_plan("self-training", base).config.epochs == {"A": 6, "B": 0, "C": 3}
    assert arm_plan("no-c", base).config.epochs == {"A": 7, "B": 2, "C": 0}
    assert arm_plan("nucdata-t0.9", base).config.threshold == 0.9
    # the default pass rule is the quantile one, so the threshold arms are models of their own ...
    assert arm_plan("nucdata-t0.99", base).key() != arm_plan("nucdata", base).key()
    # ... unless the base already uses the threshold rule at that value: then it is trained once
    thresholded = base.replace(pseudo_select="threshold", threshold=0.99)
    assert arm_plan("nucdata-t0.99", thresholded).key() == arm_plan("nucdata", thresholded).key()
    assert arm_plan("oracle", base).key() != arm_plan("nucdata", base).key()
    with pytest.raises(ValueError, match="unknown arm"):
        arm_plan("best", base)


def test_every_arm_is_a_documented_registered_function():
    assert list(ARMS) == list(REGISTRY)
    for name, entry in REGISTRY.items():
        assert entry.description and entry.description == ARMS[name], name
        assert "{" not in entry.description, name  # parameters filled in
    assert [n for n in REGISTRY if REGISTRY[n].family == "nucdata-t{threshold}"] == [
        "nucdata-t0.9", "nucdata-t0.95", "nucdata-t0.99"]


def test_the_docs_arm_table_is_generated_from_the_docstrings():
    doc = (ROOT / "docs" / "method-study.md").read_text(encoding="utf-8")
    assert render_arm_table() in doc, "regenerate the arm table in docs/method-study.md (render_arm_table())"


def _other_value(value, name: str = ""):
    from nucdata_models.config import SETTINGS

    choices = SETTINGS[name].choices if name in SETTINGS else None
    if choices:
        return next(c for c in choices if c != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, float) and 0 < value <= 1:  # shares and probabilities stay in range
        return value / 2
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, dict):
        return {k: v * 2 for k, v in value.items()}
    return "cpu" if value == "auto" else "weights.pt"


def test_paper_arms_inherit_every_field_the_paper_does_not_fix():
    base = TrainConfig(epochs={"A": 4, "B": 2, "C": 3}, device="cpu")
    inherited = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in PAPER_KEYS]
    assert {"batch_size", "lr", "hidden", "seed", "device", "augment"} <= set(inherited)
    for name in inherited:
        changed = base.replace(**{name: _other_value(getattr(base, name), name)})
        for arm_name in ("paper-a", "paper"):
            assert getattr(arm_plan(arm_name, changed).config, name) == getattr(changed, name), (arm_name, name)
    paper = arm_plan("paper", base).config
    assert all(getattr(paper, k) == getattr(TrainConfig.recipe("paper"), k)
               for k in PAPER_KEYS if k not in ("encoder", "input_size", "epochs"))


def test_a_new_arm_is_one_decorated_function_and_the_budget_rule_holds():
    @register_arm("test-{n}-epochs-more", n=(1,))
    def more(base: TrainConfig, n: int) -> ArmPlan:
        """The nucdata recipe with {n} epoch more in stage C."""
        return ArmPlan(base.replace(epochs={**base.epochs, "C": base.epochs["C"] + n}))

    try:
        assert ARMS["test-1-epochs-more"] == "The nucdata recipe with 1 epoch more in stage C."
        with pytest.raises(ValueError, match="runs 10 epochs in all, but every arm runs E = A \\+ B \\+ C = 9"):
            arm_plan("test-1-epochs-more", TrainConfig(epochs={"A": 4, "B": 2, "C": 3}))
        with pytest.raises(ValueError, match="registered twice"):
            register_arm("test-{n}-epochs-more", n=(1,))(more)
    finally:
        REGISTRY.pop("test-1-epochs-more", None)
        ARMS.pop("test-1-epochs-more", None)


def test_oracle_data_labels_every_nucleus_by_its_truth():
    data = make_synthetic_data(per_dataset=30, size=16, seed=2)
    data.truth["pannuke"][:3] = torch.tensor([-2, -3, 1])
    oracle = oracle_data(data)
    for spec in data.label_sets:
        truth, prov = data.truth[spec.name], oracle.provenance[spec.name]
        assert ((prov == ANNOTATED) == (truth >= 0)).all()
        assert (oracle.labels[spec.name][truth >= 0] == truth[truth >= 0]).all()
        assert ((prov == OUTSIDE_LABEL) == (truth == -2)).all()
    assert oracle.provenance["pannuke"][1] == NO_LABEL and oracle.labels["pannuke"][1] == -1
    assert oracle.candidates["pannuke"][0] == 1 << data.label_sets[0].size
    assert oracle.split is data.split and oracle.crops is data.crops


class _Perfect:
    """A model that predicts every nucleus's truth (outside: its outside output) with probability 1."""

    def __init__(self, data):
        self.data = data

    def predict(self, crops, modules="both"):
        out = {}
        for spec in self.data.label_sets:
            truth = self.data.truth[spec.name]
            column = torch.where(truth == -2, torch.full_like(truth, spec.size), truth.clamp_min(0))
            probs = torch.nn.functional.one_hot(column, spec.size + 1).float()
            out[spec.name] = Prediction(torch.where(truth == -2, truth, column), torch.ones(len(truth)), probs)
        return out

    def candidate_weights(self, data):
        """No transition estimate (as a trainer with the uniform candidate likelihood)."""
        return {}


def test_scoring_takes_held_out_unannotated_nuclei_and_a_perfect_model_scores_one():
    data = make_synthetic_data(per_dataset=40, size=16, seed=4)
    data.split = torch.arange(len(data)) % 3  # every third nucleus held out (split 2)
    image = np.arange(len(data)) // 4
    group = image // 3  # three images a group

    world = PreparedWorld(0, "easy", data, image, int(image.max()) + 1, {}, {}, [], 0.0, group, int(group.max()) + 1)
    assert world.clusters[1] == int(group.max()) + 1
    run = score_views(arm_plan("own-only", TrainConfig(device="cpu")), _Perfect(data), world)
    views, calibration = run.confusions, run.calibration
    assert run.arm == "own-only" and run.temperatures["method"] == "temperature"
    for spec in data.label_sets:
        s = spec.name
        tally = views["model"][s]
        assert tally.shape == (world.n_groups, N_PROVENANCE, spec.size + 1, spec.size + 1)
        held = (data.provenance[s] != ANNOTATED) & (data.split == 2)
        assert tally.sum() == int((held & (data.truth[s] >= -2)).sum()) > 0
        for code in range(N_PROVENANCE):
            assert tally[:, code].sum() == int((held & (data.truth[s] >= -2) & (data.provenance[s] == code)).sum())
        endpoint = held & (data.truth[s] >= 0) & ((data.provenance[s] == NO_LABEL) | (data.provenance[s] == AMBIGUOUS))
        summed = tally.sum(0)
        assert (summed[NO_LABEL] + summed[AMBIGUOUS])[:-1].sum() == int(endpoint.sum())
        if endpoint.any():
            # every class of the set counts: the perfect model scores the share of classes present
            present = np.unique(data.truth[s][endpoint].numpy()).size
            assert float(ENDPOINT(summed)) == pytest.approx(present / spec.size)
        assert float(METRIC_SPECS["accuracy"](summed)) == 1.0 or not endpoint.any()
        assert float(METRIC_SPECS["ece"](calibration[s].sum(0))) == pytest.approx(0.0)
        assert (views["published"][s] == views["model"][s]).all()  # own-only publishes its prediction
    # tables-only: the same model, published through the tables (exact rows decide)
    tables = score_views(arm_plan("tables-only", TrainConfig(device="cpu")), _Perfect(data), world).confusions
    assert all((tables["published"][s] == tables["merged"][s]).all() for s in data.names)


def test_a_prepared_world_clusters_held_out_nuclei_by_the_split_s_groups():
    world = prepare_world(3, "hard", 1.0, 16, 0.1, 0.3, ["pannuke", "nucls", "monusac"], say=lambda _m: None,
                          bayes_samples=100)
    cluster, n = world.clusters
    held = (world.data.split == TEST).numpy()
    assert n == world.n_groups > 0 and (cluster[~held] == -1).all()
    assert cluster[held].min() == 0 and cluster[held].max() == n - 1 and np.unique(cluster[held]).size == n
    # a group holds whole images, and NuCLS and MoNuSAC group by hospital and patient, not image
    for image in np.unique(world.image[held]):
        assert np.unique(cluster[held & (world.image == image)]).size == 1
    assert world.group_keys["nucls"] == "hospital" and world.group_keys["pannuke"] == "image"
    assert n < np.unique(world.image[held]).size


# -- the harness ---------------------------------------------------------------------------
def test_harness_writes_the_schema_on_a_tiny_world(tmp_path):
    spec = importlib.util.spec_from_file_location("method_study", ROOT / "benchmarks" / "method_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "study"
    results = module.main(["--world", "easy", "--world-seeds", "1", "--train-seeds", "1", "--arms", "own-only",
                           "tables-only", "nucdata", "--out", str(out), "--datasets", "pannuke", "consep", "--scale", "1",
                           "--crop", "16", "--epochs", "1", "0", "1", "--batch-size", "16", "--bootstrap", "50", "--threads", "1"])
    assert (out / "results.json").is_file() and (out / "results.md").is_file()
    assert {"config", "arms", "differences", "family", "bootstrap"} <= set(results)
    sets = results["config"]["label_sets"]
    assert set(results["arms"]) == {"own-only", "tables-only", "nucdata"}
    for arm in ("own-only", "tables-only", "nucdata"):
        for s in sets:
            entry = results["arms"][arm][s]
            for metric in ("macro_f1", "accuracy"):
                assert set(entry[metric]) == {"mean", "ci", "per_seed"} and len(entry[metric]["ci"]) == 2
                assert len(entry[metric]["per_seed"]) == 1
            assert set(entry["ambiguous"]) == {"accuracy", "count"} and isinstance(entry["ambiguous"]["count"], int)
            for name in ("ece", "ece_floor", "outside_rate_in_set", "outside_recall"):
                assert isinstance(entry[name], float), (arm, s, name)
            assert 0 < entry["ece_floor"] < 1  # what calibrated probabilities would score by chance
        assert isinstance(results["arms"][arm]["pseudo_labels"], list)
    assert all({"stage", "epoch", "label_set", "offered", "passed", "precision"} <= set(row)
               for row in results["arms"]["nucdata"]["pseudo_labels"])
    assert results["arms"]["nucdata"]["pseudo_labels"]  # one stage-C epoch: a row per set
    assert list(results["differences"]) == ["nucdata - own-only", "nucdata - tables-only"]
    assert set(results["differences"]["nucdata - own-only"][sets[0]]) >= {"mean", "ci", "p", "p_holm", "p_tost",
                                                                       "p_tost_holm", "verdict"}
    assert results["family"]["tests"] == 2 * len(sets)
    assert results["config"]["endpoint"] == ENDPOINT.describe()  # generated from the metric's own spec
    assert results["config"]["family"] == [f"{a} - {r}" for a, r in FAMILY]
    assert results["config"]["epochs"]["own-only"] == {"A": 2, "B": 0, "C": 0}
    text = (out / "results.md").read_text()
    assert "| nucdata (merged) |" in text and ENDPOINT.describe() in text and "Holm" in text
    # how much of the published probability was calibrated at all: per arm, the pairs by temperature used
    assert "## Calibration: which temperature each (dataset, label set) pair got" in text
    row = next(line for line in text.splitlines() if line.startswith("| nucdata | 1 |"))
    uses = results["runs"][[r["arm"] for r in results["runs"]].index("nucdata")]["calibration"]["uses"]
    assert sum(int(c) for c in row.strip("|").split("|")[2:]) == len(uses)
    assert results["oracle_check"]["macro_f1"] == {"metric": "macro_f1", "checked": False, "violations": []}


def test_oracle_check_flags_an_arm_above_the_oracle_interval():
    runs = [_run("oracle", 1, 8), _run("own-only", 1, 9), _run("paper", 1, 7)]
    summary = summarise(runs, {1: 12}, ["s"], draws=50)
    check = oracle_check(summary)
    assert check["checked"] and {v["arm"] for v in check["violations"]} == {"own-only"}
    assert {v["view"] for v in check["violations"]} == {"published", "model", "merged"}
