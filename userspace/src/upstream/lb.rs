//! Endpoint picking for HTTP clusters.
//!
//! Round robin and random index the same slot tables as the kernel and the tcp_proxy
//! ([`crate::cluster`]), so every path balances alike. Least request is Envoy's
//! default "power of two choices": two weighted-random candidates, the one with fewer
//! active requests wins. Maglev and ring hash need a request hash
//! (`route.hash_policy`), which the model does not carry yet: until it does they
//! pick at random, weighted — the distribution Envoy gives them when a request has
//! no hash key.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cluster::{random_table, round_robin_table, MAX_TABLE_LEN};
use crate::model::LbPolicy;

/// A cluster's endpoint picker.
#[derive(Debug)]
pub(crate) struct LoadBalancer {
    policy: Policy,
    /// Slot table: round-robin order, or each slot repeated by weight for random.
    table: Box<[u32]>,
    cursor: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    RoundRobin,
    Random,
    LeastRequest,
}

impl LoadBalancer {
    /// A picker over endpoints with these weights.
    pub(crate) fn new(policy: LbPolicy, weights: &[u32]) -> LoadBalancer {
        let policy = match policy {
            LbPolicy::RoundRobin => Policy::RoundRobin,
            LbPolicy::LeastRequest => Policy::LeastRequest,
            LbPolicy::Random | LbPolicy::Maglev { .. } | LbPolicy::RingHash => Policy::Random,
        };
        let table = if weights.is_empty() {
            Vec::new()
        } else if policy == Policy::RoundRobin {
            round_robin_table(weights, MAX_TABLE_LEN)
        } else {
            random_table(weights, MAX_TABLE_LEN)
        };
        LoadBalancer {
            policy,
            table: table.into_boxed_slice(),
            cursor: AtomicU64::new(0),
        }
    }

    /// Whether the policy reads the per-endpoint active request counts.
    pub(crate) fn needs_active_counts(&self) -> bool {
        self.policy == Policy::LeastRequest
    }

    /// The index of the endpoint for the next request; `active(i)` is endpoint `i`'s
    /// number of requests in flight (read only by least request).
    #[inline]
    pub(crate) fn pick(&self, active: impl Fn(usize) -> u64) -> Option<usize> {
        let len = self.table.len();
        if len == 0 {
            return None;
        }
        let slot = |n: u64| self.table[(n % len as u64) as usize] as usize;
        Some(match self.policy {
            Policy::RoundRobin => slot(self.cursor.fetch_add(1, Ordering::Relaxed)),
            Policy::Random => slot(fast_random()),
            Policy::LeastRequest => {
                let r = fast_random();
                let (a, b) = (slot(r), slot(r >> 32));
                if active(b) < active(a) {
                    b
                } else {
                    a
                }
            }
        })
    }
}

thread_local! {
    static STATE: Cell<u64> = Cell::new(rand::random::<u64>() | 1);
}

#[inline]
fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// A per-thread xorshift64* generator (seeded from the OS): balancing and request
/// ids need speed and spread, not secrecy.
#[inline]
pub(crate) fn fast_random() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        let r = xorshift(&mut x);
        s.set(x);
        r
    })
}

/// Two values of [`fast_random`] for one thread-local access.
#[inline]
pub(crate) fn fast_random_pair() -> (u64, u64) {
    STATE.with(|s| {
        let mut x = s.get();
        let pair = (xorshift(&mut x), xorshift(&mut x));
        s.set(x);
        pair
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_follows_the_weighted_table() {
        let lb = LoadBalancer::new(LbPolicy::RoundRobin, &[2, 1]);
        let picks: Vec<usize> = (0..6).map(|_| lb.pick(|_| 0).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 4, "{picks:?}");
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let lb = LoadBalancer::new(LbPolicy::LeastRequest, &[1, 1]);
        // Endpoint 0 is busy: whenever the two candidates differ, 1 wins.
        let ones = (0..1000)
            .filter(|_| lb.pick(|i| if i == 0 { 100 } else { 0 }) == Some(1))
            .count();
        assert!(ones > 600, "endpoint 1 picked {ones} times of 1000");
    }

    #[test]
    fn no_endpoints_means_no_pick() {
        let lb = LoadBalancer::new(LbPolicy::Random, &[]);
        assert_eq!(lb.pick(|_| 0), None);
    }
}
