#!/usr/bin/env bash
# bench/catalog.sh: what the full API catalog costs (BENCHMARKS.md, "The
# catalog"). One command:
#
#   bench/catalog.sh            # about 3 minutes, plus the release build
#
# Runs two gateways side by side, alternately loaded: one with the six
# organization [[routes]] of the first round, one with [catalog] (198 routes
# and their schemas), in front of the same nginx upstream. Reports requests
# per second for a GET and a validated PUT, start-up time to /readyz, and
# idle RSS. Installs nginx and wrk from Debian's packages when missing
# (root). Environment: BENCH_DURATION (seconds per run, default 5),
# BENCH_ROUNDS (default 5), BENCH_JSON (also write the results there).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

missing=()
command -v nginx >/dev/null || missing+=(nginx-light)
command -v wrk >/dev/null || missing+=(wrk)
command -v openssl >/dev/null || missing+=(openssl)
command -v python3 >/dev/null || missing+=(python3)
if (( ${#missing[@]} )); then
    log "installing ${missing[*]} (apt-get)"
    timeout 600 apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

log "building (release)"
(cd "$ROOT" && timeout 1800 cargo build --release --bin polytomic-gateway --example bench_tokens >&2)
TARGET_DIR=$(cd "$ROOT" && timeout 120 cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')

args=(--gateway "$TARGET_DIR/release/polytomic-gateway"
      --bench-tokens "$TARGET_DIR/release/examples/bench_tokens"
      --duration "${BENCH_DURATION:-5}" --rounds "${BENCH_ROUNDS:-5}")
[[ -z "${BENCH_JSON:-}" ]] || args+=(--json "$BENCH_JSON")
exec timeout -k 30 1800 python3 "$ROOT/bench/catalog.py" "${args[@]}"
