//! Validated domain types: what the rest of keel runs on.
//!
//! Nothing here knows about protobuf or YAML. `config` converts an Envoy v3 bootstrap
//! into these types and rejects what keel does not support; everything after that
//! (listeners, clusters, the kernel data path) trusts them.

pub mod breakers;
pub mod health;
pub mod http;
pub mod listener;
pub mod pool;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A whole validated configuration: what one keel process serves.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// `node` identity as given in the bootstrap or on the command line.
    pub node: Node,
    /// The admin listener, if configured.
    pub admin: Option<Admin>,
    /// Static listeners, in file order.
    pub listeners: Vec<Listener>,
    /// Static clusters, in file order. Names are unique.
    pub clusters: Vec<Cluster>,
    /// Settings of the kernel data path (the `keel.v1.Datapath` bootstrap extension).
    pub datapath: Datapath,
    /// The bootstrap as Envoy's proto3 JSON (for the admin `/config_dump`).
    pub config_dump: serde_json::Value,
}

/// The node's identity (`node.id`, `node.cluster`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Node {
    /// `node.id` / `--service-node`.
    pub id: String,
    /// `node.cluster` / `--service-cluster`.
    pub cluster: String,
}

/// The admin endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    /// Where the admin API listens.
    pub address: SocketAddr,
}

/// Transport protocol of a listener or service address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP (Envoy's default).
    Tcp,
    /// UDP.
    Udp,
}

/// A listener: an address and what to do with the connections made to it.
#[derive(Debug, Clone)]
pub struct Listener {
    /// `name`; unique.
    pub name: String,
    /// `address.socket_address`.
    pub address: SocketAddr,
    /// `address.socket_address.protocol`.
    pub protocol: Protocol,
    /// `filter_chains`, in order; their `filter_chain_match`es are all different.
    pub filter_chains: Vec<FilterChain>,
    /// `default_filter_chain`: for connections no chain matches (else they are closed).
    pub default_filter_chain: Option<FilterChain>,
    /// `listener_filters`.
    pub listener_filters: listener::ListenerFilters,
    /// `per_connection_buffer_limit_bytes` (Envoy's default 1 MiB): how much keel
    /// buffers per connection and direction before it stops reading.
    pub buffer_limit: u32,
    /// Where connections are balanced (`metadata` key "keel", `balancing`).
    pub balancing: Balancing,
}

/// Where a listener's connections are balanced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balancing {
    /// keel accepts and proxies in userspace.
    Userspace,
    /// The cgroup connect hooks pick an endpoint in the kernel.
    Kernel,
}

/// One filter chain of a listener.
#[derive(Debug, Clone)]
pub struct FilterChain {
    /// `name` (may be empty).
    pub name: String,
    /// `filter_chain_match`.
    pub filter_chain_match: listener::FilterChainMatch,
    /// The network filters, in order; the last one terminates.
    pub filters: Vec<NetworkFilter>,
}

/// A network filter.
#[derive(Debug, Clone)]
pub enum NetworkFilter {
    /// `envoy.filters.network.tcp_proxy`.
    TcpProxy(TcpProxy),
    /// `envoy.filters.network.http_connection_manager` (shared: it is large).
    HttpConnectionManager(Arc<http::HttpConnectionManager>),
}

/// `envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy`.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpProxy {
    /// `stat_prefix`.
    pub stat_prefix: String,
    /// `cluster`: the upstream cluster's name (checked to exist); with
    /// `weighted_clusters`, the first of them.
    pub cluster: String,
    /// `weighted_clusters.clusters`: (name, weight), each checked to exist; empty
    /// when a single `cluster` is given. Each connection goes to one of them, picked
    /// at random in proportion to the weights.
    pub weighted_clusters: Vec<(String, u32)>,
    /// `idle_timeout`: 1 hour when left out (Envoy's default); `None` when `0s`
    /// disables it.
    pub idle_timeout: Option<Duration>,
}

/// A cluster of endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// `name`; unique.
    pub name: String,
    /// `connect_timeout` (Envoy's default is 5s).
    pub connect_timeout: Duration,
    /// `per_connection_buffer_limit_bytes` (Envoy's default 1 MiB): the most an
    /// upstream HTTP/1.1 connection buffers while reading a response head.
    pub buffer_limit: u32,
    /// `lb_policy` with its policy-specific settings.
    pub lb_policy: LbPolicy,
    /// For a STATIC cluster, `load_assignment.endpoints[*].lb_endpoints[*]` flattened in
    /// order (what the kernel and the tcp_proxy balance); empty for the other types,
    /// whose hosts are discovered at run time.
    pub endpoints: Vec<Endpoint>,
    /// `type` with its discovery settings.
    pub discovery: Discovery,
    /// `load_assignment.endpoints`: the localities with their priority, weight and
    /// endpoints, in order.
    pub localities: Vec<LocalityEndpoints>,
    /// `load_assignment.policy.overprovisioning_factor` in percent (Envoy's default 140).
    pub overprovisioning_factor: u32,
    /// `common_lb_config`.
    pub common_lb: CommonLbConfig,
    /// The HTTP protocol spoken to the endpoints
    /// (`typed_extension_protocol_options` `envoy.extensions.upstreams.http.v3.HttpProtocolOptions`).
    pub upstream_protocol: UpstreamProtocol,
    /// `circuit_breakers` (Envoy's default thresholds when left out).
    pub circuit_breakers: breakers::CircuitBreakers,
    /// `health_checks`.
    pub health_checks: Vec<health::HealthCheck>,
    /// `outlier_detection`: `None` when left out (no passive health checking).
    pub outlier_detection: Option<health::OutlierDetection>,
    /// Connection-pool settings (`HttpProtocolOptions`).
    pub pool: pool::PoolOptions,
}

