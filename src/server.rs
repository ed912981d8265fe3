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
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::Ordering;
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
use crate::client::JwksConnector;
use crate::config::{ConfigErrors, ConfigProblem, GatewayConfig, ServerConfig};
use crate::connection::{Activity, Check, Deadlines, Tracked, TrackedBody, Watched};
use crate::error::GatewayError;
use crate::health::Readiness;
use crate::metrics::Metrics;
use crate::net::{ClientAddr, ClientAddrText, FromTrustedProxy};
use crate::proxy::Upstream;
use crate::reload::{self, Generation, WatchedFiles};
use crate::stack::{self, StackParts};
use crate::telemetry::LogFilter;
use crate::validate::MAX_JSON_DEPTH_LIMIT;

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
    stacks: Stacks<S>,
    activity: Arc<Activity>,
    /// What the requests learn about the peer (none on the admin listener).
    peer: Option<Peer>,
}

/// Where a connection finds the stack to serve each request with.
#[derive(Debug, Clone)]
enum Stacks<S> {
    /// Always this one (the admin listener).
    Fixed(S),
    /// The worker's stack of the config in force: read per request, so a
    /// reload applies to every request after it, on every connection.
    Live {
        stacks: watch::Receiver<Published<S>>,
        index: usize,
    },
}

impl<S: Clone> Stacks<S> {
    fn current(&self) -> S {
        match self {
            Self::Fixed(stack) => stack.clone(),
            // Only this worker's thread locks its stack: never contended.
            Self::Live { stacks, index } => lock(&stacks.borrow()[*index]).clone(),
        }
    }
}

/// Every worker's stack for one config generation. (A stack is `Send`
/// but not `Sync`; the mutex makes the set shareable.)
type Published<S> = Arc<[std::sync::Mutex<S>]>;

/// The peer of a connection, as its requests carry it.
#[derive(Debug, Clone)]
struct Peer {
    addr: ClientAddr,
    /// Its IP as text, made once for all the connection's requests.
    text: ClientAddrText,
    /// In `server.trusted_proxies`.
    trusted: bool,
}

impl<S, B, ResBody> hyper::service::Service<Request<B>> for EagerService<S>
where
    S: tower::Service<Request<B>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<TrackedBody<ResBody>>;
    type Error = S::Error;
    type Future =
        Tracked<futures_util::future::Either<S::Future, tower::util::Oneshot<S, Request<B>>>>;

    fn call(&self, mut req: Request<B>) -> Self::Future {
        let guard = self.activity.start(req.version() == http::Version::HTTP_2);
        if let Some(peer) = &self.peer {
            req.extensions_mut().insert(peer.addr);
            req.extensions_mut().insert(peer.text.clone());
            if peer.trusted {
                req.extensions_mut().insert(FromTrustedProxy);
            }
        }
        let mut svc = self.stacks.current();
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
    /// `server.trusted_proxies`, parsed.
    trusted: Arc<[IpNet]>,
    /// The generation in force, for readiness, metrics and reloads.
    current: Current,
    /// Where reloads read the config from.
    source: ConfigSource,
    /// Asks for reloads.
    reloader: Reloader,
    /// Reload requests, until `serve` takes them.
    reloads: mpsc::UnboundedReceiver<ReloadRequest>,
    /// Applies `telemetry.log_level` on reload.
    log_filter: LogFilter,
    /// The running upstream's TLS settings, for a reloaded `auth.jwks_url`.
    connector: Option<JwksConnector>,
    /// The files a change of which reloads the config.
    watched: WatchedFiles,
}

/// The generation in force; replaced whole by a reload.
type Current = Arc<std::sync::RwLock<Arc<Generation>>>;

fn current_of(current: &Current) -> Arc<Generation> {
    current.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Changes made to every config read, before it is validated (the demo
/// sets its listeners and upstream this way).
pub type Adjust = Arc<dyn Fn(&mut GatewayConfig) + Send + Sync>;

/// Where the config comes from, for reloads.
#[derive(Clone)]
struct ConfigSource {
    file: PathBuf,
    adjust: Option<Adjust>,
}

impl std::fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSource")
            .field("file", &self.file)
            .field("adjust", &self.adjust.is_some())
            .finish()
    }
}

