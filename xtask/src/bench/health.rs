//! Scenario `health`: does health checking 10,000 endpoints every second raise the
//! latency of the requests a proxy serves at the same time? (A known weak point of
//! Envoy, whose health checks run on its main thread and, per host, on timers of their
//! own.)
//!
//! | path            | the proxy (one worker, core 0) serves `/` → `app`, and also health-checks |
//! | --------------- | ------------------------------------------------------------------------ |
//! | keel            | nothing else (baseline)                                                  |
//! | keel-hc         | cluster `checked`: N endpoints 127.1.x.y:9000, HTTP check every 1 s       |
//! | envoy, envoy-hc | the same two bootstraps in Envoy (`--concurrency 1`), when it installs   |
//!
//! Everything runs in the bench's network namespace (loopback only). One keel
//! instance on core 1 plays every backend: `app` (127.0.0.1:7000) and the health
//! targets (a listener on 0.0.0.0:9000, which inside the namespace answers every
//! 127.x.y.z:9000), both direct responses. The load is `bench-client latency` (open
//! loop: a fixed rate, 2000 requests/s by default or `--rate`, over 50 connections,
//! latency measured from each request's scheduled start) on core 1 against the
//! proxy's listener, so a stall shows in the percentiles instead of slowing the load.
//!
//! Paths run one at a time (the proxy is started, warmed until every checked host
//! passed its first check, measured, stopped), repetitions interleaved (A B C D A B
//! ...). Per path: p50/p99 latency and requests/s (median over repetitions), health
//! checks per second (from the proxy's `health_check.attempt`), the proxy's CPU (cores
//! busy over the measurement), keel's `keel-health` thread CPU, and resident memory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use super::httpload::{self, LoadResult};
use super::procs::{self, Service};
use super::report::{self, Table};
use super::sandbox::Sandbox;
use super::stats::Summary;
use super::Context;

/// Core of the proxy under test.
const PROXY_CORE: u32 = 0;
/// Core of the load generator and the backends.
const LOAD_CORE: u32 = 1;

/// The backends' listeners.
const APP_BACKEND: &str = "127.0.0.1:7000";
const HEALTH_TARGET_PORT: u16 = 9000;
/// The proxy's listener and admin address.
const PROXY_LISTENER: &str = "127.0.0.1:6000";
const PROXY_ADMIN: &str = "127.0.0.1:6900";
const BACKENDS_ADMIN: &str = "127.0.0.1:7900";

/// How long a service gets to come up, and the checked hosts to pass.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the checked hosts get to pass their first check.
const FIRST_ROUND_TIMEOUT: Duration = Duration::from_secs(90);

/// The load's default rate (requests per second) and connections.
const DEFAULT_RATE: f64 = 2000.0;
const CONNECTIONS: u32 = 50;

/// Durations and sizes of one run.
#[derive(Debug, Clone, Copy)]
struct Settings {
    repetitions: usize,
    /// Measured seconds per repetition.
    seconds: u32,
    /// Requests per second of the load.
    rate: f64,
    /// Endpoints of the health-checked cluster.
    endpoints: usize,
}

impl Settings {
    fn new(ctx: &Context) -> Settings {
        let (repetitions, seconds, endpoints) = if ctx.quick {
            (1, 3, 2_000)
        } else {
            (3, 10, 10_000)
        };
        Settings {
            repetitions: ctx.repetitions.unwrap_or(repetitions).max(1),
            seconds: ctx.seconds.unwrap_or(seconds).max(1),
            rate: ctx.rate.unwrap_or(DEFAULT_RATE).clamp(1.0, 1e6),
            endpoints,
        }
    }
}

/// One proxy configuration to measure.
struct PathSpec {
    name: &'static str,
    /// keel or Envoy.
    program: PathBuf,
    envoy: bool,
    config: PathBuf,
    /// Hosts health-checked (0 for the baselines).
    checked: usize,
}

