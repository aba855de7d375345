"""Fixtures for nucdata_models: tiny generated data and one trained model (CPU, small encoder)."""

from __future__ import annotations

import pytest
import torch

from nucdata_models import CrossTrainer, TrainConfig
from nucdata_models.study.synthetic import make_synthetic_data

torch.set_num_threads(2)

EPOCHS = {"A": 4, "B": 3, "C": 3}


def small_config(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": dict(EPOCHS), "batch_size": 64, "seed": 3, "device": "cpu", **kw})


@pytest.fixture(scope="session")
def config_factory():
    """Make the small CPU configuration, with overrides."""
    return small_config


@pytest.fixture(scope="session")
def data():
    return make_synthetic_data(per_dataset=120, size=24, seed=1)


@pytest.fixture(scope="session")
def trained(data, tmp_path_factory):
    trainer = CrossTrainer(small_config())
    workdir = tmp_path_factory.mktemp("stages")
    result = trainer.fit(data, workdir=workdir)
    return trainer, result, workdir
