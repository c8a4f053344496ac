//! The HTTP connection manager (`envoy.filters.network.http_connection_manager`):
//! serves HTTP/1.1 and h2c on a listener's connections with hyper, applies Envoy's
//! connection-manager behaviour to every request, runs the HTTP filter chain and
//! ends it with the router, which answers locally or forwards upstream.
//!
//! Layout:
//! - this module: [`ConnectionManager`] (built once per listener filter chain from the
//!   validated model) and the per-connection loop: codec choice, connection timeouts;
//! - `request`: the request pipeline (validation, header mutations, routing, local
//!   replies, the filter chain);
//! - `proxy`: the router's forward: cluster and endpoint, rewrites, upstream
//!   request and timeouts, request mirroring; `upgrade`: upgraded (websocket)
//!   streams spliced, with their idle timeout and access log;
//! - `retry`: the retry state of a request (Envoy's decisions, back-off) and the
//!   request body kept for replays;
//! - [`filter`]: the [`HttpFilter`](filter::HttpFilter) interface and chain;
//! - [`body`], `stream`: bodies and the per-request state that ends with the
//!   response body (stats, pool release, access logs);
//! - `headers`: `x-forwarded-*`, `x-request-id`, hop-by-hop headers, path
//!   normalization; [`local_reply`]: Envoy-shaped local replies (gRPC included);
//! - `flagged_sleep`: the connection's deadline timer, polled only when it fired.
//!
//! Codec: `AUTO` peeks at the first bytes of a connection for the HTTP/2 preface and
//! hands the socket to hyper's HTTP/1 or HTTP/2 server directly (no rewind buffer);
//! only a client that sent part of the preface and paused goes through hyper-util's
//! auto-detecting server. HTTP/1 connections are upgradeable only when
//! `upgrade_configs` (of the connection manager or of a route) allow websocket.
//!
//! Connection timeouts: `request_headers_timeout` is hyper's HTTP/1 header read
//! timeout (which also bounds how long an idle keep-alive connection waits for its
//! next request); `idle_timeout` closes a connection with no stream for that long
//! (checked every quarter of it, so within 1 to 1.25 times the timeout) and
//! `max_connection_duration` drains it (HTTP/2 GOAWAY, HTTP/1 `connection: close`
//! after the stream in flight), both followed by `drain_timeout`.
//!
//! Stream timeouts, as Envoy: the route `timeout` runs from the end of the request to
//! the end of the response (504, flag UT, before response headers; a reset after);
//! `stream_idle_timeout` or the route's `idle_timeout` (flag SI), `request_timeout`
//! (408 while the request is incomplete) and `max_stream_duration` (the connection
//! manager's, or the route's `max_stream_duration`, which may take a gRPC request's
//! `grpc-timeout` and then rewrites that header to the limit), each answering 408
//! while the request is still arriving and 504 once it is complete (gRPC: status 4). One timer serves
//! them all per stream, re-armed lazily and reused across a connection's streams.
//!
//! Known differences from Envoy 1.40, by design or not done yet:
//! - while a request body streams in, the stream is not checked for idleness (only
//!   `request_timeout` bounds a stalled upload);
//! - too many headers on HTTP/2 gets a 431 reply rather than a stream reset;
//! - (as Envoy) a response that starts before the request body has all arrived gets
//!   no x-envoy-upstream-service-time (which counts from the request's end) and, on
//!   HTTP/1, closes the connection (`connection: close`); so does a local reply to a
//!   request whose body was not read;
//! - an HTTP/2 client that opens more streams than `max_concurrent_streams` gets the
//!   excess ones refused (RST_STREAM REFUSED_STREAM, hyper's h2) and the others served;
//!   Envoy 1.40 closes the whole connection;
//! - (as Envoy) `grpc-timeout` is honoured only on routes whose `max_stream_duration`
//!   sets `grpc_timeout_header_max`; such a route's `timeout` is not applied;
//! - trailers are not sent to HTTP/1.1 peers (Envoy's default, `enable_trailers`
//!   off): hyper writes only trailers named by a `trailer` header;
//! - no retry hedging or `retry_priority`; no CONNECT / extended
//!   CONNECT (answered 403), no TLS (the scheme is always `http`, so
//!   `require_tls` redirects every request it covers);
//! - `delayed_close_timeout` is accepted and not applied: Envoy waits that long for the
//!   peer to close after a reply that closes the connection (so that the reply is not
//!   lost to a reset); keel's hyper flushes the reply and closes, which no client can
//!   tell apart;
//! - `local_reply_config` formats read the request headers the stream keeps (as for
//!   access logs), so a reply made before the request's headers were processed (e.g.
//!   426 to HTTP/1.0, too many headers) formats without them.