impl Default for Cluster {
    /// A STATIC round-robin HTTP/1.1 cluster with no endpoints and Envoy's defaults.
    fn default() -> Cluster {
        Cluster {
            name: String::new(),
            connect_timeout: Duration::from_secs(5),
            buffer_limit: 1024 * 1024,
            lb_policy: LbPolicy::RoundRobin,
            endpoints: Vec::new(),
            discovery: Discovery::Static,
            localities: Vec::new(),
            overprovisioning_factor: DEFAULT_OVERPROVISIONING_FACTOR,
            common_lb: CommonLbConfig::default(),
            upstream_protocol: UpstreamProtocol::Http1,
            circuit_breakers: breakers::CircuitBreakers::default(),
            health_checks: Vec::new(),
            outlier_detection: None,
            pool: pool::PoolOptions::default(),
        }
    }
}

impl Cluster {
    /// The localities of the cluster: `localities` when given, otherwise one locality
    /// of priority 0 holding `endpoints` (a cluster built in code with endpoints only).
    pub fn effective_localities(&self) -> std::borrow::Cow<'_, [LocalityEndpoints]> {
        if self.localities.is_empty() && !self.endpoints.is_empty() {
            std::borrow::Cow::Owned(vec![LocalityEndpoints {
                endpoints: self
                    .endpoints
                    .iter()
                    .map(|e| LbEndpoint {
                        address: EndpointAddress::Socket(e.address),
                        weight: e.weight,
                    })
                    .collect(),
                ..LocalityEndpoints::default()
            }])
        } else {
            std::borrow::Cow::Borrowed(&self.localities)
        }
    }
}

/// Envoy's default `overprovisioning_factor` (140%).
pub const DEFAULT_OVERPROVISIONING_FACTOR: u32 = 140;

/// How a cluster finds its hosts (`type`).
#[derive(Debug, Clone, PartialEq)]
pub enum Discovery {
    /// `STATIC`: the IP addresses of `load_assignment`.
    Static,
    /// `STRICT_DNS`: every address each endpoint's hostname resolves to is a host.
    StrictDns(Dns),
    /// `LOGICAL_DNS`: one endpoint, its hostname's first address is the one host.
    LogicalDns(Dns),
    /// `ORIGINAL_DST`: hosts made on demand from each request's original destination.
    OriginalDst(OriginalDst),
}

/// DNS settings of a STRICT_DNS or LOGICAL_DNS cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Dns {
    /// `dns_refresh_rate` (Envoy's default 5 s).
    pub refresh_rate: Duration,
    /// `respect_dns_ttl`: refresh when the answer's TTL expires instead.
    pub respect_ttl: bool,
    /// `dns_failure_refresh_rate` (base, max): the backoff after a failed resolution;
    /// `None`: retry at `refresh_rate`.
    pub failure_refresh: Option<(Duration, Duration)>,
    /// `dns_lookup_family`.
    pub lookup_family: DnsLookupFamily,
    /// `typed_dns_resolver_config` (c-ares `resolvers`): the name servers to ask;
    /// empty means the system's (`/etc/resolv.conf`). `/etc/hosts` is always read.
    pub resolvers: Vec<SocketAddr>,
}

impl Default for Dns {
    fn default() -> Dns {
        Dns {
            refresh_rate: Duration::from_secs(5),
            respect_ttl: false,
            failure_refresh: None,
            lookup_family: DnsLookupFamily::Auto,
            resolvers: Vec::new(),
        }
    }
}

/// `dns_lookup_family`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DnsLookupFamily {
    /// `AUTO` (the default): IPv6, else IPv4.
    #[default]
    Auto,
    /// `V4_ONLY`.
    V4Only,
    /// `V6_ONLY`.
    V6Only,
    /// `V4_PREFERRED`: IPv4, else IPv6.
    V4Preferred,
    /// `ALL`: both.
    All,
}

/// Settings of an ORIGINAL_DST cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct OriginalDst {
    /// `original_dst_lb_config.use_http_header`: take the destination from the
    /// request header [`OriginalDst::header_name`].
    pub use_http_header: bool,
    /// `original_dst_lb_config.http_header_name` (default `x-envoy-original-dst-host`).
    pub header_name: ::http::HeaderName,
    /// `original_dst_lb_config.upstream_port_override`.
    pub port_override: Option<u16>,
    /// `cleanup_interval` (Envoy's default 5 s): a host unused this long is removed.
    pub cleanup_interval: Duration,
}

