"""CRCHisto: point annotations from MATLAB v5 ``.mat`` files, class marks matched to centres.

Hand-made fixtures are written with ``scipy.io.savemat`` (MATLAB v5 layout) or from the
format's bytes (``nucdata.testing.crchisto.mat_bytes``), never with the converter; the demo
archive runs end to end; the real images 1-60 run when ``../shared/realdata/crchisto`` is there.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from itertools import permutations
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy.io import loadmat, savemat, whosmat
from scipy.optimize import linear_sum_assignment

import nucdata
from nucdata.acquire import is_prepared
from nucdata.catalog import datasets_in_order, get_card
from nucdata.cli import main
from nucdata.datasets.crchisto import (
    EDGE_TOLERANCE_PX,
    MATCH_TOLERANCE_PX,
    match_marks,
    read_points,
)
from nucdata.labels import (
    MERGED_LABEL_SETS,
    OWN_LABEL_SET,
    check_tables,
    label_set,
    mapping,
    translate,
)
from nucdata.testing import install
from nucdata.testing.crchisto import mat_bytes

CLASS_FILES = ("epithelial", "fibroblast", "inflammatory", "others")
CODE = {"epithelial": 1, "inflammatory": 2, "fibroblast": 3, "others": 4}


# -- hand-made fixtures ------------------------------------------------------------------
def _save(path: Path, points) -> None:
    """One CRCHisto-style .mat written by scipy (MATLAB v5, compressed, variable 'detection')."""
    savemat(path, {"detection": np.asarray(points, np.float64).reshape(-1, 2)}, format="5", do_compression=True)


def write_copy(root: Path, images: dict[int, dict], size: int = 40, top: bool = True) -> Path:
    """A CRCHisto folder: ``images[N] = {"detection": pts, "<class>": pts, ...}`` (1-based x, y)."""
    base = root / "CRCHistoPhenotypes_2016_04_28" if top else root
    rng = np.random.default_rng(0)
    for n, spec in images.items():
        det, cls = base / "Detection" / f"img{n}", base / "Classification" / f"img{n}"
        det.mkdir(parents=True)
        cls.mkdir(parents=True)
        rgb = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(det / f"img{n}.bmp", format="BMP")
        (cls / f"img{n}.bmp").write_bytes((det / f"img{n}.bmp").read_bytes())
        _save(det / f"img{n}_detection.mat", spec["detection"])
        for c in CLASS_FILES:
            points = spec.get(c, np.zeros((0, 2)))
            if isinstance(points, bytes):
                (cls / f"img{n}_{c}.mat").write_bytes(points)
            else:
                _save(cls / f"img{n}_{c}.mat", points)
    (base / "Readme.txt").write_text("fixture\n")
    return root


EDGE_CASES = {
    1: {  # duplicated centres, a mark 9.5 px off, two marks nearest one centre
        "detection": [[10, 10], [10, 10], [20, 20], [20, 27], [30, 30.5]],
        "epithelial": [[10, 10]],
        "others": [[10, 10], [20, 20.5]],
        "inflammatory": [[20, 22]],  # nearest (20, 20) too; one to one it takes (20, 27)
        "fibroblast": [[30 + 9.5, 30.5]],  # 9.5 px off its centre: within the tolerance
    },
    2: {  # the border (a 40 x 40 image): 0.7 px beyond the left edge, 2 px beyond the top
        "detection": [[0.3, 15], [12, -1.0], [25, 25]],
        "epithelial": [[0.3, 15]],
        "fibroblast": [[12, -1.0]],
        "inflammatory": [[25, 25]],  # a one-point file
        "others": mat_bytes(np.zeros((0, 2))),  # empty, as MATLAB writes it (0 bytes of miUINT8)
    },
    3: {  # a mark with no centre near it; an empty class file written by scipy
        "detection": [[5, 5], [35, 35]],
        "epithelial": [[5, 5], [20, 5]],
        "others": np.zeros((0, 2)),
    },
}


def _store(home: Path):
    return nucdata.load("crchisto", root=home).store


def test_hand_made_fixtures_edge_cases(home, tmp_path):
    folder = write_copy(tmp_path / "copy", EDGE_CASES)
    nucdata.prepare("crchisto", from_dir=folder, root=home, check_counts=False)
    ds = nucdata.load("crchisto", root=home)
    store, m = ds.store, ds.manifest
    assert m["annotations_read"] == {"all": 10}  # detection rows, duplicates included
    assert m["extra"]["class_marks_read"] == {"epithelial": 4, "inflammatory": 2, "fibroblast": 2, "others": 2}
    assert m["dropped"] == {"centre_outside_image": 1, "class_mark_on_a_dropped_centre": 1,
                            "class_mark_without_free_centre": 1}
    assert m["count_check"].startswith("failed")  # three images, not the card's hundred
    label = np.asarray(store.column("nuclei", "label"))
    centroid = np.asarray(store.column("nuclei", "centroid"), np.float64)
    source = np.asarray(store.column("nuclei", "source_id"))
    distance = np.asarray(store.column("nuclei", "mark_distance"), np.float64)
    rows = store.nucleus_slice(0)
    # img1: each copy of the duplicated centre takes one of the two marks there
    assert sorted(label[rows][:2].tolist()) == [1, 4]
    assert label[rows][2] == 4 and label[rows][3] == 2  # one to one, not both on (20, 20)
    assert distance[rows][3] == pytest.approx(5.0)
    assert label[rows][4] == 3 and distance[rows][4] == pytest.approx(9.5)  # within 10 px
    np.testing.assert_allclose(centroid[rows], np.asarray(EDGE_CASES[1]["detection"]) - 1, atol=1e-5)
    assert source[rows].tolist() == [1, 2, 3, 4, 5]
    # img2: clipped onto the first column, dropped 2 px beyond the top edge (with its mark)
    rows = store.nucleus_slice(1)
    assert source[rows].tolist() == [1, 3]
    np.testing.assert_allclose(centroid[rows], [[0.0, 14.0], [24.0, 24.0]], atol=1e-5)
    assert label[rows].tolist() == [1, 2]
    assert m["extra"]["clipped_centres"] == [{"image": "img2", "row": 1, "x": 0.3, "y": 15.0, "beyond_px": 0.7}]
    # img3: the mark 15 px from every centre is dropped and listed
    rows = store.nucleus_slice(2)
    assert label[rows].tolist() == [1, -1] and np.isnan(distance[rows][1])
    (unmatched,) = m["extra"]["unmatched_marks"]
    assert unmatched["image"] == "img3" and unmatched["class"] == "epithelial"
    assert (unmatched["x"], unmatched["y"]) == (20.0, 5.0) and "within 10 px" in unmatched["reason"]
    # points only: no mask, area 0, the one pixel holding the centre as box
    assert not np.asarray(store.column("nuclei", "has_mask")).any()
    assert not np.asarray(store.column("nuclei", "area")).any()
    bbox = np.asarray(store.column("nuclei", "bbox"))
    np.testing.assert_array_equal(bbox[:, :2], np.floor(centroid + 0.5))
    np.testing.assert_array_equal(bbox[:, 2:] - bbox[:, :2], 1)
    assert all(int(np.asarray(store.instance_map(i)).max()) == 0 for i in range(store.n_images))
    assert list(store.column("images", "split")) == ["all"] * 3
    assert list(store.column("images", "tissue")) == ["colon"] * 3
    assert np.isnan(np.asarray(store.column("images", "mpp"))).all()
    assert [c.ok for c in nucdata.verify("crchisto", deep=True, root=home) if c.checked] == [True]


def test_the_empty_and_one_point_files_load_as_matlab_writes_them(tmp_path):
    """MATLAB's empty double is 0 bytes of miUINT8 (loadmat: uint8); squeeze would break a 1-point file."""
    empty = tmp_path / "empty.mat"
    empty.write_bytes(mat_bytes(np.zeros((0, 2))))
    assert whosmat(empty) == [("detection", (0, 2), "double")]
    assert loadmat(empty)["detection"].dtype == np.uint8  # the real files' quirk
    assert read_points(empty).shape == (0, 2) and read_points(empty).dtype == np.float64
    one = tmp_path / "one.mat"
    _save(one, [[3.5, 4.25]])
    assert loadmat(one, squeeze_me=True)["detection"].shape == (2,)
    np.testing.assert_array_equal(read_points(one), [[3.5, 4.25]])
    written = tmp_path / "bytes.mat"
    written.write_bytes(mat_bytes(np.array([[1.5, 2.0], [3.0, 4.5]])))
    np.testing.assert_array_equal(loadmat(written)["detection"], [[1.5, 2.0], [3.0, 4.5]])


