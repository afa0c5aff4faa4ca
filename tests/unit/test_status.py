"""Failed calls become clear tds errors."""

from __future__ import annotations

import grpc

from connector.errors import Unavailable
from connector.rpc.status import error_for_status


def test_unreachable_peer_gets_a_clear_message() -> None:
    class Refused(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.UNAVAILABLE

        def details(self) -> str:
            return (
                "failed to connect to all addresses; last error: UNKNOWN: "
                "ipv4:127.0.0.1:7001: Failed to connect to remote host: Connection refused"
            )

    err = error_for_status(Refused(), "city-gov")
    assert isinstance(err, Unavailable)
    assert str(err).startswith("city-gov at 127.0.0.1:7001 is not reachable")


class _Failed(grpc.RpcError):
    def __init__(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return self._details


def test_a_peer_killed_during_a_call_is_not_blamed_on_certificates() -> None:
    """Issue 18 finding 11: a consumer killed during a push was reported as a peer that
    refused our certificate. The details are grpcio 1.85's, recorded over mutual TLS with
    the peer's process killed (SIGKILL) in the middle of a stream, and with a server that
    refused a client without a certificate in the handshake."""
    for killed in (
        "Stream removed (Socket closed)",
        "Stream removed (recvmsg:Connection reset by peer (104))",
    ):
        err = error_for_status(_Failed(killed), "ent-a")
        assert isinstance(err, Unavailable)
        assert str(err).startswith("the connection to ent-a broke during the call"), err
        assert "certificate" not in str(err) and "handshake" not in str(err)
    refused = error_for_status(
        _Failed(
            "failed to connect to all addresses; last error: UNAVAILABLE: "
            "ipv4:127.0.0.1:34269: Socket closed"
        ),
        "ent-a",
    )
    assert "it may have refused this certificate" in str(refused)
