#!/usr/bin/env bash
# Runs every fuzz target for SECONDS seconds each, one after another.
#
#   fuzz/run.sh SECONDS          (CI: fuzz/run.sh 30)
#
# Works on the stable toolchain: cargo-fuzz needs nightly-only rustc flags
# (-Zsanitizer=address, sanitizer coverage), which RUSTC_BOOTSTRAP=1 unlocks
# on stable; the address sanitizer runtime ships with stable's rust-std.
# Installs cargo-fuzz from crates.io if it is missing. Builds once (release,
# with debug assertions and overflow checks, ASan), then runs each target on
# one worker, starting from fuzz/seeds/<target> and growing
# fuzz/corpus/<target> (git-ignored). Exits non-zero on any crash, leak,
# timeout or out-of-memory; its input is kept in fuzz/artifacts/<target>/.
#
# Environment: FUZZ_TOOLCHAIN (default stable), FUZZ_TARGETS (default: all
# four), FUZZ_TIMEOUT (seconds one input may take, default 25),
# FUZZ_SANITIZER (default address; "none" if the ASan runtime is missing).
set -euo pipefail

seconds="${1:-}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
    echo "usage: $0 SECONDS" >&2
    exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

targets=(${FUZZ_TARGETS:-route_match strict_json redact token_parse})
sanitizer="${FUZZ_SANITIZER:-address}"
input_timeout="${FUZZ_TIMEOUT:-25}"

cargo=(cargo)
if command -v rustup >/dev/null 2>&1; then
    cargo=(cargo "+${FUZZ_TOOLCHAIN:-stable}")
fi
export RUSTC_BOOTSTRAP=1

if ! "${cargo[@]}" fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    "${cargo[@]}" install cargo-fuzz --locked
fi
"${cargo[@]}" --version
"${cargo[@]}" fuzz --version

build_flags=(--sanitizer "$sanitizer")
start=$(date +%s)
echo "== building the fuzz targets"
"${cargo[@]}" fuzz build "${build_flags[@]}"
echo "== built in $(($(date +%s) - start)) s"

logs="$root/fuzz/target/logs"
mkdir -p "$logs"
summary=()
failed=()
for target in "${targets[@]}"; do
    corpus="fuzz/corpus/$target"
    mkdir -p "$corpus"
    log="$logs/$target.log"
    echo "== $target: fuzzing for $seconds s"
    status=0
    "${cargo[@]}" fuzz run "${build_flags[@]}" "$target" "$corpus" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" \
        -timeout="$input_timeout" \
        -dict="fuzz/dicts/$target.dict" \
        -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    corp=$(sed -n 's/.*DONE .* corp: \([0-9]*\)\/.*/\1/p' "$log" | tail -n 1)
    line="$target: ${execs:-?} execs, ${rate:-?} exec/s, corpus ${corp:-?} inputs"
    if [ "$status" -ne 0 ]; then
        line="$line: FAILED (exit $status)"
        failed+=("$target")
        # The report: the panic message or sanitizer summary, and the input.
        grep -E -A12 "panicked at|ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)" "$log" | head -n 60 || true
        grep -E "Test unit written to|artifact_prefix" "$log" || true
        tail -n 5 "$log"
    fi
    echo "$line"
    summary+=("$line")
done

echo "== fuzzing summary ($seconds s per target; logs in fuzz/target/logs)"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzzing FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "fuzzing passed: ${#targets[@]} targets, no crash"
