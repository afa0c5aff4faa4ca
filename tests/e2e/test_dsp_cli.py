"""The DSP binding as users run it: `tds serve` with a `[dsp]` block in the provider's
configuration; a client written from the DSP specification, holding only what a foreign
connector holds (a certificate of the space CA and a membership token from the registry),
reads the catalog and negotiates with the tds provider; `tds negotiations` on the provider
shows the same negotiation, through to its termination. Then a second tds connector, with
a `[dsp]` block of its own, negotiates with the provider over the binding alone
(`tds negotiate --dsp URL`) to FINALIZED."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.config import load_config
from connector.identity.names import participant_dns_name
from connector.node.clients import registry_client
from tests.e2e.test_cli import Served, free_port, tds
from tests.support.dsp_client import DspClient
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
