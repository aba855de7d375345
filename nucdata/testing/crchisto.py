"""Demo CRCHisto archive ``crchistophenotypes_2016_04_28.zip``: BMP images and point ``.mat`` files.

Layout as the real zip: ``CRCHistoPhenotypes_2016_04_28/{Detection,Classification}/imgN/``
with ``imgN.bmp`` (24-bit BMP, the same bytes in both folders), ``imgN_detection.mat``
(every marked centre) and ``imgN_{epithelial,fibroblast,inflammatory,others}.mat`` (class
marks), a ``Readme.txt``, and ``__MACOSX/._*`` entries. Every ``.mat`` is written by
:func:`mat_bytes` from the MATLAB v5 format itself (not with ``scipy.io.savemat``, nor with
the converter): one compressed variable ``detection``, an N x 2 double array of x, y in
1-based pixel coordinates (the nucleus drawn at 0-based pixel centre (cx, cy) is marked
at (cx + 1, cy + 1)); an empty array is written as MATLAB writes it, a 0 x 2 double whose
data element is 0 bytes of ``miUINT8`` (``scipy.io.loadmat`` returns it as uint8).

Quirks of the real files reproduced: each detection file lists the classified nuclei
first (in the class files' order), then the unclassified ones (about a quarter of all);
a class file with one point and an empty one; a class mark a few pixels off its centre;
a detection row repeated exactly (a double click); a nucleus cut by the top edge whose
centre lies 0.6 px outside the image (clipped by the converter); and, beyond the real
files, a centre 1.5 px outside (dropped with its mark) and a class mark with no centre
near it (dropped and listed, as img55's in the real release).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from nucdata.testing._archives import DemoArchives, scratch_folder, zip_tree
from nucdata.testing._draw import (
    Nucleus,
    appearance_kinds,
    draw_filled,
    ellipse_polygon,
    paint,
    place_nuclei,
)
from nucdata.testing.world import DatasetWorld, World

#: What the demo world knows of CRCHisto (:class:`nucdata.testing.world.DatasetWorld`).
#: Codes: 1 epithelial, 2 inflammatory, 3 fibroblast, 4 others (miscellaneous: mitoses,
#: dead cells, endothelium). The real-shaped mix follows the per-class totals a third
#: party quotes from the paper (7,722 epithelial, 6,971 inflammatory, 5,712 fibroblast,
#: 2,039 miscellaneous); how a class splits over the latent types is assumed. µm/px is
#: the card's nominal 0.55 (20x).
WORLD = DatasetWorld(
    native={"tumour": 1, "normal_epithelium": 1, "lymphocyte": 2, "plasma_cell": 2, "macrophage": 2,
            "neutrophil": 2, "fibroblast": 3, "endothelial": 4, "dead": 4, "mitotic": 4},
    frequencies={"tumour": 3, "normal_epithelium": 1.5, "lymphocyte": 2, "plasma_cell": 1, "macrophage": 0.5,
                 "neutrophil": 0.5, "fibroblast": 2, "endothelial": 1, "dead": 0.5, "mitotic": 0.3},
    real_frequencies={"tumour": 6_500, "normal_epithelium": 1_222, "lymphocyte": 4_000, "plasma_cell": 1_800,
                      "macrophage": 700, "neutrophil": 471, "fibroblast": 5_712, "endothelial": 1_200,
                      "dead": 500, "mitotic": 339},
    stain=(-10, -8, 6), mpp=0.55, blur=0.8,
    habit={"endothelial": 3},  # endothelial cells called "fibroblast"
    demo_nuclei=58,
)

#: class file suffixes in the order the real detection files list their classified rows
FILE_ORDER = ("epithelial", "fibroblast", "inflammatory", "others")
CODE = {"epithelial": 1, "inflammatory": 2, "fibroblast": 3, "others": 4}
IMAGES = 6
SIZE = 64
TOP = "CRCHistoPhenotypes_2016_04_28"
UNCLASSIFIED = 0.25
README = (
    "### Description of the Dataset\n\nDemo of CRCHisto for nucdata: H&E-like images with nucleus centres "
    "marked for detection, most of them also with a class label (epithelial, inflammatory, fibroblast, "
    "miscellaneous).\n\n### Changes\n2016_04_28 : Rename images to make images in 'Classification' and "
    "'Detection' folders corresponding.\n")


def mat_bytes(points: np.ndarray, platform: str = "nucdata demo") -> bytes:
    """A MATLAB v5 MAT-file holding ``detection`` = ``points`` (N x 2 double), compressed.

    Written from the format (MathWorks, "MAT-File Format", level 5): a 128-byte header
    (text, subsystem offset, version 0x0100, endian indicator ``IM``), then one
    ``miCOMPRESSED`` element holding the zlib-compressed ``miMATRIX``: array flags
    (``mxDOUBLE_CLASS``), dimensions, the name and the real part, column by column. An
    empty array's real part is 0 bytes of ``miUINT8``, as in the real files.
    """
    header = f"MATLAB 5.0 MAT-file, Platform: {platform}, written by nucdata.testing.crchisto".encode()
    header = header[:116].ljust(116, b" ") + b"\x00" * 8 + struct.pack("<H", 0x0100) + b"IM"

    def element(kind: int, data: bytes) -> bytes:
        return struct.pack("<II", kind, len(data)) + data + b"\x00" * (-len(data) % 8)

    array = np.asarray(points, "<f8").reshape(-1, 2)
    body = (element(6, struct.pack("<II", 6, 0))  # miUINT32 array flags: mxDOUBLE_CLASS
            + element(5, struct.pack("<ii", len(array), 2))  # miINT32 dimensions
            + element(1, b"detection")  # miINT8 name
            + (element(9, array.T.tobytes()) if len(array) else element(2, b"")))  # miDOUBLE, or empty miUINT8
    matrix = struct.pack("<II", 14, len(body)) + body  # miMATRIX
    packed = zlib.compress(matrix)
    return header + struct.pack("<II", 15, len(packed)) + packed  # miCOMPRESSED


def generate(folder: Path, rng: np.random.Generator, world: World | None = None, scale: float = 1) -> DemoArchives:
    """Write ``crchistophenotypes_2016_04_28.zip``; ``scale`` multiplies the images."""
    n_images = max(IMAGES, round(IMAGES * scale))
    appearances = world.appearances("crchisto") if world else None
    shift = world.stain("crchisto") if world else (0, 0, 0)
    blur = world.blur("crchisto") if world else 0.6
    truth: dict[str, list] = {}
    annotated: dict[str, list[int]] = {}
    regions = marks = 0
    classes: dict[str, int] = {}
    with scratch_folder() as tmp:
        top = tmp / TOP
        for k in range(1, n_images + 1):
            name = f"img{k}"
            count = int(rng.integers(8, 13))
            kinds = world.kinds_for("crchisto", rng, count) if world else None
            looks = world.looks_for("crchisto", kinds) if world else None
            nuclei = place_nuclei(rng, SIZE, SIZE, count, kinds, appearances, margin=3.0, looks=looks)
            if k == 1:  # a nucleus cut by the top edge, its centre 0.6 px above the first row
                nuclei.append(Nucleus(20.3, -0.6, 4.0, 3.0, 0.3, nuclei[0].kind if nuclei else 0))
            if k == 2:  # one whose centre lies 1.5 px left of the image: the converter drops it
                nuclei.append(Nucleus(-1.5, 30.2, 4.0, 3.5, 0.0, nuclei[0].kind if nuclei else 0))
            inst = draw_filled((SIZE, SIZE), [ellipse_polygon(c, 16) for c in nuclei])
            rgb = paint(rng, inst, appearance_kinds(nuclei), appearances, shift, blur=blur)
            if world:
                codes = world.annotate("crchisto", [c.kind for c in nuclei])
            else:
                codes = [int(rng.integers(1, 5)) for _ in nuclei]
            unclassified = rng.random(len(nuclei)) < UNCLASSIFIED
            if k == 2 and nuclei:
                unclassified[-1] = False  # the dropped centre carries a mark, which goes with it
            written = [-1 if u else int(c) for c, u in zip(codes, unclassified, strict=True)]
            truth[name] = [(c.cx, c.cy, c.kind) for c in nuclei]
            annotated[name] = written
            centres = np.array([[c.cx + 1.0, c.cy + 1.0] for c in nuclei], np.float64).reshape(-1, 2)
            by_class = {s: [i for i, code in enumerate(written) if code == CODE[s]] for s in FILE_ORDER}
            if k == 4:  # no fibroblast in this image: an empty class file
                for i in by_class["fibroblast"]:
                    written[i] = -1
                by_class["fibroblast"] = []
            if k == 5:  # exactly one "others" mark
                others = [i for i, code in enumerate(written) if code != -1 and i not in by_class["others"]]
                for i in by_class["others"][1:]:
                    written[i] = -1
                if not by_class["others"] and others:
                    written[others[0]] = CODE["others"]
                by_class = {s: [i for i, code in enumerate(written) if code == CODE[s]] for s in FILE_ORDER}
            order = [i for s in FILE_ORDER for i in by_class[s]]
            order += [i for i in range(len(nuclei)) if written[i] == -1]
            detection = centres[order]
            mark_files = {s: centres[by_class[s]].copy() for s in FILE_ORDER}
            if k == 3:  # a mark 2.5 px off its centre
                first = next((s for s in FILE_ORDER if len(mark_files[s])), None)
                if first is not None:
                    mark_files[first][0] += (1.5, -2.0)
            orphan = None
            if k == 3:  # a mark with no centre within 10 px: a free spot far from every nucleus
                orphan = _free_spot(centres)
                if orphan is not None:
                    mark_files["others"] = np.vstack([mark_files["others"], [orphan]])
            if k == 2:  # an unclassified centre clicked twice
                tail = [i for i in order if written[i] == -1]
                if tail:
                    detection = np.vstack([detection, centres[tail[-1]]])
            for sub in ("Detection", "Classification"):
                (top / sub / name).mkdir(parents=True)
            bmp = top / "Detection" / name / f"{name}.bmp"
            Image.fromarray(rgb, "RGB").save(bmp, format="BMP")
            (top / "Classification" / name / f"{name}.bmp").write_bytes(bmp.read_bytes())
            (top / "Detection" / name / f"{name}_detection.mat").write_bytes(mat_bytes(detection))
            for s in FILE_ORDER:
                (top / "Classification" / name / f"{name}_{s}.mat").write_bytes(mat_bytes(mark_files[s]))
            regions += len(detection)
            marks += sum(len(v) for v in mark_files.values())
            # what the store holds, by construction: the 1.5-px-outside centre (and its mark)
            # and the orphan mark are dropped; the clicked-twice centre counts twice
            stored = [written[i] for i in order if not (k == 2 and i == len(nuclei) - 1)]
            stored += [-1] * (len(detection) - len(order))
            for code in stored:
                classes[str(code)] = classes.get(str(code), 0) + 1
        (top / "Readme.txt").write_text(README, encoding="utf-8")
        archive = zip_tree(tmp, folder / "crchistophenotypes_2016_04_28.zip")
    return DemoArchives(
        "crchisto", [archive], {archive.name: "all"},
        {"images": {"all": n_images}, "regions": {"all": regions},
         "classes": dict(sorted(classes.items(), key=lambda kv: int(kv[0]))), "class_marks": marks},
        truth, annotated,
    )


def _free_spot(centres: np.ndarray) -> tuple[float, float] | None:
    """A 1-based point of the image at least 12 px from every centre (``None`` if there is none)."""
    grid = np.stack(np.meshgrid(np.arange(4, SIZE - 3, 2.0), np.arange(4, SIZE - 3, 2.0)), -1).reshape(-1, 2)
    if not len(centres):
        return float(grid[0, 0]), float(grid[0, 1])
    d = np.hypot(*(grid[:, None, :] - centres[None]).transpose(2, 0, 1)).min(1)
    best = int(np.argmax(d))
    return (float(grid[best, 0]) + 0.25, float(grid[best, 1]) + 0.25) if d[best] >= 12 else None
