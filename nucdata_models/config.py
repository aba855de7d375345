"""Training configuration: :class:`TrainConfig`, its recipes and the differences between them.

Torch-free, so the command line can list choices and recipes without importing torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ENCODER_NAMES", "PSEUDO_RULES", "RECIPES", "RECIPE_DIFFERENCES", "RUNTIME_KEYS", "STAGES",
           "STAGE_C_KEYS", "TrainConfig"]

#: The encoders :func:`nucdata_models.build_encoder` builds (``encoders.ENCODERS`` keys).
ENCODER_NAMES = ("small", "resnet18", "resnet50")
#: How stage C turns a confident prediction into a pseudo label (:func:`.losses.pseudo_labels`).
PSEUDO_RULES = ("candidates", "unrestricted", "renormalised")
#: The method's three stages.
STAGES = ("A", "B", "C")
MODULES_OF_STAGE = {"A": "base", "B": "heads", "C": "both"}
# Settings that change what is computed only on the machine, not the result.
RUNTIME_KEYS = ("device", "compile", "eval_batch_size", "score_truth")
# Settings read by stage C only: changing them keeps the checkpoints of stages A and B.
STAGE_C_KEYS = ("threshold", "pseudo_rule", "pseudo_teacher", "correlation_grad")


@dataclass
class TrainConfig:
    """Hyperparameters, the method's switches, and run settings.

    Two recipes fill it (:meth:`recipe`): ``"paper"``, the authors' method as published,
    and ``"nucdata"`` (the default values here), which adds our extensions. Every field
    on which they differ is listed, with the authors' code and the reason, in
    :data:`RECIPE_DIFFERENCES` and in ``docs/build-merged.md``.

    Attributes
    ----------
    encoder
        ``small``, ``resnet18`` or ``resnet50``.
    weights
        Optional local file with encoder weights (e.g. ImageNet); never downloaded.
    epochs, lr
        Per stage ``"A"``, ``"B"``, ``"C"``; 0 epochs skips a stage's training.
    threshold
        Pseudo labels need a probability strictly above it.
    pseudo_rule
        ``"candidates"``, ``"unrestricted"`` or ``"renormalised"`` (see
        :func:`.losses.pseudo_labels`).
    mapped_labels
        Which labels from other datasets' annotations, through the mapping tables, train
        a set: ``"none"`` (own annotations only, the paper), ``"exact"``, ``"candidates"``
        (exact rows and ambiguous rows as partial labels) or ``"soft"`` (ambiguous rows
        as uniform soft targets).
    outside_head
        Each set's head gets an output for "none of these classes", trained on nuclei
        whose mapping says outside; such nuclei can then be predicted as outside (-2).
    mask_channel
        Feed the nucleus mask as a fourth input channel when the crops carry one.
    input_size
        Resize crops to this side before the encoder (the paper: 64 px crops to 224);
        ``None`` keeps the crop size.
    correlation_input
        ``"probs"`` (probabilities) or ``"logits"`` (raw logits, the reference).
    correlation_grad
        In stage C, let the correlation heads' loss flow back into the base module
        through their input (the reference does).
    loss_mean
        Stage C's mean over (set, module) loss terms: ``"present"`` over the terms that
        had nuclei in the batch, ``"all"`` over every term, absent ones as zeros (the
        reference, which dilutes the loss when a set is absent).
    pseudo_teacher
        Stage C: ``"cross"`` (the method: each module learns from the other's confident
        predictions) or ``"self"`` (plain self-training: the base module learns from
        its own, the correlation heads take no part; predict with ``modules="base"``).
        A baseline for the method study, not a recipe.
    device
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``/``"cuda:N"``.
    bf16, channels_last, compile
        CUDA speed settings (bf16 autocast and channels-last apply on CUDA only).
    drop_last
        Drop each epoch's incomplete last batch (static shapes for ``compile``).
    score_truth
        When the data carry ``truth``, score the filled labels after every stage.
    """

    encoder: str = "small"
    weights: str | None = None
    epochs: dict[str, int] = field(default_factory=lambda: {"A": 10, "B": 10, "C": 10})
    batch_size: int = 128
    lr: dict[str, float] = field(default_factory=lambda: {"A": 1e-3, "B": 1e-3, "C": 1e-4})
    weight_decay: float = 1e-4
    grad_clip: float = 10.0
    threshold: float = 0.99
    pseudo_rule: str = "candidates"
    mapped_labels: str = "candidates"
    outside_head: bool = True
    mask_channel: bool = True
    input_size: int | None = None
    correlation_input: str = "probs"
    correlation_grad: bool = False
    loss_mean: str = "present"
    pseudo_teacher: str = "cross"
    hidden: int = 128
    augment: bool = True
    jitter: float = 0.2
    blur_p: float = 0.1
    drop_last: bool = True
    device: str = "auto"
    seed: int = 0
    bf16: bool = True
    channels_last: bool = True
    compile: bool = False
    eval_batch_size: int = 1024
    score_truth: bool = True

    def __post_init__(self) -> None:
        for stage in STAGES:
            self.epochs.setdefault(stage, 0)
            self.lr.setdefault(stage, 1e-4 if stage == "C" else 1e-3)
        choices = {"correlation_input": ("probs", "logits"), "pseudo_rule": PSEUDO_RULES,
                   "mapped_labels": ("none", "exact", "candidates", "soft"), "loss_mean": ("present", "all"),
                   "pseudo_teacher": ("cross", "self")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"threshold must lie in [0, 1), got {self.threshold}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2 (batch normalisation)")
        if self.input_size is not None and self.input_size < 8:
            raise ValueError(f"input_size must be at least 8 pixels, got {self.input_size}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **{k: (dict(v) if isinstance(v, dict) else v) for k, v in changes.items()})

    @classmethod
    def recipe(cls, name: str, **overrides: Any) -> TrainConfig:
        """The configuration of a named recipe, with ``overrides`` applied.

        ``"nucdata"`` is this class's defaults; ``"paper"`` sets every field of
        :data:`RECIPE_DIFFERENCES` to the published method's value.
        """
        if name not in RECIPES:
            raise ValueError(f"unknown recipe {name!r}; recipes are {', '.join(RECIPES)}")
        values = {field_name: row[name] for field_name, row in RECIPE_DIFFERENCES.items() if name in row}
        values.update(overrides)
        return cls(**{k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()})


RECIPES = ("nucdata", "paper")

#: Every field on which the two recipes differ: the paper's value, nucdata's, what the
#: authors' code does, and why nucdata differs. ``docs/build-merged.md`` renders it.
RECIPE_DIFFERENCES: dict[str, dict[str, Any]] = {
    "mapped_labels": {
        "paper": "none", "nucdata": "candidates",
        "code": "own-dataset labels only",
        "why": "the mapping tables give exact or candidate labels in other sets for free; "
               "ambiguous rows train as partial labels, never as a guessed class"},
    "outside_head": {
        "paper": False, "nucdata": True,
        "code": "no outside output: every nucleus gets a class of every set",
        "why": "a fibroblast has no MoNuSAC class; forcing one is necessarily wrong"},
    "mask_channel": {
        "paper": False, "nucdata": True,
        "code": "RGB only (the mask is not an input)",
        "why": "tells the encoder which nucleus of a crowded crop is meant (not yet measured)"},
    "input_size": {
        "paper": 224, "nucdata": None,
        "code": "64 px crop resized to 224",
        "why": "native-resolution 32 px crops cost ~49x fewer pixels than 224 px inputs"},
    "encoder": {
        "paper": "resnet50", "nucdata": "small",
        "code": "torchvision resnet50, random initialisation",
        "why": "the small CNN trains on a CPU in minutes; ResNet-50 stays available"},
    "epochs": {
        "paper": {"A": 50, "B": 50, "C": 50}, "nucdata": {"A": 10, "B": 10, "C": 10},
        "code": "50 per stage",
        "why": "a CPU budget (50 epochs per stage is hours on a CPU); --epochs sets it"},
    "correlation_input": {
        "paper": "logits", "nucdata": "probs",
        "code": "raw logits of the other sets",
        "why": "probabilities are bounded and comparable across sets"},
    "correlation_grad": {
        "paper": True, "nucdata": False,
        "code": "gradients flow from the correlation heads into the backbone in stage C",
        "why": "the base features are trained by the base loss only; its effect is a measured switch, not a claim"},
    "pseudo_rule": {
        "paper": "unrestricted", "nucdata": "candidates",
        "code": "argmax of the full softmax above 0.99",
        "why": "same strictness, but a pseudo label never contradicts the nucleus's candidate set"},
    "loss_mean": {
        "paper": "all", "nucdata": "present",
        "code": "mean over a (set x module) table with zeros for absent sets",
        "why": "absent sets should not dilute the loss of the present ones"},
}
