"""Progress for long jobs: tqdm bars in a terminal, a few plain lines elsewhere, nothing when quiet.

tqdm is the field's standard (pooch draws its download bars with it). In a terminal a
bar is drawn on standard error; when standard error is not a terminal (a log file, CI,
a notebook's captured output) a plain line is written at the start, about every tenth
of the way and at the end; :func:`set_quiet` (the ``--quiet`` flags) or
``NUCDATA_QUIET=1`` silences both.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["is_quiet", "progress", "set_quiet", "use_bars"]

T = TypeVar("T")
_quiet = False


def set_quiet(quiet: bool = True) -> None:
    """Silence (or restore) every progress bar and progress line of this process."""
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    """Whether progress output is silenced (:func:`set_quiet` or ``NUCDATA_QUIET``)."""
    return _quiet or os.environ.get("NUCDATA_QUIET", "") not in ("", "0")


def use_bars() -> bool:
    """Whether bars are drawn: not quiet, and standard error is a terminal."""
    return not is_quiet() and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """Iterate ``iterable`` while showing progress (see the module docstring).

    Parameters
    ----------
    iterable
        What to iterate.
    total
        Number of items, when ``iterable`` has no length.
    desc
        What is being done, e.g. ``"converting pannuke"``.
    unit
        What one item is, e.g. ``"image"``.
    """
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if is_quiet():
        yield from iterable
        return
    if use_bars():
        from tqdm.auto import tqdm

        yield from tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
        return
    yield from _lines(iterable, total, desc, unit)


def _lines(iterable: Iterable[T], total: int | None, desc: str, unit: str) -> Iterator[T]:
    start = last = time.monotonic()
    step = max(1, total // 10) if total else None
    count = 0
    for count, item in enumerate(iterable, 1):
        yield item
        now = time.monotonic()
        if (step and count % step == 0 and count != total) or now - last > 60:
            last = now
            of = f"/{total:,}" if total else ""
            print(f"{desc}: {count:,}{of} {unit}s ({now - start:.0f} s)", file=sys.stderr, flush=True)
    if count and (time.monotonic() - start > 2 or (total or 0) >= 100):
        print(f"{desc}: {count:,} {unit}s in {time.monotonic() - start:.1f} s", file=sys.stderr, flush=True)
