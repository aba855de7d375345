"""Exports to the formats pathology tools read (QuPath GeoJSON, COCO, HoVer-Net JSON, PanNuke
folds, HoVer-Net patches), overlays and summary statistics."""

from nucdata.exports._nuclei import FORMATS, class_info, export
from nucdata.exports._overlay import plot_sample, render, write_overlays
from nucdata.exports._stats import format_summary, summarise

__all__ = ["FORMATS", "class_info", "export", "format_summary", "plot_sample",
           "render", "summarise", "write_overlays"]
