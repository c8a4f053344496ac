//! Envoy's substitution formatter: `%COMMAND%` operators in access-log formats and in
//! header values, compiled once per configuration into segments.
//!
//! Syntax, as in Envoy: `%OPERATOR%`, `%OPERATOR(arg)%`, `%OPERATOR(arg):MAXLEN%` (the
//! value is cut to at most `MAXLEN` bytes, on a character boundary), and `%%` for a
//! literal `%`. An unknown operator, a missing closing `%` or a parameter given to an
//! operator that takes none is a [`FormatError`] that names the offending token.
//!
//! A value that is not known renders as `-` in access logs ([`Missing::Dash`], what
//! [`Formatter::new`] builds) and as nothing in header values ([`Missing::Empty`], what
//! [`Formatter::new_header_value`] builds), like Envoy's `omit_empty_values`.
//!
//! Rendering appends to a caller's `String` and allocates nothing on its own except in
//! rare cases (a header value that is not UTF-8, a JSON string that needs escaping).
//! [`JsonFormatter`] renders `json_format` objects with typed values.
//!
//! Supported operators: `START_TIME[(strftime)]`, `REQ(X?Y)`, `RESP(X?Y)`,
//! `TRAILER(X?Y)`, `RESPONSE_CODE`, `RESPONSE_FLAGS`, `RESPONSE_CODE_DETAILS`,
//! `BYTES_RECEIVED`, `BYTES_SENT`, `DURATION`, `REQUEST_DURATION`, `RESPONSE_DURATION`,
//! `RESPONSE_TX_DURATION`, `UPSTREAM_HOST`, `UPSTREAM_CLUSTER`, `UPSTREAM_REQUEST_ATTEMPT_COUNT`,
//! `UPSTREAM_REMOTE_ADDRESS[_WITHOUT_PORT]`, `UPSTREAM_REMOTE_PORT`,
//! `DOWNSTREAM_REMOTE_ADDRESS[_WITHOUT_PORT]`, `DOWNSTREAM_REMOTE_PORT`,
//! `DOWNSTREAM_LOCAL_ADDRESS[_WITHOUT_PORT]`, `DOWNSTREAM_LOCAL_PORT`,
//! `DOWNSTREAM_DIRECT_REMOTE_ADDRESS[_WITHOUT_PORT]`, `DOWNSTREAM_DIRECT_REMOTE_PORT`,
//! `PROTOCOL`, `ROUTE_NAME`, `METADATA(ROUTE:filter:key...)`, `LOCAL_REPLY_BODY` (local
//! reply formats), `HOSTNAME`, `ENVIRONMENT(VAR)`, `REQUEST_HEADERS_BYTES`,
//! `RESPONSE_HEADERS_BYTES`, `RESPONSE_TRAILERS_BYTES`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, Method, Uri};

use super::StreamInfo;

/// Why a format string is invalid.
#[derive(Debug, thiserror::Error)]
#[error("invalid format string: {0}")]
pub struct FormatError(pub String);

/// How a value that is not known renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Missing {
    /// `-`, as in Envoy's access logs.
    #[default]
    Dash,
    /// Nothing, as in Envoy's header values.
    Empty,
}

impl Missing {
    /// The text written for a value that is not known.
    pub fn as_str(self) -> &'static str {
        match self {
            Missing::Dash => "-",
            Missing::Empty => "",
        }
    }
}

/// What a formatter reads: the stream's [`StreamInfo`] and the header maps and request
/// line of the moment.
///
/// [`FormatContext::new`] takes everything from the `StreamInfo`. `StreamInfo` has no
/// request line (an `http::HeaderMap` cannot hold `:method` / `:path`), so callers that
/// know it add it with [`with_request`](Self::with_request) or
/// [`with_request_line`](Self::with_request_line); without it `%REQ(:METHOD)%` and
/// `%REQ(:PATH)%` are not known and `%REQ(:AUTHORITY)%` falls back to the `host` header.
#[derive(Debug, Clone, Copy)]
pub struct FormatContext<'a> {
    /// The stream.
    pub info: &'a StreamInfo,
    /// Request headers read by `%REQ(..)%`.
    pub request_headers: &'a HeaderMap,
    /// Response headers read by `%RESP(..)%`.
    pub response_headers: &'a HeaderMap,
    /// Response trailers read by `%TRAILER(..)%`.
    pub response_trailers: &'a HeaderMap,
    /// `:method`.
    pub method: Option<&'a Method>,
    /// `:path` (the URI's path and query) and, when the URI has one, `:authority`.
    pub uri: Option<&'a Uri>,
    /// `:scheme` when the URI carries none (e.g. "https" on a TLS connection).
    pub scheme: Option<&'a str>,
    /// `%LOCAL_REPLY_BODY%`: the body of the local reply being formatted.
    pub local_reply_body: Option<&'a str>,
}

impl<'a> FormatContext<'a> {
    /// Everything from `info`.
    pub fn new(info: &'a StreamInfo) -> Self {
        FormatContext {
            info,
            request_headers: &info.request_headers,
            response_headers: &info.response_headers,
            response_trailers: &info.response_trailers,
            method: None,
            uri: None,
            scheme: None,
            local_reply_body: None,
        }
    }

    /// Request headers, method and URI from `parts`.
    pub fn with_request(mut self, parts: &'a http::request::Parts) -> Self {
        self.request_headers = &parts.headers;
        self.method = Some(&parts.method);
        self.uri = Some(&parts.uri);
        self
    }

    /// The request line (`:method`, `:path`, `:authority` when in the URI).
    pub fn with_request_line(mut self, method: &'a Method, uri: &'a Uri) -> Self {
        self.method = Some(method);
        self.uri = Some(uri);
        self
    }

    /// `:scheme` of the downstream connection.
    pub fn with_scheme(mut self, scheme: &'a str) -> Self {
        self.scheme = Some(scheme);
        self
    }

    /// Request headers other than `info.request_headers`.
    pub fn with_request_headers(mut self, headers: &'a HeaderMap) -> Self {
        self.request_headers = headers;
        self
    }

    /// Response headers other than `info.response_headers`.
    pub fn with_response_headers(mut self, headers: &'a HeaderMap) -> Self {
        self.response_headers = headers;
        self
    }

    /// `:authority`: the URI's authority, else the `host` header.
    fn authority(&self) -> Option<&'a str> {
        if let Some(authority) = self.uri.and_then(Uri::authority) {
            return Some(authority.as_str());
        }
        self.request_headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
    }

    /// `:scheme`: the URI's, else the one given.
    fn scheme(&self) -> Option<&'a str> {
        self.uri.and_then(Uri::scheme_str).or(self.scheme)
    }
}

