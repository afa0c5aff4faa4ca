"""Following a paged answer to its end (or to ``--limit``), with progress for long lists."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from connector.cli.progress import CountProgress

__all__ = ["follow_pages"]

T = TypeVar("T")
_SMALL = 100

Fetch = Callable[[str, int | None], tuple[Sequence[T], str, int]]
"""``(page_token, page_size)``: one page, the next page's token ("" after the last), and
the largest page size the server accepts."""


def follow_pages(fetch: Fetch[T], *, limit: int = 0, label: str = "received") -> list[T]:
    """Every item of every page, or the first ``limit`` (0: all).

    Pages can be short or empty (the provider's access rules hide some products), so the
    next token, not the page's length, says whether more follow.
    """
    items: list[T] = []
    progress = CountProgress(label)
    token, pages, largest = "", 0, 0
    try:
        while True:
            left = limit - len(items) if limit else 0
            page, token, largest = fetch(token, _next_size(left, largest))
            pages += 1
            items.extend(page)
            progress.update(len(items), pages)
            if not token or (limit and len(items) >= limit):
                break
    finally:
        progress.close()
    return items[:limit] if limit else items


def _next_size(left: int, largest: int) -> int | None:
    """The page size to ask for, ``left`` items still wanted (0: all) from a server whose
    largest page is ``largest`` (0: not known before the first answer).

    The first page at the server's default (no server allows less), or fewer when fewer
    are wanted; then as large as the server allows, so a long list takes few calls.
    """
    if largest:
        return min(left, largest) if left else largest
    return left if 0 < left < _SMALL else None
