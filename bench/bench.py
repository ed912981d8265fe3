#!/usr/bin/env python3
"""The side-by-side benchmark's driver; bench/run.sh installs the tools,
builds the gateway and calls this. See BENCHMARKS.md for what it measures.

Everything runs on loopback with material generated for the run (keys,
tokens, partner key, configs in a temp dir). Every process it starts runs
under `timeout` and is stopped by PID at the end, whatever happens. Each
load is a bounded wrk (or h2load) run.

Systems behind the same static-JSON nginx upstream:
  upstream   the upstream alone (the ceiling)
  nginx      nginx as a plain reverse proxy setting two headers
  bare       examples/bare_proxy.rs: hyper + hyper-util's pooled client on
             tokio setting the same headers, nothing else (the floor of the
             gateway's stack)
  haproxy    HAProxy verifying an RS256 JWT (jwt_verify, alg/iss/exp checks)
             and setting the same two headers
  gateway    polytomic-gateway with its full stack (RS256 JWT, policy,
             version header, credential swap, file audit with "flush")

Scenarios 1-3 run in rounds that alternate the systems, so that drift of
the machine spreads over all of them; each figure is the median over rounds.
"""

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.client import HTTPConnection, IncompleteRead, RemoteDisconnected

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORG_ID = "248df4b7-aa70-47b8-a036-33ac447e668d"
ISSUER = "https://idp.bench.polytomic-gateway.invalid"
AUDIENCE = "polytomic-gateway"
VERSION = "2025-09-18"
GET_PATH = f"/api/organizations/{ORG_ID}"
UPLOAD_PATH = "/api/uploads"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
MANY_TOKENS = 10_000

UPSTREAM_BODY = json.dumps({
    "data": {
        "id": ORG_ID, "name": "Bench Org", "issuer": "https://idp.example.com",
        "client_id": "bench-client", "sso_domain": "example.com",
        "sso_org_id": "org_0123456789",
    }
}, separators=(",", ":"))


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class SetupError(Exception):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- /proc ----------------------------------------------------------------

def descendants(pid):
    """pid and every process below it (nginx's workers, timeout's child)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total


def status_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise SetupError(f"no {field} for pid {pid}")


def rss_kb(pids):
    total = 0
    for pid in pids:
        try:
            total += status_kb(pid, "VmRSS")
        except (OSError, SetupError):
            pass
    return total


def reset_peak(pid):
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


# --- processes --------------------------------------------------------------

class Procs:
    """Processes started for the run, each under `timeout`, stopped by PID."""

    def __init__(self, tmp, bound):
        self.tmp, self.bound, self.started = tmp, bound, []

    def start(self, name, argv, env=None):
        out = open(os.path.join(self.tmp, f"{name}.log"), "wb")
        proc = subprocess.Popen(
            ["timeout", "-k", "5", str(self.bound)] + argv,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=env, start_new_session=True)
        proc.bench_name = name
        self.started.append(proc)
        return proc

    def main_pid(self, proc):
        """The process timeout started (not timeout itself)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = descendants(proc.pid)
            if len(pids) > 1:
                return pids[1]
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        raise SetupError(f"{proc.bench_name}: no process under timeout (exit {proc.poll()}): "
                         + self.tail(proc.bench_name))

    def tail(self, name):
        try:
            with open(os.path.join(self.tmp, f"{name}.log"), errors="replace") as f:
                return " | ".join(f.read().splitlines()[-5:])
        except OSError:
            return ""

    def stop(self, proc, grace=15):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # timeout passes it on
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                log(f"{proc.bench_name} (pid {proc.pid}) still running after {grace}s: SIGKILL")
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self):
        for proc in reversed(list(self.started)):
            self.stop(proc)


