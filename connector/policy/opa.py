"""The OPA-server engine: policies pushed to an OPA sidecar, decisions queried over REST.

Uses ``opa-python-client`` 3.x (``query_rule``; ``check_permission`` no longer exists)
with no retries and an explicit timeout. The server's health is checked and the policy set
pushed at start; afterwards any exception, timeout, non-200 answer or missing ``result`` is
a deny with a reason.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import requests
from opa_client import OpaClient

from connector.errors import ConfigError, Unavailable
from connector.policy.decision import (
    ENGINE_ERROR,
    ENGINE_TIMEOUT,
    ENGINE_UNAVAILABLE,
    UNDEFINED,
)
from connector.policy.engine import EngineBase, Failure
from connector.policy.library import PolicySet

__all__ = ["OpaServerEngine"]


class OpaServerEngine(EngineBase):
    """``PolicyEngine`` backed by an OPA server."""

    name = "opa"

    def __init__(
        self,
        url: str,
        policy: PolicySet,
        *,
        timeout_seconds: float = 2.0,
        client_cert: tuple[str, str] | None = None,
        ca_bundle: str | None = None,
        token: str | None = None,
        admin_timeout_seconds: float = 30.0,
    ) -> None:
        self._admin_timeout = admin_timeout_seconds
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"policy.opa_url {url!r} must be http(s)://host:port")
        https = parts.scheme == "https"
        super().__init__(policy)
        self._client = OpaClient(
            host=parts.hostname,
            port=parts.port or (443 if https else 80),
            ssl=https,
            cert=client_cert,
            token=token,
            retries=0,
            timeout=timeout_seconds,
        )
        if https and ca_bundle:
            self._client._session.verify = ca_bundle  # the client takes no CA argument
        self._url = url

    def start(self) -> None:
        """Check the server's health and push every module; ``Unavailable`` if it fails."""
        # Compiling uploaded modules takes longer than a decision may: the decision
        # deadline would turn a busy start into a refusal.
        decision_timeout, self._client.timeout = self._client.timeout, self._admin_timeout
        try:
            if not self._client.check_health():
                raise Unavailable(f"the OPA server at {self._url} is not healthy")
            for name, source in self._policy.modules.items():
                try:
                    self._client.update_policy_from_string(
                        source, _policy_id(name), rego_compat=False
                    )
                except Exception as exc:
                    raise Unavailable(f"OPA at {self._url} refused policy {name}: {exc}") from None
        finally:
            self._client.timeout = decision_timeout

    def update(self, policy: PolicySet) -> None:
        """Push a new policy set (for example with a new provider module)."""
        self._policy = policy
        self.start()

    def _evaluate(self, document: dict[str, Any]) -> Any:
        try:
            answer = self._client.query_rule(
                input_data=document, package_path="tds/main", rule_name="decision"
            )
        except requests.Timeout:
            return Failure(ENGINE_TIMEOUT, f"no answer from {self._url} in time")
        except requests.ConnectionError as exc:
            return Failure(ENGINE_UNAVAILABLE, str(exc)[:200])
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            return Failure(ENGINE_ERROR, f"OPA answered HTTP {status}")
        if not isinstance(answer, dict) or "result" not in answer:
            return Failure(UNDEFINED, "OPA returned no result")
        return answer["result"]

    def close(self) -> None:
        """Close the HTTP session."""
        self._client.close_connection()


def _policy_id(name: str) -> str:
    return name.replace("/", "_").removesuffix(".rego")
