//! One endpoint's connections: the HTTP/1.1 idle stack and the HTTP/2 connections
//! (see the design notes in [`super`]).
//!
//! A request first looks for a ready connection: an idle HTTP/1.1 connection, or an
//! HTTP/2 connection with fewer streams than `max_concurrent_streams`. Finding none,
//! it becomes *pending* (a slot of the `max_pending_requests` breaker; overflow is a
//! 503 with flag UO) and either opens a connection, if `max_connections` allows (or
//! the host has none at all, as in Envoy), or waits until a connection of the host
//! goes idle, frees a stream or closes. The route's timeout bounds the wait.
//!
//! `idle_timeout` closes a connection once it has had no request for that long
//! (`upstream_cx_idle_timeout`): an HTTP/2 connection's task enforces it, and for the
//! idle HTTP/1.1 stack a sweeper task runs while the stack is not empty, waking when
//! its oldest connection expires. A connection that served
//! `max_requests_per_connection` requests is closed (HTTP/1.1, after its last
//! response) or drained (HTTP/2: no new streams) (`upstream_cx_max_requests`).
//!
//! Pooled HTTP/1.1 connections have no task: keel's own client ([`super::h1`]) runs
//! each exchange in the task of the request that leased the connection. Upgrades
//! (websocket) take a hyper connection of their own, driven by a task.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::breaker::{ConnectionSlot, Level, Slot};
use super::h1::{ConnSettings, H1Conn, OpenConnection};
use super::host::{bump, Host};
use super::{ClusterUpstream, ResetCause, UpstreamError};
use crate::http::body::Body;
use crate::observe::stats::Counter;

/// Idle HTTP/1.1 connections kept per endpoint; more are closed.
const MAX_IDLE: usize = 1024;
/// Pooled connections tried before opening a new one, when the pooled ones turn
/// out to be closed by the upstream (each such attempt sends nothing).
const MAX_STALE: usize = 8;
/// HTTP/2 windows, as Envoy's defaults for clusters (256 MiB).
const H2_WINDOW: u32 = 268_435_456;
/// A pending request looks again this often even without a wake-up (a connection
/// closed by its peer wakes nobody until its task notices).
const PENDING_RECHECK: Duration = Duration::from_millis(50);

/// Milliseconds since the process's first use of the pools (for idle times).
fn now_millis() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// What a connection's task and its users share.
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    /// Requests sent on it so far.
    requests: AtomicU32,
    /// HTTP/2 streams in flight.
    active: AtomicU32,
    /// When it last became idle (`now_millis`), 0 while in use.
    idle_since: AtomicU64,
    /// No new requests (max_requests_per_connection reached).
    draining: AtomicBool,
}

impl ConnState {
    fn set_idle(&self) {
        self.idle_since.store(now_millis(), Ordering::Relaxed);
    }

    fn set_busy(&self) {
        self.idle_since.store(0, Ordering::Relaxed);
    }

    /// Counts a request; whether it was the last one the connection may take.
    fn count_request(&self, max: Option<u32>) -> bool {
        let served = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        max.is_some_and(|max| served >= max)
    }
}

/// A request's hold on an HTTP/2 connection: one stream.
#[derive(Debug)]
pub(crate) struct H2Stream {
    state: Arc<ConnState>,
    host: Arc<Host>,
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        if self.state.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.state.set_idle();
        }
        self.host.pool.released.notify_one();
    }
}

struct H2Conn {
    sender: http2::SendRequest<Body>,
    state: Arc<ConnState>,
}

/// The idle HTTP/1.1 connections of an endpoint, most recently used last.
#[derive(Debug, Default)]
struct IdleStack {
    /// Boxed: a connection moves between the stack and the requests that use it, and a
    /// pointer moves cheaper than the connection's state.
    #[allow(clippy::vec_box)]
    conns: Vec<Box<H1Conn>>,
    /// A sweeper task closes the connections idle for `idle_timeout`.
    sweeping: bool,
}

/// The connections to one endpoint.
#[derive(Debug)]
pub(crate) struct EndpointPool {
    /// The endpoint.
    pub(crate) address: SocketAddr,
    idle: Mutex<IdleStack>,
    h2: Mutex<Vec<H2Conn>>,
    h2_connecting: tokio::sync::Mutex<()>,
    /// Woken when a connection goes idle, frees a stream or closes: pending requests
    /// wait on it.
    released: Notify,
    /// Connections open (or being opened) to this endpoint.
    open: AtomicU32,
}

