//! What a benchmark shows: markdown tables for stdout and docs, the machine's load
//! average (recorded before and after, since the machine is shared), number formats,
//! and JSON written under target/bench.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

/// The 1-, 5- and 15-minute load averages from /proc/loadavg.
pub fn load_average() -> Result<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").context("reading /proc/loadavg")?;
    parse_load_average(&text).context("/proc/loadavg has an unexpected format")
}

fn parse_load_average(text: &str) -> Option<[f64; 3]> {
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

/// Clock ticks per second of /proc/stat and /proc/<pid>/stat (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU time used so far, by the whole machine and by the bench (this process and the
/// children it has waited for), to tell how much other work shared the cores.
#[derive(Debug, Clone, Copy)]
pub struct CpuTimes {
    machine_busy: f64,
    bench: f64,
    at: std::time::Instant,
}

impl CpuTimes {
    /// Reads /proc/stat and /proc/self/stat.
    pub fn now() -> Result<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let own = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
        Ok(CpuTimes {
            machine_busy: machine_busy_ticks(&stat).context("/proc/stat has no cpu line")?
                / TICKS_PER_SECOND,
            bench: own_and_children_ticks(&own).context("/proc/self/stat has too few fields")?
                / TICKS_PER_SECOND,
            at: std::time::Instant::now(),
        })
    }

    /// Cores busy on average since `earlier` with work that is not the bench's
    /// (processes the bench started count once they have been waited for). An upper
    /// bound: kernel threads that handled the bench's packets (ksoftirqd) count as other.
    pub fn others_since(&self, earlier: &CpuTimes) -> f64 {
        let wall = (self.at - earlier.at).as_secs_f64();
        let others = (self.machine_busy - earlier.machine_busy) - (self.bench - earlier.bench);
        if wall > 0.0 {
            (others / wall).max(0.0)
        } else {
            0.0
        }
    }
}

/// Busy ticks of all CPUs: user, nice, system, irq, softirq and steal of the `cpu` line.
fn machine_busy_ticks(proc_stat: &str) -> Option<f64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map_while(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| ticks.get(i).copied().unwrap_or(0.0));
    (ticks.len() >= 4).then(|| busy.sum())
}

/// utime + stime + cutime + cstime of a /proc/<pid>/stat line.
fn own_and_children_ticks(pid_stat: &str) -> Option<f64> {
    // Fields after the command name (which may hold spaces) start at field 3, `state`.
    let (_, rest) = pid_stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    (11..=14).map(|i| fields.get(i)?.parse::<f64>().ok()).sum()
}

/// The kernel release and the number of CPUs, for the record.
pub fn machine() -> Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    serde_json::json!({ "kernel": kernel.trim(), "cpus": cpus })
}

/// A markdown table.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row (one cell per column).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as GitHub markdown, columns padded for reading in a terminal; every
    /// column but the first is right-aligned (they hold numbers).
    pub fn to_markdown(&self) -> String {
        let columns = self.header.len();
        let width = |c: usize| {
            std::iter::once(&self.header)
                .chain(&self.rows)
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
                .max(3)
        };
        let widths: Vec<usize> = (0..columns).map(width).collect();
        let line = |cells: &[String]| {
            let padded: Vec<String> = (0..columns)
                .map(|c| {
                    let cell = cells.get(c).map_or("", String::as_str);
                    if c == 0 {
                        format!("{cell:<w$}", w = widths[c])
                    } else {
                        format!("{cell:>w$}", w = widths[c])
                    }
                })
                .collect();
            format!("| {} |\n", padded.join(" | "))
        };
        let rule: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(c, &w)| {
                if c == 0 {
                    "-".repeat(w)
                } else {
                    format!("{}:", "-".repeat(w - 1))
                }
            })
            .collect();
        let mut out = line(&self.header);
        out.push_str(&format!("| {} |\n", rule.join(" | ")));
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).context("serialising the results")?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Prints a scenario's table and notes, and writes them to `<out_dir>/<stem>.md` and
/// `json` to `<out_dir>/<stem>.json`; returns the two paths, JSON first.
pub fn publish(
    out_dir: &Path,
    stem: &str,
    table: &str,
    notes: &str,
    json: &Value,
) -> Result<Vec<PathBuf>> {
    println!("\n{table}\n{notes}");
    let md = out_dir.join(format!("{stem}.md"));
    std::fs::write(&md, format!("{table}\n{notes}"))
        .with_context(|| format!("writing {}", md.display()))?;
    let json_path = out_dir.join(format!("{stem}.json"));
    write_json(&json_path, json)?;
    Ok(vec![json_path, md])
}

/// Says where a scenario's results went.
pub fn announce(written: &[PathBuf]) {
    let names: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    println!("[bench] results: {}", names.join(", "));
}

/// `0.987×`, or `–` without a ratio.
pub fn ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_string(), |r| format!("{r:.3}×"))
}

/// A fraction as a percentage: `1.2 %`.
pub fn percent(fraction: f64) -> String {
    format!("{:.1} %", fraction * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_times() {
        let stat = "cpu  100 5 50 1000 7 3 2 1 0 0\ncpu0 50 2 25 500 3 1 1 0 0 0\n";
        assert_eq!(machine_busy_ticks(stat), Some(161.0));
        assert_eq!(machine_busy_ticks("intr 1 2"), None);
        let own = "42 (x task) S 1 42 42 0 -1 4194304 10 0 0 0 7 3 20 10 20 0 1 0 5 0 0";
        assert_eq!(own_and_children_ticks(own), Some(40.0));
        assert!(CpuTimes::now().is_ok());
    }

    #[test]
    fn reads_load_average() {
        assert_eq!(
            parse_load_average("0.52 1.10 2.00 1/234 5678\n"),
            Some([0.52, 1.10, 2.0])
        );
        assert_eq!(parse_load_average("garbage"), None);
    }

    #[test]
    fn renders_an_aligned_markdown_table() {
        let mut table = Table::new(&["path", "Gbit/s"]);
        table.row(vec!["direct".into(), "40.1".into()]);
        table.row(vec!["kernel".into(), "39.87".into()]);
        let text = table.to_markdown();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "| path   | Gbit/s |");
        assert_eq!(lines[1], "| ------ | -----: |");
        assert_eq!(lines[2], "| direct |   40.1 |");
        assert_eq!(lines[3], "| kernel |  39.87 |");
        assert_eq!(ratio(Some(0.98765)), "0.988×");
        assert_eq!(ratio(None), "–");
        assert_eq!(percent(0.0123), "1.2 %");
    }
}
