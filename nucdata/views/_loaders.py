"""Collation of image samples for ``torch.utils.data.DataLoader``."""

from __future__ import annotations

import math
import numbers
import os
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
    in_worker = torch.utils.data.get_worker_info() is not None
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key in NUCLEUS_FIELDS:
            batch[key] = values
        elif all(isinstance(v, torch.Tensor) for v in values) and len({tuple(v.shape) for v in values}) == 1:
            batch[key] = _stack(values, in_worker)
        elif all(isinstance(v, numbers.Number) and not isinstance(v, complex) for v in values):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return _WorkerBatch(batch) if in_worker else batch


#: tensors up to this many bytes cross from a worker to the main process inline (pickled
#: bytes) rather than each in its own shared-memory segment with a file-descriptor
#: handshake, which costs far more than copying a few kilobytes
INLINE_BYTES = 1 << 16


def _stack(values: list[torch.Tensor], in_worker: bool) -> torch.Tensor:
    """``torch.stack``; in a worker, large batches go straight into shared memory.

    Moving a finished tensor to shared memory copies it once more (what the
    DataLoader does when it sends a batch); stacking into shared memory does not.
    """
    first = values[0]
    nbytes = first.numel() * first.element_size() * len(values)
    if not in_worker or nbytes <= INLINE_BYTES or first.device.type != "cpu":
        return torch.stack(values)
    storage = torch.UntypedStorage._new_shared(nbytes)
    out = torch.empty(0, dtype=first.dtype).set_(storage).view(len(values), *first.shape)
    return torch.stack(values, out=out)


def _as_inline(value: Any) -> Any:
    """Small CPU tensors (alone or in a list) as numpy arrays, pickled inline."""
    if isinstance(value, torch.Tensor):
        if value.device.type == "cpu" and not value.requires_grad and value.numel() * value.element_size() <= INLINE_BYTES:
            return _Inline(value.numpy())
        return value
    if isinstance(value, list) and value and all(isinstance(v, torch.Tensor) for v in value):
        return [_as_inline(v) for v in value]
    return value


def _from_inline(value: Any) -> Any:
    if isinstance(value, _Inline):
        return torch.from_numpy(value.array)
    if isinstance(value, list):
        return [_from_inline(v) for v in value]
    return value


class _Inline:
    """A small array travelling inline; unwrapped into a tensor on arrival."""

    __slots__ = ("array",)

    def __init__(self, array: Any):
        self.array = array


def _rebuild_batch(items: dict[str, Any]) -> dict[str, Any]:
    """The batch as the main process sees it: a plain dict of tensors and lists."""
    return {key: _from_inline(value) for key, value in items.items()}


class _WorkerBatch(dict):
    """A batch made in a DataLoader worker; unpickles as a plain ``dict``.

    The per-nucleus fields of a batch are dozens of tiny tensors: sent as tensors, each
    would get its own shared-memory segment and file-descriptor handshake (about a
    millisecond each), more than making the batch. They travel as pickled numpy arrays
    instead and become tensors again (no copy) when the main process unpickles them.
    """

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        return _rebuild_batch, ({key: _as_inline(value) for key, value in self.items()},)


# --------------------------------------------------------------------------------------
# Reusable shared-memory slots for loaders that own their DataLoader
# --------------------------------------------------------------------------------------
#: a fresh shared-memory segment per batch costs its pages' first-touch faults in the
#: worker (on some hosts more than making the batch) and a new mapping in the main
#: process; a loader that bounds how many batches a worker has in flight can reuse a few
#: segments instead. ``slots`` must exceed that bound (``prefetch_factor`` with
#: ``in_order=True``): the main process copies a batch out when it unpickles it.
_ALIGN = 64
_worker_slots: list[torch.UntypedStorage | None] = []
_worker_next = 0
_received: dict[tuple[int, int], torch.Tensor] = {}  # main process: slots kept mapped
_KEEP_MAPPED = 32


