//! The `keel` command line: Envoy's flags, plus keel's own few.
//!
//! `keel -c bootstrap.yaml` serves the configuration until SIGINT or SIGTERM;
//! `--mode validate` checks it and exits 0 or 1, as Envoy does. `keel demo` runs the
//! self-contained demonstration of the kernel data path.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};

use crate::datapath::{self, Datapath};
use crate::model::{Balancing, Bootstrap, WhenUnavailable};
use crate::{admin, config, listener};

/// keel: a per-node service-mesh proxy with an eBPF-accelerated data path.
#[derive(Debug, Parser)]
#[command(name = "keel", version, about, long_about = None)]
pub struct Cli {
    /// Path to an Envoy v3 bootstrap file (YAML or JSON).
    #[arg(short = 'c', long = "config-path")]
    pub config_path: Option<PathBuf>,
    /// YAML merged over the bootstrap file (or used alone).
    #[arg(long = "config-yaml")]
    pub config_yaml: Option<String>,
    /// serve, validate (check the config and exit 0 or 1), or init_only.
    #[arg(long, value_enum, default_value_t = Mode::Serve)]
    pub mode: Mode,
    /// Log level: trace, debug, info, warn, error, critical, off.
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    pub log_level: String,
    /// Per-component levels, `component:level,component:level`.
    #[arg(long = "component-log-level")]
    pub component_log_level: Option<String>,
    /// Worker threads (default: the number of CPUs).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Seconds to drain connections on shutdown or hot restart.
    #[arg(long = "drain-time-s", default_value_t = 600)]
    pub drain_time_s: u64,
    /// Overrides `node.cluster`.
    #[arg(long = "service-cluster")]
    pub service_cluster: Option<String>,
    /// Overrides `node.id`.
    #[arg(long = "service-node")]
    pub service_node: Option<String>,
    /// keel: cgroup v2 folder to attach the kernel hooks to (overrides keel.v1.Datapath).
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// keel: bpffs folder for pinned maps (overrides keel.v1.Datapath).
    #[arg(long)]
    pub bpffs: Option<PathBuf>,
    /// Optional subcommand.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Envoy's `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Serve the configuration.
    Serve,
    /// Check the configuration and exit.
    Validate,
    /// Initialise (load the data path, bind listeners) and exit.
    #[value(name = "init_only")]
    InitOnly,
}

/// keel's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the self-contained demo of kernel load balancing (needs root).
    Demo,
}

/// What the binary does for the process that this library cannot: it forbids `unsafe`,
/// and calls into the C library need it.
#[derive(Debug, Clone, Copy)]
pub struct Process {
    /// Returns the allocator's free memory to the kernel. Called once start-up is done
    /// (configuration read, listeners bound, first health checks done), so that the
    /// heap freed by start-up does not stay resident for the life of the process.
    pub release_free_memory: fn(),
}

/// Entry point of the binary.
pub fn main(process: Process) -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log_level, cli.component_log_level.as_deref())?;
    if let Some(Command::Demo) = cli.command {
        return crate::demo::run();
    }
    let bootstrap = load_bootstrap(&cli)?;
    let kernel_services = datapath::kernel_services(&bootstrap);
    if cli.mode == Mode::Validate {
        return match kernel_services {
            Ok(_) => {
                println!("configuration '{}' OK", config_name(&cli));
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        };
    }
    let kernel_services = kernel_services?;
    let options = command_line_options(&cli);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.concurrency.unwrap_or_else(num_cpus).max(1))
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(
        cli.mode,
        bootstrap,
        kernel_services,
        options,
        process,
    ))
}

