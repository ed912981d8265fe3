#!/usr/bin/env python3
"""Generate the gateway's operation catalog from the official Polytomic Python SDK.

Reads
  * the installed `polytomic` SDK (Fern-generated; the exact version pinned in
    requirements.txt beside this file, as are all of its dependencies). For every
    `raw_client.py` in the package, the first `Raw*Client` class (the sync one)
    has one public method per API operation; each makes exactly one
    `self._client_wrapper.httpx_client.request(<path>, method=..., json=...,
    params=..., headers=...)` call, which is read with `ast`. The docstring
    examples in the sibling `client.py` give the API version the SDK targets and
    a sample value for every path parameter. Request-body JSON Schemas are
    derived with pydantic from the method's signature.
  * connection-types/*.json: the connection-type configuration schemas vendored
    verbatim from polytomic/terraform-provider-polytomic (MPL-2.0; see
    connection-types/SOURCE.md, whose Repository/Path/Commit/License lines are
    read into the provenance block).

Emits
  one JSON file, by default `polytomic-<api_version>.json` beside this script
  (`--out FILE` to write elsewhere), which the Rust gateway embeds:
      {"format": 1, "api_version": ..., "provenance": {...},
       "operations": [...sorted by name...], "connection_types": {...}}
  The rules by which each operation field is derived are documented at the
  functions below and in PROVENANCE.md. Output is deterministic (sorted keys,
  stable order) so that CI can check the committed file is up to date.

Regenerate for a new SDK version
  Change the `polytomic==` pin in requirements.txt (and the other pins to what
  pip resolves for it), run `catalog/generate.sh`, review the diff of the
  generated file (new operations, changed bodies, and any failure from the
  SECRETS / AMENDMENTS tables naming something that no longer exists), and
  commit. Run directly as `python catalog/generate.py [--out FILE]` inside a
  venv that has exactly requirements.txt installed; it refuses otherwise.

Python 3.10+, standard library plus the SDK and pydantic.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.metadata
import inspect
import json
import os
import re
import sys
import tempfile
import textwrap
import typing
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements.txt"
CONNECTION_TYPES = HERE / "connection-types"
SOURCE_MD = CONNECTION_TYPES / "SOURCE.md"

CATALOG_FORMAT = 1
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# Deliberate departures from what the SDK sends, kept minimal. Each entry adds
# HTTP methods the gateway must also route for an operation. The generator fails
# if the operation disappears or the SDK starts sending the method itself (then
# the amendment is obsolete and should be removed).
AMENDMENTS: dict[str, dict[str, typing.Any]] = {
    "organization.update": {
        "add_methods": ["PATCH"],
        "why": "the SDK sends PUT; the published API reference documents PATCH; both must route",
    },
}

# Fields whose values are secrets: the gateway must never log them. Body entries
# are JSON-pointer-like paths from the body root (following $ref; `*` for array
# items and map values); the field's schema gets `"writeOnly": true` where it is
# defined. Query entries are query-parameter names. The generator fails if an
# entry names an operation or field that does not exist, so a rename in a new
# SDK is noticed rather than silently un-redacted.
SECRETS: dict[str, dict[str, list[str]]] = {
    "organization.create": {"body": ["/client_secret"]},  # OIDC client secret
    "organization.update": {"body": ["/client_secret"]},
    "webhooks.create": {"body": ["/secret"]},  # webhook signing secret
    "webhooks.update": {"body": ["/secret"]},
    "model_sync.create": {"body": ["/encryption_passphrase"]},
    "model_sync.update": {"body": ["/encryption_passphrase"]},
    # The proxied upstream request: its headers, body and query may carry
    # credentials or customer data (fields of the ConnectionProxyCall model;
    # the query comes either structured, `query`, or as a string, `rawQuery`).
    "connections.proxy.execute_proxy": {
        "body": ["/request/body", "/request/headers", "/request/query", "/request/rawQuery"]
    },
    # `parameters` is a partial connection configuration (credentials included).
    "connections.get_type_parameter_values": {"body": ["/parameters"]},
    "query_runner.run_query": {"query": ["query"]},  # the SQL text
    # The SQL a Harbor runs, as query_runner.run_query's is.
    "harbors.run_query": {"body": ["/query"]},
}
# Request headers that are secrets on every operation whose SDK call sends them
# (matched case-insensitively; listed lower-cased). Each must occur somewhere.
SECRET_HEADERS = ["x-polytomic-harbor-session"]
SECRET_HEADER_PREFIXES = ["x-polytomic-mcp-"]

# credential_kind: these need a partner key; everything else an organization key.
PARTNER_RESOURCES = {"organization", "users"}
PARTNER_PATH_PREFIX = "/api/organizations/"

# The only `format` values the gateway's validator knows; anything else fails.
ALLOWED_FORMATS = {"date-time", "date", "time", "uuid", "uri", "email", "duration"}

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class CatalogError(Exception):
    pass


def fail(message: str) -> typing.NoReturn:
    raise CatalogError(message)


# --------------------------------------------------------------------------
# Pinned environment


def check_pins() -> dict[str, str]:
    """Refuse to run unless every pin in requirements.txt is what is installed.

    Lines with an environment marker (`; python_version < ...`) are checked only
    when that distribution is installed. Returns {name: version}.
    """
    pins: dict[str, str] = {}
    problems = []
    for lineno, raw in enumerate(REQUIREMENTS.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        spec, _, marker = line.partition(";")
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", spec.strip())
        if not m:
            fail(f"{REQUIREMENTS}:{lineno}: expected an exact pin `name==version`, got {raw!r}")
        name, version = m.groups()
        pins[name] = version
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            if marker.strip():
                continue
            problems.append(f"{name}=={version} is pinned but not installed")
            continue
        if installed != version:
            problems.append(f"{name}=={version} is pinned but {installed} is installed")
    if "polytomic" not in pins:
        fail(f"{REQUIREMENTS} does not pin polytomic")
    if problems:
        fail(
            "the installed packages differ from catalog/requirements.txt:\n  "
            + "\n  ".join(problems)
            + "\nrun catalog/generate.sh (it keeps a venv with exactly these pins)"
        )
    return pins


# --------------------------------------------------------------------------
# Reading the SDK source


def dotted(node: ast.expr) -> str | None:
    """`a.b.c` for a Name/Attribute chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def the_request_call(fn: ast.FunctionDef, op: str) -> ast.Call:
    """The single `self._client_wrapper.httpx_client.request|stream(...)` call."""
    calls = [
        n
        for n in ast.walk(fn)
        if isinstance(n, ast.Call)
        and dotted(n.func) in ("self._client_wrapper.httpx_client.request", "self._client_wrapper.httpx_client.stream")
    ]
    if len(calls) != 1:
        fail(f"{op}: expected exactly one httpx_client request call, found {len(calls)}")
    return calls[0]


