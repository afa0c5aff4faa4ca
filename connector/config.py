"""Typed connector configuration, one TOML file per connector.

Relative paths in the file are resolved against the file's directory. Unknown fields and
wrong types are errors naming the field, so a typo never silently falls back to a default.
The library never reads the environment; ``tds`` applies ``TDS_*`` overrides (see the CLI).
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connector.errors import ConfigError, InvalidRequest
from connector.identity.names import Role, check_id
from connector.sources.connections import SourceConnection, parse_connections, render_connection

__all__ = [
    "AuditConfig",
    "CatalogConfig",
    "Config",
    "DatabaseConfig",
    "DspConfig",
    "LimitsConfig",
    "ParticipantConfig",
    "PkiConfig",
    "PolicyConfig",
    "RegistryConfig",
    "ServerConfig",
    "StreamConfig",
    "TransferConfig",
    "load_config",
    "render_config",
]


@dataclass(frozen=True)
class ParticipantConfig:
    """Who this connector is."""

    id: str
    """Participant id, as in the certificate's SAN URI."""
    role: str
    """operator, government, enterprise, individual or auditor."""
    space: str
    """Data-space id, the audience of membership tokens."""


@dataclass(frozen=True)
class ServerConfig:
    """The gRPC server."""

    listen: str = ""
    """host:port to listen on (mutual TLS only); empty only for an auditor, who runs none."""
    advertise: str = ""
    """host:port other members use to reach this connector (default: listen)."""
    max_workers: int = 16
    """Threads serving calls."""
    max_message_bytes: int = 4 * 1024 * 1024
    """Largest message accepted or sent."""
    grace_seconds: float = 10.0
    """How long in-flight calls may run on after SIGTERM/SIGINT."""


@dataclass(frozen=True)
class RegistryConfig:
    """Where the operator registry is and how membership is kept fresh."""

    address: str = ""
    """host:port of the registry (ignored by the operator itself)."""
    operator_id: str = "operator"
    """Participant id of the operator; tokens name it as issuer."""
    token_ttl_seconds: int = 300
    """Lifetime of membership tokens the operator issues (operator only)."""
    token_refresh_fraction: float = 0.7
    """Refresh the own token after this fraction of its lifetime."""
    revocation_refresh_seconds: float = 30.0
    """How often to fetch the revocation list: the fallback while the registry's revocation
    stream (``WatchRevocations``), which pushes each new list at once, is down."""
    revocation_max_age_seconds: float = 300.0
    """Refuse all calls when the revocation list in force is older than this."""
    call_timeout_seconds: float = 5.0
    """Deadline of each call to the registry."""
    max_watchers: int = 8
    """Operator only: members holding the revocation stream open at once. Each stream
    takes one server worker, so this stays below ``server.max_workers``; members past it
    are refused and keep to the periodic refresh."""
    directory_refresh_seconds: float = 30.0
    """How often to fetch the operator-signed directory that peers are looked up in (a
    member keeps the last one it verified in its database, shared by its replicas)."""
    directory_max_age_seconds: float = 3600.0
    """While the registry does not answer, keep looking peers up in the cached directory
    until the operator signed it this long ago; then refuse calls to other members with
    UNAVAILABLE. Calls also need a membership token (at least (1 - token_refresh_fraction)
    of the token lifetime is left when the registry goes away) and, on the callee, a
    revocation list younger than revocation_max_age_seconds."""


@dataclass(frozen=True)
class PkiConfig:
    """Key material (PEM files)."""

    ca_cert: Path
    """The data-space CA certificate."""
    tls_cert: Path
    """This connector's TLS certificate."""
    tls_key: Path
    """This connector's TLS private key (ECDSA P-256)."""
    signing_key: Path
    """This participant's Ed25519 signing key (the operator's also signs tokens)."""
    operator_public_key: Path
    """The operator's Ed25519 public key, which verifies tokens and revocation lists."""
    admin_cert: Path | None = None
    """Administrator client certificate, used by the CLI to administer this connector."""
    admin_key: Path | None = None
    """Administrator client key."""


@dataclass(frozen=True)
class DatabaseConfig:
    """State storage."""

    url: str = ""
    """SQLAlchemy URL; empty means a SQLite file tds.db in the data directory."""