/// A compiled format string.
#[derive(Debug, Clone)]
pub struct Formatter {
    segments: Vec<Segment>,
    missing: Missing,
}

impl Formatter {
    /// Compiles `format` for access logs (unknown values render as `-`); unknown
    /// operators are an error naming them.
    pub fn new(format: &str) -> Result<Formatter, FormatError> {
        Formatter::with_missing(format, Missing::Dash)
    }

    /// Compiles `format` for a header value (unknown values render as nothing).
    pub fn new_header_value(format: &str) -> Result<Formatter, FormatError> {
        Formatter::with_missing(format, Missing::Empty)
    }

    /// Compiles `format`, rendering unknown values as `missing` says.
    pub fn with_missing(format: &str, missing: Missing) -> Result<Formatter, FormatError> {
        Ok(Formatter {
            segments: parse(format)?,
            missing,
        })
    }

    /// How unknown values render.
    pub fn missing(&self) -> Missing {
        self.missing
    }

    /// The text, when the format has no operators (only literals and `%%`).
    pub fn literal(&self) -> Option<&str> {
        match self.segments.as_slice() {
            [] => Some(""),
            [Segment::Literal(text)] => Some(text),
            _ => None,
        }
    }

    /// Renders for `info`, appending to `out`.
    pub fn format_into(&self, info: &StreamInfo, out: &mut String) {
        self.format_with(&FormatContext::new(info), out);
    }

    /// Renders for `ctx`, appending to `out`.
    pub fn format_with(&self, ctx: &FormatContext<'_>, out: &mut String) {
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::Op(op) => {
                    if op.render(ctx, out) == Rendered::Missing {
                        out.push_str(self.missing.as_str());
                    }
                }
            }
        }
    }

    /// Renders for `ctx` into a new string.
    pub fn render(&self, ctx: &FormatContext<'_>) -> String {
        let mut out = String::new();
        self.format_with(ctx, &mut out);
        out
    }
}

/// A compiled `json_format`: one JSON object per line, keys in configuration order.
///
/// As in Envoy, a value that is a single operator keeps its type: numbers for
/// `RESPONSE_CODE`, `DURATION`, `BYTES_*` and the other numeric operators, strings
/// otherwise, `null` when not known. A value mixing text and operators is a string in
/// which unknown values render as `-`.
#[derive(Debug, Clone)]
pub struct JsonFormatter {
    fields: Vec<JsonField>,
}

#[derive(Debug, Clone)]
struct JsonField {
    /// `"key":`, escaped, with the leading comma for all but the first.
    prefix: Box<str>,
    value: JsonValue,
}

#[derive(Debug, Clone)]
enum JsonValue {
    /// A constant string, already escaped and quoted.
    Constant(Box<str>),
    /// One operator: typed.
    Typed(Op),
    /// Text with operators: a string.
    Mixed(Formatter),
}

impl JsonFormatter {
    /// Compiles `fields` (key, format string), in order.
    pub fn new(fields: &[(String, String)]) -> Result<JsonFormatter, FormatError> {
        let mut compiled = Vec::with_capacity(fields.len());
        for (i, (key, format)) in fields.iter().enumerate() {
            let mut prefix = String::new();
            if i > 0 {
                prefix.push(',');
            }
            push_json_string(&mut prefix, key);
            prefix.push(':');
            let segments = parse(format)
                .map_err(|e| FormatError(format!("json_format key {key:?}: {}", e.0)))?;
            let value = match segments.as_slice() {
                [] => JsonValue::Constant("\"\"".into()),
                [Segment::Literal(text)] => {
                    let mut quoted = String::new();
                    push_json_string(&mut quoted, text);
                    JsonValue::Constant(quoted.into())
                }
                [Segment::Op(op)] => JsonValue::Typed(op.clone()),
                _ => JsonValue::Mixed(Formatter {
                    segments,
                    missing: Missing::Dash,
                }),
            };
            compiled.push(JsonField {
                prefix: prefix.into(),
                value,
            });
        }
        Ok(JsonFormatter { fields: compiled })
    }

    /// Renders one line (object and trailing newline) for `info`, appending to `out`.
    pub fn format_into(&self, info: &StreamInfo, out: &mut String) {
        self.format_with(&FormatContext::new(info), out);
    }

    /// Renders one line (object and trailing newline) for `ctx`, appending to `out`.
    pub fn format_with(&self, ctx: &FormatContext<'_>, out: &mut String) {
        out.push('{');
        for field in &self.fields {
            out.push_str(&field.prefix);
            match &field.value {
                JsonValue::Constant(text) => out.push_str(text),
                JsonValue::Typed(op) => {
                    let start = out.len();
                    match op.render(ctx, out) {
                        Rendered::Missing => out.push_str("null"),
                        Rendered::Number => {}
                        Rendered::Text => quote_json_in_place(out, start),
                    }
                }
                JsonValue::Mixed(formatter) => {
                    let start = out.len();
                    formatter.format_with(ctx, out);
                    quote_json_in_place(out, start);
                }
            }
        }
        out.push_str("}\n");
    }
}

// ---------------------------------------------------------------------------------
// Segments and operators
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Segment {
    Literal(Box<str>),
    Op(Op),
}

/// An operator and its truncation.
#[derive(Debug, Clone)]
struct Op {
    kind: OpKind,
    max_len: Option<usize>,
}

/// What an operator wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rendered {
    /// Nothing: the value is not known.
    Missing,
    /// A string (possibly empty).
    Text,
    /// Decimal digits.
    Number,
}

#[derive(Debug, Clone)]
enum OpKind {
    StartTime(TimeFormat),
    RequestHeader(HeaderSelector),
    ResponseHeader(HeaderSelector),
    ResponseTrailer(HeaderSelector),
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    BytesReceived,
    BytesSent,
    Duration,
    RequestDuration,
    ResponseDuration,
    ResponseTxDuration,
    UpstreamHost,
    UpstreamCluster,
    UpstreamAttemptCount,
    UpstreamAddress(AddressPart),
    DownstreamRemote(AddressPart),
    DownstreamLocal(AddressPart),
    DownstreamDirectRemote(AddressPart),
    Protocol,
    RouteName,
    /// `METADATA(ROUTE:filter:key:...)`: the filter's namespace, then the key path.
    RouteMetadata(Box<[Box<str>]>),
    LocalReplyBody,
    Hostname,
    Environment(Option<Box<str>>),
    RequestHeadersBytes,
    ResponseHeadersBytes,
    ResponseTrailersBytes,
}

