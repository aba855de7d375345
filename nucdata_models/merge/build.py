"""``build-merged``: every nucleus of every dataset labelled under every label set.

The orchestration only: prepare the datasets, split them by groups (duplicates found),
cut the crops, train (or load ``--checkpoint``), calibrate the published probability
(:mod:`nucdata_models.calibration`, fitted on the validation split after training and
stored in ``model.json``), fill every label, and publish the output folder atomically. The output's format lives in :mod:`nucdata.store`; the
report in :mod:`.report`; the demo world's scoring in :mod:`.demo_eval`.

Safety: the output folder is written only when it is missing, empty, or a previous
merged output (it holds nucdata's marker file); anything else is refused unless
``overwrite``. The new output is built beside it and swapped in with
:func:`nucdata._util.atomic.swap_dir`: a kill at any point leaves the old output or the new
one, and the next run restores or cleans up. Work that a rerun reuses lives in
``.<out>.work/``: each stage's checkpoint (reused only for the same data and settings,
see :meth:`.train.CrossTrainer.fit`) and, for ``--demo``, one data home per world.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nucdata.errors import OutputFolderError
from nucdata.labels import MERGED_LABEL_SETS
from nucdata_models.calibration import Calibration, calibrated_fill, calibration_scores
from nucdata_models.data import ANNOTATED, MAPPED, OUTSIDE_LABEL
from nucdata_models.fill import FilledLabels, fill_labels, published_fields
from nucdata_models.merge.defaults import (
    ALL_DATASETS,
    DEMO_EPOCHS,
    DEMO_SCALE,
    RECIPE_CROP_SIZE,
)
from nucdata_models.merge.splits import TEST, TRAIN, grouped_split
from nucdata_models.train import CrossTrainer, TrainConfig, unseen_probs

__all__ = ["BuildOptions", "OutputFolderError", "build_merged", "work_dir"]


@dataclass
class BuildOptions:
    """What ``nucdata build-merged`` was asked for.

    ``config`` holds :class:`.train.TrainConfig` fields that override the recipe's
    (``epochs``, ``encoder``, ``batch_size``, ``device``, ``weights``, ...).
    """

    out: Path
    datasets: Sequence[str] | None = None  # None: every dataset that is available
    label_sets: Sequence[str] = MERGED_LABEL_SETS
    checkpoint: Path | None = None
    recipe: str = "nucdata"
    config: dict[str, Any] = field(default_factory=dict)
    crop_size: int | None = None  # None: the recipe's (nucdata 32, paper 64)
    overlays: int | None = 16  # images per (label set, dataset); None = every image
    root: Path | None = None
    demo: bool = False
    demo_scale: int = DEMO_SCALE
    world: str = "easy"  # --demo: WorldConfig preset (easy, hard, noisy)
    seed: int = 0
    validation: float = 0.15
    test: float = 0.15
    mapped_as_truth: bool = False
    overwrite: bool = False
    patch_labels: Sequence[Path] = ()  # --patch-labels: patch-flag CSVs (nucdata_models.merge.flags)
    # --demo: train the baseline in a parallel process (None: when a CPU core would idle otherwise)
    parallel_baseline: bool | None = None

    def train_config(self) -> TrainConfig:
        """The recipe's configuration with this build's overrides and seed.

        ``score_truth`` is off unless asked for: the build predicts every nucleus once,
        after training, and scores that (a per-stage score of the filled labels would
        predict every nucleus again after each stage, and the report does not show it).
        """
        overrides = {"seed": self.seed, "score_truth": False, **self.config}
        if self.demo and "epochs" not in self.config and self.recipe == "nucdata":
            overrides["epochs"] = dict(DEMO_EPOCHS)
        return TrainConfig.recipe(self.recipe, **overrides)

    @property
    def crop(self) -> int:
        return self.crop_size or RECIPE_CROP_SIZE[self.recipe]


def work_dir(out: Path) -> Path:
    """Where reusable work of the output ``out`` lives: ``.<name>.work`` beside it."""
    return out.parent / f".{out.name}.work"


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Refuse an output folder that holds anything nucdata did not write (unless ``overwrite``)."""
    from nucdata.store import is_merged_output

    here = Path.cwd().resolve()
    target = Path(out).resolve()
    if str(out).strip() in ("", ".") or target == here or target in here.parents or target == Path(target.anchor):
        raise OutputFolderError(f"--out {str(out)!r} is {target}, the current folder, one above it or the root: "
                                "the merged output replaces its folder as a whole; name a new folder, e.g. "
                                "--out merged/")
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputFolderError(f"{out}: exists and is not a folder; choose another --out.")
    if is_merged_output(out) or overwrite:
        return
    entries = sorted(p.name for p in out.iterdir())
    if entries:
        shown = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
        raise OutputFolderError(
            f"{out}: holds files that nucdata build-merged did not write ({shown}); nothing was changed. "
            "Choose an empty or new folder, or pass --overwrite to replace it.")


