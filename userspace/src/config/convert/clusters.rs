//! Clusters: `envoy.config.cluster.v3.Cluster` → [`model::Cluster`]: the discovery type
//! (STATIC, STRICT_DNS, LOGICAL_DNS, ORIGINAL_DST) with its DNS or original-destination
//! settings, the localities, priorities and endpoints of its `load_assignment`, the
//! load-balancing policy with its `*_lb_config` and `common_lb_config`, and its upstream
//! HTTP protocol options.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upstream_http;

use std::net::SocketAddr;

use super::{decode_any, duration, socket_address, PortRule, Result};
use crate::config::{index, join, type_url_message_name, ConfigError};
use crate::model;

/// Envoy's default `connect_timeout`.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Envoy's default ORIGINAL_DST `cleanup_interval`.
const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(5);
/// The header an ORIGINAL_DST cluster reads with `use_http_header`.
const ORIGINAL_DST_HOST_HEADER: &str = "x-envoy-original-dst-host";
/// Envoy's largest ring (`ring_hash_lb_config.maximum_ring_size`).
const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
/// The DNS resolver extension keel reads the name servers of.
const CARES_RESOLVER: &str =
    "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig";
/// Envoy's default and largest Maglev table sizes.
const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;
const MAX_MAGLEV_TABLE_SIZE: u64 = 5_000_011;
/// The key (and message) of a cluster's HTTP protocol options.
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

