//! Upstream HTTP: per cluster, the endpoints, the picker (`lb`) and the connection
//! pools (`pool`) the router sends requests through.
//!
//! # Pool design
//!
//! Each endpoint owns one pool shared by every worker thread:
//!
//! - HTTP/1.1: a LIFO stack of idle keep-alive connections behind a
//!   `std::sync::Mutex` held only for one push or pop. A connection goes back on the
//!   stack when its response body has been read to the end and its request body fully
//!   sent; dropped earlier, it is closed. LIFO keeps the hottest connections in use and
//!   lets the rest be closed by the idle timeouts. keel's own client (`h1`) drives
//!   each exchange in the task of the request that leases the connection.
//! - HTTP/2 (h2c by prior knowledge): multiplexed connections per endpoint whose
//!   `SendRequest` handles are cloned per request; a request takes the first
//!   connection with fewer streams than `max_concurrent_streams`, and another
//!   connection is made when all are full (an async lock makes concurrent callers
//!   share one handshake).
//! - A request with no connection ready is *pending* until it gets one (a new
//!   connection, or one freed when `max_connections` is reached): see `pool` and
//!   [`breaker`] for the circuit breakers that bound connections, pending requests,
//!   requests and retries.
//!
//! Why shared and not per worker: the tokio runtime steals tasks between workers, so
//! a "per-worker" pool would only be a per-thread cache whose connections still get
//! driven from other threads; N workers would also open N times the upstream
//! connections and warm up N times slower. The lock is uncontended in practice (one
//! compare-and-swap each way, held for a `Vec` push/pop) and was cheaper to get
//! right than a lock-free stack; revisit if a profile says otherwise.
//!
//! HTTP/2 and upgraded HTTP/1.1 connections are driven by a task each (hyper's
//! `Connection` future). Every connection sets `TCP_NODELAY` and is bounded by the
//! cluster's `connect_timeout`. Stats use Envoy's names under `cluster.<name>.`.

pub mod breaker;
mod discovery;
mod h1;
pub mod hash;
pub mod health;
#[cfg(test)]
mod health_tests;
mod host;
mod lb;
pub mod outlier;
mod pool;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
pub use h1::{H1Error, UpstreamBody};
use hyper::{Request, Response};

use crate::http::body::Body;
use crate::model::breakers::RoutingPriority;
use crate::model::{self, LbPolicy, UpstreamProtocol};
use crate::observe::stats::{self, Counter, Gauge};

pub use discovery::DnsError;
pub use host::{HealthFlags, Host, HostStats};
pub(crate) use lb::{fast_random, fast_random_pair};
pub use lb::{HostLocalities, LbStats};

/// Why a request could not be sent upstream or got no response headers.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The cluster has no endpoint to pick.
    #[error("cluster {cluster}: no healthy upstream")]
    NoHealthyUpstream {
        /// Cluster name.
        cluster: String,
    },
    /// The TCP connection was refused or failed.
    #[error("upstream {endpoint}: connection failure: {source}")]
    ConnectFailure {
        /// The endpoint.
        endpoint: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The TCP connection did not complete within `connect_timeout`.
    #[error("upstream {endpoint}: connection timeout after {timeout:?}")]
    ConnectTimeout {
        /// The endpoint.
        endpoint: SocketAddr,
        /// The cluster's connect_timeout.
        timeout: Duration,
    },
    /// The connection or stream was closed or reset before response headers.
    #[error("upstream {endpoint}: reset before response headers: {source}")]
    Reset {
        /// The endpoint.
        endpoint: SocketAddr,
        /// What happened.
        source: ResetCause,
    },
    /// A circuit breaker refused the request (`max_requests`,
    /// `max_pending_requests`, or `max_connections` for an upgrade).
    #[error("upstream {endpoint}: circuit breaker open: too many {resource}")]
    Overflow {
        /// The endpoint.
        endpoint: SocketAddr,
        /// What ran out ("requests", "pending requests", "connections").
        resource: &'static str,
    },
}

