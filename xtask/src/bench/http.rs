//! The HTTP scenarios: keel against Envoy, HAProxy and nginx, and the backend reached
//! directly, all in the same run.
//!
//! | scenario     | client → proxy | proxy → backend | load |
//! | ------------ | -------------- | --------------- | ---- |
//! | `h1`         | HTTP/1.1 keep-alive | HTTP/1.1 | `wrk -t2 -c50` |
//! | `h2c`        | h2c            | HTTP/1.1        | `h2load -c50 -m10` |
//! | `grpc`       | h2c, gRPC unary | h2c            | `h2load -c50 -m10` with a gRPC message and headers |
//! | `h1-newconn` | HTTP/1.1, `Connection: close` | HTTP/1.1 (pooled) | `wrk -t2 -c50` |
//! | `latency`    | HTTP/1.1 keep-alive | HTTP/1.1 | `bench-client latency`: fixed rate, open loop |
//! | `large`      | HTTP/1.1 keep-alive, 1 MiB responses | HTTP/1.1 | `wrk -t2 -c16` |
//!
//! Every proxy gets the same work: one listener, one route, one cluster with one
//! endpoint (`bench-backend`), no access log, one worker. The proxies run pinned to
//! core 0; the load generator and the backend to core 1. Repetitions interleave the
//! peers (A B C … then … C B A), and the report gives medians and spreads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use super::httpload::{self, LoadResult};
use super::peers::{self, HttpRoute, Protocol};
use super::procs::{self, Service};
use super::report::{self, CpuTimes, Table};
use super::sandbox::Sandbox;
use super::stats::Summary;
use super::usage;
use super::{svg, Context};

/// Core of the proxies.
pub const PROXY_CORE: u32 = 0;
/// Core of the load generators and the backend.
pub const LOAD_CORE: u32 = 1;

/// The backend, inside the namespace.
pub const BACKEND: &str = "127.0.0.1:9000";

/// How long a service gets to come up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// A failed-request share above this fails the bench.
const MAX_ERROR_SHARE: f64 = 0.01;

/// Body size of the default response and of the gRPC messages.
pub const SMALL_BODY: usize = 64;

/// Default request rate of the `latency` scenario: about a tenth of what Envoy, the
/// slowest peer, serves with one worker, so every peer runs far from saturation.
const DEFAULT_RATE: f64 = 2000.0;

/// The gRPC method h2load calls.
const GRPC_PATH: &str = "/bench.Bench/Unary";

/// Who serves the requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// No proxy: the client talks to the backend.
    Direct,
    /// keel, `--concurrency 1`.
    Keel,
    /// Envoy 1.40, `--concurrency 1`.
    Envoy,
    /// HAProxy, `nbthread 1`.
    Haproxy,
    /// nginx, one process.
    Nginx,
}

impl Peer {
    /// Name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Direct => "direct",
            Peer::Keel => "keel",
            Peer::Envoy => "envoy",
            Peer::Haproxy => "haproxy",
            Peer::Nginx => "nginx",
        }
    }

    /// Where it listens.
    pub fn address(self) -> SocketAddr {
        let port = match self {
            Peer::Direct => return BACKEND.parse().expect("constant address"),
            Peer::Keel => 9001,
            Peer::Envoy => 9002,
            Peer::Haproxy => 9003,
            Peer::Nginx => 9004,
        };
        SocketAddr::from(([127, 0, 0, 1], port))
    }
}

/// The load of a scenario.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// wrk, closed loop.
    Wrk {
        threads: u32,
        connections: u32,
        path: &'static str,
        /// `Connection: close` on every request: a new connection each.
        close: bool,
    },
    /// h2load, closed loop.
    H2load {
        clients: u32,
        streams: u32,
        grpc: bool,
    },
    /// `bench-client latency`, open loop at a fixed rate.
    Rate { rate: f64, connections: usize },
}

/// One HTTP scenario.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Scenario name.
    pub name: &'static str,
    /// One line.
    pub description: &'static str,
    downstream: Protocol,
    upstream: Protocol,
    load: Load,
    /// keel's goal: at least this many times the best peer's req/s.
    target: Option<f64>,
}

