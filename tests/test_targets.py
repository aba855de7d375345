"""HoVer-Net maps, distance and boundary maps: ranges, sign convention, HoVer-Net's arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.draw import ellipse

from nucdata.views import (
    BoundaryTargets,
    DistanceTargets,
    HoVerNetTargets,
    boundary_map,
    compose,
    distance_map,
    hv_maps,
)


def _instances(seed: int = 1, size: int = 64, n: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    inst = np.zeros((size, size), np.int32)
    for k in range(1, n + 1):
        rr, cc = ellipse(rng.integers(0, size), rng.integers(0, size), rng.integers(2, 9), rng.integers(2, 9),
                         shape=inst.shape, rotation=rng.random() * 3)
        inst[rr, cc] = 3 * k  # ids need not be consecutive
    return inst


def _hovernet_loop(ann: np.ndarray) -> np.ndarray:
    """gen_instance_hv_map's per-instance definition, written out (2-pixel box margin)."""
    pad = 2
    ann = np.pad(ann, pad)
    out = np.zeros((2, *ann.shape), np.float32)
    for i in np.unique(ann)[1:]:
        ys, xs = np.nonzero(ann == i)
        r0, r1, c0, c1 = ys.min() - pad, ys.max() + 1 + pad, xs.min() - pad, xs.max() + 1 + pad
        m = ann[r0:r1, c0:c1] == i
        my, mx = np.nonzero(m)
        com = (int(my.mean() + 0.5), int(mx.mean() + 0.5))
        gx, gy = np.meshgrid(np.arange(1, m.shape[1] + 1) - com[1], np.arange(1, m.shape[0] + 1) - com[0])
        for channel, g in ((0, gx.astype(np.float32)), (1, gy.astype(np.float32))):
            g[~m] = 0
            if g.min() < 0:
                g[g < 0] /= -g[g < 0].min()
            if g.max() > 0:
                g[g > 0] /= g[g > 0].max()
            out[channel, r0:r1, c0:c1][m] = g[m]
    return out[:, pad:-pad, pad:-pad]


def test_hv_maps_match_hovernets_definition_and_range():
    inst = _instances()
    hv = hv_maps(inst)
    assert hv.dtype == np.float32 and hv.shape == (2, 64, 64)
    np.testing.assert_allclose(hv, _hovernet_loop(inst), atol=1e-6)
    assert hv.min() == -1.0 and hv.max() == 1.0
    assert (hv[:, inst == 0] == 0).all()


def test_hv_sign_convention():
    inst = np.zeros((20, 30), np.int32)
    inst[5:15, 4:25] = 1  # a wide rectangle
    for exact in (True, False):
        h, v = hv_maps(inst, exact_hovernet=exact)
        row = h[10, 4:25]
        assert row[0] == -1 and row[-1] == 1 and (np.diff(row) > 0).all()  # grows to the right
        col = v[5:15, 10]
        assert col[0] == -1 and col[-1] == 1 and (np.diff(col) > 0).all()  # grows downwards


def test_min_size_and_torch_input():
    inst = np.zeros((10, 10), np.int64)
    inst[1:3, 1:3] = 1  # 4 pixels
    inst[4:9, 4:9] = 2
    hv = hv_maps(torch.from_numpy(inst), min_size=5)
    assert (hv[:, inst == 1] == 0).all() and np.abs(hv[:, inst == 2]).max() == 1
    with pytest.raises(ValueError):
        hv_maps(np.zeros((2, 2, 2)))


def test_distance_and_boundary_maps():
    inst = np.zeros((12, 20), np.int32)
    inst[2:9, 2:9] = 1
    inst[2:9, 9:16] = 2  # touching its neighbour
    dist = distance_map(inst)
    assert dist.max() == 1 and (dist[inst == 0] == 0).all()
    for k in (1, 2):
        assert dist[inst == k].max() == 1 and dist[inst == k].min() > 0
    assert dist[5, 5] == 1 and dist[5, 8] < dist[5, 6]  # the shared border is an edge too
    raw = distance_map(inst, normalise=False)
    assert raw[5, 5] == 4  # 4 pixels to the nearest pixel of another id
    edge = boundary_map(inst)
    assert edge[2, 2:9].all() and edge[5, 8] and edge[5, 9] and not edge[5, 5]
    assert not edge[inst == 0].any()
    assert boundary_map(inst, width=2)[5, 7] and not boundary_map(inst, width=2)[5, 5]


def test_transforms_on_a_sample():
    inst = torch.from_numpy(_instances(2, 32, 5))
    sample = compose(HoVerNetTargets(), DistanceTargets(), BoundaryTargets())({"instance_map": inst})
    assert sample["hv_map"].shape == (2, 32, 32) and sample["hv_map"].dtype == torch.float32
    assert torch.equal(sample["np_map"], (inst > 0).long())
    assert sample["distance_map"].shape == (32, 32) and sample["boundary_map"].dtype == torch.bool
