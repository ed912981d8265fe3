#!/usr/bin/env python3
"""bench/catalog.py: the full API catalog against the six routes of today.

Run through bench/catalog.sh. Two gateways, identical but for their routes
(`six`: the six organization [[routes]] and their two schema files;
`catalog`: [catalog], 198 routes and their generated schemas), sit in front
of one nginx upstream. Measured, in alternating rounds so that drift on the
machine hits both alike:

  * requests per second, p50 and p99, for GET /api/organizations/{id} and
    for a ~300-byte PUT of the same path, which is schema-validated and
    audited (durability flush);
  * start-up time: from exec to the first 200 from /readyz (the config read,
    the JWKS file loaded, every schema compiled), over several starts;
  * idle RSS after start-up, and peak RSS under load.

Reuses bench/bench.py's process handling, upstream and load helpers.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as b  # noqa: E402

STARTS = 7


def catalog_conf(six_conf, tmp):
    """The same config with [catalog] instead of the six [[routes]]."""
    head, rest = six_conf.split("[[routes]]", 1)
    policy = rest[rest.index("[policy]"):]
    catalog = f"""[credentials.acme]
file = {json.dumps(os.path.join(tmp, "partner-key"))}

[catalog]
[[catalog.credentials]]
operations = ["organization.*", "users.*"]
credential = "partner"
[[catalog.credentials]]
operations = ["*"]
credential = "acme"

