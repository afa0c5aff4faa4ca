"""A Dataspace Protocol 2025-1 client written from the specification's HTTPS bindings, to
drive a connector's DSP binding as a connector of another make would (aiohttp client).

What it presents is what docs/dsp.md asks of a foreign connector: a TLS client certificate
issued by the space CA and ``Authorization: Bearer <membership token>`` from the registry.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, list[str]]

    def links(self) -> dict[str, str]:
        """``Link`` header targets by relation (RFC 8288, as the catalog binding uses it)."""
        found: dict[str, str] = {}
        for value in self.headers.get("Link", []):
            for part in value.split(","):
                target, _, params = part.strip().partition(";")
                rel = params.strip().removeprefix("rel=").strip('"')
                found[rel] = target.strip().strip("<>")
        return found


@dataclass
class DspClient:
    """Calls one DSP binding at ``base`` (an https URL)."""

    base: str
    server_name: str
    """The DNS name the server's certificate carries (the connector's, in the space)."""
    ca_pem: bytes
    cert_pem: bytes | None = None
    """The client certificate (None: present none)."""
    key_pem: bytes | None = None
    authorization: Callable[[], str | None] = lambda: None
    """The ``Authorization`` value to send (None: send none)."""

    def ssl_context(self) -> ssl.SSLContext:
        """TLS as this client connects: the space CA, and its certificate if any."""
        context = ssl.create_default_context(cadata=self.ca_pem.decode())
        if self.cert_pem is not None and self.key_pem is not None:
            with tempfile.TemporaryDirectory() as tmp:
                cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
                cert.write_bytes(self.cert_pem)
                key.write_bytes(self.key_pem)
                context.load_cert_chain(str(cert), str(key))
        return context

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
    ) -> Answer:
        """One request (``path`` relative to the binding's base, or a whole URL)."""
        url = path if path.startswith("https://") else self.base + path
        headers: dict[str, str] = {}
        authorization = self.authorization()
        if authorization is not None:
            headers["Authorization"] = authorization
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            headers["Content-Type"] = "application/json"

        async def run() -> Answer:
            async with (
                aiohttp.ClientSession() as session,
                session.request(
                    method,
                    url,
                    data=data,
                    headers=headers,
                    ssl=self.ssl_context(),
                    server_hostname=self.server_name,
                ) as response,
            ):
                text = await response.text()
                return Answer(
                    response.status,
                    json.loads(text) if text else None,
                    {k: response.headers.getall(k) for k in set(response.headers.keys())},
                )

        return asyncio.run(run())
