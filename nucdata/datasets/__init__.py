"""Dataset sources: one module per dataset, each a :class:`Source` subclass.

A source module is found by the card's ``converter`` name, ``nucdata.datasets.<name>``,
and must define exactly one :class:`Source` subclass whose ``name`` matches.
"""

from __future__ import annotations

import importlib
import inspect

from nucdata.catalog._registry import Card
from nucdata.datasets._base import ConversionReport, Source

__all__ = ["ConversionReport", "Source", "source_for"]


def source_for(card: Card) -> Source:
    """Instantiate the source that converts ``card``'s dataset."""
    module = importlib.import_module(f"{__name__}.{card.converter}")
    for _, obj in inspect.getmembers(module, inspect.isclass):
        if issubclass(obj, Source) and obj is not Source and obj.name == card.converter:
            return obj(card)
    raise LookupError(f"nucdata.datasets.{card.converter} defines no Source named {card.converter!r}")
