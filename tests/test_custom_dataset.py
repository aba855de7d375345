"""Your labelled data as a dataset: ``nucdata prepare --custom`` from instance maps, QuPath GeoJSON and
HoVer-Net JSON, with a labels CSV, a vocabulary and a mapping checked like ours; the round trip of our
own exports; load, exports, tiles and build-merged on it."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import demo_home
from PIL import Image

import nucdata
import nucdata.exports
from nucdata.catalog import is_custom
from nucdata.cli import main

#: CoNSeP's native codes (1 other, 2 inflammatory, 3 healthy epithelial, 4 malignant epithelial,
#: 5 fibroblast, 6 muscle, 7 endothelial) as a lab would name them
LAB_OF_CONSEP = {1: "stroma", 2: "immune", 3: "epithelium", 4: "tumour", 5: "stroma", 6: "stroma", 7: "stroma"}
VOCABULARY = {
    "name": "mylab", "version": "1", "description": "A lab's four classes.", "exhaustive": True, "source": "user",
    "classes": [
        {"id": 0, "name": "tumour", "colour": "#ff0000", "description": "Tumour cells."},
        {"id": 1, "name": "epithelium", "colour": "#0000ff", "description": "Benign epithelium."},
        {"id": 2, "name": "immune", "colour": "#00ff00", "description": "Immune cells."},
        {"id": 3, "name": "stroma", "colour": "#00ffff", "description": "Everything else."},
    ],
}


def _row(native: int, kind: str, classes: list[str], reason: str = "The lab's definition.") -> dict:
    return {"native": native, "kind": kind, "classes": classes, "reason": reason, "sources": ["lab"]}


MAPPING = {
    "dataset": "mylab", "version": "1", "sources": {"lab": "Our lab's annotation guide, 2026."},
    "targets": {
        "pannuke": [_row(0, "exact", ["neoplastic"]), _row(1, "exact", ["epithelial"]),
                    _row(2, "exact", ["inflammatory"]), _row(3, "ambiguous", ["connective", "dead"])],
        "consep": [_row(0, "exact", ["malignant_epithelial"]), _row(1, "exact", ["healthy_epithelial"]),
                   _row(2, "exact", ["inflammatory"]),
                   _row(3, "ambiguous", ["other", "fibroblast", "muscle", "endothelial"])],
    },
}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with demo_home(tmp_path_factory.mktemp("home"), ("consep",)) as root:
        ds = nucdata.load("consep")
        work = root / "user"
        (work / "images").mkdir(parents=True)
        (work / "masks").mkdir()
        rows = ["image,id,label"]
        for i in range(len(ds)):
            name = str(ds.store.column("images", "name")[i])
            Image.fromarray(np.asarray(ds.store.rgb(i))).save(work / "images" / f"{name}.png")
            inst = np.asarray(ds.store.instance_map(i)).astype(np.uint16) * 3  # ids need not be 1..K
            Image.fromarray(inst).save(work / "masks" / f"{name}_cp_masks.png")  # as Cellpose saves them
            span = ds.store.nucleus_slice(i)
            rows += [f"{name},{3 * (k + 1)},{LAB_OF_CONSEP[int(code)]}"
                     for k, code in enumerate(ds.store.column("nuclei", "label")[span])]
        (work / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        (work / "vocabulary.json").write_text(json.dumps(VOCABULARY), encoding="utf-8")
        (work / "mapping.json").write_text(json.dumps(MAPPING), encoding="utf-8")
        yield root


def _same_nuclei(custom: nucdata.NucleusDataset, original: nucdata.NucleusDataset, ids_scale: int = 1) -> None:
    """Every image: the same nuclei in the same order, ids kept, centroids within 0.5 px."""
    names = {str(n): i for i, n in enumerate(original.store.column("images", "name"))}
    assert sorted(names) == sorted(str(n) for n in custom.store.column("images", "name"))
    for i in range(len(custom)):
        j = names[str(custom.store.column("images", "name")[i])]
        a, b = custom.store.nucleus_slice(i), original.store.nucleus_slice(j)
        assert a.stop - a.start == b.stop - b.start
        ids = np.asarray(custom.store.column("nuclei", "source_id")[a])
        np.testing.assert_array_equal(ids, ids_scale * np.arange(1, b.stop - b.start + 1))
        diff = np.abs(np.asarray(custom.store.column("nuclei", "centroid")[a])
                      - np.asarray(original.store.column("nuclei", "centroid")[b]))
        assert diff.max() <= 0.5


def _prepare_mylab(home) -> None:
    """``nucdata prepare --custom mylab`` from the fixture's files (once per module's home)."""
    work = home / "user"
    result = CliRunner().invoke(main, [
        "prepare", "--custom", "mylab", "--images", str(work / "images"), "--instances", str(work / "masks"),
        "--labels", str(work / "labels.csv"), "--vocabulary", str(work / "vocabulary.json"),
        "--mapping", str(work / "mapping.json"), "--mpp", "0.25"])
    assert result.exit_code == 0, result.output


@pytest.fixture
def mylab(home):
    """The custom dataset 'mylab' prepared, whichever tests run (each test stands alone)."""
    if not (home / "registry" / "mylab.json").is_file():
        _prepare_mylab(home)
    return home


def test_instances_with_labels_vocabulary_and_mapping(home):
    _prepare_mylab(home)
    card = nucdata.get_card("mylab")
    assert is_custom(card) and card.licence == "user" and card.citation == "" and card.converter == "custom"
    assert "mylab" not in nucdata.list_datasets()  # the packaged lists stay the packaged datasets
    assert (home / "registry" / "mylab.json").is_file() and (home / "registry" / "mylab.mapping.json").is_file()
    assert (home / "registry" / "mylab.vocabulary.json").is_file()
    original = nucdata.load("consep")
    native = nucdata.load("mylab")
    _same_nuclei(native, original, ids_scale=3)
    assert {c: n for c, (n, _) in native.classes.items()} == {0: "tumour", 1: "epithelium", 2: "immune", 3: "stroma"}
    consep_codes = np.asarray(original.store.column("nuclei", "label"))
    expected = [VOCABULARY["classes"][[c["name"] for c in VOCABULARY["classes"]].index(LAB_OF_CONSEP[int(k)])]["id"]
                for k in consep_codes]
    order = np.argsort([str(n) for n in original.store.column("images", "name")], kind="stable")
    expected_by_image = np.concatenate([np.asarray(expected)[original.store.nucleus_slice(int(i))] for i in order])
    np.testing.assert_array_equal(native.labels, expected_by_image)
    own = nucdata.load("mylab", label_set="mylab")
    np.testing.assert_array_equal(own.labels, native.labels)
    pannuke = nucdata.load("mylab", label_set="pannuke")
    assert set(np.unique(pannuke.labels[native.labels == 0])) == {0}  # tumour -> neoplastic
    assert (pannuke.labels[native.labels == 3] == -1).all() and (pannuke.candidates[native.labels == 3] != 0).all()
    assert np.asarray(native.store.column("images", "mpp")).tolist() == [0.25] * len(native)


def test_a_custom_dataset_rebuilds_verifies_and_shows_its_card(home, mylab):
    before = nucdata.load("mylab").labels.copy()
    result = CliRunner().invoke(main, ["prepare", "mylab", "--force"])  # from the paths its card records
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(nucdata.load("mylab").labels, before)
    result = CliRunner().invoke(main, ["verify", "mylab"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["info", "mylab"])
    assert result.exit_code == 0 and "user" in result.output and "tumour" in result.output, result.output


def test_nucdata_list_shows_a_custom_dataset_after_the_packaged_ones(home, mylab):
    result = CliRunner().invoke(main, ["list", "--root", str(home)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    mine = [line for line in lines if line.split()[0] == "mylab"]
    assert len(mine) == 1 and mine[0].split()[1] == "prepared" and mine[0].endswith("(yours)"), result.output
    assert lines.index(mine[0]) == len(lines) - 1  # after every packaged dataset
    assert sum(line.endswith("(yours)") for line in lines) == 1


def test_load_exports_and_tiles_work_on_a_custom_dataset(home, mylab, tmp_path):
    ds = nucdata.load("mylab", label_set="pannuke")
    written = nucdata.exports.export(ds, "coco", tmp_path / "coco")
    assert json.loads(written[0].read_text())["annotations"]
    written = nucdata.exports.export(ds, "geojson", tmp_path / "geojson")
    assert len(written) == len(ds)
    tiles = ds.tiles(size=32)
    sample = tiles[0]
    assert tuple(sample["image"].shape[-2:]) == (32, 32)
    crops = nucdata.load("mylab").crops(size=16)
    assert len(crops) == ds.store.n_nuclei


def test_our_geojson_export_reads_back_as_the_same_nuclei(home, tmp_path):
    original = nucdata.load("consep", label_set="pannuke")
    nucdata.exports.export(original, "geojson", tmp_path / "gj")
    nucdata.prepare_custom("fromgeojson", home / "user" / "images", geojson=tmp_path / "gj")
    custom = nucdata.load("fromgeojson")
    _same_nuclei(custom, original)
    names = {str(n): i for i, n in enumerate(original.store.column("images", "name"))}
    for i in range(len(custom)):
        j = names[str(custom.store.column("images", "name")[i])]
        got = [custom.classes[int(c)][0] if c >= 0 else None for c in custom.labels[custom.store.nucleus_slice(i)]]
        want = [original.classes[int(c)][0] if c >= 0 else None
                for c in original.labels[original.store.nucleus_slice(j)]]
        assert got == want
    # without a mapping the dataset's labels are unknown under the merged sets (like Kumar's)
    under = nucdata.load("fromgeojson", label_set="pannuke")
    assert (under.labels == -1).all() and not under.candidates.any()


def test_our_hovernet_export_reads_back_as_the_same_nuclei(home, tmp_path):
    original = nucdata.load("consep")
    nucdata.exports.export(original, "hovernet-json", tmp_path / "hj")
    result = CliRunner().invoke(main, ["prepare", "--custom", "fromhovernet", "--images",
                                       str(home / "user" / "images"), "--hovernet-json", str(tmp_path / "hj")])
    assert result.exit_code == 0, result.output
    custom = nucdata.load("fromhovernet")
    _same_nuclei(custom, original)
    names = {str(n): i for i, n in enumerate(original.store.column("images", "name"))}
    for i in range(len(custom)):
        j = names[str(custom.store.column("images", "name")[i])]
        np.testing.assert_array_equal(custom.labels[custom.store.nucleus_slice(i)],
                                      original.labels[original.store.nucleus_slice(j)])  # CoNSeP's codes


def test_a_contradicting_mapping_is_refused_by_the_checker(home, tmp_path):
    bad = json.loads(json.dumps(MAPPING))
    bad["dataset"] = "badlab"
    bad["targets"]["pannuke"][2] = _row(2, "exact", ["neoplastic"])  # immune -> neoplastic, but consep says inflammatory
    (tmp_path / "bad.json").write_text(json.dumps(bad), encoding="utf-8")
    work = home / "user"
    args = ["prepare", "--custom", "badlab", "--images", str(work / "images"), "--instances", str(work / "masks"),
            "--labels", str(work / "labels.csv"), "--vocabulary", str(work / "vocabulary.json"),
            "--mapping", str(tmp_path / "bad.json")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "contradicts" in result.output and "badlab>consep>pannuke:immune" in result.output
    assert "accepted" in result.output  # the fix
    assert not (home / "registry" / "badlab.json").exists()  # nothing written
    bad["accepted"] = [{"key": "badlab>consep>pannuke:immune", "reason": "Our immune cells are tumour here."},
                       {"key": "badlab>pannuke>consep:immune", "reason": "The same, seen from CoNSeP."}]
    (tmp_path / "bad.json").write_text(json.dumps(bad), encoding="utf-8")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output


def test_a_malformed_row_is_refused_naming_the_row(home, tmp_path):
    bad = json.loads(json.dumps(MAPPING))
    del bad["dataset"]
    bad["targets"]["pannuke"][1] = _row(1, "exact", ["epithelium"])  # not a PanNuke class
    (tmp_path / "bad.json").write_text(json.dumps(bad), encoding="utf-8")
    work = home / "user"
    with pytest.raises(nucdata.UserTableError, match=r"bad.json -> pannuke: row 1 \(native 1\).*'epithelium'"):
        nucdata.prepare_custom("rowlab", work / "images", instances=work / "masks", labels=work / "labels.csv",
                               vocabulary=work / "vocabulary.json", mapping=tmp_path / "bad.json")
    vocab = dict(VOCABULARY, classes=[dict(c, id=c["id"] + 1) for c in VOCABULARY["classes"]])
    (tmp_path / "v.json").write_text(json.dumps(vocab), encoding="utf-8")
    with pytest.raises(nucdata.UserTableError, match=r"classes\[0\].*0\.\.3 in order"):
        nucdata.prepare_custom("rowlab", work / "images", instances=work / "masks", vocabulary=tmp_path / "v.json")


def test_names_and_inputs_are_checked(home, tmp_path):
    work = home / "user"
    with pytest.raises(nucdata.NucdataError, match="packaged"):
        nucdata.prepare_custom("consep", work / "images", instances=work / "masks")
    with pytest.raises(nucdata.InvalidArgumentError, match="exactly one"):
        nucdata.prepare_custom("x", work / "images", instances=work / "masks", geojson=work / "masks")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(nucdata.MissingFilesError, match="matched to images by stem"):
        nucdata.prepare_custom("nothing", work / "images", instances=empty)
    result = CliRunner().invoke(main, ["prepare", "--custom", "x", "--images", str(work / "images")])
    assert result.exit_code == 2 and "exactly one of --instances" in result.output
    result = CliRunner().invoke(main, ["prepare", "consep", "--labels", str(work / "labels.csv")])
    assert result.exit_code == 2 and "go with --custom" in result.output


def test_build_merged_takes_a_custom_dataset(home, mylab, tmp_path):
    from nucdata_models.merge import BuildOptions, build_merged

    out = tmp_path / "merged"
    build_merged(BuildOptions(out=out, datasets=["consep", "mylab"], root=home, crop_size=24, overlays=0,
                              config={"epochs": {"A": 1, "B": 1, "C": 1}, "batch_size": 64, "device": "cpu",
                                      "encoder": "small"}), say=lambda m: None)
    with open(out / "pannuke" / "mylab.pkl", "rb") as fh:
        published = pickle.load(fh)
    assert sum(len(v) for v in published.values()) == nucdata.load("mylab").store.n_nuclei
    merged = nucdata.load("mylab", label_set="pannuke", merged=out)
    assert len(merged) == len(nucdata.load("mylab"))
