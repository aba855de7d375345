"""Shared by the conversion benchmarks: run 'baseline' and 'prepare' in fresh processes.

Each measurement runs in its own interpreter so that one run's memory and caches do not
leak into the next; time and heap are measured in separate runs because tracemalloc
slows allocation.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

_PRELUDE = r"""
import json, sys, time, tempfile
from pathlib import Path
import numpy as np
import nucdata
mode, folder, trace = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "trace"
if trace:  # heap peak (numpy buffers included), not RSS: mapped file pages are cache, not memory use
    import tracemalloc
    tracemalloc.start()
start = time.perf_counter()
if mode == "baseline":
{baseline}
else:
    nucdata.prepare({dataset!r}, from_dir=folder, root=tempfile.mkdtemp(), check_counts=False)
print(json.dumps({{"seconds": time.perf_counter() - start,
                  "heap_peak_mib": tracemalloc.get_traced_memory()[1] / 2**20 if trace else None}}))
"""


def child_code(dataset: str, baseline: str) -> str:
    """A child script: ``baseline`` (indented code that reads the native files once) or prepare."""
    body = "\n".join("    " + line for line in baseline.strip("\n").splitlines())
    return _PRELUDE.format(baseline=body, dataset=dataset)


def run_child(code: str, mode: str, folder: Path, trace: bool = False) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", code, mode, str(folder), "trace" if trace else "time"],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(code: str, folder: Path, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds (runs interleaved so drift hits both alike) and heap peaks."""
    runs: dict[str, list[float]] = {"baseline": [], "prepare": []}
    for _ in range(repeats):
        for mode in runs:
            runs[mode].append(run_child(code, mode, folder)["seconds"])
    seconds = {m: statistics.median(v) for m, v in runs.items()}
    heap = {m: run_child(code, m, folder, trace=True)["heap_peak_mib"] for m in runs}
    return seconds, heap


# -- in-process comparisons (tiles.py, loaders.py) ----------------------------------------
def interleaved(measures: dict, repeats: int) -> dict[str, list[float]]:
    """Run every ``name -> measure()`` (a rate) once per repeat, ours and theirs alternating.

    The order of the rows rotates from one repeat to the next, so that neither a row's
    place in the sequence nor drift in the machine's load favours one of them; each
    row's median is the figure to quote.
    """
    names = list(measures)
    runs: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            runs[name].append(float(measures[name]()))
    return runs


def print_rows(title: str, medians: dict[str, float], baseline: str | None, floor: str | None,
               unit: str = "tiles/s", spread: dict[str, list[float]] | None = None) -> None:
    """One table: each row's median rate, its ratio to ``baseline`` and its share of ``floor``."""
    width = max(len(title), *map(len, medians))
    print(f"\n{title:{width}s}  {unit:>12s}  {'x baseline':>10s}  {'of floor':>8s}  range")
    for name, rate in medians.items():
        ratio = f"{rate / medians[baseline]:10.2f}" if baseline else " " * 10
        share = f"{rate / medians[floor]:8.2f}" if floor else " " * 8
        extra = ""
        if spread and spread.get(name):
            extra = f"  {min(spread[name]):,.0f}-{max(spread[name]):,.0f}"
        print(f"{name:{width}s}  {rate:12,.0f}  {ratio}  {share}{extra}")
    if baseline:
        print(f"(baseline: {baseline}; floor: {floor})")
