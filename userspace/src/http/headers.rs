//! What the connection manager itself does to request and response headers, as
//! Envoy's `ConnectionManagerUtility` does it:
//!
//! - hop-by-hop headers are removed (`connection`, `upgrade` unless upgrading,
//!   `keep-alive`, `proxy-connection`, `transfer-encoding`; `te` keeps only
//!   `trailers`), HTTP/1 framing being hyper's business;
//! - `x-forwarded-for`: with `use_remote_address` the downstream address is appended
//!   (for a loopback peer, the node's own address, as Envoy does); the trusted client
//!   address is read `xff_num_trusted_hops` from the right;
//! - `x-forwarded-proto`: set to the connection's scheme when absent, and overwritten
//!   when the previous hop is not trusted (`use_remote_address` with 0 trusted hops);
//! - requests are "external" (Envoy ≥ 1.33's default `internal_address_config`
//!   trusts no address), so `x-envoy-*` control headers a client sent
//!   (`x-envoy-retry-on`, `x-envoy-upstream-rq-timeout-ms`, ...) are removed, and at
//!   the edge (`use_remote_address`) `x-envoy-external-address` is set;
//! - `x-request-id`: a UUIDv4 when absent, and always at the edge
//!   (`preserve_external_request_id` is false by default);
//! - responses: hop-by-hop headers removed, `server` per
//!   `server_header_transformation`.
//!
//! A request without any of these headers is checked with one pass over its header
//! names; removals happen only for names present.

use std::net::{IpAddr, SocketAddr};

use http::header::{
    CONNECTION, SERVER, TE, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::model::http::{HttpConnectionManager, ServerHeader};

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) const X_ENVOY_EXTERNAL_ADDRESS: HeaderName =
    HeaderName::from_static("x-envoy-external-address");
pub(crate) const X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
pub(crate) const X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// `x-envoy-*` request headers only a trusted (internal) peer may send
/// (Envoy's `cleanInternalHeaders`).
const INTERNAL_ONLY: &[&str] = &[
    "x-envoy-internal",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-ip-tags",
    "x-envoy-original-url",
    "x-envoy-hedge-on-per-try-timeout",
];

/// Removed too at the edge (`use_remote_address`).
const EDGE_ONLY: &[&str] = &[
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
];

/// The connection manager's header settings, prepared once.
#[derive(Debug, Clone)]
pub(crate) struct HeaderPolicy {
    use_remote_address: bool,
    xff_num_trusted_hops: u32,
    generate_request_id: bool,
    server_header: ServerHeader,
    server_name: HeaderValue,
    /// What a loopback peer is recorded as in `x-forwarded-for`.
    node_address: Option<IpAddr>,
}

/// Presence bits of the headers [`HeaderPolicy::mutate_request`] looks at.
mod seen {
    pub const CONNECTION: u32 = 1;
    pub const UPGRADE: u32 = 1 << 1;
    pub const KEEP_ALIVE: u32 = 1 << 2;
    pub const PROXY_CONNECTION: u32 = 1 << 3;
    pub const TRANSFER_ENCODING: u32 = 1 << 4;
    pub const TE: u32 = 1 << 5;
    pub const ENVOY: u32 = 1 << 6;
    pub const XFF: u32 = 1 << 7;
    pub const XFP: u32 = 1 << 8;
    pub const REQUEST_ID: u32 = 1 << 9;
}

fn scan(headers: &HeaderMap) -> u32 {
    let mut bits = 0;
    for name in headers.keys() {
        let name = name.as_str();
        bits |= match name {
            "connection" => seen::CONNECTION,
            "upgrade" => seen::UPGRADE,
            "keep-alive" => seen::KEEP_ALIVE,
            "proxy-connection" => seen::PROXY_CONNECTION,
            "transfer-encoding" => seen::TRANSFER_ENCODING,
            "te" => seen::TE,
            "x-forwarded-for" => seen::XFF,
            "x-forwarded-proto" => seen::XFP,
            "x-request-id" => seen::REQUEST_ID,
            _ if name.starts_with("x-envoy-") => seen::ENVOY,
            _ => 0,
        };
    }
    bits
}

/// What request mutation learnt about the downstream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Downstream {
    /// The trusted client address (from `x-forwarded-for` or the peer), for logging.
    pub remote: Option<IpAddr>,
}

