//! What the stack learns about a request, for audit records and telemetry,
//! and the request facts the layers share.
//!
//! Foundation: a layer that needs what another learned (the principal auth
//! verified, the route routing matched, the policy's decision, the parsed
//! body) reads one of these types from the request extensions, never by
//! importing the layer that put it there.
//!
//! The outermost observing layer (telemetry, else audit) puts a
//! [`RequestNotes`] in the request extensions. Each layer that learns something records it there: the
//! principal (auth), the route (routing), the decision (policy), the body
//! (validation), the upstream status (proxy). The notes outlive the request,
//! so they are complete even when a layer refuses it and nothing further
//! runs. Without notes in the extensions (a stack without telemetry or audit)
//! recording is a no-op.

use std::sync::{Arc, Mutex};

use http::Extensions;
use serde_json::Value;

use serde::{Deserialize, Serialize};

use crate::schema::CompiledSchema;

/// What a write body was, as far as the audit trail may say.
#[derive(Debug, Clone)]
pub enum BodyNote {
    /// The parsed JSON document (redacted when the record is made).
    Json(Arc<Value>),
    /// A body that is not acceptable JSON: its size and digest only.
    Opaque {
        /// Length in bytes.
        bytes: usize,
        /// How `digest` was made: the record's field name for it.
        algorithm: &'static str,
        /// Hex digest of the bytes.
        digest: String,
    },
}

impl BodyNote {
    /// The size and digest of `bytes`, made as `how` says.
    pub fn opaque(bytes: &[u8], how: &BodyDigest) -> Self {
        let (algorithm, digest) = match how {
            BodyDigest::Sha256 => (
                "sha256",
                hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref()),
            ),
            BodyDigest::HmacSha256(key) => (
                "hmac_sha256",
                hex(aws_lc_rs::hmac::sign(key, bytes).as_ref()),
            ),
        };
        Self::Opaque {
            bytes: bytes.len(),
            algorithm,
            digest,
        }
    }
}

/// How the digest of a refused body is made for the audit trail.
///
/// A plain SHA-256 of a short body lets anyone who can read the trail
/// confirm a guess at it (a weak password sent in a malformed body, say), so
/// with `audit.fingerprint_key` set it is an HMAC-SHA256 under that key, as
/// the fingerprints of redacted values are.
#[derive(Clone, Default)]
pub enum BodyDigest {
    /// SHA-256: no `audit.fingerprint_key` is configured.
    #[default]
    Sha256,
    /// HMAC-SHA256 under `audit.fingerprint_key`.
    HmacSha256(Arc<aws_lc_rs::hmac::Key>),
}

impl BodyDigest {
    /// Keyed when there is a `key`.
    pub fn new(key: Option<&[u8]>) -> Self {
        match key {
            None => Self::Sha256,
            Some(key) => Self::HmacSha256(Arc::new(aws_lc_rs::hmac::Key::new(
                aws_lc_rs::hmac::HMAC_SHA256,
                key,
            ))),
        }
    }
}

impl std::fmt::Debug for BodyDigest {
    /// Never shows the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Sha256 => "Sha256",
            Self::HmacSha256(_) => "HmacSha256(***)",
        })
    }
}

/// A client's own `x-request-id`, when it is a sane one: the gateway always
/// assigns its own id (the audit record's `request_id`, the response's
/// `x-request-id`), so a client cannot choose or collide with it; the
/// client's is recorded beside it as `client_request_id` and passed on
/// upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRequestId(http::HeaderValue);

impl ClientRequestId {
    /// The longest id kept.
    pub const MAX_LEN: usize = 128;

