"""Correlation-based cross-training: stages A, B and C, and inference.

* **A, base module** — shared encoder, one head per label set, per-set softmax. The loss
  is the partial-label loss on every set where the nucleus has information: exact
  labels (one candidate) and, going beyond the paper, ambiguous mappings (several
  candidates, ``-log`` of their probability mass). A set is never trained on nuclei
  outside it (-2).
* **B, correlation modules** — per set k, an MLP predicting k from the other sets'
  outputs of the frozen base module: detached probabilities by default
  (``correlation_input="logits"`` gives the reference's raw logits).
* **C, cross-training** — both modules train jointly: supervised as in A and B, and each
  learns from the other's confident predictions (> ``threshold``) on the sets where a
  nucleus's label is missing, unlabelled datasets included. Pseudo labels are drawn
  among a nucleus's candidates when it has some, never for nuclei outside a set, and
  counted per set and epoch. The loss is the mean of the supervised terms plus the mean
  of the pseudo-label terms, each over the terms that had nuclei (the reference also
  averages in zeros for sets absent from the batch).
* **Inference** — the mean of the two modules' probabilities; per nucleus and set the
  class, its probability and the full vector.

On CUDA the whole uint8 crop bank is moved to the device once; batches are index
gathers into it, augmented on the device (:mod:`.augment`), under bf16 autocast and
channels-last; the step has no host synchronisation (losses and pseudo-label counts
accumulate on the device and are read once per epoch). ``torch.compile`` on request;
DistributedDataParallel when launched by ``torchrun`` (``WORLD_SIZE`` > 1), each rank
taking an equal share of every epoch's permutation. Everything also runs on the CPU,
where a fixed ``seed`` gives bit-identical runs.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nucdata._util.progress import progress
from nucdata.errors import DeviceUnavailableError, InvalidArgumentError, ModelStateError
from nucdata_models.augment import augmented_inputs, prepare
from nucdata_models.checkpoint import (
    CheckpointError,
    label_set_meta,
    load_checkpoint,
    save_checkpoint,
)
from nucdata_models.config import (
    MODULES_OF_STAGE,
    RECIPE_DIFFERENCES,
    RECIPES,
    STAGES,
    TrainConfig,
    stage_key_config,
)
from nucdata_models.data import (
    ANNOTATED,
    OUTSIDE,
    LabelSetSpec,
    TrainingData,
    candidate_mask,
    source_rows,
    training_targets,
    without_dataset,
)
from nucdata_models.fill import fill_labels, score_filled, scored_class
from nucdata_models.losses import (
    TableErrorSettings,
    TransitionEstimate,
    partial_label_loss,
    pseudo_choice,
    pseudo_labels,
    soft_label_loss,
)
from nucdata_models.metrics import classification_metrics
from nucdata_models.model import LOGIT_CLAMP, BaseModel, CorrelationHeads

__all__ = ["RECIPES", "RECIPE_DIFFERENCES", "STAGES", "CrossTrainer", "Prediction", "Predictions", "Stage",
           "TrainConfig", "TrainResult", "held_out_dataset_probs", "labelled_datasets", "recolour", "resolve_device",
           "stain_swap_outside_rate", "unseen_probs"]




@dataclass
class Prediction:
    """Per nucleus under one label set: class, its probability and the full vector."""

    label: torch.Tensor        # int64 (N,)
    probability: torch.Tensor  # float32 (N,)
    probs: torch.Tensor        # float32 (N, K)


Predictions = dict[str, Prediction]


@dataclass
class TrainResult:
    """What :meth:`CrossTrainer.fit` returns.

    Attributes
    ----------
    history
        One row per stage and epoch: ``stage``, ``epoch``, ``loss``, ``nuclei``,
        ``seconds``, ``nuclei_per_s`` and, in stage C, ``pseudo_labels`` (per set, how
        many passed the threshold in that epoch, both directions summed).
    metrics
        Stage -> set -> validation metrics (nuclei with a known label, ``split == 1``):
        count, accuracy, macro F1, weighted F1 (true counts) and the swapped variant.
    seconds
        Stage -> training seconds (a reused stage reports its original time).
    device
        Where it ran.
    filled
        Stage -> set -> metrics of the filled labels against ``data.truth`` (nuclei
        whose label is missing but whose truth is known); empty without truth.
    reused
        Stages taken from the checkpoint directory instead of trained. A stage with 0
        epochs neither trains nor is validated: it has no entry in ``metrics``,
        ``seconds`` or ``filled``.
    pseudo_labels
        One row per stage-C epoch and label set: ``stage``, ``epoch``, ``label_set``,
        ``offered`` (eligible (nucleus, teacher) pairs the epoch's batches held: a nucleus
        without a target, or with an ambiguous one, counted once per teaching module),
        ``passed`` (pseudo labels that passed the rule), ``precision`` (share of the
        passed ones equal to ``data.truth``, among those whose truth is known; ``None``
        without truth) and ``accuracy_before`` (on the same passed pseudo labels, the
        share whose nucleus the model at the end of stage B, both modules, candidates
        restricted as the rule restricts them, already put in the true class: what
        stage C must beat); ``by_teacher`` splits ``offered``/``passed`` by teacher
        (``heads`` teaches the base module, ``base`` the heads; ``self`` for plain
        self-training).
    transition
        The candidate-set likelihood's estimate at the end of training
        (``candidate_likelihood="transition"``): per label set, per source dataset,
        ``{"columns": [class names..., "outside"], "rows": [{"source_class", "source",
        "candidates", "nuclei"}], "matrix": [[T[s, c]]], "counts": [[n[s, c]]],
        "prior": a}``; ``matrix[r][c] = P(row r | class c)`` within the dataset (each
        column sums to 1 over the rows that may name the class, 0 off a row's
        candidates), ``counts`` the last E-step's soft counts (training nuclei of the
        row whose posterior went to each class). Empty with ``"uniform"``.
    """

    history: list[dict[str, Any]]
    metrics: dict[str, dict[str, dict[str, float]]]
    seconds: dict[str, float]
    device: str
    filled: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    pseudo_labels: list[dict[str, Any]] = field(default_factory=list)
    transition: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return dataclasses.asdict(self)

    def __repr__(self) -> str:
        """One short line per part: stages with their time, the last validation macro F1, stage C."""
        stages = ", ".join(f"{k} {v:.1f} s" + (" (reused)" if k in self.reused else "")
                           for k, v in self.seconds.items()) or "none"
        lines = [f"TrainResult on {self.device}: stages {stages}"]
        if self.metrics:
            last = list(self.metrics)[-1]
            f1 = ", ".join(f"{s} {m.get('macro_f1', float('nan')):.3f}" for s, m in self.metrics[last].items())
            lines.append(f"  validation macro F1 after stage {last}: {f1}")
        if self.pseudo_labels:
            offered = sum(int(r.get("offered") or 0) for r in self.pseudo_labels)
            passed = sum(int(r.get("passed") or 0) for r in self.pseudo_labels)
            lines.append(f"  stage C pseudo labels: {passed:,} passed of {offered:,} offered")
        if self.transition:
            lines.append(f"  transition estimate for {', '.join(self.transition)}")
        return "\n".join(lines)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(f"device {name!r} asked for, but torch sees no CUDA device; use device='auto' "
                                     "or 'cpu'")
    return device


def _end_process_group() -> None:
    """At exit: wait for every rank, then tear the group we started down (a process that exits
    with its gloo threads running aborts: "terminate called without an active exception")."""
    if torch.distributed.is_initialized():
        try:
            torch.distributed.barrier()
        finally:
            torch.distributed.destroy_process_group()


def _distributed() -> tuple[int, int]:
    """(rank, world size) under torchrun, initialising the process group once."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        atexit.register(_end_process_group)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


@dataclass
class _Bank:
    """The training data, resident on the device."""

    crops: torch.Tensor
    targets: dict[str, torch.Tensor]  # training target bitmasks over K (+ outside) outputs
    allowed: dict[str, torch.Tensor]  # outputs a pseudo label may take; 0 = none
    train_index: torch.Tensor
    truth: dict[str, torch.Tensor] = field(default_factory=dict)  # as output indices (outside = K), -1 unknown
    annotated: dict[str, torch.Tensor] = field(default_factory=dict)  # own dataset's annotation in the set
    balance: dict[str, torch.Tensor] = field(default_factory=dict)  # per-nucleus loss weight (source_balance)


