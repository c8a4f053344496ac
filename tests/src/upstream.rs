//! A recording HTTP upstream for end-to-end tests: it answers every request with a JSON
//! description of what it received, so a test can see exactly what a proxy forwarded.
//!
//! One [`Upstream`] is a hyper 1 server on `127.0.0.1:0` with its own thread and
//! single-threaded tokio runtime (so it works the same from sync and async tests). It
//! serves HTTP/1.1 and HTTP/2 by prior knowledge (h2c) on the same port, and:
//!
//! - answers a [`Record`] as `application/json`: method, path with query, version,
//!   `:authority`/`Host`, every header (name → values, in arrival order), body length,
//!   request trailers and the upstream's own name;
//! - answers gRPC (`content-type: application/grpc...`) the way a gRPC server does: 200,
//!   one length-prefixed message (the JSON record) and the trailers `grpc-status` and
//!   `grpc-message`;
//! - answers `Upgrade: websocket` with 101 and then echoes every byte it reads (unless
//!   `x-test-status` asks for another answer);
//! - answers [`HEALTH_CHECK_PATH`] (`/healthz`) with its health status (200 until
//!   [`Upstream::set_health_status`] says otherwise), counts those requests
//!   ([`Upstream::health_checks`]) and does not record them;
//! - obeys test headers, which it also records (they are part of what it received):
//!   `x-test-status: 503` (status), `x-test-delay-ms: 200` (wait before answering),
//!   `x-test-each-delay-ms: 300` (a delay that the scoping below does not remove),
//!   `x-test-reset: before-headers` (close the connection, or reset the HTTP/2 stream,
//!   instead of answering; after any delay) or `after-headers` (send the status, headers
//!   and a first body chunk, then break off), `x-test-response-header: name=value`
//!   (repeatable; adds a response header) and `x-test-grpc-status: 14` /
//!   `x-test-grpc-message: text` (gRPC trailers);
//! - scopes them: `x-test-only-on: a,b` applies status, delay and reset only on the
//!   upstreams named (the others answer normally), and `x-test-fail-first: N` applies
//!   them only to the first N requests with the same key (the `x-test-key` header, else
//!   the path) counted across all upstreams made with the same [`Shared`] state (one
//!   proxy's upstreams): "503 twice, then 200" is `x-test-status: 503` plus
//!   `x-test-fail-first: 2`;
//! - can be stopped ([`Upstream::stop`]: the listener closes, open connections are cut)
//!   and started again on the same port ([`Upstream::resume`]), and can be told a default
//!   status for requests without `x-test-status` ([`Upstream::set_default_status`]).
//!
//! Every request is appended to the upstream's log when it has been read completely
//! (before any delay), so a test can count what reached it with
//! [`Upstream::take_records`].

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The path an upstream answers as a health check (not recorded).
pub const HEALTH_CHECK_PATH: &str = "/healthz";

/// What an upstream received in one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The name of the upstream that answered (which endpoint was hit).
    pub upstream: String,
    /// Request method.
    pub method: String,
    /// Path with query, as received.
    pub path: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// The `Host` header (HTTP/1.1) or `:authority` (HTTP/2); `None` if neither came.
    pub authority: Option<String>,
    /// Every header, lower-case name → values in arrival order.
    pub headers: BTreeMap<String, Vec<String>>,
    /// Length of the request body in bytes.
    pub body_length: usize,
    /// Request trailers (gRPC clients rarely send any).
    pub trailers: BTreeMap<String, Vec<String>>,
    /// The address the request came from (the proxy's upstream connection).
    pub peer: String,
    /// When it arrived, as a number that grows across all upstreams of the process
    /// (orders the tries of one request over several upstreams); not sent back.
    #[serde(skip)]
    pub seq: u64,
}

/// Numbers records in arrival order across every upstream.
static ARRIVALS: AtomicU64 = AtomicU64::new(0);

impl Record {
    /// The values of header `name` (lower-case), empty when absent.
    pub fn header(&self, name: &str) -> &[String] {
        self.headers.get(name).map(Vec::as_slice).unwrap_or(&[])
    }
}

type Log = Arc<Mutex<Vec<Record>>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

