"""The console's web server: aiohttp with Jinja2 templates, on loopback only.

Access works like Jupyter's: ``tds console`` prints a URL with a random token; opening it
trades the token (once) for an HttpOnly, SameSite=Strict session cookie. Every POST must
carry the session's CSRF token, every answer a strict Content-Security-Policy (scripts and
styles only from this server, no inline code), and the Host header must name the loopback
address the console serves on (so a DNS-rebinding page cannot talk to it).

aiohttp because it is already the DSP binding's HTTP stack; Jinja2 for its autoescaping:
every value a peer controls (titles, reasons, ids) is rendered as text.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import ipaddress
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import jinja2
from aiohttp import web

from connector.cli.output import utc_text
from connector.console.backend import ROWS, AdminBackend, LogSearch
from connector.console.sessions import Session, Sessions
from connector.console.timeline import day_chart, timeline
from connector.errors import (
    ConfigError,
    ConflictError,
    ConnectorError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    Unavailable,
)
from connector.identity.names import Role
from connector.webserver import BackgroundSite

__all__ = ["Console", "build_app", "check_listen"]

COOKIE = "tds_console"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_STATUS = {
    InvalidRequest: 400,
    PermissionDenied: 403,
    NotFound: 404,
    ConflictError: 409,
    PreconditionFailed: 409,
    Unavailable: 503,
}
_PACKAGE = Path(str(resources.files("connector.console")))
SESSION = web.RequestKey("session", Session)
"""Where the session middleware leaves the request's live session for the handlers."""
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

NAV = [
    ("/products", "数据产品 / products"),
    ("/requests", "待审批 / requests waiting"),
    ("/negotiations", "合约协商 / negotiations"),
    ("/agreements", "数字合约 / contracts"),
    ("/transfers", "数据传输 / transfers"),
    ("/holdings", "持有数据 / holdings"),
    ("/receipts", "传输回执 / receipts"),
    ("/metering", "计量 / metering"),
    ("/disclosure", "公共数据披露 / disclosure"),
    ("/consents", "个人信息同意 / consents"),
    ("/catalog", "目录索引 / catalog index"),
]
AUDIT_NAV = [
    ("/audit", "审计日志 / audit log"),
    ("/reconcile", "回执对账 / reconcile receipts"),
]
"""Every console reads logs; an auditor's has only these pages (it runs no connector)."""
NAV += AUDIT_NAV
OPERATOR_NAV = [
    ("/participants", "参与方 / participants"),
    ("/grants", "授权运营 / grants"),
    ("/catalog", "目录索引 / catalog index"),
    ("/audit", "审计日志 / audit log"),
]


def countdown(left_ms: int) -> str:
    """Time left to a deadline as a person reads it (``static/console.js`` ticks it on)."""
    if left_ms <= 0:
        return "已到期 / due now"
    minutes = left_ms // 60_000
    days, hours, mins = minutes // 1440, minutes // 60 % 24, minutes % 60
    if days:
        return f"还剩 {days} 天 {hours} 小时 / {days} d {hours} h left"
    return f"还剩 {hours} 小时 {mins} 分 / {hours} h {mins} min left"


def expires_in(left_ms: int) -> str:
    """How soon a certificate expires, for the participants page's warning."""
    if left_ms <= 0:
        return "已过期 / EXPIRED"
    days = left_ms // 86_400_000
    if not days:
        return "今天到期 / expires today"
    return f"{days} 天后到期 / expires in {days} d"


def utc_time(ms: int) -> str:
    """Unix milliseconds as UTC text, as ``static/console.js`` writes a ``.time`` cell (the
    server writes it too, so the date is there without the script)."""
    return utc_text(ms * 10**6, "%Y-%m-%d %H:%M:%S")


