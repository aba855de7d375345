"""Property-based fuzz of every native reader's header fields (issue 21).

Each test builds a small input of one dataset's native format from random header fields
(ImageScope XML attributes, MoNuSAC layer names, CoNSeP ``.mat`` variable shapes and
dtypes, NuCLS CSV columns and cells, PanNuke ``.npy`` headers and values, TNBC PNG
headers, TIFF/PNG image headers) and runs the reader on it, and the converter step
that follows where that is cheap. Every input either converts or raises a
``NucdataError`` subclass; anything else (a raw ``ValueError``, ``OverflowError``,
``struct.error``, a ``MemoryError``) fails the example. The pixel limit is lowered to
200,000 so that a header claiming a large image is refused instead of decoded, and each
test has a fixed number of examples (the whole file runs in about 20 s on 2 cores).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import struct
import tempfile
import xml.etree.ElementTree as ET
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from nucdata.catalog import get_card
from nucdata.datasets import ConversionReport, converter_for
from nucdata.errors import NucdataError
from nucdata.store import StoreWriter

#: examples per test; NUCDATA_FUZZ_EXAMPLES raises it for a longer local run
FUZZ = settings(max_examples=int(os.environ.get("NUCDATA_FUZZ_EXAMPLES", "60")), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PIXELS = "200000"


@contextlib.contextmanager
def _sandbox() -> Iterator[Path]:
    """A temporary folder, with the pixel limit lowered for the example."""
    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as mp:
        mp.setenv("NUCDATA_MAX_IMAGE_PIXELS", PIXELS)
        yield Path(folder)


def _converts_or_typed(call: Callable[[], Any]) -> Any:
    """``call()``'s result, or ``None`` when it raised a NucdataError; any other exception fails."""
    try:
        return call()
    except NucdataError:
        return None


# -- shared strategies -----------------------------------------------------------------------
_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=10)
NUMBER_TEXT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(["", "nan", "inf", "-inf", "1e999", "-1e999", "1e308", "0x10", "1_0", " 3 ", "٣", "1,5",
                     "4294967296", "9223372036854775808", "-0"]),
    _TEXT,
)
SMALL_FLOAT_TEXT = st.floats(-40, 40, allow_nan=False).map(lambda v: f"{v:.2f}")


# -- ImageScope XML (MoNuSeg, Kumar, MoNuSAC) --------------------------------------------------
def _imagescope_xml(path: Path, mpp: str | None, layers: list[tuple[str, list]]) -> Path:
    root = ET.Element("Annotations")
    if mpp is not None:
        root.set("MicronsPerPixel", mpp)
    for number, (name, regions) in enumerate(layers, 1):
        annotation = ET.SubElement(root, "Annotation", Id=str(number))
        ET.SubElement(ET.SubElement(annotation, "Attributes"), "Attribute", Name=name)
        regions_el = ET.SubElement(annotation, "Regions")
        for rid, area, negative, vertices in regions:
            region = ET.SubElement(regions_el, "Region", Id=rid, Area=area, NegativeROA=negative)
            verts = ET.SubElement(region, "Vertices")
            for x, y in vertices:
                ET.SubElement(verts, "Vertex", X=x, Y=y)
    ET.ElementTree(root).write(path, encoding="utf-8")
    return path


_VERTEX = st.tuples(st.one_of(SMALL_FLOAT_TEXT, NUMBER_TEXT), st.one_of(SMALL_FLOAT_TEXT, NUMBER_TEXT))
_SQUARE = [("4", "4"), ("14", "4"), ("14", "14"), ("4", "14")]  # a region the rasteriser keeps
_IDS_TEXT = st.one_of(st.integers(-5, 10**20).map(str), st.sampled_from(["²", "١٢", "-", "+7", " 8 "]), _TEXT)
_REGION = st.tuples(_IDS_TEXT, NUMBER_TEXT,
                    st.sampled_from(["0", "1", "", "yes"]), st.one_of(st.just(_SQUARE), st.lists(_VERTEX, max_size=7)))
_LAYERS = st.lists(st.tuples(st.one_of(st.sampled_from(["Epithelial", "Lymphocyte", "Macrophage", "Neutrophil",
                                                        "Ambiguous", ""]), _TEXT),
                             st.lists(_REGION, max_size=4)), max_size=3)


@FUZZ
@given(mpp=st.one_of(st.none(), NUMBER_TEXT), layers=_LAYERS)
def test_imagescope_attributes(mpp, layers):
    from nucdata.datasets import rasterize_regions, read_imagescope

    with _sandbox() as folder:
        path = _imagescope_xml(folder / "a.xml", mpp, layers)
        parsed = _converts_or_typed(lambda: read_imagescope(path))
        if parsed is not None:
            assert parsed.mpp is None or parsed.mpp > 0
            inst, kept, _ = rasterize_regions(parsed.regions, (24, 24))
            assert inst.shape == (24, 24) and int(inst.max(initial=0)) == len(kept)


