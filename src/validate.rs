//! Validation of write bodies against JSON Schemas, before anything is sent.
//!
//! Polytomic replaces an organization's SSO/OIDC settings in full on every
//! update, so a malformed or misspelled body can silently wipe a customer's
//! single sign-on. For `POST`, `PUT` and `PATCH` on a route that names a
//! schema, the checks run in this order:
//!
//! 1. a declared `Content-Length` over `server.max_body_bytes` is 413 (the
//!    body-limit layer, before this one);
//! 2. `Content-Type` must be `application/json`, optionally
//!    `; charset=utf-8`, else 415;
//! 3. the body is read up to the limit, and 413 past it;
//! 4. the body parses strictly ([`parse_strict`]): valid UTF-8, no lone
//!    surrogates, no trailing data, and **no duplicate keys**, even ones
//!    equal only after unescaping; else 400 `invalid_json` with line and
//!    column. The parse is bounded ([`JsonLimits`]): arrays and objects
//!    nested deeper than `server.max_json_depth` are 422 `json_too_deep`,
//!    and more JSON values than `server.max_json_values` are 413
//!    `json_too_many_values`. Both are counted while parsing, and the parse
//!    stops at the first value past a limit, so the memory a parse takes is
//!    bounded by the limits, not by the body;
//! 5. it satisfies the schema, else 422 `invalid_body` listing every
//!    violation with messages written here from the keyword and the schema,
//!    never containing the submitted value.
//!
//! A valid body goes upstream byte for byte with a correct `Content-Length`,
//! and the parsed document is shared, never parsed again: as [`ParsedBody`]
//! in the request extensions for later layers, and in the request notes for
//! the audit layer. Routes
//! without a schema are not buffered: their bodies stream. A `GET`, `HEAD`,
//! `DELETE` or `OPTIONS` with a body is refused (400) on any path that has a
//! schema route, so a body never reaches the upstream unvalidated there.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::Either;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::BodyExt;
use opentelemetry::trace::SpanKind;
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Serialize;
use serde_json::{Map, Value};
use tower::{Layer, Service};

use crate::body::{full, BoxError, GatewayBody};
use crate::error::GatewayError;
use crate::future::{take_ready, ResponseFuture, ThenCall};
use crate::notes::{BodyDigest, BodyNote};
use crate::routes::RouteMatch;
use crate::telemetry::RequestTrace;

/// Bounds on the strict parse of one body: `server.max_json_depth` and
/// `server.max_json_values`.
///
/// A parsed document takes far more memory than its text (a small object is
/// a few bytes of JSON but hundreds of bytes of [`Value`]), so the parse
/// counts as it goes and stops at the first value past a limit: what one
/// parse builds is bounded by these limits, not by the body's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonLimits {
    /// The deepest nesting of arrays and objects; the outermost counts as 1,
    /// and a scalar alone is depth 0. Past it: 422 `json_too_deep`.
    pub max_depth: usize,
    /// The most values a document may hold. Every value counts once: each
    /// object, array, string, number, `true`, `false` and `null`, at any
    /// depth, the document itself included. Object keys do not count apart
    /// from their values (a key is text, bounded by the body's size; the
    /// member's value counts). Past it: 413 `json_too_many_values`.
    pub max_values: usize,
}

impl JsonLimits {
    /// The defaults: 64 levels, 100,000 values.
    pub const DEFAULT: Self = Self {
        max_depth: 64,
        max_values: 100_000,
    };
}

impl Default for JsonLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The largest `server.max_json_depth`. serde_json refuses nesting of 128
/// levels or more itself (its recursion limit, counted as here), with its
/// own error; a body one level past the configured limit must reach this
/// module's check, so that it is answered `json_too_deep`.
pub const MAX_JSON_DEPTH_LIMIT: usize = 126;

/// Why a body is not acceptable JSON; the 400's message and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    /// 1-based line of the problem.
    pub line: usize,
    /// 1-based column of the problem (0 when the body is empty).
    pub column: usize,
    /// What is wrong, never quoting the body.
    pub reason: String,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid JSON at line {} column {}: {}",
            self.line, self.column, self.reason
        )
    }
}

/// Why [`parse_strict`] refused a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Not one strict, well-formed JSON document: 400 `invalid_json`.
    Invalid(JsonError),
    /// Nested deeper than [`JsonLimits::max_depth`]: 422 `json_too_deep`.
    TooDeep {
        /// The limit passed.
        limit: usize,
    },
    /// More values than [`JsonLimits::max_values`]: 413
    /// `json_too_many_values`.
    TooManyValues {
        /// The limit passed.
        limit: usize,
    },
}

impl From<ParseError> for GatewayError {
    fn from(error: ParseError) -> Self {
        match error {
            ParseError::Invalid(e) => GatewayError::InvalidJson(e),
            ParseError::TooDeep { limit } => GatewayError::JsonTooDeep { limit },
            ParseError::TooManyValues { limit } => GatewayError::JsonTooManyValues { limit },
        }
    }
}

/// One parse's count against its limits, shared by every level of it.
struct Budget {
    limits: JsonLimits,
    /// Values counted so far.
    values: Cell<usize>,
    /// The limit that stopped the parse, once one has.
    exceeded: Cell<Option<ParseError>>,
}

impl Budget {
    /// Stops the parse with `error`: the error that serde_json carries out
    /// only unwinds it; [`parse_strict`] reports `error`.
    fn exceed<E: serde::de::Error>(&self, error: ParseError) -> E {
        self.exceeded.set(Some(error));
        E::custom("a parse limit was passed")
    }
}

/// Builds a `serde_json::Value`, refusing duplicate keys, and nesting and
/// value counts past the [`Budget`]'s limits.
struct Strict<'b> {
    /// The nesting of the arrays and objects around this value.
    depth: usize,
    budget: &'b Budget,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        // Counted before the value is read: the first value past the limit
        // stops the parse, so no more than `max_values` are ever built.
        let values = self.budget.values.get() + 1;
        let limit = self.budget.limits.max_values;
        if values > limit {
            return Err(self.budget.exceed(ParseError::TooManyValues { limit }));
        }
        self.budget.values.set(values);
        deserializer.deserialize_any(self)
    }
}

