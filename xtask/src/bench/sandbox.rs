//! The bench's sandbox: a network namespace `keel-bench-<pid>` with loopback only (so no
//! packet can leave the machine), a child cgroup of the same name under the cgroup v2
//! mount (keel's hooks attach there, never to the root cgroup), and a bpffs folder for
//! keel's pinned maps. Dropping the sandbox removes all three; [`remove_stale`] removes
//! those left by a bench that was killed outright (its PID no longer runs).
//!
//! Commands are built pinned to a core (`taskset -c N`) and tied to the bench's life
//! (`setpriv --pdeathsig TERM`: if the bench is killed outright, the kernel stops them),
//! and, for processes that must be inside the namespace, run through `ip netns exec`. A client that must be in the
//! cgroup joins it first and only then enters the namespace, because `ip netns exec`
//! remounts /sys and the cgroup folder is not visible after it.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::procs::{self, Service};
use crate::cmd;

/// Prefix of everything the bench creates.
const PREFIX: &str = "keel-bench-";

/// Arguments of `setpriv` (util-linux, like taskset) before the core number: SIGTERM
/// when the bench dies (kept across the execs of taskset and `ip netns exec`), then
/// `taskset -c`.
const PIN_AND_TIE: [&str; 4] = ["--pdeathsig", "TERM", "taskset", "-c"];

/// Where bpffs is mounted (setup mounts it).
const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// A network namespace, a child cgroup and a bpffs folder, removed on drop.
pub struct Sandbox {
    /// Name of the network namespace (and of the cgroup and bpffs folders).
    pub name: String,
    /// The child cgroup keel attaches its hooks to.
    pub cgroup: PathBuf,
    /// The bpffs folder keel pins its maps in.
    pub bpffs: PathBuf,
    cgroup_root: PathBuf,
    netns_created: bool,
}

impl Sandbox {
    /// Creates the namespace (loopback up) and the cgroup.
    pub fn create() -> Result<Sandbox> {
        let name = format!("{PREFIX}{}", std::process::id());
        let cgroup_root = cgroup2_root()?;
        let mut sandbox = Sandbox {
            cgroup: cgroup_root.join(&name),
            bpffs: Path::new(BPFFS_ROOT).join(&name),
            cgroup_root,
            name,
            netns_created: false,
        };
        cmd::run(Command::new("ip").args(["netns", "add", &sandbox.name]))
            .context("creating the bench's network namespace")?;
        sandbox.netns_created = true;
        cmd::run(Command::new("ip").args(["-n", &sandbox.name, "link", "set", "lo", "up"]))?;
        std::fs::create_dir(&sandbox.cgroup)
            .with_context(|| format!("creating cgroup {}", sandbox.cgroup.display()))?;
        println!(
            "[bench] sandbox: network namespace {} (loopback only), cgroup {}, bpffs {}",
            sandbox.name,
            sandbox.cgroup.display(),
            sandbox.bpffs.display()
        );
        Ok(sandbox)
    }

    /// `setpriv --pdeathsig TERM taskset -c CORE PROGRAM`, in the root namespace: pinned
    /// to a core, and sent SIGTERM by the kernel should the bench die without cleaning up.
    pub fn on_core(core: u32, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("setpriv");
        command.args(PIN_AND_TIE).arg(core.to_string()).arg(program);
        command
    }

