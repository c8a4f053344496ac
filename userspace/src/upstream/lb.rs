//! Host picking for HTTP clusters: Envoy's priority levels, panic threshold,
//! locality-weighted balancing and load-balancing policies, precomputed per host set.
//!
//! A [`LoadBalancer`] is built whenever a cluster's hosts or their health change and
//! is then read-only but for a few atomic cursors, so a pick takes no lock and makes
//! no allocation. The build follows Envoy's `LoadBalancerBase`:
//!
//! 1. Per priority level P: health = min(100, overprovisioning_factor × healthy / total)
//!    (host counts; the factor is 140% by default). The normalized total health is the
//!    sum, capped at 100. Priority loads are handed out in priority order:
//!    load(P) = min(remaining, health(P) × 100 / normalized total); the rounding rest
//!    goes to the first priority with healthy hosts.
//! 2. Panic: when the normalized total is below 100, a priority whose healthy share is
//!    below `healthy_panic_threshold` (50% by default) balances over all its hosts,
//!    healthy or not, and each such pick counts `lb_healthy_panic`. When no priority
//!    has a healthy host (total panic), the load goes to priorities in proportion to
//!    their host counts, all in panic; with a threshold of 0 nothing is picked.
//! 3. A pick chooses the priority from `(hash or random) % 100`, then, with
//!    `locality_weighted_lb_config` and outside panic, a locality by its effective
//!    weight (weight × min(1, factor × healthy / total), in a smooth weighted
//!    round-robin order like Envoy's EDF scheduler), then a host by the policy:
//!    - ROUND_ROBIN: the smooth weighted table of [`crate::cluster`], with a cursor;
//!    - RANDOM: uniform over the hosts, ignoring weights, as Envoy's (the kernel's
//!      RANDOM is weighted);
//!    - LEAST_REQUEST: equal weights: `choice_count` random candidates, the one with
//!      the fewest active requests wins (P2C for 2); unequal weights: a random pick
//!      weighted by weight / (active + 1)^active_request_bias, computed at pick time
//!      (Envoy uses an EDF scheduler over the same weights; over at most 64 hosts from
//!      a random start when the set is larger);
//!    - RING_HASH: Envoy's ketama ring of xxHash64("address_i"), scaled so the
//!      lightest host gets `minimum_ring_size × its share` entries, capped at
//!      `maximum_ring_size`; the first entry at or after the hash;
//!    - MAGLEV: [`crate::cluster::maglev`]'s table (the kernel's), entry hash % size.
//!
//!    The hash policies use the request hash, or a random one when the request has
//!    none. Previous-host reselection picks again up to `reselect_attempts` times; the
//!    hash policies step to the next ring entry (ring) or rehash (Maglev) per attempt,
//!    as Envoy does.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use xxhash_rust::xxh64::xxh64;

use super::host::Host;
use super::PickContext;
use crate::cluster::{maglev, round_robin_table, MAX_TABLE_LEN};
use crate::model::{CommonLbConfig, LbPolicy};
use crate::observe::stats::{self, Counter, Gauge};

/// Hosts scanned per pick by weighted least request.
const LEAST_REQUEST_WINDOW: usize = 64;

/// Where each host of a set sits: its locality (an index into the cluster's
/// `load_assignment.endpoints`) and the localities' `load_balancing_weight`s.
#[derive(Debug, Clone, Default)]
pub struct HostLocalities {
    /// The locality index of each host, in host order; empty: all in locality 0.
    pub of_host: Vec<u32>,
    /// Each locality's weight (0 when not given: such a locality takes no traffic
    /// under locality-weighted balancing).
    pub weights: Vec<u32>,
}

impl HostLocalities {
    fn of(&self, host: usize) -> u32 {
        self.of_host.get(host).copied().unwrap_or(0)
    }
}

/// What a cluster's pickers are built from, besides the hosts.
#[derive(Debug, Clone)]
pub(crate) struct LbSettings {
    pub(crate) policy: LbPolicy,
    pub(crate) common: CommonLbConfig,
    pub(crate) overprovisioning_factor: u32,
    pub(crate) stats: Option<Arc<LbStats>>,
}

