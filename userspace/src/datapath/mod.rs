//! The kernel data path: loads keel's eBPF programs, attaches them to a cgroup, pins
//! their maps under a bpffs folder and keeps the maps in step with the configuration.
//!
//! Maps are pinned so that a restarted keel adopts them: the connection counts and
//! the origins of live sockets survive, and connections balanced in the kernel never
//! notice the restart. Programs are attached through bpf links owned by [`Datapath`];
//! dropping it detaches them (the maps stay pinned for the next keel).
//!
//! Updates follow one rule: a service is switched whole. Its new backends and lookup
//! table are written under a fresh backend-set id, then the service entry is pointed
//! at it in one map update, then the old set is deleted. A connect() never sees half
//! an update.

pub mod plan;

use std::collections::{BTreeMap, HashMap as StdHashMap, HashSet};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData, MapError};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, ProgramError, SockOps};
use aya::{Ebpf, EbpfError, EbpfLoader};
use keel_common::{map_names, Address, Backend, BackendKey, LbTableKey, Service, SockOrigin};

pub use plan::{kernel_address, kernel_services, socket_address, KernelService, PlanError};

/// The eBPF object embedded at build time (empty when built without it).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/keel-ebpf.o"));

/// Programs in the object and the hooks they attach to.
const SOCK_ADDR_PROGRAMS: &[&str] = &[
    "keel_connect4",
    "keel_connect6",
    "keel_sendmsg4",
    "keel_sendmsg6",
    "keel_recvmsg4",
    "keel_recvmsg6",
    "keel_getpeername4",
    "keel_getpeername6",
];
const SOCK_OPS_PROGRAM: &str = "keel_sock_ops";

/// Map update flag: create only, keep an existing value.
const BPF_NOEXIST: u64 = 1;

/// Magic number of a bpffs (statfs f_type).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether this keel binary carries its eBPF programs.
pub fn is_built_in() -> bool {
    !EBPF_OBJECT.is_empty()
}

/// Why the kernel data path could not be set up or updated.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// Built by a plain `cargo build`.
    #[error(
        "this keel was built without its eBPF programs, so the kernel data path is \
         unavailable; build with `cargo xtask build` to include them"
    )]
    NotBuiltIn,
    /// Loading BPF programs needs root (CAP_BPF and CAP_NET_ADMIN).
    #[error("the kernel data path needs root (CAP_BPF, CAP_NET_ADMIN); run keel as root")]
    NotRoot,
    /// No cgroup v2 hierarchy is mounted.
    #[error("no cgroup v2 hierarchy is mounted (looked for type cgroup2 in /proc/mounts)")]
    NoCgroup2,
    /// The cgroup folder cannot be opened.
    #[error("cannot open cgroup {path}: {source}")]
    Cgroup {
        /// The folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The bpffs folder cannot be prepared.
    #[error("cannot prepare the bpffs folder {path}: {message}")]
    Bpffs {
        /// The folder.
        path: PathBuf,
        /// The cause.
        message: String,
    },
    /// The kernel refused the object.
    #[error("loading keel's eBPF object failed: {0}")]
    Load(#[from] EbpfError),
    /// A program failed to load or attach.
    #[error("eBPF program {name}: {source}")]
    Program {
        /// Program name.
        name: &'static str,
        /// The cause (the verifier log is part of it).
        source: ProgramError,
    },
    /// A map operation failed.
    #[error("BPF map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// The cause.
        source: MapError,
    },
}

impl DatapathError {
    /// True when the kernel path is simply not available here (as opposed to a bug or
    /// a bad argument): the cases where a config may ask for the userspace fallback.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::NotBuiltIn | Self::NotRoot | Self::Load(_) | Self::Program { .. }
        )
    }
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

/// What the kernel currently balances, for display (`keel demo`, admin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceState {
    /// Service address.
    pub address: SocketAddr,
    /// Policy name.
    pub policy: &'static str,
    /// Backend set id in force.
    pub backend_set: u32,
    /// Backends with their weight and active connections.
    pub backends: Vec<(SocketAddr, u32, u64)>,
}

/// What keel last wrote for a service.
#[derive(Debug, Clone)]
struct Published {
    service: Service,
    plan: KernelService,
}

