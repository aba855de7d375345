"""MoNuSAC 2020: generated archives in the native layout over loopback HTTP, bad inputs, real XML."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_geometry_exact, extract_manual
from PIL import Image

import nucdata
from nucdata.acquire import is_prepared
from nucdata.datasets import monusac as source
from nucdata.datasets._imagescope import polygon_area, read_imagescope
from nucdata.errors import CorruptArchiveError
from nucdata.testing import install

ZIPS = ["MoNuSAC_images_and_annotations.zip", "MoNuSAC Testing Data and Annotations.zip"]
TRAIN, TEST = "MoNuSAC_images_and_annotations", "MoNuSAC Testing Data and Annotations"


def xml_facts(folder: Path) -> dict[str, tuple[float, int]]:
    """(MicronsPerPixel, Ambiguous regions) of every XML in the archives of ``folder``, by stem."""
    out = {}
    for name in ZIPS:
        with zipfile.ZipFile(folder / name) as zf:
            for entry in zf.namelist():
                if entry.endswith(".xml") and "__MACOSX" not in entry:
                    root = ET.fromstring(zf.read(entry))
                    ambiguous = sum(
                        len(a.findall("Regions/Region")) for a in root.iter("Annotation")
                        if a.find("Attributes/Attribute").get("Name") == "Ambiguous"
                    )
                    out[Path(entry).stem] = (float(root.get("MicronsPerPixel")), ambiguous)
    return out


def ambiguous_polygons(folder: Path) -> dict[str, list[np.ndarray]]:
    """Vertices (x, y) of every Ambiguous region in the archives of ``folder``, by stem."""
    out: dict[str, list[np.ndarray]] = {}
    for name in ZIPS:
        with zipfile.ZipFile(folder / name) as zf:
            for entry in zf.namelist():
                if entry.endswith(".xml") and "__MACOSX" not in entry:
                    root = ET.fromstring(zf.read(entry))
                    out[Path(entry).stem] = [
                        np.array([[float(v.get("X")), float(v.get("Y"))] for v in r.iter("Vertex")])
                        for a in root.iter("Annotation")
                        if a.find("Attributes/Attribute").get("Name") == "Ambiguous"
                        for r in a.findall("Regions/Region")
                    ]
    return out


def test_end_to_end_over_http(home, http_server):
    url, served = http_server
    archives = install("monusac", home, into=served, base_url=url)
    nucdata.prepare("monusac", root=home)
    ds = nucdata.load("monusac", root=home)
    m = ds.manifest
    assert m["count_check"] == "passed" and m["source"]["kind"] == "archives" and m["source"]["verified"]
    assert m["counts"]["images"] == {"train": 6, "test": 4, "total": 10}
    assert m["annotations_read"] == archives.expected["regions"]
    # Native codes, per class; Macrophage (4) is an empty layer everywhere.
    assert m["counts"]["classes"] == archives.expected["classes"]
    labels = ds.nuclei.label.values
    assert set(np.unique(labels)) <= {1, 2, 3}
    assert m["extra"]["native_classes"] == {"1": "Epithelial", "2": "Lymphocyte", "3": "Neutrophil", "4": "Macrophage"}
    names = {1: "Epithelial", 2: "Lymphocyte", 3: "Neutrophil"}
    assert [names[c] for c in labels] == ds.nuclei.class_name.values.tolist()
    assert (ds.nuclei.layer.values == labels).all()  # layers in official order in the demo
    # Ambiguous regions: counted, never nuclei.
    assert m["dropped"]["ambiguous_regions"] == 2
    stored = ds.images.name.values.tolist()
    facts = xml_facts(served)
    assert ds.images.ambiguous_regions.values.tolist() == [facts[n][1] for n in stored]
    assert ds.images.ambiguous_regions.values[ds.images.split.values == "train"].sum() == 0
    # ... kept as polygons, loaded as masks: pixels whose centre is inside (corner convention).
    regions = ambiguous_polygons(served)
    for i, name in enumerate(stored):
        mask = ds.ignore_mask(i)
        h, w = int(ds.images.height.values[i]), int(ds.images.width.values[i])
        assert mask.shape == (h, w) and mask.dtype == bool
        stored_polygons = json.loads(str(ds.images.ignore_polygons.values[i]))
        assert len(stored_polygons) == len(regions[name]) == facts[name][1]
        expected = np.zeros((h, w), bool)
        for vertices, kept in zip(regions[name], stored_polygons, strict=True):
            np.testing.assert_allclose(np.array(kept), vertices)
            xs, ys = np.unique(vertices[:, 0]), np.unique(vertices[:, 1])
            assert xs.size == 2 and ys.size == 2  # the demo's Ambiguous areas are rectangles
            cols = (np.arange(w) + 0.5 > xs[0]) & (np.arange(w) + 0.5 < xs[1])
            rows = (np.arange(h) + 0.5 > ys[0]) & (np.arange(h) + 0.5 < ys[1])
            expected |= rows[:, None] & cols[None, :]
        np.testing.assert_array_equal(mask, expected)
        assert mask.any() == (facts[name][1] > 0)
    assert sum(ds.ignore_mask(i).any() for i in range(len(ds))) == 2
    # Every suffix spelling paired, the .svs-only image read, MPP per image from its XML.
    assert sorted(stored) == sorted(facts)
    assert any(n.endswith("_1") for n in stored) and any(n.endswith("_002") for n in stored)
    assert any(re.search(r"DX1-\d$", n) for n in stored)
    np.testing.assert_allclose(ds.images.mpp.values, [facts[n][0] for n in stored], rtol=1e-6)
    assert {round(float(v), 5) for v in ds.images.mpp.values} == {0.19448, 0.252}
    assert "svs_only_unreadable_skipped" not in m["dropped"]
    # Patient barcode (one patient in both splits), slide = folder name.
    per_split = {s: set(ds.images.patient.values[ds.images.split.values == s]) for s in ("train", "test")}
    assert "TCGA-A2-A0ES" in per_split["train"] & per_split["test"]
    assert all(s.startswith(p) for s, p in zip(ds.images.slide.values, ds.images.patient.values, strict=True))
    # Geometry: area = pixel count, centroid = mean pixel, bbox tight; near the drawn centres.
    assert assert_geometry_exact(ds.store) == m["counts"]["nuclei"]["total"]
    centroids, image_of = ds.nuclei.centroid.values, ds.nuclei.image.values
    for i, name in enumerate(stored):
        drawn = np.array([(x, y) for x, y, _ in archives.truth[name]])
        got = centroids[image_of == i]
        assert got.shape == drawn.shape
        assert np.hypot(*(got[:, None] - drawn[None]).transpose(2, 0, 1)).min(axis=1).max() < 1.0
    # Splits are contiguous and official.
    assert nucdata.load("monusac", split="test", root=home).images.split.values.tolist() == ["test"] * 4


def test_unknown_class_is_kept_and_reported(home, tmp_path):
    install("monusac", home)
    folder = extract_manual(home, ZIPS, tmp_path / "x")
    xml = sorted((folder / TRAIN).rglob("*.xml"))[0]
    text = xml.read_text()
    lost = text.count("<Region ", text.index('"Lymphocyte"'), text.index('"Neutrophil"'))
    xml.write_text(text.replace('Attribute Name="Lymphocyte"', 'Attribute Name="Lymphocite"'))
    if lost:  # the per-class check refuses the changed classes: nothing published
        with pytest.raises(nucdata.CountMismatchError, match="nuclei per class"):
            nucdata.prepare("monusac", from_dir=folder, root=home)
        assert not is_prepared("monusac", home)
    nucdata.prepare("monusac", from_dir=folder, root=home, check_counts=False)
    ds = nucdata.load("monusac", root=home)
    m = ds.manifest
    assert m["dropped"].get("unknown_class_kept_unlabelled:Lymphocite", 0) == lost
    assert m["extra"].get("unknown_classes", {}).get("Lymphocite", 0) == lost
    unlabelled = ds.nuclei.label.values == -1
    assert unlabelled.sum() == lost
    assert set(ds.nuclei.class_name.values[unlabelled]) <= {"Lymphocite"}
    assert m["counts"]["nuclei"]["total"] == sum(m["annotations_read"].values())


def test_unreadable_svs_only_image_is_skipped_counted_and_checked(home, tmp_path):
    install("monusac", home)
    folder = extract_manual(home, ZIPS, tmp_path / "x")
    svs_only = [p for p in (folder / TEST).rglob("*.svs") if not p.with_suffix(".tif").exists()]
    assert len(svs_only) == 1
    svs_only[0].write_bytes(b"II*\x00" + b"\x00" * 64)  # a TIFF header no reader can decode
    with pytest.raises(nucdata.CountMismatchError, match="images per split"):
        nucdata.prepare("monusac", from_dir=folder, root=home)
    assert not is_prepared("monusac", home)
    nucdata.prepare("monusac", from_dir=folder, root=home, check_counts=False)
    ds = nucdata.load("monusac", root=home)
    assert ds.manifest["dropped"]["svs_only_unreadable_skipped"] == 1
    assert any(svs_only[0].name in note for note in ds.manifest["notes"])
    assert ds.manifest["counts"]["images"]["test"] == 3


def test_read_svs_falls_back_to_tifffile(tmp_path, monkeypatch):
    tifffile = pytest.importorskip("tifffile")
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    path = tmp_path / "crop.svs"
    tifffile.imwrite(path, rgb, photometric="rgb")

    def pillow_fails(p):
        raise CorruptArchiveError(f"{p}: cannot be read")

    monkeypatch.setattr(source, "read_rgb", pillow_fails)
    np.testing.assert_array_equal(source.read_svs(path), rgb)
    path.write_bytes(b"not a tiff")
    with pytest.raises(CorruptArchiveError, match="imagecodecs"):
        source.read_svs(path)


def test_missing_test_tree(home, tmp_path):
    install("monusac", home)
    folder = extract_manual(home, ZIPS[:1], tmp_path / "x")
    with pytest.raises(nucdata.MissingFilesError, match="test tree"):
        nucdata.prepare("monusac", from_dir=folder, root=home)
    assert not is_prepared("monusac", home)


def test_xml_without_image(home, tmp_path):
    install("monusac", home)
    folder = extract_manual(home, ZIPS, tmp_path / "x")
    xml = sorted((folder / TRAIN).rglob("*.xml"))[0]
    for image in xml.parent.glob(xml.stem + ".*"):
        if image.suffix != ".xml":
            image.unlink()
    with pytest.raises(nucdata.MissingFilesError, match=re.escape(xml.name)):
        nucdata.prepare("monusac", from_dir=folder, root=home)
    assert not is_prepared("monusac", home)


def test_malformed_xml(home, tmp_path):
    install("monusac", home)
    folder = extract_manual(home, ZIPS, tmp_path / "x")
    xml = sorted((folder / TEST).rglob("*.xml"))[-1]
    xml.write_text(xml.read_text()[:300])
    with pytest.raises(nucdata.MalformedAnnotationError, match=re.escape(xml.name)):
        nucdata.prepare("monusac", from_dir=folder, root=home)
    assert not is_prepared("monusac", home)


def test_same_name_in_both_splits_is_renamed(home, tmp_path):
    install("monusac", home)
    folder = extract_manual(home, ZIPS, tmp_path / "x")
    patient = sorted(p for p in (folder / TRAIN).iterdir() if p.is_dir())[0]
    shutil.copytree(patient, folder / TEST / patient.name)
    nucdata.prepare("monusac", from_dir=folder, root=home, check_counts=False)
    ds = nucdata.load("monusac", root=home)
    renamed = [n for n in ds.images.name.values.tolist() if n.endswith("@test")]
    assert len(renamed) == 2 == ds.manifest["dropped"]["duplicate_names_renamed"]


def test_realdata_xml_parsed(realdata, home, tmp_path):
    xml = realdata / "monusac" / "TCGA-5P-A9K0-01Z-00-DX1_3.xml"
    annotation = read_imagescope(xml)
    assert annotation.mpp == pytest.approx(0.19448)
    # Classes from Attribute@Name (Annotation@Name is empty); three empty layers.
    assert annotation.layer_classes == ["Epithelial", "Lymphocyte", "Neutrophil", "Macrophage"]
    assert [r.layer_class for r in annotation.regions] == ["Neutrophil"] * 5
    for region in annotation.regions:  # ImageScope's Area is the raw shoelace area
        assert polygon_area(region.vertices) == pytest.approx(region.declared_area, rel=0.02)
    # Through the converter, next to a blank image large enough for every vertex.
    size = np.ceil(np.concatenate([r.vertices for r in annotation.regions]).max(axis=0)).astype(int) + 8
    blank = Image.new("RGBA", (int(size[0]), int(size[1])), (230, 200, 220, 255))
    for top, patient in ((TRAIN, "TCGA-5P-A9K0-01Z-00-DX1"), (TEST, "TCGA-5P-A9K0-01Z-00-DX2")):
        d = tmp_path / "x" / top / patient
        d.mkdir(parents=True)
        shutil.copyfile(xml, d / f"{patient}_3.xml")  # a temporary copy, outside the repository
        blank.save(d / f"{patient}_3.tif")
    nucdata.prepare("monusac", from_dir=tmp_path / "x", root=home, check_counts=False)
    ds = nucdata.load("monusac", root=home)
    assert ds.manifest["counts"]["classes"] == {"3": 10}
    assert (ds.nuclei.layer.values == 3).all() and set(ds.nuclei.class_name.values) == {"Neutrophil"}
    np.testing.assert_allclose(ds.images.mpp.values, 0.19448, rtol=1e-6)
    declared = np.array([r.declared_area for r in annotation.regions] * 2)
    np.testing.assert_allclose(ds.nuclei.area.values, declared, rtol=0.03)  # within 2% here
    assert ds.nuclei.source_id.values.tolist() == [1, 2, 3, 4, 5] * 2
    assert assert_geometry_exact(ds.store) == 10


def test_class_codes_agree_with_label_sets():
    from nucdata.labels import native_vocabulary

    assert {name.lower(): code for code, name, _ in native_vocabulary("monusac")} == source.CLASS_CODES


def test_epithelial_is_ambiguous_under_pannuke(home):
    """Moved from the former pair module: MoNuSAC 'Epithelial' is Neoplastic or Epithelial in PanNuke."""
    install("monusac", home)
    nucdata.prepare("monusac", root=home)
    pannuke = nucdata.load("monusac", label_set="pannuke", root=home)
    epithelial = pannuke.nuclei.native_label.values == 1
    assert epithelial.any()
    assert (pannuke.nuclei.label.values[epithelial] == -1).all()  # neoplastic or epithelial
    assert (pannuke.nuclei.candidates.values[epithelial] == 0b10001).all()
