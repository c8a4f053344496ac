//! Scenario `instructions`: userspace instructions per proxied request, counted by
//! valgrind's callgrind, for keel and its peers.
//!
//! req/s and CPU time move with whatever else runs on a shared machine; the number of
//! instructions a proxy executes per request does not (repeated runs agree within a
//! fraction of a per cent). It is therefore the figure to compare a change of keel's
//! userspace against, and to compare keel's userspace with the peers'. It counts
//! userspace only: the kernel's share of a request (the same four syscalls for every
//! proxy here) is not in it, nor are cache misses or atomic operations, which cost
//! more cycles than plain instructions.
//!
//! Per protocol (HTTP/1.1 keep-alive, `h2load --h1 -c50`; h2c, `h2load -c50 -m10`;
//! both with an HTTP/1.1 upstream) and per peer: the proxy starts under
//! `valgrind --tool=callgrind`, serves a warm-up, its counters are zeroed
//! (`callgrind_control -z`), it serves N requests, and its counters are dumped
//! (`callgrind_control -d`): instructions / N. The dumps stay in
//! `target/bench/instructions/` for `callgrind_annotate`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use super::http::{self, Peer, Started, LOAD_CORE};
use super::httpload;
use super::peers::{HttpRoute, Protocol};
use super::procs::{self, Service};
use super::report::{self, Table};
use super::sandbox::Sandbox;
use super::Context;

/// How long a proxy may take to start under valgrind (Envoy takes the longest).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(180);
/// How long one h2load run may take (a proxy under valgrind serves ~1-2k req/s).
const LOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// Requests served before the counters are zeroed.
const WARM_UP_REQUESTS: usize = 2_000;

/// Requests counted per peer and protocol.
fn measured_requests(ctx: &Context) -> usize {
    if ctx.quick {
        2_000
    } else {
        10_000
    }
}

/// The downstream protocols measured, with the h2load arguments that drive them.
const PROTOCOLS: &[(Protocol, &str, &[&str])] = &[
    (Protocol::Http1, "h1", &["--h1", "-c", "50"]),
    (Protocol::H2c, "h2c", &["-c", "50", "-m", "10"]),
];

