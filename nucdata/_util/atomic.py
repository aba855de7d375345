"""Atomic file writes and crash-safe folder replacement: the one home for both.

Files
    :func:`atomic_write_bytes`, :func:`atomic_write_text` and
    :func:`atomic_write_json` write to a temporary file in the destination's folder,
    ``fsync`` it and publish it with ``os.replace``: a reader sees the old file or
    the new one, never a half-written one. :func:`atomic_path` does the same for
    writers that need a file name (``torch.save``).

Folders
    A folder is built under a hidden *staging* name beside its destination
    (:func:`staging_dir`, ``.<name>.tmp-<id>``) and published with :func:`swap_dir`:

    1. the current ``<name>`` (if any) is renamed to ``.<name>.old-<id>``;
    2. the staging folder is renamed to ``<name>``;
    3. the old copy is removed.

    Each hidden folder has a small *owner file* beside it (``<folder>.owner``,
    JSON: process id, host, process start time), written **before** the folder
    exists. :func:`recover` runs at the start of the next operation on the same
    destination: if ``<name>`` is missing (a kill between steps 1 and 2) it
    renames the newest complete old copy back; then it deletes hidden folders
    whose owner process is gone. A folder without an owner file was not created
    by nucdata and is never deleted.

Every step passes a named fault point (:mod:`nucdata._util.faults`), ``"<label>:<step>"``
with the steps listed in :data:`SWAP_STEPS`, so tests can raise or kill there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nucdata._util import disk
from nucdata._util.faults import fault_point

#: Fault-point steps of :func:`swap_dir`, in order (each is ``"<label>:<step>"``).
SWAP_STEPS = ("before-swap", "old-moved", "published", "old-removed")

OWNER_SUFFIX = ".owner"
_active: set[str] = set()  # ids of staging/old folders this process is still using


# -- files ---------------------------------------------------------------------------
def _fsync_dir(folder: Path) -> None:
    """Flush a directory entry to disk (POSIX; a no-op where unsupported)."""
    if os.name == "nt":  # pragma: no cover - Windows cannot open directories
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success publish it there atomically.

    For writers that want a file name (``torch.save``, ``np.save``, streamed
    writes): write the complete content to the yielded path inside the block. On
    leaving the block normally the file is ``fsync``-ed and renamed over ``path``;
    on an exception it is removed and ``path`` is left as it was.

    Parameters
    ----------
    path
        Destination file; its folder is created when missing.
    """
    path = Path(path)
    with disk.mapped(path, f"creating the folder of {path.name}"):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with disk.mapped(path, f"writing {path.name}"):  # ENOSPC in the caller's writes too
            yield tmp
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; return the path.

    The bytes go to a temporary file in the same folder, which is flushed,
    ``fsync``-ed and renamed over ``path`` with ``os.replace``. The parent folder is
    created when missing. On any error the temporary file is removed and ``path``
    is left as it was; a full disk is a :class:`~nucdata.errors.DiskFullError` that
    says how many bytes were to be written and how many are free.

    Parameters
    ----------
    path
        Destination file.
    data
        The complete new content.
    """
    with atomic_path(path) as tmp, disk.mapped(path, f"writing {Path(path).name}", needed=len(data)), \
            open(tmp, "xb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`).

    Parameters
    ----------
    path
        Destination file.
    text
        The complete new content.
    encoding
        Text encoding, UTF-8 by default.
    """
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(
    path: str | os.PathLike[str],
    obj: Any,
    *,
    indent: int | None = 2,
    default: Callable[[Any], Any] | None = None,
) -> Path:
    """Serialise ``obj`` as JSON and write it to ``path`` atomically.

    Parameters
    ----------
    path
        Destination file.
    obj
        Any JSON-serialisable value.
    indent
        Passed to :func:`json.dumps`; ``None`` writes one line.
    default
        Passed to :func:`json.dumps` for values JSON cannot encode.
    """
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=default))


