#!/usr/bin/env bash
# bench/sidecar.sh: the RSS and CPU that the resource requests and limits in
# deploy/kubernetes/deployment.yaml are sized from. One command:
#
#   bench/sidecar.sh        # about a minute, plus the release build
#
# Runs the release binary as the pod does (`serve`), with the ConfigMap's
# own gateway.toml, adapted to run on loopback in a temp dir:
#   - the listeners and upstream.url are set by GATEWAY__* variables: free
#     loopback ports, and an nginx upstream answering every request 200;
#   - [auth] trusts an HS256 secret instead of jwks_url, so `token` can mint
#     the callers' tokens;
#   - the Secret's and the spool's absolute paths are moved under the temp
#     dir (a stand-in partner key; an Ed25519 signing key from openssl);
#   - audit.otlp_endpoint is a stand-in collector on loopback that answers
#     every export 200, so the spool is written (fsync'd) and shipped;
#   - one more rule lets team "bench" update organizations, for the writes.
#   - server.workers is 1 (BENCH_WORKERS), as the manifest's CPU limit of
#     one core gives.
# Then, from loopback only, each phase bounded in time: idle; GETs at 8 and
# at 64 connections (server.max_inflight); PUTs (validated against the
# catalog's schema and audited) at 8; and the worst case for memory, 64
# connections sending 1 MiB bodies (server.max_body_bytes) of 64-deep
# objects that the parse stops at server.max_json_values (413; the costliest
# shape per byte, bench/parse-memory.md). After each it reads the gateway's
# VmRSS and VmHWM (/proc/PID/status) and its CPU time (/proc/PID/stat). wrk,
# nginx and the collector share the cores with it.
#
# Not `demo`: its in-process fake API keeps every request it receives in
# memory (for the tests that inspect them), some kilobytes each, so the RSS
# of a demo under load is mostly the fake's.
#
# Environment: BENCH_DURATION (seconds a phase, default 10), BENCH_WORKERS
# (default 1).
# Stops everything it started, by PID.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${BENCH_DURATION:-10}
log() { printf '[sidecar %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

for tool in wrk nginx openssl python3 curl; do
    command -v "$tool" >/dev/null || { log "$tool is needed"; exit 2; }
done

log "building (release)"
(cd "$ROOT" && timeout 1800 cargo build --release --bin polytomic-gateway >&2)
gateway="$ROOT/target/release/polytomic-gateway"

tmp=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        timeout 30 tail --pid="$pid" -f /dev/null || kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The stand-in collector: answers every POST 200 with an empty
# ExportLogsServiceResponse.
cat >"$tmp/collector.py" <<'PY'
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
server.serve_forever()
PY
collector_port=$(free_port)
timeout 600 python3 "$tmp/collector.py" "$collector_port" &
pids+=($!)

# The upstream: nginx, answering every request 200 with a small JSON body.
upstream_port=$(free_port)
mkdir -p "$tmp/nginx-temp" && chmod 777 "$tmp/nginx-temp"
cat >"$tmp/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/nginx.err warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $tmp/nginx-temp/body;
    proxy_temp_path $tmp/nginx-temp/proxy;
    fastcgi_temp_path $tmp/nginx-temp/fastcgi;
    uwsgi_temp_path $tmp/nginx-temp/uwsgi;
    scgi_temp_path $tmp/nginx-temp/scgi;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$upstream_port;
        location / {
            default_type application/json;
            return 200 '{"data":{"id":"248df4b7-aa70-47b8-a036-33ac447e668d","name":"Acme Corp"}}';
        }
    }
}
EOF
timeout 600 nginx -c "$tmp/nginx.conf" &
pids+=($!)

# The pod's files, under $tmp.
mkdir -p "$tmp/run/secrets/polytomic-gateway" "$tmp/var/spool/polytomic-gateway"
echo "pk_bench_$RANDOM$RANDOM" >"$tmp/run/secrets/polytomic-gateway/partner-key"
openssl genpkey -algorithm ed25519 -out "$tmp/run/secrets/polytomic-gateway/audit-signing.pem" 2>/dev/null
head -c 48 /dev/urandom | base64 >"$tmp/jwt-secret"

# The ConfigMap's gateway.toml (the block under `gateway.toml: |`), adapted.
awk '/^  gateway\.toml: \|/ { f = 1; next } f && /^[^ ]/ { f = 0 } f { sub(/^    /, ""); print }' \
    "$ROOT/deploy/kubernetes/configmap.yaml" \
    | awk '/^\[auth\]/ { skip = 1; next } /^\[/ { skip = 0 } !skip' \
    | sed -e "s#\"/run/#\"$tmp/run/#" -e "s#\"/var/#\"$tmp/var/#" \
          -e "s#^otlp_endpoint = .*#otlp_endpoint = \"http://127.0.0.1:$collector_port\"#" \
    >"$tmp/gateway.toml"
cat >>"$tmp/gateway.toml" <<EOF

[auth]
issuers = ["https://idp.bench.invalid"]
audiences = ["polytomic-gateway"]
algorithms = ["HS256"]
hs256_secret = { file = "$tmp/jwt-secret" }

[[policy.rules]]
name = "bench-writes"
teams = ["bench"]
allow = ["organization.update"]
EOF
"$gateway" check --config "$tmp/gateway.toml" >/dev/null 2>"$tmp/check.err" \
    || { cat "$tmp/check.err" >&2; exit 1; }
"$gateway" token --config "$tmp/gateway.toml" --sub reader --team reporting --ttl 1h >"$tmp/read.token"
"$gateway" token --config "$tmp/gateway.toml" --sub writer --team bench --ttl 1h >"$tmp/write.token"

