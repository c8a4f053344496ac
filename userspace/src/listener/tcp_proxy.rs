//! `envoy.filters.network.tcp_proxy` in userspace.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout, Instant};

use crate::model;
use crate::upstream::{ClusterUpstream, Host, PickContext};

/// One tcp_proxy filter over its cluster: the cluster's hosts, health, priorities and
/// load balancer are the ones HTTP uses ([`ClusterUpstream`]), so DNS discovery,
/// health checking and every `lb_policy` apply to TCP too. Without a hash policy the
/// hash policies (RING_HASH, MAGLEV) pick at random, as Envoy's tcp_proxy does.
#[derive(Debug)]
pub struct TcpProxy {
    config: model::TcpProxy,
    cluster: Arc<ClusterUpstream>,
    /// Bytes read at a time per direction (from the listener's buffer limit).
    buffer_size: usize,
}

/// Copy buffer per direction when the listener's limit allows it; a smaller limit
/// makes it smaller (down to [`MIN_COPY_BUFFER`]).
const DEFAULT_COPY_BUFFER: usize = 16 * 1024;
const MIN_COPY_BUFFER: usize = 1024;

/// A connection's hold on its host: the active count least request reads, and the
/// host's `cx_active`.
struct Active(Arc<Host>);

impl Active {
    fn new(host: Arc<Host>) -> Active {
        host.active.fetch_add(1, Ordering::Relaxed);
        host.stats.cx_active.fetch_add(1, Ordering::Relaxed);
        host.stats.cx_total.fetch_add(1, Ordering::Relaxed);
        Active(host)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.0.stats.cx_active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl TcpProxy {
    /// Builds the proxy over `cluster`.
    pub fn new(config: model::TcpProxy, cluster: Arc<ClusterUpstream>) -> TcpProxy {
        TcpProxy {
            config,
            cluster,
            buffer_size: DEFAULT_COPY_BUFFER,
        }
    }

    /// Holds at most `limit` bytes per direction in flight through keel
    /// (`per_connection_buffer_limit_bytes`; 16 KiB at most, 1 KiB at least).
    pub fn with_buffer_limit(mut self, limit: u32) -> TcpProxy {
        self.buffer_size = (limit as usize).clamp(MIN_COPY_BUFFER, DEFAULT_COPY_BUFFER);
        self
    }

    /// Proxies one accepted connection until both sides close or it idles out.
    pub(crate) async fn handle(&self, downstream: TcpStream, _peer: SocketAddr) {
        let context = PickContext {
            // ORIGINAL_DST: the connection's local address.
            original_dst: downstream.local_addr().ok(),
            ..PickContext::default()
        };
        let Some(host) = self.cluster.pick(&context) else {
            tracing::debug!(stat_prefix = %self.config.stat_prefix, "no healthy upstream");
            return;
        };
        let endpoint = host.address;
        let connect_timeout = self.cluster.connect_timeout();
        let upstream = match timeout(connect_timeout, TcpStream::connect(endpoint)).await {
            Ok(Ok(upstream)) => upstream,
            Ok(Err(e)) => {
                host.stats.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%endpoint, "upstream connect failed: {e}");
                return;
            }
            Err(_) => {
                host.stats.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%endpoint, "upstream connect timeout");
                return;
            }
        };
        let _ = downstream.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let _active = Active::new(host);
        if let Err(e) = copy_both_ways(
            downstream,
            upstream,
            self.config.idle_timeout,
            self.buffer_size,
        )
        .await
        {
            tracing::debug!(%endpoint, "connection ended: {e}");
        }
    }
}

/// Copies bytes both ways until both directions have closed, or until `idle` passes
/// with no byte in either direction. A half-close is passed on.
async fn copy_both_ways(
    mut a: TcpStream,
    mut b: TcpStream,
    idle: Option<Duration>,
    buffer_size: usize,
) -> std::io::Result<()> {
    let (mut a_read, mut a_write) = a.split();
    let (mut b_read, mut b_write) = b.split();
    let mut a_buf = vec![0u8; buffer_size];
    let mut b_buf = vec![0u8; buffer_size];
    let (mut a_open, mut b_open) = (true, true);
    let far_future = Duration::from_secs(86_400 * 365);
    let mut deadline = Instant::now() + idle.unwrap_or(far_future);
    while a_open || b_open {
        tokio::select! {
            n = a_read.read(&mut a_buf), if a_open => {
                let n = n?;
                if n == 0 { a_open = false; b_write.shutdown().await?; } else { b_write.write_all(&a_buf[..n]).await?; }
            }
            n = b_read.read(&mut b_buf), if b_open => {
                let n = n?;
                if n == 0 { b_open = false; a_write.shutdown().await?; } else { a_write.write_all(&b_buf[..n]).await?; }
            }
            _ = sleep_until(deadline) => {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle timeout"));
            }
        }
        deadline = Instant::now() + idle.unwrap_or(far_future);
    }
    Ok(())
}
