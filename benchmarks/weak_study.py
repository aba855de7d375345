"""The weak study: nucleus classes from patch-level flags against full supervision on the same images.

Han et al. (MedIA 2022) report tissue maps from patch labels "within about 2 %" of full
supervision. This asks the same of *nucleus* classes (``nucdata_models.weak``): on the
demo world (generated CoNSeP pixels whose nuclei look like their class) and, with
``--data DIR``, on any copy of CRCHisto (real images and labels; points, no masks),

    python benchmarks/weak_study.py --quick --out OUT
    python benchmarks/weak_study.py --quick --data ../shared/realdata/crchisto --out OUT
    python benchmarks/weak_study.py --data ../shared/realdata/crchisto --out weak-gpu --device cuda  # full, a GPU

Per world the images are split once (seeded) into training and test images; patch flags
are derived from the nucleus labels on the patch grid (``nucdata.derive_patch_labels``).
Arms (each scored on the labelled nuclei of the test images):

* ``weak-3`` / ``weak-3-nogate``: flags only; the patch classifier's Grad-CAMs at three
  depths give three pseudo-labels per training nucleus; the nucleus classifier trains on
  them weighted 0.6/0.2/0.2; with / without the test-time gate (patch probability < 0.1
  switches a class off);
* ``weak-1`` / ``weak-1-nogate``: the same with the deepest depth only;
* ``full``: the same nucleus classifier trained on the training images' nucleus labels
  (the ceiling);
* ``flags-majority``: no network: every test nucleus gets the class, among those its own
  patch flags, flagged most often in the training patches (the test patches' flags are
  given to it, and to no other arm).

The weak arms share one patch classifier per seed. Nucleus macro F1 (mean F1 over the
classes in truth or prediction), 95 % intervals by bootstrap over test images (the
method study's helpers: ``resample_weights``, ``percentile_ci``, ``bootstrap_p``), paired
differences on the same resamples, and the ratio to ``full``. Writes ``OUT/results.json``
and ``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ARMS = {
    "weak-3": "flags only; Grad-CAM pseudo-labels at three depths weighted 0.6/0.2/0.2; gate 0.1",
    "weak-3-nogate": "as weak-3, without the test-time gate",
    "weak-1": "flags only; the deepest depth's pseudo-labels; gate 0.1",
    "weak-1-nogate": "as weak-1, without the gate",
    "full": "nucleus labels of the same training images (the ceiling); no gate",
    "flags-majority": "the test patch's flagged class flagged most often in training patches (test flags given)",
}
COMPARISONS = [("weak-3", "full"), ("weak-1", "full"), ("weak-3", "weak-1"), ("weak-3", "weak-3-nogate"),
               ("weak-1", "weak-1-nogate"), ("weak-3", "flags-majority"), ("full", "flags-majority")]

#: ``--quick``: minutes on one CPU thread. Patch sizes: see ``flag_statistics`` in the results.
QUICK = {"epochs": (6, 6), "seeds": (0,), "bootstrap": 2000, "demo_scale": 16}
FULL = {"epochs": (15, 15), "seeds": (0, 1, 2), "bootstrap": 5000, "demo_scale": 48}
WORLDS = {  # dataset, label set, patch side (native px), nominal µm/px where the store has none
    "demo": {"dataset": "consep", "label_set": "consep4", "size": 48},
    "crchisto": {"dataset": "crchisto", "label_set": "crchisto", "size": 100},
}
FLAG_SIZES = {"demo": (24, 48, 96), "crchisto": (50, 100, 125, 167, 250, 500)}


def prepare(world: str, home: Path, data_dir: Path | None, scale: int, seed: int):
    """The world's dataset, prepared in ``home``."""
    import nucdata

    name = WORLDS[world]["dataset"]
    if world == "demo":
        from nucdata.testing import install
        from nucdata_models.merge import make_world

        install(name, home, seed, world=make_world(seed, "easy"), scale=scale)
        nucdata.prepare(name, root=home, download=False)
    else:
        nucdata.prepare(name, from_dir=data_dir, root=home, check_counts=False)
    return nucdata.load(name, root=home, label_set=WORLDS[world]["label_set"])


def flag_statistics(ds, sizes) -> dict[str, dict[str, float]]:
    """How informative derived flags are at each patch side: classes flagged per patch, shares."""
    from nucdata import derive_patch_labels

    labels = np.asarray(ds.labels)
    out = {}
    for size in sizes:
        table = derive_patch_labels(ds, window=size)
        members = table.members(ds)
        k = table.flags.sum(1)
        out[str(size)] = {
            "patches": len(table), "nuclei_per_patch": float(np.mean([len(m) for m in members])),
            "labelled_per_patch": float(np.mean([(labels[m] >= 0).sum() for m in members])),
            "classes_flagged_per_patch": float(k.mean()), "share_one_class": float((k == 1).mean()),
            "share_no_class": float((k == 0).mean()), "share_every_class": float((k == table.flags.shape[1]).mean()),
        }
    return out


