//! The HTTP filter interface and the filter chain.
//!
//! An [`HttpFilter`] is built once per connection manager (from `http_filters`) and
//! shared by every stream; it sees each request on the way in (`decode_*`, in chain
//! order) and each response on the way out (`encode_*`, in reverse order), local
//! replies included. The router is not a filter object: it is the end of every chain
//! and the connection manager runs it after the last filter.
//!
//! Cost model, so that filters stay cheap on the request path:
//! - header callbacks are plain synchronous calls on `&self` with the request or
//!   response head; a filter that has to wait (an external authorization call, a
//!   rate-limit service) returns [`FilterStatus::Wait`] with a boxed future, the only
//!   allocation in the interface, paid only by the streams that wait;
//! - body callbacks follow the `http_body` idiom: `decode_body` / `encode_body`
//!   receive the body and return it, wrapped when the filter wants to see data or
//!   trailers (see [`map_frames`]) and untouched (no allocation) otherwise;
//! - per-stream state goes into [`FilterContext::state`], a typed map that allocates
//!   on first insert only.
//!
//! A filter stops a stream by answering: [`FilterStatus::Respond`] from a header
//! callback, or an error carrying a [`LocalReply`] ([`BodyError::Reply`]) from a body
//! callback, which becomes that reply if no response has started yet and a reset
//! otherwise.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Frame;

use super::body::{Body, BodyError};
use super::local_reply::LocalReply;
use crate::observe::StreamInfo;
use crate::router::Selected;

/// What a header callback decided.
pub enum FilterStatus<H> {
    /// Go on with the next filter (or the router).
    Continue,
    /// Stop the chain and answer with this local reply.
    Respond(LocalReply),
    /// Wait for the future, then run its continuation on the same head and context,
    /// and go on as it says.
    Wait(Pin<Box<dyn Future<Output = Resume<H>> + Send>>),
}

/// The continuation of a filter that waited: it gets the head back and decides.
pub type Resume<H> =
    Box<dyn for<'a> FnOnce(&mut H, &mut FilterContext<'a>) -> FilterStatus<H> + Send>;

impl<H> std::fmt::Debug for FilterStatus<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FilterStatus::Continue => f.write_str("Continue"),
            FilterStatus::Respond(reply) => f.debug_tuple("Respond").field(reply).finish(),
            FilterStatus::Wait(_) => f.write_str("Wait(..)"),
        }
    }
}

/// What a filter sees of the stream besides the head it is given.
pub struct FilterContext<'a> {
    /// The stream so far (addresses, protocol, flags; the response code once known).
    pub info: &'a mut StreamInfo,
    /// The route the request matched, if any (resolved before the chain runs).
    pub route: Option<Selected<'a>>,
    /// Per-stream state of the filters, keyed by type.
    pub state: &'a mut http::Extensions,
    /// Whether the request is gRPC (`content-type: application/grpc*`).
    pub is_grpc: bool,
    pub(crate) clear_route: bool,
}

impl FilterContext<'_> {
    /// Asks the connection manager to match the route again after this filter (it
    /// changed headers the route depends on).
    pub fn clear_route_cache(&mut self) {
        self.clear_route = true;
    }
}

/// An HTTP filter (see the module documentation for the contract).
pub trait HttpFilter: Send + Sync + 'static {
    /// The filter's name, e.g. `envoy.filters.http.cors`.
    fn name(&self) -> &str;

    /// Request headers, before routing to the upstream.
    fn decode_headers(
        &self,
        request: &mut http::request::Parts,
        cx: &mut FilterContext<'_>,
    ) -> FilterStatus<http::request::Parts> {
        let _ = (request, cx);
        FilterStatus::Continue
    }

    /// The request body (data and trailers); return it unchanged or wrapped.
    fn decode_body(&self, body: Body, cx: &mut FilterContext<'_>) -> Body {
        let _ = cx;
        body
    }

    /// Response headers, upstream responses and local replies alike.
    fn encode_headers(
        &self,
        response: &mut http::response::Parts,
        cx: &mut FilterContext<'_>,
    ) -> FilterStatus<http::response::Parts> {
        let _ = (response, cx);
        FilterStatus::Continue
    }

    /// The response body (data and trailers); return it unchanged or wrapped.
    fn encode_body(&self, body: Body, cx: &mut FilterContext<'_>) -> Body {
        let _ = cx;
        body
    }
}

