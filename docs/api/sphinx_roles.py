"""Griffe extension for the API reference: Sphinx roles in docstrings become links.

The docstrings are numpydoc and cross-reference with Sphinx roles (``:class:`TrainingData```,
``:func:`~nucdata._util.atomic.swap_dir```, ``:mod:`.bridge```). mkdocstrings renders Markdown,
where those roles would show as raw text; this extension (loaded by ``mkdocs.yml``) rewrites
each role into an *optional* autorefs link: the name in code font, linked when the target
is rendered somewhere in the reference, plain code otherwise (never a broken link, never a
warning). Targets are resolved the way Python would see them from the docstring's object:
its class, its module (imports included), then the package roots.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?P<role>class|func|meth|attr|data|mod|exc|obj|const):`(?P<target>[^`]+)`")
ROOTS = ("nucdata", "nucdata_models")


def _lookup(collection: griffe.ModulesCollection, path: str) -> griffe.Object | griffe.Alias | None:
    """The object at a dotted ``path`` in ``collection``, or None."""
    try:
        return collection.get_member(path)
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _canonical(found: griffe.Object | griffe.Alias) -> str:
    """``found``'s own path, following an import alias to where the object is defined."""
    try:
        return found.final_target.path if isinstance(found, griffe.Alias) else found.path
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return found.path


def resolve(target: str, obj: griffe.Object, collection: griffe.ModulesCollection) -> str:
    """The dotted path a role's ``target`` names, seen from the docstring of ``obj``.

    Parameters
    ----------
    target : str
        The role's text without a title: ``swap_dir``, ``.bridge``, ``nucdata.load``.
    obj : griffe.Object
        The object whose docstring holds the role.
    collection : griffe.ModulesCollection
        Every loaded module.

    Returns
    -------
    str
        The canonical path when found, else ``target`` itself (the optional link then
        renders as plain code).
    """
    module = obj if obj.is_module else obj.module
    if target.startswith("."):
        # Relative to the package of the docstring's module, as in an import statement.
        dots = len(target) - len(target.lstrip("."))
        package = module.path.split(".")
        if not module.is_init_module:
            package = package[:-1]
        base = ".".join(package[: len(package) - dots + 1])
        target = f"{base}.{target.lstrip('.')}"
    scopes: list[str] = []
    scope: griffe.Object | None = obj
    while scope is not None:
        if not (scope.is_function or scope.is_attribute):
            scopes.append(scope.path)
        scope = scope.parent
    candidates = [f"{scope}.{target}" for scope in scopes]
    candidates += [target] + [f"{root}.{target}" for root in ROOTS]
    for candidate in candidates:
        found = _lookup(collection, candidate)
        if found is not None:
            return _canonical(found)
    return target


def rewrite(text: str, obj: griffe.Object, collection: griffe.ModulesCollection) -> str:
    """``text`` with every Sphinx role turned into an optional autorefs link.

    ``:role:`title <target>``` keeps ``title``; ``~a.b.c`` shows ``c``; a trailing ``()``
    is dropped from the target. A paragraph ending in reST's ``::`` ends in ``:``.
    """

    def replace(match: re.Match[str]) -> str:
        target = match["target"].strip()
        title = None
        explicit = re.fullmatch(r"(?P<title>.+?)\s*<(?P<target>[^>]+)>", target)
        if explicit:
            title, target = explicit["title"], explicit["target"]
        short = target.startswith("~")
        target = target.lstrip("~").removesuffix("()")
        if title is None:
            title = target.rsplit(".", 1)[-1] if short else target.lstrip(".")
        identifier = resolve(target, obj, collection)
        return (
            f'<autoref identifier="{html.escape(identifier)}" optional>'
            f"<code>{html.escape(title)}</code></autoref>"
        )

    text = ROLE.sub(replace, text)
    # reST's "text::" before an indented block shows as "text:" (a lone "::" vanishes); in
    # Markdown the indented block is already code.
    text = re.sub(r"^[ \t]*::[ \t]*\n(?=[ \t]*\n)", "", text, flags=re.MULTILINE)
    return re.sub(r"(\S)::[ \t]*\n(?=[ \t]*\n)", r"\1:\n", text)


class SphinxRoles(griffe.Extension):
    """Rewrite the Sphinx roles of every docstring once the whole package is loaded."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        """Walk ``pkg`` and rewrite its docstrings in place."""
        seen: set[int] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.docstring is not None and ":" in obj.docstring.value:
                obj.docstring.value = rewrite(obj.docstring.value, obj, loader.modules_collection)
            stack.extend(member for member in obj.members.values() if not member.is_alias)
