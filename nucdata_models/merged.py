"""``build-merged``: every nucleus of every dataset labelled under every label set.

The output folder, written atomically (a crash leaves the previous one intact)::

    <label_set>/<dataset>.pkl     {image filename: [[centroid [x, y], predicted label,
                                   its probability, ground-truth label or -1], ...]}
                                   in plain Python types: the published merged format
    overlays/<label_set>/<dataset>/*.png   outlines coloured by the merged label, legend
    stores/<dataset>/             merged columns read by nucdata.load(..., source=DIR)
    model.pt, model.json          the checkpoint and its description
    report.md, report.json        metrics per label set and stage, pseudo-label counts,
                                  time per stage, device (and, for --demo, accuracy of
                                  the filled labels against the known truth)

Work that a rerun reuses lives beside the output, in ``.<name>.work/``: each finished
stage's checkpoint and, for ``--demo``, the generated data home. Prepared stores and
crop banks are reused from the data home as always.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .bridge import from_crop_dataset
from .metrics import classification_metrics
from .train import CrossTrainer, TrainConfig

MERGED_SETS = ("pannuke", "nucls", "consep", "monusac")
ALL_DATASETS = ("pannuke", "consep", "monusac", "nucls", "kumar", "monuseg", "tnbc")


@dataclass
class BuildOptions:
    out: Path
    datasets: Sequence[str] | None = None  # None: every dataset that is available
    label_sets: Sequence[str] = MERGED_SETS
    checkpoint: Path | None = None
    device: str = "auto"
    epochs: dict[str, int] = field(default_factory=lambda: {"A": 10, "B": 10, "C": 10})
    encoder: str = "small"
    crop_size: int = 32
    batch_size: int = 128
    overlays: int | None = 16  # images per (label set, dataset); None = every image
    root: Path | None = None
    demo: bool = False
    demo_scale: int = 1
    seed: int = 0
    val_fraction: float = 0.15


def work_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.work"


def _validation_split(names: np.ndarray, fraction: float) -> np.ndarray:
    """Deterministic by image: 1 for validation images, 0 for training."""
    digest = np.array([int(hashlib.sha256(str(n).encode()).hexdigest()[:8], 16) for n in names])
    return (digest % 1000 < fraction * 1000).astype(np.int64)


def _available(names: Sequence[str] | None, root: Path | None, say: Callable[[str], None]) -> list[str]:
    """Datasets to use: prepared, or preparable from local files without the network."""
    import nucdata
    from nucdata.errors import NucdataError
    from nucdata.prepare import is_prepared

    asked = list(names) if names else list(ALL_DATASETS)
    chosen = []
    for name in asked:
        try:
            if not is_prepared(name, root):
                say(f"preparing {name}")
                nucdata.prepare(name, root=root, download=False)
            chosen.append(name)
        except NucdataError as exc:
            card = nucdata.get_card(name, root)
            if names:  # asked for by name: stop and say how to get it
                raise NucdataError(f"{name} is not available: {str(exc).splitlines()[0]}\n"
                                   f"How to get it: {card.instructions(root)}") from exc
            say(f"skipping {name}: not downloaded (`nucdata info {name}` says how to get it)")
    if not chosen:
        raise NucdataError("no dataset is available; prepare one first, or run build-merged --demo")
    return chosen


def build_merged(options: BuildOptions, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole chain and write the merged dataset into ``options.out``."""
    import nucdata

    out = Path(options.out).resolve()
    work = work_dir(out)
    work.mkdir(parents=True, exist_ok=True)
    root = options.root
    truth_by_image: dict[str, dict[str, list]] = {}
    timings: dict[str, float] = {}
    if options.demo:
        root = work / "demo-home"
        start = time.perf_counter()
        truth_by_image = install_demo_world(root, options.seed, options.datasets, say, options.demo_scale)
        timings["generate demo archives"] = time.perf_counter() - start
    start = time.perf_counter()
    names = _available(options.datasets, root, say)
    members = [nucdata.load(n, root=root) for n in names]
    timings["prepare"] = time.perf_counter() - start

    start = time.perf_counter()
    say(f"cutting crop banks ({options.crop_size} px) for {', '.join(names)}")
    crops = nucdata.multi.crops_of(members, options.crop_size)
    image_names = np.concatenate([np.asarray(m.store.column("images", "name"))[np.asarray(m.store.column("nuclei", "image"))]
                                  for m in members])
    split = torch.from_numpy(_validation_split(np.char.add(np.repeat(names, [m.store.n_nuclei for m in members]).astype(str), image_names.astype(str)), options.val_fraction))
    data = from_crop_dataset(crops, list(options.label_sets), split)
    timings["crop banks"] = time.perf_counter() - start
    say(f"{len(data):,} nuclei from {len(names)} datasets under {', '.join(options.label_sets)}")

    config = TrainConfig(encoder=options.encoder, epochs=dict(options.epochs), batch_size=options.batch_size,
                         device=options.device, seed=options.seed)
    if options.checkpoint is not None:
        trainer = CrossTrainer.load(options.checkpoint, data.label_sets, device=options.device)
        result = None
        say(f"using checkpoint {options.checkpoint}")
    else:
        trainer = CrossTrainer(config)
        result = trainer.fit(data, workdir=work / "stages", progress=say)
    start = time.perf_counter()
    predictions = trainer.predict(data.crops, data.candidates)
    timings["predict"] = time.perf_counter() - start
    say(f"predicted {len(data):,} nuclei under {len(data.label_sets)} label sets in {timings['predict']:.1f} s")

    demo_scores = None
    if options.demo:
        demo_scores = score_demo(members, data, predictions, truth_by_image, config, say)

    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        start = time.perf_counter()
        offsets = np.concatenate([[0], np.cumsum([m.store.n_nuclei for m in members])])
        for d, member in enumerate(members):
            rows = slice(int(offsets[d]), int(offsets[d + 1]))
            write_dataset(tmp, member, {s: _slice(p, rows) for s, p in predictions.items()},
                          {s: data.labels[s][rows] for s in data.names}, options.overlays, say)
        trainer.save(tmp / "model.pt", extra={"datasets": names})
        report = make_report(options, names, data, result, trainer, timings, demo_scores)
        (tmp / "report.json").write_text(json.dumps(report, indent=2, default=float))
        (tmp / "report.md").write_text(render_report(report))
        timings["write"] = time.perf_counter() - start
        _swap_into_place(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    say(f"merged dataset written to {out}")
    return report


def _slice(pred, rows: slice):
    from .train import Prediction

    return Prediction(pred.label[rows], pred.probability[rows], pred.probs[rows])


def _swap_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_dataset(folder: Path, ds, predictions: dict, labels: dict[str, torch.Tensor],
                  overlays: int | None, say: Callable[[str], None]) -> None:
    """Pickles, merged store columns and overlays of one dataset."""
    from nucdata.overlay import write_overlays

    store = ds.store
    image_of = np.asarray(store.column("nuclei", "image"))
    centroids = np.asarray(store.column("nuclei", "centroid"))
    image_names = [str(n) for n in np.asarray(store.column("images", "name"))]
    merged_dir = folder / "stores" / ds.name
    merged_dir.mkdir(parents=True)
    columns = {}
    for s, pred in predictions.items():
        gt = labels[s].numpy()
        annotated = gt >= 0
        label = np.where(annotated, gt, pred.label.numpy())
        columns[s] = {"label": label.astype(np.int64), "predicted": pred.label.numpy().astype(np.int64),
                      "probability": pred.probability.numpy().astype(np.float32),
                      "annotated": annotated, "probs": pred.probs.numpy().astype(np.float32)}
        for key, value in columns[s].items():
            np.save(merged_dir / f"{s}__{key}.npy", value)
        table: dict[str, list] = {name: [] for name in image_names}
        for row in range(store.n_nuclei):
            table[image_names[image_of[row]]].append([
                [float(centroids[row, 0]), float(centroids[row, 1])],
                int(pred.label[row]), float(pred.probability[row]), int(gt[row]) if gt[row] >= 0 else -1,
            ])
        path = folder / s / f"{ds.name}.pkl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            pickle.dump({f"{name}.png": nuclei for name, nuclei in table.items()}, fh, protocol=4)
    (merged_dir / "merged.json").write_text(json.dumps({
        "dataset": ds.name, "store": str(store.path), "store_created": store.manifest["created"],
        "label_sets": list(predictions), "nuclei": store.n_nuclei,
    }, indent=2))
    from nucdata.dataset import merged_view

    for s in predictions:
        merged = merged_view(ds, s, merged_dir)
        if overlays is not None and len(merged) > overlays:
            merged.indices = merged.indices[:overlays]
        write_overlays(merged, folder / "overlays" / s / ds.name)
    say(f"wrote {ds.name}: {store.n_nuclei:,} nuclei under {len(predictions)} label sets")


# -- the demo world --------------------------------------------------------------------
def install_demo_world(root: Path, seed: int, datasets: Sequence[str] | None,
                       say: Callable[[str], None], scale: int = 1) -> dict[str, dict[str, list]]:
    """Generate the seven datasets' archives from one world; return the truth per image."""
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
            points = np.asarray([(x, y) for x, y, _ in drawn])
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


def score_demo(members, data, predictions, truth_by_image, config: TrainConfig,
               say: Callable[[str], None]) -> dict[str, Any]:
    """Accuracy of the filled labels against the truth, next to the own-dataset baseline."""
    truth = truth_labels(members, truth_by_image, data.names)
    say("demo: training the baseline (each label set on its own dataset only)")
    from nucdata.labelsets import OWN_LABEL_SET

    from .data import TrainingData

    owner = {v: k for k, v in OWN_LABEL_SET.items()}
    own_only = {}
    for s in data.names:
        d = data.dataset_names.index(owner[s]) if owner[s] in data.dataset_names else -1
        keep = data.dataset_index == d
        own_only[s] = torch.where(keep, data.candidates[s], torch.zeros_like(data.candidates[s]))
    baseline_data = TrainingData(data.crops, data.label_sets, {s: torch.where(own_only[s] != 0, data.labels[s], torch.full_like(data.labels[s], -1)) for s in data.names},
                                 own_only, data.dataset_index, data.dataset_names, data.split)
    baseline_config = TrainConfig(**{**config.to_dict(), "epochs": {"A": config.epochs["A"], "B": 0, "C": 0}})
    baseline = CrossTrainer(baseline_config)
    baseline.fit(baseline_data)
    base_pred = baseline.predict(data.crops, data.candidates, modules="base")
    scores = {}
    for s in data.names:
        t = truth[s]
        filled = (data.labels[s].numpy() == -1) & (t >= 0)
        n = int(filled.sum())
        merged_acc = float((predictions[s].label.numpy()[filled] == t[filled]).mean()) if n else float("nan")
        base_acc = float((base_pred[s].label.numpy()[filled] == t[filled]).mean()) if n else float("nan")
        size = len(data.label_sets[data.names.index(s)].class_names)
        scores[s] = {"filled_nuclei": n, "merged_accuracy": merged_acc, "baseline_accuracy": base_acc,
                     "merged": classification_metrics(t[filled], predictions[s].label.numpy()[filled], size),
                     "baseline": classification_metrics(t[filled], base_pred[s].label.numpy()[filled], size)}
        say(f"demo: {s}: filled-label accuracy {merged_acc:.3f} (baseline {base_acc:.3f}) on {n} nuclei")
    return scores


# -- report ----------------------------------------------------------------------------
def make_report(options: BuildOptions, names, data, result, trainer: CrossTrainer, timings, demo_scores) -> dict[str, Any]:
    report: dict[str, Any] = {
        "datasets": names, "label_sets": data.names, "nuclei": len(data),
        "nuclei_per_dataset": {n: int((data.dataset_index == i).sum()) for i, n in enumerate(data.dataset_names)},
        "encoder": trainer.config.encoder, "crop_size": options.crop_size, "device": str(trainer.device),
        "checkpoint": str(options.checkpoint) if options.checkpoint else "model.pt (trained in this run)",
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    if result is not None:
        report["stage_seconds"] = {k: round(v, 2) for k, v in result.seconds.items()}
        report["validation"] = result.metrics
        report["pseudo_labels"] = [{"epoch": r["epoch"], **r.get("pseudo_labels", {})} for r in result.history if r["stage"] == "C"]
        report["throughput_nuclei_per_s"] = {
            stage: float(np.median([r["nuclei_per_s"] for r in result.history if r["stage"] == stage] or [0.0]))
            for stage in ("A", "B", "C")
        }
    if demo_scores is not None:
        report["demo_truth"] = demo_scores
    return report


def render_report(report: dict[str, Any]) -> str:
    lines = ["# Merged dataset report", "",
             f"Datasets: {', '.join(report['datasets'])}; {report['nuclei']:,} nuclei; label sets "
             f"{', '.join(report['label_sets'])}; encoder `{report['encoder']}`, {report['crop_size']} px crops; "
             f"device `{report['device']}`.", ""]
    if "validation" in report:
        lines += ["## Validation metrics (nuclei with an exact label in the set)", "",
                  "| stage | label set | n | accuracy | macro F1 | weighted F1 |", "|---|---|---|---|---|---|"]
        for stage, per_set in report["validation"].items():
            for s, m in per_set.items():
                lines.append(f"| {stage} | {s} | {m['count']} | {m['accuracy']:.3f} | {m['macro_f1']:.3f} | {m['weighted_f1']:.3f} |")
        lines += ["", "Stage A is the base module alone, B the correlation modules alone, C the mean of both "
                  "after cross-training (the method's prediction).", ""]
        lines += ["## Time per stage", "", "| stage | seconds | nuclei/s (median epoch) |", "|---|---|---|"]
        for stage, sec in report["stage_seconds"].items():
            lines.append(f"| {stage} | {sec} | {report['throughput_nuclei_per_s'][stage]:,.0f} |")
        lines += ["", "## Pseudo labels accepted per epoch of stage C", ""]
        if report["pseudo_labels"]:
            sets = [k for k in report["pseudo_labels"][0] if k != "epoch"]
            lines += ["| epoch | " + " | ".join(sets) + " |", "|---" * (len(sets) + 1) + "|"]
            lines += [f"| {r['epoch']} | " + " | ".join(str(r[s]) for s in sets) + " |" for r in report["pseudo_labels"]]
        lines.append("")
    if "demo_truth" in report:
        lines += ["## Filled labels against the demo world's truth", "",
                  "Nuclei whose label in a set was missing, scored against the latent cell type they were drawn as; "
                  "the baseline trains each label set on its own dataset only.", "",
                  "| label set | filled nuclei | merged accuracy | baseline accuracy | merged macro F1 | baseline macro F1 |",
                  "|---|---|---|---|---|---|"]
        for s, m in report["demo_truth"].items():
            lines.append(f"| {s} | {m['filled_nuclei']} | {m['merged_accuracy']:.3f} | {m['baseline_accuracy']:.3f} | "
                         f"{m['merged']['macro_f1']:.3f} | {m['baseline']['macro_f1']:.3f} |")
        lines.append("")
    lines += ["## Other timings (s)", ""] + [f"- {k}: {v}" for k, v in report["timings_s"].items()]
    return "\n".join(lines) + "\n"


from nucdata.merged import MergedData, open_merged  # noqa: E402,F401  (re-exported)
