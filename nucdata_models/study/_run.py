"""The method study's runs: worlds prepared once, arms trained and scored, the summary and its markdown.

* **Runs** (:func:`prepare_world`, :func:`run_arms`): one generated world per world
  seed, prepared once and shared by every arm and training seed; each arm
  (:func:`.arm_plan`) is trained and scored on the held-out images (split ``TEST``:
  no stage sees them). Arms with the same training (``own-only`` and ``tables-only``)
  share one model and are scored each on what it publishes.
* **Scores** (:func:`score_views`): per run and label set, tallies per image group (the
  group the split uses) and provenance, of every held-out nucleus that its own dataset
  did not annotate and whose truth is known, for the published label, the model
  prediction and the merged label; calibration bins of the published probability
  (calibrated as ``build-merged`` calibrates it, and before).
* **Summary** (:func:`summarise`): every metric of :data:`._stats.METRIC_SPECS` (the
  endpoint :data:`._stats.ENDPOINT` first) per arm and label set, mean over worlds and
  seeds with 95 % intervals from the hierarchical bootstrap (worlds, then seeds and
  image groups within each drawn world); the declared family of paired differences
  (:data:`.FAMILY`) on the endpoint with bootstrap p-values and equivalence tests,
  Holm-corrected over the whole family, and the verdict each may be given.

What an arm publishes is :attr:`.ArmPlan.publish`: the merged label
(:func:`.fill.fill_labels`: mapping tables where they decide, the model elsewhere) for
arms that publish through the tables, the model's prediction for arms that do not. Every
arm is also scored on its model prediction alone and on the merged label, so a reader
can separate the tables' contribution from the method's.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nucdata.errors import InvalidArgumentError
from nucdata.labels import MERGED_LABEL_SETS
from nucdata_models.data import AMBIGUOUS, MAPPED, NO_LABEL, TrainingData
from nucdata_models.fill import fill_labels, filled_nuclei, published_fields, scored_class
from nucdata_models.merge import ALL_DATASETS, TEST, grouped_split
from nucdata_models.metrics import calibration_tally
from nucdata_models.study._arms import DATA_VIEWS, FAMILY, ArmPlan, arm_plan
from nucdata_models.study._stats import (
    ALPHA,
    CALIBRATION_BINS,
    ENDPOINT,
    EQUIVALENCE_MARGIN,
    LEVELS,
    METRIC_SPECS,
    METRICS,
    N_PROVENANCE,
    bootstrap_p,
    cluster_confusions,
    hierarchical_resamples,
    holm,
    percentile_ci,
    resampled_mean,
    tost_p,
    verdict,
)
from nucdata_models.train import CrossTrainer, TrainConfig, pseudo_label_totals, unseen_probs

__all__ = ["VIEWS", "PreparedWorld", "RunScores", "family_sentences", "oracle_check", "prepare_world",
           "render_markdown", "run_arms", "score_views", "summarise"]

#: Scored views of every arm: what it publishes, its model prediction, its merged label.
VIEWS = ("published", "model", "merged")
#: Metrics reported beside the endpoint for the published label (each with an interval).
SECONDARY = ("ambiguous_accuracy", "exact_accuracy", "outside_rate_in_set", "outside_recall", "ece",
             "ece_uncalibrated", "ece_floor")


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
        Per nucleus, its image's id within the world.
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
    group, n_groups
        Per held-out nucleus (split ``TEST``), its image group's id among the world's
        held-out groups (the group the split uses: :attr:`.splits.GroupedSplit.image_groups`;
        -1 for every other nucleus, never scored), and the number of held-out groups: the
        bootstrap's clusters, so every draw holds as many held-out groups as the world.
        ``None``: the image.
    group_keys
        Per dataset, the key its images were grouped by.
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
    group: np.ndarray | None = None
    n_groups: int = 0
    group_keys: dict[str, str] = field(default_factory=dict)

    @property
    def clusters(self) -> tuple[np.ndarray, int]:
        """Per nucleus its bootstrap cluster, and their number (the image group, else the image)."""
        if self.group is None:
            return self.image, self.n_images
        return self.group, self.n_groups


def prepare_world(seed: int, preset: str, scale: float, crop: int, validation: float, test: float,
                  datasets: Sequence[str] | None = None, label_sets: Sequence[str] = MERGED_LABEL_SETS,
                  say: Callable[[str], None] = print, bayes_samples: int = 20_000) -> PreparedWorld:
    """Generate the world ``seed`` of ``preset``, prepare its datasets, split and cut crops.

    The datasets are generated into a temporary data home that is removed afterwards;
    the crop bank, labels, truth, image ids and image groups are kept in memory. The
    split's seed is the world's seed.
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
        images, group_of, ids, offset = [], [], {}, 0
        for member in members:
            per_nucleus = np.asarray(member.store.column("nuclei", "image"), np.int64)
            images.append(per_nucleus + offset)
            image_group = np.array([ids.setdefault(g, len(ids)) for g in groups.image_groups[member.name]],
                                   np.int64)
            group_of.append(image_group[per_nucleus] if image_group.size else np.zeros(0, np.int64))
            offset += member.store.n_images
        nuclei = {m.name: int(m.store.n_nuclei) for m in members}
    bayes = {s: world.bayes_accuracy(s, samples=bayes_samples) for s in data.names}
    # the bootstrap's clusters: the held-out groups only (numbered 0..H-1; -1 elsewhere, never scored)
    group_id = np.concatenate(group_of)
    held_out = groups.split == TEST
    held = np.unique(group_id[held_out])
    cluster = np.full(group_id.shape, -1, np.int64)
    cluster[held_out] = np.searchsorted(held, group_id[held_out])
    prepared = PreparedWorld(seed, preset, data, np.concatenate(images), offset, bayes, nuclei,
                             np.bincount(groups.split, minlength=4).tolist(), time.perf_counter() - start,
                             cluster, int(held.size), dict(groups.group_key))
    say(f"world {preset} seed {seed}: {len(data):,} nuclei in {offset} images, {held.size} held-out groups "
        f"(split train/validation/test/duplicate {prepared.split_counts}); prepared in {prepared.seconds:.1f} s")
    return prepared


