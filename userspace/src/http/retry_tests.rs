//! End-to-end tests of retries, per-try timeouts, body replay and circuit breakers:
//! keel in-process on 127.0.0.1 in front of scripted hyper backends that answer
//! 503, reset, stall or answer gRPC errors on chosen requests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::tests::{
    cluster, counter, empty, forward_action, frames, get, manager_config, route, send,
    start_keel_manager, text, PATIENCE,
};
use crate::model::breakers::Thresholds;
use crate::model::http::*;
use crate::model::{self, Endpoint, UpstreamProtocol};

/// What a scripted backend does with one request.
#[derive(Debug, Clone)]
enum Reply {
    /// Answers this status (body "ok" for 200).
    Status(u16),
    /// Waits, then answers this status.
    Delay(Duration, u16),
    /// Closes the connection without an answer.
    Reset,
    /// gRPC: a trailers-only response with this `grpc-status` (0: a normal
    /// response with `grpc-status: 0` in the trailers).
    Grpc(u32),
    /// 200 with one body frame, then nothing (the body never ends).
    StallBody,
}

/// One request as the backend saw it.
#[derive(Debug, Clone)]
struct Seen {
    attempt_count: Option<String>,
    /// `x-envoy-retry-on` reached the upstream.
    retry_on_header: bool,
    expected_timeout: Option<String>,
    body: Bytes,
}

struct Backend {
    address: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Backend {
    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A backend (HTTP/1.1 and h2c) whose n-th request gets `script[n]` (the last entry
/// for every later one). It reads every request body whole first.
async fn start_scripted(script: Vec<Reply>) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let script = Arc::new(script);
    let recorded = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (seen, count, script) = (
                Arc::clone(&recorded),
                Arc::clone(&count),
                Arc::clone(&script),
            );
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let (seen, count, script) =
                        (Arc::clone(&seen), Arc::clone(&count), Arc::clone(&script));
                    async move {
                        let n = count.fetch_add(1, Ordering::SeqCst);
                        let reply = script[n.min(script.len() - 1)].clone();
                        let header = |name: &str| {
                            request
                                .headers()
                                .get(name)
                                .map(|v| v.to_str().unwrap().to_owned())
                        };
                        let attempt_count = header("x-envoy-attempt-count");
                        let retry_on_header = header("x-envoy-retry-on").is_some();
                        let expected_timeout = header("x-envoy-expected-rq-timeout-ms");
                        let body = request.into_body().collect().await.map(|b| b.to_bytes());
                        seen.lock().unwrap().push(Seen {
                            attempt_count,
                            retry_on_header,
                            expected_timeout,
                            body: body.unwrap_or_default(),
                        });
                        reply_with(reply).await
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Backend { address, seen }
}

type ReplyBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn reply_with(reply: Reply) -> Result<Response<ReplyBody>, std::io::Error> {
    let status = match reply {
        Reply::Status(status) => status,
        Reply::Delay(delay, status) => {
            tokio::time::sleep(delay).await;
            status
        }
        Reply::Reset => return Err(std::io::Error::other("scripted reset")),
        Reply::StallBody => {
            return Ok(Response::new(BodyExt::boxed(Stall { sent: false })));
        }
        Reply::Grpc(0) => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let body = frames(vec![
                Frame::data(Bytes::from_static(b"\0\0\0\0\0")),
                Frame::trailers(trailers),
            ]);
            return Ok(Response::builder()
                .header("content-type", "application/grpc")
                .body(body)
                .unwrap());
        }
        Reply::Grpc(code) => {
            return Ok(Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", code.to_string())
                .body(empty())
                .unwrap())
        }
    };
    let body = if status == 200 { "ok" } else { "scripted" };
    Ok(Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap())
}

/// A body that sends one frame and then stalls forever.
struct Stall {
    sent: bool,
}

impl hyper::body::Body for Stall {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent {
            return std::task::Poll::Pending;
        }
        self.sent = true;
        std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"first")))))
    }
}

fn retry_policy(retry_on: &str, num_retries: u32) -> RetryPolicy {
    RetryPolicy {
        retry_on: retry_on.split(',').map(String::from).collect(),
        num_retries,
        conditions: RetryOn::parse_list(retry_on, false),
        // Short back-offs keep the tests quick.
        back_off: RetryBackOff {
            base_interval: Duration::from_millis(1),
            max_interval: Duration::from_millis(5),
        },
        ..RetryPolicy::default()
    }
}

