//! Step 4: Envoy's typed bootstrap (from the `envoy-types` crate) → [`model`] types.
//!
//! Why typed structs rather than reading the `DynamicMessage` directly: here every field
//! name, oneof and enum value is checked by the compiler, and the code reads like the
//! Envoy documentation (`cluster.lb_policy`, `LbPolicy::Maglev`). The dynamic message is
//! the right shape for the generic, table-driven checks of steps 1 and 2; once those have
//! passed, the transcoding cannot lose anything keel reads, because the descriptor pool
//! is compiled from the very .proto files envoy-types ships.
//!
//! Every function takes the path of what it converts and returns
//! [`ConfigError::Field`] errors under that path. The checks here are the semantic ones:
//! required fields, unique names, IP literals and ports, weights, Maglev table sizes, and
//! that a tcp_proxy or a route names a defined cluster.
//!
//! The HTTP connection manager has submodules of its own: `hcm` (the manager and its
//! protocol options), `route` (the route table) and `access_log`.

mod access_log;
mod breakers;
mod clusters;
mod hcm;
mod health;
mod local_reply;
mod route;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::bootstrap::v3 as bootstrap;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as http_connection_manager;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp_proxy;
use envoy_types::pb::google::protobuf as wkt;
use prost::Name as _;
use prost_reflect::DynamicMessage;
use serde_json::Value as Json;

use super::keel_v1;
use super::{descriptor_pool, index, join, parse, supported, type_url_message_name, ConfigError};
use crate::model;

/// Envoy's default `per_connection_buffer_limit_bytes` (1 MiB).
const DEFAULT_BUFFER_LIMIT: u32 = 1024 * 1024;
/// Envoy's default `listener_filters_timeout`.
const DEFAULT_LISTENER_FILTERS_TIMEOUT: Duration = Duration::from_secs(15);
/// Envoy's default tcp_proxy `idle_timeout`.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Where keel pins its maps when `keel.v1.Datapath.bpffs_path` is empty.
const DEFAULT_BPFFS_PATH: &str = "/sys/fs/bpf/keel";
/// The metadata key of keel's listener options.
const KEEL_METADATA_KEY: &str = "keel";
/// Full names of keel's own messages.
const DATAPATH: &str = "keel.v1.Datapath";
const LISTENER_OPTIONS: &str = "keel.v1.ListenerOptions";
/// The network filters keel supports, for error messages.
const NETWORK_FILTERS: &str = "the network filters keel supports are \
     type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy and \
     type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

type Result<T> = std::result::Result<T, ConfigError>;

/// Converts a whole bootstrap.
pub(super) fn bootstrap(b: &bootstrap::Bootstrap) -> Result<model::Bootstrap> {
    let node = b
        .node
        .as_ref()
        .map(|n| model::Node {
            id: n.id.clone(),
            cluster: n.cluster.clone(),
        })
        .unwrap_or_default();
    let admin = match &b.admin {
        Some(admin) => admin_address(admin, "admin")?,
        None => None,
    };
    let datapath = datapath(&b.bootstrap_extensions, "bootstrap_extensions")?;

    let (mut listeners, clusters) = match &b.static_resources {
        Some(resources) => static_resources(resources, "static_resources")?,
        None => (Vec::new(), Vec::new()),
    };
    set_user_agents(&mut listeners, &node);
    Ok(model::Bootstrap {
        node,
        admin,
        listeners,
        clusters,
        datapath,
        config_dump: serde_json::Value::Null,
    })
}

/// `add_user_agent`: connection managers that set it learn the node's identity (Envoy's
/// `local_info`: `--service-cluster` / `node.cluster`, `--service-node` / `node.id`).
fn set_user_agents(listeners: &mut [model::Listener], node: &model::Node) {
    for listener in listeners {
        let chains = listener
            .filter_chains
            .iter_mut()
            .chain(listener.default_filter_chain.as_mut());
        for chain in chains {
            for filter in &mut chain.filters {
                if let model::NetworkFilter::HttpConnectionManager(hcm) = filter {
                    if hcm.options.user_agent.is_some() {
                        Arc::make_mut(hcm).options.user_agent = Some(node.clone());
                    }
                }
            }
        }
    }
}

