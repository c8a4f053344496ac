//! A cluster's connection-pool settings, from the `common_http_protocol_options` and
//! `http2_protocol_options` of its `HttpProtocolOptions`.

use std::time::Duration;

/// Envoy's default upstream connection `idle_timeout` (1 hour).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Envoy's default `max_concurrent_streams` for HTTP/2 (since 1.36).
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;

/// How keel pools connections to a cluster's hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolOptions {
    /// `common_http_protocol_options.max_requests_per_connection`: a connection is
    /// closed (HTTP/1.1) or drained (HTTP/2) after this many requests; `None`: no limit.
    pub max_requests_per_connection: Option<u32>,
    /// `common_http_protocol_options.idle_timeout`: a connection with no request for
    /// this long is closed (default 1 hour; `None` when `0s` disables it).
    pub idle_timeout: Option<Duration>,
    /// `http2_protocol_options.max_concurrent_streams`: streams per HTTP/2 connection
    /// before another connection is opened (default 1024).
    pub max_concurrent_streams: u32,
}

impl Default for PoolOptions {
    fn default() -> PoolOptions {
        PoolOptions {
            max_requests_per_connection: None,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
        }
    }
}
