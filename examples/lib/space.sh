# Sourced by the examples' run.sh scripts: bring a data space up with the CLI, exactly as
# a person would (tds pki init, tds init, tds serve, tds registry enrol), on free loopback
# ports, and stop it again on exit.
#   space_up WORKDIR ID:ROLE ...    (the operator is always added; an auditor runs no server)
# An example that defines configure_connector ID has it called after ID.toml is written and
# before the connector starts (to add, say, the [sources] a provider publishes from).
# shellcheck shell=bash
set -euo pipefail
tds=${TDS:-tds}
pids=()

step() { printf '\n== %s\n' "$*"; }

port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# Run a command that must be refused; print its message. Exit 1 if it succeeds.
refused() {
  local out
  if out=$("$@" 2>&1); then
    printf 'UNEXPECTED: this should have been refused:\n%s\n' "$out"
    exit 1
  fi
  printf 'refused, as expected: %s\n' "$out"
}

# Fail unless TEXT contains PATTERN (a fixed string).
must_contain() {
  if ! grep -qF -- "$2" <<<"$1"; then
    printf 'UNEXPECTED: expected %s in:\n%s\n' "$2" "$1"
    exit 1
  fi
}

# A JSON field from stdin: json_field KEY (dots for nesting, digits for list items).
json_field() {
  python3 -c '
import json, sys
value = json.load(sys.stdin)
for part in sys.argv[1].split("."):
    value = value[int(part)] if part.isdigit() else value[part]
print(value)' "$1"
}

# A date N days from today (UTC), YYYY-MM-DD.
days_from_now() {
  python3 -c 'import datetime as d, sys; print((d.datetime.now(d.timezone.utc) + d.timedelta(days=int(sys.argv[1]))).date())' "$1"
}

space_up() {
  local work=$1; shift
  mkdir -p "$work" && cd "$work"
  local args=() p id role addr
  for p in "$@"; do args+=(--participant "$p"); done
  $tds pki init --space city --out pki "${args[@]}" --force >/dev/null
  REG=127.0.0.1:$(port)
  $tds init --pki pki --participant operator --listen "$REG" --out operator.toml --force >/dev/null
  $tds serve --config operator.toml 2>operator.log & pids+=($!)
  until $tds registry list --config operator.toml >/dev/null 2>&1; do sleep 0.2; done
  for p in "$@"; do
    id=${p%%:*}; role=${p#*:}
    if [ "$role" = auditor ]; then
      $tds init --pki pki --participant "$id" --registry "$REG" --out "$id.toml" --force >/dev/null
      $tds registry enrol --config operator.toml --participant "$id" --pki pki >/dev/null
      continue
    fi
    addr=127.0.0.1:$(port)
    # Product sources are read only from the data directory and the example's own
    # directory (transfer.source_roots).
    $tds init --pki pki --participant "$id" --listen "$addr" --registry "$REG" \
      --source-root "$here" --out "$id.toml" --force >/dev/null
    $tds registry enrol --config operator.toml --participant "$id" --address "$addr" \
      --pki pki >/dev/null
    if declare -F configure_connector >/dev/null; then configure_connector "$id"; fi
    $tds serve --config "$id.toml" 2>"$id.log" & pids+=($!)
  done
  for p in "$@"; do
    id=${p%%:*}; role=${p#*:}
    [ "$role" = auditor ] && continue
    until $tds status --config "$id.toml" --json 2>/dev/null \
      | grep -q '"revocation_list_issued_at": [1-9]'; do sleep 0.2; done
  done
  echo "Space 'city' is up in $work: registry at $REG; configs ./ID.toml, logs ./ID.log"
}
