"""Dataset cards: one packaged JSON file per dataset (``nucdata/cards/<name>.json``).

A card says where a dataset comes from and what a correct conversion looks like:
homepage, licence (SPDX), citation (BibTeX), microns per pixel, splits, expected
counts, manual-download instructions and its files (name, size, SHA-256 with the
source of that hash, ordered mirrors).

Fields that place a dataset among the others (every dataset list of nucdata and
nucdata_models is derived from them, never written by hand):

``order``
    Its position in nucdata's dataset lists (:func:`datasets_in_order`). Datasets with
    classes are numbered from 1, those without from 101, so lists keep the labelled
    ones first and a new dataset takes the next free number of its kind, renumbering
    none. The demo world draws its mapping-table errors in this order, so renumbering
    changes the demo's bytes.
``duplicates_of``
    The dataset whose images this one's are copies of (Kumar's 30 images are MoNuSeg's
    classic training images), or absent. The copy comes after the original in the
    split priority, and the demo world draws the two alike.
``nuclei``
    ``{"count", "lower_bound", "source"}``: the nuclei of the real release, for cards
    whose ``expected.regions`` does not give them (not checked after a conversion).
    :attr:`Card.nuclei` reads it, else sums ``expected.regions``.

A file ``$NUCDATA_HOME/registry/<name>.json`` overrides the packaged card key by
key (for example to add a mirror or to pin the hash of one's own copy); the
override is recorded in every manifest built from it.

**A user's own dataset** (``nucdata prepare --custom NAME``) has a card of its own in
the same folder, ``registry/<NAME>.json``, marked ``"custom": true``
(:func:`write_custom_card`; :func:`is_custom`): licence ``"user"``, no citation
(``"citation": null``; :attr:`Card.citation` is empty), converter ``"custom"``, no files
to fetch, and under ``"custom_source"`` where its images and annotations are, which
annotation format they are in, the labels CSV and the µm/px given. Such a card is found
only in its data home: it never enters :func:`list_datasets` or
:func:`datasets_in_order` (nucdata's lists of datasets are the packaged ones), but
:func:`get_card` returns it (:func:`list_custom_datasets` lists a home's), so ``load``,
exports, tiles and ``build-merged --datasets ...,NAME`` take it by name. A custom card
may not take a packaged dataset's name.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from nucdata._util.atomic import atomic_write_json
from nucdata._util.home import manual_dir, registry_dir
from nucdata.errors import InvalidCardError, UnknownDatasetError


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
    order: int = 0
    duplicates_of: str | None = None
    published_nuclei: dict[str, Any] | None = None

    @property
    def nuclei(self) -> int | None:
        """Nuclei of the real release: the card's ``nuclei.count``, else ``expected.regions`` summed.

        ``None`` when the card gives neither (MoNuSAC's count is a published lower bound,
        ``published_nuclei["lower_bound"]``).
        """
        if self.published_nuclei is not None:
            return int(self.published_nuclei["count"])
        regions = self.expected.get("regions")
        if not isinstance(regions, dict):
            return None
        return sum(int(v) for k, v in regions.items() if not k.endswith("_note"))

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
    "expected", "files", "manual_instructions", "notes", "order", "duplicates_of", "nuclei",
}


def list_datasets() -> list[str]:
    """Names of every dataset with a packaged card, sorted."""
    folder = resources.files("nucdata.catalog") / "cards"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def datasets_in_order() -> list[str]:
    """Names of every dataset with a packaged card, by the cards' ``order`` (labelled first).

    The packaged cards decide, never a local override: the order of nucdata's lists is
    the same in every data home.
    """
    return sorted(list_datasets(), key=lambda name: (get_card(name, packaged=True).order, name))


def _read_json(path: Any, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        from nucdata.errors import MalformedAnnotationError

        raise MalformedAnnotationError(
            f"{what}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}. "
            "Fix or delete the file."
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidCardError(f"{what}: cannot be read ({exc}). Fix or delete the file.") from None
    if not isinstance(data, dict):
        raise InvalidCardError(f"{what}: expected a JSON object, found {type(data).__name__}. Fix or delete the file.")
    return data


_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+\- ()]*")


def _safe_name(value: Any, what: str, key: str) -> str:
    """A file or folder name that stays inside its folder (no ``/``, ``\\``, ``..``)."""
    if not isinstance(value, str) or not _SAFE_NAME.fullmatch(value) or ".." in value:
        raise InvalidCardError(
            f"{what}: files[].{key} = {value!r} is not a plain file name (letters, digits, '._-+ ()', "
            "no folders, no '..'); a card may not name files outside nucdata's folders."
        )
    return value


def _check_files(files: Any, what: str) -> None:
    """Validate the ``files`` list of a card (after any override was applied)."""
    if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
        raise InvalidCardError(f"{what}: 'files' must be a list of objects.")
    for f in files:
        _safe_name(f.get("name"), what, "name")
        _safe_name(f.get("role", "all"), what, "role")
        size, digest = f.get("size"), f.get("sha256")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise InvalidCardError(f"{what}: files[{f['name']!r}].size = {size!r} is not a byte count.")
        if digest not in (None, "") and not (isinstance(digest, str) and re.fullmatch(r"[0-9a-fA-F]{64}", digest)):
            raise InvalidCardError(f"{what}: files[{f['name']!r}].sha256 = {digest!r} is not 64 hex digits.")
        mirrors = f.get("mirrors", [])
        if not isinstance(mirrors, list) or not all(
                isinstance(m, str) and m.lower().startswith(("https://", "http://")) for m in mirrors):
            raise InvalidCardError(f"{what}: files[{f['name']!r}].mirrors must be a list of http(s) URLs.")


def get_card(name: str, root: str | os.PathLike[str] | None = None, *, packaged: bool = False) -> Card:
    """Return the card of dataset ``name``, with any local override applied.

    ``packaged=True`` returns the card as shipped, ignoring any override (for facts that
    must not depend on the data home, such as the demo world's real dataset sizes). A
    user dataset's card (``prepare --custom``, module docstring) is found in the data
    home's ``registry/`` (``root``, else ``$NUCDATA_HOME``, else the homes this process
    has read custom cards from).

    Raises
    ------
    UnknownDatasetError
        If no card exists; the message lists the known names.
    """
    key = name.strip().lower()
    known = list_datasets()
    if key not in known:
        custom = None if packaged else _custom_card_file(key, root)
        if custom is None:
            raise UnknownDatasetError(name, known + (list_custom_datasets(root) if not packaged else []))
        return _custom_card(key, custom)
    data = _read_json(resources.files("nucdata.catalog") / "cards" / f"{key}.json", f"card {key}")
    override_path = None if packaged else registry_dir(root) / f"{key}.json"
    overridden_by = None
    if override_path is not None and override_path.is_file():
        data.update(_read_json(override_path, str(override_path)))
        overridden_by = str(override_path)
    _check_files(data.get("files"), overridden_by or f"card {key}")
    if data.get("duplicates_of") is not None and data["duplicates_of"] not in known:
        raise InvalidCardError(f"{overridden_by or f'card {key}'}: duplicates_of = {data['duplicates_of']!r} "
                               f"names no dataset; use one of {', '.join(known)}.")
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
        order=int(data.get("order", 0)),
        duplicates_of=data.get("duplicates_of"),
        published_nuclei=data.get("nuclei"),
    )


def write_override(name: str, data: dict[str, Any], root: str | os.PathLike[str] | None = None) -> Path:
    """Write a local card override (used by the demo and by tests)."""
    return atomic_write_json(registry_dir(root) / f"{name}.json", data)


# -- a user's own datasets ------------------------------------------------------------
CUSTOM_CONVERTER = "custom"
_custom_homes: dict[str, Path] = {}


def is_custom(card: Card) -> bool:
    """Whether ``card`` is a user dataset's (``nucdata prepare --custom``)."""
    return bool(card.extra.get("custom"))


