"""A memory-safe allow-list unpickler for data pickles (merged datasets, the authors' releases).

A pickle can name any importable callable and call it while loading: a file whose
``__reduce__`` returns ``(os.system, ("...",))`` runs a shell command in plain
``pickle.load``. Even numpy's own reconstructors are unsafe on hostile arguments: a
crafted dtype state (an object field with its flags cleared, a field offset past the
item size) makes numpy read attacker bytes as pointers, and ``bytearray(1_500_000_000)``
in a 36-byte pickle allocates 1.5 GB.

:func:`load` therefore never runs ``pickle.Unpickler``: it interprets the pickle's
opcodes itself, builds only what a data pickle holds, each value from arguments it has
checked, and refuses everything else with :class:`~nucdata.errors.UnsafePickleError`
(naming the file, what was refused and the fix) **before** anything is allocated or
called. A truncated or malformed pickle raises
:class:`~nucdata.errors.CorruptArchiveError`; no other exception (``MemoryError``,
``RecursionError``, ``struct.error`` ...) leaves :func:`load`.

**What it builds.** ``dict``, ``list``, ``tuple``, ``str``, ``bytes``, ``int``,
``float``, ``bool`` and ``None`` from their opcodes; through the globals in
:data:`ALLOWED`: ``set`` and ``frozenset`` (of an already-built list, tuple or set),
``complex`` (of two numbers), ``bytearray`` and ``bytes`` (of bytes or a latin-1 ``str``,
never of a length), ``collections.OrderedDict``, ``_codecs.encode`` (latin-1 only, which
protocol-2 pickles use for bytes), and numpy arrays, scalars and dtypes of the *plain
numeric* types only: ``bool``, ``int8`` to ``int64``, ``uint8`` to ``uint64``,
``float16``, ``float32`` and ``float64``, native, little- or big-endian (numpy 1's
``numpy.core`` and numpy 2's ``numpy._core`` names both). A dtype is made by
``numpy.dtype('<f4')`` from a checked type string: numpy's ``dtype.__setstate__`` is
never called with the pickle's state, nor are ``multiarray.scalar`` or ``_frombuffer``.

**What it refuses.** Every other global (classes of other packages, functions,
``range``, ``slice``, ``copyreg`` reconstruction); a dtype state with fields, names, a
subarray, an item size or alignment of its own, metadata or any flag (so no object
fields, offsets, structured, string, datetime or void dtypes); an array state or buffer
whose length is not exactly its shape times its item size; ``bytearray``, ``bytes``,
``set`` or ``frozenset`` of anything but built data (``bytearray(n)``,
``frozenset(range(n))``); ``INST``, ``OBJ``, ``NEWOBJ``, ``NEWOBJ_EX``, extension codes,
persistent ids and out-of-band buffers; ``BUILD`` on anything but a new numpy dtype or
array; changing a container after the pickle referred to it again (which is also how
recursive structures are made); dict keys and set members other than ``str``, ``bytes``
and numbers below ``2**61`` (tuples, complex numbers and huge integers can be made to
share one hash, which makes building a dict quadratic); nesting deeper than
:data:`MAX_DEPTH`; and anything past the budgets.

**Budgets.** ``NUCDATA_PICKLE_MAX_BYTES`` (default :data:`DEFAULT_MAX_BYTES`, 2 GiB)
caps the file's size (it is read with that bound) and, separately, an estimate of the
memory the unpickled value takes: the payload of every ``str``, ``bytes``,
``bytearray``, integer and array, plus a fixed overhead for each object, memo entry and
container element. ``NUCDATA_PICKLE_MAX_ITEMS`` (default :data:`DEFAULT_MAX_ITEMS`, 50
million) caps the values built: every stack entry, memo entry and container element.
Both count a value the pickle refers to again (``GET``, ``DUP``) in full each time, as if
it were copied, so memo references cannot amplify a small file into a huge value; and a
size read from the file (a string's length, a buffer's, an array's shape) is checked
against what is left of the budget before anything of that size is made. A merged
pickle from ``nucdata build-merged`` takes about 11 values and 600 bytes of estimate per
nucleus, so the defaults hold some 3 million nuclei per file; a pickle of numpy scalars
and arrays per nucleus takes about 5 times as much.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import itertools
import os
import struct
import sys
from pathlib import Path
from typing import IO, Any

import numpy as np

from nucdata.errors import (
    CorruptArchiveError,
    InvalidArgumentError,
    NucdataError,
    UnsafePickleError,
)

__all__ = ["ALLOWED", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_ITEMS", "MAX_DEPTH", "load", "loads"]

#: Default of ``NUCDATA_PICKLE_MAX_BYTES``: the largest file, and the largest estimated
#: size of the value it unpickles to, in bytes (2 GiB).
DEFAULT_MAX_BYTES = 2 * 1024**3
#: Default of ``NUCDATA_PICKLE_MAX_ITEMS``: the most values one pickle may build.
DEFAULT_MAX_ITEMS = 50_000_000
#: The deepest nesting of containers a data pickle may have (a merged pickle has 4).
MAX_DEPTH = 100
#: The most dimensions of an array (numpy's own limit is 64).
MAX_NDIM = 32

_ENV_BYTES = "NUCDATA_PICKLE_MAX_BYTES"
_ENV_ITEMS = "NUCDATA_PICKLE_MAX_ITEMS"
_CHUNK = 1 << 20
_HIGHEST_PROTOCOL = 5

_FIX_FORMAT = ("nucdata reads data pickles of plain containers, numbers and plain numeric numpy arrays "
               "only, which is all that nucdata's writer and the merged dataset's authors put in one: "
               "rebuild the merged output with `nucdata build-merged`, or download the file again from "
               "its source")

# Estimated bytes (CPython, 64 bit) of what each opcode makes; the budget counts these.
_SLOT = 8          # a reference: a stack entry, a list or tuple element
_SCALAR = 32       # a float, an int, a complex, a numpy scalar
_MARK = 56         # a MARK opens a new stack list
_MEMO = 48         # a memo entry
_LIST, _TUPLE, _DICT, _ODICT, _SET = 56, 40, 64, 128, 216
_DICT_ITEM, _ODICT_ITEM, _SET_ITEM = 48, 112, 48
_STR, _BYTES, _BYTEARRAY, _ARRAY, _DTYPE = 49, 33, 57, 112, 96


# -- numpy dtypes: plain numeric only ---------------------------------------------------
_CODES = ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8")
_ENDIANS = ("<", ">", "=", "|")


def _make_dtypes() -> dict[tuple[str, str], np.dtype]:
    table = {}
    for code in _CODES:
        for endian in _ENDIANS:
            if endian == "|" and code[1] != "1":
                continue  # numpy writes '|' for one-byte types only
            table[(endian, code)] = np.dtype(("|" if code[1] == "1" else endian) + code)
    return table


#: (byte order, kind + size) -> the dtype; the only dtypes an unpickled value holds.
_DTYPES = _make_dtypes()
_DTYPE_IDS = {id(d): d for d in _DTYPES.values()}
_NUMPY_SCALARS = frozenset(d.type for d in _DTYPES.values())

_LEAVES = frozenset({float, int, bool, type(None), str, bytes, bytearray, complex}) | _NUMPY_SCALARS
_NESTED = frozenset({list, tuple, dict, set, frozenset, collections.OrderedDict})
_DICTS = (dict, collections.OrderedDict)
# Dict keys and set members: types whose hashes a pickle cannot make collide en masse (str and
# bytes hashes are salted; ints below 2**61 hash to themselves). Tuples, complex numbers and
# huge ints are refused as keys: thousands of colliding ones would make building a dict quadratic.
_KEYS = frozenset({str, bytes, int, float, bool, type(None)}) | _NUMPY_SCALARS
_HASH_BOUND = 2**61 - 1

_unpack_double = struct.Struct(">d").unpack_from
_unpack_i4 = struct.Struct("<i").unpack_from
_unpack_u2 = struct.Struct("<H").unpack_from
_unpack_u4 = struct.Struct("<I").unpack_from
_unpack_u8 = struct.Struct("<Q").unpack_from


def _is_dtype(value: Any) -> bool:
    """Whether ``value`` is one of the plain numeric dtypes this module made."""
    return _DTYPE_IDS.get(id(value)) is value


# -- the allowed globals ----------------------------------------------------------------
class _Global:
    """What a GLOBAL or STACK_GLOBAL opcode pushes: a name, never the callable itself."""

    __slots__ = ("builder", "name")

    def __init__(self, name: str, builder: str):
        self.name = name
        self.builder = builder

    def __repr__(self) -> str:
        return f"<global {self.name}>"


class _PendingDtype:
    """``numpy.dtype(...)`` before its ``BUILD``: a checked type string, nothing made yet."""

    __slots__ = ("code", "done", "memo_keys")

    def __init__(self, code: str):
        self.code = code
        self.done = False
        self.memo_keys: list[int] = []


_BUILDERS = {
    ("builtins", "set"): ("set", "set(list | tuple | set | frozenset)"),
    ("builtins", "frozenset"): ("frozenset", "frozenset(list | tuple | set | frozenset)"),
    ("builtins", "complex"): ("complex", "complex(real, imag) of numbers"),
    ("builtins", "bytearray"): ("bytearray", "bytearray(bytes) or bytearray(str, 'latin-1'), never of a length"),
    ("builtins", "bytes"): ("bytes", "bytes() or bytes(bytes)"),
    ("collections", "OrderedDict"): ("odict", "OrderedDict() or OrderedDict(list of pairs)"),
    ("_codecs", "encode"): ("encode", "_codecs.encode(str, 'latin1'): bytes in protocol-2 pickles"),
    ("numpy", "dtype"): ("dtype", "numpy.dtype of a plain numeric type string, then its checked state"),
    ("numpy", "ndarray"): ("ndarray", "numpy.ndarray, as the array type given to _reconstruct"),
}
for _prefix in ("numpy.core", "numpy._core"):
    _BUILDERS[(f"{_prefix}.multiarray", "_reconstruct")] = (
        "reconstruct", "an empty numpy.ndarray, then its checked state (shape, plain dtype, bytes)")
    _BUILDERS[(f"{_prefix}.multiarray", "scalar")] = (
        "scalar", "a numpy scalar of a plain dtype from exactly its item size in bytes")
    _BUILDERS[(f"{_prefix}.numeric", "_frombuffer")] = (
        "frombuffer", "a numpy array of a plain dtype over exactly shape x item size bytes")

#: ``(module, name)`` of every global a data pickle may use, and what it may build with it.
#: The pickle never gets the callable: each one is replaced by a builder that checks its
#: arguments first.
ALLOWED: dict[tuple[str, str], str] = {key: what for key, (_, what) in _BUILDERS.items()}
_GLOBALS = {key: _Global(f"{key[0]}.{key[1]}", builder) for key, (builder, _) in _BUILDERS.items()}
_LATIN1 = frozenset({"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "iso_8859_1", "l1"})


# -- errors -----------------------------------------------------------------------------
def _refused(source: str, name: str, what: str, fix: str = _FIX_FORMAT) -> UnsafePickleError:
    """An :class:`UnsafePickleError` whose message says what was refused and the fix."""
    return UnsafePickleError(source, name, reason=what, fix=fix)


class _Truncated(Exception):
    """Internal: the pickle ends before its data does."""


def _budget_fix(var: str, limit: int) -> str:
    return (f"if this file is genuine, raise {var} (now {limit:,}) and load it again; otherwise "
            "rebuild the merged output with `nucdata build-merged`")


def _env_limit(var: str, default: int) -> int:
    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise InvalidArgumentError(
            f"{var}={os.environ[var]!r} is not a positive whole number; set it to a number such "
            f"as {default} (the default) or unset it.")
    return value


def _budgets() -> tuple[int, int]:
    """``(max_bytes, max_items)`` from the environment, or the defaults."""
    return _env_limit(_ENV_BYTES, DEFAULT_MAX_BYTES), _env_limit(_ENV_ITEMS, DEFAULT_MAX_ITEMS)


def _describe(value: Any) -> str:
    if isinstance(value, _Global):
        return f"the global {value.name}"
    if isinstance(value, _PendingDtype):
        return "a numpy dtype before its state"
    return f"a {type(value).__module__}.{type(value).__qualname__}"


# -- the interpreter --------------------------------------------------------------------
class _Machine:
    """The pickle virtual machine, with only the data opcodes, checks and budgets."""

    def __init__(self, data: bytes | bytearray, source: str, max_bytes: int, max_items: int):
        self.data = data
        self.end = len(data)
        self.pos = 0
        self.source = source
        self.max_bytes = max_bytes
        self.max_items = max_items
        self.nbytes = 0
        self.items = 0
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.proto = 0
        # id -> (container, depth) for containers of depth >= 2 (kept alive, so ids stay unique)
        self.depth: dict[int, tuple[Any, int]] = {}
        # id -> (container, items, bytes): containers referred to again; they may not change
        self.shared: dict[int, tuple[Any, int, int]] = {}
        # id -> array made by _reconstruct and not yet given its state
        self.unbuilt: dict[int, np.ndarray] = {}
        # id -> tuple holding a global (the arguments of _reconstruct): usable as arguments only
        self.tainted: dict[int, tuple] = {}
        self.saw_global = False
        self.dispatch = [self._unknown] * 256
        for code, method in _OPCODES.items():
            self.dispatch[code[0]] = getattr(self, method)

    # .. helpers ........................................................................
    def refuse(self, name: str, what: str, fix: str = _FIX_FORMAT) -> UnsafePickleError:
        return _refused(self.source, name, what, fix)

    def over_budget(self, what: str = "", memory: bool | None = None) -> UnsafePickleError:
        if memory is None:
            memory = self.nbytes > self.max_bytes
        if memory:
            return self.refuse(
                "memory budget", f"{what or 'its values'} would take more than {self.max_bytes:,} bytes "
                "(an estimate that counts every value it refers to again as a copy)",
                _budget_fix(_ENV_BYTES, self.max_bytes))
        return self.refuse(
            "item budget", f"{what or 'its values'} would be more than {self.max_items:,} values "
            "(counting every value it refers to again as a copy)", _budget_fix(_ENV_ITEMS, self.max_items))

    def charge(self, items: int, nbytes: int, what: str) -> None:
        """Count ``items`` values and ``nbytes`` bytes, refusing before they are made."""
        self.items += items
        self.nbytes += nbytes
        if self.nbytes > self.max_bytes or self.items > self.max_items:
            raise self.over_budget(what)

    def take(self, n: int) -> int:
        """Position of the next ``n`` bytes, which must be in the file."""
        pos = self.pos
        if n < 0 or pos + n > self.end:
            raise _Truncated
        self.pos = pos + n
        return pos

    def sized(self, n: int, per_byte: int, base: int, what: str) -> int:
        """Check a length read from the file against the budget and the file; its position."""
        if n < 0:
            raise CorruptArchiveError(f"{self.source}: not a readable data pickle (negative length "
                                      f"{n} for {what}). Download or write it again.")
        self.charge(1, base + _SLOT + n * per_byte, f"a {what} of {n:,} bytes")
        return self.take(n)

    def readline(self, what: str = "a text opcode") -> bytes:
        """The rest of a text opcode's line, with its newline; charged before it is copied."""
        i = self.data.find(b"\n", self.pos)
        if i < 0:
            raise _Truncated
        self.charge(0, i + 1 - self.pos, what)
        line = bytes(self.data[self.pos:i + 1])
        self.pos = i + 1
        return line

    def pop_mark(self) -> list[Any]:
        items = self.stack
        if not self.metastack:
            raise CorruptArchiveError(f"{self.source}: not a readable data pickle (an opcode needs a "
                                      "MARK that is not there). Download or write it again.")
        self.stack = self.metastack.pop()
        return items

    def scan(self, items: Any, where: str, allow_globals: bool = False) -> int:
        """Check values about to go into a container; the deepest one's depth."""
        deepest = 0
        depth = self.depth
        for x in items:
            t = type(x)
            if t in _LEAVES:
                continue
            if t in _NESTED:
                if t is tuple and id(x) in self.tainted:
                    raise self.refuse("global", f"the global {self.tainted_name(x)} inside {where}")
                entry = depth.get(id(x))
                d = entry[1] if entry is not None else 1
            elif t is np.ndarray:
                if id(x) in self.unbuilt:
                    raise self.refuse("array", f"a numpy array used in {where} before its state")
                d = 1
            elif _is_dtype(x):
                continue
            elif t is _Global and allow_globals:
                self.saw_global = True
                continue
            else:
                raise self.refuse(t.__name__, f"{_describe(x)} inside {where}")
            if d > deepest:
                deepest = d
        return deepest

    def check_keys(self, keys: Any, where: str) -> None:
        """Refuse dict keys or set members whose hashes could be made to collide."""
        for k in keys:
            t = type(k)
            if t is str:
                continue
            if t not in _KEYS or (t is int and not -_HASH_BOUND < k < _HASH_BOUND):
                raise self.refuse(where, f"{_describe(k)} as {where} (keys of a data pickle are strings and "
                                  f"numbers below 2**61)")

    def tainted_name(self, x: tuple) -> str:
        return next((v.name for v in x if isinstance(v, _Global)), "?")

    def set_depth(self, container: Any, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise self.refuse("nesting", f"containers nested deeper than {MAX_DEPTH} levels (a nesting "
                              "bomb; a merged pickle nests 4 deep)")
        if depth >= 2:
            self.depth[id(container)] = (container, depth)

    def container_depth(self, container: Any) -> int:
        entry = self.depth.get(id(container))
        return entry[1] if entry is not None else 1

    def mutable(self, target: Any, kinds: tuple[type, ...], opcode: str) -> None:
        """Check that ``opcode`` may add to ``target``."""
        if type(target) not in kinds:
            raise self.refuse(opcode, f"{opcode} on {_describe(target)} (only "
                              + " / ".join(k.__name__ for k in kinds) + " take it)")
        if id(target) in self.shared:
            raise self.refuse(opcode, f"{opcode} on a {type(target).__name__} after the pickle referred "
                              "to it again (a recursive or self-modifying structure)")

    def weight(self, obj: Any) -> tuple[int, int]:
        """``(items, bytes)`` of ``obj`` counted as a copy; its containers may no longer change."""
        t = type(obj)
        if t not in _NESTED:
            return 1, _SLOT + _leaf_bytes(obj)
        shared = self.shared
        entry = shared.get(id(obj))
        if entry is not None:
            return entry[1], entry[2]
        todo: list[tuple[Any, bool]] = [(obj, False)]
        busy: set[int] = set()
        while todo:
            x, expanded = todo.pop()
            if id(x) in shared:
                continue
            children = itertools.chain(x.keys(), x.values()) if type(x) in _DICTS else x
            if not expanded:
                if id(x) in busy:
                    raise self.refuse("recursion", "a container that contains itself")
                busy.add(id(x))
                todo.append((x, True))
                todo.extend((c, False) for c in children if type(c) in _NESTED and id(c) not in shared)
                continue
            children = itertools.chain(x.keys(), x.values()) if type(x) in _DICTS else x
            items, nbytes = 1, _SLOT + _container_bytes(x)
            for c in children:
                if type(c) in _NESTED:
                    e = shared[id(c)]
                    items += e[1]
                    nbytes += e[2]
                else:
                    items += 1
                    nbytes += _SLOT + _leaf_bytes(c)
            shared[id(x)] = (x, items, nbytes)
            busy.discard(id(x))
        entry = shared[id(obj)]
        return entry[1], entry[2]

    def push_again(self, obj: Any, what: str) -> None:
        """Push a value the pickle refers to again (GET, DUP), counting it in full."""
        if type(obj) is _PendingDtype or (type(obj) is np.ndarray and id(obj) in self.unbuilt):
            raise self.refuse(what, f"{what} refers again to a numpy {'dtype' if type(obj) is _PendingDtype else 'array'} "
                              "before its state")
        items, nbytes = self.weight(obj)
        self.charge(items, nbytes, what)
        self.stack.append(obj)

    # .. the loop .......................................................................
    def run(self) -> Any:
        data, dispatch, end = self.data, self.dispatch, self.end
        while True:
            pos = self.pos
            if pos >= end:
                raise _Truncated
            self.pos = pos + 1
            if dispatch[data[pos]]():
                break
            if self.items > self.max_items or self.nbytes > self.max_bytes:
                raise self.over_budget()
        if not self.stack:
            raise CorruptArchiveError(f"{self.source}: not a readable data pickle (STOP with nothing "
                                      "to return). Download or write it again.")
        value = self.stack.pop()
        self.scan((value,), "the pickle's result")
        if type(value) is tuple and id(value) in self.tainted:
            raise self.refuse("global", f"the global {self.tainted_name(value)} in the pickle's result")
        return value

    def _unknown(self) -> bool:
        op = self.data[self.pos - 1]
        raise CorruptArchiveError(f"{self.source}: not a readable data pickle (unknown opcode "
                                  f"{bytes([op])!r} at byte {self.pos - 1}). Download or write it again.")

    # .. framing, protocol, stack ........................................................
    def _proto(self) -> None:
        pos = self.take(1)
        self.proto = self.data[pos]
        if self.proto > _HIGHEST_PROTOCOL:
            raise CorruptArchiveError(f"{self.source}: not a readable data pickle (protocol "
                                      f"{self.proto}). Download or write it again.")

    def _frame(self) -> None:
        (n,) = _unpack_u8(self.data, self.take(8))
        if n > self.end - self.pos:
            raise _Truncated

    def _stop(self) -> bool:
        return True

    def _mark(self) -> None:
        self.metastack.append(self.stack)
        self.stack = []
        self.items += 1
        self.nbytes += _MARK

    def _pop(self) -> None:
        if self.stack:
            self.stack.pop()
        else:
            self.pop_mark()

    def _pop_mark(self) -> None:
        self.pop_mark()

    def _dup(self) -> None:
        self.push_again(self.stack[-1], "DUP")

    # .. scalars ........................................................................
    def _none(self) -> None:
        self.stack.append(None)
        self.items += 1
        self.nbytes += _SLOT

    def _true(self) -> None:
        self.stack.append(True)
        self.items += 1
        self.nbytes += _SLOT

    def _false(self) -> None:
        self.stack.append(False)
        self.items += 1
        self.nbytes += _SLOT

    def _binint(self) -> None:
        self.stack.append(_unpack_i4(self.data, self.take(4))[0])
        self.items += 1
        self.nbytes += _SLOT + _SCALAR

    def _binint1(self) -> None:
        pos = self.pos
        if pos >= self.end:
            raise _Truncated
        self.stack.append(self.data[pos])
        self.pos = pos + 1
        self.items += 1
        self.nbytes += _SLOT + _SCALAR

    def _binint2(self) -> None:
        self.stack.append(_unpack_u2(self.data, self.take(2))[0])
        self.items += 1
        self.nbytes += _SLOT + _SCALAR

    def _binfloat(self) -> None:
        pos = self.pos
        self.stack.append(_unpack_double(self.data, pos)[0])
        self.pos = pos + 8
        self.items += 1
        self.nbytes += _SLOT + _SCALAR

    def _long(self, n: int) -> None:
        pos = self.sized(n, 1, _SCALAR, "integer")
        self.stack.append(int.from_bytes(self.data[pos:pos + n], "little", signed=True))

    def _long1(self) -> None:
        self._long(self.data[self.take(1)])

    def _long4(self) -> None:
        self._long(_unpack_i4(self.data, self.take(4))[0])

    def _int(self) -> None:
        line = self.readline()
        self.charge(1, _SLOT + _SCALAR + len(line), "an integer")
        if line == b"00\n":
            value: Any = False
        elif line == b"01\n":
            value = True
        else:
            value = int(line, 0)
        self.stack.append(value)

    def _long_text(self) -> None:
        line = self.readline()[:-1]
        self.charge(1, _SLOT + _SCALAR + len(line), "an integer")
        if line.endswith(b"L"):
            line = line[:-1]
        self.stack.append(int(line, 0))

    def _float(self) -> None:
        line = self.readline()
        self.charge(1, _SLOT + _SCALAR, "a float")
        self.stack.append(float(line[:-1]))

    # .. strings and bytes ...............................................................
    def push_str(self, pos: int, n: int) -> None:
        raw = self.data[pos:pos + n]
        if not raw.isascii():  # up to 4 bytes a character once decoded
            self.charge(0, 3 * n, f"a str of {n:,} bytes")
        self.stack.append(str(raw, "utf-8", "surrogatepass"))

    def _short_binunicode(self) -> None:
        pos = self.pos
        if pos >= self.end:
            raise _Truncated
        n = self.data[pos]
        self.pos = pos + 1
        self.push_str(self.sized(n, 1, _STR, "str"), n)

    def _binunicode(self) -> None:
        (n,) = _unpack_u4(self.data, self.take(4))
        self.push_str(self.sized(n, 1, _STR, "str"), n)

    def _binunicode8(self) -> None:
        (n,) = _unpack_u8(self.data, self.take(8))
        self.push_str(self.sized(n, 1, _STR, "str"), n)

    def _unicode(self) -> None:
        line = self.readline()[:-1]
        self.charge(1, _SLOT + _STR + 4 * len(line), "a str")
        self.stack.append(str(line, "raw-unicode-escape"))

    def push_bytes(self, n: int, kind: type) -> None:
        pos = self.sized(n, 1, _BYTES if kind is bytes else _BYTEARRAY, kind.__name__)
        self.stack.append(kind(self.data[pos:pos + n]))

    def _short_binbytes(self) -> None:
        self.push_bytes(self.data[self.take(1)], bytes)

    def _binbytes(self) -> None:
        self.push_bytes(_unpack_u4(self.data, self.take(4))[0], bytes)

    def _binbytes8(self) -> None:
        self.push_bytes(_unpack_u8(self.data, self.take(8))[0], bytes)

    def _bytearray8(self) -> None:
        self.push_bytes(_unpack_u8(self.data, self.take(8))[0], bytearray)

    def push_py2_string(self, n: int) -> None:
        # Python 2 str: read as latin-1 text, as pickle.Unpickler(encoding="latin1") does
        pos = self.sized(n, 1, _STR, "str")
        self.stack.append(str(self.data[pos:pos + n], "latin-1"))

    def _short_binstring(self) -> None:
        self.push_py2_string(self.data[self.take(1)])

    def _binstring(self) -> None:
        self.push_py2_string(_unpack_i4(self.data, self.take(4))[0])

    def _string(self) -> None:
        line = self.readline()[:-1]
        if len(line) < 2 or line[0] != line[-1] or line[:1] not in (b'"', b"'"):
            raise CorruptArchiveError(f"{self.source}: not a readable data pickle (an unquoted "
                                      "STRING). Download or write it again.")
        self.charge(1, _SLOT + _STR + len(line), "a str")
        self.stack.append(codecs.escape_decode(line[1:-1])[0].decode("latin-1"))

    # .. containers ......................................................................
    def _empty_list(self) -> None:
        self.stack.append([])
        self.items += 1
        self.nbytes += _SLOT + _LIST

    def _empty_dict(self) -> None:
        self.stack.append({})
        self.items += 1
        self.nbytes += _SLOT + _DICT

    def _empty_set(self) -> None:
        self.stack.append(set())
        self.items += 1
        self.nbytes += _SLOT + _SET

    def _empty_tuple(self) -> None:
        self.stack.append(())
        self.items += 1
        self.nbytes += _SLOT + _TUPLE

    def push_tuple(self, items: list[Any]) -> None:
        self.saw_global = False
        depth = self.scan(items, "a tuple", allow_globals=True) + 1
        self.charge(1, _SLOT + _TUPLE + _SLOT * len(items), "a tuple")
        value = tuple(items)
        self.set_depth(value, depth)
        if self.saw_global:
            self.tainted[id(value)] = value
        self.stack.append(value)

    def _tuple(self) -> None:
        self.push_tuple(self.pop_mark())

    def _tuple1(self) -> None:
        stack = self.stack
        item = stack.pop()
        self.push_tuple([item])

    def _tuple2(self) -> None:
        stack = self.stack
        b = stack.pop()
        a = stack.pop()
        self.push_tuple([a, b])

    def _tuple3(self) -> None:
        stack = self.stack
        c = stack.pop()
        b = stack.pop()
        a = stack.pop()
        self.push_tuple([a, b, c])

    def _list(self) -> None:
        items = self.pop_mark()
        depth = self.scan(items, "a list") + 1
        self.charge(1, _SLOT + _LIST, "a list")
        self.set_depth(items, depth)
        self.stack.append(items)

    def _append(self) -> None:
        stack = self.stack
        value = stack.pop()
        self.add_to_list(stack[-1], [value])

    def _appends(self) -> None:
        items = self.pop_mark()
        self.add_to_list(self.stack[-1], items)

    def add_to_list(self, target: Any, items: list[Any]) -> None:
        if type(target) is not list or id(target) in self.shared:
            self.mutable(target, (list,), "APPEND")
        depth = self.scan(items, "a list") + 1
        self.nbytes += _SLOT * len(items)
        if depth > 1 and depth > self.container_depth(target):
            self.set_depth(target, depth)
        target.extend(items)

    def _dict(self) -> None:
        items = self.pop_mark()
        value: dict[Any, Any] = {}
        self.charge(1, _SLOT + _DICT, "a dict")
        self.add_to_dict(value, items)
        self.stack.append(value)

    def _setitem(self) -> None:
        stack = self.stack
        v = stack.pop()
        k = stack.pop()
        self.add_to_dict(stack[-1], [k, v])

    def _setitems(self) -> None:
        items = self.pop_mark()
        self.add_to_dict(self.stack[-1], items)

    def add_to_dict(self, target: Any, items: list[Any]) -> None:
        self.mutable(target, _DICTS, "SETITEM")
        if len(items) % 2:
            raise CorruptArchiveError(f"{self.source}: not a readable data pickle (a key without a "
                                      "value). Download or write it again.")
        depth = self.scan(items, "a dict") + 1
        self.check_keys(items[::2], "a dict key")
        per = _ODICT_ITEM if type(target) is collections.OrderedDict else _DICT_ITEM
        self.charge(0, per * (len(items) // 2), "a dict")
        if depth > 1 and depth > self.container_depth(target):
            self.set_depth(target, depth)
        try:
            for i in range(0, len(items), 2):
                target[items[i]] = items[i + 1]
        except TypeError:
            raise self.refuse("dict key", "an unhashable dict key") from None

    def _additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        self.mutable(target, (set,), "ADDITEMS")
        depth = self.scan(items, "a set") + 1
        self.check_keys(items, "a set member")
        self.charge(0, _SET_ITEM * len(items), "a set")
        if depth > 1 and depth > self.container_depth(target):
            self.set_depth(target, depth)
        try:
            target.update(items)
        except TypeError:
            raise self.refuse("set item", "an unhashable set member") from None

    def make_set(self, kind: type, items: Any) -> Any:
        depth = self.scan(items, f"a {kind.__name__}") + 1
        self.check_keys(items, f"a {kind.__name__} member")
        self.charge(len(items), _SLOT + _SET + _SET_ITEM * len(items), f"a {kind.__name__}")
        try:
            value = kind(items)
        except TypeError:
            raise self.refuse(f"{kind.__name__} item", f"an unhashable {kind.__name__} member") from None
        self.set_depth(value, depth)
        return value

    def _frozenset(self) -> None:
        value = self.make_set(frozenset, self.pop_mark())
        self.stack.append(value)

    # .. memo ...........................................................................
    def put(self, key: int) -> None:
        if key < 0:
            raise CorruptArchiveError(f"{self.source}: not a readable data pickle (negative memo "
                                      "key). Download or write it again.")
        value = self.stack[-1]
        if type(value) is _PendingDtype:
            value.memo_keys.append(key)
        self.memo[key] = value
        self.items += 1
        self.nbytes += _MEMO

    def _memoize(self) -> None:
        self.put(len(self.memo))

    def _binput(self) -> None:
        self.put(self.data[self.take(1)])

    def _long_binput(self) -> None:
        self.put(_unpack_u4(self.data, self.take(4))[0])

    def _put_text(self) -> None:
        self.put(int(self.readline()[:-1]))

    def get(self, key: int) -> None:
        try:
            value = self.memo[key]
        except KeyError:
            raise CorruptArchiveError(f"{self.source}: not a readable data pickle (memo key {key} "
                                      "was never stored). Download or write it again.") from None
        self.push_again(value, f"memo entry {key}")

    def _binget(self) -> None:
        self.get(self.data[self.take(1)])

    def _long_binget(self) -> None:
        self.get(_unpack_u4(self.data, self.take(4))[0])

    def _get_text(self) -> None:
        self.get(int(self.readline()[:-1]))

    # .. globals and calls ...............................................................
    def find_global(self, module: str, name: str) -> None:
        # Python 2 names (``__builtin__.set``), mapped as pickle.Unpickler(fix_imports=True) does
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        found = _GLOBALS.get((module, name))
        if found is None:
            raise UnsafePickleError(self.source, f"{module}.{name}")
        self.stack.append(found)
        self.items += 1
        self.nbytes += _SLOT

    def _global(self) -> None:
        module = self.readline()[:-1].decode("utf-8")
        name = self.readline()[:-1].decode("utf-8")
        self.find_global(module, name)

    def _stack_global(self) -> None:
        name = self.stack.pop()
        module = self.stack.pop()
        if type(name) is not str or type(module) is not str:
            raise CorruptArchiveError(f"{self.source}: not a readable data pickle (STACK_GLOBAL "
                                      "needs two str). Download or write it again.")
        self.find_global(module, name)

    def _refused_opcode(self) -> None:
        op = bytes([self.data[self.pos - 1]])
        name = _REFUSED_OPCODES[op]
        if op in (b"P", b"Q"):
            raise UnsafePickleError(self.source, "persistent id")
        if op in (b"i",):  # INST names its class on the opcode line: say which
            module = self.readline()[:-1].decode("utf-8", "replace")
            cls = self.readline()[:-1].decode("utf-8", "replace")
            name = f"INST {module}.{cls}"
            if (module, cls) not in _GLOBALS:
                raise UnsafePickleError(self.source, f"{module}.{cls}")
        raise self.refuse(name.split()[0], f"the opcode {name} (it makes objects of a class, not data)")

    def _reduce(self) -> None:
        stack = self.stack
        args = stack.pop()
        func = stack[-1]
        if type(func) is not _Global:
            raise self.refuse("REDUCE", f"a call of {_describe(func)} (only allow-listed globals are called)")
        if type(args) is not tuple:
            raise self.refuse("REDUCE", f"{func.name} called with {_describe(args)} instead of a tuple")
        stack[-1] = getattr(self, "build_" + func.builder)(func.name, args)

    def bad_args(self, name: str, args: tuple, expected: str) -> UnsafePickleError:
        got = ", ".join(_describe(a) if not isinstance(a, (int, float, str)) or isinstance(a, bool)
                        else type(a).__name__ for a in args)
        return self.refuse(name, f"{name}({got}); only {expected} is read")

    def build_set(self, name: str, args: tuple) -> Any:
        return self.build_anyset(set, name, args)

    def build_frozenset(self, name: str, args: tuple) -> Any:
        return self.build_anyset(frozenset, name, args)

    def build_anyset(self, kind: type, name: str, args: tuple) -> Any:
        if not args:
            return self.make_set(kind, [])
        if len(args) != 1 or type(args[0]) not in (list, tuple, set, frozenset):
            raise self.bad_args(name, args, f"{kind.__name__}() of a list, tuple or set")
        return self.make_set(kind, args[0])

    def build_complex(self, name: str, args: tuple) -> Any:
        if not (1 <= len(args) <= 2) or any(type(a) not in (int, float) for a in args):
            raise self.bad_args(name, args, "complex(real, imag) of two numbers")
        self.charge(1, _SLOT + _SCALAR, "a complex")
        return complex(*args)

    def build_bytes(self, name: str, args: tuple) -> Any:
        if not args:
            return b""
        if len(args) != 1 or type(args[0]) is not bytes:
            raise self.bad_args(name, args, "bytes() or bytes(bytes)")
        return args[0]

    def build_bytearray(self, name: str, args: tuple) -> Any:
        if not args:
            data = b""
        elif len(args) == 1 and type(args[0]) is bytes:
            data = args[0]
        elif (len(args) == 2 and type(args[0]) is str and type(args[1]) is str
              and args[1].lower() in _LATIN1):
            data = self.latin1(args[0])
        else:
            raise self.bad_args(name, args, "bytearray(bytes) or bytearray(str, 'latin-1')")
        self.charge(1, _SLOT + _BYTEARRAY + len(data), f"a bytearray of {len(data):,} bytes")
        return bytearray(data)

    def latin1(self, text: str) -> bytes:
        self.charge(1, _SLOT + _BYTES + len(text), f"bytes of {len(text):,} characters")
        try:
            return text.encode("latin-1")
        except UnicodeEncodeError:
            raise CorruptArchiveError(f"{self.source}: not a readable data pickle (latin-1 bytes with a "
                                      "character above 255). Download or write it again.") from None

    def build_encode(self, name: str, args: tuple) -> Any:
        if (len(args) == 2 and type(args[0]) is str and type(args[1]) is str
                and args[1].lower() in _LATIN1):
            return self.latin1(args[0])
        raise self.bad_args(name, args, "_codecs.encode(str, 'latin1')")

    def build_odict(self, name: str, args: tuple) -> Any:
        value: collections.OrderedDict[Any, Any] = collections.OrderedDict()
        self.charge(1, _SLOT + _ODICT, "an OrderedDict")
        if not args:
            return value
        if len(args) != 1 or type(args[0]) not in (list, tuple):
            raise self.bad_args(name, args, "OrderedDict() or OrderedDict(list of pairs)")
        flat: list[Any] = []
        for pair in args[0]:
            if type(pair) not in (list, tuple) or len(pair) != 2:
                raise self.bad_args(name, args, "OrderedDict() or OrderedDict(list of pairs)")
            flat.extend(pair)
        self.add_to_dict(value, flat)
        return value

    def build_ndarray(self, name: str, args: tuple) -> Any:
        raise self.refuse(name, f"{name}(...) called directly; it is read only as the array type of "
                          "_reconstruct")

    # .. numpy ..........................................................................
    def build_dtype(self, name: str, args: tuple) -> Any:
        if not (1 <= len(args) <= 3) or type(args[0]) not in (str, bytes):
            raise self.bad_args(name, args, "numpy.dtype(type string, align, copy)")
        code = args[0] if type(args[0]) is str else args[0].decode("latin-1")
        if code[:1] in _ENDIANS:
            code = code[1:]
        if code not in _CODES:
            raise self.refuse(name, f"numpy.dtype({args[0]!r:.40}): only the plain numeric types "
                              "bool, int8-64, uint8-64 and float16-64 are read")
        if any(type(a) not in (bool, int) or a not in (0, 1) for a in args[1:]):
            raise self.bad_args(name, args, "numpy.dtype(type string, align, copy)")
        self.charge(1, _SLOT + _DTYPE, "a dtype")
        return _PendingDtype(code)

    def dtype_arg(self, name: str, dtype: Any) -> np.dtype:
        if not _is_dtype(dtype):
            raise self.refuse(name, f"{name} with {_describe(dtype)} as its dtype (only a plain "
                              "numeric numpy dtype, given its state first, is read)")
        return dtype

    def shape_arg(self, name: str, shape: Any, itemsize: int) -> tuple[tuple[int, ...], int]:
        """A checked shape and its size in bytes, refused before anything that size exists."""
        if type(shape) is not tuple or len(shape) > MAX_NDIM or any(type(n) is not int for n in shape):
            raise self.refuse(name, f"{name} with the shape {_describe(shape)} (a tuple of at most "
                              f"{MAX_NDIM} whole numbers is read)")
        size = itemsize
        for n in shape:
            if n < 0:
                raise self.refuse(name, f"{name} with a negative dimension in its shape")
            size *= n
            if n > self.max_bytes or size > self.max_bytes:
                raise self.over_budget(f"an array of shape {shape}"[:160], memory=True)
        return shape, size

    def build_reconstruct(self, name: str, args: tuple) -> Any:
        if (len(args) != 3 or type(args[0]) is not _Global or args[0].builder != "ndarray"
                or type(args[1]) is not tuple or type(args[2]) not in (bytes, str)):
            raise self.bad_args(name, args, "_reconstruct(numpy.ndarray, shape, type code)")
        self.charge(1, _SLOT + _ARRAY, "an array")
        value = np.empty((0,), dtype=np.int8)  # its checked state follows in BUILD
        self.unbuilt[id(value)] = value
        return value

    def scalar_bytes(self, name: str, data: Any) -> bytes:
        if type(data) is str:  # Python 2 pickles, read as latin-1
            return self.latin1(data)
        if type(data) is not bytes:
            raise self.refuse(name, f"{name} with {_describe(data)} as its data (bytes are read)")
        return data

    def build_scalar(self, name: str, args: tuple) -> Any:
        if len(args) != 2:
            raise self.bad_args(name, args, "scalar(plain numeric dtype, bytes)")
        dtype = self.dtype_arg(name, args[0])
        data = self.scalar_bytes(name, args[1])
        if len(data) != dtype.itemsize:
            raise self.refuse(name, f"{name} of {dtype} from {len(data)} bytes (it takes exactly "
                              f"{dtype.itemsize})")
        self.charge(1, _SLOT + _SCALAR, "a numpy scalar")
        return np.frombuffer(data, dtype=dtype, count=1)[0]

    def build_frombuffer(self, name: str, args: tuple) -> Any:
        if not (4 <= len(args) <= 5) or type(args[0]) not in (bytes, bytearray):
            raise self.bad_args(name, args, "_frombuffer(bytes, plain dtype, shape, order)")
        buf, dtype, shape, order = args[:4]
        dtype = self.dtype_arg(name, dtype)
        shape, size = self.shape_arg(name, shape, dtype.itemsize)
        axis_order = args[4] if len(args) == 5 else None
        if type(order) is not str or order not in ("C", "F", "K") or (order == "K") != (axis_order is not None):
            raise self.refuse(name, f"{name} with the order {_describe(order)}")
        if axis_order is not None and (type(axis_order) is not tuple
                                       or any(type(a) is not int for a in axis_order)
                                       or sorted(axis_order) != list(range(len(shape)))):
            raise self.refuse(name, f"{name} with an axis order that is not a permutation of the shape's axes")
        if len(buf) != size:
            raise self.refuse(name, f"{name} of shape {shape} and {dtype} over {len(buf):,} bytes "
                              f"(it takes exactly {size:,})")
        self.charge(1, _SLOT + _ARRAY, "an array")
        array = np.frombuffer(buf, dtype=dtype)
        if axis_order is not None:
            return array.reshape(shape, order="C").transpose(axis_order)
        return array.reshape(shape, order=order)

    def _build(self) -> None:
        stack = self.stack
        state = stack.pop()
        target = stack[-1]
        if type(target) is _PendingDtype and not target.done:
            dtype = self.dtype_state(target, state)
            target.done = True
            stack[-1] = dtype
            for key in target.memo_keys:
                if self.memo.get(key) is target:
                    self.memo[key] = dtype
        elif type(target) is np.ndarray and id(target) in self.unbuilt:
            self.array_state(target, state)
            del self.unbuilt[id(target)]
        else:
            raise self.refuse("BUILD", f"BUILD on {_describe(target)} (only a new numpy dtype or array "
                              "takes a state)")

    def dtype_state(self, pending: _PendingDtype, state: Any) -> np.dtype:
        """The dtype for a checked state ``(3, byte order, None, None, None, -1, -1, 0)``."""
        plain = (type(state) is tuple and len(state) in (8, 9) and type(state[0]) is int
                 and state[0] in (3, 4) and type(state[1]) is str and state[1] in _ENDIANS
                 and state[2] is None and state[3] is None and state[4] is None
                 and all(type(v) is int for v in state[5:8]) and state[5:8] == (-1, -1, 0)
                 and (len(state) == 8 or state[8] is None))
        if not plain:
            raise self.refuse("dtype state", f"a numpy dtype state {_state_summary(state)}: only plain "
                              "numeric dtypes (no fields, offsets, subarrays, item size, alignment, "
                              "metadata or flags) are read")
        endian = state[1]
        if pending.code[1] == "1":
            endian = "|"
        elif endian == "|":
            raise self.refuse("dtype state", f"a {pending.code} dtype without a byte order")
        return _DTYPES[(endian, pending.code)]

    def array_state(self, array: np.ndarray, state: Any) -> None:
        """Give ``array`` a checked state ``(1, shape, plain dtype, is_fortran, bytes)``."""
        if type(state) is tuple and len(state) == 5 and type(state[0]) is int and state[0] == 1:
            state = state[1:]
        if type(state) is not tuple or len(state) != 4:
            raise self.refuse("array state", f"a numpy array state {_state_summary(state)}")
        shape, dtype, fortran, raw = state
        dtype = self.dtype_arg("an array state", dtype)
        shape, size = self.shape_arg("an array state", shape, dtype.itemsize)
        if type(fortran) not in (bool, int) or fortran not in (0, 1):
            raise self.refuse("array state", f"a numpy array state whose order flag is {_describe(fortran)}")
        raw = self.scalar_bytes("an array state", raw)
        if len(raw) != size:
            raise self.refuse("array state", f"an array of shape {shape} and {dtype} from {len(raw):,} "
                              f"bytes (it takes exactly {size:,})")
        self.charge(0, size, f"an array of {size:,} bytes")
        array.__setstate__((1, shape, dtype, bool(fortran), raw))


def _state_summary(state: Any) -> str:
    if type(state) is tuple:
        return "(" + ", ".join(_describe(v) if not isinstance(v, (int, str, type(None))) else repr(v)[:20]
                               for v in state[:10]) + (", ..." if len(state) > 10 else "") + ")"
    return f"of type {_describe(state)}"


def _leaf_bytes(obj: Any) -> int:
    t = type(obj)
    if t in (str, bytes, bytearray, int):
        return sys.getsizeof(obj)
    if t is np.ndarray:
        return _ARRAY + obj.nbytes
    return _SCALAR


def _container_bytes(obj: Any) -> int:
    t = type(obj)
    n = len(obj)
    if t is list:
        return _LIST + _SLOT * n
    if t is tuple:
        return _TUPLE + _SLOT * n
    if t is dict:
        return _DICT + _DICT_ITEM * n
    if t is collections.OrderedDict:
        return _ODICT + _ODICT_ITEM * n
    return _SET + _SET_ITEM * n


_OPCODES = {
    b"\x80": "_proto", b"\x95": "_frame", b".": "_stop", b"(": "_mark", b"0": "_pop",
    b"1": "_pop_mark", b"2": "_dup", b"N": "_none", b"\x88": "_true", b"\x89": "_false",
    b"J": "_binint", b"K": "_binint1", b"M": "_binint2", b"G": "_binfloat", b"\x8a": "_long1",
    b"\x8b": "_long4", b"I": "_int", b"L": "_long_text", b"F": "_float",
    b"\x8c": "_short_binunicode", b"X": "_binunicode", b"\x8d": "_binunicode8", b"V": "_unicode",
    b"C": "_short_binbytes", b"B": "_binbytes", b"\x8e": "_binbytes8", b"\x96": "_bytearray8",
    b"U": "_short_binstring", b"T": "_binstring", b"S": "_string",
    b"]": "_empty_list", b"}": "_empty_dict", b"\x8f": "_empty_set", b")": "_empty_tuple",
    b"t": "_tuple", b"\x85": "_tuple1", b"\x86": "_tuple2", b"\x87": "_tuple3", b"l": "_list",
    b"a": "_append", b"e": "_appends", b"d": "_dict", b"s": "_setitem", b"u": "_setitems",
    b"\x90": "_additems", b"\x91": "_frozenset",
    b"\x94": "_memoize", b"q": "_binput", b"r": "_long_binput", b"p": "_put_text",
    b"h": "_binget", b"j": "_long_binget", b"g": "_get_text",
    b"c": "_global", b"\x93": "_stack_global", b"R": "_reduce", b"b": "_build",
}
_REFUSED_OPCODES = {
    b"i": "INST", b"o": "OBJ", b"\x81": "NEWOBJ", b"\x92": "NEWOBJ_EX", b"\x82": "EXT1",
    b"\x83": "EXT2", b"\x84": "EXT4", b"P": "PERSID", b"Q": "BINPERSID",
    b"\x97": "NEXT_BUFFER (an out-of-band buffer)", b"\x98": "READONLY_BUFFER (an out-of-band buffer)",
}
_OPCODES.update(dict.fromkeys(_REFUSED_OPCODES, "_refused_opcode"))


# -- reading ----------------------------------------------------------------------------
def _corrupt(source: str, why: str) -> CorruptArchiveError:
    return CorruptArchiveError(
        f"{source}: not a readable data pickle ({why}). The file is truncated or not a pickle of plain "
        "containers and numpy arrays; download or write it again.")


def _too_large(source: str, size: str, max_bytes: int) -> UnsafePickleError:
    return _refused(source, "file size", f"the file is {size} bytes, more than {max_bytes:,}",
                    _budget_fix(_ENV_BYTES, max_bytes))


def _read_bounded(fh: IO[bytes], source: str, max_bytes: int) -> bytearray:
    """At most ``max_bytes`` bytes of ``fh``, read in chunks (never one huge read)."""
    data = bytearray()
    while True:
        chunk = fh.read(min(_CHUNK, max_bytes + 1 - len(data)))
        if not chunk:
            return data
        if not isinstance(chunk, (bytes, bytearray)):
            raise InvalidArgumentError(f"{source}: open the pickle in binary mode ('rb'); reading it "
                                       f"gave {type(chunk).__name__}.")
        data += chunk
        if len(data) > max_bytes:
            raise _too_large(source, f"over {max_bytes:,}", max_bytes)


def _interpret(data: bytes | bytearray, source: str, max_bytes: int, max_items: int) -> Any:
    machine = _Machine(data, source, max_bytes, max_items)
    try:
        return machine.run()
    except NucdataError:
        raise
    except (_Truncated, struct.error, IndexError) as exc:
        if isinstance(exc, IndexError) and machine.pos < machine.end:
            raise _corrupt(source, "an opcode found too few values on the stack") from None
        raise _corrupt(source, f"it ends at byte {machine.end:,} in the middle of its data" if machine.end
                       else "the file is empty") from None
    except MemoryError:
        raise _refused(source, "memory", "it ran out of memory within the budgets",
                       f"lower {_ENV_BYTES} or {_ENV_ITEMS}, or free memory, and load it again") from None
    except RecursionError:
        raise _refused(source, "nesting", "it nests too deep") from None
    except Exception as exc:  # any other failure of malformed data is a typed error, never raw
        raise _corrupt(source, f"{type(exc).__name__}: {exc}"[:300]) from None


def load(file: str | os.PathLike[str] | IO[bytes]) -> Any:
    """Unpickle a data file, building only plain data and numeric numpy arrays, within budgets.

    Parameters
    ----------
    file
        A path, or a binary file object open for reading.

    Returns
    -------
    object
        The unpickled containers, scalars and numpy arrays.

    Raises
    ------
    UnsafePickleError
        The pickle names a global outside :data:`ALLOWED`, asks for something a data pickle
        does not hold (an object or structured dtype, an array whose bytes do not fit its
        shape, a class instance ...), nests deeper than :data:`MAX_DEPTH`, or exceeds
        ``NUCDATA_PICKLE_MAX_BYTES`` / ``NUCDATA_PICKLE_MAX_ITEMS``; nothing it asked for
        was called or allocated.
    CorruptArchiveError
        The file is truncated, unreadable or not a pickle.
    InvalidArgumentError
        ``NUCDATA_PICKLE_MAX_BYTES`` or ``NUCDATA_PICKLE_MAX_ITEMS`` is not a positive
        whole number.
    """
    max_bytes, max_items = _budgets()
    if isinstance(file, (str, os.PathLike)):
        path = Path(file)
        try:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size > max_bytes:
                    raise _too_large(str(path), f"{size:,}", max_bytes)
                data = _read_bounded(fh, str(path), max_bytes)
        except OSError as exc:
            raise CorruptArchiveError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
        return _interpret(data, str(path), max_bytes, max_items)
    source = str(getattr(file, "name", "<pickle stream>"))
    try:
        data = _read_bounded(file, source, max_bytes)
    except OSError as exc:
        raise CorruptArchiveError(f"{source}: cannot be read ({exc.strerror or exc}).") from None
    return _interpret(data, source, max_bytes, max_items)


def loads(data: bytes, source: str = "<pickle bytes>") -> Any:
    """Unpickle ``data`` with the allow-list and budgets (see :func:`load`).

    Parameters
    ----------
    data
        The pickle's bytes.
    source
        Named in error messages.

    Returns
    -------
    object
        The unpickled containers, scalars and numpy arrays.

    Raises
    ------
    UnsafePickleError
        As for :func:`load`.
    CorruptArchiveError
        ``data`` is truncated or not a pickle.
    """
    max_bytes, max_items = _budgets()
    if not isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(memoryview(data))
        except TypeError:
            raise InvalidArgumentError(f"{source}: loads() takes the pickle's bytes, not "
                                       f"{type(data).__name__}.") from None
    if len(data) > max_bytes:
        raise _too_large(source, f"{len(data):,}", max_bytes)
    return _interpret(data, source, max_bytes, max_items)
