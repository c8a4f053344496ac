//! The request pipeline: checks, the connection manager's header mutations,
//! routing, the filter chain, local replies; forwards go on in [`super::proxy`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::{Body as _, Incoming};
use hyper::upgrade::OnUpgrade;

use super::body::Body;
use super::filter::FilterContext;
use super::headers::{merge_slashes, normalize_path, RequestScan, X_ENVOY_INTERNAL, X_REQUEST_ID};
use super::local_reply::LocalReply;
use super::stream::{ResponseBody, StreamGuard};
use super::Connection;
use crate::model::http::{
    EscapedSlashesAction, RequireTls, RouteAction, StripPort, UnderscoreAction,
};
use crate::observe::format::FormatContext;
use crate::observe::StreamInfo;
use crate::router::{redirect_location, RequestContext, Selected};
use http::header::HOST;

/// What the pipeline knows about a request besides its head.
pub(crate) struct RequestMeta {
    /// `content-type: application/grpc*`.
    pub grpc: bool,
    /// The downstream speaks HTTP/1.x.
    pub http1: bool,
    /// How many filters ran `decode_headers` (the encode path runs them back).
    pub filters_ran: usize,
    /// The stable random value of the request (route fractions, weighted clusters).
    pub random: u64,
    /// The downstream side of an allowed upgrade.
    pub upgrade: Option<OnUpgrade>,
    /// The request is internal (`internal_address_config`): its `x-envoy-*` control
    /// headers are trusted.
    pub internal: bool,
    /// The request body has not been read and is not empty: a local reply closes an
    /// HTTP/1 connection (as Envoy does for a response before the request's end).
    pub body_unread: bool,
}

/// A response on its way: ready, or behind the encode filters (boxed: the filter
/// path is the rare one, and keeping its future out of line keeps every request's
/// future small).
pub(crate) enum Responding<'a> {
    /// No filter to run.
    Ready(Option<Response<ResponseBody>>),
    /// Encode filters run first.
    Filtered(Pin<Box<dyn Future<Output = Response<ResponseBody>> + Send + 'a>>),
}

impl Future for Responding<'_> {
    type Output = Response<ResponseBody>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response<ResponseBody>> {
        match self.get_mut() {
            Responding::Ready(response) => {
                Poll::Ready(response.take().expect("Responding polled after completion"))
            }
            Responding::Filtered(future) => future.as_mut().poll(cx),
        }
    }
}

/// `:scheme` of downstream connections (keel serves plaintext only so far).
pub(crate) const SCHEME: &str = "http";

fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