/// The scenarios, in running order.
pub const SPECS: &[Spec] = &[
    Spec {
        name: "h1",
        description: "HTTP/1.1 keep-alive, 64-byte responses, wrk -t2 -c50",
        downstream: Protocol::Http1,
        upstream: Protocol::Http1,
        load: Load::Wrk {
            threads: 2,
            connections: 50,
            path: "/",
            close: false,
        },
        target: Some(1.2),
    },
    Spec {
        name: "h2c",
        description: "h2c to the proxy (HTTP/1.1 to the backend), 64-byte responses, h2load -c50 -m10",
        downstream: Protocol::H2c,
        upstream: Protocol::Http1,
        load: Load::H2load {
            clients: 50,
            streams: 10,
            grpc: false,
        },
        target: Some(1.1),
    },
    Spec {
        name: "grpc",
        description: "gRPC unary over h2c on both sides, 64-byte messages, h2load -c50 -m10",
        downstream: Protocol::H2c,
        upstream: Protocol::H2c,
        load: Load::H2load {
            clients: 50,
            streams: 10,
            grpc: true,
        },
        target: None,
    },
    Spec {
        name: "h1-newconn",
        description: "HTTP/1.1 with a new client connection per request (Connection: close), wrk -t2 -c50",
        downstream: Protocol::Http1,
        upstream: Protocol::Http1,
        load: Load::Wrk {
            threads: 2,
            connections: 50,
            path: "/",
            close: true,
        },
        target: None,
    },
    Spec {
        name: "latency",
        description: "HTTP/1.1 at a fixed rate (default 2,000 req/s, `--rate`) over 50 connections (open loop, latency from the intended send time)",
        downstream: Protocol::Http1,
        upstream: Protocol::Http1,
        load: Load::Rate {
            rate: DEFAULT_RATE,
            connections: 50,
        },
        target: None,
    },
    Spec {
        name: "large",
        description: "HTTP/1.1 keep-alive, 1 MiB responses, wrk -t2 -c16",
        downstream: Protocol::Http1,
        upstream: Protocol::Http1,
        load: Load::Wrk {
            threads: 2,
            connections: 16,
            path: "/bytes/1048576",
            close: false,
        },
        target: None,
    },
];

/// Durations and counts of one run.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Repetitions of each peer.
    pub repetitions: usize,
    /// Measured seconds of one sample.
    pub seconds: u32,
    /// Unrecorded seconds per peer before the first repetition (0: none).
    pub warmup: u32,
}

impl Settings {
    /// Quick (CI) or full.
    pub fn new(ctx: &Context) -> Settings {
        let mut settings = if ctx.quick {
            Settings {
                repetitions: 1,
                seconds: 1,
                warmup: 0,
            }
        } else {
            Settings {
                repetitions: 3,
                seconds: 5,
                warmup: 1,
            }
        };
        if let Some(n) = ctx.repetitions {
            settings.repetitions = n.max(1);
        }
        if let Some(s) = ctx.seconds {
            settings.seconds = s.max(1);
        }
        settings
    }
}

/// One measurement of one peer.
#[derive(Debug, Clone)]
struct Sample {
    load: LoadResult,
    /// CPU seconds the proxy used during the sample (none for direct).
    cpu_seconds: Option<f64>,
    /// Peak resident bytes of the proxy during the sample.
    peak_rss: Option<u64>,
}

impl Sample {
    fn cpu_us_per_request(&self) -> Option<f64> {
        self.cpu_seconds
            .map(|cpu| cpu * 1e6 / self.load.requests.max(1) as f64)
    }
}

/// A running peer: its process (none for direct).
struct Running {
    peer: Peer,
    pid: Option<u32>,
}

/// Entry points of the scenarios (for the scenario table in `bench.rs`).
pub fn h1(ctx: &Context) -> Result<()> {
    run(ctx, &SPECS[0])
}
/// `h2c`.
pub fn h2c(ctx: &Context) -> Result<()> {
    run(ctx, &SPECS[1])
}
/// `grpc`.
pub fn grpc(ctx: &Context) -> Result<()> {
    run(ctx, &SPECS[2])
}
/// `h1-newconn`.
pub fn h1_newconn(ctx: &Context) -> Result<()> {
    run(ctx, &SPECS[3])
}
/// `latency`.
pub fn latency(ctx: &Context) -> Result<()> {
    let mut spec = SPECS[4];
    if let (Some(rate), Load::Rate { connections, .. }) = (ctx.rate, spec.load) {
        spec.load = Load::Rate {
            rate: rate.clamp(1.0, 1e6),
            connections,
        };
    }
    run(ctx, &spec)
}
/// `large`.
pub fn large(ctx: &Context) -> Result<()> {
    run(ctx, &SPECS[5])
}

/// The file name stem of a scenario's results: `h1`, or `h1-quick` for `--quick`, so a
/// quick run never overwrites a full run's results.
pub fn result_stem(name: &str, quick: bool) -> String {
    if quick {
        format!("{name}-quick")
    } else {
        name.to_string()
    }
}

