"""Label-free checks of a trained classifier on the real MoNuSeg and TNBC files (issue 22).

For every nucleus of the real unlabelled images, how often the published label flips
under the flips and rotations of its crop, under ±10 % rescaling of the image and under
Reinhard and Macenko stain normalisation to each real dataset's stain (CRCHisto, MoNuSeg,
TNBC, whichever are present), each beside its shuffled-prediction baseline
(:func:`nucdata_models.merge.label_free_checks`). Writes ``OUT/results.json`` and
``OUT/results.md`` and prints the Markdown.

    nucdata build-merged --demo --out merged-demo                    # a model (or any build-merged output)
    python benchmarks/label_free.py --model merged-demo --realdata ../shared/realdata --out label-free
    python benchmarks/label_free.py --model merged-demo --realdata ../shared/realdata --limit 2 --out quick

``--points`` cuts each nucleus as a point (its mask's centroid, the mask channel one
pixel), for a model trained on point annotations such as CRCHisto's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", type=Path, required=True,
                        help="a build-merged output folder or its classifier.safetensors")
    parser.add_argument("--realdata", type=Path, required=True,
                        help="the real sample files: <dir>/monuseg, <dir>/tnbc (checked), <dir>/crchisto (a stain)")
    parser.add_argument("--datasets", default="monuseg,tnbc", help="which real datasets to check (comma-separated)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images of each dataset")
    parser.add_argument("--points", action="store_true", help="cut every nucleus as a point (its centroid)")
    parser.add_argument("--methods", default="reinhard,macenko", help="stain normalisations (comma-separated)")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--detail", action="store_true", help="one Markdown row per perturbation, with intervals")
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json and results.md")
    return parser.parse_args(argv)


def _as_points(records):
    import numpy as np

    from nucdata_models.merge import LabelFreeImage

    out = []
    for r in records:
        inst = np.asarray(r.instances, np.int64)
        ys, xs = np.nonzero(inst)
        ids, inverse, counts = np.unique(inst[ys, xs], return_inverse=True, return_counts=True)
        centroids = np.stack([np.bincount(inverse, xs, ids.size) / counts,
                              np.bincount(inverse, ys, ids.size) / counts], 1)
        out.append(LabelFreeImage(r.name, r.rgb, None, r.mpp, r.dataset, centroids, r.mpp_source))
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    import torch

    torch.set_num_threads(args.threads)
    from nucdata_models.merge import (
        Classifier,
        label_free_checks,
        real_images,
        real_references,
        render_label_free,
    )

    started = time.perf_counter()
    classifier = Classifier.from_pretrained(args.model, device=args.device)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    images = {}
    for name in names:
        records = real_images(args.realdata / name, name, limit=args.limit)
        images[name] = _as_points(records) if args.points else records
    references = real_references(args.realdata)
    result = label_free_checks(classifier, images, references,
                               methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
                               progress=lambda m: print(m, flush=True))
    result["run"] = {"model": str(args.model), "realdata": str(args.realdata), "datasets": names,
                     "limit": args.limit, "points": args.points, "threads": args.threads, "device": args.device,
                     "seconds": round(time.perf_counter() - started, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    text = render_label_free(result, detail=args.detail)
    (args.out / "results.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"{result['run']['seconds']} s; wrote {args.out / 'results.json'} and results.md")
    return result


if __name__ == "__main__":
    main()
