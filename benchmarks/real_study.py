"""The real-data study: every arm of the method study on real CRCHisto images, and multitask transfer.

A copy of CRCHisto (any subset of its images, in the official layout) is prepared into a
temporary data home; its images are grouped into pseudo-slides by stain; on some groups
the real four-class annotation is replaced by coarser label sets derived from it
(``crc-epithelial`` = {epithelial, non-epithelial}, ``crc-inflammatory`` = {inflammatory,
other}), each a dataset with its own vocabulary and a table to the fine set; every arm
of the method study fills the fine labels, scored against the real annotation on
held-out groups that no stage sees (:mod:`nucdata_models.study`, ``_real``). Then the
multitask-transfer study (Tellez et al., MIDL 2020) on the same images. Real MoNuSeg and
TNBC files join as unlabelled data where given. ``docs/real-study.md`` reports it.

    python benchmarks/real_study.py --quick --data ../shared/realdata/crchisto --out real-study \\
        --monuseg ../shared/realdata/monuseg --tnbc ../shared/realdata/tnbc        # CPU, <= 15 minutes
    python benchmarks/real_study.py --data DIR --out real-study-gpu --device cuda \\
        --partition-seeds 1 2 3 4 5 --train-seeds 1 2 3                             # the full study, on a GPU

Writes ``OUT/results.json`` (the method study's keys ``{"config", "arms", "differences",
"views", "family", "bootstrap", "oracle_check", "runs"}``, plus ``"transfer"`` and
``"label_free"``) and ``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from nucdata_models import TrainConfig
from nucdata_models.study import (
    ARMS,
    DERIVED_SETS,
    STUDY_SETS,
    TRANSFER_TASKS,
    arm_plan,
    derived_table,
    oracle_check,
    prepare_real_world,
    render_markdown,
    render_transfer_markdown,
    run_arms,
    run_records,
    study_config,
    summarise,
    transfer_study,
)

sys.path.insert(0, str(Path(__file__).parent))
from _study_cli import add_training_arguments, resolve  # noqa: E402

#: ``--quick``: CPU-sized (one torch thread; two train seeds; the training pool capped).
QUICK = {"crop": 24, "epochs": (4, 2, 2), "batch_size": 64, "bootstrap": 2000, "threads": 1,
         "train_seeds": [1, 2], "partition_seeds": [1], "max_train": 1500, "max_validation": 400,
         "max_unlabelled": 300, "transfer_epochs": 6,
         "label_free_images": 3}
#: The full study (a GPU): every nucleus, more epochs, partitions and seeds.
FULL = {"crop": 32, "epochs": (10, 10, 10), "batch_size": 128, "bootstrap": 2000, "threads": None,
        "train_seeds": [1, 2, 3], "partition_seeds": [1, 2, 3, 4, 5], "max_train": None, "max_validation": None,
        "max_unlabelled": None, "transfer_epochs": 30,
        "label_free_images": None}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    arms = "\n".join(f"  {name}: {text}" for name, text in ARMS.items())
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"arms (their functions' docstrings):\n{arms}")
    parser.add_argument("--data", type=Path, required=True, help="a copy of CRCHisto in its official layout")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help=f"CPU-sized: {QUICK}")
    parser.add_argument("--monuseg", type=Path, help="real MoNuSeg training pairs, joining as unlabelled data")
    parser.add_argument("--tnbc", type=Path, help="real TNBC Slide_NN/GT_NN folders, joining as unlabelled data")
    parser.add_argument("--partition-seeds", type=int, nargs="+",
                        help="partitions of the groups (the study's world seeds; default: quick 1, full 1-5)")
    parser.add_argument("--train-seeds", type=int, nargs="+", help="default: quick 1 2, full 1 2 3")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--coarse", nargs="+", choices=list(DERIVED_SETS), default=list(STUDY_SETS),
                        help="the coarse datasets' label sets (default: %(default)s)")
    parser.add_argument("--groups", type=int, default=10, help="pseudo-slides (default 10, the dataset's WSIs)")
    parser.add_argument("--grouping", choices=("stain", "image"), default="stain")
    parser.add_argument("--test", type=float, default=0.4, help="share of images in held-out groups")
    parser.add_argument("--validation", type=float, default=0.1, help="share of training-group images validating")
    parser.add_argument("--crop", type=int, help="crop side in px at CRCHisto's resolution (quick 24, full 32)")
    parser.add_argument("--max-train", type=int, help="cap on training nuclei (quick 1500; full: all)")
    parser.add_argument("--max-validation", type=int, help="cap on validation nuclei (quick 400; full: all)")
    parser.add_argument("--max-unlabelled", type=int, help="cap per unlabelled dataset (quick 300; full: all)")
    parser.add_argument("--transfer-epochs", type=int, help="epochs of each transfer encoder (quick 6, full 30)")
    parser.add_argument("--transfer-tasks", nargs="+", choices=list(DERIVED_SETS), default=list(TRANSFER_TASKS))
    parser.add_argument("--no-transfer", action="store_true", help="skip the multitask-transfer study")
    parser.add_argument("--label-free-images", type=int,
                        help="images of each real unlabelled dataset in the label-free checks (quick 3; full: all)")
    parser.add_argument("--no-label-free", action="store_true", help="skip the label-free checks")
    add_training_arguments(parser, "background_balance=false")
    return resolve(parser, parser.parse_args(argv), QUICK, FULL)


def label_free_section(world, base: TrainConfig, args: argparse.Namespace, say) -> tuple[dict | None, str]:
    """The label-free checks (``nucdata_models.merge.label_free_checks``) of the nucdata arm on real unlabelled pixels.

    The classifier is the ``nucdata`` arm trained on the first partition with the first
    training seed (:func:`nucdata_models.study.study_classifier`); the images are the real
    MoNuSeg and TNBC files given (``--label-free-images`` of each), as points (the model
    was trained on points); the reference stains are CRCHisto's, MoNuSeg's and TNBC's
    real images (whichever are given).
    """
    from nucdata_models.merge import label_free_checks, real_images, render_label_free
    from nucdata_models.study import points_only, study_classifier

    sources = {name: path for name, path in (("monuseg", args.monuseg), ("tnbc", args.tnbc))
               if path is not None and path.is_dir()}
    if not sources:
        text = "Not run: no real MoNuSeg or TNBC folder was given (--monuseg, --tnbc)."
        return None, text
    limit = args.label_free_images
    images = {name: points_only(real_images(path, name, limit=limit)) for name, path in sources.items()}
    references = {"crchisto": [im.rgb for im in real_images(args.data, "crchisto", limit=limit)]}
    references |= {name: [im.rgb for im in records] for name, records in images.items()}
    classifier = study_classifier(world, "nucdata", base, say)
    result = label_free_checks(classifier, images, references, progress=None)
    return result, render_label_free(result).split("\n", 2)[2]


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    epochs = dict(zip("ABC", args.epochs, strict=True))
    say = lambda m: print(m, flush=True)  # noqa: E731
    unlabelled = {name: path for name, path in (("monuseg", args.monuseg), ("tnbc", args.tnbc)) if path is not None}

    def base(seed: int) -> TrainConfig:
        return TrainConfig.recipe("nucdata", encoder=args.encoder, epochs=dict(epochs), batch_size=args.batch_size,
                                  device=args.device, seed=seed, score_truth=False, **args.overrides)

    runs, worlds = [], {}
    for partition_seed in args.partition_seeds:
        world = prepare_real_world(args.data, partition_seed, args.crop, coarse=args.coarse, n_groups=args.groups,
                                   grouping=args.grouping, test=args.test, validation=args.validation,
                                   max_train=args.max_train, max_validation=args.max_validation,
                                   unlabelled=unlabelled, max_unlabelled=args.max_unlabelled, say=say)
        worlds[partition_seed] = world
        for train_seed in args.train_seeds:
            say(f"CRCHisto partition {partition_seed}, training seed {train_seed}")
            runs += run_arms(world, args.arms, base(train_seed), say=say)
    label_sets = worlds[args.partition_seeds[0]].data.names
    summary = summarise(runs, {w: p.clusters[1] for w, p in worlds.items()}, label_sets, draws=args.bootstrap)
    plans = {arm: arm_plan(arm, base(args.train_seeds[0])) for arm in args.arms}
    transfer = None
    if not args.no_transfer:
        say("multitask transfer")
        transfer = transfer_study(worlds, args.train_seeds, args.transfer_epochs, args.batch_size,
                                  args.transfer_tasks, args.device, args.encoder, args.bootstrap, say=say)
    label_free, label_free_text = (None, "Not run (--no-label-free).")
    if not args.no_label_free:
        label_free, label_free_text = label_free_section(worlds[args.partition_seeds[0]], base(args.train_seeds[0]),
                                                         args, say)
    first = worlds[args.partition_seeds[0]]
    config = {
        "world": "crchisto (real images, real classes)", "data": str(args.data),
        "world_seeds": args.partition_seeds, "partition_seeds": args.partition_seeds, "train_seeds": args.train_seeds,
        "coarse": args.coarse, "quick": args.quick, "device": args.device, "encoder": args.encoder,
        "crop_size": args.crop, "batch_size": args.batch_size, "grouping": args.grouping, "groups": args.groups,
        "validation": args.validation, "test": args.test,
        "caps": {"max_train": args.max_train, "max_validation": args.max_validation,
                 "max_unlabelled": args.max_unlabelled},
        "unlabelled": {k: str(v) for k, v in unlabelled.items()},
        "bootstrap_draws": args.bootstrap, "overrides": args.overrides,
        **study_config(args.arms, plans, worlds, runs, label_sets, epochs, args.partition_seeds, args.train_seeds,
                       world_fields=lambda p: {"design": p.design}),
        "truth": "the real CRCHisto annotation (the fine class of every classified nucleus, projected into each "
                 "derived set); nuclei without a class are never scored",
        "tables": [row for a in label_sets for b in label_sets if a != b for row in derived_table(a, b)],
        "derived_sets": {s: {"classes": list(DERIVED_SETS[s].classes), "of_fine": list(DERIVED_SETS[s].of_fine)}
                         for s in label_sets if s in DERIVED_SETS},
        "bayes_accuracy": {},
        "store": first.design["store"],
    }
    results = {"config": config, **summary,
               "oracle_check": {m: oracle_check(summary, m) for m in ("macro_f1", "accuracy")},
               "runs": run_records(runs), "transfer": transfer, "label_free": label_free}
    config["seconds"] = round(time.perf_counter() - started, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1, allow_nan=True))
    markdown = render_markdown(results)
    if transfer is not None:
        markdown += "\n" + render_transfer_markdown(transfer)
    markdown += "\n## Label-free checks\n\n" + label_free_text + "\n"
    (out / "results.md").write_text(markdown)
    say(f"wrote {out / 'results.json'} and {out / 'results.md'} in {config['seconds']:.0f} s")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
