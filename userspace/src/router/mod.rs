//! The router's route table: compiled once per configuration from a
//! [`RouteConfig`](crate::model::http::RouteConfig); picks the virtual host by
//! domain (most specific wins, as in Envoy) and the first matching route.

use crate::model::http::{Route, RouteConfig, VirtualHost};

/// A compiled route table.
#[derive(Debug, Clone)]
pub struct RouteTable {
    _config: RouteConfig,
}

/// The virtual host and route a request matched.
#[derive(Debug, Clone, Copy)]
pub struct Selected<'a> {
    /// The virtual host chosen by `:authority`.
    pub virtual_host: &'a VirtualHost,
    /// The first route of it that matched.
    pub route: &'a Route,
}

impl RouteTable {
    /// Compiles `config`.
    pub fn new(config: &RouteConfig) -> RouteTable {
        RouteTable {
            _config: config.clone(),
        }
    }

    /// The route for a request, or `None` (Envoy answers 404 with flag NR).
    pub fn route(&self, parts: &http::request::Parts) -> Option<Selected<'_>> {
        let _ = parts;
        unimplemented!("router is being written")
    }
}
