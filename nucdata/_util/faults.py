"""Named fault points: a test hook that raises (or kills) at a chosen step.

Code that publishes or replaces files calls :func:`fault_point` at each named step
(for example ``"store:old-moved"``, between the two renames of a store
replacement). Normally the call does nothing. A test selects points in one of two
ways:

- the environment variable ``NUCDATA_FAULT`` names one or more points, separated
  by commas; ``name`` raises :class:`InjectedFault` there and ``name=kill`` ends
  the process at once with ``os._exit(137)`` (no ``finally`` blocks, no cleanup,
  like ``kill -9``), which is how a subprocess test simulates a crash;
- the context manager :func:`inject` arms a point inside the current process.

A point name may end in ``*`` to match every point with that prefix
(``NUCDATA_FAULT="store:*"``). The hook costs one dictionary look-up and one
environment read per call; it is never armed in normal use.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from nucdata.errors import InjectedFault

ENV_VAR = "NUCDATA_FAULT"
KILL_EXIT_CODE = 137

_armed: dict[str, str] = {}  # point name (or prefix*) -> "raise" | "kill"
_hits: list[str] = []  # every point passed while recording (see record())
_recording = 0


def _parse_env(value: str) -> dict[str, str]:
    points: dict[str, str] = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, mode = item.partition("=")
        points[name.strip()] = (mode.strip() or "raise").lower()
    return points


def _mode_for(name: str, table: dict[str, str]) -> str | None:
    if name in table:
        return table[name]
    for key, mode in table.items():
        if key.endswith("*") and name.startswith(key[:-1]):
            return mode
    return None


def fault_point(name: str) -> None:
    """Mark a named step; raise or exit there when a test armed this point.

    Parameters
    ----------
    name
        ``"<operation>:<step>"``, for example ``"store:published"``.

    Raises
    ------
    InjectedFault
        When the point is armed in ``raise`` mode (the default).
    """
    if _recording:
        _hits.append(name)
    env = os.environ.get(ENV_VAR)
    mode = _mode_for(name, _armed)
    if mode is None and env:
        mode = _mode_for(name, _parse_env(env))
    if mode is None:
        return
    if mode == "kill":
        os._exit(KILL_EXIT_CODE)
    raise InjectedFault(name)


@contextlib.contextmanager
def inject(name: str, mode: str = "raise") -> Iterator[None]:
    """Arm fault point ``name`` (or a ``prefix*``) in this process for the block.

    Parameters
    ----------
    name
        The point's name, or a prefix ending in ``*``.
    mode
        ``"raise"`` raises :class:`InjectedFault`; ``"kill"`` calls ``os._exit``
        (only useful in a subprocess).
    """
    if mode not in ("raise", "kill"):
        raise ValueError(f"fault mode must be 'raise' or 'kill', got {mode!r}")
    previous = _armed.get(name)
    _armed[name] = mode
    try:
        yield
    finally:
        if previous is None:
            _armed.pop(name, None)
        else:
            _armed[name] = previous


@contextlib.contextmanager
def record() -> Iterator[list[str]]:
    """Collect the names of every fault point passed inside the block.

    Tests use it to enumerate the steps of an operation, then arm each in turn.
    """
    global _recording
    start = len(_hits)
    _recording += 1
    seen: list[str] = []
    try:
        yield seen
    finally:
        _recording -= 1
        seen.extend(_hits[start:])
        del _hits[start:]
