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

import os
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nucdata_models.fill import FilledLabels, fill_labels, score_filled
from nucdata_models.merge.defaults import ALL_DATASETS
from nucdata_models.merge.splits import TEST, TRAIN
from nucdata_models.train import STAGES, CrossTrainer, Prediction, Predictions, TrainConfig

__all__ = ["BaselineRun", "baseline_config", "install_demo_world", "score_demo", "truth_labels"]

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


def baseline_config(trainer: CrossTrainer | TrainConfig):
    """The own-dataset baseline: own annotations only, base module only, equal optimisation steps.

    Stage A runs for as many epochs as the method's three stages together, over the
    same training pool and batch size, so both take the same number of steps.
    ``trainer``: the method's trainer, or its configuration.
    """
    config = trainer.config if isinstance(trainer, CrossTrainer) else trainer
    return config.replace(mapped_labels="none", outside_head=False,
                          epochs={"A": sum(config.epochs[s] for s in STAGES), "B": 0, "C": 0})


def _train_baseline(data, config: TrainConfig, workdir: Path | None) -> Predictions:
    """Fit the own-dataset baseline on ``data`` and predict every nucleus once (its base module).

    The per-stage scoring of filled labels is off (``score_truth``): :func:`score_demo`
    scores these one predictions, so no stage predicts every nucleus again.
    """
    baseline = CrossTrainer(config.replace(score_truth=False))
    baseline.fit(data, workdir=workdir)
    return baseline.predict(data.crops, modules="base")


def exit_with_parent(parent: int, every: float = 0.5) -> threading.Thread:
    """Watch the parent process from a child: exit at once when ``parent`` is gone.

    A daemon thread compares ``os.getppid()`` with ``parent`` every ``every`` seconds; a
    parent killed without a chance to stop its child (SIGKILL, the OOM killer) leaves it
    to init or a subreaper, and the child then exits (code 1) instead of training on for
    nobody. POSIX; elsewhere the child still ends with the parent's normal exit
    (``daemon=True``).
    """
    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(every)

    thread = threading.Thread(target=watch, name="nucdata-exit-with-parent", daemon=True)
    thread.start()
    return thread


def _baseline_child(conn, data, config: TrainConfig, workdir: Path | None, threads: int,
                    parent: int | None = None) -> None:
    """The baseline in a child process: sends ``("ok", {set: (label, probability, probs)}, seconds)``
    (numpy arrays) or ``("error", traceback text, seconds)``; exits when ``parent`` dies."""
    start = time.perf_counter()
    if parent is not None:
        exit_with_parent(parent)
    try:
        torch.set_num_threads(threads)
        preds = _train_baseline(data, config, workdir)
        payload = {s: (p.label.numpy(), p.probability.numpy(), p.probs.numpy()) for s, p in preds.items()}
        conn.send(("ok", payload, time.perf_counter() - start))
    except BaseException:  # noqa: BLE001 - reported to the parent, which trains the baseline itself
        conn.send(("error", traceback.format_exc(), time.perf_counter() - start))
    finally:
        conn.close()


def spare_core(config: TrainConfig, cores: int | None = None) -> bool:
    """Whether a second training process would run on CPU cores that stay idle otherwise.

    On the CPU, when this process's torch threads fill at most half the cores (build-merged
    runs one thread on two cores, :func:`.defaults.cpu_threads`); never on a GPU.
    """
    from nucdata_models.train import resolve_device

    cores = os.cpu_count() if cores is None else cores
    return resolve_device(config.device).type == "cpu" and 2 * torch.get_num_threads() <= (cores or 1)


