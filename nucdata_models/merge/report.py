"""build-merged's report: what was trained on, how it was split, and every metric, as JSON and markdown."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nucdata_models.data import PROVENANCE_NAMES
from nucdata_models.train import RECIPE_DIFFERENCES

__all__ = ["make_report", "render_recipe_table", "render_report"]


def _fmt(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def render_recipe_table() -> str:
    """The markdown table of every difference between the recipes (docs/build-merged.md holds it)."""

    def show(value: Any) -> str:
        if isinstance(value, dict):
            return "/".join(str(v) for v in value.values())
        return f"`{value}`"

    lines = ["| `TrainConfig` field | `--recipe paper` | authors' code | `--recipe nucdata` | why |",
             "|---|---|---|---|---|"]
    for name, row in RECIPE_DIFFERENCES.items():
        lines.append(f"| `{name}` | {show(row['paper'])} | {row['code']} | {show(row['nucdata'])} | {row['why']} |")
    return "\n".join(lines)


def make_report(options, names, data, result, trainer, timings, demo_scores, groups) -> dict[str, Any]:
    """Everything worth keeping about one build, JSON-ready."""
    provenance = {s: {PROVENANCE_NAMES[c]: int((data.provenance[s] == c).sum()) for c in range(len(PROVENANCE_NAMES))}
                  for s in data.names}
    report: dict[str, Any] = {
        "datasets": names, "label_sets": data.names, "nuclei": len(data), "recipe": options.recipe,
        "nuclei_per_dataset": {n: int((data.dataset_index == i).sum()) for i, n in enumerate(data.dataset_names)},
        "config": trainer.config.to_dict(), "crop_size": options.crop, "device": str(trainer.device),
        "checkpoint": str(options.checkpoint) if options.checkpoint else "model.pt (trained in this run)",
        "mapped_as_truth": options.mapped_as_truth,
        "splits": {"nuclei": {k: int((data.split == v).sum()) for k, v in
                              (("train", 0), ("validation", 1), ("held_out", 2), ("duplicate", 3))},
                   "group_key": groups.group_key, "groups": groups.groups, "duplicates": groups.duplicates},
        "label_provenance": provenance,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    if result is not None:
        report["stage_seconds"] = {k: round(v, 2) for k, v in result.seconds.items()}
        report["validation"] = result.metrics
        report["reused_stages"] = result.reused
        report["pseudo_labels"] = [{"epoch": r["epoch"], **r.get("pseudo_labels", {})} for r in result.history
                                   if r["stage"] == "C"]
        report["throughput_nuclei_per_s"] = {
            stage: float(np.median([r["nuclei_per_s"] for r in result.history if r["stage"] == stage] or [0.0]))
            for stage in ("A", "B", "C")
        }
    if demo_scores is not None:
        report["demo_truth"] = demo_scores
    return report


def render_report(report: dict[str, Any]) -> str:
    """The report as markdown."""
    config = report["config"]
    lines = ["# Merged dataset report", "",
             f"Datasets: {', '.join(report['datasets'])}; {report['nuclei']:,} nuclei; label sets "
             f"{', '.join(report['label_sets'])}; recipe `{report['recipe']}`; encoder `{config['encoder']}`, "
             f"{report['crop_size']} px crops; device `{report['device']}`.", ""]
    recipe_rows = [f"`{k}` = {config.get(k)!r}" for k in RECIPE_DIFFERENCES]
    lines += ["Method switches: " + ", ".join(recipe_rows) + ".", ""]
    sp = report["splits"]
    lines += ["## Splits", "",
              "Grouped so that no patient, slide or hospital is in two splits; held-out images are seen by no "
              "stage; duplicates (the same pixels in two datasets) are trained on once.", "",
              "| dataset | grouped by | groups (train / validation / held out) | duplicate images |", "|---|---|---|---|"]
    for name in report["datasets"]:
        g = sp["groups"].get(name, {})
        dups = ", ".join(f"{n} of {o}" for o, n in sp["duplicates"].get(name, {}).items()) or "none"
        lines.append(f"| {name} | {sp['group_key'].get(name)} | {g.get('train', 0)} / {g.get('validation', 0)} / "
                     f"{g.get('test', 0)} | {dups} |")
    n = sp["nuclei"]
    lines += ["", f"Nuclei: {n['train']:,} train, {n['validation']:,} validation, {n['held_out']:,} held out, "
              f"{n['duplicate']:,} duplicates.", ""]
    lines += ["## Where labels come from", "", "| label set | " + " | ".join(PROVENANCE_NAMES) + " |",
              "|---" * (len(PROVENANCE_NAMES) + 1) + "|"]
    for s, counts in report["label_provenance"].items():
        lines.append(f"| {s} | " + " | ".join(f"{counts[k]:,}" for k in PROVENANCE_NAMES) + " |")
    lines.append("")
    if "validation" in report:
        lines += ["## Validation (annotated nuclei of validation groups; the model's own prediction over the "
                  "whole set, no candidate restriction)", "",
                  "| stage | label set | n | accuracy | macro F1 | weighted F1 | ECE |", "|---|---|---|---|---|---|---|"]
        for stage, per_set in report["validation"].items():
            for s, m in per_set.items():
                lines.append(f"| {stage} | {s} | {m['count']} | {_fmt(m['accuracy'])} | {_fmt(m['macro_f1'])} | "
                             f"{_fmt(m['weighted_f1'])} | {_fmt(m.get('ece'))} |")
        lines += ["", "Stage A is the base module alone, B the correlation modules alone, C the mean of both "
                  "after cross-training (the method's prediction). Per-class recall and confusion matrices are "
                  "in report.json.", ""]
        lines += ["## Time per stage", "", "| stage | seconds | nuclei/s (median epoch) |", "|---|---|---|"]
        for stage, sec in report["stage_seconds"].items():
            lines.append(f"| {stage} | {sec} | {report['throughput_nuclei_per_s'][stage]:,.0f} |")
        if report.get("reused_stages"):
            lines += ["", f"Reused from an earlier run (same data and settings): {', '.join(report['reused_stages'])}."]
        lines += ["", "## Pseudo labels accepted per epoch of stage C", ""]
        if report["pseudo_labels"]:
            sets = [k for k in report["pseudo_labels"][0] if k != "epoch"]
            lines += ["| epoch | " + " | ".join(sets) + " |", "|---" * (len(sets) + 1) + "|"]
            lines += [f"| {r['epoch']} | " + " | ".join(str(r[s]) for s in sets) + " |" for r in report["pseudo_labels"]]
        lines.append("")
    if "demo_truth" in report:
        demo = report["demo_truth"]
        lines += ["## Filled labels against the demo world's truth", "",
                  "Nuclei whose own dataset did not annotate them in the set, whose true class lies in the set, "
                  "scored against the latent cell type they were drawn as. `merged` is the published merged label "
                  "(mapping tables where they decide, the model elsewhere), `model` the method's own prediction, "
                  f"`baseline` each set learnt from its own dataset's annotations only ({demo['baseline_steps']}). "
                  "One world, one seed: see docs/method-study.md for a study with confidence intervals.", ""]
        for where in ("held_out", "training_pool"):
            lines += [f"### {where.replace('_', ' ')}", "",
                      "| label set | n | merged macro F1 | model macro F1 | baseline macro F1 | merged acc | baseline acc |",
                      "|---|---|---|---|---|---|---|"]
            for s in report["label_sets"]:
                m, o, b = (demo[where][arm][s] for arm in ("merged", "model", "baseline"))
                lines.append(f"| {s} | {m['count']} | {_fmt(m['macro_f1'])} | {_fmt(o['macro_f1'])} | "
                             f"{_fmt(b['macro_f1'])} | {_fmt(m['accuracy'])} | {_fmt(b['accuracy'])} |")
            lines.append("")
        lines += ["### held out, nuclei outside the set included", "",
                  "The same, with nuclei whose true type has no class in the set scored as one more class, "
                  "\"outside\": a model without an outside output gets each of them wrong.", "",
                  "| label set | n | merged accuracy | model accuracy | baseline accuracy |", "|---|---|---|---|---|"]
        for s in report["label_sets"]:
            m, o, b = (demo["held_out_with_outside"][arm][s] for arm in ("merged", "model", "baseline"))
            lines.append(f"| {s} | {m['count']} | {_fmt(m['accuracy'])} | {_fmt(o['accuracy'])} | "
                         f"{_fmt(b['accuracy'])} |")
        lines.append("")
    lines += ["## Other timings (s)", ""] + [f"- {k}: {v}" for k, v in report["timings_s"].items()]
    return "\n".join(lines) + "\n"