impl LbSettings {
    /// Envoy's defaults around `policy`, without stats.
    #[cfg(test)]
    pub(crate) fn new(policy: LbPolicy) -> LbSettings {
        LbSettings {
            policy,
            common: CommonLbConfig::default(),
            overprovisioning_factor: crate::model::DEFAULT_OVERPROVISIONING_FACTOR,
            stats: None,
        }
    }
}

/// `cluster.<name>.` load-balancing and membership stats, with Envoy's names.
#[derive(Debug)]
pub struct LbStats {
    /// `lb_healthy_panic`: picks made in panic mode.
    pub lb_healthy_panic: Counter,
    /// `membership_total`.
    pub membership_total: Gauge,
    /// `membership_healthy`.
    pub membership_healthy: Gauge,
    /// `membership_degraded` (always 0: keel has no degraded hosts).
    pub membership_degraded: Gauge,
    /// `membership_excluded` (always 0).
    pub membership_excluded: Gauge,
    /// `membership_change`: host set changes.
    pub membership_change: Counter,
}

impl LbStats {
    /// The stats of cluster `name`, registered in the global store.
    pub fn new(name: &str) -> LbStats {
        let store = stats::global();
        let counter = |s: &str| store.counter(&format!("cluster.{name}.{s}"));
        let gauge = |s: &str| store.gauge(&format!("cluster.{name}.{s}"));
        LbStats {
            lb_healthy_panic: counter("lb_healthy_panic"),
            membership_total: gauge("membership_total"),
            membership_healthy: gauge("membership_healthy"),
            membership_degraded: gauge("membership_degraded"),
            membership_excluded: gauge("membership_excluded"),
            membership_change: counter("membership_change"),
        }
    }
}

/// A cluster's host picker, built over one host set.
#[derive(Debug)]
pub(crate) struct LoadBalancer {
    kind: Kind,
    stats: Option<Arc<LbStats>>,
}

#[derive(Debug)]
enum Kind {
    /// Priority levels with load (in priority order; cumulative load ends at 100).
    Priorities(Box<[PriorityLevel]>),
    /// ORIGINAL_DST: the host for each destination address.
    OriginalDst(HashMap<SocketAddr, u32>),
    /// Nothing to pick.
    Empty,
}

#[derive(Debug)]
struct PriorityLevel {
    /// Load of this level and the ones before it, in percent.
    cumulative_load: u32,
    panic: bool,
    /// With locality-weighted balancing: locality slots (indexes into `pickers`) in a
    /// smooth weighted order, and its cursor.
    localities: Option<(Box<[u32]>, AtomicU64)>,
    /// One picker per locality (locality-weighted), else one.
    pickers: Box<[Picker]>,
}

#[derive(Debug)]
enum Picker {
    /// Round robin: a smooth weighted table of host indexes and its cursor.
    RoundRobin(Box<[u32]>, AtomicU64),
    /// Random: the hosts, picked uniformly.
    Random(Box<[u32]>),
    /// Least request over equal weights: N random choices.
    LeastRequestChoices {
        hosts: Box<[u32]>,
        choice_count: u32,
    },
    /// Least request over unequal weights.
    LeastRequestWeighted { hosts: Box<[(u32, f64)]>, bias: f64 },
    /// Ring hash: (hash, host index) sorted by hash.
    Ring(Box<[(u64, u32)]>),
    /// Maglev lookup table of host indexes.
    Maglev(Box<[u32]>),
}

impl LoadBalancer {
    /// A picker with Envoy's defaults over `hosts` in one locality, as their health is
    /// now.
    #[cfg(test)]
    pub(crate) fn new(policy: LbPolicy, hosts: &[Arc<Host>]) -> LoadBalancer {
        LoadBalancer::build(&LbSettings::new(policy), hosts, &HostLocalities::default())
    }

    /// The picker over `hosts` as their health is now.
    pub(crate) fn build(
        settings: &LbSettings,
        hosts: &[Arc<Host>],
        localities: &HostLocalities,
    ) -> LoadBalancer {
        if let Some(stats) = &settings.stats {
            stats.membership_total.set(hosts.len() as i64);
            stats
                .membership_healthy
                .set(hosts.iter().filter(|h| h.is_healthy()).count() as i64);
            stats.membership_change.inc();
        }
        let kind = if hosts.is_empty() {
            Kind::Empty
        } else if settings.policy == LbPolicy::ClusterProvided {
            Kind::OriginalDst(
                hosts
                    .iter()
                    .enumerate()
                    .map(|(i, h)| (h.address, i as u32))
                    .collect(),
            )
        } else {
            build_priorities(settings, hosts, localities)
        };
        LoadBalancer {
            kind,
            stats: settings.stats.clone(),
        }
    }