impl Strict<'_> {
    /// The depth of an array or object opening here, or the refusal.
    fn enter<E: serde::de::Error>(&self) -> Result<usize, E> {
        let depth = self.depth + 1;
        let limit = self.budget.limits.max_depth;
        if depth > limit {
            return Err(self.budget.exceed(ParseError::TooDeep { limit }));
        }
        Ok(depth)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let depth = self.enter()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Strict {
            depth,
            budget: self.budget,
        })? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let depth = self.enter()?;
        let mut object = Map::new();
        // Keys arrive unescaped, so "a\u005fb" and "a_b" collide here.
        while let Some(key) = map.next_key::<String>()? {
            let slot = match object.entry(key) {
                serde_json::map::Entry::Vacant(slot) => slot,
                serde_json::map::Entry::Occupied(_) => {
                    return Err(serde::de::Error::custom("duplicate object key"));
                }
            };
            slot.insert(map.next_value_seed(Strict {
                depth,
                budget: self.budget,
            })?);
        }
        Ok(Value::Object(object))
    }
}

/// Parses `bytes` as one JSON document, strictly and within `limits` (see
/// the module docs).
pub fn parse_strict(bytes: &[u8], limits: JsonLimits) -> Result<Value, ParseError> {
    let budget = Budget {
        limits,
        values: Cell::new(0),
        exceeded: Cell::new(None),
    };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    Strict {
        depth: 0,
        budget: &budget,
    }
    .deserialize(&mut deserializer)
    .and_then(|value| deserializer.end().map(|()| value))
    .map_err(|e| {
        if let Some(exceeded) = budget.exceeded.take() {
            return exceeded;
        }
        let text = e.to_string();
        let reason = text
            .rsplit_once(" at line ")
            .map_or(text.as_str(), |(r, _)| r);
        ParseError::Invalid(JsonError {
            line: e.line(),
            column: e.column(),
            reason: reason.to_owned(),
        })
    })
}

/// One schema violation, as listed in a 422's `metadata.errors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// JSON pointer to the offending place in the body (`/issuer`).
    pub pointer: String,
    /// The schema keyword that failed (`format`, `required`, …).
    pub keyword: String,
    /// What is expected there, written from the schema, never the value.
    pub message: String,
}

/// A schema compiled once at startup.
pub struct CompiledSchema {
    /// The file it came from, for errors and logs.
    path: Arc<str>,
    /// The schema document, to describe violations from it.
    document: Value,
    /// The compiled validator (formats asserted).
    validator: jsonschema::Validator,
    /// Paths of the fields marked secret (see [`collect_secrets`]), for
    /// audit redaction.
    secrets: Vec<Vec<String>>,
    /// Whether a `$ref` refers back into itself, so that secrets may sit
    /// deeper than any fixed list of paths reaches: bodies are then walked
    /// along the schema ([`instance_secrets`]).
    recursive: bool,
    /// A member whose schema depends on a sibling field's value: a
    /// connection `configuration` and its connection `type`.
    discriminated: Option<Discriminated>,
}

/// A member validated against the schema its discriminator names.
#[derive(Debug)]
struct Discriminated {
    /// The member (`configuration`).
    field: String,
    /// The sibling naming its schema (`type`).
    type_field: String,
    /// The schemas, by discriminator value.
    types: Arc<SchemaSet>,
    /// Whether a value the set does not know passes (unvalidated, and
    /// redacted whole in the audit trail) rather than being refused.
    allow_unknown: bool,
}

/// Schemas by name, such as the connection types' configuration schemas.
#[derive(Debug, Default)]
pub struct SchemaSet {
    schemas: HashMap<String, CompiledSchema>,
}

impl SchemaSet {
    /// Compiles every `(name, document)`, naming each `{label} {name}` in errors.
    pub fn compile<'a>(
        label: &str,
        documents: impl IntoIterator<Item = (&'a String, &'a Value)>,
    ) -> Result<Self, String> {
        let mut schemas = HashMap::new();
        for (name, document) in documents {
            let schema = CompiledSchema::compile(&format!("{label} {name}"), document.clone())?;
            schemas.insert(name.clone(), schema);
        }
        Ok(Self { schemas })
    }

    /// The schema named `name`.
    pub fn get(&self, name: &str) -> Option<&CompiledSchema> {
        self.schemas.get(name)
    }

    /// How many schemas the set holds.
    pub fn len(&self) -> usize {
        self.schemas.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.schemas.is_empty()
    }
}

impl fmt::Debug for CompiledSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledSchema")
            .field("path", &self.path)
            .field("secrets", &self.secrets)
            .field("discriminated", &self.discriminated)
            .finish_non_exhaustive()
    }
}

