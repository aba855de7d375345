"""Label sets and the mapping tables between vocabularies (docs/label-sets.md).

Packaged data, versioned together (:func:`table_version`, recorded in every store's
manifest as ``label_tables``):

* ``nucdata/labels/vocabularies/<name>.json`` — one vocabulary: classes with contiguous
  ids ``0..K-1`` (they index softmax heads and candidate bitmasks), name, colour and a
  one-line description; ``exhaustive`` (do its classes cover every nucleus, through a
  catch-all class?) and ``source`` (the citation key of its definition).
* ``nucdata/labels/mappings/<dataset>.json`` — a dataset's native vocabulary (codes
  exactly as its files define them) and, for every target label set, one row per
  native class (see below).
* ``nucdata/labels/mappings/sets/<label set>.json`` — the same from the class ids of
  ``consep4``, ``nucls_main`` and ``nucls_super``, so predictions made in those
  vocabularies translate too. The label sets ``pannuke``, ``consep``, ``monusac`` and
  ``nucls`` are their datasets' native vocabularies: their id tables are the dataset
  tables with codes turned into ids (``mapping("set:consep", ...)``).
* ``nucdata/labels/mappings/_tables.json`` — the table version, the citation keys rows
  use, the conventions behind the rows and the consistency findings accepted with a
  reason (:func:`check_tables`).

Each row relates one source class to one target set: ``exact`` (one class),
``ambiguous`` (a candidate set, which may include the reserved name ``"outside"`` when
the target is not exhaustive), ``outside`` (no class of the target describes it; only
for non-exhaustive targets) or ``unknown`` (no information), with a reason and its
``sources``. A row with ``"when": {"tissue": [...]}`` applies instead of the
unconditional row to nuclei of those tissues (PanNuke's per-patch tissue).

Under a target set of K classes each nucleus gets ``label`` and ``candidates``, a
bitmask whose bit ``k < K`` is class ``k`` and whose bit K (:attr:`LabelSet.outside_bit`)
means "possibly none of this set's classes":

========== ======== ==========================================================
kind       label    candidates
========== ======== ==========================================================
exact      class id ``1 << id``
ambiguous  -1       the classes' bits, plus the outside bit if "outside" listed
outside    -2       the outside bit
unknown    -1       0 (no information; also nuclei without a native label)
========== ======== ==========================================================
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from nucdata._util.atomic import atomic_write_json
from nucdata._util.codes import MISSING, OUTSIDE
from nucdata.errors import (
    InvalidArgumentError,
    LabelTableError,
    UnknownClassError,
    UnknownDatasetError,
    UnknownLabelSetError,
    UserTableError,
)
from nucdata.labels._user import (
    MAPPING_SUFFIX,
    USER_SOURCES,
    VOCABULARY_SUFFIX,
    read_table_file,
    search_folders,
    use_user_tables,
    user_table_paths,
)
from nucdata.labels._user import NAME as USER_NAME

KINDS = ("exact", "ambiguous", "outside", "unknown")
#: the reserved candidate name for "possibly none of the set's classes"
OUTSIDE_NAME = "outside"
#: prefix naming a label set's class ids as a mapping source (``"set:consep"``)
SET_PREFIX = "set:"
MERGED_LABEL_SETS = ("pannuke", "nucls", "consep", "monusac")
#: the label set each labelled dataset's native vocabulary is
OWN_LABEL_SET = {"pannuke": "pannuke", "consep": "consep", "monusac": "monusac", "nucls": "nucls",
                 "crchisto": "crchisto"}


@dataclass(frozen=True)
class LabelClass:
    """One class of a label set."""

    id: int
    name: str
    colour: str
    description: str

    @property
    def rgb(self) -> tuple[int, int, int]:
        return tuple(int(self.colour[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


@dataclass(frozen=True)
class LabelSet:
    """A versioned vocabulary; iterate for its classes, index by id or name.

    ``exhaustive`` sets cover every nucleus (through a catch-all class), so no row may
    put a nucleus outside them; for the others, candidate bit ``len(set)``
    (:attr:`outside_bit`) stands for "none of these classes".
    """

    name: str
    version: str
    description: str
    classes: tuple[LabelClass, ...]
    exhaustive: bool = True
    source: str = ""

    def __len__(self) -> int:
        return len(self.classes)

    def __iter__(self) -> Iterator[LabelClass]:
        return iter(self.classes)

    def __getitem__(self, key: int | str) -> LabelClass:
        if isinstance(key, str):
            return self.classes[self.index(key)]
        return self.classes[key]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def outside_bit(self) -> int:
        """The candidate bit meaning "possibly none of this set's classes" (``1 << K``)."""
        return 1 << len(self.classes)

    @property
    def class_bits(self) -> int:
        """The bits of all ``K`` classes (``(1 << K) - 1``)."""
        return self.outside_bit - 1

    def index(self, name: str) -> int:
        """Class id of ``name`` (case-insensitive)."""
        lowered = name.lower()
        for c in self.classes:
            if c.name.lower() == lowered:
                return c.id
        raise UnknownClassError(name, self.name, self.names)

    @property
    def colours(self) -> np.ndarray:
        """``(n, 3)`` uint8 RGB colours, row ``i`` for class ``i``."""
        return np.array([c.rgb for c in self.classes], np.uint8).reshape(-1, 3)

    def decode_candidates(self, bitmask: int) -> list[str]:
        """Class names whose bit is set in ``bitmask``, then ``"outside"`` for the outside bit."""
        bits = int(bitmask)
        names = [c.name for c in self.classes if (bits >> c.id) & 1]
        if bits & self.outside_bit:
            names.append(OUTSIDE_NAME)
        return names

    def encode_candidates(self, names: Iterable[str]) -> int:
        """The bitmask of class ``names`` (``"outside"``: the outside bit).

        Raises
        ------
        LabelTableError
            ``"outside"`` for an exhaustive set.
        UnknownClassError
            A name that is not a class of the set.
        """
        bits = 0
        for name in names:
            if name.lower() == OUTSIDE_NAME:
                if self.exhaustive:
                    raise LabelTableError(
                        f"label set {self.name!r} is exhaustive (its classes cover every nucleus): "
                        "'outside' is not a candidate there; use its catch-all class"
                    )
                bits |= self.outside_bit
            else:
                bits |= 1 << self.index(name)
        return bits

    def __str__(self) -> str:
        width = max(len(c.name) for c in self.classes)
        cover = "exhaustive" if self.exhaustive else f"not exhaustive (candidate bit {len(self)} = outside)"
        lines = [f"label set {self.name!r} v{self.version}, {cover}: {self.description}"]
        lines += [f"  {c.id:2d}  {c.name:{width}s}  {c.colour}  {c.description}" for c in self.classes]
        return "\n".join(lines)


@dataclass(frozen=True)
class MappingRow:
    """How one source class relates to one target label set.

    ``tissues`` is ``None`` for the unconditional row; otherwise the row applies, in
    place of the unconditional one, to nuclei whose image's tissue is listed.
    """

    native: int
    native_name: str
    kind: str
    classes: tuple[str, ...]
    reason: str
    sources: tuple[str, ...] = ()
    tissues: tuple[str, ...] | None = None

    @property
    def conditional(self) -> bool:
        return self.tissues is not None

    @property
    def may_be_outside(self) -> bool:
        """True when the row allows "none of the target's classes"."""
        return self.kind == "outside" or OUTSIDE_NAME in self.classes


@dataclass(frozen=True)
class LabelMapping:
    """The table from a source vocabulary (a dataset's native codes or a label set's
    class ids) into a label set."""

    source: str
    target: LabelSet
    rows: tuple[MappingRow, ...]
    source_kind: str = "dataset"
    version: str = ""

    def __iter__(self) -> Iterator[MappingRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def tissues(self) -> list[str]:
        """Every tissue a conditional row names (sorted)."""
        return sorted({t for r in self.rows if r.tissues for t in r.tissues})

    def row(self, native: int, tissue: str | None = None) -> MappingRow:
        """The row that applies to code ``native`` (in ``tissue``, when given)."""
        base = None
        for r in self.rows:
            if r.native != native:
                continue
            if r.tissues is None:
                base = r
            elif tissue is not None and tissue in r.tissues:
                return r
        if base is None:
            raise UnknownClassError(str(native), f"{self.source} native codes",
                                    [str(c) for c in sorted({r.native for r in self.rows})])
        return base

    def encode(self, row: MappingRow) -> tuple[int, int]:
        """``(label, candidates)`` of one row under the target set."""
        bits = self.target.encode_candidates(row.classes)
        if row.kind == "exact":
            return self.target.index(row.classes[0]), bits
        if row.kind == "outside":
            return OUTSIDE, self.target.outside_bit
        return MISSING, bits

    def _tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        base = [r for r in self.rows if r.tissues is None]
        codes = np.array([r.native for r in base], np.int64)
        encoded = [self.encode(r) for r in base]
        labels = np.array([e[0] for e in encoded], np.int64).reshape(-1)
        candidates = np.array([e[1] for e in encoded], np.int64).reshape(-1)
        order = np.argsort(codes)
        return codes[order], labels[order], candidates[order]

    def translate(
        self, native_codes: np.ndarray, tissue: str | Sequence[str] | np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised: codes (-1 = none) to ``(labels, candidates)`` int64 arrays.

        Parameters
        ----------
        native_codes
            Converter codes, any shape.
        tissue
            ``None`` (unconditional rows only), one tissue name for every nucleus, or
            an array of per-nucleus tissue names of the same shape as ``native_codes``.

        Raises
        ------
        UnknownClassError
            For a code that is neither -1 nor in the source vocabulary.
        InvalidArgumentError
            A ``tissue`` array whose shape differs from the codes'.
        """
        native = np.asarray(native_codes).astype(np.int64, copy=False)
        codes, labels, candidates = self._tables()
        out_labels = np.full(native.shape, MISSING, np.int64)
        out_candidates = np.zeros(native.shape, np.int64)
        has = native != -1
        if has.any() and codes.size == 0:
            raise UnknownClassError(str(int(native[has][0])), f"{self.source} native codes (none)", [])
        if has.any():
            pos = np.searchsorted(codes, native[has])
            pos = np.clip(pos, 0, codes.size - 1)
            bad = codes[pos] != native[has]
            if bad.any():
                raise UnknownClassError(
                    str(int(native[has][bad][0])), f"{self.source} native codes",
                    [str(c) for c in codes.tolist()],
                )
            out_labels[has] = labels[pos]
            out_candidates[has] = candidates[pos]
        conditional = [r for r in self.rows if r.tissues is not None]
        if tissue is not None and conditional:
            tissues = np.asarray(tissue)
            if tissues.ndim == 0:
                tissues = np.full(native.shape, str(tissues))
            if tissues.shape != native.shape:
                raise InvalidArgumentError(
                    f"translate {self.source} -> {self.target.name}: tissue has shape {tissues.shape}, "
                    f"the codes {native.shape}; pass one tissue name or one per nucleus"
                )
            for r in conditional:
                sel = (native == r.native) & np.isin(tissues, list(r.tissues))
                if sel.any():
                    out_labels[sel], out_candidates[sel] = self.encode(r)
        return out_labels, out_candidates

    def __str__(self) -> str:
        lines = [f"mapping {self.source} -> {self.target.name} (tables v{self.version}, "
                 f"{'exhaustive' if self.target.exhaustive else 'not exhaustive'} target)"]
        for r in self.rows:
            target = ", ".join(r.classes) if r.classes else "-"
            when = f" [tissue: {', '.join(r.tissues)}]" if r.tissues else ""
            lines.append(f"  {r.native:3d} {r.native_name:32s} {r.kind:9s} {target:40s} {r.reason}{when}")
        return "\n".join(lines)


