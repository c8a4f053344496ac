//! The router's forward: cluster and endpoint, path and host rewrites, header
//! mutations, the upstream request with its timeouts, the response, upgrades and
//! request mirrors.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Body as _;
use tokio::sync::mpsc;

use super::body::{Body, BodyError, MirrorBody, MirrorFrame, TrackedRequest};
use super::headers::{millis_value, X_ENVOY_EXPECTED_RQ_TIMEOUT_MS, X_ENVOY_UPSTREAM_SERVICE_TIME};
use super::local_reply::{grpc, LocalReply};
use super::request::{RequestMeta, SCHEME};
use super::retry::{
    Decision, Failure, RequestBuffer, RetryState, X_ENVOY_ATTEMPT_COUNT, X_ENVOY_OVERLOADED,
    X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS,
};
use super::stream::{Expiry, RequestState, ResponseBody, StreamGuard};
use super::Connection;
use crate::model::http::{ForwardAction, HostRewrite, RouteStreamDuration};
use crate::observe::format::FormatContext;
use crate::router::{Selected, ORIGINAL_PATH_HEADER};
use crate::upstream::hash::{request_hash_for_connection, RequestHash};
use crate::upstream::{
    fast_random, ClusterUpstream, Host, Outcome, PickContext, UpstreamError, WireProtocol,
};

/// gRPC's deadline header.
const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// Envoy's `Grpc::Common::getGrpcTimeout`: at most 8 digits and a unit (`H`, `M`, `S`,
/// `m`, `u`, `n`); sub-millisecond units round up to whole milliseconds.
fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_millis(n.div_ceil(1_000)),
        b'n' => Duration::from_millis(n.div_ceil(1_000_000)),
        _ => return None,
    })
}

/// Envoy's `Grpc::Common::toGrpcTimeout`: milliseconds, or a coarser unit when the
/// value does not fit in 8 digits.
fn grpc_timeout_value(limit: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let mut value = limit.as_millis();
    let mut unit = 'm';
    for (next, factor) in [('S', 1000), ('M', 60), ('H', 60)] {
        if value <= MAX {
            break;
        }
        value /= factor;
        unit = next;
    }
    HeaderValue::from_str(&format!("{}{unit}", value.min(MAX)))
        .expect("digits and a unit are a valid header value")
}

/// The host a host rewrite replaced (Envoy's `x-envoy-original-host`).
const X_ENVOY_ORIGINAL_HOST: http::HeaderName =
    http::HeaderName::from_static("x-envoy-original-host");

/// Frames a mirror may lag behind its request before it is cut off.
const MIRROR_BACKLOG: usize = 64;

