"""Sizes are checked from headers before anything is allocated (issue 21, point 6).

The inputs that used to allocate gigabytes or terabytes run in a child process whose
address space is capped (``RLIMIT_AS``, like ``ulimit -v``): a typed error (or a correct
result) comes back; a raw ``MemoryError`` or a kill would mean the allocation happened.
"""

from __future__ import annotations

import io
import os
import resource
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

import nucdata
import nucdata.exports
from nucdata.errors import CorruptArchiveError, MalformedAnnotationError

CAP = 1024**3  # the child's address space: 1 GiB, far below what the old code asked for


def _capped(code: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a child limited to :data:`CAP` bytes of address space."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))

    child_env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], preexec_fn=limit, env=child_env,  # noqa: PLW1509
                          capture_output=True, text=True, timeout=timeout)


# -- CoNSeP .mat: dimensions from the header --------------------------------------------------
def huge_mat(path: Path, rows: int, cols: int, extra: dict) -> Path:
    """A MATLAB v5 file whose compressed uint8 ``inst_map`` is ``rows x cols`` zeros (a small file).

    Written by hand, streaming the zeros through zlib, so that the test itself never holds
    the array: the header declares the dimensions, the data is a zlib stream.
    """
    n = rows * cols
    pad = (-n) % 8
    body = struct.pack("<IIII", 6, 8, 9, 0)  # array flags: mxUINT8_CLASS
    body += struct.pack("<IIii", 5, 8, rows, cols)  # dimensions
    body += struct.pack("<II", 1, 8) + b"inst_map"  # name (8 bytes, no padding)
    body += struct.pack("<II", 2, n)  # miUINT8 data follows
    comp = zlib.compressobj(1)
    chunks = [comp.compress(struct.pack("<II", 14, len(body) + n + pad) + body)]
    zero, left = bytes(1 << 24), n + pad
    while left:
        k = min(left, len(zero))
        chunks.append(comp.compress(zero[:k]))
        left -= k
    chunks.append(comp.flush())
    payload = b"".join(chunks)
    header = b"MATLAB 5.0 MAT-file, crafted by the nucdata tests".ljust(116, b" ") + bytes(8) + b"\x00\x01IM"
    rest = io.BytesIO()
    savemat(rest, extra)
    path.write_bytes(header + struct.pack("<II", 15, len(payload)) + payload + rest.getvalue()[128:])
    return path


def test_a_20000_square_inst_map_is_refused_from_its_header(tmp_path):
    """Before: loadmat decoded 400 MB and the int64 copy asked for 3.2 GB (raw _ArrayMemoryError)."""
    path = huge_mat(tmp_path / "bomb.mat", 20000, 20000, {
        "type_map": np.zeros((2, 2)), "inst_type": np.array([[1]]), "inst_centroid": np.zeros((1, 2))})
    assert path.stat().st_size < 5_000_000
    child = _capped(f"""
        from pathlib import Path
        from nucdata.datasets.consep import read_label
        from nucdata.errors import NucdataError
        try:
            read_label(Path({str(path)!r}))
        except NucdataError as exc:
            print(type(exc).__name__, exc)
    """)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.startswith("MalformedAnnotationError"), child.stdout
    assert "20000 x 20000" in child.stdout and "NUCDATA_MAX_IMAGE_PIXELS" in child.stdout