def check_listen(listen: str, *, insecure: bool) -> tuple[str, int]:
    """``HOST:PORT`` to serve on; anything but loopback needs ``insecure``."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:8765")
    host = host.strip("[]")
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            raise ConfigError(f"--listen {listen!r}: {host!r} is not an IP address") from None
    if not loopback and not insecure:
        raise ConfigError(
            f"--listen {listen}: the console acts with your administrator certificate, so it "
            "serves on loopback only (127.0.0.1 or ::1); reach it from elsewhere through an SSH "
            "tunnel, or pass --insecure-listen if you really mean to expose it"
        )
    return host, int(port)


class Console:
    """One console: its backend, its login token and its sessions."""

    def __init__(
        self,
        backend: AdminBackend,
        *,
        insecure_test_hooks: bool = False,
        sessions: Sessions | None = None,
    ) -> None:
        """``sessions``: how long sessions last (``Sessions`` defaults without it)."""
        self.backend = backend
        self.sessions = sessions or Sessions()
        self._hooks = insecure_test_hooks
        self._hosts: set[str] = set()
        self._site = BackgroundSite("tds-console")
        self.port = 0
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(_PACKAGE / "templates")),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["countdown"] = countdown
        self.templates.filters["expires_in"] = expires_in
        self.templates.filters["utc_time"] = utc_time

    @property
    def token(self) -> str:
        """The one-time sign-in token ("" once used)."""
        return self.sessions.token

    # -- access

    def session_of(self, request: web.Request) -> Session | None:
        """The request's live session (marked used), or None."""
        return self.sessions.get(request.cookies.get(COOKIE, ""))

    def csrf_of(self, request: web.Request) -> str | None:
        """The CSRF token of the request's session, or None without a live session."""
        session = self.sessions.peek(request.cookies.get(COOKIE, ""))
        return session.csrf if session else None

    def url(self) -> str:
        """Where to open the console (with the one-time token)."""
        return f"http://127.0.0.1:{self.port}/?token={self.token}"

    # -- serving

    def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Serve in a thread of its own until ``stop``."""
        try:
            self.port = self._site.start(build_app(self), host, port)
        except Exception as exc:
            raise ConfigError(f"console cannot listen on {host}:{port}: {exc}") from None
        name = f"[{host}]" if ":" in host else host
        self._hosts = {f"{name}:{self.port}", f"localhost:{self.port}"}

    def stop(self) -> None:
        """Stop serving and close the channel to the connector."""
        self._site.stop()
        self.backend.close()


def _page(
    console: Console, request: web.Request, template: str, status: int = 200, **values: Any
) -> web.Response:
    html = console.templates.get_template(template).render(
        nav=_nav(console),
        path=request.path,
        me=console.backend.participant,
        csrf=console.csrf_of(request) or "",
        notice=request.query.get("notice", ""),
        **values,
    )
    return web.Response(text=html, content_type="text/html", status=status)


def _secure(headers: Any) -> None:
    headers["Content-Security-Policy"] = CSP
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers["Cache-Control"] = "no-store"
    headers["X-Frame-Options"] = "DENY"


def _security_headers(console: Console) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if console._hosts and request.host not in console._hosts:
            response: web.StreamResponse = web.Response(
                status=421, text=f"this console answers only at {sorted(console._hosts)[0]}"
            )
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # redirects and aiohttp's 404s: same headers
                _secure(exc.headers)
                raise
        _secure(response.headers)
        return response

    return middleware


def _session_required(console: Console) -> Any:
    """No session: a clear page (or 401 JSON) and nothing done; POST without CSRF: 403."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/" or request.path.startswith("/static/"):
            return await handler(request)
        session = console.session_of(request)
        if session is None:
            return _signed_out(console, request)
        if request.method not in ("GET", "HEAD"):
            form = await request.post()
            given = str(form.get("csrf", "")) or request.headers.get("X-CSRF-Token", "")
            if not hmac.compare_digest(given.encode(), session.csrf.encode()):
                return _page(console, request, "login.html", status=403, reason="csrf")
        request[SESSION] = session
        return await handler(request)

    return middleware


def _signed_out(console: Console, request: web.Request) -> web.Response:
    """401 for a request without a live session: why (none, or expired), nothing done."""
    expired = console.sessions.ended(request.cookies.get(COOKIE, ""))
    reason = "expired" if expired else "no_session"
    if request.path.startswith("/api/"):
        why = "session expired" if expired else "no session"
        return web.json_response({"error": f"{why}: open the console URL"}, status=401)
    return _page(
        console,
        request,
        "login.html",
        status=401,
        reason=reason,
        idle=_spoken(console.sessions.idle),
        lifetime=_spoken(console.sessions.lifetime),
    )


