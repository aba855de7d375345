"""The bridge from the models to the rest of nucdata: training data from crop banks, grouped
splits, ``build-merged`` (its defaults, report and command line), the demo's scoring, and
``classify``: the shippable :class:`Classifier` and a lab's images and slides classified.

Only this package and :mod:`nucdata_models.study` import nucdata beyond its errors and
plumbing; they import nucdata lazily, inside functions, where a command needs it.
"""

from __future__ import annotations

from typing import Any

from nucdata._util.deprecation import moved_attributes
from nucdata._util.lazy import attach

_LAZY = {
    "ALL_DATASETS": "nucdata_models.merge.defaults",
    "BuildOptions": "nucdata_models.merge.build",
    "Classification": "nucdata_models.merge.classify",
    "ClassifyOptions": "nucdata_models.merge.slides",
    "Classifier": "nucdata_models.merge.classify",
    "DEMO_EPOCHS": "nucdata_models.merge.defaults",
    "DEMO_SCALE": "nucdata_models.merge.defaults",
    "DUPLICATE": "nucdata_models.merge.splits",
    "EPOCHS": "nucdata_models.merge.defaults",
    "GROUP_KEYS": "nucdata_models.merge.splits",
    "GroupedSplit": "nucdata_models.merge.splits",
    "LabelFreeImage": "nucdata_models.merge.label_free",
    "RECIPE_CROP_SIZE": "nucdata_models.merge.defaults",
    "TEST": "nucdata_models.merge.splits",
    "TRAIN": "nucdata_models.merge.splits",
    "VALIDATION": "nucdata_models.merge.splits",
    "SetResult": "nucdata_models.merge.classify",
    "annotation_columns": "nucdata_models.merge.classify",
    "BaselineRun": "nucdata_models.merge.demo_eval",
    "baseline_config": "nucdata_models.merge.demo_eval",
    "classify_paths": "nucdata_models.merge.slides",
    "build_merged": "nucdata_models.merge.build",
    "from_crop_dataset": "nucdata_models.merge.bridge",
    "grouped_split": "nucdata_models.merge.splits",
    "image_digests": "nucdata_models.merge.splits",
    "images_of": "nucdata_models.merge.label_free",
    "install_demo_world": "nucdata_models.merge.demo_eval",
    "label_columns": "nucdata_models.merge.bridge",
    "label_free_checks": "nucdata_models.merge.label_free",
    "make_report": "nucdata_models.merge.report",
    "make_world": "nucdata_models.merge.demo_eval",
    "real_images": "nucdata_models.merge.label_free",
    "real_references": "nucdata_models.merge.label_free",
    "render_label_free": "nucdata_models.merge.label_free",
    "render_recipe_table": "nucdata_models.merge.report",
    "render_model_card": "nucdata_models.merge.card",
    "render_report": "nucdata_models.merge.report",
    "score_demo": "nucdata_models.merge.demo_eval",
    "training_data": "nucdata_models.merge.bridge",
    "truth_labels": "nucdata_models.merge.demo_eval",
    "work_dir": "nucdata_models.merge.build",
}

_lazy, __dir__, __all__ = attach(__name__, _LAZY, globals(), deprecated={"MERGED_SETS": "nucdata_models.merge.defaults"})


def _score_filled_v1(data, labels, confidence, split: int, with_outside: bool = False) -> dict[str, Any]:
    """The old ``score_filled(data, labels, confidence, split, with_outside)``."""
    from nucdata_models.fill import score_filled

    return score_filled(data, labels, confidence, split, "truth_known" if with_outside else "class_in_set")


_moved = moved_attributes(__name__, {
    "score_filled": ("nucdata_models.fill.score_filled (with_outside=True is select='truth_known')",
                     lambda: _score_filled_v1),
})


def __getattr__(name: str) -> Any:
    return _moved(name) if name == "score_filled" else _lazy(name)
