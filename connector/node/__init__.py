"""A running connector: configuration in, a serving node out."""

from connector.node.node import Node

__all__ = ["Node"]
