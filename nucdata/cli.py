"""The ``nucdata`` command line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from . import __version__
from .errors import NucdataError
from .registry import get_card, list_datasets


def _fail(exc: NucdataError) -> None:
    click.secho(f"error: {exc}", fg="red", err=True)
    sys.exit(2)


class _Group(click.Group):
    """Turns nucdata's typed errors into one readable message and exit status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except NucdataError as exc:
            _fail(exc)


root_option = click.option(
    "--root", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Data home (default: $NUCDATA_HOME or the platform cache folder).",
)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="nucdata")
def main() -> None:
    """Fetch, convert and load the public histopathology nucleus datasets."""


@main.command("list")
@root_option
def list_cmd(root: Path | None) -> None:
    """List the datasets and whether each is prepared."""
    from .prepare import is_prepared

    click.echo(f"{'dataset':10s} {'state':9s} {'licence':18s} title")
    for name in list_datasets():
        card = get_card(name, root)
        state = "prepared" if is_prepared(name, root) else "-"
        click.echo(f"{name:10s} {state:9s} {card.licence:18s} {card.title}")


@main.command()
@click.argument("names", nargs=-1)
@root_option
def cite(names: tuple[str, ...], root: Path | None) -> None:
    """BibTeX for datasets and the merging method (no NAME: every dataset and the method).

    NAME is a dataset or `method` (Zhang et al., "Merging nucleus datasets by
    correlation-based cross-training", Medical Image Analysis 2023). See docs/citing.md.
    """
    from .cite import cite as run

    click.echo(run(*names, root=root), nl=False)


@main.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the card as JSON.")
@root_option
def info(name: str, as_json: bool, root: Path | None) -> None:
    """Show a dataset's card: source, licence, citation, splits, counts, files."""
    card = get_card(name, root)
    if as_json:
        from dataclasses import asdict

        click.echo(json.dumps(asdict(card), indent=2))
        return
    click.secho(card.title, bold=True)
    click.echo(f"  name       {card.name}")
    click.echo(f"  homepage   {card.homepage}")
    click.echo(f"  licence    {card.licence}")
    mpp = "unknown" if card.mpp is None else f"{card.mpp} um/px"
    click.echo(f"  mpp        {mpp}" + (f"  ({card.extra['mpp_note']})" if "mpp_note" in card.extra else ""))
    classes = _native_classes(card.name)
    click.echo("  classes    " + (", ".join(f"{c}={n}" for c, n in classes) if classes else "none (nuclei have masks but no class)"))
    click.echo("  splits")
    for split, text in card.splits.items():
        click.echo(f"    {split:22s} {text}")
    if card.extra.get("protocols"):
        click.echo("  protocols  " + ", ".join(f"{p}/{part}" for p, parts in card.extra["protocols"].items() for part in parts))
    click.echo(f"  expected   {json.dumps(card.expected.get('images'))} images")
    if card.expected.get("regions"):
        click.echo(f"             {json.dumps(card.expected['regions'])} annotations")
    click.echo("  files")
    for f in card.files:
        size = "size unknown" if f.size is None else f"{f.size:,} bytes"
        click.echo(f"    {f.name}  ({f.role}, {size})")
        click.echo(f"      sha256 {f.sha256 or 'unknown'}  [{f.hash_source}]")
        for url in f.mirrors:
            click.echo(f"      mirror {url}")
    click.echo("  manual download")
    click.echo("    " + card.instructions(root))
    for note in card.notes:
        click.echo(f"  note: {note}")
    if card.overridden_by:
        click.echo(f"  local override: {card.overridden_by}")
    click.echo("  citation")
    click.echo("    " + card.citation.replace("\n", "\n    "))


def _native_classes(name: str) -> list[tuple[int, str]]:
    try:
        from .labelsets import native_vocabulary
    except ImportError:  # label sets not installed in this build
        return []
    return [(int(code), str(cls_name)) for code, cls_name, *_ in native_vocabulary(name)]


@main.command("label-sets")
@click.argument("name", required=False)
@click.option("--mapping", "source", default=None, metavar="DATASET",
              help="Show the table from DATASET's native classes into NAME.")