def confusions(truth: np.ndarray, guess: np.ndarray, group: np.ndarray, groups: int, k: int) -> np.ndarray:
    """Per-group confusion matrices ``(G, K, K)``."""
    cm = np.zeros((groups, k, k), np.int64)
    np.add.at(cm, (group, truth, guess), 1)
    return cm


def run_world(world: str, ds, config: dict, seeds, assume_mpp: float | None, say) -> dict:
    from nucdata_models.merge.weak_data import weak_patch_data
    from nucdata_models.weak import (
        WeakConfig,
        fit_nucleus_classifier,
        fit_patch_classifier,
        nucleus_pseudo_labels,
        patch_probabilities,
        predict_nuclei,
    )

    spec = WORLDS[world]
    rng = np.random.default_rng(1234)
    n_images = len(ds)
    order = rng.permutation(n_images)
    test_images = np.sort(order[: max(2, round(0.3 * n_images))])
    split = np.zeros(n_images, np.int64)
    split[test_images] = 2
    start = time.perf_counter()
    base = WeakConfig(patch_epochs=config["epochs"][0], nucleus_epochs=config["epochs"][1],
                      device=config.get("device", "cpu"))
    data = weak_patch_data(ds, spec["size"], None, None, split, point_radius_um=base.point_radius_um,
                           assume_mpp=assume_mpp, crop_size=base.crop_size)
    k = len(data.class_names)
    nucleus_split = data.patch_split[data.nucleus_patch].numpy()
    labels = data.labels.numpy()
    scored = (nucleus_split == 2) & (labels >= 0)
    train_patch = data.patch_split.numpy() == 0
    say(f"{world}: {data.patches.shape[0]:,} patches of {spec['size']} px, {len(data):,} nuclei "
        f"({int(((nucleus_split == 0) & (labels >= 0)).sum()):,} labelled in training images, "
        f"{int(scored.sum()):,} scored in {test_images.size} test images)")
    # flags-majority: the flagged class most often flagged in the training patches
    frequency = data.flags.numpy()[train_patch].sum(0).astype(np.float64)
    flags_of = data.flags.numpy()[data.nucleus_patch.numpy()]
    ranked = np.where(flags_of > 0, frequency[None, :] + 1.0, 0.0)
    majority = np.where(ranked.max(1) > 0, ranked.argmax(1), int(frequency.argmax()))
    guesses: dict[str, list[np.ndarray]] = {a: [] for a in ARMS}
    diagnostics = []
    for seed in seeds:
        cfg = base.replace(seed=int(seed))
        t0 = time.perf_counter()
        patch = fit_patch_classifier(data, cfg)
        pseudo = nucleus_pseudo_labels(patch, data, cfg, torch.from_numpy(np.flatnonzero(train_patch)))
        probs = patch_probabilities(patch, data)
        t1 = time.perf_counter()
        full_targets = torch.where(data.patch_split[data.nucleus_patch] == 0, data.labels, -1)[:, None]
        models = {
            "weak-3": fit_nucleus_classifier(data, pseudo, cfg.weights, cfg),
            "weak-1": fit_nucleus_classifier(data, pseudo[:, :1], (1.0,), cfg),
            "full": fit_nucleus_classifier(data, full_targets, (1.0,), cfg),
        }
        rows = torch.from_numpy(np.flatnonzero(scored))
        for name, model in models.items():
            ungated = predict_nuclei(model, data, rows=rows, crops=data.crops)
            guesses[name if name == "full" else f"{name}-nogate"].append(ungated.argmax(1).numpy())
            if name != "full":
                gated = predict_nuclei(model, data, probs, cfg.gate, rows=rows, crops=data.crops)
                guesses[name].append(gated.argmax(1).numpy())
        guesses["flags-majority"].append(majority[scored])
        train_known = (nucleus_split == 0) & (labels >= 0)
        true_prob = probs.numpy()[data.nucleus_patch.numpy()[scored], labels[scored]]
        flag_truth = data.flags.numpy()[~train_patch].astype(bool)
        flag_guess = probs.numpy()[~train_patch] >= 0.5
        diagnostics.append({
            "seed": int(seed),
            "pseudo_label_accuracy": {f"depth{d}": float((pseudo[train_known, d].numpy() == labels[train_known]).mean())
                                      for d in range(pseudo.shape[1])},
            "pseudo_labelled_share": float((pseudo[:, 0].numpy()[nucleus_split == 0] >= 0).mean()),
            "gate_removes_true_class": float((true_prob < cfg.gate).mean()),
            "patch_flag_accuracy_test": float((flag_truth == flag_guess).mean()),
            "seconds_patch_classifier_and_cams": round(t1 - t0, 1),
            "seconds_nucleus_classifiers": round(time.perf_counter() - t1, 1),
        })
        say(f"{world} seed {seed}: pseudo-label accuracy {diagnostics[-1]['pseudo_label_accuracy']}, "
            f"{time.perf_counter() - t0:.0f} s")
    # statistics over test images: one confusion per image and arm (and seed)
    images = data.patch_image.numpy()[data.nucleus_patch.numpy()[scored]]
    index = {int(j): g for g, j in enumerate(test_images)}
    group = np.asarray([index[int(j)] for j in images], np.int64)
    truth = labels[scored]
    from nucdata_models.metrics import macro_f1_from_confusion
    from nucdata_models.study import bootstrap_p, percentile_ci, resample_weights

    weights = resample_weights(test_images.size, config["bootstrap"], np.random.default_rng(99))
    tallies = {a: np.stack([confusions(truth, g, group, test_images.size, k) for g in guesses[a]]) for a in ARMS}

    def metric(tally: np.ndarray, w: np.ndarray | None) -> np.ndarray:
        """Macro F1 per resample (mean over seeds); ``w=None``: every image once."""
        if w is None:
            return np.asarray([np.nanmean(macro_f1_from_confusion(tally.sum(1)))])
        summed = np.einsum("bg,sgij->bsij", w, tally)
        return np.nanmean(macro_f1_from_confusion(summed), 1)

    arms, replicates = {}, {}
    for a in ARMS:
        replicates[a] = metric(tallies[a], weights)
        arms[a] = {"description": ARMS[a], "macro_f1": float(metric(tallies[a], None)[0]),
                   "ci": percentile_ci(replicates[a]),
                   "per_seed": [float(macro_f1_from_confusion(t.sum(0))) for t in tallies[a]]}
    differences = []
    for a, b in COMPARISONS:
        diff = replicates[a] - replicates[b]
        differences.append({"a": a, "b": b, "difference": arms[a]["macro_f1"] - arms[b]["macro_f1"],
                            "ci": percentile_ci(diff), "p": bootstrap_p(diff)})
    ratio = {}
    for a in ("weak-3", "weak-3-nogate", "weak-1", "weak-1-nogate", "flags-majority"):
        r = replicates[a] / replicates["full"]
        ratio[a] = {"ratio": arms[a]["macro_f1"] / arms["full"]["macro_f1"], "ci": percentile_ci(r)}
    best = max(("weak-3", "weak-1", "weak-3-nogate", "weak-1-nogate"), key=lambda a: arms[a]["macro_f1"])
    return {
        "dataset": spec["dataset"], "label_set": spec["label_set"], "classes": list(data.class_names),
        "patch_size": spec["size"], "assumed_mpp": assume_mpp,
        "images": {"train": int(n_images - test_images.size), "test": int(test_images.size)},
        "nuclei": {"all": len(data), "scored": int(scored.sum()),
                   "labelled_train": int(((nucleus_split == 0) & (labels >= 0)).sum())},
        "patches": {"train": int(train_patch.sum()), "test": int((~train_patch).sum())},
        "config": base.to_dict(), "seeds": [int(s) for s in seeds], "bootstrap": config["bootstrap"],
        "arms": arms, "differences": differences, "ratio_to_full": ratio,
        "within_2_percent": {
            "best_weak_arm": best, "ratio": ratio[best]["ratio"], "ci": ratio[best]["ci"],
            "holds": bool(ratio[best]["ratio"] >= 0.98),
            "holds_at_interval_lower_bound": bool(ratio[best]["ci"][0] >= 0.98)},
        "diagnostics": diagnostics, "seconds": round(time.perf_counter() - start, 1),
    }


