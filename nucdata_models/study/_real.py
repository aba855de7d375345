"""The real-data study: CRCHisto's real classes hidden behind coarser label sets, filled back and scored.

CRCHisto (Sirinukunwattana et al., IEEE TMI 2016) marks every nucleus centre of its H&E
images and classifies most of them as epithelial, inflammatory, fibroblast or
miscellaneous (the ``crchisto`` label set). This module turns one copy of it (any subset
of its images, in the official layout) into the situation the method is for, datasets
labelled at different granularity, with the real classes kept aside as the truth:

* **Groups** (:func:`image_groups`). No official split exists, and the images come from
  10 whole-slide images whose image-to-slide map is not published. The images are grouped
  into pseudo-slides by their stain (Ward clustering of per-image optical-density
  statistics: images of one slide share its staining and scanning); the groups are the
  unit of every split and of the bootstrap, so no pseudo-slide is both trained on and
  scored. ``grouping="image"`` makes every image its own group instead.
* **Datasets** (:func:`partition`). Each group is one dataset's: ``crchisto-fine`` keeps
  the real four-class annotation; each coarse dataset keeps only a coarser label set
  derived from the real classes (:data:`DERIVED_SETS`: ``crc-epithelial`` =
  {epithelial, non-epithelial}, ``crc-inflammatory`` = {inflammatory, other}, ...). The
  mapping tables between the sets follow from the derivation (:func:`derived_table`): a
  coarse class that holds one fine class is an exact row, one that holds several an
  ambiguous row. Held-out groups (split ``TEST``) belong to the coarse datasets only, so
  their fine labels are what the method must fill; validation is a share of the images
  of the training groups (it calibrates, it is never scored).
* **The world** (:func:`prepare_real_world`): a :class:`RealWorld`, a
  :class:`~nucdata_models.study.PreparedWorld` whose truth is the real annotation, so
  :func:`~nucdata_models.study.run_arms`, :func:`~nucdata_models.study.summarise` and
  :func:`~nucdata_models.study.render_markdown` run every arm on it unchanged. Points-only
  nuclei: every crop is centred on its marked centre (``nucdata.views.crops_of`` centres
  a box-only nucleus's window on its one-pixel box). Detected but unclassified nuclei of
  training groups stay in the pool unlabelled (stage C's unlabelled nuclei); real
  MoNuSeg and TNBC nuclei may join as unlabelled datasets, cut at CRCHisto's µm/px.
* **Multitask transfer** (:func:`transfer_study`; Tellez et al., MIDL 2020): encoders
  trained on 1, 2 and 3 of the derived coarse tasks (every subset), frozen; a linear
  probe on the fine task, trained on the training groups' fine labels and scored on the
  held-out groups; against an encoder trained on the fine task and a random one.

``benchmarks/real_study.py`` runs it and ``docs/real-study.md`` reports it.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nucdata.errors import InvalidArgumentError, MissingFilesError
from nucdata_models.data import AMBIGUOUS, ANNOTATED, MAPPED, NO_LABEL, LabelSetSpec, TrainingData
from nucdata_models.merge import TEST
from nucdata_models.metrics import accuracy_from_confusion, macro_f1_from_confusion
from nucdata_models.study._run import PreparedWorld
from nucdata_models.study._stats import (
    ALPHA,
    EQUIVALENCE_MARGIN,
    bootstrap_p,
    cluster_confusions,
    hierarchical_resamples,
    holm,
    percentile_ci,
    resampled_mean,
    tost_p,
    verdict,
)

__all__ = ["DERIVED_SETS", "FINE_SET", "STUDY_SETS", "TRANSFER_TASKS", "DerivedSet", "RealWorld", "derived_table",
           "image_groups", "partition", "points_only", "prepare_real_world", "render_transfer_markdown",
           "study_classifier", "transfer_study"]

#: The fine label set: CRCHisto's own four classes (``nucdata.labels.label_set("crchisto")``).
FINE_SET = "crchisto"
#: Split codes of :attr:`TrainingData.split` (``nucdata_models.merge.splits``): train, validation, test.
TRAIN, VALIDATION = 0, 1


@dataclass(frozen=True)
class DerivedSet:
    """A coarser label set derived from CRCHisto's four real classes.

    Attributes
    ----------
    name
        The set's name (and, with ``crchisto-`` before its tail, the name of the dataset
        that annotates in it: ``crc-epithelial`` -> ``crchisto-epithelial``).
    classes
        Its class names, in id order.
    of_fine
        Per fine class id (epithelial, inflammatory, fibroblast, miscellaneous), its
        class id here.
    """

    name: str
    classes: tuple[str, ...]
    of_fine: tuple[int, ...]

    @property
    def dataset(self) -> str:
        """The name of the dataset that annotates in this set."""
        return "crchisto-" + self.name.removeprefix("crc-")


#: The derived sets. Each merges real classes as a dataset with a coarser vocabulary would.
DERIVED_SETS: dict[str, DerivedSet] = {d.name: d for d in (
    DerivedSet("crc-epithelial", ("epithelial", "non-epithelial"), (0, 1, 1, 1)),
    DerivedSet("crc-inflammatory", ("inflammatory", "other"), (1, 0, 1, 1)),
    DerivedSet("crc-three", ("epithelial", "inflammatory", "stroma-or-other"), (0, 1, 2, 2)),
)}
#: The coarse datasets of the method study (the issue's two examples).
STUDY_SETS = ("crc-epithelial", "crc-inflammatory")
#: The derived tasks of the transfer study.
TRANSFER_TASKS = ("crc-epithelial", "crc-inflammatory", "crc-three")
#: Name of the dataset that keeps the fine annotation.
FINE_DATASET = "crchisto-fine"


def _projection(name: str, fine_classes: int) -> np.ndarray:
    """Per fine class id, its class id in set ``name`` (the identity for the fine set)."""
    if name == FINE_SET:
        return np.arange(fine_classes)
    if name not in DERIVED_SETS:
        raise InvalidArgumentError(f"unknown derived label set {name!r}; pass {FINE_SET!r} or one of "
                                   f"{', '.join(DERIVED_SETS)}")
    return np.asarray(DERIVED_SETS[name].of_fine, np.int64)


def derived_table(source: str, target: str, fine_classes: int = 4) -> list[dict[str, Any]]:
    """The mapping table from label set ``source`` into ``target``, derived from the real classes.

    A class ``a`` of ``source`` is the union of the fine classes it holds; its row into
    ``target`` lists the target classes those fine classes fall into: one class is an
    exact row, several an ambiguous row (every derived class holds a fine class, so
    there is no outside row).

    Returns
    -------
    list of dict
        One row per source class: ``{"source", "class", "target", "candidates"
        (target class ids), "kind" ("exact" or "ambiguous")}``.
    """
    src, dst = _projection(source, fine_classes), _projection(target, fine_classes)
    rows = []
    for a in range(int(src.max()) + 1):
        candidates = sorted({int(dst[f]) for f in range(fine_classes) if src[f] == a})
        rows.append({"source": source, "class": a, "target": target, "candidates": candidates,
                     "kind": "exact" if len(candidates) == 1 else "ambiguous"})
    return rows


# -- groups and partition -------------------------------------------------------------------
def _stain_features(store) -> np.ndarray:
    """Per image: mean and 90th percentile of the optical density of each RGB channel over tissue pixels."""
    feats = []
    for i in range(store.n_images):
        rgb = np.asarray(store.rgb(i), np.float64).reshape(-1, 3)
        od = -np.log((rgb + 1.0) / 256.0)
        tissue = od.sum(1) > 0.3  # background (white) has almost no density
        o = od[tissue] if tissue.sum() >= 16 else od
        feats.append(np.r_[o.mean(0), np.percentile(o, 90, axis=0)])
    return np.asarray(feats, np.float64)


def image_groups(store, n_groups: int = 10, grouping: str = "stain") -> np.ndarray:
    """Per image of ``store``, its group id (``0 .. G-1``): pseudo-slides by stain, or the image.

    Parameters
    ----------
    store
        The CRCHisto store (``nucdata.load("crchisto").store``).
    n_groups
        ``"stain"``: the number of pseudo-slides (default 10, the dataset's 10 whole-slide
        images), at most the number of images.
    grouping
        ``"stain"``: Ward clustering (``scipy.cluster.hierarchy``) of the standardised
        per-image optical-density statistics (mean and 90th percentile per RGB channel
        over tissue pixels), cut into ``n_groups`` clusters; ``"image"``: every image
        its own group.

    Returns
    -------
    numpy.ndarray
        int64 ``(n_images,)``, groups numbered by their first image.
    """
    n = int(store.n_images)
    if grouping == "image":
        return np.arange(n, dtype=np.int64)
    if grouping != "stain":
        raise InvalidArgumentError(f"grouping={grouping!r}; pass 'stain' (pseudo-slides) or 'image'")
    if n_groups < 1:
        raise InvalidArgumentError(f"n_groups={n_groups}; pass at least 1")
    k = min(int(n_groups), n)
    if k == n:
        return np.arange(n, dtype=np.int64)
    from scipy.cluster.hierarchy import fcluster, linkage

    feats = _stain_features(store)
    spread = feats.std(0)
    z = (feats - feats.mean(0)) / np.where(spread > 0, spread, 1.0)
    raw = fcluster(linkage(z, "ward"), k, "maxclust")
    order = {c: i for i, c in enumerate(dict.fromkeys(raw.tolist()))}
    return np.asarray([order[c] for c in raw.tolist()], np.int64)


def partition(groups: np.ndarray, datasets: Sequence[str], seed: int, test: float = 0.4,
              validation: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Which dataset and which split each image belongs to.

    Held-out groups (split ``TEST``) are drawn at random (``seed``) until they hold at
    least ``test`` of the images, at least one per coarse dataset, leaving at least one
    group per dataset for training; they go to the coarse datasets (``datasets[1:]``),
    each in turn to the one with the fewest held-out images. The other groups go to
    every dataset the same way (largest group first, to the dataset with the fewest
    images), the fine dataset (``datasets[0]``) first on ties. Within each dataset's
    training groups, ``validation`` of its images (at least one where it has two or
    more) are drawn for validation.

    Returns
    -------
    role, split
        int64 ``(n_images,)``: the index into ``datasets`` of each image's dataset, and
        its split code (0 train, 1 validation, 2 test).
    """
    groups = np.asarray(groups, np.int64)
    ids = np.unique(groups)
    need = len(datasets) + len(datasets) - 1
    if len(datasets) < 2:
        raise InvalidArgumentError("partition needs the fine dataset and at least one coarse dataset")
    if ids.size < need:
        raise InvalidArgumentError(f"{ids.size} image groups are too few for {len(datasets)} datasets: every "
                                   f"dataset needs a training group and every coarse one a held-out group "
                                   f"({need} groups); pass more images, more --groups, or --grouping image")
    rng = np.random.default_rng(seed)
    size = {int(g): int((groups == g).sum()) for g in ids}
    order = [int(g) for g in rng.permutation(ids)]
    coarse = len(datasets) - 1
    held: list[int] = []
    for g in order:
        enough = len(held) >= coarse and sum(size[h] for h in held) >= test * groups.size
        if enough or len(order) - len(held) <= len(datasets):
            break
        held.append(g)
    role_of: dict[int, int] = {}
    load = np.zeros(len(datasets), np.int64)
    for g in sorted(held, key=lambda g: (-size[g], order.index(g))):
        d = 1 + int(np.argmin(load[1:]))
        role_of[g] = d
        load[d] += size[g]
    load[:] = 0
    rest = [g for g in order if g not in held]
    empty = list(range(len(datasets)))
    for g in sorted(rest, key=lambda g: (-size[g], order.index(g))):
        d = empty.pop(0) if empty else int(np.argmin(load))
        role_of[g] = d
        load[d] += size[g]
    role = np.asarray([role_of[int(g)] for g in groups], np.int64)
    split = np.where(np.isin(groups, held), TEST, TRAIN).astype(np.int64)
    for d in range(len(datasets)):
        mine = np.flatnonzero((role == d) & (split == TRAIN))
        if mine.size >= 2:
            k = min(mine.size - 1, max(1, round(validation * mine.size)))
            split[rng.choice(mine, k, replace=False)] = VALIDATION
    return role, split


