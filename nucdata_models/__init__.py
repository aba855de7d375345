"""nucdata_models: the correlation-based cross-training models that fill in missing labels.

>>> from nucdata_models import CrossTrainer, TrainConfig
>>> from nucdata_models.synthetic import make_world_data
>>> data = make_world_data(per_dataset=100)                        # doctest: +SKIP
>>> trainer = CrossTrainer(TrainConfig(epochs={"A": 2, "B": 2, "C": 2}))  # doctest: +SKIP
>>> result = trainer.fit(data)                                     # doctest: +SKIP
>>> predictions = trainer.predict(data.crops)                      # doctest: +SKIP
"""

from .checkpoint import CheckpointMismatchError, load_checkpoint, save_checkpoint
from .data import LabelSetSpec, TrainingData, from_crop_dataset
from .metrics import classification_metrics
from .train import CrossTrainer, Prediction, TrainConfig, TrainResult

__all__ = [
    "CheckpointMismatchError", "CrossTrainer", "LabelSetSpec", "Prediction", "TrainConfig",
    "TrainResult", "TrainingData", "classification_metrics", "from_crop_dataset", "load_checkpoint",
    "save_checkpoint",
]
