#!/usr/bin/env python3
"""bench/parse_memory.py: what the JSON parse limits save in peak memory.

Run through bench/parse_memory.sh (bench/parse-memory.md has the latest
figures). A write body on a route with a schema is read whole and parsed
into a serde_json Value before the schema check, and a Value takes far more
memory than its JSON text. This measures the gateway's peak RSS (VmHWM)
while `server.max_inflight` maximum-size bodies arrive at once:

  * the body: exactly `server.max_body_bytes` (1 MiB) of JSON, an
    organization update whose `name` is fine but which also carries one
    large array `x`. The update schema refuses the extra field, but only
    after the whole document is parsed, so the parser sees all of it. Two
    shapes of `x`:
      - `small objects`: `{"a":0}` again and again, two JSON values each
        (about 262,000 values in all);
      - `nested objects`: chains of 62 one-member objects around a `0`
        (`{"a":{"a":...0}}`, 64 levels deep in all, the deepest the default
        `server.max_json_depth` allows), nearly every value an object, the
        costliest value per byte (about 177,000 values);
      - `one string` (the control): one string of nearly 1 MiB, 4 values
        in all, so the parse costs little more than the body itself: what
        buffering the bodies costs, apart from the parse;
  * `server.max_json_values` at its default, 100,000 (depth at its default,
    64): each parse of a large shape stops at the 100,001st value, 413
    `json_too_many_values`; at 10,000, to show the bound follows the limit;
    and at 10^9, the limit effectively off: each body is parsed whole, then
    refused by the schema, 422 `invalid_body`;
  * for `server.max_inflight` 8 and 64, as many bodies sent at once (one
    connection each, released together), on a fresh gateway each run:
    `idle` is its VmHWM after start-up and one small valid PUT, `peak` its
    VmHWM once every body is answered.

The gateway runs with bench/bench.py's config (the organization routes and
schemas, RS256 tokens from examples/bench_tokens.rs, a team policy, the
file audit trail) in front of the same nginx upstream, all on loopback.
Every process runs under `timeout` and is stopped by PID.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as b  # noqa: E402

BODY_BYTES = 1024 * 1024
# The items of `x`, by body shape: the item, or None for one string filling the body.
SHAPES = {
    "small objects": '{"a":0}',
    "nested objects": '{"a":' * 62 + "0" + "}" * 62,
    "one string": None,
}
# server.max_json_values, by scenario (server.max_json_depth stays 64).
SCENARIOS = {
    "100000 (default)": 100_000,
    "10000": 10_000,
    "10^9 (off)": 1_000_000_000,
}


def big_body(item):
    """Exactly BODY_BYTES of JSON, a valid `name` and an array of `item`,
    and how many JSON values it holds."""
    head, tail = '{"name":"Bench Org","x":[', "]}"
    room = BODY_BYTES - len(head) - len(tail)
    if item is None:
        item = '"' + "a" * (room - 2) + '"'
    count = (room + 1) // (len(item) + 1)
    body = head + ",".join([item] * count) + tail
    body = body[:-1] + " " * (BODY_BYTES - len(body)) + body[-1]  # JSON whitespace
    assert len(body) == BODY_BYTES
    values = 3 + count * item.count("{") + count  # top object, name, array; each item
    return body.encode(), values


def conf(tmp, name, port, up_port, inflight, max_values):
    text = b.gateway_conf(tmp, name, port, up_port, "flush")
    server = (f"max_body_bytes = {BODY_BYTES}\nmax_inflight = {inflight}\n"
              f"max_json_depth = 64\nmax_json_values = {max_values}")
    assert "max_body_bytes = 16777216" in text, "bench.py's [server] changed"
    return text.replace("max_body_bytes = 16777216", server)


def send_all(port, token, body, count):
    """`count` PUTs of `body` at once, one connection each: (status, key) each."""
    head = (f"PUT {b.GET_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    results = [None] * count
    ready = threading.Barrier(count)

    def one(i):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                ready.wait(timeout=60)
                s.sendall(head + body)
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            status_line, _, rest = data.partition(b"\r\n")
            status = int(status_line.split()[1])
            key = json.loads(rest.partition(b"\r\n\r\n")[2] or b"{}").get("key")
            results[i] = (status, key)
        except (OSError, ValueError, IndexError, threading.BrokenBarrierError) as e:
            results[i] = (0, f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    return results


def measure(args, tmp, procs, up_port, token, sample, scenario, inflight, name):
    """A fresh gateway's VmHWM before and after `inflight` copies of the
    body in `sample` (the body, its value count) at once."""
    body, values = sample
    max_values = SCENARIOS[scenario]
    # Past the limit the parse stops (413); otherwise it ends and the schema
    # refuses the extra field (422).
    want_status, want_key = (413, "json_too_many_values") if values > max_values else (422, "invalid_body")
    port = b.free_port()
    path = os.path.join(tmp, f"{name}.toml")
    with open(path, "w") as f:
        f.write(conf(tmp, name, port, up_port, inflight, max_values))
    proc = procs.start(name, [args.gateway, "serve", "--config", path])
    try:
        b.wait_ready(proc, procs, f"http://127.0.0.1:{port}/readyz")
        pid = procs.main_pid(proc)
        base = f"http://127.0.0.1:{port}{b.GET_PATH}"
        status, _ = b.http("PUT", base, token, b'{"name": "Bench Org"}')
        if status != 200:
            raise b.SetupError(f"{name}: a small valid PUT got {status}")
        idle = b.status_kb(pid, "VmHWM")
        t0 = time.monotonic()
        results = send_all(port, token, body, inflight)
        elapsed = time.monotonic() - t0
        peak = b.status_kb(pid, "VmHWM")
        wrong = [r for r in results if r != (want_status, want_key)]
        if wrong:
            raise b.SetupError(f"{name}: expected {want_status} {want_key} for every body, got {wrong[:3]}")
        return {"idle_kb": idle, "peak_kb": peak, "seconds": elapsed}
    finally:
        procs.stop(proc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--bench-tokens", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--inflight", default="8,64")
    ap.add_argument("--json")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="gw-parse-memory-")
    procs = b.Procs(tmp, bound=600)
    try:
        return run(args, tmp, procs)
    finally:
        procs.stop_all()


def run(args, tmp, procs):
    for kind, opts in (("rsa", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
                       ("ec", ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])):
        subprocess.run(["openssl", "genpkey", *opts, "-out", f"{tmp}/{kind}.pem"],
                       check=True, capture_output=True, timeout=60)
    subprocess.run([args.bench_tokens, "--rsa-key", f"{tmp}/rsa.pem", "--ec-key", f"{tmp}/ec.pem",
                    "--issuer", b.ISSUER, "--audience", b.AUDIENCE, "--count", "1",
                    "--ttl", "7200", "--out", tmp], check=True, timeout=300)
    with open(f"{tmp}/rs256.txt") as f:
        token = f.read().split()[0]
    with open(f"{tmp}/partner-key", "w") as f:
        f.write("pk_bench_" + os.urandom(24).hex() + "\n")
    bodies = {shape: big_body(item) for shape, item in SHAPES.items()}
    for shape, (body, values) in bodies.items():
        b.log(f"{shape}: {len(body)} bytes, {values} JSON values")

    up_port = b.free_port()
    with open(f"{tmp}/upstream.conf", "w") as f:
        f.write(b.upstream_conf(tmp, up_port))
    up = procs.start("upstream", ["nginx", "-p", tmp, "-e", f"{tmp}/upstream.err", "-c", f"{tmp}/upstream.conf"])
    b.wait_ready(up, procs, f"http://127.0.0.1:{up_port}/")

    inflights = [int(n) for n in args.inflight.split(",")]
    runs = {(shape, n, s): [] for shape in SHAPES for n in inflights for s in SCENARIOS}
    for r in range(args.runs):
        for (shape, inflight, scenario), out in runs.items():  # alternating, a fresh gateway each
            name = f"gw-{shape}-{inflight}-{SCENARIOS[scenario]}-{r}".replace(" ", "-")
            out.append(measure(args, tmp, procs, up_port, token, bodies[shape], scenario,
                               inflight, name))
        b.log(f"run {r + 1}/{args.runs} done")

    results = {"body_bytes": BODY_BYTES, "runs": args.runs, "rows": [],
               "body_values": {shape: values for shape, (_, values) in bodies.items()}}
    print(f"\npeak RSS (VmHWM), median of {args.runs} runs; bodies of {BODY_BYTES} bytes")
    print(f"{'body':16}{'max_inflight':>12}  {'max_json_values':18}{'idle MB':>9}{'peak MB':>9}"
          f"{'peak-idle MB':>14}{'answered in s':>15}   runs (peak MB)")
    for (shape, inflight, scenario), rs in runs.items():
        idle = statistics.median(x["idle_kb"] for x in rs) / 1024
        peak = statistics.median(x["peak_kb"] for x in rs) / 1024
        secs = statistics.median(x["seconds"] for x in rs)
        each = [round(x["peak_kb"] / 1024, 1) for x in rs]
        results["rows"].append({"body": shape, "inflight": inflight, "scenario": scenario,
                                "idle_mb": idle, "peak_mb": peak, "seconds": secs,
                                "peaks_mb": each})
        print(f"{shape:16}{inflight:>12}  {scenario:18}{idle:>9.1f}{peak:>9.1f}{peak - idle:>14.1f}"
              f"{secs:>15.2f}   {each}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