impl std::fmt::Debug for H2Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Conn")
            .field("state", &self.state)
            .finish()
    }
}

impl EndpointPool {
    pub(crate) fn new(address: SocketAddr) -> EndpointPool {
        EndpointPool {
            address,
            idle: Mutex::new(IdleStack::default()),
            h2: Mutex::new(Vec::new()),
            h2_connecting: tokio::sync::Mutex::new(()),
            released: Notify::new(),
            open: AtomicU32::new(0),
        }
    }

    fn reset(&self, source: impl Into<ResetCause>) -> UpstreamError {
        UpstreamError::Reset {
            endpoint: self.address,
            source: source.into(),
        }
    }

    /// Takes back a connection whose exchange completed (`host` owns this pool).
    pub(crate) fn put_idle(&self, host: &Arc<Host>, mut conn: Box<H1Conn>) {
        conn.idle_since = Instant::now();
        let sweeper = {
            let mut idle = self.idle.lock().expect("pool lock");
            // The timeout (and its counter) is read only to start a sweeper, not per request.
            let sweeper = if idle.sweeping {
                None
            } else {
                conn.idle_timeout()
            };
            idle.sweeping |= sweeper.is_some();
            if idle.conns.len() < MAX_IDLE {
                idle.conns.push(conn);
            }
            sweeper
        };
        if let Some((timeout, counter)) = sweeper {
            tokio::spawn(sweep_idle(Arc::downgrade(host), timeout, counter));
        }
        self.released.notify_one();
    }

    fn take_idle(&self) -> Option<Box<H1Conn>> {
        self.idle.lock().expect("pool lock").conns.pop()
    }

    /// Whether a new connection may be opened: the `max_connections` breaker, or
    /// the host has no connection at all. Takes the connection slot.
    /// `overflowed`: whether this request already counted an overflow (counted once
    /// per request, however often it looks again).
    fn may_connect(
        &self,
        cluster: &ClusterUpstream,
        level: &Level,
        overflowed: &mut bool,
    ) -> Option<ConnectionSlot> {
        if level.connections.try_acquire() {
            return Some(ConnectionSlot(Arc::clone(&level.connections)));
        }
        if !*overflowed {
            *overflowed = true;
            cluster.stats.upstream_cx_overflow.inc();
        }
        if self.open.load(Ordering::Relaxed) == 0 {
            level.connections.acquire_anyway();
            return Some(ConnectionSlot(Arc::clone(&level.connections)));
        }
        None
    }

    /// Waits (as a pending request) for a connection to go idle or close.
    async fn wait_released(&self) {
        let _ = tokio::time::timeout(PENDING_RECHECK, self.released.notified()).await;
    }

