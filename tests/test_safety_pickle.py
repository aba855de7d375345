"""Files from elsewhere are data, never code: the allow-list unpickler and weights-only checkpoints."""

from __future__ import annotations

import collections
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import nucdata
from nucdata._util import safe_pickle
from nucdata.errors import (
    CorruptArchiveError,
    InvalidArgumentError,
    NucdataError,
    UnsafePickleError,
)


class _Payload:
    """Unpickling this calls ``os.system``, which creates ``marker`` (plain pickle.load runs it)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Exec:
    """A payload through ``builtins.exec``: another global a hostile pickle may use."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _published_table() -> dict:
    return {"img_1.png": [[[10.5, 3.25], 2, 0.875, -1], [[1.0, 2.0], -2, float("nan"), 3]], "img_2.png": []}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_containers_and_numpy_load_under_every_protocol(protocol):
    obj = {
        "table": _published_table(), "array": np.arange(6, dtype=np.float32).reshape(2, 3),
        "scalar": np.int64(7), "dtype": np.dtype(">f4"), "set": {1, 2}, "frozen": frozenset("ab"),
        "ordered": collections.OrderedDict(a=1), "complex": 1 + 2j, "bytes": b"\x00\xff",
        "big_endian": np.arange(3, dtype=">u2"), "fortran": np.asfortranarray(np.ones((2, 3), "f8")),
        "flags": np.array([True, False]), "empty_bytes": b"", "empty": np.zeros((0, 2), "i4"),
    }
    blob = pickle.dumps(obj, protocol=protocol)
    got, plain = safe_pickle.loads(blob), pickle.loads(blob)
    assert got["table"]["img_1.png"][0] == [[10.5, 3.25], 2, 0.875, -1]
    np.testing.assert_array_equal(got["array"], obj["array"])
    assert got["array"].dtype == np.float32 and got["scalar"] == 7 and got["dtype"] == np.dtype(">f4")
    assert got["set"] == {1, 2} and got["frozen"] == frozenset("ab") and got["bytes"] == b"\x00\xff"
    for key in ("big_endian", "fortran", "flags", "empty"):  # as numpy's own unpickling makes them
        np.testing.assert_array_equal(got[key], obj[key])
        assert got[key].dtype == plain[key].dtype and got[key].flags == plain[key].flags
    assert got["empty_bytes"] == b"" and got["ordered"] == collections.OrderedDict(a=1)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("value", [
    np.dtype("<U5"), np.zeros(2, dtype=[("x", "f4"), ("y", "i8")]), np.array([1, "a"], dtype=object),
    np.array(["ab"]), np.zeros(2, "c16"), np.datetime64("2020-01-01"),
], ids=["str-dtype", "records", "objects", "str-array", "complex-array", "datetime"])
def test_numpy_beyond_plain_numbers_is_refused(protocol, value):
    """Memory safety (issue 21): only bool, int, uint and float dtypes are ever built."""
    with pytest.raises(UnsafePickleError, match="refused"):
        safe_pickle.loads(pickle.dumps({"x": value}, protocol=protocol), "odd.pkl")


def test_numpy1_module_names_are_accepted():
    """The authors' files were written with numpy 1 (``numpy.core.multiarray``)."""
    blob = pickle.dumps(np.arange(4, dtype=np.int16), protocol=2)
    legacy = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in legacy
    np.testing.assert_array_equal(safe_pickle.loads(legacy), np.arange(4, dtype=np.int16))


@pytest.mark.parametrize("payload", [_Payload, _Exec])
def test_code_in_a_pickle_is_refused_and_never_runs(tmp_path, payload):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"img.png": [payload(marker)]}))
    with pytest.raises(UnsafePickleError) as info:
        safe_pickle.load(path)
    assert str(path) in str(info.value)
    assert info.value.name in ("posix.system", "nt.system", "builtins.exec")
    assert not marker.exists()
    assert isinstance(info.value, NucdataError)


def test_array_subclass_hooks_are_refused():
    blob = pickle.dumps(np.ma.masked_array([1, 2], mask=[0, 1]))
    with pytest.raises(UnsafePickleError, match="numpy.ma"):
        safe_pickle.loads(blob, "masked.pkl")


def test_truncated_pickle_is_a_typed_error(tmp_path):
    path = tmp_path / "short.pkl"
    path.write_bytes(pickle.dumps(_published_table())[:-5])
    with pytest.raises(CorruptArchiveError, match="short.pkl"):
        safe_pickle.load(path)


