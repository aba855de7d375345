"""The shippable classifier and Classifier.predict on the demo world (CPU, small encoder)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from classify_helpers import demo_home, tiny_model, tiny_options

from nucdata._util.codes import PROVENANCE
from nucdata.errors import CheckpointError, DomainShiftWarning, MissingMppError
from nucdata_models import Classifier
from nucdata_models.merge.card import SIDECAR_KEYS

SETS = ["pannuke", "nucls", "consep", "monusac"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory)


@pytest.fixture(scope="module")
def clf(model):
    return Classifier.from_pretrained(model, device="cpu")


def _image(model, dataset="consep", index=0):
    from nucdata.store import Store

    store = Store(model / "stores" / dataset)
    return store, np.asarray(store.rgb(index)), np.asarray(store.instance_map(index))


def test_build_merged_writes_a_self_describing_checkpoint(model):
    from safetensors import safe_open

    from nucdata.labels import table_version

    sidecar = model / "classifier.json"
    text = sidecar.read_text()
    meta = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert set(SIDECAR_KEYS) <= set(meta)
    assert meta["format"] == "nucdata-classifier" and meta["weights"] == "classifier.safetensors"
    assert [s["name"] for s in meta["label_sets"]] == SETS and meta["table_version"] == table_version()
    assert all(len(s["colors"]) == len(s["class_names"]) for s in meta["label_sets"])
    assert meta["crop_size"] == 16 and meta["in_channels"] == 4 and meta["encoder"] == "small"
    assert meta["mpp_range"][0] <= meta["mpp"] <= meta["mpp_range"][1]
    assert meta["calibration"]["method"] == "temperature"
    stats = meta["input_statistics"]["statistics"]
    assert stats["od_red"] and len(stats["od_red"]) == len(meta["input_statistics"]["quantiles"])
    with safe_open(str(model / "classifier.safetensors"), "pt") as f:  # the description travels inside too
        header = f.metadata()
        assert header["format"] == "nucdata-classifier" and json.loads(header["meta_json"]) == meta
        assert all(k.startswith(("base.", "heads.")) for k in f.keys())  # noqa: SIM118
    card = meta["model_card"]
    assert {r["dataset"] for r in card["training_data"]} == set(tiny_options(model).datasets)
    assert any("non-commercial" in t and "CC BY-NC-SA" in t for t in card["terms"])  # PanNuke, MoNuSeg
    held = meta["held_out"]["pannuke"]["annotated"]
    assert held["count"] > 0 and len(held["accuracy_95"]) == 2
    assert held["accuracy_95"][0] <= held["accuracy"] <= held["accuracy_95"][1]
    report = json.loads((model / "report.json").read_text())
    assert report["held_out"] == meta["held_out"]


def test_model_card_renders_licences_metrics_use_and_limits(clf):
    text = clf.model_card
    for needle in ("## Training data", "CC-BY-NC-SA-4.0", "inherits its terms", "## Held-out metrics",
                   "## Intended use", "does not segment", "## Limitations", "µm/px"):
        assert needle in text, needle


def test_every_form_of_the_checkpoint_loads_the_same_model(model, clf, tmp_path):
    import shutil

    _, rgb, inst = _image(model)
    want = clf.predict(rgb, instances=inst, mpp=0.25)
    for path in (model / "classifier.safetensors", model / "classifier.json", model / "model.pt"):
        other = Classifier.from_pretrained(path, device="cpu")
        got = other.predict(rgb, instances=inst, mpp=0.25, check=False)
        for s in SETS:
            np.testing.assert_array_equal(got[s].predicted, want[s].predicted)
            np.testing.assert_allclose(got[s].probs, want[s].probs, atol=1e-6)
    alone = tmp_path / "alone.safetensors"  # without its sidecar: the header's copy
    shutil.copy(model / "classifier.safetensors", alone)
    assert Classifier.from_pretrained(alone).meta["label_sets"] == clf.meta["label_sets"]


def test_code_in_a_checkpoint_is_never_run(model, tmp_path):
    import os
    import pickle
    import shutil

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"state": Boom(), "meta_json": "{}"}, protocol=2))
    with pytest.raises(CheckpointError, match="refused|not a readable"):
        Classifier.from_pretrained(evil)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(CheckpointError, match="not a classifier file"):
        Classifier.from_pretrained(_touch(tmp_path / "weights.pkl"))
    tampered = tmp_path / "t"
    tampered.mkdir()
    shutil.copy(model / "classifier.safetensors", tampered)
    meta = json.loads((model / "classifier.json").read_text())
    meta["label_sets"][0]["class_names"] = meta["label_sets"][0]["class_names"][:-1]
    (tampered / "classifier.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not match their description"):
        Classifier.from_pretrained(tampered)
    (tampered / "classifier.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        Classifier.from_pretrained(tampered)


def _touch(path):
    path.write_bytes(b"x")
    return path


def test_held_out_images_get_what_build_merged_published(model, clf):
    """classify over the held-out images, with their own instance maps and labels, publishes the
    merged labels and probabilities build-merged wrote for them."""
    import nucdata
    from nucdata.store import Store, read_merged_labels
    from nucdata_models.merge import TEST, grouped_split

    options = tiny_options(model)
    members = [nucdata.load(n, root=demo_home(model)) for n in options.datasets]
    split = grouped_split(members, options.validation, options.test, options.seed).split
    offsets = np.cumsum([0] + [m.store.n_nuclei for m in members])
    compared = 0
    for d, name in enumerate(options.datasets):
        store = Store(model / "stores" / name)
        merged = {s: read_merged_labels(model, name, s)[1].columns for s in SETS}
        held = split[offsets[d] : offsets[d + 1]] == TEST
        codes = np.asarray(store.column("nuclei", "label"))
        mpp = np.asarray(store.column("images", "mpp"))
        tissue = np.asarray(store.column("images", "tissue")) if "tissue" in store.image_columns() else None
        for i in range(store.n_images):
            rows = store.nucleus_slice(i)
            if rows.stop == rows.start or not held[rows].all():
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("error", DomainShiftWarning)  # held-out images are no domain shift
                got = clf.predict(np.asarray(store.rgb(i)), instances=np.asarray(store.instance_map(i)),
                                  mpp=float(mpp[i]) if np.isfinite(mpp[i]) else 0.25, labels=codes[rows],
                                  vocabulary=name, tissue=None if tissue is None else str(tissue[i]), dataset=name)
            for s in SETS:
                c = merged[s]
                for field in ("label", "source", "predicted"):
                    np.testing.assert_array_equal(getattr(got[s], field), c[field][rows], err_msg=f"{name} {s}")
                for field in ("probability", "predicted_probability"):
                    np.testing.assert_allclose(getattr(got[s], field), c[field][rows], atol=1e-5, equal_nan=True)
            compared += rows.stop - rows.start
    assert compared > 50


def test_a_labs_images_use_the_pooled_calibration_and_carry_every_field(model, clf):
    _, rgb, inst = _image(model)
    r = clf.predict(rgb, instances=inst, mpp=0.25, embed=True)
    assert r.domain == "(own images)" and len(r) == len(np.unique(inst[inst > 0]))
    np.testing.assert_array_equal(r.ids, np.unique(inst[inst > 0]))
    for s in SETS:
        x = r[s]
        assert (x.source == PROVENANCE.index("predicted")).all()  # nothing is known about a lab's nuclei
        np.testing.assert_array_equal(x.label, x.predicted)
        assert (x.candidates == 0).all() and x.outside.dtype == bool
        np.testing.assert_allclose(x.probs.sum(1), 1, atol=1e-5)
        assert len(x.names()) == len(r)
    assert r.embedding.shape[0] == len(r) and r.embedding.dtype == np.float32
    np.testing.assert_allclose(clf.embed(rgb, instances=inst, mpp=0.25), r.embedding, atol=1e-6)
    cols = r.columns()
    assert {"id", "x_um", "area_um2", "pannuke_label", "pannuke_probability", "monusac_outside"} <= set(cols)


def test_without_a_pixel_size_it_refuses_to_guess(model, clf, tmp_path):
    from PIL import Image

    _, rgb, inst = _image(model)
    with pytest.raises(MissingMppError, match="--mpp.*metadata"):
        clf.predict(rgb, instances=inst)
    Image.fromarray(rgb).save(tmp_path / "a.png")  # a PNG without pHYs states none either
    with pytest.raises(MissingMppError):
        clf.predict(tmp_path / "a.png", instances=inst)
    Image.fromarray(rgb).save(tmp_path / "b.png", dpi=(25400 / 0.25, 25400 / 0.25))  # 0.25 µm/px in pHYs
    assert math.isclose(clf.predict(tmp_path / "b.png", instances=inst).mpp, 0.25, rel_tol=1e-3)


def test_far_inputs_warn_naming_the_gap_and_are_resampled(model, clf):
    _, rgb, inst = _image(model)
    rgb = np.concatenate([np.concatenate([rgb, rgb], 1)] * 2, 0)
    top = int(inst.max())
    copy = [np.where(inst > 0, inst + k * top, 0) for k in range(4)]  # enough nuclei to compare
    inst = np.block([[copy[0], copy[1]], [copy[2], copy[3]]])
    blue = rgb.copy()
    blue[..., 0] //= 4
    with pytest.warns(DomainShiftWarning, match="red"):
        r = clf.predict(blue, instances=inst, mpp=0.25)
    assert any("red" in g for g in r.warnings)
    with pytest.warns(DomainShiftWarning, match="µm/px 1 is outside"):
        r = clf.predict(rgb, instances=inst, mpp=1.0)
    assert r.scale == pytest.approx(clf.mpp / 1.0) and len(r) == len(np.unique(inst[inst > 0]))
    assert clf.scale_for(0.25) == 1.0 and clf.scale_for(0.5) == 1.0  # inside the training range


def test_points_and_outlines_classify_like_the_instance_map(model, clf):
    from nucdata._util.geometry import nucleus_outline

    store, rgb, inst = _image(model)
    a = clf.predict(rgb, instances=inst, mpp=0.25, check=False)
    boxes = np.asarray(store.column("nuclei", "bbox"))[store.nucleus_slice(0)]
    outlines = [nucleus_outline(inst, k + 1, boxes[k]) for k in range(len(boxes))]
    b = clf.predict(rgb, polygons=outlines, ids=a.ids, mpp=0.25, check=False)  # traced outlines: the same masks
    np.testing.assert_allclose(b.centroid, a.centroid, atol=1e-4)
    for s in SETS:
        np.testing.assert_array_equal(b[s].predicted, a[s].predicted)
        np.testing.assert_allclose(b[s].probs, a[s].probs, atol=1e-6)
    c = clf.predict(rgb, centroids=a.centroid, mpp=0.25, check=False)
    assert len(c) == len(a) and (c.ids == np.arange(1, len(a) + 1)).all()


def test_recalibrate_on_a_labs_nuclei_refits_the_probabilities_not_the_labels(model, tmp_path):
    clf = Classifier.from_pretrained(model, device="cpu")
    _, rgb, inst = _image(model)
    before = clf.predict(rgb, instances=inst, mpp=0.25, check=False)
    truth = np.where(np.arange(len(before)) % 2 == 0, before["pannuke"].predicted, -1)  # half "labelled"
    with pytest.warns(DomainShiftWarning, match="noisy"):
        cal = clf.recalibrate(before, truth, label_set="pannuke")
    assert "(own images)->pannuke" in cal.pairs
    after = clf.predict(rgb, instances=inst, mpp=0.25, check=False)
    np.testing.assert_array_equal(after["pannuke"].label, before["pannuke"].label)
    assert after["pannuke"].probability.mean() > before["pannuke"].probability.mean()  # every label "right"
    np.testing.assert_allclose(after["consep"].probability, before["consep"].probability)
    saved = clf.save(tmp_path / "lab")
    again = Classifier.from_pretrained(saved)
    assert again.calibration.pairs["(own images)->pannuke"] == cal.pairs["(own images)->pannuke"]
    np.testing.assert_allclose(again.predict(rgb, instances=inst, mpp=0.25, check=False)["pannuke"].probability,
                               after["pannuke"].probability, atol=1e-6)


def test_crops_do_not_depend_on_the_tiling():
    from nucdata_models.merge.engine import (
        ArraySource,
        InstanceMasks,
        Nuclei,
        cut_tile,
        model_frame,
        plan_tiles,
    )

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (150, 170, 3), dtype=np.uint8)
    inst = np.zeros((150, 170), np.int32)
    for k, (y, x) in enumerate(rng.integers(0, 150, (40, 2)), 1):
        inst[max(0, y - 3) : y + 4, max(0, x - 4) : x + 3] = k * 7  # sparse ids, some cut by the border
    nuclei, seq = Nuclei.from_instances(inst)
    masks = InstanceMasks(seq, np.arange(1, len(nuclei) + 1))
    for scale in (1.0, 1.7, 0.6):
        whole = cut_tile(ArraySource(rgb), masks, nuclei, np.arange(len(nuclei)), 16, scale, whole=True)
        cen, _, w, h = model_frame(nuclei, scale, 170, 150)
        tiles, _ = plan_tiles(cen, w, h, 37)
        parts = np.zeros_like(whole)
        for t in tiles:
            parts[t.rows] = cut_tile(ArraySource(rgb), masks, nuclei, t.rows, 16, scale)
        assert len(tiles) > 4
        np.testing.assert_array_equal(parts, whole, err_msg=f"scale {scale}")


def test_probabilities_match_the_trainers_own_prediction(model, clf):
    """The forward pass is CrossTrainer.predict's (the path build-merged predicts with)."""
    _, rgb, inst = _image(model)
    crops, *_ = clf.crops(rgb, instances=inst, mpp=0.25)
    got = clf.probabilities(crops)
    want = clf.trainer.predict(torch.from_numpy(crops))
    for s in SETS:
        np.testing.assert_array_equal(got[s], want[s].probs.numpy())
