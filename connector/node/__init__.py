"""A running connector: configuration in, a serving node out.

``Node`` is imported on first use: the CLI's client commands import
``connector.node.clients`` and should not pay for the whole server stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connector.node.node import Node

__all__ = ["Node"]


def __getattr__(name: str) -> Any:
    if name == "Node":
        from connector.node.node import Node

        return Node
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
