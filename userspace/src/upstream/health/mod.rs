//! Active health checking (`health_checks`) and the thread that runs it with the
//! outlier detectors.
//!
//! # Scheduling
//!
//! Health checking never runs on the request path: [`start`] spawns one thread,
//! `keel-health`, with its own single-threaded tokio runtime. On it, each cluster
//! with a health check has one scheduler task ([`run_cluster`]) and each cluster
//! with outlier detection one detector task ([`super::outlier::run`]). A scheduler
//! keeps, per host, the counters of Envoy's state machine and the kept connection, and
//! one timer heap of `(due, host)`: it sleeps until the earliest due check, starts
//! every check that is due (up to [`MAX_IN_FLIGHT`] at once, each bounded by
//! `timeout`), and when a check ends, updates the host's flags and schedules its next
//! check after `interval` (+ jitter; `no_traffic_interval` while the cluster has
//! never opened a connection for traffic, as Envoy does). No task or timer per host:
//! 10,000 hosts are 10,000 heap entries and a map.
//!
//! # From a flag to the picker
//!
//! A check result sets or clears `FAILED_ACTIVE_HC` (and clears
//! `PENDING_ACTIVE_HC`, sets/clears `ACTIVE_HC_TIMEOUT`) on the shared
//! [`Host`]. When a host's healthiness changed, the scheduler calls
//! [`ClusterUpstream::health_changed`] once for all the results it handled in that
//! wake-up: the picker is rebuilt over the same hosts, off the request path, and
//! swapped in whole; requests that already loaded the old set finish with it.
//!
//! # Following the host set
//!
//! The scheduler re-reads [`ClusterUpstream::hosts`] every time it wakes up and at
//! least every [`RESYNC`]: a host in the set is keyed by its `Arc<Host>` (so DNS
//! replacing the list with new `Host`s starts fresh state), new hosts are checked
//! at once (plus `initial_jitter`), removed hosts are forgotten (a check in flight
//! for one is ignored when it ends).
//!
//! # Envoy's state machine
//!
//! Hosts of a health-checked cluster start with `FAILED_ACTIVE_HC` (hosts added
//! later also with `PENDING_ACTIVE_HC`) and leave it at their first passing check.
//! A healthy host becomes unhealthy after `unhealthy_threshold` failures in a row,
//! or at once for an HTTP status outside `expected_statuses` (and not in
//! `retriable_statuses`) or a gRPC status other than SERVING; an unhealthy host
//! comes back after `healthy_threshold` passes in a row. Stats are Envoy's, under
//! `cluster.<name>.health_check.`.

mod probe;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::outlier::{self, Detector};
use super::{fast_random, ClusterUpstream, HealthFlags, Host, Upstreams};
use crate::model::{self, health::HealthCheck};
use crate::observe::stats::{self, Counter, Gauge};

pub use probe::Failure;
use probe::{Kept, Probe};

/// Checks of one cluster that may run at the same time; more wait for a slot.
pub const MAX_IN_FLIGHT: usize = 2048;

/// The longest a scheduler goes without re-reading its cluster's hosts.
const RESYNC: Duration = Duration::from_secs(1);

/// Why health checking could not start.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The thread or its runtime could not be created.
    #[error("health checking: cannot start the keel-health thread: {0}")]
    Thread(std::io::Error),
}

/// A cluster's health-checking and outlier-detection parts, as [`ClusterUpstream`]
/// holds them.
#[derive(Debug)]
pub struct ClusterHealth {
    /// The active health check, if configured.
    pub check: Option<HealthCheck>,
    /// `cluster.<name>.health_check.*`, when a check is configured.
    pub stats: Option<HealthCheckStats>,
    /// The outlier detector, if configured.
    pub outlier: Option<Arc<Detector>>,
}

impl ClusterHealth {
    /// The parts `cluster` configures. Its first hosts start out of rotation until
    /// their first check passes (`FAILED_ACTIVE_HC`), as in Envoy.
    pub fn new(cluster: &model::Cluster, hosts: &[Arc<Host>]) -> ClusterHealth {
        let check = cluster.health_checks.first().cloned();
        if check.is_some() {
            for host in hosts {
                host.health.set(HealthFlags::FAILED_ACTIVE_HC);
            }
        }
        ClusterHealth {
            stats: check.as_ref().map(|_| HealthCheckStats::new(&cluster.name)),
            check,
            outlier: cluster
                .outlier_detection
                .clone()
                .map(|config| Arc::new(Detector::new(&cluster.name, config))),
        }
    }