# -- the world --------------------------------------------------------------------------------
@dataclass
class RealWorld(PreparedWorld):
    """A :class:`~nucdata_models.study.PreparedWorld` built from real CRCHisto images.

    ``data.truth`` is the real annotation in every set (the fine class, projected into
    each derived set; -3 for a nucleus without a class). Beyond the parent's fields:

    Attributes
    ----------
    fine
        int64 ``(N,)``: per nucleus of ``data``, its real fine class (-1 none).
    design
        What was built: per image its name, group, dataset and split; the datasets and
        the label set each annotates in; the tables; the caps and counts.
    """

    fine: np.ndarray | None = None
    design: dict[str, Any] = field(default_factory=dict)


def _prepare_monuseg(source: Path, home: Path, scratch: Path) -> Any:
    """MoNuSeg's real training pairs through its converter: the last pair stands in as the test folder.

    The converter wants the training folder and the test folder; a partial copy has the
    first only. Its pairs are linked into a scratch layout with one pair as
    ``MoNuSegTestData/`` (the split is irrelevant here: every nucleus is unlabelled).
    """
    import nucdata

    images = sorted((p for p in source.rglob("*.tif") if not p.name.startswith("._")), key=lambda p: p.name)
    pairs = [(p, next(iter(source.rglob(p.stem + ".xml")), None)) for p in images]
    pairs = [(i, x) for i, x in pairs if x is not None]
    if len(pairs) < 2:
        raise MissingFilesError(f"{source}: fewer than two MoNuSeg image/XML pairs (*.tif with its *.xml); pass "
                                "the folder of 'Tissue Images/' and 'Annotations/'")
    layout = scratch / "monuseg"
    for sub in ("train/Tissue Images", "train/Annotations", "MoNuSegTestData"):
        (layout / sub).mkdir(parents=True, exist_ok=True)
    for k, (image, xml) in enumerate(pairs):
        if k == len(pairs) - 1:
            (layout / "MoNuSegTestData" / image.name).symlink_to(image.resolve())
            (layout / "MoNuSegTestData" / xml.name).symlink_to(xml.resolve())
        else:
            (layout / "train/Tissue Images" / image.name).symlink_to(image.resolve())
            (layout / "train/Annotations" / xml.name).symlink_to(xml.resolve())
    nucdata.prepare("monuseg", from_dir=layout, root=home, download=False, check_counts=False)
    return nucdata.load("monuseg", root=home)