def dict_literal(node: ast.expr, what: str, op: str) -> list[tuple[str, ast.expr]]:
    """The (key, value expression) pairs of a `{"key": expr, ...}` literal."""
    if not isinstance(node, ast.Dict):
        fail(f"{op}: {what}= is not a dict literal: {ast.unparse(node)[:200]}")
    items = []
    for k, v in zip(node.keys, node.values):
        if not (isinstance(k, ast.Constant) and isinstance(k.value, str)):
            fail(f"{op}: {what}= has a non-constant key: {ast.unparse(node)[:200]}")
        items.append((k.value, v))
    return items


def path_template(node: ast.expr, op: str) -> tuple[str, list[str]]:
    """The SDK's path with each `{encode_path_param(x)}` written `{x}`, plus a
    leading slash; and the parameter names in path order. A trailing slash is
    kept exactly as the SDK has it."""
    pieces: list[str] = []
    params: list[str] = []
    values = [node] if isinstance(node, ast.Constant) else getattr(node, "values", None)
    if not isinstance(node, (ast.Constant, ast.JoinedStr)) or values is None:
        fail(f"{op}: the request path is not a string literal: {ast.unparse(node)}")
    for v in values:
        if isinstance(v, ast.Constant) and isinstance(v.value, str):
            pieces.append(v.value)
        elif (
            isinstance(v, ast.FormattedValue)
            and v.conversion == -1
            and v.format_spec is None
            and isinstance(v.value, ast.Call)
            and dotted(v.value.func) == "encode_path_param"
            and len(v.value.args) == 1
            and not v.value.keywords
            and isinstance(v.value.args[0], ast.Name)
        ):
            name = v.value.args[0].id
            pieces.append("{" + name + "}")
            params.append(name)
        else:
            fail(f"{op}: unexpected piece in request path: {ast.unparse(v)}")
    path = "".join(pieces)
    if path.startswith("/"):
        fail(f"{op}: the SDK path {path!r} already starts with '/'")
    path = "/" + path
    # Each segment is either literal or exactly one parameter: the gateway's
    # router matches whole segments.
    for seg in path.split("/")[1:]:
        if ("{" in seg or "}" in seg) and not re.fullmatch(r"\{\w+\}", seg):
            fail(f"{op}: path segment {seg!r} of {path} mixes literal text and a parameter")
    if len(set(params)) != len(params):
        fail(f"{op}: repeated path parameter in {path}")
    return path, params


