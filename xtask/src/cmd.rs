//! Running external commands. Every command is printed (with the variables it sets and
//! the folder it runs in) before it runs, and a failure names the command. Also owns the
//! list of variables an outer `cargo run` leaves behind that would mislead a nested cargo.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, ExitStatus, Output};

use anyhow::{bail, Context, Result};

/// Variables removed from a nested cargo's environment: the outer cargo and rustup set
/// them for xtask, and they would pin the nested build to the wrong toolchain, compiler,
/// flags or target folder.
const OUTER_BUILD_VARIABLES: &[&str] = &[
    "RUSTUP_TOOLCHAIN",
    "RUSTC",
    "RUSTDOC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "CARGO_MAKEFLAGS",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_RUSTC_CURRENT_DIR",
];

/// Prefixes of variables removed for the same reason (`CARGO_TARGET_DIR`, per-target
/// linkers and rustflags, build and profile overrides, package metadata).
const OUTER_BUILD_PREFIXES: &[&str] = &[
    "CARGO_PKG_",
    "CARGO_TARGET_",
    "CARGO_BUILD_",
    "CARGO_PROFILE_",
];

/// Removes from `cmd`'s environment what the outer `cargo run` set for xtask, so that a
/// nested cargo or rustc (in particular `cargo +nightly`) starts from a clean slate.
/// `CARGO_HOME`, `RUSTUP_HOME` and network settings are kept.
pub fn clear_outer_build_env(cmd: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        let name_str = name.to_string_lossy();
        let inherited_from_outer_build = OUTER_BUILD_VARIABLES.contains(&name_str.as_ref())
            || OUTER_BUILD_PREFIXES.iter().any(|p| name_str.starts_with(p));
        if inherited_from_outer_build {
            cmd.env_remove(&name);
        }
    }
    cmd
}

/// The cargo that is running xtask (so stable builds use the same toolchain), or `cargo`.
pub fn outer_cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// `cmd` as one shell-like line: `VAR=value program args  (in folder)`.
pub fn describe(cmd: &Command) -> String {
    let mut line = String::new();
    for (name, value) in cmd.get_envs() {
        if let Some(value) = value {
            let _ = write!(line, "{}={} ", name.to_string_lossy(), quote(value));
        }
    }
    line.push_str(&quote(cmd.get_program()));
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&quote(arg));
    }
    if let Some(dir) = cmd.get_current_dir() {
        let _ = write!(line, "  (in {})", dir.display());
    }
    line
}

/// Quotes a word for display the way a shell would need it.
fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=+:,@%".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Prints `cmd` before it runs.
pub fn announce(cmd: &Command) {
    println!("  $ {}", describe(cmd));
}

/// Runs `cmd` with the terminal as its stdio; an error unless it exits with status 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    check_success(cmd, status)
}

/// Runs `cmd` with the terminal as its stdio and returns how it exited.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    announce(cmd);
    cmd.status().with_context(|| {
        format!(
            "cannot start `{}`: is it installed and on PATH?",
            describe(cmd)
        )
    })
}

/// Runs `cmd` and returns its stdout; an error (with its stderr) unless it exits with 0.
pub fn stdout_of(cmd: &mut Command) -> Result<String> {
    let output = output_of(cmd)?;
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(cmd),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `cmd` capturing its output; an error only if it cannot be started.
pub fn output_of(cmd: &mut Command) -> Result<Output> {
    announce(cmd);
    cmd.output().with_context(|| {
        format!(
            "cannot start `{}`: is it installed and on PATH?",
            describe(cmd)
        )
    })
}

/// Runs `cmd` capturing its output; `None` if the program cannot be started (for
/// checks of the kind "is this tool installed and working?").
pub fn probe(cmd: &mut Command) -> Option<Output> {
    announce(cmd);
    cmd.output().ok()
}

/// An error naming `cmd` unless `status` is success.
pub fn check_success(cmd: &Command, status: ExitStatus) -> Result<()> {
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Makes the virtualenv `venv` if it does not exist and pip-installs `packages` into
/// it (bounded: 30 s per connection, 2 retries).
pub fn pip_install<S: AsRef<OsStr>>(venv: &Path, packages: &[S]) -> Result<()> {
    if !venv.join("bin/python").is_file() {
        run(Command::new("python3").arg("-m").arg("venv").arg(venv))?;
    }
    run(Command::new(venv.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--no-input", "--timeout", "30", "--retries", "2"])
        .args(packages))
}