def label_sets_cmd(name: str | None, source: str | None) -> None:
    """List the label sets, show one, or show a mapping table (--mapping DATASET)."""
    from .labelsets import MERGED_LABEL_SETS, label_set, list_label_sets, mapping

    if name is None and source is not None:
        raise click.UsageError(
            f"--mapping {source} needs the target label set: nucdata label-sets NAME --mapping {source} "
            "(`nucdata label-sets` lists the names)."
        )
    if name is None:
        for ls_name in list_label_sets():
            ls = label_set(ls_name)
            merged = " (merged)" if ls_name in MERGED_LABEL_SETS else ""
            click.echo(f"{ls_name:12s} v{ls.version} {len(ls):2d} classes{merged}: {', '.join(ls.names)}")
        return
    click.echo(str(mapping(source, name) if source else label_set(name)))


@main.command()
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every dataset (prefetch for offline machines).")
@click.option("--no-hash-check", is_flag=True, help="Accept files whose SHA-256 differs (recorded as unverified).")
@root_option
def download(names: tuple[str, ...], all_: bool, no_hash_check: bool, root: Path | None) -> None:
    """Download and verify datasets' archives into the raw folder."""
    from .fetch import fetch

    for name in list_datasets() if all_ else names:
        for f in fetch(name, root, check_hash=not no_hash_check, progress=click.echo):
            state = "verified" if f.verified else "NOT verified (no hash to check)"
            click.echo(f"{name}: {f.path} sha256 {f.sha256} {state}")


@main.command()
@click.argument("name")
@click.option("--from", "source", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="An already-extracted folder in the official layout (recorded as unverified).")
@click.option("--force", is_flag=True, help="Rebuild even if a store exists.")
@click.option("--offline", is_flag=True, help="Never use the network (manual and raw folders only).")
@click.option("--no-hash-check", is_flag=True, help="Accept archives whose SHA-256 differs.")
@click.option("--no-count-check", is_flag=True, help="Publish even if counts differ from the card.")
@click.option("--quiet", is_flag=True, help="Print only the result.")
@root_option
def prepare(name: str, source: Path | None, force: bool, offline: bool, no_hash_check: bool,
            no_count_check: bool, quiet: bool, root: Path | None) -> None:
    """Convert a dataset into the store (downloading it first if needed)."""
    from .prepare import prepare as run

    path = run(name, source, root, download=not offline, check_hash=not no_hash_check,
               check_counts=not no_count_check, force=force,
               progress=None if quiet else click.echo)
    click.echo(str(path))


@main.command()
@click.argument("names", nargs=-1)
@root_option
def verify(names: tuple[str, ...], root: Path | None) -> None:
    """Re-check downloaded archives (size, format, SHA-256) and stores' columns."""
    from .fetch import verify as verify_file
    from .home import manual_dir, raw_dir
    from .prepare import is_prepared, store_path
    from .store import Store

    failed = False
    for name in names or tuple(list_datasets()):
        card = get_card(name, root)
        for spec in card.files:
            found = [p for p in (manual_dir(root) / spec.name, raw_dir(root) / spec.name) if p.is_file()]
            if not found:
                click.echo(f"{name}: {spec.name} not downloaded")
                continue
            try:
                verify_file(found[0], spec, fix="Download it again.")
                click.echo(f"{name}: {found[0]} OK")
            except NucdataError as exc:
                failed = True
                click.secho(f"{name}: {exc}", fg="red")
        if is_prepared(name, root):
            store = Store(store_path(name, root))
            for table in ("images", "nuclei"):
                for column in store.manifest["columns"][table]:
                    store.column(table, column)
            click.echo(f"{name}: store complete ({store.n_images} images, {store.n_nuclei} nuclei)")
    if failed:
        sys.exit(1)


split_option = click.option("--split", default=None, help="A split or protocol part (default: every image).")
label_set_option = click.option("--label-set", default=None, help="Express labels in this label set.")


@main.command()
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(["geojson", "coco", "hovernet-json"]), required=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@split_option
@label_set_option
@root_option
def export(name: str, fmt: str, out: Path, split: str | None, label_set: str | None, root: Path | None) -> None:
    """Export a prepared dataset as QuPath GeoJSON, COCO or HoVer-Net JSON."""
    from .dataset import load
    from .exports import export as run

    written = run(load(name, split, label_set, root=root), fmt, out)
    click.echo(f"{len(written)} file(s) written to {out}")


