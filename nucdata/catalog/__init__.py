"""The dataset catalog: one card per dataset (packaged JSON), the registry that reads them, citations.

A card (``nucdata/catalog/cards/<dataset>.json``) holds everything known about a
dataset before its files are read: homepage, licence, BibTeX, µm/px, classes, splits,
expected counts, files with sizes, hashes and mirrors, and the manual route.
"""

from nucdata.catalog._cite import METHOD, cite
from nucdata.catalog._registry import (
    Card,
    RemoteFile,
    datasets_in_order,
    get_card,
    list_datasets,
    write_override,
)
from nucdata.catalog._tables import render_dataset_table, write_dataset_tables

__all__ = ["METHOD", "Card", "RemoteFile", "cite", "datasets_in_order", "get_card", "list_datasets",
           "write_override", "render_dataset_table", "write_dataset_tables"]
