//! keel's eBPF programs: in-kernel L4 load balancing at the socket layer.
//!
//! * `connect4`/`connect6` (cgroup sock_addr): a connect() to a service address is
//!   rewritten to one backend, chosen by the service's policy, and the socket's origin
//!   is remembered under its cookie.
//! * `sendmsg4`/`sendmsg6`, `recvmsg4`/`recvmsg6`: the same for unconnected UDP; a
//!   socket keeps its backend for all its datagrams, and replies appear to come from
//!   the service address.
//! * `getpeername4`/`getpeername6`: the application sees the service as its peer.
//! * `sock_ops`: keeps the exact active-connection count of each endpoint: +1 when a
//!   rewritten TCP socket starts connecting, −1 when it reaches CLOSE.
//!
//! Every hook allows the operation (returns 1): keel rewrites, it never denies.
#![no_std]
#![no_main]
// The BPF target has no `AtomicU64::fetch_add`; the intrinsic lowers to BPF's atomic add.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_TCP_CLOSE, BPF_NOEXIST,
    },
    helpers::{bpf_get_prandom_u32, bpf_get_socket_cookie},
    macros::{cgroup_sock_addr, map, sock_ops},
    maps::{HashMap, LruHashMap},
    programs::{SockAddrContext, SockOpsContext},
    EbpfContext,
};
use keel_common::{
    hash_finish, hash_mix, map_sizes, policy, protocol, Address, Backend, BackendKey,
    LbTableKey, Service, SockOrigin, MAX_BACKENDS_PER_SERVICE,
};

/// Allocate hash-map entries on use (lookup tables are large and sparse).
const BPF_F_NO_PREALLOC: u32 = 1;
/// sock_addr programs return 1 to let the operation proceed.
const ALLOW: i32 = 1;

#[map(name = "KEEL_SERVICES")]
static SERVICES: HashMap<Address, Service> = HashMap::pinned(map_sizes::SERVICES, 0);

#[map(name = "KEEL_BACKENDS")]
static BACKENDS: HashMap<BackendKey, Backend> = HashMap::pinned(map_sizes::BACKENDS, 0);

#[map(name = "KEEL_LB_TABLES")]
static LB_TABLES: HashMap<LbTableKey, u32> =
    HashMap::pinned(map_sizes::LB_TABLES, BPF_F_NO_PREALLOC);

#[map(name = "KEEL_RR_CURSORS")]
static RR_CURSORS: HashMap<u32, u64> = HashMap::pinned(map_sizes::RR_CURSORS, 0);

#[map(name = "KEEL_EP_CONNS")]
static ENDPOINT_CONNECTIONS: HashMap<Address, u64> =
    HashMap::pinned(map_sizes::ENDPOINT_CONNECTIONS, 0);

#[map(name = "KEEL_SOCK_ORIG")]
static SOCK_ORIGINS: LruHashMap<u64, SockOrigin> =
    LruHashMap::pinned(map_sizes::SOCK_ORIGINS, 0);

// ---------------------------------------------------------------------------------
// Address families: how a sock_addr context holds the user's address.

/// IPv4 or IPv6 view of a `bpf_sock_addr`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// Prefix of an IPv4-mapped IPv6 address.
const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[..12] == V4_MAPPED_PREFIX
}

/// The address in `user_ip*`/`user_port` (the destination of connect/sendmsg, the
/// source of recvmsg, the peer of getpeername).
#[inline(always)]
fn user_address(ctx: &SockAddrContext, family: Family) -> Address {
    // SAFETY: `sock_addr` is the context pointer the kernel passed to this program;
    // the verifier allows reads of these fields for cgroup sock_addr programs.
    let sa = unsafe { &*ctx.sock_addr };
    let mut addr = [0u8; 16];
    match family {
        Family::V4 => {
            addr[..12].copy_from_slice(&V4_MAPPED_PREFIX);
            addr[12..].copy_from_slice(&sa.user_ip4.to_ne_bytes());
        }
        Family::V6 => {
            let words = sa.user_ip6;
            let mut i = 0;
            while i < 4 {
                addr[i * 4..i * 4 + 4].copy_from_slice(&words[i].to_ne_bytes());
                i += 1;
            }
        }
    }
    Address {
        addr,
        port_be: sa.user_port as u16,
        protocol: sa.protocol as u8,
        _pad: 0,
    }
}