def _unlabelled_crops(name: str, source: Path, home: Path, scratch: Path, crop: int, mpp: float,
                      assume_mpp: float) -> tuple[torch.Tensor, np.ndarray, int]:
    """Crops of a real unlabelled dataset at ``mpp``, their image ids, and its image count."""
    import nucdata
    from nucdata.views import crops_of

    if name == "monuseg":
        ds = _prepare_monuseg(source, home, scratch)
    elif name == "tnbc":
        nucdata.prepare("tnbc", from_dir=source, root=home, download=False, check_counts=False)
        ds = nucdata.load("tnbc", root=home)
    else:
        raise InvalidArgumentError(f"unlabelled dataset {name!r}: pass monuseg or tnbc")
    crops = crops_of([ds], crop, mpp=mpp, assume_mpp=assume_mpp).tensor().clone()
    return crops, np.asarray(ds.store.column("nuclei", "image"), np.int64), int(ds.store.n_images)


def _cap(index: np.ndarray, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    if cap is None or index.size <= cap:
        return index
    return np.sort(rng.choice(index, int(cap), replace=False))


def prepare_real_world(data_dir: str | Path, seed: int, crop: int = 24, *, coarse: Sequence[str] = STUDY_SETS,
                       n_groups: int = 10, grouping: str = "stain", test: float = 0.4, validation: float = 0.1,
                       max_train: int | None = None, max_validation: int | None = None,
                       unlabelled: Mapping[str, str | Path] | None = None, max_unlabelled: int | None = None,
                       say: Callable[[str], None] = print) -> RealWorld:
    """Prepare a copy of CRCHisto, group and partition its images, and build the study's world.

    Parameters
    ----------
    data_dir
        A folder in CRCHisto's official layout (``Detection/imgN/...``,
        ``Classification/imgN/...``; any subset of the images). It is converted by
        ``nucdata.prepare("crchisto", from_dir=...)`` into a temporary data home,
        removed afterwards.
    seed
        The partition seed (the study's "world seed"): which groups are held out, which
        dataset each group is, the validation images and the caps' draws.
    crop
        Crop side in pixels, at CRCHisto's native resolution.
    coarse
        The coarse datasets, by their label sets (:data:`DERIVED_SETS`).
    n_groups, grouping
        :func:`image_groups`.
    test, validation
        :func:`partition`.
    max_train, max_validation
        At most this many training (validation) nuclei, drawn at random; the others of
        those images leave the data (``None``: all). Held-out nuclei with a class are
        all kept; held-out nuclei without one are never scored and are left out.
    unlabelled
        Optional ``{"monuseg" | "tnbc": folder}`` of real files joining as unlabelled
        datasets (training split, no label in any set), cut at CRCHisto's nominal µm/px
        (the card's ``mpp_default``) from MoNuSeg's 0.25 µm/px (its card) and TNBC's
        assumed 0.25 (40x; no value is published). Folders that do not exist are skipped.
    max_unlabelled
        At most this many nuclei per unlabelled dataset.
    say
        Progress lines.

    Returns
    -------
    RealWorld

    Raises
    ------
    MissingFilesError
        When ``data_dir`` does not exist or is not in CRCHisto's layout.
    InvalidArgumentError
        For an unknown coarse set, or too few images for the partition.
    """
    import nucdata
    from nucdata.catalog import get_card
    from nucdata.labels import label_set, translate_store_labels

    start = time.perf_counter()
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise MissingFilesError(f"{data_dir}: no such folder; pass a copy of CRCHisto in its official layout "
                                "(Detection/imgN/, Classification/imgN/)")
    unknown = [c for c in coarse if c not in DERIVED_SETS]
    if unknown or not coarse:
        raise InvalidArgumentError(f"coarse sets {list(coarse)}: pass one or more of {', '.join(DERIVED_SETS)}")
    fine_set = label_set(FINE_SET)
    fine_spec = LabelSetSpec(fine_set.name, fine_set.version, tuple(fine_set.names))
    k_fine = fine_spec.size
    specs = [fine_spec] + [LabelSetSpec(c, "derived-1", DERIVED_SETS[c].classes) for c in coarse]
    set_names = [s.name for s in specs]
    datasets = [FINE_DATASET] + [DERIVED_SETS[c].dataset for c in coarse]
    rng = np.random.default_rng(seed)
    target_mpp = float(get_card("crchisto").extra.get("mpp_default") or 0.55)
    with tempfile.TemporaryDirectory(prefix="nucdata-real-study-") as tmp:
        home = Path(tmp) / "home"
        nucdata.prepare("crchisto", from_dir=data_dir, root=home, download=False, check_counts=False)
        ds = nucdata.load("crchisto", root=home)
        store = ds.store
        fine_all, _ = translate_store_labels(store, FINE_SET)
        fine_all = np.where(np.asarray(fine_all) >= 0, fine_all, -1).astype(np.int64)
        image_all = np.asarray(store.column("nuclei", "image"), np.int64)
        names = [str(n) for n in np.asarray(store.column("images", "name"))]
        groups = image_groups(store, n_groups, grouping)
        role, split_img = partition(groups, datasets, seed, test, validation)
        crops_all = ds.crops(size=crop).tensor()
        split_all = split_img[image_all]
        keep_train = _cap(np.flatnonzero(split_all == TRAIN), max_train, rng)
        keep_val = _cap(np.flatnonzero(split_all == VALIDATION), max_validation, rng)
        keep_test = np.flatnonzero((split_all == TEST) & (fine_all >= 0))
        keep = np.sort(np.concatenate([keep_train, keep_val, keep_test]))
        crops = [crops_all[torch.from_numpy(keep)].clone()]
        fine = fine_all[keep]
        image = image_all[keep]
        split = split_all[keep]
        member = role[image]
        extra_names: list[str] = []
        image_offset = int(store.n_images)
        images = [image]
        unlabelled_counts: dict[str, dict[str, int]] = {}
        for name, folder in (unlabelled or {}).items():
            folder = Path(folder)
            if not folder.is_dir():
                say(f"unlabelled {name}: {folder} is not there; skipped")
                continue
            extra, extra_image, n_extra_images = _unlabelled_crops(name, folder, home, Path(tmp), crop, target_mpp,
                                                                   0.25)
            picked = _cap(np.arange(extra.shape[0]), max_unlabelled, rng)
            mask = crops[0][:, 3:] if crops[0].shape[1] == 4 else None
            part = extra[torch.from_numpy(picked)]
            if mask is not None and part.shape[1] == 4:
                # points only, as CRCHisto: the mask channel is the one pixel at the crop's centre
                part[:, 3] = 0
                centre = np.unravel_index(int(mask.float().mean(0)[0].argmax()), mask.shape[-2:])
                part[:, 3, centre[0], centre[1]] = 255
            crops.append(part)
            extra_names.append(name)
            member = np.concatenate([member, np.full(picked.size, len(datasets) + len(extra_names) - 1)])
            fine = np.concatenate([fine, np.full(picked.size, -1)])
            split = np.concatenate([split, np.full(picked.size, TRAIN)])
            images.append(extra_image[picked] + image_offset)
            image_offset += n_extra_images
            unlabelled_counts[name] = {"images": n_extra_images, "nuclei": int(extra.shape[0]),
                                       "used": int(picked.size)}
            say(f"unlabelled {name}: {picked.size:,} of {extra.shape[0]:,} real nuclei in {n_extra_images} images, "
                f"cut at {target_mpp} µm/px")
        crops_t = torch.cat(crops)
        store_counts = {"images": int(store.n_images), "nuclei": int(store.n_nuclei),
                        "classified": int((fine_all >= 0).sum()),
                        "per_class": {c: int((fine_all == i).sum()) for i, c in enumerate(fine_spec.class_names)}}
    all_names = datasets + extra_names
    n = crops_t.shape[0]
    projections = {s: _projection(s, k_fine) for s in set_names}
    labels, candidates, provenance, truth = {}, {}, {}, {}
    own_set = {d: set_names[i] for i, d in enumerate(datasets)}
    source_class = np.full(n, -1, np.int64)
    for d, ds_name in enumerate(datasets):
        rows = (member == d) & (fine >= 0)
        source_class[rows] = projections[own_set[ds_name]][fine[rows]]
    tables = [row for a in set_names for b in set_names if a != b for row in derived_table(a, b, k_fine)]
    for spec in specs:
        s = spec.name
        proj = projections[s]
        lab = np.full(n, -1, np.int64)
        cand = np.zeros(n, np.int64)
        prov = np.full(n, NO_LABEL, np.int8)
        for d, ds_name in enumerate(datasets):
            rows = np.flatnonzero((member == d) & (fine >= 0))
            own = own_set[ds_name]
            if own == s:
                lab[rows] = proj[fine[rows]]
                cand[rows] = 1 << lab[rows]
                prov[rows] = ANNOTATED
                continue
            for row in derived_table(own, s, k_fine):
                hit = rows[source_class[rows] == row["class"]]
                bits = sum(1 << c for c in row["candidates"])
                cand[hit] = bits
                if row["kind"] == "exact":
                    lab[hit] = row["candidates"][0]
                    prov[hit] = MAPPED
                else:
                    prov[hit] = AMBIGUOUS
        labels[s], candidates[s] = torch.from_numpy(lab), torch.from_numpy(cand)
        provenance[s] = torch.from_numpy(prov)
        truth[s] = torch.from_numpy(np.where(fine >= 0, proj[np.clip(fine, 0, None)], -3).astype(np.int64))
    source_names = {ds_name: dict(enumerate(next(sp for sp in specs if sp.name == own_set[ds_name]).class_names))
                    for ds_name in datasets}
    data = TrainingData(
        crops=crops_t, label_sets=specs, labels=labels, candidates=candidates,
        dataset_index=torch.from_numpy(member.astype(np.int64)), dataset_names=all_names,
        split=torch.from_numpy(split.astype(np.int64)), truth=truth, mpp=target_mpp, provenance=provenance,
        source_class=torch.from_numpy(source_class), source_names=source_names)
    image_all_ids = np.concatenate(images)
    # the bootstrap's clusters: the held-out groups (numbered 0..H-1; -1 elsewhere, never scored)
    n_crc = len(image)
    held = np.unique(groups[split_img == TEST])
    cluster = np.full(n, -1, np.int64)
    test_rows = np.flatnonzero(split[:n_crc] == TEST)
    cluster[test_rows] = np.searchsorted(held, groups[image[test_rows]])
    nuclei = {name: int((member == i).sum()) for i, name in enumerate(all_names)}
    design = {
        "datasets": {d: own_set[d] for d in datasets} | {e: None for e in extra_names},
        "grouping": grouping, "groups": int(np.unique(groups).size), "held_out_groups": int(held.size),
        "images": [{"name": names[i], "group": int(groups[i]), "dataset": datasets[role[i]],
                    "split": ["train", "validation", "test"][int(split_img[i])]} for i in range(len(names))],
        "tables": tables, "store": store_counts, "unlabelled": unlabelled_counts,
        "caps": {"max_train": max_train, "max_validation": max_validation, "max_unlabelled": max_unlabelled},
        "mpp": target_mpp, "crop": crop,
        "nuclei_by_split": {name: {sp: int(((member == i) & (split == code)).sum())
                                   for sp, code in (("train", TRAIN), ("validation", VALIDATION), ("test", TEST))}
                            for i, name in enumerate(all_names)},
    }
    key = ("stain cluster (pseudo-slide: Ward clustering of per-image optical-density statistics)"
           if grouping == "stain" else "image")
    world = RealWorld(seed, "crchisto", data, image_all_ids, image_offset, {}, nuclei,
                      np.bincount(split, minlength=4).tolist(), time.perf_counter() - start, cluster, int(held.size),
                      {d: key for d in datasets}, fine=fine, design=design)
    say(f"CRCHisto partition {seed}: {store_counts['images']} images in {design['groups']} groups "
        f"({held.size} held out), {n:,} nuclei in the data (split train/validation/test "
        f"{world.split_counts[:3]}); datasets " + ", ".join(f"{k} {v:,}" for k, v in nuclei.items())
        + f"; prepared in {world.seconds:.1f} s")
    return world


# -- multitask transfer ---------------------------------------------------------------------
def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips and 90-degree rotations per sample (the eight symmetries of the square)."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None].to(x.device), x.flip(-1), x)
    turns = torch.randint(0, 4, (x.shape[0],), generator=generator)
    out = x.clone()
    for k in (1, 2, 3):
        rows = turns == k
        if bool(rows.any()):
            out[rows.to(x.device)] = torch.rot90(x[rows.to(x.device)], k, (-2, -1))
    return out


def _train_encoder(crops: torch.Tensor, targets: Mapping[str, torch.Tensor], sizes: Mapping[str, int],
                   epochs: int, batch_size: int, seed: int, device: torch.device, encoder: str,
                   mean: torch.Tensor, std: torch.Tensor) -> nn.Module:
    """An encoder with one linear head per task, trained on the mean cross-entropy of the tasks."""
    from nucdata_models.encoders import build_encoder

    torch.manual_seed(seed)
    enc = build_encoder(encoder, crops.shape[1]).to(device)
    if not targets:  # the random encoder: batch-norm statistics from one pass over the crops, no gradient
        enc.train()
        for m in enc.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over the pass
        with torch.no_grad():
            for start in range(0, crops.shape[0], 256):
                enc(((crops[start:start + 256].to(device).float() / 255) - mean) / std)
        return enc.eval()
    heads = nn.ModuleDict({t: nn.Linear(enc.out_features, sizes[t]) for t in targets}).to(device)
    opt = torch.optim.Adam([*enc.parameters(), *heads.parameters()], lr=1e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    n = crops.shape[0]
    enc.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n - (n % batch_size if n > batch_size else 0), batch_size):
            idx = perm[start:start + batch_size]
            if idx.numel() < 2:
                continue
            x = _augment(crops[idx], gen).to(device).float() / 255
            features = enc((x - mean) / std)
            loss = torch.stack([nn.functional.cross_entropy(heads[t](features), y[idx].to(device))
                                for t, y in targets.items()]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return enc.eval()


@torch.inference_mode()
def _features(enc: nn.Module, crops: torch.Tensor, device: torch.device, mean: torch.Tensor,
              std: torch.Tensor) -> torch.Tensor:
    parts = [enc(((crops[s:s + 512].to(device).float() / 255) - mean) / std).float().cpu()
             for s in range(0, crops.shape[0], 512)]
    return torch.cat(parts) if parts else torch.zeros(0, getattr(enc, "out_features", 1))


def _linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, classes: int,
                  l2: float = 1e-3) -> torch.Tensor:
    """Multinomial logistic regression on standardised frozen features (L-BFGS, L2): test predictions."""
    mu, sd = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    a, b = ((train_x - mu) / sd).double(), ((test_x - mu) / sd).double()
    w = torch.zeros(a.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], lr=1, max_iter=200, line_search_fn="strong_wolfe")
    y = train_y.long()

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(a @ w + bias, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (b @ w + bias).argmax(1)


def _subset_name(tasks: Sequence[str]) -> str:
    return "+".join(tasks)


def transfer_study(worlds: Mapping[int, RealWorld], train_seeds: Sequence[int], epochs: int, batch_size: int = 64,
                   tasks: Sequence[str] = TRANSFER_TASKS, device: str = "cpu", encoder: str = "small",
                   draws: int = 2000, margin: float = EQUIVALENCE_MARGIN,
                   say: Callable[[str], None] = print) -> dict[str, Any]:
    """Does an encoder trained on more coarse tasks transfer better to the fine task (Tellez et al. 2020)?

    On each world's training nuclei that carry a real class (every dataset's training
    groups; the unlabelled nuclei and the validation images take no part), one encoder
    per non-empty subset of ``tasks`` is trained on those tasks' labels (derived from
    the real class of every nucleus; one linear head per task, the mean cross-entropy,
    Adam 1e-3, random flips and rotations, ``epochs`` epochs: the same steps for every
    encoder), plus one on the fine task itself and an untrained one (random weights,
    batch-norm statistics from one pass over the crops). Each is frozen; a linear probe
    (multinomial logistic regression, L2 1e-3, on standardised features) learns the
    fine task on the same training nuclei and predicts the held-out groups' nuclei.

    Returns
    -------
    dict
        ``"config"``; ``"encoders"``: per encoder (``random``, ``fine``, each subset
        ``a+b``) and per number of tasks (``"1 task"``, ``"2 tasks"``, ...: the mean over
        its subsets) ``macro_f1`` and ``accuracy`` as ``{"mean", "ci", "per_seed"}``;
        ``"differences"``: the declared family (every k tasks against ``random`` and
        ``fine``, and each k against k - 1), per row ``mean``, ``ci``, ``p``, ``p_holm``,
        ``p_tost``, ``p_tost_holm``, ``verdict``; ``"runs"``: seconds per encoder.
        Intervals: the hierarchical bootstrap of the method study over partitions,
        training seeds and held-out groups.
    """
    dev = torch.device(device)
    unknown = [t for t in tasks if t not in DERIVED_SETS]
    if unknown or not tasks:
        raise InvalidArgumentError(f"transfer tasks {list(tasks)}: pass one or more of {', '.join(DERIVED_SETS)}")
    subsets = [tuple(c) for k in range(1, len(tasks) + 1) for c in itertools.combinations(tasks, k)]
    names = ["random", "fine"] + [_subset_name(s) for s in subsets]
    tallies: dict[str, dict[tuple[int, int], np.ndarray]] = {n: {} for n in names}
    runs = []
    k_fine = 0
    for w, world in worlds.items():
        data, fine = world.data, np.asarray(world.fine)
        k_fine = data.label_sets[0].size
        train = np.flatnonzero((data.split.numpy() == TRAIN) & (fine >= 0))
        test = np.flatnonzero((data.split.numpy() == TEST) & (fine >= 0))
        if train.size == 0 or test.size == 0:
            raise InvalidArgumentError(f"partition {w}: {train.size} training and {test.size} held-out nuclei with a "
                                       "class; the transfer study needs both")
        rgb = data.crops[:, :3]
        x_train, x_test = rgb[torch.from_numpy(train)], rgb[torch.from_numpy(test)]
        as_float = x_train.float() / 255
        mean = as_float.mean((0, 2, 3)).view(1, -1, 1, 1).to(dev)
        std = as_float.std((0, 2, 3)).clamp_min(1e-3).view(1, -1, 1, 1).to(dev)
        y_fine = torch.from_numpy(fine[train])
        truth_test = fine[test]
        cluster, n_clusters = world.clusters
        groups = cluster[test]
        derived = {t: torch.from_numpy(np.asarray(DERIVED_SETS[t].of_fine)[fine[train]]) for t in tasks}
        sizes = {t: len(DERIVED_SETS[t].classes) for t in tasks} | {FINE_SET: k_fine}
        plan = {"random": {}, "fine": {FINE_SET: y_fine}} | {_subset_name(s): {t: derived[t] for t in s}
                                                             for s in subsets}
        for seed in train_seeds:
            for name, targets in plan.items():
                start = time.perf_counter()
                enc = _train_encoder(x_train, targets, sizes, epochs, batch_size, seed, dev, encoder, mean, std)
                guess = _linear_probe(_features(enc, x_train, dev, mean, std), y_fine,
                                      _features(enc, x_test, dev, mean, std), k_fine).numpy()
                tallies[name][w, seed] = cluster_confusions(truth_test, guess, groups, n_clusters, k_fine)
                seconds = time.perf_counter() - start
                f1 = float(macro_f1_from_confusion(tallies[name][w, seed].sum(0), k_fine, fixed=True))
                runs.append({"encoder": name, "world_seed": w, "train_seed": seed, "seconds": round(seconds, 1),
                             "macro_f1": f1})
                say(f"  transfer {name} (partition {w}, seed {seed}): probe macro F1 {f1:.3f}, {seconds:.1f} s")
    design = {w: (list(train_seeds), world.clusters[1]) for w, world in worlds.items()}
    resamples = hierarchical_resamples(design, draws, 0)
    metrics = {"macro_f1": lambda cm: macro_f1_from_confusion(cm, k_fine, fixed=True),
               "accuracy": accuracy_from_confusion}
    encoders: dict[str, Any] = {}
    reps: dict[str, np.ndarray] = {}
    points: dict[str, float] = {}
    for name in names:
        encoders[name] = {}
        for metric, fn in metrics.items():
            point, per_run, r = resampled_mean(tallies[name], fn, resamples)
            encoders[name][metric] = {"mean": point, "ci": percentile_ci(r),
                                      "per_seed": [per_run[k] for k in sorted(per_run)]}
            if metric == "macro_f1":
                reps[name], points[name] = r, point
    by_size: dict[int, list[str]] = {}
    for s in subsets:
        by_size.setdefault(len(s), []).append(_subset_name(s))
    for k, members in by_size.items():
        label = f"{k} task" + ("s" if k > 1 else "")
        encoders[label] = {"subsets": members}
        for metric, fn in metrics.items():
            results = [resampled_mean(tallies[m], fn, resamples) for m in members]
            r = np.mean([x[2] for x in results], 0)
            point = float(np.mean([x[0] for x in results]))
            encoders[label][metric] = {"mean": point, "ci": percentile_ci(r)}
            if metric == "macro_f1":
                reps[label], points[label] = r, point
    sizes_run = sorted(by_size)
    family = [(f"{k} task" + ("s" if k > 1 else ""), ref) for k in sizes_run for ref in ("random", "fine")]
    family += [(f"{k} tasks", f"{k - 1} task" + ("s" if k - 1 > 1 else "")) for k in sizes_run if k > 1]
    differences: dict[str, Any] = {}
    for a, r in family:
        delta = reps[a] - reps[r]
        differences[f"{a} - {r}"] = {"mean": points[a] - points[r], "ci": percentile_ci(delta),
                                     "p": bootstrap_p(delta), "p_tost": tost_p(delta, margin)}
    for column in ("p", "p_tost"):
        for name, p in zip(differences, holm([d[column] for d in differences.values()]), strict=True):
            differences[name][f"{column}_holm"] = p
    for row in differences.values():
        row["verdict"] = verdict(row)
    config = {"tasks": list(tasks), "subsets": [_subset_name(s) for s in subsets], "encoder": encoder,
              "epochs": epochs, "batch_size": batch_size, "train_seeds": list(train_seeds),
              "world_seeds": sorted(worlds), "draws": draws, "equivalence_margin": margin, "alpha": ALPHA,
              "probe": "multinomial logistic regression, L2 1e-3, L-BFGS, standardised frozen features, trained on "
                       "the training groups' fine labels",
              "endpoint": "macro F1 of the probe's fine class over the 4 classes (fixed class list) on the held-out "
                          "groups' classified nuclei",
              "nuclei": {str(w): {"train": int(((world.data.split.numpy() == TRAIN) & (world.fine >= 0)).sum()),
                                  "test": int(((world.data.split.numpy() == TEST) & (world.fine >= 0)).sum())}
                         for w, world in worlds.items()},
              "family": [f"{a} - {r}" for a, r in family],
              "correction": "Holm over the family (the differences and, separately, the equivalence tests)"}
    return {"config": config, "encoders": encoders, "differences": differences, "runs": runs}


def render_transfer_markdown(transfer: dict[str, Any]) -> str:
    """The transfer study's tables as markdown, each sentence generated from the numbers."""
    config = transfer["config"]
    margin = config["equivalence_margin"]
    lines = ["## Multitask encoder transfer (Tellez et al., MIDL 2020)", "",
             f"Encoders ({config['encoder']}, {config['epochs']} epochs, batch {config['batch_size']}) trained on "
             f"1, 2 and 3 of the derived tasks {', '.join(f'`{t}`' for t in config['tasks'])} (every subset), on "
             "the fine task, or not at all (random); frozen; a linear probe "
             f"({config['probe']}). Endpoint: {config['endpoint']}. Training seeds {config['train_seeds']}, "
             f"partitions {config['world_seeds']}; 95 % hierarchical-bootstrap intervals ({config['draws']} draws "
             "over partitions, seeds and held-out groups).", "",
             "| encoder | probe macro F1 | probe accuracy |", "|---|---|---|"]
    for name, row in transfer["encoders"].items():
        f1, acc = row["macro_f1"], row["accuracy"]
        label = f"{name} (mean of {', '.join(row['subsets'])})" if "subsets" in row else name
        lines.append(f"| {label} | {f1['mean']:.3f} [{f1['ci'][0]:.3f}, {f1['ci'][1]:.3f}] | "
                     f"{acc['mean']:.3f} [{acc['ci'][0]:.3f}, {acc['ci'][1]:.3f}] |")
    lines += ["", "| difference | mean [95 % CI] | p | Holm p | TOST Holm p | verdict |", "|---|---|---|---|---|---|"]
    for name, d in transfer["differences"].items():
        lines.append(f"| {name} | {d['mean']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] | {d['p']:.3g} | "
                     f"{d['p_holm']:.3g} | {d['p_tost_holm']:.3g} | {d['verdict']} |")
    lines += ["", "What the data say (each sentence generated from the row above it):", ""]
    for name, d in transfer["differences"].items():
        a, r = name.split(" - ")
        v = d["verdict"]
        if v == "gain":
            text = f"yes: {a} transfer better than {r}"
        elif v == "loss":
            text = f"no: {a} transfer worse than {r}"
        elif v == "equivalent":
            text = f"no difference: {a} and {r} are equivalent within {margin}"
        else:
            text = f"not shown: {a} vs {r} is inconclusive (neither a difference nor equivalence within {margin})"
        lines.append(f"- {text} ({d['mean']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}], Holm p = "
                     f"{d['p_holm']:.3g}).")
    lines.append("")
    return "\n".join(lines)


# -- label-free checks on real unlabelled pixels ------------------------------------------------
def study_classifier(world: RealWorld, arm: str, base, say: Callable[[str], None] = print):
    """One arm trained on ``world`` as :func:`~nucdata_models.study.run_arms` trains it, as a :class:`Classifier`.

    The arm's plan (:func:`~nucdata_models.study.arm_plan`) with ``base``'s seed is
    trained again (on the CPU with a fixed seed the run is bit-identical to the scored
    one) and wrapped as :class:`nucdata_models.merge.Classifier`: crop size, the crops'
    µm/px (CRCHisto's nominal), and the calibration ``build-merged`` would fit
    (:func:`nucdata_models.calibration.calibrated_fill` on the validation split), so the
    label-free checks (:func:`nucdata_models.merge.label_free_checks`) publish its labels
    as a lab's images are published.
    """
    from nucdata_models.calibration import calibrated_fill
    from nucdata_models.merge import Classifier
    from nucdata_models.study._arms import DATA_VIEWS, arm_plan
    from nucdata_models.train import CrossTrainer

    plan = arm_plan(arm, base)
    start = time.perf_counter()
    trainer = CrossTrainer(plan.config)
    trainer.fit(DATA_VIEWS[plan.data](world.data))
    _, fit = calibrated_fill(trainer.predict(world.data.crops, modules=plan.modules), world.data)
    meta = {"crop_size": int(world.data.crops.shape[-1]), "in_channels": int(trainer.in_channels),
            "mpp": world.data.mpp, "mpp_range": None, "calibration": fit.to_dict(),
            "label_sets": [s.to_dict() for s in world.data.label_sets]}
    say(f"label-free checks: {arm} (partition {world.seed}, seed {plan.config.seed}) trained again in "
        f"{time.perf_counter() - start:.1f} s")
    return Classifier(trainer, meta)


def points_only(records: Sequence[Any]) -> list[Any]:
    """Real images with instance masks as points-only records (each nucleus its mask's centroid).

    The study's models are trained on CRCHisto's points (the crop's mask channel is the
    one pixel of the centre), so other datasets' nuclei are cut the same way for them.
    """
    from nucdata_models.merge import LabelFreeImage

    out = []
    for r in records:
        if r.instances is None:
            out.append(r)
            continue
        inst = np.asarray(r.instances, np.int64)
        ys, xs = np.nonzero(inst)
        ids, inverse, counts = np.unique(inst[ys, xs], return_inverse=True, return_counts=True)
        centroids = np.stack([np.bincount(inverse, xs, ids.size) / counts,
                              np.bincount(inverse, ys, ids.size) / counts], 1) if ids.size else np.zeros((0, 2))
        out.append(LabelFreeImage(r.name, r.rgb, None, r.mpp, r.dataset, centroids, r.mpp_source))
    return out
