//! End-to-end tests of the admin server: a real socket on 127.0.0.1:0, a real HTTP/1.1
//! client, the server on its own thread as in production.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::*;
use crate::datapath::ServiceState;
use crate::observe::stats::Stats;

const BOOTSTRAP: &str = r#"
node: {id: node-1, cluster: mesh}
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
static_resources:
  listeners:
  - name: web
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: web
          cluster: web
  clusters:
  - name: web
    connect_timeout: 1s
    load_assignment:
      cluster_name: web
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8080}}}
          load_balancing_weight: 2
"#;

/// The test bootstrap, with its proto3 JSON set from the YAML itself so the test does
/// not depend on how `config` fills `config_dump`.
fn bootstrap() -> Bootstrap {
    let mut bootstrap = crate::config::load_str(BOOTSTRAP, crate::config::Format::Yaml)
        .unwrap_or_else(|e| panic!("the test bootstrap loads: {e}"));
    bootstrap.config_dump = serde_yaml::from_str(BOOTSTRAP).expect("the test YAML is JSON-able");
    bootstrap
}

/// A private stats store (tests in this process share the global one).
fn stats() -> &'static Stats {
    let stats: &'static Stats = Box::leak(Box::default());
    stats.counter("cluster.web.upstream_rq_200").add(3);
    stats.counter("cluster.web.upstream_rq_503").add(0);
    stats.counter("http.ingress.downstream_rq_2xx").add(4);
    stats
        .counter("cluster.web.endpoint.127.0.0.1_8080.rq_total")
        .add(5);
    stats.gauge("cluster.web.upstream_cx_active").set(1);
    stats
}

fn start_test_server(admin: Admin) -> (Arc<Admin>, AdminServer) {
    let admin = Arc::new(admin);
    let server = start("127.0.0.1:0".parse().expect("an address"), admin.clone())
        .unwrap_or_else(|e| panic!("the admin server starts: {e}"));
    (admin, server)
}

struct Reply {
    status: StatusCode,
    content_type: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("valid JSON ({e}):\n{}", self.body))
    }
}

async fn fetch(address: SocketAddr, method: Method, path: &str) -> Reply {
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("connect to the admin API at {address}: {e}"));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method.clone())
        .uri(path)
        .header(http::header::HOST, address.to_string())
        .body(Empty::<Bytes>::new())
        .expect("a request");
    let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
        .await
        .unwrap_or_else(|_| panic!("{method} {path} answered within 5s"))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = response.status();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{method} {path} body: {e}"))
        .to_bytes();
    Reply {
        status,
        content_type,
        body: String::from_utf8(body.to_vec()).expect("a UTF-8 body"),
    }
}

async fn get(address: SocketAddr, path: &str) -> Reply {
    fetch(address, Method::GET, path).await
}