impl Connection {
    /// Serves one request.
    pub(crate) async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Response<ResponseBody> {
        let hcm = &self.hcm;
        hcm.stats.downstream_rq_total.inc();
        hcm.stats.downstream_rq_active.inc();
        self.active_streams
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let http1 = request.version() != Version::HTTP_2;
        if http1 {
            hcm.stats.downstream_rq_http1_total.inc();
        } else {
            hcm.stats.downstream_rq_http2_total.inc();
        }
        let (mut parts, body) = request.into_parts();
        let info = StreamInfo::new(self.peer, self.local, protocol_name(parts.version));
        let mut stream = StreamGuard::new(Arc::clone(&self), info, hcm.logs());
        stream.head_request = parts.method == Method::HEAD;
        if parts.version == Version::HTTP_10 {
            stream.http10_keep_alive = Some(
                parts
                    .headers
                    .get_all(http::header::CONNECTION)
                    .iter()
                    .any(|v| {
                        v.as_bytes()
                            .split(|&b| b == b',')
                            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"keep-alive"))
                    }),
            );
        }
        let mut meta = RequestMeta {
            grpc: false,
            http1,
            filters_ran: 0,
            random: 0,
            upgrade: None,
            internal: false,
            body_unread: http1 && !body.is_end_stream(),
        };

        if let Some(reply) = self.check_request(&mut parts, &meta) {
            meta.grpc = RequestScan::new(&parts.headers).grpc;
            return self.local_reply(stream, reply, &meta, None).await;
        }
        let scan = RequestScan::new(&parts.headers);
        meta.grpc = scan.grpc;

        // An upgrade asked for (`Some(true)` websocket, `Some(false)` another protocol
        // or CONNECT). As in Envoy, its `connection` / `upgrade` headers stay, and
        // whether it is allowed is decided once the route is known.
        let upgrade_asked = if parts.method == Method::CONNECT {
            Some(false)
        } else if http1 {
            scan.upgrade()
        } else {
            None
        };

        let downstream = hcm.headers.mutate_request(
            &mut parts.headers,
            &scan,
            self.peer,
            self.local,
            SCHEME,
            upgrade_asked.is_some(),
        );
        if let Some(remote) = downstream.remote {
            if remote != self.peer.ip() {
                stream.info.downstream_remote = SocketAddr::new(remote, 0);
            }
        }

        meta.random = downstream.random;
        meta.internal = downstream.internal;
        if hcm.config.options.always_set_request_id_in_response {
            stream.response_request_id = parts.headers.get(X_REQUEST_ID).cloned();
        }
        if stream.log {
            stream.request_line = Some(Box::new((parts.method.clone(), parts.uri.clone())));
            stream.info.request_headers = parts.headers.clone();
        }
        let context = RequestContext {
            scheme: Some(SCHEME),
            random: Some(meta.random),
        };
        let mut route = hcm.routes.route_with(&parts, context);

        // Upgrades (websocket): allowed by the route's `upgrade_configs`, else by the
        // connection manager's; refused with 403 and a closed connection as in Envoy.
        // Without a route the request goes on to its 404.
        if let (Some(websocket), Some(selected)) = (upgrade_asked, route) {
            if websocket && hcm.websocket_allowed(selected.route) {
                hcm.stats.downstream_cx_upgrades_total.inc();
                meta.upgrade = parts.extensions.remove::<OnUpgrade>();
            } else {
                let reply = LocalReply::new(StatusCode::FORBIDDEN, "")
                    .details("upgrade_failed")
                    .close();
                return self.local_reply(stream, reply, &meta, None).await;
            }
        }

        let mut body = Body::Incoming(body);
        if !hcm.filters.is_empty() {
            let s = &mut *stream;
            let mut cx = FilterContext {
                info: &mut s.info,
                route,
                state: &mut s.filter_state,
                is_grpc: meta.grpc,
                clear_route: false,
            };
            let (ran, reply) = Box::pin(hcm.filters.decode_headers(&mut parts, &mut cx)).await;
            meta.filters_ran = ran;
            if let Some(reply) = reply {
                return self.local_reply(stream, reply, &meta, route).await;
            }
            if cx.clear_route {
                route = hcm.routes.route_with(&parts, context);
                cx.route = route;
            }
            body = hcm.filters.decode_body(body, &mut cx);
        }

        hcm.stats.rq_total.inc();
        let Some(selected) = route else {
            hcm.stats.no_route.inc();
            let reply = LocalReply::new(StatusCode::NOT_FOUND, "")
                .flag("NR")
                .details("route_not_found");
            return self.local_reply(stream, reply, &meta, None).await;
        };
        if stream.log && !selected.route.name.is_empty() {
            stream.info.route_name = Some(selected.route.name.clone());
        }
        if stream.log {
            stream.info.route_metadata = selected.route.metadata.clone();
        }
        if selected.virtual_host.options.require_tls != RequireTls::None {
            // keel serves plaintext only, so every request is not TLS: ALL redirects
            // all, EXTERNAL_ONLY those without `x-envoy-internal` (Envoy's
            // `SslRedirectRoute`: 301 to https://<host><path>, no route headers).
            let internal = parts
                .headers
                .get(X_ENVOY_INTERNAL)
                .is_some_and(|v| v == "true");
            if selected.virtual_host.options.require_tls == RequireTls::All || !internal {
                hcm.stats.rq_redirect.inc();
                let host = crate::router::request_authority(&parts).unwrap_or_default();
                let location = format!("https://{host}{}", path_and_query(&parts));
                let mut reply =
                    LocalReply::new(StatusCode::MOVED_PERMANENTLY, "").details("direct_response");
                if let Ok(location) = http::HeaderValue::from_str(&location) {
                    reply = reply.header(http::header::LOCATION, location);
                }
                return self.local_reply(stream, reply, &meta, None).await;
            }
        }
        match &selected.route.action {
            RouteAction::Forward(forward) => {
                if let Some(vc) = selected.virtual_cluster(&parts, SCHEME) {
                    let vh = selected.virtual_host_index;
                    hcm.virtual_cluster_stats[vh][vc].upstream_rq_total.inc();
                    stream.virtual_cluster = Some((vh, vc));
                }
                self.forward(stream, parts, body, selected, forward, meta)
                    .await
            }
            RouteAction::DirectResponse { status, body } => {
                hcm.stats.rq_direct_response.inc();
                let status =
                    StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let reply = LocalReply::new(status, body.clone().unwrap_or_default())
                    .details("direct_response");
                self.local_reply(stream, reply, &meta, Some(selected)).await
            }
            RouteAction::Redirect(redirect) => {
                hcm.stats.rq_redirect.inc();
                let target =
                    redirect_location(redirect, &selected.route.matcher.path, &parts, SCHEME);
                let mut reply = LocalReply::new(target.status, "").details("direct_response");
                if let Ok(location) = http::HeaderValue::from_str(&target.location) {
                    reply = reply.header(http::header::LOCATION, location);
                }
                self.local_reply(stream, reply, &meta, Some(selected)).await
            }
        }
    }

    /// Header count and name checks, HTTP/1.0, path and host normalization. A reply
    /// rejects the request.
    fn check_request(
        &self,
        parts: &mut http::request::Parts,
        meta: &RequestMeta,
    ) -> Option<LocalReply> {
        let config = &self.hcm.config;
        let options = &config.options;
        if meta.http1 && matches!(parts.version, Version::HTTP_10 | Version::HTTP_09) {
            if !options.accept_http_10 {
                // Envoy's HTTP/1 codec: "Upgrade required for HTTP/1.0 or HTTP/0.9".
                return Some(
                    LocalReply::new(StatusCode::UPGRADE_REQUIRED, "Upgrade Required")
                        .details("http1.codec_error")
                        .close(),
                );
            }
            if let Some(host) = &options.default_host_for_http_10 {
                if parts.uri.authority().is_none() && !parts.headers.contains_key(HOST) {
                    parts.headers.insert(HOST, host.clone());
                }
            }
        }
        // hyper enforces the HTTP/1 limit (431) while parsing; HTTP/2 is checked here.
        if parts.headers.len() > config.max_headers_count as usize {
            return Some(
                LocalReply::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "")
                    .details("too_many_headers"),
            );
        }
        if config.headers_with_underscores != UnderscoreAction::Allow {
            let underscored: Vec<http::HeaderName> = parts
                .headers
                .keys()
                .filter(|name| name.as_str().contains('_'))
                .cloned()
                .collect();
            if !underscored.is_empty() {
                if config.headers_with_underscores == UnderscoreAction::RejectRequest {
                    self.hcm
                        .stats
                        .requests_rejected_with_underscores_in_headers
                        .inc();
                    return Some(
                        LocalReply::new(StatusCode::BAD_REQUEST, "")
                            .details("unexpected_underscore")
                            .close(),
                    );
                }
                for name in underscored {
                    self.hcm.stats.dropped_headers_with_underscores.inc();
                    parts.headers.remove(name);
                }
            }
        }
        let mut redirect = false;
        if options.escaped_slashes != EscapedSlashesAction::KeepUnchanged {
            if let Some(unescaped) = unescape_slashes(path_and_query(parts)) {
                match options.escaped_slashes {
                    EscapedSlashesAction::Reject => {
                        self.hcm.stats.downstream_rq_failed_path_normalization.inc();
                        return Some(
                            LocalReply::new(StatusCode::BAD_REQUEST, "")
                                .details("path_normalization_failed"),
                        );
                    }
                    EscapedSlashesAction::UnescapeAndRedirect => redirect = true,
                    _ => {}
                }
                if !set_path(parts, &unescaped) {
                    return Some(
                        LocalReply::new(StatusCode::BAD_REQUEST, "")
                            .details("path_normalization_failed"),
                    );
                }
            }
        }
        if config.normalize_path || config.merge_slashes {
            let original = path_and_query(parts);
            let mut path = None;
            if config.normalize_path {
                path = normalize_path(original);
            }
            if config.merge_slashes {
                if let Some(merged) = merge_slashes(path.as_deref().unwrap_or(original)) {
                    path = Some(merged);
                }
            }
            if let Some(path) = path {
                let mut uri = std::mem::take(&mut parts.uri).into_parts();
                match path.parse() {
                    Ok(pq) => uri.path_and_query = Some(pq),
                    Err(_) => {
                        return Some(
                            LocalReply::new(StatusCode::BAD_REQUEST, "")
                                .details("path_normalization_failed"),
                        )
                    }
                }
                parts.uri = http::Uri::from_parts(uri).unwrap_or_default();
            }
        }
        if redirect {
            // As Envoy: gRPC cannot follow a redirect, so it is rejected instead.
            if RequestScan::new(&parts.headers).grpc {
                self.hcm.stats.downstream_rq_failed_path_normalization.inc();
                return Some(
                    LocalReply::new(StatusCode::BAD_REQUEST, "")
                        .details("path_normalization_failed"),
                );
            }
            self.hcm
                .stats
                .downstream_rq_redirected_with_normalized_path
                .inc();
            let mut reply = LocalReply::new(StatusCode::TEMPORARY_REDIRECT, "")
                .details("path_normalization_failed");
            if let Ok(location) = http::HeaderValue::from_str(path_and_query(parts)) {
                reply = reply.header(http::header::LOCATION, location);
            }
            return Some(reply);
        }
        match options.strip_port {
            StripPort::None => {}
            StripPort::Any => strip_host_port(parts, None),
            StripPort::Matching => strip_host_port(parts, Some(self.local.port())),
        }
        None
    }

    /// Answers locally: the reply in Envoy's shape, the route's response header
    /// mutations when a route was chosen, then the common response path.
    pub(crate) fn local_reply<'a>(
        &'a self,
        mut stream: StreamGuard,
        reply: LocalReply,
        meta: &'a RequestMeta,
        route: Option<Selected<'a>>,
    ) -> Responding<'a> {
        let reply = match &self.hcm.local_reply {
            Some(rewriter) => rewriter.rewrite(reply, &mut stream.info, None),
            None => reply,
        };
        if let Some(flag) = reply.flag {
            stream.flag(flag);
        }
        if stream.log && !reply.details.is_empty() {
            stream.info.response_code_details = Some(reply.details.to_owned());
        }
        // As Envoy's `sendLocalReply`: a 400 to an HTTP/1 client closes the connection,
        // unless `stream_error_on_invalid_http_message` is set.
        let close_on_400 = meta.http1
            && reply.status == StatusCode::BAD_REQUEST
            && !self.hcm.config.options.stream_error_on_invalid_http_message;
        let mut response = reply.into_response(meta.grpc, meta.http1);
        if meta.body_unread || close_on_400 {
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        if let Some(selected) = route {
            selected.apply_response_headers(
                response.headers_mut(),
                &FormatContext::new(&stream.info).with_scheme(SCHEME),
            );
        }
        self.hcm.headers.set_server(response.headers_mut(), false);
        if meta.filters_ran == 0 {
            return Responding::Ready(Some(self.finish_response(stream, response)));
        }
        Responding::Filtered(Box::pin(self.respond(stream, response, meta, route)))
    }

    /// The common response path: encode filters, stats, the stream moves into the
    /// response body. Callers without filters to run use
    /// [`finish_response`](Self::finish_response) directly (no future to build).
    pub(crate) async fn respond(
        &self,
        mut stream: StreamGuard,
        response: Response<Body>,
        meta: &RequestMeta,
        route: Option<Selected<'_>>,
    ) -> Response<ResponseBody> {
        let (mut parts, mut body) = response.into_parts();
        {
            let hcm = &self.hcm;
            let s = &mut *stream;
            let mut cx = FilterContext {
                info: &mut s.info,
                route,
                state: &mut s.filter_state,
                is_grpc: meta.grpc,
                clear_route: false,
            };
            if let Some(reply) = hcm
                .filters
                .encode_headers(meta.filters_ran, &mut parts, &mut cx)
                .await
            {
                let (reply_parts, reply_body) =
                    reply.into_response(meta.grpc, meta.http1).into_parts();
                parts = reply_parts;
                body = reply_body;
            }
            body = hcm.filters.encode_body(meta.filters_ran, body, &mut cx);
        }
        self.finish_response(stream, Response::from_parts(parts, body))
    }

    /// Stats and the stream's info for a response about to be sent; the stream moves
    /// into its body.
    #[inline]
    pub(crate) fn finish_response(
        &self,
        mut stream: StreamGuard,
        mut response: Response<Body>,
    ) -> Response<ResponseBody> {
        stream.timers.response_started();
        // The rest of Envoy's `mutateResponseHeaders`, for every response.
        if let Some(via) = &self.hcm.headers.via {
            super::headers::append_via(response.headers_mut(), via);
        }
        if let Some(id) = stream.response_request_id.take() {
            response.headers_mut().insert(X_REQUEST_ID, id);
        }
        if let Some(keep_alive) = stream.http10_keep_alive {
            // Envoy answers HTTP/1.0 with `connection: keep-alive` when asked, else
            // `connection: close` (a reply that closes anyway stays closing).
            let close = response
                .headers()
                .get(http::header::CONNECTION)
                .is_some_and(|v| v == "close");
            let value = if keep_alive && !close {
                "keep-alive"
            } else {
                "close"
            };
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static(value),
            );
        }
        let code = response.status().as_u16();
        stream.info.response_code = code;
        self.hcm.stats.record_status(code);
        if let Some((vh, vc)) = stream.virtual_cluster {
            self.hcm.virtual_cluster_stats[vh][vc].record(code);
        }
        if stream.log {
            stream.info.response_headers = response.headers().clone();
        }
        response.map(|body| ResponseBody::new(body, stream))
    }
}

