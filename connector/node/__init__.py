"""A running connector: configuration in, a serving node out.

``Node`` is imported on first use: the CLI's client commands import
``connector.node.clients`` and should not pay for the whole server stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from connector import lazy

if TYPE_CHECKING:
    from connector.node.node import Node

__all__ = ["Node"]


__getattr__ = lazy.exports(__name__, {"Node": "node"})
