//! One health check of one host: the HTTP/1.1, HTTP/2, gRPC and TCP probes.
//!
//! A probe takes the host's kept connection (if any), runs one check and hands the
//! connection back when it may be reused. HTTP/1.1 is a small client of its own over
//! the bare `TcpStream` (request head out, response head parsed with `httparse`, a
//! `content-length` body read and dropped), so an idle kept connection costs a
//! socket and nothing else — 10,000 checked hosts do not hold 10,000 hyper
//! connections with their buffers and tasks. HTTP/2 and gRPC use hyper's HTTP/2
//! client (h2c, prior knowledge).

use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::model::health::{Checker, GrpcCheck, HttpCheck, HttpCodec, TcpCheck};

/// The largest response head or TCP receive buffer a check reads.
const MAX_READ: usize = 64 * 1024;

/// How a check failed, as Envoy classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Connect failure, reset, close, or a reply that is not the protocol.
    Network,
    /// The check did not complete within `timeout`.
    Timeout,
    /// The host answered, and the answer is a failure (an unexpected status, a gRPC
    /// status other than SERVING); `retriable` when it is in `retriable_statuses`.
    Active {
        /// Counts towards `unhealthy_threshold` instead of failing at once.
        retriable: bool,
    },
}

/// A connection kept between checks (`reuse_connection`).
#[derive(Debug)]
pub enum Kept {
    /// A TCP stream (HTTP/1.1 and TCP checks).
    Stream(TcpStream),
    /// An HTTP/2 connection's request handle (its driver runs as a task).
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// What every check of a cluster needs.
#[derive(Debug)]
pub struct Probe {
    /// The checker configuration.
    pub checker: Checker,
    /// `Host` / `:authority` when the check names none: the cluster's name.
    pub default_authority: String,
    /// `reuse_connection`.
    pub reuse: bool,
    /// The HTTP/1.1 request, built once.
    http1_request: Bytes,
    /// The gRPC request message, framed, built once.
    grpc_body: Bytes,
}

impl Probe {
    /// Prepares the requests of `checker` for a cluster called `cluster`.
    pub fn new(checker: Checker, cluster: &str, reuse: bool) -> Probe {
        let http1_request = match &checker {
            Checker::Http(http) => http1_request(http, cluster, reuse),
            _ => Bytes::new(),
        };
        let grpc_body = match &checker {
            Checker::Grpc(grpc) => grpc_request(&grpc.service_name),
            _ => Bytes::new(),
        };
        Probe {
            checker,
            default_authority: cluster.to_string(),
            reuse,
            http1_request,
            grpc_body,
        }
    }

    /// Runs one check of `address` (no timeout here: the caller bounds it). Returns
    /// the outcome and the connection to keep, if any.
    pub async fn check(
        &self,
        address: SocketAddr,
        kept: Option<Kept>,
    ) -> (Result<(), Failure>, Option<Kept>) {
        match &self.checker {
            Checker::Http(http) if http.codec == HttpCodec::Http1 => {
                self.http1(http, address, kept).await
            }
            Checker::Http(http) => self.http2(http, address, kept).await,
            Checker::Grpc(grpc) => self.grpc(grpc, address, kept).await,
            Checker::Tcp(tcp) => self.tcp(tcp, address, kept).await,
        }
    }

    async fn http1(
        &self,
        http: &HttpCheck,
        address: SocketAddr,
        kept: Option<Kept>,
    ) -> (Result<(), Failure>, Option<Kept>) {
        let mut stream = match kept {
            Some(Kept::Stream(stream)) => stream,
            _ => match connect(address).await {
                Ok(stream) => stream,
                Err(failure) => return (Err(failure), None),
            },
        };
        if stream.write_all(&self.http1_request).await.is_err() {
            return (Err(Failure::Network), None);
        }
        let (status, reusable) = match read_http1_response(&mut stream, &http.method).await {
            Ok(response) => response,
            Err(failure) => return (Err(failure), None),
        };
        let kept = (self.reuse && reusable).then_some(Kept::Stream(stream));
        (status_outcome(http, status), kept)
    }

