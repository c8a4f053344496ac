//! One request/response exchange: its [`StreamInfo`], its timers, its hold on the
//! upstream, and the response body that ends it.
//!
//! An [`ActiveStream`] is allocated once per request. The request handler owns it
//! while it works towards response headers; then it moves into the [`ResponseBody`],
//! which finishes the stream (stats, connection idle tracking, pool release, access
//! logs) when the body ends, fails or is dropped. A stream dropped before any
//! response (the client went away) finishes from the guard's `Drop`.

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::sync::oneshot;
use tokio::time::Sleep;

use super::body::{Body, BodyError, RequestEnd};
use super::Connection;
use crate::model::http::HttpTimeouts;
use crate::observe::StreamInfo;
use crate::upstream::{H1Error, Lease};

/// Whether the request body has been received.
#[derive(Debug)]
pub(crate) enum RequestState {
    /// Received (or given up on) at `at`.
    Complete {
        /// Body bytes.
        bytes: u64,
        /// Whether it ended cleanly.
        complete: bool,
        /// When.
        at: Instant,
    },
    /// Still streaming upstream; the tracker reports its end.
    Pending(oneshot::Receiver<RequestEnd>),
}

/// A stream timer that fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// The route's `timeout` (from the end of the request).
    Route,
    /// `request_timeout`: the request was not received in time.
    Request,
    /// `stream_idle_timeout` (or the route's `idle_timeout`).
    Idle,
    /// `max_stream_duration`.
    MaxDuration,
    /// The retry policy's `per_try_idle_timeout`: the upstream try was silent too long.
    TryIdle,
}

/// The stream's deadlines, served by one lazily re-armed `Sleep`.
///
/// The `Sleep` is borrowed from the connection's spares and given back when the
/// stream ends, still registered with the runtime's timer wheel: a stream whose
/// deadline is later than the spare's leaves it armed as it is, so back-to-back
/// requests on a keep-alive connection touch the timer wheel only when the earlier
/// deadline fires (spuriously, once) and the timer is re-armed.
#[derive(Debug)]
pub(crate) struct Timers {
    sleep: Option<Pin<Box<Sleep>>>,
    route_timeout: Option<Duration>,
    route_deadline: Option<Instant>,
    request_deadline: Option<Instant>,
    idle: Option<Duration>,
    last_activity: Instant,
    max_stream: Option<Instant>,
    /// `per_try_idle_timeout` of the try in flight.
    try_idle: Option<Duration>,
    /// The try's last sign of life (its start, the request's end, a response frame).
    try_activity: Instant,
}

impl Timers {
    fn new(start: Instant, timeouts: &HttpTimeouts, sleep: Option<Pin<Box<Sleep>>>) -> Timers {
        Timers {
            sleep,
            route_timeout: None,
            route_deadline: None,
            request_deadline: timeouts.request.map(|t| start + t),
            idle: timeouts.stream_idle,
            last_activity: start,
            max_stream: timeouts.max_stream_duration.map(|t| start + t),
            try_idle: None,
            try_activity: start,
        }
    }

    /// Arms the route's timeout and idle override (`Some(0)` disables idle).
    pub(crate) fn set_route(
        &mut self,
        timeout: Option<Duration>,
        idle_override: Option<Duration>,
        request: &RequestState,
    ) {
        self.route_timeout = timeout;
        if let Some(idle) = idle_override {
            self.idle = (!idle.is_zero()).then_some(idle);
        }
        if let RequestState::Complete { at, .. } = request {
            self.route_deadline = timeout.map(|t| *at + t);
        }
    }

    /// The stream idle timeout in force (the route's `idle_timeout` or the connection
    /// manager's `stream_idle_timeout`).
    pub(crate) fn idle_timeout(&self) -> Option<Duration> {
        self.idle
    }

    /// Replaces the stream's duration limit (a route's `max_stream_duration`);
    /// `None` removes it.
    pub(crate) fn set_max_stream(&mut self, deadline: Option<Instant>) {
        self.max_stream = deadline;
    }

    /// The response started: `request_timeout` no longer applies.
    pub(crate) fn response_started(&mut self) {
        self.request_deadline = None;
    }

    fn request_complete(&mut self, at: Instant) {
        self.request_deadline = None;
        self.route_deadline = self.route_timeout.map(|t| at + t);
        self.last_activity = at;
        self.try_activity = self.try_activity.max(at);
    }

