"""The ``nucdata build-merged`` command (registered through the ``nucdata.commands`` entry point)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from nucdata_models.config import ENCODER_NAMES, RECIPES, UNSEEN_CALIBRATIONS
from nucdata_models.merge.defaults import DEMO_EPOCHS, DEMO_SCALE, EPOCHS, cpu_threads

# Rough CPU throughput of each encoder on two cores, nuclei per second per epoch (from
# benchmarks/train_throughput.py --quick): for the warning before a long CPU run.
CPU_NUCLEI_PER_S = {"small": 1000.0, "resnet18": 60.0, "resnet50": 15.0}


class EpochsType(click.ParamType):
    """``N`` (every stage) or ``A,B,C``; each a whole number >= 0."""

    name = "epochs"

    def convert(self, value, param, ctx):
        if isinstance(value, dict):
            return value
        try:
            parts = [int(p) for p in str(value).split(",")]
        except ValueError:
            self.fail(f"{value!r}: give one whole number for every stage, or three: A,B,C", param, ctx)
        if len(parts) == 1:
            parts *= 3
        if len(parts) != 3 or min(parts) < 0:
            self.fail(f"{value!r}: give one whole number >= 0 for every stage, or three: A,B,C", param, ctx)
        return dict(zip("ABC", parts, strict=True))


class OverlaysType(click.ParamType):
    """A number of overlay images >= 0, or ``all``."""

    name = "overlays"

    def convert(self, value, param, ctx):
        if value is None or str(value).lower() == "all":
            return None
        try:
            number = int(value)
        except ValueError:
            self.fail(f"{value!r}: give a whole number >= 0 or 'all'", param, ctx)
        if number < 0:
            self.fail(f"{value!r}: give a whole number >= 0 or 'all'", param, ctx)
        return number


def _names(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@click.command("build-merged")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder: missing, empty, or an earlier build-merged output.")
@click.option("--overwrite", is_flag=True, help="Replace an --out folder that holds other files.")
@click.option("--recipe", type=click.Choice(RECIPES), default="nucdata", show_default=True,
              help="'paper': the authors' method as published; 'nucdata': with our extensions (docs/build-merged.md).")
@click.option("--datasets", default=None, help="Comma-separated datasets (default: every available one).")
@click.option("--label-sets", default=None,
              help="Comma-separated label sets (default: the four of the merged dataset, marked "
                   "'(merged)' by `nucdata label-sets`).")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Predict with this model instead of training (loaded as weights only).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="torch CPU threads (default: 1 on two cores or fewer, as measured by "
                   "benchmarks/predict_defaults.py; torch's own on more).")
@click.option("--epochs", type=EpochsType(), default=None,
              help=f"Epochs per stage: N or A,B,C (default: the recipe's; nucdata {EPOCHS['A']}, "
                   f"demo {DEMO_EPOCHS['A']},{DEMO_EPOCHS['B']},{DEMO_EPOCHS['C']}; paper 50).")
@click.option("--encoder", type=click.Choice(list(ENCODER_NAMES)), default=None, help="Default: the recipe's.")
@click.option("--encoder-weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Local file with pretrained encoder weights (keys that do not fit are skipped and reported).")
@click.option("--crop-size", type=click.IntRange(8, 512), default=None, help="Crop side, px (default: the recipe's).")
@click.option("--batch-size", type=click.IntRange(2, 65536), default=None, help="Default 128.")
@click.option("--threshold", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Pseudo-label threshold (default 0.99).")
@click.option("--unseen-calibration", type=click.Choice(list(UNSEEN_CALIBRATIONS)), default=None,
              help="Calibration of the datasets without labels in a set: 'pooled' (the set's cross-domain "
                   "temperature, softening only; the default) or 'held-out-dataset' (fitted on models trained "
                   "without each labelled dataset's labels: one more training per labelled dataset).")
@click.option("--mapped-as-truth", is_flag=True,
              help="Write labels from exact mapping rows as ground truth (field 4) in the pickles too.")
@click.option("--patch-labels", "patch_labels", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Patch-level flags (a CSV as nucdata.PatchLabels.to_csv writes, naming its dataset and label "
                   "set; repeatable): a flag 0 removes that class from every nucleus of the patch.")
@click.option("--overlays", type=OverlaysType(), default="16", show_default=True,
              help="Overlay PNGs per label set and dataset, or 'all'.")
@click.option("--demo", is_flag=True, help="Run on a generated world of every dataset (each in its native format) whose truth is known.")
@click.option("--demo-scale", type=click.IntRange(1, 1000), default=DEMO_SCALE, show_default=True,
              help="With --demo: size of the world (4: ~4,800 nuclei, ~40-60 s on two cores; ~300: full scale).")
@click.option("--world", type=click.Choice(["easy", "hard", "noisy"]), default="easy", show_default=True,
              help="With --demo: the world's knobs (docs/demo-world.md): look-alike cell types, real-shaped "
                   "sizes, stain/scale/blur shifts, annotator noise, mapping-table errors.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--quiet", is_flag=True, help="Only the result.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data home (default: $NUCDATA_HOME or the platform cache folder).")
def build_merged(out: Path, overwrite: bool, recipe: str, datasets: str | None, label_sets: str | None,
                 checkpoint: Path | None, device: str, threads: int | None, epochs: dict | None, encoder: str | None,
                 encoder_weights: Path | None, crop_size: int | None, batch_size: int | None,
                 threshold: float | None, unseen_calibration: str | None, mapped_as_truth: bool,
                 patch_labels: tuple[Path, ...],
                 overlays: int | None, demo: bool,
                 demo_scale: int, world: str, seed: int, quiet: bool, root: Path | None) -> None:
    """Label every nucleus of every dataset under every label set, and write the merged dataset."""
    import torch

    from nucdata.labels import MERGED_LABEL_SETS
    from nucdata_models.merge.build import BuildOptions
    from nucdata_models.merge.build import build_merged as run

    if device == "cuda" and not torch.cuda.is_available():
        raise click.UsageError("--device cuda: torch sees no CUDA device here; use --device cpu (or auto).")
    config = {"device": device}
    for key, value in (("epochs", epochs), ("encoder", encoder), ("batch_size", batch_size),
                       ("threshold", threshold), ("weights", str(encoder_weights) if encoder_weights else None),
                       ("unseen_calibration", unseen_calibration)):
        if value is not None:
            config[key] = value
    options = BuildOptions(
        out=out, datasets=_names(datasets), label_sets=_names(label_sets) or list(MERGED_LABEL_SETS),
        checkpoint=checkpoint, recipe=recipe, config=config, crop_size=crop_size, overlays=overlays, root=root,
        demo=demo, demo_scale=demo_scale, world=world, seed=seed, mapped_as_truth=mapped_as_truth, overwrite=overwrite,
        patch_labels=tuple(patch_labels),
    )
    resolved = options.train_config()
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if on_cpu and (threads or cpu_threads()):
        torch.set_num_threads(threads or cpu_threads())
    if on_cpu and checkpoint is None and resolved.encoder != "small":
        rate = CPU_NUCLEI_PER_S.get(resolved.encoder, 15.0)
        if resolved.input_size:
            rate *= (options.crop / resolved.input_size) ** 2
        click.secho(f"warning: encoder {resolved.encoder} on the CPU trains about {rate:,.1f} nuclei/s; "
                    f"{sum(resolved.epochs.values())} epochs over the data may take hours. "
                    "Use a GPU, or --encoder small.", fg="yellow", err=True)
    if quiet:
        from nucdata._util.progress import set_quiet

        set_quiet()
    say = (lambda _m: None) if quiet else click.echo
    start = time.perf_counter()
    report = run(options, say=say)
    click.echo(f"done in {time.perf_counter() - start:.0f} s: {out} (report: {out / 'report.md'})")
    if "demo_truth" in report:
        held = report["demo_truth"]["held_out"]
        for name in report["label_sets"]:
            m, b = held["merged"][name], held["baseline"][name]
            click.echo(f"  {name:8s} held-out filled-label macro F1 {m['macro_f1']:.3f} "
                       f"(baseline, own annotations only: {b['macro_f1']:.3f}; n={m['count']})")


class FormatsType(click.ParamType):
    """Comma-separated output formats."""

    name = "formats"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        from nucdata_models.merge.slides import FORMATS

        names = tuple(dict.fromkeys(v.strip().lower() for v in str(value).split(",") if v.strip()))
        bad = [n for n in names if n not in FORMATS]
        if bad or not names:
            self.fail(f"{value!r}: choose one or more of {', '.join(FORMATS)}, comma-separated", param, ctx)
        return names


_INPUT_HELP = {
    "instances": "Instance label images (PNG/TIFF/.npy; StarDist, Cellpose, InstanSeg): a file, or a folder "
                 "matched to --images by stem (<stem>.png, <stem>_masks.tif, <stem>_cp_masks.png...).",
    "hovernet-json": "HoVer-Net inference JSON (<stem>.json): a file or a folder.",
    "cellvit": "CellViT cell_detection.json / cells.json (or their GeoJSON): a file or a folder of slide folders.",
    "geojson": "QuPath GeoJSON (detections, cells, annotations; <stem>.geojson): a file or a folder.",
    "centroids": "A centroid CSV (x, y[, id, image, label]; pixel centres), or a folder of them.",
}


def _input_option(name: str):
    return click.option(f"--{name}", name.replace("-", "_"), type=click.Path(exists=True, path_type=Path),
                        default=None, help=_INPUT_HELP[name])


@click.command("classify")
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("--images", type=click.Path(exists=True, path_type=Path), required=True,
              help="An image or whole slide (PNG, JPEG, TIFF, pyramidal TIFF/SVS), or a folder of them.")
@_input_option("instances")
@_input_option("hovernet-json")
@_input_option("cellvit")
@_input_option("geojson")
@_input_option("centroids")
@click.option("--mpp", type=click.FloatRange(0, min_open=True), default=None,
              help="µm/px of the images (default: from each file's metadata; without either, classify refuses "
                   "to guess).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder: <stem>.geojson / .json / .parquet per image.")
@click.option("--format", "formats", type=FormatsType(), default="geojson", show_default=True,
              help="Outputs, comma-separated: geojson (QuPath), hovernet-json, parquet.")
@click.option("--label-set", default=None,
              help="The label set of the GeoJSON classification and HoVer-Net type (default: the model's first "
                   "merged set); every set is in the measurements.")
@click.option("--vocabulary", default=None,
              help="The input's own classes are labels of this vocabulary (a dataset's name for its native codes, "
                   "or set:<label set> for class names or ids): published through the mapping tables as "
                   "build-merged publishes them.")
@click.option("--tile", type=click.IntRange(64, 65536), default=2048, show_default=True,
              help="Tile side in model pixels: slides are streamed tile by tile.")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Processes on this machine, one image each at a time.")
@click.option("--scheduler", default=None,
              help="A Dask scheduler address (tcp://host:8786): one task per image on the cluster "
                   '(pip install "nucdata[distributed]").')
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="torch CPU threads (default: 1 on two cores or fewer, as build-merged; else torch's).")
@click.option("--overwrite", is_flag=True, help="Replace output files classify did not write.")
@click.option("--quiet", is_flag=True, help="Only the result.")
def classify(model: Path, images: Path, instances: Path | None, hovernet_json: Path | None, cellvit: Path | None,
             geojson: Path | None, centroids: Path | None, mpp: float | None, out: Path, formats: tuple[str, ...],
             label_set: str | None, vocabulary: str | None, tile: int, workers: int, scheduler: str | None,
             device: str, threads: int | None, overwrite: bool, quiet: bool) -> None:
    """Classify the nuclei a segmenter found under every label set (nucdata does not segment).

    MODEL is a build-merged output folder or its classifier.safetensors. Each image is
    paired with its nuclei by file stem; slides are read tile by tile, and a rerun resumes
    where a killed run stopped.
    """
    import warnings

    import torch

    from nucdata.errors import DomainShiftWarning
    from nucdata_models.merge.slides import ClassifyOptions, classify_paths

    if device == "cuda" and not torch.cuda.is_available():
        raise click.UsageError("--device cuda: torch sees no CUDA device here; use --device cpu (or auto).")
    given = [n for n, v in (("instances", instances), ("hovernet-json", hovernet_json), ("cellvit", cellvit),
                            ("geojson", geojson), ("centroids", centroids)) if v is not None]
    if len(given) != 1:
        raise click.UsageError("give the nuclei exactly one way: --instances, --hovernet-json, --cellvit, --geojson "
                               f"or --centroids (got {', '.join('--' + g for g in given) or 'none'}).")
    if quiet:
        from nucdata._util.progress import set_quiet

        set_quiet()
    options = ClassifyOptions(formats=formats, label_set=label_set, mpp=mpp, vocabulary=vocabulary, tile=tile,
                              overwrite=overwrite, device=device)
    say = (lambda _m: None) if quiet else click.echo
    start = time.perf_counter()
    before = torch.get_num_threads()
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if on_cpu and (threads or cpu_threads()):
        torch.set_num_threads(threads or cpu_threads())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DomainShiftWarning)  # said once per image below
            results = classify_paths(model, images, out, instances=instances, hovernet_json=hovernet_json,
                                     cellvit=cellvit, geojson=geojson, centroids=centroids, options=options,
                                     workers=workers, scheduler=scheduler, say=say)
    finally:
        torch.set_num_threads(before)
    for r in results:
        for gap in r.get("gaps", []):
            click.secho(f"warning: {r['image']}: far from the training data: {gap}", fg="yellow", err=True)
    total = sum(r["nuclei"] for r in results)
    click.echo(f"done in {time.perf_counter() - start:.0f} s: {total:,} nuclei of {len(results)} image(s) -> {out}")


@click.command("model-card")
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="The classifier's whole description (classifier.json).")
def model_card(model: Path, as_json: bool) -> None:
    """Print the model card of a classifier: training data and their licences, metrics, intended use.

    MODEL is a build-merged output folder, its classifier.safetensors or classifier.json.
    Nothing is loaded into torch: the card is read from the JSON.
    """
    import json

    from nucdata.errors import CheckpointError
    from nucdata_models.merge.card import SIDECAR_NAME, WEIGHTS_NAME, render_model_card

    path = model / SIDECAR_NAME if model.is_dir() else model
    if path.suffix == ".safetensors":
        sidecar = path.with_suffix(".json")
        path = sidecar if sidecar.is_file() else path
    if path.suffix == ".safetensors":  # the copy in the file's header
        from nucdata_models.checkpoint import load_safetensors

        _, meta = load_safetensors(path)
    else:
        if not path.is_file():
            raise CheckpointError(f"{model}: holds no {SIDECAR_NAME}; pass a build-merged output folder (it holds "
                                  f"{WEIGHTS_NAME} and {SIDECAR_NAME}) or the file itself")
        from nucdata_models.checkpoint import SAFETENSORS_FORMAT

        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: not a readable classifier description ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != SAFETENSORS_FORMAT:
            raise CheckpointError(f"{path}: not a nucdata classifier description (format "
                                  f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    click.echo(json.dumps(meta, indent=2) if as_json else render_model_card(meta), nl=not as_json)
