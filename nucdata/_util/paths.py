"""Names that come from files: junk entries archives carry, and paths that must stay inside a folder.

Every writer that turns a name read from a file (a store's image name, a split, a
dataset name in a manifest, a label set) into a path goes through :func:`child_path`
(or :func:`check_name`): the name must be one plain file name that stays inside its
folder on every platform nucdata runs on. Refused, with an
:class:`~nucdata.errors.UnsafeNameError` naming the file, the element and the fix:

- the empty name, ``.`` and ``..``, and names that start or end with a space;
- separators (``/``, ``\\``), so no absolute path and no ``a/../../x``;
- NUL and the other control characters (0-31, 127);
- a drive letter or an alternate data stream (``:`` anywhere, ``C:x``);
- Windows' reserved device names (``CON``, ``PRN``, ``AUX``, ``NUL``, ``COM1``-``COM9``,
  ``LPT1``-``LPT9``, with any extension) and names ending in a dot;
- names longer than 255 bytes in UTF-8 (no file system holds them).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from nucdata.errors import UnsafeNameError

__all__ = ["MAX_NAME_BYTES", "check_name", "child_path", "is_junk", "name_problem"]

#: The longest file name (in UTF-8 bytes) that common file systems hold.
MAX_NAME_BYTES = 255
_RESERVED = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                       *(f"lpt{i}" for i in range(1, 10))})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def is_junk(name: str) -> bool:
    """macOS metadata that some dataset archives carry (``__MACOSX``, ``.DS_Store``, ``._*``)."""
    parts = Path(name).parts
    return any(p == "__MACOSX" or p == ".DS_Store" or p.startswith("._") for p in parts)


def name_problem(name: object) -> str | None:
    """Why ``name`` is not a plain file name that stays inside its folder, or ``None`` when it is.

    Parameters
    ----------
    name
        The candidate name (anything that is not a ``str`` is refused).
    """
    if not isinstance(name, str):
        return f"it is a {type(name).__name__}, not text"
    if name in ("", ".", ".."):
        return "it is empty" if not name else f"{name!r} names a folder, not a file in it"
    if "/" in name or "\\" in name:
        return "it holds a path separator ('/' or '\\'), so it would reach another folder"
    if _CONTROL.search(name):
        return "it holds NUL or another control character"
    if ":" in name:
        return "it holds ':' (a drive letter or a Windows data stream)"
    if name != name.strip(" ") or name.endswith("."):
        return "it starts or ends with a space, or ends with a dot (Windows drops them)"
    if name.split(".", 1)[0].strip().lower() in _RESERVED:
        return "it is a reserved device name on Windows (CON, PRN, AUX, NUL, COM1-9, LPT1-9)"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "it is not valid Unicode text (a lone surrogate)"
    if size > MAX_NAME_BYTES:
        return f"it is {size} bytes long, more than the {MAX_NAME_BYTES} a file name may have"
    return None


def check_name(name: object, *, source: str | os.PathLike[str], element: str, fix: str | None = None) -> str:
    """Return ``name`` when it is a plain file name that stays inside its folder; raise otherwise.

    Parameters
    ----------
    name
        A name read from a file.
    source
        The file (or folder) the name was read from, named in the error.
    element
        Which element of it holds the name (``"images/name.npy row 3"``).
    fix
        What to do about it; the default says the file is damaged or crafted.

    Raises
    ------
    UnsafeNameError
        Naming ``source``, ``element``, the name, why it is refused and the fix.
    """
    problem = name_problem(name)
    if problem is None:
        return name  # type: ignore[return-value]
    shown = repr(name) if len(repr(name)) <= 120 else repr(name)[:117] + "..."
    raise UnsafeNameError(
        f"{source}: {element} is {shown}, which cannot be a file name inside the output folder: {problem}. "
        f"Nothing was written under that name. Fix: {fix or _DEFAULT_FIX}."
    )


_DEFAULT_FIX = ("the file is damaged or was crafted to write elsewhere; rebuild it from the original data "
                "(`nucdata prepare NAME --force` for a store, `nucdata build-merged` for a merged output)")


def child_path(folder: str | os.PathLike[str], name: object, suffix: str = "", *,
               source: str | os.PathLike[str], element: str, fix: str | None = None) -> Path:
    """``folder / (name + suffix)``, after :func:`check_name` has accepted ``name + suffix``.

    Parameters
    ----------
    folder
        The folder the file goes into.
    name
        A name read from a file.
    suffix
        Appended to the name (``".geojson"``); the whole file name is checked.
    source, element, fix
        As for :func:`check_name`.

    Returns
    -------
    Path
        A path whose parent is ``folder``.

    Raises
    ------
    UnsafeNameError
        When the name would not be one plain file name inside ``folder``.
    """
    if not isinstance(name, str) or not name:  # '' + '.png' would be a hidden file of no name
        check_name(name, source=source, element=element, fix=fix)
    return Path(folder) / check_name(f"{name}{suffix}", source=source, element=element, fix=fix)