@FUZZ
@given(mpp=st.one_of(st.none(), NUMBER_TEXT, SMALL_FLOAT_TEXT), layers=_LAYERS)
def test_monusac_xml_converts_or_is_typed(mpp, layers):
    converter = converter_for(get_card("monusac", packaged=True))
    with _sandbox() as folder:
        xml = _imagescope_xml(folder / "a.xml", mpp, layers)
        rgb = np.full((24, 24, 3), 128, np.uint8)
        with StoreWriter(folder / "store" / "1", "monusac", "test") as writer:
            _converts_or_typed(lambda: converter._convert_one(writer, ConversionReport(), Counter(), "img",
                                                              "train", "TCGA-AA-0000-01Z-00-DX1", xml, rgb))


# -- CoNSeP .mat variables --------------------------------------------------------------------------
_MAT_DTYPES = st.sampled_from([np.uint8, np.int16, np.int32, np.int64, np.uint64, np.float32, np.float64,
                               np.bool_, np.complex128])


@st.composite
def _mat_value(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["array", "array", "array", "text", "struct", "cell", "scalar"]))
    if kind == "text":
        return draw(st.text(alphabet="abc", max_size=5))
    if kind == "struct":
        return {"a": np.zeros(draw(st.integers(0, 3)))}
    if kind == "cell":
        return np.array([np.zeros(1), np.zeros(2)], dtype=object)
    if kind == "scalar":
        return draw(st.one_of(st.integers(-(2**62), 2**62), st.floats(allow_nan=True, allow_infinity=True)))
    shape = tuple(draw(st.lists(st.integers(0, 9), min_size=0, max_size=3)))
    dtype = np.dtype(draw(_MAT_DTYPES))
    n = int(np.prod(shape, dtype=np.int64))
    if dtype.kind == "f":
        values = draw(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=n, max_size=n))
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = draw(st.lists(st.integers(max(info.min, -(2**40)), min(info.max, 2**40)), min_size=n, max_size=n))
    elif dtype.kind == "b":
        values = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    else:
        values = draw(st.lists(st.complex_numbers(max_magnitude=10, allow_nan=False), min_size=n, max_size=n))
    return np.asarray(values, dtype=dtype).reshape(shape)


_MAT_KEYS = ("inst_map", "type_map", "inst_type", "inst_centroid")


@FUZZ
@given(values=st.fixed_dictionaries({}, optional={k: _mat_value() for k in _MAT_KEYS}),
       sound=st.sets(st.sampled_from(_MAT_KEYS)))
def test_consep_mat_variables(values, sound):
    from scipy.io import savemat

    from nucdata.datasets.consep import read_label

    inst = np.zeros((6, 6), np.int32)
    inst[1:3, 1:3], inst[3:5, 3:5] = 1, 2
    good = {"inst_map": inst, "type_map": (inst > 0).astype(np.int32), "inst_type": np.array([[1], [2]]),
            "inst_centroid": np.array([[1.5, 1.5], [3.5, 3.5]])}
    data = {k: good[k] for k in sound} | {k: v for k, v in values.items() if k not in sound}
    with _sandbox() as folder:
        path = folder / "a.mat"
        try:
            savemat(path, data)
        except Exception:  # noqa: BLE001 - scipy cannot write this value: nothing to read
            assume(False)
        label = _converts_or_typed(lambda: read_label(path))
        if label is not None:
            assert label["inst_map"].ndim == 2 and label["inst_centroid"].shape == (label["inst_type"].size, 2)


# -- NuCLS CSV columns ---------------------------------------------------------------------------------
_NUCLS_COLUMNS = ["", "raw_classification", "main_classification", "super_classification", "type",
                  "xmin", "ymin", "xmax", "ymax", "coords_x", "coords_y"]
_COORDS = st.one_of(st.lists(st.one_of(st.integers(-5, 40).map(str), NUMBER_TEXT), max_size=6).map(",".join),
                    _TEXT)
_CELL = {
    "": _IDS_TEXT,
    "raw_classification": st.one_of(st.sampled_from(["tumor", "lymphocyte", "fov_basic", "unlabeled", ""]), _TEXT),
    "type": st.one_of(st.sampled_from(["polyline", "rectangle", "POLYLINE", ""]), _TEXT),
    "coords_x": _COORDS, "coords_y": _COORDS,
}
_STEM = "TCGA-A1-A0SK-DX1_id-5ea40a88ddda5f8398990ccf_left-100_top-200_bottom-224_right-124"