def test_malformed_mat_files_are_refused_naming_the_file(tmp_path, monkeypatch):
    def refused(path: Path, match: str) -> None:
        with pytest.raises(nucdata.MalformedAnnotationError, match=match):
            read_points(path)

    p = tmp_path / "a.mat"
    savemat(p, {"points": np.ones((3, 2))})
    refused(p, r"a\.mat: key 'detection' is missing \(found \['points'\]\)")
    savemat(p, {"detection": np.ones((3, 3))})
    refused(p, r"'detection' is 3 x 3; CRCHisto's points are N x 2")
    savemat(p, {"detection": "text"})
    refused(p, r"holds text")
    savemat(p, {"detection": np.array([[1.0, np.nan]])})
    refused(p, "NaN or infinite")
    p.write_bytes(b"MATLAB 7.3 MAT-file".ljust(116, b" ") + b"\x00" * 8 + struct.pack("<H", 0x0200) + b"IM")
    refused(p, "v7.3")
    p.write_bytes(b"not a mat file at all")
    refused(p, "not a readable MATLAB file")
    # the size check reads the header only: loadmat is never called for an oversized variable
    savemat(p, {"detection": np.ones((50, 2))})
    monkeypatch.setenv("NUCDATA_MAX_IMAGE_PIXELS", "10")
    monkeypatch.setattr("nucdata._util.mat.loadmat", lambda *a, **k: pytest.fail("loadmat was called"))
    refused(p, r"holds 50 points, more than the limit of 10 .*NUCDATA_MAX_IMAGE_PIXELS")


