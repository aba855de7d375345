"""Disk full, said so: ``ENOSPC`` / ``EDQUOT`` become a :class:`~nucdata.errors.DiskFullError`.

A raw ``OSError: [Errno 28] No space left on device`` says neither what was being
written nor how much room it needs; worse, code that treats every ``OSError`` while
extracting as a damaged archive would tell the user to delete a good download. Writers
call :func:`disk_full` (or wrap a block in :func:`mapped`) so the message names the
file, the operation, the space free on that file system and, where it is known, the
space needed, and says that nothing already published was changed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from nucdata.errors import DiskFullError

__all__ = ["check_free_space", "disk_full", "free_bytes", "is_disk_full", "mapped", "size_text"]

_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _error(message: str) -> DiskFullError:
    err = DiskFullError(message)
    err.errno = errno.ENOSPC  # str() stays the message alone
    return err


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is the operating system saying the disk or the user's quota is full."""
    return isinstance(exc, OSError) and not isinstance(exc, DiskFullError) and exc.errno in _FULL


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Bytes free for this user on the file system holding ``path`` (or its nearest existing parent)."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return int(shutil.disk_usage(folder).free)
    except OSError:
        return None


def size_text(n: int | None) -> str:
    """``1.5 GB (1,500,000,000 bytes)``-style text for a byte count."""
    if n is None:
        return "an unknown amount"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit} ({n:,} bytes)"
    return f"{n:,} bytes"


def disk_full(path: str | os.PathLike[str], what: str, needed: int | None = None,
              exc: OSError | None = None, estimate: str | None = None) -> DiskFullError:
    """The error for a disk that filled while writing ``path``.

    Parameters
    ----------
    path
        The file (or folder) being written.
    what
        The operation, as a phrase ("extracting fold_1.zip", "writing the store's columns").
    needed
        Bytes still needed, when known (the rest of an extraction, an export's estimate).
    exc
        The original ``OSError`` (its errno says disk or quota).
    estimate
        Where ``needed`` is an estimate, what it is estimated from (it is then said as
        "about", not "at least").
    """
    free = free_bytes(path)
    quota = exc is not None and exc.errno == getattr(errno, "EDQUOT", None)
    what_full = "your disk quota is used up" if quota else "the disk is full"
    if needed is None:
        need = ""
    elif estimate:
        need = f"; about {size_text(needed)} more are needed ({estimate})"
    else:
        need = f"; at least {size_text(needed)} more are needed"
    return _error(
        f"{path}: {what_full} while {what} ({size_text(free)} free on that file system{need}). "
        "Nothing already published was changed, and the downloaded archives are intact: free space "
        "there, or point the output (NUCDATA_HOME / --root, or --out) at a larger disk, and run the "
        "command again.",
    )


@contextlib.contextmanager
def mapped(path: str | os.PathLike[str], what: str,
           needed: int | Callable[[], int | None] | None = None, estimate: str | None = None) -> Iterator[None]:
    """Turn a disk-full ``OSError`` raised inside the block into :func:`disk_full`'s error.

    ``needed``: bytes still needed, or a callable that says so when the disk fills (what
    is left of a store being written, say); ``None`` when unknown. ``estimate``: as in
    :func:`disk_full`.
    """
    try:
        yield
    except OSError as exc:
        if is_disk_full(exc):
            still = needed() if callable(needed) else needed
            raise disk_full(path, what, still, exc, estimate) from None
        raise


def check_free_space(folder: str | os.PathLike[str], needed: int, what: str) -> None:
    """Refuse up front when ``folder``'s file system has less than ``needed`` bytes free.

    Raises
    ------
    DiskFullError
        Naming the folder, what needs the space, how much is free and how much is needed.
    """
    free = free_bytes(folder)
    if free is not None and needed > free:
        raise _error(
            f"{folder}: {what} needs about {size_text(needed)}, but only {size_text(free)} are free on "
            "that file system; nothing was written. Free space there, choose an output on a larger "
            "disk, or ask for less (fewer images, a smaller patch or a larger step).",
        )
