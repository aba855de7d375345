"""Collation of image samples for ``torch.utils.data.DataLoader``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

#: fields with one row per nucleus: their lengths differ between images
NUCLEUS_FIELDS = ("centroids", "labels", "candidates")


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch image samples: pixels stacked when sizes agree, per-nucleus fields as lists.

    ``image`` and ``instance_map`` become one tensor when every image has the same
    size and stay lists otherwise; ``centroids``, ``labels`` and ``candidates`` (and any
    other field that is not a same-shaped tensor) stay lists, one entry per image.

    >>> loader = DataLoader(nucdata.load("monuseg"), batch_size=4, collate_fn=collate)  # doctest: +SKIP
    """
    if not samples:
        return {}
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if (
            key not in NUCLEUS_FIELDS
            and all(isinstance(v, torch.Tensor) for v in values)
            and len({tuple(v.shape) for v in values}) == 1
        ):
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch
