//! Scenario `memory`: what a proxy keeps resident when idle, per idle HTTP/1.1
//! connection and per open HTTP/2 stream.
//!
//! For each peer (keel, Envoy, HAProxy, nginx), twice with a freshly started proxy:
//! 1. idle RSS one second after start; then `bench-client hold-h1` opens N HTTP/1.1
//!    connections through the proxy, makes one request on each and keeps them idle;
//!    RSS again → bytes per connection = (RSS − idle RSS) / N;
//! 2. idle RSS; then `bench-client hold-h2` opens C h2c connections with S requests
//!    each to the backend's `/hold/MS` (the backend holds the responses), and waits
//!    until the backend holds all C × S; RSS again → bytes per stream. The proxies speak
//!    h2c to the backend here (nginx through `grpc_pass`, its only HTTP/2 upstream), so
//!    a stream costs a downstream and an upstream stream, not an upstream connection.
//!
//! RSS is `VmRSS` of the proxy process. Everything is pinned as in the HTTP scenarios.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use super::http::{self, Peer, Started, BACKEND, LOAD_CORE};
use super::peers::{HttpRoute, Protocol};
use super::procs::{self, Service};
use super::report::{self, Table};
use super::sandbox::Sandbox;
use super::stats::Summary;
use super::usage;
use super::Context;

/// How long the holders may take to open everything.
const OPEN_TIMEOUT: Duration = Duration::from_secs(120);

/// keel's goal for idle RSS.
const IDLE_RSS_GOAL: f64 = 15.0 * 1024.0 * 1024.0;

/// Counts of one run.
#[derive(Debug, Clone, Copy)]
struct Settings {
    repetitions: usize,
    h1_connections: usize,
    h2_connections: usize,
    h2_streams: usize,
}

impl Settings {
    fn new(ctx: &Context) -> Settings {
        let mut settings = if ctx.quick {
            Settings {
                repetitions: 1,
                h1_connections: 1_000,
                h2_connections: 10,
                h2_streams: 100,
            }
        } else {
            Settings {
                repetitions: 3,
                h1_connections: 10_000,
                h2_connections: 100,
                h2_streams: 100,
            }
        };
        if let Some(n) = ctx.repetitions {
            settings.repetitions = n.max(1);
        }
        // A proxy holds one descriptor per idle connection, and the holder as many: stay
        // under the descriptor limit (the table names the count used).
        let room = usize::try_from(http::nofile_limit().saturating_sub(500)).unwrap_or(usize::MAX);
        if settings.h1_connections > room {
            println!(
                "[bench] memory: RLIMIT_NOFILE allows {room} idle connections, not {}",
                settings.h1_connections
            );
            settings.h1_connections = room.max(1);
        }
        settings
    }

    fn streams(&self) -> usize {
        self.h2_connections * self.h2_streams
    }
}

