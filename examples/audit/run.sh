#!/usr/bin/env bash
# The auditor (监管方): fetch every connector's log, cosign its checkpoint, verify it
# offline, reconcile a provider's and a consumer's receipts, and catch an altered entry.
# Usage: bash examples/audit/run.sh [WORKDIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../lib/space.sh"
space_up "${1:-$(mktemp -d -t tds-audit-XXXX)}" ent-a:enterprise ent-b:enterprise auditor:auditor

step "1. Something to audit: ent-a sells ent-b a data set, ent-b pulls it once"
$tds product add --config ent-a.toml "$here/logistics-index.toml"
agreement=$($tds negotiate --config ent-b.toml --provider ent-a --product logistics-index \
  --offer sale --purpose logistics-planning --wait 20 --json | json_field agreement_id)
$tds transfer --config ent-b.toml --agreement "$agreement" --out logistics.jsonl | tail -1

step "2. The auditor fetches every log, cosigning each connector's newest checkpoint"
for who in operator ent-a ent-b; do
  $tds audit fetch --config auditor.toml --connector "$who" --out "exports/$who"
done

step "3. Each export verifies offline: tree, signatures, checkpoints, cosignatures"
for who in operator ent-a ent-b; do
  $tds audit verify "exports/$who"
done

step "4. ent-a's and ent-b's logs hold the same dual-signed receipt"
out=$($tds audit reconcile exports/ent-a exports/ent-b)
echo "$out"; must_contain "$out" "1 receipts match"

step "5. One altered entry in a copy of ent-b's export is detected"
cp -r exports/ent-b exports/ent-b-altered
python3 - exports/ent-b-altered/entries.jsonl <<'PY'
import sys
path = sys.argv[1]
lines = open(path, "rb").read().splitlines(keepends=True)
for i, line in enumerate(lines):
    if b'"transfer.received"' in line:
        lines[i] = line.replace(b'"size":', b'"size":1', 1)  # claim more bytes arrived
        break
open(path, "wb").write(b"".join(lines))
PY
out=$(refused $tds audit verify exports/ent-b-altered)
echo "$out"; must_contain "$out" "index"
echo
echo "Audit example finished: every step as described."
