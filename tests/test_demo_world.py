"""The demo world's knobs: each changes what it should, and the truth stays known."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import nucdata.testing.world as world_module
from nucdata.catalog import datasets_in_order, get_card
from nucdata.labels import MERGED_LABEL_SETS, OWN_LABEL_SET, translate
from nucdata.testing import install
from nucdata.testing.world import TYPE_NAMES, World, WorldConfig, entries, entry

OWNER = {v: k for k, v in OWN_LABEL_SET.items()}
#: the mapping tables' view of each labelled dataset's vocabulary (the world entries')
NATIVE = {d: e.native for d, e in entries().items() if e.labelled}


def fold_arrays(archive: Path) -> tuple[np.ndarray, np.ndarray]:
    """images.npy and masks.npy of a demo PanNuke fold zip."""
    with zipfile.ZipFile(archive) as zf:
        images = np.load(io.BytesIO(zf.read("Fold 1/images/fold1/images.npy")))
        masks = np.load(io.BytesIO(zf.read("Fold 1/masks/fold1/masks.npy")))
    return images, masks


def written_vs_right(archives, world: World, dataset: str) -> tuple[int, int]:
    """(nuclei whose written code differs from the world's right code, labelled nuclei)."""
    wrong = total = 0
    for image, drawn in archives.truth.items():
        for (_, _, kind), code in zip(drawn, archives.annotated[image], strict=True):
            total += 1
            wrong += code != world.native_code(dataset, kind)
    return wrong, total


def test_the_entries_come_from_the_fake_writers_in_the_registry_order():
    """Each dataset's world knowledge is its fake writer's WORLD; sizes and shared images are the cards'."""
    import importlib

    assert list(entries()) == datasets_in_order()
    labelled = [d for d, e in entries().items() if e.labelled]
    assert list(entries())[: len(labelled)] == labelled  # labelled first, in the cards' order
    assert labelled == list(OWN_LABEL_SET)  # the datasets with a vocabulary of their own
    for name, e in entries().items():
        assert importlib.import_module(f"nucdata.testing.{get_card(name).converter}").WORLD is e
    # the tables of earlier versions are derived views of the entries and the cards
    assert world_module.NATIVE == NATIVE and list(world_module.NATIVE) == labelled
    assert {d: get_card(d, packaged=True).nuclei for d in entries()} == world_module.REAL_NUCLEI
    assert world_module.SAME_IMAGES == {"kumar": "monuseg"} == {
        d: get_card(d).duplicates_of for d in entries() if get_card(d).duplicates_of}
    assert world_module.UNLABELLED_DATASETS == ("kumar", "monuseg", "tnbc")
    assert entry("unknown-dataset") == world_module.DatasetWorld()


def test_real_sizes_ignore_card_overrides_in_the_data_home(tmp_path, monkeypatch):
    """A demo's card override (tiny expected counts) must not change the world's sizes."""
    before = World(0, config=WorldConfig(real_sizes=True)).size_factor("pannuke")
    monkeypatch.setenv("NUCDATA_HOME", str(tmp_path))
    install("pannuke", tmp_path, 0)  # writes registry/pannuke.json with the demo's own counts
    assert get_card("pannuke").nuclei != get_card("pannuke", packaged=True).nuclei
    world_module._real_nuclei.cache_clear()
    try:
        assert World(0, config=WorldConfig(real_sizes=True)).size_factor("pannuke") == before
    finally:
        world_module._real_nuclei.cache_clear()


def test_demo_nuclei_are_what_the_generators_draw(tmp_path):
    """DatasetWorld.demo_nuclei is measured: seed 0, scale 1, the default world."""
    for name, e in entries().items():
        archives = install(name, tmp_path / name, 0, world=World(0))
        assert sum(len(v) for v in archives.truth.values()) == e.demo_nuclei, name


def test_default_config_is_all_off_and_presets_differ():
    assert WorldConfig() == WorldConfig.easy() == World().config
    assert World().native == NATIVE and World().mapping_errors == []
    hard, noisy = WorldConfig.hard(), WorldConfig.noisy()
    assert hard.overlap > 0 and hard.real_sizes and hard.label_noise > 0 and hard.mapping_error > 0
    assert noisy.label_noise > hard.label_noise
    assert WorldConfig.preset("noisy") == noisy and hard.with_(overlap=0.0).overlap == 0.0
    assert set(hard.to_dict()) >= {"overlap", "label_noise", "mapping_error", "habits"}
    with pytest.raises(ValueError, match="overlap"):
        WorldConfig(overlap=1.5)
    with pytest.raises(ValueError, match="unknown world preset"):
        WorldConfig.preset("medium")


def closed_form_bayes(world: World, label_set: str) -> float:
    """Bayes accuracy with look-alikes when every type's texture is its own (exact)."""
    mix = world.type_mix(OWNER[label_set])
    classes = world.truth_labels(np.arange(len(TYPE_NAMES)), label_set)
    prior = np.array([mix.get(t, 0.0) for t in TYPE_NAMES]) * (classes >= 0)
    prior /= prior.sum()
    o, k = world.config.overlap, len(TYPE_NAMES)
    accuracy = 0.0
    for look in range(k):  # the look identifies the appearance type exactly
        joint = prior * ((1 - o) * (np.arange(k) == look) + o / k)
        per_class = np.bincount(classes[classes >= 0], joint[classes >= 0], minlength=classes.max() + 1)
        accuracy += per_class.max()
    return accuracy


def test_bayes_accuracy_is_one_without_overlap_and_below_with_it():
    clean = World(0)
    for s in MERGED_LABEL_SETS:
        assert clean.bayes_accuracy(s, samples=4000) == 1.0
    world = World(0, config=WorldConfig(overlap=0.3))
    for s in MERGED_LABEL_SETS:
        got = world.bayes_accuracy(s, samples=20_000)
        assert got < 0.95
        assert got == pytest.approx(closed_form_bayes(world, s), abs=4 * 0.5 / np.sqrt(20_000))
    # more overlap, lower ceiling; a coarser label set (MoNuSAC, 4 classes) is easier
    assert World(0, config=WorldConfig(overlap=0.6)).bayes_accuracy("pannuke") < world.bayes_accuracy("pannuke")


def test_looks_follow_the_overlap_rate():
    world = World(3, config=WorldConfig(overlap=0.4))
    kinds = np.random.default_rng(0).integers(0, len(TYPE_NAMES), 20_000).tolist()
    looks = np.array(world.looks_for("pannuke", kinds))
    changed = float((looks != np.array(kinds)).mean())
    assert changed == pytest.approx(0.4 * (len(TYPE_NAMES) - 1) / len(TYPE_NAMES), abs=0.015)
    assert World(3).looks_for("pannuke", kinds) == kinds  # off: no look-alikes


def test_annotator_noise_rate_is_as_configured():
    world = World(5, config=WorldConfig(label_noise=0.2))
    kinds = World(5).kinds_for("pannuke", np.random.default_rng(1), 20_000)
    written = np.array(world.annotate("pannuke", kinds))
    right = np.array([world.native_code("pannuke", k) for k in kinds])
    assert float((written != right).mean()) == pytest.approx(0.2, abs=0.015)
    assert set(written.tolist()) <= set(world.vocabulary("pannuke"))


def test_noise_changes_labels_not_pixels(tmp_path):
    """A labelling knob leaves the images alone; the archive's labels carry the flips."""
    clean, noisy = World(2), World(2, config=WorldConfig(label_noise=0.3))
    a = install("pannuke", tmp_path / "a", 2, world=clean, scale=4)
    b = install("pannuke", tmp_path / "b", 2, world=noisy, scale=4)
    assert a.truth == b.truth
    images_a, masks_a = fold_arrays(a.files[0])
    images_b, masks_b = fold_arrays(b.files[0])
    np.testing.assert_array_equal(images_a, images_b)
    assert not np.array_equal(masks_a, masks_b)  # nuclei moved to other class channels
    assert written_vs_right(a, clean, "pannuke")[0] == 0
    wrong, total = written_vs_right(b, noisy, "pannuke")
    assert total > 250 and wrong / total == pytest.approx(0.3, abs=3 * np.sqrt(0.21 / total))


def test_habits_write_the_habitual_code_and_keep_the_truth():
    world = World(0, config=WorldConfig(habits=True))
    mitotic = TYPE_NAMES.index("mitotic")
    assert world.annotate("nucls", [mitotic] * 5) == [entry("nucls").habit["mitotic"]] * 5 == [1] * 5
    assert world.native_code("nucls", mitotic) == 6  # the truth is still mitotic_figure
    assert world.truth_labels(np.array([mitotic]), "nucls")[0] == translate("nucls", np.array([6]), "nucls")[0][0]
    assert World(0).annotate("nucls", [mitotic]) == [6]


def test_mapping_errors_at_rate_epsilon_are_recorded_and_followed_by_the_truth():
    entries = sum(1 for d in NATIVE.values() for c in d.values() if c is not None)
    changed = [len(World(seed, config=WorldConfig(mapping_error=0.25)).mapping_errors) for seed in range(40)]
    assert np.mean(changed) / entries == pytest.approx(0.25, abs=0.04)
    world = next(w for seed in range(40) if (w := World(seed, config=WorldConfig(mapping_error=0.25))).mapping_errors)
    for error in world.mapping_errors:
        kind = TYPE_NAMES.index(error["type"])
        assert NATIVE[error["dataset"]][error["type"]] == error["table_code"] != error["world_code"]
        assert world.native_code(error["dataset"], kind) == error["world_code"]  # what annotators write
        assert world.truth_native(error["dataset"], kind) == error["world_code"]
        if error["dataset"] in OWNER.values():
            s = OWN_LABEL_SET[error["dataset"]]
            expected = translate(error["dataset"], np.array([error["world_code"]]), s)[0][0]
            assert world.truth_labels(np.array([kind]), s)[0] == expected
    assert World(0, config=WorldConfig(mapping_error=0.0)).mapping_errors == []


def test_truth_labels_match_the_vocabulary_tables_in_the_default_world():
    world = World(0)
    kinds = np.array([-1, *range(len(TYPE_NAMES))])
    for s in MERGED_LABEL_SETS:
        own = OWNER[s]
        codes = np.array([-1 if k < 0 or NATIVE[own][TYPE_NAMES[k]] is None else NATIVE[own][TYPE_NAMES[k]]
                          for k in kinds])
        labels, _ = translate(own, codes, s)
        expected = np.where(kinds < 0, -3, np.where(codes == -1, -2, labels))
        np.testing.assert_array_equal(world.truth_labels(kinds, s), expected)


def test_real_sizes_and_class_mix(tmp_path):
    world = World(0, config=WorldConfig(real_sizes=True, real_class_mix=True))
    assert world.size_factor("pannuke") > 5 * world.size_factor("consep")
    assert world.size_factor("tnbc") == world.size_factor("kumar") == 0.25  # the floor
    pannuke = install("pannuke", tmp_path / "p", 0, world=world, scale=0.3)
    consep = install("consep", tmp_path / "c", 0, world=world, scale=0.3)
    n = {a.dataset: sum(len(v) for v in a.truth.values()) for a in (pannuke, consep)}
    assert n["pannuke"] / n["consep"] > 0.5 * get_card("pannuke").nuclei / get_card("consep").nuclei
    mix = world.type_mix("pannuke")
    assert mix["dead"] < 0.03 and mix["mitotic"] < 0.03 and mix["tumour"] > 0.3  # rare classes rare
    assert World(0).type_mix("pannuke")["dead"] > 0.03


def test_unlabelled_mix_is_uniform_by_default_and_shaped_when_asked():
    uniform = World(0).type_mix("tnbc")
    assert len(set(uniform.values())) == 1 and len(uniform) == len(TYPE_NAMES)
    shaped = World(0, config=WorldConfig(unlabelled_mix=1.0)).type_mix("tnbc")
    total = sum(entry("tnbc").unlabelled_mix.values())
    assert shaped["tumour"] == pytest.approx(entry("tnbc").unlabelled_mix["tumour"] / total)
    kinds = World(0, config=WorldConfig(unlabelled_mix=1.0)).kinds_for("tnbc", np.random.default_rng(0), 10_000)
    share = np.bincount(kinds, minlength=len(TYPE_NAMES)) / len(kinds)
    assert share[TYPE_NAMES.index("tumour")] == pytest.approx(shaped["tumour"], abs=0.02)
    assert World(0, config=WorldConfig(unlabelled_mix=1.0)).type_mix("kumar") == World(
        0, config=WorldConfig(unlabelled_mix=1.0)).type_mix("monuseg")  # the same images


def test_stain_scale_and_blur_shifts(tmp_path):
    world = World(0, config=WorldConfig(stain_shift=3.0, scale_shift=1.0, blur_shift=2.0))
    assert world.stain("consep") == (30.0, -18.0, 12.0)
    assert World(0, config=WorldConfig(stain_shift=0.0)).stain("consep") == (0.0, 0.0, 0.0)
    assert world.pixel_scale("nucls") == pytest.approx(1.25) and world.pixel_scale("pannuke") == 1.0
    assert world.appearances("nucls")[0].radius == pytest.approx(tuple(1.25 * r for r in World().types["tumour"].radius))
    assert world.blur("tnbc") == pytest.approx(0.6 + 2.0) and World().blur("tnbc") == 0.6
    # Blur only: same nuclei, smoother images (less pixel-to-pixel variation).
    sharp = install("consep", tmp_path / "a", 1, world=World(1))
    soft = install("consep", tmp_path / "b", 1, world=World(1, config=WorldConfig(blur_shift=2.0)))
    assert sharp.truth == soft.truth

    def roughness(archive: Path) -> float:
        with zipfile.ZipFile(archive) as zf:
            rgb = np.asarray(Image.open(io.BytesIO(zf.read("CoNSeP/Train/Images/train_1.png"))))[..., :3]
        return float(np.abs(np.diff(rgb.astype(float), axis=1)).mean())

    assert roughness(soft.files[0]) < 0.8 * roughness(sharp.files[0])


def test_kumar_and_monuseg_share_images_in_a_hard_world(tmp_path):
    import hashlib

    name = "MoNuSeg 2018 Training Data.zip"
    install("kumar", tmp_path / "a", 0, world=World(0, config=WorldConfig.hard()))
    install("monuseg", tmp_path / "b", 0, world=World(0, config=WorldConfig.hard()))
    digests = {hashlib.sha256((tmp_path / h / "manual" / name).read_bytes()).hexdigest() for h in "ab"}
    assert len(digests) == 1


def test_same_seed_same_bytes_for_every_archive(tmp_path):
    """Including CoNSeP's .mat files, whose savemat header would otherwise carry the time."""
    import hashlib

    for name in ("consep", "pannuke"):
        digests = set()
        for home in ("a", "b"):
            archives = install(name, tmp_path / name / home, 4, world=World(4))
            digests.add(tuple(hashlib.sha256(p.read_bytes()).hexdigest() for p in archives.files))
        assert len(digests) == 1, name