/// What one repetition of a path measured.
#[derive(Debug, Clone, Default)]
struct Sample {
    p50_us: f64,
    p99_us: f64,
    p99_9_us: f64,
    max_us: f64,
    requests_per_second: f64,
    checks_per_second: f64,
    /// Cores busy (CPU seconds / wall seconds) of the whole proxy.
    proxy_cores: f64,
    /// Cores busy of keel's keel-health thread (None for Envoy).
    health_thread_cores: Option<f64>,
    rss_mib: f64,
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Result<()> {
    let settings = Settings::new(ctx);
    let stem = super::http::result_stem("health", ctx.quick);
    let dir = ctx.out_dir.join(&stem);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let envoy = ctx.envoy.clone();
    if let Err(reason) = &envoy {
        println!("[bench] Envoy is optional and will be skipped: {reason}");
    }
    let started = Instant::now();
    let sandbox = Sandbox::create()?;
    let mut backends: Vec<Service> = Vec::new();
    let backends_config = write(&dir, "backends.yaml", backends_bootstrap())?;
    backends.push(Service::start(
        "backends",
        sandbox
            .in_netns(LOAD_CORE, &ctx.keel)
            .arg("-c")
            .arg(&backends_config)
            .args(["--concurrency", "1", "--log-level", "warn"]),
        &dir,
    )?);
    let app: SocketAddr = APP_BACKEND.parse().expect("constant address");
    sandbox.wait_listening(
        &[app.port(), HEALTH_TARGET_PORT],
        &mut backends,
        STARTUP_TIMEOUT,
    )?;

    let baseline = write(&dir, "proxy.yaml", proxy_bootstrap(0))?;
    let checked = write(&dir, "proxy-hc.yaml", proxy_bootstrap(settings.endpoints))?;
    let mut paths = vec![
        PathSpec {
            name: "keel",
            program: ctx.keel.clone(),
            envoy: false,
            config: baseline.clone(),
            checked: 0,
        },
        PathSpec {
            name: "keel-hc",
            program: ctx.keel.clone(),
            envoy: false,
            config: checked.clone(),
            checked: settings.endpoints,
        },
    ];
    if let Ok(envoy) = &envoy {
        paths.push(PathSpec {
            name: "envoy",
            program: envoy.clone(),
            envoy: true,
            config: baseline,
            checked: 0,
        });
        paths.push(PathSpec {
            name: "envoy-hc",
            program: envoy.clone(),
            envoy: true,
            config: checked,
            checked: settings.endpoints,
        });
    }

    let mut samples: Vec<Vec<Sample>> = paths.iter().map(|_| Vec::new()).collect();
    for repetition in 1..=settings.repetitions {
        for (path, samples) in paths.iter().zip(&mut samples) {
            procs::check_interrupted()?;
            let label = format!("{}-{repetition}", path.name);
            let sample = measure(
                &sandbox,
                &ctx.bench_client,
                path,
                &settings,
                &dir,
                &label,
                &mut backends,
            )
            .with_context(|| format!("path `{}` (repetition {repetition})", path.name))?;
            println!(
                "[bench] {label}: p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs, {:.0} req/s, {:.0} checks/s, proxy {:.2} cores{}, {:.1} MiB",
                sample.p50_us,
                sample.p99_us,
                sample.p99_9_us,
                sample.max_us,
                sample.requests_per_second,
                sample.checks_per_second,
                sample.proxy_cores,
                sample
                    .health_thread_cores
                    .map(|c| format!(" (keel-health {c:.3})"))
                    .unwrap_or_default(),
                sample.rss_mib
            );
            samples.push(sample);
        }
    }
    drop(backends);
    drop(sandbox);

    let (table, value) = summarize(&paths, &samples, &settings, ctx.quick, started.elapsed())?;
    let notes = "\
Latency: bench-client latency (open loop, fixed rate over 50 connections, from each \
request's scheduled start), medians over repetitions. checks/s: health_check.attempt growth over the measurement. CPU: cores busy \
over the measurement (CPU seconds / wall seconds), whole proxy and keel's keel-health \
thread; RSS after it. The proxy runs on core 0; wrk and the backends (one keel, which \
also answers every health check) share core 1, so with health checks on, the backends \
also serve N checks/s on the load core.\n";
    report::announce(&report::publish(
        &ctx.out_dir,
        &stem,
        &table,
        notes,
        &value,
    )?);
    Ok(())
}

fn write(dir: &Path, name: &str, text: String) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The i-th checked endpoint: 127.1.x.y:9000.
fn checked_endpoint(i: usize) -> SocketAddr {
    let (x, y) = (i / 250, i % 250 + 1);
    SocketAddr::from((
        [127, 1 + (x / 256) as u8, (x % 256) as u8, y as u8],
        HEALTH_TARGET_PORT,
    ))
}

const HCM_HEAD: &str = "      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
          route_config:
            virtual_hosts:
            - name: all
              domains: [\"*\"]
              routes:
";

fn socket(address: &str) -> String {
    let address: SocketAddr = address.parse().expect("constant address");
    format!(
        "{{socket_address: {{address: {}, port_value: {}}}}}",
        address.ip(),
        address.port()
    )
}

/// The backends: `app` and the health target, direct responses.
fn backends_bootstrap() -> String {
    let listener = |name: &str, address: &str| {
        format!(
            "  - name: {name}\n    address: {address}\n    filter_chains:\n    - filters:\n{HCM_HEAD}\
             \x20             - match: {{prefix: /}}\n                direct_response: {{status: 200, body: {{inline_string: ok}}}}\n"
        )
    };
    format!(
        "# Generated by `cargo xtask bench health`.\nadmin:\n  address: {}\nstatic_resources:\n  listeners:\n{}{}",
        socket(BACKENDS_ADMIN),
        listener("app", &socket(APP_BACKEND)),
        listener(
            "health-target",
            &format!("{{socket_address: {{address: 0.0.0.0, port_value: {HEALTH_TARGET_PORT}}}}}")
        ),
    )
}

/// The proxy: `/` → `app`; with `checked` > 0, also a cluster of that many endpoints
/// with an HTTP health check every second (no route sends traffic to it).
fn proxy_bootstrap(checked: usize) -> String {
    let mut yaml = format!(
        "# Generated by `cargo xtask bench health`.\nadmin:\n  address: {}\nstatic_resources:\n  listeners:\n  - name: ingress\n    address: {}\n    filter_chains:\n    - filters:\n{HCM_HEAD}\
         \x20             - match: {{prefix: /}}\n                route: {{cluster: app}}\n  clusters:\n\
         \x20 - name: app\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: app\n      endpoints:\n      - lb_endpoints:\n\
         \x20       - endpoint: {{address: {}}}\n",
        socket(PROXY_ADMIN),
        socket(PROXY_LISTENER),
        socket(APP_BACKEND),
    );
    if checked > 0 {
        yaml.push_str(
            "  - name: checked\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: checked\n      endpoints:\n      - lb_endpoints:\n",
        );
        for i in 0..checked {
            let a = checked_endpoint(i);
            yaml.push_str(&format!(
                "        - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}\n",
                a.ip(),
                a.port()
            ));
        }
        yaml.push_str(
            "    health_checks:\n    - timeout: 1s\n      interval: 1s\n      no_traffic_interval: 1s\n      initial_jitter: 1s\n\
             \x20     unhealthy_threshold: 3\n      healthy_threshold: 1\n      http_health_check: {path: /healthz}\n",
        );
    }
    yaml
}

/// Starts the path's proxy, waits for it (and its checked hosts), measures, stops it.
#[allow(clippy::too_many_arguments)]
fn measure(
    sandbox: &Sandbox,
    bench_client: &Path,
    path: &PathSpec,
    settings: &Settings,
    dir: &Path,
    label: &str,
    backends: &mut [Service],
) -> Result<Sample> {
    let mut command = sandbox.in_netns(PROXY_CORE, &path.program);
    command
        .arg("-c")
        .arg(&path.config)
        .args(["--concurrency", "1", "--log-level", "warn"]);
    if path.envoy {
        command.arg("--disable-hot-restart");
    }
    let mut proxy = Service::start(&format!("proxy-{label}"), &mut command, dir)?;
    let listener: SocketAddr = PROXY_LISTENER.parse().expect("constant address");
    sandbox.wait_listening(
        &[listener.port()],
        std::slice::from_mut(&mut proxy),
        STARTUP_TIMEOUT,
    )?;
    let pid = proxy.pid();
    if path.checked > 0 {
        let deadline = Instant::now() + FIRST_ROUND_TIMEOUT;
        loop {
            let healthy = stat(sandbox, dir, "cluster.checked.health_check.healthy")?;
            if healthy >= path.checked as f64 {
                break;
            }
            proxy.check_running()?;
            if Instant::now() > deadline {
                // A loaded machine: measure anyway (the checks run all the same).
                println!(
                    "[bench] warning: {label}: only {healthy} of {} checked hosts passed within \
                     {FIRST_ROUND_TIMEOUT:?}; measuring anyway",
                    path.checked
                );
                break;
            }
            procs::sleep(Duration::from_millis(250))?;
        }
    }
    // Steady state: a second of checks after the first round.
    procs::sleep(Duration::from_secs(1))?;

    let attempts_before = if path.checked > 0 {
        stat(sandbox, dir, "cluster.checked.health_check.attempt")?
    } else {
        0.0
    };
    let cpu_before = process_ticks(pid)?;
    let health_before = thread_ticks(pid, "keel-health");
    let wall = Instant::now();
    let mut client = sandbox.in_netns(LOAD_CORE, bench_client);
    client
        .args(["latency", "--target", PROXY_LISTENER])
        .args(["--rate", &settings.rate.to_string()])
        .args(["--connections", &CONNECTIONS.to_string()])
        .args(["--seconds", &settings.seconds.to_string()])
        .args(["--warmup", "0.5"]);
    let finished = procs::run_bounded(
        &format!("latency-{label}"),
        &mut client,
        dir,
        Duration::from_secs(u64::from(settings.seconds) + 30),
    )?;
    let seconds = wall.elapsed().as_secs_f64();
    let cpu_after = process_ticks(pid)?;
    let health_after = thread_ticks(pid, "keel-health");
    let attempts_after = if path.checked > 0 {
        stat(sandbox, dir, "cluster.checked.health_check.attempt")?
    } else {
        0.0
    };
    let rss_mib = rss_kib(pid)? / 1024.0;
    let load: LoadResult = httpload::parse_rate_client(&finished.stdout).with_context(|| {
        format!(
            "bench-client exited with {}; its stderr ends with:\n{}",
            finished.status,
            finished.stderr_tail()
        )
    })?;
    if load.errors > 0 {
        bail!(
            "{label}: {} of {} requests failed (first: {})",
            load.errors,
            load.requests + load.errors,
            load.first_error.as_deref().unwrap_or("?")
        );
    }
    proxy.check_running()?;
    for backend in backends.iter_mut() {
        backend.check_running()?;
    }
    drop(proxy);
    let ticks = ticks_per_second();
    Ok(Sample {
        p50_us: load.p50_us,
        p99_us: load.p99_us,
        p99_9_us: load.p99_9_us,
        max_us: load.max_us,
        requests_per_second: load.requests_per_second,
        checks_per_second: (attempts_after - attempts_before) / seconds,
        proxy_cores: (cpu_after - cpu_before) / ticks / seconds,
        health_thread_cores: match (health_before, health_after) {
            (Some(before), Some(after)) => Some((after - before) / ticks / seconds),
            _ => None,
        },
        rss_mib,
    })
}

/// A stat of the proxy's admin `/stats` (text: `name: value`), read with curl inside
/// the namespace; 0 when absent.
fn stat(sandbox: &Sandbox, dir: &Path, name: &str) -> Result<f64> {
    let mut curl = sandbox.in_netns(LOAD_CORE, "curl");
    curl.args(["-s", "--max-time", "5"])
        .arg(format!("http://{PROXY_ADMIN}/stats?filter=^{name}$"));
    let finished = procs::run_bounded("curl-stats", &mut curl, dir, Duration::from_secs(10))?;
    Ok(finished
        .stdout
        .lines()
        .find_map(|line| {
            let (n, v) = line.split_once(": ")?;
            (n == name).then(|| v.trim().parse::<f64>().ok())?
        })
        .unwrap_or(0.0))
}

/// utime + stime of a `/proc/.../stat` line, in clock ticks.
fn stat_ticks(stat: &str) -> Option<f64> {
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn process_ticks(pid: u32) -> Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    stat_ticks(&text).with_context(|| format!("parsing /proc/{pid}/stat: {text}"))
}

/// CPU ticks of the thread called `name` of process `pid`, if there is one.
fn thread_ticks(pid: u32, name: &str) -> Option<f64> {
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = entry.ok()?.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim() == name {
            return stat_ticks(&std::fs::read_to_string(path.join("stat")).ok()?);
        }
    }
    None
}

fn rss_kib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// The table and JSON of the run.
fn summarize(
    paths: &[PathSpec],
    samples: &[Vec<Sample>],
    settings: &Settings,
    quick: bool,
    duration: Duration,
) -> Result<(String, Value)> {
    let mut table = Table::new(&[
        "path",
        "checked hosts",
        "checks/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs",
        "p99 vs baseline",
        "req/s",
        "proxy cores",
        "keel-health cores",
        "RSS MiB",
    ]);
    let mut json_paths = Vec::new();
    let mut baseline_p99: Option<Summary> = None;
    for (path, samples) in paths.iter().zip(samples) {
        let summary = |f: fn(&Sample) -> f64| {
            Summary::of(&samples.iter().map(f).collect::<Vec<_>>()).context("no samples")
        };
        let p50 = summary(|s| s.p50_us)?;
        let p99 = summary(|s| s.p99_us)?;
        let p999 = summary(|s| s.p99_9_us)?;
        let max = summary(|s| s.max_us)?;
        let rps = summary(|s| s.requests_per_second)?;
        let checks = summary(|s| s.checks_per_second)?;
        let cores = summary(|s| s.proxy_cores)?;
        let rss = summary(|s| s.rss_mib)?;
        let health = Summary::of(
            &samples
                .iter()
                .filter_map(|s| s.health_thread_cores)
                .collect::<Vec<_>>(),
        );
        if path.checked == 0 {
            baseline_p99 = Some(p99.clone());
        }
        let versus = if path.checked > 0 {
            report::ratio(baseline_p99.as_ref().and_then(|b| p99.ratio_to(b)))
        } else {
            "baseline".into()
        };
        table.row(vec![
            path.name.into(),
            path.checked.to_string(),
            format!("{:.0}", checks.median),
            format!("{:.0}", p50.median),
            format!("{:.0}", p99.median),
            format!("{:.0}", p999.median),
            format!("{:.0}", max.median),
            versus,
            format!("{:.0}", rps.median),
            format!("{:.2}", cores.median),
            health
                .as_ref()
                .map_or("–".into(), |h| format!("{:.3}", h.median)),
            format!("{:.1}", rss.median),
        ]);
        json_paths.push(json!({
            "name": path.name,
            "checked_hosts": path.checked,
            "p50_us": p50.to_json(),
            "p99_us": p99.to_json(),
            "p99_9_us": p999.to_json(),
            "max_us": max.to_json(),
            "requests_per_second": rps.to_json(),
            "checks_per_second": checks.to_json(),
            "proxy_cores": cores.to_json(),
            "health_thread_cores": health.map(|h| h.to_json()),
            "rss_mib": rss.to_json(),
        }));
    }
    let value = json!({
        "scenario": "health",
        "quick": quick,
        "when": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "machine": report::machine(),
        "repetitions": settings.repetitions,
        "seconds": settings.seconds,
        "rate": settings.rate,
        "endpoints": settings.endpoints,
        "duration_s": duration.as_secs_f64(),
        "paths": json_paths,
    });
    Ok((table.to_markdown(), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_endpoints_are_distinct_loopback_addresses() {
        let all: std::collections::HashSet<SocketAddr> =
            (0..10_000).map(checked_endpoint).collect();
        assert_eq!(all.len(), 10_000);
        assert!(all
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == HEALTH_TARGET_PORT));
    }

    #[test]
    fn proc_stat_ticks() {
        let own = "42 (keel health) S 1 42 42 0 -1 4194304 10 0 0 0 7 3 20 10 20 0 1 0 5 0 0";
        assert_eq!(stat_ticks(own), Some(10.0));
    }

    #[test]
    fn bootstraps_load_in_keel_terms() {
        let yaml = proxy_bootstrap(3);
        assert!(
            yaml.contains("address: 127.1.0.3, port_value: 9000"),
            "{yaml}"
        );
        assert!(
            yaml.contains("http_health_check: {path: /healthz}"),
            "{yaml}"
        );
        let backends = backends_bootstrap();
        assert!(
            backends.contains("address: 0.0.0.0, port_value: 9000"),
            "{backends}"
        );
        assert!(
            backends.contains("\n      - name: envoy.filters.network.http_connection_manager\n"),
            "{backends}"
        );
    }
}