def render(results: dict) -> str:
    lines = ["# Weak study (generated by benchmarks/weak_study.py)", "", f"Command: `{results['command']}`", "",
             f"Machine: {results['machine']}; torch threads {results['threads']}.", ""]
    for world, r in results["worlds"].items():
        lines += [f"## {world}: {r['dataset']} under {r['label_set']} ({', '.join(r['classes'])})", "",
                  f"{r['images']['train']} training / {r['images']['test']} test images; patches of "
                  f"{r['patch_size']} px ({r['patches']['train']:,} training, {r['patches']['test']:,} test); "
                  f"{r['nuclei']['all']:,} nuclei, {r['nuclei']['labelled_train']:,} labelled in training images, "
                  f"{r['nuclei']['scored']:,} scored; seeds {r['seeds']}; {r['seconds']:.0f} s.", "",
                  "| arm | macro F1 | 95 % interval | ratio to full | what it trains on |", "|---|---|---|---|---|"]
        for a, m in r["arms"].items():
            ratio = r["ratio_to_full"].get(a)
            shown = f"{ratio['ratio']:.3f} [{ratio['ci'][0]:.3f}, {ratio['ci'][1]:.3f}]" if ratio else "1"
            lines.append(f"| {a} | {m['macro_f1']:.3f} | [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}] | {shown} | "
                         f"{m['description']} |")
        lines += ["", "| paired difference | macro F1 | 95 % interval | p (bootstrap) |", "|---|---|---|---|"]
        for d in r["differences"]:
            lines.append(f"| {d['a']} - {d['b']} | {d['difference']:+.3f} | [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] "
                         f"| {d['p']:.3f} |")
        w = r["within_2_percent"]
        lines += ["", f"Within 2 % of full supervision: best weak arm {w['best_weak_arm']} at "
                      f"{w['ratio']:.3f} of full [{w['ci'][0]:.3f}, {w['ci'][1]:.3f}]: "
                      f"{'holds' if w['holds'] else 'does not hold'} at the point estimate, "
                      f"{'holds' if w['holds_at_interval_lower_bound'] else 'not shown'} at the interval's lower bound.",
                  ""]
        for diag in r["diagnostics"]:
            acc = ", ".join(f"{k} {v:.3f}" for k, v in diag["pseudo_label_accuracy"].items())
            lines.append(f"Seed {diag['seed']}: pseudo-label accuracy on labelled training nuclei {acc} (deepest "
                         f"first); {diag['pseudo_labelled_share']:.2f} of training nuclei get one; the gate "
                         f"switches off the true class of {diag['gate_removes_true_class']:.3f} of scored nuclei; "
                         f"test patch flags right {diag['patch_flag_accuracy_test']:.3f} at p >= 0.5.")
        lines += ["", "Flag statistics by patch side (derived flags, every image):", "",
                  "| side px | patches | nuclei / patch | labelled / patch | classes flagged / patch | one class | "
                  "no class | every class |", "|---|---|---|---|---|---|---|---|"]
        for size, f in results["flag_statistics"][world].items():
            lines.append(f"| {size} | {f['patches']:,} | {f['nuclei_per_patch']:.1f} | {f['labelled_per_patch']:.1f} | "
                         f"{f['classes_flagged_per_patch']:.2f} | {f['share_one_class']:.2f} | "
                         f"{f['share_no_class']:.2f} | {f['share_every_class']:.2f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="Output folder (results.json, results.md).")
    parser.add_argument("--quick", action="store_true", help="CPU-sized: minutes on one thread.")
    parser.add_argument("--data", type=Path, default=None,
                        help="A copy of CRCHisto (its official layout or flat); adds the crchisto world.")
    parser.add_argument("--worlds", nargs="+", choices=list(WORLDS), default=None,
                        help="Default: demo, and crchisto with --data.")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1).")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = {**(QUICK if args.quick else FULL), "device": args.device}
    seeds = tuple(args.seeds) if args.seeds else config["seeds"]
    worlds = args.worlds or (["demo", "crchisto"] if args.data else ["demo"])
    if "crchisto" in worlds and args.data is None:
        parser.error("the crchisto world needs --data DIR (a copy of CRCHisto)")
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"command": "python benchmarks/weak_study.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "machine": f"{platform.machine()}, {platform.python_version()}, torch {torch.__version__}",
               "threads": torch.get_num_threads(), "worlds": {}, "flag_statistics": {}}
    with tempfile.TemporaryDirectory(prefix="weak-study-") as tmp:
        for world in worlds:
            start = time.perf_counter()
            ds = prepare(world, Path(tmp) / world, args.data, config["demo_scale"], 0)
            assume = None
            mpp = np.asarray(ds.store.column("images", "mpp"), np.float64)
            if not np.isfinite(mpp).any():
                import nucdata

                assume = nucdata.get_card(ds.name).extra.get("mpp_default")
            print(f"{world}: {ds!r} prepared in {time.perf_counter() - start:.0f} s", flush=True)
            results["flag_statistics"][world] = flag_statistics(ds, FLAG_SIZES[world])
            results["worlds"][world] = run_world(world, ds, config, seeds, assume, lambda m: print(m, flush=True))
            (args.out / "results.json").write_text(json.dumps(results, indent=2))
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    (args.out / "results.md").write_text(render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
