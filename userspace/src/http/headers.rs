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
//! - a request is internal when, after the append, `x-forwarded-for` holds one
//!   address (with `use_remote_address`: the client sent none) and that address is in
//!   `internal_address_config.cidr_ranges` (empty by default: Envoy ≥ 1.33 trusts no
//!   address); it gets `x-envoy-internal: true` and keeps its `x-envoy-*` headers;
//! - an external request loses the `x-envoy-*` control headers a client sent
//!   (`x-envoy-retry-on`, `x-envoy-upstream-rq-timeout-ms`, ...) and the route table's
//!   `internal_only_headers`; at the edge (`use_remote_address`, external) also the
//!   downstream-service and decorator headers, and `x-envoy-external-address` is set;
//! - `skip_xff_append`: the peer is not appended (it is still the client address);
//!   `add_user_agent`: `x-envoy-downstream-service-cluster` / `-node` and `user-agent`
//!   when absent; `via`: appended to requests and (in `request`) responses;
//! - `x-request-id`: a UUIDv4 when absent, and always at the edge unless
//!   `preserve_external_request_id`;
//! - responses: hop-by-hop headers removed, `server` per
//!   `server_header_transformation`.
//!
//! A request without any of these headers is checked with one pass over its header
//! names; removals happen only for names present.

use std::net::{IpAddr, SocketAddr};

use http::header::{CONNECTION, EXPECT, SERVER, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::model::http::{HttpConnectionManager, ServerHeader};
use crate::model::listener::CidrRange;

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) const X_ENVOY_EXTERNAL_ADDRESS: HeaderName =
    HeaderName::from_static("x-envoy-external-address");
pub(crate) const X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");
const X_ENVOY_DOWNSTREAM_SERVICE_CLUSTER: HeaderName =
    HeaderName::from_static("x-envoy-downstream-service-cluster");
const X_ENVOY_DOWNSTREAM_SERVICE_NODE: HeaderName =
    HeaderName::from_static("x-envoy-downstream-service-node");
const VIA: HeaderName = HeaderName::from_static("via");
pub(crate) const X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
pub(crate) const X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

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
    /// `skip_xff_append`.
    skip_xff_append: bool,
    /// `preserve_external_request_id`.
    preserve_external_request_id: bool,
    /// `via`.
    pub(crate) via: Option<HeaderValue>,
    /// `internal_address_config.cidr_ranges`.
    internal_addresses: Vec<CidrRange>,
    /// The route table's `internal_only_headers`.
    internal_only_headers: Vec<HeaderName>,
    /// `add_user_agent`: (service cluster, service node if not empty).
    user_agent: Option<(HeaderValue, Option<HeaderValue>)>,
}

/// Presence bits of the headers the connection manager looks at.
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
    pub const EXPECT: u32 = 1 << 10;
    pub const SERVER: u32 = 1 << 11;
    /// `connection` lists the `upgrade` token.
    pub const CONNECTION_UPGRADE: u32 = 1 << 12;
    pub const HTTP2_SETTINGS: u32 = 1 << 13;
    /// `upgrade: h2c`.
    pub const UPGRADE_H2C: u32 = 1 << 14;
}

/// What one pass over a request's headers found (no hashing, no allocation).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RequestScan {
    bits: u32,
    /// `content-type: application/grpc*`.
    pub grpc: bool,
    /// `upgrade: websocket` (case-insensitive).
    upgrade_websocket: bool,
    /// FNV-1a of `x-request-id` when present.
    request_id_hash: Option<u64>,
}

impl RequestScan {
    /// One pass over `headers`.
    pub(crate) fn new(headers: &HeaderMap) -> RequestScan {
        let mut scan = RequestScan::default();
        for (name, value) in headers {
            let name = name.as_str();
            scan.bits |= match name {
                "connection" => {
                    if has_token(value, "upgrade") {
                        seen::CONNECTION | seen::CONNECTION_UPGRADE
                    } else {
                        seen::CONNECTION
                    }
                }
                "upgrade" => {
                    let value = value.as_bytes();
                    scan.upgrade_websocket = value.eq_ignore_ascii_case(b"websocket");
                    if value.eq_ignore_ascii_case(b"h2c") {
                        seen::UPGRADE | seen::UPGRADE_H2C
                    } else {
                        seen::UPGRADE
                    }
                }
                "http2-settings" => seen::HTTP2_SETTINGS,
                "content-type" => {
                    scan.grpc = is_grpc_content_type(value.as_bytes());
                    0
                }
                "keep-alive" => seen::KEEP_ALIVE,
                "proxy-connection" => seen::PROXY_CONNECTION,
                "transfer-encoding" => seen::TRANSFER_ENCODING,
                "te" => seen::TE,
                "expect" => seen::EXPECT,
                "x-forwarded-for" => seen::XFF,
                "x-forwarded-proto" => seen::XFP,
                "x-request-id" => {
                    scan.request_id_hash = Some(fnv1a(value.as_bytes()));
                    seen::REQUEST_ID
                }
                _ if name.starts_with("x-envoy-") => seen::ENVOY,
                _ => 0,
            };
        }
        scan
    }

