"""Interchange formats: one home per format, read and write on plain arrays (docs/formats.md).

Every reader returns, and every writer takes, a :class:`Nuclei` record (one image's or
slide's nuclei: ids, centroids, outlines, instance map, labels, label sets,
measurements, µm/px, offset), never a dataset or a store, so segmenter outputs, stores
and classifier predictions meet in one shape. Coordinates of a record are always in the
**pixel-centre frame** (the top-left pixel's centre at ``(0, 0)``); a format in another
frame (QuPath GeoJSON: pixel corners) is converted at its boundary, in its module.

================================  ==========================================  ====================
format                            module                                      read / write
================================  ==========================================  ====================
QuPath GeoJSON                    :mod:`nucdata.formats.qupath`               both (streamed)
HoVer-Net JSON                    :mod:`nucdata.formats.hovernet`             both (streamed)
CellViT ``cell_detection.json``   :mod:`nucdata.formats.cellvit`              read
instance label images             :mod:`nucdata.formats.instances`            both
centroid CSV                      :mod:`nucdata.formats.centroids`            both
Parquet                           :mod:`nucdata.formats.parquet`              both (``pyarrow``)
images and whole slides           :mod:`nucdata.formats.images`               read (by region)
================================  ==========================================  ====================

Sizes are checked before anything is allocated (``NUCDATA_MAX_JSON_BYTES``,
``NUCDATA_MAX_NUCLEI``, ``NUCDATA_MAX_VERTICES``; the image pixel limit
``NUCDATA_MAX_IMAGE_PIXELS``), errors are typed and name the file and element, and every
writer publishes its file atomically.
"""

from nucdata.formats._geometry import polygon_area, polygon_centroid, rasterize, ring_pixels
from nucdata.formats._limits import MAX_JSON_BYTES, MAX_NUCLEI, MAX_VERTICES
from nucdata.formats._record import Nuclei, SetLabels
from nucdata.formats.cellvit import cellvit_image, read_cellvit
from nucdata.formats.centroids import read_centroids_csv, read_labels_csv, write_centroids_csv
from nucdata.formats.hovernet import HoverNetWriter, read_hovernet_json, write_hovernet_json
from nucdata.formats.images import Slide, image_mpp, open_slide, read_image
from nucdata.formats.instances import (
    instance_stem,
    nuclei_from_instances,
    read_instances,
    write_instances,
)
from nucdata.formats.parquet import ParquetWriter, read_parquet, write_parquet
from nucdata.formats.qupath import QuPathWriter, read_qupath, write_qupath

__all__ = [
    "MAX_JSON_BYTES", "MAX_NUCLEI", "MAX_VERTICES", "HoverNetWriter", "Nuclei", "ParquetWriter", "QuPathWriter",
    "SetLabels", "Slide", "cellvit_image", "image_mpp", "instance_stem", "nuclei_from_instances", "open_slide",
    "polygon_area", "polygon_centroid", "rasterize", "read_cellvit", "read_centroids_csv", "read_hovernet_json",
    "read_image", "read_instances", "read_labels_csv", "read_parquet", "read_qupath", "ring_pixels", "write_centroids_csv",
    "write_hovernet_json", "write_instances", "write_parquet", "write_qupath",
]
