//! What observability costs per request: the server span, the child spans,
//! the request metrics and the per-request log line.
//!
//! ```sh
//! cargo bench --bench telemetry
//! ```
//!
//! One request, `GET /api/organizations/{id}` by a caller of team
//! `platform`, goes through `TelemetryLayer` and `MetricsLayer`, then the
//! real `RouteLayer` and
//! `PolicyLayer` (built from config, as the gateway builds them), then a
//! handler that opens and closes an `upstream` span and notes Polytomic's
//! 200, as the proxy does. An `auth` span is opened and closed before
//! routing, as authentication does. Everything completes without I/O, so the
//! figure is CPU time per request.
//!
//! Four set-ups:
//!
//! - `no_subscriber`: no log subscriber and no tracer provider, so every
//!   span and log line is a no-op; what remains is the layers and the
//!   metrics.
//! - `gateway_no_export`: the gateway's own subscriber
//!   (`telemetry::subscriber`, JSON logs at `info`, written to
//!   `io::sink`), with a global tracer provider that samples everything and
//!   exports nowhere: the default `otlp_endpoint = ""`.
//! - `gateway_unsampled`: the same with `sample_ratio = 0`, so spans are
//!   made but not recorded.
//! - `gateway_no_request_log`: the same as `gateway_no_export` with
//!   `log_level = "warn"`, so the per-request `info` line is not written.
//!
//! Exporting adds a batch processor's queue push per span, measured under
//! load in the README, not here.

use std::convert::Infallible;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use http::{Request, Response};
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use polytomic_gateway::auth::Principal;
use polytomic_gateway::body::{full, GatewayBody};
use polytomic_gateway::metrics::{Metrics, MetricsLayer};
use polytomic_gateway::policy::{Policy, PolicyConfig, PolicyLayer};
use polytomic_gateway::routes::{RouteConfig, RouteLayer, RouteTable};
use polytomic_gateway::telemetry::{self, RequestTrace, TelemetryConfig, TelemetryLayer};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

const ORG_ID: &str = "248df4b7-aa70-47b8-a036-33ac447e668d";

type Stack = tower::util::BoxCloneService<Request<()>, Response<GatewayBody>, Infallible>;

fn stack() -> Stack {
    let routes: Vec<RouteConfig> = serde_json::from_value(serde_json::json!([
        {"operation": "organizations.get", "methods": ["GET"], "path": "/api/organizations/{id}"},
        {"operation": "organizations.update", "methods": ["PUT", "PATCH"], "path": "/api/organizations/{id}"},
    ]))
    .unwrap();
    let table = Arc::new(RouteTable::from_config(&routes, &|_| true).unwrap());
    let policy: PolicyConfig = serde_json::from_value(serde_json::json!({
        "rules": [{"name": "platform-all", "teams": ["platform"], "allow": ["*"]}]
    }))
    .unwrap();
    let policy = Arc::new(Policy::from_config(&policy, table.operations()).unwrap());
    let principal = Principal::new("alice@corp", vec!["platform".into()]);
    let svc = ServiceBuilder::new()
        // The per-request line on, as with `telemetry.request_log = true`:
        // this measures what it costs.
        .layer(TelemetryLayer::new().request_log(true))
        .layer(MetricsLayer::new(Metrics::new()))
        .map_request(move |mut req: Request<()>| {
            let _auth =
                RequestTrace::child_of(req.extensions(), "auth", SpanKind::Internal, Vec::new);
            polytomic_gateway::notes::record(req.extensions(), |n| {
                n.principal = Some(principal.clone())
            });
            req.extensions_mut().insert(principal.clone());
            req
        })
        .layer(RouteLayer::new(table, None))
        .layer(PolicyLayer::new(policy))
        .service(service_fn(|req: Request<()>| async move {
            let _upstream =
                RequestTrace::child_of(req.extensions(), "upstream", SpanKind::Client, Vec::new);
            polytomic_gateway::notes::record(req.extensions(), |n| {
                n.upstream_status = Some(200);
                n.upstream_duration = Some(std::time::Duration::from_micros(300));
            });
            Ok::<_, Infallible>(Response::new(full(r#"{"data":{}}"#)))
        }));
    tower::util::BoxCloneService::new(svc)
}

fn request() -> Request<()> {
    Request::get(format!("/api/organizations/{ORG_ID}"))
        .header("x-request-id", "5cd818ee-dec7-48fd-b36f-a0662bed8510")
        .header("user-agent", "bench/1.0")
        .header("host", "127.0.0.1:8080")
        .body(())
        .unwrap()
}

fn one(svc: &mut Stack) {
    let response = svc
        .ready()
        .now_or_never()
        .unwrap()
        .unwrap()
        .call(request())
        .now_or_never()
        .expect("completes without I/O")
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Installs a global tracer provider sampling `ratio` (exporting nowhere)
/// and returns the gateway's log subscriber at `log_level`. Build the stack
/// afterwards: `TelemetryLayer` takes its tracer when made.
fn gateway_subscriber(ratio: f64, log_level: &str) -> impl tracing::Subscriber + Send + Sync {
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .build();
    opentelemetry::global::set_tracer_provider(provider);
    let config = TelemetryConfig {
        sample_ratio: ratio,
        log_level: log_level.into(),
        ..TelemetryConfig::default()
    };
    telemetry::subscriber(&config, std::io::sink, false)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("request");
    let mut svc = stack();
    group.bench_function("no_subscriber", |b| b.iter(|| one(&mut svc)));
    for (name, ratio, level) in [
        ("gateway_no_export", 1.0, "info"),
        ("gateway_unsampled", 0.0, "info"),
        ("gateway_no_request_log", 1.0, "warn"),
    ] {
        let subscriber = gateway_subscriber(ratio, level);
        let mut svc = stack();
        tracing::subscriber::with_default(subscriber, || {
            group.bench_function(name, |b| b.iter(|| one(&mut svc)));
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
