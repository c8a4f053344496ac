//! Listeners served in userspace: bind, accept and run the filter chain.
//!
//! A listener has one or more filter chains; each connection gets the chain its
//! `filter_chain_match` picks ([`chains`]), after the listener filters (tls_inspector,
//! http_inspector) looked at its first bytes ([`inspect`]). A chain is one terminal
//! network filter:
//! - `tcp_proxy`: pick a host of the cluster with its load balancer
//!   ([`crate::upstream`]: health, priorities, DNS discovery), connect within
//!   `connect_timeout`, and copy both ways until either side closes or `idle_timeout`
//!   passes without a byte;
//! - `http_connection_manager`: serve HTTP/1.1 and h2c with
//!   [`crate::http::ConnectionManager`], forwarding through the clusters' connection
//!   pools ([`crate::upstream`]).
//!
//! All listeners share one set of clusters ([`Upstreams`]).
//!
//! Each listener is bound with SO_REUSEPORT once per runtime worker (`--concurrency`),
//! each socket with its own accept loop: the kernel spreads new connections over the
//! sockets, and a connection's task starts on the worker that accepted it. Kernel-balanced listeners are
//! not bound here unless the kernel path is unavailable and the config asked for the
//! userspace fallback.

mod chains;
mod inspect;
mod tcp_proxy;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use self::chains::{ChainSelector, ConnectionFacts};
use self::inspect::InspectError;
use crate::http::{ConnectionManager, HttpError};
use crate::model::listener::ListenerFilters;
use crate::model::{Balancing, Bootstrap, FilterChain, Listener, NetworkFilter, Protocol};
use crate::observe::stats::{self, Counter};
use crate::upstream::{fast_random, Upstreams};

/// How long serving waits for the clusters' first DNS answers.
const CLUSTER_INIT_LIMIT: Duration = Duration::from_secs(5);

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// Binding the address failed.
    #[error("listener {name}: cannot listen on {address}: {source}")]
    Bind {
        /// Listener name.
        name: String,
        /// Its address.
        address: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// An HTTP connection manager could not be built.
    #[error("listener {name}: {source}")]
    Http {
        /// Listener name.
        name: String,
        /// The cause.
        source: Box<HttpError>,
    },
    /// Something the userspace path does not serve yet.
    #[error("listener {name}: {message}")]
    Unsupported {
        /// Listener name.
        name: String,
        /// What and why.
        message: String,
    },
}

/// Running listeners; dropping this stops accepting (open connections finish).
#[derive(Debug, Default)]
pub struct Listeners {
    tasks: Vec<JoinHandle<()>>,
    /// Bound addresses, in listener order (useful when a port was 0).
    pub addresses: Vec<SocketAddr>,
    /// The clusters HTTP listeners send to, with their live hosts (also made when a
    /// cluster is health-checked, so the checkers have hosts to check).
    pub upstreams: Option<Arc<Upstreams>>,
}

