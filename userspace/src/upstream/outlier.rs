//! Outlier detection (`outlier_detection`): passive health checking from the outcomes
//! of real requests, with Envoy's algorithm and stat names.
//!
//! Two halves:
//!
//! - On the request path, [`Detector::record`] counts one outcome into the host's
//!   [`HostMonitor`]: a few relaxed atomic adds (the consecutive-error counters and
//!   the success-rate totals). When a consecutive counter reaches its threshold it
//!   sends one event to the detector's task; nothing else happens inline.
//! - The detector task ([`run`], on the health-checking thread) decides: it checks
//!   `max_ejection_percent` and the `enforcing_*` percentages, sets
//!   `FAILED_OUTLIER_CHECK`, and rebuilds the picker through
//!   [`ClusterUpstream::health_changed`]. Every `interval` it ends ejections whose
//!   time is up (base × times ejected, capped by `max_ejection_time`) and computes
//!   success rates and failure percentages from the totals that grew since the last
//!   interval.
//!
//! Outcomes map to HTTP codes as in Envoy: a connect failure or reset counts as 503,
//! a timeout as 504, unless `split_external_local_origin_errors` keeps these
//! local-origin errors apart (`consecutive_local_origin_failure`, local-origin
//! success rate).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::host::Host;
use super::{fast_random, ClusterUpstream, HealthFlags, Outcome};
use crate::model::health::OutlierDetection;
use crate::observe::stats::{self, Counter, Gauge};

/// A host's outlier counters, written on the request path.
#[derive(Debug)]
pub struct HostMonitor {
    consecutive_5xx: AtomicU32,
    consecutive_gateway_failure: AtomicU32,
    consecutive_local_origin_failure: AtomicU32,
    /// External-origin (HTTP) requests and successes since the start.
    external_total: AtomicU64,
    external_success: AtomicU64,
    /// Local-origin (connection) outcomes and successes since the start (only with
    /// `split_external_local_origin_errors`).
    local_total: AtomicU64,
    local_success: AtomicU64,
    /// The success rate of the last interval (`f64` bits; negative: not computed).
    success_rate: AtomicU64,
    /// The local-origin success rate of the last interval (`f64` bits).
    local_origin_success_rate: AtomicU64,
}

impl Default for HostMonitor {
    fn default() -> HostMonitor {
        HostMonitor {
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway_failure: AtomicU32::new(0),
            consecutive_local_origin_failure: AtomicU32::new(0),
            external_total: AtomicU64::new(0),
            external_success: AtomicU64::new(0),
            local_total: AtomicU64::new(0),
            local_success: AtomicU64::new(0),
            success_rate: AtomicU64::new((-1.0f64).to_bits()),
            local_origin_success_rate: AtomicU64::new((-1.0f64).to_bits()),
        }
    }
}

impl HostMonitor {
    /// The success rate (percent) computed in the last interval, or -1.
    pub fn success_rate(&self) -> f64 {
        f64::from_bits(self.success_rate.load(Ordering::Relaxed))
    }

    /// The local-origin success rate (percent) of the last interval, or -1.
    pub fn local_origin_success_rate(&self) -> f64 {
        f64::from_bits(self.local_origin_success_rate.load(Ordering::Relaxed))
    }
}

/// Sets a counter to zero, writing only when it is not zero already (a success on a
/// healthy host then costs a read, not a cache-line write).
#[inline]
fn reset(counter: &AtomicU32) {
    if counter.load(Ordering::Relaxed) != 0 {
        counter.store(0, Ordering::Relaxed);
    }
}

/// Adds one; true when the count reaches `threshold` exactly (0 disables).
#[inline]
fn reaches(counter: &AtomicU32, threshold: u32) -> bool {
    counter.fetch_add(1, Ordering::Relaxed).wrapping_add(1) == threshold
}

/// Why a host is an outlier (Envoy's `OutlierEjectionType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectionType {
    /// `consecutive_5xx`.
    Consecutive5xx,
    /// `consecutive_gateway_failure`.
    ConsecutiveGatewayFailure,
    /// `consecutive_local_origin_failure`.
    ConsecutiveLocalOriginFailure,
    /// `success_rate`.
    SuccessRate,
    /// `local_origin_success_rate`.
    LocalOriginSuccessRate,
    /// `failure_percentage`.
    FailurePercentage,
    /// `failure_percentage_local_origin`.
    FailurePercentageLocalOrigin,
}

