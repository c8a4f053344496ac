//! Retries of the router: the per-request retry state (Envoy's `RetryStateImpl`) and
//! the request body kept for replays.
//!
//! A request gets a [`RetryState`] only when its route (or virtual host) has a
//! `retry_policy` or a trusted client asked for retries with `x-envoy-retry-on` /
//! `x-envoy-retry-grpc-on`; every other request takes the single-try path with no
//! buffering and no extra allocation.
//!
//! The decision after each try is Envoy's:
//! 1. would the outcome be retried (`retry_on` against the status, the `grpc-status`
//!    of a trailers-only response, the retriable status codes and headers, or the
//!    kind of failure: connect failure, reset, refused stream, per-try timeout)?
//! 2. is a retry left (`num_retries`, or `x-envoy-max-retries`)? If not:
//!    `upstream_rq_retry_limit_exceeded` and the flag URX;
//! 3. does the `max_retries` breaker (or the retry budget) allow it? If not:
//!    `upstream_rq_retry_overflow` and the flag UO;
//! 4. retry after a fully jittered exponential back-off (`upstream_rq_retry`,
//!    `upstream_rq_retry_backoff_exponential`). A later outcome that is not retried
//!    counts `upstream_rq_retry_success`.
//!
//! The request body is kept in a [`RequestBuffer`] while it streams to the first try,
//! up to the route's buffer limit (Envoy's `per_request_buffer_limit_bytes` /
//! `request_body_buffer_limit`, else the listener's `per_connection_buffer_limit_bytes`, 1 MiB by default). A later try replays it and
//! goes on with the frames still to come. A body past the limit is not kept any more
//! and the request is not retried (`retry_or_shadow_abandoned`), as in Envoy; the
//! try in flight keeps streaming.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use hyper::body::{Frame, SizeHint};

use super::body::{Body, BodyError};
use crate::model::http::{
    HeaderMatcher, RetryBackOff, RetryOn, RetryPolicy, StringMatchKind, ValueMatch,
};
use crate::upstream::breaker::{Level, Slot};
use crate::upstream::{ClusterStats, UpstreamError};

/// `x-envoy-retry-on`.
pub(crate) const X_ENVOY_RETRY_ON: HeaderName = HeaderName::from_static("x-envoy-retry-on");
/// `x-envoy-retry-grpc-on`.
pub(crate) const X_ENVOY_RETRY_GRPC_ON: HeaderName =
    HeaderName::from_static("x-envoy-retry-grpc-on");
/// `x-envoy-max-retries`.
pub(crate) const X_ENVOY_MAX_RETRIES: HeaderName = HeaderName::from_static("x-envoy-max-retries");
/// `x-envoy-retriable-status-codes`.
pub(crate) const X_ENVOY_RETRIABLE_STATUS_CODES: HeaderName =
    HeaderName::from_static("x-envoy-retriable-status-codes");
/// `x-envoy-upstream-rq-timeout-ms`.
pub(crate) const X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-timeout-ms");
/// `x-envoy-upstream-rq-per-try-timeout-ms`.
pub(crate) const X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms");
/// `x-envoy-attempt-count`.
pub(crate) const X_ENVOY_ATTEMPT_COUNT: HeaderName =
    HeaderName::from_static("x-envoy-attempt-count");
/// `x-envoy-overloaded` (a response Envoy never retries).
pub(crate) const X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Envoy's default `per_connection_buffer_limit_bytes` of a listener.
pub(crate) const DEFAULT_BUFFER_LIMIT: u64 = 1 << 20;

/// How a try ended without response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The connection could not be made.
    Connect,
    /// The stream was refused (HTTP/2 REFUSED_STREAM).
    RefusedStream,
    /// Reset or closed before the response headers.
    Reset,
    /// The per-try timeout fired.
    PerTryTimeout,
    /// A circuit breaker refused the try (never retried).
    Overflow,
}

