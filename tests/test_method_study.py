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
from nucdata_models.data import ANNOTATED, NO_LABEL, OUTSIDE_LABEL
from nucdata_models.metrics import classification_metrics
from nucdata_models.study import (
    ARMS,
    REGISTRY,
    ArmPlan,
    PreparedWorld,
    RunScores,
    arm_plan,
    bootstrap_p,
    cluster_confusions,
    holm,
    macro_f1_from_confusion,
    oracle_check,
    oracle_data,
    percentile_ci,
    render_arm_table,
    resample_weights,
    score_views,
    summarise,
)
from nucdata_models.study import arm as register_arm
from nucdata_models.study.synthetic import make_synthetic_data
from nucdata_models.train import Prediction

ROOT = Path(__file__).resolve().parents[1]


# -- statistics on known inputs -----------------------------------------------------------
def test_holm_matches_hand_computation():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.4]) == pytest.approx([0.8, 0.8])  # 0.4*2 = 0.8, then max(0.8, 0.5*1)
    assert holm([0.9, 0.01]) == pytest.approx([0.9, 0.02])
    assert holm([0.6, 0.7, 0.8, 0.9]) == pytest.approx([1.0, 1.0, 1.0, 1.0])  # capped at 1
    out = holm([0.01, float("nan"), 0.02])  # NaN is not counted in m
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)


def test_bootstrap_p_and_percentile_ci_on_known_replicates():
    assert bootstrap_p(np.full(999, 0.3)) == pytest.approx(2 / 1000)  # never below 0 in 999 draws
    assert bootstrap_p(np.zeros(50)) == 1.0
    assert bootstrap_p(np.linspace(-1, 1, 1001)) == 1.0
    assert percentile_ci(np.full(10, 0.25)) == [0.25, 0.25]
    assert percentile_ci(np.arange(101.0)) == pytest.approx([2.5, 97.5])
    assert all(math.isnan(v) for v in percentile_ci(np.array([np.nan])))


def test_macro_f1_from_confusion_is_classification_metrics_definition():
    rng = np.random.default_rng(0)
    truth, guess = rng.integers(0, 5, 300), rng.integers(0, 4, 300)  # class 4 never predicted
    cm = cluster_confusions(truth, guess, np.zeros(300, np.int64), 1, 6).sum(0)  # class 5 absent
    assert float(macro_f1_from_confusion(cm)) == pytest.approx(classification_metrics(truth, guess, 6)["macro_f1"])
    assert math.isnan(float(macro_f1_from_confusion(np.zeros((3, 3)))))


def test_an_outside_prediction_is_a_miss_not_a_class_of_its_own():
    # two classes plus the outside column (2): class 0 all right (4), class 1: 3 right, 1 predicted outside
    truth = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    guess = np.array([0, 0, 0, 0, 1, 1, 1, 2])
    cm = cluster_confusions(truth, guess, np.zeros(8, np.int64), 1, 3).sum(0)
    f1 = [1.0, 2 * 3 / (2 * 3 + 0 + 1)]  # class 1: TP 3, FP 0, FN 1
    assert float(macro_f1_from_confusion(cm, 2)) == pytest.approx(np.mean(f1))
    # averaged in as a third class, its F1 of 0 would cut the score by a third
    assert float(macro_f1_from_confusion(cm)) == pytest.approx(sum(f1) / 3)
    run = RunScores("oracle", 1, 1, {v: {"s": cm[None]} for v in ("published", "model", "merged")})
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
    cluster = np.repeat(np.arange(clusters), per)
    cm = cluster_confusions(truth, guess, cluster, clusters, 3)
    return RunScores(arm, world, 1, {v: {"s": cm} for v in ("published", "model", "merged")})


def test_the_interval_of_a_constant_difference_is_that_constant():
    # accuracy 0.8 against 0.6 in every image: every resample differs by exactly 0.2
    runs = [_run("own-only", w, 6) for w in (1, 2)] + [_run("nucdata", w, 8) for w in (1, 2)]
    out = summarise(runs, {1: 12, 2: 12}, ["s"], draws=400, references=["own-only"], endpoint="accuracy")
    diff = out["differences"]["nucdata - own-only"]["s"]
    assert diff["mean"] == pytest.approx(0.2)
    assert diff["ci"] == pytest.approx([0.2, 0.2])
    assert diff["p"] == pytest.approx(2 / 401) and diff["p_holm"] == pytest.approx(2 / 401)
    assert out["arms"]["nucdata"]["s"]["accuracy"]["ci"] == pytest.approx([0.8, 0.8])
    assert out["arms"]["nucdata"]["s"]["accuracy"]["per_seed"] == pytest.approx([0.8, 0.8])
    # an arm against an identical one: difference 0, interval [0, 0], p = 1
    same = summarise([_run("own-only", 1, 7), _run("paper", 1, 7)], {1: 12}, ["s"], draws=100)
    row = same["differences"]["paper - own-only"]["s"]
    assert row["mean"] == 0 and row["ci"] == [0.0, 0.0] and row["p_holm"] == 1.0


