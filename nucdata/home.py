"""Where nucdata keeps its files: one home, movable with ``NUCDATA_HOME``.

Layout::

    $NUCDATA_HOME/raw/                     archives exactly as downloaded (never versioned)
    $NUCDATA_HOME/manual/                  archives dropped in by hand; checked first
    $NUCDATA_HOME/registry/<name>.json     optional local card overrides (extra mirrors, own hashes)
    $NUCDATA_HOME/stores/<name>/<version>/ converted stores
    $NUCDATA_HOME/work/                    scratch space for extraction, removed after use
"""

from __future__ import annotations

import os
from pathlib import Path

import pooch

ENV_VAR = "NUCDATA_HOME"


def data_home(root: str | os.PathLike[str] | None = None) -> Path:
    """Return the data home, creating nothing.

    Parameters
    ----------
    root
        An explicit home. When ``None``, ``$NUCDATA_HOME`` is used if set and
        non-empty, else the platform cache folder for "nucdata" (for example
        ``~/.cache/nucdata`` on Linux).
    """
    if root is not None:
        return Path(root).expanduser().resolve()
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    # Deliberately unversioned: a versioned raw cache would re-download on upgrade.
    return Path(pooch.os_cache("nucdata")).resolve()


def raw_dir(root: str | os.PathLike[str] | None = None) -> Path:
    return data_home(root) / "raw"


def manual_dir(root: str | os.PathLike[str] | None = None) -> Path:
    return data_home(root) / "manual"


def registry_dir(root: str | os.PathLike[str] | None = None) -> Path:
    return data_home(root) / "registry"


def stores_dir(root: str | os.PathLike[str] | None = None) -> Path:
    return data_home(root) / "stores"


def work_dir(root: str | os.PathLike[str] | None = None) -> Path:
    return data_home(root) / "work"
