//! End-to-end tests of filter chain selection: keel's listeners from a bootstrap,
//! real sockets, backends that answer with their name.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::inspect::tests::client_hello;
use crate::config::{load_str, Format};
use crate::observe::stats;

/// A backend that greets each connection with its name and then echoes nothing.
async fn named_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = stream.write_all(name.as_bytes()).await;
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    address
}

/// Starts keel's listeners for a bootstrap whose single listener `edge` has
/// `listener` (listener-level lines) and `chains`, with clusters `a` and `b`.
async fn start(listener: &str, chains: &str) -> (super::Listeners, SocketAddr) {
    let (a, b) = (named_backend("a").await, named_backend("b").await);
    let cluster = |name: &str, address: SocketAddr| {
        format!(
            "  - name: {name}\n    load_assignment:\n      cluster_name: {name}\n      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}]}}]\n",
            address.port()
        )
    };
    let yaml = format!(
        "static_resources:\n  listeners:\n  - name: edge\n    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\n{listener}\n    filter_chains:\n{chains}  clusters:\n{}{}",
        cluster("a", a),
        cluster("b", b)
    );
    let bootstrap = load_str(&yaml, Format::Yaml)
        .unwrap_or_else(|e| panic!("bootstrap should load: {e}\n{yaml}"));
    let listeners = super::start(&bootstrap).await.expect("listeners start");
    let address = listeners.addresses[0];
    (listeners, address)
}

/// A chain item to `cluster`, with an optional filter_chain_match (flow style).
fn chain(cluster: &str, filter_chain_match: Option<&str>) -> String {
    let mut chain = format!(
        "    - filters:\n      - name: envoy.filters.network.tcp_proxy\n        typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: {cluster}, cluster: {cluster}}}\n"
    );
    if let Some(m) = filter_chain_match {
        chain.push_str(&format!("      filter_chain_match: {m}\n"));
    }
    chain
}

/// Connects (from `source` if given), sends `first_bytes`, and returns what the
/// backend said ("" when keel closed the connection).
async fn greeting(to: SocketAddr, source: Option<&str>, first_bytes: &[u8]) -> String {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(source) = source {
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    }
    let mut stream: TcpStream = socket.connect(to).await.expect("connect to keel");
    if !first_bytes.is_empty() {
        stream.write_all(first_bytes).await.unwrap();
    }
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("keel answers or closes within 5 s")
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_prefix_picks_the_chain_and_the_default_takes_the_rest() {
    let chains = chain(
        "a",
        Some("{source_prefix_ranges: [{address_prefix: 127.0.0.2, prefix_len: 32}]}"),
    );
    let listener = "    default_filter_chain:\n      filters:\n      - name: envoy.filters.network.tcp_proxy\n        typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: b, cluster: b}";
    let (_listeners, keel) = start(listener, &chains).await;
    for _ in 0..4 {
        assert_eq!(greeting(keel, Some("127.0.0.2"), b"").await, "a");
        assert_eq!(greeting(keel, Some("127.0.0.1"), b"").await, "b");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_inspector_routes_by_server_name_without_terminating() {
    let listener = "    listener_filters:\n    - name: envoy.filters.listener.tls_inspector\n      typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}";
    let chains = [
        chain("a", Some(r#"{server_names: ["*.a.example"]}"#)),
        chain("b", Some("{transport_protocol: tls}")),
    ]
    .concat();
    let (_listeners, keel) = start(listener, &chains).await;
    let hello = |sni: &str| client_hello(Some(sni), &["h2"]);
    assert_eq!(greeting(keel, None, &hello("api.a.example")).await, "a");
    assert_eq!(greeting(keel, None, &hello("API.A.Example")).await, "a");
    assert_eq!(greeting(keel, None, &hello("b.example")).await, "b");
    // Plaintext is raw_buffer: no chain matches and there is no default chain.
    let no_match = stats::global().counter(&format!(
        "listener.127.0.0.1_{}.no_filter_chain_match",
        keel.port()
    ));
    assert_eq!(greeting(keel, None, b"GET / HTTP/1.1\r\n\r\n").await, "");
    assert_eq!(no_match.value(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_inspector_tells_h2c_from_http1() {
    let listener = "    listener_filters:\n    - name: envoy.filters.listener.http_inspector\n      typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector}";
    let chains = [
        chain("a", Some("{application_protocols: [h2c]}")),
        chain("b", Some("{application_protocols: [http/1.1, http/1.0]}")),
    ]
    .concat();
    let (_listeners, keel) = start(listener, &chains).await;
    assert_eq!(
        greeting(keel, None, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await,
        "a"
    );
    assert_eq!(
        greeting(keel, None, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await,
        "b"
    );
    assert_eq!(greeting(keel, None, b"GET / HTTP/1.0\r\n\r\n").await, "b");
    assert_eq!(greeting(keel, None, b"SSH-2.0-client\r\n").await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_filters_timeout_closes_or_continues() {
    let inspector = "    listener_filters:\n    - name: envoy.filters.listener.tls_inspector\n      typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}\n    listener_filters_timeout: 0.2s";
    let chains = chain("a", None);
    // A client that sends nothing: closed after the timeout.
    let (_listeners, keel) = start(inspector, &chains).await;
    assert_eq!(greeting(keel, None, b"").await, "");
    let continuing = format!("{inspector}\n    continue_on_listener_filters_timeout: true");
    let (_listeners, keel) = start(&continuing, &chains).await;
    assert_eq!(greeting(keel, None, b"").await, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_weighted_clusters_split_connections() {
    let chains = "    - filters:\n      - name: envoy.filters.network.tcp_proxy\n        typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: split, weighted_clusters: {clusters: [{name: a, weight: 3}, {name: b, weight: 1}]}}\n";
    let (_listeners, keel) = start("", chains).await;
    let mut to_a = 0;
    const N: usize = 200;
    for _ in 0..N {
        match greeting(keel, None, b"").await.as_str() {
            "a" => to_a += 1,
            "b" => {}
            other => panic!("unexpected backend {other:?}"),
        }
    }
    // 3:1 over 200 connections: mean 150, sd ~6.1; 5 sd either way.
    assert!((120..=180).contains(&to_a), "{to_a} of {N} went to a");
}
