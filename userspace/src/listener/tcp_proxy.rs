//! `envoy.filters.network.tcp_proxy` in userspace.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout, Instant};

use crate::cluster::{maglev_table, random_table, round_robin_table, MAX_TABLE_LEN};
use crate::model::{self, Cluster, LbPolicy};

/// One tcp_proxy filter with its cluster's endpoints and balancing state.
#[derive(Debug)]
pub struct TcpProxy {
    config: model::TcpProxy,
    endpoints: Vec<SocketAddr>,
    policy: LbPolicy,
    /// Slot table for round robin, random and Maglev.
    table: Vec<u32>,
    cursor: AtomicU64,
    /// Active connections per endpoint (least request).
    active: Vec<AtomicU64>,
    connect_timeout: Duration,
    /// Bytes read at a time per direction (from the listener's buffer limit).
    buffer_size: usize,
}

/// Copy buffer per direction when the listener's limit allows it; a smaller limit
/// makes it smaller (down to [`MIN_COPY_BUFFER`]).
const DEFAULT_COPY_BUFFER: usize = 16 * 1024;
const MIN_COPY_BUFFER: usize = 1024;

impl TcpProxy {
    /// Builds the proxy for `cluster`.
    pub fn new(config: model::TcpProxy, cluster: &Cluster) -> TcpProxy {
        let weights: Vec<u32> = cluster.endpoints.iter().map(|e| e.weight).collect();
        let table = match cluster.lb_policy {
            LbPolicy::RoundRobin => round_robin_table(&weights, MAX_TABLE_LEN),
            LbPolicy::Random | LbPolicy::RingHash => random_table(&weights, MAX_TABLE_LEN),
            LbPolicy::LeastRequest => Vec::new(),
            LbPolicy::Maglev { table_size } => maglev_table(&cluster.endpoints, table_size),
        };
        TcpProxy {
            config,
            endpoints: cluster.endpoints.iter().map(|e| e.address).collect(),
            policy: cluster.lb_policy,
            table,
            cursor: AtomicU64::new(0),
            active: cluster
                .endpoints
                .iter()
                .map(|_| AtomicU64::new(0))
                .collect(),
            connect_timeout: cluster.connect_timeout,
            buffer_size: DEFAULT_COPY_BUFFER,
        }
    }

    /// Holds at most `limit` bytes per direction in flight through keel
    /// (`per_connection_buffer_limit_bytes`; 16 KiB at most, 1 KiB at least).
    pub fn with_buffer_limit(mut self, limit: u32) -> TcpProxy {
        self.buffer_size = (limit as usize).clamp(MIN_COPY_BUFFER, DEFAULT_COPY_BUFFER);
        self
    }

    /// Picks an endpoint index for a connection from `peer`.
    fn pick(&self, peer: SocketAddr) -> Option<usize> {
        if self.endpoints.is_empty() {
            return None;
        }
        let from_table = |index: u64| self.table.get((index % self.table.len() as u64) as usize);
        let slot = match self.policy {
            LbPolicy::LeastRequest => {
                return (0..self.endpoints.len())
                    .min_by_key(|&i| self.active[i].load(Ordering::Relaxed))
            }
            LbPolicy::RoundRobin => from_table(self.cursor.fetch_add(1, Ordering::Relaxed)),
            LbPolicy::Random | LbPolicy::RingHash => from_table(rand::random::<u64>()),
            // tcp_proxy has no hash key here: hash the downstream address.
            LbPolicy::Maglev { .. } => {
                use std::hash::{BuildHasher, BuildHasherDefault};
                let hasher =
                    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
                from_table(hasher.hash_one(peer))
            }
        };
        slot.map(|&s| s as usize)
    }

    /// Proxies one accepted connection until both sides close or it idles out.
    pub(crate) async fn handle(&self, downstream: TcpStream, peer: SocketAddr) {
        let Some(index) = self.pick(peer) else {
            tracing::debug!(stat_prefix = %self.config.stat_prefix, "no healthy upstream");
            return;
        };
        let endpoint = self.endpoints[index];
        let upstream = match timeout(self.connect_timeout, TcpStream::connect(endpoint)).await {
            Ok(Ok(upstream)) => upstream,
            Ok(Err(e)) => {
                tracing::debug!(%endpoint, "upstream connect failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(%endpoint, "upstream connect timeout");
                return;
            }
        };
        let _ = downstream.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        self.active[index].fetch_add(1, Ordering::Relaxed);
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
        self.active[index].fetch_sub(1, Ordering::Relaxed);
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
