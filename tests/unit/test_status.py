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
