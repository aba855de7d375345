"""Label sets, the mapping tables between vocabularies, their checker, and translation.

Packaged, versioned data: ``vocabularies/<name>.json`` (one label set each) and
``mappings/<dataset>.json`` (a dataset's native vocabulary and its rows into every set);
see ``docs/label-sets.md``. :func:`translate_store_labels` is the one tissue-aware
translation of a store's labels (the dataset, its crops and the models' bridge use it).
A user dataset's own vocabulary and table (``nucdata prepare --custom``) live in the data
home's ``registry/`` instead, validated by the same rules and checker
(:func:`build_user_tables`, :func:`check_user_tables`) and found by the same functions.
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
    UserTables,
    build_user_tables,
    check_tables,
    check_user_tables,
    find_inconsistencies,
    find_user_tables,
    label_set,
    list_label_sets,
    load_user_tables,
    mapping,
    native_vocabulary,
    parse_rows,
    render_markdown,
    table_sources,
    table_version,
    translate,
    translate_annotations,
    translate_store_labels,
    write_user_tables,
)
from nucdata.labels._user import use_user_tables

__all__ = [
    "KINDS", "MERGED_LABEL_SETS", "MISSING", "OUTSIDE", "OUTSIDE_NAME", "OWN_LABEL_SET", "SET_PREFIX",
    "CheckReport", "Finding", "LabelClass", "LabelMapping", "LabelSet", "MappingRow", "StoreColumns", "UserTables",
    "build_user_tables", "check_tables", "check_user_tables", "find_inconsistencies", "find_user_tables",
    "label_set", "list_label_sets", "load_user_tables", "mapping", "native_vocabulary", "parse_rows",
    "render_markdown", "table_sources", "table_version", "translate", "translate_annotations", "translate_store_labels",
    "use_user_tables", "write_user_tables",
]

__getattr__ = moved_attributes(__name__, {"Mapping": ("LabelMapping", lambda: LabelMapping)})
