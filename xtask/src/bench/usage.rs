//! What a process the bench started costs: CPU time (summed over its threads, from
//! `/proc/PID/task/*/schedstat`, nanoseconds) and memory (`VmRSS` now, `VmHWM` the peak,
//! from `/proc/PID/status`; the peak is reset before a measurement by writing `5` to
//! `/proc/PID/clear_refs`, so it covers that measurement only).

use anyhow::{Context, Result};

/// CPU time used so far by every thread of `pid`, in seconds. Threads that already
/// exited are not counted (keel, Envoy, HAProxy and nginx keep theirs).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing the threads of process {pid}"))?;
    let mut nanoseconds = 0u64;
    for task in tasks.flatten() {
        let text = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        nanoseconds += parse_schedstat(&text).unwrap_or(0);
    }
    Ok(nanoseconds as f64 / 1e9)
}

/// First field of a schedstat line: time spent on the CPU, in nanoseconds.
fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// Resident memory of a process, in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss: u64,
    /// `VmHWM`: the peak since start or since [`reset_peak`].
    pub peak: u64,
}

/// Reads `VmRSS` and `VmHWM` of `pid`.
pub fn memory(pid: u32) -> Result<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_status(&text).with_context(|| format!("/proc/{pid}/status lacks VmRSS or VmHWM"))
}

fn parse_status(text: &str) -> Option<Memory> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some(Memory {
        rss: field("VmRSS:")?,
        peak: field("VmHWM:")?,
    })
}

/// Resets the peak resident size of `pid` to its current size.
pub fn reset_peak(pid: u32) -> Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("resetting the peak RSS of process {pid}"))
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: f64) -> String {
    format!("{:.1}", bytes / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_schedstat_and_status() {
        assert_eq!(parse_schedstat("123456 789 10\n"), Some(123456));
        assert_eq!(parse_schedstat(""), None);
        let status = "Name:\tkeel\nVmPeak:\t  100 kB\nVmHWM:\t    8192 kB\nVmRSS:\t    4096 kB\n";
        assert_eq!(
            parse_status(status),
            Some(Memory {
                rss: 4096 * 1024,
                peak: 8192 * 1024
            })
        );
        assert_eq!(parse_status("Name:\tx\n"), None);
        assert_eq!(mib(3.0 * 1024.0 * 1024.0), "3.0");
    }

    #[test]
    fn measures_this_process() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).unwrap() > 0.0);
        let memory = memory(pid).unwrap();
        assert!(memory.rss > 0 && memory.peak >= memory.rss, "{memory:?}");
    }
}
