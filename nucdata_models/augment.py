"""Augmentation on the device, on whole batches of uint8 crops.

Random horizontal and vertical flips and 90-degree rotations (exact permutations of
pixels), colour jitter (brightness, contrast, saturation in [0.8, 1.2], each once — the
reference code applies brightness twice) and a 3x3 Gaussian blur (sigma 1.5) with
probability 0.1, then normalisation to [-1, 1]. Only the RGB channels are jittered; a
mask channel follows the geometric transforms only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_unit(crops: torch.Tensor) -> torch.Tensor:
    """uint8 to float in [0, 1]."""
    return crops.float().div_(255.0)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] to [-1, 1] (the reference normalisation, mean 0.5 and std 0.5)."""
    return x.mul(2.0).sub_(1.0)


def geometric(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample random flips and rotations by multiples of 90 degrees."""
    n = x.shape[0]
    dev = x.device
    flip_h = torch.rand(n, device=dev, generator=generator) < 0.5
    flip_v = torch.rand(n, device=dev, generator=generator) < 0.5
    turns = torch.randint(0, 4, (n,), device=dev, generator=generator)
    x = torch.where(flip_h[:, None, None, None], x.flip(-1), x)
    x = torch.where(flip_v[:, None, None, None], x.flip(-2), x)
    out = x.clone()
    for k in (1, 2, 3):
        sel = turns == k
        if sel.any():
            out[sel] = torch.rot90(x[sel], k, dims=(-2, -1))
    return out


def colour_jitter(rgb: torch.Tensor, generator: torch.Generator | None = None, strength: float = 0.2) -> torch.Tensor:
    """Brightness, contrast and saturation factors in [1 - strength, 1 + strength]."""
    n = rgb.shape[0]

    def factor() -> torch.Tensor:
        return (1 + (torch.rand(n, 1, 1, 1, device=rgb.device, generator=generator) * 2 - 1) * strength)

    rgb = rgb * factor()
    mean = rgb.mean(dim=(1, 2, 3), keepdim=True)
    rgb = (rgb - mean) * factor() + mean
    grey = (0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3])
    rgb = (rgb - grey) * factor() + grey
    return rgb.clamp_(0, 1)


def blur(rgb: torch.Tensor, p: float = 0.1, sigma: float = 1.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """A 3x3 Gaussian blur on a random fraction ``p`` of the batch."""
    sel = torch.rand(rgb.shape[0], device=rgb.device, generator=generator) < p
    if not sel.any():
        return rgb
    t = torch.arange(3, device=rgb.device, dtype=rgb.dtype) - 1
    g = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = (g[:, None] * g[None, :]) / (g.sum() ** 2)
    c = rgb.shape[1]
    weight = kernel.expand(c, 1, 3, 3)
    blurred = F.conv2d(F.pad(rgb[sel], (1, 1, 1, 1), mode="reflect"), weight, groups=c)
    out = rgb.clone()
    out[sel] = blurred
    return out


def augment(crops: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 crops ``(N, C, S, S)`` to augmented, normalised float inputs."""
    x = geometric(to_unit(crops), generator)
    rgb = blur(colour_jitter(x[:, :3], generator), generator=generator)
    x = torch.cat([rgb, x[:, 3:]], dim=1)
    return normalise(x)


def prepare(crops: torch.Tensor) -> torch.Tensor:
    """uint8 crops to normalised float inputs, without augmentation (evaluation)."""
    return normalise(to_unit(crops))