/// Runs one HTTP scenario.
fn run(ctx: &Context, spec: &Spec) -> Result<()> {
    let settings = Settings::new(ctx);
    let stem = result_stem(spec.name, ctx.quick);
    let dir = ctx.out_dir.join(&stem);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let load_before = report::load_average()?;
    let cpu_before = CpuTimes::now()?;
    let started = Instant::now();
    let sandbox = Sandbox::create()?;
    let mut services: Vec<Service> = Vec::new();
    let route = |peer: Peer| HttpRoute {
        listen: peer.address(),
        backend: BACKEND.parse().expect("constant address"),
        downstream: spec.downstream,
        upstream: spec.upstream,
        grpc: matches!(spec.load, Load::H2load { grpc: true, .. }),
        long_requests: false,
    };
    services.push(start_backend(ctx, &sandbox, &dir)?);
    sandbox.wait_listening(
        &[Peer::Direct.address().port()],
        &mut services,
        STARTUP_TIMEOUT,
    )?;
    let mut running = vec![Running {
        peer: Peer::Direct,
        pid: None,
    }];
    let mut skipped = Vec::new();
    for peer in [Peer::Keel, Peer::Envoy, Peer::Haproxy, Peer::Nginx] {
        match start_peer(ctx, &sandbox, &dir, peer, &route(peer))? {
            Started::Running(service) => {
                running.push(Running {
                    peer,
                    pid: Some(service.pid()),
                });
                services.push(service);
                sandbox.wait_listening(&[peer.address().port()], &mut services, STARTUP_TIMEOUT)?;
            }
            Started::Skipped(reason) => {
                println!("[bench] {} skipped: {reason}", peer.name());
                skipped.push((peer, reason));
            }
        }
    }
    let prepared = prepare_load(spec, &dir)?;

    if settings.warmup > 0 {
        for r in &running {
            let label = format!("{}-warmup", r.peer.name());
            run_load(
                ctx,
                &sandbox,
                &dir,
                spec,
                &prepared,
                r.peer,
                settings.warmup,
                &label,
            )
            .with_context(|| format!("{}: warm-up", r.peer.name()))?;
        }
    }
    let mut samples: Vec<Vec<Sample>> = running.iter().map(|_| Vec::new()).collect();
    let mut retries: Vec<String> = Vec::new();
    for repetition in 1..=settings.repetitions {
        let mut order: Vec<usize> = (0..running.len()).collect();
        if repetition % 2 == 0 {
            order.reverse();
        }
        for index in order {
            procs::check_interrupted()?;
            let r = &running[index];
            let label = format!("{}-{repetition}", r.peer.name());
            let measured = measure(
                ctx,
                &sandbox,
                &dir,
                spec,
                &prepared,
                r,
                settings.seconds,
                &label,
            );
            let sample = match measured {
                Ok(sample) => sample,
                // A shared machine can stall a proxy for a moment (seen once in a quick
                // run: a second with almost no request served). Measure once more and
                // keep the failure in the record; a broken peer fails twice.
                Err(error) => {
                    println!(
                        "[bench] {}/{label} failed ({error:#}); measuring it once more",
                        spec.name
                    );
                    retries.push(format!("{label}: {error:#}"));
                    let label = format!("{label}-retry");
                    measure(
                        ctx,
                        &sandbox,
                        &dir,
                        spec,
                        &prepared,
                        r,
                        settings.seconds,
                        &label,
                    )
                    .with_context(|| {
                        format!(
                            "peer `{}`, repetition {repetition}, measured twice (first: {error:#})",
                            r.peer.name()
                        )
                    })?
                }
            };
            println!(
                "[bench] {}/{label}: {:.0} req/s, p50 {} p99 {}{}{}",
                spec.name,
                sample.load.requests_per_second,
                ms(sample.load.p50_us),
                ms(sample.load.p99_us),
                sample
                    .cpu_us_per_request()
                    .map_or(String::new(), |c| format!(", {c:.1} µs CPU/request")),
                sample.peak_rss.map_or(String::new(), |b| format!(
                    ", peak RSS {} MiB",
                    usage::mib(b as f64)
                )),
            );
            samples[index].push(sample);
            for service in &mut services {
                service
                    .check_running()
                    .with_context(|| format!("after measuring `{label}`"))?;
            }
        }
    }
    drop(services);
    drop(sandbox);
    let results = Results {
        spec,
        settings,
        peers: running.iter().map(|r| r.peer).collect(),
        samples,
        skipped,
        retries,
        load_before,
        load_after: report::load_average()?,
        others_during: CpuTimes::now()?.others_since(&cpu_before),
        duration: started.elapsed(),
    };
    let table = results.table();
    let notes = results.notes();
    let mut written = report::publish(
        &ctx.out_dir,
        &stem,
        &table,
        &notes,
        &results.to_json(ctx.quick),
    )?;
    if matches!(spec.load, Load::Rate { .. }) {
        let svg_path = ctx.out_dir.join(format!("{stem}.svg"));
        std::fs::write(&svg_path, results.plot())
            .with_context(|| format!("writing {}", svg_path.display()))?;
        written.push(svg_path);
    }
    report::announce(&written);
    Ok(())
}

