"""``tds subscribe``: follow a stream product under an agreement, with a live line."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

from connector._proto.tds.v1 import stream_pb2, stream_pb2_grpc
from connector.cli.output import JSON_HELP, emit, say
from connector.cli.progress import human_bytes
from connector.config import load_config
from connector.errors import ConfigError
from connector.node.clients import admin_channel
from connector.rpc.channel import calling

__all__ = ["add_parser", "list_streams"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``tds subscribe``."""
    p = sub.add_parser(
        "subscribe",
        help="receive a stream product live under an agreement (Ctrl-C suspends)",
        description="Your connector subscribes to the provider's stream under the agreement, "
        "checks every record's sequence (a gap, repeat or reordering ends it as an "
        "integrity failure), signs a receipt for each window the provider proposes and "
        "keeps each countersigned window in its holdings as a JSON Lines segment. Ctrl-C "
        "(or SIGTERM) suspends the subscription; running the same command again resumes "
        "after the last countersigned window, with nothing lost or doubled.",
    )
    p.add_argument("--agreement", required=True, help="the agreement id (tds agreements list)")
    p.add_argument("--config", required=True, type=Path, help="your connector's config")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=run_subscribe)


def _summary(e: stream_pb2.FollowEvent) -> dict[str, Any]:
    return {
        "agreement": e.agreement_id,
        "event": e.event,
        "messages": e.messages,
        "bytes": e.bytes,
        "last_sequence": e.last_sequence,
        "kept_sequence": e.kept_sequence,
        "last_window": e.window,
        "detail": e.detail,
    }


class _LiveLine:
    """Messages/s, the last sequence and the last countersigned window, on stderr."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._start = time.monotonic()

    def show(self, e: stream_pb2.FollowEvent) -> None:
        if not self.enabled:
            return
        rate = e.messages / max(time.monotonic() - self._start, 1e-6)
        window = f"window #{e.window} countersigned" if e.window >= 0 else "no window yet"
        line = (
            f"\r{e.agreement_id[:20]}  {e.messages} messages ({rate:.0f}/s, "
            f"{human_bytes(e.bytes)})  sequence {e.last_sequence}  kept {e.kept_sequence}  "
            f"{window}"
        )
        print(line.ljust(110), end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr, flush=True)


def run_subscribe(args: argparse.Namespace) -> int:
    """Follow until Ctrl-C (suspended, exit 0) or the provider ends the stream."""
    if not args.agreement:
        raise ConfigError("give --agreement ID")
    channel = admin_channel(load_config(args.config))
    call = stream_pb2_grpc.StreamServiceStub(channel).Follow(
        stream_pb2.FollowRequest(agreement_id=args.agreement)
    )
    # Ctrl-C, and a service manager's SIGTERM, suspend cleanly. Set here because a shell
    # starts a background job with SIGINT ignored, and Python keeps it ignored then.
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.default_int_handler)
    live = _LiveLine(not args.json)
    last: stream_pb2.FollowEvent | None = None
    suspended = False
    try:
        with calling("your connector"):
            for event in call:
                if event.event == "started":
                    say(
                        f"Subscribed under {event.agreement_id} after sequence "
                        f"{event.kept_sequence}",
                        quiet=args.json,
                    )
                last = event
                live.show(event)
    except KeyboardInterrupt:
        # Cancelling the call makes the connector suspend the subscription (logged).
        call.cancel()  # type: ignore[no-untyped-call]
        suspended = True
    finally:
        live.close()
        channel.close()
    summary = _summary(last) if last is not None else {"agreement": args.agreement}
    summary["state"] = "SUSPENDED"
    kept = summary.get("kept_sequence", 0)
    human = (
        f"Suspended: kept up to sequence {kept}; run the same command to resume"
        if suspended
        else f"The provider ended the subscription; kept up to sequence {kept}"
    )
    emit(summary, human, as_json=args.json)
    return 0


def list_streams(config: Path) -> list[dict[str, Any]]:
    """The streams a connector receives (for ``tds data list``)."""
    channel = admin_channel(load_config(config))
    try:
        with calling("your connector"):
            resp = stream_pb2_grpc.StreamServiceStub(channel).ListStreams(
                stream_pb2.ListStreamsRequest(), timeout=30
            )
    finally:
        channel.close()
    return [
        {
            "kind": "stream",
            "agreement": s.agreement_id,
            "product": s.product_id,
            "provider": s.provider,
            "state": s.state,
            "reason": s.reason,
            "kept_sequence": s.kept_sequence,
            "windows": s.windows,
            "messages": s.messages,
            "bytes": s.bytes,
            "path": s.path,
            "deleted": s.deleted,
        }
        for s in resp.streams
    ]