/// Which part of a socket address an operator renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddressPart {
    /// `ip:port` (`[ip]:port` for IPv6).
    Full,
    /// The IP alone.
    WithoutPort,
    /// The port alone (a number).
    Port,
}

/// `X?Y`: the main header, and the one used when it is absent.
#[derive(Debug, Clone)]
struct HeaderSelector {
    main: HeaderRef,
    alternative: Option<HeaderRef>,
}

/// A header an operator reads: a pseudo-header from the request line or a name.
#[derive(Debug, Clone)]
enum HeaderRef {
    Method,
    Path,
    Authority,
    Scheme,
    /// `host`: the header, else `:authority`.
    Host,
    Named(HeaderName),
    /// A pseudo-header that does not exist for this map (e.g. `:status` in `REQ`).
    Never,
}

impl Op {
    fn render(&self, ctx: &FormatContext<'_>, out: &mut String) -> Rendered {
        let start = out.len();
        let rendered = self.kind.render(ctx, out);
        if rendered == Rendered::Text {
            if let Some(max) = self.max_len {
                truncate_at_char_boundary(out, start + max);
            }
        }
        rendered
    }
}

impl OpKind {
    fn render(&self, ctx: &FormatContext<'_>, out: &mut String) -> Rendered {
        let info = ctx.info;
        match self {
            OpKind::StartTime(format) => {
                format.render(info.start_time, out);
                Rendered::Text
            }
            OpKind::RequestHeader(selector) => selector.render(ctx, ctx.request_headers, true, out),
            OpKind::ResponseHeader(selector) => {
                selector.render(ctx, ctx.response_headers, false, out)
            }
            OpKind::ResponseTrailer(selector) => {
                selector.render(ctx, ctx.response_trailers, false, out)
            }
            OpKind::ResponseCode => write_number(out, u64::from(info.response_code)),
            OpKind::ResponseFlags => {
                if info.response_flags.is_empty() {
                    out.push('-');
                } else {
                    for (i, flag) in info.response_flags.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(flag);
                    }
                }
                Rendered::Text
            }
            OpKind::ResponseCodeDetails => {
                write_opt_str(out, info.response_code_details.as_deref())
            }
            OpKind::BytesReceived => write_number(out, info.bytes_received),
            OpKind::BytesSent => write_number(out, info.bytes_sent),
            OpKind::Duration => {
                let duration = info.duration.unwrap_or_else(|| info.start.elapsed());
                write_millis(out, duration)
            }
            OpKind::RequestDuration => match info.request_duration {
                Some(d) => write_millis(out, d),
                None => Rendered::Missing,
            },
            OpKind::ResponseDuration => match info.response_duration {
                Some(d) => write_millis(out, d),
                None => Rendered::Missing,
            },
            OpKind::ResponseTxDuration => match (info.duration, info.response_duration) {
                (Some(total), Some(first_byte)) => {
                    write_millis(out, total.saturating_sub(first_byte))
                }
                _ => Rendered::Missing,
            },
            OpKind::UpstreamHost => match info.upstream_host {
                Some(addr) => write_address(out, addr, AddressPart::Full),
                None => Rendered::Missing,
            },
            OpKind::UpstreamCluster => write_opt_str(out, info.upstream_cluster.as_deref()),
            OpKind::UpstreamAttemptCount => {
                write_number(out, u64::from(info.upstream_attempt_count))
            }
            OpKind::UpstreamAddress(part) => match info.upstream_host {
                Some(addr) => write_address(out, addr, *part),
                None => Rendered::Missing,
            },
            OpKind::DownstreamRemote(part) => write_address(out, info.downstream_remote, *part),
            OpKind::DownstreamDirectRemote(part) => {
                write_address(out, info.downstream_direct_remote, *part)
            }
            // An empty body is "" (Envoy's `LOCAL_REPLY_BODY` is a string, never "-").
            OpKind::RouteMetadata(path) => {
                let Some(metadata) = &info.route_metadata else {
                    return Rendered::Missing;
                };
                let mut value = match metadata.get(&*path[0]) {
                    Some(v) => v,
                    None => return Rendered::Missing,
                };
                for key in &path[1..] {
                    match value.get(&**key) {
                        Some(v) => value = v,
                        None => return Rendered::Missing,
                    }
                }
                match value {
                    serde_json::Value::Null => Rendered::Missing,
                    serde_json::Value::String(text) => {
                        out.push_str(text);
                        Rendered::Text
                    }
                    // Numbers, booleans, lists and objects as JSON (raw in json_format).
                    other => {
                        out.push_str(&other.to_string());
                        Rendered::Number
                    }
                }
            }
            OpKind::LocalReplyBody => {
                out.push_str(ctx.local_reply_body.unwrap_or_default());
                Rendered::Text
            }
            OpKind::DownstreamLocal(part) => write_address(out, info.downstream_local, *part),
            OpKind::Protocol => write_opt_str(out, Some(info.protocol)),
            OpKind::RouteName => write_opt_str(out, info.route_name.as_deref()),
            OpKind::Hostname => write_opt_str(out, hostname()),
            OpKind::Environment(value) => write_opt_str(out, value.as_deref()),
            OpKind::RequestHeadersBytes => {
                let mut total = header_bytes(ctx.request_headers);
                if let Some(method) = ctx.method {
                    total += ":method".len() + method.as_str().len();
                }
                if let Some(pq) = ctx.uri.and_then(Uri::path_and_query) {
                    total += ":path".len() + pq.as_str().len();
                }
                if let Some(authority) = ctx.uri.and_then(Uri::authority) {
                    total += ":authority".len() + authority.as_str().len();
                }
                if let Some(scheme) = ctx.scheme() {
                    total += ":scheme".len() + scheme.len();
                }
                write_number(out, total as u64)
            }
            OpKind::ResponseHeadersBytes => {
                let mut total = header_bytes(ctx.response_headers);
                if info.response_code != 0 {
                    total += ":status".len() + 3;
                }
                write_number(out, total as u64)
            }
            OpKind::ResponseTrailersBytes => {
                write_number(out, header_bytes(ctx.response_trailers) as u64)
            }
        }
    }
}

impl HeaderSelector {
    fn render(
        &self,
        ctx: &FormatContext<'_>,
        map: &HeaderMap,
        is_request: bool,
        out: &mut String,
    ) -> Rendered {
        if self.main.render(ctx, map, is_request, out) {
            return Rendered::Text;
        }
        if let Some(alternative) = &self.alternative {
            if alternative.render(ctx, map, is_request, out) {
                return Rendered::Text;
            }
        }
        Rendered::Missing
    }
}

