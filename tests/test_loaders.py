"""Crops, collation, multi-dataset loading, exports, overlays and stats."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import nucdata
import nucdata.exports
from nucdata.cli import main
from nucdata.crops import build_bank, cut_image
from nucdata.demo import install


@pytest.fixture
def prepared(home):
    for name in ("consep", "monusac", "nucls", "tnbc"):
        install(name, home)
        nucdata.prepare(name)
    return home


def test_crops_are_centred_with_their_mask(prepared):
    ds = nucdata.load("consep", split="test", label_set="pannuke")
    crops = ds.crops(size=32)
    assert len(crops) == int(ds.nuclei.sizes["nucleus"])
    sample = crops[0]
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.uint8
    assert sample["mask"].shape == (1, 32, 32)
    # The mask is the nucleus and sits at the centre of the crop.
    mask = sample["mask"][0].numpy() > 0
    ys, xs = np.nonzero(mask)
    row = int(sample["nucleus_index"])
    cx, cy = ds.store.column("nuclei", "centroid")[row]
    assert abs(xs.mean() - (16 + cx - np.floor(cx + 0.5))) < 1.0
    assert abs(ys.mean() - (16 + cy - np.floor(cy + 0.5))) < 1.0
    assert int(mask.sum()) == int(ds.store.column("nuclei", "area")[row])
    assert int(sample["label"]) == int(ds.nuclei.label.values[0])
    # The crop's pixels are the image's pixels around the centroid.
    image = ds.store.rgb(int(sample["image_index"]))
    x, y = int(np.floor(cx + 0.5)), int(np.floor(cy + 0.5))
    if 16 <= x < image.shape[1] - 16 and 16 <= y < image.shape[0] - 16:
        np.testing.assert_array_equal(sample["image"].numpy().transpose(1, 2, 0), image[y - 16 : y + 16, x - 16 : x + 16])


def test_border_reflection_and_large_nuclei():
    rgb = np.arange(20 * 20 * 3, dtype=np.uint8).reshape(20, 20, 3)
    inst = np.zeros((20, 20), np.int32)
    inst[0:3, 0:3] = 1  # at the corner
    inst[5:19, 4:18] = 2  # 14 px wide: larger than an 8 px crop
    centroids = np.array([[1.0, 1.0], [10.5, 11.5]], np.float32)
    bboxes = np.array([[0, 0, 3, 3], [4, 5, 18, 19]])
    crops, scales = cut_image(rgb, inst, centroids, bboxes, np.array([True, True]), 8)
    assert scales.tolist() == [1.0, pytest.approx(8 / 14)]
    # Reflection: the row above the image mirrors row 1 (numpy 'reflect').
    np.testing.assert_array_equal(crops[0, :3, 2, 3:].transpose(1, 0), rgb[1, 0:5])
    assert crops[0, 3, :3].sum() == 0  # no mask outside the image
    assert crops[1, 3].mean() > 200  # the resized nucleus fills its crop


def test_box_only_nuclei_get_their_box(prepared):
    ds = nucdata.load("nucls")
    crops = ds.crops(size=24)
    boxes = np.flatnonzero(~ds.nuclei.has_mask.values)
    sample = crops[int(boxes[0])]
    assert sample["mask"].sum() > 0


def test_bank_is_reused_and_invalidated(prepared):
    ds = nucdata.load("tnbc")
    bank = build_bank(ds.store, 16)
    mtime = (bank.path / "crops.npy").stat().st_mtime_ns
    assert (build_bank(ds.store, 16).path / "crops.npy").stat().st_mtime_ns == mtime
    assert bank.tensor().shape == (len(bank), 4, 16, 16)
    nucdata.prepare("tnbc", force=True)  # a rebuilt store takes its banks with it
    ds = nucdata.load("tnbc")
    assert not (ds.store.path / "crops").exists()
    assert len(build_bank(ds.store, 16)) == len(bank)


def test_load_many_and_crop_loader_with_workers(prepared):
    many = nucdata.load_many(["consep", "monusac", "tnbc"], label_set="monusac")
    crops = many.crops(size=16)
    assert set(crops.dataset_index.tolist()) == {0, 1, 2}
    assert len(crops) == sum(int(d.nuclei.sizes["nucleus"]) for d in many.members)
    pickle.loads(pickle.dumps(crops))  # what DataLoader workers receive
    seen = 0
    for batch in nucdata.crop_loader(crops, batch_size=32, shuffle=True, num_workers=2):
        assert batch["image"].shape[1:] == (3, 16, 16)
        assert batch["label"].dtype == torch.int64
        seen += batch["image"].shape[0]
    assert seen == len(crops)
    # TNBC nuclei carry no label under any set; MoNuSAC's own set is exact.
    tnbc = crops.dataset_index == 2
    assert (crops.labels[tnbc] == -1).all() and (crops.candidates[tnbc] == 0).all()
    assert (crops.labels[crops.dataset_index == 1] >= 0).all()


def test_collate_keeps_nucleus_fields_as_lists(prepared):
    ds = nucdata.load("monusac")
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=nucdata.collate, num_workers=2)
    batch = next(iter(loader))
    assert isinstance(batch["centroids"], list) and len(batch["centroids"]) == 3
    assert isinstance(batch["image"], list)  # MoNuSAC sizes differ
    tnbc = next(iter(torch.utils.data.DataLoader(nucdata.load("tnbc"), batch_size=2, collate_fn=nucdata.collate)))
    assert tnbc["image"].shape == (2, 3, 64, 64)


def test_xarray_views_chunk_without_copy(prepared):
    ds = nucdata.load("consep")
    area = ds.nuclei.area
    assert np.shares_memory(area.values, ds.store.column("nuclei", "area"))
    pytest.importorskip("dask")
    chunked = ds.nuclei.chunk({"nucleus": 16})
    assert int(chunked.area.sum().compute()) == int(area.sum())


def test_geojson_export_reads_back(prepared, tmp_path):
    ds = nucdata.load("consep", split="test", label_set="pannuke")
    nucdata.exports.export(ds, "geojson", tmp_path)
    name = str(ds.images.name.values[0])
    data = json.loads((tmp_path / f"{name}.geojson").read_text())
    assert data["type"] == "FeatureCollection"
    features = data["features"]
    assert len(features) == int(ds.images.nucleus_count.values[0])
    f = features[0]
    assert f["properties"]["objectType"] == "detection" and f["geometry"]["type"] == "Polygon"
    ring = np.array(f["geometry"]["coordinates"][0])
    centroid = ds.nuclei.centroid.values[0] + 0.5  # corner frame
    assert np.abs(ring.mean(axis=0) - centroid).max() < 1.5
    labelled = [x for x in features if "classification" in x["properties"]]
    assert all(x["properties"]["classification"]["name"] in nucdata.label_set("pannuke").names for x in labelled)


def test_coco_export_reads_back(prepared, tmp_path):
    ds = nucdata.load("nucls")
    (path,) = nucdata.exports.export(ds, "coco", tmp_path)
    data = json.loads(path.read_text())
    assert len(data["images"]) == len(ds)
    assert len(data["annotations"]) == int(ds.nuclei.sizes["nucleus"])
    boxes = [a for a in data["annotations"] if not a["segmentation"]]
    assert len(boxes) == int((~ds.nuclei.has_mask).sum())
    polygon = next(a for a in data["annotations"] if a["segmentation"])
    xs = polygon["segmentation"][0][0::2]
    x, y, w, h = polygon["bbox"]
    assert x - 1 <= min(xs) and max(xs) <= x + w + 1
    assert {c["id"] for c in data["categories"]} >= {a["category_id"] for a in data["annotations"] if a["category_id"] >= 0}


def test_hovernet_export_row_col_bbox(prepared, tmp_path):
    ds = nucdata.load("consep")
    nucdata.exports.export(ds, "hovernet-json", tmp_path)
    data = json.loads((tmp_path / f"{ds.images.name.values[0]}.json").read_text())
    nuc = data["nuc"]["1"]
    x0, y0, x1, y1 = ds.store.column("nuclei", "bbox")[0]
    assert nuc["bbox"] == [[int(y0), int(x0)], [int(y1), int(x1)]]  # row first
    assert nuc["centroid"] == pytest.approx(ds.store.column("nuclei", "centroid")[0].tolist())
    assert nuc["type"] == int(ds.nuclei.label.values[0])
    assert data["mag"] == 40


def test_cli_overlay_and_stats(prepared, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["overlay", "monusac", "--label-set", "pannuke", "--out", str(tmp_path / "ov")])
    assert result.exit_code == 0, result.output
    pngs = sorted((tmp_path / "ov").glob("*.png"))
    assert len(pngs) == 10
    image = Image.open(pngs[0])
    assert image.height > nucdata.load("monusac").images.height.values[0]  # legend strip
    result = runner.invoke(main, ["stats", "nucls", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert sum(summary["nuclei"].values()) == int(nucdata.load("nucls").nuclei.sizes["nucleus"])
    assert summary["nuclei_without_mask"] > 0
    result = runner.invoke(main, ["export", "tnbc", "--format", "coco", "--out", str(tmp_path / "x")])
    assert result.exit_code == 0, result.output


def test_plot_needs_matplotlib_or_says_so(prepared):
    ds = nucdata.load("tnbc")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(nucdata.NucdataError, match="pip install matplotlib"):
            ds.plot(0)
    else:
        assert ds.plot(0) is not None
