"""The export registry: format name -> the module that writes it.

Each format is one module of this package that defines ``NAME``, ``DESCRIPTION``,
``OPTIONS`` (the keyword options its ``write`` takes) and ``write(ds, out, **options) ->
list[Path]``; :data:`FORMATS` names it. A module is imported only when its format is
used, so the command line can list the formats without loading any writer.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from nucdata.errors import InvalidArgumentError

if TYPE_CHECKING:
    from nucdata.dataset import NucleusDataset

__all__ = ["FORMATS", "export", "exporter"]

#: every export format and its module, in the order the command line lists them
FORMATS: dict[str, str] = {
    "geojson": "nucdata.exports.geojson",
    "coco": "nucdata.exports.coco",
    "hovernet-json": "nucdata.exports.hovernet_json",
    "pannuke": "nucdata.exports.pannuke",
    "hovernet-patches": "nucdata.exports.hovernet_patches",
}


def exporter(fmt: str) -> ModuleType:
    """The module that writes format ``fmt`` (raises a typed error naming the valid formats)."""
    if fmt not in FORMATS:
        raise InvalidArgumentError(f"unknown export format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    module = importlib.import_module(FORMATS[fmt])
    if getattr(module, "NAME", None) != fmt:  # pragma: no cover - a development error
        raise InvalidArgumentError(f"{module.__name__} does not define NAME = {fmt!r}")
    return module


def export(ds: NucleusDataset, fmt: str, out: str | os.PathLike[str], **options: Any) -> list[Path]:
    """Export ``ds`` (its split and label set) as ``fmt`` into folder ``out``.

    Parameters
    ----------
    ds
        The dataset; its split chooses the images and its label set the classes
        (native codes and names without one).
    fmt
        ``"geojson"`` (QuPath: one FeatureCollection per image, a ``detection`` per
        nucleus), ``"coco"`` (one file per dataset and split) or ``"hovernet-json"``
        (one file per image); the schemas are described in docs/tutorials/loading.md.
        For segmentation trainers: ``"pannuke"`` (PanNuke's fold layout) and
        ``"hovernet-patches"`` (HoVer-Net's extracted patches), both under a label set;
        see :mod:`nucdata.exports`.
    out
        Folder to write into (created if needed); each file is written atomically.
    **options
        For ``pannuke``: ``mpp``, ``size``, ``assume_mpp``; for ``hovernet-patches``:
        ``mpp``, ``win``, ``step``, ``assume_mpp``.

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    InvalidArgumentError
        For an unknown format, or an option the format does not take.
    """
    module = exporter(fmt)
    unknown = sorted(set(options) - set(module.OPTIONS))
    if unknown:
        takes = ", ".join(module.OPTIONS) or "no options"
        raise InvalidArgumentError(f"the {fmt} export takes {takes}; got {', '.join(unknown)}")
    return module.write(ds, Path(out), **options)