/// Writes `to` into `user_ip*`/`user_port`.
#[inline(always)]
fn set_user_address(ctx: &SockAddrContext, family: Family, to: &Address) {
    // SAFETY: as in `user_address`; these fields are writable for the hooks that call
    // this (connect, sendmsg, recvmsg, getpeername).
    let sa = unsafe { &mut *ctx.sock_addr };
    match family {
        Family::V4 => {
            sa.user_ip4 = u32::from_ne_bytes([to.addr[12], to.addr[13], to.addr[14], to.addr[15]]);
        }
        Family::V6 => {
            let a = &to.addr;
            sa.user_ip6 = [
                u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
                u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
                u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
                u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
            ];
        }
    }
    sa.user_port = to.port_be as u32;
}

/// Hash of the flow a socket is opening: the source it is bound to (if any) and the
/// service. An unbound socket (source port 0) also mixes in its cookie, so such
/// sockets spread like random picks, as Envoy does when a hash key is missing.
#[inline(always)]
fn flow_hash(ctx: &SockAddrContext, family: Family, service: &Address, cookie: u64) -> u32 {
    // SAFETY: `sk` is a valid `bpf_sock` for cgroup sock_addr programs; its source
    // fields are readable.
    let sk = unsafe { &*(*ctx.sock_addr).__bindgen_anon_1.sk };
    let mut h: u32 = 0x6b65_656c; // "keel"
    match family {
        Family::V4 => h = hash_mix(h, sk.src_ip4),
        Family::V6 => {
            let words = sk.src_ip6;
            h = hash_mix(h, words[0]);
            h = hash_mix(h, words[1]);
            h = hash_mix(h, words[2]);
            h = hash_mix(h, words[3]);
        }
    }
    let src_port = sk.src_port;
    h = hash_mix(h, src_port);
    if src_port == 0 {
        h = hash_mix(h, cookie as u32);
        h = hash_mix(h, (cookie >> 32) as u32);
    }
    let mut i = 0;
    while i < 4 {
        let a = &service.addr;
        h = hash_mix(h, u32::from_ne_bytes([a[i * 4], a[i * 4 + 1], a[i * 4 + 2], a[i * 4 + 3]]));
        i += 1;
    }
    h = hash_mix(h, ((service.port_be as u32) << 8) | service.protocol as u32);
    hash_finish(h)
}

// ---------------------------------------------------------------------------------
// Backend selection.

/// The slot of the backend with the fewest active connections per unit of weight.
/// The scan starts at a random slot, so ties are broken at random (as Envoy's
/// LEAST_REQUEST does) instead of always favouring the first backend.
#[inline(always)]
fn least_connections_slot(svc: &Service) -> Option<u32> {
    let count = svc.backend_count;
    if count == 0 {
        return None;
    }
    // SAFETY: a helper without arguments.
    let start = unsafe { bpf_get_prandom_u32() } % count;
    let mut best: Option<(u32, u64, u64)> = None; // (slot, connections, weight)
    let mut i = 0u32;
    while i < MAX_BACKENDS_PER_SERVICE {
        if i >= count {
            break;
        }
        let slot = (start + i) % count;
        i += 1;
        let key = BackendKey { backend_set: svc.backend_set, slot };
        let Some(backend) = BACKENDS.get_ptr(&key) else { continue };
        // SAFETY: the pointer comes from a successful map lookup.
        let backend = unsafe { *backend };
        let connections = match ENDPOINT_CONNECTIONS.get_ptr(&backend.address) {
            // SAFETY: as above.
            Some(n) => unsafe { *n },
            None => 0,
        };
        let weight = backend.weight.max(1) as u64;
        let better = match best {
            None => true,
            // connections/weight < best_connections/best_weight, without division.
            Some((_, best_conns, best_weight)) => connections * best_weight < best_conns * weight,
        };
        if better {
            best = Some((slot, connections, weight));
        }
    }
    best.map(|(slot, _, _)| slot)
}

/// The slot at `index` of the backend set's lookup table.
#[inline(always)]
fn table_slot(svc: &Service, index: u32) -> Option<u32> {
    let key = LbTableKey { backend_set: svc.backend_set, index };
    // SAFETY: the pointer comes from a successful map lookup.
    LB_TABLES.get_ptr(&key).map(|slot| unsafe { *slot })
}

