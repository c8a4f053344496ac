//! keel: a per-node service-mesh proxy whose data path is accelerated by eBPF.
//!
//! The daemon reads an Envoy v3 bootstrap ([`config`]) into validated domain types
//! ([`model`]), loads the kernel programs and keeps their maps in step with the
//! configuration ([`datapath`]), and serves the listeners that need userspace
//! ([`listener`]). Load-balancing tables shared by the kernel and userspace live in
//! [`cluster`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod datapath;
pub mod demo;
pub mod http;
pub mod listener;
pub mod model;
pub mod observe;
pub mod router;
pub mod upstream;
