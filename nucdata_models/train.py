"""Correlation-based cross-training: stages A, B and C, and inference.

* **A, base module** — shared encoder, one head per label set, per-set softmax. The loss
  is the partial-label loss on every set where the nucleus has information: exact
  labels (one candidate) and, going beyond the paper, ambiguous mappings (several
  candidates). A set is never trained on nuclei outside it.
* **B, correlation modules** — per set, an MLP predicting it from the other sets'
  (detached) probabilities of the frozen base module.
* **C, cross-training** — both modules train jointly: supervised as in A and B, and each
  learns from the other's confident predictions (> ``threshold``) on the sets where a
  nucleus's label is missing, unlabelled datasets included; pseudo labels respect the
  candidate sets and never touch nuclei outside a set. Pseudo-label counts are logged
  per set and epoch.
* **Inference** — the mean of the two modules' probabilities; per nucleus and set the
  class, its probability and the full vector.

Runs on the GPU with the crop bank resident on the device, augmentation on the device,
bf16 autocast and channels-last; ``torch.compile`` on request; DistributedDataParallel
when launched by ``torchrun``; everything also runs on the CPU.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .augment import augment, prepare
from .checkpoint import label_set_meta, load_checkpoint, save_checkpoint
from .data import TrainingData, candidate_mask
from .losses import partial_label_loss, pseudo_labels
from .metrics import classification_metrics
from .model import BaseModel, CorrelationHeads

STAGES = ("A", "B", "C")


@dataclass
class TrainConfig:
    """Hyperparameters; defaults follow the reference (Adam, lr 1e-3 / 1e-3 / 1e-4, wd 1e-4)."""

    encoder: str = "small"
    weights: str | None = None
    epochs: dict[str, int] = field(default_factory=lambda: {"A": 10, "B": 10, "C": 10})
    batch_size: int = 128
    lr: dict[str, float] = field(default_factory=lambda: {"A": 1e-3, "B": 1e-3, "C": 1e-4})
    weight_decay: float = 1e-4
    threshold: float = 0.99
    grad_clip: float = 10.0
    augment: bool = True
    device: str = "auto"
    seed: int = 0
    bf16: bool = True  # on CUDA only
    channels_last: bool = True
    compile: bool = False
    eval_batch_size: int = 1024

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Prediction:
    """Per nucleus under one label set: class, its probability and the full vector."""

    label: torch.Tensor
    probability: torch.Tensor
    probs: torch.Tensor


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    metrics: dict[str, dict[str, dict[str, float]]]  # stage -> set -> metric -> value
    seconds: dict[str, float]
    device: str


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _distributed() -> tuple[int, int]:
    """(rank, world size) under torchrun, initialising the process group once."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