def test_matching_is_one_to_one_with_the_most_pairs_then_the_least_distance():
    centres = np.array([[0.0, 0.0], [0.0, 6.0], [30.0, 30.0], [30.0, 30.0]])
    marks = np.array([[0.0, 1.0], [0.0, 2.0], [30.0, 30.0], [30.0, 30.0], [80.0, 80.0]])
    assigned, distance = match_marks(marks, centres)
    assert assigned.tolist()[:2] == [0, 1]  # the nearest centre of both is centre 0
    assert sorted(assigned[2:4].tolist()) == [2, 3] and assigned[4] == -1
    assert np.isnan(distance[4]) and distance[1] == pytest.approx(4.0)
    # exactly at the tolerance is in, beyond it out
    at = match_marks(np.array([[MATCH_TOLERANCE_PX, 0.0]]), np.zeros((1, 2)))[0]
    beyond = match_marks(np.array([[MATCH_TOLERANCE_PX + 0.01, 0.0]]), np.zeros((1, 2)))[0]
    assert at.tolist() == [0] and beyond.tolist() == [-1]
    assert match_marks(np.zeros((0, 2)), centres)[0].size == 0
    assert match_marks(marks, np.zeros((0, 2)))[0].tolist() == [-1] * 5


def _brute_force(marks: np.ndarray, centres: np.ndarray, tol: float) -> tuple[int, float]:
    """(most pairs, least total distance among those) over every one-to-one assignment."""
    d = np.hypot(*(marks[:, None] - centres[None]).transpose(2, 0, 1))
    best = (0, 0.0)
    m, n = d.shape
    for perm in permutations(range(n + m), m):  # index >= n: unassigned
        pairs = [(i, j) for i, j in enumerate(perm) if j < n and d[i, j] <= tol]
        if len(pairs) != sum(1 for i, j in enumerate(perm) if j < n):
            continue
        key = (len(pairs), -sum(d[i, j] for i, j in pairs))
        if key > (best[0], -best[1]):
            best = (len(pairs), -key[1])
    return best


