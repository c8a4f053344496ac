//! The router's route table: compiled once per configuration from a
//! [`RouteConfig`]; picks the virtual host by
//! domain (most specific wins, as in Envoy) and the first matching route.
//!
//! Compiling ([`RouteTable::new`]) indexes the domains, anchors the regexes, parses the
//! `%VARIABLE%` header values and pre-builds every constant header value; serving a
//! request ([`RouteTable::route`]) only reads, takes no lock and allocates nothing in
//! the common case (a host with upper-case letters, a header with several values or a
//! query-parameter matcher cost one small allocation).
//!
//! After a route is selected the connection manager uses the helpers of
//! [`Selected`] and of this module:
//! - [`Selected::apply_request_headers`] / [`Selected::apply_response_headers`]: the
//!   route, virtual-host and route-config header mutations, in Envoy's order;
//! - [`Selected::rewrite_path`] / [`rewrite_path`] / [`apply_path_rewrite`]:
//!   `prefix_rewrite` and `regex_rewrite`, with [`ORIGINAL_PATH_HEADER`];
//! - [`redirect_location`]: the `location` and status of a `redirect` route;
//! - [`choose_cluster`] / [`Selected::choose_cluster`]: the cluster of a forward.

mod headers;
mod matcher;
mod rewrite;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::HashMap;

pub use headers::HeaderMutationError;
pub(crate) use matcher::authority as request_authority;
pub(crate) use matcher::string_matches;
pub(crate) use rewrite::regex_crate_substitution;
pub use rewrite::{
    apply_path_rewrite, choose_cluster, redirect_location, rewrite_path, RedirectTarget,
    ORIGINAL_PATH_HEADER,
};

use crate::model::http::{ClusterSpecifier, Route, RouteAction, RouteConfig, VirtualHost};
use crate::observe::format::FormatContext;
use crate::observe::StreamInfo;
use headers::{CompiledMutations, Target};
use matcher::{CompiledMatch, RequestView};

/// Route-configuration options (Envoy `RouteConfiguration` fields, from the model's
/// `RouteConfigOptions`); all default to Envoy's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteTableOptions {
    /// `ignore_port_in_host_matching`: match domains on the host without its `:port`.
    /// Envoy's default (false) matches the `:authority` as received, port included, so
    /// `example.com:8080` matches only a domain `example.com:8080`, `example.com:*` or
    /// `*`.
    pub ignore_port_in_host_matching: bool,
    /// `most_specific_header_mutations_wins`: apply header mutations route-config
    /// first and route last (so the route's win), instead of Envoy's default order
    /// route, virtual host, route config (where the route config's win).
    pub most_specific_header_mutations_wins: bool,
}

/// Per-request inputs that `http::request::Parts` does not carry.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestContext<'a> {
    /// `:scheme` of the downstream connection, used when the URI has none (HTTP/1
    /// origin-form): "http" or "https". Defaults to "http".
    pub scheme: Option<&'a str>,
    /// The random value of this stream for `runtime_fraction` (Envoy draws one per
    /// stream and uses it for route matching and weighted clusters alike; pass the
    /// same value to [`Selected::choose_cluster`], or one derived from `x-request-id`
    /// for stickiness). Drawn from the thread-local RNG when `None` and a route needs
    /// it.
    pub random: Option<u64>,
}

/// A compiled route table.
#[derive(Debug, Clone)]
pub struct RouteTable {
    config: RouteConfig,
    options: RouteTableOptions,
    /// Exact domains, lower-cased, to virtual-host index.
    exact: HashMap<String, usize>,
    /// Suffix wildcards (`*.example.com` stored as `.example.com`), grouped by length,
    /// longest first.
    suffixes: Vec<(usize, HashMap<String, usize>)>,
    /// Prefix wildcards (`foo.*` stored as `foo.`), grouped by length, longest first.
    prefixes: Vec<(usize, HashMap<String, usize>)>,
    /// The virtual host with domain `*`.
    default: Option<usize>,
    virtual_hosts: Vec<CompiledVirtualHost>,
    headers: CompiledMutations,
}

#[derive(Debug, Clone)]
struct CompiledVirtualHost {
    routes: Vec<CompiledRoute>,
    headers: CompiledMutations,
    /// `virtual_clusters`: the header matchers of each.
    virtual_clusters: Vec<Vec<matcher::CompiledHeaderMatcher>>,
}

#[derive(Debug, Clone)]
struct CompiledRoute {
    matcher: CompiledMatch,
    headers: CompiledMutations,
    /// `regex_rewrite` with the substitution in the regex crate's syntax.
    regex_rewrite: Option<(regex::Regex, String)>,
    /// Cumulative weights of `weighted_clusters`.
    cumulative_weights: Vec<u64>,
}

