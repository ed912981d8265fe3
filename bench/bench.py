#!/usr/bin/env python3
"""The side-by-side benchmark's driver; bench/run.sh installs the tools,
builds the gateway and calls this. See BENCHMARKS.md for what it measures,
and issue 21 ("Performance II") for the targets it checks.

Everything runs on loopback with material generated for the run (keys,
tokens, partner key, configs in a temp dir). Every process it starts runs
under `timeout` (the start-up samples run bare, so that exec is the gateway's
own, and are stopped at once) and is stopped by PID at the end, whatever
happens. Each load is a bounded wrk run.

Systems behind the same static-JSON nginx upstream, which also serves the
JWKS (/jwks.json) that the gateway fetches over http and Apache over https
(mod_auth_openidc refuses http):
  upstream   the upstream alone (the ceiling)
  nginx      nginx as a plain reverse proxy setting two headers
  bare       examples/bare_proxy.rs: hyper + hyper-util's pooled client on
             tokio setting the same headers, nothing else (the floor of the
             gateway's stack)
  haproxy    HAProxy verifying an RS256 JWT (jwt_verify, alg/iss/exp checks)
             and setting the same two headers
  apache     Apache httpd (mpm_event) + mod_auth_openidc as an OAuth 2.0
             resource server: RS256 JWT against the JWKS, exp, iss and aud
             checked, then the same two headers, proxied with keep-alive
  gateway    polytomic-gateway running the SHIPPED config/gateway.toml (the
             full catalog, the shipped policy, the audit chain on stdout with
             its default durability, info-level JSON logs), with only the
             addresses, keys and paths changed: see shipped_gateway_conf()

Gateway variants (each a separate process, each from the shipped file):
  gateway          the shipped config
  gateway_reqlog   + telemetry.request_log = true (env), if the binary
                   knows the key; skipped with a note if it does not
  gateway_small    [catalog] off, the six organization [[routes]], the
                   shipped three rules renamed to those routes
  gateway_1000     the shipped config with 1,000 policy rules, the one
                   matching the bench token's team last
  gateway_nocache  + auth.token_cache_size = 0 (env)
  gateway_put      + audit.durability = "fsync" set explicitly (env)
  gateway_put_file + audit to a file with "fsync" (a real fdatasync; env)
  gw_mem / gw_upload / start-up samples: fresh processes after the rounds

The load runs go in rounds that alternate the systems, so that drift of the
machine spreads over all of them; each figure is the median over rounds.
"""

import argparse
import base64
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from http.client import HTTPConnection, IncompleteRead, RemoteDisconnected

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_CONFIG = os.path.join(ROOT, "config", "gateway.toml")
ORG_ID = "248df4b7-aa70-47b8-a036-33ac447e668d"
ISSUER = "https://idp.bench.polytomic-gateway.invalid"
AUDIENCE = "polytomic-gateway"
VERSION = "2025-09-18"
# examples/bench_tokens.rs puts every token in this team.
BENCH_TEAM = "platform"
GET_PATH = f"/api/organizations/{ORG_ID}"
UPLOAD_PATH = "/api/uploads"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
MANY_TOKENS = 10_000
POLICY_RULES = 1_000
STARTS = 7
# Audit and log files are truncated between load runs once past this, so a
# default run does not write gigabytes (they are opened O_APPEND, so the
# gateway's next write lands at the new end).
TRUNCATE_BYTES = 32 << 20

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

    def start(self, name, argv, env=None, stdout=None, bare=False):
        """Starts `argv`, output to NAME.log. `stdout`: a separate file for
        standard output (the gateway's audit records); then NAME.log has
        standard error only (its logs). Both are opened O_APPEND, so they can
        be truncated under the process. `bare`: exec argv itself, not under
        `timeout` (the start-up samples, stopped as soon as measured)."""
        err = open(os.path.join(self.tmp, f"{name}.log"), "ab")
        out = open(stdout, "ab") if stdout else err
        try:
            proc = subprocess.Popen(
                argv if bare else ["timeout", "-k", "5", str(self.bound)] + argv,
                stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                env=env, start_new_session=True)
        finally:
            err.close()
            if stdout:
                out.close()
        proc.bench_name, proc.bench_bare = name, bare
        self.started.append(proc)
        return proc

    def main_pid(self, proc):
        """The process timeout started (not timeout itself)."""
        if proc.bench_bare:
            return proc.pid
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

    def stop(self, proc, grace=25):
        # grace: above the shipped server.shutdown_grace (20s).
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


