"""Start-up time of the command line and of ``import nucdata``, against a bare interpreter.

Each command runs in a fresh process (``subprocess``), all of them interleaved, repeat
after repeat, so that drift in the machine's load hits every command alike; the table
gives the median and the fastest run, and the median's ratio to ``python -c pass`` (the
interpreter's own start-up, the floor no command can go under). One warm-up round first
fills the bytecode caches. Issue 19's target: ``nucdata --help`` and
``nucdata build-merged --help`` under 2 s on a quiet two-core machine.

``--importtime`` adds Python's own account (``python -X importtime``) of one run of each
command: the modules that cost the most, by cumulative and by self time, and whether
torch or xarray were imported at all (they must not be: a test checks ``import nucdata``).

    python benchmarks/cli_startup.py
    python benchmarks/cli_startup.py --repeats 21 --importtime
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_S = 2.0
HEAVY = ("torch", "xarray", "pandas", "scipy", "matplotlib", "skimage", "numpy", "PIL", "click", "pooch")


def _cli() -> list[str]:
    """The ``nucdata`` console script beside this interpreter (what a user runs), else an equivalent."""
    script = Path(sys.executable).with_name("nucdata")
    if script.is_file():
        return [str(script)]
    found = shutil.which("nucdata")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from nucdata.cli import main; sys.exit(main())"]


def commands() -> dict[str, list[str]]:
    """Label -> argv of every command timed; the first is the baseline."""
    cli = _cli()
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        'python -c "import nucdata"': [sys.executable, "-c", "import nucdata"],
        "nucdata --help": [*cli, "--help"],
        "nucdata build-merged --help": [*cli, "build-merged", "--help"],
    }


def run_once(argv: list[str]) -> float:
    """Wall-clock seconds of one run (output discarded; a failure stops the benchmark)."""
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def measure(cmds: dict[str, list[str]], repeats: int) -> dict[str, list[float]]:
    """Interleaved timings: round ``r`` runs every command once, in order."""
    for argv in cmds.values():  # warm-up: bytecode caches, page cache
        run_once(argv)
    times: dict[str, list[float]] = {label: [] for label in cmds}
    for _ in range(repeats):
        for label, argv in cmds.items():
            times[label].append(run_once(argv))
    return times


def table(times: dict[str, list[float]]) -> str:
    """The timings as an aligned text table."""
    baseline = statistics.median(next(iter(times.values())))
    width = max(len(label) for label in times)
    lines = [f"{'command':<{width}}  median s  fastest s  x baseline  over baseline s  target {TARGET_S:g} s"]
    for i, (label, runs) in enumerate(times.items()):
        median = statistics.median(runs)
        verdict = "" if i == 0 else ("ok" if median < TARGET_S else "OVER")
        lines.append(f"{label:<{width}}  {median:8.3f}  {min(runs):9.3f}  {median / baseline:10.1f}  "
                     f"{median - baseline:15.3f}  {verdict}")
    return "\n".join(lines)


def _importtime_argv(argv: list[str]) -> list[str]:
    """``argv`` run under ``python -X importtime`` (a console script through its entry point)."""
    if argv[0] == sys.executable:
        return [sys.executable, "-X", "importtime", *argv[1:]]
    code = "import sys; from nucdata.cli import main; sys.argv[0] = 'nucdata'; sys.exit(main())"
    return [sys.executable, "-X", "importtime", "-c", code, *argv[1:]]


def importtime(argv: list[str], top: int) -> str:
    """Python's import-time account of one run of ``argv``: the costliest modules."""
    out = subprocess.run(_importtime_argv(argv), check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPROFILEIMPORTTIME": ""}).stderr
    rows = []
    for line in out.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if match:
            rows.append((int(match[1]), int(match[2]), len(match[3]) // 2, match[4]))
    if not rows:
        return "  (no import-time output)"
    names = {name for _, _, _, name in rows}
    total = sum(self_us for self_us, _, _, _ in rows)
    tops = sorted({name.split(".")[0] for name in names})
    per_package = {p: sum(s for s, _, _, n in rows if n.split(".")[0] == p) for p in tops}
    lines = [f"  all imports: {total / 1e6:.3f} s (self times summed), {len(rows)} modules"]
    lines.append("  heavy packages imported: " + (", ".join(
        f"{p} {per_package[p] / 1e3:.0f} ms" for p in HEAVY if p in per_package) or "none"))
    lines.append("  torch imported: " + ("YES" if "torch" in per_package else "no") +
                 "; xarray imported: " + ("YES" if "xarray" in per_package else "no"))
    lines.append(f"  top-level packages by self time summed (top {top}):")
    for p in sorted(per_package, key=per_package.get, reverse=True)[:top]:
        lines.append(f"    {per_package[p] / 1e3:8.1f} ms  {p}")
    lines.append(f"  modules by cumulative time (top {top}, nested imports counted in their parent):")
    for _, cumulative, depth, name in sorted(rows, key=lambda r: r[1], reverse=True)[:top]:
        lines.append(f"    {cumulative / 1e3:8.1f} ms  {'  ' * min(depth, 4)}{name}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds (default 15)")
    parser.add_argument("--importtime", action="store_true", help="also show python -X importtime's account")
    parser.add_argument("--top", type=int, default=12, help="rows of each import-time list (default 12)")
    args = parser.parse_args()
    cmds = commands()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"{sys.version.split()[0]} on {os.cpu_count()} CPUs, load average {load[0]:.2f} / {load[1]:.2f} / "
          f"{load[2]:.2f} (1 / 5 / 15 min); {args.repeats} interleaved rounds")
    print(f"console script: {' '.join(_cli())}\n")
    print(table(measure(cmds, args.repeats)))
    if args.importtime:
        for label, argv in list(cmds.items())[1:]:
            print(f"\npython -X importtime: {label}")
            print(importtime(argv, args.top))


if __name__ == "__main__":
    main()
