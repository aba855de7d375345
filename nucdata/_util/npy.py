"""Streaming ``.npy`` files and their records: the store's file format, one home.

:class:`NpyStreamWriter` appends to a ``.npy`` file whose final shape is known only at
the end, hashing the data bytes as they are written; :func:`file_record` is the
manifest's record of one file; :func:`data_sha256` and :func:`npy_header` read them back.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from nucdata._util import disk

__all__ = ["NpyStreamWriter", "data_sha256", "file_record", "npy_header"]

_HEADER_BYTES = 256  # reserved .npy header; final shape is written once known


class NpyStreamWriter:
    """Append arrays to a ``.npy`` file whose final shape is known only at the end.

    A fixed 256-byte header is reserved and rewritten on :meth:`close`, so data
    never has to be copied: ``np.load(..., mmap_mode="r")`` reads the result. A full
    disk is a :class:`~nucdata.errors.DiskFullError` naming the file, the bytes written
    so far and those of the failed write.
    """

    def __init__(self, path: Path, dtype: np.dtype | str):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.count = 0  # elements written
        self._hash = hashlib.sha256()  # of the data bytes (after the header), streamed
        with disk.mapped(self.path, f"creating {self.path.name}"):
            self._fh = open(self.path, "wb")  # noqa: SIM115 - closed in close()
            self._fh.write(b"\0" * _HEADER_BYTES)

    def append(self, array: np.ndarray) -> int:
        """Append ``array`` (C order); return the element offset where it starts."""
        start = self.count
        data = np.ascontiguousarray(array, dtype=self.dtype)
        raw = data.reshape(-1).view(np.uint8)
        with disk.mapped(self.path, f"writing {self.path.name} ({self.count * self.dtype.itemsize:,} bytes "
                         "written so far)", needed=raw.nbytes):
            self._fh.write(raw)
        self._hash.update(raw)
        self.count += data.size
        return start

    def close(self, shape: tuple[int, ...]) -> dict[str, Any]:
        """Write the final header; return the file's record (see :func:`file_record`)."""
        if int(np.prod(shape, dtype=np.int64)) != self.count:
            raise ValueError(f"{self.path}: shape {shape} does not hold {self.count} elements")
        header = f"{{'descr': {np.lib.format.dtype_to_descr(self.dtype)!r}, 'fortran_order': False, 'shape': {tuple(int(s) for s in shape)!r}, }}"
        body = header.encode("latin1")
        pad = _HEADER_BYTES - 10 - len(body) - 1
        if pad < 0:
            raise ValueError("shape too long for the reserved .npy header")
        blob = b"\x93NUMPY\x01\x00" + (_HEADER_BYTES - 10).to_bytes(2, "little")
        blob += body + b" " * pad + b"\n"
        with disk.mapped(self.path, f"finishing {self.path.name}"):
            self._fh.seek(0)
            self._fh.write(blob)
            self._fh.close()
        return {"shape": [int(x) for x in shape], "dtype": np.lib.format.dtype_to_descr(self.dtype),
                "sha256": self._hash.hexdigest(), "bytes": self.path.stat().st_size}

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()


def file_record(array: np.ndarray, path: Path) -> dict[str, Any]:
    """The manifest's record of one ``.npy`` file.

    ``shape`` and ``dtype`` (numpy's descr string) of the array, ``sha256`` of its
    data bytes (the file after the ``.npy`` header, so that streamed files can be
    hashed while written) and ``bytes``, the file's size.
    """
    array = np.ascontiguousarray(array)
    return {"shape": [int(x) for x in array.shape], "dtype": np.lib.format.dtype_to_descr(array.dtype),
            "sha256": hashlib.sha256(array.reshape(-1).view(np.uint8)).hexdigest(),
            "bytes": Path(path).stat().st_size}


def data_sha256(path: Path, chunk: int = 1 << 24) -> str:
    """SHA-256 of a ``.npy`` file's data bytes (everything after its header)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(fh)
        else:
            np.lib.format.read_array_header_2_0(fh)
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and header length of a ``.npy`` file, reading only its header.

    Raises
    ------
    OSError
        When the file cannot be read.
    ValueError
        For anything numpy's header parser refuses, whatever it raised (a damaged
        header can make it raise ``SyntaxError``, ``tokenize.TokenError`` or ``TypeError``).
    """
    with open(path, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        except OSError:
            raise
        except Exception as exc:  # noqa: BLE001 - numpy's parser raises many types for damaged headers
            raise ValueError(f"not a readable .npy header ({type(exc).__name__}: {exc})") from None
        return tuple(shape), dtype, fh.tell()