pub(super) fn convert_cluster(c: &cluster::Cluster, path: &str) -> Result<model::Cluster> {
    use cluster::cluster::{ClusterDiscoveryType, DiscoveryType, LbConfig, LbPolicy};

    let discovery_type = match &c.cluster_discovery_type {
        None => DiscoveryType::Static as i32,
        Some(ClusterDiscoveryType::Type(t)) => *t,
        Some(ClusterDiscoveryType::ClusterType(_)) => {
            return Err(ConfigError::field(
                join(path, "cluster_type"),
                "field not supported by keel",
            ))
        }
    };
    let discovery_type = match DiscoveryType::try_from(discovery_type) {
        Ok(DiscoveryType::Eds) => {
            return Err(ConfigError::field(
                join(path, "type"),
                "EDS clusters come with xDS, not supported yet; keel supports STATIC, \
                 STRICT_DNS, LOGICAL_DNS and ORIGINAL_DST",
            ))
        }
        Ok(t) => t,
        Err(_) => {
            return Err(ConfigError::field(
                join(path, "type"),
                format!("unknown cluster type {discovery_type}"),
            ))
        }
    };

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
    // Each lb_config belongs to one policy (Envoy ignores a mismatch; keel says so).
    let (config_field, config_policy) = match &c.lb_config {
        None => ("", policy),
        Some(LbConfig::MaglevLbConfig(_)) => ("maglev_lb_config", LbPolicy::Maglev),
        Some(LbConfig::RingHashLbConfig(_)) => ("ring_hash_lb_config", LbPolicy::RingHash),
        Some(LbConfig::LeastRequestLbConfig(_)) => {
            ("least_request_lb_config", LbPolicy::LeastRequest)
        }
        Some(LbConfig::OriginalDstLbConfig(_)) => {
            ("original_dst_lb_config", LbPolicy::ClusterProvided)
        }
        Some(LbConfig::RoundRobinLbConfig(_)) => ("round_robin_lb_config", LbPolicy::RoundRobin),
    };
    if config_policy != policy {
        return Err(ConfigError::field(
            join(path, config_field),
            format!(
                "only used with lb_policy {}, but lb_policy is {}; remove {config_field} or set \
                 lb_policy: {}",
                config_policy.as_str_name(),
                policy.as_str_name(),
                config_policy.as_str_name(),
            ),
        ));
    }
    let lb_policy = match policy {
        LbPolicy::RoundRobin => model::LbPolicy::RoundRobin,
        LbPolicy::LeastRequest => {
            let config = match &c.lb_config {
                Some(LbConfig::LeastRequestLbConfig(config)) => Some(config),
                _ => None,
            };
            least_request(config, &join(path, "least_request_lb_config"))?
        }
        LbPolicy::Random => model::LbPolicy::Random,
        LbPolicy::RingHash => {
            let config = match &c.lb_config {
                Some(LbConfig::RingHashLbConfig(config)) => Some(config),
                _ => None,
            };
            ring_hash(config, &join(path, "ring_hash_lb_config"))?
        }
        LbPolicy::Maglev => {
            let config = match &c.lb_config {
                Some(LbConfig::MaglevLbConfig(config)) => Some(config),
                _ => None,
            };
            model::LbPolicy::Maglev {
                table_size: maglev_table_size(config, &join(path, "maglev_lb_config.table_size"))?,
            }
        }
        LbPolicy::ClusterProvided => model::LbPolicy::ClusterProvided,
        other => {
            return Err(ConfigError::field(
                policy_path,
                format!(
                    "{} is not supported by keel; use ROUND_ROBIN, LEAST_REQUEST, RANDOM, MAGLEV, \
                     RING_HASH or (with type ORIGINAL_DST) CLUSTER_PROVIDED",
                    other.as_str_name()
                ),
            ))
        }
    };
    let original_dst = discovery_type == DiscoveryType::OriginalDst;
    if original_dst != (lb_policy == model::LbPolicy::ClusterProvided) {
        return Err(ConfigError::field(
            policy_path,
            if original_dst {
                format!(
                    "{} is not valid for cluster type ORIGINAL_DST; only CLUSTER_PROVIDED is \
                     allowed there (as in Envoy)",
                    policy.as_str_name()
                )
            } else {
                format!(
                    "CLUSTER_PROVIDED is not valid for cluster type {}; it is allowed only with \
                     type ORIGINAL_DST",
                    discovery_type.as_str_name()
                )
            },
        ));
    }

    let dns_names = matches!(
        discovery_type,
        DiscoveryType::StrictDns | DiscoveryType::LogicalDns
    );
    let assignment_path = join(path, "load_assignment");
    let (localities, overprovisioning_factor) =
        match &c.load_assignment {
            Some(_) if original_dst => return Err(ConfigError::field(
                assignment_path,
                "ORIGINAL_DST clusters must have no load assignment (their hosts come from each \
                 request's original destination)",
            )),
            Some(assignment) => load_assignment(assignment, &assignment_path, dns_names)?,
            None => (Vec::new(), model::DEFAULT_OVERPROVISIONING_FACTOR),
        };
    let endpoints = if discovery_type == DiscoveryType::Static {
        localities
            .iter()
            .flat_map(|l| &l.endpoints)
            .map(|e| match e.address {
                model::EndpointAddress::Socket(address) => model::Endpoint {
                    address,
                    weight: e.weight,
                },
                model::EndpointAddress::Dns { .. } => unreachable!("STATIC endpoints are IPs"),
            })
            .collect()
    } else {
        Vec::new()
    };

    let dns = || dns_settings(c, path);
    let discovery = match discovery_type {
        DiscoveryType::Static => model::Discovery::Static,
        DiscoveryType::StrictDns => model::Discovery::StrictDns(dns()?),
        DiscoveryType::LogicalDns => {
            let count: usize = localities.iter().map(|l| l.endpoints.len()).sum();
            if localities.len() != 1 || count != 1 {
                return Err(ConfigError::field(
                    join(&assignment_path, "endpoints"),
                    "LOGICAL_DNS clusters must have a single locality with a single lb_endpoint \
                     (as in Envoy); use STRICT_DNS for several",
                ));
            }
            model::Discovery::LogicalDns(dns()?)
        }
        DiscoveryType::OriginalDst => {
            model::Discovery::OriginalDst(original_dst_settings(c, path)?)
        }
        DiscoveryType::Eds => unreachable!("rejected above"),
    };
    if !dns_names {
        no_dns_fields(c, path, discovery_type.as_str_name())?;
    }
    if !original_dst && c.cleanup_interval.is_some() {
        return Err(ConfigError::field(
            join(path, "cleanup_interval"),
            format!(
                "only used by ORIGINAL_DST clusters, but type is {}",
                discovery_type.as_str_name()
            ),
        ));
    }

    let (health_checks, outlier_detection) = super::health::convert(c, path)?;
    Ok(model::Cluster {
        name: c.name.clone(),
        connect_timeout,
        buffer_limit: c
            .per_connection_buffer_limit_bytes
            .map_or(model::Cluster::default().buffer_limit, |v| v.value),
        lb_policy,
        endpoints,
        discovery,
        localities,
        overprovisioning_factor,
        common_lb: common_lb_config(c.common_lb_config.as_ref(), &join(path, "common_lb_config"))?,
        upstream_protocol: upstream_protocol(c, path)?,
        circuit_breakers: super::breakers::circuit_breakers(c, path)?,
        pool: super::breakers::pool_options(c, path)?,
        health_checks,
        outlier_detection,
    })
}

