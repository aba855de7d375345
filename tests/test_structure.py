"""The house rules, each a test: layers, public surfaces, one home per concept, documented API.

The layout (``docs/contributing.md``):

* ``nucdata`` is layered; a module imports only from lower layers (or its own package):
  errors < _util < {catalog, labels, store, formats} < datasets < acquire < views < dataset <
  collection < {exports, testing} < cli < the top-level namespace.
* Outside a package, its private modules (``_name``) are never imported: other layers
  use the package's public surface (its ``__init__``). ``nucdata._util`` is the one
  private package every module of both distributions may use.
* ``nucdata_models``' core imports nothing of nucdata but ``nucdata.errors`` and
  ``nucdata._util``; ``nucdata_models.merge`` and ``nucdata_models.study`` are the only
  other importers of nucdata; the core never imports them, nor nucdata the models.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import io
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nucdata", "nucdata_models")

#: nucdata's layers, lowest first; a package may import only from earlier entries.
LAYERS: list[tuple[str, ...]] = [
    ("nucdata.errors",),
    ("nucdata._util",),
    ("nucdata.catalog", "nucdata.labels", "nucdata.store", "nucdata.formats"),
    ("nucdata.datasets",),
    ("nucdata.acquire",),
    ("nucdata.views",),
    ("nucdata.dataset",),
    ("nucdata.collection",),
    ("nucdata.exports", "nucdata.testing"),
    ("nucdata.cli",),
    ("nucdata",),
]
MODEL_CORE = ("augment", "calibration", "checkpoint", "config", "data", "encoders", "fill", "losses", "metrics", "model",
              "stain", "train", "weak")
#: what the models' core may import of nucdata
CORE_MAY_IMPORT = ("nucdata.errors", "nucdata._util")


def _modules() -> dict[str, Path]:
    mods = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = path
    return mods


MODULES = _modules()
PACKAGE_NAMES = {m for m, p in MODULES.items() if p.name == "__init__.py"}


def _unit(module: str) -> str:
    """The layer unit of a nucdata module (its subpackage or top-level module)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _layer(module: str) -> int:
    unit = _unit(module)
    for i, units in enumerate(LAYERS):
        if unit in units:
            return i
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS and docs/contributing.md")


