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

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::Either;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::BodyExt;
use opentelemetry::trace::SpanKind;
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use tower::{Layer, Service};

pub use crate::body::BufferedBody;
use crate::body::{full, BoxError, GatewayBody};
use crate::error::GatewayError;
pub use crate::error::JsonError;
use crate::future::{take_ready, ResponseFuture, ThenCall};
pub use crate::notes::ParsedBody;
use crate::notes::RouteMatch;
use crate::notes::{BodyDigest, BodyNote};
pub use crate::schema::{CompiledSchema, SchemaCache, SchemaSet, Violation, MAX_JSON_DEPTH_LIMIT};
use crate::trace::RequestTrace;

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
    /// `audit::Audit::body_digest`); plain SHA-256 by default.
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
}