/// What the request path and the health checker tell the detector task.
#[derive(Debug)]
enum Event {
    /// A consecutive counter of the host (by address of its `Host`) reached its
    /// threshold.
    Consecutive(usize, EjectionType),
    /// The active health check passed for this host: end its ejection
    /// (`successful_active_health_check_uneject_host`).
    HealthCheckPassed(usize),
}

/// `cluster.<name>.outlier_detection.*`.
#[derive(Debug)]
pub struct OutlierStats {
    /// `ejections_active`.
    pub ejections_active: Gauge,
    /// `ejections_overflow`.
    pub ejections_overflow: Counter,
    /// `ejections_enforced_total`.
    pub ejections_enforced_total: Counter,
    /// `ejections_total` (deprecated; Envoy 1.40 keeps it at 0, and so does keel).
    pub ejections_total: Counter,
    /// `ejections_consecutive_5xx` (deprecated in Envoy: detected).
    pub ejections_consecutive_5xx: Counter,
    /// `ejections_success_rate` (deprecated in Envoy: detected).
    pub ejections_success_rate: Counter,
    detected: [Counter; 7],
    enforced: [Counter; 7],
}

/// Envoy's stat suffixes per ejection type, in [`EjectionType`] order.
const TYPE_NAMES: [&str; 7] = [
    "consecutive_5xx",
    "consecutive_gateway_failure",
    "consecutive_local_origin_failure",
    "success_rate",
    "local_origin_success_rate",
    "failure_percentage",
    "local_origin_failure_percentage",
];

impl OutlierStats {
    fn new(cluster: &str) -> OutlierStats {
        let prefix = format!("cluster.{cluster}.outlier_detection.");
        let store = stats::global();
        let counter = |name: &str| store.counter(&format!("{prefix}{name}"));
        // Envoy also has the degradation counter (for the degraded-host extension).
        let _ = counter("ejections_detected_degradation");
        OutlierStats {
            ejections_active: store.gauge(&format!("{prefix}ejections_active")),
            ejections_overflow: counter("ejections_overflow"),
            ejections_enforced_total: counter("ejections_enforced_total"),
            ejections_total: counter("ejections_total"),
            ejections_consecutive_5xx: counter("ejections_consecutive_5xx"),
            ejections_success_rate: counter("ejections_success_rate"),
            detected: TYPE_NAMES.map(|t| counter(&format!("ejections_detected_{t}"))),
            enforced: TYPE_NAMES.map(|t| counter(&format!("ejections_enforced_{t}"))),
        }
    }

    /// `ejections_detected_<type>`.
    pub fn detected(&self, kind: EjectionType) -> &Counter {
        &self.detected[kind as usize]
    }

    /// `ejections_enforced_<type>`.
    pub fn enforced(&self, kind: EjectionType) -> &Counter {
        &self.enforced[kind as usize]
    }
}

/// A cluster's outlier detector: its configuration, stats, and the channel to its
/// task.
#[derive(Debug)]
pub struct Detector {
    config: OutlierDetection,
    /// `cluster.<name>.outlier_detection.*`.
    pub stats: OutlierStats,
    events: mpsc::UnboundedSender<Event>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    /// Cluster-wide figures of the last interval for `/clusters` (`f64` bits): success
    /// rate average and ejection threshold, external then local origin.
    figures: [AtomicU64; 4],
}

/// A cluster's success-rate figures of the last interval (-1: not computed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SuccessRateFigures {
    /// `success_rate_average`.
    pub success_rate_average: f64,
    /// `success_rate_ejection_threshold`.
    pub success_rate_ejection_threshold: f64,
    /// `local_origin_success_rate_average`.
    pub local_origin_success_rate_average: f64,
    /// `local_origin_success_rate_ejection_threshold`.
    pub local_origin_success_rate_ejection_threshold: f64,
}