def _is_custom_file(path: Path) -> bool:
    try:
        return path.is_file() and json.loads(path.read_text(encoding="utf-8")).get("custom") is True
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


def _custom_card_file(key: str, root: str | os.PathLike[str] | None) -> Path | None:
    if not _SAFE_NAME.fullmatch(key) or ".." in key or "/" in key:
        return None
    candidates = [registry_dir(root) / f"{key}.json"]
    if root is None and key in _custom_homes:
        candidates.append(_custom_homes[key] / f"{key}.json")
    for path in candidates:
        if _is_custom_file(path):
            if root is not None:
                _custom_homes[key] = path.parent
            return path
    return None


def _custom_card(key: str, path: Path) -> Card:
    data = _read_json(path, str(path))
    what = str(path)
    if data.get("converter", CUSTOM_CONVERTER) != CUSTOM_CONVERTER:
        raise InvalidCardError(f"{what}: a custom card's converter is {CUSTOM_CONVERTER!r}, not "
                               f"{data.get('converter')!r}; write it again with nucdata prepare --custom.")
    source = data.get("custom_source")
    if not isinstance(source, dict):
        raise InvalidCardError(f"{what}: a custom card needs 'custom_source' (images, annotations, format); write it "
                               "again with nucdata prepare --custom.")
    mpp = data.get("mpp")
    if mpp is not None and not (isinstance(mpp, (int, float)) and not isinstance(mpp, bool) and mpp > 0):
        raise InvalidCardError(f"{what}: mpp = {mpp!r} is not a positive number of µm per pixel.")
    return Card(
        name=key, title=str(data.get("title", f"{key} (user dataset)")), homepage=str(data.get("homepage", "")),
        licence=str(data.get("licence", "user")), citation=str(data.get("citation") or ""),
        mpp=float(mpp) if mpp is not None else None, converter=CUSTOM_CONVERTER,
        splits=dict(data.get("splits", {"train": "every image"})), expected=dict(data.get("expected", {})),
        files=(), manual_instructions=str(data.get("manual_instructions", "")), notes=tuple(data.get("notes", ())),
        extra={k: v for k, v in data.items() if k not in _CARD_KEYS}, overridden_by=None,
        order=int(data.get("order", 1000)), duplicates_of=None, published_nuclei=None)