impl HeaderRef {
    /// Writes the first value of the header; false when absent.
    fn render(
        &self,
        ctx: &FormatContext<'_>,
        map: &HeaderMap,
        is_request: bool,
        out: &mut String,
    ) -> bool {
        let value: Option<&str> = match self {
            HeaderRef::Named(name) => {
                return match map.get(name) {
                    Some(value) => {
                        push_header_value(out, value);
                        true
                    }
                    None => false,
                };
            }
            HeaderRef::Never => None,
            _ if !is_request => None,
            HeaderRef::Method => ctx.method.map(Method::as_str),
            HeaderRef::Path => ctx.uri.and_then(Uri::path_and_query).map(|pq| pq.as_str()),
            HeaderRef::Authority => ctx.authority(),
            HeaderRef::Scheme => ctx.scheme(),
            HeaderRef::Host => ctx.authority(),
        };
        match value {
            Some(value) => {
                out.push_str(value);
                true
            }
            None => false,
        }
    }
}

/// `START_TIME`'s format.
#[derive(Debug, Clone)]
enum TimeFormat {
    /// Envoy's default: `%Y-%m-%dT%H:%M:%E3SZ` in UTC.
    Default,
    /// A strftime-style format, compiled.
    Custom(Vec<TimePart>),
}

#[derive(Debug, Clone)]
enum TimePart {
    /// Items chrono renders.
    Chrono(Vec<chrono::format::Item<'static>>),
    /// Fractional seconds with this many digits (1..=9), truncated.
    Fraction(u8),
}

impl TimeFormat {
    fn parse(arg: &str) -> Result<TimeFormat, FormatError> {
        if arg.is_empty() {
            return Ok(TimeFormat::Default);
        }
        let mut parts = Vec::new();
        let mut pending = String::new();
        let bytes = arg.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 1 < bytes.len() {
                let next = bytes[i + 1];
                // %Nf with N not supported by chrono (chrono has %3f, %6f, %9f).
                if next.is_ascii_digit()
                    && next != b'0'
                    && bytes.get(i + 2) == Some(&b'f')
                    && !matches!(next, b'3' | b'6' | b'9')
                {
                    flush_chrono(&mut parts, &mut pending, arg)?;
                    parts.push(TimePart::Fraction(next - b'0'));
                    i += 3;
                    continue;
                }
                // absl's %E<N>S / %E*S: seconds with N fractional digits.
                if next == b'E' && bytes.get(i + 3) == Some(&b'S') {
                    let digits = bytes[i + 2];
                    match digits {
                        b'*' => pending.push_str("%S%.f"),
                        b'3' | b'6' | b'9' => {
                            pending.push_str("%S%.");
                            pending.push(digits as char);
                            pending.push('f');
                        }
                        b'1'..=b'9' => {
                            pending.push_str("%S.");
                            flush_chrono(&mut parts, &mut pending, arg)?;
                            parts.push(TimePart::Fraction(digits - b'0'));
                        }
                        b'0' => pending.push_str("%S"),
                        _ => {
                            return Err(FormatError(format!(
                                "START_TIME({arg}): unsupported specifier at byte {i}"
                            )))
                        }
                    }
                    i += 4;
                    continue;
                }
                // Any other specifier (and %%) goes to chrono whole.
                pending.push('%');
                let c = arg[i + 1..].chars().next().unwrap_or('%');
                pending.push(c);
                i += 1 + c.len_utf8();
                continue;
            }
            let c = arg[i..].chars().next().unwrap_or(' ');
            pending.push(c);
            i += c.len_utf8();
        }
        flush_chrono(&mut parts, &mut pending, arg)?;
        Ok(TimeFormat::Custom(parts))
    }

    fn render(&self, time: SystemTime, out: &mut String) {
        match self {
            TimeFormat::Default => write_default_time(time, out),
            TimeFormat::Custom(parts) => {
                let datetime: chrono::DateTime<chrono::Utc> = time.into();
                for part in parts {
                    match part {
                        TimePart::Chrono(items) => {
                            let _ = datetime.format_with_items(items.iter()).write_to(out);
                        }
                        TimePart::Fraction(digits) => {
                            let nanos = chrono::Timelike::nanosecond(&datetime) % 1_000_000_000;
                            let value = nanos / 10u32.pow(9 - u32::from(*digits));
                            let _ = write!(out, "{value:0width$}", width = usize::from(*digits));
                        }
                    }
                }
            }
        }
    }
}

fn flush_chrono(
    parts: &mut Vec<TimePart>,
    pending: &mut String,
    arg: &str,
) -> Result<(), FormatError> {
    if pending.is_empty() {
        return Ok(());
    }
    let items = chrono::format::StrftimeItems::new(pending)
        .parse_to_owned()
        .map_err(|_| FormatError(format!("START_TIME({arg}): invalid time format")))?;
    parts.push(TimePart::Chrono(items));
    pending.clear();
    Ok(())
}

/// `2024-01-01T00:00:00.000Z` without chrono: the common case, on the request path.
fn write_default_time(time: SystemTime, out: &mut String) {
    let Ok(since_epoch) = time.duration_since(UNIX_EPOCH) else {
        let datetime: chrono::DateTime<chrono::Utc> = time.into();
        let _ = write!(out, "{}", datetime.format("%Y-%m-%dT%H:%M:%S%.3fZ"));
        return;
    };
    let secs = since_epoch.as_secs();
    let millis = since_epoch.subsec_millis();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    if !(0..=9999).contains(&year) {
        let _ = write!(
            out,
            "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z"
        );
        return;
    }
    // Digit by digit: `write!` with padding costs several times more.
    push_padded(out, year as u64, 4);
    out.push('-');
    push_padded(out, u64::from(month), 2);
    out.push('-');
    push_padded(out, u64::from(day), 2);
    out.push('T');
    push_padded(out, hour, 2);
    out.push(':');
    push_padded(out, minute, 2);
    out.push(':');
    push_padded(out, second, 2);
    out.push('.');
    push_padded(out, u64::from(millis), 3);
    out.push('Z');
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

// ---------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------

fn parse(format: &str) -> Result<Vec<Segment>, FormatError> {
    let mut segments = Vec::new();
    let mut literal = String::new();
    let bytes = format.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let Some(offset) = format[i..].find('%') else {
            literal.push_str(&format[i..]);
            break;
        };
        literal.push_str(&format[i..i + offset]);
        i += offset;
        if bytes.get(i + 1) == Some(&b'%') {
            literal.push('%');
            i += 2;
            continue;
        }
        let (op, consumed) = parse_command(format, i)?;
        if !literal.is_empty() {
            segments.push(Segment::Literal(std::mem::take(&mut literal).into()));
        }
        segments.push(Segment::Op(op));
        i += consumed;
    }
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal.into()));
    }
    Ok(segments)
}

