//! [`ConfigProblem`]: one problem with the configuration, as every layer
//! reports it when it is built.
//!
//! It lives in the foundation because every layer validates its own config
//! and reports problems the same way; `config` (the assembly) labels them
//! with the file or environment variable they came from
//! (`config::ConfigErrors`) and re-exports this type as
//! `config::ConfigProblem`.

/// One problem with the configuration: the key it concerns and what is wrong.
///
/// Messages never contain secret values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key, e.g. `upstream.url` or `credentials.partner.env`.
    pub key: String,
    /// What is wrong, and what to do about it.
    pub message: String,
}

impl ConfigProblem {
    /// A problem with `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}
