//! The listener: accepting connections, the connection limit, and graceful
//! shutdown.
//!
//! [`Gateway::build`] validates the whole configuration and builds every part
//! up front (so `check` and `serve` find the same problems); [`Gateway::serve`]
//! then runs the stack on a listener until a shutdown future resolves:
//!
//! 1. `/readyz` turns 503 and the listener is closed, so new connections are
//!    refused;
//! 2. in-flight requests drain for up to `server.shutdown_grace`;
//! 3. `serve` returns.
//!
//! Past `server.max_connections`, a new connection gets one 503 `overloaded`
//! response and is closed, instead of queueing without bound.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tower::ServiceBuilder;

use crate::audit::Audit;
use crate::auth::Authenticator;
use crate::body::GatewayBody;
use crate::catalog::CatalogSummary;
use crate::config::{ConfigErrors, ConfigProblem, GatewayConfig, ServerConfig};
use crate::connection::{Activity, Check, Deadlines, Tracked, TrackedBody, Watched};
use crate::credentials::CredentialSet;
use crate::error::GatewayError;
use crate::health::Readiness;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::proxy::Upstream;
use crate::stack::{self, StackParts};
use crate::validate::MAX_JSON_DEPTH_LIMIT;
use crate::version::VersionPolicy;

/// Adapts the tower stack to hyper, calling it as soon as hyper has parsed a
/// request head, and keeps the connection's [`Activity`] up to date.
///
/// hyper-util's `TowerToHyperService` calls the stack only when hyper first
/// polls the returned future, and hyper may drop a request without polling
/// it (the client half-closed or reset right after sending it); the audit
/// layer would then never see it. Called here, the audit layer has the
/// request in hand and records it as cancelled if it is dropped.
#[derive(Debug, Clone)]
struct EagerService<S> {
    stack: S,
    activity: Arc<Activity>,
}

impl<S, B, ResBody> hyper::service::Service<Request<B>> for EagerService<S>
where
    S: tower::Service<Request<B>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<TrackedBody<ResBody>>;
    type Error = S::Error;
    type Future =
        Tracked<futures_util::future::Either<S::Future, tower::util::Oneshot<S, Request<B>>>>;

    fn call(&self, req: Request<B>) -> Self::Future {
        let guard = self.activity.start(req.version() == http::Version::HTTP_2);
        let mut svc = self.stack.clone();
        // The stack is always ready (load shedding answers instead of
        // waiting), so this resolves at once; were it not ready, the request
        // would wait for readiness as usual.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let future = match svc.poll_ready(&mut cx) {
            std::task::Poll::Ready(Ok(())) => futures_util::future::Either::Left(svc.call(req)),
            _ => futures_util::future::Either::Right(tower::util::Oneshot::new(svc, req)),
        };
        Tracked::new(future, guard)
    }
}

/// Wraps a shutdown future so the moment it resolved is known afterwards.
pub fn timed(
    shutdown: impl Future<Output = ()>,
) -> (
    impl Future<Output = ()>,
    Arc<std::sync::OnceLock<std::time::Instant>>,
) {
    let at = Arc::new(std::sync::OnceLock::new());
    let set = at.clone();
    let future = async move {
        shutdown.await;
        let _ = set.set(std::time::Instant::now());
    };
    (future, at)
}

/// What is left of `grace` since `signaled` (all of it if never signaled).
pub fn remaining(grace: Duration, signaled: &std::sync::OnceLock<std::time::Instant>) -> Duration {
    signaled
        .get()
        .map_or(grace, |at| grace.saturating_sub(at.elapsed()))
}

/// The peer address of the connection a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// Marks a request whose peer is in `server.trusted_proxies`: the
/// forwarding headers it sent are believed and extended, not replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FromTrustedProxy;

/// `server.trusted_proxies`, parsed: each entry an address or a network.
fn trusted_proxies(server: &ServerConfig, problems: &mut Vec<ConfigProblem>) -> Arc<[IpNet]> {
    let mut nets = Vec::with_capacity(server.trusted_proxies.len());
    for entry in &server.trusted_proxies {
        let parsed = entry
            .parse::<IpNet>()
            .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => nets.push(net.trunc()),
            Err(_) => problems.push(ConfigProblem::new(
                "server.trusted_proxies",
                format!("{entry:?} is neither an IP address nor a CIDR network (such as \"10.0.0.0/8\")"),
            )),
        }
    }
    nets.into()
}

