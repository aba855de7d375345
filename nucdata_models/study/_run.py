"""The method study's runs: worlds prepared once, arms trained and scored, the summary and its markdown.

* **Runs** (:func:`prepare_world`, :func:`run_arms`): one generated world per world
  seed, prepared once and shared by every arm and training seed; each arm
  (:func:`.arm_plan`) is trained and scored on the held-out images (split ``TEST``:
  no stage sees them).
* **Summary** (:func:`summarise`): per arm and label set the mean over runs of macro
  F1 and accuracy, with 95 % bootstrap intervals clustered by image, and paired
  differences against the reference arms with two-sided bootstrap p-values,
  Holm-corrected across the label sets (the statistics of :mod:`._stats`).

The primary endpoint, fixed before any run: macro F1 of the **published** label of
held-out nuclei that their own dataset did not annotate in the set and whose true
class lies in the set (:func:`nucdata_models.fill.filled_nuclei`, ``"class_in_set"``),
averaged over the set's classes. An "outside" prediction is an error (a miss of the
true class); it is not averaged in as a class of its own (see
:func:`nucdata_models.metrics.macro_f1_from_confusion`). What an arm publishes is
:attr:`.ArmPlan.publish`: the merged label (:func:`.fill.fill_labels`: mapping tables
where they decide, the model elsewhere) for arms that train with the mapping tables,
the model's prediction for arms that do not. Every arm is also scored on its model
prediction alone and on the merged label, so a reader can separate the tables'
contribution from the method's.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nucdata.errors import InvalidArgumentError
from nucdata.labels import MERGED_LABEL_SETS
from nucdata_models.data import TrainingData
from nucdata_models.fill import fill_labels, filled_nuclei, scored_class
from nucdata_models.merge import ALL_DATASETS, TEST, grouped_split
from nucdata_models.study._arms import DATA_VIEWS, REFERENCES, ArmPlan, arm_plan
from nucdata_models.study._stats import (
    METRIC_FUNCTIONS,
    METRICS,
    bootstrap_p,
    cluster_confusions,
    holm,
    percentile_ci,
    resample_weights,
)
from nucdata_models.train import CrossTrainer, TrainConfig

__all__ = ["VIEWS", "PreparedWorld", "RunScores", "oracle_check", "prepare_world", "render_markdown", "run_arms",
           "score_views", "summarise"]

#: Scored views of every arm: what it publishes, its model prediction, its merged label.
VIEWS = ("published", "model", "merged")


# -- runs ------------------------------------------------------------------------------
@dataclass
class PreparedWorld:
    """One generated world, prepared once and shared by every arm and training seed.

    Attributes
    ----------
    seed, preset
        The world.
    data
        Its training data with ``truth`` (split codes from :func:`.splits.grouped_split`).
    image
        Per nucleus, its image's id within the world (the bootstrap's cluster).
    n_images
        Number of images in the world.
    bayes_accuracy
        Per label set, the best reachable accuracy on its own dataset
        (:meth:`nucdata.testing.world.World.bayes_accuracy`).
    nuclei
        Per dataset, its number of nuclei.
    split_counts
        Nuclei per split code (train, validation, test, duplicate).
    seconds
        Time to generate and prepare it.
    """

    seed: int
    preset: str
    data: TrainingData
    image: np.ndarray
    n_images: int
    bayes_accuracy: dict[str, float]
    nuclei: dict[str, int]
    split_counts: list[int]
    seconds: float = 0.0


def prepare_world(seed: int, preset: str, scale: float, crop: int, validation: float, test: float,
                  datasets: Sequence[str] | None = None, label_sets: Sequence[str] = MERGED_LABEL_SETS,
                  say: Callable[[str], None] = print, bayes_samples: int = 20_000) -> PreparedWorld:
    """Generate the world ``seed`` of ``preset``, prepare its datasets, split and cut crops.

    The datasets are generated into a temporary data home that is removed afterwards;
    the crop bank, labels, truth and image ids are kept in memory. The split's seed is
    the world's seed.
    """
    import nucdata
    from nucdata.views import crops_of
    from nucdata_models.merge import install_demo_world, make_world, training_data, truth_labels

    start = time.perf_counter()
    world = make_world(seed, preset)
    names = list(datasets or ALL_DATASETS)
    with tempfile.TemporaryDirectory(prefix="nucdata-study-") as home:
        root = Path(home)
        truth_by_image = install_demo_world(root, seed, names, lambda _m: None, scale, world)
        for name in names:
            nucdata.prepare(name, root=root, download=False)
        members = [nucdata.load(name, root=root) for name in names]
        groups = grouped_split(members, validation, test, seed)
        crops = crops_of(members, crop)
        data = training_data(members, crops, list(label_sets), torch.from_numpy(groups.split))
        data.crops = data.crops.clone()  # own the pixels: the crop bank's files go with the home
        data.truth = {s: torch.from_numpy(t) for s, t in truth_labels(members, truth_by_image, data.names,
                                                                    world).items()}
        images, offset = [], 0
        for member in members:
            images.append(np.asarray(member.store.column("nuclei", "image"), np.int64) + offset)
            offset += member.store.n_images
        nuclei = {m.name: int(m.store.n_nuclei) for m in members}
    bayes = {s: world.bayes_accuracy(s, samples=bayes_samples) for s in data.names}
    prepared = PreparedWorld(seed, preset, data, np.concatenate(images), offset, bayes, nuclei,
                             np.bincount(groups.split, minlength=4).tolist(), time.perf_counter() - start)
    say(f"world {preset} seed {seed}: {len(data):,} nuclei in {offset} images "
        f"(split train/validation/test/duplicate {prepared.split_counts}); prepared in {prepared.seconds:.1f} s")
    return prepared


@dataclass
class RunScores:
    """One arm trained once on one world with one training seed, scored on the held-out images.

    ``confusions[view][label_set]`` is the per-image confusion array of
    :func:`cluster_confusions` (classes plus one for "outside").
    """

    arm: str
    world_seed: int
    train_seed: int
    confusions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    seconds: float = 0.0
    pseudo_labels: dict[str, int] = field(default_factory=dict)


def score_views(plan: ArmPlan, trainer: CrossTrainer, world: PreparedWorld) -> dict[str, dict[str, np.ndarray]]:
    """Per-image confusions of the arm's published, model and merged labels on the scored nuclei.

    Scored nuclei: held-out (split ``TEST``), not annotated by their own dataset in the
    set, true class in the set. The merged label always uses the real data's tables
    (the oracle's too: its training labels are not an output).
    """
    data = world.data
    predictions = trainer.predict(data.crops, modules=plan.modules)
    out: dict[str, dict[str, np.ndarray]] = {view: {} for view in VIEWS}
    for spec in data.label_sets:
        s = spec.name
        truth = data.truth[s]
        sel = (filled_nuclei(truth, data.provenance[s], "class_in_set") & (data.split == TEST)).numpy()
        merged = fill_labels(predictions[s].probs, data.labels[s], data.candidates[s], data.provenance[s], spec.size)
        labels = {"model": predictions[s].label, "merged": merged.label}
        labels["published"] = labels[plan.publish]
        for view, label in labels.items():
            out[view][s] = cluster_confusions(truth.numpy()[sel], scored_class(label, spec.size).numpy()[sel],
                                              world.image[sel], world.n_images, spec.size + 1)
    return out


def run_arms(world: PreparedWorld, arms: Sequence[str], base: TrainConfig,
             say: Callable[[str], None] = print) -> list[RunScores]:
    """Train and score every arm on one world with ``base``'s seed; identical plans train once."""
    trained: dict[str, RunScores] = {}
    runs = []
    for arm in arms:
        plan = arm_plan(arm, base)
        key = plan.key()
        if key in trained:
            same = trained[key]
            say(f"  {arm}: same configuration as {same.arm}; its model is reused")
            runs.append(dataclasses.replace(same, arm=arm))
            continue
        start = time.perf_counter()
        data = DATA_VIEWS[plan.data](world.data)
        trainer = CrossTrainer(plan.config)
        result = trainer.fit(data)
        pseudo: dict[str, int] = {}
        for row in result.history:
            for s, count in row.get("pseudo_labels", {}).items():
                pseudo[s] = pseudo.get(s, 0) + int(count)
        run = RunScores(arm, world.seed, plan.config.seed, score_views(plan, trainer, world),
                        time.perf_counter() - start, pseudo)
        f1 = {s: float(METRIC_FUNCTIONS["macro_f1"](c.sum(0))) for s, c in run.confusions["published"].items()}
        say(f"  {arm}: {run.seconds:.1f} s; held-out macro F1 " + ", ".join(f"{s} {v:.3f}" for s, v in f1.items())
            + (f"; pseudo labels {sum(pseudo.values()):,}" if pseudo else ""))
        trained[key] = run
        runs.append(run)
    return runs


# -- summary ---------------------------------------------------------------------------
def _replicates(runs: Sequence[RunScores], view: str, label_set: str, metric: str,
                weights: dict[int, np.ndarray]) -> tuple[list[float], np.ndarray]:
    """Per-run point values and bootstrap replicates of the mean over runs."""
    fn = METRIC_FUNCTIONS[metric]
    points, reps = [], []
    for run in runs:
        cm = run.confusions[view][label_set]
        points.append(float(fn(cm.sum(0))))
        w = weights[run.world_seed]
        k = cm.shape[-1]
        flat = cm.reshape(cm.shape[0], k * k).astype(np.float64)
        reps.append(fn((w.astype(np.float64) @ flat).reshape(-1, k, k)))  # one BLAS product per run
    if not reps:
        return points, np.zeros(0)
    with warnings.catch_warnings():  # a resample without scored nuclei is NaN in every run
        warnings.simplefilter("ignore", RuntimeWarning)
        return points, np.nanmean(np.stack(reps), axis=0)


def summarise(runs: Sequence[RunScores], n_images: dict[int, int], label_sets: Sequence[str],
              draws: int = 2000, seed: int = 0, references: Sequence[str] = REFERENCES,
              endpoint: str = "macro_f1") -> dict[str, Any]:
    """Means, clustered-bootstrap intervals and Holm-corrected paired differences.

    Parameters
    ----------
    runs
        Every arm's runs; an arm's runs are matched to another's by (world seed,
        training seed).
    n_images
        Per world seed, its number of images (clusters).
    label_sets
        The label sets, the family of the Holm correction.
    draws
        Bootstrap resamples per world.
    seed
        Seed of the resampling.
    references
        Arms every other arm is compared with (those present in ``runs``).
    endpoint
        The metric of the differences: ``"macro_f1"`` (the study's primary endpoint)
        or ``"accuracy"``.

    Returns
    -------
    dict
        ``{"arms": {arm: {set: {metric: {"mean", "ci", "per_seed"}}}}`` for the published
        view, ``"views"`` the same for every view, and ``"differences"``:
        ``{"<arm> - <ref>": {set: {"mean", "ci", "p", "p_holm"}}}`` (the endpoint of the
        published view; ``p_holm`` corrected across ``label_sets``).
    """
    if endpoint not in METRICS:
        raise InvalidArgumentError(f"summarise(endpoint={endpoint!r}): pass one of {', '.join(METRICS)}")
    rng = np.random.default_rng(seed)
    weights = {w: resample_weights(n, draws, rng) for w, n in sorted(n_images.items())}
    by_arm: dict[str, list[RunScores]] = {}
    for run in runs:
        by_arm.setdefault(run.arm, []).append(run)
    for arm_runs in by_arm.values():
        arm_runs.sort(key=lambda r: (r.world_seed, r.train_seed))
    views: dict[str, dict[str, Any]] = {}
    replicates: dict[tuple[str, str], np.ndarray] = {}
    points: dict[tuple[str, str], list[float]] = {}
    for view in VIEWS:
        table: dict[str, Any] = {}
        for arm, arm_runs in by_arm.items():
            table[arm] = {}
            for s in label_sets:
                table[arm][s] = {}
                for metric in METRICS:
                    per_run, reps = _replicates(arm_runs, view, s, metric, weights)
                    table[arm][s][metric] = {"mean": float(np.nanmean(per_run)), "ci": percentile_ci(reps),
                                             "per_seed": per_run}
                    if view == "published" and metric == endpoint:
                        replicates[arm, s] = reps
                        points[arm, s] = per_run
        views[view] = table
    differences: dict[str, Any] = {}
    for ref in references:
        if ref not in by_arm:
            continue
        for arm in by_arm:
            if arm == ref:
                continue
            if [(r.world_seed, r.train_seed) for r in by_arm[arm]] != [(r.world_seed, r.train_seed)
                                                                       for r in by_arm[ref]]:
                raise InvalidArgumentError(f"{arm} and {ref} were not run on the same worlds and seeds; cannot pair "
                                           "them: run every arm on every (world seed, training seed)")
            rows = {}
            for s in label_sets:
                delta = replicates[arm, s] - replicates[ref, s]
                per_run = np.asarray(points[arm, s]) - np.asarray(points[ref, s])
                rows[s] = {"mean": float(np.nanmean(per_run)), "ci": percentile_ci(delta), "p": bootstrap_p(delta)}
            for s, p in zip(label_sets, holm([rows[s]["p"] for s in label_sets]), strict=True):
                rows[s]["p_holm"] = p
            differences[f"{arm} - {ref}"] = rows
    return {"arms": views["published"], "views": views, "differences": differences}


def oracle_check(summary: dict[str, Any], metric: str = "macro_f1", oracle: str = "oracle") -> dict[str, Any]:
    """Where an arm's mean lies above the oracle's 95 % interval, per view, label set and arm.

    Compared like with like: in each view (published, model prediction, merged label)
    the oracle's score in that view. An empty ``violations`` list means the oracle is
    at or above every arm within its interval.
    """
    views = summary["views"]
    if oracle not in views["published"]:
        return {"metric": metric, "checked": False, "violations": []}
    violations = []
    for view, table in views.items():
        for arm, row in table.items():
            if arm == oracle:
                continue
            for s, entry in row.items():
                ceiling = table[oracle][s][metric]
                if entry[metric]["mean"] > ceiling["ci"][1]:
                    violations.append({"view": view, "arm": arm, "label_set": s, "arm_mean": entry[metric]["mean"],
                                       "oracle_mean": ceiling["mean"], "oracle_ci": ceiling["ci"]})
    return {"metric": metric, "checked": True, "violations": violations}


# -- markdown --------------------------------------------------------------------------
def _cell(entry: dict[str, Any]) -> str:
    lo, hi = entry["ci"]
    return f"{entry['mean']:.3f} [{lo:.3f}, {hi:.3f}]"


def _diff_cell(entry: dict[str, Any]) -> str:
    lo, hi = entry["ci"]
    return f"{entry['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}] p={entry['p_holm']:.3g}"


def render_markdown(results: dict[str, Any]) -> str:
    """The study's tables as markdown: published, model and merged scores, and differences."""
    config = results["config"]
    sets = list(config["label_sets"])
    head = "| arm | " + " | ".join(sets) + " |\n|---|" + "---|" * len(sets)
    lines = [f"# Method study: world `{config['world']}`", "",
             f"World seeds {config['world_seeds']}, training seeds {config['train_seeds']}; "
             f"{config['runs_per_arm']} runs per arm; {config['bootstrap_draws']} bootstrap draws per world, "
             "clustered by image. Scored: held-out images, nuclei their own dataset did not annotate in the set, "
             "true class in the set. Mean over runs [95 % CI].", "",
             "Best reachable accuracy (Bayes, per world seed): " + "; ".join(
                 f"seed {w}: " + ", ".join(f"{s} {v:.3f}" for s, v in b.items())
                 for w, b in config["bayes_accuracy"].items()), ""]
    titles = {"published": "What each arm publishes", "model": "Model prediction only (no tables)",
              "merged": "Merged label (tables where they decide, the model elsewhere) for every arm"}
    for view in VIEWS:
        for metric in METRICS:
            lines += [f"## {titles[view]}: {metric.replace('_', ' ')}", "", head]
            for arm, row in results["views"][view].items():
                publish = f" ({config['publish'][arm]})" if view == "published" else ""
                lines.append(f"| {arm}{publish} | " + " | ".join(_cell(row[s][metric]) for s in sets) + " |")
            lines.append("")
    lines += ["## Paired differences in macro F1 (published labels), Holm-corrected over the label sets", "",
              "| difference | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    for name, row in results["differences"].items():
        lines.append(f"| {name} | " + " | ".join(_diff_cell(row[s]) for s in sets) + " |")
    lines.append("")
    checks = [c for c in (results.get("oracle_check") or {}).values() if c["checked"]]
    if checks:
        lines += ["## Is the oracle the ceiling?", ""]
    for check in checks:
        metric = check["metric"].replace("_", " ")
        if not check["violations"]:
            lines.append(f"- {metric}: yes; in every view no arm's mean lies above the oracle's 95 % interval.")
        for v in check["violations"]:
            lo, hi = v["oracle_ci"]
            lines.append(f"- {metric}, {v['view']}: {v['arm']} {v['arm_mean']:.3f} > oracle {v['oracle_mean']:.3f} "
                         f"[{lo:.3f}, {hi:.3f}] on {v['label_set']}")
    if checks:
        lines.append("")
    return "\n".join(lines)
