//! Picking a connection's filter chain by `filter_chain_match`, as Envoy does.
//!
//! The criteria are applied in Envoy's order: destination port, destination IP,
//! server name, transport protocol, application protocols, direct source IP, source
//! type, source IP, source port. At each step only the chains that match the
//! connection *most specifically* go on (an exact port beats no port, a longer prefix
//! beats a shorter one, `www.example.com` beats `*.example.com` beats `*.com` beats no
//! server name); a chain that sets a criterion the connection does not meet drops out.
//! There is no going back: when the most specific chains of one step all fail a later
//! step, the connection gets the default chain, or is closed — exactly Envoy's rule.
//!
//! A listener has a handful of chains, so the steps walk a small vector once per
//! connection; nothing is allocated unless there are more than eight chains.

use std::net::{IpAddr, SocketAddr};

use crate::model::listener::{CidrRange, FilterChainMatch, SourceType};

/// What the socket and the listener filters know about a connection.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnectionFacts {
    /// Where the client connected to.
    pub destination: Option<SocketAddr>,
    /// The client.
    pub source: Option<SocketAddr>,
    /// The TLS SNI (lower-cased), if the tls_inspector found one.
    pub server_name: Option<String>,
    /// "tls" when the tls_inspector saw a ClientHello; "raw_buffer" otherwise.
    pub transport_protocol: &'static str,
    /// ALPN protocols (TLS) or the HTTP version the http_inspector saw.
    pub application_protocols: Vec<String>,
}

/// The `filter_chain_match`es of a listener, in chain order.
#[derive(Debug, Clone)]
pub(crate) struct ChainSelector {
    matches: Vec<FilterChainMatch>,
}

/// One step's verdict on a chain: `None` drops it, a higher number is more specific.
type Score = Option<u32>;

impl ChainSelector {
    /// A selector over the chains' matches, in order.
    pub(crate) fn new(matches: Vec<FilterChainMatch>) -> ChainSelector {
        ChainSelector { matches }
    }

    /// Whether a chain matches on server names or protocols that only the listener
    /// filters can tell.
    pub(crate) fn needs_inspection(&self) -> bool {
        self.matches.iter().any(|m| {
            !m.server_names.is_empty()
                || m.transport_protocol.is_some()
                || !m.application_protocols.is_empty()
        })
    }

    /// The index of the chain for a connection, or `None` when no chain matches.
    pub(crate) fn select(&self, facts: &ConnectionFacts) -> Option<usize> {
        let mut candidates: smallvec::SmallVec<[usize; 8]> = (0..self.matches.len()).collect();
        let destination_ip = facts.destination.map(|d| d.ip());
        let source_ip = facts.source.map(|s| s.ip());
        let steps: [&dyn Fn(&FilterChainMatch) -> Score; 9] = [
            &|m| match (m.destination_port, facts.destination) {
                (None, _) => Some(0),
                (Some(port), Some(d)) if d.port() == port => Some(1),
                _ => None,
            },
            &|m| prefix_score(&m.prefix_ranges, destination_ip),
            &|m| server_name_score(&m.server_names, facts.server_name.as_deref()),
            &|m| match &m.transport_protocol {
                None => Some(0),
                Some(p) if p == facts.transport_protocol => Some(1),
                Some(_) => None,
            },
            &|m| {
                if m.application_protocols.is_empty() {
                    Some(0)
                } else if m
                    .application_protocols
                    .iter()
                    .any(|p| facts.application_protocols.contains(p))
                {
                    Some(1)
                } else {
                    None
                }
            },
            // No listener filter rewrites the source, so the direct source is the source.
            &|m| prefix_score(&m.direct_source_prefix_ranges, source_ip),
            &|m| source_type_score(m.source_type, source_ip, destination_ip),
            &|m| prefix_score(&m.source_prefix_ranges, source_ip),
            &|m| match facts.source {
                _ if m.source_ports.is_empty() => Some(0),
                Some(s) if m.source_ports.contains(&s.port()) => Some(1),
                _ => None,
            },
        ];
        for step in steps {
            let scores: smallvec::SmallVec<[Score; 8]> =
                candidates.iter().map(|&i| step(&self.matches[i])).collect();
            let best = scores.iter().flatten().max().copied()?;
            candidates = candidates
                .iter()
                .zip(&scores)
                .filter(|(_, score)| **score == Some(best))
                .map(|(&i, _)| i)
                .collect();
        }
        candidates.first().copied()
    }
}

/// Longest matching prefix (+1); 0 when the chain sets no range.
fn prefix_score(ranges: &[CidrRange], ip: Option<IpAddr>) -> Score {
    if ranges.is_empty() {
        return Some(0);
    }
    let ip = ip?;
    ranges
        .iter()
        .filter(|r| r.contains(ip))
        .map(|r| u32::from(r.prefix_len) + 1)
        .max()
}

/// An exact name beats every wildcard; a longer wildcard suffix beats a shorter one.
fn server_name_score(names: &[String], server_name: Option<&str>) -> Score {
    if names.is_empty() {
        return Some(0);
    }
    let server_name = server_name?;
    names
        .iter()
        .filter_map(|name| {
            if name == server_name {
                Some(u32::MAX)
            } else {
                let suffix = name.strip_prefix('*')?;
                (server_name.len() > suffix.len() && server_name.ends_with(suffix))
                    .then_some(suffix.len() as u32)
            }
        })
        .max()
}

