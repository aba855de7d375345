"""Encoders: shapes at native crop size, local weights with torchvision key names."""

from __future__ import annotations

import pytest
import torch

from nucdata_models.encoders import build_encoder, torchvision_key


@pytest.mark.parametrize("name,features", [("small", 128), ("resnet18", 512), ("resnet50", 2048)])
def test_encoders_take_native_size_crops(name, features):
    encoder = build_encoder(name, 4).eval()
    with torch.no_grad():
        assert encoder(torch.randn(2, 4, 24, 24)).shape == (2, features)
    assert encoder.out_features == features


def test_encoder_weights_from_a_local_file_in_torchvision_naming(tmp_path):
    source = build_encoder("resnet18", 3)
    inverse = {}
    for key, value in source.state_dict().items():  # write them the way torchvision names them
        tv = key.replace("stem.0.", "conv1.").replace("stem.1.", "bn1.").replace(".shortcut.", ".downsample.")
        if tv.startswith("stages."):
            stage, rest = tv[len("stages."):].split(".", 1)
            tv = f"layer{int(stage) + 1}.{rest}"
        assert torchvision_key(tv) == key
        inverse[tv] = value
    inverse["conv1.weight"] = torch.zeros(64, 3, 7, 7)  # the ImageNet 7x7 stem does not fit
    inverse["fc.weight"] = torch.zeros(1000, 512)
    path = tmp_path / "imagenet.pt"
    torch.save(inverse, path)
    loaded = build_encoder("resnet18", 3, weights=path)
    assert {"conv1.weight", "fc.weight"} <= set(loaded.skipped_weights)
    assert torch.equal(loaded.stages[3][1].conv2.weight, source.stages[3][1].conv2.weight)
    assert torch.equal(loaded.stages[1][0].shortcut[0].weight, source.stages[1][0].shortcut[0].weight)
    four = build_encoder("resnet18", 4, weights=path)  # a 4-channel stem is skipped as well
    assert four(torch.randn(2, 4, 16, 16)).shape == (2, 512)


def test_weights_that_fit_nothing_are_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"something.else": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="no tensor fits"):
        build_encoder("small", 3, weights=path)
    with pytest.raises(ValueError, match="unknown encoder"):
        build_encoder("vit", 3)


def test_the_config_names_every_encoder_built_here():
    from nucdata_models.config import ENCODER_NAMES
    from nucdata_models.encoders import ENCODERS

    assert tuple(ENCODERS) == ENCODER_NAMES, "nucdata_models.config.ENCODER_NAMES must name the encoders built here"
