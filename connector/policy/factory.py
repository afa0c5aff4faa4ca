"""The policy engine a configuration asks for."""

from __future__ import annotations

from connector.config import PolicyConfig
from connector.identity.certs import read_file_bytes
from connector.policy.embedded import EmbeddedEngine
from connector.policy.engine import PolicyEngine
from connector.policy.library import PolicySet, load_library

__all__ = ["engine_from_config"]


def engine_from_config(cfg: PolicyConfig, policy: PolicySet | None = None) -> PolicyEngine:
    """Load the library and build the engine; an OPA server must be healthy to start."""
    policy = policy or load_library(cfg.policy_dir)
    if cfg.engine == "embedded":
        return EmbeddedEngine(policy)
    # Imported only for an OPA server: its client brings aiohttp (about 8 MB resident),
    # which a connector on the embedded engine does not need.
    from connector.policy.opa import OpaServerEngine

    token = None
    if cfg.opa_token_file is not None:
        token = read_file_bytes(cfg.opa_token_file, "policy.opa_token_file").decode().strip()
    cert = None
    if cfg.opa_client_cert is not None and cfg.opa_client_key is not None:
        cert = (str(cfg.opa_client_cert), str(cfg.opa_client_key))
    engine = OpaServerEngine(
        cfg.opa_url,
        policy,
        timeout_seconds=cfg.timeout_seconds,
        client_cert=cert,
        token=token,
        ca_bundle=str(cfg.opa_ca_cert) if cfg.opa_ca_cert else None,
    )
    engine.start()
    return engine