def json_value_param(value: ast.expr, key: str, op: str) -> str:
    """The Python parameter a json body key is filled from: either the bare
    parameter name or `convert_and_respect_annotation_metadata(object_=<param>, ...)`."""
    if isinstance(value, ast.Name):
        return value.id
    if isinstance(value, ast.Call) and dotted(value.func) == "convert_and_respect_annotation_metadata":
        for kw in value.keywords:
            if kw.arg == "object_" and isinstance(kw.value, ast.Name):
                return kw.value.id
    fail(f"{op}: json key {key!r} has an unrecognised value: {ast.unparse(value)[:200]}")


def example_call(client_py: Path, cls_name: str, method: str, resource: str, op: str) -> tuple[str, dict[str, ast.expr]]:
    """From the sync client's docstring `Examples` for `method`: the API version
    passed to `Polytomic(...)`, and the keyword arguments of the example call
    `client.<resource>.<method>(...)`."""
    tree = ast.parse(client_py.read_text())
    cls = next((c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == cls_name), None)
    if cls is None:
        fail(f"{op}: no class {cls_name} in {client_py}")
    fn = next((f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == method), None)
    if fn is None:
        fail(f"{op}: no method {cls_name}.{method} in {client_py}")
    doc = ast.get_docstring(fn) or ""
    m = re.search(r"^Examples\n-+\n(.*)\Z", doc, re.M | re.S)
    if not m:
        fail(f"{op}: {cls_name}.{method} has no Examples section")
    code = ast.parse(textwrap.dedent(m.group(1)))
    versions = [
        c.args[0].value
        for c in ast.walk(code)
        if isinstance(c, ast.Call)
        and dotted(c.func) == "Polytomic"
        and c.args
        and isinstance(c.args[0], ast.Constant)
        and isinstance(c.args[0].value, str)
    ]
    target = f"client.{resource}.{method}"
    calls = [c for c in ast.walk(code) if isinstance(c, ast.Call) and dotted(c.func) == target]
    if len(versions) != 1 or len(calls) != 1:
        fail(f"{op}: expected one Polytomic(<version>, ...) and one {target}(...) in the example")
    return versions[0], {kw.arg: kw.value for kw in calls[0].keywords if kw.arg}


def read_operations(pydantic_mod) -> tuple[str, list[dict]]:
    import polytomic

    root = Path(polytomic.__file__).resolve().parent
    api_versions: set[str] = set()
    ops: list[dict] = []
    for raw_py in sorted(root.rglob("raw_client.py")):
        resource = ".".join(raw_py.relative_to(root).parent.parts)
        if not resource:
            fail(f"unexpected raw_client.py at the package root: {raw_py}")
        tree = ast.parse(raw_py.read_text())
        cls = next(
            (c for c in tree.body if isinstance(c, ast.ClassDef) and re.fullmatch(r"Raw\w*Client", c.name)),
            None,
        )
        if cls is None:
            fail(f"no Raw*Client class in {raw_py}")
        module = importlib.import_module(f"polytomic.{resource}.raw_client")
        py_cls = getattr(module, cls.name)
        for fn in cls.body:
            if not isinstance(fn, ast.FunctionDef) or fn.name.startswith("_"):
                continue
            op = f"{resource}.{fn.name}"
            version, example = example_call(raw_py.parent / "client.py", cls.name[len("Raw"):], fn.name, resource, op)
            api_versions.add(version)
            ops.append(read_operation(op, resource, fn, getattr(py_cls, fn.name), example, pydantic_mod))
    if len(api_versions) != 1:
        fail(f"the SDK's examples name {len(api_versions)} API versions: {sorted(api_versions)}")
    api_version = api_versions.pop()
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", api_version):
        fail(f"unexpected API version {api_version!r}")
    return api_version, sorted(ops, key=lambda o: o["name"])


