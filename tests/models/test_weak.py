"""The weak chain: patch classifier, CAMs restricted to the flags, per-depth pseudo-labels, the gate, the command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from nucdata.errors import InvalidArgumentError
from nucdata_models.encoders import build_encoder
from nucdata_models.weak import (
    PatchClassifier,
    PatchData,
    WeakConfig,
    WeakModel,
    class_activation_maps,
    encoder_blocks,
    nucleus_pseudo_labels,
    patch_probabilities,
    predict_nuclei,
    train_weak,
)

COLOURS = torch.tensor([[220, 40, 40], [40, 40, 220], [40, 200, 40]], dtype=torch.uint8)


def _synthetic(patches: int = 24, size: int = 32, seed: int = 0) -> PatchData:
    """Patches of coloured discs: class c is a disc of colour c; each patch holds one or two classes."""
    g = np.random.default_rng(seed)
    images = torch.full((patches, 3, size, size), 200, dtype=torch.uint8)
    inst = torch.zeros((patches, size, size), dtype=torch.int32)
    flags = torch.zeros((patches, 3), dtype=torch.uint8)
    nucleus_patch, xy, instance, labels = [], [], [], []
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for p in range(patches):
        present = g.choice(3, size=1 + p % 2, replace=False)
        for k, (cx, cy) in enumerate(((8, 8), (24, 8), (8, 24), (24, 24)), start=1):
            c = int(present[(k - 1) % present.size])
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= 16
            images[p][:, disc] = COLOURS[c][:, None]
            inst[p][disc] = k
            flags[p, c] = 1
            nucleus_patch.append(p)
            xy.append((cx, cy))
            instance.append(k)
            labels.append(c)
    n = len(nucleus_patch)
    return PatchData(patches=images, flags=flags, class_names=("red", "blue", "green"),
                     nucleus_patch=torch.tensor(nucleus_patch), nucleus_xy=torch.tensor(xy, dtype=torch.float32),
                     nucleus_instance=torch.tensor(instance), radius_px=torch.full((n,), 4.0),
                     labels=torch.tensor(labels), patch_image=torch.arange(patches) // 2,
                     patch_split=torch.where(torch.arange(patches) % 6 == 5, 2, 0), instance_maps=inst)


def test_config_switches_are_validated_and_round_trip():
    config = WeakConfig(depths=1)
    assert config.weights == (1.0,) and WeakConfig().weights == pytest.approx((0.6, 0.2, 0.2))
    assert WeakConfig.from_dict(json.loads(json.dumps(WeakConfig(cam="cam").to_dict()))) == WeakConfig(cam="cam")
    for bad in ({"cam": "scorecam"}, {"depths": 4}, {"depth_weights": (0.5,)}, {"gate": 1.5},
                {"normalise": "softmax"}, {"patch_epochs": -1}):
        with pytest.raises(InvalidArgumentError):
            WeakConfig(**bad)
    with pytest.raises(InvalidArgumentError, match="unknown fields"):
        WeakConfig.from_dict({"epochs": 3})


def test_encoder_blocks_cover_the_encoder():
    small = build_encoder("small")
    blocks = encoder_blocks(small)
    assert len(blocks) == 4
    x = torch.rand(2, 3, 32, 32)
    small.eval()
    blocks.eval()
    y = x
    for b in blocks:
        y = b(y)
    assert torch.allclose(y.mean((2, 3)), small(x), atol=1e-5)
    assert len(encoder_blocks(build_encoder("resnet18"))) == 5


@pytest.mark.parametrize("cam", ["gradcam", "cam"])
def test_cams_are_restricted_to_the_flagged_classes_and_normalised(cam):
    torch.manual_seed(0)
    data = _synthetic(8)
    config = WeakConfig(cam=cam)
    model = PatchClassifier("small", 3, cam).eval()
    cams = class_activation_maps(model, data.patches, data.flags, config)
    assert tuple(cams.shape) == (8, 3, 3, 32, 32)
    off = ~data.flags.bool()
    assert (cams.permute(0, 2, 1, 3, 4)[off] == 0).all()
    assert cams.min() >= 0 and cams.max() <= 1 + 1e-6
    on = cams.permute(0, 2, 1, 3, 4)[data.flags.bool()].flatten(2)
    assert ((on.max(2).values > 0.99) | (on.max(2).values == 0)).all()  # min-max: every map reaches 1 (or is flat)
    single = WeakConfig(cam=cam, depths=1)
    assert class_activation_maps(model, data.patches[:2], data.flags[:2], single).shape[1] == 1


def test_pseudo_labels_use_the_flags_only_and_stay_within_them():
    torch.manual_seed(0)
    data = _synthetic(12)
    model = PatchClassifier("small", 3).eval()
    pseudo = nucleus_pseudo_labels(model, data, WeakConfig())
    assert tuple(pseudo.shape) == (len(data), 3)
    flagged = data.flags[data.nucleus_patch].bool()
    assert flagged.gather(1, pseudo.clamp_min(0)).all()
    one = data.flags.sum(1)[data.nucleus_patch] == 1
    assert (pseudo[one] == data.labels[one, None]).all()  # one flagged class: every nucleus is it
    scrambled = PatchData(**{**data.__dict__, "labels": torch.zeros_like(data.labels)})
    assert torch.equal(nucleus_pseudo_labels(model, scrambled, WeakConfig()), pseudo)
    # a patch with no flag gives its nuclei no pseudo-label
    empty = PatchData(**{**data.__dict__, "flags": data.flags.clone()})
    empty.flags[0] = 0
    assert (nucleus_pseudo_labels(model, empty, WeakConfig())[data.nucleus_patch == 0] == -1).all()
    # points only: discs stand for the nuclei
    points = PatchData(**{**data.__dict__, "instance_maps": None})
    assert flagged.gather(1, nucleus_pseudo_labels(model, points, WeakConfig()).clamp_min(0)).all()


def test_the_gate_switches_off_classes_the_patch_classifier_rules_out():
    torch.manual_seed(0)
    data = _synthetic(6)
    model = train_weak(data, WeakConfig(patch_epochs=1, nucleus_epochs=1, nucleus_batch_size=8))
    probs = patch_probabilities(model.patch_classifier, data)
    fake = torch.where(data.flags.bool(), torch.full_like(probs, 0.9), torch.full_like(probs, 0.01))
    gated = predict_nuclei(model.nucleus_classifier, data, fake, gate=0.1)
    off = ~data.flags[data.nucleus_patch].bool()
    assert (gated[off] == 0).all() and torch.allclose(gated.sum(1), torch.ones(len(data)))
    ungated = predict_nuclei(model.nucleus_classifier, data)
    assert not torch.equal(gated, ungated)
    everything_off = predict_nuclei(model.nucleus_classifier, data, torch.zeros_like(probs), gate=0.1)
    assert torch.allclose(everything_off, ungated)  # nothing left: the ungated prediction


def test_train_weak_learns_coloured_discs_and_saves(tmp_path):
    torch.manual_seed(0)
    data = _synthetic(36)
    model = train_weak(data, WeakConfig(patch_epochs=6, nucleus_epochs=6, nucleus_batch_size=16, lr=3e-3))
    assert model.history and model.pseudo_labels.shape == (len(data), 3)
    train = data.patch_split[data.nucleus_patch] == 0
    agreement = (model.pseudo_labels[train, 0] == data.labels[train]).float().mean()
    assert agreement > 0.6  # one flag of two patches in two is free; the CAM must place the other
    probs = model.predict(data)
    back = WeakModel.load(model.save(tmp_path / "weak"))
    assert torch.allclose(back.predict(data), probs, atol=1e-5)


def test_the_train_weak_command_on_a_demo_dataset(tmp_path):
    import nucdata
    from nucdata.cli import main
    from nucdata.testing import install

    home = tmp_path / "home"
    install("consep", home)
    nucdata.prepare("consep", root=home, download=False)
    out = tmp_path / "weak"
    result = CliRunner().invoke(main, ["train-weak", "consep", "--out", str(out), "--root", str(home), "--size", "48",
                                       "--patch-epochs", "1", "--nucleus-epochs", "1", "--threads", "1"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["label_set"] == "consep" and summary["nuclei"] > 0 and set(summary["pseudo_label_agreement"]) == \
        {"depth0", "depth1", "depth2"}
    assert (out / "patch_classifier.pt").exists() and (out / "weak.json").exists()
    rows = (out / "pseudo_labels.csv").read_text().splitlines()
    assert len(rows) == summary["nuclei"] + 1
    again = CliRunner().invoke(main, ["train-weak", "consep", "--out", str(out), "--root", str(home)])
    assert again.exit_code == 2 and "not an empty folder" in again.output


def test_points_only_stores_get_discs_of_the_typical_radius(tmp_path):
    import nucdata
    from nucdata.testing import install
    from nucdata_models.merge.weak_data import typical_radius, weak_patch_data

    home = tmp_path / "home"
    install("crchisto", home)
    nucdata.prepare("crchisto", root=home, download=False)
    ds = nucdata.load("crchisto", root=home, label_set="crchisto")
    assert not np.isfinite(np.asarray(ds.store.column("images", "mpp"), np.float64)).any()
    with pytest.raises(InvalidArgumentError, match="assume_mpp"):
        typical_radius(ds)
    radius, why = typical_radius(ds, 4.0, assume_mpp=0.5)
    assert radius == pytest.approx(8.0) and "0.5" in why
    data = weak_patch_data(ds, 64, assume_mpp=0.5, crop_size=None)
    assert len(data) == ds.store.n_nuclei  # every point lies in exactly one grid patch
    assert (data.nucleus_instance == 0).all() and torch.allclose(data.radius_px, torch.full((len(data),), 8.0))
    labels = np.asarray(ds.labels)
    for p in range(data.patches.shape[0]):  # derived flags are the classes of the patch's labelled nuclei
        own = data.labels[data.nucleus_patch == p]
        assert set(torch.nonzero(data.flags[p]).flatten().tolist()) == set(own[own >= 0].tolist())
    assert (data.labels.numpy() >= 0).sum() == (labels >= 0).sum()
    pseudo = nucleus_pseudo_labels(PatchClassifier("small", len(data.class_names)).eval(), data, WeakConfig())
    flagged = data.flags[data.nucleus_patch].bool()
    has = pseudo[:, 0] >= 0
    assert has.any() and flagged[has].gather(1, pseudo[has]).all()
