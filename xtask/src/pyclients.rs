//! The Python clients and servers of the end-to-end client tests (`tests/tests/clients.rs`
//! runs `tests/clients/*.py`): grpcio and websockets from PyPI in a virtualenv at
//! `target/grpc-venv`. `cargo xtask setup` installs them; the tests fail with what to
//! run when they are missing. grpcio ships binary wheels, so nothing is compiled.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Result};

use crate::build::workspace_root;
use crate::cmd;
use crate::setup::Outcome;

/// The packages, pinned so that every machine runs the same peers.
const PACKAGES: &[&str] = &["grpcio==1.85.3", "websockets==17.4"];

/// The virtualenv folder (the tests look for it there).
pub fn venv() -> PathBuf {
    workspace_root().join("target/grpc-venv")
}

/// Whether the virtualenv's Python imports both packages.
fn installed() -> bool {
    let python = venv().join("bin/python");
    python.is_file()
        && cmd::probe(Command::new(&python).args(["-c", "import grpc, websockets"]))
            .is_some_and(|output| output.status.success())
}

/// Installs the packages unless they are there already (a setup step).
pub fn ensure() -> Result<Outcome> {
    if installed() {
        return Ok(Outcome::AlreadyPresent);
    }
    let venv = venv();
    cmd::pip_install(&venv, PACKAGES)?;
    if !installed() {
        bail!(
            "{} installed into {}, but its Python cannot import them",
            PACKAGES.join(" "),
            venv.display()
        );
    }
    Ok(Outcome::Done)
}
