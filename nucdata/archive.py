"""Safe extraction of downloaded archives into scratch space.

Raw archives are only read, never modified. Members are checked against path
traversal, and macOS metadata (``__MACOSX/``, ``.DS_Store``, ``._*``) is skipped.
"""

from __future__ import annotations

import shutil
import tarfile
import zipfile
import zlib
from pathlib import Path

from .errors import CorruptArchiveError


def is_junk(name: str) -> bool:
    """macOS metadata that some dataset archives carry."""
    parts = Path(name).parts
    return any(p == "__MACOSX" or p == ".DS_Store" or p.startswith("._") for p in parts)


def _safe_target(dest: Path, member: str, archive: Path) -> Path:
    target = (dest / member).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise CorruptArchiveError(
            f"{archive}: member {member!r} would be written outside the extraction folder; "
            "refusing to extract this archive."
        )
    return target


def extract(archive: str | Path, dest: str | Path) -> Path:
    """Extract ``archive`` (zip or tar) into ``dest``; return ``dest``.

    Raises
    ------
    CorruptArchiveError
        For a truncated or damaged archive (names the archive and the member) and for
        members that would escape ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
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
                            shutil.copyfileobj(src, out, 1 << 20)
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
                        shutil.copyfileobj(src, out, 1 << 20)
        else:
            raise CorruptArchiveError(f"{archive}: not a readable zip or tar archive (truncated?). {fix}")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
        raise CorruptArchiveError(f"{archive}: damaged or truncated archive ({exc}). {fix}") from exc
    return dest