/// `bench-backend` on the load core, in the namespace.
pub fn start_backend(ctx: &Context, sandbox: &Sandbox, dir: &Path) -> Result<Service> {
    Service::start(
        "backend",
        sandbox
            .in_netns(LOAD_CORE, &ctx.bench_backend)
            .args(["--listen", BACKEND])
            .args(["--body-bytes", &SMALL_BODY.to_string()]),
        dir,
    )
}

/// Creates a sandbox and starts `bench-backend` in it; returns once it listens. The
/// backend comes in a `Vec` for [`Sandbox::wait_listening`] and the scenarios' checks.
pub fn sandbox_with_backend(ctx: &Context, dir: &Path) -> Result<(Sandbox, Vec<Service>)> {
    let sandbox = Sandbox::create()?;
    let mut backend = vec![start_backend(ctx, &sandbox, dir)?];
    sandbox.wait_listening(
        &[Peer::Direct.address().port()],
        &mut backend,
        Duration::from_secs(20),
    )?;
    Ok((sandbox, backend))
}

/// A peer that started, or why it did not.
pub enum Started {
    /// Its process.
    Running(Service),
    /// Why it is skipped (an optional peer that is not installed).
    Skipped(String),
}

/// Writes the peer's configuration for `route` into `dir` and starts it on the proxy
/// core, in the namespace. Only Envoy is optional.
pub fn start_peer(
    ctx: &Context,
    sandbox: &Sandbox,
    dir: &Path,
    peer: Peer,
    route: &HttpRoute,
) -> Result<Started> {
    start_peer_under(ctx, sandbox, dir, peer, route, &[])
}

/// [`start_peer`], the proxy run by `wrapper` (a program and its arguments, e.g.
/// valgrind) when it is not empty.
pub fn start_peer_under(
    ctx: &Context,
    sandbox: &Sandbox,
    dir: &Path,
    peer: Peer,
    route: &HttpRoute,
    wrapper: &[std::ffi::OsString],
) -> Result<Started> {
    let launch = |program: &std::ffi::OsStr| -> std::process::Command {
        match wrapper.split_first() {
            None => sandbox.in_netns(PROXY_CORE, program),
            Some((first, rest)) => {
                let mut command = sandbox.in_netns(PROXY_CORE, first);
                command.args(rest).arg(program);
                command
            }
        }
    };
    let write = |name: &str, text: String| -> Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    let service = match peer {
        Peer::Direct => bail!("direct has no proxy to start"),
        Peer::Keel => {
            let config = write("keel.yaml", peers::envoy_http_bootstrap(route))?;
            let mut service = Service::start(
                "keel",
                launch(ctx.keel.as_os_str()).arg("-c").arg(&config).args([
                    "--concurrency",
                    "1",
                    "--log-level",
                    "warn",
                ]),
                dir,
            )?;
            service.check_running()?;
            service
        }
        Peer::Envoy => {
            let envoy = match &ctx.envoy {
                Ok(envoy) => envoy,
                Err(reason) => return Ok(Started::Skipped(reason.clone())),
            };
            let config = write("envoy.yaml", peers::envoy_http_bootstrap(route))?;
            Service::start(
                "envoy",
                launch(envoy.as_os_str()).arg("-c").arg(&config).args([
                    "--concurrency",
                    "1",
                    "--disable-hot-restart",
                    "--log-level",
                    "warn",
                ]),
                dir,
            )?
        }
        Peer::Haproxy => {
            let maxconn = peers::haproxy_max_connections(nofile_limit());
            let config = write("haproxy.cfg", peers::haproxy_http_config(route, maxconn))?;
            Service::start(
                "haproxy",
                launch("haproxy".as_ref()).arg("-db").arg("-f").arg(&config),
                dir,
            )?
        }
        Peer::Nginx => {
            for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
                let path = dir.join("nginx-tmp").join(sub);
                std::fs::create_dir_all(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
            }
            let config = write("nginx.conf", peers::nginx_config(route, dir))?;
            Service::start(
                "nginx",
                launch("nginx".as_ref())
                    .arg("-p")
                    .arg(dir)
                    .arg("-e")
                    .arg(dir.join("nginx-error.log"))
                    .arg("-c")
                    .arg(&config),
                dir,
            )?
        }
    };
    Ok(Started::Running(service))
}

/// This process's RLIMIT_NOFILE (soft), which the proxies inherit.
pub fn nofile_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft)
}

/// Files a load needs, written once per scenario.
struct Prepared {
    wrk_script: PathBuf,
    grpc_message: PathBuf,
}

