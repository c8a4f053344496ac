//! How a cluster learns that a host is unhealthy: active health checks
//! (`health_checks`) and passive outlier detection (`outlier_detection`).
//!
//! Defaults are Envoy's; `config` fills every field, so the checker and the detector
//! never guess.

use std::ops::Range;
use std::time::Duration;

/// One entry of a cluster's `health_checks` (Envoy supports one per cluster).
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// `timeout`: how long one check may take.
    pub timeout: Duration,
    /// `interval`: time between two checks of a host.
    pub interval: Duration,
    /// `initial_jitter`: the first check of a host waits a random time up to this.
    pub initial_jitter: Duration,
    /// `interval_jitter`: a random time up to this is added to every interval.
    pub interval_jitter: Duration,
    /// `interval_jitter_percent`: a random share of the interval, up to this percent,
    /// is added to every interval.
    pub interval_jitter_percent: u32,
    /// `unhealthy_threshold`: failed checks in a row that take a host out of rotation
    /// (an HTTP status outside `expected_statuses` does it at once, as in Envoy).
    pub unhealthy_threshold: u32,
    /// `healthy_threshold`: passed checks in a row that bring a host back (the first
    /// check of a new host needs one).
    pub healthy_threshold: u32,
    /// `no_traffic_interval` (60 s): the interval while the cluster has never opened a
    /// connection for traffic.
    pub no_traffic_interval: Duration,
    /// `no_traffic_healthy_interval`: the same, for hosts that are healthy (defaults to
    /// `no_traffic_interval`).
    pub no_traffic_healthy_interval: Option<Duration>,
    /// `unhealthy_interval`: the interval for hosts that are unhealthy.
    pub unhealthy_interval: Option<Duration>,
    /// `unhealthy_edge_interval`: the interval right after a host became unhealthy.
    pub unhealthy_edge_interval: Option<Duration>,
    /// `healthy_edge_interval`: the interval right after a host became healthy.
    pub healthy_edge_interval: Option<Duration>,
    /// `reuse_connection` (true): keep the check's connection open between checks.
    pub reuse_connection: bool,
    /// What a check sends and what counts as a pass.
    pub checker: Checker,
}

/// The kind of health check.
#[derive(Debug, Clone, PartialEq)]
pub enum Checker {
    /// `http_health_check`.
    Http(HttpCheck),
    /// `tcp_health_check`.
    Tcp(TcpCheck),
    /// `grpc_health_check`.
    Grpc(GrpcCheck),
}

impl Checker {
    /// Envoy's name of the checker kind, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Checker::Http(_) => "http",
            Checker::Tcp(_) => "tcp",
            Checker::Grpc(_) => "grpc",
        }
    }
}

/// The HTTP codec of an HTTP health check (`codec_client_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpCodec {
    /// HTTP/1.1 (Envoy's default).
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
}

/// `http_health_check`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpCheck {
    /// `host`: the `Host` / `:authority` sent; the cluster's name when empty.
    pub host: Option<String>,
    /// `path` (required).
    pub path: String,
    /// `method` (GET by default).
    pub method: http::Method,
    /// `expected_statuses` as half-open ranges; `[200, 201)` by default.
    pub expected_statuses: Vec<Range<u16>>,
    /// `retriable_statuses`: failures that count towards `unhealthy_threshold` instead
    /// of failing the host at once.
    pub retriable_statuses: Vec<Range<u16>>,
    /// `request_headers_to_add` (name, value), in order.
    pub request_headers_to_add: Vec<(http::HeaderName, http::HeaderValue)>,
    /// `request_headers_to_remove`.
    pub request_headers_to_remove: Vec<http::HeaderName>,
    /// `codec_client_type`.
    pub codec: HttpCodec,
}

/// `tcp_health_check`: connect, send `send` (if any), and pass when every
/// `receive` payload has been read (in any order, as Envoy matches them in the
/// buffer); empty `send` and `receive` make it a connect-only check.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpCheck {
    /// `send`, decoded from hex `text` or `binary`.
    pub send: Vec<u8>,
    /// `receive`, each decoded.
    pub receive: Vec<Vec<u8>>,
}

