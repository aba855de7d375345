"""Generated training data with known truth, for tests and benchmarks.

Self-contained (no ``nucdata`` import): a small world of latent cell types, each with
its own look (radius, elongation, lobes, stain colour, texture), seen through four
label sets that name the types differently and at different granularity. Each
dataset is annotated only in its own label set; the truth under every set is kept in
:attr:`TrainingData.truth`, so a test can score the labels the method fills in.

Under the other sets a nucleus is, depending on ``other_sets``:

* ``"missing"`` — label -1, candidates 0 (no information at all);
* ``"mapped"`` — what a mapping table between the vocabularies gives, as for the real
  data: an exact class when every type behind the annotated class maps to one class,
  a candidate bitmask when they map to several (ambiguous), -2 when none of them has
  a class in that set (outside).

A dataset listed in ``unlabelled`` has no annotation at all (like Kumar or TNBC).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nucdata_models.data import LabelSetSpec, TrainingData

__all__ = ["CELL_TYPES", "LABEL_SETS", "DATASETS", "CellType", "make_synthetic_data", "make_world_data"]


@dataclass(frozen=True)
class CellType:
    """The look of one latent cell type."""

    radius: tuple[float, float]      # px, uniform range
    elongation: tuple[float, float]  # major / minor axis
    lobes: int                       # 0 = smooth outline; k = k-lobed (neutrophil-like)
    colour: tuple[float, float, float]  # mean RGB inside the nucleus
    texture: float                   # std of the chromatin noise


CELL_TYPES: dict[str, CellType] = {
    "tumour": CellType((7.0, 9.5), (1.0, 1.4), 0, (95, 60, 140), 22.0),
    "epithelial": CellType((5.5, 7.0), (1.1, 1.5), 0, (140, 105, 175), 10.0),
    "lymphocyte": CellType((3.0, 4.0), (1.0, 1.1), 0, (50, 30, 110), 4.0),
    "neutrophil": CellType((4.5, 5.5), (1.0, 1.2), 3, (80, 50, 130), 6.0),
    "macrophage": CellType((5.0, 6.5), (1.0, 1.3), 0, (160, 120, 170), 14.0),
    "fibroblast": CellType((3.5, 4.5), (2.6, 3.4), 0, (110, 75, 150), 6.0),
    "dead": CellType((2.5, 3.5), (1.0, 1.2), 0, (40, 20, 60), 2.0),
}
TYPE_NAMES = tuple(CELL_TYPES)

# Per label set: its classes and, per latent type, the class it calls it (None = outside).
LABEL_SETS: dict[str, tuple[tuple[str, ...], dict[str, str | None]]] = {
    "pannuke": (("neoplastic", "inflammatory", "connective", "dead", "epithelial"), {
        "tumour": "neoplastic", "epithelial": "epithelial", "lymphocyte": "inflammatory",
        "neutrophil": "inflammatory", "macrophage": "inflammatory", "fibroblast": "connective", "dead": "dead"}),
    "consep": (("other", "inflammatory", "healthy_epithelial", "malignant_epithelial", "spindle"), {
        "tumour": "malignant_epithelial", "epithelial": "healthy_epithelial", "lymphocyte": "inflammatory",
        "neutrophil": "inflammatory", "macrophage": "inflammatory", "fibroblast": "spindle", "dead": "other"}),
    "monusac": (("epithelial", "lymphocyte", "neutrophil", "macrophage"), {
        "tumour": "epithelial", "epithelial": "epithelial", "lymphocyte": "lymphocyte",
        "neutrophil": "neutrophil", "macrophage": "macrophage", "fibroblast": None, "dead": None}),
    "nucls": (("tumor", "stromal", "lymphocyte", "macrophage", "neutrophil", "apoptotic"), {
        "tumour": "tumor", "epithelial": None, "lymphocyte": "lymphocyte", "neutrophil": "neutrophil",
        "macrophage": "macrophage", "fibroblast": "stromal", "dead": "apoptotic"}),
}
SYNTHETIC_VERSION = "synthetic-1"

# Per dataset: its own label set (None = unlabelled), stain shift (RGB offset, scale)
# and the mix of latent types it contains.
DATASETS: dict[str, tuple[str | None, tuple[float, float, float], float, tuple[float, ...]]] = {
    "pannuke": ("pannuke", (0, 0, 0), 1.00, (3, 2, 2, 1, 1, 2, 1)),
    "consep": ("consep", (18, -6, 10), 0.95, (3, 1, 2, 1, 1, 2, 1)),
    "monusac": ("monusac", (-12, 8, -4), 1.05, (3, 2, 2, 1, 1, 0, 0)),
    "nucls": ("nucls", (6, 14, -10), 0.90, (3, 0, 2, 1, 1, 2, 1)),
    "tnbc": (None, (-8, -10, 12), 1.08, (2, 1, 2, 1, 1, 1, 1)),
}


def label_set_specs(names: tuple[str, ...] | list[str]) -> list[LabelSetSpec]:
    """The :class:`LabelSetSpec` of each synthetic label set."""
    return [LabelSetSpec(n, SYNTHETIC_VERSION, LABEL_SETS[n][0]) for n in names]


def type_to_class(set_name: str) -> np.ndarray:
    """Per latent type, its class id under ``set_name`` (-2 = outside)."""
    classes, table = LABEL_SETS[set_name]
    return np.array([classes.index(table[t]) if table[t] is not None else -2 for t in TYPE_NAMES], np.int64)


def draw_crops(types: np.ndarray, shift: np.ndarray, scale: np.ndarray, size: int, channels: int,
               rng: np.random.Generator, chunk: int = 4096) -> np.ndarray:
    """uint8 ``(N, channels, size, size)``: one nucleus of each type at the centre.

    ``shift`` ``(N, 3)`` and ``scale`` ``(N,)`` are the per-nucleus stain change of its
    dataset. Channel 3 (when ``channels == 4``) is the nucleus mask (0/255). Vectorised
    in chunks, so a few hundred thousand crops take seconds.
    """
    n = types.size
    out = np.empty((n, channels, size, size), np.uint8)
    coords = np.arange(size, dtype=np.float32) - (size - 1) / 2
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    looks = [CELL_TYPES[t] for t in TYPE_NAMES]
    r_lo, r_hi = (np.array([lk.radius[i] for lk in looks], np.float32) for i in (0, 1))
    e_lo, e_hi = (np.array([lk.elongation[i] for lk in looks], np.float32) for i in (0, 1))
    lobes = np.array([lk.lobes for lk in looks], np.float32)
    colour = np.array([lk.colour for lk in looks], np.float32)
    texture = np.array([lk.texture for lk in looks], np.float32)
    background = np.array([235, 200, 225], np.float32)
    for s in range(0, n, chunk):
        t = types[s : s + chunk]
        m = t.size
        r = rng.uniform(r_lo[t], r_hi[t]).astype(np.float32)[:, None, None]
        e = rng.uniform(e_lo[t], e_hi[t]).astype(np.float32)[:, None, None]
        a = rng.uniform(0, np.pi, m).astype(np.float32)[:, None, None]
        dx, dy = (rng.uniform(-1.5, 1.5, (2, m)).astype(np.float32)[..., None, None])
        u = (xx - dx) * np.cos(a) + (yy - dy) * np.sin(a)
        v = -(xx - dx) * np.sin(a) + (yy - dy) * np.cos(a)
        rho = np.sqrt((u / e) ** 2 + v**2)
        theta = np.arctan2(v, u)
        outline = r * (1 + 0.3 * np.cos(lobes[t][:, None, None] * theta))
        inside = rho <= outline
        img = np.broadcast_to(background, (m, size, size, 3)).astype(np.float32)
        img = img + rng.normal(0, 6, (m, size, size, 3)).astype(np.float32)
        tone = colour[t] + rng.normal(0, 6, (m, 3)).astype(np.float32)
        chromatin = rng.normal(0, 1, (m, size, size, 1)).astype(np.float32) * texture[t][:, None, None, None]
        img = np.where(inside[..., None], tone[:, None, None, :] + chromatin, img)
        img = img * scale[s : s + chunk, None, None, None] + shift[s : s + chunk, None, None, :]
        out[s : s + m, :3] = np.clip(img, 0, 255).astype(np.uint8).transpose(0, 3, 1, 2)
        if channels == 4:
            out[s : s + m, 3] = inside.astype(np.uint8) * 255
    return out


def make_synthetic_data(
    per_dataset: int = 200,
    datasets: tuple[str, ...] = tuple(DATASETS),
    label_sets: tuple[str, ...] = tuple(LABEL_SETS),
    size: int = 32,
    channels: int = 3,
    other_sets: str = "mapped",
    val_fraction: float = 0.2,
    seed: int = 0,
) -> TrainingData:
    """A :class:`TrainingData` of ``per_dataset`` crops per dataset, with known truth.

    Parameters
    ----------
    per_dataset
        Nuclei per dataset.
    datasets, label_sets
        Names from :data:`DATASETS` and :data:`LABEL_SETS`. A dataset whose own set is
        not among ``label_sets`` is unlabelled.
    size, channels
        Crop side in pixels; 3 (RGB) or 4 (RGB + nucleus mask).
    other_sets
        ``"mapped"`` or ``"missing"``: what a nucleus carries under the sets other than
        its dataset's own (see the module docstring).
    val_fraction
        Share of nuclei with ``split == 1``.
    seed
        Seed of everything drawn.

    Returns
    -------
    TrainingData
        With ``truth[set]`` the class of every nucleus under every set (-2 outside).
    """
    if channels not in (3, 4):
        raise ValueError(f"channels must be 3 or 4, got {channels}")
    if other_sets not in ("mapped", "missing"):
        raise ValueError(f"other_sets must be 'mapped' or 'missing', got {other_sets!r}")
    rng = np.random.default_rng(seed)
    n = per_dataset * len(datasets)
    dataset_index = np.repeat(np.arange(len(datasets)), per_dataset)
    types = np.empty(n, np.int64)
    shift = np.empty((n, 3), np.float32)
    scale = np.empty(n, np.float32)
    for d, name in enumerate(datasets):
        _, offset, gain, mix = DATASETS[name]
        p = np.asarray(mix, np.float64) / sum(mix)
        sel = slice(d * per_dataset, (d + 1) * per_dataset)
        types[sel] = rng.choice(len(TYPE_NAMES), per_dataset, p=p)
        shift[sel] = offset
        scale[sel] = gain
    crops = draw_crops(types, shift, scale, size, channels, rng)
    specs = label_set_specs(label_sets)
    labels, cands, truth = {}, {}, {}
    for spec in specs:
        of_type = type_to_class(spec.name)
        truth[spec.name] = torch.from_numpy(of_type[types])
        lab = np.full(n, -1, np.int64)
        cand = np.zeros(n, np.int64)
        for d, name in enumerate(datasets):
            own = DATASETS[name][0]
            sel = dataset_index == d
            if own is None or own not in label_sets:
                continue
            own_class = type_to_class(own)
            if own == spec.name:
                lab[sel] = of_type[types[sel]]
            elif other_sets == "mapped":
                lab[sel], cand[sel] = _mapped(types[sel], own_class, of_type, DATASETS[name][3])
            cand[sel & (lab >= 0)] = 1 << lab[sel & (lab >= 0)]
        labels[spec.name], cands[spec.name] = torch.from_numpy(lab), torch.from_numpy(cand)
    split = (rng.random(n) < val_fraction).astype(np.int64)
    return TrainingData(
        crops=torch.from_numpy(crops), label_sets=specs, labels=labels, candidates=cands,
        dataset_index=torch.from_numpy(dataset_index), dataset_names=list(datasets),
        split=torch.from_numpy(split), truth=truth,
    )


def _mapped(types: np.ndarray, own_class: np.ndarray, target: np.ndarray,
            mix: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and candidates under ``target`` implied by the annotated own class.

    The annotation says only the own-set class; every type of the dataset's mix that
    the own set calls the same class could be behind it. Their target classes are the
    candidates; one class is exact; none (all outside) is -2; a mix of outside and
    classes gives no information (-1, candidates 0).
    """
    lab = np.full(types.size, -1, np.int64)
    cand = np.zeros(types.size, np.int64)
    present = [t for t in range(len(TYPE_NAMES)) if mix[t] > 0]
    for t in np.unique(types):
        behind = [u for u in present if own_class[u] == own_class[t]]
        classes = sorted({int(target[u]) for u in behind if target[u] >= 0})
        sel = types == t
        if not classes:
            lab[sel] = -2
        elif any(target[u] < 0 for u in behind):
            pass  # maybe outside, maybe one of the classes: no information
        elif len(classes) == 1:
            lab[sel] = classes[0]
        else:
            cand[sel] = sum(1 << c for c in classes)
    return lab, cand


def make_world_data(per_dataset: int = 200, size: int = 32, seed: int = 0, channels: int = 3,
                    val_fraction: float = 0.2, **kwargs) -> TrainingData:
    """Alias of :func:`make_synthetic_data` (kept for earlier callers)."""
    return make_synthetic_data(per_dataset=per_dataset, size=size, seed=seed, channels=channels,
                               val_fraction=val_fraction, **kwargs)
