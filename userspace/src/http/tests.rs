//! End-to-end tests of the connection manager over real sockets on 127.0.0.1: a
//! keel HTTP listener in front of hyper (or raw TCP) backends.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::ConnectionManager;
use crate::model::http::*;
use crate::model::{self, Endpoint, LbPolicy, UpstreamProtocol};
use crate::observe::stats;
use crate::upstream::Upstreams;

/// Bounds every wait in these tests.
const PATIENCE: Duration = Duration::from_secs(10);

fn manager_config(stat_prefix: &str, routes: Vec<Route>) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: stat_prefix.into(),
        codec: Codec::Auto,
        route_config: RouteConfig {
            name: "local".into(),
            virtual_hosts: vec![VirtualHost {
                name: "all".into(),
                domains: vec!["*".into()],
                routes,
                headers: HeaderMutations::default(),
            }],
            headers: HeaderMutations::default(),
        },
        http_filters: vec![HttpFilter::Router],
        access_logs: Vec::new(),
        use_remote_address: true,
        xff_num_trusted_hops: 0,
        generate_request_id: true,
        server_name: "envoy".into(),
        server_header: ServerHeader::Overwrite,
        timeouts: HttpTimeouts {
            request: None,
            stream_idle: Some(Duration::from_secs(300)),
            request_headers: None,
            connection_idle: Some(Duration::from_secs(3600)),
            max_connection_duration: None,
            max_stream_duration: None,
            drain: Duration::from_secs(5),
        },
        max_headers_count: 100,
        max_request_headers_kb: 60,
        normalize_path: false,
        merge_slashes: false,
        headers_with_underscores: UnderscoreAction::Allow,
        http2: Http2Options {
            max_concurrent_streams: 1024,
            initial_stream_window_size: 16 << 20,
            initial_connection_window_size: 24 << 20,
        },
        upgrade_types: vec!["websocket".into()],
    }
}

fn route(prefix: &str, action: RouteAction) -> Route {
    Route {
        name: format!("route{prefix}"),
        matcher: RouteMatch {
            path: PathMatch::Prefix(prefix.into()),
            case_sensitive: true,
            headers: Vec::new(),
            query_parameters: Vec::new(),
            grpc: false,
            runtime_fraction_ppm: None,
        },
        action,
        headers: HeaderMutations::default(),
    }
}

fn forward_to(cluster: &str, timeout: Option<Duration>) -> RouteAction {
    RouteAction::Forward(Box::new(ForwardAction {
        cluster: ClusterSpecifier::Cluster(cluster.into()),
        prefix_rewrite: None,
        regex_rewrite: None,
        host_rewrite: HostRewrite::None,
        timeout,
        idle_timeout: None,
        mirrors: Vec::new(),
        retry_policy: None,
    }))
}

fn cluster(name: &str, address: SocketAddr, protocol: UpstreamProtocol) -> model::Cluster {
    model::Cluster {
        name: name.into(),
        connect_timeout: Duration::from_secs(1),
        lb_policy: LbPolicy::RoundRobin,
        endpoints: vec![Endpoint { address, weight: 1 }],
        upstream_protocol: protocol,
    }
}

/// Starts a keel HTTP listener on 127.0.0.1:0; the task ends with the test's runtime.
async fn start_keel(config: HttpConnectionManager, clusters: &[model::Cluster]) -> SocketAddr {
    let upstreams = Arc::new(Upstreams::new(clusters));
    let manager = ConnectionManager::new(Arc::new(config), upstreams).expect("config compiles");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind keel");
    let address = listener.local_addr().unwrap();
    tokio::spawn(Arc::new(manager).serve(listener));
    address
}

type BackendBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A hyper backend (HTTP/1.1 and h2c) on 127.0.0.1:0:
/// - `/slow`: answers after 5 s;
/// - `/grpc`: reads the request body and trailers, answers 200 with two data frames
///   and trailers `grpc-status: 0`, `echo-trailer: <the request's x-trailer>`;
/// - anything else: 200, body = the request head ("METHOD URI VERSION" then
///   "name: value" lines).
async fn start_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(backend);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