def wait_ready(proc, procs, url, timeout=60, status=200):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SetupError(f"{proc.bench_name} exited ({proc.returncode}): {procs.tail(proc.bench_name)}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == status:
                    return
        except urllib.error.HTTPError as e:
            if e.code == status:
                return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise SetupError(f"{proc.bench_name} not ready at {url} within {timeout}s: {procs.tail(proc.bench_name)}")


def open_keepalive(port, count, token):
    """`count` connections, each having had one GET answered, left open."""
    conns = []
    try:
        for _ in range(count):
            conn = HTTPConnection("127.0.0.1", port, timeout=10)
            conns.append(conn)
            conn.request("GET", GET_PATH, headers={"Authorization": f"Bearer {token}"})
            try:
                response = conn.getresponse()
                response.read()
            except RemoteDisconnected:
                raise SetupError("keep-alive connection closed before the response")
            except IncompleteRead:
                raise SetupError("keep-alive connection closed mid-body")
            if response.status != 200:
                raise SetupError(f"keep-alive GET: HTTP {response.status} {response.reason}")
            if response.will_close:
                raise SetupError("keep-alive GET: the server closed the connection")
    except BaseException:
        for conn in conns:
            conn.close()
        raise
    return conns


def http(method, url, token=None, body=None):
    req = urllib.request.Request(url, data=body, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# --- configs ------------------------------------------------------------------

def nginx_conf(tmp, name, port, body):
    temp = os.path.join(tmp, f"{name}-temp")
    os.makedirs(temp, exist_ok=True)
    os.chmod(temp, 0o777)
    return f"""
worker_processes 2;
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.err warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_max_body_size 0;
    {body}
}}
"""


def upstream_conf(tmp, port):
    body_literal = UPSTREAM_BODY.replace("'", "\\'")
    return nginx_conf(tmp, "upstream", port, f"""
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type application/json;
            return 200 '{body_literal}';
        }}
    }}""")


def nginx_proxy_conf(tmp, port, up_port, partner_key):
    return nginx_conf(tmp, "nginx", port, f"""
    upstream polytomic {{
        server 127.0.0.1:{up_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://polytomic;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {partner_key}";
            proxy_set_header X-Polytomic-Version {VERSION};
        }}
    }}""")


def haproxy_conf(port, up_port, pubkey, partner_key):
    # The checks HAProxy's own JWT guide makes: alg allowlisted, issuer,
    # signature, expiry. Any failure is a 401 and is never forwarded.
    return f"""
global
    nbthread 2
    maxconn 8000

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    http-reuse always

frontend gateway
    bind 127.0.0.1:{port}
    http-request deny deny_status 401 unless {{ req.hdr(authorization) -m found }}
    http-request set-var(txn.alg) http_auth_bearer,jwt_header_query('$.alg')
    http-request set-var(txn.iss) http_auth_bearer,jwt_payload_query('$.iss')
    http-request set-var(txn.exp) http_auth_bearer,jwt_payload_query('$.exp','int')
    http-request set-var(txn.now) date
    http-request deny deny_status 401 unless {{ var(txn.alg) -m str RS256 }}
    http-request deny deny_status 401 unless {{ var(txn.iss) -m str {ISSUER} }}
    http-request deny deny_status 401 unless {{ http_auth_bearer,jwt_verify(txn.alg,"{pubkey}") -m int 1 }}
    http-request deny deny_status 401 if {{ var(txn.exp),sub(txn.now) -m int lt 0 }}
    http-request set-header Authorization "Bearer {partner_key}"
    http-request set-header X-Polytomic-Version {VERSION}
    default_backend polytomic

backend polytomic
    server upstream 127.0.0.1:{up_port} maxconn 1000
"""


# The organization operations, as the shipped config routes them, and
# scenario 4's large upload: a route without a schema, whose body streams.
ROUTES = [
    ("organization.current", ["GET"], "/api/organization", None),
    ("organizations.list", ["GET"], "/api/organizations", None),
    ("organizations.create", ["POST"], "/api/organizations", "organization-create.json"),
    ("organizations.get", ["GET"], "/api/organizations/{id}", None),
    ("organizations.update", ["PATCH", "PUT"], "/api/organizations/{id}", "organization-update.json"),
    ("organizations.delete", ["DELETE"], "/api/organizations/{id}", None),
    ("uploads.create", ["POST"], UPLOAD_PATH, None),
]


def routes_toml():
    blocks = []
    for operation, methods, path, schema in ROUTES:
        block = f"[[routes]]\noperation = {json.dumps(operation)}\nmethods = {json.dumps(methods)}\npath = {json.dumps(path)}\n"
        if schema:
            block += f"schema = {json.dumps(os.path.join(ROOT, 'schemas', schema))}\n"
        blocks.append(block)
    return "\n".join(blocks)


def gateway_conf(tmp, name, port, up_port, durability, cache_size=None):
    q = json.dumps
    cache = "" if cache_size is None else f"token_cache_size = {cache_size}\n"
    return f"""# Generated by bench/bench.py.
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:0"
max_body_bytes = 16777216
shutdown_grace = "5s"

[upstream]
url = "http://127.0.0.1:{up_port}"
timeout = "30s"

[credentials.partner]
file = {q(os.path.join(tmp, "partner-key"))}

[auth]
issuers = [{q(ISSUER)}]
audiences = [{q(AUDIENCE)}]
algorithms = ["RS256", "ES256"]
jwks_file = {q(os.path.join(tmp, "jwks.json"))}
{cache}
{routes_toml()}
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
path = {q(os.path.join(tmp, f"{name}-audit.jsonl"))}
durability = "{durability}"

[telemetry]
# The audit trail has one record per request; the per-request log line
# (info) would repeat it. Refusals are still logged at warn.
log_level = "warn"
"""


# --- load ---------------------------------------------------------------------

class Load:
    def __init__(self, tmp, duration):
        self.tmp, self.duration = tmp, duration
        self.lua = os.path.join(ROOT, "bench", "wrk.lua")

    def wrk(self, port, pids, path=GET_PATH, conns=32, method="GET", tokens=None,
            body=None, duration=None, peak_pid=None):
        duration = duration or self.duration
        out = os.path.join(self.tmp, "wrk-summary.json")
        if os.path.exists(out):
            os.remove(out)
        env = dict(os.environ, BENCH_METHOD=method, BENCH_PATH=path,
                   BENCH_TOKENS=tokens or "", BENCH_BODY=body or "", BENCH_OUT=out)
        threads = min(2, conns)
        if peak_pid:
            reset_peak(peak_pid)
        cpu0, t0 = cpu_ticks(pids), time.monotonic()
        run = subprocess.run(
            ["timeout", "-k", "5", str(duration + 30), "wrk", f"-t{threads}", f"-c{conns}",
             f"-d{duration}s", "--timeout", "10s", "-s", self.lua, f"http://127.0.0.1:{port}"],
            env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        elapsed = time.monotonic() - t0
        cpu = (cpu_ticks(pids) - cpu0) / CLK_TCK / elapsed * 100
        if run.returncode != 0 or not os.path.exists(out):
            raise SetupError(f"wrk failed ({run.returncode}): {run.stderr.strip() or run.stdout.strip()}")
        with open(out) as f:
            s = json.load(f)
        errors = sum(s["errors"].values())
        secs = s["duration_us"] / 1e6
        return {
            "rps": s["requests"] / secs, "requests": s["requests"], "errors": errors,
            "error_detail": s["errors"],
            "p50": s["latency_us"]["p50"] / 1000, "p99": s["latency_us"]["p99"] / 1000,
            "p999": s["latency_us"]["p999"] / 1000, "cpu": cpu,
            "rss_mb": (status_kb(peak_pid, "VmHWM") if peak_pid else rss_kb(pids)) / 1024,
        }


def median_row(runs):
    keys = ["rps", "p50", "p99", "p999", "cpu", "rss_mb"]
    row = {k: statistics.median(r[k] for r in runs) for k in keys}
    row["errors"] = sum(r["errors"] for r in runs)
    row["rounds"] = [round(r["rps"]) for r in runs]
    return row


# --- main ---------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--bench-tokens", required=True)
    ap.add_argument("--bare-proxy", required=True)
    ap.add_argument("--duration", type=int, default=6, help="seconds per load run")
    # Five short rounds rather than three long ones: this kind of VM drifts
    # by up to 30% for minutes at a time, and a median of five rides it out.
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="polytomic-bench.")
    os.chmod(tmp, 0o755)
    runs_total = args.rounds * 13 + 4
    bound = runs_total * (args.duration + 20) + 300
    procs = Procs(tmp, bound)
    ok = False
    try:
        ok = run(args, tmp, procs)
    except SetupError as e:
        log(f"error: {e}")
    finally:
        procs.stop_all()
        if args.keep or not ok:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


def run(args, tmp, procs):
    gw = args.gateway
    load = Load(tmp, args.duration)

    # Keys, tokens, partner key.
    for cmd in (["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                 "-out", f"{tmp}/rsa.pem"],
                ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-out", f"{tmp}/ec.pem"],
                ["openssl", "pkey", "-in", f"{tmp}/rsa.pem", "-pubout", "-out", f"{tmp}/rsa.pub.pem"]):
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    subprocess.run([args.bench_tokens, "--rsa-key", f"{tmp}/rsa.pem", "--ec-key", f"{tmp}/ec.pem",
                    "--issuer", ISSUER, "--audience", AUDIENCE, "--count", str(MANY_TOKENS),
                    "--ttl", "7200", "--out", tmp], check=True, timeout=300)
    with open(f"{tmp}/rs256.txt") as f:
        rs_tokens = f.read().split()
    with open(f"{tmp}/es256.txt") as f:
        es_tokens = f.read().split()
    for name, token in (("rs256-one.txt", rs_tokens[0]), ("es256-one.txt", es_tokens[0])):
        with open(f"{tmp}/{name}", "w") as f:
            f.write(token + "\n")
    one_rs, one_es, many_rs = f"{tmp}/rs256-one.txt", f"{tmp}/es256-one.txt", f"{tmp}/rs256.txt"
    partner_key = "pk_bench_" + os.urandom(24).hex()
    with open(f"{tmp}/partner-key", "w") as f:
        f.write(partner_key + "\n")
    os.chmod(f"{tmp}/partner-key", 0o600)
    # A valid ~300-byte update body for scenario 3.
    put_body = json.dumps({
        "name": "Bench Org renamed", "client_id": "bench-client-0123456789",
        "client_secret": "bench-secret-" + "x" * 40, "issuer": "https://idp.example.com/oauth2/default",
        "sso_domain": "bench.example.com", "sso_org_id": "org_0123456789abcdef0123",
    }).encode()
    with open(f"{tmp}/put.json", "wb") as f:
        f.write(put_body)
    with open(f"{tmp}/upload.bin", "wb") as f:
        f.write(os.urandom(10 * 1024 * 1024))

    # Start everything.
    ports = {n: free_port() for n in ("upstream", "nginx", "bare", "haproxy", "gw", "gw_nocache", "gw_fsync")}
    with open(f"{tmp}/upstream.conf", "w") as f:
        f.write(upstream_conf(tmp, ports["upstream"]))
    with open(f"{tmp}/nginx.conf", "w") as f:
        f.write(nginx_proxy_conf(tmp, ports["nginx"], ports["upstream"], partner_key))
    with open(f"{tmp}/haproxy.cfg", "w") as f:
        f.write(haproxy_conf(ports["haproxy"], ports["upstream"], f"{tmp}/rsa.pub.pem", partner_key))
    gw_confs = {
        "gw": gateway_conf(tmp, "gw", ports["gw"], ports["upstream"], "flush"),
        "gw_nocache": gateway_conf(tmp, "gw_nocache", ports["gw_nocache"], ports["upstream"], "flush", 0),
        "gw_fsync": gateway_conf(tmp, "gw_fsync", ports["gw_fsync"], ports["upstream"], "fsync"),
    }
    for name, conf in gw_confs.items():
        with open(f"{tmp}/{name}.toml", "w") as f:
            f.write(conf)

    up = procs.start("upstream", ["nginx", "-p", tmp, "-e", f"{tmp}/upstream.err", "-c", f"{tmp}/upstream.conf"])
    ngx = procs.start("nginx", ["nginx", "-p", tmp, "-e", f"{tmp}/nginx.err", "-c", f"{tmp}/nginx.conf"])
    hap = procs.start("haproxy", ["haproxy", "-db", "-f", f"{tmp}/haproxy.cfg"])
    bare = procs.start("bare", [args.bare_proxy, f"127.0.0.1:{ports['bare']}",
                                f"http://127.0.0.1:{ports['upstream']}"])
    gws = {name: procs.start(name, [gw, "serve", "--config", f"{tmp}/{name}.toml"])
           for name in gw_confs}
    wait_ready(up, procs, f"http://127.0.0.1:{ports['upstream']}/")
    wait_ready(ngx, procs, f"http://127.0.0.1:{ports['nginx']}/")
    wait_ready(hap, procs, f"http://127.0.0.1:{ports['haproxy']}/", status=401)
    wait_ready(bare, procs, f"http://127.0.0.1:{ports['bare']}/")
    for name, proc in gws.items():
        wait_ready(proc, procs, f"http://127.0.0.1:{ports[name]}/readyz")
    pids = {"upstream": descendants(procs.main_pid(up)), "nginx": descendants(procs.main_pid(ngx)),
            "haproxy": [procs.main_pid(hap)], "bare": [procs.main_pid(bare)]}
    for name, proc in gws.items():
        pids[name] = [procs.main_pid(proc)]

    # Each system must really authenticate before it is measured.
    base = {n: f"http://127.0.0.1:{p}" for n, p in ports.items()}
    forged = rs_tokens[0][:-8] + ("AAAAAAAA" if not rs_tokens[0].endswith("AAAAAAAA") else "BBBBBBBB")
    checks = [
        ("upstream GET", http("GET", base["upstream"] + GET_PATH)[0], 200),
        ("nginx GET", http("GET", base["nginx"] + GET_PATH)[0], 200),
        ("haproxy GET, valid RS256", http("GET", base["haproxy"] + GET_PATH, rs_tokens[0])[0], 200),
        ("haproxy GET, no token", http("GET", base["haproxy"] + GET_PATH)[0], 401),
        ("haproxy GET, forged signature", http("GET", base["haproxy"] + GET_PATH, forged)[0], 401),
        ("gateway GET, valid RS256", http("GET", base["gw"] + GET_PATH, rs_tokens[0])[0], 200),
        ("gateway GET, valid ES256", http("GET", base["gw"] + GET_PATH, es_tokens[0])[0], 200),
        ("gateway GET, forged signature", http("GET", base["gw"] + GET_PATH, forged)[0], 401),
        ("gateway GET, no cache", http("GET", base["gw_nocache"] + GET_PATH, rs_tokens[1])[0], 200),
        ("gateway PUT, fsync", http("PUT", base["gw_fsync"] + GET_PATH, rs_tokens[0], put_body)[0], 200),
        ("gateway PUT, invalid body", http("PUT", base["gw_fsync"] + GET_PATH, rs_tokens[0], b'{"name": 1}')[0], 422),
    ]
    bad = [f"{what}: {got}, expected {want}" for what, got, want in checks if got != want]
    if bad:
        raise SetupError("sanity checks failed: " + "; ".join(bad))
    log(f"sanity checks passed ({len(checks)}); tmp {tmp}")

    # Warm-up: pools, caches (the many-token rotation fills the gateway's).
    log("warm-up")
    for port, tokens in ((ports["upstream"], None), (ports["nginx"], None), (ports["bare"], None),
                         (ports["haproxy"], one_rs), (ports["gw"], one_rs)):
        load.wrk(port, [], tokens=tokens, duration=2)
    load.wrk(ports["gw"], [], tokens=many_rs, duration=3)

    # Scenarios 1-3, in alternating rounds.
    plan = [
        ("1", "upstream", "upstream direct", dict(port=ports["upstream"], pids=pids["upstream"])),
        ("1", "nginx", "nginx plain proxy", dict(port=ports["nginx"], pids=pids["nginx"])),
        ("1", "bare", "bare hyper proxy (examples/bare_proxy.rs: the stack's floor, no checks)",
         dict(port=ports["bare"], pids=pids["bare"])),
        ("1", "haproxy", "HAProxy jwt_verify RS256", dict(port=ports["haproxy"], pids=pids["haproxy"], tokens=one_rs)),
        ("1", "gateway", "gateway full stack, RS256", dict(port=ports["gw"], pids=pids["gw"], tokens=one_rs)),
        ("2", "gateway_es256", "gateway, ES256", dict(port=ports["gw"], pids=pids["gw"], tokens=one_es)),
        ("2", "haproxy_many", f"HAProxy, {MANY_TOKENS:,} RS256 tokens", dict(port=ports["haproxy"], pids=pids["haproxy"], tokens=many_rs)),
        ("2", "gateway_many", f"gateway, {MANY_TOKENS:,} RS256 tokens", dict(port=ports["gw"], pids=pids["gw"], tokens=many_rs)),
        ("2", "gateway_many_nocache", f"gateway, {MANY_TOKENS:,} RS256 tokens, cache off", dict(port=ports["gw_nocache"], pids=pids["gw_nocache"], tokens=many_rs)),
    ]
    for conns in (1, 32, 256):
        plan.append(("3", f"put_c{conns}", f"gateway PUT, fsync audit, c={conns}",
                     dict(port=ports["gw_fsync"], pids=pids["gw_fsync"], tokens=one_rs, method="PUT",
                          body=f"{tmp}/put.json", conns=conns)))
    results = {key: [] for _, key, _, _ in plan}
    for r in range(args.rounds):
        for _, key, label, kw in plan:
            res = load.wrk(**kw)
            results[key].append(res)
            flag = "" if res["errors"] == 0 else f"  ERRORS {res['error_detail']}"
            log(f"round {r + 1}/{args.rounds} {label}: {res['rps']:,.0f} req/s, p99 {res['p99']:.2f} ms, "
                f"cpu {res['cpu']:.0f}%{flag}")

    # Scenarios 4 and 5 on a fresh gateway, so its peaks are its own.
    for name in list(gws):
        procs.stop(gws[name])
    ports["gw_mem"] = free_port()
    with open(f"{tmp}/gw_mem.toml", "w") as f:
        f.write(gateway_conf(tmp, "gw_mem", ports["gw_mem"], ports["upstream"], "flush"))
    mem = procs.start("gw_mem", [gw, "serve", "--config", f"{tmp}/gw_mem.toml"])
    wait_ready(mem, procs, f"http://127.0.0.1:{ports['gw_mem']}/readyz")
    mem_pid = procs.main_pid(mem)
    base_mem = f"http://127.0.0.1:{ports['gw_mem']}"
    for _ in range(100):
        if http("GET", base_mem + GET_PATH, rs_tokens[0])[0] != 200:
            raise SetupError("gw_mem: GET failed")
    time.sleep(1)  # let the audit writer go idle before reading idle RSS
    idle_kb = status_kb(mem_pid, "VmRSS")
    log(f"idle RSS {idle_kb / 1024:.1f} MB")

    reset_peak(mem_pid)
    before_kb = status_kb(mem_pid, "VmRSS")
    upload_times = []
    for _ in range(3):
        t0 = time.monotonic()
        with open(f"{tmp}/upload.bin", "rb") as f:
            status, _ = http("POST", base_mem + UPLOAD_PATH, rs_tokens[0], f.read())
        upload_times.append(time.monotonic() - t0)
        if status != 200:
            raise SetupError(f"10 MB upload: status {status}")
    upload_peak_kb = status_kb(mem_pid, "VmHWM")
    log(f"10 MB upload x3: RSS before {before_kb / 1024:.1f} MB, peak {upload_peak_kb / 1024:.1f} MB")

    reset_peak(mem_pid)
    conns = open_keepalive(ports["gw_mem"], 1000, rs_tokens[0])
    try:
        held_kb, held_peak_kb = status_kb(mem_pid, "VmRSS"), status_kb(mem_pid, "VmHWM")
    finally:
        for conn in conns:
            conn.close()
    log(f"1,000 open keep-alive connections: RSS {held_kb / 1024:.1f} MB (peak {held_peak_kb / 1024:.1f} MB)")

    conn1000 = load.wrk(ports["gw_mem"], [mem_pid], tokens=one_rs, conns=1000,
                        duration=args.duration, peak_pid=mem_pid)
    log(f"1,000 busy connections: peak RSS {conn1000['rss_mb']:.1f} MB, {conn1000['rps']:,.0f} req/s")
    procs.stop(mem)

    summary = report(args, results, plan, dict(
        idle_mb=idle_kb / 1024, upload_before_mb=before_kb / 1024, upload_peak_mb=upload_peak_kb / 1024,
        upload_s=statistics.median(upload_times), conn1000=conn1000,
        held_mb=held_kb / 1024, held_peak_mb=held_peak_kb / 1024))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return summary["valid"]


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass

    def version(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"
    return {
        "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
        "nginx": version(["nginx", "-v"]), "haproxy": version(["haproxy", "-v"]),
        "wrk": version(["wrk", "-v"]),
    }


def report(args, results, plan, mem):
    rows = {key: median_row(runs) for key, runs in results.items()}
    nginx, hap, hap_many = rows["nginx"]["rps"], rows["haproxy"]["rps"], rows["haproxy_many"]["rps"]
    gw_get = rows["gateway"]["rps"]
    m = machine()
    print(f"\nMachine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}; {m['nginx']}; "
          f"{m['haproxy']}; {m['wrk']}")
    print(f"Each figure is the median of {args.rounds} rounds of {args.duration} s "
          "(wrk, 2 threads, 32 connections unless noted).\n")
    print("| # | System | req/s | p50 ms | p99 ms | p99.9 ms | proxy CPU % | proxy RSS MB | vs nginx | vs HAProxy | rounds (req/s) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for scenario, key, label, _ in plan:
        r = rows[key]
        vs_hap = hap_many if key in ("gateway_many", "gateway_many_nocache") else hap
        ratios = ("", "") if key in ("upstream", "nginx", "haproxy", "haproxy_many") else (
            f"{r['rps'] / nginx:.2f}×", f"{r['rps'] / vs_hap:.2f}×")
        errs = "" if r["errors"] == 0 else f" ({r['errors']} errors)"
        print(f"| {scenario} | {label}{errs} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
              f"{r['p999']:.2f} | {r['cpu']:.0f} | {r['rss_mb']:.1f} | {ratios[0]} | {ratios[1]} | "
              f"{', '.join(f'{x:,}' for x in r['rounds'])} |")
    c = mem["conn1000"]
    print(f"| 4 | gateway, 10 MB upload (no schema), 3 in a row | {mem['upload_s']:.2f} s each | | | | | "
          f"{mem['upload_before_mb']:.1f} → peak {mem['upload_peak_mb']:.1f} | | | |")
    print(f"| 5 | gateway idle | | | | | | {mem['idle_mb']:.1f} | | | |")
    print(f"| 5 | gateway, 1,000 open keep-alive connections (one GET each, then held) | | | | | | "
          f"{mem['held_mb']:.1f} (peak {mem['held_peak_mb']:.1f}) | | | |")
    print(f"| 5 | gateway, 1,000 busy connections (wrk -c1000, for comparison) | {c['rps']:,.0f} | "
          f"{c['p50']:.2f} | {c['p99']:.2f} | {c['p999']:.2f} | {c['cpu']:.0f} | peak {c['rss_mb']:.1f} | | | |")

    upload_delta = mem["upload_peak_mb"] - mem["upload_before_mb"]
    targets = [
        ("S1 gateway ≥ 2.0× HAProxy throughput", gw_get / hap, 2.0, f"{gw_get / hap:.2f}×"),
        ("S1 gateway p99 < HAProxy p99", rows["haproxy"]["p99"] - rows["gateway"]["p99"], 1e-9,
         f"{rows['gateway']['p99']:.2f} vs {rows['haproxy']['p99']:.2f} ms"),
        ("S1 gateway ≥ 1.0× nginx throughput", gw_get / nginx, 1.0, f"{gw_get / nginx:.2f}×"),
        ("S2 many tokens ≥ 1.2× HAProxy (same tokens)", rows["gateway_many"]["rps"] / hap_many, 1.2,
         f"{rows['gateway_many']['rps'] / hap_many:.2f}× (cache off: "
         f"{rows['gateway_many_nocache']['rps'] / hap_many:.2f}×)"),
        ("S3 PUT fsync c=32 ≥ 0.5× own GET", rows["put_c32"]["rps"] / gw_get, 0.5,
         f"{rows['put_c32']['rps'] / gw_get:.2f}×"),
        ("S5 idle RSS ≤ 20 MB", 20 - mem["idle_mb"], 0, f"{mem['idle_mb']:.1f} MB"),
        ("S5 RSS at 1,000 open keep-alive connections ≤ 64 MB", 64 - mem["held_peak_mb"], 0,
         f"{mem['held_peak_mb']:.1f} MB (busy: {c['rss_mb']:.1f} MB)"),
        ("S4 10 MB upload raises peak RSS < 5 MB", 5 - upload_delta, 1e-9, f"+{upload_delta:.1f} MB"),
    ]
    print("\n| Target | Result | Met |\n|---|---|---|")
    for name, value, threshold, shown in targets:
        print(f"| {name} | {shown} | {'yes' if value >= threshold else 'NO'} |")
    errors = sum(r["errors"] for r in rows.values()) + c["errors"]
    if errors:
        print(f"\nINVALID: {errors} requests failed (non-2xx or socket errors); see the log above.")
    return {"machine": m, "rows": rows, "memory": mem, "valid": errors == 0,
            "targets": {n: s for n, _, _, s in targets}}


if __name__ == "__main__":
    sys.exit(main())