#[tokio::test]
async fn serves_envoys_endpoints_on_a_real_socket() {
    let bootstrap = Arc::new(bootstrap());
    let options = CommandLineOptions {
        concurrency: 2,
        config_path: "/etc/keel/bootstrap.yaml".into(),
        ..Default::default()
    };
    let (admin, server) =
        start_test_server(Admin::new(bootstrap.clone(), options).with_stats(stats()));
    let at = server.local_addr();
    assert_ne!(at.port(), 0, "the OS chose a port");

    // Not live yet: 503 with the state, as Envoy.
    let ready = get(at, "/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.body, "PRE_INITIALIZING\n");

    let bound: BTreeMap<String, SocketAddr> =
        [("web".to_string(), "127.0.0.1:15001".parse().unwrap())].into();
    admin.publish(bootstrap.clone(), bound);
    admin.set_state(ServerState::Live);
    let ready = get(at, "/ready").await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (StatusCode::OK, "LIVE\n")
    );
    assert_eq!(ready.content_type, "text/plain; charset=UTF-8");

    // /stats: sorted `name: value` lines.
    let stats = get(at, "/stats").await;
    assert_eq!(stats.status, StatusCode::OK);
    assert!(
        stats.body.contains("cluster.web.upstream_rq_200: 3\n")
            && stats.body.contains("http.ingress.downstream_rq_2xx: 4\n"),
        "{}",
        stats.body
    );
    let names: Vec<&str> = stats
        .body
        .lines()
        .map(|l| l.split(": ").next().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "sorted by name");

    let filtered = get(at, "/stats?filter=%5Ehttp%5C.&format=json").await;
    assert_eq!(filtered.content_type, "application/json");
    assert_eq!(
        filtered.json(),
        serde_json::json!({"stats": [{"name": "http.ingress.downstream_rq_2xx", "value": 4}]})
    );
    let used = get(at, "/stats?usedonly").await;
    assert!(!used.body.contains("upstream_rq_503"), "{}", used.body);

    // Prometheus, with Envoy's tag extraction.
    let prometheus = get(at, "/stats/prometheus").await;
    assert_eq!(prometheus.status, StatusCode::OK);
    for line in [
        "# TYPE envoy_cluster_upstream_rq counter",
        "envoy_cluster_upstream_rq{envoy_response_code=\"200\",envoy_cluster_name=\"web\"} 3",
        "envoy_http_downstream_rq_xx{envoy_response_code_class=\"2\",\
         envoy_http_conn_manager_prefix=\"ingress\"} 4",
        "# TYPE envoy_cluster_upstream_cx_active gauge",
        "envoy_cluster_upstream_cx_active{envoy_cluster_name=\"web\"} 1",
        "envoy_cluster_endpoint_rq_total{envoy_cluster_name=\"web\",\
         envoy_endpoint_address=\"127.0.0.1:8080\"} 5",
    ] {
        assert!(
            prometheus.body.lines().any(|l| l == line),
            "missing {line:?} in:\n{}",
            prometheus.body
        );
    }
    assert_eq!(
        get(at, "/stats?format=prometheus").await.body,
        prometheus.body
    );

    // /server_info: valid JSON, Envoy's shape.
    let info = get(at, "/server_info").await.json();
    assert_eq!(info["state"], "LIVE");
    assert!(
        info["version"].as_str().unwrap().starts_with("keel/"),
        "{info}"
    );
    assert!(info["uptime_current_epoch"]
        .as_str()
        .unwrap()
        .ends_with('s'));
    assert_eq!(info["command_line_options"]["concurrency"], 2);
    assert_eq!(
        info["command_line_options"]["config_path"],
        "/etc/keel/bootstrap.yaml"
    );
    assert_eq!(info["node"]["id"], "node-1");
    assert_eq!(info["node"]["cluster"], "mesh");
    assert_eq!(info["node"]["user_agent_name"], "keel");

    // /config_dump: the bootstrap, then clusters and listeners from static_resources.
    let dump = get(at, "/config_dump").await.json();
    let configs = dump["configs"].as_array().expect("configs");
    assert_eq!(
        configs[0]["@type"],
        "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump"
    );
    assert_eq!(configs[0]["bootstrap"], bootstrap.config_dump);
    assert!(configs[0]["last_updated"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        configs[1]["@type"],
        "type.googleapis.com/envoy.admin.v3.ClustersConfigDump"
    );
    assert_eq!(
        configs[1]["static_clusters"][0]["cluster"]["@type"],
        "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    );
    assert_eq!(configs[1]["static_clusters"][0]["cluster"]["name"], "web");
    assert_eq!(configs[2]["static_listeners"][0]["listener"]["name"], "web");
    let only = get(at, "/config_dump?resource=static_listeners")
        .await
        .json();
    assert_eq!(
        only["configs"][0]["@type"],
        "type.googleapis.com/envoy.admin.v3.ListenersConfigDump.StaticListener"
    );
    assert_eq!(
        get(at, "/config_dump?resource=nope").await.status,
        StatusCode::NOT_FOUND
    );

    // /listeners: the bound address wins over the configured port 0.
    assert_eq!(get(at, "/listeners").await.body, "web::127.0.0.1:15001\n");
    let listeners = get(at, "/listeners?format=json").await.json();
    assert_eq!(
        listeners,
        serde_json::json!({"listener_statuses": [{
            "name": "web",
            "local_address": {"socket_address": {"address": "127.0.0.1", "port_value": 15001}},
        }]})
    );

    // /clusters: per-host lines, values from the per-endpoint stats.
    let clusters = get(at, "/clusters").await.body;
    for line in [
        "web::127.0.0.1:8080::rq_total::5",
        "web::127.0.0.1:8080::cx_active::0",
        "web::127.0.0.1:8080::health_flags::healthy",
        "web::127.0.0.1:8080::weight::2",
    ] {
        assert!(
            clusters.lines().any(|l| l == line),
            "missing {line}:\n{clusters}"
        );
    }

    // The index, unknown paths, and Envoy's 405 for a GET on a mutating endpoint.
    let home = get(at, "/").await;
    assert_eq!(home.content_type, "text/html; charset=UTF-8");
    assert!(home.body.contains("/stats/prometheus"));
    let missing = get(at, "/nope").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(
        missing
            .body
            .starts_with("invalid path. admin commands are:\n"),
        "{}",
        missing.body
    );
    assert!(missing.body.contains("  /ready: "));
    let refused = get(at, "/quitquitquit").await;
    assert_eq!(refused.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(refused.body, "Method GET not allowed, POST required.");
    assert!(
        tokio::time::timeout(Duration::from_millis(50), admin.quit_requested())
            .await
            .is_err(),
        "a refused GET must not shut the server down"
    );

    // POST /quitquitquit: OK, and the shutdown signal fires.
    let quit = fetch(at, Method::POST, "/quitquitquit").await;
    assert_eq!((quit.status, quit.body.as_str()), (StatusCode::OK, "OK\n"));
    tokio::time::timeout(Duration::from_secs(2), admin.quit_requested())
        .await
        .expect("the shutdown signal fires after POST /quitquitquit");

    server.stop();
    assert!(
        tokio::net::TcpStream::connect(at).await.is_err(),
        "the admin port is closed after stop"
    );
}

#[tokio::test]
async fn kernel_state_is_read_off_the_admin_thread() {
    let service: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let backend: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let source: KernelSource = Arc::new(move || {
        // A slow read must not hold up other requests.
        std::thread::sleep(Duration::from_millis(300));
        Some(KernelSnapshot {
            cgroup: "/sys/fs/cgroup/mesh".into(),
            services: vec![ServiceState {
                address: service,
                policy: "MAGLEV",
                backend_set: 7,
                backends: vec![(backend, 2, 4)],
            }],
            endpoint_connections: [(backend, 4)].into(),
            tracked_sockets: 4,
        })
    });
    let (admin, server) = start_test_server(
        Admin::new(Arc::new(bootstrap()), CommandLineOptions::default())
            .with_stats(Box::leak(Box::default()))
            .with_kernel(source),
    );
    admin.set_state(ServerState::Live);
    let at = server.local_addr();

    let slow = tokio::spawn(async move { get(at, "/keel/kernel").await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    assert_eq!(get(at, "/ready").await.body, "LIVE\n");
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "/ready waited for the kernel read: {:?}",
        started.elapsed()
    );

    let kernel = slow.await.expect("the kernel request task").json();
    assert_eq!(kernel["loaded"], true);
    assert_eq!(kernel["services"][0]["address"], "10.96.0.10:80");
    assert_eq!(kernel["services"][0]["policy"], "MAGLEV");
    assert_eq!(
        kernel["services"][0]["backends"][0],
        serde_json::json!({"address": "127.0.0.1:8080", "weight": 2, "active_connections": 4})
    );
    assert_eq!(kernel["endpoint_connections"]["127.0.0.1:8080"], 4);
    server.stop();
}

#[tokio::test]
async fn kernel_endpoint_reports_when_the_data_path_is_not_loaded() {
    let (_admin, server) = start_test_server(
        Admin::new(Arc::new(bootstrap()), CommandLineOptions::default())
            .with_stats(Box::leak(Box::default()))
            .with_kernel(kernel_source(Arc::new(std::sync::Mutex::new(None)))),
    );
    let kernel = get(server.local_addr(), "/keel/kernel").await.json();
    assert_eq!(kernel["loaded"], false);
    assert_eq!(kernel["services"], serde_json::json!([]));
}

#[tokio::test]
async fn handlers_can_be_added() {
    let (_admin, server) = start_test_server(
        Admin::new(Arc::new(bootstrap()), CommandLineOptions::default())
            .with_stats(Box::leak(Box::default()))
            .with_handler(Handler::new("/keel/hello", "say hello", |_, request| {
                AdminResponse::text(
                    StatusCode::OK,
                    format!("hello {}\n", request.param("name").unwrap_or("?")),
                )
            })),
    );
    let at = server.local_addr();
    assert_eq!(get(at, "/keel/hello?name=keel").await.body, "hello keel\n");
    assert!(get(at, "/help")
        .await
        .body
        .contains("  /keel/hello: say hello\n"));
}

#[test]
fn a_taken_port_fails_start_up_with_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let address = taken.local_addr().unwrap();
    let admin = Arc::new(Admin::new(
        Arc::new(bootstrap()),
        CommandLineOptions::default(),
    ));
    let err = start(address, admin).expect_err("the port is taken");
    assert!(err.to_string().contains(&address.to_string()), "{err}");
}

#[test]
fn query_parameters_are_decoded() {
    let request = AdminRequest::new(Method::GET, "/stats?filter=%5Ecluster%5C.a+b&usedonly&x=");
    assert_eq!(request.path, "/stats");
    assert_eq!(request.param("filter"), Some(r"^cluster\.a+b"));
    assert!(request.has("usedonly"));
    assert_eq!(request.param("x"), Some(""));
    assert_eq!(request.param("y"), None);
}