@dataclass
class RunScores:
    """One arm trained once on one world with one training seed, scored on the held-out images.

    Attributes
    ----------
    arm, world_seed, train_seed
        The run.
    confusions
        ``[view][label_set]``: per image group and provenance the confusion of the
        scored nuclei, ``(G, N_PROVENANCE, K + 1, K + 1)`` counts (rows truth, the last
        class "outside"; :func:`score_views`).
    calibration, calibration_raw
        ``[label_set]``: calibration tallies of the published label and its probability,
        ``(G, CALIBRATION_BINS, 3)`` (:func:`nucdata_models.metrics.calibration_tally`),
        calibrated (:func:`nucdata_models.calibration.calibrated_fill`) and before.
    seconds
        Training and scoring time.
    pseudo_labels
        Per stage-C epoch and set: ``{"stage", "epoch", "label_set", "offered",
        "passed", "precision", ...}`` (:attr:`.train.TrainResult.pseudo_labels`).
    temperatures
        The calibration fitted for this run (:meth:`.calibration.Calibration.to_dict`:
        per pair its temperature, which pairs used their set's pooled one).
    transition
        The candidate-set likelihood's transition estimate at the end of training
        (:attr:`.train.TrainResult.transition`: per label set and source dataset its rows,
        matrix, counts and prior); empty for an arm without it.
    """

    arm: str
    world_seed: int
    train_seed: int
    confusions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    calibration: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0
    pseudo_labels: list[dict[str, Any]] = field(default_factory=list)
    calibration_raw: dict[str, np.ndarray] = field(default_factory=dict)
    temperatures: dict[str, Any] = field(default_factory=dict)
    transition: dict[str, Any] = field(default_factory=dict)