impl Connection {
    /// Forwards a request upstream and returns the response (or a local reply).
    pub(crate) async fn forward(
        &self,
        mut stream: StreamGuard,
        mut parts: http::request::Parts,
        body: Body,
        selected: Selected<'_>,
        forward: &ForwardAction,
        meta: RequestMeta,
    ) -> Response<ResponseBody> {
        let hcm = &*self.hcm;
        let extras = &hcm.route_extras[selected.virtual_host_index][selected.route_index];
        let cluster = match &extras.cluster {
            Some(cluster) => Some(cluster),
            None => selected
                .choose_cluster(&parts.headers, meta.random)
                .and_then(|name| hcm.upstreams.get(name)),
        };
        let Some(cluster) = cluster else {
            hcm.stats.no_cluster.inc();
            let status = StatusCode::from_u16(forward.cluster_not_found_status)
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let reply = LocalReply::new(status, "")
                .flag("NC")
                .details("cluster_not_found");
            return self.local_reply(stream, reply, &meta, Some(selected)).await;
        };
        if stream.log {
            stream.info.upstream_cluster = Some(cluster.name().to_owned());
        }
        let hash = if forward.hash_policy.is_empty() {
            RequestHash::default()
        } else {
            request_hash_for_connection(
                &forward.hash_policy,
                &parts.headers,
                stream.info.downstream_remote,
                stream.info.downstream_local,
            )
        };
        let upgrade = meta.upgrade.is_some();
        // Set by a filter, or sent by an internal peer (`internal_address_config`).
        let trusted_headers = meta.filters_ran > 0 || meta.internal;
        let mut route_timeout = forward.timeout;
        if trusted_headers {
            if let Some(value) = parts.headers.remove(X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS) {
                if let Some(ms) = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                {
                    route_timeout = (ms > 0).then(|| Duration::from_millis(ms));
                }
            }
        }
        let pick = PickContext {
            hash: hash.value,
            original_dst: cluster.original_destination(&parts.headers),
            ..PickContext::default()
        };
        let Some(host) = cluster.pick(&pick) else {
            let reply = LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream")
                .flag("UH")
                .details("no_healthy_upstream");
            return self.local_reply(stream, reply, &meta, Some(selected)).await;
        };
        let address = host.address;
        stream.info.upstream_host = Some(address);

        // Rewrites and the route's header mutations.
        let original = parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        if let Some(rewritten) = selected.rewrite_path(original) {
            if let (Ok(value), Ok(path)) = (
                HeaderValue::from_str(original),
                rewritten.parse::<PathAndQuery>(),
            ) {
                let mut uri = std::mem::take(&mut parts.uri).into_parts();
                uri.path_and_query = Some(path);
                parts.uri = Uri::from_parts(uri).unwrap_or_default();
                parts.headers.insert(ORIGINAL_PATH_HEADER, value);
            }
        }
        // As Envoy's `updateAuthority` (the router's `suppress_envoy_headers` is not
        // supported, so always): the host it replaces goes to x-envoy-original-host.
        let new_host = match &forward.host_rewrite {
            HostRewrite::None => None,
            HostRewrite::Literal(host) => HeaderValue::from_str(host).ok(),
            // Envoy rewrites to the chosen host's hostname, and a STATIC endpoint (the
            // only kind keel has; `endpoint.hostname` is not supported) has none: the
            // host stays.
            HostRewrite::Auto => None,
            HostRewrite::Header(_) | HostRewrite::PathRegex(..) => {
                super::request::dynamic_host_rewrite(&forward.host_rewrite, &parts)
            }
        };
        if let Some(value) = new_host {
            if let Some(old) = authority(&parts).and_then(|a| HeaderValue::from_str(a).ok()) {
                parts.headers.insert(X_ENVOY_ORIGINAL_HOST, old);
            }
            set_authority(&mut parts, value);
        }
        if let Some(limits) = &forward.max_stream_duration {
            self.route_stream_duration(&mut stream, &mut parts, limits, meta.grpc);
        }
        selected.apply_request_headers(&mut parts, &stream.info, Some(SCHEME));
        if route_timeout != forward.timeout {
            let expected = route_timeout.map(|t| millis_value(t.as_millis() as u64));
            match expected {
                Some(expected) => parts
                    .headers
                    .insert(X_ENVOY_EXPECTED_RQ_TIMEOUT_MS, expected),
                None => parts.headers.remove(X_ENVOY_EXPECTED_RQ_TIMEOUT_MS),
            };
        } else if let Some(expected) = &extras.expected_timeout {
            parts
                .headers
                .insert(X_ENVOY_EXPECTED_RQ_TIMEOUT_MS, expected.clone());
        }
        if stream.log || extras.response_reads_request {
            stream.info.request_headers = parts.headers.clone();
        }
        if stream.log {
            stream.request_line = Some(Box::new((parts.method.clone(), parts.uri.clone())));
        }

        // Mirrors get the request as sent, body copied frame by frame.
        let body_pending = !body.is_end_stream();
        let mirrors = if forward.mirrors.is_empty() {
            Vec::new()
        } else {
            self.start_mirrors(forward, &parts, body_pending)
        };
        let body = if body_pending {
            let (tracked, end) = TrackedRequest::new(body, mirrors);
            stream.request = RequestState::Pending(end);
            Body::wrap(tracked)
        } else {
            body
        };
        {
            let s = &mut *stream;
            s.timers
                .set_route(route_timeout, forward.idle_timeout, &s.request);
        }

        let protocol = if upgrade {
            WireProtocol::Http1
        } else {
            cluster.wire_protocol(parts.version)
        };
        if !prepare_upstream_request(&mut parts, protocol) {
            let reply = LocalReply::new(StatusCode::BAD_REQUEST, "").details("missing_host_header");
            return self.local_reply(stream, reply, &meta, Some(selected)).await;
        }
        // From here the body is the upstream request's to read.
        let mut meta = meta;
        meta.body_unread = false;
        // `x-envoy-*` control headers reach the router only from filters or internal
        // peers: the connection manager removes them from every external client.
        // The retry state is made here, after the last local reply of the single-try
        // path and in a block of its own, so that the common request's future does
        // not carry it.
        if !upgrade && (forward.retry_policy.is_some() || trusted_headers) {
            if let Some(retry) = RetryState::new(
                forward.retry_policy.as_ref(),
                &mut parts.headers,
                trusted_headers,
            ) {
                // Boxed: the retry loop is the less common path and its state is large.
                let attempt = Attempt {
                    cluster,
                    host,
                    protocol,
                    set_cookie: hash.set_cookie,
                    hash: hash.value,
                    original_dst: pick.original_dst,
                };
                return Box::pin(self.forward_with_retries(
                    stream, parts, body, selected, forward, meta, attempt, retry,
                ))
                .await;
            }
        }
        let priority = forward.options.priority;
        if forward.options.include_request_attempt_count {
            parts.headers.insert(X_ENVOY_ATTEMPT_COUNT, millis_value(1));
        }
        stream.info.upstream_attempt_count = 1;
        let request = Request::from_parts(parts, body);
        let sent_at = Instant::now();
        let send = async {
            if upgrade {
                // Boxed: a new connection's future is large and upgrades are rare.
                Box::pin(cluster.send_upgrade(&host, request)).await
            } else {
                cluster.send_at(&host, protocol, priority, request).await
            }
        };
        let outcome = {
            let s = &mut *stream;
            let timers = &mut s.timers;
            let request_state = &mut s.request;
            let armed = timers.is_armed();
            let mut send = std::pin::pin!(send);
            std::future::poll_fn(|cx| {
                if let Poll::Ready(result) = send.as_mut().poll(cx) {
                    return Poll::Ready(Ok(result));
                }
                if armed {
                    if let Poll::Ready(expiry) = timers.poll_expired(request_state, cx) {
                        return Poll::Ready(Err(expiry));
                    }
                }
                Poll::Pending
            })
            .await
        };

        match outcome {
            Ok(Ok((mut response, lease))) => {
                cluster.record_outcome(&host, Outcome::Response(response.status().as_u16()));
                let now = Instant::now();
                if stream.log {
                    stream.info.response_duration =
                        Some(now.saturating_duration_since(stream.info.start));
                    stream.info.response_code_details = Some("via_upstream".to_owned());
                }
                stream.lease = Some(lease);
                let upgraded = upgrade && response.status() == StatusCode::SWITCHING_PROTOCOLS;
                let upstream_upgrade = upgraded.then(|| hyper::upgrade::on(&mut response));
                let (mut head, body) = response.into_parts();
                // As Envoy's router: the time since the downstream request was complete,
                // and none when it is not (still streaming, or an upgrade, 101 or not).
                let request_done = stream.request_completed_at();
                if let (false, Some(done)) = (upgrade, request_done) {
                    let since = now.saturating_duration_since(done.max(sent_at));
                    head.headers.insert(
                        X_ENVOY_UPSTREAM_SERVICE_TIME,
                        millis_value(since.as_millis() as u64),
                    );
                }
                selected.apply_response_headers(
                    &mut head.headers,
                    &FormatContext::new(&stream.info).with_scheme(SCHEME),
                );
                hcm.headers.mutate_response(&mut head.headers, upgraded);
                if let Some(cookie) = hash.set_cookie {
                    head.headers.append(http::header::SET_COOKIE, cookie);
                }
                if forward.options.include_attempt_count_in_response {
                    head.headers.insert(X_ENVOY_ATTEMPT_COUNT, millis_value(1));
                }
                if meta.http1 && !upgraded && (upgrade || request_done.is_none()) {
                    // A response before the request's end (or to an upgrade the upstream
                    // refused) closes an HTTP/1 connection, as in Envoy.
                    head.headers
                        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                }
                let mut meta = meta;
                let upgrade_pair = match (upstream_upgrade, meta.upgrade.take()) {
                    (Some(upstream), Some(downstream)) => Some((downstream, upstream)),
                    _ => None,
                };
                let response = Response::from_parts(head, body);
                let mut response = if meta.filters_ran == 0 {
                    self.finish_response(stream, response)
                } else {
                    Box::pin(self.respond(stream, response, &meta, Some(selected))).await
                };
                if let Some((downstream, upstream)) = upgrade_pair {
                    // The stream lives on with the spliced connections.
                    super::upgrade::splice(downstream, upstream, response.body_mut().take_stream());
                }
                response
            }
            Ok(Err(error)) => {
                cluster.record_outcome(&host, outcome_of(cluster, &error));
                let mut reply = upstream_failure(&error);
                if forward.options.include_attempt_count_in_response {
                    reply = reply.header(X_ENVOY_ATTEMPT_COUNT, millis_value(1));
                }
                tracing::debug!(cluster = cluster.name(), "{error}");
                self.local_reply(stream, reply, &meta, Some(selected)).await
            }
            Err(expiry) => {
                let mut reply = self.timeout_reply(expiry, request_complete(&stream), cluster);
                if matches!(expiry, Expiry::Route) {
                    cluster.record_outcome(&host, Outcome::Timeout);
                    if forward.options.include_attempt_count_in_response {
                        reply = reply.header(X_ENVOY_ATTEMPT_COUNT, millis_value(1));
                    }
                }
                self.local_reply(stream, reply, &meta, Some(selected)).await
            }
        }
    }
    /// The forward of a request that may be retried: tries, back-offs and the
    /// replayed body, all under the route's timeout (see [`super::retry`]).
    #[allow(clippy::too_many_arguments)]
    async fn forward_with_retries<'r>(
        &self,
        mut stream: StreamGuard,
        parts: http::request::Parts,
        body: Body,
        selected: Selected<'_>,
        forward: &ForwardAction,
        meta: RequestMeta,
        attempt: Attempt<'r>,
        mut retry: RetryState<'r>,
    ) -> Response<ResponseBody> {
        let Attempt {
            cluster,
            mut host,
            protocol,
            set_cookie,
            hash,
            original_dst,
        } = attempt;
        let options = &forward.options;
        let level = cluster.breakers.at(options.priority);
        let buffer = (!body.is_end_stream()).then(|| {
            RequestBuffer::new(body, options.buffer_limit.unwrap_or(self.hcm.buffer_limit))
        });
        let mut abandoned = false;
        let head = parts;
        let mut previous: Vec<Arc<Host>> = Vec::new();
        let mut attempts: u32 = 0;
        let mut first_sent = None;
        loop {
            attempts += 1;
            stream.info.upstream_host = Some(host.address);
            stream.info.upstream_attempt_count = attempts;
            let mut parts = clone_head(&head);
            if options.include_request_attempt_count {
                parts
                    .headers
                    .insert(X_ENVOY_ATTEMPT_COUNT, millis_value(u64::from(attempts)));
            }
            let body = match &buffer {
                Some(buffer) => buffer.replay(),
                None => Body::Empty,
            };
            let request = Request::from_parts(parts, body);
            let try_started = Instant::now();
            let sent_at = *first_sent.get_or_insert(try_started);
            stream.timers.start_try(retry.per_try_idle_timeout);
            let send = cluster.send_at(&host, protocol, options.priority, request);
            let outcome = {
                let s = &mut *stream;
                let timers = &mut s.timers;
                let request_state = &mut s.request;
                let per_try = retry.per_try_timeout;
                let mut per_try_sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
                let mut send = std::pin::pin!(send);
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(result) = send.as_mut().poll(cx) {
                        return Poll::Ready(Ok(result));
                    }
                    if let Poll::Ready(expiry) = timers.poll_expired(request_state, cx) {
                        if expiry == Expiry::TryIdle {
                            return Poll::Ready(Err(TryExpiry::PerTryIdle));
                        }
                        return Poll::Ready(Err(TryExpiry::Stream(expiry)));
                    }
                    if let Some(per_try) = per_try {
                        if per_try_sleep.is_none() {
                            // Envoy starts the per-try timer once the request is
                            // complete (and the try started).
                            if let RequestState::Complete { at, .. } = request_state {
                                let start = (*at).max(try_started);
                                per_try_sleep = Some(Box::pin(tokio::time::sleep_until(
                                    tokio::time::Instant::from_std(start + per_try),
                                )));
                            }
                        }
                        if let Some(sleep) = &mut per_try_sleep {
                            if sleep.as_mut().poll(cx).is_ready() {
                                return Poll::Ready(Err(TryExpiry::PerTry));
                            }
                        }
                    }
                    Poll::Pending
                })
                .await
            };
            if !abandoned && buffer.as_ref().is_some_and(|b| !b.can_replay()) {
                // Past the buffer limit: this request is not retried any more.
                abandoned = true;
                cluster.stats.retry_or_shadow_abandoned.inc();
            }
            let replayable = !abandoned;

            // Decide: the answer, or another try.
            let (decision, result) = match outcome {
                Ok(Ok((response, lease))) => {
                    let status = response.status().as_u16();
                    cluster.record_outcome(&host, Outcome::Response(status));
                    let would =
                        replayable && retry.would_retry_response(status, response.headers());
                    (
                        retry.decide(would, level, &cluster.stats),
                        TryResult::Response(response, lease, sent_at),
                    )
                }
                Ok(Err(error)) => {
                    cluster.record_outcome(&host, outcome_of(cluster, &error));
                    tracing::debug!(cluster = cluster.name(), "{error}");
                    let would = replayable && retry.would_retry_failure(Failure::of(&error));
                    let mut reply = upstream_failure(&error);
                    if attempts > 1 && !matches!(error, UpstreamError::NoHealthyUpstream { .. }) {
                        reply.body = Bytes::from(format!(
                            "upstream connect error or disconnect/reset before headers. retried \
                             and the latest reset reason: {}",
                            error.reset_reason()
                        ));
                    }
                    (
                        retry.decide(would, level, &cluster.stats),
                        TryResult::Failure(reply),
                    )
                }
                Err(expiry @ (TryExpiry::PerTry | TryExpiry::PerTryIdle)) => {
                    let details = if matches!(expiry, TryExpiry::PerTry) {
                        cluster.stats.upstream_rq_per_try_timeout.inc();
                        "upstream_per_try_timeout"
                    } else {
                        cluster.stats.upstream_rq_per_try_idle_timeout.inc();
                        "upstream_per_try_idle_timeout"
                    };
                    cluster.record_outcome(&host, Outcome::Timeout);
                    let would = replayable && retry.would_retry_failure(Failure::PerTryTimeout);
                    let reply =
                        LocalReply::new(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
                            .flag("UT")
                            .details(details);
                    (
                        retry.decide(would, level, &cluster.stats),
                        TryResult::Failure(reply),
                    )
                }
                Err(TryExpiry::Stream(expiry)) => {
                    retry.finish();
                    let mut reply = self.timeout_reply(expiry, request_complete(&stream), cluster);
                    if matches!(expiry, Expiry::Route) {
                        cluster.record_outcome(&host, Outcome::Timeout);
                        if options.include_attempt_count_in_response {
                            reply = reply
                                .header(X_ENVOY_ATTEMPT_COUNT, millis_value(u64::from(attempts)));
                        }
                    }
                    return self.local_reply(stream, reply, &meta, Some(selected)).await;
                }
            };
            let back_off = match decision {
                Decision::Retry(back_off) => back_off,
                Decision::No | Decision::LimitExceeded | Decision::Overflow => {
                    retry.finish();
                    let flag = match decision {
                        Decision::LimitExceeded => Some("URX"),
                        Decision::Overflow => Some("UO"),
                        _ => None,
                    };
                    return match result {
                        TryResult::Response(response, lease, sent_at) => {
                            if let Some(flag) = flag {
                                stream.flag(flag);
                            }
                            let response = self.upstream_response(
                                &mut stream,
                                response,
                                lease,
                                UpstreamResponse {
                                    sent_at,
                                    selected,
                                    set_cookie,
                                    http1: meta.http1,
                                    attempt_count: options
                                        .include_attempt_count_in_response
                                        .then_some(attempts),
                                },
                            );
                            if meta.filters_ran == 0 {
                                return self.finish_response(stream, response);
                            }
                            Box::pin(self.respond(stream, response, &meta, Some(selected))).await
                        }
                        TryResult::Failure(mut reply) => {
                            // Envoy sets the retry's flag first.
                            if let Some(flag) = flag {
                                stream.flag(flag);
                            }
                            if options.include_attempt_count_in_response {
                                reply = reply.header(
                                    X_ENVOY_ATTEMPT_COUNT,
                                    millis_value(u64::from(attempts)),
                                );
                            }
                            self.local_reply(stream, reply, &meta, Some(selected)).await
                        }
                    };
                }
            };
            // A failed try's response and connection are dropped (an HTTP/1.1
            // connection with an unread response is closed).
            drop(result);
            tracing::debug!(
                cluster = cluster.name(),
                attempt = attempts,
                "retrying in {back_off:?}"
            );
            if !back_off.is_zero() {
                let s = &mut *stream;
                let timers = &mut s.timers;
                let request_state = &mut s.request;
                let mut sleep = std::pin::pin!(tokio::time::sleep(back_off));
                let expired = std::future::poll_fn(|cx| {
                    if sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(None);
                    }
                    if let Poll::Ready(expiry) = timers.poll_expired(request_state, cx) {
                        return Poll::Ready(Some(expiry));
                    }
                    Poll::Pending
                })
                .await;
                if let Some(expiry) = expired {
                    retry.finish();
                    let mut reply = self.timeout_reply(expiry, request_complete(&stream), cluster);
                    if matches!(expiry, Expiry::Route) && options.include_attempt_count_in_response
                    {
                        reply =
                            reply.header(X_ENVOY_ATTEMPT_COUNT, millis_value(u64::from(attempts)));
                    }
                    return self.local_reply(stream, reply, &meta, Some(selected)).await;
                }
            }
            // The next host: avoiding earlier ones with the previous_hosts predicate.
            let next = match retry.host_selection() {
                Some(reselect_attempts) => {
                    previous.push(Arc::clone(&host));
                    cluster.pick(&PickContext {
                        hash,
                        original_dst,
                        previous_hosts: &previous,
                        reselect_attempts,
                    })
                }
                None => cluster.pick(&PickContext {
                    hash,
                    original_dst,
                    ..PickContext::default()
                }),
            };
            let Some(next) = next else {
                retry.finish();
                let reply = LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream")
                    .flag("UH")
                    .details("no_healthy_upstream");
                return self.local_reply(stream, reply, &meta, Some(selected)).await;
            };
            host = next;
        }
    }

    /// The response of an upstream to a retried request, ready for the downstream:
    /// stream info, the lease kept for the body, `x-envoy-upstream-service-time`,
    /// `x-envoy-attempt-count`, the route's and the connection manager's header
    /// changes, a hash cookie. (Upgrades are never retried: the single-try path
    /// answers them.)
    fn upstream_response(
        &self,
        stream: &mut StreamGuard,
        response: Response<Body>,
        lease: crate::upstream::Lease,
        how: UpstreamResponse<'_>,
    ) -> Response<Body> {
        let now = Instant::now();
        if stream.log {
            stream.info.response_duration = Some(now.saturating_duration_since(stream.info.start));
            stream.info.response_code_details = Some("via_upstream".to_owned());
        }
        stream.lease = Some(lease);
        let (mut head, body) = response.into_parts();
        // As the single-try path: the time since the request was complete (and since
        // the first try was sent), none while it still streams.
        let request_done = stream.request_completed_at();
        if let Some(done) = request_done {
            let since = now.saturating_duration_since(done.max(how.sent_at));
            head.headers.insert(
                X_ENVOY_UPSTREAM_SERVICE_TIME,
                millis_value(since.as_millis() as u64),
            );
        }
        if let Some(attempts) = how.attempt_count {
            head.headers
                .insert(X_ENVOY_ATTEMPT_COUNT, millis_value(u64::from(attempts)));
        }
        how.selected.apply_response_headers(
            &mut head.headers,
            &FormatContext::new(&stream.info).with_scheme(SCHEME),
        );
        self.hcm.headers.mutate_response(&mut head.headers, false);
        if let Some(cookie) = how.set_cookie {
            head.headers.append(http::header::SET_COOKIE, cookie);
        }
        if how.http1 && request_done.is_none() {
            // A response before the request's end closes an HTTP/1 connection.
            head.headers
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        Response::from_parts(head, body)
    }

    /// Applies a route's `max_stream_duration` to the stream, as Envoy's
    /// `refreshDurationTimeout`: the limit runs from the stream's start, and a gRPC
    /// request's `grpc-timeout` is set to it (removed when there is none).
    fn route_stream_duration(
        &self,
        stream: &mut StreamGuard,
        parts: &mut http::request::Parts,
        limits: &RouteStreamDuration,
        grpc: bool,
    ) {
        let grpc_timeout = if grpc {
            parts
                .headers
                .get(GRPC_TIMEOUT)
                .and_then(|v| parse_grpc_timeout(v.as_bytes()))
        } else {
            None
        };
        let limit = limits.limit(grpc_timeout, self.hcm.config.timeouts.max_stream_duration);
        if grpc {
            match limit {
                Some(limit) => {
                    parts
                        .headers
                        .insert(GRPC_TIMEOUT, grpc_timeout_value(limit));
                }
                None => {
                    parts.headers.remove(GRPC_TIMEOUT);
                }
            }
        }
        let start = stream.info.start;
        stream
            .timers
            .set_max_stream(limit.map(|limit| start + limit));
    }

    /// The local reply for a timer that fired before the response started.
    fn timeout_reply(
        &self,
        expiry: Expiry,
        request_complete: bool,
        cluster: &ClusterUpstream,
    ) -> LocalReply {
        let stats = &self.hcm.stats;
        // Envoy answers 408 while the request is still coming in, 504 after.
        let status = if request_complete {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::REQUEST_TIMEOUT
        };
        match expiry {
            Expiry::Route => {
                cluster.stats.upstream_rq_timeout.inc();
                LocalReply::new(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
                    .flag("UT")
                    .details("response_timeout")
            }
            Expiry::Request => {
                stats.downstream_rq_timeout.inc();
                LocalReply::new(StatusCode::REQUEST_TIMEOUT, "request timeout")
                    .details("request_overall_timeout")
            }
            Expiry::TryIdle => {
                cluster.stats.upstream_rq_per_try_idle_timeout.inc();
                LocalReply::new(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
                    .flag("UT")
                    .details("upstream_per_try_idle_timeout")
            }
            Expiry::Idle => {
                stats.downstream_rq_idle_timeout.inc();
                LocalReply::new(status, "stream timeout")
                    .flag("SI")
                    .details("stream_idle_timeout")
            }
            Expiry::MaxDuration => {
                stats.downstream_rq_max_duration_reached.inc();
                LocalReply::new(status, "downstream duration timeout")
                    .grpc_status(grpc::DEADLINE_EXCEEDED)
                    .details("max_duration_timeout")
            }
        }
    }

    /// Starts the mirrors of `forward` that this request is sampled for; returns the
    /// channels their bodies are copied into (none when the request has no body).
    fn start_mirrors(
        &self,
        forward: &ForwardAction,
        parts: &http::request::Parts,
        body_pending: bool,
    ) -> Vec<mpsc::Sender<MirrorFrame>> {
        let mut senders = Vec::new();
        for (name, ppm) in &forward.mirrors {
            if *ppm < 1_000_000 && (fast_random() % 1_000_000) as u32 >= *ppm {
                continue;
            }
            let Some(cluster) = self.hcm.upstreams.get(name) else {
                continue;
            };
            let Some(host) = cluster.pick(&PickContext::default()) else {
                continue;
            };
            let mut head = Request::new(()).into_parts().0;
            head.method = parts.method.clone();
            head.uri = parts.uri.clone();
            head.version = parts.version;
            head.headers = parts.headers.clone();
            if let Some(shadow) =
                authority(&head).and_then(|a| HeaderValue::from_str(&shadow_host(a)).ok())
            {
                set_authority(&mut head, shadow);
            }
            let body = if body_pending {
                let (tx, rx) = mpsc::channel(MIRROR_BACKLOG);
                senders.push(tx);
                Body::wrap(MirrorBody {
                    frames: rx,
                    done: false,
                })
            } else {
                Body::Empty
            };
            let cluster = Arc::clone(cluster);
            let timeout = forward.timeout.unwrap_or(Duration::from_secs(3600));
            tokio::spawn(async move {
                let protocol = cluster.wire_protocol(head.version);
                if !prepare_upstream_request(&mut head, protocol) {
                    return;
                }
                let request = Request::from_parts(head, body);
                let exchange = async {
                    let (response, _lease) = cluster.send(&host, protocol, request).await.ok()?;
                    let mut body = response.into_body();
                    while let Some(frame) =
                        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx))
                            .await
                    {
                        frame.ok()?;
                    }
                    Some(())
                };
                let _ = tokio::time::timeout(timeout, exchange).await;
            });
        }
        senders
    }
}

