//! The admin HTTP API, with Envoy's endpoints and formats (`/ready`, `/server_info`,
//! `/stats`, `/stats/prometheus`, `/listeners`, `/clusters`, `/config_dump`,
//! `/quitquitquit`, ...) plus keel's own `/keel/kernel`.
//!
//! The server runs on its own thread with its own single-threaded tokio runtime, so a
//! slow admin request can never stall the data plane, and the data plane's load can
//! never make the admin API unresponsive. Everything it shows is read from shared
//! state that the rest of keel publishes: the stats store ([`crate::observe::stats`]),
//! the configuration view ([`Admin::publish`]), the server state
//! ([`Admin::set_state`]) and, when the kernel path is loaded, a read-only view of the
//! BPF maps ([`KernelSource`]). Reads that may block (a lock, BPF syscalls) run on the
//! admin runtime's blocking pool, never on the thread that serves other requests.
//!
//! Endpoints live in a table of [`Handler`]s: [`Admin::with_handler`] adds one (say,
//! an xDS status page) without touching the server.
//!
//! ```text
//! keel::cli ──publish(config)/set_state──> Admin (Arc) <──reads── admin thread (current_thread runtime)
//!           <──────── quit_requested() ─────── POST /quitquitquit
//! ```

mod clusters;
mod config_dump;
mod handlers;
pub mod prometheus;
mod server;
mod server_info;
mod stats;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch;

use crate::datapath::{Datapath, ServiceState};
use crate::model::Bootstrap;
use crate::observe::stats::Stats;
use crate::upstream::Upstreams;

pub use clusters::endpoint_stat_name;
pub use handlers::{AdminRequest, AdminResponse, Handler, HandlerFn};
pub use server_info::CommandLineOptions;

/// Why the admin API could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The admin address cannot be bound.
    #[error(
        "admin: cannot listen on {address}: {source}; change admin.address in the bootstrap \
         or stop whatever holds that port"
    )]
    Bind {
        /// `admin.address`.
        address: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The admin runtime or its thread could not be created.
    #[error("admin: cannot start the admin thread: {0}")]
    Thread(std::io::Error),
}

/// The server's state as Envoy reports it (`envoy.admin.v3.ServerInfo.State`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ServerState {
    /// Serving traffic.
    Live = 0,
    /// Shutting down (or failing health checks); listeners drain.
    Draining = 1,
    /// Start-up has not begun initialising listeners and clusters yet.
    PreInitializing = 2,
    /// Listeners, clusters and the kernel data path are being set up.
    Initializing = 3,
}

impl ServerState {
    /// Envoy's name of the state ("LIVE", "DRAINING", ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Live => "LIVE",
            ServerState::Draining => "DRAINING",
            ServerState::PreInitializing => "PRE_INITIALIZING",
            ServerState::Initializing => "INITIALIZING",
        }
    }

    fn from_u8(value: u8) -> ServerState {
        match value {
            0 => ServerState::Live,
            1 => ServerState::Draining,
            2 => ServerState::PreInitializing,
            _ => ServerState::Initializing,
        }
    }
}

/// What the kernel balances right now, read back from the BPF maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelSnapshot {
    /// The cgroup the programs are attached to.
    pub cgroup: PathBuf,
    /// Services with their backends, weights and active connections.
    pub services: Vec<ServiceState>,
    /// Active connections per endpoint, as counted by the kernel.
    pub endpoint_connections: BTreeMap<SocketAddr, u64>,
    /// Sockets whose destination the kernel rewrote and still remembers.
    pub tracked_sockets: usize,
}

/// A read-only view of the kernel data path: `None` while it is not loaded. Called on
/// the admin runtime's blocking pool, so it may take a lock or make syscalls.
pub type KernelSource = Arc<dyn Fn() -> Option<KernelSnapshot> + Send + Sync>;

