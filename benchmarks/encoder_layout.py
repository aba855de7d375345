"""The small encoder on the CPU: contiguous (NCHW) against channels-last input, training and inference.

``SmallCNN`` (the CPU encoder of build-merged's demo) makes its input channels-last on the
CPU (``nucdata_models/encoders.py``). This measures why: a forward and backward pass
(training) and a forward pass under ``torch.inference_mode`` (prediction) of one batch,
each layout alternately, ``--repeats`` times, with ``--threads`` torch threads; medians and
the ratio are printed, and the largest difference between the two layouts' outputs.

    python benchmarks/encoder_layout.py
    python benchmarks/encoder_layout.py --batch 64 --threads 2 --repeats 9
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.features(x)  # the encoder's layers, without its own layout choice


def _time(step, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="passes per measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from nucdata_models.encoders import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(4)
    x = torch.randn(args.batch, 4, args.size, args.size)
    layouts = {"contiguous": x.contiguous(), "channels_last": x.contiguous(memory_format=torch.channels_last)}

    def train(inp):
        return lambda: _features(model, inp).sum().backward()

    def infer(inp):
        def step():
            with torch.inference_mode():
                _features(model, inp)
        return step

    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for name, inp in layouts.items():
            times.setdefault(("train", name), []).append(_time(train(inp), args.steps))
            times.setdefault(("inference", name), []).append(_time(infer(inp), args.steps))
    print(f"SmallCNN, batch {args.batch} of {args.size} px, {args.threads} thread(s), median of {args.repeats}")
    for kind in ("train", "inference"):
        a, b = (statistics.median(times[kind, n]) for n in layouts)
        print(f"  {kind:9s} contiguous {a * 1e3:7.1f} ms  channels_last {b * 1e3:7.1f} ms  ratio {a / b:.2f}x")
    with torch.inference_mode():
        diff = (_features(model, layouts["contiguous"]) - _features(model, layouts["channels_last"])).abs().max()
    print(f"  largest output difference between the layouts: {float(diff):.2e}")


if __name__ == "__main__":
    main()