/// Picks the backend for a new flow to `service`.
#[inline(always)]
fn pick_backend(
    ctx: &SockAddrContext,
    family: Family,
    service: &Address,
    svc: &Service,
    cookie: u64,
) -> Option<Backend> {
    if svc.backend_count == 0 {
        return None;
    }
    let slot = match svc.policy {
        policy::LEAST_CONNECTIONS => least_connections_slot(svc)?,
        policy::ROUND_ROBIN => {
            if svc.table_size == 0 {
                return None;
            }
            let cursor = RR_CURSORS.get_ptr_mut(&svc.backend_set)?;
            // SAFETY: the pointer is a live, aligned u64 map value.
            let n = unsafe { fetch_add(cursor, 1) };
            table_slot(svc, (n % svc.table_size as u64) as u32)?
        }
        policy::RANDOM => {
            if svc.table_size == 0 {
                return None;
            }
            // SAFETY: a helper without arguments.
            let r = unsafe { bpf_get_prandom_u32() };
            table_slot(svc, r % svc.table_size)?
        }
        policy::MAGLEV => {
            if svc.table_size == 0 {
                return None;
            }
            table_slot(svc, flow_hash(ctx, family, service, cookie) % svc.table_size)?
        }
        _ => return None,
    };
    let key = BackendKey { backend_set: svc.backend_set, slot };
    // SAFETY: the pointer comes from a successful map lookup.
    BACKENDS.get_ptr(&key).map(|b| unsafe { *b })
}

/// Whether `backend` can be written into a socket of `family`.
#[inline(always)]
fn fits_family(backend: &Backend, family: Family) -> bool {
    is_v4_mapped(&backend.address.addr) == (family == Family::V4)
}

/// connect(): rewrite a service address to a backend.
#[inline(always)]
fn on_connect(ctx: &SockAddrContext, family: Family) -> i32 {
    let service = user_address(ctx, family);
    let Some(svc) = SERVICES.get_ptr(&service) else { return ALLOW };
    // SAFETY: the pointer comes from a successful map lookup.
    let svc = unsafe { *svc };
    // SAFETY: the context pointer is valid for this helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    on_connect_with(ctx, family, service, svc, cookie)
}

/// sendmsg() on an unconnected UDP socket: the socket's first datagram to a service
/// picks a backend; later ones reuse it.
#[inline(always)]
fn on_sendmsg(ctx: &SockAddrContext, family: Family) -> i32 {
    let service = user_address(ctx, family);
    let Some(svc) = SERVICES.get_ptr(&service) else { return ALLOW };
    // SAFETY: the pointer comes from a successful map lookup.
    let svc = unsafe { *svc };
    // SAFETY: the context pointer is valid for this helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(origin) = SOCK_ORIGINS.get_ptr(&cookie) {
        // SAFETY: the pointer comes from a successful map lookup.
        let origin = unsafe { *origin };
        if origin.service == service {
            set_user_address(ctx, family, &origin.endpoint);
            return ALLOW;
        }
    }
    on_connect_with(ctx, family, service, svc, cookie)
}

/// Picks a backend for the socket, rewrites the destination and remembers the origin.
#[inline(always)]
fn on_connect_with(
    ctx: &SockAddrContext,
    family: Family,
    service: Address,
    svc: Service,
    cookie: u64,
) -> i32 {
    let Some(backend) = pick_backend(ctx, family, &service, &svc, cookie) else { return ALLOW };
    if !fits_family(&backend, family) {
        return ALLOW;
    }
    set_user_address(ctx, family, &backend.address);
    let origin = SockOrigin { service, endpoint: backend.address, counted: 0, _pad: [0; 7] };
    let _ = SOCK_ORIGINS.insert(&cookie, &origin, 0);
    ALLOW
}

/// getpeername() and recvmsg(): show the service address instead of the backend.
#[inline(always)]
fn show_service(ctx: &SockAddrContext, family: Family) -> i32 {
    // SAFETY: the context pointer is valid for this helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(origin) = SOCK_ORIGINS.get_ptr(&cookie) else { return ALLOW };
    // SAFETY: the pointer comes from a successful map lookup.
    let origin = unsafe { *origin };
    let mut peer = user_address(ctx, family);
    // getpeername and recvmsg contexts do not carry the protocol; compare addresses.
    peer.protocol = origin.endpoint.protocol;
    if peer == origin.endpoint {
        set_user_address(ctx, family, &origin.service);
    }
    ALLOW
}

#[cgroup_sock_addr(connect4)]
pub fn keel_connect4(ctx: SockAddrContext) -> i32 {
    on_connect(&ctx, Family::V4)
}

