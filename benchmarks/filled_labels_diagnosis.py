"""Diagnosis of the filled labels (issue 20): ambiguous rows, the outside output, stain swaps, stage C.

For each world seed of a preset (the method study's quick settings by default) the
world is prepared once (:func:`nucdata_models.study.prepare_world`, cached under
``--cache``; ``--full``: the study's full sizes), then each arm is trained and scored on the held-out images (split
``TEST``) with:

* ``ambiguous``: accuracy of the published label of held-out nuclei whose row is
  ambiguous and whose truth is known (an outside truth counts as right when outside
  is published), and their count;
* ``outside_rate_in_set``: share of held-out nuclei whose true class is in the set,
  not annotated in the set by their own dataset, published as outside;
* ``outside_recall``: share of held-out nuclei whose true class is outside the set
  published as outside;
* ``macro_f1`` / ``accuracy``: the study's endpoint (filled nuclei, class in set), with
  ``per_class_recall`` and ``published_per_class`` (how many endpoint nuclei are
  published as each class, outside last);
* ``stain_swap``: per labelled dataset, the share of its own held-out nuclei that the
  model predicts as outside in its own set after recolouring its crops with another
  dataset's stain (:func:`nucdata_models.train.stain_swap_outside_rate`, the world's
  additive RGB stain difference);
* ``pseudo_labels``: the rows of ``TrainResult.pseudo_labels`` (stage C);
* ``prior``: the endpoint (macro F1 of the published label) as trained and after moving
  the model's class prior to the set's own annotated one or to a uniform one
  (:func:`prior_diagnosis`): how much of a difference between arms is the class prior
  their training data gave the head;
* ``calibration`` (arms that publish the merged label): the ECE of the published
  probability as ``build-merged`` calibrates it (:func:`nucdata_models.calibration.calibrated_fill`,
  pickle fields 2 and 3) on held-out nuclei not annotated in the set whose truth is known,
  the mean confidence and accuracy per provenance, and ``ceiling``: the lowest ECE that
  any single temperature for the set reaches on those same nuclei (a grid of
  :data:`CEILING_GRID` temperatures chosen on the scored nuclei themselves, which no
  method has), with that temperature, and ``pair_ceiling``: the same with one temperature
  per (dataset, set) pair, each the best for its pair's own scored nuclei (the family
  :mod:`nucdata_models.calibration` fits, with perfect fits); ``group_ceiling``: one
  temperature per provenance of the published label (predicted, mapped,
  ambiguous-resolved, ...), and ``pair_group_ceiling``: one per (dataset, provenance); each
  with its temperatures. Chosen on few nuclei, a key's best temperature also fits their
  noise, so a fine family's ceiling can fall below ``ece_floor``. A ceiling above a target
  means no calibration of that family can meet it: the groups within are off in
  different directions. ``ece_floor``: the ECE that perfectly calibrated probabilities
  would show by chance on the same nuclei at the same confidences
  (:func:`nucdata_models.metrics.ece_floor_from_tally`, the binned estimator's upward
  bias); a target below it cannot be shown at that count, by any calibration.

Arms: ``own-only``, ``nucdata``, ``oracle`` (the study's), and ``nucdata:key=value,...``
for the nucdata arm with some :class:`~nucdata_models.TrainConfig` fields changed
(``nucdata:candidate_likelihood=uniform``). Tune only on world seeds 1-20.

    python benchmarks/filled_labels_diagnosis.py --world-seeds 1 2 --arms own-only nucdata oracle --out /tmp/diag
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nucdata.labels import MERGED_LABEL_SETS, OWN_LABEL_SET
from nucdata_models import TrainConfig
from nucdata_models.calibration import calibrated_fill
from nucdata_models.data import AMBIGUOUS, ANNOTATED, NO_LABEL
from nucdata_models.fill import (
    PROVENANCE,
    fill_labels,
    filled_nuclei,
    published_fields,
    scored_class,
)
from nucdata_models.merge import TEST, TRAIN
from nucdata_models.metrics import (
    calibration_tally,
    classification_metrics,
    ece_floor_from_tally,
    ece_from_tally,
    expected_calibration_error,
)
from nucdata_models.study import DATA_VIEWS, arm_plan, prepare_world
from nucdata_models.train import CrossTrainer, stain_swap_outside_rate, unseen_probs

sys.path.insert(0, str(Path(__file__).parent))
from method_study import FULL, QUICK  # noqa: E402  (the study's sizes: one home)

#: Temperatures tried for the calibration ceiling: 0.2 to 5, evenly in log T.
CEILING_GRID = np.exp(np.linspace(np.log(0.2), np.log(5.0), 61))
#: (dataset, the dataset whose stain it is recoloured with)
SWAPS = (("monusac", "consep"), ("pannuke", "consep"), ("consep", "monusac"), ("nucls", "consep"))


def _value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def plan_of(arm: str, base: TrainConfig):
    name, _, rest = arm.partition(":")
    plan = arm_plan(name, base)
    if rest:
        changes = dict(item.split("=", 1) for item in rest.split(","))
        plan = type(plan)(plan.config.replace(**{k: _value(v) for k, v in changes.items()}), plan.modules,
                          plan.publish, plan.data, arm)
    return plan


def world_data(seed: int, preset: str, cache: Path | None, sizes=QUICK):
    tag = "" if sizes is QUICK else f"-s{sizes['scale']:g}-c{sizes['crop']}"
    path = cache / f"{preset}-{seed}{tag}.pt" if cache else None
    if path is not None and path.is_file():
        return torch.load(path, weights_only=False)
    world = prepare_world(seed, preset, sizes["scale"], sizes["crop"], 0.1, 0.3, None, MERGED_LABEL_SETS,
                          say=lambda m: print(m, flush=True), bayes_samples=2000)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(world, path)
    return world


def score(plan, trainer: CrossTrainer, world, result, stains) -> dict[str, Any]:
    data = world.data
    preds = trainer.predict(data.crops, modules=plan.modules)
    test = (data.split == TEST)
    out: dict[str, Any] = {"sets": {}}
    for spec in data.label_sets:
        s = spec.name
        truth, prov = data.truth[s], data.provenance[s]
        merged = fill_labels(preds[s].probs, data.labels[s], data.candidates[s], prov, spec.size)
        label = merged.label if plan.publish == "merged" else preds[s].label
        amb = test & (prov == AMBIGUOUS) & (truth >= -2)
        in_set = test & (truth >= 0) & (prov != ANNOTATED)
        outside = test & (truth == -2)
        sel = (filled_nuclei(truth, prov, "class_in_set") & test).numpy()
        m = classification_metrics(truth.numpy()[sel], scored_class(label, spec.size).numpy()[sel], spec.size + 1,
                                   None, spec.size)
        out["sets"][s] = {
            "ambiguous": {"accuracy": float((label[amb] == truth[amb]).float().mean()) if amb.any() else None,
                          "count": int(amb.sum())},
            "outside_rate_in_set": float((label[in_set] == -2).float().mean()) if in_set.any() else None,
            "outside_recall": float((label[outside] == -2).float().mean()) if outside.any() else None,
            "macro_f1": m["macro_f1"], "accuracy": m["accuracy"], "count": m["count"],
            # the endpoint per class: recall, and how many of its nuclei name each class (outside last)
            "per_class_recall": [round(float(x), 3) for x in m["per_class_recall"][:spec.size]],
            "published_per_class": [int(x) for x in np.asarray(m["confusion"]).sum(0)],
        }
    out["stain_swap"] = {}
    if trainer.config.outside_head:
        for own, other in SWAPS:
            if own not in data.dataset_names or other not in stains:
                continue
            shift = np.asarray(stains[other]) - np.asarray(stains[own])
            out["stain_swap"][f"{own}<-{other}"] = stain_swap_outside_rate(
                trainer, data, own, OWN_LABEL_SET[own], shift, split=TEST, modules=plan.modules)
            out["stain_swap"][f"{own}<-{own}"] = stain_swap_outside_rate(
                trainer, data, own, OWN_LABEL_SET[own], np.zeros(3), split=TEST, modules=plan.modules)
    out["prior"] = prior_diagnosis(plan, preds, trainer, data)
    if plan.publish == "merged":
        out["calibration"] = calibration_diagnosis(preds, trainer, data, plan)
    out["pseudo_labels"] = getattr(result, "pseudo_labels", [])
    out["transition"] = getattr(result, "transition", {})
    return out


#: The class priors :func:`prior_diagnosis` publishes under, besides the model's own.
PRIORS = ("own", "uniform", "em")
#: EM iterations and the fewest nuclei for the ``em`` prior of :func:`target_prior`.
EM_STEPS, EM_MIN_NUCLEI = 200, 20


def target_prior(probs: torch.Tensor, train_prior: torch.Tensor, steps: int = EM_STEPS) -> torch.Tensor:
    """The class prior of unlabelled nuclei by EM on a model's posteriors (Saerens et al. 2002).

    ``probs`` ``(N, K)`` are posteriors under ``train_prior`` ``(K,)``; each step moves them
    to the current prior estimate (``p pi / train_prior``, renormalised) and takes the
    mean as the next. No truth is used.
    """
    prior = train_prior.clone()
    ratio_base = probs / train_prior.clamp_min(1e-12)
    for _ in range(steps):
        q = ratio_base * prior
        q = q / q.sum(1, keepdim=True).clamp_min(1e-300)
        prior = q.mean(0)
    return prior


def prior_diagnosis(plan, preds, trainer: CrossTrainer, data) -> dict[str, Any]:
    """Per set: the endpoint as published, and as published after moving the model's class prior.

    The model's prior ``pi_train`` is its mean in-set posterior over the training nuclei
    that have any target in the set (its own annotations, exact, ambiguous or outside
    rows); its posterior is moved to a prior ``pi`` by ``p(c | x) pi(c) / pi_train(c)``
    (Saerens et al. 2002), the outside column unchanged, then published as the arm
    publishes (ambiguous rows resolved with the transition weights where the arm has
    them). ``own``: the class frequencies of the set's own annotated training nuclei
    (add-one), the prior an own-only model learns; ``uniform``: every class alike, which
    macro F1 rewards whatever the truth (a reading of the endpoint, not a method);
    ``em``: per dataset, the prior of its nuclei without any label information in the set
    (provenance ``none``), estimated by EM on their posteriors (:func:`target_prior`, the
    outside column included, from the model's training prior over every output), applied
    to those nuclei only. ``prior_distance``: total variation between ``pi_train`` and the
    own prior.
    """
    weights = trainer.candidate_weights(data) if plan.publish == "merged" else {}
    test, train = data.split == TEST, data.split == TRAIN
    out: dict[str, Any] = {}
    for spec in data.label_sets:
        s, k = spec.name, spec.size
        truth, prov = data.truth[s], data.provenance[s]
        probs = preds[s].probs.double()
        targeted = train & (prov != NO_LABEL)
        own = train & (prov == ANNOTATED) & (data.labels[s] >= 0)
        if not targeted.any() or not own.any():
            continue
        full_prior = probs[targeted].mean(0)  # every output, outside included
        model_prior = full_prior[:k] / full_prior[:k].sum()
        own_prior = torch.bincount(data.labels[s][own], minlength=k).double() + 1
        own_prior = own_prior / own_prior.sum()
        sel = (filled_nuclei(truth, prov, "class_in_set") & test).numpy()
        row: dict[str, Any] = {"prior_distance": round(float((model_prior - own_prior).abs().sum() / 2), 3)}

        def to_prior(target, k=k, model_prior=model_prior):
            def move(p):
                p = p.clone()
                p[:, :k] = p[:, :k] * (target / model_prior.clamp_min(1e-12))
                return p / p.sum(1, keepdim=True)
            return move

        def to_em_prior(p, prov=prov, full_prior=full_prior):
            p = p.clone()
            for dataset in range(len(data.dataset_names)):
                free = (data.dataset_index == dataset) & (prov == NO_LABEL)
                if int(free.sum()) >= EM_MIN_NUCLEI:
                    moved = p[free] * (target_prior(p[free], full_prior) / full_prior.clamp_min(1e-12))
                    p[free] = moved / moved.sum(1, keepdim=True)
            return p

        variants = {"as_trained": lambda p: p, "own": to_prior(own_prior),
                    "uniform": to_prior(torch.full((k,), 1.0 / k, dtype=torch.float64)), "em": to_em_prior}
        for name, to_variant in variants.items():
            p = to_variant(probs)
            merged = fill_labels(p.float(), data.labels[s], data.candidates[s], prov, k, weights=weights.get(s))
            label = merged.label if plan.publish == "merged" else p.argmax(1)
            m = classification_metrics(truth.numpy()[sel], scored_class(label, k).numpy()[sel], k + 1, None, k)
            row[name] = round(float(m["macro_f1"]), 4)
        out[s] = row
    return out


def _key_name(family: str, key: int, names) -> str:
    n = len(names)
    return {"ceiling": lambda: "all", "pair_ceiling": lambda: names[key],
            "group_ceiling": lambda: PROVENANCE[key],
            "pair_group_ceiling": lambda: f"{names[key % n]}/{PROVENANCE[key // n]}"}[family]()


def calibration_diagnosis(preds, trainer: CrossTrainer, data, plan) -> dict[str, Any]:
    """Per set: ECE as published, confidence and accuracy per provenance, and the one-temperature ceiling.

    With ``unseen_calibration="held-out-dataset"`` the published probability is calibrated
    so (one more training per labelled dataset), and ``ece_pooled`` is the same model's
    ECE under the default rule: a paired comparison.
    """
    weights = trainer.candidate_weights(data)
    filled, _ = calibrated_fill(preds, data, weights=weights)
    pooled = None
    held = unseen_probs(plan.config, DATA_VIEWS[plan.data](data), plan.modules)
    if held is not None:
        pooled = filled
        filled, _ = calibrated_fill(preds, data, weights=weights, unseen=held)
    scored = data.split == TEST
    out: dict[str, Any] = {}
    for spec in data.label_sets:
        s = spec.name
        truth, prov = data.truth[s], data.provenance[s]
        sel = filled_nuclei(truth, prov, "truth_known") & scored

        def published(f, sel=sel, truth=truth, size=spec.size):
            label, prob = published_fields(f)
            keep = (sel & torch.isfinite(prob)).numpy()
            right = (scored_class(label, size) == scored_class(truth, size)).numpy()[keep]
            return right, prob.double().numpy()[keep], keep

        right, conf, keep = published(filled[s])
        if not keep.any():
            continue
        source = filled[s].source.numpy()[keep]
        groups = {name: {"count": int((source == code).sum()), "confidence": round(float(conf[source == code].mean()), 3),
                         "accuracy": round(float(right[source == code].mean()), 3)}
                  for code, name in enumerate(PROVENANCE) if (source == code).any()}
        # ceilings: per key (the set; its (dataset, set) pairs; its provenance groups; both), each
        # key's temperature the best of CEILING_GRID for that key's own scored nuclei
        n_data = len(data.dataset_names)
        families = {"ceiling": np.zeros(len(keep), dtype=np.int64),
                    "pair_ceiling": data.dataset_index.numpy(),
                    "group_ceiling": filled[s].source.numpy().astype(np.int64),
                    "pair_group_ceiling": filled[s].source.numpy().astype(np.int64) * n_data
                    + data.dataset_index.numpy()}
        grid = []
        for t in CEILING_GRID:
            f = fill_labels(preds[s].probs, data.labels[s], data.candidates[s], prov, spec.size, float(t),
                            weights.get(s))
            grid.append(published(f)[:2])
        tally = calibration_tally(right, conf)
        out[s] = {"ece": float(ece_from_tally(tally)), "count": int(keep.sum()), "groups": groups,
                  "ece_floor": float(ece_floor_from_tally(tally))}
        if pooled is not None:
            out[s]["ece_pooled"] = expected_calibration_error(*published(pooled[s])[:2])
        for family, key in families.items():
            kept_key = key[keep]
            best_t = {}
            for k in np.unique(kept_key):
                mask = kept_key == k
                eces = [expected_calibration_error(r[mask], c[mask]) for r, c in grid]
                best_t[int(k)] = float(CEILING_GRID[int(np.argmin(eces))])
            per_nucleus = torch.tensor([best_t.get(int(k), 1.0) for k in key], dtype=torch.float64)
            f = fill_labels(preds[s].probs, data.labels[s], data.candidates[s], prov, spec.size, per_nucleus,
                            weights.get(s))
            r, c, _ = published(f)
            out[s][family] = {"ece": expected_calibration_error(r, c),
                              "temperatures": {_key_name(family, k, data.dataset_names): round(t, 3)
                                               for k, t in best_t.items()}}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default="hard", choices=("easy", "hard", "noisy"))
    parser.add_argument("--world-seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--arms", nargs="+", default=["own-only", "nucdata", "oracle"])
    parser.add_argument("--full", action="store_true",
                        help=f"the method study's full sizes {FULL} instead of its quick ones {QUICK}")
    parser.add_argument("--epochs", type=int, nargs=3, help="per stage (default: the sizes' epochs)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache", type=Path, help="keep prepared worlds here (reused by later runs)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    sizes = FULL if args.full else QUICK
    args.epochs = args.epochs or list(sizes["epochs"])
    torch.set_num_threads(args.threads)
    from nucdata_models.merge import make_world

    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for ws in args.world_seeds:
        world = world_data(ws, args.world, args.cache, sizes)
        the_world = make_world(ws, args.world)
        stains = {d: the_world.stain(d) for d in world.data.dataset_names}
        for ts in args.train_seeds:
            base = TrainConfig.recipe("nucdata", epochs=dict(zip("ABC", args.epochs, strict=True)),
                                      batch_size=sizes["batch_size"], device="cpu", seed=ts, score_truth=False)
            for arm in args.arms:
                plan = plan_of(arm, base)
                start = time.perf_counter()
                trainer = CrossTrainer(plan.config)
                result = trainer.fit(DATA_VIEWS[plan.data](world.data))
                row = {"arm": arm, "world_seed": ws, "train_seed": ts, **score(plan, trainer, world, result, stains),
                       "seconds": round(time.perf_counter() - start, 1)}
                runs.append(row)
                print(f"world {ws} seed {ts} {arm} ({row['seconds']} s):", flush=True)
                for s, v in row["sets"].items():
                    a = v["ambiguous"]
                    acc = "-" if a["accuracy"] is None else f"{a['accuracy']:.3f}"
                    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
                    print(f"  {s:8s} amb {acc} (n={a['count']}) out_in_set {fmt(v['outside_rate_in_set'])} "
                          f"out_recall {fmt(v['outside_recall'])} macroF1 {v['macro_f1']:.3f} acc {v['accuracy']:.3f}",
                          flush=True)
                for s, v in row.get("calibration", {}).items():
                    pooled = f" (default rule {v['ece_pooled']:.3f})" if "ece_pooled" in v else ""
                    print(f"  {s:8s} ECE {v['ece']:.3f}{pooled} (n={v['count']}, chance floor {v['ece_floor']:.3f}), "
                          "one-temperature ceiling "
                          f"{v['ceiling']['ece']:.3f} at T {v['ceiling']['temperatures']['all']}, one per pair "
                          f"{v['pair_ceiling']['ece']:.3f}, per provenance {v['group_ceiling']['ece']:.3f}, "
                          f"per pair and provenance {v['pair_group_ceiling']['ece']:.3f}; "
                          + ", ".join(f"{g} {m['confidence']:.2f}/{m['accuracy']:.2f} (n={m['count']})"
                                      for g, m in v["groups"].items()), flush=True)
                if row.get("prior"):
                    print("  prior (macro F1 as trained / own prior / uniform / em; distance) " + ", ".join(
                        f"{s} {v['as_trained']:.3f}/{v['own']:.3f}/{v['uniform']:.3f}/{v['em']:.3f} "
                        f"({v['prior_distance']:.2f})"
                        for s, v in row["prior"].items()), flush=True)
                if row["stain_swap"]:
                    print("  stain swap " + ", ".join(f"{k} {v:.3f}" for k, v in row["stain_swap"].items()),
                          flush=True)
                c_rows = [p for p in row["pseudo_labels"] if p.get("stage") == "C"]
                if c_rows:
                    offered = sum(p["offered"] for p in c_rows)
                    passed = sum(p["passed"] for p in c_rows)
                    print(f"  stage C pseudo labels: offered {offered}, passed {passed}", flush=True)
    summary = summarise(runs)
    (args.out / "diagnosis.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                         "runs": runs, "summary": summary}, indent=1))
    print(json.dumps(summary, indent=1))
    return summary


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over runs per arm and set of the diagnosis metrics."""
    out: dict[str, Any] = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        rows = [r for r in runs if r["arm"] == arm]
        out[arm] = {}
        for s in rows[0]["sets"]:
            def mean(key, sub=None, s=s, rows=rows):
                vals = [(r["sets"][s][key][sub] if sub else r["sets"][s][key]) for r in rows]
                vals = [v for v in vals if v is not None]
                return round(float(np.mean(vals)), 3) if vals else None
            out[arm][s] = {"ambiguous_accuracy": mean("ambiguous", "accuracy"),
                           "outside_rate_in_set": mean("outside_rate_in_set"),
                           "outside_recall": mean("outside_recall"), "macro_f1": mean("macro_f1"),
                           "accuracy": mean("accuracy")}
            prior = [r["prior"][s] for r in rows if s in r.get("prior", {})]
            if prior:
                out[arm][s]["prior"] = {name: round(float(np.mean([p[name] for p in prior])), 3)
                                        for name in ("as_trained", *PRIORS, "prior_distance")}
            cal = [r["calibration"][s] for r in rows if s in r.get("calibration", {})]
            if cal:
                out[arm][s]["ece"] = round(float(np.mean([c["ece"] for c in cal])), 3)
                out[arm][s]["ece_floor"] = round(float(np.mean([c["ece_floor"] for c in cal])), 3)
                if all("ece_pooled" in c for c in cal):
                    out[arm][s]["ece_pooled"] = round(float(np.mean([c["ece_pooled"] for c in cal])), 3)
                out[arm][s]["ece_ceiling"] = round(float(np.mean([c["ceiling"]["ece"] for c in cal])), 3)
                for family in ("pair_ceiling", "group_ceiling", "pair_group_ceiling"):
                    out[arm][s][f"ece_{family}"] = round(float(np.mean([c[family]["ece"] for c in cal])), 3)
        swaps = {k for r in rows for k in r["stain_swap"]}
        if swaps:
            out[arm]["stain_swap"] = {k: round(float(np.mean([r["stain_swap"][k] for r in rows])), 3)
                                      for k in sorted(swaps)}
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
