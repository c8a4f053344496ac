//! `cargo xtask build`: the eBPF object and the keel binary that embeds it. The object is
//! built from `ebpf/programs` with nightly for `bpfel-unknown-none` (`-Z build-std=core`,
//! BTF from debug info) into `target/ebpf`; keel is then built with `KEEL_EBPF_OBJECT`
//! naming it (userspace/build.rs embeds the file). `run` and `test` reuse these functions.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::{cmd, setup};

/// Target triple of the eBPF object.
const EBPF_TARGET: &str = "bpfel-unknown-none";

/// Name of the eBPF crate's binary target, which is the object file.
const EBPF_BINARY: &str = "keel-ebpf";

/// Variable through which userspace/build.rs finds the object to embed.
pub const EBPF_OBJECT_VARIABLE: &str = "KEEL_EBPF_OBJECT";

/// Cargo profile of the userspace build.
#[derive(Clone, Copy)]
pub enum Profile {
    /// `dev` (cargo's default).
    Debug,
    /// `release`.
    Release,
}

impl Profile {
    /// `Release` when `--release` was given.
    pub fn from_release_flag(release: bool) -> Self {
        if release {
            Profile::Release
        } else {
            Profile::Debug
        }
    }
}

/// The workspace root: the parent of xtask's own folder.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in a folder of the workspace")
        .to_path_buf()
}

/// Checks the toolchain, builds the eBPF object and then keel; returns keel's path.
pub fn build_all(profile: Profile) -> Result<PathBuf> {
    setup::ensure_toolchain()?;
    let object = build_ebpf_object()?;
    let keel = build_keel(&object, profile)?;
    println!("[build] keel: {}", keel.display());
    Ok(keel)
}

/// Builds `ebpf/programs` with nightly and returns the absolute path of the object.
pub fn build_ebpf_object() -> Result<PathBuf> {
    let root = workspace_root();
    let programs = root.join("ebpf/programs");
    if !programs.join("Cargo.toml").is_file() {
        bail!(
            "{} has no Cargo.toml: the eBPF programs crate is missing",
            programs.display()
        );
    }
    let target_dir = root.join("target/ebpf");
    let mut nightly_cargo = Command::new("cargo");
    cmd::clear_outer_build_env(&mut nightly_cargo)
        .current_dir(&programs)
        .env("CARGO_TARGET_DIR", &target_dir)
        // BTF for the loader; BPF CPU v3 for atomic fetch-add (kernel ≥ 5.12).
        .env(
            "RUSTFLAGS",
            "-C debuginfo=2 -C link-arg=--btf -C target-cpu=v3",
        )
        .args([
            "+nightly",
            "build",
            "--release",
            "-Z",
            "build-std=core",
            "--target",
            EBPF_TARGET,
        ]);
    cmd::run(&mut nightly_cargo).with_context(|| {
        format!(
            "building the eBPF object in {} failed (compiler output above)",
            programs.display()
        )
    })?;
    let object = target_dir
        .join(EBPF_TARGET)
        .join("release")
        .join(EBPF_BINARY);
    if !object.is_file() {
        bail!(
            "the eBPF build succeeded but {} does not exist",
            object.display()
        );
    }
    println!("[build] eBPF object: {}", object.display());
    Ok(object)
}

/// Builds the keel binary embedding `object` and returns the binary's path (taken from
/// cargo's own artifact messages, so a custom target folder is honoured).
pub fn build_keel(object: &Path, profile: Profile) -> Result<PathBuf> {
    let mut cargo = cmd::outer_cargo();
    cargo
        .current_dir(workspace_root())
        .env(EBPF_OBJECT_VARIABLE, object)
        .args(["build", "--package", "keel", "--bin", "keel"])
        .arg("--message-format=json-render-diagnostics");
    if let Profile::Release = profile {
        cargo.arg("--release");
    }
    cmd::announce(&cargo);
    let mut child = cargo
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{}`", cmd::describe(&cargo)))?;
    let stdout = child.stdout.take().context("cargo's stdout is piped")?;
    let keel = keel_executable(BufReader::new(stdout));
    let status = child.wait().context("waiting for cargo")?;
    cmd::check_success(&cargo, status)?;
    keel.context("cargo built keel but reported no executable for it")
}

/// The bench's own programs: `bench-backend` and `bench-client`.
pub struct BenchTools {
    /// The HTTP/1.1 + h2c + gRPC backend.
    pub backend: PathBuf,
    /// The latency and idle-connection clients.
    pub client: PathBuf,
}

/// Builds the `keel-bench-tools` crate in release (they must not be the bottleneck) and
/// returns its two executables. With `keel_object`, keel (embedding that eBPF object)
/// is built in the same cargo run, so both share their dependencies' artifacts, and its
/// path is returned too.
pub fn build_bench_tools(keel_object: Option<&Path>) -> Result<(BenchTools, Option<PathBuf>)> {
    let mut cargo = cmd::outer_cargo();
    cargo.current_dir(workspace_root()).args([
        "build",
        "--release",
        "--package",
        "keel-bench-tools",
    ]);
    if let Some(object) = keel_object {
        cargo
            .env(EBPF_OBJECT_VARIABLE, object)
            .args(["--package", "keel"]);
    }
    cargo
        .arg("--bins")
        .arg("--message-format=json-render-diagnostics");
    let output = cmd::output_of(cargo.stderr(Stdio::inherit()))?;
    cmd::check_success(&cargo, output.status)?;
    let messages = String::from_utf8_lossy(&output.stdout);
    let find = |name: &str| {
        executable_named(&messages, name)
            .with_context(|| format!("cargo built {name} but reported no executable for it"))
    };
    let tools = BenchTools {
        backend: find("bench-backend")?,
        client: find("bench-client")?,
    };
    println!(
        "[build] bench tools: {} and {}",
        tools.backend.display(),
        tools.client.display()
    );
    let keel = match keel_object {
        Some(_) => {
            let keel = find("keel")?;
            println!("[build] keel: {}", keel.display());
            Some(keel)
        }
        None => None,
    };
    Ok((tools, keel))
}

/// The path of the binary `name` in cargo's JSON messages.
fn executable_named(messages: &str, name: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .next_back()
}

/// The path of the `keel` executable in cargo's JSON messages.
fn keel_executable(messages: impl BufRead) -> Option<PathBuf> {
    let mut found = None;
    for line in messages.lines().map_while(Result::ok) {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let is_keel_binary = message["reason"] == "compiler-artifact"
            && message["target"]["name"] == "keel"
            && message["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"));
        if let (true, Some(path)) = (is_keel_binary, message["executable"].as_str()) {
            found = Some(PathBuf::from(path));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::{executable_named, keel_executable};
    use std::path::PathBuf;

    #[test]
    fn finds_the_keel_binary_among_cargo_messages() {
        let messages = concat!(
            r#"{"reason":"compiler-artifact","target":{"name":"keel","kind":["lib"]},"executable":null}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"keel","kind":["bin"]},"executable":"/t/debug/keel"}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
            "\n"
        );
        assert_eq!(
            keel_executable(messages.as_bytes()),
            Some(PathBuf::from("/t/debug/keel"))
        );
        assert_eq!(
            executable_named(messages, "keel"),
            Some(PathBuf::from("/t/debug/keel"))
        );
        assert_eq!(executable_named(messages, "bench-backend"), None);
    }
}