/// `least_request_lb_config` with Envoy's defaults (2 choices, bias 1.0).
fn least_request(
    config: Option<&cluster::cluster::LeastRequestLbConfig>,
    path: &str,
) -> Result<model::LbPolicy> {
    let choice_count = config
        .and_then(|c| c.choice_count.as_ref())
        .map_or(2, |v| v.value);
    if choice_count < 2 {
        return Err(ConfigError::field(
            join(path, "choice_count"),
            format!("{choice_count} is below Envoy's minimum of 2"),
        ));
    }
    let active_request_bias = match config.and_then(|c| c.active_request_bias.as_ref()) {
        None => 1.0,
        Some(bias) => {
            let bias_path = join(path, "active_request_bias");
            if !bias.runtime_key.is_empty() {
                return Err(ConfigError::field(
                    join(&bias_path, "runtime_key"),
                    "runtime keys are not supported by keel; give default_value only",
                ));
            }
            if !(bias.default_value >= 0.0 && bias.default_value.is_finite()) {
                return Err(ConfigError::field(
                    join(&bias_path, "default_value"),
                    format!("{} must be a number ≥ 0.0", bias.default_value),
                ));
            }
            bias.default_value
        }
    };
    Ok(model::LbPolicy::LeastRequest {
        choice_count,
        active_request_bias,
    })
}

/// `ring_hash_lb_config` with Envoy's defaults and limits.
fn ring_hash(
    config: Option<&cluster::cluster::RingHashLbConfig>,
    path: &str,
) -> Result<model::LbPolicy> {
    use cluster::cluster::ring_hash_lb_config::HashFunction;
    let model::LbPolicy::RingHash {
        minimum_ring_size: default_min,
        maximum_ring_size: default_max,
    } = model::LbPolicy::RING_HASH
    else {
        unreachable!("RING_HASH is a RingHash")
    };
    let Some(config) = config else {
        return Ok(model::LbPolicy::RING_HASH);
    };
    if config.hash_function != HashFunction::XxHash as i32 {
        return Err(ConfigError::field(
            join(path, "hash_function"),
            "only XX_HASH (the default) is supported by keel",
        ));
    }
    let minimum_ring_size = config
        .minimum_ring_size
        .as_ref()
        .map_or(default_min, |v| v.value);
    let maximum_ring_size = config
        .maximum_ring_size
        .as_ref()
        .map_or(default_max, |v| v.value);
    if maximum_ring_size > MAX_RING_SIZE || maximum_ring_size == 0 {
        return Err(ConfigError::field(
            join(path, "maximum_ring_size"),
            format!("{maximum_ring_size} is out of range: from 1 to {MAX_RING_SIZE}"),
        ));
    }
    if minimum_ring_size == 0 || minimum_ring_size > maximum_ring_size {
        return Err(ConfigError::field(
            join(path, "minimum_ring_size"),
            format!(
                "{minimum_ring_size} is out of range: from 1 to maximum_ring_size \
                 ({maximum_ring_size})"
            ),
        ));
    }
    Ok(model::LbPolicy::RingHash {
        minimum_ring_size,
        maximum_ring_size,
    })
}

/// `common_lb_config`: the panic threshold and locality-weighted balancing.
fn common_lb_config(
    config: Option<&cluster::cluster::CommonLbConfig>,
    path: &str,
) -> Result<model::CommonLbConfig> {
    use cluster::cluster::common_lb_config::LocalityConfigSpecifier;
    let mut common = model::CommonLbConfig::default();
    let Some(config) = config else {
        return Ok(common);
    };
    if let Some(percent) = &config.healthy_panic_threshold {
        if !(0.0..=100.0).contains(&percent.value) {
            return Err(ConfigError::field(
                join(path, "healthy_panic_threshold.value"),
                format!("{} is not a percentage from 0 to 100", percent.value),
            ));
        }
        // Envoy truncates to the nearest 1%.
        common.healthy_panic_threshold = percent.value.trunc();
    }
    if let Some(window) = &config.update_merge_window {
        let window_path = join(path, "update_merge_window");
        if !duration(window, &window_path)?.is_zero() {
            return Err(ConfigError::field(
                window_path,
                "keel applies host and health changes at once, as update_merge_window: 0s; \
                 other values are not supported",
            ));
        }
    }
    match &config.locality_config_specifier {
        None => {}
        Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_)) => {
            common.locality_weighted = true;
        }
        // The supported-field table names this field with its reason first.
        Some(LocalityConfigSpecifier::ZoneAwareLbConfig(_)) => {
            return Err(ConfigError::field(
                join(path, "zone_aware_lb_config"),
                crate::config::supported::ZONE_AWARE_UNSUPPORTED,
            ))
        }
    }
    Ok(common)
}