    /// A try starts upstream with this `per_try_idle_timeout` (Envoy counts it from
    /// the later of the try's start and the request's end).
    pub(crate) fn start_try(&mut self, idle: Option<Duration>) {
        self.try_idle = idle;
        self.try_activity = Instant::now();
    }

    /// Something moved on the stream.
    #[inline]
    pub(crate) fn touch(&mut self) {
        if self.idle.is_some() || self.try_idle.is_some() {
            let now = Instant::now();
            self.last_activity = now;
            self.try_activity = now;
        }
    }

    /// Whether any deadline is set.
    #[inline]
    pub(crate) fn is_armed(&self) -> bool {
        self.route_timeout.is_some()
            || self.request_deadline.is_some()
            || self.idle.is_some()
            || self.max_stream.is_some()
            || self.try_idle.is_some()
    }

    /// Ready with the timer that fired; also learns when the request completes.
    pub(crate) fn poll_expired(
        &mut self,
        request: &mut RequestState,
        cx: &mut Context<'_>,
    ) -> Poll<Expiry> {
        if let RequestState::Pending(receiver) = request {
            if let Poll::Ready(end) = Pin::new(receiver).poll(cx) {
                let end = end.unwrap_or(RequestEnd {
                    bytes: 0,
                    complete: false,
                    at: Instant::now(),
                });
                *request = RequestState::Complete {
                    bytes: end.bytes,
                    complete: end.complete,
                    at: end.at,
                };
                self.request_complete(end.at);
            }
        }
        let request_done = matches!(request, RequestState::Complete { .. });
        loop {
            // While the request streams in, the stream is not idle; after, it is
            // idle when nothing moved for `idle`.
            let idle_deadline = if request_done {
                self.idle.map(|idle| self.last_activity + idle)
            } else {
                None
            };
            let request_deadline = if request_done {
                None
            } else {
                self.request_deadline
            };
            let try_deadline = if request_done {
                self.try_idle.map(|idle| self.try_activity + idle)
            } else {
                None
            };
            let Some(earliest) = [
                self.route_deadline,
                request_deadline,
                idle_deadline,
                self.max_stream,
                try_deadline,
            ]
            .into_iter()
            .flatten()
            .min() else {
                return Poll::Pending;
            };
            let deadline = tokio::time::Instant::from_std(earliest);
            match &mut self.sleep {
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                // Activity only moves the idle deadline later: the timer then fires
                // early once and is re-armed here, instead of on every frame.
                Some(sleep) if sleep.deadline() > deadline || sleep.is_elapsed() => {
                    sleep.as_mut().reset(deadline)
                }
                Some(_) => {}
            }
            let sleep = self.sleep.as_mut().expect("armed above");
            ready!(sleep.as_mut().poll(cx));
            let now = Instant::now();
            let passed = |t: Option<Instant>| t.is_some_and(|t| t <= now);
            if passed(self.max_stream) {
                return Poll::Ready(Expiry::MaxDuration);
            }
            if passed(self.route_deadline) {
                return Poll::Ready(Expiry::Route);
            }
            if passed(request_deadline) {
                return Poll::Ready(Expiry::Request);
            }
            if request_done && passed(self.idle.map(|idle| self.last_activity + idle)) {
                return Poll::Ready(Expiry::Idle);
            }
            if request_done && passed(self.try_idle.map(|idle| self.try_activity + idle)) {
                return Poll::Ready(Expiry::TryIdle);
            }
        }
    }
}

/// One request/response exchange.
pub(crate) struct ActiveStream {
    /// The downstream connection.
    pub conn: Arc<Connection>,
    /// What happened so far.
    pub info: StreamInfo,
    /// Deadlines.
    pub timers: Timers,
    /// The request body's progress.
    pub request: RequestState,
    /// The upstream request's hold on its connection.
    pub lease: Option<Lease>,
    /// Whether access logs need the header maps copied into `info`.
    pub log: bool,
    /// Per-stream state of the HTTP filters.
    pub filter_state: http::Extensions,
    /// `:method` and `:path` (and `:authority`) for the access logs, when logging
    /// (boxed: it keeps the stream's allocation within glibc's fast size classes).
    pub request_line: Option<Box<(http::Method, http::Uri)>>,
    /// A HEAD request: hyper sends no response body, so an unread one is no sign of
    /// a client that went away.
    pub head_request: bool,
    /// The request's `x-request-id`, for the response
    /// (`always_set_request_id_in_response`).
    pub response_request_id: Option<http::HeaderValue>,
    /// The virtual cluster counting this request: (virtual host, virtual cluster).
    pub virtual_cluster: Option<(usize, usize)>,
    /// An HTTP/1.0 request: whether it asked for keep-alive.
    pub http10_keep_alive: Option<bool>,
}

