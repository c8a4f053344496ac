//! Unit tests of bootstrap loading: a full good config, the proto3 JSON mapping, and one
//! test per kind of error, each checking the exact path the error names.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::model::{
    Admin, Balancing, Bootstrap, Cluster, Datapath, Endpoint, FilterChain, LbPolicy, Listener,
    NetworkFilter, Node, Protocol, TcpProxy, WhenUnavailable,
};

const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// A bootstrap with every supported feature.
const GOOD: &str = r#"
node: {id: node-1, cluster: mesh}
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 9901}}
bootstrap_extensions:
- name: keel.datapath
  typed_config:
    "@type": type.googleapis.com/keel.v1.Datapath
    cgroup_path: /sys/fs/cgroup/mesh
    on_unavailable: USERSPACE
static_resources:
  listeners:
  - name: web
    address: {socket_address: {address: 10.96.0.10, port_value: 80}}
    metadata:
      filter_metadata:
        keel: {balancing: KERNEL}
        other.tool: {anything: [1, 2, 3]}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: web
          cluster: web
          idle_timeout: 30s
  clusters:
  - name: web
    type: STATIC
    connect_timeout: 0.25s
    lb_policy: MAGLEV
    maglev_lb_config: {table_size: 251}
    load_assignment:
      cluster_name: web
      endpoints:
      - locality: {zone: a}
        lb_endpoints:
        - endpoint: {address: {socket_address: {address: 10.0.0.1, port_value: 8080}}}
          load_balancing_weight: 3
        - endpoint: {address: {socket_address: {address: "fd00::2", port_value: 8080}}}
"#;

fn addr(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("test address {s}: {e}"))
}

fn good_model() -> Bootstrap {
    Bootstrap {
        node: Node {
            id: "node-1".into(),
            cluster: "mesh".into(),
        },
        admin: Some(Admin {
            address: addr("127.0.0.1:9901"),
        }),
        listeners: vec![Listener {
            name: "web".into(),
            address: addr("10.96.0.10:80"),
            protocol: Protocol::Tcp,
            filter_chains: vec![FilterChain {
                name: String::new(),
                filter_chain_match: Default::default(),
                filters: vec![NetworkFilter::TcpProxy(TcpProxy {
                    stat_prefix: "web".into(),
                    cluster: "web".into(),
                    weighted_clusters: Vec::new(),
                    idle_timeout: Some(Duration::from_secs(30)),
                })],
            }],
            default_filter_chain: None,
            listener_filters: crate::model::listener::ListenerFilters {
                timeout: Some(Duration::from_secs(15)),
                ..Default::default()
            },
            buffer_limit: 1024 * 1024,
            balancing: Balancing::Kernel,
        }],
        clusters: vec![Cluster {
            name: "web".into(),
            connect_timeout: Duration::from_millis(250),
            lb_policy: LbPolicy::Maglev { table_size: 251 },
            endpoints: vec![
                Endpoint {
                    address: addr("10.0.0.1:8080"),
                    weight: 3,
                },
                Endpoint {
                    address: addr("[fd00::2]:8080"),
                    weight: 1,
                },
            ],
            localities: vec![crate::model::LocalityEndpoints {
                locality: crate::model::Locality {
                    zone: "a".into(),
                    ..Default::default()
                },
                priority: 0,
                weight: None,
                endpoints: vec![
                    crate::model::LbEndpoint {
                        address: crate::model::EndpointAddress::Socket(addr("10.0.0.1:8080")),
                        weight: 3,
                    },
                    crate::model::LbEndpoint {
                        address: crate::model::EndpointAddress::Socket(addr("[fd00::2]:8080")),
                        weight: 1,
                    },
                ],
            }],
            upstream_protocol: crate::model::UpstreamProtocol::Http1,
            ..Cluster::default()
        }],
        datapath: Datapath {
            cgroup_path: Some(PathBuf::from("/sys/fs/cgroup/mesh")),
            bpffs_path: PathBuf::from("/sys/fs/bpf/keel"),
            on_unavailable: WhenUnavailable::Userspace,
        },
        config_dump: serde_json::Value::Null,
    }
}

