"""Fetch a dataset's files: manual folder first, then each mirror in order.

pooch performs the transfer (one URL per call); nucdata adds what pooch lacks:
an ordered mirror list, a size check before the
hash, detection of an HTML page served in place of an archive, and a temporary
name that is renamed only when every check passed. A failed attempt leaves
nothing under the final name, and nothing already in ``raw/`` or ``manual/`` is
ever modified or deleted.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pooch

from nucdata._util.disk import disk_full, is_disk_full
from nucdata._util.hashing import sha256_file as sha256sum
from nucdata._util.home import manual_dir, raw_dir, writable_folder
from nucdata._util.progress import use_bars
from nucdata.catalog import Card, RemoteFile, get_card
from nucdata.errors import (
    CorruptArchiveError,
    DownloadError,
    HashMismatchError,
    HTMLInsteadOfArchiveError,
    SizeMismatchError,
)

log = logging.getLogger(__name__)

_MAGIC = {
    "zip": (b"PK\x03\x04", b"PK\x05\x06"),
    "tar": (b"\x1f\x8b", b"BZh", b"\xfd7zXZ"),  # gzip, bzip2, xz; plain tar checked below
}


@dataclass(frozen=True)
class FetchedFile:
    """A verified local file and how it was obtained."""

    path: Path
    sha256: str
    origin: str  # "manual", "cache" or the mirror URL
    verified: bool  # False when the card has no hash to check against
    hash_source: str


def looks_like_html(head: bytes) -> bool:
    """True when leading bytes look like a web page (Drive scan page, login form...)."""
    head = head.lstrip().lower()
    return head.startswith(b"<") and (b"<html" in head or head.startswith(b"<!doctype html"))


def check_format(path: Path, spec: RemoteFile, dataset: str | None = None) -> None:
    """Raise when a file is an HTML page, or lacks its archive format's magic bytes (``dataset`` names the fix)."""
    with open(path, "rb") as fh:
        head = fh.read(2048)
    magic = _MAGIC.get(spec.format, ())
    is_plain_tar = spec.format == "tar" and head[257:262] == b"ustar"
    if magic and (head.startswith(magic) or is_plain_tar):
        return
    if looks_like_html(head):
        raise HTMLInsteadOfArchiveError(
            f"{path}: an HTML page was received instead of {spec.name!r} "
            "(a login, quota or virus-scan page). Download the file in a browser and put it "
            "into the manual folder"
            + (f" (`nucdata info {dataset}` names the folder and the page to download from)." if dataset else ".")
        )
    if magic:
        raise CorruptArchiveError(
            f"{path}: not a {spec.format} archive (starts with {head[:8]!r}). "
            f"Download {spec.name!r} again."
        )


def verify(path: Path, spec: RemoteFile, fix: str, check_hash: bool = True, size_fix: str | None = None,
           dataset: str | None = None) -> str:
    """Check size, format and hash of ``path`` against ``spec``; return its SHA-256.

    Parameters
    ----------
    path
        The file.
    spec
        The card's entry for it.
    fix
        The fix a hash mismatch names.
    check_hash
        Compare the SHA-256 (``--no-hash-check`` turns it off; the size is always checked).
    size_fix
        The fix a size mismatch names (default ``fix``); it must not offer
        ``--no-hash-check``, which does not skip the size check.
    dataset
        The dataset the file belongs to, named in the fix of an HTML page received instead.
    """
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        raise SizeMismatchError(path, spec.size, size, size_fix or fix)
    check_format(path, spec, dataset)
    digest = sha256sum(path)
    if check_hash and spec.sha256 and digest != spec.sha256.lower():
        raise HashMismatchError(path, spec.sha256.lower(), digest, fix)
    return digest


def _download_once(url: str, dest: Path, spec: RemoteFile, check_hash: bool, dataset: str | None = None) -> str:
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        downloader = pooch.HTTPDownloader(timeout=60, chunk_size=1 << 20, progressbar=use_bars())
        downloader(url, str(tmp), None)
        digest = verify(
            tmp,
            spec,
            fix=f"The mirror {url} served a different file; nucdata tries the next mirror. "
            f"If you trust this copy, put it into the manual folder and use "
            f"`nucdata download --no-hash-check`.",
            check_hash=check_hash,
            dataset=dataset,
            size_fix=f"The mirror {url} served a file of another size (a truncated transfer or another "
            "release); nucdata tries the next mirror. --no-hash-check does not accept a file of the wrong "
            "size: download it again.",
        )
        os.replace(tmp, dest)  # only a fully verified file gets the final name
        return digest
    finally:
        if tmp.exists():
            tmp.unlink()


