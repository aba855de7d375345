"""The two modules of the method: a base network and per-set correlation heads."""

from __future__ import annotations

import os

import torch
from torch import nn

from nucdata.errors import InvalidArgumentError
from nucdata_models.data import LabelSetSpec
from nucdata_models.encoders import build_encoder

__all__ = ["BaseModel", "CorrelationHeads", "LOGIT_CLAMP"]

LOGIT_CLAMP = 10.0  # the reference clamps logits to +-10


class BaseModel(nn.Module):
    """Shared encoder with one linear head per label set (stage A).

    Parameters
    ----------
    label_sets
        The sets, in head order.
    encoder
        Encoder name (see :func:`.encoders.build_encoder`).
    in_channels
        3 or 4.
    weights
        Optional local file with encoder weights.
    outside
        Give every head one more output, "none of this set's classes" (an extension
        of the method; see ``TrainConfig.outside_head``).
    clamp
        Clamp the logits to +-10 (``TrainConfig.logit_clamp="everywhere"``); the
        reference clamps them inside its stage-A loss only (``"stage_a_loss"``).

    Notes
    -----
    The forward pass returns per set the logits, clamped to +-10 like the reference's
    stage-A loss so one confident set cannot dominate the sum of losses.
    """

    def __init__(self, label_sets: list[LabelSetSpec], encoder: str = "small", in_channels: int = 3,
                 weights: str | os.PathLike[str] | None = None, outside: bool = False, clamp: bool = True):
        super().__init__()
        self.clamp = clamp
        self.names = [s.name for s in label_sets]
        self.encoder = build_encoder(encoder, in_channels, weights)
        extra = int(outside)
        self.heads = nn.ModuleDict({s.name: nn.Linear(self.encoder.out_features, s.size + extra)
                                    for s in label_sets})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.encoder(x)
        out = {name: self.heads[name](features) for name in self.names}
        return {k: v.clamp(-LOGIT_CLAMP, LOGIT_CLAMP) for k, v in out.items()} if self.clamp else out


class CorrelationHeads(nn.Module):
    """Per label set k, an MLP predicting k from the other sets' outputs (stage B).

    ``Linear(sum of the other sets' sizes, hidden) -> BatchNorm -> ReLU -> Linear(hidden,
    n_k)``, as in the reference. What feeds it is the caller's choice (the trainer's
    ``correlation_input``): the base module's per-set probabilities (default; bounded
    and comparable across sets) or its raw logits (the reference's choice). With
    ``outside``, every set has one more output, in and out. ``clamp``: as
    :class:`BaseModel`'s.
    """

    def __init__(self, label_sets: list[LabelSetSpec], hidden: int = 128, outside: bool = False, clamp: bool = True):
        super().__init__()
        self.clamp = clamp
        self.names = [s.name for s in label_sets]
        if len(self.names) < 2:
            raise InvalidArgumentError(f"correlation heads need at least two label sets, got {self.names}; "
                                       "train with two or more")
        sizes = {s.name: s.size + int(outside) for s in label_sets}
        total = sum(sizes.values())
        self.heads = nn.ModuleDict({
            name: nn.Sequential(nn.Linear(total - sizes[name], hidden), nn.BatchNorm1d(hidden),
                                nn.ReLU(inplace=True), nn.Linear(hidden, sizes[name]))
            for name in self.names
        })

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: self.forward_one(name, inputs) for name in self.names}

    def forward_one(self, name: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Set ``name``'s head only (stage B with ``heads_training="separate"``)."""
        others = torch.cat([inputs[o] for o in self.names if o != name], dim=1)
        out = self.heads[name](others)
        return out.clamp(-LOGIT_CLAMP, LOGIT_CLAMP) if self.clamp else out
