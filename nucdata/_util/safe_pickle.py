"""An allow-list unpickler for data pickles (merged datasets, the authors' releases).

A pickle can name any importable callable and call it while loading: a file whose
``__reduce__`` returns ``(os.system, ("...",))`` runs a shell command in plain
``pickle.load``. :func:`load` resolves only the globals in :data:`ALLOWED` and refuses
every other one **before** it is called, with :class:`~nucdata.errors.UnsafePickleError`
naming the file and the global.

Allowed: the builtin containers and scalars (dict, list, tuple, str, bytes, int,
float, bool, None need no global; ``set``, ``frozenset``, ``complex``, ``bytearray``,
``slice``, ``range`` and ``collections.OrderedDict`` do), numpy arrays, dtypes and
scalars through numpy's own reconstructors (``_reconstruct``, ``ndarray``, ``dtype``,
``scalar``, ``_frombuffer``; both the ``numpy.core`` names of numpy 1 and the
``numpy._core`` names of numpy 2), and ``_codecs.encode`` restricted to latin-1, which
protocol-2 pickles use for bytes. Nothing else: no classes of other packages, no
functions, no ``copyreg`` object reconstruction.
"""

from __future__ import annotations

import _compat_pickle
import builtins
import collections
import io
import os
import pickle
from pathlib import Path
from typing import IO, Any

import numpy as np

from nucdata.errors import CorruptArchiveError, UnsafePickleError

__all__ = ["ALLOWED", "load", "loads"]


def _numpy_module(name: str) -> Any:
    """``numpy._core.<name>`` (numpy 2) or ``numpy.core.<name>`` (numpy 1)."""
    import importlib

    try:
        return importlib.import_module(f"numpy._core.{name}")
    except ImportError:  # numpy 1
        return importlib.import_module(f"numpy.core.{name}")


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes; latin-1 only."""
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin-1")


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's ``_reconstruct``, for plain ``ndarray`` only (no subclass hooks)."""
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"array subtype {subtype!r} is not allowed")
    return _numpy_module("multiarray")._reconstruct(np.ndarray, shape, dtype)


def _allowed() -> dict[tuple[str, str], Any]:
    multiarray = _numpy_module("multiarray")
    numeric = _numpy_module("numeric")
    table: dict[tuple[str, str], Any] = {
        ("builtins", name): getattr(builtins, name)
        for name in ("set", "frozenset", "complex", "bytearray", "slice", "range")
    }
    table[("collections", "OrderedDict")] = collections.OrderedDict
    table[("_codecs", "encode")] = _latin1_encode
    for prefix in ("numpy.core", "numpy._core"):
        table[(f"{prefix}.multiarray", "_reconstruct")] = _reconstruct
        table[(f"{prefix}.multiarray", "scalar")] = multiarray.scalar
        table[(f"{prefix}.numeric", "_frombuffer")] = numeric._frombuffer
    table[("numpy", "ndarray")] = np.ndarray
    table[("numpy", "dtype")] = np.dtype
    return table


#: ``(module, name)`` of every global a data pickle may use, and what it resolves to.
ALLOWED: dict[tuple[str, str], Any] = _allowed()


class _Unpickler(pickle.Unpickler):
    def __init__(self, fh: IO[bytes], source: str):
        super().__init__(fh, encoding="latin1")  # numpy arrays from Python 2 pickles
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (``__builtin__.set``), mapped as pickle.Unpickler(fix_imports=True) does
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        # numpy dtype classes (numpy.dtypes.Float64DType ...) appear in some numpy-2 pickles
        if module == "numpy.dtypes" and name.endswith("DType"):
            import numpy.dtypes as dtypes

            cls = getattr(dtypes, name, None)
            if isinstance(cls, type) and issubclass(cls, np.dtype):
                return cls
        raise UnsafePickleError(self.source, f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(self.source, f"persistent id {pid!r}")


def _read(fh: IO[bytes], source: str) -> Any:
    try:
        return _Unpickler(fh, source).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, OverflowError, UnicodeDecodeError) as exc:
        raise CorruptArchiveError(
            f"{source}: not a readable data pickle ({type(exc).__name__}: {exc}). The file is truncated "
            "or not a pickle of plain containers and numpy arrays; download or write it again."
        ) from None


def load(file: str | os.PathLike[str] | IO[bytes]) -> Any:
    """Unpickle a data file, refusing every global outside :data:`ALLOWED`.

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
        The pickle names a global outside the allow-list; nothing it asked for ran.
    CorruptArchiveError
        The file is truncated or not a pickle.
    """
    if isinstance(file, (str, os.PathLike)):
        path = Path(file)
        try:
            with open(path, "rb") as fh:
                return _read(fh, str(path))
        except OSError as exc:
            raise CorruptArchiveError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
    return _read(file, str(getattr(file, "name", "<pickle stream>")))


def loads(data: bytes, source: str = "<pickle bytes>") -> Any:
    """Unpickle ``data`` with the allow-list (see :func:`load`).

    Parameters
    ----------
    data
        The pickle's bytes.
    source
        Named in error messages.
    """
    return _read(io.BytesIO(data), source)
