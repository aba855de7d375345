"""Property-based tests of the memory-safe unpickler (issue 21).

Random pickles are assembled from the allowed globals and the data opcodes: random dtype
states, shapes, buffer lengths, declared string lengths, memo references and nesting.
Loading one either returns a value made only of the allowed types and within the budget,
or raises a ``NucdataError``; it never crashes the process and never raises anything
else. The loads run in a worker process limited to 1 GiB of address space, so a
segfault or a runaway allocation fails the example instead of killing pytest.
"""

from __future__ import annotations

import collections
import math
import os
import pickle
import select
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nucdata._util import safe_pickle
from nucdata.store._merged import write_published_pickle

MAX_BYTES = 8 * 1024 * 1024
MAX_ITEMS = 100_000

_WORKER = r"""
import collections, os, struct, sys
try:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
except (ImportError, ValueError, OSError):
    pass
import numpy as np
from nucdata._util import safe_pickle
from nucdata.errors import NucdataError

PLAIN = {np.dtype(e + c) for c in ("b1", "i1", "u1") for e in "|"}
PLAIN |= {np.dtype(e + k + s) for e in "<>" for k in "iuf" for s in "248" if (k, s) != ("f", "16")}
PLAIN |= {np.dtype(e + "f2") for e in "<>"}
SCALARS = {d.type for d in PLAIN}
LEAVES = (str, bytes, bytearray, int, float, bool, type(None), complex)
CONTAINERS = (dict, list, tuple, set, frozenset, collections.OrderedDict)
MAX_ITEMS, MAX_BYTES = int(os.environ["NUCDATA_PICKLE_MAX_ITEMS"]), int(os.environ["NUCDATA_PICKLE_MAX_BYTES"])


def check(value):
    # every node an allowed type, arrays readable end to end, the logical size within budget
    items = payload = 0
    todo = [(value, 0)]
    while todo:
        x, depth = todo.pop()
        items += 1
        if items > MAX_ITEMS or depth > safe_pickle.MAX_DEPTH:
            return f"bad: {items} values or depth {depth} past the budget"
        t = type(x)
        if t in LEAVES:
            payload += len(x) if t in (str, bytes, bytearray) else 0
        elif t in CONTAINERS:
            todo.extend((c, depth + 1) for c in (list(x.keys()) + list(x.values()) if isinstance(x, dict) else x))
        elif t is np.ndarray:
            if x.dtype not in PLAIN or x.dtype.fields is not None or x.dtype.hasobject:
                return f"bad: array of {x.dtype!r}"
            payload += x.nbytes
            x.tobytes(); x.sum(); repr(x)  # touches every byte: an out-of-bounds view would show here
        elif t in SCALARS:
            repr(x)
        elif isinstance(x, np.dtype):
            if x not in PLAIN:
                return f"bad: dtype {x!r}"
        else:
            return f"bad: {t.__module__}.{t.__qualname__}"
        if payload > MAX_BYTES:
            return f"bad: {payload} payload bytes past the budget"
    repr(value)
    return "ok"


inp, out = sys.stdin.buffer, sys.stdout
while True:
    head = inp.read(4)
    if len(head) < 4:
        break
    blob = inp.read(struct.unpack("<I", head)[0])
    try:
        verdict = check(safe_pickle.loads(blob, "fuzz.pkl"))
    except NucdataError as exc:
        verdict = "typed " + type(exc).__name__
    except BaseException as exc:
        verdict = f"raw {type(exc).__name__}: {exc}"
    out.write(verdict.replace("\n", " ")[:2000] + "\n")
    out.flush()
"""


