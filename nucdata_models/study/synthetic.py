"""Generated training data with known truth, for tests and benchmarks: the demo world's crops.

The one world of :mod:`nucdata.testing.world` (the one ``nucdata demo`` and
``build-merged --demo`` draw their archives from): its latent cell types and their
appearances, each dataset's vocabulary, type mix, stain and blur, and its knobs
(:class:`nucdata.testing.world.WorldConfig`). Instead of whole archives this module
draws one nucleus per crop, centred, straight into a :class:`TrainingData`
(vectorised: a few hundred thousand crops take seconds), painted as
:func:`nucdata.testing.paint` paints a nucleus.

Each labelled dataset's nuclei carry the native codes the world's annotators write
(:meth:`World.annotate <nucdata.testing.world.World.annotate>`), turned into labels as
for real data (:func:`nucdata_models.merge.label_columns`, through the packaged mapping
tables): *annotated* in the dataset's own label set, and under the other sets,
depending on ``other_sets``:

* ``"mapped"`` — what the mapping tables give for the annotated code: an exact class,
  a candidate set (ambiguous, possibly with the outside bit), outside (-2), or nothing;
* ``"missing"`` — label -1, candidates 0 (no information at all).

A dataset without classes (Kumar, MoNuSeg, TNBC) has no annotation at all. The truth
of every nucleus under every set is the world's (:meth:`World.truth_labels
<nucdata.testing.world.World.truth_labels>`), kept in :attr:`TrainingData.truth`, so a
test can score the labels a method fills in. Where the packaged tables and the world's
vocabulary disagree (:func:`table_disagreements`), a mapped label is what the table
says, not the truth, as with real data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from nucdata.errors import InvalidArgumentError
from nucdata.testing import BACKGROUND
from nucdata.testing.world import TYPE_NAMES, World, WorldConfig, entries
from nucdata_models.data import NO_LABEL, LabelSetSpec, TrainingData

__all__ = ["TYPE_NAMES", "DrawnNuclei", "default_datasets", "draw_crops", "make_synthetic_data", "make_world_data",
           "table_disagreements"]

#: Standard deviation of the smooth background field ``paint`` adds (a Gaussian of
#: sigma 6 px over white noise of s.d. 25, halved): at the scale of one crop it is a
#: constant offset per crop.
_FIELD_SD = 0.5 * 25.0 / (2.0 * np.sqrt(np.pi) * 6.0)


class DrawnNuclei:
    """One dataset's generated nuclei, as the store columns the label path reads.

    :func:`nucdata_models.merge.label_columns` (through
    :func:`nucdata.labels.translate_store_labels`) takes a store; this holds the
    dataset's name and the native codes its annotators wrote, and no tissue.
    """

    def __init__(self, dataset: str, codes: np.ndarray) -> None:
        self.dataset = dataset
        self.codes = np.asarray(codes, np.int64)

    def column(self, table: str, key: str) -> np.ndarray:
        """The native codes (``nuclei/label``), the only column there is."""
        if (table, key) != ("nuclei", "label"):
            raise InvalidArgumentError(f"generated nuclei have no column {table}/{key}; only nuclei/label")
        return self.codes

    def image_columns(self) -> list[str]:
        """No image columns (no tissue)."""
        return []


def default_datasets() -> list[str]:
    """The world's datasets in the registry's order, without copies of another's images.

    Kumar's images are MoNuSeg's (its card's ``duplicates_of``): as crops they would
    only repeat MoNuSeg's.
    """
    from nucdata.catalog import get_card

    return [name for name in entries() if get_card(name, packaged=True).duplicates_of is None]


def _world(world: World | WorldConfig | str | None, seed: int) -> World:
    if isinstance(world, World):
        return world
    if world is None:
        return World(seed)
    return World(seed, config=WorldConfig.preset(world) if isinstance(world, str) else world)


def draw_crops(world: World, dataset: str, count: int, size: int, channels: int, rng: np.random.Generator,
               chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """``count`` nuclei of ``dataset`` drawn from ``world``, one centred in each crop.

    Latent types from the dataset's type mix (:meth:`World.kinds_for`), look-alikes as
    the world's overlap says (:meth:`World.looks_for`), and the look's appearance in the
    dataset's pixel scale (:meth:`World.appearances`): radius and elongation uniform in
    their ranges, a random angle, the tone normal around the colour (s.d. 6 per
    channel) with per-pixel chromatin noise of the look's texture strength, on the
    eosin background with its pixel noise; then the dataset's stain shift and blur.

    Returns
    -------
    tuple of numpy.ndarray
        Latent type index per nucleus ``(count,)`` and uint8 crops
        ``(count, channels, size, size)``; channel 3 (``channels == 4``) is the nucleus
        mask (0/255).
    """
    world.begin(dataset)
    kinds = np.asarray(world.kinds_for(dataset, rng, count), np.int64)
    looks = np.asarray(world.looks_for(dataset, kinds.tolist()), np.int64)
    appearances = world.appearances(dataset)
    table = [appearances[i] for i in range(len(TYPE_NAMES))]
    r_lo, r_hi = (np.array([a.radius[i] for a in table], np.float32) for i in (0, 1))
    e_lo, e_hi = (np.array([a.elongation[i] for a in table], np.float32) for i in (0, 1))
    colour = np.array([a.colour for a in table], np.float32)
    texture = np.array([a.texture for a in table], np.float32)
    stain = np.asarray(world.stain(dataset), np.float32)
    blur = world.blur(dataset)
    background = np.asarray(BACKGROUND, np.float32)
    centre = np.arange(size, dtype=np.float32) - (size - 1) / 2  # pixel centres around the crop's centre
    yy, xx = np.meshgrid(centre, centre, indexing="ij")
    out = np.empty((count, channels, size, size), np.uint8)
    for s in range(0, count, chunk):
        t = looks[s : s + chunk]
        m = t.size
        r = rng.uniform(r_lo[t], r_hi[t]).astype(np.float32)[:, None, None]
        e = rng.uniform(e_lo[t], e_hi[t]).astype(np.float32)[:, None, None]
        a = rng.uniform(0, np.pi, m).astype(np.float32)[:, None, None]
        dx, dy = rng.uniform(-0.5, 0.5, (2, m)).astype(np.float32)[..., None, None]
        u = (xx - dx) * np.cos(a) + (yy - dy) * np.sin(a)
        v = -(xx - dx) * np.sin(a) + (yy - dy) * np.cos(a)
        inside = (u / (r * e)) ** 2 + (v / r) ** 2 <= 1.0  # rx = r * e along the angle, ry = r
        img = background + rng.normal(0, 6, (m, size, size, 3)).astype(np.float32)
        img += rng.normal(0, _FIELD_SD, (m, 1, 1, 1)).astype(np.float32)
        tone = colour[t] + rng.normal(0, 6, (m, 3)).astype(np.float32)
        chromatin = rng.normal(0, 1, (m, size, size, 1)).astype(np.float32) * texture[t][:, None, None, None]
        img = np.where(inside[..., None], tone[:, None, None, :] + chromatin, img) + stain
        img = ndimage.gaussian_filter(img, (0, blur, blur, 0))
        out[s : s + m, :3] = np.clip(img, 0, 255).astype(np.uint8).transpose(0, 3, 1, 2)
        if channels == 4:
            out[s : s + m, 3] = inside.astype(np.uint8) * 255
    return kinds, out


def make_synthetic_data(
    per_dataset: int = 200,
    datasets: Sequence[str] | None = None,
    label_sets: Sequence[str] | None = None,
    size: int = 32,
    channels: int = 3,
    other_sets: str = "mapped",
    val_fraction: float = 0.2,
    seed: int = 0,
    world: World | WorldConfig | str | None = None,
) -> TrainingData:
    """A :class:`TrainingData` of ``per_dataset`` crops per dataset, with known truth.

    Parameters
    ----------
    per_dataset
        Nuclei per dataset.
    datasets
        Datasets of the world; default :func:`default_datasets` (labelled first).
    label_sets
        Label sets, in head order; default ``nucdata.labels.MERGED_LABEL_SETS``.
    size, channels
        Crop side in pixels; 3 (RGB) or 4 (RGB + nucleus mask).
    other_sets
        ``"mapped"`` or ``"missing"``: what a nucleus carries under the sets other than
        its dataset's own (see the module docstring).
    val_fraction
        Share of nuclei with ``split == 1``.
    seed
        Seed of everything drawn (and of the world, unless ``world`` is one).
    world
        The world to draw from: a :class:`~nucdata.testing.world.World`, its knobs (a
        :class:`~nucdata.testing.world.WorldConfig` or a preset name) or ``None``,
        the default world of ``seed``.

    Returns
    -------
    TrainingData
        With ``truth[set]`` the class of every nucleus under every set (-2 outside).

    Raises
    ------
    InvalidArgumentError
        For channels other than 3 or 4, an unknown ``other_sets`` or a dataset the
        world does not have.
    """
    from nucdata.labels import MERGED_LABEL_SETS, OWN_LABEL_SET, label_set
    from nucdata_models.merge import label_columns
    from nucdata_models.merge.bridge import source_columns

    if channels not in (3, 4):
        raise InvalidArgumentError(f"channels must be 3 or 4, got {channels}")
    if other_sets not in ("mapped", "missing"):
        raise InvalidArgumentError(f"other_sets must be 'mapped' or 'missing', got {other_sets!r}")
    datasets = list(datasets) if datasets is not None else default_datasets()
    unknown = [d for d in datasets if d not in entries()]
    if unknown:
        raise InvalidArgumentError(f"the world has no dataset {', '.join(unknown)}; choose from "
                                   f"{', '.join(entries())}")
    label_sets = list(label_sets) if label_sets is not None else list(MERGED_LABEL_SETS)
    the_world = _world(world, seed)
    rng = np.random.default_rng(seed)
    n = per_dataset * len(datasets)
    kinds = np.empty(n, np.int64)
    crops = np.empty((n, channels, size, size), np.uint8)
    codes = np.full(n, -1, np.int64)
    for d, name in enumerate(datasets):
        sel = slice(d * per_dataset, (d + 1) * per_dataset)
        kinds[sel], crops[sel] = draw_crops(the_world, name, per_dataset, size, channels, rng)
        codes[sel] = the_world.annotate(name, kinds[sel].tolist())
    dataset_index = np.repeat(np.arange(len(datasets)), per_dataset)
    specs = [LabelSetSpec(ls.name, ls.version, tuple(ls.names)) for ls in map(label_set, label_sets)]
    labels, candidates, provenance, truth = {}, {}, {}, {}
    for spec in specs:
        lab = np.full(n, -1, np.int64)
        cand = np.zeros(n, np.int64)
        prov = np.full(n, NO_LABEL, np.int8)
        for d, name in enumerate(datasets):
            if other_sets == "missing" and OWN_LABEL_SET.get(name) != spec.name:
                continue
            sel = slice(d * per_dataset, (d + 1) * per_dataset)
            lab[sel], cand[sel], prov[sel] = label_columns(DrawnNuclei(name, codes[sel]), spec.name)
        labels[spec.name], candidates[spec.name] = torch.from_numpy(lab), torch.from_numpy(cand)
        provenance[spec.name] = torch.from_numpy(prov)
        truth[spec.name] = torch.from_numpy(the_world.truth_labels(kinds, spec.name).astype(np.int64))
    split = (rng.random(n) < val_fraction).astype(np.int64)
    sources = {name: source_columns(DrawnNuclei(name, codes[d * per_dataset:(d + 1) * per_dataset]))
               for d, name in enumerate(datasets)}
    return TrainingData(
        crops=torch.from_numpy(crops), label_sets=specs, labels=labels, candidates=candidates,
        dataset_index=torch.from_numpy(dataset_index), dataset_names=datasets,
        split=torch.from_numpy(split), truth=truth, provenance=provenance,
        source_class=torch.from_numpy(np.concatenate([sources[name][0] for name in datasets]).astype(np.int64)),
        source_names={name: sources[name][1] for name in datasets},
    )


def table_disagreements(world: World | None = None, label_sets: Sequence[str] | None = None
                        ) -> list[dict[str, Any]]:
    """Where a mapped label is not the truth: the tables' row for a type's code says otherwise.

    For each labelled dataset of the world, each latent type it draws and each label set
    other than its own: the row of the packaged tables for the code its annotators write
    gives an exact class that is not the type's true class, puts the truth outside a
    candidate set, or calls a type outside that has a class. In the default world these
    are the mitotic figures of CoNSeP and NuCLS: CoNSeP files them under "malignant
    epithelial" (NuCLS: "tumor"), NuCLS has a class of its own for them ("other" in
    CoNSeP's set).

    Returns
    -------
    list of dict
        ``dataset``, ``type``, ``code``, ``label_set``, ``mapped`` (label, candidates) and
        ``truth``.
    """
    from nucdata.labels import MERGED_LABEL_SETS, OWN_LABEL_SET, label_set, translate

    world = world if world is not None else World()
    label_sets = list(label_sets) if label_sets is not None else list(MERGED_LABEL_SETS)
    out = []
    for dataset, table in world.native.items():
        for kind, type_name in enumerate(TYPE_NAMES):
            code = table[type_name]
            if code is None:
                continue
            for s in label_sets:
                if OWN_LABEL_SET.get(dataset) == s:
                    continue
                lab, cand = (int(v[0]) for v in translate(dataset, np.array([code]), s))
                true = int(world.truth_labels(np.array([kind]), s)[0])
                outside_bit = 1 << len(label_set(s).names)
                if lab >= 0 or lab == -2:
                    agrees = lab == true
                elif cand:
                    agrees = bool(cand & ((1 << true) if true >= 0 else outside_bit))
                else:
                    agrees = True  # no information is never wrong
                if not agrees:
                    out.append({"dataset": dataset, "type": type_name, "code": code, "label_set": s,
                                "mapped": (lab, cand), "truth": true})
    return out


def make_world_data(per_dataset: int = 200, size: int = 32, seed: int = 0, channels: int = 3,
                    val_fraction: float = 0.2, **kwargs) -> TrainingData:
    """Alias of :func:`make_synthetic_data` (kept for earlier callers)."""
    return make_synthetic_data(per_dataset=per_dataset, size=size, seed=seed, channels=channels,
                               val_fraction=val_fraction, **kwargs)