    /// A new host set is about to be published by discovery: hosts that were not in
    /// the old set start unhealthy and pending their first check when the cluster is
    /// health-checked (Envoy's `/failed_active_hc /pending_active_hc`).
    pub fn adopt(&self, old: &[Arc<Host>], new: &[Arc<Host>]) {
        if self.check.is_some() {
            let known: std::collections::HashSet<*const Host> =
                old.iter().map(Arc::as_ptr).collect();
            for host in new {
                if !known.contains(&Arc::as_ptr(host)) {
                    host.health
                        .set(HealthFlags::FAILED_ACTIVE_HC | HealthFlags::PENDING_ACTIVE_HC);
                }
            }
        }
    }
}

/// `cluster.<name>.health_check.*`, Envoy's names.
#[derive(Debug)]
pub struct HealthCheckStats {
    /// `attempt`.
    pub attempt: Counter,
    /// `success`.
    pub success: Counter,
    /// `failure`.
    pub failure: Counter,
    /// `network_failure`.
    pub network_failure: Counter,
    /// `passive_failure`.
    pub passive_failure: Counter,
    /// `verify_cluster`.
    pub verify_cluster: Counter,
    /// `healthy`: hosts that passed health checking.
    pub healthy: Gauge,
    /// `degraded`.
    pub degraded: Gauge,
}

impl HealthCheckStats {
    fn new(cluster: &str) -> HealthCheckStats {
        let prefix = format!("cluster.{cluster}.health_check.");
        let store = stats::global();
        let counter = |name: &str| store.counter(&format!("{prefix}{name}"));
        let gauge = |name: &str| store.gauge(&format!("{prefix}{name}"));
        HealthCheckStats {
            attempt: counter("attempt"),
            success: counter("success"),
            failure: counter("failure"),
            network_failure: counter("network_failure"),
            passive_failure: counter("passive_failure"),
            verify_cluster: counter("verify_cluster"),
            healthy: gauge("healthy"),
            degraded: gauge("degraded"),
        }
    }
}

/// The running health checkers and outlier detectors. Dropping this stops them and
/// joins their thread.
#[derive(Debug)]
pub struct HealthCheckers {
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    clusters: usize,
    first_round: Arc<AtomicUsize>,
}

impl HealthCheckers {
    /// Clusters with a health check or outlier detection being run.
    pub fn clusters(&self) -> usize {
        self.clusters
    }

    /// Waits until every health-checked cluster has checked each of its first hosts
    /// once (passed, failed or timed out), or `limit` passed; returns whether the
    /// round completed. Envoy does not finish initializing (and its listeners do not
    /// take traffic) before this first round either.
    pub async fn first_round(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.first_round.load(Ordering::Acquire) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

impl Drop for HealthCheckers {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the health-checking thread panicked");
            }
        }
    }
}

/// Starts health checking and outlier detection for every cluster of `upstreams`
/// that configures them, on a thread of their own (`None` when no cluster does).
pub fn start(upstreams: &Arc<Upstreams>) -> Result<Option<HealthCheckers>, HealthError> {
    let clusters: Vec<Arc<ClusterUpstream>> = upstreams
        .iter()
        .filter(|c| c.health.check.is_some() || c.health.outlier.is_some())
        .cloned()
        .collect();
    if clusters.is_empty() {
        return Ok(None);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(HealthError::Thread)?;
    let (stop, stopped) = watch::channel(false);
    let count = clusters.len();
    let first_round = Arc::new(AtomicUsize::new(
        clusters.iter().filter(|c| c.health.check.is_some()).count(),
    ));
    for cluster in clusters {
        if cluster.health.check.is_some() {
            runtime.spawn(run_cluster(
                Arc::clone(&cluster),
                stopped.clone(),
                Arc::clone(&first_round),
            ));
        }
        if cluster.health.outlier.is_some() {
            runtime.spawn(outlier::run(Arc::clone(&cluster), stopped.clone()));
        }
    }
    let mut until_stopped = stopped;
    let thread = std::thread::Builder::new()
        .name("keel-health".into())
        .spawn(move || {
            runtime.block_on(async {
                let _ = until_stopped.wait_for(|s| *s).await;
            });
            // Dropping the runtime cancels the schedulers and checks in flight.
        })
        .map_err(HealthError::Thread)?;
    tracing::info!(clusters = count, "health checking started");
    Ok(Some(HealthCheckers {
        stop,
        thread: Some(thread),
        clusters: count,
        first_round,
    }))
}

/// Per host: Envoy's session state.
#[derive(Debug)]
struct Session {
    host: Arc<Host>,
    /// Bumped when the host leaves the set, so that stale timer entries are skipped.
    generation: u64,
    num_healthy: u32,
    num_unhealthy: u32,
    first_check: bool,
    /// In the set the scheduler started with (counted by the first round).
    initial: bool,
    in_flight: bool,
    kept: Option<Kept>,
}

/// Envoy's `HealthTransition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transition {
    Unchanged,
    Changed,
    ChangePending,
}

