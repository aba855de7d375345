"""The merged dataset's format: one home for writing it, reading it and loading from it.

A merged output folder (what ``nucdata build-merged`` writes) holds::

    .nucdata-merged                 marker: this folder is a merged output we wrote
    <label_set>/<dataset>.pkl       the published format (below), plain Python types
    merged/<dataset>/<label_set>/   per-nucleus columns in store order (below)
    merged/<dataset>/merged.json    which store, which label sets, the source codes
    stores/<dataset>/               the dataset's store (hard links, or a copy), so the
                                    folder stands alone: move it, delete the data home,
                                    and ``nucdata.load(name, label_set=..., merged=DIR)``
                                    still works
    overlays/  model.pt  model.json  report.md  report.json

**The published pickle** ``<label_set>/<dataset>.pkl`` is the format of the authors'
released merged dataset: ``{image filename: [[centroid [x, y], label, probability,
ground truth], ...]}``.

- field 2 is the model's label and field 3 its **calibrated** probability
  (``nucdata_models.calibration``); they always belong together. Where the nucleus's own
  annotation maps to a *candidate set* in this label set (an ambiguous mapping row), the
  label is the model's most probable candidate and the probability is renormalised over
  the candidates. Where it maps *outside* the set, the label is -2 and the probability is
  that of the model's outside output (NaN when the model has none, as in ``--recipe paper``).
- field 4 is the nucleus's annotation, and only where its own dataset annotated it in
  this label set's vocabulary; -2 where that annotation maps outside the set; -1
  everywhere else. Labels derived through the mapping tables are not ground truth
  unless the output was built with ``--mapped-as-truth``.

**The merged columns** ``merged/<dataset>/<label_set>/<column>.npy``:
``label`` (int64, the merged label: annotation, mapped class, resolved candidate, -2
outside, or the prediction), ``probability`` (float32, the calibrated probability of
``label``, as field 3), ``source`` (int8, index into :data:`PROVENANCE`), ``predicted`` and
``predicted_probability`` (the model's own unrestricted prediction), ``annotation``
(field 4 of the pickle).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nucdata._util.atomic import atomic_write_bytes, atomic_write_json
from nucdata._util.codes import PROVENANCE
from nucdata._util.deprecation import moved_attributes
from nucdata._util.npy import npy_header
from nucdata._util.paths import check_name, child_path, name_problem
from nucdata.errors import (
    DatasetNotFoundError,
    InvalidArgumentError,
    MergedOutputError,
    MissingFilesError,
    SchemaVersionError,
)

__all__ = [
    "COLUMNS", "MARKER", "PROVENANCE", "MergedData", "MergedLabels", "is_merged_output", "link_store",
    "open_merged", "read_merged_labels", "write_merged_labels", "write_published_pickle",
]

#: Marker file of a merged output folder written by nucdata.
MARKER = ".nucdata-merged"
FORMAT_VERSION = 2
#: Where a merged label came from; ``source`` columns hold indices into this tuple.
#: The per-nucleus columns of one (dataset, label set), and their dtypes.
COLUMNS = {"label": np.int64, "probability": np.float32, "source": np.int8, "predicted": np.int64,
           "predicted_probability": np.float32, "annotation": np.int64}


# -- writing ---------------------------------------------------------------------------
def is_merged_output(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds a merged output's marker (so nucdata may replace it)."""
    return (Path(folder) / MARKER).is_file()


def check_format(folder: str | os.PathLike[str], required: bool = True) -> dict[str, Any]:
    """Read a merged output's marker and refuse one written by another format version.

    Parameters
    ----------
    folder
        The output folder.
    required
        Whether the marker must exist (``load(merged=)`` needs nucdata's output; a
        folder of pickles alone, such as the authors' release, has none).

    Raises
    ------
    SchemaVersionError
        For another ``format_version``; the message says to rebuild.
    MissingFilesError
        When ``required`` and the marker is absent or unreadable.
    """
    path = Path(folder) / MARKER
    if not path.is_file():
        if required:
            raise MissingFilesError(f"{path}: missing; {folder} is not a nucdata build-merged output "
                                    "(run `nucdata build-merged --out` into an empty folder).")
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MissingFilesError(f"{path}: unreadable ({type(exc).__name__}); rebuild the output with "
                                "`nucdata build-merged`.") from None
    version = info.get("format_version") if isinstance(info, dict) else None
    if version != FORMAT_VERSION:
        raise SchemaVersionError(f"{path}: a merged output of format version {version!r}; this nucdata reads "
                                 f"version {FORMAT_VERSION}. Rebuild it with `nucdata build-merged`.")
    return info