def list_custom_datasets(root: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the user datasets with a card in the data home's ``registry/`` (sorted)."""
    folder = registry_dir(root)
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.glob("*.json")
                  if p.name.count(".") == 1 and p.name[:-5] not in list_datasets() and _is_custom_file(p))


def write_custom_card(name: str, source: dict[str, Any], *, mpp: float | None = None, title: str | None = None,
                      notes: list[str] | None = None, root: str | os.PathLike[str] | None = None) -> Path:
    """Write the card of a user dataset (module docstring) into the data home's ``registry/``.

    Parameters
    ----------
    name
        The dataset's name (not a packaged dataset's).
    source
        Where its files are: ``images``, ``annotations``, ``format`` and any options the
        ``custom`` converter reads.
    mpp
        µm/px of its images, when known.
    title, notes
        Shown by ``nucdata info``.
    root
        The data home.

    Raises
    ------
    InvalidCardError
        A packaged dataset's name, or a name that is not a plain file name.
    """
    key = name.strip().lower()
    if key in list_datasets():
        raise InvalidCardError(f"{name!r} is a packaged dataset; a user dataset takes a name of its own.")
    if not _SAFE_NAME.fullmatch(key) or ".." in key or "." in key:
        raise InvalidCardError(f"{name!r} is not a plain name (letters, digits, '_-'); choose another.")
    data = {
        "custom": True, "name": key, "title": title or f"{key} (user dataset)", "homepage": "",
        "licence": "user", "citation": None, "mpp": mpp, "converter": CUSTOM_CONVERTER,
        "splits": {"train": "every image (a user dataset has no official split)"}, "expected": {}, "files": [],
        "manual_instructions": "A user dataset: prepare it again with nucdata prepare --custom (its files are "
                               "read from custom_source).",
        "notes": list(notes or []), "custom_source": source,
    }
    path = atomic_write_json(registry_dir(root) / f"{key}.json", data)
    _custom_homes[key] = path.parent
    return path