def fetch_file(
    card: Card,
    spec: RemoteFile,
    root: str | os.PathLike[str] | None = None,
    check_hash: bool = True,
    allow_network: bool = True,
    progress: Callable[[str], None] | None = None,
) -> FetchedFile:
    """Return a verified local copy of one file, downloading it only when needed.

    The order is: ``manual/<name>``, then ``raw/<name>``, then each mirror.

    Raises
    ------
    HashMismatchError, SizeMismatchError, HTMLInsteadOfArchiveError
        For a file in the manual folder that fails a check (it is left untouched), or
        when every mirror failed the same way.
    DownloadError
        When every mirror failed; lists each failure and the manual instructions.
    """
    say = progress or log.info
    manual = manual_dir(root) / spec.name
    cached = raw_dir(root) / spec.name
    verified = bool(spec.sha256) and check_hash
    if manual.is_file():
        fix = (
            f"The file in the manual folder is not the published {spec.name!r}. Replace it "
            "with a fresh download, or pass --no-hash-check to accept it unverified."
        )
        size_fix = (
            f"The file in the manual folder is not the published {spec.name!r}: a truncated download or "
            f"another release. Replace it with a complete download (--no-hash-check does not accept a file "
            f"of the wrong size); to use this copy anyway, extract it yourself and run "
            f"`nucdata prepare {card.name} --from <folder>` (recorded as unverified)."
        )
        digest = verify(manual, spec, fix, check_hash, size_fix=size_fix, dataset=card.name)
        say(f"{card.name}: using {manual} (manual folder, sha256 {digest[:12]}...)")
        return FetchedFile(manual, digest, "manual", verified, spec.hash_source)
    if cached.is_file():
        fix = (
            f"The cached {cached} no longer matches the registry. Move it away and run "
            f"`nucdata download {card.name}` again."
        )
        digest = verify(cached, spec, fix, check_hash, dataset=card.name)
        return FetchedFile(cached, digest, "cache", verified, spec.hash_source)
    if not allow_network:
        raise DownloadError(
            f"{card.name}: {spec.name!r} is neither in {manual} nor in {cached}, and the "
            f"network is not allowed here.\n{card.instructions(root)}"
        )
    writable_folder(cached.parent, "the raw downloads")
    failures: list[tuple[str, Exception]] = []
    for url in spec.mirrors:
        say(f"{card.name}: downloading {spec.name!r} from {url}")
        try:
            digest = _download_once(url, cached, spec, check_hash, card.name)
        except OSError as exc:
            if is_disk_full(exc):  # no mirror will fit either
                raise disk_full(cached, f"downloading {spec.name!r}", spec.size, exc) from None
            failures.append((url, exc))
            log.warning("%s: mirror %s failed: %s", card.name, url, exc)
            continue
        except (DownloadError, ValueError) as exc:
            failures.append((url, exc))
            log.warning("%s: mirror %s failed: %s", card.name, url, exc)
            continue
        except Exception as exc:  # requests' errors: connection, HTTP status, timeout
            failures.append((url, exc))
            log.warning("%s: mirror %s failed: %s", card.name, url, exc)
            continue
        return FetchedFile(cached, digest, url, verified, spec.hash_source)
    lines = "\n".join(f"  - {url}: {type(exc).__name__}: {exc}" for url, exc in failures)
    message = (
        f"{card.name}: could not download {spec.name!r} from any mirror:\n{lines or '  (no mirrors)'}\n"
        f"Manual route: {card.instructions(root)}"
    )
    kinds = {type(exc) for _, exc in failures}
    if len(kinds) == 1:
        only = kinds.pop()
        if only in (HTMLInsteadOfArchiveError, DownloadError):
            raise only(message)
        if issubclass(only, DownloadError):
            last = failures[-1][1]
            last.args = (f"{last}\n{message}",)
            raise last
    raise DownloadError(message)


def fetch(
    name: str,
    root: str | os.PathLike[str] | None = None,
    check_hash: bool = True,
    allow_network: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[FetchedFile]:
    """Fetch every file of dataset ``name``; see :func:`fetch_file`."""
    card = get_card(name, root)
    return [
        fetch_file(card, spec, root, check_hash, allow_network, progress) for spec in card.files
    ]