impl HeaderPolicy {
    pub(crate) fn new(config: &HttpConnectionManager) -> HeaderPolicy {
        HeaderPolicy {
            use_remote_address: config.use_remote_address,
            xff_num_trusted_hops: config.xff_num_trusted_hops,
            generate_request_id: config.generate_request_id,
            server_header: config.server_header,
            server_name: HeaderValue::from_str(&config.server_name)
                .unwrap_or_else(|_| HeaderValue::from_static("envoy")),
            node_address: node_address(),
        }
    }

    /// Applies the connection manager's request mutations.
    pub(crate) fn mutate_request(
        &self,
        headers: &mut HeaderMap,
        peer: SocketAddr,
        local: SocketAddr,
        scheme: &'static str,
        upgrade: bool,
    ) -> Downstream {
        let bits = scan(headers);
        if bits & (seen::CONNECTION | seen::UPGRADE) != 0 && !upgrade {
            headers.remove(CONNECTION);
            headers.remove(UPGRADE);
        }
        if bits & seen::KEEP_ALIVE != 0 {
            headers.remove(KEEP_ALIVE);
        }
        if bits & seen::PROXY_CONNECTION != 0 {
            headers.remove(PROXY_CONNECTION);
        }
        if bits & seen::TRANSFER_ENCODING != 0 {
            headers.remove(TRANSFER_ENCODING);
        }
        if bits & seen::TE != 0 {
            sanitize_te(headers);
        }

        let mut remote = None;
        let mut xff_present = bits & seen::XFF != 0;
        if self.use_remote_address {
            if self.xff_num_trusted_hops > 0 && xff_present {
                remote = xff_address(headers, self.xff_num_trusted_hops - 1);
            }
            let remote_ip = peer.ip();
            remote = remote.or(Some(remote_ip));
            let appended = if remote_ip.is_loopback() {
                self.node_address.unwrap_or(local.ip())
            } else {
                remote_ip
            };
            append_xff(headers, appended, xff_present);
            xff_present = true;
            if self.xff_num_trusted_hops == 0 || bits & seen::XFP == 0 {
                headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
            }
        } else {
            if xff_present {
                remote = xff_address(headers, self.xff_num_trusted_hops);
            }
            if bits & seen::XFP == 0 {
                headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
            }
        }
        let _ = xff_present;

        // No address is internal by default: every request is external.
        let edge = self.use_remote_address;
        if bits & seen::ENVOY != 0 {
            for name in INTERNAL_ONLY {
                headers.remove(*name);
            }
            if edge {
                for name in EDGE_ONLY {
                    headers.remove(*name);
                }
            }
        }
        if edge {
            let address = remote.unwrap_or(peer.ip());
            if let Ok(value) = HeaderValue::from_str(&address.to_string()) {
                headers.insert(X_ENVOY_EXTERNAL_ADDRESS, value);
            }
        }
        if self.generate_request_id && (edge || bits & seen::REQUEST_ID == 0) {
            headers.insert(X_REQUEST_ID, uuid_v4());
        }
        Downstream { remote }
    }

    /// Applies the connection manager's response mutations (`upgrade`: a `101` to an
    /// upgrade request, whose `connection` / `upgrade` stay).
    pub(crate) fn mutate_response(&self, headers: &mut HeaderMap, upgrade: bool) {
        let mut hop_by_hop = false;
        let mut has_server = false;
        for name in headers.keys() {
            match name.as_str() {
                "connection" | "upgrade" | "keep-alive" | "proxy-connection"
                | "transfer-encoding" => hop_by_hop = true,
                "server" => has_server = true,
                _ => {}
            }
        }
        if hop_by_hop {
            if !upgrade {
                headers.remove(CONNECTION);
                headers.remove(UPGRADE);
            }
            headers.remove(TRANSFER_ENCODING);
            headers.remove(KEEP_ALIVE);
            headers.remove(PROXY_CONNECTION);
        }
        self.set_server(headers, has_server);
    }

    /// Sets `server` on a response per `server_header_transformation`.
    #[inline]
    pub(crate) fn set_server(&self, headers: &mut HeaderMap, has_server: bool) {
        match self.server_header {
            ServerHeader::Overwrite => {
                headers.insert(SERVER, self.server_name.clone());
            }
            ServerHeader::AppendIfAbsent if !has_server => {
                headers.insert(SERVER, self.server_name.clone());
            }
            _ => {}
        }
    }
}

