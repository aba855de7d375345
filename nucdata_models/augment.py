"""Augmentation on the device, on whole batches of crops, in plain torch.

Random horizontal and vertical flips and transposition (together: the eight
90-degree rotations and reflections, each an exact permutation of pixels), colour
jitter (brightness, contrast, saturation factors in [0.8, 1.2], applied once each —
the reference code applies brightness twice) and a 3x3 Gaussian blur (sigma 1.5) on
a random tenth of the batch. Only the RGB channels are jittered and blurred; a mask
channel follows the geometric transforms only.

Every random choice is drawn per sample as a tensor and applied with
:func:`torch.where`, so nothing synchronises with the host on CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nucdata.errors import InvalidArgumentError

__all__ = ["augment", "augmented_inputs", "blur", "colour_jitter", "geometric", "normalise", "prepare", "to_unit"]


def to_unit(crops: torch.Tensor) -> torch.Tensor:
    """uint8 to float32 in [0, 1]."""
    return crops.float().div_(255.0)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] to [-1, 1] (the reference normalisation, mean 0.5 and std 0.5)."""
    return x.mul(2.0).sub_(1.0)


def _coin(n: int, p: float, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    return (torch.rand(n, device=device, generator=generator) < p)[:, None, None, None]


def geometric(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample random element of the dihedral group of the square (any dtype).

    A transpose, a horizontal flip and a vertical flip, each with probability 1/2,
    give the eight rotations by multiples of 90 degrees and their mirror images with
    equal probability. Output dtype and shape equal the input's.
    """
    if x.shape[-1] != x.shape[-2]:
        raise InvalidArgumentError(f"crops must be square, got {tuple(x.shape[-2:])}; cut square crops")
    n, dev = x.shape[0], x.device
    x = torch.where(_coin(n, 0.5, dev, generator), x.transpose(-1, -2), x)
    x = torch.where(_coin(n, 0.5, dev, generator), x.flip(-1), x)
    return torch.where(_coin(n, 0.5, dev, generator), x.flip(-2), x)


def colour_jitter(rgb: torch.Tensor, generator: torch.Generator | None = None, strength: float = 0.2) -> torch.Tensor:
    """Brightness, contrast and saturation with factors in [1 - strength, 1 + strength].

    ``rgb`` is float ``(N, 3, S, S)`` in [0, 1]; the result is clamped to [0, 1].
    """
    n = rgb.shape[0]
    f = 1 + (torch.rand(3, n, 1, 1, 1, device=rgb.device, generator=generator) * 2 - 1) * strength
    rgb = rgb * f[0]
    mean = rgb.mean(dim=(1, 2, 3), keepdim=True)
    rgb = (rgb - mean) * f[1] + mean
    grey = 0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3]
    rgb = (rgb - grey) * f[2] + grey
    return rgb.clamp(0, 1)


def blur(x: torch.Tensor, p: float = 0.1, sigma: float = 1.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """A 3x3 Gaussian blur (reflect padding) on a random fraction ``p`` of the batch."""
    t = torch.arange(3, device=x.device, dtype=x.dtype) - 1
    g = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = (g[:, None] * g[None, :]) / (g.sum() ** 2)
    c = x.shape[1]
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), kernel.expand(c, 1, 3, 3), groups=c)
    return torch.where(_coin(x.shape[0], p, x.device, generator), blurred, x)


def augment(crops: torch.Tensor, generator: torch.Generator | None = None, jitter: float = 0.2,
            blur_p: float = 0.1) -> torch.Tensor:
    """Augment a batch of crops; dtype and shape are kept.

    Parameters
    ----------
    crops
        ``(N, C, S, S)``, C = 3 or 4: uint8 in [0, 255] or float in [0, 1].
    generator
        Converter of randomness (on the crops' device), for reproducible runs.
    jitter, blur_p
        Colour-jitter strength and blur probability.

    Returns
    -------
    torch.Tensor
        Same dtype and shape; uint8 input is rounded back to uint8.
    """
    is_uint8 = crops.dtype == torch.uint8
    x = geometric(crops, generator)
    unit = to_unit(x) if is_uint8 else x
    rgb = blur(colour_jitter(unit[:, :3], generator, jitter), blur_p, generator=generator)
    if is_uint8:
        rgb = rgb.mul(255.0).round_().to(torch.uint8)
    return torch.cat([rgb, x[:, 3:]], dim=1)


def prepare(crops: torch.Tensor) -> torch.Tensor:
    """uint8 crops to the network's float input in [-1, 1], without augmentation."""
    return normalise(to_unit(crops))


def augmented_inputs(crops: torch.Tensor, generator: torch.Generator | None = None, jitter: float = 0.2,
                     blur_p: float = 0.1) -> torch.Tensor:
    """uint8 crops to augmented float network input in [-1, 1] (the training path).

    The same transforms as :func:`augment`, without rounding back to uint8: the
    geometric step runs on the uint8 bytes (a quarter of the memory traffic), the
    colour steps in float32.
    """
    x = to_unit(geometric(crops, generator))
    rgb = blur(colour_jitter(x[:, :3], generator, jitter), blur_p, generator=generator)
    return normalise(torch.cat([rgb, x[:, 3:]], dim=1))
