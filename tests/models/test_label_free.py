"""Label-free checks (flips under the dihedral group, rescaling, stain normalisation) with the tiny demo model."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from classify_helpers import tiny_model, write_tiles
from test_stain import STAIN_A, beer_lambert

from nucdata.errors import InvalidArgumentError, MissingMppError
from nucdata_models import Classifier
from nucdata_models.merge import (
    LabelFreeImage,
    images_of,
    label_free_checks,
    real_images,
    real_references,
    render_label_free,
)
from nucdata_models.merge.label_free import DIHEDRAL
from nucdata_models.stain import fit_macenko, fit_reinhard

SETS = ["pannuke", "nucls", "consep", "monusac"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory)


@pytest.fixture
def clf(model):
    return Classifier.from_pretrained(model, device="cpu")


@pytest.fixture(scope="module")
def images(model):
    """Demo images of two datasets with their instance maps (µm/px from the store)."""
    from nucdata.store import Store

    out = []
    for dataset in ("consep", "monuseg"):
        store = Store(model / "stores" / dataset)
        mpp = np.asarray(store.column("images", "mpp"), np.float64)
        for i in range(min(3, store.n_images)):
            value = float(mpp[i]) if np.isfinite(mpp[i]) else 0.25
            out.append(LabelFreeImage(f"{dataset}-{i}", np.asarray(store.rgb(i)), np.asarray(store.instance_map(i)),
                                      value, dataset))
    return out


def _widths(clf, images):
    crops, *_ = clf.crops(images[0].rgb, images[0].instances, mpp=images[0].mpp)
    return {s: p.shape[1] for s, p in clf.probabilities(crops[:2]).items()}


def _invariant_model(clf, images, monkeypatch):
    """Probabilities from each crop's channel sums: the same for every flip and rotation of a crop."""
    widths = _widths(clf, images)
    rng = np.random.default_rng(0)
    weights = {s: rng.normal(size=(4, k)) for s, k in widths.items()}

    def probabilities(crops):
        f = np.asarray(crops).astype(np.int64).sum((2, 3)).astype(np.float64)  # exact integer sums
        f = (f - f.mean(0)) / (f.std(0) + 1e-9)
        out = {}
        for s, w in weights.items():
            z = f @ w
            z = np.exp(z - z.max(1, keepdims=True))
            out[s] = (z / z.sum(1, keepdims=True)).astype(np.float32)
        return out

    monkeypatch.setattr(clf, "probabilities", probabilities)


def _random_model(clf, images, monkeypatch):
    """Probabilities drawn from each crop's bytes: a turned crop gets an unrelated label."""
    widths = _widths(clf, images)

    def probabilities(crops):
        crops = np.ascontiguousarray(crops)
        seeds = [zlib.crc32(c.tobytes()) for c in crops]
        out = {}
        for j, (s, k) in enumerate(widths.items()):
            p = np.stack([np.random.default_rng([seed, j]).dirichlet(np.full(k, 0.3)) for seed in seeds]) \
                if len(seeds) else np.zeros((0, k))
            out[s] = p.astype(np.float32)
        return out

    monkeypatch.setattr(clf, "probabilities", probabilities)


def _rows(result, check, perturbation=None, dataset=None):
    return [r for r in result["checks"][check]["rows"]
            if (perturbation is None or r["perturbation"] == perturbation) and (dataset is None or r["dataset"] == dataset)]


def test_an_invariant_model_flips_nothing_under_the_dihedral_group(clf, images, monkeypatch):
    _invariant_model(clf, images, monkeypatch)
    result = label_free_checks(clf, images, checks=("dihedral",))
    rows = result["checks"]["dihedral"]["rows"]
    assert {r["perturbation"] for r in rows} == {*DIHEDRAL, "any"}
    assert {r["dataset"] for r in rows} == {"consep", "monuseg", "all"}
    assert {r["label_set"] for r in rows} == set(SETS)
    n = sum(result["datasets"][d]["nuclei"] for d in ("consep", "monuseg"))
    for r in rows:
        assert r["flips"] == 0 and r["flip_rate"] == 0.0 and r["flip_95"] == [0.0, 0.0], r
        if r["dataset"] == "all":
            assert r["nuclei"] == n
    # the model is not constant: its labels vary, so the baseline is far from zero
    assert max(r["shuffled"] for r in rows) > 0.2


def test_a_model_that_ignores_the_nucleus_flips_as_often_as_its_shuffled_baseline(clf, images, monkeypatch):
    _random_model(clf, images, monkeypatch)
    result = label_free_checks(clf, images, checks=("dihedral",))
    rows = [r for r in _rows(result, "dihedral", dataset="all") if r["perturbation"] != "any"]
    assert len(rows) == 7 * len(SETS) and rows[0]["nuclei"] > 40
    pairs = sum(r["nuclei"] for r in rows)
    flipped = sum(r["flips"] for r in rows) / pairs
    chance = sum(r["shuffled"] * r["nuclei"] for r in rows) / pairs
    assert chance > 0.3
    assert flipped == pytest.approx(chance, abs=0.05)  # labels unrelated to the crop: flips at chance
    for r in _rows(result, "dihedral", perturbation="any", dataset="all"):
        assert r["flip_rate"] == pytest.approx(r["shuffled"], abs=0.12), r