/// The command line as the admin API's `/server_info` reports it.
fn command_line_options(cli: &Cli) -> admin::CommandLineOptions {
    admin::CommandLineOptions {
        concurrency: cli.concurrency.unwrap_or_else(num_cpus).max(1) as u32,
        config_path: cli
            .config_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        config_yaml: cli.config_yaml.clone().unwrap_or_default(),
        log_level: cli.log_level.clone(),
        component_log_level: cli.component_log_level.clone().unwrap_or_default(),
        service_cluster: cli.service_cluster.clone().unwrap_or_default(),
        service_node: cli.service_node.clone().unwrap_or_default(),
        drain_time: std::time::Duration::from_secs(cli.drain_time_s),
        mode: match cli.mode {
            Mode::Serve => "Serve",
            Mode::Validate => "Validate",
            Mode::InitOnly => "InitOnly",
        }
        .into(),
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn config_name(cli: &Cli) -> String {
    cli.config_path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "--config-yaml".into())
}

/// Reads the bootstrap and applies the command-line overrides.
fn load_bootstrap(cli: &Cli) -> anyhow::Result<Bootstrap> {
    let mut bootstrap = match (&cli.config_path, &cli.config_yaml) {
        (Some(path), yaml) => config::load_file(path, yaml.as_deref()),
        (None, Some(yaml)) => config::load_str(yaml, config::Format::Yaml),
        (None, None) => bail!("no configuration: pass -c FILE or --config-yaml YAML"),
    };
    config::release_descriptor_pool();
    if cli.mode == Mode::Validate {
        if let Err(e) = &bootstrap {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
    let bootstrap = bootstrap.as_mut().map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(cluster) = &cli.service_cluster {
        bootstrap.node.cluster = cluster.clone();
    }
    if let Some(node) = &cli.service_node {
        bootstrap.node.id = node.clone();
    }
    if let Some(cgroup) = &cli.cgroup {
        bootstrap.datapath.cgroup_path = Some(cgroup.clone());
    }
    if let Some(bpffs) = &cli.bpffs {
        bootstrap.datapath.bpffs_path = bpffs.clone();
    }
    Ok(bootstrap.clone())
}

/// The longest start-up waits for the first round of health checks.
const FIRST_HEALTH_CHECK_ROUND: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves until SIGINT, SIGTERM or `POST /quitquitquit` on the admin API (or returns
/// after start-up in init_only mode).
async fn serve(
    mode: Mode,
    mut bootstrap: Bootstrap,
    kernel_services: Vec<datapath::KernelService>,
    options: admin::CommandLineOptions,
    process: Process,
) -> anyhow::Result<()> {
    // The admin API starts first (on its own thread) so that /ready answers
    // INITIALIZING while the data path loads; it reads the data path through the lock.
    let datapath: admin::SharedDatapath = Arc::new(Mutex::new(None));
    let admin = start_admin(&bootstrap, options, &datapath)?;
    if let Some((admin, _)) = &admin {
        admin.set_state(admin::ServerState::Initializing);
    }
    let loaded = start_datapath(&mut bootstrap, &kernel_services)?;
    *datapath.lock().unwrap_or_else(PoisonError::into_inner) = loaded;
    let listeners = listener::start(&bootstrap).await?;
    // Health checking and outlier detection run on their own thread.
    let health_checkers = match &listeners.upstreams {
        Some(upstreams) => crate::upstream::health::start(upstreams)?,
        None => None,
    };
    if let Some(checkers) = &health_checkers {
        // As Envoy, initialization ends once the first round of health checks is done.
        if !checkers.first_round(FIRST_HEALTH_CHECK_ROUND).await {
            tracing::warn!(
                "the first round of health checks took longer than {FIRST_HEALTH_CHECK_ROUND:?}; \
                 serving anyway"
            );
        }
    }
    if let Some((admin, _)) = &admin {
        admin.set_upstreams(listeners.upstreams.clone());
        // Userspace listeners in order, as `listener::start` reports their addresses.
        let bound: BTreeMap<String, std::net::SocketAddr> = bootstrap
            .listeners
            .iter()
            .filter(|l| l.balancing != Balancing::Kernel)
            .map(|l| l.name.clone())
            .zip(listeners.addresses.iter().copied())
            .collect();
        admin.publish(Arc::new(bootstrap.clone()), bound);
        admin.set_state(admin::ServerState::Live);
    }
    tracing::info!(
        listeners = listeners.len(),
        kernel_services = kernel_services.len(),
        "keel is serving"
    );
    if mode == Mode::InitOnly {
        return Ok(());
    }
    (process.release_free_memory)();
    wait_for_shutdown(admin.as_ref().map(|(admin, _)| admin.as_ref())).await;
    if let Some((admin, _)) = &admin {
        admin.set_state(admin::ServerState::Draining);
    }
    tracing::info!("shutting down: detaching the kernel hooks (maps stay pinned)");
    drop(health_checkers);
    drop(listeners);
    // Taken out of the lock so the hooks detach here even though the admin thread
    // holds a reference to the lock.
    let loaded = datapath
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    drop(loaded);
    drop(admin);
    Ok(())
}

/// Starts the admin API when the bootstrap configures `admin.address`.
fn start_admin(
    bootstrap: &Bootstrap,
    options: admin::CommandLineOptions,
    datapath: &admin::SharedDatapath,
) -> anyhow::Result<Option<(Arc<admin::Admin>, admin::AdminServer)>> {
    let Some(config) = &bootstrap.admin else {
        return Ok(None);
    };
    let state = Arc::new(
        admin::Admin::new(Arc::new(bootstrap.clone()), options)
            .with_kernel(admin::kernel_source(datapath.clone())),
    );
    let server = admin::start(config.address, state.clone())?;
    Ok(Some((state, server)))
}

/// Loads the kernel data path when the configuration has kernel-balanced listeners,
/// or falls back to userspace when the kernel path is unavailable and the config
/// allows it (those listeners are then served by keel's tcp_proxy).
fn start_datapath(
    bootstrap: &mut Bootstrap,
    services: &[datapath::KernelService],
) -> anyhow::Result<Option<Datapath>> {
    if !datapath::is_built_in() {
        tracing::warn!(
            "kernel data path unavailable: {}",
            datapath::DatapathError::NotBuiltIn
        );
    }
    if services.is_empty() {
        return Ok(None);
    }
    let settings = bootstrap.datapath.clone();
    match Datapath::load(settings.cgroup_path.as_deref(), &settings.bpffs_path) {
        Ok(mut datapath) => {
            datapath
                .sync(services)
                .context("writing the services into the BPF maps")?;
            tracing::info!(
                cgroup = %datapath.cgroup().display(),
                services = services.len(),
                "kernel data path attached"
            );
            Ok(Some(datapath))
        }
        Err(e) if e.is_unavailable() && settings.on_unavailable == WhenUnavailable::Userspace => {
            tracing::warn!(
                "kernel data path unavailable ({e}); serving {} kernel-balanced listener(s) \
                 from userspace as keel.v1.Datapath.on_unavailable asks",
                services.len()
            );
            for listener in &mut bootstrap.listeners {
                listener.balancing = Balancing::Userspace;
            }
            Ok(None)
        }
        Err(e) if e.is_unavailable() => Err(anyhow::anyhow!(e)).context(
            "the configuration has kernel-balanced listeners and the kernel data path is \
             unavailable; set keel.v1.Datapath.on_unavailable: USERSPACE to fall back",
        ),
        Err(e) => Err(anyhow::anyhow!(e)).context("setting up the kernel data path"),
    }
}

async fn wait_for_shutdown(admin: Option<&admin::Admin>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install the SIGTERM handler");
    let quit = async {
        match admin {
            Some(admin) => admin.quit_requested().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = quit => {}
    }
}

/// Maps Envoy's log levels onto tracing's filter syntax.
fn init_logging(level: &str, components: Option<&str>) -> anyhow::Result<()> {
    let map = |l: &str| -> anyhow::Result<&'static str> {
        Ok(match l {
            "trace" => "trace",
            "debug" => "debug",
            "info" => "info",
            "warn" | "warning" => "warn",
            "error" | "err" | "critical" => "error",
            "off" => "off",
            other => bail!(
                "--log-level {other}: expected trace, debug, info, warn, error, critical or off"
            ),
        })
    };
    let mut filter = map(level)?.to_string();
    for part in components
        .unwrap_or("")
        .split(',')
        .filter(|p| !p.is_empty())
    {
        let (component, level) = part
            .split_once(':')
            .with_context(|| format!("--component-log-level {part}: expected component:level"))?;
        filter.push_str(&format!(",keel::{component}={}", map(level)?));
    }
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(|| LossyStderr)
        .init();
    Ok(())
}

/// stderr for logs: a closed or broken stderr drops log lines instead of failing
/// (a daemon must not die because whoever read its logs went away).
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(std::io::stderr().write(buf).unwrap_or(buf.len()))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
