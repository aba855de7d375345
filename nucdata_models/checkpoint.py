"""Checkpoints: weights plus a JSON description that is checked on loading.

``save_checkpoint(path, state, meta)`` writes ``path`` (a ``torch.save`` of the state
dicts and the metadata as a JSON string, so loading needs no pickle of arbitrary
objects: ``weights_only=True``) and ``path.with_suffix(".json")`` beside it for people
and tools. Both are written to a temporary name and published with ``os.replace``
(:mod:`nucdata._util.atomic`). Loading uses ``torch.load(weights_only=True)``: a checkpoint
that pickles anything beyond tensors and plain containers is refused, never run.

``save_safetensors(path, state, meta)`` writes the shippable form (what ``build-merged``
publishes as ``classifier.safetensors``): the field's weight format, which holds tensors
and a string header only, so reading it runs no code at all. Its tensors are the state
dicts flattened to ``"<module>.<parameter>"`` (``base.encoder...``, ``heads.<set>...``);
the header's metadata holds ``format`` (:data:`SAFETENSORS_FORMAT`), ``format_version``
and the description as JSON (``meta_json``), so the file describes itself; the same
JSON is written beside it (``path.with_suffix(".json")``) for people and tools, and
:func:`load_safetensors` prefers that sidecar when it is present (so a calibration refitted
and saved there applies).
"""

from __future__ import annotations

import json
import math
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

__all__ = ["SAFETENSORS_FORMAT", "CheckpointError", "CheckpointMismatchError", "check_label_sets",
           "flatten_state", "label_set_meta", "load_checkpoint", "load_safetensors", "meta_path", "save_checkpoint",
           "save_safetensors", "strict_json", "unflatten_state"]

FORMAT_VERSION = 2
#: ``format`` in a safetensors checkpoint's header metadata (:func:`save_safetensors`).
SAFETENSORS_FORMAT = "nucdata-classifier"
#: The version of that format (bumped when its keys change meaning).
SAFETENSORS_VERSION = 1


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


# -- safetensors: the shippable form -------------------------------------------------------
def strict_json(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None`` and tensors/arrays as lists: strict JSON."""
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, torch.Tensor):
        return strict_json(value.tolist())
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays and scalars
        return strict_json(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def flatten_state(state: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``{"base": {"w": t}}`` -> ``{"base.w": t}``: contiguous CPU tensors that own their memory."""
    flat = {}
    for module, tensors in state.items():
        if "." in module:
            raise CheckpointError(f"module name {module!r} holds a '.', which separates module and parameter "
                                  "names in a safetensors checkpoint; rename it")
        for name, tensor in tensors.items():
            if not isinstance(tensor, torch.Tensor):
                raise CheckpointError(f"{module}.{name} is a {type(tensor).__name__}, not a tensor; a safetensors "
                                      "checkpoint holds tensors only (put other values into meta)")
            flat[f"{module}.{name}"] = tensor.detach().cpu().contiguous().clone()
    return flat


def unflatten_state(flat: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The inverse of :func:`flatten_state`."""
    state: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in flat.items():
        module, _, name = key.partition(".")
        state.setdefault(module, {})[name] = tensor
    return state


def save_safetensors(path: str | os.PathLike[str], state: dict[str, dict[str, torch.Tensor]],
                     meta: dict[str, Any]) -> Path:
    """Write weights as safetensors (the description in its header) and the JSON sidecar, atomically.

    Parameters
    ----------
    path
        The weights file (``.safetensors``); the JSON goes to ``path.with_suffix(".json")``.
    state
        Module name -> state dict (tensors only); a state without tensors (the
        trainer's random-number state) does not belong here.
    meta
        JSON-serialisable description; NaN becomes ``null`` (:func:`strict_json`).

    Returns
    -------
    Path
        ``path``.
    """
    from safetensors.torch import save

    from nucdata._util.atomic import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = strict_json({"format": SAFETENSORS_FORMAT, "format_version": SAFETENSORS_VERSION, **meta})
    text = json.dumps(meta, indent=2, allow_nan=False, sort_keys=False)
    blob = save(flatten_state(state), metadata={"format": SAFETENSORS_FORMAT,
                                                "format_version": str(SAFETENSORS_VERSION), "meta_json": text})
    atomic_write_bytes(path, blob)
    atomic_write_text(meta_path(path), text + "\n")
    return path


def _read_meta_text(text: str, where: Path) -> dict[str, Any]:
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{where}: the description is not valid JSON ({exc}); restore it from the "
                              "build-merged output it came with, or delete it to use the copy inside the "
                              "weights file") from None
    if not isinstance(meta, dict) or meta.get("format") != SAFETENSORS_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{where}: format {got!r} is not {SAFETENSORS_FORMAT!r}; this is not the "
                              "description of a nucdata classifier (build-merged writes classifier.json)")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > SAFETENSORS_VERSION:
        raise CheckpointError(f"{where}: format_version {version!r}; this nucdata reads versions up to "
                              f"{SAFETENSORS_VERSION}. Upgrade nucdata to read it")
    return meta


def load_safetensors(path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
                     ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_safetensors`; no code in the file is ever run.

    The description is the sidecar ``path.with_suffix(".json")`` when present, else the
    copy in the file's header.

    Returns
    -------
    state, meta

    Raises
    ------
    CheckpointError
        The file is missing, not safetensors, or not a nucdata classifier; naming the
        file and the fix.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; build one with nucdata build-merged "
                              "(it writes classifier.safetensors) or correct the path")
    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            header = f.metadata() or {}
            flat = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc}); "
                              "download or copy it again, or rebuild it with nucdata build-merged") from None
    sidecar = meta_path(path)
    if sidecar.is_file():
        meta = _read_meta_text(sidecar.read_text(encoding="utf-8"), sidecar)
    elif "meta_json" in header:
        meta = _read_meta_text(header["meta_json"], path)
    else:
        raise CheckpointError(f"{path}: a safetensors file without a nucdata description (no {sidecar.name} "
                              "beside it, none in its header); it was not written by nucdata build-merged")
    return unflatten_state(flat), meta
