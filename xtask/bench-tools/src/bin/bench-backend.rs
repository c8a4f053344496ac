//! `bench-backend`: the upstream every proxy of `cargo xtask bench` forwards to. One
//! thread (a current-thread tokio runtime, so it stays on the core the bench pins it
//! to) serves HTTP/1.1 and HTTP/2 by prior knowledge (h2c) on the same port with hyper.
//! It is meant to cost as little per request as possible, so the proxies are measured,
//! not it: bodies are slices of one buffer made at start-up.
//!
//! What it answers:
//! - `content-type: application/grpc...`: a unary gRPC reply, one message of
//!   `--body-bytes` bytes, then trailers `grpc-status: 0`;
//! - `/bytes/N`: N bytes (at most 16 MiB);
//! - `/hold/MS`: `--body-bytes` bytes after MS milliseconds (at most 10 minutes); the
//!   request counts as held meanwhile;
//! - `/held`: how many requests are being held right now (for the memory scenario, which
//!   asks it directly to know that every stream reached the backend);
//! - anything else: `--body-bytes` bytes.
//!
//! It exits when its parent (the bench) is gone or after `--lifetime-seconds`.

#![forbid(unsafe_code)]

use std::cell::Cell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use keel_bench_tools::{grpc_frame, MAX_BODY_BYTES};

/// Command line.
#[derive(Parser)]
#[command(about = "HTTP/1.1 + h2c + gRPC backend of `cargo xtask bench`")]
struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Size of the default response body (and of the gRPC reply message).
    #[arg(long, default_value_t = 64)]
    body_bytes: usize,
    /// Exit after this long even if nobody stops it.
    #[arg(long, default_value_t = 3600)]
    lifetime_seconds: u64,
}

/// The longest `/hold/MS` may hold.
const MAX_HOLD: Duration = Duration::from_secs(600);

/// What every connection shares (one thread: no locks).
struct Shared {
    /// `MAX_BODY_BYTES` bytes of 'k'; bodies are slices of it.
    bytes: Bytes,
    body_bytes: usize,
    grpc_reply: Bytes,
    held: Cell<u64>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, serve(args))
}

async fn serve(args: Args) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let bytes = Bytes::from(vec![b'k'; MAX_BODY_BYTES]);
    let body_bytes = args.body_bytes.min(MAX_BODY_BYTES);
    let shared = Rc::new(Shared {
        grpc_reply: Bytes::from(grpc_frame(&bytes[..body_bytes])),
        bytes,
        body_bytes,
        held: Cell::new(0),
    });
    let parent = nix::unistd::getppid();
    tokio::task::spawn_local(async move {
        let started = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if nix::unistd::getppid() != parent
                || started.elapsed() > Duration::from_secs(args.lifetime_seconds)
            {
                std::process::exit(0);
            }
        }
    });
    eprintln!("bench-backend: listening on {}", args.listen);
    let mut builder = auto::Builder::new(LocalExec);
    builder.http1().keep_alive(true).max_buf_size(64 * 1024);
    builder
        .http2()
        .max_concurrent_streams(100_000)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(8 << 20);
    let builder = Rc::new(builder);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors or memory: give the system a moment.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let builder = builder.clone();
        tokio::task::spawn_local(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(answer(&shared, request).await) }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Executor for hyper's HTTP/2 tasks on this thread's LocalSet.
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

/// The response to one request.
async fn answer(shared: &Shared, request: Request<Incoming>) -> Response<Reply> {
    let is_grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let path = request.uri().path().to_owned();
    let (_, body) = request.into_parts();
    if !body.is_end_stream() {
        // Read (and drop) the request body: a gRPC request message, a POST body.
        if body.collect().await.is_err() {
            return status(StatusCode::BAD_REQUEST);
        }
    }
    if is_grpc {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let mut response =
            Response::new(Reply::Grpc(Some(shared.grpc_reply.clone()), Some(trailers)));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        return response;
    }
    let size = if let Some(n) = path.strip_prefix("/bytes/") {
        match n.parse::<usize>() {
            Ok(n) if n <= MAX_BODY_BYTES => n,
            _ => return status(StatusCode::BAD_REQUEST),
        }
    } else if let Some(ms) = path.strip_prefix("/hold/") {
        let Ok(ms) = ms.parse::<u64>() else {
            return status(StatusCode::BAD_REQUEST);
        };
        shared.held.set(shared.held.get() + 1);
        let _guard = HeldGuard(&shared.held);
        tokio::time::sleep(Duration::from_millis(ms).min(MAX_HOLD)).await;
        shared.body_bytes
    } else if path == "/held" {
        let text = Bytes::from(shared.held.get().to_string());
        return Response::new(Reply::Data(Some(text)));
    } else {
        shared.body_bytes
    };
    let mut response = Response::new(Reply::Data(Some(shared.bytes.slice(..size))));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    response
}

/// Decrements the held count when a held request ends (also when its client goes away).
struct HeldGuard<'a>(&'a Cell<u64>);

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

fn status(code: StatusCode) -> Response<Reply> {
    let mut response = Response::new(Reply::Data(None));
    *response.status_mut() = code;
    response
}

/// A response body: bytes, or a gRPC message followed by trailers.
enum Reply {
    /// One data frame (none for an empty body).
    Data(Option<Bytes>),
    /// One data frame, then trailers.
    Grpc(Option<Bytes>, Option<HeaderMap>),
}

impl Body for Reply {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = match self.get_mut() {
            Reply::Data(data) => data.take().map(Frame::data),
            Reply::Grpc(data, trailers) => match data.take() {
                Some(data) => Some(Frame::data(data)),
                None => trailers.take().map(Frame::trailers),
            },
        };
        Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Reply::Data(data) => data.is_none(),
            Reply::Grpc(data, trailers) => data.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Reply::Data(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Reply::Grpc(data, _) => {
                let mut hint = SizeHint::new();
                hint.set_lower(data.as_ref().map_or(0, |d| d.len() as u64));
                hint
            }
        }
    }
}
