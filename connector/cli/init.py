"""``tds init``: a connector configuration from PKI material."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from connector.cli.output import emit
from connector.config import (
    Config,
    DatabaseConfig,
    ParticipantConfig,
    PkiConfig,
    RegistryConfig,
    ServerConfig,
    TransferConfig,
    load_config,
    render_config,
)
from connector.errors import ConfigError
from connector.identity.pki import load_manifest


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``tds init``."""
    p = sub.add_parser(
        "init",
        help="write a connector config for a participant",
        description="Write a TOML configuration for one participant from a PKI made by "
        "'tds pki init' (the operator's config runs the registry).",
    )
    p.add_argument("--pki", required=True, type=Path, help="directory made by 'tds pki init'")
    p.add_argument("--participant", required=True, help="participant id in that PKI")
    p.add_argument(
        "--listen", default="", help="host:port this connector listens on (not for an auditor)"
    )
    p.add_argument(
        "--registry", default="", help="host:port of the registry (not for the operator)"
    )
    p.add_argument("--out", type=Path, help="config file to write (default: ID.toml)")
    p.add_argument(
        "--data-dir", type=Path, help="data directory (default: data/ID beside the config)"
    )
    p.add_argument(
        "--database-url", default="", help="SQLAlchemy URL (default: SQLite in the data dir)"
    )
    p.add_argument(
        "--source-root",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="a directory besides the data directory that product sources may be read from "
        "(repeatable; transfer.source_roots)",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing config file")
    p.add_argument("--json", action="store_true", help="print the written path and config as JSON")
    p.set_defaults(func=run_init)


def _rel(path: Path, base: Path) -> Path:
    return Path(os.path.relpath(path.resolve(), base))


def build_config(args: argparse.Namespace, out: Path) -> Config:
    """The configuration ``tds init`` writes, with paths relative to ``out``'s directory."""
    pki_dir = args.pki.resolve()
    manifest = load_manifest(pki_dir)
    me = manifest.participant(args.participant)
    operator = manifest.participant(manifest.operator_id)
    base = out.resolve().parent
    data_dir = args.data_dir or (base / "data" / me.id)
    return Config(
        participant=ParticipantConfig(id=me.id, role=me.role, space=manifest.space),
        server=ServerConfig(listen=args.listen),
        registry=RegistryConfig(address=args.registry, operator_id=manifest.operator_id),
        pki=PkiConfig(
            ca_cert=_rel(pki_dir / manifest.ca_cert, base),
            tls_cert=_rel(pki_dir / me.tls_cert, base),
            tls_key=_rel(pki_dir / me.tls_key, base),
            signing_key=_rel(pki_dir / me.signing_key, base),
            operator_public_key=_rel(pki_dir / operator.signing_public_key, base),
            admin_cert=_rel(pki_dir / me.admin_cert, base),
            admin_key=_rel(pki_dir / me.admin_key, base),
        ),
        database=DatabaseConfig(url=args.database_url),
        transfer=TransferConfig(source_roots=tuple(_rel(r, base) for r in args.source_root)),
        data_dir=_rel(Path(data_dir), base),
    )


def run_init(args: argparse.Namespace) -> int:
    """Write the config, then load it back to prove it is valid."""
    out: Path = args.out or Path(f"{args.participant}.toml")
    if out.exists() and not args.force:
        raise ConfigError(f"{out} exists; pass --force to overwrite it")
    text = render_config(build_config(args, out))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    cfg = load_config(out)
    emit(
        {
            "config": str(out.resolve()),
            "participant": cfg.participant.id,
            "role": cfg.participant.role,
            "listen": cfg.server.listen,
        },
        f"Wrote {out} for {cfg.participant.id} ({cfg.participant.role}); "
        f"start it with: tds serve --config {out}",
        as_json=args.json,
    )
    return 0
