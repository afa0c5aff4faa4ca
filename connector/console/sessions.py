"""The console's sessions: who signed in, until when, and the pages they walked through.

A session ends after ``idle`` seconds without a request or ``lifetime`` seconds after
sign-in, whichever comes first; a request on an ended session is refused as one without
a session (nothing done) and says why. The admin API's page tokens only go forward, so a
session remembers the tokens of the pages it was shown, under short random ids its links
carry: "previous" is the id of the page before, not a token the browser could edit.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["IDLE_SECONDS", "LIFETIME_SECONDS", "Page", "Session", "Sessions"]

IDLE_SECONDS = 30 * 60
"""A session not used for this long ends (``tds console --idle-minutes``)."""
LIFETIME_SECONDS = 12 * 3600
"""No session lasts longer than this after sign-in (``tds console --session-hours``)."""
_PAGES_KEPT = 512
"""Page ids a session remembers (the oldest are forgotten: their links start over)."""


@dataclass(frozen=True)
class Page:
    """A page of a paged list a session was shown a link to."""

    token: str
    """The admin API's page token ("" for the first page)."""
    previous: str
    """The id of the page before ("" for the first page)."""
    number: int
    """1 for the first page."""


FIRST = Page("", "", 1)


@dataclass
class Session:
    """One signed-in browser."""

    csrf: str
    started: float
    seen: float
    pages: OrderedDict[str, Page] = field(default_factory=OrderedDict)

    def page(self, page_id: str) -> Page:
        """The page a link's id names; the first page for "" or an id forgotten."""
        return self.pages.get(page_id, FIRST) if page_id else FIRST

    def link(self, token: str, current_id: str, current: Page) -> str:
        """An id for the page after ``current`` (whose id is ``current_id``)."""
        page_id = secrets.token_urlsafe(9)
        self.pages[page_id] = Page(token, current_id, current.number + 1)
        while len(self.pages) > _PAGES_KEPT:
            self.pages.popitem(last=False)
        return page_id


class Sessions:
    """The one-time sign-in token and the live sessions, ended by idleness or age."""

    def __init__(
        self,
        *,
        idle: float = IDLE_SECONDS,
        lifetime: float = LIFETIME_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < idle <= lifetime:
            raise ValueError("session lifetimes: need 0 < idle <= lifetime")
        self.token = secrets.token_urlsafe(32)
        self.idle = idle
        self.lifetime = lifetime
        self._clock = clock
        self._live: dict[str, Session] = {}
        self._ended: set[str] = set()
        self._lock = threading.Lock()

    def login(self, token: str) -> tuple[str, Session] | None:
        """Trade the printed token for a new session (its cookie value); works once."""
        with self._lock:
            if not self.token or not hmac.compare_digest(token.encode(), self.token.encode()):
                return None
            self.token = ""
            now = self._clock()
            cookie = secrets.token_urlsafe(32)
            self._live[cookie] = Session(secrets.token_urlsafe(32), now, now)
            return cookie, self._live[cookie]

    def get(self, cookie: str) -> Session | None:
        """The live session of a cookie, marked as used now; None without one (an ended
        session is forgotten here, and ``ended`` then says so)."""
        with self._lock:
            session = self._live.get(cookie)
            if session is None:
                return None
            now = self._clock()
            if now - session.seen > self.idle or now - session.started > self.lifetime:
                del self._live[cookie]
                self._ended.add(cookie)
                return None
            session.seen = now
            return session

    def peek(self, cookie: str) -> Session | None:
        """The session of a cookie if live, without marking it used (for rendering)."""
        with self._lock:
            return self._live.get(cookie)

    def ended(self, cookie: str) -> bool:
        """Whether ``cookie`` named a session that expired (rather than none at all)."""
        with self._lock:
            return cookie in self._ended
