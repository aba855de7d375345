"""``nucdata classify`` on a generated pyramidal slide: nuclei/s, the data path's share, peak RSS at 1x and 4x.

Generates pyramidal tiled TIFF slides of the demo world (``nucdata.testing.slides``:
3,000 nuclei per mm² at 0.25 µm/px, the instance map as a tiled label TIFF) at 1x and 4x
the area of ``--side`` x ``--side`` pixels, then runs each measurement in a fresh
subprocess:

* ``classify``: the whole command's path (``classify_paths``: the slide and its label TIFF
  read by region, crops cut tile by tile, the model, outlines traced, QuPath GeoJSON and
  Parquet streamed out) under ``/usr/bin/time -v`` (its "Maximum resident set size"; the
  child's own ``resource.getrusage`` peak where ``time`` is missing);
* ``forward``: the model's pure forward pass (``Classifier.probabilities``, what
  ``classify`` calls once per tile) on the same batches (the same tiles' crops, cut
  beforehand and not timed).

Prints nuclei/s of both, their ratio and the data path's share of the time (``1 -
forward / classify``), and peak RSS at 1x and 4x with its growth (the Done-when of issue
23: within 10 %).

    python benchmarks/classify.py                          # CPU: a tiny demo model, 4096 px side
    python benchmarks/classify.py --side 2048 --repeats 1  # quick
    python benchmarks/classify.py --device cuda --encoder resnet50 --side 8192   # on a GPU

``--model DIR`` uses a build-merged output instead of building a tiny demo one (0 epochs:
the weights do not change the throughput).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import torch
mode, model, folder, out, device, tile = sys.argv[1:7]
tile = int(tile)
from nucdata._util.progress import set_quiet
set_quiet()
from nucdata_models.merge.defaults import cpu_threads
from nucdata_models.merge.slides import ClassifyOptions, classify_paths, _classifier
if (device == "cpu" or not torch.cuda.is_available()) and cpu_threads():
    torch.set_num_threads(cpu_threads())  # as the command does on two cores or fewer
clf = _classifier(model, device)
result = {"mode": mode, "device": str(clf.device)}
if mode == "classify":
    start = time.perf_counter()
    [summary] = classify_paths(model, Path(folder) / "slides", out, instances=Path(folder) / "masks",
                               options=ClassifyOptions(formats=("geojson", "parquet"), tile=tile, device=device))
    result.update(seconds=time.perf_counter() - start, nuclei=summary["nuclei"], tiles=summary["tiles"])
else:  # the same tiles' crops, then only the model on them
    import contextlib
    from nucdata_models.merge.engine import cut_tile, model_frame, plan_tiles
    from nucdata_models.merge.slides import Job, _open_image, _read_nuclei
    job = Job("s", Path(folder) / "slides" / "s.tif", "instances", Path(folder) / "masks" / "s.tif")
    with contextlib.ExitStack() as stack:
        source, mpp = _open_image(job.image, stack)
        nuclei, masks, _ = _read_nuclei(job, source, stack)
        scale = clf.scale_for(mpp)
        cen, _, w, h = model_frame(nuclei, scale, source.width, source.height)
        tiles, _ = plan_tiles(cen, w, h, tile)
        batches = [cut_tile(source, masks, nuclei, t.rows, clf.crop_size, scale) for t in tiles]
    clf.probabilities(batches[0][:8])  # warm-up (kernels, allocator)
    if clf.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for crops in batches:
        clf.probabilities(crops)
    if clf.device.type == "cuda":
        torch.cuda.synchronize()
    result.update(seconds=time.perf_counter() - start, nuclei=int(sum(len(b) for b in batches)), tiles=len(batches))
result["ru_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps(result))
"""


def build_model(folder: Path, encoder: str, device: str) -> Path:
    """A demo build-merged output (0 epochs: the throughput does not depend on the weights)."""
    from nucdata_models.merge.build import BuildOptions, build_merged

    out = folder / "model"
    build_merged(BuildOptions(out=out, datasets=["pannuke", "consep", "monuseg"], demo=True, demo_scale=1,
                              overlays=0, config={"epochs": {"A": 0, "B": 0, "C": 0}, "encoder": encoder,
                                                  "device": device}), say=lambda _m: None)
    return out


