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
use crate::model::http::{
    AccessLogFormat, AppendAction, BodyFormat as ModelBodyFormat, LocalReplyConfig,
};
use crate::observe::access_log::filter_passes;
use crate::observe::format::{FormatContext, Formatter, JsonFormatter};
use crate::observe::StreamInfo;

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
    /// The body's content type when not `text/plain` (a `local_reply_config` format).
    pub content_type: Option<HeaderValue>,
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
            content_type: None,
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
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    self.content_type
                        .unwrap_or_else(|| HeaderValue::from_static("text/plain")),
                );
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

/// `local_reply_config`, compiled once per connection manager (Envoy's
/// `LocalReplyImpl`): the first mapper whose filter matches a reply may change its
/// status, body and headers and choose its body format; the body format (the mapper's,
/// else the config's, else the body as it is with `text/plain`) renders the body, with
/// `%LOCAL_REPLY_BODY%` for the body so far.
#[derive(Debug)]
pub(crate) struct LocalReplyRewriter {
    mappers: Vec<Mapper>,
    body_format: Option<BodyFormatter>,
}

#[derive(Debug)]
struct Mapper {
    filter: crate::model::http::AccessLogFilter,
    status: Option<StatusCode>,
    body: Option<Bytes>,
    body_format: Option<BodyFormatter>,
    headers: Vec<(HeaderName, Formatter, AppendAction, bool)>,
}

#[derive(Debug)]
struct BodyFormatter {
    format: BodyFormat,
    content_type: HeaderValue,
}

#[derive(Debug)]
enum BodyFormat {
    Text(Formatter),
    Json(JsonFormatter),
}

/// Why a `local_reply_config` does not compile.
#[derive(Debug, thiserror::Error)]
pub enum LocalReplyError {
    /// A body format or header value does not parse.
    #[error("local_reply_config: {0}")]
    Format(#[from] crate::observe::format::FormatError),
    /// A header name or content type is not valid.
    #[error("local_reply_config: invalid header {0:?}")]
    Header(String),
}

impl LocalReplyRewriter {
    /// Compiles `config`.
    pub(crate) fn new(config: &LocalReplyConfig) -> Result<LocalReplyRewriter, LocalReplyError> {
        let mappers = config
            .mappers
            .iter()
            .map(|m| {
                Ok(Mapper {
                    filter: m.filter.clone(),
                    status: m.status.and_then(|s| StatusCode::from_u16(s).ok()),
                    body: m.body.as_ref().map(|b| Bytes::from(b.clone())),
                    body_format: m.body_format.as_ref().map(BodyFormatter::new).transpose()?,
                    headers: m
                        .headers_to_add
                        .iter()
                        .map(|h| {
                            let name = HeaderName::from_bytes(h.name.as_bytes())
                                .map_err(|_| LocalReplyError::Header(h.name.clone()))?;
                            let value = Formatter::new_header_value(&h.value)?;
                            Ok((name, value, h.action, h.keep_empty_value))
                        })
                        .collect::<Result<Vec<_>, LocalReplyError>>()?,
                })
            })
            .collect::<Result<Vec<_>, LocalReplyError>>()?;
        Ok(LocalReplyRewriter {
            mappers,
            body_format: config
                .body_format
                .as_ref()
                .map(BodyFormatter::new)
                .transpose()?,
        })
    }

