"""Demo PanNuke archives: ``fold_1.zip`` ... ``fold_3.zip`` with float64 npy stacks.

Layout as the real zips (``Fold 1/images/fold1/images.npy``, ``types.npy``,
``Fold 1/masks/fold1/masks.npy``, README files). Quirks reproduced: float64 arrays,
instance ids restarting in every class channel (so ids collide across channels), a
pixel claimed by two channels, empty patches, a background channel at index 5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nucdata.testing._archives import DemoArchives, scratch_folder, zip_tree
from nucdata.testing._draw import (
    appearance_kinds,
    draw_filled,
    ellipse_polygon,
    paint,
    place_nuclei,
)
from nucdata.testing.world import DatasetWorld, World

#: What the demo world knows of PanNuke (:class:`nucdata.testing.world.DatasetWorld`).
#: Channels: 0 Neoplastic, 1 Inflammatory, 2 Connective, 3 Dead, 4 Epithelial. The
#: real-shaped mix follows the five published class totals (Neoplastic 77,403,
#: Inflammatory 32,276, Connective 50,585, Dead 2,908, Epithelial 26,572; the card);
#: how a class splits over the latent types is assumed.
WORLD = DatasetWorld(
    native={"tumour": 0, "normal_epithelium": 4, "lymphocyte": 1, "plasma_cell": 1, "macrophage": 1,
            "neutrophil": 1, "fibroblast": 2, "endothelial": 2, "dead": 3, "mitotic": 0},
    frequencies={"tumour": 4, "normal_epithelium": 2, "lymphocyte": 2, "plasma_cell": 0.5, "macrophage": 0.5,
                 "neutrophil": 0.5, "fibroblast": 2, "endothelial": 1, "dead": 0.5, "mitotic": 0.3},
    real_frequencies={"tumour": 75_500, "mitotic": 1_903, "normal_epithelium": 26_572, "lymphocyte": 22_000,
                      "plasma_cell": 4_500, "macrophage": 3_500, "neutrophil": 2_276, "fibroblast": 38_000,
                      "endothelial": 12_585, "dead": 2_908},
    stain=(0, 0, 0), mpp=0.25, blur=0.0,
    habit={"dead": 1},  # dead (apoptotic) cells called "inflammatory"
    demo_nuclei=64,
)

PATCHES = {1: 6, 2: 5, 3: 7}
SIZE = 64
TISSUES = ["Breast", "Colon", "Adrenal_gland", "Bile-duct", "Kidney"]
DEMO_CODES = [0, 1, 2, 3, 4]


def patch(rng: np.random.Generator, world: World | None, empty: bool):
    """One patch: (rgb float64, masks float64 (H, W, 6), nuclei per channel, truth, written codes)."""
    count = 0 if empty else int(rng.integers(3, 7))
    kinds = world.kinds_for("pannuke", rng, count) if world else None
    looks = world.looks_for("pannuke", kinds) if world else None
    appearances = world.appearances("pannuke") if world else None
    nuclei = place_nuclei(rng, SIZE, SIZE, count, kinds, appearances, margin=3.0, looks=looks)
    inst = draw_filled((SIZE, SIZE), [ellipse_polygon(n, 16) for n in nuclei])
    if world:
        codes = world.annotate("pannuke", [n.kind for n in nuclei])
    else:
        codes = [int(rng.choice(DEMO_CODES)) for _ in nuclei]
    shift = world.stain("pannuke") if world else (0, 0, 0)
    blur = world.blur("pannuke") if world else 0.6
    rgb = paint(rng, inst, appearance_kinds(nuclei), appearances, shift, blur=blur)
    masks = np.zeros((SIZE, SIZE, 6), np.float64)
    next_id = dict.fromkeys(range(5), 1)
    per_channel = np.zeros(5, int)
    for k, code in enumerate(codes, 1):
        where = inst == k
        if not where.any():
            continue
        masks[..., code][where] = next_id[code]  # ids restart per channel, as in PanNuke
        next_id[code] += 1
        per_channel[code] += 1
    masks[..., 5] = (masks[..., :5].sum(-1) == 0).astype(np.float64)
    truth = [(n.cx, n.cy, n.kind) for n in nuclei]
    return rgb.astype(np.float64), masks, per_channel, truth, list(codes)


def generate(folder: Path, rng: np.random.Generator, world: World | None = None, scale: float = 1) -> DemoArchives:
    """Write ``fold_1.zip`` ... ``fold_3.zip``; ``scale`` multiplies the patches per fold."""
    patches = {fold: max(1, round(n * scale)) for fold, n in PATCHES.items()}
    files, roles = [], {}
    regions: dict[str, int] = {}
    classes = np.zeros(5, int)
    truth: dict[str, list] = {}
    annotated: dict[str, list[int]] = {}
    with scratch_folder() as tmp:
        for fold, n in patches.items():
            top = tmp / f"fold{fold}" / f"Fold {fold}"
            (top / "images" / f"fold{fold}").mkdir(parents=True)
            (top / "masks" / f"fold{fold}").mkdir(parents=True)
            images = np.zeros((n, SIZE, SIZE, 3), np.float64)
            masks = np.zeros((n, SIZE, SIZE, 6), np.float64)
            for i in range(n):
                stem = f"fold{fold}_{i:04d}"
                images[i], masks[i], per_channel, truth[stem], annotated[stem] = patch(rng, world, empty=(i == 1))
                classes += per_channel
            if fold == 1:
                # A pixel also claimed by a higher channel: the lower channel keeps it and
                # the higher channel's one-pixel nucleus is dropped as fully overlapped.
                ys, xs = np.nonzero(masks[0, ..., :4].sum(-1) > 0)
                if ys.size:
                    c = int(np.argmax(masks[0, ys[0], xs[0], :4] > 0))
                    masks[0, ys[0], xs[0], c + 1] = 77
            regions[f"fold{fold}"] = int(sum(len(np.unique(masks[i, ..., c])) - 1 for i in range(n) for c in range(5)))
            types = np.array([TISSUES[i % len(TISSUES)] for i in range(n)], dtype="<U13")
            np.save(top / "images" / f"fold{fold}" / "images.npy", images)
            np.save(top / "images" / f"fold{fold}" / "types.npy", types)
            np.save(top / "masks" / f"fold{fold}" / "masks.npy", masks)
            (top / "README.md").write_text("PanNuke demo fold. Channels: 0..4 classes, 6: Background (sic)\n")
            (top / "masks" / "by-nc-sa.md").write_text("CC BY-NC-SA 4.0\n")
            archive = zip_tree(tmp / f"fold{fold}", folder / f"fold_{fold}.zip", macos_junk=False)
            files.append(archive)
            roles[archive.name] = f"fold{fold}"
    return DemoArchives(
        "pannuke", files, roles,
        {"images": {f"fold{k}": v for k, v in patches.items()}, "regions": regions,
         "classes": {str(c): int(v) for c, v in enumerate(classes) if v}},
        truth, annotated,
    )