/// The loaded, attached programs and their maps.
pub struct Datapath {
    /// Owns the programs and their links: dropping it detaches them.
    _ebpf: Ebpf,
    services: HashMap<MapData, Address, Service>,
    backends: HashMap<MapData, BackendKey, Backend>,
    lb_tables: HashMap<MapData, LbTableKey, u32>,
    rr_cursors: HashMap<MapData, u32, u64>,
    connections: HashMap<MapData, Address, u64>,
    /// An LRU hash in the kernel; read here like a hash.
    origins: HashMap<MapData, u64, SockOrigin>,
    published: StdHashMap<Address, Published>,
    next_backend_set: u32,
    first_sync_done: bool,
    cgroup: PathBuf,
    bpffs: PathBuf,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("cgroup", &self.cgroup)
            .field("bpffs", &self.bpffs)
            .finish_non_exhaustive()
    }
}

/// The root of the cgroup v2 hierarchy, from /proc/mounts.
pub fn cgroup2_root() -> Result<PathBuf, DatapathError> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(|_| DatapathError::NoCgroup2)?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, dir, kind) = (fields.next()?, fields.next()?, fields.next()?);
            (kind == "cgroup2").then(|| PathBuf::from(dir))
        })
        .next()
        .ok_or(DatapathError::NoCgroup2)
}

/// Makes sure `dir` is a folder on a bpffs, mounting one at its parent when the
/// parent is not a bpffs yet (as on hosts that never mounted /sys/fs/bpf).
fn prepare_bpffs(dir: &Path) -> Result<(), DatapathError> {
    let bad = |message: String| DatapathError::Bpffs {
        path: dir.to_path_buf(),
        message,
    };
    let parent = dir
        .parent()
        .ok_or_else(|| bad("has no parent folder".into()))?;
    let on_bpffs = |p: &Path| {
        nix::sys::statfs::statfs(p)
            .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
            .unwrap_or(false)
    };
    if !on_bpffs(parent) {
        std::fs::create_dir_all(parent).map_err(|e| bad(e.to_string()))?;
        nix::mount::mount(
            Some("bpf"),
            parent,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| bad(format!("mounting a bpffs at {}: {e}", parent.display())))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))
}

impl Datapath {
    /// Loads and attaches the programs to `cgroup` (the cgroup v2 root when `None`),
    /// adopting maps already pinned under `bpffs`.
    pub fn load(cgroup: Option<&Path>, bpffs: &Path) -> Result<Datapath, DatapathError> {
        if !is_built_in() {
            return Err(DatapathError::NotBuiltIn);
        }
        if !nix::unistd::geteuid().is_root() {
            return Err(DatapathError::NotRoot);
        }
        let cgroup = match cgroup {
            Some(path) => path.to_path_buf(),
            None => cgroup2_root()?,
        };
        let cgroup_dir = File::open(&cgroup).map_err(|source| DatapathError::Cgroup {
            path: cgroup.clone(),
            source,
        })?;
        prepare_bpffs(bpffs)?;

        // Attached through bpf links, which always stack with other programs on the
        // cgroup (the kernel rejects BPF_F_ALLOW_MULTI on a link; `Single` passes 0).
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(bpffs)
            .load(EBPF_OBJECT)?;
        for &name in SOCK_ADDR_PROGRAMS {
            let program: &mut CgroupSockAddr = program_mut(&mut ebpf, name)?;
            program
                .load()
                .map_err(|source| DatapathError::Program { name, source })?;
            program
                .attach(&cgroup_dir, CgroupAttachMode::Single)
                .map_err(|source| DatapathError::Program { name, source })?;
        }
        let sock_ops: &mut SockOps = program_mut(&mut ebpf, SOCK_OPS_PROGRAM)?;
        let name = SOCK_OPS_PROGRAM;
        sock_ops
            .load()
            .map_err(|source| DatapathError::Program { name, source })?;
        sock_ops
            .attach(&cgroup_dir, CgroupAttachMode::Single)
            .map_err(|source| DatapathError::Program { name, source })?;

        let services: HashMap<_, Address, Service> = take_map(&mut ebpf, map_names::SERVICES)?;
        // Backend-set ids already in use by adopted services.
        let next_backend_set = services
            .iter()
            .filter_map(Result::ok)
            .map(|(_, s)| s.backend_set)
            .max()
            .unwrap_or(0)
            .wrapping_add(1)
            .max(1);
        Ok(Datapath {
            backends: take_map(&mut ebpf, map_names::BACKENDS)?,
            lb_tables: take_map(&mut ebpf, map_names::LB_TABLES)?,
            rr_cursors: take_map(&mut ebpf, map_names::RR_CURSORS)?,
            connections: take_map(&mut ebpf, map_names::ENDPOINT_CONNECTIONS)?,
            origins: take_map(&mut ebpf, map_names::SOCK_ORIGINS)?,
            services,
            _ebpf: ebpf,
            published: StdHashMap::new(),
            next_backend_set,
            first_sync_done: false,
            cgroup,
            bpffs: bpffs.to_path_buf(),
        })
    }