/// A fully built gateway, ready to serve.
#[derive(Debug)]
pub struct Gateway {
    /// `[server]`, for the listener and shutdown.
    server: ServerConfig,
    /// The stack's parts, assembled when serving.
    parts: StackParts,
    /// What `[catalog]` routes, for `check`.
    catalog: CatalogSummary,
    /// `server.trusted_proxies`, parsed.
    trusted: Arc<[IpNet]>,
}

impl Gateway {
    /// Validates `config` (read from `file`) and builds every part.
    ///
    /// Every problem is reported, each naming its key and where it was set.
    pub fn build(config: GatewayConfig, file: &Path) -> Result<Self, ConfigErrors> {
        let mut problems = Vec::new();
        validate_server(&config.server, &mut problems);
        let trusted = trusted_proxies(&config.server, &mut problems);
        problems.extend(config.telemetry.validate());
        let credentials = CredentialSet::load(&config.credentials).map_err(|p| problems.extend(p));
        let version = VersionPolicy::from_config(&config.polytomic).map_err(|p| problems.extend(p));
        let upstream = Upstream::from_config(&config.upstream).map_err(|p| problems.extend(p));
        let auth = match &config.auth {
            None => {
                problems.push(ConfigProblem::new(
                    "auth",
                    "is required: every request must carry a verified JWT (see [auth] in README.md)",
                ));
                Err(())
            }
            Some(auth) => {
                let connector = upstream.as_ref().ok().map(Upstream::https_connector);
                Authenticator::from_config(auth, connector)
                    .map(Arc::new)
                    .map_err(|p| problems.extend(p))
            }
        };
        let mut catalog = CatalogSummary::default();
        let routes = crate::catalog::route_table(&config)
            .map(|(table, summary)| {
                catalog = summary;
                Arc::new(table)
            })
            .map_err(|p| problems.extend(p));
        let policy = match &routes {
            Ok(routes) => Policy::from_config(&config.policy, routes.operations())
                .map(Arc::new)
                .map_err(|p| problems.extend(p)),
            Err(()) => Err(()),
        };
        if problems.is_empty() {
            // The audit file is tried now so `check` reports it; `serve`
            // starts anyway and applies `audit.on_failure` per request.
            if let Err(problem) = Audit::probe(&config.audit) {
                tracing::error!(problem = %problem.message, "the audit file is not writable");
            }
        }
        let connector = upstream.as_ref().ok().map(Upstream::https_connector);
        let audit = Audit::from_config(&config.audit, connector).map_err(|p| problems.extend(p));
        let (
            Ok(credentials),
            Ok(version),
            Ok(upstream),
            Ok(auth),
            Ok(routes),
            Ok(policy),
            Ok(audit),
            true,
        ) = (
            credentials,
            version,
            upstream,
            auth,
            routes,
            policy,
            audit,
            problems.is_empty(),
        )
        else {
            return Err(ConfigErrors::new(file, problems));
        };
        if catalog.enabled {
            if catalog.unrouted.is_empty() {
                tracing::info!("{}", catalog.describe());
            } else {
                tracing::warn!("{}", catalog.describe());
            }
        }
        if routes.operations().is_empty() {
            tracing::warn!(
                "no [[routes]] or [catalog] operations are configured: every request will be refused with 404"
            );
        } else if config.policy.rules.is_empty() {
            tracing::warn!(
                "no [[policy.rules]] are configured: every request will be refused with 403"
            );
        }
        // Records of requests refused before routing redact these too.
        audit.set_secret_query_params(routes.secret_query_params());
        let readiness = {
            let credentials = credentials.clone();
            let auth = auth.clone();
            Readiness::new(vec![
                Box::new(move || {
                    if credentials.all_readable() {
                        Ok(())
                    } else {
                        Err("a credential source is unreadable")
                    }
                }),
                Box::new(move || {
                    if auth.is_ready() {
                        Ok(())
                    } else {
                        Err("signing keys are not loaded yet")
                    }
                }),
            ])
        };
        let metrics = Metrics::new();
        metrics.watch_jwks(auth.keys().clone());
        metrics.watch_audit(audit.clone());
        Ok(Self {
            parts: StackParts {
                metrics,
                max_body_bytes: config.server.max_body_bytes,
                json_limits: crate::validate::JsonLimits {
                    max_depth: config.server.max_json_depth,
                    max_values: config.server.max_json_values,
                },
                head_limits: crate::limit::HeadLimits {
                    uri_bytes: config.server.max_uri_bytes,
                    header_bytes: config.server.max_header_bytes,
                    headers: config.server.max_headers,
                },
                inflight: Arc::new(Semaphore::new(config.server.max_inflight)),
                request_timeout: config.server.request_timeout,
                readiness,
                audit,
                auth,
                routes,
                policy,
                credentials,
                version,
                upstream,
            },
            server: config.server,
            catalog,
            trusted,
        })
    }

