"""Safe extraction of downloaded archives into scratch space.

Raw archives are only read, never modified. Members are checked against path
traversal, and macOS metadata (``__MACOSX/``, ``.DS_Store``, ``._*``) is skipped.
Every failure is typed: a damaged archive says to download it again; an archive
Python cannot extract (encrypted members, an unknown compression method, names too
long, a member that is a file and a folder) says how to extract it otherwise; a full
disk says how much is free and how much the rest needs, and never to delete the
archive.

Extraction is limited in size, against decompression bombs: at most
:data:`MAX_RATIO` times the archive's own size, and never less than
:data:`MIN_LIMIT` bytes, counted on the bytes actually written (not the sizes the
archive declares). ``NUCDATA_EXTRACT_LIMIT`` (bytes; ``0`` for no limit) or the
``max_bytes`` argument overrides it.
"""

from __future__ import annotations

import errno
import os
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

from nucdata._util.disk import disk_full, is_disk_full, mapped
from nucdata._util.paths import MAX_NAME_BYTES, is_junk
from nucdata.errors import (
    CorruptArchiveError,
    DataHomeError,
    DiskFullError,
    InvalidArgumentError,
    UnsupportedArchiveError,
)

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
    """Bytes written so far against the extraction limit; the declared total, for disk-full messages."""

    def __init__(self, archive: Path, limit: int | None):
        self.archive, self.limit, self.used = archive, limit, 0
        self.declared: int | None = None  # the members' declared sizes, when known

    def copy(self, src: Any, out: Any, member: str, target: Path) -> None:
        while True:
            try:
                block = src.read(1 << 20)
            except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, OSError) as exc:
                raise CorruptArchiveError(
                    f"{self.archive}: member {member!r} is damaged or truncated ({exc}). {_FIX.format(self.archive)}"
                ) from None
            if not block:
                return
            if self.limit is not None and self.used + len(block) > self.limit:
                raise CorruptArchiveError(
                    f"{self.archive}: member {member!r} takes the extracted size past {self.limit:,} bytes "
                    f"({MAX_RATIO}x the archive, at least {MIN_LIMIT:,}): a decompression bomb or an "
                    f"unexpectedly large archive. If you trust it, set {LIMIT_ENV_VAR} to a larger "
                    "number of bytes (0 for no limit) and run again."
                )
            try:
                out.write(block)
            except OSError as exc:
                raise _write_error(exc, target, self, member) from None
            self.used += len(block)

    def still_needed(self) -> int | None:
        return None if self.declared is None else max(0, self.declared - self.used)


#: the fix for an archive that is damaged (never for one the disk could not hold)
_FIX = "Delete or move away {} and download it again (`nucdata download`)."


def _write_error(exc: OSError, target: Path, budget: _Budget, member: str) -> Exception:
    """The typed error for a failure to create or write an extracted file: never "delete the archive"."""
    archive = budget.archive
    if is_disk_full(exc):
        return disk_full(target, f"extracting {archive.name} ({budget.used:,} bytes written so far)",
                         budget.still_needed(), exc)
    if exc.errno == errno.ENAMETOOLONG:
        return UnsupportedArchiveError(
            f"{archive}: member {member!r} has a name too long for this file system; no dataset's "
            "archive does. It is not the published archive: download it again from the card's mirrors.")
    if isinstance(exc, (IsADirectoryError, FileExistsError, NotADirectoryError)):
        return UnsupportedArchiveError(
            f"{archive}: member {member!r} is both a file and a folder in this archive (a member 'a' and a "
            "member 'a/b'); no dataset's archive is laid out so. It is not the published archive: download "
            "it again, or extract it with another tool and run `nucdata prepare <name> --from <folder>`.")
    return DataHomeError(
        f"{target}: cannot be written while extracting {archive.name} ({exc.strerror or exc}); the archive is "
        "intact. Make the data home's work/ folder writable (or point NUCDATA_HOME / --root elsewhere) and "
        "run the command again.")


def _check_member_name(member: str, archive: Path) -> None:
    if "\0" in member:
        raise CorruptArchiveError(f"{archive}: a member name holds a NUL byte ({member!r}); the archive is "
                                  f"damaged or crafted. {_FIX.format(archive)}")
    for part in member.replace("\\", "/").split("/"):
        if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise UnsupportedArchiveError(
                f"{archive}: member {member[:80]!r}... has a name part of {len(part)} characters, more than "
                f"the {MAX_NAME_BYTES} bytes file systems allow; no dataset's archive has one. It is not the "
                "published archive: download it again from the card's mirrors.")


