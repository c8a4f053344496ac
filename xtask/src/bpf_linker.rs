//! bpf-linker, the linker of keel's eBPF object, built against the nightly toolchain's
//! own libLLVM (rustc emits bitcode that only an LLVM of the same major reads). The
//! build uses `$HOME/.local/share/keel/llvm-<major>` as its `LLVM_PREFIX`: its `lib/`
//! holds symlinks to nightly's libLLVM and becomes the linker's rpath, so it must stay.
//! A stamp file there records the LLVM major bpf-linker was built for; a nightly with a
//! different major has a different folder and no stamp, which triggers a rebuild.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::setup::Outcome;

/// Name of the stamp file inside the LLVM prefix folder.
const STAMP: &str = "bpf-linker.stamp";

/// The LLVM that ships inside the nightly toolchain.
struct NightlyLlvm {
    /// Major version, from `rustc +nightly -vV` ("LLVM version: 22.1.4" → 22).
    major: u32,
    /// The real library, `<sysroot>/lib/libLLVM.so.<version>`.
    library: PathBuf,
}

/// Makes sure a working bpf-linker built for nightly's LLVM is installed.
pub fn ensure() -> Result<Outcome> {
    let llvm = nightly_llvm()?;
    let prefix = prefix_folder(llvm.major)?;
    if linker_runs() && built_for(&prefix, &llvm)? {
        return Ok(Outcome::AlreadyPresent);
    }
    link_libllvm(&prefix, &llvm)?;
    install(&prefix, llvm.major)?;
    write_stamp(&prefix, &llvm)?;
    Ok(Outcome::Done)
}

/// A command whose environment is free of the outer build's toolchain pins.
fn clean(program: &str) -> Command {
    let mut command = Command::new(program);
    cmd::clear_outer_build_env(&mut command);
    command
}

fn nightly_llvm() -> Result<NightlyLlvm> {
    let version = cmd::stdout_of(clean("rustc").args(["+nightly", "-vV"]))?;
    let major = llvm_major(&version).with_context(|| {
        format!("no \"LLVM version: N.x\" line in `rustc +nightly -vV`:\n{version}")
    })?;
    let sysroot = cmd::stdout_of(clean("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let library = find_libllvm(&Path::new(sysroot.trim()).join("lib"), major)?;
    Ok(NightlyLlvm { major, library })
}

/// The LLVM major in `rustc -vV` output.
fn llvm_major(rustc_version: &str) -> Option<u32> {
    let version = rustc_version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))?;
    version.trim().split('.').next()?.parse().ok()
}

/// The `libLLVM.so.<major>.*` file in the toolchain's lib folder.
fn find_libllvm(lib: &Path, major: u32) -> Result<PathBuf> {
    let wanted = format!("libLLVM.so.{major}.");
    let entries = fs::read_dir(lib).with_context(|| format!("reading {}", lib.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", lib.display()))?;
        if entry.file_name().to_string_lossy().starts_with(&wanted) {
            return Ok(entry.path());
        }
    }
    bail!(
        "no {wanted}* in {}: the nightly toolchain looks incomplete; \
         try `rustup toolchain install nightly --force --no-self-update`",
        lib.display()
    )
}

/// `$HOME/.local/share/keel/llvm-<major>`.
fn prefix_folder(major: u32) -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set; cannot place the LLVM prefix")?;
    Ok(PathBuf::from(home).join(format!(".local/share/keel/llvm-{major}")))
}

/// True when `bpf-linker --version` runs (it fails when its libLLVM is gone).
fn linker_runs() -> bool {
    cmd::probe(clean("bpf-linker").arg("--version")).is_some_and(|out| out.status.success())
}

/// True when bpf-linker is recorded as built for this LLVM major: by our stamp, or by
/// cargo's own install record (an install made by hand with the same recipe; it is then
/// adopted by writing the stamp).
fn built_for(prefix: &Path, llvm: &NightlyLlvm) -> Result<bool> {
    if stamp_major(prefix) == Some(llvm.major) {
        return Ok(true);
    }
    if cargo_installed_with_feature(&format!("llvm-{}", llvm.major)) {
        println!(
            "  bpf-linker was installed by cargo with feature llvm-{}; recording that in {}",
            llvm.major,
            prefix.join(STAMP).display()
        );
        write_stamp(prefix, llvm)?;
        return Ok(true);
    }
    Ok(false)
}