@dataclass(frozen=True)
class PolicyConfig:
    """Policy engine selection (see connector.policy)."""

    engine: str = "embedded"
    """embedded (regopy, in-process) or opa (an OPA server)."""
    opa_url: str = ""
    """Base URL of the OPA server when engine = "opa"."""
    timeout_seconds: float = 2.0
    """Deadline of one policy decision."""
    policy_dir: Path | None = None
    """Directory holding tds/*.rego (default: the policies/ of this tds checkout)."""
    opa_client_cert: Path | None = None
    """Client certificate for an https OPA (with opa_client_key)."""
    opa_client_key: Path | None = None
    """Client key for an https OPA."""
    opa_ca_cert: Path | None = None
    """CA bundle that verifies an https OPA's certificate."""
    opa_token_file: Path | None = None
    """File holding a bearer token for OPA."""


@dataclass(frozen=True)
class AuditConfig:
    """The connector's transparency log."""

    checkpoint_interval_seconds: float = 60.0
    """How often to sign a new checkpoint when the log has grown."""


@dataclass(frozen=True)
class TransferConfig:
    """The data plane."""

    chunk_bytes: int = 1024 * 1024
    """Largest chunk a transfer streams (at most server.max_message_bytes less 1 KiB)."""
    resume_seconds: float = 60.0
    """How long a receiving transfer retries without progress before it fails."""
    sweep_interval_seconds: float = 10.0
    """How often held data is checked against its obligations (delete-after, revocation)."""
    source_roots: tuple[Path, ...] = ()
    """Directories besides ``data_dir`` that product sources may be read from (relative
    paths: from the configuration file's directory). Nothing else is read: a source path
    that resolves — through ``..`` or symlinks — outside ``data_dir`` and these is
    refused when the product is published and whenever it is read."""


@dataclass(frozen=True)
class StreamConfig:
    """Streams this connector provides (connector.transfer.streaming)."""

    window_messages: int = 1000
    """A window receipt closes after this many records ..."""
    window_seconds: float = 5.0
    """... or this long after its first record, whichever comes first."""
    ack_timeout_seconds: float = 30.0
    """A proposed window the consumer does not sign within this ends the subscription."""
    max_unsigned_windows: int = 2
    """Windows sent ahead of the consumer's receipts before the provider waits for them
    (so a consumer that stops reading never grows the provider's memory)."""


@dataclass(frozen=True)
class LimitsConfig:
    """Explicit limits with safe defaults."""

    clock_leeway_seconds: int = 30
    """Tolerated clock skew when checking token times."""


# -- [catalog]: paging (issue 21) ---------------------------------------------------------


@dataclass(frozen=True)
class CatalogConfig:
    """Pages of the catalog (the provider's, and the registry's index)."""

    page_size: int = 100
    """Products per page when a caller does not say."""
    max_page_size: int = 1000
    """The most products a caller may ask for in one page."""
    max_page_bytes: int = 1024 * 1024
    """A page's candidates stop short of this stored size (so answers stay far below
    server.max_message_bytes, whatever the products' sizes)."""
    read_ahead: bool = True
    """For a caller following the provider's pages, read the next page and make its
    policy input while the current one is decided (on a second core; a little more CPU
    in all). The next page's request still reads and decides it itself."""


def _validate_catalog(c: CatalogConfig, max_message_bytes: int) -> None:
    if not 1 <= c.page_size <= c.max_page_size:
        raise ConfigError("catalog.page_size must be between 1 and catalog.max_page_size")
    if not 1024 <= c.max_page_bytes <= max_message_bytes // 2:
        raise ConfigError(
            "catalog.max_page_bytes must be between 1024 and half server.max_message_bytes"
        )


# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DspConfig:
    """The Dataspace Protocol 2025-1 HTTPS binding, beside gRPC (off unless ``listen``)."""

    listen: str = ""
    """host:port of the DSP HTTPS server (TLS with the connector's certificate; mutual TLS
    when the peer presents a space certificate); empty: not served."""
    base_url: str = ""
    """https URL others reach the binding at (default: https://<listen host>:<bound port>)."""
    max_body_bytes: int = 256 * 1024
    """Largest request body accepted; a larger one is refused with 413 before it is read."""
    page_size: int = 50
    """Products a catalog page considers (DSP clients cannot choose; at most
    ``catalog.max_page_size``); further pages through ``Link: rel="next"``."""