fn load_yaml(yaml: &str) -> Bootstrap {
    load_str(yaml, Format::Yaml)
        .unwrap_or_else(|e| panic!("expected the config to load, got: {e}\n{yaml}"))
}

/// `model` without its config dump (checked by its own tests), to compare with
/// [`good_model`].
fn without_dump(mut model: Bootstrap) -> Bootstrap {
    model.config_dump = serde_json::Value::Null;
    model
}

/// Loads `yaml`, expects an error, and checks it names `path` and says `what`.
fn expect_error(yaml: &str, path: &str, what: &str) -> String {
    let error = match load_str(yaml, Format::Yaml) {
        Ok(model) => {
            panic!("expected an error at {path}, but the config loaded: {model:#?}\n{yaml}")
        }
        Err(e) => e.to_string(),
    };
    assert!(
        error.starts_with(&format!("{path}: ")),
        "error should start with the path `{path}: `, got: {error}"
    );
    assert!(
        error.contains(what),
        "error should say `{what}`, got: {error}"
    );
    error
}

/// A minimal bootstrap: one listener (tcp_proxy → `cluster`) and one static cluster.
fn minimal(
    listener_extra: &str,
    tcp_proxy_extra: &str,
    cluster_extra: &str,
    endpoint: &str,
) -> String {
    format!(
        r#"
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: 1000}}}}
{listener_extra}
    filter_chains:
    - filters:
      - name: tcp
        typed_config:
          "@type": {TCP_PROXY}
          stat_prefix: s
{tcp_proxy_extra}
  clusters:
  - name: c
{cluster_extra}
    load_assignment:
      cluster_name: c
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {endpoint}}}}}
"#
    )
}

const CLUSTER_C: &str = "          cluster: c";
const ENDPOINT: &str = "{address: 10.0.0.1, port_value: 80}";

#[test]
fn good_config_converts_to_the_model() {
    assert_eq!(
        format!("{:?}", without_dump(load_yaml(GOOD))),
        format!("{:?}", good_model())
    );
}

#[test]
fn the_same_config_in_camel_case_json_converts_the_same() {
    let json = r#"{
      "node": {"id": "node-1", "cluster": "mesh"},
      "admin": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": 9901}}},
      "bootstrapExtensions": [{"name": "keel.datapath", "typedConfig": {
        "@type": "type.googleapis.com/keel.v1.Datapath",
        "cgroupPath": "/sys/fs/cgroup/mesh", "onUnavailable": "USERSPACE"}}],
      "staticResources": {
        "listeners": [{
          "name": "web",
          "address": {"socketAddress": {"address": "10.96.0.10", "portValue": "80"}},
          "metadata": {"typedFilterMetadata": {"keel": {
            "@type": "type.googleapis.com/keel.v1.ListenerOptions", "balancing": "KERNEL"}}},
          "filterChains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "statPrefix": "web", "cluster": "web", "idleTimeout": "30s"}}]}]
        }],
        "clusters": [{
          "name": "web", "connectTimeout": "0.250s", "lbPolicy": "MAGLEV",
          "maglevLbConfig": {"tableSize": "251"},
          "loadAssignment": {"clusterName": "web", "endpoints": [{"locality": {"zone": "a"}, "lbEndpoints": [
            {"endpoint": {"address": {"socketAddress": {"address": "10.0.0.1", "portValue": 8080}}},
             "loadBalancingWeight": 3},
            {"endpoint": {"address": {"socketAddress": {"address": "fd00::2", "portValue": 8080}}}}
          ]}]}
        }]
      }
    }"#;
    let model =
        load_str(json, Format::Json).unwrap_or_else(|e| panic!("camelCase JSON should load: {e}"));
    assert_eq!(
        format!("{:?}", without_dump(model)),
        format!("{:?}", good_model())
    );
}

