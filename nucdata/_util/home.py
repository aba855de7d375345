"""Where nucdata keeps its files: one home, movable with ``NUCDATA_HOME``.

Layout::

    $NUCDATA_HOME/raw/                     archives exactly as downloaded (never versioned)
    $NUCDATA_HOME/manual/                  archives dropped in by hand; checked first
    $NUCDATA_HOME/registry/<name>.json     optional local card overrides (extra mirrors, own hashes)
    $NUCDATA_HOME/stores/<name>/<version>/ converted stores
    $NUCDATA_HOME/work/                    scratch space for extraction, removed after use

A data home may be read-only (shared lab storage) once its stores are prepared:
``load``, crops and exports then work, and what they derive (crop banks and their
locks) goes to the writable cache :func:`cache_dir` (``$NUCDATA_CACHE``, default the
platform user cache folder "nucdata", for example ``~/.cache/nucdata``), under
``readonly-stores/<hash of the store path>/``.
"""

from __future__ import annotations

import os
from pathlib import Path

from nucdata.errors import DataHomeError

ENV_VAR = "NUCDATA_HOME"
CACHE_ENV_VAR = "NUCDATA_CACHE"


def data_home(root: str | os.PathLike[str] | None = None) -> Path:
    """Return the data home, creating nothing.

    Parameters
    ----------
    root
        An explicit home. When ``None``, ``$NUCDATA_HOME`` is used if set and
        non-empty, else the platform cache folder for "nucdata" (for example
        ``~/.cache/nucdata`` on Linux).
    """
    if isinstance(root, str) and not root.strip():
        raise DataHomeError("the data home is empty (--root \"\" or root=\"\"); name a folder, or leave it out "
                            f"to use ${ENV_VAR} or the default.")
    if root is not None:
        home, origin = Path(root).expanduser().resolve(), "the data home (--root)"
    elif env := os.environ.get(ENV_VAR, "").strip():
        home, origin = Path(env).expanduser().resolve(), f"${ENV_VAR}"
    else:
        # Deliberately unversioned: a versioned raw cache would re-download on upgrade.
        home, origin = Path(_os_cache()).resolve(), "the default data home"
    if home.exists() and not home.is_dir():
        raise DataHomeError(
            f"{home}: {origin} is a file, not a folder. Point {ENV_VAR} (or --root) at a folder, "
            "or move the file away."
        )
    return home


def cache_dir() -> Path:
    """The writable cache for files derived from read-only stores (crop banks, locks).

    ``$NUCDATA_CACHE`` when set, else the platform user cache folder "nucdata"
    (``~/.cache/nucdata`` on Linux). Creates nothing.

    Raises
    ------
    DataHomeError
        When the cache path is a file.
    """
    env = os.environ.get(CACHE_ENV_VAR, "").strip()
    folder = Path(env).expanduser().resolve() if env else Path(_os_cache()).resolve()
    if folder.exists() and not folder.is_dir():
        raise DataHomeError(f"{folder}: ${CACHE_ENV_VAR} is a file, not a folder; point it at a writable folder.")
    return folder


def is_writable(folder: str | os.PathLike[str]) -> bool:
    """Whether files can be created in ``folder`` (or in its nearest existing parent)."""
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK)


def writable_folder(folder: str | os.PathLike[str], what: str) -> Path:
    """Create ``folder`` (with parents) or raise a typed error saying what needed it.

    Parameters
    ----------
    folder
        The folder to create.
    what
        What it is for, named in the error ("the raw downloads", ...).

    Raises
    ------
    DataHomeError
        When the folder cannot be created (a read-only data home, a file in the way).
    """
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from nucdata._util.disk import disk_full, is_disk_full

        if is_disk_full(exc):
            raise disk_full(path, f"creating the folder for {what}", exc=exc) from None
        raise DataHomeError(
            f"{path}: cannot create the folder for {what} ({exc.strerror or exc}). The data home is "
            f"read-only or a file is in the way; set {ENV_VAR} (or --root) to a writable folder."
        ) from None
    return path


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


def _os_cache() -> str:
    import pooch  # only where the default folder is needed: ``import nucdata`` stays light

    return str(pooch.os_cache("nucdata"))