def score_views(plan: ArmPlan, trainer: CrossTrainer, world: PreparedWorld) -> RunScores:
    """Per-group tallies of the arm's published, model and merged labels on the scored nuclei.

    Scored: held-out nuclei (split ``TEST``) that their own dataset did not annotate in
    the set and whose truth is known (:func:`nucdata_models.fill.filled_nuclei`,
    ``"truth_known"``: a class of the set or outside it), tallied per image group and
    provenance, so that every metric (:data:`._stats.METRIC_SPECS`) selects its own
    nuclei from the tally. The merged label always uses the real data's tables (the
    oracle's too: its training labels are not an output). The probabilities are
    calibrated as ``build-merged`` calibrates them (:func:`.calibration.calibrated_fill`:
    fitted on the validation split, never on the held-out one), and ambiguous rows are
    resolved by the transition estimate as there (:meth:`.train.CrossTrainer.candidate_weights`); the calibration tally
    counts the published pair: pickle fields 2 and 3 (:func:`.fill.published_fields`)
    for an arm that publishes the merged label, the model's prediction and its
    probability for one that publishes its model's.

    Returns
    -------
    RunScores
        ``confusions``, ``calibration``, ``calibration_raw`` and ``temperatures``
        filled in (``arm`` the plan's, ``world_seed`` the world's, ``train_seed`` the
        plan's seed).
    """
    from nucdata_models.calibration import calibrated_fill

    data = world.data
    cluster, n_clusters = world.clusters
    predictions = trainer.predict(data.crops, modules=plan.modules)
    weights = trainer.candidate_weights(data)  # as build-merged resolves ambiguous rows
    unseen = unseen_probs(plan.config, DATA_VIEWS[plan.data](data), plan.modules)
    filled, fit = calibrated_fill(predictions, data, weights=weights, unseen=unseen)
    run = RunScores(plan.name, world.seed, plan.config.seed, {view: {} for view in VIEWS},
                    temperatures=fit.to_dict())
    for spec in data.label_sets:
        s = spec.name
        truth = data.truth[s]
        sel = (filled_nuclei(truth, data.provenance[s], "truth_known") & (data.split == TEST)).numpy()
        calibrated = filled[s]
        raw = fill_labels(predictions[s].probs, data.labels[s], data.candidates[s], data.provenance[s], spec.size,
                          weights=weights.get(s))
        labels = {"model": predictions[s].label, "merged": calibrated.label}
        labels["published"] = labels[plan.publish]
        true_class = scored_class(truth, spec.size).numpy()[sel]
        group = cluster[sel] * N_PROVENANCE + data.provenance[s].numpy().astype(np.int64)[sel]
        for view, label in labels.items():
            run.confusions[view][s] = cluster_confusions(
                true_class, scored_class(label, spec.size).numpy()[sel], group, n_clusters * N_PROVENANCE,
                spec.size + 1).reshape(n_clusters, N_PROVENANCE, spec.size + 1, spec.size + 1)
        for name, f in (("calibration", calibrated), ("calibration_raw", raw)):
            label, probability = (published_fields(f) if plan.publish == "merged"
                                  else (f.predicted, f.predicted_probability))
            right = scored_class(label, spec.size).numpy()[sel] == true_class
            getattr(run, name)[s] = calibration_tally(right, probability.double().numpy()[sel], CALIBRATION_BINS,
                                                      cluster[sel], n_clusters)
    return run


def _pseudo_labels(result: Any) -> list[dict[str, Any]]:
    """The per-epoch pseudo-label list of a fit (its ``pseudo_labels``, else from its history)."""
    listed = getattr(result, "pseudo_labels", None)
    if listed is not None:
        return [dict(row) for row in listed]
    rows = []
    for row in result.history:
        for s, count in row.get("pseudo_labels", {}).items():
            rows.append({"stage": row["stage"], "epoch": row["epoch"], "label_set": s, "offered": None,
                         "passed": int(count), "precision": None})
    return rows


def run_arms(world: PreparedWorld, arms: Sequence[str], base: TrainConfig,
             say: Callable[[str], None] = print) -> list[RunScores]:
    """Train and score every arm on one world with ``base``'s seed; identical trainings run once.

    Arms whose plans train the same model (:meth:`.ArmPlan.key`) share it, and each is
    scored on what it publishes.
    """
    trained: dict[str, tuple[CrossTrainer, Any, float, str]] = {}
    runs = []
    for arm in arms:
        plan = arm_plan(arm, base)
        key = plan.key()
        if key in trained:
            trainer, result, train_seconds, first = trained[key]
            say(f"  {arm}: same training as {first}; its model is reused")
        else:
            start = time.perf_counter()
            trainer = CrossTrainer(plan.config)
            result = trainer.fit(DATA_VIEWS[plan.data](world.data))
            train_seconds = time.perf_counter() - start
            trained[key] = (trainer, result, train_seconds, arm)
        pseudo = _pseudo_labels(result)
        start = time.perf_counter()
        run = score_views(plan, trainer, world)
        run.seconds = train_seconds + time.perf_counter() - start
        run.pseudo_labels = [dict(row) for row in pseudo]
        run.transition = dict(getattr(result, "transition", None) or {})
        f1 = {s: float(ENDPOINT(c.sum(0))) for s, c in run.confusions["published"].items()}
        passed = sum(int(r.get("passed") or 0) for r in pseudo)
        say(f"  {arm}: {run.seconds:.1f} s; held-out endpoint macro F1 "
            + ", ".join(f"{s} {v:.3f}" for s, v in f1.items()) + (f"; pseudo labels {passed:,}" if pseudo else ""))
        runs.append(run)
    return runs


# -- summary ---------------------------------------------------------------------------
def _entry(point: float, per_run: dict[tuple[int, int], float], reps: np.ndarray) -> dict[str, Any]:
    return {"mean": point, "ci": percentile_ci(reps), "per_seed": [per_run[k] for k in sorted(per_run)]}


