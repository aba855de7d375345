"""Exports read back and checked against the store: QuPath GeoJSON, COCO, HoVer-Net JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from skimage.draw import polygon2mask

import nucdata
import nucdata.exports
from nucdata.cli import main
from nucdata.demo import install


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NUCDATA_HOME", str(home))
        for name in ("consep", "nucls", "tnbc"):
            install(name, home)
            nucdata.prepare(name)
        yield home


def _rasterise(xy_corner: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centres lie inside a polygon given in the pixel-corner frame."""
    centre = np.asarray(xy_corner, float) - 0.5
    return polygon2mask(shape, centre[:, ::-1])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _class_names(ds: nucdata.NucleusDataset) -> dict[int, str]:
    return {c.id: c.name for c in nucdata.label_set(ds.label_set)}


def test_geojson_reads_back(prepared, tmp_path):
    ds = nucdata.load("consep", split="test", label_set="pannuke")
    written = nucdata.exports.export(ds, "geojson", tmp_path)
    assert len(written) == len(ds)
    names, colours = _class_names(ds), {c.id: list(c.rgb) for c in nucdata.label_set("pannuke")}
    for position, path in enumerate(written):
        index = int(ds.indices[position])
        data = json.loads(path.read_text())
        assert path.name == f"{ds.store.column('images', 'name')[index]}.geojson"
        assert data["type"] == "FeatureCollection"
        rows = ds.store.nucleus_slice(index)
        inst = np.asarray(ds.store.instance_map(index))
        assert len(data["features"]) == rows.stop - rows.start
        assert len({f["id"] for f in data["features"]}) == len(data["features"])
        for k, (feature, row) in enumerate(zip(data["features"], range(rows.start, rows.stop), strict=True)):
            assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
            props = feature["properties"]
            assert props["objectType"] == "detection"
            ring = np.array(feature["geometry"]["coordinates"][0])
            assert (ring[0] == ring[-1]).all()  # closed ring
            assert _iou(_rasterise(ring, inst.shape), inst == k + 1) > 0.6
            assert props["measurements"]["area_px"] == int(ds.store.column("nuclei", "area")[row])
            label = int(ds._labels[row])
            if label >= 0:
                assert props["classification"] == {"name": names[label], "color": colours[label]}
            else:
                assert "classification" not in props


def test_coco_reads_back(prepared, tmp_path):
    ds = nucdata.load("nucls")
    (path,) = nucdata.exports.export(ds, "coco", tmp_path)
    data = json.loads(path.read_text())
    assert set(data) >= {"info", "licenses", "images", "annotations", "categories"}
    assert [im["id"] for im in data["images"]] == [int(i) for i in ds.indices]
    for im in data["images"]:
        assert (im["height"], im["width"]) == ds.store.instance_map(im["id"]).shape
    assert len(data["annotations"]) == ds.store.n_nuclei
    assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])
    category_ids = {c["id"] for c in data["categories"]}
    bbox = np.asarray(ds.store.column("nuclei", "bbox"))
    has_mask = np.asarray(ds.store.column("nuclei", "has_mask"))
    image_of = np.asarray(ds.store.column("nuclei", "image"))
    starts = np.asarray(ds.store.column("images", "nucleus_start"))
    # Annotations follow the store's nucleus order.
    for row, a in enumerate(data["annotations"]):
        assert a["image_id"] == int(image_of[row]) and a["iscrowd"] == 0
        assert a["category_id"] in category_ids and a["category_id"] == int(ds.store.column("nuclei", "label")[row])
        x0, y0, x1, y1 = (int(v) for v in bbox[row])
        assert a["bbox"] == [x0, y0, x1 - x0, y1 - y0]
        if has_mask[row]:
            assert a["area"] == int(ds.store.column("nuclei", "area")[row])
            (poly,) = a["segmentation"]
            xy = np.array(poly).reshape(-1, 2)
            inst = np.asarray(ds.store.instance_map(a["image_id"]))
            k = row - int(starts[a["image_id"]]) + 1
            assert _iou(_rasterise(xy, inst.shape), inst == k) > 0.6
        else:  # box only: no polygon, the box's area
            assert a["segmentation"] == [] and a["area"] == (x1 - x0) * (y1 - y0)
    assert sum(not a["segmentation"] for a in data["annotations"]) == int((~has_mask).sum())


def test_coco_unlabelled_nuclei_have_a_category(prepared, tmp_path):
    ds = nucdata.load("tnbc", label_set="pannuke")
    (path,) = nucdata.exports.export(ds, "coco", tmp_path)
    data = json.loads(path.read_text())
    categories = {c["id"]: c["name"] for c in data["categories"]}
    assert {a["category_id"] for a in data["annotations"]} == {-1}
    assert categories[-1] == "unlabelled"
    assert {categories[i] for i in range(len(nucdata.label_set("pannuke")))} == set(nucdata.label_set("pannuke").names)


def test_hovernet_json_reads_back(prepared, tmp_path):
    ds = nucdata.load("consep")
    written = nucdata.exports.export(ds, "hovernet-json", tmp_path)
    assert len(written) == len(ds)
    for index, path in enumerate(written):
        data = json.loads(path.read_text())
        assert data["mag"] == 40  # 0.25 um/px
        rows = ds.store.nucleus_slice(index)
        assert sorted(data["nuc"], key=int) == [str(k) for k in range(1, rows.stop - rows.start + 1)]
        for key, nuc in data["nuc"].items():
            row = rows.start + int(key) - 1
            x0, y0, x1, y1 = (int(v) for v in ds.store.column("nuclei", "bbox")[row])
            assert nuc["bbox"] == [[y0, x0], [y1, x1]]  # row first, ends exclusive
            assert nuc["centroid"] == pytest.approx(ds.store.column("nuclei", "centroid")[row].tolist())
            contour = np.array(nuc["contour"])
            assert contour.ndim == 2 and contour.shape[1] == 2  # x, y
            assert (contour[:, 0] >= x0 - 1).all() and (contour[:, 0] <= x1).all()
            assert (contour[:, 1] >= y0 - 1).all() and (contour[:, 1] <= y1).all()
            assert nuc["type"] == int(ds.store.column("nuclei", "label")[row])
            assert nuc["type_prob"] == 1.0


@pytest.mark.parametrize("fmt, pattern", [("geojson", "*.geojson"), ("coco", "*.json"), ("hovernet-json", "*.json")])
def test_cli_export(prepared, tmp_path, fmt, pattern):
    out = tmp_path / fmt
    result = CliRunner().invoke(main, ["export", "consep", "--format", fmt, "--label-set", "pannuke",
                                       "--split", "test", "--out", str(out)])
    assert result.exit_code == 0, result.output
    files = sorted(out.glob(pattern))
    assert files and all(json.loads(f.read_text()) for f in files)
    assert not list(out.glob(".*.tmp"))


def test_unknown_format_is_refused(prepared, tmp_path):
    with pytest.raises(nucdata.InvalidArgumentError, match="valid formats"):
        nucdata.exports.export(nucdata.load("tnbc"), "shapefile", tmp_path)
