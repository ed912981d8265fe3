//! Shared test harness: a gateway in process or as the real binary, real
//! upstream servers, and a plain HTTP client, all over loopback sockets.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use polytomic_gateway::{config, Gateway};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

/// The partner key every test gateway injects; a canary for leak checks.
pub const PARTNER_KEY: &str = "pk_live_CANARY_partner_7f3a9c";
/// The organization API key ([credentials.acme]) that catalog tests inject
/// for everything but the organization and user operations; a canary too.
pub const ORG_KEY: &str = "ok_live_CANARY_orgkey_4e81d0";

/// `[credentials.acme]` and a `[catalog]` sending organization and user
/// operations with the partner key and everything else with [`ORG_KEY`], as
/// the shipped config does. `TestDir::config` adds no test routes with it.
pub fn catalog_section(dir: &TestDir) -> String {
    format!(
        "[credentials.acme]\nfile = {:?}\n\n[catalog]\n\n[[catalog.credentials]]\noperations = [\"organization.*\", \"users.*\"]\ncredential = \"partner\"\n\n[[catalog.credentials]]\noperations = [\"*\"]\ncredential = \"acme\"\n",
        dir.path("org-key").display().to_string()
    )
}
/// The issuer and audience test tokens carry and test gateways expect.
pub const ISSUER: &str = "https://idp.test.invalid";
pub const AUDIENCE: &str = "polytomic-gateway";

/// A fixture file from tests/fixtures/jwt.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A JWK fixture as JSON (`kid` = its name).
pub fn jwk(name: &str) -> serde_json::Value {
    serde_json::from_slice(&fixture(&format!("{name}.jwk.json"))).unwrap()
}

/// A JWKS document holding these fixture keys.
pub fn jwks(names: &[&str]) -> String {
    let keys: Vec<_> = names.iter().map(|n| jwk(n)).collect();
    serde_json::json!({ "keys": keys }).to_string()
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Valid claims for `sub` in `teams`, expiring in an hour.
pub fn claims(sub: &str, teams: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "teams": teams,
        "iat": now(), "exp": now() + 3600,
    })
}

/// Signs `claims` with fixture key `key` (`rsa-*`, `ec-*`, `ed-*`) as `alg`,
/// with `kid` = the key's name.
pub fn sign(key: &str, alg: jsonwebtoken::Algorithm, claims: &serde_json::Value) -> String {
    sign_with_kid(key, alg, Some(key), claims)
}

pub fn sign_with_kid(
    key: &str,
    alg: jsonwebtoken::Algorithm,
    kid: Option<&str>,
    claims: &serde_json::Value,
) -> String {
    let pem = fixture(&format!("{key}.pem"));
    let encoding = match key.split('-').next() {
        Some("rsa") => jsonwebtoken::EncodingKey::from_rsa_pem(&pem),
        Some("ec") => jsonwebtoken::EncodingKey::from_ec_pem(&pem),
        _ => jsonwebtoken::EncodingKey::from_ed_pem(&pem),
    }
    .unwrap();
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid.map(str::to_owned);
    sent_token(jsonwebtoken::encode(&header, claims, &encoding).unwrap())
}

/// Every distinct token this test binary made or sent, for the leak check
/// in [`assert_gateway_error`]: whichever token a test sent, it is in here.
static SENT_TOKENS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<String>>> =
    std::sync::LazyLock::new(Default::default);

/// Remembers `token` as sent (`sign` calls this for every token it makes,
/// `send` for every `Authorization` value) and gives it back.
fn sent_token(token: String) -> String {
    let mut tokens = SENT_TOKENS.lock().unwrap_or_else(|p| p.into_inner());
    if !tokens.contains(&token) {
        tokens.insert(token.clone());
    }
    token
}

/// The parts of a token that would give it away if echoed: the whole token,
/// and its payload and signature segments (a header alone identifies little).
fn token_fragments(token: &str) -> impl Iterator<Item = &str> {
    std::iter::once(token)
        .chain(token.split('.').skip(1))
        .filter(|s| s.len() >= 16)
}

/// A valid RS256 token for alice of team platform, made once per test binary.
pub fn token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        sign(
            "rsa-a",
            jsonwebtoken::Algorithm::RS256,
            &claims("alice@corp", &["platform"]),
        )
    })
}

/// `Bearer <token()>`.
pub fn bearer() -> String {
    format!("Bearer {}", token())
}

