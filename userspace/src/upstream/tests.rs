//! End-to-end tests of load balancing and discovery over real sockets on 127.0.0.1:
//! a keel HTTP listener in front of hyper backends that answer with their own name.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

use crate::http::tests::{manager_config, PATIENCE};
use crate::http::ConnectionManager;
use crate::model::http::*;
use crate::model::{self, Discovery, Dns, DnsLookupFamily, EndpointAddress, LbEndpoint, LbPolicy};
use crate::model::{LocalityEndpoints, UpstreamProtocol};
use crate::observe::stats;
use crate::upstream::{HealthFlags, Upstreams};

/// A catch-all route to `cluster` with these hash policies.
fn route_to(cluster: &str, hash_policy: Vec<HashPolicy>) -> Route {
    Route {
        name: "all".into(),
        matcher: RouteMatch {
            path: PathMatch::Prefix("/".into()),
            case_sensitive: true,
            headers: Vec::new(),
            query_parameters: Vec::new(),
            grpc: false,
            runtime_fraction_ppm: None,
        },
        action: RouteAction::Forward(Box::new(ForwardAction {
            cluster: ClusterSpecifier::Cluster(cluster.into()),
            prefix_rewrite: None,
            regex_rewrite: None,
            host_rewrite: HostRewrite::None,
            cluster_not_found_status: 503,
            timeout: Some(PATIENCE),
            idle_timeout: None,
            mirrors: Vec::new(),
            retry_policy: None,
            hash_policy,
            upgrades: Vec::new(),
            max_stream_duration: None,
            options: Default::default(),
        })),
        headers: HeaderMutations::default(),
        decorator: None,
        metadata: None,
    }
}

/// One locality of `priority` with these endpoints.
fn locality(priority: u32, addresses: &[EndpointAddress]) -> LocalityEndpoints {
    LocalityEndpoints {
        priority,
        endpoints: addresses
            .iter()
            .map(|a| LbEndpoint {
                address: a.clone(),
                weight: 1,
            })
            .collect(),
        ..LocalityEndpoints::default()
    }
}

fn cluster(name: &str, lb_policy: LbPolicy, localities: Vec<LocalityEndpoints>) -> model::Cluster {
    model::Cluster {
        name: name.into(),
        connect_timeout: Duration::from_secs(1),
        lb_policy,
        localities,
        upstream_protocol: UpstreamProtocol::Http1,
        ..model::Cluster::default()
    }
}

