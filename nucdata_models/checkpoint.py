"""Checkpoints: weights plus a JSON description that is checked on loading.

``save_checkpoint(path, state, meta)`` writes ``path`` (a ``torch.save`` of the state
dicts and the metadata as a JSON string, so loading needs no pickle of arbitrary
objects: ``weights_only=True``) and ``path.with_suffix(".json")`` beside it for people
and tools. Both are written to a temporary name and published with ``os.replace``
(:mod:`nucdata._util.atomic`). Loading uses ``torch.load(weights_only=True)``: a checkpoint
that pickles anything beyond tensors and plain containers is refused, never run.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nucdata._util.atomic import atomic_path, atomic_write_text
from nucdata.errors import CheckpointError, CheckpointMismatchError
from nucdata_models.data import LabelSetSpec

__all__ = ["CheckpointError", "CheckpointMismatchError", "check_label_sets", "label_set_meta",
           "load_checkpoint", "meta_path", "save_checkpoint"]

FORMAT_VERSION = 2


def meta_path(path: str | os.PathLike[str]) -> Path:
    """The JSON written beside checkpoint ``path``."""
    return Path(path).with_suffix(".json")


def label_set_meta(label_sets: Sequence[LabelSetSpec]) -> list[dict[str, Any]]:
    """Label sets as JSON-ready dicts (name, version, class names)."""
    return [s.to_dict() for s in label_sets]


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write weights and metadata atomically.

    Parameters
    ----------
    path
        The weights file (``.pt``); the JSON goes to ``path.with_suffix(".json")``.
    state
        Name -> state dict (tensors only).
    meta
        JSON-serialisable description: ``label_sets`` (see :func:`label_set_meta`),
        encoder, crop size, channels, mpp, training configuration, metrics...

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format_version": FORMAT_VERSION, **meta}
    text = json.dumps(meta, indent=2, default=_jsonable)
    with atomic_path(path) as tmp:
        torch.save({"state": state, "meta_json": text}, tmp)
    atomic_write_text(meta_path(path), text)
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def load_checkpoint(path: str | os.PathLike[str], label_sets: Sequence[LabelSetSpec] | None = None,
                    map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path
        The weights file.
    label_sets
        When given, the checkpoint must have been trained for exactly these sets, in
        this order, with the same versions and class names.
    map_location
        Where the tensors go.

    Returns
    -------
    state, meta

    Raises
    ------
    CheckpointError
        The file is missing or not a checkpoint of this package.
    CheckpointMismatchError
        Naming the file, the label set, what the checkpoint has and what was asked.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; train one (CrossTrainer.fit) or correct the path")
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
        meta = json.loads(blob["meta_json"]) if "meta_json" in blob else blob["meta"]
        state = blob["state"]
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL\s+([\w.]+)", str(exc))
        if found is None:  # garbage bytes, not a refused global
            raise CheckpointError(f"{path}: not a readable nucdata_models checkpoint ({exc}); "
                                  "re-save it with save_checkpoint or retrain") from None
        what = found.group(1)  # weights_only refused this global before calling it
        raise CheckpointError(
            f"{path}: refused to load: the checkpoint asks for {what}, which weights-only loading does not "
            "allow (a pickled checkpoint can run code). nucdata_models checkpoints hold only tensors and "
            "JSON; use a checkpoint written by save_checkpoint, or retrain.") from None
    except Exception as exc:  # truncated file, another program's pickle, ...
        raise CheckpointError(f"{path}: not a readable nucdata_models checkpoint ({type(exc).__name__}: {exc}); "
                              "re-save it with save_checkpoint or retrain") from exc
    if label_sets is not None:
        check_label_sets(path, meta.get("label_sets", []), label_sets)
    return state, meta


def check_label_sets(path: str | os.PathLike[str], saved: list[dict[str, Any]],
                     wanted: Sequence[LabelSetSpec]) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``saved`` describes ``wanted``."""
    found = [s["name"] for s in saved]
    expected = [s.name for s in wanted]
    fix = ("Retrain for these label sets (CrossTrainer.fit, or nucdata build-merged without --checkpoint), "
           "or use the nucdata version and label sets the checkpoint was trained with.")
    if found != expected:
        missing = [n for n in expected if n not in found]
        extra = [n for n in found if n not in expected]
        detail = (f"label set(s) {missing} missing" if missing else "") + \
                 ("; " if missing and extra else "") + (f"label set(s) {extra} not asked for" if extra else "")
        raise CheckpointMismatchError(
            f"{path}: trained for label sets {found}, but {expected} were asked for "
            f"({detail or 'same sets in another order'}). {fix}")
    for spec, got in zip(wanted, saved, strict=True):
        if str(got["version"]) != spec.version:
            raise CheckpointMismatchError(
                f"{path}: label set {spec.name!r}: expected version {spec.version}, found version {got['version']} "
                f"in the checkpoint. {fix}")
        if tuple(got["class_names"]) != spec.class_names:
            raise CheckpointMismatchError(
                f"{path}: label set {spec.name!r} (version {spec.version}): expected classes "
                f"{list(spec.class_names)}, found {list(got['class_names'])} in the checkpoint. {fix}")
