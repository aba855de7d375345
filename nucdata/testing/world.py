"""A generated world whose truth is known: latent cell types seen through seven vocabularies.

Every nucleus of the demo world has a latent cell type with its own appearance
(size, elongation, stain colour, texture). Each dataset sees those types through its
own vocabulary: ``NATIVE[dataset][type]`` is the native class code its annotators
would write, or ``None`` when the dataset has no class for that type (such nuclei are
simply not drawn in that dataset, as MoNuSAC annotators skip fibroblasts). Datasets
without classes (Kumar, MoNuSeg, TNBC) draw every type without a label. Each dataset
also has its own stain shift, as scanners and labs differ.

Because the latent type of every nucleus is known, the truth of every nucleus under
every label set is known too: the label set's own dataset's native code for that
type. ``build-merged --demo`` scores the filled labels against it.

:class:`WorldConfig` holds the knobs that make a world harder than the default one
(appearance overlap, real-shaped dataset sizes and class mixes, per-dataset stain,
scale and blur shifts, a non-uniform type mix in the unlabelled datasets, annotator
noise, dataset-specific labelling habits and mapping-table errors); every knob is off
in ``WorldConfig()``, which draws the same world as before the knobs existed. See
``docs/demo-world.md``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from nucdata.testing._draw import Appearance

# name: appearance (radius range px, elongation range, RGB stain, texture)
TYPES: dict[str, Appearance] = {
    "tumour": Appearance((7.0, 10.0), (1.0, 1.3), (95, 45, 130), 22.0),
    "normal_epithelium": Appearance((5.0, 7.0), (1.1, 1.5), (120, 80, 160), 8.0),
    "lymphocyte": Appearance((3.0, 4.0), (1.0, 1.1), (35, 20, 85), 4.0),
    "plasma_cell": Appearance((4.0, 5.0), (1.2, 1.5), (60, 30, 110), 14.0),
    "macrophage": Appearance((6.0, 8.0), (1.0, 1.4), (140, 105, 175), 10.0),
    "neutrophil": Appearance((4.0, 5.5), (1.0, 1.2), (75, 35, 95), 30.0),
    "fibroblast": Appearance((3.0, 4.0), (2.4, 3.2), (80, 50, 125), 6.0),
    "endothelial": Appearance((2.5, 3.5), (1.8, 2.4), (110, 70, 150), 5.0),
    "dead": Appearance((2.5, 3.5), (1.0, 1.2), (25, 10, 45), 2.0),
    "mitotic": Appearance((6.0, 9.0), (1.5, 2.0), (15, 5, 40), 35.0),
}
TYPE_NAMES = list(TYPES)

# Native class code per dataset and latent type (None: the dataset has no class for it).
NATIVE: dict[str, dict[str, int | None]] = {
    # PanNuke channels: 0 Neoplastic, 1 Inflammatory, 2 Connective, 3 Dead, 4 Epithelial
    "pannuke": {"tumour": 0, "normal_epithelium": 4, "lymphocyte": 1, "plasma_cell": 1,
                "macrophage": 1, "neutrophil": 1, "fibroblast": 2, "endothelial": 2,
                "dead": 3, "mitotic": 0},
    # CoNSeP inst_type: 1 other, 2 inflammatory, 3 healthy epithelial,
    # 4 dysplastic/malignant epithelial, 5 fibroblast, 6 muscle, 7 endothelial
    "consep": {"tumour": 4, "normal_epithelium": 3, "lymphocyte": 2, "plasma_cell": 2,
               "macrophage": 2, "neutrophil": 2, "fibroblast": 5, "endothelial": 7,
               "dead": 1, "mitotic": 4},
    # MoNuSAC: 1 Epithelial, 2 Lymphocyte, 3 Neutrophil, 4 Macrophage
    "monusac": {"tumour": 1, "normal_epithelium": 1, "lymphocyte": 2, "plasma_cell": None,
                "macrophage": 4, "neutrophil": 3, "fibroblast": None, "endothelial": None,
                "dead": None, "mitotic": 1},
    # NuCLS raw codes (nucleus_GTcodes.csv)
    "nucls": {"tumour": 1, "normal_epithelium": 11, "lymphocyte": 3, "plasma_cell": 4,
              "macrophage": 5, "neutrophil": 10, "fibroblast": 2, "endothelial": 7,
              "dead": 9, "mitotic": 6},
}
UNLABELLED_DATASETS = ("kumar", "monuseg", "tnbc")

# How common each type is in each dataset's images (relative weights).
FREQUENCIES: dict[str, dict[str, float]] = {
    "pannuke": {"tumour": 4, "normal_epithelium": 2, "lymphocyte": 2, "plasma_cell": 0.5,
                "macrophage": 0.5, "neutrophil": 0.5, "fibroblast": 2, "endothelial": 1,
                "dead": 0.5, "mitotic": 0.3},
    "consep": {"tumour": 3, "normal_epithelium": 2, "lymphocyte": 2, "plasma_cell": 1,
               "macrophage": 0.5, "neutrophil": 0.5, "fibroblast": 2, "endothelial": 1,
               "dead": 0.5, "mitotic": 0.3},
    "monusac": {"tumour": 3, "normal_epithelium": 1, "lymphocyte": 3, "macrophage": 1,
                "neutrophil": 1, "mitotic": 0.3},
    "nucls": {"tumour": 4, "normal_epithelium": 0.5, "lymphocyte": 3, "plasma_cell": 1,
              "macrophage": 1, "neutrophil": 0.3, "fibroblast": 2, "endothelial": 1,
              "dead": 0.3, "mitotic": 0.3},
}
DEFAULT_FREQUENCY = {name: 1.0 for name in TYPE_NAMES}

# Per-dataset stain shift added to every pixel (RGB), like different labs and scanners.
STAIN_SHIFT: dict[str, tuple[float, float, float]] = {
    "pannuke": (0, 0, 0), "consep": (10, -6, 4), "monusac": (-8, 4, 10), "nucls": (6, 8, -6),
    "kumar": (-4, -4, 0), "monuseg": (-4, -4, 0), "tnbc": (12, 0, -10),
}


# -- what the knobs draw on -------------------------------------------------------------
#: Nuclei per dataset in the real releases (datasets.md §1, §2.6, §6.7, §7.5, §8.6):
#: PanNuke, CoNSeP and NuCLS as published; MoNuSAC the published lower bound
#: (> 46,000); Kumar and MoNuSeg counted Regions (30 classic; 37 + 14 test images);
#: TNBC as published.
REAL_NUCLEI: dict[str, int] = {
    "pannuke": 189_744, "consep": 24_319, "monusac": 46_000, "nucls": 59_485,
    "kumar": 16_966, "monuseg": 30_837, "tnbc": 4_022,
}
#: Nuclei the demo generators draw at ``scale=1`` with seed 0 (measured; the real-shaped
#: sizes are ratios of the two tables, so only the ratios matter).
DEMO_NUCLEI: dict[str, int] = {
    "pannuke": 64, "consep": 62, "monusac": 58, "nucls": 46, "kumar": 239, "monuseg": 411, "tnbc": 283,
}
#: Smallest size factor: below it the fixed-image-list datasets (Kumar, MoNuSeg, TNBC)
#: would draw images too small for a nucleus.
MIN_SIZE_FACTOR = 0.25

#: Class mixes shaped like the real ones (rare classes rare), used with
#: ``WorldConfig.real_class_mix``. PanNuke's five class totals are published
#: (Neoplastic 77,403, Inflammatory 32,276, Connective 50,585, Dead 2,908,
#: Epithelial 26,572; datasets.md §2.6); how a PanNuke class splits over the latent
#: types is assumed. The other datasets publish no per-class counts: their mixes are
#: assumptions of the same shape (tumour, lymphocytes and fibroblasts common;
#: mitoses, dead cells, neutrophils and macrophages rare).
REAL_FREQUENCIES: dict[str, dict[str, float]] = {
    "pannuke": {"tumour": 75_500, "mitotic": 1_903, "normal_epithelium": 26_572, "lymphocyte": 22_000,
                "plasma_cell": 4_500, "macrophage": 3_500, "neutrophil": 2_276, "fibroblast": 38_000,
                "endothelial": 12_585, "dead": 2_908},
    "consep": {"tumour": 35, "normal_epithelium": 10, "lymphocyte": 15, "plasma_cell": 6, "macrophage": 3,
               "neutrophil": 2, "fibroblast": 15, "endothelial": 6, "dead": 4, "mitotic": 1},
    "monusac": {"tumour": 40, "normal_epithelium": 8, "lymphocyte": 45, "macrophage": 3, "neutrophil": 2,
                "mitotic": 1},
    "nucls": {"tumour": 40, "normal_epithelium": 1, "lymphocyte": 25, "plasma_cell": 5, "macrophage": 3,
              "neutrophil": 0.5, "fibroblast": 15, "endothelial": 5, "dead": 1.5, "mitotic": 1},
}
#: Type mixes of the unlabelled datasets used with ``WorldConfig.unlabelled_mix``
#: (assumed: Kumar/MoNuSeg are multi-organ tumour fields, TNBC is triple-negative
#: breast cancer with many lymphocytes).
UNLABELLED_MIX: dict[str, dict[str, float]] = {
    "kumar": {"tumour": 35, "normal_epithelium": 10, "lymphocyte": 20, "plasma_cell": 3, "macrophage": 3,
              "neutrophil": 2, "fibroblast": 15, "endothelial": 8, "dead": 2, "mitotic": 2},
    "monuseg": {"tumour": 35, "normal_epithelium": 10, "lymphocyte": 20, "plasma_cell": 3, "macrophage": 3,
                "neutrophil": 2, "fibroblast": 15, "endothelial": 8, "dead": 2, "mitotic": 2},
    "tnbc": {"tumour": 40, "normal_epithelium": 1, "lymphocyte": 30, "plasma_cell": 5, "macrophage": 4,
             "neutrophil": 1, "fibroblast": 10, "endothelial": 5, "dead": 2, "mitotic": 2},
}
#: µm/px of each dataset's world (NuCLS 0.2; MoNuSAC between its 0.19448 and 0.252;
#: the others about 0.25). ``WorldConfig.scale_shift`` scales nuclei by
#: ``(0.25 / mpp) ** scale_shift`` pixels per pixel.
WORLD_MPP: dict[str, float] = {
    "pannuke": 0.25, "consep": 0.25, "monusac": 0.22, "nucls": 0.20, "kumar": 0.25, "monuseg": 0.25,
    "tnbc": 0.25,
}
#: Extra Gaussian blur per dataset, in px at ``blur_shift=1`` (invented: scanners and
#: focus differ); the base blur of every image is :data:`BASE_BLUR`.
BLUR_OFFSET: dict[str, float] = {
    "pannuke": 0.0, "consep": 0.5, "monusac": 0.3, "nucls": 0.8, "kumar": 0.4, "monuseg": 0.4, "tnbc": 1.0,
}
BASE_BLUR = 0.6
#: Dataset-specific labelling habits (``WorldConfig.habits``): latent type -> the native
#: code the dataset's annotators write for it instead of the right one.
HABITS: dict[str, dict[str, int]] = {
    "nucls": {"mitotic": 1},  # mitotic figures called "tumor"
    "consep": {"endothelial": 5},  # endothelial cells called "fibroblast"
    "pannuke": {"dead": 1},  # dead (apoptotic) cells called "inflammatory"
    "monusac": {"macrophage": 2},  # macrophages called "lymphocyte"
}

_STREAMS = {"looks": 1, "labels": 2}
#: Datasets whose images are another dataset's: Kumar's 30 images are MoNuSeg's classic
#: training images (datasets.md §9), so they are drawn alike under every knob.
SAME_IMAGES = {"kumar": "monuseg"}


def _images_of(dataset: str) -> str:
    return SAME_IMAGES.get(dataset, dataset)


@dataclass(frozen=True)
class WorldConfig:
    """The knobs of a generated world; every one is off by default.

    Attributes
    ----------
    overlap
        Appearance overlap between cell types, in [0, 1]: each nucleus is drawn with
        the appearance of a type chosen uniformly among all types with this
        probability ("look-alikes"), else with its own type's appearance. Each
        type-conditional appearance distribution becomes ``(1 - overlap) f_t +
        overlap * mean_t' f_t'``, so the best reachable accuracy falls below 1; it is
        computed by :meth:`World.bayes_accuracy`.
    real_sizes
        Dataset sizes shaped like the real releases (:data:`REAL_NUCLEI`): the
        generators' ``scale`` is multiplied per dataset so that their shares of the
        world's nuclei follow the real ones (PanNuke about half, TNBC about 1 %),
        keeping the total about the same (no factor below :data:`MIN_SIZE_FACTOR`).
    real_class_mix
        Class mixes of the labelled datasets shaped like the real ones
        (:data:`REAL_FREQUENCIES`; rare classes rare) instead of the demo's mild mix.
    stain_shift
        Multiplies every dataset's stain shift (:data:`STAIN_SHIFT`): 0 removes it,
        1 is the default, 3 is strong.
    scale_shift
        Per-dataset pixel scale: nuclei are ``(0.25 / mpp) ** scale_shift`` times
        their size (:data:`WORLD_MPP`; 0 off, 1 the real µm/px ratios, 2 doubled).
    blur_shift
        Per-dataset extra blur: sigma ``BASE_BLUR + blur_shift * BLUR_OFFSET[d]`` px.
    unlabelled_mix
        Type mix of the unlabelled datasets (Kumar, MoNuSeg, TNBC), in [0, 1]: 0 is
        uniform over the types (the default), 1 is :data:`UNLABELLED_MIX`, in between
        a linear blend of the two.
    label_noise
        Annotator noise: the rate at which a written native code is replaced by
        another code of the dataset's vocabulary (uniformly chosen).
    habits
        Dataset-specific labelling habits (:data:`HABITS`), e.g. NuCLS annotators
        calling mitotic tumour cells "tumor": systematic errors against the truth.
    mapping_error
        Mapping-table errors at rate ε: each (labelled dataset, latent type) entry of
        the world's vocabulary is, with this probability, a different class of the
        dataset than the one the packaged mapping tables assume. The world's own
        labels stay right in its own label set, but translating them to other sets
        through the tables goes wrong for those types. :attr:`World.mapping_errors`
        records each changed entry, and the truth follows the world's vocabulary.
    """

    overlap: float = 0.0
    real_sizes: bool = False
    real_class_mix: bool = False
    stain_shift: float = 1.0
    scale_shift: float = 0.0
    blur_shift: float = 0.0
    unlabelled_mix: float = 0.0
    label_noise: float = 0.0
    habits: bool = False
    mapping_error: float = 0.0

    def __post_init__(self) -> None:
        for name in ("overlap", "unlabelled_mix", "label_noise", "mapping_error"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"WorldConfig.{name} must lie in [0, 1], got {value!r}")
        for name in ("stain_shift", "scale_shift", "blur_shift"):
            if getattr(self, name) < 0:
                raise ValueError(f"WorldConfig.{name} must not be negative, got {getattr(self, name)!r}")

    @classmethod
    def easy(cls) -> WorldConfig:
        """The default world: distinct appearances, clean labels, exact tables."""
        return cls()

    @classmethod
    def hard(cls) -> WorldConfig:
        """Overlapping types, real-shaped sizes and mixes, strong dataset shifts, some noise."""
        return cls(overlap=0.3, real_sizes=True, real_class_mix=True, stain_shift=2.5, scale_shift=1.0,
                   blur_shift=1.0, unlabelled_mix=1.0, label_noise=0.05, habits=True, mapping_error=0.1)

    @classmethod
    def noisy(cls) -> WorldConfig:
        """Mild appearance overlap, but noisy annotators, habits and wrong table entries."""
        return cls(overlap=0.1, real_class_mix=True, unlabelled_mix=1.0, label_noise=0.2, habits=True,
                   mapping_error=0.2)

    @classmethod
    def preset(cls, name: str) -> WorldConfig:
        """``easy``, ``hard`` or ``noisy``."""
        presets = {"easy": cls.easy, "hard": cls.hard, "noisy": cls.noisy}
        if name not in presets:
            raise ValueError(f"unknown world preset {name!r}; choose one of {', '.join(presets)}")
        return presets[name]()

    def to_dict(self) -> dict[str, Any]:
        """The knobs as a plain dict (for reports)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def with_(self, **changes: Any) -> WorldConfig:
        """A copy with some knobs changed."""
        return replace(self, **changes)