/// Parses `%NAME(arg):N%` starting at `start` (a `%`); returns the operator and the
/// number of bytes consumed.
fn parse_command(format: &str, start: usize) -> Result<(Op, usize), FormatError> {
    let bytes = format.as_bytes();
    let invalid = || {
        FormatError(format!(
            "couldn't find a valid command at position {start} in {format:?} (a literal % is written %%)"
        ))
    };
    let mut i = start + 1;
    while i < bytes.len()
        && (bytes[i].is_ascii_uppercase() || bytes[i].is_ascii_digit() || bytes[i] == b'_')
    {
        i += 1;
    }
    if i == start + 1 {
        return Err(invalid());
    }
    let name = &format[start + 1..i];
    let mut arg = None;
    if bytes.get(i) == Some(&b'(') {
        let close = format[i..].find(')').ok_or_else(invalid)? + i;
        arg = Some(&format[i + 1..close]);
        i = close + 1;
    }
    let mut max_len = None;
    if bytes.get(i) == Some(&b':') {
        let digits_start = i + 1;
        let mut j = digits_start;
        while j < bytes.len() && bytes[j].is_ascii_digit() {
            j += 1;
        }
        if j == digits_start {
            return Err(invalid());
        }
        let n: usize = format[digits_start..j].parse().map_err(|_| invalid())?;
        max_len = Some(n);
        i = j;
    }
    if bytes.get(i) != Some(&b'%') {
        return Err(invalid());
    }
    let token = &format[start..=i];
    let kind = operator(name, arg, token)?;
    Ok((Op { kind, max_len }, i + 1 - start))
}

fn operator(name: &str, arg: Option<&str>, token: &str) -> Result<OpKind, FormatError> {
    let no_arg = |kind: OpKind| -> Result<OpKind, FormatError> {
        match arg {
            None => Ok(kind),
            Some(_) => Err(FormatError(format!("{name} takes no parameter: {token}"))),
        }
    };
    let required = || -> Result<&str, FormatError> {
        match arg {
            Some(a) if !a.is_empty() => Ok(a),
            _ => Err(FormatError(format!("{name} needs a parameter: {token}"))),
        }
    };
    use AddressPart::{Full, Port, WithoutPort};
    match name {
        "START_TIME" => Ok(OpKind::StartTime(TimeFormat::parse(arg.unwrap_or(""))?)),
        "REQ" => Ok(OpKind::RequestHeader(parse_selector(
            required()?,
            token,
            true,
        )?)),
        "RESP" => Ok(OpKind::ResponseHeader(parse_selector(
            required()?,
            token,
            false,
        )?)),
        "TRAILER" => Ok(OpKind::ResponseTrailer(parse_selector(
            required()?,
            token,
            false,
        )?)),
        "ENVIRONMENT" => {
            let var = required()?;
            Ok(OpKind::Environment(std::env::var(var).ok().map(Into::into)))
        }
        "RESPONSE_CODE" => no_arg(OpKind::ResponseCode),
        "RESPONSE_FLAGS" => no_arg(OpKind::ResponseFlags),
        "RESPONSE_CODE_DETAILS" => no_arg(OpKind::ResponseCodeDetails),
        "BYTES_RECEIVED" => no_arg(OpKind::BytesReceived),
        "BYTES_SENT" => no_arg(OpKind::BytesSent),
        "DURATION" => no_arg(OpKind::Duration),
        "REQUEST_DURATION" => no_arg(OpKind::RequestDuration),
        "RESPONSE_DURATION" => no_arg(OpKind::ResponseDuration),
        "RESPONSE_TX_DURATION" => no_arg(OpKind::ResponseTxDuration),
        "UPSTREAM_HOST" => no_arg(OpKind::UpstreamHost),
        "UPSTREAM_CLUSTER" => no_arg(OpKind::UpstreamCluster),
        "UPSTREAM_REQUEST_ATTEMPT_COUNT" => no_arg(OpKind::UpstreamAttemptCount),
        "UPSTREAM_REMOTE_ADDRESS" => no_arg(OpKind::UpstreamAddress(Full)),
        "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => no_arg(OpKind::UpstreamAddress(WithoutPort)),
        "UPSTREAM_REMOTE_PORT" => no_arg(OpKind::UpstreamAddress(Port)),
        "DOWNSTREAM_REMOTE_ADDRESS" => no_arg(OpKind::DownstreamRemote(Full)),
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => no_arg(OpKind::DownstreamRemote(WithoutPort)),
        "DOWNSTREAM_REMOTE_PORT" => no_arg(OpKind::DownstreamRemote(Port)),
        "DOWNSTREAM_LOCAL_ADDRESS" => no_arg(OpKind::DownstreamLocal(Full)),
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => no_arg(OpKind::DownstreamLocal(WithoutPort)),
        "DOWNSTREAM_LOCAL_PORT" => no_arg(OpKind::DownstreamLocal(Port)),
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => no_arg(OpKind::DownstreamDirectRemote(Full)),
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
            no_arg(OpKind::DownstreamDirectRemote(WithoutPort))
        }
        "DOWNSTREAM_DIRECT_REMOTE_PORT" => no_arg(OpKind::DownstreamDirectRemote(Port)),
        "PROTOCOL" => no_arg(OpKind::Protocol),
        "ROUTE_NAME" => no_arg(OpKind::RouteName),
        "LOCAL_REPLY_BODY" => no_arg(OpKind::LocalReplyBody),
        "METADATA" => {
            let mut parts = required()?.split(':');
            match parts.next() {
                Some("ROUTE") => {}
                _ => {
                    return Err(FormatError(format!(
                        "keel reads only route metadata, METADATA(ROUTE:filter:key...): {token}"
                    )))
                }
            }
            let path: Box<[Box<str>]> = parts.map(Into::into).collect();
            if path.is_empty() || path.iter().any(|p| p.is_empty()) {
                return Err(FormatError(format!(
                    "METADATA needs a filter namespace and keys, e.g. METADATA(ROUTE:team:owner): \
                     {token}"
                )));
            }
            Ok(OpKind::RouteMetadata(path))
        }
        "HOSTNAME" => no_arg(OpKind::Hostname),
        "REQUEST_HEADERS_BYTES" => no_arg(OpKind::RequestHeadersBytes),
        "RESPONSE_HEADERS_BYTES" => no_arg(OpKind::ResponseHeadersBytes),
        "RESPONSE_TRAILERS_BYTES" => no_arg(OpKind::ResponseTrailersBytes),
        _ => Err(FormatError(format!("unknown operator {name} in {token}"))),
    }
}

