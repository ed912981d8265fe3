//! The floor for `bench/run.sh`: a reverse proxy with nothing but hyper.
//!
//! The gateway is built on hyper, hyper-util's pooled client and tokio. This
//! is the least a proxy on that stack does for each request: accept the
//! request, set the two headers nginx and HAProxy set in the benchmark
//! (`Authorization` and `X-Polytomic-Version`), forward it over a pooled
//! keep-alive connection and stream the response back. No authentication,
//! policy, validation, audit, tracing or metrics, and no limits: not for use
//! in front of anything. The benchmark measures it beside the gateway so the
//! gateway's own cost, and what the stack itself costs, show apart.
//!
//! ```sh
//! cargo run --release --example bare_proxy -- 127.0.0.1:9200 http://127.0.0.1:9100
//! ```

use http::{HeaderValue, Request, Uri};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;

// As the gateway's binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// Threaded as the gateway is (see `Gateway::serve`): this thread accepts and
// hands connections in turn to one single-threaded runtime per core, each
// with its own upstream pool.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        return Err("usage: bare_proxy LISTEN_ADDR UPSTREAM_URL".into());
    };
    let upstream: Uri = upstream.parse()?;
    let authority = upstream
        .authority()
        .ok_or("the upstream URL has no host")?
        .clone();
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut queues = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (queue, incoming) = mpsc::unbounded_channel();
        let authority = authority.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a worker runtime")
                .block_on(worker(incoming, authority));
        });
        queues.push(queue);
    }
    for next in (0..workers).cycle() {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        queues[next].send(stream.into_std()?)?;
    }
    Ok(())
}

async fn worker(
    mut incoming: mpsc::UnboundedReceiver<std::net::TcpStream>,
    authority: http::uri::Authority,
) {
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build_http();
    let authorization = HeaderValue::from_static("Bearer bare-proxy");
    let version = HeaderValue::from_static("2025-09-18");
    while let Some(stream) = incoming.recv().await {
        let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
            continue;
        };
        let (client, authority) = (client.clone(), authority.clone());
        let (authorization, version) = (authorization.clone(), version.clone());
        tokio::spawn(async move {
            let service = service_fn(move |mut req: Request<Incoming>| {
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(http::uri::Scheme::HTTP);
                parts.authority = Some(authority.clone());
                parts.path_and_query = req.uri().path_and_query().cloned();
                if let Ok(uri) = Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
                let headers = req.headers_mut();
                headers.insert(http::header::AUTHORIZATION, authorization.clone());
                headers.insert("x-polytomic-version", version.clone());
                client.request(req)
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
