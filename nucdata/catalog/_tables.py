"""The dataset tables of ``README.md`` and ``docs/datasets.md``, generated from the cards.

Each file holds its table between two markers, ``<!-- datasets:begin -->`` and
``<!-- datasets:end -->``; everything between them is generated and everything else is
written by hand. A new card adds its row; regenerate from the repository's root with::

    python -c "import nucdata.catalog as c, nucdata.labels as l; c.write_dataset_tables(l.native_vocabulary)"

``tests/test_docs.py`` fails when the committed text differs from the generated.

The catalog does not import :mod:`nucdata.labels` (the two are one layer, neither above the
other), so the caller passes the function that gives a dataset's native vocabulary,
``nucdata.labels.native_vocabulary``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nucdata.catalog._registry import Card, datasets_in_order, get_card
from nucdata.errors import InvalidArgumentError

__all__ = ["BEGIN", "END", "KINDS", "render_dataset_table", "write_dataset_tables"]

#: the markers around the generated block
BEGIN, END = "<!-- datasets:begin -->", "<!-- datasets:end -->"
#: which table: ``readme`` (links into ``docs/``, class counts) or ``docs`` (``docs/datasets.md``:
#: class names, and each card's notes on µm/px, licence and counts)
KINDS = ("readme", "docs")
#: the files that hold a table, relative to the repository's root, and their kind
FILES = {"README.md": "readme", "docs/datasets.md": "docs"}
REGENERATE = ('python -c "import nucdata.catalog as c, nucdata.labels as l; '
              'c.write_dataset_tables(l.native_vocabulary)"')

Vocabulary = Callable[[str], Sequence[tuple[int, str, str]]]


def _packaged_cards() -> list[Card]:
    """Every packaged card as shipped (a local override never applies), in the cards' ``order``."""
    return [get_card(name, packaged=True) for name in datasets_in_order()]


def _short_title(card: Card) -> str:
    """``PanNuke`` of ``PanNuke (pan-cancer nucleus ...)``."""
    return card.title.split(" (")[0].strip()


def _count(value: Any) -> int | None:
    """The total of a card's ``expected`` entry (a count per split), or None when unknown."""
    if isinstance(value, Mapping) and value and all(isinstance(v, int) for v in value.values()):
        return sum(value.values())
    return None


def _text(text: str) -> str:
    """A card's free text as Markdown: ``<Region>`` stays text, ``|`` does not end a cell."""
    return text.replace("<", "&lt;").replace("|", "\\|")


def _nuclei(card: Card) -> str:
    """Nuclei of the release: checked counts plain, published-only counts in italics (``> n`` for a bound)."""
    checked = _count(card.expected.get("regions"))
    if checked is not None:
        return f"{checked:,}"
    if card.published_nuclei is not None:
        bound = "> " if card.published_nuclei.get("lower_bound") else ""
        return f"*{bound}{int(card.published_nuclei['count']):,}*"
    return "—"


def _licence(spdx: str) -> str:
    """``CC BY-NC-SA 4.0`` for ``CC-BY-NC-SA-4.0``; ``not stated`` for ``NOASSERTION``."""
    if spdx.upper() == "NOASSERTION":
        return "not stated"
    match = re.fullmatch(r"(CC0|CC-[A-Z-]+?)-(\d+\.\d+)", spdx)
    if match is None:
        return spdx
    name = match[1] if match[1] == "CC0" else "CC " + match[1][3:]
    return f"{name} {match[2]}"


def _splits(card: Card) -> str:
    """The splits ``load(split=)`` takes, with image counts where the card has them, and protocols."""
    images = card.expected.get("images")
    counts = images if isinstance(images, Mapping) else {}
    parts = [f"`{split}` {counts[split]:,}" if isinstance(counts.get(split), int) else f"`{split}`"
             for split in card.splits if split != "protocols"]
    text = ", ".join(parts)
    protocols = card.extra.get("protocols") or {}
    if protocols:
        shapes = {tuple(p) for p in protocols.values()}
        if len(shapes) == 1:
            text += "; protocols " + ", ".join(f"`{p}`" for p in protocols) + " (each `/" + \
                "`, `/".join(next(iter(shapes))) + "`)"
        else:
            text += "; protocols " + ", ".join(f"`{p}/{part}`" for p, parts in protocols.items() for part in parts)
    elif "protocols" in card.splits:
        text += "; protocols derived at conversion (`nucdata info " + card.name + "`)"
    return text


def _mpp(card: Card) -> str:
    """The card's µm/px; ``per image (~0.25)`` where its ``mpp_note`` says the files give one per image."""
    if card.mpp is None:
        return "not published"
    note = str(card.extra.get("mpp_note", ""))
    return f"per image (~{card.mpp:g})" if note.lower().startswith("per image") else f"{card.mpp:g}"


def _classes(names: Sequence[str], kind: str) -> str:
    if not names:
        return "none"
    if kind == "readme":
        return str(len(names))
    return f"{len(names)}: " + ", ".join(names)


def _links(root: Path, cards: Sequence[Card]) -> dict[str, str]:
    """Dataset -> its page under ``docs/``: ``datasets/<name>.md``, else its section of ``datasets.md``.

    The section is the ``## `` heading of ``docs/datasets.md`` whose first word is the
    dataset's name (``## MoNuSeg 2018`` for ``monuseg``); a dataset with neither links to
    its homepage.
    """
    docs = root / "docs"
    headings = re.findall(r"^## +(.+?) *$", (docs / "datasets.md").read_text(encoding="utf-8"), re.MULTILINE) \
        if (docs / "datasets.md").is_file() else []
    links = {}
    for card in cards:
        if (docs / "datasets" / f"{card.name}.md").is_file():
            links[card.name] = f"datasets/{card.name}.md"
            continue
        for heading in headings:
            if heading.split()[0].lower() == card.name:
                links[card.name] = "datasets.md#" + re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
                break
    return links