/// Every organization route, plus an explicit catch-all for other paths.
pub const TEST_ROUTES: &str = r#"
[[routes]]
operation = "organization.current"
methods = ["GET"]
path = "/api/organization"

[[routes]]
operation = "organizations.list"
methods = ["GET"]
path = "/api/organizations"

[[routes]]
operation = "organizations.create"
methods = ["POST"]
path = "/api/organizations"
schema = "SCHEMAS/organization-create.json"

[[routes]]
operation = "organizations.get"
methods = ["GET"]
path = "/api/organizations/{id}"

[[routes]]
operation = "organizations.update"
methods = ["PATCH", "PUT"]
path = "/api/organizations/{id}"
schema = "SCHEMAS/organization-update.json"

[[routes]]
operation = "organizations.delete"
methods = ["DELETE"]
path = "/api/organizations/{id}"

[[routes]]
operation = "api.other"
methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
path = "/api/{*rest}"
"#;

/// `routes` with `SCHEMAS` replaced by the repository's schemas/ directory.
pub fn routes_with_schemas(routes: &str) -> String {
    routes.replace(
        "SCHEMAS",
        &format!("{}/schemas", env!("CARGO_MANIFEST_DIR")),
    )
}

/// The platform team may do everything (the default test token is platform's).
pub const TEST_POLICY: &str = r#"
[[policy.rules]]
name = "platform-all"
teams = ["platform"]
allow = ["*"]
"#;