def read_operation(op: str, resource: str, fn: ast.FunctionDef, func, example: dict, pydantic_mod) -> dict:
    call = the_request_call(fn, op)
    kw = {k.arg: k.value for k in call.keywords}
    for unsupported in ("data", "files", "content"):
        if unsupported in kw:
            fail(f"{op}: the SDK sends {unsupported}=, which the catalog does not describe")
    if len(call.args) != 1 or None in kw:
        fail(f"{op}: unexpected request call shape: {ast.unparse(call)[:200]}")
    method = kw.get("method")
    if not (isinstance(method, ast.Constant) and isinstance(method.value, str)):
        fail(f"{op}: method= is not a string literal")
    path, param_names = path_template(call.args[0], op)
    json_items = dict_literal(kw["json"], "json", op) if "json" in kw else None
    query_keys = [k for k, _ in dict_literal(kw["params"], "params", op)] if "params" in kw else []
    header_keys = [k for k, _ in dict_literal(kw["headers"], "headers", op)] if "headers" in kw else []

    # path_params: "uuid" when the SDK's example value is a canonical lowercase
    # UUID, else "segment" (connection type names, schema ids like public.users).
    path_params = []
    for name in param_names:
        value = example.get(name)
        if not (isinstance(value, ast.Constant) and isinstance(value.value, str)):
            fail(f"{op}: path parameter {name!r} has no string example value in the SDK docstring")
        path_params.append({"name": name, "format": "uuid" if UUID_RE.fullmatch(value.value) else "segment"})

    json_keys = [k for k, _ in json_items] if json_items is not None else []
    return {
        "name": op,
        "resource": resource,
        "methods": [method.value.upper()],
        "path": path,
        "path_params": path_params,
        "credential_kind": credential_kind(resource, path),
        "organizations": organizations(path, query_keys, json_keys),
        "body": {"schema": body_schema(op, func, json_items, pydantic_mod)} if json_items is not None else None,
        "connection_configuration": connection_configuration(func, json_items),
        # filled in by apply_secrets()
        "secrets": {"body": [], "query": [], "headers": []},
        # scratch, removed before output
        "_query_keys": query_keys,
        "_header_keys": header_keys,
    }


# --------------------------------------------------------------------------
# Derived fields


def credential_kind(resource: str, path: str) -> str:
    """"partner" for the organization/users resources and any path under
    /api/organizations/ (partner-scoped endpoints elsewhere in the SDK, e.g.
    entities.get_for_partner); else "organization"."""
    if resource.split(".")[0] in PARTNER_RESOURCES or path.startswith(PARTNER_PATH_PREFIX):
        return "partner"
    return "organization"


def organizations(path: str, query_keys: list[str], json_keys: list[str]) -> list[dict]:
    """Every place a request names an organization, for policy scoping, in the
    order path, query, body:
      * a path parameter named org_id or organization_id, or one directly after
        the literal segment `organizations` (/api/organizations/{id}; not
        /api/organizations/entities/{id});
      * the query parameter organization_id;
      * a top-level body key organization_id or *_organization_id."""
    found = []
    segments = path.split("/")
    for i, seg in enumerate(segments):
        m = re.fullmatch(r"\{(\w+)\}", seg)
        if m and (m.group(1) in ("org_id", "organization_id") or segments[i - 1] == "organizations"):
            found.append({"in": "path", "name": m.group(1)})
    found += [{"in": "query", "name": k} for k in sorted(query_keys) if k == "organization_id"]
    found += [
        {"in": "body", "name": k}
        for k in sorted(json_keys)
        if k == "organization_id" or k.endswith("_organization_id")
    ]
    return found


def strip_optional(hint):
    """Annotated[X, ...] -> X; Optional[X] -> X."""
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) is typing.Union:
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(rest) == 1:
            return strip_optional(rest[0])
    return hint


def connection_configuration(func, json_items) -> dict | None:
    """A body that carries a connection configuration: a `configuration` key
    typed Dict[str, Any] (validated by the gateway against the connection type's
    schema) beside a `type` key naming the connection type. Model
    `configuration`s have no `type` key beside them."""
    if not json_items:
        return None
    params = {k: json_value_param(v, k, func.__qualname__) for k, v in json_items}
    if "configuration" not in params or "type" not in params:
        return None
    hints = typing.get_type_hints(func, include_extras=True)
    hint = strip_optional(hints[params["configuration"]])
    if typing.get_origin(hint) is dict and typing.get_args(hint) == (str, typing.Any):
        return {"field": "configuration", "type_field": "type"}
    return None


# --------------------------------------------------------------------------
# Request-body JSON Schemas