/// Why a route configuration does not compile (see [`RouteTable::try_new`]).
#[derive(Debug, thiserror::Error)]
pub enum RouteTableError {
    /// Two virtual hosts claim one domain, or two claim `*`.
    #[error(
        "route config {route_config:?}: domain {domain:?} is claimed by more than one virtual host"
    )]
    DuplicateDomain {
        /// The route configuration's name.
        route_config: String,
        /// The domain.
        domain: String,
    },
    /// A header mutation does not compile.
    #[error("route config {route_config:?}: {source}")]
    HeaderMutation {
        /// The route configuration's name.
        route_config: String,
        /// What is wrong.
        #[source]
        source: HeaderMutationError,
    },
}

/// The virtual host and route a request matched.
#[derive(Clone, Copy)]
pub struct Selected<'a> {
    /// The virtual host chosen by `:authority`.
    pub virtual_host: &'a VirtualHost,
    /// The first route of it that matched.
    pub route: &'a Route,
    /// Index of the virtual host in the route configuration.
    pub virtual_host_index: usize,
    /// Index of the route in the virtual host.
    pub route_index: usize,
    table: &'a RouteTable,
}

impl RouteTable {
    /// Compiles `config` with Envoy's default options. A header mutation that does not
    /// compile is left out (and logged); use [`try_new`](Self::try_new) to reject it.
    pub fn new(config: &RouteConfig) -> RouteTable {
        RouteTable::with_options(config, RouteTableOptions::default())
    }

    /// Compiles `config` with `options`, leaving out (and logging) what does not
    /// compile.
    pub fn with_options(config: &RouteConfig, options: RouteTableOptions) -> RouteTable {
        let (table, errors) = RouteTable::compile(config, options);
        for error in errors {
            tracing::warn!(%error, "route table: ignoring what does not compile");
        }
        table
    }

    /// Compiles `config`, failing on the first problem: duplicate domains, invalid
    /// header names or values, `%VARIABLE%` values that do not parse.
    pub fn try_new(
        config: &RouteConfig,
        options: RouteTableOptions,
    ) -> Result<RouteTable, RouteTableError> {
        let (table, errors) = RouteTable::compile(config, options);
        match errors.into_iter().next() {
            Some(error) => Err(error),
            None => Ok(table),
        }
    }

    fn compile(
        config: &RouteConfig,
        options: RouteTableOptions,
    ) -> (RouteTable, Vec<RouteTableError>) {
        let mut errors = Vec::new();
        let mut mutation_errors = Vec::new();
        let mut exact = HashMap::new();
        let mut suffixes: HashMap<usize, HashMap<String, usize>> = HashMap::new();
        let mut prefixes: HashMap<usize, HashMap<String, usize>> = HashMap::new();
        let mut default = None;
        let duplicate = |domain: &str| RouteTableError::DuplicateDomain {
            route_config: config.name.clone(),
            domain: domain.to_owned(),
        };
        for (index, vhost) in config.virtual_hosts.iter().enumerate() {
            for domain in &vhost.domains {
                let domain = domain.to_ascii_lowercase();
                let fresh = if domain == "*" {
                    default.replace(index).is_none()
                } else if let Some(suffix) = domain.strip_prefix('*') {
                    suffixes
                        .entry(suffix.len())
                        .or_default()
                        .insert(suffix.to_owned(), index)
                        .is_none()
                } else if let Some(prefix) = domain.strip_suffix('*') {
                    prefixes
                        .entry(prefix.len())
                        .or_default()
                        .insert(prefix.to_owned(), index)
                        .is_none()
                } else {
                    exact.insert(domain.clone(), index).is_none()
                };
                if !fresh {
                    errors.push(duplicate(&domain));
                }
            }
        }
        let by_length_desc = |m: HashMap<usize, HashMap<String, usize>>| {
            let mut v: Vec<_> = m.into_iter().collect();
            v.sort_by_key(|entry| std::cmp::Reverse(entry.0));
            v
        };
        let virtual_hosts = config
            .virtual_hosts
            .iter()
            .map(|vhost| CompiledVirtualHost {
                routes: vhost
                    .routes
                    .iter()
                    .map(|route| CompiledRoute::new(route, &mut mutation_errors))
                    .collect(),
                headers: CompiledMutations::new(&vhost.headers, &mut mutation_errors),
                virtual_clusters: vhost
                    .options
                    .virtual_clusters
                    .iter()
                    .map(|vc| {
                        vc.headers
                            .iter()
                            .map(matcher::CompiledHeaderMatcher::new)
                            .collect()
                    })
                    .collect(),
            })
            .collect();
        let headers = CompiledMutations::new(&config.headers, &mut mutation_errors);
        errors.extend(
            mutation_errors
                .into_iter()
                .map(|source| RouteTableError::HeaderMutation {
                    route_config: config.name.clone(),
                    source,
                }),
        );
        let table = RouteTable {
            config: config.clone(),
            options,
            exact,
            suffixes: by_length_desc(suffixes),
            prefixes: by_length_desc(prefixes),
            default,
            virtual_hosts,
            headers,
        };
        (table, errors)
    }

