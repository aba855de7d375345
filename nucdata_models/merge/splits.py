"""Leak-free splits: grouped by patient, slide or hospital, with duplicate images found by their pixels.

A validation or test image must share no patient (or slide, or hospital) with a
training image, and an image that two datasets ship (Kumar's 30 images are MoNuSeg's
training images, byte for byte) is one image. Each dataset is grouped by the strongest
key its store has that gives at least three groups; each dataset's groups are ranked
by a seeded hash and fill validation and the held-out split up to their shares, so a
split is reproducible, independent of the order of the images, and no dataset with
three groups or more is left without validation or held-out images.
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


def _priority() -> tuple[str, ...]:
    """The registry's order, with each dataset that copies another's images right after it."""
    from nucdata.catalog import datasets_in_order, get_card

    order = datasets_in_order()
    original = {name: get_card(name, packaged=True).duplicates_of for name in order}
    return tuple(sorted(order, key=lambda name: (order.index(original[name] or name), original[name] is not None)))


#: When two datasets ship the same image, the earlier here keeps it for training: the
#: registry's order (the cards' ``order``), a copy (a card's ``duplicates_of``: Kumar's
#: images are MoNuSeg's) after the dataset it copies.
PRIORITY = _priority()


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
    image_groups
        Per dataset, the group of each of its images, in store order (names shared
        across datasets where a TCGA barcode names the patient); the method study's
        bootstrap resamples these groups.
    """

    split: np.ndarray
    group_key: dict[str, str] = field(default_factory=dict)
    groups: dict[str, dict[str, int]] = field(default_factory=dict)
    duplicates: dict[str, dict[str, int]] = field(default_factory=dict)
    image_groups: dict[str, list[str]] = field(default_factory=dict)


def image_digests(store) -> list[str]:
    """SHA-256 of every image's RGB pixels and shape, in store order."""
    out = []
    for index in range(store.n_images):
        rgb = np.ascontiguousarray(store.rgb(index))
        h = hashlib.sha256(repr(rgb.shape).encode())
        h.update(rgb.data)
        out.append(h.hexdigest())
    return out


def _group_key(store, dataset: str) -> str:
    """The coarsest key whose groups can fill three splits (at least 3 groups), else ``image``."""
    columns = set(store.image_columns())
    for key in GROUP_KEYS:
        if key in columns:
            values = np.asarray(store.column("images", key)).astype(str)
            if values.size and all(v.strip() for v in values) and len(set(values.tolist())) >= 3:
                return key
    return "image"


def _group_ids(dataset: str, store, key: str) -> list[str]:
    if key == "image":
        return [f"{dataset}/image:{name}" for name in np.asarray(store.column("images", "name")).astype(str)]
    values = np.asarray(store.column("images", key)).astype(str)
    # TCGA barcodes name the same patient (and site) in every dataset; other ids are local.
    return [f"{key}:{v}" if v.startswith("TCGA-") else f"{dataset}/{key}:{v}" for v in values]


def _rank(group: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}/{group}".encode()).hexdigest()


def _wanted(n: int, share: float) -> int:
    """Groups a split should get out of ``n``: at least one when there are three or more."""
    return max(1, round(share * n)) if n >= 3 and share > 0 else round(share * n)


def grouped_split(members: Sequence, validation: float = 0.15, test: float = 0.15, seed: int = 0) -> GroupedSplit:
    """Split every nucleus of ``members`` (whole-store datasets) by groups, duplicates found.

    Parameters
    ----------
    members
        ``nucdata.NucleusDataset`` objects over whole stores.
    validation, test
        Shares of each dataset's groups in validation and in the held-out test split
        (at least one group each when a dataset has three or more).
    seed
        Seed of the assignment.
    """
    if validation < 0 or test < 0 or validation + test >= 1:
        from nucdata.errors import InvalidArgumentError

        raise InvalidArgumentError(f"grouped_split: validation ({validation}) and test ({test}) shares must be "
                                   ">= 0 and sum below 1; lower one of them")
    result = GroupedSplit(np.zeros(0, np.int64))
    seen: dict[str, str] = {}  # pixel digest -> dataset that has the image
    assigned: dict[str, int] = {}  # group -> split; groups named alike across datasets agree
    order = sorted(range(len(members)), key=lambda i: PRIORITY.index(members[i].name)
                   if members[i].name in PRIORITY else len(PRIORITY))
    per_member: dict[int, np.ndarray] = {}
    for i in order:
        member = members[i]
        store = member.store
        key = _group_key(store, member.name)
        groups = _group_ids(member.name, store, key)
        duplicate = np.zeros(store.n_images, bool)
        dup_of: dict[str, int] = {}
        for index, digest in enumerate(image_digests(store)):
            if digest in seen:
                duplicate[index] = True
                dup_of[seen[digest]] = dup_of.get(seen[digest], 0) + 1
            else:
                seen[digest] = member.name
        own = sorted({g for g, d in zip(groups, duplicate.tolist(), strict=True) if not d})
        # Groups ranked by a seeded hash fill validation, then test, up to their shares
        # (counting groups another dataset already placed), the rest train.
        fresh = sorted((g for g in own if g not in assigned), key=lambda g: _rank(g, seed))
        for split, share in ((VALIDATION, validation), (TEST, test)):
            need = _wanted(len(own), share) - sum(assigned.get(g) == split for g in own)
            for g in fresh[: max(need, 0)]:
                assigned[g] = split
            fresh = fresh[max(need, 0):]
        for g in fresh:
            assigned[g] = TRAIN
        image_split = np.array([DUPLICATE if d else assigned[g] for g, d in zip(groups, duplicate.tolist(), strict=True)],
                               np.int64)
        result.group_key[member.name] = key
        result.image_groups[member.name] = groups
        counts: dict[str, set[str]] = {}
        for group, code in zip(groups, image_split.tolist(), strict=True):
            counts.setdefault(("train", "validation", "test", "duplicate")[code], set()).add(group)
        result.groups[member.name] = {k: len(v) for k, v in counts.items()}
        result.duplicates[member.name] = dup_of
        per_member[i] = image_split[np.asarray(store.column("nuclei", "image"))]
    result.split = (np.concatenate([per_member[i] for i in range(len(members))]) if members
                    else np.zeros(0, np.int64))
    return result