/// `grpc_health_check`: `grpc.health.v1.Health/Check` over h2c; SERVING passes.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcCheck {
    /// `service_name` (empty: the server's overall health).
    pub service_name: String,
    /// `authority`: the `:authority`; the cluster's name when empty.
    pub authority: Option<String>,
    /// `initial_metadata` (name, value).
    pub initial_metadata: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// A cluster's `outlier_detection`, with Envoy's defaults filled in. Percentages are
/// 0..=100.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierDetection {
    /// `interval` (10 s): how often success rates are computed and ejections end.
    pub interval: Duration,
    /// `base_ejection_time` (30 s): ejection time = this × times ejected.
    pub base_ejection_time: Duration,
    /// `max_ejection_time` (300 s): the cap of the ejection time.
    pub max_ejection_time: Duration,
    /// `max_ejection_time_jitter` (0): random time added to an ejection.
    pub max_ejection_time_jitter: Duration,
    /// `max_ejection_percent` (10).
    pub max_ejection_percent: u32,
    /// `consecutive_5xx` (5).
    pub consecutive_5xx: u32,
    /// `enforcing_consecutive_5xx` (100).
    pub enforcing_consecutive_5xx: u32,
    /// `consecutive_gateway_failure` (5).
    pub consecutive_gateway_failure: u32,
    /// `enforcing_consecutive_gateway_failure` (0).
    pub enforcing_consecutive_gateway_failure: u32,
    /// `split_external_local_origin_errors` (false).
    pub split_external_local_origin_errors: bool,
    /// `consecutive_local_origin_failure` (5).
    pub consecutive_local_origin_failure: u32,
    /// `enforcing_consecutive_local_origin_failure` (100).
    pub enforcing_consecutive_local_origin_failure: u32,
    /// `enforcing_success_rate` (100).
    pub enforcing_success_rate: u32,
    /// `enforcing_local_origin_success_rate` (100).
    pub enforcing_local_origin_success_rate: u32,
    /// `success_rate_minimum_hosts` (5).
    pub success_rate_minimum_hosts: u32,
    /// `success_rate_request_volume` (100).
    pub success_rate_request_volume: u32,
    /// `success_rate_stdev_factor` (1900, i.e. 1.9).
    pub success_rate_stdev_factor: u32,
    /// `failure_percentage_threshold` (85).
    pub failure_percentage_threshold: u32,
    /// `enforcing_failure_percentage` (0).
    pub enforcing_failure_percentage: u32,
    /// `enforcing_failure_percentage_local_origin` (0).
    pub enforcing_failure_percentage_local_origin: u32,
    /// `failure_percentage_minimum_hosts` (5).
    pub failure_percentage_minimum_hosts: u32,
    /// `failure_percentage_request_volume` (50).
    pub failure_percentage_request_volume: u32,
    /// `successful_active_health_check_uneject_host` (true).
    pub successful_active_health_check_uneject_host: bool,
}

impl Default for OutlierDetection {
    /// Envoy's defaults (`outlier_detection: {}`).
    fn default() -> OutlierDetection {
        OutlierDetection {
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_time_jitter: Duration::ZERO,
            max_ejection_percent: 10,
            consecutive_5xx: 5,
            enforcing_consecutive_5xx: 100,
            consecutive_gateway_failure: 5,
            enforcing_consecutive_gateway_failure: 0,
            split_external_local_origin_errors: false,
            consecutive_local_origin_failure: 5,
            enforcing_consecutive_local_origin_failure: 100,
            enforcing_success_rate: 100,
            enforcing_local_origin_success_rate: 100,
            success_rate_minimum_hosts: 5,
            success_rate_request_volume: 100,
            success_rate_stdev_factor: 1900,
            failure_percentage_threshold: 85,
            enforcing_failure_percentage: 0,
            enforcing_failure_percentage_local_origin: 0,
            failure_percentage_minimum_hosts: 5,
            failure_percentage_request_volume: 50,
            successful_active_health_check_uneject_host: true,
        }
    }
}