/// Whether a string is one JSON document: the `json` format that connection
/// type schemas use for fields holding JSON text.
fn is_json_text(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

impl CompiledSchema {
    /// Reads and compiles a draft 2020-12 schema file, asserting formats.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read(path)
            .map_err(|e| format!("cannot read {}: {}", path.display(), e.kind()))?;
        let document: Value = serde_json::from_slice(&text)
            .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
        Self::compile(&path.display().to_string(), document)
    }

    /// Compiles a schema document; `name` labels it in errors.
    pub fn compile(name: &str, document: Value) -> Result<Self, String> {
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .should_ignore_unknown_formats(false)
            .with_format("json", is_json_text)
            .build(&document)
            .map_err(|e| format!("{name} is not a valid JSON Schema: {e}"))?;
        let mut secrets = Vec::new();
        let mut recursive = false;
        collect_secrets(
            &document,
            &document,
            &mut Vec::new(),
            &mut Vec::new(),
            &mut (&mut secrets, &mut recursive),
        );
        secrets.sort();
        secrets.dedup();
        Ok(Self {
            path: name.into(),
            document,
            validator,
            secrets,
            recursive,
            discriminated: None,
        })
    }

    /// Validates the member `field` against the schema in `types` that the
    /// sibling `type_field` names. A name the set does not know is refused
    /// unless `allow_unknown`; without a name (an update keeping the
    /// connection's type) the member is not checked. Either way, a member
    /// whose schema is not known is redacted whole in the audit trail.
    pub fn with_discriminated(
        mut self,
        field: &str,
        type_field: &str,
        types: Arc<SchemaSet>,
        allow_unknown: bool,
    ) -> Self {
        self.discriminated = Some(Discriminated {
            field: field.to_owned(),
            type_field: type_field.to_owned(),
            types,
            allow_unknown,
        });
        self
    }

    /// The file it came from.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The paths of the fields this schema marks secret, whatever the body:
    /// `"*"` stands for any array item or map key. A recursive schema's
    /// recursion is followed once here; [`CompiledSchema::secret_paths_for`]
    /// follows it as deep as a body goes.
    pub fn write_only_paths(&self) -> &[Vec<String>] {
        &self.secrets
    }

    /// The secret paths of `instance` under this schema alone.
    fn own_secret_paths_for(&self, instance: &Value) -> Cow<'_, [Vec<String>]> {
        if !self.recursive {
            return Cow::Borrowed(&self.secrets);
        }
        let mut schemas = Vec::new();
        applicable(&self.document, &self.document, &mut schemas);
        let mut paths = Vec::new();
        instance_secrets(
            &self.document,
            &schemas,
            instance,
            &mut Vec::new(),
            &mut paths,
        );
        paths.sort();
        paths.dedup();
        Cow::Owned(paths)
    }

    /// The paths of the secret fields of `instance`: the schema's own, and
    /// those of the discriminated member's schema (or the whole member when
    /// its schema is unknown).
    pub fn secret_paths_for(&self, instance: &Value) -> Cow<'_, [Vec<String>]> {
        let own = self.own_secret_paths_for(instance);
        let Some(d) = &self.discriminated else {
            return own;
        };
        let Some(member) = instance.get(&d.field) else {
            return own;
        };
        let mut paths = own.into_owned();
        match d.schema_for(instance) {
            Some(schema) => paths.extend(schema.own_secret_paths_for(member).iter().map(|p| {
                let mut full = Vec::with_capacity(p.len() + 1);
                full.push(d.field.clone());
                full.extend(p.iter().cloned());
                full
            })),
            None => paths.push(vec![d.field.clone()]),
        }
        Cow::Owned(paths)
    }

    /// Every violation of the schema by `instance`.
    pub fn validate(&self, instance: &Value) -> Result<(), Vec<Violation>> {
        let mut violations = Vec::new();
        if !self.validator.is_valid(instance) {
            for error in self.validator.iter_errors(instance) {
                describe(&self.document, &error, &mut violations);
            }
        }
        if let Some(d) = &self.discriminated {
            d.validate(instance, &mut violations);
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(violations)
        }
    }
}

impl Discriminated {
    /// The schema the instance's discriminator names, if known.
    fn schema_for(&self, instance: &Value) -> Option<&CompiledSchema> {
        let name = instance.get(&self.type_field)?.as_str()?;
        self.types.get(name)
    }

    fn validate(&self, instance: &Value, violations: &mut Vec<Violation>) {
        let Some(member) = instance.get(&self.field) else {
            return; // absent: the root schema says whether it is required
        };
        let pointer = jsonschema::paths::Location::new()
            .join(&self.field)
            .to_string();
        match self.schema_for(instance) {
            Some(schema) => {
                if let Err(inner) = schema.validate(member) {
                    violations.extend(inner.into_iter().map(|v| Violation {
                        pointer: format!("{pointer}{}", v.pointer),
                        ..v
                    }));
                }
            }
            None if self.allow_unknown => {}
            None => {
                // No type at all (a connection update may leave it out: the
                // connection keeps its own): nothing to check against, so
                // the member passes, and the audit trail redacts it whole.
                if instance
                    .get(&self.type_field)
                    .and_then(Value::as_str)
                    .is_none()
                {
                    return;
                }
                violations.push(Violation {
                    pointer: jsonschema::paths::Location::new()
                        .join(&self.type_field)
                        .to_string(),
                    keyword: "connectionType".into(),
                    message: format!(
                        "must name a known connection type, so that {} can be checked",
                        self.field
                    ),
                });
            }
        }
    }
}

/// Collects the paths of fields whose schema is marked secret, `writeOnly:
/// true` (JSON Schema) or `sensitive: true` (Polytomic's connection types),
/// wherever the field sits: under `properties`, inside `items`,
/// `prefixItems`, `additionalProperties` and `patternProperties` (as `"*"`),
/// behind a local `$ref`, and in every branch of `allOf`, `anyOf`, `oneOf`
/// and `if`/`then`/`else`. `refs` holds the references being followed, so a
/// recursive schema ends.
fn collect_secrets(
    root: &Value,
    schema: &Value,
    prefix: &mut Vec<String>,
    refs: &mut Vec<String>,
    out: &mut (&mut Vec<Vec<String>>, &mut bool),
) {
    let Some(object) = schema.as_object() else {
        return;
    };
    let marked = |key: &str| object.get(key) == Some(&Value::Bool(true));
    if !prefix.is_empty() && (marked("writeOnly") || marked("sensitive")) {
        out.0.push(prefix.clone());
        return; // the whole value is secret
    }
    if prefix.len() >= MAX_JSON_DEPTH_LIMIT {
        return; // deeper than any accepted body
    }
    if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
        let target = reference
            .strip_prefix('#')
            .and_then(|pointer| root.pointer(pointer));
        if refs.iter().any(|r| r == reference) {
            *out.1 = true; // recursive: followed once here
        } else if let Some(target) = target {
            refs.push(reference.to_owned());
            collect_secrets(root, target, prefix, refs, out);
            refs.pop();
        }
    }
    for branch in branches(object) {
        collect_secrets(root, branch, prefix, refs, out);
    }
    if let Some(properties) = object.get("properties").and_then(Value::as_object) {
        for (name, subschema) in properties {
            prefix.push(name.clone());
            collect_secrets(root, subschema, prefix, refs, out);
            prefix.pop();
        }
    }
    // Members without a fixed name: any array item, any map value.
    let unnamed = ["items", "additionalProperties"]
        .into_iter()
        .filter_map(|k| object.get(k))
        .chain(
            object
                .get("prefixItems")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        )
        .chain(
            object
                .get("patternProperties")
                .and_then(Value::as_object)
                .into_iter()
                .flat_map(|patterns| patterns.values()),
        );
    for subschema in unnamed {
        prefix.push("*".into());
        collect_secrets(root, subschema, prefix, refs, out);
        prefix.pop();
    }
}

