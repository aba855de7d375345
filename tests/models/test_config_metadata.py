"""Every TrainConfig field carries its metadata; reuse keys, recipes and the paper arms derive from it."""

from __future__ import annotations

import dataclasses

import pytest

from nucdata.errors import InvalidArgumentError
from nucdata_models.config import (
    NOT_FIXED,
    PAPER_KEYS,
    RECIPE_DIFFERENCES,
    RUNTIME,
    RUNTIME_KEYS,
    STAGE_C_KEYS,
    STAGES,
    Setting,
    TrainConfig,
    setting,
    settings_of,
    stage_key_config,
)


def test_every_field_has_its_setting():
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata.get("setting")
        assert isinstance(meta, Setting), (
            f"TrainConfig.{f.name} has no metadata: declare it with setting(default, stages=..., key=...)")
        assert meta.stages == RUNTIME or (meta.stages and set(meta.stages) <= set(STAGES)), f.name
    assert list(settings_of(TrainConfig)) == [f.name for f in dataclasses.fields(TrainConfig)]


def test_a_field_without_metadata_is_refused():
    @dataclasses.dataclass
    class Extended(TrainConfig):
        new_switch: bool = False

    with pytest.raises(InvalidArgumentError, match=r"Extended\.new_switch has no Setting metadata"):
        settings_of(Extended)


@pytest.mark.parametrize(("meta", "message"), [
    ({"stages": "AD", "key": True}, "stage letters"),
    ({"stages": RUNTIME, "key": True}, "runtime field cannot change"),
    ({"stages": "ABC", "key": True, "paper": 2}, "say what the authors' code does"),
    ({"stages": "ABC", "key": True, "per_stage": True}, "per_stage needs a dict"),
])
def test_inconsistent_metadata_is_refused(meta, message):
    @dataclasses.dataclass
    class Extended(TrainConfig):
        new_knob: int = setting(1, **meta)

    with pytest.raises(InvalidArgumentError, match=message):
        settings_of(Extended)


def test_the_derived_key_lists_are_the_ones_the_trainer_used_by_hand():
    # the hand lists of train.py before the metadata (commit 2c5f5eb): behaviour unchanged
    # ... plus the calibration that build-merged and the study read after training
    assert set(RUNTIME_KEYS) == {"device", "compile", "eval_batch_size", "score_truth", "unseen_calibration"}
    # ... plus the stage-C fields added since (issue 20: the pass rule, and what it reads)
    assert set(STAGE_C_KEYS) == {"threshold", "pseudo_rule", "pseudo_teacher", "correlation_grad",
                                 "pseudo_select", "pseudo_quantile", "pseudo_outside", "pseudo_posterior"}


def _hand_stage_key(config: TrainConfig, stage: str) -> dict:
    """The stage key's settings as train.py computed them before the metadata."""
    upto = STAGES[: STAGES.index(stage) + 1]
    ignored = ("device", "compile", "eval_batch_size", "score_truth", "unseen_calibration") + (
        ("threshold", "pseudo_rule", "pseudo_teacher", "correlation_grad", "pseudo_select", "pseudo_quantile",
         "pseudo_outside", "pseudo_posterior") if stage != "C" else ()) + (("heads_training",) if stage == "A" else ())
    out = {k: v for k, v in config.to_dict().items() if k not in ignored}
    out["epochs"] = {s: config.epochs[s] for s in upto}
    out["lr"] = {s: config.lr[s] for s in upto}
    return out


@pytest.mark.parametrize("config", [TrainConfig(), TrainConfig.recipe("paper"),
                                    TrainConfig(threshold=0.5, epochs={"A": 1}, device="cpu", compile=True)])
@pytest.mark.parametrize("stage", STAGES)
def test_stage_keys_are_unchanged(config, stage):
    assert stage_key_config(config, stage) == _hand_stage_key(config, stage)


def test_a_stage_key_changes_only_with_what_the_stage_reads():
    base = TrainConfig()
    for name in STAGE_C_KEYS:
        f = TrainConfig.__dataclass_fields__[name]
        other = {"threshold": 0.5, "pseudo_rule": "unrestricted", "pseudo_teacher": "self",
                 "correlation_grad": not f.default, "pseudo_select": "quantile" if f.default == "threshold" else "threshold",
                 "pseudo_quantile": 0.5, "pseudo_outside": "pseudo",
                 "pseudo_posterior": "source" if f.default == "model" else "model"}[name]
        changed = base.replace(**{name: other})
        assert stage_key_config(changed, "B") == stage_key_config(base, "B")
        assert stage_key_config(changed, "C") != stage_key_config(base, "C")
    runtime = base.replace(device="cpu", compile=True, eval_batch_size=3, score_truth=False)
    assert all(stage_key_config(runtime, s) == stage_key_config(base, s) for s in STAGES)
    later = base.replace(epochs={"A": 10, "B": 10, "C": 3})
    assert stage_key_config(later, "B") == stage_key_config(base, "B") != stage_key_config(later, "C")


def test_recipe_differences_derive_from_the_paper_values():
    meta = settings_of(TrainConfig)
    defaults = TrainConfig()
    assert set(RECIPE_DIFFERENCES) == {k for k in PAPER_KEYS if meta[k].paper != getattr(defaults, k)}
    for name, row in RECIPE_DIFFERENCES.items():
        assert set(row) == {"paper", "nucdata", "code", "why"}
        assert row["paper"] == meta[name].paper and row["nucdata"] == getattr(defaults, name)
    # the paper fixes its threshold and cross-teaching to nucdata's values: no difference, but not inherited
    assert {"threshold", "pseudo_teacher"} <= set(PAPER_KEYS) - set(RECIPE_DIFFERENCES)
    assert all(meta[k].paper is NOT_FIXED for k in meta if k not in PAPER_KEYS)
    paper = TrainConfig.recipe("paper")
    assert all(getattr(paper, k) == meta[k].paper for k in PAPER_KEYS)


def test_a_stored_configuration_without_a_newer_field_keeps_the_old_behaviour():
    from nucdata_models.config import SAVED_BEFORE

    old = TrainConfig.from_saved({"epochs": {"A": 1, "B": 0, "C": 0}, "not_a_field": 1})
    assert all(getattr(old, k) == v for k, v in SAVED_BEFORE.items())
    assert not old.background_balance  # a model trained on unbalanced crops is fed unbalanced crops
    new = TrainConfig.from_saved(dataclasses.asdict(TrainConfig(background_balance=True)))
    assert new.background_balance and new.outside_head
