"""The provider's named source connections: ``[sources.NAME]`` tables of its configuration.

Each table names one place products read from, and its ``url`` scheme says what kind of
place it is::

    [sources.orders]
    url = "postgresql://reader:secret@db.internal:5432/shop"
    pool_size = 4
    statement_timeout_seconds = 30

``postgresql://`` and ``mariadb://`` (``mysql://`` too) are databases
(:class:`~connector.sources.sql.SqlConnection`; its fields are the keys a table may have);
``nats://`` (``tls://``) is a NATS server with JetStream
(:class:`~connector.sources.nats.NatsConnection`) and ``mqtt://`` (``mqtts://``) an MQTT
broker (:class:`~connector.sources.mqtt.MqttConnection`), read by ``stream`` products.
:data:`SCHEMES` maps each URL scheme to the function that builds its connection, so a new
kind of source (a message broker, say) is one more entry here, not a change to the
configuration loader.

Errors name the field and never repeat the URL: it carries the credentials.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

from connector.errors import ConfigError
from connector.sources.mqtt_connection import MqttConnection
from connector.sources.nats_connection import NatsConnection
from connector.sources.sql_connection import SqlConnection

__all__ = ["SCHEMES", "SourceConnection", "parse_connections", "render_connection"]

SourceConnection = SqlConnection | NatsConnection | MqttConnection
"""Any connection a ``[sources.NAME]`` table configures."""

_STRING_FIELDS = frozenset({"url", "credentials_file", "client_id"})
"""Fields given as strings; every other field is a number."""

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


def _field_values(cls: type, name: str, table: Mapping[str, Any]) -> dict[str, Any]:
    """``table``'s keys checked against ``cls``'s fields (``name`` and ``url`` aside)."""
    where = f"sources.{name}"
    fields = {f.name for f in dataclasses.fields(cls)} - {"name"}
    unknown = sorted(set(table) - fields)
    if unknown:
        raise ConfigError(
            f"unknown field {where}.{unknown[0]}; valid fields: {', '.join(sorted(fields))}"
        )
    values = dict(table)
    for key, value in values.items():
        if key in _STRING_FIELDS:
            if not isinstance(value, str):
                raise ConfigError(f"{where}.{key} must be a string")
            continue
        # TOML gives int, float, bool and str; the connection checks ranges, here the type.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}.{key} must be a number")
    return values


def _sql(name: str, table: Mapping[str, Any]) -> SqlConnection:
    return SqlConnection(name=name, **_field_values(SqlConnection, name, table))


def _nats(name: str, table: Mapping[str, Any]) -> NatsConnection:
    return NatsConnection(name=name, **_field_values(NatsConnection, name, table))


def _mqtt(name: str, table: Mapping[str, Any]) -> MqttConnection:
    return MqttConnection(name=name, **_field_values(MqttConnection, name, table))


SCHEMES: dict[str, Callable[[str, Mapping[str, Any]], SourceConnection]] = {
    "postgresql": _sql,
    "mysql": _sql,
    "mariadb": _sql,
    "nats": _nats,
    "tls": _nats,
    "mqtt": _mqtt,
    "mqtts": _mqtt,
}
"""URL scheme (before any ``+driver``) -> the builder of its connection."""


def _scheme(name: str, url: Any) -> str:
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(
            f"sources.{name}.url is required: a URL such as postgresql://user:password@host/db, "
            "mariadb://user:password@host/db, nats://host:4222 or mqtt://host:1883"
        )
    return url.split("://", 1)[0].split("+", 1)[0].lower()


def parse_connections(raw: Any) -> dict[str, SourceConnection]:
    """The ``[sources]`` table of a configuration, each entry built by its URL's scheme."""
    if not isinstance(raw, dict):
        raise ConfigError("sources must be a table of [sources.NAME] tables")
    connections: dict[str, SourceConnection] = {}
    for name, table in raw.items():
        if not _NAME.match(name):
            raise ConfigError(
                f"sources.{name}: a source name is lower-case letters, digits, '_' and '-', "
                "starting with a letter"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"sources.{name} must be a table with a url")
        scheme = _scheme(name, table.get("url"))
        build = SCHEMES.get(scheme)
        if build is None:
            raise ConfigError(
                f"sources.{name}.url: scheme {scheme!r} is not supported; use one of "
                f"{', '.join(s + '://' for s in sorted(SCHEMES))}"
            )
        try:
            connections[name] = build(name, table)
        except (TypeError, ValueError) as exc:
            # Never the message of a URL parser: it may quote the credentials.
            raise ConfigError(
                f"sources.{name}: {exc.__class__.__name__} in its settings; check the url "
                "(scheme://user:password@host:port/database) and the numbers"
            ) from None
    return connections


def render_connection(connection: SourceConnection) -> dict[str, Any]:
    """The ``[sources.NAME]`` table that :func:`parse_connections` reads back to
    ``connection`` (with its credentials: this is what the configuration file holds)."""
    return {
        f.name: getattr(connection, f.name)
        for f in dataclasses.fields(connection)
        if f.name != "name" and getattr(connection, f.name) is not None  # unset: left out
    }