/// `SAME_IP_OR_LOOPBACK`: a loopback source or the destination's own address.
fn source_type_score(
    kind: SourceType,
    source: Option<IpAddr>,
    destination: Option<IpAddr>,
) -> Score {
    let local = source.is_some_and(|s| s.is_loopback() || Some(s) == destination);
    match kind {
        SourceType::Any => Some(0),
        SourceType::SameIpOrLoopback if local => Some(1),
        SourceType::External if source.is_some() && !local => Some(1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(destination: &str, source: &str) -> ConnectionFacts {
        ConnectionFacts {
            destination: Some(destination.parse().unwrap()),
            source: Some(source.parse().unwrap()),
            transport_protocol: "raw_buffer",
            ..ConnectionFacts::default()
        }
    }

    fn range(cidr: &str) -> CidrRange {
        let (address, len) = cidr.split_once('/').unwrap();
        CidrRange::new(address.parse().unwrap(), len.parse().unwrap())
    }

    #[test]
    fn exact_port_beats_no_port_and_other_ports_drop_out() {
        let selector = ChainSelector::new(vec![
            FilterChainMatch::default(),
            FilterChainMatch {
                destination_port: Some(8080),
                ..Default::default()
            },
            FilterChainMatch {
                destination_port: Some(9090),
                ..Default::default()
            },
        ]);
        assert_eq!(
            selector.select(&facts("10.0.0.1:8080", "10.1.0.1:5000")),
            Some(1)
        );
        assert_eq!(
            selector.select(&facts("10.0.0.1:9090", "10.1.0.1:5000")),
            Some(2)
        );
        assert_eq!(
            selector.select(&facts("10.0.0.1:7070", "10.1.0.1:5000")),
            Some(0)
        );
    }

    #[test]
    fn longest_destination_prefix_wins_without_going_back() {
        let selector = ChainSelector::new(vec![
            FilterChainMatch {
                prefix_ranges: vec![range("10.0.0.0/8")],
                ..Default::default()
            },
            FilterChainMatch {
                prefix_ranges: vec![range("10.1.0.0/16")],
                source_ports: vec![1234],
                ..Default::default()
            },
        ]);
        assert_eq!(
            selector.select(&facts("10.2.0.1:80", "192.0.2.1:1234")),
            Some(0)
        );
        assert_eq!(
            selector.select(&facts("10.1.0.1:80", "192.0.2.1:1234")),
            Some(1)
        );
        // The /16 chain is the most specific for 10.1.0.1 but wants source port
        // 1234: Envoy does not fall back to the /8 chain.
        assert_eq!(
            selector.select(&facts("10.1.0.1:80", "192.0.2.1:999")),
            None
        );
        assert_eq!(
            selector.select(&facts("192.168.0.1:80", "192.0.2.1:1")),
            None
        );
    }

    #[test]
    fn server_names_exact_then_longest_wildcard_then_none() {
        let names = |n: &[&str]| FilterChainMatch {
            server_names: n.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let selector = ChainSelector::new(vec![
            names(&[]),
            names(&["*.com"]),
            names(&["*.example.com"]),
            names(&["www.example.com"]),
        ]);
        let with_sni = |sni: Option<&str>| ConnectionFacts {
            server_name: sni.map(str::to_owned),
            ..facts("10.0.0.1:443", "10.9.0.1:5000")
        };
        assert_eq!(selector.select(&with_sni(Some("www.example.com"))), Some(3));
        assert_eq!(selector.select(&with_sni(Some("api.example.com"))), Some(2));
        assert_eq!(selector.select(&with_sni(Some("other.com"))), Some(1));
        assert_eq!(selector.select(&with_sni(Some("example.org"))), Some(0));
        assert_eq!(selector.select(&with_sni(None)), Some(0));
        // `*.example.com` does not match `example.com` itself.
        assert_eq!(selector.select(&with_sni(Some("example.com"))), Some(1));
    }

    #[test]
    fn transport_and_application_protocols() {
        let selector = ChainSelector::new(vec![
            FilterChainMatch {
                transport_protocol: Some("tls".into()),
                ..Default::default()
            },
            FilterChainMatch {
                application_protocols: vec!["h2c".into()],
                ..Default::default()
            },
            FilterChainMatch::default(),
        ]);
        let mut tls = facts("10.0.0.1:443", "10.9.0.1:5000");
        tls.transport_protocol = "tls";
        assert_eq!(selector.select(&tls), Some(0));
        let mut h2c = facts("10.0.0.1:80", "10.9.0.1:5000");
        h2c.application_protocols = vec!["h2c".into()];
        assert_eq!(selector.select(&h2c), Some(1));
        assert_eq!(
            selector.select(&facts("10.0.0.1:80", "10.9.0.1:5000")),
            Some(2)
        );
        assert!(selector.needs_inspection());
    }

    #[test]
    fn source_type_ranges_and_ports() {
        let selector = ChainSelector::new(vec![
            FilterChainMatch {
                source_type: SourceType::SameIpOrLoopback,
                ..Default::default()
            },
            FilterChainMatch {
                source_type: SourceType::External,
                source_prefix_ranges: vec![range("192.0.2.0/24")],
                ..Default::default()
            },
            FilterChainMatch {
                source_type: SourceType::External,
                ..Default::default()
            },
        ]);
        assert_eq!(
            selector.select(&facts("127.0.0.1:80", "127.0.0.2:5000")),
            Some(0)
        );
        assert_eq!(
            selector.select(&facts("10.0.0.1:80", "10.0.0.1:5000")),
            Some(0)
        );
        assert_eq!(
            selector.select(&facts("10.0.0.1:80", "192.0.2.7:5000")),
            Some(1)
        );
        assert_eq!(
            selector.select(&facts("10.0.0.1:80", "198.51.100.1:5000")),
            Some(2)
        );
        assert!(!selector.needs_inspection());
    }
}
