//! The one place the gateway's tower stack is assembled.
//!
//! Order matters; each layer's comment says why it sits where it does. The
//! request flows top to bottom, the response bottom to top.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use tokio::sync::Semaphore;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{Service, ServiceBuilder};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

use crate::audit::{AuditLayer, AuditRequestLayer};
use crate::auth::JwtAuthLayer;
use crate::body::{BoxError, GatewayBody};
use crate::credentials::CredentialSwapLayer;
use crate::error::RescueLayer;
use crate::health::{HealthLayer, Readiness, HEALTHZ, READYZ};
use crate::limit::{BodyLimitLayer, HeadLimitLayer, HeadLimits, HeadSize};
use crate::metrics::{Metrics, MetricsLayer};
use crate::notes::ClientRequestId;
use crate::policy::{PolicyBodyLayer, PolicyLayer};
use crate::proxy::{Proxy, Upstream};
use crate::reload::Generation;
use crate::routes::{RouteLayer, SelectCredential};
use crate::telemetry::TelemetryLayer;
use crate::validate::{JsonLimits, ValidateLayer};

/// The built parts a stack is assembled from: what lasts as long as the
/// process, and the [`Generation`] of the config in force.
#[derive(Debug, Clone)]
pub struct StackParts {
    /// `server.max_body_bytes`.
    pub max_body_bytes: u64,
    /// `server.max_json_depth` and `server.max_json_values`.
    pub json_limits: JsonLimits,
    /// `server.request_timeout`.
    pub request_timeout: std::time::Duration,
    /// `server.max_uri_bytes`, `server.max_header_bytes`, `server.max_headers`.
    pub head_limits: HeadLimits,
    /// `server.max_inflight` permits, shared by every stack built from these
    /// parts: by each worker's, and by those of later config generations.
    pub inflight: Arc<Semaphore>,
    /// What `/readyz` reports; also refuses work while draining.
    pub readiness: Readiness,
    /// Request metrics, and `/metrics`.
    pub metrics: Metrics,
    /// Where requests go. A clone shares its connection pool: each worker
    /// has its own, kept across reloads.
    pub upstream: Upstream,
    /// What a reload replaces: auth, routes, policy, credentials, the
    /// version policy and the audit trail's settings.
    pub config: Arc<Generation>,
}

impl StackParts {
    /// These parts with another upstream pool and config generation: a
    /// worker's stack for one generation.
    pub fn with(&self, upstream: Upstream, config: Arc<Generation>) -> Self {
        Self {
            max_body_bytes: self.max_body_bytes,
            json_limits: self.json_limits,
            request_timeout: self.request_timeout,
            head_limits: self.head_limits,
            inflight: self.inflight.clone(),
            readiness: self.readiness.clone(),
            metrics: self.metrics.clone(),
            upstream,
            config,
        }
    }
}

/// Builds the whole gateway as one infallible, cloneable service.
pub fn build<B>(
    parts: StackParts,
) -> impl Service<
    Request<B>,
    Response = Response<GatewayBody>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Response<GatewayBody>, Infallible>>
                 + Send
                 + 'static,
