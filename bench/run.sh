#!/usr/bin/env bash
# bench/run.sh: the side-by-side benchmark (polytomic-gateway vs nginx and
# HAProxy), as described in BENCHMARKS.md. One command:
#
#   bench/run.sh                 # about 7 minutes, plus the release build
#
# 1. installs what is missing (nginx, haproxy, wrk, h2load, openssl,
#    python3) from Debian's packages, which needs root;
# 2. builds the gateway, examples/bench_tokens.rs and examples/bare_proxy.rs
#    in release mode;
# 3. runs bench/bench.py: every process on loopback, with keys, tokens and
#    configs generated into a temp dir; the scenarios in alternating rounds;
#    one table on stdout; everything it started stopped by PID.
#
# Environment: BENCH_DURATION (seconds per load run, default 6),
# BENCH_ROUNDS (default 5), BENCH_JSON (also write the results there),
# BENCH_KEEP=1 (keep the temp dir). Every step is bounded in time; exit
# status 0 when every run completed without a failed request.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

missing=()
command -v nginx >/dev/null || missing+=(nginx-light)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v openssl >/dev/null || missing+=(openssl)
command -v python3 >/dev/null || missing+=(python3)
if (( ${#missing[@]} )); then
    log "installing ${missing[*]} (apt-get)"
    timeout 600 apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
command -v cargo >/dev/null || { log "cargo not found (install a Rust toolchain)"; exit 2; }

log "building (release)"
(cd "$ROOT" && timeout 1800 cargo build --release --bin polytomic-gateway --example bench_tokens --example bare_proxy >&2)
TARGET_DIR=$(cd "$ROOT" && timeout 120 cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')

args=(--gateway "$TARGET_DIR/release/polytomic-gateway"
      --bench-tokens "$TARGET_DIR/release/examples/bench_tokens"
      --bare-proxy "$TARGET_DIR/release/examples/bare_proxy"
      --duration "${BENCH_DURATION:-6}" --rounds "${BENCH_ROUNDS:-5}")
[[ -z "${BENCH_JSON:-}" ]] || args+=(--json "$BENCH_JSON")
[[ "${BENCH_KEEP:-0}" != 1 ]] || args+=(--keep)
# bench.py bounds each process and load itself; this bounds the whole.
exec timeout -k 30 3600 python3 "$ROOT/bench/bench.py" "${args[@]}"
