"""Following a paged answer to its end (or to ``--limit``), with progress for long lists."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from connector.cli.progress import CountProgress

__all__ = ["follow_pages"]

T = TypeVar("T")
U = TypeVar("U")
_SMALL = 100

Fetch = Callable[[str, int | None], tuple[Sequence[T], str, int]]
"""``(page_token, page_size)``: one page, the next page's token ("" after the last), and
the largest page size the server accepts."""


def follow_pages(
    fetch: Fetch[T], convert: Callable[[T], U], *, limit: int = 0, label: str = "received"
) -> list[U]:
    """Every item of every page, or the first ``limit`` (0: all), each through ``convert``.

    Pages can be short or empty (the provider's access rules hide some products), so the
    next token, not the page's length, says whether more follow. A page is converted in
    a second thread while the next is asked for (the call waits without the GIL), so the
    time of a long list is the server's, not the server's plus ours.
    """
    received: list[Future[list[U]]] = []
    count = 0
    progress = CountProgress(label)
    token, pages, largest = "", 0, 0
    with ThreadPoolExecutor(max_workers=1) as converter:
        try:
            while True:
                left = limit - count if limit else 0
                page, token, largest = fetch(token, _next_size(left, largest))
                page = list(page)[:left] if left else list(page)
                pages += 1
                count += len(page)
                received.append(converter.submit(_converted, convert, page))
                progress.update(count, pages)
                if not token or (limit and count >= limit):
                    break
        finally:
            progress.close()
        return [item for done in received for item in done.result()]


def _next_size(left: int, largest: int) -> int | None:
    """The page size to ask for, ``left`` items still wanted (0: all) from a server whose
    largest page is ``largest`` (0: not known before the first answer).

    The first page at the server's default (no server allows less), or fewer when fewer
    are wanted; then as large as the server allows, so a long list takes few calls.
    """
    if largest:
        return min(left, largest) if left else largest
    return left if 0 < left < _SMALL else None


def _converted(convert: Callable[[T], U], page: list[T]) -> list[U]:
    return [convert(x) for x in page]