    async fn http2_sender(
        &self,
        address: SocketAddr,
        kept: Option<Kept>,
    ) -> Result<hyper::client::conn::http2::SendRequest<Full<Bytes>>, Failure> {
        if let Some(Kept::Http2(sender)) = kept {
            if !sender.is_closed() {
                return Ok(sender);
            }
        }
        let stream = connect(address).await?;
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|_| Failure::Network)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    async fn http2(
        &self,
        http: &HttpCheck,
        address: SocketAddr,
        kept: Option<Kept>,
    ) -> (Result<(), Failure>, Option<Kept>) {
        let mut sender = match self.http2_sender(address, kept).await {
            Ok(sender) => sender,
            Err(failure) => return (Err(failure), None),
        };
        let authority = http.host.as_deref().unwrap_or(&self.default_authority);
        let mut request = http::Request::builder()
            .method(http.method.clone())
            .uri(format!("http://{authority}{}", http.path))
            .header(http::header::USER_AGENT, "Envoy/HC");
        for (name, value) in &http.request_headers_to_add {
            request = request.header(name, value);
        }
        let Ok(request) = request.body(Full::new(Bytes::new())) else {
            return (Err(Failure::Network), None);
        };
        let outcome = match sender.send_request(request).await {
            Ok(response) => {
                let status = response.status().as_u16();
                // Read the body to the end so the stream closes cleanly.
                match Limited::new(response.into_body(), MAX_READ).collect().await {
                    Ok(_) => status_outcome(http, status),
                    Err(_) => Err(Failure::Network),
                }
            }
            Err(_) => Err(Failure::Network),
        };
        let kept = (self.reuse && outcome != Err(Failure::Network)).then_some(Kept::Http2(sender));
        (outcome, kept)
    }

    async fn grpc(
        &self,
        grpc: &GrpcCheck,
        address: SocketAddr,
        kept: Option<Kept>,
    ) -> (Result<(), Failure>, Option<Kept>) {
        let mut sender = match self.http2_sender(address, kept).await {
            Ok(sender) => sender,
            Err(failure) => return (Err(failure), None),
        };
        let authority = grpc.authority.as_deref().unwrap_or(&self.default_authority);
        let mut request = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("http://{authority}/grpc.health.v1.Health/Check"))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .header(http::header::USER_AGENT, "Envoy/HC");
        for (name, value) in &grpc.initial_metadata {
            request = request.header(name, value);
        }
        let Ok(request) = request.body(Full::new(self.grpc_body.clone())) else {
            return (Err(Failure::Network), None);
        };
        let outcome = match sender.send_request(request).await {
            Ok(response) => grpc_outcome(response).await,
            Err(_) => Err(Failure::Network),
        };
        let kept = (self.reuse && outcome != Err(Failure::Network)).then_some(Kept::Http2(sender));
        (outcome, kept)
    }

    async fn tcp(
        &self,
        tcp: &TcpCheck,
        address: SocketAddr,
        kept: Option<Kept>,
    ) -> (Result<(), Failure>, Option<Kept>) {
        let mut stream = match kept {
            Some(Kept::Stream(stream)) => stream,
            _ => match connect(address).await {
                Ok(stream) => stream,
                Err(failure) => return (Err(failure), None),
            },
        };
        if tcp.send.is_empty() && tcp.receive.is_empty() {
            // Connect-only: Envoy closes the connection once it is established.
            return (Ok(()), None);
        }
        if !tcp.send.is_empty() && stream.write_all(&tcp.send).await.is_err() {
            return (Err(Failure::Network), None);
        }
        let mut buffer = BytesMut::with_capacity(256);
        loop {
            if payloads_match(&buffer, &tcp.receive) {
                break;
            }
            if buffer.len() >= MAX_READ {
                return (Err(Failure::Network), None);
            }
            match stream.read_buf(&mut buffer).await {
                Ok(0) | Err(_) => return (Err(Failure::Network), None),
                Ok(_) => {}
            }
        }
        (Ok(()), self.reuse.then_some(Kept::Stream(stream)))
    }
}

