"""Stain normalisation of H&E images: Reinhard and Macenko, as pure numpy functions.

Two classic ways to make an image look as if it had been stained like a reference:

* **Reinhard** (Reinhard, Ashikhmin, Gooch and Shirley, "Color transfer between images",
  IEEE CG&A 2001; applied to H&E by many since): each channel of the image in CIE L*a*b*
  is shifted and scaled so that its mean and standard deviation become the reference's.
  :func:`fit_reinhard` measures the statistics, :func:`reinhard` transfers them.
  (Reinhard et al. used Ruderman's lαβ space; CIE L*a*b*, via :func:`skimage.color.rgb2lab`,
  is the common choice for H&E and the one here.)
* **Macenko** (Macenko et al., "A method for normalizing histology slides for quantitative
  analysis", ISBI 2009): pixels are taken to optical density (OD, Beer-Lambert:
  ``OD = -ln((I + 1) / Io)``), transparent pixels (any channel's OD below ``beta``) are
  dropped, the rest projected onto the plane of the two largest eigenvectors of their OD
  covariance; the robust extremes of the angle in that plane (percentiles ``alpha`` and
  ``100 - alpha``) give the two stain vectors (haematoxylin the one with the larger red
  OD), and each pixel's stain concentrations are its OD's least-squares coefficients on
  them. :func:`fit_macenko` returns the stain matrix and the ``99``-th percentile of each
  concentration; :func:`macenko` rescales the image's concentrations to the reference's
  maxima and re-renders them with the reference's stain vectors.

Both fits pool every pixel of the images given (a stain of a dataset is fitted from all
its images at once); the normalising functions fit the source image itself unless its
stain is given. Everything is float64 numpy; images are ``(H, W, 3)`` uint8 RGB and the
results are uint8 too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from nucdata.errors import InvalidArgumentError

__all__ = ["MacenkoStain", "ReinhardStain", "fit_macenko", "fit_reinhard", "macenko", "optical_density",
           "reinhard", "stain_from_dict"]

#: Default background intensity ``Io`` of the Beer-Lambert model (Macenko et al.'s 240).
IO = 240.0
#: Default OD threshold below which a pixel is transparent (Macenko et al.'s 0.15).
BETA = 0.15
#: Default angle percentile (Macenko et al.'s 1 %).
ALPHA = 1.0
#: Percentile of the concentrations taken as each stain's maximum (Macenko et al.'s 99).
MAX_PERCENTILE = 99.0
#: At most this many pixels are used to fit one stain (a fixed-seed subsample beyond).
FIT_PIXELS = 2_000_000


def _rgb(image: np.ndarray, where: str = "image") -> np.ndarray:
    """``image`` as ``(H, W, 3)`` uint8 (RGBA dropped; floats in [0, 1] scaled)."""
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise InvalidArgumentError(f"{where}: an RGB image is (H, W, 3), got shape {a.shape}; pass the colour image")
    a = a[..., :3]
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.floating):
        if a.size and (np.nanmin(a) < 0 or np.nanmax(a) > 1):
            raise InvalidArgumentError(f"{where}: a float image must lie in [0, 1]; got {np.nanmin(a):g}-"
                                       f"{np.nanmax(a):g}. Pass uint8 RGB")
        return np.clip(np.round(a * 255), 0, 255).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer) and (a.size == 0 or (a.min() >= 0 and a.max() <= 255)):
        return a.astype(np.uint8)
    raise InvalidArgumentError(f"{where}: expected uint8 RGB, got {a.dtype}; pass the 8-bit colour image")


def _pixels(images: np.ndarray | Iterable[np.ndarray], seed: int = 0) -> np.ndarray:
    """Every pixel of one image or several, ``(P, 3)`` uint8 (subsampled to :data:`FIT_PIXELS`)."""
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    parts = [_rgb(im, f"image {i}").reshape(-1, 3) for i, im in enumerate(images)]
    if not parts or not sum(len(p) for p in parts):
        raise InvalidArgumentError("fitting a stain needs at least one non-empty image")
    pixels = np.concatenate(parts)
    if len(pixels) > FIT_PIXELS:
        rows = np.random.default_rng(seed).choice(len(pixels), FIT_PIXELS, replace=False)
        pixels = pixels[np.sort(rows)]
    return pixels


# -- Reinhard ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReinhardStain:
    """A stain as Reinhard's method sees it: per CIE L*a*b* channel, mean and standard deviation.

    Attributes
    ----------
    mean, std
        float64 ``(3,)``: L*, a*, b* mean and standard deviation over the fitted pixels.
    pixels
        How many pixels were fitted.
    """

    mean: np.ndarray
    std: np.ndarray
    pixels: int = 0

    method = "reinhard"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types."""
        return {"method": self.method, "mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std],
                "pixels": int(self.pixels)}