    /// The configured listen address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.server.listen
    }

    /// The configured admin listen address (`/metrics`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.server.admin_listen
    }

    /// What `/readyz` reports.
    pub fn readiness(&self) -> &Readiness {
        &self.parts.readiness
    }

    /// What `[catalog]` routes (`enabled` is false without it).
    pub fn catalog(&self) -> &CatalogSummary {
        &self.catalog
    }

    /// The caller authenticator (e.g. for `check` to fetch the JWKS once).
    pub fn authenticator(&self) -> &Arc<Authenticator> {
        &self.parts.auth
    }

    /// The metrics served on `/metrics` (e.g. to add the span exporter's).
    pub fn metrics(&self) -> &Metrics {
        &self.parts.metrics
    }

    /// The audit trail (e.g. to reopen its file on SIGHUP).
    pub fn audit(&self) -> &Audit {
        &self.parts.audit
    }

    /// The loaded credentials (e.g. to refresh them on SIGHUP).
    pub fn credentials(&self) -> &CredentialSet {
        &self.parts.credentials
    }

    /// Serves on `listener` until `shutdown` resolves, then drains.
    ///
    /// The calling runtime accepts connections and hands them round-robin to
    /// `server.workers` worker threads, each running its own single-threaded
    /// runtime and its own copy of the stack and upstream pool. A request is
    /// then served start to finish on one thread: no task migrates and no
    /// other thread is woken on its behalf, which on a small machine is worth
    /// more than work stealing (measured in BENCHMARKS.md). State that must
    /// be global (the connection and in-flight limits, the audit trail, the
    /// token cache, metrics) is shared. Background work (JWKS refresh,
    /// credential watching, audit shipping) stays on the calling runtime.
    ///
    /// `admin` serves `/metrics`, `/healthz` and `/readyz` only (see
    /// [`admin_service`]), on the calling runtime, until `serve` returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        admin: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let Gateway {
            server,
            parts,
            trusted,
            ..
        } = self;
        let readiness = parts.readiness.clone();
        let audit = parts.audit.clone();
        let watcher = parts.credentials.watch();
        let jwks_refresh = tokio::spawn(parts.auth.keys().clone().refresh_forever());
        let shipping = parts.audit.start_shipping();

        let mut builder = auto::Builder::new(TokioExecutor::new());
        // hyper's own head limits sit above ours (see `limit`), so a request
        // just over ours still reaches the stack and gets a JSON 431 or 414.
        // Its header timer is off: it also runs between keep-alive requests,
        // which `server.idle_timeout` governs (see `connection`).
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_headers(server.max_headers + HYPER_HEADROOM_HEADERS)
            .max_buf_size(
                (server.max_header_bytes + server.max_uri_bytes + HYPER_HEADROOM_BYTES)
                    .max(MIN_HYPER_BUF),
            );
        builder.http2().max_header_list_size(
            u32::try_from(server.max_header_bytes + server.max_uri_bytes + HYPER_HEADROOM_BYTES)
                .unwrap_or(u32::MAX),
        );
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(server.http2_ping_interval)
            .keep_alive_timeout(server.http2_ping_timeout);
        let builder = Arc::new(builder);
        let permits = Arc::new(Semaphore::new(server.max_connections));
        let shed_permits = Arc::new(Semaphore::new(MAX_SHED_CONNECTIONS));
        let metrics = parts.metrics.clone();
        let mut shed_log = ShedLog::default();

        let workers = server.workers.unwrap_or_else(default_workers);
        let mut queues = Vec::with_capacity(workers);
        let mut finished = Vec::with_capacity(workers);
        for index in 0..workers {
            let (queue, incoming) = mpsc::unbounded_channel();
            let (done, finished_rx) = oneshot::channel();
            let worker = Worker {
                stack: stack::build::<Incoming>(parts.for_worker()),
                builder: builder.clone(),
                deadlines: Deadlines {
                    header: server.header_timeout,
                    idle: server.idle_timeout,
                },
                grace: server.shutdown_grace,
                trusted: trusted.clone(),
            };
            std::thread::Builder::new()
                .name(format!("gateway-worker-{index}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    let drained = match runtime {
                        Ok(runtime) => runtime.block_on(worker.run(incoming)),
                        Err(error) => {
                            tracing::error!(%error, "cannot start a worker runtime");
                            true
                        }
                    };
                    let _ = done.send(drained);
                })?;
            queues.push(queue);
            finished.push(finished_rx);
        }
        drop(parts);

        let admin_addr = admin.local_addr()?;
        let admin_task = tokio::spawn(serve_admin(
            admin,
            admin_service(readiness.clone(), metrics.clone()),
            builder.clone(),
            Deadlines {
                header: server.header_timeout,
                idle: server.idle_timeout,
            },
        ));
        tracing::info!(listen = %listener.local_addr()?, admin = %admin_addr, workers, "gateway listening");
        tokio::pin!(shutdown);
        let mut next = 0;
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                // Shedding is bounded too: past its own cap, close at once.
                let answered = match shed_permits.clone().try_acquire_owned() {
                    Ok(shed_permit) => {
                        let header_timeout = server.header_timeout;
                        tokio::spawn(async move {
                            let _ = tokio::time::timeout(header_timeout, shed(stream)).await;
                            drop(shed_permit);
                        });
                        true
                    }
                    Err(_) => false,
                };
                metrics.connection_shed(answered);
                // A flood must not become a flood of log lines too.
                if let Some(shed) = shed_log.note(tokio::time::Instant::now()) {
                    tracing::warn!(%peer, shed, "connection limit reached; shedding (count since the last such line)");
                }
                continue;
            };
            // Handed over as a std socket: the worker registers it with its
            // own runtime.
            let stream = match stream.into_std() {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::warn!(%peer, %error, "cannot hand a connection to a worker");
                    continue;
                }
            };
            let mut connection = Connection {
                stream,
                peer,
                permit,
            };
            // A worker only goes away if its thread died; the next one takes
            // the connection.
            let mut handed = false;
            for _ in 0..queues.len() {
                next = (next + 1) % queues.len();
                match queues[next].send(connection) {
                    Ok(()) => {
                        handed = true;
                        break;
                    }
                    Err(mpsc::error::SendError(back)) => connection = back,
                }
            }
            if !handed {
                tracing::error!("every worker thread has stopped; shutting down");
                break;
            }
        }

        // The grace runs from here: draining, then writing the audit trail.
        let stopping = tokio::time::Instant::now();
        readiness.start_draining();
        drop(listener);
        tracing::info!(
            open_connections = server.max_connections - permits.available_permits(),
            grace = ?server.shutdown_grace,
            "shutting down: listener closed, draining in-flight requests"
        );
        // Closing the queues tells each worker to drain; each stops within
        // the grace period.
        drop(queues);
        let mut drained = true;
        for worker in finished {
            drained &= worker.await.unwrap_or(true);
        }
        if drained {
            tracing::info!("drained; exiting");
        } else {
            tracing::warn!("shutdown grace elapsed with requests still in flight; exiting");
        }
        if let Some(watcher) = watcher {
            watcher.abort();
        }
        jwks_refresh.abort();
        admin_task.abort();
        if let Some(shipping) = shipping {
            // Unshipped records stay in the spool and go out after a restart.
            shipping.abort();
        }
        // Every record of the drained requests is written before exiting,
        // unless the sink is stalled past the grace (then the process exits
        // all the same, saying how many records it could not write).
        let budget = server
            .shutdown_grace
            .saturating_sub(stopping.elapsed())
            .max(crate::audit::MIN_CLOSE_TIME);
        match audit.close_within(budget).await {
            0 => Ok(()),
            lost => Err(std::io::Error::other(format!(
                "{lost} audit records were not written: the audit sink did not take them within server.shutdown_grace"
            ))),
        }
    }
}

