"""Overlays a reader can read (upscaled, an H&E- and colour-blind-safe palette, dashed model labels),
``ds.plot(sample_or_index, prediction)``, and the reprs of the objects a user holds."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import demo_home
from skimage.color import rgb2lab

import nucdata
from nucdata.errors import InvalidArgumentError, MissingDependencyError
from nucdata.store import PROVENANCE, MergedLabels
from nucdata.views import PALETTE, build_bank
from nucdata.views import render_overlay as render
from nucdata.views._overlay import MIN_SIDE, OUTSIDE, RIM, UNLABELLED, overlay_scale

#: Stain colours of H&E slides (sRGB): eosin-pink stroma, haematoxylin-purple nuclei, pale background.
EOSIN, HAEMATOXYLIN, PALE = (232, 170, 205), (100, 60, 150), (245, 225, 235)
#: Machado, Oliveira and Fernandes (2009), severity 1.0, on linear RGB.
DEUTERANOPIA = np.array([[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                         [-0.011820, 0.042940, 0.968881]])
PROTANOPIA = np.array([[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216],
                       [-0.003882, -0.048116, 1.051998]])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    with demo_home(tmp_path_factory.mktemp("home"), ("consep", "monusac", "tnbc")) as home:
        yield home


def _lab(rgb) -> np.ndarray:
    return rgb2lab(np.asarray(rgb, float).reshape(1, -1, 3) / 255)[0]


def _seen_by(matrix: np.ndarray, rgb) -> np.ndarray:
    c = np.asarray(rgb, float) / 255
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4) @ matrix.T
    linear = np.clip(linear, 0, 1)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055) * 255


def _min_pair(lab: np.ndarray) -> float:
    d = np.linalg.norm(lab[:, None] - lab[None], axis=2)
    np.fill_diagonal(d, np.inf)
    return float(d.min())


def test_palette_stands_out_on_he_and_for_colour_blind_readers():
    lab = _lab(PALETTE)
    for stain in (EOSIN, HAEMATOXYLIN, PALE):  # CIE76 distance: ~2 is just noticeable, > 30 is obvious
        assert np.linalg.norm(lab - _lab([stain])[0], axis=1).min() > 30, stain
    assert _min_pair(lab) > 12  # every class apart from every other
    for matrix in (DEUTERANOPIA, PROTANOPIA):  # the first six (PanNuke's five, MoNuSAC's four) stay apart
        assert _min_pair(_lab(_seen_by(matrix, PALETTE[:6]))) > 15
    assert len(set(PALETTE) | {UNLABELLED, OUTSIDE}) == len(PALETTE) + 2


def test_small_images_are_upscaled_with_outlines_in_the_palette(prepared):
    ds = nucdata.load("monusac", label_set="pannuke")
    i = int(ds.indices[0])
    h, w = ds.store.instance_map(i).shape
    scale = overlay_scale(h, w)
    assert max(h, w) < MIN_SIDE and scale > 1 and max(h, w) * scale >= min(MIN_SIDE, max(h, w) * 8)
    image = np.asarray(render(ds, 0))
    assert image.shape[1] >= w * scale and image.shape[0] > h * scale  # the legend below
    drawn = {tuple(p) for p in image[: h * scale, : w * scale].reshape(-1, 3)}
    labels = ds.labels[ds.store.nucleus_slice(i)]
    expected = {PALETTE[c] for c in labels[labels >= 0]}
    assert expected and expected <= drawn and RIM in drawn
    # the image itself is untouched away from the outlines: upscaled by whole pixels
    rgb = np.asarray(ds.store.rgb(i))
    inside = np.asarray(ds.store.instance_map(i)) == 0
    big = np.repeat(np.repeat(rgb, scale, 0), scale, 1)
    far = np.repeat(np.repeat(inside, scale, 0), scale, 1)
    far[1:-1] &= far[:-2] & far[2:]
    far[:, 1:-1] &= far[:, :-2] & far[:, 2:]
    assert np.array_equal(image[: h * scale, : w * scale][far], big[far])


def _outline_pixels(image: np.ndarray, colour) -> int:
    return int((image.reshape(-1, 3) == np.asarray(colour, np.uint8)).all(1).sum())


def test_labels_the_model_chose_are_dashed(prepared):
    ds = nucdata.load("consep", label_set="consep")
    store = ds.store
    n = store.n_nuclei
    labels = np.zeros(n, np.int64)  # one class everywhere: only solid vs dashed differs
    columns = {"label": labels, "probability": np.ones(n, np.float32),
               "source": np.full(n, PROVENANCE.index("annotated"), np.int8)}
    solid = nucdata.NucleusDataset(store, None, merged=MergedLabels("consep", columns))
    predicted = nucdata.NucleusDataset(store, None, merged=MergedLabels(
        "consep", {**columns, "source": np.full(n, PROVENANCE.index("predicted"), np.int8)}))
    a, b = np.asarray(render(solid, 0)), np.asarray(render(predicted, 0))
    h = np.asarray(store.instance_map(int(solid.indices[0]))).shape[0] * overlay_scale(
        *np.asarray(store.instance_map(int(solid.indices[0]))).shape)
    on_a, on_b = _outline_pixels(a[:h], PALETTE[0]), _outline_pixels(b[:h], PALETTE[0])
    assert on_a > 0 and 0.3 * on_a < on_b < 0.75 * on_a  # dashes: about half of the outline is drawn
    assert a.shape[0] < b.shape[0]  # the legend says what dashed means


def test_a_prediction_sits_beside_the_labels(prepared):
    ds = nucdata.load("consep", label_set="consep")
    sample = ds[1]
    truth = render(ds, 1)
    pred = np.asarray(sample["labels"]).copy()
    pred[:] = 1
    both = render(ds, sample, prediction=pred)  # a sample finds its image by image_id
    assert both.width == 2 * truth.width + 8
    i = int(ds.indices[1])
    rows = np.asarray(ds.store.instance_map(i)).shape[0] * overlay_scale(*np.asarray(ds.store.instance_map(i)).shape)
    right = np.asarray(both)[:rows, truth.width + 8:]  # the image, not its legend
    assert _outline_pixels(right, PALETTE[1]) > 0 and _outline_pixels(right, PALETTE[0]) == 0
    with pytest.raises(InvalidArgumentError, match="one integer class id per nucleus"):
        render(ds, 1, prediction=pred[:-1])
    with pytest.raises(InvalidArgumentError, match="image_id"):
        render(ds, {"image": sample["image"]})


def test_plot_takes_a_sample_and_a_prediction_or_says_what_is_missing(prepared):
    ds = nucdata.load("consep", label_set="consep")
    sample = ds[0]
    try:
        import matplotlib
    except ImportError:
        with pytest.raises(MissingDependencyError, match="pip install matplotlib"):
            ds.plot(sample, prediction=sample["labels"])
    else:
        matplotlib.use("Agg")
        figure = ds.plot(sample, prediction=sample["labels"], suptitle="truth and prediction")
        assert len(figure.axes) == 2 and figure.axes[1].get_title().endswith("prediction")
        assert len(ds.plot(0).axes) == 1


def test_reprs_say_what_a_user_holds(prepared):
    ds = nucdata.load("consep", split="train", label_set="pannuke")
    text = repr(ds)
    assert text.startswith("NucleusDataset('consep'") and "label_set='pannuke'" in text
    assert "neoplastic" in text and str(ds.store.path) in text and f"images={len(ds)}" in text
    assert "\n" not in text and len(text) < 400
    both = nucdata.load_many(["consep", "monusac"], label_set="pannuke")
    text = repr(both)
    assert "consep" in text and "monusac" in text and "label_set='pannuke'" in text and "nuclei" in text
    bank = build_bank(ds.store, size=16)
    assert f"crops={len(bank)}" in repr(bank) and "consep" in repr(bank)
    tiles = ds.tiles(size=64)
    assert "consep" in repr(tiles) and f"tiles={len(tiles)}" in repr(tiles)