def body_schema(op: str, func, json_items: list[tuple[str, ast.expr]], pydantic) -> dict:
    """A JSON Schema (2020-12) for the json body, built by pydantic from the
    method signature: one field per json key, typed by the parameter's type hint,
    required when the parameter has no default, named by the json key (as an
    alias: the Python names can shadow BaseModel attributes, e.g. `validate`).
    Unknown top-level keys are refused (extra="forbid"); nested Fern models allow
    extras, as pydantic reports them. Post-processed by normalise()."""
    sig = inspect.signature(func)
    hints = typing.get_type_hints(func, include_extras=True)
    fields = {}
    for i, (key, value) in enumerate(json_items):
        pname = json_value_param(value, key, op)
        if pname not in sig.parameters or pname not in hints:
            fail(f"{op}: json key {key!r} comes from {pname!r}, which is not a typed parameter")
        default = sig.parameters[pname].default
        if default is inspect.Parameter.empty:
            default = ...  # required
        elif default is Ellipsis or default is None:  # Fern's OMIT is `...`
            default = None
        fields[f"field_{i}"] = (hints[pname], pydantic.Field(default, alias=key))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a pydantic warning means a lossy schema: stop
        model = pydantic.create_model(
            "RequestBody", __config__=pydantic.ConfigDict(extra="forbid"), **fields
        )
        raw = model.model_json_schema(by_alias=True, mode="validation")
    schema = {"$schema": JSON_SCHEMA_DIALECT, **normalise(raw, raw.get("$defs", {}), op)}
    if schema.get("additionalProperties") is not False:
        fail(f"{op}: the body schema does not refuse unknown top-level keys")
    prune_defs(schema, op)
    return schema


# JSON Schema keywords, by what their value is. Anything else fails: a new
# keyword from a new pydantic must be looked at before the gateway sees it.
SUBSCHEMA_MAPS = {"properties", "$defs", "patternProperties", "dependentSchemas"}
SUBSCHEMA_ONE = {
    "items", "additionalProperties", "not", "contains", "propertyNames",
    "if", "then", "else", "unevaluatedProperties", "unevaluatedItems",
}
SUBSCHEMA_LISTS = {"anyOf", "oneOf", "allOf", "prefixItems"}
VALUE_KEYWORDS = {
    "$schema", "$ref", "type", "enum", "const", "format", "title", "description",
    "default", "examples", "required", "minItems", "maxItems", "uniqueItems",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "minLength", "maxLength", "pattern", "minProperties", "maxProperties",
    "discriminator", "deprecated", "readOnly", "writeOnly",
    "contentEncoding", "contentMediaType",
}


def children(node) -> typing.Iterator[tuple[str, typing.Any]]:
    """(keyword, subschema) for each direct subschema of a schema object."""
    if not isinstance(node, dict):
        return
    for k, v in node.items():
        if k in SUBSCHEMA_MAPS:
            for sub in v.values():
                yield k, sub
        elif k in SUBSCHEMA_ONE:
            yield k, v
        elif k in SUBSCHEMA_LISTS:
            for sub in v:
                yield k, sub


def every_schema(node) -> typing.Iterator[dict]:
    """Every schema object in a schema, $defs included, depth first."""
    if isinstance(node, dict):
        yield node
        for _, sub in children(node):
            yield from every_schema(sub)


def ref_name(ref: str, op: str) -> str:
    if not ref.startswith("#/$defs/"):
        fail(f"{op}: unexpected $ref {ref!r}")
    return ref[len("#/$defs/"):]


def is_enum_branch(branch, defs: dict, op: str) -> bool:
    if not isinstance(branch, dict):
        return False
    if "enum" in branch or "const" in branch:
        return True
    if "$ref" in branch:
        target = defs.get(ref_name(branch["$ref"], op), {})
        return "enum" in target or "const" in target
    return False