/// One core's worth of serving: a copy of the stack, run on a
/// single-threaded runtime.
struct Worker<S> {
    stack: S,
    builder: Arc<auto::Builder<TokioExecutor>>,
    deadlines: Deadlines,
    grace: Duration,
    /// `server.trusted_proxies`.
    trusted: Arc<[IpNet]>,
}

/// An accepted connection on its way to a worker.
struct Connection {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    /// Held until the connection starts to close (`server.max_connections`).
    permit: OwnedSemaphorePermit,
}

impl<S> Worker<S>
where
    S: tower::Service<
            Request<Incoming>,
            Response = Response<GatewayBody>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    /// Serves the connections it is handed until the queue closes, then
    /// drains them for up to the grace period; false if that ran out.
    async fn run(self, mut incoming: mpsc::UnboundedReceiver<Connection>) -> bool {
        // Each connection task holds a receiver; all of them dropped means
        // every connection has closed.
        let (stop, stopping) = watch::channel(false);
        while let Some(Connection {
            stream,
            peer,
            permit,
        }) = incoming.recv().await
        {
            let stream = match tokio::net::TcpStream::from_std(stream) {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::warn!(%peer, %error, "cannot register a connection");
                    continue;
                }
            };
            // Decided once per connection: the peer cannot change.
            let peer_ip = peer.ip().to_canonical();
            let trusted = self.trusted.iter().any(|net| net.contains(&peer_ip));
            let stack = ServiceBuilder::new()
                .map_request(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(ClientAddr(peer));
                    if trusted {
                        req.extensions_mut().insert(FromTrustedProxy);
                    }
                    req
                })
                .service(self.stack.clone());
            spawn_connection(
                stream,
                peer,
                permit,
                stack,
                self.builder.clone(),
                self.deadlines,
                stopping.clone(),
            );
        }
        drop(stopping);
        // Closing tells every connection to finish its requests and close.
        let _ = stop.send(true);
        tokio::time::timeout(self.grace, stop.closed())
            .await
            .is_ok()
    }
}

