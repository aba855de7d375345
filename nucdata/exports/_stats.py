"""Summary statistics of a dataset: counts per split and class, nuclei per image, areas."""

from __future__ import annotations

from typing import Any

import numpy as np

from nucdata.dataset import NucleusDataset


def summarise(ds: NucleusDataset) -> dict[str, Any]:
    """Counts per split and class, nuclei per image, and the area distribution.

    Parameters
    ----------
    ds
        The dataset (its split and label set).

    Returns
    -------
    dict
        Plain JSON-ready values: ``images`` and ``nuclei`` per split, ``classes``
        (``"<id> <name>"`` -> count), ``nuclei_per_image`` (min, median, max),
        ``area_px_quantiles`` (masked nuclei only) and ``nuclei_without_mask``.
    """
    images = ds.images
    nuclei = ds.nuclei
    splits = images["split"].values
    per_image = images["nucleus_count"].values.astype(np.int64)
    labels = nuclei["label"].values
    area = nuclei["area"].values[nuclei["has_mask"].values]
    names = {code: name for code, (name, _) in ds.classes.items()}  # the dataset's one home of class names
    names.update({-1: "missing/unlabelled", -2: "outside the set"})
    codes, counts = np.unique(labels, return_counts=True)
    quantiles = np.percentile(area, [0, 5, 25, 50, 75, 95, 100]).round(1).tolist() if area.size else []
    return {
        "dataset": ds.name,
        "label_set": ds.label_set,
        "images": {str(s): int((splits == s).sum()) for s in dict.fromkeys(splits.tolist())},
        "nuclei": {str(s): int(per_image[splits == s].sum()) for s in dict.fromkeys(splits.tolist())},
        "classes": {f"{int(c)} {names.get(int(c), '?')}": int(n) for c, n in zip(codes, counts, strict=True)},
        "nuclei_per_image": {"min": int(per_image.min(initial=0)), "median": float(np.median(per_image)) if per_image.size else 0.0,
                             "max": int(per_image.max(initial=0))},
        "area_px_quantiles": dict(zip(["min", "p5", "p25", "median", "p75", "p95", "max"], quantiles, strict=False)),
        "nuclei_without_mask": int((~nuclei["has_mask"].values).sum()),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary of :func:`summarise` as aligned text for the terminal."""
    lines = [f"{summary['dataset']}" + (f" under {summary['label_set']}" if summary["label_set"] else " (native labels)")]
    lines.append("  images per split   " + ", ".join(f"{k} {v}" for k, v in summary["images"].items()))
    lines.append("  nuclei per split   " + ", ".join(f"{k} {v}" for k, v in summary["nuclei"].items()))
    lines.append("  nuclei per class")
    lines += [f"    {k:32s} {v:8d}" for k, v in summary["classes"].items()]
    n = summary["nuclei_per_image"]
    lines.append(f"  nuclei per image   min {n['min']}, median {n['median']:g}, max {n['max']}")
    lines.append("  area (px)          " + ", ".join(f"{k} {v:g}" for k, v in summary["area_px_quantiles"].items()))
    if summary["nuclei_without_mask"]:
        lines.append(f"  without mask       {summary['nuclei_without_mask']} (box only)")
    return "\n".join(lines)