    /// Rewrites `reply` (Envoy's `LocalReplyImpl::rewrite`); `info` gets the final status
    /// (filters read it). `request` gives `%REQ(..)%` and the request line to formats.
    pub(crate) fn rewrite(
        &self,
        mut reply: LocalReply,
        info: &mut StreamInfo,
        request: Option<&http::request::Parts>,
    ) -> LocalReply {
        info.response_code = reply.status.as_u16();
        let mut format = self.body_format.as_ref();
        for mapper in &self.mappers {
            if !filter_passes(&mapper.filter, info) {
                continue;
            }
            if let Some(body) = &mapper.body {
                reply.body = body.clone();
            }
            if !mapper.headers.is_empty() {
                let ctx = context(info, request);
                for (name, value, action, keep_empty) in &mapper.headers {
                    let value = value.render(&ctx);
                    if value.is_empty() && !keep_empty {
                        continue;
                    }
                    let Ok(value) = HeaderValue::from_str(&value) else {
                        continue;
                    };
                    let present = reply.headers.contains_key(name);
                    match action {
                        AppendAction::AppendIfExistsOrAdd => {
                            reply.headers.append(name.clone(), value);
                        }
                        AppendAction::AddIfAbsent if !present => {
                            reply.headers.insert(name.clone(), value);
                        }
                        AppendAction::OverwriteIfExistsOrAdd => {
                            reply.headers.insert(name.clone(), value);
                        }
                        AppendAction::OverwriteIfExists if present => {
                            reply.headers.insert(name.clone(), value);
                        }
                        _ => {}
                    }
                }
            }
            if let Some(status) = mapper.status {
                reply.status = status;
                info.response_code = status.as_u16();
            }
            if mapper.body_format.is_some() {
                format = mapper.body_format.as_ref();
            }
            break;
        }
        if let Some(format) = format {
            let body = String::from_utf8_lossy(&reply.body).into_owned();
            let mut ctx = context(info, request);
            ctx.local_reply_body = Some(&body);
            let mut out = String::new();
            match &format.format {
                BodyFormat::Text(f) => f.format_with(&ctx, &mut out),
                BodyFormat::Json(f) => f.format_with(&ctx, &mut out),
            }
            reply.body = Bytes::from(out);
            reply.content_type = Some(format.content_type.clone());
        }
        reply
    }
}

fn context<'a>(
    info: &'a StreamInfo,
    request: Option<&'a http::request::Parts>,
) -> FormatContext<'a> {
    let ctx = FormatContext::new(info).with_scheme(super::request::SCHEME);
    match request {
        Some(parts) => ctx.with_request(parts),
        None => ctx,
    }
}

impl BodyFormatter {
    fn new(config: &ModelBodyFormat) -> Result<BodyFormatter, LocalReplyError> {
        Ok(BodyFormatter {
            format: match &config.format {
                AccessLogFormat::Text(text) => BodyFormat::Text(Formatter::new(text)?),
                AccessLogFormat::Json(fields) => BodyFormat::Json(JsonFormatter::new(fields)?),
            },
            content_type: HeaderValue::from_str(&config.content_type)
                .map_err(|_| LocalReplyError::Header(config.content_type.clone()))?,
        })
    }
}

#[cfg(test)]
mod rewriter_tests {
    use super::*;
    use crate::model::http::{
        AccessLogFilter, Comparison, ComparisonOp, HeaderValueOption, LocalReplyMapper,
    };

    fn new_info() -> StreamInfo {
        StreamInfo::new(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            "HTTP/1.1",
        )
    }

    #[test]
    fn first_matching_mapper_rewrites_then_the_body_is_formatted() {
        let config = LocalReplyConfig {
            mappers: vec![
                LocalReplyMapper {
                    filter: AccessLogFilter::StatusCode(Comparison {
                        op: ComparisonOp::Eq,
                        value: 404,
                    }),
                    status: Some(410),
                    body: Some("gone".into()),
                    body_format: None,
                    headers_to_add: vec![HeaderValueOption {
                        name: "x-code".into(),
                        value: "%RESPONSE_CODE%".into(),
                        action: AppendAction::OverwriteIfExistsOrAdd,
                        keep_empty_value: false,
                    }],
                },
                LocalReplyMapper {
                    filter: AccessLogFilter::NotHealthCheck,
                    status: None,
                    body: None,
                    body_format: Some(ModelBodyFormat {
                        format: AccessLogFormat::Json(vec![(
                            "m".into(),
                            "%LOCAL_REPLY_BODY%".into(),
                        )]),
                        content_type: "application/json".into(),
                    }),
                    headers_to_add: Vec::new(),
                },
            ],
            body_format: Some(ModelBodyFormat {
                format: AccessLogFormat::Text("[%LOCAL_REPLY_BODY%] %RESPONSE_CODE%".into()),
                content_type: "text/plain".into(),
            }),
        };
        let rewriter = LocalReplyRewriter::new(&config).unwrap();
        let mut info = new_info();
        let reply = rewriter.rewrite(LocalReply::new(StatusCode::NOT_FOUND, ""), &mut info, None);
        assert_eq!(reply.status, StatusCode::GONE);
        assert_eq!(reply.body, "[gone] 410");
        assert_eq!(
            reply.headers["x-code"], "404",
            "headers see the status before"
        );
        assert_eq!(info.response_code, 410);

        let mut info = new_info();
        let reply = rewriter.rewrite(
            LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
            &mut info,
            None,
        );
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.body, "{\"m\":\"no healthy upstream\"}\n");
        assert_eq!(reply.content_type.unwrap(), "application/json");
        let response = LocalReply::new(StatusCode::OK, "x").into_response(false, true);
        assert_eq!(response.headers()[CONTENT_TYPE], "text/plain");
    }
}
