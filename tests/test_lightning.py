"""NucleusLoaders (a DataModule's logic, plain Python) and NucleusDataModule (the `nucdata[lightning]` extra)."""

from __future__ import annotations

import importlib.util
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import demo_home

import nucdata
from nucdata.errors import InvalidArgumentError, MissingDependencyError

ROOT = Path(__file__).resolve().parents[1]
HAS_LIGHTNING = any(importlib.util.find_spec(m) is not None for m in ("lightning", "pytorch_lightning"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    with demo_home(tmp_path_factory.mktemp("home"), ("consep", "monusac")) as home:
        yield home


def _splits():
    return (nucdata.load("consep", split="train", label_set="pannuke"),
            nucdata.load("consep", split="test", label_set="pannuke"))


def test_crops_of_every_split_in_batches(prepared):
    train, test = _splits()
    loaders = nucdata.NucleusLoaders(train=train, val=test, test=lambda: test, view="crops", size=32, batch_size=16,
                                     loader_options={"generator": torch.Generator().manual_seed(0)})
    loaders.setup("fit")
    assert set(loaders.datasets) == {"train", "val"}  # fit needs train and val; test waits for its stage
    batches = list(loaders.train_dataloader())
    assert sum(len(b["label"]) for b in batches) == train.nucleus_rows().size
    assert batches[0]["image"].shape[1:] == (3, 32, 32) and batches[0]["image"].dtype == torch.uint8
    seen = torch.cat([b["label"] for b in batches])
    in_order = torch.cat([b["label"] for b in loaders.loader("train")])
    assert not torch.equal(seen, in_order) and torch.equal(seen.sort().values, in_order.sort().values)
    val = torch.cat([b["label"] for b in loaders.val_dataloader()])
    assert torch.equal(val, torch.cat([b["label"] for b in loaders.val_dataloader()]))  # never shuffled
    assert val.numel() == test.nucleus_rows().size
    assert sum(len(b["label"]) for b in loaders.test_dataloader()) == test.nucleus_rows().size  # the callable
    with pytest.raises(InvalidArgumentError, match="no predict data: pass predict="):
        loaders.predict_dataloader()
    assert "view='crops'" in repr(loaders) and "size=32" in repr(loaders) and "consep" in repr(loaders)


def test_tiles_and_whole_images(prepared):
    train, test = _splits()
    tiles = nucdata.NucleusLoaders(train=nucdata.load_many(["consep", "monusac"], label_set="pannuke"),
                                   view="tiles", size=64, batch_size=4, shuffle_train=False)
    batch = next(iter(tiles.train_dataloader()))
    assert batch["image"].shape[1:] == (3, 64, 64) and batch["type_map"].shape[1:] == (64, 64)
    images = nucdata.NucleusLoaders(val=test, view="images", batch_size=2)
    batch = next(iter(images.val_dataloader()))
    assert len(batch["labels"]) == 2 and isinstance(batch["labels"], list)  # nucleus fields stay lists
    assert batch["image_id"] == [str(n) for n in test.images.name.values[:2]]


def test_bad_settings_say_what_to_pass(prepared):
    train, _ = _splits()
    with pytest.raises(InvalidArgumentError, match="choose one of crops, tiles, images"):
        nucdata.NucleusLoaders(train=train, view="patches")
    with pytest.raises(InvalidArgumentError, match="at least one item"):
        nucdata.NucleusLoaders(train=train, batch_size=0)
    with pytest.raises(InvalidArgumentError, match="not a nucdata dataset"):
        nucdata.NucleusLoaders(train=np.zeros(3)).train_dataloader()
    with pytest.raises(InvalidArgumentError, match="setup"):
        nucdata.NucleusLoaders(train=train).setup("train")


def test_the_extra_is_declared_and_lightning_is_imported_only_when_asked():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("lightning") for r in extras["lightning"])
    assert not any(r.startswith("lightning") for r in extras["test"])  # too heavy for CI
    code = ("import sys, nucdata; nucdata.NucleusDataModule; nucdata.NucleusLoaders; "
            "assert 'lightning' not in sys.modules and 'pytorch_lightning' not in sys.modules")
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(HAS_LIGHTNING, reason="lightning is installed")
def test_without_lightning_the_module_says_how_to_get_it(prepared):
    train, _ = _splits()
    with pytest.raises(MissingDependencyError, match=r"nucdata\[lightning\]") as info:
        nucdata.NucleusDataModule(train=train)
    assert info.value.package == "lightning"


@pytest.mark.skipif(not HAS_LIGHTNING, reason="lightning is not installed (pip install nucdata[lightning])")
def test_a_lightning_datamodule_that_a_trainer_takes(prepared, tmp_path):
    try:
        import lightning.pytorch as pl
    except ImportError:
        import pytorch_lightning as pl
    train, test = _splits()
    dm = nucdata.NucleusDataModule(train=train, val=test, view="crops", size=32, batch_size=32)
    assert isinstance(dm, pl.LightningDataModule) and isinstance(dm, nucdata.NucleusLoaders)
    again = pickle.loads(pickle.dumps(dm))  # what spawned processes receive
    assert type(again) is type(dm) and again.batch_size == 32

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 5))
            self.seen = 0

        def training_step(self, batch, _):
            keep = batch["label"] >= 0
            self.seen += int(batch["label"].numel())
            logits = self.net(batch["image"].float() / 255)
            return torch.nn.functional.cross_entropy(logits[keep], batch["label"][keep]) if keep.any() else \
                logits.sum() * 0

        def validation_step(self, batch, _):
            return None

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    model = Tiny()
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    assert model.seen == train.nucleus_rows().size
