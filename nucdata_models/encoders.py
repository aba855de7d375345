"""Encoders for nucleus crops at native size (no resize to 224), in plain torch.

``small`` is a four-block CNN for CPU tests and quick runs; ``resnet18`` and
``resnet50`` follow He et al. (basic and bottleneck blocks) with a stem suited to
32-64 px crops (3x3 convolution, no max-pool), so small nuclei keep their detail.
ImageNet weights are loaded only from a local file the user names (no hub access).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

from nucdata.errors import InvalidArgumentError


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
        if x.device.type == "cpu" and x.dim() == 4:
            # Channels-last on the CPU: oneDNN's convolutions and pooling take it without
            # reordering. Measured on two shared cores, one thread, batch 128 of 32 px crops
            # (benchmarks/encoder_layout.py): training steps 1.4-1.6x, inference 2-3x faster;
            # the same weights and outputs to float rounding (~1e-6).
            x = x.contiguous(memory_format=torch.channels_last)
        return self.features(x)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

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
    """1x1-3x3-1x1 convolutions with a residual connection (ResNet-50/101)."""

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


ENCODERS: dict[str, Callable[[int], nn.Module]] = {
    "small": lambda c: SmallCNN(c),
    "resnet18": lambda c: ResNet(BasicBlock, (2, 2, 2, 2), c),
    "resnet50": lambda c: ResNet(Bottleneck, (3, 4, 6, 3), c),
}


def torchvision_key(key: str) -> str:
    """Map a torchvision ResNet state-dict key to this module's naming.

    ``conv1``/``bn1`` -> ``stem.0``/``stem.1``, ``layerN.i`` -> ``stages.(N-1).i``,
    ``downsample`` -> ``shortcut``; a ``module.`` prefix (DataParallel) is dropped.
    Keys already in this naming pass through unchanged.
    """
    key = key.removeprefix("module.")
    if key.startswith("conv1."):
        return "stem.0." + key[len("conv1."):]
    if key.startswith("bn1."):
        return "stem.1." + key[len("bn1."):]
    if key.startswith("layer") and key[5:6].isdigit():
        stage = int(key[5]) - 1
        key = f"stages.{stage}" + key[6:]
        return key.replace(".downsample.", ".shortcut.")
    return key


def build_encoder(name: str, in_channels: int = 3, weights: str | os.PathLike[str] | None = None) -> nn.Module:
    """An encoder by name (``small``, ``resnet18``, ``resnet50``).

    Parameters
    ----------
    name
        Encoder name, a key of :data:`ENCODERS`.
    in_channels
        3 (RGB) or 4 (RGB + nucleus mask).
    weights
        Optional local file with a state dict (e.g. ImageNet weights saved from
        torchvision: its key names are translated by :func:`torchvision_key`; a
        ``{"state_dict": ...}`` wrapper is unwrapped). Nothing is downloaded. Keys that
        do not fit (the 7x7 ImageNet stem, a 4-channel input, the 1000-class ``fc``) are
        skipped and listed in ``encoder.skipped_weights``.

    Raises
    ------
    InvalidArgumentError
        For an unknown name, or a weights file of which no tensor fits (a ``ValueError``).
    """
    if name not in ENCODERS:
        raise InvalidArgumentError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    model = ENCODERS[name](in_channels)
    model.skipped_weights = []  # type: ignore[attr-defined]
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        own = model.state_dict()
        renamed = {torchvision_key(k): (k, v) for k, v in state.items()}
        usable = {k: v for k, (_, v) in renamed.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
        if not usable:
            raise InvalidArgumentError(f"{weights}: no tensor fits encoder {name!r} ({len(state)} keys, none matching); "
                             f"pass a state dict of a {name} network")
        model.load_state_dict(usable, strict=False)
        model.skipped_weights = sorted(orig for k, (orig, _) in renamed.items() if k not in usable)  # type: ignore[attr-defined]
    return model
