//! From the validated model to what the kernel balances: one [`KernelService`] per
//! listener with `balancing: KERNEL`, with its backends and lookup table computed
//! here, off any lock and before a single map is touched.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use keel_common::{
    policy, protocol, Address, Backend, MAX_BACKENDS_PER_SERVICE, MAX_LB_TABLE_SIZE,
};

use crate::cluster::{maglev_table, random_table, round_robin_table, MAX_TABLE_LEN};
use crate::model::{Balancing, Bootstrap, Discovery, LbPolicy, NetworkFilter, Protocol};

/// A service the kernel balances: everything one update of the maps needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelService {
    /// The listener it comes from.
    pub listener: String,
    /// The service address (the listener's VIP, port and protocol).
    pub address: Address,
    /// One of [`keel_common::policy`].
    pub policy: u8,
    /// Backends in slot order.
    pub backends: Vec<Backend>,
    /// Lookup table of slots (empty for least connections).
    pub table: Vec<u32>,
}

/// Why a listener cannot be balanced in the kernel. The message names the field.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PlanError {
    /// Field path in the bootstrap, e.g. `static_resources.listeners[0].filter_chains`.
    pub path: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// Converts a socket address to the kernel's key form (IPv4 stored IPv4-mapped).
pub fn kernel_address(addr: SocketAddr, proto: Protocol) -> Address {
    let v6 = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    Address {
        addr: v6.octets(),
        port_be: addr.port().to_be(),
        protocol: match proto {
            Protocol::Tcp => protocol::TCP,
            Protocol::Udp => protocol::UDP,
        },
        _pad: 0,
    }
}

/// The socket address held in a kernel key.
pub fn socket_address(addr: &Address) -> SocketAddr {
    let v6 = Ipv6Addr::from(addr.addr);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, u16::from_be(addr.port_be))
}

/// The kernel services of a configuration, or the first reason one cannot be built.
pub fn kernel_services(bootstrap: &Bootstrap) -> Result<Vec<KernelService>, PlanError> {
    let mut services = Vec::new();
    for (li, listener) in bootstrap.listeners.iter().enumerate() {
        if listener.balancing != Balancing::Kernel {
            continue;
        }
        let at = format!("static_resources.listeners[{li}]");
        let err = |field: &str, message: String| PlanError {
            path: format!("{at}{field}"),
            message,
        };
        let [chain] = listener.filter_chains.as_slice() else {
            return Err(err(
                ".filter_chains",
                format!(
                    "a kernel-balanced listener has exactly one filter chain (found {})",
                    listener.filter_chains.len()
                ),
            ));
        };
        let [NetworkFilter::TcpProxy(tcp_proxy)] = chain.filters.as_slice() else {
            return Err(err(
                ".filter_chains[0].filters",
                "a kernel-balanced listener's chain is a single tcp_proxy filter".into(),
            ));
        };
        if !tcp_proxy.weighted_clusters.is_empty() {
            return Err(err(
                ".filter_chains[0].filters[0].typed_config.weighted_clusters",
                "the kernel balances over one cluster per service; use cluster, or balance \
                 this listener in userspace (leave out the keel metadata)"
                    .into(),
            ));
        }
        let (ci, cluster) = bootstrap
            .clusters
            .iter()
            .enumerate()
            .find(|(_, c)| c.name == tcp_proxy.cluster)
            .ok_or_else(|| {
                err(
                    ".filter_chains[0].filters[0].typed_config.cluster",
                    format!("unknown cluster {:?}", tcp_proxy.cluster),
                )
            })?;
        let cluster_at = format!("static_resources.clusters[{ci}]");
        let cluster_err = |field: &str, message: String| PlanError {
            path: format!("{cluster_at}{field}"),
            message,
        };
        let discovery = match &cluster.discovery {
            Discovery::Static => None,
            Discovery::StrictDns(_) => Some("STRICT_DNS"),
            Discovery::LogicalDns(_) => Some("LOGICAL_DNS"),
            Discovery::OriginalDst(_) => Some("ORIGINAL_DST"),
        };
        if let Some(discovery) = discovery {
            return Err(cluster_err(
                ".type",
                format!(
                    "a kernel-balanced listener's cluster must be STATIC (the kernel tables are \
                     built from its endpoints), but it is {discovery}; balance this listener in \
                     userspace"
                ),
            ));
        }
        if cluster.localities.iter().any(|l| l.priority != 0) {
            return Err(cluster_err(
                ".load_assignment.endpoints",
                "priorities are not available in the kernel; give every locality priority 0, \
                 or balance this listener in userspace"
                    .into(),
            ));
        }
        if cluster.endpoints.len() as u32 > MAX_BACKENDS_PER_SERVICE {
            return Err(cluster_err(
                ".load_assignment",
                format!(
                    "{} endpoints; a kernel-balanced cluster has at most {MAX_BACKENDS_PER_SERVICE}",
                    cluster.endpoints.len()
                ),
            ));
        }
        let vip_is_v4 = listener.address.is_ipv4();
        let mut backends = Vec::with_capacity(cluster.endpoints.len());
        for (ei, endpoint) in cluster.endpoints.iter().enumerate() {
            if endpoint.address.is_ipv4() != vip_is_v4 {
                return Err(cluster_err(
                    &format!(".load_assignment.endpoints[*].lb_endpoints[{ei}]"),
                    format!(
                        "endpoint {} is not of the same IP family as the listener address {}",
                        endpoint.address, listener.address
                    ),
                ));
            }
            backends.push(Backend {
                address: kernel_address(endpoint.address, listener.protocol),
                weight: endpoint.weight.max(1),
            });
        }
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        let (policy, table) = match cluster.lb_policy {
            LbPolicy::RoundRobin => (
                policy::ROUND_ROBIN,
                round_robin_table(&weights, MAX_TABLE_LEN),
            ),
            LbPolicy::Random => (policy::RANDOM, random_table(&weights, MAX_TABLE_LEN)),
            LbPolicy::LeastRequest { .. } => (policy::LEAST_CONNECTIONS, Vec::new()),
            LbPolicy::Maglev { table_size } => {
                if table_size > MAX_LB_TABLE_SIZE || table_size < cluster.endpoints.len() as u32 {
                    return Err(cluster_err(
                        ".maglev_lb_config.table_size",
                        format!(
                            "{table_size} is out of range for the kernel: a prime above the \
                             endpoint count and at most {MAX_LB_TABLE_SIZE}"
                        ),
                    ));
                }
                (policy::MAGLEV, maglev_table(&cluster.endpoints, table_size))
            }
            LbPolicy::RingHash { .. } => {
                return Err(cluster_err(
                    ".lb_policy",
                    "RING_HASH is not available in the kernel; use MAGLEV for consistent \
                     hashing there, or balance this listener in userspace"
                        .into(),
                ))
            }
            LbPolicy::ClusterProvided => unreachable!("ORIGINAL_DST clusters are rejected above"),
        };
        services.push(KernelService {
            listener: listener.name.clone(),
            address: kernel_address(listener.address, listener.protocol),
            policy,
            backends,
            table,
        });
    }
    Ok(services)
}