impl ActiveStream {
    /// When the downstream request was complete, `None` while its body is still
    /// coming (or was cut off).
    pub(crate) fn request_completed_at(&mut self) -> Option<Instant> {
        match &mut self.request {
            RequestState::Complete { at, complete, .. } => complete.then_some(*at),
            RequestState::Pending(receiver) => match receiver.try_recv() {
                Ok(end) => {
                    self.request = RequestState::Complete {
                        bytes: end.bytes,
                        complete: end.complete,
                        at: end.at,
                    };
                    self.timers.request_complete(end.at);
                    end.complete.then_some(end.at)
                }
                Err(oneshot::error::TryRecvError::Empty) => None,
                Err(oneshot::error::TryRecvError::Closed) => {
                    let now = Instant::now();
                    self.request = RequestState::Complete {
                        bytes: 0,
                        complete: false,
                        at: now,
                    };
                    self.timers.request_complete(now);
                    None
                }
            },
        }
    }

    /// Sets the response flag (once).
    pub(crate) fn flag(&mut self, flag: &'static str) {
        add_flag(&mut self.info, flag);
    }

    fn finish(&mut self, response_complete: bool) {
        let (bytes, request_at) = match &mut self.request {
            RequestState::Complete { bytes, at, .. } => (*bytes, Some(*at)),
            RequestState::Pending(receiver) => match receiver.try_recv() {
                Ok(end) => (end.bytes, Some(end.at)),
                Err(_) => (0, None),
            },
        };
        if self.log {
            let now = Instant::now();
            self.info.bytes_received = bytes;
            self.info.request_duration =
                request_at.map(|at| at.saturating_duration_since(self.info.start));
            self.info.duration = Some(now.saturating_duration_since(self.info.start));
        }
        if !response_complete && self.info.response_flags.is_empty() {
            // The client went away (or reset) before the response ended.
            self.info.response_flags.push("DC");
        }
        // Ends the upstream request's hold (a pooled HTTP/1.1 connection went back
        // with the response body already, when the exchange completed).
        self.lease = None;
        let conn = &self.conn;
        if let Some(sleep) = self.timers.sleep.take() {
            conn.put_spare_timer(sleep);
        }
        conn.stream_ended();
        let hcm = &conn.hcm;
        hcm.stats.downstream_rq_active.dec();
        hcm.log(&self.info, self.request_line.as_deref());
    }
}

/// Adds a response flag to `info` (once). Envoy 1.40 prints flags in the order they
/// were set (a retry's URX comes before the UF or UT of the last try).
fn add_flag(info: &mut StreamInfo, flag: &'static str) {
    if !info.response_flags.contains(&flag) {
        info.response_flags.push(flag);
    }
}

/// Owns an [`ActiveStream`] until it is finished; finishes it when dropped.
pub(crate) struct StreamGuard(Option<Box<ActiveStream>>);

impl StreamGuard {
    pub(crate) fn new(conn: Arc<Connection>, info: StreamInfo, log: bool) -> StreamGuard {
        let timers = Timers::new(
            info.start,
            &conn.hcm.config.timeouts,
            conn.take_spare_timer(),
        );
        let start = info.start;
        StreamGuard(Some(Box::new(ActiveStream {
            conn,
            info,
            timers,
            request: RequestState::Complete {
                bytes: 0,
                complete: true,
                at: start,
            },
            lease: None,
            log,
            filter_state: http::Extensions::new(),
            request_line: None,
            head_request: false,
            response_request_id: None,
            virtual_cluster: None,
            http10_keep_alive: None,
        })))
    }

    /// Finishes the stream now.
    pub(crate) fn finish(&mut self, response_complete: bool) {
        if let Some(mut stream) = self.0.take() {
            stream.finish(response_complete);
        }
    }
}

impl Deref for StreamGuard {
    type Target = ActiveStream;
    fn deref(&self) -> &ActiveStream {
        self.0.as_deref().expect("stream used after it finished")
    }
}