@pytest.mark.parametrize("seed", range(12))
def test_matching_is_optimal_on_random_crowded_points(seed):
    rng = np.random.default_rng(seed)
    marks, centres = rng.uniform(0, 14, (4, 2)), rng.uniform(0, 14, (3, 2))
    assigned, distance = match_marks(marks, centres, tolerance=6.0)
    hit = assigned >= 0
    assert len(set(assigned[hit].tolist())) == int(hit.sum())  # one to one
    pairs, total = _brute_force(marks, centres, 6.0)
    assert int(hit.sum()) == pairs and float(distance[hit].sum()) == pytest.approx(total)
    # the dense formulation gives the same optimum
    d = np.hypot(*(marks[:, None] - centres[None]).transpose(2, 0, 1))
    r, c = linear_sum_assignment(np.where(d <= 6.0, d, 1e6))
    ok = d[r, c] <= 6.0
    assert int(ok.sum()) == pairs and float(d[r, c][ok].sum()) == pytest.approx(total)


def test_layouts_and_missing_files(home, tmp_path):
    spec = {1: {"detection": [[5, 5]], "epithelial": [[5, 5]]}, 2: {"detection": [[9, 9]]}}
    flat = write_copy(tmp_path / "flat", spec, top=False)  # without the zip's top folder
    nucdata.prepare("crchisto", from_dir=flat, root=home, check_counts=False)
    assert len(nucdata.load("crchisto", root=home)) == 2
    # __MACOSX junk and a stray folder are ignored
    junk = flat / "__MACOSX" / "Detection" / "img1"
    junk.mkdir(parents=True)
    (junk / "._img1.bmp").write_bytes(b"\x00\x05\x16\x07junk")
    (flat / "Detection" / "notes").mkdir()
    nucdata.prepare("crchisto", from_dir=flat, root=home, check_counts=False, force=True)
    assert list(_store(home).column("images", "name")) == ["img1", "img2"]
    # numeric order: img2 before img10
    order = write_copy(tmp_path / "order", {10: spec[1], 2: spec[2]})
    nucdata.prepare("crchisto", from_dir=order, root=home, check_counts=False, force=True)
    assert list(_store(home).column("images", "name")) == ["img2", "img10"]
    # a missing class file, an image in one folder only, no layout at all
    (flat / "Classification" / "img2" / "img2_others.mat").unlink()
    with pytest.raises(nucdata.MissingFilesError, match=r"img2 lacks .*img2_others\.mat"):
        nucdata.prepare("crchisto", from_dir=flat, root=home, check_counts=False, force=True)
    (flat / "Classification" / "img2").rename(tmp_path / "gone")
    with pytest.raises(nucdata.MissingFilesError, match="img2 have a folder in only one"):
        nucdata.prepare("crchisto", from_dir=flat, root=home, check_counts=False, force=True)
    with pytest.raises(nucdata.MissingFilesError, match="no CRCHisto dataset found"):
        nucdata.prepare("crchisto", from_dir=tmp_path / "gone", root=home, check_counts=False, force=True)


def test_the_two_copies_of_an_image_must_agree(home, tmp_path):
    spec = {1: {"detection": [[5, 5]], "epithelial": [[5, 5]]}}
    folder = write_copy(tmp_path / "a", spec)
    copy = folder / "CRCHistoPhenotypes_2016_04_28" / "Classification" / "img1" / "img1.bmp"
    copy.write_bytes(copy.read_bytes() + b"\x00\x00")  # other bytes, same pixels: accepted and counted
    nucdata.prepare("crchisto", from_dir=folder, root=home, check_counts=False)
    assert nucdata.load("crchisto", root=home).manifest["extra"]["images_identical_in_both_folders"] == {"pixels": 1}
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(copy, format="BMP")
    with pytest.raises(nucdata.MalformedAnnotationError, match="are different images.*2016_04_28"):
        nucdata.prepare("crchisto", from_dir=folder, root=home, check_counts=False, force=True)