/// State shared by a group of upstreams (those of one proxy): how many requests each
/// `x-test-fail-first` key has seen.
#[derive(Debug, Default)]
pub struct Shared {
    tries: Mutex<HashMap<String, u32>>,
}

impl Shared {
    /// A fresh state, to give to [`Upstream::start_shared`].
    pub fn new() -> Arc<Shared> {
        Arc::default()
    }

    /// Counts one request for `key`; returns how many came before it.
    fn count(&self, key: &str) -> u32 {
        let mut tries = self.tries.lock().expect("shared upstream state lock");
        let seen = tries.entry(key.to_string()).or_insert(0);
        *seen += 1;
        *seen - 1
    }
}

/// What a running upstream reads on every request and a test may change.
#[derive(Debug)]
struct Settings {
    name: String,
    log: Log,
    shared: Arc<Shared>,
    /// Status of health-check answers.
    health_status: AtomicU16,
    /// Status for requests without `x-test-status` (0: 200).
    default_status: AtomicU16,
    /// Health checks received.
    health_checks: AtomicU64,
}

/// What the serving task is told to do.
#[derive(Debug)]
enum Command {
    /// Close the listener and cut every open connection.
    Stop(std::sync::mpsc::Sender<()>),
    /// Listen again on the same address.
    Resume(std::sync::mpsc::Sender<Result<(), String>>),
}

