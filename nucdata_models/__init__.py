"""nucdata_models: the correlation-based cross-training models that fill in missing labels.

A library on plain tensors: :class:`TrainingData` in, :class:`TrainResult` and
:class:`Prediction` per label set out. Its core modules (data, losses, encoders, model,
augment, metrics, checkpoint, fill, train, config) import nothing of nucdata but
:mod:`nucdata.errors` and its private plumbing; :mod:`nucdata_models.merge` is the bridge
to the rest of nucdata (splits, ``build-merged``) and :mod:`nucdata_models.study` the
method study. Names here load their module on first use (PEP 562).

>>> from nucdata_models import CrossTrainer, TrainConfig
>>> from nucdata_models.study.synthetic import make_synthetic_data
>>> data = make_synthetic_data(per_dataset=100)                             # doctest: +SKIP
>>> trainer = CrossTrainer(TrainConfig(epochs={"A": 2, "B": 2, "C": 2}))    # doctest: +SKIP
>>> result = trainer.fit(data, workdir="run", progress=print)               # doctest: +SKIP
>>> predictions = trainer.predict(data.crops, data.candidates)              # doctest: +SKIP

To classify a lab's own nuclei (segmented by another tool) under every label set,
:class:`Classifier` reads the model ``build-merged`` wrote (``Classifier.from_pretrained``;
docs/tutorials/classify.md).

For a classifier of your own, :func:`partial_label_loss` is the loss over candidate
sets and :func:`target_bits` turns nucdata's ``(label, candidates)`` into its targets
(docs/tutorials/training.md).

For nucleus classes from patch-level flags only (Han et al.'s multi-layer pseudo-supervision),
:func:`train_weak` on :func:`weak_patch_data` (docs/weak-study.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nucdata._util.lazy import attach

#: public name -> the module that defines it (imported on first access)
_LAZY = {
    "TrainConfig": "nucdata_models.config", "RECIPES": "nucdata_models.config",
    "RECIPE_DIFFERENCES": "nucdata_models.config",
    "CrossTrainer": "nucdata_models.train", "Prediction": "nucdata_models.train",
    "Predictions": "nucdata_models.train", "TrainResult": "nucdata_models.train",
    "LabelSetSpec": "nucdata_models.data", "TrainingData": "nucdata_models.data",
    "target_bits": "nucdata_models.data", "training_targets": "nucdata_models.data",
    "build_encoder": "nucdata_models.encoders",
    "fill_labels": "nucdata_models.fill",
    "partial_label_loss": "nucdata_models.losses",
    "classification_metrics": "nucdata_models.metrics",
    "load_checkpoint": "nucdata_models.checkpoint", "save_checkpoint": "nucdata_models.checkpoint",
    "CheckpointError": "nucdata.errors", "CheckpointMismatchError": "nucdata.errors",
    "from_crop_dataset": "nucdata_models.merge", "training_data": "nucdata_models.merge",
    "Classifier": "nucdata_models.merge", "Classification": "nucdata_models.merge",
    "WeakConfig": "nucdata_models.weak", "WeakModel": "nucdata_models.weak", "PatchData": "nucdata_models.weak",
    "train_weak": "nucdata_models.weak", "weak_patch_data": "nucdata_models.merge.weak_data",
}

__getattr__, __dir__, __all__ = attach(__name__, _LAZY, globals())

if TYPE_CHECKING:
    from nucdata.errors import CheckpointError, CheckpointMismatchError
    from nucdata_models.checkpoint import load_checkpoint, save_checkpoint
    from nucdata_models.config import RECIPE_DIFFERENCES, RECIPES, TrainConfig
    from nucdata_models.data import LabelSetSpec, TrainingData, target_bits, training_targets
    from nucdata_models.encoders import build_encoder
    from nucdata_models.fill import fill_labels
    from nucdata_models.losses import partial_label_loss
    from nucdata_models.merge import Classification, Classifier, from_crop_dataset, training_data
    from nucdata_models.merge.weak_data import weak_patch_data
    from nucdata_models.metrics import classification_metrics
    from nucdata_models.train import CrossTrainer, Prediction, Predictions, TrainResult
    from nucdata_models.weak import PatchData, WeakConfig, WeakModel, train_weak
