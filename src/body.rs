//! The one body type the gateway's responses use.
//!
//! Upstream responses stream through as they arrive and the gateway's own
//! error bodies are small and complete; boxing both into [`GatewayBody`] lets
//! every layer share one response type without buffering either.

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};

/// A boxed, type-erased error, as used by tower and hyper.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body type of every service in the gateway stack.
pub type GatewayBody = UnsyncBoxBody<Bytes, BoxError>;

/// A complete body from bytes already in memory.
pub fn full(bytes: impl Into<Bytes>) -> GatewayBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Boxes any streaming body into a [`GatewayBody`] without buffering it.
pub fn boxed<B>(body: B) -> GatewayBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// The bytes of a body the gateway read whole (a validated write body), in
/// the request's extensions: the proxy can send it again on a retry.
#[derive(Debug, Clone)]
pub struct BufferedBody(pub Bytes);

/// The client's request body failed (bad chunked framing, a cut
/// connection): the client's fault, so a 400, not an upstream failure.
#[derive(Debug, thiserror::Error)]
#[error("the request body could not be read")]
pub struct ClientBodyError(#[source] pub BoxError);