/// The new host of a `host_rewrite_header` or `host_rewrite_path_regex` route (Envoy's
/// `finalizeRequestHeaders`): the header's first value when present and not empty; the
/// path without its query, rewritten by the pattern. `None`: the host stays.
pub(crate) fn dynamic_host_rewrite(
    rewrite: &crate::model::http::HostRewrite,
    parts: &http::request::Parts,
) -> Option<http::HeaderValue> {
    use crate::model::http::HostRewrite;
    match rewrite {
        HostRewrite::Header(name) => parts
            .headers
            .get(name)
            .filter(|value| !value.is_empty())
            .cloned(),
        HostRewrite::PathRegex(re, substitution) => {
            let path = parts.uri.path();
            let host = re.replace_all(path, substitution.as_str());
            http::HeaderValue::from_str(&host).ok()
        }
        _ => None,
    }
}

/// The request's path and query (`/` when the URI has none).
fn path_and_query(parts: &http::request::Parts) -> &str {
    parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/")
}

/// Replaces the request's path and query; false when `path` is not a valid one.
fn set_path(parts: &mut http::request::Parts, path: &str) -> bool {
    let Ok(pq) = path.parse() else {
        return false;
    };
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.path_and_query = Some(pq);
    parts.uri = http::Uri::from_parts(uri).unwrap_or_default();
    true
}

