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
//! - obeys test headers, which it also records (they are part of what it received):
//!   `x-test-status: 503` (status), `x-test-delay-ms: 200` (wait before answering),
//!   `x-test-response-header: name=value` (repeatable; adds a response header) and
//!   `x-test-grpc-status: 14` / `x-test-grpc-message: text` (gRPC trailers).
//!
//! Every request is appended to the upstream's log when it has been read completely
//! (before any delay), so a test can count what reached it with
//! [`Upstream::take_records`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
}

impl Record {
    /// The values of header `name` (lower-case), empty when absent.
    pub fn header(&self, name: &str) -> &[String] {
        self.headers.get(name).map(Vec::as_slice).unwrap_or(&[])
    }
}

type Log = Arc<Mutex<Vec<Record>>>;
type Body = BoxBody<Bytes, Infallible>;

/// A running recording upstream; stopped when dropped.
#[derive(Debug)]
pub struct Upstream {
    name: String,
    addr: SocketAddr,
    log: Log,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    /// Starts an upstream called `name` on `127.0.0.1:0`.
    pub fn start(name: &str) -> Upstream {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("upstream {name}: binding 127.0.0.1:0: {e}"));
        std_listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("upstream {name}: set_nonblocking: {e}"));
        let addr = std_listener.local_addr().expect("bound address");
        let log: Log = Arc::default();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel();
        let thread = {
            let (name, log) = (name.to_string(), log.clone());
            std::thread::Builder::new()
                .name(format!("upstream-{name}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap_or_else(|e| panic!("upstream {name}: runtime: {e}"));
                    runtime.block_on(serve(name, std_listener, log, shutdown_rx));
                })
                .unwrap_or_else(|e| panic!("spawning an upstream thread: {e}"))
        };
        Upstream {
            name: name.to_string(),
            addr,
            log,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }
    }

    /// The upstream's name (reported in every [`Record`]).
    pub fn name(&self) -> &str {
        &self.name
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
        std::mem::take(&mut *self.log.lock().expect("upstream log lock"))
    }

    /// The requests received so far, oldest first.
    pub fn records(&self) -> Vec<Record> {
        self.log.lock().expect("upstream log lock").clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    name: String,
    std_listener: std::net::TcpListener,
    log: Log,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(std_listener)
        .unwrap_or_else(|e| panic!("upstream {name}: listener: {e}"));
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("upstream {name}: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (name, log) = (name.clone(), log.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let (name, log) = (name.clone(), log.clone());
                async move { Ok::<_, Infallible>(answer(&name, peer, &log, request).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // Errors here are the client's doing (reset, half-written request); a test
            // sees them on its own side.
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    name: &str,
    peer: SocketAddr,
    log: &Log,
    mut request: Request<Incoming>,
) -> Response<Body> {
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
    };
    let first = |name: &str| record.header(name).first().cloned();
    let status = first("x-test-status").and_then(|s| s.parse::<u16>().ok());
    let delay = first("x-test-delay-ms").and_then(|s| s.parse::<u64>().ok());
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
        return response;
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
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

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
            .with_trailers(async move { Some(Ok(trailers)) })
            .boxed();
        let mut response = Response::new(body);
        let h = response.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        add_headers(h, &extra_headers);
        return response;
    }

    let mut response = Response::new(Full::new(Bytes::from(json)).boxed());
    *response.status_mut() = status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let h = response.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    add_headers(h, &extra_headers);
    response
}

fn empty() -> Body {
    Full::new(Bytes::new()).boxed()
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