/// A running recording upstream; stopped when dropped.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    settings: Arc<Settings>,
    commands: Option<tokio::sync::mpsc::UnboundedSender<Command>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    /// Starts an upstream called `name` on `127.0.0.1:0`, with state of its own.
    pub fn start(name: &str) -> Upstream {
        Upstream::start_shared(name, Shared::new())
    }

    /// Starts an upstream called `name` on `127.0.0.1:0` that counts
    /// `x-test-fail-first` keys in `shared` (shared with other upstreams).
    pub fn start_shared(name: &str, shared: Arc<Shared>) -> Upstream {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("upstream {name}: binding 127.0.0.1:0: {e}"));
        std_listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("upstream {name}: set_nonblocking: {e}"));
        let addr = std_listener.local_addr().expect("bound address");
        let settings = Arc::new(Settings {
            name: name.to_string(),
            log: Arc::default(),
            shared,
            health_status: AtomicU16::new(200),
            default_status: AtomicU16::new(0),
            health_checks: AtomicU64::new(0),
        });
        let (commands_tx, commands_rx) = tokio::sync::mpsc::unbounded_channel();
        let thread = {
            let settings = settings.clone();
            std::thread::Builder::new()
                .name(format!("upstream-{name}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap_or_else(|e| panic!("upstream {}: runtime: {e}", settings.name));
                    runtime.block_on(serve(settings, addr, std_listener, commands_rx));
                })
                .unwrap_or_else(|e| panic!("spawning an upstream thread: {e}"))
        };
        Upstream {
            addr,
            settings,
            commands: Some(commands_tx),
            thread: Some(thread),
        }
    }

    /// The upstream's name (reported in every [`Record`]).
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The requests received so far, oldest first, emptying the log.
    pub fn take_records(&self) -> Vec<Record> {
        std::mem::take(&mut *self.settings.log.lock().expect("upstream log lock"))
    }

    /// The requests received so far, oldest first.
    pub fn records(&self) -> Vec<Record> {
        self.settings.log.lock().expect("upstream log lock").clone()
    }

    /// Answers health checks ([`HEALTH_CHECK_PATH`]) with `status` from now on.
    pub fn set_health_status(&self, status: u16) {
        self.settings.health_status.store(status, Ordering::SeqCst);
    }

    /// Answers requests without `x-test-status` with `status` (`None`: 200).
    pub fn set_default_status(&self, status: Option<u16>) {
        self.settings
            .default_status
            .store(status.unwrap_or(0), Ordering::SeqCst);
    }

    /// How many health checks it has answered.
    pub fn health_checks(&self) -> u64 {
        self.settings.health_checks.load(Ordering::SeqCst)
    }

    /// Stops listening and cuts every open connection; returns when done.
    pub fn stop(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.send(Command::Stop(tx));
        rx.recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("upstream {}: stop: {e}", self.name()));
    }

    /// Listens again on the same port after [`stop`](Self::stop).
    pub fn resume(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.send(Command::Resume(tx));
        rx.recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("upstream {}: resume: {e}", self.name()))
            .unwrap_or_else(|e| panic!("upstream {}: resume: {e}", self.name()));
    }

    fn send(&self, command: Command) {
        self.commands
            .as_ref()
            .expect("commands channel")
            .send(command)
            .unwrap_or_else(|_| panic!("upstream {}: its thread has ended", self.name()));
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        // Closing the channel ends the serving task.
        drop(self.commands.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn listen(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    // std sets SO_REUSEADDR on Unix, so the port can be bound again while old
    // connections linger in TIME_WAIT.
    let listener = std::net::TcpListener::bind(addr).map_err(|e| format!("binding {addr}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("set_nonblocking: {e}"))?;
    tokio::net::TcpListener::from_std(listener).map_err(|e| format!("listener: {e}"))
}

async fn accept(
    listener: &Option<tokio::net::TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

async fn serve(
    settings: Arc<Settings>,
    addr: SocketAddr,
    std_listener: std::net::TcpListener,
    mut commands: tokio::sync::mpsc::UnboundedReceiver<Command>,
) {
    let name = settings.name.clone();
    let mut listener = Some(
        tokio::net::TcpListener::from_std(std_listener)
            .unwrap_or_else(|e| panic!("upstream {name}: listener: {e}")),
    );
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            command = commands.recv() => {
                match command {
                    None => return,
                    Some(Command::Stop(reply)) => {
                        listener = None;
                        connections.abort_all();
                        while connections.join_next().await.is_some() {}
                        let _ = reply.send(());
                    }
                    Some(Command::Resume(reply)) => {
                        let mut result = Ok(());
                        if listener.is_none() {
                            // A few tries: the port may take a moment to be free again.
                            for _ in 0..50 {
                                result = listen(addr).map(|l| listener = Some(l));
                                if result.is_ok() {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                        let _ = reply.send(result);
                    }
                }
                continue;
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = accept(&listener) => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("upstream {name}: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let settings = settings.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let settings = settings.clone();
                async move { answer(&settings, peer, request).await }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // Errors here are the client's doing (reset, half-written request) or a
            // reset asked for by `x-test-reset`; a test sees them on its own side.
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The error that makes hyper cut a connection (HTTP/1.1) or reset a stream (HTTP/2):
/// what `x-test-reset` asks for.
#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reset asked for by x-test-reset")
    }
}

impl std::error::Error for Reset {}

/// A body that sends one chunk, waits a little (so that the head and the chunk are
/// flushed) and then fails (`x-test-reset: after-headers`).
struct BrokenBody {
    chunk: Option<Bytes>,
    pause: Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for BrokenBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(chunk) = self.chunk.take() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match self.pause.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(Reset)))),
            Poll::Pending => Poll::Pending,
        }
    }
}

async fn answer(
    settings: &Settings,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<Body>, Reset> {
    if request.uri().path() == HEALTH_CHECK_PATH {
        let _ = request.into_body().collect().await;
        settings.health_checks.fetch_add(1, Ordering::SeqCst);
        let mut response = Response::new(full(Bytes::from_static(b"health\n")));
        *response.status_mut() =
            StatusCode::from_u16(settings.health_status.load(Ordering::SeqCst))
                .unwrap_or(StatusCode::OK);
        return Ok(response);
    }
    answer_recorded(settings, peer, request).await
}

async fn answer_recorded(
    settings: &Settings,
    peer: SocketAddr,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, Reset> {
    let name = settings.name.as_str();
    let log = &settings.log;
    let headers = header_lists(request.headers());
    let authority = request
        .headers()
        .get(http::header::HOST)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .or_else(|| request.uri().authority().map(|a| a.to_string()));
    let mut record = Record {
        upstream: name.to_string(),
        method: request.method().to_string(),
        path: request
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_else(|| request.uri().to_string()),
        version: format!("{:?}", request.version()),
        authority,
        headers,
        body_length: 0,
        trailers: BTreeMap::new(),
        peer: peer.to_string(),
        seq: ARRIVALS.fetch_add(1, Ordering::SeqCst),
    };
    let first = |name: &str| record.header(name).first().cloned();
    // Whether status, delay and reset apply to this request on this upstream.
    let mut misbehave = first("x-test-only-on")
        .is_none_or(|names| names.split(',').map(str::trim).any(|n| n == name));
    if misbehave {
        if let Some(limit) = first("x-test-fail-first").and_then(|s| s.trim().parse::<u32>().ok()) {
            let key = first("x-test-key").unwrap_or_else(|| record.path.clone());
            misbehave = settings.shared.count(&key) < limit;
        }
    }
    let default_status = match settings.default_status.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    };
    let status = first("x-test-status")
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| misbehave)
        .or(default_status);
    let delay = first("x-test-delay-ms")
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|_| misbehave);
    let reset = first("x-test-reset").filter(|_| misbehave);
    let each_delay = first("x-test-each-delay-ms").and_then(|s| s.parse::<u64>().ok());
    let grpc_status = first("x-test-grpc-status").unwrap_or_else(|| "0".into());
    let grpc_message = first("x-test-grpc-message");
    let extra_headers: Vec<(String, String)> = record
        .header("x-test-response-header")
        .iter()
        .filter_map(|v| v.split_once('='))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let is_websocket = record
        .header("upgrade")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("websocket"));
    let is_grpc = record
        .header("content-type")
        .iter()
        .any(|v| v.starts_with("application/grpc"));

    // A websocket request with `x-test-status` is answered like any other request
    // (an upstream that refuses the upgrade).
    if is_websocket && status.is_none() {
        let on_upgrade = hyper::upgrade::on(&mut request);
        log.lock().expect("upstream log lock").push(record);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 4096];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() || io.flush().await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        });
        let mut response = Response::new(empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = response.headers_mut();
        h.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        );
        add_headers(h, &extra_headers);
        return Ok(response);
    }

    match request.into_body().collect().await {
        Ok(collected) => {
            if let Some(trailers) = collected.trailers() {
                record.trailers = header_lists(trailers);
            }
            record.body_length = collected.to_bytes().len();
        }
        Err(e) => {
            record
                .trailers
                .insert("x-upstream-body-error".into(), vec![e.to_string()]);
        }
    }
    let json = serde_json::to_vec_pretty(&record).expect("a record serializes");
    log.lock().expect("upstream log lock").push(record);
    if let Some(ms) = delay.into_iter().chain(each_delay).max() {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let broken_body = match reset.as_deref().map(str::trim) {
        Some("before-headers") => return Err(Reset),
        Some("after-headers") => true,
        _ => false,
    };

    if is_grpc {
        let mut message = BytesMut::with_capacity(json.len() + 5);
        message.put_u8(0);
        message.put_u32(json.len() as u32);
        message.put_slice(&json);
        let mut trailers = HeaderMap::new();
        trailers.insert(
            "grpc-status",
            HeaderValue::from_str(&grpc_status).unwrap_or(HeaderValue::from_static("0")),
        );
        if let Some(text) = grpc_message.and_then(|m| HeaderValue::from_str(&m).ok()) {
            trailers.insert("grpc-message", text);
        }
        let body = Full::new(message.freeze())
            .map_err(|never| match never {})
            .with_trailers(async move { Some(Ok(trailers)) })
            .boxed();
        let mut response = Response::new(body);
        let h = response.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        add_headers(h, &extra_headers);
        return Ok(response);
    }

    let body = if broken_body {
        BrokenBody {
            chunk: Some(Bytes::from(json)),
            pause: Box::pin(tokio::time::sleep(Duration::from_millis(100))),
        }
        .boxed()
    } else {
        full(Bytes::from(json))
    };
    let mut response = Response::new(body);
    *response.status_mut() = status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let h = response.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    add_headers(h, &extra_headers);
    Ok(response)
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn empty() -> Body {
    full(Bytes::new())
}

fn add_headers(headers: &mut HeaderMap, extra: &[(String, String)]) {
    for (name, value) in extra {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
}

/// Header map → name → values in arrival order (values as lossy UTF-8).
pub fn header_lists(headers: &HeaderMap) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        out.entry(name.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    out
}
