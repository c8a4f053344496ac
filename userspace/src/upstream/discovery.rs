//! Service discovery: the background tasks that keep a cluster's hosts current.
//!
//! - STRICT_DNS: every endpoint's hostname is resolved every `dns_refresh_rate` (or,
//!   with `respect_dns_ttl`, when the shortest TTL of the answers expires); each
//!   address is a host with the endpoint's weight, priority and locality. A failed
//!   resolution keeps that endpoint's previous hosts and retries after the
//!   `dns_failure_refresh_rate` backoff (or the refresh rate).
//! - LOGICAL_DNS: the one endpoint's first address is the one host.
//! - ORIGINAL_DST: hosts are made on demand by the picker
//!   ([`ClusterUpstream::pick`]); this task removes those that served no request
//!   during a whole `cleanup_interval`.
//!
//! Results are published with [`ClusterUpstream::set_hosts_in_localities`], keeping the
//! existing `Arc<Host>` of every address that stays, so its pool, counters and health
//! survive. Nothing here runs on the request path: a request sees the last published
//! set. The tasks hold the cluster weakly and end when it is dropped.
//!
//! Names are resolved with hickory-resolver, reading `/etc/hosts` first (so
//! `localhost` works without a name server) and then the name servers of
//! `/etc/resolv.conf`, or those of the cluster's `typed_dns_resolver_config`. Its cache
//! is cleared before each round so that every refresh asks again, as Envoy does.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use tokio::task::JoinHandle;

use super::lb::fast_random;
use super::{ClusterUpstream, Host, HostLocalities};
use crate::model::{self, Discovery, DnsLookupFamily, EndpointAddress};

/// Why a name could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The resolver failed (timeout, refused, unreachable name server).
    #[error("resolving {name}: {message}")]
    Lookup {
        /// The hostname.
        name: String,
        /// The resolver's error.
        message: String,
    },
}

/// The addresses a name resolved to, and how long they may be kept.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Resolved {
    /// The addresses, in the resolver's order.
    pub(crate) addresses: Vec<IpAddr>,
    /// The shortest TTL of the answer, if it had records.
    pub(crate) ttl: Option<Duration>,
}

/// A name resolver (hickory in production, a table in tests).
pub(crate) trait Resolve: Send + Sync + 'static {
    /// Resolves `name`; no records is `Ok` with no address.
    fn resolve<'a>(
        &'a self,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Resolved, DnsError>> + Send + 'a>>;
}

/// The discovery tasks of `cluster` on `runtime` (none for a STATIC cluster).
pub(super) fn start(
    runtime: &tokio::runtime::Handle,
    upstream: &Arc<ClusterUpstream>,
    cluster: &model::Cluster,
) -> Option<JoinHandle<()>> {
    match &cluster.discovery {
        Discovery::Static => None,
        Discovery::StrictDns(dns) | Discovery::LogicalDns(dns) => {
            let logical = matches!(cluster.discovery, Discovery::LogicalDns(_));
            let targets = dns_targets(cluster);
            let (cluster, dns) = (Arc::downgrade(upstream), dns.clone());
            Some(runtime.spawn(async move {
                // Built inside the runtime, which its name-server connections use.
                let resolver: Arc<dyn Resolve> = Arc::new(HickoryResolver::new(&dns));
                dns_loop(cluster, targets, dns, logical, resolver).await
            }))
        }
        Discovery::OriginalDst(settings) => Some(runtime.spawn(original_dst_cleanup(
            Arc::downgrade(upstream),
            settings.cleanup_interval,
        ))),
    }
}

/// One endpoint to resolve.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Its locality index (in `load_assignment.endpoints`).
    locality: u32,
    priority: u32,
    weight: u32,
    name: String,
    port: u16,
}

fn dns_targets(cluster: &model::Cluster) -> Vec<Target> {
    let mut targets = Vec::new();
    for (index, locality) in cluster.localities.iter().enumerate() {
        for endpoint in &locality.endpoints {
            let (name, port) = match &endpoint.address {
                EndpointAddress::Dns { hostname, port } => (hostname.clone(), *port),
                EndpointAddress::Socket(address) => (address.ip().to_string(), address.port()),
            };
            targets.push(Target {
                locality: index as u32,
                priority: locality.priority,
                weight: endpoint.weight,
                name,
                port,
            });
        }
    }
    targets
}