def test_the_mat_limit_is_the_image_pixel_limit(tmp_path, monkeypatch):
    from nucdata.datasets.consep import read_label

    inst = np.zeros((40, 40), np.int32)
    inst[1:3, 1:3] = 1
    path = tmp_path / "ok.mat"
    savemat(path, {"inst_map": inst, "type_map": inst, "inst_type": np.array([[1]]),
                   "inst_centroid": np.array([[1.5, 1.5]])})
    assert read_label(path)["inst_map"].shape == (40, 40)
    monkeypatch.setenv("NUCDATA_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(MalformedAnnotationError, match="40 x 40 .*NUCDATA_MAX_IMAGE_PIXELS"):
        read_label(path)
    monkeypatch.setenv("NUCDATA_MAX_IMAGE_PIXELS", "0")  # the override: no limit
    assert read_label(path)["inst_type"].tolist() == [1]


def test_a_mat_struct_is_refused_before_it_is_read(tmp_path):
    from nucdata.datasets.consep import read_label

    inst = np.zeros((4, 4), np.int32)
    path = tmp_path / "struct.mat"
    savemat(path, {"inst_map": {"a": np.zeros(3)}, "type_map": inst, "inst_type": np.array([[1]]),
                   "inst_centroid": np.zeros((1, 2))})
    with pytest.raises(MalformedAnnotationError, match="inst_map holds a cell array or struct"):
        read_label(path)


# -- instance ids against the image size ------------------------------------------------------
def _pannuke_fold(root: Path, top_id: float) -> Path:
    fold = root / "src" / "Fold 1"
    fold.mkdir(parents=True)
    masks = np.zeros((2, 32, 32, 6))
    masks[0, 2:6, 2:6, 0] = top_id  # one nucleus with a huge id
    masks[0, 10:14, 10:14, 1] = 3
    masks[1, 4:8, 4:8, 2] = 7
    masks[..., 5] = masks[..., :5].sum(-1) == 0
    np.save(fold / "images.npy", np.full((2, 32, 32, 3), 120.0))
    np.save(fold / "masks.npy", masks)
    np.save(fold / "types.npy", np.array(["Breast", "Colon"]))
    return root / "src"


_CONVERT = """
    from pathlib import Path
    from nucdata.catalog import get_card
    from nucdata.datasets import converter_for
    from nucdata.errors import NucdataError
    from nucdata.store import StoreWriter
    try:
        with StoreWriter(Path({out!r}), "pannuke", "test") as writer:
            converter_for(get_card("pannuke")).convert(Path({src!r}), writer, jobs=1)
            print("converted", writer.images["nucleus_count"], writer._nuclei["source_id"][0].tolist())
    except NucdataError as exc:
        print(type(exc).__name__, exc)
"""


def test_a_pannuke_id_of_2_to_the_40_converts_without_a_table_of_that_size(tmp_path):
    """Before: np.bincount over ids up to 2**40 asked for 8 TiB."""
    src = _pannuke_fold(tmp_path, 2.0**40)
    child = _capped(_CONVERT.format(out=str(tmp_path / "out" / "1"), src=str(src)))
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.startswith("converted [2, 1]"), child.stdout
    assert str(2**40) in child.stdout  # the id the file gave is kept as the nucleus's source id


def test_relabelling_huge_ids_matches_the_table_path():
    from nucdata._util.instances import count_ids, relabel_sequential

    rng = np.random.default_rng(0)
    small = rng.integers(0, 6, (64, 64)).astype(np.int64)
    for ids in (small, small * 2**40):
        labels, original = relabel_sequential(ids)
        present = np.unique(ids[ids > 0])
        assert original.tolist() == present.tolist() and count_ids(ids) == present.size
        np.testing.assert_array_equal(labels, np.searchsorted(present, ids) + 1 - (ids == 0) * (
            np.searchsorted(present, ids) + 1))


def test_pannuke_ids_beyond_int64_keys_are_typed(tmp_path):
    src = _pannuke_fold(tmp_path, 2.0**62)
    child = _capped(_CONVERT.format(out=str(tmp_path / "out" / "1"), src=str(src)))
    assert child.stdout.startswith("MalformedAnnotationError") and "instance id above" in child.stdout, \
        child.stdout + child.stderr[-1000:]


# -- one pixel limit in every decoder path ----------------------------------------------------
def test_the_svs_fallback_keeps_the_pixel_limit(tmp_path, monkeypatch):
    """Before: Pillow refused the image, and tifffile then decoded it without any limit."""
    tifffile = pytest.importorskip("tifffile")
    from nucdata.datasets.monusac import read_svs

    path = tmp_path / "slide.svs"
    tifffile.imwrite(path, np.full((100, 100, 3), 200, np.uint8), photometric="rgb")
    assert read_svs(path).shape == (100, 100, 3)
    monkeypatch.setenv("NUCDATA_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(CorruptArchiveError, match="100x100 pixels is above the limit of 1,000"):
        read_svs(path)


# -- export patch sides and the resampling factor ------------------------------------------------
@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from helpers import demo_home

    with demo_home(tmp_path_factory.mktemp("home"), ("consep",)) as home:
        yield home


@pytest.mark.parametrize(("args", "option"), [
    (["--format", "pannuke", "--size", "1000000"], "--size"),
    (["--format", "hovernet-patches", "--win", "100000", "--step", "100000"], "--win"),
])
def test_huge_export_patches_are_refused_before_allocating(prepared, tmp_path, args, option):
    """Before: a (1e6, 1e6, 6) float64 mask (48 TB) was allocated per patch."""
    child = _capped(f"""
        import sys
        from nucdata.cli import main
        sys.argv = ["nucdata", "export", "consep", "--label-set", "pannuke", "--out", {str(tmp_path / 'out')!r},
                    *{args!r}]
        main()
    """, env={"NUCDATA_HOME": str(prepared)})
    assert child.returncode == 2, child.stderr[-2000:]
    assert f"{option} {args[-1] if option == '--size' else args[-3]}" in child.stderr or option in child.stderr
    assert "NUCDATA_MAX_PATCH_SIDE" in child.stderr and "Traceback" not in child.stderr
    assert not (tmp_path / "out").exists()


def test_the_patch_side_limit_has_an_override(monkeypatch):
    from nucdata._util.limits import check_patch_side

    with pytest.raises(nucdata.SizeLimitError, match="NUCDATA_MAX_PATCH_SIDE"):
        check_patch_side(4096, "--size")
    monkeypatch.setenv("NUCDATA_MAX_PATCH_SIDE", "8192")
    assert check_patch_side(4096, "--size") == 4096
    monkeypatch.setenv("NUCDATA_MAX_PATCH_SIDE", "lots")
    with pytest.raises(nucdata.InvalidArgumentError, match="not a non-negative number"):
        check_patch_side(4096, "--size")


def test_a_2500x_upscale_is_refused_with_its_override(prepared, monkeypatch):
    """Before: --mpp 1e-4 resampled a 0.25 um/px image 2500 times per side, writing for hours."""
    child = _capped("""
        import nucdata
        try:
            nucdata.load("consep", label_set="pannuke").tiles(size=64, mpp=1e-4)
            print("accepted")
        except nucdata.NucdataError as exc:
            print(type(exc).__name__, exc)
    """, env={"NUCDATA_HOME": str(prepared)}, timeout=60)
    assert child.stdout.startswith("SizeLimitError"), child.stdout + child.stderr[-1000:]
    assert "enlarged 2,500 times" in child.stdout and "NUCDATA_MAX_RESAMPLE" in child.stdout
    ds = nucdata.load("consep", label_set="pannuke")
    with pytest.raises(nucdata.SizeLimitError, match="NUCDATA_MAX_RESAMPLE"):
        nucdata.exports.export(ds, "pannuke", Path(os.environ["NUCDATA_HOME"]) / "x", mpp=1e-4, size=64)
    with pytest.raises(nucdata.SizeLimitError, match="shrunk"):
        ds.tiles(size=64, mpp=1000.0)
    assert len(ds.tiles(size=64, mpp=0.5))  # 2x: within the limit
    monkeypatch.setenv("NUCDATA_MAX_RESAMPLE", "0")  # the override
    from nucdata.views import image_scales

    assert float(image_scales(ds, 1e-4)[0]) == pytest.approx(1e-4 / 0.25)
