"""Hostile or damaged inputs give typed errors naming the file and the fix (issue 11, "Low")."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy.io import savemat

import nucdata
from nucdata._util.images import read_rgb
from nucdata.acquire import extract
from nucdata.catalog import get_card
from nucdata.datasets import Region, converter_for, rasterize_regions
from nucdata.datasets.consep import read_label
from nucdata.datasets.nucls import read_fov_csv
from nucdata.datasets.pannuke import open_npy
from nucdata.errors import (
    CorruptArchiveError,
    InvalidArgumentError,
    InvalidCardError,
    MalformedAnnotationError,
    NucdataError,
)
from nucdata.store import StoreWriter


# -- CoNSeP .mat files (HoVer-Net ground truth: inst_map, type_map, inst_type, inst_centroid) ------
def _mat(path: Path, **override) -> Path:
    inst = np.zeros((8, 8), np.int32)
    inst[1:3, 1:3], inst[5:7, 5:7] = 1, 2
    data = {"inst_map": inst, "type_map": (inst > 0).astype(np.int32), "inst_type": np.array([[1], [2]]),
            "inst_centroid": np.array([[1.5, 1.5], [5.5, 5.5]])}
    data.update(override)
    savemat(path, data)
    return path


def test_consep_reference_file_reads(tmp_path):
    assert read_label(_mat(tmp_path / "ok.mat"))["inst_type"].tolist() == [1, 2]


@pytest.mark.parametrize(("override", "message"), [
    ({"inst_type": np.array(["a", "b"])}, "inst_type holds text"),
    ({"inst_type": np.array([np.array([1]), np.array([1, 2])], dtype=object)}, "inst_type holds a cell array"),
    ({"inst_map": np.where(np.eye(8) > 0, -3, 0).astype(np.int32)}, "negative ids"),
    ({"inst_centroid": np.array([[np.nan, 1.0], [2.0, 2.0]])}, "NaN or infinite"),
])
def test_consep_malformed_variables(tmp_path, override, message):
    path = _mat(tmp_path / "bad.mat", **override)
    with pytest.raises(MalformedAnnotationError, match=message) as info:
        read_label(path)
    assert str(path) in str(info.value)


# -- PanNuke .npy files -----------------------------------------------------------------------
def _npz_bytes() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, images=np.zeros((1, 4, 4, 3)))
    return buffer.getvalue()


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("images.npy", b"x")
    return buffer.getvalue()


@pytest.mark.parametrize(("content", "error", "message"), [
    (_npz_bytes, CorruptArchiveError, "zip or .npz archive"),
    (_zip_bytes, CorruptArchiveError, "zip or .npz archive"),
    (lambda: b"just text", CorruptArchiveError, "not an .npy array"),
    (None, MalformedAnnotationError, "single value"),
])
def test_pannuke_npy_that_is_not_an_array_of_patches(tmp_path, content, error, message):
    path = tmp_path / "images.npy"
    if content is None:
        np.save(path, np.array(3.0))
    else:
        path.write_bytes(content())
    with pytest.raises(error, match=message):
        open_npy(path)


def test_pannuke_uint8_images_convert(tmp_path):
    """PanNuke ships float64 images; a uint8 copy (a common re-save) converts the same."""
    fold = tmp_path / "src" / "Fold 1"
    fold.mkdir(parents=True)
    masks = np.zeros((2, 16, 16, 6))
    masks[:, 2:5, 2:5, 0] = 7
    masks[..., 5] = (masks[..., 0] == 0)
    np.save(fold / "images.npy", np.full((2, 16, 16, 3), 100, np.uint8))
    np.save(fold / "masks.npy", masks)
    np.save(fold / "types.npy", np.array(["Breast", "Colon"]))
    with StoreWriter(tmp_path / "out" / "1", "pannuke", "test") as writer:
        converter_for(get_card("pannuke")).convert(tmp_path / "src", writer)
        assert writer.images["nucleus_count"] == [1, 1]


# -- NuCLS CSV (columns per the dataset's README) -------------------------------------------
HEADER = ",raw_classification,main_classification,super_classification,type,xmin,ymin,xmax,ymax,coords_x,coords_y"
ROW = '1,tumor,tumor_nonMitotic,tumor_any,polyline,1,1,5,5,"1,5,5,1","1,1,5,5"'


@pytest.mark.parametrize(("body", "message"), [
    ((HEADER + "\n" + ROW + "\n").encode() + b"2,tum\xff\xfeor,x,y,polyline,1,1,5,5,\"1,5,5\",\"1,1,5\"\n", "not UTF-8"),
    ((HEADER + "\n" + ROW + "\n2,tumor,tumor_nonMitotic\n").encode(), "the row is short"),
    ((HEADER + "\n" + ROW.replace('"1,5,5,1"', '"1,5,5,1') + "\n").encode(), "not valid CSV"),
    ((HEADER + "\n" + '1,tumor,a,b,rectangle,inf,1,5,5,,\n').encode(), "not finite"),
    ((HEADER + "\n" + '1,tumor,a,b,polyline,1,1,5,5,"' + "1," * 70000 + '1","1"\n').encode(), "field larger"),
])
def test_nucls_csv_damage(tmp_path, body, message):
    path = tmp_path / "fov.csv"
    path.write_bytes(body)
    with pytest.raises(MalformedAnnotationError, match=message) as info:
        read_fov_csv(path)
    assert str(path) in str(info.value)


def test_nucls_infinite_vertex_is_dropped_and_counted(tmp_path):
    path = tmp_path / "fov.csv"
    path.write_text(HEADER + "\n" + ROW + "\n" + '2,tumor,a,b,polyline,1,1,5,5,"1,inf,5","1,1,5"\n')
    rows, _ = read_fov_csv(path)
    regions = [Region(str(r.source_id), r.vertices + 0.5, 0, r.raw, False, None) for r in rows]
    inst, kept, dropped = rasterize_regions(regions, (10, 10))
    assert kept == [0] and dropped["non_finite_vertices"] == 1 and dropped["outside_image"] == 0


def test_nan_vertices_have_their_own_dropped_reason():
    square = np.array([[1.0, 1.0], [6.0, 1.0], [6.0, 6.0], [1.0, 6.0]])
    regions = [Region("a", square, 0, "", False, None),
               Region("b", np.where(np.arange(8).reshape(4, 2) == 3, np.nan, square), 0, "", False, None)]
    _, kept, dropped = rasterize_regions(regions, (8, 8))
    assert kept == [0] and dropped["non_finite_vertices"] == 1 and dropped["outside_image"] == 0


# -- images ---------------------------------------------------------------------------------
def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    rgb = read_rgb(tmp_path / "grey16.png")
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255 and 120 <= rgb[32, 0, 0] <= 135
    assert (rgb == 255).mean() < 0.01  # not all white
    np.testing.assert_array_equal(rgb[..., 0], np.rint(values / 257).astype(np.uint8))


def test_image_over_the_pixel_limit_is_typed(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setenv("NUCDATA_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(CorruptArchiveError, match="NUCDATA_MAX_IMAGE_PIXELS"):
        read_rgb(tmp_path / "big.png")
    monkeypatch.setenv("NUCDATA_MAX_IMAGE_PIXELS", "0")  # the override
    assert read_rgb(tmp_path / "big.png").shape == (64, 64, 3)


def test_pillow_decompression_bomb_is_typed(tmp_path, monkeypatch):
    """Pillow's own DecompressionBombError (here at a lowered limit) becomes a typed error."""
    Image.new("RGB", (64, 64)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    monkeypatch.setenv("NUCDATA_MAX_IMAGE_PIXELS", "50")
    with pytest.raises(CorruptArchiveError, match="bomb.png: refused"):
        read_rgb(tmp_path / "bomb.png")


# -- archives -------------------------------------------------------------------------------
def _bomb(path: Path, megabytes: int) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("zeros.bin", b"\0" * (megabytes << 20))
    return path


def test_extraction_stops_at_the_size_limit(tmp_path, monkeypatch):
    archive = _bomb(tmp_path / "bomb.zip", 8)
    monkeypatch.delenv("NUCDATA_EXTRACT_LIMIT", raising=False)
    with pytest.raises(CorruptArchiveError, match="NUCDATA_EXTRACT_LIMIT") as info:
        extract(archive, tmp_path / "out", max_bytes=1 << 20)
    assert "zeros.bin" in str(info.value)
    monkeypatch.setenv("NUCDATA_EXTRACT_LIMIT", str(2 << 20))
    with pytest.raises(CorruptArchiveError):
        extract(archive, tmp_path / "out2")
    monkeypatch.setenv("NUCDATA_EXTRACT_LIMIT", "0")  # the override: no limit
    extract(archive, tmp_path / "out3")
    assert (tmp_path / "out3" / "zeros.bin").stat().st_size == 8 << 20


def test_default_extraction_limit_is_a_ratio_with_a_floor(tmp_path, monkeypatch):
    from nucdata.acquire._archive import MAX_RATIO, MIN_LIMIT, extraction_limit

    monkeypatch.delenv("NUCDATA_EXTRACT_LIMIT", raising=False)
    small = tmp_path / "small.zip"
    small.write_bytes(b"x" * 1000)
    assert extraction_limit(small) == MIN_LIMIT
    big = tmp_path / "big.bin"
    with open(big, "wb") as fh:
        fh.truncate(10 << 20)
    assert extraction_limit(big) == MAX_RATIO * (10 << 20)
    monkeypatch.setenv("NUCDATA_EXTRACT_LIMIT", "lots")
    with pytest.raises(InvalidArgumentError, match="NUCDATA_EXTRACT_LIMIT"):
        extraction_limit(small)


# -- card overrides -------------------------------------------------------------------------
@pytest.mark.parametrize(("entry", "message"), [
    ({"name": "../../etc/passwd"}, "not a plain file name"),
    ({"name": "ok.zip", "role": "../outside"}, "not a plain file name"),
    ({"name": "/abs.zip"}, "not a plain file name"),
    ({"name": "ok.zip", "sha256": "abc"}, "64 hex digits"),
    ({"name": "ok.zip", "mirrors": ["file:///etc/passwd"]}, "http"),
])
def test_card_override_cannot_name_files_outside(home, entry, message):
    (home / "registry").mkdir()
    (home / "registry" / "tnbc.json").write_text(json.dumps({"files": [entry]}))
    with pytest.raises(InvalidCardError, match=message) as info:
        get_card("tnbc")
    assert "tnbc.json" in str(info.value)


def test_card_override_that_is_not_an_object(home):
    (home / "registry").mkdir()
    (home / "registry" / "tnbc.json").write_text("[1, 2]")
    with pytest.raises(InvalidCardError, match="JSON object"):
        get_card("tnbc")


# -- command-line values --------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["export", "tnbc", "--format", "pannuke", "--out", "x", "--size", "0"],
    ["export", "tnbc", "--format", "pannuke", "--out", "x", "--size", "abc"],
    ["export", "tnbc", "--format", "hovernet-patches", "--out", "x", "--step", "0"],
    ["export", "tnbc", "--format", "pannuke", "--out", "x", "--mpp", "-1"],
])
def test_cli_values_are_validated(home, args):
    from nucdata.cli import main

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "Invalid value" in result.output


def test_every_error_class_is_a_nucdata_error():
    from nucdata.errors import CheckpointError, CheckpointMismatchError

    for cls in (CheckpointError, CheckpointMismatchError, InvalidCardError, nucdata.DataHomeError,
                nucdata.UnsafePickleError):
        assert issubclass(cls, NucdataError)
