"""Progress for long jobs: tqdm bars in a terminal, a few plain lines elsewhere, nothing when quiet.

tqdm is the field's standard (pooch draws its download bars with it). In a terminal a
bar is drawn on standard error; when standard error is not a terminal (a log file, CI,
a notebook's captured output) a plain line is written at most every 30 seconds, and
at the end of a job that took that long; :func:`set_quiet` (the ``--quiet`` flags) or
``NUCDATA_QUIET=1`` silences both.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["Counter", "is_quiet", "progress", "set_quiet", "use_bars"]

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


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "items") -> Iterator[T]:
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
        What the items are, e.g. ``"images"``.
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
    # Logs stay short: a line at most every 30 s, and a closing line only for jobs that
    # took that long (a short job's own summary line says enough).
    start = last = time.monotonic()
    count = 0
    for count, item in enumerate(iterable, 1):
        yield item
        now = time.monotonic()
        if now - last >= 30 and count != total:
            last = now
            of = f"/{total:,}" if total else ""
            print(f"{desc}: {count:,}{of} {unit} ({now - start:.0f} s)", file=sys.stderr, flush=True)
    if count and time.monotonic() - start >= 30:
        print(f"{desc}: {count:,} {unit} in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)


class Counter:
    """Progress of a job that is not one loop (a converter calling the store writer).

    ``update()`` once per item, ``close()`` at the end; drawn like :func:`progress`.
    """

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "items"):
        self.total, self.desc, self.unit = total, desc, unit
        self.count = 0
        self._start = self._last = time.monotonic()
        self._bar = None
        if use_bars():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items."""
        self.count += n
        if self._bar is not None:
            self._bar.update(n)
        elif not is_quiet() and time.monotonic() - self._last >= 30:
            self._last = time.monotonic()
            of = f"/{self.total:,}" if self.total else ""
            print(f"{self.desc}: {self.count:,}{of} {self.unit} ({self._last - self._start:.0f} s)",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        """Finish the bar (or write the closing line of a long job)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif not is_quiet() and self.count and time.monotonic() - self._start >= 30:
            print(f"{self.desc}: {self.count:,} {self.unit} in {time.monotonic() - self._start:.0f} s",
                  file=sys.stderr, flush=True)
