//! Redaction: no secret reaches the audit trail.
//!
//! A value is replaced by `"[REDACTED]"` when the route's schema marks its
//! field secret (`"writeOnly": true`, or `"sensitive": true` in a connection
//! type's schema), wherever the schema puts it (see
//! [`crate::schema::CompiledSchema::secret_paths_for`]), or when its key
//! matches one of `audit.redact_fields` at any depth. A key matches a name
//! when, ignoring case, `_` and `-`, it ends with it: `token` also catches
//! `access_token` and `oauthRefreshToken`, `api_key` catches `apikey` and
//! `tracking_api_key`. The schema is the first net, the names the second.
//! Redaction works on the parsed value, so escaped key spellings are caught
//! too. With a
//! fingerprint key the replacement is `"[REDACTED hmac:<12 hex>]"`, so an
//! auditor can see that a secret changed without seeing it.

use serde_json::{Map, Value};

use crate::notes::hex;

/// The default `audit.redact_fields`.
pub const DEFAULT_REDACT_FIELDS: [&str; 10] = [
    "client_secret",
    "password",
    "secret",
    "token",
    "api_key",
    "partner_key",
    "private_key",
    "authorization",
    "secret_access_key",
    "passphrase",
];

/// What to redact, prepared once.
pub struct Redactor {
    /// Field names redacted anywhere, lower-cased and without `_` or `-`.
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
            fields: fields.iter().map(|f| normalized(f)).collect(),
            fingerprint: fingerprint_key
                .map(|key| aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key)),
        }
    }

    fn is_redacted_field(&self, key: &str) -> bool {
        self.fields.iter().any(|f| ends_with_name(key, f))
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
    /// paths of the fields the schema marks secret; a `"*"` segment matches
    /// any key or array item.
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
                    let secret = self.is_redacted_field(key) || matches_any(write_only, path);
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
            Value::Array(items) => {
                path.push("*");
                let out = if matches_any(write_only, path) {
                    items.iter().map(|item| self.replacement(item)).collect()
                } else {
                    items
                        .iter()
                        .map(|item| self.redact_at(item, write_only, path))
                        .collect()
                };
                path.pop();
                Value::Array(out)
            }
            other => other.clone(),
        }
    }

    /// A query string with the values of redacted parameters replaced:
    /// those matching `audit.redact_fields`, and those named in `secret`
    /// (the parameters some route marks secret, matched exactly).
    pub fn redact_query(&self, query: &str, secret: &[Box<str>]) -> String {
        let mut out = url::form_urlencoded::Serializer::new(String::new());
        // Some servers also split pairs at `;`: split there too, so a secret
        // after one (`?a=1;token=x`) is not recorded as part of a value.
        let pairs = query.replace(';', "&");
        for (name, value) in url::form_urlencoded::parse(pairs.as_bytes()) {
            if self.is_redacted_field(&name) || secret.iter().any(|s| **s == *name) {
                out.append_pair(&name, "[REDACTED]");
            } else {
                out.append_pair(&name, &value);
            }
        }
        out.finish()
    }
}

/// `name` lower-cased, without `_` and `-`.
fn normalized(name: &str) -> String {
    name.chars()
        .filter(|c| !matches!(c, '_' | '-'))
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Whether `key`, lower-cased and without `_` and `-`, ends with `name`
/// (already normalized). Compares from the end, allocating nothing.
fn ends_with_name(key: &str, name: &str) -> bool {
    let mut key = key
        .bytes()
        .rev()
        .filter(|b| !matches!(b, b'_' | b'-'))
        .map(|b| b.to_ascii_lowercase());
    !name.is_empty() && name.bytes().rev().all(|n| key.next() == Some(n))
}

/// Whether `path` is one of `patterns`, where a `"*"` pattern segment
/// matches any segment.
fn matches_any(patterns: &[Vec<String>], path: &[&str]) -> bool {
    patterns
        .iter()
        .any(|p| p.len() == path.len() && p.iter().zip(path).all(|(p, s)| p == "*" || p == s))
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
            r.redact_query("a=1&Token=abc&api%5Fkey=k&b=x+y", &[]),
            "a=1&Token=%5BREDACTED%5D&api_key=%5BREDACTED%5D&b=x+y"
        );
    }

    #[test]
    fn a_secret_after_a_semicolon_in_a_query_is_redacted() {
        let r = Redactor::new(&defaults(), None);
        let out = r.redact_query("a=1;token=abc123&b=2", &[]);
        assert!(!out.contains("abc123"), "{out}");
        assert!(
            out.contains("token=%5BREDACTED%5D") && out.contains("b=2"),
            "{out}"
        );
    }

    #[test]
    fn compound_spellings_of_listed_names_are_redacted() {
        let r = Redactor::new(&defaults(), None);
        let body = json!({
            "access_token": "s", "refreshToken": "s", "id_token": "s", "apikey": "s",
            "api-token": "s", "aws_secret_access_key": "s", "oauth_refresh_token": "s",
            "encryption_passphrase": "s", "ssh_private_key": "s", "tracking_api_key": "s",
            "client_id": "kept", "token_endpoint": "kept", "public_key": "kept", "name": "kept"
        });
        let out = r.redact_json(&body, &[]);
        for (key, value) in out.as_object().unwrap() {
            let expected = if body[key] == "kept" {
                "kept"
            } else {
                "[REDACTED]"
            };
            assert_eq!(value, expected, "{key}");
        }
        assert_eq!(
            r.redact_query("page=2&access_token=s&apiKey=s", &[]),
            "page=2&access_token=%5BREDACTED%5D&apiKey=%5BREDACTED%5D"
        );
    }

    #[test]
    fn schema_paths_with_wildcards_reach_array_items_and_map_values() {
        let r = Redactor::new(&[], None);
        let paths = [
            vec!["fields".to_owned(), "*".to_owned(), "pass".to_owned()],
            vec!["headers".to_owned(), "*".to_owned()],
            vec!["list".to_owned(), "*".to_owned()],
        ];
        let out = r.redact_json(
            &json!({
                "fields": [{"pass": "s", "name": "a"}, {"name": "b"}],
                "headers": {"X-Api": "s", "Other": "s"},
                "list": ["s", "s"],
                "pass": "kept at the root"
            }),
            &paths,
        );
        assert_eq!(
            out,
            json!({
                "fields": [{"pass": "[REDACTED]", "name": "a"}, {"name": "b"}],
                "headers": {"X-Api": "[REDACTED]", "Other": "[REDACTED]"},
                "list": ["[REDACTED]", "[REDACTED]"],
                "pass": "kept at the root"
            })
        );
    }

    #[test]
    fn an_operations_secret_query_parameters_are_redacted_exactly() {
        let r = Redactor::new(&defaults(), None);
        let secret: [Box<str>; 1] = ["query".into()];
        assert_eq!(
            r.redact_query("query=select+*+from+t&querystring=x", &secret),
            "query=%5BREDACTED%5D&querystring=x"
        );
        assert_eq!(r.redact_query("query=select", &[]), "query=select");
    }
}
