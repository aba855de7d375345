"""Codes shared by the store, the label tables, the merged format and the models.

One home for the integers and names that cross the package boundary: the models' core
may import this module (it imports nothing).
"""

from __future__ import annotations

__all__ = ["MISSING", "OUTSIDE", "PROVENANCE"]

#: A nucleus with no label (no annotation, or no information in the mapping).
MISSING = -1
#: A nucleus whose class lies outside the label set (no class of the set describes it).
OUTSIDE = -2
#: Where a published (merged) label came from; a merged store's ``source`` column and
#: the models' filled labels index into it.
PROVENANCE = ("predicted", "annotated", "mapped", "ambiguous-resolved", "outside")