/// The kernel data path as `keel::cli` owns it: `None` until loaded (or when the
/// configuration has no kernel-balanced listener), taken out at shutdown.
pub type SharedDatapath = Arc<Mutex<Option<Datapath>>>;

/// A [`KernelSource`] over the data path that `keel::cli` owns. The lock is held only
/// while the maps are read; whoever owns the data path keeps it for updates.
pub fn kernel_source(datapath: SharedDatapath) -> KernelSource {
    Arc::new(move || {
        let guard = datapath.lock().unwrap_or_else(PoisonError::into_inner);
        let datapath = guard.as_ref()?;
        Some(KernelSnapshot {
            cgroup: datapath.cgroup().to_path_buf(),
            services: datapath.state(),
            endpoint_connections: datapath.endpoint_connections(),
            tracked_sockets: datapath.tracked_sockets(),
        })
    })
}

/// The configuration the admin API shows, published whole by whoever changes it.
#[derive(Debug, Clone)]
pub struct ConfigView {
    /// The configuration in force.
    pub bootstrap: Arc<Bootstrap>,
    /// Addresses bound for userspace listeners, by listener name (ports chosen by the
    /// OS are resolved here). Listeners not in the map show their configured address.
    pub listener_addresses: BTreeMap<String, SocketAddr>,
    /// When this configuration was published (`last_updated` in `/config_dump`).
    pub last_updated: SystemTime,
}

impl ConfigView {
    /// Where a listener accepts: its bound address, or the configured one.
    pub fn listener_address(&self, listener: &crate::model::Listener) -> SocketAddr {
        self.listener_addresses
            .get(&listener.name)
            .copied()
            .unwrap_or(listener.address)
    }
}

/// Everything the admin API reads and the few things it may change (the quit signal).
/// Shared between the thread that owns the server and the admin thread.
pub struct Admin {
    options: CommandLineOptions,
    started: SystemTime,
    first_epoch_started: SystemTime,
    state: AtomicU8,
    config: ArcSwap<ConfigView>,
    kernel: Option<KernelSource>,
    upstreams: ArcSwapOption<Upstreams>,
    stats: &'static Stats,
    quit: watch::Sender<bool>,
    handlers: Vec<Handler>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("state", &self.state())
            .field("options", &self.options)
            .field("kernel", &self.kernel.is_some())
            .field("handlers", &self.handlers.len())
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// Admin state for `bootstrap`, started now, in state `PRE_INITIALIZING`, reading
    /// the process-wide stats store, with Envoy's endpoints and keel's.
    pub fn new(bootstrap: Arc<Bootstrap>, options: CommandLineOptions) -> Admin {
        let now = SystemTime::now();
        Admin {
            options,
            started: now,
            first_epoch_started: now,
            state: AtomicU8::new(ServerState::PreInitializing as u8),
            config: ArcSwap::from_pointee(ConfigView {
                bootstrap,
                listener_addresses: BTreeMap::new(),
                last_updated: now,
            }),
            kernel: None,
            upstreams: ArcSwapOption::empty(),
            stats: crate::observe::stats::global(),
            quit: watch::Sender::new(false),
            handlers: handlers::defaults(),
        }
    }

    /// Shows the kernel data path through `source` (`/keel/kernel`, `cx_active` of
    /// kernel-balanced endpoints in `/clusters`).
    pub fn with_kernel(mut self, source: KernelSource) -> Admin {
        self.kernel = Some(source);
        self
    }

    /// Reads `stats` instead of the process-wide store (for tests).
    pub fn with_stats(mut self, stats: &'static Stats) -> Admin {
        self.stats = stats;
        self
    }

    /// Adds an endpoint, or replaces the one with the same path.
    pub fn with_handler(mut self, handler: Handler) -> Admin {
        self.handlers.retain(|h| h.path != handler.path);
        self.handlers.push(handler);
        self
    }

