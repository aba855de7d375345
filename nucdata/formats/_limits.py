"""The formats' input limits, checked before anything of that size is read or allocated.

Each has a generous default and an environment variable that raises it (``0``: none),
as every limit of nucdata (:mod:`nucdata._util.limits`):

``NUCDATA_MAX_JSON_BYTES`` (default :data:`MAX_JSON_BYTES`, 2 GiB)
    The largest JSON file read (GeoJSON, HoVer-Net JSON, CellViT JSON); its size is taken
    from the file system before a byte is read. Parsing takes several times the file's
    size in memory.
``NUCDATA_MAX_NUCLEI`` (default :data:`MAX_NUCLEI`, 10 million)
    The most nuclei (features, ``nuc`` entries, cells, CSV rows, instance ids) one file
    may hold, counted before their arrays are built.
``NUCDATA_MAX_VERTICES`` (default :data:`MAX_VERTICES`, 100,000)
    The most vertices of one outline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nucdata._util.limits import env_limit
from nucdata.errors import MalformedAnnotationError, MissingFilesError, SizeLimitError

MAX_JSON_BYTES = 2 * 1024**3
JSON_ENV_VAR = "NUCDATA_MAX_JSON_BYTES"
MAX_NUCLEI = 10_000_000
NUCLEI_ENV_VAR = "NUCDATA_MAX_NUCLEI"
MAX_VERTICES = 100_000
VERTICES_ENV_VAR = "NUCDATA_MAX_VERTICES"


def check_nuclei(count: int, path: str | os.PathLike[str], what: str = "nuclei") -> int:
    """Refuse ``count`` nuclei from one file above ``NUCDATA_MAX_NUCLEI``."""
    limit = env_limit(NUCLEI_ENV_VAR, MAX_NUCLEI)
    if limit is not None and count > limit:
        raise SizeLimitError(
            f"{path}: {count:,} {what} are more than the {int(limit):,} one file may hold. Split the file "
            f"(one per image or slide region); if it is genuine, set {NUCLEI_ENV_VAR} to a larger number "
            "(0: no limit).")
    return count


def check_vertices(count: int, path: str | os.PathLike[str], element: str) -> int:
    """Refuse an outline of ``count`` vertices above ``NUCDATA_MAX_VERTICES``."""
    limit = env_limit(VERTICES_ENV_VAR, MAX_VERTICES)
    if limit is not None and count > limit:
        raise SizeLimitError(
            f"{path}: {element} has {count:,} vertices, more than the {int(limit):,} a nucleus outline may have "
            f"(not a nucleus, or a damaged file). If it is genuine, set {VERTICES_ENV_VAR} to a larger number "
            "(0: no limit).")
    return count


def existing_file(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a :class:`Path` when it is a file; a typed error naming ``what`` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise MissingFilesError(f"{path}: {what} not found (no such file). Check the path.")
    return path


def read_json(path: str | os.PathLike[str], what: str) -> Any:
    """Parse a JSON file whose size is checked first against ``NUCDATA_MAX_JSON_BYTES``.

    Raises
    ------
    MissingFilesError
        No such file.
    SizeLimitError
        Larger than the limit.
    MalformedAnnotationError
        Not UTF-8 JSON; names the line and column.
    """
    path = existing_file(path, what)
    size = path.stat().st_size
    limit = env_limit(JSON_ENV_VAR, MAX_JSON_BYTES)
    if limit is not None and size > limit:
        raise SizeLimitError(
            f"{path}: {size:,} bytes is more than the {int(limit):,} a {what} may have. Split it (one file per "
            f"image or region); if it is genuine, set {JSON_ENV_VAR} to a larger size in bytes (0: no limit).")
    try:
        with open(path, "rb") as fh:
            data = fh.read(size + 1)
        if len(data) > size:  # grew while read: take no more than was checked
            raise MalformedAnnotationError(f"{path}: the file changed while it was read; read it again when "
                                           "the program writing it has finished.")
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise MalformedAnnotationError(f"{path}: {what} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                                       "export it again as JSON.") from None
    except json.JSONDecodeError as exc:
        raise MalformedAnnotationError(
            f"{path}: {what} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}. The file is "
            "truncated or not JSON; export it again.") from None
    except RecursionError:
        raise MalformedAnnotationError(f"{path}: {what} nests too deeply to be parsed; it is damaged or "
                                       "crafted.") from None