#[test]
fn defaults_follow_envoy() {
    let model = load_yaml(&minimal("", CLUSTER_C, "", ENDPOINT));
    let cluster = &model.clusters[0];
    assert_eq!(
        cluster.connect_timeout,
        Duration::from_secs(5),
        "connect_timeout default"
    );
    assert_eq!(cluster.lb_policy, LbPolicy::RoundRobin, "lb_policy default");
    assert_eq!(cluster.endpoints[0].weight, 1, "endpoint weight default");
    let listener = &model.listeners[0];
    assert_eq!(
        listener.balancing,
        Balancing::Userspace,
        "balancing default"
    );
    assert_eq!(listener.protocol, Protocol::Tcp, "protocol default");
    let NetworkFilter::TcpProxy(proxy) = &listener.filter_chains[0].filters[0] else {
        panic!("expected a tcp_proxy")
    };
    assert_eq!(
        proxy.idle_timeout,
        Some(Duration::from_secs(3600)),
        "idle_timeout default is 1h"
    );
    assert_eq!(model.datapath, Datapath::default());
    assert_eq!(model.admin, None);
    assert_eq!(model.node, Node::default());
}

#[test]
fn maglev_table_size_defaults_to_65537() {
    let model = load_yaml(&minimal("", CLUSTER_C, "    lb_policy: MAGLEV", ENDPOINT));
    assert_eq!(
        model.clusters[0].lb_policy,
        LbPolicy::Maglev { table_size: 65537 }
    );
}

#[test]
fn half_second_durations_and_zero_idle_timeout() {
    let yaml = minimal(
        "",
        "          cluster: c\n          idle_timeout: 0s",
        "    connect_timeout: 0.5s",
        ENDPOINT,
    );
    let model = load_yaml(&yaml);
    assert_eq!(
        model.clusters[0].connect_timeout,
        Duration::from_millis(500)
    );
    let NetworkFilter::TcpProxy(proxy) = &model.listeners[0].filter_chains[0].filters[0] else {
        panic!("expected a tcp_proxy")
    };
    assert_eq!(proxy.idle_timeout, None, "0s disables the idle timeout");
}

#[test]
fn empty_document_is_an_empty_bootstrap() {
    let model = load_yaml("");
    assert!(
        model.listeners.is_empty() && model.clusters.is_empty(),
        "{model:?}"
    );
}

#[test]
fn yaml_anchors_and_ignored_keys_work() {
    let yaml = r#"
!ignore defs:
  admin_address: &admin {socket_address: {address: "::1", port_value: 9901}}
admin:
  address: *admin
"#;
    assert_eq!(
        load_yaml(yaml).admin,
        Some(Admin {
            address: addr("[::1]:9901")
        })
    );
}

#[test]
fn unknown_field_names_its_path_and_suggests_the_right_one() {
    let yaml = minimal("", "          clustr: c", "", ENDPOINT);
    let error = expect_error(
        &yaml,
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.clustr",
        "unknown field \"clustr\"",
    );
    assert!(error.contains("did you mean \"cluster\""), "{error}");
}

#[test]
fn unknown_top_level_field() {
    expect_error("nodes: {id: x}\n", "nodes", "unknown field");
}

#[test]
fn wrong_type_names_its_path() {
    expect_error(
        &minimal("", CLUSTER_C, "", "{address: 10.0.0.1, port_value: eighty}"),
        "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value",
        "expected a non-negative 32-bit integer",
    );
}

#[test]
fn bad_duration_names_its_path() {
    expect_error(
        &minimal("", CLUSTER_C, "    connect_timeout: 5 seconds", ENDPOINT),
        "static_resources.clusters[0].connect_timeout",
        "expected a duration",
    );
}

#[test]
fn bad_enum_lists_the_choices() {
    expect_error(
        &minimal("", CLUSTER_C, "    lb_policy: FASTEST", ENDPOINT),
        "static_resources.clusters[0].lb_policy",
        "expected one of ROUND_ROBIN, LEAST_REQUEST",
    );
}

#[test]
fn oneof_alternatives_are_an_error() {
    expect_error(
        &minimal(
            "",
            "          cluster: c\n          weighted_clusters: {clusters: [{name: c, weight: 1}]}",
            "",
            ENDPOINT,
        ),
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.weighted_clusters",
        "alternatives",
    );
}

#[test]
fn unsupported_field_names_its_path() {
    let yaml = minimal(
        "",
        CLUSTER_C,
        "    lb_subset_config: {fallback_policy: ANY_ENDPOINT}",
        ENDPOINT,
    );
    expect_error(
        &yaml,
        "static_resources.clusters[0].lb_subset_config",
        "field not supported by keel",
    );
}

