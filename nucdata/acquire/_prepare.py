"""Prepare a dataset: fetch (or take a local folder), convert, check counts, publish.

Under the dataset's lock: stale temporary folders of interrupted runs are removed,
archives are extracted into scratch space (raw files are only read), the source
converts into a :class:`~nucdata.store.StoreWriter`, counts are checked against
the card, and the store is published with its manifest written last.
"""

from __future__ import annotations

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
from nucdata.catalog import Card, get_card
from nucdata.datasets import ConversionReport, converter_for
from nucdata.errors import CountMismatchError, MissingFilesError
from nucdata.labels import table_version
from nucdata.store import MANIFEST, StoreWriter, clean_stale, is_complete, store_folder


def store_path(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Where the store of dataset ``name`` for the installed converter lives."""
    card = get_card(name, root)
    return store_folder(card.name, converter_for(card).version, root)


def is_prepared(name: str, root: str | os.PathLike[str] | None = None) -> bool:
    """Whether dataset ``name``'s store for the installed converter is published."""
    return is_complete(store_path(name, root))


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
            with disk.mapped(final, f"building the {card.name} store"), \
                    StoreWriter(final, card.name, src.version, progress=counter) as writer:
                options = {"jobs": jobs} if "jobs" in inspect.signature(src.convert).parameters else {}
                report = src.convert(folder, writer, progress=say, **options)
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
