"""Demo Kumar archive: Kumar's images come from the MoNuSeg training zip."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from nucdata.testing import monuseg as _monuseg
from nucdata.testing._archives import DemoArchives
from nucdata.testing.monuseg import KUMAR
from nucdata.testing.world import World

#: Kumar's images are MoNuSeg's (its card's ``duplicates_of``), so the world draws them as
#: MoNuSeg's: the entry is MoNuSeg's but for the nuclei its own 30 images hold.
WORLD = replace(_monuseg.WORLD, demo_nuclei=239)


def generate(folder: Path, rng: np.random.Generator, world: World | None = None, scale: float = 1) -> DemoArchives:
    """Write MoNuSeg's training zip (Kumar's 30 images are in it); ``scale`` as MoNuSeg's."""
    test_zip = folder / "MoNuSegTestData.zip"
    had_test_zip = test_zip.exists()  # MoNuSeg's, when both are installed into one folder
    monuseg = _monuseg.generate(folder, rng, world, dataset="kumar", scale=scale)
    train_zip = next(p for p in monuseg.files if p.name == "MoNuSeg 2018 Training Data.zip")
    if not had_test_zip:
        test_zip.unlink(missing_ok=True)
    # Region counts of Kumar's 30 images alone: regenerate the count from the zip.
    import zipfile

    regions = 0
    with zipfile.ZipFile(train_zip) as zf:
        for info in zf.infolist():
            stem = Path(info.filename).stem
            if info.filename.endswith(".xml") and stem in KUMAR and "__MACOSX" not in info.filename:
                regions += zf.read(info).count(b"<Region ")
    return DemoArchives(
        "kumar", [train_zip], {train_zip.name: "train"},
        {"images": {part: sum(1 for v in KUMAR.values() if v == part)
                    for part in ("train", "test_same_organ", "test_different_organ")},
         "regions": {"all": regions}},
        {stem: t for stem, t in monuseg.truth.items() if stem in KUMAR},
        {stem: t for stem, t in monuseg.annotated.items() if stem in KUMAR},
    )
