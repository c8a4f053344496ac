//! Host picking for HTTP clusters.
//!
//! Round robin and random index the same slot tables as the kernel and the tcp_proxy
//! ([`crate::cluster`]), so every path balances alike. Least request is Envoy's
//! default "power of two choices": two weighted-random candidates, the one with fewer
//! active requests wins. Maglev and ring hash pick at random, weighted, until the
//! request hash is wired in — the distribution Envoy gives them when a request has no
//! hash key.
//!
//! The tables are built over the hosts that may take traffic: the healthy hosts of
//! the highest priority that has any; when no host is healthy, over every host (Envoy's
//! panic mode).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::host::Host;
use super::PickContext;
use crate::cluster::{random_table, round_robin_table, MAX_TABLE_LEN};
use crate::model::LbPolicy;

/// A cluster's host picker, built over one host set.
#[derive(Debug)]
pub(crate) struct LoadBalancer {
    policy: Policy,
    /// Slot table of host indexes: round-robin order, or each host repeated by weight
    /// for random.
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
    /// A picker over `hosts` as their health is now.
    pub(crate) fn new(policy: LbPolicy, hosts: &[Arc<Host>]) -> LoadBalancer {
        let policy = match policy {
            LbPolicy::RoundRobin => Policy::RoundRobin,
            LbPolicy::LeastRequest => Policy::LeastRequest,
            LbPolicy::Random | LbPolicy::Maglev { .. } | LbPolicy::RingHash => Policy::Random,
        };
        let healthy_priority = hosts
            .iter()
            .filter(|h| h.is_healthy())
            .map(|h| h.priority)
            .min();
        let eligible: Vec<u32> = (0..hosts.len() as u32)
            .filter(|&i| {
                let host = &hosts[i as usize];
                match healthy_priority {
                    Some(p) => host.is_healthy() && host.priority == p,
                    None => true,
                }
            })
            .collect();
        let weights: Vec<u32> = eligible.iter().map(|&i| hosts[i as usize].weight).collect();
        let slots = if weights.is_empty() {
            Vec::new()
        } else if policy == Policy::RoundRobin {
            round_robin_table(&weights, MAX_TABLE_LEN)
        } else {
            random_table(&weights, MAX_TABLE_LEN)
        };
        LoadBalancer {
            policy,
            table: slots.into_iter().map(|s| eligible[s as usize]).collect(),
            cursor: AtomicU64::new(0),
        }
    }

    /// The index in `hosts` (the set this picker was built over) of the host for the
    /// next request.
    #[inline]
    pub(crate) fn pick(&self, hosts: &[Arc<Host>], context: &PickContext<'_>) -> Option<usize> {
        let mut picked = self.pick_once(hosts)?;
        for _ in 0..context.reselect_attempts {
            if !context
                .previous_hosts
                .iter()
                .any(|h| Arc::ptr_eq(h, &hosts[picked]))
            {
                break;
            }
            picked = self.pick_once(hosts)?;
        }
        Some(picked)
    }

    #[inline]
    fn pick_once(&self, hosts: &[Arc<Host>]) -> Option<usize> {
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
                let active = |i: usize| hosts[i].active.load(Ordering::Relaxed);
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
    use crate::upstream::HealthFlags;

    fn hosts(weights: &[u32]) -> Vec<Arc<Host>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let address = format!("127.0.0.1:{}", 1000 + i).parse().unwrap();
                Arc::new(Host::new(address, w, 0))
            })
            .collect()
    }

    #[test]
    fn round_robin_follows_the_weighted_table() {
        let hosts = hosts(&[2, 1]);
        let lb = LoadBalancer::new(LbPolicy::RoundRobin, &hosts);
        let picks: Vec<usize> = (0..6)
            .map(|_| lb.pick(&hosts, &PickContext::default()).unwrap())
            .collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 4, "{picks:?}");
    }

    #[test]
    fn least_request_prefers_the_idle_host() {
        let hosts = hosts(&[1, 1]);
        hosts[0].active.store(100, Ordering::Relaxed);
        let lb = LoadBalancer::new(LbPolicy::LeastRequest, &hosts);
        // Host 0 is busy: whenever the two candidates differ, 1 wins.
        let ones = (0..1000)
            .filter(|_| lb.pick(&hosts, &PickContext::default()) == Some(1))
            .count();
        assert!(ones > 600, "host 1 picked {ones} times of 1000");
    }

    #[test]
    fn unhealthy_hosts_leave_rotation_until_none_is_left() {
        let hosts = hosts(&[1, 1, 1]);
        hosts[1].health.set(HealthFlags::FAILED_ACTIVE_HC);
        let lb = LoadBalancer::new(LbPolicy::RoundRobin, &hosts);
        for _ in 0..30 {
            assert_ne!(lb.pick(&hosts, &PickContext::default()), Some(1));
        }
        for host in &hosts {
            host.health.set(HealthFlags::FAILED_OUTLIER_CHECK);
        }
        let lb = LoadBalancer::new(LbPolicy::RoundRobin, &hosts);
        let picked: std::collections::HashSet<usize> = (0..30)
            .filter_map(|_| lb.pick(&hosts, &PickContext::default()))
            .collect();
        assert_eq!(picked.len(), 3, "panic mode balances over every host");
    }

    #[test]
    fn previous_hosts_are_avoided_while_reselection_is_allowed() {
        let hosts = hosts(&[1, 1]);
        let lb = LoadBalancer::new(LbPolicy::Random, &hosts);
        let previous = [Arc::clone(&hosts[0])];
        let context = PickContext {
            previous_hosts: &previous,
            reselect_attempts: 20,
            ..PickContext::default()
        };
        for _ in 0..50 {
            assert_eq!(lb.pick(&hosts, &context), Some(1));
        }
    }

    #[test]
    fn no_hosts_means_no_pick() {
        let lb = LoadBalancer::new(LbPolicy::Random, &[]);
        assert_eq!(lb.pick(&[], &PickContext::default()), None);
    }
}
