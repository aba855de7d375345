"""Where a store's files are: the one place every path of the store layout is derived.

A dataset's stores live in ``<home>/stores/<dataset>/<converter version>/``; a store is
complete when its manifest (written last) is there; files derived from a store (crop
banks) go beside it, or to the cache for a read-only home.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from nucdata._util import atomic
from nucdata._util.home import cache_dir, is_writable, stores_dir

__all__ = ["MANIFEST", "clean_stale", "derived_dir", "is_complete", "store_folder"]


def store_folder(dataset: str, version: str, root: str | os.PathLike[str] | None = None) -> Path:
    """``<home>/stores/<dataset>/<version>``: where the store of a converter version lives."""
    return stores_dir(root) / dataset / version


MANIFEST = "manifest.json"  # the store's manifest, written last


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds a published store (its manifest is written last)."""
    return (Path(folder) / MANIFEST).is_file()


def clean_stale(dataset_dir: Path) -> list[str]:
    """Repair what interrupted conversions left in ``dataset_dir``; return what was done.

    Call under :func:`dataset_lock`. A store whose replacement was killed between
    its two renames is restored from its complete old copy; staging and old
    folders whose owner process is gone are removed (:func:`nucdata._util.atomic.recover`).
    Folders named the way earlier development versions did (``.tmp-*``, ``.old-*``)
    are removed too.

    Returns
    -------
    list of str
        One line per action, for the progress output.
    """
    lines = atomic.recover_all(dataset_dir, complete=is_complete).lines()
    if dataset_dir.is_dir():
        for child in dataset_dir.iterdir():
            if child.is_dir() and child.name.startswith((".tmp-", ".old-")):  # earlier naming
                shutil.rmtree(child, ignore_errors=True)
                lines.append(f"removed the leftovers of an interrupted run: {child.name}")
    return lines


def derived_dir(store_path: str | os.PathLike[str]) -> Path:
    """Where files derived from a store (crop banks, their lock) are written.

    The store's own folder when it is writable; for a read-only store (a shared,
    read-only data home) a folder in the user's cache,
    ``<cache>/readonly-stores/<dataset>-<version>-<hash of the store's path>/``
    (see :func:`nucdata._util.home.cache_dir`, ``$NUCDATA_CACHE``).
    """
    path = Path(store_path)
    if is_writable(path):
        return path
    key = hashlib.sha256(str(path.resolve()).encode("utf-8")).hexdigest()[:16]
    return cache_dir() / "readonly-stores" / f"{path.parent.name}-{path.name}-{key}"
