#!/usr/bin/env bash
# bench/parse_memory.sh: peak RSS with server.max_inflight maximum-size JSON
# bodies parsed at once, with server.max_json_values at its default, lower,
# and effectively off (bench/parse-memory.md). One command:
#
#   bench/parse_memory.sh       # about 2 minutes, plus the release build
#
# Builds the gateway and examples/bench_tokens.rs in release mode, then runs
# bench/parse_memory.py: in a temp dir, on loopback only, an nginx upstream
# and, for each run, a fresh gateway (bench/bench.py's config with
# max_body_bytes = 1 MiB, max_inflight = 8 or 64, and max_json_values =
# 100000, 10000 or 1000000000) that is sent max_inflight 1 MiB bodies at once;
# VmHWM is read from /proc/<pid>/status before and after. Installs nginx
# from Debian's packages when missing (root). Environment: BENCH_RUNS (runs
# per scenario, default 5), BENCH_INFLIGHT (default "8,64"), BENCH_JSON
# (also write the results there). Every step is bounded in time.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

missing=()
command -v nginx >/dev/null || missing+=(nginx-light)
command -v openssl >/dev/null || missing+=(openssl)
command -v python3 >/dev/null || missing+=(python3)
if (( ${#missing[@]} )); then
    log "installing ${missing[*]} (apt-get)"
    timeout 600 apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
command -v cargo >/dev/null || { log "cargo not found (install a Rust toolchain)"; exit 2; }

log "building (release)"
(cd "$ROOT" && timeout 1800 cargo build --release --bin polytomic-gateway --example bench_tokens >&2)
TARGET_DIR=$(cd "$ROOT" && timeout 120 cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')

args=(--gateway "$TARGET_DIR/release/polytomic-gateway"
      --bench-tokens "$TARGET_DIR/release/examples/bench_tokens"
      --runs "${BENCH_RUNS:-5}" --inflight "${BENCH_INFLIGHT:-8,64}")
[[ -z "${BENCH_JSON:-}" ]] || args+=(--json "$BENCH_JSON")
# parse_memory.py bounds each process and request itself; this bounds the whole.
exec timeout -k 30 900 python3 "$ROOT/bench/parse_memory.py" "${args[@]}"
