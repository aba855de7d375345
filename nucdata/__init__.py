"""nucdata: the public nucleus datasets as one verified, uniform corpus.

The public API is this namespace; its names load their module on first use
(PEP 562), so ``import nucdata`` imports neither torch nor xarray.

Examples
--------
>>> import nucdata
>>> ds = nucdata.load("monuseg", split="test")          # doctest: +SKIP
>>> ds[0]["centroids"].shape, ds.nuclei                 # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nucdata._util.lazy import attach
from nucdata._util.version import VERSION as __version__
from nucdata.errors import (
    CheckpointError,
    CheckpointMismatchError,
    CorruptArchiveError,
    CountMismatchError,
    DataHomeError,
    DatasetNotFoundError,
    DeviceUnavailableError,
    DiskFullError,
    DomainShiftWarning,
    DownloadError,
    HashMismatchError,
    HTMLInsteadOfArchiveError,
    InjectedFault,
    InvalidArgumentError,
    InvalidCardError,
    LabelTableError,
    MalformedAnnotationError,
    MergedOutputError,
    MissingDependencyError,
    MissingFilesError,
    MissingMppError,
    ModelStateError,
    NucdataError,
    OutputFolderError,
    PatchLabelError,
    SchemaVersionError,
    SizeLimitError,
    SizeMismatchError,
    StoreError,
    StoreLockedError,
    UnknownClassError,
    UnknownDatasetError,
    UnknownLabelSetError,
    UnsafeNameError,
    UnsafePickleError,
    UnsupportedArchiveError,
    UnsupportedFormatError,
    UserTableError,
)

#: public name -> the module that defines it (imported on first access)
_LAZY = {
    # loading
    "load": "nucdata.dataset", "NucleusDataset": "nucdata.dataset",
    "load_many": "nucdata.collection", "DatasetCollection": "nucdata.collection",
    # views
    "CropDataset": "nucdata.views", "crop_loader": "nucdata.views", "TileDataset": "nucdata.views",
    "tile_loader": "nucdata.views", "collate": "nucdata.views",
    "NucleusLoaders": "nucdata.views", "NucleusDataModule": "nucdata.views",
    "PatchLabels": "nucdata.views", "derive_patch_labels": "nucdata.views",
    # acquiring
    "fetch": "nucdata.acquire", "prepare": "nucdata.acquire", "verify": "nucdata.acquire",
    "prepare_custom": "nucdata.acquire",
    # the catalog
    "cite": "nucdata.catalog", "get_card": "nucdata.catalog", "list_datasets": "nucdata.catalog",
    "Card": "nucdata.catalog",
    # label sets and mappings
    "label_set": "nucdata.labels", "list_label_sets": "nucdata.labels", "mapping": "nucdata.labels",
    "translate": "nucdata.labels", "check_tables": "nucdata.labels", "LabelSet": "nucdata.labels",
    "LabelMapping": "nucdata.labels",
    # the store and the merged output
    "Store": "nucdata.store", "open_merged": "nucdata.store", "MergedData": "nucdata.store",
    "PROVENANCE": "nucdata.store",
    # exports
    "export": "nucdata.exports",
    # the data home
    "data_home": "nucdata._util.home",
}

_ERRORS = [
    "CheckpointError", "CheckpointMismatchError", "CorruptArchiveError", "CountMismatchError", "DataHomeError",
    "DatasetNotFoundError", "DownloadError", "HTMLInsteadOfArchiveError", "HashMismatchError", "InjectedFault",
    "InvalidArgumentError", "InvalidCardError", "LabelTableError", "MalformedAnnotationError",
    "MissingDependencyError", "MissingFilesError", "MissingMppError", "NucdataError", "OutputFolderError",
    "SchemaVersionError", "SizeMismatchError", "StoreError", "StoreLockedError", "UnknownClassError", "UnknownDatasetError",
    "UnknownLabelSetError", "UnsafePickleError",
    "ModelStateError", "DeviceUnavailableError",
    "MergedOutputError", "UnsafeNameError", "DiskFullError", "SizeLimitError", "UnsupportedArchiveError",
    "UnsupportedFormatError", "UserTableError", "DomainShiftWarning", "PatchLabelError",
]

__getattr__, __dir__, _lazy_all = attach(__name__, _LAZY, globals())
__all__ = sorted([*_lazy_all, *_ERRORS, "__version__"])


if TYPE_CHECKING:  # for type checkers and IDEs: the names as if imported eagerly
    from nucdata._util.home import data_home
    from nucdata.acquire import fetch, prepare, prepare_custom, verify
    from nucdata.catalog import Card, cite, get_card, list_datasets
    from nucdata.collection import DatasetCollection, load_many
    from nucdata.dataset import NucleusDataset, load
    from nucdata.exports import export
    from nucdata.labels import (
        LabelMapping,
        LabelSet,
        check_tables,
        label_set,
        list_label_sets,
        mapping,
        translate,
    )
    from nucdata.store import PROVENANCE, MergedData, Store, open_merged
    from nucdata.views import (
        CropDataset,
        NucleusDataModule,
        NucleusLoaders,
        PatchLabels,
        TileDataset,
        collate,
        crop_loader,
        derive_patch_labels,
        tile_loader,
    )
