#!/usr/bin/env bash
# Runs the fuzz targets long: every proptest target over a parser of
# untrusted input (API Gateway events and results, S3 notifications,
# CloudEvents, function names and queries, Function manifests and specs, the
# gateway's routes, the shim's Runtime API and error bodies), one target at a
# time, and prints the executions each made. Not part of CI: `cargo test`
# runs the same targets with 256 cases each.
#
#     tests/fuzz.sh [CASES [FILTER...]]
#
# CASES (default 200000, or $PORCHLIGHT_FUZZ_CASES) is the number of cases per
# target; FILTERs (default: every target) pick targets by test name, as the
# test binaries do (e.g. `tests/fuzz.sh 5000 fuzz_runtime_api fuzz_apigw`).
# Built with --release; PORCHLIGHT_FUZZ_RELEASE=0 uses the debug build instead
# (slower per case, but no release build of every dependency). A failing
# target prints its minimal failing input and the script exits non-zero.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export PORCHLIGHT_FUZZ_CASES=${1:-${PORCHLIGHT_FUZZ_CASES:-200000}}
shift $(($# > 0 ? 1 : 0))
filters=("$@")
[ ${#filters[@]} -gt 0 ] || filters=(fuzz)
profile=(--release)
[ "${PORCHLIGHT_FUZZ_RELEASE:-1}" = 0 ] && profile=()

echo "fuzzing with $PORCHLIGHT_FUZZ_CASES cases per target (${profile[*]:-debug build}; filters: ${filters[*]})"
status=0
run() {
  # The shim's environments log START lines to stdout: keep the targets' lines.
  cargo test "${profile[@]}" --locked "$@" -- --nocapture --test-threads=1 "${filters[@]}" 2>&1 |
    sed -E 's/^test .* \.\.\. (fuzz target)/\1/' |
    grep -E '^fuzz target|panicked at|minimal failing input|^ |^[])]|^error'
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
}
run -p porchlight-gateway --test fuzz_parsers
run -p porchlight-api --test fuzz_spec
run -p porchlight-runtime --lib
if [ "$status" -eq 0 ]; then echo "all fuzz targets passed"; else echo "a fuzz target FAILED"; fi
exit "$status"
