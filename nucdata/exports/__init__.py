"""Exports to the formats pathology tools read (QuPath GeoJSON, COCO, HoVer-Net JSON, PanNuke
folds, HoVer-Net patches), overlays and summary statistics."""

from nucdata.exports._nuclei import FORMATS, export
from nucdata.exports._overlay import write_overlays
from nucdata.exports._stats import format_summary, summarise

__all__ = ["FORMATS", "export", "format_summary", "summarise", "write_overlays"]
