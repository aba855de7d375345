"""``nucdata demo``: the whole fetch-convert-load chain on generated archives, offline."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..dataset import load
from ..prepare import prepare
from ..registry import list_datasets
from . import install


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
        Data home for the demo; a new temporary folder when ``None`` (the user's real
        data home is never touched).
    datasets
        Which datasets; every dataset that has a demo generator by default.

    Returns
    -------
    dict
        Per dataset: store path, images, nuclei and seconds.
    """
    home = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="nucdata-demo-"))
    names = datasets or [n for n in list_datasets() if _has_generator(n)]
    echo(f"nucdata demo: data home {home} (generated archives, manual-download route, no network)")
    results: dict[str, Any] = {}
    for name in names:
        start = time.perf_counter()
        archives = install(name, home, seed)
        echo(f"\n== {name}: wrote {', '.join(p.name for p in archives.files)} into {home / 'manual'}")
        path = prepare(name, root=home, download=False, progress=lambda m: echo("   " + m))
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
        echo(f"   counts {manifest['counts']['images']} images; dropped {manifest['dropped']}")
        results[name] = {"store": str(path), "images": len(ds), "nuclei": int(ds.nuclei.sizes["nucleus"]),
                         "seconds": round(seconds, 2)}
    echo("\nsummary:")
    for name, r in results.items():
        echo(f"  {name:9s} {r['images']:5d} images {r['nuclei']:7d} nuclei  {r['seconds']:.1f} s")
    return results


def _has_generator(name: str) -> bool:
    import importlib.util

    from ..registry import get_card

    return importlib.util.find_spec(f"nucdata.demo.{get_card(name).converter}") is not None