fn parse_selector(arg: &str, token: &str, is_request: bool) -> Result<HeaderSelector, FormatError> {
    let mut names = arg.split('?');
    let main = names.next().unwrap_or("");
    let alternative = names.next();
    if names.next().is_some() {
        return Err(FormatError(format!(
            "more than one alternative header in {token}"
        )));
    }
    Ok(HeaderSelector {
        main: parse_header_ref(main, token, is_request)?,
        alternative: alternative
            .map(|name| parse_header_ref(name, token, is_request))
            .transpose()?,
    })
}

fn parse_header_ref(name: &str, token: &str, is_request: bool) -> Result<HeaderRef, FormatError> {
    let lower = name.to_ascii_lowercase();
    if name.is_empty() || name.contains(['\n', '\r', '\0']) {
        return Err(FormatError(format!(
            "invalid header name {name:?} in {token}"
        )));
    }
    if lower.starts_with(':') {
        return Ok(match (lower.as_str(), is_request) {
            (":method", true) => HeaderRef::Method,
            (":path", true) => HeaderRef::Path,
            (":authority", true) => HeaderRef::Authority,
            (":scheme", true) => HeaderRef::Scheme,
            _ => HeaderRef::Never,
        });
    }
    if is_request && lower == "host" {
        return Ok(HeaderRef::Host);
    }
    HeaderName::from_bytes(lower.as_bytes())
        .map(HeaderRef::Named)
        .map_err(|_| FormatError(format!("invalid header name {name:?} in {token}")))
}

// ---------------------------------------------------------------------------------
// Writing helpers
// ---------------------------------------------------------------------------------

fn write_number(out: &mut String, value: u64) -> Rendered {
    push_u64(out, value);
    Rendered::Number
}

/// Appends `value` in decimal (faster than `write!`).
fn push_u64(out: &mut String, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

/// Appends the last `width` decimal digits of `value`, zero-padded.
fn push_padded(out: &mut String, value: u64, width: u32) {
    let mut divisor = 10u64.pow(width - 1);
    while divisor > 0 {
        out.push(char::from(b'0' + ((value / divisor) % 10) as u8));
        divisor /= 10;
    }
}

fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u64(out, u64::from(*octet));
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn write_millis(out: &mut String, duration: Duration) -> Rendered {
    write_number(out, duration.as_millis() as u64)
}

fn write_opt_str(out: &mut String, value: Option<&str>) -> Rendered {
    match value {
        Some(value) if !value.is_empty() => {
            out.push_str(value);
            Rendered::Text
        }
        _ => Rendered::Missing,
    }
}

fn write_address(out: &mut String, addr: SocketAddr, part: AddressPart) -> Rendered {
    match part {
        AddressPart::Full => {
            match addr {
                SocketAddr::V4(v4) => push_ip(out, std::net::IpAddr::V4(*v4.ip())),
                SocketAddr::V6(v6) => {
                    out.push('[');
                    push_ip(out, std::net::IpAddr::V6(*v6.ip()));
                    out.push(']');
                }
            }
            out.push(':');
            push_u64(out, u64::from(addr.port()));
            Rendered::Text
        }
        AddressPart::WithoutPort => {
            push_ip(out, addr.ip());
            Rendered::Text
        }
        AddressPart::Port => write_number(out, u64::from(addr.port())),
    }
}

fn push_header_value(out: &mut String, value: &http::HeaderValue) {
    match value.to_str() {
        Ok(text) => out.push_str(text),
        Err(_) => out.push_str(&String::from_utf8_lossy(value.as_bytes())),
    }
}

fn header_bytes(map: &HeaderMap) -> usize {
    map.iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum()
}

fn truncate_at_char_boundary(out: &mut String, mut len: usize) {
    if len >= out.len() {
        return;
    }
    while !out.is_char_boundary(len) {
        len -= 1;
    }
    out.truncate(len);
}

/// The machine's host name, read once.
fn hostname() -> Option<&'static str> {
    static HOSTNAME: OnceLock<Option<String>> = OnceLock::new();
    HOSTNAME
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .or_else(|| std::env::var("HOSTNAME").ok())
        })
        .as_deref()
}

/// Appends `text` as a JSON string.
fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    push_json_escaped(out, text);
    out.push('"');
}

