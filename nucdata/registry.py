"""Dataset cards: one packaged JSON file per dataset (``nucdata/cards/<name>.json``).

A card says where a dataset comes from and what a correct conversion looks like:
homepage, licence (SPDX), citation (BibTeX), microns per pixel, splits, expected
counts, manual-download instructions and its files (name, size, SHA-256 with the
source of that hash, ordered mirrors).

A file ``$NUCDATA_HOME/registry/<name>.json`` overrides the packaged card key by
key (for example to add a mirror or to pin the hash of one's own copy); the
override is recorded in every manifest built from it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .atomic import atomic_write_json
from .errors import UnknownDatasetError
from .home import manual_dir, registry_dir


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset as published.

    Attributes
    ----------
    name
        File name under ``raw/`` and ``manual/``.
    role
        Which part of the dataset it holds (a split name, or ``"all"``).
    format
        ``"zip"``, ``"tar"`` or ``"file"``; decides how it is opened.
    size
        Size in bytes, or ``None`` when nobody publishes it.
    sha256
        Hex digest, or ``None`` when unknown (the file is then accepted unverified).
    hash_source
        Who stated the hash: publishers give none for these datasets, so this is
        usually a third party, and says so.
    mirrors
        URLs tried in order.
    """

    name: str
    role: str
    format: str
    size: int | None
    sha256: str | None
    hash_source: str
    mirrors: tuple[str, ...]


@dataclass(frozen=True)
class Card:
    """Everything nucdata knows about one dataset before converting it."""

    name: str
    title: str
    homepage: str
    licence: str
    citation: str
    mpp: float | None
    converter: str
    splits: dict[str, str]
    expected: dict[str, Any]
    files: tuple[RemoteFile, ...]
    manual_instructions: str
    notes: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    overridden_by: str | None = None

    def instructions(self, root: str | os.PathLike[str] | None = None) -> str:
        """Manual-download instructions with the user's real manual folder filled in."""
        return self.manual_instructions.replace("{manual}", str(manual_dir(root)))

    def file(self, name: str) -> RemoteFile:
        for f in self.files:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no file {name!r}")


_CARD_KEYS = {
    "name", "title", "homepage", "licence", "citation", "mpp", "converter", "splits",
    "expected", "files", "manual_instructions", "notes",
}


def list_datasets() -> list[str]:
    """Names of every dataset with a packaged card, sorted."""
    folder = resources.files("nucdata") / "cards"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def _read_json(path: Any, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        from .errors import MalformedAnnotationError

        raise MalformedAnnotationError(
            f"{what}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}. "
            "Fix or delete the file."
        ) from exc


def get_card(name: str, root: str | os.PathLike[str] | None = None) -> Card:
    """Return the card of dataset ``name``, with any local override applied.

    Raises
    ------
    UnknownDatasetError
        If no card exists; the message lists the known names.
    """
    key = name.strip().lower()
    known = list_datasets()
    if key not in known:
        raise UnknownDatasetError(name, known)
    data = _read_json(resources.files("nucdata") / "cards" / f"{key}.json", f"card {key}")
    override_path = registry_dir(root) / f"{key}.json"
    overridden_by = None
    if override_path.is_file():
        data.update(_read_json(override_path, str(override_path)))
        overridden_by = str(override_path)
    files = tuple(
        RemoteFile(
            name=f["name"],
            role=f.get("role", "all"),
            format=f.get("format", "zip"),
            size=f.get("size"),
            sha256=(f.get("sha256") or None),
            hash_source=f.get("hash_source", "unknown"),
            mirrors=tuple(f.get("mirrors", ())),
        )
        for f in data["files"]
    )
    return Card(
        name=key,
        title=data["title"],
        homepage=data["homepage"],
        licence=data["licence"],
        citation=data["citation"],
        mpp=data.get("mpp"),
        converter=data.get("converter", key),
        splits=dict(data["splits"]),
        expected=dict(data.get("expected", {})),
        files=files,
        manual_instructions=data.get("manual_instructions", ""),
        notes=tuple(data.get("notes", ())),
        extra={k: v for k, v in data.items() if k not in _CARD_KEYS},
        overridden_by=overridden_by,
    )


def write_override(name: str, data: dict[str, Any], root: str | os.PathLike[str] | None = None) -> Path:
    """Write a local card override (used by the demo and by tests)."""
    return atomic_write_json(registry_dir(root) / f"{name}.json", data)
