"""nucdata_models raises typed errors (nucdata.errors), never a bare builtin exception (AST scan).

The rule of ``nucdata/errors.py``: every error nucdata raises on purpose is a
:class:`nucdata.errors.NucdataError` whose message names the element at fault and the
fix. The typed errors also subclass the builtin a caller would catch
(``InvalidArgumentError`` is a ``ValueError``, ``ModelStateError`` a ``RuntimeError``),
so ``except ValueError`` keeps working.
"""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest

import nucdata.errors

ROOT = Path(__file__).resolve().parents[2]
BUILTIN_EXCEPTIONS = {name for name, obj in vars(builtins).items()
                      if isinstance(obj, type) and issubclass(obj, BaseException)}
#: Raised on purpose although not NucdataErrors, with the reason:
ALLOWED = {
    # click renders its own usage errors as a command-line message with the usage line
    "click.UsageError", "click.BadParameter", "click.ClickException",
}


def _raises(path: Path) -> list[tuple[int, str, str]]:
    """(line, exception name, enclosing function) of every ``raise X`` / ``raise X(...)``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = where
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{where}.{child.name}" if where else child.name
            if isinstance(child, ast.Raise) and child.exc is not None:
                exc = child.exc.func if isinstance(child.exc, ast.Call) else child.exc
                out.append((child.lineno, ast.unparse(exc), name))
            visit(child, name)

    visit(tree, "")
    return out


def _abstract(path: Path, function: str) -> bool:
    """Whether ``function`` is decorated ``abstractmethod`` (where NotImplementedError is the idiom)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    leaf = function.rsplit(".", 1)[-1]
    return any(isinstance(n, ast.FunctionDef) and n.name == leaf
               and any("abstractmethod" in ast.unparse(d) for d in n.decorator_list) for n in ast.walk(tree))


@pytest.mark.parametrize("path", sorted((ROOT / "nucdata_models").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_bare_builtin_exception_is_raised(path):
    bad = []
    for line, name, where in _raises(path):
        if name in ALLOWED:
            continue
        if name == "NotImplementedError" and _abstract(path, where):
            continue
        if name in BUILTIN_EXCEPTIONS:
            bad.append(f"line {line} in {where or 'module'}: raise {name}")
    assert not bad, (f"{path.relative_to(ROOT)} raises builtin exceptions; raise a nucdata.errors class whose "
                     f"message names the element and the fix (InvalidArgumentError is a ValueError): {bad}")


@pytest.mark.parametrize("path", sorted((ROOT / "nucdata_models").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_named_exception_raised_is_a_nucdata_error(path):
    typed = {name for name, obj in vars(nucdata.errors).items()
             if isinstance(obj, type) and issubclass(obj, nucdata.errors.NucdataError)}
    bad = [f"line {line}: raise {name}" for line, name, _ in _raises(path)
           if name not in ALLOWED and name[:1].isupper() and name.split(".")[-1] not in typed
           and name not in BUILTIN_EXCEPTIONS]
    assert not bad, f"{path.relative_to(ROOT)} raises exceptions that are not nucdata.errors classes: {bad}"


def test_typed_errors_keep_the_builtin_a_caller_catches():
    from nucdata.errors import DeviceUnavailableError, InvalidArgumentError, ModelStateError

    assert issubclass(InvalidArgumentError, ValueError)
    assert issubclass(ModelStateError, RuntimeError) and issubclass(DeviceUnavailableError, RuntimeError)
