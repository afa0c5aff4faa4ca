"""Configuration: errors name the field or file; rendering round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.config import load_config, render_config
from connector.errors import ConfigError
from connector.sources.mqtt_connection import MqttConnection
from connector.sources.nats_connection import NatsConnection

GOOD = """
data_dir = "data/a"
[participant]
id = "a"
role = "enterprise"
space = "city"
[server]
listen = "127.0.0.1:7001"
[registry]
address = "127.0.0.1:7000"
[pki]
ca_cert = "pki/ca.pem"
tls_cert = "pki/a/tls.pem"
tls_key = "pki/a/tls.key"
signing_key = "pki/a/signing.key"
operator_public_key = "pki/operator/signing.pub.pem"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "a.toml"
    path.write_text(text)
    return path


def test_good_config_resolves_paths_and_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.pki.ca_cert == tmp_path / "pki" / "ca.pem"
    assert cfg.database_url == f"sqlite:///{tmp_path / 'data' / 'a' / 'tds.db'}"
    assert cfg.policy.engine == "embedded"
    assert not cfg.is_operator


def test_render_round_trips(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD + '\n[dsp]\nlisten = "0.0.0.0:8443"\n'))
    assert cfg.dsp.listen == "0.0.0.0:8443"
    again = load_config(write(tmp_path, render_config(cfg)))
    assert again == cfg


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace('listen = "127.0.0.1:7001"', 'listen = "nowhere"'), "server.listen"),
        (lambda t: t.replace('role = "enterprise"', 'role = "mayor"'), "unknown role"),
        (
            lambda t: t.replace("[server]", "[server]\nmax_workrs = 4"),
            "unknown field server.max_workrs",
        ),
        (
            lambda t: t.replace("[server]", '[server]\nmax_workers = "4"'),
            "server.max_workers must be an integer",
        ),
        (lambda t: t.replace('address = "127.0.0.1:7000"', ""), "registry.address is required"),
        (
            lambda t: t.replace('tls_key = "pki/a/tls.key"', ""),
            "missing required field pki.tls_key",
        ),
        (lambda t: t + '\n[policy]\nengine = "opa"\n', "policy.opa_url is required"),
        (lambda t: t.replace("[participant]", "[participant"), "not valid TOML"),
        (lambda t: t.replace('id = "a"', 'id = "A B"'), "participant.id"),
        (lambda t: t + '\n[dsp]\nlisten = "8443"\n', "dsp.listen must be host:port"),
        (
            lambda t: t + '\n[dsp]\nlisten = ":8443"\nbase_url = "http://a"\n',
            "dsp.listen must be host:port",
        ),
        (
            lambda t: t + '\n[dsp]\nlisten = "0.0.0.0:8443"\nbase_url = "http://a:8443"\n',
            "dsp.base_url must be an https:// URL",
        ),
        (lambda t: t + "\n[dsp]\nmax_body_bytes = 10\n", "dsp.max_body_bytes"),
        (lambda t: t + "\n[dsp]\npage_size = 0\n", "dsp.page_size"),
        (
            lambda t: (
                t.replace('role = "enterprise"', 'role = "operator"').replace(
                    'id = "a"', 'id = "operator"'
                )
                + '\n[dsp]\nlisten = "0.0.0.0:8443"\n'
            ),
            "dsp.listen is set on the operator",
        ),
        (
            lambda t: t + "\n[catalog]\npage_size = 2000\n",
            "catalog.page_size must be between 1 and catalog.max_page_size",
        ),
        (lambda t: t + "\n[catalog]\npage_size = 0\n", "catalog.page_size"),
        (
            lambda t: t + "\n[catalog]\nmax_page_bytes = 4194304\n",
            "catalog.max_page_bytes must be between 1024 and half server.max_message_bytes",
        ),
    ],
)
def test_bad_configs_name_the_field(tmp_path: Path, edit: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, edit(GOOD)))  # type: ignore[operator]


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_source_roots_are_paths_from_the_config_directory_and_round_trip(tmp_path: Path) -> None:
    text = GOOD + '[transfer]\nsource_roots = ["shared", "/srv/open-data"]\n'
    cfg = load_config(write(tmp_path, text))
    assert cfg.transfer.source_roots == (tmp_path / "shared", Path("/srv/open-data"))
    again = load_config(write(tmp_path, render_config(cfg)))
    assert again == cfg
    with pytest.raises(ConfigError, match=r"transfer.source_roots must be an array"):
        load_config(write(tmp_path, GOOD + '[transfer]\nsource_roots = "shared"\n'))
    with pytest.raises(ConfigError, match=r"transfer.source_roots\[0\] must be a non-empty"):
        load_config(write(tmp_path, GOOD + "[transfer]\nsource_roots = [1]\n"))


