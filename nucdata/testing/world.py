"""A generated world whose truth is known: latent cell types seen through every dataset's vocabulary.

Every nucleus of the demo world has a latent cell type with its own appearance
(size, elongation, stain colour, texture; :data:`TYPES`). Each dataset sees those types
through its own vocabulary: ``native[type]`` of its world entry is the native class code
its annotators would write, or ``None`` when the dataset has no class for that type
(such nuclei are simply not drawn in that dataset, as MoNuSAC annotators skip
fibroblasts). Datasets without classes (Kumar, MoNuSeg, TNBC) draw every type without a
label. Each dataset also has its own stain shift, as scanners and labs differ.

What the world knows of one dataset lives with that dataset's fake writer: the module
``nucdata.testing.<converter>`` defines ``WORLD = DatasetWorld(...)``, and
:func:`entries` collects them through the registry, in the cards' ``order``. Two facts
come from the cards themselves: the real release's size (:attr:`nucdata.catalog.Card.nuclei`)
and the dataset whose images another's are (``duplicates_of``: Kumar's are MoNuSeg's,
so the two are drawn alike). This module holds only what is not per dataset: the
latent types, the knobs and the world's logic.

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

import importlib
import importlib.util
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from functools import cache
from typing import Any

import numpy as np

from nucdata.errors import InvalidArgumentError
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

DEFAULT_FREQUENCY = {name: 1.0 for name in TYPE_NAMES}
#: Smallest size factor: below it the fixed-image-list datasets (Kumar, MoNuSeg, TNBC)
#: would draw images too small for a nucleus.
MIN_SIZE_FACTOR = 0.25
BASE_BLUR = 0.6
_STREAMS = {"looks": 1, "labels": 2}


@dataclass(frozen=True)
class DatasetWorld:
    """What the world knows of one dataset: its fake writer's ``WORLD``.

    Each module ``nucdata.testing.<converter>`` defines one, next to the generator that
    draws from it; :func:`entries` collects them through the registry. The dataset's
    real size comes from its card (:attr:`nucdata.catalog.Card.nuclei`) and the
    dataset whose images it shares from the card's ``duplicates_of``.

    Attributes
    ----------
    native
        Latent type -> the native class code its annotators write, ``None`` for a type
        the dataset has no class for (such nuclei are not drawn there). ``None`` for a
        dataset without classes: it draws every type, without a label.
    frequencies
        How common each type is in the dataset's images (relative weights); ``None``:
        uniform over the types.
    real_frequencies
        A class mix shaped like the real one (``WorldConfig.real_class_mix``).
    unlabelled_mix
        The type mix of a dataset without classes (``WorldConfig.unlabelled_mix``).
    stain
        RGB shift added to every pixel, like different labs and scanners.
    mpp
        µm/px of the dataset's world (``WorldConfig.scale_shift``).
    blur
        Extra Gaussian blur in px at ``blur_shift=1`` (the base blur is :data:`BASE_BLUR`).
    habit
        Latent type -> the native code the annotators write for it instead of the
        right one (``WorldConfig.habits``).
    demo_nuclei
        Nuclei the generator draws at ``scale=1`` with seed 0 from ``World(0)``
        (measured; ``WorldConfig.real_sizes`` uses the ratios to the cards' counts).
    """

    native: dict[str, int | None] | None = None
    frequencies: dict[str, float] | None = None
    real_frequencies: dict[str, float] | None = None
    unlabelled_mix: dict[str, float] | None = None
    stain: tuple[float, float, float] = (0, 0, 0)
    mpp: float = 0.25
    blur: float = 0.0
    habit: dict[str, int] = field(default_factory=dict)
    demo_nuclei: int | None = None

    @property
    def labelled(self) -> bool:
        """Whether the dataset has classes."""
        return self.native is not None


_NO_ENTRY = DatasetWorld()


@cache
def entries() -> dict[str, DatasetWorld]:
    """Every dataset's world entry, in the registry's order (labelled datasets first).

    Collected from the fake writers: ``nucdata.testing.<converter>.WORLD`` of each
    dataset's card; a dataset without a fake writer has none. The order is the cards'
    ``order``, and the world draws its table errors in it.
    """
    from nucdata.catalog import datasets_in_order, get_card

    found = {}
    for name in datasets_in_order():
        module_name = f"nucdata.testing.{get_card(name, packaged=True).converter}"
        if importlib.util.find_spec(module_name) is None:
            continue
        module = importlib.import_module(module_name)
        if not isinstance(getattr(module, "WORLD", None), DatasetWorld):
            raise InvalidArgumentError(
                f"{module_name} writes {name}'s fake archives but defines no WORLD = DatasetWorld(...): "
                "add the dataset's world entry there (docs/demo-world.md)")
        found[name] = module.WORLD
    return found


def entry(dataset: str) -> DatasetWorld:
    """``dataset``'s world entry (an empty one, all defaults, for a dataset the world lacks)."""
    return entries().get(dataset, _NO_ENTRY)


@cache
def _same_images() -> dict[str, str]:
    from nucdata.catalog import get_card

    return {name: dup for name in entries() if (dup := get_card(name, packaged=True).duplicates_of)}


@cache
def _real_nuclei() -> dict[str, int]:
    from nucdata.catalog import get_card

    return {name: n for name, e in entries().items()
            if e.demo_nuclei and (n := get_card(name, packaged=True).nuclei) is not None}


#: Module attributes derived from the entries (kept for readers of the old tables).
_DERIVED: dict[str, Callable[[], Any]] = {
    "NATIVE": lambda: {d: e.native for d, e in entries().items() if e.native is not None},
    "UNLABELLED_DATASETS": lambda: tuple(d for d, e in entries().items() if e.native is None),
    "FREQUENCIES": lambda: {d: e.frequencies for d, e in entries().items() if e.frequencies is not None},
    "STAIN_SHIFT": lambda: {d: e.stain for d, e in entries().items()},
    #: Nuclei per dataset in the real releases: the cards' counts (Card.nuclei).
    "REAL_NUCLEI": lambda: dict(_real_nuclei()),
    "DEMO_NUCLEI": lambda: {d: entries()[d].demo_nuclei for d in _real_nuclei()},
    "REAL_FREQUENCIES": lambda: {d: e.real_frequencies for d, e in entries().items()
                                 if e.real_frequencies is not None},
    "UNLABELLED_MIX": lambda: {d: e.unlabelled_mix for d, e in entries().items() if e.unlabelled_mix is not None},
    "WORLD_MPP": lambda: {d: e.mpp for d, e in entries().items()},
    "BLUR_OFFSET": lambda: {d: e.blur for d, e in entries().items()},
    "HABITS": lambda: {d: dict(e.habit) for d, e in entries().items() if e.habit},
    "SAME_IMAGES": lambda: dict(_same_images()),
}


def __getattr__(name: str) -> Any:
    """The per-dataset tables of earlier versions, derived from :func:`entries`."""
    if name in _DERIVED:
        return _DERIVED[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _images_of(dataset: str) -> str:
    return _same_images().get(dataset, dataset)


def _unlabelled(dataset: str) -> bool:
    """A dataset of the world without classes (Kumar, MoNuSeg, TNBC)."""
    return dataset in entries() and entries()[dataset].native is None


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
        Dataset sizes shaped like the real releases (the cards' :attr:`~nucdata.catalog.Card.nuclei`): the
        generators' ``scale`` is multiplied per dataset so that their shares of the
        world's nuclei follow the real ones (PanNuke about half, TNBC about 1 %),
        keeping the total about the same (no factor below :data:`MIN_SIZE_FACTOR`).
    real_class_mix
        Class mixes of the labelled datasets shaped like the real ones
        (:attr:`DatasetWorld.real_frequencies`; rare classes rare) instead of the demo's mild mix.
    stain_shift
        Multiplies every dataset's stain shift (:attr:`DatasetWorld.stain`): 0 removes it,
        1 is the default, 3 is strong.
    scale_shift
        Per-dataset pixel scale: nuclei are ``(0.25 / mpp) ** scale_shift`` times
        their size (:attr:`DatasetWorld.mpp`; 0 off, 1 the real µm/px ratios, 2 doubled).
    blur_shift
        Per-dataset extra blur: sigma ``BASE_BLUR + blur_shift * DatasetWorld.blur`` px.
    unlabelled_mix
        Type mix of the unlabelled datasets (Kumar, MoNuSeg, TNBC), in [0, 1]: 0 is
        uniform over the types (the default), 1 is :attr:`DatasetWorld.unlabelled_mix`, in between
        a linear blend of the two.
    label_noise
        Annotator noise: the rate at which a written native code is replaced by
        another code of the dataset's vocabulary (uniformly chosen).
    habits
        Dataset-specific labelling habits (:attr:`DatasetWorld.habit`), e.g. NuCLS annotators
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
        tables = {d: e.native for d, e in entries().items() if e.native is not None}  # registry order
        self.native: dict[str, dict[str, int | None]] = {d: dict(v) for d, v in tables.items()}
        #: entries of the world's vocabulary that differ from the mapping tables' view
        self.mapping_errors: list[dict[str, Any]] = []
        self._streams: dict[tuple[str, str], np.random.Generator] = {}
        if self.config.mapping_error > 0:
            rng = np.random.default_rng([self.seed, 0x6D6170])
            for dataset, table in tables.items():
                codes = sorted({c for c in table.values() if c is not None})
                for name in TYPE_NAMES:
                    table_code = table[name]
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
        own = entry(dataset)
        if _unlabelled(dataset) or own.frequencies is None:
            if cfg.unlabelled_mix > 0 and own.unlabelled_mix is not None:
                shaped = own.unlabelled_mix
                total = sum(shaped.values())
                a = cfg.unlabelled_mix
                return {t: (1 - a) / len(TYPE_NAMES) + a * shaped.get(t, 0.0) / total for t in TYPE_NAMES}
            return own.frequencies if own.frequencies is not None else DEFAULT_FREQUENCY
        if cfg.real_class_mix and own.real_frequencies is not None:
            return own.real_frequencies
        return own.frequencies

    def _allowed(self, dataset: str, weights: dict[str, float]) -> list[str]:
        return [t for t in TYPE_NAMES if t in weights and weights[t] > 0 and (
            _unlabelled(dataset) or self.native.get(dataset, {}).get(t) is not None)]

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
        real_nuclei = _real_nuclei()
        if not self.config.real_sizes or dataset not in real_nuclei:
            return 1.0
        demo_nuclei = {d: entries()[d].demo_nuclei for d in real_nuclei}
        real = real_nuclei[dataset] / sum(real_nuclei.values())
        demo = demo_nuclei[dataset] / sum(demo_nuclei.values())
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
        return float((0.25 / entry(_images_of(dataset)).mpp) ** self.config.scale_shift)

    def stain(self, dataset: str) -> tuple[float, float, float]:
        """RGB shift added to every pixel of ``dataset``'s images."""
        base = entry(_images_of(dataset)).stain
        if self.config.stain_shift == 1.0:
            return base
        return tuple(float(v) * self.config.stain_shift for v in base)  # type: ignore[return-value]

    def blur(self, dataset: str) -> float:
        """Gaussian blur sigma (px) of ``dataset``'s images."""
        return BASE_BLUR + self.config.blur_shift * entry(_images_of(dataset)).blur

    # -- vocabularies, labels and truth --------------------------------------------------
    def native_code(self, dataset: str, kind: int) -> int:
        """The right native code of latent type ``kind`` in ``dataset`` (-1 for unlabelled datasets).

        This is the world's vocabulary (it differs from the mapping tables' view where
        :attr:`mapping_errors` says so); annotators' habits and noise are applied by
        :meth:`annotate`.
        """
        if _unlabelled(dataset):
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
        if _unlabelled(dataset) or not codes:
            return codes
        if self.config.habits:
            habit = entry(dataset).habit
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
        table = entries()[dataset].native
        if table is None:
            raise KeyError(dataset)
        return sorted({c for c in table.values() if c is not None})

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
