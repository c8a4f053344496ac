//! keel's HTTP/1.1 client for pooled upstream connections.
//!
//! A pooled connection has no task of its own: the request that leases it writes the
//! request and reads the response itself, in its own task, and the response body
//! (an [`UpstreamBody`]) reads the rest and puts the connection back on the idle stack
//! the moment the exchange is complete. That saves what a task per connection costs
//! on every request (two cross-task hand-offs through channels and their wake-ups),
//! which was the largest share of keel's userspace instructions per proxied request.
//! An idle connection is not watched: before reuse, its socket's readiness tells
//! whether the upstream closed it (or sent something unasked), and the pool's sweeper
//! closes it after `idle_timeout`.
//!
//! The wire behaviour is hyper's HTTP/1.1 client's (which keel used before, and still
//! uses for upgrades): the request head as given, lowercase names in the header map's
//! order; `content-length` or chunked framing chosen as hyper does (a body of unknown
//! length is chunked, except for GET, HEAD and CONNECT, which are sent without a
//! body); responses parsed with `httparse` (at most 100 headers, the head within the
//! cluster's buffer limit), 1xx other than 101 skipped, RFC 9112 §6.3 body framing
//! (HEAD, 204 and 304 without a body; chunked; `content-length`; else until close),
//! keep-alive as HTTP/1.1 (`connection: close`) and HTTP/1.0 (`keep-alive`) say.
//! Response trailers of a chunked body are passed on; request trailers are written
//! only when the request's `trailer` header names them.

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRAILER, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::breaker::ConnectionSlot;
use super::host::Host;
use crate::http::body::{Body, BodyError};
use crate::observe::stats::{Counter, Gauge};

