//! Circuit breakers: per cluster and routing priority, counts of open connections,
//! pending requests, requests and retries, each with its threshold
//! (`circuit_breakers.thresholds`).
//!
//! Everything is a relaxed atomic: taking a slot is one `fetch_add` (and one
//! `fetch_sub` when the breaker is open), giving it back one `fetch_sub`. The
//! `circuit_breakers.<priority>.*_open` gauges (1 while a breaker admits no more,
//! as Envoy's) are written only when a count crosses its threshold, and the
//! `remaining_*` gauges only when `track_remaining` asks for them.
//!
//! What the counts mean in keel (see also [`super::pool`]):
//! - connections: TCP connections open to the cluster's hosts (HTTP/1.1 and HTTP/2),
//!   from the start of the connect until the connection closes;
//! - pending requests: requests that found no connection ready for them (no idle
//!   HTTP/1.1 connection; no HTTP/2 connection with a free stream) and wait for one,
//!   either for a new connection being made or, when `max_connections` is reached,
//!   for a connection of the host to go idle or close;
//! - requests: requests in flight to the cluster (one per try), from the moment a try
//!   is sent until its response ends;
//! - retries: retries in flight, from the decision to retry (the back-off included)
//!   until that try is over. With a `retry_budget` the threshold is
//!   `budget_percent` of the requests and pending requests in flight, at least
//!   `min_retry_concurrency`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::model::breakers::{CircuitBreakers, RetryBudget, RoutingPriority, Thresholds};
use crate::observe::stats::{self, Gauge};

/// A cluster's breakers, one set per routing priority.
#[derive(Debug)]
pub struct Breakers {
    default: Level,
    high: Level,
}

impl Breakers {
    /// Breakers for `config`, with their gauges under `cluster.<name>.circuit_breakers.`.
    pub fn new(cluster: &str, config: &CircuitBreakers) -> Breakers {
        Breakers {
            default: Level::new(cluster, RoutingPriority::Default, &config.default),
            high: Level::new(cluster, RoutingPriority::High, &config.high),
        }
    }

    /// The breakers of `priority`.
    #[inline]
    pub fn at(&self, priority: RoutingPriority) -> &Level {
        match priority {
            RoutingPriority::Default => &self.default,
            RoutingPriority::High => &self.high,
        }
    }
}

/// The breakers of one priority.
#[derive(Debug)]
pub struct Level {
    /// Open connections.
    pub connections: Arc<Resource>,
    /// Requests waiting for a connection.
    pub pending: Resource,
    /// Requests in flight.
    pub requests: Resource,
    /// Retries in flight.
    pub retries: Resource,
    retry_budget: Option<RetryBudget>,
}

impl Level {
    fn new(cluster: &str, priority: RoutingPriority, t: &Thresholds) -> Level {
        let prefix = format!(
            "cluster.{cluster}.circuit_breakers.{}.",
            priority.stat_name()
        );
        let resource = |max: u32, open: &str, remaining: &str| {
            Resource::new(
                u64::from(max),
                stats::global().gauge(&format!("{prefix}{open}")),
                t.track_remaining
                    .then(|| stats::global().gauge(&format!("{prefix}{remaining}"))),
            )
        };
        let retries = match t.retry_budget {
            // The budget's threshold moves with the load; it starts at the minimum.
            Some(budget) => resource(
                budget.min_retry_concurrency,
                "rq_retry_open",
                "remaining_retries",
            ),
            None => resource(t.max_retries, "rq_retry_open", "remaining_retries"),
        };
        Level {
            connections: Arc::new(resource(t.max_connections, "cx_open", "remaining_cx")),
            pending: resource(
                t.max_pending_requests,
                "rq_pending_open",
                "remaining_pending",
            ),
            requests: resource(t.max_requests, "rq_open", "remaining_rq"),
            retries,
            retry_budget: t.retry_budget,
        }
    }

    /// Takes a retry slot, if the threshold (or the retry budget) allows one more.
    pub fn try_retry(&self) -> bool {
        match self.retry_budget {
            None => self.retries.try_acquire(),
            Some(budget) => {
                let load = self.requests.current() + self.pending.current();
                let allowed = ((budget.budget_percent / 100.0) * load as f64) as u64;
                let max = allowed.max(u64::from(budget.min_retry_concurrency));
                self.retries.try_acquire_below(max)
            }
        }
    }
}

/// One counted resource with its threshold.
#[derive(Debug)]
pub struct Resource {
    current: AtomicU64,
    max: AtomicU64,
    open: Gauge,
    remaining: Option<Gauge>,
}

