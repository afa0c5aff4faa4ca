"""Flood early warning (防汛), as ``tds demo`` runs it.

The meteorological bureau streams rain-gauge readings from NATS JetStream to the water
authority and the city-management bureau, each under a 24-hour emergency agreement, with
the names of the stations' keepers masked; mid-stream the bureau revokes the
city-management bureau's agreement and its delivery stops within a second (measured); the
water authority goes on to the last reading. The auditor reconciles every window receipt
afterwards (:mod:`connector.demo.run`). ``examples/flood-warning`` tells the same story
with the CLI.

The scenario needs a NATS server with JetStream; where there is none it is skipped,
saying why, and nothing of it counts as a pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from connector._proto.tds.v1 import admin_pb2
from connector.config import StreamConfig
from connector.demo.gauges import FIELDS, STATIONS, Gauges
from connector.demo.steps import Check, Following, Steps, named
from connector.errors import Unavailable
from connector.negotiation.agreement import parse_agreement
from connector.sources.nats_connection import NatsConnection

__all__ = [
    "BUREAU",
    "RECIPIENTS",
    "FloodWarning",
    "bureau_settings",
    "flood_warning",
]

BUREAU = "met-bureau"
RECIPIENTS = ("water", "city-mgmt")
PRODUCT = "rain-gauges"
OFFER = "emergency"
PURPOSE = "flood-warning"
CONNECTION = "gauges"

DAY_NS = 86_400 * 10**9
WINDOW_MESSAGES = 20
"""A window receipt every 20 readings (or half a second after a window's first)."""
RATE = 100
"""Readings a second, all stations together."""
BEFORE_REVOCATION = 60
"""Readings both bureaus keep before the city-management bureau's agreement is revoked."""
AFTER_REVOCATION = 60
"""Readings published after the revocation that the water authority must keep too."""
STOP_WITHIN_SECONDS = 1.0


def bureau_settings(nats_url: str) -> dict[str, Any]:
    """The bureau connector's configuration beyond ``tds init``'s: its NATS server as
    ``[sources.gauges]`` and a window receipt every 20 readings (``[stream]``)."""
    return {
        "sources": {CONNECTION: NatsConnection(CONNECTION, nats_url)},
        "stream": StreamConfig(window_messages=WINDOW_MESSAGES, window_seconds=0.5),
    }


@dataclass
class FloodWarning:
    """What the auditor must find afterwards: the windows each recipient had
    countersigned, or why the scenario was skipped."""

    windows: dict[str, int] = field(default_factory=dict)
    skipped: str = ""


def flood_warning(
    steps: Steps, nats_url: str, check: Check, narrate: Callable[[str], None]
) -> FloodWarning:
    """Live rain-gauge readings under emergency agreements, one revoked mid-stream."""
    s = "flood early warning"
    narrate("\nFlood early warning (防汛): live rain-gauge readings over NATS JetStream")
    try:
        gauges = Gauges(nats_url)
    except Unavailable as exc:
        check(
            s,
            "the bureau's rain gauges publish on NATS JetStream",
            "a JetStream subject of the demo's own",
            "",
            skipped=f"{exc} (start nats-server -js, or name a server with tds demo --nats URL)",
        )
        return FloodWarning(skipped=str(exc))
    try:
        return _stream(steps, gauges, check, narrate)
    finally:
        gauges.close()


def _stream(
    steps: Steps, gauges: Gauges, check: Check, narrate: Callable[[str], None]
) -> FloodWarning:
    s = "flood early warning"
    now = time.time_ns()
    published = steps.publish(
        BUREAU,
        {
            "id": PRODUCT,
            "title": "Rain gauge readings, live",
            "grade": "general",
            "domain": "weather",
            "tags": ["weather", "flood"],
            "fields": list(FIELDS),
            "source": {"kind": "stream", "connection": CONNECTION, "subject": gauges.subject},
            "offers": [
                {
                    "id": OFFER,
                    "purposes": [PURPOSE],
                    "valid_from_ns": now,
                    "valid_until_ns": now + DAY_NS,
                    "masks": {"operator": "hash"},
                }
            ],
        },
    )
    check(
        s,
        "met-bureau publishes its gauges' JetStream subject as a live feed, keepers masked",
        "published",
        published,
    )
    narrate(f"    {STATIONS} stations publish on {gauges.subject}")
    agreements: dict[str, str] = {}
    terms = []
    for who in RECIPIENTS:
        info = steps.request(who, BUREAU, PRODUCT, PURPOSE, offer=OFFER)
        agreements[who] = info.agreement_id
        hours = ""
        if info.agreement:
            a = parse_agreement(info.agreement)
            hours = f" for {(a.valid_until_ns - a.valid_from_ns) / 3.6e12:g} h"
        terms.append(f"{info.state}{hours}")
    check(
        s,
        "the water authority and the city-management bureau sign emergency agreements",
        "FINALIZED for 24 h, FINALIZED for 24 h",
        ", ".join(terms),
    )

    following = {who: steps.subscribe(who, agreements[who]) for who in RECIPIENTS}
    try:
        gauges.start(RATE)
        for f in following.values():
            f.wait_kept(BEFORE_REVOCATION)
        kept = {who: steps.stream_records(who, agreements[who]) for who in RECIPIENTS}
        check(
            s,
            f"both receive the readings live, kept in countersigned windows of {WINDOW_MESSAGES}",
            "; ".join(f"{who}: in sequence, each once" for who in RECIPIENTS),
            "; ".join(
                f"{who}: {_in_sequence(kept[who], BEFORE_REVOCATION, following[who])}"
                for who in RECIPIENTS
            ),
        )
        names = {who: {r["record"].get("operator", "") for r in kept[who]} for who in RECIPIENTS}
        check(
            s,
            "no keeper's name leaves the bureau; each bureau gets pseudonyms of its own",
            f"masked: {STATIONS} and {STATIONS} pseudonyms, 0 shared",
            _masked(names["water"], names["city-mgmt"]),
        )
        narrate(
            "    "
            + ", ".join(f"{who} keeps readings 1..{len(kept[who])}" for who in RECIPIENTS)
            + "".join(
                f"; water's first: {r['station']}, {r['mm_per_hour']} mm/h, "
                f"kept by {r['operator'][:12]}…"
                for r in [row["record"] for row in kept["water"][:1]]
            )
        )

        city = following["city-mgmt"]
        revoked_at = time.monotonic()
        steps.admin(BUREAU).RevokeAgreement(
            admin_pb2.RevokeAgreementRequest(
                agreement_id=agreements["city-mgmt"],
                reason="emergency role handed over to the water authority",
            ),
            timeout=10,
        )
        ended = city.wait_end(5)
        took = city.ended_at - revoked_at if ended else float("inf")
        how = city.ended()
        when = "within 1 s" if took < STOP_WITHIN_SECONDS else f"after {took:.2f} s"
        check(
            s,
            "met-bureau revokes city-mgmt's agreement mid-stream: its delivery stops",
            "PERMISSION_DENIED: agreement_revoked, within 1 s",
            f"{how.split(':', 1)[0]}: {named(how, 'agreement_revoked')}, {when}",
            measured=f"stopped {took:.2f} s after the revocation" if ended else "",
        )
        logged = {
            kind: [
                e
                for e in steps.log_entries(BUREAU, kind)
                if e["data"]["agreement"] == agreements["city-mgmt"]
            ]
            for kind in ("agreement.revoked", "stream.stopped")
        }
        if all(logged.values()):
            revoked, stopped = logged["agreement.revoked"][0], logged["stream.stopped"][-1]
            narrate(
                f"    the bureau's log: stream.stopped {stopped['time_ms'] - revoked['time_ms']} "
                f"ms after agreement.revoked, {stopped['data']['sent']} readings sent to "
                "city-mgmt in all"
            )
        held = steps.stream_holding("city-mgmt", agreements["city-mgmt"])
        deleted = [
            e["data"]["reason"]
            for e in steps.log_entries("city-mgmt", "stream.deleted")
            if e["data"]["agreement"] == agreements["city-mgmt"]
        ]
        check(
            s,
            "city-mgmt deletes the readings it held and logs the deletion",
            "deleted: agreement_revoked",
            f"deleted: {named(deleted[0], 'agreement_revoked')}"
            if held.deleted and deleted
            else f"kept ({held.state or 'no holding'})",
        )

        water = following["water"]
        water.wait_kept(gauges.published + AFTER_REVOCATION)
        total = gauges.stop()
        water.wait_kept(total)  # the last window closes half a second after its first
        water.close()
        state = _settled(steps, "water", agreements["water"])
        rows = steps.stream_records("water", agreements["water"])
        check(
            s,
            "the water authority keeps receiving to the last reading, then leaves (suspended)",
            "every reading, each once; SUSPENDED",
            f"{_in_sequence(rows, total, water, every=True)}; {state}",
        )
        narrate(
            f"    water keeps {len(rows)} of {total} readings"
            + (f" ({gauges.failure})" if gauges.failure else "")
        )
        return FloodWarning(
            windows={
                who: int(steps.stream_holding(who, agreements[who]).windows) for who in RECIPIENTS
            }
        )
    finally:
        gauges.stop()
        for f in following.values():
            f.close()


def _in_sequence(
    rows: list[dict[str, Any]], least: int, following: Following, *, every: bool = False
) -> str:
    """Whether ``rows`` are sequences 1, 2, 3, … each once, at least ``least`` of them
    (exactly ``least`` with ``every``); else what is wrong."""
    sequences = [r["sequence"] for r in rows]
    if sequences != list(range(1, len(sequences) + 1)):
        return f"out of sequence ({sequences[:5]}…)"
    if len(sequences) < least or (every and len(sequences) != least):
        return f"{len(sequences)} of {least} kept ({following.ended()})"
    return "every reading, each once" if every else "in sequence, each once"


def _masked(water: set[str], city: set[str]) -> str:
    """How the keepers' names arrived at the two bureaus."""
    names = water | city
    if any(not (len(n) == 64 and set(n) <= set("0123456789abcdef")) for n in names):
        return "NOT masked: " + ", ".join(sorted(names)[:3])
    return f"masked: {len(water)} and {len(city)} pseudonyms, {len(water & city)} shared"


def _settled(steps: Steps, consumer: str, agreement_id: str, timeout: float = 5.0) -> str:
    """The stream's state at the consumer once it is no longer STARTED."""
    deadline = time.monotonic() + timeout
    state = steps.stream_holding(consumer, agreement_id).state
    while state == "STARTED" and time.monotonic() < deadline:
        time.sleep(0.05)
        state = steps.stream_holding(consumer, agreement_id).state
    return state
