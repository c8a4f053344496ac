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
use super::headers::{merge_slashes, normalize_path, RequestScan};
use super::local_reply::LocalReply;
use super::stream::{ResponseBody, StreamGuard};
use super::Connection;
use crate::model::http::{RouteAction, UnderscoreAction};
use crate::observe::format::FormatContext;
use crate::observe::StreamInfo;
use crate::router::{redirect_location, RequestContext, Selected};

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
        let mut meta = RequestMeta {
            grpc: false,
            http1,
            filters_ran: 0,
            random: 0,
            upgrade: None,
            body_unread: http1 && !body.is_end_stream(),
        };

        if let Some(reply) = self.check_request(&mut parts) {
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
        if stream.log {
            stream.request_line = Some((parts.method.clone(), parts.uri.clone()));
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
        match &selected.route.action {
            RouteAction::Forward(forward) => {
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

    /// Header count and name checks, path normalization. A reply rejects the request.
    fn check_request(&self, parts: &mut http::request::Parts) -> Option<LocalReply> {
        let config = &self.hcm.config;
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
        if config.normalize_path || config.merge_slashes {
            let original = parts
                .uri
                .path_and_query()
                .map(|pq| pq.as_str())
                .unwrap_or("/");
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
        if let Some(flag) = reply.flag {
            stream.flag(flag);
        }
        if stream.log && !reply.details.is_empty() {
            stream.info.response_code_details = Some(reply.details.to_owned());
        }
        let mut response = reply.into_response(meta.grpc, meta.http1);
        if meta.body_unread {
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
        response: Response<Body>,
    ) -> Response<ResponseBody> {
        stream.timers.response_started();
        let code = response.status().as_u16();
        stream.info.response_code = code;
        self.hcm.stats.record_status(code);
        if stream.log {
            stream.info.response_headers = response.headers().clone();
        }
        response.map(|body| ResponseBody::new(body, stream))
    }
}
