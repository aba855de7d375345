"""Generated training data with known truth, for tests and benchmarks.

Crops are drawn from the demo world of :mod:`nucdata.demo.world`: latent cell types
with distinct size, shape, stain and texture, a stain shift per dataset, and each
dataset labelled only through its own vocabulary (labels under the other sets come
from nucdata's mapping tables, so they are missing, ambiguous or outside exactly as
for real data). The truth under every set is kept in ``TrainingData.truth``.
"""

from __future__ import annotations

import numpy as np
import torch

from .data import LabelSetSpec, TrainingData

DEFAULT_DATASETS = ("pannuke", "consep", "monusac", "nucls", "tnbc")
DEFAULT_SETS = ("pannuke", "nucls", "consep", "monusac")


def draw_crops(kinds: np.ndarray, datasets: list[str], dataset_index: np.ndarray, size: int,
               rng: np.random.Generator) -> np.ndarray:
    """uint8 ``(N, 4, size, size)``: one nucleus of the given type at the centre, plus mask."""
    from nucdata.demo.synth import BACKGROUND
    from nucdata.demo.world import STAIN_SHIFT, TYPE_NAMES, TYPES

    n = kinds.size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) - (size - 1) / 2
    out = np.empty((n, 4, size, size), np.uint8)
    for i in range(n):
        look = TYPES[TYPE_NAMES[int(kinds[i])]]
        r = rng.uniform(*look.radius)
        e = rng.uniform(*look.elongation)
        a = rng.uniform(0, np.pi)
        u = xx * np.cos(a) + yy * np.sin(a)
        v = -xx * np.sin(a) + yy * np.cos(a)
        inside = (u / (r * e)) ** 2 + (v / r) ** 2 <= 1
        img = np.empty((size, size, 3), np.float32)
        img[:] = BACKGROUND
        img += rng.normal(0, 6, (size, size, 3))
        tone = np.asarray(look.colour, np.float32) + rng.normal(0, 6, 3)
        img[inside] = tone + rng.normal(0, look.texture, (int(inside.sum()), 1))
        img += np.asarray(STAIN_SHIFT.get(datasets[int(dataset_index[i])], (0, 0, 0)), np.float32)
        out[i, :3] = np.clip(img, 0, 255).astype(np.uint8).transpose(2, 0, 1)
        out[i, 3] = inside * 255
    return out


def make_world_data(
    per_dataset: int = 200,
    datasets: tuple[str, ...] = DEFAULT_DATASETS,
    label_sets: tuple[str, ...] = DEFAULT_SETS,
    size: int = 32,
    val_fraction: float = 0.2,
    seed: int = 0,
    channels: int = 3,
) -> TrainingData:
    """A :class:`TrainingData` of ``per_dataset`` crops per dataset with known truth."""
    from nucdata.demo.world import NATIVE, World
    from nucdata.labelsets import OWN_LABEL_SET, label_set, translate

    rng = np.random.default_rng(seed)
    world = World(seed)
    kinds = np.concatenate([np.asarray(world.kinds_for(d, rng, per_dataset)) for d in datasets])
    dataset_index = np.repeat(np.arange(len(datasets)), per_dataset)
    crops = draw_crops(kinds, list(datasets), dataset_index, size, rng)[:, :channels]
    specs = [LabelSetSpec(s.name, s.version, tuple(s.names)) for s in map(label_set, label_sets)]
    labels, cands, truth = {}, {}, {}
    owner = {v: k for k, v in OWN_LABEL_SET.items()}
    for spec in specs:
        lab = np.empty(kinds.size, np.int64)
        cand = np.empty(kinds.size, np.int64)
        for d, name in enumerate(datasets):
            sel = dataset_index == d
            native = np.array([world.native_code(name, int(k)) for k in kinds[sel]])
            lab[sel], cand[sel] = translate(name, native, spec.name)
        labels[spec.name], cands[spec.name] = torch.from_numpy(lab), torch.from_numpy(cand)
        # Truth: what the set's own dataset would call this type (-2 if it has no class).
        own = owner[spec.name]
        codes = np.array([NATIVE[own][n] if NATIVE[own][n] is not None else -1 for n in np.array(
            list(NATIVE[own]))[kinds]])
        t, _ = translate(own, codes, spec.name)
        t[codes == -1] = -2
        truth[spec.name] = torch.from_numpy(t)
    split = (rng.random(kinds.size) < val_fraction).astype(np.int64)
    return TrainingData(
        crops=torch.from_numpy(crops), label_sets=specs, labels=labels, candidates=cands,
        dataset_index=torch.from_numpy(dataset_index), dataset_names=list(datasets),
        split=torch.from_numpy(split), truth=truth,
    )