def readyz_status(port):
    """One GET /readyz on a fresh connection: the status, or None if the port
    does not accept yet. Raw socket: urllib's overhead would blur a start-up
    measured in milliseconds."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            head = s.recv(64)
    except (ConnectionRefusedError, ConnectionResetError, socket.timeout):
        return None
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


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


# --- tokens ---------------------------------------------------------------------

def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_rs256(rsa_pem, claims, kid="bench-rsa"):
    """An RS256 JWT signed with openssl: for the refusal checks (expired, wrong
    issuer, wrong audience), which examples/bench_tokens.rs does not make."""
    header = b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": kid}).encode())
    payload = b64url(json.dumps(claims).encode())
    signing_input = f"{header}.{payload}".encode()
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", rsa_pem], input=signing_input,
                         capture_output=True, check=True, timeout=30).stdout
    return f"{header}.{payload}.{b64url(sig)}"


# --- configs: the peers -----------------------------------------------------------

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


def upstream_conf(tmp, port, tls_port):
    body_literal = UPSTREAM_BODY.replace("'", "\\'")
    return nginx_conf(tmp, "upstream", port, f"""
    # The JWKS over https, for mod_auth_openidc, which refuses a plain http
    # OIDCOAuthVerifyJwksUri: a certificate made for the run, for 127.0.0.1.
    server {{
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {tmp}/jwks-tls.crt;
        ssl_certificate_key {tmp}/jwks-tls.key;
        location = /jwks.json {{
            default_type application/json;
            alias {tmp}/jwks.json;
        }}
        location / {{ return 404; }}
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        # The JWKS the gateway fetches (auth.jwks_url); HAProxy reads the
        # public key's PEM instead.
        location = /jwks.json {{
            default_type application/json;
            alias {tmp}/jwks.json;
        }}
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


APACHE_MODULES = "/usr/lib/apache2/modules"


def apache_conf(tmp, port, up_port, jwks_tls_port, partner_key):
    """Apache httpd 2.4 (mpm_event) + mod_auth_openidc 2.4.12 as an OAuth 2.0
    resource server: the bearer JWT is verified locally against the same
    JWKS the gateway fetches, served over https because the module refuses
    an http OIDCOAuthVerifyJwksUri (its RSA key by `kid`,
    so only RS256 tokens from it verify here), `exp` is checked by the module
    (mandatory for JWT access tokens), `iss` and `aud` by `Require claim`.
    mod_auth_openidc 2.4.12 has no algorithm allowlist for OAuth 2.0 access
    tokens; the JWKS holds one RSA and one EC key, and an HS256 token is
    refused (no symmetric key is configured). Then the two headers, and a
    keep-alive pool to the upstream.

    Threads, for 2 cores and c=32/c=1000 like the others: 2 processes x 32
    threads (ServerLimit 2, ThreadsPerChild 32, MaxRequestWorkers 64), kept
    up (MaxSpareThreads is all of them, so none is reaped); the event MPM parks idle
    keep-alive connections without holding a thread. Children run as
    www-data (httpd refuses to serve as root); the parent, as root, opens the
    logs and the listener."""
    run_dir = os.path.join(tmp, "apache-run")
    os.makedirs(run_dir, exist_ok=True)
    os.chmod(run_dir, 0o777)
    mods = [("mpm_event_module", "mod_mpm_event.so"), ("authn_core_module", "mod_authn_core.so"),
            ("authz_core_module", "mod_authz_core.so"), ("authz_user_module", "mod_authz_user.so"),
            ("auth_openidc_module", "mod_auth_openidc.so"), ("proxy_module", "mod_proxy.so"),
            ("proxy_http_module", "mod_proxy_http.so"), ("headers_module", "mod_headers.so")]
    load = "\n".join(f"LoadModule {m} {APACHE_MODULES}/{so}" for m, so in mods)
    return f"""# Generated by bench/bench.py.
ServerRoot {tmp}
DefaultRuntimeDir {run_dir}
PidFile {tmp}/apache.pid
ErrorLog {tmp}/apache.err
LogLevel warn
# mod_unixd is built in (apache2 -l); children drop to this user.
User www-data
Group www-data
{load}
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
ListenBacklog 4096
Timeout 60
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 120
ServerLimit 2
StartServers 2
ThreadLimit 32
ThreadsPerChild 32
MaxRequestWorkers 64
MinSpareThreads 1
MaxSpareThreads 64
MaxConnectionsPerChild 0
# No access log (none is configured: mod_log_config logs nothing without one).

OIDCCryptoPassphrase {os.urandom(16).hex()}
# The same JWKS as the gateway's, over https (the module refuses http here),
# from the upstream nginx, whose certificate is made for the run.
OIDCOAuthVerifyJwksUri https://127.0.0.1:{jwks_tls_port}/jwks.json
OIDCSSLValidateServer On
OIDCCABundlePath {tmp}/jwks-tls.crt
OIDCOAuthRemoteUserClaim sub
# Do not pass the claims on as OIDC_CLAIM_* headers: the others forward
# nothing but the two headers.
OIDCPassClaimsAs none

<Location />
    AuthType oauth20
    <RequireAll>
        Require valid-user
        Require claim iss:{ISSUER}
        Require claim aud:{AUDIENCE}
    </RequireAll>
    RequestHeader set Authorization "Bearer {partner_key}"
    RequestHeader set X-Polytomic-Version {VERSION}
</Location>
ProxyPass / http://127.0.0.1:{up_port}/ keepalive=On ttl=120
"""


# --- configs: the gateway, from the shipped file ---------------------------------

def toml_str(value):
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def table_of(line):
    """The table a `[x]` or `[[x]]` header line opens, else None."""
    m = re.match(r"^\s*\[\[?\s*([A-Za-z0-9_.\-]+)\s*\]\]?\s*(#.*)?$", line)
    return m.group(1) if m else None


def set_key(text, table, key, value):
    """`text` with the one `key = ...` line of `[table]` replaced by
    `key = value` (a TOML literal). Fails loudly when the shipped file has no
    such line, or more than one: the bench must notice the file changing."""
    lines = text.split("\n")
    current, hits = None, []
    for i, line in enumerate(lines):
        opened = table_of(line)
        if opened is not None:
            current = opened
        elif current == table and re.match(rf"^\s*{re.escape(key)}\s*=", line):
            hits.append(i)
    if len(hits) != 1:
        raise SetupError(f"{SHIPPED_CONFIG}: expected one `{key} = ...` in [{table}], found "
                         f"{len(hits)}; the shipped config changed: update bench/bench.py")
    lines[hits[0]] = f"{key} = {value}"
    return "\n".join(lines)


def cut_rule(text, rule_name):
    """`text` without the `[[policy.rules]]` block named `rule_name`, and
    that block. A block runs from its header to the next header, comment or
    blank line."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if table_of(line) != "policy.rules" or not line.strip().startswith("[["):
            continue
        end = i + 1
        while end < len(lines) and lines[end].strip() and not lines[end].lstrip().startswith(("[", "#")):
            end += 1
        block = lines[i:end]
        if any(re.match(rf"^\s*name\s*=\s*{re.escape(toml_str(rule_name))}\s*$", b) for b in block):
            return "\n".join(lines[:i] + lines[end:]), "\n".join(block)
    raise SetupError(f"{SHIPPED_CONFIG}: no [[policy.rules]] named {rule_name!r}; the shipped "
                     "config changed: update bench/bench.py")


def replace_once(text, old, new):
    if text.count(old) != 1:
        raise SetupError(f"{SHIPPED_CONFIG}: expected {old!r} once, found it {text.count(old)} "
                         "times; the shipped config changed: update bench/bench.py")
    return text.replace(old, new)


def shipped_gateway_conf(shipped, port, admin_port, up_port):
    """The shipped config/gateway.toml with only the addresses and keys
    changed: the listeners, the upstream, the issuer and audience of the
    bench tokens, and the JWKS URL, pointed at the upstream nginx (the
    gateway accepts plain http to a loopback IP literal, with a warning;
    src/auth/mod.rs). Credentials stay as the file names them (env vars,
    set by gateway_env). Audit stays on stdout, which the harness sends to a
    file: that is the "path" changed."""
    text = shipped
    text = set_key(text, "server", "listen", toml_str(f"127.0.0.1:{port}"))
    text = set_key(text, "server", "admin_listen", toml_str(f"127.0.0.1:{admin_port}"))
    text = set_key(text, "upstream", "url", toml_str(f"http://127.0.0.1:{up_port}"))
    text = set_key(text, "auth", "issuers", f"[{toml_str(ISSUER)}]")
    text = set_key(text, "auth", "audiences", f"[{toml_str(AUDIENCE)}]")
    text = set_key(text, "auth", "jwks_url", toml_str(f"http://127.0.0.1:{up_port}/jwks.json"))
    return "# Generated by bench/bench.py from config/gateway.toml.\n" + text


# The organization operations, as bench.py routed them before the catalog;
# the 3-rules/6-routes gateway routes these, and scenario 4's large upload
# a route without a schema, whose body streams.
ROUTES = [
    ("organization.current", ["GET"], "/api/organization", None),
    ("organizations.list", ["GET"], "/api/organizations", None),
    ("organizations.create", ["POST"], "/api/organizations", "organization-create.json"),
    ("organizations.get", ["GET"], "/api/organizations/{id}", None),
    ("organizations.update", ["PATCH", "PUT"], "/api/organizations/{id}", "organization-update.json"),
    ("organizations.delete", ["DELETE"], "/api/organizations/{id}", None),
]
UPLOAD_ROUTE = ("uploads.create", ["POST"], UPLOAD_PATH, None)


def routes_toml(routes):
    blocks = []
    for operation, methods, path, schema in routes:
        block = (f"[[routes]]\noperation = {toml_str(operation)}\nmethods = {json.dumps(methods)}\n"
                 f"path = {toml_str(path)}\ncredential = \"partner\"\n")
        if schema:
            block += f"schema = {toml_str(os.path.join(ROOT, 'schemas', schema))}\n"
        blocks.append(block)
    return "\n" + "\n".join(blocks)


def small_gateway_conf(base):
    """The comparison for policy at scale: the shipped config with [catalog]
    off, the six organization [[routes]] and the shipped three rules, their
    operation names changed to those routes' (a pattern that matches no
    route is a config error). Everything else as shipped."""
    text = set_key(base, "catalog", "enabled", "false")
    text = replace_once(
        text, 'allow = ["organization.list", "organization.get", "organization.get_current", "users.list", "users.get"]',
        'allow = ["organizations.list", "organizations.get", "organization.current"]')
    text = replace_once(text, 'allow = ["organization.update", "webhooks.*"]',
                        'allow = ["organizations.update"]')
    return text + routes_toml(ROUTES)


def many_rules_gateway_conf(base, operations, count=POLICY_RULES):
    """The shipped config with `count` policy rules. The shipped rule for the
    bench token's team (platform-admins) is moved LAST, behind the two other
    shipped rules and count - 3 generated ones for other teams: policy
    decisions take the first matching rule, so a linear scan walks all
    `count` rules for every bench request, the worst case. The generated
    rules vary as real ones do: a third allow a glob (`connections.*`), a
    third one to three specific operations, a third operations limited to
    one to three organizations; one in five names subjects, not teams."""
    text, platform = cut_rule(base, "platform-admins")
    if BENCH_TEAM not in platform:
        raise SetupError(f"{SHIPPED_CONFIG}: rule platform-admins no longer names team {BENCH_TEAM!r}")
    rng = random.Random(21)
    prefixes = sorted({op.rsplit(".", 1)[0] for op in operations if "." in op})
    blocks = []
    for i in range(count - 3):
        who = (f"subjects = [{toml_str(f'svc-{i:04d}@bench.invalid')}]" if i % 5 == 4
               else f"teams = [{toml_str(f'team-{i:04d}')}, {toml_str(f'team-{i:04d}-oncall')}]")
        kind = i % 3
        if kind == 0:
            allow = [f"{rng.choice(prefixes)}.*"]
        else:
            allow = rng.sample(operations, rng.randint(1, 3))
        block = f"[[policy.rules]]\nname = \"generated-{i:04d}\"\n{who}\nallow = {json.dumps(allow)}\n"
        if kind == 2:
            orgs = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(rng.randint(1, 3))]
            block += f"organizations = {json.dumps(orgs)}\n"
        blocks.append(block)
    return (text + "\n# Generated by bench/bench.py: rules for other teams, then the shipped\n"
            "# rule for the bench token's team, last.\n" + "\n".join(blocks) + "\n" + platform + "\n")


def upload_gateway_conf(base):
    """Scenario 4: the shipped config plus a route without a schema; its
    max_body_bytes (1 MB) is raised by env for the 10 MB bodies."""
    return base + routes_toml([UPLOAD_ROUTE])


def parse_gateway_conf(name, text, want_listen):
    """Parses a generated config (tomllib) and checks the substitutions took."""
    try:
        conf = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SetupError(f"{name}: generated config is not valid TOML: {e}")
    got = (conf.get("server", {}).get("listen"), conf.get("auth", {}).get("issuers"))
    if got != (want_listen, [ISSUER]):
        raise SetupError(f"{name}: generated config has listen/issuers {got}")
    return conf


def gateway_env(shipped_conf, credentials, extra=None):
    """The environment a gateway runs with: the credentials under the env
    var names the shipped file gives them, no inherited GATEWAY__* or
    RUST_LOG (which would override the file), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY__") and k != "RUST_LOG"}
    for name, source in shipped_conf.get("credentials", {}).items():
        if "env" not in source:
            raise SetupError(f"{SHIPPED_CONFIG}: credentials.{name} is not from an env var; "
                             "update bench/bench.py")
        env[source["env"]] = credentials.setdefault(name, f"key_bench_{name}_" + os.urandom(16).hex())
    env.update(extra or {})
    return env


# --- load ---------------------------------------------------------------------

def file_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


class Load:
    def __init__(self, tmp, duration):
        self.tmp, self.duration = tmp, duration
        self.lua = os.path.join(ROOT, "bench", "wrk.lua")

    def wrk(self, port, pids, path=GET_PATH, conns=32, method="GET", tokens=None,
            body=None, duration=None, peak_pid=None, audit=None, logs=None):
        """One bounded wrk run. `audit` and `logs`: the gateway's stdout and
        stderr files, for bytes written a request (then truncated if big)."""
        duration = duration or self.duration
        out = os.path.join(self.tmp, "wrk-summary.json")
        if os.path.exists(out):
            os.remove(out)
        env = dict(os.environ, BENCH_METHOD=method, BENCH_PATH=path,
                   BENCH_TOKENS=tokens or "", BENCH_BODY=body or "", BENCH_OUT=out)
        threads = min(2, conns)
        if peak_pid:
            reset_peak(peak_pid)
        sizes0 = [file_size(p) for p in (audit, logs) if p]
        cpu0, t0 = cpu_ticks(pids), time.monotonic()
        run = subprocess.run(
            ["timeout", "-k", "5", str(duration + 30), "wrk", f"-t{threads}", f"-c{conns}",
             f"-d{duration}s", "--timeout", "10s", "-s", self.lua, f"http://127.0.0.1:{port}"],
            env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        elapsed = time.monotonic() - t0
        cpu = (cpu_ticks(pids) - cpu0) / CLK_TCK / elapsed * 100
        rss = (status_kb(peak_pid, "VmHWM") if peak_pid else rss_kb(pids)) / 1024
        if run.returncode != 0 or not os.path.exists(out):
            raise SetupError(f"wrk failed ({run.returncode}): {run.stderr.strip() or run.stdout.strip()}")
        with open(out) as f:
            s = json.load(f)
        errors = sum(s["errors"].values())
        secs = s["duration_us"] / 1e6
        res = {
            "rps": s["requests"] / secs, "requests": s["requests"], "errors": errors,
            "error_detail": s["errors"],
            "p50": s["latency_us"]["p50"] / 1000, "p99": s["latency_us"]["p99"] / 1000,
            "p999": s["latency_us"]["p999"] / 1000, "cpu": cpu, "rss_mb": rss,
        }
        # Written while wrk ran, a request (requests still in flight at the
        # end make this a slight overestimate).
        for key, p, size0 in zip(("audit_bytes_per_req", "log_bytes_per_req"), (audit, logs), sizes0):
            if p:
                res[key] = (file_size(p) - size0) / max(1, s["requests"])
                if file_size(p) > TRUNCATE_BYTES:
                    os.truncate(p, 0)
        return res


def median_row(runs):
    keys = ["rps", "p50", "p99", "p999", "cpu", "rss_mb", "audit_bytes_per_req", "log_bytes_per_req"]
    row = {k: statistics.median(r[k] for r in runs) for k in keys if k in runs[0]}
    row["errors"] = sum(r["errors"] for r in runs)
    row["rounds"] = [round(r["rps"]) for r in runs]
    return row


def start_up(gw, conf_path, port, env, procs, tmp):
    """Exec to the first 200 from GET /readyz on the proxy listener (which
    answers /readyz as the admin listener does; 503 until the catalog is
    compiled and the JWKS fetched), polled on fresh connections with no
    0.2 ms between tries. Then the process is stopped."""
    audit = os.path.join(tmp, "startup-audit.jsonl")
    t0 = time.perf_counter()
    proc = procs.start("startup", [gw, "serve", "--config", conf_path], env=env, stdout=audit, bare=True)
    try:
        while True:
            if readyz_status(port) == 200:
                elapsed = time.perf_counter() - t0
                break
            if proc.poll() is not None:
                raise SetupError(f"start-up sample: gateway exited ({proc.returncode}): {procs.tail('startup')}")
            if time.perf_counter() - t0 > 30:
                raise SetupError(f"start-up sample: not ready within 30 s: {procs.tail('startup')}")
            time.sleep(0.0002)  # leave the gateway the cores, not the poller
    finally:
        procs.stop(proc)
    return elapsed * 1000


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

    # 1,000 keep-alive connections from this process, 1,000 from wrk to
    # each system: every child inherits the raised limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))

    tmp = tempfile.mkdtemp(prefix="polytomic-bench.")
    os.chmod(tmp, 0o755)
    runs_total = args.rounds * 20 + 10
    bound = runs_total * (args.duration + 20) + 600
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


def gateway_check(gw, conf_path, env):
    """`polytomic-gateway check`: (exit status, output)."""
    r = subprocess.run([gw, "check", "--config", conf_path], env=env, capture_output=True,
                       text=True, timeout=120, stdin=subprocess.DEVNULL)
    return r.returncode, (r.stdout + r.stderr).strip()


def route_operations(gw, conf_path, env):
    """The operations a config routes (`polytomic-gateway routes`)."""
    r = subprocess.run([gw, "routes", "--config", conf_path], env=env, capture_output=True,
                       text=True, timeout=120, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise SetupError(f"routes --config {conf_path}: {r.stderr.strip()}")
    lines = r.stdout.splitlines()
    if not lines or not lines[0].startswith("OPERATION"):
        raise SetupError(f"routes: unexpected output: {r.stdout[:200]!r}")
    operations = []
    for line in lines[1:]:
        if re.match(r"^\d+ operations routed$", line) or not line.strip():
            break  # the table ends; a summary follows
        operations.append(line.split()[0])
    if f"\n{len(operations)} operations routed\n" not in r.stdout:
        raise SetupError(f"routes: read {len(operations)} operations, but it says: {r.stdout[-200:]!r}")
    return operations


def policy_explain(gw, conf_path, env, method, path):
    r = subprocess.run([gw, "policy", "--config", conf_path, "explain", "--team", BENCH_TEAM,
                        "--method", method, "--path", path], env=env, capture_output=True,
                       text=True, timeout=120, stdin=subprocess.DEVNULL)
    return r.returncode, (r.stdout + r.stderr).strip()


def run(args, tmp, procs):
    gw = args.gateway
    load = Load(tmp, args.duration)

    # Keys, tokens, credentials.
    for cmd in (["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                 "-out", f"{tmp}/rsa.pem"],
                ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-out", f"{tmp}/ec.pem"],
                ["openssl", "pkey", "-in", f"{tmp}/rsa.pem", "-pubout", "-out", f"{tmp}/rsa.pub.pem"]):
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", f"{tmp}/jwks-tls.key", "-out", f"{tmp}/jwks-tls.crt",
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    subprocess.run([args.bench_tokens, "--rsa-key", f"{tmp}/rsa.pem", "--ec-key", f"{tmp}/ec.pem",
                    "--issuer", ISSUER, "--audience", AUDIENCE, "--count", str(MANY_TOKENS),
                    "--ttl", "7200", "--out", tmp], check=True, timeout=300)
    os.chmod(f"{tmp}/jwks.json", 0o644)  # nginx's workers serve it
    with open(f"{tmp}/rs256.txt") as f:
        rs_tokens = f.read().split()
    with open(f"{tmp}/es256.txt") as f:
        es_tokens = f.read().split()
    for name, token in (("rs256-one.txt", rs_tokens[0]), ("es256-one.txt", es_tokens[0])):
        with open(f"{tmp}/{name}", "w") as f:
            f.write(token + "\n")
    one_rs, one_es, many_rs = f"{tmp}/rs256-one.txt", f"{tmp}/es256-one.txt", f"{tmp}/rs256.txt"
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "bench-refused@example.com",
              "teams": [BENCH_TEAM], "iat": now, "exp": now + 3600}
    refused = {
        "expired": sign_rs256(f"{tmp}/rsa.pem", dict(claims, iat=now - 7200, exp=now - 3600)),
        "wrong issuer": sign_rs256(f"{tmp}/rsa.pem", dict(claims, iss="https://idp.other.invalid")),
        "wrong audience": sign_rs256(f"{tmp}/rsa.pem", dict(claims, aud="someone-else")),
    }
    # The same claims, correctly made, must pass: the refusals are then
    # down to the one claim changed.
    control = sign_rs256(f"{tmp}/rsa.pem", claims)
    forged = rs_tokens[0][:-8] + ("AAAAAAAA" if not rs_tokens[0].endswith("AAAAAAAA") else "BBBBBBBB")
    credentials = {"partner": "pk_bench_" + os.urandom(24).hex(),
                   "acme": "ok_bench_" + os.urandom(24).hex()}
    partner_key = credentials["partner"]
    # A valid ~300-byte body for organization.update: it satisfies both the
    # catalog's generated schema and schemas/organization-update.json
    # (checked below: 200, and 422 for an invalid one).
    put_body = json.dumps({
        "name": "Bench Org renamed", "client_id": "bench-client-0123456789",
        "client_secret": "bench-secret-" + "x" * 40, "issuer": "https://idp.example.com/oauth2/default",
        "sso_domain": "bench.example.com", "sso_org_id": "org_0123456789abcdef0123",
    }).encode()
    with open(f"{tmp}/put.json", "wb") as f:
        f.write(put_body)
    with open(f"{tmp}/upload.bin", "wb") as f:
        f.write(os.urandom(10 * 1024 * 1024))

    # The upstream first: the gateways' `check` fetches the JWKS from it.
    names = ["upstream", "jwks_tls", "nginx", "bare", "haproxy", "apache"]
    ports = {n: free_port() for n in names}
    with open(f"{tmp}/upstream.conf", "w") as f:
        f.write(upstream_conf(tmp, ports["upstream"], ports["jwks_tls"]))
    with open(f"{tmp}/nginx.conf", "w") as f:
        f.write(nginx_proxy_conf(tmp, ports["nginx"], ports["upstream"], partner_key))
    with open(f"{tmp}/haproxy.cfg", "w") as f:
        f.write(haproxy_conf(ports["haproxy"], ports["upstream"], f"{tmp}/rsa.pub.pem", partner_key))
    with open(f"{tmp}/apache.conf", "w") as f:
        f.write(apache_conf(tmp, ports["apache"], ports["upstream"], ports["jwks_tls"], partner_key))
    up = procs.start("upstream", ["nginx", "-p", tmp, "-e", f"{tmp}/upstream.err", "-c", f"{tmp}/upstream.conf"])
    wait_ready(up, procs, f"http://127.0.0.1:{ports['upstream']}/")
    jwks_url = f"http://127.0.0.1:{ports['upstream']}/jwks.json"
    if http("GET", jwks_url)[0] != 200:
        raise SetupError(f"upstream does not serve {jwks_url}")
    tls = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{ports['jwks_tls']}",
                          "-CAfile", f"{tmp}/jwks-tls.crt", "-verify_ip", "127.0.0.1",
                          "-verify_return_error"], input="", capture_output=True, text=True, timeout=30)
    if tls.returncode != 0:
        raise SetupError(f"upstream's https JWKS listener: {tls.stdout[-300:]} {tls.stderr[-300:]}")

    # The gateways: every config is the shipped file's text with
    # substitutions (shipped_gateway_conf), parsed with tomllib, then
    # checked by the binary itself.
    with open(SHIPPED_CONFIG) as f:
        shipped = f.read()
    try:
        shipped_conf = tomllib.loads(shipped)
    except tomllib.TOMLDecodeError as e:
        raise SetupError(f"{SHIPPED_CONFIG}: {e}")
    env = gateway_env(shipped_conf, credentials)
    gw_ports = {}

    def base_conf(name):
        gw_ports[name] = (free_port(), free_port())
        return shipped_gateway_conf(shipped, gw_ports[name][0], gw_ports[name][1], ports["upstream"])

    def write_conf(name, text):
        path = f"{tmp}/{name}.toml"
        with open(path, "w") as f:
            f.write(text)
        parse_gateway_conf(name, text, f"127.0.0.1:{gw_ports[name][0]}")
        return path

    variants = {}  # name -> (config path, extra env)
    variants["gw"] = (write_conf("gw", base_conf("gw")), {})
    operations = route_operations(gw, variants["gw"][0], env)
    log(f"shipped config: {len(operations)} routed operations")
    variants["gw_reqlog"] = (write_conf("gw_reqlog", base_conf("gw_reqlog")),
                             {"GATEWAY__TELEMETRY__REQUEST_LOG": "true"})
    variants["gw_small"] = (write_conf("gw_small", small_gateway_conf(base_conf("gw_small"))), {})
    variants["gw_1000"] = (write_conf("gw_1000", many_rules_gateway_conf(base_conf("gw_1000"), operations)), {})
    variants["gw_nocache"] = (write_conf("gw_nocache", base_conf("gw_nocache")),
                              {"GATEWAY__AUTH__TOKEN_CACHE_SIZE": "0"})
    # The shipped file leaves [audit] at its defaults: stdout, durability
    # "fsync" (docs/configuration.md). Set explicitly here, so the PUT
    # figure stays "fsync" if the default changes. On stdout "fsync" means
    # written and flushed (no fdatasync on a pipe or redirect), so a second
    # PUT gateway writes the audit to a file with a real fdatasync.
    variants["gw_put"] = (write_conf("gw_put", base_conf("gw_put")),
                          {"GATEWAY__AUDIT__DURABILITY": "fsync"})
    variants["gw_put_file"] = (write_conf("gw_put_file", base_conf("gw_put_file")),
                               {"GATEWAY__AUDIT__DURABILITY": "fsync", "GATEWAY__AUDIT__SINKS": "file",
                                "GATEWAY__AUDIT__PATH": f"{tmp}/gw_put_file-audit-file.jsonl"})
    with open(variants["gw_1000"][0], "rb") as f:
        rules = tomllib.load(f)["policy"]["rules"]
    if len(rules) != POLICY_RULES or rules[-1]["name"] != "platform-admins" or any(
            BENCH_TEAM in r.get("teams", []) for r in rules[:-1]):
        raise SetupError(f"gw_1000: expected {POLICY_RULES} rules, the bench team's only in the last")
    notes = []
    for name, (path, extra) in list(variants.items()):
        status, out = gateway_check(gw, path, dict(env, **extra))
        if status != 0 and name == "gw_reqlog" and "request_log" in out:
            note = ("gateway_reqlog skipped: this gateway binary refuses telemetry.request_log "
                    f"(`check` exit {status}: {out.splitlines()[-1] if out else ''})")
            log(note)
            notes.append(note)
            del variants[name]
        elif status != 0:
            raise SetupError(f"{name}: `polytomic-gateway check` exit {status}: {out}")
    # The shipped policy must let the bench tokens' team read and update the
    # bench organization; in the 1,000-rule config the deciding rule must be
    # the last one.
    for name in ("gw", "gw_1000", "gw_small"):
        for method in ("GET", "PUT"):
            status, out = policy_explain(gw, variants[name][0], env, method, GET_PATH)
            if status != 0:
                raise SetupError(f"{name}: team {BENCH_TEAM} may not {method} {GET_PATH}: {out}")
            if name == "gw_1000" and "platform-admins" not in out:
                raise SetupError(f"gw_1000: {method} not decided by the last rule: {out}")
    log(f"configs checked ({len(variants)} gateways); policy allows team {BENCH_TEAM} GET and PUT")

    # Start everything else.
    ngx = procs.start("nginx", ["nginx", "-p", tmp, "-e", f"{tmp}/nginx.err", "-c", f"{tmp}/nginx.conf"])
    hap = procs.start("haproxy", ["haproxy", "-db", "-f", f"{tmp}/haproxy.cfg"])
    apa = procs.start("apache", ["apache2", "-f", f"{tmp}/apache.conf", "-DFOREGROUND"])
    bare = procs.start("bare", [args.bare_proxy, f"127.0.0.1:{ports['bare']}",
                                f"http://127.0.0.1:{ports['upstream']}"])
    # Audit records go to the gateway's stdout, as shipped, redirected to a
    # file; gw_put_file's go to its audit.path instead.
    stdout_file = {name: f"{tmp}/{name}-audit.jsonl" for name in variants}
    audit_file = dict(stdout_file, gw_put_file=f"{tmp}/gw_put_file-audit-file.jsonl")
    log_file = {name: f"{tmp}/{name}.log" for name in variants}
    gws = {}
    for name, (path, extra) in variants.items():
        gws[name] = procs.start(name, [gw, "serve", "--config", path], env=dict(env, **extra),
                                stdout=stdout_file[name])
        ports[name] = gw_ports[name][0]
    wait_ready(ngx, procs, f"http://127.0.0.1:{ports['nginx']}/")
    wait_ready(hap, procs, f"http://127.0.0.1:{ports['haproxy']}/", status=401)
    wait_ready(apa, procs, f"http://127.0.0.1:{ports['apache']}/", status=401)
    wait_ready(bare, procs, f"http://127.0.0.1:{ports['bare']}/")
    for name, proc in gws.items():
        wait_ready(proc, procs, f"http://127.0.0.1:{ports[name]}/readyz")
    pids = {"upstream": descendants(procs.main_pid(up)), "nginx": descendants(procs.main_pid(ngx)),
            "haproxy": [procs.main_pid(hap)], "apache": descendants(procs.main_pid(apa)),
            "bare": [procs.main_pid(bare)]}
    for name, proc in gws.items():
        pids[name] = [procs.main_pid(proc)]

    # Each system must really authenticate before it is measured.
    base = {n: f"http://127.0.0.1:{p}" for n, p in ports.items()}
    checks = [
        ("upstream GET", http("GET", base["upstream"] + GET_PATH)[0], 200),
        ("nginx GET", http("GET", base["nginx"] + GET_PATH)[0], 200),
        ("bare GET", http("GET", base["bare"] + GET_PATH)[0], 200),
    ]
    for peer in ("haproxy", "apache", "gw"):
        url = base[peer] + GET_PATH
        checks += [
            (f"{peer} GET, valid RS256", http("GET", url, rs_tokens[0])[0], 200),
            (f"{peer} GET, valid RS256 (openssl-signed control)", http("GET", url, control)[0], 200),
            (f"{peer} GET, no token", http("GET", url)[0], 401),
            (f"{peer} GET, forged signature", http("GET", url, forged)[0], 401),
        ] + [(f"{peer} GET, {what} token", http("GET", url, token)[0], 401)
             for what, token in refused.items()
             # HAProxy checks what its JWT guide checks: not the audience.
             if not (peer == "haproxy" and what == "wrong audience")]
    checks += [
        ("gw GET, valid ES256", http("GET", base["gw"] + GET_PATH, es_tokens[0])[0], 200),
        ("gw PUT, valid body", http("PUT", base["gw"] + GET_PATH, rs_tokens[0], put_body)[0], 200),
        ("gw PUT, invalid body", http("PUT", base["gw"] + GET_PATH, rs_tokens[0], b'{"name": 1}')[0], 422),
        ("gw GET /metrics on the proxy port is not served", http("GET", base["gw"] + "/metrics", rs_tokens[0])[0], 404),
    ]
    for name in variants:
        if name == "gw":
            continue
        checks.append((f"{name} GET", http("GET", base[name] + GET_PATH, rs_tokens[1])[0], 200))
        if name.startswith("gw_put") or name == "gw_small":
            checks += [
                (f"{name} PUT, valid body", http("PUT", base[name] + GET_PATH, rs_tokens[0], put_body)[0], 200),
                (f"{name} PUT, invalid body", http("PUT", base[name] + GET_PATH, rs_tokens[0], b'{"name": 1}')[0], 422),
            ]
    bad = [f"{what}: {got}, expected {want}" for what, got, want in checks if got != want]
    # The audit trail is on: records on the gateway's stdout (the file).
    time.sleep(0.5)
    for name in ("gw", "gw_put"):
        try:
            with open(audit_file[name]) as f:
                records = [json.loads(line) for line in f if line.strip()]
        except (OSError, ValueError) as e:
            records, bad = [], bad + [f"{name} audit records on stdout: {e}"]
        if not records:
            bad.append(f"{name}: no audit record on stdout")
    if file_size(audit_file["gw_put_file"]) == 0:
        bad.append("gw_put_file: no audit record in its audit file")
    if bad:
        raise SetupError("sanity checks failed: " + "; ".join(bad))
    log(f"sanity checks passed ({len(checks)} requests, audit records present); tmp {tmp}")

    # Warm-up: pools, caches (the many-token rotation fills the gateway's).
    log("warm-up")
    for port, tokens in ((ports["upstream"], None), (ports["nginx"], None), (ports["bare"], None),
                         (ports["haproxy"], one_rs), (ports["apache"], one_rs)):
        load.wrk(port, [], tokens=tokens, duration=2)
    for name in variants:
        load.wrk(ports[name], [], tokens=one_rs, duration=1, audit=audit_file[name], logs=log_file[name])
    load.wrk(ports["gw"], [], tokens=many_rs, duration=3, audit=audit_file["gw"], logs=log_file["gw"])

    def gw_kw(name, **kw):
        return dict(port=ports[name], pids=pids[name], audit=audit_file[name], logs=log_file[name], **kw)

    # The rounds: every row once a round, in this order.
    plan = [
        ("GET", "upstream", "upstream direct", dict(port=ports["upstream"], pids=pids["upstream"])),
        ("GET", "nginx", "nginx plain proxy", dict(port=ports["nginx"], pids=pids["nginx"])),
        ("GET", "bare", "bare hyper proxy (examples/bare_proxy.rs: the stack's floor, no checks)",
         dict(port=ports["bare"], pids=pids["bare"])),
        ("GET", "haproxy", "HAProxy jwt_verify RS256", dict(port=ports["haproxy"], pids=pids["haproxy"], tokens=one_rs)),
        ("GET", "apache", "Apache mod_auth_openidc RS256 (JWKS)", dict(port=ports["apache"], pids=pids["apache"], tokens=one_rs)),
        ("GET", "gateway", "gateway, shipped config, RS256", gw_kw("gw", tokens=one_rs)),
    ]
    if "gw_reqlog" in variants:
        plan.append(("GET", "gateway_reqlog", "gateway, shipped + telemetry.request_log = true",
                     gw_kw("gw_reqlog", tokens=one_rs)))
    plan += [
        ("policy", "gateway_small", "gateway, 3 rules, 6 [[routes]], catalog off", gw_kw("gw_small", tokens=one_rs)),
        ("policy", "gateway_1000", f"gateway, {POLICY_RULES:,} rules (match last), full catalog",
         gw_kw("gw_1000", tokens=one_rs)),
        ("tokens", "gateway_es256", "gateway, ES256", gw_kw("gw", tokens=one_es)),
        ("tokens", "haproxy_many", f"HAProxy, {MANY_TOKENS:,} RS256 tokens",
         dict(port=ports["haproxy"], pids=pids["haproxy"], tokens=many_rs)),
        ("tokens", "apache_many", f"Apache, {MANY_TOKENS:,} RS256 tokens",
         dict(port=ports["apache"], pids=pids["apache"], tokens=many_rs)),
        ("tokens", "gateway_many", f"gateway, {MANY_TOKENS:,} RS256 tokens", gw_kw("gw", tokens=many_rs)),
        ("tokens", "gateway_many_nocache", f"gateway, {MANY_TOKENS:,} RS256 tokens, cache off",
         gw_kw("gw_nocache", tokens=many_rs)),
    ]
    for conns in (1, 32, 256):
        plan.append(("PUT", f"put_c{conns}", f"gateway PUT, schema, audit fsync (stdout), c={conns}",
                     gw_kw("gw_put", tokens=one_rs, method="PUT", body=f"{tmp}/put.json", conns=conns)))
    plan.append(("PUT", "put_file_c32", "gateway PUT, schema, audit fsync to a file (fdatasync), c=32",
                 gw_kw("gw_put_file", tokens=one_rs, method="PUT", body=f"{tmp}/put.json", conns=32)))
    results = {key: [] for _, key, _, _ in plan}
    for r in range(args.rounds):
        for _, key, label, kw in plan:
            res = load.wrk(**kw)
            results[key].append(res)
            flag = "" if res["errors"] == 0 else f"  ERRORS {res['error_detail']}"
            log(f"round {r + 1}/{args.rounds} {label}: {res['rps']:,.0f} req/s, p99 {res['p99']:.2f} ms, "
                f"cpu {res['cpu']:.0f}%{flag}")

    # Memory on a fresh gateway (the shipped config), so its peaks are its own.
    for name in list(gws):
        procs.stop(gws[name])
    mem_conf = {}
    for name in ("gw_mem", "gw_upload"):
        text = base_conf(name)
        mem_conf[name] = write_conf(name, upload_gateway_conf(text) if name == "gw_upload" else text)
        ports[name] = gw_ports[name][0]
    def start_warm(name, proc_env):
        """A fresh gateway `name`, ready and past 100 GETs, its audit writer
        idle (a second without records): (process, pid, base URL)."""
        proc = procs.start(name, [gw, "serve", "--config", mem_conf[name]], env=proc_env,
                           stdout=f"{tmp}/{name}-audit.jsonl")
        wait_ready(proc, procs, f"http://127.0.0.1:{ports[name]}/readyz")
        base = f"http://127.0.0.1:{ports[name]}"
        for _ in range(100):
            if http("GET", base + GET_PATH, rs_tokens[0])[0] != 200:
                raise SetupError(f"{name}: GET failed")
        time.sleep(1)
        return proc, procs.main_pid(proc), base

    mem, mem_pid, _ = start_warm("gw_mem", env)
    idle_kb = status_kb(mem_pid, "VmRSS")
    log(f"idle RSS {idle_kb / 1024:.1f} MB")

    reset_peak(mem_pid)
    conns = open_keepalive(ports["gw_mem"], 1000, rs_tokens[0])
    try:
        held_kb, held_peak_kb = status_kb(mem_pid, "VmRSS"), status_kb(mem_pid, "VmHWM")
    finally:
        for conn in conns:
            conn.close()
    log(f"1,000 open keep-alive connections: RSS {held_kb / 1024:.1f} MB (peak {held_peak_kb / 1024:.1f} MB)")

    conn1000 = load.wrk(ports["gw_mem"], [mem_pid], tokens=one_rs, conns=1000, duration=args.duration,
                        peak_pid=mem_pid, audit=f"{tmp}/gw_mem-audit.jsonl", logs=f"{tmp}/gw_mem.log")
    log(f"1,000 busy connections: peak RSS {conn1000['rss_mb']:.1f} MB, {conn1000['rps']:,.0f} req/s")
    procs.stop(mem)

    # Scenario 4: the shipped config plus a route without a schema, and a
    # body limit above 10 MB.
    upl, upl_pid, base_upl = start_warm(
        "gw_upload", dict(env, GATEWAY__SERVER__MAX_BODY_BYTES=str(16 << 20)))
    reset_peak(upl_pid)
    before_kb = status_kb(upl_pid, "VmRSS")
    upload_times = []
    for _ in range(3):
        t0 = time.monotonic()
        with open(f"{tmp}/upload.bin", "rb") as f:
            status, _ = http("POST", base_upl + UPLOAD_PATH, rs_tokens[0], f.read())
        upload_times.append(time.monotonic() - t0)
        if status != 200:
            raise SetupError(f"10 MB upload: status {status}")
    upload_peak_kb = status_kb(upl_pid, "VmHWM")
    log(f"10 MB upload x3: RSS before {before_kb / 1024:.1f} MB, peak {upload_peak_kb / 1024:.1f} MB")
    procs.stop(upl)

    # Start-up: exec to /readyz 200, the shipped config (full catalog), with
    # nothing else of ours running but the upstream (the JWKS is fetched).
    starts = []
    for i in range(STARTS):
        text = base_conf("startup")
        path = write_conf("startup", text)
        starts.append(start_up(gw, path, gw_ports["startup"][0], env, procs, tmp))
    log(f"start-up to /readyz 200: median {statistics.median(starts):.1f} ms "
        f"({', '.join(f'{s:.1f}' for s in starts)})")

    summary = report(args, results, plan, dict(
        idle_mb=idle_kb / 1024, upload_before_mb=before_kb / 1024, upload_peak_mb=upload_peak_kb / 1024,
        upload_s=statistics.median(upload_times), conn1000=conn1000,
        held_mb=held_kb / 1024, held_peak_mb=held_peak_kb / 1024), starts, notes)
    summary["sanity_checks"] = [{"check": w, "status": g, "expected": e} for w, g, e in checks]
    summary["gateway_variants"] = {name: {"config": os.path.basename(path), "env": extra}
                                   for name, (path, extra) in variants.items()}
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

    def package(name):
        try:
            r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", name],
                               capture_output=True, text=True, timeout=10)
            return r.stdout.strip() or "?"
        except (OSError, subprocess.TimeoutExpired):
            return "?"
    return {
        "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
        "nginx": version(["nginx", "-v"]), "haproxy": version(["haproxy", "-v"]),
        "apache": version(["apache2", "-v"]),
        "mod_auth_openidc": "mod_auth_openidc " + package("libapache2-mod-auth-openidc"),
        "wrk": version(["wrk", "-v"]),
    }


