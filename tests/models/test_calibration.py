"""Calibration of the published probability: temperature scaling, what it is fitted on, ECE, the report."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nucdata.errors import InvalidArgumentError
from nucdata_models.calibration import (
    MIN_NUCLEI,
    VALIDATION,
    Calibration,
    calibrated_fill,
    calibration_scores,
    fit_calibration,
    fit_temperature,
    pair_key,
    reading,
)
from nucdata_models.data import (
    AMBIGUOUS,
    ANNOTATED,
    MAPPED,
    NO_LABEL,
    OUTSIDE_LABEL,
    LabelSetSpec,
    TrainingData,
)
from nucdata_models.fill import PROVENANCE, fill_labels, published_fields, temperature_scale
from nucdata_models.metrics import (
    ECE_BINS,
    calibration_tally,
    confidence_bin,
    ece_floor_from_tally,
    ece_from_tally,
    expected_calibration_error,
    reliability_bins,
)

ROOT = Path(__file__).resolve().parents[2]


def _overconfident(n: int, k: int, temperature: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(z); published probabilities softmax(z * temperature): T = temperature fixes them."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * 2
    target = torch.multinomial(z.softmax(1), 1, generator=g)[:, 0]
    return (z * temperature).softmax(1).float(), target


def test_fit_temperature_recovers_the_temperature_that_made_the_probabilities():
    for true in (0.5, 2.0):
        probs, target = _overconfident(4000, 5, true)
        assert fit_temperature(probs, target) == pytest.approx(true, rel=0.1)
        calibrated = temperature_scale(probs, fit_temperature(probs, target))
        top, index = calibrated.max(1)
        before = expected_calibration_error((probs.argmax(1) == target).numpy(), probs.max(1).values.numpy())
        after = expected_calibration_error((index == target).numpy(), top.numpy())
        assert after < 0.03 < before
    assert fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64)) == 1.0
    # every nucleus right: the likelihood alone sends T to its lower bound, the prior keeps it near 1
    right = torch.tensor([[0.9, 0.05, 0.05]] * 60)
    target = torch.zeros(60, dtype=torch.int64)
    assert fit_temperature(right, target, prior_sd=math.inf) == pytest.approx(0.05, rel=1e-3)
    assert 0.3 < fit_temperature(right, target) < 1.0
    with pytest.raises(InvalidArgumentError, match="columns"):
        fit_temperature(torch.full((2, 3), 1 / 3), torch.tensor([0, 3]))


def test_temperature_scaling_keeps_every_label_and_sums_to_one():
    probs, _ = _overconfident(200, 4, 1.5)
    assert temperature_scale(probs, 1.0) is probs
    per_row = torch.linspace(0.3, 4.0, 200, dtype=torch.float64)
    for t in (0.2, 3.0, per_row):
        q = temperature_scale(probs, t)
        assert torch.equal(q.argmax(1), probs.argmax(1))
        assert torch.allclose(q.sum(1), torch.ones(200), atol=1e-5)
    assert (temperature_scale(probs, 3.0).max(1).values <= probs.max(1).values + 1e-6).all()  # softer
    for bad in (0.0, -1.0, float("nan"), torch.ones(3)):
        with pytest.raises(InvalidArgumentError):
            temperature_scale(probs, bad)


def test_the_published_probability_belongs_to_the_published_label():
    # three classes and outside; rows: annotated 1, mapped 2, ambiguous {1, 2}, ambiguous {0, outside},
    # outside, nothing
    probs = torch.tensor([[0.5, 0.2, 0.2, 0.1]] * 6)
    labels = torch.tensor([1, 2, -1, -1, -2, -1])
    cands = torch.tensor([0, 0, 0b0110, 0b1001, 0, 0])
    prov = torch.tensor([ANNOTATED, MAPPED, AMBIGUOUS, AMBIGUOUS, OUTSIDE_LABEL, NO_LABEL], dtype=torch.int8)
    f = fill_labels(probs, labels, cands, prov, 3)
    assert f.label.tolist() == [1, 2, 1, 0, -2, 0]
    # annotated and mapped: the model's probability of that class; ambiguous-resolved: renormalised
    # over its candidates; an exact outside row: renormalised over its one candidate, the outside output
    assert f.probability.tolist() == pytest.approx([0.2, 0.2, 0.5, 0.5 / 0.6, 1.0, 0.5])
    assert f.predicted.tolist() == [0] * 6 and f.predicted_probability.tolist() == pytest.approx([0.5] * 6)
    label, prob = published_fields(f)
    # the pickle: the model's own label except where the annotation decides the candidates or says outside
    assert label.tolist() == [0, 0, 1, 0, -2, 0]
    assert prob.tolist() == pytest.approx([0.5, 0.5, 0.5, 0.5 / 0.6, 1.0, 0.5])
    # calibrated: the same labels, every probability from the scaled distribution
    t = 2.0
    g = fill_labels(probs, labels, cands, prov, 3, temperature=t)
    q = temperature_scale(probs, t)[0]
    assert torch.equal(g.label, f.label) and torch.equal(g.source, f.source)
    q = q.tolist()
    assert g.probability.tolist() == pytest.approx([q[1], q[2], q[1] / (q[1] + q[2]), q[0] / (q[0] + q[3]), 1.0,
                                                    q[0]], rel=1e-5)
    # a predicted -2 keeps the outside output's calibrated probability
    won = fill_labels(torch.tensor([[0.1, 0.1, 0.2, 0.6]]), torch.tensor([-1]), torch.tensor([0]),
                      torch.tensor([NO_LABEL], dtype=torch.int8), 3)
    assert won.label.tolist() == [-2] and won.probability.tolist() == pytest.approx([0.6])
    # without an outside output: NaN beside -2, as before
    assert math.isnan(float(fill_labels(probs[:, :3] / 0.9, labels, cands, prov, 3, temperature=t).probability[4]))


def _data(seed: int = 0, per: int = 400) -> tuple[TrainingData, dict[str, torch.Tensor]]:
    """Three datasets under one set 'a' of 4 classes (no outside output): 'own' annotates it, 'foreign' is mapped
    into it (exact rows), 'bare' has no labels. Published probabilities are off by a known temperature per
    dataset (own 2: over-confident; foreign and bare 0.5: under-confident)."""
    g = torch.Generator().manual_seed(seed)
    spec = LabelSetSpec("a", "1", ("w", "x", "y", "z"))
    probs, labels, prov, index, truth = [], [], [], [], []
    for d, (kind, t) in enumerate((("own", 2.0), ("foreign", 0.5), ("bare", 0.5))):
        p, target = _overconfident(per, 4, t, seed + d)
        probs.append(p)
        truth.append(target)
        if kind == "bare":
            labels.append(torch.full((per,), -1))
            prov.append(torch.full((per,), NO_LABEL, dtype=torch.int8))
        else:
            labels.append(target)
            prov.append(torch.full((per,), ANNOTATED if kind == "own" else MAPPED, dtype=torch.int8))
        index.append(torch.full((per,), d))
    n = 3 * per
    split = torch.randint(0, 3, (n,), generator=g)
    data = TrainingData(torch.zeros(n, 3, 2, 2, dtype=torch.uint8), [spec], {"a": torch.cat(labels)},
                        {"a": torch.zeros(n, dtype=torch.int64)}, torch.cat(index), ["own", "foreign", "bare"],
                        split, {"a": torch.cat(truth)}, None, {"a": torch.cat(prov)})
    return data, {"a": torch.cat(probs)}


def test_fitted_on_validation_exact_labels_per_pair_pooled_elsewhere():
    data, probs = _data()
    cal = fit_calibration(probs, data)
    assert cal.split == "validation" and cal.minimum == MIN_NUCLEI
    # own-domain annotations fit their own pair only; the pooled temperature is cross-domain only
    assert cal.pairs[pair_key("own", "a")] == pytest.approx(2.0, rel=0.25)
    assert cal.pairs[pair_key("foreign", "a")] == pytest.approx(0.5, rel=0.25)
    assert cal.pooled["a"] == cal.pairs[pair_key("foreign", "a")]
    assert cal.fitted_on["a"] == int(((data.split == VALIDATION) & (data.dataset_index == 1)).sum())
    # a pair without its own uses the pooled temperature, but only where it softens (here it sharpens)
    assert cal.uses == {"own->a": "pair", "foreign->a": "pair", "bare->a": "pooled"}
    assert cal.temperature("bare", "a") == 1.0 and cal.temperature("a lab's own", "a") == 1.0
    assert cal.pooled_pairs == ["bare->a"]
    softer = Calibration(pooled={"a": 1.7})
    assert softer.temperature("bare", "a") == 1.7 and softer.used("bare", "a") == "pooled"
    assert cal.temperatures("a", data.dataset_index, data.dataset_names).unique().tolist() == sorted(
        [1.0, cal.pairs["own->a"], cal.pairs["foreign->a"]])
    # only the validation split counts: other splits' probabilities change nothing
    moved = {"a": torch.where((data.split != VALIDATION)[:, None], torch.full_like(probs["a"], 0.25), probs["a"])}
    assert fit_calibration(moved, data).to_dict() == cal.to_dict()
    # below the minimum a pair takes the pooled temperature; no pooled temperature: none
    few = fit_calibration(probs, data, minimum=10_000)
    assert few.pairs == {} and few.pooled == {} and set(few.uses.values()) == {"none"}
    assert few.temperature("own", "a") == 1.0
    with pytest.raises(InvalidArgumentError):
        fit_calibration(probs, data, minimum=0)


def test_a_pair_below_the_minimum_uses_the_pooled_temperature():
    data, probs = _data()
    own = torch.nonzero((data.split == VALIDATION) & (data.dataset_index == 0))[:, 0]
    data.split[own[MIN_NUCLEI - 1:]] = 0  # 'own' keeps one validation nucleus too few
    cal = fit_calibration(probs, data)
    assert cal.fitted_on["own->a"] == MIN_NUCLEI - 1
    assert cal.used("own", "a") == "pooled" and cal.pooled_pairs == ["bare->a", "own->a"]
    assert cal.pooled["a"] < 1 and cal.temperature("own", "a") == 1.0  # the pooled one sharpens: not applied


def test_the_calibration_is_plain_json_and_reads_back():
    data, probs = _data()
    cal = fit_calibration(probs, data)
    text = json.dumps(cal.to_dict())
    back = Calibration.from_dict(json.loads(text))
    assert back.to_dict() == cal.to_dict()
    assert set(cal.to_dict()) == {"method", "split", "minimum", "pairs", "pooled", "fitted_on", "uses", "pooled_pairs",
                                  "unseen", "unseen_fitted_on"}
    # a calibration written before the held-out-dataset fit reads back with none
    old = {k: v for k, v in cal.to_dict().items() if not k.startswith("unseen")}
    assert Calibration.from_dict(old).unseen == {} and Calibration.from_dict(old).uses == cal.uses
    for bad in ({"method": "platt"}, {"method": "temperature", "pairs": {"x->a": -1}},
                {"method": "temperature", "pooled": {"a": "hot"}}, {"method": "temperature", "pairs": []}, []):
        with pytest.raises(InvalidArgumentError, match="model.json"):
            Calibration.from_dict(bad, where="model.json")


def test_calibration_lowers_the_held_out_error_and_is_scored_per_provenance():
    data, probs = _data()
    filled, cal = calibrated_fill(probs, data)
    before, _ = calibrated_fill(probs, data, Calibration())
    scores = calibration_scores(data, filled, before, split=2)["a"]
    assert scores["scored_against"] == "truth"
    groups = scores["groups"]
    assert set(groups) == {"filled", "annotated", "mapped", "predicted"}
    assert groups["filled"]["count"] == groups["mapped"]["count"] + groups["predicted"]["count"]
    for name in ("annotated", "mapped"):
        assert groups[name]["ece"] < groups[name]["ece_uncalibrated"]
    assert len(groups["filled"]["bins"]) == ECE_BINS and "reading" in groups["filled"]
    for g in groups.values():  # each group says what calibrated probabilities would score on it by chance
        assert 0 < g["ece_floor"] < 1 and f"chance alone at n={g['count']:,}" in g["reading"]
    # without the truth (real data): only what is known exactly
    data.truth = {}
    unknown = calibration_scores(data, filled, before, split=2)["a"]
    assert unknown["scored_against"] == "labels" and set(unknown["groups"]) == {"annotated", "mapped"}


def test_ece_is_top_label_over_15_equal_width_bins():
    assert ECE_BINS == 15
    conf = np.array([0.0, 0.5, 1.0, 0.999, 0.0666, 0.0667])
    table = reliability_bins(np.ones(6, bool), conf)
    assert table["count"].sum() == 6
    assert table["count"][0] == 2 and table["count"][1] == 1 and table["count"][7] == 1 and table["count"][14] == 2
    np.testing.assert_allclose(table["edges"], np.linspace(0, 1, 16))
    assert expected_calibration_error(np.ones(3, bool), np.ones(3)) == 0.0
    assert expected_calibration_error(np.zeros(2, bool), np.array([0.9, 0.9])) == pytest.approx(0.9)
    # two bins, sizes 1 and 3: |1 - 0.2| * 1/4 + |1/3 - 0.9| * 3/4
    got = expected_calibration_error(np.array([True, True, False, False]), np.array([0.2, 0.9, 0.9, 0.9]))
    assert got == pytest.approx(0.8 / 4 + (0.9 - 1 / 3) * 3 / 4)
    assert math.isnan(expected_calibration_error(np.zeros(0, bool), np.zeros(0)))
    assert expected_calibration_error(np.array([True, False]), np.array([1.0, np.nan])) == 0.0  # NaN left out


#: Functions that still bin confidences themselves, to be switched to metrics.confidence_bin /
#: calibration_tally / ece_from_tally (the study's bootstrap tallies, issue 20 point 5).
PENDING = {"nucdata_models/study/_stats.py:calibration_bins"}


def test_one_binning_of_confidence():
    """Confidences are put into bins in metrics.confidence_bin only: no other function multiplies a
    confidence by a number of bins."""
    found = set()
    for path in sorted((ROOT / "nucdata_models").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for n in ast.walk(node):
                if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Mult):
                    sides = [ast.unparse(n.left).lower(), ast.unparse(n.right).lower()]
                    if any("conf" in x or x in ("c", "p") for x in sides) and any("bins" in x for x in sides):
                        found.add(f"{path.relative_to(ROOT).as_posix()}:{node.name}")
    assert found - PENDING == {"nucdata_models/metrics.py:confidence_bin"}


def test_tallies_add_up_to_the_ece():
    rng = np.random.default_rng(0)
    conf = rng.random(500)
    correct = rng.random(500) < conf
    group = rng.integers(0, 7, 500)
    per_group = calibration_tally(correct, conf, group=group, n_groups=7)
    assert per_group.shape == (7, ECE_BINS, 3)
    np.testing.assert_allclose(per_group.sum(0), calibration_tally(correct, conf))
    assert float(ece_from_tally(per_group.sum(0))) == pytest.approx(expected_calibration_error(correct, conf))
    np.testing.assert_allclose(ece_from_tally(per_group),
                               [expected_calibration_error(correct[group == g], conf[group == g]) for g in range(7)])
    assert confidence_bin(np.array([np.nan, -1.0, 0.0, 1.0, 2.0])).tolist() == [-1, 0, 0, 14, 14]


def test_the_chance_floor_is_the_ece_of_calibrated_probabilities():
    """ece_floor_from_tally: per bin the exact binomial mean absolute deviation (de Moivre's form against
    the full sum), and on average what calibrated probabilities score by chance."""
    from scipy.stats import binom

    for n, p in [(1, 0.3), (7, 0.5), (40, 0.37), (41, 0.6), (300, 0.91)]:
        k = np.arange(n + 1)
        exact = float((binom.pmf(k, n, p) * np.abs(k - n * p)).sum()) / n
        assert float(ece_floor_from_tally(np.array([[n, n * p, 0.0]]))) == pytest.approx(exact, rel=1e-9)
    rng = np.random.default_rng(3)
    for n in (60, 250, 1000):
        conf = rng.uniform(0.25, 0.85, n)
        floor = float(ece_floor_from_tally(calibration_tally(np.ones(n, bool), conf)))
        chance = np.mean([expected_calibration_error(rng.random(n) < conf, conf) for _ in range(400)])
        assert chance == pytest.approx(floor, rel=0.06)  # a shade high: Poisson-binomial within a bin
    # it shrinks with the count, is 0 where the confidence is certain, NaN where nothing is counted,
    # and is vectorised over leading axes like ece_from_tally
    small, large = (float(ece_floor_from_tally(calibration_tally(np.ones(n, bool), np.full(n, 0.7)))) for n in (50, 5000))
    assert large < small / 5
    assert float(ece_floor_from_tally(np.array([[10, 10.0, 10.0]]))) == 0.0
    assert np.isnan(ece_floor_from_tally(np.zeros((ECE_BINS, 3))))
    conf = rng.random(300)
    group = rng.integers(0, 4, 300)
    tallies = calibration_tally(conf > 0.5, conf, group=group, n_groups=4)
    np.testing.assert_allclose(ece_floor_from_tally(tallies),
                               [float(ece_floor_from_tally(calibration_tally(conf[group == g] > 0.5, conf[group == g])))
                                for g in range(4)])


def test_the_reading_says_which_way_and_where():
    def bins(pairs):
        edges = np.linspace(0, 1, 16)
        out = [{"lower": float(edges[i]), "upper": float(edges[i + 1]), "count": 0, "confidence": None,
                "accuracy": None} for i in range(15)]
        for i, (count, conf, acc) in pairs.items():
            out[i].update(count=count, confidence=conf, accuracy=acc)
        return out

    assert reading(bins({14: (100, 0.97, 0.96)}), 0.01) == "ECE 0.010: close to the diagonal"
    over = reading(bins({14: (80, 0.97, 0.6), 3: (20, 0.22, 0.2)}), 0.3)
    assert over.startswith("ECE 0.300: over-confident above 0.93")
    under = reading(bins({4: (80, 0.3, 0.8), 14: (20, 0.97, 0.97)}), 0.4)
    assert "under-confident below 0.33" in under
    assert reading(bins({}), float("nan")).startswith("nothing to read")
    # with the chance floor, the line says what calibrated probabilities would score at that count
    assert reading(bins({14: (100, 0.97, 0.96)}), 0.01, floor=0.012) == (
        "ECE 0.010: close to the diagonal (chance alone at n=100: 0.012)")
    assert reading(bins({14: (80, 0.97, 0.6), 3: (20, 0.22, 0.2)}), 0.3, floor=0.04).endswith(
        "(chance alone at n=100: 0.040)")


def test_reliability_diagrams_are_pngs(tmp_path):
    from PIL import Image

    from nucdata_models.merge.report import write_reliability_diagrams

    data, probs = _data()
    filled, _ = calibrated_fill(probs, data)
    before, _ = calibrated_fill(probs, data, Calibration())
    written = write_reliability_diagrams(tmp_path, calibration_scores(data, filled, before, split=2))
    assert written == {"a": "calibration/a.png"}
    with Image.open(tmp_path / written["a"]) as image:
        assert image.format == "PNG" and image.width > image.height


def test_sources_named_in_scores_are_provenances():
    assert {"annotated", "mapped", "ambiguous-resolved", "outside", "predicted"} == set(PROVENANCE)


def test_the_report_section_says_what_was_scored_against():
    from nucdata_models.merge.report import _render_calibration

    data, probs = _data()
    filled, cal = calibrated_fill(probs, data)
    before, _ = calibrated_fill(probs, data, Calibration())
    for truth in (True, False):
        if not truth:
            data.truth = {}
        block = {**cal.to_dict(), "scores": calibration_scores(data, filled, before, split=2),
                 "diagrams": {"a": "calibration/a.png"}}
        text = "\n".join(_render_calibration(block))
        assert "![reliability diagram, a](calibration/a.png)" in text
        assert ("against the demo world's truth" in text) is truth
        assert ("cannot be scored on real data" in text) is not truth
        assert "| a | 0.4" in text and "own 1.8" in text and "| bare |" in text


def test_without_dataset_removes_every_label_of_that_dataset_and_nothing_else():
    from nucdata_models.data import without_dataset

    data, _ = _data(per=50)
    data.candidates["a"] = torch.where(data.labels["a"] >= 0, 1 << data.labels["a"].clamp_min(0),
                                       torch.zeros_like(data.labels["a"]))
    data.source_class = torch.where(data.labels["a"] >= 0, data.labels["a"] + 10, torch.full_like(data.labels["a"], -1))
    bare = without_dataset(data, "own")
    mine = data.dataset_index == 0
    assert (bare.labels["a"][mine] == -1).all() and (bare.candidates["a"][mine] == 0).all()
    assert (bare.provenance["a"][mine] == NO_LABEL).all() and (bare.source_class[mine] == -1).all()
    # the other datasets, the crops, splits and truth are untouched; the input is not modified
    for a, b in ((bare.labels["a"], data.labels["a"]), (bare.candidates["a"], data.candidates["a"]),
                 (bare.provenance["a"], data.provenance["a"]), (bare.source_class, data.source_class)):
        assert torch.equal(a[~mine], b[~mine])
    assert (data.provenance["a"][mine] == ANNOTATED).all()
    assert torch.equal(bare.truth["a"], data.truth["a"]) and torch.equal(bare.split, data.split)
    with pytest.raises(InvalidArgumentError, match="pick one of own, foreign, bare"):
        without_dataset(data, "kumar")


def test_the_held_out_dataset_temperature_calibrates_the_unlabelled_pairs():
    """'bare' (no labels) is under-confident by T = 0.5, as 'own' and 'foreign' are under models that never saw
    their labels; the pooled temperature (foreign's exact rows, 0.5, a sharpening) cannot apply there, the
    held-out-dataset one can."""
    data, probs = _data()
    unseen = {}
    for d, name in ((0, "own"), (1, "foreign")):
        # the logits that drew this dataset's truth (_data's generator), published at T = 0.5 by the model
        # trained without its labels; other datasets' rows are not used
        z = torch.randn(400, 4, generator=torch.Generator().manual_seed(d), dtype=torch.float64) * 2
        held = torch.full((len(data), 4), 0.25)
        held[data.dataset_index == d] = (z * 0.5).softmax(1).float()
        unseen[name] = {"a": held}
    cal = fit_calibration(probs, data, unseen=unseen)
    plain = fit_calibration(probs, data)
    assert cal.uses["bare->a"] == "unseen" and plain.uses["bare->a"] == "pooled"
    assert cal.uses["own->a"] == plain.uses["own->a"] == "pair" and cal.pairs == plain.pairs
    assert cal.unseen_fitted_on["a"] == int(((data.split == VALIDATION) & (data.dataset_index < 2)).sum())
    assert cal.unseen["a"] < 0.8 and cal.temperature("bare", "a") == cal.unseen["a"]
    assert plain.temperature("bare", "a") == 1.0  # the pooled sharpening is refused
    # a lab's own images (a dataset never seen) take it too; a set without it falls back to the pooled rule
    assert cal.used("a lab's own", "a") == "unseen" and cal.used("a lab's own", "b") == "none"
    bare = (data.dataset_index == 2) & (data.split == 2)
    with_unseen, _ = calibrated_fill(probs, data, cal)
    without, _ = calibrated_fill(probs, data, plain)

    def ece(f):
        label, prob = published_fields(f["a"])
        right = (label == data.truth["a"]).numpy()[bare.numpy()]
        return expected_calibration_error(right, prob.numpy()[bare.numpy()])

    assert ece(with_unseen) < ece(without) - 0.05
    # too few held-out nuclei: no temperature, the pooled rule as before
    few = fit_calibration(probs, data, minimum=10_000, unseen=unseen)
    assert few.unseen == {} and few.unseen_fitted_on["a"] > 0 and few.uses["bare->a"] == "none"
    with pytest.raises(InvalidArgumentError, match="not a dataset of the data"):
        fit_calibration(probs, data, unseen={"kumar": unseen["own"]})
    with pytest.raises(InvalidArgumentError, match="a model of the same configuration"):
        fit_calibration(probs, data, unseen={"own": {"a": unseen["own"]["a"][:, :3]}})