SOURCES = """
[sources.orders]
url = "postgresql://reader:s3cret-pw@127.0.0.1:5432/shop"
pool_size = 2
statement_timeout_seconds = 5
[sources.crm]
url = "mariadb://root:0ther-pw@127.0.0.1:3306/test"
fetch_rows = 100
"""


def test_sources_become_connections_and_round_trip(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD + SOURCES))
    orders, crm = cfg.sources["orders"], cfg.sources["crm"]
    assert (orders.name, orders.dialect, orders.pool_size) == ("orders", "postgres", 2)
    assert orders.statement_timeout_seconds == 5
    assert (crm.dialect, crm.fetch_rows, crm.pool_size) == ("mysql", 100, 4)
    again = load_config(write(tmp_path, render_config(cfg)))
    assert again == cfg


BROKERS = """
[sources.weather]
url = "nats://tds:n4ts-pw@127.0.0.1:4222"
buffer_messages = 128
[sources.sensors]
url = "mqtt://127.0.0.1:1883"
client_id = "tds-city"
replay_messages = 500
max_lag_messages = 400
[sources.decentral]
url = "tls://nats.internal:4222"
credentials_file = "/etc/tds/nats.creds"
"""


def test_brokers_become_stream_connections_and_round_trip(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD + BROKERS))
    weather, sensors = cfg.sources["weather"], cfg.sources["sensors"]
    assert isinstance(weather, NatsConnection) and weather.buffer_messages == 128
    assert isinstance(sensors, MqttConnection)
    assert (sensors.client_id, sensors.replay_messages) == ("tds-city", 500)
    decentral = cfg.sources["decentral"]
    assert isinstance(decentral, NatsConnection)
    assert decentral.credentials_file == "/etc/tds/nats.creds"
    assert load_config(write(tmp_path, render_config(cfg))) == cfg
    for shown in (repr(cfg), str(cfg), weather.safe_url()):
        assert "n4ts-pw" not in shown


@pytest.mark.parametrize(
    "table, message",
    [
        ('url = "nats://h:4222"\nclient_id = "x"', "unknown field sources.x.client_id"),
        ('url = "nats://h:4222"\ncredentials_file = 3', "sources.x.credentials_file must be a str"),
        ('url = "mqtt://h"\nqos = 3', "sources.x.qos must be 0, 1 or 2"),
        ('url = "mqtt://h"\nreplay_messages = 0', "sources.x.replay_messages must be a positive"),
        ('url = "nats://u:pw@h:4222"\ncredentials_file = "c"', "not both"),
    ],
)
def test_bad_brokers_name_the_field_and_never_the_password(
    tmp_path: Path, table: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(write(tmp_path, GOOD + "\n[sources.x]\n" + table + "\n"))
    assert "pw" not in str(caught.value)


def test_a_config_without_sources_has_none(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, GOOD)).sources == {}


@pytest.mark.parametrize(
    "table, message",
    [
        ('url = "postgresql://u:pw@h/db"\npool_sise = 2', "unknown field sources.x.pool_sise"),
        ('url = "postgresql://u:pw@h/db"\npool_size = 0', "sources.x.pool_size must be a positive"),
        ('url = "postgresql://u:pw@h/db"\npool_size = "4"', "sources.x.pool_size must be a number"),
        ('url = "postgresql://u:pw@h/db"\nfetch_rows = 1.5', "sources.x.fetch_rows must be a pos"),
        (
            'url = "postgresql://u:pw@h/db"\nstatement_timeout_seconds = -1',
            "sources.x.statement_timeout_seconds must be a positive number",
        ),
        ('url = "oracle://u:pw@h/db"', "sources.x.url: scheme 'oracle' is not supported"),
        ("pool_size = 2", "sources.x.url is required"),
        ('url = "postgresql://u:pw@h:port/db"', "sources.x.url is not a database URL"),
        ('url = "postgresql+asyncpg://u:pw@h/db"', "sources.x.url: 'postgresql\\+asyncpg'"),
    ],
)
def test_bad_sources_name_the_field_and_never_the_password(
    tmp_path: Path, table: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(write(tmp_path, GOOD + "\n[sources.x]\n" + table + "\n"))
    assert "pw" not in str(caught.value)


def test_a_bad_source_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="a source name is lower-case"):
        load_config(write(tmp_path, GOOD + '\n[sources."Bad Name"]\nurl = "postgresql://h/db"\n'))
    with pytest.raises(ConfigError, match=r"sources\.x must be a table"):
        load_config(write(tmp_path, GOOD + '\n[sources]\nx = "postgresql://h/db"\n'))


def test_the_password_is_hidden_wherever_a_connection_is_shown(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD + SOURCES))
    for shown in (repr(cfg), str(cfg), repr(cfg.sources), cfg.sources["orders"].safe_url()):
        assert "s3cret-pw" not in shown and "0ther-pw" not in shown
    assert "reader:***@127.0.0.1" in cfg.sources["orders"].safe_url()
