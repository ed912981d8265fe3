//! Foundation: a JSON Schema compiled once at start-up, the violations it
//! reports, and the secrets it marks.
//!
//! Shared by the routes layer, which attaches a route's schema to its match,
//! and the validate layer, which checks write bodies against it; the audit
//! layer reads the secrets it marks, to redact them. Violations are
//! described from the schema, never from the submitted value.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};

/// The largest `server.max_json_depth`. serde_json refuses nesting of 128
/// levels or more itself (its recursion limit, counted as here), with its
/// own error; a body one level past the configured limit must reach the
/// validate layer's check, so that it is answered `json_too_deep`.
pub const MAX_JSON_DEPTH_LIMIT: usize = 126;

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
    /// The schema document, to describe violations from it and, for a
    /// recursive schema, to walk bodies along it.
    document: Document,
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

/// A schema document as kept after compiling. Most schemas need theirs only
/// to describe a violation (a refused request), so they keep it as compact
/// JSON text, a fraction of the memory of a parsed `Value`: the full catalog
/// holds hundreds of schemas. A recursive schema is walked for every body,
/// so it keeps the parsed document.
enum Document {
    Parsed(Value),
    Text(Box<str>),
}

impl Document {
    fn keep(document: Value, recursive: bool) -> Self {
        if recursive {
            return Self::Parsed(document);
        }
        match serde_json::to_string(&document) {
            Ok(text) => Self::Text(text.into_boxed_str()),
            Err(_) => Self::Parsed(document),
        }
    }

    /// The parsed document (parsed again from its text if need be: it was
    /// made from a `Value`, so it parses).
    fn value(&self) -> Cow<'_, Value> {
        match self {
            Self::Parsed(value) => Cow::Borrowed(value),
            Self::Text(text) => Cow::Owned(serde_json::from_str(text).unwrap_or(Value::Null)),
        }
    }
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
            document: Document::keep(document, recursive),
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
        let document = self.document.value();
        let mut schemas = Vec::new();
        applicable(&document, &document, &mut schemas);
        let mut paths = Vec::new();
        instance_secrets(&document, &schemas, instance, &mut Vec::new(), &mut paths);
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
            let document = self.document.value();
            for error in self.validator.iter_errors(instance) {
                describe(&document, &error, &mut violations);
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
