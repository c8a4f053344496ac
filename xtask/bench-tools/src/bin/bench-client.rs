//! `bench-client`: the load clients of `cargo xtask bench` that wrk and h2load do not
//! cover.
//!
//! - `latency`: an open-loop client at a fixed request rate (wrk2-style). Each of
//!   `--connections` threads owns one HTTP/1.1 keep-alive connection and a schedule of
//!   intended send times (rate / connections per second, the threads' schedules
//!   staggered); a request's latency is measured from its *intended* send time, so a
//!   slow response that delays the next sends is charged to those requests too
//!   (coordinated omission corrected). The uncorrected service time is reported beside
//!   it. Prints one JSON object.
//! - `hold-h1`: opens N HTTP/1.1 connections, makes one request on each, and keeps them
//!   all open and idle; prints `ready` when every request got its response.
//! - `hold-h2`: opens C h2c connections and starts S requests to `/hold/MS` on each
//!   (the backend holds the responses), keeping C × S streams open; prints `sent` when
//!   every request was started.
//!
//! Every mode is bounded in time (`--seconds`) and exits when its parent is gone.

#![forbid(unsafe_code)]

use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use keel_bench_tools::{read_response, Latencies};
use serde_json::json;

/// Command line.
#[derive(Parser)]
#[command(about = "load clients of `cargo xtask bench`")]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Fixed-rate HTTP/1.1 requests; latency percentiles as JSON.
    Latency {
        /// Where to send the requests.
        #[arg(long)]
        target: SocketAddr,
        /// Request path.
        #[arg(long, default_value = "/")]
        path: String,
        /// Requests per second, all connections together.
        #[arg(long)]
        rate: f64,
        /// Keep-alive connections (one thread each).
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Measured seconds.
        #[arg(long)]
        seconds: f64,
        /// Seconds at the same rate before, not recorded.
        #[arg(long, default_value_t = 0.5)]
        warmup: f64,
    },
    /// Hold N idle HTTP/1.1 connections, each after one request.
    HoldH1 {
        /// Where to connect.
        #[arg(long)]
        target: SocketAddr,
        /// Connections.
        #[arg(long)]
        connections: usize,
        /// Exit after this long.
        #[arg(long, default_value_t = 120.0)]
        seconds: f64,
    },
    /// Hold C h2c connections with S open streams each.
    HoldH2 {
        /// Where to connect.
        #[arg(long)]
        target: SocketAddr,
        /// Connections.
        #[arg(long)]
        connections: usize,
        /// Streams per connection.
        #[arg(long)]
        streams: usize,
        /// How long the backend holds each response.
        #[arg(long, default_value_t = 60_000)]
        hold_ms: u64,
        /// Exit after this long.
        #[arg(long, default_value_t = 120.0)]
        seconds: f64,
        /// The backend, asked (`GET /held`) until it holds every stream; then `ready`.
        #[arg(long)]
        backend: SocketAddr,
    },
}

/// Bounds on what one run may ask for.
const MAX_SECONDS: f64 = 900.0;
const MAX_CONNECTIONS: usize = 200_000;
/// Requests in flight while the holders open their connections.
const OPEN_CONCURRENCY: usize = 64;
/// A latency thread gives up after this many failed requests.
const MAX_ERRORS_PER_THREAD: u64 = 100;

fn main() -> Result<()> {
    let args = Args::parse();
    match args.mode {
        Mode::Latency {
            target,
            path,
            rate,
            connections,
            seconds,
            warmup,
        } => {
            check_bounds(seconds + warmup, connections)?;
            if !(rate > 0.0 && rate <= 1e6) {
                bail!("--rate must be in (0, 1000000]");
            }
            latency(target, &path, rate, connections, seconds, warmup)
        }
        Mode::HoldH1 {
            target,
            connections,
            seconds,
        } => {
            check_bounds(seconds, connections)?;
            runtime()?.block_on(&tokio_runtime()?, hold_h1(target, connections, seconds))
        }
        Mode::HoldH2 {
            target,
            connections,
            streams,
            hold_ms,
            seconds,
            backend,
        } => {
            check_bounds(seconds, connections.saturating_mul(streams))?;
            runtime()?.block_on(
                &tokio_runtime()?,
                hold_h2(target, connections, streams, hold_ms, seconds, backend),
            )
        }
    }
}