"""
    # The six routes' names become the catalog's.
    policy = policy.replace(
        'allow = ["organizations.list", "organizations.get", "organization.current"]',
        'allow = ["organization.list", "organization.get", "organization.get_current"]')
    return head + catalog + policy


def startup(gw, conf, port, procs, name):
    """Seconds from exec to /readyz 200, and VmRSS (KiB) once ready."""
    t0 = time.monotonic()
    proc = procs.start(name, [gw, "serve", "--config", conf])
    url = f"http://127.0.0.1:{port}/readyz"
    while True:
        if proc.poll() is not None:
            raise b.SetupError(f"{name} exited: {procs.tail(name)}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() - t0 > 60:
            raise b.SetupError(f"{name} not ready within 60s")
        time.sleep(0.002)
    elapsed = time.monotonic() - t0
    time.sleep(0.5)  # let start-up work (JWKS, audit writer) settle before reading RSS
    rss = b.status_kb(procs.main_pid(proc), "VmRSS")
    return proc, elapsed, rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--bench-tokens", required=True)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="gw-catalog-bench-")
    procs = b.Procs(tmp, bound=1800)
    try:
        return run(args, tmp, procs)
    finally:
        procs.stop_all()


def run(args, tmp, procs):
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", f"{tmp}/rsa.pem"], check=True, capture_output=True, timeout=60)
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-out", f"{tmp}/ec.pem"], check=True, capture_output=True, timeout=60)
    subprocess.run([args.bench_tokens, "--rsa-key", f"{tmp}/rsa.pem", "--ec-key", f"{tmp}/ec.pem",
                    "--issuer", b.ISSUER, "--audience", b.AUDIENCE, "--count", "1",
                    "--ttl", "7200", "--out", tmp], check=True, timeout=300)
    with open(f"{tmp}/rs256.txt") as f:
        token = f.read().split()[0]
    with open(f"{tmp}/one.txt", "w") as f:
        f.write(token + "\n")
    with open(f"{tmp}/partner-key", "w") as f:
        f.write("pk_bench_" + os.urandom(24).hex() + "\n")
    put_body = json.dumps({
        "name": "Bench Org renamed", "client_id": "bench-client-0123456789",
        "client_secret": "bench-secret-" + "x" * 40, "issuer": "https://idp.example.com/oauth2/default",
        "sso_domain": "bench.example.com", "sso_org_id": "org_0123456789abcdef0123",
    })
    with open(f"{tmp}/put.json", "w") as f:  # wrk.lua reads the body from a file
        f.write(put_body)

    ports = {n: b.free_port() for n in ("upstream", "six", "catalog")}
    with open(f"{tmp}/upstream.conf", "w") as f:
        f.write(b.upstream_conf(tmp, ports["upstream"]))
    confs = {}
    six = b.gateway_conf(tmp, "six", ports["six"], ports["upstream"], "flush")
    confs["six"] = six
    confs["catalog"] = catalog_conf(
        b.gateway_conf(tmp, "catalog", ports["catalog"], ports["upstream"], "flush"), tmp)
    for name, conf in confs.items():
        with open(f"{tmp}/{name}.toml", "w") as f:
            f.write(conf)
    up = procs.start("upstream", ["nginx", "-p", tmp, "-e", f"{tmp}/upstream.err", "-c", f"{tmp}/upstream.conf"])
    b.wait_ready(up, procs, f"http://127.0.0.1:{ports['upstream']}/")

    # Start-up time and idle RSS, alternating, each start a fresh process.
    starts = {name: [] for name in confs}
    for i in range(STARTS):
        for name in confs:
            proc, secs, rss = startup(args.gateway, f"{tmp}/{name}.toml", ports[name], procs, f"{name}-start{i}")
            starts[name].append((secs, rss))
            procs.stop(proc)
    b.log("start-up measured")

    gws = {name: procs.start(name, [args.gateway, "serve", "--config", f"{tmp}/{name}.toml"]) for name in confs}
    for name, proc in gws.items():
        b.wait_ready(proc, procs, f"http://127.0.0.1:{ports[name]}/readyz")
    pids = {name: procs.main_pid(proc) for name, proc in gws.items()}
    base = {n: f"http://127.0.0.1:{p}" for n, p in ports.items()}
    checks = []
    for name in confs:
        checks += [
            (f"{name} GET", b.http("GET", base[name] + b.GET_PATH, token)[0], 200),
            (f"{name} PUT", b.http("PUT", base[name] + b.GET_PATH, token, put_body.encode())[0], 200),
            (f"{name} PUT, invalid", b.http("PUT", base[name] + b.GET_PATH, token, b'{"name": 1}')[0], 422),
        ]
    checks.append(("catalog-only route", b.http("GET", base["catalog"] + "/api/webhooks", token)[0], 200))
    checks.append(("six: no such route", b.http("GET", base["six"] + "/api/webhooks", token)[0], 404))
    bad = [f"{what}: {got}, expected {want}" for what, got, want in checks if got != want]
    if bad:
        raise b.SetupError("sanity checks failed: " + "; ".join(bad))

    load = b.Load(tmp, args.duration)
    for name in confs:  # warm-up
        load.wrk(ports[name], [], tokens=f"{tmp}/one.txt", duration=2)
    runs = {(name, kind): [] for name in confs for kind in ("GET", "PUT")}
    for r in range(args.rounds):
        for name in (confs if r % 2 == 0 else reversed(list(confs))):
            runs[(name, "GET")].append(load.wrk(ports[name], [pids[name]], tokens=f"{tmp}/one.txt",
                                                peak_pid=pids[name]))
            runs[(name, "PUT")].append(load.wrk(ports[name], [pids[name]], method="PUT",
                                                tokens=f"{tmp}/one.txt", body=f"{tmp}/put.json",
                                                peak_pid=pids[name]))
        b.log(f"round {r + 1}/{args.rounds} done")

    results = {}
    print(f"\nrequests/s (median of {args.rounds} rounds of {args.duration}s, 32 connections)")
    print(f"{'':10}{'scenario':6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'peak RSS MB':>13}   rounds")
    for (name, kind), rs in runs.items():
        row = b.median_row(rs)
        results[f"{name}_{kind}"] = row
        print(f"{name:10}{kind:6}{row['rps']:>10.0f}{row['p50']:>9.2f}{row['p99']:>9.2f}"
              f"{row['errors']:>8}{row['rss_mb']:>13.1f}   {row['rounds']}")
    print(f"\nstart-up (exec to /readyz 200) and idle RSS, median of {STARTS} starts")
    for name, xs in starts.items():
        secs = statistics.median(s for s, _ in xs) * 1000
        rss = statistics.median(r for _, r in xs) / 1024
        results[f"{name}_startup_ms"] = secs
        results[f"{name}_idle_rss_mb"] = rss
        print(f"{name:10}{secs:>8.0f} ms{rss:>10.1f} MB   (each: {[round(s * 1000) for s, _ in xs]} ms)")
    for kind in ("GET", "PUT"):
        ratio = results[f"catalog_{kind}"]["rps"] / results[f"six_{kind}"]["rps"]
        results[f"ratio_{kind}"] = ratio
        print(f"catalog/six {kind}: {ratio:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    errors = sum(r["errors"] for rs in runs.values() for r in rs)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
