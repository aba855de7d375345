"""Training throughput: the real data path against the encoder's pure compute rate.

For each encoder, in one run and on one device:

* compute: forward, backward and Adam step of the base module on a random float batch
  already on the device (no data path at all: no gather, no augmentation, one loss);
* stage A: ``CrossTrainer.stage("A").step`` — the code ``fit`` runs: indices into the
  uint8 crop bank resident on the device, on-device augmentation (flips, rotations,
  colour jitter, blur), bf16 autocast and channels-last on CUDA, forward, partial-label
  loss over every label set, clipped Adam step;
* stage C: ``CrossTrainer.stage("C").step`` — the same plus the correlation modules and
  the pseudo-label losses in both directions.

Prints nuclei per second (median of ``--repeats`` timed windows) and the ratio of each
stage's rate to the compute rate. ``--nuclei N`` also times ``fit`` end to end (one
epoch per stage) on N generated nuclei.

    python benchmarks/train_throughput.py --quick                     # CPU-sized
    python benchmarks/train_throughput.py --device cuda --batch-size 512 --nuclei 350000
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from nucdata_models import CrossTrainer, TrainConfig
from nucdata_models.study import make_synthetic_data
from nucdata_models.study.synthetic import default_datasets


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], object], steps: int, batch: int, device: torch.device, repeats: int,
          warmup: int) -> float:
    """Median nuclei per second over ``repeats`` windows of ``steps`` steps."""
    for _ in range(warmup):  # allocator, cuDNN autotuning, compilation
        step()
    _sync(device)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        rates.append(steps * batch / (time.perf_counter() - start))
    return statistics.median(rates)


def measure(encoder: str, data, args) -> dict[str, float]:
    config = TrainConfig(encoder=encoder, batch_size=args.batch_size, device=args.device, compile=args.compile,
                         seed=0)
    trainer = CrossTrainer(config)
    trainer.setup(data)  # the bank goes to the device once, as uint8
    device, b = trainer.device, args.batch_size
    n = len(data)
    shape = (b, *trainer.channels_of(data.crops).shape[1:])
    random_x = torch.randn(shape, device=device)
    if config.channels_last and device.type == "cuda":
        random_x = random_x.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, data.label_sets[0].size, (b,), device=device)
    first = data.names[0]

    stages = {name: trainer.stage(name) for name in ("A", "C")}
    compute_opt = torch.optim.Adam(trainer.base.parameters(), lr=1e-4)
    base = stages["A"].modules[0]

    def compute() -> None:
        with trainer.autocast():
            logits = base(random_x)[first].float()
        loss = torch.nn.functional.cross_entropy(logits, target)
        compute_opt.zero_grad(set_to_none=True)
        loss.backward()
        compute_opt.step()

    generator = torch.Generator(device=device).manual_seed(1)

    def stage_step(name: str) -> Callable[[], object]:
        stage = stages[name]
        stage.train()

        def step() -> object:
            idx = torch.randint(0, n, (b,), device=device, generator=generator)
            return stage.step(idx)

        return step

    base.train()
    rates = {"compute": timed(compute, args.steps, b, device, args.repeats, args.warmup)}
    for name in ("A", "C"):
        rates[f"stage {name}"] = timed(stage_step(name), args.steps, b, device, args.repeats, args.warmup)
    base.train()
    rates["compute (again)"] = timed(compute, args.steps, b, device, args.repeats, args.warmup)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--encoders", nargs="+", default=["small", "resnet50"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--crop-size", type=int, default=32)
    parser.add_argument("--bank", type=int, default=400, help="generated nuclei per dataset in the bank")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--nuclei", type=int, default=0, help="also time fit (one epoch per stage) on this many nuclei")
    parser.add_argument("--quick", action="store_true", help="CPU-sized: batch 32, 24 px, 3 steps, 3 repeats")
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.crop_size, args.steps, args.repeats, args.warmup, args.bank = 32, 24, 3, 3, 1, 100
    data = make_synthetic_data(per_dataset=args.bank, size=args.crop_size)
    device = CrossTrainer(TrainConfig(device=args.device)).device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; batch {args.batch_size}; crops {args.crop_size} px; "
          f"median of {args.repeats} x {args.steps} steps", flush=True)
    print(f"{'encoder':10s} {'compute/s':>11s} {'stage A/s':>11s} {'A/compute':>10s} {'stage C/s':>11s} "
          f"{'C/compute':>10s} {'compute again/s':>16s}")
    for encoder in args.encoders:
        r = measure(encoder, data, args)
        compute = statistics.mean([r["compute"], r["compute (again)"]])
        print(f"{encoder:10s} {r['compute']:11,.0f} {r['stage A']:11,.0f} {r['stage A'] / compute:10.2f} "
              f"{r['stage C']:11,.0f} {r['stage C'] / compute:10.2f} {r['compute (again)']:16,.0f}", flush=True)
    print("X/compute = stage rate / pure compute rate (mean of the two compute windows); 1.00 = the data path is free.")
    if args.nuclei:
        start = time.perf_counter()
        big = make_synthetic_data(per_dataset=max(1, args.nuclei // len(default_datasets())), size=args.crop_size,
                                  val_fraction=0.0)
        made = time.perf_counter() - start
        for encoder in args.encoders:
            trainer = CrossTrainer(TrainConfig(encoder=encoder, batch_size=args.batch_size, device=args.device,
                                               epochs={"A": 1, "B": 1, "C": 1}, compile=args.compile,
                                               score_truth=False))
            start = time.perf_counter()
            result = trainer.fit(big)
            wall = time.perf_counter() - start
            start = time.perf_counter()
            trainer.predict(big.crops)
            predict = time.perf_counter() - start
            print(f"{encoder}: {len(big):,} nuclei (generated in {made:.0f} s), one epoch per stage: "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
                  + f"; fit wall {wall:.1f} s; predict {predict:.1f} s", flush=True)


if __name__ == "__main__":
    main()
