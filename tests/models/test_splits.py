"""Grouped splits: no group in two splits, duplicates trained once, every split filled."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nucdata_models.merge.splits import DUPLICATE, TEST, TRAIN, VALIDATION, grouped_split


class FakeStore:
    """The few Store methods grouped_split reads: image columns, pixels, nucleus images."""

    def __init__(self, images: list[np.ndarray], columns: dict[str, list[str]], nuclei_per_image: int = 2):
        self.images = images
        self.columns = {"name": [f"img{i}" for i in range(len(images))], **columns}
        self.nucleus_image = np.repeat(np.arange(len(images)), nuclei_per_image)

    @property
    def n_images(self) -> int:
        return len(self.images)

    def image_columns(self) -> list[str]:
        return list(self.columns)

    def column(self, table: str, key: str) -> np.ndarray:
        return self.nucleus_image if table == "nuclei" else np.asarray(self.columns[key])

    def rgb(self, index: int) -> np.ndarray:
        return self.images[index]


@dataclass
class Member:
    name: str
    store: FakeStore


def _image(value: int) -> np.ndarray:
    return np.full((4, 4, 3), value, np.uint8)


def test_groups_never_cross_splits_and_every_split_is_filled():
    patients = [f"p{i // 3}" for i in range(30)]  # 10 patients, 3 images each
    member = Member("tnbc", FakeStore([_image(i) for i in range(30)], {"patient": patients}))
    result = grouped_split([member], 0.2, 0.2, seed=3)
    per_image = result.split[::2]
    for p in set(patients):
        assert len({int(per_image[i]) for i, q in enumerate(patients) if q == p}) == 1
    assert {TRAIN, VALIDATION, TEST} <= set(per_image.tolist())
    assert result.group_key["tnbc"] == "patient"
    assert result.groups["tnbc"] == {"train": 6, "validation": 2, "test": 2}
    # reproducible, and another seed draws other groups
    assert np.array_equal(grouped_split([member], 0.2, 0.2, seed=3).split, result.split)
    assert any(not np.array_equal(grouped_split([member], 0.2, 0.2, seed=s).split, result.split) for s in range(4, 9))


def test_duplicates_are_found_by_pixels_and_follow_priority():
    shared = [_image(100 + i) for i in range(4)]
    monuseg = Member("monuseg", FakeStore(shared + [_image(7), _image(8)], {"patient": [f"TCGA-{i}" for i in range(6)]}))
    kumar = Member("kumar", FakeStore(list(shared), {"patient": [f"TCGA-{i}" for i in range(4)]}))
    # Kumar first in the list: MoNuSeg still keeps the images (it comes first by priority)
    result = grouped_split([kumar, monuseg], 0.2, 0.2, seed=0)
    kumar_split, monuseg_split = result.split[:8], result.split[8:]
    assert (kumar_split == DUPLICATE).all() and (monuseg_split != DUPLICATE).all()
    assert result.duplicates == {"monuseg": {}, "kumar": {"monuseg": 4}}


def test_a_coarse_key_with_too_few_groups_falls_back_to_a_finer_one():
    store = FakeStore([_image(i) for i in range(6)], {"hospital": ["A"] * 6, "patient": [f"p{i}" for i in range(6)]})
    result = grouped_split([Member("nucls", store)], 0.2, 0.2)
    assert result.group_key["nucls"] == "patient"
    one = FakeStore([_image(i) for i in range(6)], {"patient": ["x", "x", "y", "y", "y", "y"]})
    assert grouped_split([Member("consep", one)], 0.2, 0.2).group_key["consep"] == "image"