class _Worker:
    """A child that loads pickles sent to it and answers one verdict line for each."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def start(self) -> subprocess.Popen:
        env = {**os.environ, "NUCDATA_PICKLE_MAX_BYTES": str(MAX_BYTES), "NUCDATA_PICKLE_MAX_ITEMS": str(MAX_ITEMS),
               "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        return self.proc

    def ask(self, blob: bytes, timeout: float = 20.0) -> str:
        proc = self.proc if self.proc is not None and self.proc.poll() is None else self.start()
        try:
            proc.stdin.write(struct.pack("<I", len(blob)) + blob)
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline().decode() if ready else ""
        if line:
            return line.strip()
        if not ready:
            proc.kill()
        code = proc.wait()
        self.proc = None
        return f"died: exit status {code}" if ready else f"hung for {timeout} s"

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def worker():
    w = _Worker()
    yield w
    w.close()


def _verdict_ok(verdict: str, blob: bytes) -> None:
    assert verdict == "ok" or verdict.startswith("typed "), f"{verdict} for {blob!r}"


# -- an assembler for random pickles ----------------------------------------------------
_P = pickle


def _text(s: str) -> bytes:
    data = s.encode("utf-8", "surrogatepass")
    if len(data) < 256:
        return _P.SHORT_BINUNICODE + bytes([len(data)]) + data
    return _P.BINUNICODE + struct.pack("<I", len(data)) + data


def _int(n: int) -> bytes:
    if 0 <= n < 256:
        return _P.BININT1 + bytes([n])
    if -(2**31) <= n < 2**31:
        return _P.BININT + struct.pack("<i", n)
    data = pickle.encode_long(n)
    return _P.LONG1 + bytes([len(data)]) + data


def _bytes(b: bytes) -> bytes:
    return _P.BINBYTES + struct.pack("<I", len(b)) + b


def _global(module: str, name: str) -> bytes:
    return _P.GLOBAL + f"{module}\n{name}\n".encode()


def _tup(parts) -> bytes:
    return _P.MARK + b"".join(parts) + _P.TUPLE


_MA = ("numpy._core.multiarray", "numpy.core.multiarray")
_PLAIN_CODES = ["f8", "f4", "f2", "i8", "i4", "i2", "i1", "u8", "u4", "u2", "u1", "b1"]
_ODD_CODES = ["O8", "O", "V8", "V16", "U4", "S3", "c16", "M8", "m8", "f16", "i3", "x", "", "<f8", ">i4", "|b1"]

small_ints = st.one_of(st.integers(-3, 40), st.sampled_from([2**31 - 1, 2**40, -(2**40), 2**63, 10**30]))
endians = st.sampled_from(["<", ">", "=", "|", "?", "<<"])


def _plain_dtype(code: str, endian: str) -> bytes:
    endian = "|" if code[1] == "1" else endian
    state = [_int(3), _text(endian), _P.NONE, _P.NONE, _P.NONE, _int(-1), _int(-1), _int(0)]
    return (_global("numpy", "dtype") + _tup([_text(code), _P.NEWFALSE, _P.NEWTRUE]) + _P.REDUCE
            + _tup(state) + _P.BUILD)


plain_dtypes = st.builds(_plain_dtype, st.sampled_from(_PLAIN_CODES), st.sampled_from(["<", ">", "="]))


@st.composite
def crafted_dtypes(draw) -> bytes:
    """``numpy.dtype(code, ...)`` + BUILD of a random, often hostile, state."""
    code = draw(st.sampled_from(_PLAIN_CODES + _ODD_CODES))
    args = draw(st.lists(st.sampled_from([_P.NEWFALSE, _P.NEWTRUE, _int(0), _int(1), _int(7), _P.NONE]),
                         min_size=0, max_size=3))
    inner = draw(plain_dtypes)
    names = [draw(st.text("abcxyz", min_size=0, max_size=3)) for _ in range(draw(st.integers(0, 3)))]
    fields = _P.EMPTY_DICT + b"".join(
        _text(n) + _tup([inner, _int(draw(small_ints))] + ([_text("t")] if draw(st.booleans()) else []))
        + _P.SETITEM for n in names)
    state = [
        _int(draw(st.sampled_from([3, 4, 2, 1, 0, -1]))),
        _text(draw(endians)),
        draw(st.sampled_from([_P.NONE, _tup([inner, _tup([_int(2)])]), _tup([inner, _tup([_int(10**9)])])])),
        draw(st.sampled_from([_P.NONE, _tup([_text(n) for n in names])])),
        draw(st.sampled_from([_P.NONE, fields])),
        _int(draw(st.sampled_from([-1, 0, 1, 8, 16, 2**31 - 1, -7]))),
        _int(draw(st.sampled_from([-1, 1, 4, 8, 3]))),
        _int(draw(st.sampled_from([0, 0, 1, 16, 63, 255, 2**40]))),
    ]
    if draw(st.booleans()):
        state.append(draw(st.sampled_from([_P.NONE, _P.EMPTY_DICT])))
    if draw(st.integers(0, 5)) == 0:
        del state[draw(st.integers(0, len(state) - 1))]
    return (_global("numpy", "dtype") + _tup([_text(code), *args]) + _P.REDUCE + _tup(state) + _P.BUILD)


any_dtype = st.one_of(plain_dtypes, plain_dtypes, crafted_dtypes())
shapes = st.lists(small_ints, min_size=0, max_size=4).map(lambda dims: _tup([_int(d) for d in dims]))
buffers = st.binary(max_size=64)


@st.composite
def fitting_arrays(draw) -> bytes:
    """An array whose bytes fit its shape and plain dtype, by either numpy reconstructor."""
    code, endian = draw(st.sampled_from(_PLAIN_CODES)), draw(st.sampled_from(["<", ">", "="]))
    dims = draw(st.lists(st.integers(0, 4), max_size=3))
    size = int(np.prod(dims, dtype=np.int64)) * int(code[1])
    raw = draw(st.binary(min_size=size, max_size=size))
    dtype, shape = _plain_dtype(code, endian), _tup([_int(d) for d in dims])
    if draw(st.booleans()):
        order = draw(st.sampled_from(["C", "F"]))
        return (_global("numpy._core.numeric", "_frombuffer")
                + _tup([_P.BYTEARRAY8 + struct.pack("<Q", size) + raw, dtype, shape, _text(order)]) + _P.REDUCE)
    return (_global(draw(st.sampled_from(_MA)), "_reconstruct")
            + _tup([_global("numpy", "ndarray"), _tup([_int(0)]), _bytes(b"b")]) + _P.REDUCE
            + _tup([_int(1), shape, dtype, draw(st.sampled_from([_P.NEWFALSE, _P.NEWTRUE])), _bytes(raw)])
            + _P.BUILD)


@st.composite
def fitting_scalars(draw) -> bytes:
    code = draw(st.sampled_from(_PLAIN_CODES))
    data = draw(st.binary(min_size=int(code[1]), max_size=int(code[1])))
    return (_global(draw(st.sampled_from(_MA)), "scalar")
            + _tup([_plain_dtype(code, draw(st.sampled_from(["<", ">"]))), _bytes(data)]) + _P.REDUCE)


@st.composite
def frombuffer_arrays(draw) -> bytes:
    buf = draw(buffers)
    raw = (_P.BYTEARRAY8 + struct.pack("<Q", len(buf)) + buf) if draw(st.booleans()) else _bytes(buf)
    args = [raw, draw(any_dtype), draw(shapes), _text(draw(st.sampled_from(["C", "F", "K", "A", "Z"])))]
    if draw(st.booleans()):
        args.append(_tup([_int(draw(small_ints)) for _ in range(draw(st.integers(0, 3)))]))
    module = draw(st.sampled_from(["numpy._core.numeric", "numpy.core.numeric"]))
    return _global(module, "_frombuffer") + _tup(args) + _P.REDUCE


@st.composite
def reconstructed_arrays(draw) -> bytes:
    raw = draw(st.one_of(buffers.map(_bytes), st.text(max_size=20).map(_text), st.just(_P.EMPTY_LIST),
                         st.just(_P.NONE)))
    state = [draw(shapes), draw(any_dtype), draw(st.sampled_from([_P.NEWFALSE, _P.NEWTRUE, _int(2)])), raw]
    if draw(st.booleans()):
        state.insert(0, _int(draw(st.sampled_from([1, 1, 0, 2]))))
    head = _tup([_global("numpy", "ndarray"), draw(shapes), draw(st.sampled_from([_bytes(b"b"), _text("b"),
                                                                                   _int(3)]))])
    return (_global(draw(st.sampled_from(_MA)), "_reconstruct") + head + _P.REDUCE + _tup(state) + _P.BUILD)


@st.composite
def numpy_scalars(draw) -> bytes:
    data = draw(st.one_of(st.binary(max_size=17).map(_bytes), st.text(max_size=9).map(_text)))
    return _global(draw(st.sampled_from(_MA)), "scalar") + _tup([draw(any_dtype), data]) + _P.REDUCE


@st.composite
def declared_lengths(draw) -> bytes:
    """A string, bytes or bytearray whose declared length may be anything."""
    n = draw(st.one_of(st.integers(0, 40), st.sampled_from([2**31, 2**32 - 1, 2**40, 2**62, 2**64 - 1])))
    body = draw(st.binary(max_size=40))
    op, fmt = draw(st.sampled_from([(_P.BINUNICODE8, "<Q"), (_P.BINBYTES8, "<Q"), (_P.BYTEARRAY8, "<Q"),
                                    (_P.BINUNICODE, "<I"), (_P.BINBYTES, "<I"), (_P.BINSTRING, "<i")]))
    if fmt == "<I":
        n %= 2**32
    elif fmt == "<i":
        n = n % 2**32 - 2**31
    return op + struct.pack(fmt, n) + body


leaves = st.one_of(
    st.integers(-(2**70), 2**70).map(_int),
    st.floats(allow_nan=True).map(lambda f: _P.BINFLOAT + struct.pack(">d", f)),
    st.sampled_from([_P.NONE, _P.NEWTRUE, _P.NEWFALSE, _P.EMPTY_TUPLE, _P.EMPTY_LIST, _P.EMPTY_DICT]),
    st.text(max_size=12).map(_text),
    st.binary(max_size=12).map(_bytes),
    declared_lengths(),
    any_dtype, frombuffer_arrays(), reconstructed_arrays(), numpy_scalars(),
    fitting_arrays(), fitting_arrays(), fitting_scalars(),
    st.integers(0, 8).map(lambda k: _P.BINGET + bytes([k])),
)

_CALLS = [("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"), ("builtins", "bytearray"),
          ("builtins", "bytes"), ("collections", "OrderedDict"), ("_codecs", "encode"), ("numpy", "dtype"),
          ("numpy", "ndarray"), ("numpy._core.multiarray", "scalar"), ("numpy._core.numeric", "_frombuffer"),
          ("numpy._core.multiarray", "_reconstruct"), ("builtins", "range"), ("builtins", "getattr"),
          ("__builtin__", "set"), ("copyreg", "_reconstructor")]


def _containers(children):
    many = st.lists(children, max_size=5)
    return st.one_of(
        many.map(lambda xs: _P.EMPTY_LIST + _P.MARK + b"".join(xs) + _P.APPENDS),
        many.map(lambda xs: _P.MARK + b"".join(xs) + _P.LIST),
        many.map(lambda xs: _P.MARK + b"".join(xs) + _P.TUPLE),
        many.map(lambda xs: _P.EMPTY_SET + _P.MARK + b"".join(xs) + _P.ADDITEMS),
        many.map(lambda xs: _P.MARK + b"".join(xs) + _P.FROZENSET),
        many.map(lambda xs: _P.EMPTY_DICT + _P.MARK + b"".join(xs) + _P.SETITEMS),
        many.map(lambda xs: _P.MARK + b"".join(xs) + _P.DICT),
        children.map(lambda x: x + _P.MEMOIZE),
        st.tuples(children, st.integers(0, 4)).map(lambda a: _P.EMPTY_LIST + _P.MARK + a[0] + _P.DUP * a[1]
                                                   + _P.APPENDS),
        st.tuples(children, st.integers(1, 3)).map(lambda a: a[0] + {1: _P.TUPLE1, 2: _P.DUP + _P.TUPLE2,
                                                                     3: _P.DUP + _P.DUP + _P.TUPLE3}[a[1]]),
        st.tuples(st.sampled_from(_CALLS), many).map(lambda a: _global(*a[0]) + _tup(a[1]) + _P.REDUCE),
        st.tuples(children, children).map(lambda a: a[0] + a[1] + _P.BUILD),
        st.tuples(children, st.binary(min_size=1, max_size=3)).map(lambda a: a[0] + a[1]),  # noise
    )


values = st.recursive(leaves, _containers, max_leaves=12)


@st.composite
def programs(draw) -> bytes:
    proto = draw(st.sampled_from([b"", _P.PROTO + b"\x02", _P.PROTO + b"\x04", _P.PROTO + b"\x05"]))
    blob = proto + draw(values) + _P.STOP
    if draw(st.integers(0, 9)) == 9:
        blob = blob[: draw(st.integers(1, len(blob)))]
    return blob


_FUZZ = settings(max_examples=800, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.function_scoped_fixture])


@_FUZZ
@given(blob=programs())
def test_random_pickles_load_as_plain_data_or_raise_a_typed_error(worker, blob):
    _verdict_ok(worker.ask(blob), blob)


def _real_pickles() -> list[bytes]:
    table = {"img_1.png": [[[10.5, 3.25], 2, 0.875, -1], [[1.0, 2.0], -2, float("nan"), 3]], "img_2.png": []}
    numpy_rows = {"a.png": [[np.array([1.5, 2.5]), np.int64(3), np.float32(0.5), -1]],
                  "b.png": [np.arange(6, dtype=">i4").reshape(2, 3), np.asfortranarray(np.ones((2, 2)))]}
    builtins = {"set": {1, 2}, "frozen": frozenset("ab"), "ordered": collections.OrderedDict(a=1), "c": 1 + 2j,
                "b": b"\x00", "ba": bytearray(b"xy"), "e": b"", "big": 2**100, "t": (1, (2,)), "u": "\xe9\U0001f600"}
    return [pickle.dumps(obj, protocol=p) for obj in (table, numpy_rows, builtins) for p in (0, 2, 4, 5)]


@_FUZZ
@given(data=st.data())
def test_mutated_real_pickles_load_as_plain_data_or_raise_a_typed_error(worker, data):
    blobs = _real_pickles()
    blob = bytearray(data.draw(st.sampled_from(blobs)))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, blob[i] ^ 1, blob[i] + 1 & 0xFF]))
    _verdict_ok(worker.ask(bytes(blob)), bytes(blob))


def test_the_worker_catches_a_crash(worker):
    """The harness itself: a worker that dies is reported, and the next example gets a new one."""
    assert worker.ask(_P.PROTO + b"\x04" + _P.NONE + _P.STOP) == "ok"
    worker.proc.kill()
    worker.proc.wait()
    assert worker.ask(_P.NONE + _P.STOP) == "ok"


def _same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(counts=st.lists(st.integers(0, 6), min_size=0, max_size=5), seed=st.integers(0, 2**32 - 1))
def test_our_writers_merged_pickle_loads_identically(tmp_path_factory, counts, seed):
    rng = np.random.default_rng(seed)
    n = sum(counts)
    names = [f"img_{i}" for i in range(len(counts))]
    image_of = rng.permutation(np.repeat(np.arange(len(counts)), counts)).astype(np.int64)
    centroids = rng.uniform(0, 512, (n, 2)).astype(np.float32)
    label = rng.integers(-2, 6, n)
    probability = rng.random(n).astype(np.float32)
    probability[rng.random(n) < 0.2] = np.nan
    annotation = rng.integers(-2, 6, n)
    path = write_published_pickle(tmp_path_factory.mktemp("merged") / "consep.pkl", names, image_of, centroids,
                                  label, probability, annotation)
    with open(path, "rb") as fh:
        plain = pickle.load(fh)
    assert _same(safe_pickle.load(path), plain)
    with open(path, "rb") as fh:
        assert _same(safe_pickle.load(fh), plain)