def normalise(node, defs: dict, op: str):
    """Bottom-up clean-up of a pydantic schema:
      * drop the `title` and `description` keywords and `"default": null`
        (other defaults stay) -- keywords of schema objects only, never property
        names inside `properties`/`$defs`;
      * enum catch-all: Fern enums are Union[Literal[...], Any], rendered as an
        anyOf of an enum/const branch and an empty `{}` branch that would accept
        anything. Where an anyOf/oneOf has an enum/const branch, drop the `{}`
        branches; a single remaining branch is inlined into its parent."""
    if isinstance(node, bool):
        return node
    if not isinstance(node, dict):
        fail(f"{op}: a schema is neither an object nor a boolean: {node!r}")
    out = {}
    for k, v in node.items():
        if k in SUBSCHEMA_MAPS:
            out[k] = {name: normalise(sub, defs, op) for name, sub in v.items()}
        elif k in SUBSCHEMA_ONE:
            out[k] = normalise(v, defs, op)
        elif k in SUBSCHEMA_LISTS:
            out[k] = [normalise(sub, defs, op) for sub in v]
        elif k in VALUE_KEYWORDS:
            out[k] = v
        else:
            fail(f"{op}: unexpected JSON Schema keyword {k!r} from pydantic")
    out.pop("title", None)
    out.pop("description", None)
    if "default" in out and out["default"] is None:
        del out["default"]
    for comb in ("anyOf", "oneOf"):
        if comb in out and any(is_enum_branch(b, defs, op) for b in out[comb]):
            kept = [b for b in out[comb] if b != {}]
            if len(kept) == 1:
                del out[comb]
                for k, v in kept[0].items():
                    if k in out and out[k] != v:
                        fail(f"{op}: cannot inline {comb} branch: {k!r} differs from its parent")
                    out[k] = v
            else:
                out[comb] = kept
    return out


def prune_defs(schema: dict, op: str) -> None:
    """Drop $defs that no $ref reachable from the root uses."""
    defs = schema.get("$defs", {})
    outside = {k: v for k, v in schema.items() if k != "$defs"}
    todo = [ref_name(s["$ref"], op) for s in every_schema(outside) if "$ref" in s]
    used: set[str] = set()
    while todo:
        name = todo.pop()
        if name in used:
            continue
        if name not in defs:
            fail(f"{op}: $ref to missing $defs/{name}")
        used.add(name)
        todo += [ref_name(s["$ref"], op) for s in every_schema(defs[name]) if "$ref" in s]
    if used:
        schema["$defs"] = {k: v for k, v in defs.items() if k in used}
    else:
        schema.pop("$defs", None)


def expand(schema: dict, node, seen=()) -> typing.Iterator[dict]:
    """`node` and every schema it stands for through $ref and anyOf/oneOf/allOf."""
    if not isinstance(node, dict):
        return
    yield node
    if "$ref" in node:
        name = ref_name(node["$ref"], "?")
        if name not in seen:
            yield from expand(schema, schema["$defs"][name], seen + (name,))
    for comb in ("anyOf", "oneOf", "allOf"):
        for branch in node.get(comb, []):
            yield from expand(schema, branch, seen)


def mark_secret(schema: dict, pointer: str, op: str) -> None:
    """Set `"writeOnly": true` on the field `pointer` names, where it is defined:
    inside a $defs model if it lives there (beside a bare $ref if the field's
    schema is one). Fails if the field does not exist."""
    segments = pointer.split("/")
    if segments[0] != "" or len(segments) < 2:
        fail(f"SECRETS[{op!r}]: {pointer!r} is not a /-path")
    current = [schema]
    for depth, seg in enumerate(segments[1:], 1):
        found = []
        for node in current:
            for obj in expand(schema, node):
                if seg == "*":
                    found += [obj[k] for k in ("items", "additionalProperties") if isinstance(obj.get(k), dict)]
                elif isinstance(obj.get("properties"), dict) and seg in obj["properties"]:
                    found.append(obj["properties"][seg])
        if not found:
            fail(f"SECRETS[{op!r}]: body field {pointer!r} does not exist (no {seg!r} at {'/'.join(segments[:depth]) or '/'})")
        current = found
    for node in current:
        if not isinstance(node, dict):
            fail(f"SECRETS[{op!r}]: {pointer!r} has a boolean schema")
        node["writeOnly"] = True


def written_only_paths(schema: dict) -> list[str]:
    """Every writeOnly field, as a /-path from the body root (following $ref;
    `*` for array items and map values). A field in a $defs model shared by
    several places is listed at each."""
    out: set[str] = set()

    def walk(node, prefix: str, seen: tuple) -> None:
        if not isinstance(node, dict):
            return
        if node.get("writeOnly") is True:
            out.add(prefix or "/")
        if "$ref" in node:
            name = ref_name(node["$ref"], "?")
            if name not in seen:
                walk(schema["$defs"][name], prefix, seen + (name,))
        for comb in ("anyOf", "oneOf", "allOf"):
            for branch in node.get(comb, []):
                walk(branch, prefix, seen)
        for name, sub in node.get("properties", {}).items():
            walk(sub, prefix + "/" + name.replace("~", "~0").replace("/", "~1"), seen)
        for sub in node.get("patternProperties", {}).values():
            walk(sub, prefix + "/*", seen)
        for k in ("items", "additionalProperties"):
            walk(node.get(k), prefix + "/*", seen)
        for sub in node.get("prefixItems", []):
            walk(sub, prefix + "/*", seen)

    walk({k: v for k, v in schema.items() if k != "$defs"}, "", ())
    return sorted(out)