class BaselineRun:
    """The demo's own-dataset baseline, trained beside the method.

    It needs only the data and the method's configuration, not the method's model, so
    when a CPU core would otherwise idle (:func:`spare_core`) it trains in a child process
    (spawned, the same torch thread count) while the method trains; elsewhere it trains
    in this process when :meth:`result` is asked. Either way it is the same training (the
    same seed, data, configuration and thread count) and every nucleus is predicted once.

    Parameters
    ----------
    data
        The training data of the build.
    config
        The method's configuration; the baseline's is :func:`baseline_config` of it.
    workdir
        Where the baseline's stage checkpoints are kept for a rerun (``None``: nowhere).
    parallel
        ``True``: a child process; ``False``: this process; ``None``: a child process
        when :func:`spare_core` says a core is free.
    """

    def __init__(self, data, config: TrainConfig, workdir: Path | None = None, parallel: bool | None = None):
        self.data = data
        self.config = baseline_config(config)
        self.workdir = workdir
        self.parallel = spare_core(config) if parallel is None else parallel
        self.seconds: float | None = None
        self.waited: float = 0.0
        self.where = "this process, after the method"
        self._process = None
        self._conn = None

    def start(self) -> BaselineRun:
        """Start the child process (when parallel); returns ``self``."""
        if self.parallel and self._process is None:
            import multiprocessing

            ctx = multiprocessing.get_context("spawn")
            self._conn, child = ctx.Pipe(duplex=False)
            self._process = ctx.Process(target=_baseline_child, name="nucdata-baseline", daemon=True,
                                        args=(child, self.data, self.config, self.workdir, torch.get_num_threads(),
                                              os.getpid()))
            self._process.start()
            child.close()
        return self

    def result(self, say: Callable[[str], None] = print) -> Predictions:
        """The baseline's predictions of every nucleus (waits for the child process)."""
        if self._process is not None:
            start = time.perf_counter()
            if self._process.is_alive() and not self._conn.poll():
                say("demo: waiting for the baseline's process to finish")
            try:
                message = self._conn.recv()
            except EOFError:
                message = ("error", f"the process exited with code {self._process.exitcode} before sending", 0.0)
            finally:
                self.close()
            self.waited = time.perf_counter() - start
            status, payload, seconds = message
            if status == "ok":
                self.seconds = seconds
                self.where = "a parallel process, beside the method's training"
                return {s: Prediction(*(torch.from_numpy(a) for a in arrays)) for s, arrays in payload.items()}
            say("demo: the baseline's parallel process failed; training it here instead:\n"
                + str(payload).strip().splitlines()[-1])
        say("demo: training the baseline (each label set from its own dataset's annotations, equal steps)")
        start = time.perf_counter()
        preds = _train_baseline(self.data, self.config, self.workdir)
        self.seconds = time.perf_counter() - start
        self.where = "this process, after the method"
        return preds

    def close(self) -> None:
        """Stop the child process if it still runs (an interrupted or failed build)."""
        process, self._process = self._process, None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if process is not None:
            if process.is_alive():
                process.terminate()
            process.join(10)


def score_demo(data, predictions: Predictions, trainer: CrossTrainer, say: Callable[[str], None],
               filled: dict[str, FilledLabels] | None = None, baseline: BaselineRun | None = None) -> dict[str, Any]:
    """Filled-label metrics of the method and of the own-dataset baseline, held out and in training.

    Three rows per label set and split: ``merged`` (the published merged label: mapping
    tables where they decide, the model elsewhere), ``model`` (the method's own
    prediction, no tables) and ``baseline``. ``filled``: the calibrated merged labels
    (:func:`nucdata_models.calibration.calibrated_fill`), whose probabilities the
    ``merged`` and ``model`` rows' ``ece`` score; without it, the model's uncalibrated
    probabilities. The calibration of the published probability, per provenance, is
    :func:`nucdata_models.calibration.calibration_scores` (the report's ``calibration``).
    ``baseline``: a :class:`BaselineRun` already started (``None``: one trained here).
    """
    run = baseline if baseline is not None else BaselineRun(data, trainer.config, parallel=False)
    base_pred = run.result(say)
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
                              f"{run.config.epochs['A']} epochs vs A+B+C {trainer.config.epochs}",
                              "baseline_seconds": round(run.seconds or 0.0, 2), "baseline_ran_in": run.where}
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
