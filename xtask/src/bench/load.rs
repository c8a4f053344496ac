//! Load generators and their results. Bulk throughput is iperf3's (`-J` output parsed by
//! [`parse_iperf3`]); new connections per second come from a small loop of our own:
//! [`serve_one_byte`] is the backend (accept, write one byte, close) and
//! [`connect_loop_main`] the client (connect, read that byte and the end of the stream,
//! close; a connection counts only when the byte arrived, so a proxy that accepts but
//! cannot reach the backend scores zero). Both run as `xtask bench --serve-one-byte` /
//! `--connect-loop` processes, so the bench can place them in its namespace, its cgroup
//! and on a chosen core. Every loop is bounded in time and count.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Parallel connections of the connect loop by default.
pub const CONNECT_LOOP_THREADS: usize = 4;

/// Connect and read timeout of one connection of the loop.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Upper bound on connections per thread of one loop (far above what a few seconds allow).
const MAX_CONNECTIONS_PER_THREAD: u64 = 5_000_000;

/// A loop thread gives up after this many failed connections.
const MAX_ERRORS_PER_THREAD: u64 = 100;

/// The longest a one-byte server lives even if nobody stops it.
const SERVER_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// The longest one connect loop may run.
const MAX_LOOP_SECONDS: f64 = 600.0;

/// One iperf3 run, as the receiver saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Iperf3 {
    /// Bytes received.
    pub bytes: u64,
    /// Seconds measured (the omitted warm-up excluded).
    pub seconds: f64,
    /// Received bits per second.
    pub bits_per_second: f64,
    /// TCP retransmissions the sender counted, when reported.
    pub retransmits: Option<u64>,
}

/// Reads the result of `iperf3 -c ... -J`; an error when iperf3 reported one or the
/// receiver got nothing.
pub fn parse_iperf3(json_text: &str) -> Result<Iperf3> {
    let value: Value = serde_json::from_str(json_text).context("iperf3 did not print JSON")?;
    if let Some(error) = value.get("error").and_then(Value::as_str) {
        bail!("iperf3: {error}");
    }
    let received = &value["end"]["sum_received"];
    let result = Iperf3 {
        bytes: received["bytes"]
            .as_u64()
            .context("iperf3 JSON lacks end.sum_received.bytes")?,
        seconds: received["seconds"]
            .as_f64()
            .context("iperf3 JSON lacks end.sum_received.seconds")?,
        bits_per_second: received["bits_per_second"]
            .as_f64()
            .context("iperf3 JSON lacks end.sum_received.bits_per_second")?,
        retransmits: value["end"]["sum_sent"]["retransmits"].as_u64(),
    };
    if result.bytes == 0 || result.bits_per_second <= 0.0 {
        bail!("iperf3 moved no data (0 bytes received)");
    }
    Ok(result)
}

/// What one connect loop counted.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectLoop {
    /// Connections that completed: connected, got the byte, saw the end of the stream.
    pub connections: u64,
    /// Connections that failed.
    pub errors: u64,
    /// Wall time of the loop.
    pub seconds: f64,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

impl ConnectLoop {
    /// Completed connections per second.
    pub fn per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.connections as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// The loop's result as the JSON line the loop process prints.
    fn to_json(&self) -> Value {
        json!({
            "connections": self.connections,
            "errors": self.errors,
            "seconds": self.seconds,
            "first_error": self.first_error,
        })
    }

    /// Reads what [`connect_loop_main`] printed.
    pub fn parse(text: &str) -> Result<ConnectLoop> {
        let value: Value =
            serde_json::from_str(text.trim()).context("the connect loop did not print JSON")?;
        Ok(ConnectLoop {
            connections: value["connections"].as_u64().context("no `connections`")?,
            errors: value["errors"].as_u64().context("no `errors`")?,
            seconds: value["seconds"].as_f64().context("no `seconds`")?,
            first_error: value["first_error"].as_str().map(str::to_string),
        })
    }
}