impl ConfigSource {
    /// Reads the config as at start: the file, the environment, then the
    /// adjustment.
    fn load(&self) -> Result<GatewayConfig, ConfigErrors> {
        let mut config = crate::config::load(&self.file)?;
        if let Some(adjust) = &self.adjust {
            adjust(&mut config);
        }
        Ok(config)
    }
}

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadTrigger {
    /// `SIGHUP`.
    Signal,
    /// A watched file changed on disk.
    File,
    /// A caller of [`Reloader::reload`].
    Request,
}

impl ReloadTrigger {
    /// As recorded: `sighup`, `file` or `request`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Signal => "sighup",
            Self::File => "file",
            Self::Request => "request",
        }
    }
}

/// How a reload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// The version in force afterwards (the old one if the reload failed).
    pub version: Arc<str>,
    /// Why the reload failed, naming each key and its file; `None`: applied.
    pub error: Option<String>,
    /// Restart-only settings that changed and were not applied.
    pub restart_required: Vec<String>,
}

/// A reload request, and where to say how it ended.
#[derive(Debug)]
struct ReloadRequest {
    trigger: ReloadTrigger,
    reply: Option<oneshot::Sender<ReloadOutcome>>,
}

/// Asks a serving gateway to reload its config. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Reloader {
    tx: mpsc::UnboundedSender<ReloadRequest>,
}

impl Reloader {
    /// Asks for a reload and returns at once (the SIGHUP handler).
    pub fn request(&self, trigger: ReloadTrigger) {
        let _ = self.tx.send(ReloadRequest {
            trigger,
            reply: None,
        });
    }

    /// Reloads and says how it ended (once `serve` runs: a request made
    /// before waits for it); `None` once the gateway has stopped.
    pub async fn reload(&self) -> Option<ReloadOutcome> {
        let (reply, outcome) = oneshot::channel();
        self.tx
            .send(ReloadRequest {
                trigger: ReloadTrigger::Request,
                reply: Some(reply),
            })
            .ok()?;
        outcome.await.ok()
    }
}

impl Gateway {
    /// Validates `config` (read from `file`) and builds every part.
    ///
    /// Every problem is reported, each naming its key and where it was set.
    pub fn build(config: GatewayConfig, file: &Path) -> Result<Self, ConfigErrors> {
        Self::build_adjusted(config, file, None)
    }

