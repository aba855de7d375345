"""Tiny hand-made annotation files, converted and compared with pixel sets computed by hand.

Nothing here is produced by the code under test: the XML and CSV fixtures were typed
by hand (``tests/fixtures/README.md``) and the CoNSeP ``.mat`` is written with
``scipy.io.savemat`` from a hand-drawn map. The expected pixel sets, centroids and
labels below were worked out on paper; the working is in the comments.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

import nucdata
from nucdata.testing._draw import draw_filled, pixels_inside

FIXTURES = Path(__file__).parent / "fixtures"


def pixel_set(rows: range, cols: range, minus: set[tuple[int, int]] = frozenset()) -> set[tuple[int, int]]:
    """{(row, col)} of a block of pixels, minus some."""
    return {(r, c) for r in rows for c in cols} - set(minus)


# ImageScope fixture, 12 wide x 10 high, pixel-corner frame: pixel (row i, column j)
# belongs to a region when its centre (j + 0.5, i + 0.5) lies inside the polygon.
#  A (Epithelial) rectangle (1,1)-(5,4): centres x 1.5..4.5, y 1.5..3.5
#    -> columns 1..4, rows 1..3: 12 px, centroid (x, y) = (2.5, 2.0).
#  B (Lymphocyte) triangle (7,1), (11,1), (11,6): inside when y > 1, x < 11 and
#    y - 1 < 1.25 (x - 7), i.e. row i < 1.25 j - 7.625 (never an equality, so no
#    centre sits on an edge): column 7 row 1; 8 rows 1-2; 9 rows 1-3; 10 rows 1-4.
#    10 px = the triangle's area; centroid x = 90 / 10 = 9.0, y = 20 / 10 = 2.0.
#  C (Neutrophil) rectangle (3,3)-(8,12), past the bottom (rows 0..9): columns 3..7,
#    rows 3..9 = 35 px, minus (3,3) and (3,4) (row, col) already A's (first wins):
#    33 px; centroid x = (5 * 35 - 3 - 4) / 33, y = (6 * 35 - 3 - 3) / 33.
#  D a 2-vertex click: no area, no pixel, dropped.
SHAPE = (10, 12)
REGION_A = pixel_set(range(1, 4), range(1, 5))
REGION_B = {(1, 7), (1, 8), (2, 8), (1, 9), (2, 9), (3, 9), (1, 10), (2, 10), (3, 10), (4, 10)}
REGION_C = pixel_set(range(3, 10), range(3, 8), {(3, 3), (3, 4)})
EXPECTED_XML = [  # (pixels, centroid x, centroid y, MoNuSAC code)
    (REGION_A, 2.5, 2.0, 1),
    (REGION_B, 9.0, 2.0, 2),
    (REGION_C, 168 / 33, 204 / 33, 3),
]


def pixels_of(instance_map: np.ndarray, k: int) -> set[tuple[int, int]]:
    return {(int(r), int(c)) for r, c in zip(*np.nonzero(instance_map == k), strict=True)}


def check_store(ds: nucdata.NucleusDataset, image: int, expected: list[tuple[set, float, float, int]]) -> None:
    """Instance k of ``image`` has the k-th expected pixel set, centroid, area and label."""
    inst = np.asarray(ds.store.instance_map(image))
    rows = ds.store.nucleus_slice(image)
    centroid = np.asarray(ds.store.column("nuclei", "centroid"))[rows]
    area = np.asarray(ds.store.column("nuclei", "area"))[rows]
    label = np.asarray(ds.store.column("nuclei", "label"))[rows]
    assert int(inst.max()) == len(expected) == rows.stop - rows.start
    for k, (pixels, cx, cy, code) in enumerate(expected, 1):
        assert pixels_of(inst, k) == pixels, f"nucleus {k}"
        assert area[k - 1] == len(pixels)
        np.testing.assert_allclose(centroid[k - 1], [cx, cy], atol=1e-5)
        assert label[k - 1] == code


def test_hand_computed_sets_are_consistent():
    """The hand working itself: areas of A and B equal their polygons' areas."""
    assert len(REGION_A) == 12 and len(REGION_B) == 10 and len(REGION_C) == 33
    assert not (REGION_A & REGION_C) and not (REGION_B & REGION_C)


