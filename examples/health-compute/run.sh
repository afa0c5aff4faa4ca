#!/usr/bin/env bash
# Hospital admissions used but not seen (可用不可见): the health commission offers them as
# compute-only important data; a research institute gets counts and mean cost per district
# and age band under k = 10 and ε, never a row. A copy, a question by patient id, a
# differencing pair and the question after the budget is spent are refused.
# Usage: bash examples/health-compute/run.sh [WORKDIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../lib/space.sh"
space_up "${1:-$(mktemp -d -t tds-health-compute-XXXX)}" \
  health-commission:government institute:enterprise auditor:auditor

# Negotiate an offer as the institute; the commission approves (important data).
agree() {
  local pid provider_pid
  pid=$($tds negotiate --config institute.toml --provider health-commission \
    --product admissions --offer "$1" --purpose health-research --json | json_field pid)
  until $tds negotiations list --config health-commission.toml --pending | grep -q admissions; do
    sleep 0.2
  done
  provider_pid=$($tds negotiations list --config health-commission.toml --pending --json \
    | json_field 0.pid)
  $tds negotiations approve "$provider_pid" --config health-commission.toml >/dev/null
  $tds negotiations show "$pid" --config institute.toml --wait 30 --json | json_field agreement_id
}

step "1. The health commission publishes admissions: compute-only important data"
$tds product add --config health-commission.toml "$here/admissions.toml"

step "2. The institute sees what it may ask in the commission's catalog"
out=$($tds catalog list --provider health-commission --config institute.toml)
echo "$out"; must_contain "$out" "offer aggregate: compute only, k=10, by age_band, district, year"

step "3. The institute contracts for exact answers; the commission approves"
exact=$(agree aggregate)
echo "agreement $exact"

step "4. A copy is refused: only answers leave"
out=$(refused $tds transfer --config institute.toml --agreement "$exact" --out admissions.csv)
echo "$out"; must_contain "$out" copy_not_offered

step "5. Counts and mean cost per district and age band"
out=$($tds compute --config institute.toml --agreement "$exact" \
  "SELECT district, age_band, count(*), avg(cost) FROM product WHERE year = 2026 GROUP BY district, age_band")
echo "$out"; must_contain "$out" "16 groups shown, 2 suppressed"

step "6. A question grouping by patient id is refused"
out=$(refused $tds compute --config institute.toml --agreement "$exact" \
  "SELECT patient_id, count(*) FROM product GROUP BY patient_id")
echo "$out"; must_contain "$out" "patient_id is not a declared dimension"

step "7. Two questions differing by one filter cannot reveal one person"
out=$($tds compute --config institute.toml --agreement "$exact" \
  "SELECT count(*), sum(cost) FROM product")
echo "$out"; must_contain "$out" "1 group shown, none suppressed"
out=$(refused $tds compute --config institute.toml --agreement "$exact" \
  "SELECT count(*), sum(cost) FROM product WHERE age_band <> '90+'")
echo "$out"; must_contain "$out" "separates fewer than 10 rows"

step "8. With differential privacy each answer spends ε; the budget runs out"
private=$(agree private)
question="SELECT district, count(*), avg(cost) FROM product GROUP BY district"
for left in 3 0; do
  out=$($tds compute --config institute.toml --agreement "$private" "$question")
  echo "$out"; must_contain "$out" "4 groups shown"
  must_contain "$out" "ε spent 3 (differential privacy), $left left"
done
out=$(refused $tds compute --config institute.toml --agreement "$private" "$question")
echo "$out"; must_contain "$out" "privacy_budget_exhausted (ε 6 spent, 0 left, 3 asked)"

step "9. The commission's metering shows the answers and the ε spent"
out=$($tds report metering --config health-commission.toml)
echo "$out"; must_contain "$out" "2 answers, ε 6 of 6 spent (0 left)"

step "10. The auditor reconciles the computation receipts in both logs"
for who in health-commission institute; do
  $tds audit fetch --config auditor.toml --connector "$who" --out "exports/$who" >/dev/null
  $tds audit verify "exports/$who"
done
out=$($tds audit reconcile exports/health-commission exports/institute)
echo "$out"; must_contain "$out" "4 receipts match (4 of them computations)"
echo
echo "Health commission compute example finished: every step as described."