def apply_secrets(ops: list[dict]) -> None:
    by_name = {o["name"]: o for o in ops}
    for op_name, entry in SECRETS.items():
        op = by_name.get(op_name) or fail(f"SECRETS names operation {op_name!r}, which the SDK does not have")
        for pointer in entry.get("body", []):
            if op["body"] is None:
                fail(f"SECRETS[{op_name!r}]: the operation sends no json body")
            mark_secret(op["body"]["schema"], pointer, op_name)
        for q in entry.get("query", []):
            if q not in op["_query_keys"]:
                fail(f"SECRETS[{op_name!r}]: query parameter {q!r} does not exist")
        op["secrets"]["query"] = sorted(entry.get("query", []))
    matched = set()
    for op in ops:
        if op["body"] is not None:
            op["secrets"]["body"] = written_only_paths(op["body"]["schema"])
        headers = set()
        for h in op["_header_keys"]:
            lower = h.lower()
            rule = lower if lower in SECRET_HEADERS else next((p for p in SECRET_HEADER_PREFIXES if lower.startswith(p)), None)
            if rule:
                headers.add(lower)
                matched.add(rule)
        op["secrets"]["headers"] = sorted(headers)
    for rule in SECRET_HEADERS + SECRET_HEADER_PREFIXES:
        if rule not in matched:
            what = "a header starting with " if rule in SECRET_HEADER_PREFIXES else "the header "
            fail(f"SECRET_HEADERS: no operation sends {what}{rule!r}; renamed?")


def apply_amendments(ops: list[dict]) -> None:
    by_name = {o["name"]: o for o in ops}
    for op_name, amendment in AMENDMENTS.items():
        op = by_name.get(op_name) or fail(f"AMENDMENTS names operation {op_name!r}, which the SDK does not have")
        for m in amendment["add_methods"]:
            if m in op["methods"]:
                fail(f"AMENDMENTS[{op_name!r}]: the SDK already sends {m}; remove the amendment")
            op["methods"].append(m)
        op["methods"].sort()


def check_schemas(ops: list[dict]) -> set[str]:
    """Checks over every body schema; returns the set of `format`s used."""
    formats: set[str] = set()
    for op in ops:
        if op["body"] is None:
            continue
        schema = op["body"]["schema"]
        defs = schema.get("$defs", {})
        for node in every_schema(schema):
            if "format" in node:
                formats.add(node["format"])
            for comb in ("anyOf", "oneOf"):
                branches = node.get(comb, [])
                if {} in branches and any(is_enum_branch(b, defs, op["name"]) for b in branches):
                    fail(f"{op['name']}: an {comb} still holds an enum and a catch-all {{}}")
    unknown = formats - ALLOWED_FORMATS
    if unknown:
        fail(f"body schemas use formats the gateway does not know: {sorted(unknown)}")
    return formats


# --------------------------------------------------------------------------
# Connection types


def read_source_md() -> dict[str, str]:
    """The `- Key: value` lines of connection-types/SOURCE.md."""
    fields = dict(re.findall(r"^- ([A-Za-z ]+): (.+)$", SOURCE_MD.read_text(), re.M))
    for key in ("Repository", "Path", "Commit", "License"):
        if key not in fields:
            fail(f"{SOURCE_MD} has no '- {key}: ...' line")
    if not re.fullmatch(r"[0-9a-f]{40}", fields["Commit"]):
        fail(f"{SOURCE_MD}: Commit is not a 40-hex commit id")
    return fields


def no_conflicting_keys(pairs):
    """json object hook: a key repeated with the same value is harmless (a few
    upstream files repeat `"default"`), but with different values parsers
    disagree on which wins, so refuse."""
    out: dict = {}
    for k, v in pairs:
        if k in out and out[k] != v:
            fail(f"a connection-type schema repeats key {k!r} with different values")
        out[k] = v
    return out


