"""The method study: every arm on generated worlds, with hierarchical-bootstrap statistics.

Each world seed generates one demo world of the chosen preset (``easy``, ``hard``,
``noisy``; see ``docs/demo-world.md``), prepared once and shared by every arm and
training seed. Every arm is trained with equal optimisation steps and scored on the
held-out images; :mod:`nucdata_models.study` holds the arms (a registry of decorated
functions, whose docstrings are the descriptions below), the declared family of
comparisons, the statistics (a hierarchical bootstrap over worlds, training seeds and
image groups; Holm over the whole family; equivalence tests) and the runs, and
``docs/method-study.md`` the write-up and the measured tables.

    python benchmarks/method_study.py --quick --world hard --world-seeds 1 2 --train-seeds 1 2 --out study
    python benchmarks/method_study.py --world hard --world-seeds 1 2 3 --train-seeds 1 2 3 \\
        --device cuda --out study-gpu                                           # the full study

Writes ``OUT/results.json`` (``{"config", "arms", "differences", "views", "family", "bootstrap",
"oracle_check", "runs"}``) and ``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from nucdata.labels import MERGED_LABEL_SETS
from nucdata_models import TrainConfig
from nucdata_models.study import (
    ARMS,
    arm_plan,
    oracle_check,
    prepare_world,
    render_markdown,
    run_arms,
    run_records,
    study_config,
    summarise,
)

sys.path.insert(0, str(Path(__file__).parent))
from _study_cli import add_training_arguments, resolve  # noqa: E402

#: ``--quick``: CPU-sized (two cores, minutes). The full study's defaults are below it.
#: One torch thread in the quick study: on a shared two-core machine, two threads per
#: process oversubscribe the cores and a fit ran 10-50x slower (measured); one thread
#: keeps it at seconds.
QUICK = {"scale": 1.0, "crop": 24, "epochs": (4, 2, 2), "batch_size": 64, "bootstrap": 2000, "threads": 1}
FULL = {"scale": 8.0, "crop": 32, "epochs": (10, 10, 10), "batch_size": 128, "bootstrap": 2000, "threads": None}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    arms = "\n".join(f"  {name}: {text}" for name, text in ARMS.items())
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"arms (their functions' docstrings):\n{arms}")
    parser.add_argument("--world", choices=("easy", "hard", "noisy"), default="hard")
    parser.add_argument("--world-seeds", type=int, nargs="+", default=[1, 2, 3],
                        help="world seeds (default 1 2 3; tune only on 1-20, check on others)")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help=f"CPU-sized: {QUICK}")
    parser.add_argument("--scale", type=float, help="demo scale (default: quick 1, full 8)")
    parser.add_argument("--crop", type=int, help="crop side in px (default: quick 24, full 32)")
    parser.add_argument("--validation", type=float, default=0.1)
    parser.add_argument("--test", type=float, default=0.3, help="share of groups held out and scored")
    parser.add_argument("--datasets", nargs="+", help="generate only these datasets (tests)")
    add_training_arguments(parser, "stain_jitter=0.5")
    return resolve(parser, parser.parse_args(argv), QUICK, FULL)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    label_sets = list(MERGED_LABEL_SETS)
    epochs = dict(zip("ABC", args.epochs, strict=True))

    def base(seed: int) -> TrainConfig:
        return TrainConfig.recipe("nucdata", encoder=args.encoder, epochs=dict(epochs), batch_size=args.batch_size,
                                  device=args.device, seed=seed, score_truth=False, **args.overrides)

    runs, worlds = [], {}
    for world_seed in args.world_seeds:
        world = prepare_world(world_seed, args.world, args.scale, args.crop, args.validation, args.test,
                              args.datasets, label_sets)
        worlds[world_seed] = world
        for train_seed in args.train_seeds:
            print(f"world {args.world} seed {world_seed}, training seed {train_seed}", flush=True)
            runs += run_arms(world, args.arms, base(train_seed), say=lambda m: print(m, flush=True))
    summary = summarise(runs, {w: p.clusters[1] for w, p in worlds.items()}, label_sets, draws=args.bootstrap)
    plans = {arm: arm_plan(arm, base(args.train_seeds[0])) for arm in args.arms}
    config = {
        "world": args.world, "world_seeds": args.world_seeds, "train_seeds": args.train_seeds,
        "quick": args.quick, "device": args.device, "encoder": args.encoder, "demo_scale": args.scale,
        "crop_size": args.crop, "batch_size": args.batch_size, "validation": args.validation, "test": args.test,
        "bootstrap_draws": args.bootstrap, "overrides": args.overrides,
        **study_config(args.arms, plans, worlds, runs, label_sets, epochs, args.world_seeds, args.train_seeds),
        "bayes_accuracy": {str(w): p.bayes_accuracy for w, p in worlds.items()},
    }
    results = {"config": config, **summary, "oracle_check": {m: oracle_check(summary, m) for m in ("macro_f1", "accuracy")},
               "runs": run_records(runs)}
    config["seconds"] = round(time.perf_counter() - started, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1, allow_nan=True))
    (out / "results.md").write_text(render_markdown(results))
    print(f"wrote {out / 'results.json'} and {out / 'results.md'} in {config['seconds']:.0f} s", flush=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
