#!/usr/bin/env python3
"""Drives the official Polytomic Python SDK through the gateway, for tests/sdk.rs.

Every operation of the SDK documents one example call in the docstring of its
client method (the `Examples` section of each resource's `client.py`). This
script runs each of them against the gateway, in three ways:

  allowed  with ALLOWED_TOKEN, whose team the policy lets do everything: the
           request must reach the upstream exactly as the SDK sent it;
  denied   with DENIED_TOKEN, whose team no rule lets do it: the gateway's 403
           must come back as the SDK's own error;
  invalid  (operations with a JSON body) with an unknown top-level field
           added: the gateway's 422 must come back as the SDK's own error.

Each call carries `X-Test-Call: <id>`, which the upstream records, so the Rust
test can match what the SDK sent (captured here by an httpx event hook) with
what the upstream received. One JSON object per call is printed to stdout.

Environment: GATEWAY_URL, ALLOWED_TOKEN, DENIED_TOKEN.
"""

import ast
import json
import os
import pathlib
import re
import sys
import textwrap

import httpx
import polytomic
from polytomic.core.api_error import ApiError

ROOT = pathlib.Path(polytomic.__file__).parent
# The unknown field the `invalid` calls add; the schemas refuse it.
UNKNOWN_FIELD = "x_gateway_test_unknown"


def example_calls():
    """(operation, resource, example code) for every SDK operation."""
    for client_py in sorted(ROOT.rglob("client.py")):
        if client_py.parent == ROOT:
            continue
        resource = ".".join(client_py.relative_to(ROOT).parent.parts)
        tree = ast.parse(client_py.read_text())
        sync_client = next(
            c
            for c in tree.body
            if isinstance(c, ast.ClassDef) and not c.name.startswith("Async")
        )
        raw = raw_methods(client_py.parent / "raw_client.py")
        for fn in sync_client.body:
            if not isinstance(fn, ast.FunctionDef) or fn.name not in raw:
                continue
            doc = ast.get_docstring(fn) or ""
            code = doc.split("Examples\n--------\n", 1)[1]
            yield f"{resource}.{fn.name}", resource, textwrap.dedent(code), raw[fn.name]


def raw_methods(raw_client_py):
    """For each operation of a raw client: whether it sends a JSON body, and
    the statuses the SDK turns into typed errors."""
    tree = ast.parse(raw_client_py.read_text())
    raw = next(c for c in tree.body if isinstance(c, ast.ClassDef) and c.name.startswith("Raw"))
    methods = {}
    for fn in raw.body:
        if not isinstance(fn, ast.FunctionDef) or fn.name.startswith("_"):
            continue
        source = ast.unparse(fn)
        methods[fn.name] = {
            "json_body": "json=" in source,
            "typed": sorted(int(s) for s in set(re.findall(r"status_code == (\d+)", source))),
        }
    return methods


def prepared(code, operation, options):
    """The example code, without its own client, with `request_options`
    added to the operation's call."""
    tree = ast.parse(code)
    tree.body = [
        stmt
        for stmt in tree.body
        if not (
            isinstance(stmt, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "client" for t in stmt.targets)
        )
    ]
    method = operation.rsplit(".", 1)[1]
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == method
        and ast.unparse(node.func).startswith("client.")
    ]
    assert len(calls) == 1, f"{operation}: {len(calls)} calls in its example"
    calls[0].keywords.append(
        ast.keyword(arg="request_options", value=ast.parse(repr(options), mode="eval").body)
    )
    return compile(ast.fix_missing_locations(tree), operation, "exec")


def main():
    base_url = os.environ["GATEWAY_URL"]
    sent = {}

    def record(request):
        call = request.headers.get("x-test-call")
        if call is not None:
            sent[call] = {"method": request.method, "target": request.url.raw_path.decode()}

    def client(token):
        return polytomic.Polytomic(
            base_url=base_url,
            token=token,
            httpx_client=httpx.Client(event_hooks={"request": [record]}, timeout=60),
        )

    clients = {
        "allowed": client(os.environ["ALLOWED_TOKEN"]),
        "denied": client(os.environ["DENIED_TOKEN"]),
    }
    n = 0
    for operation, resource, code, raw in example_calls():
        modes = ["allowed", "denied"] + (["invalid"] if raw["json_body"] else [])
        for mode in modes:
            n += 1
            call_id = str(n)
            options = {"max_retries": 0, "additional_headers": {"X-Test-Call": call_id}}
            if mode == "invalid":
                options["additional_body_parameters"] = {UNKNOWN_FIELD: True}
            result = {
                "call": call_id,
                "operation": operation,
                "resource": resource,
                "mode": mode,
                "typed_statuses": raw["typed"],
            }
            scope = {"client": clients["denied" if mode == "denied" else "allowed"]}
            try:
                exec(prepared(code, operation, options), scope)
                result["outcome"] = "ok"
            except ApiError as e:
                result["outcome"] = "api_error"
                result["error_class"] = type(e).__name__
                result["status"] = e.status_code
                body = e.body
                if hasattr(body, "model_dump"):
                    body = body.model_dump(mode="json")
                    result["body_typed"] = True
                result["body"] = body if isinstance(body, (dict, list, str)) else repr(body)
            except Exception as e:  # a response the SDK could not parse, say
                result["outcome"] = "other_error"
                result["error_class"] = type(e).__name__
            result["sent"] = sent.get(call_id)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
