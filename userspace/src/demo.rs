//! `keel demo`: kernel load balancing, shown end to end on this machine.
//!
//! The demo gives itself a private network namespace (only loopback, so nothing can
//! leave the machine), a child cgroup and its own bpffs folder. It starts three small
//! backends, loads keel's programs with the embedded configuration below, makes
//! connections to each service address, and prints where each one landed, what
//! getpeername() showed the application, and the kernel's map state. It cleans up on
//! exit and on Ctrl-C.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::config;
use crate::datapath::{self, Datapath};

/// The demo's configuration: an ordinary Envoy v3 bootstrap.
pub const DEMO_CONFIG: &str = include_str!("demo.yaml");

/// Backends of the demo: (name, address).
const BACKENDS: &[(&str, &str)] = &[
    ("backend-a", "127.0.0.1:9001"),
    ("backend-b", "127.0.0.1:9002"),
    ("backend-c", "127.0.0.1:9003"),
];

/// What the demo created and must remove.
struct Sandbox {
    cgroup: PathBuf,
    parent_cgroup: PathBuf,
    bpffs: PathBuf,
}

impl Sandbox {
    fn create() -> anyhow::Result<Sandbox> {
        let pid = std::process::id();
        // A private network namespace for this process: loopback only.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .context("creating the demo's network namespace")?;
        let status = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        if !status.map(|s| s.success()).unwrap_or(false) {
            bail!("`ip link set lo up` failed in the demo namespace (is iproute2 installed?)");
        }
        let root = datapath::cgroup2_root()?;
        let cgroup = root.join(format!("keel-demo-{pid}"));
        std::fs::create_dir_all(&cgroup)
            .with_context(|| format!("creating cgroup {}", cgroup.display()))?;
        std::fs::write(cgroup.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("joining cgroup {}", cgroup.display()))?;
        Ok(Sandbox {
            cgroup,
            parent_cgroup: root,
            bpffs: PathBuf::from(format!("/sys/fs/bpf/keel-demo-{pid}")),
        })
    }

    fn remove(&self) {
        let _ = std::fs::write(
            self.parent_cgroup.join("cgroup.procs"),
            std::process::id().to_string(),
        );
        let _ = std::fs::remove_dir(&self.cgroup);
        let _ = std::fs::remove_dir_all(&self.bpffs);
    }
}

/// Runs the demo; returns when it is done or on Ctrl-C.
pub fn run() -> anyhow::Result<()> {
    if !datapath::is_built_in() {
        bail!("{}", datapath::DatapathError::NotBuiltIn);
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo loads eBPF programs and needs root");
    }
    let sandbox = Sandbox::create()?;
    println!(
        "keel demo: network namespace (loopback only), cgroup {}, maps pinned in {}\n",
        sandbox.cgroup.display(),
        sandbox.bpffs.display()
    );
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let cgroup = sandbox.cgroup.clone();
    let bpffs = sandbox.bpffs.clone();
    std::thread::spawn(move || {
        let _ = done_tx.send(steps(cgroup, bpffs));
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        tokio::select! {
            r = tokio::task::spawn_blocking(move || done_rx.recv()) => r.ok().and_then(Result::ok),
            _ = tokio::signal::ctrl_c() => { println!("\ninterrupted"); None }
        }
    });
    sandbox.remove();
    println!("cleaned up: hooks detached, cgroup and pinned maps removed");
    match result {
        Some(r) => r,
        None => std::process::exit(130),
    }
}

fn steps(cgroup: PathBuf, bpffs: PathBuf) -> anyhow::Result<()> {
    let mut bootstrap = config::load_str(DEMO_CONFIG, config::Format::Yaml)
        .map_err(|e| anyhow::anyhow!("the embedded demo config: {e}"))?;
    bootstrap.datapath.cgroup_path = Some(cgroup.clone());
    bootstrap.datapath.bpffs_path = bpffs.clone();
    for (name, address) in BACKENDS {
        start_backend(name, address.parse()?)?;
    }
    let services = datapath::kernel_services(&bootstrap)?;
    let mut datapath = Datapath::load(Some(&cgroup), &bpffs)?;
    datapath.sync(&services)?;
    println!(
        "loaded {} kernel services from the embedded Envoy bootstrap:",
        services.len()
    );
    for listener in &bootstrap.listeners {
        let cluster = bootstrap.clusters.iter().find(|c| {
            listener.filter_chains.iter().flat_map(|f| &f.filters).any(
                |f| matches!(f, crate::model::NetworkFilter::TcpProxy(t) if t.cluster == c.name),
            )
        });
        if let Some(cluster) = cluster {
            println!(
                "  {:<22} {:<17} lb_policy {:?}, endpoints {}",
                listener.name,
                listener.address,
                cluster.lb_policy,
                cluster
                    .endpoints
                    .iter()
                    .map(|e| format!("{}×{}", e.address, e.weight))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
    }
    println!();
    for listener in &bootstrap.listeners {
        println!(
            "{} ({}): 9 connections, one after another",
            listener.name, listener.address
        );
        let mut landed = Vec::new();
        for _ in 0..9 {
            let (backend, peer) = ask(listener.address)?;
            landed.push(backend.clone());
            if landed.len() == 1 {
                println!("  getpeername() in the application shows {peer}; the connection reached {backend}");
            }
        }
        println!("  landed on: {}", landed.join(", "));
    }
    println!(
        "\nleast connections with 4 connections held open to {}:",
        bootstrap.listeners[1].address
    );
    let held: Vec<TcpStream> = (0..4)
        .map(|_| hold(bootstrap.listeners[1].address))
        .collect::<anyhow::Result<_>>()?;
    print_state(&datapath);
    let (backend, _) = ask(bootstrap.listeners[1].address)?;
    println!("  the next connection goes to the least loaded backend: {backend}");
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    println!("\nafter closing them, every count is back to 0:");
    print_state(&datapath);
    Ok(())
}

fn print_state(datapath: &Datapath) {
    for service in datapath.state() {
        let backends: Vec<String> = service
            .backends
            .iter()
            .map(|(a, w, n)| format!("{a} w{w} conns={n}"))
            .collect();
        println!(
            "  map KEEL_SERVICES {:<17} {:<13} set {:<3} | {}",
            service.address,
            service.policy,
            service.backend_set,
            backends.join(" | ")
        );
    }
}

/// Connects, reads the backend's name, and returns it with the peer address the
/// application saw.
fn ask(address: SocketAddr) -> anyhow::Result<(String, SocketAddr)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))
        .with_context(|| format!("connecting to {address}"))?;
    let peer = stream.peer_addr()?;
    let mut name = String::new();
    stream.read_to_string(&mut name)?;
    Ok((name.trim().to_string(), peer))
}

/// Connects and keeps the connection open.
fn hold(address: SocketAddr) -> anyhow::Result<TcpStream> {
    TcpStream::connect_timeout(&address, Duration::from_secs(2))
        .with_context(|| format!("connecting to {address}"))
}

/// A backend that answers every connection with its name and closes... unless the
/// client keeps it open, in which case it waits for the client to close.
fn start_backend(name: &'static str, address: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(address)
        .with_context(|| format!("binding backend {name} on {address}"))?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let _ = stream.write_all(format!("{name}\n").as_bytes());
                let _ = stream.shutdown(std::net::Shutdown::Write);
                let mut sink = [0u8; 64];
                while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
            });
        }
    });
    Ok(())
}
