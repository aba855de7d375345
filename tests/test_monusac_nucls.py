"""MoNuSAC and NuCLS from generated archives in their native layouts, and real samples."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from helpers import assert_geometry_exact, extract_manual

import nucdata
from nucdata.demo import install
from nucdata.prepare import is_prepared
from nucdata.readers.imagescope import read_imagescope

MONUSAC_ZIPS = ["MoNuSAC_images_and_annotations.zip", "MoNuSAC Testing Data and Annotations.zip"]


def test_monusac_end_to_end(home, http_server):
    url, served = http_server
    install("monusac", home, into=served, base_url=url)
    nucdata.prepare("monusac")
    ds = nucdata.load("monusac")
    manifest = ds.manifest
    assert manifest["count_check"] == "passed"
    assert manifest["counts"]["images"] == {"train": 6, "test": 4, "total": 10}
    assert manifest["dropped"]["ambiguous_regions"] == 2
    assert int(ds.images.ambiguous_regions.sum()) == 2
    assert set(np.unique(ds.nuclei.label.values)) <= {1, 2, 3, 4}
    assert np.allclose(np.unique(ds.images.mpp.values), [0.19448, 0.252])
    assert ds.images.patient.values[0].startswith("TCGA-")
    # Suffixes _1, _002 and -1 all paired, and the .svs-only image was read.
    names = ds.images.name.values.tolist()
    assert any(n.endswith("DX1-1") or n.endswith("DX1-2") for n in names)
    assert any(n.endswith("_002") or n.endswith("_001") for n in names)
    assert assert_geometry_exact(ds.store) == manifest["counts"]["nuclei"]["total"]
    pannuke = nucdata.load("monusac", label_set="pannuke")
    epithelial = pannuke.nuclei.native_label.values == 1
    assert (pannuke.nuclei.label.values[epithelial] == -1).all()  # neoplastic or epithelial
    assert (pannuke.nuclei.candidates.values[epithelial] == 0b10001).all()


def test_monusac_unknown_class_is_kept_and_reported(home, tmp_path):
    install("monusac", home)
    folder = extract_manual(home, MONUSAC_ZIPS, tmp_path / "x")
    xml = next((folder / "MoNuSAC_images_and_annotations").rglob("*.xml"))
    text = xml.read_text()
    xml.write_text(text.replace('Attribute Name="Lymphocyte"', 'Attribute Name="Lymphocite"'))
    nucdata.prepare("monusac", source=folder, check_counts=False)
    ds = nucdata.load("monusac")
    key = "unknown_class_kept_unlabelled:Lymphocite"
    lost = text.count("<Region ", text.index('Name="Lymphocyte"'), text.index('Name="Neutrophil"'))
    assert ds.manifest["dropped"].get(key, 0) == lost
    assert int((ds.nuclei.label == -1).sum()) == lost


def test_monusac_missing_test_tree(home, tmp_path):
    install("monusac", home)
    folder = extract_manual(home, MONUSAC_ZIPS[:1], tmp_path / "x")
    with pytest.raises(nucdata.MissingFilesError, match="test tree"):
        nucdata.prepare("monusac", source=folder)


def test_monusac_realdata_xml(realdata):
    annotation = read_imagescope(realdata / "monusac" / "TCGA-5P-A9K0-01Z-00-DX1_3.xml")
    assert annotation.mpp == pytest.approx(0.19448)
    assert annotation.layer_classes == ["Epithelial", "Lymphocyte", "Neutrophil", "Macrophage"]
    assert [r.layer_class for r in annotation.regions] == ["Neutrophil"] * 5
    for region in annotation.regions:  # ImageScope's Area is the raw shoelace area
        from nucdata.readers.imagescope import polygon_area

        assert polygon_area(region.vertices) == pytest.approx(region.declared_area, rel=0.02)


def test_nucls_end_to_end(home, http_server):
    url, served = http_server
    install("nucls", home, into=served, base_url=url)
    nucdata.prepare("nucls")
    ds = nucdata.load("nucls")
    manifest = ds.manifest
    assert manifest["count_check"] == "passed"
    nuclei = ds.nuclei
    assert (~nuclei.has_mask.values).sum() == manifest["dropped"]["boxes_without_mask_kept"] > 0
    assert (nuclei.area.values[~nuclei.has_mask.values] == 0).all()
    assert "main_classification" in nuclei and "super_classification" in nuclei
    assert (nuclei.label.values == 99).any()  # 'unlabeled' kept with its native code
    assert np.allclose(ds.images.mpp.values, 0.2)
    assert assert_geometry_exact(ds.store) == int(nuclei.has_mask.sum())
    train, test = nucdata.load("nucls", split="fold1/train"), nucdata.load("nucls", split="fold1/test")
    assert len(train) + len(test) == len(ds)
    assert not set(train.images.slide.values) & set(test.images.slide.values)
    under = nucdata.load("nucls", label_set="nucls")
    unlabeled = under.nuclei.native_label.values == 99
    assert (under.nuclei.label.values[unlabeled] == -1).all()


def test_nucls_malformed_coordinates(home, tmp_path):
    install("nucls", home)
    folder = extract_manual(home, ["NuCLS_dataset.zip"], tmp_path / "x")
    table = next(p for p in (folder / "NuCLS_dataset" / "csv").glob("TCGA*.csv"))
    with open(table, newline="") as fh:
        rows = list(csv.reader(fh))
    rows[2][9] = "12,14,oops,20"
    with open(table, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    with pytest.raises(nucdata.MalformedAnnotationError, match=r"row 3, column 'coords_x'"):
        nucdata.prepare("nucls", source=folder)
    assert not is_prepared("nucls")


def test_nucls_gt_codes_realdata(realdata):
    from nucdata.labelsets import native_vocabulary

    with open(realdata / "nucls" / "nucleus_GTcodes.csv", newline="") as fh:
        table = {r["group"]: int(r["GT_code"]) for r in csv.DictReader(fh)}
    assert table["fov_basic"] == 253 and table["unlabeled"] == 99
    for code, name, _ in native_vocabulary("nucls"):
        assert table[name] == code, name
