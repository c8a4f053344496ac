//! Harness for keel's end-to-end tests.
//!
//! A [`Sandbox`] is what one test owns: a network namespace with only loopback (so no
//! packet can leave the machine), a child cgroup (the eBPF hooks attach there, never
//! to the root cgroup) and a bpffs folder for pinned maps. Backends are threads that
//! enter the namespace; clients are `keel-probe` processes that join the cgroup and the
//! namespace. Everything is removed when the sandbox is dropped, also after a failure.
//!
//! Privileged tests are `#[ignore]`d with the reason, so a run without root lists them
//! as ignored rather than passing them silently; `cargo xtask test` runs them as root.
#![forbid(unsafe_code)]

pub mod diff;
pub mod upstream;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The reason privileged tests give when they are not run.
pub const PRIVILEGED: &str =
    "needs root, eBPF and network namespaces: run `cargo xtask test` as root";

static SANDBOX_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A test's private network namespace, cgroup and bpffs folder.
#[derive(Debug)]
pub struct Sandbox {
    /// Namespace name (under /var/run/netns).
    pub netns: String,
    /// Child cgroup folder.
    pub cgroup: PathBuf,
    /// bpffs folder for pinned maps.
    pub bpffs: PathBuf,
    cgroup_root: PathBuf,
}

/// One exchange reported by `keel-probe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The name the backend greeted with.
    pub backend: String,
    /// The peer address the application saw (getpeername / recvfrom).
    pub peer: SocketAddr,
}

impl Sandbox {
    /// Creates the namespace, the cgroup and the bpffs folder for test `name`.
    pub fn new(name: &str) -> Sandbox {
        assert!(
            nix::unistd::geteuid().is_root(),
            "{name}: {PRIVILEGED} (this test was run with --include-ignored without root)"
        );
        let id = format!(
            "keel-t{}-{}-{}",
            std::process::id(),
            SANDBOX_COUNTER.fetch_add(1, Ordering::Relaxed),
            name
        );
        let id: String = id.chars().take(48).collect();
        run("ip", &["netns", "add", &id]);
        run("ip", &["-n", &id, "link", "set", "lo", "up"]);
        let cgroup_root = keel::datapath::cgroup2_root().expect("a cgroup v2 hierarchy is mounted");
        let cgroup = cgroup_root.join(&id);
        std::fs::create_dir_all(&cgroup)
            .unwrap_or_else(|e| panic!("creating {}: {e}", cgroup.display()));
        Sandbox {
            netns: id.clone(),
            cgroup,
            bpffs: PathBuf::from(format!("/sys/fs/bpf/{id}")),
            cgroup_root,
        }
    }

