"""A local space with a provider holding an important product, and consoles on it.

``gov`` provides, ``a`` asks for its important product (the request waits for approval),
``alice`` consents, ``aud`` audits. Browser tests drive Debian's chromium with Playwright;
they skip, saying why, when either is missing (``.ci/run`` installs chromium).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connector._proto.tds.v1 import admin_pb2
from connector.console.app import Console
from connector.console.backend import AdminBackend
from connector.demo.space import LocalSpace
from connector.identity.names import Role
from tests.integration.test_negotiation import admin, product

CHROMIUM = os.environ.get("TDS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "console"


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSpace]:
    root = tmp_path_factory.mktemp("console")
    participants = [
        ("gov", Role.GOVERNMENT),
        ("a", Role.ENTERPRISE),
        ("alice", Role.INDIVIDUAL),
        ("aud", Role.AUDITOR),
    ]
    with LocalSpace.create(root, participants) as sp:
        sp.start_registry()
        sp.start_connector("gov")
        sp.start_connector("a")
        sp.start_connector("alice")
        sp.enrol("aud", "")
        sp.write_config("aud", "", sp.registry_address)
        for pid, grade in (("air-quality", "important"), ("bus-stops", "general")):
            admin(sp, "gov").AddProduct(
                admin_pb2.AddProductRequest(description=product(pid, grade), format="json"),
                timeout=10,
            )
        yield sp


def open_console(space: LocalSpace, who: str, **kwargs: Any) -> Console:
    console = Console(AdminBackend(space.configs[who]), **kwargs)
    console.start()
    return console


@pytest.fixture(scope="module")
def provider_console(space: LocalSpace) -> Iterator[Console]:
    console = open_console(space, "gov")
    yield console
    console.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM}: install Debian's chromium (.ci/run does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context (no cookies) and its page."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="zh-CN")
    page = context.new_page()
    yield page
    context.close()


def signed_in(page: Any, console: Console) -> Any:
    """``page`` after opening the console's printed URL (the one-time token)."""
    page.goto(console.url())
    return page


def screenshot(page: Any, name: str) -> None:
    """Keep what the page looked like (artifacts/console/, gitignored)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