/// The major recorded in the stamp, if there is one.
fn stamp_major(prefix: &Path) -> Option<u32> {
    let stamp = fs::read_to_string(prefix.join(STAMP)).ok()?;
    stamp
        .lines()
        .find_map(|l| l.strip_prefix("llvm-major="))?
        .trim()
        .parse()
        .ok()
}

fn write_stamp(prefix: &Path, llvm: &NightlyLlvm) -> Result<()> {
    fs::create_dir_all(prefix).with_context(|| format!("creating {}", prefix.display()))?;
    let library = llvm
        .library
        .file_name()
        .unwrap_or_default()
        .to_string_lossy();
    let text = format!("llvm-major={}\nlibllvm={library}\n", llvm.major);
    let path = prefix.join(STAMP);
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// True when `$CARGO_HOME/.crates2.json` lists bpf-linker installed with `feature`.
fn cargo_installed_with_feature(feature: &str) -> bool {
    let Some(cargo_home) = cargo_home() else {
        return false;
    };
    let Ok(text) = fs::read_to_string(cargo_home.join(".crates2.json")) else {
        return false;
    };
    let Ok(record) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    let Some(installs) = record["installs"].as_object() else {
        return false;
    };
    installs.iter().any(|(package, install)| {
        package.starts_with("bpf-linker ")
            && install["features"]
                .as_array()
                .is_some_and(|features| features.iter().any(|f| f == feature))
    })
}

fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
}

/// Points `<prefix>/lib/libLLVM.so` and `<prefix>/lib/<versioned name>` at nightly's
/// libLLVM, removing links left by an older nightly.
fn link_libllvm(prefix: &Path, llvm: &NightlyLlvm) -> Result<()> {
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    remove_old_links(&lib)?;
    let versioned = llvm
        .library
        .file_name()
        .context("libLLVM path has a file name")?;
    for name in [Path::new("libLLVM.so"), Path::new(versioned)] {
        let link = lib.join(name);
        std::os::unix::fs::symlink(&llvm.library, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), llvm.library.display()))?;
    }
    Ok(())
}

fn remove_old_links(lib: &Path) -> Result<()> {
    for entry in fs::read_dir(lib).with_context(|| format!("reading {}", lib.display()))? {
        let path = entry?.path();
        let is_link = path
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink());
        let is_libllvm = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM"));
        if is_link && is_libllvm {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// `cargo install bpf-linker` against the prefix (`--force`: a nightly update with the
/// same major leaves cargo's record unchanged but the old libLLVM gone).
fn install(prefix: &Path, major: u32) -> Result<()> {
    let feature = format!("llvm-{major}");
    cmd::run(
        clean("cargo")
            .env("LLVM_PREFIX", prefix)
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--no-default-features",
            ])
            .args(["--features", &feature])
            // Outside the workspace, so keel's .cargo/config.toml does not apply.
            .current_dir(prefix),
    )
}

#[cfg(test)]
mod tests {
    use super::{link_libllvm, llvm_major, stamp_major, write_stamp, NightlyLlvm};
    use std::fs;

    #[test]
    fn links_libllvm_and_records_the_major() {
        let prefix = std::env::temp_dir().join(format!("xtask-llvm-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&prefix);
        fs::create_dir_all(prefix.join("lib")).unwrap();
        // A link left by an older nightly must go.
        let stale = prefix.join("lib/libLLVM.so.22.1-rust-1.96.0-nightly");
        std::os::unix::fs::symlink("/nonexistent", &stale).unwrap();
        let library = prefix.join("libLLVM.so.22.1-rust-1.97.0-nightly");
        fs::write(&library, b"").unwrap();
        let llvm = NightlyLlvm {
            major: 22,
            library: library.clone(),
        };

        link_libllvm(&prefix, &llvm).unwrap();
        link_libllvm(&prefix, &llvm).expect("linking again replaces the links");
        write_stamp(&prefix, &llvm).unwrap();

        for name in ["libLLVM.so", "libLLVM.so.22.1-rust-1.97.0-nightly"] {
            let target = fs::read_link(prefix.join("lib").join(name)).unwrap();
            assert_eq!(target, library, "{name} points at nightly's libLLVM");
        }
        assert!(stale.symlink_metadata().is_err(), "stale link removed");
        assert_eq!(stamp_major(&prefix), Some(22));
        fs::remove_dir_all(&prefix).unwrap();
    }

    #[test]
    fn reads_the_llvm_major_from_rustc_version() {
        let text = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nrelease: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(text), Some(22));
        assert_eq!(llvm_major("rustc 1.0\n"), None);
    }
}