    /// The index in `hosts` (the set this picker was built over) of the host for the
    /// next request.
    #[inline]
    pub(crate) fn pick(&self, hosts: &[Arc<Host>], context: &PickContext<'_>) -> Option<usize> {
        let mut picked = self.pick_once(hosts, context, 0)?;
        for attempt in 1..=context.reselect_attempts {
            if !context
                .previous_hosts
                .iter()
                .any(|h| Arc::ptr_eq(h, &hosts[picked]))
            {
                break;
            }
            picked = self.pick_once(hosts, context, attempt)?;
        }
        Some(picked)
    }

    #[inline]
    fn pick_once(
        &self,
        hosts: &[Arc<Host>],
        context: &PickContext<'_>,
        attempt: u32,
    ) -> Option<usize> {
        let levels = match &self.kind {
            Kind::Priorities(levels) => levels,
            Kind::OriginalDst(by_address) => {
                return by_address.get(&context.original_dst?).map(|&i| i as usize)
            }
            Kind::Empty => return None,
        };
        let level = if levels.len() == 1 {
            &levels[0]
        } else {
            // The hash (or a random number) picks the priority, as in Envoy.
            let hash = context.hash.unwrap_or_else(fast_random);
            let point = (hash % 100) as u32 + 1;
            levels
                .iter()
                .find(|l| point <= l.cumulative_load)
                .unwrap_or(&levels[levels.len() - 1])
        };
        if level.panic {
            if let Some(stats) = &self.stats {
                stats.lb_healthy_panic.inc();
            }
        }
        let picker = match &level.localities {
            None => &level.pickers[0],
            Some((order, cursor)) => {
                let n = cursor.fetch_add(1, Ordering::Relaxed);
                &level.pickers[order[(n % order.len() as u64) as usize] as usize]
            }
        };
        picker.pick(hosts, context.hash, attempt)
    }
}

