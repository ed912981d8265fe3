//! The `X-Polytomic-Version` header sent upstream.
//!
//! Every request to Polytomic carries a version. With `version_mode =
//! "override"` the configured `version` always replaces whatever the client
//! sent; with `"default"` a client's value is kept when it is one of
//! `allowed_versions` and replaced otherwise. Header values are built once,
//! when the layer is built; a request only compares bytes.

use http::{HeaderName, HeaderValue, Request};
use tower_http::set_header::{MakeHeaderValue, SetRequestHeader, SetRequestHeaderLayer};

use crate::problem::ConfigProblem;
use serde::{Deserialize, Serialize};

/// `[polytomic]`: the `X-Polytomic-Version` header sent upstream.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolytomicConfig {
    /// The version sent upstream (a date, `YYYY-MM-DD`).
    pub version: String,
    /// Whether a client's own version header may be kept.
    pub version_mode: VersionMode,
    /// With `version_mode = "default"`: client versions that are kept as sent.
    pub allowed_versions: Option<Vec<String>>,
}

impl Default for PolytomicConfig {
    fn default() -> Self {
        Self {
            version: "2025-09-18".to_owned(),
            version_mode: VersionMode::Override,
            allowed_versions: None,
        }
    }
}

/// How the gateway treats a client's `X-Polytomic-Version` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionMode {
    /// Always replace the client's value with `version`.
    Override,
    /// Keep the client's value if it is in `allowed_versions`, else set `version`.
    Default,
}

/// The header Polytomic reads the API version from.
pub const X_POLYTOMIC_VERSION: HeaderName = HeaderName::from_static("x-polytomic-version");

/// The validated `[polytomic]` settings.
#[derive(Debug, Clone)]
pub struct VersionPolicy {
    /// Sent when the client's value is absent or not kept.
    version: HeaderValue,
    /// Whether a client's value may be kept.
    mode: VersionMode,
    /// Client values kept as sent, in `default` mode.
    allowed: Vec<HeaderValue>,
}

/// Whether `s` looks like a Polytomic version date, `YYYY-MM-DD`.
fn is_version_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            _ => c.is_ascii_digit(),
        })
}

impl VersionPolicy {
    /// Validates `[polytomic]`.
    pub fn from_config(config: &PolytomicConfig) -> Result<Self, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        if !is_version_date(&config.version) {
            problems.push(ConfigProblem::new(
                "polytomic.version",
                format!("{:?} is not a version date (YYYY-MM-DD)", config.version),
            ));
        }
        let allowed = match (&config.allowed_versions, config.version_mode) {
            (Some(_), VersionMode::Override) => {
                problems.push(ConfigProblem::new(
                    "polytomic.allowed_versions",
                    "is only used with version_mode = \"default\"; remove it or change the mode",
                ));
                Vec::new()
            }
            (Some(list), VersionMode::Default) => {
                for (i, v) in list.iter().enumerate() {
                    if !is_version_date(v) {
                        problems.push(ConfigProblem::new(
                            format!("polytomic.allowed_versions[{i}]"),
                            format!("{v:?} is not a version date (YYYY-MM-DD)"),
                        ));
                    }
                }
                list.clone()
            }
            (None, _) => vec![config.version.clone()],
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        // Dates are ASCII, so these conversions cannot fail.
        let to_header = |s: &str| HeaderValue::from_str(s).expect("validated version date");
        Ok(Self {
            version: to_header(&config.version),
            mode: config.version_mode,
            allowed: allowed.iter().map(|s| to_header(s)).collect(),
        })
    }

    /// The version sent when the client's is not kept.
    pub fn version(&self) -> &HeaderValue {
        &self.version
    }

    /// The version to send upstream for a request with `headers`: the
    /// client's own, when the mode keeps it, else the configured one.
    pub fn value_for<'h>(&'h self, headers: &'h http::HeaderMap) -> &'h HeaderValue {
        if self.mode == VersionMode::Default {
            let mut sent = headers.get_all(&X_POLYTOMIC_VERSION).iter();
            // Exactly one allowed value is kept; none, several or another is replaced.
            if let (Some(value), None) = (sent.next(), sent.next()) {
                if self.allowed.contains(value) {
                    return value;
                }
            }
        }
        if headers.contains_key(&X_POLYTOMIC_VERSION) {
            tracing::debug!("replacing the client's x-polytomic-version");
        }
        &self.version
    }

    /// Sets the upstream version header on `headers`.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        let value = self.value_for(headers).clone();
        headers.insert(X_POLYTOMIC_VERSION, value);
    }
}

/// Sets `X-Polytomic-Version` on every request, per [`VersionPolicy`]:
/// tower-http's header setter, overriding whatever the client sent with
/// the value the policy makes (which, in `default` mode, may be the
/// client's own).
pub type PolytomicVersionLayer = SetRequestHeaderLayer<VersionPolicy>;

/// The service built by [`PolytomicVersionLayer`].
pub type PolytomicVersion<S> = SetRequestHeader<S, VersionPolicy>;

/// The layer applying `policy` (see [`PolytomicVersionLayer`]).
pub fn layer(policy: VersionPolicy) -> PolytomicVersionLayer {
    SetRequestHeaderLayer::overriding(X_POLYTOMIC_VERSION, policy)
}

impl<B> MakeHeaderValue<Request<B>> for VersionPolicy {
    fn make_header_value(&mut self, req: &Request<B>) -> Option<HeaderValue> {
        Some(self.value_for(req.headers()).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: VersionMode, allowed: Option<Vec<&str>>) -> VersionPolicy {
        VersionPolicy::from_config(&PolytomicConfig {
            version: "2025-09-18".into(),
            version_mode: mode,
            allowed_versions: allowed.map(|v| v.into_iter().map(String::from).collect()),
        })
        .unwrap()
    }

    fn apply(policy: &VersionPolicy, sent: &[&str]) -> Vec<String> {
        let mut headers = http::HeaderMap::new();
        for v in sent {
            headers.append(X_POLYTOMIC_VERSION, HeaderValue::from_str(v).unwrap());
        }
        policy.apply(&mut headers);
        headers
            .get_all(X_POLYTOMIC_VERSION)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn override_always_replaces() {
        let p = policy(VersionMode::Override, None);
        assert_eq!(apply(&p, &[]), ["2025-09-18"]);
        assert_eq!(apply(&p, &["2024-02-08"]), ["2025-09-18"]);
    }

    #[test]
    fn default_keeps_only_a_single_allowed_value() {
        let p = policy(VersionMode::Default, Some(vec!["2024-02-08", "2025-09-18"]));
        assert_eq!(apply(&p, &[]), ["2025-09-18"]);
        assert_eq!(apply(&p, &["2024-02-08"]), ["2024-02-08"]);
        assert_eq!(apply(&p, &["2023-01-01"]), ["2025-09-18"]);
        assert_eq!(apply(&p, &["2024-02-08", "2025-09-18"]), ["2025-09-18"]);
    }

    #[test]
    fn bad_versions_and_contradictions_are_config_problems() {
        let problems = VersionPolicy::from_config(&PolytomicConfig {
            version: "latest".into(),
            version_mode: VersionMode::Override,
            allowed_versions: Some(vec!["2024-02-08".into()]),
        })
        .unwrap_err();
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["polytomic.version", "polytomic.allowed_versions"]);
    }
}
