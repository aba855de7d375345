"""Reinhard and Macenko stain normalisation on synthetic images whose stain is known (Beer-Lambert)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nucdata.errors import InvalidArgumentError
from nucdata_models.stain import (
    IO,
    MacenkoStain,
    ReinhardStain,
    fit_macenko,
    fit_reinhard,
    macenko,
    optical_density,
    reinhard,
    stain_from_dict,
)


def _unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


#: Two labs' H and E OD vectors (Ruifrok and Johnston's haematoxylin; an eosin that absorbs in every
#: channel, as Macenko's fits of real slides find, so its pure pixels pass the transparency threshold).
STAIN_A = np.stack([_unit([0.65, 0.70, 0.29]), _unit([0.27, 0.90, 0.35])])
STAIN_B = np.stack([_unit([0.55, 0.78, 0.30]), _unit([0.35, 0.85, 0.40])])


def beer_lambert(matrix: np.ndarray, h: float, e: float, size: int = 96, seed: int = 0) -> np.ndarray:
    """An H&E image rendered from known stain vectors: nuclei of haematoxylin only (scale ``h``),
    stroma of eosin only (scale ``e``), and a band where both mix; ``I = Io exp(-OD) - 1``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    ch = np.zeros((size, size))
    ce = np.zeros((size, size))
    nuclei = np.zeros((size, size), bool)
    for _ in range(12):
        cx, cy, r = rng.uniform(8, size - 8), rng.uniform(8, size - 8), rng.uniform(3, 6)
        nuclei |= (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    ch[nuclei] = rng.uniform(0.5, 1.0, nuclei.sum()) * h
    stroma = ~nuclei
    ce[stroma] = rng.uniform(0.6, 1.0, stroma.sum()) * e
    band = (xx > size // 2) & (xx < size // 2 + 12)
    ch[band] = rng.uniform(0.2, 0.6, band.sum()) * h
    ce[band] = rng.uniform(0.2, 0.6, band.sum()) * e
    od = ch[..., None] * matrix[0] + ce[..., None] * matrix[1]
    return np.clip(np.round(IO * np.exp(-od) - 1.0), 0, 255).astype(np.uint8)


def _cos(a, b):
    return float(np.dot(_unit(a), _unit(b)))


@pytest.fixture(scope="module")
def images():
    return beer_lambert(STAIN_A, 1.2, 1.0, seed=1), beer_lambert(STAIN_B, 1.6, 0.8, seed=2)


def test_optical_density_inverts_the_rendering():
    rgb = np.array([[0, 100, 239]], np.uint8)
    assert np.allclose(IO * np.exp(-optical_density(rgb)) - 1.0, rgb)


def test_macenko_finds_the_stain_vectors_it_was_rendered_with(images):
    for image, truth in zip(images, (STAIN_A, STAIN_B), strict=True):
        stain = fit_macenko(image)
        assert stain.stain_matrix.shape == (2, 3)
        assert _cos(stain.stain_matrix[0], truth[0]) > 0.995  # haematoxylin first
        assert _cos(stain.stain_matrix[1], truth[1]) > 0.995
        assert np.allclose(np.linalg.norm(stain.stain_matrix, axis=1), 1.0)
        assert stain.pixels > 0 and (stain.max_concentrations > 0).all()


def test_macenko_to_its_own_stain_is_the_identity(images):
    for image in images:
        out = macenko(image, fit_macenko(image))
        assert out.dtype == np.uint8 and out.shape == image.shape
        diff = np.abs(out.astype(int) - image.astype(int))
        assert diff.max() <= 2 and diff.mean() < 0.1


def test_macenko_a_to_b_gives_bs_stain(images):
    a, b = images
    target = fit_macenko(b)
    got = fit_macenko(macenko(a, target))
    assert _cos(got.stain_matrix[0], target.stain_matrix[0]) > 0.999
    assert _cos(got.stain_matrix[1], target.stain_matrix[1]) > 0.999
    assert np.allclose(got.max_concentrations, target.max_concentrations, rtol=0.05)
    # and it differs from A's own stain: the image really changed
    assert _cos(fit_macenko(a).stain_matrix[0], target.stain_matrix[0]) < 0.995


def test_reinhard_to_its_own_stain_is_the_identity(images):
    for image in images:
        out = reinhard(image, fit_reinhard(image))
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert np.abs(out.astype(int) - image.astype(int)).max() <= 1


def test_reinhard_a_to_b_gives_bs_statistics(images):
    a, b = images
    target = fit_reinhard(b)
    got = fit_reinhard(reinhard(a, target))
    assert np.allclose(got.mean, target.mean, atol=0.5)
    assert np.allclose(got.std, target.std, rtol=0.03, atol=0.2)
    assert not np.allclose(fit_reinhard(a).mean, target.mean, atol=2)


def test_a_stain_fitted_on_several_images_pools_their_pixels(images):
    a, b = images
    pooled = fit_reinhard([a, b])
    lab = np.concatenate([_lab(a), _lab(b)])
    assert pooled.pixels == a.shape[0] * a.shape[1] * 2
    assert np.allclose(pooled.mean, lab.mean(0)) and np.allclose(pooled.std, lab.std(0))


def _lab(image):
    from skimage.color import rgb2lab

    return rgb2lab(image).reshape(-1, 3)


def test_stains_round_trip_through_json(images):
    for stain in (fit_reinhard(images[0]), fit_macenko(images[0])):
        back = stain_from_dict(json.loads(json.dumps(stain.to_dict())))
        assert type(back) is type(stain)
        for field in ("mean", "std", "stain_matrix", "max_concentrations"):
            if hasattr(stain, field):
                assert np.allclose(getattr(back, field), getattr(stain, field))
    assert isinstance(stain_from_dict({"method": "reinhard", "mean": [1, 2, 3], "std": [1, 1, 1]}), ReinhardStain)
    with pytest.raises(InvalidArgumentError, match="'reinhard' or 'macenko'"):
        stain_from_dict({"method": "vahadane"})


def test_inputs_are_checked(images):
    blank = np.full((16, 16, 3), 250, np.uint8)
    with pytest.raises(InvalidArgumentError, match="stained"):
        fit_macenko(blank)
    with pytest.raises(InvalidArgumentError, match=r"\(H, W, 3\)"):
        fit_reinhard(np.zeros((4, 4), np.uint8))
    with pytest.raises(InvalidArgumentError, match=r"\[0, 1\]"):
        reinhard(np.full((4, 4, 3), 2.0), fit_reinhard(images[0]))
    rgba = np.concatenate([images[0], np.full((*images[0].shape[:2], 1), 255, np.uint8)], 2)
    assert np.array_equal(macenko(rgba, fit_macenko(images[0])), macenko(images[0], fit_macenko(images[0])))
    assert isinstance(fit_macenko(images[0].astype(np.float64) / 255), MacenkoStain)
