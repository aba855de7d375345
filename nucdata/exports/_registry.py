"""The export registry: format name -> the module that writes it, and the one publish step.

Each format is one module of this package that defines ``NAME``, ``DESCRIPTION``,
``OPTIONS`` (the keyword options its ``write`` takes) and ``write(ds, out, **options) ->
list[Path]``; :data:`FORMATS` names it. A module is imported only when its format is
used, so the command line can list the formats without loading any writer.

A format module only writes into the (empty) folder it is given. :func:`export` makes
the whole output one atomic publish: it builds the export in a hidden staging folder
beside ``out``, writes the marker :data:`MARKER` last, and swaps the folder in with
:func:`nucdata._util.atomic.swap_dir`; a kill at any moment leaves the previous export
or the new one, whole, never a mix (two folds under different label sets, a stale fold
of another dataset). ``out`` may be missing, an empty folder, or an earlier export
(it holds the marker and nothing else) replaced with ``overwrite=True``; a folder
holding anything nucdata export did not write is refused, whatever ``overwrite`` says.
"""

from __future__ import annotations

import importlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from nucdata._util import atomic, disk
from nucdata._util.faults import fault_point
from nucdata._util.version import VERSION
from nucdata.errors import InvalidArgumentError, OutputFolderError

if TYPE_CHECKING:
    from nucdata.dataset import NucleusDataset

__all__ = ["FORMATS", "MARKER", "export", "exporter"]

#: every export format and its module, in the order the command line lists them
FORMATS: dict[str, str] = {
    "geojson": "nucdata.exports.geojson",
    "coco": "nucdata.exports.coco",
    "hovernet-json": "nucdata.exports.hovernet_json",
    "pannuke": "nucdata.exports.pannuke",
    "hovernet-patches": "nucdata.exports.hovernet_patches",
}

#: the marker file at the top of every export folder: what was exported, when, and every
#: file written (so a folder holding anything else is known not to be ours)
MARKER = ".nucdata-export"