impl UpstreamError {
    /// Envoy's reset reason, as it appears in the 503 body
    /// ("upstream connect error or disconnect/reset before headers. reset reason: ...").
    pub fn reset_reason(&self) -> &'static str {
        match self {
            UpstreamError::NoHealthyUpstream { .. } => "no healthy upstream",
            UpstreamError::ConnectFailure { .. } => "remote connection failure",
            UpstreamError::ConnectTimeout { .. } => "connection timeout",
            UpstreamError::Overflow { .. } => "overflow",
            UpstreamError::Reset { source, .. } => {
                if source.is_termination() {
                    "connection termination"
                } else if source.is_protocol_error() {
                    "protocol error"
                } else {
                    "remote reset"
                }
            }
        }
    }

    /// Envoy's response flag: UH, UF (connect failure or timeout), UC (termination),
    /// UR (remote reset) or UO (circuit breaker overflow).
    pub fn response_flag(&self) -> &'static str {
        match self {
            UpstreamError::NoHealthyUpstream { .. } => "UH",
            UpstreamError::Overflow { .. } => "UO",
            UpstreamError::ConnectFailure { .. } | UpstreamError::ConnectTimeout { .. } => "UF",
            UpstreamError::Reset { source, .. } if source.is_termination() => "UC",
            UpstreamError::Reset { .. } => "UR",
        }
    }
}

/// What reset an upstream exchange before its response headers.
#[derive(Debug, thiserror::Error)]
pub enum ResetCause {
    /// hyper's HTTP/2 client, or its HTTP/1.1 client for an upgrade.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// keel's HTTP/1.1 client (pooled connections).
    #[error(transparent)]
    Http1(#[from] H1Error),
}

impl ResetCause {
    /// The connection ended under the exchange (Envoy's "connection termination").
    pub fn is_termination(&self) -> bool {
        match self {
            ResetCause::Hyper(e) => e.is_closed() || e.is_incomplete_message() || e.is_canceled(),
            ResetCause::Http1(e) => e.is_termination(),
        }
    }

    /// The upstream broke the protocol.
    pub fn is_protocol_error(&self) -> bool {
        match self {
            ResetCause::Hyper(e) => e.is_parse(),
            ResetCause::Http1(e) => e.is_protocol_error(),
        }
    }
}

/// The clusters of a configuration, ready to send HTTP requests to.
#[derive(Debug, Default)]
pub struct Upstreams {
    clusters: HashMap<String, Arc<ClusterUpstream>>,
    /// Service discovery tasks (DNS, ORIGINAL_DST cleanup), aborted on drop.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Upstreams {
    /// Builds pools and pickers for `clusters` (no connection is made yet). Inside a
    /// tokio runtime this also starts service discovery (DNS resolution, ORIGINAL_DST
    /// cleanup) on it, in the background; outside one, call [`Upstreams::start`].
    pub fn new(clusters: &[model::Cluster]) -> Upstreams {
        let mut upstreams = Upstreams {
            clusters: clusters
                .iter()
                .map(|c| (c.name.clone(), Arc::new(ClusterUpstream::new(c))))
                .collect(),
            tasks: Vec::new(),
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            upstreams.start(&runtime, clusters);
        }
        upstreams
    }

    /// Starts the service discovery of `clusters` (the ones given to `new`) on
    /// `runtime`; does nothing if it already runs.
    pub fn start(&mut self, runtime: &tokio::runtime::Handle, clusters: &[model::Cluster]) {
        if !self.tasks.is_empty() {
            return;
        }
        for cluster in clusters {
            if let Some(upstream) = self.clusters.get(&cluster.name) {
                self.tasks
                    .extend(discovery::start(runtime, upstream, cluster));
            }
        }
    }

    /// Waits until every cluster has its first hosts (a DNS cluster's first
    /// resolution, successful or not), at most `limit`; returns whether all have.
    /// Envoy likewise serves only once its static clusters are initialized.
    pub async fn initialized(&self, limit: Duration) -> bool {
        let all = async {
            for cluster in self.clusters.values() {
                cluster.initialized().await;
            }
        };
        tokio::time::timeout(limit, all).await.is_ok()
    }

    /// The cluster called `name`.
    #[inline]
    pub fn get(&self, name: &str) -> Option<&Arc<ClusterUpstream>> {
        self.clusters.get(name)
    }

