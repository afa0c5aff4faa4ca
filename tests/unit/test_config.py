"""Configuration: errors name the field or file; rendering round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.config import load_config, render_config
from connector.errors import ConfigError

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
    cfg = load_config(write(tmp_path, GOOD))
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