    /// The id in `value`, if it is 1 to [`Self::MAX_LEN`] characters from
    /// ASCII letters, digits and `-_.:/+=@` (UUIDs, ULIDs, base64 and
    /// the usual tracing ids); anything else is dropped.
    pub fn from_header(value: &http::HeaderValue) -> Option<Self> {
        let bytes = value.as_bytes();
        let sane = !bytes.is_empty()
            && bytes.len() <= Self::MAX_LEN
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(b));
        sane.then(|| Self(value.clone()))
    }

    /// The id as a header value.
    pub fn header_value(&self) -> &http::HeaderValue {
        &self.0
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Checked to be ASCII in `from_header`.
        self.0.to_str().unwrap_or_default()
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    // By table: the audit chain hashes every record, and a `format!` per
    // byte was most of what the chain cost (bench/chain.md).
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Who is calling: the token's subject and teams. Cheap to clone.
#[derive(Clone, PartialEq, Eq)]
pub struct Principal(Arc<PrincipalData>);

#[derive(PartialEq, Eq)]
struct PrincipalData {
    sub: String,
    teams: Vec<String>,
}

impl Principal {
    /// A principal with this subject and these teams.
    pub fn new(sub: impl Into<String>, teams: Vec<String>) -> Self {
        Self(Arc::new(PrincipalData {
            sub: sub.into(),
            teams,
        }))
    }

    /// The subject (`auth.subject_claim`).
    pub fn sub(&self) -> &str {
        &self.0.sub
    }

    /// The teams (`auth.team_claim`); empty when the claim is absent.
    pub fn teams(&self) -> &[String] {
        &self.0.teams
    }
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("sub", &self.0.sub)
            .field("teams", &self.0.teams)
            .finish()
    }
}

/// Whether `s` is a UUID in its canonical hyphenated form (either case).
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Where a route comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteSource {
    /// A `[[routes]]` entry of the config file.
    Routes,
    /// The generated catalog of the Polytomic API (`[catalog]`).
    Catalog,
}

impl RouteSource {
    /// `[[routes]]` or `catalog`, as `routes` and `policy explain` print it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Routes => "[[routes]]",
            Self::Catalog => "catalog",
        }
    }
}

/// A matched route, stored in the request extensions.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    /// The route's operation name.
    pub operation: Arc<str>,
    /// The route's path template (the `http.route` of traces).
    pub template: Arc<str>,
    /// Where the route comes from.
    pub source: RouteSource,
    /// The first organization the path or query names, lowercased (the
    /// `organization_id` of audit records and traces).
    pub organization_id: Option<Arc<str>>,
    /// Every organization the path and query name, lowercased.
    pub organization_ids: Vec<Arc<str>>,
    /// Top-level body fields that name organizations; the policy checks
    /// them once the body is read.
    pub body_organization_fields: Arc<[Box<str>]>,
    /// The credential name injected upstream (`None`: the default one).
    pub credential: Option<Arc<str>>,
    /// The schema write bodies must satisfy, if the route names one.
    pub schema: Option<Arc<CompiledSchema>>,
    /// Whether any route on this path template has a schema (or comes from
    /// the catalog): bodies on other methods here are refused rather than
    /// forwarded unvalidated.
    pub path_has_schema: bool,
    /// The operation takes no body: any body is refused.
    pub bodyless: bool,
    /// Request headers whose values are secret (lower case; a trailing `*`
    /// matches any suffix).
    pub secret_headers: Arc<[Box<str>]>,
}

/// Whether denials are enforced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    /// Denied requests get 403.
    #[default]
    Enforce,
    /// Denied requests are logged and forwarded.
    Shadow,
}

impl PolicyMode {
    /// `enforce` or `shadow`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Shadow => "shadow",
        }
    }
}

/// The decision for one request, stored in its extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDecision {
    /// Whether a rule allows the request.
    pub allowed: bool,
    /// The rule that allowed it.
    pub rule: Option<Arc<str>>,
    /// The mode in force; in shadow mode a denied request is forwarded.
    pub mode: PolicyMode,
}

impl PolicyDecision {
    /// `allow`, `deny` or `shadow_deny`: the decision as metrics and traces
    /// name it.
    pub fn word(&self) -> &'static str {
        match (self.allowed, self.mode) {
            (true, _) => "allow",
            (false, PolicyMode::Enforce) => "deny",
            (false, PolicyMode::Shadow) => "shadow_deny",
        }
    }
}

/// The parsed body of a validated request, for the audit layer.
#[derive(Debug, Clone)]
pub struct ParsedBody(pub Arc<Value>);