impl Failure {
    /// The failure of an upstream error.
    pub(crate) fn of(error: &UpstreamError) -> Failure {
        match error {
            UpstreamError::ConnectFailure { .. } | UpstreamError::ConnectTimeout { .. } => {
                Failure::Connect
            }
            UpstreamError::Overflow { .. } => Failure::Overflow,
            UpstreamError::NoHealthyUpstream { .. } => Failure::Overflow,
            UpstreamError::Reset { source, .. } => {
                let refused = std::error::Error::source(source)
                    .and_then(|e| e.downcast_ref::<h2::Error>())
                    .and_then(h2::Error::reason)
                    == Some(h2::Reason::REFUSED_STREAM);
                if refused {
                    Failure::RefusedStream
                } else {
                    Failure::Reset
                }
            }
        }
    }
}

/// What to do after a try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Not a retriable outcome: it is the answer.
    No,
    /// Retry after this back-off.
    Retry(Duration),
    /// Retriable, but no retry is left (flag URX).
    LimitExceeded,
    /// Retriable, but the `max_retries` breaker is open (flag UO).
    Overflow,
}

/// One request's retry state.
#[derive(Debug)]
pub(crate) struct RetryState<'a> {
    on: RetryOn,
    policy_codes: &'a [u16],
    header_codes: Vec<u16>,
    policy: Option<&'a RetryPolicy>,
    retries_left: u32,
    back_off: RetryBackOff,
    back_off_exponent: u32,
    /// A retry was made (the next non-retried outcome is a retry success).
    retried: bool,
    /// The slot of the `max_retries` breaker held by the retry in flight (given back
    /// when it is decided, or when the request goes away).
    retry_slot: Option<Slot<'a>>,
    /// The per-try timeout (`x-envoy-upstream-rq-per-try-timeout-ms` or the policy's).
    pub(crate) per_try_timeout: Option<Duration>,
    /// The policy's `per_try_idle_timeout`.
    pub(crate) per_try_idle_timeout: Option<Duration>,
}