    /// Records the start of the first epoch when keel was restarted in place (so that
    /// `uptime_all_epochs` counts from it).
    pub fn with_first_epoch_started(mut self, at: SystemTime) -> Admin {
        self.first_epoch_started = at;
        self
    }

    /// The state `/ready` and `/server_info` report.
    pub fn state(&self) -> ServerState {
        ServerState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Changes the state `/ready` and `/server_info` report.
    pub fn set_state(&self, state: ServerState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// Publishes the configuration now in force, with the addresses its userspace
    /// listeners are bound to.
    pub fn publish(
        &self,
        bootstrap: Arc<Bootstrap>,
        listener_addresses: BTreeMap<String, SocketAddr>,
    ) {
        self.config.store(Arc::new(ConfigView {
            bootstrap,
            listener_addresses,
            last_updated: SystemTime::now(),
        }));
    }

    /// Publishes the live clusters (hosts with their health flags and counters) that
    /// `/clusters` reads.
    pub fn set_upstreams(&self, upstreams: Option<Arc<Upstreams>>) {
        self.upstreams.store(upstreams);
    }

    /// The live clusters, when published.
    pub fn upstreams(&self) -> Option<Arc<Upstreams>> {
        self.upstreams.load_full()
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<ConfigView> {
        self.config.load_full()
    }

    /// The command line the server runs with.
    pub fn options(&self) -> &CommandLineOptions {
        &self.options
    }

    /// The stats store the API reads.
    pub fn stats(&self) -> &'static Stats {
        self.stats
    }

    /// Reads the kernel data path (blocking: call it from a blocking handler). `None`
    /// when no kernel source was given or the data path is not loaded.
    pub fn kernel(&self) -> Option<KernelSnapshot> {
        self.kernel.as_ref().and_then(|source| source())
    }

    /// Whether a kernel source was given.
    pub fn has_kernel_source(&self) -> bool {
        self.kernel.is_some()
    }

    /// Asks the process to shut down, as SIGTERM does (`POST /quitquitquit`).
    pub fn request_quit(&self) {
        self.quit.send_replace(true);
    }

    /// Resolves once a shutdown was asked for through the admin API.
    pub async fn quit_requested(&self) {
        let mut requested = self.quit.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = requested.wait_for(|quit| *quit).await;
    }

    /// Seconds since this process started and since the first epoch started.
    fn uptime(&self, now: SystemTime) -> (Duration, Duration) {
        let since = |t: SystemTime| now.duration_since(t).unwrap_or_default();
        (since(self.started), since(self.first_epoch_started))
    }

    fn handler(&self, path: &str) -> Option<&Handler> {
        self.handlers.iter().find(|h| h.path == path)
    }
}

/// How long in-flight admin requests may take to finish once the server stops.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// A running admin server. Dropping it (or [`AdminServer::stop`]) stops accepting,
/// lets in-flight requests finish for up to a second, and joins the admin thread.
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminServer {
    /// The address the admin API listens on (the OS's port when the config said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the server and waits for its thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.send_replace(true);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the admin thread panicked");
            }
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Binds `address` (here, so that a taken port fails start-up) and serves the admin
/// API on a new thread with its own single-threaded runtime.
pub fn start(address: SocketAddr, admin: Arc<Admin>) -> Result<AdminServer, AdminError> {
    let bind_error = |source| AdminError::Bind { address, source };
    let listener = std::net::TcpListener::bind(address).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("keel-admin-blocking")
        .build()
        .map_err(AdminError::Thread)?;
    let (stop, stopped) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("keel-admin".into())
        .spawn(move || {
            runtime.block_on(server::serve(listener, admin, stopped));
            // Blocking reads still running (a stuck kernel read) are abandoned.
            runtime.shutdown_timeout(STOP_GRACE);
        })
        .map_err(AdminError::Thread)?;
    tracing::info!(address = %local_addr, "admin API listening");
    Ok(AdminServer {
        local_addr,
        stop,
        thread: Some(thread),
    })
}
