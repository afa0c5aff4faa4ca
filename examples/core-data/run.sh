#!/usr/bin/env bash
# Core data never leaves: publishing a core-grade product is refused, and nothing changes.
# Usage: bash examples/core-data/run.sh [WORKDIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../lib/space.sh"
space_up "${1:-$(mktemp -d -t tds-core-XXXX)}" city-gov:government

step "1. city-gov tries to publish its core population registry"
out=$(refused $tds product add --config city-gov.toml "$here/core-registry.toml")
echo "$out"; must_contain "$out" "core"

step "2. Nothing was published"
out=$($tds product list --config city-gov.toml)
echo "$out"
if grep -q population-core <<<"$out"; then echo "UNEXPECTED: core product listed"; exit 1; fi
echo
echo "Core data example finished: every step as described."
