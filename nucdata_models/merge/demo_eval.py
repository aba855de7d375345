"""The demo world: generating it, its truth, and a fair score of the filled labels.

``build-merged --demo`` generates every dataset of the catalog from one world whose latent cell
types are known (:mod:`nucdata.testing.world`), so the truth of every nucleus under every
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

from nucdata_models.fill import FilledLabels, fill_labels, score_filled
from nucdata_models.merge.defaults import ALL_DATASETS
from nucdata_models.merge.splits import TEST, TRAIN
from nucdata_models.train import STAGES, CrossTrainer, Predictions

__all__ = ["baseline_config", "install_demo_world", "score_demo", "truth_labels"]

SCORED_SPLITS = {"held_out": TEST, "training_pool": TRAIN}


def make_world(seed: int, preset: str = "easy"):
    """The demo world of ``seed`` with the knobs of a :class:`nucdata.testing.world.WorldConfig` preset."""
    from nucdata.testing.world import World, WorldConfig

    return World(seed, config=WorldConfig.preset(preset))


def install_demo_world(root: Path, seed: int, datasets: Sequence[str] | None,
                       say: Callable[[str], None], scale: float = 1, world=None) -> dict[str, dict[str, list]]:
    """Generate the datasets' archives from one world into ``root``; return the truth per image.

    ``world`` defaults to the easy world of ``seed`` (see :func:`make_world`).
    """
    from nucdata.testing import install

    world = world if world is not None else make_world(seed)
    truth = {}
    for name in datasets or ALL_DATASETS:
        archives = install(name, root, seed, world=world, scale=scale)
        truth[name] = archives.truth
        say(f"demo: generated {name} ({', '.join(p.name for p in archives.files)})")
    return truth


def truth_labels(members, truth_by_image: dict[str, dict[str, list]], label_sets: Sequence[str],
                 world=None) -> dict[str, np.ndarray]:
    """The true class of every stored nucleus under every set (-2 outside, -3 unmatched).

    Each stored nucleus is matched to the nucleus it was drawn as (nearest drawn
    centroid within 4 px); its latent type gives its class in every set through the
    world's own vocabularies (which may differ from the mapping tables on purpose).
    """
    from nucdata.testing.world import World

    world = world if world is not None else World()
    kinds = []
    for ds in members:
        store = ds.store
        names = [str(n) for n in np.asarray(store.column("images", "name"))]
        centroids = np.asarray(store.column("nuclei", "centroid"))
        image_of = np.asarray(store.column("nuclei", "image"))
        k = np.full(store.n_nuclei, -1, np.int64)
        table = truth_by_image.get(ds.name, {})
        for index in np.unique(image_of):
            drawn = table.get(names[index])
            if not drawn:
                continue
            rows = np.flatnonzero(image_of == index)
            points = np.asarray([(x, y) for x, y, *_ in drawn], np.float64)
            kind = np.asarray([d[2] for d in drawn], np.int64)
            dist = np.hypot(*(points[None, :, :] - centroids[rows][:, None, :]).transpose(2, 0, 1))
            nearest = dist.argmin(1)
            matched = dist[np.arange(rows.size), nearest] < 4.0  # the nucleus it was drawn as
            k[rows[matched]] = kind[nearest[matched]]
        kinds.append(k)
    kinds = np.concatenate(kinds) if kinds else np.zeros(0, np.int64)
    return {s: world.truth_labels(kinds, s) for s in label_sets}


def baseline_config(trainer: CrossTrainer):
    """The own-dataset baseline: own annotations only, base module only, equal optimisation steps.

    Stage A runs for as many epochs as the method's three stages together, over the
    same training pool and batch size, so both take the same number of steps.
    """
    config = trainer.config
    return config.replace(mapped_labels="none", outside_head=False,
                          epochs={"A": sum(config.epochs[s] for s in STAGES), "B": 0, "C": 0})


def score_demo(data, predictions: Predictions, trainer: CrossTrainer, say: Callable[[str], None],
               filled: dict[str, FilledLabels] | None = None) -> dict[str, Any]:
    """Filled-label metrics of the method and of the own-dataset baseline, held out and in training.

    Three rows per label set and split: ``merged`` (the published merged label: mapping
    tables where they decide, the model elsewhere), ``model`` (the method's own
    prediction, no tables) and ``baseline``. ``filled``: the calibrated merged labels
    (:func:`nucdata_models.calibration.calibrated_fill`), whose probabilities the
    ``merged`` and ``model`` rows' ``ece`` score; without it, the model's uncalibrated
    probabilities. The calibration of the published probability, per provenance, is
    :func:`nucdata_models.calibration.calibration_scores` (the report's ``calibration``).
    """
    say("demo: training the baseline (each label set from its own dataset's annotations, equal steps)")
    baseline = CrossTrainer(baseline_config(trainer))
    baseline.fit(data)
    base_pred = baseline.predict(data.crops, modules="base")
    merged = filled if filled is not None else {
        s.name: fill_labels(predictions[s.name].probs, data.labels[s.name], data.candidates[s.name],
                            data.provenance[s.name], s.size) for s in data.label_sets}
    rows = {
        "merged": ({k: v.label for k, v in merged.items()}, {k: v.probability for k, v in merged.items()}),
        "model": ({k: v.predicted for k, v in merged.items()},
                  {k: v.predicted_probability for k, v in merged.items()}),
        "baseline": ({k: v.label for k, v in base_pred.items()}, {k: v.probability for k, v in base_pred.items()}),
    }
    scores: dict[str, Any] = {"baseline_steps": "equal: stage A for "
                              f"{baseline.config.epochs['A']} epochs vs A+B+C {trainer.config.epochs}"}
    for where, split in SCORED_SPLITS.items():
        scores[where] = {arm: score_filled(data, labels, conf, split, "class_in_set")
                         for arm, (labels, conf) in rows.items()}
    scores["held_out_with_outside"] = {arm: score_filled(data, labels, conf, TEST, "truth_known")
                                       for arm, (labels, conf) in rows.items()}
    for s in data.names:
        m = scores["held_out"]["merged"][s]
        b = scores["held_out"]["baseline"][s]
        say(f"demo: {s}: held-out filled-label macro F1 {m['macro_f1']:.3f} (baseline {b['macro_f1']:.3f}) "
            f"on {m['count']} nuclei")
    return scores