def test_open_merged_refuses_a_crafted_pickle(tmp_path):
    marker = tmp_path / "ran"
    folder = tmp_path / "merged"
    (folder / "pannuke").mkdir(parents=True)
    (folder / "pannuke" / "consep.pkl").write_bytes(pickle.dumps({"img.png": [[[1, 2], _Payload(marker), 0.5, -1]]}))
    (folder / "pannuke" / "monuseg.pkl").write_bytes(pickle.dumps(_published_table(), protocol=2))
    merged = nucdata.open_merged(folder)
    with pytest.raises(UnsafePickleError, match="consep.pkl"):
        merged.table("pannuke", "consep")
    assert not marker.exists()
    table = merged.table("pannuke", "monuseg")  # an honest file beside it still reads
    assert table.sizes["nucleus"] == 2 and int(table["predicted"][0]) == 2


def test_crafted_checkpoint_is_refused_and_never_runs(tmp_path):
    from nucdata.errors import CheckpointError
    from nucdata_models.checkpoint import load_checkpoint

    marker = tmp_path / "ran"
    path = tmp_path / "model.pt"
    torch.save({"state": {"w": torch.zeros(2)}, "meta_json": "{}", "hook": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="system") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and isinstance(info.value, NucdataError)
    assert not marker.exists()


def test_checkpoint_errors_are_nucdata_errors(tmp_path):
    from nucdata_models.checkpoint import (
        CheckpointError,
        CheckpointMismatchError,
        load_checkpoint,
        save_checkpoint,
    )

    assert issubclass(CheckpointMismatchError, NucdataError) and issubclass(CheckpointError, NucdataError)
    path = save_checkpoint(tmp_path / "m.pt", {"w": {"x": torch.ones(1)}}, {"label_sets": []})
    state, meta = load_checkpoint(path)
    assert torch.equal(state["w"]["x"], torch.ones(1)) and meta["label_sets"] == []
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="m.pt"):
        load_checkpoint(path)


# -- memory safety (issue 21): pickles written opcode by opcode, never with our writer ----
_MA = "numpy._core.multiarray"


def _u(text: str) -> bytes:
    data = text.encode()
    return pickle.SHORT_BINUNICODE + bytes([len(data)]) + data


def _b(data: bytes) -> bytes:
    return pickle.BINBYTES + struct.pack("<I", len(data)) + data


def _i(n: int) -> bytes:
    return pickle.BININT + struct.pack("<i", n)


