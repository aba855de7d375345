"""nucdata_models: the correlation-based cross-training models that fill in missing labels.

A library on plain tensors: :class:`TrainingData` in, :class:`TrainResult` and
:class:`Prediction` per label set out. It never imports ``nucdata`` at import time;
:func:`from_crop_dataset` (in :mod:`.bridge`) is the one bridge to nucdata's crop banks.

>>> from nucdata_models import CrossTrainer, TrainConfig
>>> from nucdata_models.study.synthetic import make_synthetic_data
>>> data = make_synthetic_data(per_dataset=100)                             # doctest: +SKIP
>>> trainer = CrossTrainer(TrainConfig(epochs={"A": 2, "B": 2, "C": 2}))    # doctest: +SKIP
>>> result = trainer.fit(data, workdir="run", progress=print)               # doctest: +SKIP
>>> predictions = trainer.predict(data.crops, data.candidates)              # doctest: +SKIP

For a classifier of your own, :func:`partial_label_loss` is the loss over candidate
sets and :func:`target_bits` turns nucdata's ``(label, candidates)`` into its targets
(docs/tutorials/training.md).
"""

from nucdata_models.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    load_checkpoint,
    save_checkpoint,
)
from nucdata_models.data import LabelSetSpec, TrainingData, target_bits, training_targets
from nucdata_models.encoders import build_encoder
from nucdata_models.fill import fill_labels
from nucdata_models.losses import partial_label_loss
from nucdata_models.merge.bridge import from_crop_dataset, training_data
from nucdata_models.metrics import classification_metrics
from nucdata_models.train import (
    RECIPE_DIFFERENCES,
    RECIPES,
    CrossTrainer,
    Prediction,
    Predictions,
    TrainConfig,
    TrainResult,
)

__all__ = [
    "CheckpointError", "CheckpointMismatchError", "CrossTrainer", "LabelSetSpec", "Prediction", "Predictions",
    "TrainConfig", "TrainResult", "TrainingData", "build_encoder", "classification_metrics", "from_crop_dataset",
    "load_checkpoint", "partial_label_loss", "save_checkpoint", "target_bits",
    "RECIPES", "RECIPE_DIFFERENCES", "fill_labels", "training_data", "training_targets",
]