def test_the_shuffled_baseline_is_one_minus_the_sum_of_squared_label_frequencies(clf, images):
    result = label_free_checks(clf, images, checks=("dihedral", "rescale"))
    for dataset in ("consep", "monuseg"):
        chosen = [im for im in images if im.dataset == dataset]
        labels = {s: np.concatenate([clf.predict(im.rgb, im.instances, mpp=im.mpp, check=False)[s].label
                                     for im in chosen]) for s in SETS}
        for s in SETS:
            _, counts = np.unique(labels[s], return_counts=True)
            p = counts / counts.sum()
            expected = 1.0 - float(np.sum(p * p))
            published = result["datasets"][dataset]["labels"][s]
            assert sorted(published.values()) == sorted(counts.tolist())
            for r in _rows(result, "dihedral", dataset=dataset):
                if r["label_set"] == s and r["perturbation"] != "any":
                    # 1 - sum p q, and the perturbed frequencies q stay close to p when few labels flip
                    assert r["shuffled"] == pytest.approx(expected, abs=max(0.02, 2 * r["flip_rate"])), r
                    assert r["nuclei"] == len(labels[s])


def test_the_pooled_baseline_shuffles_within_each_dataset(clf, images):
    result = label_free_checks(clf, images, checks=("dihedral",))
    by = {(r["dataset"], r["label_set"], r["perturbation"]): r for r in result["checks"]["dihedral"]["rows"]}
    for s in SETS:
        for pert in (*DIHEDRAL, "any"):
            parts = [by[(d, s, pert)] for d in ("consep", "monuseg")]
            pooled = by[("all", s, pert)]
            assert pooled["nuclei"] == sum(r["nuclei"] for r in parts)
            assert pooled["flips"] == sum(r["flips"] for r in parts)
            expected = sum(r["shuffled"] * r["nuclei"] for r in parts) / pooled["nuclei"]
            assert pooled["shuffled"] == pytest.approx(expected, abs=1e-12)


def test_normalising_an_image_to_its_own_stain_flips_nothing(clf, images):
    # An H&E image rendered from known stains (Beer-Lambert), nuclei from a demo instance map.
    inst = images[0].instances
    size = inst.shape[0]
    rgb = beer_lambert(STAIN_A, 1.2, 1.0, size=size, seed=3)
    od_h = np.where(inst[..., None] > 0, 1.1 * STAIN_A[0], 0.0)  # the real nuclei: haematoxylin
    rgb = np.where(inst[..., None] > 0, np.clip(np.round(240 * np.exp(-od_h) - 1), 0, 255), rgb).astype(np.uint8)
    image = LabelFreeImage("rendered", rgb, inst, images[0].mpp, "rendered")
    own = {"itself": {"images": 1, "reinhard": fit_reinhard(rgb), "macenko": fit_macenko(rgb)}}
    result = label_free_checks(clf, [image], references=own, checks=("stain",))
    rows = result["checks"]["stain"]["rows"]
    assert {r["perturbation"] for r in rows} == {"reinhard:itself", "macenko:itself", "any"}
    assert all(r["flips"] == 0 and r["nuclei"] == int(np.unique(inst[inst > 0]).size) for r in rows), rows
    assert all(r["flip_95"] == [None, None] for r in rows)  # one image: no interval over images
    assert result["references"]["itself"]["macenko"]["method"] == "macenko"


def test_stain_references_default_to_each_datasets_own_images(clf, images):
    result = label_free_checks(clf, images, checks=("stain",), methods=("reinhard",))
    assert set(result["references"]) == {"consep", "monuseg"}
    assert result["references"]["consep"]["images"] == 3
    assert result["checks"]["stain"]["perturbations"] == ["reinhard:consep", "reinhard:monuseg"]
    for r in _rows(result, "stain"):
        assert 0.0 <= r["flip_rate"] <= 1.0 and 0.0 <= r["shuffled"] <= 1.0
        assert r["flip_95"][0] <= r["flip_rate"] <= r["flip_95"][1]


def test_rescaling_finds_the_same_nuclei(clf, images):
    result = label_free_checks(clf, images, checks=("rescale",), scales=(0.9, 1.1))
    assert result["checks"]["rescale"]["perturbations"] == ["0.9x", "1.1x"]
    total = {d: result["datasets"][d]["nuclei"] for d in ("consep", "monuseg")}
    for r in _rows(result, "rescale"):
        if r["dataset"] == "all" or r["perturbation"] == "any":
            continue
        assert r["nuclei"] + r["lost"] == total[r["dataset"]], r
        if r["perturbation"] == "1.1x":
            assert r["lost"] == 0  # growing an instance map keeps every nucleus