/// The 503 for an upstream that failed before response headers (Envoy's wording),
/// or the reply of a filter that stopped the request body.
fn upstream_failure(error: &UpstreamError) -> LocalReply {
    if let UpstreamError::Reset { source, .. } = error {
        let mut cause = std::error::Error::source(source);
        while let Some(e) = cause {
            if let Some(BodyError::Reply(reply)) = e.downcast_ref::<BodyError>() {
                return (**reply).clone();
            }
            cause = e.source();
        }
    }
    let details = match error {
        UpstreamError::NoHealthyUpstream { .. } => "no_healthy_upstream",
        // Envoy adds the transport's reason when it knows it.
        UpstreamError::ConnectFailure { source, .. }
            if source.kind() == std::io::ErrorKind::ConnectionRefused =>
        {
            "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}"
        }
        UpstreamError::ConnectFailure { .. } => {
            "upstream_reset_before_response_started{remote_connection_failure}"
        }
        UpstreamError::ConnectTimeout { .. } => {
            "upstream_reset_before_response_started{connection_timeout}"
        }
        UpstreamError::Overflow { .. } => "upstream_reset_before_response_started{overflow}",
        UpstreamError::Reset { .. } => match error.reset_reason() {
            "connection termination" => {
                "upstream_reset_before_response_started{connection_termination}"
            }
            "protocol error" => "upstream_reset_before_response_started{protocol_error}",
            _ => "upstream_reset_before_response_started{remote_reset}",
        },
    };
    let body = match error {
        UpstreamError::NoHealthyUpstream { .. } => "no healthy upstream".to_owned(),
        _ => format!(
            "upstream connect error or disconnect/reset before headers. reset reason: {}",
            error.reset_reason()
        ),
    };
    let reply = LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, body)
        .flag(error.response_flag())
        .details(details);
    if matches!(error, UpstreamError::Overflow { .. }) {
        // Envoy marks a response it dropped for overload.
        return reply.header(X_ENVOY_OVERLOADED, HeaderValue::from_static("true"));
    }
    reply
}

