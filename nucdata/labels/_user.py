"""A user's own vocabulary and mapping table, kept in the data home instead of the package.

``nucdata prepare --custom NAME`` stores, beside the dataset's card in
``$NUCDATA_HOME/registry/``:

``<NAME>.mapping.json``
    The dataset's table, in the schema of ``nucdata/labels/mappings/<dataset>.json``:
    ``dataset``, ``version``, ``native_classes`` (``code``, ``name``, ``description``),
    ``targets`` (label set -> one row per native class), plus ``vocabulary`` (the name of
    the user's own label set, or ``null``), ``sources`` (citation keys the rows may cite
    besides the packaged ones; ``user`` is always there) and ``accepted`` (findings of
    the checker accepted with a reason, as in ``_tables.json``).
``<VOCABULARY>.vocabulary.json``
    The user's own label set, in the schema of ``nucdata/labels/vocabularies/<set>.json``.

The user's files are validated by the packaged tables' own rules (:func:`parse_rows`:
kinds, classes of the target, one unconditional row per code, sources) and compared with
the packaged tables by the same checker (:func:`check_user_tables`, the contradictions
of :func:`check_tables`: a direct row A→B against every path A→C→B). What the user did
not give is filled in, and written out, so the stored table is complete:

* a label set with no table from the dataset gets ``unknown`` rows (no information;
  like Kumar, MoNuSeg and TNBC under every set), citing ``user``;
* the user's own vocabulary, when the mapping has no table into it, gets ``exact`` rows
  matching native class names to its class names (every native class must match one).

:func:`label_set`, :func:`native_vocabulary`, :func:`mapping` and
:func:`translate_store_labels` find these files in the folders :func:`use_user_tables`
registered (``nucdata.prepare_custom``, ``nucdata.load`` of a user dataset's store register
theirs) and in ``registry/`` of the current data home (``$NUCDATA_HOME``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from nucdata._util.home import registry_dir
from nucdata.errors import UserTableError

__all__ = ["MAPPING_SUFFIX", "NAME", "USER_SOURCES", "VOCABULARY_SUFFIX", "read_table_file", "search_folders",
           "use_user_tables", "user_table_paths"]

#: Citation keys every user table may cite, besides the packaged tables' sources.
USER_SOURCES = {"user": "The user's own annotations and tables (nucdata prepare --custom)."}
MAPPING_SUFFIX = ".mapping.json"
VOCABULARY_SUFFIX = ".vocabulary.json"
NAME = re.compile(r"[a-z][a-z0-9_\-]{0,63}")
_folders: list[Path] = []


def use_user_tables(folder: str | os.PathLike[str]) -> None:
    """Look for user tables in ``folder`` too (a data home's ``registry/``), for this process."""
    path = Path(folder).resolve()
    if path not in _folders:
        _folders.insert(0, path)


def search_folders() -> list[Path]:
    folders = list(_folders)
    try:
        home = registry_dir(None).resolve()
    except Exception:  # noqa: BLE001 - a broken $NUCDATA_HOME is reported where a home is used
        home = None
    if home is not None and home not in folders:
        folders.append(home)
    return folders




def user_table_paths(dataset: str, folder: str | os.PathLike[str],
                     vocabulary: str | None = None) -> tuple[Path, Path | None]:
    """The mapping file and (when named) the vocabulary file of a user dataset in ``folder``."""
    folder = Path(folder)
    return folder / f"{dataset}{MAPPING_SUFFIX}", (folder / f"{vocabulary}{VOCABULARY_SUFFIX}" if vocabulary else None)


def read_table_file(path: Path) -> Any:
    """A stored user table's JSON (a typed error when it cannot be read)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserTableError(f"{path}: cannot be read as JSON ({exc}). Fix: run nucdata prepare --custom again with "
                             "the vocabulary and mapping files.") from None
