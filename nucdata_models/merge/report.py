"""build-merged's report: what was trained on, how it was split, and every metric, as JSON and markdown.

Reliability diagrams of the published probability are drawn with Pillow (a dependency
of nucdata), so every build has them, without matplotlib.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from nucdata_models.data import PROVENANCE_NAMES
from nucdata_models.train import RECIPE_DIFFERENCES, pseudo_label_totals

__all__ = ["CALIBRATION_GROUPS", "GLOSSARY", "make_report", "render_recipe_table", "render_report", "verdict",
           "write_reliability_diagrams"]

#: The words of the report, explained once at its top (term -> meaning).
GLOSSARY = {
    "label set": "a vocabulary of nucleus classes (PanNuke's, NuCLS', CoNSeP's, MoNuSAC's); every nucleus gets "
                 "a label under each",
    "annotated": "the nucleus's own dataset labelled it in this set's vocabulary (ground truth)",
    "mapped": "its own dataset labelled it in another vocabulary, and the mapping tables translate that label "
              "to exactly one class of this set",
    "ambiguous": "the tables give several candidate classes (e.g. MoNuSAC `epithelial` is PanNuke `neoplastic` "
                 "or `epithelial`); the model picks among them, weighing its probability of each by how often "
                 "that class is written as the nucleus's own label in its dataset (published as `ambiguous-resolved`)",
    "outside": "no class of this set describes the nucleus (e.g. a fibroblast under MoNuSAC); labelled -2",
    "none / predicted": "nothing is known (Kumar, MoNuSeg, TNBC carry no classes): the model predicts the label",
    "patch-flags": "(with `--patch-labels`) a patch-level table said which classes its patch lacks; the model "
                   "chose among the classes left",
    "stages A, B, C": "A: one shared encoder with a head per set, on known labels; B: per set, a correlation "
                      "module predicting it from the other sets' outputs; C: cross-training with confident "
                      "pseudo labels; the published prediction is the mean of both modules",
    "held out": "images of groups (patient, slide, hospital) that no stage trained or validated on",
    "baseline": "(demo) each set learnt from its own dataset's annotations only, same encoder and number of "
                "optimisation steps",
    "accuracy": "share of nuclei whose label is right",
    "macro F1": "the F1 score (harmonic mean of precision and recall) of each class, averaged with equal "
                "weight per class, so rare classes count as much as common ones",
    "weighted F1": "per-class F1 averaged by each class's number of nuclei",
    "ECE": "expected calibration error: over 15 equal-width bins of the published probability, the mean gap "
           "between the probability and the share that is right (0 = a probability of 0.8 is right 80 % of "
           "the time)",
    "temperature (T)": "the calibration: probabilities are softmax(logits / T), T fitted on the validation split",
}


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


def make_report(options, names, data, result, trainer, timings, demo_scores, groups,
                calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything worth keeping about one build, JSON-ready.

    ``calibration``: the calibration applied (:meth:`nucdata_models.calibration.Calibration.to_dict`)
    with its held-out ``scores`` (:func:`nucdata_models.calibration.calibration_scores`)
    and the ``diagrams`` written (:func:`write_reliability_diagrams`).
    """
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
        report["pseudo_label_precision"] = {s: pseudo_label_totals(result.pseudo_labels, s)
                                            for s in dict.fromkeys(r["label_set"] for r in result.pseudo_labels)}
        report["throughput_nuclei_per_s"] = {
            stage: float(np.median([r["nuclei_per_s"] for r in result.history if r["stage"] == stage] or [0.0]))
            for stage in ("A", "B", "C")
        }
    if calibration is not None:
        report["calibration"] = calibration
    if demo_scores is not None:
        report["demo_truth"] = demo_scores
    return report


#: Groups of a reliability diagram, in drawing order: every filled label, then by provenance.
CALIBRATION_GROUPS = ("filled", "predicted", "ambiguous-resolved", "outside", "mapped", "annotated")
_PANEL, _PLOT, _MARGIN = 250, 190, 40
_CALIBRATED, _BEFORE, _GRID = (45, 105, 190), (230, 120, 30), (215, 215, 215)


def _headline(per_set: dict[str, Any]) -> str | None:
    """The group a set's one-line reading is about: filled labels (truth known), else mapped, else annotated."""
    groups = per_set.get("groups", {})
    for name in ("filled", "mapped", "annotated"):
        if name in groups:
            return name
    return next(iter(groups), None)


