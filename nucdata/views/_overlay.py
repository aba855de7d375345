"""Overlays: nucleus outlines coloured by class, with a legend (Pillow; matplotlib for ``ds.plot``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from nucdata.errors import MissingDependencyError

if TYPE_CHECKING:  # type hints only: the dataset module builds on this one
    from nucdata.dataset import NucleusDataset


UNLABELLED = (255, 255, 255)
OUTSIDE = (120, 120, 120)


def outline_mask(instance_map: np.ndarray) -> np.ndarray:
    """Pixels of each nucleus that touch another label or the background."""
    grown = ndimage.grey_dilation(instance_map, size=3)
    shrunk = ndimage.grey_erosion(instance_map, size=3)
    return (instance_map > 0) & ((grown != instance_map) | (shrunk != instance_map))


def render(ds: NucleusDataset, index: int) -> Image.Image:
    """Image ``index`` (position in ``ds``) with outlines and a legend strip below."""
    i = int(ds.indices[index])
    rgb = np.array(ds.store.rgb(i))
    inst = np.asarray(ds.store.instance_map(i))
    rows = ds.store.nucleus_slice(i)
    labels = ds.labels[rows]
    classes, vocabulary = {k: (n, list(c)) for k, (n, c) in ds.classes.items()}, ds.vocabulary
    colours = np.array([UNLABELLED] + [classes[int(lab)][1] if int(lab) in classes else (OUTSIDE if lab == -2 else UNLABELLED)
                                       for lab in labels], np.uint8).reshape(-1, 3)
    edge = outline_mask(inst)
    rgb[edge] = colours[inst[edge]]
    bboxes = np.asarray(ds.store.column("nuclei", "bbox")[rows])
    has_mask = np.asarray(ds.store.column("nuclei", "has_mask")[rows])
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    for j in np.flatnonzero(~has_mask):  # box-only nuclei: their box
        x0, y0, x1, y1 = (int(v) for v in bboxes[j])
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=tuple(int(c) for c in colours[j + 1]))
    return _with_legend(image, classes, vocabulary)


def _with_legend(image: Image.Image, classes: dict[int, tuple[str, list[int]]], title: str) -> Image.Image:
    entries = [(name, tuple(colour)) for _, (name, colour) in sorted(classes.items())]
    entries += [("unlabelled", UNLABELLED), ("outside the set", OUTSIDE)]
    line = 12
    height = line * (len(entries) + 1) + 4
    canvas = Image.new("RGB", (max(image.width, 180), image.height + height), (0, 0, 0))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, image.height + 2), title, fill=(255, 255, 255))
    for n, (name, colour) in enumerate(entries, 1):
        y = image.height + 2 + n * line
        draw.rectangle([4, y + 2, 12, y + 10], fill=colour)
        draw.text((16, y), name, fill=(255, 255, 255))
    return canvas


def plot_sample(ds: NucleusDataset, index: int, ax: Any = None) -> Any:
    """Draw the overlay of image ``index`` on a matplotlib axis.

    Parameters
    ----------
    ds
        The dataset (its split and label set decide image and colours).
    index
        Position of the image in ``ds``.
    ax
        A matplotlib axis; a new figure when ``None``.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    MissingDependencyError
        When matplotlib is not installed.
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError(
            "matplotlib", "ds.plot() (`nucdata overlay` draws the same with Pillow only)"
        ) from None
    if ax is None:
        _, ax = plt.subplots()
    ax.imshow(np.asarray(render(ds, index)))
    ax.set_axis_off()
    ax.set_title(str(ds.store.column("images", "name")[int(ds.indices[index])]))
    return ax.figure
