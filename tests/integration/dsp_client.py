"""A Dataspace Protocol 2025-1 client written from the specification's HTTPS bindings, to
drive a connector's DSP binding as a connector of another make would (aiohttp client)."""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

from connector.demo.space import LocalSpace
from connector.identity.names import participant_dns_name
from tests.integration.test_authentication import ca_pem, own_token, pem


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
    """Calls ``target``'s DSP binding as ``member`` (its certificate and token, unless told
    otherwise)."""

    space: LocalSpace
    member: str
    target: str
    certificate: bool = True
    token: str | None = ""

    def _ssl(self, tmp: Any) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=ca_pem(self.space).decode())
        if self.certificate:
            cert, key = tmp / "cert.pem", tmp / "key.pem"
            cert.write_bytes(pem(self.space, self.member, "tls_cert"))
            key.write_bytes(pem(self.space, self.member, "tls_key"))
            context.load_cert_chain(str(cert), str(key))
        return context

    @property
    def base(self) -> str:
        binding = self.space.nodes[self.target].dsp
        assert binding is not None
        return binding.base_url

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """One request (``path`` relative to the binding's base, or a whole URL)."""
        import tempfile
        from pathlib import Path

        url = path if path.startswith("https://") else self.base + path
        sent = dict(headers or {})
        if self.token == "":
            sent["Authorization"] = f"Bearer {own_token(self.space, self.member)}"
        elif self.token is not None:
            sent["Authorization"] = self.token
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            sent.setdefault("Content-Type", "application/json")

        async def run() -> Answer:
            with tempfile.TemporaryDirectory() as tmp:
                context = self._ssl(Path(tmp))
            async with (
                aiohttp.ClientSession() as session,
                session.request(
                    method,
                    url,
                    data=data,
                    headers=sent,
                    ssl=context,
                    server_hostname=participant_dns_name(self.space.space, self.target),
                ) as response,
            ):
                text = await response.text()
                return Answer(
                    response.status,
                    json.loads(text) if text else None,
                    {k: response.headers.getall(k) for k in set(response.headers.keys())},
                )

        return asyncio.run(run())