fn prepare_load(spec: &Spec, dir: &Path) -> Result<Prepared> {
    let prepared = Prepared {
        wrk_script: dir.join("wrk-results.lua"),
        grpc_message: dir.join("grpc-request.bin"),
    };
    std::fs::write(&prepared.wrk_script, httpload::WRK_SCRIPT)
        .with_context(|| format!("writing {}", prepared.wrk_script.display()))?;
    if let Load::H2load { grpc: true, .. } = spec.load {
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(SMALL_BODY as u32).to_be_bytes());
        frame.extend(std::iter::repeat_n(b'k', SMALL_BODY));
        std::fs::write(&prepared.grpc_message, frame)
            .with_context(|| format!("writing {}", prepared.grpc_message.display()))?;
    }
    Ok(prepared)
}

/// One recorded sample: the load, with the proxy's CPU time and peak RSS around it.
#[allow(clippy::too_many_arguments)]
fn measure(
    ctx: &Context,
    sandbox: &Sandbox,
    dir: &Path,
    spec: &Spec,
    prepared: &Prepared,
    running: &Running,
    seconds: u32,
    label: &str,
) -> Result<Sample> {
    let cpu_before = match running.pid {
        Some(pid) => {
            usage::reset_peak(pid)?;
            Some(usage::cpu_seconds(pid)?)
        }
        None => None,
    };
    let load = run_load(
        ctx,
        sandbox,
        dir,
        spec,
        prepared,
        running.peer,
        seconds,
        label,
    )?;
    let (cpu_seconds, peak_rss) = match (running.pid, cpu_before) {
        (Some(pid), Some(before)) => (
            Some(usage::cpu_seconds(pid)? - before),
            Some(usage::memory(pid)?.peak),
        ),
        _ => (None, None),
    };
    if load.requests == 0 || load.error_share() > MAX_ERROR_SHARE {
        bail!(
            "{} request(s) completed, {} failed ({})",
            load.requests,
            load.errors,
            load.first_error.as_deref().unwrap_or("no detail")
        );
    }
    Ok(Sample {
        load,
        cpu_seconds,
        peak_rss,
    })
}

/// Runs the scenario's load generator against `peer` for `seconds`.
#[allow(clippy::too_many_arguments)]
fn run_load(
    ctx: &Context,
    sandbox: &Sandbox,
    dir: &Path,
    spec: &Spec,
    prepared: &Prepared,
    peer: Peer,
    seconds: u32,
    label: &str,
) -> Result<LoadResult> {
    let target = peer.address();
    let timeout = Duration::from_secs(u64::from(seconds) + 30);
    match spec.load {
        Load::Wrk {
            threads,
            connections,
            path,
            close,
        } => {
            let mut wrk = sandbox.in_netns(LOAD_CORE, "wrk");
            wrk.args([
                format!("-t{threads}"),
                format!("-c{connections}"),
                format!("-d{seconds}s"),
            ])
            .args(["--timeout", "5s", "-s"])
            .arg(&prepared.wrk_script);
            if close {
                wrk.args(["-H", "Connection: close"]);
            }
            wrk.arg(format!("http://{target}{path}"));
            let finished = procs::run_bounded(&format!("wrk-{label}"), &mut wrk, dir, timeout)?;
            httpload::parse_wrk(&finished.stdout).with_context(|| {
                format!(
                    "wrk exited with {}; its stderr ends with:\n{}",
                    finished.status,
                    finished.stderr_tail()
                )
            })
        }
        Load::H2load {
            clients,
            streams,
            grpc,
        } => {
            let log = dir.join(format!("h2load-{label}.log"));
            let mut h2load = sandbox.in_netns(LOAD_CORE, "h2load");
            h2load
                .args([
                    format!("-c{clients}"),
                    format!("-m{streams}"),
                    "-t1".to_string(),
                    format!("-D{seconds}"),
                ])
                .arg(format!("--log-file={}", log.display()));
            let path = if grpc {
                h2load.arg("-d").arg(&prepared.grpc_message).args([
                    "-H",
                    "content-type: application/grpc",
                    "-H",
                    "te: trailers",
                ]);
                GRPC_PATH
            } else {
                "/"
            };
            h2load.arg(format!("http://{target}{path}"));
            let finished =
                procs::run_bounded(&format!("h2load-{label}"), &mut h2load, dir, timeout)?;
            let mut result = httpload::parse_h2load(&finished.stdout).with_context(|| {
                format!(
                    "h2load exited with {}; its stderr ends with:\n{}",
                    finished.status,
                    finished.stderr_tail()
                )
            })?;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            httpload::set_percentiles(&mut result, httpload::h2load_log_latencies(&text));
            // The log is large and served its purpose.
            let _ = std::fs::remove_file(&log);
            Ok(result)
        }
        Load::Rate { rate, connections } => {
            let mut client = sandbox.in_netns(LOAD_CORE, &ctx.bench_client);
            client
                .args(["latency", "--target", &target.to_string()])
                .args(["--rate", &rate.to_string()])
                .args(["--connections", &connections.to_string()])
                .args(["--seconds", &seconds.to_string()])
                .args(["--warmup", "0.5"]);
            let finished =
                procs::run_bounded(&format!("latency-{label}"), &mut client, dir, timeout)?;
            httpload::parse_rate_client(&finished.stdout).with_context(|| {
                format!(
                    "bench-client exited with {}; its stderr ends with:\n{}",
                    finished.status,
                    finished.stderr_tail()
                )
            })
        }
    }
}

