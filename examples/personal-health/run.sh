#!/usr/bin/env bash
# Personal health data under separate consent (PIPL art. 23): refused without consent,
# released with it, refused again and deleted at the recipient once it is withdrawn.
# Usage: bash examples/personal-health/run.sh [WORKDIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../lib/space.sh"
space_up "${1:-$(mktemp -d -t tds-personal-health-XXXX)}" alice:individual hospital:enterprise

step "1. alice publishes her health records as personal data"
$tds product add --config alice.toml "$here/health-records.toml"

step "2. The hospital asks for them: there is no consent"
out=$(refused $tds negotiate --config hospital.toml --provider alice --product health-records \
  --offer care --purpose treatment --wait 20)
echo "$out"; must_contain "$out" no_consent

step "3. alice consents: to the hospital, for treatment, her health records, for one year"
consent=$($tds consent grant --config alice.toml --recipient hospital --purposes treatment \
  --method "review by the treating physician; no onward transfer" --categories health \
  --expires "$(days_from_now 365)" --json | json_field id)
$tds consent list --config alice.toml

step "4. The hospital asks again: the contract is finalized, resting on the consent"
agreement=$($tds negotiate --config hospital.toml --provider alice --product health-records \
  --offer care --purpose treatment --wait 20 --json | json_field agreement_id)
$tds agreements show "$agreement" --config hospital.toml | grep -E '"consent"' 

step "5. The hospital pulls the records"
$tds transfer --config hospital.toml --agreement "$agreement" --out records-received.csv
$tds data list --config hospital.toml

step "6. alice withdraws her consent"
$tds consent withdraw "$consent" --config alice.toml --reason "I changed my mind"

step "7. The hospital's next pull is refused"
out=$(refused $tds transfer --config hospital.toml --agreement "$agreement" --out again.csv)
echo "$out"; must_contain "$out" "consent $consent withdrawn"

step "8. The hospital's connector deletes its copy as the signed revocation arrives, and logs it"
for _ in $(seq 1 60); do
  held=$($tds data list --config hospital.toml --json | json_field 0.state 2>/dev/null || echo gone)
  [ "$held" = gone ] && break
  sleep 0.5
done
$tds data list --config hospital.toml --all
mkdir -p audit
$tds audit fetch --config hospital.toml --connector hospital --out audit/hospital --no-cosign >/dev/null
$tds audit show audit/hospital --type holding.deleted
reason=$($tds audit show audit/hospital --type holding.deleted --json | json_field 0.data.reason)
echo "deletion logged by the hospital's connector, reason: $reason"
must_contain "$reason" consent_withdrawn
echo
echo "Personal health example finished: every step as described."
