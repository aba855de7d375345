"""The store: the uniform on-disk form of a converted dataset, and the merged output format.

:class:`StoreWriter` builds a store in a staging folder and publishes it by rename;
:class:`Store` memory-maps one; ``_layout`` derives every path of the layout; the merged
output of ``build-merged`` (pickles, merged-label columns, the output marker) is read
and written here too (``docs/store-format.md``).
"""

from nucdata._util.codes import PROVENANCE
from nucdata.store._layout import MANIFEST, clean_stale, derived_dir, is_complete, store_folder
from nucdata.store._merged import (
    COLUMNS,
    FORMAT_VERSION,
    LABEL_BOUND,
    MARKER,
    MergedData,
    MergedLabels,
    check_columns,
    check_format,
    check_marker,
    is_merged_output,
    link_store,
    merged_label_problems,
    open_merged,
    published_table,
    read_merged_info,
    read_merged_labels,
    write_marker,
    write_merged_info,
    write_merged_labels,
    write_published_pickle,
)
from nucdata.store._store import (
    SCHEMA_VERSION,
    Store,
    StoreWriter,
    image_pixels,
    read_manifest,
    rebuild_hint,
)

__all__ = [
    "COLUMNS", "FORMAT_VERSION", "MANIFEST", "MARKER", "PROVENANCE", "SCHEMA_VERSION", "MergedData",
    "MergedLabels", "Store", "StoreWriter", "check_format", "check_marker", "clean_stale", "derived_dir", "image_pixels", "is_complete",
    "is_merged_output", "link_store", "merged_label_problems", "open_merged", "published_table", "read_manifest",
    "read_merged_info", "read_merged_labels", "rebuild_hint",
    "store_folder", "write_marker", "write_merged_info", "write_merged_labels", "write_published_pickle",
]