def _available(names: Sequence[str] | None, root: Path | None, say: Callable[[str], None]) -> list[str]:
    """Datasets to use: prepared, or preparable from local files without the network."""
    import nucdata
    from nucdata.acquire import is_prepared
    from nucdata.errors import NucdataError

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


def demo_key(options: BuildOptions) -> str:
    """Identity of a demo world: a different seed or scale is a different world."""
    return hashlib.sha256(json.dumps({"seed": options.seed, "scale": options.demo_scale, "world": options.world,
                                      "datasets": sorted(options.datasets or ALL_DATASETS)}).encode()).hexdigest()[:12]


def build_merged(options: BuildOptions, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole chain and write the merged dataset into ``options.out``.

    Two runs into the same output wait on a lock in its work folder. A run first repairs
    what a killed run left (restores the previous output, removes stale staging
    folders), then refuses an output folder that holds files nucdata did not write.
    """
    from nucdata._util.atomic import recover
    from nucdata._util.locks import dataset_lock
    from nucdata.store import is_merged_output

    out = Path(options.out).resolve()
    work = work_dir(out)
    work.mkdir(parents=True, exist_ok=True)
    with dataset_lock(work):
        for line in recover(out, complete=is_merged_output).lines():
            say(f"{out.name}: {line}")
        check_output_folder(out, options.overwrite)
        return _build(options, out, work, say)


def _build(options: BuildOptions, out: Path, work: Path, say: Callable[[str], None]) -> dict[str, Any]:
    import nucdata
    from nucdata.views import crops_of
    from nucdata_models.merge.bridge import training_data

    config = options.train_config()
    began = time.perf_counter()
    timings: dict[str, float] = {}
    root = options.root
    truth_by_image: dict[str, dict[str, list]] = {}
    world = None
    if options.demo:
        from nucdata_models.merge.demo_eval import install_demo_world, make_world

        root = work / f"demo-{demo_key(options)}"
        start = time.perf_counter()
        world = make_world(options.seed, options.world)
        truth_by_image = install_demo_world(root, options.seed, options.datasets, say, options.demo_scale, world)
        timings["generate demo archives"] = time.perf_counter() - start

    start = time.perf_counter()
    names = _available(options.datasets, root, say)
    members = [nucdata.load(n, root=root) for n in names]
    timings["prepare"] = time.perf_counter() - start

    start = time.perf_counter()
    groups = grouped_split(members, options.validation, options.test, options.seed)
    for name, dups in groups.duplicates.items():
        for other, count in dups.items():
            say(f"{name}: {count} images are {other}'s, byte for byte; trained on once, as {other}'s")
    say(f"cutting crop banks ({options.crop} px) for {', '.join(names)}")
    crops = crops_of(members, options.crop)
    data = training_data(members, crops, list(options.label_sets), torch.from_numpy(groups.split))
    if options.demo:
        from nucdata_models.merge.demo_eval import truth_labels

        data.truth = {s: torch.from_numpy(t)
                      for s, t in truth_labels(members, truth_by_image, data.names, world).items()}
    timings["crop banks and splits"] = time.perf_counter() - start
    if options.patch_labels:  # flag 0: the class leaves the candidates of every nucleus in the patch
        from nucdata_models.merge.flags import apply_patch_flags

        data.patch_flags = apply_patch_flags(data, members, options.patch_labels)  # type: ignore[attr-defined]
        for t in data.patch_flags[1]["tables"]:
            say(f"patch flags {t['file']}: {t['narrowed']:,} nuclei of {t['dataset']} narrowed under "
                f"{t['label_set']}; {t['conflicts_with_annotations']:,} conflicts with annotations (they win)")
    say(f"{len(data):,} nuclei from {len(names)} datasets under {', '.join(options.label_sets)}; "
        f"{int((data.split == TRAIN).sum()):,} train, {int((data.split == 1).sum()):,} validation, "
        f"{int((data.split == TEST).sum()):,} held out")

    baseline = None
    try:
        if options.checkpoint is not None:
            trainer = CrossTrainer.load(options.checkpoint, data.label_sets, device=config.device)
            result = None
            say(f"using checkpoint {options.checkpoint}")
        else:
            trainer = CrossTrainer(config)
        if options.demo:  # the baseline needs the data and the configuration only: it trains beside the method
            from nucdata_models.merge.demo_eval import BaselineRun

            baseline = BaselineRun(data, trainer.config, work / "baseline", options.parallel_baseline).start()
            if baseline.parallel:
                say("demo: training the baseline (each label set from its own dataset's annotations, equal steps) "
                    "in a parallel process")
        if options.checkpoint is None:
            start = time.perf_counter()
            result = trainer.fit(data, workdir=work / "stages", progress=say)
            timings["train (stages A, B, C and their validation)"] = time.perf_counter() - start
        return _finish(options, out, say, began, timings, names, members, groups, crops, data, trainer, result,
                       baseline)
    finally:
        if baseline is not None:
            baseline.close()


def _finish(options: BuildOptions, out: Path, say: Callable[[str], None], began: float, timings: dict[str, float],
            names, members, groups, crops, data, trainer: CrossTrainer, result, baseline) -> dict[str, Any]:
    """After training: predict every nucleus once, calibrate, score the demo, write and publish."""
    from nucdata._util.faults import fault_point

    start = time.perf_counter()
    predictions = trainer.predict(data.crops)
    timings["predict"] = time.perf_counter() - start
    say(f"predicted {len(data):,} nuclei under {len(data.label_sets)} label sets in {timings['predict']:.1f} s")

    start = time.perf_counter()
    calibration = _stored_calibration(trainer, options, say)
    weights = trainer.candidate_weights(data)  # ambiguous rows: the posterior given the source class too
    unseen = unseen_probs(trainer.config, data, progress=say) if calibration is None else None
    filled, calibration = calibrated_fill(predictions, data, calibration, weights=weights, unseen=unseen)
    uncalibrated = {s.name: fill_labels(predictions[s.name].probs, data.labels[s.name], data.candidates[s.name],
                                        data.provenance[s.name], s.size, weights=weights.get(s.name))
                    for s in data.label_sets}
    calibration_report = {**calibration.to_dict(), "scores": calibration_scores(data, filled, uncalibrated, TEST)}
    timings["calibrate"] = time.perf_counter() - start
    for s, per_set in calibration_report["scores"].items():
        head = per_set["groups"].get("filled" if per_set["scored_against"] == "truth" else "mapped")
        if head:
            say(f"calibration: {s}: held-out ECE {head['ece_uncalibrated']:.3f} -> {head['ece']:.3f} "
                f"({head['count']} nuclei; calibrated probabilities would score {head['ece_floor']:.3f} by chance)")

    from nucdata._util.atomic import discard, staging_dir, swap_dir
    from nucdata.store import write_marker
    from nucdata_models.merge.report import make_report, render_report, write_reliability_diagrams

    tmp = staging_dir(out)
    try:
        start = time.perf_counter()
        offsets = np.concatenate([[0], np.cumsum([m.store.n_nuclei for m in members])])
        for d, member in enumerate(members):
            rows = slice(int(offsets[d]), int(offsets[d + 1]))
            write_dataset(tmp, member, data, filled, rows, options, say)
            fault_point("build-merged:dataset-written")
        timings["write pickles, merged columns and overlays"] = time.perf_counter() - start
        demo_scores = None
        if options.demo:  # after the writing, which the baseline's parallel process overlaps
            from nucdata_models.merge.demo_eval import score_demo

            start = time.perf_counter()
            demo_scores = score_demo(data, predictions, trainer, say, filled, baseline)
            elapsed = time.perf_counter() - start - baseline.waited
            if baseline.where.startswith("a parallel"):
                timings["baseline (in a parallel process, beside the above; not added to the total)"] = \
                    baseline.seconds
                timings["wait for the baseline's process"] = baseline.waited
            else:
                timings["baseline (own annotations, equal steps)"] = baseline.seconds
                elapsed -= baseline.seconds
            timings["score the demo"] = elapsed
        start = time.perf_counter()
        trainer.save(tmp / "model.pt", extra={"datasets": names, "recipe": options.recipe,
                                               "calibration": calibration.to_dict()})
        calibration_report["diagrams"] = write_reliability_diagrams(tmp, calibration_report["scores"])
        if getattr(data, "patch_flags", None) is not None:  # counted as their own provenance
            from nucdata_models.merge.flags import mark_flagged

            mark_flagged(data, data.patch_flags[0])
        report = make_report(options, names, data, result, trainer, timings, demo_scores, groups,
                             calibration=calibration_report)
        report["output"] = str(out)
        write_shippable(tmp, trainer, members, data, crops, filled, calibration, report, options)
        from nucdata._util.atomic import atomic_write_json, atomic_write_text

        timings["write the model, classifier and diagrams"] = time.perf_counter() - start
        # the total is taken here, before the report itself is written (milliseconds)
        timings["total"] = time.perf_counter() - began
        report["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
        atomic_write_json(tmp / "report.json", report)
        flags_md = ""
        if getattr(data, "patch_flags", None) is not None:
            from nucdata_models.merge.flags import render_patch_flags

            report["patch_flags"] = data.patch_flags[1]
            flags_md = "\n" + render_patch_flags(report["patch_flags"])
            atomic_write_json(tmp / "report.json", report)
        atomic_write_text(tmp / "report.md", render_report(report) + flags_md)
        write_marker(tmp, {"datasets": names, "label_sets": list(data.names), "recipe": options.recipe,
                           "classes": {spec.name: spec.size for spec in data.label_sets}})
        fault_point("build-merged:staged")
        swap_dir(tmp, out, label="build-merged")
    finally:
        discard(tmp)
    say(f"merged dataset written to {out}")
    return report


def write_shippable(folder: Path, trainer: CrossTrainer, members, data, crops, filled: dict[str, FilledLabels],
                    calibration: Calibration, report: dict[str, Any], options: BuildOptions) -> Path:
    """The shippable classifier: ``classifier.safetensors`` and its sidecar ``classifier.json``
    (:mod:`nucdata_models.merge.card`: weights, label sets, µm/px, calibration, input statistics,
    model card); adds the held-out metrics to ``report``."""
    from nucdata_models.merge.card import write_classifier

    return write_classifier(folder, trainer, members, data, np.asarray(crops.image_index),
                            {s: f.predicted for s, f in filled.items()}, calibration.to_dict(), report,
                            options.demo)


def _stored_calibration(trainer: CrossTrainer, options: BuildOptions, say: Callable[[str], None]
                        ) -> Calibration | None:
    """A ``--checkpoint``'s calibration (``model.json``'s ``calibration``); ``None``: fit one now."""
    stored = (getattr(trainer, "meta", None) or {}).get("calibration") if options.checkpoint is not None else None
    if stored is None:
        if options.checkpoint is not None:
            say(f"{options.checkpoint}: no calibration stored; fitting one on this run's validation split")
        return None
    say(f"using the calibration stored with {options.checkpoint}")
    return Calibration.from_dict(stored, where=f"{options.checkpoint}: calibration")


def write_dataset(folder: Path, member, data, filled: dict[str, FilledLabels], rows: slice,
                  options: BuildOptions, say: Callable[[str], None]) -> None:
    """Pickles, merged columns, the linked store and overlays of one dataset (``rows`` of ``data``).

    ``filled`` holds, per label set, the calibrated merged labels of every nucleus
    (:func:`nucdata_models.calibration.calibrated_fill`).
    """
    from nucdata._util.paths import check_name
    from nucdata.dataset import NucleusDataset
    from nucdata.exports import write_overlays
    from nucdata.store import (
        Store,
        link_store,
        write_merged_info,
        write_merged_labels,
        write_published_pickle,
    )

    store = member.store
    # names read from the store's manifest become folders and files: each must stay inside the output
    where = store.path / "manifest.json"
    check_name(member.name, source=where, element="'dataset'")
    for spec in data.label_sets:
        check_name(spec.name, source=where, element="a label set name")
    store_dir = link_store(store.path, folder / "stores" / member.name)
    image_of = np.asarray(store.column("nuclei", "image"))
    centroids = np.asarray(store.column("nuclei", "centroid"))
    image_names = [str(n) for n in np.asarray(store.column("images", "name"))]
    for spec in data.label_sets:
        s = spec.name
        f = filled[s].subset(rows)
        labels, prov = data.labels[s][rows], data.provenance[s][rows]
        truthful = prov == ANNOTATED
        if options.mapped_as_truth:
            truthful |= prov == MAPPED
        annotation = torch.where(truthful, labels, torch.full_like(labels, -1))
        annotation = torch.where(prov == OUTSIDE_LABEL, torch.full_like(labels, -2), annotation)
        # Fields 2 and 3: the model's own label and its calibrated probability, except where
        # the annotation decides the candidate set (ambiguous: the best candidate, renormalised)
        # or says outside (-2).
        field_label, field_prob = published_fields(f)
        columns = {"label": f.label.numpy(), "probability": f.probability.numpy(),
                   "source": f.source.numpy(), "predicted": f.predicted.numpy(),
                   "predicted_probability": f.predicted_probability.numpy(), "annotation": annotation.numpy()}
        write_merged_labels(folder, member.name, s, columns)
        write_published_pickle(folder / s / f"{member.name}.pkl", image_names, image_of, centroids,
                               field_label.numpy(), field_prob.numpy(), annotation.numpy())
    write_merged_info(folder, member.name, {
        "label_sets": list(data.names), "nuclei": store.n_nuclei, "store_created": store.manifest.get("created"),
        "converter_version": store.manifest.get("converter_version"),
        "label_tables": store.manifest.get("label_tables"), "mapped_as_truth": options.mapped_as_truth,
    })
    if options.overlays != 0:
        from nucdata.store import read_merged_labels

        for s in data.names:
            _, merged = read_merged_labels(folder, member.name, s)
            view = NucleusDataset(Store(store_dir), None, merged=merged)
            write_overlays(view, folder / "overlays" / s / member.name, limit=options.overlays)
    say(f"wrote {member.name}: {store.n_nuclei:,} nuclei under {len(data.names)} label sets")
