//! Bodies on the HTTP path: [`Body`], the one type that flows in both directions
//! (hyper's `Incoming` or keel's upstream HTTP/1.1 body passed through untouched in
//! the common case), and the
//! request-side tracker that tells the stream when the request has been received.
//!
//! Bodies are streamed frame by frame, trailers included (gRPC); nothing is buffered
//! whole.

use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use tokio::sync::{mpsc, oneshot};

use super::local_reply::LocalReply;

/// Errors of a body in either direction.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The peer's stream failed (reset, connection closed, malformed framing).
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// A pooled HTTP/1.1 upstream connection failed under the response body (boxed:
    /// the error may hold a request body's error in turn).
    #[error(transparent)]
    Upstream(Box<crate::upstream::H1Error>),
    /// A filter stopped the stream with a local reply.
    #[error("stopped by a filter: {0}")]
    Reply(Box<LocalReply>),
    /// A stream timer fired after the response started.
    #[error("{0}")]
    Timeout(&'static str),
    /// Anything else.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

/// A request or response body.
#[derive(Debug, Default)]
pub enum Body {
    /// No body.
    #[default]
    Empty,
    /// One chunk (taken when polled).
    Full(Option<Bytes>),
    /// Straight from hyper.
    Incoming(Incoming),
    /// A response read from a pooled HTTP/1.1 upstream connection (keel's client).
    Upstream(crate::upstream::UpstreamBody),
    /// Wrapped by a filter or a tracker.
    Boxed(UnsyncBoxBody<Bytes, BodyError>),
}

impl Body {
    /// A body of `bytes` (empty bytes make an empty body).
    pub fn full(bytes: impl Into<Bytes>) -> Body {
        let bytes = bytes.into();
        if bytes.is_empty() {
            Body::Empty
        } else {
            Body::Full(Some(bytes))
        }
    }

    /// Boxes any body.
    pub fn wrap<B>(body: B) -> Body
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BodyError>,
    {
        Body::Boxed(body.map_err(Into::into).boxed_unsync())
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Incoming(incoming) => Pin::new(incoming).poll_frame(cx).map_err(BodyError::Hyper),
            Body::Upstream(upstream) => Pin::new(upstream)
                .poll_frame(cx)
                .map_err(|e| BodyError::Upstream(Box::new(e))),
            Body::Boxed(boxed) => Pin::new(boxed).poll_frame(cx),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(bytes) => bytes.is_none(),
            Body::Incoming(incoming) => incoming.is_end_stream(),
            Body::Upstream(upstream) => upstream.is_end_stream(),
            Body::Boxed(boxed) => boxed.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Incoming(incoming) => incoming.size_hint(),
            Body::Upstream(upstream) => upstream.size_hint(),
            Body::Boxed(boxed) => boxed.size_hint(),
        }
    }
}

/// How the request body ended, as the upstream side saw it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestEnd {
    /// Body bytes received from downstream.
    pub bytes: u64,
    /// Whether it ended cleanly (end of stream seen) rather than failed or dropped.
    pub complete: bool,
    /// When.
    pub at: Instant,
}

/// A request body on its way upstream: counts bytes, copies frames to a mirror, and
/// reports its end (see [`RequestEnd`]) to the stream waiting on the receiver.
pub(crate) struct TrackedRequest {
    inner: Body,
    bytes: u64,
    end: Option<oneshot::Sender<RequestEnd>>,
    mirrors: Vec<mpsc::Sender<MirrorFrame>>,
}

/// A frame copied to a mirrored request.
pub(crate) enum MirrorFrame {
    Data(Bytes),
    Trailers(http::HeaderMap),
    End,
}

impl TrackedRequest {
    /// Wraps `inner`; the receiver learns how it ended.
    pub(crate) fn new(
        inner: Body,
        mirrors: Vec<mpsc::Sender<MirrorFrame>>,
    ) -> (TrackedRequest, oneshot::Receiver<RequestEnd>) {
        let (tx, rx) = oneshot::channel();
        (
            TrackedRequest {
                inner,
                bytes: 0,
                end: Some(tx),
                mirrors,
            },
            rx,
        )
    }

    fn finish(&mut self, complete: bool) {
        if let Some(end) = self.end.take() {
            let _ = end.send(RequestEnd {
                bytes: self.bytes,
                complete,
                at: Instant::now(),
            });
        }
        if complete {
            for mirror in self.mirrors.drain(..) {
                let _ = mirror.try_send(MirrorFrame::End);
            }
        } else {
            self.mirrors.clear();
        }
    }

    fn copy_to_mirrors(&mut self, frame: &Frame<Bytes>) {
        // A mirror that falls behind (its channel full) is cut off: the main request
        // never waits for a shadow.
        self.mirrors.retain(|mirror| {
            let copy = if let Some(data) = frame.data_ref() {
                MirrorFrame::Data(data.clone())
            } else if let Some(trailers) = frame.trailers_ref() {
                MirrorFrame::Trailers(trailers.clone())
            } else {
                return true;
            };
            mirror.try_send(copy).is_ok()
        });
    }
}

impl hyper::body::Body for TrackedRequest {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                if !this.mirrors.is_empty() {
                    this.copy_to_mirrors(frame);
                }
                if this.inner.is_end_stream() {
                    this.finish(true);
                }
            }
            Some(Err(_)) => this.finish(false),
            None => this.finish(true),
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TrackedRequest {
    fn drop(&mut self) {
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}

/// The body of a mirrored request: the frames copied by [`TrackedRequest`]. Ends
/// with an error when the copy was cut off, so that a truncated shadow request is
/// never taken for a complete one.
pub(crate) struct MirrorBody {
    pub(crate) frames: mpsc::Receiver<MirrorFrame>,
    pub(crate) done: bool,
}

impl hyper::body::Body for MirrorBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        Poll::Ready(match ready!(this.frames.poll_recv(cx)) {
            Some(MirrorFrame::Data(data)) => Some(Ok(Frame::data(data))),
            Some(MirrorFrame::Trailers(trailers)) => Some(Ok(Frame::trailers(trailers))),
            Some(MirrorFrame::End) => {
                this.done = true;
                None
            }
            None => {
                this.done = true;
                Some(Err(BodyError::Other(
                    "mirror fell behind the request and was cut off".into(),
                )))
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
