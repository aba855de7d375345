"""Overlays: nucleus outlines coloured by class, with a legend (Pillow; matplotlib for ``ds.plot``).

Readable on H&E and for colour-blind readers: small images are upscaled (nearest
neighbour, whole pixels) so an outline is more than one pixel of the image; outlines are
two pixels wide with a one-pixel black rim on the outer side; the colours are
:data:`PALETTE` (Okabe and Ito's colour-blind-safe set without its reddish purple, then
Tol's muted colours), chosen far from eosin pink and haematoxylin purple (a test checks
the distances in CIELAB), not the label set's own colours, several of which are pink,
purple or grey. Labels the model chose (``predicted``, ``ambiguous-resolved`` in a merged
dataset, and every label of a ``prediction``) are drawn dashed; labels from an annotation
solid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from nucdata.errors import InvalidArgumentError, MissingDependencyError

if TYPE_CHECKING:  # type hints only: the dataset module builds on this one
    from nucdata.dataset import NucleusDataset

#: Class colours of overlays, in class order: Okabe-Ito without reddish purple (which
#: vanishes on eosin), then Tol's muted and light colours far from pink and purple.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 114, 178),    # blue
    (230, 159, 0),    # orange
    (0, 158, 115),    # bluish green
    (240, 228, 66),   # yellow
    (86, 180, 233),   # sky blue
    (213, 94, 0),     # vermillion
    (17, 119, 51),    # green
    (221, 204, 119),  # sand
    (187, 204, 51),   # pear
    (68, 170, 153),   # teal
    (153, 153, 51),   # olive
    (136, 204, 238),  # cyan
)
UNLABELLED = (255, 255, 255)
#: Nuclei outside the label set: black (with the black rim, a thick dark line).
OUTSIDE = (0, 0, 0)
RIM = (0, 0, 0)
#: Images whose longer side is below this are upscaled by a whole factor to reach it.
MIN_SIDE = 384  # 384 against 512: 0.63x the time per overlay, build-merged writes 512 of them (demo)
MAX_SCALE = 8
#: Dash pattern of model-chosen outlines: on for DASH pixels, off for DASH, along x + y.
DASH = 6
#: Merged-output provenances drawn dashed (the model chose the label).
MODEL_CHOSEN = ("predicted", "ambiguous-resolved")


def outline_mask(instance_map: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels of each nucleus within ``width`` pixels of another label or the background."""
    size = 2 * int(width) + 1
    grown = ndimage.grey_dilation(instance_map, size=size)
    shrunk = ndimage.grey_erosion(instance_map, size=size)
    return (instance_map > 0) & ((grown != instance_map) | (shrunk != instance_map))


def _band(inst: np.ndarray, width: int) -> np.ndarray:
    """Nucleus pixels within ``width`` steps (4-neighbour) of another label or the background.

    Shifted comparisons instead of :func:`outline_mask`'s grey filters: the same border
    for ``width`` 1 up to the corners, several times faster on upscaled images.
    """
    edge = np.zeros(inst.shape, bool)
    edge[:-1] |= inst[:-1] != inst[1:]
    edge[1:] |= inst[1:] != inst[:-1]
    edge[:, :-1] |= inst[:, :-1] != inst[:, 1:]
    edge[:, 1:] |= inst[:, 1:] != inst[:, :-1]
    band = edge & (inst > 0)
    for _ in range(width - 1):
        band = _grow(band) & (inst > 0)
    return band