fn admin_address(admin: &bootstrap::Admin, path: &str) -> Result<Option<model::Admin>> {
    // Envoy starts no admin listener when `admin` has no address.
    let Some(address) = &admin.address else {
        return Ok(None);
    };
    let path = join(path, "address");
    let (address, protocol) = socket_address(address, &path, PortRule::AnyPort)?;
    if protocol != model::Protocol::Tcp {
        return Err(ConfigError::field(
            join(&path, "socket_address.protocol"),
            "the admin API listens on TCP; remove `protocol: UDP`",
        ));
    }
    Ok(Some(model::Admin { address }))
}

fn static_resources(
    resources: &bootstrap::bootstrap::StaticResources,
    path: &str,
) -> Result<(Vec<model::Listener>, Vec<model::Cluster>)> {
    let clusters_path = join(path, "clusters");
    let mut clusters = Vec::with_capacity(resources.clusters.len());
    let mut cluster_names: HashMap<&str, usize> = HashMap::new();
    for (i, c) in resources.clusters.iter().enumerate() {
        let cluster_path = index(&clusters_path, i);
        unique_name(
            &c.name,
            "cluster",
            &mut cluster_names,
            i,
            &clusters_path,
            &cluster_path,
        )?;
        clusters.push(clusters::convert_cluster(c, &cluster_path)?);
    }

    let listeners_path = join(path, "listeners");
    let mut listeners = Vec::with_capacity(resources.listeners.len());
    let mut listener_names: HashMap<&str, usize> = HashMap::new();
    for (i, l) in resources.listeners.iter().enumerate() {
        let listener_path = index(&listeners_path, i);
        unique_name(
            &l.name,
            "listener",
            &mut listener_names,
            i,
            &listeners_path,
            &listener_path,
        )?;
        listeners.push(convert_listener(l, &listener_path, &clusters)?);
    }
    Ok((listeners, clusters))
}

