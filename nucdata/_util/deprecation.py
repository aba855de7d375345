"""Old names kept for one release: module attributes and keyword arguments that were renamed."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["moved_attributes", "renamed_keywords"]

F = TypeVar("F", bound=Callable[..., Any])


def renamed_keywords(**renames: str) -> Callable[[F], F]:
    """Accept ``old=`` keywords of a function as deprecated aliases of ``new=``.

    ``@renamed_keywords(source="from_dir")`` lets ``f(source=x)`` keep working for one
    release, with a :class:`DeprecationWarning` naming the new keyword; passing both
    is a :class:`TypeError`.
    """

    def wrap(func: F) -> F:
        @functools.wraps(func)
        def inner(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{func.__name__}() got both {old}= (deprecated) and {new}=; pass {new}= only")
                    warnings.warn(f"{func.__name__}({old}=...) is deprecated; use {new}= (it will be removed "
                                  "in the next release)", DeprecationWarning, stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap


def moved_attributes(module: str, moved: dict[str, tuple[str, Callable[[], Any]]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving renamed attributes with a :class:`DeprecationWarning`.

    ``moved`` maps an old name to ``(new name, a function returning the value)``.
    """

    def __getattr__(name: str) -> Any:
        if name in moved:
            new, value = moved[name]
            warnings.warn(f"{module}.{name} is deprecated; use {new} (it will be removed in the next release)",
                          DeprecationWarning, stacklevel=2)
            return value()
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