/// `%2F` and `%5C` (any case) in the path (not the query) decoded to `/` and `\`, as
/// Envoy's `PathUtil::unescapeSlashes`; `None` when there is none.
pub(crate) fn unescape_slashes(path_and_query: &str) -> Option<String> {
    let end = path_and_query.find('?').unwrap_or(path_and_query.len());
    let (path, query) = path_and_query.split_at(end);
    let bytes = path.as_bytes();
    let escaped = |i: usize| -> Option<char> {
        match bytes.get(i..i + 3)? {
            [b'%', b'2', b'f' | b'F'] => Some('/'),
            [b'%', b'5', b'c' | b'C'] => Some('\\'),
            _ => None,
        }
    };
    (0..bytes.len()).find(|&i| escaped(i).is_some())?;
    let mut out = String::with_capacity(path_and_query.len());
    let mut i = 0;
    while i < bytes.len() {
        if let Some(c) = escaped(i) {
            out.push(c);
            i += 3;
        } else {
            let c = path[i..].chars().next().unwrap_or_default();
            out.push(c);
            i += c.len_utf8().max(1);
        }
    }
    out.push_str(query);
    Some(out)
}

/// Removes the `:port` of the host (`host` header or the URI's authority) when it is a
/// number and, with `only`, equal to it (Envoy's `HeaderUtility::stripPortFromHost`).
fn strip_host_port(parts: &mut http::request::Parts, only: Option<u16>) {
    let strip = |host: &str| -> Option<String> {
        let colon = host.rfind(':')?;
        if host.rfind(']').is_some_and(|bracket| bracket > colon) {
            return None;
        }
        let port: u32 = host[colon + 1..].parse().ok()?;
        if only.is_some_and(|only| u32::from(only) != port) {
            return None;
        }
        Some(host[..colon].to_string())
    };
    if let Some(authority) = parts.uri.authority() {
        if let Some(host) = strip(authority.as_str()) {
            let mut uri = std::mem::take(&mut parts.uri).into_parts();
            uri.authority = host.parse().ok();
            parts.uri = http::Uri::from_parts(uri).unwrap_or_default();
        }
    }
    if let Some(value) = parts.headers.get(HOST).and_then(|v| v.to_str().ok()) {
        if let Some(host) = strip(value) {
            if let Ok(value) = http::HeaderValue::from_str(&host) {
                parts.headers.insert(HOST, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, host: Option<&str>) -> http::request::Parts {
        let mut builder = Request::builder().uri(uri);
        if let Some(host) = host {
            builder = builder.header(HOST, host);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn escaped_slashes_unescaped_in_the_path_only() {
        assert_eq!(
            unescape_slashes("/a%2Fb%2fc%5Cd%5ce?q=%2F").as_deref(),
            Some("/a/b/c\\d\\e?q=%2F")
        );
        assert_eq!(unescape_slashes("/a%20b?x=%2F"), None);
        assert_eq!(unescape_slashes("/%2"), None);
    }

    #[test]
    fn host_ports_stripped() {
        let mut p = parts("/", Some("example.com:8080"));
        strip_host_port(&mut p, Some(80));
        assert_eq!(p.headers[HOST], "example.com:8080", "another port stays");
        strip_host_port(&mut p, Some(8080));
        assert_eq!(p.headers[HOST], "example.com");
        let mut p = parts("/", Some("[::1]:443"));
        strip_host_port(&mut p, None);
        assert_eq!(p.headers[HOST], "[::1]");
        let mut p = parts("/", Some("[::1]"));
        strip_host_port(&mut p, None);
        assert_eq!(p.headers[HOST], "[::1]", "no port in an IPv6 literal");
        let mut p = parts("http://example.com:81/x", None);
        strip_host_port(&mut p, None);
        assert_eq!(p.uri.authority().unwrap().as_str(), "example.com");
        assert_eq!(p.uri.path(), "/x");
    }

    #[test]
    fn host_rewrites_from_a_header_or_the_path() {
        use crate::model::http::HostRewrite;
        let header = HostRewrite::Header(http::HeaderName::from_static("x-host"));
        let mut p = parts("/orders/1?x=1", Some("a"));
        assert_eq!(dynamic_host_rewrite(&header, &p), None);
        p.headers
            .insert("x-host", http::HeaderValue::from_static(""));
        assert_eq!(dynamic_host_rewrite(&header, &p), None, "empty: kept");
        p.headers
            .insert("x-host", http::HeaderValue::from_static("b"));
        assert_eq!(dynamic_host_rewrite(&header, &p).unwrap(), "b");
        let regex = HostRewrite::PathRegex(
            regex::Regex::new("^/([a-z]+)/.*$").unwrap(),
            "${1}.svc".into(),
        );
        assert_eq!(dynamic_host_rewrite(&regex, &p).unwrap(), "orders.svc");
    }
}