log "starting the gateway with the ConfigMap's config"
listen_port=$(free_port)
admin_port=$(free_port)
GATEWAY__SERVER__LISTEN=127.0.0.1:$listen_port GATEWAY__SERVER__ADMIN_LISTEN=127.0.0.1:$admin_port \
    GATEWAY__SERVER__WORKERS=${BENCH_WORKERS:-1} GATEWAY__UPSTREAM__URL=http://127.0.0.1:$upstream_port RUST_LOG=warn \
    timeout 900 "$gateway" serve --config "$tmp/gateway.toml" >/dev/null 2>"$tmp/gateway.err" &
pids+=($!)
# The gateway itself: timeout's child.
pid=""
for _ in $(seq 100); do pid=$(pgrep -P "$!" || true); [ -n "$pid" ] && break; sleep 0.1; done
[ -n "$pid" ] || { log "the gateway did not start"; exit 1; }
base=http://127.0.0.1:$listen_port
admin=http://127.0.0.1:$admin_port
for _ in $(seq 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$admin/readyz")" = 200 ] && break
    sleep 0.1
done
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(cat "$tmp/read.token")" "$base/api/organization")
[ "$code" = 200 ] || { log "a GET through the gateway: $code"; cat "$tmp/gateway.err" >&2; exit 1; }

status_kb() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$pid/status"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

printf '%-36s %7s %8s %8s %6s %8s\n' phase req/s "RSS MB" "HWM MB" "CPU %" "µs/req"
row() { # phase requests seconds ticks
    local rps cpu per
    rps=$(awk -v n="$2" -v s="$3" 'BEGIN { printf "%.0f", n / s }')
    cpu=$(awk -v t="$4" -v s="$3" -v hz="$hz" 'BEGIN { printf "%.1f", 100 * t / hz / s }')
    per=$(awk -v t="$4" -v n="$2" -v hz="$hz" 'BEGIN { if (n > 0) printf "%.0f", 1e6 * t / hz / n; else print "-" }')
    printf '%-36s %7s %8s %8s %6s %8s\n' "$1" "$rps" \
        "$(mb "$(status_kb VmRSS)")" "$(mb "$(status_kb VmHWM)")" "$cpu" "$per"
}

idle() { # phase
    local t0
    t0=$(cpu_ticks)
    sleep "$DURATION"
    row "$1" 0 "$DURATION" "$(( $(cpu_ticks) - t0 ))"
}

load() { # phase connections method path token-file [body-file [refused-ok]]
    local t0 ticks requests seconds errors refused out="$tmp/wrk.json"
    t0=$(cpu_ticks)
    BENCH_METHOD=$3 BENCH_PATH=$4 BENCH_TOKENS=$5 BENCH_BODY=${6:-} BENCH_OUT=$out \
        timeout $((DURATION + 30)) wrk -t1 -c"$2" -d"${DURATION}s" -s "$ROOT/bench/wrk.lua" "$base" >/dev/null
    ticks=$(( $(cpu_ticks) - t0 ))
    read -r requests seconds errors refused < <(python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))
e = s["errors"]
print(s["requests"], s["duration_us"] / 1e6, e["connect"] + e["read"] + e["write"] + e["timeout"], e["status"])' "$out")
    [ "$errors" = 0 ] || { log "$1: $errors socket errors"; exit 1; }
    if [ -n "${7:-}" ]; then
        [ "$refused" = "$requests" ] || { log "$1: only $refused of $requests refused"; exit 1; }
    else
        [ "$refused" = 0 ] || { log "$1: $refused requests not answered 2xx"; exit 1; }
    fi
    row "$1" "$requests" "$seconds" "$ticks"
}

idle "idle (ready, one request answered)"
load "GET, 8 connections" 8 GET /api/organization "$tmp/read.token"
load "GET, 64 connections" 64 GET /api/organization "$tmp/read.token"
printf '{"name":"Bench Organization"}' >"$tmp/put.json"
load "PUT (fsync'd audit), 8 connections" 8 PUT /api/organizations/248df4b7-aa70-47b8-a036-33ac447e668d \
    "$tmp/write.token" "$tmp/put.json"
python3 -c '
import sys
item = "{\"a\":" * 62 + "0" + "}" * 62
head, tail = "{\"name\":\"Bench Org\",\"x\":[", "]}"
room = 1048576 - len(head) - len(tail)
body = head + ",".join([item] * ((room + 1) // (len(item) + 1))) + tail
sys.stdout.write(body + " " * (1048576 - len(body)))' >"$tmp/deep.json"
answer=$(curl -s -X PUT -H "Authorization: Bearer $(cat "$tmp/write.token")" -H "Content-Type: application/json" \
    --data-binary @"$tmp/deep.json" "$base/api/organizations/248df4b7-aa70-47b8-a036-33ac447e668d")
case "$answer" in *json_too_many_values*) ;; *) log "a deep body: $answer"; exit 1 ;; esac
load "1 MiB deep bodies (413), 64 conns" 64 PUT /api/organizations/248df4b7-aa70-47b8-a036-33ac447e668d \
    "$tmp/write.token" "$tmp/deep.json" refused-ok
idle "idle again"
log "spool: $(stat -c %s "$tmp/var/spool/polytomic-gateway/audit.jsonl") bytes written," \
    "$(awk '{ print $NF }' "$tmp/var/spool/polytomic-gateway/audit.jsonl.shipped" 2>/dev/null || echo 0) shipped;" \
    "$(grep -c 'not shipped' "$tmp/gateway.err" || true) shipping retries logged"
