"""Label sets, the mapping tables between vocabularies, their checker, and translation.

Packaged, versioned data: ``vocabularies/<name>.json`` (one label set each) and
``mappings/<dataset>.json`` (a dataset's native vocabulary and its rows into every set);
see ``docs/label-sets.md``. :func:`translate_store_labels` is the one tissue-aware
translation of a store's labels (the dataset, its crops and the models' bridge use it).
"""

from nucdata._util.codes import MISSING, OUTSIDE
from nucdata._util.deprecation import moved_attributes
from nucdata.labels._tables import (
    KINDS,
    MERGED_LABEL_SETS,
    OUTSIDE_NAME,
    OWN_LABEL_SET,
    SET_PREFIX,
    CheckReport,
    Finding,
    LabelClass,
    LabelMapping,
    LabelSet,
    MappingRow,
    StoreColumns,
    check_tables,
    find_inconsistencies,
    label_set,
    list_label_sets,
    mapping,
    native_vocabulary,
    parse_rows,
    render_markdown,
    table_sources,
    table_version,
    translate,
    translate_store_labels,
)

__all__ = [
    "KINDS", "MERGED_LABEL_SETS", "MISSING", "OUTSIDE", "OUTSIDE_NAME", "OWN_LABEL_SET", "SET_PREFIX",
    "CheckReport", "Finding", "LabelClass", "LabelMapping", "LabelSet", "MappingRow", "StoreColumns",
    "check_tables", "find_inconsistencies", "label_set", "list_label_sets", "mapping", "native_vocabulary",
    "parse_rows", "render_markdown", "table_sources", "table_version", "translate",
    "translate_store_labels",
]

__getattr__ = moved_attributes(__name__, {"Mapping": ("LabelMapping", lambda: LabelMapping)})