impl Listeners {
    /// Number of listeners accepting.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no listener is accepting.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Binds and serves every userspace-balanced listener of `bootstrap`, each with one
/// SO_REUSEPORT socket and accept loop per runtime worker (`--concurrency`), so the
/// kernel spreads new connections over the workers.
pub async fn start(bootstrap: &Bootstrap) -> Result<Listeners, ListenerError> {
    let workers = tokio::runtime::Handle::current()
        .metrics()
        .num_workers()
        .max(1);
    let mut listeners = Listeners::default();
    let mut upstreams: Option<Arc<Upstreams>> = bootstrap
        .clusters
        .iter()
        .any(|c| {
            !c.health_checks.is_empty()
                || c.outlier_detection.is_some()
                || c.discovery != crate::model::Discovery::Static
        })
        .then(|| Arc::new(Upstreams::new(&bootstrap.clusters)));
    if let Some(upstreams) = &upstreams {
        // As Envoy, serve once the clusters have their first hosts (DNS answers).
        if !upstreams.initialized(CLUSTER_INIT_LIMIT).await {
            tracing::warn!("some DNS clusters have no answer yet; serving anyway");
        }
    }
    for listener in &bootstrap.listeners {
        if listener.balancing == Balancing::Kernel {
            continue;
        }
        if listener.protocol == Protocol::Udp {
            return Err(ListenerError::Unsupported {
                name: listener.name.clone(),
                message: "UDP listeners are balanced in the kernel only".into(),
            });
        }
        let mut handler =
            |chain: &FilterChain| chain_handler(listener, chain, bootstrap, &mut upstreams);
        let chains = listener
            .filter_chains
            .iter()
            .map(&mut handler)
            .collect::<Result<Vec<_>, _>>()?;
        let default_chain = listener
            .default_filter_chain
            .as_ref()
            .map(handler)
            .transpose()?;
        let selector = ChainSelector::new(
            listener
                .filter_chains
                .iter()
                .map(|c| c.filter_chain_match.clone())
                .collect(),
        );
        if selector.needs_inspection() && !listener.listener_filters.inspects() {
            tracing::warn!(
                listener = %listener.name,
                "filter chains match on server names or protocols but no tls_inspector or \
                 http_inspector listener filter finds them: those chains match nothing"
            );
        }
        let bind_error = |source| ListenerError::Bind {
            name: listener.name.clone(),
            address: listener.address,
            source,
        };
        let first = bind(listener.address).map_err(bind_error)?;
        let bound = first.local_addr().map_err(bind_error)?;
        let mut sockets = vec![first];
        for _ in 1..workers {
            // Same port as the first (which may have been chosen by the kernel).
            sockets.push(bind(bound).map_err(bind_error)?);
        }
        let matches_anything = listener.filter_chains.len() == 1
            && listener.filter_chains[0].filter_chain_match == Default::default()
            && listener.default_filter_chain.is_none()
            && !listener.listener_filters.inspects();
        let served = Arc::new(ServedListener {
            name: listener.name.clone(),
            matches_anything,
            selector,
            chains,
            default_chain,
            filters: listener.listener_filters,
            no_match: stats::global().counter(&format!(
                "listener.{}.no_filter_chain_match",
                stat_address(bound)
            )),
        });
        tracing::info!(
            listener = %listener.name,
            address = %bound,
            chains = served.chains.len(),
            sockets = sockets.len(),
            "listening"
        );
        listeners.addresses.push(bound);
        for socket in sockets {
            listeners
                .tasks
                .push(tokio::spawn(Arc::clone(&served).accept_loop(socket)));
        }
    }
    listeners.upstreams = upstreams;
    Ok(listeners)
}

/// What one filter chain does with a connection.
#[derive(Debug)]
enum ChainHandler {
    Http(Arc<ConnectionManager>),
    /// One proxy per cluster of the tcp_proxy, with its weight.
    Tcp(Vec<(Arc<tcp_proxy::TcpProxy>, u32)>),
}

/// Builds the handler of one chain; HTTP chains share one set of upstreams.
fn chain_handler(
    listener: &Listener,
    chain: &FilterChain,
    bootstrap: &Bootstrap,
    upstreams: &mut Option<Arc<Upstreams>>,
) -> Result<ChainHandler, ListenerError> {
    let unsupported = |message: &str| ListenerError::Unsupported {
        name: listener.name.clone(),
        message: message.to_string(),
    };
    match chain.filters.as_slice() {
        [NetworkFilter::TcpProxy(config)] => {
            let single = [(config.cluster.clone(), 1)];
            let split = if config.weighted_clusters.is_empty() {
                &single[..]
            } else {
                &config.weighted_clusters[..]
            };
            let upstreams =
                upstreams.get_or_insert_with(|| Arc::new(Upstreams::new(&bootstrap.clusters)));
            let proxies = split
                .iter()
                .map(|(name, weight)| {
                    let cluster = upstreams
                        .get(name)
                        .cloned()
                        .ok_or_else(|| unsupported("tcp_proxy names an unknown cluster"))?;
                    let proxy = tcp_proxy::TcpProxy::new(config.clone(), cluster)
                        .with_buffer_limit(listener.buffer_limit);
                    Ok((Arc::new(proxy), *weight))
                })
                .collect::<Result<Vec<_>, ListenerError>>()?;
            Ok(ChainHandler::Tcp(proxies))
        }
        [NetworkFilter::HttpConnectionManager(config)] => {
            let upstreams =
                upstreams.get_or_insert_with(|| Arc::new(Upstreams::new(&bootstrap.clusters)));
            let manager = ConnectionManager::new(Arc::clone(config), Arc::clone(upstreams))
                .map_err(|source| ListenerError::Http {
                    name: listener.name.clone(),
                    source: Box::new(source),
                })?
                .with_buffer_limit(listener.buffer_limit);
            Ok(ChainHandler::Http(Arc::new(manager)))
        }
        _ => Err(unsupported(
            "a filter chain is a single tcp_proxy or http_connection_manager filter",
        )),
    }
}

/// A listener being served: its chains and how to pick one.
#[derive(Debug)]
struct ServedListener {
    name: String,
    selector: ChainSelector,
    chains: Vec<ChainHandler>,
    default_chain: Option<ChainHandler>,
    filters: ListenerFilters,
    /// One chain whose match is empty and no listener filter: every connection goes to
    /// it without a look.
    matches_anything: bool,
    /// `listener.<address>.no_filter_chain_match`.
    no_match: Counter,
}

impl ServedListener {
    /// Accepts on one socket until the task is aborted; each connection runs as a
    /// task of its own.
    async fn accept_loop(self: Arc<Self>, socket: tokio::net::TcpListener) {
        loop {
            match socket.accept().await {
                Ok((stream, peer)) => {
                    tokio::spawn(Arc::clone(&self).serve(stream, peer));
                }
                Err(e) => {
                    tracing::warn!(listener = %self.name, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    /// Runs the listener filters, picks the chain and hands the connection to it.
    async fn serve(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let handler = if self.matches_anything {
            &self.chains[0]
        } else {
            let mut facts = ConnectionFacts {
                destination: stream.local_addr().ok(),
                source: Some(peer),
                transport_protocol: "raw_buffer",
                ..ConnectionFacts::default()
            };
            if self.filters.inspects() {
                if let Err(e) = inspect::inspect(&stream, &self.filters, &mut facts).await {
                    if !(e == InspectError::Timeout && self.filters.continue_on_timeout) {
                        tracing::debug!(listener = %self.name, %peer, "listener filters: {e:?}");
                        return;
                    }
                }
            }
            match self.selector.select(&facts) {
                Some(i) => &self.chains[i],
                None => match &self.default_chain {
                    Some(chain) => chain,
                    None => {
                        self.no_match.inc();
                        tracing::debug!(listener = %self.name, %peer, "no filter chain matches");
                        return;
                    }
                },
            }
        };
        match handler {
            ChainHandler::Http(manager) => Arc::clone(manager).serve_connection(stream, peer).await,
            ChainHandler::Tcp(proxies) => pick_weighted(proxies).handle(stream, peer).await,
        }
    }
}

/// One of `choices`, at random in proportion to the weights (all ≥ 1).
fn pick_weighted<T>(choices: &[(T, u32)]) -> &T {
    if let [(only, _)] = choices {
        return only;
    }
    let total: u64 = choices.iter().map(|(_, w)| u64::from(*w)).sum();
    let mut point = fast_random() % total.max(1);
    for (choice, weight) in choices {
        if point < u64::from(*weight) {
            return choice;
        }
        point -= u64::from(*weight);
    }
    &choices[choices.len() - 1].0
}

/// A listener's address as Envoy writes it in stat names: `:` becomes `_`
/// (`0.0.0.0_8080`, `[__1]_8080`).
fn stat_address(address: SocketAddr) -> String {
    address.to_string().replace(':', "_")
}

/// A listening socket with SO_REUSEADDR, SO_REUSEPORT (so workers and a restarted
/// keel can share the port) and IP_FREEBIND (a service VIP need not be local).
fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    if address.is_ipv4() {
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::IpFreebind, &true)
            .map_err(std::io::Error::from)?;
    }
    socket.bind(address)?;
    socket.listen(1024)
}
