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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .synth import Appearance

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


@dataclass
class World:
    """Latent types, appearances and vocabularies of one generated world."""

    seed: int = 0
    types: dict[str, Appearance] = field(default_factory=lambda: dict(TYPES))

    def kinds_for(self, dataset: str, rng: np.random.Generator, count: int) -> list[int]:
        """Latent type indices of ``count`` nuclei drawn for ``dataset``."""
        weights = FREQUENCIES.get(dataset, DEFAULT_FREQUENCY)
        allowed = [t for t in TYPE_NAMES if t in weights and (
            dataset in UNLABELLED_DATASETS or NATIVE.get(dataset, {}).get(t) is not None)]
        p = np.array([weights[t] for t in allowed], float)
        picks = rng.choice(len(allowed), size=count, p=p / p.sum())
        return [TYPE_NAMES.index(allowed[i]) for i in picks]

    def appearances(self) -> dict[int, Appearance]:
        return {i: self.types[name] for i, name in enumerate(TYPE_NAMES)}

    def native_code(self, dataset: str, kind: int) -> int:
        """Native code of latent type ``kind`` in ``dataset`` (-1 for unlabelled datasets)."""
        if dataset in UNLABELLED_DATASETS:
            return -1
        code = NATIVE[dataset][TYPE_NAMES[kind]]
        if code is None:
            raise ValueError(f"{dataset} has no class for {TYPE_NAMES[kind]}")
        return code

    def truth_native(self, label_set_dataset: str, kind: int) -> int | None:
        """The truth of a type under a label set, as that set's dataset's native code."""
        return NATIVE[label_set_dataset][TYPE_NAMES[kind]]
