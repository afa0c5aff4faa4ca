"""A test double of OPA's REST API that evaluates with a real Rego engine (regopy).

It implements what tds uses, as OPA does: ``GET /health``, ``GET|PUT|DELETE
/v1/policies/{id}``, ``PUT /v1/data/{path}`` and ``POST /v1/data/{path}`` with
``{"input": ...}`` answering ``{"result": ...}`` (no ``result`` when undefined). Policies
are compiled on upload and refused with OPA's 400 error shape when they do not compile.

``POST /_double/fault`` (not an OPA endpoint) makes it misbehave for fail-closed tests:
``{"mode": "error500" | "slow" | "no_result" | "garbage" | "unhealthy" | "none",
"delay": seconds}``.

Run: ``python -m tests.support.opa_double [--port 0]``; it prints ``listening on PORT``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import regopy


class State:
    """Policies, data and the current fault, shared by all requests."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.policies: dict[str, str] = {}
        self.data: dict[str, Any] = {}
        self.fault: dict[str, Any] = {"mode": "none"}
        self.compiled: regopy.Interpreter | None = None

    def current(self) -> regopy.Interpreter:
        """The interpreter for the policies and data in force (compiled once per change)."""
        if self.compiled is None:
            self.compiled = self.interpreter(self.policies)
        return self.compiled

    def interpreter(self, policies: dict[str, str]) -> regopy.Interpreter:
        rego = regopy.Interpreter()
        rego.strict_built_in_errors = True
        for pid, source in policies.items():
            rego.add_module(f"{pid}.rego", source)
        if self.data:
            rego.add_data(self.data)
        return rego


STATE = State()


class Handler(BaseHTTPRequestHandler):
    """OPA's REST API, the parts tds uses."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any = None, raw: bytes | None = None) -> None:
        payload = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:
        if self.path.startswith("/health"):
            unhealthy = STATE.fault.get("mode") == "unhealthy"
            self._send(500 if unhealthy else 200, {} if not unhealthy else {"error": "down"})
        elif self.path.rstrip("/") == "/v1/policies":
            with STATE.lock:
                result = [{"id": pid, "raw": src} for pid, src in STATE.policies.items()]
            self._send(200, {"result": result})
        elif self.path.startswith("/v1/policies/"):
            pid = self.path.removeprefix("/v1/policies/")
            with STATE.lock:
                src = STATE.policies.get(pid)
            if src is None:
                self._send(
                    404,
                    {
                        "code": "resource_not_found",
                        "message": f"storage_not_found_error: policy id {pid!r}",
                    },
                )
            else:
                self._send(200, {"result": {"id": pid, "raw": src}})
        else:
            self._send(404, {"code": "resource_not_found", "message": "not found"})

    def do_PUT(self) -> None:
        if self.path.startswith("/v1/policies/"):
            pid = self.path.removeprefix("/v1/policies/").split("?")[0]
            source = self._body().decode()
            with STATE.lock:
                candidate = {**STATE.policies, pid: source}
                try:
                    STATE.interpreter(candidate)
                except regopy.RegoError as exc:
                    self._send(
                        400,
                        {
                            "code": "invalid_parameter",
                            "message": "error(s) occurred while compiling module(s)",
                            "errors": [{"code": "rego_parse_error", "message": str(exc)[:500]}],
                        },
                    )
                    return
                STATE.policies = candidate
                STATE.compiled = None
            self._send(200, {})
        elif self.path.startswith("/v1/data/"):
            parts = [p for p in self.path.removeprefix("/v1/data/").split("/") if p]
            value = json.loads(self._body() or b"{}")
            with STATE.lock:
                node = STATE.data
                for part in parts[:-1]:
                    node = node.setdefault(part, {})
                if parts:
                    node[parts[-1]] = value
                else:
                    STATE.data = value
                STATE.compiled = None
            self._send(204, raw=b"")
        else:
            self._send(404, {"code": "resource_not_found", "message": "not found"})

    def do_DELETE(self) -> None:
        pid = self.path.removeprefix("/v1/policies/")
        with STATE.lock:
            found = STATE.policies.pop(pid, None)
            STATE.compiled = None
        self._send(200 if found is not None else 404, {})

    def do_POST(self) -> None:
        if self.path == "/_double/fault":
            STATE.fault = json.loads(self._body() or b"{}")
            self._send(200, {})
            return
        if not self.path.startswith("/v1/data"):
            self._send(404, {"code": "resource_not_found", "message": "not found"})
            return
        raw = self._body()  # read it first: keep-alive needs the stream at the next request
        fault = STATE.fault
        mode = fault.get("mode", "none")
        if mode == "slow":
            time.sleep(float(fault.get("delay", 5)))
        if mode == "error500":
            self._send(500, {"code": "internal_error", "message": "injected failure"})
            return
        body = json.loads(raw or b"{}")
        if mode == "no_result":
            self._send(200, {})
            return
        if mode == "garbage":
            self._send(200, {"result": 42})
            return
        path = self.path.removeprefix("/v1/data").split("?")[0].strip("/")
        query = "data" + "".join(f".{p}" for p in path.split("/") if p)
        with STATE.lock:
            try:
                rego = STATE.current()
                # Through rego-cpp's own JSON reader, as OPA reads the JSON it is sent.
                rego.set_input_term(json.dumps(body.get("input", {}), ensure_ascii=False))
                output = rego.query(query)
            except regopy.RegoError as exc:
                self._send(500, {"code": "internal_error", "message": str(exc)[:500]})
                return
        if not output.ok():
            self._send(500, {"code": "internal_error", "message": str(output)[:500]})
        elif not output.results or not output.results[0].expressions:
            self._send(200, {})
        else:
            self._send(200, {"result": output.results[0].expressions[0]})


@contextlib.contextmanager
def running() -> Iterator[str]:
    """A fresh double in its own process, as an OPA sidecar runs; its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.opa_double", "--port", "0"],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("listening on"), line
    try:
        yield f"http://127.0.0.1:{line.split()[-1]}"
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


def set_fault(url: str, mode: str, delay: float = 0) -> None:
    """Make the double at ``url`` misbehave (``mode`` as in the module docstring)."""
    import requests

    requests.post(f"{url}/_double/fault", json={"mode": mode, "delay": delay}, timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description="OPA REST API test double")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