/// Drives one connection to its end, closing it when a phase of its
/// [`Activity`] lasts too long (see `connection`) or the worker stops.
async fn serve_watched<C, E>(
    conn: C,
    graceful_shutdown: fn(Pin<&mut C>),
    activity: &Activity,
    deadlines: Deadlines,
    mut stopping: watch::Receiver<bool>,
    peer: SocketAddr,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    // Set once the connection was asked to close gracefully by the watchdog:
    // how long it may take before it is dropped (a peer that never answers
    // HTTP/2's shutdown ping must not hold its slot either).
    let mut closing: Option<tokio::time::Instant> = None;
    let mut stopped = false;
    loop {
        let wake = match closing {
            Some(deadline) => deadline,
            None => match activity.check(deadlines, tokio::time::Instant::now()) {
                Check::WakeAt(at) => at,
                Check::HeadTimedOut => {
                    tracing::debug!(%peer, "no complete request head within server.header_timeout; dropping the connection");
                    return;
                }
                Check::Idle => {
                    tracing::debug!(%peer, "idle for server.idle_timeout; closing the connection");
                    graceful_shutdown(conn.as_mut());
                    let deadline = tokio::time::Instant::now() + deadlines.header;
                    closing = Some(deadline);
                    deadline
                }
            },
        };
        tokio::select! {
            biased;
            ended = conn.as_mut() => {
                if let Err(error) = ended {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                return;
            }
            _ = stopping.changed(), if !stopped => {
                // The worker is draining: finish what is in flight, then close.
                stopped = true;
                graceful_shutdown(conn.as_mut());
            }
            () = tokio::time::sleep_until(wake) => {
                if closing.is_some() {
                    tracing::debug!(%peer, "a graceful close took longer than server.header_timeout; dropping the connection");
                    return;
                }
            }
        }
    }
}

/// The admin listener's service: `/metrics`, `/healthz` and `/readyz`;
/// any other path is 404 `no_route`. Nothing here is audited or traced:
/// these are scraped and probed constantly, and they change nothing.
pub fn admin_service(
    readiness: Readiness,
    metrics: Metrics,
) -> impl tower::Service<
    Request<Incoming>,
    Response = Response<GatewayBody>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    ServiceBuilder::new()
        .layer(crate::health::HealthLayer::new(readiness).with_metrics(metrics))
        .service_fn(|_req: Request<Incoming>| async {
            Ok::<_, std::convert::Infallible>(GatewayError::NoRoute.to_response())
        })
}

