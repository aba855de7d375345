"""Image loaders: collation, workers, transforms, several datasets, xarray views, overlays, stats."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import demo_home
from PIL import Image

import nucdata
from nucdata.cli import main
from nucdata.errors import MissingDependencyError
from nucdata.views import outline_mask
from nucdata.views import render_overlay as render
from nucdata.views._overlay import OUTSIDE, PALETTE, UNLABELLED, overlay_scale


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    with demo_home(tmp_path_factory.mktemp("home"), ("consep", "monusac", "nucls", "tnbc")) as home:
        yield home


def add_count(sample: dict) -> dict:
    """A dict-to-dict transform (module level, so it pickles into workers)."""
    return {**sample, "count": len(sample["labels"])}


def test_collate_with_two_workers_keeps_nucleus_fields_as_lists(prepared):
    ds = nucdata.load("monusac", label_set="pannuke", transforms=add_count)
    pickle.loads(pickle.dumps(ds))  # what spawned workers receive
    assert len(pickle.dumps(ds)) < 20_000  # no pixels, no per-nucleus Python objects
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=nucdata.collate, num_workers=2)
    batches = list(loader)
    assert sum(len(b["centroids"]) for b in batches) == len(ds)
    batch = batches[0]
    assert isinstance(batch["centroids"], list) and len(batch["centroids"]) == 3
    assert isinstance(batch["labels"], list) and batch["labels"][0].dtype == torch.int64
    assert isinstance(batch["image"], list)  # MoNuSAC sizes differ
    assert batch["count"].tolist() == [len(x) for x in batch["labels"]]
    assert batch["image_id"] == [ds[i]["image_id"] for i in range(3)]
    for i in range(3):
        torch.testing.assert_close(batch["centroids"][i], ds[i]["centroids"])
    tnbc = next(iter(torch.utils.data.DataLoader(nucdata.load("tnbc"), batch_size=2, collate_fn=nucdata.collate)))
    assert tnbc["image"].shape == (2, 3, 64, 64) and tnbc["instance_map"].shape == (2, 64, 64)
    assert nucdata.collate([]) == {}


def test_load_many(prepared):
    many = nucdata.load_many(["consep", "nucls"], split={"consep": "test", "nucls": "fold1"}, label_set="pannuke")
    assert many.names == ["consep", "nucls"]
    assert len(many) == len(nucdata.load("consep", "test")) + len(nucdata.load("nucls", "fold1"))
    assert many[len(many) - 1]["dataset"] == "nucls"
    assert "consep" in repr(many)
    with pytest.raises(nucdata.InvalidArgumentError):
        nucdata.load_many(["consep"], split="nonsense")


def test_xarray_views_chunk_without_copy(prepared):
    ds = nucdata.load("consep")
    area = ds.nuclei.area
    assert np.shares_memory(area.values, ds.store.column("nuclei", "area"))
    assert np.shares_memory(ds.images.nucleus_count.values, ds.store.column("images", "nucleus_count"))
    pytest.importorskip("dask")
    chunked = ds.nuclei.chunk({"nucleus": 16})
    assert chunked.area.chunks == ((16, 16, 16, 16, 7),)
    assert int(chunked.area.sum().compute()) == int(area.sum())
    assert float(ds.images.chunk({"image": 2}).mpp.mean().compute()) == pytest.approx(float(ds.images.mpp.mean()))


def test_outline_mask_is_the_border():
    inst = np.zeros((7, 7), np.int32)
    inst[1:6, 1:6] = 1
    edge = outline_mask(inst)
    assert edge[1, 1:6].all() and not edge[2:5, 2:5].any() and not edge[0].any()


def test_overlay_colours_by_class(prepared, tmp_path):
    ds = nucdata.load("monusac", label_set="pannuke")
    image = np.asarray(render(ds, 0))
    h, w = ds.store.instance_map(int(ds.indices[0])).shape
    scale = overlay_scale(h, w)  # small images are upscaled by whole pixels
    inst = np.repeat(np.repeat(np.asarray(ds.store.instance_map(int(ds.indices[0]))), scale, 0), scale, 1)
    colours = set(PALETTE[: len(nucdata.label_set("pannuke"))])  # the overlay palette, in class order
    drawn = {tuple(p) for p in image[: h * scale, : w * scale][outline_mask(inst)]}
    assert drawn and drawn <= colours | {UNLABELLED, OUTSIDE}
    result = CliRunner().invoke(main, ["overlay", "monusac", "--label-set", "pannuke", "--out", str(tmp_path / "ov")])
    assert result.exit_code == 0, result.output
    pngs = sorted((tmp_path / "ov").glob("*.png"))
    assert len(pngs) == len(ds)
    assert Image.open(tmp_path / "ov" / f"{ds.images.name.values[0]}.png").height > h  # legend strip
    result = CliRunner().invoke(main, ["overlay", "tnbc", "--out", str(tmp_path / "native")])  # no label set
    assert result.exit_code == 0, result.output


def test_stats_match_the_store(prepared):
    result = CliRunner().invoke(main, ["stats", "nucls", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    ds = nucdata.load("nucls")
    splits = ds.images.split.values
    assert summary["images"] == {s: int((splits == s).sum()) for s in ("fold1", "fold2")}
    assert sum(summary["nuclei"].values()) == ds.store.n_nuclei
    assert sum(summary["classes"].values()) == ds.store.n_nuclei
    assert summary["nuclei_without_mask"] == int((~ds.nuclei.has_mask.values).sum()) > 0
    assert summary["nuclei_per_image"]["max"] == int(ds.images.nucleus_count.max())
    assert summary["area_px_quantiles"]["max"] == float(ds.nuclei.area.values[ds.nuclei.has_mask.values].max())
    text = CliRunner().invoke(main, ["stats", "consep", "--label-set", "pannuke"])
    assert text.exit_code == 0 and "under pannuke" in text.output and "nuclei per class" in text.output


def test_plot_needs_matplotlib_or_says_so(prepared):
    ds = nucdata.load("tnbc")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match="pip install matplotlib") as info:
            ds.plot(0)
        assert isinstance(info.value, ImportError) and info.value.package == "matplotlib"
    else:
        assert ds.plot(0) is not None


def test_provenance_of_a_merged_dataset_and_its_deprecated_alias(prepared):
    from nucdata.store import MergedLabels

    store = nucdata.load("consep").store
    n = store.n_nuclei
    source = (np.arange(n) % len(nucdata.PROVENANCE)).astype(np.int8)
    columns = {"label": np.zeros(n, np.int64), "probability": np.ones(n, np.float32), "source": source}
    merged = nucdata.NucleusDataset(store, merged=MergedLabels("pannuke", columns))
    np.testing.assert_array_equal(merged.provenance, source)
    assert not merged.provenance.flags.writeable
    with pytest.warns(DeprecationWarning, match="provenance"):
        np.testing.assert_array_equal(merged.sources, source)
    assert nucdata.load("consep").provenance is None  # not a merged dataset
    rows = store.nucleus_slice(0)
    assert merged[0]["sources"].tolist() == source[rows].tolist()  # the sample key is unchanged