@dataclass
class World:
    """Latent types, appearances and vocabularies of one generated world.

    Parameters
    ----------
    seed
        Seeds the knobs' own random streams (look-alikes, annotator noise, table
        errors); the pixels are drawn from the generator's stream, so changing a
        labelling knob changes the labels and not the images.
    types
        Appearance of each latent type.
    config
        The world's knobs; ``WorldConfig()`` (all off) by default.
    """

    seed: int = 0
    types: dict[str, Appearance] = field(default_factory=lambda: dict(TYPES))
    config: WorldConfig = field(default_factory=WorldConfig)

    def __post_init__(self) -> None:
        self.native: dict[str, dict[str, int | None]] = {d: dict(v) for d, v in NATIVE.items()}
        #: entries of the world's vocabulary that differ from the mapping tables' view
        self.mapping_errors: list[dict[str, Any]] = []
        self._streams: dict[tuple[str, str], np.random.Generator] = {}
        if self.config.mapping_error > 0:
            rng = np.random.default_rng([self.seed, 0x6D6170])
            for dataset in NATIVE:
                codes = sorted({c for c in NATIVE[dataset].values() if c is not None})
                for name in TYPE_NAMES:
                    table_code = NATIVE[dataset][name]
                    if table_code is None or rng.random() >= self.config.mapping_error:
                        continue
                    world_code = int(rng.choice([c for c in codes if c != table_code]))
                    self.native[dataset][name] = world_code
                    self.mapping_errors.append({"dataset": dataset, "type": name, "table_code": table_code,
                                                "world_code": world_code})

    # -- random streams of the knobs ----------------------------------------------------
    def begin(self, dataset: str) -> None:
        """Restart ``dataset``'s knob streams (``install`` calls it), so a dataset's
        labels do not depend on which datasets were generated before it."""
        for key in [k for k in self._streams if k[0] in (dataset, _images_of(dataset))]:
            del self._streams[key]

    def _stream(self, dataset: str, purpose: str) -> np.random.Generator:
        key = (dataset, purpose)
        if key not in self._streams:
            self._streams[key] = np.random.default_rng([self.seed, zlib.crc32(dataset.encode()), _STREAMS[purpose]])
        return self._streams[key]

    # -- what is drawn -------------------------------------------------------------------
    def type_mix(self, dataset: str) -> dict[str, float]:
        """Probability of each latent type among ``dataset``'s nuclei (types it can show)."""
        weights = self._weights(dataset)
        allowed = self._allowed(dataset, weights)
        total = sum(weights[t] for t in allowed)
        return {t: weights[t] / total for t in allowed}

    def _weights(self, dataset: str) -> dict[str, float]:
        cfg = self.config
        dataset = _images_of(dataset)
        if dataset in UNLABELLED_DATASETS or dataset not in FREQUENCIES:
            if cfg.unlabelled_mix > 0 and dataset in UNLABELLED_MIX:
                shaped = UNLABELLED_MIX[dataset]
                total = sum(shaped.values())
                a = cfg.unlabelled_mix
                return {t: (1 - a) / len(TYPE_NAMES) + a * shaped.get(t, 0.0) / total for t in TYPE_NAMES}
            return FREQUENCIES.get(dataset, DEFAULT_FREQUENCY)
        if cfg.real_class_mix and dataset in REAL_FREQUENCIES:
            return REAL_FREQUENCIES[dataset]
        return FREQUENCIES[dataset]

    def _allowed(self, dataset: str, weights: dict[str, float]) -> list[str]:
        return [t for t in TYPE_NAMES if t in weights and weights[t] > 0 and (
            dataset in UNLABELLED_DATASETS or self.native.get(dataset, {}).get(t) is not None)]

    def kinds_for(self, dataset: str, rng: np.random.Generator, count: int) -> list[int]:
        """Latent type indices of ``count`` nuclei drawn for ``dataset``."""
        weights = self._weights(dataset)
        allowed = self._allowed(dataset, weights)
        p = np.array([weights[t] for t in allowed], float)
        picks = rng.choice(len(allowed), size=count, p=p / p.sum())
        return [TYPE_NAMES.index(allowed[i]) for i in picks]

    def looks_for(self, dataset: str, kinds: list[int]) -> list[int]:
        """The type whose appearance each nucleus is drawn with (``WorldConfig.overlap``)."""
        if self.config.overlap <= 0 or not kinds:
            return list(kinds)
        rng = self._stream(_images_of(dataset), "looks")
        swap = rng.random(len(kinds)) < self.config.overlap
        other = rng.integers(0, len(TYPE_NAMES), len(kinds))
        return [int(o) if s else int(k) for k, s, o in zip(kinds, swap, other, strict=True)]

    def size_factor(self, dataset: str) -> float:
        """Factor on the generators' ``scale`` for ``dataset`` (``WorldConfig.real_sizes``)."""
        dataset = _images_of(dataset)
        if not self.config.real_sizes or dataset not in REAL_NUCLEI:
            return 1.0
        real = REAL_NUCLEI[dataset] / sum(REAL_NUCLEI.values())
        demo = DEMO_NUCLEI[dataset] / sum(DEMO_NUCLEI.values())
        return max(MIN_SIZE_FACTOR, real / demo)

    def scale_for(self, dataset: str, scale: float = 1) -> float:
        """The generator ``scale`` to use for ``dataset`` (``scale`` itself when sizes are off)."""
        factor = self.size_factor(dataset)
        return scale if factor == 1.0 else scale * factor

    def appearances(self, dataset: str | None = None) -> dict[int, Appearance]:
        """Appearance per latent type index, in ``dataset``'s pixel scale when given."""
        factor = self.pixel_scale(dataset) if dataset else 1.0
        if factor == 1.0:
            return {i: self.types[name] for i, name in enumerate(TYPE_NAMES)}
        return {i: replace(self.types[name], radius=(self.types[name].radius[0] * factor,
                                                     self.types[name].radius[1] * factor))
                for i, name in enumerate(TYPE_NAMES)}

    def pixel_scale(self, dataset: str) -> float:
        """How many times larger nuclei are drawn in ``dataset`` (``WorldConfig.scale_shift``)."""
        if self.config.scale_shift == 0:
            return 1.0
        return float((0.25 / WORLD_MPP.get(_images_of(dataset), 0.25)) ** self.config.scale_shift)

    def stain(self, dataset: str) -> tuple[float, float, float]:
        """RGB shift added to every pixel of ``dataset``'s images."""
        base = STAIN_SHIFT.get(_images_of(dataset), (0, 0, 0))
        if self.config.stain_shift == 1.0:
            return base
        return tuple(float(v) * self.config.stain_shift for v in base)  # type: ignore[return-value]

    def blur(self, dataset: str) -> float:
        """Gaussian blur sigma (px) of ``dataset``'s images."""
        return BASE_BLUR + self.config.blur_shift * BLUR_OFFSET.get(_images_of(dataset), 0.0)

    # -- vocabularies, labels and truth --------------------------------------------------
    def native_code(self, dataset: str, kind: int) -> int:
        """The right native code of latent type ``kind`` in ``dataset`` (-1 for unlabelled datasets).

        This is the world's vocabulary (it differs from the mapping tables' view where
        :attr:`mapping_errors` says so); annotators' habits and noise are applied by
        :meth:`annotate`.
        """
        if dataset in UNLABELLED_DATASETS:
            return -1
        code = self.native[dataset][TYPE_NAMES[kind]]
        if code is None:
            raise ValueError(f"{dataset} has no class for {TYPE_NAMES[kind]}")
        return code

    def annotate(self, dataset: str, kinds: list[int]) -> list[int]:
        """Native codes the dataset's annotators write for nuclei of these types.

        The right code (:meth:`native_code`), replaced by the dataset's habit for the
        type when ``habits`` is on, then by another code of the vocabulary at rate
        ``label_noise``. -1 for every nucleus of an unlabelled dataset.
        """
        codes = [self.native_code(dataset, k) for k in kinds]
        if dataset in UNLABELLED_DATASETS or not codes:
            return codes
        if self.config.habits:
            habit = HABITS.get(dataset, {})
            codes = [habit.get(TYPE_NAMES[k], c) for k, c in zip(kinds, codes, strict=True)]
        if self.config.label_noise > 0:
            rng = self._stream(dataset, "labels")
            vocabulary = self.vocabulary(dataset)
            flip = rng.random(len(codes)) < self.config.label_noise
            picks = rng.integers(0, len(vocabulary) - 1, len(codes))
            out = []
            for c, f, j in zip(codes, flip, picks, strict=True):
                others = [v for v in vocabulary if v != c]
                out.append(int(others[j]) if f else c)
            codes = out
        return codes

    def vocabulary(self, dataset: str) -> list[int]:
        """The native codes the world's annotators of ``dataset`` use."""
        return sorted({c for c in NATIVE[dataset].values() if c is not None})

    def truth_native(self, label_set_dataset: str, kind: int) -> int | None:
        """The truth of a type under a label set, as that set's dataset's native code."""
        return self.native[label_set_dataset][TYPE_NAMES[kind]]

    def truth_labels(self, kinds: np.ndarray, label_set: str) -> np.ndarray:
        """True class index under ``label_set`` of nuclei of latent types ``kinds``.

        -2 where the set has no class for the type, -3 where ``kinds`` is negative
        (a nucleus not matched to a drawn one) — the coding of
        ``nucdata_models.merged.truth_labels``.
        """
        from nucdata.labels import OWN_LABEL_SET, translate

        owner = {v: k for k, v in OWN_LABEL_SET.items()}[label_set]
        kinds = np.asarray(kinds, np.int64)
        codes = np.array([-1 if k < 0 or self.native[owner][TYPE_NAMES[k]] is None
                          else self.native[owner][TYPE_NAMES[k]] for k in kinds.tolist()], np.int64)
        labels, _ = translate(owner, codes, label_set)
        return np.where(kinds < 0, -3, np.where(codes == -1, -2, labels))

    # -- the best reachable accuracy -----------------------------------------------------
    def bayes_accuracy(self, label_set: str, dataset: str | None = None, samples: int = 20_000,
                       seed: int = 0) -> float:
        """Accuracy of the Bayes-optimal classifier under ``label_set``, by Monte Carlo.

        Nuclei are drawn as ``dataset``'s generator draws them (default: the label
        set's own dataset): latent type from :meth:`type_mix`, look-alike type as in
        :meth:`looks_for`, then the look's appearance parameters (radius and
        elongation uniform in their ranges, in the dataset's pixel scale; RGB tone
        normal around the look's colour with s.d. 6 per channel, as ``paint`` draws
        it; texture strength fixed per type). The Bayes classifier knows the world
        and the dataset and picks the class with the largest posterior
        ``sum over types t of that class of pi_t * ((1 - o) f_t(x) + o * mean_t' f_t'(x))``.
        Nuclei whose type has no class in the set are not scored.

        Those parameters are all the image depends on (the rest is pixel noise), so
        this is the best accuracy any model can reach from the pixels; a model sees
        them only through noise, blur and rasterisation and may stay below it. With
        ``overlap=0`` it is 1: every type has its own texture strength. Annotator
        noise, habits and table errors change the training labels, not this number.
        The Monte Carlo standard error is at most ``0.5 / sqrt(samples)``.

        Returns
        -------
        float
            Expected accuracy, NaN if the dataset shows no type with a class in the set.
        """
        from nucdata.labels import OWN_LABEL_SET

        if dataset is None:
            dataset = {v: k for k, v in OWN_LABEL_SET.items()}[label_set]
        mix = self.type_mix(dataset)
        prior = np.array([mix.get(t, 0.0) for t in TYPE_NAMES])
        classes = self.truth_labels(np.arange(len(TYPE_NAMES)), label_set)
        scored = prior * (classes >= 0)
        if scored.sum() == 0:
            return float("nan")
        prior = scored / scored.sum()  # only nuclei with a class are scored
        rng = np.random.default_rng([seed, self.seed, 0xBA7E5])
        n, k = samples, len(TYPE_NAMES)
        kinds = rng.choice(k, size=n, p=prior)
        o = self.config.overlap
        looks = np.where(rng.random(n) < o, rng.integers(0, k, n), kinds)
        looks_of = self.appearances(dataset)
        r = np.empty(n)
        e = np.empty(n)
        tone = np.empty((n, 3))
        texture = np.empty(n)
        for j in range(k):
            at = looks == j
            a = looks_of[j]
            r[at] = rng.uniform(*a.radius, at.sum())
            e[at] = rng.uniform(*a.elongation, at.sum())
            tone[at] = np.asarray(a.colour, float) + rng.normal(0, 6, (at.sum(), 3))
            texture[at] = a.texture
        density = np.empty((n, k))  # f_t(x) of every nucleus under every type's appearance
        for j in range(k):
            a = looks_of[j]
            box = ((r >= a.radius[0]) & (r <= a.radius[1]) & (e >= a.elongation[0]) & (e <= a.elongation[1]))
            area = (a.radius[1] - a.radius[0]) * (a.elongation[1] - a.elongation[0])
            d2 = ((tone - np.asarray(a.colour, float)) ** 2).sum(axis=1)
            gauss = np.exp(-d2 / (2 * 36.0)) / (2 * np.pi * 36.0) ** 1.5
            density[:, j] = box / area * gauss * (texture == a.texture)
        mixed = (1 - o) * density + o * density.mean(axis=1, keepdims=True)
        joint = mixed * prior[None]
        n_classes = int(classes.max()) + 1
        score = np.zeros((n, n_classes))
        for j in range(k):
            if classes[j] >= 0:
                score[:, classes[j]] += joint[:, j]
        return float((score.argmax(axis=1) == classes[kinds]).mean())

    def bayes_accuracies(self, samples: int = 20_000) -> dict[str, float]:
        """:meth:`bayes_accuracy` of each merged label set on its own dataset."""
        from nucdata.labels import MERGED_LABEL_SETS

        return {s: self.bayes_accuracy(s, samples=samples) for s in MERGED_LABEL_SETS}

    def describe(self) -> dict[str, Any]:
        """The knobs, the table errors and the best reachable accuracies (for reports)."""
        return {"seed": self.seed, "config": self.config.to_dict(), "mapping_errors": list(self.mapping_errors),
                "bayes_accuracy": self.bayes_accuracies(samples=5_000)}