def write_marker(folder: str | os.PathLike[str], info: Mapping[str, Any]) -> None:
    """Write the marker that says ``folder`` is a merged output made by nucdata."""
    atomic_write_json(Path(folder) / MARKER, {"format_version": FORMAT_VERSION, **info})


def published_rows(centroids: np.ndarray, label: np.ndarray, probability: np.ndarray,
                   annotation: np.ndarray) -> list[list[Any]]:
    """Rows of the published format, in plain Python types."""
    return [[[float(x), float(y)], int(lab), float(p), int(gt)]
            for (x, y), lab, p, gt in zip(centroids.tolist(), label.tolist(), probability.tolist(),
                                          annotation.tolist(), strict=True)]


def write_published_pickle(path: str | os.PathLike[str], image_names: list[str], image_of: np.ndarray,
                           centroids: np.ndarray, label: np.ndarray, probability: np.ndarray,
                           annotation: np.ndarray) -> Path:
    """Write ``{image filename: [[centroid, label, probability, ground truth], ...]}`` atomically.

    Parameters
    ----------
    path
        The ``.pkl`` file.
    image_names
        Image names of the store (filenames get ``.png``, as in the released data).
    image_of, centroids
        Per nucleus: its image index and ``(x, y)``.
    label, probability, annotation
        Per nucleus: fields 2, 3 and 4 (see the module docstring).
    """
    table: dict[str, list] = {f"{name}.png": [] for name in image_names}
    order = np.argsort(image_of, kind="stable")
    bounds = np.searchsorted(image_of[order], np.arange(len(image_names) + 1))
    for i, name in enumerate(image_names):
        rows = order[bounds[i] : bounds[i + 1]]
        table[f"{name}.png"] = published_rows(centroids[rows], label[rows], probability[rows], annotation[rows])
    return atomic_write_bytes(path, pickle.dumps(table, protocol=4))


def write_merged_labels(folder: str | os.PathLike[str], dataset: str, label_set: str,
                        columns: Mapping[str, np.ndarray]) -> None:
    """Write one (dataset, label set)'s merged columns under ``folder/merged/<dataset>/<label_set>/``."""
    missing = set(COLUMNS) - set(columns)
    if missing:
        raise InvalidArgumentError(f"merged columns of {dataset}/{label_set} lack {', '.join(sorted(missing))}")
    merged = child_path(Path(folder) / "merged", dataset, source=folder, element="the dataset name")
    target = child_path(merged, label_set, source=folder, element="the label set name")
    target.mkdir(parents=True, exist_ok=True)
    for key, dtype in COLUMNS.items():
        np.save(target / f"{key}.npy", np.ascontiguousarray(columns[key], dtype=dtype))


def write_merged_info(folder: str | os.PathLike[str], dataset: str, info: Mapping[str, Any]) -> None:
    """Write ``merged/<dataset>/merged.json``: store identity, label sets, source codes."""
    atomic_write_json(child_path(Path(folder) / "merged", dataset, source=folder, element="the dataset name")
                      / "merged.json",
                      {"dataset": dataset, "sources": list(PROVENANCE), **info})


