#!/usr/bin/env bash
# tests/fuzz/short-run.sh BUILD_DIR [SECONDS]: the default test run's short fuzzing pass. Builds the libFuzzer targets
# (tests/fuzz/fuzz_*.cpp: the migration-file loader, the directive parser, the watcher's config parser) with clang++,
# ASan and UBSan into BUILD_DIR, then runs each for SECONDS (default 15) from its seed corpus. Any crash, leak or
# sanitizer report fails the run. The long run is documented in docs/reliability.md.
set -euo pipefail
build=${1:?usage: short-run.sh BUILD_DIR [SECONDS]}
seconds=${2:-15}
src=$(cd "$(dirname "$0")/../.." && pwd)
command -v clang++ >/dev/null || { echo "short-run: clang++ is missing (scripts/setup installs clang)" >&2; exit 2; }
cmake -S "$src" -B "$build" -DCMAKE_CXX_COMPILER=clang++ -DPGDEPLOY_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DBUILD_TESTING=ON >/dev/null
targets=()
for f in "$src"/tests/fuzz/fuzz_*.cpp; do targets+=("$(basename "$f" .cpp)"); done
cmake --build "$build" -j"$(nproc)" --target "${targets[@]}" >/dev/null
ran=0
for t in "${targets[@]}"; do
  corpus="$build/fuzz-corpus/$t"; mkdir -p "$corpus"
  seeds="$src/tests/fuzz/corpus/${t#fuzz_}"
  echo "fuzz: $t for ${seconds}s"
  args=(-max_total_time="$seconds" -max_len=4096 -print_final_stats=1 "$corpus")
  [ -d "$seeds" ] && args+=("$seeds")
  status=0
  "$build/$t" "${args[@]}" >"$build/$t.log" 2>&1 || status=$?
  grep -E '^(stat::number_of_executed_units|==[0-9]+==ERROR|SUMMARY)' "$build/$t.log" || true
  if [ $status -ne 0 ]; then
    echo "fuzz: $t FAILED (exit $status); its output: $build/$t.log" >&2
    tail -n 40 "$build/$t.log" >&2
    exit 1
  fi
  ran=$((ran + 1))
done
echo "fuzz: $ran targets ran without a crash"