# -- the demo archive ----------------------------------------------------------------------
def test_demo_archive_end_to_end(home):
    archives = install("crchisto", home)
    nucdata.prepare("crchisto", root=home, download=False)
    ds = nucdata.load("crchisto", root=home)
    m = ds.manifest
    assert m["count_check"] == "passed"  # images, detection rows and stored classes vs the demo card
    assert m["counts"]["classes"] == archives.expected["classes"]
    assert m["extra"]["class_marks_read_total"] == archives.expected["class_marks"]
    assert m["dropped"] == {"centre_outside_image": 1, "class_mark_on_a_dropped_centre": 1,
                            "class_mark_without_free_centre": 1}
    assert m["extra"]["duplicate_centres"] == 1 and len(m["extra"]["clipped_centres"]) == 1
    assert 0 < m["extra"]["largest_match_distance_px"] <= MATCH_TOLERANCE_PX
    assert m["extra"]["images_identical_in_both_folders"] == {"bytes": 6}
    store = ds.store
    names = list(store.column("images", "name"))
    centroid = np.asarray(store.column("nuclei", "centroid"), np.float64)
    source = np.asarray(store.column("nuclei", "source_id"))
    label = np.asarray(store.column("nuclei", "label"))
    clipped = {(c["image"], c["row"]) for c in m["extra"]["clipped_centres"]}
    with zipfile.ZipFile(home / "manual" / "crchistophenotypes_2016_04_28.zip") as zf:
        assert any(n.startswith("__MACOSX/") for n in zf.namelist())
        for index, name in enumerate(names):
            top = f"CRCHistoPhenotypes_2016_04_28/Detection/{name}/"
            det = loadmat(io.BytesIO(zf.read(top + f"{name}_detection.mat")))["detection"].reshape(-1, 2)
            rows = store.nucleus_slice(index)
            want = det[source[rows] - 1] - 1  # the store's frame: the file's 1-based points minus 1
            keep = [(name, int(s)) not in clipped for s in source[rows]]
            np.testing.assert_allclose(centroid[rows][keep], want[keep], atol=1e-4)
            np.testing.assert_array_equal(store.rgb(index), np.asarray(Image.open(io.BytesIO(zf.read(top + f"{name}.bmp")))))
            # a stored label is the class of a mark at that centre
            for c in CLASS_FILES:
                marks = loadmat(io.BytesIO(zf.read(
                    f"CRCHistoPhenotypes_2016_04_28/Classification/{name}/{name}_{c}.mat")))["detection"]
                marks = np.asarray(marks, np.float64).reshape(-1, 2) - 1
                for r in np.flatnonzero(label[rows] == CODE[c]):
                    assert np.hypot(*(marks - centroid[rows][r]).T).min() <= MATCH_TOLERANCE_PX + EDGE_TOLERANCE_PX
    assert all(c.ok for c in nucdata.verify("crchisto", deep=True, root=home))
    sample = ds[0]
    assert sample["image"].shape == (3, 64, 64) and int(sample["instance_map"].max()) == 0
    crops = ds.crops(16)
    assert len(crops) == store.n_nuclei and not np.asarray(crops.has_mask).any()
    mask = crops[0]["mask"].numpy()
    assert int((mask > 0).sum()) == 1 and mask[0, 8, 8] == 255  # the centre's one pixel, at the crop's centre