/// One repetition of one peer, in bytes.
#[derive(Debug, Clone, Default)]
struct Sample {
    idle: f64,
    with_connections: f64,
    idle_before_streams: f64,
    with_streams: f64,
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Result<()> {
    let settings = Settings::new(ctx);
    let stem = http::result_stem("memory", ctx.quick);
    let dir = ctx.out_dir.join(&stem);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let load_before = report::load_average()?;
    let started = Instant::now();
    let (sandbox, mut backend) = http::sandbox_with_backend(ctx, &dir)?;
    let mut peers = vec![Peer::Keel];
    let mut skipped = Vec::new();
    match &ctx.envoy {
        Ok(_) => peers.push(Peer::Envoy),
        Err(reason) => skipped.push((Peer::Envoy, reason.clone())),
    }
    let haproxy_room = super::peers::haproxy_max_connections(http::nofile_limit());
    if haproxy_room >= settings.h1_connections as u64 + 100 {
        peers.push(Peer::Haproxy);
    } else {
        skipped.push((
            Peer::Haproxy,
            format!(
                "RLIMIT_NOFILE {} lets HAProxy accept {haproxy_room} connections, fewer than {} (it reserves two \
                 descriptors per connection, and this machine's hard limit cannot be raised)",
                http::nofile_limit(),
                settings.h1_connections
            ),
        ));
    }
    peers.push(Peer::Nginx);
    let mut samples: Vec<Vec<Sample>> = peers.iter().map(|_| Vec::new()).collect();
    for repetition in 1..=settings.repetitions {
        let mut order: Vec<usize> = (0..peers.len()).collect();
        if repetition % 2 == 0 {
            order.reverse();
        }
        for index in order {
            let peer = peers[index];
            let label = format!("{}-{repetition}", peer.name());
            let sample = measure(ctx, &sandbox, &dir, &mut backend, peer, &settings, &label)
                .with_context(|| format!("peer `{}`, repetition {repetition}", peer.name()))?;
            println!(
                "[bench] memory/{label}: idle {} MiB, {} h1 connections {} MiB, {} h2 streams {} MiB",
                usage::mib(sample.idle),
                settings.h1_connections,
                usage::mib(sample.with_connections),
                settings.streams(),
                usage::mib(sample.with_streams)
            );
            samples[index].push(sample);
        }
    }
    drop(backend);
    drop(sandbox);
    let results = Results {
        settings,
        peers,
        samples,
        skipped,
        load_before,
        load_after: report::load_average()?,
        duration: started.elapsed(),
    };
    let table = results.table();
    let notes = results.notes();
    report::announce(&report::publish(
        &ctx.out_dir,
        &stem,
        &table,
        &notes,
        &results.to_json(ctx.quick),
    )?);
    Ok(())
}

/// Both phases of one peer, each with a fresh proxy.
fn measure(
    ctx: &Context,
    sandbox: &Sandbox,
    dir: &Path,
    backend: &mut [Service],
    peer: Peer,
    settings: &Settings,
    label: &str,
) -> Result<Sample> {
    let mut sample = Sample::default();
    // Phase 1: idle, then idle HTTP/1.1 connections.
    let route = HttpRoute {
        listen: peer.address(),
        backend: BACKEND.parse().expect("constant address"),
        downstream: Protocol::Http1,
        upstream: Protocol::Http1,
        grpc: false,
        long_requests: true,
    };
    {
        let (proxy, pid) = start(ctx, sandbox, dir, peer, &route, backend)?;
        sample.idle = usage::memory(pid)?.rss as f64;
        let mut holder = Service::start(
            &format!("hold-h1-{label}"),
            sandbox
                .in_netns(LOAD_CORE, &ctx.bench_client)
                .args(["hold-h1", "--target", &peer.address().to_string()])
                .args(["--connections", &settings.h1_connections.to_string()])
                .args(["--seconds", "300"]),
            dir,
        )?;
        holder
            .wait_for_log("ready", OPEN_TIMEOUT)
            .context("opening idle HTTP/1.1 connections")?;
        procs::sleep(Duration::from_millis(500))?;
        sample.with_connections = usage::memory(pid)?.rss as f64;
        drop(holder);
        drop(proxy);
    }
    // Phase 2: open HTTP/2 streams held by the backend.
    let route = HttpRoute {
        downstream: Protocol::H2c,
        upstream: Protocol::H2c,
        grpc: peer == Peer::Nginx,
        ..route
    };
    {
        let (proxy, pid) = start(ctx, sandbox, dir, peer, &route, backend)?;
        sample.idle_before_streams = usage::memory(pid)?.rss as f64;
        let mut holder = Service::start(
            &format!("hold-h2-{label}"),
            sandbox
                .in_netns(LOAD_CORE, &ctx.bench_client)
                .args(["hold-h2", "--target", &peer.address().to_string()])
                .args(["--connections", &settings.h2_connections.to_string()])
                .args(["--streams", &settings.h2_streams.to_string()])
                .args(["--hold-ms", "240000", "--seconds", "300"])
                .args(["--backend", BACKEND]),
            dir,
        )?;
        holder
            .wait_for_log("ready", OPEN_TIMEOUT)
            .context("opening HTTP/2 streams held by the backend")?;
        procs::sleep(Duration::from_millis(500))?;
        sample.with_streams = usage::memory(pid)?.rss as f64;
        drop(holder);
        drop(proxy);
    }
    // Held requests end when the proxy's upstream connections close; let the backend
    // notice before the next peer.
    procs::sleep(Duration::from_millis(300))?;
    Ok(sample)
}

/// Starts `peer` for `route`, waits until it listens and settles; (service, pid).
fn start(
    ctx: &Context,
    sandbox: &Sandbox,
    dir: &Path,
    peer: Peer,
    route: &HttpRoute,
    backend: &mut [Service],
) -> Result<(Service, u32)> {
    let Started::Running(proxy) = http::start_peer(ctx, sandbox, dir, peer, route)? else {
        anyhow::bail!("{} could not be started", peer.name());
    };
    let pid = proxy.pid();
    let mut services = vec![proxy];
    sandbox.wait_listening(
        &[peer.address().port()],
        &mut services,
        Duration::from_secs(20),
    )?;
    for service in backend.iter_mut() {
        service.check_running()?;
    }
    procs::sleep(Duration::from_secs(1))?;
    let proxy = services.pop().expect("one service");
    Ok((proxy, pid))
}

struct Results {
    settings: Settings,
    peers: Vec<Peer>,
    samples: Vec<Vec<Sample>>,
    skipped: Vec<(Peer, String)>,
    load_before: [f64; 3],
    load_after: [f64; 3],
    duration: Duration,
}

/// Medians of one peer: idle RSS, RSS with connections, bytes per connection, RSS with
/// streams, bytes per stream.
struct PeerSummary {
    idle: Summary,
    with_connections: Summary,
    per_connection: Summary,
    with_streams: Summary,
    per_stream: Summary,
}

impl Results {
    fn summary(&self, index: usize) -> PeerSummary {
        let samples = &self.samples[index];
        let of = |f: &dyn Fn(&Sample) -> f64| {
            Summary::of(&samples.iter().map(f).collect::<Vec<_>>()).expect("a sample")
        };
        let connections = self.settings.h1_connections as f64;
        let streams = self.settings.streams() as f64;
        PeerSummary {
            idle: of(&|s| s.idle),
            with_connections: of(&|s| s.with_connections),
            per_connection: of(&|s| (s.with_connections - s.idle) / connections),
            with_streams: of(&|s| s.with_streams),
            per_stream: of(&|s| (s.with_streams - s.idle_before_streams) / streams),
        }
    }