impl Detector {
    /// A detector for the cluster called `cluster` (its stats are created now).
    pub fn new(cluster: &str, config: OutlierDetection) -> Detector {
        let (events, receiver) = mpsc::unbounded_channel();
        let none = || AtomicU64::new((-1.0f64).to_bits());
        Detector {
            config,
            stats: OutlierStats::new(cluster),
            events,
            receiver: Mutex::new(Some(receiver)),
            figures: [none(), none(), none(), none()],
        }
    }

    /// The configuration.
    pub fn config(&self) -> &OutlierDetection {
        &self.config
    }

    /// The figures `/clusters` shows as `outlier::...`.
    pub fn figures(&self) -> SuccessRateFigures {
        let f = |i: usize| f64::from_bits(self.figures[i].load(Ordering::Relaxed));
        SuccessRateFigures {
            success_rate_average: f(0),
            success_rate_ejection_threshold: f(1),
            local_origin_success_rate_average: f(2),
            local_origin_success_rate_ejection_threshold: f(3),
        }
    }

    fn set_figures(&self, external: (f64, f64), local: (f64, f64)) {
        for (i, v) in [external.0, external.1, local.0, local.1]
            .into_iter()
            .enumerate()
        {
            self.figures[i].store(v.to_bits(), Ordering::Relaxed);
        }
    }

    /// Counts how one request to `host` ended (the request path: atomics only).
    #[inline]
    pub fn record(&self, host: &Host, outcome: Outcome) {
        let monitor = &host.outlier;
        if self.config.split_external_local_origin_errors {
            match outcome {
                Outcome::Response(code) => {
                    // The connection worked: a local-origin success.
                    reset(&monitor.consecutive_local_origin_failure);
                    monitor.local_total.fetch_add(1, Ordering::Relaxed);
                    monitor.local_success.fetch_add(1, Ordering::Relaxed);
                    self.external(host, code);
                }
                Outcome::ConnectFailure | Outcome::Timeout | Outcome::Reset => {
                    monitor.local_total.fetch_add(1, Ordering::Relaxed);
                    if reaches(
                        &monitor.consecutive_local_origin_failure,
                        self.config.consecutive_local_origin_failure,
                    ) {
                        self.notify(host, EjectionType::ConsecutiveLocalOriginFailure);
                    }
                }
            }
        } else {
            let code = match outcome {
                Outcome::Response(code) => code,
                Outcome::ConnectFailure | Outcome::Reset => 503,
                Outcome::Timeout => 504,
            };
            self.external(host, code);
        }
    }

    /// Envoy's `putHttpResponseCode`.
    #[inline]
    fn external(&self, host: &Host, code: u16) {
        let monitor = &host.outlier;
        monitor.external_total.fetch_add(1, Ordering::Relaxed);
        if (500..600).contains(&code) {
            if matches!(code, 502..=504) {
                if reaches(
                    &monitor.consecutive_gateway_failure,
                    self.config.consecutive_gateway_failure,
                ) {
                    self.notify(host, EjectionType::ConsecutiveGatewayFailure);
                }
            } else {
                reset(&monitor.consecutive_gateway_failure);
            }
            if reaches(&monitor.consecutive_5xx, self.config.consecutive_5xx) {
                self.notify(host, EjectionType::Consecutive5xx);
            }
        } else {
            monitor.external_success.fetch_add(1, Ordering::Relaxed);
            reset(&monitor.consecutive_5xx);
            reset(&monitor.consecutive_gateway_failure);
        }
    }

    #[cold]
    fn notify(&self, host: &Host, kind: EjectionType) {
        // The task may be gone (shutting down): nothing to do then.
        let _ = self.events.send(Event::Consecutive(host_key(host), kind));
    }

    /// The active health check passed for `host`: ends its ejection if the
    /// configuration says so.
    pub fn health_check_passed(&self, host: &Host) {
        if self.config.successful_active_health_check_uneject_host
            && host.health.get() & HealthFlags::FAILED_OUTLIER_CHECK != 0
        {
            let _ = self.events.send(Event::HealthCheckPassed(host_key(host)));
        }
    }
}

/// A host's identity while it is in a host set: the address of its `Host`.
fn host_key(host: &Host) -> usize {
    host as *const Host as usize
}

