"""The ``nucdata`` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from nucdata._util.version import VERSION as __version__
from nucdata.catalog import get_card, list_datasets
from nucdata.errors import NucdataError
from nucdata.exports import FORMATS as EXPORT_FORMATS


def _fail(exc: NucdataError) -> None:
    click.secho(f"error: {exc}", fg="red", err=True)
    sys.exit(2)


#: Entry-point group through which other packages add commands (nucdata_models adds
#: ``build-merged``), so the core CLI never imports the packages built on it.
PLUGIN_GROUP = "nucdata.commands"


def _plugins() -> dict[str, object]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}


class _Group(click.Group):
    """Turns nucdata's typed errors into one readable message and exit status 2; adds plugin commands."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_plugins()))

    def get_command(self, ctx: click.Context, name: str):
        command = super().get_command(ctx, name)
        if command is None and name in (plugins := _plugins()):
            command = plugins[name].load()
        return command

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except NucdataError as exc:
            _fail(exc)
        except KeyboardInterrupt:
            click.secho("\ninterrupted: nothing half-written was published, and what was finished is kept "
                        "(downloads, build-merged's stages, classify's parts); run the same command again to "
                        "carry on.", fg="yellow", err=True)
            sys.exit(130)


class _Folder(click.Path):
    """``click.Path`` that refuses an empty value (``--out ""`` would silently mean the current folder)."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("is empty; name a folder (use '.' for the current folder)", param, ctx)
        return super().convert(value, param, ctx)


def _folder(**kw) -> _Folder:
    return _Folder(file_okay=False, path_type=Path, **kw)


root_option = click.option(
    "--root", type=_folder(), default=None,
    help="Data home (default: $NUCDATA_HOME or the platform cache folder).",
)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="nucdata")
def main() -> None:
    """Fetch, convert and load the public histopathology nucleus datasets."""


@main.command("list")
@root_option
def list_cmd(root: Path | None) -> None:
    """List the datasets and whether each is prepared ("demo": from generated demo archives, not the real data).

    Your own datasets (``nucdata prepare --custom``) follow, marked "(yours)".
    """
    from nucdata.catalog import list_custom_datasets

    click.echo(f"{'dataset':10s} {'state':9s} {'licence':18s} title")
    for name in list_datasets():
        card = get_card(name, root)
        click.echo(f"{name:10s} {_state(name, root):9s} {card.licence:18s} {card.title}")
    for name in list_custom_datasets(root):
        card = get_card(name, root)
        click.echo(f"{name:10s} {_state(name, root):9s} {card.licence:18s} {card.title} (yours)")


def _state(name: str, root: Path | None) -> str:
    """``prepared``, ``demo`` (a store made from the generated demo archives) or ``-``."""
    from nucdata.acquire import is_prepared, store_path
    from nucdata.testing import DEMO_HASH_SOURCE

    if not is_prepared(name, root):
        return "-"
    try:
        manifest = json.loads((store_path(name, root) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "prepared"
    files = manifest.get("source", {}).get("files", []) if isinstance(manifest, dict) else []
    demo = bool(files) and all(isinstance(f, dict) and f.get("hash_source") == DEMO_HASH_SOURCE for f in files)
    return "demo" if demo else "prepared"


@main.command()
@click.argument("names", nargs=-1)
@root_option
def cite(names: tuple[str, ...], root: Path | None) -> None:
    """BibTeX for datasets and the merging method (no NAME: every dataset and the method).

    NAME is a dataset or `method` (Zhang et al., "Merging nucleus datasets by
    correlation-based cross-training", Medical Image Analysis 2023). See docs/citing.md.
    """
    from nucdata.catalog import cite as run

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
        from nucdata.labels import native_vocabulary
    except ImportError:  # label sets not installed in this build
        return []
    return [(int(code), str(cls_name)) for code, cls_name, *_ in native_vocabulary(name)]


@main.command("label-sets")
@click.argument("name", required=False)
@click.option("--mapping", "source", default=None, metavar="SOURCE",
              help="Show the table from SOURCE into NAME: a dataset (native codes), or a label set's "
                   "class ids (consep4, nucls_main, nucls_super, or set:<label set>).")
@click.option("--check", is_flag=True,
              help="Check every table against paths through a third set and against its reverse; "
                   "exit 1 on a finding not accepted in the data.")
def label_sets_cmd(name: str | None, source: str | None, check: bool) -> None:
    """List the label sets, show one, show a mapping table (--mapping SOURCE), or check them (--check)."""
    from nucdata.labels import (
        MERGED_LABEL_SETS,
        check_tables,
        label_set,
        list_label_sets,
        mapping,
    )
    from nucdata.labels import table_version as tables_version

    if check:
        report = check_tables()
        click.echo(report.format())
        if not report.ok:
            raise SystemExit(1)
        return
    if name is None and source is not None:
        raise click.UsageError(
            f"--mapping {source} needs the target label set: nucdata label-sets NAME --mapping {source} "
            "(`nucdata label-sets` lists the names)."
        )
    if name is None:
        click.echo(f"label-set tables v{tables_version()}")
        for ls_name in list_label_sets():
            ls = label_set(ls_name)
            merged = " (merged)" if ls_name in MERGED_LABEL_SETS else ""
            cover = "" if ls.exhaustive else " [not exhaustive: +outside]"
            click.echo(f"{ls_name:12s} v{ls.version} {len(ls):2d} classes{merged}{cover}: {', '.join(ls.names)}")
        return
    click.echo(str(mapping(source, name) if source else label_set(name)))


@main.command()
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every dataset (prefetch for offline machines).")
@click.option("--no-hash-check", is_flag=True, help="Accept files whose SHA-256 differs (recorded as unverified).")
@root_option
def download(names: tuple[str, ...], all_: bool, no_hash_check: bool, root: Path | None) -> None:
    """Download and verify datasets' archives into the raw folder."""
    from nucdata.acquire import fetch

    if not names and not all_:
        raise click.UsageError("name the datasets to download (`nucdata list` shows them), or use --all")
    if names and all_:
        raise click.UsageError("give dataset names or --all, not both")
    for name in list_datasets() if all_ else names:
        for f in fetch(name, root, check_hash=not no_hash_check, progress=click.echo):
            state = "verified" if f.verified else "NOT verified (no hash to check)"
            click.echo(f"{name}: {f.path} sha256 {f.sha256} {state}")


_file = click.Path(dir_okay=False, exists=True, path_type=Path)


@main.command()
@click.argument("name", required=False)
@click.option("--from", "source", type=_folder(exists=True),
              help="An already-extracted folder in the official layout (recorded as unverified).")
@click.option("--force", is_flag=True, help="Rebuild even if a store exists.")
@click.option("--offline", is_flag=True, help="Never use the network (manual and raw folders only).")
@click.option("--no-hash-check", is_flag=True, help="Accept archives whose SHA-256 differs.")
@click.option("--no-count-check", is_flag=True, help="Publish even if counts differ from the card.")
@click.option("--quiet", is_flag=True, help="Print only the result.")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Processes for converters that use them (PanNuke); default: the machine's cores less one.")
@click.option("--custom", "custom", metavar="NAME", default=None,
              help="Make your own labelled images the dataset NAME (with --images and one of --instances, "
                   "--geojson, --hovernet-json).")
@click.option("--images", type=_folder(exists=True), default=None, help="--custom: the folder of images.")
@click.option("--instances", type=_folder(exists=True), default=None,
              help="--custom: instance label images (PNG/TIFF/.npy), matched to the images by stem.")
@click.option("--geojson", type=_folder(exists=True), default=None,
              help="--custom: QuPath GeoJSON files, one per image, matched by stem.")
@click.option("--hovernet-json", "hovernet_json", type=_folder(exists=True), default=None,
              help="--custom: HoVer-Net JSON files, one per image, matched by stem.")
@click.option("--labels", type=_file, default=None,
              help="--custom: a CSV image,id,label giving the nuclei's classes (else the files' own).")
@click.option("--vocabulary", type=_file, default=None,
              help="--custom: your label set (JSON, the schema of nucdata's vocabularies).")
@click.option("--mapping", type=_file, default=None,
              help="--custom: your table into nucdata's label sets (JSON, the schema of nucdata's mappings); "
                   "without it your labels are unknown under them.")
@click.option("--mpp", type=click.FloatRange(min=0, min_open=True), default=None,
              help="--custom: µm per pixel of the images (else each file's own).")
@root_option
def prepare(name: str | None, source: Path | None, force: bool, offline: bool, no_hash_check: bool,
            no_count_check: bool, quiet: bool, jobs: int | None, custom: str | None, images: Path | None,
            instances: Path | None, geojson: Path | None, hovernet_json: Path | None, labels: Path | None,
            vocabulary: Path | None, mapping: Path | None, mpp: float | None, root: Path | None) -> None:
    """Convert a dataset into the store (downloading it first if needed), or your own (--custom)."""
    from nucdata._util.progress import set_quiet

    set_quiet(quiet)
    given = {"--images": images, "--instances": instances, "--geojson": geojson, "--hovernet-json": hovernet_json,
             "--labels": labels, "--vocabulary": vocabulary, "--mapping": mapping, "--mpp": mpp}
    if custom is not None:
        from nucdata.acquire import prepare_custom

        if name is not None or source is not None:
            raise click.UsageError("--custom NAME takes the dataset's name itself: nucdata prepare --custom NAME "
                                   "--images DIR (--instances DIR | --geojson DIR | --hovernet-json DIR)")
        if images is None:
            raise click.UsageError("--custom needs --images DIR (the folder of images)")
        if sum(v is not None for v in (instances, geojson, hovernet_json)) != 1:
            raise click.UsageError("--custom needs exactly one of --instances DIR, --geojson DIR, --hovernet-json DIR")
        path = prepare_custom(custom, images, instances=instances, geojson=geojson, hovernet_json=hovernet_json,
                              labels=labels, vocabulary=vocabulary, mapping=mapping, mpp=mpp, root=root,
                              progress=None if quiet else click.echo)
        click.echo(str(path))
        return
    stray = [flag for flag, value in given.items() if value is not None]
    if stray:
        raise click.UsageError(f"{', '.join(stray)} go with --custom NAME (your own labelled images)")
    if name is None:
        raise click.UsageError("name a dataset (nucdata list), or use --custom NAME for your own images")
    from nucdata.acquire import prepare as run

    demo_before = _state(name, root) == "demo"
    path = run(name, source, root, download=not offline, check_hash=not no_hash_check,
               check_counts=not no_count_check, force=force,
               progress=None if quiet else click.echo, jobs=jobs)
    click.echo(str(path))
    if demo_before and _state(name, root) == "demo":  # kept: a demo store satisfies prepare
        click.echo(f"note: this {name} store was built from the generated demo archives (nucdata demo), not the "
                   f"real data; to convert the real files run: nucdata prepare {name} --force", err=True)


@main.command()
@click.argument("names", nargs=-1)
@click.option("--deep", is_flag=True,
              help="Also hash every store file against its manifest and read every instance map.")
@click.option("--merged", "merged", type=_folder(exists=True), default=None, metavar="DIR",
              help="Check a build-merged output folder instead: its JSON files, every merged column "
                   "against its store, codes, probabilities and the published pickles.")
@root_option
def verify(names: tuple[str, ...], deep: bool, merged: Path | None, root: Path | None) -> None:
    """Re-check downloaded archives and prepared stores, or a merged output (--merged DIR).

    Each archive line says what was checked: size, format, and SHA-256 only where the
    card has one, and whose hash it is ("no publisher hash" when it is a third party's
    or there is none). For each store: every column and pixel file exists and is
    complete, with the shape and dtype its manifest recorded; lengths agree with the
    counts; nucleus ranges, centroids and boxes are consistent; image and split names
    are plain file names; with --deep, SHA-256 of every file. Every problem is listed;
    the exit status is 1 when any was found.
    """
    from nucdata.acquire import verify as run
    from nucdata.acquire import verify_merged

    if merged is not None and names:
        raise click.UsageError("--merged DIR checks one merged output; give no dataset names with it.")
    checks = verify_merged(merged, deep=deep) if merged is not None else run(list(names) or None, deep=deep, root=root)
    failed = False
    for check in checks:
        if check.ok:
            click.echo(f"{check.dataset}: {check.message}")
        else:
            failed = True
            click.secho(f"{check.dataset}: {check.message}", fg="red")
    if failed:
        sys.exit(1)


split_option = click.option("--split", default=None, help="A split or protocol part (default: every image).")
label_set_option = click.option("--label-set", default=None, help="Express labels in this label set.")


@main.command()
@click.argument("name")
@click.option("--format", "fmt", required=True,
              type=click.Choice(list(EXPORT_FORMATS)))
@click.option("--out", type=_folder(), required=True,
              help="The export folder: new, empty, or an earlier export (with --overwrite); written whole, "
                   "atomically.")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier export in --out (a folder holding other files is always refused).")
@split_option
@label_set_option
@click.option("--mpp", type=click.FloatRange(min=0, min_open=True), default=None,
              help="pannuke / hovernet-patches: resample to this many microns per pixel.")
@click.option("--assume-mpp", type=click.FloatRange(min=0, min_open=True), default=None,
              help="mpp to use for images that carry none (else they are an error under --mpp).")
@click.option("--size", type=click.IntRange(min=4), default=256, show_default=True,
              help="pannuke: patch side (at most $NUCDATA_MAX_PATCH_SIDE, 2048 by default).")
@click.option("--win", type=click.IntRange(min=4), default=540, show_default=True,
              help="hovernet-patches: window (HoVer-Net's default; at most $NUCDATA_MAX_PATCH_SIDE).")
@click.option("--step", type=click.IntRange(min=1), default=164, show_default=True, help="hovernet-patches: step (HoVer-Net's default).")
@root_option
def export(name: str, fmt: str, out: Path, overwrite: bool, split: str | None, label_set: str | None,
           mpp: float | None, assume_mpp: float | None, size: int, win: int, step: int, root: Path | None) -> None:
    """Export a prepared dataset: QuPath GeoJSON, COCO, HoVer-Net JSON, PanNuke folds or HoVer-Net patches.

    The export is built beside --out and published as a whole: a killed export leaves
    the previous one (or nothing). It carries a marker file, .nucdata-export.
    """
    from nucdata._util.limits import check_patch_side
    from nucdata.dataset import load
    from nucdata.exports import export as run

    options: dict = {}
    if fmt == "pannuke":
        options = {"mpp": mpp, "size": check_patch_side(size, "--size"), "assume_mpp": assume_mpp}
    elif fmt == "hovernet-patches":
        options = {"mpp": mpp, "win": check_patch_side(win, "--win"), "step": step, "assume_mpp": assume_mpp}
    elif mpp is not None:
        raise click.UsageError("--mpp applies to --format pannuke and hovernet-patches")
    written = run(load(name, split, label_set, root=root), fmt, out, overwrite=overwrite, **options)
    click.echo(f"{len(written)} file(s) written to {out}")


@main.command()
@click.argument("name")
@click.option("--out", type=_folder(), required=True)
@split_option
@label_set_option
@root_option
def overlay(name: str, out: Path, split: str | None, label_set: str | None, root: Path | None) -> None:
    """Write PNGs of each image with nucleus outlines coloured by class, and a legend."""
    from nucdata.dataset import load
    from nucdata.exports import write_overlays

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
    from nucdata.dataset import load
    from nucdata.exports import format_summary, summarise

    summary = summarise(load(name, split, label_set, root=root))
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))


@main.command()
@click.option("--root", type=_folder(), default=None,
              help="Use this folder as the demo's data home and keep it (default: $NUCDATA_HOME if set, "
                   "else a temporary folder removed at the end).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the generated archives.")
def demo(root: Path | None, seed: int) -> None:
    """Generate small archives in each native layout and run fetch, prepare and load on them.

    No network is used: the archives go through the manual-download route. The last
    lines print the `nucdata.load(...)` call that opens what was made.
    """
    from nucdata.testing import run_demo

    run_demo(root, seed=seed, echo=click.echo)


if __name__ == "__main__":  # pragma: no cover
    main()
