"""QuPath GeoJSON: one FeatureCollection per image, a ``detection`` Feature per nucleus.

Polygons are in the pixel-corner frame (origin at the top-left corner of the image, as
QuPath uses); each feature carries its class (``classification``: name and colour) and
its area in pixels; ids are stable (UUID5 of dataset, image and nucleus)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nucdata.exports._common import image_path, nuclei_of, write_json
from nucdata.exports._common import outline as nucleus_outline

if TYPE_CHECKING:
    from nucdata.dataset import NucleusDataset

NAME = "geojson"
DESCRIPTION = "QuPath: one FeatureCollection per image, a detection per nucleus"
OPTIONS: tuple[str, ...] = ()

def write(ds: NucleusDataset, out: Path) -> list[Path]:
    """One QuPath FeatureCollection per image: a ``detection`` Feature per nucleus."""
    classes = {k: (n, list(c)) for k, (n, c) in ds.classes.items()}
    written = []
    for i in ds.indices:
        inst, nuclei = nuclei_of(ds, int(i))
        features = []
        for k, row, label in nuclei:
            outline = nucleus_outline(ds, inst, k, row) + 0.5  # pixel-corner frame
            if len(outline) < 3:
                continue
            ring = outline.round(2).tolist()
            if ring[0] != ring[-1]:
                ring.append(ring[0])
            props: dict[str, Any] = {"objectType": "detection", "isLocked": False,
                                     "measurements": {"area_px": int(ds.store.column("nuclei", "area")[row])}}
            if label in classes:
                name, colour = classes[label]
                props["classification"] = {"name": name, "color": colour}
            features.append({"type": "Feature", "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{ds.name}/{i}/{k}")),
                             "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": props})
        path = image_path(ds, out, int(i), ".geojson")
        write_json(path, {"type": "FeatureCollection", "features": features})
        written.append(path)
    return written