def test_manual_route_and_card(home):
    card = get_card("crchisto")
    assert card.expected["images"] == {"all": 100} and card.expected["regions"] == {"all": 29756}
    assert card.expected["class_marks"] == 22444 and card.nuclei == 29756
    assert card.licence == "NOASSERTION" and "research purpose only" in card.extra["licence_note"]
    assert "10.1109/TMI.2016.2525803" in card.citation and "1196--1206" in card.citation
    assert card.mpp is None and card.extra["mpp_default"] == 0.55 and "nominal" in card.extra["mpp_note"]
    (spec,) = card.files
    assert spec.sha256 is None and spec.size is None and spec.hash_source.startswith("unknown")
    assert "{manual}" in card.manual_instructions and "--from" in card.manual_instructions
    assert set(card.splits) == {"all"} and "10 whole-slide images of 9 patients" in card.splits["all"]
    assert card.order < 101 and datasets_in_order().index("crchisto") < datasets_in_order().index("kumar")
    with pytest.raises(nucdata.DownloadError, match=r"sign-in form.*manual"):  # nothing in manual/, no network
        nucdata.prepare("crchisto", root=home, download=False)
    install("crchisto", home)
    nucdata.prepare("crchisto", root=home, download=False)
    assert is_prepared("crchisto", root=home)


# -- its label set ---------------------------------------------------------------------------
def test_the_crchisto_label_set_and_its_tables():
    ls = label_set("crchisto")
    assert ls.names == ["epithelial", "inflammatory", "fibroblast", "miscellaneous"] and ls.exhaustive
    assert OWN_LABEL_SET["crchisto"] == "crchisto"
    assert MERGED_LABEL_SETS == ("pannuke", "nucls", "consep", "monusac")  # not a fifth merged set
    for target in ["crchisto", *MERGED_LABEL_SETS, "consep4", "nucls_main", "nucls_super"]:
        rows = mapping("crchisto", target)
        assert sorted(r.native for r in rows) == [1, 2, 3, 4]
        assert all(r.reason and r.sources for r in rows)
        assert "crchisto" in rows.rows[0].sources
    for source in ["pannuke", "consep", "monusac", "nucls", "consep4", "nucls_main", "nucls_super"]:
        rows = mapping(source, "crchisto")
        assert all("crchisto" in r.sources for r in rows if r.kind != "unknown" or r.native != 99)
    # a few rows by their definitions
    assert mapping("consep", "crchisto").row(1).kind == "unknown"  # CoNSeP other holds uncategorisable cells
    assert mapping("consep", "crchisto").row(7).classes == ("miscellaneous",)  # endothelium
    assert mapping("nucls", "crchisto").row(6).classes == ("miscellaneous",)  # mitotic figures
    assert mapping("crchisto", "pannuke").row(3).classes == ("connective",)
    assert mapping("crchisto", "consep4").row(1).classes == ("epithelial",)
    report = check_tables()
    assert report.ok and not report.findings
    result = CliRunner().invoke(main, ["label-sets", "--check"])
    assert result.exit_code == 0, result.output


def test_load_under_pannuke_follows_the_table(home):
    install("crchisto", home)
    nucdata.prepare("crchisto", root=home, download=False)
    native = nucdata.load("crchisto", root=home)
    under = nucdata.load("crchisto", label_set="pannuke", root=home)
    codes = np.asarray(native.store.column("nuclei", "label"), np.int64)
    want_labels, want_candidates = translate("crchisto", codes, "pannuke")
    got = [under[i] for i in range(len(under))]
    np.testing.assert_array_equal(np.concatenate([s["labels"].numpy() for s in got]), want_labels)
    np.testing.assert_array_equal(np.concatenate([s["candidates"].numpy() for s in got]), want_candidates)
    pannuke = label_set("pannuke")
    expect = {-1: (-1, 0), 2: (pannuke.index("inflammatory"), 1 << pannuke.index("inflammatory")),
              3: (pannuke.index("connective"), 1 << pannuke.index("connective")),
              1: (-1, pannuke.encode_candidates(["neoplastic", "epithelial"])),
              4: (-1, pannuke.encode_candidates(["neoplastic", "connective", "dead", "epithelial"]))}
    for code, (lab, cand) in expect.items():
        sel = codes == code
        assert sel.any(), code
        assert (want_labels[sel] == lab).all() and (want_candidates[sel] == cand).all()


