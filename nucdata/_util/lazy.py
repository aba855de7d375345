"""Lazy public namespaces (PEP 562): a package's names load their module on first access."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["attach"]


def attach(package: str, names: Mapping[str, str], namespace: dict[str, Any],
           deprecated: Mapping[str, str] | None = None,
           ) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``__getattr__``, ``__dir__`` and ``__all__`` for a package whose names load lazily.

    Parameters
    ----------
    package
        The package's ``__name__``.
    names
        Public name -> the module that defines it.
    namespace
        The package's ``globals()``: a loaded name is stored there, so later lookups
        do not come back here.
    deprecated
        Old names -> their module: still served (the module's own ``__getattr__`` warns),
        never cached, and left out of ``__all__`` and ``dir()``.
    """
    old = dict(deprecated or {})

    def __getattr__(name: str) -> Any:
        if name in old:
            return getattr(importlib.import_module(old[name]), name)
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__, sorted(names)
