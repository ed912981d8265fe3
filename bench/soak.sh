#!/usr/bin/env bash
# bench/soak.sh [DURATION_SECONDS]: a bounded soak test of the gateway.
#
# Builds the release gateway and the soak upstream (examples/soak_upstream.rs,
# which aborts every 100th request without answering), starts both on
# loopback with a generated config (HS256 dev tokens, the organization routes
# and schemas, a platform/support policy, the `file` audit sink with
# `durability = "flush"`), and drives the gateway with wrk and
# bench/soak.lua for DURATION seconds (default 600): a fixed rotation of
# allowed GETs and PUTs, denied PUTs (403), invalid PUTs (422 and 400) and
# unauthenticated GETs (401), each with a unique `x-request-id`.
#
# Then it stops everything with SIGTERM and checks:
#   - the gateway's RSS grew by at most 10% from the end of the warm-up
#     (60 s, or 10% of DURATION if shorter) to the end;
#   - its open file descriptors grew by at most 5, and no client connection
#     is left open once wrk is gone;
#   - every x-request-id sent has exactly one `response` audit record (each
#     allowed PUT also exactly one `request` record), with the outcome its
#     kind must get (`upstream_error` for the injected faults, `cancelled`
#     only for the requests in flight when wrk stopped), and the upstream's
#     fault count matches the `upstream_error` records. An id that wrk's
#     Lua made as the run ended may have no record: wrk builds the next
#     request before it knows the run is over, and may never send it; at
#     most one per connection is allowed, among the last 64 ids of a thread,
#     and each is listed;
#   - the PUT bodies' client_secret never reaches the trail.
# It prints a table and exits 0 if every check passed, 1 otherwise (2 on a
# setup failure). Not part of CI; run it by hand, as root if wrk, curl or
# python3 need installing (apt-get).
#
# Environment: SOAK_THREADS (2), SOAK_CONNECTIONS (16), SOAK_FAULT_EVERY
# (100), SOAK_KEEP=1 keeps the temp dir (kept anyway when a check fails;
# a 10-minute run's audit trail is several GB).
set -euo pipefail

