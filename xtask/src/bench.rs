//! `cargo xtask bench [SCENARIO...] [--quick]`: keel's benchmarks. A scenario starts
//! everything it measures (backends, keel, peer proxies) in a sandbox it creates (a
//! network namespace with loopback only, a child cgroup, a bpffs folder), measures every
//! path of the scenario in the same run with repetitions interleaved (A B A B), prints a
//! markdown table and writes JSON under `target/bench/`, and removes the sandbox on the
//! way out, also on error or Ctrl-C. `--quick` makes one short repetition of each path:
//! a smoke test for CI that still fails when a path carries no traffic.
//!
//! The harness (process guard, sandbox, load generators, statistics, report) lives in
//! `bench/*.rs` and every scenario reuses it: `l4` (TCP), the HTTP scenarios of
//! `http.rs` (`h1`, `h2c`, `grpc`, `h1-newconn`, `latency`, `large`: keel against Envoy,
//! HAProxy and nginx), `memory`, `instructions` (callgrind counts) and `health`. The bench installs what it drives (apt packages,
//! Envoy in a venv), builds keel and its own backend and clients (`xtask/bench-tools`)
//! in release, and raises its RLIMIT_NOFILE (inherited by what it starts only).

mod health;
mod http;
mod httpload;
mod instructions;
mod l4;
mod load;
mod memory;
mod peers;
mod procs;
mod report;
mod sandbox;
mod stats;
mod svg;
mod usage;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::build;
use crate::setup;

/// Arguments of `cargo xtask bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Scenarios to run (all when none is given): l4, h1, h2c, grpc, h1-newconn,
    /// latency, large, memory, health.
    pub scenarios: Vec<String>,
    /// Short runs, for CI and quick checks (results go to `*-quick.json`).
    #[arg(long)]
    pub quick: bool,
    /// Repetitions of each peer in the HTTP and memory scenarios (default 3; 1 with
    /// --quick).
    #[arg(long, value_name = "N")]
    pub repetitions: Option<usize>,
    /// Seconds of one HTTP measurement (default 5; 1 with --quick).
    #[arg(long, value_name = "S")]
    pub sample_seconds: Option<u32>,
    /// Request rate of the `latency` scenario, requests per second (default 2000).
    #[arg(long, value_name = "RPS")]
    pub rate: Option<f64>,
    /// Bench this keel binary (it must embed its eBPF object) instead of building one
    /// with `cargo xtask build --release`.
    #[arg(long, value_name = "PATH")]
    pub keel: Option<PathBuf>,
    /// Internal (the bench starts it inside its namespace): serve ADDRESS, answering
    /// every connection with one byte and closing it.
    #[arg(long, hide = true, value_name = "ADDRESS")]
    pub serve_one_byte: Option<SocketAddr>,
    /// Internal (the bench starts it inside its namespace): open and close connections
    /// to ADDRESS for `--seconds`, print the count as JSON.
    #[arg(long, hide = true, value_name = "ADDRESS")]
    pub connect_loop: Option<SocketAddr>,
    /// Internal: parallel connections of `--connect-loop`.
    #[arg(long, hide = true, default_value_t = load::CONNECT_LOOP_THREADS)]
    pub threads: usize,
    /// Internal: duration of `--connect-loop`.
    #[arg(long, hide = true, default_value_t = 1.0)]
    pub seconds: f64,
}

/// What a scenario gets from the harness.
pub struct Context {
    /// `--quick` was given.
    pub quick: bool,
    /// The release keel binary with its eBPF object embedded.
    pub keel: PathBuf,
    /// This xtask executable (re-run inside the namespace as a load generator).
    pub xtask: PathBuf,
    /// `target/bench`: results, configs and logs.
    pub out_dir: PathBuf,
    /// `bench-backend` (release build).
    pub bench_backend: PathBuf,
    /// `bench-client` (release build).
    pub bench_client: PathBuf,
    /// The Envoy binary, or why there is none (Envoy is an optional peer).
    pub envoy: std::result::Result<PathBuf, String>,
    /// `--repetitions`.
    pub repetitions: Option<usize>,
    /// `--sample-seconds`.
    pub seconds: Option<u32>,
    /// `--rate`.
    pub rate: Option<f64>,
}

/// A scenario: name, one-line description, entry point.
type Scenario = (&'static str, &'static str, fn(&Context) -> Result<()>);

/// Every scenario, in the order `cargo xtask bench` runs them.
const SCENARIOS: &[Scenario] = &[
    (
        "l4",
        "TCP service: direct vs kernel-balanced vs keel tcp_proxy vs HAProxy (vs Envoy)",
        l4::run,
    ),
    (
        "h1",
        "HTTP/1.1 keep-alive: keel vs Envoy, HAProxy, nginx and direct",
        http::h1,
    ),
    (
        "h2c",
        "h2c: keel vs Envoy, HAProxy, nginx and direct",
        http::h2c,
    ),
    (
        "grpc",
        "gRPC unary: keel vs Envoy, HAProxy, nginx and direct",
        http::grpc,
    ),
    (
        "h1-newconn",
        "HTTP/1.1, a new connection per request: keel vs Envoy, HAProxy, nginx and direct",
        http::h1_newconn,
    ),
    (
        "latency",
        "latency percentiles at a fixed rate: keel vs Envoy, HAProxy, nginx and direct",
        http::latency,
    ),
    (
        "large",
        "1 MiB responses: keel vs Envoy, HAProxy, nginx and direct",
        http::large,
    ),
    (
        "memory",
        "RSS idle, per idle HTTP/1.1 connection and per open HTTP/2 stream: keel vs Envoy, HAProxy, nginx",
        memory::run,
    ),
    (
        "instructions",
        "userspace instructions per request (callgrind), HTTP/1.1 and h2c: keel vs Envoy, HAProxy, nginx",
        instructions::run,
    ),
    (
        "health",
        "HTTP request latency while 10,000 endpoints are health-checked every second",
        health::run,
    ),
];