    /// The route configuration this table was compiled from.
    pub fn config(&self) -> &RouteConfig {
        &self.config
    }

    /// The route for a request, or `None` (Envoy answers 404 with flag NR). Uses the
    /// defaults of [`RequestContext`]: scheme "http" when the URI has none, and a
    /// random draw for `runtime_fraction`.
    pub fn route(&self, parts: &http::request::Parts) -> Option<Selected<'_>> {
        self.route_with(parts, RequestContext::default())
    }

    /// The route for a request, with the per-request inputs of `ctx`.
    pub fn route_with(
        &self,
        parts: &http::request::Parts,
        ctx: RequestContext<'_>,
    ) -> Option<Selected<'_>> {
        let vhost_index = self.find_virtual_host(parts)?;
        let compiled = &self.virtual_hosts[vhost_index];
        let mut view = RequestView::new(parts, ctx.scheme.unwrap_or("http"), ctx.random);
        let route_index = compiled
            .routes
            .iter()
            .position(|route| route.matcher.matches(&mut view))?;
        let virtual_host = &self.config.virtual_hosts[vhost_index];
        Some(Selected {
            virtual_host,
            route: &virtual_host.routes[route_index],
            virtual_host_index: vhost_index,
            route_index,
            table: self,
        })
    }

    /// The virtual host for `:authority` (Envoy's `RouteMatcher::findVirtualHost`):
    /// exact domain, then suffix wildcards longest first, then prefix wildcards longest
    /// first, then `*`. A wildcard never matches an empty string.
    pub fn virtual_host_for(&self, parts: &http::request::Parts) -> Option<&VirtualHost> {
        self.find_virtual_host(parts)
            .map(|i| &self.config.virtual_hosts[i])
    }

    fn find_virtual_host(&self, parts: &http::request::Parts) -> Option<usize> {
        if self.exact.is_empty() && self.suffixes.is_empty() && self.prefixes.is_empty() {
            return self.default;
        }
        let mut host = matcher::authority(parts)?;
        if self.options.ignore_port_in_host_matching {
            if let Some(port_start) = port_start(host) {
                host = &host[..port_start];
            }
        }
        let host: Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        self.find_domain(&host)
    }

    /// Domain lookup on a lower-cased host.
    fn find_domain(&self, host: &str) -> Option<usize> {
        if let Some(&i) = self.exact.get(host) {
            return Some(i);
        }
        for (len, map) in &self.suffixes {
            if *len < host.len() && host.is_char_boundary(host.len() - len) {
                if let Some(&i) = map.get(&host[host.len() - len..]) {
                    return Some(i);
                }
            }
        }
        for (len, map) in &self.prefixes {
            if *len < host.len() && host.is_char_boundary(*len) {
                if let Some(&i) = map.get(&host[..*len]) {
                    return Some(i);
                }
            }
        }
        self.default
    }
}

/// Where the `:port` of a host starts (Envoy's `HeaderUtility::getPortStart`): the last
/// `:`, unless it is inside an IPv6 literal `[..]`.
fn port_start(host: &str) -> Option<usize> {
    let colon = host.rfind(':')?;
    match host.rfind(']') {
        Some(bracket) if bracket > colon => None,
        _ => Some(colon),
    }
}

impl CompiledRoute {
    fn new(route: &Route, errors: &mut Vec<HeaderMutationError>) -> CompiledRoute {
        let (regex_rewrite, cumulative_weights) = match &route.action {
            RouteAction::Forward(forward) => {
                let regex_rewrite = forward.regex_rewrite.as_ref().map(|(re, substitution)| {
                    (re.clone(), rewrite::regex_crate_substitution(substitution))
                });
                let cumulative = match &forward.cluster {
                    ClusterSpecifier::Weighted(clusters) => clusters
                        .iter()
                        .scan(0u64, |sum, (_, w)| {
                            *sum += u64::from(*w);
                            Some(*sum)
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                (regex_rewrite, cumulative)
            }
            _ => (None, Vec::new()),
        };
        CompiledRoute {
            matcher: CompiledMatch::new(&route.matcher),
            headers: CompiledMutations::new(&route.headers, errors),
            regex_rewrite,
            cumulative_weights,
        }
    }
}

impl std::fmt::Debug for Selected<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Selected")
            .field("virtual_host", &self.virtual_host.name)
            .field("route", &self.route.name)
            .field("virtual_host_index", &self.virtual_host_index)
            .field("route_index", &self.route_index)
            .finish()
    }
}

impl<'a> Selected<'a> {
    fn compiled_route(&self) -> &'a CompiledRoute {
        &self.table.virtual_hosts[self.virtual_host_index].routes[self.route_index]
    }

