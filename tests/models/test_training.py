"""nucdata_models on the CPU with the small encoder and generated data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nucdata_models import CheckpointMismatchError, CrossTrainer, LabelSetSpec, TrainConfig
from nucdata_models.augment import augment, geometric
from nucdata_models.losses import partial_label_loss, pseudo_labels
from nucdata_models.metrics import classification_metrics
from nucdata_models.synthetic import make_world_data

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def data():
    return make_world_data(per_dataset=120, size=24, seed=1)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    trainer = CrossTrainer(TrainConfig(epochs={"A": 4, "B": 4, "C": 3}, batch_size=64, seed=3))
    workdir = tmp_path_factory.mktemp("stages")
    result = trainer.fit(data, workdir=workdir)
    return trainer, result, workdir


def _losses(result, stage):
    return [row["loss"] for row in result.history if row["stage"] == stage]


def test_every_stage_lowers_its_loss(trained):
    _, result, _ = trained
    for stage in ("A", "B", "C"):
        losses = _losses(result, stage)
        assert losses[-1] < losses[0], (stage, losses)
    pseudo = [row["pseudo_labels"] for row in result.history if row["stage"] == "C"]
    assert all(set(p) == {"pannuke", "nucls", "consep", "monusac"} for p in pseudo)


def test_filled_labels_beat_chance(trained, data):
    trainer, result, _ = trained
    predictions = trainer.predict(data.crops, data.candidates)
    for spec in data.label_sets:
        truth = data.truth[spec.name]
        missing = (data.labels[spec.name] == -1) & (truth >= 0)
        accuracy = float((predictions[spec.name].label[missing] == truth[missing]).float().mean())
        assert accuracy > 1.5 / spec.size, (spec.name, accuracy)
    assert set(result.metrics) == {"A", "B", "C"}
    assert {"accuracy", "macro_f1", "weighted_f1"} <= set(result.metrics["C"]["pannuke"])


def test_inference_is_deterministic_and_respects_candidates(trained, data):
    trainer, _, _ = trained
    a = trainer.predict(data.crops[:50], {k: v[:50] for k, v in data.candidates.items()})
    b = trainer.predict(data.crops[:50], {k: v[:50] for k, v in data.candidates.items()})
    for s in a:
        assert torch.equal(a[s].label, b[s].label) and torch.allclose(a[s].probs, b[s].probs)
        assert torch.allclose(a[s].probs.sum(1), torch.ones(50), atol=1e-4)
        cands = data.candidates[s][:50]
        chosen_bit = (cands >> a[s].label) & 1
        assert bool(((cands == 0) | (chosen_bit == 1)).all())


def test_checkpoint_round_trip_and_mismatch(trained, data, tmp_path):
    trainer, _, _ = trained
    path = trainer.save(tmp_path / "model.pt")
    assert path.with_suffix(".json").is_file()
    again = CrossTrainer.load(path, data.label_sets, device="cpu")
    x = data.crops[:20]
    for s, p in trainer.predict(x).items():
        assert torch.allclose(p.probs, again.predict(x)[s].probs, atol=1e-6)
    changed = [LabelSetSpec(s.name, "2" if s.name == "monusac" else s.version, s.class_names) for s in data.label_sets]
    with pytest.raises(CheckpointMismatchError, match="'monusac' is version 1"):
        CrossTrainer.load(path, changed)
    with pytest.raises(CheckpointMismatchError, match="trained for label sets"):
        CrossTrainer.load(path, data.label_sets[:2])


def test_finished_stages_are_reused(trained, data):
    _, _, workdir = trained
    messages = []
    trainer = CrossTrainer(TrainConfig(epochs={"A": 4, "B": 4, "C": 3}, batch_size=64, seed=3))
    trainer.fit(data, workdir=workdir, progress=messages.append)
    assert sum("reusing" in m for m in messages) == 3


def test_partial_labels_keep_mass_inside_candidates():
    torch.manual_seed(0)
    logits = torch.zeros(64, 5, requires_grad=True)
    candidates = torch.full((64,), 0b00011)  # classes 0 or 1
    optimiser = torch.optim.SGD([logits], lr=64.0)  # the loss is a mean over 64 nuclei
    outside_before = logits.softmax(1)[:, 2:].sum(1).mean().item()
    for _ in range(20):
        loss, count = partial_label_loss(logits, candidates)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert count == 64
    assert logits.softmax(1)[:, 2:].sum(1).mean().item() < outside_before / 4


def test_no_information_gives_no_gradient():
    logits = torch.randn(8, 4, requires_grad=True)
    loss, count = partial_label_loss(logits, torch.zeros(8, dtype=torch.int64))
    loss.backward()
    assert count == 0 and float(logits.grad.abs().sum()) == 0.0


def test_pseudo_labels_threshold_and_outside():
    probs = torch.tensor([[0.995, 0.005], [0.6, 0.4], [0.999, 0.001], [0.999, 0.001], [0.5, 0.5]])
    labels = torch.tensor([-1, -1, -2, 1, -1])
    candidates = torch.tensor([0, 0, 0, 2, 0b10])
    bits = pseudo_labels(probs, candidates, labels, 0.99)
    # confident missing -> class 0; unsure -> none; outside -> never; labelled -> never;
    # ambiguous restricted to its single candidate (class 1) -> confident after renormalising.
    assert bits.tolist() == [1, 0, 0, 0, 2]


def test_augmentation_shapes_and_exact_permutations():
    crops = torch.randint(0, 256, (16, 4, 12, 12), dtype=torch.uint8)
    x = augment(crops, torch.Generator().manual_seed(0))
    assert x.shape == (16, 4, 12, 12) and x.dtype == torch.float32
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    moved = geometric(crops.float(), torch.Generator().manual_seed(1))
    for a, b in zip(crops.float(), moved, strict=True):  # same pixels, permuted
        assert torch.equal(a.flatten(1).sort(1).values, b.flatten(1).sort(1).values)


def test_metrics_on_a_hand_computed_case():
    truth = np.array([0, 0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 0, 1, 1, 2, 2])
    m = classification_metrics(truth, pred, 3)
    f1 = np.array([2 * 3 / (2 * 3 + 0 + 1), 2 * 1 / (2 + 1 + 1), 2 * 1 / (2 + 1 + 0)])
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["macro_f1"] == pytest.approx(f1.mean())
    assert m["weighted_f1"] == pytest.approx((f1 * [4, 2, 1]).sum() / 7)  # true counts
    assert m["weighted_f1_swapped"] == pytest.approx((f1 * [3, 2, 2]).sum() / 7)  # predicted counts


def test_encoder_weights_from_a_local_file(tmp_path):
    from nucdata_models.encoders import build_encoder

    source = build_encoder("resnet18", 3)
    path = tmp_path / "weights.pt"
    state = dict(source.state_dict())
    state["fc.weight"] = torch.zeros(1000, 512)  # an ImageNet classifier: not ours, skipped
    torch.save(state, path)
    loaded = build_encoder("resnet18", 4, weights=path)  # 4 input channels: the stem is skipped too
    assert "fc.weight" in loaded.skipped_weights and "stem.0.weight" in loaded.skipped_weights
    assert torch.equal(loaded.stages[0][0].conv1.weight, source.stages[0][0].conv1.weight)
    x = torch.randn(2, 4, 32, 32)
    assert loaded(x).shape == (2, 512)
