#!/usr/bin/env bash
# An enterprise publishes its orders straight from PostgreSQL, customer fields masked; a
# partner pulls them. Needs PostgreSQL (TDS_EXAMPLE_POSTGRES_URL, default
# postgresql://postgres@127.0.0.1:5432/test); creates the table example_orders there.
# Usage: bash examples/orders-postgres/run.sh [WORKDIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../lib/space.sh"
url=${TDS_EXAMPLE_POSTGRES_URL:-postgresql://postgres@127.0.0.1:5432/test}

step "1. The shop's database: an orders table in PostgreSQL"
python3 "$here/create-orders.py" "$url"

# ent-a's configuration names the shop's database before its connector starts.
configure_connector() {
  if [ "$1" = ent-a ]; then
    printf '\n' >>ent-a.toml
    sed "s|^url = .*|url = \"$url\"|" "$here/sources.toml" >>ent-a.toml
  fi
}
space_up "${1:-$(mktemp -d -t tds-orders-XXXX)}" ent-a:enterprise ent-b:enterprise

step "2. ent-a's configuration names the database as the source connection 'shop'"
grep -A3 '^\[sources.shop\]' ent-a.toml

step "3. ent-a publishes orders: the query is checked, the fields are its output columns"
$tds product add --config ent-a.toml "$here/orders.toml"

step "4. A query that would write is refused at publish"
out=$(refused $tds product add --config ent-a.toml "$here/writes.toml")
echo "$out"; must_contain "$out" "must be a SELECT"

step "5. ent-b contracts for the orders and pulls them"
agreement=$($tds negotiate --config ent-b.toml --provider ent-a --product orders \
  --offer analytics --purpose demand-forecasting --wait 20 --json | json_field agreement_id)
out=$($tds transfer --config ent-b.toml --agreement "$agreement" --out orders.csv)
echo "$out"; must_contain "$out" "(verified)"

step "6. What ent-b holds: no phone numbers, names as pseudonyms, postcodes cut to 3 digits"
cat orders.csv
received=$(cat orders.csv)
must_contain "$received" "order_id,ordered_on,customer_name,postcode,city,item,amount"
must_contain "$received" ",200,Shanghai,desk lamp,129.00"
for secret in 13800138 "Li Wei" 张敏 200030; do
  if grep -qF -- "$secret" orders.csv; then echo "UNEXPECTED: $secret left ent-a"; exit 1; fi
done
echo
echo "Orders from PostgreSQL example finished: every step as described."