/// The DNS settings of a STRICT_DNS or LOGICAL_DNS cluster.
// `dns_resolvers` is deprecated but still accepted by Envoy.
#[allow(deprecated)]
fn dns_settings(c: &cluster::Cluster, path: &str) -> Result<model::Dns> {
    use cluster::cluster::DnsLookupFamily as F;
    let mut dns = model::Dns::default();
    if let Some(rate) = &c.dns_refresh_rate {
        let rate_path = join(path, "dns_refresh_rate");
        let rate = duration(rate, &rate_path)?;
        if rate < Duration::from_millis(1) {
            return Err(ConfigError::field(
                rate_path,
                "must be at least 1ms (Envoy's default is 5s)",
            ));
        }
        dns.refresh_rate = rate;
    }
    dns.respect_ttl = c.respect_dns_ttl;
    if let Some(failure) = &c.dns_failure_refresh_rate {
        let failure_path = join(path, "dns_failure_refresh_rate");
        let base_path = join(&failure_path, "base_interval");
        let Some(base) = &failure.base_interval else {
            return Err(ConfigError::field(
                base_path,
                "missing; give the first retry delay",
            ));
        };
        let base = duration(base, &base_path)?;
        if base < Duration::from_millis(1) {
            return Err(ConfigError::field(base_path, "must be at least 1ms"));
        }
        let max = match &failure.max_interval {
            None => base * 10,
            Some(max) => {
                let max_path = join(&failure_path, "max_interval");
                let max = duration(max, &max_path)?;
                if max < base {
                    return Err(ConfigError::field(
                        max_path,
                        "must not be below base_interval",
                    ));
                }
                max
            }
        };
        dns.failure_refresh = Some((base, max));
    }
    dns.lookup_family = match F::try_from(c.dns_lookup_family) {
        Ok(F::Auto) => model::DnsLookupFamily::Auto,
        Ok(F::V4Only) => model::DnsLookupFamily::V4Only,
        Ok(F::V6Only) => model::DnsLookupFamily::V6Only,
        Ok(F::V4Preferred) => model::DnsLookupFamily::V4Preferred,
        Ok(F::All) => model::DnsLookupFamily::All,
        Err(_) => {
            return Err(ConfigError::field(
                join(path, "dns_lookup_family"),
                format!("unknown lookup family {}", c.dns_lookup_family),
            ))
        }
    };
    if let Some(resolver) = &c.typed_dns_resolver_config {
        dns.resolvers = dns_resolvers(resolver, &join(path, "typed_dns_resolver_config"))?;
    }
    if !c.dns_resolvers.is_empty() {
        if c.typed_dns_resolver_config.is_some() {
            return Err(ConfigError::field(
                join(path, "dns_resolvers"),
                "typed_dns_resolver_config is set too; keep only typed_dns_resolver_config \
                 (dns_resolvers is deprecated)",
            ));
        }
        let resolvers_path = join(path, "dns_resolvers");
        for (i, address) in c.dns_resolvers.iter().enumerate() {
            let (address, _) =
                socket_address(address, &index(&resolvers_path, i), PortRule::NonZero)?;
            dns.resolvers.push(address);
        }
    }
    Ok(dns)
}