@main.command()
@click.argument("name")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@split_option
@label_set_option
@root_option
def overlay(name: str, out: Path, split: str | None, label_set: str | None, root: Path | None) -> None:
    """Write PNGs of each image with nucleus outlines coloured by class, and a legend."""
    from .dataset import load
    from .overlay import write_overlays

    written = write_overlays(load(name, split, label_set, root=root), out)
    click.echo(f"{len(written)} overlay(s) written to {out}")


@main.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@split_option
@label_set_option
@root_option
def stats(name: str, as_json: bool, split: str | None, label_set: str | None, root: Path | None) -> None:
    """Counts per split and class, nuclei per image and the area distribution."""
    from .dataset import load
    from .stats import format_summary, summarise

    summary = summarise(load(name, split, label_set, root=root))
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))


def _epochs(text: str) -> dict[str, int]:
    parts = [int(p) for p in text.split(",")]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or min(parts) < 0:
        raise click.BadParameter("give one number for every stage, or three: A,B,C")
    return dict(zip("ABC", parts, strict=True))


@main.command("build-merged")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output folder.")
@click.option("--datasets", default=None, help="Comma-separated datasets (default: every available one).")
@click.option("--label-sets", default="pannuke,nucls,consep,monusac", show_default=True)
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Predict with this model instead of training.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--epochs", default=None, help="Epochs per stage: N or A,B,C (default 10, demo 6,4,4).")
@click.option("--encoder", type=click.Choice(["small", "resnet18", "resnet50"]), default="small", show_default=True)
@click.option("--crop-size", default=32, show_default=True)
@click.option("--batch-size", default=128, show_default=True)
@click.option("--overlays", default="16", show_default=True, help="Overlay PNGs per label set and dataset, or 'all'.")
@click.option("--demo", is_flag=True, help="Run on a generated world of all seven datasets whose truth is known.")
@click.option("--demo-scale", default=4, show_default=True,
              help="With --demo: size of the world (4: ~4,800 nuclei, about 1.5 min on two cores; ~300: full scale, ~350,000 nuclei).")
@click.option("--seed", default=0, show_default=True)
@click.option("--quiet", is_flag=True, help="Only the result.")
@root_option
def build_merged(out: Path, datasets: str | None, label_sets: str, checkpoint: Path | None, device: str,
                 epochs: str | None, encoder: str, crop_size: int, batch_size: int, overlays: str, demo: bool,
                 demo_scale: int, seed: int, quiet: bool, root: Path | None) -> None:
    """Label every nucleus of every dataset under every label set, and write the merged dataset."""
    from nucdata_models.merged import BuildOptions
    from nucdata_models.merged import build_merged as run

    options = BuildOptions(
        out=out, datasets=[d.strip() for d in datasets.split(",")] if datasets else None,
        label_sets=[s.strip() for s in label_sets.split(",")], checkpoint=checkpoint, device=device,
        epochs=_epochs(epochs) if epochs else ({"A": 6, "B": 4, "C": 4} if demo else {"A": 10, "B": 10, "C": 10}),
        encoder=encoder, crop_size=crop_size, batch_size=batch_size,
        overlays=None if overlays == "all" else int(overlays), root=root, demo=demo, demo_scale=demo_scale, seed=seed,
    )
    start = time.perf_counter()
    report = run(options, say=(lambda _m: None) if quiet else click.echo)
    click.echo(f"done in {time.perf_counter() - start:.0f} s: {out} (report: {out / 'report.md'})")
    if "demo_truth" in report:
        for name, m in report["demo_truth"].items():
            click.echo(f"  {name:8s} filled-label accuracy {m['merged_accuracy']:.3f} "
                       f"(baseline, own dataset only: {m['baseline_accuracy']:.3f})")


@main.command()
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Use this folder as the demo's data home and keep it (default: $NUCDATA_HOME if set, "
                   "else a temporary folder removed at the end).")
@click.option("--seed", default=0, show_default=True, help="Seed of the generated archives.")
def demo(root: Path | None, seed: int) -> None:
    """Generate small archives in each native layout and run fetch, prepare and load on them.

    No network is used: the archives go through the manual-download route. The last
    lines print the `nucdata.load(...)` call that opens what was made.
    """
    from .demo.run import run_demo

    run_demo(root, seed=seed, echo=click.echo)


if __name__ == "__main__":  # pragma: no cover
    main()