/// The most connections the admin listener serves at once; past it a new
/// one is closed at once. A scraper and a few probes need a handful.
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// Serves the admin listener, with the same connection deadlines as the
/// main one.
async fn serve_admin<S>(
    listener: TcpListener,
    svc: S,
    builder: Arc<auto::Builder<TokioExecutor>>,
    deadlines: Deadlines,
) where
    S: tower::Service<
            Request<Incoming>,
            Response = Response<GatewayBody>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let permits = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    // Never sent: admin connections end with the process.
    let (_stop, stopping) = watch::channel(false);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        spawn_connection(
            stream,
            peer,
            permit,
            svc.clone(),
            builder.clone(),
            deadlines,
            stopping.clone(),
        );
    }
}

/// Serves one accepted connection on its own task: `stack` behind hyper,
/// its [`Activity`] watched (see `connection`), its slot held by `permit`
/// until the socket starts to close.
fn spawn_connection<S>(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    stack: S,
    builder: Arc<auto::Builder<TokioExecutor>>,
    deadlines: Deadlines,
    stopping: watch::Receiver<bool>,
) where
    S: tower::Service<
            Request<Incoming>,
            Response = Response<GatewayBody>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let activity = Activity::new();
    let svc = EagerService {
        stack,
        activity: activity.clone(),
    };
    let io = TokioIo::new(Watched::new(stream, activity.clone(), permit));
    tokio::spawn(async move {
        let conn = builder.serve_connection(io, svc);
        serve_watched(
            conn,
            |conn| conn.graceful_shutdown(),
            &activity,
            deadlines,
            stopping,
            peer,
        )
        .await;
    });
}