impl Resource {
    fn new(max: u64, open: Gauge, remaining: Option<Gauge>) -> Resource {
        open.set(i64::from(max == 0));
        if let Some(remaining) = &remaining {
            remaining.set(max as i64);
        }
        Resource {
            current: AtomicU64::new(0),
            max: AtomicU64::new(max),
            open,
            remaining,
        }
    }

    /// How many are taken.
    #[inline]
    pub fn current(&self) -> u64 {
        self.current.load(Ordering::Relaxed)
    }

    /// The threshold.
    #[inline]
    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    /// Takes one if fewer than the threshold are taken.
    #[inline]
    pub fn try_acquire(&self) -> bool {
        self.try_acquire_below(self.max())
    }

    fn try_acquire_below(&self, max: u64) -> bool {
        if self.max() != max {
            self.max.store(max, Ordering::Relaxed);
        }
        let before = self.current.fetch_add(1, Ordering::Relaxed);
        if before >= max {
            self.current.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        self.changed(before, before + 1, max);
        true
    }

    /// Takes one whatever the threshold (a host with no connection may always open
    /// one, as in Envoy).
    pub fn acquire_anyway(&self) {
        let before = self.current.fetch_add(1, Ordering::Relaxed);
        self.changed(before, before + 1, self.max());
    }

    /// Gives one back.
    #[inline]
    pub fn release(&self) {
        let before = self.current.fetch_sub(1, Ordering::Relaxed);
        self.changed(before, before.saturating_sub(1), self.max());
    }

    #[inline]
    fn changed(&self, before: u64, now: u64, max: u64) {
        if (before >= max) != (now >= max) {
            self.open.set(i64::from(now >= max));
        }
        if let Some(remaining) = &self.remaining {
            remaining.set(max.saturating_sub(now) as i64);
        }
    }
}

/// A connection slot, given back when dropped (owned by the connection's task).
#[derive(Debug)]
pub(crate) struct ConnectionSlot(pub(crate) Arc<Resource>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// A borrowed slot (pending request, retry), given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot<'a>(pub(crate) &'a Resource);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge(name: &str) -> i64 {
        stats::global()
            .snapshot()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| match v {
                stats::StatValue::Gauge(g) => g,
                stats::StatValue::Counter(c) => c as i64,
            })
            .unwrap_or(-1)
    }

    #[test]
    fn thresholds_admit_up_to_the_limit_and_open_the_gauge() {
        let config = CircuitBreakers {
            default: Thresholds {
                max_requests: 2,
                track_remaining: true,
                ..Thresholds::default()
            },
            ..CircuitBreakers::default()
        };
        let breakers = Breakers::new("breaker_unit", &config);
        let rq = &breakers.at(RoutingPriority::Default).requests;
        let open = "cluster.breaker_unit.circuit_breakers.default.rq_open";
        let remaining = "cluster.breaker_unit.circuit_breakers.default.remaining_rq";
        assert_eq!(gauge(open), 0);
        assert_eq!(gauge(remaining), 2);
        assert!(rq.try_acquire());
        assert_eq!(gauge(open), 0);
        assert!(rq.try_acquire());
        assert_eq!(gauge(open), 1, "at the threshold the breaker is open");
        assert_eq!(gauge(remaining), 0);
        assert!(!rq.try_acquire(), "a third request overflows");
        assert_eq!(rq.current(), 2, "a refused request leaves no trace");
        rq.release();
        assert_eq!(gauge(open), 0);
        assert_eq!(gauge(remaining), 1);
        assert!(rq.try_acquire());
        // HIGH has its own counts and Envoy's defaults.
        let high = breakers.at(RoutingPriority::High);
        assert_eq!(high.requests.max(), 1024);
        assert_eq!(high.retries.max(), 3);
        assert_eq!(
            gauge("cluster.breaker_unit.circuit_breakers.high.remaining_rq"),
            -1,
            "remaining_* only with track_remaining"
        );
    }

    #[test]
    fn retry_budget_follows_the_load() {
        let config = CircuitBreakers {
            default: Thresholds {
                retry_budget: Some(RetryBudget {
                    budget_percent: 50.0,
                    min_retry_concurrency: 1,
                }),
                ..Thresholds::default()
            },
            ..CircuitBreakers::default()
        };
        let breakers = Breakers::new("breaker_budget", &config);
        let level = breakers.at(RoutingPriority::Default);
        assert!(level.try_retry(), "the minimum concurrency");
        assert!(!level.try_retry());
        for _ in 0..6 {
            assert!(level.requests.try_acquire());
        }
        assert!(level.try_retry(), "50% of 6 in flight is 3");
        assert!(level.try_retry());
        assert!(!level.try_retry());
        assert_eq!(level.retries.current(), 3);
    }
}
