"""Streamed, atomic file writers: a whole slide's features are written as they come.

A :class:`StreamedFile` writes into a temporary file beside its destination and
publishes it with ``os.replace`` when it is closed without an error
(:func:`nucdata._util.atomic.atomic_path`); on an error the destination is left as it
was. The JSON writers of the formats build on it, so memory does not grow with the
number of nuclei written.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import IO, Any

import numpy as np

from nucdata._util.atomic import atomic_path


def plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays turned into JSON's types (NaN and inf -> ``None``)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        f = float(value)
        return f if math.isfinite(f) else None
    return value


def dumps(value: Any) -> str:
    """Compact JSON of :func:`plain` ``value`` (UTF-8 kept as is)."""
    return json.dumps(plain(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class PublishOnExit:
    """What every streamed writer does as a context manager: publish when the block ends
    normally (:meth:`close`), discard when it raises (``abort(exc)``)."""

    def close(self) -> Path:  # pragma: no cover - every writer defines it
        raise NotImplementedError

    def abort(self, exc: BaseException | None = None) -> None:  # pragma: no cover - as close
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(exc)


class StreamedFile(PublishOnExit):
    """A text file written piece by piece and published atomically on :meth:`close`.

    Use as a context manager; leaving the block with an exception publishes nothing.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._fh: IO[str] = self._stack.enter_context(open(tmp, "x", encoding="utf-8", newline="\n"))  # noqa: SIM115  closed by the stack
        self.closed = False

    def write(self, text: str) -> None:
        self._fh.write(text)

    def close(self) -> Path:
        """Finish and publish the file; return its path."""
        if not self.closed:
            self.closed = True
            self._stack.close()
        return self.path

    def abort(self, exc: BaseException | None = None) -> None:
        """Discard the file (the destination keeps what it had)."""
        if not self.closed:
            self.closed = True
            error = exc or RuntimeError("aborted")
            self._stack.__exit__(type(error), error, error.__traceback__)
