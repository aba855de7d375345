"""The documentation: every relative link resolves, the dataset tables are the cards'.

That every snippet runs as written is tests/test_docs_snippets.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file (lower case, punctuation dropped)."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _links() -> list[tuple[Path, str]]:
    return [(doc, target) for doc in DOCS for target in LINK.findall(_prose(doc.read_text(encoding="utf-8")))]


def test_the_docs_have_links_to_check():
    targets = [t for _, t in _links()]
    assert "docs/citing.md" in targets and "docs/tutorials/training.md" in targets
    assert any("#" in t for t in targets)


@pytest.mark.parametrize("doc,target", _links(), ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else v)
def test_relative_link_resolves(doc: Path, target: str):
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
        return
    file_part, _, anchor = target.partition("#")
    path = (doc.parent / file_part).resolve() if file_part else doc
    assert path.exists(), f"{doc.relative_to(ROOT)}: link to {target} — {path} does not exist"
    assert ROOT in path.parents or path == ROOT, f"{doc.relative_to(ROOT)}: {target} leaves the repository"
    if anchor and path.suffix == ".md":
        assert anchor in _anchors(path), f"{doc.relative_to(ROOT)}: no heading #{anchor} in {path.name}"


def test_no_reference_to_files_outside_the_repository():
    pattern = re.compile(r"reference/(method|datasets|conventions)\.md|DESIGN\.md")
    offenders = [str(p.relative_to(ROOT)) for p in DOCS if pattern.search(p.read_text(encoding="utf-8"))]
    offenders += [str(p.relative_to(ROOT)) for pkg in ("nucdata", "nucdata_models") for p in (ROOT / pkg).rglob("*.py")
                  if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)


def test_the_dataset_tables_are_generated_from_the_cards():
    import nucdata.catalog
    import nucdata.labels

    stale = nucdata.catalog.write_dataset_tables(nucdata.labels.native_vocabulary, ROOT, check=True)
    assert stale == [], (
        f"{', '.join(str(p.relative_to(ROOT)) for p in stale)}: the dataset table differs from the cards; "
        "regenerate from the repository's root with: python -c \"import nucdata.catalog as c, "
        "nucdata.labels as l; c.write_dataset_tables(l.native_vocabulary)\"")


def test_every_dataset_has_a_row_with_a_link_that_resolves():
    import nucdata.catalog

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme[readme.index("<!-- datasets:begin -->"):readme.index("<!-- datasets:end -->")]
    for name in nucdata.catalog.list_datasets():
        assert re.search(rf"^\| \[[^\]]+\]\([^)]+\) `{name}`[^|]* \|", block, re.MULTILINE), name


def test_no_code_block_imports_a_private_module():
    private = re.compile(r"^\s*(?:from|import)\s+((?:nucdata|nucdata_models)(?:\.\w+)*\._\w+)", re.MULTILINE)
    offenders = [f"{doc.relative_to(ROOT)}: {name}" for doc in DOCS for block in _python_blocks(doc)
                 for name in private.findall(block)]
    assert offenders == [], f"docs import private modules (use the public path): {offenders}"