/// The `outcome` of a request from the gateway's error key (if it refused
/// the request itself) and the policy decision.
pub fn outcome(error_key: Option<&str>, decision: Option<&PolicyDecision>) -> &'static str {
    match error_key {
        None if decision.is_some_and(|d| !d.allowed) => "shadow_denied",
        None => "allowed",
        Some("unauthenticated") => "unauthenticated",
        Some("client_disconnected") => "cancelled",
        Some("internal") => "error",
        Some("forbidden") => "denied",
        Some("no_route" | "method_not_allowed") => "no_route",
        Some(
            "invalid_path"
            | "method_override"
            | "invalid_json"
            | "invalid_body"
            | "json_too_deep"
            | "json_too_many_values"
            | "unsupported_media_type"
            | "body_not_allowed"
            | "payload_too_large"
            | "incomplete_body"
            | "headers_too_large"
            | "uri_too_long",
        ) => "invalid",
        Some(
            "upstream_unreachable" | "upstream_failed" | "upstream_timeout" | "request_timeout",
        ) => "upstream_error",
        // draining, overloaded, not_ready, audit_unavailable, internal_error
        Some(_) => "unavailable",
    }
}

/// The `error_key` of a request whose client went away before the response.
pub const CLIENT_DISCONNECTED: &str = "client_disconnected";

/// The `operation` label and log field of a request that matched no route.
pub const NO_OPERATION: &str = "_none";

/// The `rule` label and trace attribute of a decision no rule made (the default deny).
pub const NO_RULE: &str = "_default";

/// The facts recorded about one request.
#[derive(Debug, Default, Clone)]
pub struct Notes {
    /// Who called, once authenticated.
    pub principal: Option<Principal>,
    /// Which operation, once routed.
    pub route: Option<RouteMatch>,
    /// What the policy decided.
    pub decision: Option<PolicyDecision>,
    /// The write body, when a schema route read it.
    pub body: Option<BodyNote>,
    /// The status Polytomic answered with.
    pub upstream_status: Option<u16>,
    /// How long Polytomic took to answer (to its response headers).
    pub upstream_duration: Option<std::time::Duration>,
}

/// A shared, cheap-to-clone slot for [`Notes`].
#[derive(Debug, Clone, Default)]
pub struct RequestNotes(Arc<Mutex<Notes>>);

impl RequestNotes {
    /// Changes the notes.
    pub fn update(&self, change: impl FnOnce(&mut Notes)) {
        change(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The notes in `extensions`, inserting empty ones if there are none:
    /// whichever observing layer runs first makes them.
    pub fn get_or_insert(extensions: &mut Extensions) -> Self {
        extensions.get_or_insert_default::<Self>().clone()
    }

    /// Reads the notes so far, without copying them.
    pub fn read<R>(&self, read: impl FnOnce(&Notes) -> R) -> R {
        read(&self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Records into the notes in `extensions`, if there are any.
pub fn record(extensions: &Extensions, change: impl FnOnce(&mut Notes)) {
    if let Some(notes) = extensions.get::<RequestNotes>() {
        notes.update(change);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn only_sane_client_request_ids_are_kept() {
        let kept = |text: &str| {
            ClientRequestId::from_header(&http::HeaderValue::from_str(text).unwrap())
                .map(|id| id.as_str().to_owned())
        };
        for good in [
            "caller-req-42",
            "01J9ZQ3V5K8X2M4N6P7R9S0T1U",
            "0af7651916cd43dd8448eb211c80319c",
            "dGVzdA==",
            "svc:orders/retry@2",
            &"x".repeat(ClientRequestId::MAX_LEN),
        ] {
            assert_eq!(kept(good).as_deref(), Some(good));
        }
        for bad in [
            "",
            "a b",
            "a\"b",
            "{\"forged\":1}",
            "line\tbreak",
            &"x".repeat(ClientRequestId::MAX_LEN + 1),
        ] {
            assert_eq!(kept(bad), None, "{bad:?}");
        }
    }
}
