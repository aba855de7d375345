"""Encoders for nucleus crops at native size (no resize to 224), in plain torch.

``small`` is a four-block CNN for CPU tests and quick runs; ``resnet18`` and
``resnet50`` follow He et al. (basic and bottleneck blocks) with a stem suited to
32-64 px crops (3x3 convolution, no max-pool), so small nuclei keep their detail.
ImageNet weights are loaded only from a local file the user names (no hub access).
"""

from __future__ import annotations

import os

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU blocks with pooling: ~0.1 M parameters, CPU friendly."""

    def __init__(self, in_channels: int = 3, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i, out in enumerate((width, width * 2, width * 4, width * 4)):
            layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
            c = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_features = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        mid = cout // self.expansion
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return torch.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """ResNet for small crops: 3x3 stem, four stages, global average pooling."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], depths: tuple[int, ...], in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        stages = []
        cin = 64
        for i, (depth, width) in enumerate(zip(depths, (64, 128, 256, 512), strict=True)):
            cout = width * block.expansion
            blocks = []
            for j in range(depth):
                blocks.append(block(cin, cout, stride=2 if (j == 0 and i > 0) else 1))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_features = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(x)))


ENCODERS = {
    "small": lambda c: SmallCNN(c),
    "resnet18": lambda c: ResNet(BasicBlock, (2, 2, 2, 2), c),
    "resnet50": lambda c: ResNet(Bottleneck, (3, 4, 6, 3), c),
}


def build_encoder(name: str, in_channels: int = 3, weights: str | os.PathLike[str] | None = None) -> nn.Module:
    """An encoder by name (``small``, ``resnet18``, ``resnet50``).

    ``weights`` is a local ``.pt`` state dict (e.g. converted ImageNet weights); keys
    that do not fit (the stem of a 7x7 ImageNet model, a 4-channel input) are skipped
    and reported.
    """
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    model = ENCODERS[name](in_channels)
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        own = model.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(usable, strict=False)
        model.skipped_weights = sorted(set(state) - set(usable))  # type: ignore[attr-defined]
    return model
