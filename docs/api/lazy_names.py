"""Griffe extension for the API reference: the names of lazy namespaces become visible.

The public packages load their names on first use (PEP 562, ``nucdata._util.lazy.attach``):
``__init__`` holds a ``_LAZY`` dict (public name -> defining module) and a module-level
``__getattr__``, so a static reader such as griffe sees no ``nucdata_models.study.run_arms``
unless the package also imports its names under ``if TYPE_CHECKING:``. This extension
(loaded by ``mkdocs.yml``) imports each package of the documented distributions, reads its
``_LAZY`` and adds an import alias for every public name griffe did not already see, so the
API pages can say ``::: nucdata_models.study.run_arms``: the public path, never the private
module that defines it. Importing a lazy package is cheap (it imports only ``_util.lazy``).
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

import griffe


def _packages(module: griffe.Module) -> list[griffe.Module]:
    """``module`` and every package below it (modules with an ``__init__``)."""
    found = [module]
    for member in module.members.values():
        if not member.is_alias and member.is_module and member.is_init_module:
            found.extend(_packages(member))  # type: ignore[arg-type]
    return found


class LazyNames(griffe.Extension):
    """Add an alias for each ``_LAZY`` name of a package that griffe cannot see statically."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        """Walk ``pkg``'s packages and alias the lazily loaded names each one declares."""
        for package in _packages(pkg):
            try:
                runtime = importlib.import_module(package.path)
            except ImportError:
                continue
            lazy = getattr(runtime, "_LAZY", None)
            if not isinstance(lazy, dict):
                continue
            for name, module in lazy.items():
                if name in package.members:
                    continue
                _define_statically_hidden(loader, pkg, module, name, runtime)
                package.set_member(name, griffe.Alias(name, f"{module}.{name}", parent=package))


def _define_statically_hidden(loader: griffe.GriffeLoader, pkg: griffe.Module, module: str, name: str,
                              runtime: Any) -> None:
    """Give ``module`` an attribute ``name`` griffe missed (``TRAIN, TEST = 0, 2``), so the alias resolves."""
    if not module.startswith(f"{pkg.path}."):
        return  # another distribution's module, loaded on its own
    try:
        defining = loader.modules_collection.get_member(module)
    except KeyError:
        return
    if name not in defining.members:
        with warnings.catch_warnings():  # a deprecated alias still listed: documented as it is
            warnings.simplefilter("ignore", DeprecationWarning)
            value = getattr(runtime, name)
        defining.set_member(name, griffe.Attribute(name, value=repr(value), parent=defining))
