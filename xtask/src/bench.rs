//! `cargo xtask bench [SCENARIO...] [--quick]`: keel's benchmarks. A scenario starts
//! everything it measures (backends, keel, peer proxies) in a sandbox it creates (a
//! network namespace with loopback only, a child cgroup, a bpffs folder), measures every
//! path of the scenario in the same run with repetitions interleaved (A B A B), prints a
//! markdown table and writes JSON under `target/bench/`, and removes the sandbox on the
//! way out, also on error or Ctrl-C. `--quick` makes one short repetition of each path:
//! a smoke test for CI that still fails when a path carries no traffic.
//!
//! The harness (process guard, sandbox, load generators, statistics, report) lives in
//! `bench/*.rs` so that later scenarios reuse it; `l4` is the first scenario.

mod health;
mod l4;
mod load;
mod peers;
mod procs;
mod report;
mod sandbox;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::build::{self, Profile};
use crate::setup;

/// Arguments of `cargo xtask bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Scenarios to run (all when none is given): l4, health.
    pub scenarios: Vec<String>,
    /// Short runs, for CI and quick checks.
    #[arg(long)]
    pub quick: bool,
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
        "health",
        "HTTP request latency while 10,000 endpoints are health-checked every second",
        health::run,
    ),
];

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
    let keel = match &args.keel {
        Some(keel) => {
            let keel =
                std::path::absolute(keel).with_context(|| format!("--keel {}", keel.display()))?;
            if !keel.is_file() {
                bail!("--keel {}: no such file", keel.display());
            }
            println!("[bench] keel: {} (given, not built)", keel.display());
            keel
        }
        None => build::build_all(Profile::Release)?,
    };
    let out_dir = build::workspace_root().join("target/bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let context = Context {
        quick: args.quick,
        keel,
        xtask: std::env::current_exe().context("finding xtask's own executable")?,
        out_dir,
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
        let error = choose_scenarios(&["l7".into()]).err().unwrap().to_string();
        assert!(error.contains("unknown bench scenario `l7`"), "{error}");
        assert!(error.contains("l4"), "{error}");
    }
}