/// Resolves `targets` forever (until the cluster is dropped), publishing each change.
pub(crate) async fn dns_loop(
    cluster: Weak<ClusterUpstream>,
    targets: Vec<Target>,
    dns: model::Dns,
    logical: bool,
    resolver: Arc<dyn Resolve>,
) {
    // The last good addresses of each target.
    let mut last: Vec<Vec<SocketAddr>> = vec![Vec::new(); targets.len()];
    let mut failures = 0u32;
    loop {
        let mut failed = false;
        let mut ttl: Option<Duration> = None;
        for (i, target) in targets.iter().enumerate() {
            match resolver.resolve(&target.name).await {
                Ok(resolved) => {
                    let mut addresses: Vec<SocketAddr> = resolved
                        .addresses
                        .iter()
                        .map(|&ip| SocketAddr::new(ip, target.port))
                        .collect();
                    if logical {
                        addresses.truncate(1);
                    }
                    last[i] = addresses;
                    if let Some(t) = resolved.ttl {
                        ttl = Some(ttl.map_or(t, |min: Duration| min.min(t)));
                    }
                }
                Err(e) => {
                    tracing::debug!(name = %target.name, "DNS resolution failed: {e}");
                    failed = true;
                }
            }
        }
        let Some(upstream) = cluster.upgrade() else {
            return;
        };
        publish(&upstream, &targets, &last);
        upstream.mark_initialized();
        drop(upstream);

        failures = if failed {
            failures.saturating_add(1)
        } else {
            0
        };
        let wait = match (failed, dns.failure_refresh) {
            (true, Some((base, max))) => {
                // Jittered exponential backoff, as Envoy's.
                let ceiling = base
                    .saturating_mul(1u32 << (failures - 1).min(20))
                    .min(max)
                    .max(Duration::from_millis(1));
                Duration::from_nanos(fast_random() % ceiling.as_nanos().max(1) as u64)
                    .max(Duration::from_millis(1))
            }
            _ => match ttl {
                Some(ttl) if dns.respect_ttl && !ttl.is_zero() => ttl,
                _ => dns.refresh_rate,
            },
        };
        tokio::time::sleep(wait).await;
    }
}

/// Publishes the hosts of `resolved` (per target) when they differ from the current
/// ones, reusing the current `Arc<Host>` of each address that stays.
fn publish(upstream: &ClusterUpstream, targets: &[Target], resolved: &[Vec<SocketAddr>]) {
    let current = upstream.hosts();
    let mut existing: HashMap<(SocketAddr, u32), &Arc<Host>> = HashMap::new();
    for (i, host) in current.hosts.iter().enumerate() {
        let locality = current.localities.of_host.get(i).copied().unwrap_or(0);
        existing.insert((host.address, locality), host);
    }
    let mut hosts = Vec::new();
    let mut localities = HostLocalities {
        of_host: Vec::new(),
        weights: current.localities.weights.clone(),
    };
    let mut seen = std::collections::HashSet::new();
    for (target, addresses) in targets.iter().zip(resolved) {
        for &address in addresses {
            // Two endpoints resolving to one address in a locality: one host.
            if !seen.insert((address, target.locality)) {
                continue;
            }
            let host = match existing.get(&(address, target.locality)) {
                Some(host) if host.weight == target.weight && host.priority == target.priority => {
                    Arc::clone(host)
                }
                _ => Arc::new(Host::new(address, target.weight, target.priority)),
            };
            hosts.push(host);
            localities.of_host.push(target.locality);
        }
    }
    let same = hosts.len() == current.hosts.len()
        && hosts
            .iter()
            .zip(&current.hosts)
            .all(|(a, b)| Arc::ptr_eq(a, b))
        && localities.of_host == current.localities.of_host;
    if same {
        return;
    }
    drop(current);
    tracing::debug!(cluster = %upstream.name(), hosts = hosts.len(), "DNS hosts changed");
    upstream.set_hosts_in_localities(hosts, localities);
}

/// Removes ORIGINAL_DST hosts that took no request during a whole interval.
async fn original_dst_cleanup(cluster: Weak<ClusterUpstream>, interval: Duration) {
    // Requests counted per host at the last sweep.
    let mut seen: HashMap<SocketAddr, u64> = HashMap::new();
    loop {
        tokio::time::sleep(interval).await;
        let Some(upstream) = cluster.upgrade() else {
            return;
        };
        sweep_original_dst(&upstream, &mut seen);
    }
}