/// One peer's counts per protocol (`None`: skipped).
struct Counted {
    peer: Peer,
    per_request: Vec<Option<f64>>,
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Result<()> {
    let stem = http::result_stem("instructions", ctx.quick);
    let dir = ctx.out_dir.join(&stem);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let requests = measured_requests(ctx);
    let load_before = report::load_average()?;
    let started = Instant::now();
    let (sandbox, backend) = http::sandbox_with_backend(ctx, &dir)?;
    let mut skipped = Vec::new();
    let mut counted = Vec::new();
    for peer in [Peer::Keel, Peer::Envoy, Peer::Haproxy, Peer::Nginx] {
        if let (Peer::Envoy, Err(reason)) = (peer, &ctx.envoy) {
            skipped.push((peer, reason.clone()));
            continue;
        }
        let mut per_request = Vec::new();
        for (protocol, name, load_args) in PROTOCOLS {
            procs::check_interrupted()?;
            let route = HttpRoute {
                listen: peer.address(),
                backend: http::BACKEND.parse().expect("constant address"),
                downstream: *protocol,
                upstream: Protocol::Http1,
                grpc: false,
                long_requests: false,
            };
            let label = format!("{}-{name}", peer.name());
            let instructions = count(
                ctx, &sandbox, &dir, peer, &route, &label, load_args, requests,
            )?;
            println!("[bench] instructions/{label}: {instructions:.0} instructions per request");
            per_request.push(Some(instructions));
        }
        counted.push(Counted { peer, per_request });
    }
    drop(backend);
    drop(sandbox);
    let load_after = report::load_average()?;
    let elapsed = started.elapsed();

    let keel = counted
        .iter()
        .find(|c| matches!(c.peer, Peer::Keel))
        .map(|c| c.per_request.clone())
        .context("keel was not measured")?;
    let mut header = vec!["peer"];
    for (_, name, _) in PROTOCOLS {
        header.push(match *name {
            "h1" => "h1 instructions/req",
            _ => "h2c instructions/req",
        });
    }
    for (_, name, _) in PROTOCOLS {
        header.push(match *name {
            "h1" => "keel ÷ peer (h1)",
            _ => "keel ÷ peer (h2c)",
        });
    }
    let mut table = Table::new(&header);
    let mut peers_json = serde_json::Map::new();
    for c in &counted {
        let mut row = vec![c.peer.name().to_string()];
        row.extend(
            c.per_request
                .iter()
                .map(|v| v.map_or_else(|| "–".into(), |v| format!("{v:.0}"))),
        );
        row.extend(c.per_request.iter().zip(&keel).map(|(peer, keel)| {
            report::ratio(match (keel, peer) {
                (Some(keel), Some(peer)) => Some(keel / peer),
                _ => None,
            })
        }));
        table.row(row);
        let values: serde_json::Map<String, Value> = PROTOCOLS
            .iter()
            .zip(&c.per_request)
            .map(|((_, name, _), v)| (name.to_string(), json!(v)))
            .collect();
        peers_json.insert(c.peer.name().into(), Value::Object(values));
    }
    let skipped_text: String = skipped
        .iter()
        .map(|(peer, reason)| format!(" {} skipped: {reason}.", peer.name()))
        .collect();
    let notes = format!(
        "Scenario `instructions`: userspace instructions per request, counted by valgrind's callgrind \
         (not timed: independent of other work on the machine). Per peer and protocol: warm-up of \
         {WARM_UP_REQUESTS} requests, counters zeroed, {requests} requests counted (h2load: h1 `--h1 -c50`, \
         h2c `-c50 -m10`; HTTP/1.1 upstream, 64-byte responses). Userspace only: the kernel's share \
         (the same syscalls per request for every proxy) is not included, nor the extra cycles of cache \
         misses and atomic operations; keel ÷ peer below 1 means fewer instructions for keel. Dumps \
         for `callgrind_annotate` in target/bench/{stem}/.{skipped_text} Load average before: {:.2} {:.2} \
         {:.2}; after: {:.2} {:.2} {:.2}; run took {:.0} s.\n",
        load_before[0],
        load_before[1],
        load_before[2],
        load_after[0],
        load_after[1],
        load_after[2],
        elapsed.as_secs_f64(),
    );
    let json = json!({
        "scenario": "instructions",
        "quick": ctx.quick,
        "time": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "machine": report::machine(),
        "requests": requests,
        "warm_up_requests": WARM_UP_REQUESTS,
        "instructions_per_request": Value::Object(peers_json),
        "skipped": skipped.iter().map(|(p, r)| json!({"peer": p.name(), "reason": r})).collect::<Vec<_>>(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "seconds": elapsed.as_secs_f64(),
    });
    let written = report::publish(&ctx.out_dir, &stem, &table.to_markdown(), &notes, &json)?;
    report::announce(&written);
    Ok(())
}

/// Counts `peer`'s userspace instructions per request for one protocol.
#[allow(clippy::too_many_arguments)]
fn count(
    ctx: &Context,
    sandbox: &Sandbox,
    dir: &Path,
    peer: Peer,
    route: &HttpRoute,
    label: &str,
    load_args: &[&str],
    requests: usize,
) -> Result<f64> {
    let out_file = dir.join(format!("callgrind.{label}"));
    remove_dumps(&out_file)?;
    let wrapper: Vec<OsString> = vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        format!("--callgrind-out-file={}", out_file.display()).into(),
    ];
    let mut service = match http::start_peer_under(ctx, sandbox, dir, peer, route, &wrapper)? {
        Started::Running(service) => service,
        Started::Skipped(reason) => bail!("{} is not installed: {reason}", peer.name()),
    };
    sandbox.wait_listening(
        &[peer.address().port()],
        std::slice::from_mut(&mut service),
        STARTUP_TIMEOUT,
    )?;
    let url = format!("http://{}/", peer.address());
    // The warm-up opens the upstream connections; under valgrind a proxy is slow enough
    // for some of its first requests to fail (Envoy's upstream connect timeouts), so
    // only the counted requests must all succeed.
    load(
        sandbox,
        dir,
        &format!("{label}-warmup"),
        load_args,
        WARM_UP_REQUESTS,
        &url,
        false,
    )?;
    callgrind_control(&service, "-z", dir, label)?;
    load(sandbox, dir, label, load_args, requests, &url, true)?;
    callgrind_control(&service, "-d", dir, label)?;
    let dump = PathBuf::from(format!("{}.1", out_file.display()));
    let instructions = total_instructions(&dump)?;
    service.check_running()?;
    drop(service);
    Ok(instructions / requests as f64)
}

/// Removes the dumps of an earlier run (`<out_file>` and `<out_file>.N`).
fn remove_dumps(out_file: &Path) -> Result<()> {
    let (Some(dir), Some(name)) = (out_file.parent(), out_file.file_name()) else {
        return Ok(());
    };
    let name = name.to_string_lossy().into_owned();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let file = entry.file_name().to_string_lossy().into_owned();
        if file == name || file.starts_with(&format!("{name}.")) {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Runs h2load for `requests` requests on the load core; with `all_must_succeed`,
/// every request must succeed (else at least one).
fn load(
    sandbox: &Sandbox,
    dir: &Path,
    name: &str,
    args: &[&str],
    requests: usize,
    url: &str,
    all_must_succeed: bool,
) -> Result<()> {
    let finished = procs::run_bounded(
        &format!("h2load-{name}"),
        sandbox
            .in_netns(LOAD_CORE, "h2load")
            .args(args)
            .args(["-n", &requests.to_string(), url]),
        dir,
        LOAD_TIMEOUT,
    )?;
    let result = httpload::parse_h2load(&finished.stdout)
        .with_context(|| format!("h2load {name}: {}", finished.stderr_tail()))?;
    let failed = result.requests != requests as u64 || result.errors > 0;
    if (all_must_succeed && failed) || result.requests == 0 {
        bail!(
            "h2load {name}: {} of {requests} requests succeeded, {} failed",
            result.requests,
            result.errors
        );
    }
    Ok(())
}

/// `callgrind_control ACTION PID` (`-z` zeroes the counters, `-d` dumps them).
fn callgrind_control(service: &Service, action: &str, dir: &Path, label: &str) -> Result<()> {
    let finished = procs::run_bounded(
        &format!("callgrind_control-{label}{action}"),
        Command::new("callgrind_control")
            .arg(action)
            .arg(service.pid().to_string()),
        dir,
        Duration::from_secs(60),
    )?;
    if !finished.status.success() {
        bail!(
            "callgrind_control {action} {} failed: {}",
            service.pid(),
            finished.stderr_tail()
        );
    }
    Ok(())
}

/// The instruction count of a callgrind dump (its `totals:` or `summary:` line).
fn total_instructions(dump: &Path) -> Result<f64> {
    let text = std::fs::read_to_string(dump)
        .with_context(|| format!("reading the callgrind dump {}", dump.display()))?;
    parse_totals(&text).with_context(|| format!("{}: no totals line", dump.display()))
}

fn parse_totals(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| {
            line.strip_prefix("totals:")
                .or_else(|| line.strip_prefix("summary:"))
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
}

#[cfg(test)]
mod tests {
    use super::parse_totals;

    #[test]
    fn reads_the_total_of_a_dump() {
        let dump = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nfn=(1) main\n5 10\n\ntotals: 325298220\n";
        assert_eq!(parse_totals(dump), Some(325_298_220.0));
        assert_eq!(parse_totals("summary: 42\n"), Some(42.0));
        assert_eq!(parse_totals("events: Ir\n"), None);
    }
}