#[test]
fn unsupported_top_level_field() {
    expect_error(
        "layered_runtime: {layers: [{name: static, static_layer: {}}]}\n",
        "layered_runtime",
        "field not supported by keel",
    );
}

#[test]
fn unsupported_filter_type_names_the_type() {
    let yaml = r#"
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 1000}}
    filter_chains:
    - filters:
      - name: router
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#;
    expect_error(
        yaml,
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config",
        "\"type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\" is not a network filter",
    );
}

#[test]
fn unknown_type_url_names_the_type() {
    let yaml = minimal("", CLUSTER_C, "", ENDPOINT)
        .replace(TCP_PROXY, "type.googleapis.com/envoy.NoSuchFilter");
    expect_error(
        &yaml,
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config",
        "unknown @type \"type.googleapis.com/envoy.NoSuchFilter\"",
    );
}

#[test]
fn unknown_cluster_reference() {
    expect_error(
        &minimal("", "          cluster: nope", "", ENDPOINT),
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.cluster",
        "unknown cluster \"nope\"",
    );
}

#[test]
fn missing_tcp_proxy_cluster() {
    expect_error(
        &minimal("", "", "", ENDPOINT),
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.cluster",
        "missing",
    );
}

#[test]
fn bad_ip_address() {
    expect_error(
        &minimal("", CLUSTER_C, "", "{address: 10.0.0.256, port_value: 80}"),
        "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address",
        "\"10.0.0.256\" is not a valid IPv4 address",
    );
    expect_error(
        &minimal("", CLUSTER_C, "", "{address: \"fd00::1::2\", port_value: 80}"),
        "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address",
        "not a valid IPv6 address",
    );
    expect_error(
        &minimal("", CLUSTER_C, "", "{address: backend.example, port_value: 80}"),
        "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address",
        "does not resolve host names",
    );
}

#[test]
fn address_without_port() {
    expect_error(
        &minimal("", CLUSTER_C, "", "{address: 10.0.0.1}"),
        "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value",
        "missing",
    );
}

#[test]
fn port_out_of_range() {
    expect_error(
        &minimal("", CLUSTER_C, "", "{address: 10.0.0.1, port_value: 70000}"),
        "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value",
        "at most 65535",
    );
}

#[test]
fn non_prime_maglev_table_size() {
    expect_error(
        &minimal(
            "",
            CLUSTER_C,
            "    lb_policy: MAGLEV\n    maglev_lb_config: {table_size: 65536}",
            ENDPOINT,
        ),
        "static_resources.clusters[0].maglev_lb_config.table_size",
        "65536 is not a prime",
    );
}

#[test]
fn maglev_config_without_maglev_policy() {
    expect_error(
        &minimal(
            "",
            CLUSTER_C,
            "    maglev_lb_config: {table_size: 251}",
            ENDPOINT,
        ),
        "static_resources.clusters[0].maglev_lb_config",
        "only used with lb_policy MAGLEV",
    );
}

#[test]
fn bad_keel_metadata_field() {
    let error = expect_error(
        &minimal(
            "    metadata: {filter_metadata: {keel: {balancin: KERNEL}}}",
            CLUSTER_C,
            "",
            ENDPOINT,
        ),
        "static_resources.listeners[0].metadata.filter_metadata.keel.balancin",
        "unknown field",
    );
    assert!(error.contains("did you mean \"balancing\""), "{error}");
    expect_error(
        &minimal(
            "    metadata: {filter_metadata: {keel: {balancing: KERNAL}}}",
            CLUSTER_C,
            "",
            ENDPOINT,
        ),
        "static_resources.listeners[0].metadata.filter_metadata.keel.balancing",
        "expected one of USERSPACE, KERNEL",
    );
}

#[test]
fn keel_metadata_with_wrong_type_url() {
    let listener = "    metadata:\n      typed_filter_metadata:\n        keel: {\"@type\": type.googleapis.com/keel.v1.Datapath}";
    expect_error(
        &minimal(listener, CLUSTER_C, "", ENDPOINT),
        "static_resources.listeners[0].metadata.typed_filter_metadata.keel",
        "not keel's listener options",
    );
}