def test_points_only_images_are_checked_too(clf, images):
    im = images[0]
    from nucdata._util.instances import nucleus_properties, relabel_sequential

    seq, _ = relabel_sequential(im.instances.astype(np.int64))
    centroids = nucleus_properties(seq, int(seq.max()))["centroid"]
    points = LabelFreeImage("points", im.rgb, None, im.mpp, "points", centroids=centroids)
    result = label_free_checks(clf, [points], checks=("dihedral", "rescale"))
    assert result["datasets"]["points"]["nuclei"] == len(centroids)
    assert all(r["lost"] == 0 and r["nuclei"] == len(centroids) for r in _rows(result, "rescale"))


def test_the_result_is_strict_json_and_renders_a_table_per_check(clf, images, tmp_path):
    result = label_free_checks(clf, images[:2], methods=("reinhard",))
    text = json.dumps(result, allow_nan=False)
    assert json.loads(text) == result
    assert result["schema"] == "nucdata-label-free/1" and result["classifier"]["label_sets"] == SETS
    md = render_label_free(result)
    for heading in ("### dihedral", "### rescale", "### stain", "| dataset | label set | nuclei | rot90"):
        assert heading in md, heading
    assert "0.9x" in md and "reinhard:consep" in md
    detail = render_label_free(json.loads(text), detail=True)
    assert "| dataset | label set | perturbation | nuclei | flip % | 95 % | shuffled % | ratio | lost |" in detail
    assert detail.count("| consep | pannuke | rot90 |") == 1


def test_inputs_from_a_folder_pair_and_from_a_loaded_dataset(clf, model, tmp_path):
    stems = write_tiles(model, "consep", tmp_path, count=2)
    got = images_of((tmp_path / "images", tmp_path / "masks"), mpp=0.25)
    assert sorted(im.name for im in got) == sorted(stems)
    assert all(im.dataset == "images" and im.mpp == 0.25 and im.mpp_source == "given" for im in got)
    with pytest.raises(MissingMppError):
        images_of((tmp_path / "images", tmp_path / "masks"))
    from classify_helpers import demo_home

    import nucdata

    ds = nucdata.load("consep", root=demo_home(model))
    loaded = images_of(ds, mpp=0.25)
    assert len(loaded) == len(ds) and loaded[0].instances.shape == loaded[0].rgb.shape[:2]
    result = label_free_checks(clf, {"demo-consep": loaded[:2]}, checks=("dihedral",))
    assert set(result["datasets"]) == {"demo-consep"}


def test_bad_arguments_are_refused(clf, images):
    with pytest.raises(InvalidArgumentError, match="unknown checks"):
        label_free_checks(clf, images, checks=("blur",))
    with pytest.raises(InvalidArgumentError, match="stain methods"):
        label_free_checks(clf, images, methods=("vahadane",))
    with pytest.raises(InvalidArgumentError, match="no images"):
        label_free_checks(clf, [])
    with pytest.raises(MissingMppError):
        LabelFreeImage("x", images[0].rgb, images[0].instances, float("nan"))
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        LabelFreeImage("x", images[0].rgb, None, 0.25)
    with pytest.raises(InvalidArgumentError, match="no reader"):
        real_images(".", "pannuke")


def test_real_monuseg_and_tnbc_pixels(clf, realdata):
    monuseg = real_images(realdata / "monuseg", "monuseg", limit=1)
    tnbc = real_images(realdata / "tnbc", "tnbc", limit=2)
    assert monuseg[0].name == "TCGA-21-5784-01Z-00-DX1" and monuseg[0].mpp_source in ("file", "card")
    assert int(monuseg[0].instances.max()) == 398  # every region of its XML kept (realdata/README.md)
    assert [im.name for im in tnbc] == ["01_1", "01_2"] and tnbc[0].mpp_source == "nominal"
    refs = real_references(realdata, datasets=["tnbc"])
    assert set(refs) == {"tnbc"} and len(refs["tnbc"]) == 10
    result = label_free_checks(clf, monuseg + tnbc, references=refs)
    assert result["datasets"]["monuseg"]["nuclei"] == 398
    assert result["datasets"]["tnbc"]["nuclei"] == 69 + 155  # TNBC 8-connected counts (datasets.md)
    for check in ("dihedral", "rescale", "stain"):
        for r in _rows(result, check):
            assert r["nuclei"] > 0 and 0.0 <= r["flip_rate"] <= 1.0 and 0.0 <= r["shuffled"] <= 1.0, r
    assert "### stain" in render_label_free(result)
    if (realdata / "crchisto").is_dir():
        crc = real_images(realdata / "crchisto", "crchisto", limit=1)
        assert crc[0].instances is None and len(crc[0].centroids) > 0
