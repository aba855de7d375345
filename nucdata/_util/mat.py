"""MATLAB v5 ``.mat`` files read safely: headers checked before any variable is loaded.

``scipy.io.whosmat`` reads each variable's name, dimensions and MATLAB class without its
data, so a crafted header (a 20000 x 20000 map, a billion points) is refused before
``loadmat`` would allocate it. CoNSeP's and CRCHisto's converters read through here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.io import loadmat, whosmat

from nucdata.errors import MalformedAnnotationError

__all__ = ["NUMERIC_CLASSES", "load_variables", "numeric_shape", "variables"]

#: MATLAB classes a numeric variable may have (``scipy.io.whosmat``'s third field)
NUMERIC_CLASSES = frozenset({"double", "single", "logical", "int8", "int16", "int32", "int64",
                             "uint8", "uint16", "uint32", "uint64"})
_KINDS = {"char": "text", "cell": "a cell array or struct", "struct": "a cell array or struct",
          "sparse": "a sparse matrix"}


def _unreadable(path: Path, exc: Exception) -> MalformedAnnotationError:
    return MalformedAnnotationError(
        f"{path}: not a readable MATLAB file ({type(exc).__name__}: {exc}); extract or download it again.")


def variables(path: Path, dataset: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (dimensions, MATLAB class) of every variable, from the headers only.

    Raises
    ------
    MalformedAnnotationError
        For a MATLAB v7.3 (HDF5) file (``dataset``'s files are v5) or a damaged header.
    """
    try:
        found = whosmat(path)
    except NotImplementedError as exc:  # MATLAB v7.3 (HDF5) files
        raise MalformedAnnotationError(
            f"{path}: a MATLAB v7.3 (HDF5) file ({exc}); {dataset}'s files are MATLAB v5. Use the official "
            "archive's files.") from None
    except Exception as exc:  # scipy raises several types for damaged headers
        raise _unreadable(path, exc) from None
    return {name: (tuple(int(d) for d in shape), kind) for name, shape, kind in found}


def numeric_shape(path: Path, key: str, header: tuple[tuple[int, ...], str], dataset: str) -> int:
    """The number of elements of numeric variable ``key`` (a typed error when it is not numeric)."""
    shape, kind = header
    if kind not in NUMERIC_CLASSES:
        what = _KINDS.get(kind, f"MATLAB class {kind!r}")
        raise MalformedAnnotationError(
            f"{path}: {key} holds {what}, not numbers. {dataset}'s files store it as a numeric matrix; the "
            "file was re-saved by another tool or is not ground truth.")
    return int(np.prod(shape, dtype=object)) if shape else 1


def load_variables(path: Path, keys: list[str]) -> dict[str, np.ndarray]:
    """``loadmat`` of ``keys`` only (call after checking their headers); damaged data is a typed error."""
    try:
        return loadmat(path, variable_names=list(keys))
    except Exception as exc:  # scipy raises several types for damaged files
        raise _unreadable(path, exc) from None