/// The subschemas that apply at the same place as `object` itself: the
/// branches of `allOf`, `anyOf`, `oneOf` and `if`/`then`/`else`.
fn branches(object: &Map<String, Value>) -> impl Iterator<Item = &Value> {
    ["allOf", "anyOf", "oneOf"]
        .into_iter()
        .filter_map(|k| object.get(k).and_then(Value::as_array))
        .flatten()
        .chain(
            ["if", "then", "else"]
                .into_iter()
                .filter_map(|k| object.get(k)),
        )
}

/// Whether a schema marks its value secret.
fn is_secret_schema(schema: &Value) -> bool {
    ["writeOnly", "sensitive"]
        .iter()
        .any(|k| schema.get(k) == Some(&Value::Bool(true)))
}

/// Collects into `out` the schemas that apply at one place: `schema`, and
/// those it pulls in through a local `$ref`, `allOf`, `anyOf`, `oneOf` and
/// `if`/`then`/`else` (each once, so a reference cycle ends).
fn applicable<'s>(root: &'s Value, schema: &'s Value, out: &mut Vec<&'s Value>) {
    let Some(object) = schema.as_object() else {
        return;
    };
    if out.iter().any(|s| std::ptr::eq(*s, schema)) {
        return;
    }
    out.push(schema);
    if let Some(target) = object
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix('#'))
        .and_then(|pointer| root.pointer(pointer))
    {
        applicable(root, target, out);
    }
    for branch in branches(object) {
        applicable(root, branch, out);
    }
}

/// Walks `value` along the schemas that apply to it, collecting the paths
/// of the members a schema marks secret (array items as `"*"`). Unlike
/// [`collect_secrets`], it follows a recursive schema as deep as the value
/// goes. Pattern properties are taken to match every key: redacting too
/// much is safe, too little is not.
fn instance_secrets(
    root: &Value,
    schemas: &[&Value],
    value: &Value,
    prefix: &mut Vec<String>,
    out: &mut Vec<Vec<String>>,
) {
    let mut visit =
        |segment: &str, child: &Value, subschemas: Vec<&Value>, prefix: &mut Vec<String>| {
            prefix.push(segment.to_owned());
            if subschemas.iter().any(|s| is_secret_schema(s)) {
                out.push(prefix.clone());
            } else if !subschemas.is_empty() {
                instance_secrets(root, &subschemas, child, prefix, out);
            }
            prefix.pop();
        };
    match value {
        Value::Object(members) => {
            for (key, child) in members {
                let mut subschemas = Vec::new();
                for schema in schemas {
                    match schema.get("properties").and_then(|p| p.get(key)) {
                        Some(named) => applicable(root, named, &mut subschemas),
                        None => {
                            let patterns = schema
                                .get("patternProperties")
                                .and_then(Value::as_object)
                                .into_iter()
                                .flat_map(|p| p.values());
                            for other in patterns.chain(schema.get("additionalProperties")) {
                                applicable(root, other, &mut subschemas);
                            }
                        }
                    }
                }
                visit(key, child, subschemas, prefix);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let mut subschemas = Vec::new();
                for schema in schemas {
                    let positional = schema
                        .get("prefixItems")
                        .and_then(Value::as_array)
                        .and_then(|p| p.get(i));
                    if let Some(item_schema) = positional.or_else(|| schema.get("items")) {
                        applicable(root, item_schema, &mut subschemas);
                    }
                }
                visit("*", item, subschemas, prefix);
            }
        }
        _ => {}
    }
}

/// Describes a JSON type list from the schema: `"a string or null"`.
fn describe_types(types: Option<&Value>) -> String {
    let name = |t: &str| match t {
        "string" => "a string",
        "number" => "a number",
        "integer" => "an integer",
        "boolean" => "a boolean",
        "object" => "an object",
        "array" => "an array",
        "null" => "null",
        _ => "of another type",
    };
    match types {
        Some(Value::String(t)) => name(t).to_owned(),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .map(name)
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "of another type".to_owned(),
    }
}

fn describe(schema: &Value, error: &jsonschema::ValidationError<'_>, out: &mut Vec<Violation>) {
    use jsonschema::error::ValidationErrorKind as Kind;
    let pointer = error.instance_path().as_str().to_owned();
    let schema_path = error.schema_path().as_str();
    let at_schema = schema.pointer(schema_path);
    let keyword = schema_path
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let mut push = |pointer: String, keyword: &str, message: String| {
        out.push(Violation {
            pointer,
            keyword: keyword.to_owned(),
            message,
        });
    };
    match error.kind() {
        Kind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            push(
                error.instance_path().join(name).to_string(),
                "required",
                "is required".into(),
            );
        }
        Kind::AdditionalProperties { unexpected } => {
            for name in unexpected {
                push(
                    error.instance_path().join(name).to_string(),
                    "additionalProperties",
                    "is not a known field".into(),
                );
            }
        }
        Kind::Type { .. } => push(
            pointer,
            "type",
            format!("must be {}", describe_types(at_schema)),
        ),
        Kind::Format { format } => {
            let what = match format.as_str() {
                "uri" => "a URI".to_owned(),
                "uri-reference" => "a URI reference".to_owned(),
                "hostname" => "a hostname".to_owned(),
                "email" => "an email address".to_owned(),
                "date-time" => "an RFC 3339 date-time".to_owned(),
                "date" => "an RFC 3339 date".to_owned(),
                "uuid" => "a UUID".to_owned(),
                other => format!("in {other} format"),
            };
            push(pointer, "format", format!("must be {what}"));
        }
        Kind::MinLength { limit: 1 } => push(pointer, "minLength", "must not be empty".into()),
        Kind::MinLength { limit } => push(
            pointer,
            "minLength",
            format!("must be at least {limit} characters"),
        ),
        Kind::MaxLength { limit } => push(
            pointer,
            "maxLength",
            format!("must be at most {limit} characters"),
        ),
        Kind::Enum { .. } => push(
            pointer,
            "enum",
            "must be one of the values the schema lists".into(),
        ),
        Kind::Constant { .. } => push(
            pointer,
            "const",
            "must be the value the schema requires".into(),
        ),
        Kind::Pattern { pattern } => push(
            pointer,
            "pattern",
            format!("must match the pattern {pattern}"),
        ),
        Kind::Minimum { limit } => push(pointer, "minimum", format!("must be at least {limit}")),
        Kind::Maximum { limit } => push(pointer, "maximum", format!("must be at most {limit}")),
        _ => push(
            pointer,
            &keyword,
            format!("does not satisfy the schema's {keyword:?} rule"),
        ),
    }
}

