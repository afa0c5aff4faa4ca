#!/usr/bin/env bash
# A registry and two connectors started as a person would, from certs-dev:
# enrol, look each other up, call over mutual TLS, revoke, and see the refusal.
# Usage: bash examples/two-connectors/run.sh [WORKDIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
tds=${TDS:-tds}
work=${1:-$(mktemp -d -t tds-two-connectors-XXXX)}
mkdir -p "$work" && cd "$work"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
REG=127.0.0.1:$(port); GOV=127.0.0.1:$(port); ENT=127.0.0.1:$(port)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

step "1. Configs for the operator, city-gov and ent-a from certs-dev"
$tds init --pki "$repo/certs-dev" --participant operator --listen "$REG" --out operator.toml --force
$tds init --pki "$repo/certs-dev" --participant city-gov --listen "$GOV" --registry "$REG" --out city-gov.toml --force
$tds init --pki "$repo/certs-dev" --participant ent-a --listen "$ENT" --registry "$REG" --out ent-a.toml --force

step "2. Start the registry"
$tds serve --config operator.toml 2>operator.log & pids+=($!)
until $tds registry list --config operator.toml >/dev/null 2>&1; do sleep 0.3; done

step "3. The operator enrols both participants"
$tds registry enrol --config operator.toml --participant city-gov --address "$GOV" --pki "$repo/certs-dev"
$tds registry enrol --config operator.toml --participant ent-a --address "$ENT" --pki "$repo/certs-dev"

step "4. Start both connectors"
$tds serve --config city-gov.toml 2>city-gov.log & pids+=($!)
$tds serve --config ent-a.toml 2>ent-a.log & pids+=($!)
until $tds status --config ent-a.toml --json 2>/dev/null | grep -q '"revocation_list_issued_at": [1-9]'; do sleep 0.3; done
until $tds status --config city-gov.toml --json 2>/dev/null | grep -q '"revocation_list_issued_at": [1-9]'; do sleep 0.3; done

step "5. Each looks the other up in the registry and calls it over mTLS"
$tds ping city-gov --config ent-a.toml
$tds ping ent-a --config city-gov.toml
$tds registry list --config ent-a.toml

step "6. The operator revokes ent-a; city-gov refuses it once its list refreshes"
$tds registry revoke --config operator.toml --participant ent-a --reason "example: left the space"
if $tds ping city-gov --config ent-a.toml; then
    echo "UNEXPECTED: a revoked participant was served" >&2
    exit 1
fi
echo "refused, as expected"
step "Done. Configs, databases and logs are in $work"