/// `xtask bench --serve-one-byte ADDRESS`: accepts connections one after another,
/// writes one byte to each and closes it. Stops when its parent (the bench) is gone,
/// after [`SERVER_LIFETIME`], or when killed.
pub fn serve_one_byte(address: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(address).with_context(|| format!("binding {address}"))?;
    let parent = nix::unistd::getppid();
    std::thread::spawn(move || {
        let started = Instant::now();
        while nix::unistd::getppid() == parent && started.elapsed() < SERVER_LIFETIME {
            std::thread::sleep(Duration::from_millis(500));
        }
        std::process::exit(0);
    });
    for stream in listener.incoming() {
        match stream {
            // A failed write concerns one connection only; the client counts it.
            Ok(mut stream) => {
                let _ = stream.write_all(b"k");
            }
            // Out of descriptors or memory: give the system a moment.
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    Ok(())
}

/// `xtask bench --connect-loop ADDRESS --threads N --seconds S`: N threads open and
/// close connections to ADDRESS for S seconds; prints a [`ConnectLoop`] as JSON.
pub fn connect_loop_main(address: SocketAddr, threads: usize, seconds: f64) -> Result<()> {
    if !(seconds > 0.0 && seconds <= MAX_LOOP_SECONDS) || threads == 0 || threads > 64 {
        bail!("--connect-loop needs 0 < --seconds <= {MAX_LOOP_SECONDS} and 1..=64 --threads");
    }
    let result = connect_loop(address, threads, Duration::from_secs_f64(seconds));
    println!("{}", result.to_json());
    Ok(())
}

/// Runs the loop in this process.
fn connect_loop(address: SocketAddr, threads: usize, duration: Duration) -> ConnectLoop {
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..threads)
        .map(|_| std::thread::spawn(move || connect_until(address, deadline)))
        .collect();
    let mut total = ConnectLoop {
        connections: 0,
        errors: 0,
        seconds: 0.0,
        first_error: None,
    };
    for worker in workers {
        let (connections, errors, first_error) =
            worker
                .join()
                .unwrap_or((0, 1, Some("thread panicked".into())));
        total.connections += connections;
        total.errors += errors;
        total.first_error = total.first_error.or(first_error);
    }
    total.seconds = started.elapsed().as_secs_f64();
    total
}

/// One thread of the loop: (completed, failed, first failure).
fn connect_until(address: SocketAddr, deadline: Instant) -> (u64, u64, Option<String>) {
    let (mut completed, mut failed, mut first_error) = (0, 0, None);
    while Instant::now() < deadline && completed < MAX_CONNECTIONS_PER_THREAD {
        match one_connection(address) {
            Ok(()) => completed += 1,
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{address}: {e}"));
                if failed >= MAX_ERRORS_PER_THREAD {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    (completed, failed, first_error)
}

/// Connect, read exactly one byte and then the end of the stream, close.
fn one_connection(address: SocketAddr) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&address, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buf = [0u8; 16];
    let mut received = 0;
    loop {
        match stream.read(&mut buf)? {
            0 => break,
            n => received += n,
        }
        if received > 1 {
            break;
        }
    }
    if received != 1 {
        return Err(std::io::Error::other(format!(
            "expected 1 byte then the end, got {received} byte(s)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_iperf3_results_and_errors() {
        let ok = r#"{"start":{},"end":{"sum_sent":{"bytes":100,"retransmits":3},
            "sum_received":{"bytes":1000,"seconds":2.0,"bits_per_second":4000.0}}}"#;
        let result = parse_iperf3(ok).unwrap();
        assert_eq!(
            result,
            Iperf3 {
                bytes: 1000,
                seconds: 2.0,
                bits_per_second: 4000.0,
                retransmits: Some(3)
            }
        );
        let failed =
            r#"{"start":{},"end":{},"error":"unable to connect to server: Connection refused"}"#;
        let error = parse_iperf3(failed).unwrap_err().to_string();
        assert!(error.contains("Connection refused"), "{error}");
        let empty = r#"{"end":{"sum_received":{"bytes":0,"seconds":1.0,"bits_per_second":0.0}}}"#;
        assert!(parse_iperf3(empty).is_err(), "zero bytes is a failure");
        assert!(parse_iperf3("iperf3: error").is_err());
    }

    #[test]
    fn connect_loop_counts_completed_connections_against_a_one_byte_server() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let _ = stream.write_all(b"k");
            }
        });
        let result = connect_loop(address, 2, Duration::from_millis(200));
        assert!(result.connections > 0, "{result:?}");
        assert_eq!(result.errors, 0, "{result:?}");
        let parsed = ConnectLoop::parse(&result.to_json().to_string()).unwrap();
        assert_eq!(parsed, result);
    }

    #[test]
    fn connect_loop_counts_failures_when_nothing_listens() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let result = connect_loop(address, 1, Duration::from_millis(100));
        assert_eq!(result.connections, 0);
        assert!(
            result.errors > 0 && result.first_error.is_some(),
            "{result:?}"
        );
        assert_eq!(result.per_second(), 0.0);
    }
}