def summarise(runs: Sequence[RunScores], n_groups: dict[int, int], label_sets: Sequence[str],
              draws: int = 2000, seed: int = 0, family: Sequence[tuple[str, str]] = FAMILY,
              levels: Sequence[str] = LEVELS, margin: float = EQUIVALENCE_MARGIN,
              endpoint: str = "macro_f1") -> dict[str, Any]:
    """Means, hierarchical-bootstrap intervals, and the declared family of paired differences.

    Parameters
    ----------
    runs
        Every arm's runs; an arm's runs are matched to another's by (world seed,
        training seed).
    n_groups
        Per world seed, its number of image groups (the bootstrap's clusters).
    label_sets
        The label sets (every comparison is tested on each).
    draws
        Bootstrap resamples (:func:`._stats.hierarchical_resamples`).
    seed
        Seed of the resampling.
    family
        The declared comparisons ``(arm, reference)``; those whose two arms both ran
        are tested, on every label set, and Holm's correction runs over all of them.
    levels
        The bootstrap's levels (:data:`._stats.LEVELS`; ``("group",)`` for the
        images-only bootstrap).
    margin
        The equivalence margin of the TOST.
    endpoint
        The metric of the differences (``"macro_f1"``, the primary endpoint).

    Returns
    -------
    dict
        ``"arms"``: per arm and set, ``macro_f1`` and ``accuracy`` (``{"mean", "ci",
        "per_seed"}``), ``ece``, ``outside_rate_in_set`` and ``outside_recall`` (means),
        ``ambiguous`` and ``exact`` (``{"accuracy", "count"}``), ``secondary`` (the
        same with intervals) and ``classes`` (support of each class in the endpoint's
        nuclei, summed over worlds), and per arm ``pseudo_labels``; ``"views"`` the two
        metrics of every view; ``"differences"``: ``{"<arm> - <ref>": {set: {"mean",
        "ci", "p", "p_holm", "p_tost", "p_tost_holm", "verdict", "ci_images_only"}}}`` (the
        last: the interval of an images-only bootstrap, for comparison); ``"family"`` and
        ``"bootstrap"``: what was tested and how it was resampled.
    """
    if endpoint not in METRIC_SPECS:
        raise InvalidArgumentError(f"summarise(endpoint={endpoint!r}): pass one of {', '.join(METRIC_SPECS)}")
    by_arm: dict[str, dict[tuple[int, int], RunScores]] = {}
    for run in runs:
        by_arm.setdefault(run.arm, {})[run.world_seed, run.train_seed] = run
    keys = {arm: sorted(r) for arm, r in by_arm.items()}
    design: dict[int, tuple[list[int], int]] = {}
    for arm_keys in keys.values():
        for w, t in arm_keys:
            if w not in n_groups:
                raise InvalidArgumentError(f"world {w} has runs but no group count; pass n_groups[{w}]")
            seeds = design.setdefault(w, ([], n_groups[w]))[0]
            if t not in seeds:
                seeds.append(t)
    for arm, arm_keys in keys.items():
        if arm_keys != sorted((w, t) for w, (ts, _) in design.items() for t in ts):
            raise InvalidArgumentError(f"{arm} was not run on every (world seed, training seed) of the study, so it "
                                       "cannot be paired with the others: run every arm on every pair")
    resamples = hierarchical_resamples(design, draws, seed, levels)

    def tallies(arm: str, view: str, s: str, kind: str) -> dict[tuple[int, int], np.ndarray]:
        if kind in ("calibration", "calibration_raw"):  # a run without bins has no ECE
            return {k: getattr(r, kind).get(s, np.zeros((n_groups[k[0]], CALIBRATION_BINS, 3)))
                    for k, r in by_arm[arm].items()}
        return {k: r.confusions[view][s] for k, r in by_arm[arm].items()}

    replicates: dict[tuple[str, str], np.ndarray] = {}
    points: dict[tuple[str, str], float] = {}
    views: dict[str, dict[str, Any]] = {view: {} for view in VIEWS}
    arms_out: dict[str, Any] = {}
    for arm in by_arm:
        for view in VIEWS:
            views[view][arm] = {}
            for s in label_sets:
                views[view][arm][s] = {}
                for metric in METRICS:
                    spec = METRIC_SPECS[metric]
                    point, per_run, reps = resampled_mean(tallies(arm, view, s, spec.tally), spec, resamples)
                    views[view][arm][s][metric] = _entry(point, per_run, reps)
                    if view == "published" and metric == endpoint:
                        replicates[arm, s], points[arm, s] = reps, point
        arms_out[arm] = {}
        for s in label_sets:
            row = dict(views["published"][arm][s])
            secondary = {}
            for metric in SECONDARY:
                spec = METRIC_SPECS[metric]
                secondary[metric] = _entry(*resampled_mean(tallies(arm, "published", s, spec.tally), spec,
                                                           resamples))
            if endpoint not in row:
                spec = METRIC_SPECS[endpoint]
                point, _, reps = resampled_mean(tallies(arm, "published", s, spec.tally), spec, resamples)
                replicates[arm, s], points[arm, s] = reps, point
            first = {w: by_arm[arm][w, design[w][0][0]].confusions["published"][s].sum(0) for w in design}
            counts = {name: sum(int(cm[code].sum()) for cm in first.values())
                      for name, code in (("ambiguous", AMBIGUOUS), ("exact", MAPPED))}
            endpoint_rows = [cm[[NO_LABEL, AMBIGUOUS]].sum(0)[:-1].sum(1) for cm in first.values()]
            row.update({
                "ece": secondary["ece"]["mean"],
                "ece_floor": secondary["ece_floor"]["mean"],
                "ambiguous": {"accuracy": secondary["ambiguous_accuracy"]["mean"], "count": counts["ambiguous"]},
                "exact": {"accuracy": secondary["exact_accuracy"]["mean"], "count": counts["exact"]},
                "outside_rate_in_set": secondary["outside_rate_in_set"]["mean"],
                "outside_recall": secondary["outside_recall"]["mean"],
                "classes": [int(v) for v in np.sum(endpoint_rows, 0)],
                "secondary": secondary,
            })
            arms_out[arm][s] = row
        arms_out[arm]["pseudo_labels"] = [{**entry, "world_seed": w, "train_seed": t}
                                          for (w, t), r in sorted(by_arm[arm].items()) for entry in r.pseudo_labels]
    tested = [(a, r) for a, r in family if a in by_arm and r in by_arm]
    # the same differences under the images-only bootstrap (worlds and seeds fixed), for comparison
    flat = hierarchical_resamples(design, draws, seed, ("group",))
    spec = METRIC_SPECS[endpoint]
    flat_reps = {(arm, s): resampled_mean(tallies(arm, "published", s, spec.tally), spec, flat)[2]
                 for arm in {x for pair in tested for x in pair} for s in label_sets}
    differences: dict[str, Any] = {}
    for a, r in tested:
        differences[f"{a} - {r}"] = {}
        for s in label_sets:
            delta = replicates[a, s] - replicates[r, s]
            differences[f"{a} - {r}"][s] = {"mean": points[a, s] - points[r, s], "ci": percentile_ci(delta),
                                            "p": bootstrap_p(delta), "p_tost": tost_p(delta, margin),
                                            "ci_images_only": percentile_ci(flat_reps[a, s] - flat_reps[r, s])}
    cells = [(name, s) for name in differences for s in label_sets]
    for column in ("p", "p_tost"):
        for (name, s), p in zip(cells, holm([differences[name][s][column] for name, s in cells]), strict=True):
            differences[name][s][f"{column}_holm"] = p
    for name, s in cells:
        differences[name][s]["verdict"] = verdict(differences[name][s])
    return {
        "arms": arms_out, "views": views, "differences": differences,
        "family": {"declared": [f"{a} - {r}" for a, r in family], "tested": list(differences),
                   "not_run": [f"{a} - {r}" for a, r in family if (a, r) not in tested],
                   "label_sets": list(label_sets), "tests": len(cells), "endpoint": endpoint,
                   "correction": "Holm over every tested comparison and label set (the differences and, "
                                 "separately, the equivalence tests)",
                   "alpha": ALPHA, "equivalence_margin": margin},
        "bootstrap": {"levels": list(levels), "draws": draws, "seed": seed,
                      "groups": {str(w): n for w, (_, n) in design.items()},
                      "seeds": {str(w): list(ts) for w, (ts, _) in design.items()}},
    }


