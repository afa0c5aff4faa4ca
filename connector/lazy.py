"""Package exports imported on first use (PEP 562).

Every ``tds`` command builds the whole CLI parser, and the client commands import a few
light modules of packages whose other modules bring the database, the policy engines or
the server. A package lists such exports here instead of importing them at the top.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["exports"]


def exports(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``name`` comes from ``package.where[name]``.

    The value is kept in the package once imported, so later lookups are plain ones.
    """

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