/// A temp dir holding the partner key file and a config file.
pub struct TestDir {
    pub dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("partner-key"), format!("{PARTNER_KEY}\n")).unwrap();
        std::fs::write(dir.path().join("org-key"), format!("{ORG_KEY}\n")).unwrap();
        std::fs::write(
            dir.path().join("jwks.json"),
            jwks(&["rsa-a", "ec-a", "ed-a"]),
        )
        .unwrap();
        Self { dir }
    }

    /// An `[auth]` section trusting the fixture keys in `jwks.json`, plus `extra` lines.
    pub fn auth_section(&self, extra: &str) -> String {
        format!(
            "[auth]\nissuers = [{ISSUER:?}]\naudiences = [{AUDIENCE:?}]\nalgorithms = [\"RS256\", \"ES256\"]\njwks_file = {:?}\n{extra}\n",
            self.path("jwks.json").display().to_string()
        )
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a config for `upstream_url`: listen on port 0, the partner key
    /// from a file, the fixture keys for `[auth]` unless `extra` has its own,
    /// then `extra` TOML appended (sections must not repeat).
    pub fn config(&self, upstream_url: &str, extra: &str) -> PathBuf {
        let key = self.path("partner-key");
        let mut text = format!(
            "[credentials.partner]\nfile = {key:?}\n\n{extra}\n",
            key = key.display().to_string()
        );
        if !extra.contains("[auth]") {
            text.push_str(&self.auth_section(""));
        }
        if !extra.contains("[[routes]]") && !extra.contains("[catalog]") {
            text.push_str(&routes_with_schemas(TEST_ROUTES));
        }
        if !extra.contains("[policy]") && !extra.contains("[[policy.rules]]") {
            text.push_str(TEST_POLICY);
        }
        if !extra.contains("[audit]") {
            text.push_str(&format!(
                "\n[audit]\nsinks = [\"file\"]\npath = {:?}\ndurability = \"fsync\"\n",
                self.path("audit.jsonl").display().to_string()
            ));
        }
        let text = if extra.contains("[upstream]") {
            text.replace("[upstream]", &format!("[upstream]\nurl = {upstream_url:?}"))
        } else {
            format!("{text}\n[upstream]\nurl = {upstream_url:?}\n")
        };
        let text = if text.contains("[server]") {
            text.replace(
                "[server]",
                "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"",
            )
        } else {
            format!("{text}\n[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n")
        };
        let path = self.path("gateway.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// A gateway running in this process; shuts down when dropped.
pub struct InProcess {
    pub addr: SocketAddr,
    /// The admin listener (`/metrics`).
    pub admin_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    dir: Option<TestDir>,
    /// Reloads the config from its file.
    pub reloader: polytomic_gateway::server::Reloader,
}

impl InProcess {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    /// Starts draining and waits for `serve` to return (which writes every
    /// audit record); returns the temp dir, which holds the audit file.
    pub async fn shutdown(mut self) -> TestDir {
        let _ = self.shutdown.take().map(|tx| tx.send(()));
        within("the gateway to drain and stop", self.task.take().unwrap())
            .await
            .unwrap()
            .unwrap();
        self.dir.take().expect("the dir is kept until shutdown")
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        let _ = self.shutdown.take().map(|tx| tx.send(()));
    }
}

/// Loads a config the way the binary does and serves it on port 0.
pub async fn start_gateway(upstream_url: &str, extra: &str) -> InProcess {
    let dir = TestDir::new();
    let path = dir.config(upstream_url, extra);
    start_gateway_from(dir, &path).await
}

pub async fn start_gateway_from(dir: TestDir, path: &Path) -> InProcess {
    let config = config::load(path).unwrap_or_else(|e| panic!("{e}"));
    let gateway = Gateway::build(config, path).unwrap_or_else(|e| panic!("{e}"));
    let reloader = gateway.reloader();
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(gateway.serve(listener, admin, async {
        let _ = rx.await;
    }));
    InProcess {
        addr,
        admin_addr,
        shutdown: Some(tx),
        task: Some(task),
        dir: Some(dir),
        reloader,
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

/// A plain HTTP/1.1 client with no pooling surprises.
pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An h2c (prior knowledge) client.
pub fn h2c_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// How long a test waits for anything outside itself (a response, a line,
/// a process exit, a notification) before it fails saying what did not
/// happen. `cargo test` has no per-test timeout: an unbounded await would
/// hang CI instead of failing.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Awaits `future` for at most [`PATIENCE`]; panics naming `what` if it
/// does not finish.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {PATIENCE:?} waiting for {what}"),
    }
}

/// Sends `req` and returns the status, headers and whole body.
pub async fn send(
    client: &TestClient,
    req: Request<Full<Bytes>>,
) -> (http::response::Parts, Bytes) {
    let what = format!("the response to {} {}", req.method(), req.uri());
    for value in req.headers().get_all("authorization") {
        let value = String::from_utf8_lossy(value.as_bytes());
        let token = value.split_once(' ').map_or(&*value, |(_, t)| t);
        sent_token(token.trim().to_owned());
    }
    within(&what, async {
        let response = client.request(req).await.expect("request failed");
        let (parts, body) = response.into_parts();
        (parts, body.collect().await.expect("body").to_bytes())
    })
    .await
}

/// A GET carrying a valid caller token (which the gateway must strip).
pub fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url)
        .header("authorization", bearer())
        .body(Full::default())
        .unwrap()
}

pub fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

/// Asserts a gateway error body: status, key, content type, and no secret.
pub fn assert_gateway_error(parts: &http::response::Parts, body: &[u8], status: u16, key: &str) {
    assert_eq!(
        parts.status.as_u16(),
        status,
        "{}",
        String::from_utf8_lossy(body)
    );
    assert_eq!(parts.headers["content-type"], "application/json");
    let value = json(body);
    assert_eq!(value["status"], status);
    assert_eq!(value["key"], key);
    assert!(value["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(value["metadata"].is_object());
    let text = String::from_utf8_lossy(body);
    let headers = format!("{:?}", parts.headers);
    for output in [&*text, &headers] {
        for key in [PARTNER_KEY, ORG_KEY] {
            assert!(!output.contains(key), "a credential leaked: {output}");
        }
        let tokens = SENT_TOKENS.lock().unwrap_or_else(|p| p.into_inner());
        for token in tokens.iter() {
            if let Some(fragment) = token_fragments(token).find(|f| output.contains(f)) {
                panic!(
                    "a caller token leaked ({}…): {output}",
                    &fragment[..fragment.len().min(12)]
                );
            }
        }
    }
}

/// Serves `handler` on a fresh loopback port (HTTP/1.1 and h2c).
pub async fn spawn_upstream<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<UpstreamBody>> + Send + 'static,
{
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve_upstream(listener, handler);
    addr
}

/// Serves `handler` (HTTP/1.1 and h2c) on `listener`, bound beforehand:
/// say, a [`ClosedPort`] that starts listening when the test wants the
/// upstream to come up.
pub fn serve_upstream<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<UpstreamBody>> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

/// An upstream that is not HTTP: it reads the request head, writes `then`
/// as raw bytes and drops the connection, which is a reset after the
/// request was sent (`then` empty) or a response cut off (a head promising
/// more body than `then` holds). What a well-behaved server cannot do.
pub async fn raw_upstream(then: &'static [u8]) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 8192];
            let _ = stream.read(&mut buf).await;
            let _ = stream.write_all(then).await;
            // Dropped: a reset or a cut, depending on what was written.
        }
    });
    addr
}

