#!/usr/bin/env bash
# Flood early warning (防汛): the meteorological bureau streams rain-gauge readings over NATS;
# the water authority and the city-management bureau receive them live under 24-hour
# emergency agreements, station keepers' names masked; the city-management bureau's
# agreement is revoked mid-stream and its delivery stops within a second; the auditor
# reconciles every window. The same story as the flood scenario of `tds demo`, with the
# same gauges (connector/demo/gauges.py), step by step with the CLI.
# Needs NATS with JetStream (TDS_EXAMPLE_NATS_URL, default nats://127.0.0.1:4222).
# Usage: bash examples/flood-warning/run.sh [WORKDIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../lib/space.sh"
nats_url=${TDS_EXAMPLE_NATS_URL:-nats://127.0.0.1:4222}

# The bureau's configuration names its NATS server, and receipts every 20 readings (a
# window also closes after window_seconds: 10 s, so that a gauge feed slowed by a busy
# machine still closes its windows by count, 15 of them for 300 readings).
configure_connector() {
  if [ "$1" = met-bureau ]; then
    printf '\n[sources.gauges]\nurl = "%s"\n' "$nats_url" >>met-bureau.toml
    python3 - met-bureau.toml <<'PY'
import sys, pathlib
p = pathlib.Path(sys.argv[1])
p.write_text(p.read_text().replace("window_messages = 1000", "window_messages = 20")
             .replace("window_seconds = 5.0", "window_seconds = 10.0"))
PY
  fi
}
space_up "${1:-$(mktemp -d -t tds-flood-XXXX)}" met-bureau:government \
  water:government city-mgmt:government auditor:auditor

gauges() { python3 -m connector.demo.gauges "$@"; }  # the demo's twelve rain gauges

step "1. The bureau's gauges publish on a JetStream subject; it publishes the feed"
subject=$(gauges create "$nats_url")
now_ns=$(python3 -c 'import time; print(time.time_ns())')
hour=3600000000000
sed -e "s/@SUBJECT@/$subject/" -e "s/@FROM@/$now_ns/" \
  -e "s/@UNTIL@/$((now_ns + 24 * hour))/" "$here/rain-gauges.toml" >rain-gauges.toml
$tds product add --config met-bureau.toml rain-gauges.toml

step "2. The water authority and the city-management bureau sign 24-hour emergency agreements"
water=$($tds negotiate --config water.toml --provider met-bureau --product rain-gauges \
  --offer emergency --purpose flood-warning --wait 20 --json | json_field agreement_id)
city=$($tds negotiate --config city-mgmt.toml --provider met-bureau --product rain-gauges \
  --offer emergency --purpose flood-warning --wait 20 --json | json_field agreement_id)
echo "water: $water"; echo "city-mgmt: $city"

step "3. Both subscribe; the gauges report 300 readings at 50 a second"
$tds subscribe --config water.toml --agreement "$water" --json >water-subscribe.json \
  2>water-subscribe.err & water_pid=$!
$tds subscribe --config city-mgmt.toml --agreement "$city" --json >city-subscribe.json \
  2>city-subscribe.err & city_pid=$!
gauges publish "$nats_url" "$subject" 300 50 & gauges_pid=$!
kept() {  # the sequence a consumer has kept (countersigned windows)
  $tds data list --config "$1.toml" --json | python3 -c '
import json, sys
print(max([r["kept_sequence"] for r in json.load(sys.stdin) if r.get("kind") == "stream"] + [0]))'
}
until [ "$(kept city-mgmt)" -ge 60 ]; do sleep 0.1; done
echo "city-mgmt has kept $(kept city-mgmt) readings, water $(kept water)"
# The keepers' names, as each bureau holds them: pseudonyms, and not the same ones.
out=$(python3 - data/water/holdings/streams data/city-mgmt/holdings/streams <<'PY'
import json, pathlib, sys
held = [{json.loads(line)["record"]["operator"] for f in pathlib.Path(d).glob("*/0*.jsonl")
         for line in f.read_text().splitlines()} for d in sys.argv[1:]]
names = set().union(*held)
masked = all(len(n) == 64 and set(n) <= set("0123456789abcdef") for n in names)
print(f"{'masked' if masked else 'NOT masked'}: {len(held[0])} and {len(held[1])} "
      f"pseudonyms, {len(held[0] & held[1])} shared")
PY
)
echo "keepers' names at water and city-mgmt: $out"; must_contain "$out" "masked: 12 and 12 pseudonyms, 0 shared"

step "4. The bureau revokes the city-management bureau's agreement mid-stream"
$tds agreements revoke "$city" --config met-bureau.toml --reason "emergency role handed over"
set +e; wait "$city_pid"; city_status=$?; set -e
out=$(cat city-subscribe.err)
echo "city-mgmt's tds subscribe ended (exit $city_status): ${out##*$'\r'}"
must_contain "$out" agreement_revoked

step "5. The water authority keeps receiving until the gauges stop; Ctrl-C suspends it"
wait "$gauges_pid"
until [ "$(kept water)" -ge 300 ]; do sleep 0.3; done
kill -INT "$water_pid"; wait "$water_pid"
cat water-subscribe.json
head -2 "$(ls -d data/water/holdings/streams/*/ | head -1)"00000000.jsonl
if grep -q "Station keeper" data/water/holdings/streams/*/*.jsonl; then
  echo "UNEXPECTED: a keeper's name left the bureau"; exit 1
fi

step "6. What each holds: water 300 readings; city-mgmt deleted its copy on revocation"
$tds data list --config water.toml
out=$($tds data list --config city-mgmt.toml --all)
echo "$out"; must_contain "$out" "(deleted)"

step "7. The auditor fetches both logs and reconciles every window receipt"
for who in met-bureau water city-mgmt; do
  $tds audit fetch --config auditor.toml --connector "$who" --out "exports/$who" >/dev/null
  $tds audit verify "exports/$who" | head -1
done
out=$($tds audit reconcile exports/met-bureau exports/water)
echo "$out"; must_contain "$out" "of them stream windows"
$tds audit reconcile exports/met-bureau exports/city-mgmt
# How fast the revocation stopped city-mgmt's delivery, from the two logs the auditor holds.
out=$(python3 - exports/met-bureau exports/city-mgmt "$city" <<'PY'
import json, sys
def first(export, kind):
    for line in open(f"{export}/entries.jsonl"):
        e = json.loads(line)
        if e["kind"] == kind and e["data"].get("agreement") == sys.argv[3]:
            return e
revoked = first(sys.argv[1], "agreement.revoked")
stopped = first(sys.argv[2], "stream.stopped")
ms = stopped["time_ms"] - revoked["time_ms"]
print(f"city-mgmt's stream.stopped {ms} ms after the bureau's agreement.revoked "
      f"({'within a second' if ms < 1000 else 'TOO SLOW'}; {stopped['data']['received']} "
      "readings received)")
PY
)
echo "$out"; must_contain "$out" "within a second"
echo
echo "Flood warning example finished: every step as described."
