//! Redaction: no secret reaches the audit trail.
//!
//! A value is replaced by `"[REDACTED]"` when its key is marked
//! `"writeOnly": true` in the route's schema, or when its key is one of
//! `audit.redact_fields`, at any depth and case-insensitively. Redaction works
//! on the parsed value, so escaped key spellings are caught too. With a
//! fingerprint key the replacement is `"[REDACTED hmac:<12 hex>]"`, so an
//! auditor can see that a secret changed without seeing it.

use serde_json::{Map, Value};

use crate::notes::hex;

/// The default `audit.redact_fields`.
pub const DEFAULT_REDACT_FIELDS: [&str; 8] = [
    "client_secret",
    "password",
    "secret",
    "token",
    "api_key",
    "partner_key",
    "private_key",
    "authorization",
];

/// What to redact, prepared once.
pub struct Redactor {
    /// Lower-cased field names redacted anywhere.
    fields: Vec<String>,
    /// HMAC-SHA256 key for fingerprints, if configured.
    fingerprint: Option<aws_lc_rs::hmac::Key>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("fields", &self.fields)
            .field("fingerprint", &self.fingerprint.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Redactor {
    /// Redacts `fields` (any case), fingerprinting with `fingerprint_key`.
    pub fn new(fields: &[String], fingerprint_key: Option<&[u8]>) -> Self {
        Self {
            fields: fields.iter().map(|f| f.to_ascii_lowercase()).collect(),
            fingerprint: fingerprint_key
                .map(|key| aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key)),
        }
    }

    fn is_redacted_field(&self, key: &str) -> bool {
        self.fields.iter().any(|f| f.eq_ignore_ascii_case(key))
    }

    /// The replacement for a redacted value.
    pub fn replacement(&self, value: &Value) -> Value {
        match &self.fingerprint {
            None => Value::String("[REDACTED]".into()),
            Some(key) => {
                let tag = aws_lc_rs::hmac::sign(key, value.to_string().as_bytes());
                let hex = hex(tag.as_ref());
                Value::String(format!("[REDACTED hmac:{}]", &hex[..12]))
            }
        }
    }

    /// A copy of `value` with every secret replaced. `write_only` holds the
    /// schema's `writeOnly` property paths.
    pub fn redact_json(&self, value: &Value, write_only: &[Vec<String>]) -> Value {
        self.redact_at(value, write_only, &mut Vec::new())
    }

    fn redact_at<'v>(
        &self,
        value: &'v Value,
        write_only: &[Vec<String>],
        path: &mut Vec<&'v str>,
    ) -> Value {
        match value {
            Value::Object(object) => {
                let mut out = Map::with_capacity(object.len());
                for (key, child) in object {
                    path.push(key);
                    let secret = self.is_redacted_field(key)
                        || write_only
                            .iter()
                            .any(|p| p.iter().map(String::as_str).eq(path.iter().copied()));
                    let redacted = if secret {
                        self.replacement(child)
                    } else {
                        self.redact_at(child, write_only, path)
                    };
                    path.pop();
                    out.insert(key.clone(), redacted);
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|item| self.redact_at(item, write_only, path))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// A query string with the values of redacted parameters replaced.
    pub fn redact_query(&self, query: &str) -> String {
        let mut out = url::form_urlencoded::Serializer::new(String::new());
        // Some servers also split pairs at `;`: split there too, so a secret
        // after one (`?a=1;token=x`) is not recorded as part of a value.
        let pairs = query.replace(';', "&");
        for (name, value) in url::form_urlencoded::parse(pairs.as_bytes()) {
            if self.is_redacted_field(&name) {
                out.append_pair(&name, "[REDACTED]");
            } else {
                out.append_pair(&name, &value);
            }
        }
        out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn defaults() -> Vec<String> {
        DEFAULT_REDACT_FIELDS
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn fields_are_redacted_at_any_depth_and_any_case() {
        let r = Redactor::new(&defaults(), None);
        let body = json!({
            "name": "Acme",
            "Client_Secret": "s1",
            "nested": {"deeper": [{"PASSWORD": "s2"}, {"ok": 1}]},
            "issuer": "https://idp"
        });
        let out = r.redact_json(&body, &[]);
        assert_eq!(
            out,
            json!({
                "name": "Acme",
                "Client_Secret": "[REDACTED]",
                "nested": {"deeper": [{"PASSWORD": "[REDACTED]"}, {"ok": 1}]},
                "issuer": "https://idp"
            })
        );
    }

    #[test]
    fn write_only_paths_are_redacted_even_when_not_listed() {
        let r = Redactor::new(&[], None);
        let out = r.redact_json(
            &json!({"sso": {"key": "s"}, "key": "visible"}),
            &[vec!["sso".into(), "key".into()]],
        );
        assert_eq!(out, json!({"sso": {"key": "[REDACTED]"}, "key": "visible"}));
    }

    #[test]
    fn fingerprints_show_change_without_the_value() {
        let r = Redactor::new(&defaults(), Some(b"audit-hmac-key"));
        let a = r.redact_json(&json!({"token": "one"}), &[]);
        let b = r.redact_json(&json!({"token": "one"}), &[]);
        let c = r.redact_json(&json!({"token": "two"}), &[]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let text = a["token"].as_str().unwrap();
        assert!(
            text.starts_with("[REDACTED hmac:") && text.len() == "[REDACTED hmac:]".len() + 12,
            "{text}"
        );
        assert!(!text.contains("one"));
    }

    #[test]
    fn query_parameters_are_redacted_by_name() {
        let r = Redactor::new(&defaults(), None);
        assert_eq!(
            r.redact_query("a=1&Token=abc&api%5Fkey=k&b=x+y"),
            "a=1&Token=%5BREDACTED%5D&api_key=%5BREDACTED%5D&b=x+y"
        );
    }

    #[test]
    fn a_secret_after_a_semicolon_in_a_query_is_redacted() {
        let r = Redactor::new(&defaults(), None);
        let out = r.redact_query("a=1;token=abc123&b=2");
        assert!(!out.contains("abc123"), "{out}");
        assert!(
            out.contains("token=%5BREDACTED%5D") && out.contains("b=2"),
            "{out}"
        );
    }
}