usage() { echo "usage: bench/soak.sh [DURATION_SECONDS]   (default 600, at least 10)" >&2; exit 2; }
DURATION=${1:-600}
[[ $# -le 1 && "$DURATION" =~ ^[0-9]+$ && "$DURATION" -ge 10 ]] || usage

# The whole script is bounded: apt-get and the build (each bounded below),
# the run, then stopping and analysis.
BUILD_BOUND=1800
if [[ -z "${SOAK_BOUNDED:-}" ]]; then
    export SOAK_BOUNDED=1
    exec timeout --foreground -k 30 "$((DURATION + BUILD_BOUND + 1800))" "$BASH" "$0" "$@"
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
THREADS=${SOAK_THREADS:-2}
CONNECTIONS=${SOAK_CONNECTIONS:-16}
FAULT_EVERY=${SOAK_FAULT_EVERY:-100}
ORG_ID=248df4b7-aa70-47b8-a036-33ac447e668d
WARMUP=$(( DURATION / 10 < 60 ? DURATION / 10 : 60 ))

log() { printf '[soak %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 2; }

# --- 1. Tools -----------------------------------------------------------------
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
if (( ${#missing[@]} )); then
    log "installing ${missing[*]} (apt-get)"
    timeout 600 apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q "${missing[@]}" >&2
fi
command -v cargo >/dev/null || die "cargo not found (install a Rust toolchain)"

# --- 2. Build -----------------------------------------------------------------
log "building in $ROOT (release)"
(cd "$ROOT" && timeout "$BUILD_BOUND" cargo build --release --bin polytomic-gateway --example soak_upstream >&2)
TARGET_DIR=$(cd "$ROOT" && timeout 120 cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
GATEWAY="$TARGET_DIR/release/polytomic-gateway"
UPSTREAM="$TARGET_DIR/release/examples/soak_upstream"
[[ -x "$GATEWAY" && -x "$UPSTREAM" ]] || die "built binaries not found under $TARGET_DIR/release"

# --- 3. Temp dir, secrets, config ---------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/polytomic-soak.XXXXXX")
KEEP=${SOAK_KEEP:-0}
UP_TPID="" GW_TPID="" WRK_TPID=""

# Stops a process started under `timeout` (TPID): SIGTERM, which timeout
# passes on, then up to GRACE seconds; SIGKILL if it is still there. Sets
# STOP_RC to its exit status (not a subshell: only this shell can wait).
STOP_RC=0
stop_proc() {
    local tpid=$1 grace=$2 deadline
    STOP_RC=0
    if kill -0 "$tpid" 2>/dev/null; then
        kill -TERM "$tpid" 2>/dev/null || true
        deadline=$((SECONDS + grace))
        while kill -0 "$tpid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.1; done
        if kill -0 "$tpid" 2>/dev/null; then
            log "pid $tpid still running after ${grace}s: SIGKILL"
            kill -KILL "$tpid" 2>/dev/null || true
        fi
    fi
    wait "$tpid" 2>/dev/null || STOP_RC=$?
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    [[ -z "$WRK_TPID" ]] || stop_proc "$WRK_TPID" 5
    [[ -z "$GW_TPID" ]] || stop_proc "$GW_TPID" 30
    [[ -z "$UP_TPID" ]] || stop_proc "$UP_TPID" 10
    if [[ "$status" -eq 0 && "$KEEP" != 1 ]]; then
        rm -rf "$TMP"
    else
        log "kept $TMP (audit trail, logs, config)"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The child a `timeout` process started (bounded wait).
child_of() {
    local tpid=$1 pid="" deadline=$((SECONDS + 10))
    while [[ -z "$pid" ]] && (( SECONDS < deadline )); do
        pid=$(pgrep -P "$tpid" | head -n1 || true)
        [[ -n "$pid" ]] || sleep 0.05
    done
    [[ -n "$pid" ]] || die "no child process under pid $tpid"
    echo "$pid"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

toml_str() { python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }

python3 -c 'import secrets; print("pk_soak_" + secrets.token_hex(24))' >"$TMP/partner-key"
python3 -c 'import secrets; print(secrets.token_hex(32))' >"$TMP/jwt-secret"
chmod 600 "$TMP/partner-key" "$TMP/jwt-secret"

# Everything the run needs stays bounded: the gateway and the upstream may
# live for the run plus stopping; wrk for the run plus a minute.
PROC_BOUND=$((DURATION + 900))

log "starting the soak upstream (fault every $FAULT_EVERY requests)"
timeout -k 10 "$PROC_BOUND" "$UPSTREAM" --listen 127.0.0.1:0 --fault-every "$FAULT_EVERY" \
    --partner-key-file "$TMP/partner-key" </dev/null >"$TMP/upstream.out" 2>"$TMP/upstream.err" &
UP_TPID=$!
UP_ADDR=""
deadline=$((SECONDS + 30))
while [[ -z "$UP_ADDR" ]] && (( SECONDS < deadline )); do
    kill -0 "$UP_TPID" 2>/dev/null || die "the upstream exited: $(cat "$TMP/upstream.err")"
    UP_ADDR=$(sed -n 's|^listening on http://||p' "$TMP/upstream.out")
    [[ -n "$UP_ADDR" ]] || sleep 0.05
done
[[ -n "$UP_ADDR" ]] || die "the upstream did not print its address within 30s"
UP_PORT=${UP_ADDR##*:}

write_config() {
    local port=$1
    cat >"$TMP/gateway.toml" <<EOF
# Generated by bench/soak.sh.
[server]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:0"
shutdown_grace = "10s"

[upstream]
url = "http://$UP_ADDR"
timeout = "10s"

[credentials.partner]
file = $(toml_str "$TMP/partner-key")

[auth]
issuers = ["https://idp.soak.polytomic-gateway.invalid"]
audiences = ["polytomic-gateway"]
algorithms = ["HS256"]
hs256_secret = { file = $(toml_str "$TMP/jwt-secret") }

[[routes]]
operation = "organization.current"
methods = ["GET"]
path = "/api/organization"

[[routes]]
operation = "organizations.list"
methods = ["GET"]
path = "/api/organizations"

[[routes]]
operation = "organizations.create"
methods = ["POST"]
path = "/api/organizations"
schema = $(toml_str "$ROOT/schemas/organization-create.json")

[[routes]]
operation = "organizations.get"
methods = ["GET"]
path = "/api/organizations/{id}"

[[routes]]
operation = "organizations.update"
methods = ["PATCH", "PUT"]
path = "/api/organizations/{id}"
schema = $(toml_str "$ROOT/schemas/organization-update.json")

[[routes]]
operation = "organizations.delete"
methods = ["DELETE"]
path = "/api/organizations/{id}"

[policy]
mode = "enforce"

[[policy.rules]]
name = "platform-everything"
teams = ["platform"]
allow = ["*"]

[[policy.rules]]
name = "support-read-only"
teams = ["support"]
allow = ["organizations.list", "organizations.get", "organization.current"]

[audit]
sinks = ["file"]
path = $(toml_str "$TMP/audit.jsonl")
durability = "flush"

[telemetry]
# Not "info": that adds a line for every request. Refusals are logged at
# warn even so (two lines each), about 3 GB in 10 minutes.
log_level = "warn"
EOF
}

GW_PORT=$(free_port)
write_config "$GW_PORT"
timeout 60 "$GATEWAY" check --config "$TMP/gateway.toml" >&2 || die "the generated config fails check"
TTL="$((DURATION + 3600))s"
PLATFORM_TOKEN=$(timeout 30 "$GATEWAY" token --config "$TMP/gateway.toml" --sub soak-platform@example.com --team platform --ttl "$TTL" 2>/dev/null)
SUPPORT_TOKEN=$(timeout 30 "$GATEWAY" token --config "$TMP/gateway.toml" --sub soak-support@example.com --team support --ttl "$TTL" 2>/dev/null)
[[ -n "$PLATFORM_TOKEN" && -n "$SUPPORT_TOKEN" ]] || die "minting tokens failed"

# --- 4. Start the gateway, wait for /readyz ------------------------------------------
# A port picked free can be taken before the gateway binds it: try 3 times.
for attempt in 1 2 3; do
    log "starting the gateway on 127.0.0.1:$GW_PORT (upstream $UP_ADDR)"
    timeout -k 10 "$PROC_BOUND" "$GATEWAY" serve --config "$TMP/gateway.toml" \
        </dev/null >"$TMP/gateway.out" 2>"$TMP/gateway.err" &
    GW_TPID=$!
    ready=""
    deadline=$((SECONDS + 30))
    while (( SECONDS < deadline )) && kill -0 "$GW_TPID" 2>/dev/null; do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$GW_PORT/readyz" || true)
        if [[ "$code" == 200 ]]; then ready=1; break; fi
        sleep 0.1
    done
    [[ -n "$ready" ]] && break
    stop_proc "$GW_TPID" 15; GW_TPID=""
    log "the gateway did not become ready (exit status $STOP_RC): $(tail -n 3 "$TMP/gateway.err")"
    (( attempt < 3 )) || die "giving up on starting the gateway"
    GW_PORT=$(free_port)
    write_config "$GW_PORT"
done
GW_PID=$(child_of "$GW_TPID")
log "gateway ready: pid $GW_PID"

# --- 5./6. Load, with samples -------------------------------------------------------
# fd_sample PID: "total client_conns upstream_conns other" for the gateway's fds.
fd_sample() {
    python3 - "$1" "$GW_PORT" "$UP_PORT" <<'PY'
import os, sys
pid, gw_port, up_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fds = os.listdir(f"/proc/{pid}/fd")
inodes = set()
for fd in fds:
    try:
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        continue
    if target.startswith("socket:["):
        inodes.add(target[8:-1])
client = upstream = 0
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
        lines = open(table).read().splitlines()[1:]
    except OSError:
        continue
    for line in lines:
        f = line.split()
        if f[9] not in inodes or f[3] == "0A":  # skip listeners
            continue
        local, remote = int(f[1].split(":")[1], 16), int(f[2].split(":")[1], 16)
        if local == gw_port:
            client += 1
        elif remote == up_port:
            upstream += 1
print(len(fds), client, upstream, len(fds) - client - upstream)
PY
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

read -r FD_IDLE _ _ _ <<<"$(fd_sample "$GW_PID")"
RSS_IDLE=$(rss_kb "$GW_PID")
log "idle: rss ${RSS_IDLE} kB, ${FD_IDLE} fds; running wrk -t$THREADS -c$CONNECTIONS for ${DURATION}s (warm-up ${WARMUP}s)"

SOAK_COUNTS="$TMP/counts.tsv" timeout -k 10 "$((DURATION + 60))" \
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 20s --latency \
    -s "$ROOT/bench/soak.lua" "http://127.0.0.1:$GW_PORT" -- "$PLATFORM_TOKEN" "$SUPPORT_TOKEN" "$ORG_ID" \
    </dev/null >"$TMP/wrk.out" 2>&1 &
WRK_TPID=$!
LOAD_START=$SECONDS

# RSS every 10 s, for the record; the warm-up sample at WARMUP.
: >"$TMP/rss.tsv"
next_sample=0 RSS_WARM="" FD_WARM=""
while kill -0 "$WRK_TPID" 2>/dev/null; do
    kill -0 "$GW_TPID" 2>/dev/null || { log "the gateway died during the load"; break; }
    elapsed=$((SECONDS - LOAD_START))
    if [[ -z "$RSS_WARM" ]] && (( elapsed >= WARMUP )); then
        RSS_WARM=$(rss_kb "$GW_PID")
        FD_WARM_ALL=$(fd_sample "$GW_PID")
        read -r FD_WARM _ _ _ <<<"$FD_WARM_ALL"
        log "after warm-up (${elapsed}s): rss ${RSS_WARM} kB, fds total/client/upstream/other: $FD_WARM_ALL"
    fi
    if (( elapsed >= next_sample )); then
        printf '%s\t%s\n' "$elapsed" "$(rss_kb "$GW_PID")" >>"$TMP/rss.tsv"
        next_sample=$((next_sample + 10))
    fi
    sleep 1
done
stop_proc "$WRK_TPID" 5; WRK_RC=$STOP_RC WRK_TPID=""
log "wrk finished (exit status $WRK_RC)"
[[ -n "$RSS_WARM" ]] || die "the load ended before the warm-up sample"
kill -0 "$GW_TPID" 2>/dev/null || die "the gateway is not running: $(tail -n 5 "$TMP/gateway.err")"

# Wait (bounded) until the gateway has closed every client connection.
deadline=$((SECONDS + 20))
while :; do
    FD_END_ALL=$(fd_sample "$GW_PID")
    read -r FD_END CLIENT_END _ _ <<<"$FD_END_ALL"
    (( CLIENT_END == 0 || SECONDS >= deadline )) && break
    sleep 0.2
done
RSS_END=$(rss_kb "$GW_PID")
log "at the end: rss ${RSS_END} kB, fds total/client/upstream/other: $FD_END_ALL"

# --- 7. Stop, by pid ------------------------------------------------------------------
stop_proc "$GW_TPID" 30; GW_RC=$STOP_RC GW_TPID=""
stop_proc "$UP_TPID" 10; UP_RC=$STOP_RC UP_TPID=""
log "stopped: gateway exit status $GW_RC, upstream exit status $UP_RC"

# --- 8. Verify, and print the table -----------------------------------------------------
log "checking the audit trail ($(du -h "$TMP/audit.jsonl" | cut -f1))"
export S_DURATION=$DURATION S_WARMUP=$WARMUP S_THREADS=$THREADS S_CONNECTIONS=$CONNECTIONS
export S_FAULT_EVERY=$FAULT_EVERY S_RSS_IDLE=$RSS_IDLE S_RSS_WARM=$RSS_WARM S_RSS_END=$RSS_END
export S_FD_IDLE=$FD_IDLE S_FD_WARM=$FD_WARM_ALL S_FD_END=$FD_END_ALL
export S_GW_RC=$GW_RC S_UP_RC=$UP_RC S_WRK_RC=$WRK_RC S_TMP=$TMP
set +e
timeout 1800 python3 - <<'PY'
import collections, json, os, re, sys

E = os.environ
TMP = E["S_TMP"]
DURATION, WARMUP = int(E["S_DURATION"]), int(E["S_WARMUP"])
THREADS, CONNECTIONS = int(E["S_THREADS"]), int(E["S_CONNECTIONS"])
RSS_IDLE, RSS_WARM, RSS_END = int(E["S_RSS_IDLE"]), int(E["S_RSS_WARM"]), int(E["S_RSS_END"])
FD_IDLE = int(E["S_FD_IDLE"])
FD_WARM = [int(x) for x in E["S_FD_WARM"].split()]
FD_END = [int(x) for x in E["S_FD_END"].split()]
GW_RC, UP_RC, WRK_RC = int(E["S_GW_RC"]), int(E["S_UP_RC"]), int(E["S_WRK_RC"])

KINDS = ["get", "put", "denied", "schema", "malformed", "unauth"]
# The outcomes (and statuses) each kind may get; `cancelled` is checked apart.
EXPECTED = {
    "get": {"allowed": 200, "upstream_error": 502},
    "put": {"allowed": 200, "upstream_error": 502},
    "denied": {"denied": 403},
    "schema": {"invalid": 422},
    "malformed": {"invalid": 400},
    "unauth": {"unauthenticated": 401},
}
# A request in flight when wrk stopped is among the last few its thread sent.
TAIL = 64
SECRET = "soak-secret-0123456789abcdef0123456789abcdef"

failures = []
def check(ok, what):
    if not ok:
        failures.append(what)
    return "ok" if ok else "FAIL"

# What wrk sent, from bench/soak.lua's done().
last_n, sent, wrk_status, wrk = {}, collections.Counter(), collections.defaultdict(collections.Counter), {}
try:
    for line in open(f"{TMP}/counts.tsv"):
        f = line.rstrip("\n").split("\t")
        if f[0] == "thread":
            last_n[int(f[1])] = int(f[2])
        elif f[0] == "sent":
            sent[f[1]] += int(f[2])
        elif f[0] == "status":
            wrk_status[f[1]][int(f[2])] += int(f[3])
        elif f[0] == "wrk":
            wrk[f[1]] = int(f[2])
except OSError as e:
    print(f"no counts from wrk ({e}); see {TMP}/wrk.out", file=sys.stderr)
    sys.exit(1)

upstream = {}
for line in open(f"{TMP}/upstream.out"):
    if line.startswith("requests="):
        upstream = {k: int(v) for k, v in (kv.split("=") for kv in line.split())}

# The audit trail: per thread, one counter per request id, for each stage.
resp = {t: bytearray(n + 1) for t, n in last_n.items()}
reqs = {t: bytearray(n + 1) for t, n in last_n.items()}
outcomes = collections.defaultdict(collections.Counter)
bad_status, unexpected_ids, other_ids, torn, leaks, unredacted = [], [], 0, 0, 0, 0
cancelled_mid_run, req_on_wrong_kind, cancelled_ids = [], [], []
ID = re.compile(r"^soak-([a-z]+)-([0-9]+)-([0-9]+)$")
with open(f"{TMP}/audit.jsonl", encoding="utf-8") as trail:
    for line in trail:
        if SECRET in line:
            leaks += 1
        try:
            rec = json.loads(line)
        except ValueError:
            torn += 1
            continue
        m = ID.match(rec.get("request_id") or "")
        if not m:
            other_ids += 1
            continue
        kind, t, n = m.group(1), int(m.group(2)), int(m.group(3))
        if t not in last_n or not 1 <= n <= last_n[t] or KINDS[(n - 1) % len(KINDS)] != kind:
            unexpected_ids.append(rec["request_id"])
            continue
        if rec["stage"] == "request":
            if kind != "put":
                req_on_wrong_kind.append(rec["request_id"])
            reqs[t][n] = min(reqs[t][n] + 1, 255)
            continue
        resp[t][n] = min(resp[t][n] + 1, 255)
        outcome = rec["outcome"]
        outcomes[kind][outcome] += 1
        if outcome == "cancelled":
            cancelled_ids.append(rec["request_id"])
            if n <= last_n[t] - TAIL:
                cancelled_mid_run.append(rec["request_id"])
        elif EXPECTED[kind].get(outcome) != rec["status"]:
            bad_status.append(f'{rec["request_id"]}: {outcome} {rec["status"]}')
        if kind == "put" and outcome == "allowed":
            body = rec.get("request_body") or {}
            if body.get("client_secret") != "[REDACTED]":
                unredacted += 1

duplicates, missing_mid, missing_tail, put_req_bad = [], [], [], []
for t, n_last in last_n.items():
    r, q = resp[t], reqs[t]
    for n in range(1, n_last + 1):
        kind = KINDS[(n - 1) % len(KINDS)]
        rid = f"soak-{kind}-{t}-{n}"
        if r[n] > 1:
            duplicates.append(rid)
        elif r[n] == 0:
            (missing_tail if n > n_last - TAIL else missing_mid).append(rid)
        # An allowed PUT (forwarded or faulted) has exactly one request record.
        if kind == "put" and r[n] == 1 and q[n] != 1:
            put_req_bad.append(f"{rid} ({q[n]} request records)")

# --- The table ---
def row(*cells):
    print("| " + " | ".join(str(c) for c in cells) + " |")

total_sent = sum(sent.values())
secs = wrk.get("duration_us", 0) / 1e6 or DURATION
growth = 100.0 * (RSS_END - RSS_WARM) / RSS_WARM
print()
print(f"## polytomic-gateway soak: {DURATION}s, wrk -t{THREADS} -c{CONNECTIONS}, fault every {E['S_FAULT_EVERY']} upstream requests")
print()
row("Check", "Start", "End", "Change", "Limit", "Result")
row("---", "---", "---", "---", "---", "---")
row(f"RSS (kB; start = after {WARMUP}s warm-up)", RSS_WARM, RSS_END, f"{growth:+.1f}%", "<= +10%", check(growth <= 10.0, f"RSS grew {growth:.1f}%"))
row("Open fds, total", FD_WARM[0], FD_END[0], f"{FD_END[0] - FD_WARM[0]:+d}", "<= +5", check(FD_END[0] - FD_WARM[0] <= 5, "fds grew"))
row("  client connections", FD_WARM[1], FD_END[1], f"{FD_END[1] - FD_WARM[1]:+d}", "0 at end", check(FD_END[1] == 0, "client connections left open"))
row("  upstream connections", FD_WARM[2], FD_END[2], f"{FD_END[2] - FD_WARM[2]:+d}", "-", "-")
row("  other (listener, files, epoll, ...)", FD_WARM[3], FD_END[3], f"{FD_END[3] - FD_WARM[3]:+d}", "<= +5", check(FD_END[3] - FD_WARM[3] <= 5, "non-connection fds grew"))
print()
print(f"Idle before the load: RSS {RSS_IDLE} kB, {FD_IDLE} fds. RSS every 10 s (kB): ", end="")
rss = [l.split() for l in open(f"{TMP}/rss.tsv")]
print(", ".join(f"{s}s {int(k)}" for s, k in rss[:: max(1, len(rss) // 12)]) + f", end {RSS_END}")
print()
row("Kind", "Request", "Sent", "wrk saw (status: count)", "Audit `response` outcomes", "Result")
row("---", "---", "---", "---", "---", "---")
desc = {
    "get": "GET, platform", "put": "PUT valid, platform", "denied": "PUT valid, support",
    "schema": "PUT schema-invalid, platform", "malformed": "PUT malformed JSON, platform",
    "unauth": "GET, no token",
}
for kind in KINDS:
    got = outcomes[kind]
    allowed = set(EXPECTED[kind]) | {"cancelled"}
    ok = set(got) <= allowed and sum(got.values()) == sent[kind] - sum(1 for i in missing_tail if f"-{kind}-" in i)
    seen = ", ".join(f"{s}: {c}" for s, c in sorted(wrk_status[kind].items()))
    outs = ", ".join(f"{o}: {c}" for o, c in sorted(got.items()))
    row(kind, desc[kind], sent[kind], seen, outs, check(ok, f"outcomes of {kind}: {dict(got)}"))
if wrk_status.get("other"):
    row("other", "responses without a soak id", "-", dict(wrk_status["other"]), "-", check(False, "responses without a soak id"))
print()
faults = upstream.get("faults", -1)
upstream_errors = sum(o["upstream_error"] for o in outcomes.values())
cancelled = sum(o["cancelled"] for o in outcomes.values())
forwarded = sum(outcomes[k]["allowed"] + outcomes[k]["upstream_error"] for k in ("get", "put"))
row("Audit check", "Count", "Expected", "Result")
row("---", "---", "---", "---")
row("requests sent (total)", total_sent, "-", "-")
row("wrk throughput (req/s)", f"{wrk.get('requests', 0) / secs:.0f}", "-", "-")
row("wrk latency p50 / p99 (ms)", f"{wrk.get('latency_p50_us', 0) / 1000:.2f} / {wrk.get('latency_p99_us', 0) / 1000:.2f}", "-", "-")
errs = {k[7:]: v for k, v in wrk.items() if k.startswith("errors_") and k != "errors_status" and v}
row("wrk non-2xx/3xx responses", wrk.get("errors_status", 0), "-", "-")
row("wrk socket errors (connect, read, write, timeout)", errs or 0, 0, check(not errs, f"wrk socket errors: {errs}"))
row("ids with duplicate `response` records", len(duplicates), 0, check(not duplicates, f"duplicates: {duplicates[:5]}"))
row("ids with no `response` record, mid-run", len(missing_mid), 0, check(not missing_mid, f"missing: {missing_mid[:5]}"))
row(f"ids with no record, sent as wrk stopped (last {TAIL} of a thread)", len(missing_tail), f"<= {CONNECTIONS}", check(len(missing_tail) <= CONNECTIONS, f"missing at the end: {missing_tail[:5]}"))
row("`cancelled` (wrk abandoned at the end)", cancelled, f"<= {CONNECTIONS}, at the end", check(cancelled <= CONNECTIONS and not cancelled_mid_run, f"cancelled mid-run: {cancelled_mid_run[:5]}"))
row("allowed PUTs without exactly one `request` record", len(put_req_bad), 0, check(not put_req_bad, f"request records: {put_req_bad[:5]}"))
row("`request` records on other kinds", len(req_on_wrong_kind), 0, check(not req_on_wrong_kind, f"request records: {req_on_wrong_kind[:5]}"))
row("records with an unexpected status", len(bad_status), 0, check(not bad_status, f"statuses: {bad_status[:5]}"))
row("records with unknown or out-of-range soak ids", len(unexpected_ids), 0, check(not unexpected_ids, f"ids: {unexpected_ids[:5]}"))
row("records with other ids", other_ids, 0, check(other_ids == 0, "records with other ids"))
row("unparsable lines", torn, 0, check(torn == 0, "unparsable audit lines"))
row("client_secret in the trail / not redacted", f"{leaks} / {unredacted}", "0 / 0", check(leaks == 0 and unredacted == 0, "secret not redacted"))
row("upstream faults injected vs `upstream_error` records", f"{faults} / {upstream_errors}", "equal (+ cancelled)", check(0 <= faults - upstream_errors <= cancelled, "faults and upstream_error differ"))
row("upstream requests vs forwarded records", f"{upstream.get('requests', -1)} / {forwarded}", "equal (+ cancelled)", check(0 <= upstream.get("requests", -1) - forwarded <= cancelled, "upstream requests and forwarded records differ"))
row("upstream 401s (credential swap)", upstream.get("unauthorized", -1), 0, check(upstream.get("unauthorized", -1) == 0, "upstream 401s"))
row("exit status: gateway / upstream / wrk", f"{GW_RC} / {UP_RC} / {WRK_RC}", "0 / 0 / 0", check(GW_RC == 0 and UP_RC == 0 and WRK_RC == 0, "exit statuses"))
cancelled_ids = sorted(cancelled_ids)
if cancelled_ids or missing_tail:
    print(f"In flight when wrk stopped: cancelled {', '.join(cancelled_ids) or '-'}; "
          f"no record {', '.join(missing_tail) or '-'}; last ids per thread: "
          + ", ".join(f"{t}: {n}" for t, n in sorted(last_n.items())))
print()
if failures:
    print("FAILED:")
    for f in failures:
        print(f"  - {f}")
    sys.exit(1)
print("All checks passed.")
PY
PY_STATUS=$?
set -e
exit "$PY_STATUS"
