"""Small archives in each dataset's native layout, generated on the fly.

The tests and ``nucdata demo`` share these generators: each module
``nucdata.testing.<dataset>`` defines ``generate(folder, rng) -> DemoArchives`` that
writes the dataset's archive files (same names, same internal layout and quirks as
the real ones, a few kilobytes each) and returns the card entries that describe
them, and ``WORLD``, what the demo world knows of the dataset
(:class:`nucdata.testing.world.DatasetWorld`). :func:`install` puts them where a user would (the manual folder, or a folder
served over HTTP) and writes a local card override with their real hashes, so the
whole verified fetch-and-convert path runs without any network.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nucdata._util.hashing import sha256_file
from nucdata._util.home import manual_dir
from nucdata.catalog import get_card, write_override

DEMO_HASH_SOURCE = "generated demo archive (nucdata.demo); not the published file"


@dataclass
class DemoArchives:
    """Archives written by a generator, with what the card override must say.

    Attributes
    ----------
    truth
        Image name -> ``[(x, y, latent type), ...]`` of every drawn nucleus.
    annotated
        Image name -> the native code written in the archive for each nucleus of
        ``truth`` (same order; -1 in unlabelled datasets). Filled when a world drew
        the nuclei; it differs from the world's right code where annotator noise or
        a labelling habit changed it (:meth:`nucdata.testing.world.World.annotate`).
    """

    dataset: str
    files: list[Path]
    roles: dict[str, str]  # file name -> role
    expected: dict[str, Any]
    truth: dict[str, Any] = field(default_factory=dict)
    annotated: dict[str, list[int]] = field(default_factory=dict)


def generator(name: str) -> Callable[[Path, np.random.Generator], DemoArchives]:
    """The ``generate`` function of ``nucdata.testing.<name>``."""
    card = get_card(name)
    module = importlib.import_module(f"nucdata.testing.{card.converter}")
    return module.generate


def card_override(archives: DemoArchives, mirrors: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Card entries (files with real hashes and sizes, expected counts) for ``archives``."""
    card = get_card(archives.dataset)
    files = []
    for spec in card.files:
        path = next(p for p in archives.files if p.name == spec.name)
        files.append({
            "name": spec.name, "role": spec.role, "format": spec.format,
            "size": path.stat().st_size, "sha256": sha256_file(path),
            "hash_source": DEMO_HASH_SOURCE, "mirrors": (mirrors or {}).get(spec.name, []),
        })
    return {"files": files, "expected": archives.expected}


def install(
    name: str,
    root: str | os.PathLike[str],
    seed: int = 0,
    *,
    into: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    world: Any = None,
    scale: float = 1,
) -> DemoArchives:
    """Generate ``name``'s demo archives and register them in the data home ``root``.

    Parameters
    ----------
    into
        Where to write the archives; defaults to ``root``'s manual folder (the manual
        route). Pass another folder together with ``base_url`` to serve them over HTTP.
    base_url
        When given, the override lists ``base_url/<file name>`` as the only mirror.
    world
        A :class:`nucdata.testing.world.World`: nuclei are drawn as its latent cell types
        (appearance, per-dataset stain) and labelled through the dataset's vocabulary;
        the returned ``truth`` gives every drawn nucleus's position and latent type,
        ``annotated`` the code written for it. The world's knobs
        (:class:`nucdata.testing.world.WorldConfig`) apply, including its per-dataset
        size factor on ``scale``.
    scale
        Multiplies the number of nuclei (more images, or larger ones where the real
        dataset's image list is fixed); about 300 gives a world of full size.
    """
    folder = Path(into) if into is not None else manual_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    make = generator(name)
    if world is not None:
        world.begin(get_card(name).name)
        scale = world.scale_for(get_card(name).name, scale)
    kwargs = {"scale": scale} if scale != 1 else {}
    archives = make(folder, rng, world, **kwargs) if (world is not None or kwargs) else make(folder, rng)
    archives.dataset = get_card(name).name
    mirrors = None
    if base_url is not None:
        mirrors = {p.name: [f"{base_url.rstrip('/')}/{p.name}"] for p in archives.files}
    write_override(get_card(name).name, card_override(archives, mirrors), root)
    return archives


def zip_tree(source: Path, archive: Path, macos_junk: bool = True) -> Path:
    """Zip ``source``'s contents (relative names), adding ``__MACOSX`` entries like the real zips."""
    tmp = archive.with_name(archive.name + ".tmp")
    stamp = (2020, 1, 1, 0, 0, 0)  # fixed times: the same seed gives the same bytes (and hash)

    def add(name: str, data: bytes) -> None:
        info = zipfile.ZipInfo(name, date_time=stamp)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = (0o40755 << 16 | 0x10) if name.endswith("/") else (0o644 << 16)
        zf.writestr(info, data)

    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(source.rglob("*")):
            rel = path.relative_to(source).as_posix()
            if path.is_dir():
                add(rel + "/", b"")
                continue
            add(rel, path.read_bytes())
            if macos_junk:
                parent, _, base = rel.rpartition("/")
                add(f"__MACOSX/{parent + '/' if parent else ''}._{base}", b"\x00\x05\x16\x07junk")
        if macos_junk:
            add(".DS_Store", b"\x00\x00\x00\x01Bud1")
    os.replace(tmp, archive)
    return archive


class scratch_folder:
    """A temporary folder removed on exit (for building an archive's tree)."""

    def __enter__(self) -> Path:
        self._dir = Path(tempfile.mkdtemp(prefix="nucdata-demo-"))
        return self._dir

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)