    /// The cgroup the programs are attached to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Makes the kernel balance exactly `wanted`: new and changed services are switched
    /// whole, services no longer wanted are removed. Live connections are untouched.
    pub fn sync(&mut self, wanted: &[KernelService]) -> Result<(), DatapathError> {
        let wanted_addresses: HashSet<Address> = wanted.iter().map(|s| s.address).collect();
        for service in wanted {
            let unchanged = self
                .published
                .get(&service.address)
                .is_some_and(|p| p.plan == *service);
            if !unchanged {
                self.publish(service)?;
            }
        }
        let in_kernel: Vec<(Address, Service)> =
            self.services.iter().filter_map(Result::ok).collect();
        for (address, old) in in_kernel {
            if !wanted_addresses.contains(&address) {
                self.services
                    .remove(&address)
                    .map_err(map_err(map_names::SERVICES))?;
                self.published.remove(&address);
                self.delete_backend_set(old.backend_set, old.backend_count, old.table_size);
            }
        }
        if !self.first_sync_done {
            self.collect_orphans();
            self.first_sync_done = true;
        }
        self.forget_idle_endpoints(wanted);
        Ok(())
    }

    /// Writes `service` under a fresh backend set and switches the service to it.
    fn publish(&mut self, service: &KernelService) -> Result<(), DatapathError> {
        let set = self.allocate_backend_set();
        for (slot, backend) in service.backends.iter().enumerate() {
            let key = BackendKey {
                backend_set: set,
                slot: slot as u32,
            };
            self.backends
                .insert(key, backend, 0)
                .map_err(map_err(map_names::BACKENDS))?;
            // Make the endpoint's count visible at 0 (keeps an adopted count as is).
            let _ = self.connections.insert(backend.address, 0, BPF_NOEXIST);
        }
        for (index, &slot) in service.table.iter().enumerate() {
            let key = LbTableKey {
                backend_set: set,
                index: index as u32,
            };
            self.lb_tables
                .insert(key, slot, 0)
                .map_err(map_err(map_names::LB_TABLES))?;
        }
        self.rr_cursors
            .insert(set, 0, 0)
            .map_err(map_err(map_names::RR_CURSORS))?;
        let value = Service {
            backend_set: set,
            backend_count: service.backends.len() as u32,
            table_size: service.table.len() as u32,
            policy: service.policy,
            _pad: [0; 3],
        };
        let old = self.services.get(&service.address, 0).ok();
        self.services
            .insert(service.address, value, 0)
            .map_err(map_err(map_names::SERVICES))?;
        if let Some(old) = old {
            self.delete_backend_set(old.backend_set, old.backend_count, old.table_size);
        }
        self.published.insert(
            service.address,
            Published {
                service: value,
                plan: service.clone(),
            },
        );
        Ok(())
    }

    fn allocate_backend_set(&mut self) -> u32 {
        let in_use: HashSet<u32> = self
            .published
            .values()
            .map(|p| p.service.backend_set)
            .collect();
        loop {
            let id = self.next_backend_set;
            self.next_backend_set = self.next_backend_set.checked_add(1).unwrap_or(1);
            if id != 0 && !in_use.contains(&id) {
                return id;
            }
        }
    }