/// Starts keel on 127.0.0.1:0 with `routes` over `clusters`.
async fn start_keel(
    routes: Vec<Route>,
    clusters: &[model::Cluster],
) -> (SocketAddr, Arc<Upstreams>) {
    let upstreams = Arc::new(Upstreams::new(clusters));
    assert!(upstreams.initialized(PATIENCE).await, "clusters initialize");
    let manager = Arc::new(
        ConnectionManager::new(
            Arc::new(manager_config("lb_e2e", routes)),
            Arc::clone(&upstreams),
        )
        .expect("config compiles"),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind keel");
    let address = listener.local_addr().unwrap();
    tokio::spawn(manager.serve(listener));
    (address, upstreams)
}

/// A backend on 127.0.0.1:0 that answers every request with `name`.
async fn start_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(move |_request: Request<Incoming>| async move {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

/// GET / on a new connection to keel with `headers`: status, response headers, body.
async fn get(keel: SocketAddr, headers: &[(&str, &str)]) -> (StatusCode, http::HeaderMap, String) {
    let exchange = async {
        let stream = TcpStream::connect(keel).await.expect("connect keel");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        let mut request = Request::get("/").header("host", "app");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = sender
            .send_request(request.body(Empty::<Bytes>::new()).unwrap())
            .await
            .expect("response");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    };
    tokio::time::timeout(PATIENCE, exchange)
        .await
        .expect("in time")
}

fn socket(address: SocketAddr) -> EndpointAddress {
    EndpointAddress::Socket(address)
}

#[tokio::test]
async fn ring_hash_sends_one_header_value_to_one_host() {
    let backends = [
        start_backend("a").await,
        start_backend("b").await,
        start_backend("c").await,
    ];
    let addresses: Vec<_> = backends.iter().map(|&a| socket(a)).collect();
    let clusters = [cluster(
        "ring",
        LbPolicy::RING_HASH,
        vec![locality(0, &addresses)],
    )];
    let policy = HashPolicy {
        source: HashSource::Header(http::HeaderName::from_static("x-user")),
        terminal: false,
    };
    let (keel, _upstreams) = start_keel(vec![route_to("ring", vec![policy])], &clusters).await;

    let mut seen = std::collections::HashSet::new();
    for user in 0..30 {
        let user = format!("user-{user}");
        let (status, _, first) = get(keel, &[("x-user", &user)]).await;
        assert_eq!(status, StatusCode::OK);
        for _ in 0..3 {
            let (_, _, again) = get(keel, &[("x-user", &user)]).await;
            assert_eq!(again, first, "{user} stays on its host");
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 3, "30 users spread over the 3 hosts: {seen:?}");
}

#[tokio::test]
async fn maglev_cookie_is_generated_and_then_sticks() {
    let backends = [
        start_backend("a").await,
        start_backend("b").await,
        start_backend("c").await,
    ];
    let addresses: Vec<_> = backends.iter().map(|&a| socket(a)).collect();
    let clusters = [cluster(
        "sticky",
        LbPolicy::Maglev { table_size: 65537 },
        vec![locality(0, &addresses)],
    )];
    let policy = HashPolicy {
        source: HashSource::Cookie {
            name: "session".into(),
            ttl: Some(Duration::from_secs(60)),
            path: Some("/".into()),
        },
        terminal: false,
    };
    let (keel, _upstreams) = start_keel(vec![route_to("sticky", vec![policy])], &clusters).await;

    let (status, headers, first) = get(keel, &[]).await;
    assert_eq!(status, StatusCode::OK);
    let set_cookie = headers
        .get(http::header::SET_COOKIE)
        .expect("a generated cookie")
        .to_str()
        .unwrap()
        .to_owned();
    let value = set_cookie
        .strip_prefix("session=\"")
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("unexpected Set-Cookie {set_cookie}"));
    assert_eq!(value.len(), 16, "16 hex digits: {set_cookie}");
    assert!(
        set_cookie.ends_with("\"; Max-Age=60; Path=/; HttpOnly"),
        "{set_cookie}"
    );
    // The cookie's hash picked the first host: sending it back sticks there.
    let cookie = format!("session=\"{value}\"");
    for _ in 0..10 {
        let (_, headers, body) = get(keel, &[("cookie", &cookie)]).await;
        assert_eq!(body, first);
        assert!(
            headers.get(http::header::SET_COOKIE).is_none(),
            "no new cookie"
        );
    }
}

#[tokio::test]
async fn priority_one_takes_traffic_when_priority_zero_is_unhealthy() {
    let primary = start_backend("primary").await;
    let standby = start_backend("standby").await;
    let clusters = [cluster(
        "failover",
        LbPolicy::RoundRobin,
        vec![
            locality(0, &[socket(primary)]),
            locality(1, &[socket(standby)]),
        ],
    )];
    let (keel, upstreams) = start_keel(vec![route_to("failover", Vec::new())], &clusters).await;
    for _ in 0..5 {
        assert_eq!(get(keel, &[]).await.2, "primary");
    }
    let cluster = upstreams.get("failover").unwrap();
    let host = cluster
        .hosts()
        .hosts
        .iter()
        .find(|h| h.address == primary)
        .cloned()
        .unwrap();
    assert!(host.health.set(HealthFlags::FAILED_ACTIVE_HC));
    cluster.health_changed();
    for _ in 0..5 {
        assert_eq!(get(keel, &[]).await.2, "standby");
    }
    let store = stats::global();
    assert_eq!(store.gauge("cluster.failover.membership_total").value(), 2);
    assert_eq!(
        store.gauge("cluster.failover.membership_healthy").value(),
        1
    );
    // Back to health: back to priority 0.
    assert!(host.health.clear(HealthFlags::FAILED_ACTIVE_HC));
    cluster.health_changed();
    assert_eq!(get(keel, &[]).await.2, "primary");
}

#[tokio::test]
async fn strict_dns_resolves_localhost() {
    let backend = start_backend("resolved").await;
    let mut c = cluster(
        "dns",
        LbPolicy::RoundRobin,
        vec![locality(
            0,
            &[EndpointAddress::Dns {
                hostname: "localhost".into(),
                port: backend.port(),
            }],
        )],
    );
    c.discovery = Discovery::StrictDns(Dns {
        refresh_rate: Duration::from_millis(200),
        lookup_family: DnsLookupFamily::V4Only,
        ..Dns::default()
    });
    let (keel, upstreams) = start_keel(vec![route_to("dns", Vec::new())], &[c]).await;
    let hosts = upstreams.get("dns").unwrap().hosts();
    let addresses: Vec<SocketAddr> = hosts.hosts.iter().map(|h| h.address).collect();
    assert_eq!(
        addresses,
        vec![backend],
        "localhost is 127.0.0.1 in /etc/hosts"
    );
    let (status, _, body) = get(keel, &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "resolved"));
    // A refresh keeps the same host (its pool and health survive).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = upstreams.get("dns").unwrap().hosts();
    assert!(Arc::ptr_eq(&hosts.hosts[0], &again.hosts[0]));
}

#[tokio::test]
async fn original_dst_goes_where_the_header_says() {
    let a = start_backend("a").await;
    let b = start_backend("b").await;
    let mut c = cluster("passthrough", LbPolicy::ClusterProvided, Vec::new());
    c.discovery = Discovery::OriginalDst(model::OriginalDst {
        use_http_header: true,
        header_name: http::HeaderName::from_static("x-envoy-original-dst-host"),
        port_override: None,
        cleanup_interval: Duration::from_secs(5),
    });
    let (keel, upstreams) = start_keel(vec![route_to("passthrough", Vec::new())], &[c]).await;
    let (a, b) = (a.to_string(), b.to_string());
    assert_eq!(get(keel, &[("x-envoy-original-dst-host", &a)]).await.2, "a");
    assert_eq!(get(keel, &[("x-envoy-original-dst-host", &b)]).await.2, "b");
    assert_eq!(get(keel, &[("x-envoy-original-dst-host", &a)]).await.2, "a");
    assert_eq!(upstreams.get("passthrough").unwrap().hosts().hosts.len(), 2);
    let (status, _, _) = get(keel, &[("x-envoy-original-dst-host", "not-an-address")]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn tcp_proxy_balances_a_strict_dns_cluster_with_priorities() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Backends that greet each connection with their name.
    async fn greeter(name: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = stream.write_all(name.as_bytes()).await;
                    let mut sink = [0u8; 64];
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                });
            }
        });
        address
    }
    let primary = greeter("primary").await;
    let standby = greeter("standby").await;
    let yaml = format!(
        "static_resources:
  listeners:
  - name: tcp
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: tcp, cluster: dns_tcp}}
  clusters:
  - name: dns_tcp
    type: STRICT_DNS
    dns_lookup_family: V4_ONLY
    load_assignment:
      cluster_name: dns_tcp
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: localhost, port_value: {}}}}}}}
      - priority: 1
        lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: localhost, port_value: {}}}}}}}
",
        primary.port(),
        standby.port()
    );
    let bootstrap = crate::config::load_str(&yaml, crate::config::Format::Yaml)
        .unwrap_or_else(|e| panic!("bootstrap should load: {e}\n{yaml}"));
    let listeners = crate::listener::start(&bootstrap)
        .await
        .expect("listeners start");
    let keel = listeners.addresses[0];
    let greeting = || async move {
        let mut stream = TcpStream::connect(keel).await.expect("connect keel");
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    for _ in 0..3 {
        assert_eq!(greeting().await, "primary");
    }
    // Priority 0 unhealthy: the standby takes the connections.
    let cluster = listeners
        .upstreams
        .as_ref()
        .and_then(|u| u.get("dns_tcp"))
        .cloned()
        .expect("the cluster");
    let hosts = cluster.hosts();
    let host = hosts.hosts.iter().find(|h| h.address == primary).unwrap();
    host.health.set(HealthFlags::FAILED_ACTIVE_HC);
    drop(hosts);
    cluster.health_changed();
    for _ in 0..3 {
        assert_eq!(greeting().await, "standby");
    }
}