    fn table(&self) -> String {
        let s = &self.settings;
        let with_connections = format!("RSS, {} h1 conns MiB", s.h1_connections);
        let with_streams = format!("RSS, {} h2 streams MiB", s.streams());
        let mut table = Table::new(&[
            "peer",
            "idle RSS MiB",
            &with_connections,
            "bytes/conn",
            &with_streams,
            "bytes/stream",
        ]);
        for (index, peer) in self.peers.iter().enumerate() {
            let m = self.summary(index);
            table.row(vec![
                peer.name().to_string(),
                usage::mib(m.idle.median),
                usage::mib(m.with_connections.median),
                format!("{:.0}", m.per_connection.median),
                usage::mib(m.with_streams.median),
                format!("{:.0}", m.per_stream.median),
            ]);
        }
        table.to_markdown()
    }

    fn notes(&self) -> String {
        let s = &self.settings;
        let mut notes = format!(
            "Median of {} repetition(s); each phase with a freshly started proxy (one worker, pinned to core 0). \
             RSS = VmRSS of the proxy process. Idle: 1 s after start. h1: {} connections, one request each, then \
             idle. h2: {} h2c connections × {} streams held open by the backend (h2c upstream; nginx via \
             grpc_pass). bytes/conn and bytes/stream: growth over the idle RSS of the same start, divided by the \
             count. keel and Envoy get circuit-breaker thresholds of 1,000,000 (the defaults, 1024, would \
             refuse the streams). Load average before: {:.2} {:.2} {:.2}; after: {:.2} {:.2} \
             {:.2}; run took {:.0} s.\n",
            s.repetitions,
            s.h1_connections,
            s.h2_connections,
            s.h2_streams,
            self.load_before[0],
            self.load_before[1],
            self.load_before[2],
            self.load_after[0],
            self.load_after[1],
            self.load_after[2],
            self.duration.as_secs_f64(),
        );
        if let Some(keel) = self.peers.iter().position(|p| *p == Peer::Keel) {
            let idle = self.summary(keel).idle.median;
            notes.push_str(&format!(
                "Goal: keel idle RSS ≤ 15 MiB: {} ({} MiB).\n",
                if idle <= IDLE_RSS_GOAL {
                    "met"
                } else {
                    "NOT met"
                },
                usage::mib(idle)
            ));
        }
        for (peer, reason) in &self.skipped {
            notes.push_str(&format!("- {}: skipped ({reason})\n", peer.name()));
        }
        notes
    }

