"""nucdata.formats: every interchange format read from files written by hand from the format's
definition (never by our writer), frames checked to 0.5 px; our writers read back; limits."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import nucdata
from nucdata.formats import (
    Nuclei,
    SetLabels,
    instance_stem,
    nuclei_from_instances,
    open_slide,
    rasterize,
    read_cellvit,
    read_centroids_csv,
    read_hovernet_json,
    read_image,
    read_instances,
    read_labels_csv,
    read_qupath,
    write_centroids_csv,
    write_hovernet_json,
    write_instances,
    write_qupath,
)

# A 3x3 block of pixels: columns 2..4, rows 3..5. Its centre is pixel (x=3, y=4).
BLOCK = {(r, c) for r in range(3, 6) for c in range(2, 5)}
#: the block in QuPath's pixel-corner frame: the squares [2, 5) x [3, 6)
BLOCK_CORNER = [[2, 3], [5, 3], [5, 6], [2, 6], [2, 3]]
#: the block as HoVer-Net / OpenCV write it: the boundary pixels' own positions
BLOCK_CONTOUR = [[2, 3], [3, 3], [4, 3], [4, 4], [4, 5], [3, 5], [2, 5], [2, 4]]


def _pixels(nuclei: Nuclei, i: int, shape=(12, 12)) -> set[tuple[int, int]]:
    inst = rasterize([nuclei.rings(i)], shape)
    return set(zip(*np.nonzero(inst), strict=True))


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# -- QuPath GeoJSON ------------------------------------------------------------------------
def _qupath_04(tmp_path: Path) -> Path:
    """A FeatureCollection as QuPath 0.4/0.5 exports it: a detection, a cell with its nucleus, an
    annotation of two hand-drawn nuclei (MultiPolygon), a detection with a hole, a point, a tile."""
    features = [
        {"type": "Feature", "id": "2b1e5a0c-3c1f-4f59-9d3e-1a2b3c4d5e6f",
         "geometry": {"type": "Polygon", "coordinates": [BLOCK_CORNER]},
         "properties": {"objectType": "detection", "isLocked": False,
                        "classification": {"name": "Tumor", "color": [200, 0, 0]},
                        "measurements": {"Nucleus: Area µm^2": 2.25, "Hematoxylin OD mean": 0.61}}},
        {"type": "Feature", "id": "6a1c2f7e-0d1b-4e2a-8f3c-4b5a6c7d8e9f",
         "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [12, 0], [12, 12], [0, 12], [0, 0]]]},
         "nucleusGeometry": {"type": "Polygon", "coordinates": [[[7, 7], [9, 7], [9, 9], [7, 9], [7, 7]]]},
         "properties": {"objectType": "cell", "isLocked": False,
                        "classification": {"names": ["Immune cells", "Positive"], "color": [0, 0, 200]},
                        "measurements": {"Cell: Area µm^2": 9.0}}},
        {"type": "Feature", "id": "a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d",
         "geometry": {"type": "MultiPolygon", "coordinates": [
             [[[20, 20], [22, 20], [22, 22], [20, 22], [20, 20]]],
             [[[30, 30], [33, 30], [33, 33], [30, 33], [30, 30]]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Stroma", "color": [0, 150, 0]}}},
        {"type": "Feature", "id": "f0e1d2c3-b4a5-4968-8776-655443322110",
         "geometry": {"type": "Polygon", "coordinates": [
             [[40, 40], [45, 40], [45, 45], [40, 45], [40, 40]],
             [[42, 42], [43, 42], [43, 43], [42, 43], [42, 42]]]},
         "properties": {"objectType": "detection", "measurements": {}}},
        {"type": "Feature", "id": "0a0b0c0d-1e1f-4a2b-9c3d-4e5f6a7b8c9d",
         "geometry": {"type": "Point", "coordinates": [50.5, 60.5]},
         "properties": {"objectType": "detection", "classification": {"name": "Tumor", "color": [200, 0, 0]}}},
        {"type": "Feature", "id": "11111111-2222-4333-8444-555555555555",
         "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [256, 0], [256, 256], [0, 256], [0, 0]]]},
         "properties": {"objectType": "tile"}},
    ]
    return _write(tmp_path / "slide_1.geojson", {"type": "FeatureCollection", "features": features})


def test_qupath_04_objects_frames_and_classes(tmp_path):
    n = read_qupath(_qupath_04(tmp_path))
    assert n.image == "slide_1" and len(n) == 6  # detection, cell, 2 annotation parts, holed detection, point
    assert list(n.ids) == [1, 2, 3, 4, 5, 6] and n.meta["skipped"] == {"tile": 1}
    # the corner frame became the centre frame: the block's centre pixel is (3, 4)
    np.testing.assert_allclose(n.centroids[0], [3.0, 4.0], atol=1e-9)
    assert _pixels(n, 0) == BLOCK
    # the cell is its nucleus, not the cell outline
    np.testing.assert_allclose(n.centroids[1], [7.5, 7.5], atol=1e-9)
    assert _pixels(n, 1) == {(r, c) for r in (7, 8) for c in (7, 8)}
    # one nucleus per part of an annotation
    np.testing.assert_allclose(n.centroids[2], [20.5, 20.5]) and np.testing.assert_allclose(n.centroids[3], [31, 31])
    # the hole: excluded from the pixels and from the centroid's area
    holed = _pixels(n, 4, (50, 50))
    assert (42, 42) not in holed and (41, 41) in holed and len(holed) == 24
    assert n.polygons[5].shape == (0, 2) and np.allclose(n.centroids[5], [50.0, 60.0])
    names = n.label_names()
    assert names == ["Tumor", "Immune cells: Positive", "Stroma", "Stroma", None, "Tumor"]
    assert n.class_colours[n.class_names and next(k for k, v in n.class_names.items() if v == "Tumor")] == (200, 0, 0)
    assert n.measurements["Hematoxylin OD mean"][0] == 0.61 and np.isnan(n.measurements["Hematoxylin OD mean"][1])
    assert list(n.object_types) == ["detection", "cell", "annotation", "annotation", "detection", "detection"]
    assert n.uuids[0] == "2b1e5a0c-3c1f-4f59-9d3e-1a2b3c4d5e6f"


def test_qupath_02_list_legacy_ids_measurement_lists_and_packed_colours(tmp_path):
    """QuPath 0.2/0.3: a list of features, the type in ``id`` or ``object_type``, measurements as a list."""
    features = [
        {"type": "Feature", "id": "PathDetectionObject", "geometry": {"type": "Polygon", "coordinates": [BLOCK_CORNER]},
         "properties": {"classification": {"name": "Tumor", "colorRGB": -3670016}, "isLocked": False,
                        "measurements": [{"name": "Nucleus: Area", "value": 9.0}, {"name": "Bad", "value": "NaN"}]}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [BLOCK_CORNER]},
         "properties": {"object_type": "annotation", "isLocked": True}},
    ]
    n = read_qupath(_write(tmp_path / "old.json", features))
    assert len(n) == 2 and list(n.object_types) == ["detection", "annotation"]
    assert n.class_colours[0] == (200, 0, 0)  # -3670016 is 0xFFC80000
    assert n.measurements["Nucleus: Area"][0] == 9.0 and np.isnan(n.measurements["Bad"][0])
    assert n.uuids[0] is None  # a legacy type name is not an id


def test_qupath_frame_centre_and_broken_files(tmp_path):
    n = read_qupath(_write(tmp_path / "c.geojson", [{"type": "Feature", "geometry": {
        "type": "Polygon", "coordinates": [[[2, 3], [4, 3], [4, 5], [2, 5], [2, 3]]]}, "properties": {
        "objectType": "detection"}}]), frame="centre")
    assert _pixels(n, 0) == BLOCK
    with pytest.raises(nucdata.MalformedAnnotationError, match="line 1"):
        read_qupath((tmp_path / "t.geojson").write_text('{"type": "FeatureCollection", "features": [') and
                    tmp_path / "t.geojson")
    with pytest.raises(nucdata.MalformedAnnotationError, match="feature 0.*LineString"):
        read_qupath(_write(tmp_path / "l.geojson", [{"type": "Feature", "geometry": {
            "type": "LineString", "coordinates": [[0, 0], [1, 1]]}, "properties": {"objectType": "detection"}}]))
    with pytest.raises(nucdata.MalformedAnnotationError, match=r"feature 0.*\[x, y\]"):
        read_qupath(_write(tmp_path / "s.geojson", [{"geometry": {"type": "Polygon", "coordinates": [
            [["a", 0], [1, 1], [0, 1]]]}, "properties": {"objectType": "detection"}}]))


def test_our_qupath_writer_reads_back_and_is_valid_geojson(tmp_path):
    shapely = pytest.importorskip("shapely.geometry")
    square = np.array([[1.5, 2.5], [4.5, 2.5], [4.5, 5.5], [1.5, 5.5]])  # the block's outline, centre frame
    sets = {"pannuke": SetLabels("pannuke", ["neoplastic", "inflammatory"], [1, -2], [0.9, np.nan],
                                 colours=[[255, 0, 0], [0, 255, 0]], outside=[0.05, 0.8])}
    record = Nuclei(image="tile", ids=[7, 9], centroids=[[3, 4], [20, 21]], polygons=[square, np.zeros((0, 2))],
                    sets=sets, mpp=0.5, offset=(100, 200))
    path = write_qupath(tmp_path / "tile.geojson", record, classify_by="pannuke")
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 2
    for f in data["features"]:
        assert shapely.shape(f["geometry"]).is_valid
    first, second = data["features"]
    assert first["properties"]["classification"] == {"name": "inflammatory", "color": [0, 255, 0]}
    assert "classification" not in second["properties"]  # outside the set
    m = first["properties"]["measurements"]
    assert m["area_px"] == 9 and m["Area µm^2"] == pytest.approx(2.25)
    assert m["Centroid X µm"] == pytest.approx((103 + 0.5) * 0.5) and m["pannuke: probability"] == 0.9
    assert second["properties"]["measurements"]["pannuke: outside"] == 0.8
    assert first["geometry"]["coordinates"][0][0] == [102.0, 203.0]  # offset and the corner frame
    assert second["geometry"] == {"type": "Point", "coordinates": [120.5, 221.5]}
    back = read_qupath(path)
    assert list(back.ids) == [7, 9]  # nucdata_id
    np.testing.assert_allclose(back.centroids, [[103, 204], [120, 221]], atol=1e-9)
    again = write_qupath(tmp_path / "again.geojson", record, classify_by="pannuke")
    assert json.loads(again.read_text())["features"][0]["id"] == first["id"]  # stable ids


# -- HoVer-Net JSON ------------------------------------------------------------------------
def test_hovernet_json_as_its_inference_writes_it(tmp_path):
    nuc = {
        "1": {"bbox": [[3, 2], [6, 5]], "centroid": [3.0, 4.0], "contour": BLOCK_CONTOUR, "type": 2,
              "type_prob": 0.875},
        "5": {"bbox": [[10, 10], [12, 12]], "centroid": [10.5, 10.5],
              "contour": [[10, 10], [11, 10], [11, 11], [10, 11]], "type": 0, "type_prob": 0.5},
        "9": {"bbox": [[0, 0], [1, 1]], "centroid": [0.0, 0.0], "contour": [[0, 0]], "type": None, "type_prob": None},
    }
    path = _write(tmp_path / "img_3.json", {"mag": 40, "nuc": nuc})
    info = {"0": ["nolabe", [0, 0, 0]], "1": ["neopla", [255, 0, 0]], "2": ["inflam", [0, 255, 0]]}
    n = read_hovernet_json(path, type_info=info)
    assert n.image == "img_3" and list(n.ids) == [1, 5, 9] and n.meta["mag"] == 40
    np.testing.assert_allclose(n.centroids[0], [3.0, 4.0])
    assert _pixels(n, 0) == BLOCK  # the contour of boundary pixels gives back the mask
    assert n.bboxes[0].tolist() == [2, 3, 5, 6]
    assert list(n.labels) == [2, 0, -1] and n.class_names[2] == "inflam" and n.probabilities[0] == 0.875
    with pytest.raises(nucdata.MalformedAnnotationError, match="nuc"):
        read_hovernet_json(_write(tmp_path / "x.json", {"mag": 40}))
    with pytest.raises(nucdata.MalformedAnnotationError, match=r"nuc\['1'\].type"):
        read_hovernet_json(_write(tmp_path / "y.json", {"nuc": {"1": {"centroid": [1, 1], "type": "a"}}}))


def test_our_hovernet_writer_round_trip(tmp_path):
    inst = np.zeros((12, 12), np.int32)
    inst[3:6, 2:5] = 4
    inst[8:11, 7:9] = 6
    record = nuclei_from_instances(inst, "a", mpp=0.25, labels={4: 1, 6: 3})
    from nucdata._util.geometry import nucleus_outline

    record.polygons = [nucleus_outline(inst, int(i), b) for i, b in zip(record.ids, record.bboxes, strict=True)]
    path = write_hovernet_json(tmp_path / "a.json", record)
    data = json.loads(path.read_text())
    assert data["mag"] == 40 and sorted(data["nuc"]) == ["4", "6"]
    assert data["nuc"]["4"]["bbox"] == [[3, 2], [6, 5]] and data["nuc"]["4"]["type"] == 1
    back = read_hovernet_json(path)
    assert (rasterize([back.rings(i) for i in range(2)], inst.shape, back.ids) == inst).all()
    np.testing.assert_allclose(back.centroids, record.centroids)


# -- CellViT ---------------------------------------------------------------------------------
def test_cellvit_outputs(tmp_path):
    slide = tmp_path / "SLIDE-7"
    slide.mkdir()
    cells = [{"bbox": [[3, 2], [6, 5]], "centroid": [3.0, 4.0], "type": 1},
             {"bbox": [[10, 10], [12, 12]], "centroid": [10.5, 10.5], "type": 3}]
    meta = {"base_mpp": 0.2522, "magnification": 40, "patch_size": 1024}
    det = read_cellvit(_write(slide / "cell_detection.json", {
        "wsi_metadata": meta, "processed_patches": ["0_0"],
        "type_map": {"Background": 0, "Neoplastic": 1, "Inflammatory": 2, "Connective": 3}, "cells": cells}))
    assert det.image == "SLIDE-7" and det.mpp == 0.2522 and list(det.labels) == [1, 3]
    assert det.class_names[3] == "Connective" and det.polygons is None
    np.testing.assert_allclose(det.centroids[0], [3.0, 4.0])
    full = [dict(c, contour=BLOCK_CONTOUR if i == 0 else [[10, 10], [11, 10], [11, 11], [10, 11]],
                 type_prob=0.9) for i, c in enumerate(cells)]
    plus = read_cellvit(_write(slide / "cells.json", {"wsi_metadata": meta,
                                                      "type_map": {"0": "Background", "1": "Neoplastic"},
                                                      "cells": full}))
    assert plus.class_names == {0: "Background", 1: "Neoplastic"} and _pixels(plus, 0) == BLOCK
    # the GeoJSON: a list, one feature per type, MultiPolygon / MultiPoint, pixel-centre numbers
    geo = [{"type": "Feature", "id": "u1", "geometry": {"type": "MultiPolygon", "coordinates": [
        [BLOCK_CONTOUR + [BLOCK_CONTOUR[0]]], [[[10, 10], [11, 10], [11, 11], [10, 11], [10, 10]]]]},
        "properties": {"objectType": "annotation", "classification": {"name": "Neoplastic", "color": [255, 0, 0]}}}]
    g = read_cellvit(_write(slide / "cells.geojson", geo))
    assert len(g) == 2 and _pixels(g, 0) == BLOCK and g.label_names() == ["Neoplastic", "Neoplastic"]
    pts = read_cellvit(_write(slide / "cell_detection.geojson", [{"type": "Feature", "geometry": {
        "type": "MultiPoint", "coordinates": [[3.0, 4.0], [10.5, 10.5]]}, "properties": {
        "objectType": "annotation", "classification": {"name": "Neoplastic", "color": [255, 0, 0]}}}]))
    np.testing.assert_allclose(pts.centroids, [[3, 4], [10.5, 10.5]])
    (slide / "cell_detection.json.snappy").write_bytes(b"\xff\x06\x00\x00sNaPpY")
    with pytest.raises(nucdata.UnsupportedFormatError, match="snappy"):
        read_cellvit(slide / "cell_detection.json.snappy")


# -- instance label images -------------------------------------------------------------------
def test_instance_images_as_segmenters_save_them(tmp_path):
    inst = np.zeros((20, 30), np.uint16)
    inst[3:6, 2:5] = 17
    inst[10:15, 20:28] = 300
    Image.fromarray(inst).save(tmp_path / "tile_cp_masks.png")  # Cellpose's PNG (16 bit)
    import tifffile

    tifffile.imwrite(tmp_path / "tile_masks.tif", inst.astype(np.uint32))  # StarDist/Cellpose TIFF
    np.save(tmp_path / "tile_labels.npy", inst.astype(np.int32))
    for name in ("tile_cp_masks.png", "tile_masks.tif", "tile_labels.npy"):
        got = read_instances(tmp_path / name)
        assert (got == inst).all() and instance_stem(name) == "tile"
    n = nuclei_from_instances(read_instances(tmp_path / "tile_cp_masks.png"), "tile")
    assert list(n.ids) == [17, 300] and n.areas.tolist() == [9, 40]
    np.testing.assert_allclose(n.centroids[0], [3, 4]) and np.testing.assert_allclose(n.centroids[1], [23.5, 12])
    assert n.bboxes.tolist() == [[2, 3, 5, 6], [20, 10, 28, 15]]
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[..., 0] = 200
    Image.fromarray(colour).save(tmp_path / "overlay.png")
    with pytest.raises(nucdata.MalformedAnnotationError, match="colour image"):
        read_instances(tmp_path / "overlay.png")
    assert write_instances(tmp_path / "w.png", inst.astype(np.int32)).is_file()


def test_cellpose_seg_npy_is_refused_without_plain_pickle(tmp_path, monkeypatch):
    """Cellpose's ``_seg.npy`` is a pickled dict in an object array: the allow-list unpickler refuses
    it, with the fix; plain pickle is never called."""
    masks = np.zeros((8, 8), np.uint16)
    masks[2:4, 2:4] = 1
    np.save(tmp_path / "tile_seg.npy", {"masks": masks, "outlines": masks * 0, "filename": "tile.png",
                                         "diameter": 30.0}, allow_pickle=True)
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("plain pickle used"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("plain pickle used"))
    with pytest.raises(nucdata.UnsupportedFormatError, match="Save masks as PNG") as info:
        read_instances(tmp_path / "tile_seg.npy")
    assert "tile_seg.npy" in str(info.value) and "--save_png" in str(info.value)


# -- centroid and labels CSV -----------------------------------------------------------------------
def test_centroid_csv(tmp_path):
    (tmp_path / "points.csv").write_text("Image, X, y, id, label, score\n"
                                         "a.png_stem,3,4,10,tumour,0.1\na.png_stem,7.5,2,11,,0.2\n"
                                         "b,1,1,1,lymphocyte,0.3\n", encoding="utf-8")
    a, b = read_centroids_csv(tmp_path / "points.csv")
    assert a.image == "a.png_stem" and list(a.ids) == [10, 11] and a.label_names() == ["tumour", None]
    np.testing.assert_allclose(a.centroids, [[3, 4], [7.5, 2]])
    assert b.label_names() == ["lymphocyte"]
    (tmp_path / "nohead.csv").write_text("3,4\n", encoding="utf-8")
    with pytest.raises(nucdata.MalformedAnnotationError, match="header"):
        read_centroids_csv(tmp_path / "nohead.csv")
    (tmp_path / "twice.csv").write_text("x,y,id\n1,1,5\n2,2,5\n", encoding="utf-8")
    with pytest.raises(nucdata.MalformedAnnotationError, match="line 3: id 5 appears twice"):
        read_centroids_csv(tmp_path / "twice.csv")
    back = read_centroids_csv(write_centroids_csv(tmp_path / "w.csv", [a, b]))
    assert [r.image for r in back] == ["a.png_stem", "b"] and back[0].label_names() == ["tumour", None]
    (tmp_path / "labels.csv").write_text("image,id,label\nx,1,tumour\nx,2,\n", encoding="utf-8")
    assert read_labels_csv(tmp_path / "labels.csv") == {("x", 1): "tumour", ("x", 2): ""}


# -- Parquet ------------------------------------------------------------------------------------
def test_parquet_columns_per_label_set(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    from nucdata.formats import read_parquet, write_parquet

    sets = {"pannuke": SetLabels("pannuke", ["neoplastic", "inflammatory"], [0, -2], [0.8, np.nan],
                                 candidates=[0b001, 0b100])}
    record = Nuclei(image="s", ids=[1, 2], centroids=[[1, 2], [3, 4]], sets=sets, mpp=0.5, offset=(10, 0),
                    areas=[9, 4])
    path = write_parquet(tmp_path / "t.parquet", [record, record.shifted(0, 0)])
    table = pq.read_table(path)  # pyarrow's own reader
    assert table.num_rows == 4
    cols = read_parquet(path)
    assert list(cols["x"][:2]) == [11, 13] and list(cols["pannuke"][:2]) == ["neoplastic", "outside"]
    assert list(cols["pannuke_id"][:2]) == [0, -2] and cols["pannuke_candidates"][1] == "outside"
    assert cols["area_um2"][0] == pytest.approx(2.25)


# -- images and slides ----------------------------------------------------------------------------
def test_images_and_their_mpp(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (10, 12, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png", dpi=(101600, 101600))  # 0.25 µm/px
    got, mpp = read_image(tmp_path / "a.png")
    assert (got == rgb).all() and mpp == pytest.approx(0.25, rel=1e-3)
    Image.fromarray(rgb).save(tmp_path / "b.png", dpi=(72, 72))  # a screen default, not a pixel size
    assert read_image(tmp_path / "b.png")[1] is None


@pytest.mark.parametrize("style", ["tags", "ome", "aperio"])
def test_pyramidal_tiff_read_by_region(tmp_path, style):
    from nucdata.testing.slides import write_pyramidal_tiff

    rgb = np.random.default_rng(1).integers(0, 255, (600, 700, 3), np.uint8)
    path = write_pyramidal_tiff(tmp_path / "s.tif", rgb, mpp=0.25, levels=3, tile=256, metadata=style)
    with open_slide(path) as slide:
        assert (slide.width, slide.height) == (700, 600) and slide.mpp == pytest.approx(0.25)
        assert slide.levels == [(700, 600), (350, 300), (175, 150)]
        assert (slide.read_region(250, 100, 300, 200) == rgb[100:300, 250:550]).all()
        edge = slide.read_region(650, 550, 100, 100)
        assert (edge[:50, :50] == rgb[550:, 650:]).all() and not edge[50:].any()
        level1 = slide.read_region(0, 0, 350, 300, level=1)
        expected = (rgb.reshape(300, 2, 350, 2, 3).astype(np.uint16).sum((1, 3)) + 2) // 4
        assert np.abs(level1.astype(int) - expected).max() == 0


def test_a_slide_format_without_openslide_names_the_extra(tmp_path):
    try:
        import openslide  # noqa: F401

        pytest.skip("openslide is installed")
    except ImportError:
        pass
    (tmp_path / "x.mrxs").write_bytes(b"not a tiff")
    with pytest.raises(nucdata.MissingDependencyError, match=r"nucdata\[openslide\]"):
        open_slide(tmp_path / "x.mrxs")


def test_a_window_above_the_pixel_limit_is_refused(tmp_path, monkeypatch):
    from nucdata.testing.slides import write_pyramidal_tiff

    path = write_pyramidal_tiff(tmp_path / "s.tif", np.zeros((64, 64, 3), np.uint8), mpp=0.5, levels=1, tile=32)
    monkeypatch.setenv("NUCDATA_MAX_IMAGE_PIXELS", "1000")
    with open_slide(path) as slide, pytest.raises(nucdata.CorruptArchiveError, match="NUCDATA_MAX_IMAGE_PIXELS"):
        slide.read_region(0, 0, 64, 64)


# -- limits ----------------------------------------------------------------------------------
def test_sizes_are_checked_before_reading(tmp_path, monkeypatch):
    path = _qupath_04(tmp_path)
    monkeypatch.setenv("NUCDATA_MAX_JSON_BYTES", "100")
    with pytest.raises(nucdata.SizeLimitError, match="NUCDATA_MAX_JSON_BYTES"):
        read_qupath(path)
    monkeypatch.delenv("NUCDATA_MAX_JSON_BYTES")
    monkeypatch.setenv("NUCDATA_MAX_NUCLEI", "3")
    with pytest.raises(nucdata.SizeLimitError, match="NUCDATA_MAX_NUCLEI"):
        read_qupath(path)
    monkeypatch.setenv("NUCDATA_MAX_NUCLEI", "0")
    monkeypatch.setenv("NUCDATA_MAX_VERTICES", "4")
    with pytest.raises(nucdata.SizeLimitError, match="NUCDATA_MAX_VERTICES"):
        read_qupath(path)


# -- the generated slide ------------------------------------------------------------------------
def test_generated_slide_at_a_realistic_density(tmp_path):
    import tifffile

    from nucdata.testing.slides import generate_slide

    truth = generate_slide(tmp_path / "s.tif", width=1200, height=900, mpp=0.25, density=3000, levels=3,
                           instances=tmp_path / "inst.tif", geojson=tmp_path / "s.geojson")
    assert 2500 < truth.density < 3500  # thousands of nuclei per mm²
    inst = tifffile.imread(tmp_path / "inst.tif")
    back = nuclei_from_instances(inst, "s")
    assert list(back.ids) == list(truth.ids)
    np.testing.assert_allclose(back.centroids, truth.centroids, atol=1e-9)
    drawn = rasterize([[p] for p in truth.polygons], inst.shape, truth.ids)
    assert (drawn == inst).all()  # the outlines give the instance map by the formats' rule
    geo = read_qupath(truth.geojson_path)
    inside = np.array([(p.min(0) > 0).all() and (p.max(0) < (1199, 899)).all() for p in truth.polygons])
    assert list(geo.ids) == list(truth.ids) and inside.mean() > 0.9  # outlines clipped by the border differ
    assert np.abs(geo.centroids - truth.centroids)[inside].max() < 0.5
    with open_slide(truth.path) as slide:
        assert slide.mpp == pytest.approx(0.25) and len(slide.levels) == 3