async fn backend(request: Request<Incoming>) -> Result<Response<BackendBody>, Infallible> {
    let path = request.uri().path().to_owned();
    if path == "/slow" {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    if path == "/grpc" {
        let collected = request.into_body().collect().await.expect("request body");
        let trailer = collected
            .trailers()
            .and_then(|t| t.get("x-trailer").cloned())
            .unwrap_or(HeaderValue::from_static("none"));
        let received = collected.to_bytes();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("echo-trailer", trailer);
        let body = frames(vec![
            Frame::data(Bytes::from_static(b"reply-1;")),
            Frame::data(received),
            Frame::trailers(trailers),
        ]);
        return Ok(Response::builder()
            .header("content-type", "application/grpc")
            .body(body)
            .unwrap());
    }
    let mut head = format!("{} {} {:?}\n", request.method(), request.uri(), request.version());
    for (name, value) in request.headers() {
        head.push_str(&format!("{}: {}\n", name, value.to_str().unwrap_or("?")));
    }
    Ok(Response::builder()
        .header("connection", "keep-alive")
        .header("server", "backend")
        .body(Full::new(Bytes::from(head)).boxed())
        .unwrap())
}

/// A body of ready frames, trailers included.
struct Frames(std::collections::VecDeque<Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

fn frames(frames: Vec<Frame<Bytes>>) -> BackendBody {
    Frames(frames.into()).boxed()
}

/// Sends `request` to `address` over a new HTTP/1.1 (or h2c) connection.
async fn send(
    address: SocketAddr,
    h2: bool,
    request: Request<http_body_util::combinators::BoxBody<Bytes, Infallible>>,
) -> Response<Incoming> {
    let stream = TcpStream::connect(address).await.expect("connect to keel");
    let io = TokioIo::new(stream);
    let fut = async {
        if h2 {
            let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("h2 handshake");
            tokio::spawn(conn);
            sender.send_request(request).await.expect("h2 response")
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.expect("h1 handshake");
            tokio::spawn(conn);
            sender.send_request(request).await.expect("h1 response")
        }
    };
    tokio::time::timeout(PATIENCE, fut).await.expect("response in time")
}

fn get(uri: &str) -> http::request::Builder {
    Request::get(uri).header("host", "test.example")
}

fn empty() -> http_body_util::combinators::BoxBody<Bytes, Infallible> {
    http_body_util::Empty::new().boxed()
}

async fn text(response: Response<Incoming>) -> String {
    let body = tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await
        .expect("body in time")
        .expect("body");
    String::from_utf8(body.to_bytes().to_vec()).expect("utf-8 body")
}

/// The value of `name` in an echoed request head.
fn echoed<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
}

fn counter(name: &str) -> u64 {
    stats::global()
        .snapshot()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| match v {
            stats::StatValue::Counter(c) => c,
            stats::StatValue::Gauge(g) => g as u64,
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn http1_get_is_proxied_with_forwarding_headers() {
    let backend = start_backend().await;
    let keel = start_keel(
        manager_config("t_h1", vec![route("/", forward_to("h1_backend", Some(Duration::from_secs(15))))]),
        &[cluster("h1_backend", backend, UpstreamProtocol::Http1)],
    )
    .await;
    for round in 0..3 {
        let request = get(&format!("http://{keel}/hello?x=1"))
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-envoy-retry-on", "5xx")
            .header("connection", "keep-alive")
            .body(empty())
            .unwrap();
        let response = send(keel, false, request).await;
        assert_eq!(response.status(), StatusCode::OK, "round {round}");
        assert_eq!(response.headers()["server"], "envoy");
        assert!(response.headers().contains_key("x-envoy-upstream-service-time"));
        assert!(response.headers().get("connection").is_none());
        let head = text(response).await;
        assert!(head.starts_with("GET /hello?x=1 HTTP/1.1\n"), "{head}");
        assert_eq!(echoed(&head, "host"), Some("test.example"));
        let xff = echoed(&head, "x-forwarded-for").expect("x-forwarded-for");
        assert!(xff.starts_with("203.0.113.7,"), "{xff}");
        let appended: std::net::IpAddr = xff[12..].parse().expect("an address appended");
        assert!(!appended.is_unspecified(), "{xff}");
        assert_eq!(echoed(&head, "x-forwarded-proto"), Some("http"));
        assert_eq!(echoed(&head, "x-request-id").map(str::len), Some(36), "{head}");
        assert_eq!(echoed(&head, "x-envoy-expected-rq-timeout-ms"), Some("15000"));
        assert_eq!(echoed(&head, "x-envoy-external-address"), Some("127.0.0.1"));
        assert_eq!(echoed(&head, "x-envoy-retry-on"), None, "{head}");
    }
    assert_eq!(counter("http.t_h1.downstream_rq_2xx"), 3);
    assert_eq!(counter("cluster.h1_backend.upstream_rq_200"), 3);
    // Sequential requests reuse one pooled upstream connection.
    assert_eq!(counter("cluster.h1_backend.upstream_cx_total"), 1);
}

#[tokio::test]
async fn h2c_prior_knowledge_to_http1_and_http2_upstreams() {
    let backend = start_backend().await;
    let keel = start_keel(
        manager_config(
            "t_h2c",
            vec![
                route("/via-h2", forward_to("h2c_h2", None)),
                route("/", forward_to("h2c_h1", None)),
            ],
        ),
        &[
            cluster("h2c_h1", backend, UpstreamProtocol::Http1),
            cluster("h2c_h2", backend, UpstreamProtocol::Http2),
        ],
    )
    .await;
    let request = Request::get("http://test.example:8080/plain").body(empty()).unwrap();
    let response = send(keel, true, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let head = text(response).await;
    assert!(head.starts_with("GET /plain HTTP/1.1\n"), "{head}");
    assert_eq!(echoed(&head, "host"), Some("test.example:8080"));

    let request = Request::get("http://test.example/via-h2").body(empty()).unwrap();
    let head = text(send(keel, true, request).await).await;
    assert!(head.starts_with("GET http://test.example/via-h2 HTTP/2.0\n"), "{head}");
    assert_eq!(counter("http.t_h2c.downstream_cx_http2_total"), 2);
}

#[tokio::test]
async fn no_route_is_404_and_grpc_gets_unimplemented() {
    let keel = start_keel(
        manager_config(
            "t_nr",
            vec![route("/only", RouteAction::DirectResponse { status: 200, body: None })],
        ),
        &[],
    )
    .await;
    let response = send(keel, false, get("/elsewhere").body(empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.headers()["content-length"], "0");
    assert_eq!(counter("http.t_nr.no_route"), 1);

    let request = Request::post("http://test.example/pkg.Svc/Method")
        .header("content-type", "application/grpc")
        .body(empty())
        .unwrap();
    let response = send(keel, true, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["grpc-status"], "12");
    assert_eq!(response.headers()["content-type"], "application/grpc");
}

#[tokio::test]
async fn upstream_down_is_503_with_envoys_wording() {
    // A port nobody listens on: bind, note it, close.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let keel = start_keel(
        manager_config("t_uf", vec![route("/", forward_to("uf_down", None))]),
        &[cluster("uf_down", closed, UpstreamProtocol::Http1)],
    )
    .await;
    let response = send(keel, false, get("/").body(empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(
        text(response).await,
        "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
    );
    assert_eq!(counter("cluster.uf_down.upstream_cx_connect_fail"), 1);

    let request = Request::get("http://test.example/")
        .header("content-type", "application/grpc")
        .body(empty())
        .unwrap();
    let response = send(keel, true, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["grpc-status"], "14");
    assert_eq!(
        response.headers()["grpc-message"],
        "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
    );
}

#[tokio::test]
async fn route_timeout_is_504() {
    let backend = start_backend().await;
    let keel = start_keel(
        manager_config("t_ut", vec![route("/", forward_to("ut_slow", Some(Duration::from_millis(200))))]),
        &[cluster("ut_slow", backend, UpstreamProtocol::Http1)],
    )
    .await;
    let started = std::time::Instant::now();
    let response = send(keel, false, get("/slow").body(empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(text(response).await, "upstream request timeout");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(200) && waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(counter("cluster.ut_slow.upstream_rq_timeout"), 1);
}

#[tokio::test]
async fn direct_response_and_redirect() {
    let keel = start_keel(
        manager_config(
            "t_dr",
            vec![
                route(
                    "/direct",
                    RouteAction::DirectResponse {
                        status: 200,
                        body: Some(Bytes::from_static(b"hello")),
                    },
                ),
                route(
                    "/old",
                    RouteAction::Redirect(Redirect {
                        path: Some("/new".into()),
                        status: 301,
                        ..Redirect::default()
                    }),
                ),
            ],
        ),
        &[],
    )
    .await;
    let response = send(keel, false, get("/direct").body(empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(response.headers()["server"], "envoy");
    assert_eq!(text(response).await, "hello");

    let response = send(keel, false, get("/old?q=1").body(empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(response.headers()["location"], "http://test.example/new?q=1");
    assert_eq!(counter("http.t_dr.rq_redirect"), 1);
}

/// A raw TCP backend: reads one request head, answers 101, then echoes bytes.
async fn start_upgrade_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(head.contains("upgrade: websocket"), "{head}");
        stream
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    address
}

async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut byte))
            .await
            .expect("head in time")
            .expect("read");
        assert_eq!(n, 1, "connection closed in the head: {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn websocket_upgrade_is_spliced() {
    let backend = start_upgrade_backend().await;
    let keel = start_keel(
        manager_config("t_ws", vec![route("/", forward_to("ws_backend", None))]),
        &[cluster("ws_backend", backend, UpstreamProtocol::Http1)],
    )
    .await;
    let mut client = TcpStream::connect(keel).await.unwrap();
    client
        .write_all(b"GET /chat HTTP/1.1\r\nhost: test.example\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut client).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for message in [&b"ping"[..], b"second message"] {
        client.write_all(message).await.unwrap();
        let mut echo = vec![0u8; message.len()];
        tokio::time::timeout(PATIENCE, client.read_exact(&mut echo))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(echo, message);
    }
}

#[tokio::test]
async fn upgrade_not_configured_is_403() {
    let mut config = manager_config("t_ws403", vec![route("/", forward_to("nowhere", None))]);
    config.upgrade_types.clear();
    let keel = start_keel(config, &[]).await;
    let mut client = TcpStream::connect(keel).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut client).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 403"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
}

#[tokio::test]
async fn grpc_trailers_pass_end_to_end() {
    let backend = start_backend().await;
    let keel = start_keel(
        manager_config("t_grpc", vec![route("/", forward_to("grpc_h2", None))]),
        &[cluster("grpc_h2", backend, UpstreamProtocol::Http2)],
    )
    .await;
    let mut trailers = HeaderMap::new();
    trailers.insert("x-trailer", HeaderValue::from_static("from-client"));
    let request = Request::post("http://test.example/grpc")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(frames(vec![
            Frame::data(Bytes::from_static(b"request-body")),
            Frame::trailers(trailers),
        ]))
        .unwrap();
    let response = send(keel, true, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let collected = tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await
        .expect("in time")
        .expect("body");
    let trailers = collected.trailers().cloned().expect("response trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["echo-trailer"], "from-client");
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"reply-1;request-body"));
}