    /// [`Gateway::build`], for a `config` that `adjust` changed after it was
    /// read from `file`; reloads apply `adjust` too.
    pub fn build_adjusted(
        config: GatewayConfig,
        file: &Path,
        adjust: Option<Adjust>,
    ) -> Result<Self, ConfigErrors> {
        let mut problems = Vec::new();
        let (upstream, connector) = validate_fixed(&config, &mut problems);
        let trusted = trusted_proxies(&config.server, &mut problems);
        let audit = if problems.is_empty() {
            // The audit file is tried now so `check` reports it; `serve`
            // starts anyway and applies `audit.on_failure` per request.
            if let Err(problem) = Audit::probe(&config.audit) {
                tracing::error!(problem = %problem.message, "the audit file is not writable");
            }
            Audit::from_config(&config.audit, connector.clone())
                .map_err(|p| problems.extend(p))
                .ok()
        } else {
            problems.extend(Audit::validate(&config.audit, connector.is_some()));
            None
        };
        let base = reload::Base {
            audit: audit.as_ref(),
            connector: connector.as_ref(),
        };
        let generation = Generation::build(&config, base, None).map_err(|p| problems.extend(p));
        let (Some(upstream), Ok(generation), true) = (upstream, generation, problems.is_empty())
        else {
            return Err(ConfigErrors::new(file, problems));
        };
        let catalog = &generation.catalog;
        if catalog.enabled {
            if catalog.unrouted.is_empty() {
                tracing::info!("{}", catalog.describe());
            } else {
                tracing::warn!("{}", catalog.describe());
            }
        }
        if generation.routes.operations().is_empty() {
            tracing::warn!(
                "no [[routes]] or [catalog] operations are configured: every request will be refused with 404"
            );
        } else if config.policy.rules.is_empty() {
            tracing::warn!(
                "no [[policy.rules]] are configured: every request will be refused with 403"
            );
        }
        let generation = Arc::new(generation);
        let current: Current = Arc::new(std::sync::RwLock::new(generation.clone()));
        // Readiness asks the generation in force, whichever it is by then.
        let readiness = {
            let credentials = current.clone();
            let auth = current.clone();
            Readiness::new(vec![
                Box::new(move || {
                    if current_of(&credentials).credentials.all_readable() {
                        Ok(())
                    } else {
                        Err("a credential source is unreadable")
                    }
                }),
                Box::new(move || {
                    if current_of(&auth).auth.is_ready() {
                        Ok(())
                    } else {
                        Err("signing keys are not loaded yet")
                    }
                }),
            ])
        };
        let metrics = Metrics::new();
        {
            let current = current.clone();
            metrics.watch_jwks(
                move || current_of(&current).auth.keys().clone(),
                |store| crate::metrics::JwksCounts {
                    fetch_ok: store.stats().fetch_ok.load(Ordering::Relaxed),
                    fetch_failed: store.stats().fetch_failed.load(Ordering::Relaxed),
                    keys: store.key_count(),
                },
            );
        }
        {
            let audit = generation.audit.clone();
            metrics.watch_audit(move || crate::metrics::AuditCounts {
                sinks: audit
                    .sink_stats()
                    .into_iter()
                    .map(|(sink, c)| {
                        let counts = crate::metrics::SinkCounts {
                            written: c.written,
                            failed: c.failed,
                            dropped: c.dropped,
                            shipped: c.shipped,
                        };
                        (sink, counts)
                    })
                    .collect(),
                unshipped_bytes: audit.unshipped_bytes(),
                queued_bytes: audit.queued_bytes(),
            });
        }
        metrics.config_loaded(&generation.version, false);
        let (tx, reloads) = mpsc::unbounded_channel();
        let watched = WatchedFiles::new(reload::watched_files(file, Some(&config)));
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
                upstream,
                config: generation,
            },
            server: config.server,
            trusted,
            current,
            source: ConfigSource {
                file: file.to_path_buf(),
                adjust,
            },
            reloader: Reloader { tx },
            reloads,
            log_filter: LogFilter::default(),
            connector,
            watched,
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
        &self.parts.config.catalog
    }

    /// The caller authenticator (e.g. for `check` to fetch the JWKS once).
    pub fn authenticator(&self) -> &Arc<Authenticator> {
        &self.parts.config.auth
    }

    /// The version of the config in force (see [`crate::reload`]).
    pub fn config_version(&self) -> &str {
        &self.parts.config.version
    }

    /// The metrics served on `/metrics` (e.g. to add the span exporter's).
    pub fn metrics(&self) -> &Metrics {
        &self.parts.metrics
    }

    /// The audit trail (e.g. to reopen its file on SIGHUP).
    pub fn audit(&self) -> &Audit {
        &self.parts.config.audit
    }

    /// Asks the gateway, once serving, to reload its config.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Reports `telemetry`'s span export counts in the metrics, and lets a
    /// reload apply `telemetry.log_level` to its log filter.
    pub fn watch_telemetry(&mut self, telemetry: &crate::telemetry::Telemetry) {
        let stats = telemetry.span_stats();
        self.metrics()
            .watch_spans(move || crate::metrics::SpanCounts {
                exported: stats.exported.load(Ordering::Relaxed),
                dropped: stats.dropped.load(Ordering::Relaxed),
            });
        self.set_log_filter(telemetry.log_filter());
    }

    /// Where a reload applies `telemetry.log_level`.
    pub fn set_log_filter(&mut self, filter: LogFilter) {
        self.log_filter = filter;
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
            current,
            source,
            reloads,
            log_filter,
            connector,
            watched,
            ..
        } = self;
        let readiness = parts.readiness.clone();
        let audit = parts.config.audit.clone();
        let background = Arc::new(std::sync::Mutex::new(Background::default()));
        lock(&background).follow(&parts.config, false);
        let shipping = audit.start_shipping();

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
        // One upstream pool per worker, kept across reloads; a reload builds
        // a new stack for each worker and swaps them all at once.
        let upstreams: Vec<Upstream> = (0..workers)
            .map(|_| parts.upstream.with_own_pool())
            .collect();
        let make_stacks = {
            let parts = parts.clone();
            move |generation: &Arc<Generation>| -> Published<_> {
                upstreams
                    .iter()
                    .map(|upstream| {
                        std::sync::Mutex::new(stack::build::<Incoming>(
                            parts.with(upstream.clone(), generation.clone()),
                        ))
                    })
                    .collect()
            }
        };
        let (publish, stacks) = watch::channel(make_stacks(&parts.config));
        let mut queues = Vec::with_capacity(workers);
        let mut finished = Vec::with_capacity(workers);
        for index in 0..workers {
            let (queue, incoming) = mpsc::unbounded_channel();
            let (done, finished_rx) = oneshot::channel();
            let worker = Worker {
                stacks: stacks.clone(),
                index,
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
        drop(stacks);
        let reloading = Reloading {
            watched,
            source,
            current,
            connector,
            log_filter,
            metrics: parts.metrics.clone(),
            background: background.clone(),
        };
        drop(parts);
        let reload_task = tokio::spawn(reloading.run(reloads, make_stacks, publish));

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
        reload_task.abort();
        lock(&background).stop();
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

/// One core's worth of serving: its own stacks (one per config
/// generation), run on a single-threaded runtime.
struct Worker<S> {
    stacks: watch::Receiver<Published<S>>,
    /// This worker's stack in each published set.
    index: usize,
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
            spawn_connection(
                stream,
                Some(Peer {
                    addr: ClientAddr(peer),
                    text: ClientAddrText::of(peer.ip()),
                    trusted,
                }),
                permit,
                Stacks::Live {
                    stacks: self.stacks.clone(),
                    index: self.index,
                },
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
    peer: Option<SocketAddr>,
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
                    tracing::debug!(peer = ?peer, "no complete request head within server.header_timeout; dropping the connection");
                    return;
                }
                Check::Idle => {
                    tracing::debug!(peer = ?peer, "idle for server.idle_timeout; closing the connection");
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
                    tracing::debug!(peer = ?peer, %error, "connection ended with an error");
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
                    tracing::debug!(peer = ?peer, "a graceful close took longer than server.header_timeout; dropping the connection");
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
        .layer(
            crate::health::HealthLayer::new(readiness)
                .with_metrics(crate::metrics::CONTENT_TYPE, move || metrics.encode()),
        )
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
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        spawn_connection(
            stream,
            None,
            permit,
            Stacks::Fixed(svc.clone()),
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
    peer: Option<Peer>,
    permit: OwnedSemaphorePermit,
    stacks: Stacks<S>,
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
    let peer_addr = peer.as_ref().map(|p| p.addr.0);
    let svc = EagerService {
        stacks,
        activity: activity.clone(),
        peer,
    };
    let peer = peer_addr;
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

/// Checks the settings a reload does not apply (`[server]`,
/// `[upstream]`, `[telemetry]`), and builds the upstream.
fn validate_fixed(
    config: &GatewayConfig,
    problems: &mut Vec<ConfigProblem>,
) -> (Option<Upstream>, Option<JwksConnector>) {
    validate_server(&config.server, problems);
    problems.extend(config.telemetry.validate());
    let upstream = Upstream::from_config(&config.upstream)
        .map_err(|p| problems.extend(p))
        .ok();
    let connector = upstream.as_ref().map(Upstream::https_connector);
    (upstream, connector)
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

/// A future that, on every SIGHUP, reopens the audit file (for logrotate)
/// and reloads the config, which also re-reads file credentials. The
/// handler is installed now (SIGHUP's default action is to exit).
pub fn reload_on_sighup(
    audit: Audit,
    reloader: Reloader,
) -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    Ok(async move {
        while hup.recv().await.is_some() {
            audit.reopen();
            tracing::info!("SIGHUP: audit file reopened; reloading the config");
            reloader.request(ReloadTrigger::Signal);
        }
    })
}

/// How often the watched files are looked at: a change is applied within
/// a second or two (the settle time included), well inside the 5 s a
/// ConfigMap update may take to be noticed.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// How long a changed file must stay as it is before it is read: an editor
/// writing in place is not read half-written.
const WATCH_SETTLE: Duration = Duration::from_millis(200);

/// Background work that belongs to a generation's parts: the JWKS refresh
/// of its key store and the watcher of its credential files. Aborted when a
/// reload replaces those parts, and at shutdown.
#[derive(Debug, Default)]
struct Background {
    jwks: Option<tokio::task::JoinHandle<()>>,
    credentials: Option<tokio::task::JoinHandle<()>>,
}

impl Background {
    /// Runs the background work of `generation`'s new parts (all of them
    /// for the first generation), stopping that of the parts they replace.
    /// `reloaded`: a new key store was fetched just now, before the swap.
    fn follow(&mut self, generation: &Generation, reloaded: bool) {
        if generation.new_auth {
            if let Some(old) = self.jwks.take() {
                old.abort();
            }
            let keys = generation.auth.keys().clone();
            self.jwks = Some(if reloaded {
                tokio::spawn(keys.refresh_after_fetch())
            } else {
                tokio::spawn(keys.refresh_forever())
            });
        }
        if generation.new_credentials {
            if let Some(old) = self.credentials.take() {
                old.abort();
            }
            self.credentials = generation.credentials.watch();
        }
    }

    fn stop(&mut self) {
        for task in [self.jwks.take(), self.credentials.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The reload loop's state: where the config comes from, and what a
/// reload replaces besides the stacks.
struct Reloading {
    source: ConfigSource,
    current: Current,
    connector: Option<JwksConnector>,
    log_filter: LogFilter,
    metrics: Metrics,
    background: Arc<std::sync::Mutex<Background>>,
    watched: WatchedFiles,
}

impl Reloading {
    /// Reloads on each request and each change of a watched file, until
    /// aborted. `make_stacks` builds every worker's stack for a generation;
    /// `publish` swaps them in.
    async fn run<S, F>(
        mut self,
        mut requests: mpsc::UnboundedReceiver<ReloadRequest>,
        make_stacks: F,
        publish: watch::Sender<Published<S>>,
    ) where
        F: Fn(&Arc<Generation>) -> Published<S>,
    {
        let mut poll = tokio::time::interval(WATCH_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut requests_open = true;
        loop {
            let request = tokio::select! {
                request = requests.recv(), if requests_open => match request {
                    Some(request) => request,
                    None => {
                        requests_open = false;
                        continue;
                    }
                },
                _ = poll.tick() => {
                    if !self.watched.changed() {
                        continue;
                    }
                    // Settle: read the files once they have stopped changing.
                    let mut seen = self.watched.now();
                    for _ in 0..10 {
                        tokio::time::sleep(WATCH_SETTLE).await;
                        if !seen.changed() {
                            break;
                        }
                        seen = seen.now();
                    }
                    ReloadRequest { trigger: ReloadTrigger::File, reply: None }
                }
            };
            let outcome = self.reload(request.trigger, &make_stacks, &publish).await;
            if let Some(reply) = request.reply {
                let _ = reply.send(outcome);
            }
        }
    }

    /// One reload: read and check the config as `check` does, then swap it
    /// in whole, or keep the running one whole.
    async fn reload<S, F>(
        &mut self,
        trigger: ReloadTrigger,
        make_stacks: &F,
        publish: &watch::Sender<Published<S>>,
    ) -> ReloadOutcome
    where
        F: Fn(&Arc<Generation>) -> Published<S>,
    {
        let old = current_of(&self.current);
        // Stamped before reading: a change made while it reads is noticed.
        let seen = self.watched.now();
        let source = self.source.clone();
        let connector = self.connector.clone();
        let previous = old.clone();
        let built = tokio::task::spawn_blocking(move || prepare(&source, connector, &previous))
            .await
            .unwrap_or_else(|e| Prepared {
                watched: None,
                restart_required: Vec::new(),
                generation: Err(format!("the reload failed: {e}")),
            });
        // Looked at again only once they change again: a broken file is
        // not reloaded (and refused) every second.
        self.watched = match built.watched {
            Some(files) => seen.retarget(files),
            None => seen,
        };
        let generation = match built.generation {
            Ok(generation) if generation.new_auth => {
                // As `check` does: a new key source must be fetched before
                // it is trusted with any request.
                match generation.auth.keys().refresh().await {
                    Ok(()) => Ok(generation),
                    Err(error) => Err(ConfigErrors::new(
                        &self.source.file,
                        vec![ConfigProblem::new(
                            "auth.jwks_url",
                            format!("fetching the JWKS failed: {error}"),
                        )],
                    )
                    .to_string()),
                }
            }
            other => other,
        };
        let restart_required = built.restart_required;
        let mut record = serde_json::Map::new();
        record.insert("trigger".into(), trigger.as_str().into());
        record.insert("old_version".into(), (*old.version).into());
        let new = match generation {
            Err(error) => {
                self.metrics.config_reload_failed();
                tracing::error!(
                    trigger = trigger.as_str(),
                    version = %old.version,
                    "config reload failed; the running config stays in force:\n{error}"
                );
                record.insert("result".into(), "failed".into());
                record.insert("new_version".into(), serde_json::Value::Null);
                record.insert("error".into(), error.clone().into());
                old.audit.record_config(record);
                return ReloadOutcome {
                    version: old.version.clone(),
                    error: Some(error),
                    restart_required,
                };
            }
            Ok(generation) => Arc::new(generation),
        };
        // The swap: every request from here on is served by the new stacks.
        publish.send_replace(make_stacks(&new));
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
        lock(&self.background).follow(&new, true);
        if new.log_level != old.log_level {
            if let Err(error) = self.log_filter.set(&new.log_level) {
                tracing::warn!(%error, "telemetry.log_level not applied");
            }
        }
        self.metrics.config_loaded(&new.version, true);
        let changes = new.changes_since(&old);
        tracing::info!(
            trigger = trigger.as_str(),
            old_version = %old.version,
            new_version = %new.version,
            sections = ?changes.sections,
            rules_added = ?changes.rules.added,
            rules_removed = ?changes.rules.removed,
            rules_changed = ?changes.rules.changed,
            "config reloaded"
        );
        if !restart_required.is_empty() {
            tracing::warn!(
                keys = ?restart_required,
                "these settings changed but apply only after a restart; the running values stay"
            );
        }
        record.insert("result".into(), "applied".into());
        record.insert("new_version".into(), (*new.version).into());
        record.insert("sections_changed".into(), changes.sections.into());
        record.insert(
            "rules".into(),
            serde_json::json!({
                "added": changes.rules.added,
                "removed": changes.rules.removed,
                "changed": changes.rules.changed,
            }),
        );
        record.insert("restart_required".into(), restart_required.clone().into());
        new.audit.record_config(record);
        ReloadOutcome {
            version: new.version.clone(),
            error: None,
            restart_required,
        }
    }
}

/// What the blocking half of a reload found.
struct Prepared {
    /// The files the new config names, if it could be read.
    watched: Option<Vec<PathBuf>>,
    /// Restart-only keys that changed.
    restart_required: Vec<String>,
    /// The new generation, or every problem (naming key and file).
    generation: Result<Generation, String>,
}

/// Reads and checks the config and builds its generation (reads files).
fn prepare(
    source: &ConfigSource,
    connector: Option<JwksConnector>,
    previous: &Generation,
) -> Prepared {
    let config = match source.load() {
        Ok(config) => config,
        Err(errors) => {
            return Prepared {
                watched: None,
                restart_required: Vec::new(),
                generation: Err(errors.to_string()),
            }
        }
    };
    let watched = Some(reload::watched_files(&source.file, Some(&config)));
    let mut problems = Vec::new();
    let _ = validate_fixed(&config, &mut problems);
    let _ = trusted_proxies(&config.server, &mut problems);
    problems.extend(Audit::validate(&config.audit, connector.is_some()));
    let base = reload::Base {
        audit: Some(&previous.audit),
        connector: connector.as_ref(),
    };
    let generation =
        Generation::build(&config, base, Some(previous)).map_err(|p| problems.extend(p));
    let restart_required = reload::restart_required(&config, previous);
    let generation = match generation {
        Ok(generation) if problems.is_empty() => {
            // A reload re-reads credential files, as SIGHUP always has (kept
            // ones; new ones were read just now, and this is cheap).
            generation.credentials.refresh();
            Ok(generation)
        }
        _ => Err(ConfigErrors::new(&source.file, problems).to_string()),
    };
    Prepared {
        watched,
        restart_required,
        generation,
    }
}

/// Starts telemetry for a gateway running `config` (see [`crate::telemetry::init`]; the
/// upstream's TLS settings reach the collector), then logs the effective
/// configuration with secrets masked.
pub fn start_telemetry(
    config: &crate::config::GatewayConfig,
) -> Result<crate::telemetry::Telemetry, Vec<ConfigProblem>> {
    let tls = crate::proxy::Upstream::from_config(&config.upstream)
        .ok()
        .map(|upstream| upstream.https_connector());
    let telemetry = crate::telemetry::init(&config.telemetry, tls)?;
    tracing::info!(
        config = %config.effective(),
        version = env!("CARGO_PKG_VERSION"),
        "effective configuration"
    );
    Ok(telemetry)
}