    /// The HTTP/1 upgrade the request asks for: `Some(true)` for websocket,
    /// `Some(false)` for another protocol, `None` for no upgrade. An `h2c` upgrade is
    /// no upgrade: as Envoy does, its headers are removed and the request is served
    /// as HTTP/1.1.
    pub(crate) fn upgrade(&self) -> Option<bool> {
        let asks = seen::UPGRADE | seen::CONNECTION_UPGRADE;
        (self.bits & asks == asks && self.bits & seen::UPGRADE_H2C == 0)
            .then_some(self.upgrade_websocket)
    }
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// `application/grpc`, `application/grpc+...`, `application/grpc;...`.
pub(crate) fn is_grpc_content_type(value: &[u8]) -> bool {
    let prefix = b"application/grpc";
    value.len() >= prefix.len()
        && value[..prefix.len()].eq_ignore_ascii_case(prefix)
        && matches!(value.get(prefix.len()), None | Some(b'+') | Some(b';'))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// What request mutation learnt about the downstream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Downstream {
    /// The trusted client address (from `x-forwarded-for` or the peer), for logging.
    pub remote: Option<IpAddr>,
    /// A stable 64-bit value for the request: the hash of its `x-request-id` (so a
    /// request id always routes alike, as in Envoy), else random.
    pub random: u64,
    /// The request is internal (`internal_address_config`): its `x-envoy-*` control
    /// headers are trusted.
    pub internal: bool,
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
            skip_xff_append: config.options.skip_xff_append,
            preserve_external_request_id: config.options.preserve_external_request_id,
            via: config.options.via.clone(),
            internal_addresses: config.options.internal_addresses.clone(),
            internal_only_headers: config.route_config.options.internal_only_headers.clone(),
            user_agent: config.options.user_agent.as_ref().map(|node| {
                (
                    HeaderValue::from_str(&node.cluster)
                        .unwrap_or_else(|_| HeaderValue::from_static("")),
                    HeaderValue::from_str(&node.id)
                        .ok()
                        .filter(|id| !id.is_empty()),
                )
            }),
        }
    }

    /// Applies the connection manager's request mutations; `scan` is the pass over
    /// these headers.
    pub(crate) fn mutate_request(
        &self,
        headers: &mut HeaderMap,
        scan: &RequestScan,
        peer: SocketAddr,
        local: SocketAddr,
        scheme: &'static str,
        upgrade: bool,
    ) -> Downstream {
        let bits = scan.bits;
        if bits & seen::CONNECTION != 0 {
            remove_connection_nominated(headers, upgrade);
        }
        if bits & (seen::CONNECTION | seen::UPGRADE) != 0 && !upgrade {
            headers.remove(CONNECTION);
            headers.remove(UPGRADE);
        }
        if bits & seen::HTTP2_SETTINGS != 0 {
            headers.remove(HTTP2_SETTINGS);
        }
        if bits
            & (seen::KEEP_ALIVE
                | seen::PROXY_CONNECTION
                | seen::TRANSFER_ENCODING
                | seen::TE
                | seen::EXPECT)
            != 0
        {
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
            // hyper answers `expect: 100-continue` itself when the body is first
            // read; the upstream gets no expectation (Envoy's default,
            // `proxy_100_continue` off).
            if bits & seen::EXPECT != 0 {
                headers.remove(EXPECT);
            }
        }

        let mut remote = None;
        let xff_present = bits & seen::XFF != 0;
        // Envoy's `single_xff_address`: after this step `x-forwarded-for` holds one
        // address, the one the request is judged internal or external by.
        let single_address;
        if self.use_remote_address {
            single_address = !xff_present;
            if self.xff_num_trusted_hops > 0 && xff_present {
                remote = xff_address(headers, self.xff_num_trusted_hops - 1);
            }
            let remote_ip = peer.ip();
            remote = remote.or(Some(remote_ip));
            if !self.skip_xff_append {
                let appended = if remote_ip.is_loopback() {
                    self.node_address.unwrap_or(local.ip())
                } else {
                    remote_ip
                };
                append_xff(headers, appended, xff_present);
            }
            if self.xff_num_trusted_hops == 0 || bits & seen::XFP == 0 {
                headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
            }
        } else {
            single_address = xff_present && xff_is_single(headers);
            if xff_present {
                remote = xff_address(headers, self.xff_num_trusted_hops);
            }
            if bits & seen::XFP == 0 {
                headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
            }
        }

        // Internal: one address, in `internal_address_config` (none by default).
        let internal = single_address
            && !self.internal_addresses.is_empty()
            && remote.is_some_and(|ip| self.internal_addresses.iter().any(|r| r.contains(ip)));
        let edge = self.use_remote_address && !internal;
        if internal {
            headers.insert(X_ENVOY_INTERNAL, HeaderValue::from_static("true"));
        } else {
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
            for name in &self.internal_only_headers {
                headers.remove(name);
            }
        }
        if let Some((cluster, node)) = &self.user_agent {
            headers.insert(X_ENVOY_DOWNSTREAM_SERVICE_CLUSTER, cluster.clone());
            if headers
                .get(http::header::USER_AGENT)
                .is_none_or(|v| v.is_empty())
            {
                headers.insert(http::header::USER_AGENT, cluster.clone());
            }
            if let Some(node) = node {
                headers.insert(X_ENVOY_DOWNSTREAM_SERVICE_NODE, node.clone());
            }
        }
        if let Some(via) = &self.via {
            append_via(headers, via);
        }
        if edge {
            let address = remote.unwrap_or(peer.ip());
            if let Ok(value) = HeaderValue::from_str(&address.to_string()) {
                headers.insert(X_ENVOY_EXTERNAL_ADDRESS, value);
            }
        }
        let force_id = edge && !self.preserve_external_request_id;
        let random = if self.generate_request_id && (force_id || bits & seen::REQUEST_ID == 0) {
            let (id, random) = uuid_v4();
            headers.insert(X_REQUEST_ID, id);
            random
        } else {
            scan.request_id_hash
                .unwrap_or_else(crate::upstream::fast_random)
        };
        Downstream {
            remote,
            random,
            internal,
        }
    }

    /// Applies the connection manager's response mutations (`upgrade`: a `101` to an
    /// upgrade request, whose `connection` / `upgrade` stay).
    pub(crate) fn mutate_response(&self, headers: &mut HeaderMap, upgrade: bool) {
        let mut bits = 0;
        for name in headers.keys() {
            bits |= match name.as_str() {
                "connection" => seen::CONNECTION,
                "upgrade" => seen::UPGRADE,
                "keep-alive" => seen::KEEP_ALIVE,
                "proxy-connection" => seen::PROXY_CONNECTION,
                "transfer-encoding" => seen::TRANSFER_ENCODING,
                "server" => seen::SERVER,
                _ => 0,
            };
        }
        if !upgrade {
            if bits & seen::CONNECTION != 0 {
                headers.remove(CONNECTION);
            }
            if bits & seen::UPGRADE != 0 {
                headers.remove(UPGRADE);
            }
        }
        if bits & seen::TRANSFER_ENCODING != 0 {
            headers.remove(TRANSFER_ENCODING);
        }
        if bits & seen::KEEP_ALIVE != 0 {
            headers.remove(KEEP_ALIVE);
        }
        if bits & seen::PROXY_CONNECTION != 0 {
            headers.remove(PROXY_CONNECTION);
        }
        self.set_server(headers, bits & seen::SERVER != 0);
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

/// Removes the headers that `connection` names (RFC 9110 §7.6.1: they are hop-by-hop
/// too), as Envoy does. The connection options themselves (`close`, `keep-alive`,
/// `upgrade`) are handled by the caller; headers the request cannot lose (`host`,
/// framing, `te`, which has its own rule) stay.
fn remove_connection_nominated(headers: &mut HeaderMap, upgrade: bool) {
    let mut nominated: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(CONNECTION) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.is_empty() {
                continue;
            }
            let Ok(name) = HeaderName::from_bytes(token) else {
                continue;
            };
            let keep = matches!(
                name.as_str(),
                "close" | "keep-alive" | "host" | "content-length" | "te" | "connection"
            ) || (upgrade && name == UPGRADE)
                || name.as_str().starts_with(':');
            if !keep {
                nominated.push(name);
            }
        }
    }
    for name in nominated {
        headers.remove(name);
    }
}

