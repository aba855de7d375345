"""Prepare a dataset: fetch (or take a local folder), convert, check counts, publish.

Under the dataset's lock: stale temporary folders of interrupted runs are removed,
archives are extracted into scratch space (raw files are only read), the source
converts into a :class:`~nucdata.store.StoreWriter`, counts are checked against
the card, and the store is published with its manifest written last.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nucdata._util import atomic, disk
from nucdata._util.deprecation import renamed_keywords
from nucdata._util.faults import fault_point
from nucdata._util.home import stores_dir, work_dir
from nucdata._util.locks import dataset_lock
from nucdata._util.progress import Counter
from nucdata._util.version import VERSION as __version__
from nucdata.acquire._archive import extract
from nucdata.acquire._fetch import fetch
from nucdata.catalog import Card, get_card, is_custom, write_custom_card
from nucdata.datasets import ConversionReport, converter_for
from nucdata.errors import (
    CountMismatchError,
    InvalidArgumentError,
    MissingFilesError,
    UserTableError,
)
from nucdata.labels import build_user_tables, check_user_tables, table_version, write_user_tables
from nucdata.store import MANIFEST, StoreWriter, clean_stale, is_complete, store_folder


def store_path(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Where the store of dataset ``name`` for the installed converter lives."""
    card = get_card(name, root)
    return store_folder(card.name, converter_for(card).version, root)


def is_prepared(name: str, root: str | os.PathLike[str] | None = None) -> bool:
    """Whether dataset ``name``'s store for the installed converter is published."""
    return is_complete(store_path(name, root))


#: Bytes per pixel of a store: RGB planes (3) and the int32 instance map (4).
_STORE_BYTES_PER_PIXEL = 7


def store_bytes_estimate(card: Card) -> int | None:
    """About how many bytes dataset ``card``'s store takes (its pixels), or ``None`` when unknown.

    From the card's fixed ``image_size`` (``"HxW"``) and its expected image count; a card
    whose images vary in size has no estimate.
    """
    size = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", str(card.extra.get("image_size") or ""))
    images = card.expected.get("images") if isinstance(card.expected, dict) else None
    if size is None or not isinstance(images, dict):
        return None
    count = sum(v for v in images.values() if isinstance(v, int))
    return count * int(size[1]) * int(size[2]) * _STORE_BYTES_PER_PIXEL or None


def _still_needed(estimate: int | None, writers: list) -> int | None:
    """What is left of ``estimate`` beyond what the store's staging folder already holds."""
    if estimate is None:
        return None
    used = 0
    for writer in writers:
        with contextlib.suppress(OSError):
            used += sum(p.stat().st_size for p in Path(writer.tmp_dir).rglob("*") if p.is_file())
    return max(estimate - used, 0) or None


