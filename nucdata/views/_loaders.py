"""Batches for ``torch.utils.data.DataLoader``: :func:`collate`, and the one loader path of the views.

Two ways to batch, one way to cross from a worker
-------------------------------------------------
* :func:`collate` batches image samples (:class:`nucdata.NucleusDataset`,
  :class:`nucdata.views.TileDataset`) in any ``DataLoader``: pixels stacked, per-nucleus
  fields as lists.
* :func:`batch_loader` is the loader behind :func:`nucdata.crop_loader` and
  :func:`nucdata.tile_loader`: a ``DataLoader`` whose every item is a whole batch, made
  by one call of the view's batch function (``make(dataset, indices, empty)``: one
  gather from a crop bank, or the tiles of a batch collated with :func:`collate_into`),
  in the calling process or in persistent workers, which see the dataset's epoch
  (``set_epoch``) because every batch carries it.

A batch made in a worker crosses to the main process as a :class:`WorkerBatch`, under
two rules that come from how torch sends tensors between processes (each tensor's
storage in a shared-memory segment, announced by a file-descriptor handshake of about
a millisecond, whatever its size):

* tensors of up to :data:`INLINE_BYTES` travel inline, pickled as numpy arrays, and
  become tensors again (no copy) on arrival: a tile batch has dozens of per-nucleus
  fields, whose handshakes would cost more than making the batch;
* in :func:`batch_loader`'s workers the large tensors are made in place in one of a few
  shared-memory slots that each worker allocates once (``torch.empty(n,
  dtype=torch.uint8).share_memory_()``, public torch API) and reuses: one handshake per
  batch, no new segment, and none of the first-touch page faults a fresh segment costs
  (on some hosts several times the work of the batch; ``benchmarks/loaders.py``). The
  main process copies the tensors out when the batch arrives and keeps the slot mapped
  for its next use. A slot is refilled only after the batch in it has arrived, because
  a worker has at most ``prefetch_factor`` batches in flight and ``SLOTS`` exceeds that.

In a plain ``DataLoader`` with :func:`collate`, the large tensors take torch's standard
transfer (the ``DataLoader`` moves them into shared memory as it sends them).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

#: fields with one row per nucleus: their lengths differ between images, so they stay lists
NUCLEUS_FIELDS = frozenset({"centroids", "labels", "candidates", "probabilities", "annotated", "cut", "nucleus_index"})

#: tensors up to this many bytes cross from a worker to the main process inline (pickled
#: bytes) rather than each in its own shared-memory segment with a file-descriptor
#: handshake, which costs far more than copying a few kilobytes
INLINE_BYTES = 1 << 16

#: batches a :func:`batch_loader` worker may have in flight (its ``prefetch_factor``)
PREFETCH = 2
#: reusable shared-memory slots per worker: more than the batches it can have in flight
SLOTS = PREFETCH + 2

Spec = tuple[tuple[int, ...], torch.dtype]
#: ``empty(specs)``: uninitialised tensors of these shapes and dtypes, to fill in place
Empty = Callable[[Sequence[Spec]], list[torch.Tensor]]
#: ``make(dataset, indices, empty)``: one batch dict of ``dataset``'s items ``indices``
MakeBatch = Callable[[Any, Sequence[int], Empty], dict[str, Any]]


def plain_empty(specs: Sequence[Spec]) -> list[torch.Tensor]:
    """:data:`Empty` in the calling process: ``torch.empty`` per spec."""
    return [torch.empty(shape, dtype=dtype) for shape, dtype in specs]


# --------------------------------------------------------------------------------------
# Collation
# --------------------------------------------------------------------------------------
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
        ``dataset``) a list. In a ``DataLoader`` worker the small tensors travel to the
        main process inline (see the module docstring); the batch arrives as a plain dict.

    Examples
    --------
    >>> loader = DataLoader(nucdata.load("monuseg"), batch_size=4, collate_fn=collate)  # doctest: +SKIP
    """
    batch = collate_into(samples, None)
    return WorkerBatch(batch) if batch and torch.utils.data.get_worker_info() is not None else batch