def _safe_target(dest: Path, member: str, archive: Path) -> Path:
    _check_member_name(member, archive)
    target = (dest / member).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise CorruptArchiveError(
            f"{archive}: member {member!r} would be written outside the extraction folder; "
            "refusing to extract this archive."
        )
    return target


def _open_target(target: Path, budget: _Budget, member: str) -> Any:
    """Create the member's folder and open its file for writing, every failure typed."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return open(target, "wb")  # noqa: SIM115 - closed by the caller's with
    except OSError as exc:
        raise _write_error(exc, target, budget, member) from None


_ZIP_METHODS = {zipfile.ZIP_STORED: None, zipfile.ZIP_DEFLATED: "zlib", zipfile.ZIP_BZIP2: "bz2",
                zipfile.ZIP_LZMA: "lzma"}


def _zip_member_check(info: zipfile.ZipInfo, archive: Path) -> None:
    if info.flag_bits & 0x1:
        raise UnsupportedArchiveError(
            f"{archive}: member {info.filename!r} is encrypted (password-protected); nucdata cannot extract "
            "it. No dataset publishes encrypted archives: download the published archive again, or extract "
            "this one yourself and run `nucdata prepare <name> --from <folder>`.")
    if info.compress_type not in _ZIP_METHODS:
        raise UnsupportedArchiveError(
            f"{archive}: member {info.filename!r} uses zip compression method {info.compress_type}, which "
            "Python's zipfile cannot read (only stored, deflate, bzip2 and LZMA). Extract it with another tool "
            "(for example 7-Zip) and run `nucdata prepare <name> --from <folder>`.")


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
    UnsupportedArchiveError
        For an encrypted member, a compression method Python lacks, a member name too
        long for the file system, or a member that is both a file and a folder.
    DiskFullError
        When the disk fills: how much is free and how much the rest of the archive
        needs; the archive is intact (never "delete it").
    DataHomeError
        When an extracted file cannot be written for another reason (permissions).
    """
    archive, dest = Path(archive), Path(dest)
    budget = _Budget(archive, extraction_limit(archive, max_bytes))
    with mapped(dest, f"creating the extraction folder for {archive.name}"):
        dest.mkdir(parents=True, exist_ok=True)
    fix = _FIX.format(archive)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                members = [i for i in zf.infolist() if not (is_junk(i.filename) or i.is_dir())]
                budget.declared = sum(i.file_size for i in members)
                for info in members:
                    _zip_member_check(info, archive)
                    target = _safe_target(dest, info.filename, archive)
                    try:
                        src = zf.open(info)
                    except (RuntimeError, NotImplementedError) as exc:  # encryption, a missing codec module
                        raise UnsupportedArchiveError(
                            f"{archive}: member {info.filename!r} cannot be opened by Python's zipfile ({exc}). "
                            "Extract it with another tool and run `nucdata prepare <name> --from <folder>`."
                        ) from None
                    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
                        raise CorruptArchiveError(
                            f"{archive}: member {info.filename!r} is damaged or truncated ({exc}). {fix}"
                        ) from None
                    with src, _open_target(target, budget, info.filename) as out:
                        budget.copy(src, out, info.filename, target)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                for member in tf:
                    if is_junk(member.name) or not member.isfile():
                        continue
                    target = _safe_target(dest, member.name, archive)
                    src = tf.extractfile(member)
                    if src is None:
                        continue
                    before = budget.used
                    try:
                        with src, _open_target(target, budget, member.name) as out:
                            budget.copy(src, out, member.name, target)
                    except DiskFullError:  # what the rest needs: this member's rest and the later ones
                        later = sum(m.size for m in tf.getmembers() if m.isfile() and m.offset_data > member.offset_data)
                        budget.declared = budget.used + later + max(0, member.size - (budget.used - before))
                        raise _write_error(_ENOSPC, target, budget, member.name) from None
        else:
            raise CorruptArchiveError(f"{archive}: not a readable zip or tar archive (truncated?). {fix}")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
        raise CorruptArchiveError(f"{archive}: damaged or truncated archive ({exc}). {fix}") from exc
    return dest


_ENOSPC = OSError(errno.ENOSPC, "No space left on device")
