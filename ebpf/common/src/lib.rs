//! The kernel/user contract of keel: every type that crosses between the eBPF
//! programs and the daemon, the names of the maps and their sizes.
//!
//! Rules: `#[repr(C)]`, explicit padding, integers instead of `bool`, and the byte
//! order named in the field (`_be` is network order; everything else is host order).
//! Addresses are always 16 bytes: IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`), so
//! one key type serves both families.
#![no_std]

/// Map names; the kernel keeps at most 15 characters of a map name, and the pinned
/// file under the bpffs folder carries the same name.
pub mod map_names {
    /// [`crate::Address`] of a service → [`crate::Service`].
    pub const SERVICES: &str = "KEEL_SERVICES";
    /// [`crate::BackendKey`] → [`crate::Backend`].
    pub const BACKENDS: &str = "KEEL_BACKENDS";
    /// [`crate::LbTableKey`] → backend slot (`u32`): Maglev, round-robin and random tables.
    pub const LB_TABLES: &str = "KEEL_LB_TABLES";
    /// Backend set id (`u32`) → round-robin cursor (`u64`).
    pub const RR_CURSORS: &str = "KEEL_RR_CURSORS";
    /// Endpoint [`crate::Address`] → active connections (`u64`).
    pub const ENDPOINT_CONNECTIONS: &str = "KEEL_EP_CONNS";
    /// Socket cookie (`u64`) → [`crate::SockOrigin`].
    pub const SOCK_ORIGINS: &str = "KEEL_SOCK_ORIG";
}

/// Map sizes (maximum entries).
pub mod map_sizes {
    /// Services (VIP, port, protocol).
    pub const SERVICES: u32 = 4096;
    /// Backend slots over all backend sets. Two sets per service may exist while a
    /// service is being replaced.
    pub const BACKENDS: u32 = 65536;
    /// Lookup-table entries over all backend sets (allocated on use).
    pub const LB_TABLES: u32 = 1 << 21;
    /// Round-robin cursors (one per backend set).
    pub const RR_CURSORS: u32 = 2 * SERVICES;
    /// Endpoints with a connection count.
    pub const ENDPOINT_CONNECTIONS: u32 = 65536;
    /// Sockets whose destination was rewritten (LRU: the oldest is dropped when full).
    pub const SOCK_ORIGINS: u32 = 1 << 18;
}

/// Most backends one kernel-balanced service may have: the least-connections scan
/// visits each of them at connect().
pub const MAX_BACKENDS_PER_SERVICE: u32 = 256;

/// Largest lookup table of one backend set (Maglev's table size is a prime ≤ this).
pub const MAX_LB_TABLE_SIZE: u32 = 131_071;

/// Load-balancing policies understood by the kernel programs ([`Service::policy`]).
pub mod policy {
    /// Weighted round robin over the backend set's lookup table.
    pub const ROUND_ROBIN: u8 = 1;
    /// Fewest active connections, weighted; ties go to the lowest slot.
    pub const LEAST_CONNECTIONS: u8 = 2;
    /// Weighted random over the lookup table.
    pub const RANDOM: u8 = 3;
    /// Maglev: the flow hash indexes the lookup table.
    pub const MAGLEV: u8 = 4;
}

/// IP protocol numbers used in [`Address::protocol`].
pub mod protocol {
    /// IPPROTO_TCP.
    pub const TCP: u8 = 6;
    /// IPPROTO_UDP.
    pub const UDP: u8 = 17;
}

/// An IP address, port and transport protocol: the key of a service and of an
/// endpoint's connection count.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Address {
    /// IPv6 address, or IPv4-mapped IPv6 address, in network order.
    pub addr: [u8; 16],
    /// Port in network order.
    pub port_be: u16,
    /// [`protocol::TCP`] or [`protocol::UDP`].
    pub protocol: u8,
    /// Always 0.
    pub _pad: u8,
}

/// A service the kernel balances.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Service {
    /// The backend set in force; replaced whole on every update.
    pub backend_set: u32,
    /// Number of backend slots (0..count) in the set.
    pub backend_count: u32,
    /// Number of entries in the set's lookup table (0 for least connections).
    pub table_size: u32,
    /// One of [`policy`].
    pub policy: u8,
    /// Always 0.
    pub _pad: [u8; 3],
}

/// Key of [`map_names::BACKENDS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct BackendKey {
    /// Backend set id.
    pub backend_set: u32,
    /// Slot, 0..[`Service::backend_count`].
    pub slot: u32,
}

/// One backend of a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    /// Where connections go; `protocol` equals the service's.
    pub address: Address,
    /// Relative weight, ≥ 1.
    pub weight: u32,
}

/// Key of [`map_names::LB_TABLES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct LbTableKey {
    /// Backend set id.
    pub backend_set: u32,
    /// Index, 0..[`Service::table_size`].
    pub index: u32,
}

/// What the kernel remembers of a socket whose destination it rewrote.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockOrigin {
    /// The service address the application asked for (shown by getpeername).
    pub service: Address,
    /// The endpoint the connection was sent to.
    pub endpoint: Address,
    /// 1 once the connection is included in the endpoint's connection count.
    pub counted: u8,
    /// Always 0.
    pub _pad: [u8; 7],
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY (for each impl below, checked by aya's unsafe trait contract): the types
    // are repr(C), made only of integers and integer arrays with explicit padding
    // fields, so every bit pattern is valid and there are no implicit padding bytes.
    #[allow(unsafe_code)]
    mod impls {
        use super::*;
        unsafe impl aya::Pod for Address {}
        unsafe impl aya::Pod for Service {}
        unsafe impl aya::Pod for BackendKey {}
        unsafe impl aya::Pod for Backend {}
        unsafe impl aya::Pod for LbTableKey {}
        unsafe impl aya::Pod for SockOrigin {}
    }
}

/// Mixes a word into a running flow hash (the finaliser of MurmurHash3). Used by the
/// kernel to hash a flow for Maglev; userspace uses it in tests to predict a flow.
#[inline(always)]
pub fn hash_mix(hash: u32, word: u32) -> u32 {
    let mut h = hash
        ^ word
            .wrapping_mul(0xcc9e_2d51)
            .rotate_left(15)
            .wrapping_mul(0x1b87_3593);
    h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    h
}

/// Final avalanche of a flow hash.
#[inline(always)]
pub fn hash_finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<Address>(), 20);
        assert_eq!(size_of::<Service>(), 16);
        assert_eq!(size_of::<BackendKey>(), 8);
        assert_eq!(size_of::<Backend>(), 24);
        assert_eq!(size_of::<LbTableKey>(), 8);
        assert_eq!(size_of::<SockOrigin>(), 48);
    }

    #[test]
    fn map_names_fit_the_kernel_limit() {
        for name in [
            map_names::SERVICES,
            map_names::BACKENDS,
            map_names::LB_TABLES,
            map_names::RR_CURSORS,
            map_names::ENDPOINT_CONNECTIONS,
            map_names::SOCK_ORIGINS,
        ] {
            assert!(name.len() <= 15, "{name} is longer than 15 characters");
        }
    }
}
