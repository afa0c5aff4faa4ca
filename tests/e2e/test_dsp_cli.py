"""The DSP binding as users run it: `tds serve` with a `[dsp]` block in the provider's
configuration; a client written from the DSP specification, holding only what a foreign
connector holds (a certificate of the space CA and a membership token from the registry),
reads the catalog and negotiates with the tds provider; `tds negotiations` on the provider
shows the same negotiation, through to its termination. Then a second tds connector, with
a `[dsp]` block of its own, negotiates with the provider over the binding alone
(`tds negotiate --dsp URL`) to FINALIZED."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.config import load_config
from connector.identity.names import participant_dns_name
from connector.node.clients import registry_client
from tests.e2e.test_cli import Served, tds
from tests.support.dsp_client import DspClient
from tests.support.ports import free_port
from tests.unit.negotiation.test_dsp import VECTORS, validate

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not VECTORS.is_dir(), reason=f"DSP vectors not found at {VECTORS}"),
]

PRODUCT = (
    'id = "air"\ntitle = "Air quality"\ngrade = "general"\n'
    '[source]\nkind = "file"\npath = "air.csv"\n'
    '[[offers]]\nid = "o1"\npurposes = ["research"]\n'
    "valid_from_ns = 0\nvalid_until_ns = 4000000000000000000\n"
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("dsp-cli")
    tds(
        "pki", "init", "--space", "city", "--out", "pki",
        "--participant", "gov:government", "--participant", "a:enterprise",
        "--participant", "b:enterprise",
        cwd=root,
    )  # fmt: skip
    ports = {"operator": free_port(), "gov": free_port(), "a": free_port(), "b": free_port()}
    for pid, port in ports.items():
        extra = [] if pid == "operator" else ["--registry", f"127.0.0.1:{ports['operator']}"]
        tds(
            "init", "--pki", "pki", "--participant", pid, "--listen", f"127.0.0.1:{port}",
            "--out", f"{pid}.toml", "--source-root", ".", *extra,
            cwd=root,
        )  # fmt: skip
    dsp_ports = {"gov": free_port(), "b": free_port()}
    for pid, dsp_port in dsp_ports.items():
        config = root / f"{pid}.toml"
        text = config.read_text()
        assert '[dsp]\nlisten = ""' in text  # tds init writes the block, off
        config.write_text(
            text.replace('[dsp]\nlisten = ""', f'[dsp]\nlisten = "127.0.0.1:{dsp_port}"')
        )
    dsp_port = dsp_ports["gov"]
    (root / "air.csv").write_text("station,pm25\nA,12\n")
    (root / "air.toml").write_text(PRODUCT)
    servers = {"operator": Served(root / "operator.toml", root)}
    try:
        for pid in ("gov", "a", "b"):
            tds(
                "registry", "enrol", "--config", "operator.toml", "--participant", pid,
                "--address", f"127.0.0.1:{ports[pid]}", "--pki", "pki",
                cwd=root,
            )  # fmt: skip
        servers["gov"] = Served(root / "gov.toml", root)
        servers["b"] = Served(root / "b.toml", root)
        # a's connector is not started: the DSP client below is its only voice.
        tds("product", "add", "air.toml", "--config", "gov.toml", cwd=root)
        a_cfg = load_config(root / "a.toml")
        registry = registry_client(a_cfg)
        client = DspClient(
            base=f"https://127.0.0.1:{dsp_port}",
            server_name=participant_dns_name("city", "gov"),
            ca_pem=a_cfg.pki.ca_cert.read_bytes(),
            cert_pem=a_cfg.pki.tls_cert.read_bytes(),
            key_pem=a_cfg.pki.tls_key.read_bytes(),
            authorization=lambda: f"Bearer {registry.token()}",
        )
        yield {"root": root, "client": client, "servers": servers, "dsp_port": dsp_port}
        registry.close()
    finally:
        for server in servers.values():
            if server.proc.poll() is None:
                server.stop()


def test_a_dsp_client_negotiates_with_a_tds_provider(world: dict[str, Any]) -> None:
    client: DspClient = world["client"]
    root: Path = world["root"]
    version = client.call("GET", "/.well-known/dspace-version")
    validate(version.body, "common/protocol-version-schema.json")
    catalog = client.call(
        "POST",
        "/catalog/request",
        {
            "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
            "@type": "CatalogRequestMessage",
        },
    )
    validate(catalog.body, "catalog/catalog-schema.json")
    (dataset,) = catalog.body["dataset"]
    (offer,) = dataset["hasPolicy"]
    request = {
        "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
        "@type": "ContractRequestMessage",
        "consumerPid": "urn:uuid:0e1d8f5a-7d1c-4a43-9d55-6f1a1c2b3c4d",
        "offer": {
            "@id": offer["@id"],
            "@type": "Offer",
            "target": dataset["@id"],
            "permission": [
                {
                    "action": "use",
                    "constraint": [
                        {
                            "leftOperand": "odrl:purpose",
                            "operator": "eq",
                            "rightOperand": "research",
                        }
                    ],
                }
            ],
        },
        "callbackAddress": "https://127.0.0.1:1/callback",
    }
    created = client.call("POST", "/negotiations/request", request)
    assert created.status == 201, created.body
    validate(created.body, "negotiation/contract-negotiation-schema.json")
    assert created.body["state"] == "AGREED"
    pid = created.body["providerPid"].removeprefix("urn:tds:process:")
    # The provider's own CLI shows the negotiation DSP started, as one gRPC would have.
    shown = json.loads(
        tds("negotiations", "show", pid, "--config", "gov.toml", "--json", cwd=root).stdout
    )
    assert (shown["state"], shown["counterparty"], shown["product"]) == ("AGREED", "a", "air")
    ended = client.call(
        "POST",
        f"/negotiations/{created.body['providerPid']}/termination",
        {
            "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
            "@type": "ContractNegotiationTerminationMessage",
            "providerPid": created.body["providerPid"],
            "consumerPid": request["consumerPid"],
            "reason": ["changed our mind"],
        },
    )
    assert ended.status == 200, ended.body
    shown = json.loads(
        tds("negotiations", "show", pid, "--config", "gov.toml", "--json", cwd=root).stdout
    )
    assert shown["state"] == "TERMINATED"


def test_tds_negotiate_dsp_two_tds_connectors_finalize_over_the_binding_alone(
    world: dict[str, Any],
) -> None:
    root: Path = world["root"]
    out = tds(
        "negotiate", "--config", "b.toml", "--provider", "gov", "--product", "air",
        "--offer", "o1", "--purpose", "research",
        "--dsp", f"https://127.0.0.1:{world['dsp_port']}", "--wait", "--json",
        cwd=root,
    )  # fmt: skip
    mine = json.loads(out.stdout)
    assert (mine["state"], mine["role"], mine["counterparty"]) == ("FINALIZED", "consumer", "gov")
    listed = json.loads(
        tds("negotiations", "list", "--config", "gov.toml", "--json", cwd=root).stdout
    )
    (theirs,) = [n for n in listed if n["agreement_id"] == mine["agreement_id"]]
    assert (theirs["state"], theirs["counterparty"]) == ("FINALIZED", "b")
    # The agreement b holds is the dual-signed one, verifying offline against the keys.
    tds(
        "agreements", "show", mine["agreement_id"], "--config", "b.toml",
        "--out", "agreement.json", cwd=root,
    )  # fmt: skip
    verified = tds("agreements", "verify", "agreement.json", "--config", "b.toml", cwd=root)
    assert verified.returncode == 0
    # Then b receives the product over the binding alone (an HttpData pull), with a
    # dual-signed receipt, the bytes those of the provider's file.
    moved = tds(
        "transfer", "--config", "b.toml", "--agreement", mine["agreement_id"],
        "--dsp", f"https://127.0.0.1:{world['dsp_port']}", "--out", "air-dsp.csv", "--json",
        cwd=root,
    )  # fmt: skip
    received = json.loads(moved.stdout)
    assert received["state"] == "completed" and received["receipt_id"]
    assert (root / "air-dsp.csv").read_bytes() == (root / "air.csv").read_bytes()
    provided = json.loads(
        tds("data", "list", "--all", "--config", "gov.toml", "--json", cwd=root).stdout
    )
    (theirs_t,) = [t for t in provided if t["transfer"] == received["transfer"]]
    assert (theirs_t["role"], theirs_t["state"], theirs_t["counterparty"]) == (
        "provider",
        "completed",
        "b",
    )


PERMITS = (
    'id = "permits"\ntitle = "Permits"\ngrade = "important"\n'
    '[source]\nkind = "file"\npath = "air.csv"\n'
    '[[offers]]\nid = "o1"\npurposes = ["research"]\n'
    "valid_from_ns = 0\nvalid_until_ns = 4000000000000000000\n"
    '[[offers]]\nid = "o2"\npurposes = ["research", "planning"]\nmax_transfers = 2\n'
    "valid_from_ns = 0\nvalid_until_ns = 4000000000000000000\n"
)


def _until(probe: Any, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def _waiting(root: Path, counterparty: str) -> list[dict[str, Any]]:
    listed = json.loads(
        tds("negotiations", "list", "--pending", "--config", "gov.toml", "--json", cwd=root).stdout
    )
    return [n for n in listed if n["counterparty"] == counterparty]


def test_negotiations_consumerpid_offers_post_counter_offer_with_the_cli_of_connectors_served(
    world: dict[str, Any],
) -> None:
    # Last in this module: it publishes a second product (grade important: requests wait).
    root: Path = world["root"]
    (root / "permits.toml").write_text(PERMITS)
    tds("product", "add", "permits.toml", "--config", "gov.toml", cwd=root)
    # A tds consumer (b, over gov's binding) and gov's data officer, through the CLI only.
    started = json.loads(
        tds(
            "negotiate", "--config", "b.toml", "--provider", "gov", "--product", "permits",
            "--offer", "o1", "--purpose", "research",
            "--dsp", f"https://127.0.0.1:{world['dsp_port']}", "--json",
            cwd=root,
        ).stdout
    )  # fmt: skip
    (waiting,) = _until(lambda: _waiting(root, "b"), "gov to hold b's request")
    offered = json.loads(
        tds(
            "negotiations", "offer", waiting["pid"], "--offer", "o2", "--purpose", "planning",
            "--config", "gov.toml", "--json", cwd=root,
        ).stdout
    )  # fmt: skip
    assert (offered["state"], offered["offer"], offered["purpose"]) == ("OFFERED", "o2", "planning")

    def shown_offered() -> dict[str, Any] | None:
        shown = json.loads(
            tds(
                "negotiations", "show", started["pid"], "--config", "b.toml", "--json", cwd=root
            ).stdout
        )  # fmt: skip
        return shown if shown["state"] == "OFFERED" else None

    assert _until(shown_offered, "b to hold gov's offer")["offer"] == "o2"
    final = json.loads(
        tds(
            "negotiations", "accept", started["pid"], "--config", "b.toml", "--wait", "--json",
            cwd=root,
        ).stdout
    )  # fmt: skip
    assert (final["state"], final["offer"], final["purpose"]) == ("FINALIZED", "o2", "planning")
    terms = json.loads(
        tds(
            "agreements", "show", final["agreement_id"], "--config", "b.toml", "--json",
            cwd=root,
        ).stdout
    )["terms"]  # fmt: skip
    assert (terms["offer"], terms["purpose"], terms["max_transfers"]) == ("o2", "planning", 2)

    # A client written from the specification (a, no tds connector of its own) takes part
    # in a negotiation with a counter-offer, a counter-request and a termination.
    client: DspClient = world["client"]
    context = ["https://w3id.org/dspace/2025/1/context.jsonld"]
    consumer_pid = "urn:uuid:5b0c7f52-3a2e-4f0e-9d1b-2c4c6a0e8f11"

    def offer(name: str, purpose: str) -> dict[str, Any]:
        return {
            "@id": f"urn:tds:offer:permits/{name}",
            "@type": "Offer",
            "target": "urn:tds:dataset:permits",
            "permission": [
                {
                    "action": "use",
                    "constraint": [
                        {"leftOperand": "odrl:purpose", "operator": "eq", "rightOperand": purpose}
                    ],
                }
            ],
        }

    created = client.call(
        "POST",
        "/negotiations/request",
        {
            "@context": context,
            "@type": "ContractRequestMessage",
            "consumerPid": consumer_pid,
            "offer": offer("o1", "research"),
            "callbackAddress": "https://127.0.0.1:1/callback",
        },
    )
    assert created.status == 201 and created.body["state"] == "REQUESTED", created.body
    provider_pid = created.body["providerPid"]
    pid = provider_pid.removeprefix("urn:tds:process:")
    tds(
        "negotiations", "offer", pid, "--offer", "o2", "--purpose", "research",
        "--config", "gov.toml", cwd=root,
    )  # fmt: skip
    countered = client.call(
        "POST",
        f"/negotiations/{provider_pid}/request",
        {
            "@context": context,
            "@type": "ContractRequestMessage",
            "providerPid": provider_pid,
            "consumerPid": consumer_pid,
            "offer": offer("o2", "planning"),
        },
    )
    assert countered.status == 200, countered.body
    validate(countered.body, "negotiation/contract-negotiation-schema.json")
    assert countered.body["state"] == "REQUESTED"
    shown = json.loads(
        tds("negotiations", "show", pid, "--config", "gov.toml", "--json", cwd=root).stdout
    )
    assert (shown["state"], shown["offer"], shown["purpose"]) == ("REQUESTED", "o2", "planning")
    ended = client.call(
        "POST",
        f"/negotiations/{provider_pid}/termination",
        {
            "@context": context,
            "@type": "ContractNegotiationTerminationMessage",
            "providerPid": provider_pid,
            "consumerPid": consumer_pid,
            "reason": ["found it elsewhere"],
        },
    )
    assert ended.status == 200, ended.body
    assert ended.body["state"] == "TERMINATED"
