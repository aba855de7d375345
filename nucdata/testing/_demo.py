"""``nucdata demo``: the whole fetch-convert-load chain on generated archives, offline."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nucdata._util.home import ENV_VAR, data_home, manual_dir, raw_dir, registry_dir
from nucdata.acquire import is_prepared, prepare, store_path
from nucdata.catalog import list_datasets
from nucdata.dataset import load
from nucdata.errors import InvalidArgumentError
from nucdata.testing._archives import DEMO_HASH_SOURCE, install


def _is_demo_json(path: Path, key: str) -> bool:
    """Whether a card override or a store manifest at ``path`` was written by the demo."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    files = data.get(key, {}).get("files", []) if key == "source" else data.get("files", [])
    return bool(files) and all(f.get("hash_source") == DEMO_HASH_SOURCE for f in files)


def real_data(name: str, home: Path) -> list[str]:
    """What in data home ``home`` belongs to the real dataset ``name`` (empty: nothing).

    The demo writes archives into ``manual/``, a card override into ``registry/`` and a
    store; it must not replace a user's real archives, override or store.
    """
    from nucdata.catalog import get_card

    found = []
    override = registry_dir(home) / f"{name}.json"
    demo_override = override.is_file() and _is_demo_json(override, "files")
    if override.is_file() and not demo_override:
        found.append(str(override))
    if not demo_override:
        for spec in get_card(name).files:  # the packaged card: the real files' names
            found += [str(p) for p in (manual_dir(home) / spec.name, raw_dir(home) / spec.name) if p.is_file()]
    if is_prepared(name, home) and not _is_demo_json(store_path(name, home) / "manifest.json", "source"):
        found.append(str(store_path(name, home)))
    return found


def _dropped_line(dropped: dict[str, int]) -> str:
    """The conversion report's counts in words: what was dropped, then what was kept and counted; no zeros."""
    def words(items: list[tuple[str, int]]) -> str:
        return ", ".join(f"{key.replace('_', ' ')} {count:,}" for key, count in items)

    dropped_items = [(k, int(v)) for k, v in sorted(dropped.items()) if v and "kept" not in k]
    kept_items = [(k.replace("_kept", "").replace("kept_", ""), int(v)) for k, v in sorted(dropped.items())
                  if v and "kept" in k]
    line = f"dropped: {words(dropped_items) or 'nothing'}"
    return line + (f"; kept and counted: {words(kept_items)}" if kept_items else "")


def run_demo(
    root: str | os.PathLike[str] | None = None,
    seed: int = 0,
    datasets: list[str] | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Generate demo archives, prepare each dataset through the manual route, load it.

    Parameters
    ----------
    root
        Data home for the demo, kept afterwards. When ``None``: ``$NUCDATA_HOME`` if it
        is set (kept too), else a temporary folder that is removed before returning —
        the platform's default data home is never touched.
    seed
        Seed of the generated archives; the same seed gives the same bytes.
    datasets
        Which datasets; every dataset that has a demo generator by default.
    echo
        Called with each line of the report; the last lines give the ``nucdata.load``
        call that opens what was made.

    Returns
    -------
    dict
        Per dataset: store path, images, nuclei and seconds.

    Raises
    ------
    InvalidArgumentError
        When the data home already holds a real dataset's archives, card override or
        store, which the demo would replace; nothing is written then.
    """
    env = os.environ.get(ENV_VAR, "").strip()
    temporary = root is None and not env
    home = Path(tempfile.mkdtemp(prefix="nucdata-demo-")) if temporary else data_home(root)
    names = datasets or [n for n in list_datasets() if _has_generator(n)]
    if not temporary:
        clashes = {name: found for name in names if (found := real_data(name, home))}
        if clashes:
            listing = "; ".join(f"{name}: {', '.join(paths)}" for name, paths in clashes.items())
            raise InvalidArgumentError(
                f"{home} holds real data that the demo would replace ({listing}). Run the demo in "
                "another folder: nucdata demo --root /tmp/nucdata-demo"
            )
    where = "temporary, removed at the end" if temporary else ("--root" if root is not None else f"${ENV_VAR}")
    echo(f"nucdata demo: data home {home} ({where}; generated archives, manual-download route, no network)")
    results: dict[str, Any] = {}
    try:
        for name in names:
            start = time.perf_counter()
            archives = install(name, home, seed)
            echo(f"\n== {name}: wrote {', '.join(p.name for p in archives.files)} into {home / 'manual'}")
            path = prepare(name, root=home, download=False, force=True, progress=lambda m: echo("   " + m))
            ds = load(name, root=home)
            sample = ds[0]
            seconds = time.perf_counter() - start
            echo(f"   loaded {ds}")
            echo(
                f"   sample 0: image {tuple(sample['image'].shape)} {sample['image'].dtype}, "
                f"instance_map {tuple(sample['instance_map'].shape)}, {len(sample['centroids'])} nuclei, "
                f"id {sample['image_id']!r}"
            )
            manifest = ds.manifest
            echo(f"   counts {manifest['counts']['images']} images; {_dropped_line(manifest['dropped'])}")
            results[name] = {"store": str(path), "images": len(ds), "nuclei": int(ds.nuclei.sizes["nucleus"]),
                             "seconds": round(seconds, 2)}
        echo("\nsummary:")
        for name, r in results.items():
            echo(f"  {name:9s} {r['images']:5d} images {r['nuclei']:7d} nuclei  {r['seconds']:.1f} s")
    finally:
        if temporary:
            shutil.rmtree(home, ignore_errors=True)
    first = next(iter(results), "monuseg")
    if temporary:
        echo(f"\nThe temporary data home was removed. To keep the demo data and load it from Python:\n"
             f"  nucdata demo --root ~/nucdata-demo\n"
             f"  nucdata.load({first!r}, root=\"~/nucdata-demo\")   # or set {ENV_VAR}=~/nucdata-demo")
    elif root is not None:
        echo(f"\nLoad it from Python:\n  nucdata.load({first!r}, root={str(home)!r})"
             f"   # or set {ENV_VAR}={home} and call nucdata.load({first!r})")
    else:
        echo(f"\nLoad it from Python (with {ENV_VAR}={home}):\n  nucdata.load({first!r})")
    return results


def _has_generator(name: str) -> bool:
    import importlib.util

    from nucdata.catalog import get_card

    return importlib.util.find_spec(f"nucdata.testing.{get_card(name).converter}") is not None
