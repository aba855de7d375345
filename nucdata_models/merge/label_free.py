"""Label-free checks of a classifier on real, unlabelled images: does the published label hold?

No label is needed to see whether a model's answer depends on things that should not
matter. For every nucleus of real images (MoNuSeg, TNBC, any folder of images with
instance masks, or a prepared store), :func:`label_free_checks` publishes its label under
every label set as :class:`~nucdata_models.merge.Classifier` does (crops cut exactly as
``build-merged`` cut them, the checkpoint's calibration for a lab's images), then again
after each perturbation, and counts how often the label changes (a *flip*):

* ``dihedral``: the 7 non-trivial flips and rotations of each crop (the dihedral group of
  the square; the crop is turned with its mask channel, as the training augmentation
  turns it: for an even crop side the centre pixel moves by one). A model trained with
  flips and rotations should barely flip anything.
* ``rescale``: the whole image resampled by 0.9 and by 1.1 (bilinear for the RGB,
  anti-aliased when shrinking; nearest for the instance map; points scaled), the same nuclei (matched by instance id;
  a nucleus that vanishes at 0.9x is counted as ``lost``) cut again at the image's stated
  µm/px, so the nuclei are 10 % smaller or larger than the model expects: an error of
  ±10 % in a scanner's stated µm/px.
* ``stain``: the image stain-normalised to each reference stain
  (:mod:`nucdata_models.stain`: Reinhard and Macenko; the image's own stain fitted from
  the image), the same nuclei and masks: the label should not depend on which lab
  stained the slide.

Beside each flip rate stands its **shuffled** baseline: the flip rate expected if the
perturbed labels were shuffled among the nuclei, ``1 - sum_c p_c q_c`` with ``p`` the
unperturbed labels' class frequencies and ``q`` the perturbed ones' (``1 - sum_c p_c²``
when the perturbation leaves the frequencies alone). It is what the label marginals alone
give; a flip rate is read against it (``ratio``: flip rate / shuffled). Labels are shuffled
within a dataset (the pooled ``all`` row's baseline is the nucleus-weighted mean of the
datasets', so that datasets with different label mixes do not inflate it). The outside
label (-2) counts as a class. Flip rates carry a 95 % interval from a bootstrap over images
(nuclei of one image are not independent).

:func:`render_label_free` writes the result as Markdown, one table per check; the result
itself is plain JSON types. :func:`real_images` and :func:`real_references` read the
shared real sample files' layouts (``monuseg/``, ``tnbc/``, ``crchisto/``).

Examples
--------
>>> from nucdata_models.merge import (Classifier, label_free_checks, real_images, real_references,
...                                    render_label_free)
>>> clf = Classifier.from_pretrained("merged/")                                    # doctest: +SKIP
>>> images = real_images("realdata/monuseg", "monuseg") + real_images("realdata/tnbc", "tnbc")  # doctest: +SKIP
>>> result = label_free_checks(clf, images, references=real_references("realdata"))  # doctest: +SKIP
>>> print(render_label_free(result))                                              # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from nucdata.errors import InvalidArgumentError, MissingFilesError, MissingMppError

__all__ = ["CHECKS", "DIHEDRAL", "NOMINAL_MPP", "LabelFreeImage", "images_of", "label_free_checks", "real_images",
           "real_references", "render_label_free"]

#: The checks, in the order they are run and reported.
CHECKS = ("dihedral", "rescale", "stain")
#: The 7 non-trivial elements of the dihedral group of the square, by name (applied to ``(N, C, S, S)``).
DIHEDRAL = ("rot90", "rot180", "rot270", "flip_lr", "flip_ud", "transpose", "anti_transpose")
#: Nominal µm/px of real datasets whose files state none (used only when nothing better is known;
#: the result records where each image's µm/px came from).
NOMINAL_MPP = {
    "tnbc": 0.25,  # 40x (Naylor et al. 2018); no value is published
    "crchisto": 0.55,  # 20x; the card's nominal mpp_default (no value is published)
}
#: Result schema name.
SCHEMA = "nucdata-label-free/1"
#: Bootstrap resamples of images for the flip rates' intervals.
BOOTSTRAP = 1000


@dataclass
class LabelFreeImage:
    """One real image and its nuclei, without labels.

    Attributes
    ----------
    name
        The image's name (its file stem).
    rgb
        ``(H, W, 3)`` uint8 RGB.
    instances
        ``(H, W)`` integer instance map (0 background, one id per nucleus), or ``None``
        when the nuclei are points.
    centroids
        ``(N, 2)`` x, y points (pixel centres) when there are no masks.
    mpp
        µm/px of the image.
    dataset
        Which dataset (or folder) it comes from: results are grouped by it.
    mpp_source
        Where ``mpp`` came from (``"file"``, ``"store"``, ``"card"``, ``"nominal"``, ``"given"``).
    """

    name: str
    rgb: np.ndarray
    instances: np.ndarray | None
    mpp: float
    dataset: str = "images"
    centroids: np.ndarray | None = None
    mpp_source: str = "given"

    def __post_init__(self) -> None:
        if (self.instances is None) == (self.centroids is None):
            raise InvalidArgumentError(f"{self.name}: give its nuclei as an instance map or as centroids, exactly one")
        if self.mpp is None or not np.isfinite(self.mpp) or self.mpp <= 0:
            raise MissingMppError(f"{self.name}: µm/px {self.mpp!r} is not a positive number; give mpp= (the "
                                  "scanner's µm/px), the checks resample at the model's scale")


# -- inputs ------------------------------------------------------------------------------------
def images_of(source: Any, dataset: str | None = None, mpp: float | None = None,
              root: str | os.PathLike[str] | None = None) -> list[LabelFreeImage]:
    """:class:`LabelFreeImage` records of a prepared dataset, a folder pair or images already read.

    Parameters
    ----------
    source
        One of: a dataset loaded with :func:`nucdata.load` (its images with their instance
        maps; its µm/px per image, ``mpp`` where the store has none); the name of a
        prepared dataset (loaded with ``nucdata.load(name, root=root)``); a folder
        ``(images, masks)`` pair, the masks paired to images by file stem as ``nucdata
        classify --instances`` pairs them (``<stem>.png``, ``<stem>_masks.png``, ...); a
        :class:`LabelFreeImage` or a list of them.
    dataset
        The name to group the images under (default: the dataset's name, or ``"images"``;
        it replaces the records' own).
    mpp
        µm/px for images that state none.
    root
        The data home of a dataset given by name.

    Raises
    ------
    MissingMppError
        An image without µm/px and no ``mpp`` given.
    """
    if isinstance(source, LabelFreeImage):
        return [replace(source, dataset=dataset) if dataset else source]
    if isinstance(source, str) and not os.path.exists(source):
        import nucdata

        source = nucdata.load(source, root=root)
    if isinstance(source, tuple) and len(source) == 2 and all(isinstance(p, (str, os.PathLike)) for p in source):
        return _folder_images(Path(source[0]), Path(source[1]), dataset or Path(source[0]).name, mpp)
    if hasattr(source, "nuclei") and hasattr(source, "images") and hasattr(source, "__getitem__"):
        return _dataset_images(source, dataset, mpp)
    if isinstance(source, Iterable) and not isinstance(source, (str, bytes, os.PathLike, np.ndarray)):
        out = []
        for item in source:
            out.extend(images_of(item, dataset, mpp, root))
        return out
    raise InvalidArgumentError(f"images_of: cannot read images from {type(source).__name__}; pass a loaded dataset "
                               "(nucdata.load), a prepared dataset's name, an (images, masks) folder pair or "
                               "LabelFreeImage records")


def _dataset_images(ds, dataset: str | None, mpp: float | None) -> list[LabelFreeImage]:
    table = ds.images
    mpps = np.asarray(table["mpp"].values, np.float64) if "mpp" in table else np.full(len(ds), np.nan)
    out = []
    for i in range(len(ds)):
        sample = ds[i]
        stated = float(mpps[i])
        value, where = (stated, "store") if np.isfinite(stated) and stated > 0 else (mpp, "given")
        name = str(sample.get("image_id", i))
        if value is None:
            raise MissingMppError(f"{sample.get('dataset', 'dataset')}/{name}: the store records no µm/px; pass mpp= "
                                  "(the scanner's µm/px)")
        rgb = np.ascontiguousarray(np.asarray(sample["image"]).transpose(1, 2, 0))
        out.append(LabelFreeImage(name, rgb, np.asarray(sample["instance_map"]), float(value),
                                  dataset or str(sample.get("dataset", "images")), mpp_source=where))
    return out


def _folder_images(images: Path, masks: Path, dataset: str, mpp: float | None) -> list[LabelFreeImage]:
    from nucdata.formats import read_image, read_instances
    from nucdata_models.merge.slides import find_jobs

    out = []
    for job in find_jobs(images, "instances", masks):
        rgb, stated = read_image(job.image)
        value, where = (stated, "file") if stated else (mpp, "given")
        if value is None:
            raise MissingMppError(f"{job.image}: its µm/px is in neither its metadata nor mpp=; give mpp=")
        out.append(LabelFreeImage(Path(job.image).stem, np.asarray(rgb)[..., :3], read_instances(job.nuclei),
                                  float(value), dataset, mpp_source=where))
    return out


#: dataset -> the reader of its official layout (each reader registers itself)
_READERS: dict[str, Callable[[Path, float | None], list[LabelFreeImage]]] = {}


def _reader(dataset: str):
    def register(function):
        _READERS[dataset] = function
        return function
    return register


@_reader("monuseg")
def _monuseg(folder: Path, mpp: float | None) -> list[LabelFreeImage]:
    from nucdata._util.images import read_rgb
    from nucdata.catalog import get_card
    from nucdata.datasets import rasterize_regions, read_imagescope

    tissue = next((folder / n for n in ("Tissue_Images", "Tissue Images") if (folder / n).is_dir()), None)
    notes = folder / "Annotations"
    if tissue is None or not notes.is_dir():
        raise MissingFilesError(f"{folder}: no 'Tissue Images/' (or Tissue_Images/) beside 'Annotations/'; point at "
                                "the extracted MoNuSeg training folder")
    card_mpp = get_card("monuseg", packaged=True).mpp
    out = []
    for image in sorted(tissue.glob("*.tif")):
        xml = notes / f"{image.stem}.xml"
        if not xml.is_file():
            continue
        rgb = read_rgb(image)
        annotation = read_imagescope(xml)
        inst, _, _ = rasterize_regions(annotation.regions, rgb.shape[:2])
        if mpp is not None:
            value, where = mpp, "given"
        elif annotation.mpp:
            value, where = annotation.mpp, "file"
        else:
            value, where = card_mpp, "card"
        out.append(LabelFreeImage(image.stem, rgb, inst, float(value), "monuseg", mpp_source=where))
    return out


@_reader("tnbc")
def _tnbc(folder: Path, mpp: float | None) -> list[LabelFreeImage]:
    from nucdata._util.images import read_gray, read_rgb
    from nucdata.datasets.tnbc import binary_to_instances

    out = []
    for slide in sorted(folder.glob("Slide_*")):
        gt = folder / f"GT_{slide.name.removeprefix('Slide_')}"
        for image in sorted(slide.glob("*.png")):
            if not (gt / image.name).is_file():
                continue
            inst, _ = binary_to_instances(read_gray(gt / image.name))
            value, where = (mpp, "given") if mpp is not None else (NOMINAL_MPP["tnbc"], "nominal")
            out.append(LabelFreeImage(image.stem, read_rgb(image), inst, float(value), "tnbc", mpp_source=where))
    return out


@_reader("crchisto")
def _crchisto(folder: Path, mpp: float | None) -> list[LabelFreeImage]:
    from scipy.io import loadmat

    from nucdata._util.images import read_rgb

    detection = next((p for p in [folder / "Detection", *folder.glob("*/Detection")] if p.is_dir()), None)
    if detection is None:
        raise MissingFilesError(f"{folder}: no Detection/ folder (CRCHisto's official layout: Detection/imgN/imgN.bmp "
                                "with imgN_detection.mat)")
    out = []
    for d in sorted(detection.glob("img*"), key=lambda p: (len(p.name), p.name)):
        bmp, mat = d / f"{d.name}.bmp", d / f"{d.name}_detection.mat"
        if not bmp.is_file() or not mat.is_file():
            continue
        rgb = read_rgb(bmp)
        points = np.asarray(loadmat(mat)["detection"], np.float64).reshape(-1, 2) - 1.0  # 1-based MATLAB pixels
        h, w = rgb.shape[:2]
        points = points[(points[:, 0] >= -1) & (points[:, 1] >= -1) & (points[:, 0] <= w) & (points[:, 1] <= h)]
        points = np.clip(points, 0, [w - 1, h - 1])
        value, where = (mpp, "given") if mpp is not None else (NOMINAL_MPP["crchisto"], "nominal")
        out.append(LabelFreeImage(d.name, rgb, None, float(value), "crchisto", centroids=points, mpp_source=where))
    return out


def real_images(folder: str | os.PathLike[str], dataset: str, mpp: float | None = None,
                limit: int | None = None) -> list[LabelFreeImage]:
    """The images and nuclei of a real dataset's files, in its official layout.

    Parameters
    ----------
    folder
        The dataset's files: ``monuseg`` (``Tissue Images/`` or ``Tissue_Images/`` beside
        ``Annotations/``; outlines rasterised by the converter's rule), ``tnbc``
        (``Slide_NN/`` and ``GT_NN/``; instances by the converter's rule) or ``crchisto``
        (``Detection/imgN/``; points only, 1-based MATLAB coordinates shifted to pixel
        centres).
    dataset
        Which of those layouts.
    mpp
        µm/px for every image (default: the file's own, else the card's, else
        :data:`NOMINAL_MPP`; the record says which).
    limit
        At most this many images (in name order).

    Raises
    ------
    MissingFilesError
        When the folder does not hold the layout.
    """
    if dataset not in _READERS:
        raise InvalidArgumentError(f"real_images: no reader for {dataset!r}; known layouts: {', '.join(_READERS)} "
                                   "(for other data use images_of with an (images, masks) folder pair)")
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFilesError(f"{folder}: no such folder; point at the {dataset} files")
    out = _READERS[dataset](folder, mpp)
    if not out:
        raise MissingFilesError(f"{folder}: no {dataset} images found in its official layout")
    return out[:limit] if limit is not None else out


def real_references(root: str | os.PathLike[str], datasets: Sequence[str] | None = None) -> dict[str, list[np.ndarray]]:
    """The RGB images of each real dataset present under ``root`` (``root/<dataset>/``), for reference stains.

    Every dataset with a reader (:func:`real_images`: CRCHisto, MoNuSeg, TNBC) whose folder
    holds its images is included; ``datasets`` restricts the list. Datasets whose real
    images are absent are left out.
    """
    root = Path(root)
    out = {}
    for name in datasets or list(_READERS):
        folder = root / name
        if not folder.is_dir():
            continue
        try:
            out[name] = [im.rgb for im in real_images(folder, name)]
        except MissingFilesError:
            continue
    return out


def _fit_references(references: Any, images: Sequence[LabelFreeImage], methods: Sequence[str]) -> dict[str, dict]:
    """Per reference name, ``{"images": n, method: fitted stain}``."""
    from nucdata_models.stain import MacenkoStain, ReinhardStain, fit_macenko, fit_reinhard

    if references is None:
        references = {}
        for im in images:
            references.setdefault(im.dataset, []).append(im.rgb)
    elif isinstance(references, (str, os.PathLike)):
        references = real_references(references)
    fitted = {}
    for name, value in references.items():
        entry: dict[str, Any] = {}
        if isinstance(value, Mapping):  # already fitted
            entry = {"images": int(value.get("images", 0))}
            for m in methods:
                stain = value.get(m)
                expected = ReinhardStain if m == "reinhard" else MacenkoStain
                if not isinstance(stain, expected):
                    raise InvalidArgumentError(f"reference {name!r}: no fitted {m} stain ({expected.__name__}); give "
                                               "images to fit or a fitted stain per method")
                entry[m] = stain
        else:
            rgbs = [v.rgb if isinstance(v, LabelFreeImage) else np.asarray(v) for v in
                    (images_of(value) if hasattr(value, "nuclei") else value)]
            entry = {"images": len(rgbs)}
            for m in methods:
                entry[m] = fit_reinhard(rgbs) if m == "reinhard" else fit_macenko(rgbs)
        fitted[str(name)] = entry
    return fitted


# -- perturbations ------------------------------------------------------------------------------
def _dihedral(crops: np.ndarray, name: str) -> np.ndarray:
    """One dihedral element applied to the spatial axes of ``(N, C, S, S)`` crops."""
    if name == "rot90":
        out = np.rot90(crops, 1, axes=(2, 3))
    elif name == "rot180":
        out = np.rot90(crops, 2, axes=(2, 3))
    elif name == "rot270":
        out = np.rot90(crops, 3, axes=(2, 3))
    elif name == "flip_lr":
        out = crops[..., ::-1]
    elif name == "flip_ud":
        out = crops[..., ::-1, :]
    elif name == "transpose":
        out = crops.swapaxes(2, 3)
    elif name == "anti_transpose":
        out = np.rot90(crops.swapaxes(2, 3), 2, axes=(2, 3))
    else:
        raise InvalidArgumentError(f"no dihedral element {name!r}; one of {', '.join(DIHEDRAL)}")
    return np.ascontiguousarray(out)


def _rescaled(image: LabelFreeImage, factor: float) -> LabelFreeImage:
    """``image`` resampled by ``factor`` (RGB bilinear, anti-aliased when shrinking; masks nearest)."""
    from skimage.transform import resize

    h, w = image.rgb.shape[:2]
    shape = (max(1, round(h * factor)), max(1, round(w * factor)))
    rgb = resize(image.rgb, (*shape, 3), order=1, anti_aliasing=factor < 1, preserve_range=True)
    rgb = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    instances = centroids = None
    if image.instances is not None:
        instances = resize(image.instances, shape, order=0, anti_aliasing=False, preserve_range=True).astype(np.int64)
    else:
        sy, sx = shape[0] / h, shape[1] / w
        centroids = (np.asarray(image.centroids, np.float64) + 0.5) * [sx, sy] - 0.5
    return LabelFreeImage(image.name, rgb, instances, image.mpp, image.dataset, centroids, image.mpp_source)


def _normalised(image: LabelFreeImage, method: str, target, own: dict[Any, Any]) -> LabelFreeImage:
    """``image`` normalised to ``target`` by ``method``; ``own`` caches the image's own fitted stains."""
    from nucdata_models.stain import fit_macenko, fit_reinhard, macenko, reinhard

    key = method if method == "reinhard" else (method, target.io, target.beta, target.alpha)
    if key not in own:
        own[key] = fit_reinhard(image.rgb) if method == "reinhard" else fit_macenko(
            image.rgb, target.io, target.beta, target.alpha)
    source = own[key]
    rgb = reinhard(image.rgb, target, source) if method == "reinhard" else macenko(image.rgb, target, source)
    return LabelFreeImage(image.name, rgb, image.instances, image.mpp, image.dataset, image.centroids,
                          image.mpp_source)


# -- classifying ----------------------------------------------------------------------------------
def _crops(classifier, image: LabelFreeImage):
    """The crops and nucleus ids of an image, cut as :meth:`Classifier.predict` cuts them."""
    if image.instances is not None:
        crops, nuclei, _, _ = classifier.crops(image.rgb, image.instances, mpp=image.mpp)
    else:
        crops, nuclei, _, _ = classifier.crops(image.rgb, centroids=image.centroids, mpp=image.mpp)
    return crops, nuclei.ids


def _labels(classifier, crops: np.ndarray) -> dict[str, np.ndarray]:
    """The published label per set of each crop (no annotations: the model's own, -2 outside)."""
    if not len(crops):
        return {s: np.zeros(0, np.int64) for s in classifier.names}
    sets = classifier.publish(classifier.probabilities(crops))
    return {s: np.asarray(r.label, np.int64) for s, r in sets.items()}


def _match(ids: np.ndarray, base_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``base_ids`` found in ``ids`` (increasing), and their rows in ``ids``."""
    if not len(ids):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.argsort(ids)
    pos = np.clip(np.searchsorted(ids, base_ids, sorter=order), 0, len(ids) - 1)
    hit = ids[order[pos]] == base_ids
    return np.flatnonzero(hit), order[pos[hit]]


# -- statistics ----------------------------------------------------------------------------------
def _shuffled(a: np.ndarray, b: np.ndarray) -> float:
    """``1 - sum_c p_c q_c``: the flip rate if ``b`` were shuffled among the nuclei."""
    if not len(a):
        return float("nan")
    classes, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    p = np.bincount(inverse[: len(a)], minlength=len(classes)) / len(a)
    q = np.bincount(inverse[len(a):], minlength=len(classes)) / len(b)
    return float(1.0 - np.sum(p * q))


def _shuffled_any(a: np.ndarray, bs: np.ndarray) -> float:
    """The chance that a nucleus's label changes under at least one of the perturbations ``bs`` ``(T, N)``
    when each perturbation's labels are shuffled independently: ``1 - sum_c p_c prod_t q_{t,c}``."""
    if not len(a):
        return float("nan")
    classes, inverse = np.unique(np.concatenate([a, bs.ravel()]), return_inverse=True)
    k = len(classes)
    p = np.bincount(inverse[: len(a)], minlength=k) / len(a)
    rest = inverse[len(a):].reshape(bs.shape)
    q = np.stack([np.bincount(r, minlength=k) / len(r) for r in rest])
    return float(1.0 - np.sum(p * q.prod(0)))


def _interval(flips: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> list[float]:
    """95 % bootstrap interval (over images) of ``sum flips / sum counts`` (undefined from one image)."""
    if counts.sum() == 0 or np.count_nonzero(counts) < 2:  # one image: no spread between images to resample
        return [float("nan"), float("nan")]
    pick = rng.integers(0, len(counts), (BOOTSTRAP, len(counts)))
    n = counts[pick].sum(1)
    rates = np.where(n > 0, flips[pick].sum(1) / np.maximum(n, 1), np.nan)
    lo, hi = np.nanpercentile(rates, [2.5, 97.5])
    return [float(lo), float(hi)]


def _weighted(values: Sequence[float], weights: Sequence[int]) -> float:
    """The ``weights``-weighted mean of per-stratum ``values`` (NaN without weight)."""
    total = float(np.sum(weights))
    if total <= 0:
        return float("nan")
    return float(np.sum(np.asarray(values, np.float64) * np.asarray(weights, np.float64)) / total)


def _row(dataset: str, label_set: str, perturbation: str, parts: list[tuple[str, np.ndarray, np.ndarray]],
         rng: np.random.Generator, lost: int = 0, shuffled: float | None = None) -> dict[str, Any]:
    """One table row from per-image ``(dataset, unperturbed, perturbed)`` labels; the baseline
    shuffles within each dataset (the pooled row's is the nucleus-weighted mean of theirs)."""
    flips = np.array([int((x != y).sum()) for _, x, y in parts], np.int64)
    counts = np.array([len(x) for _, x, _ in parts], np.int64)
    n = int(counts.sum())
    rate = float(flips.sum() / n) if n else float("nan")
    if shuffled is None:
        strata = sorted({d for d, _, _ in parts})
        per = [(_shuffled(np.concatenate([x for d, x, _ in parts if d == k]),
                          np.concatenate([y for d, _, y in parts if d == k])),
                sum(len(x) for d, x, _ in parts if d == k)) for k in strata]
        shuffled = _weighted([v for v, _ in per], [w for _, w in per]) if per else float("nan")
    return {"dataset": dataset, "label_set": label_set, "perturbation": perturbation, "nuclei": n,
            "flips": int(flips.sum()), "flip_rate": rate, "flip_95": _interval(flips, counts, rng),
            "shuffled": shuffled, "ratio": rate / shuffled if n and shuffled > 0 else float("nan"),
            "lost": int(lost)}


# -- the checks ------------------------------------------------------------------------------------
def label_free_checks(classifier, images: Any, references: Any = None, *, checks: Sequence[str] = CHECKS,
                      scales: Sequence[float] = (0.9, 1.1), methods: Sequence[str] = ("reinhard", "macenko"),
                      seed: int = 0, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """How often a classifier's published labels flip under perturbations that should not matter.

    Parameters
    ----------
    classifier
        A :class:`nucdata_models.merge.Classifier` (``Classifier.from_pretrained(path)``).
    images
        The real images: :class:`LabelFreeImage` records (:func:`real_images`), a dataset
        loaded with :func:`nucdata.load`, or anything :func:`images_of` reads; or a mapping
        dataset name -> such (the name groups the results). Their nuclei are classified
        as a lab's images are (no annotations; the checkpoint's calibration for a lab's
        images).
    references
        The reference stains for ``stain``: a mapping name -> RGB images of that stain
        (or :class:`LabelFreeImage` records, a loaded dataset, or already fitted stains
        ``{"reinhard": ReinhardStain, "macenko": MacenkoStain}``), or the folder of real
        sample files (:func:`real_references`). Default: one reference per dataset of
        ``images``, fitted from its images.
    checks
        Which of :data:`CHECKS` to run.
    scales
        The resampling factors of ``rescale``.
    methods
        The stain normalisations of ``stain``: ``"reinhard"``, ``"macenko"``.
    seed
        Seed of the bootstrap intervals.
    progress
        Called with one line per image and check.

    Returns
    -------
    dict
        Plain JSON types (strict: an undefined rate is ``None``): ``schema``, ``classifier`` (path, crop size, µm/px, label sets),
        ``datasets`` (per dataset: images, nuclei, µm/px and where it came from, and the
        unperturbed published labels' counts per label set and class), ``references`` (the fitted
        stains), ``skipped`` (perturbations that could not be made, with the reason) and
        ``checks``: per check its ``description``, ``perturbations`` and ``rows``, one per
        dataset (and ``"all"`` when there are several), label set and perturbation (and
        ``"any"``: the label changes under at least one of the check's perturbations),
        each with ``nuclei``, ``flips``, ``flip_rate``, ``flip_95`` (bootstrap over
        images; ``None`` from a single image), ``shuffled`` (the baseline), ``ratio``
        and ``lost`` (nuclei gone after resampling). :func:`render_label_free` writes it
        as Markdown.

    Raises
    ------
    InvalidArgumentError
        An unknown check or method, or no images.
    """
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise InvalidArgumentError(f"label_free_checks: unknown checks {unknown}; choose from {', '.join(CHECKS)}")
    bad = [m for m in methods if m not in ("reinhard", "macenko")]
    if bad:
        raise InvalidArgumentError(f"label_free_checks: unknown stain methods {bad}; 'reinhard' or 'macenko'")
    if isinstance(images, Mapping):
        records = [im for name, v in images.items() for im in images_of(v, dataset=str(name))]
    else:
        records = images_of(images)
    if not records:
        raise InvalidArgumentError("label_free_checks: no images given")
    say = progress or (lambda _m: None)
    refs = _fit_references(references, records, methods) if "stain" in checks else {}
    perturbations: dict[str, list[str]] = {
        "dihedral": list(DIHEDRAL),
        "rescale": [f"{f:g}x" for f in scales],
        "stain": [f"{m}:{r}" for r in refs for m in methods],
    }
    sets = list(classifier.names)
    # per (check, set): per image index, (dataset, unperturbed labels, {perturbation: (rows, labels)}),
    # rows indexing the unperturbed nuclei found again (increasing)
    found: dict[tuple[str, str], dict[int, tuple[str, np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]]] = {}
    skipped: list[dict[str, str]] = []
    datasets: dict[str, dict[str, Any]] = {}

    for index, image in enumerate(records):
        crops, ids = _crops(classifier, image)
        base = _labels(classifier, crops)
        info = datasets.setdefault(image.dataset, {"images": 0, "nuclei": 0, "mpp": [], "mpp_source": []})
        info["images"] += 1
        info["nuclei"] += len(ids)
        info["mpp"].append(float(image.mpp))
        info["mpp_source"].append(image.mpp_source)
        counts = info.setdefault("labels", {s: {} for s in sets})
        for s in sets:
            for code, k in zip(*np.unique(base[s], return_counts=True), strict=True):
                counts[s][int(code)] = counts[s].get(int(code), 0) + int(k)
        say(f"{image.dataset}/{image.name}: {len(ids)} nuclei")
        if not len(ids):
            continue
        own: dict[Any, Any] = {}  # the image's own stains, fitted once
        for check in checks:
            for s in sets:
                found.setdefault((check, s), {})[index] = (image.dataset, base[s], {})
            for pert in perturbations[check]:
                if check == "dihedral":
                    labels, rows, where = _labels(classifier, _dihedral(crops, pert)), np.arange(len(ids)), None
                else:
                    if check == "rescale":
                        changed = _rescaled(image, float(pert[:-1]))
                    else:
                        method, ref = pert.split(":", 1)
                        try:
                            changed = _normalised(image, method, refs[ref][method], own)
                        except InvalidArgumentError as exc:  # e.g. an image with no stained pixels
                            skipped.append({"dataset": image.dataset, "image": image.name, "check": check,
                                            "perturbation": pert, "reason": str(exc)})
                            continue
                    new_crops, new_ids = _crops(classifier, changed)
                    labels = _labels(classifier, new_crops)
                    rows, where = _match(new_ids, ids)
                for s in sets:
                    b = labels[s] if where is None else labels[s][where]
                    found[(check, s)][index][2][pert] = (rows, b)

    rng = np.random.default_rng(seed)
    names = list(datasets)
    groups = names + (["all"] if len(names) > 1 else [])
    result_checks: dict[str, Any] = {}
    for check in checks:
        rows_out = []
        for s in sets:
            per_image = found.get((check, s), {})
            for group in groups:
                chosen = [v for v in per_image.values() if group == "all" or v[0] == group]
                for pert in perturbations[check]:
                    parts = [(d, a[r], b) for d, a, got in chosen if pert in got for r, b in [got[pert]]]
                    gone = sum(len(a) - len(got[pert][0]) for _, a, got in chosen if pert in got)
                    rows_out.append(_row(group, s, pert, parts, rng, gone))
                if len(perturbations[check]) > 1:
                    rows_out.append(_any_row(group, s, perturbations[check], chosen, rng))
        result_checks[check] = {"description": _DESCRIPTIONS[check], "perturbations": perturbations[check],
                                "rows": rows_out}
    return _plain({
        "schema": SCHEMA,
        "classifier": {"path": None if getattr(classifier, "path", None) is None else str(classifier.path),
                       "crop_size": int(classifier.crop_size), "mpp": classifier.mpp, "label_sets": sets},
        "datasets": {d: {"images": v["images"], "nuclei": v["nuclei"],
                         "mpp": sorted({round(m, 4) for m in v["mpp"]}),
                         "mpp_source": sorted(set(v["mpp_source"])),
                         "labels": _label_counts(classifier, v.get("labels", {}))} for d, v in datasets.items()},
        "references": {n: {"images": int(v["images"]), **{m: v[m].to_dict() for m in methods}}
                       for n, v in refs.items()},
        "skipped": skipped,
        "checks": result_checks,
    })


def _label_counts(classifier, counts: Mapping[str, Mapping[int, int]]) -> dict[str, dict[str, int]]:
    """Per label set, the unperturbed published labels' counts by class name (``outside`` for -2)."""
    out = {}
    for spec in classifier.label_sets:
        got = counts.get(spec.name, {})
        out[spec.name] = {("outside" if code == -2 else spec.class_names[code]): int(got[code]) for code in sorted(got)}
    return out


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and non-finite floats as ``None`` (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.integer, bool)):
        return value if isinstance(value, bool) else int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def _any_row(group: str, s: str, perts: list[str], chosen, rng: np.random.Generator) -> dict[str, Any]:
    """Per image, the nuclei found under every perturbation: is the label changed by at least one?"""
    parts, pooled = [], {}
    for d, a, got in chosen:
        if any(p not in got for p in perts):
            continue
        keep = np.arange(len(a))
        for p in perts:
            keep = np.intersect1d(keep, got[p][0])
        if not len(keep):
            continue
        bs = np.stack([got[p][1][np.searchsorted(got[p][0], keep)] for p in perts])
        changed = (bs != a[keep]).any(0)
        parts.append((d, np.zeros(len(keep), np.int64), changed.astype(np.int64)))
        pooled.setdefault(d, []).append((a[keep], bs))
    per = [(_shuffled_any(np.concatenate([x for x, _ in v]), np.concatenate([y for _, y in v], 1)),
            sum(len(x) for x, _ in v)) for v in pooled.values()]
    shuffled = _weighted([v for v, _ in per], [w for _, w in per]) if per else float("nan")
    return _row(group, s, "any", parts, rng, 0, shuffled)


_DESCRIPTIONS = {
    "dihedral": "each crop flipped and rotated (the 7 non-trivial elements of the dihedral group)",
    "rescale": "the image resampled (bilinear, anti-aliased; masks nearest), the same nuclei cut at its stated µm/px",
    "stain": "the image stain-normalised to a reference stain (its own stain fitted from itself), the same nuclei",
}


# -- rendering -----------------------------------------------------------------------------------
def _pct(v: float | None) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{100 * v:.1f}"


def _ci(pair) -> str:
    lo, hi = pair
    return "–" if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)) else f"{_pct(lo)}–{_pct(hi)}"


def render_label_free(result: Mapping[str, Any], detail: bool = False) -> str:
    """The result of :func:`label_free_checks` as Markdown: the inputs, then a table per check.

    Parameters
    ----------
    result
        What :func:`label_free_checks` returned (or its JSON read back).
    detail
        One row per dataset, label set and perturbation, with the flip rate's 95 %
        interval, the shuffled baseline, their ratio and the nuclei lost by resampling.
        Default: one row per dataset and label set, a column per perturbation holding
        ``flip % / shuffled %``, and the ``any`` column with its interval.
    """
    lines = ["## Label-free checks", ""]
    model = result.get("classifier", {})
    lines.append(f"Classifier: {model.get('path') or '(in memory)'}; {model.get('crop_size')} px crops at "
                 f"{model.get('mpp')} µm/px; label sets {', '.join(model.get('label_sets', []))}.")
    lines.append("")
    lines += ["| dataset | images | nuclei | µm/px | µm/px from |", "|---|---:|---:|---|---|"]
    for d, v in result.get("datasets", {}).items():
        lines.append(f"| {d} | {v['images']} | {v['nuclei']} | {', '.join(f'{m:g}' for m in v['mpp'])} | "
                     f"{', '.join(v['mpp_source'])} |")
    marginals = [(d, name, counts) for d, v in result.get("datasets", {}).items()
                 for name, counts in (v.get("labels") or {}).items() if counts]
    if marginals:
        lines += ["", "Unperturbed published labels (share %):", "", "| dataset | label set | labels |", "|---|---|---|"]
        for d, name, counts in marginals:
            total = sum(counts.values())
            shares = ", ".join(f"{c} {100 * k / total:.0f}" for c, k in sorted(counts.items(), key=lambda x: -x[1]))
            lines.append(f"| {d} | {name} | {shares} |")
    refs = result.get("references") or {}
    if refs:
        lines += ["", "Reference stains: " + "; ".join(f"{n} ({v['images']} images)" for n, v in refs.items()) + "."]
    lines += ["", "A flip: the published label differs from the unperturbed image's. Shuffled: the flip rate if "
              "the perturbed labels were shuffled among the nuclei of a dataset (1 − Σ p_c q_c, from the label "
              "frequencies alone; for `all`, the datasets' mean weighted by nuclei). `any`: the label changes under at least one of the check's perturbations. Intervals: 95 % "
              "bootstrap over images."]
    for check, block in result.get("checks", {}).items():
        lines += ["", f"### {check}", "", f"{block['description'][0].upper()}{block['description'][1:]}.", ""]
        rows = block["rows"]
        if detail:
            lines += ["| dataset | label set | perturbation | nuclei | flip % | 95 % | shuffled % | ratio | lost |",
                      "|---|---|---|---:|---:|---|---:|---:|---:|"]
            for r in rows:
                ratio = "–" if r["ratio"] is None or not np.isfinite(r["ratio"]) else f"{r['ratio']:.2f}"
                lines.append(f"| {r['dataset']} | {r['label_set']} | {r['perturbation']} | {r['nuclei']} | "
                             f"{_pct(r['flip_rate'])} | {_ci(r['flip_95'])} | {_pct(r['shuffled'])} | {ratio} | "
                             f"{r['lost']} |")
            continue
        perts = list(block["perturbations"])
        has_any = any(r["perturbation"] == "any" for r in rows)
        head = ["dataset", "label set", "nuclei", *perts] + (["any", "any 95 %"] if has_any else [])
        lines += ["Each cell: flip % / shuffled %.", "", "| " + " | ".join(head) + " |",
                  "|---|---|---:|" + "---:|" * len(perts) + ("---:|---|" if has_any else "")]
        keyed: dict[tuple[str, str], dict[str, Any]] = {}
        for r in rows:
            keyed.setdefault((r["dataset"], r["label_set"]), {})[r["perturbation"]] = r
        for (d, s), by in keyed.items():
            n = max((r["nuclei"] for r in by.values()), default=0)
            cells = [d, s, str(n)]
            cells += [f"{_pct(by[p]['flip_rate'])} / {_pct(by[p]['shuffled'])}" if p in by else "–" for p in perts]
            if has_any:
                a = by.get("any")
                cells += [f"{_pct(a['flip_rate'])} / {_pct(a['shuffled'])}", _ci(a["flip_95"])] if a else ["–", "–"]
            lines.append("| " + " | ".join(cells) + " |")
        lost = sum(r["lost"] for r in rows if r["perturbation"] != "any")
        if lost:
            lines += ["", f"Nuclei lost by resampling (gone from the resampled instance map), over all rows: {lost}."]
    skipped = result.get("skipped") or []
    if skipped:
        lines += ["", f"Skipped ({len(skipped)}):", ""]
        lines += [f"- {s['dataset']}/{s['image']} {s['perturbation']}: {s['reason']}" for s in skipped]
    return "\n".join(lines) + "\n"
