//! One endpoint's connections: the HTTP/1.1 idle stack and the HTTP/2 connection
//! (see the design notes in [`super`]).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::host::{bump, Host};
use super::{ClusterUpstream, UpstreamError};
use crate::http::body::Body;

/// Idle HTTP/1.1 connections kept per endpoint; more are closed.
const MAX_IDLE: usize = 1024;
/// Pooled connections tried before opening a new one, when the pooled ones turn
/// out to be closed by the upstream (each such attempt sends nothing).
const MAX_STALE: usize = 8;
/// HTTP/2 windows, as Envoy's defaults for clusters (256 MiB).
const H2_WINDOW: u32 = 268_435_456;

/// The connections to one endpoint.
#[derive(Debug)]
pub(crate) struct EndpointPool {
    /// The endpoint.
    pub(crate) address: SocketAddr,
    idle: Mutex<Vec<http1::SendRequest<Body>>>,
    h2: Mutex<Option<http2::SendRequest<Body>>>,
    h2_connecting: tokio::sync::Mutex<()>,
}

impl EndpointPool {
    pub(crate) fn new(address: SocketAddr) -> EndpointPool {
        EndpointPool {
            address,
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            h2_connecting: tokio::sync::Mutex::new(()),
        }
    }

    fn reset(&self, source: hyper::Error) -> UpstreamError {
        UpstreamError::Reset {
            endpoint: self.address,
            source,
        }
    }

    /// Returns a connection whose exchange completed.
    pub(crate) fn put_idle(&self, sender: http1::SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.len() < MAX_IDLE {
            idle.push(sender);
        }
    }

    fn take_idle(&self) -> Option<http1::SendRequest<Body>> {
        self.idle.lock().expect("pool lock").pop()
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

    async fn connect_h1(
        &self,
        cluster: &ClusterUpstream,
        host: &Arc<Host>,
        upgrades: bool,
    ) -> Result<http1::SendRequest<Body>, UpstreamError> {
        let stream = self.connect(cluster, host).await?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.reset(e))?;
        cluster.stats.upstream_cx_http1_total.inc();
        cluster.stats.upstream_cx_active.inc();
        host.stats.cx_active.fetch_add(1, Ordering::Relaxed);
        let active = cluster.stats.upstream_cx_active.clone();
        let host = Arc::clone(host);
        let endpoint = self.address;
        tokio::spawn(async move {
            let result = if upgrades {
                connection.with_upgrades().await
            } else {
                connection.await
            };
            if let Err(e) = result {
                tracing::debug!(%endpoint, "upstream HTTP/1.1 connection ended: {e}");
            }
            active.dec();
            host.stats.cx_active.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(sender)
    }

    /// Sends on an idle pooled connection, or on a new one.
    pub(crate) async fn send_h1(
        &self,
        cluster: &ClusterUpstream,
        host: &Arc<Host>,
        mut request: Request<Body>,
    ) -> Result<(Response<Incoming>, http1::SendRequest<Body>), UpstreamError> {
        for _ in 0..MAX_STALE {
            let Some(mut sender) = self.take_idle() else {
                break;
            };
            if sender.is_closed() {
                continue;
            }
            // Released as soon as both bodies ended: the connection task may not have
            // turned idle yet, which takes it a moment at most.
            if !sender.is_ready() && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, sender)),
                Err(mut e) => match e.take_message() {
                    // Not written: the upstream closed it meanwhile; try another.
                    Some(unsent) => request = unsent,
                    None => return Err(self.reset(e.into_error())),
                },
            }
        }
        // Boxed: connecting is the cold path, and its future would otherwise make
        // every request's future (moved and zeroed per request) much larger.
        let mut sender = Box::pin(self.connect_h1(cluster, host, false)).await?;
        match sender.send_request(request).await {
            Ok(response) => Ok((response, sender)),
            Err(e) => Err(self.reset(e)),
        }
    }

    /// Sends an upgrade request on a connection of its own.
    pub(crate) async fn send_upgrade(
        &self,
        cluster: &ClusterUpstream,
        host: &Arc<Host>,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut sender = self.connect_h1(cluster, host, true).await?;
        sender
            .send_request(request)
            .await
            .map_err(|e| self.reset(e))
    }

    fn current_h2(&self) -> Option<http2::SendRequest<Body>> {
        self.h2
            .lock()
            .expect("pool lock")
            .as_ref()
            .filter(|s| !s.is_closed())
            .cloned()
    }

    async fn h2_sender(
        &self,
        cluster: &ClusterUpstream,
        host: &Arc<Host>,
    ) -> Result<http2::SendRequest<Body>, UpstreamError> {
        if let Some(sender) = self.current_h2() {
            return Ok(sender);
        }
        Box::pin(self.connect_h2(cluster, host)).await
    }

    async fn connect_h2(
        &self,
        cluster: &ClusterUpstream,
        host: &Arc<Host>,
    ) -> Result<http2::SendRequest<Body>, UpstreamError> {
        let _connecting = self.h2_connecting.lock().await;
        if let Some(sender) = self.current_h2() {
            return Ok(sender);
        }
        let stream = self.connect(cluster, host).await?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(H2_WINDOW)
            .initial_connection_window_size(H2_WINDOW)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.reset(e))?;
        cluster.stats.upstream_cx_http2_total.inc();
        cluster.stats.upstream_cx_active.inc();
        host.stats.cx_active.fetch_add(1, Ordering::Relaxed);
        let active = cluster.stats.upstream_cx_active.clone();
        let host = Arc::clone(host);
        let endpoint = self.address;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%endpoint, "upstream HTTP/2 connection ended: {e}");
            }
            active.dec();
            host.stats.cx_active.fetch_sub(1, Ordering::Relaxed);
        });
        *self.h2.lock().expect("pool lock") = Some(sender.clone());
        Ok(sender)
    }

    /// Sends on the endpoint's HTTP/2 connection (made on first use, and again if
    /// it closed).
    pub(crate) async fn send_h2(
        &self,
        cluster: &ClusterUpstream,
        host: &Arc<Host>,
        mut request: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut retried = false;
        loop {
            let mut sender = self.h2_sender(cluster, host).await?;
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(response),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !retried => {
                        // The connection went away (GOAWAY or close) before the
                        // stream opened: forget it and use a new one.
                        retried = true;
                        request = unsent;
                        *self.h2.lock().expect("pool lock") = None;
                    }
                    _ => return Err(self.reset(e.into_error())),
                },
            }
        }
    }
}