    /// Every cluster, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ClusterUpstream>> {
        self.clusters.values()
    }
}

impl Drop for Upstreams {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One cluster: its current hosts with their picker, and its stats.
#[derive(Debug)]
pub struct ClusterUpstream {
    name: String,
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
    /// `per_connection_buffer_limit_bytes`.
    buffer_limit: u32,
    lb_policy: LbPolicy,
    /// Connection-pool settings.
    pub(crate) pool: model::pool::PoolOptions,
    /// Circuit breakers per priority.
    pub breakers: breaker::Breakers,
    /// What the pickers are built from.
    lb_settings: lb::LbSettings,
    /// The hosts and the picker over them; replaced whole when the hosts or their
    /// health change (requests keep the set they loaded).
    hosts: ArcSwap<HostSet>,
    /// Serializes the writers of `hosts` (discovery, health changes).
    update: Mutex<()>,
    /// ORIGINAL_DST settings.
    original_dst: Option<model::OriginalDst>,
    /// Set once the cluster has its first hosts.
    initialized: tokio::sync::watch::Sender<bool>,
    /// `cluster.<name>.*` stats.
    pub stats: ClusterStats,
    /// `cluster.<name>.` membership and `lb_healthy_panic` stats.
    pub lb_stats: Arc<LbStats>,
    /// Active health checking and outlier detection, where configured.
    pub health: health::ClusterHealth,
}

/// A cluster's hosts and the load balancer built over them.
#[derive(Debug)]
pub struct HostSet {
    /// Every host, healthy or not, in configuration (or discovery) order.
    pub hosts: Vec<Arc<Host>>,
    /// The locality of each host.
    pub localities: Arc<HostLocalities>,
    lb: lb::LoadBalancer,
}

impl HostSet {
    fn new(
        settings: &lb::LbSettings,
        hosts: Vec<Arc<Host>>,
        localities: Arc<HostLocalities>,
    ) -> HostSet {
        let lb = lb::LoadBalancer::build(settings, &hosts, &localities);
        HostSet {
            hosts,
            localities,
            lb,
        }
    }
}

/// What picking a host may take into account besides the cluster's own state.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickContext<'a> {
    /// The request's hash from the route's `hash_policy`, for RING_HASH and MAGLEV
    /// (`None`: no policy matched; those policies then pick at random).
    pub hash: Option<u64>,
    /// Hosts earlier tries of this request went to (`retry_host_predicate`
    /// previous_hosts): avoided while another pick is allowed.
    pub previous_hosts: &'a [Arc<Host>],
    /// Picks made again when a pick lands on a previous host
    /// (`host_selection_retry_max_attempts`).
    pub reselect_attempts: u32,
    /// For an ORIGINAL_DST cluster: the request's original destination (see
    /// [`ClusterUpstream::original_destination`]).
    pub original_dst: Option<SocketAddr>,
}

/// How one request to a host ended, for the host's counters and outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers arrived with this status.
    Response(u16),
    /// The connection could not be made (refused, or connect timeout).
    ConnectFailure,
    /// The request timed out (route timeout or per-try timeout).
    Timeout,
    /// The connection or stream was reset before the response headers.
    Reset,
}

/// Which protocol to speak to the upstream for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireProtocol {
    /// HTTP/1.1 over a pooled keep-alive connection.
    Http1,
    /// HTTP/2 (h2c prior knowledge) over the endpoint's multiplexed connection.
    Http2,
}

