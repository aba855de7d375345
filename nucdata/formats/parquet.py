"""Parquet: one row per nucleus, columns per label set, for pandas, polars, DuckDB and Spark.

Written with ``pyarrow`` (the optional extra ``nucdata[parquet]``): it is the reference
Parquet implementation that pandas, polars and DuckDB read back and it writes row group
by row group, so a slide's table is written region by region in bounded memory;
fastparquet would need pandas and writes whole frames.

Columns (pixel-centre frame, offsets added):

``image`` (string), ``id`` (int64), ``x``, ``y`` (float64 px), ``area_px`` (float64),
``x_um``, ``y_um``, ``area_um2`` (when µm/px is known; the centroid in the corner frame
times µm/px, as QuPath measures it), ``label`` (int64 code, -1 none) / ``class``
(its name) / ``probability`` (the record's own labels, when it has them), then per
label set ``S`` the record carries: ``S`` (class name; ``"outside"``; null when missing),
``S_id`` (int64; -1 missing, -2 outside), ``S_probability``, ``S_outside`` (the
probability of none of the set's classes) and ``S_candidates`` (the candidate class
names joined by ``|``); then the record's measurements (float64, by name).

:func:`read_parquet` gives the columns back as numpy arrays (for tests and quick looks).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nucdata._util.atomic import atomic_path
from nucdata.errors import InvalidArgumentError, MissingDependencyError
from nucdata.formats._limits import existing_file
from nucdata.formats._record import Nuclei
from nucdata.formats._stream import PublishOnExit

__all__ = ["ParquetWriter", "read_parquet", "write_parquet"]


def _pyarrow() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError('"nucdata[parquet]"', "Parquet tables (pyarrow); QuPath GeoJSON and HoVer-Net "
                                     "JSON need nothing extra") from None
    return pa, pq


def columns(nuclei: Nuclei) -> dict[str, Any]:
    """The table of one record as ``{column: values}`` (module docstring)."""
    n = len(nuclei)
    dx, dy = nuclei.offset
    x = nuclei.centroids[:, 0] + dx
    y = nuclei.centroids[:, 1] + dy
    areas = nuclei.areas if nuclei.areas is not None else nuclei.outline_areas()
    out: dict[str, Any] = {"image": [nuclei.image] * n, "id": nuclei.ids, "x": x, "y": y, "area_px": areas}
    if nuclei.mpp is not None and nuclei.mpp > 0:
        m = float(nuclei.mpp)
        out.update(x_um=(x + 0.5) * m, y_um=(y + 0.5) * m, area_um2=areas * m * m)
    if nuclei.labels is not None:
        out["label"] = nuclei.labels
        out["class"] = nuclei.label_names()
        if nuclei.probabilities is not None:
            out["probability"] = nuclei.probabilities
    for name, s in nuclei.sets.items():
        out[name] = [s.name_of(int(v)) for v in s.labels.tolist()]
        out[f"{name}_id"] = s.labels
        out[f"{name}_probability"] = s.probabilities if s.probabilities is not None else np.full(n, np.nan)
        out[f"{name}_outside"] = s.outside if s.outside is not None else np.full(n, np.nan)
        if s.candidates is not None:
            k = len(s.classes)
            out[f"{name}_candidates"] = [
                "|".join([str(s.classes[j]) for j in range(k) if (int(b) >> j) & 1]
                         + (["outside"] if (int(b) >> k) & 1 else []))
                for b in s.candidates.tolist()]
        else:
            out[f"{name}_candidates"] = [None] * n
    for key, values in nuclei.measurements.items():
        if key not in out:
            out[key] = values
    return out


class ParquetWriter(PublishOnExit):
    """Write a Parquet table record by record (one row group each); published atomically on close."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.pa, self.pq = _pyarrow()
        self.path = Path(path)
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self._writer = None
        self._schema = None
        self.count = 0

    def add(self, nuclei: Nuclei) -> int:
        """Append one record's rows; every record must give the same columns."""
        table = self.pa.table(columns(nuclei))
        if self._writer is None:
            self._schema = table.schema
            self._writer = self.pq.ParquetWriter(str(self._tmp), self._schema)
        elif table.schema.names != self._schema.names:
            raise InvalidArgumentError(f"{self.path}: the nuclei of {nuclei.image!r} give the columns "
                                       f"{table.schema.names}, the file has {self._schema.names}; write records "
                                       "with the same label sets and measurements into one table")
        else:
            table = table.cast(self._schema)
        self._writer.write_table(table)
        self.count += len(nuclei)
        return len(nuclei)

    def close(self) -> Path:
        """Finish the file and publish it."""
        if self._atomic is not None:
            if self._writer is None:
                empty = self.pa.table({"image": self.pa.array([], self.pa.string()),
                                       "id": self.pa.array([], self.pa.int64())})
                self.pq.write_table(empty, str(self._tmp))
            else:
                self._writer.close()
            self._atomic.__exit__(None, None, None)
            self._atomic = None
        return self.path

    def abort(self, exc: BaseException | None = None) -> None:
        if self._atomic is not None:
            if self._writer is not None:
                self._writer.close()
            error = exc or RuntimeError("aborted")
            self._atomic.__exit__(type(error), error, error.__traceback__)
            self._atomic = None


def write_parquet(path: str | os.PathLike[str], nuclei: Nuclei | Sequence[Nuclei]) -> Path:
    """Write records as one Parquet table (module docstring), atomically.

    Raises
    ------
    MissingDependencyError
        Without pyarrow (``pip install "nucdata[parquet]"``).
    """
    records = [nuclei] if isinstance(nuclei, Nuclei) else list(nuclei)
    with ParquetWriter(path) as out:
        for record in records:
            out.add(record)
    return Path(path)


def read_parquet(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The columns of a Parquet table as numpy arrays (strings as object arrays)."""
    _, pq = _pyarrow()
    table = pq.read_table(str(existing_file(path, "Parquet table")))
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
