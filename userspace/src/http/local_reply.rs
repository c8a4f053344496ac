//! Local replies: responses keel makes itself (no route, upstream failures, timeouts,
//! direct responses, redirects, filter rejections), shaped as Envoy's
//! `sendLocalReply` shapes them.
//!
//! - Plain HTTP: the status, `content-type: text/plain` when there is a body.
//! - gRPC requests (`content-type: application/grpc*`): HTTP 200 "trailers-only"
//!   with `content-type: application/grpc`, `grpc-status` mapped from the HTTP status
//!   as Envoy's `Grpc::Utility::httpToGrpcStatus` does (404 → 12 UNIMPLEMENTED,
//!   429/502/503/504 → 14 UNAVAILABLE, ...) unless the reply names one, and the body
//!   text in `grpc-message` (percent-encoded as gRPC requires).

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use super::body::Body;

/// A response made by keel.
#[derive(Debug, Clone)]
pub struct LocalReply {
    /// HTTP status.
    pub status: StatusCode,
    /// Body text (empty for none).
    pub body: Bytes,
    /// Response flag for the access log (`NR`, `UF`, `UT`, ...).
    pub flag: Option<&'static str>,
    /// `%RESPONSE_CODE_DETAILS%` (e.g. `route_not_found`).
    pub details: &'static str,
    /// gRPC status for gRPC requests; mapped from `status` when `None`.
    pub grpc_status: Option<u32>,
    /// Extra headers (e.g. `location`).
    pub headers: HeaderMap,
    /// Close the HTTP/1.1 connection after this reply.
    pub close_connection: bool,
}

impl LocalReply {
    /// A reply with `status` and `body`.
    pub fn new(status: StatusCode, body: impl Into<Bytes>) -> LocalReply {
        LocalReply {
            status,
            body: body.into(),
            flag: None,
            details: "",
            grpc_status: None,
            headers: HeaderMap::new(),
            close_connection: false,
        }
    }

    /// Sets the response flag.
    pub fn flag(mut self, flag: &'static str) -> LocalReply {
        self.flag = Some(flag);
        self
    }

    /// Sets the response code details.
    pub fn details(mut self, details: &'static str) -> LocalReply {
        self.details = details;
        self
    }

    /// Sets the gRPC status used for gRPC requests.
    pub fn grpc_status(mut self, status: u32) -> LocalReply {
        self.grpc_status = Some(status);
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> LocalReply {
        self.headers.append(name, value);
        self
    }

    /// Closes the HTTP/1.1 connection after the reply.
    pub fn close(mut self) -> LocalReply {
        self.close_connection = true;
        self
    }

    /// The response for a request (`grpc`: it is a gRPC request; `http1`: the
    /// downstream speaks HTTP/1.x).
    pub(crate) fn into_response(self, grpc: bool, http1: bool) -> Response<Body> {
        let mut response = Response::new(Body::Empty);
        if grpc {
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            let status = self
                .grpc_status
                .unwrap_or_else(|| http_to_grpc_status(self.status.as_u16()));
            headers.insert(GRPC_STATUS, HeaderValue::from(status));
            if !self.body.is_empty() {
                if let Ok(message) = HeaderValue::from_bytes(&grpc_percent_encode(&self.body)) {
                    headers.insert(GRPC_MESSAGE, message);
                }
            }
        } else {
            *response.status_mut() = self.status;
            if !self.body.is_empty() {
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                *response.body_mut() = Body::full(self.body);
            }
        }
        let headers = response.headers_mut();
        for (name, value) in self.headers {
            if let Some(name) = name {
                headers.append(name, value);
            }
        }
        if self.close_connection && http1 {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl std::fmt::Display for LocalReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.status)?;
        if !self.body.is_empty() {
            write!(f, ": {}", String::from_utf8_lossy(&self.body))?;
        }
        Ok(())
    }
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// gRPC status codes keel uses.
pub mod grpc {
    /// `DEADLINE_EXCEEDED`.
    pub const DEADLINE_EXCEEDED: u32 = 4;
    /// `UNIMPLEMENTED`.
    pub const UNIMPLEMENTED: u32 = 12;
    /// `UNAVAILABLE`.
    pub const UNAVAILABLE: u32 = 14;
}

/// Envoy's `Grpc::Utility::httpToGrpcStatus` (after gRPC's
/// `http-grpc-status-mapping.md`).
pub fn http_to_grpc_status(status: u16) -> u32 {
    match status {
        400 => 13,                  // INTERNAL
        401 => 16,                  // UNAUTHENTICATED
        403 => 7,                   // PERMISSION_DENIED
        404 => grpc::UNIMPLEMENTED, // UNIMPLEMENTED
        429 | 502 | 503 | 504 => grpc::UNAVAILABLE,
        _ => 2, // UNKNOWN
    }
}

/// Whether `content-type` says gRPC (Envoy's `Grpc::Common::isGrpcRequestHeaders`:
/// `application/grpc`, `application/grpc+proto`, `application/grpc;...`; not gRPC-Web).
#[inline]
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|value| super::headers::is_grpc_content_type(value.as_bytes()))
}

/// gRPC's percent-encoding of `grpc-message`: bytes outside printable ASCII, and `%`.
fn grpc_percent_encode(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for &b in text {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_replies_are_trailers_only_with_mapped_status() {
        let reply = LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
        let response = reply.into_response(true, false);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "14");
        assert_eq!(response.headers()["grpc-message"], "no healthy upstream");
        assert_eq!(response.headers()["content-type"], "application/grpc");
    }

    #[test]
    fn plain_replies_carry_text() {
        let response = LocalReply::new(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
            .close()
            .into_response(false, true);
        assert_eq!(response.status(), 504);
        assert_eq!(response.headers()["content-type"], "text/plain");
        assert_eq!(response.headers()["connection"], "close");
    }

    #[test]
    fn grpc_content_types() {
        let mut headers = HeaderMap::new();
        for (value, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc;charset=utf-8", true),
            ("application/grpc-web", false),
            ("application/json", false),
        ] {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_grpc(&headers), grpc, "{value}");
        }
    }

    #[test]
    fn grpc_message_encoding() {
        assert_eq!(grpc_percent_encode(b"a b%\n"), b"a b%25%0A".to_vec());
    }
}