/// What the retry loop needs of the first pick.
struct Attempt<'a> {
    cluster: &'a Arc<ClusterUpstream>,
    host: Arc<Host>,
    protocol: WireProtocol,
    set_cookie: Option<HeaderValue>,
    hash: Option<u64>,
    /// The original destination picked by an ORIGINAL_DST cluster.
    original_dst: Option<std::net::SocketAddr>,
}

/// How an upstream response is passed on.
struct UpstreamResponse<'a> {
    sent_at: Instant,
    selected: Selected<'a>,
    set_cookie: Option<HeaderValue>,
    /// The downstream speaks HTTP/1.x.
    http1: bool,
    /// `x-envoy-attempt-count` for the response.
    attempt_count: Option<u32>,
}

/// A timer that ended a try.
enum TryExpiry {
    /// The per-try timeout.
    PerTry,
    /// The per-try idle timeout (before the response headers).
    PerTryIdle,
    /// A stream timer (the route's timeout covers every try).
    Stream(Expiry),
}

/// How a try ended.
enum TryResult {
    Response(Response<Body>, crate::upstream::Lease, Instant),
    Failure(LocalReply),
}

/// Whether the request body has been received.
fn request_complete(stream: &StreamGuard) -> bool {
    matches!(stream.request, RequestState::Complete { .. })
}

