"""Drawing blocks for generated tissue: elliptical nuclei on a stained background.

Everything is driven by a ``numpy.random.Generator`` so a seed reproduces a world.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Nucleus:
    """An elliptical nucleus: centre (x, y), radii, angle, its type, and the type it looks like.

    ``kind`` is the latent cell type (the truth); ``look`` is the type whose appearance
    it was drawn with (``-1``: its own, see :attr:`appearance_kind`).
    """

    cx: float
    cy: float
    rx: float
    ry: float
    angle: float
    kind: int = 0
    look: int = -1

    @property
    def appearance_kind(self) -> int:
        """The type whose appearance (size, colour, texture) this nucleus has."""
        return self.kind if self.look < 0 else self.look


def appearance_kinds(nuclei: list[Nucleus]) -> np.ndarray:
    """:attr:`Nucleus.appearance_kind` of each nucleus (what :func:`paint` takes)."""
    return np.array([n.appearance_kind for n in nuclei], int)


@dataclass(frozen=True)
class Appearance:
    """How one cell type looks: size, elongation, stain colour and texture."""

    radius: tuple[float, float] = (4.0, 7.0)
    elongation: tuple[float, float] = (1.0, 1.5)
    colour: tuple[int, int, int] = (70, 40, 120)
    texture: float = 12.0


DEFAULT_APPEARANCE = Appearance()
BACKGROUND = (232, 190, 215)  # eosin-pink


def place_nuclei(
    rng: np.random.Generator,
    height: int,
    width: int,
    count: int,
    kinds: list[int] | None = None,
    appearances: dict[int, Appearance] | None = None,
    margin: float = -2.0,
    looks: list[int] | None = None,
) -> list[Nucleus]:
    """Scatter ``count`` nuclei, mostly apart; a negative margin lets some touch the border.

    ``kinds[i]`` is the latent type of nucleus ``i``; ``looks[i]`` (default: the same)
    the type whose size and elongation it is drawn with.
    """
    nuclei: list[Nucleus] = []
    appearances = appearances or {}
    cell = 24.0  # spatial hash: only nearby nuclei are checked for overlap
    grid: dict[tuple[int, int], list[Nucleus]] = {}
    tries = 0
    while len(nuclei) < count and tries < count * 50:
        tries += 1
        kind = kinds[len(nuclei)] if kinds else 0
        look_kind = looks[len(nuclei)] if looks else kind
        look = appearances.get(look_kind, DEFAULT_APPEARANCE)
        r = rng.uniform(*look.radius)
        e = rng.uniform(*look.elongation)
        cx = rng.uniform(margin, width - margin)
        cy = rng.uniform(margin, height - margin)
        gx, gy = int(cx // cell), int(cy // cell)
        near = (n for dx in (-1, 0, 1) for dy in (-1, 0, 1) for n in grid.get((gx + dx, gy + dy), ()))
        if any((n.cx - cx) ** 2 + (n.cy - cy) ** 2 < (n.rx + r * e + 1.5) ** 2 for n in near):
            continue
        nucleus = Nucleus(cx, cy, r * e, r, rng.uniform(0, np.pi), kind, look_kind if looks else -1)
        nuclei.append(nucleus)
        grid.setdefault((gx, gy), []).append(nucleus)
    return nuclei


def ellipse_polygon(n: Nucleus, vertices: int = 16, jitter: float = 0.0,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """(vertices, 2) float outline (x, y) in pixel-corner coordinates."""
    t = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    scale = 1.0 + (rng.uniform(-jitter, jitter, vertices) if (rng is not None and jitter) else 0.0)
    x = n.rx * np.cos(t) * scale
    y = n.ry * np.sin(t) * scale
    ca, sa = np.cos(n.angle), np.sin(n.angle)
    # +0.5: the ellipse is centred on pixel (cx, cy)'s centre in the corner frame
    return np.stack([n.cx + 0.5 + ca * x - sa * y, n.cy + 0.5 + sa * x + ca * y], axis=1)


def paint(
    rng: np.random.Generator,
    instance_map: np.ndarray,
    kinds: np.ndarray,
    appearances: dict[int, Appearance] | None = None,
    stain_shift: tuple[float, float, float] = (0.0, 0.0, 0.0),
    background: tuple[int, int, int] = BACKGROUND,
    blur: float = 0.6,
) -> np.ndarray:
    """Paint an H&E-like RGB image for an instance map.

    ``kinds[k-1]`` is the appearance type of nucleus ``k``; each type's appearance sets
    its colour and texture; ``stain_shift`` is added to every pixel (a per-dataset
    stain) and the image is blurred with a Gaussian of ``blur`` px.
    """
    appearances = appearances or {}
    h, w = instance_map.shape
    img = np.empty((h, w, 3), np.float32)
    img[:] = background
    img += rng.normal(0, 6, (h, w, 3))
    img += ndimage.gaussian_filter(rng.normal(0, 25, (h, w)), 6)[..., None] * 0.5
    n = int(instance_map.max(initial=0))
    if n:
        # One tone and texture strength per nucleus, applied through lookup tables so
        # painting costs O(pixels), not O(nuclei x pixels).
        tones = np.zeros((n + 1, 3), np.float32)
        textures = np.zeros(n + 1, np.float32)
        for k in range(1, n + 1):
            look = appearances.get(int(kinds[k - 1]) if len(kinds) >= k else 0, DEFAULT_APPEARANCE)
            tones[k] = np.asarray(look.colour, np.float32) + rng.normal(0, 6, 3)
            textures[k] = look.texture
        inside = instance_map > 0
        labels = instance_map[inside]
        img[inside] = tones[labels] + rng.normal(0, 1, (labels.size, 1)).astype(np.float32) * textures[labels, None]
    img += np.asarray(stain_shift, np.float32)
    img = ndimage.gaussian_filter(img, (blur, blur, 0))
    return np.clip(img, 0, 255).astype(np.uint8)


def shoelace_area(polygon: np.ndarray) -> float:
    """Area of a polygon given as (n, 2) x, y by the shoelace formula (0 below 3 vertices)."""
    v = np.asarray(polygon, np.float64).reshape(-1, 2)
    if len(v) < 3:
        return 0.0
    x, y = v[:, 0], v[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def pixels_inside(polygon: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the pixels a polygon covers, by sampling pixel centres.

    The generator's own rule, written from the definition (it shares no code with the
    converters): vertices are (x, y) in the **pixel-corner** frame, in which pixel
    ``(row i, column j)`` is the unit square ``[j, j+1) x [i, i+1)`` with its centre at
    ``(j + 0.5, i + 0.5)``. A pixel belongs to the polygon when that centre lies inside
    the closed polygon (even-odd rule; a centre exactly on an edge counts as inside).
    A polygon of zero area covers no pixel; pixels outside ``shape`` are clipped away.

    Parameters
    ----------
    polygon
        (n, 2) vertices, x = column, y = row; a repeated closing vertex is harmless.
    shape
        (height, width) of the image.

    Returns
    -------
    tuple of numpy.ndarray
        Row and column indices (row-major order).
    """
    h, w = shape
    v = np.asarray(polygon, np.float64).reshape(-1, 2)
    empty = (np.zeros(0, np.intp), np.zeros(0, np.intp))
    if shoelace_area(v) == 0.0 or h <= 0 or w <= 0:
        return empty
    # Candidate pixels: those whose centre can fall within the vertices' bounding box.
    c0 = max(0, int(np.ceil(v[:, 0].min() - 0.5)))
    c1 = min(w - 1, int(np.floor(v[:, 0].max() - 0.5)))
    r0 = max(0, int(np.ceil(v[:, 1].min() - 0.5)))
    r1 = min(h - 1, int(np.floor(v[:, 1].max() - 0.5)))
    if c1 < c0 or r1 < r0:
        return empty
    rows, cols = np.mgrid[r0:r1 + 1, c0:c1 + 1]
    px = (cols + 0.5).ravel()[:, None]
    py = (rows + 0.5).ravel()[:, None]
    x1, y1 = v[:, 0][None], v[:, 1][None]
    x2, y2 = np.roll(v[:, 0], -1)[None], np.roll(v[:, 1], -1)[None]
    # Even-odd crossing count of a ray towards +x; each edge is half-open in y.
    straddles = (y1 > py) != (y2 > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
    inside = (np.count_nonzero(straddles & (px < x_cross), axis=1) % 2) == 1
    # Centres exactly on an edge (collinear with it and within its extent) belong too.
    cross = (x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)
    within = ((px >= np.minimum(x1, x2)) & (px <= np.maximum(x1, x2))
              & (py >= np.minimum(y1, y2)) & (py <= np.maximum(y1, y2)))
    inside |= np.any((cross == 0) & within, axis=1)
    return rows.ravel()[inside], cols.ravel()[inside]


def draw_filled(shape: tuple[int, int], polygons: list[np.ndarray]) -> np.ndarray:
    """Instance map of polygons: pixel ``k`` of polygon number ``k`` (1-based), 0 background.

    Each polygon covers the pixels given by :func:`pixels_inside` (pixel-centre
    sampling in the pixel-corner frame, clipped to the image). Where polygons overlap,
    the **first** one keeps the pixel; a polygon with zero area, or left with no pixel,
    is simply absent from the map (its number is skipped).
    """
    inst = np.zeros(shape, np.int32)
    for k, polygon in enumerate(polygons, 1):
        rr, cc = pixels_inside(polygon, shape)
        free = inst[rr, cc] == 0
        inst[rr[free], cc[free]] = k
    return inst