/// What the detector task keeps per host.
#[derive(Debug)]
struct HostState {
    host: Arc<Host>,
    /// Ejection-time multiplier (Envoy's eject time backoff).
    backoff: u32,
    ejected_at: Option<Instant>,
    /// Jitter added to the current ejection.
    jitter: Duration,
    unejected_at: Option<Instant>,
    /// Totals at the last interval.
    last_external: (u64, u64),
    last_local: (u64, u64),
}

/// The detector task of `cluster`: ejections on events, un-ejections and success
/// rates every interval. Returns when `stop` turns true or the cluster is dropped.
pub async fn run(cluster: Arc<ClusterUpstream>, mut stop: watch::Receiver<bool>) {
    let Some(detector) = cluster.health.outlier.clone() else {
        return;
    };
    let Some(mut events) = detector
        .receiver
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    else {
        tracing::error!(cluster = %cluster.name(), "outlier detector started twice");
        return;
    };
    let mut task = DetectorTask {
        cluster: &cluster,
        detector: &detector,
        hosts: HashMap::new(),
        set: None,
    };
    let interval = detector.config.interval;
    let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            event = events.recv() => match event {
                Some(event) => task.on_event(event),
                None => return,
            },
            _ = tick.tick() => task.on_interval(Instant::now()),
        }
    }
}

struct DetectorTask<'a> {
    cluster: &'a ClusterUpstream,
    detector: &'a Detector,
    hosts: HashMap<usize, HostState>,
    /// The host set the map was last synced with.
    set: Option<Arc<super::HostSet>>,
}