def test_generator_rasteriser_matches_the_hand_sets():
    """The demo generator's own pixel-centre sampling gives the hand-computed sets."""
    import xml.etree.ElementTree as ET

    root = ET.parse(FIXTURES / "three_regions.xml").getroot()
    polygons = [np.array([(float(v.get("X")), float(v.get("Y"))) for v in region.iter("Vertex")])
                for region in root.iter("Region")]
    assert len(polygons) == 4
    inst = draw_filled(SHAPE, polygons)
    for k, (pixels, *_rest) in enumerate(EXPECTED_XML, 1):
        assert pixels_of(inst, k) == pixels
    assert int(inst.max()) == 3  # the click has no pixel
    # A centre exactly on an edge counts as inside (closed polygon): the diamond of
    # pixel-centre vertices (5,2), (7,4), (5,6), (3,4) shifted into the corner frame.
    rr, cc = pixels_inside(np.array([[5.5, 2.5], [7.5, 4.5], [5.5, 6.5], [3.5, 4.5]]), SHAPE)
    assert set(zip(rr.tolist(), cc.tolist(), strict=True)) == {
        (r, c) for r in range(10) for c in range(12) if abs(c - 5) + abs(r - 4) <= 2}


def test_imagescope_xml_through_the_monusac_converter(home, tmp_path):
    """The converter reads the hand-made XML into exactly the hand-computed nuclei."""
    folder = tmp_path / "monusac"
    trees = (("MoNuSAC_images_and_annotations", "TCGA-AA-0001-01Z-00-DX1"),
             ("MoNuSAC Testing Data and Annotations", "TCGA-AA-0002-01Z-00-DX1"))
    for top, patient in trees:
        d = folder / top / patient
        d.mkdir(parents=True)
        shutil.copyfile(FIXTURES / "three_regions.xml", d / f"{patient}_1.xml")
        Image.new("RGB", (SHAPE[1], SHAPE[0]), (230, 200, 220)).save(d / f"{patient}_1.tif")
    nucdata.prepare("monusac", from_dir=folder, root=home, check_counts=False)
    ds = nucdata.load("monusac", root=home)
    assert len(ds) == 2
    assert ds.manifest["dropped"]["degenerate"] == 2  # the click, once per image
    for image in range(2):
        check_store(ds, image, EXPECTED_XML)
    assert ds.nuclei.class_name.values.tolist()[:3] == ["Epithelial", "Lymphocyte", "Neutrophil"]
    np.testing.assert_allclose(ds.images.mpp.values, 0.25)


# NuCLS fixture: a 12 x 10 FOV; coordinates are pixel indices (centres), so pixel
# (row i, column j) belongs to a contour when the point (j, i) is inside or on it.
#  row 0 tumor, diamond (5,2), (7,4), (5,6), (3,4): |j - 5| + |i - 4| <= 2, 13 px,
#    centroid (5, 4).
#  row 1 lymphocyte, rectangle contour (6,0)-(9,3): columns 6..9, rows 0..3 = 16 px
#    minus pixel (row 3, col 6), the tumour's (first wins): 15 px;
#    centroid x = (7.5 * 16 - 6) / 15 = 7.6, y = (1.5 * 16 - 3) / 15 = 1.4.
#  row 2 fibroblast, a box-only row (1,8)-(4,10): no mask, bbox made exclusive
#    (1, 8, 5, 11) and clipped to the FOV: (1, 8, 5, 10).
DIAMOND = {(r, c) for r in range(10) for c in range(12) if abs(c - 5) + abs(r - 4) <= 2}
EXPECTED_NUCLS = [(DIAMOND, 5.0, 4.0, 1), (pixel_set(range(0, 4), range(6, 10), {(3, 6)}), 7.6, 1.4, 3)]


def test_nucls_csv_through_the_converter(home, tmp_path):
    stem = "TCGA-AA-0001-DX1_id-000000000000000000000001_left-100_top-200_bottom-210_right-112"
    top = tmp_path / "nucls" / "NuCLS_dataset"
    for sub in ("rgb", "csv"):
        (top / sub).mkdir(parents=True)
    Image.new("RGB", (12, 10), (230, 200, 220)).save(top / "rgb" / f"{stem}.png")
    shutil.copyfile(FIXTURES / "nucls_fov.csv", top / "csv" / f"{stem}.csv")
    nucdata.prepare("nucls", from_dir=tmp_path / "nucls", root=home, check_counts=False)
    ds = nucdata.load("nucls", root=home)
    assert len(ds) == 1
    nuclei = ds.nuclei
    assert nuclei.has_mask.values.tolist() == [True, True, False]
    assert nuclei.raw_classification.values.tolist() == ["tumor", "lymphocyte", "fibroblast"]
    assert nuclei.label.values.tolist() == [1, 3, 2]
    assert nuclei.bbox.values[2].tolist() == [1, 8, 5, 10]
    assert nuclei.area.values[2] == 0
    inst = np.asarray(ds.store.instance_map(0))
    assert int(inst.max()) == 2
    for k, (pixels, cx, cy, code) in enumerate(EXPECTED_NUCLS, 1):
        assert pixels_of(inst, k) == pixels
        assert nuclei.area.values[k - 1] == len(pixels)
        np.testing.assert_allclose(nuclei.centroid.values[k - 1], [cx, cy], atol=1e-5)
        assert nuclei.label.values[k - 1] == code
    assert nuclei.bbox.values[0].tolist() == [3, 2, 8, 7]