_PHRASES = {"gain": "a gain", "loss": "a loss", "equivalent": "equivalent", "inconclusive": "inconclusive"}


def family_sentences(results: dict[str, Any]) -> list[str]:
    """One sentence per tested comparison and label set, generated from its numbers and verdict.

    A difference is called a gain or a loss only when Holm-significant, "equivalent
    within the margin" only when the Holm-corrected TOST passes, and inconclusive
    otherwise (:func:`._stats.verdict`).
    """
    family = results["family"]
    margin = family["equivalence_margin"]
    out = []
    for name, rows in results["differences"].items():
        a, r = name.split(" - ")
        for s in family["label_sets"]:
            row = rows[s]
            lo, hi = row["ci"]
            numbers = (f"{row['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]; Holm p = {row['p_holm']:.3g}, "
                       f"TOST Holm p = {row['p_tost_holm']:.3g}")
            v = row["verdict"]
            if v in ("gain", "loss"):
                text = f"`{a}` shows {_PHRASES[v]} over `{r}` on {s}"
                if abs(row["mean"]) < margin:
                    text += f", smaller than the {margin} margin"
            elif v == "equivalent":
                text = f"`{a}` and `{r}` are equivalent within {margin} on {s}"
            else:
                text = (f"`{a}` vs `{r}` on {s} is inconclusive: neither a difference nor equivalence within "
                        f"{margin} is shown")
            out.append(f"{text} ({numbers}).")
    return out