def collate_into(samples: Sequence[dict[str, Any]], empty: Empty | None) -> dict[str, Any]:
    """:func:`collate`, stacking the large tensor fields into tensors from ``empty``.

    ``empty`` is called once, with the shape and dtype of every stacked field of more
    than :data:`INLINE_BYTES` (a :func:`batch_loader` worker passes its slot's); ``None``
    stacks everything with ``torch.stack``. Returns a plain dict.
    """
    if not samples:
        return {}
    batch: dict[str, Any] = {}
    large: list[str] = []
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key in NUCLEUS_FIELDS:
            batch[key] = values
        elif all(isinstance(v, torch.Tensor) for v in values) and len({tuple(v.shape) for v in values}) == 1:
            first = values[0]
            if (empty is not None and first.device.type == "cpu" and len({v.dtype for v in values}) == 1
                    and first.numel() * first.element_size() * len(values) > INLINE_BYTES):
                large.append(key)
                batch[key] = values
            else:
                batch[key] = torch.stack(values)
        elif all(isinstance(v, numbers.Number) and not isinstance(v, complex) for v in values):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    if large and empty is not None:
        outs = empty([((len(samples), *batch[k][0].shape), batch[k][0].dtype) for k in large])
        for key, out in zip(large, outs, strict=True):
            batch[key] = torch.stack(batch[key], out=out)
    return batch


# --------------------------------------------------------------------------------------
# Crossing from a worker
# --------------------------------------------------------------------------------------
_ALIGN = 64
_worker_slots: list[torch.Tensor | None] = []  # a worker's slots: flat uint8 shared-memory tensors
_worker_next = 0
_received: dict[tuple[int, int], torch.Tensor] = {}  # main process: slots kept mapped
_KEEP_MAPPED = 32


class _Slot:
    """The worker's next reusable slot, handing out tensors for one batch (see :data:`Empty`)."""

    def __init__(self, slots: int):
        global _worker_next
        if len(_worker_slots) != slots:
            _worker_slots[:] = [None] * slots
            _worker_next = 0
        self.index = _worker_next
        _worker_next = (_worker_next + 1) % slots
        self.buffer: torch.Tensor | None = None

    def empty(self, specs: Sequence[Spec]) -> list[torch.Tensor]:
        if self.buffer is not None:
            raise RuntimeError("a batch's tensors are laid out in its slot by one call of empty()")
        offsets, total = [], 0
        for shape, dtype in specs:
            offsets.append(total)
            total += -(-math.prod(shape) * _itemsize(dtype) // _ALIGN) * _ALIGN
        buffer = _worker_slots[self.index]
        if buffer is None or buffer.numel() < total:  # first use, or a larger batch: allocate once
            buffer = _worker_slots[self.index] = torch.empty(max(total, _ALIGN), dtype=torch.uint8).share_memory_()
        self.buffer = buffer
        return [buffer[o : o + math.prod(shape) * _itemsize(dtype)].view(dtype).view(shape)
                for (shape, dtype), o in zip(specs, offsets, strict=True)]


class WorkerBatch(dict):
    """A batch made in a ``DataLoader`` worker; it unpickles as a plain ``dict``.

    Small tensors (alone or in lists) travel inline as numpy arrays; tensors laid out in
    the worker's ``slot`` travel as the slot (one shared-memory tensor, mapped once in
    the main process) and are copied out on arrival; any other tensor takes torch's
    standard transfer. See the module docstring.
    """

    def __init__(self, fields: dict[str, Any], slot: _Slot | None = None):
        super().__init__(fields)
        self._slot = slot

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        buffer = None if self._slot is None else self._slot.buffer
        if buffer is None:
            return _rebuild_batch, ({key: _as_inline(value) for key, value in self.items()}, None)
        base, end = buffer.data_ptr(), buffer.data_ptr() + buffer.numel()
        items = {}
        for key, value in self.items():
            if isinstance(value, torch.Tensor) and base <= value.data_ptr() < end and value.is_contiguous():
                items[key] = _InSlot(value.data_ptr() - base, tuple(value.shape), value.dtype)
            else:
                items[key] = _as_inline(value)
        return _rebuild_batch, (items, (os.getpid(), self._slot.index, buffer))


class _InSlot:
    """Where a tensor lies in its batch's slot: byte offset, shape, dtype."""

    __slots__ = ("dtype", "offset", "shape")

    def __init__(self, offset: int, shape: tuple[int, ...], dtype: torch.dtype):
        self.offset, self.shape, self.dtype = offset, shape, dtype


class _Inline:
    """A small array travelling inline; unwrapped into a tensor on arrival."""

    __slots__ = ("array",)

    def __init__(self, array: Any):
        self.array = array


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


def _rebuild_batch(items: dict[str, Any], slot: tuple[int, int, torch.Tensor] | None) -> dict[str, Any]:
    """The batch as the main process sees it: a plain dict (slot tensors copied out)."""
    if slot is not None:
        pid, index, buffer = slot
        _received.pop((pid, index), None)
        while len(_received) >= _KEEP_MAPPED:  # slots of workers that are gone: the oldest first
            del _received[next(iter(_received))]
        _received[(pid, index)] = buffer  # keeps the segment mapped: the slot's next batch maps nothing
    out = {}
    for key, value in items.items():
        if isinstance(value, _InSlot):
            size = math.prod(value.shape) * _itemsize(value.dtype)
            out[key] = buffer[value.offset : value.offset + size].view(value.dtype).view(value.shape).clone()
        else:
            out[key] = _from_inline(value)
    return out


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


# --------------------------------------------------------------------------------------
# The loader path of crop_loader and tile_loader
# --------------------------------------------------------------------------------------
class _EpochBatches(torch.utils.data.Sampler):
    """Index lists from ``batches``, each with the dataset's epoch (``None`` without one)."""

    def __init__(self, dataset: Any, batches: torch.utils.data.Sampler):
        self.dataset, self.batches = dataset, batches

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[int | None, Sequence[int]]]:
        epoch = getattr(self.dataset, "epoch", None)  # read when the epoch starts: persistent workers follow
        for batch in self.batches:
            yield epoch, batch


