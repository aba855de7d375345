"""Assertions and data homes shared by the dataset tests."""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest

import nucdata
from nucdata.store import Store
from nucdata.testing import install


def assert_geometry_exact(store: Store) -> int:
    """Every masked nucleus: area = pixel count, centroid = mean pixel (x, y), bbox tight."""
    checked = 0
    has_mask = np.asarray(store.column("nuclei", "has_mask"))
    area = np.asarray(store.column("nuclei", "area"))
    centroid = np.asarray(store.column("nuclei", "centroid"))
    bbox = np.asarray(store.column("nuclei", "bbox"))
    for i in range(store.n_images):
        inst = np.asarray(store.instance_map(i))
        rows = store.nucleus_slice(i)
        masked = np.flatnonzero(has_mask[rows])
        assert int(inst.max(initial=0)) == masked.size
        for k, row in enumerate(range(rows.start, rows.stop)):
            if not has_mask[row]:
                continue
            ys, xs = np.nonzero(inst == k + 1)
            assert area[row] == ys.size > 0
            np.testing.assert_allclose(centroid[row], [xs.mean(), ys.mean()], rtol=1e-5, atol=1e-4)
            assert bbox[row].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            checked += 1
    return checked


def extract_manual(home: Path, names: list[str], dest: Path) -> Path:
    """Extract archives from the home's manual folder into ``dest`` (a user's ``--from``)."""
    for name in names:
        with zipfile.ZipFile(home / "manual" / name) as zf:
            zf.extractall(dest)
    return dest


@contextlib.contextmanager
def demo_home(home: Path, names: Iterable[str]) -> Iterator[Path]:
    """``home`` as ``NUCDATA_HOME`` with the demo archives of ``names`` installed and prepared."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NUCDATA_HOME", str(home))
        for name in names:
            install(name, home)
            nucdata.prepare(name)
        yield home