@renamed_keywords(source="from_dir")
def prepare(
    name: str,
    from_dir: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    check_hash: bool = True,
    check_counts: bool = True,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    jobs: int | None = None,
) -> Path:
    """Convert dataset ``name`` into the store and return the store's folder.

    Parameters
    ----------
    name
        Dataset name (``nucdata.list_datasets()``).
    from_dir
        An already-extracted folder in the dataset's official layout. When given,
        nothing is downloaded and the manifest records an unverified local source.
        (``source=`` is its deprecated old name.)
    root
        Data home; defaults to ``$NUCDATA_HOME`` or the platform cache folder.
    download
        Allow the network when the archives are neither in ``manual/`` nor ``raw/``.
    check_hash
        Refuse files whose SHA-256 differs from the card's.
    check_counts
        Refuse a conversion whose image or annotation counts differ from the card's.
    force
        Rebuild even when a store already exists (the old one is replaced atomically).
    progress
        Called with one line of text per step.
    jobs
        Processes for converters that use them (PanNuke); ``None``: the machine's
        cores less one (the writer's). The store is the same for every value.

    Raises
    ------
    MissingFilesError, CorruptArchiveError, MalformedAnnotationError, DownloadError,
    CountMismatchError, StoreLockedError
        Each names the file at fault and the fix; nothing is published.
    """
    card = get_card(name, root)
    src = converter_for(card)
    dataset_dir = stores_dir(root) / card.name
    final = dataset_dir / src.version
    say = progress or (lambda _msg: None)
    if (final / MANIFEST).is_file() and not force and from_dir is None:  # no lock: a read-only home works
        say(f"{card.name}: already prepared at {final}")
        return final
    with dataset_lock(dataset_dir):
        for line in clean_stale(dataset_dir):
            say(f"{card.name}: {line}")
        for line in atomic.recover(work_dir(root) / card.name).lines():
            say(f"{card.name}: {line} (extraction scratch)")
        _remove_legacy_scratch(work_dir(root), card.name, say)
        if (final / MANIFEST).is_file() and not force and from_dir is None:
            say(f"{card.name}: already prepared at {final}")
            return final
        if from_dir is None and is_custom(card):  # a user dataset: its images folder, as its card records
            from_dir = card.extra["custom_source"]["images"]
        scratch: Path | None = None
        try:
            if from_dir is not None:
                folder = Path(from_dir).expanduser().resolve()
                if not folder.is_dir():
                    raise MissingFilesError(
                        f"{folder}: folder not found. Pass the folder that holds the extracted "
                        f"{card.title} files."
                    )
                provenance: dict[str, Any] = {"kind": "folder", "path": str(folder), "verified": False}
            else:
                files = fetch(card.name, root, check_hash=check_hash, allow_network=download, progress=say)
                scratch = atomic.staging_dir(work_dir(root) / card.name)
                for f in files:
                    say(f"{card.name}: extracting {f.path.name}")
                    extract(f.path, scratch / card.file(f.path.name).role)
                fault_point("prepare:extracted")
                folder = scratch
                provenance = {
                    "kind": "archives",
                    "files": [
                        {"name": f.path.name, "sha256": f.sha256, "origin": f.origin,
                         "hash_checked": f.verified, "hash_source": f.hash_source}
                        for f in files
                    ],
                    "verified": all(f.verified for f in files),
                }
            images = card.expected.get("images")
            total = sum(images.values()) if isinstance(images, dict) else None
            counter = Counter(total, desc=f"converting {card.name}", unit="images")
            estimate = store_bytes_estimate(card)
            written: list[StoreWriter] = []
            with disk.mapped(final, f"building the {card.name} store",
                             needed=lambda: _still_needed(estimate, written),
                             estimate="from the card's image size and count, less what the store holds so far"), \
                    StoreWriter(final, card.name, src.version, progress=counter) as writer:
                written.append(writer)
                options = {"jobs": jobs} if "jobs" in inspect.signature(src.convert).parameters else {}
                try:
                    report = src.convert(folder, writer, progress=say, **options)
                except MissingFilesError as exc:
                    if scratch is None:
                        raise
                    raise MissingFilesError(_wrong_archives(card, files, scratch, exc)) from None
                counts = _counts(writer)
                problems = _check_counts(card, counts, report)
                if problems and check_counts:
                    raise CountMismatchError(
                        f"{card.name}: the converted files disagree with the registry card:\n"
                        + "\n".join(f"  - {p}" for p in problems)
                        + "\nThe archive may be a different release. Nothing was published; "
                        "pass --no-count-check (check_counts=False) to convert it anyway."
                    )
                manifest = {
                    "label_tables": table_version(),
                    "nucdata_version": __version__,
                    "source": provenance,
                    "card_override": card.overridden_by,
                    "licence": card.licence,
                    "citation": card.citation,
                    "homepage": card.homepage,
                    "counts": counts,
                    "annotations_read": dict(report.regions),
                    "dropped": dict(sorted(report.dropped.items())),
                    "rules": report.rules,
                    "notes": report.notes,
                    "count_check": "passed" if not problems else ("failed: " + "; ".join(problems)),
                    **({"extra": report.extra} if report.extra else {}),
                }
                fault_point("prepare:converted")
                path = writer.publish(manifest)
            say(f"{card.name}: {counts['images']['total']} images, {counts['nuclei']['total']} nuclei -> {path}")
            return path
        finally:
            if scratch is not None:
                atomic.discard(scratch)


def _wrong_archives(card: Card, files: list, scratch: Path, exc: Exception) -> str:
    """The converter's complaint about an extracted archive, told with the archives and what they hold.

    The converter names the extraction scratch, which is removed before the user reads
    the message; this names the archives instead, lists their top-level entries and
    says which files the layout needs.
    """
    held = sorted({p.name + ("/" if p.is_dir() else "") for part in scratch.iterdir() if part.is_dir()
                   for p in part.iterdir()})
    shown = ", ".join(held[:12]) + (f", ... ({len(held)} entries)" if len(held) > 12 else "") if held else "nothing"
    names = ", ".join(str(f.path) for f in files)
    complaint = str(exc).replace(str(scratch), "the extracted archive")
    return (f"{card.name}: {names} does not hold the {card.title} layout; it holds: {shown}. "
            f"The converter reports: {complaint} Replace it with the published file "
            f"(`nucdata info {card.name}` lists the files and where to get them).")