#[test]
fn eds_cluster_is_not_supported_yet() {
    expect_error(
        &minimal("", CLUSTER_C, "    type: EDS", ENDPOINT),
        "static_resources.clusters[0].type",
        "EDS clusters come with xDS",
    );
}

#[test]
fn duplicate_names() {
    let yaml = minimal("", CLUSTER_C, "", ENDPOINT).replace(
        "  clusters:\n",
        "  clusters:\n  - name: c\n    load_assignment: {cluster_name: c}\n",
    );
    expect_error(
        &yaml,
        "static_resources.clusters[1].name",
        "duplicate cluster name \"c\"",
    );
}

#[test]
fn missing_names() {
    let yaml = minimal("", CLUSTER_C, "", ENDPOINT).replace("  - name: l\n", "  - address: {socket_address: {address: 127.0.0.2, port_value: 1}}\n    filter_chains: []\n  - name: l\n");
    expect_error(&yaml, "static_resources.listeners[0].name", "missing");
}

#[test]
fn zero_weight() {
    let yaml = minimal("", CLUSTER_C, "", ENDPOINT).replace(
        &format!("{ENDPOINT}}}}}\n"),
        &format!("{ENDPOINT}}}}}\n          load_balancing_weight: 0\n"),
    );
    expect_error(
        &yaml,
        "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].load_balancing_weight",
        "at least 1",
    );
}

#[test]
fn unsupported_bootstrap_extension() {
    let yaml = r#"
bootstrap_extensions:
- name: other
  typed_config: {"@type": type.googleapis.com/keel.v1.ListenerOptions}
"#;
    expect_error(
        yaml,
        "bootstrap_extensions[0].typed_config",
        "not a bootstrap extension keel supports",
    );
}

#[test]
fn syntax_errors_say_where() {
    let error = load_str("static_resources: [", Format::Yaml)
        .err()
        .unwrap_or_else(|| panic!("broken YAML should not load"));
    assert!(
        matches!(
            error,
            ConfigError::Syntax {
                format: Format::Yaml,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("line"), "{error}");
}

/// A file in the temp folder, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("keel-config-test-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn load_file_merges_config_yaml_like_envoy() {
    let file = TempFile::new("merge.yaml", GOOD);
    // Scalars replace, lists append (protobuf MergeFrom).
    let overlay = r#"
node: {id: node-2}
static_resources:
  clusters:
  - name: extra
    load_assignment: {cluster_name: extra}
"#;
    let model =
        load_file(&file.0, Some(overlay)).unwrap_or_else(|e| panic!("merge should load: {e}"));
    assert_eq!(model.node.id, "node-2");
    assert_eq!(model.node.cluster, "mesh");
    assert_eq!(
        model.config_dump["node"]["id"], "node-2",
        "the config dump shows the merged bootstrap"
    );
    let names: Vec<_> = model.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["web", "extra"]);

    let error = load_file(&file.0, Some("node: {idd: x}"))
        .err()
        .unwrap_or_else(|| panic!("a bad --config-yaml should not load"));
    assert!(
        error.to_string().starts_with("--config-yaml: node.idd: "),
        "{error}"
    );
}

#[test]
fn load_file_reads_json_by_extension_and_guesses_otherwise() {
    let json = TempFile::new("b.json", r#"{"node": {"id": "j"}}"#);
    assert_eq!(
        load_file(&json.0, None).map(|b| b.node.id).ok(),
        Some("j".to_string())
    );
    let unnamed = TempFile::new("b.conf", "node: {id: y}\n");
    assert_eq!(
        load_file(&unnamed.0, None).map(|b| b.node.id).ok(),
        Some("y".to_string())
    );
}

#[test]
fn load_file_names_a_missing_file() {
    let path = std::path::Path::new("/nonexistent/keel/bootstrap.yaml");
    let error = load_file(path, None)
        .err()
        .unwrap_or_else(|| panic!("a missing file should not load"));
    assert!(
        error
            .to_string()
            .starts_with("/nonexistent/keel/bootstrap.yaml: cannot read"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------
// Filter chains and listener filters.

/// A userspace listener `edge` with `listener` lines (listener level, indented 4) and
/// `chains` (the items of filter_chains, indented 4), and a cluster `a`.
fn listener_yaml(listener: &str, chains: &str) -> String {
    format!(
        r#"
static_resources:
  listeners:
  - name: edge
    address: {{socket_address: {{address: 127.0.0.1, port_value: 10000}}}}
{listener}
    filter_chains:
{chains}
  clusters:
  - name: a
    load_assignment:
      cluster_name: a
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 9001}}}}}}}}]}}]
"#
    )
}