    /// `setpriv ... taskset -c CORE ip netns exec NS PROGRAM`: inside the namespace.
    pub fn in_netns(&self, core: u32, program: impl AsRef<OsStr>) -> Command {
        let mut command = Sandbox::on_core(core, "ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Like [`Sandbox::in_netns`], but the process first joins the cgroup:
    /// `sh -c 'echo $$ > CG/cgroup.procs && exec "$@"' CG/cgroup.procs setpriv ...`.
    pub fn in_netns_and_cgroup(&self, core: u32, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(r#"echo $$ > "$0" && exec "$@""#)
            .arg(self.cgroup.join("cgroup.procs"))
            .arg("setpriv")
            .args(PIN_AND_TIE)
            .arg(core.to_string())
            .args(["ip", "netns", "exec", &self.name])
            .arg(program);
        command
    }

    /// Waits until TCP listeners on all `ports` exist in the namespace (per `ss`), while
    /// checking that `services` keep running.
    pub fn wait_listening(
        &self,
        ports: &[u16],
        services: &mut [Service],
        timeout: Duration,
    ) -> Result<()> {
        let started = Instant::now();
        loop {
            let listening = self.listening_ports()?;
            let missing: Vec<u16> = ports
                .iter()
                .copied()
                .filter(|p| !listening.contains(p))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            for service in services.iter_mut() {
                service.check_running()?;
            }
            if started.elapsed() > timeout {
                let names: Vec<&str> = services.iter().map(|s| s.name()).collect();
                bail!(
                    "nothing listens on port(s) {missing:?} in {} after {timeout:?} (started: {})",
                    self.name,
                    names.join(", ")
                );
            }
            procs::sleep(Duration::from_millis(50))?;
        }
    }

    /// Ports with a TCP listener in the namespace (`ss -N NS -Hltn`).
    fn listening_ports(&self) -> Result<Vec<u16>> {
        let output = Command::new("ss")
            .args(["-N", &self.name, "-Hltn"])
            .output()
            .context("running `ss` (iproute2)")?;
        if !output.status.success() {
            bail!(
                "`ss -N {} -Hltn` failed: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(listening_ports(&String::from_utf8_lossy(&output.stdout)))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.netns_created {
            let _ = cmd::run(Command::new("ip").args(["netns", "del", &self.name]));
        }
        remove_cgroup(&self.cgroup, &self.cgroup_root);
        if self.bpffs.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.bpffs) {
                eprintln!(
                    "[bench] warning: cannot remove {}: {e}",
                    self.bpffs.display()
                );
            }
        }
        println!("[bench] sandbox {} removed", self.name);
    }
}

/// Removes a cgroup the bench created: every process the bench put there has been
/// stopped; any left over (only the bench's own clients ever join) goes back to the
/// parent first. The kernel may take a moment to forget exited processes, so retry.
fn remove_cgroup(cgroup: &Path, parent: &Path) {
    if !cgroup.exists() {
        return;
    }
    let started = Instant::now();
    loop {
        let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace() {
            let _ = std::fs::write(parent.join("cgroup.procs"), pid);
        }
        match std::fs::remove_dir(cgroup) {
            Ok(()) => return,
            Err(e) if started.elapsed() > Duration::from_secs(3) => {
                eprintln!(
                    "[bench] warning: cannot remove cgroup {}: {e}",
                    cgroup.display()
                );
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The cgroup v2 mount point, from /proc/mounts.
fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
        })
        .next()
        .context("no cgroup2 filesystem in /proc/mounts: keel's hooks need cgroup v2")
}

/// Removes namespaces, cgroups and bpffs folders named `keel-bench-<pid>` whose PID no
/// longer runs: leftovers of a bench that was killed before it could clean up.
pub fn remove_stale() {
    let is_stale = |name: &str| {
        name.strip_prefix(PREFIX)
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| {
                pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
            })
    };
    if let Ok(output) = Command::new("ip").args(["netns", "list"]).output() {
        let list = String::from_utf8_lossy(&output.stdout);
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if is_stale(name) {
                println!("[bench] removing the stale namespace {name}");
                let _ = cmd::run(Command::new("ip").args(["netns", "del", name]));
            }
        }
    }
    let folders = |root: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(root)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| is_stale(&e.file_name().to_string_lossy()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    };
    if let Ok(root) = cgroup2_root() {
        for cgroup in folders(&root) {
            // Empty once its processes are gone; a cgroup still in use stays.
            if std::fs::remove_dir(&cgroup).is_ok() {
                println!("[bench] removed the stale cgroup {}", cgroup.display());
            }
        }
    }
    for folder in folders(Path::new(BPFFS_ROOT)) {
        println!(
            "[bench] removing the stale bpffs folder {}",
            folder.display()
        );
        let _ = std::fs::remove_dir_all(&folder);
    }
}

/// Local ports of `ss -Hltn` lines (`LISTEN 0 4096 127.0.0.1:5201 0.0.0.0:*`).
fn listening_ports(ss_output: &str) -> Vec<u16> {
    ss_output
        .lines()
        .filter_map(|line| line.split_whitespace().nth(3))
        .filter_map(|local| local.rsplit_once(':'))
        .filter_map(|(_, port)| port.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::listening_ports;

    #[test]
    fn reads_local_ports_from_ss() {
        let output = "LISTEN 0      4096       127.0.0.1:5201      0.0.0.0:*\n\
                      LISTEN 0      128    [::ffff:127.0.0.1]:7301         *:*\n";
        assert_eq!(listening_ports(output), vec![5201, 7301]);
        assert!(listening_ports("").is_empty());
    }
}
