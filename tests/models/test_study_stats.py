"""The method study's statistics on known inputs: the hierarchical bootstrap, the endpoint, the tests.

Each test builds tallies whose answer is known (analytically, or by construction) and
checks the study's machinery against it: the bootstrap's intervals widen where training
seeds vary and reproduce the analytic interval where nothing but the images varies; a
paired difference is paired; the endpoint keeps its class list in every draw and counts
only the nuclei the tables do not decide; Holm runs over the whole declared family; and
the words of the write-up follow the numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from nucdata_models.data import AMBIGUOUS, MAPPED, NO_LABEL, OUTSIDE_LABEL
from nucdata_models.metrics import (
    calibration_tally,
    classification_metrics,
    expected_calibration_error,
    macro_f1_from_confusion,
)
from nucdata_models.study import (
    CALIBRATION_BINS,
    ENDPOINT,
    FAMILY,
    METRIC_SPECS,
    N_PROVENANCE,
    RunScores,
    bootstrap_p,
    cluster_confusions,
    family_sentences,
    hierarchical_resamples,
    holm,
    resampled_mean,
    summarise,
    tost_p,
    verdict,
)

Z = 1.959964  # the normal's 97.5 % quantile


def _tally(correct: np.ndarray, per: int = 10, classes: int = 2, provenance: int = NO_LABEL) -> np.ndarray:
    """``(G, P, K + 1, K + 1)`` tally: group g holds ``per`` nuclei, ``correct[g]`` of them right."""
    correct = np.asarray(correct, np.int64)
    groups = correct.size
    truth = np.tile(np.arange(per) % classes, groups)
    guess = truth.copy()
    wrong = np.arange(per)[None, :] >= correct[:, None]
    guess[wrong.ravel()] = (guess[wrong.ravel()] + 1) % classes
    cluster = np.repeat(np.arange(groups), per) * N_PROVENANCE + provenance
    return cluster_confusions(truth, guess, cluster, groups * N_PROVENANCE, classes + 1).reshape(
        groups, N_PROVENANCE, classes + 1, classes + 1)


def _run(arm: str, world: int, seed: int, tally: np.ndarray) -> RunScores:
    groups = tally.shape[0]
    return RunScores(arm, world, seed, {v: {"s": tally} for v in ("published", "model", "merged")},
                     {"s": np.zeros((groups, CALIBRATION_BINS, 3))})


ACCURACY = METRIC_SPECS["accuracy"]


# -- the hierarchical bootstrap --------------------------------------------------------------
def test_seeds_that_vary_widen_the_interval_against_an_images_only_bootstrap():
    # every group of a run is alike: only the training seed changes the score (0.5 vs 0.9)
    tallies = {(w, t): _tally(np.full(30, 5 if t == 1 else 9)) for w in (1, 2) for t in (1, 2)}
    design = {w: ((1, 2), 30) for w in (1, 2)}
    point, per_run, images_only = resampled_mean(tallies, ACCURACY, hierarchical_resamples(design, 2000, 3,
                                                                                          ("group",)))
    _, _, nested = resampled_mean(tallies, ACCURACY, hierarchical_resamples(design, 2000, 3))
    assert point == pytest.approx(0.7) and per_run[1, 1] == pytest.approx(0.5) and per_run[2, 2] == pytest.approx(0.9)
    lo, hi = np.percentile(images_only, [2.5, 97.5])
    assert hi - lo < 1e-9  # the images carry no variance here
    lo, hi = np.percentile(nested, [2.5, 97.5])
    assert lo <= 0.6 + 1e-9 and hi >= 0.8 - 1e-9  # two worlds, each drawing {5, 5}, {5, 9} or {9, 9}


def test_worlds_that_vary_widen_the_interval_too():
    tallies = {(w, 1): _tally(np.full(30, 4 if w == 1 else 8)) for w in (1, 2, 3)}
    design = {w: ((1,), 30) for w in (1, 2, 3)}
    fixed = resampled_mean(tallies, ACCURACY, hierarchical_resamples(design, 1000, 0, ("seed", "group")))[2]
    nested = resampled_mean(tallies, ACCURACY, hierarchical_resamples(design, 1000, 0))[2]
    assert np.ptp(fixed) < 1e-9 and np.percentile(nested, 97.5) - np.percentile(nested, 2.5) > 0.2


def test_a_fixed_effect_case_reproduces_the_analytic_interval():
    """Three worlds whose groups are permutations of one set of values, two identical seeds each.

    No world or seed effect, so the estimator's variance is the groups' alone: the mean of
    W independent means of G draws, ``s^2 / (G W)`` with the plug-in variance ``s^2``
    (the bootstrap's). The percentile interval must match ``mean +- z sd`` within Monte
    Carlo error, which also shows that a world drawn twice gets two independent
    resamples of its groups (one shared resample would give ``s^2 / G`` per world).
    """
    rng = np.random.default_rng(11)
    groups, worlds, draws = 400, 3, 4000
    correct = rng.integers(0, 11, groups)
    tallies = {}
    for w in range(worlds):
        tallies[w, 1] = tallies[w, 2] = _tally(rng.permutation(correct))  # seed 2 scores as seed 1
    design = {w: ((1, 2), groups) for w in range(worlds)}
    point, _, reps = resampled_mean(tallies, ACCURACY, hierarchical_resamples(design, draws, 5))
    values = correct / 10
    sd = math.sqrt(values.var() / (groups * worlds))
    assert point == pytest.approx(values.mean())
    lo, hi = np.percentile(reps, [2.5, 97.5])
    assert lo == pytest.approx(values.mean() - Z * sd, abs=0.15 * sd)
    assert hi == pytest.approx(values.mean() + Z * sd, abs=0.15 * sd)
    assert reps.std() == pytest.approx(sd, rel=0.06)


def test_resamples_nest_seeds_and_groups_in_each_drawn_world():
    design = {1: ((1, 2, 3), 7), 5: ((2,), 4)}
    res = hierarchical_resamples(design, 50, 0)
    assert res.worlds == (1, 5) and res.world_of.shape == (50, 2) and res.draws == 50
    assert set(np.unique(res.world_of)) <= {0, 1}
    assert res.seed_counts[1].shape == (50, 2, 3) and (res.seed_counts[1].sum(-1) == 3).all()
    assert res.group_weights[5].shape == (50, 2, 4) and (res.group_weights[5].sum(-1) == 4).all()
    # a level left out keeps every unit once
    flat = hierarchical_resamples(design, 10, 0, ("group",))
    assert (flat.world_of == [0, 1]).all() and (flat.seed_counts[1] == 1).all()
    with pytest.raises(ValueError, match="unknown bootstrap levels"):
        hierarchical_resamples(design, 10, 0, ("hospital",))


def test_a_paired_difference_is_paired():
    # groups differ a lot (wide marginal intervals), the arms differ by exactly 2 right per group
    rng = np.random.default_rng(2)
    correct = rng.integers(0, 8, 40)
    runs = [_run("own-only", w, 1, _tally(correct)) for w in (1, 2)]
    runs += [_run("nucdata", w, 1, _tally(correct + 2)) for w in (1, 2)]
    out = summarise(runs, {1: 40, 2: 40}, ["s"], draws=500, family=[("nucdata", "own-only")], endpoint="accuracy")
    arm = out["arms"]["nucdata"]["s"]["accuracy"]
    assert arm["ci"][1] - arm["ci"][0] > 0.05
    diff = out["differences"]["nucdata - own-only"]["s"]
    assert diff["mean"] == pytest.approx(0.2) and diff["ci"] == pytest.approx([0.2, 0.2])
    assert diff["p"] == pytest.approx(2 / 501) and diff["verdict"] == "gain"


# -- tests and their words ---------------------------------------------------------------------
def test_tost_on_known_replicates():
    assert tost_p(np.zeros(99)) == pytest.approx(1 / 100)  # all inside the margin
    assert tost_p(np.full(99, 0.05)) == 1.0  # all beyond +margin
    d = np.linspace(-0.03, 0.03, 1001)  # a third of the draws on each side beyond 0.02
    assert tost_p(d) == pytest.approx((1 + (d >= 0.02).sum()) / 1002)
    assert math.isnan(tost_p(np.array([np.nan])))
    assert bootstrap_p(np.full(999, 0.3)) == pytest.approx(2 / 1000)


def test_holm_matches_hand_computation():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.6, 0.7, 0.8, 0.9]) == pytest.approx([1.0, 1.0, 1.0, 1.0])
    out = holm([0.01, float("nan"), 0.02])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1])


def test_verdicts_follow_the_corrected_numbers():
    assert verdict({"mean": 0.1, "p_holm": 0.01, "p_tost_holm": 1.0}) == "gain"
    assert verdict({"mean": -0.1, "p_holm": 0.01, "p_tost_holm": 1.0}) == "loss"
    assert verdict({"mean": 0.001, "p_holm": 0.6, "p_tost_holm": 0.01}) == "equivalent"
    assert verdict({"mean": 0.001, "p_holm": 0.6, "p_tost_holm": 0.2}) == "inconclusive"
    assert verdict({"mean": 0.1, "p_holm": 0.06, "p_tost_holm": 1.0}) == "inconclusive"  # not significant after Holm


def test_holm_runs_over_the_whole_declared_family_and_every_set():
    rng = np.random.default_rng(4)
    sets = ["a", "b", "c"]
    arms = {"nucdata": 7, "no-c": 6, "own-only": 5, "tables-only": 7, "paper": 3}
    runs = []
    for arm, c in arms.items():
        for w in (1, 2):
            tally = _tally(np.clip(rng.integers(-1, 2, 30) + c, 0, 10))
            runs.append(RunScores(arm, w, 1, {v: dict.fromkeys(sets, tally) for v in ("published", "model", "merged")},
                                  {}))
    out = summarise(runs, {1: 30, 2: 30}, sets, draws=300)
    family = out["family"]
    tested = [f"{a} - {r}" for a, r in FAMILY if a in arms and r in arms]
    assert family["tested"] == tested == list(out["differences"]) and family["tests"] == len(tested) * len(sets)
    assert family["not_run"] == ["nucdata - nucdata-uniform"]
    raw = [out["differences"][n][s]["p"] for n in tested for s in sets]
    assert [out["differences"][n][s]["p_holm"] for n in tested for s in sets] == pytest.approx(holm(raw))
    raw = [out["differences"][n][s]["p_tost"] for n in tested for s in sets]
    assert [out["differences"][n][s]["p_tost_holm"] for n in tested for s in sets] == pytest.approx(holm(raw))
    sentences = family_sentences(out)
    assert len(sentences) == family["tests"]
    for sentence, (name, s) in zip(sentences, [(n, s) for n in tested for s in sets], strict=True):
        word = out["differences"][name][s]["verdict"]
        assert {"gain": "a gain", "loss": "a loss", "equivalent": "equivalent within",
                "inconclusive": "inconclusive"}[word] in sentence
        assert f"on {s}" in sentence


def test_summarise_refuses_unpaired_runs():
    runs = [_run("own-only", 1, 1, _tally(np.full(5, 5))), _run("nucdata", 2, 1, _tally(np.full(5, 5)))]
    with pytest.raises(ValueError, match="every \\(world seed, training seed\\)"):
        summarise(runs, {1: 5, 2: 5}, ["s"], draws=10)


# -- the endpoint -------------------------------------------------------------------------------
def test_the_endpoint_keeps_its_class_list_in_every_draw():
    # three classes; class 2 occurs in one group only, so some draws lack it
    truth = np.array([0, 1, 0, 1, 2, 0, 1])
    guess = np.array([0, 1, 1, 1, 2, 0, 0])
    group = np.array([0, 0, 1, 1, 2, 3, 3])
    cm = cluster_confusions(truth, guess, group * N_PROVENANCE + NO_LABEL, 4 * N_PROVENANCE, 4).reshape(
        4, N_PROVENANCE, 4, 4)
    full = cm.sum(0)[NO_LABEL]
    expected = np.mean([2 * 2 / (2 * 2 + 1 + 1), 2 * 2 / (2 * 2 + 1 + 1), 1.0])
    assert float(ENDPOINT(cm.sum(0))) == pytest.approx(expected)
    assert float(macro_f1_from_confusion(full, 3, fixed=True)) == pytest.approx(expected)
    # without group 2, class 2 has neither truth nor prediction: it still counts, as 0
    without = cm[[0, 1, 3]].sum(0)
    assert float(ENDPOINT(without)) == pytest.approx((2 * 2 / 6 + 2 * 2 / 6 + 0.0) / 3)
    assert float(macro_f1_from_confusion(without[NO_LABEL], 3)) == pytest.approx(2 / 3)  # the old rule: 2 classes
    # the class list is that of the set: a class absent everywhere divides too
    four = np.zeros((5, 5))
    four[:3, :3], four[:3, 4] = full[:3, :3], full[:3, 3]  # a fourth class, never seen nor predicted
    assert float(macro_f1_from_confusion(four, 4, fixed=True)) == pytest.approx(expected * 3 / 4)


def test_the_endpoint_counts_only_nuclei_the_tables_do_not_decide():
    k = 2
    tally = np.zeros((1, N_PROVENANCE, k + 1, k + 1))
    tally[0, NO_LABEL, 0, 0] = 3  # predicted, right
    tally[0, AMBIGUOUS, 1, 1] = 2  # ambiguous, resolved right
    tally[0, AMBIGUOUS, 1, k] = 2  # ambiguous, published outside: a miss of class 1
    tally[0, MAPPED, 0, 1] = 50  # exact rows, all wrong: not the endpoint's
    tally[0, OUTSIDE_LABEL, 0, k] = 40  # table says outside, truth in set: not the endpoint's
    tally[0, NO_LABEL, k, k] = 9  # truly outside: not the endpoint's
    summed = tally.sum(0)
    assert float(METRIC_SPECS["accuracy"](summed)) == pytest.approx(5 / 7)
    f1 = [2 * 3 / (2 * 3), 2 * 2 / (2 * 2 + 2)]
    assert float(ENDPOINT(summed)) == pytest.approx(np.mean(f1))
    assert float(METRIC_SPECS["exact_accuracy"](summed)) == 0.0
    assert float(METRIC_SPECS["ambiguous_accuracy"](summed)) == pytest.approx(2 / 4)
    assert float(METRIC_SPECS["outside_rate_in_set"](summed)) == pytest.approx((2 + 40) / (3 + 4 + 50 + 40))
    assert float(METRIC_SPECS["outside_recall"](summed)) == 1.0
    # the same selection as classification_metrics with the outside column as a miss
    truth = np.array([0, 0, 0, 1, 1, 1, 1])
    guess = np.array([0, 0, 0, 1, 1, 2, 2])
    assert classification_metrics(truth, guess, 3, set_classes=2)["accuracy"] == pytest.approx(5 / 7)


def test_the_endpoint_text_is_the_metric_s_own():
    text = ENDPOINT.describe()
    assert text.startswith(ENDPOINT.value) and ENDPOINT.nuclei in text
    assert "fixed class list" in text and "ambiguous" in text and "predicted" in text and "miss" in text
    assert ENDPOINT is METRIC_SPECS["macro_f1"]


def test_the_study_s_ece_is_the_one_of_metrics_on_summed_group_tallies():
    rng = np.random.default_rng(0)
    n = 500
    confidence = rng.uniform(0, 1, n)
    correct = rng.uniform(0, 1, n) < confidence ** 2
    cluster = rng.integers(0, 9, n)
    bins = calibration_tally(correct, confidence, CALIBRATION_BINS, cluster, 9)
    assert bins.shape == (9, CALIBRATION_BINS, 3) and bins[..., 0].sum() == n
    ece = float(METRIC_SPECS["ece"](bins.sum(0)))
    assert ece == pytest.approx(expected_calibration_error(correct, confidence, CALIBRATION_BINS))
    assert ece > 0.05  # over-confident by construction
    # a resample of groups is the tally of the resampled nuclei
    keep = np.isin(cluster, [0, 3])
    assert float(METRIC_SPECS["ece"](bins[[0, 3]].sum(0))) == pytest.approx(
        expected_calibration_error(correct[keep], confidence[keep]))


def test_config_overrides_parse_json_values_and_refuse_unknown_fields():
    from nucdata.errors import InvalidArgumentError
    from nucdata_models import TrainConfig
    from nucdata_models.study import config_overrides

    got = config_overrides(["stain_jitter=0.5", "background_balance=false", "epochs={\"A\": 1, \"B\": 0, \"C\": 0}",
                            "encoder=small"])
    assert got == {"stain_jitter": 0.5, "background_balance": False, "epochs": {"A": 1, "B": 0, "C": 0},
                   "encoder": "small"}
    assert not TrainConfig(**got).background_balance
    with pytest.raises(InvalidArgumentError, match="TrainConfig field"):
        config_overrides(["not_a_field=1"])
    with pytest.raises(InvalidArgumentError, match="FIELD=VALUE"):
        config_overrides(["stain_jitter"])