def _remove_legacy_scratch(work: Path, name: str, say: Callable[[str], None]) -> None:
    """Remove ``work/<name>-<8 hex>`` scratch of earlier development versions (under the lock)."""
    if not work.is_dir():
        return
    pattern = re.compile(rf"{re.escape(name)}-[0-9a-f]{{8}}")
    for child in work.iterdir():
        if child.is_dir() and not child.is_symlink() and pattern.fullmatch(child.name):
            shutil.rmtree(child, ignore_errors=True)
            say(f"{name}: removed the extraction scratch of an interrupted run: {child.name}")


def _counts(writer: StoreWriter) -> dict[str, Any]:
    splits = np.asarray(writer.images["split"], dtype=object)
    per_image = np.asarray(writer.images["nucleus_count"], dtype=np.int64)
    labels = writer.nucleus_labels
    images = {str(s): int((splits == s).sum()) for s in dict.fromkeys(splits.tolist())}
    nuclei = {str(s): int(per_image[splits == s].sum()) for s in images}
    codes, freq = np.unique(labels, return_counts=True)
    return {
        "images": {**images, "total": int(len(splits))},
        "nuclei": {**nuclei, "total": int(per_image.sum())},
        "classes": {str(int(c)): int(n) for c, n in zip(codes, freq, strict=False)},
    }


def _check_counts(card: Card, counts: dict[str, Any], report: ConversionReport) -> list[str]:
    problems = []
    expected_images = card.expected.get("images") or {}
    got_images = {k: v for k, v in counts["images"].items() if k != "total"}
    if expected_images and expected_images != got_images:
        problems.append(f"images per split: expected {expected_images}, got {got_images}")
    expected_regions = card.expected.get("regions") or {}
    got_regions = dict(report.regions)
    if "all" in expected_regions and set(expected_regions) == {"all"}:
        got_regions = {"all": sum(got_regions.values())}
    if expected_regions and expected_regions != got_regions:
        problems.append(f"annotations read per split: expected {expected_regions}, got {got_regions}")
    expected_classes = card.expected.get("classes") or {}
    if expected_classes and expected_classes != counts["classes"]:
        problems.append(f"nuclei per class: expected {expected_classes}, got {counts['classes']}")
    return problems


# -- a user's own labelled images ------------------------------------------------------
#: Largest vocabulary or mapping JSON read (they hold a few classes and rows each).
MAX_TABLE_BYTES = 64 * 1024 * 1024