    /// Becomes pending: takes a `max_pending_requests` slot.
    fn pend<'a>(
        &self,
        cluster: &ClusterUpstream,
        level: &'a Level,
    ) -> Result<Slot<'a>, UpstreamError> {
        if !level.pending.try_acquire() {
            cluster.stats.upstream_rq_pending_overflow.inc();
            return Err(UpstreamError::Overflow {
                endpoint: self.address,
                resource: "pending requests",
            });
        }
        cluster.stats.upstream_rq_pending_total.inc();
        Ok(Slot(&level.pending))
    }

    /// A connection closed, or failed to open: its breaker slot is given back and a
    /// request waiting for a connection may go on.
    pub(crate) fn connection_gone(&self, slot: ConnectionSlot) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        drop(slot);
        self.released.notify_one();
    }

    /// Counts a connection as open while `open` makes it (connect, handshake); if that
    /// fails, the connection is gone again and its breaker slot given back.
    async fn opening<T>(
        &self,
        slot: ConnectionSlot,
        open: impl std::future::Future<Output = Result<T, UpstreamError>>,
    ) -> Result<(T, ConnectionSlot), UpstreamError> {
        self.open.fetch_add(1, Ordering::Relaxed);
        match open.await {
            Ok(opened) => Ok((opened, slot)),
            Err(e) => {
                self.connection_gone(slot);
                Err(e)
            }
        }
    }

    async fn connect(
        &self,
        cluster: &ClusterUpstream,
        host: &Host,
    ) -> Result<TcpStream, UpstreamError> {
        let stats = &cluster.stats;
        stats.upstream_cx_total.inc();
        bump(&host.stats.cx_total);
        match tokio::time::timeout(cluster.connect_timeout, TcpStream::connect(self.address)).await
        {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Ok(Err(source)) => {
                stats.upstream_cx_connect_fail.inc();
                bump(&host.stats.cx_connect_fail);
                Err(UpstreamError::ConnectFailure {
                    endpoint: self.address,
                    source,
                })
            }
            Err(_) => {
                stats.upstream_cx_connect_fail.inc();
                bump(&host.stats.cx_connect_fail);
                stats.upstream_cx_connect_timeout.inc();
                Err(UpstreamError::ConnectTimeout {
                    endpoint: self.address,
                    timeout: cluster.connect_timeout,
                })
            }
        }
    }

    /// Drives a connection until it ends or stays idle for `idle_timeout`, then
    /// updates the counts and wakes the pending requests.
    fn spawn_connection<F, E>(
        cluster: &ClusterUpstream,
        host: &Arc<Host>,
        slot: ConnectionSlot,
        state: Arc<ConnState>,
        connection: F,
    ) where
        F: std::future::Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        cluster.stats.upstream_cx_active.inc();
        host.stats.cx_active.fetch_add(1, Ordering::Relaxed);
        let active = cluster.stats.upstream_cx_active.clone();
        let idle_timeouts = cluster.stats.upstream_cx_idle_timeout.clone();
        let idle_timeout = cluster.pool.idle_timeout;
        let host = Arc::clone(host);
        tokio::spawn(async move {
            let endpoint = host.address;
            let mut connection = std::pin::pin!(connection);
            let result = match idle_timeout {
                None => connection.await,
                Some(timeout) => loop {
                    let idle_since = state.idle_since.load(Ordering::Relaxed);
                    let wait = if idle_since == 0 {
                        timeout
                    } else {
                        timeout.saturating_sub(Duration::from_millis(
                            now_millis().saturating_sub(idle_since),
                        ))
                    };
                    tokio::select! {
                        result = connection.as_mut() => break result,
                        _ = tokio::time::sleep(wait.max(Duration::from_millis(1))) => {
                            let idle_since = state.idle_since.load(Ordering::Relaxed);
                            if idle_since != 0
                                && now_millis().saturating_sub(idle_since) >= timeout.as_millis() as u64
                            {
                                idle_timeouts.inc();
                                // Dropping the connection closes it.
                                break Ok(());
                            }
                        }
                    }
                },
            };
            if let Err(e) = result {
                tracing::debug!(%endpoint, "upstream connection ended: {e}");
            }
            state.draining.store(true, Ordering::Relaxed);
            active.dec();
            host.stats.cx_active.fetch_sub(1, Ordering::Relaxed);
            host.pool.connection_gone(slot);
        });
    }

    /// Opens a pooled HTTP/1.1 connection (keel's client; see [`super::h1`]).
    async fn connect_h1(
        &self,
        cluster: &ClusterUpstream,
        host: &Arc<Host>,
        slot: ConnectionSlot,
    ) -> Result<Box<H1Conn>, UpstreamError> {
        let (stream, slot) = self.opening(slot, self.connect(cluster, host)).await?;
        cluster.stats.upstream_cx_http1_total.inc();
        let open = OpenConnection::new(host, slot, cluster.stats.upstream_cx_active.clone());
        Ok(H1Conn::new(stream, conn_settings(cluster), open))
    }

    /// Sends on an idle pooled connection, or on a new one.
    pub(crate) async fn send_h1(
        &self,
        cluster: &ClusterUpstream,
        host: &Arc<Host>,
        level: &Level,
        request: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        if let Some(conn) = self.take_reusable() {
            cluster.stats.upstream_rq_total.inc();
            return conn.send(request).await.map_err(|e| self.reset(e));
        }
        // Boxed: waiting and connecting are the cold path, and their future would
        // otherwise make every request's future (moved per request) larger.
        Box::pin(self.send_h1_pending(cluster, host, level, request)).await
    }

    /// An idle connection the upstream has not closed, if any (closed ones are
    /// dropped on the way).
    fn take_reusable(&self) -> Option<Box<H1Conn>> {
        for _ in 0..MAX_STALE {
            let conn = self.take_idle()?;
            if conn.is_reusable() {
                return Some(conn);
            }
        }
        None
    }

    /// No idle connection: the request is pending until a new connection is made, or
    /// (at `max_connections`) until one of the host's connections goes idle or closes.
    async fn send_h1_pending(
        &self,
        cluster: &ClusterUpstream,
        host: &Arc<Host>,
        level: &Level,
        request: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        let pending = self.pend(cluster, level)?;
        let mut overflowed = false;
        let conn = loop {
            if let Some(slot) = self.may_connect(cluster, level, &mut overflowed) {
                break self.connect_h1(cluster, host, slot).await?;
            }
            self.wait_released().await;
            if let Some(conn) = self.take_reusable() {
                break conn;
            }
        };
        drop(pending);
        cluster.stats.upstream_rq_total.inc();
        conn.send(request).await.map_err(|e| self.reset(e))
    }

    /// Sends an upgrade request on a hyper connection of its own, driven by a task.
    pub(crate) async fn send_upgrade(
        &self,
        cluster: &ClusterUpstream,
        host: &Arc<Host>,
        level: &Level,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let slot = match self.may_connect(cluster, level, &mut false) {
            Some(slot) => slot,
            None => {
                return Err(UpstreamError::Overflow {
                    endpoint: self.address,
                    resource: "connections",
                })
            }
        };
        let connected = async {
            let stream = self.connect(cluster, host).await?;
            http1::Builder::new()
                // hyper's smallest read buffer is 8 KiB.
                .max_buf_size((cluster.buffer_limit() as usize).max(8192))
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|e| self.reset(e))
        };
        let ((mut sender, connection), slot) = self.opening(slot, connected).await?;
        cluster.stats.upstream_cx_http1_total.inc();
        let state = Arc::new(ConnState::default());
        Self::spawn_connection(cluster, host, slot, state, connection.with_upgrades());
        cluster.stats.upstream_rq_total.inc();
        sender
            .send_request(request)
            .await
            .map_err(|e| self.reset(e))
    }

    /// An HTTP/2 connection with a free stream, the stream taken.
    fn h2_with_capacity(
        &self,
        host: &Arc<Host>,
        max_streams: u32,
    ) -> Option<(http2::SendRequest<Body>, H2Stream)> {
        let mut conns = self.h2.lock().expect("pool lock");
        conns.retain(|c| !c.sender.is_closed() && !c.state.draining.load(Ordering::Relaxed));
        let conn = conns
            .iter()
            .find(|c| c.state.active.load(Ordering::Relaxed) < max_streams)?;
        conn.state.active.fetch_add(1, Ordering::Relaxed);
        conn.state.set_busy();
        Some((
            conn.sender.clone(),
            H2Stream {
                state: Arc::clone(&conn.state),
                host: Arc::clone(host),
            },
        ))
    }

    async fn connect_h2(
        &self,
        cluster: &ClusterUpstream,
        host: &Arc<Host>,
        slot: ConnectionSlot,
    ) -> Result<(), UpstreamError> {
        let connected = async {
            let stream = self.connect(cluster, host).await?;
            http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(H2_WINDOW)
                .initial_connection_window_size(H2_WINDOW)
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|e| self.reset(e))
        };
        let ((sender, connection), slot) = self.opening(slot, connected).await?;
        cluster.stats.upstream_cx_http2_total.inc();
        let state = Arc::new(ConnState::default());
        Self::spawn_connection(cluster, host, slot, Arc::clone(&state), connection);
        self.h2
            .lock()
            .expect("pool lock")
            .push(H2Conn { sender, state });
        Ok(())
    }

    /// A stream on one of the endpoint's HTTP/2 connections (a new connection when
    /// every one is at `max_concurrent_streams`).
    async fn h2_stream(
        &self,
        cluster: &ClusterUpstream,
        host: &Arc<Host>,
        level: &Level,
    ) -> Result<(http2::SendRequest<Body>, H2Stream), UpstreamError> {
        let max_streams = cluster.pool.max_concurrent_streams;
        if let Some(ready) = self.h2_with_capacity(host, max_streams) {
            return Ok(ready);
        }
        // Boxed: the cold path (see `send_h1`).
        Box::pin(self.h2_stream_pending(cluster, host, level)).await
    }

    /// No HTTP/2 connection with a free stream: pending until one is made or freed.
    async fn h2_stream_pending(
        &self,
        cluster: &ClusterUpstream,
        host: &Arc<Host>,
        level: &Level,
    ) -> Result<(http2::SendRequest<Body>, H2Stream), UpstreamError> {
        let max_streams = cluster.pool.max_concurrent_streams;
        let _pending = self.pend(cluster, level)?;
        let mut overflowed = false;
        loop {
            {
                // One handshake at a time: concurrent callers share it.
                let _connecting = self.h2_connecting.lock().await;
                if let Some(ready) = self.h2_with_capacity(host, max_streams) {
                    return Ok(ready);
                }
                if let Some(slot) = self.may_connect(cluster, level, &mut overflowed) {
                    self.connect_h2(cluster, host, slot).await?;
                    continue;
                }
            }
            self.wait_released().await;
            if let Some(ready) = self.h2_with_capacity(host, max_streams) {
                return Ok(ready);
            }
        }
    }

    /// Sends on one of the endpoint's HTTP/2 connections.
    pub(crate) async fn send_h2(
        &self,
        cluster: &ClusterUpstream,
        host: &Arc<Host>,
        level: &Level,
        mut request: Request<Body>,
    ) -> Result<(Response<Body>, H2Stream), UpstreamError> {
        let max_requests = cluster.pool.max_requests_per_connection;
        let mut retried = false;
        loop {
            let (mut sender, stream) = self.h2_stream(cluster, host, level).await?;
            if stream.state.count_request(max_requests) {
                // The last stream it takes: no new ones, it closes once they end.
                stream.state.draining.store(true, Ordering::Relaxed);
                cluster.stats.upstream_cx_max_requests.inc();
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    cluster.stats.upstream_rq_total.inc();
                    return Ok((response.map(Body::Incoming), stream));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !retried => {
                        // The connection went away (GOAWAY or close) before the
                        // stream opened: forget it and use another.
                        retried = true;
                        request = unsent;
                        stream.state.draining.store(true, Ordering::Relaxed);
                    }
                    _ => {
                        cluster.stats.upstream_rq_total.inc();
                        return Err(self.reset(e.into_error()));
                    }
                },
            }
        }
    }
}

