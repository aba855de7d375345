"""The house rules: no reach-ins into other modules' private names, no import cycles, documented API."""

from __future__ import annotations

import ast
import inspect
import io
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nucdata", "nucdata_models")


def _modules() -> dict[str, Path]:
    mods = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = path
    return mods


def _defined_private_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if n.startswith("_")}


# Private names of other libraries that are the established way to do a thing: os._exit
# (a kill without clean-up, for fault tests), numpy's pickle reconstructor _frombuffer
# (which the allow-list unpickler must name), and torch's shared-memory allocation
# _new_shared (what torch's own default_collate uses for worker batches).
ALLOWED = {"_exit", "_frombuffer", "_new_shared"}


@pytest.mark.parametrize("path", [p for p in list(_modules().values()) + sorted((ROOT / "benchmarks").glob("*.py"))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_reaches_into_another_modules_private_names(path):
    source = path.read_text(encoding="utf-8")
    own = _defined_private_names(ast.parse(source))
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
              if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE)]
    bad = []
    for node in ast.walk(ast.parse(source)):  # from other_module import _private
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(PACKAGES)):
            bad += [f"line {node.lineno}: import {a.name}" for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__") and a.name not in ALLOWED]
    for before, dot, name in zip(tokens, tokens[1:], tokens[2:], strict=False):
        if (dot.string == "." and name.type == tokenize.NAME and name.string.startswith("_")
                and not name.string.startswith("__") and before.string not in ("self", "cls")
                and name.string not in own and name.string not in ALLOWED):
            bad.append(f"line {name.start[0]}: {before.string}.{name.string}")
    assert not bad, f"{path.relative_to(ROOT)} uses private names of other modules: {bad}"


def _import_graph() -> dict[str, set[str]]:
    mods = _modules()
    packages = {m for m, p in mods.items() if p.name == "__init__.py"}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = name.split(".") if name in packages else name.split(".")[:-1]
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join([*parts, base] if base else parts)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            graph[name] |= {t for t in targets if t in mods and t != name and t not in packages}
    return graph


def test_no_import_cycles_not_even_through_imports_inside_functions():
    graph = _import_graph()
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_core_never_imports_the_models():
    graph = _import_graph()
    upward = {m: sorted(t for t in targets if t.startswith("nucdata_models"))
              for m, targets in graph.items() if m.startswith("nucdata.") or m == "nucdata"}
    assert not {m: t for m, t in upward.items() if t}


def test_every_public_function_and_class_is_documented():
    import importlib

    missing = []
    for name in _modules():
        if ".demo." in name or name.endswith(".demo"):
            continue
        module = importlib.import_module(name)
        for attr in getattr(module, "__all__", []):
            obj = getattr(module, attr, None)
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and not inspect.getdoc(obj):
                missing.append(f"{name}.{attr}")
    assert not missing, f"public names without a docstring: {missing}"
