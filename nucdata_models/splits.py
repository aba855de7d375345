"""Leak-free splits: grouped by patient, slide or hospital, with duplicate images found by their pixels.

A validation or test image must share no patient (or slide, or hospital) with a
training image, and an image that two datasets ship (Kumar's 30 images are MoNuSeg's
training images, byte for byte) is one image. Each dataset is grouped by the strongest
key its store has; groups are assigned to splits by a seeded hash, so a split is
reproducible and independent of the order of the images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DUPLICATE", "GROUP_KEYS", "TEST", "TRAIN", "VALIDATION", "GroupedSplit", "grouped_split",
           "image_digests"]

TRAIN, VALIDATION, TEST, DUPLICATE = 0, 1, 2, 3
#: Group keys, coarsest first: a hospital holds patients, a patient holds slides.
GROUP_KEYS = ("hospital", "patient", "slide")
#: When two datasets ship the same image, the earlier here keeps it for training.
PRIORITY = ("pannuke", "consep", "monusac", "nucls", "monuseg", "kumar", "tnbc")


@dataclass
class GroupedSplit:
    """Per-nucleus split codes and how they were made.

    Attributes
    ----------
    split
        int64 per nucleus, in the datasets' order: :data:`TRAIN`, :data:`VALIDATION`,
        :data:`TEST` (held out: no stage sees it) or :data:`DUPLICATE` (a copy of
        another dataset's image: predicted, never trained on nor scored).
    group_key
        Per dataset, the key its images were grouped by (``"image"`` when none).
    groups
        Per dataset, number of groups per split code.
    duplicates
        Per dataset, how many of its images duplicate an image of a dataset earlier
        in :data:`PRIORITY`, and of which.
    """

    split: np.ndarray
    group_key: dict[str, str] = field(default_factory=dict)
    groups: dict[str, dict[str, int]] = field(default_factory=dict)
    duplicates: dict[str, dict[str, int]] = field(default_factory=dict)


def image_digests(store) -> list[str]:
    """SHA-256 of every image's RGB pixels and shape, in store order."""
    out = []
    for index in range(store.n_images):
        rgb = np.ascontiguousarray(store.rgb(index))
        h = hashlib.sha256(repr(rgb.shape).encode())
        h.update(rgb.data)
        out.append(h.hexdigest())
    return out


def _group_key(store) -> str:
    columns = set(store.image_columns())
    for key in GROUP_KEYS:
        if key in columns:
            values = np.asarray(store.column("images", key)).astype(str)
            if values.size and all(v.strip() for v in values):
                return key
    return "image"


def _group_ids(dataset: str, store, key: str) -> list[str]:
    if key == "image":
        return [f"{dataset}/image:{name}" for name in np.asarray(store.column("images", "name")).astype(str)]
    values = np.asarray(store.column("images", key)).astype(str)
    # TCGA barcodes name the same patient (and site) in every dataset; other ids are local.
    return [f"{key}:{v}" if v.startswith("TCGA-") else f"{dataset}/{key}:{v}" for v in values]


def _draw(group: str, seed: int, fractions: tuple[float, float]) -> int:
    u = int(hashlib.sha256(f"{seed}/{group}".encode()).hexdigest()[:12], 16) / float(16**12)
    if u < fractions[0]:
        return VALIDATION
    if u < fractions[0] + fractions[1]:
        return TEST
    return TRAIN


def grouped_split(members: Sequence, validation: float = 0.15, test: float = 0.15, seed: int = 0) -> GroupedSplit:
    """Split every nucleus of ``members`` (whole-store datasets) by groups, duplicates found.

    Parameters
    ----------
    members
        ``nucdata.NucleusDataset`` objects over whole stores.
    validation, test
        Expected shares of groups in validation and in the held-out test split.
    seed
        Seed of the assignment.
    """
    if validation < 0 or test < 0 or validation + test >= 1:
        raise ValueError(f"validation ({validation}) and test ({test}) shares must be >= 0 and sum below 1")
    result = GroupedSplit(np.zeros(0, np.int64))
    seen: dict[str, tuple[str, str]] = {}  # pixel digest -> (dataset, group)
    parts = []
    order = sorted(range(len(members)), key=lambda i: PRIORITY.index(members[i].name)
                   if members[i].name in PRIORITY else len(PRIORITY))
    per_member: dict[int, np.ndarray] = {}
    for i in order:
        member = members[i]
        store = member.store
        key = _group_key(store)
        groups = _group_ids(member.name, store, key)
        digests = image_digests(store)
        image_split = np.empty(store.n_images, np.int64)
        dup_of: dict[str, int] = {}
        for index, (group, digest) in enumerate(zip(groups, digests, strict=True)):
            if digest in seen:
                image_split[index] = DUPLICATE
                dup_of[seen[digest][0]] = dup_of.get(seen[digest][0], 0) + 1
                continue
            seen[digest] = (member.name, group)
            image_split[index] = _draw(group, seed, (validation, test))
        result.group_key[member.name] = key
        counts: dict[str, set[str]] = {}
        for group, code in zip(groups, image_split.tolist(), strict=True):
            counts.setdefault(("train", "validation", "test", "duplicate")[code], set()).add(group)
        result.groups[member.name] = {k: len(v) for k, v in counts.items()}
        result.duplicates[member.name] = dup_of
        per_member[i] = image_split[np.asarray(store.column("nuclei", "image"))]
    for i in range(len(members)):
        parts.append(per_member[i])
    result.split = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return result
