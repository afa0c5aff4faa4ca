"""Countersignatures owed to providers: sent in the background, retried while the provider
cannot be reached, not retried once it refused them for good."""

from __future__ import annotations

import threading

from connector.compute.client import Confirmations
from connector.errors import PreconditionFailed, Unavailable


class Provider:
    """Answers ``Unavailable`` ``down`` times, then takes the confirmation."""

    def __init__(self, down: int = 0, refuse: bool = False) -> None:
        self.down, self.refuse = down, refuse
        self.calls: list[str] = []
        self.taken = threading.Event()

    def confirm(self, computation: str) -> None:
        self.calls.append(computation)
        if self.refuse:
            raise PreconditionFailed(f"computation {computation} is already confirmed")
        if len(self.calls) <= self.down:
            raise Unavailable("the provider cannot be reached")
        self.taken.set()


def test_an_unreachable_provider_gets_the_confirmation_once_it_is_back() -> None:
    provider = Provider(down=3)
    confirmations = Confirmations(provider.confirm, base_delay=0.01, max_delay=0.05)
    try:
        confirmations.owe("cp-1")
        confirmations.owe("cp-1")  # owed twice: sent once
        assert provider.taken.wait(5)
        assert provider.calls == ["cp-1"] * 4
    finally:
        confirmations.stop()


def test_a_refusal_for_good_is_not_retried() -> None:
    provider = Provider(refuse=True)
    confirmations = Confirmations(provider.confirm, base_delay=0.01)
    try:
        confirmations.owe("cp-1")
        confirmations.owe("cp-2")
        deadline = threading.Event()
        while len(provider.calls) < 2 and not deadline.wait(0.01):
            pass
        deadline.wait(0.2)  # time for retries, were there any
        assert sorted(provider.calls) == ["cp-1", "cp-2"]
        assert confirmations.pending() == 0
    finally:
        confirmations.stop()


def test_retries_stop_after_max_attempts() -> None:
    provider = Provider(down=100)
    confirmations = Confirmations(
        provider.confirm, base_delay=0.001, max_delay=0.002, max_attempts=4
    )
    try:
        confirmations.owe("cp-1")
        idle = threading.Event()
        for _ in range(500):
            if len(provider.calls) >= 4 and confirmations.pending() == 0:
                break
            idle.wait(0.01)
        idle.wait(0.1)
        assert provider.calls == ["cp-1"] * 4  # owed still (the store says so at restart)
    finally:
        confirmations.stop()
