"""Dataset sources: one module per dataset, each a :class:`Source` subclass.

A source module is found by the card's ``converter`` name, ``nucdata.sources.<name>``,
and must define exactly one :class:`Source` subclass whose ``name`` matches.
"""

from __future__ import annotations

import importlib
import inspect

from ..registry import Card
from .base import ConversionReport, Source

__all__ = ["ConversionReport", "Source", "source_for"]


def source_for(card: Card) -> Source:
    """Instantiate the source that converts ``card``'s dataset."""
    module = importlib.import_module(f"{__name__}.{card.converter}")
    for _, obj in inspect.getmembers(module, inspect.isclass):
        if issubclass(obj, Source) and obj is not Source and obj.name == card.converter:
            return obj(card)
    raise LookupError(f"nucdata.sources.{card.converter} defines no Source named {card.converter!r}")
