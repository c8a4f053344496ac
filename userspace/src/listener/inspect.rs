//! Listener filters: look at a connection's first bytes, without consuming them, to
//! learn what `filter_chain_match` needs.
//!
//! - `tls_inspector`: a TLS ClientHello gives the transport protocol "tls", the server
//!   name (SNI, RFC 6066 §3) and the ALPN protocols (RFC 7301).
//! - `http_inspector`: plaintext HTTP gives "h2c" (the HTTP/2 connection preface),
//!   "http/1.1" or "http/1.0" (the request line's version).
//!
//! Both peek (`MSG_PEEK`) until they can decide, the client closes, or the listener's
//! `listener_filters_timeout` passes. The ClientHello is read with a small parser of
//! our own: it follows the record and handshake lengths with bounds checks and reads
//! two extensions; a TLS library would parse far more and want to own the socket.

use std::time::Duration;

use tokio::net::TcpStream;

use super::chains::ConnectionFacts;
use crate::model::listener::ListenerFilters;

/// Most bytes peeked: a ClientHello with post-quantum key shares is 2–3 KB; Envoy's
/// inspector reads up to 64 KiB.
const MAX_PEEK: usize = 16 * 1024 + 5;
/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Why inspection gave up.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InspectError {
    /// `listener_filters_timeout` passed before the filters could decide.
    Timeout,
    /// The socket failed.
    Io(std::io::ErrorKind),
}

/// Runs the listener's filters on a new connection and fills in what they found.
pub(crate) async fn inspect(
    stream: &TcpStream,
    filters: &ListenerFilters,
    facts: &mut ConnectionFacts,
) -> Result<(), InspectError> {
    let work = peek_until_decided(stream, filters, facts);
    match filters.timeout {
        None => work.await,
        Some(limit) => match tokio::time::timeout(limit, work).await {
            Ok(result) => result,
            Err(_) => Err(InspectError::Timeout),
        },
    }
}

async fn peek_until_decided(
    stream: &TcpStream,
    filters: &ListenerFilters,
    facts: &mut ConnectionFacts,
) -> Result<(), InspectError> {
    let mut buf = vec![0u8; 1024];
    loop {
        stream
            .readable()
            .await
            .map_err(|e| InspectError::Io(e.kind()))?;
        let n = match stream.peek(&mut buf).await {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(InspectError::Io(e.kind())),
        };
        let closed = n == 0;
        let seen = &buf[..n];
        let verdict = decide(seen, filters, facts);
        if verdict == Verdict::Decided || closed {
            return Ok(());
        }
        if n == buf.len() {
            if buf.len() >= MAX_PEEK {
                return Ok(());
            }
            buf.resize((buf.len() * 4).min(MAX_PEEK), 0);
        } else {
            // The peeked bytes stay readable: wait a moment for more to arrive rather
            // than spin on the same ones.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Decided,
    NeedMore,
}

/// Looks at the bytes seen so far; fills `facts` once they are enough.
fn decide(seen: &[u8], filters: &ListenerFilters, facts: &mut ConnectionFacts) -> Verdict {
    if filters.tls_inspector && seen.first() == Some(&0x16) {
        return match parse_client_hello(seen) {
            Hello::Incomplete => Verdict::NeedMore,
            Hello::NotTls => Verdict::Decided,
            Hello::Tls { server_name, alpn } => {
                facts.transport_protocol = "tls";
                facts.server_name = server_name.map(|s| s.to_ascii_lowercase());
                facts.application_protocols = alpn;
                Verdict::Decided
            }
        };
    }
    if filters.http_inspector && !seen.is_empty() {
        return match http_version(seen) {
            Some(Some(protocol)) => {
                facts.application_protocols = vec![protocol.to_owned()];
                Verdict::Decided
            }
            Some(None) => Verdict::Decided,
            None => Verdict::NeedMore,
        };
    }
    Verdict::Decided
}

/// `None`: need more bytes; `Some(None)`: not HTTP; `Some(Some(p))`: the protocol.
fn http_version(seen: &[u8]) -> Option<Option<&'static str>> {
    let n = seen.len().min(H2_PREFACE.len());
    if seen[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Some("h2c"));
    }
    let Some(end) = seen.windows(2).position(|w| w == b"\r\n") else {
        // Envoy's inspector gives up on request lines longer than its buffer.
        return (seen.len() >= 8192).then_some(None);
    };
    let line = &seen[..end];
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(_target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Some(None);
    };
    if method.is_empty() || !method.iter().all(u8::is_ascii_uppercase) {
        return Some(None);
    }
    Some(match version {
        b"HTTP/1.1" => Some("http/1.1"),
        b"HTTP/1.0" => Some("http/1.0"),
        _ => None,
    })
}

