"""TNBC: binary masks to instances, RGBA and RGB slides, patients."""

from __future__ import annotations

import numpy as np
from helpers import assert_geometry_exact

import nucdata
from nucdata.datasets.tnbc import MIN_AREA, binary_to_instances
from nucdata.testing import install


def test_tnbc_end_to_end(home):
    install("tnbc", home)
    nucdata.prepare("tnbc")
    ds = nucdata.load("tnbc")
    images = ds.images
    assert len(ds) == 50
    assert images.patient.values.tolist()[:8] == ["01"] * 7 + ["02"]
    assert len(set(images.patient.values.tolist())) == 11
    assert np.isnan(images.mpp.values).all()
    assert ds.manifest["dropped"]["specks_dropped"] > 0
    assert ds.manifest["dropped"]["holes_filled"] > 0
    assert assert_geometry_exact(ds.store) == ds.manifest["counts"]["nuclei"]["total"]
    # Slide_09/09_2 is RGB in the archive, the others RGBA: both come out as RGB.
    index = images.name.values.tolist().index("09_2")
    assert ds[index]["image"].shape[0] == 3


def test_instance_rule():
    mask = np.zeros((20, 20), np.uint8)
    mask[2:8, 2:8] = 255
    mask[4, 4] = 0  # 1-px hole: filled
    mask[8, 8] = 255  # diagonal neighbour: joins the nucleus (8-connectivity)
    mask[15, 15] = 255  # isolated speck: dropped
    mask[12:14, 2:6] = 255  # separate nucleus of 8 px: kept
    inst, stats = binary_to_instances(mask)
    assert inst.max() == 2
    assert (inst == 1).sum() == 37 and (inst == 2).sum() == 8
    assert stats == {"holes_filled": 1, "hole_pixels_filled": 1, "specks_dropped": 1}
    assert MIN_AREA == 5
