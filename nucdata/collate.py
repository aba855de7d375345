"""Collation of image samples for ``torch.utils.data.DataLoader``."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch

#: fields with one row per nucleus: their lengths differ between images, so they stay lists
NUCLEUS_FIELDS = frozenset({"centroids", "labels", "candidates", "probabilities", "annotated", "cut", "nucleus_index"})


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch image samples: pixels stacked when sizes agree, per-nucleus fields as lists.

    Parameters
    ----------
    samples
        Sample dicts of :class:`nucdata.NucleusDataset` (after any transforms).

    Returns
    -------
    dict
        ``image`` and ``instance_map`` (and any other tensor field) are one stacked
        tensor when every sample's has the same shape, else a list; the per-nucleus
        fields (``centroids``, ``labels``, ``candidates``, ...) are always lists, one
        entry per image; Python numbers become a 1-D tensor; anything else (``image_id``,
        ``dataset``) a list.

    Examples
    --------
    >>> loader = DataLoader(nucdata.load("monuseg"), batch_size=4, collate_fn=collate)  # doctest: +SKIP
    """
    if not samples:
        return {}
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key in NUCLEUS_FIELDS:
            batch[key] = values
        elif all(isinstance(v, torch.Tensor) for v in values) and len({tuple(v.shape) for v in values}) == 1:
            batch[key] = torch.stack(values)
        elif all(isinstance(v, numbers.Number) and not isinstance(v, complex) for v in values):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch
