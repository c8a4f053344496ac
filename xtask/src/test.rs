//! `cargo xtask test`: sets the machine up, builds the eBPF object, then runs
//! `cargo test --workspace` with `KEEL_EBPF_OBJECT` set, so the keel library and binary
//! built for the tests carry their kernel programs. `ebpf/common` is a workspace member,
//! so its tests are included. Extra arguments go to `cargo test`; when they name
//! packages (`-p keel`), only those are tested.

use std::ffi::OsString;

use anyhow::{Context, Result};

use crate::build::{self, EBPF_OBJECT_VARIABLE};
use crate::{cmd, setup};

/// Runs the whole test suite; an error when any test fails.
///
/// The privileged end-to-end tests (eBPF, cgroups, network namespaces) are marked
/// `#[ignore]` with their reason. As root they are included; otherwise they are
/// listed as ignored, never passed silently.
pub fn run(extra_args: &[OsString]) -> Result<()> {
    setup::run_all()?;
    // The tests run the keel binary too: build it with its eBPF object first.
    let object = build::build_ebpf_object()?;
    build::build_keel(&object, build::Profile::Debug)?;
    let privileged = nix::unistd::geteuid().is_root();
    if !privileged {
        println!("[test] not root: the privileged end-to-end tests will be reported as ignored");
    }
    cmd::run(
        cmd::outer_cargo()
            .current_dir(build::workspace_root())
            .env(EBPF_OBJECT_VARIABLE, &object)
            .arg("test")
            .args(workspace_unless_packages_chosen(extra_args))
            .args(with_test_binary_args(extra_args, privileged)),
    )
    .context("tests failed")
}

/// The extra arguments, with `--include-ignored` passed to the test binaries when
/// the privileged tests can run.
fn with_test_binary_args(extra_args: &[OsString], privileged: bool) -> Vec<OsString> {
    let mut args = extra_args.to_vec();
    if privileged {
        if !args.iter().any(|a| a == "--") {
            args.push("--".into());
        }
        args.push("--include-ignored".into());
    }
    args
}

/// `--workspace`, unless the extra arguments pick packages themselves (`-p keel`),
/// which `--workspace` would override.
fn workspace_unless_packages_chosen(extra_args: &[OsString]) -> Option<&'static str> {
    let cargo_args = extra_args.iter().take_while(|arg| *arg != "--");
    let chooses_packages = cargo_args
        .map(|arg| arg.to_string_lossy())
        .any(|arg| arg.starts_with("-p") || arg == "--package" || arg.starts_with("--package="));
    (!chooses_packages).then_some("--workspace")
}

#[cfg(test)]
mod tests {
    use super::workspace_unless_packages_chosen;
    use std::ffi::OsString;

    fn args(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn whole_workspace_unless_packages_are_named() {
        assert_eq!(
            workspace_unless_packages_chosen(&args(&[])),
            Some("--workspace")
        );
        assert_eq!(
            workspace_unless_packages_chosen(&args(&["--no-fail-fast"])),
            Some("--workspace")
        );
        assert_eq!(
            workspace_unless_packages_chosen(&args(&["--", "-p"])),
            Some("--workspace")
        );
        assert_eq!(
            workspace_unless_packages_chosen(&args(&["-p", "keel"])),
            None
        );
        assert_eq!(
            workspace_unless_packages_chosen(&args(&["--package=keel"])),
            None
        );
    }
}