# -- owner files ---------------------------------------------------------------------
def _process_start(pid: int) -> str | None:
    """Start time of process ``pid`` (Linux ``/proc``), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # field 22 (starttime) counts from after the parenthesised command name
    return stat.rsplit(")", 1)[-1].split()[19]


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if os.name == "nt":  # pragma: no cover - exercised on Windows only
        import ctypes

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Owner:
    """Who made a hidden staging or old folder (the content of its owner file)."""

    id: str
    kind: str  # "tmp" or "old"
    dest: str  # the destination folder's name
    pid: int
    host: str
    started: str | None
    created: str

    def alive(self) -> bool:
        """Whether the process that made the folder may still be using it.

        A folder made by another host is treated as in use: nucdata cannot see
        that host's processes.
        """
        if self.host != socket.gethostname():
            return True
        if self.pid == os.getpid():
            return self.id in _active
        if not _pid_alive(self.pid):
            return False
        now = _process_start(self.pid)
        return self.started is None or now is None or now == self.started


def _owner_path(folder: Path) -> Path:
    return folder.with_name(folder.name + OWNER_SUFFIX)


def _write_owner(folder: Path, kind: str, dest: Path, ident: str) -> None:
    owner = {
        "id": ident, "kind": kind, "dest": dest.name, "pid": os.getpid(),
        "host": socket.gethostname(), "started": _process_start(os.getpid()),
        "created": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
    }
    atomic_write_json(_owner_path(folder), owner)


def read_owner(folder: Path) -> Owner | None:
    """The owner record of hidden folder ``folder``, or ``None`` when it has none."""
    try:
        data = json.loads(_owner_path(folder).read_text(encoding="utf-8"))
        return Owner(
            id=str(data["id"]), kind=str(data["kind"]), dest=str(data["dest"]),
            pid=int(data["pid"]), host=str(data["host"]),
            started=None if data.get("started") is None else str(data["started"]),
            created=str(data.get("created", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _release(folder: Path) -> None:
    """Forget an owner record (the folder is gone or has been published)."""
    owner = read_owner(folder)
    if owner is not None:
        _active.discard(owner.id)
    with contextlib.suppress(OSError):
        _owner_path(folder).unlink()


# -- folders -------------------------------------------------------------------------
def staging_dir(dest: str | os.PathLike[str]) -> Path:
    """Create and return an empty hidden folder beside ``dest`` to build into.

    The folder is ``.<name>.tmp-<id>`` in ``dest``'s parent (so the final rename
    stays on one file system), with an owner file written first. Publish it with
    :func:`swap_dir`, or remove it with :func:`discard` when the build fails.

    Parameters
    ----------
    dest
        The folder that will eventually be replaced.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    ident = uuid.uuid4().hex[:12]
    tmp = dest.parent / f".{dest.name}.tmp-{ident}"
    _active.add(ident)
    _write_owner(tmp, "tmp", dest, ident)
    with disk.mapped(tmp, f"creating the staging folder of {dest.name}"):
        tmp.mkdir()
    return tmp


def discard(tmp: str | os.PathLike[str]) -> None:
    """Remove a staging folder made by :func:`staging_dir` and its owner file.

    Does nothing when ``tmp`` was already published or removed. A folder without
    an owner file is left alone.
    """
    tmp = Path(tmp)
    if read_owner(tmp) is None:
        return
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    if not tmp.exists():
        _release(tmp)


def swap_dir(tmp: str | os.PathLike[str], dest: str | os.PathLike[str], *, label: str = "swap") -> Path:
    """Publish the complete folder ``tmp`` at ``dest``, replacing what is there.

    ``tmp`` must be on the same file system as ``dest``, normally a folder from
    :func:`staging_dir`. The old ``dest`` is first renamed to a hidden
    ``.<name>.old-<id>`` (its owner file written before), then ``tmp`` is renamed
    to ``dest``, then the old copy is removed. A kill at any point leaves either
    ``dest`` or a complete old copy that :func:`recover` restores. An exception
    raised between the two renames puts the old copy back before propagating.

    Parameters
    ----------
    tmp
        The complete new folder.
    dest
        Where to publish it.
    label
        Prefix of the fault points passed (``"<label>:<step>"`` for each step in
        :data:`SWAP_STEPS`).

    Returns
    -------
    Path
        ``dest``.
    """
    tmp, dest = Path(tmp), Path(dest)
    fault_point(f"{label}:before-swap")
    old: Path | None = None
    ident = uuid.uuid4().hex[:12]
    if dest.exists() or dest.is_symlink():
        old = dest.parent / f".{dest.name}.old-{ident}"
        _active.add(ident)
        _write_owner(old, "old", dest, ident)
        os.rename(dest, old)
        try:
            fault_point(f"{label}:old-moved")
            os.rename(tmp, dest)
        except BaseException:
            if not dest.exists():  # put the previous copy back before failing
                with contextlib.suppress(OSError):
                    os.rename(old, dest)
                    _release(old)
            raise
    else:
        os.rename(tmp, dest)
    _release(tmp)
    _fsync_dir(dest.parent)
    try:
        fault_point(f"{label}:published")
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
            if not old.exists():
                _release(old)
    finally:
        if old is not None and old.exists():  # left for recover(): no operation uses it now
            _active.discard(ident)
    fault_point(f"{label}:old-removed")
    return dest


