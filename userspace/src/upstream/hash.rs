//! The request hash of a route's `hash_policy`, which RING_HASH and MAGLEV clusters
//! pick by: the same key goes to the same host while the hosts stay the same.
//!
//! Hashes are Envoy's: xxHash64 (seed 0) of the header value (several values of one
//! header sorted and chained, seed = previous hash), of the cookie value, or of the
//! source IP as text. Several policies combine as Envoy does: the running hash is
//! rotated left by one bit and XORed with the next one, and a `terminal` policy that
//! produced a hash ends the walk. A cookie policy with a `ttl` whose cookie is absent
//! generates one, like Envoy: the value is the 16-hex-digit xxHash64 of the downstream
//! remote and local addresses (so requests on one connection share it), the hash is
//! that of the value, and the response carries
//! `Set-Cookie: name="value"; Max-Age=ttl; Path=path; HttpOnly`.

use std::net::{IpAddr, SocketAddr};

use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};
use xxhash_rust::xxh64::xxh64;

use crate::model::http::{HashPolicy, HashSource};

/// A request's hash, and the cookie to set on the response when a cookie policy
/// generated the key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestHash {
    /// The hash; `None` when no policy applied.
    pub value: Option<u64>,
    /// A `set-cookie` value for the response (a generated cookie).
    pub set_cookie: Option<HeaderValue>,
}

/// Walks `policies` in order over a request's headers and its downstream connection
/// (remote and local addresses), generating a cookie where a policy asks for one.
pub fn request_hash_for_connection(
    policies: &[HashPolicy],
    headers: &HeaderMap,
    remote: SocketAddr,
    local: SocketAddr,
) -> RequestHash {
    walk(policies, headers, Some(remote.ip()), Some((remote, local)))
}

fn walk(
    policies: &[HashPolicy],
    headers: &HeaderMap,
    source: Option<IpAddr>,
    connection: Option<(SocketAddr, SocketAddr)>,
) -> RequestHash {
    let mut out = RequestHash::default();
    for policy in policies {
        let new = match &policy.source {
            HashSource::Header(name) => header_hash(headers, name),
            HashSource::SourceIp => source.map(ip_hash),
            HashSource::Cookie { name, ttl, path } => match cookie_value(headers, name) {
                Some(value) => Some(xxh64(value, 0)),
                None => match (ttl, connection) {
                    (Some(ttl), Some((remote, local))) => {
                        let value = generated_cookie_value(remote, local);
                        out.set_cookie = Some(set_cookie(name, &value, *ttl, path.as_deref()));
                        Some(xxh64(value.as_bytes(), 0))
                    }
                    _ => None,
                },
            },
        };
        if let Some(new) = new {
            out.value = Some(match out.value {
                // Rotating keeps two equal policies from cancelling out.
                Some(old) => old.rotate_left(1) ^ new,
                None => new,
            });
        }
        if policy.terminal && out.value.is_some() {
            break;
        }
    }
    out
}

/// xxHash64 of an IP address as text (Envoy's `addressAsString`), formatted on the
/// stack.
fn ip_hash(ip: IpAddr) -> u64 {
    use std::io::Write;
    // The longest IPv6 text is 45 bytes.
    let mut buf = [0u8; 64];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "{ip}");
    let len = cursor.position() as usize;
    xxh64(&buf[..len], 0)
}

/// xxHash64 of a header's values: sorted (so their order does not matter) and chained.
fn header_hash(headers: &HeaderMap, name: &http::HeaderName) -> Option<u64> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    match values.next() {
        None => Some(xxh64(first.as_bytes(), 0)),
        Some(second) => {
            // Rare: the allocation is only for repeated headers.
            let mut all: Vec<&[u8]> = vec![first.as_bytes(), second.as_bytes()];
            all.extend(values.map(|v| v.as_bytes()));
            all.sort_unstable();
            Some(all.iter().fold(0, |seed, v| xxh64(v, seed)))
        }
    }
}

/// The value of cookie `name` in the request's `cookie` headers (quotes removed), as
/// Envoy's `parseCookieValue`; `None` when absent or empty.
fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    for header in headers.get_all(COOKIE) {
        for pair in header.as_bytes().split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if &pair[..eq] != name.as_bytes() {
                continue;
            }
            let mut value = &pair[eq + 1..];
            if value.len() >= 2 && value[0] == b'"' && value[value.len() - 1] == b'"' {
                value = &value[1..value.len() - 1];
            }
            if !value.is_empty() {
                return Some(value);
            }
        }
    }
    None
}

/// The value Envoy generates for a missing hash cookie: 16 hex digits of the xxHash64
/// of the downstream remote and local addresses.
fn generated_cookie_value(remote: SocketAddr, local: SocketAddr) -> String {
    format!("{:016x}", xxh64(format!("{remote}{local}").as_bytes(), 0))
}

