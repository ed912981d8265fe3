//! Secret sources: where a secret is read from (an environment variable or
//! a file), and reading it.
//!
//! The partner key (`credentials`), the HS256 token secret (`auth`) and the
//! audit keys (`audit`) are all read this way. It lives in the foundation so
//! that those layers share it without importing each other.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::problem::ConfigProblem;

/// Where a secret that is not a credential comes from: `{ env = "VAR" }` or
/// `{ file = "path" }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSourceConfig {
    /// An environment variable holding the secret.
    pub env: Option<String>,
    /// A file holding the secret (surrounding whitespace is trimmed).
    pub file: Option<PathBuf>,
}

/// Where a secret is read from: a credential, the HS256 secret, an audit key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// An environment variable, read once.
    Env(String),
    /// A file, re-read when it changes; surrounding whitespace is trimmed.
    File(PathBuf),
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(var) => write!(f, "environment variable {var}"),
            Self::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// Whether `name` is a plausible environment variable name.
fn is_env_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Reads a secret from `source`, trimmed of surrounding whitespace.
///
/// Errors name the source, never the value.
pub fn read_secret(source: &CredentialSource) -> Result<String, String> {
    let secret = match source {
        CredentialSource::Env(var) => std::env::var(var).map_err(|e| match e {
            std::env::VarError::NotPresent => format!("{source} is not set"),
            std::env::VarError::NotUnicode(_) => format!("{source} is not valid UTF-8"),
        })?,
        CredentialSource::File(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {source}: {}", e.kind()))?,
    };
    let trimmed = secret.trim();
    if trimmed.is_empty() {
        return Err(format!("{source} is empty"));
    }
    Ok(if trimmed.len() == secret.len() {
        secret
    } else {
        trimmed.to_owned()
    })
}

impl CredentialSource {
    /// The source named by `env` or `file`; exactly one must be set. `key`
    /// names the table in the problem otherwise.
    pub fn from_parts(
        key: &str,
        env: Option<&String>,
        file: Option<&PathBuf>,
    ) -> Result<Self, ConfigProblem> {
        match (env, file) {
            // Not echoed: a pasted secret must not end up in an error.
            (Some(var), None) if !is_env_var_name(var) => Err(ConfigProblem::new(
                format!("{key}.env"),
                "must be the name of an environment variable ([A-Za-z_][A-Za-z0-9_]*), not the secret itself",
            )),
            (Some(var), None) => Ok(Self::Env(var.clone())),
            (None, Some(path)) => Ok(Self::File(path.clone())),
            (Some(_), Some(_)) => Err(ConfigProblem::new(
                key,
                "set one of `env` and `file`, not both",
            )),
            _ => Err(ConfigProblem::new(
                key,
                "set `env` (a variable name) or `file` (a path) to say where the secret is",
            )),
        }
    }

    /// The dotted key of the field that names this source under `table`.
    pub fn key_under(&self, table: &str) -> String {
        match self {
            Self::Env(_) => format!("{table}.env"),
            Self::File(_) => format!("{table}.file"),
        }
    }
}