def _g(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _tuple(*parts: bytes) -> bytes:
    return pickle.MARK + b"".join(parts) + pickle.TUPLE


def _blob(*parts: bytes) -> bytes:
    return pickle.PROTO + b"\x04" + b"".join(parts) + pickle.STOP


def _dtype(code: str, *state: bytes) -> bytes:
    """``numpy.dtype(code, False, True)`` then BUILD with ``state`` (a pickled tuple's items)."""
    return (_g("numpy", "dtype") + _tuple(_u(code), pickle.NEWFALSE, pickle.NEWTRUE) + pickle.REDUCE
            + _tuple(*state) + pickle.BUILD)


def _plain_state(endian: str = "<") -> tuple[bytes, ...]:
    return (_i(3), _u(endian), pickle.NONE, pickle.NONE, pickle.NONE, _i(-1), _i(-1), _i(0))


def _fields_state(inner: bytes, offset: int, elsize: int = 8, flags: int = 0) -> tuple[bytes, ...]:
    """A structured state ``(3, '|', None, ('f',), {'f': (inner, offset)}, elsize, 1, flags)``."""
    fields = pickle.EMPTY_DICT + _u("f") + _tuple(inner, _i(offset)) + pickle.SETITEM
    return (_i(3), _u("|"), pickle.NONE, _tuple(_u("f")), fields, _i(elsize), _i(1), _i(flags))


_OBJECT_DTYPE = _dtype("O8", _i(3), _u("|"), pickle.NONE, pickle.NONE, pickle.NONE, _i(-1), _i(-1), _i(63))


def _frombuffer(buf: bytes, dtype: bytes, shape: bytes) -> bytes:
    return (_g("numpy._core.numeric", "_frombuffer")
            + _tuple(_b(buf), dtype, shape, _u("C")) + pickle.REDUCE)


def _refusal(blob: bytes, name: str = "crafted.pkl") -> UnsafePickleError:
    with pytest.raises(UnsafePickleError) as info:
        safe_pickle.loads(blob, name)
    assert name in str(info.value)
    return info.value


def test_handmade_helpers_make_what_numpy_reads():
    """The opcode helpers below are right: a plain dtype and array built with them load."""
    got = safe_pickle.loads(_blob(_frombuffer(struct.pack("<2d", 1.5, 2.5), _dtype("f8", *_plain_state()),
                                              _tuple(_i(2)))))
    np.testing.assert_array_equal(got, [1.5, 2.5])
    assert safe_pickle.loads(_blob(_dtype("i4", *_plain_state(">")))) == np.dtype(">i4")


def test_object_field_dtype_through_build_is_refused():
    """An object field with flags 0: numpy would read the next 8 bytes as a PyObject pointer."""
    crafted = _frombuffer(b"A" * 8, _dtype("V8", *_fields_state(_OBJECT_DTYPE, 0)), _tuple(_i(1)))
    err = _refusal(_blob(crafted, pickle.BINGET + b"\x00"))
    assert "dtype" in str(err)
    # the same state on a numeric type string is refused at BUILD, before numpy sees it
    err = _refusal(_blob(_dtype("f8", *_fields_state(_dtype("f8", *_plain_state()), 0))))
    assert err.name == "dtype state" and "fields" in str(err)


def test_field_offset_beyond_the_item_size_is_refused():
    inner = _dtype("f8", *_plain_state())
    for code in ("V8", "f8"):
        err = _refusal(_blob(_frombuffer(b"B" * 8, _dtype(code, *_fields_state(inner, 1 << 20)), _tuple(_i(1)))))
        assert "dtype" in str(err)


@pytest.mark.parametrize("case", ["object dtype", "bytes shorter than the shape", "rawdata a list",
                                  "structured dtype"])
def test_reconstruct_with_a_crafted_array_state_is_refused(case):
    dtype = {"object dtype": _OBJECT_DTYPE, "structured dtype": _dtype("f8", *_fields_state(_OBJECT_DTYPE, 0))}
    raw = {"bytes shorter than the shape": _b(b"C" * 8), "rawdata a list": pickle.EMPTY_LIST}.get(case, _b(b"C" * 32))
    shape = _tuple(_i(1 << 20)) if case == "bytes shorter than the shape" else _tuple(_i(4))
    crafted = (_g(_MA, "_reconstruct") + _tuple(_g("numpy", "ndarray"), _tuple(_i(0)), _b(b"b")) + pickle.REDUCE
               + _tuple(_i(1), shape, dtype.get(case, _dtype("f8", *_plain_state())), pickle.NEWFALSE, raw)
               + pickle.BUILD)
    _refusal(_blob(crafted))


@pytest.mark.parametrize("case", ["object field", "wrong length", "unicode dtype"])
def test_multiarray_scalar_with_a_crafted_dtype_is_refused(case):
    dtype = {"object field": _dtype("V8", *_fields_state(_OBJECT_DTYPE, 0)),
             "unicode dtype": _dtype("U2", _i(3), _u("<"), pickle.NONE, pickle.NONE, pickle.NONE, _i(8),
                                     _i(4), _i(8))}.get(case, _dtype("f8", *_plain_state()))
    data = b"\x01" if case == "wrong length" else b"A" * 8
    _refusal(_blob(_g(_MA, "scalar") + _tuple(dtype, _b(data)) + pickle.REDUCE))


def test_numpy_scalars_and_big_endian_dtypes_still_load():
    got = safe_pickle.loads(_blob(_g(_MA, "scalar") + _tuple(_dtype("i8", *_plain_state(">")),
                                                            _b((7).to_bytes(8, "big"))) + pickle.REDUCE))
    assert got == 7 and isinstance(got, np.integer)


_CHILD = r"""
import sys, time
try:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))
except (ImportError, ValueError, OSError) as exc:
    print("NOLIMIT", exc)
    sys.exit(0)
from nucdata._util import safe_pickle
from nucdata.errors import NucdataError
start = time.perf_counter()
try:
    safe_pickle.load(sys.argv[1])
    print("LOADED")
except NucdataError as exc:
    print(type(exc).__name__, getattr(exc, "name", ""), time.perf_counter() - start, sep="\t")
    print(exc)
"""


def _load_in_child(tmp_path: Path, blob: bytes, limit: int = 1 << 30) -> tuple[str, str, float, str]:
    """Load ``blob`` in a child limited to ``limit`` bytes of address space: a regression that
    allocates what the pickle asks for fails there, not in the test runner."""
    path = tmp_path / "bomb.pkl"
    path.write_bytes(blob)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(limit)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, f"the child died ({done.returncode}): {done.stderr[-2000:]}"
    if done.stdout.startswith("NOLIMIT"):
        pytest.skip(f"cannot limit a child's memory here: {done.stdout}")
    head, _, message = done.stdout.partition("\n")
    kind, name, seconds = head.split("\t")
    return kind, name, float(seconds), message


_BOMBS = {
    # 32 bytes: bytearray(1_500_000_000)
    "bytearray(1.5e9)": _blob(_g("builtins", "bytearray") + _i(1_500_000_000) + pickle.TUPLE1 + pickle.REDUCE),
    "frozenset(range(3e8))": _blob(_g("builtins", "frozenset") + _g("builtins", "range") + _i(300_000_000)
                                   + pickle.TUPLE1 + pickle.REDUCE + pickle.TUPLE1 + pickle.REDUCE),
    "bytes(3e8)": _blob(_g("builtins", "bytes") + _i(300_000_000) + pickle.TUPLE1 + pickle.REDUCE),
    "nested tuples": _blob(pickle.EMPTY_TUPLE + pickle.TUPLE1 * 1_000_000),
    "nested lists": _blob(pickle.EMPTY_LIST * 200_000 + pickle.APPEND * 199_999),
    "str of 2**62 bytes": _blob(b"\x8d" + struct.pack("<Q", 1 << 62) + b"x"),
    "str of 4 GiB": _blob(pickle.BINUNICODE + struct.pack("<I", 0xFFFFFFFF) + b"x"),
    "bytearray of 2**40 bytes": _blob(b"\x96" + struct.pack("<Q", 1 << 40)),
    "array of 2**40 floats": _blob(_g(_MA, "_reconstruct") + _tuple(_g("numpy", "ndarray"), _tuple(_i(0)), _b(b"b"))
                                   + pickle.REDUCE + _tuple(_i(1), _tuple(_i(1 << 20), _i(1 << 20)),
                                                            _dtype("f8", *_plain_state()), pickle.NEWFALSE, _b(b""))
                                   + pickle.BUILD),
    # a list of 10,000 ints, then a list of 20,000 memo references to it: 200 million values
    "memo amplification": _blob(pickle.EMPTY_LIST + pickle.MEMOIZE + pickle.MARK + _i(7) * 10_000 + pickle.APPENDS
                                + pickle.EMPTY_LIST + pickle.MARK + (pickle.BINGET + b"\x00") * 20_000
                                + pickle.APPENDS),
    "DUP amplification": _blob(pickle.EMPTY_LIST + pickle.MARK + pickle.EMPTY_LIST + pickle.MARK + _i(7) * 10_000
                               + pickle.APPENDS + pickle.DUP * 20_000 + pickle.APPENDS),
    # 60 levels of [x, x]: 2**60 values from a few hundred bytes
    "billion laughs": _blob(_i(1) + b"".join(pickle.MEMOIZE + pickle.POP + pickle.EMPTY_LIST + pickle.MARK
                                             + (pickle.BINGET + bytes([k])) * 2 + pickle.APPENDS
                                             for k in range(60))),
}


@pytest.mark.parametrize("bomb", list(_BOMBS))
def test_allocation_bombs_are_refused_fast_before_allocating(tmp_path, bomb):
    kind, name, seconds, message = _load_in_child(tmp_path, _BOMBS[bomb])
    assert kind == "UnsafePickleError", message
    assert name != "memory", f"refused only because the child ran out of memory: {message}"
    assert "bomb.pkl" in message and seconds < 5, message


@pytest.mark.parametrize("bomb", ["nested tuples", "str of 2**62 bytes", "memo amplification", "billion laughs"])
def test_bombs_are_refused_in_process_too(bomb):
    err = _refusal(_BOMBS[bomb])
    if bomb == "nested tuples":
        assert err.name == "nesting" and "deeper than 100" in str(err)
    else:
        assert err.name in ("memory budget", "item budget") and "NUCDATA_PICKLE_MAX_" in str(err)


def test_a_declared_length_within_budget_but_past_the_end_is_truncation():
    with pytest.raises(CorruptArchiveError, match="short.pkl"):
        safe_pickle.loads(_blob(pickle.BINUNICODE + struct.pack("<I", 1000) + b"abc"), "short.pkl")


@pytest.mark.parametrize("opcode", [
    pickle.EMPTY_LIST + pickle.MEMOIZE + pickle.BINGET + b"\x00" + pickle.APPEND,  # a list inside itself
    _g("builtins", "complex") + _tuple(_i(1)) + pickle.NEWOBJ,
    pickle.MARK + pickle.INST + b"builtins\nset\n",
    pickle.EXT1 + b"\x01",
    pickle.BINPERSID,
    pickle.NEXT_BUFFER,
    pickle.EMPTY_DICT + pickle.EMPTY_DICT + pickle.BUILD,
    _g("builtins", "set") + pickle.DUP + pickle.TUPLE1 + pickle.REDUCE,  # a global as data
    _g(_MA, "_reconstruct") + _tuple(_g("numpy", "ndarray"), _tuple(_i(0)), _b(b"b")) + pickle.REDUCE,  # no state
    _g("numpy", "dtype") + _tuple(_u("f8"), pickle.NEWFALSE, pickle.NEWTRUE) + pickle.REDUCE,  # no state
    _dtype("f8", *_plain_state()).replace(pickle.REDUCE, pickle.REDUCE + pickle.DUP + pickle.POP, 1),
    _g("_codecs", "encode") + _tuple(_u("abc"), _u("rot13")) + pickle.REDUCE,
    _g("builtins", "bytearray") + _tuple(pickle.EMPTY_LIST) + pickle.REDUCE,
    pickle.EMPTY_DICT + pickle.LONG1 + b"\x09" + (2**64).to_bytes(9, "little") + _i(1) + pickle.SETITEM,
    pickle.EMPTY_DICT + _tuple(_i(1), _i(2)) + _i(1) + pickle.SETITEM,
    pickle.MARK + _g("builtins", "complex") + _tuple(_i(1), _i(2)) + pickle.REDUCE + pickle.FROZENSET,
], ids=["recursive-list", "NEWOBJ", "INST", "EXT1", "BINPERSID", "NEXT_BUFFER", "BUILD-dict", "global-as-data",
        "array-without-state", "dtype-without-state",
        "dtype-referred-to-before-its-state", "codecs-rot13", "bytearray-of-list",
        "huge-int-key", "tuple-key", "complex-in-a-set"])
def test_constructs_outside_the_data_format_are_refused(opcode):
    _refusal(_blob(opcode))


def test_budgets_come_from_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "merged.pkl"
    path.write_bytes(pickle.dumps(_published_table(), protocol=4))
    assert repr(safe_pickle.load(path)) == repr(_published_table())
    monkeypatch.setenv("NUCDATA_PICKLE_MAX_ITEMS", "20")
    with pytest.raises(UnsafePickleError, match="NUCDATA_PICKLE_MAX_ITEMS") as info:
        safe_pickle.load(path)
    assert str(path) in str(info.value) and "build-merged" in str(info.value)
    monkeypatch.delenv("NUCDATA_PICKLE_MAX_ITEMS")
    monkeypatch.setenv("NUCDATA_PICKLE_MAX_BYTES", "100")  # smaller than the file itself
    with pytest.raises(UnsafePickleError, match="NUCDATA_PICKLE_MAX_BYTES") as info:
        safe_pickle.load(path)
    assert info.value.name == "file size"
    with open(path, "rb") as fh, pytest.raises(UnsafePickleError, match="NUCDATA_PICKLE_MAX_BYTES"):
        safe_pickle.load(fh)
    monkeypatch.setenv("NUCDATA_PICKLE_MAX_BYTES", "1000")  # the file fits, what it builds does not
    with pytest.raises(UnsafePickleError, match="memory budget|NUCDATA_PICKLE_MAX_BYTES"):
        safe_pickle.load(path)
    for bad in ("lots", "0", "-5", "1.5e9"):
        monkeypatch.setenv("NUCDATA_PICKLE_MAX_BYTES", bad)
        with pytest.raises(InvalidArgumentError, match="NUCDATA_PICKLE_MAX_BYTES"):
            safe_pickle.load(path)


def test_open_merged_applies_the_budgets(tmp_path, monkeypatch):
    folder = tmp_path / "merged"
    (folder / "pannuke").mkdir(parents=True)
    (folder / "pannuke" / "consep.pkl").write_bytes(_BOMBS["memo amplification"])
    with pytest.raises(UnsafePickleError, match="consep.pkl"):
        nucdata.open_merged(folder).table("pannuke", "consep")


def test_no_raw_exception_escapes_on_truncations_of_a_real_pickle():
    blob = pickle.dumps({"a": [np.arange(3.0), np.float32(2), 1 + 2j, {1, 2}], "b": b"xy"}, protocol=2)
    for cut in range(len(blob)):
        with pytest.raises(NucdataError):
            safe_pickle.loads(blob[:cut])
