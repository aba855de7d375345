"""QuPath GeoJSON: one FeatureCollection per image, a ``detection`` Feature per nucleus.

Written by the one QuPath GeoJSON writer, :func:`nucdata.formats.write_qupath` (its
docstring and docs/formats.md give the schema): polygons in the pixel-corner frame
(origin at the top-left corner of the image, as QuPath uses; a nucleus without a mask is
its box), ``classification`` (name and colour of the nucleus's class under the export's
label set, or its native class), ``measurements`` (``area_px``; ``Area µm^2``,
``Centroid X µm``, ``Centroid Y µm`` where the image's µm/px is known), ``nucdata_id``
(the nucleus's instance value, so ``prepare --custom --geojson`` gives the same ids) and
stable ids (UUID5 of dataset, image and nucleus)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nucdata.exports._common import image_nuclei, image_path
from nucdata.formats import write_qupath

if TYPE_CHECKING:
    from nucdata.dataset import NucleusDataset

NAME = "geojson"
DESCRIPTION = "QuPath: one FeatureCollection per image, a detection per nucleus"
OPTIONS: tuple[str, ...] = ()


def write(ds: NucleusDataset, out: Path) -> list[Path]:
    """One QuPath FeatureCollection per image: a ``detection`` Feature per nucleus."""
    written = []
    for i in ds.indices:
        i = int(i)
        path = image_path(ds, out, i, ".geojson")
        written.append(write_qupath(path, image_nuclei(ds, i), id_prefix=f"{ds.name}/{i}"))
    return written