impl<'a> RetryState<'a> {
    /// The retry state of a request: `None` when nothing asks for retries.
    /// `trusted_headers`: the request may carry `x-envoy-retry-*` headers (they
    /// passed the connection manager's checks); they are removed here, as Envoy
    /// consumes them.
    pub(crate) fn new(
        policy: Option<&'a RetryPolicy>,
        headers: &mut HeaderMap,
        trusted_headers: bool,
    ) -> Option<RetryState<'a>> {
        let mut on = policy.map_or(RetryOn::default(), |p| p.conditions);
        let mut retries = policy.map_or(1, |p| p.num_retries);
        let mut per_try_timeout = policy.and_then(|p| p.per_try_timeout);
        let mut header_codes = Vec::new();
        if trusted_headers {
            if let Some(value) = headers.remove(X_ENVOY_RETRY_ON) {
                on.0 |= RetryOn::parse_list(value.to_str().unwrap_or(""), false).0;
            }
            if let Some(value) = headers.remove(X_ENVOY_RETRY_GRPC_ON) {
                on.0 |= RetryOn::parse_list(value.to_str().unwrap_or(""), true).0;
            }
            if let Some(value) = headers.remove(X_ENVOY_MAX_RETRIES) {
                if let Some(n) = value.to_str().ok().and_then(|v| v.trim().parse().ok()) {
                    retries = n;
                }
            }
            if let Some(value) = headers.remove(X_ENVOY_RETRIABLE_STATUS_CODES) {
                header_codes = value
                    .to_str()
                    .unwrap_or("")
                    .split(',')
                    .filter_map(|c| c.trim().parse().ok())
                    .collect();
            }
            if let Some(value) = headers.remove(X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS) {
                if let Some(ms) = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                {
                    per_try_timeout = (ms > 0).then(|| Duration::from_millis(ms));
                }
            }
        }
        let per_try_idle_timeout = policy.and_then(|p| p.per_try_idle_timeout);
        // Per-try timeouts apply even when nothing is retried, as in Envoy.
        if on.0 == 0 && per_try_timeout.is_none() && per_try_idle_timeout.is_none() {
            return None;
        }
        Some(RetryState {
            on,
            policy_codes: policy.map_or(&[][..], |p| &p.retriable_status_codes),
            header_codes,
            policy,
            retries_left: retries,
            back_off: policy.map_or(RetryBackOff::default(), |p| p.back_off),
            back_off_exponent: 1,
            retried: false,
            retry_slot: None,
            per_try_timeout,
            per_try_idle_timeout,
        })
    }

    /// Whether the policy avoids previous hosts, and how many picks it may redo.
    pub(crate) fn host_selection(&self) -> Option<u32> {
        self.policy
            .filter(|p| p.previous_hosts)
            .map(|p| p.host_selection_retry_max_attempts)
    }

    /// Whether response headers ask for a retry.
    pub(crate) fn would_retry_response(&self, status: u16, headers: &HeaderMap) -> bool {
        if headers.contains_key(X_ENVOY_OVERLOADED) {
            return false;
        }
        let on = self.on;
        if on.any(RetryOn::FIVE_XX) && (500..600).contains(&status) {
            return true;
        }
        if on.any(RetryOn::GATEWAY_ERROR) && matches!(status, 502..=504) {
            return true;
        }
        if on.any(RetryOn::RETRIABLE_4XX) && status == 409 {
            return true;
        }
        if on.any(RetryOn::RETRIABLE_STATUS_CODES)
            && (self.policy_codes.contains(&status) || self.header_codes.contains(&status))
        {
            return true;
        }
        if on.any(RetryOn::RETRIABLE_HEADERS) {
            if let Some(policy) = self.policy {
                if policy
                    .retriable_headers
                    .iter()
                    .any(|m| response_header_matches(m, headers))
                {
                    return true;
                }
            }
        }
        if on.any(RetryOn::GRPC) {
            // A trailers-only gRPC response carries its status in the headers.
            let grpc = headers
                .get(GRPC_STATUS)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok());
            let bit = match grpc {
                Some(1) => RetryOn::GRPC_CANCELLED,
                Some(4) => RetryOn::GRPC_DEADLINE_EXCEEDED,
                Some(8) => RetryOn::GRPC_RESOURCE_EXHAUSTED,
                Some(13) => RetryOn::GRPC_INTERNAL,
                Some(14) => RetryOn::GRPC_UNAVAILABLE,
                _ => 0,
            };
            if on.any(bit) {
                return true;
            }
        }
        false
    }

    /// Whether a try that got no response headers is retried.
    pub(crate) fn would_retry_failure(&self, failure: Failure) -> bool {
        let on = self.on;
        match failure {
            Failure::Overflow => false,
            _ if on.any(RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR | RetryOn::RESET) => true,
            Failure::Connect => on.any(RetryOn::CONNECT_FAILURE),
            Failure::RefusedStream => on.any(RetryOn::REFUSED_STREAM),
            Failure::Reset | Failure::PerTryTimeout => false,
        }
    }

    /// Envoy's `shouldRetry`: `would_retry` is the outcome's retriability; `level`
    /// the breakers of the request's priority.
    pub(crate) fn decide(
        &mut self,
        would_retry: bool,
        level: &'a Level,
        stats: &ClusterStats,
    ) -> Decision {
        // The retry in flight (if any) is over.
        self.retry_slot = None;
        if !would_retry {
            if self.retried {
                stats.upstream_rq_retry_success.inc();
            }
            return Decision::No;
        }
        if self.retries_left == 0 {
            stats.upstream_rq_retry_limit_exceeded.inc();
            return Decision::LimitExceeded;
        }
        self.retries_left -= 1;
        if !level.try_retry() {
            stats.upstream_rq_retry_overflow.inc();
            return Decision::Overflow;
        }
        self.retry_slot = Some(Slot(&level.retries));
        self.retried = true;
        stats.upstream_rq_retry.inc();
        stats.upstream_rq_retry_backoff_exponential.inc();
        Decision::Retry(self.next_back_off(crate::upstream::fast_random()))
    }

    /// Gives back a retry slot still held (the request ended during a retry).
    pub(crate) fn finish(&mut self) {
        self.retry_slot = None;
    }

    /// Envoy's `JitteredExponentialBackOffStrategy`: uniformly random below
    /// `(2^n - 1) * base` for the n-th retry, at most `max_interval`.
    fn next_back_off(&mut self, random: u64) -> Duration {
        let base = self.back_off.base_interval.as_millis().max(1) as u64;
        let max = self.back_off.max_interval.as_millis() as u64;
        let multiplier = (1u64 << self.back_off_exponent.min(62)) - 1;
        let ceiling = multiplier.saturating_mul(base);
        if ceiling <= max {
            self.back_off_exponent += 1;
        }
        Duration::from_millis((random % ceiling.max(1)).min(max))
    }
}