/// The filters of a connection manager, in order; the router ends every chain.
#[derive(Clone, Default)]
pub struct FilterChain {
    filters: Arc<[Arc<dyn HttpFilter>]>,
}

impl std::fmt::Debug for FilterChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.filters.iter().map(|filter| filter.name()))
            .finish()
    }
}

impl FilterChain {
    /// A chain of `filters` (the router is implied at the end).
    pub fn new(filters: Vec<Arc<dyn HttpFilter>>) -> FilterChain {
        FilterChain {
            filters: filters.into(),
        }
    }

    /// Whether the chain has no filter besides the router.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Runs `decode_headers` of every filter in order. Returns how many filters ran
    /// (the encode path runs those, in reverse) and the reply when one answered.
    pub(crate) async fn decode_headers(
        &self,
        request: &mut http::request::Parts,
        cx: &mut FilterContext<'_>,
    ) -> (usize, Option<LocalReply>) {
        for (index, filter) in self.filters.iter().enumerate() {
            let mut status = filter.decode_headers(request, cx);
            loop {
                match status {
                    FilterStatus::Continue => break,
                    FilterStatus::Respond(reply) => return (index, Some(reply)),
                    FilterStatus::Wait(future) => status = future.await(request, cx),
                }
            }
        }
        (self.filters.len(), None)
    }

    /// Runs `decode_body` of every filter in order.
    pub(crate) fn decode_body(&self, mut body: Body, cx: &mut FilterContext<'_>) -> Body {
        for filter in self.filters.iter() {
            body = filter.decode_body(body, cx);
        }
        body
    }

    /// Runs `encode_headers` of the first `ran` filters in reverse order; a filter
    /// may replace the response with a local reply (returned).
    pub(crate) async fn encode_headers(
        &self,
        ran: usize,
        response: &mut http::response::Parts,
        cx: &mut FilterContext<'_>,
    ) -> Option<LocalReply> {
        for filter in self.filters[..ran].iter().rev() {
            let mut status = filter.encode_headers(response, cx);
            loop {
                match status {
                    FilterStatus::Continue => break,
                    FilterStatus::Respond(reply) => return Some(reply),
                    FilterStatus::Wait(future) => status = future.await(response, cx),
                }
            }
        }
        None
    }

    /// Runs `encode_body` of the first `ran` filters in reverse order.
    pub(crate) fn encode_body(
        &self,
        ran: usize,
        mut body: Body,
        cx: &mut FilterContext<'_>,
    ) -> Body {
        for filter in self.filters[..ran].iter().rev() {
            body = filter.encode_body(body, cx);
        }
        body
    }
}

/// Wraps `body` so that `on_frame` sees every data and trailers frame (Envoy's
/// `decodeData` / `decodeTrailers` and their encode counterparts). `on_frame` may
/// change the frame, or fail the stream with a [`BodyError`] (a
/// [`BodyError::Reply`] becomes a local reply when no response has started).
pub fn map_frames<F>(body: Body, on_frame: F) -> Body
where
    F: FnMut(Frame<Bytes>) -> Result<Frame<Bytes>, BodyError> + Send + Unpin + 'static,
{
    Body::wrap(MapFrames {
        inner: body,
        on_frame,
    })
}

struct MapFrames<F> {
    inner: Body,
    on_frame: F,
}

impl<F> hyper::body::Body for MapFrames<F>
where
    F: FnMut(Frame<Bytes>) -> Result<Frame<Bytes>, BodyError> + Send + Unpin + 'static,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => std::task::Poll::Ready(Some((this.on_frame)(frame))),
            other => std::task::Poll::Ready(other),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        // A filter may change the length.
        hyper::body::SizeHint::default()
    }
}