/// The parsed body of a validated request, for the audit layer.
#[derive(Debug, Clone)]
pub struct ParsedBody(pub Arc<Value>);

/// Whether `headers` carry exactly one `Content-Type: application/json`
/// (optionally `; charset=utf-8`).
pub fn is_json_content_type(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let mut parts = value.split(';');
    if !parts
        .next()
        .unwrap_or_default()
        .trim()
        .eq_ignore_ascii_case("application/json")
    {
        return false;
    }
    parts.all(|param| match param.trim().split_once('=') {
        Some((name, v)) => {
            name.trim().eq_ignore_ascii_case("charset")
                && v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        }
        None => param.trim().is_empty(),
    })
}

/// Whether a request carries (or may carry) a body.
fn has_body<B: http_body::Body>(req: &Request<B>) -> bool {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) => len > 0,
        None => {
            req.headers().contains_key(header::TRANSFER_ENCODING) || !req.body().is_end_stream()
        }
    }
}

/// Validates write bodies on routes with a schema; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct ValidateLayer {
    limits: JsonLimits,
    digest: BodyDigest,
}

impl ValidateLayer {
    /// A layer validating against the schema of each request's route,
    /// parsing within `limits`.
    pub fn new(limits: JsonLimits) -> Self {
        Self {
            limits,
            digest: BodyDigest::default(),
        }
    }

    /// Digests a refused body as `digest` says for the audit trail (see
    /// [`crate::audit::Audit::body_digest`]); plain SHA-256 by default.
    pub fn with_body_digest(mut self, digest: BodyDigest) -> Self {
        self.digest = digest;
        self
    }
}

impl<S> Layer<S> for ValidateLayer {
    type Service = Validate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Validate {
            inner,
            limits: self.limits,
            digest: self.digest.clone(),
        }
    }
}

/// The service built by [`ValidateLayer`].
#[derive(Debug, Clone)]
pub struct Validate<S> {
    inner: S,
    /// The bounds on each body's parse.
    limits: JsonLimits,
    /// How a refused body is digested for the audit trail.
    digest: BodyDigest,
}

/// Checks a whole body against `schema`, parsing within `limits`; `Ok`
/// holds the parsed document.
pub fn check_body(
    schema: &CompiledSchema,
    bytes: &[u8],
    limits: JsonLimits,
) -> Result<Value, GatewayError> {
    let value = parse_strict(bytes, limits)?;
    schema.validate(&value).map_err(GatewayError::InvalidBody)?;
    Ok(value)
}

impl<S> Service<Request<GatewayBody>> for Validate<S>
where
    S: Service<Request<GatewayBody>, Response = Response<GatewayBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<GatewayBody>;
    type Error = S::Error;
    type Future = ResponseFuture<Either<S::Future, ThenCall<S, S::Future>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<GatewayBody>) -> Self::Future {
        let Some(route) = req.extensions().get::<RouteMatch>() else {
            return ResponseFuture::inner(Either::Left(self.inner.call(req)));
        };
        // An operation that takes no body (a catalog operation without a
        // request body) never forwards one, whatever the method.
        let refuse_body = route.bodyless
            || (route.path_has_schema
                && !matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH));
        if refuse_body && has_body(&req) {
            return ResponseFuture::early(
                GatewayError::BodyNotAllowed(req.method().clone()).to_response(),
            );
        }
        let Some(schema) = route.schema.clone() else {
            return ResponseFuture::inner(Either::Left(self.inner.call(req)));
        };
        if !matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
            return ResponseFuture::inner(Either::Left(self.inner.call(req)));
        };
        if !is_json_content_type(req.headers()) {
            return ResponseFuture::early(GatewayError::UnsupportedMediaType.to_response());
        }
        let inner = take_ready(&mut self.inner);
        let limits = self.limits;
        let digest = self.digest.clone();
        let span =
            RequestTrace::child_of(req.extensions(), "validate", SpanKind::Internal, Vec::new);
        ResponseFuture::inner(Either::Right(ThenCall::new(
            Box::pin(async move {
                let _span = span; // ends when the body is read and checked
                read_and_check(req, schema, limits, &digest).await
            }),
            inner,
        )))
    }
}

/// The bytes of a body the gateway read whole (a validated write body), in
/// the request's extensions: the proxy can send it again on a retry.
#[derive(Debug, Clone)]
pub struct BufferedBody(pub Bytes);

/// Reads the whole body and checks it: the request to forward, or the
/// refusal to answer with.
async fn read_and_check(
    req: Request<GatewayBody>,
    schema: Arc<CompiledSchema>,
    limits: JsonLimits,
    digest: &BodyDigest,
) -> Result<Request<GatewayBody>, Response<GatewayBody>> {
    let (mut parts, body) = req.into_parts();
    let bytes: Bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        // The body limit's own error, or the client went away.
        Err(error) => return Err(body_read_failure(&error)),
    };
    let value = check_body(&schema, &bytes, limits).map_err(|refusal| {
        tracing::debug!(
            key = refusal.key(),
            schema = schema.path(),
            "request body refused"
        );
        // A refused body may hold a secret in a field no redaction rule
        // names (a wrongly typed field), so only its size and digest are
        // kept: keyed, with a fingerprint key, so a guess cannot be checked.
        crate::notes::record(&parts.extensions, |n| {
            n.body = Some(BodyNote::opaque(&bytes, digest))
        });
        refusal.to_response()
    })?;
    let value = Arc::new(value);
    crate::notes::record(&parts.extensions, |n| {
        n.body = Some(BodyNote::Json(value.clone()))
    });
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    parts.extensions.insert(ParsedBody(value));
    parts.extensions.insert(BufferedBody(bytes.clone()));
    Ok(Request::from_parts(parts, full(bytes)))
}