pub mod body;
pub mod filter;
mod flagged_sleep;
mod headers;
pub mod local_reply;
mod proxy;
mod request;
mod retry;
#[cfg(test)]
mod retry_tests;
mod stats;
mod stream;
#[cfg(test)]
pub(crate) mod tests;
mod upgrade;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use flagged_sleep::FlaggedSleep;

use crate::model::http::{
    ClusterSpecifier, Codec, HttpConnectionManager, HttpFilter as FilterConfig, RouteAction,
};
use crate::observe::access_log::{AccessLogError, AccessLogger};
use crate::observe::format::FormatContext;
use crate::observe::StreamInfo;
use crate::router::{RouteTable, RouteTableError, RouteTableOptions};
use crate::upstream::Upstreams;

pub use stream::ResponseBody;

/// Why a connection manager could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The route configuration does not compile.
    #[error("http connection manager {stat_prefix}: {source}")]
    RouteConfig {
        /// The connection manager's `stat_prefix`.
        stat_prefix: String,
        /// What is wrong.
        source: RouteTableError,
    },
    /// The `local_reply_config` does not compile.
    #[error("http connection manager {stat_prefix}: {source}")]
    LocalReply {
        /// The connection manager's `stat_prefix`.
        stat_prefix: String,
        /// What is wrong.
        source: local_reply::LocalReplyError,
    },
    /// An access log could not be set up.
    #[error("http connection manager {stat_prefix}: {source}")]
    AccessLog {
        /// The connection manager's `stat_prefix`.
        stat_prefix: String,
        /// What is wrong.
        source: AccessLogError,
    },
}

/// Per-route values computed once, indexed by virtual host then route.
#[derive(Debug, Default)]
struct RouteExtras {
    /// `x-envoy-expected-rq-timeout-ms` for the route's timeout.
    expected_timeout: Option<HeaderValue>,
    /// Whether the route's response header mutations read request headers
    /// (`%REQ(..)%`), which are then kept for them.
    response_reads_request: bool,
    /// The cluster of a forward to one named cluster, looked up once.
    cluster: Option<Arc<crate::upstream::ClusterUpstream>>,
}

/// An HTTP connection manager: everything a listener's filter chain needs to serve
/// HTTP, compiled once.
pub struct ConnectionManager {
    config: Arc<HttpConnectionManager>,
    routes: RouteTable,
    route_extras: Vec<Vec<RouteExtras>>,
    filters: filter::FilterChain,
    upstreams: Arc<Upstreams>,
    access_logs: Vec<AccessLogger>,
    /// `local_reply_config`.
    local_reply: Option<local_reply::LocalReplyRewriter>,
    /// Per virtual host, the stats of its `virtual_clusters` and of `other`; empty
    /// for a virtual host without virtual clusters.
    virtual_cluster_stats: Vec<Vec<stats::VirtualClusterStats>>,
    stats: stats::HcmStats,
    headers: headers::HeaderPolicy,
    /// `upgrade_configs` of the connection manager allow websocket.
    upgrade_websocket: bool,
    /// Some route or the connection manager allows websocket: HTTP/1 connections
    /// are served upgradeable.
    upgradeable: bool,
    /// The listener's `per_connection_buffer_limit_bytes`: the request body kept for
    /// retries when the route sets no limit of its own.
    buffer_limit: u64,
    h1: hyper::server::conn::http1::Builder,
    h2: hyper::server::conn::http2::Builder<TokioExecutor>,
    /// For the rare client that pauses inside the HTTP/2 preface.
    auto: hyper_util::server::conn::auto::Builder<TokioExecutor>,
}

impl std::fmt::Debug for ConnectionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionManager")
            .field("stat_prefix", &self.config.stat_prefix)
            .field("codec", &self.config.codec)
            .field("filters", &self.filters)
            .finish_non_exhaustive()
    }
}