impl DetectorTask<'_> {
    /// Follows the cluster's current hosts: new hosts get a state, removed hosts lose
    /// theirs (an ejected one stops counting as active).
    fn sync(&mut self) {
        let set = self.cluster.hosts();
        // The set itself is kept, so its address cannot be reused by a later set.
        if self
            .set
            .as_ref()
            .is_some_and(|known| Arc::ptr_eq(known, &set))
        {
            return;
        }
        self.set = Some(Arc::clone(&set));
        let mut seen = HashMap::with_capacity(set.hosts.len());
        for host in &set.hosts {
            let key = host_key(host);
            let state = self.hosts.remove(&key).unwrap_or_else(|| HostState {
                host: Arc::clone(host),
                backoff: 0,
                ejected_at: None,
                jitter: Duration::ZERO,
                unejected_at: None,
                last_external: totals(&host.outlier.external_total, &host.outlier.external_success),
                last_local: totals(&host.outlier.local_total, &host.outlier.local_success),
            });
            seen.insert(key, state);
        }
        for state in self.hosts.values() {
            if state.ejected_at.is_some() {
                self.detector.stats.ejections_active.dec();
            }
        }
        self.hosts = seen;
    }

    fn on_event(&mut self, event: Event) {
        self.sync();
        match event {
            Event::Consecutive(key, kind) => {
                let Some(state) = self.hosts.get(&key) else {
                    return;
                };
                let monitor = &state.host.outlier;
                // Reset the counter so that another bout of errors is detected even
                // without a success in between (as Envoy does).
                match kind {
                    EjectionType::Consecutive5xx => {
                        monitor.consecutive_5xx.store(0, Ordering::Relaxed)
                    }
                    EjectionType::ConsecutiveGatewayFailure => monitor
                        .consecutive_gateway_failure
                        .store(0, Ordering::Relaxed),
                    _ => monitor
                        .consecutive_local_origin_failure
                        .store(0, Ordering::Relaxed),
                }
                if state.ejected_at.is_some() {
                    return;
                }
                let config = &self.detector.config;
                let enforcing = match kind {
                    EjectionType::Consecutive5xx => config.enforcing_consecutive_5xx,
                    EjectionType::ConsecutiveGatewayFailure => {
                        config.enforcing_consecutive_gateway_failure
                    }
                    _ => config.enforcing_consecutive_local_origin_failure,
                };
                self.detected(kind);
                if self.eject(key, kind, enforced(enforcing), Instant::now()) {
                    self.cluster.health_changed();
                }
            }
            Event::HealthCheckPassed(key) => {
                if self.uneject(key, Instant::now()) {
                    self.cluster.health_changed();
                }
            }
        }
    }

    fn detected(&self, kind: EjectionType) {
        let stats = &self.detector.stats;
        stats.detected(kind).inc();
        // Envoy 1.40 leaves the deprecated ejections_total at 0 (checked), while the
        // deprecated per-type counters count detections.
        match kind {
            EjectionType::Consecutive5xx => stats.ejections_consecutive_5xx.inc(),
            EjectionType::SuccessRate => stats.ejections_success_rate.inc(),
            _ => {}
        }
    }

    /// Envoy's `ejectHost`: ejects unless that would pass `max_ejection_percent`;
    /// returns whether the host left rotation.
    fn eject(&mut self, key: usize, kind: EjectionType, enforced: bool, now: Instant) -> bool {
        let stats = &self.detector.stats;
        let config = &self.detector.config;
        let total = self.hosts.len().max(1) as f64;
        let active = self
            .hosts
            .values()
            .filter(|s| s.ejected_at.is_some())
            .count() as f64;
        if 100.0 * (active + 1.0) / total > f64::from(config.max_ejection_percent.min(100)) {
            stats.ejections_overflow.inc();
            return false;
        }
        if !enforced {
            return false;
        }
        let Some(state) = self.hosts.get_mut(&key) else {
            return false;
        };
        stats.ejections_enforced_total.inc();
        stats.enforced(kind).inc();
        stats.ejections_active.inc();
        let base = config.base_ejection_time;
        if base.saturating_mul(state.backoff) < config.max_ejection_time {
            state.backoff += 1;
        }
        state.ejected_at = Some(now);
        state.jitter = jitter(config.max_ejection_time_jitter);
        tracing::info!(
            cluster = %self.cluster.name(),
            host = %state.host.address,
            reason = TYPE_NAMES[kind as usize],
            "outlier detection: host ejected"
        );
        state.host.health.set(HealthFlags::FAILED_OUTLIER_CHECK)
    }

    /// Ends an ejection; returns whether the host came back into rotation.
    fn uneject(&mut self, key: usize, now: Instant) -> bool {
        let Some(state) = self.hosts.get_mut(&key) else {
            return false;
        };
        if state.ejected_at.take().is_none() {
            return false;
        }
        state.unejected_at = Some(now);
        self.detector.stats.ejections_active.dec();
        // New bouts start from zero after an ejection.
        let monitor = &state.host.outlier;
        monitor.consecutive_5xx.store(0, Ordering::Relaxed);
        monitor
            .consecutive_gateway_failure
            .store(0, Ordering::Relaxed);
        monitor
            .consecutive_local_origin_failure
            .store(0, Ordering::Relaxed);
        tracing::info!(
            cluster = %self.cluster.name(),
            host = %state.host.address,
            "outlier detection: host back in rotation"
        );
        state.host.health.clear(HealthFlags::FAILED_OUTLIER_CHECK)
    }

    /// The interval: ejections whose time is up end, ejection multipliers of hosts
    /// that stayed healthy decay, and success rates and failure percentages are
    /// computed.
    fn on_interval(&mut self, now: Instant) {
        self.sync();
        let config = self.detector.config.clone();
        let mut changed = false;
        let keys: Vec<usize> = self.hosts.keys().copied().collect();
        for key in &keys {
            let Some(state) = self.hosts.get_mut(key) else {
                continue;
            };
            match state.ejected_at {
                None => {
                    if let Some(at) = state.unejected_at {
                        if state.backoff > 0 && now.duration_since(at) >= config.base_ejection_time
                        {
                            state.backoff -= 1;
                            state.unejected_at = Some(now);
                        }
                    }
                }
                Some(at) => {
                    let time = config
                        .base_ejection_time
                        .saturating_mul(state.backoff.max(1))
                        .min(config.max_ejection_time.max(config.base_ejection_time))
                        + state.jitter;
                    if now.duration_since(at) >= time {
                        changed |= self.uneject(*key, now);
                    }
                }
            }
        }
        changed |= self.success_rates(&config, now);
        if changed {
            self.cluster.health_changed();
        }
    }

    /// Success rate and failure percentage over the requests of the last interval.
    fn success_rates(&mut self, config: &OutlierDetection, now: Instant) -> bool {
        // (key, requests, success rate) per origin.
        let mut external = Vec::new();
        let mut local = Vec::new();
        for (key, state) in self.hosts.iter_mut() {
            let monitor = &state.host.outlier;
            let e = totals(&monitor.external_total, &monitor.external_success);
            let l = totals(&monitor.local_total, &monitor.local_success);
            let delta = |now: (u64, u64), then: (u64, u64)| {
                (now.0.saturating_sub(then.0), now.1.saturating_sub(then.1))
            };
            let (de, dl) = (delta(e, state.last_external), delta(l, state.last_local));
            state.last_external = e;
            state.last_local = l;
            monitor
                .success_rate
                .store((-1.0f64).to_bits(), Ordering::Relaxed);
            monitor
                .local_origin_success_rate
                .store((-1.0f64).to_bits(), Ordering::Relaxed);
            if de.0 > 0 {
                external.push((*key, de.0, 100.0 * de.1 as f64 / de.0 as f64));
            }
            if dl.0 > 0 {
                local.push((*key, dl.0, 100.0 * dl.1 as f64 / dl.0 as f64));
            }
        }
        let mut changed = false;
        let external_figures = self.success_rate_round(
            &external,
            config,
            EjectionType::SuccessRate,
            EjectionType::FailurePercentage,
            now,
            &mut changed,
        );
        let local_figures = if config.split_external_local_origin_errors {
            self.success_rate_round(
                &local,
                config,
                EjectionType::LocalOriginSuccessRate,
                EjectionType::FailurePercentageLocalOrigin,
                now,
                &mut changed,
            )
        } else {
            (-1.0, -1.0)
        };
        self.detector.set_figures(external_figures, local_figures);
        changed
    }

    /// One origin's success-rate and failure-percentage ejections; returns the
    /// (average, ejection threshold) for `/clusters`.
    fn success_rate_round(
        &mut self,
        samples: &[(usize, u64, f64)],
        config: &OutlierDetection,
        rate_kind: EjectionType,
        percentage_kind: EjectionType,
        now: Instant,
        changed: &mut bool,
    ) -> (f64, f64) {
        let local = rate_kind == EjectionType::LocalOriginSuccessRate;
        let mut figures = (-1.0, -1.0);
        let eligible: Vec<&(usize, u64, f64)> = samples
            .iter()
            .filter(|s| s.1 >= u64::from(config.success_rate_request_volume))
            .collect();
        for (key, _, rate) in &eligible {
            let monitor = &self.hosts[key].host.outlier;
            let slot = if local {
                &monitor.local_origin_success_rate
            } else {
                &monitor.success_rate
            };
            slot.store(rate.to_bits(), Ordering::Relaxed);
        }
        if !eligible.is_empty() && eligible.len() >= config.success_rate_minimum_hosts as usize {
            let rates: Vec<f64> = eligible.iter().map(|s| s.2).collect();
            let (mean, threshold) = success_rate_threshold(
                &rates,
                f64::from(config.success_rate_stdev_factor) / 1000.0,
            );
            figures = (mean, threshold);
            let enforcing = if local {
                config.enforcing_local_origin_success_rate
            } else {
                config.enforcing_success_rate
            };
            for (key, _, rate) in &eligible {
                if *rate < threshold && self.hosts[key].ejected_at.is_none() {
                    self.detected(rate_kind);
                    *changed |= self.eject(*key, rate_kind, enforced(enforcing), now);
                }
            }
        }
        let eligible: Vec<&(usize, u64, f64)> = samples
            .iter()
            .filter(|s| s.1 >= u64::from(config.failure_percentage_request_volume))
            .collect();
        if !eligible.is_empty()
            && eligible.len() >= config.failure_percentage_minimum_hosts as usize
        {
            let enforcing = if local {
                config.enforcing_failure_percentage_local_origin
            } else {
                config.enforcing_failure_percentage
            };
            for (key, _, rate) in &eligible {
                if 100.0 - rate >= f64::from(config.failure_percentage_threshold)
                    && self.hosts[key].ejected_at.is_none()
                {
                    self.detected(percentage_kind);
                    *changed |= self.eject(*key, percentage_kind, enforced(enforcing), now);
                }
            }
        }
        figures
    }
}