@dataclass
class Stage:
    """One stage's trainable modules, optimiser and batch loss (see :meth:`CrossTrainer.stage`).

    ``step(idx)`` runs one optimisation step on the nuclei ``idx`` (a device tensor of
    bank rows) and returns the loss as a device tensor, without synchronising.
    """

    name: str
    modules: list[nn.Module]
    params: list[nn.Parameter]
    optimiser: torch.optim.Optimizer
    loss: Callable[[torch.Tensor], torch.Tensor]
    grad_clip: float
    pseudo: dict[str, torch.Tensor] | None = None
    before_epoch: Callable[[int], None] | None = None
    teachers: tuple[str, ...] = ()
    teacher_counts: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)

    def train(self) -> None:
        for module in self.modules:
            module.train()

    def step(self, idx: torch.Tensor) -> torch.Tensor:
        loss = self.loss(idx)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimiser.step()
        return loss.detach()


class CrossTrainer:
    """Trains the base and correlation modules on :class:`TrainingData` and predicts.

    Parameters
    ----------
    config
        Hyperparameters and run settings; defaults when ``None``.

    Examples
    --------
    >>> trainer = CrossTrainer(TrainConfig(epochs={"A": 5, "B": 5, "C": 5}))  # doctest: +SKIP
    >>> result = trainer.fit(data, workdir="runs/x", progress=print)          # doctest: +SKIP
    >>> predictions = trainer.predict(data.crops, data.candidates)           # doctest: +SKIP
    >>> predictions["pannuke"].label, predictions["pannuke"].probability     # doctest: +SKIP
    """

    def __init__(self, config: TrainConfig | None = None):
        self.config = config or TrainConfig()
        self.device = resolve_device(self.config.device)
        self.rank, self.world = _distributed()
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        self.base: BaseModel | None = None
        self.heads: CorrelationHeads | None = None
        self.label_sets: list[LabelSetSpec] = []
        self.in_channels = 3
        self.crop_size = 0
        self.mpp: float | None = None
        self.metrics: dict[str, dict[str, dict[str, float]]] = {}
        self.meta: dict[str, Any] = {}
        self._bank: _Bank | None = None
        self.generator: torch.Generator | None = None
        #: Per label set, the candidate-set likelihood's transition estimate (set up by :meth:`setup`).
        self.transitions: dict[str, TransitionEstimate] = {}
        #: Per label set, a loaded checkpoint's estimate (:meth:`transition_rows`' form).
        self.stored_transitions: dict[str, dict[str, list]] = {}
        #: Hook for calibrated pseudo-label confidence: ``(label_set, teacher, probabilities) ->
        #: probabilities`` applied to a teacher's softmax before the pass rule (``None``: as is).
        self.pseudo_confidence: Callable[[str, str, torch.Tensor], torch.Tensor] | None = None
        self._sources: tuple[list[str], dict[str, dict[int, str]]] = ([], {})
        self._pre_c: dict[str, torch.Tensor] = {}
        self._thresholds: dict[tuple[str, str], torch.Tensor] = {}

    # -- set-up ------------------------------------------------------------------------
    def build(self, label_sets: list[LabelSetSpec], in_channels: int, crop_size: int,
              weights: str | os.PathLike[str] | None = None) -> None:
        """Create fresh modules (seeded) for these label sets and crops."""
        torch.manual_seed(self.config.seed)
        self.label_sets = list(label_sets)
        self.in_channels = int(in_channels)
        self.crop_size = int(crop_size)
        outside = self.config.outside_head
        clamp = self.config.logit_clamp == "everywhere"
        self.base = BaseModel(self.label_sets, self.config.encoder, self.in_channels, weights, outside,
                              clamp).to(self.device)
        self.heads = CorrelationHeads(self.label_sets, self.config.hidden, outside, clamp).to(self.device)
        if self._channels_last:
            self.base = self.base.to(memory_format=torch.channels_last)

    def setup(self, data: TrainingData) -> None:
        """Build the modules and move the data to the device (once, as one uint8 bank)."""
        crops = self.channels_of(data.crops)
        self.build(data.label_sets, crops.shape[1], crops.shape[-1], self.config.weights)
        self.mpp = data.mpp
        dev = self.device
        crops = crops.to(dev, non_blocking=True)
        targets, allowed = {}, {}
        for spec in data.label_sets:
            t, a = training_targets(data.labels[spec.name], data.candidates[spec.name], data.provenance[spec.name],
                                    spec.size, self.config.mapped_labels, self.config.outside_head,
                                    self.config.pseudo_outside)
            targets[spec.name], allowed[spec.name] = t.to(dev), a.to(dev)
        annotated = {spec.name: (data.provenance[spec.name] == ANNOTATED).to(dev) for spec in data.label_sets}
        training = data.split.to(dev) == 0
        if self.config.drop_unclassified:
            training &= ~unclassified(data).to(dev)
        train_index = torch.nonzero(training).flatten()
        truth = {}
        for spec in data.label_sets:
            t = data.truth.get(spec.name)
            if t is not None:
                t = t.to(dev)
                truth[spec.name] = torch.where(t == OUTSIDE, torch.full_like(t, spec.size),
                                               torch.where(t >= 0, t, torch.full_like(t, -1)))
        balance = {}
        if self.config.source_balance != "nucleus":
            for spec in data.label_sets:
                own = annotated[spec.name] if self.config.source_balance == "foreign" else None
                balance[spec.name] = source_balance_weights(targets[spec.name], data.dataset_index.to(dev),
                                                            train_index, own)
        self._bank = _Bank(crops, targets, allowed, train_index, truth, annotated, balance)
        self.transitions = {}
        if self.config.candidate_likelihood == "transition" and self.config.mapped_labels == "candidates":
            outside = int(self.config.outside_head)
            for spec in data.label_sets:
                rows = source_rows(targets[spec.name], data.provenance[spec.name].to(dev), data.dataset_index.to(dev),
                                   data.source_class.to(dev))
                if len(rows):
                    self.transitions[spec.name] = TransitionEstimate(rows, spec.size + outside,
                                                                     self.config.transition_prior, train_index,
                                                                     TableErrorSettings.from_config(self.config),
                                                                     bool(outside))
        self._sources = (list(data.dataset_names), {k: dict(v) for k, v in data.source_names.items()})
        self._pre_c: dict[str, torch.Tensor] = {}
        self._thresholds: dict[tuple[str, str], torch.Tensor] = {}
        self.generator = torch.Generator(device=dev)
        self.generator.manual_seed(self.config.seed)

    @property
    def _channels_last(self) -> bool:
        return self.config.channels_last and self.device.type == "cuda"

    def autocast(self):
        """bf16 autocast on CUDA when configured (a no-op context elsewhere)."""
        enabled = self.config.bf16 and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def channels_of(self, crops: torch.Tensor) -> torch.Tensor:
        """The crop channels this configuration feeds: RGB, plus the mask if asked and present."""
        return crops if self.config.mask_channel else crops[:, :3]

    def inputs(self, crops: torch.Tensor, train: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 crops (on the device) to network input, augmented when ``train`` (with ``generator``'s draws,
        default the trainer's)."""
        if train and self.config.augment:
            c = self.config
            x = augmented_inputs(crops, generator or self.generator, c.jitter, c.blur_p, c.stain_jitter,
                                 c.scale_jitter, c.blur_sigma, c.jitter_rule, c.background_balance)
        else:
            x = prepare(crops, self.config.background_balance)
        size = self.config.input_size
        if size is not None and size != x.shape[-1]:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _forward_base(self, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.autocast():
            out = model(x)
        return {k: v.float() for k, v in out.items()}

    def _head_inputs(self, logits: dict[str, torch.Tensor], detach: bool) -> dict[str, torch.Tensor]:
        if self.config.correlation_input == "logits":
            feed = logits
        else:
            feed = {k: v.softmax(1) for k, v in logits.items()}
        return {k: v.detach() for k, v in feed.items()} if detach else feed

    def _wrap(self, module: nn.Module) -> nn.Module:
        if (self.world > 1 and self.device.type == "cuda"  # batch statistics over every rank's share
                and not any(isinstance(m, nn.SyncBatchNorm) for m in module.modules())):
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        if self.config.compile:
            module = torch.compile(module)
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            module = nn.parallel.DistributedDataParallel(module, device_ids=ids)
        return module

    def batches(self, index: torch.Tensor) -> list[torch.Tensor]:
        """One epoch's batches of bank rows: a seeded permutation, this rank's share."""
        order = index[torch.randperm(index.numel(), generator=self.generator, device=index.device)]
        if self.world > 1:  # each rank takes its own stride; equal lengths keep DDP in step
            order = order[: order.numel() // self.world * self.world][self.rank :: self.world]
        b = self.config.batch_size
        n = order.numel()
        if self.config.drop_last and n >= b:
            n = n // b * b
        return [order[i : i + b] for i in range(0, n, b) if min(b, n - i) > 1]

    # -- the three stages --------------------------------------------------------------
    def stage(self, name: str) -> Stage:
        """The trainable modules, optimiser and batch loss of stage ``name``.

        Call :meth:`setup` first. Used by :meth:`fit` and by the throughput benchmark,
        so both time the same code.
        """
        if self._bank is None or self.base is None or self.heads is None:
            raise ModelStateError(f"CrossTrainer.stage({name!r}): no data on the device; call setup(data) first")
        bank, names = self._bank, self.base.names
        lr = self.config.lr[name]

        def optimiser(params: list[nn.Parameter]) -> torch.optim.Optimizer:
            return torch.optim.Adam(params, lr=lr, weight_decay=self.config.weight_decay)

        every_term = self.config.loss_mean == "all"

        def mean(terms: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
            # Mean over the terms that had nuclei ("present") or over all of them
            # ("all", the reference). Empty terms are 0 but stay in the graph, so every
            # parameter takes part in every step (DDP stays in step).
            if every_term:
                return torch.stack([loss for loss, _ in terms]).mean()
            used = torch.stack([(c > 0).float() for _, c in terms]).sum()
            return torch.stack([loss for loss, _ in terms]).sum() / used.clamp_min(1)

        transitions = self.transitions
        supervised_loss = self._supervised_loss

        def e_step(s: str, idx: torch.Tensor, probabilities: torch.Tensor) -> None:
            if s in transitions:
                transitions[s].accumulate(idx, probabilities)

        if name == "A":
            base = self._wrap(self.base)

            clamp_here = self.config.logit_clamp == "stage_a_loss"
            per_nucleus = self.config.supervised_weighting == "nucleus"

            def loss_a(idx: torch.Tensor) -> torch.Tensor:
                logits = self._forward_base(base, self.inputs(bank.crops[idx], True))
                if clamp_here:  # the reference clamps inside its stage-A loss only
                    logits = {k: v.clamp(-LOGIT_CLAMP, LOGIT_CLAMP) for k, v in logits.items()}
                for s in names:
                    e_step(s, idx, logits[s].softmax(1))
                terms = [supervised_loss(logits[s], s, idx) for s in names]
                if per_nucleus:  # every nucleus's loss summed, over the batch size (the reference)
                    return torch.stack([loss * count for loss, count in terms]).sum() / idx.numel()
                return mean(terms)

            params = list(self.base.parameters())
            return Stage("A", [base], params, optimiser(params), loss_a, self.config.grad_clip)

        if name == "B":
            heads = self._wrap(self.heads)
            base = self.base

            def loss_b(idx: torch.Tensor) -> torch.Tensor:
                base.eval()  # frozen: its outputs feed the correlation modules
                with torch.no_grad():
                    logits = self._forward_base(base, self.inputs(bank.crops[idx], True))
                out = heads(self._head_inputs(logits, detach=True))
                return mean([supervised_loss(out[s], s, idx) for s in names])

            params = list(self.heads.parameters())
            return Stage("B", [heads], params, optimiser(params), loss_b, self.config.grad_clip)

        rule = self.config.pseudo_rule
        # per set: offered, passed, passed with known truth, right, right before stage C
        counters = {s: torch.zeros(5, dtype=torch.int64, device=self.device) for s in names}
        by_teacher: dict[tuple[str, str], torch.Tensor] = {}

        def teach(s: str, teacher: str, probabilities: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            """One teacher's pseudo labels for the batch, counted (no host synchronisation)."""
            allowed = bank.allowed[s][idx]
            p = self._teacher_probabilities(s, teacher, probabilities.detach(), idx)
            threshold = self._thresholds.get((s, teacher), self.config.threshold)
            bits = pseudo_labels(p, allowed, threshold, rule)
            took = bits != 0
            row = torch.stack([(allowed != 0).sum(), took.sum()])
            if s in bank.truth:
                cls = torch.log2(bits.clamp_min(1).double()).round().long()
                true = bank.truth[s][idx]
                known = took & (true >= 0)
                before = self._pre_c.get(s)
                right_before = (known & (before[idx] == true)).sum() if before is not None else known.sum() * 0
                counters[s] += torch.stack([row[0], row[1], known.sum(), (known & (cls == true)).sum(), right_before])
            else:
                counters[s][:2] += row
            key = (s, teacher)
            by_teacher[key] = by_teacher.get(key, torch.zeros(2, dtype=torch.int64, device=self.device)) + row
            return bits

        if name == "C" and self.config.pseudo_teacher == "self":
            base = self._wrap(self.base)

            def loss_self(idx: torch.Tensor) -> torch.Tensor:
                logits = self._forward_base(base, self.inputs(bank.crops[idx], True))
                supervised, pseudo = [], []
                for s in names:
                    probs = logits[s].softmax(1)
                    e_step(s, idx, probs)
                    own = teach(s, "self", probs, idx)
                    supervised.append(supervised_loss(logits[s], s, idx))
                    pseudo.append(partial_label_loss(logits[s], own))
                return mean(supervised) + mean(pseudo)

            params = list(self.base.parameters())
            stage = Stage("C", [base], params, optimiser(params), loss_self, self.config.grad_clip, counters,
                          teachers=("self",), teacher_counts=by_teacher)
            stage.before_epoch = lambda epoch: self._before_c_epoch(epoch, stage, by_teacher)
            return stage

        if name == "C":
            base, heads = self._wrap(self.base), self._wrap(self.heads)

            def loss_c(idx: torch.Tensor) -> torch.Tensor:
                logits = self._forward_base(base, self.inputs(bank.crops[idx], True))
                out = heads(self._head_inputs(logits, detach=not self.config.correlation_grad))
                supervised, pseudo = [], []
                for s in names:
                    base_p, head_p = logits[s].softmax(1), out[s].softmax(1)
                    e_step(s, idx, (base_p + head_p) / 2)
                    from_heads = teach(s, "heads", head_p, idx)
                    from_base = teach(s, "base", base_p, idx)
                    supervised += [supervised_loss(logits[s], s, idx), supervised_loss(out[s], s, idx)]
                    pseudo += [partial_label_loss(logits[s], from_heads), partial_label_loss(out[s], from_base)]
                return mean(supervised) + mean(pseudo)

            params = list(self.base.parameters()) + list(self.heads.parameters())
            stage = Stage("C", [base, heads], params, optimiser(params), loss_c, self.config.grad_clip, counters,
                          teachers=("heads", "base"), teacher_counts=by_teacher)
            stage.before_epoch = lambda epoch: self._before_c_epoch(epoch, stage, by_teacher)
            return stage
        raise InvalidArgumentError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")

    def stage_index(self, name: str, label_set: str | None = None) -> torch.Tensor:
        """The bank rows stage ``name`` trains on (``TrainConfig.stage_nuclei``).

        ``"all"``: every training nucleus in every stage. ``"paper"`` (the reference):
        stage A on the nuclei annotated in some set (the labelled datasets), stage B on
        those annotated in ``label_set`` (a head trained on its own dataset; with joint
        heads, those annotated in some set), stage C on every training nucleus. With
        ``label_set`` and ``"all"``: the training nuclei with a target in that set.
        """
        bank = self._bank
        index = bank.train_index
        if self.config.stage_nuclei == "paper" and name in ("A", "B"):
            if label_set is not None:
                keep = bank.annotated[label_set][index]
            else:
                keep = torch.zeros_like(index, dtype=torch.bool)
                for a in bank.annotated.values():
                    keep |= a[index]
            return index[keep]
        if label_set is not None:
            return index[bank.targets[label_set][index] != 0]
        return index

    def _run_heads_separately(self, say: Callable[[str], None]) -> list[dict[str, Any]]:
        """Stage B as the reference trains it: one head after the other, each with its own Adam.

        Head k trains on its own batches (:meth:`stage_index` of set k), with the plain
        mean of its loss and no gradient clipping; the frozen base module feeds it. Its
        batch normalisation sees set k's nuclei only.
        """
        epochs = self.config.epochs["B"]
        bank, base, names = self._bank, self.base, self.base.names
        history = []
        for s in names:
            head = self.heads.heads[s]
            optimiser = torch.optim.Adam(head.parameters(), lr=self.config.lr["B"],
                                         weight_decay=self.config.weight_decay)
            index = self.stage_index("B", s)
            for epoch in range(epochs):
                head.train()
                base.eval()
                total = torch.zeros((), device=self.device)
                steps = seen = 0
                start = time.perf_counter()
                for idx in progress(self.batches(index), desc=f"stage B {s} epoch {epoch + 1}/{epochs}",
                                    unit="batches"):
                    with torch.no_grad():
                        logits = self._forward_base(base, self.inputs(bank.crops[idx], True))
                    out = self.heads.forward_one(s, self._head_inputs(logits, detach=True)).float()
                    loss = self._supervised_loss(out, s, idx)[0]
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                    total += loss.detach()
                    steps += 1
                    seen += idx.numel()
                loss_value = float(total) / max(steps, 1)
                seconds = time.perf_counter() - start
                say(f"stage B {s} epoch {epoch + 1}/{epochs}: loss {loss_value:.4f}")
                history.append({"stage": "B", "epoch": epoch + 1, "label_set": s, "loss": loss_value,
                                "nuclei": seen * self.world, "seconds": seconds,
                                "nuclei_per_s": seen * self.world / max(seconds, 1e-9)})
        return history

    def _supervised_loss(self, logits: torch.Tensor, s: str, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Set ``s``'s supervised loss of bank rows ``idx`` (every stage): soft targets, the
        candidate-set likelihood under the transition estimate, or plain partial labels,
        each nucleus weighted by ``source_balance``."""
        bank = self._bank
        tgt = bank.targets[s][idx]
        if self.config.mapped_labels == "soft":
            return soft_label_loss(logits, tgt)
        t = self.transitions.get(s)
        w = bank.balance[s][idx] if s in bank.balance else None
        return partial_label_loss(logits, tgt, None, w) if t is None else t.loss(logits, idx, tgt, w)

    def _run_stage(self, name: str, say: Callable[[str], None]) -> list[dict[str, Any]]:
        epochs = self.config.epochs[name]
        if epochs <= 0:
            return []
        if name == "B" and self.config.heads_training == "separate":
            return self._run_heads_separately(say)
        stage = self.stage(name)
        history = []
        for epoch in range(epochs):
            if stage.pseudo is not None:
                for v in stage.pseudo.values():
                    v.zero_()
            if stage.before_epoch is not None:
                stage.before_epoch(epoch)
            stage.train()
            total = torch.zeros((), device=self.device)
            steps = seen = 0
            start = time.perf_counter()
            batches = self.batches(self.stage_index(name))
            for idx in progress(batches, desc=f"stage {name} epoch {epoch + 1}/{epochs}", unit="batches"):
                total += stage.step(idx)
                steps += 1
                seen += idx.numel()
            loss = float(total) / max(steps, 1)  # the epoch's one synchronisation
            seconds = time.perf_counter() - start
            if name in ("A", "C"):  # M-step of the candidate-set likelihood's transition estimate
                for t in self.transitions.values():
                    t.update(self._all_reduce if self.world > 1 else None)
            row: dict[str, Any] = {"stage": name, "epoch": epoch + 1, "loss": loss, "nuclei": seen * self.world,
                                   "seconds": seconds, "nuclei_per_s": seen * self.world / max(seconds, 1e-9)}
            text = f"stage {name} epoch {epoch + 1}/{epochs}: loss {loss:.4f}, {row['nuclei_per_s']:,.0f} nuclei/s"
            if stage.pseudo is not None:
                row["pseudo"] = self._pseudo_row(stage)
                row["pseudo_labels"] = {s: v["passed"] for s, v in row["pseudo"].items()}
                text += "; pseudo labels passed/offered " + ", ".join(
                    f"{k} {v['passed']:,}/{v['offered']:,}" for k, v in row["pseudo"].items())
            say(text)
            history.append(row)
        return history

    def _all_reduce(self, t: torch.Tensor) -> None:
        torch.distributed.all_reduce(t)

    def _pseudo_row(self, stage: Stage) -> dict[str, dict[str, Any]]:
        """Per set, the epoch's pseudo-label counts (read once, at the epoch's end)."""
        names = list(stage.pseudo)
        zero = torch.zeros(2, dtype=torch.int64, device=self.device)
        counts = torch.stack([stage.pseudo[s] for s in names])
        teachers = torch.stack([stage.teacher_counts.get((s, t), zero) for s in names for t in stage.teachers])
        if self.world > 1:
            torch.distributed.all_reduce(counts)
            torch.distributed.all_reduce(teachers)
        counts_list, teachers_list = counts.tolist(), teachers.tolist()
        out = {}
        for i, s in enumerate(names):
            offered, passed, known, right, right_before = counts_list[i]
            truth = s in self._bank.truth
            split = {t: dict(zip(("offered", "passed"), teachers_list[i * len(stage.teachers) + j], strict=True))
                     for j, t in enumerate(stage.teachers)}
            out[s] = {"offered": offered, "passed": passed,
                      "precision": right / known if truth and known else None,
                      "accuracy_before": right_before / known if truth and known and s in self._pre_c else None,
                      "by_teacher": split}
        return out

    @torch.no_grad()
    def _eval_probabilities(self, rows: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per set, (base, heads) softmax of bank rows, eval mode, no augmentation."""
        self.base.eval()
        self.heads.eval()
        names = self.base.names
        parts: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {s: ([], []) for s in names}
        b = self.config.eval_batch_size
        for start in range(0, rows.numel(), b):
            idx = rows[start : start + b]
            logits = self._forward_base(self.base, self.inputs(self._bank.crops[idx], False))
            out = self.heads(self._head_inputs(logits, True))
            for s in names:
                parts[s][0].append(logits[s].softmax(1))
                parts[s][1].append(out[s].float().softmax(1))
        return {s: (torch.cat(a), torch.cat(h)) for s, (a, h) in parts.items()}

    @torch.no_grad()
    def _dry_probabilities(self, epoch: int, teachers: tuple[str, ...]
                           ) -> tuple[torch.Tensor, dict[str, dict[str, torch.Tensor]]]:
        """The teachers' softmax as training sees them: train mode, augmented, training batches.

        A pass over the training rows without updates (its own random stream, batch
        normalisation's running statistics restored afterwards), so the quantile rule's
        thresholds come from the confidences the rule will meet in the epoch: in train
        mode (batch statistics) the correlation heads are far more confident than in
        eval mode (measured: 82-95 % of the eligible nuclei above the eval-mode 80th
        percentile).
        """
        modules = [self.base, self.heads]
        saved = [{k: v.clone() for k, v in m.named_buffers()} for m in modules]
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.config.seed * 1_000_003 + 7919 * (epoch + 1))
        bank = self._bank
        order = bank.train_index[torch.randperm(bank.train_index.numel(), generator=generator,
                                                device=bank.train_index.device)]
        b = self.config.batch_size
        rows, parts = [], {s: {t: [] for t in teachers} for s in self.base.names}
        for m in modules:
            m.train()
        for start in range(0, order.numel(), b):
            idx = order[start : start + b]
            if idx.numel() < 2:
                continue
            logits = self._forward_base(self.base, self.inputs(bank.crops[idx], True, generator))
            out = self.heads(self._head_inputs(logits, True)) if "heads" in teachers else {}
            rows.append(idx)
            for s in self.base.names:
                for t in teachers:
                    parts[s][t].append((out[s].float() if t == "heads" else logits[s]).softmax(1))
        for m, state in zip(modules, saved, strict=True):
            m.load_state_dict(state, strict=False)
        return torch.cat(rows), {s: {t: torch.cat(v) for t, v in d.items()} for s, d in parts.items()}

    def _teacher_probabilities(self, s: str, teacher: str | None, p: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """What stage C chooses a pseudo label from: a teacher's softmax ``p`` of bank rows ``idx`` in set ``s``.

        After :attr:`pseudo_confidence` (a calibration hook, per teacher; ``teacher=None``
        skips it) and, with ``pseudo_posterior="source"``, the source-class posterior of
        the nuclei with a source row (:meth:`.losses.TransitionEstimate.posterior`).
        """
        if teacher is not None and self.pseudo_confidence is not None:
            p = self.pseudo_confidence(s, teacher, p)
        if self.config.pseudo_posterior == "source" and s in self.transitions:
            p = self.transitions[s].posterior(idx, p)
        return p

    def _before_c_epoch(self, epoch: int, stage: Stage, teacher_counts: dict) -> None:
        """Stage C, before each epoch: the pass rule's per-class thresholds and, first, the pre-C predictions.

        Before the first epoch, the model's predictions (the method's rule, both
        modules, eval mode as published; the base module for plain self-training),
        restricted as the pass rule restricts a pseudo label (and read from what it
        reads, :meth:`_teacher_probabilities`), are kept to score ``accuracy_before``.
        Under ``pseudo_select="quantile"``, each teacher's threshold per predicted class
        is the ``1 - pseudo_quantile`` quantile of its confidence (the rule's, after
        :meth:`_teacher_probabilities`) among the eligible training nuclei, as training
        meets them (:meth:`_dry_probabilities`), so about the top ``pseudo_quantile`` of
        each class passes.
        """
        teacher_counts.clear()
        bank = self._bank
        if epoch == 0 and bank.truth:
            rows = bank.train_index
            probs = self._eval_probabilities(rows)
            for s, (base_p, head_p) in probs.items():
                allowed = bank.allowed[s][rows]
                both = base_p if stage.teachers == ("self",) else (base_p + head_p) / 2
                _, choice, _ = pseudo_choice(self._teacher_probabilities(s, None, both, rows), allowed, "candidates")
                pre = torch.full_like(bank.targets[s], -1)
                pre[rows] = torch.where(allowed != 0, choice, torch.full_like(choice, -1))
                self._pre_c[s] = pre
        if self.config.pseudo_select != "quantile":
            return
        rows, probs = self._dry_probabilities(epoch, stage.teachers)
        for s, by_teacher in probs.items():
            allowed = bank.allowed[s][rows]
            for teacher, p in by_teacher.items():
                p = self._teacher_probabilities(s, teacher, p, rows)
                confidence, choice, ok = pseudo_choice(p, allowed, self.config.pseudo_rule)
                ok &= allowed != 0
                thresholds = torch.ones(p.shape[1], device=p.device)  # nothing passes a class never predicted
                for c in range(p.shape[1]):
                    values = confidence[ok & (choice == c)]
                    if values.numel():
                        thresholds[c] = torch.quantile(values.float(), 1.0 - self.config.pseudo_quantile)
                self._thresholds[s, teacher] = thresholds

    def fit(self, data: TrainingData, workdir: str | os.PathLike[str] | None = None,
            progress: Callable[[str], None] | None = None) -> TrainResult:
        """Run stages A, B and C.

        Parameters
        ----------
        data
            The training data (``split == 0`` trains, ``split == 1`` validates).
        workdir
            Optional folder: each finished stage's checkpoint is saved there
            (``stage_A.pt`` ...) and reused on a rerun with the same data and the same
            settings up to that stage; after a retrained stage, later ones retrain too.
        progress
            Optional callable receiving one line of text per epoch and stage.

        Returns
        -------
        TrainResult
        """
        say = progress or (lambda _m: None)
        self.setup(data)
        result = TrainResult([], {}, {}, str(self.device))
        folder = Path(workdir) if workdir is not None else None
        fingerprint = _fingerprint(data)
        trained_earlier = False
        for name in STAGES:
            ckpt = folder / f"stage_{name}.pt" if folder is not None else None
            key = self._stage_key(name, fingerprint)
            if ckpt is not None and not trained_earlier and ckpt.is_file() and self._resume(ckpt, key, say):
                say(f"stage {name}: reusing {ckpt}")
                meta = self.meta
                result.history += meta.get("history", [])
                result.metrics[name] = meta.get("metrics", {})
                result.seconds[name] = meta.get("seconds", 0.0)
                if meta.get("filled"):
                    result.filled[name] = meta["filled"]
                result.reused.append(name)
                continue
            if not self.config.epochs.get(name, 0):  # nothing trains: no validation, no checkpoint
                continue
            trained_earlier = True
            start = time.perf_counter()
            history = self._run_stage(name, say)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            result.seconds[name] = time.perf_counter() - start
            result.history += history
            result.metrics[name] = self.evaluate(data, MODULES_OF_STAGE[name])
            if self.config.score_truth and data.truth:
                result.filled[name] = self.evaluate_filled(data, MODULES_OF_STAGE[name])
            self.metrics = result.metrics[name]
            say(f"stage {name}: {result.seconds[name]:.1f} s; validation " + (", ".join(
                f"{k} acc {v['accuracy']:.3f}" for k, v in result.metrics[name].items() if v["count"]) or "none"))
            if ckpt is not None and self.rank == 0:
                self.save(ckpt, extra={"stage": name, "stage_key": key, "history": history,
                                       "metrics": result.metrics[name], "seconds": result.seconds[name],
                                       "filled": result.filled.get(name, {}),
                                       "transition": self.transition_report()})
        self.metrics = result.metrics[list(result.metrics)[-1]] if result.metrics else {}  # the last stage run
        result.pseudo_labels = pseudo_label_rows(result.history)
        result.transition = self.transition_report()
        return result

    def transition_report(self) -> dict[str, dict[str, dict[str, Any]]]:
        """The transition estimates as :attr:`TrainResult.transition` describes them (JSON-ready)."""
        datasets, source_names = self._sources
        classes = {spec.name: list(spec.class_names) + (["outside"] if self.config.outside_head else [])
                   for spec in self.label_sets}
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for s, t in self.transitions.items():
            rows, columns = t.rows, classes[s]
            matrix, counts = t.matrix.cpu().tolist(), t.counts.cpu().tolist()
            member = rows.row[self._bank.train_index] if self._bank is not None else rows.row
            nuclei = torch.bincount(member[member >= 0], minlength=len(t)).cpu().tolist()
            dataset, code, support = (v.cpu().tolist() for v in (rows.dataset, rows.code, rows.support))
            per: dict[str, dict[str, Any]] = {}
            for g in range(len(t)):
                name = datasets[dataset[g]] if dataset[g] < len(datasets) else str(dataset[g])
                entry = per.setdefault(name, {"columns": columns, "rows": [], "matrix": [], "counts": [],
                                              "prior": t.prior_strength})
                entry["rows"].append({
                    "source_class": code[g], "source": source_names.get(name, {}).get(code[g], str(code[g])),
                    "candidates": [columns[c] for c in range(len(columns)) if support[g] >> c & 1],
                    "nuclei": nuclei[g]})
                entry["matrix"].append([round(v, 6) for v in matrix[g]])
                entry["counts"].append([round(v, 3) for v in counts[g]])
            out[s] = per
        return out

    def candidate_weights(self, data: TrainingData) -> dict[str, torch.Tensor]:
        """Per set, ``(N, outputs)`` weights of each nucleus's candidates under the transition estimate.

        ``T[s, :]`` of the nucleus's source row (divided by its maximum), 1 on every
        output for a nucleus without one. The posterior of a nucleus whose own dataset
        wrote ``s`` is ``p(c | x) T[s, c]`` normalised: multiply :meth:`predict`'s
        probabilities by these weights to resolve an ambiguous row by it. ``data`` must
        be the data :meth:`fit` (or :meth:`setup`) saw. Empty without estimates.
        """
        out = {}
        for spec in data.label_sets:
            t = self.transitions.get(spec.name)
            if t is not None:
                row = t.rows.row.cpu()
                if row.shape[0] != len(data):
                    raise InvalidArgumentError(f"candidate_weights: the estimate covers {row.shape[0]} nuclei, the "
                                               f"data {len(data)}; pass the data the trainer was fitted on")
                out[spec.name] = _row_weights(t.matrix.cpu(), row)
            elif spec.name in self.stored_transitions:  # a loaded checkpoint: rows found by their key
                targets, _ = training_targets(data.labels[spec.name], data.candidates[spec.name],
                                              data.provenance[spec.name], spec.size, self.config.mapped_labels,
                                              self.config.outside_head, self.config.pseudo_outside)
                mine = source_rows(targets, data.provenance[spec.name], data.dataset_index, data.source_class)
                names = list(data.dataset_names)
                keys = [(names[d], c, b) for d, c, b in zip(mine.dataset.tolist(), mine.code.tolist(),
                                                            mine.support.tolist(), strict=True)]
                out[spec.name] = stored_weights(self.stored_transitions[spec.name], keys, mine.row.cpu())
        return out

    def transition_rows(self) -> dict[str, dict[str, list]]:
        """The transition estimate in a JSON-ready, data-free form (checkpoints, ``classifier.json``).

        Per label set ``{"dataset": [...], "code": [...], "support": [...], "matrix": [[...]]}``:
        row ``g`` of ``matrix`` is ``T[s, :]`` for the nuclei of dataset ``dataset[g]`` whose
        source class is ``code[g]`` and whose candidates (training target bits) are
        ``support[g]``; :func:`stored_weights` looks a nucleus's row up by that key.
        """
        if not self.transitions:
            return dict(self.stored_transitions)
        datasets = self._sources[0]
        return {s: {"dataset": [datasets[d] for d in t.rows.dataset.cpu().tolist()],
                    "code": t.rows.code.cpu().tolist(), "support": t.rows.support.cpu().tolist(),
                    "matrix": [[float(v) for v in row] for row in t.matrix.cpu().tolist()]}
                for s, t in self.transitions.items()}

    def _stage_key(self, name: str, fingerprint: str) -> dict[str, Any]:
        """What a stage's result depends on: the data and the settings of stages <= it.

        The settings are :func:`.config.stage_key_config`'s, derived from the fields' metadata.
        """
        return {"stage": name, "data": fingerprint, "config": stage_key_config(self.config, name),
                "world": self.world}

    def _resume(self, ckpt: Path, key: dict[str, Any], say: Callable[[str], None]) -> bool:
        try:
            state, meta = load_checkpoint(ckpt, self.label_sets, map_location=self.device)
        except CheckpointError as exc:
            say(f"stage {key['stage']}: not reusing {ckpt} ({exc})")
            return False
        if meta.get("stage_key") != key:
            say(f"stage {key['stage']}: {ckpt} was trained on other data or settings; retraining")
            return False
        saved = state.get("transition", {})
        if set(saved) != set(self.transitions):
            say(f"stage {key['stage']}: {ckpt} has no matching transition estimate; retraining")
            return False
        try:
            for s, t in self.transitions.items():
                t.load(saved[s])
        except InvalidArgumentError as exc:
            say(f"stage {key['stage']}: not reusing {ckpt} ({exc})")
            return False
        self.base.load_state_dict(state["base"])
        self.heads.load_state_dict(state["heads"])
        if "rng" in state:
            self.generator.set_state(state["rng"].cpu())
        self.meta = meta
        return True

    # -- inference ---------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, crops: torch.Tensor, candidates: dict[str, torch.Tensor] | None = None,
                modules: str = "both") -> Predictions:
        """Predict every nucleus under every label set, in batches.

        Parameters
        ----------
        crops
            uint8 ``(N, C, S, S)`` on any device (moved batch by batch); a mask channel
            the configuration does not use is dropped.
        candidates
            Optional per-set bitmasks: nuclei with candidates get the most probable one
            (bit K is outside). Metrics never pass them: a restriction to a nucleus's
            own label would score its annotation, not the model.
        modules
            ``"both"`` (the method's rule: mean of the two modules' probabilities),
            ``"base"`` or ``"heads"``.

        Returns
        -------
        Predictions
            Per set a :class:`Prediction` on the CPU; ``label`` is -2 where the outside
            output wins, ``probs`` has the outside column last when the heads have one.
        """
        if self.base is None or self.heads is None:
            raise ModelStateError("CrossTrainer.predict: no model; call fit() or CrossTrainer.load() first")
        if modules not in ("both", "base", "heads"):
            raise InvalidArgumentError(f"predict(modules={modules!r}): pass 'both', 'base' or 'heads'")
        if not self.config.mask_channel and crops.ndim == 4 and crops.shape[1] == 4 and self.in_channels == 3:
            crops = crops[:, :3]  # a bank's mask channel, which this model does not use
        if crops.dtype != torch.uint8 or crops.ndim != 4 or crops.shape[1] != self.in_channels:
            raise InvalidArgumentError(f"predict: crops must be uint8 (N, {self.in_channels}, S, S) for this model, "
                                       f"got {tuple(crops.shape)} {crops.dtype}; pass crops cut like the "
                                       "training data's")
        self.base.eval()
        self.heads.eval()
        names = self.base.names
        parts: dict[str, list[torch.Tensor]] = {s: [] for s in names}
        b = self.config.eval_batch_size
        for start in progress(range(0, crops.shape[0], b), desc="predicting", unit="batches"):
            x = self.inputs(crops[start : start + b].to(self.device, non_blocking=True), False)
            logits = self._forward_base(self.base, x)
            base_p = {k: v.softmax(1) for k, v in logits.items()}
            head_p = {k: v.float().softmax(1) for k, v in self.heads(self._head_inputs(logits, True)).items()}
            for s in names:
                parts[s].append({"both": (base_p[s] + head_p[s]) / 2, "base": base_p[s], "heads": head_p[s]}[modules])
        out: Predictions = {}
        outputs = {s.name: s.size + int(self.config.outside_head) for s in self.label_sets}
        for s in names:
            probs = torch.cat(parts[s]).float().cpu() if parts[s] else torch.zeros(0, outputs[s])
            choose = probs
            if candidates is not None and probs.shape[0]:
                c = candidates[s].cpu() & ((1 << outputs[s]) - 1)
                choose = torch.where((c != 0)[:, None], probs.masked_fill(~candidate_mask(c, outputs[s]), -1.0), probs)
            index = choose.argmax(1)
            size = outputs[s] - int(self.config.outside_head)
            label = torch.where(index == size, torch.full_like(index, OUTSIDE), index)
            out[s] = Prediction(label, probs.gather(1, index[:, None])[:, 0], probs)
        return out

    def evaluate(self, data: TrainingData, modules: str = "both", split: int = 1) -> dict[str, dict[str, Any]]:
        """Metrics per label set on the nuclei of ``split`` that their own dataset annotated.

        The score is the model's own prediction over the whole set (an outside
        prediction is a miss): no candidate restriction, so an untrained model scores
        near chance. Mapped labels are not scored (they are the tables'
        claim, not an annotation).
        """
        rows = torch.nonzero(data.split == split).flatten()
        preds = self.predict(data.crops[rows], None, modules)
        result = {}
        for spec in data.label_sets:
            annotated = (data.provenance[spec.name][rows] == ANNOTATED).numpy()
            truth = data.labels[spec.name][rows].numpy()[annotated]
            pred = preds[spec.name]
            guess = scored_class(pred.label, spec.size).numpy()[annotated]
            result[spec.name] = classification_metrics(truth, guess, spec.size + int(self.config.outside_head),
                                                        pred.probability.numpy()[annotated], spec.size)
        return result

    def evaluate_filled(self, data: TrainingData, modules: str = "both", split: int | None = None
                        ) -> dict[str, dict[str, Any]]:
        """Metrics of this model's filled labels against ``data.truth``.

        Filled labels are the merged labels (:func:`.fill.fill_labels`) of nuclei their
        own dataset did not annotate in the set and whose true class lies in the set,
        scored by :func:`.fill.score_filled`; ``split`` limits them to one split
        (``None``: every nucleus). Sets without truth are left out.
        """
        if not any(spec.name in data.truth for spec in data.label_sets):
            return {}
        preds = self.predict(data.crops, None, modules)
        filled = {spec.name: fill_labels(preds[spec.name].probs, data.labels[spec.name], data.candidates[spec.name],
                                         data.provenance[spec.name], spec.size)
                  for spec in data.label_sets if spec.name in data.truth}
        return score_filled(data, {s: f.label for s, f in filled.items()},
                            {s: f.probability for s, f in filled.items()}, split, "class_in_set")

    def score_filled(self, data: TrainingData, modules: str = "both", split: int | None = None
                     ) -> dict[str, dict[str, Any]]:
        """Deprecated alias of :meth:`evaluate_filled` (removed in the next release)."""
        warnings.warn("CrossTrainer.score_filled is deprecated; use CrossTrainer.evaluate_filled (it will be "
                      "removed in the next release)", DeprecationWarning, stacklevel=2)
        return self.evaluate_filled(data, modules, split)

    # -- checkpoints -------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
        """Write weights and their description (see :mod:`.checkpoint`), atomically."""
        if self.base is None or self.heads is None:
            raise ModelStateError(f"CrossTrainer.save({str(path)!r}): nothing to save; call fit() or "
                                  "CrossTrainer.load() first")
        meta = {
            "label_sets": label_set_meta(self.label_sets), "encoder": self.config.encoder,
            "in_channels": self.in_channels, "crop_size": self.crop_size, "mpp": self.mpp,
            "config": self.config.to_dict(), "metrics": self.metrics, "torch": torch.__version__,
            **(extra or {}),
        }
        state: dict[str, Any] = {"base": _plain_state(self.base), "heads": _plain_state(self.heads)}
        if self.generator is not None:
            state["rng"] = self.generator.get_state()
        if self.transitions:
            state["transition"] = {s: t.state() for s, t in self.transitions.items()}
        if self.transitions or self.stored_transitions:
            meta["transition_rows"] = self.transition_rows()  # candidate_weights of a loaded trainer
        return save_checkpoint(path, state, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str], label_sets: list[LabelSetSpec], device: str = "auto") -> CrossTrainer:
        """A trainer ready to predict, from a checkpoint checked against ``label_sets``.

        Raises
        ------
        CheckpointMismatchError
            When the checkpoint was trained for other label sets (see
            :func:`.checkpoint.load_checkpoint`).
        """
        state, meta = load_checkpoint(path, label_sets)
        config = TrainConfig.from_saved(meta["config"])  # older checkpoints: SAVED_BEFORE
        config.device = device
        trainer = cls(config)
        trainer.build(list(label_sets), meta["in_channels"], meta["crop_size"])
        trainer.base.load_state_dict(state["base"])
        trainer.heads.load_state_dict(state["heads"])
        trainer.mpp = meta.get("mpp")
        trainer.metrics = meta.get("metrics", {})
        trainer.meta = meta
        trainer.stored_transitions = checked_transition_rows(meta.get("transition_rows"), trainer.label_sets,
                                                             trainer.config.outside_head, str(path))
        return trainer


def checked_transition_rows(rows: Any, label_sets: list[LabelSetSpec], outside_head: bool, where: str
                            ) -> dict[str, dict[str, list]]:
    """A stored transition estimate (:meth:`CrossTrainer.transition_rows`' form), checked; ``{}`` for none.

    Raises
    ------
    CheckpointError
        When it is not that form, names an unknown set, or its shapes do not fit the set.
    """
    from nucdata.errors import CheckpointError

    if rows is None:
        return {}
    sizes = {spec.name: spec.size + int(outside_head) for spec in label_sets}
    fix = "; rebuild the model with nucdata build-merged, or remove 'transition_rows' to resolve without it"
    if not isinstance(rows, dict):
        raise CheckpointError(f"{where}: 'transition_rows' must be an object per label set{fix}")
    out = {}
    for s, t in rows.items():
        if s not in sizes or not isinstance(t, dict):
            raise CheckpointError(f"{where}: 'transition_rows' names {s!r}, not a label set of the model{fix}")
        try:
            n = len(t["matrix"])
            ok = (len(t["dataset"]) == len(t["code"]) == len(t["support"]) == n
                  and all(isinstance(d, str) for d in t["dataset"])
                  and all(isinstance(v, int) and not isinstance(v, bool) for v in (*t["code"], *t["support"]))
                  and all(len(r) == sizes[s] and all(isinstance(v, (int, float)) and v >= 0 for v in r)
                          for r in t["matrix"]))
        except (KeyError, TypeError):
            ok = False
        if not ok:
            raise CheckpointError(f"{where}: 'transition_rows' of {s!r} must hold equally long 'dataset' (names), "
                                  f"'code' and 'support' (integers) and a 'matrix' of rows of {sizes[s]} "
                                  f"non-negative numbers{fix}")
        out[s] = {k: list(t[k]) for k in ("dataset", "code", "support", "matrix")}
    return out


def stored_weights(table: dict[str, list], keys: list[tuple[str, int, int]], row: torch.Tensor) -> torch.Tensor:
    """Per nucleus, the weights of a stored transition estimate (:meth:`CrossTrainer.candidate_weights`).

    Parameters
    ----------
    table
        One set's :meth:`CrossTrainer.transition_rows`.
    keys
        ``(dataset, source class, support)`` of each source row of the nuclei.
    row
        int64 ``(N,)``: each nucleus's index into ``keys`` (-1: no source row).

    Returns
    -------
    ``(N, outputs)``: the matching row of the matrix divided by its maximum; 1 everywhere
    for a nucleus without a row or whose key the estimate does not hold.
    """
    matrix = torch.tensor(table["matrix"], dtype=torch.float32).reshape(len(table["matrix"]), -1)
    index = {(d, int(c), int(b)): g for g, (d, c, b) in enumerate(zip(table["dataset"], table["code"],
                                                                      table["support"], strict=True))}
    lookup = torch.tensor([index.get((d, int(c), int(b)), -1) for d, c, b in keys] + [-1], dtype=torch.int64)
    return _row_weights(matrix, lookup[torch.where(row >= 0, row, torch.full_like(row, len(keys)))])


def _row_weights(matrix: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """``(N, outputs)``: row ``row[i]`` of ``matrix`` divided by its maximum; 1 everywhere where ``row[i] < 0``."""
    ones = torch.ones(row.shape[0], matrix.shape[1])
    if matrix.shape[0] == 0:
        return ones
    matrix = matrix / matrix.amax(1, keepdim=True).clamp_min(1e-30)
    return torch.where((row >= 0)[:, None], matrix[row.clamp_min(0)], ones)


def source_balance_weights(targets: torch.Tensor, dataset_index: torch.Tensor, train_index: torch.Tensor,
                           own: torch.Tensor | None = None) -> torch.Tensor:
    """Per-nucleus loss weights that give each source dataset the same total weight in one set's loss.

    Among the training nuclei (``train_index``) with a target in the set (``targets != 0``),
    a nucleus of dataset ``d`` weighs ``N / (D * n_d)``: ``n_d`` of them come from ``d``,
    ``N`` in all, from ``D`` datasets; so the weights average 1 and each dataset's sum to
    ``N / D`` (``TrainConfig.source_balance="dataset"``). Other nuclei weigh 0.

    With ``own`` (a boolean mask: the set's own dataset's annotations), those nuclei
    weigh 1 and only the others, the targets the tables give other datasets' nuclei,
    are balanced among their datasets (``source_balance="foreign"``).
    """
    member = torch.zeros_like(targets, dtype=torch.bool)
    member[train_index] = True
    member &= targets != 0
    if own is not None:
        foreign = source_balance_weights(targets, dataset_index, train_index[~own[train_index]])
        return torch.where(member & own, torch.ones(targets.shape, device=targets.device), foreign)
    size = int(dataset_index.max()) + 1 if dataset_index.numel() else 0
    counts = torch.zeros(size, device=targets.device).index_add_(0, dataset_index[member],
                                                                 torch.ones(int(member.sum()), device=targets.device))
    present = counts > 0
    per_dataset = torch.where(present, counts.sum() / (present.sum().clamp_min(1) * counts.clamp_min(1)),
                              torch.zeros_like(counts))
    return torch.where(member, per_dataset[dataset_index], torch.zeros(targets.shape, device=targets.device))


def unclassified(data: TrainingData) -> torch.Tensor:
    """bool ``(N,)``: nuclei of a labelled dataset that carry no class in any set (``drop_unclassified``).

    A dataset is labelled when some of its nuclei are annotated in some set; a nucleus
    of it annotated in none (NuCLS ``unlabeled``) is unclassified. Nuclei of datasets
    without classes (Kumar, MoNuSeg, TNBC) are not.
    """
    annotated, labelled = _annotated(data)
    return labelled[data.dataset_index.cpu()] & ~annotated


def _annotated(data: TrainingData) -> tuple[torch.Tensor, torch.Tensor]:
    """bool ``(N,)``: nuclei annotated in some set; bool ``(datasets,)``: datasets with such a nucleus."""
    annotated = torch.zeros(len(data), dtype=torch.bool)
    for prov in data.provenance.values():
        annotated |= prov.cpu() == ANNOTATED
    labelled = torch.zeros(len(data.dataset_names), dtype=torch.bool)
    labelled[data.dataset_index.cpu()[annotated]] = True
    return annotated, labelled


def pseudo_label_rows(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:attr:`TrainResult.pseudo_labels` from a fit's history (one row per stage-C epoch and set)."""
    rows = []
    for row in history:
        for s, entry in row.get("pseudo", {}).items():
            rows.append({"stage": row["stage"], "epoch": row["epoch"], "label_set": s, **entry})
    return rows


def pseudo_label_totals(rows: list[dict[str, Any]], label_set: str) -> dict[str, Any]:
    """One set's stage-C pseudo labels summed over epochs (and runs): rows of :attr:`TrainResult.pseudo_labels`.

    ``offered`` and ``passed`` summed (``offered`` ``None`` when no row reports it);
    ``precision`` and ``accuracy_before`` weighted by the passed counts, over the rows
    that report a finite value (``None`` where none does).
    """
    mine = [r for r in rows if r.get("label_set") == label_set]
    offered = [int(r["offered"]) for r in mine if r.get("offered") is not None]
    out: dict[str, Any] = {"offered": sum(offered) if offered else None,
                           "passed": sum(int(r.get("passed") or 0) for r in mine)}
    for key in ("precision", "accuracy_before"):
        weighted = [(float(r[key]), int(r.get("passed") or 0)) for r in mine
                    if r.get(key) is not None and np.isfinite(r[key]) and r.get("passed")]
        weight = sum(n for _, n in weighted)
        out[key] = sum(v * n for v, n in weighted) / weight if weight else None
    return out


def _plain_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """State dict without ``torch.compile`` / DDP prefixes, on the CPU."""
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def _fingerprint(data: TrainingData) -> str:
    """A cheap digest of the data: shapes, label sets, every label and candidate, sampled crops."""
    h = hashlib.sha256()
    h.update(repr((tuple(data.crops.shape), [s.to_dict() for s in data.label_sets], data.dataset_names)).encode())
    for name in data.names:
        h.update(data.labels[name].cpu().numpy().tobytes())
        h.update(data.candidates[name].cpu().numpy().tobytes())
    h.update(data.split.cpu().numpy().astype(np.int64).tobytes())
    h.update(data.source_class.cpu().numpy().astype(np.int64).tobytes())
    step = max(1, len(data) // 512)
    h.update(data.crops[::step].cpu().numpy().tobytes())
    return h.hexdigest()[:24]



def recolour(crops: torch.Tensor, shift) -> torch.Tensor:
    """uint8 crops with an RGB shift added to every pixel of their colour channels (clipped to [0, 255]).

    The demo world's stain model (:meth:`nucdata.testing.world.World.stain`): a dataset's
    stain is an RGB offset added to every pixel, so adding ``stain(other) - stain(own)``
    shows a dataset's nuclei in another dataset's stain. A mask channel is kept as is.
    """
    delta = torch.as_tensor(np.asarray(shift, np.float32)).reshape(1, 3, 1, 1)
    rgb = (crops[:, :3].float() + delta).round_().clamp_(0, 255).to(torch.uint8)
    return torch.cat([rgb, crops[:, 3:]], dim=1)


def labelled_datasets(data: TrainingData) -> list[str]:
    """The datasets that annotate some nucleus in some set of ``data`` (in ``dataset_names`` order)."""
    labelled = _annotated(data)[1]
    return [name for i, name in enumerate(data.dataset_names) if labelled[i]]


def held_out_dataset_probs(config: TrainConfig, data: TrainingData, modules: str = "both",
                           progress: Callable[[str], None] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Per labelled dataset, the probabilities of a model trained without that dataset's labels.

    For each dataset of :func:`labelled_datasets`, a :class:`CrossTrainer` with ``config``
    is fitted on :func:`.data.without_dataset` (the dataset's images stay, its
    annotations and table rows go) and predicts every nucleus. On that dataset's nuclei
    the model is in the position of a model on an unlabelled dataset or a lab's own
    images, and the dataset's labels say how right it is: the held-out-dataset
    calibration (:func:`.calibration.fit_calibration`'s ``unseen``). It costs one training
    per labelled dataset.

    Returns
    -------
    dict
        Dataset name -> per set ``(N, K)`` probabilities (``Prediction.probs``) on the CPU.
    """
    say = progress or (lambda _m: None)
    say("held-out-dataset calibration: one more training per labelled dataset")
    out = {}
    for name in labelled_datasets(data):
        start = time.perf_counter()
        trainer = CrossTrainer(config)
        trainer.fit(without_dataset(data, name))
        out[name] = {s: p.probs for s, p in trainer.predict(data.crops, modules=modules).items()}
        say(f"held-out-dataset calibration: trained without {name}'s labels in {time.perf_counter() - start:.1f} s")
    return out


def unseen_probs(config: TrainConfig, data: TrainingData, modules: str = "both",
                 progress: Callable[[str], None] | None = None) -> dict[str, dict[str, torch.Tensor]] | None:
    """What ``config.unseen_calibration`` asks the calibration to be given (``fit_calibration``'s ``unseen``).

    ``"held-out-dataset"``: :func:`held_out_dataset_probs`; ``"pooled"``: ``None``.
    """
    if config.unseen_calibration != "held-out-dataset":
        return None
    return held_out_dataset_probs(config, data, modules, progress)


def stain_swap_outside_rate(trainer: CrossTrainer, data: TrainingData, dataset: str, label_set: str, shift,
                            split: int | None = None, modules: str = "both") -> float:
    """Share of a dataset's own in-set nuclei the model predicts as outside after a stain swap.

    The nuclei of ``dataset`` annotated in ``label_set`` (their own dataset's set, so
    their true class is in it), optionally of one ``split``, are recoloured with
    :func:`recolour` by ``shift`` (for the demo world: ``world.stain(other) -
    world.stain(dataset)``; zeros measure the unrecoloured rate) and predicted without
    candidates. A model that learnt "outside" from the stain of the datasets whose
    nuclei the tables call outside sends them there (issue 20 point 2).

    Returns
    -------
    float
        The share predicted as outside (-2); 0 for a model without an outside output,
        NaN when no nucleus qualifies.
    """
    if dataset not in data.dataset_names:
        raise InvalidArgumentError(f"stain_swap_outside_rate: no dataset {dataset!r} in the data; pick one of "
                                   f"{', '.join(data.dataset_names)}")
    if label_set not in data.names:
        raise InvalidArgumentError(f"stain_swap_outside_rate: no label set {label_set!r}; pick one of "
                                   f"{', '.join(data.names)}")
    rows = (data.dataset_index == data.dataset_names.index(dataset)) & (data.provenance[label_set] == ANNOTATED)
    rows &= data.labels[label_set] >= 0
    if split is not None:
        rows &= data.split == split
    index = torch.nonzero(rows).flatten()
    if index.numel() == 0:
        return float("nan")
    if not trainer.config.outside_head:
        return 0.0
    pred = trainer.predict(recolour(data.crops[index], shift), None, modules)[label_set]
    return float((pred.label == OUTSIDE).float().mean())