impl ClusterUpstream {
    fn new(cluster: &model::Cluster) -> ClusterUpstream {
        // The IP endpoints are hosts from the start; names are resolved by discovery.
        let mut hosts = Vec::new();
        let mut localities = HostLocalities::default();
        for (index, locality) in cluster.effective_localities().iter().enumerate() {
            localities.weights.push(locality.weight.unwrap_or(0));
            for endpoint in &locality.endpoints {
                if let model::EndpointAddress::Socket(address) = endpoint.address {
                    hosts.push(Arc::new(Host::new(
                        address,
                        endpoint.weight,
                        locality.priority,
                    )));
                    localities.of_host.push(index as u32);
                }
            }
        }
        let health = health::ClusterHealth::new(cluster, &hosts);
        let lb_stats = Arc::new(LbStats::new(&cluster.name));
        let lb_settings = lb::LbSettings {
            policy: cluster.lb_policy,
            common: cluster.common_lb,
            overprovisioning_factor: cluster.overprovisioning_factor,
            stats: Some(Arc::clone(&lb_stats)),
        };
        let discovered = matches!(
            cluster.discovery,
            model::Discovery::StrictDns(_) | model::Discovery::LogicalDns(_)
        );
        ClusterUpstream {
            name: cluster.name.clone(),
            protocol: cluster.upstream_protocol,
            connect_timeout: cluster.connect_timeout,
            buffer_limit: cluster.buffer_limit,
            lb_policy: cluster.lb_policy,
            pool: cluster.pool,
            breakers: breaker::Breakers::new(&cluster.name, &cluster.circuit_breakers),
            hosts: ArcSwap::from_pointee(HostSet::new(&lb_settings, hosts, Arc::new(localities))),
            lb_settings,
            update: Mutex::new(()),
            original_dst: match &cluster.discovery {
                model::Discovery::OriginalDst(settings) => Some(settings.clone()),
                _ => None,
            },
            initialized: tokio::sync::watch::Sender::new(!discovered),
            stats: ClusterStats::new(&cluster.name),
            lb_stats,
            health,
        }
    }

    /// The cluster's `connect_timeout`.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The cluster's `per_connection_buffer_limit_bytes`.
    pub fn buffer_limit(&self) -> u32 {
        self.buffer_limit
    }

    /// The cluster's load-balancing policy.
    pub fn lb_policy(&self) -> LbPolicy {
        self.lb_policy
    }

    /// Waits until the cluster has its first hosts (immediately but for DNS clusters,
    /// whose first resolution, successful or not, initializes them).
    pub async fn initialized(&self) {
        let mut watch = self.initialized.subscribe();
        let _ = watch.wait_for(|done| *done).await;
    }

    /// Marks the cluster initialized (its first discovery round completed).
    fn mark_initialized(&self) {
        self.initialized.send_replace(true);
    }