#[derive(Debug, PartialEq, Eq)]
enum Hello {
    Incomplete,
    NotTls,
    Tls {
        server_name: Option<String>,
        alpn: Vec<String>,
    },
}

/// A bounds-checked reader over a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| b[0] as usize)
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    }

    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (b[0] as usize) << 16 | (b[1] as usize) << 8 | b[2] as usize)
    }

    /// A vector with a length prefix of `len_bytes` bytes.
    fn vector(&mut self, len_bytes: usize) -> Option<Reader<'a>> {
        let len = match len_bytes {
            1 => self.u8()?,
            2 => self.u16()?,
            _ => self.u24()?,
        };
        self.take(len).map(Reader)
    }
}

/// Reads a ClientHello that may span several handshake records.
fn parse_client_hello(seen: &[u8]) -> Hello {
    // Reassemble the handshake bytes from the records seen so far.
    let mut records = Reader(seen);
    let mut handshake = Vec::new();
    while let Some(header) = records.take(5) {
        if header[0] != 0x16 || header[1] != 0x03 {
            return Hello::NotTls;
        }
        let len = u16::from_be_bytes([header[3], header[4]]) as usize;
        if len == 0 || len > 16384 + 2048 {
            return Hello::NotTls;
        }
        match records.take(len) {
            Some(fragment) => handshake.extend_from_slice(fragment),
            None => {
                handshake.extend_from_slice(records.0);
                break;
            }
        }
        if handshake.len() >= 4 {
            let body_len = Reader(&handshake[1..4]).u24().unwrap_or(0);
            if handshake.len() >= 4 + body_len {
                break;
            }
        }
    }
    if handshake.len() < 4 {
        return Hello::Incomplete;
    }
    if handshake[0] != 1 {
        return Hello::NotTls; // not a ClientHello
    }
    let body_len = Reader(&handshake[1..4]).u24().unwrap_or(0);
    if handshake.len() < 4 + body_len {
        return if 5 + 4 + body_len > MAX_PEEK {
            Hello::NotTls
        } else {
            Hello::Incomplete
        };
    }
    client_hello_extensions(&handshake[4..4 + body_len]).unwrap_or(Hello::NotTls)
}

