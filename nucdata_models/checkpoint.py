"""Checkpoints: weights plus a JSON description that is checked on loading."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import torch

from .data import LabelSetSpec

FORMAT_VERSION = 1


class CheckpointMismatchError(ValueError):
    """A checkpoint trained for other label sets (names, versions or classes)."""


def _meta_path(path: Path) -> Path:
    return path.with_suffix(".json")


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write ``state`` (state dicts) to ``path`` and ``meta`` beside it, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format_version": FORMAT_VERSION, **meta}
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}")
    torch.save({"state": state, "meta": meta}, tmp)
    os.replace(tmp, path)
    tmp_meta = _meta_path(path).with_name(f".{_meta_path(path).name}.{uuid.uuid4().hex[:6]}")
    tmp_meta.write_text(json.dumps(meta, indent=2, default=str))
    os.replace(tmp_meta, _meta_path(path))
    return path


def load_checkpoint(path: str | os.PathLike[str], label_sets: list[LabelSetSpec] | None = None,
                    map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a checkpoint; refuse it when its label sets differ from ``label_sets``.

    Raises
    ------
    CheckpointMismatchError
        Naming the file, the label set, what the checkpoint has and what is installed.
    """
    path = Path(path)
    blob = torch.load(path, map_location=map_location, weights_only=False)
    meta = blob["meta"]
    if label_sets is not None:
        saved = {s["name"]: s for s in meta.get("label_sets", [])}
        wanted = {s.name: s for s in label_sets}
        if list(saved) != list(wanted):
            raise CheckpointMismatchError(
                f"{path}: trained for label sets {list(saved)}, but {list(wanted)} were asked for. "
                "Train a new checkpoint (nucdata build-merged without --checkpoint) or ask for the same sets."
            )
        for name, spec in wanted.items():
            got = saved[name]
            if got["version"] != spec.version or tuple(got["class_names"]) != spec.class_names:
                raise CheckpointMismatchError(
                    f"{path}: label set {name!r} is version {got['version']} with classes {got['class_names']} "
                    f"in the checkpoint, but version {spec.version} with {list(spec.class_names)} is installed. "
                    "Retrain, or install the nucdata version the checkpoint was made with."
                )
    return blob["state"], meta


def label_set_meta(label_sets: list[LabelSetSpec]) -> list[dict[str, Any]]:
    return [{"name": s.name, "version": s.version, "class_names": list(s.class_names)} for s in label_sets]