def link_store(store_path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Put a store's files at ``dest`` as hard links (a copy where linking fails).

    Store files are never modified once published (a rebuild writes a new folder), so a
    hard link is a safe, free copy. Crop banks (``crops/``) are caches and are left out.
    """
    import shutil

    source, dest = Path(store_path), Path(dest)
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if relative.parts[0] == "crops" or path.is_symlink() or not path.is_file():
            continue  # a link in a store is nothing nucdata wrote: never follow it into the output
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
    return dest


# -- checking ----------------------------------------------------------------------------
#: Label codes of a label set whose size is not known here are below this bound: candidate
#: masks are int64, so a label set has at most 62 classes (bits 0..61) and its outside bit.
LABEL_BOUND = 62
_PROBABILITY_OF = {"probability": "label", "predicted_probability": "predicted"}
_LABEL_COLUMNS = ("label", "predicted", "annotation")
_FIX = "rebuild the output with `nucdata build-merged`, or download it again from its source"
_SHOWN = 5  # problems of one kind listed before "... and N more"


def _fail(problems: list[str]) -> MergedOutputError:
    return MergedOutputError("\n".join(problems) if len(problems) < 2 else
                             f"{len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems))


def _rows(mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask)
    return f"{rows.size:,} row(s), first {rows[:_SHOWN].tolist()}"


def _bound(n_classes: int | None) -> int:
    return LABEL_BOUND if n_classes is None else int(n_classes)


def check_marker(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], list[str]]:
    """The marker's content and every problem of its schema (an empty list when it is sound).

    The marker must be a JSON object with ``format_version`` (this nucdata's), ``datasets``
    and ``label_sets`` (lists of plain names) and ``recipe`` (text).
    """
    path = Path(folder) / MARKER
    if not path.is_file():
        return {}, [f"{path}: missing; this is not a nucdata build-merged output. Fix: {_FIX}."]
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return {}, [f"{path}: not readable JSON ({type(exc).__name__}: {exc}). Fix: {_FIX}."]
    if not isinstance(info, dict):
        return {}, [f"{path}: a JSON {type(info).__name__}, not an object. Fix: {_FIX}."]
    problems = []
    if info.get("format_version") != FORMAT_VERSION:
        problems.append(f"{path}: format_version is {info.get('format_version')!r}; this nucdata reads version "
                        f"{FORMAT_VERSION}. Fix: rebuild it with `nucdata build-merged`.")
    for key in ("datasets", "label_sets"):
        value = info.get(key)
        if not isinstance(value, list) or not value:
            problems.append(f"{path}: {key!r} must be a non-empty list of names, found {value!r:.80}. Fix: {_FIX}.")
            info[key] = []
            continue
        for item in value:
            why = name_problem(item)
            if why:
                problems.append(f"{path}: {key} holds {item!r:.80}, not a plain name ({why}). Fix: {_FIX}.")
        info[key] = [v for v in value if name_problem(v) is None]
    if "recipe" in info and not isinstance(info["recipe"], str):
        problems.append(f"{path}: 'recipe' must be text, found {type(info['recipe']).__name__}. Fix: {_FIX}.")
    if "classes" in info:  # per label set its number of classes (the label range check of every pickle)
        classes = info["classes"]
        good = isinstance(classes, dict) and all(
            k in info["label_sets"] and isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= LABEL_BOUND
            for k, v in classes.items())
        if not good:
            problems.append(f"{path}: 'classes' must map label sets of 'label_sets' to their number of classes "
                            f"(1 to {LABEL_BOUND}), found {classes!r:.80}. Fix: {_FIX}.")
            info["classes"] = {}
    return info, problems


def _info_problems(info: Any, path: Path, dataset: str) -> list[str]:
    """Schema of ``merged/<dataset>/merged.json`` (an object; keys and their types)."""
    if not isinstance(info, dict):
        return [f"{path}: a JSON {type(info).__name__}, not an object. Fix: {_FIX}."]
    problems = []
    if info.get("dataset") != dataset:
        problems.append(f"{path}: 'dataset' is {info.get('dataset')!r:.80}, but the file is that of {dataset!r}. "
                        f"Fix: {_FIX}.")
    if info.get("sources") != list(PROVENANCE):
        problems.append(f"{path}: 'sources' is {info.get('sources')!r:.120}, not this nucdata's {list(PROVENANCE)} "
                        f"(the source codes would mean other provenances). Fix: {_FIX}.")
    sets = info.get("label_sets")
    if not (isinstance(sets, list) and sets and all(name_problem(s) is None for s in sets)):
        problems.append(f"{path}: 'label_sets' must be a non-empty list of plain names, found {sets!r:.120}. "
                        f"Fix: {_FIX}.")
    nuclei = info.get("nuclei")
    if not (isinstance(nuclei, int) and not isinstance(nuclei, bool) and nuclei >= 0):
        problems.append(f"{path}: 'nuclei' must be a count, found {nuclei!r:.80}. Fix: {_FIX}.")
    if not isinstance(info.get("mapped_as_truth", False), bool):
        problems.append(f"{path}: 'mapped_as_truth' must be true or false. Fix: {_FIX}.")
    for key in ("store_created", "converter_version", "label_tables"):
        if info.get(key) is not None and not isinstance(info[key], str):
            problems.append(f"{path}: {key!r} must be text or null, found {type(info[key]).__name__}. Fix: {_FIX}.")
    return problems


def read_merged_info(source: str | os.PathLike[str], dataset: str) -> dict[str, Any]:
    """``merged/<dataset>/merged.json`` of an output, checked against its schema.

    Raises
    ------
    DatasetNotFoundError
        When the output has no such dataset; the message lists what it has.
    MergedOutputError
        When the file is not JSON, not an object, or a key is missing or of the wrong type.
    """
    root = Path(source)
    check_name(dataset, source=root, element="the dataset name", fix="pass a dataset name such as 'pannuke'")
    path = root / "merged" / dataset / "merged.json"
    if not path.is_file():
        have = sorted(p.parent.name for p in root.glob("merged/*/merged.json"))
        raise DatasetNotFoundError(
            f"{path}: {dataset} is not part of the merged output {root} "
            f"(it has: {', '.join(have) or 'nothing; is this a build-merged output folder?'}).")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MergedOutputError(f"{path}: not readable JSON ({type(exc).__name__}: {exc}). Fix: {_FIX}.") from None
    problems = _info_problems(info, path, dataset)
    if problems:
        raise _fail(problems)
    return info


def _store_nuclei(store_dir: Path) -> tuple[int | None, list[str]]:
    """The nuclei of the output's copy of the store, from a column header (no data read)."""
    path = store_dir / "nuclei" / "image.npy"
    if not path.is_file():
        return None, [f"{path}: missing; the output's copy of the store is incomplete. Fix: {_FIX}."]
    try:
        shape, _, _ = npy_header(path)
    except (OSError, ValueError, SyntaxError) as exc:
        return None, [f"{path}: not a readable .npy header ({type(exc).__name__}). Fix: {_FIX}."]
    if len(shape) != 1:
        return None, [f"{path}: shape {shape}, not one row per nucleus. Fix: {_FIX}."]
    return int(shape[0]), []


def _load_column(path: Path, dtype: np.dtype, n_nuclei: int | None) -> tuple[np.ndarray | None, list[str]]:
    """A merged column memory-mapped after its header, dtype, shape and size were checked."""
    if not path.is_file():
        return None, [f"{path}: merged column missing; the output is incomplete. Fix: {_FIX}."]
    try:
        shape, found, header = npy_header(path)
    except (OSError, ValueError, SyntaxError, TypeError) as exc:
        return None, [f"{path}: not a readable .npy file ({type(exc).__name__}: {exc}). Fix: {_FIX}."]
    problems = []
    if found != np.dtype(dtype):
        problems.append(f"{path}: dtype {found}, the format's is {np.dtype(dtype)}. Fix: {_FIX}.")
    if len(shape) != 1:
        problems.append(f"{path}: shape {shape}; a merged column has one value per nucleus. Fix: {_FIX}.")
    elif n_nuclei is not None and shape[0] != n_nuclei:
        problems.append(f"{path}: {shape[0]:,} rows, but the store has {n_nuclei:,} nuclei (the labels would "
                        f"belong to other nuclei). Fix: {_FIX}.")
    if problems:
        return None, problems
    size = path.stat().st_size
    want = header + int(np.prod(shape, dtype=np.int64)) * found.itemsize
    if size != want:
        return None, [f"{path}: {size:,} bytes, its header {shape} {found} needs {want:,} (truncated or damaged). "
                      f"Fix: {_FIX}."]
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False), []
    except (OSError, ValueError) as exc:
        return None, [f"{path}: cannot be mapped ({type(exc).__name__}: {exc}). Fix: {_FIX}."]


def check_columns(columns: Mapping[str, np.ndarray], n_classes: int | None, where: str | os.PathLike[str]) -> list[str]:
    """Value checks of one (dataset, label set)'s merged columns; every problem found.

    ``label``, ``predicted`` and ``annotation`` hold codes -2..K-1 (K the label set's
    classes; :data:`LABEL_BOUND` when not given); ``source`` indexes :data:`PROVENANCE`,
    and ``outside`` goes with label -2; probabilities are finite in [0, 1], or NaN
    where their label is -2 (a model without an outside output).
    """
    bound = _bound(n_classes)
    problems = []
    folder = Path(where)
    for key in _LABEL_COLUMNS:
        if key not in columns:
            continue
        values = np.asarray(columns[key])
        bad = (values < -2) | (values >= bound)
        if bad.any():
            example = int(values[np.flatnonzero(bad)[0]])
            problems.append(f"{folder / (key + '.npy')}: codes outside -2..{bound - 1} in {_rows(bad)} (e.g. "
                            f"{example}){'' if n_classes else ' (the bound when the label set is unknown)'}. "
                            f"Fix: {_FIX}.")
    if "source" in columns:
        source = np.asarray(columns["source"]).astype(np.int64)
        bad = (source < 0) | (source >= len(PROVENANCE))
        if bad.any():
            problems.append(f"{folder / 'source.npy'}: provenance codes outside 0..{len(PROVENANCE) - 1} "
                            f"({', '.join(PROVENANCE)}) in {_rows(bad)} (e.g. {int(source[np.flatnonzero(bad)[0]])}). "
                            f"Fix: {_FIX}.")
        elif "label" in columns:
            wrong = (source == PROVENANCE.index("outside")) & (np.asarray(columns["label"]) != -2)
            if wrong.any():
                problems.append(f"{folder / 'source.npy'}: 'outside' nuclei whose label is not -2 in {_rows(wrong)}. "
                                f"Fix: {_FIX}.")
    for key, label_key in _PROBABILITY_OF.items():
        if key not in columns:
            continue
        prob = np.asarray(columns[key], np.float64)
        nan = np.isnan(prob)
        bad = ~nan & ~((prob >= 0) & (prob <= 1))
        if label_key in columns:
            bad |= nan & (np.asarray(columns[label_key]) != -2)
        if bad.any():
            problems.append(f"{folder / (key + '.npy')}: values outside [0, 1] (or NaN beside a label other than -2) "
                            f"in {_rows(bad)} (e.g. {prob[np.flatnonzero(bad)[0]]!r}). Fix: {_FIX}.")
    return problems


def merged_label_problems(source: str | os.PathLike[str], dataset: str, label_set: str,
                          n_classes: int | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
    """Columns of ``dataset`` under ``label_set`` and every problem of them (for ``verify --merged``)."""
    root = Path(source)
    folder = root / "merged" / dataset / label_set
    n_nuclei, problems = _store_nuclei(root / "stores" / dataset)
    columns: dict[str, np.ndarray] = {}
    for key, dtype in COLUMNS.items():
        column, found = _load_column(folder / f"{key}.npy", np.dtype(dtype), n_nuclei)
        problems += found
        if column is not None:
            columns[key] = column
    if n_nuclei is not None:  # lengths agree: the values can be checked side by side
        problems += check_columns(columns, n_classes, folder)
    return columns, problems


def read_merged_labels(source: str | os.PathLike[str], dataset: str, label_set: str,
                       n_classes: int | None = None) -> tuple[Path, MergedLabels]:
    """The store folder and merged columns of ``dataset`` under ``label_set`` in an output.

    Everything is checked before anything is returned: ``merged.json`` against its
    schema; every column's dtype, shape and size, its length against the output's copy
    of the store, and its values (:func:`check_columns`).

    Parameters
    ----------
    source
        The output folder.
    dataset, label_set
        What to read.
    n_classes
        The label set's number of classes (codes must be below it); without it, below
        :data:`LABEL_BOUND`.

    Raises
    ------
    DatasetNotFoundError
        When the output has no such dataset or label set; the message lists what it has.
    MergedOutputError
        For every disagreement found, all listed in one message; nothing misaligned is
        returned.
    """
    root = Path(source)
    info = read_merged_info(root, dataset)
    if label_set not in info["label_sets"]:
        raise DatasetNotFoundError(
            f"{root / 'merged' / dataset / 'merged.json'}: no {label_set!r} labels for {dataset}; this output has "
            f"{', '.join(info['label_sets'])}.")
    columns, problems = merged_label_problems(root, dataset, label_set, n_classes)
    n_nuclei, _ = _store_nuclei(root / "stores" / dataset)
    if n_nuclei is not None and info["nuclei"] != n_nuclei:
        problems.append(f"{root / 'merged' / dataset / 'merged.json'}: 'nuclei' is {info['nuclei']:,}, the output's "
                        f"store has {n_nuclei:,}. Fix: {_FIX}.")
    if problems:
        raise _fail(problems)
    return root / "stores" / dataset, MergedLabels(label_set, columns)


# -- reading ---------------------------------------------------------------------------
@dataclass
class MergedLabels:
    """One dataset's merged columns under one label set, in store order (memory-mapped)."""

    label_set: str
    columns: dict[str, np.ndarray]

    @property
    def label(self) -> np.ndarray:
        return self.columns["label"]


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _row_problem(row: Any, bound: int) -> str | None:
    """Why ``row`` is not ``[[x, y], label, probability, ground truth]`` of the published format."""
    if not isinstance(row, (list, tuple)) or len(row) != 4:
        return (f"a {type(row).__name__} of {len(row)} fields" if isinstance(row, (list, tuple))
                else f"a {type(row).__name__}") + ", not [[x, y], label, probability, ground truth]"
    centroid, label, prob, truth = row
    if isinstance(centroid, np.ndarray):
        if centroid.shape != (2,) or centroid.dtype.kind not in "iuf":
            return f"its centroid is an array of shape {centroid.shape} {centroid.dtype}, not [x, y]"
        centroid = centroid.tolist()
    if not (isinstance(centroid, (list, tuple)) and len(centroid) == 2 and all(_is_real(c) for c in centroid)):
        return f"its centroid is {centroid!r:.60}, not [x, y]"
    if not all(math.isfinite(c) for c in centroid):
        return f"its centroid {list(centroid)} is not finite"
    for name, value in (("label", label), ("ground truth", truth)):
        if not _is_int(value):
            return f"its {name} is a {type(value).__name__} ({value!r:.40}), not a whole number"
        if not -2 <= value < bound:
            return f"its {name} {value!r:.40} is outside -2..{bound - 1}"
    if not _is_real(prob):
        return f"its probability is a {type(prob).__name__}, not a number"
    if math.isnan(prob):
        if label != -2:
            return "its probability is NaN beside a label other than -2"
    elif not 0.0 <= prob <= 1.0:
        return f"its probability {prob!r:.40} is outside [0, 1]"
    return None


def published_table(raw: Any, path: str | os.PathLike[str], n_classes: int | None = None
                    ) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """Arrays per image of a published pickle's value, and every problem of its structure.

    Parameters
    ----------
    raw
        The unpickled value: ``{image filename: [[[x, y], label, probability, ground truth], ...]}``.
    path
        The pickle, named in the problems.
    n_classes
        The label set's classes (labels must be below it; :data:`LABEL_BOUND` when not given).
    """
    if not isinstance(raw, dict):
        return {}, [f"{path}: expected a dict of image filename -> nuclei, found a {type(raw).__name__}. Fix: {_FIX}."]
    bound = _bound(n_classes)
    problems: list[str] = []
    out = {}
    for image, nuclei in raw.items():
        if not isinstance(image, str):
            problems.append(f"{path}: a key is a {type(image).__name__} ({image!r:.60}), not an image file name. "
                            f"Fix: {_FIX}.")
            continue
        if not isinstance(nuclei, (list, tuple)):
            problems.append(f"{path}: {image!r:.80} maps to a {type(nuclei).__name__}, not a list of nuclei. "
                            f"Fix: {_FIX}.")
            continue
        bad = [(i, why) for i, row in enumerate(nuclei) if (why := _row_problem(row, bound)) is not None]
        if bad:
            i, why = bad[0]
            problems.append(f"{path}: {image!r:.80}: {len(bad):,} of {len(nuclei):,} nuclei are malformed; nucleus {i}: "
                            f"{why}. Fix: {_FIX}.")
            continue
        out[image] = {
            "centroid": np.array([[float(r[0][0]), float(r[0][1])] for r in nuclei], np.float64).reshape(-1, 2),
            "predicted": np.array([int(r[1]) for r in nuclei], np.int64),
            "probability": np.array([float(r[2]) for r in nuclei], np.float32),
            "ground_truth": np.array([int(r[3]) for r in nuclei], np.int64),
        }
    if len(problems) > _SHOWN:
        problems = [*problems[:_SHOWN], f"{path}: ... and {len(problems) - _SHOWN} more images."]
    return out, problems


class MergedData:
    """A merged dataset read from its pickles (nucdata's output or the authors' release).

    ``merged[label_set, dataset]`` is ``{image filename: arrays}`` with ``centroid``
    (K, 2), ``predicted`` (K,), ``probability`` (K,) and ``ground_truth`` (K,; -1 none,
    -2 outside the set). Pickles are read with nucdata's allow-list unpickler: a file
    that asks for anything beyond plain containers, numbers and numpy arrays is refused
    before any of it runs. Every row is checked (four fields; a finite centroid; labels
    whole numbers in -2..K-1; a probability in [0, 1], NaN only beside -2): a pickle
    that breaks the format is a :class:`~nucdata.errors.MergedOutputError`, never a
    partial or shifted table.

    Parameters
    ----------
    folder
        The output folder.
    classes
        Label set name -> its number of classes, for the label range check. nucdata's own
        output records them in its marker (``classes``), used where not given here; a
        label set known to neither (the authors' release) is checked against
        :data:`LABEL_BOUND`.
    """

    def __init__(self, folder: str | os.PathLike[str], classes: Mapping[str, int] | None = None):
        self.folder = Path(folder)
        recorded: dict[str, int] = {}
        info = check_format(self.folder, required=False)
        if info:  # nucdata's own output: its marker must follow the schema too
            marker, problems = check_marker(self.folder)
            if problems:
                raise _fail(problems)
            recorded = dict(marker.get("classes") or {})
        self.classes = {**recorded, **dict(classes or {})}
        self.files = {(p.parent.name, p.stem): p for p in sorted(self.folder.glob("*/*.pkl"))}
        if not self.files:
            raise MissingFilesError(f"{self.folder}: no <label_set>/<dataset>.pkl files; this is not a merged "
                                    "dataset folder.")

    def __repr__(self) -> str:
        return (f"MergedData({str(self.folder)!r}, label_sets=[{', '.join(self.label_sets)}], "
                f"datasets=[{', '.join(self.datasets)}], pickles={len(self.files)})")

    @property
    def label_sets(self) -> list[str]:
        """Label sets present."""
        return sorted({k[0] for k in self.files})

    @property
    def datasets(self) -> list[str]:
        """Datasets present."""
        return sorted({k[1] for k in self.files})

    def __getitem__(self, key: tuple[str, str]) -> dict[str, dict[str, np.ndarray]]:
        from nucdata._util.safe_pickle import load as safe_load

        if key not in self.files:
            raise DatasetNotFoundError(f"{self.folder}: no {key[0]}/{key[1]}.pkl; it has "
                                       + ", ".join(f"{a}/{b}" for a, b in self.files))
        table, problems = published_table(safe_load(self.files[key]), self.files[key], self.classes.get(key[0]))
        if problems:
            raise _fail(problems)
        return table

    def table(self, label_set: str, dataset: str):
        """Every nucleus of one pickle as an ``xarray.Dataset`` (dim ``nucleus``)."""
        import xarray as xr

        images = self[label_set, dataset]
        names = (np.concatenate([[name] * len(v["predicted"]) for name, v in images.items()])
                 if images else np.zeros(0, str))
        cat = {k: np.concatenate([v[k] for v in images.values()]) if images else np.zeros(0) for k in
               ("centroid", "predicted", "probability", "ground_truth")}
        return xr.Dataset({"image": ("nucleus", names), "centroid": (("nucleus", "xy"), cat["centroid"].reshape(-1, 2)),
                           "predicted": ("nucleus", cat["predicted"]), "probability": ("nucleus", cat["probability"]),
                           "ground_truth": ("nucleus", cat["ground_truth"])},
                          coords={"xy": ["x", "y"]}, attrs={"label_set": label_set, "dataset": dataset})


def open_merged(folder: str | os.PathLike[str], classes: Mapping[str, int] | None = None) -> MergedData:
    """Open a merged dataset folder of ``<label_set>/<dataset>.pkl`` files (ours or the authors').

    Parameters
    ----------
    folder
        The folder.
    classes
        Label set name -> number of classes, for the label range check (see :class:`MergedData`).

    Raises
    ------
    SchemaVersionError
        For a nucdata output of another format version.
    MergedOutputError
        When its marker breaks the schema; a pickle that breaks the format raises it when
        read (``merged[label_set, dataset]``).
    MissingFilesError
        When the folder holds no pickles.
    """
    return MergedData(folder, classes)


__getattr__ = moved_attributes(__name__, {"SOURCES": ("PROVENANCE", lambda: PROVENANCE)})
