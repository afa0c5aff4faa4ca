"""Following a paged answer to its end (or to ``--limit``), with progress for long lists."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from connector.cli.progress import CountProgress

__all__ = ["follow_pages"]

T = TypeVar("T")
_SMALL = 100

Fetch = Callable[[str, int | None], tuple[Sequence[T], str]]
"""``(page_token, page_size)``: one page and the next page's token ("" after the last)."""


def follow_pages(fetch: Fetch[T], *, limit: int = 0, label: str = "received") -> list[T]:
    """Every item of every page, or the first ``limit`` (0: all).

    Pages can be short or empty (the provider's access rules hide some products), so the
    next token, not the page's length, says whether more follow.
    """
    items: list[T] = []
    progress = CountProgress(label)
    token, pages = "", 0
    try:
        while True:
            left = limit - len(items) if limit else 0
            # The provider's default size unless fewer are wanted (its maximum is unknown
            # here, and no provider allows less than its own default).
            page, token = fetch(token, left if 0 < left < _SMALL else None)
            pages += 1
            items.extend(page)
            progress.update(len(items), pages)
            if not token or (limit and len(items) >= limit):
                break
    finally:
        progress.close()
    return items[:limit] if limit else items
