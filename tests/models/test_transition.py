"""The candidate-set likelihood that knows how a source class spreads over its candidates (issue 20 point 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nucdata_models import CrossTrainer, TrainConfig
from nucdata_models.data import AMBIGUOUS, MAPPED, OUTSIDE_LABEL, source_rows
from nucdata_models.losses import TableErrorSettings, TransitionEstimate, partial_label_loss
from nucdata_models.study.synthetic import make_synthetic_data

# One source dataset (index 0) writing into a set of three classes plus outside:
# class 0 is a catch-all ("other"), 1 and 2 are named.
OTHER, NAMED_A, NAMED_B, OUT = 0, 1, 2, 3


@pytest.fixture(scope="module")
def tiny():
    """Small generated data (40 nuclei per dataset, 16 px): a fit takes well under a second."""
    return make_synthetic_data(per_dataset=40, size=16, seed=1)


def _rows(codes, supports, provenance=None):
    n = len(codes)
    targets = torch.tensor(supports, dtype=torch.int64)
    prov = torch.tensor(provenance or [AMBIGUOUS if bin(t).count("1") > 1 else MAPPED for t in supports],
                        dtype=torch.int8)
    return targets, source_rows(targets, prov, torch.zeros(n, dtype=torch.int64), torch.tensor(codes))


def _dead_and_neoplastic(dead: int, neoplastic: int):
    """``dead`` nuclei written "dead" (the table: other, exactly) and ``neoplastic`` written
    "neoplastic" ({other, A}); no row names B or outside. Returns targets, rows and "dead"'s row."""
    targets, rows = _rows([3] * dead + [0] * neoplastic, [0b0001] * dead + [0b0011] * neoplastic)
    return targets, rows, rows.code.tolist().index(3)


def test_weights_equal_to_one_give_the_uniform_candidate_loss():
    torch.manual_seed(0)
    logits = torch.randn(20, 4)
    bits = torch.randint(1, 16, (20,))
    uniform, count = partial_label_loss(logits, bits)
    ones, _ = partial_label_loss(logits, bits, torch.ones(20, 4))
    assert torch.allclose(uniform, ones) and int(count) == 20


def test_the_gradient_moves_the_model_towards_the_posterior():
    # d/dz -log sum_c p_c w_c = p - q with q ∝ p w: the catch-all loses mass when its weight is low
    logits = torch.zeros(1, 4, requires_grad=True)
    bits = torch.tensor([0b0011])  # {other, named A}
    w = torch.tensor([[0.25, 1.0, 0.0, 0.0]])
    loss, _ = partial_label_loss(logits, bits, w)
    loss.backward()
    p = torch.full((4,), 0.25)
    q = torch.tensor([0.25 * 0.25, 0.25, 0, 0]) / (0.25 * 0.25 + 0.25)
    assert torch.allclose(logits.grad[0], p - q, atol=1e-6)
    assert float(logits.grad[0, OTHER]) > 0 > float(logits.grad[0, NAMED_A])
    # the uniform loss leaves the split inside the candidates alone
    logits.grad = None
    partial_label_loss(logits, bits)[0].backward()
    assert float(logits.grad[0, OTHER]) == pytest.approx(float(logits.grad[0, NAMED_A]))


def test_the_initial_estimate_is_the_tables_view_and_columns_sum_to_one():
    # 10 nuclei written "dead" (exact: other), 10 "neoplastic" ({other, named A}), 4 "connective" ({other, B})
    codes = [3] * 10 + [0] * 10 + [2] * 4
    supports = [0b0001] * 10 + [0b0011] * 10 + [0b0101] * 4
    targets, rows = _rows(codes, supports)
    assert len(rows) == 3 and rows.code.tolist() == [0, 2, 3]
    t = TransitionEstimate(rows, 4, prior=0.0, train_rows=torch.arange(24))
    # n[neo] = 5 other + 5 A; n[conn] = 2 other + 2 B; n[dead] = 10 other
    assert t.counts.tolist() == [[5, 5, 0, 0], [2, 0, 2, 0], [10, 0, 0, 0]]
    m = t.matrix
    assert torch.allclose(m[:, OTHER], torch.tensor([5 / 17, 2 / 17, 10 / 17]))
    assert float(m[0, NAMED_A]) == pytest.approx(1.0) and float(m[1, NAMED_B]) == pytest.approx(1.0)
    assert torch.allclose(m.sum(0)[:3], torch.ones(3))
    assert float(m[:, OUT].sum()) == 0  # nothing names outside
    # off the support the estimate is 0, whatever the counts
    assert bool((m[candidates_off(rows)] == 0).all())


