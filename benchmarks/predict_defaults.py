"""CPU prediction: nuclei per second by batch size and torch thread count, quiet and beside a busy process.

What the CPU defaults are chosen from: ``TrainConfig.eval_batch_size`` (the batch of
``CrossTrainer.predict`` and of the scoring predictions) and the number of torch
intra-op threads build-merged runs with on a CPU. The model is the nucdata recipe's
(``TrainConfig()``: its encoder, 32 px crops, every merged label set), untrained (the
speed of a forward pass does not depend on the weights), on ``--nuclei`` synthetic crops
(``nucdata_models.study.make_synthetic_data``).

Every (threads, batch) cell is measured once per repeat, the cells in a rotated order,
each ``CrossTrainer.predict`` over all the crops (after one warm-up batch); medians are
printed, with the ratio to the fastest cell. ``--busy`` also measures each cell beside
one competing CPU-bound process (a Python busy loop, what another job on a shared
two-core machine is), alternating quiet and busy repeats.

    python benchmarks/predict_defaults.py
    python benchmarks/predict_defaults.py --batches 128 1024 --threads 1 2 --busy
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch


def trainer_and_crops(nuclei: int):
    """An untrained nucdata-recipe trainer (CPU) and ``nuclei`` synthetic uint8 crops."""
    from nucdata_models import CrossTrainer, TrainConfig
    from nucdata_models.study import make_synthetic_data

    data = make_synthetic_data(per_dataset=max(1, nuclei // 3), datasets=["pannuke", "consep", "monuseg"])
    trainer = CrossTrainer(TrainConfig(device="cpu"))
    crops = trainer.channels_of(data.crops)
    trainer.build(data.label_sets, crops.shape[1], crops.shape[-1])
    return trainer, crops


def rate(trainer, crops: torch.Tensor, batch: int, threads: int) -> float:
    """Nuclei per second of ``trainer.predict`` over ``crops`` at this batch size and thread count."""
    torch.set_num_threads(threads)
    trainer.config.eval_batch_size = batch
    trainer.predict(crops[:batch])  # warm-up: allocator, kernels for this shape
    start = time.perf_counter()
    trainer.predict(crops)
    return crops.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nuclei", type=int, default=4096)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--busy", action="store_true", help="also measure beside one busy process")
    args = parser.parse_args()
    os.environ.setdefault("NUCDATA_QUIET", "1")  # no progress lines from predict
    trainer, crops = trainer_and_crops(args.nuclei)
    cells = [(t, b) for t in args.threads for b in args.batches]
    conditions = ["quiet", "busy"] if args.busy else ["quiet"]
    runs: dict[tuple[str, int, int], list[float]] = {}
    for r in range(args.repeats):
        for condition in conditions:  # quiet and busy alternate, repeat by repeat
            competitor = None
            if condition == "busy":
                competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                time.sleep(0.5)
            try:
                for t, b in cells[r % len(cells):] + cells[: r % len(cells)]:
                    runs.setdefault((condition, t, b), []).append(rate(trainer, crops, b, t))
            finally:
                if competitor is not None:
                    competitor.kill()
                    competitor.wait()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{crops.shape[0]} crops of {crops.shape[-1]} px, encoder {trainer.config.encoder!r}; "
          f"{os.cpu_count()} CPU cores; torch {torch.__version__}; load average {load:.1f} at the end; "
          f"medians of {args.repeats} interleaved repeats")
    for condition in conditions:
        best = max(statistics.median(v) for (c, _, _), v in runs.items() if c == condition)
        print(f"\n{condition}: {'threads':>7s} {'batch':>6s} {'nuclei/s':>9s} {'x best':>7s}  range")
        for t, b in cells:
            v = runs[(condition, t, b)]
            m = statistics.median(v)
            print(f"{'':{len(condition) + 1}s} {t:7d} {b:6d} {m:9,.0f} {m / best:7.2f}  {min(v):,.0f}-{max(v):,.0f}")


if __name__ == "__main__":
    main()