def test_summarise_refuses_unpaired_runs():
    runs = [_run("own-only", 1, 6), _run("nucdata", 2, 8)]
    with pytest.raises(ValueError, match="same worlds and seeds"):
        summarise(runs, {1: 12, 2: 12}, ["s"], draws=10)


# -- arms --------------------------------------------------------------------------------
def test_every_arm_gets_equal_optimisation_steps_and_says_what_it_publishes():
    base = TrainConfig(epochs={"A": 4, "B": 2, "C": 3}, device="cpu", batch_size=32, seed=5)
    for arm in ARMS:
        plan = arm_plan(arm, base)
        assert sum(plan.config.epochs.values()) == 9, arm
        assert plan.config.encoder == base.encoder and plan.config.batch_size == 32 and plan.config.seed == 5
        assert plan.publish == ("model" if arm in ("own-only", "paper-a", "paper") else "merged"), arm
    assert arm_plan("own-only", base).config.mapped_labels == "none"
    assert arm_plan("paper", base).config.input_size is None
    assert arm_plan("paper", base).config.mask_channel is False
    assert arm_plan("self-training", base).config.epochs == {"A": 6, "B": 0, "C": 3}
    assert arm_plan("no-c", base).config.epochs == {"A": 7, "B": 2, "C": 0}
    assert arm_plan("nucdata-t0.9", base).config.threshold == 0.9
    assert arm_plan("nucdata-t0.99", base).key() == arm_plan("nucdata", base).key()  # trained once
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


def _other_value(value):
    if isinstance(value, bool):
        return not value
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
        changed = base.replace(**{name: _other_value(getattr(base, name))})
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


def test_scoring_takes_held_out_unannotated_nuclei_and_a_perfect_model_scores_one():
    data = make_synthetic_data(per_dataset=40, size=16, seed=4)
    data.split = torch.arange(len(data)) % 3  # every third nucleus held out (split 2)
    image = np.arange(len(data)) // 4

    class Perfect:
        def predict(self, crops, modules="both"):
            out = {}
            for spec in data.label_sets:
                truth = data.truth[spec.name].clamp_min(0)
                probs = torch.nn.functional.one_hot(truth, spec.size + 1).float()
                out[spec.name] = Prediction(truth, torch.ones(len(truth)), probs)
            return out

    world = PreparedWorld(0, "easy", data, image, int(image.max()) + 1, {}, {}, [])
    views = score_views(arm_plan("own-only", TrainConfig(device="cpu")), Perfect(), world)
    for spec in data.label_sets:
        s = spec.name
        expected = ((data.provenance[s] != ANNOTATED) & (data.truth[s] >= 0) & (data.split == 2)).sum()
        cm = views["model"][s].sum(0)
        assert cm.sum() == int(expected) > 0
        assert float(macro_f1_from_confusion(cm, spec.size)) == 1.0
        assert (views["published"][s] == views["model"][s]).all()  # own-only publishes its prediction


# -- the harness ---------------------------------------------------------------------------
def test_harness_writes_the_schema_on_a_tiny_world(tmp_path):
    spec = importlib.util.spec_from_file_location("method_study", ROOT / "benchmarks" / "method_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "study"
    results = module.main(["--world", "easy", "--world-seeds", "1", "--train-seeds", "1", "--arms", "own-only",
                           "nucdata", "--out", str(out), "--datasets", "pannuke", "consep", "--scale", "1",
                           "--crop", "16", "--epochs", "1", "0", "1", "--batch-size", "16", "--bootstrap", "50", "--threads", "1"])
    assert (out / "results.json").is_file() and (out / "results.md").is_file()
    assert {"config", "arms", "differences"} <= set(results)
    sets = results["config"]["label_sets"]
    assert set(results["arms"]) == {"own-only", "nucdata"}
    for arm in ("own-only", "nucdata"):
        for s in sets:
            for metric in ("macro_f1", "accuracy"):
                entry = results["arms"][arm][s][metric]
                assert set(entry) == {"mean", "ci", "per_seed"} and len(entry["ci"]) == 2
                assert len(entry["per_seed"]) == 1
    assert set(results["differences"]) == {"nucdata - own-only"}
    assert set(results["differences"]["nucdata - own-only"][sets[0]]) >= {"mean", "ci", "p_holm"}
    assert results["config"]["epochs"]["own-only"] == {"A": 2, "B": 0, "C": 0}
    assert "| nucdata (merged) |" in (out / "results.md").read_text()
    assert results["oracle_check"]["macro_f1"] == {"metric": "macro_f1", "checked": False, "violations": []}


def test_oracle_check_flags_an_arm_above_the_oracle_interval():
    runs = [_run("oracle", 1, 8), _run("own-only", 1, 9), _run("paper", 1, 7)]
    summary = summarise(runs, {1: 12}, ["s"], draws=50)
    check = oracle_check(summary)
    assert check["checked"] and {v["arm"] for v in check["violations"]} == {"own-only"}
    assert {v["view"] for v in check["violations"]} == {"published", "model", "merged"}
