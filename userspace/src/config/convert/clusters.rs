//! Clusters: `envoy.config.cluster.v3.Cluster` → [`model::Cluster`], with the endpoints
//! of its `load_assignment` and its upstream HTTP protocol options.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upstream_http;

use super::{decode_any, duration, socket_address, PortRule, Result};
use crate::config::{index, join, type_url_message_name, ConfigError};
use crate::model;

/// Envoy's default `connect_timeout`.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Envoy's default and largest Maglev table sizes.
const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;
const MAX_MAGLEV_TABLE_SIZE: u64 = 5_000_011;
/// The key (and message) of a cluster's HTTP protocol options.
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

pub(super) fn convert_cluster(c: &cluster::Cluster, path: &str) -> Result<model::Cluster> {
    use cluster::cluster::{ClusterDiscoveryType, DiscoveryType, LbConfig, LbPolicy};

    let discovery = match &c.cluster_discovery_type {
        None => DiscoveryType::Static as i32,
        Some(ClusterDiscoveryType::Type(t)) => *t,
        Some(ClusterDiscoveryType::ClusterType(_)) => {
            return Err(ConfigError::field(
                join(path, "cluster_type"),
                "field not supported by keel",
            ))
        }
    };
    match DiscoveryType::try_from(discovery) {
        Ok(DiscoveryType::Static) => {}
        Ok(other) => {
            return Err(ConfigError::field(
                join(path, "type"),
                format!(
                "{} clusters are not supported yet; keel supports type STATIC with endpoints in \
                     load_assignment",
                other.as_str_name()
            ),
            ))
        }
        Err(_) => {
            return Err(ConfigError::field(
                join(path, "type"),
                format!("unknown cluster type {discovery}"),
            ))
        }
    }

    let connect_timeout = match &c.connect_timeout {
        None => DEFAULT_CONNECT_TIMEOUT,
        Some(d) => {
            let timeout_path = join(path, "connect_timeout");
            let d = duration(d, &timeout_path)?;
            if d.is_zero() {
                return Err(ConfigError::field(
                    timeout_path,
                    "must be greater than 0s (Envoy's default is 5s)",
                ));
            }
            d
        }
    };

    let policy_path = join(path, "lb_policy");
    let policy = LbPolicy::try_from(c.lb_policy).map_err(|_| {
        ConfigError::field(
            &policy_path,
            format!("unknown load-balancing policy {}", c.lb_policy),
        )
    })?;
    let maglev_config = match &c.lb_config {
        Some(LbConfig::MaglevLbConfig(config)) => Some(config),
        None => None,
        Some(_) => {
            // The supported-field check rejects the other lb_config fields first.
            return Err(ConfigError::field(
                path,
                "this lb_config is not supported by keel",
            ));
        }
    };
    if maglev_config.is_some() && policy != LbPolicy::Maglev {
        return Err(ConfigError::field(
            join(path, "maglev_lb_config"),
            format!(
                "only used with lb_policy MAGLEV, but lb_policy is {}; remove maglev_lb_config or set \
                 lb_policy: MAGLEV",
                policy.as_str_name()
            ),
        ));
    }
    let lb_policy = match policy {
        LbPolicy::RoundRobin => model::LbPolicy::RoundRobin,
        LbPolicy::LeastRequest => model::LbPolicy::LeastRequest,
        LbPolicy::Random => model::LbPolicy::Random,
        LbPolicy::RingHash => model::LbPolicy::RingHash,
        LbPolicy::Maglev => model::LbPolicy::Maglev {
            table_size: maglev_table_size(maglev_config, &join(path, "maglev_lb_config.table_size"))?,
        },
        other => {
            return Err(ConfigError::field(
                policy_path,
                format!(
                    "{} is not supported by keel; use ROUND_ROBIN, LEAST_REQUEST, RANDOM, MAGLEV or RING_HASH",
                    other.as_str_name()
                ),
            ))
        }
    };

    let endpoints = match &c.load_assignment {
        Some(assignment) => load_assignment(assignment, &join(path, "load_assignment"))?,
        None => Vec::new(),
    };
    let (health_checks, outlier_detection) = super::health::convert(c, path)?;
    Ok(model::Cluster {
        name: c.name.clone(),
        connect_timeout,
        lb_policy,
        endpoints,
        upstream_protocol: upstream_protocol(c, path)?,
        circuit_breakers: super::breakers::circuit_breakers(c, path)?,
        pool: super::breakers::pool_options(c, path)?,
        health_checks,
        outlier_detection,
    })
}