/// One cluster's scheduler: runs until `stop` turns true. Decrements `first_round`
/// once every host of the first set has been checked once.
async fn run_cluster(
    cluster: Arc<ClusterUpstream>,
    mut stop: watch::Receiver<bool>,
    first_round: Arc<AtomicUsize>,
) {
    let (Some(config), Some(stats)) = (cluster.health.check.clone(), cluster.health.stats.as_ref())
    else {
        first_round.fetch_sub(1, Ordering::AcqRel);
        return;
    };
    let mut first_round = Some(first_round);
    let probe = Arc::new(Probe::new(
        config.checker.clone(),
        cluster.name(),
        config.reuse_connection,
    ));
    let mut scheduler = Scheduler {
        cluster: &cluster,
        config: &config,
        stats,
        probe,
        sessions: HashMap::new(),
        timers: BinaryHeap::new(),
        ready: VecDeque::new(),
        checks: JoinSet::new(),
        set: None,
        next_generation: 0,
        first_sync: true,
        first_round_left: cluster.hosts().hosts.len(),
    };
    tracing::debug!(cluster = %cluster.name(), checker = config.checker.kind(), "health checking");
    loop {
        scheduler.sync(Instant::now());
        scheduler.start_due(Instant::now());
        let wake = scheduler
            .timers
            .peek()
            .map(|Reverse((due, _, _))| *due)
            .unwrap_or_else(|| Instant::now() + RESYNC)
            .min(Instant::now() + RESYNC);
        let mut changed = false;
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep_until(wake) => {}
            Some(done) = scheduler.checks.join_next(), if !scheduler.checks.is_empty() => {
                if let Ok(done) = done {
                    changed |= scheduler.finish(done);
                }
                // Handle every other check that is done too, then rebuild once.
                while let Some(done) = scheduler.checks.try_join_next() {
                    if let Ok(done) = done {
                        changed |= scheduler.finish(done);
                    }
                }
            }
        }
        if changed {
            cluster.health_changed();
        }
        if scheduler.first_round_left == 0 {
            if let Some(round) = first_round.take() {
                round.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// What a finished check hands back.
struct Done {
    key: usize,
    generation: u64,
    outcome: Result<(), Failure>,
    kept: Option<Kept>,
}

struct Scheduler<'a> {
    cluster: &'a ClusterUpstream,
    config: &'a HealthCheck,
    stats: &'a HealthCheckStats,
    probe: Arc<Probe>,
    sessions: HashMap<usize, Session>,
    /// (due, host key, generation), earliest first.
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    /// Hosts due but waiting for a slot.
    ready: VecDeque<(usize, u64)>,
    checks: JoinSet<Done>,
    set: Option<Arc<super::HostSet>>,
    next_generation: u64,
    first_sync: bool,
    /// Hosts of the first set still waiting for their first result.
    first_round_left: usize,
}

impl Scheduler<'_> {
    /// Follows the cluster's current host set.
    fn sync(&mut self, now: Instant) {
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
        let mut sessions = HashMap::with_capacity(set.hosts.len());
        for host in &set.hosts {
            let key = Arc::as_ptr(host) as usize;
            let session = match self.sessions.remove(&key) {
                Some(session) => session,
                None => {
                    self.next_generation += 1;
                    let generation = self.next_generation;
                    if !self.first_sync {
                        // Added by discovery after start-up: pending its first check.
                        host.health
                            .set(HealthFlags::FAILED_ACTIVE_HC | HealthFlags::PENDING_ACTIVE_HC);
                    }
                    let due = now + random_up_to(self.config.initial_jitter);
                    self.timers.push(Reverse((due, key, generation)));
                    Session {
                        host: Arc::clone(host),
                        generation,
                        num_healthy: 0,
                        num_unhealthy: 0,
                        first_check: true,
                        initial: self.first_sync,
                        in_flight: false,
                        kept: None,
                    }
                }
            };
            sessions.insert(key, session);
        }
        // Hosts that left: the healthy gauge forgets them, the first round stops
        // waiting for them.
        for session in self.sessions.values() {
            if session.initial && session.first_check {
                self.first_round_left = self.first_round_left.saturating_sub(1);
            }
            if !session.host.health.has(HealthFlags::FAILED_ACTIVE_HC) {
                self.stats.healthy.dec();
            }
        }
        self.sessions = sessions;
        self.first_sync = false;
    }

    /// Starts the checks that are due, as slots allow.
    fn start_due(&mut self, now: Instant) {
        while let Some(Reverse((due, key, generation))) = self.timers.peek().copied() {
            if due > now {
                break;
            }
            self.timers.pop();
            self.ready.push_back((key, generation));
        }
        while self.checks.len() < MAX_IN_FLIGHT {
            let Some((key, generation)) = self.ready.pop_front() else {
                break;
            };
            let Some(session) = self.sessions.get_mut(&key) else {
                continue;
            };
            if session.generation != generation || session.in_flight {
                continue;
            }
            session.in_flight = true;
            self.stats.attempt.inc();
            let probe = Arc::clone(&self.probe);
            let address = session.host.address;
            let kept = session.kept.take();
            let timeout = self.config.timeout;
            self.checks.spawn(async move {
                let (outcome, kept) =
                    match tokio::time::timeout(timeout, probe.check(address, kept)).await {
                        Ok(result) => result,
                        Err(_) => (Err(Failure::Timeout), None),
                    };
                Done {
                    key,
                    generation,
                    outcome,
                    kept,
                }
            });
        }
    }

    /// Applies a check's result and schedules the host's next check; returns whether
    /// the host's healthiness changed.
    fn finish(&mut self, done: Done) -> bool {
        let Some(session) = self.sessions.get_mut(&done.key) else {
            return false;
        };
        if session.generation != done.generation {
            return false;
        }
        session.in_flight = false;
        session.kept = done.kept;
        if session.initial && session.first_check {
            self.first_round_left = self.first_round_left.saturating_sub(1);
        }
        let (transition, healthy, changed) = apply(session, self.config, self.stats, done.outcome);
        if healthy {
            if let Some(detector) = &self.cluster.health.outlier {
                detector.health_check_passed(&session.host);
            }
        }
        let has_traffic = self.cluster.stats.upstream_cx_total.value() > 0;
        let next = Instant::now() + next_interval(self.config, healthy, transition, has_traffic);
        self.timers
            .push(Reverse((next, done.key, session.generation)));
        changed
    }
}

/// Envoy's `handleSuccess` / `handleFailure` for one result: updates the counters,
/// flags and stats; returns the transition, whether the check passed, and whether
/// the host's healthiness (in or out of rotation) changed.
fn apply(
    session: &mut Session,
    config: &HealthCheck,
    stats: &HealthCheckStats,
    outcome: Result<(), Failure>,
) -> (Transition, bool, bool) {
    let health = &session.host.health;
    let mut changed = false;
    let transition = match outcome {
        Ok(()) => {
            session.num_unhealthy = 0;
            let mut transition = Transition::Unchanged;
            if health.has(HealthFlags::FAILED_ACTIVE_HC) {
                session.num_healthy += 1;
                if session.num_healthy >= config.healthy_threshold || session.first_check {
                    changed |= health.clear(HealthFlags::FAILED_ACTIVE_HC);
                    stats.healthy.inc();
                    transition = Transition::Changed;
                } else {
                    transition = Transition::ChangePending;
                }
            }
            changed |=
                health.clear(HealthFlags::PENDING_ACTIVE_HC | HealthFlags::ACTIVE_HC_TIMEOUT);
            stats.success.inc();
            transition
        }
        Err(failure) => {
            session.num_healthy = 0;
            let mut transition = Transition::Unchanged;
            if !health.has(HealthFlags::FAILED_ACTIVE_HC) {
                session.num_unhealthy += 1;
                let at_once = matches!(failure, Failure::Active { retriable: false });
                if at_once || session.num_unhealthy >= config.unhealthy_threshold {
                    changed |= health.set(HealthFlags::FAILED_ACTIVE_HC);
                    stats.healthy.dec();
                    transition = Transition::Changed;
                    tracing::info!(
                        host = %session.host.address,
                        ?failure,
                        "health check: host out of rotation"
                    );
                } else {
                    transition = Transition::ChangePending;
                }
            }
            if failure == Failure::Timeout {
                health.set(HealthFlags::ACTIVE_HC_TIMEOUT);
            } else {
                health.clear(HealthFlags::ACTIVE_HC_TIMEOUT);
            }
            changed |= health.clear(HealthFlags::PENDING_ACTIVE_HC);
            stats.failure.inc();
            if matches!(failure, Failure::Network | Failure::Timeout) {
                stats.network_failure.inc();
            }
            transition
        }
    };
    session.first_check = false;
    (transition, outcome.is_ok(), changed)
}

/// Envoy's `HealthCheckerImplBase::interval`: the wait before the next check.
fn next_interval(
    config: &HealthCheck,
    healthy: bool,
    transition: Transition,
    has_traffic: bool,
) -> Duration {
    let edge = transition == Transition::Changed;
    let base = if !has_traffic {
        if healthy && !edge {
            config
                .no_traffic_healthy_interval
                .unwrap_or(config.no_traffic_interval)
        } else {
            config.no_traffic_interval
        }
    } else if healthy {
        match (edge, config.healthy_edge_interval) {
            (true, Some(edge)) => edge,
            _ => config.interval,
        }
    } else {
        let unhealthy = config.unhealthy_interval.unwrap_or(config.interval);
        match (edge, config.unhealthy_edge_interval) {
            (true, Some(edge)) => edge,
            _ => unhealthy,
        }
    };
    let mut wait = base;
    if config.interval_jitter_percent > 0 {
        let share = base.as_millis() as u64 * u64::from(config.interval_jitter_percent) / 100;
        wait += random_up_to(Duration::from_millis(share));
    }
    wait + random_up_to(config.interval_jitter)
}

/// A random duration in `[0, max)` (zero when `max` is zero), millisecond steps.
fn random_up_to(max: Duration) -> Duration {
    let millis = max.as_millis() as u64;
    if millis == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(fast_random() % millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::health::{Checker, TcpCheck};

    fn config() -> HealthCheck {
        HealthCheck {
            timeout: Duration::from_secs(1),
            interval: Duration::from_secs(5),
            initial_jitter: Duration::ZERO,
            interval_jitter: Duration::ZERO,
            interval_jitter_percent: 0,
            unhealthy_threshold: 3,
            healthy_threshold: 2,
            no_traffic_interval: Duration::from_secs(60),
            no_traffic_healthy_interval: None,
            unhealthy_interval: Some(Duration::from_secs(7)),
            unhealthy_edge_interval: Some(Duration::from_secs(1)),
            healthy_edge_interval: None,
            reuse_connection: true,
            checker: Checker::Tcp(TcpCheck {
                send: Vec::new(),
                receive: Vec::new(),
            }),
        }
    }

    fn session() -> Session {
        let host = Arc::new(Host::new("127.0.0.1:1".parse().unwrap(), 1, 0));
        host.health.set(HealthFlags::FAILED_ACTIVE_HC);
        Session {
            host,
            generation: 1,
            num_healthy: 0,
            num_unhealthy: 0,
            first_check: true,
            initial: true,
            in_flight: false,
            kept: None,
        }
    }

    #[test]
    fn envoys_state_machine() {
        let config = config();
        let stats = HealthCheckStats::new("hc_state_machine");
        let mut s = session();
        // The first pass brings a new host in, whatever healthy_threshold says.
        let (t, _, changed) = apply(&mut s, &config, &stats, Ok(()));
        assert_eq!((t, changed), (Transition::Changed, true));
        assert!(s.host.is_healthy());
        // Network failures count up to unhealthy_threshold.
        for _ in 0..2 {
            let (t, _, changed) = apply(&mut s, &config, &stats, Err(Failure::Network));
            assert_eq!((t, changed), (Transition::ChangePending, false));
        }
        let (t, _, changed) = apply(&mut s, &config, &stats, Err(Failure::Timeout));
        assert_eq!((t, changed), (Transition::Changed, true));
        assert_eq!(
            s.host.health.get(),
            HealthFlags::FAILED_ACTIVE_HC | HealthFlags::ACTIVE_HC_TIMEOUT
        );
        // Back after healthy_threshold passes.
        let (t, _, _) = apply(&mut s, &config, &stats, Ok(()));
        assert_eq!(t, Transition::ChangePending);
        assert!(!s.host.is_healthy());
        let (t, _, changed) = apply(&mut s, &config, &stats, Ok(()));
        assert_eq!((t, changed), (Transition::Changed, true));
        assert_eq!(s.host.health.get(), 0);
        // An unexpected HTTP status fails at once; a retriable one counts.
        apply(
            &mut s,
            &config,
            &stats,
            Err(Failure::Active { retriable: true }),
        );
        assert!(s.host.is_healthy());
        let (t, _, changed) = apply(
            &mut s,
            &config,
            &stats,
            Err(Failure::Active { retriable: false }),
        );
        assert_eq!((t, changed), (Transition::Changed, true));
        assert_eq!(
            stats.attempt.value(),
            0,
            "attempts are counted when a check starts"
        );
        assert_eq!(stats.success.value(), 3);
        assert_eq!(stats.failure.value(), 5);
        assert_eq!(stats.network_failure.value(), 3);
    }

    #[test]
    fn hosts_start_failed_and_discovered_hosts_pending() {
        let cluster = model::Cluster {
            name: "hc_adopt".into(),
            endpoints: vec![model::Endpoint {
                address: "127.0.0.1:1".parse().unwrap(),
                weight: 1,
            }],
            health_checks: vec![config()],
            ..model::Cluster::default()
        };
        let upstreams = Upstreams::new(&[cluster]);
        let cluster = upstreams.get("hc_adopt").unwrap();
        let first = Arc::clone(&cluster.hosts().hosts[0]);
        assert_eq!(
            first.health.get(),
            HealthFlags::FAILED_ACTIVE_HC,
            "as Envoy 1.40 at start-up"
        );
        first.health.clear(HealthFlags::FAILED_ACTIVE_HC);
        let added = Arc::new(Host::new("127.0.0.1:2".parse().unwrap(), 1, 0));
        cluster.set_hosts(vec![Arc::clone(&first), Arc::clone(&added)]);
        assert_eq!(first.health.get(), 0, "a host that stays keeps its health");
        assert_eq!(
            added.health.get(),
            HealthFlags::FAILED_ACTIVE_HC | HealthFlags::PENDING_ACTIVE_HC
        );
        let gauge = |name: &str| {
            stats::global()
                .gauge(&format!("cluster.hc_adopt.{name}"))
                .value()
        };
        assert_eq!(
            (gauge("membership_total"), gauge("membership_healthy")),
            (2, 1)
        );
        // The picker skips the pending host.
        for _ in 0..10 {
            let picked = cluster.pick(&super::super::PickContext::default()).unwrap();
            assert!(Arc::ptr_eq(&picked, &first));
        }
    }

    #[test]
    fn intervals_follow_envoy() {
        let config = config();
        let s = |healthy, t, traffic| next_interval(&config, healthy, t, traffic).as_secs();
        assert_eq!(s(true, Transition::Unchanged, false), 60, "no traffic yet");
        assert_eq!(s(true, Transition::Unchanged, true), 5);
        assert_eq!(s(false, Transition::Changed, true), 1, "unhealthy edge");
        assert_eq!(s(false, Transition::Unchanged, true), 7, "unhealthy");
        let jittered = HealthCheck {
            interval_jitter_percent: 50,
            interval_jitter: Duration::from_secs(1),
            ..config.clone()
        };
        for _ in 0..100 {
            let wait = next_interval(&jittered, true, Transition::Unchanged, true);
            assert!(
                wait >= Duration::from_secs(5) && wait < Duration::from_millis(8500),
                "{wait:?}"
            );
        }
    }
}