def candidates_off(rows):
    shifts = torch.arange(4)
    return ((rows.support[:, None] >> shifts) & 1) == 0


def test_em_steps_follow_the_models_posteriors_with_the_prior():
    codes = [3] * 10 + [0] * 10
    supports = [0b0001] * 10 + [0b0011] * 10
    targets, rows = _rows(codes, supports)
    t = TransitionEstimate(rows, 4, prior=1.0, train_rows=torch.arange(20))
    # a model sure that the neoplastic nuclei are all "named A"
    probs = torch.tensor([[1.0, 0, 0, 0]] * 10 + [[0.0, 1.0, 0, 0]] * 10)
    t.accumulate(torch.arange(20), probs)
    t.update()
    assert t.counts.tolist() == [[0, 10, 0, 0], [10, 0, 0, 0]]
    # T[neo, other] = (0 + 1) / (0 + 1 + 10 + 1); the prior keeps it off 0
    assert float(t.matrix[0, OTHER]) == pytest.approx(1 / 12)
    assert float(t.matrix[0, NAMED_A]) == pytest.approx(1.0)
    # an epoch without counts keeps the estimate
    before = t.matrix.clone()
    t.update()
    assert torch.equal(before, t.matrix)


def test_a_catch_all_that_every_row_names_gets_only_its_share():
    """The collapse of the uniform loss: predicting the catch-all satisfies every ambiguous row.

    Three sources each name {other, their own class}; the truth is never "other" except
    for an exact source. With the uniform loss a model stuck on "other" pays nothing; with
    the transition likelihood it pays, and gradient descent leaves the catch-all.
    """
    codes = [9] * 30 + [0] * 30 + [1] * 30 + [2] * 30
    supports = [0b0001] * 30 + [0b0011] * 30 + [0b0101] * 30 + [0b1001] * 30
    targets, rows = _rows(codes, supports)
    t = TransitionEstimate(rows, 4, prior=1.0, train_rows=torch.arange(120))
    logits = torch.tensor([[4.0, 0.0, 0.0, 0.0]]).repeat(120, 1).requires_grad_()
    optimiser = torch.optim.SGD([logits], lr=50.0)
    for _ in range(100):
        idx = torch.arange(120)
        loss, _ = partial_label_loss(logits, targets, t.weights(idx, targets))
        t.accumulate(idx, logits.softmax(1))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        t.update()
    p = logits.softmax(1).detach()
    assert float(p[30:, OTHER].max()) < 0.2  # the ambiguous rows left the catch-all
    assert float(p[:30, OTHER].min()) > 0.9  # the exact "other" rows kept it
    # with the uniform loss the same start stays on the catch-all
    logits = torch.tensor([[4.0, 0.0, 0.0, 0.0]]).repeat(120, 1).requires_grad_()
    optimiser = torch.optim.SGD([logits], lr=50.0)
    for _ in range(100):
        loss, _ = partial_label_loss(logits, targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert float(logits.detach().softmax(1)[30:, OTHER].min()) > 0.9


class _Store:
    """A duck-typed store (``dataset``, ``column``, ``image_columns``) with a tissue per image."""

    def __init__(self, dataset, codes, image, tissue):
        self.dataset = dataset
        self._columns = {("nuclei", "label"): np.asarray(codes), ("nuclei", "image"): np.asarray(image),
                         ("images", "tissue"): np.asarray(tissue)}

    def column(self, table, key):
        return self._columns[table, key]

    def image_columns(self):
        return ["tissue"]


def test_tissue_conditional_rows_are_sources_of_their_own():
    from nucdata_models.data import training_targets
    from nucdata_models.merge import label_columns
    from nucdata_models.merge.bridge import source_columns

    # PanNuke Neoplastic in a carcinoma tissue (Breast) and elsewhere (Adrenal_gland), under MoNuSAC
    store = _Store("pannuke", [0, 0, 0, 1], [0, 1, 1, 0], ["Breast", "Adrenal_gland"])
    labels, candidates, provenance = (torch.from_numpy(c) for c in label_columns(store, "monusac"))
    codes, names = source_columns(store)
    assert codes.tolist() == [0, 0, 0, 1] and names[0] == "Neoplastic"
    targets, _ = training_targets(labels, candidates, provenance, 4)
    rows = source_rows(targets, provenance, torch.zeros(4, dtype=torch.int64), torch.from_numpy(codes))
    breast, adrenal = int(rows.row[0]), int(rows.row[1])
    assert breast != adrenal and int(rows.row[2]) == adrenal  # one code, two rows
    assert rows.code[breast] == rows.code[adrenal] == 0
    assert int(rows.support[breast]).bit_count() == 1 and int(rows.support[adrenal]).bit_count() > 1
    assert int(provenance[3]) in (MAPPED, OUTSIDE_LABEL, AMBIGUOUS)


def test_training_writes_the_estimate_and_the_old_loss_stays_a_switch(tiny, config_factory):
    config = config_factory(epochs={"A": 2, "B": 1, "C": 1}, candidate_likelihood="transition")
    trainer = CrossTrainer(config)
    result = trainer.fit(tiny)
    assert result.transition, "the estimate is reported"
    for s, per in result.transition.items():
        for dataset, entry in per.items():
            m = np.asarray(entry["matrix"])
            assert m.shape == (len(entry["rows"]), len(entry["columns"]))
            named = m.sum(0) > 0
            assert np.allclose(m.sum(0)[named], 1.0, atol=1e-4), (s, dataset)
            # the columns some row of this dataset names: where a wrong entry may move mass
            named_here = {name for row in entry["rows"] for name in row["candidates"]}
            for row, values in zip(entry["rows"], m, strict=True):
                off = [c for c, name in enumerate(entry["columns"]) if name not in row["candidates"]]
                if row["candidates"] == ["outside"]:  # table_error (default) widens only these rows
                    assert all(values[c] == 0 for c in off if entry["columns"][c] not in named_here)
                else:
                    assert np.all(values[off] == 0)
                assert row["source"] and row["nuclei"] >= 0
    # the ambiguous PanNuke rows under CoNSeP are rows of the estimate, named
    rows = result.transition["consep"]["pannuke"]["rows"]
    assert {"Neoplastic", "Connective"} <= {r["source"] for r in rows}
    weights = trainer.candidate_weights(tiny)
    assert weights["consep"].shape == (len(tiny), 8) and float(weights["consep"].max()) == pytest.approx(1.0)
    # the old loss: no estimate, and the same run as before the switch existed
    uniform = CrossTrainer(config.replace(candidate_likelihood="uniform")).fit(tiny)
    assert uniform.transition == {}
    assert TrainConfig().candidate_likelihood in ("transition", "uniform")


def test_a_resumed_stage_continues_from_its_estimate(tiny, config_factory, tmp_path):
    config = config_factory(epochs={"A": 2, "B": 0, "C": 0}, candidate_likelihood="transition")
    first = CrossTrainer(config)
    first.fit(tiny, workdir=tmp_path)
    again = CrossTrainer(config)
    result = again.fit(tiny, workdir=tmp_path)
    assert "A" in result.reused
    for s, t in first.transitions.items():
        assert torch.equal(t.matrix, again.transitions[s].matrix)


def test_an_ambiguous_row_is_resolved_by_the_posterior_given_its_source_class():
    from nucdata_models.data import ANNOTATED
    from nucdata_models.fill import fill_labels

    # three classes plus outside; rows 0-1 ambiguous over {OTHER, NAMED_A}, row 2 annotated, row 3 ambiguous
    # with weights that leave no mass on its candidates
    probs = torch.tensor([[0.6, 0.3, 0.05, 0.05], [0.2, 0.7, 0.05, 0.05], [0.6, 0.3, 0.05, 0.05],
                          [0.6, 0.3, 0.05, 0.05]])
    candidates = torch.tensor([0b0011, 0b0011, 0, 0b0011])
    provenance = torch.tensor([AMBIGUOUS, AMBIGUOUS, ANNOTATED, AMBIGUOUS], dtype=torch.int8)
    labels = torch.tensor([-1, -1, 2, -1])
    # T[s, c]: the catch-all rarely writes this source class, NAMED_A usually does
    weights = torch.tensor([[0.1, 1.0, 0.0, 0.0]] * 3 + [[0.0, 0.0, 1.0, 1.0]])
    plain = fill_labels(probs, labels, candidates, provenance, 3)
    given = fill_labels(probs, labels, candidates, provenance, 3, weights=weights)
    assert plain.label.tolist()[:2] == [OTHER, NAMED_A]
    assert given.label.tolist() == [NAMED_A, NAMED_A, 2, OTHER]  # row 3: no mass, p(c | x) alone
    # the published probability is the posterior renormalised over the candidates
    assert float(given.probability[0]) == pytest.approx(0.3 / (0.3 + 0.06))
    assert float(given.probability[1]) == pytest.approx(0.7 / (0.7 + 0.02))
    assert float(given.probability[3]) == pytest.approx(0.6 / 0.9)
    # the annotated row and every model prediction are untouched
    assert float(given.probability[2]) == pytest.approx(float(plain.probability[2]))
    assert torch.equal(given.predicted, plain.predicted)
    with pytest.raises(Exception, match="candidate_weights"):
        fill_labels(probs, labels, candidates, provenance, 3, weights=weights[:, :3])


def test_a_loaded_checkpoint_resolves_ambiguous_rows_as_the_trainer_that_wrote_it(tiny, config_factory, tmp_path):
    config = config_factory(epochs={"A": 2, "B": 0, "C": 0}, candidate_likelihood="transition")
    trainer = CrossTrainer(config)
    trainer.fit(tiny)
    path = trainer.save(tmp_path / "model.pt")
    loaded = CrossTrainer.load(path, tiny.label_sets, device="cpu")
    fitted, restored = trainer.candidate_weights(tiny), loaded.candidate_weights(tiny)
    assert set(fitted) == set(restored) and fitted
    for s in fitted:
        assert torch.allclose(fitted[s], restored[s]), s
        assert bool((fitted[s] != 1).any()), s  # the weights are not all ones: the test could fail


def test_a_stored_estimate_is_checked_and_looked_up_by_its_key():
    from nucdata.errors import CheckpointError
    from nucdata_models.data import LabelSetSpec
    from nucdata_models.train import checked_transition_rows, stored_weights

    specs = [LabelSetSpec("consep", "1", ("other", "inflammatory", "epithelial"))]
    good = {"consep": {"dataset": ["pannuke", "pannuke"], "code": [0, 1], "support": [0b1001, 0b0110],
                       "matrix": [[0.5, 0.0, 0.0, 0.25], [0.0, 0.2, 0.4, 0.0]]}}
    table = checked_transition_rows(good, specs, True, "model.json")["consep"]
    keys = [("pannuke", 0, 0b1001), ("pannuke", 1, 0b0110), ("consep", 0, 0b1001)]
    weights = stored_weights(table, keys, torch.tensor([0, 1, 2, -1]))
    assert torch.allclose(weights, torch.tensor([[1.0, 0, 0, 0.5], [0, 0.5, 1.0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]))
    assert checked_transition_rows(None, specs, True, "x") == {}
    bad = [
        {"pannuke": good["consep"]},                                          # not a set of the model
        {"consep": {**good["consep"], "matrix": [[0.5, 0.0, 0.0]] * 2}},      # rows of the wrong length
        {"consep": {**good["consep"], "code": [0]}},                          # lengths differ
        {"consep": {**good["consep"], "matrix": [[-1.0, 0, 0, 0]] * 2}},      # negative
        {"consep": {**good["consep"], "dataset": [1, 2]}},                    # names must be strings
        ["consep"],
    ]
    for rows in bad:
        with pytest.raises(CheckpointError, match="transition_rows"):
            checked_transition_rows(rows, specs, True, "model.json")


def test_table_error_widens_the_support_only_within_the_columns_a_dataset_names():
    # "dead" names other exactly, "neoplastic" {other, A}; no row names B or outside
    targets, rows, dead = _dead_and_neoplastic(10, 10)
    hard = TransitionEstimate(rows, 4, prior=1.0, train_rows=torch.arange(20))
    soft = TransitionEstimate(rows, 4, prior=1.0, train_rows=torch.arange(20), table_error=TableErrorSettings(0.5))
    # the table's view is the starting point either way
    assert torch.equal(hard.counts, soft.counts)
    # "dead" may now hold A (a column its dataset names), never B or outside
    assert float(hard.matrix[dead, NAMED_A]) == 0 < float(soft.matrix[dead, NAMED_A])
    assert float(soft.matrix[:, NAMED_B].sum()) == 0 and float(soft.matrix[:, OUT].sum()) == 0
    assert torch.allclose(soft.matrix.sum(0)[:2], torch.ones(2))
    # the likelihood sums over the wider support; without table_error the bits are the table's
    idx = torch.arange(20)
    assert torch.equal(hard.loss_targets(idx, targets), targets)
    assert soft.loss_targets(idx, targets).tolist() == [0b0011] * 20


def test_table_error_lets_em_learn_a_wrong_table_entry():
    # 20 nuclei written "dead" (the table: other, exactly) that a model trained on their own
    # dataset's annotations recognises as class A: EM moves "dead"'s mass onto A, and the loss
    # stops pushing them to "other"
    targets, rows, dead = _dead_and_neoplastic(20, 20)
    t = TransitionEstimate(rows, 4, prior=1.0, train_rows=torch.arange(40), table_error=TableErrorSettings(0.5))
    probs = torch.tensor([[0.1, 0.9, 0, 0]] * 40)
    for _ in range(5):
        t.accumulate(torch.arange(40), probs)
        t.update()
    assert float(t.matrix[dead, NAMED_A]) > 0.3
    logits = torch.log(probs[:1].clamp_min(1e-6)).requires_grad_()
    idx = torch.tensor([0])
    loss, _ = partial_label_loss(logits, t.loss_targets(idx, targets[:1]), t.weights(idx, targets[:1]))
    loss.backward()
    assert float(logits.grad[0, NAMED_A]) < 0.05  # no longer pushed hard away from A
    with pytest.raises(Exception, match="table_error"):
        TrainConfig(table_error=-1)


def test_a_fit_with_table_error_trains(tiny):
    trainer = CrossTrainer(TrainConfig(epochs={"A": 1, "B": 1, "C": 1}, batch_size=32, device="cpu",
                                       table_error=1.0, score_truth=False))
    result = trainer.fit(tiny)
    assert all(np.isfinite(row["loss"]) for row in result.history)


def test_a_share_prior_puts_that_share_of_each_column_off_the_support():
    # A is named only by "neoplastic" (5 nuclei over {other, A}); "dead" (40 nuclei) names other.
    # A count prior of 1 per cell is a fifth of A's column; a share prior of 0.1 is a tenth of it.
    _, rows, dead = _dead_and_neoplastic(40, 10)
    count = TransitionEstimate(rows, 4, prior=0.0, train_rows=torch.arange(50), table_error=TableErrorSettings(1.0))
    share = TransitionEstimate(rows, 4, prior=0.0, train_rows=torch.arange(50), table_error=TableErrorSettings(0.1, prior="share"))
    assert abs(float(count.matrix[dead, NAMED_A]) - 1 / 6) < 1e-6  # 1 / (5 + 1)
    assert abs(float(share.matrix[dead, NAMED_A]) - 0.5 / 5.5) < 1e-6  # 0.1 * 5 off the support, of 5.5
    assert torch.allclose(share.matrix.sum(0)[:2], torch.ones(2))


def test_a_table_loss_keeps_the_tables_bits_while_the_estimate_widens():
    targets, rows, _ = _dead_and_neoplastic(10, 10)
    widened = TransitionEstimate(rows, 4, prior=1.0, train_rows=torch.arange(20), table_error=TableErrorSettings(0.5))
    table = TransitionEstimate(rows, 4, prior=1.0, train_rows=torch.arange(20), table_error=TableErrorSettings(0.5, loss="table"))
    idx = torch.arange(20)
    assert torch.equal(table.matrix, widened.matrix)  # the same estimate, off the support too
    assert torch.equal(table.loss_targets(idx, targets), targets)
    assert widened.loss_targets(idx, targets).tolist() == [0b0011] * 20


def test_outside_rows_only_widens_the_rows_the_table_sends_to_outside_alone():
    # "connective" (code 2) is tabled to outside alone, "epithelial" (4) to A, "inflammatory" (1)
    # to {B, outside}; the dataset names A, B and outside, never the catch-all
    codes, supports = [2] * 6 + [4] * 6 + [1] * 6, [0b1000] * 6 + [0b0010] * 6 + [0b1100] * 6
    provenance = [OUTSIDE_LABEL] * 6 + [MAPPED] * 6 + [AMBIGUOUS] * 6
    targets, rows = _rows(codes, supports, provenance)
    row = {c: rows.code.tolist().index(c) for c in (1, 2, 4)}
    idx = torch.arange(18)

    def estimate(rows_rule="all", **kw):
        return TransitionEstimate(rows, 4, prior=1.0, train_rows=idx, table_error=TableErrorSettings(0.5, rows=rows_rule), **kw)

    every, outside, headless = (estimate(), estimate("outside", outside_output=True), estimate("outside"))
    # "all": every row may hold the dataset's other named columns
    assert float(every.matrix[row[4], NAMED_B]) > 0 and float(every.matrix[row[2], NAMED_A]) > 0
    # "outside": only the outside-alone row goes off its support, into the named columns
    assert float(outside.matrix[row[2], NAMED_A]) > 0 and float(outside.matrix[row[2], NAMED_B]) > 0
    assert float(outside.matrix[row[2], OTHER]) == 0
    assert float(outside.matrix[row[4], NAMED_B]) == 0 == float(outside.matrix[row[1], NAMED_A])
    bits = outside.loss_targets(idx, targets).tolist()
    assert bits == [0b1110] * 6 + [0b0010] * 6 + [0b1100] * 6
    # without an outside output no row is outside alone: the table's support stays
    assert headless.loss_targets(idx, targets).tolist() == targets.tolist()
    assert torch.allclose(outside.matrix.sum(0)[1:], torch.ones(3))
    with pytest.raises(Exception, match="table_error_rows"):
        TrainConfig(table_error_rows="some")


def test_a_row_below_the_minimum_keeps_the_tables_support():
    # "dead" (code 3, 40 nuclei) is tabled to the catch-all, "neoplastic" (code 0, 10 nuclei) to A;
    # table_error lets each hold the other's column, but with a minimum of 20 training nuclei
    # only "dead" may go off its support
    targets, rows = _rows([3] * 40 + [0] * 10, [0b0001] * 40 + [0b0010] * 10)
    dead, neoplastic = rows.code.tolist().index(3), rows.code.tolist().index(0)
    idx = torch.arange(50)
    every = TransitionEstimate(rows, 4, prior=1.0, train_rows=idx, table_error=TableErrorSettings(0.5))
    gated = TransitionEstimate(rows, 4, prior=1.0, train_rows=idx, table_error=TableErrorSettings(0.5, min_nuclei=20))
    assert every.loss_targets(idx, targets).tolist() == [0b0011] * 50  # both rows widened
    assert gated.loss_targets(idx, targets).tolist() == [0b0011] * 40 + [0b0010] * 10
    assert float(every.matrix[neoplastic, OTHER]) > 0 and float(gated.matrix[neoplastic, OTHER]) == 0
    assert float(gated.matrix[dead, NAMED_A]) > 0
    assert torch.allclose(gated.matrix.sum(0)[:2], torch.ones(2))
    # counted over the training rows only: with 10 of dead's nuclei in training it keeps its table too
    few = TransitionEstimate(rows, 4, prior=1.0, train_rows=torch.arange(30, 50), table_error=TableErrorSettings(0.5, min_nuclei=20))
    assert torch.equal(few.loss_targets(idx, targets), targets)
    with pytest.raises(Exception, match="table_error_min_nuclei"):
        TrainConfig(table_error_min_nuclei=-1)


def test_the_source_posterior_weighs_a_nucleus_by_its_rows_transition():
    """``posterior``: p(c | x) T[s, c] renormalised where a nucleus has a source row, p(c | x) elsewhere."""
    from nucdata_models.data import ANNOTATED

    codes = [3] * 10 + [0] * 10 + [0]
    supports = [0b0001] * 10 + [0b0011] * 10 + [0b0100]
    targets, rows = _rows(codes, supports, [MAPPED] * 10 + [AMBIGUOUS] * 10 + [ANNOTATED])
    assert int(rows.row[20]) == -1  # the annotated nucleus has no source row
    t = TransitionEstimate(rows, 4, prior=1.0, train_rows=torch.arange(20))
    t.accumulate(torch.arange(20), torch.tensor([[1.0, 0, 0, 0]] * 10 + [[0.0, 1.0, 0, 0]] * 10))
    t.update()  # T[neoplastic, other] = 1 / 12, T[neoplastic, A] = 1 (as above)
    p = torch.tensor([[0.6, 0.3, 0.05, 0.05]] * 3)
    q = t.posterior(torch.tensor([0, 10, 20]), p)
    # "dead" writes the catch-all alone: all of its mass is there
    assert q[0].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0])
    # "neoplastic": the image favours the catch-all, the source class says A
    assert q[1].tolist() == pytest.approx([0.05 / 0.35, 0.3 / 0.35, 0.0, 0.0])
    assert int(q[1].argmax()) == NAMED_A
    assert torch.equal(q[2], p[2])  # no source row: the model's own probabilities
    assert torch.equal(p, torch.tensor([[0.6, 0.3, 0.05, 0.05]] * 3))  # the input is not changed