/// An upstream that accepts connections and holds them, never reading or
/// answering, until `notify_one` on what it returns.
pub async fn silent_upstream() -> (SocketAddr, std::sync::Arc<tokio::sync::Notify>) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = std::sync::Arc::new(tokio::sync::Notify::new());
    let stopped = stop.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            tokio::select! {
                Ok((stream, _)) = listener.accept() => held.push(stream),
                () = stopped.notified() => break,
            }
        }
    });
    (addr, stop)
}

pub type UpstreamBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

pub fn upstream_body(bytes: impl Into<Bytes>) -> UpstreamBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A loopback port with nothing listening on it, reserved for as long as
/// this lives: the socket is bound but not listening, so a connection to it
/// is refused, and no other test can be given the port meanwhile.
pub struct ClosedPort {
    socket: tokio::net::TcpSocket,
    pub port: u16,
}

impl ClosedPort {
    /// Starts listening on the reserved port (the upstream "comes up").
    pub fn listen(self) -> TcpListener {
        self.socket.listen(128).unwrap()
    }
}

pub fn closed_port() -> ClosedPort {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let port = socket.local_addr().unwrap().port();
    ClosedPort { socket, port }
}

/// A body of `len` zero bytes produced in 64 KiB chunks, never held whole.
pub struct Zeros {
    pub remaining: u64,
}

impl http_body::Body for Zeros {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        const CHUNK: &[u8] = &[0u8; 64 * 1024];
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(CHUNK.len() as u64);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            &CHUNK[..n as usize],
        )))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }
}

/// A FIFO that is already full, for a sink that stalls: whatever opens it
/// for writing blocks on its first write, until the test drains it (or
/// forever). Holds the read end, so opening it for writing succeeds.
pub struct StalledFifo {
    pub path: PathBuf,
    reader: tokio::net::unix::pipe::Receiver,
    /// The write end the test filled it through (non-blocking).
    _filler: std::fs::File,
}

impl StalledFifo {
    /// Makes the FIFO `path` and fills its buffer. Needs a runtime.
    pub fn new(path: PathBuf) -> Self {
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        let reader = tokio::net::unix::pipe::OpenOptions::new()
            .open_receiver(&path)
            .unwrap();
        // O_NONBLOCK (Linux), so a full pipe says so instead of blocking.
        let mut filler = std::os::unix::fs::OpenOptionsExt::custom_flags(
            std::fs::OpenOptions::new().write(true),
            0o4000,
        )
        .open(&path)
        .unwrap();
        // Full to the last byte: a write of any size must block.
        let chunk = [b'#'; 4096];
        let mut size = chunk.len();
        loop {
            match std::io::Write::write(&mut filler, &chunk[..size]) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if size == 1 {
                        break;
                    }
                    size /= 2;
                }
                Err(e) => panic!("filling the FIFO: {e}"),
            }
        }
        Self {
            path,
            reader,
            _filler: filler,
        }
    }

    /// A blocking write end, e.g. for a child's standard output.
    pub fn writer(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .unwrap()
    }

    /// Reads everything written until every write end is closed, in the
    /// background: the stalled sink comes back.
    pub fn drain(self) -> tokio::task::JoinHandle<Vec<u8>> {
        let Self {
            mut reader,
            _filler,
            ..
        } = self;
        drop(_filler);
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut all = Vec::new();
            let _ = reader.read_to_end(&mut all).await;
            all
        })
    }
}

/// The gateway binary, started as a child process.
pub struct Binary {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    /// The admin listener, when the ready line names it (`admin=ADDR`).
    pub admin_addr: Option<SocketAddr>,
    lines: mpsc::UnboundedReceiver<String>,
    pub stdout: Vec<String>,
}

pub fn binary_path() -> &'static str {
    env!("CARGO_BIN_EXE_polytomic-gateway")
}

impl Binary {
    /// Runs `serve --config path` and waits until it is listening.
    pub async fn serve(path: &Path, envs: &[(&str, &str)]) -> Self {
        let mut cmd = tokio::process::Command::new(binary_path());
        cmd.arg("serve").arg("--config").arg(path);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Self::start(cmd, "gateway listening").await
    }