impl ConnectionManager {
    /// Compiles `config`; requests are forwarded to `upstreams`.
    pub fn new(
        config: Arc<HttpConnectionManager>,
        upstreams: Arc<Upstreams>,
    ) -> Result<ConnectionManager, HttpError> {
        ConnectionManager::with_filters(config, upstreams, Vec::new())
    }

    /// Like [`new`](Self::new), with `filters` in front of the router, before the
    /// filters of `config.http_filters` (for filters the model cannot describe yet,
    /// and tests).
    pub fn with_filters(
        config: Arc<HttpConnectionManager>,
        upstreams: Arc<Upstreams>,
        extra_filters: Vec<Arc<dyn filter::HttpFilter>>,
    ) -> Result<ConnectionManager, HttpError> {
        let options = RouteTableOptions {
            ignore_port_in_host_matching: config.route_config.options.ignore_port_in_host_matching,
            most_specific_header_mutations_wins: config
                .route_config
                .options
                .most_specific_header_mutations_wins,
        };
        let routes = RouteTable::try_new(&config.route_config, options).map_err(|source| {
            HttpError::RouteConfig {
                stat_prefix: config.stat_prefix.clone(),
                source,
            }
        })?;
        let route_level_reads = config
            .route_config
            .headers
            .response_add
            .iter()
            .any(|h| h.value.contains("%REQ"));
        let route_extras = config
            .route_config
            .virtual_hosts
            .iter()
            .map(|vhost| {
                let vhost_reads = vhost
                    .headers
                    .response_add
                    .iter()
                    .any(|h| h.value.contains("%REQ"));
                vhost
                    .routes
                    .iter()
                    .map(|route| RouteExtras {
                        expected_timeout: match &route.action {
                            // Envoy's: the per-try timeout when it is the shorter one.
                            RouteAction::Forward(forward) => {
                                let per_try = forward
                                    .retry_policy
                                    .as_ref()
                                    .and_then(|p| p.per_try_timeout);
                                match (forward.timeout, per_try) {
                                    (Some(global), Some(per_try)) => Some(global.min(per_try)),
                                    (global, per_try) => global.or(per_try),
                                }
                                .map(|t| headers::configured_millis_value(t.as_millis() as u64))
                            }
                            _ => None,
                        },
                        response_reads_request: route_level_reads
                            || vhost_reads
                            || route
                                .headers
                                .response_add
                                .iter()
                                .any(|h| h.value.contains("%REQ")),
                        cluster: match &route.action {
                            RouteAction::Forward(forward) => match &forward.cluster {
                                ClusterSpecifier::Cluster(name) => upstreams.get(name).cloned(),
                                _ => None,
                            },
                            _ => None,
                        },
                    })
                    .collect()
            })
            .collect();
        let access_logs = config
            .access_logs
            .iter()
            .map(AccessLogger::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| HttpError::AccessLog {
                stat_prefix: config.stat_prefix.clone(),
                source,
            })?;
        let local_reply = config
            .options
            .local_reply
            .as_ref()
            .map(local_reply::LocalReplyRewriter::new)
            .transpose()
            .map_err(|source| HttpError::LocalReply {
                stat_prefix: config.stat_prefix.clone(),
                source,
            })?;
        // The router is the only HTTP filter so far and ends every chain implicitly.
        let mut filters = extra_filters;
        filters.extend(config.http_filters.iter().filter_map(|f| match f {
            FilterConfig::Router => None,
        }));
        let filters = filter::FilterChain::new(filters);

        let mut h1 = hyper::server::conn::http1::Builder::new();
        h1.max_header_size(config.max_request_headers_kb as usize * 1024);
        if config.max_headers_count != 100 {
            // hyper's default is 100 (Envoy's too) and costs nothing; another limit
            // makes hyper allocate the header index per request.
            h1.max_headers(config.max_headers_count as usize);
        }
        if let Some(timeout) = config.timeouts.request_headers {
            h1.timer(TokioTimer::new()).header_read_timeout(timeout);
        }
        let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        h2.max_concurrent_streams(config.http2.max_concurrent_streams)
            .initial_stream_window_size(config.http2.initial_stream_window_size)
            .initial_connection_window_size(config.http2.initial_connection_window_size)
            .max_header_list_size(config.max_request_headers_kb.saturating_mul(1024));
        let mut auto = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        auto.http1()
            .max_buf_size((config.max_request_headers_kb as usize * 1024).max(8192));
        if config.max_headers_count != 100 {
            auto.http1().max_headers(config.max_headers_count as usize);
        }
        if let Some(timeout) = config.timeouts.request_headers {
            auto.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout);
        }
        auto.http2()
            .max_concurrent_streams(config.http2.max_concurrent_streams)
            .initial_stream_window_size(config.http2.initial_stream_window_size)
            .initial_connection_window_size(config.http2.initial_connection_window_size)
            .max_header_list_size(config.max_request_headers_kb.saturating_mul(1024));

