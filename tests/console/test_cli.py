"""``tds console`` as a user runs it: the URL it prints opens the console; off loopback it
refuses, saying why."""

from __future__ import annotations

import http.cookiejar
import signal
import subprocess
import sys
import urllib.request

from connector.demo.space import LocalSpace

TDS = [sys.executable, "-m", "connector"]


def test_the_printed_url_opens_the_console_once(space: LocalSpace) -> None:
    proc = subprocess.Popen(
        [*TDS, "console", "--config", str(space.root / "gov.toml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and "/?token=" in url, url
        opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        with opener.open(url, timeout=30) as resp:
            page = resp.read().decode()
        assert resp.url.endswith("/products") and "air-quality" in page
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "Traceback" not in err


def test_sigterm_stops_it_cleanly(space: LocalSpace) -> None:
    proc = subprocess.Popen(
        [*TDS, "console", "--config", str(space.root / "gov.toml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert "/?token=" in proc.stdout.readline()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "console stopped" in err, err


def test_a_non_loopback_address_is_refused_with_why(space: LocalSpace) -> None:
    result = subprocess.run(
        [*TDS, "console", "--config", str(space.root / "gov.toml"), "--listen", "0.0.0.0:0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "loopback only" in result.stderr and "--insecure-listen" in result.stderr
    assert "Traceback" not in result.stderr and not result.stdout


def test_session_lifetimes_must_make_sense(space: LocalSpace) -> None:
    config = str(space.root / "gov.toml")
    for flags in (["--idle-minutes", "0"], ["--idle-minutes", "90", "--session-hours", "1"]):
        result = subprocess.run(
            [*TDS, "console", "--config", config, *flags],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 1, result.stderr
        assert "--idle-minutes must be above 0 and within --session-hours" in result.stderr
        assert "Traceback" not in result.stderr and not result.stdout
