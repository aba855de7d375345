"""Checkpoints: round trip, description beside the weights, refusal of other label sets."""

from __future__ import annotations

import json

import pytest
import torch

from nucdata_models import (
    CheckpointError,
    CheckpointMismatchError,
    CrossTrainer,
    LabelSetSpec,
    load_checkpoint,
)


def test_checkpoint_round_trip(trained, data, tmp_path):
    trainer, _, _ = trained
    path = trainer.save(tmp_path / "model.pt")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert [s["name"] for s in meta["label_sets"]] == data.names
    assert meta["label_sets"][0]["version"] == data.label_sets[0].version
    assert meta["label_sets"][0]["class_names"] == list(data.label_sets[0].class_names)
    assert meta["encoder"] == "small" and meta["crop_size"] == 24 and meta["in_channels"] == 3
    assert "mpp" in meta and meta["config"]["threshold"] == 0.99 and "pannuke" in meta["metrics"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.pt"]  # no temporary files left
    again = CrossTrainer.load(path, data.label_sets, device="cpu")
    x = data.crops[:20]
    expected = trainer.predict(x)
    for s, p in again.predict(x).items():
        assert torch.equal(p.probs, expected[s].probs)


def test_mismatched_label_sets_are_refused(trained, data, tmp_path):
    trainer, _, _ = trained
    path = trainer.save(tmp_path / "model.pt")
    newer = [LabelSetSpec(s.name, "99" if s.name == "monusac" else s.version, s.class_names) for s in data.label_sets]
    with pytest.raises(CheckpointMismatchError, match=r"model\.pt: label set 'monusac': expected version 99, found"):
        CrossTrainer.load(path, newer)
    renamed = [LabelSetSpec(s.name, s.version, s.class_names[::-1]) if s.name == "nucls" else s for s in data.label_sets]
    with pytest.raises(CheckpointMismatchError, match=r"'nucls'.*expected classes.*Retrain"):
        load_checkpoint(path, renamed)
    with pytest.raises(CheckpointMismatchError, match=r"trained for label sets .*missing|not asked for"):
        CrossTrainer.load(path, data.label_sets[:2])
    with pytest.raises(CheckpointMismatchError, match="another order"):
        CrossTrainer.load(path, data.label_sets[::-1])


def test_unreadable_checkpoints_are_typed_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(bad)


def test_predict_refuses_crops_of_another_channel_count(trained, data):
    trainer, _, _ = trained
    with pytest.raises(ValueError, match="uint8"):
        trainer.predict(torch.zeros(2, 4, 24, 24, dtype=torch.uint8))