/// The c-ares resolver's `resolvers` (the only resolver extension keel reads).
fn dns_resolvers(config: &core::TypedExtensionConfig, path: &str) -> Result<Vec<SocketAddr>> {
    use envoy_types::pb::envoy::extensions::network::dns_resolver::cares::v3::CaresDnsResolverConfig;
    let config_path = join(path, "typed_config");
    let Some(any) = &config.typed_config else {
        return Err(ConfigError::field(config_path, "missing"));
    };
    if type_url_message_name(&any.type_url) != Some(CARES_RESOLVER) {
        return Err(ConfigError::field(
            config_path,
            format!("keel reads only type.googleapis.com/{CARES_RESOLVER} here"),
        ));
    }
    let cares: CaresDnsResolverConfig = decode_any(any, &config_path)?;
    let resolvers_path = join(&config_path, "resolvers");
    let mut resolvers = Vec::with_capacity(cares.resolvers.len());
    for (i, address) in cares.resolvers.iter().enumerate() {
        let (address, _) = socket_address(address, &index(&resolvers_path, i), PortRule::NonZero)?;
        resolvers.push(address);
    }
    Ok(resolvers)
}

/// DNS fields on a cluster that does not resolve names are mistakes.
#[allow(deprecated)]
fn no_dns_fields(c: &cluster::Cluster, path: &str, discovery: &str) -> Result<()> {
    let set = [
        ("dns_refresh_rate", c.dns_refresh_rate.is_some()),
        (
            "dns_failure_refresh_rate",
            c.dns_failure_refresh_rate.is_some(),
        ),
        ("respect_dns_ttl", c.respect_dns_ttl),
        ("dns_lookup_family", c.dns_lookup_family != 0),
        (
            "typed_dns_resolver_config",
            c.typed_dns_resolver_config.is_some(),
        ),
        ("dns_resolvers", !c.dns_resolvers.is_empty()),
    ];
    match set.iter().find(|(_, set)| *set) {
        Some((field, _)) => Err(ConfigError::field(
            join(path, field),
            format!("only used by STRICT_DNS and LOGICAL_DNS clusters, but type is {discovery}"),
        )),
        None => Ok(()),
    }
}

/// The settings of an ORIGINAL_DST cluster.
fn original_dst_settings(c: &cluster::Cluster, path: &str) -> Result<model::OriginalDst> {
    use cluster::cluster::LbConfig;
    let cleanup_interval = match &c.cleanup_interval {
        None => DEFAULT_CLEANUP_INTERVAL,
        Some(d) => {
            let interval_path = join(path, "cleanup_interval");
            let d = duration(d, &interval_path)?;
            if d < Duration::from_millis(1) {
                return Err(ConfigError::field(
                    interval_path,
                    "must be at least 1ms (Envoy's default is 5s)",
                ));
            }
            d
        }
    };
    let mut settings = model::OriginalDst {
        use_http_header: false,
        header_name: http::HeaderName::from_static(ORIGINAL_DST_HOST_HEADER),
        port_override: None,
        cleanup_interval,
    };
    if let Some(LbConfig::OriginalDstLbConfig(config)) = &c.lb_config {
        let config_path = join(path, "original_dst_lb_config");
        settings.use_http_header = config.use_http_header;
        if !config.http_header_name.is_empty() {
            settings.header_name = http::HeaderName::from_bytes(
                config.http_header_name.to_ascii_lowercase().as_bytes(),
            )
            .map_err(|_| {
                ConfigError::field(
                    join(&config_path, "http_header_name"),
                    format!("\"{}\" is not a valid header name", config.http_header_name),
                )
            })?;
        }
        if let Some(port) = &config.upstream_port_override {
            let port = u16::try_from(port.value)
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| {
                    ConfigError::field(
                        join(&config_path, "upstream_port_override"),
                        format!("{} is not a port from 1 to 65535", port.value),
                    )
                })?;
            settings.port_override = Some(port);
        }
    }
    Ok(settings)
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
    dns_names: bool,
) -> Result<(Vec<model::LocalityEndpoints>, u32)> {
    if assignment.cluster_name.is_empty() {
        return Err(ConfigError::field(
            join(path, "cluster_name"),
            "missing; Envoy requires it (usually the cluster's own name)",
        ));
    }
    let overprovisioning_factor = match assignment
        .policy
        .as_ref()
        .and_then(|p| p.overprovisioning_factor.as_ref())
    {
        None => model::DEFAULT_OVERPROVISIONING_FACTOR,
        Some(factor) if factor.value == 0 => {
            return Err(ConfigError::field(
                join(path, "policy.overprovisioning_factor"),
                "must be greater than 0 (Envoy's default is 140)",
            ))
        }
        Some(factor) => factor.value,
    };
    let mut localities = Vec::new();
    let localities_path = join(path, "endpoints");
    for (i, locality) in assignment.endpoints.iter().enumerate() {
        let locality_path = index(&localities_path, i);
        // Envoy rejects 0; leaving the weight out takes the locality out of
        // locality-weighted balancing.
        if let Some(weight) = &locality.load_balancing_weight {
            if weight.value == 0 {
                return Err(ConfigError::field(
                    join(&locality_path, "load_balancing_weight"),
                    "must be at least 1",
                ));
            }
        }
        let lb_endpoints_path = join(&locality_path, "lb_endpoints");
        let mut endpoints = Vec::with_capacity(locality.lb_endpoints.len());
        for (j, lb_endpoint) in locality.lb_endpoints.iter().enumerate() {
            endpoints.push(convert_endpoint(
                lb_endpoint,
                &index(&lb_endpoints_path, j),
                dns_names,
            )?);
        }
        localities.push(model::LocalityEndpoints {
            locality: locality
                .locality
                .as_ref()
                .map(|l| model::Locality {
                    region: l.region.clone(),
                    zone: l.zone.clone(),
                    sub_zone: l.sub_zone.clone(),
                })
                .unwrap_or_default(),
            priority: locality.priority,
            weight: locality.load_balancing_weight.as_ref().map(|w| w.value),
            endpoints,
        });
    }
    Ok((localities, overprovisioning_factor))
}