/// The host outcome of an upstream error. A reset before the response headers also
/// counts keel's own 503 in `upstream_rq_503`, as Envoy charges it.
fn outcome_of(cluster: &ClusterUpstream, error: &UpstreamError) -> Outcome {
    if let UpstreamError::Reset { source, .. } = error {
        // Not when a filter stopped the request body with a reply of its own.
        let mut cause = std::error::Error::source(source);
        let mut filter_reply = false;
        while let Some(e) = cause {
            filter_reply |= matches!(e.downcast_ref::<BodyError>(), Some(BodyError::Reply(_)));
            cause = e.source();
        }
        if !filter_reply {
            cluster.stats.record_status(503);
        }
    }
    outcome_of_error(error)
}

/// The host outcome of an upstream error.
fn outcome_of_error(error: &UpstreamError) -> Outcome {
    match error {
        UpstreamError::ConnectFailure { .. } | UpstreamError::ConnectTimeout { .. } => {
            Outcome::ConnectFailure
        }
        _ => Outcome::Reset,
    }
}

/// A copy of a request head for another try (extensions are not copied: the
/// upstream request needs none).
fn clone_head(head: &http::request::Parts) -> http::request::Parts {
    let mut parts = Request::new(()).into_parts().0;
    parts.method = head.method.clone();
    parts.uri = head.uri.clone();
    parts.version = head.version;
    parts.headers = head.headers.clone();
    parts
}