    /// Runs `f` on a new thread that has entered the namespace.
    pub fn spawn_in<F: FnOnce() + Send + 'static>(&self, f: F) -> std::thread::JoinHandle<()> {
        let netns = self.netns.clone();
        std::thread::spawn(move || {
            enter_netns(&netns);
            f()
        })
    }

    /// A TCP backend at `address` in the namespace: it greets each connection with
    /// `name`, then echoes what it reads until the client closes.
    pub fn tcp_backend(&self, name: &str, address: &str) {
        let (name, address) = (name.to_string(), address.to_string());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        self.spawn_in(move || {
            let listener = TcpListener::bind(&address)
                .unwrap_or_else(|e| panic!("backend {name} on {address}: {e}"));
            ready_tx.send(()).unwrap();
            for stream in listener.incoming().flatten() {
                let name = name.clone();
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let _ = stream.write_all(format!("{name}\n").as_bytes());
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        ready_rx.recv().expect("backend started");
    }

    /// A UDP backend at `address` in the namespace: it answers each datagram with `name`.
    pub fn udp_backend(&self, name: &str, address: &str) {
        let (name, address) = (name.to_string(), address.to_string());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        self.spawn_in(move || {
            let socket = UdpSocket::bind(&address)
                .unwrap_or_else(|e| panic!("udp backend {name} on {address}: {e}"));
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 256];
            while let Ok((_, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(name.as_bytes(), from);
            }
        });
        ready_rx.recv().expect("udp backend started");
    }

    /// Loads keel's programs into this sandbox's cgroup, with maps pinned here.
    pub fn datapath(&self) -> keel::datapath::Datapath {
        keel::datapath::Datapath::load(Some(&self.cgroup), &self.bpffs)
            .unwrap_or_else(|e| panic!("loading the kernel data path: {e}"))
    }

    /// A `keel-probe` command for this sandbox; `in_cgroup` decides whether the client
    /// joins the cgroup (whose connections keel balances).
    pub fn probe(&self, in_cgroup: bool) -> Command {
        let mut command = Command::new(built_binary("keel-probe"));
        command.args(["--netns", &self.netns]);
        if in_cgroup {
            command.arg("--cgroup").arg(&self.cgroup);
        }
        command
    }

    /// Runs a probe to completion and returns its exchanges; panics on any error line.
    pub fn exchanges(&self, in_cgroup: bool, args: &[&str]) -> Vec<Exchange> {
        let output = self
            .probe(in_cgroup)
            .args(args)
            .output()
            .expect("run keel-probe");
        assert!(
            output.status.success(),
            "keel-probe {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        parse_exchanges(&String::from_utf8_lossy(&output.stdout))
    }

    /// Starts a probe that holds `count` connections to `to` open; returns once they are
    /// all established, with what they saw.
    pub fn hold(&self, to: &str, count: usize) -> Held {
        let mut child = self
            .probe(true)
            .args(["--to", to, "--count", &count.to_string(), "--hold"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start keel-probe --hold");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut text = String::new();
        for _ in 0..count {
            let line = lines
                .next()
                .expect("a line per held connection")
                .expect("read probe output");
            text.push_str(&line);
            text.push('\n');
        }
        Held {
            stdin: child.stdin.take(),
            child,
            exchanges: parse_exchanges(&text),
        }
    }
}

/// Connections held open by a probe; dropping (or [`Held::close`]) closes them.
#[derive(Debug)]
pub struct Held {
    child: Child,
    stdin: Option<ChildStdin>,
    /// What each connection saw.
    pub exchanges: Vec<Exchange>,
}

impl Held {
    /// Closes the connections and waits for the probe to exit.
    pub fn close(mut self) {
        self.close_inner();
    }

    fn close_inner(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.close_inner();
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Anything still in the cgroup (probes) has exited or is ours to move out.
        if let Ok(procs) = std::fs::read_to_string(self.cgroup.join("cgroup.procs")) {
            for pid in procs.split_whitespace() {
                let _ = std::fs::write(self.cgroup_root.join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.cgroup);
        let _ = std::fs::remove_dir_all(&self.bpffs);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

fn parse_exchanges(text: &str) -> Vec<Exchange> {
    text.lines()
        .map(|line| {
            let value: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("probe line {line:?}: {e}"));
            assert!(
                value.get("error").is_none(),
                "probe reported an error: {line}"
            );
            Exchange {
                backend: value["backend"].as_str().expect("backend").to_string(),
                peer: value["peer"]
                    .as_str()
                    .expect("peer")
                    .parse()
                    .expect("peer address"),
            }
        })
        .collect()
}

/// Enters network namespace `name` on the calling thread.
pub fn enter_netns(name: &str) {
    let file = std::fs::File::open(format!("/var/run/netns/{name}"))
        .unwrap_or_else(|e| panic!("opening netns {name}: {e}"));
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("entering netns {name}: {e}"));
}

/// Runs a command and panics with its output if it fails.
pub fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// How many exchanges reached each backend name.
pub fn tally(exchanges: &[Exchange]) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for e in exchanges {
        *counts.entry(e.backend.clone()).or_default() += 1;
    }
    counts
}

/// Parses an Envoy bootstrap held in a test.
pub fn bootstrap(yaml: &str) -> keel::model::Bootstrap {
    keel::config::load_str(yaml, keel::config::Format::Yaml)
        .unwrap_or_else(|e| panic!("test config: {e}"))
}

/// The kernel services of a test config.
pub fn services(yaml: &str) -> Vec<keel::datapath::KernelService> {
    keel::datapath::kernel_services(&bootstrap(yaml)).unwrap_or_else(|e| panic!("test config: {e}"))
}

/// A bootstrap with one kernel-balanced listener per (name, vip, lb_policy, endpoints).
/// Endpoints are `(address, port, weight)`.
pub fn kernel_config(services: &[(&str, &str, &str, &[(&str, u16, u32)])]) -> String {
    let mut listeners = String::new();
    let mut clusters = String::new();
    for (name, vip, policy, endpoints) in services {
        let (vip_addr, vip_port) = vip.rsplit_once(':').expect("vip is addr:port");
        let vip_addr = vip_addr.trim_start_matches('[').trim_end_matches(']');
        let protocol = if name.starts_with("udp") {
            "UDP"
        } else {
            "TCP"
        };
        listeners.push_str(&format!(
            "  - name: {name}\n    address: {{socket_address: {{address: \"{vip_addr}\", port_value: {vip_port}, protocol: {protocol}}}}}\n    metadata: {{filter_metadata: {{keel: {{balancing: KERNEL}}}}}}\n    filter_chains:\n    - filters:\n      - name: envoy.filters.network.tcp_proxy\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          stat_prefix: {name}\n          cluster: {name}-cluster\n"
        ));
        let mut lb_endpoints = String::new();
        for (address, port, weight) in endpoints.iter() {
            lb_endpoints.push_str(&format!(
                "        - endpoint: {{address: {{socket_address: {{address: \"{address}\", port_value: {port}}}}}}}\n          load_balancing_weight: {weight}\n"
            ));
        }
        let maglev = if *policy == "MAGLEV" {
            "    maglev_lb_config: {table_size: 16381}\n"
        } else {
            ""
        };
        clusters.push_str(&format!(
            "  - name: {name}-cluster\n    connect_timeout: 1s\n    lb_policy: {policy}\n{maglev}    load_assignment:\n      cluster_name: {name}-cluster\n      endpoints:\n      - lb_endpoints:\n{lb_endpoints}"
        ));
    }
    format!("static_resources:\n  listeners:\n{listeners}  clusters:\n{clusters}")
}

/// Path of the keel binary built next to the tests (by `cargo xtask build`/`test`).
pub fn keel_binary() -> PathBuf {
    built_binary("keel")
}

/// A binary of the workspace in the tests' target folder (`target/<profile>/`).
fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo xtask build`",
        path.display()
    );
    path
}