fn totals(total: &AtomicU64, success: &AtomicU64) -> (u64, u64) {
    // Success first: a concurrent request can then only make the total larger, never
    // the rate above 100%.
    let success = success.load(Ordering::Relaxed);
    (total.load(Ordering::Relaxed).max(success), success)
}

/// Envoy's success-rate statistics: the mean of `rates` and the ejection threshold
/// `mean - factor × stdev` (population standard deviation).
pub fn success_rate_threshold(rates: &[f64], factor: f64) -> (f64, f64) {
    let n = rates.len() as f64;
    let mean = rates.iter().sum::<f64>() / n;
    let variance = rates.iter().map(|r| (r - mean) * (r - mean)).sum::<f64>() / n;
    (mean, mean - factor * variance.sqrt())
}

/// Whether an `enforcing_*` percentage says to enforce this time.
fn enforced(percent: u32) -> bool {
    percent >= 100 || (fast_random() % 100) < u64::from(percent)
}

fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_millis(fast_random() % (max.as_millis() as u64 + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(port: u16) -> Host {
        Host::new(format!("127.0.0.1:{port}").parse().unwrap(), 1, 0)
    }

    #[test]
    fn the_fifth_consecutive_5xx_notifies_once() {
        let detector = Detector::new("od_unit", OutlierDetection::default());
        let mut events = detector.receiver.lock().unwrap().take().unwrap();
        let host = host(1);
        for _ in 0..4 {
            detector.record(&host, Outcome::Response(500));
        }
        assert!(events.try_recv().is_err(), "4 errors are not 5");
        detector.record(&host, Outcome::Response(200));
        for _ in 0..4 {
            detector.record(&host, Outcome::Response(500));
        }
        assert!(events.try_recv().is_err(), "a success resets the count");
        detector.record(&host, Outcome::ConnectFailure);
        match events.try_recv() {
            Ok(Event::Consecutive(key, EjectionType::Consecutive5xx)) => {
                assert_eq!(key, host_key(&host))
            }
            other => panic!("expected a consecutive 5xx event, got {other:?}"),
        }
        detector.record(&host, Outcome::Response(500));
        assert!(events.try_recv().is_err(), "only the threshold notifies");
    }

    #[test]
    fn gateway_failures_count_apart_and_split_mode_counts_local_origin() {
        let detector = Detector::new(
            "od_unit_split",
            OutlierDetection {
                split_external_local_origin_errors: true,
                consecutive_local_origin_failure: 2,
                ..OutlierDetection::default()
            },
        );
        let mut events = detector.receiver.lock().unwrap().take().unwrap();
        let host = host(2);
        detector.record(&host, Outcome::Timeout);
        detector.record(&host, Outcome::ConnectFailure);
        assert!(matches!(
            events.try_recv(),
            Ok(Event::Consecutive(
                _,
                EjectionType::ConsecutiveLocalOriginFailure
            ))
        ));
        assert_eq!(host.outlier.consecutive_5xx.load(Ordering::Relaxed), 0);
        for _ in 0..5 {
            detector.record(&host, Outcome::Response(503));
        }
        let kinds: Vec<EjectionType> = std::iter::from_fn(|| match events.try_recv() {
            Ok(Event::Consecutive(_, kind)) => Some(kind),
            _ => None,
        })
        .collect();
        assert_eq!(
            kinds,
            [
                EjectionType::ConsecutiveGatewayFailure,
                EjectionType::Consecutive5xx
            ]
        );
    }

    #[test]
    fn success_rate_threshold_is_mean_minus_factor_stdev() {
        let (mean, threshold) = success_rate_threshold(&[100.0, 100.0, 100.0, 100.0, 50.0], 1.9);
        assert!((mean - 90.0).abs() < 1e-9);
        // stdev = 20
        assert!((threshold - (90.0 - 38.0)).abs() < 1e-9, "{threshold}");
    }
}
