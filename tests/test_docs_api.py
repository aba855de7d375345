"""The API reference (docs/api/*.md) documents the public namespace, each name exactly once.

Public names are ``nucdata.__all__``, ``nucdata_models.__all__``, the ``__all__`` of every
public subpackage of both (no ``_`` in its path) and every exception class of
``nucdata.errors``. A name exported by two namespaces (``nucdata.CropDataset`` is
``nucdata.views.CropDataset``) is one name: it is documented once, under either path (the
pages use the shortest). A page names no private module (``nucdata.views._crops``): the
reference shows where to import a name from, not where it happens to be defined.

The pages document with mkdocstrings directives, one per name (``::: nucdata.views.CropDataset``),
or one per module with ``options: members: [a, b]`` (``members: false`` documents the
module's docstring only). Regenerating nothing: when a name is added to an ``__all__``, add
its ``:::`` line to the page of its layer (the failure says which names and which page).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import nucdata
import nucdata.errors
import nucdata_models

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api"
PAGES = sorted(API.glob("*.md"))
DIRECTIVE = re.compile(r"^::: *(?P<path>\S+)[ \t]*\n(?P<options>(?:[ \t]+\S.*\n?)*)", re.MULTILINE)
MEMBERS = re.compile(r"^[ \t]+members:[ \t]*(?P<value>.*?)[ \t]*$", re.MULTILINE)
PRIVATE = re.compile(r"\b(?:nucdata|nucdata_models)(?:\.[A-Za-z]\w*)*\._[A-Za-z]\w*")

#: which page a namespace's names go on (for the failure message)
PAGE_OF = {
    "nucdata": "loading.md, or the page of the subpackage that also exports it",
    "nucdata.errors": "errors.md", "nucdata.views": "views.md", "nucdata.acquire": "acquire.md",
    "nucdata.catalog": "acquire.md", "nucdata.datasets": "acquire.md", "nucdata.labels": "labels.md",
    "nucdata.store": "store.md", "nucdata.exports": "exports.md", "nucdata.testing": "testing.md",
    "nucdata_models": "models.md", "nucdata_models.merge": "models.md", "nucdata_models.study": "models.md",
}

Key = tuple[str, int]


def _public_packages(root: ModuleType) -> list[str]:
    """``root`` and its subpackages without a private part, found on disk."""
    found = [root.__name__]
    for info in pkgutil.walk_packages(root.__path__, f"{root.__name__}."):
        if info.ispkg and not any(part.startswith("_") for part in info.name.split(".")):
            found.append(info.name)
    return found


def _page_hint(paths: list[str]) -> str:
    """The page a name belongs on: that of its most specific namespace (errors: errors.md)."""
    if any(path.startswith("nucdata.errors.") for path in paths):
        return PAGE_OF["nucdata.errors"]
    namespaces = sorted((path.rsplit(".", 1)[0] for path in paths), key=len, reverse=True)
    return next((PAGE_OF[n] for n in namespaces if n in PAGE_OF), "the page of its layer")


def _public_names() -> dict[Key, list[str]]:
    """(name, id of the object) -> every public path of it (``namespace.name``)."""
    names: dict[Key, list[str]] = {}
    for package in [*_public_packages(nucdata), *_public_packages(nucdata_models)]:
        module = importlib.import_module(package)
        for name in getattr(module, "__all__", ()):
            with warnings.catch_warnings():  # a deprecated alias still in __all__ is documented too
                warnings.simplefilter("ignore", DeprecationWarning)
                obj = getattr(module, name)
            names.setdefault((name, id(obj)), []).append(f"{package}.{name}")
    for name, obj in vars(nucdata.errors).items():
        if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == "nucdata.errors":
            names.setdefault((name, id(obj)), []).append(f"nucdata.errors.{name}")
    return names


def _resolve(path: str) -> Any:
    """The object at dotted ``path``: the longest importable module, then attributes."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            for attribute in parts[cut:]:
                obj = getattr(obj, attribute)
        return obj
    raise ImportError(path)


def _documented() -> list[tuple[str, str, Any]]:
    """(page, documented path, object) of every name the API pages document."""
    entries = []
    for page in PAGES:
        for match in DIRECTIVE.finditer(page.read_text(encoding="utf-8")):
            path, options = match["path"], match["options"]
            obj = _resolve(path)
            members = MEMBERS.search(options)
            if not inspect.ismodule(obj) or members is None and not hasattr(obj, "__all__"):
                entries.append((page.name, path, obj))
                continue
            value = members["value"] if members else None
            if value == "false":
                entries.append((page.name, path, obj))
                continue
            if value is None:
                listed = list(obj.__all__)
            else:
                assert re.fullmatch(r"\[[\w, ]*\]", value), (
                    f"{page.name}: ::: {path} lists members as {value!r}; write them inline, "
                    "members: [a, b], or members: false")
                listed = [m.strip() for m in value[1:-1].split(",") if m.strip()]
            entries.extend((page.name, f"{path}.{m}", getattr(obj, m)) for m in listed)
    return entries


def test_the_api_has_pages_that_document_names():
    assert len(PAGES) >= 5
    assert len(_documented()) > 100


def test_every_public_name_is_documented_on_exactly_one_api_page():
    public = _public_names()
    seen: dict[Key, list[str]] = {}
    for page, path, obj in _documented():
        seen.setdefault((path.rsplit(".", 1)[-1], id(obj)), []).append(f"{page}: {path}")
    missing = sorted(f"{paths[0]} (on {_page_hint(paths)})" for key, paths in public.items() if key not in seen)
    twice = {paths[0]: seen[key] for key, paths in public.items() if len(seen.get(key, ())) > 1}
    assert not missing, "not in the API reference; add a ::: line for each:\n  " + "\n  ".join(missing)
    assert not twice, f"documented more than once: {twice}"


def test_the_api_pages_document_only_public_names():
    public = _public_names()
    extra = [f"{page}: {path}" for page, path, obj in _documented()
             if not inspect.ismodule(obj) and (path.rsplit(".", 1)[-1], id(obj)) not in public]
    assert not extra, f"not a public name (in no __all__): {extra}; remove it or export it"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_api_page_names_a_private_module(page):
    text = page.read_text(encoding="utf-8")
    assert not PRIVATE.findall(text), (
        f"{page.name} names private modules {sorted(set(PRIVATE.findall(text)))}: "
        "use the public path (the package's __init__ or the top-level nucdata)")
    for match in DIRECTIVE.finditer(text):
        assert not any(part.startswith("_") and not part.startswith("__") for part in match["path"].split(".")), match["path"]


def test_every_api_page_is_in_the_nav():
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    in_nav = set(re.findall(r"\bapi/[\w.-]+\.md\b", config))
    assert in_nav == {f"api/{page.name}" for page in PAGES}