    /// For an ORIGINAL_DST cluster, the destination of a request: the
    /// `original_dst_lb_config` header when `use_http_header` is set and the header
    /// holds an `ip:port`; `None` otherwise (no host: 503 UH). keel does not restore a
    /// redirected connection's original destination yet (no original_dst listener
    /// filter, no kernel redirect of L7 services), so the connection's local address
    /// is keel's own listener and using it would loop. `upstream_port_override`
    /// replaces the port.
    #[inline]
    pub fn original_destination(&self, headers: &http::HeaderMap) -> Option<SocketAddr> {
        let settings = self.original_dst.as_ref()?;
        discovery::original_destination(settings, headers)
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current hosts.
    pub fn hosts(&self) -> arc_swap::Guard<Arc<HostSet>> {
        self.hosts.load()
    }

    /// Publishes a new list of hosts (service discovery), all in one locality: the
    /// picker is rebuilt off the request path and swapped in whole.
    pub fn set_hosts(&self, hosts: Vec<Arc<Host>>) {
        self.set_hosts_in_localities(hosts, HostLocalities::default());
    }

    /// Publishes a new list of hosts with their localities (service discovery).
    pub fn set_hosts_in_localities(&self, hosts: Vec<Arc<Host>>, localities: HostLocalities) {
        let _writer = self.update.lock().unwrap_or_else(|e| e.into_inner());
        self.health.adopt(&self.hosts.load().hosts, &hosts);
        self.hosts.store(Arc::new(HostSet::new(
            &self.lb_settings,
            hosts,
            Arc::new(localities),
        )));
    }

    /// A host's health changed (health checking, outlier detection): rebuilds the
    /// picker over the same hosts.
    pub fn health_changed(&self) {
        let _writer = self.update.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.hosts.load();
        let rebuilt = HostSet::new(
            &self.lb_settings,
            current.hosts.clone(),
            Arc::clone(&current.localities),
        );
        self.hosts.store(Arc::new(rebuilt));
    }

    /// Records how a request to `host` ended: the host's counters (and, where
    /// configured, outlier detection).
    pub fn record_outcome(&self, host: &Host, outcome: Outcome) {
        let stats = &host.stats;
        match outcome {
            Outcome::Response(status) if status < 500 => host::bump(&stats.rq_success),
            Outcome::Timeout => {
                host::bump(&stats.rq_timeout);
                host::bump(&stats.rq_error);
            }
            _ => host::bump(&stats.rq_error),
        }
        if let Some(detector) = &self.health.outlier {
            detector.record(host, outcome);
        }
    }

    /// The protocol for a request that arrived as `downstream` (HTTP/1.x or HTTP/2).
    #[inline]
    pub fn wire_protocol(&self, downstream: http::Version) -> WireProtocol {
        match self.protocol {
            UpstreamProtocol::Http1 => WireProtocol::Http1,
            UpstreamProtocol::Http2 => WireProtocol::Http2,
            UpstreamProtocol::UseDownstream if downstream == http::Version::HTTP_2 => {
                WireProtocol::Http2
            }
            UpstreamProtocol::UseDownstream => WireProtocol::Http1,
        }
    }

    /// Picks a host for the next request. For an ORIGINAL_DST cluster, a destination
    /// seen for the first time gets its host here.
    #[inline]
    pub fn pick(&self, context: &PickContext<'_>) -> Option<Arc<Host>> {
        let set = self.hosts.load();
        match set.lb.pick(&set.hosts, context) {
            Some(i) => Some(Arc::clone(&set.hosts[i])),
            None if self.original_dst.is_some() => {
                self.add_original_dst_host(context.original_dst?)
            }
            None => None,
        }
    }

    /// Adds the host for a new original destination (a rare, locked path).
    #[cold]
    fn add_original_dst_host(&self, address: SocketAddr) -> Option<Arc<Host>> {
        let _writer = self.update.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.hosts.load();
        if let Some(host) = current.hosts.iter().find(|h| h.address == address) {
            return Some(Arc::clone(host));
        }
        let host = Arc::new(Host::new(address, 1, 0));
        let mut hosts = current.hosts.clone();
        hosts.push(Arc::clone(&host));
        self.hosts.store(Arc::new(HostSet::new(
            &self.lb_settings,
            hosts,
            Arc::clone(&current.localities),
        )));
        Some(host)
    }

    /// Sends `request` to `host` and waits for the response headers. The request's
    /// URI must be in origin form for HTTP/1.1 (with a `host` header) and in absolute
    /// form for HTTP/2. The returned [`Lease`] must live as long as the response body
    /// is read, and be [`Lease::release`]d once both bodies completed.
    pub async fn send(
        self: &Arc<Self>,
        host: &Arc<Host>,
        protocol: WireProtocol,
        request: Request<Body>,
    ) -> Result<(Response<Body>, Lease), UpstreamError> {
        self.send_at(host, protocol, RoutingPriority::Default, request)
            .await
    }

    /// [`send`](Self::send) counted against the circuit breakers of `priority`.
    pub async fn send_at(
        self: &Arc<Self>,
        host: &Arc<Host>,
        protocol: WireProtocol,
        priority: RoutingPriority,
        request: Request<Body>,
    ) -> Result<(Response<Body>, Lease), UpstreamError> {
        let mut lease = self.lease(host, priority)?;
        let level = self.breakers.at(priority);
        let response = match protocol {
            WireProtocol::Http1 => host.pool.send_h1(self, host, level, request).await?,
            WireProtocol::Http2 => {
                let (response, stream) = host.pool.send_h2(self, host, level, request).await?;
                lease.h2 = Some(stream);
                response
            }
        };
        self.stats.record_status(response.status().as_u16());
        Ok((response, lease))
    }

    /// Sends an HTTP/1.1 upgrade request (websocket) on a new connection of its own
    /// that is never pooled: after a `101` it belongs to the upgraded stream.
    pub async fn send_upgrade(
        self: &Arc<Self>,
        host: &Arc<Host>,
        request: Request<Body>,
    ) -> Result<(Response<Body>, Lease), UpstreamError> {
        let priority = RoutingPriority::Default;
        let lease = self.lease(host, priority)?;
        let level = self.breakers.at(priority);
        let response = host.pool.send_upgrade(self, host, level, request).await?;
        self.stats.record_status(response.status().as_u16());
        Ok((response.map(Body::Incoming), lease))
    }

    fn lease(
        self: &Arc<Self>,
        host: &Arc<Host>,
        priority: RoutingPriority,
    ) -> Result<Lease, UpstreamError> {
        if !self.breakers.at(priority).requests.try_acquire() {
            // Envoy 1.40's own counter for it (older versions counted it as a
            // pending overflow).
            self.stats.upstream_rq_active_overflow.inc();
            return Err(UpstreamError::Overflow {
                endpoint: host.address,
                resource: "requests",
            });
        }
        // `upstream_rq_total` is counted by the pool when a connection takes the
        // request (Envoy counts no request whose connection failed).
        self.stats.upstream_rq_active.inc();
        host::bump(&host.stats.rq_total);
        host.stats.rq_active.fetch_add(1, Ordering::Relaxed);
        host.active.fetch_add(1, Ordering::Relaxed);
        Ok(Lease {
            cluster: Arc::clone(self),
            host: Arc::clone(host),
            priority,
            h2: None,
        })
    }
}

/// One request's hold on its upstream: keeps the active-request counts up (and holds
/// an HTTP/2 stream) until the exchange is over. A pooled HTTP/1.1 connection belongs
/// to the response body instead, which gives it back when the exchange completes.
#[derive(Debug)]
pub struct Lease {
    cluster: Arc<ClusterUpstream>,
    host: Arc<Host>,
    priority: RoutingPriority,
    h2: Option<pool::H2Stream>,
}

impl Lease {
    /// The exchange completed cleanly (response read to the end, request body sent).
    pub fn release(self) {}