fn check_bounds(seconds: f64, connections: usize) -> Result<()> {
    if !(seconds > 0.0 && seconds <= MAX_SECONDS) {
        bail!("--seconds must be in (0, {MAX_SECONDS}]");
    }
    if connections == 0 || connections > MAX_CONNECTIONS {
        bail!("connections (× streams) must be in 1..={MAX_CONNECTIONS}");
    }
    Ok(())
}

fn runtime() -> Result<tokio::task::LocalSet> {
    Ok(tokio::task::LocalSet::new())
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// What one latency thread measured.
#[derive(Default)]
struct ThreadResult {
    corrected: Vec<u32>,
    uncorrected: Vec<u32>,
    requests: u64,
    errors: u64,
    non_2xx: u64,
    first_error: Option<String>,
}

fn latency(
    target: SocketAddr,
    path: &str,
    rate: f64,
    connections: usize,
    seconds: f64,
    warmup: f64,
) -> Result<()> {
    // Sleeps end within a microsecond or so of when they were asked to, not 50 µs late.
    let _ = nix::sys::prctl::set_timerslack(1);
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes();
    let interval = Duration::from_secs_f64(connections as f64 / rate);
    let started = Instant::now() + Duration::from_millis(50);
    let record_from = started + Duration::from_secs_f64(warmup);
    let end = record_from + Duration::from_secs_f64(seconds);
    let threads: Vec<_> = (0..connections)
        .map(|index| {
            let request = request.clone();
            let first = started + interval.mul_f64(index as f64 / connections as f64);
            std::thread::spawn(move || {
                latency_thread(target, &request, first, interval, record_from, end)
            })
        })
        .collect();
    let mut total = ThreadResult::default();
    for thread in threads {
        let result = thread.join().unwrap_or_else(|_| ThreadResult {
            errors: 1,
            first_error: Some("thread panicked".into()),
            ..ThreadResult::default()
        });
        total.corrected.extend(result.corrected);
        total.uncorrected.extend(result.uncorrected);
        total.requests += result.requests;
        total.errors += result.errors;
        total.non_2xx += result.non_2xx;
        total.first_error = total.first_error.or(result.first_error);
    }
    let corrected = Latencies::new(total.corrected);
    let uncorrected = Latencies::new(total.uncorrected);
    let spectrum: Vec<[f64; 2]> = corrected
        .spectrum()
        .into_iter()
        .map(|(p, us)| [p, f64::from(us)])
        .collect();
    let output = json!({
        "target_rate": rate,
        "achieved_rate": corrected.count() as f64 / seconds,
        "seconds": seconds,
        "connections": connections,
        "requests": total.requests,
        "errors": total.errors,
        "non_2xx": total.non_2xx,
        "first_error": total.first_error,
        "corrected": corrected.to_json(),
        "uncorrected": uncorrected.to_json(),
        "spectrum": spectrum,
    });
    println!("{output}");
    Ok(())
}

fn latency_thread(
    target: SocketAddr,
    request: &[u8],
    first: Instant,
    interval: Duration,
    record_from: Instant,
    end: Instant,
) -> ThreadResult {
    let mut result = ThreadResult::default();
    let mut connection: Option<TcpStream> = None;
    let mut buffer = Vec::with_capacity(16 * 1024);
    let mut intended = first;
    while intended < end && result.errors < MAX_ERRORS_PER_THREAD {
        let now = Instant::now();
        if now < intended {
            std::thread::sleep(intended - now);
        }
        let sent = Instant::now();
        let outcome = (|| -> std::io::Result<u16> {
            if connection.is_none() {
                let stream = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                buffer.clear();
                connection = Some(stream);
            }
            let stream = connection.as_mut().expect("connected above");
            stream.write_all(request)?;
            Ok(read_response(stream, &mut buffer)?.0)
        })();
        let done = Instant::now();
        result.requests += 1;
        match outcome {
            Ok(status) => {
                if !(200..300).contains(&status) {
                    result.non_2xx += 1;
                }
                if intended >= record_from {
                    result.corrected.push(micros(done - intended));
                    result.uncorrected.push(micros(done - sent));
                }
            }
            Err(error) => {
                result.errors += 1;
                result
                    .first_error
                    .get_or_insert_with(|| format!("{target}: {error}"));
                connection = None;
            }
        }
        intended += interval;
    }
    result
}

fn micros(duration: Duration) -> u32 {
    duration.as_micros().min(u128::from(u32::MAX)) as u32
}

/// Exits the process when the parent is gone or `seconds` passed.
fn watch_parent(seconds: f64) {
    let parent = nix::unistd::getppid();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(200));
        if nix::unistd::getppid() != parent || Instant::now() > deadline {
            std::process::exit(0);
        }
    });
}