# CoNSeP fixture, an 8 x 8 hand-drawn instance map (ids 1..3, HoVer-Net layout):
#  id 1: rows 1-2, columns 1-3, type 2 (inflammatory): 6 px, centroid (2, 1.5)
#  id 2: row 5 columns 4-6 and (row 6, column 6), type 4: 4 px,
#    centroid x = (4 + 5 + 6 + 6) / 4 = 5.25, y = (5 + 5 + 5 + 6) / 4 = 5.25
#  id 3: rows 6-7, column 0, type 5 (fibroblast): 2 px, centroid (0, 6.5)
def consep_label() -> tuple[np.ndarray, list[tuple[set, float, float, int]]]:
    inst = np.zeros((8, 8))
    inst[1:3, 1:4] = 1
    inst[5, 4:7] = 2
    inst[6, 6] = 2
    inst[6:8, 0] = 3
    expected = [
        (pixel_set(range(1, 3), range(1, 4)), 2.0, 1.5, 2),
        ({(5, 4), (5, 5), (5, 6), (6, 6)}, 5.25, 5.25, 4),
        ({(6, 0), (7, 0)}, 0.0, 6.5, 5),
    ]
    return inst, expected


@pytest.mark.parametrize("shift", [0.0, 0.5])
def test_consep_mat_through_the_converter(home, tmp_path, shift):
    """The converter keeps the map, labels by ``inst_type`` row and measures the file's centroids."""
    inst, expected = consep_label()
    types = np.array([[2], [4], [5]], np.float64)
    type_map = np.zeros_like(inst)
    for k, t in enumerate(types[:, 0], 1):
        type_map[inst == k] = t
    # The file's centroids, optionally off by half a pixel: the converter records the gap.
    centroids = np.array([[cx, cy] for _, cx, cy, _ in expected]) + shift
    folder = tmp_path / "consep"
    for split, name in (("Train", "train_1"), ("Test", "test_1")):
        for sub in ("Images", "Labels"):
            (folder / "CoNSeP" / split / sub).mkdir(parents=True)
        Image.new("RGBA", (8, 8), (230, 200, 220, 255)).save(folder / "CoNSeP" / split / "Images" / f"{name}.png")
        savemat(folder / "CoNSeP" / split / "Labels" / f"{name}.mat",
                {"inst_map": inst, "type_map": type_map, "inst_type": types, "inst_centroid": centroids})
    nucdata.prepare("consep", from_dir=folder, root=home, check_counts=False)
    ds = nucdata.load("consep", root=home)
    assert len(ds) == 2
    for image in range(2):
        check_store(ds, image, expected)
    # largest per-coordinate gap between the file's centroids and the measured ones
    assert ds.manifest["extra"]["inst_centroid_max_difference_px"] == pytest.approx(shift, abs=1e-4)


def test_generators_share_no_code_with_the_converters():
    """The fakes are independent: no demo module imports a converter, reader or the store."""
    import ast

    forbidden = ("sources", "readers", "store", "geometry")
    demo = Path(nucdata.__file__).parent / "demo"
    for path in sorted(demo.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                assert not any(p in forbidden for p in parts), f"{path.name} imports {node.module}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert not any(p in forbidden for p in alias.name.split(".")[1:]), path.name


def test_generator_and_converter_code_tables_agree():
    """The NuCLS generator's own code table and hierarchy, transcribed separately, agree."""
    from nucdata.datasets import nucls as source
    from nucdata.testing import nucls as demo

    assert demo.CODES == source.GT_CODES
    assert demo.CLASSIFICATION == source.HIERARCHY