/// What the bench drives, installed with apt when missing.
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "iperf3",
    "haproxy",
    "nginx",
    "wrk",
    "nghttp2-client",
    "valgrind",
];

/// The bench's descriptor limit (its processes inherit it): the memory scenario holds
/// 10,000 client connections, as many proxied ones and upstream ones.
const NOFILE_LIMIT: u64 = 262_144;

/// Runs the benchmarks named in `args` (or one of the internal load generators).
pub fn run(args: &BenchArgs) -> Result<()> {
    if let Some(address) = args.serve_one_byte {
        return load::serve_one_byte(address);
    }
    if let Some(address) = args.connect_loop {
        return load::connect_loop_main(address, args.threads, args.seconds);
    }
    let chosen = choose_scenarios(&args.scenarios)?;
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "bench creates network namespaces and cgroups and loads eBPF programs: run it as root"
        );
    }
    setup::ensure_host()?;
    setup::step("apt packages for the bench", || {
        setup::ensure_apt(APT_PACKAGES)
    })?;
    raise_nofile_limit()?;
    let envoy = peers::ensure_envoy();
    if let Err(reason) = &envoy {
        println!("[bench] Envoy is optional and will be skipped: {reason}");
    }
    let (tools, keel) = match &args.keel {
        Some(keel) => {
            let keel =
                std::path::absolute(keel).with_context(|| format!("--keel {}", keel.display()))?;
            if !keel.is_file() {
                bail!("--keel {}: no such file", keel.display());
            }
            println!("[bench] keel: {} (given, not built)", keel.display());
            (build::build_bench_tools(None)?.0, keel)
        }
        None => {
            // keel in release with its eBPF object (as `cargo xtask build --release`),
            // built in one cargo run with the bench's own programs.
            setup::ensure_toolchain()?;
            let object = build::build_ebpf_object()?;
            let (tools, keel) = build::build_bench_tools(Some(&object))?;
            (tools, keel.context("the build reported no keel")?)
        }
    };
    let out_dir = build::workspace_root().join("target/bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let context = Context {
        quick: args.quick,
        keel,
        xtask: std::env::current_exe().context("finding xtask's own executable")?,
        out_dir,
        bench_backend: tools.backend,
        bench_client: tools.client,
        envoy,
        repetitions: args.repetitions,
        seconds: args.sample_seconds,
        rate: args.rate,
    };
    // From here on Ctrl-C sets a flag that every wait checks, so the sandbox is removed.
    procs::catch_interrupts()?;
    sandbox::remove_stale();
    for (name, description, scenario) in chosen {
        println!(
            "\n[bench] {name}: {description}{}",
            if args.quick { " (quick)" } else { "" }
        );
        scenario(&context).with_context(|| format!("bench scenario `{name}` failed"))?;
    }
    Ok(())
}

/// Raises RLIMIT_NOFILE for this process and so for the processes it starts: to
/// [`NOFILE_LIMIT`] where allowed, else (a container without CAP_SYS_RESOURCE) the soft
/// limit up to the hard one. Never lowers it.
fn raise_nofile_limit() -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    if soft >= NOFILE_LIMIT {
        return Ok(());
    }
    let raised = if setrlimit(
        Resource::RLIMIT_NOFILE,
        NOFILE_LIMIT,
        hard.max(NOFILE_LIMIT),
    )
    .is_ok()
    {
        NOFILE_LIMIT
    } else {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .with_context(|| format!("raising RLIMIT_NOFILE to its hard limit {hard}"))?;
        hard
    };
    println!(
        "[bench] RLIMIT_NOFILE raised from {soft} to {raised} (for the bench and its processes)"
    );
    Ok(())
}

/// The scenarios named on the command line (all when none), or an error naming the
/// unknown one and the known ones.
fn choose_scenarios(names: &[String]) -> Result<Vec<Scenario>> {
    if names.is_empty() {
        return Ok(SCENARIOS.to_vec());
    }
    names
        .iter()
        .map(|name| {
            SCENARIOS
                .iter()
                .find(|(known, _, _)| known == name)
                .copied()
                .with_context(|| {
                    let known: Vec<&str> = SCENARIOS.iter().map(|s| s.0).collect();
                    format!(
                        "unknown bench scenario `{name}`; known: {}",
                        known.join(", ")
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::choose_scenarios;

    #[test]
    fn chooses_all_scenarios_or_the_named_ones() {
        assert_eq!(choose_scenarios(&[]).unwrap().len(), super::SCENARIOS.len());
        assert_eq!(choose_scenarios(&["l4".into()]).unwrap()[0].0, "l4");
        let chosen = choose_scenarios(&["memory".into(), "h1".into()]).unwrap();
        assert_eq!((chosen[0].0, chosen[1].0), ("memory", "h1"));
        let error = choose_scenarios(&["l7".into()]).err().unwrap().to_string();
        assert!(error.contains("unknown bench scenario `l7`"), "{error}");
        assert!(
            error.contains("l4") && error.contains("h1-newconn"),
            "{error}"
        );
    }
}
