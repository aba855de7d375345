"""One module per dataset: its converter and everything else only it knows.

``nucdata.datasets.<converter>`` (the card's ``converter`` name) reads the dataset's
native layout and writes the store through a :class:`~nucdata.store.StoreWriter`; it
defines exactly one :class:`Converter` subclass whose ``name`` matches. Formats shared
by several datasets have one home here too: ImageScope XML (``_imagescope``) and
image + XML pairs (``_imagescope_pairs``).
"""

from __future__ import annotations

import importlib
import inspect

from nucdata._util.deprecation import moved_attributes
from nucdata.catalog import Card
from nucdata.datasets._base import ConversionReport, Converter, list_files, walk_dirs
from nucdata.datasets._imagescope import Region, rasterize_regions, read_imagescope

__all__ = ["ConversionReport", "Converter", "Region", "converter_for", "list_files", "rasterize_regions",
           "read_imagescope", "walk_dirs"]


def converter_for(card: Card) -> Converter:
    """Instantiate the converter of ``card``'s dataset (``nucdata.datasets.<card.converter>``)."""
    module = importlib.import_module(f"nucdata.datasets.{card.converter}")
    for _, obj in inspect.getmembers(module, inspect.isclass):
        if issubclass(obj, Converter) and obj is not Converter and obj.name == card.converter:
            return obj(card)
    raise LookupError(f"nucdata.datasets.{card.converter} defines no Converter named {card.converter!r}")


__getattr__ = moved_attributes(__name__, {"Source": ("Converter", lambda: Converter),
                                          "source_for": ("converter_for", lambda: converter_for)})
