"""``tds subscribe``: follow a stream product under an agreement, with a live line."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from connector._proto.tds.v1 import stream_pb2, stream_pb2_grpc
from connector.cli.output import JSON_HELP, emit, say
from connector.cli.progress import human_bytes
from connector.config import load_config
from connector.errors import ConfigError, ConnectorError
from connector.node.clients import admin_channel
from connector.rpc.channel import calling

__all__ = ["add_parser", "list_streams", "stop_stream"]


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
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="also write each countersigned window's JSON Lines segment to DIR "
        "(00000000.jsonl, …; segments already there are kept); the connector's holding "
        "stays the evidence copy",
    )
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


def writable_directory(directory: Path) -> Path:
    """``directory``, created if need be, once a file could be written in it; otherwise a
    ``ConfigError`` saying why (checked by writing, not by permission bits, which do not
    tell for every user or file system)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise ConfigError(
            f"--out {directory}: not a directory you can write to ({exc.strerror or exc}); "
            "give one that is"
        ) from None
    return directory


class _SegmentCopier:
    """Copies a holding's committed segments to a directory as they are countersigned."""

    def __init__(self, stub: stream_pb2_grpc.StreamServiceStub, agreement: str, out: Path):
        self._stub = stub
        self._agreement = agreement
        self._out = out
        self.next_window = 0
        while (out / f"{self.next_window:08d}.jsonl").exists():
            self.next_window += 1  # copied by an earlier run

    def sync(self) -> None:
        """Copy every segment committed since the last copy (each via a temporary file)."""
        part: Any = None
        with calling("your connector"):
            for chunk in self._stub.ReadSegments(
                stream_pb2.ReadSegmentsRequest(
                    agreement_id=self._agreement, from_window=self.next_window
                ),
                timeout=60,
            ):
                if part is None:
                    tmp = self._out / f".{chunk.window:08d}.jsonl.part"
                    part = tmp.open("wb")
                part.write(chunk.data)
                if chunk.last:
                    part.close()
                    part = None
                    tmp.replace(self._out / f"{chunk.window:08d}.jsonl")
                    self.next_window = chunk.window + 1


def _last_copy(copier: _SegmentCopier) -> None:
    """Copy the windows countersigned as the subscription ended; a failure is said, not
    raised over how the subscription ended."""
    try:
        copier.sync()
    except (ConnectorError, OSError) as exc:
        print(f"warning: the last segments were not copied to --out: {exc}", file=sys.stderr)


def run_subscribe(args: argparse.Namespace) -> int:
    """Follow until Ctrl-C (suspended, exit 0) or the provider ends the stream."""
    if not args.agreement:
        raise ConfigError("give --agreement ID")
    out = writable_directory(args.out) if args.out is not None else None
    channel = admin_channel(load_config(args.config))
    stub = stream_pb2_grpc.StreamServiceStub(channel)
    copier = _SegmentCopier(stub, args.agreement, out) if out is not None else None
    call = stub.Follow(stream_pb2.FollowRequest(agreement_id=args.agreement))
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
                if copier is not None and event.event in ("started", "window"):
                    copier.sync()
    except KeyboardInterrupt:
        # Cancelling the call makes the connector suspend the subscription (logged).
        call.cancel()  # type: ignore[no-untyped-call]
        suspended = True
    finally:
        live.close()
        if copier is not None:
            _last_copy(copier)
        channel.close()
    summary = _summary(last) if last is not None else {"agreement": args.agreement}
    summary["state"] = "SUSPENDED"
    if copier is not None:
        summary["out"] = str(out)
        summary["segments"] = copier.next_window
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


def stop_stream(args: argparse.Namespace) -> int:
    """``tds data stop AGREEMENT``: end the stream under it, from whichever side we are."""
    channel = admin_channel(load_config(args.config))
    try:
        with calling("your connector"):
            r = stream_pb2_grpc.StreamServiceStub(channel).StopStream(
                stream_pb2.StopStreamRequest(agreement_id=args.transfer, reason=args.reason),
                timeout=30,
            )
    finally:
        channel.close()
    human = f"Stream of agreement {r.agreement_id} is {r.state} ({r.reason})"
    if r.role == "consumer" and not r.counterparty_told:
        human += "; the provider could not be told (this connector will not subscribe again)"
    summary = {
        "kind": "stream",
        "agreement": r.agreement_id,
        "role": r.role,
        "state": r.state,
        "reason": r.reason,
        "counterparty_told": r.counterparty_told,
    }
    emit(summary, human, as_json=args.json)
    return 0
