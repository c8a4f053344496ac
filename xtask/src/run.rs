//! `cargo xtask run`: builds keel, mounts bpffs if needed, then runs keel in the
//! foreground: `keel demo` without arguments, `keel ARGS...` with them. Ctrl-C reaches
//! keel directly (same process group); xtask ignores it and waits, so it exits only
//! after keel has shut down, with keel's exit code.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode, ExitStatus};

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, Signal};

use crate::build::{self, Profile};
use crate::{cmd, setup};

/// Builds keel and runs it with `args` (or `demo`); returns keel's exit code.
pub fn run(profile: Profile, args: &[OsString]) -> Result<ExitCode> {
    let keel = build::build_all(profile)?;
    setup::ensure_bpffs_mounted()?;
    let mut command = Command::new(&keel);
    if args.is_empty() {
        command.arg("demo");
    } else {
        command.args(args);
    }
    let status = run_in_foreground(&mut command)?;
    Ok(exit_code_of(status))
}

/// Runs `command` and waits for it. Once keel is started, xtask blocks SIGINT for
/// itself, so a Ctrl-C goes to keel alone and xtask waits for keel to finish. The block
/// comes after the spawn because a child inherits its parent's signal mask; a Ctrl-C in
/// the instant between the two stops both processes, as it would without xtask.
fn run_in_foreground(command: &mut Command) -> Result<ExitStatus> {
    cmd::announce(command);
    let mut keel = command
        .spawn()
        .with_context(|| format!("cannot start `{}`", cmd::describe(command)))?;
    let mut sigint = SigSet::empty();
    sigint.add(Signal::SIGINT);
    sigint.thread_block().context("blocking SIGINT in xtask")?;
    // A SIGINT that arrives from now on stays pending in xtask and dies with it.
    keel.wait().context("waiting for keel")
}

/// The child's exit code, or 128 + signal number when it was killed by a signal.
fn exit_code_of(status: ExitStatus) -> ExitCode {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(signal)) => ExitCode::from(u8::try_from(128 + signal).unwrap_or(1)),
        (None, None) => ExitCode::FAILURE,
    }
}