        let upgrade_websocket = config.upgrade_types.iter().any(|t| t == "websocket");
        let upgradeable = upgrade_websocket
            || config.route_config.virtual_hosts.iter().any(|vhost| {
                vhost.routes.iter().any(|route| match &route.action {
                    RouteAction::Forward(forward) => forward
                        .upgrades
                        .iter()
                        .any(|(kind, enabled)| *enabled && kind == "websocket"),
                    _ => false,
                })
            });
        Ok(ConnectionManager {
            routes,
            route_extras,
            filters,
            upstreams,
            access_logs,
            local_reply,
            virtual_cluster_stats: config
                .route_config
                .virtual_hosts
                .iter()
                .map(|vhost| {
                    let clusters = &vhost.options.virtual_clusters;
                    if clusters.is_empty() {
                        return Vec::new();
                    }
                    clusters
                        .iter()
                        .map(|vc| vc.name.as_str())
                        .chain(["other"])
                        .map(|name| stats::VirtualClusterStats::new(&vhost.name, name))
                        .collect()
                })
                .collect(),
            stats: stats::HcmStats::new(&config.stat_prefix),
            headers: headers::HeaderPolicy::new(&config),
            upgrade_websocket,
            upgradeable,
            buffer_limit: retry::DEFAULT_BUFFER_LIMIT,
            h1,
            h2,
            auto,
            config,
        })
    }

    /// Whether a websocket upgrade may go through `route`: its `upgrade_configs`
    /// decide when they name websocket, else the connection manager's (Envoy's
    /// `createUpgradeFilterChain`).
    fn websocket_allowed(&self, route: &crate::model::http::Route) -> bool {
        let by_route = match &route.action {
            RouteAction::Forward(forward) => forward
                .upgrades
                .iter()
                .find(|(kind, _)| kind == "websocket")
                .map(|(_, enabled)| *enabled),
            _ => None,
        };
        by_route.unwrap_or(self.upgrade_websocket)
    }

    /// Keeps at most `limit` bytes of a request body for retries when the route sets
    /// no limit (the listener's `per_connection_buffer_limit_bytes`; 1 MiB otherwise).
    pub fn with_buffer_limit(mut self, limit: u32) -> ConnectionManager {
        self.buffer_limit = u64::from(limit);
        self
    }

    /// The configuration served.
    pub fn config(&self) -> &HttpConnectionManager {
        &self.config
    }

    /// Accepts connections on `listener` and serves each on its own task, until
    /// the task running this is aborted.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    tokio::spawn(Arc::clone(&self).serve_connection(stream, peer));
                }
                Err(e) => {
                    tracing::warn!(stat_prefix = %self.config.stat_prefix, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    /// Serves one downstream connection until it closes.
    pub async fn serve_connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let Ok(local) = stream.local_addr() else {
            return;
        };
        let _ = stream.set_nodelay(true);
        self.stats.downstream_cx_total.inc();
        self.stats.downstream_cx_active.inc();
        let codec = match self.config.codec {
            Codec::Http1 => Some(Codec::Http1),
            Codec::Http2 => Some(Codec::Http2),
            Codec::Auto => sniff(&stream).await,
        };
        let conn = Arc::new(Connection {
            hcm: Arc::clone(&self),
            peer,
            local,
            epoch: Instant::now(),
            active_streams: AtomicUsize::new(0),
            ended_streams: AtomicU64::new(0),
            spare_timers: std::sync::Mutex::new(Vec::new()),
        });
        // HTTP/1: hyper keeps the request future in its dispatcher. HTTP/2: hyper
        // moves each stream's future into a task of its own; boxed, that is a pointer
        // instead of a few kilobytes of state (measured: fewer instructions per
        // HTTP/2 request, more per HTTP/1 one, where the box is not needed).
        let unboxed = {
            let conn = Arc::clone(&conn);
            service_fn(move |request| {
                let conn = Arc::clone(&conn);
                async move { Ok::<_, Infallible>(conn.handle(request).await) }
            })
        };
        let boxed = {
            let conn = Arc::clone(&conn);
            service_fn(move |request| {
                let handling = Box::pin(Arc::clone(&conn).handle(request));
                async move { Ok::<_, Infallible>(handling.await) }
            })
        };
        // This future lives in the connection's task for as long as the connection is
        // open, and is as large as its largest branch: HTTP/1 (the common case) stays
        // inline, the larger HTTP/2 and auto-detecting connections are boxed (one
        // allocation per connection), so an HTTP/1 connection does not pay for them.
        let io = TokioIo::new(stream);
        match codec {
            Some(Codec::Http1) => {
                self.stats.downstream_cx_http1_total.inc();
                if self.upgradeable {
                    let connection = pin!(self.h1.serve_connection(io, unboxed).with_upgrades());
                    conn.drive(connection).await;
                } else {
                    conn.drive(pin!(self.h1.serve_connection(io, unboxed)))
                        .await;
                }
            }
            Some(Codec::Http2) => {
                self.stats.downstream_cx_http2_total.inc();
                conn.drive(Box::pin(self.h2.serve_connection(io, boxed)).as_mut())
                    .await;
            }
            _ => {
                let connection = self.auto.serve_connection_with_upgrades(io, boxed);
                conn.drive(Box::pin(connection).as_mut()).await;
            }
        }
        self.stats.downstream_cx_active.dec();
    }

    /// Writes a finished stream to the access logs.
    fn log(&self, info: &StreamInfo, request_line: Option<&(http::Method, http::Uri)>) {
        if self.access_logs.is_empty() {
            return;
        }
        let mut context = FormatContext::new(info).with_scheme(request::SCHEME);
        if let Some((method, uri)) = request_line {
            context = context.with_request_line(method, uri);
        }
        for logger in &self.access_logs {
            logger.log_with(&context);
        }
    }

    /// Writes out every access-log line logged so far (for shutdown and tests).
    pub fn flush_access_logs(&self) {
        for logger in &self.access_logs {
            logger.flush();
        }
    }

    /// Whether streams must keep copies of their headers for the access logs (or for
    /// `local_reply_config` formats, which may read them).
    fn logs(&self) -> bool {
        !self.access_logs.is_empty() || self.local_reply.is_some()
    }
}