async fn hold_h1(target: SocketAddr, connections: usize, seconds: f64) -> Result<()> {
    watch_parent(seconds);
    let semaphore = std::rc::Rc::new(tokio::sync::Semaphore::new(OPEN_CONCURRENCY));
    let mut opening = Vec::with_capacity(connections);
    for _ in 0..connections {
        let semaphore = semaphore.clone();
        opening.push(tokio::task::spawn_local(async move {
            let _permit = semaphore.acquire().await.context("semaphore")?;
            let stream = tokio::net::TcpStream::connect(target)
                .await
                .with_context(|| format!("connecting to {target}"))?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .context("HTTP/1.1 handshake")?;
            tokio::task::spawn_local(connection);
            let request = http::Request::get("/")
                .header(http::header::HOST, "bench")
                .body(Empty::<Bytes>::new())
                .context("building the request")?;
            let response = sender.send_request(request).await.context("request")?;
            let status = response.status();
            response.into_body().collect().await.context("body")?;
            if !status.is_success() {
                bail!("status {status}");
            }
            anyhow::Ok(sender)
        }));
    }
    let mut senders = Vec::with_capacity(connections);
    for task in opening {
        senders.push(task.await.context("opening task")??);
    }
    println!("ready: {} idle HTTP/1.1 connections", senders.len());
    std::io::stdout().flush()?;
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    drop(senders);
    Ok(())
}

async fn hold_h2(
    target: SocketAddr,
    connections: usize,
    streams: usize,
    hold_ms: u64,
    seconds: f64,
    backend: SocketAddr,
) -> Result<()> {
    watch_parent(seconds);
    let mut responses = Vec::with_capacity(connections * streams);
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        let stream = tokio::net::TcpStream::connect(target)
            .await
            .with_context(|| format!("connecting to {target}"))?;
        let (sender, connection) =
            hyper::client::conn::http2::handshake(LocalExec, TokioIo::new(stream))
                .await
                .context("HTTP/2 handshake")?;
        tokio::task::spawn_local(connection);
        for _ in 0..streams {
            let mut sender = sender.clone();
            let request = http::Request::get(format!("http://bench/hold/{hold_ms}"))
                .body(Empty::<Bytes>::new())
                .context("building the request")?;
            responses.push(tokio::task::spawn_local(async move {
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                response.into_body().collect().await.map(|_| ())
            }));
        }
        senders.push(sender);
    }
    // Let every request task start its stream.
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    println!(
        "sent: {} streams on {} connections",
        responses.len(),
        connections
    );
    std::io::stdout().flush()?;
    let expected = responses.len() as u64;
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            match held_by(backend) {
                Ok(held) if held >= expected => {
                    println!("ready: the backend holds {held} requests");
                    let _ = std::io::stdout().flush();
                    return;
                }
                Ok(_) => {}
                Err(error) => eprintln!("asking {backend} for /held: {error}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("the backend never held {expected} requests");
    });
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    drop(senders);
    Ok(())
}

/// How many requests the backend holds (`GET /held`, answered with a number).
fn held_by(backend: SocketAddr) -> std::io::Result<u64> {
    use std::io::Read as _;
    let mut stream = TcpStream::connect_timeout(&backend, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET /held HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    response
        .rsplit("\r\n\r\n")
        .next()
        .and_then(|body| body.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("unexpected answer: {response:?}")))
}

/// Executor for hyper's HTTP/2 client tasks on this thread's LocalSet.
#[derive(Clone, Copy)]
struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: std::future::Future + 'static,
{
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}