fn retrying(cluster: &str, policy: RetryPolicy) -> ForwardAction {
    let mut forward = forward_action(cluster);
    forward.retry_policy = Some(policy);
    forward.options.include_request_attempt_count = true;
    forward.options.include_attempt_count_in_response = true;
    forward
}

fn stat(cluster: &str, name: &str) -> u64 {
    counter(&format!("cluster.{cluster}.{name}"))
}

fn access_log(config: &mut HttpConnectionManager, name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("keel-retry-{name}-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    config.access_logs = vec![AccessLog {
        sink: AccessLogSink::File(path.clone()),
        format: AccessLogFormat::Text(
            "%RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_REQUEST_ATTEMPT_COUNT% %RESPONSE_CODE_DETAILS%\n"
                .into(),
        ),
        filter: None,
    }];
    path
}

fn read_log(manager: &super::ConnectionManager, path: &std::path::Path) -> String {
    manager.flush_access_logs();
    let log = std::fs::read_to_string(path).expect("access log written");
    let _ = std::fs::remove_file(path);
    log
}

#[tokio::test]
async fn a_503_is_retried_and_the_retry_succeeds() {
    let backend = start_scripted(vec![Reply::Status(503), Reply::Status(200)]).await;
    let name = "rt_5xx";
    let mut config = manager_config(
        name,
        vec![route(
            "/",
            RouteAction::Forward(Box::new(retrying(name, retry_policy("5xx", 1)))),
        )],
    );
    let log = access_log(&mut config, name);
    let (keel, manager) = start_keel_manager(
        config,
        &[cluster(name, backend.address, UpstreamProtocol::Http1)],
    )
    .await;
    let response = send(keel, false, get("/").body(empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-envoy-attempt-count"], "2");
    assert_eq!(text(response).await, "ok");
    let seen = backend.requests();
    assert_eq!(seen.len(), 2, "one try and one retry");
    assert_eq!(seen[0].attempt_count.as_deref(), Some("1"));
    assert_eq!(seen[1].attempt_count.as_deref(), Some("2"));
    assert_eq!(stat(name, "upstream_rq_retry"), 1);
    assert_eq!(stat(name, "upstream_rq_retry_success"), 1);
    assert_eq!(stat(name, "upstream_rq_retry_backoff_exponential"), 1);
    assert_eq!(stat(name, "upstream_rq_503"), 1);
    assert_eq!(stat(name, "upstream_rq_200"), 1);
    assert_eq!(read_log(&manager, &log), "200 - 2 via_upstream\n");
}

#[tokio::test]
async fn exhausted_retries_return_the_last_response_with_urx() {
    let backend = start_scripted(vec![Reply::Status(503)]).await;
    let name = "rt_exhausted";
    let mut config = manager_config(
        name,
        vec![route(
            "/",
            RouteAction::Forward(Box::new(retrying(name, retry_policy("5xx", 2)))),
        )],
    );
    let log = access_log(&mut config, name);
    let (keel, manager) = start_keel_manager(
        config,
        &[cluster(name, backend.address, UpstreamProtocol::Http1)],
    )
    .await;
    let response = send(keel, false, get("/").body(empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["x-envoy-attempt-count"], "3");
    assert_eq!(text(response).await, "scripted", "the upstream's own 503");
    assert_eq!(backend.requests().len(), 3);
    assert_eq!(stat(name, "upstream_rq_retry"), 2);
    assert_eq!(stat(name, "upstream_rq_retry_limit_exceeded"), 1);
    assert_eq!(stat(name, "upstream_rq_retry_success"), 0);
    assert_eq!(read_log(&manager, &log), "503 URX 3 via_upstream\n");
}

#[tokio::test]
async fn a_reset_is_retried_and_a_non_retriable_status_is_not() {
    let backend = start_scripted(vec![Reply::Reset, Reply::Status(404)]).await;
    let name = "rt_reset";
    let config = manager_config(
        name,
        vec![route(
            "/",
            RouteAction::Forward(Box::new(retrying(name, retry_policy("reset", 3)))),
        )],
    );
    let (keel, _) = start_keel_manager(
        config,
        &[cluster(name, backend.address, UpstreamProtocol::Http1)],
    )
    .await;
    let response = send(keel, false, get("/").body(empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(backend.requests().len(), 2, "404 is not retried on reset");
    assert_eq!(stat(name, "upstream_rq_retry_success"), 1);
}

#[tokio::test]
async fn per_try_timeout_then_success_within_the_route_timeout() {
    let backend = start_scripted(vec![
        Reply::Delay(Duration::from_secs(3), 200),
        Reply::Status(200),
    ])
    .await;
    let name = "rt_per_try";
    let mut policy = retry_policy("5xx", 1);
    policy.per_try_timeout = Some(Duration::from_millis(200));
    let mut forward = retrying(name, policy);
    forward.timeout = Some(Duration::from_secs(2));
    let mut config = manager_config(
        name,
        vec![route("/", RouteAction::Forward(Box::new(forward)))],
    );
    let log = access_log(&mut config, name);
    let (keel, manager) = start_keel_manager(
        config,
        &[cluster(name, backend.address, UpstreamProtocol::Http1)],
    )
    .await;
    let started = std::time::Instant::now();
    let response = send(keel, false, get("/").body(empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    text(response).await;
    assert_eq!(stat(name, "upstream_rq_per_try_timeout"), 1);
    assert_eq!(stat(name, "upstream_rq_timeout"), 0);
    assert_eq!(read_log(&manager, &log), "200 - 2 via_upstream\n");

    // Every try times out: 504 with UT once the retries are spent.
    let slow = start_scripted(vec![Reply::Delay(Duration::from_secs(3), 200)]).await;
    let name = "rt_per_try_all";
    let mut policy = retry_policy("5xx", 1);
    policy.per_try_timeout = Some(Duration::from_millis(100));
    let mut config = manager_config(
        name,
        vec![route(
            "/",
            RouteAction::Forward(Box::new(retrying(name, policy))),
        )],
    );
    let log = access_log(&mut config, name);
    let (keel, manager) = start_keel_manager(
        config,
        &[cluster(name, slow.address, UpstreamProtocol::Http1)],
    )
    .await;
    let response = send(keel, false, get("/").body(empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(text(response).await, "upstream request timeout");
    assert_eq!(stat(name, "upstream_rq_per_try_timeout"), 2);
    assert_eq!(
        read_log(&manager, &log),
        "504 URX,UT 2 upstream_per_try_timeout\n"
    );
}

#[tokio::test]
async fn the_route_timeout_covers_every_try() {
    let backend = start_scripted(vec![Reply::Delay(Duration::from_millis(300), 503)]).await;
    let name = "rt_global";
    let mut forward = retrying(name, retry_policy("5xx", 10));
    forward.timeout = Some(Duration::from_millis(700));
    let config = manager_config(
        name,
        vec![route("/", RouteAction::Forward(Box::new(forward)))],
    );
    let (keel, _) = start_keel_manager(
        config,
        &[cluster(name, backend.address, UpstreamProtocol::Http1)],
    )
    .await;
    let started = std::time::Instant::now();
    let response = send(keel, false, get("/").body(empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(700) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
    assert_eq!(backend.requests().len(), 3, "tries at 0, ~300 and ~600 ms");
    assert_eq!(stat(name, "upstream_rq_timeout"), 1);
}

#[tokio::test]
async fn connect_failure_is_retried_on_another_host_with_previous_hosts() {
    let backend = start_scripted(vec![Reply::Status(200)]).await;
    // A port nobody listens on.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let name = "rt_connect";
    let mut policy = retry_policy("connect-failure", 1);
    policy.previous_hosts = true;
    policy.host_selection_retry_max_attempts = 10;
    let config = manager_config(
        name,
        vec![route(
            "/",
            RouteAction::Forward(Box::new(retrying(name, policy))),
        )],
    );
    let mut c = cluster(name, backend.address, UpstreamProtocol::Http1);
    // The dead host takes most picks: without previous_hosts, a retry would often
    // go back to it.
    c.endpoints = vec![
        Endpoint {
            address: dead,
            weight: 5,
        },
        Endpoint {
            address: backend.address,
            weight: 1,
        },
    ];
    let (keel, _) = start_keel_manager(config, &[c]).await;
    for _ in 0..6 {
        let response = send(keel, false, get("/").body(empty()).unwrap()).await;
        assert_eq!(response.status(), StatusCode::OK);
        text(response).await;
    }
    assert!(stat(name, "upstream_cx_connect_fail") >= 4);
    assert_eq!(
        stat(name, "upstream_rq_retry"),
        stat(name, "upstream_cx_connect_fail")
    );
    assert_eq!(backend.requests().len(), 6);
}

#[tokio::test]
async fn connect_failures_exhausted_say_retried_as_envoy_does() {
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let name = "rt_dead";
    let mut config = manager_config(
        name,
        vec![route(
            "/",
            RouteAction::Forward(Box::new(retrying(name, retry_policy("connect-failure", 1)))),
        )],
    );
    let log = access_log(&mut config, name);
    let (keel, manager) =
        start_keel_manager(config, &[cluster(name, dead, UpstreamProtocol::Http1)]).await;
    let response = send(keel, false, get("/").body(empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["x-envoy-attempt-count"], "2");
    // Envoy 1.40's words, flags and details for the same case.
    assert_eq!(
        text(response).await,
        "upstream connect error or disconnect/reset before headers. retried and the latest \
         reset reason: remote connection failure"
    );
    assert_eq!(
        read_log(&manager, &log),
        "503 URX,UF 2 upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}\n"
    );
    assert_eq!(stat(name, "upstream_rq_retry_limit_exceeded"), 1);
}

#[tokio::test]
async fn a_post_body_is_replayed_to_the_retry() {
    for (name, protocol) in [
        ("rt_replay_h2", UpstreamProtocol::Http2),
        ("rt_replay_h1", UpstreamProtocol::Http1),
    ] {
        post_body_is_replayed(name, protocol).await;
    }
}

async fn post_body_is_replayed(name: &str, protocol: UpstreamProtocol) {
    let backend = start_scripted(vec![Reply::Status(503), Reply::Status(200)]).await;
    let config = manager_config(
        name,
        vec![route(
            "/",
            RouteAction::Forward(Box::new(retrying(name, retry_policy("5xx", 1)))),
        )],
    );
    let (keel, _) = start_keel_manager(config, &[cluster(name, backend.address, protocol)]).await;
    let payload = Bytes::from(
        (0..100_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let request = Request::post("/upload")
        .header("host", "test.example")
        .body(Full::new(payload.clone()).boxed())
        .unwrap();
    let response = send(keel, false, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    text(response).await;
    let seen = backend.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body, payload);
    assert_eq!(seen[1].body, payload, "the retry gets the same body");
}

#[tokio::test]
async fn a_body_over_the_buffer_limit_is_not_retried() {
    let backend = start_scripted(vec![Reply::Status(503), Reply::Status(200)]).await;
    let name = "rt_too_big";
    let mut forward = retrying(name, retry_policy("5xx", 3));
    forward.options.buffer_limit = Some(1024);
    let config = manager_config(
        name,
        vec![route("/", RouteAction::Forward(Box::new(forward)))],
    );
    let (keel, _) = start_keel_manager(
        config,
        &[cluster(name, backend.address, UpstreamProtocol::Http1)],
    )
    .await;
    let payload = Bytes::from(vec![b'x'; 64 * 1024]);
    let request = Request::post("/upload")
        .header("host", "test.example")
        .body(Full::new(payload.clone()).boxed())
        .unwrap();
    let response = send(keel, false, request).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let seen = backend.requests();
    assert_eq!(seen.len(), 1, "not retried");
    assert_eq!(
        seen[0].body.len(),
        payload.len(),
        "streamed whole all the same"
    );
    assert_eq!(stat(name, "retry_or_shadow_abandoned"), 1);
    assert_eq!(stat(name, "upstream_rq_retry"), 0);
}

#[tokio::test]
async fn the_listener_buffer_limit_applies_when_the_route_sets_none() {
    let backend = start_scripted(vec![Reply::Status(503), Reply::Status(200)]).await;
    let name = "rt_listener_limit";
    let forward = retrying(name, retry_policy("5xx", 3));
    assert_eq!(forward.options.buffer_limit, None);
    let config = manager_config(
        name,
        vec![route("/", RouteAction::Forward(Box::new(forward)))],
    );
    let upstreams = Arc::new(crate::upstream::Upstreams::new(&[cluster(
        name,
        backend.address,
        UpstreamProtocol::Http1,
    )]));
    // As `listener::start` builds it for `per_connection_buffer_limit_bytes: 1024`.
    let manager = Arc::new(
        super::ConnectionManager::new(Arc::new(config), upstreams)
            .expect("config compiles")
            .with_buffer_limit(1024),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let keel = listener.local_addr().unwrap();
    tokio::spawn(Arc::clone(&manager).serve(listener));
    let request = Request::post("/upload")
        .header("host", "test.example")
        .body(Full::new(Bytes::from(vec![b'x'; 8 * 1024])).boxed())
        .unwrap();
    let response = send(keel, false, request).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        backend.requests().len(),
        1,
        "over the listener's limit: not retried"
    );
    assert_eq!(stat(name, "retry_or_shadow_abandoned"), 1);
}

#[tokio::test]
async fn max_requests_overflow_is_503_uo() {
    let backend = start_scripted(vec![Reply::Delay(Duration::from_millis(500), 200)]).await;
    let name = "rt_breaker";
    let mut config = manager_config(
        name,
        vec![route(
            "/",
            RouteAction::Forward(Box::new(forward_action(name))),
        )],
    );
    let log = access_log(&mut config, name);
    let mut c = cluster(name, backend.address, UpstreamProtocol::Http1);
    c.circuit_breakers.default = Thresholds {
        max_requests: 1,
        ..Thresholds::default()
    };
    let (keel, manager) = start_keel_manager(config, &[c]).await;
    let first = tokio::spawn(async move {
        let response = send(keel, false, get("/").body(empty()).unwrap()).await;
        (response.status(), text(response).await)
    });
    // Let the first request take the only slot.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        counter(&format!("cluster.{name}.circuit_breakers.default.rq_open")),
        1,
        "the breaker is open while the first request is in flight"
    );
    let response = send(keel, false, get("/").body(empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["x-envoy-overloaded"], "true");
    assert_eq!(
        text(response).await,
        "upstream connect error or disconnect/reset before headers. reset reason: overflow"
    );
    let (status, _) = tokio::time::timeout(PATIENCE, first)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        stat(name, "upstream_rq_active_overflow"),
        1,
        "Envoy 1.40's counter"
    );
    assert_eq!(stat(name, "upstream_rq_pending_overflow"), 0);
    assert_eq!(
        counter(&format!("cluster.{name}.circuit_breakers.default.rq_open")),
        0
    );
    let log = read_log(&manager, &log);
    assert!(
        log.contains("503 UO 1 upstream_reset_before_response_started{overflow}\n"),
        "{log}"
    );
}

#[tokio::test]
async fn max_retries_overflow_keeps_the_response_and_flags_uo() {
    let backend = start_scripted(vec![Reply::Status(503)]).await;
    let name = "rt_retry_overflow";
    let mut config = manager_config(
        name,
        vec![route(
            "/",
            RouteAction::Forward(Box::new(retrying(name, retry_policy("5xx", 3)))),
        )],
    );
    let log = access_log(&mut config, name);
    let mut c = cluster(name, backend.address, UpstreamProtocol::Http1);
    c.circuit_breakers.default = Thresholds {
        max_retries: 0,
        ..Thresholds::default()
    };
    let (keel, manager) = start_keel_manager(config, &[c]).await;
    let response = send(keel, false, get("/").body(empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    text(response).await;
    assert_eq!(backend.requests().len(), 1);
    assert_eq!(stat(name, "upstream_rq_retry_overflow"), 1);
    assert_eq!(read_log(&manager, &log), "503 UO 1 via_upstream\n");
}

#[tokio::test]
async fn grpc_unavailable_is_retried() {
    let backend = start_scripted(vec![Reply::Grpc(14), Reply::Grpc(0)]).await;
    let name = "rt_grpc";
    let config = manager_config(
        name,
        vec![route(
            "/",
            RouteAction::Forward(Box::new(retrying(
                name,
                retry_policy("unavailable,cancelled", 1),
            ))),
        )],
    );
    let (keel, _) = start_keel_manager(
        config,
        &[cluster(name, backend.address, UpstreamProtocol::Http2)],
    )
    .await;
    let request = Request::post("/pkg.Service/Method")
        .header("host", "test.example")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")).boxed())
        .unwrap();
    let response = send(keel, true, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("grpc-status").is_none());
    let collected = tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(backend.requests().len(), 2);
    assert_eq!(stat(name, "upstream_rq_retry"), 1);
}

#[tokio::test]
async fn requests_without_a_policy_are_not_retried() {
    let backend = start_scripted(vec![Reply::Status(503), Reply::Status(200)]).await;
    let name = "rt_none";
    let config = manager_config(
        name,
        vec![route(
            "/",
            RouteAction::Forward(Box::new(forward_action(name))),
        )],
    );
    let (keel, _) = start_keel_manager(
        config,
        &[cluster(name, backend.address, UpstreamProtocol::Http1)],
    )
    .await;
    let response = send(keel, false, get("/").body(empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().get("x-envoy-attempt-count").is_none());
    assert_eq!(backend.requests().len(), 1);
}

#[tokio::test]
async fn max_requests_per_connection_closes_pooled_connections() {
    let backend = start_scripted(vec![Reply::Status(200)]).await;
    let name = "rt_max_rq_cx";
    let config = manager_config(
        name,
        vec![route(
            "/",
            RouteAction::Forward(Box::new(forward_action(name))),
        )],
    );
    let mut c: model::Cluster = cluster(name, backend.address, UpstreamProtocol::Http1);
    c.pool.max_requests_per_connection = Some(2);
    let (keel, _) = start_keel_manager(config, &[c]).await;
    for _ in 0..5 {
        let response = send(keel, false, get("/").body(empty()).unwrap()).await;
        assert_eq!(response.status(), StatusCode::OK);
        text(response).await;
        // Let the connection go back to the pool.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stat(name, "upstream_cx_total"), 3, "2 + 2 + 1 requests");
    assert_eq!(stat(name, "upstream_cx_max_requests"), 2);
}

#[tokio::test]
async fn idle_upstream_connections_are_closed() {
    let backend = start_scripted(vec![Reply::Status(200)]).await;
    let name = "rt_idle_cx";
    let mut c = cluster(name, backend.address, UpstreamProtocol::Http2);
    c.pool.idle_timeout = Some(Duration::from_millis(200));
    let keel = keel_in_front_of(c).await;
    let response = send(keel, false, get("/").body(empty()).unwrap()).await;
    text(response).await;
    assert_eq!(counter(&format!("cluster.{name}.upstream_cx_active")), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(stat(name, "upstream_cx_idle_timeout"), 1);
    assert_eq!(counter(&format!("cluster.{name}.upstream_cx_active")), 0);
}

#[tokio::test]
async fn http2_opens_a_second_connection_when_streams_run_out() {
    let backend = start_scripted(vec![Reply::Delay(Duration::from_millis(300), 200)]).await;
    let name = "rt_h2_streams";
    let config = manager_config(
        name,
        vec![route(
            "/",
            RouteAction::Forward(Box::new(forward_action(name))),
        )],
    );
    let mut c = cluster(name, backend.address, UpstreamProtocol::Http2);
    c.pool.max_concurrent_streams = 2;
    let (keel, _) = start_keel_manager(config, &[c]).await;
    let requests: Vec<_> = (0..5)
        .map(|_| {
            tokio::spawn(async move {
                let response = send(keel, false, get("/").body(empty()).unwrap()).await;
                let status = response.status();
                text(response).await;
                status
            })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        stat(name, "upstream_cx_http2_total"),
        3,
        "5 streams, 2 per connection"
    );
}

#[tokio::test]
async fn requests_wait_for_a_connection_at_max_connections_and_overflow_past_max_pending() {
    let backend = start_scripted(vec![Reply::Delay(Duration::from_millis(300), 200)]).await;
    let name = "rt_pending";
    let config = manager_config(
        name,
        vec![route(
            "/",
            RouteAction::Forward(Box::new(forward_action(name))),
        )],
    );
    let mut c = cluster(name, backend.address, UpstreamProtocol::Http1);
    c.circuit_breakers.default = Thresholds {
        max_connections: 1,
        max_pending_requests: 1,
        ..Thresholds::default()
    };
    let (keel, _) = start_keel_manager(config, &[c]).await;
    let mut requests = Vec::new();
    for _ in 0..3 {
        requests.push(tokio::spawn(async move {
            let response = send(keel, false, get("/").body(empty()).unwrap()).await;
            let status = response.status();
            text(response).await;
            status
        }));
        // In order: the first holds the connection, the second waits for it.
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.await.unwrap());
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::SERVICE_UNAVAILABLE
        ],
        "the second request waited for the first one's connection, the third overflowed"
    );
    assert_eq!(stat(name, "upstream_cx_total"), 1);
    assert_eq!(stat(name, "upstream_cx_overflow"), 1);
    assert_eq!(stat(name, "upstream_rq_pending_overflow"), 1);
    assert_eq!(stat(name, "upstream_rq_pending_total"), 2);
}

#[tokio::test]
async fn per_try_idle_timeout_retries_a_silent_try_and_cuts_a_stalled_body() {
    let backend = start_scripted(vec![
        Reply::Delay(Duration::from_secs(3), 200),
        Reply::StallBody,
    ])
    .await;
    let name = "rt_per_try_idle";
    let mut policy = retry_policy("5xx", 1);
    policy.per_try_idle_timeout = Some(Duration::from_millis(200));
    let mut config = manager_config(
        name,
        vec![route(
            "/",
            RouteAction::Forward(Box::new(retrying(name, policy))),
        )],
    );
    let log = access_log(&mut config, name);
    let (keel, manager) = start_keel_manager(
        config,
        &[cluster(name, backend.address, UpstreamProtocol::Http1)],
    )
    .await;
    let started = std::time::Instant::now();
    let response = send(keel, false, get("/").body(empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK, "the retry answered");
    let body = tokio::time::timeout(PATIENCE, response.into_body().collect()).await;
    assert!(
        matches!(body, Ok(Err(_))),
        "the stalled body is cut off: {body:?}"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    assert_eq!(stat(name, "upstream_rq_per_try_idle_timeout"), 2);
    assert_eq!(stat(name, "upstream_rq_retry"), 1);
    assert_eq!(stat(name, "upstream_rq_retry_success"), 1);
    // Envoy 1.40 logs the same line for the same exchange.
    let log = read_log(&manager, &log);
    assert_eq!(log, "200 UT 2 upstream_per_try_idle_timeout\n");
}

/// Sets Envoy's retry and timeout request headers, as a trusted peer would (keel's
/// connection manager removes them from clients).
struct EnvoyHeaders(&'static [(&'static str, &'static str)]);

impl crate::http::filter::HttpFilter for EnvoyHeaders {
    fn name(&self) -> &str {
        "test.envoy_headers"
    }

    fn decode_headers(
        &self,
        request: &mut http::request::Parts,
        _: &mut crate::http::filter::FilterContext<'_>,
    ) -> crate::http::filter::FilterStatus<http::request::Parts> {
        for (name, value) in self.0 {
            request
                .headers
                .insert(*name, HeaderValue::from_static(value));
        }
        crate::http::filter::FilterStatus::Continue
    }
}

async fn start_keel_with_filter(
    config: HttpConnectionManager,
    clusters: &[model::Cluster],
    filter: EnvoyHeaders,
) -> SocketAddr {
    let upstreams = Arc::new(crate::upstream::Upstreams::new(clusters));
    let manager = Arc::new(
        super::ConnectionManager::with_filters(Arc::new(config), upstreams, vec![Arc::new(filter)])
            .expect("config compiles"),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(manager.serve(listener));
    address
}

#[tokio::test]
async fn envoy_request_headers_ask_for_retries_and_timeouts() {
    let backend = start_scripted(vec![Reply::Status(503)]).await;
    let name = "rt_headers";
    let config = manager_config(
        name,
        vec![route(
            "/",
            RouteAction::Forward(Box::new(forward_action(name))),
        )],
    );
    let keel = start_keel_with_filter(
        config,
        &[cluster(name, backend.address, UpstreamProtocol::Http1)],
        EnvoyHeaders(&[("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "2")]),
    )
    .await;
    let response = send(keel, false, get("/").body(empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let seen = backend.requests();
    assert_eq!(seen.len(), 3, "x-envoy-max-retries: 2");
    assert!(
        seen.iter().all(|s| !s.retry_on_header),
        "the router consumes x-envoy-retry-on"
    );
    assert_eq!(stat(name, "upstream_rq_retry_limit_exceeded"), 1);

    let slow = start_scripted(vec![Reply::Delay(Duration::from_secs(2), 200)]).await;
    let name = "rt_headers_timeout";
    let config = manager_config(
        name,
        vec![route(
            "/",
            RouteAction::Forward(Box::new(forward_action(name))),
        )],
    );
    let keel = start_keel_with_filter(
        config,
        &[cluster(name, slow.address, UpstreamProtocol::Http1)],
        EnvoyHeaders(&[("x-envoy-upstream-rq-timeout-ms", "200")]),
    )
    .await;
    let started = std::time::Instant::now();
    let response = send(keel, false, get("/").body(empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        slow.requests()[0].expected_timeout.as_deref(),
        Some("200"),
        "x-envoy-expected-rq-timeout-ms follows the header's timeout"
    );
}

/// A backend that answers every request on a connection with the next of `responses`
/// (raw bytes, written as given), then closes the connection after `per_connection`
/// answers. Returns its address and the count of connections it accepted.
async fn start_raw(
    responses: Vec<&'static [u8]>,
    per_connection: usize,
) -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let (responses, answered) = (responses.clone(), Arc::clone(&answered));
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for _ in 0..per_connection {
                    // A request head (these tests send no request bodies).
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    let n = answered.fetch_add(1, Ordering::SeqCst);
                    let response = responses[n.min(responses.len() - 1)];
                    if stream.write_all(response).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (address, accepted)
}

/// keel with one route, `/`, to the cluster `c` (its listener's address).
async fn keel_in_front_of(c: model::Cluster) -> SocketAddr {
    let config = manager_config(
        &c.name,
        vec![route(
            "/",
            RouteAction::Forward(Box::new(forward_action(&c.name))),
        )],
    );
    start_keel_manager(config, &[c]).await.0
}

/// keel in front of one raw backend over pooled HTTP/1.1.
async fn keel_to_raw(name: &str, backend: SocketAddr) -> SocketAddr {
    keel_in_front_of(cluster(name, backend, UpstreamProtocol::Http1)).await
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_not_reused() {
    // The backend closes each connection after one answer, without saying so.
    let (backend, accepted) =
        start_raw(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"], 1).await;
    let keel = keel_to_raw("rt_h1_closed_idle", backend).await;
    for _ in 0..3 {
        let response = send(keel, false, get("/").body(empty()).unwrap()).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(text(response).await, "ok");
        // Time for the close to reach keel.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "one connection per request"
    );
    assert_eq!(stat("rt_h1_closed_idle", "upstream_rq_total"), 3);
}

#[tokio::test]
async fn keep_alive_connections_are_reused_and_close_delimited_ones_are_not() {
    let (backend, accepted) = start_raw(
        vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\none",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\nx-t: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nthree",
        ],
        3,
    )
    .await;
    let keel = keel_to_raw("rt_h1_reuse", backend).await;
    for expected in ["one", "two", "three"] {
        let response = send(keel, false, get("/").body(empty()).unwrap()).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(text(response).await, expected);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one kept-alive connection"
    );
    // `connection: close` took that connection out of the pool: the next request opens
    // another.
    let response = send(keel, false, get("/").body(empty()).unwrap()).await;
    assert_eq!(text(response).await, "three");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_body_that_ends_with_the_connection_is_read_to_the_close() {
    let (backend, _) = start_raw(
        vec![b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end"],
        1,
    )
    .await;
    let keel = keel_to_raw("rt_h1_close_delimited", backend).await;
    let response = send(keel, false, get("/").body(empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response).await, "until the end");
}

#[tokio::test]
async fn an_invalid_upstream_response_is_a_503_protocol_error() {
    let (backend, _) = start_raw(vec![b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n"], 1).await;
    let keel = keel_to_raw("rt_h1_invalid", backend).await;
    let response = send(keel, false, get("/").body(empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = text(response).await;
    assert!(body.contains("protocol error"), "{body}");
}

#[tokio::test]
async fn idle_http1_connections_are_closed_by_the_sweeper() {
    let backend = start_scripted(vec![Reply::Status(200)]).await;
    let name = "rt_h1_idle_cx";
    let mut c = cluster(name, backend.address, UpstreamProtocol::Http1);
    c.pool.idle_timeout = Some(Duration::from_millis(200));
    let keel = keel_in_front_of(c).await;
    let response = send(keel, false, get("/").body(empty()).unwrap()).await;
    text(response).await;
    assert_eq!(counter(&format!("cluster.{name}.upstream_cx_active")), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A second request in between keeps the connection: it expires 200 ms after it.
    let response = send(keel, false, get("/").body(empty()).unwrap()).await;
    text(response).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(stat(name, "upstream_cx_idle_timeout"), 0);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(stat(name, "upstream_cx_idle_timeout"), 1);
    assert_eq!(counter(&format!("cluster.{name}.upstream_cx_active")), 0);
    assert_eq!(stat(name, "upstream_cx_total"), 1);
}
