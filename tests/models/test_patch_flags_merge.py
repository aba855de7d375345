"""build-merged --patch-labels: a flag 0 removes its class from every nucleus of the patch."""

from __future__ import annotations

import json

import numpy as np
import pytest

import nucdata
from nucdata._util.safe_pickle import load as safe_load
from nucdata.errors import PatchLabelError
from nucdata.store import read_merged_labels
from nucdata.views import PatchLabels, derive_patch_labels, read_patch_labels
from nucdata_models.merge.build import BuildOptions, build_merged, demo_key, work_dir

DATASETS = ["pannuke", "tnbc"]


def _options(out, **kw) -> BuildOptions:
    return BuildOptions(out=out, datasets=DATASETS, label_sets=["pannuke", "consep"], demo=True, demo_scale=1,
                        crop_size=16, overlays=0, config={"epochs": {"A": 1, "B": 1, "C": 1}, "batch_size": 64,
                                                          "device": "cpu"}, **kw)


@pytest.fixture(scope="module")
def flagged(tmp_path_factory):
    """A build, then flag tables: random flags over tnbc (unlabelled), all-zero flags over pannuke; a second build."""
    root = tmp_path_factory.mktemp("flags")
    out = root / "out"
    build_merged(_options(out), say=lambda _m: None)
    home = work_dir(out) / f"demo-{demo_key(_options(out))}"
    rng = np.random.default_rng(0)
    tnbc = nucdata.load("tnbc", root=home, label_set="pannuke")
    grid = derive_patch_labels(tnbc, window=32)
    flags = (rng.random(grid.flags.shape) < 0.4).astype(np.uint8)
    flags[np.arange(len(grid)), rng.integers(0, flags.shape[1], len(grid))] = 1  # at least one class each
    tnbc_table = PatchLabels("pannuke", grid.classes, grid.image, grid.window, flags, dataset="tnbc", source="csv")
    pannuke = nucdata.load("pannuke", root=home, label_set="pannuke")
    own = derive_patch_labels(pannuke, window=32)
    zero = PatchLabels("pannuke", own.classes, own.image, own.window, np.zeros_like(own.flags), dataset="pannuke",
                       source="csv")
    files = [tnbc_table.to_csv(root / "tnbc.csv"), zero.to_csv(root / "pannuke.csv")]
    messages: list[str] = []
    report = build_merged(_options(out, patch_labels=files), say=messages.append)
    return out, home, files, report, messages, own


def test_a_merged_build_never_publishes_a_label_its_patch_flags_zero(flagged):
    out, home, files, report, _, _ = flagged
    tnbc = nucdata.load("tnbc", root=home, label_set="pannuke")
    table = read_patch_labels(files[0])
    allowed = table.allowed(tnbc)
    covered = table.covered(tnbc)
    assert covered.all() and (allowed != (1 << len(table.classes)) - 1).any()
    _, merged = read_merged_labels(out, "tnbc", "pannuke")
    label = np.asarray(merged.label)
    assert (label >= 0).all()
    assert ((allowed >> label) & 1).all(), "a published label is a class its patch flags 0"
    # field 2 of the published pickle: the same labels
    pickled = safe_load(out / "pannuke" / "tnbc.pkl")
    names = [str(n) for n in np.asarray(tnbc.store.column("images", "name"))]
    image_of = np.asarray(tnbc.store.column("nuclei", "image"))
    assert set(pickled) == {f"{n}.png" for n in names}
    for i, n in enumerate(names):  # rows in store order within each image
        field = np.asarray([row[1] for row in pickled[f"{n}.png"]], np.int64)
        assert ((allowed[image_of == i] >> field) & 1).all()
    # reported as its own provenance
    counts = report["label_provenance"]["pannuke"]
    narrowed = {t["dataset"]: t for t in report["patch_flags"]["tables"]}
    assert counts["patch-flags"] == narrowed["tnbc"]["narrowed"] > 0
    assert "## Patch-level flags" in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["patch_flags"]["tables"][0]["dataset"] == "tnbc"


def test_annotations_win_over_flags_and_the_conflicts_are_counted(flagged):
    out, home, _, report, messages, own = flagged
    pannuke = nucdata.load("pannuke", root=home, label_set="pannuke")
    t = {t["dataset"]: t for t in report["patch_flags"]["tables"]}["pannuke"]
    assert t["conflicts_with_annotations"] == int(own.flags.sum()) > 0 and t["narrowed"] == 0
    _, merged = read_merged_labels(out, "pannuke", "pannuke")
    labels = np.asarray(pannuke.labels)
    known = labels >= 0
    assert (np.asarray(merged.label)[known] == labels[known]).all()
    assert any("conflicts with annotations" in m for m in messages)


def test_a_table_for_another_dataset_is_refused(flagged, tmp_path):
    out, home, files, _, _, _ = flagged
    table = read_patch_labels(files[0])
    table.dataset = "consep"
    with pytest.raises(PatchLabelError, match="not one of this build's"):
        build_merged(_options(out, patch_labels=[table.to_csv(tmp_path / "other.csv")]), say=lambda _m: None)


def test_build_merged_takes_patch_labels_on_the_command_line():
    from click.testing import CliRunner

    from nucdata.cli import main

    result = CliRunner().invoke(main, ["build-merged", "--help"])
    assert result.exit_code == 0 and "--patch-labels" in result.output
