"""Names that come from files: junk entries archives carry, and paths that must stay inside a folder."""

from __future__ import annotations

from pathlib import Path

__all__ = ["is_junk"]


def is_junk(name: str) -> bool:
    """macOS metadata that some dataset archives carry (``__MACOSX``, ``.DS_Store``, ``._*``)."""
    parts = Path(name).parts
    return any(p == "__MACOSX" or p == ".DS_Store" or p.startswith("._") for p in parts)