def at_least(name, value, threshold, shown, base_rps=None):
    """A target `value >= threshold`; for a miss, by how much it falls short
    (and, for a throughput ratio, the req/s that would meet it)."""
    met = value >= threshold
    short = ""
    if not met:
        short = f"short by {(1 - value / threshold) * 100:.0f}%"
        if base_rps is not None:
            short += f" (needs ~{threshold * base_rps:,.0f} req/s)"
    return {"target": name, "result": shown, "met": met, "shortfall": short,
            "value": value, "threshold": threshold}


def at_most(name, value, limit, shown, unit):
    met = value <= limit
    short = "" if met else f"over by {value - limit:.2f} {unit}"
    if not met and unit != "points":
        short += f" ({(value / limit - 1) * 100:.0f}%)"
    return {"target": name, "result": shown, "met": met, "shortfall": short,
            "value": value, "threshold": limit}


def report(args, results, plan, mem, starts, notes):
    rows = {key: median_row(runs) for key, runs in results.items()}
    nginx, hap, hap_many = rows["nginx"]["rps"], rows["haproxy"]["rps"], rows["haproxy_many"]["rps"]
    apache, bare = rows["apache"]["rps"], rows["bare"]["rps"]
    gw_get = rows["gateway"]["rps"]
    m = machine()
    print(f"\nMachine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}; {m['nginx']}; "
          f"{m['haproxy']}; {m['apache']}, {m['mod_auth_openidc']}; {m['wrk']}")
    print(f"Each figure is the median of {args.rounds} rounds of {args.duration} s "
          "(wrk, 2 threads, 32 connections unless noted). Gateways run config/gateway.toml "
          "as shipped, with only addresses, keys and paths changed, unless noted.\n")
    print("| # | System | req/s | p50 ms | p99 ms | p99.9 ms | proxy CPU % | proxy RSS MB | "
          "audit B/req | log B/req | vs bare | vs nginx | vs HAProxy | vs Apache | rounds (req/s) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    peers = ("upstream", "nginx", "bare", "haproxy", "apache", "haproxy_many", "apache_many")
    for scenario, key, label, _ in plan:
        r = rows[key]
        # The 10,000-token rows against the peers with the same tokens.
        many = key in ("gateway_many", "gateway_many_nocache")
        ratios = ("",) * 4 if key in peers else tuple(
            f"{r['rps'] / x:.2f}×" for x in (bare, nginx, hap_many if many else hap,
                                              rows["apache_many"]["rps"] if many else apache))
        errs = "" if r["errors"] == 0 else f" ({r['errors']} errors)"
        audit_b = f"{r['audit_bytes_per_req']:.0f}" if "audit_bytes_per_req" in r else ""
        log_b = f"{r['log_bytes_per_req']:.0f}" if "log_bytes_per_req" in r else ""
        print(f"| {scenario} | {label}{errs} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
              f"{r['p999']:.2f} | {r['cpu']:.0f} | {r['rss_mb']:.1f} | {audit_b} | {log_b} | "
              f"{' | '.join(ratios)} | {', '.join(f'{x:,}' for x in r['rounds'])} |")
    c = mem["conn1000"]
    blank = "| " * 7
    print(f"| upload | gateway, 10 MB upload (route without schema), 3 in a row | {mem['upload_s']:.2f} s each "
          f"| | | | | {mem['upload_before_mb']:.1f} → peak {mem['upload_peak_mb']:.1f} {blank}|")
    print(f"| memory | gateway idle | | | | | | {mem['idle_mb']:.1f} {blank}|")
    print(f"| memory | gateway, 1,000 open keep-alive connections (one GET each, then held) | | | | | | "
          f"{mem['held_mb']:.1f} (peak {mem['held_peak_mb']:.1f}) {blank}|")
    print(f"| memory | gateway, 1,000 busy connections (wrk -c1000) | {c['rps']:,.0f} | "
          f"{c['p50']:.2f} | {c['p99']:.2f} | {c['p999']:.2f} | {c['cpu']:.0f} | peak {c['rss_mb']:.1f} {blank}|")
    start_median = statistics.median(starts)
    print(f"\nStart-up, exec to the first 200 from /readyz (shipped config, full catalog, JWKS "
          f"fetched): median {start_median:.1f} ms of {len(starts)}: "
          f"{', '.join(f'{s:.1f}' for s in starts)} ms")

    # Policy at scale: per-round ratios (both ran in the same round), then
    # the median, so drift between rounds cancels.
    per_round = [a["rps"] / b["rps"] for a, b in zip(results["gateway_1000"], results["gateway_small"])]
    policy_cost = 1 - statistics.median(per_round)
    small = rows["gateway_small"]["rps"]
    put32 = rows["put_c32"]["rps"]
    targets = [
        at_least("GET c=32: gateway ≥ 0.90× bare hyper", gw_get / bare, 0.90,
                 f"{gw_get / bare:.2f}× ({gw_get:,.0f} vs {bare:,.0f} req/s)", bare),
        at_least("GET c=32: gateway ≥ 1.5× HAProxy jwt_verify", gw_get / hap, 1.5,
                 f"{gw_get / hap:.2f}× ({gw_get:,.0f} vs {hap:,.0f} req/s)", hap),
        at_most("GET c=32: gateway p99 ≤ HAProxy's", rows["gateway"]["p99"], rows["haproxy"]["p99"],
                f"{rows['gateway']['p99']:.2f} vs {rows['haproxy']['p99']:.2f} ms", "ms"),
        at_least("PUT c=32, schema, audit fsync: ≥ 0.6× own GET", put32 / gw_get, 0.6,
                 f"{put32 / gw_get:.2f}× ({put32:,.0f} req/s; to a file with fdatasync: "
                 f"{rows['put_file_c32']['rps'] / gw_get:.2f}×)", gw_get),
        at_most(f"Policy at scale: {POLICY_RULES:,} rules + catalog cost ≤ 3% vs 3 rules + 6 routes",
                policy_cost * 100, 3.0,
                f"{policy_cost * 100:+.1f}% (median of per-round ratios; "
                f"{rows['gateway_1000']['rps']:,.0f} vs {small:,.0f} req/s)", "points"),
        at_most("Start-up: exec to /readyz 200 ≤ 150 ms (median)", start_median, 150,
                f"{start_median:.1f} ms", "ms"),
        at_most("Idle RSS ≤ 20 MB", mem["idle_mb"], 20, f"{mem['idle_mb']:.1f} MB", "MB"),
        at_most("RSS with 1,000 open keep-alive connections ≤ 64 MB", mem["held_peak_mb"], 64,
                f"{mem['held_peak_mb']:.1f} MB peak ({mem['held_mb']:.1f} after; "
                f"busy -c1000: {c['rss_mb']:.1f})", "MB"),
    ]
    if not targets[4]["met"]:
        targets[4]["shortfall"] += f" (needs ~{0.97 * small:,.0f} req/s)"
    print("\n| Target (issue 21) | Result | Met |\n|---|---|---|")
    for t in targets:
        met = "yes" if t["met"] else f"NO: {t['shortfall']}"
        print(f"| {t['target']} | {t['result']} | {met} |")
    for note in notes:
        print(f"\nNote: {note}")
    errors = sum(r["errors"] for r in rows.values()) + c["errors"]
    if errors:
        print(f"\nINVALID: {errors} requests failed (non-2xx or socket errors); see the log above.")
    return {"machine": m, "rounds": args.rounds, "duration_s": args.duration,
            "rows": rows, "runs": results, "memory": mem,
            "startup_ms": {"median": start_median, "samples": starts},
            "policy_cost_per_round": per_round, "targets": targets, "notes": notes,
            "valid": errors == 0}


if __name__ == "__main__":
    sys.exit(main())
