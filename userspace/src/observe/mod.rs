//! Observability: what happened to each stream ([`StreamInfo`]), Envoy's
//! `%COMMAND%` formatter for access logs and header values ([`format`]), access logs
//! ([`access_log`]) and the stats store with Envoy's stat names ([`stats`]).

pub mod access_log;
pub mod format;
pub mod stats;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

/// Everything known about one request/response exchange, filled in by the connection
/// manager and the router as the stream goes, read by the formatter.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    /// Wall-clock start (for `%START_TIME%`).
    pub start_time: SystemTime,
    /// Monotonic start (for durations).
    pub start: Instant,
    /// Downstream client (`%DOWNSTREAM_REMOTE_ADDRESS%`): the peer, or the trusted
    /// client address from `x-forwarded-for` (then with port 0).
    pub downstream_remote: SocketAddr,
    /// The connection's peer (`%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%`).
    pub downstream_direct_remote: SocketAddr,
    /// Local address the request arrived on (`%DOWNSTREAM_LOCAL_ADDRESS%`).
    pub downstream_local: SocketAddr,
    /// "HTTP/1.1", "HTTP/2" (`%PROTOCOL%`).
    pub protocol: &'static str,
    /// Request headers as received (after the connection manager's own edits), with
    /// the pseudo-headers `:method`, `:path`, `:authority`, `:scheme` present.
    pub request_headers: http::HeaderMap,
    /// Response headers sent downstream (empty until known).
    pub response_headers: http::HeaderMap,
    /// Response trailers (gRPC).
    pub response_trailers: http::HeaderMap,
    /// Status sent downstream (0 when none was sent).
    pub response_code: u16,
    /// Envoy response flags, e.g. "UF", "UH,URX" ("-" when empty).
    pub response_flags: Vec<&'static str>,
    /// Request body bytes received.
    pub bytes_received: u64,
    /// Response body bytes sent.
    pub bytes_sent: u64,
    /// Time of the last downstream request byte, from `start`.
    pub request_duration: Option<Duration>,
    /// Time of the first upstream response byte, from `start`.
    pub response_duration: Option<Duration>,
    /// Time the stream ended, from `start`.
    pub duration: Option<Duration>,
    /// Upstream host chosen (`%UPSTREAM_HOST%`).
    pub upstream_host: Option<SocketAddr>,
    /// Upstream cluster name (`%UPSTREAM_CLUSTER%`).
    pub upstream_cluster: Option<String>,
    /// Route name (`%ROUTE_NAME%`).
    pub route_name: Option<String>,
    /// The route's `metadata.filter_metadata` (`%METADATA(ROUTE:..)%`).
    pub route_metadata: Option<std::sync::Arc<serde_json::Map<String, serde_json::Value>>>,
    /// Details of a local reply (`%RESPONSE_CODE_DETAILS%`).
    pub response_code_details: Option<String>,
    /// Tries sent upstream, retries included (`%UPSTREAM_REQUEST_ATTEMPT_COUNT%`; 0
    /// when the request never went upstream).
    pub upstream_attempt_count: u32,
}

impl StreamInfo {
    /// A new stream starting now.
    pub fn new(
        downstream_remote: SocketAddr,
        downstream_local: SocketAddr,
        protocol: &'static str,
    ) -> Self {
        StreamInfo {
            start_time: SystemTime::now(),
            start: Instant::now(),
            downstream_remote,
            downstream_direct_remote: downstream_remote,
            downstream_local,
            protocol,
            request_headers: http::HeaderMap::new(),
            response_headers: http::HeaderMap::new(),
            response_trailers: http::HeaderMap::new(),
            response_code: 0,
            response_flags: Vec::new(),
            bytes_received: 0,
            bytes_sent: 0,
            request_duration: None,
            response_duration: None,
            duration: None,
            upstream_host: None,
            upstream_cluster: None,
            route_name: None,
            route_metadata: None,
            response_code_details: None,
            upstream_attempt_count: 0,
        }
    }
}
