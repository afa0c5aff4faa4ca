"""The console's door: token, session cookie, CSRF, Host, CSP, loopback, errors as banners.

Plain HTTP against a real console on a real connector; each test tries to get past a check.
"""

from __future__ import annotations

import http.client
import re
import urllib.parse
from typing import Any

import pytest

from connector.console.app import COOKIE, Console, check_listen
from connector.demo.space import LocalSpace
from connector.errors import ConfigError
from tests.console.conftest import open_console


def request(
    console: Console,
    method: str,
    path: str,
    *,
    cookie: str = "",
    form: dict[str, str] | None = None,
    host: str = "",
) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", console.port, timeout=30)
    headers = {"Host": host or f"127.0.0.1:{console.port}"}
    if cookie:
        headers["Cookie"] = f"{COOKIE}={cookie}"
    body = None
    if form is not None:
        body = urllib.parse.urlencode(form)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, text


def login(console: Console) -> tuple[str, str]:
    """Trade the token; the session cookie and the page's CSRF token."""
    status, headers, _ = request(console, "GET", f"/?token={console.token}")
    assert status == 303, status
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    session = re.search(rf"{COOKIE}=([^;]+)", cookie)
    assert session is not None
    _, _, page = request(console, "GET", "/requests", cookie=session.group(1))
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert csrf is not None
    return session.group(1), csrf.group(1)


@pytest.fixture
def console(space: LocalSpace) -> Any:
    c = open_console(space, "gov")
    yield c
    c.stop()


def test_a_wrong_token_is_refused_and_the_right_one_works_once(console: Console) -> None:
    status, headers, page = request(console, "GET", "/?token=guess")
    assert status == 403 and "set-cookie" not in headers and "wrong or was already used" in page
    token = console.token
    login(console)
    status, headers, _ = request(console, "GET", f"/?token={token}")
    assert status == 403 and "set-cookie" not in headers


def test_no_session_gets_a_clear_page_and_nothing_done(console: Console) -> None:
    for path in ("/products", "/agreements", "/audit"):
        status, _, page = request(console, "GET", path)
        assert status == 401 and "No session" in page
    status, _, page = request(console, "GET", "/products", cookie="made-up")
    assert status == 401
    status, _, _ = request(console, "GET", "/api/evidence?index=0")
    assert status == 401
    status, _, page = request(
        console, "POST", "/agreements/revoke", form={"agreement_id": "x", "reason": "r"}
    )
    assert status == 401


def test_a_post_without_the_csrf_token_is_refused(console: Console) -> None:
    session, csrf = login(console)
    for form in (
        {"pid": "p", "action": "approve"},
        {"pid": "p", "action": "approve", "csrf": "forged"},
    ):
        status, _, page = request(console, "POST", "/requests/decide", cookie=session, form=form)
        assert status == 403 and "CSRF" in page
    # With the token, the same post reaches the connector (which knows no such negotiation).
    status, _, page = request(
        console,
        "POST",
        "/requests/decide",
        cookie=session,
        form={"pid": "p", "action": "approve", "csrf": csrf},
    )
    assert status == 404 and 'class="banner bad"' in page and "Traceback" not in page


def test_grant_forms_need_the_csrf_token_and_the_operator(space: LocalSpace) -> None:
    from connector.node.clients import registry_client

    def grants() -> int:
        client = registry_client(space.configs["gov"])
        try:
            return len(client.list_grants(include_revoked=True))
        finally:
            client.close()

    before = grants()
    form = {
        "participant": "a",
        "scope": "traffic",
        "purposes": "traffic-analytics",
        "end": "2099-01-01",
        "body": "City Data Bureau",
    }
    operator = open_console(space, space.manifest.operator_id)
    try:
        session, csrf = login(operator)
        for forged in ({}, {"csrf": "forged"}):  # a cross-site post carries no valid token
            status, _, page = request(
                operator, "POST", "/grants/grant", cookie=session, form={**form, **forged}
            )
            assert status == 403 and "CSRF" in page
        # With the token but a term past five years: the registry's refusal, as a banner.
        status, _, page = request(
            operator, "POST", "/grants/grant", cookie=session, form={**form, "csrf": csrf}
        )
        assert status == 400 and "at most 5 years" in page and "Traceback" not in page
    finally:
        operator.stop()
    provider = open_console(space, "gov")
    try:
        session, csrf = login(provider)
        for path in ("/grants/grant", "/grants/revoke"):
            status, _, page = request(
                provider,
                "POST",
                path,
                cookie=session,
                form={**form, "grant_id": "gr-x", "reason": "r", "csrf": csrf},
            )
            assert status == 403 and "only the operator" in page
    finally:
        provider.stop()
    assert grants() == before