/// Microseconds as milliseconds with three decimals.
fn ms(us: f64) -> String {
    format!("{:.3}", us / 1000.0)
}

/// Everything measured in one scenario.
struct Results<'a> {
    spec: &'a Spec,
    settings: Settings,
    peers: Vec<Peer>,
    samples: Vec<Vec<Sample>>,
    skipped: Vec<(Peer, String)>,
    /// Samples that failed once and were measured again.
    retries: Vec<String>,
    load_before: [f64; 3],
    load_after: [f64; 3],
    others_during: f64,
    duration: Duration,
}

/// Medians of one peer.
struct PeerSummary {
    rps: Summary,
    p50: Summary,
    p99: Summary,
    p99_9: Summary,
    cpu_us_per_request: Option<Summary>,
    peak_rss: Option<Summary>,
}

impl Results<'_> {
    fn is_latency(&self) -> bool {
        matches!(self.spec.load, Load::Rate { .. })
    }

    fn summary(&self, index: usize) -> PeerSummary {
        let samples = &self.samples[index];
        let of = |f: &dyn Fn(&Sample) -> f64| {
            Summary::of(&samples.iter().map(f).collect::<Vec<_>>()).expect("at least one sample")
        };
        let optional = |f: &dyn Fn(&Sample) -> Option<f64>| {
            Summary::of(&samples.iter().filter_map(f).collect::<Vec<_>>())
        };
        PeerSummary {
            rps: of(&|s| s.load.requests_per_second),
            p50: of(&|s| s.load.p50_us),
            p99: of(&|s| s.load.p99_us),
            p99_9: of(&|s| s.load.p99_9_us),
            cpu_us_per_request: optional(&|s| s.cpu_us_per_request()),
            peak_rss: optional(&|s| s.peak_rss.map(|b| b as f64)),
        }
    }

    fn keel_index(&self) -> Option<usize> {
        self.peers.iter().position(|p| *p == Peer::Keel)
    }

    /// keel's value divided by the peer's: req/s (or p99 for the latency scenario).
    fn keel_ratio(&self, index: usize) -> Option<f64> {
        let keel = self.summary(self.keel_index()?);
        let peer = self.summary(index);
        if self.is_latency() {
            keel.p99.ratio_to(&peer.p99)
        } else {
            keel.rps.ratio_to(&peer.rps)
        }
    }

    /// keel's requests per CPU-second divided by the peer's (the peer's CPU per
    /// request over keel's): steadier than req/s when other work shares the cores.
    fn keel_efficiency_ratio(&self, index: usize) -> Option<f64> {
        let keel = self.summary(self.keel_index()?).cpu_us_per_request?;
        let peer = self.summary(index).cpu_us_per_request?;
        peer.ratio_to(&keel)
    }

    fn table(&self) -> String {
        let ratio_title = if self.is_latency() {
            "keel ÷ peer (p99)"
        } else {
            "keel ÷ peer (req/s)"
        };
        let mut table = Table::new(&[
            "peer",
            "req/s",
            "spread",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "peak RSS MiB",
            "CPU µs/req",
            ratio_title,
            "keel ÷ peer (req/CPU-s)",
        ]);
        for (index, peer) in self.peers.iter().enumerate() {
            let s = self.summary(index);
            table.row(vec![
                peer.name().to_string(),
                format!("{:.0}", s.rps.median),
                report::percent(s.rps.spread()),
                ms(s.p50.median),
                ms(s.p99.median),
                ms(s.p99_9.median),
                s.peak_rss
                    .as_ref()
                    .map_or("–".into(), |m| usage::mib(m.median)),
                s.cpu_us_per_request
                    .as_ref()
                    .map_or("–".into(), |c| format!("{:.1}", c.median)),
                report::ratio(self.keel_ratio(index)),
                report::ratio(self.keel_efficiency_ratio(index)),
            ]);
        }
        table.to_markdown()
    }

    /// The best proxy other than keel (and not direct) by req/s, with its median.
    fn best_peer(&self) -> Option<(Peer, f64)> {
        self.peers
            .iter()
            .enumerate()
            .filter(|(_, p)| !matches!(p, Peer::Direct | Peer::Keel))
            .map(|(i, p)| (*p, self.summary(i).rps.median))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    fn notes(&self) -> String {
        let s = &self.settings;
        let mut notes = format!(
            "Scenario `{}`: {}.\n\
             Median of {} repetition(s) of {} s{}, peers interleaved (A B C … then … C B A); spread = (max − min) / median \
             of req/s. Latency percentiles are medians over repetitions{}.\n\
             Layout: each proxy one worker pinned to core {PROXY_CORE} (keel and Envoy `--concurrency 1`, HAProxy \
             `nbthread 1`, nginx one process); load generator and bench-backend pinned to core {LOAD_CORE}; all \
             traffic on loopback in a private network namespace. Every proxy: one listener, one route, one cluster \
             with one endpoint, no access log. CPU µs/req: CPU time of the proxy process (all threads) over \
             completed requests; req/CPU-s ratio: keel's requests per CPU-second over the peer's \
             (steadier than req/s when other work shares the cores); peak RSS: VmHWM of the proxy during the sample.\n\
             Load average before: {:.2} {:.2} {:.2}; after: {:.2} {:.2} {:.2}; other work on the machine during the \
             run: {:.2} cores; run took {:.0} s.\n",
            self.spec.name,
            self.spec.description,
            s.repetitions,
            s.seconds,
            if s.warmup > 0 {
                format!(" after a {} s warm-up per peer", s.warmup)
            } else {
                String::new()
            },
            if self.is_latency() {
                " (open loop: corrected for coordinated omission)"
            } else {
                ""
            },
            self.load_before[0],
            self.load_before[1],
            self.load_before[2],
            self.load_after[0],
            self.load_after[1],
            self.load_after[2],
            self.others_during,
            self.duration.as_secs_f64(),
        );
        for (peer, reason) in &self.skipped {
            notes.push_str(&format!("- {}: skipped ({reason})\n", peer.name()));
        }
        for retry in &self.retries {
            notes.push_str(&format!("- measured again after a failure: {retry}\n"));
        }
        if let (Some(target), Some(keel), Some((best, best_rps))) =
            (self.spec.target, self.keel_index(), self.best_peer())
        {
            let keel_rps = self.summary(keel).rps.median;
            let ratio = keel_rps / best_rps.max(1e-9);
            notes.push_str(&format!(
                "Goal: keel ≥ {target}× the best peer ({}, {best_rps:.0} req/s): {} ({ratio:.3}×).\n",
                best.name(),
                if ratio >= target { "met" } else { "NOT met" }
            ));
        }
        if let Some(bytes) = self.samples[0].first().and_then(|s| s.load.bytes) {
            if bytes > 0 && matches!(self.spec.load, Load::Wrk { path, .. } if path != "/") {
                let rates: Vec<String> = self
                    .peers
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let gbits: Vec<f64> = self.samples[i]
                            .iter()
                            .map(|s| {
                                s.load.bytes.unwrap_or(0) as f64 * 8.0
                                    / s.load.seconds.max(1e-9)
                                    / 1e9
                            })
                            .collect();
                        let median = Summary::of(&gbits).map_or(0.0, |s| s.median);
                        format!("{} {median:.2}", p.name())
                    })
                    .collect();
                notes.push_str(&format!(
                    "Response throughput, Gbit/s: {}.\n",
                    rates.join(", ")
                ));
            }
        }
        notes
    }

    /// The latency plot: per peer, the repetition with the median p99.
    fn plot(&self) -> String {
        let series: Vec<(String, Vec<[f64; 2]>)> = self
            .peers
            .iter()
            .enumerate()
            .map(|(i, peer)| {
                let mut by_p99: Vec<&Sample> = self.samples[i].iter().collect();
                by_p99.sort_by(|a, b| a.load.p99_us.total_cmp(&b.load.p99_us));
                let median = by_p99[by_p99.len() / 2];
                (peer.name().to_string(), median.load.spectrum.clone())
            })
            .collect();
        let title = match self.spec.load {
            Load::Rate { rate, connections } => format!(
                "HTTP/1.1 at {rate:.0} req/s over {connections} connections, open loop: latency by percentile"
            ),
            _ => format!("{}: latency by percentile", self.spec.name),
        };
        svg::latency_plot(&title, &series)
    }

    fn to_json(&self, quick: bool) -> Value {
        let peers: Vec<Value> = self
            .peers
            .iter()
            .enumerate()
            .map(|(i, peer)| {
                let s = self.summary(i);
                json!({
                    "name": peer.name(),
                    "address": peer.address().to_string(),
                    "requests_per_second": s.rps.to_json(),
                    "p50_us": s.p50.to_json(),
                    "p99_us": s.p99.to_json(),
                    "p99_9_us": s.p99_9.to_json(),
                    "cpu_us_per_request": s.cpu_us_per_request.map(|c| c.to_json()),
                    "peak_rss_bytes": s.peak_rss.map(|m| m.to_json()),
                    "keel_ratio": self.keel_ratio(i),
                    "keel_requests_per_cpu_second_ratio": self.keel_efficiency_ratio(i),
                    "samples": self.samples[i].iter().map(|sample| json!({
                        "load": sample.load.to_json(),
                        "cpu_seconds": sample.cpu_seconds,
                        "peak_rss_bytes": sample.peak_rss,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let unix_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        json!({
            "scenario": self.spec.name,
            "description": self.spec.description,
            "quick": quick,
            "unix_time": unix_time,
            "duration_seconds": self.duration.as_secs_f64(),
            "keel_ratio_of": if self.is_latency() { "p99 latency" } else { "requests per second" },
            "goal_ratio_to_best_peer": self.spec.target,
            "layout": {
                "proxy_core": PROXY_CORE,
                "load_core": LOAD_CORE,
                "workers_per_proxy": 1,
                "traffic": "network namespace with loopback only",
            },
            "load": format!("{:?}", self.spec.load),
            "rate": match self.spec.load { Load::Rate { rate, .. } => Some(rate), _ => None },
            "settings": {
                "repetitions": self.settings.repetitions,
                "seconds": self.settings.seconds,
                "warmup_seconds": self.settings.warmup,
            },
            "machine": report::machine(),
            "load_average_before": self.load_before,
            "load_average_after": self.load_after,
            "other_work_cores_during": self.others_during,
            "peers": peers,
            "skipped": self.skipped.iter().map(|(p, r)| json!({"name": p.name(), "reason": r})).collect::<Vec<_>>(),
            "retried_after_failure": self.retries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rps: f64, p99: f64, cpu: Option<f64>) -> Sample {
        Sample {
            load: LoadResult {
                requests: (rps * 5.0) as u64,
                seconds: 5.0,
                requests_per_second: rps,
                p50_us: p99 / 2.0,
                p99_us: p99,
                p99_9_us: p99 * 2.0,
                ..LoadResult::default()
            },
            cpu_seconds: cpu,
            peak_rss: cpu.map(|_| 10 * 1024 * 1024),
        }
    }

    #[test]
    fn reports_medians_ratios_and_the_goal() {
        let results = Results {
            spec: &SPECS[0],
            settings: Settings {
                repetitions: 3,
                seconds: 5,
                warmup: 1,
            },
            peers: vec![Peer::Direct, Peer::Keel, Peer::Haproxy, Peer::Nginx],
            samples: vec![
                vec![sample(100_000.0, 900.0, None); 3],
                vec![
                    sample(90_000.0, 1000.0, Some(5.0)),
                    sample(100_000.0, 1000.0, Some(5.0)),
                    sample(110_000.0, 1000.0, Some(5.0)),
                ],
                vec![sample(80_000.0, 1000.0, Some(5.0)); 3],
                vec![sample(50_000.0, 1000.0, Some(5.0)); 3],
            ],
            skipped: vec![(Peer::Envoy, "not installed".into())],
            retries: vec![],
            load_before: [0.0; 3],
            load_after: [0.0; 3],
            others_during: 0.0,
            duration: Duration::from_secs(60),
        };
        let table = results.table();
        assert!(table.contains("| keel "), "{table}");
        assert!(table.contains("1.250×"), "keel 100k / haproxy 80k: {table}");
        assert!(table.contains("2.000×"), "keel 100k / nginx 50k: {table}");
        assert!(table.contains("20.0 %"), "spread of keel: {table}");
        assert_eq!(
            results.keel_efficiency_ratio(2),
            Some(1.25),
            "5 CPU-s over 500k requests (keel) vs over 400k (haproxy)"
        );
        assert_eq!(
            results.keel_efficiency_ratio(0),
            None,
            "direct has no proxy"
        );
        assert!(table.contains("10.0"), "peak RSS MiB: {table}");
        let notes = results.notes();
        assert!(notes.contains("met (1.250×)"), "{notes}");
        assert!(notes.contains("envoy: skipped (not installed)"), "{notes}");
        let json = results.to_json(false);
        assert_eq!(json["peers"][1]["name"], "keel");
        assert_eq!(json["peers"][1]["requests_per_second"]["median"], 100_000.0);
        assert_eq!(json["peers"][2]["keel_ratio"], 1.25);
        assert!(json["peers"][0]["cpu_us_per_request"].is_null());
    }

    #[test]
    fn quick_results_have_their_own_files() {
        assert_eq!(result_stem("h1", false), "h1");
        assert_eq!(result_stem("h1", true), "h1-quick");
    }
}
