"""The three stages end to end on generated data: losses, filled labels, resume, seeds."""

from __future__ import annotations

import torch

from nucdata_models import CrossTrainer, TrainConfig
from nucdata_models.fill import scored_class
from nucdata_models.study.synthetic import make_synthetic_data


def _losses(result, stage):
    return [row["loss"] for row in result.history if row["stage"] == stage]


def test_every_stage_lowers_its_loss(trained):
    _, result, _ = trained
    for stage in ("A", "B", "C"):
        losses = _losses(result, stage)
        assert len(losses) >= 3 and losses[-1] < losses[0], (stage, losses)
    assert set(result.seconds) == {"A", "B", "C"} and all(s > 0 for s in result.seconds.values())


def test_pseudo_label_counts_are_logged_per_set_and_epoch(trained, data):
    _, result, _ = trained
    rows = [row for row in result.history if row["stage"] == "C"]
    assert len(rows) == 3
    for row in rows:
        assert set(row["pseudo_labels"]) == set(data.names)
        for s, count in row["pseudo_labels"].items():
            # at most two pseudo labels (one per direction) per nucleus with a missing label
            missing = int(((data.labels[s] == -1) & (data.split == 0)).sum())
            assert 0 <= count <= 2 * missing


def test_filled_labels_beat_chance(trained, data):
    trainer, result, _ = trained
    predictions = trainer.predict(data.crops, data.candidates)
    for spec in data.label_sets:
        truth = data.truth[spec.name]
        missing = (data.labels[spec.name] == -1) & (truth >= 0)
        accuracy = float((predictions[spec.name].label[missing] == truth[missing]).float().mean())
        assert accuracy > 2.0 / spec.size, (spec.name, accuracy)
    assert set(result.metrics) == set(result.filled) == {"A", "B", "C"}
    assert {"accuracy", "macro_f1", "weighted_f1", "weighted_f1_swapped"} <= set(result.metrics["C"]["pannuke"])


def test_inference_is_deterministic_and_respects_candidates(trained, data):
    trainer, _, _ = trained
    cands = {k: v[:60] for k, v in data.candidates.items()}
    a = trainer.predict(data.crops[:60], cands)
    b = trainer.predict(data.crops[:60], cands)
    for s in a:
        assert torch.equal(a[s].label, b[s].label) and torch.equal(a[s].probs, b[s].probs)
        assert torch.allclose(a[s].probs.sum(1), torch.ones(60), atol=1e-5)
        column = scored_class(a[s].label, a[s].probs.shape[1] - 1)  # -2: the outside output, last
        assert torch.equal(a[s].probability, a[s].probs.gather(1, column[:, None])[:, 0])
        chosen_bit = (cands[s] >> column) & 1
        assert bool(((cands[s] == 0) | (chosen_bit == 1)).all())
    # batch size does not change the answer
    trainer.config.eval_batch_size, saved = 7, trainer.config.eval_batch_size
    try:
        c = trainer.predict(data.crops[:60], cands)
    finally:
        trainer.config.eval_batch_size = saved
    for s in a:
        assert torch.equal(a[s].label, c[s].label)
        assert torch.allclose(a[s].probs, c[s].probs, atol=1e-5)


def test_finished_stages_are_reused_and_a_changed_stage_retrains(trained, data, config_factory):
    first, _, workdir = trained
    messages = []
    again = CrossTrainer(config_factory())
    result = again.fit(data, workdir=workdir, progress=messages.append)
    assert result.reused == ["A", "B", "C"]
    x = data.crops[:20]
    for s, p in first.predict(x).items():
        assert torch.equal(p.probs, again.predict(x)[s].probs)
    # A different stage-C setting keeps A and B and retrains C only.
    changed = CrossTrainer(config_factory(epochs={"A": 4, "B": 3, "C": 1}))
    result = changed.fit(data, workdir=workdir, progress=messages.append)
    assert result.reused == ["A", "B"]
    assert len([r for r in result.history if r["stage"] == "C"]) == 1
    # so does a setting that only stage C reads (the threshold sweep of the method study)
    swept = CrossTrainer(config_factory(threshold=0.9))
    assert swept.fit(data, workdir=workdir, progress=messages.append).reused == ["A", "B"]


def test_a_fixed_seed_gives_identical_runs():
    data = make_synthetic_data(per_dataset=40, size=16, seed=5)
    runs = []
    for _ in range(2):
        trainer = CrossTrainer(TrainConfig(epochs={"A": 1, "B": 1, "C": 1}, batch_size=32, seed=11, device="cpu"))
        trainer.fit(data)
        runs.append({**trainer.base.state_dict(), **{"h." + k: v for k, v in trainer.heads.state_dict().items()}})
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_four_channel_crops_and_unlabelled_only_sets_train():
    data = make_synthetic_data(per_dataset=40, size=16, channels=4, other_sets="missing", seed=2)
    assert data.crops.shape[1] == 4
    # "missing": every nucleus is labelled in its own set only
    own = {"pannuke": 0, "consep": 1, "monusac": 2, "nucls": 3}
    for s, d in own.items():
        assert bool((data.labels[s][data.dataset_index != d] == -1).all())
        assert bool((data.candidates[s][data.dataset_index != d] == 0).all())
    trainer = CrossTrainer(TrainConfig(epochs={"A": 1, "B": 1, "C": 1}, batch_size=32, device="cpu"))
    result = trainer.fit(data)
    # five PanNuke classes and the outside output
    assert result.history and trainer.predict(data.crops[:5])["pannuke"].probs.shape == (5, 6)


def test_a_train_result_reads_in_a_few_lines():
    from nucdata_models.train import TrainResult

    result = TrainResult([], {"A": {"pannuke": {"macro_f1": 0.5}}, "C": {"pannuke": {"macro_f1": 0.625}}},
                         {"A": 1.25, "C": 2.0}, "cpu", reused=["A"],
                         pseudo_labels=[{"offered": 10, "passed": 3}, {"offered": 5, "passed": 1}],
                         transition={"consep": {}})
    text = repr(result)
    assert text.splitlines() == [
        "TrainResult on cpu: stages A 1.2 s (reused), C 2.0 s",
        "  validation macro F1 after stage C: pannuke 0.625",
        "  stage C pseudo labels: 4 passed of 15 offered",
        "  transition estimate for consep",
    ]
    assert repr(TrainResult([], {}, {}, "cpu")) == "TrainResult on cpu: stages none"