/// One cleanup round: keeps the hosts used since the previous round (or busy now).
pub(crate) fn sweep_original_dst(upstream: &ClusterUpstream, seen: &mut HashMap<SocketAddr, u64>) {
    use std::sync::atomic::Ordering;
    let _writer = upstream.update.lock().unwrap_or_else(|e| e.into_inner());
    let current = upstream.hosts();
    let mut keep = Vec::with_capacity(current.hosts.len());
    let mut next = HashMap::with_capacity(current.hosts.len());
    for host in &current.hosts {
        let total = host.stats.rq_total.load(Ordering::Relaxed);
        let busy = host.active.load(Ordering::Relaxed) > 0;
        // A host made since the last round has no entry: it is kept once.
        let used = seen
            .get(&host.address)
            .is_none_or(|&before| before != total);
        if used || busy {
            next.insert(host.address, total);
            keep.push(Arc::clone(host));
        }
    }
    *seen = next;
    if keep.len() != current.hosts.len() {
        let localities = Arc::clone(&current.localities);
        drop(current);
        upstream.hosts.store(Arc::new(super::HostSet::new(
            &upstream.lb_settings,
            keep,
            localities,
        )));
    }
}

/// See [`ClusterUpstream::original_destination`].
pub(super) fn original_destination(
    settings: &model::OriginalDst,
    headers: &http::HeaderMap,
    downstream_local: SocketAddr,
) -> Option<SocketAddr> {
    let mut destination = downstream_local;
    if settings.use_http_header {
        if let Some(value) = headers.get(&settings.header_name) {
            // An invalid header fails the pick (Envoy counts original_dst_host_invalid).
            destination = value.to_str().ok()?.trim().parse().ok()?;
        }
    }
    if let Some(port) = settings.port_override {
        destination.set_port(port);
    }
    Some(destination)
}

/// hickory-resolver with `/etc/hosts`, no cache between rounds.
struct HickoryResolver {
    resolver: TokioResolver,
}

impl HickoryResolver {
    fn new(dns: &model::Dns) -> HickoryResolver {
        let (config, mut options) = if dns.resolvers.is_empty() {
            match hickory_resolver::system_conf::read_system_conf() {
                Ok(system) => system,
                Err(e) => {
                    tracing::warn!("cannot read the system DNS configuration ({e}); resolving from /etc/hosts only");
                    (ResolverConfig::new(), ResolverOpts::default())
                }
            }
        } else {
            let mut config = ResolverConfig::new();
            for &address in &dns.resolvers {
                config.add_name_server(NameServerConfig::new(address, Protocol::Udp));
                config.add_name_server(NameServerConfig::new(address, Protocol::Tcp));
            }
            (config, ResolverOpts::default())
        };
        options.ip_strategy = match dns.lookup_family {
            DnsLookupFamily::Auto => LookupIpStrategy::Ipv6thenIpv4,
            DnsLookupFamily::V4Only => LookupIpStrategy::Ipv4Only,
            DnsLookupFamily::V6Only => LookupIpStrategy::Ipv6Only,
            DnsLookupFamily::V4Preferred => LookupIpStrategy::Ipv4thenIpv6,
            DnsLookupFamily::All => LookupIpStrategy::Ipv4AndIpv6,
        };
        options.use_hosts_file = ResolveHosts::Always;
        options.cache_size = 0;
        let resolver =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
                .with_options(options)
                .build();
        HickoryResolver { resolver }
    }
}

impl Resolve for HickoryResolver {
    fn resolve<'a>(
        &'a self,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Resolved, DnsError>> + Send + 'a>> {
        Box::pin(async move {
            self.resolver.clear_cache();
            match self.resolver.lookup_ip(name).await {
                Ok(lookup) => {
                    let ttl = lookup
                        .valid_until()
                        .saturating_duration_since(std::time::Instant::now());
                    Ok(Resolved {
                        addresses: lookup.iter().collect(),
                        ttl: Some(ttl),
                    })
                }
                Err(e) if e.is_no_records_found() => Ok(Resolved::default()),
                Err(e) => Err(DnsError::Lookup {
                    name: name.to_owned(),
                    message: e.to_string(),
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests;
