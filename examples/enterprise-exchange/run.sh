#!/usr/bin/env bash
# An enterprise sale: a data set with a 30-day validity window and three transfers; the
# fourth is refused; the provider revokes the agreement and the buyer's copies are deleted.
# Usage: bash examples/enterprise-exchange/run.sh [WORKDIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../lib/space.sh"
space_up "${1:-$(mktemp -d -t tds-enterprise-XXXX)}" ent-a:enterprise ent-b:enterprise

step "1. ent-a publishes logistics-index: valid for 30 days from yesterday, 3 transfers"
now_ns=$(python3 -c 'import time; print(time.time_ns())')
day=86400000000000
sed -e "s/@FROM@/$((now_ns - day))/" -e "s/@UNTIL@/$((now_ns + 30 * day))/" \
  -e "s|path = \"data/|path = \"$here/data/|" \
  "$here/logistics-index.toml" >logistics-index.toml
$tds product add --config ent-a.toml logistics-index.toml

step "2. ent-b buys it; both signatures verify offline"
agreement=$($tds negotiate --config ent-b.toml --provider ent-a --product logistics-index \
  --offer sale --purpose logistics-planning --wait 20 --json | json_field agreement_id)
$tds agreements show "$agreement" --config ent-b.toml --out agreement.json >/dev/null
$tds agreements verify agreement.json --config ent-b.toml

step "3. ent-b pulls three times"
for i in 1 2 3; do
  out=$($tds transfer --config ent-b.toml --agreement "$agreement" --out "logistics-$i.jsonl")
  echo "${out%%$'\n'*}"
done

step "4. The fourth pull is refused"
out=$(refused $tds transfer --config ent-b.toml --agreement "$agreement" --out logistics-4.jsonl)
echo "$out"; must_contain "$out" transfer_limit_reached
$tds report metering --config ent-a.toml

step "5. ent-a revokes the agreement; ent-b holds the signed revocation"
$tds agreements revoke "$agreement" --config ent-a.toml --reason "contract ended early"
until $tds agreements list --config ent-b.toml | grep -q REVOKED; do sleep 0.3; done
$tds agreements list --config ent-b.toml

step "6. ent-b's connector deletes its copies as the signed revocation arrives"
for _ in $(seq 1 60); do
  [ "$($tds data list --config ent-b.toml)" = "(nothing held)" ] && break
  sleep 0.5
done
out=$($tds data list --config ent-b.toml --all)
echo "$out"; must_contain "$out" deleted
[ "$($tds data list --config ent-b.toml)" = "(nothing held)" ] || { echo "UNEXPECTED: copies kept"; exit 1; }
echo
echo "Enterprise exchange example finished: every step as described."