    /// Deletes a backend set's slots, table and cursor (best effort: a missing entry is
    /// already gone).
    fn delete_backend_set(&mut self, set: u32, count: u32, table_size: u32) {
        for slot in 0..count {
            let _ = self.backends.remove(&BackendKey {
                backend_set: set,
                slot,
            });
        }
        for index in 0..table_size {
            let _ = self.lb_tables.remove(&LbTableKey {
                backend_set: set,
                index,
            });
        }
        let _ = self.rr_cursors.remove(&set);
    }

    /// After adopting pinned maps, deletes backend sets that no service points at (left
    /// by a keel that stopped in the middle of an update).
    fn collect_orphans(&mut self) {
        let live: HashSet<u32> = self
            .services
            .iter()
            .filter_map(Result::ok)
            .map(|(_, s)| s.backend_set)
            .collect();
        let orphan_backends: Vec<BackendKey> = self
            .backends
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !live.contains(&k.backend_set))
            .collect();
        for key in orphan_backends {
            let _ = self.backends.remove(&key);
        }
        let orphan_entries: Vec<LbTableKey> = self
            .lb_tables
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !live.contains(&k.backend_set))
            .collect();
        for key in orphan_entries {
            let _ = self.lb_tables.remove(&key);
        }
        let orphan_cursors: Vec<u32> = self
            .rr_cursors
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !live.contains(k))
            .collect();
        for key in orphan_cursors {
            let _ = self.rr_cursors.remove(&key);
        }
    }

    /// Drops the count entries of endpoints no service uses that have no connection.
    fn forget_idle_endpoints(&mut self, wanted: &[KernelService]) {
        let used: HashSet<Address> = wanted
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.address))
            .collect();
        let idle: Vec<Address> = self
            .connections
            .iter()
            .filter_map(Result::ok)
            .filter(|(a, n)| *n == 0 && !used.contains(a))
            .map(|(a, _)| a)
            .collect();
        for address in idle {
            let _ = self.connections.remove(&address);
        }
    }

    /// Active connections per endpoint, as counted by the kernel.
    pub fn endpoint_connections(&self) -> BTreeMap<SocketAddr, u64> {
        self.connections
            .iter()
            .filter_map(Result::ok)
            .map(|(a, n)| (socket_address(&a), n))
            .collect()
    }

    /// Number of sockets whose destination the kernel rewrote and that are still
    /// remembered (open, or not yet closed when counted).
    pub fn tracked_sockets(&self) -> usize {
        self.origins.keys().filter_map(Result::ok).count()
    }

    /// What the kernel balances now, read back from the maps.
    pub fn state(&self) -> Vec<ServiceState> {
        let connections = self.endpoint_connections();
        let mut states: Vec<ServiceState> = self
            .services
            .iter()
            .filter_map(Result::ok)
            .map(|(address, service)| {
                let backends = (0..service.backend_count)
                    .filter_map(|slot| {
                        let key = BackendKey {
                            backend_set: service.backend_set,
                            slot,
                        };
                        self.backends.get(&key, 0).ok()
                    })
                    .map(|b| {
                        let addr = socket_address(&b.address);
                        (addr, b.weight, connections.get(&addr).copied().unwrap_or(0))
                    })
                    .collect();
                ServiceState {
                    address: socket_address(&address),
                    policy: policy_name(service.policy),
                    backend_set: service.backend_set,
                    backends,
                }
            })
            .collect();
        states.sort_by_key(|s| s.address);
        states
    }
}

/// Envoy's name of a kernel policy.
pub fn policy_name(policy: u8) -> &'static str {
    match policy {
        keel_common::policy::ROUND_ROBIN => "ROUND_ROBIN",
        keel_common::policy::LEAST_CONNECTIONS => "LEAST_REQUEST",
        keel_common::policy::RANDOM => "RANDOM",
        keel_common::policy::MAGLEV => "MAGLEV",
        _ => "unknown",
    }
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, DatapathError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or(DatapathError::Program {
        name,
        source: ProgramError::UnexpectedProgramType,
    })?;
    program
        .try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

fn take_map<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, DatapathError> {
    let map = ebpf.take_map(name).ok_or(DatapathError::Map {
        name,
        source: MapError::InvalidName {
            name: name.to_string(),
        },
    })?;
    HashMap::try_from(map).map_err(map_err(name))
}
