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

- field 2 is the model's label and field 3 the model's probability of it; they always
  belong together. Where the nucleus's own annotation maps to a *candidate set* in this
  label set (an ambiguous mapping row), the label is the model's most probable candidate.
  Where it maps *outside* the set, the label is -2 and the probability is that of the
  model's outside output (NaN when the model has none, as in ``--recipe paper``).
- field 4 is the nucleus's annotation, and only where its own dataset annotated it in
  this label set's vocabulary; -2 where that annotation maps outside the set; -1
  everywhere else. Labels derived through the mapping tables are not ground truth
  unless the output was built with ``--mapped-as-truth``.

**The merged columns** ``merged/<dataset>/<label_set>/<column>.npy``:
``label`` (int64, the merged label: annotation, mapped class, resolved candidate, -2
outside, or the prediction), ``probability`` (float32, the model's probability of
``label``), ``source`` (int8, index into :data:`PROVENANCE`), ``predicted`` and
``predicted_probability`` (the model's own unrestricted prediction), ``annotation``
(field 4 of the pickle).
"""

from __future__ import annotations

import json
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
from nucdata.errors import DatasetNotFoundError, InvalidArgumentError, MissingFilesError, SchemaVersionError

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
    target = Path(folder) / "merged" / dataset / label_set
    target.mkdir(parents=True, exist_ok=True)
    for key, dtype in COLUMNS.items():
        np.save(target / f"{key}.npy", np.ascontiguousarray(columns[key], dtype=dtype))


def write_merged_info(folder: str | os.PathLike[str], dataset: str, info: Mapping[str, Any]) -> None:
    """Write ``merged/<dataset>/merged.json``: store identity, label sets, source codes."""
    atomic_write_json(Path(folder) / "merged" / dataset / "merged.json",
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
        if relative.parts[0] == "crops" or not path.is_file():
            continue
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
    return dest


# -- reading ---------------------------------------------------------------------------
@dataclass
class MergedLabels:
    """One dataset's merged columns under one label set, in store order (memory-mapped)."""

    label_set: str
    columns: dict[str, np.ndarray]

    @property
    def label(self) -> np.ndarray:
        return self.columns["label"]


def read_merged_labels(source: str | os.PathLike[str], dataset: str, label_set: str) -> tuple[Path, MergedLabels]:
    """The store folder and merged columns of ``dataset`` under ``label_set`` in an output.

    Raises
    ------
    DatasetNotFoundError
        When the output has no such dataset or label set; the message lists what it has.
    """
    root = Path(source)
    info_path = root / "merged" / dataset / "merged.json"
    if not info_path.is_file():
        have = sorted(p.parent.name for p in root.glob("merged/*/merged.json"))
        raise DatasetNotFoundError(
            f"{info_path}: {dataset} is not part of the merged output {root} "
            f"(it has: {', '.join(have) or 'nothing; is this a build-merged output folder?'}).")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    if label_set not in info.get("label_sets", []):
        raise DatasetNotFoundError(
            f"{info_path}: no {label_set!r} labels for {dataset}; this output has "
            f"{', '.join(info.get('label_sets', []))}.")
    folder = root / "merged" / dataset / label_set
    columns = {}
    for key in COLUMNS:
        path = folder / f"{key}.npy"
        if not path.is_file():
            raise MissingFilesError(f"{path}: merged column missing; the output is incomplete — rerun "
                                    "`nucdata build-merged` into it.")
        columns[key] = np.load(path, mmap_mode="r")
    return root / "stores" / dataset, MergedLabels(label_set, columns)


class MergedData:
    """A merged dataset read from its pickles (nucdata's output or the authors' release).

    ``merged[label_set, dataset]`` is ``{image filename: arrays}`` with ``centroid``
    (K, 2), ``predicted`` (K,), ``probability`` (K,) and ``ground_truth`` (K,; -1 none,
    -2 outside the set). Pickles are read with nucdata's allow-list unpickler: a file
    that asks for anything beyond plain containers, numbers and numpy arrays is refused
    before any of it runs.
    """

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder)
        check_format(self.folder, required=False)
        self.files = {(p.parent.name, p.stem): p for p in sorted(self.folder.glob("*/*.pkl"))}
        if not self.files:
            raise MissingFilesError(f"{self.folder}: no <label_set>/<dataset>.pkl files; this is not a merged "
                                    "dataset folder.")

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
        raw = safe_load(self.files[key])
        if not isinstance(raw, dict):
            raise MissingFilesError(f"{self.files[key]}: expected a dict of image -> nuclei, got "
                                    f"{type(raw).__name__}.")
        out = {}
        for image, nuclei in raw.items():
            rows = list(nuclei)
            out[str(image)] = {
                "centroid": np.array([np.asarray(r[0], float).reshape(2) for r in rows]).reshape(-1, 2),
                "predicted": np.array([int(r[1]) for r in rows], np.int64),
                "probability": np.array([float(r[2]) for r in rows], np.float32),
                "ground_truth": np.array([int(r[3]) for r in rows], np.int64),
            }
        return out

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


def open_merged(folder: str | os.PathLike[str]) -> MergedData:
    """Open a merged dataset folder of ``<label_set>/<dataset>.pkl`` files (ours or the authors')."""
    return MergedData(folder)


__getattr__ = moved_attributes(__name__, {"SOURCES": ("PROVENANCE", lambda: PROVENANCE)})
