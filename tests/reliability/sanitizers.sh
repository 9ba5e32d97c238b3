#!/usr/bin/env bash
# tests/reliability/sanitizers.sh — pgdeploy and its tests under AddressSanitizer + UndefinedBehaviorSanitizer.
#
#   tests/reliability/sanitizers.sh            build build-asan (-DPGDEPLOY_SANITIZE=ON), run the Catch2 unit tests,
#                                              then the parsing-heavy pytest suites against the ASan binary
#   SANITIZE_BUILD_DIR=DIR ...                 another build directory (default: build-asan)
#   SANITIZE_SKIP_E2E=1 ...                    unit tests only (no PostgreSQL server needed)
#
# Not registered in ctest (it builds a second tree: minutes on 2 cores); docs/reliability.md has its last result.
# The pytest part needs a server: the PG* environment when PGHOST/PGPORT are set, otherwise a throwaway cluster from
# pg_virtualenv. Any sanitizer report makes the binary exit non-zero (halt_on_error, -fno-sanitize-recover), which
# fails the test that ran it.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BUILD=${SANITIZE_BUILD_DIR:-$ROOT/build-asan}
JOBS=${JOBS:-2}

export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:abort_on_error=0:detect_leaks=1:exitcode=99:strict_string_checks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1:exitcode=98}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$ROOT/tests/reliability/lsan.supp:print_suppressions=0}

echo "== configure + build ($BUILD, -j$JOBS)"
cmake -S "$ROOT" -B "$BUILD" -DPGDEPLOY_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD" -j"$JOBS" --target pgdeploy unit_tests

echo "== unit tests under ASan/UBSan"
"$BUILD/unit_tests"

if [ "${SANITIZE_SKIP_E2E:-0}" = 1 ]; then
  echo "sanitizers: unit tests passed (e2e part skipped on request)"
  exit 0
fi

PY=python3
python3 -c 'import pytest, psycopg2' >/dev/null 2>&1 || PY=/usr/bin/python3
export PGDEPLOY_BIN=$BUILD/pgdeploy PGDEPLOY_SOURCE_DIR=$ROOT PGDEPLOY_BUILD_DIR=$BUILD
export LANG=C.UTF-8 LC_ALL=C.UTF-8
unset PGDEPLOY_RELIABILITY_STATS   # the figures of the run that called us are not ours to add to
# The suites that feed the most inputs to the binary: every bad argument, file and config, and the CLI e2e tests.
suites=(tests/reliability/test_bad_input.py tests/reliability/test_privileges.py)
for f in tests/e2e/test_cli_commands.py tests/e2e/test_cli_failures.py; do
  [ -f "$f" ] && suites+=("$f")
done
run_suites() {
  local s rc=0
  for s in "${suites[@]}"; do
    echo "== $s against the ASan binary"
    (cd "$(dirname "$s")" && $PY -m pytest -q -p no:cacheprovider "$(basename "$s")") || rc=1
  done
  return $rc
}
if [ -n "${PGHOST:-}" ] && [ -n "${PGPORT:-}" ]; then
  run_suites
else
  export -f run_suites
  export PY
  SUITES="${suites[*]}" pg_virtualenv -v 15 bash -c 'suites=($SUITES); run_suites'
fi
echo "sanitizers: all passed"
