"""The registered-host look-ups the DSP binding checks every address against: each
participant's asked at most once a second, a failure never remembered."""

from __future__ import annotations

import pytest

from connector.dsp.server import RegisteredHosts
from connector.errors import PermissionDenied, Unavailable


class Directory:
    def __init__(self) -> None:
        self.hosts = {"a": "10.0.0.1", "b": "10.0.0.2"}
        self.asked: list[str] = []
        self.failure: Exception | None = None

    def __call__(self, participant: str) -> str:
        self.asked.append(participant)
        if self.failure is not None:
            raise self.failure
        return self.hosts[participant]


def test_a_host_is_looked_up_once_within_the_ttl_and_again_after() -> None:
    now = [100.0]
    directory = Directory()
    hosts = RegisteredHosts(directory, ttl=1.0, clock=lambda: now[0])
    assert hosts("a") == "10.0.0.1"
    directory.hosts["a"] = "10.0.0.9"  # re-registered elsewhere
    now[0] += 0.5
    assert hosts("a") == "10.0.0.1"
    assert hosts("b") == "10.0.0.2"  # per participant
    now[0] += 0.6
    assert hosts("a") == "10.0.0.9"  # a second on: the directory is asked again
    assert directory.asked == ["a", "b", "a"]


@pytest.mark.parametrize(
    "failure", [Unavailable("registry unreachable"), PermissionDenied("a is revoked")]
)
def test_a_failed_look_up_is_not_remembered(failure: Exception) -> None:
    now = [100.0]
    directory = Directory()
    hosts = RegisteredHosts(directory, ttl=1.0, clock=lambda: now[0])
    directory.failure = failure
    for _ in range(2):
        with pytest.raises(type(failure)):
            hosts("a")
    directory.failure = None
    assert hosts("a") == "10.0.0.1"
    assert directory.asked == ["a", "a", "a"]
