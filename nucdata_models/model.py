"""The two modules of the method: a base network and per-set correlation heads."""

from __future__ import annotations

import torch
from torch import nn

from .data import LabelSetSpec
from .encoders import build_encoder


class BaseModel(nn.Module):
    """Shared encoder with one linear head per label set (stage A)."""

    def __init__(self, label_sets: list[LabelSetSpec], encoder: str = "small", in_channels: int = 3,
                 weights: str | None = None):
        super().__init__()
        self.names = [s.name for s in label_sets]
        self.encoder = build_encoder(encoder, in_channels, weights)
        self.heads = nn.ModuleDict({s.name: nn.Linear(self.encoder.out_features, s.size) for s in label_sets})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.encoder(x)
        # Clamped like the reference code, so confident sets cannot dominate the loss.
        return {name: self.heads[name](features).clamp(-10, 10) for name in self.names}


class CorrelationHeads(nn.Module):
    """Per label set k, an MLP predicting k from the other sets' probabilities (stage B)."""

    def __init__(self, label_sets: list[LabelSetSpec], hidden: int = 128):
        super().__init__()
        self.names = [s.name for s in label_sets]
        sizes = {s.name: s.size for s in label_sets}
        total = sum(sizes.values())
        self.heads = nn.ModuleDict({
            name: nn.Sequential(nn.Linear(total - sizes[name], hidden), nn.BatchNorm1d(hidden),
                                nn.ReLU(inplace=True), nn.Linear(hidden, sizes[name]))
            for name in self.names
        })

    def forward(self, probabilities: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.names:
            others = torch.cat([probabilities[o] for o in self.names if o != name], dim=1)
            out[name] = self.heads[name](others).clamp(-10, 10)
        return out
