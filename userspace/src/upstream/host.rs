//! One upstream host: its address and weight, its connections, its health and its
//! counters.
//!
//! A [`Host`] is shared (`Arc`) by the cluster's current [`HostSet`](super::HostSet),
//! the requests that picked it (through their [`Lease`](super::Lease)), the health
//! checker and the admin API. Everything that changes while requests run is atomic:
//! the request count that least request reads, the health flags that health checking
//! and outlier detection set, and the per-host counters of `/clusters`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

use super::pool::EndpointPool;

/// One endpoint of a cluster, as keel balances and connects to it.
#[derive(Debug)]
pub struct Host {
    /// Where to connect.
    pub address: SocketAddr,
    /// `load_balancing_weight` (at least 1).
    pub weight: u32,
    /// `priority` of its locality (0 is the highest).
    pub priority: u32,
    /// Requests in flight (read by least request).
    pub active: AtomicU64,
    /// Why the host is out of rotation, if it is.
    pub health: HealthFlags,
    /// Envoy's per-host counters (`/clusters`).
    pub stats: HostStats,
    /// Outlier-detection counters (written on the request path when the cluster has
    /// `outlier_detection`).
    pub outlier: super::outlier::HostMonitor,
    /// Its connections.
    pub(crate) pool: EndpointPool,
}

impl Host {
    /// A healthy host with no connection yet.
    pub fn new(address: SocketAddr, weight: u32, priority: u32) -> Host {
        Host {
            address,
            weight: weight.max(1),
            priority,
            active: AtomicU64::new(0),
            health: HealthFlags::default(),
            stats: HostStats::default(),
            outlier: super::outlier::HostMonitor::default(),
            pool: EndpointPool::new(address),
        }
    }

    /// Whether the host may take requests (no health flag is set).
    #[inline]
    pub fn is_healthy(&self) -> bool {
        self.health.is_healthy()
    }
}

/// The reasons a host is out of rotation, as Envoy's health flags; no bit set means
/// healthy.
#[derive(Debug, Default)]
pub struct HealthFlags(AtomicU32);

impl HealthFlags {
    /// Failed its active health check (`/failed_active_hc`).
    pub const FAILED_ACTIVE_HC: u32 = 1 << 0;
    /// Ejected by outlier detection (`/failed_outlier_check`).
    pub const FAILED_OUTLIER_CHECK: u32 = 1 << 1;
    /// Not yet checked once by an active health check (`/pending_active_hc`).
    pub const PENDING_ACTIVE_HC: u32 = 1 << 2;
    /// The last active health check timed out (`/active_hc_timeout`).
    pub const ACTIVE_HC_TIMEOUT: u32 = 1 << 3;

    /// The flags that take a host out of rotation.
    const UNHEALTHY: u32 =
        Self::FAILED_ACTIVE_HC | Self::FAILED_OUTLIER_CHECK | Self::PENDING_ACTIVE_HC;

    /// The current flags.
    #[inline]
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    /// Whether every bit of `flag` is set.
    #[inline]
    pub fn has(&self, flag: u32) -> bool {
        self.get() & flag == flag
    }

    /// Whether no flag that takes the host out of rotation is set.
    #[inline]
    pub fn is_healthy(&self) -> bool {
        self.get() & Self::UNHEALTHY == 0
    }

    /// Sets `flag`; returns whether the host's healthiness changed.
    pub fn set(&self, flag: u32) -> bool {
        let before = self.0.fetch_or(flag, Ordering::Relaxed);
        (before & Self::UNHEALTHY == 0) != ((before | flag) & Self::UNHEALTHY == 0)
    }

    /// Clears `flag`; returns whether the host's healthiness changed.
    pub fn clear(&self, flag: u32) -> bool {
        let before = self.0.fetch_and(!flag, Ordering::Relaxed);
        (before & Self::UNHEALTHY == 0) != ((before & !flag) & Self::UNHEALTHY == 0)
    }
}

/// Envoy's per-host counters and gauges, as `/clusters` lists them.
#[derive(Debug, Default)]
pub struct HostStats {
    /// `cx_total`.
    pub cx_total: AtomicU64,
    /// `cx_connect_fail`.
    pub cx_connect_fail: AtomicU64,
    /// `cx_active`.
    pub cx_active: AtomicI64,
    /// `rq_total`.
    pub rq_total: AtomicU64,
    /// `rq_success`: a response that is not a 5xx.
    pub rq_success: AtomicU64,
    /// `rq_error`: a 5xx, a reset or a connection failure.
    pub rq_error: AtomicU64,
    /// `rq_timeout`.
    pub rq_timeout: AtomicU64,
    /// `rq_active`.
    pub rq_active: AtomicI64,
}

/// Adds one to a counter.
#[inline]
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_flags_report_changes_of_healthiness() {
        let flags = HealthFlags::default();
        assert!(flags.is_healthy());
        assert!(flags.set(HealthFlags::FAILED_ACTIVE_HC));
        assert!(
            !flags.set(HealthFlags::FAILED_OUTLIER_CHECK),
            "already unhealthy"
        );
        assert!(!flags.clear(HealthFlags::FAILED_ACTIVE_HC), "still ejected");
        assert!(flags.clear(HealthFlags::FAILED_OUTLIER_CHECK));
        assert!(flags.is_healthy());
        assert!(
            !flags.set(HealthFlags::ACTIVE_HC_TIMEOUT),
            "a timeout alone is informative"
        );
        assert!(flags.is_healthy());
    }
}