    /// Like [`Binary::serve`], but standard output goes to `stdout` (a
    /// FIFO nobody reads, say) instead of to the test.
    pub async fn serve_with_stdout(
        path: &Path,
        envs: &[(&str, &str)],
        stdout: std::fs::File,
    ) -> Self {
        let mut cmd = tokio::process::Command::new(binary_path());
        cmd.arg("serve").arg("--config").arg(path);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Self::start_with(cmd, "gateway listening", Some(stdout)).await
    }

    /// Spawns `cmd` and waits for a stderr line containing `ready`, which
    /// must name the listen address as `listen=ADDR`. Logs at `info` unless
    /// `cmd` sets `RUST_LOG` itself.
    pub async fn start(cmd: tokio::process::Command, ready: &str) -> Self {
        Self::start_with(cmd, ready, None).await
    }

    /// [`Binary::start`], with standard output to `stdout` when given
    /// (unread by the test), else read like stderr.
    async fn start_with(
        mut cmd: tokio::process::Command,
        ready: &str,
        stdout: Option<std::fs::File>,
    ) -> Self {
        if !cmd.as_std().get_envs().any(|(k, _)| k == "RUST_LOG") {
            cmd.env("RUST_LOG", "info");
        }
        let read_stdout = stdout.is_none();
        cmd.stdin(Stdio::null())
            .stdout(stdout.map_or_else(Stdio::piped, Stdio::from))
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn gateway binary");
        let (tx, lines) = mpsc::unbounded_channel();
        let mut streams = vec![
            Box::pin(child.stderr.take().unwrap()) as Pin<Box<dyn tokio::io::AsyncRead + Send>>
        ];
        if read_stdout {
            streams.push(Box::pin(child.stdout.take().unwrap()));
        }
        for stream in streams {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut binary = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_addr: None,
            lines,
            stdout: Vec::new(),
        };
        let line = binary.wait_for_line(ready).await;
        // A JSON log line (the default format) or a pretty one (`listen=ADDR`).
        let field = |name: &str| match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(json) => json[name].as_str().map(str::to_owned),
            Err(_) => line
                .split(&format!(" {name}="))
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_owned),
        };
        let addr = field("listen").unwrap_or_else(|| panic!("no listen address in {line:?}"));
        binary.addr = addr.parse().unwrap();
        binary.admin_addr = field("admin").map(|a| a.parse().unwrap());
        binary
    }

    /// Waits (bounded) for an output line containing `needle`, including
    /// lines already read: stdout and stderr interleave in any order.
    pub async fn wait_for_line(&mut self, needle: &str) -> String {
        if let Some(line) = self.stdout.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let found = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = self.lines.recv().await {
                self.stdout.push(line);
                if self.stdout.last().is_some_and(|l| l.contains(needle)) {
                    return true;
                }
            }
            false
        })
        .await;
        if found == Ok(true) {
            return self.stdout.last().cloned().unwrap_or_default();
        }
        panic!(
            "no line containing {needle:?}; output so far:\n{}",
            self.stdout.join("\n")
        )
    }

    /// Every output line so far, after waiting (bounded) for the process
    /// to close its output, which it does when it exits.
    pub async fn collect_output(&mut self) -> String {
        let lines = &mut self.lines;
        let stdout = &mut self.stdout;
        let closed = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.recv().await {
                stdout.push(line);
            }
        })
        .await;
        if closed.is_err() {
            panic!(
                "the process did not close its output within {PATIENCE:?}; output so far:\n{}",
                self.stdout.join("\n")
            );
        }
        self.stdout.join("\n")
    }

    /// Waits (bounded) for the process to exit and returns its status.
    pub async fn exit(&mut self) -> std::process::ExitStatus {
        match tokio::time::timeout(PATIENCE, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "the process did not exit within {PATIENCE:?}; output so far:\n{}",
                self.stdout.join("\n")
            ),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        let admin = self
            .admin_addr
            .expect("the ready line names the admin address");
        format!("http://{admin}{path}")
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Sends a signal by name (TERM, HUP, ...) with the system `kill`.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// A `/proc/PID/status` field in KiB, e.g. `VmRSS` or `VmHWM`.
    pub fn proc_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }
}