def render_dataset_table(vocabulary: Vocabulary, kind: str = "readme",
                         links: Mapping[str, str] | None = None) -> str:
    """The table of every packaged dataset, as Markdown, from the cards.

    Parameters
    ----------
    vocabulary
        Dataset name -> its native classes as ``(code, name, description)``:
        ``nucdata.labels.native_vocabulary``.
    kind
        ``"readme"``: class counts, links into ``docs/``; ``"docs"``: class names, links
        relative to ``docs/datasets.md``, and each card's notes (µm/px, licence, counts)
        below the table. µm/px is the card's; ``per image (~0.25)`` where the card's
        ``mpp_note`` begins with "Per image" (the files give each image's own).
    links
        Dataset name -> its page relative to ``docs/`` (``datasets/pannuke.md``,
        ``datasets.md#tnbc``); a dataset without one links to its homepage.
        :func:`write_dataset_tables` finds them in the repository.

    Returns
    -------
    str
        The text that goes between the markers (:data:`BEGIN`, :data:`END`), without them.
    """
    if kind not in KINDS:
        raise InvalidArgumentError(f"unknown table kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    links = links or {}
    prefix = "docs/" if kind == "readme" else ""
    rows = ["| dataset | images | nuclei | classes | masks or points | µm/px | licence | splits |",
            "|---|---|---|---|---|---|---|---|"]
    unchecked: list[str] = []
    notes: list[str] = []
    for card in _packaged_cards():
        title = _short_title(card)
        target = prefix + links[card.name] if card.name in links else card.homepage
        images = _count(card.expected.get("images"))
        size = str(card.extra.get("image_size", ""))
        size = size.replace("x", "×") if re.fullmatch(r"\d+x\d+", size) else ""
        names = [name for _, name, _ in vocabulary(card.name)]
        same = f" (images from `{card.duplicates_of}`)" if card.duplicates_of else ""
        rows.append(" | ".join([
            f"| [{title}]({target}) `{card.name}`{same}",
            (f"{images:,}" if images is not None else "—") + (f", {size}" if size else ""),
            _nuclei(card),
            _classes(names, kind),
            _text(str(card.extra.get("annotations", "not stated"))),
            _mpp(card),
            _licence(card.licence),
            _splits(card) + " |",
        ]))
        quoted = []
        if images is None:
            quoted.append(str(card.expected.get("images_note") or card.expected.get("regions_note")
                              or "No image count is published."))
        elif card.published_nuclei is not None:  # (without an image count, the note says both)
            quoted.append(f"Nuclei: {card.published_nuclei.get('source', 'published')}.")
        if quoted:
            unchecked.append(f"- **{title}**: " + _text(" ".join(quoted)))
        counted = " ".join(str(card.expected[k]) for k in ("images_note", "regions_note") if card.expected.get(k))
        said = [f"µm/px: {card.extra['mpp_note']}" if card.extra.get("mpp_note") else "",
                f"Licence: {card.extra['licence_note']}" if card.extra.get("licence_note") else "",
                f"Counts: {counted}" if counted else ""]
        if any(said):
            notes.append(f"- **{title}**. " + _text(" ".join(x for x in said if x)))
    out = [f"<!-- generated from nucdata/catalog/cards/ by nucdata.catalog.write_dataset_tables: "
           f"do not edit by hand; regenerate with {REGENERATE} -->", "", *rows, ""]
    out.append("Images and nuclei are the counts of the native files that each conversion is checked "
               "against; a count in italics is only published (the card has none to check), and a dash "
               "means none is. The store's own counts, after the documented cleaning, are in its manifest; "
               "`nucdata info NAME` prints the whole card.")
    if kind == "readme" and unchecked:
        out += ["", *unchecked]
    if kind == "docs" and notes:
        out += ["", "Notes from the cards:", "", *notes]
    return "\n".join(out)


def _replace_block(text: str, block: str, where: str) -> str:
    """``text`` with the part between the markers replaced by ``block``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise InvalidArgumentError(f"{where}: no {BEGIN} ... {END} block; put the two markers where the "
                                   "dataset table goes")
    return text[: start + len(BEGIN)] + "\n" + block + "\n" + text[end:]


def write_dataset_tables(vocabulary: Vocabulary, root: str | os.PathLike[str] = ".",
                         check: bool = False) -> list[Path]:
    """Regenerate the dataset tables of ``README.md`` and ``docs/datasets.md`` under ``root``.

    Parameters
    ----------
    vocabulary
        ``nucdata.labels.native_vocabulary`` (see :func:`render_dataset_table`).
    root
        The repository's root.
    check
        Write nothing; return the files whose table differs from the generated one.

    Returns
    -------
    list of Path
        The files rewritten (or, with ``check``, the files that are out of date).
    """
    root = Path(root)
    links = _links(root, _packaged_cards())
    changed = []
    for name, kind in FILES.items():
        path = root / name
        text = path.read_text(encoding="utf-8")
        new = _replace_block(text, render_dataset_table(vocabulary, kind, links), str(path))
        if new != text:
            changed.append(path)
            if not check:
                path.write_text(new, encoding="utf-8")
    return changed