def slot_tensors(specs: Sequence[tuple[tuple[int, ...], torch.dtype]], slots: int) -> tuple[list[torch.Tensor], Any]:
    """Tensors to fill in a worker, laid out in the worker's next reusable slot.

    Parameters
    ----------
    specs
        Shape and dtype of each tensor.
    slots
        Slots per worker (more than the batches a worker can have in flight).

    Returns
    -------
    tensors, token
        Views into one shared-memory segment, and what :class:`SlotBatch` needs to send it.
    """
    global _worker_next
    offsets, total = [], 0
    for shape, dtype in specs:
        offsets.append(total)
        nbytes = math.prod(shape) * _itemsize(dtype)
        total += -(-nbytes // _ALIGN) * _ALIGN
    if len(_worker_slots) != slots:
        _worker_slots[:] = [None] * slots
        _worker_next = 0
    index = _worker_next
    _worker_next = (_worker_next + 1) % slots
    storage = _worker_slots[index]
    if storage is None or storage.nbytes() < total:
        storage = _worker_slots[index] = torch.UntypedStorage._new_shared(max(total, _ALIGN))
    whole = torch.empty(0, dtype=torch.uint8).set_(storage)
    tensors = [whole[o : o + math.prod(shape) * _itemsize(dtype)].view(dtype).view(shape)
               for (shape, dtype), o in zip(specs, offsets, strict=True)]
    return tensors, (os.getpid(), index, whole, [(o, tuple(shape), dtype) for (shape, dtype), o in zip(specs, offsets, strict=True)])


class SlotBatch(dict):
    """A batch whose large tensors live in a reusable worker slot (see :func:`slot_tensors`).

    Unpickles in the main process as a plain ``dict`` holding its own copies (the slot
    stays mapped there for the next batch); small tensors travel inline.
    """

    def __init__(self, fields: dict[str, Any], slot_keys: Sequence[str], token: Any):
        super().__init__(fields)
        self._slot_keys = list(slot_keys)
        self._token = token

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        pid, index, whole, layout = self._token
        rest = {k: _as_inline(v) for k, v in self.items() if k not in self._slot_keys}
        return _receive_slot, (pid, index, whole, layout, self._slot_keys, rest, list(self))


def _receive_slot(pid: int, index: int, whole: torch.Tensor, layout: list[tuple[int, tuple[int, ...], torch.dtype]],
                  keys: list[str], rest: dict[str, Any], order: list[str]) -> dict[str, Any]:
    """Main process: copy a slot's tensors out (the worker will refill the slot)."""
    _received.pop((pid, index), None)
    while len(_received) >= _KEEP_MAPPED:  # slots of workers that are gone: the oldest first
        del _received[next(iter(_received))]
    _received[(pid, index)] = whole  # keeps the segment mapped: the slot's next batch maps nothing
    batch: dict[str, Any] = _rebuild_batch(rest)
    for name, (offset, shape, dtype) in zip(keys, layout, strict=True):
        size = math.prod(shape) * _itemsize(dtype)
        batch[name] = whole[offset : offset + size].view(dtype).view(shape).clone()
    return {key: batch[key] for key in order}


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def collate_into_slots(samples: Sequence[dict[str, Any]], slots: int) -> dict[str, Any]:
    """:func:`collate` for a worker of a loader that bounds its batches in flight.

    Stacks the large tensor fields straight into the worker's next reusable
    shared-memory slot (see :func:`slot_tensors`); in the main process (no worker) it
    is :func:`collate`.
    """
    if torch.utils.data.get_worker_info() is None or not samples:
        return collate(samples)
    batch: dict[str, Any] = {}
    stack: list[str] = []
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key in NUCLEUS_FIELDS:
            batch[key] = values
        elif all(isinstance(v, torch.Tensor) for v in values) and len({(tuple(v.shape), v.dtype) for v in values}) == 1:
            first = values[0]
            if first.device.type == "cpu" and first.numel() * first.element_size() * len(values) > INLINE_BYTES:
                stack.append(key)
                batch[key] = values
            else:
                batch[key] = torch.stack(values)
        elif all(isinstance(v, numbers.Number) and not isinstance(v, complex) for v in values):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    specs = [((len(samples), *batch[k][0].shape), batch[k][0].dtype) for k in stack]
    tensors, token = slot_tensors(specs, slots)
    for key, out in zip(stack, tensors, strict=True):
        torch.stack(batch[key], out=out)
        batch[key] = out
    return SlotBatch(batch, stack, token)
