//! What the stack learns about a request, for audit records and telemetry.
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

use crate::auth::Principal;
use crate::policy::PolicyDecision;
use crate::routes::RouteMatch;

/// What a write body was, as far as the audit trail may say.
#[derive(Debug, Clone)]
pub enum BodyNote {
    /// The parsed JSON document (redacted when the record is made).
    Json(Arc<Value>),
    /// A body that is not acceptable JSON: its size and SHA-256 only.
    Opaque {
        /// Length in bytes.
        bytes: usize,
        /// Hex SHA-256 of the bytes.
        sha256: String,
    },
}

impl BodyNote {
    /// The size and digest of `bytes`.
    pub fn opaque(bytes: &[u8]) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
        Self::Opaque {
            bytes: bytes.len(),
            sha256: hex(digest.as_ref()),
        }
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

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

    /// A copy of the notes so far.
    pub fn snapshot(&self) -> Notes {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Records into the notes in `extensions`, if there are any.
pub fn record(extensions: &Extensions, change: impl FnOnce(&mut Notes)) {
    if let Some(notes) = extensions.get::<RequestNotes>() {
        notes.update(change);
    }
}
