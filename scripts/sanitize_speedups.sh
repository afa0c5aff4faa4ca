#!/usr/bin/env bash
# The delivery's C code (connector/_speedups.c) under AddressSanitizer and
# UndefinedBehaviorSanitizer: builds an instrumented copy of the extension into a scratch
# copy of the package and runs its tests against it (the installed build is not touched).
# Usage: bash scripts/sanitize_speedups.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cp -r connector "$scratch/connector"
rm -f "$scratch"/connector/_speedups*.so
include=$("$python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
suffix=$("$python" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
gcc -g -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined \
    -shared -fPIC -I"$include" connector/_speedups.c -o "$scratch/connector/_speedups$suffix" -lcrypto
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
    ASAN_OPTIONS=detect_leaks=0 PYTHONMALLOC=malloc TDS_REQUIRE_SPEEDUPS=1 \
    "$python" - "$scratch" "$@" <<'PY'
import sys

# An editable install's finder would map "connector" back to the source tree (and its
# uninstrumented build): drop it, so the scratch copy on sys.path is the one imported.
sys.meta_path[:] = [
    f for f in sys.meta_path
    if not (getattr(f, "__module__", "") or type(f).__module__).startswith("__editable__")
]
sys.path.insert(0, sys.argv[1])
import connector._speedups  # noqa: E402

assert connector._speedups.__file__.startswith(sys.argv[1]), connector._speedups.__file__
print("== testing", connector._speedups.__file__)
import pytest  # noqa: E402

tests = [
    "tests/unit/test_speedups.py",
    "tests/sources/test_delivered_bytes.py",
    "tests/sources/test_delivered.py",
]
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", *tests, *sys.argv[2:]]))
PY
