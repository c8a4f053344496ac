//! Listeners served in userspace: bind, accept and run the filter chain.
//!
//! A chain is one terminal network filter:
//! - `tcp_proxy`: pick an endpoint of the cluster with the same tables the kernel
//!   uses ([`crate::cluster`]), connect within `connect_timeout`, and copy both ways
//!   until either side closes or `idle_timeout` passes without a byte;
//! - `http_connection_manager`: serve HTTP/1.1 and h2c with
//!   [`crate::http::ConnectionManager`], forwarding through the clusters' connection
//!   pools ([`crate::upstream`]), which all HTTP listeners share.
//!
//! Each listener is bound with SO_REUSEPORT and served by one accept loop whose
//! connections run as tasks on the runtime's workers. Kernel-balanced listeners are
//! not bound here unless the kernel path is unavailable and the config asked for the
//! userspace fallback.

mod tcp_proxy;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpSocket;
use tokio::task::JoinHandle;

use crate::http::{ConnectionManager, HttpError};
use crate::model::{Balancing, Bootstrap, NetworkFilter, Protocol};
use crate::upstream::Upstreams;

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
        source: HttpError,
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

/// Binds and serves every userspace-balanced listener of `bootstrap`.
pub async fn start(bootstrap: &Bootstrap) -> Result<Listeners, ListenerError> {
    let mut listeners = Listeners::default();
    let mut upstreams: Option<Arc<Upstreams>> = bootstrap
        .clusters
        .iter()
        .any(|c| !c.health_checks.is_empty() || c.outlier_detection.is_some())
        .then(|| Arc::new(Upstreams::new(&bootstrap.clusters)));
    for listener in &bootstrap.listeners {
        if listener.balancing == Balancing::Kernel {
            continue;
        }
        let unsupported = |message: &str| ListenerError::Unsupported {
            name: listener.name.clone(),
            message: message.to_string(),
        };
        if listener.protocol == Protocol::Udp {
            return Err(unsupported("UDP listeners are balanced in the kernel only"));
        }
        let [chain] = listener.filter_chains.as_slice() else {
            return Err(unsupported(
                "several filter chains need filter_chain_match, which keel does not serve yet",
            ));
        };
        let bind_error = |source| ListenerError::Bind {
            name: listener.name.clone(),
            address: listener.address,
            source,
        };
        let config = match chain.filters.as_slice() {
            [NetworkFilter::TcpProxy(config)] => config,
            [NetworkFilter::HttpConnectionManager(config)] => {
                let upstreams =
                    upstreams.get_or_insert_with(|| Arc::new(Upstreams::new(&bootstrap.clusters)));
                let manager = ConnectionManager::new(Arc::clone(config), Arc::clone(upstreams))
                    .map_err(|source| ListenerError::Http {
                        name: listener.name.clone(),
                        source,
                    })?;
                let socket = bind(listener.address).map_err(bind_error)?;
                let bound = socket.local_addr().map_err(bind_error)?;
                tracing::info!(
                    listener = %listener.name,
                    address = %bound,
                    stat_prefix = %config.stat_prefix,
                    "listening (HTTP)"
                );
                listeners.addresses.push(bound);
                listeners
                    .tasks
                    .push(tokio::spawn(Arc::new(manager).serve(socket)));
                continue;
            }
            _ => {
                return Err(unsupported(
                    "a filter chain is a single tcp_proxy or http_connection_manager filter",
                ))
            }
        };
        let cluster = bootstrap
            .cluster(&config.cluster)
            .ok_or_else(|| unsupported("tcp_proxy names an unknown cluster"))?;
        let socket = bind(listener.address).map_err(bind_error)?;
        let bound = socket.local_addr().map_err(bind_error)?;
        let proxy = Arc::new(tcp_proxy::TcpProxy::new(config.clone(), cluster));
        tracing::info!(listener = %listener.name, address = %bound, cluster = %cluster.name, "listening");
        listeners.addresses.push(bound);
        listeners.tasks.push(tokio::spawn(proxy.serve(socket)));
    }
    listeners.upstreams = upstreams;
    Ok(listeners)
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
