"""Test data from the formats' definitions: one fake-archive writer per dataset, and the world.

``nucdata.testing.<dataset>`` writes small archives in that dataset's native layout
(torchgeo's ``tests/data/<ds>/data.py`` idea), never with the converter they test,
and holds what the world knows of that dataset (``WORLD``, a :class:`DatasetWorld`);
:mod:`nucdata.testing.world` is the one simulator of latent cell types they draw from,
whose truth is known under every label set. :func:`install` puts the archives where a
user would, with a card override carrying their hashes; ``nucdata demo`` runs on them.
"""

from nucdata.testing._archives import (
    DEMO_HASH_SOURCE,
    DemoArchives,
    card_override,
    generator,
    install,
    scratch_folder,
    zip_tree,
)
from nucdata.testing._demo import run_demo
from nucdata.testing._draw import (
    BACKGROUND,
    Appearance,
    draw_filled,
    ellipse_polygon,
    paint,
    place_nuclei,
)
from nucdata.testing.world import DatasetWorld, World, WorldConfig

__all__ = ["BACKGROUND", "DEMO_HASH_SOURCE", "Appearance", "DatasetWorld", "DemoArchives", "World", "WorldConfig",
           "card_override", "draw_filled", "ellipse_polygon", "generator", "install", "paint", "place_nuclei",
           "run_demo", "scratch_folder", "zip_tree"]