@FUZZ
@given(columns=st.one_of(st.just(_NUCLS_COLUMNS), st.permutations(_NUCLS_COLUMNS),
                         st.lists(st.sampled_from(_NUCLS_COLUMNS), max_size=11)),
       rows=st.lists(st.fixed_dictionaries({c: _CELL.get(c, st.one_of(SMALL_FLOAT_TEXT, NUMBER_TEXT))
                                            for c in _NUCLS_COLUMNS}), max_size=5),
       raw=st.booleans())
def test_nucls_csv_columns(columns, rows, raw):
    converter = converter_for(get_card("nucls", packaged=True))
    with _sandbox() as folder:
        table = folder / f"{_STEM}.csv"
        if raw:  # cells written as they come: quotes and commas may break the CSV structure
            lines = [",".join(columns)] + [",".join(row.get(c, "") for c in columns) for row in rows]
            table.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
        else:
            with open(table, "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(columns)
                writer.writerows([[row.get(c, "") for c in columns] for row in rows])
        image = folder / f"{_STEM}.png"
        Image.fromarray(np.full((24, 24, 3), 90, np.uint8)).save(image)
        with StoreWriter(folder / "store" / "1", "nucls", "test") as writer:
            _converts_or_typed(lambda: converter._convert_fov(writer, ConversionReport(), Counter(), _STEM, image,
                                                              table, "fold1"))


# -- PanNuke .npy headers and values ------------------------------------------------------------------------
def _npy_with_header(path: Path, array: np.ndarray, descr: str | None, shape: str | None, fortran: str | None,
                     cut: int | None) -> None:
    """``array`` as .npy, with its header's fields replaced by the given text (None: as written)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    data = buffer.getvalue()
    length = struct.unpack("<H", data[8:10])[0]
    header = data[10 : 10 + length].decode("latin1")
    body = data[10 + length :]
    fields = {"descr": descr, "shape": shape, "fortran_order": fortran}
    for key, text in fields.items():
        if text is not None:
            start = header.index(f"'{key}': ") + len(key) + 4
            end = header.index(", '", start) if key != "shape" else header.index("), ", start) + 1
            header = header[:start] + text + header[end:]
    raw = header.encode("latin1", "replace")
    out = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(raw)) + raw + body
    path.write_bytes(out if cut is None else out[: max(0, len(out) - cut)])


_IDS = st.one_of(st.integers(0, 12).map(float), st.sampled_from([2.0**40, 2.0**53 + 1, 2.0**62, 1e300, -1.0,
                                                                  float("nan"), float("inf"), 0.5]))


@FUZZ
@given(n=st.integers(0, 3), side=st.integers(1, 12), channels=st.integers(0, 8), ids=st.lists(_IDS, max_size=4),
       image_dtype=st.sampled_from(["f8", "u1", "f4", "i2", "c16", "U3", "b1"]),
       mask_dtype=st.sampled_from(["f8", "u2", "i8", "f4", "u8", "b1"]),
       types_kind=st.sampled_from(["names", "numbers", "2d", "short"]),
       header=st.tuples(st.one_of(st.none(), st.sampled_from(["'<f8'", "'|O'", "'>i4'", "'<U2'", "'x'", "[('a','<f8')]",
                                                              "'<f8' + 1"])),
                        st.one_of(st.none(), st.sampled_from(["(2, 4, 4, 6)", "()", "(-1,)", "(10**12, 256, 256, 6)",
                                                              "(2,", "(1, 2, 3, 4, 5, 6, 7)"])),
                        st.one_of(st.none(), st.sampled_from(["True", "1", "'no'"])),
                        st.one_of(st.none(), st.integers(1, 64))),
       target=st.sampled_from(["images", "masks", "types"]))
def test_pannuke_npy_headers_and_values(n, side, channels, ids, image_dtype, mask_dtype, types_kind, header, target):
    converter = converter_for(get_card("pannuke", packaged=True))
    masks = np.zeros((n, side, side, channels), np.float64)
    for k, value in enumerate(ids):
        if n and channels and side > k:
            masks[0, k, : side // 2 + 1, k % channels] = value
    with np.errstate(all="ignore"):
        arrays = {
            "images": np.full((n, side, side, 3), 100).astype(image_dtype),
            "masks": masks.astype(mask_dtype),
            "types": {"names": np.array(["Breast"] * n), "numbers": np.arange(n), "2d": np.array([["a"] * n]),
                      "short": np.array(["Colon"] * max(0, n - 1))}[types_kind],
        }
    with _sandbox() as folder:
        fold = folder / "src" / "Fold 1"
        fold.mkdir(parents=True)
        for name, array in arrays.items():
            if name == target and any(h is not None for h in header):
                _npy_with_header(fold / f"{name}.npy", array, *header)
            else:
                np.save(fold / f"{name}.npy", array)
        with StoreWriter(folder / "store" / "1", "pannuke", "test") as writer:
            _converts_or_typed(lambda: converter.convert(folder / "src", writer, jobs=1))


# -- TNBC PNG headers, and image headers (PNG, TIFF) -----------------------------------------------------------
_MODES = st.sampled_from(["1", "L", "P", "LA", "RGB", "RGBA", "I;16", "I", "F"])


def _image_bytes(mode: str, width: int, height: int, fmt: str, compression: str | None) -> bytes:
    rng = np.random.default_rng(width * 31 + height)
    array = rng.integers(0, 255, (height, width, 4), dtype=np.uint8)
    image = Image.fromarray(array, "RGBA").convert(mode) if mode not in ("I;16", "I", "F") else \
        Image.fromarray(array[..., 0].astype(np.uint16) * 200).convert(mode)
    buffer = io.BytesIO()
    options = {"compression": compression} if fmt == "TIFF" and compression else {}
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _png_with_ihdr(data: bytes, width: int | None, height: int | None, depth: int | None, colour: int | None,
                   fix_crc: bool) -> bytes:
    """A PNG whose IHDR fields are replaced (the CRC recomputed or left stale)."""
    ihdr = bytearray(data[16:29])
    for offset, fmt, value in ((0, ">I", width), (4, ">I", height), (8, ">B", depth), (9, ">B", colour)):
        if value is not None:
            ihdr[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr))) if fix_crc else data[29:33]
    return data[:16] + bytes(ihdr) + crc + data[33:]


@FUZZ
@given(mode=_MODES, width=st.integers(1, 24), height=st.integers(1, 24),
       ihdr=st.tuples(st.one_of(st.none(), st.sampled_from([0, 1, 2**31 - 1, 2**32 - 1, 100000, 30])),
                      st.one_of(st.none(), st.sampled_from([0, 1, 2**31, 99999, 30])),
                      st.one_of(st.none(), st.sampled_from([0, 1, 2, 3, 7, 8, 16, 255])),
                      st.one_of(st.none(), st.sampled_from([0, 1, 2, 3, 4, 6, 7, 255])),
                      st.booleans()),
       cut=st.one_of(st.none(), st.integers(1, 200)))
def test_tnbc_png_headers(mode, width, height, ihdr, cut):
    from nucdata._util.images import read_gray, read_rgb
    from nucdata.datasets.tnbc import binary_to_instances

    try:
        data = _image_bytes(mode, width, height, "PNG", None)
    except (OSError, ValueError, KeyError):  # Pillow cannot write this mode as PNG
        assume(False)
    data = _png_with_ihdr(data, *ihdr)
    if cut is not None:
        data = data[: max(8, len(data) - cut)]
    with _sandbox() as folder:
        path = folder / "01_1.png"
        path.write_bytes(data)
        mask = _converts_or_typed(lambda: read_gray(path))
        if mask is not None:
            assert mask.ndim == 2 and mask.size <= int(PIXELS)
            inst, _ = binary_to_instances(mask)
            assert inst.shape == mask.shape
        rgb = _converts_or_typed(lambda: read_rgb(path))
        if rgb is not None:
            assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8


@FUZZ
@given(mode=_MODES, width=st.integers(1, 24), height=st.integers(1, 24),
       fmt=st.sampled_from(["TIFF", "PNG"]),
       compression=st.sampled_from([None, "tiff_lzw", "packbits", "tiff_deflate", "tiff_adobe_deflate"]),
       flips=st.lists(st.tuples(st.integers(0, 160), st.integers(0, 255)), max_size=6),
       cut=st.one_of(st.none(), st.integers(1, 300)))
def test_image_headers(mode, width, height, fmt, compression, flips, cut):
    from nucdata._util.images import read_rgb

    try:
        data = bytearray(_image_bytes(mode, width, height, fmt, compression))
    except (OSError, ValueError, KeyError):
        assume(False)
    for offset, value in flips:  # header bytes (TIFF tags and offsets, PNG chunks) changed at random
        if offset < len(data):
            data[offset] = value
    if cut is not None:
        data = data[: max(1, len(data) - cut)]
    with _sandbox() as folder:
        path = folder / f"image.{'tif' if fmt == 'TIFF' else 'png'}"
        path.write_bytes(bytes(data))
        rgb = _converts_or_typed(lambda: read_rgb(path))
        if rgb is not None:
            assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8
            assert rgb.shape[0] * rgb.shape[1] <= int(PIXELS)