/// SNI and ALPN from a ClientHello body (RFC 8446 §4.1.2).
fn client_hello_extensions(body: &[u8]) -> Option<Hello> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    r.vector(1)?; // legacy_session_id
    r.vector(2)?; // cipher_suites
    r.vector(1)?; // legacy_compression_methods
    let mut server_name = None;
    let mut alpn = Vec::new();
    if r.0.is_empty() {
        return Some(Hello::Tls { server_name, alpn });
    }
    let mut extensions = r.vector(2)?;
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let mut data = extensions.vector(2)?;
        match kind {
            0 => {
                let mut names = data.vector(2)?;
                while !names.0.is_empty() {
                    let name_type = names.u8()?;
                    let name = names.vector(2)?.0;
                    if name_type == 0 {
                        server_name = Some(String::from_utf8_lossy(name).into_owned());
                    }
                }
            }
            16 => {
                let mut protocols = data.vector(2)?;
                while !protocols.0.is_empty() {
                    let protocol = protocols.vector(1)?.0;
                    alpn.push(String::from_utf8_lossy(protocol).into_owned());
                }
            }
            _ => {}
        }
    }
    Some(Hello::Tls { server_name, alpn })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A ClientHello record with the given SNI and ALPN protocols (and a few other
    /// extensions, as real clients send).
    pub(crate) fn client_hello(sni: Option<&str>, alpn: &[&str]) -> Vec<u8> {
        fn vector(len_bytes: usize, data: &[u8]) -> Vec<u8> {
            let mut v = (data.len() as u32).to_be_bytes()[4 - len_bytes..].to_vec();
            v.extend_from_slice(data);
            v
        }
        let mut extensions = Vec::new();
        // supported_versions (43): TLS 1.3.
        extensions.extend_from_slice(&[0, 43]);
        extensions.extend(vector(2, &vector(1, &[3, 4])));
        if let Some(sni) = sni {
            let entry = [&[0u8][..], &vector(2, sni.as_bytes())].concat();
            extensions.extend_from_slice(&[0, 0]);
            extensions.extend(vector(2, &vector(2, &entry)));
        }
        if !alpn.is_empty() {
            let list: Vec<u8> = alpn.iter().flat_map(|p| vector(1, p.as_bytes())).collect();
            extensions.extend_from_slice(&[0, 16]);
            extensions.extend(vector(2, &vector(2, &list)));
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.extend(vector(1, &[1; 32]));
        body.extend(vector(2, &[0x13, 0x01, 0x13, 0x02]));
        body.extend(vector(1, &[0]));
        body.extend(vector(2, &extensions));
        let handshake = [&[1u8][..], &vector(3, &body)].concat();
        [&[0x16, 3, 1][..], &vector(2, &handshake)].concat()
    }

    #[test]
    fn client_hello_gives_sni_and_alpn() {
        let hello = client_hello(Some("WWW.Example.com"), &["h2", "http/1.1"]);
        assert_eq!(
            parse_client_hello(&hello),
            Hello::Tls {
                server_name: Some("WWW.Example.com".into()),
                alpn: vec!["h2".into(), "http/1.1".into()],
            }
        );
        let mut facts = ConnectionFacts::default();
        let filters = ListenerFilters {
            tls_inspector: true,
            ..Default::default()
        };
        assert_eq!(decide(&hello, &filters, &mut facts), Verdict::Decided);
        assert_eq!(facts.transport_protocol, "tls");
        assert_eq!(facts.server_name.as_deref(), Some("www.example.com"));
    }

    #[test]
    fn partial_hello_asks_for_more_and_garbage_is_not_tls() {
        let hello = client_hello(Some("a.example"), &[]);
        for cut in [1, 5, 9, hello.len() - 1] {
            assert_eq!(
                parse_client_hello(&hello[..cut]),
                Hello::Incomplete,
                "cut {cut}"
            );
        }
        assert_eq!(
            parse_client_hello(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00"),
            Hello::NotTls
        );
        assert_eq!(parse_client_hello(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        // A hello split over two records.
        let record = client_hello(Some("split.example"), &["h2"]);
        let handshake = &record[5..];
        let (a, b) = handshake.split_at(20);
        let mut split = vec![0x16, 3, 1, 0, a.len() as u8];
        split.extend_from_slice(a);
        split.extend_from_slice(&[0x16, 3, 1]);
        split.extend_from_slice(&(b.len() as u16).to_be_bytes());
        split.extend_from_slice(b);
        assert_eq!(
            parse_client_hello(&split),
            Hello::Tls {
                server_name: Some("split.example".into()),
                alpn: vec!["h2".into()],
            }
        );
    }

    #[test]
    fn http_inspector_tells_versions_apart() {
        assert_eq!(
            http_version(b"GET / HTTP/1.1\r\nhost: a\r\n"),
            Some(Some("http/1.1"))
        );
        assert_eq!(
            http_version(b"POST /x HTTP/1.0\r\n"),
            Some(Some("http/1.0"))
        );
        assert_eq!(http_version(H2_PREFACE), Some(Some("h2c")));
        assert_eq!(http_version(&H2_PREFACE[..10]), None);
        assert_eq!(http_version(b"GET / HTT"), None);
        assert_eq!(http_version(b"\x00\x01binary\r\n"), Some(None));
        assert_eq!(http_version(b"SSH-2.0-OpenSSH\r\n"), Some(None));
    }
}