impl Picker {
    #[inline]
    fn pick(&self, hosts: &[Arc<Host>], hash: Option<u64>, attempt: u32) -> Option<usize> {
        if self.is_empty() {
            return None;
        }
        let at = |table: &[u32], n: u64| table[(n % table.len() as u64) as usize] as usize;
        Some(match self {
            Picker::RoundRobin(table, cursor) => at(table, cursor.fetch_add(1, Ordering::Relaxed)),
            Picker::Random(table) => at(table, fast_random()),
            Picker::LeastRequestChoices {
                hosts: candidates,
                choice_count,
            } => {
                let active = |i: usize| hosts[i].active.load(Ordering::Relaxed);
                let (mut r, mut spare) = fast_random_pair();
                let mut best = at(candidates, r);
                for _ in 1..*choice_count {
                    r = xorshift(&mut spare);
                    let sampled = at(candidates, r);
                    if active(sampled) < active(best) {
                        best = sampled;
                    }
                }
                best
            }
            Picker::LeastRequestWeighted {
                hosts: weighted,
                bias,
            } => pick_weighted_least_request(hosts, weighted, *bias),
            // A random point when the request has no hash (as in Envoy).
            Picker::Ring(ring) => {
                let hash = hash.unwrap_or_else(fast_random);
                let mut i = ring.partition_point(|&(entry, _)| entry < hash);
                if i == ring.len() {
                    i = 0;
                }
                if attempt > 0 {
                    i = (i + attempt as usize) % ring.len();
                }
                ring[i].1 as usize
            }
            Picker::Maglev(table) => {
                let hash = hash.unwrap_or_else(fast_random);
                let h = if attempt > 0 {
                    // Another host for a retry: mix the attempt into the hash.
                    let mut x = hash ^ (u64::from(attempt)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    xorshift(&mut x)
                } else {
                    hash
                };
                at(table, h)
            }
        })
    }
}

impl Picker {
    fn is_empty(&self) -> bool {
        match self {
            Picker::RoundRobin(t, _) | Picker::Random(t) | Picker::Maglev(t) => t.is_empty(),
            Picker::LeastRequestChoices { hosts, .. } => hosts.is_empty(),
            Picker::LeastRequestWeighted { hosts, .. } => hosts.is_empty(),
            Picker::Ring(ring) => ring.is_empty(),
        }
    }
}

/// A random pick weighted by weight / (active + 1)^bias over the hosts (or a window of
/// them), computed now.
#[inline]
fn pick_weighted_least_request(hosts: &[Arc<Host>], weighted: &[(u32, f64)], bias: f64) -> usize {
    let n = weighted.len();
    let (r, start) = fast_random_pair();
    let (start, len) = if n <= LEAST_REQUEST_WINDOW {
        (0, n)
    } else {
        ((start % n as u64) as usize, LEAST_REQUEST_WINDOW)
    };
    let effective = |k: usize| {
        let (host, weight) = weighted[(start + k) % n];
        let active = hosts[host as usize].active.load(Ordering::Relaxed) as f64;
        let divisor = if bias == 1.0 {
            active + 1.0
        } else {
            (active + 1.0).powf(bias)
        };
        (host, weight / divisor)
    };
    let total: f64 = (0..len).map(|k| effective(k).1).sum();
    // 53 random bits as a fraction of the total.
    let mut target = (r >> 11) as f64 / (1u64 << 53) as f64 * total;
    let mut last = 0;
    for k in 0..len {
        let (host, weight) = effective(k);
        last = host;
        if target < weight {
            return host as usize;
        }
        target -= weight;
    }
    last as usize
}

/// Envoy's per-priority load, panic and pickers.
fn build_priorities(
    settings: &LbSettings,
    hosts: &[Arc<Host>],
    localities: &HostLocalities,
) -> Kind {
    let factor = u64::from(settings.overprovisioning_factor);
    let levels_count = hosts.iter().map(|h| h.priority).max().unwrap_or(0) as usize + 1;
    let mut total = vec![0u64; levels_count];
    let mut healthy = vec![0u64; levels_count];
    for host in hosts {
        total[host.priority as usize] += 1;
        healthy[host.priority as usize] += u64::from(host.is_healthy());
    }
    let health: Vec<u64> = (0..levels_count)
        .map(|p| {
            (factor * healthy[p])
                .checked_div(total[p])
                .unwrap_or(0)
                .min(100)
        })
        .collect();
    let normalized_total = health.iter().sum::<u64>().min(100);
    let threshold = settings.common.healthy_panic_threshold;

    let mut load = vec![0u64; levels_count];
    let mut panic = vec![false; levels_count];
    if normalized_total == 0 {
        // Total panic: every priority in panic, load by host count.
        if threshold <= 0.0 {
            return Kind::Empty;
        }
        let all = hosts.len() as u64;
        let mut remaining = 100u64;
        for p in 0..levels_count {
            load[p] = 100 * total[p] / all;
            remaining -= load[p];
            panic[p] = true;
        }
        if let Some(first) = (0..levels_count).find(|&p| total[p] > 0) {
            load[first] += remaining;
        }
    } else {
        let mut remaining = 100u64;
        for p in 0..levels_count {
            load[p] = remaining.min((health[p] * 100).checked_div(normalized_total).unwrap_or(0));
            remaining -= load[p];
        }
        if let Some(first) = (0..levels_count).find(|&p| health[p] > 0) {
            load[first] += remaining;
        }
        if normalized_total < 100 {
            for p in 0..levels_count {
                let healthy_percent = if total[p] == 0 {
                    0.0
                } else {
                    100.0 * healthy[p] as f64 / total[p] as f64
                };
                panic[p] = healthy_percent < threshold;
            }
        }
    }

    let mut levels = Vec::new();
    let mut cumulative = 0u32;
    for p in 0..levels_count {
        if load[p] == 0 {
            continue;
        }
        cumulative += load[p] as u32;
        let members: Vec<u32> = (0..hosts.len() as u32)
            .filter(|&i| hosts[i as usize].priority as usize == p)
            .collect();
        let eligible: Vec<u32> = members
            .iter()
            .copied()
            .filter(|&i| panic[p] || hosts[i as usize].is_healthy())
            .collect();
        let level = if settings.common.locality_weighted && !panic[p] {
            locality_level(settings, hosts, localities, &members, &eligible)
        } else {
            None
        };
        let level = level.unwrap_or_else(|| {
            let weights = combined_weights(settings, hosts, localities, &eligible);
            PriorityLevel {
                cumulative_load: 0,
                panic: panic[p],
                localities: None,
                pickers: Box::new([Picker::new(settings.policy, hosts, &eligible, &weights)]),
            }
        });
        levels.push(PriorityLevel {
            cumulative_load: cumulative,
            panic: panic[p],
            ..level
        });
    }
    if levels.is_empty() {
        return Kind::Empty;
    }
    let last = levels.len() - 1;
    levels[last].cumulative_load = 100;
    Kind::Priorities(levels.into_boxed_slice())
}

/// Host weights for a picker over `eligible`: the endpoint weights, or for the hash
/// policies with locality-weighted balancing, each host's share of its locality times
/// the locality's weight (as Envoy normalizes them).
fn combined_weights(
    settings: &LbSettings,
    hosts: &[Arc<Host>],
    localities: &HostLocalities,
    eligible: &[u32],
) -> Vec<f64> {
    let plain = || {
        eligible
            .iter()
            .map(|&i| f64::from(hosts[i as usize].weight))
            .collect()
    };
    let hashing = matches!(
        settings.policy,
        LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. }
    );
    if !(hashing && settings.common.locality_weighted) {
        return plain();
    }
    let mut locality_sum: HashMap<u32, f64> = HashMap::new();
    for &i in eligible {
        *locality_sum.entry(localities.of(i as usize)).or_default() +=
            f64::from(hosts[i as usize].weight);
    }
    eligible
        .iter()
        .map(|&i| {
            let locality = localities.of(i as usize);
            let locality_weight = localities
                .weights
                .get(locality as usize)
                .copied()
                .unwrap_or(0);
            f64::from(hosts[i as usize].weight) / locality_sum[&locality]
                * f64::from(locality_weight)
        })
        .collect()
}