/// `:authority` of a request: the URI's, else `host`.
fn authority(parts: &http::request::Parts) -> Option<&str> {
    match parts.uri.authority() {
        Some(authority) => Some(authority.as_str()),
        None => parts.headers.get(HOST).and_then(|v| v.to_str().ok()),
    }
}

/// Sets `:authority` (the `host` header, and the URI's authority when it has one).
fn set_authority(parts: &mut http::request::Parts, value: HeaderValue) {
    if parts.uri.authority().is_some() {
        if let Ok(authority) = Authority::try_from(value.as_bytes()) {
            let mut uri = std::mem::take(&mut parts.uri).into_parts();
            uri.authority = Some(authority);
            parts.uri = Uri::from_parts(uri).unwrap_or_default();
        }
    }
    parts.headers.insert(HOST, value);
}

/// Envoy's shadow host: `-shadow` appended to the host, before any port.
fn shadow_host(authority: &str) -> String {
    let port_start = match authority.rfind(':') {
        Some(colon) if !authority[colon..].contains(']') => colon,
        _ => authority.len(),
    };
    format!(
        "{}-shadow{}",
        &authority[..port_start],
        &authority[port_start..]
    )
}

/// Puts the request in the form the upstream protocol needs: origin-form URI and a
/// `host` header for HTTP/1.1; absolute URI (`:scheme`, `:authority`) and no `host`
/// for HTTP/2. `false` when the request has no authority at all.
fn prepare_upstream_request(parts: &mut http::request::Parts, protocol: WireProtocol) -> bool {
    match protocol {
        WireProtocol::Http1 => {
            parts.version = Version::HTTP_11;
            if let Some(authority) = parts.uri.authority() {
                // An absolute-form target (or HTTP/2's `:authority`) wins over `host`.
                let Ok(host) = HeaderValue::from_str(authority.as_str()) else {
                    return false;
                };
                parts.headers.insert(HOST, host);
                let path = parts
                    .uri
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/"));
                parts.uri = Uri::from(path);
            }
            true
        }
        WireProtocol::Http2 => {
            parts.version = Version::HTTP_2;
            let host = parts.headers.remove(HOST);
            if parts.uri.authority().is_none() {
                let Some(authority) = host.and_then(|h| Authority::try_from(h.as_bytes()).ok())
                else {
                    return false;
                };
                let mut uri = std::mem::take(&mut parts.uri).into_parts();
                uri.scheme = Some(Scheme::HTTP);
                uri.authority = Some(authority);
                if uri.path_and_query.is_none() {
                    uri.path_and_query = Some(PathAndQuery::from_static("/"));
                }
                match Uri::from_parts(uri) {
                    Ok(uri) => parts.uri = uri,
                    Err(_) => return false,
                }
            } else if parts.uri.scheme().is_none() {
                let mut uri = std::mem::take(&mut parts.uri).into_parts();
                uri.scheme = Some(Scheme::HTTP);
                parts.uri = Uri::from_parts(uri).unwrap_or_default();
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_hosts() {
        assert_eq!(shadow_host("example.com"), "example.com-shadow");
        assert_eq!(shadow_host("example.com:8080"), "example.com-shadow:8080");
        assert_eq!(shadow_host("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(shadow_host("[::1]"), "[::1]-shadow");
    }

    #[test]
    fn grpc_timeouts() {
        assert_eq!(
            parse_grpc_timeout(b"200m"),
            Some(Duration::from_millis(200))
        );
        assert_eq!(parse_grpc_timeout(b"5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"1500u"), Some(Duration::from_millis(2)));
        assert_eq!(parse_grpc_timeout(b"1n"), Some(Duration::from_millis(1)));
        assert_eq!(parse_grpc_timeout(b"123456789m"), None, "9 digits");
        assert_eq!(parse_grpc_timeout(b"m"), None);
        assert_eq!(parse_grpc_timeout(b"10x"), None);
        assert_eq!(grpc_timeout_value(Duration::from_secs(5)), "5000m");
        assert_eq!(grpc_timeout_value(Duration::from_secs(200_000)), "200000S");
        let limits = RouteStreamDuration {
            max_stream_duration: Some(Duration::from_secs(3)),
            grpc_timeout_header_max: Some(Duration::from_secs(10)),
            grpc_timeout_header_offset: Some(Duration::from_millis(9_800)),
        };
        let hcm = Some(Duration::from_secs(60));
        assert_eq!(
            limits.limit(Some(Duration::from_secs(20)), hcm),
            Some(Duration::from_millis(200)),
            "capped at 10 s, less the offset"
        );
        assert_eq!(
            limits.limit(None, hcm),
            Some(Duration::from_secs(3)),
            "no grpc-timeout: the route's limit"
        );
        let uncapped = RouteStreamDuration {
            max_stream_duration: Some(Duration::ZERO),
            grpc_timeout_header_max: Some(Duration::ZERO),
            grpc_timeout_header_offset: None,
        };
        assert_eq!(
            uncapped.limit(Some(Duration::from_secs(20)), hcm),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            uncapped.limit(None, hcm),
            None,
            "zero disables the HCM's limit"
        );
        let inherit = RouteStreamDuration {
            max_stream_duration: None,
            grpc_timeout_header_max: None,
            grpc_timeout_header_offset: None,
        };
        assert_eq!(inherit.limit(Some(Duration::from_secs(1)), hcm), hcm);
    }

    #[test]
    fn upstream_forms() {
        let (mut parts, _) = Request::get("http://a.example:81/p?q")
            .body(())
            .unwrap()
            .into_parts();
        assert!(prepare_upstream_request(&mut parts, WireProtocol::Http1));
        assert_eq!(parts.uri, "/p?q");
        assert_eq!(parts.headers[HOST], "a.example:81");
        assert!(prepare_upstream_request(&mut parts, WireProtocol::Http2));
        assert_eq!(parts.uri, "http://a.example:81/p?q");
        assert!(parts.headers.get(HOST).is_none());
    }
}