    fn to_json(&self, quick: bool) -> Value {
        let peers: Vec<Value> = self
            .peers
            .iter()
            .enumerate()
            .map(|(index, peer)| {
                let m = self.summary(index);
                json!({
                    "name": peer.name(),
                    "idle_rss_bytes": m.idle.to_json(),
                    "rss_with_h1_connections_bytes": m.with_connections.to_json(),
                    "bytes_per_h1_connection": m.per_connection.to_json(),
                    "rss_with_h2_streams_bytes": m.with_streams.to_json(),
                    "bytes_per_h2_stream": m.per_stream.to_json(),
                })
            })
            .collect();
        let unix_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        json!({
            "scenario": "memory",
            "quick": quick,
            "unix_time": unix_time,
            "duration_seconds": self.duration.as_secs_f64(),
            "settings": {
                "repetitions": self.settings.repetitions,
                "h1_connections": self.settings.h1_connections,
                "h2_connections": self.settings.h2_connections,
                "h2_streams_per_connection": self.settings.h2_streams,
            },
            "machine": report::machine(),
            "load_average_before": self.load_before,
            "load_average_after": self.load_after,
            "idle_rss_goal_bytes": IDLE_RSS_GOAL,
            "peers": peers,
            "skipped": self.skipped.iter().map(|(p, r)| json!({"name": p.name(), "reason": r})).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_bytes_per_connection_and_stream() {
        let mib = 1024.0 * 1024.0;
        let results = Results {
            settings: Settings {
                repetitions: 1,
                h1_connections: 1000,
                h2_connections: 10,
                h2_streams: 100,
            },
            peers: vec![Peer::Keel],
            samples: vec![vec![Sample {
                idle: 8.0 * mib,
                with_connections: 8.0 * mib + 1000.0 * 4096.0,
                idle_before_streams: 8.0 * mib,
                with_streams: 8.0 * mib + 1000.0 * 2048.0,
            }]],
            skipped: vec![],
            load_before: [0.0; 3],
            load_after: [0.0; 3],
            duration: Duration::from_secs(1),
        };
        let table = results.table();
        assert!(table.contains(" 4096 |"), "{table}");
        assert!(table.contains(" 2048 |"), "{table}");
        assert!(table.contains("RSS, 1000 h2 streams MiB"), "{table}");
        assert!(results.notes().contains("met (8.0 MiB)"));
        assert_eq!(
            results.to_json(true)["peers"][0]["bytes_per_h1_connection"]["median"],
            4096.0
        );
    }
}