async fn connect(address: SocketAddr) -> Result<TcpStream, Failure> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|_| Failure::Network)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The HTTP/1.1 request of an HTTP check, as Envoy sends it.
fn http1_request(http: &HttpCheck, cluster: &str, reuse: bool) -> Bytes {
    let host = http.host.as_deref().unwrap_or(cluster);
    let mut request = format!(
        "{} {} HTTP/1.1\r\nhost: {host}\r\nuser-agent: Envoy/HC\r\n",
        http.method, http.path
    )
    .into_bytes();
    for (name, value) in &http.request_headers_to_add {
        if http.request_headers_to_remove.contains(name) {
            continue;
        }
        request.extend_from_slice(name.as_str().as_bytes());
        request.extend_from_slice(b": ");
        request.extend_from_slice(value.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    if !reuse {
        request.extend_from_slice(b"connection: close\r\n");
    }
    if http.method == http::Method::POST || http.method == http::Method::PUT {
        request.extend_from_slice(b"content-length: 0\r\n");
    }
    request.extend_from_slice(b"\r\n");
    Bytes::from(request)
}

/// Reads one HTTP/1.1 response: its status and whether the connection may carry
/// another request (the body was delimited by content-length and fully read, and
/// nobody asked to close).
async fn read_http1_response(
    stream: &mut TcpStream,
    method: &http::Method,
) -> Result<(u16, bool), Failure> {
    let mut buffer = BytesMut::with_capacity(1024);
    loop {
        match stream.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => return Err(Failure::Network),
            Ok(_) => {}
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let head_len = match response.parse(&buffer) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buffer.len() < MAX_READ => continue,
            _ => return Err(Failure::Network),
        };
        let status = response.code.ok_or(Failure::Network)?;
        if (100..200).contains(&status) {
            // An interim response: drop it and read the final one.
            buffer.advance(head_len);
            continue;
        }
        let mut length = None;
        let mut close = response.version == Some(0);
        for header in response.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                length = std::str::from_utf8(header.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok());
            } else if header.name.eq_ignore_ascii_case("connection") {
                close |= header.value.eq_ignore_ascii_case(b"close");
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                // Not read: the connection is not reused.
                close = true;
            }
        }
        let no_body = method == http::Method::HEAD || status == 204 || status == 304;
        let length = if no_body { Some(0) } else { length };
        let Some(length) = length.filter(|&l| l <= MAX_READ) else {
            return Ok((status, false));
        };
        buffer.advance(head_len);
        while buffer.len() < length {
            match stream.read_buf(&mut buffer).await {
                Ok(0) | Err(_) => return Ok((status, false)),
                Ok(_) => {}
            }
        }
        return Ok((status, !close && buffer.len() == length));
    }
}

/// Pass, or an active failure (retriable when the status is in
/// `retriable_statuses`).
fn status_outcome(http: &HttpCheck, status: u16) -> Result<(), Failure> {
    if http.expected_statuses.iter().any(|r| r.contains(&status)) {
        Ok(())
    } else {
        Err(Failure::Active {
            retriable: http.retriable_statuses.iter().any(|r| r.contains(&status)),
        })
    }
}

/// Whether every payload appears in `buffer`, in order, not necessarily adjacent
/// (Envoy's "fuzzy" match).
fn payloads_match(buffer: &[u8], payloads: &[Vec<u8>]) -> bool {
    let mut rest = buffer;
    for payload in payloads {
        if payload.is_empty() {
            continue;
        }
        match rest
            .windows(payload.len())
            .position(|w| w == payload.as_slice())
        {
            Some(at) => rest = &rest[at + payload.len()..],
            None => return false,
        }
    }
    true
}

