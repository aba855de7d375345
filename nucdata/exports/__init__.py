"""Exports to the formats pathology tools read, overlays and summary statistics.

One module per format (``geojson``, ``coco``, ``hovernet_json``, ``pannuke``,
``hovernet_patches``), named in the registry :data:`FORMATS`; :func:`export` writes one.
Names here load their module on first use.
"""

from __future__ import annotations

from nucdata._util.lazy import attach

_LAZY = {
    "FORMATS": "nucdata.exports._registry",
    "export": "nucdata.exports._registry",
    "exporter": "nucdata.exports._registry",
    "write_overlays": "nucdata.exports._overlay",
    "format_summary": "nucdata.exports._stats",
    "summarise": "nucdata.exports._stats",
}

__getattr__, __dir__, __all__ = attach(__name__, _LAZY, globals())
