"""The one home of build-merged's defaults: datasets, label sets, epochs, demo size, crop sizes."""

from __future__ import annotations

#: Every dataset build-merged knows, labelled ones first.
ALL_DATASETS = ("pannuke", "consep", "monusac", "nucls", "kumar", "monuseg", "tnbc")
#: The four label sets of the merged dataset (as the authors published it).
MERGED_SETS = ("pannuke", "nucls", "consep", "monusac")
#: Epochs per stage of a real build with the nucdata recipe.
EPOCHS = {"A": 10, "B": 10, "C": 10}
#: Epochs per stage of ``--demo`` with the nucdata recipe (a quick run on two cores).
DEMO_EPOCHS = {"A": 6, "B": 4, "C": 4}
#: Size of the ``--demo`` world (4: ~4,800 nuclei; ~300: full scale, ~350,000 nuclei).
DEMO_SCALE = 4
#: Crop side in pixels per recipe (the paper cuts 64 px context crops).
RECIPE_CROP_SIZE = {"nucdata": 32, "paper": 64}