@dataclass(frozen=True)
class Config:
    """A connector's whole configuration."""

    participant: ParticipantConfig
    pki: PkiConfig
    server: ServerConfig = field(default_factory=ServerConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    dsp: DspConfig = field(default_factory=DspConfig)
    data_dir: Path = Path("data")
    """Where the connector keeps its database and files."""
    sources: dict[str, SourceConnection] = field(default_factory=dict)
    """``[sources.NAME]``: the databases and brokers products read from, by the name
    a product's ``source.connection`` gives (see connector.sources.connections). Their
    credentials live here only: never in a product, the registry or a log."""

    @property
    def is_operator(self) -> bool:
        """Whether this connector runs the operator registry."""
        return self.participant.role == Role.OPERATOR.value

    @property
    def database_url(self) -> str:
        """The configured URL, or the default SQLite file in the data directory."""
        return self.database.url or f"sqlite:///{self.data_dir / 'tds.db'}"


def _type_name(tp: Any) -> str:
    return {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        Path: "a path string",
    }.get(tp, str(tp))


def _coerce(value: Any, tp: Any, where: str, base: Path) -> Any:
    origin = typing.get_origin(tp)
    if origin is tuple:  # tuple[X, ...]: a TOML array
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be an array")
        item = typing.get_args(tp)[0]
        return tuple(_coerce(v, item, f"{where}[{i}]", base) for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], where, base)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table")
        return _build(typing.cast(type, tp), value, where, base)
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where} must be a non-empty path string")
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{where} must be an integer")
    if not isinstance(value, tp):
        raise ConfigError(f"{where} must be {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type, table: dict[str, Any], section: str, base: Path) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown field {section}.{unknown[0]}; valid fields: {', '.join(sorted(fields))}"
        )
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        where = f"{section}.{name}" if section else name
        if name in table:
            kwargs[name] = _coerce(table[name], hints[name], where, base)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required field {where}")
    return cls(**kwargs)


