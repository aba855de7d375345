"""nucdata: the seven public nucleus datasets as one verified, uniform corpus.

Examples
--------
>>> import nucdata
>>> ds = nucdata.load("monuseg", split="test")          # doctest: +SKIP
>>> ds[0]["centroids"].shape, ds.nuclei                 # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0.dev0"

from nucdata._util.home import data_home  # noqa: E402
from nucdata.acquire._fetch import fetch  # noqa: E402
from nucdata.acquire._prepare import prepare  # noqa: E402
from nucdata.catalog._cite import cite  # noqa: E402
from nucdata.catalog._registry import get_card, list_datasets  # noqa: E402
from nucdata.collection import DatasetCollection, load_many  # noqa: E402
from nucdata.dataset import NucleusDataset, load  # noqa: E402
from nucdata.errors import (  # noqa: E402
    CorruptArchiveError,
    CountMismatchError,
    DataHomeError,
    DatasetNotFoundError,
    DownloadError,
    HashMismatchError,
    HTMLInsteadOfArchiveError,
    InvalidArgumentError,
    MalformedAnnotationError,
    MissingFilesError,
    NucdataError,
    SizeMismatchError,
    StoreError,
    StoreLockedError,
    UnknownClassError,
    UnknownDatasetError,
    UnknownLabelSetError,
    UnsafePickleError,
)
from nucdata.labels._tables import label_set, list_label_sets, mapping, translate  # noqa: E402
from nucdata.store._merged import MergedData, open_merged  # noqa: E402
from nucdata.store._store import Store  # noqa: E402
from nucdata.views._crops import CropDataset, crop_loader  # noqa: E402
from nucdata.views._loaders import collate  # noqa: E402

__all__ = [
    "CorruptArchiveError", "CountMismatchError", "DataHomeError", "CropDataset", "DatasetCollection", "cite", "collate",
    "crop_loader", "load_many", "MergedData", "open_merged", "DatasetNotFoundError", "DownloadError",
    "HTMLInsteadOfArchiveError", "HashMismatchError", "InvalidArgumentError",
    "MalformedAnnotationError", "MissingFilesError", "NucdataError", "NucleusDataset",
    "SizeMismatchError", "Store", "StoreError", "StoreLockedError", "UnknownClassError",
    "UnknownDatasetError", "UnknownLabelSetError", "UnsafePickleError", "__version__", "data_home", "fetch",
    "get_card", "label_set", "list_datasets", "list_label_sets", "load", "mapping", "prepare",
    "translate",
]
