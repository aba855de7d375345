"""Patch-level labels: derived flags, file-name and CSV imports, tissue tables, conflicts, ds.patches."""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage.draw import disk

from nucdata.dataset import NucleusDataset
from nucdata.errors import InvalidArgumentError, LabelTableError, PatchLabelError
from nucdata.labels import label_set, translate_store_labels
from nucdata.store import Store, StoreWriter
from nucdata.views import (
    PatchLabels,
    derive_patch_labels,
    parse_flag_name,
    patch_labels_from_names,
    read_patch_csv,
    read_patch_labels,
    tissue_mapping,
)

PANNUKE = tuple(label_set("pannuke").names)

#: LUAD-HistoSeg's four tissue classes into PanNuke's nucleus classes
LUAD_MAPPING = {
    "label_set": "pannuke",
    "tissue_classes": ["TE", "NEC", "LYM", "TAS"],
    "sources": {"test": "hand-made for the test"},
    "rows": [
        {"native": "TE", "kind": "ambiguous", "classes": ["neoplastic", "epithelial"],
         "reason": "tumour epithelium holds tumour and epithelial nuclei", "sources": ["test"]},
        {"native": "NEC", "kind": "exact", "classes": ["dead"], "reason": "necrosis: dead nuclei",
         "sources": ["test"]},
        {"native": "LYM", "kind": "exact", "classes": ["inflammatory"], "reason": "lymphocytes",
         "sources": ["test"]},
        {"native": "TAS", "kind": "exact", "classes": ["connective"], "reason": "stroma: fibroblasts",
         "sources": ["test"]},
    ],
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """A CoNSeP-coded store: three 200x300 images with discs of every class, some unlabelled."""
    folder = tmp_path_factory.mktemp("patches") / "store"
    rng = np.random.default_rng(5)
    with StoreWriter(folder, "consep", "test") as writer:
        for i in range(3):
            rgb = rng.integers(0, 256, (200, 300, 3)).astype(np.uint8)
            inst = np.zeros((200, 300), np.int32)
            k = 0
            for _ in range(40):
                y, x = rng.integers(5, 195), rng.integers(5, 295)
                rr, cc = disk((y, x), 4, shape=inst.shape)
                if (inst[rr, cc] != 0).any():
                    continue
                k += 1
                inst[rr, cc] = k
            labels = rng.integers(1, 8, k)  # CoNSeP codes 1..7
            labels[rng.random(k) < 0.15] = -1  # some nuclei without a label
            writer.add_image(f"img{i}", "train", rgb, inst, labels, mpp=0.25)
        writer.publish({})
    return Store(folder)


def test_derived_flags_agree_with_the_nucleus_labels_they_came_from(store):
    ds = NucleusDataset(store, None, "pannuke")
    table = derive_patch_labels(ds, window=64)
    labels, _ = translate_store_labels(store, "pannuke")
    centroid = np.asarray(store.column("nuclei", "centroid"))
    names = np.asarray(store.column("images", "name")).astype(str)
    image_of = np.asarray(store.column("nuclei", "image"))
    assert table.classes == PANNUKE and table.source == "derived" and len(table) == 3 * 4 * 5
    for p in range(len(table)):
        x0, y0, x1, y1 = table.window[p]
        own = (names[image_of] == table.image[p]) & (centroid[:, 0] + 0.5 >= x0) & (centroid[:, 0] + 0.5 < x1) \
            & (centroid[:, 1] + 0.5 >= y0) & (centroid[:, 1] + 0.5 < y1)
        present = set(labels[own][labels[own] >= 0].tolist())
        assert set(np.flatnonzero(table.flags[p]).tolist()) == present
        assert table.complete[p] == bool((labels[own] != -1).all())
    # every nucleus lies in exactly one grid window
    assert sum(len(m) for m in table.members(ds)) == store.n_nuclei
    # derived flags never conflict with the labels they came from
    assert table.reconcile(ds).conflicts == 0


def test_patches_yield_the_image_its_nuclei_and_its_flags(store):
    ds = NucleusDataset(store, None, "pannuke")
    patches = ds.patches(64)
    assert len(patches) == len(patches.labels) == 60
    for i in range(len(patches)):
        s = patches[i]
        assert tuple(s["image"].shape) == (3, 64, 64) and s["flags_known"]
        present = {int(v) for v in s["point_labels"] if v >= 0}
        assert set(np.flatnonzero(s["flags"].numpy()).tolist()) == present
        assert ((s["point_centroids"] >= -0.5) & (s["point_centroids"] < 63.5)).all()
        # a masked nucleus centred in the patch is in the tile's own lists too (theirs also hold cut ones)
        assert set(s["point_index"].tolist()) <= set(s["nucleus_index"].tolist())
    # at another µm/px the grid is cut from the resampled image, and flags follow it
    half = ds.patches(32, mpp=0.5)
    assert len(half) == len(half.labels) == 3 * 4 * 5
    s = half[7]
    assert tuple(s["image"].shape) == (3, 32, 32)
    assert set(np.flatnonzero(s["flags"].numpy()).tolist()) == {int(v) for v in s["point_labels"] if v >= 0}


def test_luad_histoseg_and_bcss_names_parse():
    assert parse_flag_name("1031280-2300-27920-[1 0 0 1].png") == ("1031280-2300-27920", (1, 0, 0, 1))
    assert parse_flag_name("train/436219-7159-48057-[0 1 1 0].png") == ("436219-7159-48057", (0, 1, 1, 0))
    assert parse_flag_name("TCGA-A1-A0SK-DX1_xmin45749_ymin25055+0[1101].png") == (
        "TCGA-A1-A0SK-DX1_xmin45749_ymin25055+0", (1, 1, 0, 1))
    assert parse_flag_name("a-[1 1 1 1]", form="luad") == ("a", (1, 1, 1, 1))
    with pytest.raises(PatchLabelError, match="no patch flags"):
        parse_flag_name("1031280-2300-27920.png")
    with pytest.raises(PatchLabelError, match="no patch flags"):
        parse_flag_name("x-[1 2 0 1].png")
    with pytest.raises(PatchLabelError, match="LUAD-HistoSeg"):
        parse_flag_name("x[1101].png", form="luad")
    with pytest.raises(InvalidArgumentError):
        parse_flag_name("x-[1 0].png", form="wsss")


def test_file_names_through_the_tissue_table_give_nucleus_flags(tmp_path):
    names = ["1031280-2300-27920-[1 0 0 1].png", "5-6-7-[0 1 1 0].png", "8-9-10-[0 0 0 0].png"]
    table = patch_labels_from_names(names, LUAD_MAPPING, dataset="luad")
    assert table.label_set == "pannuke" and table.source == "file names"
    assert list(table.image) == ["1031280-2300-27920-[1 0 0 1]", "5-6-7-[0 1 1 0]", "8-9-10-[0 0 0 0]"]
    assert np.isnan(table.window).all()  # the image is the patch
    flagged = [{PANNUKE[c] for c in np.flatnonzero(row)} for row in table.flags]
    assert flagged == [{"neoplastic", "epithelial", "connective"}, {"dead", "inflammatory"}, set()]
    folder = tmp_path / "train"
    folder.mkdir()
    for n in names:
        (folder / n).write_bytes(b"")
    assert list(patch_labels_from_names(folder, LUAD_MAPPING).image) == sorted(table.image)
    with pytest.raises(PatchLabelError, match="3 flags, but the mapping has 4"):
        patch_labels_from_names(["a-[1 0 1].png"], LUAD_MAPPING)
    with pytest.raises(PatchLabelError, match="no patch flags"):
        patch_labels_from_names(["plain.png"], LUAD_MAPPING)


def test_the_tissue_table_is_validated_like_the_packaged_tables(tmp_path):
    tissues, admits, name = tissue_mapping(LUAD_MAPPING)
    assert tissues == ("TE", "NEC", "LYM", "TAS") and name == "pannuke" and admits.shape == (4, len(PANNUKE))
    bad_class = json.loads(json.dumps(LUAD_MAPPING))
    bad_class["rows"][1]["classes"] = ["necrotic"]
    with pytest.raises(LabelTableError, match="not a class of 'pannuke'"):
        tissue_mapping(bad_class)
    no_reason = json.loads(json.dumps(LUAD_MAPPING))
    no_reason["rows"][2]["reason"] = ""
    with pytest.raises(LabelTableError, match="reason"):
        tissue_mapping(no_reason)
    missing = json.loads(json.dumps(LUAD_MAPPING))
    del missing["rows"][3]
    with pytest.raises(LabelTableError):
        tissue_mapping(missing)
    unknown = json.loads(json.dumps(LUAD_MAPPING))
    unknown["rows"][0]["native"] = "FAT"
    with pytest.raises(PatchLabelError, match="tissue class 'FAT'"):
        tissue_mapping(unknown)
    broken = tmp_path / "mapping.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(PatchLabelError, match="mapping.json"):
        tissue_mapping(broken)


def test_a_users_csv_imports_and_bad_files_are_refused_naming_the_line(tmp_path):
    good = tmp_path / "flags.csv"
    good.write_text("image,x0,y0,x1,y1,TE,NEC,LYM,TAS\nimg0,0,0,64,64,1,0,0,0\nimg1,,,,,0,0,1,0\n", encoding="utf-8")
    table = read_patch_csv(good, mapping=LUAD_MAPPING, dataset="consep")
    assert table.source == "csv" and len(table) == 2 and np.isnan(table.window[1]).all()
    assert {PANNUKE[c] for c in np.flatnonzero(table.flags[0])} == {"neoplastic", "epithelial"}
    direct = tmp_path / "direct.csv"
    direct.write_text("image,label_set," + ",".join(PANNUKE) + "\nimg2,pannuke," + ",".join("10010") + "\n",
                      encoding="utf-8")
    assert read_patch_csv(direct).flags.tolist() == [[1, 0, 0, 1, 0]]
    cases = {
        "image,TE,NEC,LYM,TAS\nimg0,1,0,2,0\n": "line 2: flag 'LYM' is '2'",
        "name,TE,NEC,LYM,TAS\nimg0,1,0,0,0\n": "no 'image' column",
        "image,TE,NEC,LYM\nimg0,1,0,0\n": "missing: \\['TAS'\\]",
        "image,x0,y0,TE,NEC,LYM,TAS\nimg0,0,0,1,0,0,0\n": "give all of x0, y0, x1, y1",
        "image,x0,y0,x1,y1,TE,NEC,LYM,TAS\nimg0,9,0,3,4,1,0,0,0\n": "line 2: bad window",
        "image,TE,NEC,LYM,TAS\n": "no patch rows",
        "image,TE,NEC,LYM,TAS\nimg0,1,0,0,0,1\n": "line 2: more cells",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.csv"
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(PatchLabelError, match=message):
            read_patch_csv(bad, mapping=LUAD_MAPPING)
    with pytest.raises(PatchLabelError, match="names no label set"):
        read_patch_csv(good)
    with pytest.raises(PatchLabelError, match="cannot read"):
        read_patch_csv(tmp_path / "absent.csv", label_set="pannuke")


def test_annotations_win_over_flags_and_conflicts_are_counted(store, tmp_path):
    ds = NucleusDataset(store, None, "pannuke")
    derived = derive_patch_labels(ds, window=100)
    wrong = PatchLabels(derived.label_set, derived.classes, derived.image, derived.window,
                        np.zeros_like(derived.flags), dataset="consep", source="csv")
    fixed = wrong.reconcile(ds)
    assert fixed.conflicts == int(derived.flags.sum()) > 0
    assert (fixed.flags == derived.flags).all()
    assert fixed.conflict_rows.tolist() == derived.flags.sum(1).tolist()
    # the sidecar round trip
    path = derived.to_csv(tmp_path / "sidecar.csv")
    back = read_patch_labels(path)
    assert back.label_set == "pannuke" and back.dataset == "consep"
    assert (back.flags == derived.flags).all() and np.allclose(back.window, derived.window)
    assert list(back.image) == list(derived.image)
    # allowed bitmasks: a flag 0 removes the class from every nucleus of the patch
    allowed = back.allowed(ds)
    labels = np.asarray(ds.labels)
    known = labels >= 0
    assert ((allowed[known] >> labels[known]) & 1).all()
    assert (allowed < (1 << len(PANNUKE))).all()


def test_whole_image_rows_match_store_names_with_or_without_the_bracket(store):
    ds = NucleusDataset(store, None, "pannuke")
    table = PatchLabels("pannuke", PANNUKE, np.array(["img0-[1 0 0 1]", "img1", "elsewhere"]),
                        np.full((3, 4), np.nan), np.ones((3, len(PANNUKE)), np.uint8))
    members = table.members(ds)
    assert len(members[0]) == store.nucleus_slice(0).stop - store.nucleus_slice(0).start
    assert len(members[1]) > 0 and len(members[2]) == 0
    assert table.unmatched(ds) == ["elsewhere"]