class _Batches(torch.utils.data.Dataset):
    """What the loader's workers (or the calling process) run: one batch per ``(epoch, indices)``."""

    def __init__(self, dataset: Any, make: MakeBatch):
        self.dataset, self.make = dataset, make

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int | None, Sequence[int]]) -> dict[str, Any]:
        epoch, indices = item
        if epoch is not None and self.dataset.epoch != epoch:
            self.dataset.set_epoch(epoch)
        if torch.utils.data.get_worker_info() is None:
            return self.make(self.dataset, indices, plain_empty)
        slot = _Slot(SLOTS)
        return WorkerBatch(self.make(self.dataset, indices, slot.empty), slot)


def _unchanged(batch: Any) -> Any:
    """Collate nothing: every item already is a batch."""
    return batch


def batch_loader(dataset: Any, make: MakeBatch, batches: torch.utils.data.Sampler, num_workers: int = 0,
                 pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """The views' one loader path: a ``DataLoader`` of whole batches (see the module docstring).

    Parameters
    ----------
    dataset
        The view; with ``epoch`` and ``set_epoch`` (:class:`nucdata.views.TileDataset`),
        workers follow its epoch.
    make
        ``make(dataset, indices, empty)`` -> batch dict: a module-level function (it is
        pickled into workers by name), which takes its large output tensors from
        ``empty`` (one call per batch).
    batches
        Sampler of index lists.
    num_workers, pin_memory
        As for :class:`torch.utils.data.DataLoader`; workers are persistent.
    """
    workers = int(num_workers)
    return torch.utils.data.DataLoader(
        _Batches(dataset, make), sampler=_EpochBatches(dataset, batches), batch_size=None, num_workers=workers,
        collate_fn=_unchanged, persistent_workers=workers > 0, prefetch_factor=PREFETCH if workers > 0 else None,
        in_order=True, pin_memory=pin_memory,
    )
