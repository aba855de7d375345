"""The ``nucdata train-weak`` command (registered through the ``nucdata.commands`` entry point)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from nucdata_models.config import ENCODER_NAMES
from nucdata_models.merge.defaults import cpu_threads
from nucdata_models.weak import CAM_KINDS


class GateType(click.ParamType):
    """A probability in [0, 1), or ``none``."""

    name = "gate"

    def convert(self, value, param, ctx):
        if value is None or str(value).lower() == "none":
            return None
        try:
            number = float(value)
        except ValueError:
            self.fail(f"{value!r}: give a probability in [0, 1) or 'none'", param, ctx)
        if not 0.0 <= number < 1.0:
            self.fail(f"{value!r}: give a probability in [0, 1) or 'none'", param, ctx)
        return number


@click.command("train-weak")
@click.argument("dataset")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder (missing or empty): weak.json, the two networks' weights, pseudo_labels.csv, "
                   "summary.json.")
@click.option("--label-set", default=None, help="Label set of the flags and the nucleus classes (default: the "
                                               "dataset's own).")
@click.option("--patch-labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Patch flags: a CSV as nucdata.PatchLabels.to_csv writes (default: derived from the "
                   "dataset's nucleus labels on the patch grid).")
@click.option("--size", type=click.IntRange(16, 2048), default=64, show_default=True, help="Patch side, px.")
@click.option("--mpp", type=click.FloatRange(0, min_open=True), default=None,
              help="Resample to this µm/px (default: native).")
@click.option("--split", default=None, help="Only the images of this split (default: every image).")
@click.option("--encoder", type=click.Choice(list(ENCODER_NAMES)), default="small", show_default=True)
@click.option("--cam", type=click.Choice(CAM_KINDS), default="gradcam", show_default=True)
@click.option("--depths", type=click.Choice(["1", "3"]), default="3", show_default=True,
              help="CAM depths whose pseudo-labels train the nucleus classifier (3: weights 0.6/0.2/0.2).")
@click.option("--gate", type=GateType(), default="0.1", show_default=True,
              help="Test-time gate on the patch probability, or 'none'.")
@click.option("--patch-epochs", type=click.IntRange(0), default=8, show_default=True)
@click.option("--nucleus-epochs", type=click.IntRange(0), default=8, show_default=True)
@click.option("--point-radius-um", type=click.FloatRange(0, min_open=True), default=4.0, show_default=True,
              help="Radius of the disc standing for a nucleus known only by its centre.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(1, 1024), default=None, help="torch CPU threads.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data home (default: $NUCDATA_HOME or the platform cache folder).")
def train_weak(dataset: str, out: Path, label_set: str | None, patch_labels: Path | None, size: int,
               mpp: float | None, split: str | None, encoder: str, cam: str, depths: str, gate: float | None,
               patch_epochs: int, nucleus_epochs: int, point_radius_um: float, device: str, threads: int | None,
               seed: int, root: Path | None) -> None:
    """Train nucleus classes from patch-level flags (CAM pseudo-labels at three depths, Han et al. 2022)."""
    import torch

    import nucdata
    from nucdata._util.atomic import atomic_write_json, atomic_write_text
    from nucdata.errors import OutputFolderError
    from nucdata.labels import OWN_LABEL_SET
    from nucdata.views import read_patch_labels
    from nucdata_models.merge.weak_data import weak_patch_data
    from nucdata_models.weak import WeakConfig
    from nucdata_models.weak import train_weak as run

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputFolderError(f"{out}: exists and is not an empty folder; choose a new or empty --out")
    if device == "cuda" and not torch.cuda.is_available():
        raise click.UsageError("--device cuda: torch sees no CUDA device here; use --device cpu (or auto).")
    if device != "cuda" and (threads or cpu_threads()):
        torch.set_num_threads(threads or cpu_threads())
    label_set = label_set or OWN_LABEL_SET.get(dataset)
    if label_set is None:
        raise click.UsageError(f"{dataset} has no label set of its own; pass --label-set")
    ds = nucdata.load(dataset, split=split, label_set=label_set, root=root)
    labels = read_patch_labels(patch_labels) if patch_labels is not None else None
    config = WeakConfig(encoder=encoder, cam=cam, depths=int(depths), gate=gate, patch_epochs=patch_epochs,
                        nucleus_epochs=nucleus_epochs, point_radius_um=point_radius_um, device=device, seed=seed)
    start = time.perf_counter()
    data = weak_patch_data(ds, size, mpp, labels, point_radius_um=point_radius_um, crop_size=config.crop_size)
    click.echo(f"{dataset}: {data.patches.shape[0]:,} patches of {size} px, {len(data):,} nuclei under {label_set}")
    model = run(data, config, progress=click.echo)
    probs = model.predict(data)
    model.save(out)
    predicted = probs.argmax(1)
    lines = ["patch,x,y,true," + ",".join(f"depth{d}" for d in range(config.depths)) + ",predicted"]
    for i in range(len(data)):
        x, y = data.nucleus_xy[i].tolist()
        pseudo = ",".join(str(int(v)) for v in model.pseudo_labels[i])
        lines.append(f"{int(data.nucleus_patch[i])},{x:.2f},{y:.2f},{int(data.labels[i])},{pseudo},"
                     f"{int(predicted[i])}")
    atomic_write_text(out / "pseudo_labels.csv", "\n".join(lines) + "\n")
    known = data.labels >= 0
    summary = {
        "dataset": dataset, "label_set": label_set, "classes": list(data.class_names), "patches": int(len(data.flags)),
        "nuclei": len(data), "patch_labels": str(patch_labels) if patch_labels else "derived",
        "config": config.to_dict(), "seconds": round(time.perf_counter() - start, 1),
        "pseudo_label_agreement": {  # where the dataset's own labels are known: how often each depth is right
            f"depth{d}": float((model.pseudo_labels[known, d] == data.labels[known]).float().mean())
            if bool(known.any()) else None for d in range(config.depths)},
        "history": model.history,
    }
    atomic_write_json(out / "summary.json", summary)
    click.echo(json.dumps(summary["pseudo_label_agreement"]))
    click.echo(f"done in {summary['seconds']:.0f} s: {out}")
