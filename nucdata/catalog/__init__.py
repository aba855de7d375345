"""The dataset catalog: one card per dataset (packaged JSON), the registry that reads them, citations.

A card (``nucdata/catalog/cards/<dataset>.json``) holds everything known about a
dataset before its files are read: homepage, licence, BibTeX, µm/px, classes, splits,
expected counts, files with sizes, hashes and mirrors, and the manual route. A user's own
dataset (``nucdata prepare --custom``) has a card in the data home instead
(:func:`write_custom_card`).
"""

from nucdata.catalog._cite import METHOD, cite
from nucdata.catalog._registry import (
    CUSTOM_CONVERTER,
    Card,
    RemoteFile,
    datasets_in_order,
    get_card,
    is_custom,
    list_custom_datasets,
    list_datasets,
    write_custom_card,
    write_override,
)
from nucdata.catalog._tables import render_dataset_table, write_dataset_tables

__all__ = ["CUSTOM_CONVERTER", "METHOD", "Card", "RemoteFile", "cite", "datasets_in_order", "get_card", "is_custom",
           "list_custom_datasets", "list_datasets", "write_custom_card", "write_override", "render_dataset_table",
           "write_dataset_tables"]