def test_every_answer_carries_a_strict_csp(console: Console) -> None:
    session, _ = login(console)
    for path in ("/products", "/static/console.js", "/nowhere"):
        _, headers, _ = request(console, "GET", path, cookie=session)
        csp = headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert headers["x-content-type-options"] == "nosniff"


def test_another_host_name_is_refused(console: Console) -> None:
    """A DNS-rebinding page reaches 127.0.0.1 under its own name: refused."""
    session, _ = login(console)
    status, _, _ = request(console, "GET", "/products", cookie=session, host="evil.example:80")
    assert status == 421


def test_only_loopback_without_insecure_listen() -> None:
    assert check_listen("127.0.0.1:0", insecure=False) == ("127.0.0.1", 0)
    assert check_listen("[::1]:8765", insecure=False) == ("::1", 8765)
    with pytest.raises(ConfigError, match="loopback only"):
        check_listen("0.0.0.0:8765", insecure=False)
    with pytest.raises(ConfigError, match="loopback only"):
        check_listen("192.168.1.4:8765", insecure=False)
    anywhere = "0.0.0.0"  # noqa: S104 - the point: allowed only with insecure
    assert check_listen(f"{anywhere}:8765", insecure=True) == (anywhere, 8765)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        check_listen("8765", insecure=False)


def test_an_unreachable_connector_is_a_banner(space: LocalSpace, tmp_path: Any) -> None:
    import dataclasses

    from connector.console.backend import AdminBackend

    cfg = space.configs["gov"]
    gone = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, listen="127.0.0.1:9"))
    console = Console(AdminBackend(gone))
    console.start()
    try:
        session, _ = login(console)
        status, _, page = request(console, "GET", "/products", cookie=session)
        assert status == 503 and 'class="banner bad"' in page and "Traceback" not in page
    finally:
        console.stop()


class Clock:
    """A clock the test moves (sessions read time through it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_stale_session_gets_a_clear_page_and_nothing_done(space: LocalSpace) -> None:
    from connector._proto.tds.v1 import admin_pb2
    from connector.console.backend import AdminBackend
    from connector.console.sessions import Sessions
    from tests.integration.test_approval import waiting
    from tests.integration.test_negotiation import admin

    pid = waiting(space, "a", "air-quality")
    gov = admin(space, "gov")
    clock = Clock()
    console = Console(
        AdminBackend(space.configs["gov"]),
        sessions=Sessions(idle=60, lifetime=150, clock=clock),
    )
    console.start()
    try:
        session, csrf = login(console)
        clock.now += 59  # used within the idle time: still live
        status, _, _ = request(console, "GET", "/products", cookie=session)
        assert status == 200
        clock.now += 61  # idle too long
        approve = {"pid": pid, "action": "approve", "csrf": csrf}
        status, headers, page = request(
            console, "POST", "/requests/decide", cookie=session, form=approve
        )
        assert status == 401 and "session expired" in page and "location" not in headers
        assert "1 分钟 / minutes without use" in page
        assert gov.GetNegotiation(admin_pb2.NegotiationRef(pid=pid)).state == "REQUESTED"
        for path in ("/requests", "/"):
            status, _, page = request(console, "GET", path, cookie=session)
            assert status == 401 and "session expired" in page
        status, _, body = request(console, "GET", "/api/evidence?index=0", cookie=session)
        assert status == 401 and "session expired" in body
    finally:
        console.stop()


def test_a_session_ends_at_its_lifetime_however_busy(space: LocalSpace) -> None:
    from connector.console.backend import AdminBackend
    from connector.console.sessions import Sessions

    clock = Clock()
    console = Console(
        AdminBackend(space.configs["gov"]),
        sessions=Sessions(idle=60, lifetime=150, clock=clock),
    )
    console.start()
    try:
        session, _ = login(console)
        for _ in range(3):  # used every 50 s: never idle
            clock.now += 50
            status, _, _ = request(console, "GET", "/products", cookie=session)
            assert status == 200
        clock.now += 1
        status, _, page = request(console, "GET", "/products", cookie=session)
        assert status == 401 and "session expired" in page
        assert "2.5 分钟 / minutes after sign-in" in page
    finally:
        console.stop()