/// `grpc.health.v1.HealthCheckRequest { service }`, framed for gRPC.
fn grpc_request(service: &str) -> Bytes {
    let mut message = Vec::new();
    if !service.is_empty() {
        message.push(0x0a); // field 1, length-delimited
        put_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0); // not compressed
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    Bytes::from(framed)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn get_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// `HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

/// The `status` of a `grpc.health.v1.HealthCheckResponse` message; unknown fields
/// are skipped, a missing status is UNKNOWN (0).
fn grpc_serving_status(mut message: &[u8]) -> Option<u64> {
    let mut status = 0;
    while !message.is_empty() {
        let key = get_varint(&mut message)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = get_varint(&mut message)?,
            (_, 0) => {
                get_varint(&mut message)?;
            }
            (_, 1) => message = message.get(8..)?,
            (_, 2) => {
                let len = usize::try_from(get_varint(&mut message)?).ok()?;
                message = message.get(len..)?;
            }
            (_, 5) => message = message.get(4..)?,
            _ => return None,
        }
    }
    Some(status)
}

/// Reads a gRPC health response: HTTP 200, `grpc-status` 0 and SERVING pass; a
/// well-formed answer that is not SERVING is an active failure.
async fn grpc_outcome(response: http::Response<hyper::body::Incoming>) -> Result<(), Failure> {
    if response.status() != http::StatusCode::OK {
        return Err(Failure::Active { retriable: false });
    }
    let head_status = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let collected = Limited::new(response.into_body(), MAX_READ)
        .collect()
        .await
        .map_err(|_| Failure::Network)?;
    let grpc_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(head_status);
    if grpc_status.as_deref() != Some("0") {
        return Err(Failure::Active { retriable: false });
    }
    let body = collected.to_bytes();
    if body.len() < 5 || body[0] != 0 {
        return Err(Failure::Network);
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let message = body.get(5..5 + len).ok_or(Failure::Network)?;
    match grpc_serving_status(message) {
        Some(SERVING) => Ok(()),
        Some(_) => Err(Failure::Active { retriable: false }),
        None => Err(Failure::Network),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::single_range_in_vec_init)] // a list of one status range
    fn check(path: &str) -> HttpCheck {
        HttpCheck {
            host: None,
            path: path.into(),
            method: http::Method::GET,
            expected_statuses: vec![200..201],
            retriable_statuses: vec![429..430],
            request_headers_to_add: vec![(
                http::HeaderName::from_static("x-check"),
                http::HeaderValue::from_static("1"),
            )],
            request_headers_to_remove: Vec::new(),
            codec: HttpCodec::Http1,
        }
    }

    #[test]
    fn http1_request_names_the_cluster_as_host() {
        let request = http1_request(&check("/healthz"), "web", true);
        assert_eq!(
            &request[..],
            b"GET /healthz HTTP/1.1\r\nhost: web\r\nuser-agent: Envoy/HC\r\nx-check: 1\r\n\r\n"
        );
        let request = http1_request(&check("/h"), "web", false);
        assert!(request.ends_with(b"connection: close\r\n\r\n"));
    }

    #[test]
    fn statuses_pass_fail_or_retry() {
        let http = check("/");
        assert_eq!(status_outcome(&http, 200), Ok(()));
        assert_eq!(
            status_outcome(&http, 503),
            Err(Failure::Active { retriable: false })
        );
        assert_eq!(
            status_outcome(&http, 429),
            Err(Failure::Active { retriable: true })
        );
    }

    #[test]
    fn tcp_payloads_match_in_order_not_adjacent() {
        let payloads = vec![b"PO".to_vec(), b"NG".to_vec()];
        assert!(payloads_match(b"xxPOyyNG", &payloads));
        assert!(!payloads_match(b"NGPO", &payloads));
        assert!(!payloads_match(b"PO", &payloads));
        assert!(payloads_match(b"", &[]));
    }

    #[test]
    fn grpc_messages_encode_and_decode() {
        assert_eq!(&grpc_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &grpc_request("svc")[..],
            &[0, 0, 0, 0, 5, 0x0a, 3, b's', b'v', b'c']
        );
        assert_eq!(grpc_serving_status(&[0x08, 0x01]), Some(SERVING));
        assert_eq!(grpc_serving_status(&[0x08, 0x02]), Some(2));
        assert_eq!(grpc_serving_status(&[]), Some(0));
        assert_eq!(
            grpc_serving_status(&[0x12, 1, b'x', 0x08, 0x01]),
            Some(SERVING)
        );
        assert_eq!(grpc_serving_status(&[0x08]), None);
    }
}