# Connection-type fields that carry credentials but that the published
# schemas do not mark `"sensitive": true`: the generic HTTP types send
# whatever header, query parameter or form value the user configures, so
# their values are secrets. Marked sensitive in the generated catalog (the
# vendored files stay verbatim). Paths as in SECRETS (`*`: any array item);
# the generator fails if one no longer exists.
_HTTP_AUTH = [
    "/auth/header/value",
    "/auth/query/*/value",
    "/auth/oauth/extra_form_data/*/value",
    "/headers/*/value",
    "/parameters/*/value",
]
CONNECTION_TYPE_SECRETS: dict[str, list[str]] = {
    "api": _HTTP_AUTH,
    "csv": _HTTP_AUTH,
    "httpenrichment": _HTTP_AUTH,
    "webhook": [
        "/header/value",
        "/query/*/value",
        "/oauth/extra_form_data/*/value",
        "/headers/*/value",
    ],
}


def mark_connection_type_secrets(name: str, schema: dict) -> None:
    """Applies CONNECTION_TYPE_SECRETS to one connection type's schema."""
    for path in CONNECTION_TYPE_SECRETS.get(name, []):
        node = schema
        for segment in path.strip("/").split("/"):
            node = node.get("items") if segment == "*" else (node.get("properties") or {}).get(segment)
            if not isinstance(node, dict):
                fail(f"connection type {name}: CONNECTION_TYPE_SECRETS names {path}, which it does not have")
        node["sensitive"] = True


def read_connection_types() -> dict[str, typing.Any]:
    """Each connection-types/<name>.json, parsed; only CONNECTION_TYPE_SECRETS
    changes them."""
    types = {}
    for f in sorted(CONNECTION_TYPES.glob("*.json")):
        types[f.stem] = json.loads(f.read_text(encoding="utf-8"), object_pairs_hook=no_conflicting_keys)
    if not types:
        fail(f"no connection-type schemas in {CONNECTION_TYPES}")
    for name in CONNECTION_TYPE_SECRETS:
        if name not in types:
            fail(f"CONNECTION_TYPE_SECRETS names connection type {name}, which does not exist")
        mark_connection_type_secrets(name, types[name])
    return types


def count_sensitive(node) -> int:
    if isinstance(node, dict):
        return (node.get("sensitive") is True) + sum(count_sensitive(v) for v in node.values())
    if isinstance(node, list):
        return sum(count_sensitive(v) for v in node)
    return 0


# --------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="output file (default: polytomic-<api_version>.json beside this script)")
    args = parser.parse_args()

    pins = check_pins()
    import pydantic  # only after the pins are known to be what is installed

    api_version, ops = read_operations(pydantic)
    apply_amendments(ops)
    apply_secrets(ops)
    formats = check_schemas(ops)
    for op in ops:
        del op["_query_keys"], op["_header_keys"]

    source = read_source_md()
    connection_types = read_connection_types()
    sdk_version = pins["polytomic"]
    catalog = {
        "format": CATALOG_FORMAT,
        "api_version": api_version,
        "provenance": {
            "sdk": {
                "name": "polytomic",
                "version": sdk_version,
                "license": importlib.metadata.metadata("polytomic")["License"],
                "source": f"https://pypi.org/project/polytomic/{sdk_version}/",
            },
            "pydantic": pydantic.VERSION,
            "connection_types": {
                "repository": source["Repository"],
                "path": source["Path"],
                "commit": source["Commit"],
                "license": source["License"],
                "files": len(connection_types),
            },
        },
        "operations": ops,
        "connection_types": connection_types,
    }
    text = json.dumps(catalog, indent=1, sort_keys=True, ensure_ascii=False) + "\n"

    out = args.out or HERE / f"polytomic-{api_version}.json"
    # Write-then-rename so an interrupted run never leaves a half-written file.
    fd, tmp = tempfile.mkstemp(dir=out.resolve().parent, prefix=".catalog-", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)

    resources = {o["resource"] for o in ops}
    print(
        f"catalog: {len(ops)} operations in {len(resources)} resources, {len(connection_types)} connection types",
        file=sys.stderr,
    )
    print(f"catalog: API version {api_version}, SDK polytomic {sdk_version}, pydantic {pydantic.VERSION}", file=sys.stderr)
    print(f"catalog: {sum(o['body'] is not None for o in ops)} operations with a json body; formats: {', '.join(sorted(formats))}", file=sys.stderr)
    print(f"catalog: {count_sensitive(connection_types)} sensitive fields across connection types", file=sys.stderr)
    print(f"catalog: wrote {out} ({len(text.encode('utf-8'))} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CatalogError as e:
        print(f"catalog: error: {e}", file=sys.stderr)
        sys.exit(1)
