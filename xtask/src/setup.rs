//! `cargo xtask setup`: makes this machine able to build, load and test keel. Each step
//! checks first and acts only when something is missing, so a second run only checks.
//! Steps are split in two groups: the toolchain (nightly, rust-src, bpf-linker), which
//! `build` needs, and the host (apt packages for the tests, bpffs), which `test` and
//! `run` need. Each step prints one line with its outcome and elapsed time.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::{bpf_linker, cmd};

/// Packages the end-to-end tests drive (nghttp2-client: h2load and nghttp for
/// `tests/tests/clients.rs`, which fails, naming the package, when one is missing).
const APT_PACKAGES: &[&str] = &["iproute2", "iperf3", "curl", "haproxy", "nghttp2-client"];

/// Where keel pins its maps; the folder must be a bpf filesystem.
const BPFFS: &str = "/sys/fs/bpf";

/// What a setup step found or did.
pub enum Outcome {
    /// Nothing to do.
    AlreadyPresent,
    /// The step installed or changed something.
    Done,
    /// The step could not act; the reason says what is missing and what to do.
    Skipped(String),
}

/// Every setup step: the toolchain, then the host.
pub fn run_all() -> Result<()> {
    ensure_toolchain()?;
    ensure_host()
}

/// What building keel needs: nightly with rust-src, and bpf-linker for that nightly.
pub fn ensure_toolchain() -> Result<()> {
    step("nightly toolchain", ensure_nightly)?;
    step("rust-src for nightly", ensure_rust_src)?;
    step("bpf-linker", bpf_linker::ensure)
}

/// What testing keel needs besides the toolchain: apt packages, the reference Envoy,
/// the Python peers of the client tests and bpffs.
pub fn ensure_host() -> Result<()> {
    step("apt packages for the tests", ensure_apt_packages)?;
    step(
        "Envoy 1.40 for the differential tests",
        crate::envoy::ensure,
    )?;
    step(
        "grpcio and websockets for the client tests",
        crate::pyclients::ensure,
    )?;
    ensure_bpffs_mounted()
}

/// Mounts bpffs at /sys/fs/bpf if it is not (keel pins its maps there).
pub fn ensure_bpffs_mounted() -> Result<()> {
    step("bpffs at /sys/fs/bpf", ensure_bpffs)
}

/// Runs one step and prints `[setup] <name> ... <outcome> (<seconds>s)`.
pub fn step(name: &str, action: impl FnOnce() -> Result<Outcome>) -> Result<()> {
    let started = Instant::now();
    let result = action();
    let seconds = started.elapsed().as_secs_f64();
    let outcome = match &result {
        Ok(Outcome::AlreadyPresent) => "already present".to_string(),
        Ok(Outcome::Done) => "ok".to_string(),
        Ok(Outcome::Skipped(reason)) => format!("skipped: {reason}"),
        Err(_) => "FAILED".to_string(),
    };
    println!("[setup] {name} ... {outcome} ({seconds:.1}s)");
    result
        .map(|_| ())
        .with_context(|| format!("setup step `{name}` failed"))
}

/// True when xtask runs as root (installing packages and mounting need it).
fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A `rustup` command with the outer build's toolchain pin removed.
fn rustup() -> Command {
    let mut rustup = Command::new("rustup");
    cmd::clear_outer_build_env(&mut rustup);
    rustup
}

fn ensure_nightly() -> Result<Outcome> {
    let list = cmd::stdout_of(rustup().args(["toolchain", "list"]))?;
    if list.lines().any(is_plain_nightly) {
        return Ok(Outcome::AlreadyPresent);
    }
    cmd::run(rustup().args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
        "--component",
        "rust-src",
        "--no-self-update",
    ]))?;
    Ok(Outcome::Done)
}

/// True for a `rustup toolchain list` line naming the moving `nightly` toolchain
/// (`nightly-x86_64-unknown-linux-gnu (default)`), not a dated one (`nightly-2025-01-01-…`).
fn is_plain_nightly(line: &str) -> bool {
    let name = line.split_whitespace().next().unwrap_or("");
    match name.strip_prefix("nightly") {
        Some("") => true,
        Some(rest) => rest.starts_with('-') && !rest[1..].starts_with(|c: char| c.is_ascii_digit()),
        None => false,
    }
}

fn ensure_rust_src() -> Result<Outcome> {
    let installed = cmd::stdout_of(rustup().args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if installed
        .lines()
        .any(|line| line.trim().starts_with("rust-src"))
    {
        return Ok(Outcome::AlreadyPresent);
    }
    // `component add` takes no --no-self-update; it never updates rustup itself.
    cmd::run(rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    Ok(Outcome::Done)
}

fn ensure_apt_packages() -> Result<Outcome> {
    ensure_apt(APT_PACKAGES)
}

/// Installs those of `packages` that dpkg does not report as installed (one `apt-get
/// install` for all of them, printed before it runs); a setup step.
pub fn ensure_apt(packages: &[&'static str]) -> Result<Outcome> {
    let Some(missing) = missing_apt_packages(packages) else {
        return Ok(Outcome::Skipped(format!(
            "dpkg-query not found (not a Debian-family system); install {} yourself",
            packages.join(", ")
        )));
    };
    if missing.is_empty() {
        return Ok(Outcome::AlreadyPresent);
    }
    if !is_root() {
        return Ok(Outcome::Skipped(format!(
            "not root, so not installing {}; tests that need them will skip \
             (run `cargo xtask setup` as root, or apt-get install them)",
            missing.join(" ")
        )));
    }
    cmd::run(Command::new("apt-get").arg("update"))?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )?;
    Ok(Outcome::Done)
}

/// The packages dpkg does not report as installed; `None` without dpkg-query.
fn missing_apt_packages(packages: &[&'static str]) -> Option<Vec<&'static str>> {
    let mut missing = Vec::new();
    for package in packages {
        let output = cmd::probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))?;
        // "install ok installed"; an unknown package exits non-zero.
        let status = String::from_utf8_lossy(&output.stdout);
        let installed =
            output.status.success() && status.split_whitespace().nth(2) == Some("installed");
        if !installed {
            missing.push(*package);
        }
    }
    Some(missing)
}

fn ensure_bpffs() -> Result<Outcome> {
    if bpffs_is_mounted()? {
        return Ok(Outcome::AlreadyPresent);
    }
    if !is_root() {
        return Ok(Outcome::Skipped(format!(
            "not root; mount it with `mount -t bpf bpf {BPFFS}`"
        )));
    }
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    Ok(Outcome::Done)
}

/// True when /proc/mounts lists a bpf filesystem at /sys/fs/bpf.
fn bpffs_is_mounted() -> Result<bool> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    Ok(mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&BPFFS) && fields.get(2) == Some(&"bpf")
    }))
}

#[cfg(test)]
mod tests {
    use super::is_plain_nightly;

    #[test]
    fn recognises_the_moving_nightly_only() {
        assert!(is_plain_nightly("nightly-x86_64-unknown-linux-gnu"));
        assert!(is_plain_nightly(
            "nightly-x86_64-unknown-linux-gnu (active)"
        ));
        assert!(is_plain_nightly("nightly"));
        assert!(!is_plain_nightly(
            "nightly-2025-01-01-x86_64-unknown-linux-gnu"
        ));
        assert!(!is_plain_nightly(
            "stable-x86_64-unknown-linux-gnu (default)"
        ));
    }
}