/// What a pooled HTTP/1.1 connection of `cluster` needs to know.
fn conn_settings(cluster: &ClusterUpstream) -> ConnSettings {
    ConnSettings {
        max_requests: cluster.pool.max_requests_per_connection,
        max_requests_reached: cluster.stats.upstream_cx_max_requests.clone(),
        idle_timeout: cluster
            .pool
            .idle_timeout
            .map(|timeout| (timeout, cluster.stats.upstream_cx_idle_timeout.clone())),
        // hyper's smallest read buffer was 8 KiB; keel keeps that floor.
        max_buffer: (cluster.buffer_limit() as usize).max(8192),
    }
}

/// Closes the idle HTTP/1.1 connections of `host` once they stayed idle for `timeout`
/// (`upstream_cx_idle_timeout`), sleeping until the oldest one expires; ends when the
/// stack is empty (the next connection put back starts another sweeper).
async fn sweep_idle(host: std::sync::Weak<Host>, timeout: Duration, expired_total: Counter) {
    loop {
        let Some(strong) = host.upgrade() else {
            return;
        };
        let now = Instant::now();
        let (expired, next) = {
            let mut idle = strong.pool.idle.lock().expect("pool lock");
            let (expired, fresh): (Vec<Box<H1Conn>>, Vec<Box<H1Conn>>) =
                std::mem::take(&mut idle.conns)
                    .into_iter()
                    .partition(|c| now.saturating_duration_since(c.idle_since) >= timeout);
            idle.conns = fresh;
            let next = idle.conns.iter().map(|c| c.idle_since + timeout).min();
            idle.sweeping = next.is_some();
            (expired, next)
        };
        for _ in &expired {
            expired_total.inc();
        }
        // Closed here, outside the lock.
        drop(expired);
        drop(strong);
        let Some(next) = next else {
            return;
        };
        tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
    }
}