/// `te`: only the `trailers` token may pass (Envoy's `sanitizeTE`).
fn sanitize_te(headers: &mut HeaderMap) {
    let trailers = headers.get_all(TE).iter().any(|v| {
        v.to_str()
            .map(|s| {
                s.split(',').any(|t| {
                    t.split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .eq_ignore_ascii_case("trailers")
                })
            })
            .unwrap_or(false)
    });
    if trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    } else {
        headers.remove(TE);
    }
}

/// Appends `via` to the `via` header (Envoy's `Utility::appendVia`: one header, the
/// values joined with ", ").
pub(crate) fn append_via(headers: &mut HeaderMap, via: &HeaderValue) {
    let mut existing = headers.get_all(VIA).iter().peekable();
    if existing.peek().is_none() {
        headers.insert(VIA, via.clone());
        return;
    }
    let mut joined: Vec<u8> = Vec::new();
    for value in existing {
        if !joined.is_empty() {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    joined.extend_from_slice(b", ");
    joined.extend_from_slice(via.as_bytes());
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(VIA, value);
    }
}

/// Whether `x-forwarded-for` holds exactly one address.
fn xff_is_single(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(&X_FORWARDED_FOR).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => !value.as_bytes().contains(&b','),
        _ => false,
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

/// A header value for a number of milliseconds: values below 1000 come from a
/// table made once (cloning one is a pointer copy), larger ones are formatted.
pub(crate) fn millis_value(ms: u64) -> HeaderValue {
    static SMALL: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    let small = SMALL.get_or_init(|| {
        (0..1000u64)
            .map(|n| HeaderValue::from_static(Box::leak(n.to_string().into_boxed_str())))
            .collect()
    });
    match small.get(ms as usize) {
        Some(value) => value.clone(),
        None => HeaderValue::from(ms),
    }
}

/// A header value for a configured number of milliseconds (a route timeout):
/// each distinct value is made once per process and then cloned for free.
pub(crate) fn configured_millis_value(ms: u64) -> HeaderValue {
    static VALUES: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<u64, &'static str>>,
    > = std::sync::OnceLock::new();
    let mut values = VALUES
        .get_or_init(Default::default)
        .lock()
        .expect("interned values lock");
    let text = values
        .entry(ms)
        .or_insert_with(|| Box::leak(ms.to_string().into_boxed_str()));
    HeaderValue::from_static(text)
}

/// A random UUID version 4 in canonical form, with a 64-bit value drawn from the
/// same randomness (the request's stable random value).
pub(crate) fn uuid_v4() -> (HeaderValue, u64) {
    let (a, b) = crate::upstream::fast_random_pair();
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_le_bytes());
    bytes[8..].copy_from_slice(&b.to_le_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; 36];
    // Canonical groups: 8-4-4-4-12 hex digits.
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    for (byte, &at) in bytes.iter().zip(AT.iter()) {
        out[at] = HEX[(byte >> 4) as usize];
        out[at + 1] = HEX[(byte & 0xf) as usize];
    }
    let value = HeaderValue::from_bytes(&out).expect("hex and dashes are a valid header value");
    (value, a ^ b.rotate_left(32))
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
            skip_xff_append: false,
            preserve_external_request_id: false,
            via: None,
            internal_addresses: Vec::new(),
            internal_only_headers: Vec::new(),
            user_agent: None,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
            .collect()
    }

    fn mutate(
        policy: &HeaderPolicy,
        headers: &mut HeaderMap,
        peer: SocketAddr,
        local: SocketAddr,
        scheme: &'static str,
        upgrade: bool,
    ) -> Downstream {
        let scan = RequestScan::new(headers);
        policy.mutate_request(headers, &scan, peer, local, scheme, upgrade)
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
        let d = mutate(
            &policy(true, 0),
            &mut h,
            PEER.parse().unwrap(),
            LOCAL.parse().unwrap(),
            "http",
            false,
        );
        assert_eq!(h["x-forwarded-for"], "1.2.3.4,10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http", "untrusted hop: overwritten");
        assert_eq!(h["x-envoy-external-address"], "10.1.2.3");
        assert_ne!(h["x-request-id"], "mine");
        assert_eq!(h["x-request-id"].len(), 36);
        assert!(h.get("x-envoy-retry-on").is_none());
        assert!(h.get("connection").is_none());
        assert_eq!(h["te"], "trailers");
        let mut h = headers(&[
            ("connection", "keep-alive, X-Drop-Me"),
            ("connection", "close"),
            ("x-drop-me", "1"),
            ("x-keep", "1"),
        ]);
        mutate(
            &policy(false, 0),
            &mut h,
            PEER.parse().unwrap(),
            LOCAL.parse().unwrap(),
            "http",
            false,
        );
        assert!(h.get("x-drop-me").is_none(), "named in connection: dropped");
        assert_eq!(h["x-keep"], "1");
        assert_eq!(d.remote, Some("10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn trusted_hops_pick_the_client_and_keep_proto() {
        let mut h = headers(&[
            ("x-forwarded-for", "1.2.3.4,5.6.7.8"),
            ("x-forwarded-proto", "https"),
        ]);
        let d = mutate(
            &policy(true, 1),
            &mut h,
            PEER.parse().unwrap(),
            LOCAL.parse().unwrap(),
            "http",
            false,
        );
        assert_eq!(d.remote, Some("5.6.7.8".parse().unwrap()));
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-for"], "1.2.3.4,5.6.7.8,10.1.2.3");
    }

    #[test]
    fn loopback_peer_is_recorded_as_the_node() {
        let mut h = HeaderMap::new();
        policy(true, 0).mutate_request(
            &mut h,
            &RequestScan::default(),
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:80".parse().unwrap(),
            "http",
            false,
        );
        assert_eq!(h["x-forwarded-for"], "192.0.2.2");
    }

    #[test]
    fn without_remote_address_ids_are_kept_and_xff_untouched() {
        let mut h = headers(&[
            ("x-request-id", "mine"),
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
        ]);
        mutate(
            &policy(false, 0),
            &mut h,
            PEER.parse().unwrap(),
            LOCAL.parse().unwrap(),
            "http",
            true,
        );
        assert_eq!(h["x-request-id"], "mine");
        assert!(h.get("x-forwarded-for").is_none());
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["upgrade"], "websocket", "kept when upgrading");
        let mut h = HeaderMap::new();
        mutate(
            &policy(false, 0),
            &mut h,
            PEER.parse().unwrap(),
            LOCAL.parse().unwrap(),
            "http",
            false,
        );
        assert_eq!(h["x-request-id"].len(), 36, "generated when absent");
    }

    #[test]
    fn responses_lose_hop_by_hop_and_get_server() {
        let mut h = headers(&[
            ("connection", "close"),
            ("keep-alive", "5"),
            ("server", "nginx"),
        ]);
        policy(true, 0).mutate_response(&mut h, false);
        assert!(h.get("connection").is_none() && h.get("keep-alive").is_none());
        assert_eq!(h["server"], "envoy");
    }

    #[test]
    fn scan_finds_upgrades_grpc_and_request_ids() {
        let h = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
            ("content-type", "application/grpc+proto"),
            ("x-request-id", "abc"),
        ]);
        let scan = RequestScan::new(&h);
        assert_eq!(scan.upgrade(), Some(true));
        assert!(scan.grpc);
        let mut h2 = h.clone();
        let d = policy(false, 0).mutate_request(
            &mut h2,
            &scan,
            PEER.parse().unwrap(),
            LOCAL.parse().unwrap(),
            "http",
            false,
        );
        assert_eq!(
            d.random,
            fnv1a(b"abc"),
            "the request id is the stable random"
        );
        let h = headers(&[("upgrade", "h2c")]);
        assert_eq!(
            RequestScan::new(&h).upgrade(),
            None,
            "no connection: upgrade"
        );
        let h = headers(&[("upgrade", "h2c"), ("connection", "upgrade")]);
        assert_eq!(
            RequestScan::new(&h).upgrade(),
            None,
            "h2c is served as HTTP/1.1"
        );
        let mut h = headers(&[
            ("upgrade", "h2c"),
            ("connection", "Upgrade, HTTP2-Settings"),
            ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
        ]);
        mutate(
            &policy(false, 0),
            &mut h,
            PEER.parse().unwrap(),
            LOCAL.parse().unwrap(),
            "http",
            false,
        );
        assert!(
            h.get("upgrade").is_none()
                && h.get("connection").is_none()
                && h.get("http2-settings").is_none()
        );
        let h = headers(&[("upgrade", "foo"), ("connection", "upgrade")]);
        assert_eq!(RequestScan::new(&h).upgrade(), Some(false));
    }

    #[test]
    fn options_skip_xff_via_user_agent_and_preserved_ids() {
        let mut p = policy(true, 0);
        p.skip_xff_append = true;
        p.preserve_external_request_id = true;
        p.via = Some(HeaderValue::from_static("1.1 keel"));
        p.user_agent = Some((
            HeaderValue::from_static("mesh-a"),
            Some(HeaderValue::from_static("node-1")),
        ));
        let mut h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-request-id", "mine"),
            ("via", "1.0 first"),
            ("x-envoy-downstream-service-cluster", "spoofed"),
        ]);
        let d = mutate(
            &p,
            &mut h,
            PEER.parse().unwrap(),
            LOCAL.parse().unwrap(),
            "http",
            false,
        );
        assert_eq!(h["x-forwarded-for"], "1.2.3.4", "skip_xff_append");
        assert_eq!(d.remote, Some("10.1.2.3".parse().unwrap()));
        assert_eq!(h["x-envoy-external-address"], "10.1.2.3");
        assert_eq!(h["x-request-id"], "mine", "preserve_external_request_id");
        assert_eq!(h["via"], "1.0 first, 1.1 keel");
        assert_eq!(h["x-envoy-downstream-service-cluster"], "mesh-a");
        assert_eq!(h["x-envoy-downstream-service-node"], "node-1");
        assert_eq!(h["user-agent"], "mesh-a", "set when absent");
    }

    #[test]
    fn internal_addresses_make_requests_internal() {
        let mut p = policy(true, 0);
        p.internal_addresses = vec![CidrRange::new("10.0.0.0".parse().unwrap(), 8)];
        p.internal_only_headers = vec![HeaderName::from_static("x-secret")];
        let mut h = headers(&[
            ("x-envoy-retry-on", "5xx"),
            ("x-secret", "1"),
            ("x-request-id", "mine"),
        ]);
        mutate(
            &p,
            &mut h,
            PEER.parse().unwrap(),
            LOCAL.parse().unwrap(),
            "http",
            false,
        );
        assert_eq!(h["x-envoy-internal"], "true");
        assert_eq!(
            h["x-envoy-retry-on"], "5xx",
            "trusted from an internal peer"
        );
        assert_eq!(h["x-secret"], "1");
        assert_eq!(h["x-request-id"], "mine", "not an edge request");
        assert!(h.get("x-envoy-external-address").is_none());

        // A client XFF makes two addresses: external.
        let mut h = headers(&[("x-forwarded-for", "10.9.9.9"), ("x-secret", "1")]);
        mutate(
            &p,
            &mut h,
            PEER.parse().unwrap(),
            LOCAL.parse().unwrap(),
            "http",
            false,
        );
        assert!(h.get("x-envoy-internal").is_none() && h.get("x-secret").is_none());

        // Without use_remote_address, a single internal XFF address is internal.
        let mut p = policy(false, 0);
        p.internal_addresses = vec![CidrRange::new("10.0.0.0".parse().unwrap(), 8)];
        let mut h = headers(&[("x-forwarded-for", "10.9.9.9"), ("x-envoy-internal", "x")]);
        mutate(
            &p,
            &mut h,
            "192.0.2.9:1".parse().unwrap(),
            LOCAL.parse().unwrap(),
            "http",
            false,
        );
        assert_eq!(h["x-envoy-internal"], "true");
        let mut h = headers(&[
            ("x-forwarded-for", "10.9.9.9, 10.9.9.8"),
            ("x-envoy-internal", "x"),
        ]);
        mutate(
            &p,
            &mut h,
            "192.0.2.9:1".parse().unwrap(),
            LOCAL.parse().unwrap(),
            "http",
            false,
        );
        assert!(
            h.get("x-envoy-internal").is_none(),
            "two addresses: external"
        );
    }

    #[test]
    fn uuid_has_version_and_variant() {
        let (id, _) = uuid_v4();
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert!(
            s.bytes()
                .enumerate()
                .all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) {
                    c == b'-'
                } else {
                    c.is_ascii_hexdigit()
                }),
            "{s}"
        );
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "{s}");
    }

    #[test]
    fn dot_segments_and_slashes() {
        assert_eq!(
            normalize_path("/a/./b/../c?x=/../"),
            Some("/a/c?x=/../".into())
        );
        assert_eq!(normalize_path("/../../a"), Some("/a".into()));
        assert_eq!(normalize_path("/a/b/.."), Some("/a/".into()));
        assert_eq!(normalize_path("/a/b"), None);
        assert_eq!(merge_slashes("//a///b?c//d"), Some("/a/b?c//d".into()));
        assert_eq!(merge_slashes("/a/b"), None);
    }
}
