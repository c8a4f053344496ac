//! End-to-end tests of health checking and outlier detection over real sockets on
//! loopback: keel's listeners and clusters built from a bootstrap (as `keel -c`
//! does), the checkers on their own thread, hyper and raw TCP backends.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::health::{self, HealthCheckers};
use super::{ClusterUpstream, HealthFlags, Upstreams};
use crate::listener::{self, Listeners};
use crate::observe::stats;

/// Bounds every wait in these tests.
const PATIENCE: Duration = Duration::from_secs(15);

/// An HTTP backend whose answers the test changes while it runs.
struct Backend {
    address: SocketAddr,
    /// Status of `/healthz`.
    health: Arc<AtomicU16>,
    /// Status of every other path.
    status: Arc<AtomicU16>,
    /// Requests to paths other than `/healthz`.
    requests: Arc<AtomicU64>,
}

async fn start_backend() -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let address = listener.local_addr().unwrap();
    let health = Arc::new(AtomicU16::new(200));
    let status = Arc::new(AtomicU16::new(200));
    let requests = Arc::new(AtomicU64::new(0));
    let (h, s, r) = (health.clone(), status.clone(), requests.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (h, s, r) = (h.clone(), s.clone(), r.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<Incoming>| {
                    let code = if request.uri().path() == "/healthz" {
                        h.load(Ordering::Relaxed)
                    } else {
                        r.fetch_add(1, Ordering::Relaxed);
                        s.load(Ordering::Relaxed)
                    };
                    async move {
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .status(code)
                                .body(Full::new(Bytes::from_static(b"ok")))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Backend {
        address,
        health,
        status,
        requests,
    }
}

/// A bootstrap with one HTTP listener on 127.0.0.1:0 routing everything to cluster
/// `name`, whose endpoints are `endpoints` and whose extra YAML (health_checks,
/// outlier_detection, indented for a cluster's fields) is `extra`.
fn bootstrap(name: &str, endpoints: &[SocketAddr], extra: &str) -> crate::model::Bootstrap {
    let endpoints: String = endpoints
        .iter()
        .map(|a| {
            format!(
                "        - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}\n",
                a.ip(),
                a.port()
            )
        })
        .collect();
    let yaml = format!(
        r#"
static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route: {{cluster: {name}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: {name}
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
{endpoints}{extra}"#
    );
    crate::config::load_str(&yaml, crate::config::Format::Yaml)
        .unwrap_or_else(|e| panic!("the test bootstrap loads: {e}\n{yaml}"))
}

/// keel serving `bootstrap`: its listeners and its running checkers.
struct Keel {
    listeners: Listeners,
    _checkers: Option<HealthCheckers>,
}

impl Keel {
    async fn start(bootstrap: &crate::model::Bootstrap) -> Keel {
        let listeners = listener::start(bootstrap)
            .await
            .unwrap_or_else(|e| panic!("listeners start: {e}"));
        let upstreams = listeners.upstreams.clone().expect("upstreams are built");
        let checkers = health::start(&upstreams).expect("health checking starts");
        Keel {
            listeners,
            _checkers: checkers,
        }
    }

    fn upstreams(&self) -> &Arc<Upstreams> {
        self.listeners.upstreams.as_ref().expect("upstreams")
    }

    fn cluster(&self, name: &str) -> &Arc<ClusterUpstream> {
        self.upstreams().get(name).expect("the cluster exists")
    }

    fn flags(&self, cluster: &str, address: SocketAddr) -> u32 {
        let hosts = self.cluster(cluster).hosts();
        let host = hosts
            .hosts
            .iter()
            .find(|h| h.address == address)
            .unwrap_or_else(|| panic!("{address} is a host of {cluster}"));
        host.health.get()
    }

    /// Sends `n` GET requests through the listener (one connection each) and returns
    /// their statuses.
    async fn requests(&self, n: usize) -> Vec<u16> {
        let address = self.listeners.addresses[0];
        let mut statuses = Vec::with_capacity(n);
        for _ in 0..n {
            statuses.push(get(address, "/").await);
        }
        statuses
    }
}

async fn get(address: SocketAddr, path: &str) -> u16 {
    let stream = TcpStream::connect(address).await.expect("connect to keel");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header("host", "test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
        .await
        .expect("keel answers in time")
        .expect("a response");
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    status
}

/// Waits until `condition` holds, or fails with `what`.
async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn counter(name: &str) -> u64 {
    stats::global().counter(name).value()
}

fn http_check(extra: &str) -> String {
    format!(
        r#"    health_checks:
    - timeout: 1s
      interval: 0.1s
      no_traffic_interval: 0.1s
      unhealthy_threshold: 2
      healthy_threshold: 2
{extra}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_takes_a_503_host_out_and_brings_it_back() {
    let (a, b) = (start_backend().await, start_backend().await);
    let extra = http_check("      http_health_check: {path: /healthz}\n");
    let keel = Keel::start(&bootstrap("hc_http", &[a.address, b.address], &extra)).await;
    // Both start out of rotation until their first check passes.
    wait_for("both hosts pass their first check", || {
        keel.flags("hc_http", a.address) == 0 && keel.flags("hc_http", b.address) == 0
    })
    .await;
    let before = b.requests.load(Ordering::Relaxed);
    keel.requests(10).await;
    assert!(
        b.requests.load(Ordering::Relaxed) > before,
        "b takes traffic"
    );

    // A 503 takes b out at once (Envoy ignores unhealthy_threshold for it).
    b.health.store(503, Ordering::Relaxed);
    wait_for("b fails its health check", || {
        keel.flags("hc_http", b.address) == HealthFlags::FAILED_ACTIVE_HC
    })
    .await;
    let before = b.requests.load(Ordering::Relaxed);
    assert!(keel.requests(20).await.iter().all(|&s| s == 200));
    assert_eq!(
        b.requests.load(Ordering::Relaxed),
        before,
        "b left rotation"
    );

    // Two passes in a row bring it back.
    b.health.store(200, Ordering::Relaxed);
    wait_for("b passes again", || keel.flags("hc_http", b.address) == 0).await;
    let before = b.requests.load(Ordering::Relaxed);
    keel.requests(10).await;
    assert!(b.requests.load(Ordering::Relaxed) > before, "b is back");

    let prefix = "cluster.hc_http.health_check.";
    assert!(counter(&format!("{prefix}attempt")) >= 6);
    assert!(counter(&format!("{prefix}success")) >= 4);
    assert!(counter(&format!("{prefix}failure")) >= 1);
    assert_eq!(counter(&format!("{prefix}network_failure")), 0);
    assert_eq!(
        stats::global().gauge(&format!("{prefix}healthy")).value(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_over_http2_and_expected_statuses() {
    let a = start_backend().await;
    a.health.store(204, Ordering::Relaxed);
    let extra = http_check(
        "      http_health_check:\n        path: /healthz\n        codec_client_type: HTTP2\n        expected_statuses: [{start: 200, end: 300}]\n",
    );
    let keel = Keel::start(&bootstrap("hc_h2", &[a.address], &extra)).await;
    wait_for("the h2 check passes", || {
        keel.flags("hc_h2", a.address) == 0
    })
    .await;
    a.health.store(500, Ordering::Relaxed);
    wait_for("the h2 check fails", || {
        keel.flags("hc_h2", a.address) == HealthFlags::FAILED_ACTIVE_HC
    })
    .await;
}

/// A TCP server that answers `reply` to every read (or nothing when `reply` is
/// empty), keeping the connection open.
async fn tcp_server(reply: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buffer = [0u8; 64];
                loop {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) if reply.is_empty() => {}
                        Ok(_) => {
                            if stream.write_all(reply).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_check_with_send_and_receive() {
    let pong = tcp_server(b"..PONG..").await;
    let wrong = tcp_server(b"NOPE").await;
    let silent = tcp_server(b"").await;
    // A port nobody listens on: bind, note, close.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // 1 healthy host of 4 is below the 50% panic threshold, where Envoy balances over
    // every host: no panic here, so that only the healthy host is picked.
    let extra = r#"    common_lb_config: {healthy_panic_threshold: {value: 0}}
    health_checks:
    - timeout: 0.3s
      interval: 0.1s
      no_traffic_interval: 0.1s
      unhealthy_threshold: 1
      healthy_threshold: 1
      tcp_health_check:
        send: {text: "50494e47"}
        receive: [{text: "504f4e47"}]
"#;
    let keel = Keel::start(&bootstrap("hc_tcp", &[pong, wrong, silent, closed], extra)).await;
    wait_for("the PONG host passes", || keel.flags("hc_tcp", pong) == 0).await;
    wait_for("the silent host times out", || {
        keel.flags("hc_tcp", silent)
            == HealthFlags::FAILED_ACTIVE_HC | HealthFlags::ACTIVE_HC_TIMEOUT
    })
    .await;
    wait_for("the others fail (network failures)", || {
        counter("cluster.hc_tcp.health_check.network_failure") >= 6
    })
    .await;
    for host in [wrong, closed] {
        let flags = keel.flags("hc_tcp", host);
        assert!(
            flags & HealthFlags::FAILED_ACTIVE_HC != 0,
            "{host}: {flags:#x}"
        );
        assert_eq!(flags & HealthFlags::PENDING_ACTIVE_HC, 0);
    }
    // Only the PONG host takes traffic (it answers no HTTP, so expect a 503, but no
    // picks of the others: check the picker directly).
    let cluster = keel.cluster("hc_tcp");
    for _ in 0..20 {
        let host = cluster
            .pick(&super::PickContext::default())
            .expect("a host");
        assert_eq!(host.address, pong);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connect_only_check() {
    let open = tcp_server(b"").await;
    let extra = r#"    health_checks:
    - timeout: 1s
      interval: 0.1s
      no_traffic_interval: 0.1s
      unhealthy_threshold: 1
      healthy_threshold: 1
      tcp_health_check: {}
"#;
    let keel = Keel::start(&bootstrap("hc_tcp_connect", &[open], extra)).await;
    wait_for("connect-only passes", || {
        keel.flags("hc_tcp_connect", open) == 0
    })
    .await;
}

/// A gRPC health server (h2c): `grpc.health.v1.Health/Check` answers SERVING for
/// the service "good" and for "", NOT_SERVING for anything else.
async fn grpc_health_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(|request: hyper::Request<Incoming>| async move {
                    assert_eq!(request.uri().path(), "/grpc.health.v1.Health/Check");
                    let body = request.into_body().collect().await.unwrap().to_bytes();
                    // Frame header, then field 1 (service) if present.
                    let service = if body.len() > 7 {
                        String::from_utf8_lossy(&body[7..]).into_owned()
                    } else {
                        String::new()
                    };
                    let status = if service.is_empty() || service == "good" {
                        1
                    } else {
                        2
                    };
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    let frames = Frames(
                        [
                            hyper::body::Frame::data(Bytes::from(vec![
                                0, 0, 0, 0, 2, 0x08, status,
                            ])),
                            hyper::body::Frame::trailers(trailers),
                        ]
                        .into(),
                    );
                    Ok::<_, Infallible>(
                        hyper::Response::builder()
                            .header("content-type", "application/grpc")
                            .body(frames)
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

/// A response body of given frames (data and trailers).
struct Frames(std::collections::VecDeque<hyper::body::Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_check_passes_on_serving_only() {
    let server = grpc_health_server().await;
    let good = r#"    health_checks:
    - timeout: 1s
      interval: 0.1s
      no_traffic_interval: 0.1s
      unhealthy_threshold: 1
      healthy_threshold: 1
      grpc_health_check: {service_name: good}
"#;
    let bad = good.replace("service_name: good", "service_name: bad");
    let keel_good = Keel::start(&bootstrap("hc_grpc_good", &[server], good)).await;
    let keel_bad = Keel::start(&bootstrap("hc_grpc_bad", &[server], &bad)).await;
    wait_for("SERVING passes", || {
        keel_good.flags("hc_grpc_good", server) == 0
    })
    .await;
    wait_for("NOT_SERVING fails", || {
        counter("cluster.hc_grpc_bad.health_check.failure") >= 2
    })
    .await;
    assert_eq!(
        keel_bad.flags("hc_grpc_bad", server),
        HealthFlags::FAILED_ACTIVE_HC
    );
    assert_eq!(
        counter("cluster.hc_grpc_bad.health_check.network_failure"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_after_5_consecutive_5xx_and_brings_back() {
    let (a, b) = (start_backend().await, start_backend().await);
    b.status.store(500, Ordering::Relaxed);
    let extra = r#"    outlier_detection:
      interval: 0.1s
      base_ejection_time: 0.5s
      max_ejection_percent: 50
"#;
    let keel = Keel::start(&bootstrap("od_5xx", &[a.address, b.address], extra)).await;
    // Round robin: 10 requests put 5 on b.
    let statuses = keel.requests(10).await;
    assert_eq!(
        statuses.iter().filter(|&&s| s == 500).count(),
        5,
        "{statuses:?}"
    );
    wait_for("b is ejected", || {
        keel.flags("od_5xx", b.address) == HealthFlags::FAILED_OUTLIER_CHECK
    })
    .await;
    let ejected_at = Instant::now();
    let prefix = "cluster.od_5xx.outlier_detection.";
    assert_eq!(
        counter(&format!("{prefix}ejections_enforced_consecutive_5xx")),
        1
    );
    assert_eq!(
        counter(&format!("{prefix}ejections_detected_consecutive_5xx")),
        1
    );
    assert_eq!(counter(&format!("{prefix}ejections_enforced_total")), 1);
    assert_eq!(
        stats::global()
            .gauge(&format!("{prefix}ejections_active"))
            .value(),
        1
    );
    let before = b.requests.load(Ordering::Relaxed);
    assert!(keel.requests(10).await.iter().all(|&s| s == 200));
    assert_eq!(
        b.requests.load(Ordering::Relaxed),
        before,
        "b is out of rotation"
    );

    wait_for("b comes back after base_ejection_time", || {
        keel.flags("od_5xx", b.address) == 0
    })
    .await;
    assert!(
        ejected_at.elapsed() >= Duration::from_millis(350),
        "ejected for at least about base_ejection_time, was {:?}",
        ejected_at.elapsed()
    );
    assert_eq!(
        stats::global()
            .gauge(&format!("{prefix}ejections_active"))
            .value(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ejection_percent_is_respected() {
    let backends = [
        start_backend().await,
        start_backend().await,
        start_backend().await,
    ];
    for b in &backends {
        b.status.store(503, Ordering::Relaxed);
    }
    let addresses: Vec<SocketAddr> = backends.iter().map(|b| b.address).collect();
    let extra = r#"    outlier_detection:
      interval: 10s
      base_ejection_time: 10s
      max_ejection_percent: 34
"#;
    let keel = Keel::start(&bootstrap("od_max", &addresses, extra)).await;
    let prefix = "cluster.od_max.outlier_detection.";
    // 5 failures per host (round robin), more after the first ejection.
    keel.requests(30).await;
    wait_for("one ejection and an overflow", || {
        counter(&format!("{prefix}ejections_overflow")) >= 1
    })
    .await;
    let ejected = addresses
        .iter()
        .filter(|a| keel.flags("od_max", **a) & HealthFlags::FAILED_OUTLIER_CHECK != 0)
        .count();
    assert_eq!(ejected, 1, "34% of 3 hosts is one host");
    assert_eq!(
        stats::global()
            .gauge(&format!("{prefix}ejections_active"))
            .value(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_hosts_are_each_checked_every_round() {
    // 1,000 loopback addresses (127.0.x.y), one tiny HTTP/1.1 responder each, counting
    // the checks every address receives.
    const HOSTS: usize = 1000;
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..HOSTS).map(|_| AtomicU64::new(0)).collect());
    let mut addresses = Vec::with_capacity(HOSTS);
    for i in 0..HOSTS {
        let ip = format!("127.10.{}.{}", i / 200, i % 200 + 1);
        let listener = TcpListener::bind((ip.as_str(), 0))
            .await
            .unwrap_or_else(|e| panic!("bind {ip}: {e}"));
        addresses.push(listener.local_addr().unwrap());
        let counts = Arc::clone(&counts);
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let counts = Arc::clone(&counts);
                tokio::spawn(async move {
                    let mut buffer = [0u8; 512];
                    loop {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) if buffer[..n].ends_with(b"\r\n\r\n") => {
                                counts[i].fetch_add(1, Ordering::Relaxed);
                                let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                                if stream.write_all(reply).await.is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                        }
                    }
                });
            }
        });
    }
    let extra = r#"    health_checks:
    - timeout: 2s
      interval: 0.5s
      no_traffic_interval: 0.5s
      unhealthy_threshold: 2
      healthy_threshold: 1
      http_health_check: {path: /healthz}
"#;
    let keel = Keel::start(&bootstrap("hc_many", &addresses, extra)).await;
    wait_for("every host passed its first check", || {
        keel.cluster("hc_many")
            .hosts()
            .hosts
            .iter()
            .all(|h| h.is_healthy())
    })
    .await;
    let started = Instant::now();
    let snapshot: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    // Two rounds of 0.5 s later, every host has been checked again at least once.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let missed: Vec<SocketAddr> = counts
        .iter()
        .zip(&snapshot)
        .zip(&addresses)
        .filter(|((now, then), _)| now.load(Ordering::Relaxed) <= **then)
        .map(|(_, a)| *a)
        .collect();
    assert!(
        missed.is_empty(),
        "{} of {HOSTS} hosts were not checked in {:?}: {:?}...",
        missed.len(),
        started.elapsed(),
        &missed[..missed.len().min(5)]
    );
    let per_host: HashMap<u64, usize> = counts.iter().fold(HashMap::new(), |mut m, c| {
        *m.entry(c.load(Ordering::Relaxed)).or_default() += 1;
        m
    });
    // Connections are reused: a check is one request on a kept connection.
    assert_eq!(counter("cluster.hc_many.health_check.network_failure"), 0);
    assert!(
        counter("cluster.hc_many.health_check.attempt") >= 2 * HOSTS as u64,
        "{per_host:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_rate_ejects_the_outlier_as_envoy_computes_it() {
    let mut backends = Vec::new();
    for _ in 0..5 {
        backends.push(start_backend().await);
    }
    backends[0].status.store(503, Ordering::Relaxed);
    let addresses: Vec<SocketAddr> = backends.iter().map(|b| b.address).collect();
    let extra = r#"    outlier_detection:
      interval: 0.5s
      base_ejection_time: 30s
      max_ejection_percent: 50
      consecutive_5xx: 100000
      consecutive_gateway_failure: 100000
"#;
    let keel = Keel::start(&bootstrap("od_rate", &addresses, extra)).await;
    let detector = keel
        .cluster("od_rate")
        .health
        .outlier
        .clone()
        .expect("a detector");
    let deadline = Instant::now() + PATIENCE;
    // Batches of requests until an interval saw 100 per host and ejected host 0.
    while keel.flags("od_rate", addresses[0]) & HealthFlags::FAILED_OUTLIER_CHECK == 0 {
        assert!(Instant::now() < deadline, "no success-rate ejection");
        keel.requests(100).await;
    }
    // Same as Envoy 1.40 for rates [0, 100, 100, 100, 100]: average 80, stdev 40,
    // threshold 80 - 1.9 × 40 = 4.
    let figures = detector.figures();
    assert_eq!(figures.success_rate_average, 80.0);
    assert!((figures.success_rate_ejection_threshold - 4.0).abs() < 1e-9);
    let prefix = "cluster.od_rate.outlier_detection.";
    assert_eq!(
        counter(&format!("{prefix}ejections_enforced_success_rate")),
        1
    );
    assert_eq!(
        counter(&format!("{prefix}ejections_detected_success_rate")),
        1
    );
    assert_eq!(
        counter(&format!("{prefix}ejections_total")),
        0,
        "as Envoy 1.40"
    );
    let hosts = keel.cluster("od_rate").hosts();
    assert_eq!(hosts.hosts[0].outlier.success_rate(), 0.0);
    assert_eq!(hosts.hosts[1].outlier.success_rate(), 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_follow_a_replaced_host_set() {
    let (a, b) = (start_backend().await, start_backend().await);
    let extra = http_check("      http_health_check: {path: /healthz}\n");
    let keel = Keel::start(&bootstrap("hc_follow", &[a.address], &extra)).await;
    wait_for("a passes", || keel.flags("hc_follow", a.address) == 0).await;
    // Discovery (DNS) replaces the hosts: b is new, pending its first check.
    let cluster = keel.cluster("hc_follow");
    let new_host = Arc::new(super::Host::new(b.address, 1, 0));
    cluster.set_hosts(vec![Arc::clone(&new_host)]);
    assert_eq!(
        new_host.health.get(),
        HealthFlags::FAILED_ACTIVE_HC | HealthFlags::PENDING_ACTIVE_HC
    );
    wait_for("b is checked and passes", || new_host.health.get() == 0).await;
    // a is no longer checked: its health endpoint may fail without anyone noticing.
    let before = counter("cluster.hc_follow.health_check.failure");
    a.health.store(503, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(counter("cluster.hc_follow.health_check.failure"), before);
}