> + Clone
       + Send
       + 'static
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let config = &*parts.config;
    ServiceBuilder::new()
        // First of all, before any layer reads or sets a header: hop-by-hop
        // headers, and every header the client names in `Connection`, go.
        // Done later, a client could name a header the gateway injects
        // (`Connection: authorization`) and have it stripped after injection.
        .map_request(|mut req: Request<B>| {
            // The head limits count what the client sent, not what is left
            // after this step or what the gateway adds (its request id).
            let size = HeadSize::of(req.headers());
            req.extensions_mut().insert(size);
            crate::proxy::remove_hop_by_hop(req.headers_mut());
            take_client_request_id(&mut req);
            req
        })
        // Every request gets the gateway's own id (a new UUID; the client's
        // `x-request-id` was moved aside just above) before anything can
        // refuse it, so refusals carry one too.
        .layer(SetRequestIdLayer::x_request_id(MakeRandomUuid))
        // Copies the id onto every response. It wraps Rescue so that the JSON
        // errors Rescue makes get the header as well.
        .layer(PropagateRequestIdLayer::x_request_id())
        // The server span encloses everything below, so every child span and
        // log line belongs to it; it needs the request id, and its trace id
        // goes into the audit record, so it sits between the two. It also
        // sees refusals (Rescue is inside) and the client going away.
        .layer(
            TelemetryLayer::new()
                .skip_paths(&PROBES)
                .request_log(config.request_log),
        )
        // The request metrics, from the notes the layers below fill in. Just
        // inside telemetry, so it times the same span of work; it counts
        // refusals (Rescue is inside) and the client going away.
        .layer(MetricsLayer::new(parts.metrics.clone()).skip_paths(&PROBES))
        // Sees every request with its id and every final response, refusals
        // included (Rescue is inside it), so each gets one `response` record.
        .layer(AuditLayer::new(config.audit.clone()))
        // Turns every `Err` below into a JSON error response: from here up
        // the stack is infallible, as hyper requires.
        .layer(RescueLayer::new(parts.request_timeout))
        // Health paths and /metrics are answered before any limit or
        // credential work, and are never forwarded; while draining, new work
        // stops here.
        .layer(HealthLayer::new(parts.readiness))
        // Cheap checks on what hyper parsed, before any work is spent on it.
        .layer(HeadLimitLayer::new(parts.head_limits))
        // At most `server.max_inflight` requests below this point; past it a
        // request is refused at once (Rescue turns `Overloaded` into a 503
        // with Retry-After) instead of queueing without bound. Health paths
        // are answered above, so probes still work under overload.
        .load_shed()
        .layer(GlobalConcurrencyLimitLayer::with_semaphore(parts.inflight))
        // Bounds everything below it, including the upstream exchange; its
        // `Elapsed` becomes a 504 in Rescue.
        .timeout(parts.request_timeout)
        // Nothing unauthenticated goes further. It sits inside the timeout so
        // an unknown-kid JWKS refetch is bounded, and before the body limit so
        // an anonymous caller cannot make the gateway read a body at all.
        .layer(JwtAuthLayer::new(config.auth.clone()))
        // Routing after authentication, so anonymous callers learn nothing of
        // the route table. Ambiguous paths, unknown routes and wrong methods
        // stop here; the match names the operation for everything below.
        .layer(RouteLayer::new(
            config.routes.clone(),
            Some(select_credential(config)),
        ))
        // Needs both the principal (auth) and the operation (routing).
        .layer(PolicyLayer::new(config.policy.clone()))
        // Before anything reads the body; also boxes it into the one body
        // type the inner layers share.
        .layer(BodyLimitLayer::new(parts.max_body_bytes))
        // Inside the body limit, so a body it reads is bounded (and its parse,
        // by `server.max_json_depth` and `server.max_json_values`); after
        // policy, so only allowed callers make the gateway read and parse a
        // body. A refused body is digested for the audit trail as the audit
        // settings say (keyed with `audit.fingerprint_key`).
        .layer(ValidateLayer::new(parts.json_limits).with_body_digest(config.audit.body_digest()))
        // Organizations named in the body (`organization_id` on a catalog
        // write) are checked once validation has parsed it; the policy layer
        // above let through only callers some rule grants the operation.
        // Before the audit's request record, so a refusal is never recorded
        // as a forwarded write.
        .layer(PolicyBodyLayer::new(config.policy.clone()))
        // Last before anything is sent: the `request` record of a write is
        // durable before the credential swap and the upstream call, and it
        // holds the validated body.
        .layer(AuditRequestLayer::new(config.audit.clone()))
        // Strips the caller's credentials (the JWT, already verified above)
        // and injects the partner key. Only the version header and the proxy
        // come after it, so no other layer ever sees the secret.
        .layer(CredentialSwapLayer::new(config.credentials.clone()))
        // Sets X-Polytomic-Version for every forwarded request.
        .layer(crate::version::layer(config.version_policy.clone()))
        // Innermost: forwards upstream over the pooled client.
        .service(Proxy::new(parts.upstream))
}

/// How routing marks a request with its route's credential (for the
/// credential swap): from the credential set of the config in force.
fn select_credential(config: &Generation) -> SelectCredential {
    let credentials = config.credentials.clone();
    Arc::new(move |name, extensions| credentials.select(name, extensions))
}

/// Paths the gateway answers itself (health): probed constantly, so they
/// get no span, no log line and no request metrics. (`/metrics` is served
/// on the admin listener, outside this stack.)
const PROBES: [&str; 2] = [HEALTHZ, READYZ];

/// Moves the client's `x-request-id` out of the way of the gateway's own,
/// keeping it as a [`ClientRequestId`] if it is one sane value.
fn take_client_request_id<B>(req: &mut Request<B>) {
    let headers = req.headers_mut();
    let mut sent = headers.get_all(X_REQUEST_ID).iter();
    let theirs = match (sent.next(), sent.next()) {
        (Some(one), None) => ClientRequestId::from_header(one),
        // None, or several: nothing to keep.
        _ => None,
    };
    headers.remove(X_REQUEST_ID);
    if let Some(theirs) = theirs {
        req.extensions_mut().insert(theirs);
    }
}

/// The request id header.
const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Makes a random (v4) UUID request id from the thread-local generator.
/// (tower-http's `MakeRequestUuid` asks the kernel for each one: a
/// `getrandom` syscall per request.)
#[derive(Clone, Copy, Debug, Default)]
pub struct MakeRandomUuid;

impl MakeRequestId for MakeRandomUuid {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let text = id.hyphenated().encode_lower(&mut text);
        http::HeaderValue::from_str(text).ok().map(RequestId::new)
    }
}