def config_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` strings (a study script's ``--set``) as ``TrainConfig`` overrides.

    VALUE is parsed as JSON (``0.5``, ``true``, ``{"A": 2}``), else kept as a string.

    Raises
    ------
    InvalidArgumentError
        An item without ``=`` or whose FIELD is not a ``TrainConfig`` field (the
        message lists the fields).
    """
    known = {f.name for f in fields(TrainConfig)}
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in known:
            raise InvalidArgumentError(f"--set {item!r}: expected FIELD=VALUE with FIELD a TrainConfig field "
                                       f"({', '.join(sorted(known))})")
        try:
            out[name] = json.loads(text)
        except json.JSONDecodeError:
            out[name] = text
    return out


def study_config(arms: Sequence[str], plans: Mapping[str, Any], worlds: Mapping[int, Any], runs: Sequence[RunScores],
                 label_sets: Sequence[str], epochs: Mapping[str, int], world_seeds: Sequence[int],
                 train_seeds: Sequence[int], world_fields: Callable[[Any], dict[str, Any]] | None = None
                 ) -> dict[str, Any]:
    """What every study's ``results.json`` ``config`` holds, whatever its worlds (generated or real).

    The caller adds what is its own (world kind, sizes, data paths) and ``seconds``.

    Parameters
    ----------
    arms, plans
        The arms run and their :func:`._arms.arm_plan` (for epochs, what each publishes, its modules).
    worlds
        Per world (or partition) seed, the prepared world (:class:`PreparedWorld` or a real one).
    runs
        Every run's scores (for the endpoint's nuclei per world).
    label_sets, epochs, world_seeds, train_seeds
        As the study ran them; ``epochs`` the ``nucdata`` arm's.
    world_fields
        Extra per-world entries of ``worlds`` (a real world's ``design``).
    """
    import platform

    import torch

    from nucdata_models.study._arms import FAMILY
    from nucdata_models.study._stats import ENDPOINT, METRIC_SPECS

    return {
        "arms": list(arms), "label_sets": list(label_sets), "epochs_nucdata": dict(epochs),
        "budget": "equal optimisation steps: every arm runs E = A+B+C epochs of the nucdata arm over the same "
                  "training pool and batch size",
        "epochs": {arm: plan.config.epochs for arm, plan in plans.items()},
        "publish": {arm: plan.publish for arm, plan in plans.items()},
        "predict_modules": {arm: plan.modules for arm, plan in plans.items()},
        "runs_per_arm": len(world_seeds) * len(train_seeds),
        "per_seed_order": sorted([w, t] for w in world_seeds for t in train_seeds),
        "references": sorted({r for a, r in FAMILY if a in arms and r in arms}),
        "family": [f"{a} - {r}" for a, r in FAMILY],
        "endpoint": ENDPOINT.describe(),
        "metrics": {name: spec.describe() for name, spec in METRIC_SPECS.items()},
        "ece_probability": "the published probability, calibrated as build-merged calibrates it "
                           "(nucdata_models.calibration.calibrated_fill: temperatures per (dataset, label set) fitted "
                           "on the validation split); ece_uncalibrated: before calibration",
        "group_keys": {str(w): p.group_keys for w, p in worlds.items()},
        "worlds": {str(w): {"nuclei": p.nuclei, "images": p.n_images, "groups": p.clusters[1],
                            "split_counts": p.split_counts, "prepare_seconds": round(p.seconds, 1),
                            **(world_fields(p) if world_fields else {})} for w, p in worlds.items()},
        "scored_nuclei": {str(w): {s: int(endpoint_count(next(r for r in runs if r.world_seed == w)
                                                          .confusions["published"][s])) for s in label_sets}
                          for w in worlds},
        "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
    }


def run_records(runs: Sequence[RunScores]) -> list[dict[str, Any]]:
    """``results.json``'s ``runs``: per run its arm, seeds, time, stage C's pseudo labels, calibration and transition estimate."""
    return [{"arm": r.arm, "world_seed": r.world_seed, "train_seed": r.train_seed, "seconds": round(r.seconds, 1),
             "pseudo_labels": r.pseudo_labels, "calibration": r.temperatures, "transition": r.transition}
            for r in runs]


def endpoint_count(tally: np.ndarray) -> int:
    """How many nuclei the endpoint counts in one run's published tally (``(G, P, K + 1, K + 1)``).

    The endpoint's nuclei are those of provenance ``predicted`` (no label) or
    ``ambiguous`` whose true class lies in the set (the last true row is outside).
    """
    summed = tally.sum(0)
    return int((summed[NO_LABEL] + summed[AMBIGUOUS])[:-1].sum())


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


def _ratio(x: float, y: float) -> str:
    return f"{x / y:.2f}" if np.isfinite(x) and np.isfinite(y) and y > 0 else "-"


def _calibration_lines(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """How much of each arm's published probability was calibrated at all (``runs[].calibration.uses``)."""
    per_arm: dict[str, dict[str, int]] = {}
    for run in runs:
        uses = (run.get("calibration") or {}).get("uses") or {}
        tally = per_arm.setdefault(run["arm"], {"runs": 0})
        tally["runs"] += 1
        for how in uses.values():
            tally[how] = tally.get(how, 0) + 1
    if not per_arm:
        return []
    lines = ["## Calibration: which temperature each (dataset, label set) pair got", "",
             "Summed over runs: `pair` its own temperature (at least the minimum of exact-row validation "
             "nuclei), `unseen` the set's held-out-dataset temperature (a pair with no label information, "
             "with `unseen_calibration=\"held-out-dataset\"`), `pooled` the set's (only where it softens: a pooled "
             "sharpening counts as 1), `none` uncalibrated (too few nuclei).", "",
             "| arm | runs | pair | unseen | pooled | none |", "|---|---|---|---|---|---|"]
    for arm, tally in per_arm.items():
        lines.append(f"| {arm} | {tally['runs']} | {tally.get('pair', 0)} | {tally.get('unseen', 0)} | "
                     f"{tally.get('pooled', 0)} | {tally.get('none', 0)} |")
    return [*lines, ""]


