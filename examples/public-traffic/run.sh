#!/usr/bin/env bash
# Public traffic data under authorised operation (公共数据授权运营): only an operator holding
# a grant, only within its scope, only after the government approves, masked; disclosed.
# Usage: bash examples/public-traffic/run.sh [WORKDIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../lib/space.sh"
space_up "${1:-$(mktemp -d -t tds-public-traffic-XXXX)}" \
  city-gov:government ent-a:enterprise ent-b:enterprise

step "1. city-gov publishes traffic-flow and registers it as public data"
$tds product add --config city-gov.toml "$here/traffic-flow.toml"
$tds product register --config city-gov.toml traffic-flow --public

step "2. The operator grants ent-a authorised operation: scope traffic, 3 years"
$tds registry grant --config operator.toml --participant ent-a --scope traffic \
  --purposes traffic-analytics --end "$(days_from_now 1095)" --body "City Big Data Bureau"
$tds status --config ent-a.toml --refresh >/dev/null   # ent-a's token now carries the grant
$tds registry grants --config ent-b.toml

step "3. Members find it: in the registry's index, and in city-gov's own catalog"
out=$($tds catalog search traffic --config ent-b.toml)
echo "$out"; must_contain "$out" traffic-flow
out=$($tds catalog list --provider city-gov --config ent-a.toml)
echo "$out"; must_contain "$out" traffic-flow

step "4. ent-b, which holds no grant, asks for the data"
out=$(refused $tds negotiate --config ent-b.toml --provider city-gov --product traffic-flow \
  --offer operation --purpose traffic-analytics --wait 20)
echo "$out"; must_contain "$out" no_operation_grant

step "5. ent-a asks for advertising, a purpose outside its grant"
out=$(refused $tds negotiate --config ent-a.toml --provider city-gov --product traffic-flow \
  --offer operation --purpose advertising --wait 20)
echo "$out"; must_contain "$out" purpose_outside_grant

step "6. ent-a asks within its grant, then withdraws before city-gov decides"
consumer_pid=$($tds negotiate --config ent-a.toml --provider city-gov --product traffic-flow \
  --offer operation --purpose traffic-analytics --json | json_field pid)
until $tds negotiations list --config city-gov.toml --pending | grep -q traffic-flow; do sleep 0.2; done
$tds negotiations terminate "$consumer_pid" --config ent-a.toml --reason "asked too early"
while $tds negotiations list --config city-gov.toml --pending | grep -q traffic-flow; do sleep 0.2; done
$tds negotiations list --config city-gov.toml --state TERMINATED
out=$(refused $tds negotiations approve "$($tds negotiations list --config city-gov.toml \
  --state TERMINATED --json | json_field 0.pid)" --config city-gov.toml)
echo "$out"; must_contain "$out" TERMINATED

step "7. ent-a asks again: important data waits for city-gov's approval"
consumer_pid=$($tds negotiate --config ent-a.toml --provider city-gov --product traffic-flow \
  --offer operation --purpose traffic-analytics --json | json_field pid)
until $tds negotiations list --config city-gov.toml --pending | grep -q traffic-flow; do sleep 0.2; done
$tds negotiations list --config city-gov.toml --pending
provider_pid=$($tds negotiations list --config city-gov.toml --pending --json | json_field 0.pid)
$tds negotiations approve "$provider_pid" --config city-gov.toml
agreement=$($tds negotiations show "$consumer_pid" --config ent-a.toml --wait 30 --json \
  | json_field agreement_id)
$tds agreements show "$agreement" --config ent-a.toml | grep -E "operation_grant|purpose|state" || true

step "8. ent-a pulls the table: plates pseudonymised, speeds generalised"
$tds transfer --config ent-a.toml --agreement "$agreement" --out traffic-flow-received.csv
head -4 traffic-flow-received.csv
if grep -q '沪' traffic-flow-received.csv; then echo "UNEXPECTED: a plate left in clear"; exit 1; fi

step "9. city-gov's disclosure report lists the operation"
out=$($tds report disclosure --config city-gov.toml --period "$(date -u +%Y)")
echo "$out"; must_contain "$out" "ent-a: 1 transfers"
echo
echo "Public traffic example finished: every step as described."