/// The request body of a request that may be retried: the downstream body, and the
/// frames read from it so far (up to the buffer limit).
#[derive(Debug, Clone)]
pub(crate) struct RequestBuffer(Arc<Mutex<Buffered>>);

struct Buffered {
    source: Body,
    chunks: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    size: u64,
    limit: u64,
    /// Past the limit: the chunks were dropped, no replay is possible.
    overflowed: bool,
    /// The source ended.
    ended: bool,
    /// The source failed.
    failed: bool,
    /// The newest replay: only it reads the source.
    generation: u32,
}

impl std::fmt::Debug for Buffered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffered")
            .field("chunks", &self.chunks.len())
            .field("size", &self.size)
            .field("overflowed", &self.overflowed)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl RequestBuffer {
    /// Keeps up to `limit` bytes of `source`.
    pub(crate) fn new(source: Body, limit: u64) -> RequestBuffer {
        RequestBuffer(Arc::new(Mutex::new(Buffered {
            source,
            chunks: Vec::new(),
            trailers: None,
            size: 0,
            limit,
            overflowed: false,
            ended: false,
            failed: false,
            generation: 0,
        })))
    }

    /// Whether a new try can get the whole body.
    pub(crate) fn can_replay(&self) -> bool {
        let state = self.0.lock().expect("request buffer lock");
        !state.overflowed && !state.failed
    }

    /// The body for the next try: the frames kept, then the rest of the source. An
    /// earlier try's body stops reading (it fails if polled again).
    pub(crate) fn replay(&self) -> Body {
        let generation = {
            let mut state = self.0.lock().expect("request buffer lock");
            state.generation += 1;
            state.generation
        };
        Body::wrap(ReplayBody {
            buffer: self.clone(),
            generation,
            position: 0,
            trailers_sent: false,
        })
    }
}

/// One try's request body (see [`RequestBuffer`]).
struct ReplayBody {
    buffer: RequestBuffer,
    generation: u32,
    /// The next kept chunk to send.
    position: usize,
    trailers_sent: bool,
}