/// One entry of `load_assignment.endpoints`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LocalityEndpoints {
    /// `locality`.
    pub locality: Locality,
    /// `priority` (0 is the highest).
    pub priority: u32,
    /// `load_balancing_weight` (used with locality-weighted balancing).
    pub weight: Option<u32>,
    /// `lb_endpoints`, in order.
    pub endpoints: Vec<LbEndpoint>,
}

/// `envoy.config.core.v3.Locality`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Locality {
    /// `region`.
    pub region: String,
    /// `zone`.
    pub zone: String,
    /// `sub_zone`.
    pub sub_zone: String,
}

/// One `lb_endpoints` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LbEndpoint {
    /// `endpoint.address.socket_address`.
    pub address: EndpointAddress,
    /// `load_balancing_weight` (1 by default, at least 1).
    pub weight: u32,
}

/// Where an endpoint is: an IP address, or a name to resolve (DNS clusters).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointAddress {
    /// An IP address and port.
    Socket(SocketAddr),
    /// A hostname and port (STRICT_DNS, LOGICAL_DNS).
    Dns {
        /// `socket_address.address`.
        hostname: String,
        /// `socket_address.port_value`.
        port: u16,
    },
}

/// `common_lb_config`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CommonLbConfig {
    /// `healthy_panic_threshold` in percent (Envoy's default 50; 0 disables panic).
    pub healthy_panic_threshold: f64,
    /// `locality_weighted_lb_config`: pick a locality by weight first.
    pub locality_weighted: bool,
}

impl Default for CommonLbConfig {
    fn default() -> CommonLbConfig {
        CommonLbConfig {
            healthy_panic_threshold: 50.0,
            locality_weighted: false,
        }
    }
}

/// The HTTP protocol keel speaks to a cluster's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (Envoy's default).
    Http1,
    /// HTTP/2 (`explicit_http_config.http2_protocol_options`), h2c on plaintext.
    Http2,
    /// The downstream request's protocol (`use_downstream_protocol_config`).
    UseDownstream,
}

/// A cluster's load-balancing policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LbPolicy {
    /// `ROUND_ROBIN`, weighted by endpoint weights.
    RoundRobin,
    /// `LEAST_REQUEST`; in the kernel: least active connections.
    LeastRequest {
        /// `least_request_lb_config.choice_count` (default 2, at least 2).
        choice_count: u32,
        /// `least_request_lb_config.active_request_bias` (default 1.0).
        active_request_bias: f64,
    },
    /// `RANDOM`, weighted.
    Random,
    /// `MAGLEV` with `maglev_lb_config.table_size` (a prime; Envoy's default is 65537).
    Maglev {
        /// Lookup-table size.
        table_size: u32,
    },
    /// `RING_HASH` (userspace only) with xxHash64.
    RingHash {
        /// `ring_hash_lb_config.minimum_ring_size` (default 1024).
        minimum_ring_size: u64,
        /// `ring_hash_lb_config.maximum_ring_size` (default 8M).
        maximum_ring_size: u64,
    },
    /// `CLUSTER_PROVIDED`: the cluster picks (ORIGINAL_DST).
    ClusterProvided,
}

impl LbPolicy {
    /// `LEAST_REQUEST` with Envoy's defaults.
    pub const LEAST_REQUEST: LbPolicy = LbPolicy::LeastRequest {
        choice_count: 2,
        active_request_bias: 1.0,
    };
    /// `RING_HASH` with Envoy's defaults.
    pub const RING_HASH: LbPolicy = LbPolicy::RingHash {
        minimum_ring_size: 1024,
        maximum_ring_size: 8 * 1024 * 1024,
    };
}

/// One endpoint of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// `endpoint.address.socket_address`.
    pub address: SocketAddr,
    /// `load_balancing_weight`, 1 by default, at least 1.
    pub weight: u32,
}

/// What to do when the kernel data path cannot be loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenUnavailable {
    /// Exit with an error.
    Fail,
    /// Serve kernel-balanced listeners from userspace.
    Userspace,
}

/// Kernel data-path settings (`keel.v1.Datapath`).
#[derive(Debug, Clone, PartialEq)]
pub struct Datapath {
    /// cgroup v2 folder to attach to; `None` means the cgroup v2 root.
    pub cgroup_path: Option<PathBuf>,
    /// bpffs folder for pinned maps.
    pub bpffs_path: PathBuf,
    /// Behaviour when the kernel path is unavailable.
    pub on_unavailable: WhenUnavailable,
}

impl Default for Datapath {
    fn default() -> Self {
        Datapath {
            cgroup_path: None,
            bpffs_path: PathBuf::from("/sys/fs/bpf/keel"),
            on_unavailable: WhenUnavailable::Fail,
        }
    }
}

impl Bootstrap {
    /// The cluster with this name.
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }
}