/// The response for a body that could not be read whole: 413 when the
/// body limit stopped it, else 400.
fn body_read_failure(error: &BoxError) -> Response<GatewayBody> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(err) = cause {
        if let Some(refusal @ GatewayError::PayloadTooLarge { .. }) =
            err.downcast_ref::<GatewayError>()
        {
            return refusal.to_response();
        }
        cause = err.source();
    }
    tracing::debug!(%error, "request body could not be read");
    GatewayError::IncompleteBody.to_response()
}

/// Schemas already compiled, by path, so routes sharing one compile it once.
#[derive(Debug, Default)]
pub struct SchemaCache {
    compiled: HashMap<std::path::PathBuf, Arc<CompiledSchema>>,
}

impl SchemaCache {
    /// The compiled schema at `path`, compiling it on first use.
    pub fn get(&mut self, path: &Path) -> Result<Arc<CompiledSchema>, String> {
        if let Some(schema) = self.compiled.get(path) {
            return Ok(schema.clone());
        }
        let schema = Arc::new(CompiledSchema::load(path)?);
        self.compiled.insert(path.to_owned(), schema.clone());
        Ok(schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The strict parse with the default limits.
    fn strict(bytes: &[u8]) -> Result<Value, ParseError> {
        parse_strict(bytes, JsonLimits::DEFAULT)
    }

    /// The 400 `invalid_json` refusal of `bytes`.
    fn invalid(bytes: &[u8]) -> JsonError {
        match strict(bytes) {
            Err(ParseError::Invalid(e)) => e,
            other => panic!("not refused as invalid JSON: {other:?}"),
        }
    }

    #[test]
    fn strict_parsing_keeps_every_value_as_serde_json_reads_it() {
        // Every JSON type, both integer signs and their extremes, floats,
        // escapes and nesting: what is validated and audited is what was sent.
        let doc = br#"{"null":null,"t":true,"f":false,"neg":-7,"min":-9223372036854775808,"pos":7,"max":18446744073709551615,"float":-0.5,"exp":1e3,"s":"a\u00e9\"","arr":[1,-1,[],{}],"obj":{"k":{}}}"#;
        let parsed = strict(doc).unwrap();
        assert_eq!(parsed, serde_json::from_slice::<Value>(doc).unwrap());
        assert_eq!(parsed["neg"], -7);
    }

    #[test]
    fn strict_parsing_refuses_what_serde_json_lets_through() {
        // serde_json keeps the last duplicate silently; the strict parse refuses.
        assert!(serde_json::from_slice::<Value>(br#"{"a":1,"a":2}"#).is_ok());
        let e = invalid(br#"{"a":1,"a":2}"#);
        assert_eq!((e.line, e.reason.as_str()), (1, "duplicate object key"));
        invalid(br#"{"a_b":1,"a\u005fb":2}"#);
        assert!(
            strict(br#"[{"k":1},{"k":2}]"#).is_ok(),
            "same key in sibling objects is fine"
        );
        invalid(b"{} {}");
        invalid(b"");
        invalid(br#""\ud800""#);
        invalid(b"\"\xc3\x28\"");
        let e = invalid(b"{\n  \"a\": 1,,\n  \"b\": 2\n}");
        assert_eq!(e.line, 2);
    }

    /// Arrays nested `n` deep.
    fn arrays(n: usize) -> String {
        format!("{}{}", "[".repeat(n), "]".repeat(n))
    }

    /// Objects nested `n` deep.
    fn objects(n: usize) -> String {
        format!("{}{{}}{}", r#"{"a":"#.repeat(n - 1), "}".repeat(n - 1))
    }

    #[test]
    fn nesting_is_allowed_to_max_depth_and_refused_one_past() {
        let shapes: [fn(usize) -> String; 2] = [arrays, objects];
        for depth in [1, 3, JsonLimits::DEFAULT.max_depth, MAX_JSON_DEPTH_LIMIT] {
            let limits = JsonLimits {
                max_depth: depth,
                ..JsonLimits::DEFAULT
            };
            for nested in shapes {
                let at = nested(depth);
                assert_eq!(
                    parse_strict(at.as_bytes(), limits).unwrap(),
                    serde_json::from_str::<Value>(&at).unwrap(),
                    "{depth} deep, at the limit"
                );
                assert_eq!(
                    parse_strict(nested(depth + 1).as_bytes(), limits),
                    Err(ParseError::TooDeep { limit: depth }),
                    "{depth} deep, one past"
                );
            }
        }
        // A scalar alone is depth 0; the outermost array or object is 1.
        let one = JsonLimits {
            max_depth: 1,
            ..JsonLimits::DEFAULT
        };
        assert!(parse_strict(br#""text""#, one).is_ok());
        assert!(parse_strict(br#"{"a":1,"b":"c"}"#, one).is_ok());
        assert_eq!(
            parse_strict(br#"{"a":[]}"#, one),
            Err(ParseError::TooDeep { limit: 1 })
        );
        // serde_json refuses 128 levels itself: at the largest allowed
        // limit, one past it still reaches this parse's own check.
        assert!(serde_json::from_str::<Value>(&arrays(MAX_JSON_DEPTH_LIMIT + 1)).is_ok());
        assert!(serde_json::from_str::<Value>(&arrays(128)).is_err());
    }

    #[test]
    fn values_are_allowed_to_max_values_and_refused_one_past() {
        let limits = |max_values| JsonLimits {
            max_values,
            ..JsonLimits::DEFAULT
        };
        // Every value counts once, whatever its type and depth; the
        // document itself too; object keys do not.
        let cases: [(&[u8], usize); 6] = [
            (b"0", 1),
            (b"[]", 1),
            (br#"{"key":"value"}"#, 2),
            (br#"[null,true,false,1,-1.5,"s"]"#, 7),
            (br#"{"a":{"b":[1,{"c":null}]},"d":[]}"#, 7),
            (br#"[[],{},[[]],{"k":{}}]"#, 7),
        ];
        for (doc, count) in cases {
            let text = String::from_utf8_lossy(doc);
            assert!(
                parse_strict(doc, limits(count)).is_ok(),
                "{text}: {count} values, at the limit"
            );
            assert_eq!(
                parse_strict(doc, limits(count - 1)).err(),
                Some(ParseError::TooManyValues { limit: count - 1 }),
                "{text}: one value past the limit"
            );
        }
        // The default: 100,000 values pass, 100,001 do not.
        let zeros = |n: usize| format!("[{}]", vec!["0"; n - 1].join(","));
        assert!(strict(zeros(100_000).as_bytes()).is_ok());
        assert_eq!(
            strict(zeros(100_001).as_bytes()),
            Err(ParseError::TooManyValues { limit: 100_000 })
        );
    }

    #[test]
    fn a_limit_stops_the_parse_at_the_first_value_past_it() {
        // Whatever follows the value past a limit is never read: not the
        // broken syntax here, not the rest of a huge body.
        let limits = JsonLimits {
            max_depth: 2,
            max_values: 3,
        };
        assert_eq!(
            parse_strict(b"[1,2,3, this is not JSON", limits),
            Err(ParseError::TooManyValues { limit: 3 })
        );
        assert_eq!(
            parse_strict(b"[[[ this is not JSON", limits),
            Err(ParseError::TooDeep { limit: 2 })
        );
        // Syntax errors before the limit are still reported as such.
        assert!(matches!(
            parse_strict(b"[1,,2,3,4]", limits),
            Err(ParseError::Invalid(_))
        ));
        // The refusals become the documented answers.
        let deep = GatewayError::from(ParseError::TooDeep { limit: 2 });
        assert_eq!((deep.status().as_u16(), deep.key()), (422, "json_too_deep"));
        let many = GatewayError::from(ParseError::TooManyValues { limit: 3 });
        assert_eq!(
            (many.status().as_u16(), many.key()),
            (413, "json_too_many_values")
        );
    }

    #[test]
    fn json_content_types_are_recognised_exactly() {
        let ct = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            is_json_content_type(&h)
        };
        assert!(ct("application/json"));
        assert!(ct("application/json; charset=utf-8"));
        assert!(ct("APPLICATION/JSON;charset=\"UTF-8\""));
        assert!(!ct("application/json; charset=iso-8859-1"));
        assert!(!ct("application/json; boundary=x"));
        assert!(!ct("application/json-patch+json"));
        assert!(!ct("text/json"));
        assert!(!is_json_content_type(&HeaderMap::new()));
    }

    #[test]
    fn violations_describe_the_schema_not_the_value() {
        let schema = CompiledSchema::compile(
            "test",
            serde_json::json!({
                "type": "object",
                "properties": {
                    "secret": {"type": "string", "writeOnly": true},
                    "nested": {"type": "object", "properties": {"key": {"writeOnly": true, "type": "string"}}},
                    "url": {"type": "string", "format": "uri"}
                },
                "additionalProperties": false
            }),
        )
        .unwrap();
        assert_eq!(
            schema.write_only_paths(),
            [
                vec!["nested".to_owned(), "key".to_owned()],
                vec!["secret".to_owned()]
            ]
        );
        let violations = schema
            .validate(&serde_json::json!({"secret": 42, "url": "CANARY value", "a/b~c": "CANARY"}))
            .unwrap_err();
        let text = serde_json::to_string(&violations).unwrap();
        assert!(
            !text.contains("CANARY value") && !text.contains("\"CANARY\""),
            "{text}"
        );
        assert!(text.contains("/a~1b~0c"), "pointers are escaped: {text}");
    }

    /// What the gateway wrote by hand before it used `Location::join`: a
    /// pointer, `/`, then the segment with `~` as `~0` and `/` as `~1`.
    fn hand_joined(pointer: &str, segment: &str) -> String {
        format!(
            "{pointer}/{}",
            segment.replace('~', "~0").replace('/', "~1")
        )
    }

    #[test]
    fn pointer_segments_are_escaped_byte_for_byte_as_before() {
        // Every string of up to four characters over an alphabet holding
        // both escaped characters, the escapes' own digits, a multi-byte
        // character and an ASCII one...
        let alphabet = ["a", "~", "/", "0", "1", "é"];
        let mut segments = vec![String::new()];
        let mut shorter = vec![String::new()];
        for _ in 0..4 {
            shorter = shorter
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            segments.extend(shorter.iter().cloned());
        }
        // ...and longer ones with an escaped character at every position,
        // across the eight-byte words jsonschema scans at a time.
        for len in [7, 8, 9, 15, 16, 17, 33] {
            for at in 0..len {
                for c in ['~', '/'] {
                    let mut s: Vec<char> = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"
                        .chars()
                        .take(len)
                        .collect();
                    s[at] = c;
                    segments.push(s.iter().collect());
                }
            }
        }
        segments.push("ünï/cö~dé~1/~0".to_owned());
        let nested = jsonschema::paths::Location::new()
            .join("a/b~c")
            .join(0usize);
        assert_eq!(nested.as_str(), "/a~1b~0c/0");
        for base in [jsonschema::paths::Location::new(), nested] {
            for segment in &segments {
                assert_eq!(
                    base.join(segment).as_str(),
                    hand_joined(base.as_str(), segment),
                    "{segment:?} after {base:?}"
                );
            }
        }
    }

    #[test]
    fn violation_pointers_escape_every_segment() {
        let schema = CompiledSchema::compile(
            "test",
            serde_json::json!({
                "type": "object",
                "properties": {"o/k~": {
                    "type": "object",
                    "required": ["n~e/w"],
                    "additionalProperties": false,
                    "properties": {"n~e/w": {}}
                }}
            }),
        )
        .unwrap();
        let violations = schema
            .validate(&serde_json::json!({"o/k~": {"x/~y": 1}}))
            .unwrap_err();
        let mut pointers: Vec<_> = violations.iter().map(|v| v.pointer.as_str()).collect();
        pointers.sort_unstable();
        assert_eq!(pointers, ["/o~1k~0/n~0e~1w", "/o~1k~0/x~1~0y"]);

        // The discriminated member and its type field, named with both.
        let types: BTreeMapForTest = [(
            "pg".to_owned(),
            serde_json::json!({"type": "object", "required": ["host"]}),
        )]
        .into_iter()
        .collect();
        let types = Arc::new(SchemaSet::compile("type", &types).unwrap());
        let root = CompiledSchema::compile("root", serde_json::json!({"type": "object"}))
            .unwrap()
            .with_discriminated("con/fig~", "t/y~pe", types, false);
        let missing = root
            .validate(&serde_json::json!({"t/y~pe": "pg", "con/fig~": {}}))
            .unwrap_err();
        assert_eq!(missing[0].pointer, "/con~1fig~0/host");
        let unknown = root
            .validate(&serde_json::json!({"t/y~pe": "nope", "con/fig~": {}}))
            .unwrap_err();
        assert_eq!(unknown[0].pointer, "/t~1y~0pe");
    }

    #[test]
    fn secrets_are_found_wherever_the_schema_puts_them() {
        let schema = CompiledSchema::compile(
            "test",
            serde_json::json!({
                "$defs": {
                    "Call": {"type": "object", "properties": {
                        "headers": {"type": "object", "writeOnly": true},
                        "next": {"$ref": "#/$defs/Call"}
                    }},
                    "Key": {"type": "string", "sensitive": true}
                },
                "type": "object",
                "properties": {
                    "request": {"$ref": "#/$defs/Call"},
                    "items": {"type": "array", "items": {"type": "object", "properties": {"pass": {"writeOnly": true}}}},
                    "maybe": {"anyOf": [{"type": "object", "properties": {"a": {"writeOnly": true}}}, {"type": "null"}]},
                    "both": {"allOf": [{"properties": {"b": {"$ref": "#/$defs/Key"}}}]},
                    "one": {"oneOf": [{"properties": {"c": {"writeOnly": true}}}]},
                    "map": {"type": "object", "additionalProperties": {"properties": {"d": {"writeOnly": true}}}},
                    "tuple": {"prefixItems": [{"writeOnly": true}]},
                    "plain": {"type": "string", "writeOnly": false}
                }
            }),
        )
        .unwrap();
        let paths: Vec<String> = schema
            .write_only_paths()
            .iter()
            .map(|p| p.join("/"))
            .collect();
        assert_eq!(
            paths,
            [
                "both/b",
                "items/*/pass",
                "map/*/d",
                "maybe/a",
                "one/c",
                "request/headers",
                "tuple/*",
            ],
            "a recursive $ref is followed once here, and ends"
        );
        // A body is walked along the schema as deep as it goes.
        let body = serde_json::json!({
            "request": {"headers": {"a": "s"}, "next": {"next": {"headers": {"b": "s"}, "other": 1}}},
            "items": [{"pass": "s"}, {"name": "n"}],
            "unknown": {"headers": "kept"}
        });
        let paths: Vec<String> = schema
            .secret_paths_for(&body)
            .iter()
            .map(|p| p.join("/"))
            .collect();
        assert_eq!(
            paths,
            [
                "items/*/pass",
                "request/headers",
                "request/next/next/headers"
            ]
        );
    }

    #[test]
    fn a_discriminated_member_is_checked_and_redacted_by_its_type() {
        let types: BTreeMapForTest = [(
            "pg".to_owned(),
            serde_json::json!({"type": "object", "required": ["host"], "properties": {
                "host": {"type": "string"},
                "password": {"type": "string", "sensitive": true},
                "tunnels": {"type": "array", "items": {"properties": {"key": {"sensitive": true}}}}
            }}),
        )]
        .into_iter()
        .collect();
        let types = Arc::new(SchemaSet::compile("type", &types).unwrap());
        let root = serde_json::json!({"type": "object", "properties": {
            "type": {"type": ["string", "null"]}, "configuration": {"type": "object"}
        }});
        let strict = CompiledSchema::compile("root", root.clone())
            .unwrap()
            .with_discriminated("configuration", "type", types.clone(), false);
        let body =
            serde_json::json!({"type": "pg", "configuration": {"host": "h", "password": "p"}});
        assert!(strict.validate(&body).is_ok());
        let paths = strict.secret_paths_for(&body);
        assert!(
            paths.contains(&vec!["configuration".into(), "password".into()]),
            "{paths:?}"
        );
        assert!(paths.contains(&vec![
            "configuration".into(),
            "tunnels".into(),
            "*".into(),
            "key".into()
        ]));
        let missing = strict
            .validate(&serde_json::json!({"type": "pg", "configuration": {}}))
            .unwrap_err();
        assert_eq!(missing[0].pointer, "/configuration/host");
        let unknown = serde_json::json!({"type": "nope", "configuration": {"x": 1}});
        let violations = strict.validate(&unknown).unwrap_err();
        assert_eq!(
            (
                violations[0].pointer.as_str(),
                violations[0].keyword.as_str()
            ),
            ("/type", "connectionType")
        );
        // Without a type there is nothing to check against; the member is
        // then a secret as a whole, as it is for an allowed unknown type.
        let untyped = serde_json::json!({"configuration": {"password": "p"}});
        assert!(strict.validate(&untyped).is_ok());
        assert!(strict
            .secret_paths_for(&untyped)
            .contains(&vec!["configuration".into()]));
        let lenient = CompiledSchema::compile("root", root)
            .unwrap()
            .with_discriminated("configuration", "type", types, true);
        assert!(lenient.validate(&unknown).is_ok());
        assert!(lenient
            .secret_paths_for(&unknown)
            .contains(&vec!["configuration".into()]));
        // A string holding JSON: the connection types' own format.
        let json_format = CompiledSchema::compile(
            "json format",
            serde_json::json!({"type": "string", "format": "json"}),
        )
        .unwrap();
        assert!(json_format
            .validate(&serde_json::json!("{\"a\": 1}"))
            .is_ok());
        assert!(json_format.validate(&serde_json::json!("{nope")).is_err());
    }

    type BTreeMapForTest = std::collections::BTreeMap<String, Value>;
}
