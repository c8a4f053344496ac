//! How a listener picks the filter chain of a connection: `filter_chain_match`, and the
//! listener filters that find what it matches on before the chain runs.

use std::net::IpAddr;
use std::time::Duration;

/// A CIDR range (`envoy.config.core.v3.CidrRange`), normalized: the bits after the
/// prefix are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CidrRange {
    /// The network address.
    pub address: IpAddr,
    /// `prefix_len` (0..=32 for IPv4, 0..=128 for IPv6).
    pub prefix_len: u8,
}

impl CidrRange {
    /// The range of `address`/`prefix_len`, host bits cleared.
    pub fn new(address: IpAddr, prefix_len: u8) -> CidrRange {
        let address = match address {
            IpAddr::V4(a) => {
                let bits = u32::from(a) & mask32(prefix_len.min(32));
                IpAddr::V4(bits.into())
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a) & mask128(prefix_len.min(128));
                IpAddr::V6(bits.into())
            }
        };
        CidrRange {
            address,
            prefix_len,
        }
    }

    /// Whether `ip` is in the range. An IPv4-mapped IPv6 address matches IPv4 ranges.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix_len) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix_len) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask32(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

fn mask128(prefix_len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix_len))
        .unwrap_or(0)
}

/// `filter_chain_match`: what a connection must show for its chain to be picked. Every
/// criterion left empty matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FilterChainMatch {
    /// `destination_port`.
    pub destination_port: Option<u16>,
    /// `prefix_ranges`: of the destination address.
    pub prefix_ranges: Vec<CidrRange>,
    /// `server_names` (lower-cased): exact names or `*.suffix` wildcards.
    pub server_names: Vec<String>,
    /// `transport_protocol`: "tls" or "raw_buffer" as the listener filters found it.
    pub transport_protocol: Option<String>,
    /// `application_protocols`: ALPN (TLS) or "http/1.1" / "h2c" (http_inspector).
    pub application_protocols: Vec<String>,
    /// `direct_source_prefix_ranges`.
    pub direct_source_prefix_ranges: Vec<CidrRange>,
    /// `source_type`.
    pub source_type: SourceType,
    /// `source_prefix_ranges`.
    pub source_prefix_ranges: Vec<CidrRange>,
    /// `source_ports`.
    pub source_ports: Vec<u16>,
}

/// `FilterChainMatch.ConnectionSourceType`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SourceType {
    /// `ANY`.
    #[default]
    Any,
    /// `SAME_IP_OR_LOOPBACK`: the source is a loopback address or the destination's.
    SameIpOrLoopback,
    /// `EXTERNAL`: any other source.
    External,
}

/// The listener filters keel runs before picking a chain (`listener_filters`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerFilters {
    /// `envoy.filters.listener.tls_inspector`: reads the TLS ClientHello (SNI, ALPN)
    /// without consuming it; sets the transport protocol to "tls".
    pub tls_inspector: bool,
    /// `envoy.filters.listener.http_inspector`: tells plaintext HTTP/1.x from h2c
    /// and sets the application protocol.
    pub http_inspector: bool,
    /// `listener_filters_timeout` (Envoy's default 15 s; `None` when `0s` disables it).
    pub timeout: Option<Duration>,
    /// `continue_on_listener_filters_timeout`: on timeout, pick a chain with what was
    /// found so far instead of closing the connection.
    pub continue_on_timeout: bool,
}

impl ListenerFilters {
    /// Whether any filter has to look at the first bytes.
    pub fn inspects(&self) -> bool {
        self.tls_inspector || self.http_inspector
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_ranges_contain_their_addresses() {
        let net = CidrRange::new("10.1.2.3".parse().unwrap(), 16);
        assert_eq!(net.address, "10.1.0.0".parse::<IpAddr>().unwrap());
        assert!(net.contains("10.1.200.9".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(
            net.contains("::ffff:10.1.0.1".parse().unwrap()),
            "v4-mapped"
        );
        let all = CidrRange::new("0.0.0.0".parse().unwrap(), 0);
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let v6 = CidrRange::new("fd00::1".parse().unwrap(), 64);
        assert!(v6.contains("fd00::abcd".parse().unwrap()));
        assert!(!v6.contains("fd01::1".parse().unwrap()));
        assert!(!v6.contains("10.1.0.1".parse().unwrap()));
        let host = CidrRange::new("127.0.0.1".parse().unwrap(), 32);
        assert!(host.contains("127.0.0.1".parse().unwrap()));
        assert!(!host.contains("127.0.0.2".parse().unwrap()));
    }
}