def _grow(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[:-1] |= mask[1:]
    out[1:] |= mask[:-1]
    out[:, :-1] |= mask[:, 1:]
    out[:, 1:] |= mask[:, :-1]
    return out


def palette_colour(k: int) -> tuple[int, int, int]:
    """The overlay colour of class ``k`` (cycling through :data:`PALETTE`)."""
    return PALETTE[int(k) % len(PALETTE)]


def overlay_scale(height: int, width: int) -> int:
    """The whole upscaling factor of an image of this size (1 when its longer side is >= :data:`MIN_SIDE`)."""
    side = max(int(height), int(width), 1)
    return int(min(MAX_SCALE, max(1, -(-MIN_SIDE // side))))


def _dashes(shape: tuple[int, int]) -> np.ndarray:
    yy, xx = np.indices(shape)
    return ((xx + yy) // DASH) % 2 == 0


def render_arrays(rgb: np.ndarray, instance_map: np.ndarray, labels: Sequence[int],
                  classes: Mapping[int, str], *, dashed: np.ndarray | None = None, boxes: np.ndarray | None = None,
                  title: str = "", scale: int | None = None, legend: bool = True) -> Image.Image:
    """Outlines of the nuclei of one image, coloured by class, on the image.

    Parameters
    ----------
    rgb
        ``(H, W, 3)`` or ``(3, H, W)`` uint8.
    instance_map
        ``(H, W)`` int, nucleus ``k`` drawn as ``k``.
    labels
        Class of nucleus ``k`` at ``k - 1`` (-1 unlabelled, -2 outside the set).
    classes
        Class id -> name, in the vocabulary's order (colours: :func:`palette_colour` of the position).
    dashed
        Optional bool per nucleus: draw its outline dashed (a label the model chose).
    boxes
        Optional ``(K, 4)`` x0, y0, x1, y1 per nucleus, drawn as a box for the nuclei
        without a mask pixel (a point or box annotation).
    title
        The legend's first line.
    scale
        Whole upscaling factor; default :func:`overlay_scale`.
    legend
        Add the legend strip below the image.

    Returns
    -------
    PIL.Image.Image
    """
    rgb = np.asarray(rgb)
    if rgb.ndim == 3 and rgb.shape[0] == 3 and rgb.shape[-1] != 3:
        rgb = np.moveaxis(rgb, 0, -1)
    inst = np.asarray(instance_map)
    if rgb.shape[:2] != inst.shape:
        raise InvalidArgumentError(f"overlay: the image is {rgb.shape[:2]} and the instance map {inst.shape}; "
                                   "pass the instance map of this image")
    labels = np.asarray(labels, np.int64).reshape(-1)
    k = labels.size
    if inst.size and int(inst.max()) > k:
        raise InvalidArgumentError(f"overlay: the instance map draws nucleus {int(inst.max())} but {k} labels were "
                                   "given; pass one label per nucleus of the image")
    scale = overlay_scale(*inst.shape) if scale is None else max(1, int(scale))
    order = {cid: i for i, cid in enumerate(classes)}
    colours = np.array([UNLABELLED] + [palette_colour(order[int(v)]) if int(v) in order else
                                       (OUTSIDE if v == -2 else UNLABELLED) for v in labels], np.uint8).reshape(-1, 3)
    big = np.ascontiguousarray(np.repeat(np.repeat(rgb, scale, 0), scale, 1))
    inst_big = np.repeat(np.repeat(inst, scale, 0), scale, 1)
    width = 1 if scale == 1 else 2 if scale < 4 else 3
    band = _band(inst_big, width)
    rim = _grow(band) & (inst_big == 0)  # the outer side: background next to an outline
    dashed = np.zeros(k, bool) if dashed is None else np.asarray(dashed, bool).reshape(-1)
    if dashed.size != k:
        raise InvalidArgumentError(f"overlay: {dashed.size} dashed flags for {k} nuclei")
    if dashed.any():
        gaps = ~_dashes(inst_big.shape)
        flagged = np.concatenate([[False], dashed])
        band &= ~(flagged[inst_big] & gaps)
        near = ndimage.grey_dilation(inst_big, size=3)  # the nucleus a rim pixel borders
        rim &= ~(flagged[near] & gaps)
    big[rim] = RIM
    big[band] = colours[inst_big[band]]
    image = Image.fromarray(big)
    if boxes is not None and k:
        drawn = np.zeros(k + 1, bool)
        drawn[np.unique(inst)] = True
        draw = ImageDraw.Draw(image)
        for j in np.flatnonzero(~drawn[1:]):  # nuclei without mask pixels: their box
            x0, y0, x1, y1 = (int(v) * scale for v in np.asarray(boxes)[j])
            colour = tuple(int(c) for c in colours[j + 1])
            draw.rectangle([x0 - 1, y0 - 1, x1, y1], outline=RIM)
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour, width=width)
    if not legend:
        return image
    return _with_legend(image, classes, title, dashed_shown=bool(dashed.any()))


def _labels_of(ds: NucleusDataset, i: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels of image ``i``'s nuclei and, for a merged dataset, which the model chose."""
    rows = ds.store.nucleus_slice(i)
    labels = np.asarray(ds.labels[rows])
    if ds.provenance is None:
        return labels, None
    from nucdata.store import PROVENANCE

    chosen = [PROVENANCE.index(p) for p in MODEL_CHOSEN if p in PROVENANCE]
    return labels, np.isin(np.asarray(ds.provenance[rows]), chosen)


def _position(ds: NucleusDataset, sample_or_index: Any) -> int:
    """Position in ``ds`` of an index or of a sample dict (found by its ``image_id``)."""
    if isinstance(sample_or_index, Mapping):
        name = sample_or_index.get("image_id")
        if name is None:
            raise InvalidArgumentError("plot: a sample dict needs its 'image_id' (as ds[i] returns it); "
                                       "or pass the image's index")
        names = np.asarray(ds.store.column("images", "name"))[np.asarray(ds.indices)]
        where = np.flatnonzero(names == str(name))
        if not where.size:
            raise InvalidArgumentError(f"plot: image {name!r} is not in {ds!r}; pass a sample of this dataset")
        return int(where[0])
    index = int(sample_or_index)
    if not -len(ds) <= index < len(ds):
        raise IndexError(f"index {index} out of range for {len(ds)} images")
    return index % len(ds)


def _prediction_labels(prediction: Any, k: int) -> np.ndarray:
    labels = prediction.get("labels") if isinstance(prediction, Mapping) else prediction
    if labels is None:
        raise InvalidArgumentError("prediction: pass the predicted class per nucleus, or a dict with 'labels'")
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels).reshape(-1)
    if labels.size != k or labels.dtype.kind not in "iu":
        raise InvalidArgumentError(f"prediction: {labels.size} {labels.dtype} values for an image of {k} nuclei; "
                                   "pass one integer class id per nucleus (-1 none, -2 outside), in sample order")
    return labels.astype(np.int64)


def render(ds: NucleusDataset, index: Any, prediction: Any = None, scale: int | None = None) -> Image.Image:
    """Image ``index`` with outlines and a legend strip below; beside it, a prediction's.

    Parameters
    ----------
    ds
        The dataset (its label set decides the classes).
    index
        Position of the image in ``ds``, or a sample ``ds[i]`` returned.
    prediction
        Optional predicted class per nucleus of the image (array or tensor ``(K,)``, or a
        dict with ``labels``): drawn dashed in a second panel, to the right of the truth.
    scale
        Whole upscaling factor (default: small images up to :data:`MIN_SIDE` pixels).

    Returns
    -------
    PIL.Image.Image
    """
    position = _position(ds, index)
    i = int(ds.indices[position])
    rgb = np.asarray(ds.store.rgb(i))
    inst = np.asarray(ds.store.instance_map(i))
    labels, chosen = _labels_of(ds, i)
    classes = {k: name for k, (name, _) in ds.classes.items()}
    rows = ds.store.nucleus_slice(i)
    boxes = np.asarray(ds.store.column("nuclei", "bbox")[rows])
    truth_title = ds.vocabulary if prediction is None else f"{ds.vocabulary}: the dataset's labels"
    left = render_arrays(rgb, inst, labels, classes, dashed=chosen, boxes=boxes, title=truth_title, scale=scale)
    if prediction is None:
        return left
    predicted = _prediction_labels(prediction, labels.size)
    right = render_arrays(rgb, inst, predicted, classes, dashed=np.ones(labels.size, bool), boxes=boxes,
                          title=f"{ds.vocabulary}: the prediction", scale=scale)
    canvas = Image.new("RGB", (left.width + right.width + 8, max(left.height, right.height)), (0, 0, 0))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + 8, 0))
    return canvas


def _with_legend(image: Image.Image, classes: Mapping[int, str], title: str, dashed_shown: bool) -> Image.Image:
    entries = [(name, palette_colour(i)) for i, name in enumerate(classes.values())]
    entries += [("unlabelled", UNLABELLED), ("outside the set", OUTSIDE)]
    notes = ["solid: from an annotation; dashed: chosen by the model"] if dashed_shown else []
    line = 14
    columns = 2 if image.width >= 360 else 1
    per_column = -(-len(entries) // columns)
    height = line * (per_column + 1 + len(notes)) + 6
    canvas = Image.new("RGB", (max(image.width, 200), image.height + height), (0, 0, 0))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, image.height + 3), title, fill=(255, 255, 255))
    column_width = canvas.width // columns
    for n, (name, colour) in enumerate(entries):
        x = 4 + (n // per_column) * column_width
        y = image.height + 3 + (n % per_column + 1) * line
        draw.rectangle([x, y + 2, x + 9, y + 11], fill=colour, outline=(255, 255, 255))
        draw.text((x + 14, y), name, fill=(255, 255, 255))
    for n, note in enumerate(notes):
        draw.text((4, image.height + 3 + (per_column + 1 + n) * line), note, fill=(255, 255, 255))
    return canvas


def plot_sample(ds: NucleusDataset, sample_or_index: Any, prediction: Any = None, ax: Any = None,
                show_titles: bool = True, suptitle: str | None = None) -> Any:
    """Draw the overlay of one image on matplotlib axes; with ``prediction``, beside the truth.

    Parameters
    ----------
    ds
        The dataset (its split and label set decide image and colours).
    sample_or_index
        Position of the image in ``ds``, or a sample ``ds[i]`` returned.
    prediction
        Optional predicted class per nucleus of the image (array or tensor ``(K,)``, or a
        dict with ``labels``, e.g. a model's output for ``sample["labels"]``'s nuclei):
        drawn dashed on a second axis, to the right of the dataset's labels.
    ax
        A matplotlib axis (one panel) or a pair of axes (with ``prediction``); new when ``None``.
    show_titles
        Title each panel (the image's name; "labels" and "prediction").
    suptitle
        Optional title of the whole figure.

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
    position = _position(ds, sample_or_index)
    name = str(ds.store.column("images", "name")[int(ds.indices[position])])
    panels = 1 if prediction is None else 2
    if ax is None:
        _, axes = plt.subplots(1, panels, figsize=(6 * panels, 6), squeeze=False)
        axes = list(axes[0])
    else:
        axes = list(ax) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
        if len(axes) != panels:
            raise InvalidArgumentError(f"plot: {len(axes)} axes for {panels} panels; pass "
                                       + ("one axis" if panels == 1 else "two axes (labels, prediction)"))
    truth = render(ds, position)
    axes[0].imshow(np.asarray(truth))
    if show_titles:
        axes[0].set_title(name if prediction is None else f"{name}: labels")
    if prediction is not None:
        i = int(ds.indices[position])
        rows = ds.store.nucleus_slice(i)
        predicted = _prediction_labels(prediction, int(rows.stop - rows.start))
        pred = render_arrays(np.asarray(ds.store.rgb(i)), np.asarray(ds.store.instance_map(i)), predicted,
                             {k: n for k, (n, _) in ds.classes.items()}, dashed=np.ones(predicted.size, bool),
                             boxes=np.asarray(ds.store.column("nuclei", "bbox")[rows]),
                             title=f"{ds.vocabulary}: the prediction")
        axes[1].imshow(np.asarray(pred))
        if show_titles:
            axes[1].set_title(f"{name}: prediction")
    for a in axes:
        a.set_axis_off()
    figure = axes[0].figure
    if suptitle:
        figure.suptitle(suptitle)
    return figure
