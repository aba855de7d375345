"""Augmentation on the device, on whole batches of crops, in plain torch.

Random horizontal and vertical flips and transposition (together: the eight
90-degree rotations and reflections, each an exact permutation of pixels), colour
jitter (brightness, contrast, saturation factors in [0.8, 1.2], applied once each —
the reference code applies brightness twice) and a 3x3 Gaussian blur (sigma 1.5) on
a random tenth of the batch. Only the RGB channels are jittered and blurred; a mask
channel follows the geometric transforms only.

Three more, each off unless asked for (``TrainConfig.stain_jitter``, ``scale_jitter``,
``blur_sigma``), aimed at what differs between datasets rather than within one:

* **HED stain jitter** (:func:`hed_jitter`; Tellez et al., "Whole-slide mitosis
  detection in H&E breast histology using PHH3 as a reference to train distilled
  stain-invariant convolutional networks", IEEE TMI 2018): colour deconvolution into
  haematoxylin, eosin and DAB optical densities with Ruifrok and Johnston's matrix
  (the one ``skimage.color.rgb2hed`` uses), a per-sample scale ``U(1 - s, 1 + s)`` and
  shift ``U(-s, s)`` of each stain's density, and back; the densities are natural-log
  optical densities (``-ln I``, the units of ``rgb2hed`` before scikit-image 0.19 and of
  Tellez et al.), not clipped, so the identity jitter returns the input exactly;
* **random rescale** (:func:`rescale`): a per-sample zoom about the crop's centre by a
  factor ``U(1 - a, 1 + a)`` (bilinear for the colours, nearest for a mask channel,
  mirrored at the border);
* **random blur** (:func:`random_blur`): a per-sample Gaussian blur with sigma
  ``U(0, b)`` px.

Every random choice is drawn per sample as a tensor and applied with
:func:`torch.where` or batched arithmetic, so nothing synchronises with the host on CUDA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nucdata.errors import InvalidArgumentError

__all__ = ["BACKGROUND_REFERENCE", "HED_FROM_RGB", "JITTER_RULES", "RGB_FROM_HED", "augment", "augmented_inputs",
           "background_balance", "blur", "colour_jitter", "geometric",
           "hed_jitter", "normalise", "prepare", "random_blur", "rescale", "to_unit"]

#: Ruifrok and Johnston's stain vectors (rows: haematoxylin, eosin, DAB; columns: the
#: optical density they add to R, G, B), as in ``skimage.color.rgb_from_hed``.
RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))
#: Its inverse: optical densities (a row vector) to stain densities.
HED_FROM_RGB = tuple(tuple(float(v) for v in row) for row in torch.linalg.inv(torch.tensor(RGB_FROM_HED,
                                                                                          dtype=torch.float64)))
#: Smallest intensity before the logarithm (as ``rgb2hed``).
_MIN_INTENSITY = 1e-6


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


#: Colour-jitter rules (``TrainConfig.jitter_rule``).
JITTER_RULES = ("nucdata", "reference")


def _grey(rgb: torch.Tensor) -> torch.Tensor:
    return 0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3]


def colour_jitter(rgb: torch.Tensor, generator: torch.Generator | None = None, strength: float = 0.2,
                  rule: str = "nucdata") -> torch.Tensor:
    """Brightness, contrast and saturation with factors in [1 - strength, 1 + strength].

    ``rgb`` is float ``(N, 3, S, S)`` in [0, 1]; the result is clamped to [0, 1].

    ``rule="nucdata"``: each factor once, in that order, contrast around the mean of
    the RGB values, one clamp at the end. ``rule="reference"`` (the authors'
    ``MyRandomColorJitter``, ``dataset/dataset.py:459-494``): the three in a random
    order per sample, brightness applied twice with its factor, contrast around the
    mean of the grey image, a clamp to [0, 1] after every operation (as torchvision's
    ``adjust_*`` do). The reference jitters the whole image before cropping; here the
    crop is jittered, so its contrast mean is the crop's.
    """
    if rule not in JITTER_RULES:
        raise InvalidArgumentError(f"colour_jitter(rule={rule!r}): pass one of {', '.join(JITTER_RULES)}")
    n = rgb.shape[0]
    if rule == "reference":
        return _reference_jitter(rgb, generator, strength)
    f = 1 + (torch.rand(3, n, 1, 1, 1, device=rgb.device, generator=generator) * 2 - 1) * strength
    rgb = rgb * f[0]
    mean = rgb.mean(dim=(1, 2, 3), keepdim=True)
    rgb = (rgb - mean) * f[1] + mean
    grey = _grey(rgb)
    rgb = (rgb - grey) * f[2] + grey
    return rgb.clamp(0, 1)


def _reference_jitter(rgb: torch.Tensor, generator: torch.Generator | None, strength: float) -> torch.Tensor:
    n, dev = rgb.shape[0], rgb.device
    f = 1 + (torch.rand(3, n, 1, 1, 1, device=dev, generator=generator) * 2 - 1) * strength
    order = torch.rand(n, 3, device=dev, generator=generator).argsort(dim=1)  # a random permutation per sample

    def brightness(x: torch.Tensor) -> torch.Tensor:
        return (x * f[0]).clamp(0, 1).mul(f[0]).clamp(0, 1)  # twice, as the reference

    def contrast(x: torch.Tensor) -> torch.Tensor:
        mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
        return ((x - mean) * f[1] + mean).clamp(0, 1)

    def saturation(x: torch.Tensor) -> torch.Tensor:
        grey = _grey(x)
        return ((x - grey) * f[2] + grey).clamp(0, 1)

    for position in range(3):
        op = order[:, position][:, None, None, None]
        rgb = torch.where(op == 0, brightness(rgb), torch.where(op == 1, contrast(rgb), saturation(rgb)))
    return rgb


def hed_jitter(rgb: torch.Tensor, generator: torch.Generator | None = None, strength: float = 0.05) -> torch.Tensor:
    """HED-space stain jitter: per sample and stain, density ``d * U(1 - s, 1 + s) + U(-s, s)``.

    ``rgb`` is float ``(N, 3, S, S)`` in [0, 1]; the result is clamped to [0, 1]. The
    densities are natural-log optical densities through :data:`HED_FROM_RGB`; see the
    module docstring. ``strength`` 0.05 is Tellez et al.'s "HED-light".
    """
    n, dev = rgb.shape[0], rgb.device
    od = -rgb.clamp_min(_MIN_INTENSITY).log()
    to_hed = torch.tensor(HED_FROM_RGB, dtype=rgb.dtype, device=dev)
    to_rgb = torch.tensor(RGB_FROM_HED, dtype=rgb.dtype, device=dev)
    stains = torch.einsum("nchw,cd->ndhw", od, to_hed)
    scale = 1 + (torch.rand(n, 3, 1, 1, device=dev, generator=generator, dtype=rgb.dtype) * 2 - 1) * strength
    shift = (torch.rand(n, 3, 1, 1, device=dev, generator=generator, dtype=rgb.dtype) * 2 - 1) * strength
    od = torch.einsum("ndhw,dc->nchw", stains * scale + shift, to_rgb)
    return torch.exp(-od).clamp(0, 1)


def rescale(x: torch.Tensor, generator: torch.Generator | None = None, amount: float = 0.1,
            mask_channels: int = 0) -> torch.Tensor:
    """Per-sample zoom about the centre by ``U(1 - amount, 1 + amount)`` (> 1 enlarges).

    ``x`` is float ``(N, C, S, S)``; colour channels are resampled bilinearly, the last
    ``mask_channels`` nearest (so a mask stays 0/1), both mirrored at the border.
    """
    n, dev = x.shape[0], x.device
    factor = 1 + (torch.rand(n, device=dev, generator=generator, dtype=x.dtype) * 2 - 1) * amount
    theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / factor
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    colours = x[:, : x.shape[1] - mask_channels]
    out = F.grid_sample(colours, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if mask_channels:
        mask = F.grid_sample(x[:, x.shape[1] - mask_channels :], grid, mode="nearest", padding_mode="reflection",
                             align_corners=False)
        out = torch.cat([out, mask], dim=1)
    return out


def random_blur(x: torch.Tensor, generator: torch.Generator | None = None, max_sigma: float = 1.0) -> torch.Tensor:
    """Per-sample Gaussian blur with sigma ``U(0, max_sigma)`` px (reflect padding, radius ``ceil(2 max_sigma)``)."""
    n, c, h, w = x.shape
    radius = max(1, int(math.ceil(2 * max_sigma)))
    sigma = torch.rand(n, device=x.device, generator=generator, dtype=x.dtype) * max_sigma
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    g = torch.exp(-(t[None, :] ** 2) / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    g = (g / g.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # (N * C, taps)
    flat = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, g[:, None, None, :], groups=n * c)
    flat = F.conv2d(flat, g[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, h, w)


def blur(x: torch.Tensor, p: float = 0.1, sigma: float = 1.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """A 3x3 Gaussian blur (reflect padding) on a random fraction ``p`` of the batch."""
    t = torch.arange(3, device=x.device, dtype=x.dtype) - 1
    g = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = (g[:, None] * g[None, :]) / (g.sum() ** 2)
    c = x.shape[1]
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), kernel.expand(c, 1, 3, 3), groups=c)
    return torch.where(_coin(x.shape[0], p, x.device, generator), blurred, x)


def _colour_and_scale(x: torch.Tensor, generator: torch.Generator | None, jitter: float, blur_p: float,
                      stain: float, scale: float, blur_sigma: float, jitter_rule: str = "nucdata") -> torch.Tensor:
    """The steps after the geometric one, on float ``(N, C, S, S)`` in [0, 1]; a switch at 0 draws nothing."""
    if scale:
        x = rescale(x, generator, scale, mask_channels=x.shape[1] - 3)
    rgb = x[:, :3]
    if stain:
        rgb = hed_jitter(rgb, generator, stain)
    rgb = blur(colour_jitter(rgb, generator, jitter, jitter_rule), blur_p, generator=generator)
    if blur_sigma:
        rgb = random_blur(rgb, generator, blur_sigma)
    return torch.cat([rgb, x[:, 3:]], dim=1)


def augment(crops: torch.Tensor, generator: torch.Generator | None = None, jitter: float = 0.2,
            blur_p: float = 0.1, stain: float = 0.0, scale: float = 0.0, blur_sigma: float = 0.0) -> torch.Tensor:
    """Augment a batch of crops; dtype and shape are kept.

    Parameters
    ----------
    crops
        ``(N, C, S, S)``, C = 3 or 4: uint8 in [0, 255] or float in [0, 1].
    generator
        Converter of randomness (on the crops' device), for reproducible runs.
    jitter, blur_p
        Colour-jitter strength and blur probability.
    stain, scale, blur_sigma
        HED stain-jitter strength (:func:`hed_jitter`), rescale amount
        (:func:`rescale`) and the largest random blur sigma (:func:`random_blur`); 0 off.

    Returns
    -------
    torch.Tensor
        Same dtype and shape; uint8 input is rounded back to uint8.
    """
    is_uint8 = crops.dtype == torch.uint8
    x = geometric(crops, generator)
    unit = to_unit(x) if is_uint8 else x
    out = _colour_and_scale(unit, generator, jitter, blur_p, stain, scale, blur_sigma)
    if is_uint8:
        rgb = out[:, :3].mul(255.0).round_().to(torch.uint8)
        mask = out[:, 3:].mul(255.0).round_().to(torch.uint8) if scale else x[:, 3:]
        return torch.cat([rgb, mask], dim=1)
    return out


#: Background intensity every crop is brought to by :func:`background_balance`.
BACKGROUND_REFERENCE = 0.8


def background_balance(x: torch.Tensor, ring: int | None = None, reference: float = BACKGROUND_REFERENCE
                       ) -> torch.Tensor:
    """Per-crop white balance: each colour channel divided by its background and multiplied by ``reference``.

    ``x`` is float ``(N, C, S, S)`` in [0, 1], the first three channels RGB (a mask channel
    is kept). The background of a crop is the per-channel median of its outer ring of
    ``ring`` px (default ``max(1, S // 8)``): a crop is centred on its nucleus, so the
    ring is mostly the tissue around it, and a median ignores a neighbour's edge.
    Dividing by it is the Beer-Lambert view of a stain or scanner difference (the
    incident light ``Io`` of Macenko et al. estimated per crop): optical densities
    relative to the local background, which a lab's overall colour cast does not move.
    The result is clamped to [0, 1].
    """
    s = x.shape[-1]
    width = max(1, s // 8) if ring is None else int(ring)
    if not 0 < 2 * width < s:
        raise InvalidArgumentError(f"background_balance: a ring of {width} px does not fit a {s} px crop; "
                                   f"pass a ring below {s // 2}")
    rgb = x[:, :3]
    edge = torch.ones(s, s, dtype=torch.bool, device=x.device)
    edge[width:s - width, width:s - width] = False
    background = rgb[:, :, edge].median(dim=2).values.clamp_min(1.0 / 255.0)
    out = (rgb * (reference / background)[:, :, None, None]).clamp_(0.0, 1.0)
    return torch.cat([out, x[:, 3:]], dim=1)


def prepare(crops: torch.Tensor, balance: bool = False) -> torch.Tensor:
    """uint8 crops to the network's float input in [-1, 1], without augmentation (``balance``: :func:`background_balance`)."""
    x = to_unit(crops)
    return normalise(background_balance(x) if balance else x)


def augmented_inputs(crops: torch.Tensor, generator: torch.Generator | None = None, jitter: float = 0.2,
                     blur_p: float = 0.1, stain: float = 0.0, scale: float = 0.0,
                     blur_sigma: float = 0.0, jitter_rule: str = "nucdata", balance: bool = False) -> torch.Tensor:
    """uint8 crops to augmented float network input in [-1, 1] (the training path).

    The same transforms as :func:`augment`, without rounding back to uint8: the
    geometric step runs on the uint8 bytes (a quarter of the memory traffic), the
    colour steps in float32.
    """
    x = _colour_and_scale(to_unit(geometric(crops, generator)), generator, jitter, blur_p, stain, scale, blur_sigma,
                          jitter_rule)
    return normalise(background_balance(x) if balance else x)