def _read_table_json(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    import json

    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFilesError(f"{path}: the {what} JSON was not found.")
    if path.stat().st_size > MAX_TABLE_BYTES:
        raise UserTableError(f"{path}: larger than {MAX_TABLE_BYTES:,} bytes, which no {what} is; check the path.")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise UserTableError(f"{path}: the {what} is not UTF-8 text ({exc.reason}).") from None
    except json.JSONDecodeError as exc:
        raise UserTableError(f"{path}: the {what} is not valid JSON: {exc.msg} at line {exc.lineno}, column "
                             f"{exc.colno}.") from None
    return data


def prepare_custom(
    name: str,
    images: str | os.PathLike[str],
    *,
    instances: str | os.PathLike[str] | None = None,
    geojson: str | os.PathLike[str] | None = None,
    hovernet_json: str | os.PathLike[str] | None = None,
    labels: str | os.PathLike[str] | None = None,
    vocabulary: str | os.PathLike[str] | None = None,
    mapping: str | os.PathLike[str] | None = None,
    mpp: float | None = None,
    root: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Make a user's labelled images a dataset: a card, the user's tables and a store.

    ``nucdata prepare --custom NAME``. The images (PNG/JPEG/TIFF, matched to their
    annotation files by stem) and one folder of annotations (instance label images,
    QuPath GeoJSON or HoVer-Net JSON) are converted by the ``custom`` converter
    (:mod:`nucdata.datasets.custom` states every rule) into a store that ``load``,
    exports, tiles and ``build-merged --datasets ...,NAME`` use like any other. The
    card (``registry/NAME.json``, marked custom: licence ``user``, no citation) and the
    tables (``registry/NAME.mapping.json``, ``registry/<vocabulary>.vocabulary.json``)
    are written into the data home; the tables are validated by the packaged tables'
    rules and checker (:func:`nucdata.labels.build_user_tables`,
    :func:`nucdata.labels.check_user_tables`). Without ``mapping`` the dataset's labels
    are unknown under every packaged label set (like Kumar's); without ``vocabulary`` or
    ``mapping`` its native classes are those the files (or the labels CSV) name.

    Parameters
    ----------
    name
        The dataset's name: lowercase letters, digits, ``_``/``-``, not a packaged dataset's
        or label set's.
    images
        The folder of images.
    instances, geojson, hovernet_json
        The folder of annotations, in exactly one of the three formats.
    labels
        A labels CSV (``image,id,label``) giving the classes (else the files' own).
    vocabulary
        The user's label set (JSON, the schema of ``nucdata/labels/vocabularies/*.json``).
    mapping
        The user's table (JSON, the schema of ``nucdata/labels/mappings/*.json``; its
        ``accepted`` list may accept checker findings with a reason).
    mpp
        µm/px of every image (else each image file's own, else unknown).
    root
        The data home.
    progress
        Called with one line of text per step.

    Returns
    -------
    Path
        The store's folder.

    Raises
    ------
    UserTableError
        A vocabulary or mapping that breaks the rules or contradicts the packaged tables
        (the message names the file, the row and the fix).
    MissingFilesError, MalformedAnnotationError, UnsupportedFormatError
        Missing folders, no image matched, or an annotation file nucdata cannot read.
    """
    from nucdata._util.home import registry_dir
    from nucdata.datasets.custom import class_names_in

    say = progress or (lambda _msg: None)
    given = {"instances": instances, "geojson": geojson, "hovernet-json": hovernet_json}
    chosen = [(fmt, folder) for fmt, folder in given.items() if folder is not None]
    if len(chosen) != 1:
        raise InvalidArgumentError(
            f"prepare --custom {name}: give exactly one annotations folder (--instances, --geojson or "
            f"--hovernet-json); got {len(chosen)}.")
    fmt, ann = chosen[0]
    image_dir = Path(images).expanduser().resolve()
    ann_dir = Path(ann).expanduser().resolve()
    for folder, what in ((image_dir, "images"), (ann_dir, f"{fmt} annotations")):
        if not folder.is_dir():
            raise MissingFilesError(f"{folder}: the {what} folder was not found. Pass an existing folder.")
    if mpp is not None and not (isinstance(mpp, (int, float)) and mpp > 0 and mpp == mpp):
        raise InvalidArgumentError(f"--mpp {mpp!r}: µm per pixel is a positive number (0.25 at 40x).")
    labels_path = str(Path(labels).expanduser().resolve()) if labels is not None else None
    if labels_path is not None and not Path(labels_path).is_file():
        raise MissingFilesError(f"{labels_path}: the labels CSV was not found.")
    source = {"images": str(image_dir), "format": fmt, "annotations": str(ann_dir), "labels": labels_path}
    vocab_data = _read_table_json(vocabulary, "vocabulary") if vocabulary is not None else None
    mapping_data = _read_table_json(mapping, "mapping") if mapping is not None else None
    found = None
    if vocab_data is None and not (isinstance(mapping_data, dict) and "native_classes" in mapping_data):
        say(f"{name}: reading the classes the annotation files name")
        found = class_names_in(source)
    tables = build_user_tables(name, vocabulary=vocab_data, mapping=mapping_data, found=found,
                               vocabulary_file=str(vocabulary), mapping_file=str(mapping))
    report = check_user_tables(tables)
    if not report.ok:
        raise UserTableError(
            f"{mapping}: the mapping contradicts the packaged tables:\n"
            + "\n".join(f"  {f.key}\n    {f.message}" for f in report.unaccepted)
            + "\nFix the rows, or accept a finding with its reason in the mapping's \"accepted\": "
              "[{\"key\": \"<the key above>\", \"reason\": \"...\"}].")
    write_custom_card(name, source, mpp=float(mpp) if mpp is not None else None, root=root,
                      notes=[f"A user dataset: {fmt} annotations of the images in {image_dir}."])
    write_user_tables(tables, registry_dir(root))
    say(f"{name}: card and tables written to {registry_dir(root)}")
    return prepare(name, from_dir=image_dir, root=root, force=True, check_counts=False, progress=progress)
