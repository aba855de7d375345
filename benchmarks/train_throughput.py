"""Training throughput: the real data path against the encoder's pure compute rate.

For each encoder, in one run and on one device:

* compute: forward, backward and optimiser step of the base module on a random float
  batch already on the device (no data path at all);
* stage A: the real path — indices into the uint8 crop bank resident on the device,
  on-device augmentation (flips, rotations, colour jitter, blur), bf16 autocast and
  channels-last on CUDA, forward, partial-label loss over four label sets, step;
* stage C: the same plus the correlation modules and the pseudo-label losses.

Prints nuclei per second (median of ``--repeats`` timed windows) and the share of the
compute rate the data path costs. ``--nuclei N`` also times all three stages end to end
(one epoch each) on N generated nuclei.

    python benchmarks/train_throughput.py --quick                 # CPU-sized
    python benchmarks/train_throughput.py --device cuda --batch-size 512 --nuclei 350000
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nucdata_models import CrossTrainer, TrainConfig
from nucdata_models.losses import partial_label_loss, pseudo_labels
from nucdata_models.synthetic import make_world_data


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step, steps: int, batch: int, device: torch.device, repeats: int) -> float:
    step()  # warm-up (and compilation, if any)
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
    config = TrainConfig(encoder=encoder, batch_size=args.batch_size, device=args.device, compile=args.compile)
    trainer = CrossTrainer(config)
    trainer._build(data)
    device = trainer.device
    crops = data.crops.to(device)
    cands = {k: v.to(device) for k, v in data.candidates.items()}
    labels = {k: v.to(device) for k, v in data.labels.items()}
    base, heads = trainer._wrap(trainer.base), trainer._wrap(trainer.heads)
    params = list(trainer.base.parameters()) + list(trainer.heads.parameters())
    optimiser = torch.optim.Adam(params, lr=1e-4)
    generator = torch.Generator(device=device).manual_seed(0)
    b = args.batch_size
    random_x = torch.randn(b, crops.shape[1], crops.shape[2], crops.shape[3], device=device)
    if config.channels_last and device.type == "cuda":
        random_x = random_x.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, data.label_sets[0].size, (b,), device=device)

    def compute() -> None:
        logits = trainer._forward_base(base, random_x)
        loss = torch.nn.functional.cross_entropy(logits[data.names[0]], target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    def stage_a() -> None:
        idx = torch.randint(0, crops.shape[0], (b,), device=device, generator=generator)
        logits = trainer._forward_base(base, trainer._inputs(crops[idx], True, generator))
        loss = torch.stack([partial_label_loss(logits[s], cands[s][idx])[0] for s in data.names]).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    def stage_c() -> None:
        idx = torch.randint(0, crops.shape[0], (b,), device=device, generator=generator)
        logits = trainer._forward_base(base, trainer._inputs(crops[idx], True, generator))
        probs = {k: v.softmax(1) for k, v in logits.items()}
        out = heads({k: v.detach() for k, v in probs.items()})
        terms = []
        for s in data.names:
            c, lab = cands[s][idx], labels[s][idx]
            terms += [partial_label_loss(logits[s], c)[0], partial_label_loss(out[s], c)[0],
                      partial_label_loss(logits[s], pseudo_labels(out[s].softmax(1), c, lab, 0.99))[0],
                      partial_label_loss(out[s], pseudo_labels(probs[s], c, lab, 0.99))[0]]
        loss = torch.stack(terms).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    base.train()
    heads.train()
    return {name: timed(fn, args.steps, b, device, args.repeats) for name, fn in
            (("compute", compute), ("stage A", stage_a), ("stage C", stage_c))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--encoders", nargs="+", default=["small", "resnet50"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--crop-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--nuclei", type=int, default=0, help="also time the three stages on this many nuclei")
    parser.add_argument("--quick", action="store_true", help="CPU-sized: batch 64, 5 steps, 2 repeats")
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.steps, args.repeats = 64, 5, 2
    data = make_world_data(per_dataset=400, size=args.crop_size)
    device = CrossTrainer(TrainConfig(device=args.device)).device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; batch {args.batch_size}; crops {args.crop_size} px", flush=True)
    print(f"{'encoder':10s} {'compute/s':>12s} {'stage A/s':>12s} {'A cost':>8s} {'stage C/s':>12s} {'C vs A':>8s}")
    for encoder in args.encoders:
        r = measure(encoder, data, args)
        cost = 1 - r["stage A"] / r["compute"]
        print(f"{encoder:10s} {r['compute']:12,.0f} {r['stage A']:12,.0f} {cost:8.1%} {r['stage C']:12,.0f} "
              f"{r['stage C'] / r['stage A']:8.2f}", flush=True)
    print("A cost = share of the pure compute rate lost to the data path (augmentation, gathers, four losses).")
    if args.nuclei:
        start = time.perf_counter()
        big = make_world_data(per_dataset=args.nuclei // 5, size=args.crop_size)
        made = time.perf_counter() - start
        for encoder in args.encoders:
            trainer = CrossTrainer(TrainConfig(encoder=encoder, batch_size=args.batch_size, device=args.device,
                                               epochs={"A": 1, "B": 1, "C": 1}, compile=args.compile))
            result = trainer.fit(big)
            print(f"{encoder}: {len(big):,} nuclei (generated in {made:.0f} s), one epoch per stage: "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()), flush=True)


if __name__ == "__main__":
    main()