fn push_json_escaped(out: &mut String, text: &str) {
    let mut last = 0;
    for (i, b) in text.bytes().enumerate() {
        let escape: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&text[last..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        last = i + 1;
    }
    out.push_str(&text[last..]);
}

/// Turns the raw text written at `out[start..]` into a quoted, escaped JSON string.
fn quote_json_in_place(out: &mut String, start: usize) {
    let needs_escape = out.as_bytes()[start..]
        .iter()
        .any(|&b| b == b'"' || b == b'\\' || b < 0x20);
    if needs_escape {
        let raw = out.split_off(start);
        push_json_string(out, &raw);
    } else {
        out.insert(start, '"');
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn info() -> StreamInfo {
        let mut info = StreamInfo::new(
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 43210),
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 8080),
            "HTTP/1.1",
        );
        // 2024-01-02T03:04:05.678Z
        info.start_time = UNIX_EPOCH + Duration::from_millis(1_704_164_645_678);
        info
    }

    fn render(format: &str, info: &StreamInfo) -> String {
        let f = Formatter::new(format).unwrap_or_else(|e| panic!("{format}: {e}"));
        let mut out = String::new();
        f.format_into(info, &mut out);
        out
    }

    #[test]
    fn literals_and_escapes() {
        let info = info();
        assert_eq!(render("plain text", &info), "plain text");
        assert_eq!(render("100%% sure", &info), "100% sure");
        assert_eq!(render("", &info), "");
        let f = Formatter::new("a%%b").unwrap();
        assert_eq!(f.literal(), Some("a%b"));
        assert!(Formatter::new("%PROTOCOL%").unwrap().literal().is_none());
    }

    #[test]
    fn errors_name_the_problem() {
        let e = Formatter::new("x %NOPE% y").unwrap_err();
        assert!(e.0.contains("NOPE"), "{e}");
        let e = Formatter::new("50% off").unwrap_err();
        assert!(e.0.contains("position 2"), "{e}");
        assert!(Formatter::new("%PROTOCOL").is_err());
        assert!(Formatter::new("%REQ%").is_err());
        assert!(Formatter::new("%REQ()%").is_err());
        assert!(Formatter::new("%REQ(a?b?c)%").is_err());
        assert!(Formatter::new("%PROTOCOL(x)%").is_err());
        assert!(Formatter::new("%REQ(x):%").is_err());
        assert!(Formatter::new("%%%").is_err());
    }

    #[test]
    fn start_time_default_and_custom() {
        let info = info();
        assert_eq!(render("%START_TIME%", &info), "2024-01-02T03:04:05.678Z");
        assert_eq!(
            render("%START_TIME(%Y/%m/%d %H:%M:%S)%", &info),
            "2024/01/02 03:04:05"
        );
        assert_eq!(render("%START_TIME(%s)%", &info), "1704164645");
        assert_eq!(render("%START_TIME(%s.%3f)%", &info), "1704164645.678");
        assert_eq!(render("%START_TIME(%s.%1f)%", &info), "1704164645.6");
        assert_eq!(render("%START_TIME(%s.%6f)%", &info), "1704164645.678000");
        assert_eq!(render("%START_TIME(%E3S)%", &info), "05.678");
        assert_eq!(render("%START_TIME(%f)%", &info), "678000000");
        assert!(Formatter::new("%START_TIME(%Q)%").is_err());
    }

    #[test]
    fn number_writers() {
        let mut out = String::new();
        for v in [0u64, 7, 10, 99, 1234, u64::MAX] {
            out.clear();
            push_u64(&mut out, v);
            assert_eq!(out, v.to_string());
        }
        out.clear();
        push_padded(&mut out, 7, 3);
        push_padded(&mut out, 2024, 4);
        assert_eq!(out, "0072024");
        out.clear();
        write_address(
            &mut out,
            "[2001:db8::1%0]:443".parse().unwrap(),
            AddressPart::Full,
        );
        assert_eq!(out, "[2001:db8::1]:443");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        let mut out = String::new();
        write_default_time(UNIX_EPOCH + Duration::from_secs(951_782_400), &mut out);
        assert_eq!(out, "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn headers_with_alternatives_and_truncation() {
        let mut info = info();
        info.request_headers
            .insert("user-agent", "curl/8.5.0".parse().unwrap());
        info.request_headers
            .insert("x-envoy-original-path", "/orig".parse().unwrap());
        info.response_headers
            .insert("content-type", "text/plain".parse().unwrap());
        info.response_trailers
            .insert("grpc-status", "0".parse().unwrap());
        assert_eq!(render("%REQ(USER-AGENT)%", &info), "curl/8.5.0");
        assert_eq!(render("%REQ(user-agent):4%", &info), "curl");
        assert_eq!(render("%REQ(X-MISSING)%", &info), "-");
        assert_eq!(render("%REQ(X-MISSING?USER-AGENT)%", &info), "curl/8.5.0");
        assert_eq!(render("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", &info), "/orig");
        assert_eq!(render("%RESP(CONTENT-TYPE)%", &info), "text/plain");
        assert_eq!(render("%TRAILER(GRPC-STATUS)%", &info), "0");
        assert_eq!(render("%RESP(:METHOD)%", &info), "-");
        // Header values: missing renders empty.
        let f = Formatter::new_header_value("[%REQ(X-MISSING)%]").unwrap();
        assert_eq!(f.render(&FormatContext::new(&info)), "[]");
        // Truncation respects UTF-8.
        info.request_headers.insert(
            "x-utf8",
            http::HeaderValue::from_bytes("héllo".as_bytes()).unwrap(),
        );
        assert_eq!(render("%REQ(X-UTF8):2%", &info), "h");
    }

    #[test]
    fn pseudo_headers_from_the_request_line() {
        let mut info = info();
        info.request_headers
            .insert("host", "example.com".parse().unwrap());
        let f =
            Formatter::new("%REQ(:METHOD)% %REQ(:PATH)% %REQ(:AUTHORITY)% %REQ(:SCHEME)%").unwrap();
        assert_eq!(f.render(&FormatContext::new(&info)), "- - example.com -");
        let method = Method::POST;
        let uri: Uri = "/a/b?c=d".parse().unwrap();
        let ctx = FormatContext::new(&info)
            .with_request_line(&method, &uri)
            .with_scheme("https");
        assert_eq!(f.render(&ctx), "POST /a/b?c=d example.com https");
        let uri: Uri = "http://other.org:81/x".parse().unwrap();
        let ctx = FormatContext::new(&info).with_request_line(&method, &uri);
        assert_eq!(f.render(&ctx), "POST /x other.org:81 http");
    }

    #[test]
    fn stream_info_operators() {
        let mut info = info();
        info.response_code = 503;
        info.response_flags = vec!["UF", "URX"];
        info.response_code_details = Some("upstream_reset_before_response_started".into());
        info.bytes_received = 12;
        info.bytes_sent = 345;
        info.duration = Some(Duration::from_micros(12_999));
        info.request_duration = Some(Duration::from_millis(1));
        info.response_duration = Some(Duration::from_millis(10));
        info.upstream_host = Some("192.168.1.5:9000".parse().unwrap());
        info.upstream_cluster = Some("backend".into());
        info.route_name = Some("r1".into());
        assert_eq!(
            render(
                "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %REQUEST_DURATION% %RESPONSE_DURATION% %RESPONSE_TX_DURATION%",
                &info
            ),
            "503 UF,URX upstream_reset_before_response_started 12 345 12 1 10 2"
        );
        assert_eq!(
            render(
                "%UPSTREAM_HOST% %UPSTREAM_CLUSTER% %UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %UPSTREAM_REMOTE_PORT% %ROUTE_NAME% %PROTOCOL%",
                &info
            ),
            "192.168.1.5:9000 backend 192.168.1.5 9000 r1 HTTP/1.1"
        );
        assert_eq!(
            render(
                "%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_REMOTE_PORT% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_LOCAL_PORT% %DOWNSTREAM_DIRECT_REMOTE_ADDRESS%",
                &info
            ),
            "10.0.0.1:43210 10.0.0.1 43210 10.0.0.2:8080 10.0.0.2 8080 10.0.0.1:43210"
        );
        info.downstream_remote = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 1);
        assert_eq!(
            render(
                "%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                &info
            ),
            "[::1]:1 ::1"
        );
    }

    #[test]
    fn missing_stream_values() {
        let info = info();
        assert_eq!(
            render(
                "%RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_HOST% %UPSTREAM_CLUSTER% %ROUTE_NAME% %REQUEST_DURATION% %RESPONSE_CODE_DETAILS%",
                &info
            ),
            "0 - - - - - -"
        );
        let f = Formatter::new_header_value("%UPSTREAM_HOST%|%ROUTE_NAME%").unwrap();
        assert_eq!(f.render(&FormatContext::new(&info)), "|");
    }

    #[test]
    fn hostname_and_environment() {
        let info = info();
        assert_ne!(render("%HOSTNAME%", &info), "");
        // PATH is set in any test environment; no test mutates the environment.
        let path = std::env::var("PATH").unwrap();
        assert_eq!(render("%ENVIRONMENT(PATH)%", &info), path);
        assert_eq!(
            render("%ENVIRONMENT(KEEL_FORMAT_TEST_UNSET_VAR)%", &info),
            "-"
        );
    }

    #[test]
    fn header_bytes_operators() {
        let mut info = info();
        info.request_headers.insert("ab", "cd".parse().unwrap());
        info.response_code = 200;
        assert_eq!(render("%REQUEST_HEADERS_BYTES%", &info), "4");
        assert_eq!(render("%RESPONSE_HEADERS_BYTES%", &info), "10");
        assert_eq!(render("%RESPONSE_TRAILERS_BYTES%", &info), "0");
    }

    #[test]
    fn default_access_log_format() {
        let mut info = info();
        info.response_code = 200;
        info.bytes_received = 0;
        info.bytes_sent = 11;
        info.duration = Some(Duration::from_millis(3));
        info.upstream_host = Some("127.0.0.1:9000".parse().unwrap());
        info.request_headers
            .insert("user-agent", "curl/8.5.0".parse().unwrap());
        info.request_headers
            .insert("x-request-id", "abc".parse().unwrap());
        info.request_headers
            .insert("host", "example.com".parse().unwrap());
        info.response_headers
            .insert("x-envoy-upstream-service-time", "2".parse().unwrap());
        let f = Formatter::new(crate::model::http::DEFAULT_ACCESS_LOG_FORMAT).unwrap();
        let method = Method::GET;
        let uri: Uri = "/hello?x=1".parse().unwrap();
        let ctx = FormatContext::new(&info).with_request_line(&method, &uri);
        assert_eq!(
            f.render(&ctx),
            "[2024-01-02T03:04:05.678Z] \"GET /hello?x=1 HTTP/1.1\" 200 - 0 11 3 2 \"-\" \"curl/8.5.0\" \"abc\" \"example.com\" \"127.0.0.1:9000\"\n"
        );
    }

    #[test]
    fn json_values_are_typed() {
        let mut info = info();
        info.response_code = 404;
        info.bytes_sent = 9;
        info.duration = Some(Duration::from_millis(7));
        info.request_headers
            .insert("user-agent", "say \"hi\"\\".parse().unwrap());
        let f = JsonFormatter::new(&[
            ("code".into(), "%RESPONSE_CODE%".into()),
            ("bytes".into(), "%BYTES_SENT%".into()),
            ("duration".into(), "%DURATION%".into()),
            ("ua".into(), "%REQ(USER-AGENT)%".into()),
            ("upstream".into(), "%UPSTREAM_HOST%".into()),
            ("flags".into(), "%RESPONSE_FLAGS%".into()),
            ("mixed".into(), "%RESPONSE_CODE%/%UPSTREAM_HOST%".into()),
            ("const".into(), "keel".into()),
            ("port".into(), "%DOWNSTREAM_LOCAL_PORT%".into()),
            ("start".into(), "%START_TIME%".into()),
            ("weird \"key\"".into(), "%PROTOCOL%".into()),
        ])
        .unwrap();
        let mut out = String::new();
        f.format_into(&info, &mut out);
        assert_eq!(
            out,
            "{\"code\":404,\"bytes\":9,\"duration\":7,\"ua\":\"say \\\"hi\\\"\\\\\",\"upstream\":null,\"flags\":\"-\",\"mixed\":\"404/-\",\"const\":\"keel\",\"port\":8080,\"start\":\"2024-01-02T03:04:05.678Z\",\"weird \\\"key\\\"\":\"HTTP/1.1\"}\n"
        );
        let parsed: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(parsed["code"], 404);
        assert_eq!(parsed["ua"], "say \"hi\"\\");
        assert!(parsed["upstream"].is_null());
        let e = JsonFormatter::new(&[("k".into(), "%BAD%".into())]).unwrap_err();
        assert!(e.0.contains("\"k\"") && e.0.contains("BAD"), "{e}");
    }

    #[test]
    fn route_metadata_direct_remote_and_local_reply_body() {
        let mut info = info();
        let metadata: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"team": {"owner": "mesh", "size": 3}}"#).unwrap();
        info.route_metadata = Some(std::sync::Arc::new(metadata));
        assert_eq!(render("%METADATA(ROUTE:team:owner)%", &info), "mesh");
        assert_eq!(render("%METADATA(ROUTE:team:size)%", &info), "3");
        assert_eq!(render("%METADATA(ROUTE:team:nope)%", &info), "-");
        assert_eq!(
            render("%METADATA(ROUTE:team)%", &info),
            r#"{"owner":"mesh","size":3}"#
        );
        let json = JsonFormatter::new(&[
            ("o".into(), "%METADATA(ROUTE:team:owner)%".into()),
            ("t".into(), "%METADATA(ROUTE:team)%".into()),
        ])
        .unwrap();
        let mut out = String::new();
        json.format_into(&info, &mut out);
        assert_eq!(
            out,
            "{\"o\":\"mesh\",\"t\":{\"owner\":\"mesh\",\"size\":3}}\n"
        );
        assert!(Formatter::new("%METADATA(CLUSTER:a:b)%").is_err());
        assert!(Formatter::new("%METADATA(ROUTE)%").is_err());

        info.downstream_remote = "203.0.113.1:0".parse().unwrap();
        assert_ne!(
            render("%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%", &info),
            render("%DOWNSTREAM_REMOTE_ADDRESS%", &info),
            "the direct peer is not the trusted client address"
        );

        let f = Formatter::new("[%LOCAL_REPLY_BODY%]").unwrap();
        let mut ctx = FormatContext::new(&info);
        assert_eq!(f.render(&ctx), "[]", "empty, never -");
        ctx.local_reply_body = Some("x");
        assert_eq!(f.render(&ctx), "[x]");
    }
}