/// The HTTP protocol spoken to a cluster's endpoints: from
/// `typed_extension_protocol_options` (key and @type
/// `envoy.extensions.upstreams.http.v3.HttpProtocolOptions`) or the deprecated
/// `http2_protocol_options`; HTTP/1.1 when neither is given (as in Envoy).
// Envoy still accepts the deprecated fields read here, so keel does too.
#[allow(deprecated)]
fn upstream_protocol(c: &cluster::Cluster, path: &str) -> Result<model::UpstreamProtocol> {
    use upstream_http::http_protocol_options::{
        explicit_http_config::ProtocolConfig, UpstreamProtocolOptions,
    };

    let options_path = join(path, "typed_extension_protocol_options");
    let mut keys: Vec<&String> = c.typed_extension_protocol_options.keys().collect();
    // Sorted, so that the first error is the same every time.
    keys.sort();
    let mut from_options = None;
    for key in keys {
        let entry_path = join(&options_path, key);
        let any = &c.typed_extension_protocol_options[key];
        if key != HTTP_PROTOCOL_OPTIONS {
            return Err(ConfigError::field(
                entry_path,
                format!(
                    "keel reads only the key {HTTP_PROTOCOL_OPTIONS} here (with \"@type\": \
                     type.googleapis.com/{HTTP_PROTOCOL_OPTIONS})"
                ),
            ));
        }
        if type_url_message_name(&any.type_url) != Some(HTTP_PROTOCOL_OPTIONS) {
            return Err(ConfigError::field(
                entry_path,
                format!(
                    "@type \"{}\" does not match the key; use type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}",
                    any.type_url
                ),
            ));
        }
        let options: upstream_http::HttpProtocolOptions = decode_any(any, &entry_path)?;
        from_options = Some(match &options.upstream_protocol_options {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(explicit)) => {
                let explicit_path = join(&entry_path, "explicit_http_config");
                match &explicit.protocol_config {
                    Some(ProtocolConfig::HttpProtocolOptions(_)) => model::UpstreamProtocol::Http1,
                    Some(ProtocolConfig::Http2ProtocolOptions(h2)) => {
                        no_cluster_http2_settings(
                            h2,
                            &join(&explicit_path, "http2_protocol_options"),
                        )?;
                        model::UpstreamProtocol::Http2
                    }
                    Some(ProtocolConfig::Http3ProtocolOptions(_)) => {
                        return Err(ConfigError::field(
                            join(&explicit_path, "http3_protocol_options"),
                            "HTTP/3 needs QUIC, which keel does not support; use \
                             http_protocol_options: {} or http2_protocol_options: {}",
                        ))
                    }
                    None => {
                        return Err(ConfigError::field(
                            explicit_path,
                            "missing the protocol; set http_protocol_options: {} (HTTP/1.1) or \
                             http2_protocol_options: {} (HTTP/2)",
                        ))
                    }
                }
            }
            Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(downstream)) => {
                if let Some(h2) = &downstream.http2_protocol_options {
                    no_cluster_http2_settings(
                        h2,
                        &join(
                            &join(&entry_path, "use_downstream_protocol_config"),
                            "http2_protocol_options",
                        ),
                    )?;
                }
                model::UpstreamProtocol::UseDownstream
            }
            Some(UpstreamProtocolOptions::AutoConfig(_)) => return Err(ConfigError::field(
                join(&entry_path, "auto_config"),
                "field not supported by keel (it needs ALPN over TLS); use explicit_http_config \
                     or use_downstream_protocol_config",
            )),
            None => return Err(ConfigError::field(
                entry_path,
                "missing the protocol; set explicit_http_config or use_downstream_protocol_config",
            )),
        });
    }
    let deprecated = match &c.http2_protocol_options {
        Some(h2) => {
            no_cluster_http2_settings(h2, &join(path, "http2_protocol_options"))?;
            Some(model::UpstreamProtocol::Http2)
        }
        None => None,
    };
    match (from_options, deprecated) {
        (Some(_), Some(_)) => Err(ConfigError::field(
            join(path, "http2_protocol_options"),
            format!(
                "the protocol is given twice, here and in typed_extension_protocol_options; keep \
                 {HTTP_PROTOCOL_OPTIONS} (http2_protocol_options is deprecated)"
            ),
        )),
        (Some(protocol), None) | (None, Some(protocol)) => Ok(protocol),
        (None, None) => Ok(model::UpstreamProtocol::Http1),
    }
}