#[cgroup_sock_addr(connect6)]
pub fn keel_connect6(ctx: SockAddrContext) -> i32 {
    on_connect(&ctx, Family::V6)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn keel_sendmsg4(ctx: SockAddrContext) -> i32 {
    on_sendmsg(&ctx, Family::V4)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn keel_sendmsg6(ctx: SockAddrContext) -> i32 {
    on_sendmsg(&ctx, Family::V6)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn keel_recvmsg4(ctx: SockAddrContext) -> i32 {
    show_service(&ctx, Family::V4)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn keel_recvmsg6(ctx: SockAddrContext) -> i32 {
    show_service(&ctx, Family::V6)
}

#[cgroup_sock_addr(getpeername4)]
pub fn keel_getpeername4(ctx: SockAddrContext) -> i32 {
    show_service(&ctx, Family::V4)
}

#[cgroup_sock_addr(getpeername6)]
pub fn keel_getpeername6(ctx: SockAddrContext) -> i32 {
    show_service(&ctx, Family::V6)
}

// ---------------------------------------------------------------------------------
// Connection counting.

#[sock_ops]
pub fn keel_sock_ops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_tcp_connect(&ctx),
        BPF_SOCK_OPS_STATE_CB => {
            if ctx.arg(1) == BPF_TCP_CLOSE {
                on_tcp_close(&ctx);
            }
        }
        _ => {}
    }
    1
}

/// A rewritten TCP socket sends its SYN: count it and ask for its state changes.
#[inline(always)]
fn on_tcp_connect(ctx: &SockOpsContext) {
    // SAFETY: the context pointer is valid for this helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(origin) = SOCK_ORIGINS.get_ptr_mut(&cookie) else { return };
    // SAFETY: the pointer comes from a successful map lookup; only this socket's own
    // callbacks touch its entry, and they run one at a time under the socket lock.
    let origin = unsafe { &mut *origin };
    if origin.counted != 0 || origin.endpoint.protocol != protocol::TCP {
        return;
    }
    origin.counted = 1;
    add_connection(&origin.endpoint);
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
}

/// A counted socket reached CLOSE: take it off its endpoint's count, once.
#[inline(always)]
fn on_tcp_close(ctx: &SockOpsContext) {
    // SAFETY: the context pointer is valid for this helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(origin) = SOCK_ORIGINS.get_ptr(&cookie) else { return };
    // SAFETY: the pointer comes from a successful map lookup.
    let origin = unsafe { *origin };
    // Whoever deletes the entry decrements, so a second keel attached during a
    // restart cannot decrement twice.
    if SOCK_ORIGINS.remove(&cookie).is_ok() && origin.counted != 0 {
        remove_connection(&origin.endpoint);
    }
}

#[inline(always)]
fn add_connection(endpoint: &Address) {
    match ENDPOINT_CONNECTIONS.get_ptr_mut(endpoint) {
        // SAFETY: a live, aligned u64 map value.
        Some(count) => {
            unsafe { fetch_add(count, 1) };
        }
        None => {
            if ENDPOINT_CONNECTIONS.insert(endpoint, &1u64, BPF_NOEXIST as u64).is_err() {
                // Another CPU created it first.
                if let Some(count) = ENDPOINT_CONNECTIONS.get_ptr_mut(endpoint) {
                    // SAFETY: as above.
                    unsafe { fetch_add(count, 1) };
                }
            }
        }
    }
}

#[inline(always)]
fn remove_connection(endpoint: &Address) {
    if let Some(count) = ENDPOINT_CONNECTIONS.get_ptr_mut(endpoint) {
        // SAFETY: a live, aligned u64 map value.
        unsafe {
            if core::ptr::read_volatile(count) > 0 {
                fetch_add(count, u64::MAX); // wrapping add of -1
            }
        }
    }
}

/// Atomically adds `delta` to `*ptr` and returns the previous value.
///
/// # Safety
/// `ptr` must point to a live, 8-byte-aligned u64 (a map value).
#[inline(always)]
unsafe fn fetch_add(ptr: *mut u64, delta: u64) -> u64 {
    // SeqCst, not Relaxed: LLVM's BPF backend lowers a relaxed add to the
    // non-fetching `lock +=` even when the result is used, returning garbage.
    // SAFETY: guaranteed by the caller.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(ptr, delta) }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
