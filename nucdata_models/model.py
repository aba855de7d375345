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

    Notes
    -----
    The forward pass returns per set the logits, clamped to +-10 like the reference so
    one confident set cannot dominate the sum of losses.
    """

    def __init__(self, label_sets: list[LabelSetSpec], encoder: str = "small", in_channels: int = 3,
                 weights: str | os.PathLike[str] | None = None, outside: bool = False):
        super().__init__()
        self.names = [s.name for s in label_sets]
        self.encoder = build_encoder(encoder, in_channels, weights)
        extra = int(outside)
        self.heads = nn.ModuleDict({s.name: nn.Linear(self.encoder.out_features, s.size + extra)
                                    for s in label_sets})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.encoder(x)
        return {name: self.heads[name](features).clamp(-LOGIT_CLAMP, LOGIT_CLAMP) for name in self.names}


class CorrelationHeads(nn.Module):
    """Per label set k, an MLP predicting k from the other sets' outputs (stage B).

    ``Linear(sum of the other sets' sizes, hidden) -> BatchNorm -> ReLU -> Linear(hidden,
    n_k)``, as in the reference. What feeds it is the caller's choice (the trainer's
    ``correlation_input``): the base module's per-set probabilities (default; bounded
    and comparable across sets) or its raw logits (the reference's choice). With
    ``outside``, every set has one more output, in and out.
    """

    def __init__(self, label_sets: list[LabelSetSpec], hidden: int = 128, outside: bool = False):
        super().__init__()
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
        out = {}
        for name in self.names:
            others = torch.cat([inputs[o] for o in self.names if o != name], dim=1)
            out[name] = self.heads[name](others).clamp(-LOGIT_CLAMP, LOGIT_CLAMP)
        return out
