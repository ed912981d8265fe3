//! The pieces between the OpenTelemetry SDK and the collector: an HTTP
//! client for the OTLP exporter that runs on the gateway's Tokio runtime,
//! and the counting that feeds `gateway_trace_spans_total`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::Context;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;

use super::SpanStats;
use crate::client::JwksConnector;

/// A collector's answer larger than this is an error (it is a tiny protobuf).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The OTLP/HTTP exporter's client: hyper with the gateway's TLS settings.
///
/// The SDK's batch processor exports from its own thread, outside any Tokio
/// runtime, so each request is spawned onto the runtime the client was made
/// on and awaited through its join handle.
#[derive(Debug, Clone)]
pub struct HyperExportClient {
    client: Client<JwksConnector, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl HyperExportClient {
    /// A client over `connector`; each exchange is bounded by `timeout`.
    /// Must be called inside a Tokio runtime.
    pub fn new(connector: JwksConnector, timeout: Duration) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            runtime: tokio::runtime::Handle::current(),
            timeout,
        }
    }
}

#[async_trait::async_trait]
impl HttpClient for HyperExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let exchange = async move {
            let response = client.request(request.map(Full::new)).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, HttpError>(Response::from_parts(parts, body))
        };
        self.runtime
            .spawn(async move {
                tokio::time::timeout(timeout, exchange)
                    .await
                    .map_err(|_| HttpError::from("the OTLP collector did not answer in time"))?
            })
            .await?
    }
}

/// Counts what the wrapped exporter sends and what it fails to send.
#[derive(Debug)]
pub struct CountingExporter<E> {
    inner: E,
    stats: Arc<SpanStats>,
    /// Whether the last export worked: failures are logged once per outage.
    healthy: AtomicBool,
}

impl<E> CountingExporter<E> {
    /// Wraps `inner`, counting into `stats`.
    pub fn new(inner: E, stats: Arc<SpanStats>) -> Self {
        Self {
            inner,
            stats,
            healthy: AtomicBool::new(true),
        }
    }
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                self.stats.exported.fetch_add(spans, Ordering::Relaxed);
                if !self.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!("span export recovered");
                }
            }
            Err(error) => {
                self.stats.failed.fetch_add(spans, Ordering::Relaxed);
                self.stats.dropped.fetch_add(spans, Ordering::Relaxed);
                if self.healthy.swap(false, Ordering::Relaxed) {
                    tracing::warn!(%error, spans, "span export failed; spans are dropped until the collector answers");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Bounds the spans waiting for export, counting those it turns away.
///
/// The batch processor drops spans silently when its queue is full; this
/// gate sits in front with the same bound, counting spans still in a batch
/// being exported as waiting too, so it turns spans away first and every
/// drop is counted.
#[derive(Debug)]
pub struct BoundedProcessor<P> {
    inner: P,
    stats: Arc<SpanStats>,
    capacity: u64,
}

impl<P> BoundedProcessor<P> {
    /// Gates `inner` at `capacity` waiting spans.
    pub fn new(inner: P, stats: Arc<SpanStats>, capacity: u64) -> Self {
        Self {
            inner,
            stats,
            capacity,
        }
    }
}

impl<P: SpanProcessor> SpanProcessor for BoundedProcessor<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let stats = &self.stats;
        let done = stats.exported.load(Ordering::Relaxed) + stats.failed.load(Ordering::Relaxed);
        if stats.queued.load(Ordering::Relaxed).saturating_sub(done) >= self.capacity {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        stats.queued.fetch_add(1, Ordering::Relaxed);
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