def _lab(pixels: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    return rgb2lab(pixels.reshape(-1, 1, 3)).reshape(-1, 3)


def fit_reinhard(images: np.ndarray | Iterable[np.ndarray]) -> ReinhardStain:
    """The L*a*b* mean and standard deviation of every pixel of ``images``.

    Parameters
    ----------
    images
        One ``(H, W, 3)`` uint8 RGB image, or several (their pixels pooled).

    Returns
    -------
    ReinhardStain
    """
    pixels = _pixels(images)
    lab = _lab(pixels)
    return ReinhardStain(lab.mean(0), lab.std(0), len(pixels))


def reinhard(image: np.ndarray, target: ReinhardStain, source: ReinhardStain | None = None) -> np.ndarray:
    """``image`` with its L*a*b* statistics replaced by ``target``'s.

    Each channel ``x`` becomes ``(x - source.mean) / source.std * target.std + target.mean``
    (a channel without spread keeps its values, shifted to the target's mean).

    Parameters
    ----------
    image
        ``(H, W, 3)`` uint8 RGB.
    target
        The reference stain (:func:`fit_reinhard` of the reference images).
    source
        The image's own stain; default :func:`fit_reinhard` of ``image``.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` uint8 RGB.
    """
    from skimage.color import lab2rgb

    rgb = _rgb(image)
    if rgb.size == 0:
        return rgb.copy()
    source = source or fit_reinhard(rgb)
    lab = _lab(rgb.reshape(-1, 3))
    std = np.where(source.std > 1e-8, source.std, 1.0)
    gain = np.where(source.std > 1e-8, target.std / std, 1.0)
    lab = (lab - source.mean) * gain + target.mean
    lab[:, 0] = np.clip(lab[:, 0], 0, 100)
    out = lab2rgb(lab.reshape(-1, 1, 3)).reshape(rgb.shape)
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


# -- Macenko --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MacenkoStain:
    """A stain as Macenko's method sees it.

    Attributes
    ----------
    stain_matrix
        float64 ``(2, 3)``: unit OD vectors of haematoxylin (row 0) and eosin (row 1).
    max_concentrations
        float64 ``(2,)``: the :data:`MAX_PERCENTILE` percentile of each stain's concentration.
    io, beta, alpha
        The background intensity, transparency threshold and angle percentile used.
    pixels
        How many (non-transparent) pixels were fitted.
    """

    stain_matrix: np.ndarray
    max_concentrations: np.ndarray
    io: float = IO
    beta: float = BETA
    alpha: float = ALPHA
    pixels: int = 0

    method = "macenko"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types."""
        return {"method": self.method, "stain_matrix": [[float(v) for v in row] for row in self.stain_matrix],
                "max_concentrations": [float(v) for v in self.max_concentrations], "io": float(self.io),
                "beta": float(self.beta), "alpha": float(self.alpha), "pixels": int(self.pixels)}


def optical_density(pixels: np.ndarray, io: float = IO) -> np.ndarray:
    """Beer-Lambert optical density ``-ln((I + 1) / io)`` of uint8 intensities (float64, same shape)."""
    return -np.log((np.asarray(pixels, np.float64) + 1.0) / float(io))


def fit_macenko(images: np.ndarray | Iterable[np.ndarray], io: float = IO, beta: float = BETA,
                alpha: float = ALPHA) -> MacenkoStain:
    """Macenko et al.'s stain vectors and maximum concentrations of ``images``.

    Parameters
    ----------
    images
        One ``(H, W, 3)`` uint8 RGB image, or several (their pixels pooled).
    io, beta, alpha
        Background intensity, OD transparency threshold (a pixel is used only when every
        channel's OD is at least ``beta``) and the angle percentile.

    Returns
    -------
    MacenkoStain

    Raises
    ------
    InvalidArgumentError
        When fewer than two pixels are stained (a blank image has no stain to fit).
    """
    pixels = _pixels(images)
    od = optical_density(pixels, io)
    tissue = od[(od >= beta).all(1)]
    if len(tissue) < 2:
        raise InvalidArgumentError(f"fit_macenko: {len(tissue)} of {len(od)} pixels are stained (OD >= {beta:g} in "
                                   "every channel); fit on images holding tissue, or lower beta")
    _, vectors = np.linalg.eigh(np.cov(tissue, rowvar=False))
    plane = vectors[:, [2, 1]]  # the two largest eigenvectors
    plane = plane * np.where(plane.sum(0) < 0, -1.0, 1.0)  # pointing into positive OD
    t = tissue @ plane
    phi = np.arctan2(t[:, 1], t[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100.0 - alpha])
    v_lo = plane @ np.array([np.cos(lo), np.sin(lo)])
    v_hi = plane @ np.array([np.cos(hi), np.sin(hi)])
    matrix = np.stack([v_lo, v_hi]) if v_lo[0] > v_hi[0] else np.stack([v_hi, v_lo])  # haematoxylin first
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    concentrations = _concentrations(od, matrix)
    maxima = np.percentile(concentrations, MAX_PERCENTILE, axis=0)
    return MacenkoStain(matrix, maxima, float(io), float(beta), float(alpha), len(tissue))


def _concentrations(od: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Least-squares stain concentrations ``(P, 2)`` of OD rows ``(P, 3)`` on ``matrix`` ``(2, 3)``."""
    solution, *_ = np.linalg.lstsq(matrix.T, od.T, rcond=None)
    return solution.T


def macenko(image: np.ndarray, target: MacenkoStain, source: MacenkoStain | None = None) -> np.ndarray:
    """``image`` re-rendered with ``target``'s stain vectors and concentration range.

    Each pixel's concentrations on the source's stain vectors are scaled by
    ``target.max_concentrations / source.max_concentrations`` and rendered as
    ``io * exp(-C @ target.stain_matrix) - 1`` (the inverse of :func:`optical_density`).

    Parameters
    ----------
    image
        ``(H, W, 3)`` uint8 RGB.
    target
        The reference stain (:func:`fit_macenko` of the reference images).
    source
        The image's own stain; default :func:`fit_macenko` of ``image`` (with the
        target's ``io``, ``beta`` and ``alpha``).

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` uint8 RGB.
    """
    rgb = _rgb(image)
    if rgb.size == 0:
        return rgb.copy()
    source = source or fit_macenko(rgb, target.io, target.beta, target.alpha)
    od = optical_density(rgb.reshape(-1, 3), source.io)
    c = _concentrations(od, source.stain_matrix)
    scale = np.where(source.max_concentrations > 1e-12, target.max_concentrations
                     / np.where(source.max_concentrations > 1e-12, source.max_concentrations, 1.0), 1.0)
    out = target.io * np.exp(-(c * scale) @ target.stain_matrix) - 1.0
    return np.clip(np.round(out), 0, 255).astype(np.uint8).reshape(rgb.shape)


def stain_from_dict(d: Mapping[str, Any]) -> ReinhardStain | MacenkoStain:
    """A stain back from its :meth:`~ReinhardStain.to_dict` form."""
    method = d.get("method")
    if method == "reinhard":
        return ReinhardStain(np.asarray(d["mean"], np.float64), np.asarray(d["std"], np.float64),
                             int(d.get("pixels", 0)))
    if method == "macenko":
        return MacenkoStain(np.asarray(d["stain_matrix"], np.float64), np.asarray(d["max_concentrations"], np.float64),
                            float(d.get("io", IO)), float(d.get("beta", BETA)), float(d.get("alpha", ALPHA)),
                            int(d.get("pixels", 0)))
    raise InvalidArgumentError(f"a stain's method is 'reinhard' or 'macenko', got {method!r}")