class CrossTrainer:
    """Trains the base and correlation modules on :class:`TrainingData` and predicts."""

    def __init__(self, config: TrainConfig | None = None):
        self.config = config or TrainConfig()
        self.device = resolve_device(self.config.device)
        self.rank, self.world = _distributed()
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        self.base: BaseModel | None = None
        self.heads: CorrelationHeads | None = None
        self.label_sets: list = []
        self.in_channels = 3
        self.crop_size = 0

    # -- set-up ------------------------------------------------------------------------
    def _build(self, data: TrainingData) -> None:
        torch.manual_seed(self.config.seed)
        self.label_sets = list(data.label_sets)
        self.in_channels = int(data.crops.shape[1])
        self.crop_size = int(data.crops.shape[-1])
        self.base = BaseModel(self.label_sets, self.config.encoder, self.in_channels, self.config.weights).to(self.device)
        self.heads = CorrelationHeads(self.label_sets).to(self.device)
        if self.config.channels_last and self.device.type == "cuda":
            self.base = self.base.to(memory_format=torch.channels_last)

    def _autocast(self):
        enabled = self.config.bf16 and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _inputs(self, crops: torch.Tensor, train: bool, generator: torch.Generator | None) -> torch.Tensor:
        x = augment(crops, generator) if (train and self.config.augment) else prepare(crops)
        if self.config.channels_last and self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _batches(self, index: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        order = index[torch.randperm(index.numel(), generator=generator, device=index.device)]
        if self.world > 1:  # each rank takes its own stride; equal lengths keep DDP in step
            order = order[: order.numel() // self.world * self.world][self.rank :: self.world]
        b = self.config.batch_size
        return [order[i : i + b] for i in range(0, order.numel(), b) if order[i : i + b].numel() > 1]

    def _forward_base(self, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with self._autocast():
            out = model(x)
        return {k: v.float() for k, v in out.items()}

    def _wrap(self, module: nn.Module) -> nn.Module:
        if self.config.compile:
            module = torch.compile(module)
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            if self.device.type == "cuda":  # batch statistics over every rank's share
                module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
            module = nn.parallel.DistributedDataParallel(module, device_ids=ids)
        return module

    # -- training ----------------------------------------------------------------------
    def fit(
        self,
        data: TrainingData,
        workdir: str | os.PathLike[str] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> TrainResult:
        """Run stages A, B and C; a finished stage's checkpoint in ``workdir`` is reused."""
        say = progress or (lambda _m: None)
        self._build(data)
        crops = data.crops.to(self.device)  # the whole bank lives on the device
        labels = {k: v.to(self.device) for k, v in data.labels.items()}
        cands = {k: v.to(self.device) for k, v in data.candidates.items()}
        train_idx = torch.nonzero(data.split.to(self.device) == 0).flatten()
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.config.seed)
        history: list[dict[str, Any]] = []
        metrics: dict[str, dict[str, dict[str, float]]] = {}
        seconds: dict[str, float] = {}
        folder = Path(workdir) if workdir is not None else None
        for stage in STAGES:
            ckpt = folder / f"stage_{stage}.pt" if folder else None
            if ckpt is not None and ckpt.is_file() and self._resume(ckpt, stage):
                say(f"stage {stage}: reusing {ckpt}")
                meta = load_checkpoint(ckpt, self.label_sets)[1]
                history += meta.get("history", [])
                metrics[stage] = meta.get("metrics", {})
                seconds[stage] = meta.get("seconds", 0.0)
                continue
            start = time.perf_counter()
            run = {"A": self._stage_a, "B": self._stage_b, "C": self._stage_c}[stage]
            stage_history = run(crops, labels, cands, train_idx, generator, say)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            seconds[stage] = time.perf_counter() - start
            metrics[stage] = self.evaluate(data, stage)
            history += stage_history
            say(f"stage {stage}: {seconds[stage]:.1f} s; validation " + ", ".join(
                f"{k} acc {v['accuracy']:.3f}" for k, v in metrics[stage].items() if v["count"]))
            if ckpt is not None and self.rank == 0:
                self.save(ckpt, extra={"stage": stage, "history": stage_history, "metrics": metrics[stage],
                                       "seconds": seconds[stage]})
        return TrainResult(history, metrics, seconds, str(self.device))

    def _resume(self, ckpt: Path, stage: str) -> bool:
        state, meta = load_checkpoint(ckpt, self.label_sets, map_location=self.device)
        if meta.get("config") != self.config.to_dict() or meta.get("stage") != stage:
            return False
        self.base.load_state_dict(state["base"])
        self.heads.load_state_dict(state["heads"])
        return True

    def _optimiser(self, params, stage: str) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=self.config.lr[stage], weight_decay=self.config.weight_decay)

    def _step(self, optimiser: torch.optim.Optimizer, loss: torch.Tensor, params) -> None:
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        optimiser.step()

    def _epochs(self, stage: str, modules: list[nn.Module], params: list, train_idx: torch.Tensor,
                generator: torch.Generator, say: Callable[[str], None],
                batch_loss: Callable[[torch.Tensor], torch.Tensor | None],
                pseudo: dict[str, int] | None = None) -> list[dict[str, Any]]:
        """The loop every stage shares: batches, loss, clipped Adam step, one log row per epoch."""
        optimiser = self._optimiser(params, stage)
        history = []
        for epoch in range(self.config.epochs[stage]):
            for module in modules:
                module.train()
            if pseudo is not None:
                pseudo.update(dict.fromkeys(pseudo, 0))
            total, steps, seen, t = 0.0, 0, 0, time.perf_counter()
            for idx in self._batches(train_idx, generator):
                loss = batch_loss(idx)
                if loss is None:
                    continue
                self._step(optimiser, loss, params)
                total += float(loss.detach())
                steps += 1
                seen += idx.numel()
            history.append(self._log(stage, epoch, total, steps, seen, t, say,
                                     pseudo=dict(pseudo) if pseudo is not None else None))
        return history

    @staticmethod
    def _mean(terms: list[tuple[torch.Tensor, int]]) -> torch.Tensor | None:
        """Mean of the terms that had nuclei; the empty ones (zero, but connected to their
        head) are added so that every parameter takes part in every step, which keeps
        DistributedDataParallel ranks in step."""
        used = [loss for loss, count in terms if count]
        idle = [loss for loss, count in terms if not count]
        if not terms:
            return None
        zero = torch.stack(idle).sum() if idle else 0.0
        return (torch.stack(used).mean() if used else 0.0) + zero

    def _stage_a(self, crops, labels, cands, train_idx, generator, say) -> list[dict[str, Any]]:
        base = self._wrap(self.base)

        def batch_loss(idx: torch.Tensor) -> torch.Tensor | None:
            logits = self._forward_base(base, self._inputs(crops[idx], True, generator))
            return self._mean([partial_label_loss(logits[s], cands[s][idx]) for s in self.base.names])

        return self._epochs("A", [base], list(self.base.parameters()), train_idx, generator, say, batch_loss)

    def _stage_b(self, crops, labels, cands, train_idx, generator, say) -> list[dict[str, Any]]:
        self.base.eval()  # frozen: its probabilities feed the correlation modules
        heads = self._wrap(self.heads)

        def batch_loss(idx: torch.Tensor) -> torch.Tensor | None:
            with torch.no_grad():
                logits = self._forward_base(self.base, self._inputs(crops[idx], True, generator))
            out = heads({k: v.softmax(1) for k, v in logits.items()})
            return self._mean([partial_label_loss(out[s], cands[s][idx]) for s in self.heads.names])

        return self._epochs("B", [heads], list(self.heads.parameters()), train_idx, generator, say, batch_loss)

    def _stage_c(self, crops, labels, cands, train_idx, generator, say) -> list[dict[str, Any]]:
        base, heads = self._wrap(self.base), self._wrap(self.heads)
        threshold = self.config.threshold
        passed = dict.fromkeys(self.base.names, 0)

        def batch_loss(idx: torch.Tensor) -> torch.Tensor | None:
            logits = self._forward_base(base, self._inputs(crops[idx], True, generator))
            probs = {k: v.softmax(1) for k, v in logits.items()}
            out = heads({k: v.detach() for k, v in probs.items()})
            terms = []
            for s in self.base.names:
                c, lab = cands[s][idx], labels[s][idx]
                from_heads = pseudo_labels(out[s].softmax(1), c, lab, threshold)
                from_base = pseudo_labels(probs[s], c, lab, threshold)
                terms += [partial_label_loss(logits[s], c), partial_label_loss(out[s], c),
                          partial_label_loss(logits[s], from_heads), partial_label_loss(out[s], from_base)]
                passed[s] += int((from_heads != 0).sum()) + int((from_base != 0).sum())
            return self._mean(terms)

        params = list(self.base.parameters()) + list(self.heads.parameters())
        return self._epochs("C", [base, heads], params, train_idx, generator, say, batch_loss, pseudo=passed)

    def _log(self, stage: str, epoch: int, total: float, steps: int, seen: int, t: float,
             say: Callable[[str], None], pseudo: dict[str, int] | None = None) -> dict[str, Any]:
        seconds = time.perf_counter() - t
        row = {"stage": stage, "epoch": epoch + 1, "loss": total / max(steps, 1), "nuclei": seen,
               "seconds": seconds, "nuclei_per_s": seen / max(seconds, 1e-9)}
        text = f"stage {stage} epoch {epoch + 1}: loss {row['loss']:.4f}, {row['nuclei_per_s']:,.0f} nuclei/s"
        if pseudo is not None:
            row["pseudo_labels"] = pseudo
            text += "; pseudo labels " + ", ".join(f"{k} {v}" for k, v in pseudo.items())
        say(text)
        return row

    # -- inference ---------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, crops: torch.Tensor, candidates: dict[str, torch.Tensor] | None = None,
                modules: str = "both") -> dict[str, Prediction]:
        """Predict every nucleus under every label set, in batches.

        ``modules`` is ``"both"`` (the method's rule: mean of the two modules),
        ``"base"`` or ``"heads"``. With ``candidates``, nuclei whose mapping is ambiguous
        get a class among their candidates.
        """
        self.base.eval()
        self.heads.eval()
        results: dict[str, list[torch.Tensor]] = {s: [] for s in self.base.names}
        b = self.config.eval_batch_size
        for start in range(0, crops.shape[0], b):
            x = self._inputs(crops[start : start + b].to(self.device), False, None)
            base_p = {k: v.softmax(1) for k, v in self._forward_base(self.base, x).items()}
            head_p = {k: v.float().softmax(1) for k, v in self.heads(base_p).items()}
            for s in self.base.names:
                p = {"both": (base_p[s] + head_p[s]) / 2, "base": base_p[s], "heads": head_p[s]}[modules]
                results[s].append(p.float().cpu())
        out = {}
        for s, parts in results.items():
            probs = torch.cat(parts) if parts else torch.zeros(0, 0)
            choose = probs
            if candidates is not None and probs.numel():
                c = candidates[s].cpu()
                mask = candidate_mask(c, probs.shape[1])
                choose = torch.where((c != 0)[:, None], probs * mask, probs)
            label = choose.argmax(1) if probs.numel() else torch.zeros(0, dtype=torch.int64)
            probability = probs.gather(1, label[:, None])[:, 0] if probs.numel() else torch.zeros(0)
            out[s] = Prediction(label, probability, probs)
        return out

    def evaluate(self, data: TrainingData, stage: str) -> dict[str, dict[str, float]]:
        """Metrics per label set on validation nuclei with an exact label in that set."""
        modules = {"A": "base", "B": "heads", "C": "both"}[stage]
        val = torch.nonzero(data.split == 1).flatten()
        if val.numel() == 0:
            return {s.name: classification_metrics(np.zeros(0), np.zeros(0), s.size) for s in data.label_sets}
        preds = self.predict(data.crops[val], {k: v[val] for k, v in data.candidates.items()}, modules)
        result = {}
        for spec in data.label_sets:
            truth = data.labels[spec.name][val].numpy()
            known = truth >= 0
            result[spec.name] = classification_metrics(truth[known], preds[spec.name].label.numpy()[known], spec.size)
        return result

    # -- checkpoints -------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
        meta = {
            "label_sets": label_set_meta(self.label_sets), "encoder": self.config.encoder,
            "in_channels": self.in_channels, "crop_size": self.crop_size, "config": self.config.to_dict(),
            **(extra or {}),
        }
        return save_checkpoint(path, {"base": self.base.state_dict(), "heads": self.heads.state_dict()}, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str], label_sets: list, device: str = "auto") -> CrossTrainer:
        """A trainer ready to predict, from a checkpoint checked against ``label_sets``."""
        state, meta = load_checkpoint(path, label_sets)
        config = TrainConfig(**{k: v for k, v in meta["config"].items() if k in TrainConfig.__dataclass_fields__})
        config.device = device
        trainer = cls(config)
        trainer.label_sets = list(label_sets)
        trainer.in_channels = meta["in_channels"]
        trainer.crop_size = meta["crop_size"]
        trainer.base = BaseModel(trainer.label_sets, meta["encoder"], trainer.in_channels).to(trainer.device)
        trainer.heads = CorrelationHeads(trainer.label_sets).to(trainer.device)
        trainer.base.load_state_dict(state["base"])
        trainer.heads.load_state_dict(state["heads"])
        trainer.meta = meta
        return trainer
