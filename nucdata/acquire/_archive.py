"""Safe extraction of downloaded archives into scratch space.

Raw archives are only read, never modified. Members are checked against path
traversal, and macOS metadata (``__MACOSX/``, ``.DS_Store``, ``._*``) is skipped.

Extraction is limited in size, against decompression bombs: at most
:data:`MAX_RATIO` times the archive's own size, and never less than
:data:`MIN_LIMIT` bytes, counted on the bytes actually written (not the sizes the
archive declares). ``NUCDATA_EXTRACT_LIMIT`` (bytes; ``0`` for no limit) or the
``max_bytes`` argument overrides it.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

from nucdata._util.paths import is_junk
from nucdata.errors import CorruptArchiveError, InvalidArgumentError

#: Extraction stops beyond this many times the archive's size...
MAX_RATIO = 250
#: ...but always allows this many bytes (small archives of well-compressible arrays).
MIN_LIMIT = 512 * 1024**2
LIMIT_ENV_VAR = "NUCDATA_EXTRACT_LIMIT"


def extraction_limit(archive: Path, max_bytes: int | None = None) -> int | None:
    """The number of bytes ``archive`` may expand to (``None``: unlimited).

    Parameters
    ----------
    archive
        The archive file.
    max_bytes
        An explicit limit; ``0`` means none. Default: ``$NUCDATA_EXTRACT_LIMIT`` if
        set, else ``max(MAX_RATIO * size, MIN_LIMIT)``.
    """
    if max_bytes is None and (env := os.environ.get(LIMIT_ENV_VAR, "").strip()):
        try:
            max_bytes = int(float(env))
        except ValueError:
            raise InvalidArgumentError(
                f"${LIMIT_ENV_VAR}={env!r} is not a number of bytes; use e.g. 20e9, or 0 for no limit."
            ) from None
    if max_bytes is not None:
        return None if max_bytes <= 0 else int(max_bytes)
    return max(MAX_RATIO * archive.stat().st_size, MIN_LIMIT)


class _Budget:
    def __init__(self, archive: Path, limit: int | None):
        self.archive, self.limit, self.used = archive, limit, 0

    def copy(self, src: Any, out: Any, member: str) -> None:
        while block := src.read(1 << 20):
            self.used += len(block)
            if self.limit is not None and self.used > self.limit:
                raise CorruptArchiveError(
                    f"{self.archive}: member {member!r} takes the extracted size past {self.limit:,} bytes "
                    f"({MAX_RATIO}x the archive, at least {MIN_LIMIT:,}): a decompression bomb or an "
                    f"unexpectedly large archive. If you trust it, set {LIMIT_ENV_VAR} to a larger "
                    "number of bytes (0 for no limit) and run again."
                )
            out.write(block)


def _safe_target(dest: Path, member: str, archive: Path) -> Path:
    target = (dest / member).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise CorruptArchiveError(
            f"{archive}: member {member!r} would be written outside the extraction folder; "
            "refusing to extract this archive."
        )
    return target


def extract(archive: str | Path, dest: str | Path, max_bytes: int | None = None) -> Path:
    """Extract ``archive`` (zip or tar) into ``dest``; return ``dest``.

    Parameters
    ----------
    archive
        A zip or tar file (only read).
    dest
        The folder to extract into.
    max_bytes
        Limit on the bytes written (``0``: none); default see :func:`extraction_limit`.

    Raises
    ------
    CorruptArchiveError
        For a truncated or damaged archive (names the archive and the member), for
        members that would escape ``dest``, and when the size limit is exceeded.
    """
    archive, dest = Path(archive), Path(dest)
    budget = _Budget(archive, extraction_limit(archive, max_bytes))
    dest.mkdir(parents=True, exist_ok=True)
    fix = f"Delete or move away {archive} and download it again (`nucdata download`)."
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if is_junk(info.filename) or info.is_dir():
                        continue
                    target = _safe_target(dest, info.filename, archive)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        with zf.open(info) as src, open(target, "wb") as out:
                            budget.copy(src, out, info.filename)
                    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
                        raise CorruptArchiveError(
                            f"{archive}: member {info.filename!r} is damaged or truncated ({exc}). {fix}"
                        ) from exc
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                for member in tf:
                    if is_junk(member.name) or not member.isfile():
                        continue
                    target = _safe_target(dest, member.name, archive)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tf.extractfile(member)
                    if src is None:
                        continue
                    with src, open(target, "wb") as out:
                        budget.copy(src, out, member.name)
        else:
            raise CorruptArchiveError(f"{archive}: not a readable zip or tar archive (truncated?). {fix}")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
        raise CorruptArchiveError(f"{archive}: damaged or truncated archive ({exc}). {fix}") from exc
    return dest
