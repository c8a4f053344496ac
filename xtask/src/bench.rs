//! `cargo xtask bench`: keel's benchmarks. Only the command line exists so far; the
//! scenarios are still to be written, and running it reports so.

use anyhow::{bail, Result};
use clap::Args;

/// Arguments of `cargo xtask bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Scenarios to run (all when none is given).
    pub scenarios: Vec<String>,
    /// Short runs, for CI and quick checks.
    #[arg(long)]
    pub quick: bool,
}

/// Runs the benchmarks named in `args`.
pub fn run(_args: &BenchArgs) -> Result<()> {
    bail!("bench: not built yet")
}