/// A priority level that picks a locality first (Envoy's locality-weighted
/// balancing); `None` when no locality has an effective weight (then hosts are picked
/// over the whole level, as Envoy falls back to).
fn locality_level(
    settings: &LbSettings,
    hosts: &[Arc<Host>],
    localities: &HostLocalities,
    members: &[u32],
    eligible: &[u32],
) -> Option<PriorityLevel> {
    if matches!(
        settings.policy,
        LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. }
    ) {
        // The hash policies fold locality weights into the host weights.
        return None;
    }
    let mut ids: Vec<u32> = members.iter().map(|&i| localities.of(i as usize)).collect();
    ids.sort_unstable();
    ids.dedup();
    let factor = f64::from(settings.overprovisioning_factor) / 100.0;
    let mut pickers = Vec::new();
    let mut weights = Vec::new();
    for &locality in &ids {
        let in_locality = |i: &&u32| localities.of(**i as usize) == locality;
        let total = members.iter().filter(in_locality).count();
        let healthy: Vec<u32> = eligible.iter().filter(in_locality).copied().collect();
        let weight = f64::from(
            localities
                .weights
                .get(locality as usize)
                .copied()
                .unwrap_or(0),
        );
        let effective = weight * (factor * healthy.len() as f64 / total as f64).min(1.0);
        if effective <= 0.0 || healthy.is_empty() {
            continue;
        }
        let host_weights: Vec<f64> = healthy
            .iter()
            .map(|&i| f64::from(hosts[i as usize].weight))
            .collect();
        pickers.push(Picker::new(settings.policy, hosts, &healthy, &host_weights));
        weights.push(effective);
    }
    if pickers.is_empty() {
        return None;
    }
    let order = round_robin_table(&quantize(&weights), MAX_TABLE_LEN);
    Some(PriorityLevel {
        cumulative_load: 0,
        panic: false,
        localities: Some((order.into_boxed_slice(), AtomicU64::new(0))),
        pickers: pickers.into_boxed_slice(),
    })
}

