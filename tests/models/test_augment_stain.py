"""Stain, scale and blur augmentation, and the stain-swap outside rate (issue 20 point 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nucdata_models.augment import (
    HED_FROM_RGB,
    RGB_FROM_HED,
    augmented_inputs,
    blur,
    colour_jitter,
    geometric,
    hed_jitter,
    normalise,
    random_blur,
    rescale,
    to_unit,
)
from nucdata_models.train import recolour


def _crops(n=16, size=12, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)


def test_the_stain_matrix_is_ruifrok_and_johnstons():
    color = pytest.importorskip("skimage.color")
    assert np.allclose(np.asarray(RGB_FROM_HED), color.rgb_from_hed)
    assert np.allclose(np.asarray(HED_FROM_RGB), color.hed_from_rgb)


def test_hed_densities_are_rgb2heds_in_natural_log_units():
    color = pytest.importorskip("skimage.color")
    rgb = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.8 + 0.1
    ours = torch.einsum("nchw,cd->ndhw", -rgb.double().log(), torch.tensor(HED_FROM_RGB, dtype=torch.float64))
    theirs = color.rgb2hed(rgb[0].permute(1, 2, 0).double().numpy()) * np.log(1e6)  # rgb2hed divides by ln 1e6
    positive = (ours[0].permute(1, 2, 0).numpy() > 0).all(-1)  # rgb2hed clips negative densities to 0
    assert positive.any()
    assert np.allclose(ours[0].permute(1, 2, 0).numpy()[positive], theirs[positive], atol=1e-6)


def test_the_identity_jitter_returns_the_input_and_a_shift_is_an_optical_density_shift():
    rgb = to_unit(_crops())
    same = hed_jitter(rgb, torch.Generator().manual_seed(0), 0.0)
    assert torch.allclose(same, rgb.clamp_min(1e-6), atol=1e-5)
    jittered = hed_jitter(rgb, torch.Generator().manual_seed(0), 0.2)
    assert jittered.shape == rgb.shape and float(jittered.min()) >= 0 and float(jittered.max()) <= 1
    assert float((jittered - rgb).abs().mean()) > 0.01
    # one sample's change is one scale and shift per stain: the same for every pixel of equal colour
    flat = torch.full((2, 3, 4, 4), 0.5)
    out = hed_jitter(flat, torch.Generator().manual_seed(3), 0.2)
    assert torch.allclose(out[0], out[0, :, :1, :1].expand(3, 4, 4))
    assert not torch.allclose(out[0], out[1])


def test_rescale_by_one_is_the_identity_and_keeps_a_mask_binary():
    x = to_unit(_crops(channels=4))
    x[:, 3] = (x[:, 3] > 0.5).float()
    assert torch.allclose(rescale(x, torch.Generator().manual_seed(0), 0.0, mask_channels=1), x, atol=1e-6)
    out = rescale(x, torch.Generator().manual_seed(0), 0.3, mask_channels=1)
    assert set(out[:, 3].unique().tolist()) <= {0.0, 1.0}
    assert not torch.allclose(out[:, :3], x[:, :3])
    # an enlarged centred disc covers more pixels
    yy, xx = torch.meshgrid(torch.arange(24.0) - 11.5, torch.arange(24.0) - 11.5, indexing="ij")
    disc = ((yy**2 + xx**2) <= 25).float().expand(64, 1, 24, 24).contiguous()
    g = torch.Generator().manual_seed(5)
    factor = 1 + (torch.rand(64, generator=torch.Generator().manual_seed(5)) * 2 - 1) * 0.3
    grown = rescale(disc, g, 0.3, mask_channels=1)
    area = grown.sum((1, 2, 3))
    assert torch.corrcoef(torch.stack([area, factor]))[0, 1] > 0.9


def test_random_blur_keeps_flat_images_and_smooths_noise():
    flat = torch.full((4, 3, 10, 10), 0.3)
    assert torch.allclose(random_blur(flat, torch.Generator().manual_seed(0), 1.5), flat, atol=1e-6)
    noise = to_unit(_crops())
    out = random_blur(noise, torch.Generator().manual_seed(0), 1.5)
    assert out.shape == noise.shape and float(out.std()) < float(noise.std())


def test_switches_at_zero_draw_nothing_and_keep_the_old_path():
    crops = _crops(channels=4)
    old_g, new_g = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    x = to_unit(geometric(crops, old_g))
    rgb = blur(colour_jitter(x[:, :3], old_g, 0.2), 0.1, generator=old_g)
    old = normalise(torch.cat([rgb, x[:, 3:]], dim=1))
    new = augmented_inputs(crops, new_g, 0.2, 0.1, stain=0.0, scale=0.0, blur_sigma=0.0)
    assert torch.equal(old, new)
    assert torch.equal(old_g.get_state(), new_g.get_state())
    on = augmented_inputs(crops, torch.Generator().manual_seed(7), 0.2, 0.1, stain=0.1, scale=0.1, blur_sigma=1.0)
    assert on.shape == old.shape and float(on.min()) >= -1 and float(on.max()) <= 1


def test_recolour_adds_the_stain_difference_and_keeps_the_mask():
    crops = _crops(channels=4)
    out = recolour(crops, (10, -300, 0))
    assert torch.equal(out[:, 3], crops[:, 3])
    assert torch.equal(out[:, 1], torch.zeros_like(out[:, 1]))
    assert torch.equal(out[:, 0], (crops[:, 0].int() + 10).clamp(0, 255).to(torch.uint8))


def test_background_balance_removes_a_colour_cast_and_keeps_the_mask():
    from nucdata_models.augment import BACKGROUND_REFERENCE, background_balance

    torch.manual_seed(0)
    x = torch.rand(4, 4, 24, 24) * 0.5
    x[:, :3, :3, :] = 0.7  # a background ring
    x[:, :3, -3:, :] = 0.7
    x[:, :3, :, :3] = 0.7
    x[:, :3, :, -3:] = 0.7
    cast = torch.tensor([1.2, 0.9, 0.8]).reshape(1, 3, 1, 1)
    tinted = torch.cat([x[:, :3] * cast, x[:, 3:]], dim=1)
    a, b = background_balance(x), background_balance(tinted)
    assert torch.allclose(a, b, atol=1e-5)  # a lab's multiplicative cast is gone
    assert torch.allclose(a[:, :3, 0, 0], torch.full((4, 3), BACKGROUND_REFERENCE))
    assert torch.equal(a[:, 3:], x[:, 3:])
    with pytest.raises(Exception, match="ring"):
        background_balance(x, ring=12)


def test_background_balance_is_applied_in_training_and_prediction_alike():
    from nucdata_models import CrossTrainer, TrainConfig

    crops = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    on = CrossTrainer(TrainConfig(device="cpu", background_balance=True))
    off = CrossTrainer(TrainConfig(device="cpu"))
    assert not TrainConfig().background_balance and not TrainConfig.recipe("paper").background_balance
    assert not torch.equal(on.inputs(crops, False), off.inputs(crops, False))
    brighter = (crops.float() * 0.9).round().to(torch.uint8)
    # a 10 % darker lab moves the balanced input far less than the raw one
    assert (on.inputs(brighter, False) - on.inputs(crops, False)).abs().mean() < \
        0.5 * (off.inputs(brighter, False) - off.inputs(crops, False)).abs().mean()
