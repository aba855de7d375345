"""An exclusive, cross-process lock on a folder (a dataset's stores, a crop bank, a build's work)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nucdata._util.disk import disk_full, is_disk_full
from nucdata._util.home import writable_folder
from nucdata.errors import DataHomeError, StoreLockedError

__all__ = ["dataset_lock"]

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
        if is_disk_full(exc):
            raise disk_full(path, "creating the lock file", exc=exc) from None
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