/// A filter chain item to cluster `a`, with `match_yaml` as its filter_chain_match
/// (flow style), or none.
fn chain_to_a(match_yaml: Option<&str>) -> String {
    let mut chain = String::from("    - filters:\n      - name: envoy.filters.network.tcp_proxy\n        typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: a, cluster: a}\n");
    if let Some(m) = match_yaml {
        chain.push_str(&format!("      filter_chain_match: {m}\n"));
    }
    chain
}

#[test]
fn filter_chain_matches_load() {
    let yaml = listener_yaml(
        r#"    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}
    per_connection_buffer_limit_bytes: 32768
    listener_filters_timeout: 2s"#,
        &[
            chain_to_a(Some(
                r#"{server_names: ["*.Example.com"], destination_port: 10000, prefix_ranges: [{address_prefix: 127.0.0.9, prefix_len: 8}], source_type: SAME_IP_OR_LOOPBACK, transport_protocol: tls, application_protocols: [h2], source_ports: [4000]}"#,
            )),
            chain_to_a(None),
        ]
        .concat(),
    );
    let model = load_yaml(&yaml);
    let listener = &model.listeners[0];
    assert_eq!(listener.buffer_limit, 32768);
    assert!(listener.listener_filters.tls_inspector);
    assert_eq!(
        listener.listener_filters.timeout,
        Some(Duration::from_secs(2))
    );
    let m = &listener.filter_chains[0].filter_chain_match;
    assert_eq!(m.server_names, vec!["*.example.com".to_string()]);
    assert_eq!(m.destination_port, Some(10000));
    assert_eq!(
        m.prefix_ranges[0].address,
        "127.0.0.0".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(m.transport_protocol.as_deref(), Some("tls"));
    assert_eq!(m.source_ports, vec![4000]);
    assert_eq!(
        listener.filter_chains[1].filter_chain_match,
        Default::default()
    );
}

#[test]
fn filter_chain_errors_name_the_field() {
    let chains = "static_resources.listeners[0].filter_chains";
    expect_error(
        &listener_yaml("", &[chain_to_a(None), chain_to_a(None)].concat()),
        &format!("{chains}[1].filter_chain_match"),
        "the same as the filter_chain_match of filter_chains[0]",
    );
    expect_error(
        &listener_yaml(
            "",
            &chain_to_a(Some(r#"{server_names: ["w*.example.com"]}"#)),
        ),
        &format!("{chains}[0].filter_chain_match.server_names[0]"),
        "not a server name",
    );
    expect_error(
        &listener_yaml(
            "",
            &chain_to_a(Some(
                "{prefix_ranges: [{address_prefix: 10.0.0.0, prefix_len: 33}]}",
            )),
        ),
        &format!("{chains}[0].filter_chain_match.prefix_ranges[0].prefix_len"),
        "longer than the address",
    );
    expect_error(
        &listener_yaml(
            r#"    listener_filters:
    - name: envoy.filters.listener.original_dst"#,
            &chain_to_a(None),
        ),
        "static_resources.listeners[0].listener_filters[0]",
        "not supported",
    );
    expect_error(
        &listener_yaml(
            "    metadata: {filter_metadata: {keel: {balancing: KERNEL}}}",
            &[
                chain_to_a(Some("{destination_port: 10000}")),
                chain_to_a(None),
            ]
            .concat(),
        ),
        chains,
        "exactly one filter chain",
    );
}

#[test]
fn cluster_buffer_limit_defaults_to_one_mebibyte() {
    let model = load_yaml(&minimal("", CLUSTER_C, "", ENDPOINT));
    assert_eq!(model.clusters[0].buffer_limit, 1024 * 1024);
    let model = load_yaml(&minimal(
        "",
        CLUSTER_C,
        "    per_connection_buffer_limit_bytes: 16384",
        ENDPOINT,
    ));
    assert_eq!(model.clusters[0].buffer_limit, 16384);
}