def _data(kind: str, name: str) -> dict:
    path = resources.files("nucdata.labels")
    for part in kind.split("/"):
        path = path / part
    return json.loads((path / f"{name}.json").read_text(encoding="utf-8"))


def _where(kind: str, name: str) -> str:
    return f"nucdata/labels/{kind}/{name}.json"


def list_label_sets() -> list[str]:
    """Names of every packaged label set."""
    return list(_packaged_set_names())


@cache
def _packaged_set_names() -> tuple[str, ...]:
    folder = resources.files("nucdata.labels") / "vocabularies"
    return tuple(sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json")))


@cache
def _mapping_datasets() -> list[str]:
    folder = resources.files("nucdata.labels") / "mappings"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json") and not p.name.startswith("_"))


def _set_tables() -> list[str]:
    folder = resources.files("nucdata.labels") / "mappings" / "sets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


@cache
def _meta() -> dict[str, Any]:
    return _data("mappings", "_tables")


def table_version() -> str:
    """The version of the packaged label-set tables (bumped with every row change)."""
    return str(_meta()["version"])


def table_sources() -> dict[str, str]:
    """Citation key -> citation of every source a row or label set may cite."""
    return dict(_meta()["sources"])


def label_set(name: str) -> LabelSet:
    """The label set ``name``: a packaged one, or a user dataset's own vocabulary (``prepare --custom``).

    Raises
    ------
    UnknownLabelSetError
        Listing the valid names.
    LabelTableError
        A packaged file that breaks the rules (ids not 0..K-1, a class named "outside").
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key in list_label_sets():
        return _packaged_label_set(key)
    found = find_user_vocabulary(key)
    if found is None:
        raise UnknownLabelSetError(name, list_label_sets())
    return found


@cache
def _packaged_label_set(key: str) -> LabelSet:
    data = _data("vocabularies", key)
    where = _where("vocabularies", key)
    classes = tuple(LabelClass(c["id"], c["name"], c["colour"], c["description"]) for c in data["classes"])
    if [c.id for c in classes] != list(range(len(classes))):
        raise LabelTableError(f"{where}: class ids must be 0..{len(classes) - 1} in order")
    if any(c.name.lower() == OUTSIDE_NAME for c in classes):
        raise LabelTableError(f"{where}: {OUTSIDE_NAME!r} is reserved for the outside candidate; rename that class")
    if not isinstance(data.get("exhaustive"), bool):
        raise LabelTableError(f"{where}: 'exhaustive' must be true or false")
    source = str(data.get("source", ""))
    if source not in table_sources():
        raise LabelTableError(f"{where}: 'source' {source!r} is not a citation key of _tables.json "
                              f"({', '.join(table_sources())})")
    return LabelSet(data["name"], data["version"], data["description"], classes, data["exhaustive"], source)


def native_vocabulary(dataset: str) -> list[tuple[int, str, str]]:
    """``(code, name, description)`` of each native class of ``dataset`` (empty if none)."""
    key = dataset.strip().lower()
    if key not in _mapping_datasets():
        user = find_user_tables(key)
        if user is None:
            raise UnknownDatasetError(dataset, _mapping_datasets())
        return [tuple(c) for c in user.native]  # type: ignore[misc]
    return [(c["code"], c["name"], c["description"]) for c in _data("mappings", key)["native_classes"]]


def parse_rows(
    where: str, target: LabelSet, names: dict[int, str], rows_data: list[dict[str, Any]],
    *, sources: Mapping[str, str] | None = None,
) -> tuple[MappingRow, ...]:
    """Validate and build the rows of one table (what :func:`mapping` does with packaged data).

    Parameters
    ----------
    where
        Names the table in error messages (file and target).
    target
        The target label set.
    names
        Converter code -> source class name; every code needs exactly one unconditional row.
    rows_data
        The rows as in the JSON files.
    sources
        The citation keys rows may cite (default: the packaged tables' sources; a user's
        table adds its own).

    Raises
    ------
    LabelTableError
        A malformed row; an ``outside`` row or "outside" candidate into an exhaustive
        set; a missing, repeated or widened row; an unknown citation key.
    """
    sources_known = dict(sources) if sources is not None else table_sources()
    rows: list[MappingRow] = []
    for i, r in enumerate(rows_data):
        if not isinstance(r, dict):
            raise LabelTableError(f"{where}: row {i} is not an object {{native, kind, classes, reason, sources}}")
        at = f"{where}: row {i} (native {r.get('native')!r})"
        native = r.get("native")
        if native not in names:
            raise LabelTableError(f"{at}: code not in the source vocabulary ({sorted(names)})")
        kind = r.get("kind")
        if kind not in KINDS:
            raise LabelTableError(f"{at}: kind {kind!r} is not one of {', '.join(KINDS)}")
        classes = tuple(r.get("classes", ()))
        for c in classes:
            if c != OUTSIDE_NAME and c.lower() not in (n.lower() for n in target.names):
                raise LabelTableError(f"{at}: {c!r} is not a class of {target.name!r} ({', '.join(target.names)})")
        if kind == "exact" and (len(classes) != 1 or OUTSIDE_NAME in classes):
            raise LabelTableError(f"{at}: an exact row names one class of the target")
        if kind == "ambiguous" and len(set(classes)) < 2:
            raise LabelTableError(f"{at}: an ambiguous row names at least two candidates")
        if kind in ("outside", "unknown") and classes:
            raise LabelTableError(f"{at}: a {kind} row names no classes")
        if (kind == "outside" or OUTSIDE_NAME in classes) and target.exhaustive:
            raise LabelTableError(
                f"{at}: 'outside' into {target.name!r}, an exhaustive label set (its classes cover every "
                "nucleus); file the class under the set's catch-all class, or mark the set not exhaustive"
            )
        reason = str(r.get("reason", "")).strip()
        if not reason:
            raise LabelTableError(f"{at}: every row needs a one-line reason")
        cited = tuple(r.get("sources", ()))
        if not cited or any(s not in sources_known for s in cited):
            raise LabelTableError(
                f"{at}: 'sources' must list citation keys of _tables.json ({', '.join(sources_known)}); got {list(cited)}"
            )
        tissues = None
        when = r.get("when")
        if when is not None:
            t = when.get("tissue") if isinstance(when, dict) and set(when) == {"tissue"} else None
            if not t or not all(isinstance(x, str) and x for x in t):
                raise LabelTableError(f"{at}: 'when' must be {{\"tissue\": [non-empty names]}}")
            tissues = tuple(t)
        rows.append(MappingRow(native, names[native], kind, classes, reason, cited, tissues))
    by_code: dict[int, list[MappingRow]] = {}
    for row in rows:
        by_code.setdefault(row.native, []).append(row)
    for code, name in names.items():
        found = by_code.get(code, [])
        base = [r for r in found if r.tissues is None]
        if len(base) != 1:
            raise LabelTableError(f"{where}: native {code} ({name}) needs exactly one unconditional row, has {len(base)}")
        seen: set[str] = set()
        universe = target.class_bits | (0 if target.exhaustive else target.outside_bit)
        base_bits = target.encode_candidates(base[0].classes) if base[0].kind != "unknown" else universe
        if base[0].kind == "outside":
            base_bits = target.outside_bit
        for r in found:
            if r.tissues is None:
                continue
            twice = seen & set(r.tissues)
            if twice:
                raise LabelTableError(f"{where}: native {code}: tissues {sorted(twice)} in two conditional rows")
            seen |= set(r.tissues)
            bits = target.outside_bit if r.kind == "outside" else target.encode_candidates(r.classes)
            if r.kind == "unknown" or bits & ~base_bits:
                raise LabelTableError(
                    f"{where}: native {code}: the row for tissues {list(r.tissues)} is not a narrowing of the "
                    "unconditional row (which must hold when the tissue is not known)"
                )
    return tuple(rows)


def _resolve_source(source: str | LabelSet) -> tuple[str, str]:
    if isinstance(source, LabelSet):
        return "label_set", source.name
    key = str(source).strip().lower()
    if key.startswith(SET_PREFIX):
        name = key[len(SET_PREFIX):]
        if name not in list_label_sets():
            raise UnknownLabelSetError(name, list_label_sets())
        return "label_set", name
    if key in _mapping_datasets():
        return "dataset", key
    if key in list_label_sets():
        return "label_set", key
    raise UnknownDatasetError(
        str(source), _mapping_datasets() + [n for n in list_label_sets() if n not in _mapping_datasets()]
        + [SET_PREFIX + n for n in list_label_sets()],
    )


def mapping(source: str | LabelSet, target: str) -> LabelMapping:
    """The table from ``source`` into label set ``target`` (see :func:`_packaged_mapping`'s rules).

    ``source`` is a dataset name (its native codes, as stored), or a label set (its
    class ids, for translating predictions made in that vocabulary): a label-set name
    that is not also a dataset name (``"consep4"``, ``"nucls_main"``, ``"nucls_super"``),
    ``"set:<name>"`` for any label set (``"set:consep"`` takes CoNSeP class ids 0..6,
    where ``"consep"`` takes CoNSeP's native codes 1..7), or a :class:`LabelSet`. A user
    dataset (``nucdata prepare --custom``) maps through its own stored table, into every
    packaged label set and its own vocabulary.

    Raises
    ------
    UnknownDatasetError, UnknownLabelSetError
        Unknown names, or no table from ``source`` into ``target``.
    LabelTableError
        A table that breaks the rules (see :func:`parse_rows`).
    """
    if isinstance(source, str):
        key = source.strip().lower()
        if key not in _mapping_datasets() and not key.startswith(SET_PREFIX) and key not in list_label_sets():
            user = find_user_tables(key)
            if user is not None:
                return user_mapping(user, target)
    return _packaged_mapping(source, target)


@cache
def _packaged_mapping(source: str | LabelSet, target: str) -> LabelMapping:
    """The packaged table from ``source`` into ``target`` (:func:`mapping`)."""
    kind, key = _resolve_source(source)
    target_set = label_set(target)
    if kind == "label_set":
        return _set_mapping(key, target_set)
    data = _data("mappings", key)
    names = {c["code"]: c["name"] for c in data["native_classes"]}
    rows_data = data["targets"].get(target_set.name)
    if rows_data is None:
        if names:
            raise UnknownLabelSetError(
                f"{target} (no table from {key}; tables exist for: {', '.join(sorted(data['targets']))})",
                sorted(data["targets"]),
            )
        rows_data = []  # datasets without classes: every nucleus is unknown everywhere
    rows = parse_rows(f"{_where('mappings', key)} -> {target_set.name}", target_set, names, rows_data)
    return LabelMapping(key, target_set, rows, "dataset", str(data.get("version", "")))


def _set_mapping(key: str, target: LabelSet) -> LabelMapping:
    src = label_set(key)
    shown = SET_PREFIX + key if key in _mapping_datasets() else key
    names = {c.id: c.name for c in src}
    if target.name == key:
        rows = tuple(MappingRow(c.id, c.name, "exact", (c.name,), "Own label set.", (src.source,)) for c in src)
        return LabelMapping(shown, target, rows, "label_set", table_version())
    if key in _set_tables():
        data = _data("mappings/sets", key)
        rows_data = data["targets"].get(target.name)
        if rows_data is None:
            raise UnknownLabelSetError(f"{target.name} (no table from label set {key})", sorted(data["targets"]))
        rows = parse_rows(f"{_where('mappings/sets', key)} -> {target.name}", target, names, rows_data)
        return LabelMapping(shown, target, rows, "label_set", str(data.get("version", "")))
    datasets = [d for d, own in OWN_LABEL_SET.items() if own == key]
    if not datasets:
        raise UnknownLabelSetError(f"{key} (no table has this label set's ids as source)", list(_set_tables()))
    table = mapping(datasets[0], target.name)
    own = mapping(datasets[0], key)
    id_of = {r.native: src.index(r.classes[0]) for r in own if r.kind == "exact" and r.tissues is None}
    rows = tuple(
        MappingRow(id_of[r.native], names[id_of[r.native]], r.kind, r.classes, r.reason, r.sources, r.tissues)
        for r in table if r.native in id_of
    )
    return LabelMapping(shown, target, rows, "label_set", table.version)


def translate(
    dataset: str | LabelSet, native_codes: np.ndarray, target: str,
    tissue: str | Sequence[str] | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``mapping(dataset, target).translate(native_codes, tissue)``.

    ``dataset`` may also name a label set (see :func:`mapping`) to translate class ids;
    ``tissue`` (one name, or one per nucleus) selects tissue-conditional rows.
    """
    return mapping(dataset, target).translate(native_codes, tissue)


def translate_annotations(
    table: LabelMapping, annotation: Sequence[object] | np.ndarray,
    tissue: str | Sequence[str] | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A lab's own labels (codes or class names) through one table: ``(labels, candidates)``.

    The tissue-aware translation of labels that live outside a store (``nucdata
    classify --labels``); :func:`translate_store_labels` is the one for stored labels.

    Parameters
    ----------
    table
        The mapping from the labels' vocabulary into one label set.
    annotation
        Per nucleus, a code of ``table``'s vocabulary (int; -1 for none) or a class name
        (case-insensitive; ``""``, ``None`` or NaN for none).
    tissue
        The image's tissue, or one per nucleus, for tissue-conditional rows.

    Raises
    ------
    UnknownClassError
        A class name the vocabulary does not have (the message names the nucleus and
        lists the vocabulary's classes).
    """
    names = {str(r.native_name).lower(): int(r.native) for r in table}
    values = np.asarray(annotation, dtype=object).reshape(-1)
    codes = np.full(values.shape, MISSING, np.int64)
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip()):
            continue
        if isinstance(v, str) and not v.strip().lstrip("-").isdigit():
            key = v.strip().lower()
            if key not in names:
                raise UnknownClassError(v, f"{table.source} (nucleus {i})", sorted(names))
            codes[i] = names[key]
        else:
            codes[i] = int(v)
    return table.translate(codes, tissue)


class StoreColumns(Protocol):
    """What :func:`translate_store_labels` reads of a store (:class:`nucdata.store.Store` has it)."""

    @property
    def dataset(self) -> str: ...

    def column(self, table: str, key: str) -> np.ndarray: ...

    def image_columns(self) -> list[str]: ...


def translate_store_labels(
    store: StoreColumns, label_set: str | None, nuclei: slice | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and candidate bitmasks of a store's nuclei under ``label_set``.

    The one translation of stored labels: the image dataset (``nucdata.load(...,
    label_set=)``), its crops (:meth:`nucdata.CropDataset.labels_under`) and the models'
    bridge to the merging method all call it, so they agree nucleus by nucleus.

    It takes the store itself, not native codes plus a tissue array, because the
    tissue is part of what the stored labels mean: PanNuke's tissue-conditional rows
    (``"when": {"tissue": [...]}``, see :meth:`LabelMapping.translate`) apply to a
    nucleus by the tissue of its image, the store's ``images/tissue`` column. Every
    caller that assembled codes and tissue itself had to find that column on its
    own, and one that could not (a crop bank in the cache of a read-only data home,
    far from its store) silently applied the unconditional rows instead. Here the
    codes, the nucleus-to-image rows and the tissue are read together through the
    store's public API (``dataset``, ``column``, ``image_columns``: any object with
    them will do, so this layer does not import the store's), and the per-tissue
    machinery of the tables stays inside :mod:`nucdata.labels`.

    Parameters
    ----------
    store
        The store (:class:`nucdata.store.Store`); its ``dataset`` names the mapping.
    label_set
        Target label set; ``None`` gives the native codes and zero candidates.
    nuclei
        Store nucleus rows to translate (a slice or integer array); default all, in
        store order.

    Returns
    -------
    labels, candidates
        int64 arrays, one entry per selected nucleus: the class under the set (-1
        missing, -2 outside), the native code without a set; candidate bitmasks
        (bit ``len(set)``: possibly outside; 0 without a set or information).

    Raises
    ------
    UnknownDatasetError, UnknownLabelSetError, UnknownClassError
        As :func:`mapping` and :meth:`LabelMapping.translate`.
    """
    _use_tables_beside(store)
    selected = slice(None) if nuclei is None else nuclei
    native = np.asarray(store.column("nuclei", "label"))[selected].astype(np.int64)
    if label_set is None:
        return native, np.zeros(native.shape, np.int64)
    table = mapping(store.dataset, label_set)
    tissue = None
    if table.tissues and "tissue" in store.image_columns():  # only tables with conditional rows read it
        image = np.asarray(store.column("nuclei", "image"))[selected]
        tissue = np.asarray(store.column("images", "tissue"))[image]
    return table.translate(native, tissue)




# -- a user's own tables (nucdata prepare --custom; the files: nucdata.labels._user) -------

_loaded_user: dict[tuple[str, str], tuple[tuple[int, int], UserTables]] = {}


@dataclass(frozen=True)
class UserTables:
    """A user dataset's validated tables (module docstring).

    Attributes
    ----------
    dataset
        The dataset's name.
    native
        ``(code, name, description)`` of each native class.
    targets
        Label set -> the table's rows, as in the JSON (every label set has one).
    vocabulary
        The user's own label set, or ``None``.
    sources
        Citation keys the rows may cite besides the packaged ones.
    accepted
        Checker findings accepted with a reason.
    version
        The table's version string.
    folder
        Where the files are (``None`` before they are written).
    """

    dataset: str
    native: tuple[tuple[int, str, str], ...]
    targets: dict[str, list[dict[str, Any]]]
    vocabulary: Any = None  # LabelSet | None
    sources: dict[str, str] = field(default_factory=dict)
    accepted: dict[str, str] = field(default_factory=dict)
    version: str = "1"
    folder: Path | None = None

    @property
    def names(self) -> dict[int, str]:
        """Native code -> name."""
        return {code: name for code, name, _ in self.native}

    def code_of(self, name: str) -> int | None:
        """The native code of class ``name`` (case-insensitive), or ``None``."""
        lowered = name.strip().lower()
        return next((code for code, n, _ in self.native if n.lower() == lowered), None)

    def to_json(self) -> dict[str, Any]:
        """The mapping file's content."""
        return {"dataset": self.dataset, "version": self.version,
                "vocabulary": self.vocabulary.name if self.vocabulary is not None else None,
                "native_classes": [{"code": c, "name": n, "description": d} for c, n, d in self.native],
                "targets": self.targets, "sources": self.sources,
                "accepted": [{"key": k, "reason": r} for k, r in self.accepted.items()]}


def _user_fail(where: str, what: str, fix: str) -> UserTableError:
    return UserTableError(f"{where}: {what}. Fix: {fix}.")


def check_user_name(name: str, what: str = "dataset") -> str:
    """A user dataset or label-set name: lowercase letters, digits, ``_`` and ``-``, not a packaged one."""

    if not isinstance(name, str) or not USER_NAME.fullmatch(name):
        raise UserTableError(f"{name!r} is not a valid {what} name: use 1-64 lowercase letters, digits, '_' or '-', "
                             "starting with a letter (it becomes a file name in the data home)")
    if name in _mapping_datasets() or name in list_label_sets():
        raise UserTableError(f"{name!r} is the name of a packaged dataset or label set; choose another {what} name")
    return name


def _user_vocabulary(data: Any, where: str, sources: Mapping[str, str]) -> Any:
    """The user's label set from its JSON, by the packaged vocabularies' rules."""

    if not isinstance(data, dict):
        raise _user_fail(where, f"a vocabulary is a JSON object, found {type(data).__name__}",
                    "use the schema of nucdata/labels/vocabularies/*.json")
    name = data.get("name")
    try:
        check_user_name(name, "label-set")
    except UserTableError as exc:
        raise _user_fail(where, f"'name': {exc}", "rename the vocabulary") from None
    classes_data = data.get("classes")
    if not isinstance(classes_data, list) or not classes_data:
        raise _user_fail(where, "'classes' must be a non-empty list", "list the classes with id, name, colour, description")
    classes = []
    for i, c in enumerate(classes_data):
        at = f"{where}: classes[{i}]"
        if not isinstance(c, dict):
            raise _user_fail(at, "not an object", "give id, name, colour and description")
        cid, cname, colour = c.get("id"), c.get("name"), c.get("colour", c.get("color"))
        if cid != i:
            raise _user_fail(at, f"id {cid!r}: class ids must be 0..{len(classes_data) - 1} in order",
                        "number the classes from 0 in the order listed")
        if not isinstance(cname, str) or not cname.strip():
            raise _user_fail(at, "'name' must be a non-empty string", "name the class")
        if cname.lower() == OUTSIDE_NAME:
            raise _user_fail(at, f"{OUTSIDE_NAME!r} is reserved for the outside candidate", "rename that class")
        if not isinstance(colour, str) or not re.fullmatch(r"#[0-9a-fA-F]{6}", colour):
            raise _user_fail(at, f"'colour' {colour!r} is not #rrggbb", "give a colour such as \"#ff0000\"")
        classes.append(LabelClass(i, cname, colour, str(c.get("description", ""))))
    if len({c.name.lower() for c in classes}) != len(classes):
        raise _user_fail(where, "two classes share a name", "give every class its own name")
    exhaustive = data.get("exhaustive")
    if not isinstance(exhaustive, bool):
        raise _user_fail(where, "'exhaustive' must be true or false",
                    "say whether the classes cover every nucleus (true: no 'outside' rows into it)")
    source = str(data.get("source", "user"))
    if source not in sources:
        raise _user_fail(where, f"'source' {source!r} is not a citation key ({', '.join(sources)})",
                    "cite 'user' or add the key to the mapping's \"sources\"")
    return LabelSet(name, str(data.get("version", "1")), str(data.get("description", "")), tuple(classes),
                    exhaustive, source)


def _user_native(mapping: dict | None, vocabulary: Any, found: Sequence[tuple[int, str]] | None,
            where: str) -> tuple[tuple[int, str, str], ...]:
    if mapping is not None and "native_classes" in mapping:
        rows = mapping["native_classes"]
        if not isinstance(rows, list):
            raise _user_fail(where, "'native_classes' must be a list", "list {code, name, description} per class")
        out = []
        for i, c in enumerate(rows):
            at = f"{where}: native_classes[{i}]"
            code, name = (c.get("code"), c.get("name")) if isinstance(c, dict) else (None, None)
            if not isinstance(code, int) or isinstance(code, bool) or not isinstance(name, str) or not name.strip():
                raise _user_fail(at, "needs an integer 'code' and a non-empty 'name'", "give every native class both")
            if code < 0:
                raise _user_fail(at, f"code {code} is negative (-1 means no label)", "use codes 0 and above")
            out.append((code, name, str(c.get("description", ""))))
        if len({c for c, _, _ in out}) != len(out) or len({n.lower() for _, n, _ in out}) != len(out):
            raise _user_fail(where, "two native classes share a code or a name", "give each class its own code and name")
        return tuple(out)
    if vocabulary is not None:
        return tuple((c.id, c.name, c.description) for c in vocabulary)
    return tuple((int(code), str(name), "Class as named in the annotation files.") for code, name in (found or ()))


def build_user_tables(dataset: str, *, vocabulary: dict | None = None, mapping: dict | None = None,
                      found: Sequence[tuple[int, str]] | None = None, vocabulary_file: str = "the vocabulary",
                      mapping_file: str = "the mapping", folder: Path | None = None) -> UserTables:
    """Validate a user's vocabulary and mapping and complete them (module docstring).

    Parameters
    ----------
    dataset
        The user dataset's name.
    vocabulary, mapping
        The parsed JSON files (either may be ``None``).
    found
        ``(code, name)`` of the classes found in the annotation files, the native
        vocabulary when neither file gives one.
    vocabulary_file, mapping_file
        How the files are named in errors.
    folder
        Where the tables live (recorded on the result).

    Raises
    ------
    UserTableError
        A rule broken; the message names the file, the row and the fix.
    """

    check_user_name(dataset)
    if mapping is not None:
        if not isinstance(mapping, dict):
            raise _user_fail(mapping_file, f"a mapping is a JSON object, found {type(mapping).__name__}",
                        "use the schema of nucdata/labels/mappings/<dataset>.json")
        if mapping.get("dataset") not in (None, dataset):
            raise _user_fail(mapping_file, f"'dataset' is {mapping['dataset']!r}, not {dataset!r}",
                        f"set \"dataset\": \"{dataset}\" or leave it out")
    extra = mapping.get("sources", {}) if mapping else {}
    if not isinstance(extra, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        raise _user_fail(mapping_file, "'sources' must map citation keys to citations", "write {\"key\": \"citation\"}")
    sources = {**USER_SOURCES, **{k: v for k, v in extra.items()}}
    known = {**table_sources(), **sources}
    vocab = _user_vocabulary(vocabulary, vocabulary_file, known) if vocabulary is not None else None
    native = _user_native(mapping, vocab, found, mapping_file)
    names = {code: name for code, name, _ in native}
    given = (mapping or {}).get("targets", {})
    if not isinstance(given, dict):
        raise _user_fail(mapping_file, "'targets' must map label sets to lists of rows", "write {\"pannuke\": [...]}")
    targets: dict[str, list[dict[str, Any]]] = {}
    packaged = list_label_sets()
    for target, rows in given.items():
        if vocab is not None and target == vocab.name:
            target_set = vocab
        elif target in packaged:
            target_set = label_set(target)
        else:
            raise _user_fail(f"{mapping_file}: targets.{target}", "not a label set",
                        f"use one of {', '.join(packaged + ([vocab.name] if vocab else []))}")
        if not isinstance(rows, list):
            raise _user_fail(f"{mapping_file}: targets.{target}", "must be a list of rows", "one row per native class")
        try:
            parse_rows(f"{mapping_file} -> {target}", target_set, names, rows, sources=known)
        except UserTableError:
            raise
        except LabelTableError as exc:
            raise UserTableError(f"{exc}. Fix the row (docs/label-sets.md gives the rules), or leave the table out "
                                 f"(every native class is then 'unknown' under {target}).") from None
        targets[target] = [dict(r) for r in rows]
    for target in packaged:
        if target not in targets:
            targets[target] = [{"native": code, "kind": "unknown", "classes": [], "sources": ["user"],
                                "reason": f"No table into {target} was given for this user dataset: no information."}
                               for code, _, _ in native]
    if vocab is not None and vocab.name not in targets:
        rows = []
        for code, name, _ in native:
            try:
                cls = vocab.index(name)
            except Exception:  # noqa: BLE001 - UnknownClassError: said below with the fix
                raise _user_fail(mapping_file, f"native class {code} {name!r} is not a class of the vocabulary "
                            f"{vocab.name!r} ({', '.join(vocab.names)})",
                                 f"name the native classes as the vocabulary does, or give a targets.{vocab.name} "
                                 "table") from None
            rows.append({"native": code, "kind": "exact", "classes": [vocab[cls].name], "sources": ["user"],
                         "reason": "Own label set."})
        targets[vocab.name] = rows
    accepted_data = (mapping or {}).get("accepted", [])
    if not isinstance(accepted_data, list) or not all(
            isinstance(a, dict) and isinstance(a.get("key"), str) and str(a.get("reason", "")).strip()
            for a in accepted_data):
        raise _user_fail(mapping_file, "'accepted' must be a list of {\"key\", \"reason\"}",
                    "give each accepted finding its key (as the checker prints it) and a reason")
    return UserTables(dataset, native, targets, vocab, sources, {a["key"]: str(a["reason"]) for a in accepted_data},
                      str((mapping or {}).get("version", "1")), folder)


def write_user_tables(tables: UserTables, folder: str | os.PathLike[str]) -> UserTables:
    """Write a user dataset's tables into ``folder`` (atomically, each file) and register the folder."""
    folder = Path(folder)
    mapping_path, vocab_path = user_table_paths(tables.dataset, folder,
                                                tables.vocabulary.name if tables.vocabulary is not None else None)
    if vocab_path is not None:
        v = tables.vocabulary
        atomic_write_json(vocab_path, {"name": v.name, "version": v.version, "description": v.description,
                                       "exhaustive": v.exhaustive, "source": v.source,
                                       "classes": [{"id": c.id, "name": c.name, "colour": c.colour,
                                                    "description": c.description} for c in v]})
    atomic_write_json(mapping_path, tables.to_json())
    use_user_tables(folder)
    return load_user_tables(tables.dataset, folder)


def load_user_tables(dataset: str, folder: str | os.PathLike[str]) -> UserTables:
    """Read and validate a user dataset's stored tables from ``folder`` (cached by file stamps)."""
    folder = Path(folder)
    mapping_path, _ = user_table_paths(dataset, folder)
    stat = mapping_path.stat()
    key = (str(mapping_path), dataset)
    data = read_table_file(mapping_path)
    vocab_name = data.get("vocabulary") if isinstance(data, dict) else None
    vocab_path = user_table_paths(dataset, folder, vocab_name)[1] if vocab_name else None
    stamp = (stat.st_mtime_ns, stat.st_size + (vocab_path.stat().st_mtime_ns if vocab_path and vocab_path.is_file()
                                               else 0))
    cached = _loaded_user.get(key)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    vocabulary = read_table_file(vocab_path) if vocab_path is not None else None
    tables = build_user_tables(dataset, vocabulary=vocabulary, mapping=data, vocabulary_file=str(vocab_path),
                               mapping_file=str(mapping_path), folder=folder)
    _loaded_user[key] = (stamp, tables)
    return tables




def find_user_tables(dataset: str) -> UserTables | None:
    """The stored tables of user dataset ``dataset`` in the registered folders, or ``None``."""
    if not isinstance(dataset, str) or not USER_NAME.fullmatch(dataset):
        return None
    for folder in search_folders():
        if (folder / f"{dataset}{MAPPING_SUFFIX}").is_file():
            return load_user_tables(dataset, folder)
    return None


def find_user_vocabulary(name: str) -> Any:
    """The user label set ``name`` stored in a registered folder, or ``None``."""
    if not isinstance(name, str) or not USER_NAME.fullmatch(name):
        return None
    for folder in search_folders():
        path = folder / f"{name}{VOCABULARY_SUFFIX}"
        if path.is_file():

            return _user_vocabulary(read_table_file(path), str(path), {**table_sources(), **USER_SOURCES,
                                                        **_declared_sources(folder)})
    return None


def _declared_sources(folder: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for path in sorted(folder.glob(f"*{MAPPING_SUFFIX}")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("sources"), dict):
            out.update({str(k): str(v) for k, v in data["sources"].items()})
    return out


def _use_tables_beside(store: Any) -> None:
    """A user dataset's store (``<home>/stores/<name>/<version>``): look for its tables in that home."""
    dataset = getattr(store, "dataset", None)
    path = getattr(store, "path", None)
    if not isinstance(dataset, str) or path is None or dataset in _mapping_datasets():
        return
    folder = Path(path)
    if folder.parent.name == dataset and folder.parent.parent.name == "stores":
        registry = folder.parent.parent.parent / "registry"
        if (registry / f"{dataset}.mapping.json").is_file():
            use_user_tables(registry)


def user_mapping(tables: UserTables, target: str) -> LabelMapping:
    """The table from a user dataset's native codes into ``target`` (its stored rows)."""
    target_set = label_set(target)
    rows_data = tables.targets.get(target_set.name)
    if rows_data is None:
        raise UnknownLabelSetError(f"{target} (no table from {tables.dataset}; tables exist for: "
                                   f"{', '.join(sorted(tables.targets))})", sorted(tables.targets))
    where = f"{tables.folder / (tables.dataset + '.mapping.json') if tables.folder else tables.dataset} -> {target_set.name}"
    rows = parse_rows(where, target_set, tables.names, rows_data, sources={**table_sources(), **tables.sources})
    return LabelMapping(tables.dataset, target_set, rows, "dataset", tables.version)


def check_user_tables(tables: UserTables) -> CheckReport:
    """Check a user dataset's table against the packaged tables, as :func:`check_tables` checks ours.

    The dataset's native classes become a set of their own; every direct row into a
    packaged set B is compared with every path through a third set C (the dataset's row
    into C, then C's table into B) and reported when the two share no class. Findings
    the user's mapping lists under ``accepted`` pass, with their reason. (Packaged sets
    have no tables into a user's set, so there is no reverse to compare.)
    """
    packaged = {n: label_set(n) for n in list_label_sets()}
    classes = tuple(LabelClass(i, name, "#000000", desc) for i, (_code, name, desc) in enumerate(tables.native))
    own = LabelSet(tables.dataset, tables.version, "user dataset", classes, True, "user")
    sets = {**packaged, tables.dataset: own}
    index = {code: i for i, (code, _, _) in enumerate(tables.native)}
    claims: Claims = {a: {b: _claims(_packaged_mapping(SET_PREFIX + a, b), None) for b in packaged if b != a}
                      for a in packaged}
    claims[tables.dataset] = {}
    for b in packaged:
        table = user_mapping(tables, b)
        claims[tables.dataset][b] = {index[c]: v for c, v in _claims(table, None).items()}
    findings = [f for f in find_inconsistencies(sets, claims, asymmetries=False)
                if f.key.startswith(f"{tables.dataset}>")]
    return CheckReport(sorted(findings, key=lambda f: (f.kind, f.key)), dict(tables.accepted))


# -- consistency checker --------------------------------------------------------------

_OUT = -1  # "outside" in a claim set


@dataclass(frozen=True)
class Finding:
    """One inconsistency between tables: ``contradiction`` (a direct row and a path
    through a third set share no class) or ``asymmetry`` (A→B allows a pairing B→A rules out)."""

    kind: str
    key: str
    message: str


@dataclass
class CheckReport:
    """What :func:`check_tables` found, and which findings the data accepts (with reasons)."""

    findings: list[Finding]
    accepted: dict[str, str] = field(default_factory=dict)

    @property
    def unaccepted(self) -> list[Finding]:
        return [f for f in self.findings if f.key not in self.accepted]

    @property
    def stale(self) -> list[str]:
        """Accepted keys nothing reports any more (remove them from _tables.json)."""
        found = {f.key for f in self.findings}
        return sorted(k for k in self.accepted if k not in found)

    @property
    def ok(self) -> bool:
        return not self.unaccepted and not self.stale

    def format(self) -> str:
        """Human-readable report."""
        lines = [f"label-set tables v{table_version()}: {len(self.findings)} findings, "
                 f"{len(self.findings) - len(self.unaccepted)} accepted, {len(self.unaccepted)} not accepted"]
        for f in self.findings:
            if f.key in self.accepted:
                lines.append(f"  accepted  {f.key}\n    {f.message}\n    reason: {self.accepted[f.key]}")
        for f in self.unaccepted:
            lines.append(f"  {f.kind.upper()}  {f.key}\n    {f.message}")
        for k in self.stale:
            lines.append(f"  STALE  {k}: accepted in _tables.json but no longer reported; remove it")
        lines.append("OK" if self.ok else "FAILED: fix the rows or accept the findings with a reason in "
                     "nucdata/labels/mappings/_tables.json ('accepted')")
        return "\n".join(lines)


Claims = dict[str, dict[str, dict[int, frozenset[int] | None]]]


def _claims(m: LabelMapping, tissue: str | None) -> dict[int, frozenset[int] | None]:
    out: dict[int, frozenset[int] | None] = {}
    for code in sorted({r.native for r in m}):
        r = m.row(code, tissue)
        if r.kind == "unknown":
            out[code] = None
        elif r.kind == "outside":
            out[code] = frozenset({_OUT})
        else:
            out[code] = frozenset(_OUT if c == OUTSIDE_NAME else m.target.index(c) for c in r.classes)
    return out


def find_inconsistencies(
    sets: dict[str, LabelSet], claims: Claims, *, asymmetries: bool = True
) -> list[Finding]:
    """Contradictions (A→B against A→C→B) and asymmetries (A→B against B→A) in ``claims``.

    ``claims[A][B][a]`` is the set of B class ids (and -1 for outside) that class ``a``
    of A may be, or ``None`` for no information. A path through C is vacuous (never
    reported) when it passes through "outside" or an unknown row; a direct row that is
    unknown is never contradicted.
    """
    def names(s: str, ids: Iterable[int]) -> str:
        return "{" + ", ".join(OUTSIDE_NAME if i == _OUT else sets[s].names[i] for i in sorted(ids)) + "}"

    findings: list[Finding] = []
    order = sorted(sets)
    for a_set in order:
        for b_set in order:
            if b_set == a_set or b_set not in claims.get(a_set, {}):
                continue
            b = sets[b_set]
            universe = frozenset(range(len(b))) | (frozenset() if b.exhaustive else frozenset({_OUT}))
            for a, direct in claims[a_set][b_set].items():
                if direct is None:
                    continue
                for c_set in order:
                    if c_set in (a_set, b_set) or c_set not in claims[a_set] or b_set not in claims.get(c_set, {}):
                        continue
                    via = claims[a_set][c_set].get(a)
                    if via is None:
                        continue
                    composed: set[int] = set()
                    for c in via:
                        step = None if c == _OUT else claims[c_set][b_set].get(c)
                        if step is None:
                            composed = set(universe)
                            break
                        composed |= step
                    if composed >= universe or direct & composed:
                        continue
                    findings.append(Finding(
                        "contradiction", f"{a_set}>{c_set}>{b_set}:{sets[a_set].names[a]}",
                        f"{a_set}:{sets[a_set].names[a]} -> {b_set} says {names(b_set, direct)}, but via {c_set} "
                        f"{names(c_set, via)} it is {names(b_set, composed)}",
                    ))
            if not asymmetries or a_set not in claims.get(b_set, {}):
                continue
            for a, forward in claims[a_set][b_set].items():
                if forward is None:
                    continue
                for bid in sorted(forward - {_OUT}):
                    back = claims[b_set][a_set].get(bid)
                    if back is None or a in back:
                        continue
                    findings.append(Finding(
                        "asymmetry", f"{a_set}>{b_set}:{sets[a_set].names[a]}|{b.names[bid]}",
                        f"{a_set}:{sets[a_set].names[a]} -> {b_set} allows {b.names[bid]}, but "
                        f"{b_set}:{b.names[bid]} -> {a_set} is {names(a_set, back)}",
                    ))
    return findings


def check_tables() -> CheckReport:
    """Check every label set's tables against each other (``nucdata label-sets --check``).

    Every table between two label sets is read (dataset tables through their own
    label set's ids), without a tissue and then under each tissue a conditional row
    names; asymmetries are checked without a tissue only (a tissue-conditional row
    narrows one direction with knowledge the other direction does not have, unless
    the finding is also reported). Findings listed under ``accepted`` in
    ``nucdata/labels/mappings/_tables.json`` pass, with their reason; accepted keys that
    nothing reports make the check fail too, so the list stays true.
    """
    sets = {n: label_set(n) for n in list_label_sets()}
    tables = {a: {b: mapping(SET_PREFIX + a, b) for b in sets if b != a} for a in sets}
    tissues = sorted({t for per in tables.values() for m in per.values() for t in m.tissues})
    findings: dict[str, Finding] = {}
    for tissue in [None, *tissues]:
        claims = {a: {b: _claims(m, tissue) for b, m in per.items()} for a, per in tables.items()}
        for f in find_inconsistencies(sets, claims, asymmetries=tissue is None):
            if f.key not in findings:
                shown = f if tissue is None else Finding(f.kind, f.key, f"{f.message} (tissue {tissue})")
                findings[f.key] = shown
    accepted = {a["key"]: a["reason"] for a in _meta().get("accepted", [])}
    return CheckReport(sorted(findings.values(), key=lambda f: (f.kind, f.key)), accepted)


# -- documentation --------------------------------------------------------------------

def _md(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown() -> str:
    """docs/label-sets.md, generated from the packaged data."""
    meta = _meta()
    out = [
        "# Label sets and mapping tables",
        "",
        "Generated from `nucdata/labels/` by `nucdata.labels.render_markdown()`; do not edit by hand.",
        f"Tables version **{table_version()}** (recorded in every store's `manifest.json` as `label_tables`).",
        "",
        "Under a label set of K classes every nucleus gets `label` (class id; -1 missing: ambiguous,",
        "unknown or unlabelled; -2 certainly outside the set) and `candidates`, a bitmask whose bit",
        "`k < K` is class `k` and whose bit `K` (`LabelSet.outside_bit`) means \"possibly none of this",
        "set's classes\". Row kinds: `exact` (label = the class, candidates = its bit), `ambiguous`",
        "(label -1, candidates = the listed classes, plus the outside bit where `outside` is listed),",
        "`outside` (label -2, candidates = the outside bit) and `unknown` (label -1, candidates 0).",
        "Only sets that are not exhaustive have an outside candidate. A row with a tissue condition",
        "replaces the unconditional row for nuclei of those tissues (`translate(..., tissue=...)`;",
        "`load()` passes each image's stored tissue).",
        "The four label sets of the merged dataset are " + ", ".join(f"`{s}`" for s in MERGED_LABEL_SETS) + ".",
        "Predictions made in a label set's vocabulary translate with `mapping(\"set:<name>\", target)`",
        "(or the bare name for `consep4`, `nucls_main`, `nucls_super`).",
        "",
        "## Sources",
        "",
        "Every row cites the definitions it rests on by key:",
        "",
        "| key | source |",
        "|---|---|",
    ]
    out += [f"| `{k}` | {_md(v)} |" for k, v in meta["sources"].items()]
    out += ["", "## Conventions", ""]
    out += [f"- {_md(c)}" for c in meta["conventions"]]
    report = check_tables()
    out += ["", "## Consistency check", "",
            "`nucdata label-sets --check` compares every direct table A→B with every path A→C→B",
            "(a contradiction: the two share no class) and with the reverse table B→A (an asymmetry:",
            "A→B allows a class whose B→A row excludes A's class). Paths through `outside` or an",
            "`unknown` row say nothing and are skipped. Accepted findings, each with its reason:", ""]
    if report.findings:
        out += ["| finding | what | why it is accepted |", "|---|---|---|"]
        out += [f"| `{f.key}` | {_md(f.message)} | {_md(report.accepted.get(f.key, '**not accepted**'))} |"
                for f in report.findings]
    else:
        out.append("None: every table agrees with every path and with its reverse.")
    out += ["", "## Vocabularies", ""]
    for name in list_label_sets():
        ls = label_set(name)
        cover = ("exhaustive (no outside candidate)" if ls.exhaustive
                 else f"not exhaustive: candidate bit {len(ls)} is `outside`")
        out += [f"### `{ls.name}` (version {ls.version})", "", f"{ls.description} Converter: `{ls.source}`; {cover}.", "",
                "| id | class | colour | description |", "|---|---|---|---|"]
        out += [f"| {c.id} | {c.name} | `{c.colour}` | {c.description} |" for c in ls]
        out.append("")

    def table(title: str, m: LabelMapping) -> list[str]:
        lines = [f"#### {title}", "", "| source class | kind | target classes | tissue | reason | sources |",
                 "|---|---|---|---|---|---|"]
        for r in m:
            classes = ", ".join(r.classes) if r.classes else "—"
            when = ", ".join(r.tissues) if r.tissues else "any"
            lines.append(f"| {r.native} {r.native_name} | {r.kind} | {classes} | {when} | {_md(r.reason)} | "
                         f"{', '.join(f'`{s}`' for s in r.sources)} |")
        return [*lines, ""]

    out += ["## Mapping tables from datasets", ""]
    for ds in _mapping_datasets():
        vocab = native_vocabulary(ds)
        out += [f"### {ds}", ""]
        if not vocab:
            out += ["No native classes: every nucleus is `unknown` (label -1, candidates 0) under every label set.", ""]
            continue
        out += ["Native classes: " + ", ".join(f"{code} {name}" for code, name, _ in vocab) + ".", ""]
        targets = _data("mappings", ds)["targets"]
        for target in sorted(targets, key=lambda t: (t not in MERGED_LABEL_SETS, t)):
            out += table(f"{ds} → `{target}`", mapping(ds, target))
    out += ["## Mapping tables from label-set vocabularies", "",
            "For `pannuke`, `consep`, `monusac` and `nucls` these are the dataset tables above with",
            "native codes turned into class ids (`set:<name>`); the others follow.", ""]
    for name in _set_tables():
        out += [f"### {name}", ""]
        for target in sorted(_data("mappings/sets", name)["targets"], key=lambda t: (t not in MERGED_LABEL_SETS, t)):
            out += table(f"{name} → `{target}`", mapping(name, target))
    return "\n".join(out).rstrip() + "\n"
