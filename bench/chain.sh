#!/usr/bin/env bash
# bench/chain.sh: what the audit hash chain and signed checkpoints cost
# (bench/chain.md). One command:
#
#   bench/chain.sh              # about 6 minutes, plus the two release builds
#   bench/chain.sh REV          # another baseline (default 2c39d85, the last
#                               # commit before the chain)
#
# 1. builds the current gateway and examples/bench_tokens.rs in release mode
#    (the working tree, as bench/run.sh does);
# 2. builds the baseline gateway from REV in a git worktree at
#    TARGET/bench-baseline, with its own target dir TARGET/bench-baseline-target
#    (both kept and reused: a second run only rebuilds what changed);
# 3. runs bench/chain.py: on loopback, in a temp dir, an nginx upstream and
#    the baseline, the current build without audit.signing_key (chain only)
#    and with one (chain + checkpoints), loaded in alternating rounds with a
#    GET and a validated PUT with durability "fsync", 32 connections each;
#    one markdown table; then `audit verify` of the current build's trails.
#
# Installs nginx, wrk and openssl from Debian's packages when missing (root).
# Environment: BENCH_DURATION (seconds per run, default 5), BENCH_ROUNDS
# (default 5), BENCH_JSON (also write the results there), BENCH_KEEP=1 (keep
# the temp dir), CHAIN_BUILD_TIMEOUT (seconds per build, default 3600),
# CHAIN_INSTRUCTIONS (requests per callgrind count, default 3000 when
# valgrind is installed; 0: no callgrind counts; about 2 minutes).
# Every step is bounded in time. Exit status 0 when no request failed and
# every trail verified.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REV=${1:-2c39d85}
BUILD_TIMEOUT=${CHAIN_BUILD_TIMEOUT:-3600}
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
command -v cargo >/dev/null || { log "cargo not found (install a Rust toolchain)"; exit 2; }

BASE_SHA=$(git -C "$ROOT" rev-parse --verify --quiet "$REV^{commit}") \
    || { log "no such commit: $REV"; exit 2; }
CUR_LABEL=$(git -C "$ROOT" rev-parse --short HEAD)
# The current build is the working tree: say so when it is not HEAD.
if [[ -n "$(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock)" ]]; then
    CUR_LABEL="$CUR_LABEL+changes"
fi

log "building the current gateway (release)"
(cd "$ROOT" && timeout "$BUILD_TIMEOUT" cargo build --release --bin polytomic-gateway --example bench_tokens >&2)
TARGET_DIR=$(cd "$ROOT" && timeout 120 cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')

WT="$TARGET_DIR/bench-baseline"
BASE_TARGET="$TARGET_DIR/bench-baseline-target"
if git -C "$WT" rev-parse --is-inside-work-tree >/dev/null 2>&1 \
        && [[ "$(git -C "$WT" rev-parse --show-toplevel)" == "$(cd "$WT" && pwd -P)" ]]; then
    if [[ "$(git -C "$WT" rev-parse HEAD)" != "$BASE_SHA" ]]; then
        log "baseline worktree $WT: checking out $REV"
        git -C "$WT" checkout --quiet --force --detach "$BASE_SHA"
    fi
else
    [[ ! -e "$WT" ]] || { log "$WT exists but is not a git worktree; remove it"; exit 2; }
    log "baseline worktree: $WT at $REV"
    # --force: also when a removed $WT is still registered as a worktree.
    git -C "$ROOT" worktree add --quiet --force --detach "$WT" "$BASE_SHA" >&2
fi
log "building the baseline gateway $REV (release, into $BASE_TARGET; the first time takes a while)"
(cd "$WT" && CARGO_TARGET_DIR="$BASE_TARGET" timeout "$BUILD_TIMEOUT" \
    nice -n 10 cargo build --release --bin polytomic-gateway >&2)

args=(--current "$TARGET_DIR/release/polytomic-gateway"
      --baseline "$BASE_TARGET/release/polytomic-gateway"
      --bench-tokens "$TARGET_DIR/release/examples/bench_tokens"
      --current-label "$CUR_LABEL" --baseline-label "$(git -C "$ROOT" rev-parse --short "$BASE_SHA")"
      --duration "${BENCH_DURATION:-5}" --rounds "${BENCH_ROUNDS:-5}")
# Instruction counts under callgrind: what the chain costs whatever the
# machine's load (see chain.py).
if command -v valgrind >/dev/null && command -v callgrind_control >/dev/null; then
    args+=(--instructions "${CHAIN_INSTRUCTIONS:-3000}")
elif [[ "${CHAIN_INSTRUCTIONS:-0}" != 0 ]]; then
    log "CHAIN_INSTRUCTIONS is set but valgrind is not installed (apt-get install valgrind)"; exit 2
fi
[[ -z "${BENCH_JSON:-}" ]] || args+=(--json "$BENCH_JSON")
[[ "${BENCH_KEEP:-0}" != 1 ]] || args+=(--keep)
# chain.py bounds each process and load itself; this bounds the whole.
exec timeout -k 30 3600 python3 "$ROOT/bench/chain.py" "${args[@]}"
