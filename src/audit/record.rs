//! The audit record: one JSON object per request and stage, one per line.
//! Field names are a public contract.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

pub use crate::notes::outcome;
use crate::notes::{BodyNote, Notes};

/// What the outer layer captured when the request arrived.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// The gateway's own request id (its `x-request-id`).
    pub request_id: String,
    /// The client's own `x-request-id`, when it sent a sane one.
    pub client_request_id: Option<String>,
    /// The trace id, once tracing is on; empty until then.
    pub trace_id: String,
    /// The method.
    pub method: String,
    /// The raw path (never normalized).
    pub path: String,
    /// The query as received. It may hold a secret: records hold it only
    /// redacted, once the route (and so its secret parameters) is known.
    pub raw_query: Option<String>,
    /// The peer address's IP.
    pub client_ip: Option<Arc<str>>,
    /// The `User-Agent` header.
    pub user_agent: Option<String>,
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// The version of the config that decided the request.
    pub config_version: Arc<str>,
    /// When the request arrived, for `duration_ms`.
    pub started: std::time::Instant,
}

/// The caller, as recorded.
#[derive(Debug, Serialize)]
pub struct PrincipalRecord<'a> {
    /// The JWT subject.
    pub sub: &'a str,
    /// The JWT teams.
    pub teams: &'a [String],
}

/// One audit record (see docs/audit.md for every field).
#[allow(missing_docs)] // the fields are the documented record format
#[derive(Debug, Serialize)]
pub struct AuditRecord<'a> {
    pub time: String,
    pub stage: &'static str,
    pub request_id: &'a str,
    pub client_request_id: Option<&'a str>,
    pub trace_id: &'a str,
    pub outcome: &'static str,
    pub operation: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub organization_id: Option<&'a str>,
    pub principal: Option<PrincipalRecord<'a>>,
    pub rule: Option<&'a str>,
    pub policy_mode: Option<&'static str>,
    pub config_version: &'a str,
    pub status: Option<u16>,
    pub upstream_status: Option<u16>,
    pub duration_ms: Option<f64>,
    pub client_ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub idempotency_key: Option<&'a str>,
    pub request_body: Option<Value>,
    pub error_key: Option<&'static str>,
}

/// The record body: redacted JSON, or size and digest (`sha256`, or
/// `hmac_sha256` with a fingerprint key).
pub fn body_value(body: Option<&BodyNote>, redact: impl Fn(&Value) -> Value) -> Option<Value> {
    match body? {
        BodyNote::Json(value) => Some(redact(value)),
        BodyNote::Opaque {
            bytes,
            algorithm,
            digest,
        } => {
            let mut value = serde_json::Map::with_capacity(2);
            value.insert("bytes".into(), (*bytes).into());
            value.insert((*algorithm).into(), digest.as_str().into());
            Some(Value::Object(value))
        }
    }
}

/// Builds one record line (with its trailing newline).
#[allow(clippy::too_many_arguments)]
pub fn line(
    stage: &'static str,
    info: &RequestInfo,
    notes: &Notes,
    status: Option<u16>,
    error_key: Option<&'static str>,
    query: Option<String>,
    request_body: Option<Value>,
    duration: Option<std::time::Duration>,
) -> Vec<u8> {
    let route = notes.route.as_ref();
    let principal = notes.principal.as_ref();
    let record = AuditRecord {
        time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        stage,
        request_id: &info.request_id,
        client_request_id: info.client_request_id.as_deref(),
        trace_id: &info.trace_id,
        outcome: outcome(error_key, notes.decision.as_ref()),
        operation: route.map(|r| &*r.operation),
        method: &info.method,
        path: &info.path,
        query: query.as_deref(),
        organization_id: route.and_then(|r| r.organization_id.as_deref()),
        principal: principal.map(|p| PrincipalRecord {
            sub: p.sub(),
            teams: p.teams(),
        }),
        rule: notes.decision.as_ref().and_then(|d| d.rule.as_deref()),
        policy_mode: notes.decision.as_ref().map(|d| d.mode.as_str()),
        config_version: &info.config_version,
        status,
        upstream_status: notes.upstream_status,
        duration_ms: duration.map(|d| (d.as_secs_f64() * 10_000.0).round() / 10.0),
        client_ip: info.client_ip.as_deref(),
        user_agent: info.user_agent.as_deref(),
        idempotency_key: info.idempotency_key.as_deref(),
        request_body,
        error_key,
    };
    // Sized for a typical record, so it is not regrown while serializing.
    let mut line = Vec::with_capacity(1024);
    if let Err(e) = serde_json::to_writer(&mut line, &record) {
        // Serializing these types cannot fail; keep a trace of the request anyway.
        line = format!("{{\"stage\":\"{stage}\",\"error\":\"record not serializable: {e}\"}}")
            .into_bytes();
    }
    line.push(b'\n');
    line
}

/// A shared [`RequestInfo`], kept in the notes' extensions slot.
pub type SharedInfo = Arc<RequestInfo>;

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/audit.md's `outcome` table names, in each outcome's row, every
    /// error key that the gateway records with that outcome.
    #[test]
    fn the_readme_outcome_table_names_the_key_of_every_refusal() {
        let rows = crate::error::doc_table(
            include_str!("../../docs/audit.md"),
            "# Audit trail",
            "`outcome` | When |",
        );
        let keys = crate::error::one_of_each()
            .iter()
            .map(|e| e.key())
            .chain([crate::audit::CLIENT_DISCONNECTED])
            .collect::<Vec<_>>();
        for key in keys {
            let word = outcome(Some(key), None);
            let row = rows
                .iter()
                .find(|cells| cells[0] == word)
                .unwrap_or_else(|| panic!("no row for outcome {word:?} in {rows:?}"));
            let named = row[1]
                .split(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .any(|token| token == key);
            assert!(named, "the {word:?} row does not name {key:?}: {row:?}");
        }
    }
}
