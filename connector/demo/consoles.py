"""What ``tds demo --keep-running`` prints so a person can open a console for each role
and do the demo's approval, revocation, consent withdrawal and audit by clicking.

The scenarios leave nothing waiting (every request is decided, alice's consent is
withdrawn), so the guide also gives the two commands that make something to click on: a
request from ent-a for city-gov's important traffic-flow, within ent-a's grant (it waits
for approval), and a new consent of alice's. The browser test runs exactly these lines
(``tests/console/test_demo_walkthrough.py``), so what the demo prints keeps working.
"""

from __future__ import annotations

import shlex
from pathlib import Path

__all__ = ["CONSOLES", "console_commands", "guide", "setup_commands"]

CONSOLES: list[tuple[str, str]] = [
    ("city-gov", "数据官 / data officer: 待审批 approve, 数字合约 revoke"),
    ("alice", "个人 / individual: 个人信息同意 withdraw a consent"),
    ("auditor", "审计 / auditor: 审计日志 verify an entry in your browser, 回执对账 reconcile"),
    ("ent-a", "消费方 / consumer: 持有数据 holdings, 传输回执 receipts"),
]
"""Whose console, and what its person does there (the operator's comes first, added by
``console_commands`` since its id is the space's)."""


def _tds(*argv: str | Path) -> str:
    return shlex.join(["tds", *(str(a) for a in argv)])


def console_commands(root: Path, operator_id: str) -> list[tuple[str, str, str]]:
    """``(participant, what they do, command)`` for each console of the demo's space."""
    operator = (operator_id, "运营方 / operator: 参与方 participants, 授权运营 grants")
    return [
        (who, does, _tds("console", "--config", root / f"{who}.toml"))
        for who, does in [operator, *CONSOLES]
    ]


def setup_commands(root: Path, year: int) -> list[str]:
    """Something to click on: a request waiting for city-gov, a consent alice can withdraw."""
    return [
        _tds(
            "negotiate",
            "--config",
            root / "ent-a.toml",
            "--provider",
            "city-gov",
            "--product",
            "traffic-flow",
            "--offer",
            "standard",
            "--purpose",
            "traffic-analytics",
        ),
        _tds(
            "consent",
            "grant",
            "--config",
            root / "alice.toml",
            "--recipient",
            "hospital",
            "--purposes",
            "treatment",
            "--method",
            "review by the treating physician; no onward transfer",
            "--categories",
            "health",
            "--expires",
            f"{year + 1}-12-31",
        ),
    ]


def guide(root: Path, operator_id: str, year: int) -> str:
    """The console part of what ``--keep-running`` prints."""
    width = max(len(who) for who, _, _ in console_commands(root, operator_id))
    lines = ["Open a console for each participant (each prints its own URL with a one-time token):"]
    for who, does, command in console_commands(root, operator_id):
        lines += [f"  {who:<{width}}  {does}", f"  {'':<{width}}    {command}"]
    lines.append("Something to click on — a request waiting for city-gov, a consent to withdraw:")
    lines += [f"  {command}" for command in setup_commands(root, year)]
    return "\n".join(lines)