/// One worker per available core.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// Answers one request on an over-limit connection with 503, then closes it
/// (HTTP/1 only, so `Connection: close` holds; bounded by the caller).
async fn shed(stream: tokio::net::TcpStream) {
    let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
        let mut response: Response<GatewayBody> = GatewayError::Overloaded.to_response();
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        Ok::<_, std::convert::Infallible>(response)
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

/// The most over-limit connections being answered 503 at once.
const MAX_SHED_CONNECTIONS: usize = 1024;

/// Rate-limits the shedding warning to one line a second, each with how
/// many connections were shed since the last (`gateway_connections_shed_total`
/// counts them all).
#[derive(Debug, Default)]
struct ShedLog {
    last: Option<tokio::time::Instant>,
    unlogged: u64,
}

impl ShedLog {
    /// Notes one shed connection; `Some(count)` when a line is due.
    fn note(&mut self, now: tokio::time::Instant) -> Option<u64> {
        self.unlogged += 1;
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// The most connections `server.max_connections` may allow.
const MAX_CONNECTIONS_LIMIT: usize = 1 << 20;

/// The most worker threads `server.workers` may ask for.
const MAX_WORKERS: usize = 256;

/// The largest `server.max_header_bytes` and `server.max_uri_bytes`.
const MAX_HEADER_BYTES_LIMIT: usize = 1 << 20;

/// The largest `server.max_headers`.
const MAX_HEADERS_LIMIT: usize = 1000;

/// How far hyper's header count limit sits above `server.max_headers`.
const HYPER_HEADROOM_HEADERS: usize = 100;

/// How far hyper's head buffer sits above our head limits.
const HYPER_HEADROOM_BYTES: usize = 16 * 1024;

/// hyper's smallest read buffer.
const MIN_HYPER_BUF: usize = 8192;

fn validate_server(server: &ServerConfig, problems: &mut Vec<ConfigProblem>) {
    if server.admin_listen == server.listen && server.listen.port() != 0 {
        problems.push(ConfigProblem::new(
            "server.admin_listen",
            "must differ from server.listen: /metrics never shares the proxy's port",
        ));
    }
    if server.workers.is_some_and(|n| n > MAX_WORKERS) {
        problems.push(ConfigProblem::new(
            "server.workers",
            format!("must be at most {MAX_WORKERS}"),
        ));
    }
    if server.max_connections > MAX_CONNECTIONS_LIMIT {
        problems.push(ConfigProblem::new(
            "server.max_connections",
            format!("must be at most {MAX_CONNECTIONS_LIMIT}"),
        ));
    }
    let positive = [
        ("server.request_timeout", server.request_timeout.is_zero()),
        ("server.header_timeout", server.header_timeout.is_zero()),
        ("server.idle_timeout", server.idle_timeout.is_zero()),
        (
            "server.http2_ping_interval",
            server.http2_ping_interval.is_zero(),
        ),
        (
            "server.http2_ping_timeout",
            server.http2_ping_timeout.is_zero(),
        ),
        ("server.max_connections", server.max_connections == 0),
        ("server.max_body_bytes", server.max_body_bytes == 0),
        ("server.max_json_depth", server.max_json_depth == 0),
        ("server.max_json_values", server.max_json_values == 0),
        ("server.max_inflight", server.max_inflight == 0),
        ("server.max_header_bytes", server.max_header_bytes == 0),
        ("server.max_headers", server.max_headers == 0),
        ("server.max_uri_bytes", server.max_uri_bytes == 0),
        ("server.workers", server.workers == Some(0)),
    ];
    // hyper refuses, with a bare 431, a head beyond its buffer or header
    // count; ours must bite first so the refusal is JSON and audited.
    for (key, value, limit) in [
        (
            "server.max_header_bytes",
            server.max_header_bytes,
            MAX_HEADER_BYTES_LIMIT,
        ),
        (
            "server.max_uri_bytes",
            server.max_uri_bytes,
            MAX_HEADER_BYTES_LIMIT,
        ),
        ("server.max_headers", server.max_headers, MAX_HEADERS_LIMIT),
    ] {
        if value > limit {
            problems.push(ConfigProblem::new(key, format!("must be at most {limit}")));
        }
    }
    if server.max_json_depth > MAX_JSON_DEPTH_LIMIT {
        problems.push(ConfigProblem::new(
            "server.max_json_depth",
            format!(
                "must be at most {MAX_JSON_DEPTH_LIMIT}: serde_json refuses nesting of 128 levels \
                 itself (its recursion limit), and a body one level past this limit must still \
                 be parsed far enough to be answered json_too_deep"
            ),
        ));
    }
    for (key, zero) in positive {
        if zero {
            problems.push(ConfigProblem::new(key, "must be greater than zero"));
        }
    }
}

/// A future resolving on SIGTERM or SIGINT.
///
/// The handlers are installed now, not when the future is first polled, so a
/// signal arriving at any point after this call drains instead of killing the
/// process with the default action.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

/// A future that, on every SIGHUP, re-reads file credentials and reopens the
/// audit file (for logrotate). The handler is installed now (SIGHUP's default
/// action is to exit).
pub fn reload_on_sighup(
    credentials: CredentialSet,
    audit: Audit,
) -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    Ok(async move {
        while hup.recv().await.is_some() {
            audit.reopen();
            let set = credentials.clone();
            let changed = tokio::task::spawn_blocking(move || set.refresh())
                .await
                .unwrap_or(0);
            tracing::info!(changed, "SIGHUP: credentials re-read, audit file reopened");
        }
    })
}