fn convert_endpoint(
    lb_endpoint: &endpoint::LbEndpoint,
    path: &str,
    dns_names: bool,
) -> Result<model::LbEndpoint> {
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
    let address = match dns_address(address, dns_names) {
        Some((hostname, port)) if port != 0 => model::EndpointAddress::Dns {
            hostname: hostname.to_owned(),
            port,
        },
        _ => {
            let (address, protocol) = socket_address(address, &address_path, PortRule::NonZero)?;
            if protocol != model::Protocol::Tcp {
                return Err(ConfigError::field(
                    join(&address_path, "socket_address.protocol"),
                    "UDP endpoints are not supported yet; keel proxies TCP",
                ));
            }
            model::EndpointAddress::Socket(address)
        }
    };
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
    Ok(model::LbEndpoint { address, weight })
}

/// A hostname (not an IP literal) with its port, for clusters that resolve names; `None`
/// when the address is to be read as an IP literal (with its errors).
fn dns_address(address: &core::Address, dns_names: bool) -> Option<(&str, u16)> {
    let Some(core::address::Address::SocketAddress(socket)) = &address.address else {
        return None;
    };
    let name = socket.address.as_str();
    if !dns_names || name.is_empty() || name.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    if socket.protocol != core::socket_address::Protocol::Tcp as i32 {
        return None;
    }
    let valid = name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    match &socket.port_specifier {
        Some(core::socket_address::PortSpecifier::PortValue(port)) if valid => {
            Some((name, u16::try_from(*port).ok()?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::{load_str, Format};
    use crate::model::{self, Discovery, DnsLookupFamily, EndpointAddress, LbPolicy};

    /// A bootstrap with one cluster made of `body` (indented under `- name: c`).
    fn with_cluster(body: &str) -> String {
        let body: String = body.lines().map(|l| format!("    {l}\n")).collect();
        format!("static_resources:\n  clusters:\n  - name: c\n{body}")
    }

    fn load(body: &str) -> model::Cluster {
        let yaml = with_cluster(body);
        let bootstrap = load_str(&yaml, Format::Yaml)
            .unwrap_or_else(|e| panic!("expected the config to load, got: {e}\n{yaml}"));
        bootstrap.clusters[0].clone()
    }

    fn expect_error(body: &str, field: &str, what: &str) {
        let yaml = with_cluster(body);
        let error = match load_str(&yaml, Format::Yaml) {
            Ok(_) => panic!("expected an error at {field}, but the config loaded\n{yaml}"),
            Err(e) => e.to_string(),
        };
        let path = format!("static_resources.clusters[0].{field}: ");
        assert!(error.starts_with(&path), "expected `{path}`, got: {error}");
        assert!(error.contains(what), "expected `{what}`, got: {error}");
    }

    const DNS_ENDPOINT: &str = "load_assignment:
  cluster_name: c
  endpoints:
  - lb_endpoints:
    - endpoint: {address: {socket_address: {address: backend.example, port_value: 80}}}";

    #[test]
    fn strict_dns_cluster_with_every_setting() {
        let cluster = load(
            "type: STRICT_DNS
dns_refresh_rate: 2s
respect_dns_ttl: true
dns_lookup_family: V4_ONLY
dns_failure_refresh_rate: {base_interval: 1s, max_interval: 10s}
typed_dns_resolver_config:
  name: envoy.network.dns_resolver.cares
  typed_config:
    \"@type\": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig
    resolvers: [{socket_address: {address: 127.0.0.1, port_value: 5353}}]
lb_policy: RING_HASH
ring_hash_lb_config: {minimum_ring_size: 64, maximum_ring_size: 4096}
common_lb_config:
  healthy_panic_threshold: {value: 30.5}
  locality_weighted_lb_config: {}
load_assignment:
  cluster_name: c
  policy: {overprovisioning_factor: 200}
  endpoints:
  - locality: {region: r, zone: z1}
    load_balancing_weight: 3
    lb_endpoints:
    - endpoint: {address: {socket_address: {address: a.example, port_value: 80}}}
      load_balancing_weight: 5
  - priority: 1
    lb_endpoints:
    - endpoint: {address: {socket_address: {address: 10.0.0.9, port_value: 81}}}",
        );
        let Discovery::StrictDns(dns) = &cluster.discovery else {
            panic!("STRICT_DNS: {:?}", cluster.discovery)
        };
        assert_eq!(dns.refresh_rate, Duration::from_secs(2));
        assert!(dns.respect_ttl);
        assert_eq!(dns.lookup_family, DnsLookupFamily::V4Only);
        assert_eq!(
            dns.failure_refresh,
            Some((Duration::from_secs(1), Duration::from_secs(10)))
        );
        assert_eq!(dns.resolvers, vec!["127.0.0.1:5353".parse().unwrap()]);
        assert_eq!(
            cluster.lb_policy,
            LbPolicy::RingHash {
                minimum_ring_size: 64,
                maximum_ring_size: 4096
            }
        );
        assert_eq!(cluster.common_lb.healthy_panic_threshold, 30.0, "truncated");
        assert!(cluster.common_lb.locality_weighted);
        assert_eq!(cluster.overprovisioning_factor, 200);
        assert!(cluster.endpoints.is_empty(), "only STATIC fills endpoints");
        let [first, second] = &cluster.localities[..] else {
            panic!("two localities")
        };
        assert_eq!((first.priority, first.weight), (0, Some(3)));
        assert_eq!(first.locality.zone, "z1");
        assert_eq!(
            first.endpoints[0].address,
            EndpointAddress::Dns {
                hostname: "a.example".into(),
                port: 80
            }
        );
        assert_eq!(first.endpoints[0].weight, 5);
        assert_eq!(second.priority, 1);
        assert_eq!(
            second.endpoints[0].address,
            EndpointAddress::Socket("10.0.0.9:81".parse().unwrap())
        );
    }

    #[test]
    fn defaults_follow_envoy() {
        let cluster = load(&format!("type: STRICT_DNS\n{DNS_ENDPOINT}"));
        let Discovery::StrictDns(dns) = &cluster.discovery else {
            panic!()
        };
        assert_eq!(dns, &model::Dns::default());
        assert_eq!(dns.refresh_rate, Duration::from_secs(5));
        assert_eq!(dns.lookup_family, DnsLookupFamily::Auto);
        assert_eq!(cluster.common_lb.healthy_panic_threshold, 50.0);
        assert_eq!(cluster.overprovisioning_factor, 140);
        let least = load("lb_policy: LEAST_REQUEST");
        assert_eq!(least.lb_policy, LbPolicy::LEAST_REQUEST);
        let ring = load("lb_policy: RING_HASH");
        assert_eq!(ring.lb_policy, LbPolicy::RING_HASH);
        let configured = load(
            "lb_policy: LEAST_REQUEST
least_request_lb_config: {choice_count: 4, active_request_bias: {default_value: 0.5, runtime_key: \"\"}}",
        );
        assert_eq!(
            configured.lb_policy,
            LbPolicy::LeastRequest {
                choice_count: 4,
                active_request_bias: 0.5
            }
        );
    }

    #[test]
    fn logical_dns_and_original_dst() {
        let logical = load(&format!("type: LOGICAL_DNS\n{DNS_ENDPOINT}"));
        assert!(matches!(logical.discovery, Discovery::LogicalDns(_)));
        let original = load(
            "type: ORIGINAL_DST
lb_policy: CLUSTER_PROVIDED
cleanup_interval: 30s
original_dst_lb_config: {use_http_header: true, upstream_port_override: 8080}",
        );
        let Discovery::OriginalDst(settings) = &original.discovery else {
            panic!()
        };
        assert!(settings.use_http_header);
        assert_eq!(settings.header_name, "x-envoy-original-dst-host");
        assert_eq!(settings.port_override, Some(8080));
        assert_eq!(settings.cleanup_interval, Duration::from_secs(30));
        assert_eq!(original.lb_policy, LbPolicy::ClusterProvided);
    }

    #[test]
    fn rejections_name_the_field() {
        let two_endpoints = "load_assignment:
  cluster_name: c
  endpoints:
  - lb_endpoints:
    - endpoint: {address: {socket_address: {address: a.example, port_value: 80}}}
    - endpoint: {address: {socket_address: {address: b.example, port_value: 80}}}";
        let cases: &[(&str, &str, &str)] = &[
            (
                &format!("type: STATIC\n{DNS_ENDPOINT}"),
                "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address",
                "not an IP address",
            ),
            (
                &format!("type: LOGICAL_DNS\n{two_endpoints}"),
                "load_assignment.endpoints",
                "a single locality with a single lb_endpoint",
            ),
            (
                "type: ORIGINAL_DST",
                "lb_policy",
                "ROUND_ROBIN is not valid for cluster type ORIGINAL_DST",
            ),
            (
                "lb_policy: CLUSTER_PROVIDED",
                "lb_policy",
                "CLUSTER_PROVIDED is not valid for cluster type STATIC",
            ),
            (
                "type: ORIGINAL_DST\nlb_policy: CLUSTER_PROVIDED\nload_assignment: {cluster_name: c}",
                "load_assignment",
                "must have no load assignment",
            ),
            (
                "common_lb_config: {zone_aware_lb_config: {}}",
                "common_lb_config.zone_aware_lb_config",
                "cluster_manager.local_cluster_name",
            ),
            (
                "common_lb_config: {healthy_panic_threshold: {value: 150}}",
                "common_lb_config.healthy_panic_threshold.value",
                "not a percentage",
            ),
            (
                "lb_policy: RING_HASH\nring_hash_lb_config: {hash_function: MURMUR_HASH_2}",
                "ring_hash_lb_config.hash_function",
                "only XX_HASH",
            ),
            (
                "lb_policy: RING_HASH\nring_hash_lb_config: {minimum_ring_size: 100, maximum_ring_size: 10}",
                "ring_hash_lb_config.minimum_ring_size",
                "out of range",
            ),
            (
                "lb_policy: RING_HASH\nring_hash_lb_config: {maximum_ring_size: 9000000}",
                "ring_hash_lb_config.maximum_ring_size",
                "out of range",
            ),
            (
                "ring_hash_lb_config: {}",
                "ring_hash_lb_config",
                "only used with lb_policy RING_HASH",
            ),
            (
                "lb_policy: LEAST_REQUEST\nleast_request_lb_config: {choice_count: 1}",
                "least_request_lb_config.choice_count",
                "minimum of 2",
            ),
            (
                "dns_refresh_rate: 1s",
                "dns_refresh_rate",
                "only used by STRICT_DNS and LOGICAL_DNS clusters",
            ),
            (
                "cleanup_interval: 1s",
                "cleanup_interval",
                "only used by ORIGINAL_DST clusters",
            ),
            (
                "load_assignment: {cluster_name: c, policy: {overprovisioning_factor: 0}}",
                "load_assignment.policy.overprovisioning_factor",
                "greater than 0",
            ),
            (
                "type: EDS",
                "type",
                "EDS clusters come with xDS",
            ),
            (
                "common_lb_config: {update_merge_window: 1s}",
                "common_lb_config.update_merge_window",
                "at once",
            ),
        ];
        for (body, field, what) in cases {
            expect_error(body, field, what);
        }
    }
}