/// keel has nowhere to put HTTP/2 settings for upstream connections yet: only an empty
/// `http2_protocol_options` is accepted on a cluster.
fn no_cluster_http2_settings(h2: &core::Http2ProtocolOptions, path: &str) -> Result<()> {
    // max_concurrent_streams is read by `breakers::pool_options`.
    let set = [
        (
            "initial_stream_window_size",
            h2.initial_stream_window_size.is_some(),
        ),
        (
            "initial_connection_window_size",
            h2.initial_connection_window_size.is_some(),
        ),
    ];
    match set.iter().find(|(_, set)| *set) {
        Some((field, _)) => Err(ConfigError::field(
            join(path, field),
            "HTTP/2 settings for a cluster's connections are not supported yet; keel uses its \
             defaults (write http2_protocol_options: {})",
        )),
        None => Ok(()),
    }
}

fn maglev_table_size(config: Option<&cluster::cluster::MaglevLbConfig>, path: &str) -> Result<u32> {
    let size = config
        .and_then(|c| c.table_size.as_ref())
        .map_or(DEFAULT_MAGLEV_TABLE_SIZE, |v| v.value);
    let prime = u32::try_from(size).is_ok_and(crate::cluster::maglev::is_prime);
    if size > MAX_MAGLEV_TABLE_SIZE || !prime {
        return Err(ConfigError::field(
            path,
            format!(
                "{size} is not a prime number of at most {MAX_MAGLEV_TABLE_SIZE}; Maglev needs a prime \
                 table size, such as 65537 (the default), 251 or 5000011"
            ),
        ));
    }
    Ok(u32::try_from(size).expect("at most MAX_MAGLEV_TABLE_SIZE"))
}

fn load_assignment(
    assignment: &endpoint::ClusterLoadAssignment,
    path: &str,
) -> Result<Vec<model::Endpoint>> {
    if assignment.cluster_name.is_empty() {
        return Err(ConfigError::field(
            join(path, "cluster_name"),
            "missing; Envoy requires it (usually the cluster's own name)",
        ));
    }
    let mut endpoints = Vec::new();
    let localities_path = join(path, "endpoints");
    for (i, locality) in assignment.endpoints.iter().enumerate() {
        let locality_path = index(&localities_path, i);
        // Locality weights only matter with locality-weighted balancing (not supported),
        // so Envoy ignores them too; still, 0 is invalid in Envoy.
        if let Some(weight) = &locality.load_balancing_weight {
            if weight.value == 0 {
                return Err(ConfigError::field(
                    join(&locality_path, "load_balancing_weight"),
                    "must be at least 1",
                ));
            }
        }
        let lb_endpoints_path = join(&locality_path, "lb_endpoints");
        for (j, lb_endpoint) in locality.lb_endpoints.iter().enumerate() {
            endpoints.push(convert_endpoint(
                lb_endpoint,
                &index(&lb_endpoints_path, j),
            )?);
        }
    }
    Ok(endpoints)
}

fn convert_endpoint(lb_endpoint: &endpoint::LbEndpoint, path: &str) -> Result<model::Endpoint> {
    let endpoint_path = join(path, "endpoint");
    let endpoint = match &lb_endpoint.host_identifier {
        Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(endpoint)) => endpoint,
        Some(endpoint::lb_endpoint::HostIdentifier::EndpointName(_)) => {
            return Err(ConfigError::field(
                join(path, "endpoint_name"),
                "field not supported by keel",
            ))
        }
        None => {
            return Err(ConfigError::field(
                endpoint_path,
                "missing; give endpoint.address.socket_address with address and port_value",
            ))
        }
    };
    let address_path = join(&endpoint_path, "address");
    let Some(address) = &endpoint.address else {
        return Err(ConfigError::field(
            address_path,
            "missing; an endpoint needs address.socket_address with address and port_value",
        ));
    };
    let (address, protocol) = socket_address(address, &address_path, PortRule::NonZero)?;
    if protocol != model::Protocol::Tcp {
        return Err(ConfigError::field(
            join(&address_path, "socket_address.protocol"),
            "UDP endpoints are not supported yet; keel proxies TCP",
        ));
    }
    let weight = match &lb_endpoint.load_balancing_weight {
        None => 1,
        Some(w) if w.value == 0 => {
            return Err(ConfigError::field(
                join(path, "load_balancing_weight"),
                "must be at least 1 (leave it out for the default of 1)",
            ))
        }
        Some(w) => w.value,
    };
    Ok(model::Endpoint { address, weight })
}
