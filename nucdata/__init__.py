"""nucdata: the seven public nucleus datasets as one verified, uniform corpus.

Examples
--------
>>> import nucdata
>>> ds = nucdata.load("monuseg", split="test")          # doctest: +SKIP
>>> ds[0]["centroids"].shape, ds.nuclei                 # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0.dev0"

from .cite import cite  # noqa: E402
from .collate import collate  # noqa: E402
from .crops import CropDataset, crop_loader  # noqa: E402
from .dataset import NucleusDataset, load  # noqa: E402
from .errors import (  # noqa: E402
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
from .fetch import fetch  # noqa: E402
from .home import data_home  # noqa: E402
from .labelsets import label_set, list_label_sets, mapping, translate  # noqa: E402
from .merged import MergedData, open_merged  # noqa: E402
from .multi import DatasetCollection, load_many  # noqa: E402
from .prepare import prepare  # noqa: E402
from .registry import get_card, list_datasets  # noqa: E402
from .store import Store  # noqa: E402

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