impl hyper::body::Body for ReplayBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let mut state = this.buffer.0.lock().expect("request buffer lock");
        if state.generation != this.generation {
            return Poll::Ready(Some(Err(BodyError::Other(
                "request body taken over by a retry".into(),
            ))));
        }
        if this.position < state.chunks.len() {
            let chunk = state.chunks[this.position].clone();
            this.position += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if state.ended {
            if let Some(trailers) = state.trailers.clone().filter(|_| !this.trailers_sent) {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            return Poll::Ready(None);
        }
        if state.failed || (state.overflowed && this.position > 0 && this.generation > 1) {
            return Poll::Ready(Some(Err(BodyError::Other(
                "request body no longer available for a retry".into(),
            ))));
        }
        let polled = Pin::new(&mut state.source).poll_frame(cx);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                state.ended = true;
                this.trailers_sent = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                state.failed = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    state.size += data.len() as u64;
                    if !state.overflowed {
                        if state.size > state.limit {
                            state.overflowed = true;
                            state.chunks = Vec::new();
                        } else {
                            state.chunks.push(data.clone());
                            this.position = state.chunks.len();
                        }
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    state.trailers = Some(trailers.clone());
                    this.trailers_sent = true;
                }
                if state.source.is_end_stream() {
                    state.ended = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let state = self.buffer.0.lock().expect("request buffer lock");
        state.ended
            && this_position_done(self.position, state.chunks.len())
            && (self.trailers_sent || state.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Envoy's `HeaderUtility::matchHeaders` over response headers (several values are
/// joined with `,`).
fn response_header_matches(m: &HeaderMatcher, headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(m.name.as_str()).iter();
    let value = match values.next() {
        None if m.treat_missing_as_empty => String::new(),
        None => {
            return if m.invert {
                matches!(m.rule, ValueMatch::Present)
            } else {
                matches!(m.rule, ValueMatch::Absent)
            }
        }
        Some(first) => {
            let mut joined = String::from_utf8_lossy(first.as_bytes()).into_owned();
            for v in values {
                joined.push(',');
                joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
            }
            joined
        }
    };
    let matched = match &m.rule {
        ValueMatch::Present => true,
        ValueMatch::Absent => false,
        ValueMatch::Regex(re) => re.is_match(&value),
        ValueMatch::Range { start, end } => {
            value.parse::<i64>().is_ok_and(|v| v >= *start && v < *end)
        }
        ValueMatch::String(s) => {
            let value = if s.ignore_case {
                value.to_ascii_lowercase()
            } else {
                value
            };
            match s.kind {
                StringMatchKind::Exact => value == s.value,
                StringMatchKind::Prefix => value.starts_with(&s.value),
                StringMatchKind::Suffix => value.ends_with(&s.value),
                StringMatchKind::Contains => value.contains(&s.value),
            }
        }
    };
    matched != m.invert
}

fn this_position_done(position: usize, chunks: usize) -> bool {
    position >= chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::breakers::{CircuitBreakers, RoutingPriority};
    use crate::upstream::breaker::Breakers;
    use http_body_util::BodyExt;

    fn policy(retry_on: &str, num_retries: u32) -> RetryPolicy {
        RetryPolicy {
            retry_on: retry_on.split(',').map(String::from).collect(),
            num_retries,
            conditions: RetryOn::parse_list(retry_on, false),
            retriable_status_codes: vec![418],
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn conditions_select_outcomes() {
        let p = policy("gateway-error,retriable-status-codes,unavailable", 1);
        let mut headers = HeaderMap::new();
        let state = RetryState::new(Some(&p), &mut headers, false).unwrap();
        let h = HeaderMap::new();
        assert!(state.would_retry_response(503, &h));
        assert!(
            !state.would_retry_response(500, &h),
            "500 is not a gateway error"
        );
        assert!(state.would_retry_response(418, &h));
        assert!(!state.would_retry_response(200, &h));
        let mut grpc = HeaderMap::new();
        grpc.insert("grpc-status", "14".parse().unwrap());
        assert!(state.would_retry_response(200, &grpc));
        grpc.insert("grpc-status", "13".parse().unwrap());
        assert!(
            !state.would_retry_response(200, &grpc),
            "internal is not listed"
        );
        let mut overloaded = HeaderMap::new();
        overloaded.insert("x-envoy-overloaded", "true".parse().unwrap());
        assert!(!state.would_retry_response(503, &overloaded));
        assert!(state.would_retry_failure(Failure::Reset));
        assert!(state.would_retry_failure(Failure::PerTryTimeout));
        assert!(!state.would_retry_failure(Failure::Overflow));

        let p = policy("connect-failure", 1);
        let state = RetryState::new(Some(&p), &mut headers, false).unwrap();
        assert!(state.would_retry_failure(Failure::Connect));
        assert!(!state.would_retry_failure(Failure::Reset));
        assert!(!state.would_retry_response(503, &h));
    }

    #[test]
    fn request_headers_add_conditions_only_when_trusted() {
        let mut headers = HeaderMap::new();
        headers.insert("x-envoy-retry-on", "5xx".parse().unwrap());
        headers.insert("x-envoy-max-retries", "4".parse().unwrap());
        assert!(RetryState::new(None, &mut headers.clone(), false).is_none());
        let state = RetryState::new(None, &mut headers, true).unwrap();
        assert_eq!(state.retries_left, 4);
        assert!(state.would_retry_response(500, &HeaderMap::new()));
        assert!(headers.is_empty(), "the headers are consumed");
    }

    #[test]
    fn decisions_count_limits_and_overflow() {
        let stats = ClusterStats::new("retry_unit");
        let breakers = Breakers::new(
            "retry_unit",
            &CircuitBreakers {
                default: crate::model::breakers::Thresholds {
                    max_retries: 1,
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        let level = breakers.at(RoutingPriority::Default);
        let p = policy("5xx", 2);
        let mut headers = HeaderMap::new();
        let mut a = RetryState::new(Some(&p), &mut headers, false).unwrap();
        let mut b = RetryState::new(Some(&p), &mut headers, false).unwrap();
        assert!(matches!(a.decide(true, level, &stats), Decision::Retry(_)));
        assert_eq!(
            b.decide(true, level, &stats),
            Decision::Overflow,
            "max_retries 1"
        );
        assert!(matches!(a.decide(true, level, &stats), Decision::Retry(_)));
        assert_eq!(a.decide(true, level, &stats), Decision::LimitExceeded);
        assert_eq!(level.retries.current(), 0, "slots are given back");
        assert_eq!(stats.upstream_rq_retry.value(), 2);
        assert_eq!(stats.upstream_rq_retry_overflow.value(), 1);
        assert_eq!(stats.upstream_rq_retry_limit_exceeded.value(), 1);
        let mut c = RetryState::new(Some(&p), &mut headers, false).unwrap();
        assert!(matches!(c.decide(true, level, &stats), Decision::Retry(_)));
        assert_eq!(c.decide(false, level, &stats), Decision::No);
        assert_eq!(stats.upstream_rq_retry_success.value(), 1);
        // A request that goes away during a retry gives its slot back.
        let mut d = RetryState::new(Some(&p), &mut headers, false).unwrap();
        assert!(matches!(d.decide(true, level, &stats), Decision::Retry(_)));
        assert_eq!(level.retries.current(), 1);
        drop(d);
        assert_eq!(level.retries.current(), 0);
    }

    #[test]
    fn back_off_is_jittered_exponential_and_capped() {
        let p = policy("5xx", 10);
        let mut headers = HeaderMap::new();
        let mut state = RetryState::new(Some(&p), &mut headers, false).unwrap();
        // The largest random value shows each ceiling: 25, 75, 175, then 250 (10x base).
        let ceilings: Vec<u64> = (0..5)
            .map(|_| state.next_back_off(u64::MAX).as_millis() as u64)
            .collect();
        assert_eq!(ceilings[0], u64::MAX % 25);
        assert!(ceilings[0] < 25 && ceilings[1] < 75 && ceilings[2] < 175);
        assert!(ceilings.iter().all(|&c| c <= 250));
        let mut state = RetryState::new(Some(&p), &mut headers, false).unwrap();
        assert_eq!(state.next_back_off(24).as_millis(), 24);
        assert_eq!(state.next_back_off(74).as_millis(), 74);
        assert_eq!(state.next_back_off(174).as_millis(), 174);
        assert_eq!(
            state.next_back_off(374).as_millis(),
            250,
            "capped at max_interval"
        );
    }

    #[tokio::test]
    async fn bodies_replay_and_stop_at_the_limit() {
        let source = Body::full(Bytes::from_static(b"hello"));
        let buffer = RequestBuffer::new(source, 16);
        let first = buffer.replay().collect().await.unwrap().to_bytes();
        assert_eq!(first, "hello");
        assert!(buffer.can_replay());
        let second = buffer.replay().collect().await.unwrap().to_bytes();
        assert_eq!(second, "hello", "the retry gets the same body");

        let big = RequestBuffer::new(Body::full(Bytes::from(vec![b'x'; 32])), 16);
        let streamed = big.replay().collect().await.unwrap().to_bytes();
        assert_eq!(streamed.len(), 32, "past the limit the try still streams");
        assert!(!big.can_replay());
    }
}