/// Envoy's `makeSetCookieValue` with `httponly`.
fn set_cookie(
    name: &str,
    value: &str,
    ttl: std::time::Duration,
    path: Option<&str>,
) -> HeaderValue {
    let mut cookie = format!("{name}=\"{value}\"");
    if ttl.as_secs() != 0 {
        cookie.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    if let Some(path) = path {
        cookie.push_str("; Path=");
        cookie.push_str(path);
    }
    cookie.push_str("; HttpOnly");
    HeaderValue::from_str(&cookie).expect("name, path and hex digits are header-safe")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The walk without a connection: a cookie policy with a `ttl` generates no cookie.
    fn request_hash(
        policies: &[HashPolicy],
        headers: &HeaderMap,
        source: Option<IpAddr>,
    ) -> RequestHash {
        walk(policies, headers, source, None)
    }

    fn header(name: &'static str) -> HashPolicy {
        HashPolicy {
            source: HashSource::Header(http::HeaderName::from_static(name)),
            terminal: false,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn header_hash_is_envoys_xxhash64() {
        let h = request_hash(&[header("x-user")], &headers(&[("x-user", "alice")]), None);
        assert_eq!(h.value, Some(xxh64(b"alice", 0)));
        // Known xxHash64 vector: the empty input with seed 0.
        assert_eq!(xxh64(b"", 0), 0xef46_db37_51d8_e999);
        assert_eq!(
            request_hash(&[header("x-user")], &HeaderMap::new(), None).value,
            None,
            "no header, no hash"
        );
    }

    #[test]
    fn repeated_header_values_hash_the_same_in_any_order() {
        let a = request_hash(
            &[header("x-k")],
            &headers(&[("x-k", "b"), ("x-k", "a")]),
            None,
        );
        let b = request_hash(
            &[header("x-k")],
            &headers(&[("x-k", "a"), ("x-k", "b")]),
            None,
        );
        assert_eq!(a.value, b.value);
        assert_eq!(a.value, Some(xxh64(b"b", xxh64(b"a", 0))));
    }

    #[test]
    fn policies_combine_by_rotate_and_xor_and_terminal_stops() {
        let map = headers(&[("x-a", "1"), ("x-b", "2")]);
        let (a, b) = (xxh64(b"1", 0), xxh64(b"2", 0));
        let both = request_hash(&[header("x-a"), header("x-b")], &map, None);
        assert_eq!(both.value, Some(a.rotate_left(1) ^ b));
        let mut terminal = header("x-a");
        terminal.terminal = true;
        let first = request_hash(&[terminal.clone(), header("x-b")], &map, None);
        assert_eq!(first.value, Some(a));
        // A terminal policy that hashed nothing does not stop the walk.
        let only_b = request_hash(&[terminal, header("x-b")], &headers(&[("x-b", "2")]), None);
        assert_eq!(only_b.value, Some(b));
    }

    #[test]
    fn source_ip_hashes_the_address_text() {
        let policy = HashPolicy {
            source: HashSource::SourceIp,
            terminal: false,
        };
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let h = request_hash(std::slice::from_ref(&policy), &HeaderMap::new(), Some(ip));
        assert_eq!(h.value, Some(xxh64(b"10.1.2.3", 0)));
        let v6: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        let h = request_hash(&[policy], &HeaderMap::new(), Some(v6));
        assert_eq!(h.value, Some(xxh64(b"2001:db8::ffff:1", 0)));
    }

    #[test]
    fn cookie_is_read_or_generated_with_its_set_cookie() {
        let policy = HashPolicy {
            source: HashSource::Cookie {
                name: "sticky".into(),
                ttl: Some(Duration::from_secs(3600)),
                path: Some("/app".into()),
            },
            terminal: false,
        };
        let remote: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let present = headers(&[("cookie", "a=b; sticky=\"v1\"; c=d")]);
        let h = request_hash_for_connection(std::slice::from_ref(&policy), &present, remote, local);
        assert_eq!(h.value, Some(xxh64(b"v1", 0)));
        assert_eq!(h.set_cookie, None);

        let h = request_hash_for_connection(
            std::slice::from_ref(&policy),
            &HeaderMap::new(),
            remote,
            local,
        );
        let value = format!("{:016x}", xxh64(b"127.0.0.1:40000127.0.0.1:8080", 0));
        assert_eq!(h.value, Some(xxh64(value.as_bytes(), 0)));
        assert_eq!(
            h.set_cookie.unwrap(),
            format!("sticky=\"{value}\"; Max-Age=3600; Path=/app; HttpOnly").as_str()
        );
        // The client sends the cookie back: same hash.
        let back = headers(&[("cookie", &format!("sticky=\"{value}\""))]);
        let again = request_hash_for_connection(&[policy], &back, remote, local);
        assert_eq!(again.value, Some(xxh64(value.as_bytes(), 0)));
    }

    #[test]
    fn cookie_without_ttl_is_not_generated() {
        let policy = HashPolicy {
            source: HashSource::Cookie {
                name: "s".into(),
                ttl: None,
                path: None,
            },
            terminal: false,
        };
        let remote: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let h = request_hash_for_connection(&[policy], &HeaderMap::new(), remote, remote);
        assert_eq!(h, RequestHash::default());
    }
}