def test_build_merged_takes_crchisto_as_a_labelled_dataset():
    from nucdata_models.merge.defaults import ALL_DATASETS
    from nucdata_models.study.synthetic import default_datasets

    labelled = [n for n in ALL_DATASETS if n in OWN_LABEL_SET]
    assert "crchisto" in labelled and "crchisto" in default_datasets()


# -- the real files (images 1-60), when present -----------------------------------------------
def test_real_images_1_to_60(realdata, home):
    folder = realdata / "crchisto"
    if not folder.is_dir():
        pytest.skip("../shared/realdata/crchisto is not present")
    result = CliRunner().invoke(main, ["prepare", "crchisto", "--from", str(folder), "--no-count-check",
                                       "--quiet", "--root", str(home)])
    assert result.exit_code == 0, result.output
    ds = nucdata.load("crchisto", root=home)
    m = ds.manifest
    assert m["annotations_read"] == {"all": 16836}
    assert m["extra"]["class_marks_read"] == {"epithelial": 4404, "inflammatory": 2758, "fibroblast": 2041,
                                              "others": 1512}
    assert m["extra"]["class_marks_read_total"] == 10715
    assert m["counts"]["nuclei"]["total"] == 16836 and m["counts"]["images"]["total"] == 60
    assert m["counts"]["classes"] == {"-1": 6122, "1": 4404, "2": 2758, "3": 2041, "4": 1511}
    assert m["dropped"] == {"centre_outside_image": 0, "class_mark_on_a_dropped_centre": 0,
                            "class_mark_without_free_centre": 1}
    (orphan,) = m["extra"]["unmatched_marks"]
    assert orphan["image"] == "img55" and orphan["class"] == "others" and orphan["nearest_centre_px"] > 9.4
    assert m["extra"]["class_marks_matched"] == 10714 and m["extra"]["class_marks_matched_exactly"] == 10646
    assert m["extra"]["largest_match_distance_px"] < 9.3
    assert m["extra"]["duplicate_centres"] == 8 and len(m["extra"]["clipped_centres"]) == 7
    assert m["extra"]["images_identical_in_both_folders"] == {"bytes": 60}
    assert "22,444 class marks for the whole release; 10,715 were read" in " ".join(m["notes"])
    store = ds.store
    root = next(folder.rglob("Detection")).parent
    centroid = np.asarray(store.column("nuclei", "centroid"), np.float64)
    source = np.asarray(store.column("nuclei", "source_id"))
    clipped = {(c["image"], c["row"]) for c in m["extra"]["clipped_centres"]}
    for index, name in enumerate(store.column("images", "name")):
        det = loadmat(root / "Detection" / str(name) / f"{name}_detection.mat")["detection"].reshape(-1, 2)
        rows = store.nucleus_slice(index)
        assert source[rows].tolist() == list(range(1, len(det) + 1))
        keep = np.array([(str(name), r) not in clipped for r in range(1, len(det) + 1)])
        np.testing.assert_allclose(centroid[rows][keep], det[keep] - 1, atol=1e-4)
        assert (centroid[rows][~keep] >= 0).all()
    result = CliRunner().invoke(main, ["verify", "crchisto", "--deep", "--root", str(home)])
    assert result.exit_code == 0, result.output
    under = nucdata.load("crchisto", label_set="pannuke", root=home)
    labels = np.concatenate([under[i]["labels"].numpy() for i in range(len(under))])
    codes = np.asarray(store.column("nuclei", "label"))
    assert (labels[codes == 2] == label_set("pannuke").index("inflammatory")).all()
    assert (labels[codes == 3] == label_set("pannuke").index("connective")).all()
    assert (labels[np.isin(codes, [-1, 1, 4])] == -1).all()
    json.dumps(m)  # the manifest stays plain JSON
