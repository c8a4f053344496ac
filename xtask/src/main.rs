//! `cargo xtask`: keel's developer tasks in one place. `setup` makes a machine able to
//! build and test keel (nightly with rust-src, a bpf-linker built against that nightly's
//! own LLVM, the apt packages the tests drive, bpffs); `build` compiles the eBPF object
//! with nightly and then the `keel` binary that embeds it; `run` starts keel (its demo
//! by default); `test` runs the workspace tests against a keel that carries its eBPF
//! programs; `bench` runs the benchmarks. Every external command is printed before it
//! runs, so any step can be repeated by hand.

#![forbid(unsafe_code)]

mod bench;
mod bpf_linker;
mod build;
mod cmd;
mod envoy;
mod pyclients;
mod run;
mod setup;
mod test;

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Command line of `cargo xtask`.
#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "keel's developer tasks: setup, build, run, test, bench"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

/// The tasks `cargo xtask` knows.
#[derive(Subcommand)]
enum Task {
    /// Install what building and testing keel needs; cheap when everything is present.
    Setup,
    /// Build the eBPF object (nightly) and the keel binary that embeds it.
    Build {
        /// Build keel with the release profile (the eBPF object is always optimised).
        #[arg(long)]
        release: bool,
    },
    /// Build, then run keel: `keel demo` without ARGS, else `keel ARGS...`.
    Run {
        /// Build and run keel with the release profile.
        #[arg(long)]
        release: bool,
        /// Arguments for keel, after `--` (for example `-- -c bootstrap.yaml`).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Set up, build the eBPF object, then `cargo test --workspace` with keel embedding it.
    Test {
        /// Extra arguments for `cargo test`, after `--` (for example `-- -p keel` or
        /// `-- --no-fail-fast`; arguments for the test binaries follow a second `--`).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Run the benchmarks.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    match dispatch(Cli::parse().task) {
        Ok(code) => code,
        Err(error) => {
            report(&error);
            ExitCode::FAILURE
        }
    }
}

/// Prints an error and its causes, one per line (without a backtrace).
fn report(error: &anyhow::Error) {
    eprintln!("xtask: error: {error}");
    for cause in error.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}

/// Runs one task; the exit code is keel's own for `run`, success otherwise.
fn dispatch(task: Task) -> Result<ExitCode> {
    match task {
        Task::Setup => setup::run_all()?,
        Task::Build { release } => {
            build::build_all(build::Profile::from_release_flag(release))?;
        }
        Task::Run { release, args } => {
            return run::run(build::Profile::from_release_flag(release), &args)
        }
        Task::Test { args } => test::run(&args)?,
        Task::Bench(args) => bench::run(&args)?,
    }
    Ok(ExitCode::SUCCESS)
}