def _draw_panel(draw, x0: int, y0: int, name: str, score: dict[str, Any]) -> None:
    left, top = x0 + _MARGIN, y0 + 30
    bottom, right = top + _PLOT, left + _PLOT

    def at(conf: float, acc: float) -> tuple[float, float]:
        return left + conf * _PLOT, bottom - acc * _PLOT

    for tick in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        draw.line([at(tick, 0), at(tick, 1)], fill=_GRID)
        draw.line([at(0, tick), at(1, tick)], fill=_GRID)
    for tick in (0.0, 0.5, 1.0):
        draw.text((at(tick, 0)[0] - 6, bottom + 3), f"{tick:g}", fill=(0, 0, 0))
        draw.text((left - 18, at(0, tick)[1] - 6), f"{tick:g}", fill=(0, 0, 0))
    for b in score["bins"]:
        if b["count"]:
            draw.rectangle([at(b["lower"], b["accuracy"]), at(b["upper"], 0)], fill=_CALIBRATED,
                           outline=(255, 255, 255))
    draw.line([at(0, 0), at(1, 1)], fill=(90, 90, 90), width=1)
    for b in score.get("bins_uncalibrated", []):
        if b["count"]:
            x, y = at(b["confidence"], b["accuracy"])
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=_BEFORE)
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    before = score.get("ece_uncalibrated")
    ece = f"ECE {before:.3f} -> {score['ece']:.3f}" if before is not None else f"ECE {score['ece']:.3f}"
    draw.text((x0 + 6, y0 + 2), f"{name} (n={score['count']:,})", fill=(0, 0, 0))
    draw.text((x0 + 6, y0 + 15), ece, fill=(0, 0, 0))
    draw.text((left + _PLOT // 2 - 28, bottom + 14), "confidence", fill=(0, 0, 0))


def write_reliability_diagrams(folder: str | Path, scores: dict[str, Any]) -> dict[str, str]:
    """One PNG per label set under ``folder/calibration/``: a reliability diagram per group.

    Bars: accuracy per equal-width bin of the calibrated probability (the published
    one); dots: (mean confidence, accuracy) per bin before calibration; the diagonal
    is perfect calibration.

    Parameters
    ----------
    folder
        The output folder.
    scores
        :func:`nucdata_models.calibration.calibration_scores`'s result.

    Returns
    -------
    dict
        Label set -> the PNG's path relative to ``folder``.
    """
    from PIL import Image, ImageDraw

    from nucdata._util.atomic import atomic_write_bytes
    from nucdata._util.paths import check_name

    written = {}
    for label_set, per_set in scores.items():
        groups = [(g, per_set["groups"][g]) for g in CALIBRATION_GROUPS if g in per_set["groups"]]
        if not groups:
            continue
        check_name(label_set, source=folder, element="a label set name")
        image = Image.new("RGB", (_PANEL * len(groups), _PANEL + 44), (255, 255, 255))
        draw = ImageDraw.Draw(image)
        for i, (name, score) in enumerate(groups):
            _draw_panel(draw, i * _PANEL, 0, name, score)
        against = "the demo world's truth" if per_set["scored_against"] == "truth" else "labels known exactly"
        legend_y = _PANEL + 8
        draw.rectangle([8, legend_y + 2, 18, legend_y + 12], fill=_CALIBRATED)
        draw.text((22, legend_y), "calibrated (published)", fill=(0, 0, 0))
        draw.ellipse([170, legend_y + 3, 178, legend_y + 11], fill=_BEFORE)
        draw.text((182, legend_y), "before calibration", fill=(0, 0, 0))
        draw.text((8, legend_y + 16), f"{label_set}: held-out nuclei, scored against {against}; 15 equal-width bins",
                  fill=(0, 0, 0))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        relative = f"calibration/{label_set}.png"
        atomic_write_bytes(Path(folder) / relative, buffer.getvalue())
        written[label_set] = relative
    return written


def _render_calibration(cal: dict[str, Any]) -> list[str]:
    scores = cal.get("scores", {})
    against = {per_set["scored_against"] for per_set in scores.values()}
    lines = ["## Calibration of the published probability", "",
             "Field 3 of the pickles (and the merged `probability`) is the model's probability after temperature "
             "scaling, one temperature per (source dataset, label set), fitted on the validation split's nuclei "
             "whose class is known exactly: cross-domain nuclei through an exact mapping row, and a dataset's own "
             f"annotations for its own set only. A pair with fewer than {cal['minimum']} of them uses its set's "
             "pooled (cross-domain) temperature where it softens (`max(1, T)`), or, for a dataset with no label "
             "information in the set when the held-out-dataset temperature was fitted "
             "(`--unseen-calibration held-out-dataset`), that one: fitted on each labelled dataset's nuclei as "
             "predicted by a model trained without its labels. Scored on the "
             "held-out split: top-label ECE over 15 equal-width bins, "
             + ("against the demo world's truth (`filled`: every nucleus its own dataset did not annotate in the "
                "set, outside included; then per provenance)." if against == {"truth"} else
                "against what is known exactly without the truth: `annotated` nuclei against their own annotation "
                "(under their own set), `mapped` nuclei against their exact row's class; filled labels of other "
                "provenances cannot be scored on real data.")
             + " The chance floor is the ECE that perfectly calibrated probabilities would show on the same "
             "nuclei by chance (the binned estimator's upward bias at that count): an ECE near it is within "
             "sampling noise.", "",
             "| label set | pooled T fitted (nuclei) | pairs with their own T | pairs on max(1, pooled T) | "
             "held-out-dataset T (nuclei) | pairs on it |",
             "|---|---|---|---|---|---|"]
    unseen, unseen_on = cal.get("unseen", {}), cal.get("unseen_fitted_on", {})
    for s in scores:
        pooled = cal["pooled"].get(s)
        pooled_text = f"{pooled:.3f} ({cal['fitted_on'].get(s, 0)})" if pooled is not None else \
            f"none ({cal['fitted_on'].get(s, 0)} nuclei)"
        own = ", ".join(f"{k.split('->')[0]} {t:.3f}" for k, t in cal["pairs"].items() if k.endswith(f"->{s}"))
        on_pooled = ", ".join(k.split("->")[0] for k in cal["pooled_pairs"] if k.endswith(f"->{s}"))
        held = (f"{unseen[s]:.3f} ({unseen_on.get(s, 0)})" if s in unseen else
                f"none ({unseen_on[s]} nuclei)" if s in unseen_on else "not fitted")
        on_held = ", ".join(k.split("->")[0] for k, how in cal.get("uses", {}).items()
                            if how == "unseen" and k.endswith(f"->{s}"))
        lines.append(f"| {s} | {pooled_text} | {own or 'none'} | {on_pooled or 'none'} | {held} | "
                     f"{on_held or 'none'} |")
    lines += ["", "| label set | nuclei | n | ECE before | ECE calibrated | chance floor | reading |",
              "|---|---|---|---|---|---|---|"]
    for s, per_set in scores.items():
        for g in CALIBRATION_GROUPS:
            m = per_set["groups"].get(g)
            if m:
                lines.append(f"| {s} | {g} | {m['count']} | {_fmt(m.get('ece_uncalibrated'))} | {_fmt(m['ece'])} | "
                             f"{_fmt(m.get('ece_floor'))} | {m['reading']} |")
    lines.append("")
    for s, path in cal.get("diagrams", {}).items():
        head = _headline(scores[s])
        reading = scores[s]["groups"][head]["reading"] if head else "nothing scored"
        lines += [f"![reliability diagram, {s}]({path})", "", f"**{s}** ({head}): {reading}.", ""]
    return lines


def verdict(report: dict[str, Any]) -> str:
    """The report's first line: how the filled labels did, in one sentence.

    On the demo, the held-out filled labels against the own-dataset baseline per set;
    on real data (no truth), the method's validation macro F1 per set; with a
    ``--checkpoint``, the held-out accuracy of the model's own prediction where known.
    """
    demo = report.get("demo_truth")
    if demo:
        held = demo["held_out"]
        rows = [(s, held["merged"][s]["macro_f1"], held["baseline"][s]["macro_f1"]) for s in report["label_sets"]]
        rows = [(s, m, b) for s, m, b in rows if m is not None and b is not None
                and not (math.isnan(m) or math.isnan(b))]
        wins = [f"{s} {m:.3f} vs {b:.3f}" for s, m, b in rows if m > b]
        losses = [f"{s} {m:.3f} vs {b:.3f}" for s, m, b in rows if m <= b]
        text = (f"**Verdict:** on held-out images, the filled labels' macro F1 beats the own-dataset baseline on "
                f"{len(wins)} of {len(rows)} label sets")
        text += f" ({', '.join(wins)})" if wins else ""
        text += f" and does not on {', '.join(losses)}" if losses else ""
        return text + " (demo world, one seed)."
    validation = report.get("validation", {}).get("C")
    if validation:
        shown = ", ".join(f"{s} {_fmt(m['macro_f1'])} (n={m['count']:,})" for s, m in validation.items() if m["count"])
        return (f"**Verdict:** validation macro F1 of the method's prediction on annotated nuclei: {shown or 'none'}; "
                "filled labels cannot be scored on real data (no truth), see the calibration section.")
    return ("**Verdict:** labels from the checkpoint given; no training here, so no validation scores "
            "(see the calibration section for the held-out checks).")


def _switch(value: Any) -> str:
    """A configuration value as prose: ``A 6 / B 4 / C 4``, ``none``, plain words and numbers."""
    if isinstance(value, dict):
        return " / ".join(f"{k} {v}" for k, v in value.items())
    if value is None:
        return "none"
    return str(value)


def _how_to_open(report: dict[str, Any]) -> list[str]:
    """The report's last section: a few lines of Python that open this output."""
    dataset = report["datasets"][0]
    label_set = report["label_sets"][0]
    out = report.get("output", "OUT")
    return ["## How to open this output", "",
            f"`{out}` is this report's folder (where it was written; use its new path if it moved):", "",
            "```python",
            "import nucdata",
            "",
            f'ds = nucdata.load("{dataset}", label_set="{label_set}", merged={out!r})  # a torch Dataset',
            "ds.nuclei[[\"label\", \"probability\", \"source\"]].to_dataframe()  # every nucleus, merged label",
            "sample = ds[0]  # image, instance map, labels, probabilities, sources",
            "",
            f'merged = nucdata.open_merged({out!r})  # the published pickles',
            f'merged.table("{label_set}", "{dataset}")  # centroid, predicted, probability, ground_truth',
            "```", "",
            "`source` says where each label came from (`nucdata.PROVENANCE`); the pickles are "
            "`<label set>/<dataset>.pkl`, the trained classifier `classifier.safetensors` with "
            "`classifier.json` (`nucdata classify`, docs/tutorials/classify.md).", ""]


def render_report(report: dict[str, Any]) -> str:
    """The report as markdown: a verdict line, a glossary and the total time first, how to open it last."""
    config = report["config"]
    total = report.get("timings_s", {}).get("total")
    lines = ["# Merged dataset report", "", verdict(report), ""]
    if total is not None:
        lines += [f"Total time: {total:,.0f} s on `{report['device']}` (every phase: \"Time\" below).", ""]
    lines += [f"Datasets: {', '.join(report['datasets'])}; {report['nuclei']:,} nuclei; label sets "
              f"{', '.join(report['label_sets'])}; recipe `{report['recipe']}`; encoder `{config['encoder']}`, "
              f"{report['crop_size']} px crops; device `{report['device']}`.", ""]
    lines += ["Words used below:", ""] + [f"- **{term}**: {meaning}." for term, meaning in GLOSSARY.items()] + [""]
    recipe_rows = [f"`{k}` {_switch(config.get(k))}" for k in RECIPE_DIFFERENCES]
    lines += ["Method switches (docs/build-merged.md explains each): " + ", ".join(recipe_rows) + ".", ""]
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
        precision = report.get("pseudo_label_precision") or {}
        if any(v.get("precision") is not None for v in precision.values()):
            lines += ["", "How precise they were (all epochs; the truth of the demo world): "
                      + "; ".join(f"{s} {v['passed']:,} passed of {v['offered']:,} offered, precision "
                                  f"{v['precision']:.3f} against {v['accuracy_before']:.3f} for the model's own "
                                  "label of the same nuclei before stage C"
                                  for s, v in precision.items()
                                  if v.get("precision") is not None and v.get("accuracy_before") is not None) + "."]
        elif precision:
            lines += ["", "Their precision is not measured: no truth is known for these nuclei."]
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
    if "calibration" in report:
        lines += _render_calibration(report["calibration"])
    lines += ["## Time", "", "Wall-clock seconds per phase, in order; the stages' epochs are in \"Time per stage\".",
              "", "| phase | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:,.1f} |" for k, v in report["timings_s"].items()]
    lines += [""] + _how_to_open(report)
    return "\n".join(lines) + "\n"