@dataclass
class Recovery:
    """What :func:`recover` did (each entry a one-line description)."""

    restored: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """All actions as human-readable lines."""
        return (
            [f"restored the previous copy {r}" for r in self.restored]
            + [f"removed the leftovers of an interrupted run: {r}" for r in self.removed]
            + [f"kept {k}" for k in self.kept]
        )


def _hidden_siblings(dest: Path) -> list[tuple[Path, Owner | None]]:
    prefix_tmp, prefix_old = f".{dest.name}.tmp-", f".{dest.name}.old-"
    found: dict[Path, Owner | None] = {}
    if not dest.parent.is_dir():
        return []
    for child in dest.parent.iterdir():
        name = child.name
        if name.endswith(OWNER_SUFFIX):
            name = name[: -len(OWNER_SUFFIX)]
        if name.startswith((prefix_tmp, prefix_old)):
            folder = dest.parent / name
            found[folder] = read_owner(folder)
    return sorted(found.items(), key=lambda item: item[0].name)


def recover(
    dest: str | os.PathLike[str],
    complete: Callable[[Path], bool] | None = None,
) -> Recovery:
    """Repair the state a killed :func:`swap_dir` or build left around ``dest``.

    Call it at the start of an operation on ``dest``, under the same lock that
    serialises writers of ``dest``.

    1. When ``dest`` is missing and complete old copies ``.<name>.old-*`` exist
       whose owners are gone, the newest is renamed back to ``dest``.
    2. Hidden ``.<name>.tmp-*`` and ``.<name>.old-*`` folders whose owner process
       is gone are deleted, with their owner files; owner files without a folder
       are deleted too.
    3. Hidden folders without an owner file, or whose owner is alive (or on
       another host), are kept and listed in :attr:`Recovery.kept`.

    Parameters
    ----------
    dest
        The published folder.
    complete
        Predicate telling whether an old copy is complete (for a store: it holds
        its manifest). Default: any folder counts as complete.

    Returns
    -------
    Recovery
        What was restored, removed and kept.
    """
    dest = Path(dest)
    done = Recovery()
    siblings = _hidden_siblings(dest)
    if not dest.exists():
        olds = [
            (owner.created, folder) for folder, owner in siblings
            if owner is not None and owner.kind == "old" and not owner.alive()
            and folder.is_dir() and (complete is None or complete(folder))
        ]
        if olds:
            _, newest = max(olds)
            os.rename(newest, dest)
            _release(newest)
            done.restored.append(newest.name)
            siblings = _hidden_siblings(dest)
    for folder, owner in siblings:
        if owner is None:
            if folder.exists():
                done.kept.append(f"{folder.name} (no owner file: not made by nucdata)")
            continue
        if owner.alive():
            where = "" if owner.host == socket.gethostname() else f" on host {owner.host}"
            if folder.exists():
                done.kept.append(f"{folder.name} (in use by process {owner.pid}{where})")
            continue
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
            done.removed.append(folder.name)
        if not folder.exists():
            _release(folder)
    return done


def recover_all(parent: str | os.PathLike[str], complete: Callable[[Path], bool] | None = None) -> Recovery:
    """Run :func:`recover` for every destination in ``parent`` that has owner files.

    Parameters
    ----------
    parent
        The folder holding destinations and their hidden siblings.
    complete
        Passed to :func:`recover`.
    """
    parent = Path(parent)
    total = Recovery()
    if not parent.is_dir():
        return total
    dests = set()
    for child in parent.iterdir():
        if child.name.endswith(OWNER_SUFFIX):
            owner = read_owner(child.with_name(child.name[: -len(OWNER_SUFFIX)]))
            if owner is not None:
                dests.add(owner.dest)
    for name in sorted(dests):
        one = recover(parent / name, complete)
        total.restored += one.restored
        total.removed += one.removed
        total.kept += one.kept
    return total