def _spoken(seconds: float) -> str:
    """A session lifetime as a person reads it: minutes up to two hours, then hours."""
    if seconds < 2 * 3600:
        return f"{seconds / 60:.3g} 分钟 / minutes"
    return f"{seconds / 3600:.3g} 小时 / hours"


def _shown_errors(console: Console) -> Any:
    """A ConnectorError is a banner on the page, with its message; never a traceback."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ConnectorError as exc:
            status = next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), 502)
            if request.path.startswith("/api/"):
                return web.json_response({"error": str(exc)}, status=status)
            return _page(console, request, "error.html", status=status, error=str(exc))

    return middleware


def build_app(console: Console) -> web.Application:
    """The console's routes."""
    backend = console.backend
    app = web.Application(
        middlewares=[
            _security_headers(console),
            _session_required(console),
            _shown_errors(console),
        ],
        client_max_size=64 * 1024,
    )

    async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def index(request: web.Request) -> web.StreamResponse:
        token = request.query.get("token")
        if token is None:
            if console.session_of(request) is not None:
                raise web.HTTPSeeOther(_landing(console))
            return _signed_out(console, request)
        signed_in = console.sessions.login(token)
        if signed_in is None:
            return _page(console, request, "login.html", status=403, reason="bad_token")
        # See other: the token leaves the address bar and the history.
        response = web.Response(status=303, headers={"Location": _landing(console)})
        response.set_cookie(
            COOKIE,
            signed_in[0],
            httponly=True,
            samesite="Strict",
            path="/",
            max_age=int(console.sessions.lifetime),
        )
        return response

    async def paged(request: web.Request, fetch: Callable[[str], Any]) -> dict[str, Any]:
        """One page of a list the admin API pages, and the pager's links."""
        session = request[SESSION]
        page_id = request.query.get("page", "")
        page = session.page(page_id)
        rows, following = await call(fetch, page.token)
        after = session.link(following, page_id, page) if following else ""
        return {
            "rows": rows,
            "pager": {
                "number": page.number,
                "previous": _query(page=page.previous) if page.number > 1 else "",
                "next": _query(page=after) if after else "",
            },
        }

    async def products(request: web.Request) -> web.StreamResponse:
        found = await paged(request, backend.products)
        return _page(console, request, "products.html", **found)

    async def requests_(request: web.Request) -> web.StreamResponse:
        waiting = await paged(request, lambda t: backend.negotiations(t, pending=True))
        return _page(console, request, "requests.html", **waiting)

    async def decide(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        info = await call(
            backend.decide,
            str(form.get("pid", "")),
            str(form.get("action", "")),
            str(form.get("reason", "")),
        )
        notice = f"{info['pid']}: {info['state']}"
        raise web.HTTPSeeOther(f"/negotiations?notice={_quote(notice)}")

    async def negotiations(request: web.Request) -> web.StreamResponse:
        found = await paged(request, backend.negotiations)
        return _page(console, request, "negotiations.html", **found)

    async def negotiation(request: web.Request) -> web.StreamResponse:
        found = await call(backend.negotiation, request.match_info["pid"])
        drawn = timeline(found["transitions"])
        return _page(console, request, "negotiation.html", n=found, timeline=drawn)

    async def agreements(request: web.Request) -> web.StreamResponse:
        found = await paged(request, lambda t: backend.negotiations(t, agreements=True))
        return _page(console, request, "agreements.html", **found)

    async def revoke(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        info = await call(
            backend.revoke, str(form.get("agreement_id", "")), str(form.get("reason", ""))
        )
        raise web.HTTPSeeOther(f"/agreements?notice={_quote(info['agreement_id'] + ' revoked')}")

    async def transfers(request: web.Request) -> web.StreamResponse:
        # The page and the chart at once: two calls to the connector, waited for together.
        found, activity = await asyncio.gather(
            paged(request, backend.transfers), call(backend.activity)
        )
        return _page(
            console,
            request,
            "transfers.html",
            activity=activity,
            per_day=day_chart(activity["days"]),
            **found,
        )

    async def catalog(request: web.Request) -> web.StreamResponse:
        text, tag = request.query.get("q", "").strip(), request.query.get("tag", "").strip()
        grade = request.query.get("grade", "")
        query = {"q": text, "tag": tag, "grade": grade}
        found = await paged(request, lambda t: backend.catalog(text, tag, grade, t))
        for key in ("previous", "next"):  # the pager's links keep the search
            if found["pager"][key]:
                page_id = parse_qs(found["pager"][key][1:]).get("page", [""])[0]
                found["pager"][key] = _query(**query, page=page_id)
        return _page(console, request, "catalog.html", q=query, **found)

    async def holdings(request: web.Request) -> web.StreamResponse:
        found = await paged(request, backend.holdings)
        return _page(console, request, "holdings.html", **found)

    async def receipts(request: web.Request) -> web.StreamResponse:
        found = await paged(request, lambda t: backend.holdings(t, kept=False))
        return _page(console, request, "receipts.html", **found)

    async def metering(request: web.Request) -> web.StreamResponse:
        found = await paged(request, backend.metering)
        return _page(console, request, "metering.html", **found)

    async def disclosure(request: web.Request) -> web.StreamResponse:
        this_year = time.gmtime().tm_year
        year = _int(request.query.get("year", str(this_year)), "year")
        report = await call(backend.disclosure, year)
        return _page(console, request, "disclosure.html", report=report, year=year)

    async def consents(request: web.Request) -> web.StreamResponse:
        found = await call(backend.consents)
        return _page(console, request, "consents.html", **_paged(request, found))

    async def give_consent(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        fields = ("recipient", "purposes", "method", "categories", "expires")
        given = await call(backend.grant_consent, *(str(form.get(f, "")).strip() for f in fields))
        notice = f"{given['id']} given to {given['recipient']}"
        raise web.HTTPSeeOther(f"/consents?notice={_quote(notice)}")

    async def withdraw(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        consent_id = str(form.get("consent_id", ""))
        revoked = await call(backend.withdraw_consent, consent_id, str(form.get("reason", "")))
        notice = f"{consent_id} withdrawn; agreements revoked: {', '.join(revoked) or 'none'}"
        raise web.HTTPSeeOther(f"/consents?notice={_quote(notice)}")

    async def participants(request: web.Request) -> web.StreamResponse:
        found = await call(backend.participants)
        return _page(console, request, "participants.html", **_paged(request, found))

    async def grants(request: web.Request) -> web.StreamResponse:
        found = await call(backend.grants)
        operators: list[dict[str, Any]] = []
        if backend.is_operator:  # who the form may grant to: enterprises and government bodies
            operators = [
                p
                for p in await call(backend.participants)
                if p["role"] in (Role.ENTERPRISE.value, Role.GOVERNMENT.value) and not p["revoked"]
            ]
        return _page(
            console,
            request,
            "grants.html",
            operator=backend.is_operator,
            operators=operators,
            **_paged(request, found),
        )

    async def grant(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        fields = ("participant", "scope", "purposes", "start", "end", "body")
        granted = await call(backend.grant, *(str(form.get(f, "")).strip() for f in fields))
        notice = f"{granted['id']} granted to {granted['participant']}"
        raise web.HTTPSeeOther(f"/grants?notice={_quote(notice)}")

    async def revoke_grant(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        grant_id = str(form.get("grant_id", ""))
        await call(backend.revoke_grant, grant_id, str(form.get("reason", "")))
        raise web.HTTPSeeOther(f"/grants?notice={_quote(grant_id + ' revoked')}")

    async def audit(request: web.Request) -> web.StreamResponse:
        target = request.query.get("connector", "")
        if not target and not backend.runs_connector:
            return _page(console, request, "audit_pick.html")
        target = target or backend.participant
        start = _int(request.query.get("start", "-1"), "start")
        search = _log_search(request.query)
        page = await call(backend.log_page, target, start, search)
        return _page(console, request, "audit.html", log=page, q=request.query)

    async def reconcile(request: web.Request) -> web.StreamResponse:
        party_a, party_b = request.query.get("a", ""), request.query.get("b", "")
        result = await call(backend.reconcile, party_a, party_b) if party_a or party_b else None
        return _page(console, request, "reconcile.html", a=party_a, b=party_b, result=result)

    async def evidence(request: web.Request) -> web.StreamResponse:
        target = request.query.get("connector", "") or backend.participant
        found = await call(backend.evidence, target, _int(request.query.get("index", ""), "index"))
        answer = found.as_json()
        if console._hooks and request.query.get("tamper") == "1":
            # Test hook (never on from the CLI): change one byte of the entry as a lying
            # server would, so the browser's check can be seen to refuse it.
            body = bytearray(found.body)
            body[len(body) // 2] ^= 0x01
            answer["body"] = base64.b64encode(bytes(body)).decode()
        return web.json_response(answer)

    app.router.add_get("/", index)
    app.router.add_get("/products", products)
    app.router.add_get("/requests", requests_)
    app.router.add_post("/requests/decide", decide)
    app.router.add_get("/negotiations", negotiations)
    app.router.add_get("/negotiations/{pid}", negotiation)
    app.router.add_get("/agreements", agreements)
    app.router.add_post("/agreements/revoke", revoke)
    app.router.add_get("/transfers", transfers)
    app.router.add_get("/holdings", holdings)
    app.router.add_get("/receipts", receipts)
    app.router.add_get("/metering", metering)
    app.router.add_get("/disclosure", disclosure)
    app.router.add_get("/consents", consents)
    app.router.add_post("/consents/grant", give_consent)
    app.router.add_post("/consents/withdraw", withdraw)
    app.router.add_get("/catalog", catalog)
    app.router.add_get("/participants", participants)
    app.router.add_get("/grants", grants)
    app.router.add_post("/grants/grant", grant)
    app.router.add_post("/grants/revoke", revoke_grant)
    app.router.add_get("/audit", audit)
    app.router.add_get("/reconcile", reconcile)
    app.router.add_get("/api/evidence", evidence)
    app.router.add_static("/static/", str(_PACKAGE / "static"), show_index=False)
    return app


def _paged(request: web.Request, rows: list[Any]) -> dict[str, Any]:
    """One page of ``rows`` (a list the registry answers whole) from ``?start=``, and the
    pager's links."""
    start = max(0, min(_int(request.query.get("start", "0"), "start"), max(0, len(rows) - 1)))
    return {
        "rows": rows[start : start + ROWS],
        "pager": {
            "number": start // ROWS + 1,
            "previous": _query(start=max(0, start - ROWS)) if start > 0 else "",
            "next": _query(start=start + ROWS) if start + ROWS < len(rows) else "",
        },
    }


def _nav(console: Console) -> list[tuple[str, str]]:
    """The pages this participant's console has."""
    if console.backend.is_operator:
        return OPERATOR_NAV
    return NAV if console.backend.runs_connector else AUDIT_NAV


def _landing(console: Console) -> str:
    """The first page of this participant's console."""
    return _nav(console)[0][0]


def _log_search(query: Any) -> LogSearch | None:
    """The log explorer's search from the page's query (None: plain paging by position).
    Times are UTC: a date alone is the whole day (from its start, to its end)."""
    kind, party = query.get("kind", "").strip(), query.get("party", "").strip()
    since, until = query.get("since", "").strip(), query.get("until", "").strip()
    before = query.get("before", "")
    if not (kind or party or since or until or before):
        return None
    since_ms = _moment_ms(since, "since") if since else 0
    until_ms = 0
    if until:
        whole = 86_400_000 if len(until) == 10 else 60_000  # a day, or a minute
        until_ms = _moment_ms(until, "until") + whole - 1
    if until_ms and since_ms > until_ms:
        raise InvalidRequest(f"from {since} is after until {until}: no time is in that window")
    return LogSearch(kind, party, since_ms, until_ms, _int(before or "0", "before"))


def _moment_ms(text: str, name: str) -> int:
    """A date (2026-12-05) or a minute (2026-12-05T14:30) as the form sends it, in UTC."""
    from connector.cli.output import parse_date_ns

    ms = parse_date_ns(text, name) // 10**6
    if ms < 0:
        raise InvalidRequest(f"{name} {text!r}: before 1970")
    return ms


def _int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidRequest(f"{name} must be a whole number, not {text!r}") from None


def _quote(text: str) -> str:
    return quote(text, safe="")


def _query(**values: Any) -> str:
    """A link to this page with other query values ("?" alone for none)."""
    return "?" + urlencode({k: v for k, v in values.items() if v})
