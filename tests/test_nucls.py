"""NuCLS: generated archive in the native layout over loopback HTTP, bad inputs, real code table."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_geometry_exact, extract_manual

import nucdata
from nucdata.acquire import is_prepared
from nucdata.datasets import nucls as source
from nucdata.testing import install

ZIP = ["NuCLS_dataset.zip"]


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def write_rows(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def fov_tables(folder: Path) -> list[Path]:
    return sorted(p for p in (folder / "NuCLS_dataset" / "csv").glob("TCGA*.csv"))


def test_end_to_end_over_http(home, http_server):
    url, served = http_server
    archives = install("nucls", home, into=served, base_url=url)
    nucdata.prepare("nucls", root=home)
    ds = nucdata.load("nucls", root=home)
    m = ds.manifest
    assert m["count_check"] == "passed" and m["source"]["verified"]
    assert m["counts"]["classes"] == archives.expected["classes"]
    assert m["annotations_read"] == archives.expected["regions"]
    nuclei, images = ds.nuclei, ds.images
    # Boxes: no mask, area 0, bbox = CSV box made exclusive and clipped.
    box = ~nuclei.has_mask.values
    assert box.sum() == m["dropped"]["boxes_without_mask_kept"] > 0
    assert (nuclei.area.values[box] == 0).all()
    assert assert_geometry_exact(ds.store) == int(nuclei.has_mask.values.sum())
    with zipped_csvs(served) as tables:
        for i, name in enumerate(images.name.values.tolist()):
            rows = {int(r[0]): r for r in tables[name][1:]}
            sel = np.flatnonzero(nuclei.image.values == i)
            h, w = int(images.height.values[i]), int(images.width.values[i])
            assert sorted(nuclei.source_id.values[sel].tolist()) == sorted(rows)
            for row in sel:
                r = rows[int(nuclei.source_id.values[row])]
                assert (r[4] == "rectangle") == bool(box[row])
                assert nuclei.raw_classification.values[row] == r[1]
                assert nuclei.main_classification.values[row] == r[2]
                assert nuclei.super_classification.values[row] == r[3]
                assert nuclei.label.values[row] == source.GT_CODES[r[1]]
                if r[4] == "rectangle":
                    x0, y0, x1, y1 = map(int, r[5:9])
                    expected = [max(0, x0), max(0, y0), min(w, x1 + 1), min(h, y1 + 1)]
                    assert nuclei.bbox.values[row].tolist() == expected
    assert (nuclei.label.values == 99).any()  # 'unlabeled' kept with its native code
    assert m["extra"]["native_classes"]["99"] == "unlabeled"
    # Centroids of contours away from the FOV edge sit on the drawn centres: the CSV's
    # pixel-index coordinates are read without a half-pixel shift.
    for i, name in enumerate(images.name.values.tolist()):
        drawn = np.array([(x, y) for x, y, _ in archives.truth[name]])
        bb = nuclei.bbox.values
        inner = (bb[:, 0] > 0) & (bb[:, 1] > 0) & (bb[:, 2] < images.width.values[i]) & (bb[:, 3] < images.height.values[i])
        got = nuclei.centroid.values[(nuclei.image.values == i) & ~box & inner]
        assert np.hypot(*(got[:, None] - drawn[None]).transpose(2, 0, 1)).min(axis=1).max() < 0.5
    # 0.2 um/px; slide, hospital and FOV bounds per image.
    assert np.allclose(images.mpp.values, 0.2)
    assert all(n.startswith(s) for n, s in zip(images.name.values, images.slide.values, strict=True))
    assert set(images.hospital.values) == {"A2", "AR", "E2", "OL"}
    assert (images.fov_bottom.values - images.fov_top.values == images.height.values).all()
    # Stored splits = the fold whose test list holds the slide; protocols from the files.
    assert m["counts"]["images"] == {**archives.expected["images"], "total": 8}
    assert list(dict.fromkeys(images.split.values.tolist())) == ["fold1", "fold2"]
    assert m["extra"]["protocols"] == {
        "fold1": {"train": ["fold2"], "test": ["fold1"]},
        "fold2": {"train": ["fold1"], "test": ["fold2"]},
    }
    for k in (1, 2):
        train = nucdata.load("nucls", split=f"fold{k}/train", root=home)
        test = nucdata.load("nucls", split=f"fold{k}/test", root=home)
        assert len(train) + len(test) == len(ds)
        assert not set(train.images.hospital.values) & set(test.images.hospital.values)
    with pytest.raises(nucdata.InvalidArgumentError, match="fold1/train"):
        nucdata.load("nucls", split="fold999/train", root=home)


class zipped_csvs:
    """The FOV CSVs of the served archive, by stem, in a temporary folder."""

    def __init__(self, served: Path):
        self.served = served

    def __enter__(self) -> dict[str, list[list[str]]]:
        import tempfile
        import zipfile

        self.tmp = Path(tempfile.mkdtemp())
        with zipfile.ZipFile(self.served / ZIP[0]) as zf:
            zf.extractall(self.tmp)
        return {p.stem: read_rows(p) for p in fov_tables(self.tmp)}

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def test_malformed_coordinate_list(home, tmp_path):
    install("nucls", home)
    folder = extract_manual(home, ZIP, tmp_path / "x")
    table = fov_tables(folder)[0]
    rows = read_rows(table)
    rows[2][9] = "12,14,oops,20"
    write_rows(table, rows)
    with pytest.raises(nucdata.MalformedAnnotationError, match=re.escape(table.name) + r".*row 3, column 'coords_x'"):
        nucdata.prepare("nucls", from_dir=folder, root=home)
    assert not is_prepared("nucls", home)
    assert not any((home / "stores" / "nucls").glob("*/manifest.json"))


def test_unequal_coordinate_lists(home, tmp_path):
    install("nucls", home)
    folder = extract_manual(home, ZIP, tmp_path / "x")
    table = fov_tables(folder)[1]
    rows = read_rows(table)
    rows[1][10] = rows[1][10].rsplit(",", 1)[0]
    write_rows(table, rows)
    with pytest.raises(nucdata.MalformedAnnotationError, match=r"row 2 .*coords_y"):
        nucdata.prepare("nucls", from_dir=folder, root=home)
    assert not is_prepared("nucls", home)


def test_missing_folders_and_files(home, tmp_path):
    install("nucls", home)
    folder = extract_manual(home, ZIP, tmp_path / "x")
    table = fov_tables(folder)[0]
    table.unlink()
    with pytest.raises(nucdata.MissingFilesError, match=re.escape(table.stem) + ".*has no CSV"):
        nucdata.prepare("nucls", from_dir=folder, root=home)
    shutil.rmtree(folder / "NuCLS_dataset" / "csv")
    with pytest.raises(nucdata.MissingFilesError, match="rgb/ and csv/"):
        nucdata.prepare("nucls", from_dir=folder, root=home)
    assert not is_prepared("nucls", home)


def test_without_fold_files_everything_is_unassigned(home, tmp_path):
    install("nucls", home)
    folder = extract_manual(home, ZIP, tmp_path / "x")
    shutil.rmtree(folder / "NuCLS_dataset" / "train_test_splits")
    nucdata.prepare("nucls", from_dir=folder, root=home, check_counts=False)
    ds = nucdata.load("nucls", root=home)
    assert set(ds.images.split.values) == {"unassigned"}
    assert any("train_test_splits" in n for n in ds.manifest["notes"])
    with pytest.raises(nucdata.InvalidArgumentError):
        nucdata.load("nucls", split="fold1/train", root=home)


def test_folds_that_do_not_partition_the_slides(home, tmp_path):
    install("nucls", home)
    folder = extract_manual(home, ZIP, tmp_path / "x")
    splits = folder / "NuCLS_dataset" / "train_test_splits"
    rows = read_rows(splits / "fold_2_test.csv")
    rows.append(["9", "TCGA-A2-A0SX-DX1", "A2", "test", "2"])  # also in fold 1's test list
    write_rows(splits / "fold_2_test.csv", rows)
    with pytest.raises(nucdata.MalformedAnnotationError, match="TCGA-A2-A0SX-DX1.*folds \\[1, 2\\]"):
        nucdata.prepare("nucls", from_dir=folder, root=home)
    assert not is_prepared("nucls", home)


def test_unknown_class_and_fov_rows(home, tmp_path):
    install("nucls", home)
    folder = extract_manual(home, ZIP, tmp_path / "x")
    table = fov_tables(folder)[0]
    rows = read_rows(table)
    rows[1][1] = "giant_cell"
    rows.append(["99", "fov_basic", "", "", "rectangle", "0", "0", "10", "10",
                 "0,10,10,0,0", "0,0,10,10,0"])
    write_rows(table, rows)
    nucdata.prepare("nucls", from_dir=folder, root=home, check_counts=False)
    ds = nucdata.load("nucls", root=home)
    m = ds.manifest
    assert m["extra"]["unknown_classes"] == {"giant_cell": 1}
    assert m["dropped"]["unknown_class_kept_unlabelled:giant_cell"] == 1
    assert m["dropped"]["fov_rows_skipped"] == 1
    unlabelled = ds.nuclei.label.values == -1
    assert ds.nuclei.raw_classification.values[unlabelled].tolist() == ["giant_cell"]


def test_stem_helpers():
    stem = "TCGA-A2-A0SX-DX1_id-5ea40b05ddda5f839899743b_left-54812_top-58969_bottom-59272_right-55081"
    assert source.slide_of(stem) == source.slide_of("rater3_" + stem) == "TCGA-A2-A0SX-DX1"
    assert source.hospital_of("TCGA-A2-A0SX-DX1") == "A2"
    assert source.fov_bounds(stem) == {"fov_left": 54812, "fov_top": 58969, "fov_bottom": 59272, "fov_right": 55081}


def test_realdata_gt_codes(realdata):
    from nucdata.labels import native_vocabulary

    with open(realdata / "nucls" / "nucleus_GTcodes.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    codes = {r["group"]: int(r["GT_code"]) for r in table}
    fov = {g for g, c in codes.items() if c == source.FOV_CODE}
    assert codes["fov_basic"] == 253 and codes["unlabeled"] == 99
    assert {g.lower() for g in fov} == source.FOV_GROUPS  # every FOV group is skipped as non-nucleus
    assert {g: c for g, c in codes.items() if g not in fov} == source.GT_CODES
    assert {name: code for code, name, _ in native_vocabulary("nucls")} == source.GT_CODES
    assert set(source.HIERARCHY) == set(source.GT_CODES)


def test_label_set_and_slide_disjoint_folds(home):
    """Moved from the former pair module: 'unlabeled' has no class in the nucls label set."""
    install("nucls", home)
    nucdata.prepare("nucls", root=home)
    ds = nucdata.load("nucls", root=home)
    assert "main_classification" in ds.nuclei and "super_classification" in ds.nuclei
    train = nucdata.load("nucls", split="fold1/train", root=home)
    test = nucdata.load("nucls", split="fold1/test", root=home)
    assert not set(train.images.slide.values) & set(test.images.slide.values)
    under = nucdata.load("nucls", label_set="nucls", root=home)
    unlabeled = under.nuclei.native_label.values == 99
    assert unlabeled.any() and (under.nuclei.label.values[unlabeled] == -1).all()
