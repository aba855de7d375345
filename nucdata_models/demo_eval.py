"""The demo world: generating it, its truth, and a fair score of the filled labels.

``build-merged --demo`` generates all seven datasets from one world whose latent cell
types are known (:mod:`nucdata.demo.world`), so the truth of every nucleus under every
label set is known. The filled labels are scored on nuclei their own dataset did not
annotate in the set, separately on the **held-out** images (split ``TEST``: no stage
ever saw them) and on the training pool, against a baseline that learns each label
set from its own dataset's annotations only — the same encoder, the same number of
optimisation steps as the method's three stages together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import ANNOTATED
from .defaults import ALL_DATASETS
from .fill import fill_labels, scored_class
from .metrics import classification_metrics
from .splits import TEST, TRAIN
from .train import STAGES, CrossTrainer, Predictions

__all__ = ["baseline_config", "install_demo_world", "score_demo", "score_filled", "truth_labels"]

SCORED_SPLITS = {"held_out": TEST, "training_pool": TRAIN}


def install_demo_world(root: Path, seed: int, datasets: Sequence[str] | None,
                       say: Callable[[str], None], scale: int = 1) -> dict[str, dict[str, list]]:
    """Generate the datasets' archives from one world into ``root``; return the truth per image."""
    from nucdata.demo import install
    from nucdata.demo.world import World

    world = World(seed)
    truth = {}
    for name in datasets or ALL_DATASETS:
        archives = install(name, root, seed, world=world, scale=scale)
        truth[name] = archives.truth
        say(f"demo: generated {name} ({', '.join(p.name for p in archives.files)})")
    return truth


def truth_labels(members, truth_by_image: dict[str, dict[str, list]], label_sets: Sequence[str]) -> dict[str, np.ndarray]:
    """The true class of every stored nucleus under every set (-2 outside, -3 unmatched)."""
    from nucdata.demo.world import NATIVE, TYPE_NAMES
    from nucdata.labelsets import OWN_LABEL_SET, translate

    owner = {v: k for k, v in OWN_LABEL_SET.items()}
    kinds = []
    for ds in members:
        store = ds.store
        names = [str(n) for n in np.asarray(store.column("images", "name"))]
        centroids = np.asarray(store.column("nuclei", "centroid"))
        image_of = np.asarray(store.column("nuclei", "image"))
        k = np.full(store.n_nuclei, -1, np.int64)
        table = truth_by_image.get(ds.name, {})
        for row in range(store.n_nuclei):
            drawn = table.get(names[image_of[row]])
            if not drawn:
                continue
            points = np.asarray([(x, y) for x, y, *_ in drawn])
            dist = np.hypot(*(points - centroids[row]).T)
            j = int(dist.argmin())
            if dist[j] < 4.0:  # matched to the nucleus it was drawn as
                k[row] = drawn[j][2]
        kinds.append(k)
    kinds = np.concatenate(kinds)
    result = {}
    for s in label_sets:
        own = owner[s]
        codes = np.array([-1 if k < 0 or NATIVE[own][TYPE_NAMES[k]] is None else NATIVE[own][TYPE_NAMES[k]] for k in kinds])
        labels, _ = translate(own, codes, s)
        labels = np.where(kinds < 0, -3, np.where(codes == -1, -2, labels))
        result[s] = labels
    return result


def baseline_config(trainer: CrossTrainer):
    """The own-dataset baseline: own annotations only, base module only, equal optimisation steps.

    Stage A runs for as many epochs as the method's three stages together, over the
    same training pool and batch size, so both take the same number of steps.
    """
    config = trainer.config
    return config.replace(mapped_labels="none", outside_head=False,
                          epochs={"A": sum(config.epochs[s] for s in STAGES), "B": 0, "C": 0})


def score_filled(data, labels: dict[str, torch.Tensor], confidence: dict[str, torch.Tensor], split: int
                 ) -> dict[str, dict[str, Any]]:
    """Metrics of given labels against ``data.truth`` on the filled nuclei of one split.

    Filled nuclei: not annotated by their own dataset in the set, true class in the set.
    Outside (-2) predictions count as one more class, so they are errors here.
    """
    out = {}
    for spec in data.label_sets:
        truth = data.truth[spec.name]
        sel = ((data.provenance[spec.name] != ANNOTATED) & (truth >= 0) & (data.split == split)).numpy()
        guess = scored_class(labels[spec.name], spec.size).numpy()[sel]
        out[spec.name] = classification_metrics(truth.numpy()[sel], guess, spec.size + 1,
                                                confidence[spec.name].nan_to_num(1.0).numpy()[sel])
    return out


def score_demo(data, predictions: Predictions, trainer: CrossTrainer, say: Callable[[str], None]) -> dict[str, Any]:
    """Filled-label metrics of the method and of the own-dataset baseline, held out and in training.

    Three rows per label set and split: ``merged`` (the published merged label: mapping
    tables where they decide, the model elsewhere), ``model`` (the method's own
    prediction, no tables) and ``baseline``.
    """
    say("demo: training the baseline (each label set from its own dataset's annotations, equal steps)")
    baseline = CrossTrainer(baseline_config(trainer))
    baseline.fit(data)
    base_pred = baseline.predict(data.crops, modules="base")
    merged = {s.name: fill_labels(predictions[s.name].probs, data.labels[s.name], data.candidates[s.name],
                                  data.provenance[s.name], s.size) for s in data.label_sets}
    rows = {
        "merged": ({k: v.label for k, v in merged.items()}, {k: v.probability for k, v in merged.items()}),
        "model": ({k: v.label for k, v in predictions.items()}, {k: v.probability for k, v in predictions.items()}),
        "baseline": ({k: v.label for k, v in base_pred.items()}, {k: v.probability for k, v in base_pred.items()}),
    }
    scores: dict[str, Any] = {"baseline_steps": "equal: stage A for "
                              f"{baseline.config.epochs['A']} epochs vs A+B+C {trainer.config.epochs}"}
    for where, split in SCORED_SPLITS.items():
        scores[where] = {arm: score_filled(data, labels, conf, split) for arm, (labels, conf) in rows.items()}
    for s in data.names:
        m = scores["held_out"]["merged"][s]
        b = scores["held_out"]["baseline"][s]
        say(f"demo: {s}: held-out filled-label macro F1 {m['macro_f1']:.3f} (baseline {b['macro_f1']:.3f}) "
            f"on {m['count']} nuclei")
    return scores
