#!/usr/bin/env bash
# bench/run.sh: the side-by-side benchmark of issue 21 ("Performance II"):
# polytomic-gateway, running the shipped config/gateway.toml, against nginx,
# HAProxy (jwt_verify), Apache httpd + mod_auth_openidc and a bare hyper
# proxy, as described in BENCHMARKS.md. One command:
#
#   bench/run.sh                 # about 10 minutes, plus the build
#
# 1. installs what is missing (nginx, haproxy, apache2 with
#    libapache2-mod-auth-openidc, wrk, h2load, openssl, python3) from
#    Debian's packages, which needs root (where systemd runs, Debian also
#    starts its own apache2 service on port 80; the bench does not use it);
# 2. builds the gateway, examples/bench_tokens.rs and examples/bare_proxy.rs
#    with the `dist` profile, the shipped build (Cargo.toml: release with
#    fat LTO and one codegen unit), the bare proxy included, so the floor
#    gets the same compiler help as the gateway;
# 3. runs bench/bench.py: every process on loopback, with keys, tokens and
#    configs generated into a temp dir (each gateway config is
#    config/gateway.toml's text with only addresses, keys and paths
#    substituted, so a change to the shipped file is benchmarked, or fails
#    loudly); in interleaved rounds: GET at c=32 through every system and
#    gateway variant (the shipped config; + telemetry.request_log, skipped
#    with a note if the binary does not know the key; 1,000 policy rules
#    against 3 rules and 6 routes), ES256 and 10,000 rotating tokens (the
#    gateway with its cache on and off, HAProxy, Apache), audited PUT with
#    schema validation at c=1, 32 and 256 (and c=32 with the audit in a
#    file, fdatasync'd); then, on
#    fresh gateways: idle RSS, RSS with 1,000 open keep-alive connections
#    and under 1,000 busy ones, a 10 MB upload, and 7 start-ups timed from
#    exec to /readyz 200; one report with the issue-21 targets on stdout;
#    everything it started stopped by PID.
#
# Nothing of the earlier scenarios was dropped.
#
# Environment: BENCH_DURATION (seconds per load run, default 6),
# BENCH_ROUNDS (default 5; 18 load runs a round), BENCH_JSON (also write
# every figure there, as JSON), BENCH_KEEP=1 (keep the temp dir). Every step
# is bounded in time; exit status 0 only when every sanity check passed and
# every run completed without a failed request.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

missing=()
command -v nginx >/dev/null || missing+=(nginx-light)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v apache2 >/dev/null || missing+=(apache2)
[[ -f /usr/lib/apache2/modules/mod_auth_openidc.so ]] || missing+=(libapache2-mod-auth-openidc)
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v openssl >/dev/null || missing+=(openssl)
command -v python3 >/dev/null || missing+=(python3)
if (( ${#missing[@]} )); then
    log "installing ${missing[*]} (apt-get)"
    timeout 600 apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
# bench.py parses the configs it generates with tomllib (Python 3.11).
python3 -c 'import tomllib' 2>/dev/null || { log "python3 3.11 or later needed (tomllib)"; exit 2; }
command -v cargo >/dev/null || { log "cargo not found (install a Rust toolchain)"; exit 2; }

log "building (profile dist)"
(cd "$ROOT" && timeout 2700 cargo build --profile dist --bin polytomic-gateway --example bench_tokens --example bare_proxy >&2)
TARGET_DIR=$(cd "$ROOT" && timeout 120 cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')

args=(--gateway "$TARGET_DIR/dist/polytomic-gateway"
      --bench-tokens "$TARGET_DIR/dist/examples/bench_tokens"
      --bare-proxy "$TARGET_DIR/dist/examples/bare_proxy"
      --duration "${BENCH_DURATION:-6}" --rounds "${BENCH_ROUNDS:-5}")
[[ -z "${BENCH_JSON:-}" ]] || args+=(--json "$BENCH_JSON")
[[ "${BENCH_KEEP:-0}" != 1 ]] || args+=(--keep)
# bench.py bounds each process and load itself; this bounds the whole.
exec timeout -k 30 5400 python3 "$ROOT/bench/bench.py" "${args[@]}"