/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HTTP/1 or HTTP/2 by the first bytes; `None` when the client sent part of the
/// preface and nothing more yet (hyper-util's auto server then waits for the rest).
async fn sniff(stream: &TcpStream) -> Option<Codec> {
    let mut buf = [0u8; 24];
    let n = match stream.peek(&mut buf).await {
        Ok(n) => n,
        Err(_) => return Some(Codec::Http1),
    };
    if n == 0 || buf[..n] != H2_PREFACE[..n] {
        Some(Codec::Http1)
    } else if n == H2_PREFACE.len() {
        Some(Codec::Http2)
    } else {
        None
    }
}

/// A downstream connection.
pub(crate) struct Connection {
    hcm: Arc<ConnectionManager>,
    peer: SocketAddr,
    local: SocketAddr,
    epoch: Instant,
    active_streams: AtomicUsize,
    /// Streams ended so far (the idle check compares it between two looks).
    ended_streams: AtomicU64,
    /// Stream timers kept for the next streams (see `stream::Timers`).
    spare_timers: std::sync::Mutex<Vec<Pin<Box<tokio::time::Sleep>>>>,
}

/// A hyper server connection that can be asked to finish gracefully.
trait Graceful: Future {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(self)
    }
}

impl<I, S> Graceful for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::Connection::graceful_shutdown(self)
    }
}

impl<I, S, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http2::Connection::graceful_shutdown(self)
    }
}