def _model_part(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    if parts[1] in ("merge", "study"):
        return parts[1]
    assert parts[1] in MODEL_CORE, f"{module}: a new core module must be listed in MODEL_CORE"
    return "core"


def _imports(name: str, path: Path, *, with_functions: bool = True) -> list[tuple[int, str]]:
    """(line, imported module) of every import in a module (not TYPE_CHECKING-only ones)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if name in PACKAGE_NAMES else name.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names if f"{base}.{a.name}" in MODULES]
    return [(line, target) for line, target in out if target.split(".")[0] in PACKAGES]


def _import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for name, path in MODULES.items():
        graph[name] |= {t for _, t in _imports(name, path) if t in MODULES and t != name and t not in PACKAGE_NAMES}
    return graph


# -- layers ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [m for m in MODULES if m.split(".")[0] == "nucdata"])
def test_nucdata_imports_point_down_the_layers(name):
    mine = _layer(name)
    bad = []
    for line, target in _imports(name, MODULES[name]):
        if target.startswith("nucdata_models"):
            bad.append(f"line {line}: {target} (the core never imports the models)")
        elif _unit(target) != _unit(name) and _layer(target) >= mine:
            bad.append(f"line {line}: {target} (layer {_layer(target)} >= {mine})")
    assert not bad, f"{name} imports up or across its layer: {bad}"


@pytest.mark.parametrize("name", [m for m in MODULES if m.startswith("nucdata_models")])
def test_the_models_core_imports_only_nucdatas_leaf_modules(name):
    part = _model_part(name)
    bad = []
    for line, target in _imports(name, MODULES[name]):
        if target.split(".")[0] == "nucdata":
            if part == "core" and not target.startswith(CORE_MAY_IMPORT):
                bad.append(f"line {line}: {target} (the core may import only {', '.join(CORE_MAY_IMPORT)})")
        elif part == "core" and _model_part(target) in ("merge", "study"):
            bad.append(f"line {line}: {target} (the core never imports merge/ or study/)")
        elif part == "merge" and _model_part(target) == "study":
            bad.append(f"line {line}: {target} (merge/ is below study/)")
    assert not bad, f"{name}: {bad}"


# -- public surfaces -------------------------------------------------------------------
def _is_private_module(module: str) -> str | None:
    """The package that owns ``module`` when it (or a package above it) is private."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


@pytest.mark.parametrize("path", [*MODULES.values(), *sorted((ROOT / "benchmarks").glob("*.py"))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_private_modules_are_imported_only_inside_their_package(path):
    rel = path.relative_to(ROOT).with_suffix("").parts
    name = ".".join(rel[:-1] if rel[-1] == "__init__" else rel)
    bad = []
    for line, target in _imports(name, path):
        owner = _is_private_module(target)
        if owner is None:
            continue
        if target.startswith("nucdata._util") and name.split(".")[0] in PACKAGES:
            continue  # the shared private leaf
        if not (name == owner or name.startswith(owner + ".")):
            bad.append(f"line {line}: {target} (use {owner}'s public surface)")
    assert not bad, f"{path.relative_to(ROOT)} reaches into private modules: {bad}"


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
    return {n for n in names if n.startswith("_")}


# Private names of other libraries that are the established way to do a thing: os._exit
# (a kill without clean-up, for fault tests), numpy's pickle reconstructor _frombuffer
# (which the allow-list unpickler must name), and the private plumbing package.
ALLOWED = {"_exit", "_frombuffer", "_util"}


@pytest.mark.parametrize("path", [*MODULES.values(), *sorted((ROOT / "benchmarks").glob("*.py"))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_reaches_into_another_modules_private_names(path):
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    own = _defined_private_names(tree)
    import_lines = {n for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                    for n in range(node.lineno, (node.end_lineno or node.lineno) + 1)}
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
              if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE) and t.start[0] not in import_lines]
    bad = []
    for node in ast.walk(tree):  # from module import _private
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(PACKAGES)):
            bad += [f"line {node.lineno}: import {a.name}" for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__") and a.name not in ALLOWED
                    and not _same_package_private_module(path, node, a.name)]
    for before, dot, name in zip(tokens, tokens[1:], tokens[2:], strict=False):
        if (dot.string == "." and name.type == tokenize.NAME and name.string.startswith("_")
                and not name.string.startswith("__") and before.string not in ("self", "cls")
                and name.string not in own and name.string not in ALLOWED):
            bad.append(f"line {name.start[0]}: {before.string}.{name.string}")
    assert not bad, f"{path.relative_to(ROOT)} uses private names of other modules: {bad}"


def _same_package_private_module(path: Path, node: ast.ImportFrom, name: str) -> bool:
    """``from nucdata.store import _layout`` inside nucdata.store (a private module of its own package)."""
    rel = path.relative_to(ROOT).with_suffix("").parts
    me = ".".join(rel[:-1] if rel[-1] == "__init__" else rel)
    module = node.module or ""
    return f"{module}.{name}" in MODULES and (me == module or me.startswith(module + "."))


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


def test_every_exception_lives_in_errors_and_is_a_nucdata_error():
    import nucdata.errors as errors

    bad = []
    for name, path in MODULES.items():
        if name == "nucdata.errors":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and (node.name.endswith(("Error", "Exception", "Fault"))
                                                   or any("Error" in ast.unparse(b) for b in node.bases)):
                bad.append(f"{name}.{node.name}")
    assert not bad, f"exceptions outside nucdata/errors.py: {bad}"
    for _, cls in inspect.getmembers(errors, inspect.isclass):
        if cls.__module__ == errors.__name__ and issubclass(cls, Exception):
            assert issubclass(cls, errors.NucdataError), cls


def test_every_error_is_in_the_top_level_namespace():
    import nucdata
    import nucdata.errors as errors

    missing = [n for n, c in inspect.getmembers(errors, inspect.isclass)
               if c.__module__ == errors.__name__ and issubclass(c, Exception) and n not in nucdata.__all__]
    assert not missing, f"errors missing from nucdata.__all__: {missing}"


# -- the lazy namespace ----------------------------------------------------------------
def test_import_nucdata_imports_neither_torch_nor_xarray():
    code = ("import sys, nucdata, nucdata_models, nucdata.cli, nucdata_models.merge.cli; "
            "heavy = [m for m in ('torch', 'xarray', 'scipy', 'skimage', 'pooch') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing the namespaces and the command lines loaded {out}"


def test_every_public_name_resolves_and_is_documented():
    missing, undocumented = [], []
    for name in [m for m in MODULES if m in PACKAGE_NAMES or not m.rsplit(".", 1)[-1].startswith("_")]:
        if _is_private_module(name):
            continue
        module = importlib.import_module(name)
        for attr in getattr(module, "__all__", []):
            try:
                obj = getattr(module, attr)
            except AttributeError:
                missing.append(f"{name}.{attr}")
                continue
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and not inspect.getdoc(obj):
                undocumented.append(f"{name}.{attr}")
    assert not missing, f"names in __all__ that do not resolve: {missing}"
    assert not undocumented, f"public names without a docstring: {undocumented}"


def test_every_export_module_is_registered_and_every_format_has_its_module():
    from nucdata.exports import FORMATS, exporter

    modules = {p.stem for p in (ROOT / "nucdata" / "exports").glob("*.py") if not p.stem.startswith("_")}
    registered = {FORMATS[f].rsplit(".", 1)[1] for f in FORMATS}
    assert modules == registered, f"format modules {sorted(modules)} vs registered {sorted(registered)}"
    for fmt in FORMATS:
        module = exporter(fmt)
        assert fmt == module.NAME and module.DESCRIPTION and callable(module.write)
        assert set(inspect.signature(module.write).parameters) - {"ds", "out"} == set(module.OPTIONS), fmt