def render_markdown(results: dict[str, Any]) -> str:
    """The study's write-up tables as markdown, every sentence generated from the numbers.

    The design (endpoint, bootstrap, the declared family, Holm, TOST), per label set the
    endpoint and the secondary metrics of every arm, the family's paired differences and
    their verdicts, stage C's pseudo labels, the model-only and merged views, and the
    oracle check.
    """
    config = results["config"]
    sets = list(config["label_sets"])
    family, boot = results["family"], results["bootstrap"]
    head = "| arm | " + " | ".join(sets) + " |\n|---|" + "---|" * len(sets)
    lines = [f"# Method study: world `{config['world']}`", "",
             f"World seeds {config['world_seeds']}, training seeds {config['train_seeds']}; "
             f"{config['runs_per_arm']} runs per arm. Mean over worlds and seeds [95 % CI].", "",
             "## Design", "",
             f"- **Endpoint**: {config['endpoint']}.",
             f"- **Bootstrap**: hierarchical, {boot['draws']} draws, levels {' > '.join(boot['levels'])}: world seeds "
             "drawn with replacement, then within each drawn world its training seeds and its image groups "
             "(the split's groups) with replacement; every arm sees the same draws. Groups per world: "
             + ", ".join(f"{w}: {n}" for w, n in boot["groups"].items()) + ".",
             f"- **Declared family** ({family['tests']} tests: {len(family['tested'])} comparisons x "
             f"{len(family['label_sets'])} label sets, Holm over all of them): "
             + ", ".join(f"`{c}`" for c in family["tested"])
             + (f"; declared but not run: {', '.join(f'`{c}`' for c in family['not_run'])}" if family["not_run"]
                else "") + ".",
             f"- **Tests**: two-sided bootstrap p-value of a zero difference; equivalence by two one-sided tests "
             f"(TOST) with margin {family['equivalence_margin']}; each Holm-corrected over the family, at "
             f"alpha = {family['alpha']}. A difference is a gain or loss only when Holm-significant, equivalent "
             "only when the Holm-corrected TOST passes, else inconclusive.", ""]
    if config.get("bayes_accuracy"):
        lines += ["Best reachable accuracy (Bayes, per world seed): " + "; ".join(
            f"seed {w}: " + ", ".join(f"{s} {v:.3f}" for s, v in b.items())
            for w, b in config["bayes_accuracy"].items()), ""]
    metrics = config.get("metrics", {})
    if metrics:
        lines += ["Metrics:", ""] + [f"- `{name}`: {text}." for name, text in metrics.items()] + [""]
    lines += ["## Per label set: what each arm publishes", ""]
    for s in sets:
        first = next(iter(results["arms"].values()))[s]
        support = first.get("classes", [])
        lines += [f"### {s}", "",
                  f"Endpoint nuclei per class (summed over worlds): {support} "
                  f"({sum(1 for c in support if c)} of {len(support)} classes present).", "",
                  "| arm | macro F1 (endpoint) | accuracy | ambiguous accuracy (n) | exact accuracy (n) | "
                  "outside rate in set | outside recall | ECE | ECE floor |", "|---|---|---|---|---|---|---|---|---|"]
        for arm, row in results["arms"].items():
            r = row[s]
            sec = r["secondary"]
            publish = config.get("publish", {}).get(arm, "")
            lines.append(f"| {arm} ({publish}) | {_cell(r['macro_f1'])} | {_cell(r['accuracy'])} | "
                         f"{_cell(sec['ambiguous_accuracy'])} ({r['ambiguous']['count']}) | "
                         f"{_cell(sec['exact_accuracy'])} ({r['exact']['count']}) | "
                         f"{_cell(sec['outside_rate_in_set'])} | {_cell(sec['outside_recall'])} | "
                         f"{_cell(sec['ece'])} | {_cell(sec['ece_floor'])} |")
        lines.append("")
    lines += ["## The declared family: paired differences in the endpoint", "",
              "| difference | set | mean [95 % CI] | images-only CI | p | Holm p | TOST p | TOST Holm p | verdict |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, rows in results["differences"].items():
        for s in sets:
            d = rows[s]
            lo, hi = d["ci"]
            flat = d.get("ci_images_only", [float("nan")] * 2)
            lines.append(f"| {name} | {s} | {d['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}] | [{flat[0]:+.3f}, {flat[1]:+.3f}] "
                         f"| {d['p']:.3g} | {d['p_holm']:.3g} | {d['p_tost']:.3g} | {d['p_tost_holm']:.3g} | "
                         f"{d['verdict']} |")
    lines += ["", "What the family shows (each sentence generated from the row above it):", ""]
    lines += [f"- {sentence}" for sentence in family_sentences(results)] + [""]
    lines += ["## Stage C: pseudo labels", "",
              "Summed over runs and epochs; precision against the truth of the training nuclei, weighted by the "
              "passed counts (- where the trainer does not report it).", "",
              "| arm | " + " | ".join(f"{s} offered / passed / precision" for s in sets) + " |",
              "|---|" + "---|" * len(sets)]
    for arm, row in results["arms"].items():
        rows = row.get("pseudo_labels", [])
        if not rows:
            continue
        cells = []
        for s in sets:
            totals = pseudo_label_totals(rows, s)
            offered, passed, precision = totals["offered"], totals["passed"], totals["precision"]
            cells.append(f"{'-' if offered is None else f'{offered:,}'} / {passed:,} / "
                         f"{'-' if precision is None else f'{precision:.3f}'}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += _calibration_lines(results.get("runs", []))
    if "oracle" in results["arms"] and "nucdata" in results["arms"]:
        lines += ["## `nucdata` against the oracle (published label)", "",
                  "| set | ambiguous accuracy: nucdata / oracle (ratio) | outside rate in set: nucdata, oracle | "
                  "outside recall: nucdata / oracle (ratio) | ECE: nucdata, oracle |", "|---|---|---|---|---|"]
        for s in sets:
            n, o = results["arms"]["nucdata"][s], results["arms"]["oracle"][s]
            lines.append(f"| {s} | {n['ambiguous']['accuracy']:.3f} / {o['ambiguous']['accuracy']:.3f} "
                         f"({_ratio(n['ambiguous']['accuracy'], o['ambiguous']['accuracy'])}) | "
                         f"{n['outside_rate_in_set']:.3f}, {o['outside_rate_in_set']:.3f} | "
                         f"{n['outside_recall']:.3f} / {o['outside_recall']:.3f} "
                         f"({_ratio(n['outside_recall'], o['outside_recall'])}) | {n['ece']:.3f}, {o['ece']:.3f} |")
        lines.append("")
    titles = {"model": "Model prediction only (no tables)",
              "merged": "Merged label (tables where they decide, the model elsewhere) for every arm"}
    for view, title in titles.items():
        lines += [f"## {title}: macro F1 (endpoint nuclei)", "", head]
        for arm, row in results["views"][view].items():
            lines.append(f"| {arm} | " + " | ".join(_cell(row[s]["macro_f1"]) for s in sets) + " |")
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
