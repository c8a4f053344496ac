//! Processes the bench starts, and Ctrl-C. A [`Service`] (a backend, keel, a peer
//! proxy) is stopped by its own PID when dropped: SIGTERM, then SIGKILL if it has not
//! exited within a few seconds. A client runs to completion through [`run_bounded`],
//! which kills it (by PID) when it overruns its time. Output goes to log files, so a
//! failure can quote them. Ctrl-C only sets a flag ([`catch_interrupts`]) that every
//! wait here checks, so an interrupted bench unwinds and removes what it created.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;

use crate::cmd;

/// Set once SIGINT arrived.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// How long a stopped service gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// How often waits poll.
const POLL: Duration = Duration::from_millis(20);

/// Blocks SIGINT in this thread (so in every thread and child started after it) and
/// starts a thread that waits for it and sets the flag [`check_interrupted`] reads.
/// Children inherit the blocked SIGINT, so a Ctrl-C reaches only the bench, which
/// stops them itself by PID (with SIGTERM, which stays deliverable).
pub fn catch_interrupts() -> Result<()> {
    let mut sigint = SigSet::empty();
    sigint.add(Signal::SIGINT);
    sigint.thread_block().context("blocking SIGINT")?;
    std::thread::Builder::new()
        .name("sigint".into())
        .spawn(move || {
            if sigint.wait().is_ok() {
                eprintln!("\n[bench] interrupted: stopping and cleaning up");
                INTERRUPTED.store(true, Ordering::SeqCst);
            }
        })
        .context("starting the SIGINT thread")?;
    Ok(())
}

/// An error once Ctrl-C was pressed.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `duration` in short steps, returning early with an error on Ctrl-C.
pub fn sleep(duration: Duration) -> Result<()> {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        check_interrupted()?;
        std::thread::sleep(POLL.min(until - Instant::now()));
    }
    Ok(())
}

/// A long-running process the bench started; stopped by PID when dropped.
pub struct Service {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Service {
    /// Starts `command` with stdout and stderr going to `<logs>/<name>.log`.
    pub fn start(name: &str, command: &mut Command, logs: &Path) -> Result<Service> {
        let log = logs.join(format!("{name}.log"));
        let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let stderr = file
            .try_clone()
            .context("duplicating the log file handle")?;
        cmd::announce(command);
        let child = command
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start `{}`", cmd::describe(command)))?;
        println!(
            "[bench] started {name} (pid {}), log {}",
            child.id(),
            log.display()
        );
        Ok(Service {
            name: name.to_string(),
            child,
            log,
        })
    }

    /// Its process id (the proxy itself: `setpriv`, `taskset` and `ip netns exec`
    /// each exec the next program).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// An error (with the end of its log) if the service has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().context("polling a service")? {
            bail!(
                "{} exited ({status}); the end of {}:\n{}",
                self.name,
                self.log.display(),
                log_tail(&self.log)
            );
        }
        Ok(())
    }

    /// Waits until the service's log contains `needle`; an error if it exits first or
    /// `timeout` passes.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains(needle) {
                return Ok(());
            }
            self.check_running()?;
            if started.elapsed() > timeout {
                bail!(
                    "{} did not log {needle:?} within {timeout:?}; the end of {}:\n{}",
                    self.name,
                    self.log.display(),
                    log_tail(&self.log)
                );
            }
            sleep(POLL)?;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < STOP_GRACE {
            if let Ok(Some(_)) = self.child.try_wait() {
                println!("[bench] stopped {} (pid {pid})", self.name);
                return;
            }
            std::thread::sleep(POLL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        println!(
            "[bench] killed {} (pid {pid}): it ignored SIGTERM for {STOP_GRACE:?}",
            self.name
        );
    }
}

/// What a bounded run produced.
pub struct Finished {
    /// How the process exited.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: String,
    /// Where its standard error went.
    pub stderr_log: PathBuf,
}

impl Finished {
    /// The last lines of its standard error.
    pub fn stderr_tail(&self) -> String {
        log_tail(&self.stderr_log)
    }
}

/// Runs `command` to completion, killing it (by PID) if it runs longer than `timeout`
/// or on Ctrl-C. Stdout is returned; stderr goes to `<logs>/<name>.err`.
pub fn run_bounded(
    name: &str,
    command: &mut Command,
    logs: &Path,
    timeout: Duration,
) -> Result<Finished> {
    let out_path = logs.join(format!("{name}.out"));
    let err_path = logs.join(format!("{name}.err"));
    let out =
        File::create(&out_path).with_context(|| format!("creating {}", out_path.display()))?;
    let err =
        File::create(&err_path).with_context(|| format!("creating {}", err_path.display()))?;
    cmd::announce(command);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("cannot start `{}`", cmd::describe(command)))?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().context("polling a client")? {
            break status;
        }
        let overran = started.elapsed() > timeout;
        if overran || check_interrupted().is_err() {
            let _ = child.kill();
            let _ = child.wait();
            check_interrupted()?;
            bail!(
                "{name} ran longer than {timeout:?} and was killed (pid {})",
                child.id()
            );
        }
        std::thread::sleep(POLL);
    };
    let stdout = std::fs::read_to_string(&out_path)
        .with_context(|| format!("reading {}", out_path.display()))?;
    Ok(Finished {
        status,
        stdout,
        stderr_log: err_path,
    })
}

/// The last 20 lines of a log file (or a note that it cannot be read).
fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