impl DerefMut for StreamGuard {
    fn deref_mut(&mut self) -> &mut ActiveStream {
        self.0
            .as_deref_mut()
            .expect("stream used after it finished")
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// The body of every response keel sends downstream: the upstream's (or a local
/// reply's) body, plus the stream it ends.
pub struct ResponseBody {
    inner: Body,
    stream: StreamGuard,
}

impl ResponseBody {
    pub(crate) fn new(inner: Body, stream: StreamGuard) -> ResponseBody {
        ResponseBody { inner, stream }
    }

    /// Takes the stream out, for whoever ends it instead of this body (an upgraded
    /// stream ends with its spliced connection).
    pub(crate) fn take_stream(&mut self) -> StreamGuard {
        StreamGuard(self.stream.0.take())
    }
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let Some(stream) = this.stream.0.as_deref_mut() else {
            return polled;
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    stream.info.bytes_sent += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref() {
                    if stream.log {
                        stream.info.response_trailers = trailers.clone();
                    }
                }
                stream.timers.touch();
                if this.inner.is_end_stream() {
                    this.stream.finish(true);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.stream.finish(true);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                let truncated = match &error {
                    BodyError::Hyper(e) => is_truncated_body(e),
                    BodyError::Upstream(e) => matches!(**e, H1Error::Truncated),
                    _ => false,
                };
                let flag = match &error {
                    _ if truncated => {
                        // As Envoy's HTTP/1 codec: a body cut short by the upstream's
                        // close is a protocol error after the response started.
                        if stream.log {
                            stream.info.response_code_details = Some(
                                "upstream_reset_after_response_started{protocol_error}".to_owned(),
                            );
                        }
                        "UPE"
                    }
                    BodyError::Hyper(e) if e.is_incomplete_message() || e.is_closed() => "UC",
                    BodyError::Upstream(e) if e.is_termination() => "UC",
                    BodyError::Hyper(_) | BodyError::Upstream(_) => "UR",
                    _ => "DI",
                };
                stream.flag(flag);
                this.stream.finish(false);
                Poll::Ready(Some(Err(error)))
            }
            Poll::Pending => {
                if !stream.timers.is_armed() {
                    return Poll::Pending;
                }
                let expiry = ready!(stream.timers.poll_expired(&mut stream.request, cx));
                let hcm = &stream.conn.hcm;
                let message = match expiry {
                    Expiry::Route => {
                        add_flag(&mut stream.info, "UT");
                        if let Some(lease) = &stream.lease {
                            lease.cluster().stats.upstream_rq_timeout.inc();
                        }
                        "upstream request timeout"
                    }
                    Expiry::TryIdle => {
                        add_flag(&mut stream.info, "UT");
                        if stream.log {
                            stream.info.response_code_details =
                                Some("upstream_per_try_idle_timeout".to_owned());
                        }
                        if let Some(lease) = &stream.lease {
                            lease.cluster().stats.upstream_rq_per_try_idle_timeout.inc();
                        }
                        "upstream request timeout"
                    }
                    Expiry::Idle => {
                        add_flag(&mut stream.info, "SI");
                        hcm.stats.downstream_rq_idle_timeout.inc();
                        "stream timeout"
                    }
                    Expiry::MaxDuration => {
                        hcm.stats.downstream_rq_max_duration_reached.inc();
                        "downstream duration timeout"
                    }
                    Expiry::Request => {
                        hcm.stats.downstream_rq_timeout.inc();
                        "request timeout"
                    }
                };
                this.stream.finish(false);
                // An error resets the HTTP/2 stream or closes the HTTP/1 connection.
                Poll::Ready(Some(Err(BodyError::Timeout(message))))
            }
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        let complete =
            self.inner.is_end_stream() || self.stream.0.as_deref().is_some_and(|s| s.head_request);
        self.stream.finish(complete);
    }
}

/// An HTTP/1.1 response body that ended before its length or last chunk: hyper's
/// body error caused by an unexpected end of the stream.
fn is_truncated_body(error: &hyper::Error) -> bool {
    std::error::Error::source(error)
        .and_then(|cause| cause.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof)
}

#[cfg(test)]
mod size_tests {
    /// Every request allocates one `ActiveStream`: it must stay within glibc's fast
    /// (tcache) size classes, chunks of up to 1,032 bytes (measured: 1,088 bytes cost
    /// about 330 more instructions per request).
    #[test]
    fn the_per_request_stream_stays_in_the_fast_allocator_classes() {
        let size = std::mem::size_of::<super::ActiveStream>();
        assert!(size <= 1024, "ActiveStream is {size} bytes");
    }
}