impl<I, S, E> Graceful for hyper_util::server::conn::auto::UpgradeableConnection<'_, I, S, E>
where
    S: hyper::service::Service<
        http::Request<hyper::body::Incoming>,
        Response = http::Response<ResponseBody>,
    >,
    S::Future: 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, ResponseBody>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper_util::server::conn::auto::UpgradeableConnection::graceful_shutdown(self)
    }
}

impl Connection {
    /// A timer left by an earlier stream, if any.
    #[inline]
    fn take_spare_timer(&self) -> Option<Pin<Box<tokio::time::Sleep>>> {
        self.spare_timers.lock().ok()?.pop()
    }

    /// Keeps a stream's timer for a later stream (a few per connection at most).
    #[inline]
    fn put_spare_timer(&self, timer: Pin<Box<tokio::time::Sleep>>) {
        if let Ok(mut spares) = self.spare_timers.lock() {
            if spares.len() < 16 {
                spares.push(timer);
            }
        }
    }

    /// A stream ended.
    #[inline]
    fn stream_ended(&self) {
        self.ended_streams.fetch_add(1, Ordering::Relaxed);
        self.active_streams.fetch_sub(1, Ordering::Relaxed);
    }

    /// Drives a hyper connection to its end, enforcing `idle_timeout` and
    /// `max_connection_duration` (each followed by `drain_timeout`).
    ///
    /// Idleness is checked every quarter of `idle_timeout` (streams only bump a
    /// counter, no clock read): a connection is closed once no stream was active or
    /// ended during a whole `idle_timeout`, i.e. between 1 and 1.25 idle timeouts
    /// after its last stream.
    ///
    /// The connection comes pinned by the caller: moved in by value, it would take
    /// its size twice in this future's state (the argument and the pinned copy),
    /// and an idle connection's task keeps that state for as long as it is open.
    async fn drive<C, T, E>(&self, mut connection: Pin<&mut C>)
    where
        C: Graceful<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let timeouts = &self.hcm.config.timeouts;
        let idle = timeouts.connection_idle;
        let max_duration = timeouts.max_connection_duration.map(|d| self.epoch + d);
        if idle.is_none() && max_duration.is_none() {
            if let Err(e) = connection.await {
                tracing::debug!(peer = %self.peer, "downstream connection ended: {e}");
            }
            return;
        }
        let check_every = idle.map(|idle| (idle / 4).max(Duration::from_millis(1)));
        let mut idle_since = self.epoch;
        let mut ended_seen = 0;
        let mut next_check = check_every.map(|every| self.epoch + every);
        let mut drain_deadline: Option<Instant> = None;
        let mut timer: Option<FlaggedSleep> = None;
        loop {
            let wake = if drain_deadline.is_some() {
                drain_deadline
            } else {
                [next_check, max_duration].into_iter().flatten().min()
            }
            .expect("a deadline is set");
            let sleep = match timer.as_mut() {
                Some(sleep) => {
                    sleep.reset(wake);
                    sleep
                }
                None => timer.insert(FlaggedSleep::until(wake)),
            };
            let ended = std::future::poll_fn(|cx| {
                if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                    return Poll::Ready(Some(result));
                }
                sleep.poll_elapsed(cx).map(|()| None)
            })
            .await;
            if let Some(result) = ended {
                if let Err(e) = result {
                    tracing::debug!(peer = %self.peer, "downstream connection ended: {e}");
                }
                return;
            }
            let now = Instant::now();
            if drain_deadline.is_some_and(|d| d <= now) {
                return; // Dropping the connection closes it.
            }
            if drain_deadline.is_some() {
                continue;
            }
            let mut expired = false;
            if let (Some(idle), Some(every)) = (idle, check_every) {
                let ended = self.ended_streams.load(Ordering::Relaxed);
                if self.active_streams.load(Ordering::Relaxed) > 0 || ended != ended_seen {
                    ended_seen = ended;
                    idle_since = now;
                } else if now.saturating_duration_since(idle_since) >= idle {
                    self.hcm.stats.downstream_cx_idle_timeout.inc();
                    expired = true;
                }
                next_check = Some(now + every);
            }
            if !expired && max_duration.is_some_and(|d| d <= now) {
                self.hcm.stats.downstream_cx_max_duration_reached.inc();
                expired = true;
            }
            if expired {
                connection.as_mut().graceful_shutdown();
                drain_deadline = Some(now + timeouts.drain);
            }
        }
    }
}