    /// The cluster this lease belongs to.
    pub fn cluster(&self) -> &Arc<ClusterUpstream> {
        &self.cluster
    }

    /// The host the request went to.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.cluster.breakers.at(self.priority).requests.release();
        self.cluster.stats.upstream_rq_active.dec();
        self.host.stats.rq_active.fetch_sub(1, Ordering::Relaxed);
        self.host.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `cluster.<name>.*` stats, resolved once per cluster.
#[derive(Debug)]
pub struct ClusterStats {
    prefix: String,
    /// `upstream_rq_total`.
    pub upstream_rq_total: Counter,
    /// `upstream_rq_active`.
    pub upstream_rq_active: Gauge,
    /// `upstream_rq_timeout`.
    pub upstream_rq_timeout: Counter,
    /// `upstream_cx_total`.
    pub upstream_cx_total: Counter,
    /// `upstream_cx_active`.
    pub upstream_cx_active: Gauge,
    /// `upstream_cx_http1_total`.
    pub upstream_cx_http1_total: Counter,
    /// `upstream_cx_http2_total`.
    pub upstream_cx_http2_total: Counter,
    /// `upstream_cx_connect_fail`.
    pub upstream_cx_connect_fail: Counter,
    /// `upstream_cx_connect_timeout`.
    pub upstream_cx_connect_timeout: Counter,
    /// `upstream_cx_overflow`: a connection the `max_connections` breaker refused.
    pub upstream_cx_overflow: Counter,
    /// `upstream_cx_idle_timeout`.
    pub upstream_cx_idle_timeout: Counter,
    /// `upstream_cx_max_requests`: connections closed or drained by
    /// `max_requests_per_connection`.
    pub upstream_cx_max_requests: Counter,
    /// `upstream_rq_pending_total`: requests that waited for a connection.
    pub upstream_rq_pending_total: Counter,
    /// `upstream_rq_pending_overflow`: requests the `max_pending_requests` breaker
    /// refused.
    pub upstream_rq_pending_overflow: Counter,
    /// `upstream_rq_active_overflow`: requests the `max_requests` breaker refused.
    pub upstream_rq_active_overflow: Counter,
    /// `upstream_rq_retry`.
    pub upstream_rq_retry: Counter,
    /// `upstream_rq_retry_success`.
    pub upstream_rq_retry_success: Counter,
    /// `upstream_rq_retry_overflow`: retries the `max_retries` breaker (or the retry
    /// budget) refused.
    pub upstream_rq_retry_overflow: Counter,
    /// `upstream_rq_retry_limit_exceeded`: retriable failures with no retry left.
    pub upstream_rq_retry_limit_exceeded: Counter,
    /// `upstream_rq_retry_backoff_exponential`.
    pub upstream_rq_retry_backoff_exponential: Counter,
    /// `upstream_rq_per_try_timeout`.
    pub upstream_rq_per_try_timeout: Counter,
    /// `upstream_rq_per_try_idle_timeout`.
    pub upstream_rq_per_try_idle_timeout: Counter,
    /// `retry_or_shadow_abandoned`: requests not retried because their body
    /// outgrew the buffer limit.
    pub retry_or_shadow_abandoned: Counter,
    /// `upstream_rq_1xx` .. `upstream_rq_5xx`.
    classes: [Counter; 5],
    /// `upstream_rq_<code>`, created on first use (index: code - 100).
    codes: Box<[OnceLock<Counter>]>,
}

impl ClusterStats {
    pub(crate) fn new(cluster: &str) -> ClusterStats {
        let prefix = format!("cluster.{cluster}.");
        let store = stats::global();
        let counter = |name: &str| store.counter(&format!("{prefix}{name}"));
        let gauge = |name: &str| store.gauge(&format!("{prefix}{name}"));
        ClusterStats {
            upstream_rq_total: counter("upstream_rq_total"),
            upstream_rq_active: gauge("upstream_rq_active"),
            upstream_rq_timeout: counter("upstream_rq_timeout"),
            upstream_cx_total: counter("upstream_cx_total"),
            upstream_cx_active: gauge("upstream_cx_active"),
            upstream_cx_http1_total: counter("upstream_cx_http1_total"),
            upstream_cx_http2_total: counter("upstream_cx_http2_total"),
            upstream_cx_connect_fail: counter("upstream_cx_connect_fail"),
            upstream_cx_connect_timeout: counter("upstream_cx_connect_timeout"),
            upstream_cx_overflow: counter("upstream_cx_overflow"),
            upstream_cx_idle_timeout: counter("upstream_cx_idle_timeout"),
            upstream_cx_max_requests: counter("upstream_cx_max_requests"),
            upstream_rq_pending_total: counter("upstream_rq_pending_total"),
            upstream_rq_pending_overflow: counter("upstream_rq_pending_overflow"),
            upstream_rq_active_overflow: counter("upstream_rq_active_overflow"),
            upstream_rq_retry: counter("upstream_rq_retry"),
            upstream_rq_retry_success: counter("upstream_rq_retry_success"),
            upstream_rq_retry_overflow: counter("upstream_rq_retry_overflow"),
            upstream_rq_retry_limit_exceeded: counter("upstream_rq_retry_limit_exceeded"),
            upstream_rq_retry_backoff_exponential: counter("upstream_rq_retry_backoff_exponential"),
            upstream_rq_per_try_timeout: counter("upstream_rq_per_try_timeout"),
            upstream_rq_per_try_idle_timeout: counter("upstream_rq_per_try_idle_timeout"),
            retry_or_shadow_abandoned: counter("retry_or_shadow_abandoned"),
            classes: [1, 2, 3, 4, 5].map(|c| counter(&format!("upstream_rq_{c}xx"))),
            codes: (100..600).map(|_| OnceLock::new()).collect(),
            prefix,
        }
    }

    /// Counts a response status from the upstream (`upstream_rq_<code>` and
    /// `upstream_rq_<class>xx`).
    #[inline]
    pub fn record_status(&self, code: u16) {
        if !(100..600).contains(&code) {
            return;
        }
        self.classes[(code / 100 - 1) as usize].inc();
        self.codes[(code - 100) as usize]
            .get_or_init(|| stats::global().counter(&format!("{}upstream_rq_{code}", self.prefix)))
            .inc();
    }
}
