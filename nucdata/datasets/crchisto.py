"""CRCHisto (``CRCHistoPhenotypes_2016_04_28``): nucleus centres marked on 500x500 H&E images.

Layout, found anywhere under the folder (the official zip adds the top folder
``CRCHistoPhenotypes_2016_04_28/``; ``__MACOSX/`` and ``._*`` entries are ignored)::

    <root>/Detection/imgN/imgN.bmp                 the image (24-bit BMP)
    <root>/Detection/imgN/imgN_detection.mat       every marked nucleus centre
    <root>/Classification/imgN/imgN.bmp            the same image (byte-identical)
    <root>/Classification/imgN/imgN_<class>.mat    class marks: epithelial, inflammatory,
                                                   fibroblast, others
    <root>/Readme.txt

Every ``.mat`` is MATLAB v5 with one variable, ``detection``: an N x 2 array of x, y in
1-based MATLAB pixel coordinates (sub-pixel floats; the centre of the top-left pixel is
(1, 1)). Empty files hold a 0 x 2 array, which ``scipy.io.loadmat`` returns as uint8.

Rules (recorded in every manifest under ``rules``):

* **Centres are the detection rows.** Every row of ``imgN_detection.mat`` is one nucleus,
  duplicates included (the released files hold a few exactly repeated rows; each copy
  is a nucleus, as the published count of 29,756 counts them); ``source_id`` is its
  1-based row. ``annotations_read`` counts these rows, the count the card checks.
* **Coordinates.** The store's frame has its origin at the centre of the top-left pixel,
  so a centre is stored as the file's (x - 1, y - 1); the image content confirms the
  1-based convention (the nuclei's darkness peaks there).
* **Points only.** There are no masks: every nucleus is a nucleus without mask
  (``has_mask`` false, ``area`` 0, as NuCLS's boxes) whose box is the one pixel that
  holds its centre, ``(round(x), round(y), round(x) + 1, round(y) + 1)``, and whose
  centroid is the centre itself (sub-pixel). Crops centre on it and carry that one pixel
  as their mask channel; tiles and segmentation targets have no pixels for it.
* **Classes.** ``imgN_<class>.mat`` rows are class marks: native codes 1 epithelial,
  2 inflammatory, 3 fibroblast, 4 others (the paper's "miscellaneous"), in the Readme's
  order. A centre that no mark is assigned to has label -1 (detected, not classified).
* **Matching.** Class marks are assigned to detection centres one to one, per image,
  within :data:`MATCH_TOLERANCE_PX` (10 px): the assignment with the most pairs, and
  among those the smallest total distance (``min_weight_full_bipartite_matching`` on
  the pairs within the tolerance). A nearest-centre rule would put two marks on one
  centre (where a nucleus has two close marks, or a centre is duplicated) and leave
  another bare. On the released images 1-60 every genuine pair lies within 9.3 px and
  the next candidate is 12.7 px away, so any tolerance in [9.3, 12.7) gives the same
  pairs. A mark with no free centre within the tolerance is dropped, counted under
  ``dropped`` and listed in ``extra.unmatched_marks`` with its image, class, position
  and reason; the distance of every stored mark to its centre is the nucleus column
  ``mark_distance`` (NaN without a mark).
* **Border.** Matching uses the file's coordinates; then a centre outside the image by
  at most :data:`EDGE_TOLERANCE_PX` (1 px) beyond the centres of the edge pixels is
  clipped onto them (a nucleus cut by the border), and one further out is dropped with
  its mark, both counted.
* **Images.** The Detection and Classification copies must be the same image (the
  2016_04_28 release made them so); byte-identical copies are read once, copies with
  equal pixels are accepted and counted, different pixels are refused (an earlier
  release). Images are ordered by number (``img2`` before ``img10``).
* **Split.** There is no official split: every image is in ``all``. The images are
  crops of 10 whole-slide images of 9 patients, but nothing in the files says which,
  so the only grouping the files support is the image.
* ``mpp`` is NaN (no source gives it; the card's ``mpp_default`` is a nominal value);
  ``tissue`` is ``colon``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching
from scipy.spatial import cKDTree

from nucdata._util import mat
from nucdata._util.hashing import sha256_file
from nucdata._util.images import PIXELS_ENV_VAR, pixel_limit, read_rgb
from nucdata.datasets._base import ConversionReport, Converter, list_files, walk_dirs
from nucdata.errors import MalformedAnnotationError, MissingFilesError
from nucdata.store import StoreWriter

#: native code -> the class file suffix (the Readme's order; "others" is "miscellaneous")
CLASSES = {1: "epithelial", 2: "inflammatory", 3: "fibroblast", 4: "others"}
#: the one variable of every ``.mat`` file
KEY = "detection"
#: class marks farther than this from every free detection centre are not assigned (px)
MATCH_TOLERANCE_PX = 10.0
#: centres at most this far outside the image are clipped onto its edge pixels, others dropped (px)
EDGE_TOLERANCE_PX = 1.0
#: the most candidate centres (within the tolerance) per class mark, on average, before a file is refused
MAX_CANDIDATES_PER_MARK = 100
SPLIT = "all"
TISSUE = "colon"
_IMAGE_DIR = re.compile(r"img(\d+)", re.IGNORECASE)

RULES = {
    "centres": "every row of imgN_detection.mat is one nucleus (duplicated rows included); source_id = its 1-based row; annotations read = these rows",
    "coordinates": "the files' x, y are 1-based MATLAB pixel coordinates: stored as (x - 1, y - 1), origin at the centre of the top-left pixel",
    "points": "no masks: has_mask false, area 0, bbox = the one pixel holding the centre, centroid = the centre (sub-pixel)",
    "classes": "imgN_<class>.mat rows are class marks: 1 epithelial, 2 inflammatory, 3 fibroblast, 4 others (miscellaneous); a centre without a mark has label -1",
    "matching": f"class marks are assigned to detection centres one to one per image within {MATCH_TOLERANCE_PX:g} px: most pairs, then the smallest total distance; a mark without a free centre is dropped and listed in extra.unmatched_marks; mark_distance holds each stored mark's distance",
    "border": f"matched on the files' coordinates; a centre outside the image by at most {EDGE_TOLERANCE_PX:g} px beyond the edge pixels' centres is clipped onto them, one further out is dropped with its mark",
    "images": "the Detection and Classification copies of each image must have the same pixels (byte-identical in the 2016_04_28 release); images ordered by number",
    "splits": "no official split: every image in 'all'; the files do not say which of the 10 slides (9 patients) an image comes from",
    "mpp": "NaN: no source gives the um/px (20x objective); the card's mpp_default is a nominal value for resampling",
}


def read_points(path: Path) -> np.ndarray:
    """The ``detection`` variable of one CRCHisto ``.mat`` as ``(N, 2)`` float64 x, y (1-based).

    The header is checked before anything is read (``scipy.io.whosmat`` gives each
    variable's name, dimensions and class without its data): ``detection`` must exist,
    be numeric and N x 2 (or empty), and hold at most one row per pixel of the image
    pixel limit (``NUCDATA_MAX_IMAGE_PIXELS``), so a crafted header cannot make
    ``loadmat`` allocate gigabytes. Empty arrays (stored as 0 x 2 uint8) and single
    points come back as ``(0, 2)`` and ``(1, 2)``.

    Raises
    ------
    MalformedAnnotationError
        Naming the file and what is wrong with it (missing key, v7.3 file, shape, class,
        size, NaN or infinite values).
    """
    found = mat.variables(path, "CRCHisto")
    if KEY not in found:
        raise MalformedAnnotationError(
            f"{path}: key {KEY!r} is missing (found {sorted(found)}); every CRCHisto .mat holds its points "
            f"in {KEY!r}. Use the official archive's files.")
    shape, _ = found[KEY]
    elements = mat.numeric_shape(path, KEY, found[KEY], "CRCHisto")
    if elements and (len(shape) != 2 or shape[1] != 2):
        raise MalformedAnnotationError(
            f"{path}: {KEY!r} is {' x '.join(map(str, shape))}; CRCHisto's points are N x 2 (x, y). The file "
            "is not CRCHisto ground truth.")
    limit = pixel_limit()
    if limit is not None and elements // 2 > limit:
        raise MalformedAnnotationError(
            f"{path}: {KEY!r} holds {elements // 2:,} points, more than the limit of {limit:,} (one per image "
            f"pixel); nothing of it was read. If the file is genuine, set {PIXELS_ENV_VAR} to a larger number "
            "(0: no limit).")
    value = mat.load_variables(path, [KEY])[KEY]
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise MalformedAnnotationError(f"{path}: {KEY!r} holds {array.dtype} values, not numbers.")
    points = array.astype(np.float64).reshape(-1, 2)
    if not np.isfinite(points).all():
        raise MalformedAnnotationError(
            f"{path}: {KEY!r} holds NaN or infinite coordinates ({int((~np.isfinite(points)).any(1).sum())} of "
            f"{len(points)} points); the file is damaged. Extract or download it again.")
    return points


def match_marks(marks: np.ndarray, centres: np.ndarray, tolerance: float = MATCH_TOLERANCE_PX,
                where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Assign class marks to centres one to one within ``tolerance``.

    Among all one-to-one assignments that use only pairs at most ``tolerance`` apart,
    the one with the most pairs and, among those, the smallest total distance (a
    minimum-weight full matching on the candidate pairs, each mark also offered a
    private "unassigned" option that costs more than any set of real pairs).

    Parameters
    ----------
    marks, centres
        ``(M, 2)`` and ``(N, 2)`` x, y.
    tolerance
        The largest distance of a pair, in the coordinates' unit.
    where
        Names the file in the error.

    Returns
    -------
    centre_of_mark, distance
        ``(M,)`` int64: the centre each mark is assigned to, -1 for none; ``(M,)``
        float64: its distance (NaN for none).

    Raises
    ------
    MalformedAnnotationError
        When the marks and centres are so crowded that the candidate pairs exceed
        :data:`MAX_CANDIDATES_PER_MARK` per mark (not annotation points).
    """
    m, n = len(marks), len(centres)
    assigned = np.full(m, -1, np.int64)
    distance = np.full(m, np.nan)
    if m == 0 or n == 0:
        return assigned, distance
    tree = cKDTree(centres)
    counts = tree.query_ball_point(marks, tolerance, return_length=True)
    if int(np.sum(counts)) > MAX_CANDIDATES_PER_MARK * m + 1000:
        raise MalformedAnnotationError(
            f"{where}: {int(np.sum(counts)):,} centre-mark pairs lie within {tolerance:g} px for {m:,} marks; "
            "annotation points are not that crowded. The file is damaged or not CRCHisto ground truth.")
    near = tree.query_ball_point(marks, tolerance)
    rows = np.repeat(np.arange(m), [len(c) for c in near])
    cols = np.fromiter((j for c in near for j in c), np.int64, count=rows.size)
    if rows.size == 0:
        return assigned, distance
    d = np.hypot(*(marks[rows] - centres[cols]).T)
    # weights > 0 (csgraph drops zeros): pair = 1 + d; "unassigned" dearer than any set of pairs
    unassigned = m * (1.0 + tolerance) + 1.0
    graph = csr_matrix(
        (np.concatenate([1.0 + d, np.full(m, unassigned)]),
         (np.concatenate([rows, np.arange(m)]), np.concatenate([cols, n + np.arange(m)]))),
        shape=(m, n + m))
    row_ind, col_ind = min_weight_full_bipartite_matching(graph)
    real = col_ind < n
    assigned[row_ind[real]] = col_ind[real]
    hit = assigned >= 0
    distance[hit] = np.hypot(*(marks[hit] - centres[assigned[hit]]).T)
    return assigned, distance


def find_root(folder: Path) -> Path:
    """The folder holding ``Detection/`` and ``Classification/`` under ``folder``.

    Raises
    ------
    MissingFilesError
        When none or more than one such folder exists.
    """
    roots = []
    for d in walk_dirs(folder):
        subs = {p.name.lower() for p in d.iterdir() if p.is_dir()}
        if {"detection", "classification"} <= subs:
            roots.append(d)
    if not roots:
        raise MissingFilesError(
            f"{folder}: no CRCHisto dataset found (a folder holding Detection/ and Classification/, "
            "CRCHistoPhenotypes_2016_04_28/ in the official zip). Extract crchistophenotypes_2016_04_28.zip "
            "there, or point --from at the folder that holds Detection/ and Classification/.")
    if len(roots) > 1:
        raise MissingFilesError(
            f"{folder}: {len(roots)} CRCHisto copies found ({', '.join(str(r) for r in roots[:3])}); point "
            "--from at the one to convert.")
    return roots[0]


def _subdir(root: Path, name: str) -> Path:
    return next(p for p in root.iterdir() if p.is_dir() and p.name.lower() == name)


def image_dirs(top: Path) -> dict[int, Path]:
    """``{N: top/imgN}`` for the image folders of ``Detection/`` or ``Classification/``."""
    found: dict[int, Path] = {}
    for p in top.iterdir():
        match = _IMAGE_DIR.fullmatch(p.name)
        if p.is_dir() and match:
            number = int(match.group(1))
            if number in found:
                raise MissingFilesError(f"{top}: two folders for image {number}: {found[number].name}, {p.name}.")
            found[number] = p
    return found


def _files(folder: Path) -> dict[str, Path]:
    return {p.name.lower(): p for p in list_files(folder, (".bmp", ".mat"))}


def _same_image(a: Path, b: Path) -> str:
    """``"bytes"`` when the two files are identical, ``"pixels"`` when only their pixels are."""
    if a.stat().st_size == b.stat().st_size and sha256_file(a) == sha256_file(b):
        return "bytes"
    if np.array_equal(read_rgb(a), read_rgb(b)):
        return "pixels"
    raise MalformedAnnotationError(
        f"{a} and {b} are different images. In the 2016_04_28 release the Detection and Classification "
        "copies of each image are the same (its Readme: 'Rename images to make images in Classification and "
        "Detection folders corresponding'); this is an earlier release or a damaged copy. Download "
        "crchistophenotypes_2016_04_28.zip again.")


class CRCHisto(Converter):
    """CRCHisto from ``Detection/`` and ``Classification/``: centres, class marks matched to them."""

    name = "crchisto"
    version = "1"

    def convert(
        self, folder: Path, writer: StoreWriter, progress: Callable[[str], None] | None = None
    ) -> ConversionReport:
        """Convert every image under ``folder``.

        Raises
        ------
        MissingFilesError
            No ``Detection/`` beside ``Classification/``, or an image without one of its files.
        MalformedAnnotationError
            A ``.mat`` that is not CRCHisto ground truth, or two copies of an image that differ.
        CorruptArchiveError
            An unreadable image.
        """
        say = progress or (lambda _msg: None)
        report = ConversionReport(rules=dict(RULES))
        report.extra["classes"] = {str(c): n for c, n in CLASSES.items()}
        root = find_root(folder)
        detection, classification = image_dirs(_subdir(root, "detection")), image_dirs(_subdir(root, "classification"))
        lonely = sorted(set(detection) ^ set(classification))
        if lonely:
            raise MissingFilesError(
                f"{root}: images {', '.join(f'img{n}' for n in lonely[:10])} have a folder in only one of "
                "Detection/ and Classification/. Re-extract the archive.")
        state: dict[str, Any] = {"marks": Counter(), "matched": 0, "exact": 0, "worst": 0.0, "unmatched": [],
                                 "clipped": [], "duplicates": 0, "same": Counter()}
        numbers = sorted(detection)
        for i, number in enumerate(numbers, 1):
            n = self._convert_image(writer, report, state, number, detection[number], classification[number])
            if i % 20 == 0 or i == len(numbers):
                say(f"[{i}/{len(numbers)}] img{number}: {n} centres")
        marks = state["marks"]
        report.extra["class_marks_read"] = {CLASSES[c]: int(marks[c]) for c in CLASSES}
        report.extra["class_marks_read_total"] = int(sum(marks.values()))
        report.extra["class_marks_matched"] = state["matched"]
        report.extra["class_marks_matched_exactly"] = state["exact"]
        report.extra["largest_match_distance_px"] = round(state["worst"], 4)
        report.extra["unmatched_marks"] = state["unmatched"]
        report.extra["clipped_centres"] = state["clipped"]
        report.extra["duplicate_centres"] = state["duplicates"]
        report.extra["images_identical_in_both_folders"] = dict(state["same"])
        report.notes.append(
            f"{sum(marks.values())} class marks read, {state['matched']} assigned to a centre "
            f"({state['exact']} at distance 0, the farthest {state['worst']:.2f} px), {len(state['unmatched'])} "
            f"without a free centre within {MATCH_TOLERANCE_PX:g} px (extra.unmatched_marks)")
        expected = self.card.expected.get("class_marks")
        total = int(sum(marks.values()))
        if isinstance(expected, int) and not isinstance(expected, bool) and expected != total:
            report.notes.append(f"the card gives {expected:,} class marks for the whole release; {total:,} were read "
                                "(a partial copy, or another release)")
        if state["duplicates"]:
            report.notes.append(f"{state['duplicates']} detection rows repeat an earlier row of their file "
                                "exactly; each copy is kept as a nucleus")
        return report

    def _convert_image(self, writer: StoreWriter, report: ConversionReport, state: dict[str, Any],
                       number: int, det_dir: Path, cls_dir: Path) -> int:
        stem = f"img{number}"
        det, cls = _files(det_dir), _files(cls_dir)
        wanted = {det_dir: [f"{stem}.bmp", f"{stem}_detection.mat"],
                  cls_dir: [f"{stem}.bmp"] + [f"{stem}_{c}.mat" for c in CLASSES.values()]}
        missing = [str(d / f) for d, names in wanted.items() for f in names if f not in (det if d == det_dir else cls)]
        if missing:
            raise MissingFilesError(f"CRCHisto image {stem} lacks {', '.join(missing)}. Re-extract the archive.")
        state["same"][_same_image(det[f"{stem}.bmp"], cls[f"{stem}.bmp"])] += 1
        rgb = read_rgb(det[f"{stem}.bmp"])
        h, w = rgb.shape[:2]
        centres = read_points(det[f"{stem}_detection.mat"])
        report.regions[SPLIT] += len(centres)
        state["duplicates"] += len(centres) - len(np.unique(centres, axis=0))
        marks, codes = [], []
        for code, suffix in CLASSES.items():
            points = read_points(cls[f"{stem}_{suffix}.mat"])
            marks.append(points)
            codes.append(np.full(len(points), code, np.int32))
            state["marks"][code] += len(points)
        mark_xy, mark_code = np.concatenate(marks), np.concatenate(codes)
        # 1. marks to centres, on the files' coordinates
        centre_of_mark, distance = match_marks(mark_xy, centres, where=str(cls_dir))
        labels = np.full(len(centres), -1, np.int32)
        mark_distance = np.full(len(centres), np.nan, np.float32)
        hit = centre_of_mark >= 0
        labels[centre_of_mark[hit]] = mark_code[hit]
        mark_distance[centre_of_mark[hit]] = distance[hit]
        state["matched"] += int(hit.sum())
        state["exact"] += int((distance[hit] == 0).sum())
        if hit.any():
            state["worst"] = max(state["worst"], float(distance[hit].max()))
        for j in np.flatnonzero(~hit):
            report.dropped["class_mark_without_free_centre"] += 1
            state["unmatched"].append(self._unmatched(stem, mark_xy[j], int(mark_code[j]), centres, labels))
        # 2. the border, in the store's frame
        xy = centres - 1.0
        limit = np.array([w - 1, h - 1], np.float64)
        beyond = np.maximum(np.maximum(-xy, xy - limit), 0.0).max(axis=1)
        keep = beyond <= EDGE_TOLERANCE_PX
        for r in np.flatnonzero(keep & (beyond > 0)):
            state["clipped"].append({"image": stem, "row": int(r) + 1, "x": float(centres[r, 0]),
                                     "y": float(centres[r, 1]), "beyond_px": round(float(beyond[r]), 4)})
        report.dropped["centre_outside_image"] += int((~keep).sum())
        report.dropped["class_mark_on_a_dropped_centre"] += int(((labels >= 0) & ~keep).sum())
        xy = np.clip(xy[keep], 0.0, limit)
        pixel = np.floor(xy + 0.5).astype(np.int64)
        boxes = np.concatenate([pixel, pixel + 1], axis=1)
        return writer.add_image(
            stem, SPLIT, rgb, np.zeros((h, w), np.int32),
            mpp=self.card.mpp, tissue=TISSUE,
            boxes=boxes, box_labels=labels[keep], box_source_ids=np.flatnonzero(keep) + 1,
            box_centroids=xy, nucleus_columns={"mark_distance": mark_distance[keep]},
        )

    @staticmethod
    def _unmatched(stem: str, point: np.ndarray, code: int, centres: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        """What ``extra.unmatched_marks`` records of a class mark no centre took."""
        entry: dict[str, Any] = {"image": stem, "class": CLASSES[code], "x": float(point[0]), "y": float(point[1])}
        if len(centres):
            d = np.hypot(*(centres - point).T)
            j = int(np.argmin(d))
            taken = f", which already carries the mark {CLASSES[int(labels[j])]!r}" if labels[j] >= 0 else ""
            entry["nearest_centre_px"] = round(float(d[j]), 4)
            entry["reason"] = (f"no free detection centre within {MATCH_TOLERANCE_PX:g} px: the nearest, row {j + 1}, "
                               f"is {d[j]:.2f} px away{taken}")
        else:
            entry["reason"] = "the image has no detection centre"
        return entry
