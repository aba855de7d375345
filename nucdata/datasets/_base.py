"""What every dataset source implements.

A source knows only its native layout: it finds its files under a folder
(an extracted archive or a user's ``--from`` folder) and writes each image with
its instance map and native labels through a :class:`~nucdata.store.StoreWriter`.
It never downloads, and nothing downstream of the store knows which source wrote it.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from nucdata._util.paths import is_junk
from nucdata.catalog import Card
from nucdata.errors import MissingFilesError
from nucdata.store import StoreWriter


@dataclass
class ConversionReport:
    """What a conversion found, dropped and decided, recorded in the manifest."""

    regions: Counter[str] = field(default_factory=Counter)  # annotations read, per split
    dropped: Counter[str] = field(default_factory=Counter)  # per documented reason
    rules: dict[str, str] = field(default_factory=dict)  # rule name -> one-line statement
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


class Converter:
    """Base class of dataset sources; one subclass per dataset."""

    #: dataset name (the card's ``converter``)
    name: ClassVar[str] = ""
    #: bump when the store a source writes changes; stores live under this version
    version: ClassVar[str] = "1"

    def __init__(self, card: Card):
        self.card = card

    def convert(
        self,
        folder: Path,
        writer: StoreWriter,
        progress: Callable[[str], None] | None = None,
    ) -> ConversionReport:
        """Convert the native files under ``folder`` into ``writer``."""
        raise NotImplementedError


def walk_dirs(folder: Path) -> Iterable[Path]:
    """Every directory under ``folder`` (itself included), skipping macOS metadata."""
    for dirpath, dirnames, _ in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not is_junk(d))
        yield Path(dirpath)


def list_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files directly in ``folder`` whose suffix (case-insensitive) is in ``suffixes``."""
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in suffixes and not is_junk(p.name)
    )


_ID = re.compile(r"-?[0-9]{1,19}")


def id_number(text: str, default: int) -> int:
    """The id a source file gives as text, as a 64-bit integer; ``default`` when it is not one.

    Only ASCII digits count (``str.isdigit`` also accepts ``'²'``, which ``int`` refuses),
    and only values that fit in int64 (a store column): ``'12'`` -> 12, ``'-3'`` -> -3,
    ``'1e5'``, ``'²'`` or a 25-digit id -> ``default``.
    """
    text = text.strip()
    if not _ID.fullmatch(text):
        return default
    value = int(text)
    return value if -(2**63) <= value < 2**63 else default


def require_dir(folder: Path, what: str, fix: str) -> Path:
    if not folder.is_dir():
        raise MissingFilesError(f"{folder}: {what} not found. {fix}")
    return folder