/// Checks that a listener's or cluster's name is present and not used before.
fn unique_name<'a>(
    name: &'a str,
    what: &str,
    seen: &mut HashMap<&'a str, usize>,
    i: usize,
    list_path: &str,
    item_path: &str,
) -> Result<()> {
    if name.is_empty() {
        return Err(ConfigError::field(
            join(item_path, "name"),
            format!("missing; every {what} needs a unique name"),
        ));
    }
    if let Some(first) = seen.insert(name, i) {
        return Err(ConfigError::field(
            join(item_path, "name"),
            format!(
                "duplicate {what} name \"{name}\" (first used at {}); {what} names must be unique",
                index(list_path, first)
            ),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Bootstrap extensions.

fn datapath(extensions: &[core::TypedExtensionConfig], path: &str) -> Result<model::Datapath> {
    let mut found: Option<(usize, keel_v1::Datapath)> = None;
    for (i, extension) in extensions.iter().enumerate() {
        let item = index(path, i);
        if extension.name.is_empty() {
            return Err(ConfigError::field(
                join(&item, "name"),
                "missing; name the extension, e.g. keel.datapath",
            ));
        }
        let config_path = join(&item, "typed_config");
        let Some(any) = &extension.typed_config else {
            return Err(ConfigError::field(
                config_path,
                "missing; give \"@type\": type.googleapis.com/keel.v1.Datapath and its settings",
            ));
        };
        if type_url_message_name(&any.type_url) != Some(DATAPATH) {
            return Err(ConfigError::field(
                config_path,
                format!(
                    "@type \"{}\" is not a bootstrap extension keel supports; the one it supports is \
                     type.googleapis.com/keel.v1.Datapath",
                    any.type_url
                ),
            ));
        }
        if let Some((first, _)) = &found {
            return Err(ConfigError::field(
                item,
                format!(
                    "keel.v1.Datapath given twice (first at {}); keep one",
                    index(path, *first)
                ),
            ));
        }
        found = Some((i, decode_any::<keel_v1::Datapath>(any, &config_path)?));
    }
    let Some((i, config)) = found else {
        return Ok(model::Datapath::default());
    };
    let config_path = join(&index(path, i), "typed_config");
    let on_unavailable = match keel_v1::datapath::Unavailable::try_from(config.on_unavailable) {
        Ok(keel_v1::datapath::Unavailable::Fail) => model::WhenUnavailable::Fail,
        Ok(keel_v1::datapath::Unavailable::Userspace) => model::WhenUnavailable::Userspace,
        Err(_) => {
            return Err(ConfigError::field(
                join(&config_path, "on_unavailable"),
                format!(
                    "unknown value {}; expected FAIL or USERSPACE",
                    config.on_unavailable
                ),
            ))
        }
    };
    Ok(model::Datapath {
        cgroup_path: (!config.cgroup_path.is_empty()).then(|| PathBuf::from(&config.cgroup_path)),
        bpffs_path: PathBuf::from(if config.bpffs_path.is_empty() {
            DEFAULT_BPFFS_PATH
        } else {
            &config.bpffs_path
        }),
        on_unavailable,
    })
}

// ---------------------------------------------------------------------------------------
// Listeners.

fn convert_listener(
    l: &listener::Listener,
    path: &str,
    clusters: &[model::Cluster],
) -> Result<model::Listener> {
    let address_path = join(path, "address");
    let Some(address) = &l.address else {
        return Err(ConfigError::field(
            address_path,
            "missing; a listener needs address.socket_address with address and port_value",
        ));
    };
    let (address, protocol) = socket_address(address, &address_path, PortRule::AnyPort)?;

    let chains_path = join(path, "filter_chains");
    if l.filter_chains.is_empty() && l.default_filter_chain.is_none() {
        return Err(ConfigError::field(
            chains_path,
            "missing; a listener needs a filter chain whose last filter is envoy.filters.network.tcp_proxy \
             or envoy.filters.network.http_connection_manager",
        ));
    }
    let filter_chains = l
        .filter_chains
        .iter()
        .enumerate()
        .map(|(i, chain)| filter_chain(chain, &index(&chains_path, i), clusters))
        .collect::<Result<Vec<_>>>()?;
    for (i, chain) in filter_chains.iter().enumerate() {
        if let Some(first) = filter_chains[..i]
            .iter()
            .position(|c| c.filter_chain_match == chain.filter_chain_match)
        {
            return Err(ConfigError::field(
                join(&index(&chains_path, i), "filter_chain_match"),
                format!(
                    "the same as the filter_chain_match of filter_chains[{first}]; each filter chain \
                     of a listener needs its own match"
                ),
            ));
        }
    }
    let default_filter_chain = l
        .default_filter_chain
        .as_ref()
        .map(|chain| filter_chain(chain, &join(path, "default_filter_chain"), clusters))
        .transpose()?;

    let balancing = match &l.metadata {
        Some(metadata) => listener_balancing(metadata, &join(path, "metadata"))?,
        None => model::Balancing::Userspace,
    };
    if balancing == model::Balancing::Kernel
        && (filter_chains.len() != 1
            || filter_chains[0].filter_chain_match != Default::default()
            || default_filter_chain.is_some())
    {
        return Err(ConfigError::field(
            chains_path,
            "a kernel-balanced listener has exactly one filter chain, without filter_chain_match \
             (the kernel sees only the destination at connect time)",
        ));
    }
    Ok(model::Listener {
        name: l.name.clone(),
        address,
        protocol,
        filter_chains,
        default_filter_chain,
        listener_filters: listener_filters(l, path)?,
        buffer_limit: l
            .per_connection_buffer_limit_bytes
            .map_or(DEFAULT_BUFFER_LIMIT, |v| v.value),
        balancing,
    })
}

/// `listener_filters`, with their timeout.
fn listener_filters(
    l: &listener::Listener,
    path: &str,
) -> Result<model::listener::ListenerFilters> {
    let mut filters = model::listener::ListenerFilters {
        timeout: timeout(
            l.listener_filters_timeout.as_ref(),
            Some(DEFAULT_LISTENER_FILTERS_TIMEOUT),
            &join(path, "listener_filters_timeout"),
        )?,
        continue_on_timeout: l.continue_on_listener_filters_timeout,
        ..Default::default()
    };
    let filters_path = join(path, "listener_filters");
    for (i, filter) in l.listener_filters.iter().enumerate() {
        let filter_path = index(&filters_path, i);
        let type_url = match &filter.config_type {
            Some(listener::listener_filter::ConfigType::TypedConfig(any)) => any.type_url.as_str(),
            _ => "",
        };
        let kind = type_url_message_name(type_url).unwrap_or(filter.name.as_str());
        match kind {
            "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
            | "envoy.filters.listener.tls_inspector" => filters.tls_inspector = true,
            "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
            | "envoy.filters.listener.http_inspector" => filters.http_inspector = true,
            _ => {
                return Err(ConfigError::field(
                    filter_path,
                    format!(
                        "listener filter {:?} is not supported by keel; keel has \
                         envoy.filters.listener.tls_inspector and envoy.filters.listener.http_inspector",
                        if type_url.is_empty() { &filter.name } else { type_url }
                    ),
                ))
            }
        }
    }
    Ok(filters)
}

/// `filter_chain_match`.
fn filter_chain_match(
    m: &listener::FilterChainMatch,
    path: &str,
) -> Result<model::listener::FilterChainMatch> {
    use listener::filter_chain_match::ConnectionSourceType;
    let destination_port = match m.destination_port {
        None => None,
        Some(port) => Some(
            u16::try_from(port.value)
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| {
                    ConfigError::field(join(path, "destination_port"), "must be a port, 1 to 65535")
                })?,
        ),
    };
    let server_names = m
        .server_names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let valid = !name.is_empty()
                && name != "*"
                && (!name.contains('*') || (name.starts_with("*.") && !name[1..].contains('*')));
            if valid {
                Ok(name.to_ascii_lowercase())
            } else {
                Err(ConfigError::field(
                    index(&join(path, "server_names"), i),
                    format!(
                        "{name:?} is not a server name: give a name (www.example.com) or a wildcard \
                         of a whole label (*.example.com); leave server_names out to match any"
                    ),
                ))
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let source_type = match ConnectionSourceType::try_from(m.source_type) {
        Ok(ConnectionSourceType::Any) => model::listener::SourceType::Any,
        Ok(ConnectionSourceType::SameIpOrLoopback) => model::listener::SourceType::SameIpOrLoopback,
        Ok(ConnectionSourceType::External) => model::listener::SourceType::External,
        Err(_) => {
            return Err(ConfigError::field(
                join(path, "source_type"),
                format!("unknown source type {}", m.source_type),
            ))
        }
    };
    let source_ports = m
        .source_ports
        .iter()
        .enumerate()
        .map(|(i, &port)| {
            u16::try_from(port).ok().filter(|&p| p > 0).ok_or_else(|| {
                ConfigError::field(
                    index(&join(path, "source_ports"), i),
                    "must be a port, 1 to 65535",
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(model::listener::FilterChainMatch {
        destination_port,
        prefix_ranges: cidr_ranges(&m.prefix_ranges, &join(path, "prefix_ranges"))?,
        server_names,
        transport_protocol: Some(m.transport_protocol.clone()).filter(|t| !t.is_empty()),
        application_protocols: m.application_protocols.clone(),
        direct_source_prefix_ranges: cidr_ranges(
            &m.direct_source_prefix_ranges,
            &join(path, "direct_source_prefix_ranges"),
        )?,
        source_type,
        source_prefix_ranges: cidr_ranges(
            &m.source_prefix_ranges,
            &join(path, "source_prefix_ranges"),
        )?,
        source_ports,
    })
}

/// A list of `CidrRange`s.
fn cidr_ranges(ranges: &[core::CidrRange], path: &str) -> Result<Vec<model::listener::CidrRange>> {
    ranges
        .iter()
        .enumerate()
        .map(|(i, range)| {
            let range_path = index(path, i);
            let address: IpAddr = range.address_prefix.parse().map_err(|_| {
                ConfigError::field(
                    join(&range_path, "address_prefix"),
                    format!("{:?} is not an IP address", range.address_prefix),
                )
            })?;
            let max = if address.is_ipv4() { 32 } else { 128 };
            let prefix_len = range.prefix_len.map_or(0, |p| p.value);
            if prefix_len > max {
                return Err(ConfigError::field(
                    join(&range_path, "prefix_len"),
                    format!("{prefix_len} is longer than the address ({max} bits)"),
                ));
            }
            Ok(model::listener::CidrRange::new(address, prefix_len as u8))
        })
        .collect()
}

fn filter_chain(
    chain: &listener::FilterChain,
    path: &str,
    clusters: &[model::Cluster],
) -> Result<model::FilterChain> {
    let filters_path = join(path, "filters");
    if chain.filters.is_empty() {
        return Err(ConfigError::field(
            filters_path,
            "missing; a filter chain needs a terminal filter: envoy.filters.network.tcp_proxy or \
             envoy.filters.network.http_connection_manager",
        ));
    }
    let mut filters = Vec::with_capacity(chain.filters.len());
    for (i, filter) in chain.filters.iter().enumerate() {
        let filter_path = index(&filters_path, i);
        if i > 0 {
            // Every filter keel supports is terminal, so nothing may follow one.
            return Err(ConfigError::field(
                filter_path,
                format!(
                    "{} is a terminal filter and must be the last filter of its chain; \
                     remove the filters after it",
                    chain.filters[i - 1].name
                ),
            ));
        }
        filters.push(network_filter(filter, &filter_path, clusters)?);
    }
    let filter_chain_match = match &chain.filter_chain_match {
        Some(m) => filter_chain_match(m, &join(path, "filter_chain_match"))?,
        None => Default::default(),
    };
    Ok(model::FilterChain {
        name: chain.name.clone(),
        filter_chain_match,
        filters,
    })
}

fn network_filter(
    filter: &listener::Filter,
    path: &str,
    clusters: &[model::Cluster],
) -> Result<model::NetworkFilter> {
    if filter.name.is_empty() {
        return Err(ConfigError::field(
            join(path, "name"),
            "missing; name the filter, e.g. envoy.filters.network.tcp_proxy or \
             envoy.filters.network.http_connection_manager",
        ));
    }
    let config_path = join(path, "typed_config");
    let any = match &filter.config_type {
        Some(listener::filter::ConfigType::TypedConfig(any)) => any,
        Some(listener::filter::ConfigType::ConfigDiscovery(_)) => {
            return Err(ConfigError::field(
                join(path, "config_discovery"),
                "field not supported by keel",
            ))
        }
        None => {
            return Err(ConfigError::field(
                config_path,
                format!("missing; give \"@type\" and the filter's settings ({NETWORK_FILTERS})"),
            ))
        }
    };
    let message = type_url_message_name(&any.type_url);
    if message == Some(tcp_proxy::TcpProxy::full_name().as_str()) {
        let config = decode_any::<tcp_proxy::TcpProxy>(any, &config_path)?;
        return Ok(model::NetworkFilter::TcpProxy(convert_tcp_proxy(
            &config,
            &config_path,
            clusters,
        )?));
    }
    if message == Some(http_connection_manager::HttpConnectionManager::full_name().as_str()) {
        let config =
            decode_any::<http_connection_manager::HttpConnectionManager>(any, &config_path)?;
        return Ok(model::NetworkFilter::HttpConnectionManager(Arc::new(
            hcm::http_connection_manager(&config, &config_path, clusters)?,
        )));
    }
    Err(ConfigError::field(
        config_path,
        format!(
            "@type \"{}\" is not a network filter; {NETWORK_FILTERS}",
            any.type_url
        ),
    ))
}

fn convert_tcp_proxy(
    config: &tcp_proxy::TcpProxy,
    path: &str,
    clusters: &[model::Cluster],
) -> Result<model::TcpProxy> {
    if config.stat_prefix.is_empty() {
        return Err(ConfigError::field(
            join(path, "stat_prefix"),
            "missing; tcp_proxy needs a stat_prefix (the prefix of its statistics' names)",
        ));
    }
    let cluster_path = join(path, "cluster");
    let mut weighted_clusters = Vec::new();
    let cluster = match &config.cluster_specifier {
        Some(tcp_proxy::tcp_proxy::ClusterSpecifier::Cluster(name)) if !name.is_empty() => {
            known_cluster(name, &cluster_path, clusters)?;
            name.clone()
        }
        Some(tcp_proxy::tcp_proxy::ClusterSpecifier::WeightedClusters(weighted)) => {
            let list_path = join(path, "weighted_clusters.clusters");
            for (i, entry) in weighted.clusters.iter().enumerate() {
                let entry_path = index(&list_path, i);
                known_cluster(&entry.name, &join(&entry_path, "name"), clusters)?;
                if entry.weight == 0 {
                    return Err(ConfigError::field(
                        join(&entry_path, "weight"),
                        "must be at least 1",
                    ));
                }
                weighted_clusters.push((entry.name.clone(), entry.weight));
            }
            match weighted_clusters.first() {
                Some((first, _)) => first.clone(),
                None => {
                    return Err(ConfigError::field(
                        list_path,
                        "missing; weighted_clusters needs at least one cluster",
                    ))
                }
            }
        }
        _ => {
            return Err(ConfigError::field(
                cluster_path,
                "missing; tcp_proxy needs the name of the cluster to connect to",
            ))
        }
    };
    let idle_timeout = timeout(
        config.idle_timeout.as_ref(),
        Some(DEFAULT_IDLE_TIMEOUT),
        &join(path, "idle_timeout"),
    )?;
    Ok(model::TcpProxy {
        stat_prefix: config.stat_prefix.clone(),
        cluster,
        weighted_clusters,
        idle_timeout,
    })
}

/// Reads keel's listener options from the metadata key "keel": either untyped
/// (`filter_metadata.keel`, a Struct read strictly as `keel.v1.ListenerOptions`) or typed
/// (`typed_filter_metadata.keel`, an Any of `keel.v1.ListenerOptions`). Other keys belong
/// to other consumers and are left alone.
fn listener_balancing(metadata: &core::Metadata, path: &str) -> Result<model::Balancing> {
    let desc = descriptor_pool()
        .get_message_by_name(LISTENER_OPTIONS)
        .expect("the descriptor pool holds keel.v1.ListenerOptions");
    let untyped = metadata.filter_metadata.get(KEEL_METADATA_KEY);
    let typed = metadata.typed_filter_metadata.get(KEEL_METADATA_KEY);
    let (message, options_path) = match (untyped, typed) {
        (None, None) => return Ok(model::Balancing::Userspace),
        (Some(_), Some(_)) => {
            return Err(ConfigError::field(
                path,
                "keel's options are given twice, in filter_metadata.keel and in \
                 typed_filter_metadata.keel; keep one",
            ))
        }
        (Some(fields), None) => {
            let options_path = join(&join(path, "filter_metadata"), KEEL_METADATA_KEY);
            let json = struct_to_json(fields);
            (parse::message(&json, &desc, &options_path)?, options_path)
        }
        (None, Some(any)) => {
            let options_path = join(&join(path, "typed_filter_metadata"), KEEL_METADATA_KEY);
            if type_url_message_name(&any.type_url) != Some(LISTENER_OPTIONS) {
                return Err(ConfigError::field(
                    options_path,
                    format!(
                        "@type \"{}\" is not keel's listener options; use \
                         type.googleapis.com/keel.v1.ListenerOptions",
                        any.type_url
                    ),
                ));
            }
            let message = DynamicMessage::decode(desc, any.value.as_slice())
                .map_err(|e| ConfigError::field(&options_path, format!("cannot decode: {e}")))?;
            (message, options_path)
        }
    };
    supported::check(&message, &options_path)?;
    let options: keel_v1::ListenerOptions = message
        .transcode_to()
        .map_err(|e| ConfigError::field(&options_path, format!("cannot decode: {e}")))?;
    match keel_v1::listener_options::Balancing::try_from(options.balancing) {
        Ok(keel_v1::listener_options::Balancing::Userspace) => Ok(model::Balancing::Userspace),
        Ok(keel_v1::listener_options::Balancing::Kernel) => Ok(model::Balancing::Kernel),
        Err(_) => Err(ConfigError::field(
            join(&options_path, "balancing"),
            format!(
                "unknown value {}; expected USERSPACE or KERNEL",
                options.balancing
            ),
        )),
    }
}

/// A `google.protobuf.Struct` as JSON. Numbers that are whole become JSON integers, so
/// that `{balancing: 1}` reads as the enum number it means.
fn struct_to_json(s: &wkt::Struct) -> Json {
    Json::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: &wkt::Value) -> Json {
    use wkt::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                Json::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n).map_or(Json::Null, Json::Number)
            }
        }
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::ListValue(list)) => Json::Array(list.values.iter().map(value_to_json).collect()),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

// ---------------------------------------------------------------------------------------
// Shared pieces.

/// Whether port 0 is allowed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PortRule {
    /// Listeners and admin: port 0 asks the kernel for a free port.
    AnyPort,
    /// Endpoints: a connection needs a real port.
    NonZero,
}

/// Reads `address.socket_address` (at `path`, the path of the `Address`).
fn socket_address(
    address: &core::Address,
    path: &str,
    ports: PortRule,
) -> Result<(SocketAddr, model::Protocol)> {
    let socket_path = join(path, "socket_address");
    let socket = match &address.address {
        Some(core::address::Address::SocketAddress(socket)) => socket,
        Some(core::address::Address::Pipe(_)) => {
            return Err(ConfigError::field(
                join(path, "pipe"),
                "field not supported by keel",
            ))
        }
        Some(core::address::Address::EnvoyInternalAddress(_)) => {
            return Err(ConfigError::field(
                join(path, "envoy_internal_address"),
                "field not supported by keel",
            ))
        }
        None => {
            return Err(ConfigError::field(
                socket_path,
                "missing; give socket_address with address and port_value",
            ))
        }
    };
    let ip_path = join(&socket_path, "address");
    if socket.address.is_empty() {
        return Err(ConfigError::field(
            ip_path,
            "missing; give an IPv4 or IPv6 address such as 10.0.0.1 or ::1",
        ));
    }
    let ip: IpAddr = socket.address.parse().map_err(|_| {
        let text = &socket.address;
        let message = if text.starts_with('[') && text.ends_with(']') {
            format!(
                "\"{text}\" is not an IP address; write IPv6 addresses without brackets, e.g. ::1"
            )
        } else if text.contains(':') {
            format!("\"{text}\" is not a valid IPv6 address")
        } else if text.chars().all(|c| c.is_ascii_digit() || c == '.') {
            format!("\"{text}\" is not a valid IPv4 address")
        } else {
            format!(
                "\"{text}\" is not an IP address; keel needs an IPv4 or IPv6 literal here \
                 (it does not resolve host names in static configuration)"
            )
        };
        ConfigError::field(&ip_path, message)
    })?;
    let port_path = join(&socket_path, "port_value");
    let port = match &socket.port_specifier {
        Some(core::socket_address::PortSpecifier::PortValue(port)) => *port,
        Some(core::socket_address::PortSpecifier::NamedPort(_)) => {
            return Err(ConfigError::field(
                join(&socket_path, "named_port"),
                "field not supported by keel",
            ))
        }
        None => {
            return Err(ConfigError::field(
                port_path,
                format!("missing; the address {ip} needs a port"),
            ))
        }
    };
    let port = u16::try_from(port).map_err(|_| {
        ConfigError::field(&port_path, format!("{port} is not a port (at most 65535)"))
    })?;
    if port == 0 && ports == PortRule::NonZero {
        return Err(ConfigError::field(
            port_path,
            "port 0 cannot be connected to; give the endpoint's port",
        ));
    }
    let protocol = match core::socket_address::Protocol::try_from(socket.protocol) {
        Ok(core::socket_address::Protocol::Tcp) => model::Protocol::Tcp,
        Ok(core::socket_address::Protocol::Udp) => model::Protocol::Udp,
        Err(_) => {
            return Err(ConfigError::field(
                join(&socket_path, "protocol"),
                format!("unknown protocol {}; expected TCP or UDP", socket.protocol),
            ))
        }
    };
    Ok((SocketAddr::new(ip, port), protocol))
}

thread_local! {
    /// Whether [`known_cluster`] checks (false inside a route table with
    /// `validate_clusters: false`).
    static VALIDATE_CLUSTERS: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Sets whether cluster names are validated while converting one route table; the
/// previous setting comes back when the guard drops. (A guard rather than a parameter
/// through every route conversion function.)
struct ClusterValidation(bool);

impl ClusterValidation {
    fn set(validate: bool) -> ClusterValidation {
        ClusterValidation(VALIDATE_CLUSTERS.with(|v| v.replace(validate)))
    }
}

impl Drop for ClusterValidation {
    fn drop(&mut self) {
        VALIDATE_CLUSTERS.with(|v| v.set(self.0));
    }
}

/// Checks that `name` (at `path`) is one of `clusters`, as Envoy does for tcp_proxy and
/// for a route table given inline (`validate_clusters` defaults to true there; with
/// false, a route may name a cluster that does not exist and answers 503 NC).
fn known_cluster(name: &str, path: &str, clusters: &[model::Cluster]) -> Result<()> {
    if !VALIDATE_CLUSTERS.with(|v| v.get()) || clusters.iter().any(|c| c.name == name) {
        return Ok(());
    }
    let defined = if clusters.is_empty() {
        "no clusters are defined in static_resources.clusters".to_string()
    } else {
        let names: Vec<_> = clusters.iter().map(|c| format!("\"{}\"", c.name)).collect();
        format!("defined clusters: {}", names.join(", "))
    };
    Err(ConfigError::field(
        path,
        format!("unknown cluster \"{name}\" ({defined})"),
    ))
}

/// A timeout that `0s` disables (`None`); `default` when the field is not set.
fn timeout(
    d: Option<&wkt::Duration>,
    default: Option<Duration>,
    path: &str,
) -> Result<Option<Duration>> {
    match d {
        None => Ok(default),
        Some(d) => {
            let d = duration(d, path)?;
            Ok((!d.is_zero()).then_some(d))
        }
    }
}

/// A protobuf duration as a std one; negative durations are errors.
fn duration(d: &wkt::Duration, path: &str) -> Result<Duration> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(ConfigError::field(path, "must not be negative"));
    }
    let nanos = u32::try_from(d.nanos).unwrap_or(0);
    Ok(Duration::new(d.seconds.unsigned_abs(), nanos))
}

/// Decodes the payload of an `Any` whose type URL was already checked.
fn decode_any<T: prost::Message + Default>(any: &wkt::Any, path: &str) -> Result<T> {
    T::decode(any.value.as_slice())
        .map_err(|e| ConfigError::field(path, format!("cannot decode {}: {e}", any.type_url)))
}