def exporter(fmt: str) -> ModuleType:
    """The module that writes format ``fmt`` (raises a typed error naming the valid formats)."""
    if fmt not in FORMATS:
        raise InvalidArgumentError(f"unknown export format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    module = importlib.import_module(FORMATS[fmt])
    if getattr(module, "NAME", None) != fmt:  # pragma: no cover - a development error
        raise InvalidArgumentError(f"{module.__name__} does not define NAME = {fmt!r}")
    return module


def _files(folder: Path) -> list[str]:
    """Every file and link under ``folder`` as a relative POSIX path (folders themselves excluded)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        base = Path(dirpath)
        links = [d for d in dirnames if (base / d).is_symlink()]  # a link is never walked into
        dirnames[:] = [d for d in dirnames if d not in links]
        found += [(base / name).relative_to(folder).as_posix() for name in [*filenames, *links]]
    return sorted(found)


def read_marker(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The marker of an earlier export in ``folder``, or ``None`` when it holds none (or an unreadable one)."""
    path = Path(folder) / MARKER
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not (isinstance(data, dict) and isinstance(data.get("files"), list)
            and all(isinstance(f, str) for f in data["files"])):
        return None
    return data


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that is not missing, empty, or (with ``overwrite``) wholly an earlier export.

    Raises
    ------
    OutputFolderError
        When ``out`` is a file; holds anything an export did not write (always); or is an
        earlier export and ``overwrite`` is false. Nothing is changed.
    """
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise OutputFolderError(f"{out}: exists and is not a folder; choose another --out. Nothing was written.")
    present = _files(out)
    if not present and not any(out.iterdir()):
        return  # an empty folder
    marker = read_marker(out)
    foreign = sorted(set(present) - set(marker["files"]) - {MARKER}) if marker else present
    if marker is None or foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "") if foreign else \
            ", ".join(sorted(p.name for p in out.iterdir())[:5])
        raise OutputFolderError(
            f"{out}: holds files that nucdata export did not write ({shown}); nothing was changed, and "
            "--overwrite never replaces them. Choose a new or empty folder for --out, or move those files away.")
    if not overwrite:
        raise OutputFolderError(
            f"{out}: holds an earlier export ({marker.get('format')} of {marker.get('dataset')}, label set "
            f"{marker.get('label_set')}, split {marker.get('split')}, written {marker.get('created')}); nothing "
            "was changed. Pass --overwrite (overwrite=True) to replace it as a whole, or choose another --out.")


def _output_folder(out: str | os.PathLike[str]) -> Path:
    if isinstance(out, str) and not out.strip():
        raise InvalidArgumentError("the output folder is empty (--out \"\"); name a folder to export into, "
                                   "for example --out exports/consep-geojson.")
    return Path(out).expanduser().resolve()


def export(ds: NucleusDataset, fmt: str, out: str | os.PathLike[str], *, overwrite: bool = False,
           **options: Any) -> list[Path]:
    """Export ``ds`` (its split and label set) as ``fmt`` into folder ``out``, atomically as a whole.

    Parameters
    ----------
    ds
        The dataset; its split chooses the images and its label set the classes
        (native codes and names without one).
    fmt
        ``"geojson"`` (QuPath: one FeatureCollection per image, a ``detection`` per
        nucleus), ``"coco"`` (one file per dataset and split) or ``"hovernet-json"``
        (one file per image); the schemas are described in docs/tutorials/loading.md.
        For segmentation trainers: ``"pannuke"`` (PanNuke's fold layout) and
        ``"hovernet-patches"`` (HoVer-Net's extracted patches), both under a label set;
        see :mod:`nucdata.exports`.
    out
        The export folder: missing, empty, or an earlier export (with ``overwrite``). It
        is built beside ``out`` and swapped in whole; it carries the marker
        :data:`MARKER` (format, dataset, label set, split, time and every file written).
    overwrite
        Replace an earlier export in ``out``. A folder holding files nucdata export did
        not write is refused either way.
    **options
        For ``pannuke``: ``mpp``, ``size``, ``assume_mpp``; for ``hovernet-patches``:
        ``mpp``, ``win``, ``step``, ``assume_mpp``.

    Returns
    -------
    list of Path
        The files written (under ``out``).

    Raises
    ------
    InvalidArgumentError
        For an unknown format, an option the format does not take, or an empty ``out``.
    OutputFolderError
        When ``out`` is not missing, empty or (with ``overwrite``) an earlier export.
    DiskFullError
        When the disk fills; the earlier export (if any) is unchanged.
    """
    module = exporter(fmt)
    unknown = sorted(set(options) - set(module.OPTIONS))
    if unknown:
        takes = ", ".join(module.OPTIONS) or "no options"
        raise InvalidArgumentError(f"the {fmt} export takes {takes}; got {', '.join(unknown)}")
    out = _output_folder(out)
    if out.parent == out:
        raise OutputFolderError(f"{out}: a file system's root cannot be an export folder; choose a folder in it.")
    # a run killed between the two renames left the previous export aside: put it back first
    atomic.recover(out, complete=lambda folder: (folder / MARKER).is_file())
    check_output(out, overwrite)
    tmp = atomic.staging_dir(out)
    try:
        with disk.mapped(out, f"writing the {fmt} export of {ds.name}"):
            written = module.write(ds, tmp, **options)
            fault_point("export:written")
            atomic.atomic_write_json(tmp / MARKER, {
                "format": fmt, "dataset": ds.name, "label_set": ds.label_set, "split": ds.split,
                "options": {k: v for k, v in sorted(options.items())},
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "nucdata_version": VERSION, "files": _files(tmp),
            })
            atomic.swap_dir(tmp, out, label="export")
    finally:
        atomic.discard(tmp)
    return [out / Path(p).relative_to(tmp) for p in written]