def _validate(cfg: Config) -> None:
    _validate_catalog(cfg.catalog, cfg.server.max_message_bytes)
    try:
        check_id(cfg.participant.id, "participant.id")
        check_id(cfg.participant.space, "participant.space")
        check_id(cfg.registry.operator_id, "registry.operator_id")
        Role.parse(cfg.participant.role)
    except InvalidRequest as exc:
        raise ConfigError(str(exc)) from None
    if cfg.server.listen or cfg.participant.role != Role.AUDITOR.value:
        _check_address(cfg.server.listen, "server.listen")
    if cfg.server.advertise:
        _check_address(cfg.server.advertise, "server.advertise")
    if cfg.dsp.listen:
        _check_address(cfg.dsp.listen, "dsp.listen")
        if cfg.is_operator:
            raise ConfigError(
                "dsp.listen is set on the operator, whose registry has no catalog or "
                "negotiations to serve over DSP: leave it empty"
            )
    if cfg.dsp.base_url and not cfg.dsp.base_url.startswith("https://"):
        raise ConfigError(f"dsp.base_url must be an https:// URL, got {cfg.dsp.base_url!r}")
    if not cfg.is_operator:
        if not cfg.registry.address:
            raise ConfigError("registry.address is required for every connector but the operator")
        _check_address(cfg.registry.address, "registry.address")
    elif cfg.participant.id != cfg.registry.operator_id:
        raise ConfigError(
            f"participant.id {cfg.participant.id!r} has role operator but registry.operator_id "
            f"is {cfg.registry.operator_id!r}: make them equal"
        )
    checks = [
        (cfg.server.max_workers >= 1, "server.max_workers must be at least 1"),
        (cfg.server.max_message_bytes >= 1024, "server.max_message_bytes must be at least 1024"),
        (cfg.server.grace_seconds >= 0, "server.grace_seconds must not be negative"),
        (
            30 <= cfg.registry.token_ttl_seconds <= 86400,
            "registry.token_ttl_seconds must be between 30 and 86400",
        ),
        (
            0.1 <= cfg.registry.token_refresh_fraction <= 0.9,
            "registry.token_refresh_fraction must be between 0.1 and 0.9",
        ),
        (
            cfg.registry.revocation_refresh_seconds > 0,
            "registry.revocation_refresh_seconds must be positive",
        ),
        (
            cfg.registry.revocation_max_age_seconds > cfg.registry.revocation_refresh_seconds,
            "registry.revocation_max_age_seconds must exceed revocation_refresh_seconds",
        ),
        (cfg.registry.call_timeout_seconds > 0, "registry.call_timeout_seconds must be positive"),
        (
            cfg.registry.max_watchers >= 0
            and (not cfg.is_operator or cfg.registry.max_watchers < cfg.server.max_workers),
            "registry.max_watchers must be at least 0 and, on the operator, below "
            "server.max_workers (each revocation stream holds a worker)",
        ),
        (
            cfg.registry.directory_refresh_seconds > 0,
            "registry.directory_refresh_seconds must be positive",
        ),
        (
            cfg.registry.directory_max_age_seconds > cfg.registry.directory_refresh_seconds,
            "registry.directory_max_age_seconds must exceed directory_refresh_seconds",
        ),
        (cfg.policy.engine in ("embedded", "opa"), "policy.engine must be 'embedded' or 'opa'"),
        (
            cfg.policy.engine != "opa" or bool(cfg.policy.opa_url),
            "policy.opa_url is required when policy.engine = 'opa'",
        ),
        (cfg.policy.timeout_seconds > 0, "policy.timeout_seconds must be positive"),
        (
            (cfg.policy.opa_client_cert is None) == (cfg.policy.opa_client_key is None),
            "policy.opa_client_cert and policy.opa_client_key go together",
        ),
        (
            cfg.audit.checkpoint_interval_seconds >= 1,
            "audit.checkpoint_interval_seconds must be at least 1",
        ),
        (
            4096 <= cfg.transfer.chunk_bytes <= cfg.server.max_message_bytes - 1024,
            "transfer.chunk_bytes must be at least 4096 and at most "
            "server.max_message_bytes less 1024",
        ),
        (cfg.transfer.resume_seconds >= 1, "transfer.resume_seconds must be at least 1"),
        (
            cfg.transfer.sweep_interval_seconds >= 0.1,
            "transfer.sweep_interval_seconds must be at least 0.1",
        ),
        (cfg.dsp.max_body_bytes >= 1024, "dsp.max_body_bytes must be at least 1024"),
        (
            1 <= cfg.dsp.page_size <= cfg.catalog.max_page_size,
            "dsp.page_size must be between 1 and catalog.max_page_size",
        ),
        (cfg.stream.window_messages >= 1, "stream.window_messages must be at least 1"),
        (cfg.stream.window_seconds > 0, "stream.window_seconds must be positive"),
        (cfg.stream.ack_timeout_seconds >= 1, "stream.ack_timeout_seconds must be at least 1"),
        (cfg.stream.max_unsigned_windows >= 1, "stream.max_unsigned_windows must be at least 1"),
        (
            0 <= cfg.limits.clock_leeway_seconds <= 300,
            "limits.clock_leeway_seconds must be between 0 and 300",
        ),
        (
            (cfg.pki.admin_cert is None) == (cfg.pki.admin_key is None),
            "pki.admin_cert and pki.admin_key go together: give both or neither",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _check_address(value: str, where: str) -> None:
    if not value:
        raise ConfigError(f"{where} is required (host:port)")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where} must be host:port, got {value!r}")


def load_config(path: Path) -> Config:
    """Load and validate a connector configuration file."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    # [sources.NAME] tables are built by kind (their URL's scheme), not by one dataclass.
    sources = parse_connections(raw.pop("sources", {}))
    cfg: Config = _build(Config, raw, "", path.resolve().parent)
    cfg = dataclasses.replace(cfg, sources=sources)
    _validate(cfg)
    return cfg


def _toml_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(cfg: Config) -> str:
    """Render a configuration as TOML that ``load_config`` reads back to the same values."""
    lines = ["# tds connector configuration (see connector/config.py for every field)", ""]
    lines.append(f"data_dir = {_toml_value(cfg.data_dir)}")
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if not dataclasses.is_dataclass(section):
            continue
        lines += ["", f"[{f.name}]"]
        for sf in dataclasses.fields(section):
            value = getattr(section, sf.name)
            if value is not None:
                lines.append(f"{sf.name} = {_toml_value(value)}")
    for name, connection in cfg.sources.items():
        lines += ["", f"[sources.{name}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in render_connection(connection).items()]
    return "\n".join(lines) + "\n"