/// Response headers accepted (hyper's and Envoy's default).
const MAX_HEADERS: usize = 100;
/// The first read buffer, and the smallest read (hyper's).
const INITIAL_READ: usize = 8192;
/// The largest read: enough for loopback's 64 KiB segments, without holding a buffer
/// of the cluster's whole limit per connection.
const MAX_READ: usize = 64 * 1024;
/// Longest chunk-size line accepted (size, extensions and CRLF).
const MAX_CHUNK_LINE: usize = 4096;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// The upstream closed the connection before the response head was complete.
    #[error("connection closed before the response was complete")]
    Incomplete,
    /// The upstream sent something that is not a valid HTTP/1.1 response.
    #[error("invalid HTTP/1.1 response: {0}")]
    Parse(&'static str),
    /// The response body ended (connection closed) before its length or last chunk.
    #[error("response body ended before its end: unexpected end of stream")]
    Truncated,
    /// Reading or writing the socket failed.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// The request body failed (the downstream went away, or a filter stopped it).
    #[error("request body: {0}")]
    RequestBody(#[source] BodyError),
}

impl H1Error {
    /// The connection ended under the exchange (Envoy's "connection termination").
    pub fn is_termination(&self) -> bool {
        match self {
            H1Error::Incomplete | H1Error::Truncated => true,
            H1Error::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }

    /// The upstream broke the protocol.
    pub fn is_protocol_error(&self) -> bool {
        matches!(self, H1Error::Parse(_))
    }
}

/// What a pooled connection gives back when it closes: its breaker slot, the
/// connection counts, and a wake-up for requests waiting for a connection.
#[derive(Debug)]
pub(crate) struct OpenConnection {
    host: Weak<Host>,
    slot: Option<ConnectionSlot>,
    active: Gauge,
}

impl OpenConnection {
    pub(crate) fn new(host: &Arc<Host>, slot: ConnectionSlot, active: Gauge) -> OpenConnection {
        active.inc();
        host.stats
            .cx_active
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        OpenConnection {
            host: Arc::downgrade(host),
            slot: Some(slot),
            active,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.active.dec();
        if let Some(host) = self.host.upgrade() {
            host.stats
                .cx_active
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(slot) = self.slot.take() {
                host.pool.connection_gone(slot);
            }
        }
    }
}

/// Per-cluster settings a connection needs when it goes back to the pool.
#[derive(Debug, Clone)]
pub(crate) struct ConnSettings {
    /// `max_requests_per_connection`.
    pub max_requests: Option<u32>,
    /// `upstream_cx_max_requests`.
    pub max_requests_reached: Counter,
    /// `idle_timeout`, and `upstream_cx_idle_timeout` to count it.
    pub idle_timeout: Option<(Duration, Counter)>,
    /// The largest response head, and the largest read.
    pub max_buffer: usize,
}

/// A pooled HTTP/1.1 connection, owned by the request that uses it (or by the idle
/// stack).
#[derive(Debug)]
pub(crate) struct H1Conn {
    io: TcpStream,
    read_buf: BytesMut,
    /// The size of the next read (grows while reads fill it, as hyper's).
    next_read: usize,
    /// The request head being written.
    head: Vec<u8>,
    settings: ConnSettings,
    /// Requests sent on it.
    requests: u32,
    /// When it last went idle.
    pub(crate) idle_since: Instant,
    /// Closes it with the counts right; knows the host whose pool it goes back to.
    open: OpenConnection,
}

impl H1Conn {
    pub(crate) fn new(io: TcpStream, settings: ConnSettings, open: OpenConnection) -> Box<H1Conn> {
        Box::new(H1Conn {
            io,
            read_buf: BytesMut::new(),
            next_read: INITIAL_READ,
            head: Vec::new(),
            settings,
            requests: 0,
            idle_since: Instant::now(),
            open,
        })
    }

    /// Whether an idle connection can take a request: the upstream has not closed it.
    /// Reads the socket's last known readiness (the runtime records the peer's close,
    /// EPOLLRDHUP, as it happens), so the check costs no syscall.
    pub(crate) fn is_reusable(&self) -> bool {
        if !self.read_buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let ready = std::pin::pin!(self.io.ready(tokio::io::Interest::READABLE));
        match ready.poll(&mut cx) {
            Poll::Ready(Ok(ready)) => !ready.is_read_closed() && !ready.is_error(),
            Poll::Ready(Err(_)) => false,
            Poll::Pending => true,
        }
    }

    /// The cluster's `idle_timeout`, with the counter of connections it closed.
    pub(crate) fn idle_timeout(&self) -> Option<(Duration, Counter)> {
        self.settings.idle_timeout.clone()
    }

    /// Sends `request` and reads the response head; the returned body reads the rest
    /// and gives the connection back to its host's pool when the exchange completes.
    pub(crate) async fn send(
        mut self: Box<Self>,
        request: Request<Body>,
    ) -> Result<Response<Body>, H1Error> {
        self.requests += 1;
        let last = self
            .settings
            .max_requests
            .is_some_and(|max| self.requests >= max);
        let (mut parts, body) = request.into_parts();
        let mut writer = RequestWriter::new(&mut parts, body, &mut self.head);
        let head_request = parts.method == Method::HEAD;
        let keep_alive_request = !connection_has(&parts.headers, "close");
        let mut conn = Some(self);
        let parsed = std::future::poll_fn(|cx| {
            let conn = conn.as_mut().expect("polled after completion");
            // Write as much as the socket takes; a response may come before the request
            // body has all been sent.
            if let Poll::Ready(Err(e)) = writer.poll_write(&mut conn.io, &conn.head, cx) {
                return Poll::Ready(Err(e));
            }
            conn.poll_head(head_request, cx)
        })
        .await?;
        let conn = conn.take().expect("taken once");
        let Parsed {
            head,
            framing,
            keep_alive,
        } = parsed;
        let mut response = Response::from_parts(head, Body::Empty);
        let reusable = keep_alive && keep_alive_request && !last;
        if last {
            conn.settings.max_requests_reached.inc();
        }
        let mut body = UpstreamBody {
            conn: Some(conn),
            writer: (!writer.is_done()).then_some(writer),
            framing,
            reusable,
        };
        // The common case: the whole body is already read (or there is none).
        if let Some(whole) = body.take_if_complete() {
            *response.body_mut() = whole;
        } else {
            *response.body_mut() = Body::Upstream(body);
        }
        Ok(response)
    }

    /// Reads until a final response head is parsed (1xx heads other than 101 are
    /// skipped, as hyper does).
    fn poll_head(
        &mut self,
        head_request: bool,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Parsed, H1Error>> {
        loop {
            if !self.read_buf.is_empty() {
                if let Some(parsed) = parse_response(&mut self.read_buf, head_request)? {
                    return Poll::Ready(Ok(parsed));
                }
                if self.read_buf.len() >= self.settings.max_buffer {
                    return Poll::Ready(Err(H1Error::Parse("response head too large")));
                }
            }
            let read = ready!(self.poll_read(cx))?;
            if read == 0 {
                return Poll::Ready(Err(H1Error::Incomplete));
            }
        }
    }

    /// Reads once into the buffer; `Ok(0)` at the end of the stream.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.read_buf.capacity() - self.read_buf.len() < self.next_read {
            self.read_buf.reserve(self.next_read);
        }
        loop {
            match self.io.try_read_buf(&mut self.read_buf) {
                Ok(n) => {
                    // Adaptive, as hyper's: a read that fills the buffer doubles the next
                    // one (up to 64 KiB); a small one halves it again.
                    if n >= self.next_read {
                        self.next_read = (self.next_read * 2).min(MAX_READ);
                    } else if n < self.next_read / 2 && self.next_read > INITIAL_READ {
                        self.next_read /= 2;
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    ready!(self.io.poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// A parsed response head.
#[derive(Debug)]
struct Parsed {
    head: http::response::Parts,
    framing: Framing,
    keep_alive: bool,
}

/// How the response body is delimited, and how much of it is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked: where the decoder is.
    Chunked(ChunkState),
    /// Until the upstream closes the connection.
    Close,
    /// The body has ended.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// In a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields until an empty line.
    Trailers,
}

/// Parses one final response head from the front of `buf` (consuming it and any 1xx
/// heads before it); `None` while incomplete.
fn parse_response(buf: &mut BytesMut, head_request: bool) -> Result<Option<Parsed>, H1Error> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let len = match response.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(H1Error::Parse("too many headers")),
            Err(_) => return Err(H1Error::Parse("malformed response head")),
        };
        let code = response.code.expect("a complete response has a status");
        let status =
            StatusCode::from_u16(code).map_err(|_| H1Error::Parse("invalid status code"))?;
        let version = if response.version == Some(1) {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        // Offsets into the head, so that the values can share one frozen buffer.
        let base = buf.as_ptr() as usize;
        let fields: smallvec::SmallVec<[(usize, usize, usize, usize); 16]> = response
            .headers
            .iter()
            .map(|h| {
                let name = h.name.as_ptr() as usize - base;
                let value = h.value.as_ptr() as usize - base;
                (name, name + h.name.len(), value, value + h.value.len())
            })
            .collect();
        let slice = buf.split_to(len).freeze();
        if (100..200).contains(&code) && code != 101 {
            continue; // 100 Continue and other interim responses are skipped.
        }
        let mut map = HeaderMap::with_capacity(fields.len());
        for &(ns, ne, vs, ve) in &fields {
            let name = HeaderName::from_bytes(&slice[ns..ne])
                .map_err(|_| H1Error::Parse("invalid header name"))?;
            let value = HeaderValue::from_maybe_shared(slice.slice(vs..ve))
                .map_err(|_| H1Error::Parse("invalid header value"))?;
            map.append(name, value);
        }
        let mut keep_alive = version == Version::HTTP_11;
        if connection_has(&map, "close") {
            keep_alive = false;
        } else if !keep_alive && connection_has(&map, "keep-alive") {
            keep_alive = true;
        }
        let framing = framing(status, version, &map, head_request)?;
        if framing == Framing::Close {
            keep_alive = false;
        }
        let mut head = Response::new(()).into_parts().0;
        head.status = status;
        head.version = version;
        head.headers = map;
        return Ok(Some(Parsed {
            head,
            framing,
            keep_alive,
        }));
    }
}

/// RFC 9112 §6.3, as hyper's client applies it.
fn framing(
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
    head_request: bool,
) -> Result<Framing, H1Error> {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // Pooled requests never ask for an upgrade (upgrades take a connection of their
        // own): a 101 here cannot be followed.
        return Err(H1Error::Parse("unexpected 101 Switching Protocols"));
    }
    if matches!(status.as_u16(), 204 | 304) || head_request {
        return Ok(Framing::Done);
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            return Err(H1Error::Parse("transfer-encoding in an HTTP/1.0 response"));
        }
        let chunked_last = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .next_back()
            .is_some_and(ends_in_chunked);
        return Ok(if chunked_last {
            Framing::Chunked(ChunkState::Size)
        } else {
            Framing::Close
        });
    }
    let length = content_length(headers).map_err(H1Error::Parse)?;
    Ok(match length {
        Some(0) => Framing::Done,
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    })
}

/// Whether any `connection` header lists `token`.
fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(CONNECTION).iter().any(|value| {
        value
            .to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFraming {
    /// Exactly this many bytes are left to write.
    Length(u64),
    Chunked,
}

/// Writes one request: the head, then the body frame by frame. Small when there is
/// no body (the common request), as it lives in every request's future.
#[derive(Debug)]
struct RequestWriter {
    /// How much of the head is written.
    head_written: usize,
    head_len: usize,
    /// The body's state, if the request has one.
    body: Option<Box<BodyWriter>>,
}

/// A request body on its way out.
#[derive(Debug)]
struct BodyWriter {
    /// `None` once it ended (or failed).
    body: Option<Body>,
    framing: BodyFraming,
    /// Trailer fields the request names (`trailer`), for a chunked body.
    trailer_names: Vec<HeaderName>,
    /// Frames (and chunk framing) waiting to be written.
    queue: std::collections::VecDeque<Bytes>,
    /// The body ended and its end is queued.
    ended: bool,
}

impl RequestWriter {
    /// Encodes `parts`' head into `head` (cleared first) and chooses the body's framing
    /// as hyper's client does.
    fn new(parts: &mut http::request::Parts, body: Body, head: &mut Vec<u8>) -> RequestWriter {
        let body_length = if body.is_end_stream() {
            None
        } else {
            Some(body.size_hint().exact())
        };
        let framing = set_length(parts, body_length);
        head.clear();
        encode_head(parts, head);
        let body = (framing != BodyFraming::Length(0)).then(|| {
            let trailer_names = if framing == BodyFraming::Chunked {
                parts
                    .headers
                    .get_all(TRAILER)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
                    .collect()
            } else {
                Vec::new()
            };
            Box::new(BodyWriter {
                body: Some(body),
                framing,
                trailer_names,
                queue: std::collections::VecDeque::new(),
                ended: false,
            })
        });
        RequestWriter {
            head_written: 0,
            head_len: head.len(),
            body,
        }
    }

    /// Whether the whole request has been written.
    fn is_done(&self) -> bool {
        self.head_written == self.head_len
            && self
                .body
                .as_ref()
                .is_none_or(|b| b.ended && b.queue.is_empty())
    }

    /// Writes what it can: `Ready(Ok)` once the whole request is written, `Pending`
    /// while the socket or the body has nothing more for now.
    fn poll_write(
        &mut self,
        io: &mut TcpStream,
        head: &[u8],
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), H1Error>> {
        loop {
            let queued = self.body.as_ref().is_some_and(|b| !b.queue.is_empty());
            if self.head_written < self.head_len || queued {
                let mut slices: smallvec::SmallVec<[IoSlice<'_>; 8]> = smallvec::SmallVec::new();
                if self.head_written < self.head_len {
                    slices.push(IoSlice::new(&head[self.head_written..self.head_len]));
                }
                if let Some(b) = &self.body {
                    for chunk in b.queue.iter().take(7) {
                        slices.push(IoSlice::new(chunk));
                    }
                }
                let written = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))?;
                drop(slices);
                if written == 0 {
                    return Poll::Ready(Err(H1Error::Io(std::io::ErrorKind::WriteZero.into())));
                }
                self.advance(written);
                continue;
            }
            let Some(b) = self.body.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            let Some(body) = b.body.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            match ready!(Pin::new(body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => b.queue_data(data)?,
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            b.queue_end(Some(trailers))?;
                        }
                    }
                },
                Some(Err(e)) => {
                    b.body = None;
                    return Poll::Ready(Err(H1Error::RequestBody(e)));
                }
                None => b.queue_end(None)?,
            }
        }
    }

    fn advance(&mut self, mut written: usize) {
        let from_head = written.min(self.head_len - self.head_written);
        self.head_written += from_head;
        written -= from_head;
        let Some(b) = self.body.as_mut() else {
            return;
        };
        while written > 0 {
            let front = b.queue.front_mut().expect("written bytes were queued");
            if written >= front.len() {
                written -= front.len();
                b.queue.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
    }
}

impl BodyWriter {
    fn queue_data(&mut self, data: Bytes) -> Result<(), H1Error> {
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.framing {
            BodyFraming::Length(left) => {
                let len = data.len() as u64;
                if len > *left {
                    return Err(H1Error::RequestBody(BodyError::Other(
                        "request body longer than its content-length".into(),
                    )));
                }
                *left -= len;
                self.queue.push_back(data);
            }
            BodyFraming::Chunked => {
                self.queue
                    .push_back(Bytes::from(format!("{:X}\r\n", data.len())));
                self.queue.push_back(data);
                self.queue.push_back(Bytes::from_static(b"\r\n"));
            }
        }
        Ok(())
    }

    fn queue_end(&mut self, trailers: Option<HeaderMap>) -> Result<(), H1Error> {
        self.body = None;
        self.ended = true;
        match self.framing {
            BodyFraming::Length(0) => Ok(()),
            BodyFraming::Length(_) => Err(H1Error::RequestBody(BodyError::Other(
                "request body shorter than its content-length".into(),
            ))),
            BodyFraming::Chunked => {
                let mut end = b"0\r\n".to_vec();
                if let Some(trailers) = trailers {
                    for (name, value) in &trailers {
                        if self.trailer_names.contains(name) {
                            end.extend_from_slice(name.as_str().as_bytes());
                            end.extend_from_slice(b": ");
                            end.extend_from_slice(value.as_bytes());
                            end.extend_from_slice(b"\r\n");
                        }
                    }
                }
                end.extend_from_slice(b"\r\n");
                self.queue.push_back(Bytes::from(end));
                Ok(())
            }
        }
    }
}

/// Sets `content-length` or `transfer-encoding` as hyper's client does and returns the
/// body's framing. `body_length`: `None` for no body, `Some(None)` for a body of
/// unknown length.
fn set_length(parts: &mut http::request::Parts, body_length: Option<Option<u64>>) -> BodyFraming {
    let headers = &mut parts.headers;
    let Some(length) = body_length else {
        headers.remove(TRANSFER_ENCODING);
        return BodyFraming::Length(0);
    };
    // An invalid one is replaced, as hyper does.
    let existing = content_length(headers).ok().flatten();
    if let Some(te) = headers.get_all(TRANSFER_ENCODING).iter().next_back() {
        if !ends_in_chunked(te) {
            let mut value = te.as_bytes().to_vec();
            value.extend_from_slice(b", chunked");
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                let mut values: Vec<HeaderValue> =
                    headers.get_all(TRANSFER_ENCODING).iter().cloned().collect();
                values.pop();
                values.push(value);
                headers.remove(TRANSFER_ENCODING);
                for v in values {
                    headers.append(TRANSFER_ENCODING, v);
                }
            }
        }
        headers.remove(CONTENT_LENGTH);
        return BodyFraming::Chunked;
    }
    if let Some(len) = existing {
        return BodyFraming::Length(len);
    }
    match length {
        Some(len) => {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
            BodyFraming::Length(len)
        }
        None if matches!(parts.method, Method::GET | Method::HEAD | Method::CONNECT) => {
            BodyFraming::Length(0)
        }
        None => {
            headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
            headers.remove(CONTENT_LENGTH);
            BodyFraming::Chunked
        }
    }
}

/// The message's `content-length`: `None` without one, an error when a value is not a
/// number or the values disagree (`5, 5` and two equal fields are one length).
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let text = value.to_str().map_err(|_| "invalid content-length")?;
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err("invalid content-length");
            }
            let n: u64 = part.parse().map_err(|_| "invalid content-length")?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting content-length values");
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// Whether a `transfer-encoding` value's last coding is `chunked`.
fn ends_in_chunked(value: &HeaderValue) -> bool {
    value
        .to_str()
        .ok()
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
}

/// The request line and header fields, as hyper writes them.
fn encode_head(parts: &http::request::Parts, out: &mut Vec<u8>) {
    out.reserve(64 + parts.headers.len() * 32);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    match parts.uri.path_and_query() {
        Some(pq) if parts.uri.authority().is_none() => {
            out.extend_from_slice(pq.as_str().as_bytes())
        }
        _ => out.extend_from_slice(parts.uri.to_string().as_bytes()),
    }
    out.extend_from_slice(match parts.version {
        Version::HTTP_10 => b" HTTP/1.0\r\n",
        _ => b" HTTP/1.1\r\n",
    });
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A response body read from a pooled connection, which it owns until the exchange
/// completes and then puts back on the idle stack (or closes, when it cannot be
/// reused). Dropped before its end, it closes the connection.
#[derive(Debug)]
pub struct UpstreamBody {
    conn: Option<Box<H1Conn>>,
    /// The rest of the request, while it is still being written.
    writer: Option<RequestWriter>,
    framing: Framing,
    /// The connection may take another request once this one is complete.
    reusable: bool,
}

impl UpstreamBody {
    /// The whole body when it is already read (or empty): the connection is released
    /// right away.
    fn take_if_complete(&mut self) -> Option<Body> {
        if !self.writer.as_ref().is_none_or(|w| w.is_done()) {
            return None;
        }
        let body = match self.framing {
            Framing::Done => Body::Empty,
            Framing::Length(n) => {
                let conn = self.conn.as_mut()?;
                if (conn.read_buf.len() as u64) < n {
                    return None;
                }
                self.framing = Framing::Done;
                Body::full(conn.read_buf.split_to(n as usize).freeze())
            }
            _ => return None,
        };
        self.finish();
        Some(body)
    }

    /// The exchange is over: the connection goes back to the pool or is closed.
    fn finish(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let request_written = self.writer.as_ref().is_none_or(|w| w.is_done());
        self.writer = None;
        if self.reusable && request_written && conn.read_buf.is_empty() {
            if let Some(host) = conn.open.host.upgrade() {
                host.pool.put_idle(&host, conn);
            }
        }
    }

    /// The next piece of the body from the buffer, reading when it is empty.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.framing {
                Framing::Done => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(left) => {
                    if !conn.read_buf.is_empty() {
                        let n = (conn.read_buf.len() as u64).min(left) as usize;
                        let data = conn.read_buf.split_to(n).freeze();
                        self.framing = if left == n as u64 {
                            Framing::Done
                        } else {
                            Framing::Length(left - n as u64)
                        };
                        if self.framing == Framing::Done {
                            self.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Close => {
                    if !conn.read_buf.is_empty() {
                        let data = conn.read_buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Chunked(state) => match decode_chunk(&mut conn.read_buf, state)? {
                    Decoded::Data(data, next) => {
                        self.framing = Framing::Chunked(next);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Decoded::Trailers(trailers) => {
                        self.framing = Framing::Done;
                        self.finish();
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Decoded::End => {
                        self.framing = Framing::Done;
                        self.finish();
                        return Poll::Ready(None);
                    }
                    Decoded::Progress(next) => {
                        self.framing = Framing::Chunked(next);
                        continue;
                    }
                    Decoded::NeedMore(next) => {
                        self.framing = Framing::Chunked(next);
                        if conn.read_buf.len() >= MAX_CHUNK_LINE.max(conn.settings.max_buffer) {
                            return Poll::Ready(Some(Err(H1Error::Parse(
                                "chunk framing too long",
                            ))));
                        }
                    }
                },
            }
            let read = ready!(conn.poll_read(cx))?;
            if read == 0 {
                return Poll::Ready(match self.framing {
                    Framing::Close => {
                        self.framing = Framing::Done;
                        self.conn = None;
                        None
                    }
                    _ => Some(Err(H1Error::Truncated)),
                });
            }
        }
    }
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = self.get_mut();
        // The rest of the request goes out while the response comes in.
        if let (Some(writer), Some(conn)) = (this.writer.as_mut(), this.conn.as_mut()) {
            if let Poll::Ready(Err(e)) = writer.poll_write(&mut conn.io, &conn.head, cx) {
                this.writer = None;
                this.conn = None;
                return Poll::Ready(Some(Err(e)));
            }
        }
        match this.poll_body(cx) {
            Poll::Ready(Some(Err(e))) => {
                this.conn = None;
                Poll::Ready(Some(Err(e)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// What the chunked decoder found in the buffer.
#[derive(Debug)]
enum Decoded {
    /// Data of the current chunk; the state after it.
    Data(Bytes, ChunkState),
    /// The state moved without data (a size line, a CRLF).
    Progress(ChunkState),
    /// More bytes are needed.
    NeedMore(ChunkState),
    /// The last chunk and its trailers.
    Trailers(HeaderMap),
    /// The last chunk, without trailers.
    End,
}

/// Decodes what it can of a chunked body from the front of `buf`.
fn decode_chunk(buf: &mut BytesMut, state: ChunkState) -> Result<Decoded, H1Error> {
    match state {
        ChunkState::Size => {
            let Some(end) = find_crlf(buf) else {
                if buf.len() > MAX_CHUNK_LINE {
                    return Err(H1Error::Parse("chunk size line too long"));
                }
                return Ok(Decoded::NeedMore(state));
            };
            let line = &buf[..end];
            let digits = line
                .iter()
                .position(|b| !b.is_ascii_hexdigit())
                .unwrap_or(line.len());
            if digits == 0 || digits > 16 {
                return Err(H1Error::Parse("invalid chunk size"));
            }
            let rest = &line[digits..];
            let rest_ok = rest.iter().all(|b| *b == b' ' || *b == b'\t')
                || rest
                    .iter()
                    .position(|b| *b == b';')
                    .is_some_and(|semi| rest[..semi].iter().all(|b| *b == b' ' || *b == b'\t'));
            if !rest_ok {
                return Err(H1Error::Parse("invalid chunk size"));
            }
            let size = u64::from_str_radix(
                std::str::from_utf8(&line[..digits]).expect("hex digits are ASCII"),
                16,
            )
            .map_err(|_| H1Error::Parse("invalid chunk size"))?;
            buf.advance(end + 2);
            Ok(Decoded::Progress(if size == 0 {
                ChunkState::Trailers
            } else {
                ChunkState::Data(size)
            }))
        }
        ChunkState::Data(left) => {
            if buf.is_empty() {
                return Ok(Decoded::NeedMore(state));
            }
            let n = (buf.len() as u64).min(left) as usize;
            let data = buf.split_to(n).freeze();
            let next = if n as u64 == left {
                ChunkState::DataEnd
            } else {
                ChunkState::Data(left - n as u64)
            };
            Ok(Decoded::Data(data, next))
        }
        ChunkState::DataEnd => {
            if buf.len() < 2 {
                return Ok(Decoded::NeedMore(state));
            }
            if &buf[..2] != b"\r\n" {
                return Err(H1Error::Parse("chunk data not followed by CRLF"));
            }
            buf.advance(2);
            Ok(Decoded::Progress(ChunkState::Size))
        }
        ChunkState::Trailers => {
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
                return Ok(Decoded::End);
            }
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match httparse::parse_headers(buf, &mut fields) {
                Ok(httparse::Status::Complete((len, fields))) => {
                    let mut trailers = HeaderMap::with_capacity(fields.len());
                    for field in fields.iter() {
                        let name = HeaderName::from_bytes(field.name.as_bytes())
                            .map_err(|_| H1Error::Parse("invalid trailer name"))?;
                        let value = HeaderValue::from_bytes(field.value)
                            .map_err(|_| H1Error::Parse("invalid trailer value"))?;
                        trailers.append(name, value);
                    }
                    buf.advance(len);
                    Ok(Decoded::Trailers(trailers))
                }
                Ok(httparse::Status::Partial) => Ok(Decoded::NeedMore(state)),
                Err(_) => Err(H1Error::Parse("invalid trailers")),
            }
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, head_request: bool) -> Result<Option<Parsed>, H1Error> {
        let mut buf = BytesMut::from(text.as_bytes());
        parse_response(&mut buf, head_request)
    }

    #[test]
    fn frames_responses_as_rfc_9112_says() {
        let p = parse("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", false)
            .unwrap()
            .unwrap();
        assert_eq!(p.framing, Framing::Length(5));
        assert!(p.keep_alive);
        let p = parse("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(p.framing, Framing::Done, "HEAD");
        let p = parse("HTTP/1.1 204 No Content\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!(p.framing, Framing::Done);
        let p = parse(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 3\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.framing, Framing::Chunked(ChunkState::Size));
        let p = parse("HTTP/1.1 200 OK\r\n\r\n", false).unwrap().unwrap();
        assert_eq!(p.framing, Framing::Close);
        assert!(!p.keep_alive, "a close-delimited body ends the connection");
        let p = parse("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(!p.keep_alive, "HTTP/1.0 closes by default");
        let p = parse(
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(p.keep_alive);
        let p = parse(
            "HTTP/1.1 200 OK\r\nconnection: x, close\r\ncontent-length: 0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(!p.keep_alive);
        assert!(parse(
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            false
        )
        .is_err());
        assert!(parse("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", false).is_err());
        assert!(parse("HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nhi", false).is_ok());
        assert!(parse("HTTP/1.1 200 OK\r\ncontent", false)
            .unwrap()
            .is_none());
        assert!(parse("HTTX/1.1 200 OK\r\n\r\n", false).is_err());
    }

    #[test]
    fn skips_interim_responses_and_keeps_header_order() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Service Unavailable\r\nX-A: 1\r\nx-b: 2\r\nx-a: 3\r\ncontent-length: 2\r\n\r\nno"[..],
        );
        let p = parse_response(&mut buf, false).unwrap().unwrap();
        assert_eq!(p.head.status, StatusCode::SERVICE_UNAVAILABLE);
        let a: Vec<_> = p.head.headers.get_all("x-a").iter().collect();
        assert_eq!(a, ["1", "3"]);
        assert_eq!(&buf[..], b"no", "the body stays in the buffer");
    }

    #[test]
    fn decodes_chunked_bodies_with_trailers() {
        let mut buf =
            BytesMut::from(&b"5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\ngrpc-status: 0\r\n\r\n"[..]);
        let mut state = ChunkState::Size;
        let mut data = Vec::new();
        let trailers = loop {
            match decode_chunk(&mut buf, state).unwrap() {
                Decoded::Data(d, next) => {
                    data.extend_from_slice(&d);
                    state = next;
                }
                Decoded::Progress(next) => state = next,
                Decoded::Trailers(t) => break t,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(data, b"helloabc");
        assert_eq!(trailers["grpc-status"], "0");
        assert!(buf.is_empty());
        let mut buf = BytesMut::from(&b"0\r\n\r\n"[..]);
        assert!(matches!(
            decode_chunk(&mut buf, ChunkState::Size).unwrap(),
            Decoded::Progress(ChunkState::Trailers)
        ));
        assert!(matches!(
            decode_chunk(&mut buf, ChunkState::Trailers).unwrap(),
            Decoded::End
        ));
        let mut partial = BytesMut::from(&b"1"[..]);
        assert!(matches!(
            decode_chunk(&mut partial, ChunkState::Size).unwrap(),
            Decoded::NeedMore(_)
        ));
        let mut bad = BytesMut::from(&b"zz\r\n"[..]);
        assert!(decode_chunk(&mut bad, ChunkState::Size).is_err());
        let mut bad = BytesMut::from(&b"3\r\nabcXY"[..]);
        let _ = decode_chunk(&mut bad, ChunkState::Size).unwrap();
        let _ = decode_chunk(&mut bad, ChunkState::Data(3)).unwrap();
        assert!(decode_chunk(&mut bad, ChunkState::DataEnd).is_err());
    }

    fn head(method: Method, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut builder = Request::builder().method(method).uri("/p?q=1");
        for (n, v) in headers {
            builder = builder.header(*n, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn chooses_request_framing_as_hyper() {
        let mut p = head(Method::GET, &[]);
        assert_eq!(set_length(&mut p, None), BodyFraming::Length(0));
        let mut p = head(Method::POST, &[]);
        assert_eq!(set_length(&mut p, Some(Some(3))), BodyFraming::Length(3));
        assert_eq!(p.headers["content-length"], "3");
        let mut p = head(Method::POST, &[]);
        assert_eq!(set_length(&mut p, Some(None)), BodyFraming::Chunked);
        assert_eq!(p.headers["transfer-encoding"], "chunked");
        let mut p = head(Method::GET, &[]);
        assert_eq!(
            set_length(&mut p, Some(None)),
            BodyFraming::Length(0),
            "GET without a length has no body"
        );
        let mut p = head(Method::POST, &[("content-length", "7")]);
        assert_eq!(set_length(&mut p, Some(None)), BodyFraming::Length(7));
        let mut p = head(
            Method::POST,
            &[("transfer-encoding", "gzip"), ("content-length", "7")],
        );
        assert_eq!(set_length(&mut p, Some(Some(7))), BodyFraming::Chunked);
        assert_eq!(p.headers["transfer-encoding"], "gzip, chunked");
        assert!(!p.headers.contains_key("content-length"));
        let mut p = head(Method::POST, &[("transfer-encoding", "chunked")]);
        assert_eq!(set_length(&mut p, None), BodyFraming::Length(0));
        assert!(
            !p.headers.contains_key("transfer-encoding"),
            "no body: no transfer-encoding"
        );
    }

    #[test]
    fn encodes_the_head_in_header_map_order() {
        let p = head(Method::GET, &[("host", "a"), ("x-b", "1"), ("x-b", "2")]);
        let mut out = Vec::new();
        encode_head(&p, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /p?q=1 HTTP/1.1\r\nhost: a\r\nx-b: 1\r\nx-b: 2\r\n\r\n"
        );
    }
}
