"""Locks and clean-up around a dataset's stores, and where derived files go."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nucdata._util import atomic
from nucdata._util.home import cache_dir, is_writable, writable_folder
from nucdata.errors import DataHomeError, StoreLockedError

__all__ = ["clean_stale", "dataset_lock", "derived_dir", "is_complete"]

MANIFEST = "manifest.json"  # the store's manifest, written last (nucdata.store._store.MANIFEST)


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


@contextlib.contextmanager
def dataset_lock(dataset_dir: Path, timeout: float = 3600.0, poll: float = 0.2) -> Iterator[None]:
    """Hold an exclusive lock on ``dataset_dir/.lock`` (waits for another preparer).

    Raises
    ------
    StoreLockedError
        When the lock is still held by another process after ``timeout`` seconds.
    """
    writable_folder(dataset_dir, f"the lock of {dataset_dir.name!r}")
    path = dataset_dir / ".lock"
    try:
        fh = open(path, "a+")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise DataHomeError(
            f"{path}: cannot create the lock file ({exc.strerror or exc}); the folder is read-only. "
            "Set NUCDATA_HOME (or --root) to a writable folder to prepare datasets there."
        ) from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                _try_lock(fh)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise StoreLockedError(
                        f"{path}: another process has been preparing {dataset_dir.name!r} for "
                        f"more than {timeout:.0f} s. Wait for it, or if no nucdata process is "
                        "running, delete this lock file."
                    ) from None
                time.sleep(poll)
        yield
    finally:
        with contextlib.suppress(OSError):
            _unlock(fh)
        fh.close()


if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fh: Any) -> None:
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)

    def _unlock(fh: Any) -> None:
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _try_lock(fh: Any) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fh: Any) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
