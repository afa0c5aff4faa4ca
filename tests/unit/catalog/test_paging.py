"""Page sizes, filters and page tokens (connector.catalog.paging): each bad input refused."""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from connector.catalog.paging import Filters, Lookahead, PageLimits, PageTokens, page_size
from connector.catalog.products import parse_description
from connector.errors import InvalidRequest

LIMITS = PageLimits(default_size=20, max_size=50)


def test_page_size_defaults_and_bounds() -> None:
    assert page_size(None, LIMITS) == 20
    assert page_size(1, LIMITS) == 1
    assert page_size(50, LIMITS) == 50
    for bad in (0, -1, -(2**31), 51, 2**31 - 1):
        with pytest.raises(InvalidRequest, match="page_size must be between 1 and 50"):
            page_size(bad, LIMITS)


def test_limits_refuse_a_default_above_the_maximum() -> None:
    with pytest.raises(ValueError):
        PageLimits(default_size=60, max_size=50)


@pytest.mark.parametrize("name", ["tag", "domain", "grade", "text"])
def test_a_filter_of_one_megabyte_is_refused(name: str) -> None:
    with pytest.raises(InvalidRequest, match=f"the {name} filter is longer than 256"):
        Filters(**{name: "x" * (1 << 20)})


def test_unknown_grade_and_nul_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="grade filter"):
        Filters(grade="secret")
    with pytest.raises(InvalidRequest, match="NUL"):
        Filters(tag="a\0b")


def tokens() -> PageTokens:
    return PageTokens.from_signing_key(Ed25519PrivateKey.generate(), "catalog")


def test_a_token_opens_for_its_caller_and_filters_only() -> None:
    t = tokens()
    f = Filters(tag="traffic")
    token = t.issue("a\0enterprise", f, ["product-0042"])
    assert t.open(token, "a\0enterprise", f) == ["product-0042"]
    for caller, filters in (
        ("b\0enterprise", f),  # another caller
        ("a\0operator", f),  # the same participant in another role
        ("a\0enterprise", Filters(tag="parking")),  # other filters
        ("a\0enterprise", Filters()),
    ):
        with pytest.raises(InvalidRequest, match="page_token is not one this catalog gave you"):
            t.open(token, caller, filters)


def test_a_token_reveals_no_position() -> None:
    token = tokens().issue("a", Filters(), ["hidden-product-id"])
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert b"hidden" not in raw and "hidden" not in token


def test_edited_forged_and_foreign_tokens_are_refused() -> None:
    t, other = tokens(), tokens()
    f = Filters()
    token = t.issue("a", f, ["p1"])
    flipped = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
    last = token[:-1] + ("A" if token[-1] != "A" else "B")  # maybe only spare bits
    forged = base64.urlsafe_b64encode(json.dumps(["zzz"]).encode()).decode()
    for bad in (
        flipped,
        last,
        token[:-2],
        token + "AA",
        forged,
        "",
        "!!!",
        "x" * 5000,
        other.issue("a", f, ["p1"]),  # another connector's key
    ):
        if not bad:
            continue
        with pytest.raises(InvalidRequest):
            t.open(bad, "a", f)


def test_database_patterns_never_leave_out_a_match() -> None:
    """Every product ``Filters.matches`` accepts also matches every LIKE pattern of the
    filters, as SQLite evaluates them (so the database only narrows)."""
    product = parse_description(
        json.dumps(
            {
                "id": "p",
                "title": "Émissions «Air» 100%_done",
                "description": 'Quoted "words" and back\\slash; 路况 TRAFFIC',
                "grade": "important",
                "tags": ["air_quality", "环境"],
                "domain": "environment",
                "source": {"kind": "file", "path": "x"},
                "offers": [{"id": "o", "purposes": ["r"], "valid_from_ns": 0, "valid_until_ns": 1}],
            }
        ),
        owner="gov",
        fmt="json",
    )
    body = product.to_json()
    db = sqlite3.connect(":memory:")
    cases = [
        Filters(text="traffic 路况"),
        Filters(text="émissions"),
        Filters(text="100 done"),
        Filters(text="words slash"),
        Filters(tag="air_quality"),
        Filters(tag="环境"),
        Filters(domain="environment", grade="important"),
    ]
    for filters in cases:
        assert filters.matches(product), filters
        for pattern in filters.body_patterns():
            (hit,) = db.execute("SELECT ? LIKE ? ESCAPE '\\'", (body, pattern)).fetchone()
            assert hit == 1, (filters, pattern)
    # and they do narrow: a word absent from the product
    (hit,) = db.execute(
        "SELECT ? LIKE ? ESCAPE '\\'", (body, Filters(text="parking").body_patterns()[0])
    ).fetchone()
    assert hit == 0


def test_lookahead_gives_each_result_once_to_its_key() -> None:
    ahead: Lookahead[int] = Lookahead()
    ahead.start("next", lambda: 7)
    assert ahead.take("other") is None
    assert ahead.take("next") == 7
    assert ahead.take("next") is None  # taken once
    ahead.close()


def test_lookahead_holds_few_and_not_for_long() -> None:
    ahead: Lookahead[str] = Lookahead(entries=2, max_age=1.0)
    started = threading.Event()
    ahead.start("a", lambda: "a")
    ahead.start("b", lambda: "b" if started.set() is None else "")
    ahead.start("c", lambda: "c")  # "a" dropped: at most two held
    assert started.wait(5)
    assert ahead.take("a") is None
    assert ahead.take("b") == "b"
    time.sleep(1.6)  # past max_age: "c" dropped
    assert ahead.take("c") is None
    ahead.close()


def test_lookahead_not_started_is_left_to_the_request() -> None:
    ahead: Lookahead[str] = Lookahead()
    gate = threading.Event()
    ahead.start("slow", lambda: "slow" if gate.wait(5) else "")
    ahead.start("next", lambda: "next")  # queued behind "slow"
    assert ahead.take("next") is None  # not started: cancelled, never run
    gate.set()
    assert ahead.take("slow") == "slow"
    ahead.close()


def test_lookahead_that_failed_leaves_the_work_to_the_request() -> None:
    ahead: Lookahead[int] = Lookahead()

    def broken() -> int:
        raise RuntimeError("read failed")

    ahead.start("next", broken)
    assert ahead.take("next") is None
    ahead.close()