/// `te`: only the `trailers` token may pass (Envoy's `sanitizeTE`).
fn sanitize_te(headers: &mut HeaderMap) {
    let trailers = headers.get_all(TE).iter().any(|v| {
        v.to_str()
            .map(|s| {
                s.split(',')
                    .any(|t| t.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("trailers"))
            })
            .unwrap_or(false)
    });
    if trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    } else {
        headers.remove(TE);
    }
}

/// Appends `address` to `x-forwarded-for` (one header, comma-separated).
fn append_xff(headers: &mut HeaderMap, address: IpAddr, present: bool) {
    let address = address.to_string();
    let value = if present {
        let mut joined = String::new();
        for value in headers.get_all(&X_FORWARDED_FOR) {
            if let Ok(v) = value.to_str() {
                if !joined.is_empty() {
                    joined.push(',');
                }
                joined.push_str(v);
            }
        }
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(&address);
        joined
    } else {
        address
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

/// The address `skip` entries from the right of `x-forwarded-for` (Envoy's
/// `getLastAddressFromXFF`), if it is a valid IP.
fn xff_address(headers: &HeaderMap, skip: u32) -> Option<IpAddr> {
    let mut entries: Vec<&str> = Vec::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        entries.extend(value.to_str().ok()?.split(','));
    }
    let index = entries.len().checked_sub(1 + skip as usize)?;
    entries[index].trim().parse().ok()
}

/// The node's own address (Envoy's `local_info.address()`): the first non-loopback
/// IPv4 address of an interface that is up, else the first IPv6 one.
fn node_address() -> Option<IpAddr> {
    static NODE: std::sync::OnceLock<Option<IpAddr>> = std::sync::OnceLock::new();
    *NODE.get_or_init(|| {
        let addresses: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
            .ok()?
            .filter(|i| i.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP))
            .filter_map(|i| {
                let address = i.address?;
                if let Some(v4) = address.as_sockaddr_in() {
                    Some(IpAddr::V4(v4.ip()))
                } else {
                    address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                }
            })
            .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
            .collect();
        addresses
            .iter()
            .find(|ip| ip.is_ipv4())
            .or_else(|| addresses.first())
            .copied()
    })
}

/// A random UUID version 4 in canonical form.
pub(crate) fn uuid_v4() -> HeaderValue {
    let a = crate::upstream::fast_random();
    let b = crate::upstream::fast_random();
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_le_bytes());
    bytes[8..].copy_from_slice(&b.to_le_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut o = 0;
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[o] = b'-';
            o += 1;
        }
        out[o] = HEX[(byte >> 4) as usize];
        out[o + 1] = HEX[(byte & 0xf) as usize];
        o += 2;
    }
    HeaderValue::from_bytes(&out).expect("hex and dashes are a valid header value")
}