def make_slide(folder: Path, side: int, seed: int) -> dict:
    from nucdata.testing.slides import generate_slide

    (folder / "slides").mkdir(parents=True)
    (folder / "masks").mkdir()
    start = time.perf_counter()
    truth = generate_slide(folder / "slides" / "s.tif", width=side, height=side, mpp=0.25, density=3000.0,
                           seed=seed, dataset="consep", tile=512, instances=folder / "masks" / "s.tif")
    return {"side": side, "nuclei": len(truth.ids), "density_per_mm2": round(truth.density),
            "area_mm2": round(side * side * (0.25e-3) ** 2, 3), "generate_s": round(time.perf_counter() - start, 1)}


def run_child(mode: str, model: Path, folder: Path, device: str, tile: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="classify-out-"))
    try:
        command = [sys.executable, "-c", CHILD, mode, str(model), str(folder), str(out), device, str(tile)]
        timer = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
        if timer:
            command = [timer, "-v", *command]
        run = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "NUCDATA_QUIET": "1"})
        if run.returncode:
            raise RuntimeError(f"{mode} child failed:\n{run.stderr[-4000:]}")
        line = next(x for x in run.stdout.splitlines() if x.startswith("RESULT "))
        result = json.loads(line[len("RESULT "):])
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr)
        result["peak_rss_mib"] = int(found.group(1)) / 1024 if found else result["ru_maxrss_mib"]
        result["rss_from"] = "/usr/bin/time -v" if found else "getrusage"
        return result
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="A build-merged output (default: a tiny demo one).")
    parser.add_argument("--encoder", default="small", help="Encoder of the demo model built (default small).")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--side", type=int, default=4096, help="Side of the 1x slide in pixels (4x: twice it).")
    parser.add_argument("--scales", default="1,4", help="Slide areas to measure, as multiples of the 1x area.")
    parser.add_argument("--tile", type=int, default=2048, help="Tile side of classify (model pixels).")
    parser.add_argument("--repeats", type=int, default=2, help="Runs of each measurement (medians quoted).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-classify-"))
    try:
        model = args.model or build_model(work, args.encoder, args.device)
        results = {"device": args.device, "tile": args.tile, "scales": {}}
        for scale in (int(s) for s in args.scales.split(",")):
            side = int(round(args.side * scale ** 0.5))
            folder = work / f"x{scale}"
            slide = make_slide(folder, side, seed=scale)
            runs = {m: [run_child(m, model, folder, args.device, args.tile) for _ in range(args.repeats)]
                    for m in ("classify", "forward")}
            row = {"slide": slide}
            for mode, rs in runs.items():
                row[mode] = {"nuclei_per_s": statistics.median(r["nuclei"] / r["seconds"] for r in rs),
                             "seconds": statistics.median(r["seconds"] for r in rs),
                             "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in rs),
                             "rss_from": rs[0]["rss_from"], "tiles": rs[0]["tiles"], "device": rs[0]["device"]}
            row["ratio"] = row["classify"]["nuclei_per_s"] / row["forward"]["nuclei_per_s"]
            row["data_path_share"] = 1 - row["forward"]["seconds"] / row["classify"]["seconds"]
            results["scales"][scale] = row
            c, f = row["classify"], row["forward"]
            print(f"{scale}x: {side}x{side} px, {slide['area_mm2']} mm², {slide['nuclei']:,} nuclei "
                  f"({slide['density_per_mm2']:,}/mm²), {c['tiles']} tiles on {c['device']}")
            print(f"    classify {c['nuclei_per_s']:8.0f} nuclei/s ({c['seconds']:.1f} s), forward pass "
                  f"{f['nuclei_per_s']:8.0f} nuclei/s: ratio {row['ratio']:.2f}, data path "
                  f"{100 * row['data_path_share']:.0f} % of the time")
            print(f"    peak RSS: classify {c['peak_rss_mib']:.0f} MiB, forward (crops held) {f['peak_rss_mib']:.0f} MiB "
                  f"({c['rss_from']})")
        scales = sorted(results["scales"])
        if len(scales) > 1:
            lo, hi = (results["scales"][s]["classify"]["peak_rss_mib"] for s in (scales[0], scales[-1]))
            results["rss_growth"] = hi / lo - 1
            print(f"peak RSS {scales[0]}x -> {scales[-1]}x: {lo:.0f} -> {hi:.0f} MiB ({100 * (hi / lo - 1):+.1f} %)")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