/// Positive real weights as integers ≥ 1: integral weights as they are, others
/// keeping their ratios to 1 part in 10000.
fn quantize(weights: &[f64]) -> Vec<u32> {
    if weights
        .iter()
        .all(|&w| w >= 1.0 && w.fract() == 0.0 && w <= f64::from(u32::MAX))
    {
        return weights.iter().map(|&w| w as u32).collect();
    }
    let max = weights.iter().copied().fold(0.0, f64::max);
    if max <= 0.0 {
        return vec![1; weights.len()];
    }
    weights
        .iter()
        .map(|w| ((w / max * 10_000.0).round() as u32).max(1))
        .collect()
}

impl Picker {
    /// The picker of `policy` over the hosts `eligible` (indexes into `hosts`) with
    /// these weights.
    fn new(policy: LbPolicy, hosts: &[Arc<Host>], eligible: &[u32], weights: &[f64]) -> Picker {
        let map = |slots: Vec<u32>| -> Box<[u32]> {
            slots.into_iter().map(|s| eligible[s as usize]).collect()
        };
        match policy {
            LbPolicy::RoundRobin | LbPolicy::ClusterProvided => Picker::RoundRobin(
                map(round_robin_table(&quantize(weights), MAX_TABLE_LEN)),
                AtomicU64::new(0),
            ),
            // Envoy's RANDOM ignores endpoint weights: uniform over the hosts.
            LbPolicy::Random => Picker::Random(eligible.into()),
            LbPolicy::LeastRequest {
                choice_count,
                active_request_bias,
            } => {
                let equal = weights.windows(2).all(|w| w[0] == w[1]);
                if equal {
                    Picker::LeastRequestChoices {
                        hosts: eligible.into(),
                        choice_count,
                    }
                } else if active_request_bias == 0.0 {
                    // Envoy: with a bias of 0 least request behaves like round robin.
                    Picker::RoundRobin(
                        map(round_robin_table(&quantize(weights), MAX_TABLE_LEN)),
                        AtomicU64::new(0),
                    )
                } else {
                    Picker::LeastRequestWeighted {
                        hosts: eligible
                            .iter()
                            .copied()
                            .zip(weights.iter().copied())
                            .collect(),
                        bias: active_request_bias,
                    }
                }
            }
            LbPolicy::RingHash {
                minimum_ring_size,
                maximum_ring_size,
            } => Picker::Ring(ring(
                hosts,
                eligible,
                weights,
                minimum_ring_size,
                maximum_ring_size,
            )),
            LbPolicy::Maglev { table_size } => {
                let ids: Vec<(Vec<u8>, u32)> = eligible
                    .iter()
                    .zip(quantize(weights))
                    .map(|(&i, w)| (hosts[i as usize].address.to_string().into_bytes(), w))
                    .collect();
                Picker::Maglev(map(maglev::table(&ids, table_size)))
            }
        }
    }
}

/// Envoy's ring: `scale × normalized weight` entries per host, each the xxHash64 of
/// "address_i", sorted by hash.
fn ring(
    hosts: &[Arc<Host>],
    eligible: &[u32],
    weights: &[f64],
    minimum_ring_size: u64,
    maximum_ring_size: u64,
) -> Box<[(u64, u32)]> {
    let sum: f64 = weights.iter().sum();
    if eligible.is_empty() || sum <= 0.0 {
        return Box::new([]);
    }
    let normalized: Vec<f64> = weights.iter().map(|w| w / sum).collect();
    let min_normalized = normalized.iter().copied().fold(f64::INFINITY, f64::min);
    let scale = ((min_normalized * minimum_ring_size as f64).ceil() / min_normalized)
        .min(maximum_ring_size as f64);
    let mut ring = Vec::with_capacity(scale.ceil() as usize);
    let (mut current, mut target) = (0.0f64, 0.0f64);
    let mut key = String::new();
    for (&host, share) in eligible.iter().zip(&normalized) {
        target += scale * share;
        let address = hosts[host as usize].address.to_string();
        let mut i = 0u64;
        while current < target {
            key.clear();
            key.push_str(&address);
            key.push('_');
            key.push_str(&i.to_string());
            ring.push((xxh64(key.as_bytes(), 0), host));
            i += 1;
            current += 1.0;
        }
    }
    ring.sort_unstable_by_key(|&(hash, _)| hash);
    ring.into_boxed_slice()
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
mod tests;