/// A stable 64-bit value for a request: the hash of its `x-request-id` when it has
/// one (so a request id always routes alike, as in Envoy), else random.
pub(crate) fn stable_random(headers: &HeaderMap) -> u64 {
    match headers.get(&X_REQUEST_ID) {
        Some(id) => {
            // FNV-1a.
            let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
            for &b in id.as_bytes() {
                hash ^= u64::from(b);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
            hash
        }
        None => crate::upstream::fast_random(),
    }
}

/// `normalize_path`: RFC 3986 §5.2.4 dot-segment removal on the path (the query is
/// left alone). `None` when the path is already normal.
pub(crate) fn normalize_path(path_and_query: &str) -> Option<String> {
    let (path, query) = match path_and_query.find('?') {
        Some(q) => path_and_query.split_at(q),
        None => (path_and_query, ""),
    };
    let has_dots = path
        .split('/')
        .any(|segment| segment == "." || segment == "..");
    if !has_dots {
        return None;
    }
    let mut output: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => trailing_slash = i == last,
            ".." => {
                output.pop();
                trailing_slash = i == last;
            }
            s => {
                output.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut normal = String::with_capacity(path_and_query.len());
    for segment in &output {
        normal.push('/');
        normal.push_str(segment);
    }
    if trailing_slash || normal.is_empty() {
        normal.push('/');
    }
    normal.push_str(query);
    Some(normal)
}

/// `merge_slashes`: runs of `/` in the path become one. `None` when there is none.
pub(crate) fn merge_slashes(path_and_query: &str) -> Option<String> {
    let path_end = path_and_query.find('?').unwrap_or(path_and_query.len());
    let (path, query) = path_and_query.split_at(path_end);
    if !path.contains("//") {
        return None;
    }
    let mut merged = String::with_capacity(path_and_query.len());
    let mut previous_slash = false;
    for c in path.chars() {
        if c == '/' && previous_slash {
            continue;
        }
        previous_slash = c == '/';
        merged.push(c);
    }
    merged.push_str(query);
    Some(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::http::ServerHeader;

    fn policy(use_remote_address: bool, hops: u32) -> HeaderPolicy {
        HeaderPolicy {
            use_remote_address,
            xff_num_trusted_hops: hops,
            generate_request_id: true,
            server_header: ServerHeader::Overwrite,
            server_name: HeaderValue::from_static("envoy"),
            node_address: Some("192.0.2.2".parse().unwrap()),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
            .collect()
    }

    const PEER: &str = "10.1.2.3:5555";
    const LOCAL: &str = "10.0.0.1:80";

    #[test]
    fn edge_appends_peer_and_regenerates_request_id() {
        let mut h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-request-id", "mine"),
            ("x-forwarded-proto", "https"),
            ("x-envoy-retry-on", "5xx"),
            ("connection", "keep-alive"),
            ("te", "trailers, deflate"),
        ]);
        let d = policy(true, 0).mutate_request(&mut h, PEER.parse().unwrap(), LOCAL.parse().unwrap(), "http", false);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4,10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http", "untrusted hop: overwritten");
        assert_eq!(h["x-envoy-external-address"], "10.1.2.3");
        assert_ne!(h["x-request-id"], "mine");
        assert_eq!(h["x-request-id"].len(), 36);
        assert!(h.get("x-envoy-retry-on").is_none());
        assert!(h.get("connection").is_none());
        assert_eq!(h["te"], "trailers");
        assert_eq!(d.remote, Some("10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn trusted_hops_pick_the_client_and_keep_proto() {
        let mut h = headers(&[("x-forwarded-for", "1.2.3.4,5.6.7.8"), ("x-forwarded-proto", "https")]);
        let d = policy(true, 1).mutate_request(&mut h, PEER.parse().unwrap(), LOCAL.parse().unwrap(), "http", false);
        assert_eq!(d.remote, Some("5.6.7.8".parse().unwrap()));
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-for"], "1.2.3.4,5.6.7.8,10.1.2.3");
    }

    #[test]
    fn loopback_peer_is_recorded_as_the_node() {
        let mut h = HeaderMap::new();
        policy(true, 0).mutate_request(&mut h, "127.0.0.1:1".parse().unwrap(), "127.0.0.1:80".parse().unwrap(), "http", false);
        assert_eq!(h["x-forwarded-for"], "192.0.2.2");
    }

    #[test]
    fn without_remote_address_ids_are_kept_and_xff_untouched() {
        let mut h = headers(&[("x-request-id", "mine"), ("upgrade", "websocket"), ("connection", "upgrade")]);
        policy(false, 0).mutate_request(&mut h, PEER.parse().unwrap(), LOCAL.parse().unwrap(), "http", true);
        assert_eq!(h["x-request-id"], "mine");
        assert!(h.get("x-forwarded-for").is_none());
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["upgrade"], "websocket", "kept when upgrading");
        let mut h = HeaderMap::new();
        policy(false, 0).mutate_request(&mut h, PEER.parse().unwrap(), LOCAL.parse().unwrap(), "http", false);
        assert_eq!(h["x-request-id"].len(), 36, "generated when absent");
    }

    #[test]
    fn responses_lose_hop_by_hop_and_get_server() {
        let mut h = headers(&[("connection", "close"), ("keep-alive", "5"), ("server", "nginx")]);
        policy(true, 0).mutate_response(&mut h, false);
        assert!(h.get("connection").is_none() && h.get("keep-alive").is_none());
        assert_eq!(h["server"], "envoy");
    }

    #[test]
    fn uuid_has_version_and_variant() {
        let id = uuid_v4();
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "{s}");
    }

    #[test]
    fn dot_segments_and_slashes() {
        assert_eq!(normalize_path("/a/./b/../c?x=/../"), Some("/a/c?x=/../".into()));
        assert_eq!(normalize_path("/../../a"), Some("/a".into()));
        assert_eq!(normalize_path("/a/b/.."), Some("/a/".into()));
        assert_eq!(normalize_path("/a/b"), None);
        assert_eq!(merge_slashes("//a///b?c//d"), Some("/a/b?c//d".into()));
        assert_eq!(merge_slashes("/a/b"), None);
    }
}
