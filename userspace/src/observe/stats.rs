//! The stats store: counters and gauges under Envoy's stat names
//! (`http.<stat_prefix>.downstream_rq_total`, `cluster.<name>.upstream_rq_200`, ...).
//!
//! Names are resolved to handles once, when a listener or cluster is built; the
//! request path only does relaxed atomic adds on a handle. The registry's lock is
//! taken when a handle is created and when the admin API reads a snapshot.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

/// A monotonically increasing count.
#[derive(Debug, Clone)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn value(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (active connections, for example).
#[derive(Debug, Clone)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtracts one.
    #[inline]
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// Sets the value.
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// The current value.
    pub fn value(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One stat's value in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatValue {
    /// A counter.
    Counter(u64),
    /// A gauge.
    Gauge(i64),
}

/// A registry of named stats.
#[derive(Debug, Default)]
pub struct Stats {
    counters: RwLock<BTreeMap<String, Counter>>,
    gauges: RwLock<BTreeMap<String, Gauge>>,
}

impl Stats {
    /// The counter called `name`, created at 0 on first use.
    pub fn counter(&self, name: &str) -> Counter {
        if let Some(c) = self.counters.read().expect("stats lock").get(name) {
            return c.clone();
        }
        self.counters
            .write()
            .expect("stats lock")
            .entry(name.to_string())
            .or_insert_with(|| Counter(Arc::new(AtomicU64::new(0))))
            .clone()
    }

    /// The gauge called `name`, created at 0 on first use.
    pub fn gauge(&self, name: &str) -> Gauge {
        if let Some(g) = self.gauges.read().expect("stats lock").get(name) {
            return g.clone();
        }
        self.gauges
            .write()
            .expect("stats lock")
            .entry(name.to_string())
            .or_insert_with(|| Gauge(Arc::new(AtomicI64::new(0))))
            .clone()
    }

    /// Every stat with its value, sorted by name.
    pub fn snapshot(&self) -> Vec<(String, StatValue)> {
        let mut all: Vec<(String, StatValue)> = self
            .counters
            .read()
            .expect("stats lock")
            .iter()
            .map(|(n, c)| (n.clone(), StatValue::Counter(c.value())))
            .chain(
                self.gauges
                    .read()
                    .expect("stats lock")
                    .iter()
                    .map(|(n, g)| (n.clone(), StatValue::Gauge(g.value()))),
            )
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// The process-wide store the admin API reads.
pub fn global() -> &'static Stats {
    static STATS: OnceLock<Stats> = OnceLock::new();
    STATS.get_or_init(Stats::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_share_one_value_and_snapshots_are_sorted() {
        let stats = Stats::default();
        let a = stats.counter("http.ingress.downstream_rq_total");
        let b = stats.counter("http.ingress.downstream_rq_total");
        a.inc();
        b.add(2);
        stats.gauge("cluster.c.upstream_cx_active").inc();
        assert_eq!(
            stats.snapshot(),
            vec![
                (
                    "cluster.c.upstream_cx_active".to_string(),
                    StatValue::Gauge(1)
                ),
                (
                    "http.ingress.downstream_rq_total".to_string(),
                    StatValue::Counter(3)
                ),
            ]
        );
    }
}
