"""A NATS server with JetStream of the provider's configuration (``[sources.NAME]``), as data.

Kept apart from :mod:`connector.sources.nats` (the client and its subscriptions) so that
loading a configuration does not load nats-py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from connector.errors import ConfigError
from connector.sources.stream import check_limits, redacted_url, url_credentials

__all__ = ["NatsConnection"]


@dataclass(frozen=True, repr=False)
class NatsConnection:
    """A NATS server with JetStream the provider publishes from (``[sources.NAME]``).

    Lives only in the provider's configuration: products name it, never contain it.
    """

    name: str
    """The name products use (``source.connection``)."""
    url: str
    """``nats://host:port`` (``tls://`` for TLS), with its credentials if the server needs
    them, as for database sources: ``nats://user:password@host:port`` or
    ``nats://token@host:port``; never shown (reprs and logs redact it)."""
    credentials_file: str | None = None
    """Instead: a NATS ``.creds`` file (JWT and NKey seed) for decentralised auth."""
    connect_timeout_seconds: float = 5.0
    """How long to wait for the server before ``Unavailable`` at subscribe."""
    reconnect_wait_seconds: float = 1.0
    """Pause between reconnection attempts after the server went away mid-stream."""
    max_message_bytes: int = 1024 * 1024
    """Larger messages are skipped and counted, never delivered."""
    buffer_messages: int = 256
    """Most messages fetched at once, ahead of the reader: the memory bound."""
    max_lag_messages: int = 100_000
    """How much further behind the newest message than it has been since it subscribed a
    reader may fall before the subscription is suspended (``SubscriptionLagging``)."""

    def __post_init__(self) -> None:
        where = f"sources.{self.name}"
        parts = urlsplit(self.url)
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            raise ConfigError(f"{where}.url must be nats://host:port or tls://host:port")
        if parts.username is not None and self.credentials_file:
            raise ConfigError(
                f"{where}: give credentials in the url or a credentials_file, not both"
            )
        for field, value in (
            ("connect_timeout_seconds", self.connect_timeout_seconds),
            ("reconnect_wait_seconds", self.reconnect_wait_seconds),
        ):
            if not value > 0:
                raise ConfigError(f"{where}.{field} must be positive")
        check_limits(
            where,
            max_message_bytes=self.max_message_bytes,
            buffer_messages=self.buffer_messages,
            max_lag_messages=self.max_lag_messages,
        )
        if self.max_lag_messages < self.buffer_messages:
            raise ConfigError(
                f"{where}.max_lag_messages ({self.max_lag_messages}) must be at least "
                f"buffer_messages ({self.buffer_messages}): a full buffer is not yet a lag"
            )

    def safe_url(self) -> str:
        """The URL with its credentials hidden."""
        return redacted_url(self.url)

    def __repr__(self) -> str:
        return f"NatsConnection(name={self.name!r}, url={redacted_url(self.url)!r})"

    def _connect_options(self) -> dict[str, Any]:
        """The server (without credentials) and the credentials, as nats.connect takes them."""
        server, (user, password) = url_credentials(self.url)
        options: dict[str, Any] = {"servers": [server]}
        if user is not None and password is not None:
            options["user"], options["password"] = user, password
        elif user is not None:
            options["token"] = user
        if self.credentials_file:
            options["user_credentials"] = self.credentials_file
        return options
