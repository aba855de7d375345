"""Label sets and the mapping tables between vocabularies (docs/label-sets.md).

Packaged data, versioned:

* ``nucdata/data/label_sets/<name>.json`` — one vocabulary: classes with contiguous
  ids ``0..n-1`` (they index softmax heads and candidate bitmasks), name, colour and
  a one-line description.
* ``nucdata/data/mappings/<dataset>.json`` — a dataset's native vocabulary (codes
  exactly as its files define them) and, for every target label set, one row per
  native class: ``exact`` (one class), ``ambiguous`` (a candidate set), ``outside``
  (no class of the target describes it) or ``unknown`` (no information), with a
  one-line reason.

Under a target label set each nucleus gets ``label`` (the class id; -1 missing, i.e.
ambiguous, unknown or unlabelled; -2 outside) and ``candidates`` (bitmask over the
target's class ids: the exact class, the ambiguous candidates, or 0 for no information).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np

from .errors import UnknownClassError, UnknownDatasetError, UnknownLabelSetError

MISSING = -1
OUTSIDE = -2
KINDS = ("exact", "ambiguous", "outside", "unknown")
MERGED_LABEL_SETS = ("pannuke", "nucls", "consep", "monusac")
#: the label set each labelled dataset's native vocabulary is
OWN_LABEL_SET = {"pannuke": "pannuke", "consep": "consep", "monusac": "monusac", "nucls": "nucls"}


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
    """A versioned vocabulary; iterate for its classes, index by id or name."""

    name: str
    version: str
    description: str
    classes: tuple[LabelClass, ...]

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
        """Class names whose bit is set in ``bitmask``."""
        return [c.name for c in self.classes if (int(bitmask) >> c.id) & 1]

    def __str__(self) -> str:
        width = max(len(c.name) for c in self.classes)
        lines = [f"label set {self.name!r} v{self.version}: {self.description}"]
        lines += [f"  {c.id:2d}  {c.name:{width}s}  {c.colour}  {c.description}" for c in self.classes]
        return "\n".join(lines)


@dataclass(frozen=True)
class MappingRow:
    """How one native class relates to one target label set."""

    native: int
    native_name: str
    kind: str
    classes: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Mapping:
    """The table from a dataset's native vocabulary into a label set."""

    source: str
    target: LabelSet
    rows: tuple[MappingRow, ...]

    def __iter__(self) -> Iterator[MappingRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def row(self, native: int) -> MappingRow:
        for r in self.rows:
            if r.native == native:
                return r
        raise UnknownClassError(str(native), f"{self.source} native codes", [str(r.native) for r in self.rows])

    def _tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        codes = np.array([r.native for r in self.rows], np.int64)
        labels = np.empty(len(self.rows), np.int64)
        candidates = np.zeros(len(self.rows), np.int64)
        for i, r in enumerate(self.rows):
            bits = 0
            for name in r.classes:
                bits |= 1 << self.target.index(name)
            candidates[i] = bits
            if r.kind == "exact":
                labels[i] = self.target.index(r.classes[0])
            elif r.kind == "outside":
                labels[i] = OUTSIDE
            else:
                labels[i] = MISSING
        order = np.argsort(codes)
        return codes[order], labels[order], candidates[order]

    def translate(self, native_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised: native codes (-1 = none) to ``(labels, candidates)`` int64 arrays.

        Raises
        ------
        UnknownClassError
            For a code that is neither -1 nor in the native vocabulary.
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
        return out_labels, out_candidates

    def __str__(self) -> str:
        lines = [f"mapping {self.source} -> {self.target.name} (v{self.target.version})"]
        for r in self.rows:
            target = ", ".join(r.classes) if r.classes else "-"
            lines.append(f"  {r.native:3d} {r.native_name:32s} {r.kind:9s} {target:40s} {r.reason}")
        return "\n".join(lines)


def _data(kind: str, name: str) -> dict:
    path = resources.files("nucdata") / "data" / kind / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8"))


def list_label_sets() -> list[str]:
    """Names of every packaged label set."""
    folder = resources.files("nucdata") / "data" / "label_sets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def _mapping_datasets() -> list[str]:
    folder = resources.files("nucdata") / "data" / "mappings"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


@cache
def label_set(name: str) -> LabelSet:
    """The packaged label set ``name``.

    Raises
    ------
    UnknownLabelSetError
        Listing the valid names.
    """
    key = name.strip().lower()
    if key not in list_label_sets():
        raise UnknownLabelSetError(name, list_label_sets())
    data = _data("label_sets", key)
    classes = tuple(LabelClass(c["id"], c["name"], c["colour"], c["description"]) for c in data["classes"])
    return LabelSet(data["name"], data["version"], data["description"], classes)


def native_vocabulary(dataset: str) -> list[tuple[int, str, str]]:
    """``(code, name, description)`` of each native class of ``dataset`` (empty if none)."""
    key = dataset.strip().lower()
    if key not in _mapping_datasets():
        raise UnknownDatasetError(dataset, _mapping_datasets())
    return [(c["code"], c["name"], c["description"]) for c in _data("mappings", key)["native_classes"]]


@cache
def mapping(source: str, target: str) -> Mapping:
    """The table from dataset ``source``'s native classes into label set ``target``."""
    key = source.strip().lower()
    if key not in _mapping_datasets():
        raise UnknownDatasetError(source, _mapping_datasets())
    target_set = label_set(target)
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
    rows = tuple(
        MappingRow(r["native"], names[r["native"]], r["kind"], tuple(r["classes"]), r["reason"])
        for r in rows_data
    )
    return Mapping(key, target_set, rows)


def translate(dataset: str, native_codes: np.ndarray, target: str) -> tuple[np.ndarray, np.ndarray]:
    """``mapping(dataset, target).translate(native_codes)``."""
    return mapping(dataset, target).translate(native_codes)


def render_markdown() -> str:
    """docs/label-sets.md, generated from the packaged data."""
    out = [
        "# Label sets and mapping tables",
        "",
        "Generated from `nucdata/data/` by `nucdata.labelsets.render_markdown()`; do not edit by hand.",
        "",
        "Under a label set every nucleus gets `label` (class id; -1 missing: ambiguous, unknown or",
        "unlabelled; -2 outside the set) and `candidates` (a bitmask over the set's class ids: the",
        "exact class, the candidate classes of an ambiguous row, or 0 when nothing is known).",
        "The four label sets of the merged dataset are " + ", ".join(f"`{s}`" for s in MERGED_LABEL_SETS) + ".",
        "",
        "## Vocabularies",
        "",
    ]
    for name in list_label_sets():
        ls = label_set(name)
        out += [f"### `{ls.name}` (version {ls.version})", "", ls.description, "",
                "| id | class | colour | description |", "|---|---|---|---|"]
        out += [f"| {c.id} | {c.name} | `{c.colour}` | {c.description} |" for c in ls]
        out.append("")
    out += ["## Mapping tables", ""]
    for ds in _mapping_datasets():
        vocab = native_vocabulary(ds)
        out += [f"### {ds}", ""]
        if not vocab:
            out += ["No native classes: every nucleus is `unknown` (label -1, candidates 0) under every label set.", ""]
            continue
        out += ["Native classes: " + ", ".join(f"{code} {name}" for code, name, _ in vocab) + ".", ""]
        targets = _data("mappings", ds)["targets"]
        for target in sorted(targets, key=lambda t: (t not in MERGED_LABEL_SETS, t)):
            out += [f"#### {ds} → `{target}`", "", "| native | kind | target classes | reason |", "|---|---|---|---|"]
            for r in mapping(ds, target):
                classes = ", ".join(r.classes) if r.classes else "—"
                out.append(f"| {r.native} {r.native_name} | {r.kind} | {classes} | {r.reason} |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"
