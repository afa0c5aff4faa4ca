"""The DSP sender (connector.dsp.delivery.DspSender): messages POSTed on the calling thread
over kept connections, checked against the peer's space certificate; a kept connection the
peer closed meanwhile is tried once more on a new one, a new one is not."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest

from connector.dsp.delivery import DspSender
from connector.dsp.server import tls_context
from connector.errors import Unavailable
from connector.identity.names import Role
from connector.identity.pki import init_space
from connector.rpc.channel import TlsIdentity


class Peer:
    """A TLS server as ``gov``'s binding would present itself, answering each request with
    200 and then, as told, keeping the connection or closing it without a word (as a
    server does to an idle kept connection), or closing without answering at all."""

    def __init__(self, pki: Pki, *, close_after_answer: bool, answer: bool = True) -> None:
        self.tls = tls_context(pki.gov_cert, pki.gov_key, pki.ca.read_bytes())
        self.close_after_answer = close_after_answer
        self.answer = answer
        self.connections = 0
        self.requests: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            try:
                with (
                    self.tls.wrap_socket(raw, server_side=True) as conn,
                    conn.makefile("rb") as reader,  # closed first: it holds the socket
                ):
                    self.exchange(conn, reader)
            except (ssl.SSLError, OSError):  # a client that refused this server, or left
                raw.close()

    def exchange(self, conn: ssl.SSLSocket, reader: BinaryIO) -> None:
        while True:
            line = reader.readline()
            if not line:
                return
            headers = {}
            while (header := reader.readline()) not in (b"\r\n", b""):
                name, _, value = header.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            reader.read(int(headers.get("content-length", "0")))
            self.requests.append(line.decode().split()[1])
            if not self.answer:
                return
            body = json.dumps({"n": len(self.requests)}).encode()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            if self.close_after_answer:
                return

    def close(self) -> None:
        self.sock.close()


@dataclass(frozen=True)
class Pki:
    ca: Path
    gov_cert: Path
    gov_key: Path
    a_cert: Path
    a_key: Path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    manifest = init_space(tmp_path, "city", [("gov", Role.GOVERNMENT), ("a", Role.ENTERPRISE)])
    gov, a = manifest.participant("gov"), manifest.participant("a")
    return Pki(
        tmp_path / "ca.pem",
        tmp_path / gov.tls_cert,
        tmp_path / gov.tls_key,
        tmp_path / a.tls_cert,
        tmp_path / a.tls_key,
    )


def sender(pki: Pki) -> DspSender:
    """a's sender."""
    identity = TlsIdentity(pki.ca.read_bytes(), pki.a_cert.read_bytes(), pki.a_key.read_bytes())
    return DspSender(identity=identity, space="city", token=lambda: "token", timeout=5)


def test_messages_share_a_kept_connection(pki: Pki) -> None:
    peer = Peer(pki, close_after_answer=False)
    out = sender(pki)
    try:
        url = f"https://127.0.0.1:{peer.port}/negotiations/x/events"
        assert [out.post(url, "gov", {"m": i}) for i in range(3)] == [
            (200, {"n": 1}),
            (200, {"n": 2}),
            (200, {"n": 3}),
        ]
        assert peer.connections == 1
    finally:
        out.close()
        peer.close()


def test_a_kept_connection_the_peer_closed_is_tried_once_more_anew(pki: Pki) -> None:
    peer = Peer(pki, close_after_answer=True)
    out = sender(pki)
    try:
        url = f"https://127.0.0.1:{peer.port}/negotiations/x/events"
        assert out.post(url, "gov", {"m": 1}) == (200, {"n": 1})
        # The kept connection is closed at the other end: the send fails on it, and goes
        # again on a new connection (the peer's inbox would drop a repeat).
        assert out.post(url, "gov", {"m": 2}) == (200, {"n": 2})
        assert peer.connections == 2 and len(peer.requests) == 2
    finally:
        out.close()
        peer.close()


def test_a_new_connection_closed_unanswered_is_not_tried_again(pki: Pki) -> None:
    peer = Peer(pki, close_after_answer=True, answer=False)
    out = sender(pki)
    try:
        url = f"https://127.0.0.1:{peer.port}/negotiations/x/events"
        with pytest.raises(Unavailable, match="gov's DSP binding"):
            out.post(url, "gov", {"m": 1})
        assert peer.connections == 1 and len(peer.requests) == 1
    finally:
        out.close()
        peer.close()


def test_a_server_certificate_of_another_participant_is_refused(pki: Pki) -> None:
    peer = Peer(pki, close_after_answer=False)  # presents gov's certificate
    out = sender(pki)
    try:
        url = f"https://127.0.0.1:{peer.port}/negotiations/x/events"
        with pytest.raises(Unavailable, match="certificate"):
            out.post(url, "a", {"m": 1})  # the message is for a, not gov
        assert peer.requests == []
    finally:
        out.close()
        peer.close()


def test_a_closed_sender_sends_nothing(pki: Pki) -> None:
    peer = Peer(pki, close_after_answer=False)
    out = sender(pki)
    out.close()
    try:
        with pytest.raises(Unavailable, match="stopping"):
            out.post(f"https://127.0.0.1:{peer.port}/x", "gov", {})
        assert peer.connections == 0
    finally:
        peer.close()
