"""Demo CoNSeP archive ``consep.zip``: RGBA PNG tiles and HoVer-Net ``.mat`` labels.

Layout as the real archive: ``CoNSeP/{Train,Test}/{Images,Labels,Overlay}/`` and a
README. Labels are written with ``scipy.io.savemat`` (doubles, as MATLAB saves them):
``inst_map``, ``type_map``, ``inst_type`` (N x 1) and ``inst_centroid`` (N x 2, x, y,
0-based image moments).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

from nucdata.testing._archives import DemoArchives, scratch_folder, zip_tree
from nucdata.testing._draw import (
    appearance_kinds,
    draw_filled,
    ellipse_polygon,
    paint,
    place_nuclei,
)
from nucdata.testing.world import DatasetWorld, World

#: What the demo world knows of CoNSeP (:class:`nucdata.testing.world.DatasetWorld`).
#: inst_type: 1 other, 2 inflammatory, 3 healthy epithelial, 4 dysplastic/malignant
#: epithelial, 5 fibroblast, 6 muscle, 7 endothelial. No per-class counts are
#: published: the real-shaped mix is assumed (tumour, lymphocytes, fibroblasts common).
WORLD = DatasetWorld(
    native={"tumour": 4, "normal_epithelium": 3, "lymphocyte": 2, "plasma_cell": 2, "macrophage": 2,
            "neutrophil": 2, "fibroblast": 5, "endothelial": 7, "dead": 1, "mitotic": 4},
    frequencies={"tumour": 3, "normal_epithelium": 2, "lymphocyte": 2, "plasma_cell": 1, "macrophage": 0.5,
                 "neutrophil": 0.5, "fibroblast": 2, "endothelial": 1, "dead": 0.5, "mitotic": 0.3},
    real_frequencies={"tumour": 35, "normal_epithelium": 10, "lymphocyte": 15, "plasma_cell": 6, "macrophage": 3,
                      "neutrophil": 2, "fibroblast": 15, "endothelial": 6, "dead": 4, "mitotic": 1},
    stain=(10, -6, 4), mpp=0.25, blur=0.5,
    habit={"endothelial": 5},  # endothelial cells called "fibroblast"
    demo_nuclei=62,
)

TILES = {"Train": 4, "Test": 2}
SIZE = 96
#: MAT 5 header text (116 bytes, free text in the format); savemat's own holds the
#: creation time, which would make the archive's bytes differ from run to run.
MAT_HEADER = b"MATLAB 5.0 MAT-file, written by nucdata.demo".ljust(116, b" ")


def save_mat(path: Path, data: dict[str, np.ndarray]) -> None:
    """``scipy.io.savemat`` with a fixed header text, so the same seed gives the same bytes."""
    savemat(path, data)
    with open(path, "r+b") as fh:
        fh.write(MAT_HEADER)


def generate(folder: Path, rng: np.random.Generator, world: World | None = None, scale: float = 1) -> DemoArchives:
    """Write ``consep.zip``; ``scale`` multiplies the tiles per split."""
    tiles = {split: max(1, round(n * scale)) for split, n in TILES.items()}
    regions = {"train": 0, "test": 0}
    classes: dict[str, int] = {}
    truth: dict[str, list] = {}
    appearances = world.appearances("consep") if world else None
    annotated: dict[str, list[int]] = {}
    with scratch_folder() as tmp:
        top = tmp / "CoNSeP"
        for split, n in tiles.items():
            for sub in ("Images", "Labels", "Overlay"):
                (top / split / sub).mkdir(parents=True)
            for k in range(1, n + 1):
                name = f"{split.lower()}_{k}"
                count = int(rng.integers(8, 14))
                kinds = world.kinds_for("consep", rng, count) if world else None
                looks = world.looks_for("consep", kinds) if world else None
                nuclei = place_nuclei(rng, SIZE, SIZE, count, kinds, appearances, looks=looks)
                truth[name] = [(c.cx, c.cy, c.kind) for c in nuclei]
                inst = draw_filled((SIZE, SIZE), [ellipse_polygon(c, 16) for c in nuclei])
                present = [i for i in range(1, len(nuclei) + 1) if (inst == i).any()]
                relabel = np.zeros(len(nuclei) + 1, np.int64)
                relabel[present] = np.arange(1, len(present) + 1)
                inst = relabel[inst]
                kept = [nuclei[i - 1] for i in present]
                if world:
                    annotated[name] = world.annotate("consep", [c.kind for c in nuclei])
                    codes = np.array([annotated[name][i - 1] for i in present], np.int64)
                else:
                    codes = np.array([int(rng.integers(1, 8)) for _ in kept], np.int64)
                shift = world.stain("consep") if world else (0, 0, 0)
                blur = world.blur("consep") if world else 0.6
                rgb = paint(rng, inst, appearance_kinds(kept), appearances, shift, blur=blur)
                rows, cols = np.indices(inst.shape)
                centroid = np.array([[cols[inst == i].mean(), rows[inst == i].mean()]
                                     for i in range(1, len(kept) + 1)]).reshape(-1, 2)
                type_map = np.zeros_like(inst)
                for i, code in enumerate(codes, 1):
                    type_map[inst == i] = code
                rgba = np.dstack([rgb, np.full(inst.shape, 255, np.uint8)])
                Image.fromarray(rgba, "RGBA").save(top / split / "Images" / f"{name}.png")
                Image.fromarray(rgb).save(top / split / "Overlay" / f"{name}.png")
                save_mat(top / split / "Labels" / f"{name}.mat", {
                    "inst_map": inst.astype(np.float64), "type_map": type_map.astype(np.float64),
                    "inst_type": codes.reshape(-1, 1).astype(np.float64),
                    "inst_centroid": centroid.astype(np.float64),
                })
                regions[split.lower()] += len(kept)
                for code in codes.tolist():
                    classes[str(code)] = classes.get(str(code), 0) + 1
        (tmp / "README.txt").write_text("CoNSeP demo. inst_map, type_map, inst_type, inst_centroid.\n")
        archive = zip_tree(tmp, folder / "consep.zip", macos_junk=False)
    return DemoArchives(
        "consep", [archive], {archive.name: "all"},
        {"images": {k.lower(): v for k, v in tiles.items()}, "regions": {"all": sum(regions.values())},
         "classes": dict(sorted(classes.items(), key=lambda kv: int(kv[0])))},
        truth, annotated,
    )