    /// The three levels of mutations in application order.
    fn levels(&self) -> [&'a CompiledMutations; 3] {
        let route = &self.compiled_route().headers;
        let vhost = &self.table.virtual_hosts[self.virtual_host_index].headers;
        let config = &self.table.headers;
        if self.table.options.most_specific_header_mutations_wins {
            [config, vhost, route]
        } else {
            [route, vhost, config]
        }
    }

    /// Applies the request header mutations of the route, its virtual host and the
    /// route configuration to `parts.headers`, in Envoy's order (route, virtual host,
    /// route config by default, so on a conflict the least specific level wins; the
    /// reverse with `most_specific_header_mutations_wins`). Each level removes first,
    /// then adds with its `append_action`.
    ///
    /// `%VARIABLE%` values are rendered with `info` and the request itself
    /// (`%REQ(..)%` reads the headers being mutated; `:method` / `:path` come from
    /// `parts`); `scheme` is the connection's, for `%REQ(:SCHEME)%`.
    pub fn apply_request_headers(
        &self,
        parts: &mut http::request::Parts,
        info: &StreamInfo,
        scheme: Option<&str>,
    ) {
        let levels = self.levels();
        if levels.iter().all(|l| l.request.is_empty()) {
            return;
        }
        let http::request::Parts {
            method,
            uri,
            headers,
            ..
        } = parts;
        let mut base = FormatContext::new(info).with_request_line(method, uri);
        base.scheme = scheme;
        for level in levels {
            level.request.apply(headers, &base, Target::Request);
        }
    }

    /// Applies the response header mutations of the three levels to `headers`, in the
    /// same order as [`apply_request_headers`](Self::apply_request_headers).
    /// `request` is the formatter context for `%REQ(..)%` and stream values
    /// (`FormatContext::new(info)` plus the request line when known); `%RESP(..)%` reads
    /// the headers being mutated.
    pub fn apply_response_headers(
        &self,
        headers: &mut http::HeaderMap,
        request: &FormatContext<'_>,
    ) {
        for level in self.levels() {
            level.response.apply(headers, request, Target::Response);
        }
    }

    /// The new `:path` for a forward route, or `None` when the route rewrites nothing
    /// or is not a forward. Same rules as [`rewrite_path`], with the regex substitution
    /// compiled once.
    pub fn rewrite_path(&self, path_and_query: &str) -> Option<String> {
        let RouteAction::Forward(forward) = &self.route.action else {
            return None;
        };
        match (
            &forward.prefix_rewrite,
            &self.compiled_route().regex_rewrite,
        ) {
            (None, Some((re, substitution))) => {
                Some(rewrite::regex_rewritten(re, substitution, path_and_query))
            }
            _ => rewrite_path(forward, &self.route.matcher.path, path_and_query),
        }
    }

    /// The virtual cluster of the request in its virtual host (Envoy's
    /// `virtualClusterFromEntries`): the index of the first whose headers all match,
    /// the number of virtual clusters for the implicit `other` when none does, `None`
    /// when the virtual host has none.
    pub fn virtual_cluster(&self, parts: &http::request::Parts, scheme: &str) -> Option<usize> {
        let clusters = &self.table.virtual_hosts[self.virtual_host_index].virtual_clusters;
        if clusters.is_empty() {
            return None;
        }
        let view = RequestView::new(parts, scheme, None);
        Some(
            clusters
                .iter()
                .position(|matchers| matchers.iter().all(|m| m.matches(&view)))
                .unwrap_or(clusters.len()),
        )
    }

    /// The cluster of a forward route ([`choose_cluster`], with the cumulative weights
    /// computed once); `None` for other actions or when a `cluster_header` is absent.
    pub fn choose_cluster(&self, headers: &'a http::HeaderMap, random: u64) -> Option<&'a str> {
        let RouteAction::Forward(forward) = &self.route.action else {
            return None;
        };
        match &forward.cluster {
            ClusterSpecifier::Weighted(clusters) => {
                let cumulative = &self.compiled_route().cumulative_weights;
                let total = *cumulative.last()?;
                if total == 0 {
                    return None;
                }
                let selected = random % total;
                let index = cumulative.partition_point(|&end| end <= selected);
                clusters.get(index).map(|(name, _)| name.as_str())
            }
            spec => choose_cluster(spec, headers, random),
        }
    }
}
