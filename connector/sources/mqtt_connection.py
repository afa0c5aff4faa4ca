"""An MQTT broker of the provider's configuration (``[sources.NAME]``), as data.

Kept apart from :mod:`connector.sources.mqtt` (the client and its replay buffer) so that
loading a configuration does not load paho-mqtt.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from connector.errors import ConfigError
from connector.sources.stream import check_limits, redacted_url

__all__ = ["MqttConnection"]

_SCHEMES = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True, repr=False)
class MqttConnection:
    """An MQTT broker the provider publishes from (``[sources.NAME]``).

    Lives only in the provider's configuration: products name it, never contain it.
    """

    name: str
    """The name products use (``source.connection``)."""
    url: str
    """``mqtt://host:port`` (``mqtts://`` for TLS with the system's CAs), with its
    credentials if the broker needs them, as for database sources:
    ``mqtt://user:password@host:port``; never shown (reprs and logs redact it)."""
    client_id: str | None = None
    """The MQTT client id prefix; each source adds its own suffix (default ``tds-NAME``)."""
    qos: int = 1
    """QoS of the subscription: 1 (at least once from the broker; the source's journal
    numbers a message the broker sends again only once). 0 trades losses for speed (the
    broker queues nothing at QoS 0 while the provider is down); 2 is accepted but, as
    paho keeps QoS 2 state in memory only, not safer across a provider restart than 1."""
    connect_timeout_seconds: float = 5.0
    """How long to wait for the broker before ``Unavailable`` at subscribe."""
    keepalive_seconds: int = 30
    reconnect_wait_seconds: int = 1
    """First pause before reconnecting after the broker went away (doubling up to 30 s)."""
    session_expiry_seconds: int = 3600
    """How long the broker keeps the session (and queues messages) while disconnected."""
    max_message_bytes: int = 1024 * 1024
    """Larger messages are skipped and counted, never delivered."""
    replay_messages: int = 10_000
    """Messages kept for subscriptions to resume within; older ones are evicted."""
    replay_bytes: int = 64 * 1024 * 1024
    """Payload bytes kept in the replay buffer at most (the memory bound)."""
    max_lag_messages: int = 5_000
    """How much further behind the newest message than it has been since it subscribed a
    reader may fall before its subscription is suspended (``SubscriptionLagging``); at most
    ``replay_messages``, so a reader that keeps up at first is told before anything it
    needs is evicted."""

    def __post_init__(self) -> None:
        where = f"sources.{self.name}"
        parts = urlsplit(self.url)
        if parts.scheme not in _SCHEMES or not parts.hostname:
            raise ConfigError(f"{where}.url must be mqtt://host:port or mqtts://host:port")
        if self.qos not in (0, 1, 2):
            raise ConfigError(f"{where}.qos must be 0, 1 or 2")
        if not self.connect_timeout_seconds > 0:
            raise ConfigError(f"{where}.connect_timeout_seconds must be positive")
        check_limits(
            where,
            keepalive_seconds=self.keepalive_seconds,
            reconnect_wait_seconds=self.reconnect_wait_seconds,
            session_expiry_seconds=self.session_expiry_seconds,
            max_message_bytes=self.max_message_bytes,
            replay_messages=self.replay_messages,
            replay_bytes=self.replay_bytes,
            max_lag_messages=self.max_lag_messages,
        )
        if self.max_lag_messages > self.replay_messages:
            raise ConfigError(
                f"{where}.max_lag_messages ({self.max_lag_messages}) must be at most "
                f"replay_messages ({self.replay_messages}): a reader is told it lags before "
                "what it needs is evicted"
            )

    def safe_url(self) -> str:
        """The URL with its credentials hidden."""
        return redacted_url(self.url)

    def __repr__(self) -> str:
        return f"MqttConnection(name={self.name!r}, url={redacted_url(self.url)!r})"
