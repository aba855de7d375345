"""Exports read back and checked against the store: QuPath GeoJSON, COCO, HoVer-Net JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import demo_home
from skimage.draw import polygon2mask

import nucdata
import nucdata.exports
from nucdata.cli import main


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    with demo_home(tmp_path_factory.mktemp("home"), ("consep", "nucls", "tnbc")) as home:
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
            label = int(ds.labels[row])
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


# -- segmentation exports: PanNuke folds and HoVer-Net patches --------------------------------
@pytest.fixture(scope="module")
def pannuke_home(tmp_path_factory):
    with demo_home(tmp_path_factory.mktemp("pannuke_home"), ("pannuke", "consep", "monusac")) as home:
        yield home


def _nuclei_by_image(ds: nucdata.NucleusDataset) -> dict[str, list[tuple]]:
    """Image name -> sorted (centroid x, y, area, label) of its nuclei."""
    out = {}
    centroid = np.asarray(ds.store.column("nuclei", "centroid"))
    area = np.asarray(ds.store.column("nuclei", "area"))
    for index in ds.indices:
        rows = ds.store.nucleus_slice(int(index))
        out[str(ds.store.column("images", "name")[index])] = sorted(
            (round(float(x), 3), round(float(y), 3), int(a), int(lab))
            for (x, y), a, lab in zip(centroid[rows], area[rows], ds.labels[rows], strict=True))
    return out


def test_pannuke_layout_and_round_trip(pannuke_home, tmp_path):
    out = tmp_path / "folds"
    result = CliRunner().invoke(main, ["export", "pannuke", "--format", "pannuke", "--label-set", "pannuke",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    ds = nucdata.load("pannuke", label_set="pannuke")
    total = 0
    for k in (1, 2, 3):  # the published layout, read as PanNuke's users read it
        images = np.load(out / f"Fold {k}" / "images" / f"fold{k}" / "images.npy")
        masks = np.load(out / f"Fold {k}" / "masks" / f"fold{k}" / "masks.npy")
        types = np.load(out / f"Fold {k}" / "images" / f"fold{k}" / "types.npy")
        assert images.dtype == masks.dtype == np.float64 and types.dtype.kind == "U"
        assert images.shape[1:] == (256, 256, 3) and masks.shape[1:] == (256, 256, 6)
        assert images.shape[0] == masks.shape[0] == types.shape[0] == (ds.store.column("images", "split") == f"fold{k}").sum()
        nucleus = masks[..., :5].sum(-1) > 0
        assert ((masks[..., 5] == 1) == ~nucleus).all()  # channel 5: background
        assert ((masks[..., :5] > 0).sum(-1) <= 1).all()  # one class per pixel
        total += images.shape[0]
    assert total == len(ds)
    # Round trip: the folder converts back with the same nuclei and classes.
    home2 = tmp_path / "home2"
    result = CliRunner().invoke(main, ["prepare", "pannuke", "--from", str(out), "--root", str(home2),
                                       "--no-count-check"])
    assert result.exit_code == 0, result.output
    back = nucdata.load("pannuke", label_set="pannuke", root=home2)
    assert _nuclei_by_image(back) == _nuclei_by_image(ds)
    assert list(back.store.column("images", "tissue")) == list(ds.store.column("images", "tissue"))


def test_pannuke_export_of_other_datasets_at_one_mpp(pannuke_home, tmp_path):
    ds = nucdata.load("monusac", split="train", label_set="pannuke")
    written = nucdata.exports.export(ds, "pannuke", tmp_path, mpp=0.5, size=32)
    masks = np.load(next(p for p in written if p.name == "masks.npy"))
    info = json.loads((tmp_path / "Fold 1" / "export.json").read_text())
    assert info["split"] == "train" and info["mpp"] == 0.5 and info["patches"] == masks.shape[0]
    tiles = ds.tiles(size=32, mpp=0.5, edge="shift")
    assert masks.shape == (len(tiles), 32, 32, 6)
    for t in range(len(tiles)):
        s = tiles[t]
        types = s["type_map"].numpy()
        labelled = types > 0
        channel = np.argmax(masks[t, ..., :5] > 0, axis=-1)
        assert (channel[labelled] == types[labelled] - 1).all()
        assert (masks[t, ..., :5].max(-1)[labelled] == s["instance_map"].numpy()[labelled]).all()
        assert (masks[t, ..., :5].sum(-1)[types == -1] == 0).all() and (masks[t, ..., 5][types == -1] == 0).all()
    # A folder nucdata did not write is never replaced.
    foreign = tmp_path / "other"
    (foreign / "Fold 1").mkdir(parents=True)
    with pytest.raises(nucdata.OutputFolderError, match="did not write"):
        nucdata.exports.export(ds, "pannuke", foreign, overwrite=True)
    assert (foreign / "Fold 1").is_dir() and not list((foreign / "Fold 1").iterdir())
    with pytest.raises(nucdata.InvalidArgumentError, match="label set"):
        nucdata.exports.export(nucdata.load("monusac"), "pannuke", tmp_path / "x")


def test_hovernet_patches_layout(pannuke_home, tmp_path):
    from nucdata.exports.hovernet_patches import mirror_patches

    ds = nucdata.load("consep", split="train", label_set="pannuke")
    result = CliRunner().invoke(main, ["export", "consep", "--format", "hovernet-patches", "--label-set",
                                       "pannuke", "--split", "train", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "train" / "540x540_164x164"
    type_info = json.loads((folder / "type_info.json").read_text())
    assert type_info["0"][0] == "background" and type_info["1"][0] == "neoplastic"
    names = ds.store.column("images", "name")
    for index in ds.indices:
        files = sorted(folder.glob(f"{names[index]}_*.npy"))
        assert files
        patch = np.load(files[0])
        assert patch.shape == (540, 540, 5) and patch.dtype == np.int32
        rgb = np.asarray(ds.store.rgb(int(index)))
        h, w = rgb.shape[:2]
        # Patch 0 starts (540 - 164) // 2 = 188 pixels before the image (mirror padding).
        assert (patch[188 : 188 + h, 188 : 188 + w, :3] == rgb).all()
        inst = np.asarray(ds.store.instance_map(int(index)))
        assert (patch[188 : 188 + h, 188 : 188 + w, 3] == inst).all()
        rows = ds.store.nucleus_slice(int(index))
        labels = ds.labels[rows]
        expected = np.concatenate([[0], np.where(labels >= 0, labels + 1, 0)])[inst]
        assert (patch[188 : 188 + h, 188 : 188 + w, 4] == expected).all()
    # HoVer-Net's window arithmetic on a 1000 x 1000 image (1376 after padding): windows at
    # 0, 164, ..., 820 plus one flush with the edge at 836, in each direction.
    corners = mirror_patches(np.arange(1376 * 1376).reshape(1000 + 376, 1376, 1)[188:-188, 188:-188], 540, 164)
    assert len(corners) == 49
