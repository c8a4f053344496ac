//! `route_config` (an inline `envoy.config.route.v3.RouteConfiguration`) →
//! [`model::http::RouteConfig`]: virtual hosts, routes, matchers, actions and header
//! changes.
//!
//! The checks are Envoy's: a domain is used once across the route table and `*` at most
//! once; a wildcard only leads or ends a domain; a route has exactly one action; the
//! clusters a route names exist (an inline route table validates its clusters in Envoy,
//! unless `validate_clusters: false`); `prefix_rewrite` and `regex_rewrite` exclude each
//! other; a direct response's status is 200 to 599 and its body at most
//! `max_direct_response_body_size_bytes` (default 4 KiB); headers starting with `:` and
//! `host` cannot be added or removed; a virtual cluster has a unique name and at least one
//! header matcher; a decorator names its operation. Regexes are compiled here, once: path
//! and value matchers must match the whole input (Envoy's RE2 full match), so they are
//! anchored; rewrite patterns (`regex_rewrite`, `host_rewrite_path_regex`) are not.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::envoy::r#type::v3 as types;
use envoy_types::pb::google::protobuf as wkt;

use super::hcm::{header_value, is_token_byte};
use super::{duration, known_cluster, timeout, Result};
use crate::config::{index, join, ConfigError};
use crate::model::{self, http as m};

/// A route's `timeout` when not set.
const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Envoy's default `max_direct_response_body_size_bytes`.
const MAX_DIRECT_RESPONSE_BODY: usize = 4096;
/// 100% in parts per million.
const MILLION: u32 = 1_000_000;
/// The retry host predicate keel implements, and its config message.
const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";
const PREVIOUS_HOSTS_TYPE: &str =
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";
/// The listener's `per_connection_buffer_limit_bytes` (Envoy's default; keel has no
/// setting for it yet).
const LISTENER_BUFFER_LIMIT: u64 = 1 << 20;
/// The `retry_on` conditions Envoy knows (HTTP, then gRPC).
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Converts the route table at `path`.
pub(super) fn route_config(
    config: &route::RouteConfiguration,
    path: &str,
    clusters: &[model::Cluster],
) -> Result<m::RouteConfig> {
    let hosts_path = join(path, "virtual_hosts");
    let mut virtual_hosts = Vec::with_capacity(config.virtual_hosts.len());
    let max_body = match &config.max_direct_response_body_size_bytes {
        None => MAX_DIRECT_RESPONSE_BODY,
        Some(limit) => limit.value as usize,
    };
    // `validate_clusters: false`: unknown clusters are accepted (503 NC at request time).
    let _validation =
        super::ClusterValidation::set(config.validate_clusters.as_ref().is_none_or(|b| b.value));
    // Every domain of the table, with where it was first given.
    let mut domains: HashMap<String, String> = HashMap::new();
    for (i, host) in config.virtual_hosts.iter().enumerate() {
        let host_path = index(&hosts_path, i);
        let converted = virtual_host(host, &host_path, clusters, max_body)?;
        for (j, domain) in converted.domains.iter().enumerate() {
            let domain_path = index(&join(&host_path, "domains"), j);
            if let Some(first) = domains.get(domain) {
                let message = if domain == "*" {
                    format!(
                        "a second \"*\" (the first is at {first}); only one virtual host may match \
                         any domain"
                    )
                } else {
                    format!(
                        "duplicate domain \"{domain}\" (first at {first}); a domain must be unique \
                         across all virtual hosts of a route table"
                    )
                };
                return Err(ConfigError::field(domain_path, message));
            }
            domains.insert(domain.clone(), domain_path);
        }
        virtual_hosts.push(converted);
    }
    Ok(m::RouteConfig {
        name: config.name.clone(),
        virtual_hosts,
        headers: header_mutations(
            &config.request_headers_to_add,
            &config.request_headers_to_remove,
            &config.response_headers_to_add,
            &config.response_headers_to_remove,
            path,
        )?,
        options: m::RouteConfigOptions {
            ignore_port_in_host_matching: config.ignore_port_in_host_matching,
            most_specific_header_mutations_wins: config.most_specific_header_mutations_wins,
            internal_only_headers: internal_only_headers(
                &config.internal_only_headers,
                &join(path, "internal_only_headers"),
            )?,
        },
    })
}

/// `internal_only_headers`: header names, lower-cased.
fn internal_only_headers(names: &[String], path: &str) -> Result<Vec<http::HeaderName>> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let item = index(path, i);
            let lower = regular_header_name(name, &item)?;
            http::HeaderName::from_bytes(lower.as_bytes())
                .map_err(|_| ConfigError::field(item, format!("{name:?} is not a header name")))
        })
        .collect()
}

fn virtual_host(
    host: &route::VirtualHost,
    path: &str,
    clusters: &[model::Cluster],
    max_body: usize,
) -> Result<m::VirtualHost> {
    if host.name.is_empty() {
        return Err(ConfigError::field(
            join(path, "name"),
            "missing; every virtual host needs a name (it appears in statistics)",
        ));
    }
    let domains_path = join(path, "domains");
    if host.domains.is_empty() {
        return Err(ConfigError::field(
            domains_path,
            "missing; list the Host/:authority values this virtual host serves, or \"*\" for any",
        ));
    }
    let domains = host
        .domains
        .iter()
        .enumerate()
        .map(|(i, d)| domain(d, &index(&domains_path, i)))
        .collect::<Result<Vec<_>>>()?;
    let routes_path = join(path, "routes");
    let mut routes = host
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| convert_route(r, &index(&routes_path, i), clusters, max_body))
        .collect::<Result<Vec<_>>>()?;
    // What routes take from their virtual host: its retry policy when they have none,
    // its buffer limit, the attempt-count headers.
    let vhost_retry = host
        .retry_policy
        .as_ref()
        .map(|p| retry_policy(p, &join(path, "retry_policy")))
        .transpose()?;
    #[allow(deprecated)]
    let vhost_limit = buffer_limit(
        host.request_body_buffer_limit.as_ref(),
        host.per_request_buffer_limit_bytes.as_ref(),
        path,
    )?;
    for route in &mut routes {
        if let m::RouteAction::Forward(forward) = &mut route.action {
            if forward.retry_policy.is_none() {
                forward.retry_policy.clone_from(&vhost_retry);
            }
            let options = &mut forward.options;
            options.buffer_limit = options.buffer_limit.or(vhost_limit);
            options.include_request_attempt_count = host.include_request_attempt_count;
            options.include_attempt_count_in_response = host.include_attempt_count_in_response;
        }
    }
    Ok(m::VirtualHost {
        name: host.name.clone(),
        domains,
        routes,
        headers: header_mutations(
            &host.request_headers_to_add,
            &host.request_headers_to_remove,
            &host.response_headers_to_add,
            &host.response_headers_to_remove,
            path,
        )?,
        options: m::VirtualHostOptions {
            require_tls: require_tls(host.require_tls, &join(path, "require_tls"))?,
            virtual_clusters: virtual_clusters(
                &host.virtual_clusters,
                &join(path, "virtual_clusters"),
            )?,
        },
    })
}

fn require_tls(value: i32, path: &str) -> Result<m::RequireTls> {
    use route::virtual_host::TlsRequirementType as T;
    match T::try_from(value) {
        Ok(T::None) => Ok(m::RequireTls::None),
        Ok(T::ExternalOnly) => Ok(m::RequireTls::ExternalOnly),
        Ok(T::All) => Ok(m::RequireTls::All),
        Err(_) => Err(ConfigError::field(
            path,
            format!("unknown value {value}; expected NONE, EXTERNAL_ONLY or ALL"),
        )),
    }
}

/// `virtual_clusters`: each with a unique name and at least one header matcher.
fn virtual_clusters(list: &[route::VirtualCluster], path: &str) -> Result<Vec<m::VirtualCluster>> {
    let mut seen: HashMap<&str, String> = HashMap::new();
    let mut out = Vec::with_capacity(list.len());
    for (i, vc) in list.iter().enumerate() {
        let item = index(path, i);
        if vc.name.is_empty() {
            return Err(ConfigError::field(
                join(&item, "name"),
                "missing; a virtual cluster needs a name (its statistics are \
                 vhost.<virtual host>.vcluster.<name>.*)",
            ));
        }
        if let Some(first) = seen.insert(&vc.name, item.clone()) {
            return Err(ConfigError::field(
                join(&item, "name"),
                format!(
                    "duplicate virtual cluster \"{}\" (first at {first})",
                    vc.name
                ),
            ));
        }
        let headers_path = join(&item, "headers");
        if vc.headers.is_empty() {
            return Err(ConfigError::field(
                headers_path,
                "missing; give at least one header matcher (e.g. {name: \":path\", \
                 string_match: {prefix: \"/api\"}})",
            ));
        }
        let headers = vc
            .headers
            .iter()
            .enumerate()
            .map(|(j, h)| header_matcher(h, &index(&headers_path, j)))
            .collect::<Result<Vec<_>>>()?;
        out.push(m::VirtualCluster {
            name: vc.name.clone(),
            headers,
        });
    }
    Ok(out)
}

/// A domain, lower-cased: `*`, an exact name, or one `*` leading (`*.example.com`,
/// `*-bar.example.com`) or ending (`example.*`, `foo-*`) it. Envoy would read a `*`
/// anywhere else as a literal character that no Host header holds.
fn domain(domain: &str, path: &str) -> Result<String> {
    if domain.is_empty() {
        return Err(ConfigError::field(
            path,
            "empty domain; give a host name, a wildcard such as *.example.com, or \"*\"",
        ));
    }
    header_value(domain, path)?;
    let lower = domain.to_ascii_lowercase();
    let stars = lower.matches('*').count();
    let valid = stars == 0
        || lower == "*"
        || (stars == 1 && (lower.starts_with('*') || lower.ends_with('*')));
    if !valid {
        return Err(ConfigError::field(
            path,
            format!(
                "\"{domain}\": a wildcard may only start (*.example.com) or end (example.*) a \
                 domain, once, or be the whole domain (\"*\")"
            ),
        ));
    }
    Ok(lower)
}

fn convert_route(
    r: &route::Route,
    path: &str,
    clusters: &[model::Cluster],
    max_body: usize,
) -> Result<m::Route> {
    use route::route::Action;

    let match_path = join(path, "match");
    let Some(route_match) = &r.r#match else {
        return Err(ConfigError::field(
            match_path,
            "missing; a route needs a match, e.g. match: {prefix: \"/\"}",
        ));
    };
    let matcher = convert_match(route_match, &match_path)?;
    let action = match &r.action {
        Some(Action::Route(action)) => {
            let mut forward = forward(action, &join(path, "route"), clusters)?;
            #[allow(deprecated)]
            let limit = buffer_limit(
                r.request_body_buffer_limit.as_ref(),
                r.per_request_buffer_limit_bytes.as_ref(),
                path,
            )?;
            forward.options.buffer_limit = limit;
            m::RouteAction::Forward(Box::new(forward))
        }
        Some(Action::Redirect(redirect)) => {
            m::RouteAction::Redirect(convert_redirect(redirect, &join(path, "redirect"))?)
        }
        Some(Action::DirectResponse(response)) => {
            direct_response(response, &join(path, "direct_response"), max_body)?
        }
        // The supported-field check rejects these first.
        Some(Action::FilterAction(_)) => {
            return Err(ConfigError::field(
                join(path, "filter_action"),
                "field not supported by keel",
            ))
        }
        Some(Action::NonForwardingAction(_)) => {
            return Err(ConfigError::field(
                join(path, "non_forwarding_action"),
                "field not supported by keel",
            ))
        }
        None => {
            return Err(ConfigError::field(
                path,
                "the route has no action; set one of route, redirect or direct_response",
            ))
        }
    };
    Ok(m::Route {
        name: r.name.clone(),
        matcher,
        action,
        headers: header_mutations(
            &r.request_headers_to_add,
            &r.request_headers_to_remove,
            &r.response_headers_to_add,
            &r.response_headers_to_remove,
            path,
        )?,
        decorator: match &r.decorator {
            None => None,
            Some(d) if d.operation.is_empty() => {
                return Err(ConfigError::field(
                    join(&join(path, "decorator"), "operation"),
                    "missing; name the operation (the span name of this route)",
                ))
            }
            Some(d) => Some(d.operation.clone()),
        },
        metadata: r
            .metadata
            .as_ref()
            .filter(|m| !m.filter_metadata.is_empty())
            .map(|m| {
                std::sync::Arc::new(
                    m.filter_metadata
                        .iter()
                        .map(|(k, v)| (k.clone(), super::struct_to_json(v)))
                        .collect(),
                )
            }),
    })
}

// ---------------------------------------------------------------------------------------
// Matching.

fn convert_match(route_match: &route::RouteMatch, path: &str) -> Result<m::RouteMatch> {
    use route::route_match::PathSpecifier;

    let path_match = match &route_match.path_specifier {
        Some(PathSpecifier::Prefix(prefix)) => m::PathMatch::Prefix(prefix.clone()),
        Some(PathSpecifier::Path(exact)) => m::PathMatch::Exact(exact.clone()),
        Some(PathSpecifier::SafeRegex(regex)) => {
            m::PathMatch::Regex(compile(regex, &join(path, "safe_regex"), Anchor::Whole)?)
        }
        Some(PathSpecifier::PathSeparatedPrefix(prefix)) => {
            separated_prefix(prefix, &join(path, "path_separated_prefix"))?;
            m::PathMatch::SeparatedPrefix(prefix.clone())
        }
        // The supported-field check rejects these first.
        Some(PathSpecifier::ConnectMatcher(_)) => {
            return Err(ConfigError::field(
                join(path, "connect_matcher"),
                "field not supported by keel",
            ))
        }
        Some(PathSpecifier::PathMatchPolicy(_)) => {
            return Err(ConfigError::field(
                join(path, "path_match_policy"),
                "field not supported by keel",
            ))
        }
        None => {
            return Err(ConfigError::field(
                path,
                "missing the path to match; set one of prefix, path, safe_regex or \
                 path_separated_prefix",
            ))
        }
    };
    let headers_path = join(path, "headers");
    let headers = route_match
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_matcher(h, &index(&headers_path, i)))
        .collect::<Result<Vec<_>>>()?;
    let query_path = join(path, "query_parameters");
    let query_parameters = route_match
        .query_parameters
        .iter()
        .enumerate()
        .map(|(i, q)| query_parameter(q, &index(&query_path, i)))
        .collect::<Result<Vec<_>>>()?;
    let runtime_fraction_ppm = route_match
        .runtime_fraction
        .as_ref()
        .map(|f| runtime_fraction_ppm(f, &join(path, "runtime_fraction")))
        .transpose()?;
    Ok(m::RouteMatch {
        path: path_match,
        case_sensitive: route_match.case_sensitive.as_ref().is_none_or(|b| b.value),
        headers,
        query_parameters,
        grpc: route_match.grpc.is_some(),
        runtime_fraction_ppm,
    })
}

/// Envoy's rule for `path_separated_prefix`: `^[^?#]+[^?#/]$`.
fn separated_prefix(prefix: &str, path: &str) -> Result<()> {
    let problem = if prefix.contains(['?', '#']) {
        Some("must not contain ? or #")
    } else if prefix.ends_with('/') {
        Some("must not end in /")
    } else if prefix.chars().count() < 2 {
        Some("needs at least two characters, such as /api")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(ConfigError::field(
            path,
            format!("\"{prefix}\" {problem} (Envoy's rule: ^[^?#]+[^?#/]$)"),
        )),
        None => Ok(()),
    }
}

// Envoy still accepts the deprecated fields read here, so keel does too.
#[allow(deprecated)]
pub(super) fn header_matcher(h: &route::HeaderMatcher, path: &str) -> Result<m::HeaderMatcher> {
    use route::header_matcher::HeaderMatchSpecifier as S;

    let name = matcher_header_name(&h.name, &join(path, "name"))?;
    let literal = |kind, value: &String, field: &str| -> Result<m::ValueMatch> {
        if value.is_empty() && kind != m::StringMatchKind::Exact {
            return Err(ConfigError::field(
                join(path, field),
                "must not be empty; to match any value use present_match: true",
            ));
        }
        Ok(m::ValueMatch::String(m::StringMatcher {
            kind,
            value: value.clone(),
            ignore_case: false,
        }))
    };
    let rule = match &h.header_match_specifier {
        // Envoy: no specifier means the header must be present.
        None => m::ValueMatch::Present,
        Some(S::PresentMatch(true)) => m::ValueMatch::Present,
        Some(S::PresentMatch(false)) => m::ValueMatch::Absent,
        Some(S::ExactMatch(value)) => literal(m::StringMatchKind::Exact, value, "exact_match")?,
        Some(S::PrefixMatch(value)) => literal(m::StringMatchKind::Prefix, value, "prefix_match")?,
        Some(S::SuffixMatch(value)) => literal(m::StringMatchKind::Suffix, value, "suffix_match")?,
        Some(S::ContainsMatch(value)) => {
            literal(m::StringMatchKind::Contains, value, "contains_match")?
        }
        Some(S::SafeRegexMatch(regex)) => m::ValueMatch::Regex(compile(
            regex,
            &join(path, "safe_regex_match"),
            Anchor::Whole,
        )?),
        Some(S::RangeMatch(range)) => int_range(range, &join(path, "range_match"))?,
        Some(S::StringMatch(string)) => string_matcher(string, &join(path, "string_match"))?,
    };
    Ok(m::HeaderMatcher {
        name,
        rule,
        invert: h.invert_match,
        treat_missing_as_empty: h.treat_missing_header_as_empty,
    })
}

fn int_range(range: &types::Int64Range, path: &str) -> Result<m::ValueMatch> {
    if range.start >= range.end {
        return Err(ConfigError::field(
            path,
            format!(
                "the range [{}, {}) is empty (start is inclusive, end exclusive); give start < end",
                range.start, range.end
            ),
        ));
    }
    Ok(m::ValueMatch::Range {
        start: range.start,
        end: range.end,
    })
}

fn query_parameter(
    q: &route::QueryParameterMatcher,
    path: &str,
) -> Result<m::QueryParameterMatcher> {
    use route::query_parameter_matcher::QueryParameterMatchSpecifier as S;

    if q.name.is_empty() {
        return Err(ConfigError::field(
            join(path, "name"),
            "missing; name the query parameter",
        ));
    }
    if q.name.len() > 1024 {
        return Err(ConfigError::field(
            join(path, "name"),
            "longer than Envoy's limit of 1024 bytes",
        ));
    }
    let rule = match &q.query_parameter_match_specifier {
        // Envoy: no specifier means the parameter must be present.
        None | Some(S::PresentMatch(true)) => m::ValueMatch::Present,
        Some(S::PresentMatch(false)) => m::ValueMatch::Absent,
        Some(S::StringMatch(string)) => string_matcher(string, &join(path, "string_match"))?,
    };
    Ok(m::QueryParameterMatcher {
        name: q.name.clone(),
        rule,
    })
}

/// A `StringMatcher`; `ignore_case` lower-cases the literal (it does not apply to
/// `safe_regex`, as in Envoy).
fn string_matcher(s: &matcher::StringMatcher, path: &str) -> Result<m::ValueMatch> {
    use matcher::string_matcher::MatchPattern as P;

    let (kind, value, field) = match &s.match_pattern {
        Some(P::Exact(value)) => (m::StringMatchKind::Exact, value, "exact"),
        Some(P::Prefix(value)) => (m::StringMatchKind::Prefix, value, "prefix"),
        Some(P::Suffix(value)) => (m::StringMatchKind::Suffix, value, "suffix"),
        Some(P::Contains(value)) => (m::StringMatchKind::Contains, value, "contains"),
        Some(P::SafeRegex(regex)) => {
            return Ok(m::ValueMatch::Regex(compile(
                regex,
                &join(path, "safe_regex"),
                Anchor::Whole,
            )?))
        }
        // The supported-field check rejects this first.
        Some(P::Custom(_)) => {
            return Err(ConfigError::field(
                join(path, "custom"),
                "field not supported by keel",
            ))
        }
        None => {
            return Err(ConfigError::field(
                path,
                "missing the pattern; set one of exact, prefix, suffix, contains or safe_regex",
            ))
        }
    };
    if value.is_empty() && kind != m::StringMatchKind::Exact {
        return Err(ConfigError::field(
            join(path, field),
            "must not be empty (Envoy forbids it); to match any value use safe_regex: {regex: \".*\"}",
        ));
    }
    Ok(m::ValueMatch::String(m::StringMatcher {
        kind,
        value: if s.ignore_case {
            value.to_ascii_lowercase()
        } else {
            value.clone()
        },
        ignore_case: s.ignore_case,
    }))
}

/// Whether a compiled regex must match all of its input.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Anchor {
    /// Matchers: the whole path or value (Envoy's RE2 full match).
    Whole,
    /// Rewrites: any match in the input.
    Anywhere,
}

/// Compiles `regex.regex` (at `path`, the `RegexMatcher`). keel reads RE2 syntax with the
/// `regex` crate, which accepts nearly all of it and guarantees linear time as RE2 does.
fn compile(regex: &matcher::RegexMatcher, path: &str, anchor: Anchor) -> Result<regex::Regex> {
    let regex_path = join(path, "regex");
    if regex.regex.is_empty() {
        return Err(ConfigError::field(
            regex_path,
            "missing; give the regular expression",
        ));
    }
    let pattern = match anchor {
        Anchor::Whole => format!("^(?:{})$", regex.regex),
        Anchor::Anywhere => regex.regex.clone(),
    };
    regex::Regex::new(&pattern).map_err(|_| {
        // Report the error against the pattern as written, not the anchored one.
        let reason = match regex::Regex::new(&regex.regex) {
            Err(e) => e.to_string(),
            Ok(_) => "it cannot be anchored to match the whole input".to_string(),
        };
        ConfigError::field(
            regex_path,
            format!(
                "\"{}\" is not a valid regular expression: {reason}",
                regex.regex
            ),
        )
    })
}

/// Parts per million of a `RuntimeFractionalPercent`'s `default_value` (its
/// `runtime_key` is accepted and ignored: keel has no runtime). Over 100% is 100%, as in
/// Envoy.
fn runtime_fraction_ppm(fraction: &core::RuntimeFractionalPercent, path: &str) -> Result<u32> {
    let Some(value) = &fraction.default_value else {
        return Err(ConfigError::field(
            join(path, "default_value"),
            "missing; give numerator and denominator (HUNDRED, TEN_THOUSAND or MILLION)",
        ));
    };
    fractional_percent_ppm(value, &join(path, "default_value"))
}

fn fractional_percent_ppm(value: &types::FractionalPercent, path: &str) -> Result<u32> {
    use types::fractional_percent::DenominatorType;
    let scale: u64 = match DenominatorType::try_from(value.denominator) {
        Ok(DenominatorType::Hundred) => 10_000,
        Ok(DenominatorType::TenThousand) => 100,
        Ok(DenominatorType::Million) => 1,
        Err(_) => {
            return Err(ConfigError::field(
                join(path, "denominator"),
                format!(
                    "unknown denominator {}; expected HUNDRED, TEN_THOUSAND or MILLION",
                    value.denominator
                ),
            ))
        }
    };
    let ppm = (u64::from(value.numerator) * scale).min(u64::from(MILLION));
    Ok(u32::try_from(ppm).expect("at most a million"))
}

// ---------------------------------------------------------------------------------------
// Actions.

fn forward(
    action: &route::RouteAction,
    path: &str,
    clusters: &[model::Cluster],
) -> Result<m::ForwardAction> {
    use route::route_action::{ClusterSpecifier as C, HostRewriteSpecifier as H};

    let cluster = match &action.cluster_specifier {
        Some(C::Cluster(name)) => {
            let cluster_path = join(path, "cluster");
            if name.is_empty() {
                return Err(ConfigError::field(
                    cluster_path,
                    "missing; name the cluster to forward to",
                ));
            }
            known_cluster(name, &cluster_path, clusters)?;
            m::ClusterSpecifier::Cluster(name.clone())
        }
        Some(C::WeightedClusters(weighted)) => {
            weighted_clusters(weighted, &join(path, "weighted_clusters"), clusters)?
        }
        Some(C::ClusterHeader(header)) => {
            m::ClusterSpecifier::Header(matcher_header_name(header, &join(path, "cluster_header"))?)
        }
        // The supported-field check rejects these first.
        Some(C::ClusterSpecifierPlugin(_)) | Some(C::InlineClusterSpecifierPlugin(_)) => {
            return Err(ConfigError::field(
                path,
                "cluster specifier plugins are not supported by keel",
            ))
        }
        None => {
            return Err(ConfigError::field(
                path,
                "missing the upstream; set one of cluster, weighted_clusters or cluster_header",
            ))
        }
    };

    let prefix_rewrite = if action.prefix_rewrite.is_empty() {
        None
    } else {
        header_value(&action.prefix_rewrite, &join(path, "prefix_rewrite"))?;
        Some(action.prefix_rewrite.clone())
    };
    let regex_rewrite = match &action.regex_rewrite {
        None => None,
        Some(_) if prefix_rewrite.is_some() => {
            return Err(ConfigError::field(
                join(path, "regex_rewrite"),
                "prefix_rewrite is set too; give only one of prefix_rewrite and regex_rewrite \
                 (Envoy rejects both)",
            ))
        }
        Some(rewrite) => Some(regex_rewrite(rewrite, &join(path, "regex_rewrite"))?),
    };
    let host_rewrite = match &action.host_rewrite_specifier {
        None => m::HostRewrite::None,
        Some(H::HostRewriteLiteral(host)) if host.is_empty() => m::HostRewrite::None,
        Some(H::HostRewriteLiteral(host)) => {
            header_value(host, &join(path, "host_rewrite_literal"))?;
            m::HostRewrite::Literal(host.clone())
        }
        Some(H::AutoHostRewrite(auto)) if auto.value => m::HostRewrite::Auto,
        Some(H::AutoHostRewrite(_)) => m::HostRewrite::None,
        Some(H::HostRewriteHeader(name)) => {
            let header_path = join(path, "host_rewrite_header");
            let lower = regular_header_name(name, &header_path)?;
            m::HostRewrite::Header(http::HeaderName::from_bytes(lower.as_bytes()).map_err(
                |_| ConfigError::field(header_path, format!("{name:?} is not a header name")),
            )?)
        }
        Some(H::HostRewritePathRegex(rewrite)) => {
            let (re, substitution) =
                self::regex_rewrite(rewrite, &join(path, "host_rewrite_path_regex"))?;
            m::HostRewrite::PathRegex(re, crate::router::regex_crate_substitution(&substitution))
        }
        // The supported-field check rejects these first.
        Some(_) => {
            return Err(ConfigError::field(
                path,
                "this host rewrite is not supported by keel; use host_rewrite_literal or \
                 auto_host_rewrite",
            ))
        }
    };
    let idle_timeout = match &action.idle_timeout {
        None => None,
        // Zero disables idle timeouts for the route, the stream idle timeout included.
        Some(d) => Some(duration(d, &join(path, "idle_timeout"))?),
    };

    let mirrors_path = join(path, "request_mirror_policies");
    let mut mirrors = Vec::with_capacity(action.request_mirror_policies.len());
    for (i, mirror) in action.request_mirror_policies.iter().enumerate() {
        let mirror_path = index(&mirrors_path, i);
        let cluster_path = join(&mirror_path, "cluster");
        if mirror.cluster.is_empty() {
            return Err(ConfigError::field(
                cluster_path,
                "missing; name the cluster to mirror requests to",
            ));
        }
        known_cluster(&mirror.cluster, &cluster_path, clusters)?;
        let ppm = match &mirror.runtime_fraction {
            // All requests when not set.
            None => MILLION,
            Some(f) => runtime_fraction_ppm(f, &join(&mirror_path, "runtime_fraction"))?,
        };
        mirrors.push((mirror.cluster.clone(), ppm));
    }

    let route_timeout = timeout(
        action.timeout.as_ref(),
        Some(DEFAULT_ROUTE_TIMEOUT),
        &join(path, "timeout"),
    )?;
    let max_stream_duration = action
        .max_stream_duration
        .as_ref()
        .map(|d| stream_duration(d, &join(path, "max_stream_duration")))
        .transpose()?;
    Ok(m::ForwardAction {
        cluster,
        prefix_rewrite,
        regex_rewrite,
        host_rewrite,
        cluster_not_found_status: cluster_not_found_status(
            action.cluster_not_found_response_code,
            &join(path, "cluster_not_found_response_code"),
        )?,
        // With max_stream_duration Envoy's router applies no route timeout (and sends
        // no x-envoy-expected-rq-timeout-ms): the stream duration limit replaces it.
        timeout: if max_stream_duration.is_some() {
            None
        } else {
            route_timeout
        },
        idle_timeout,
        upgrades: route_upgrades(&action.upgrade_configs, &join(path, "upgrade_configs"))?,
        max_stream_duration,
        mirrors,
        retry_policy: action
            .retry_policy
            .as_ref()
            .map(|p| retry_policy(p, &join(path, "retry_policy")))
            .transpose()?,
        hash_policy: hash_policies(&action.hash_policy, &join(path, "hash_policy"))?,
        options: m::ForwardOptions {
            priority: routing_priority(action.priority, &join(path, "priority"))?,
            ..m::ForwardOptions::default()
        },
    })
}

/// `cluster_not_found_response_code` as a status.
fn cluster_not_found_status(value: i32, path: &str) -> Result<u16> {
    use route::route_action::ClusterNotFoundResponseCode as C;
    match C::try_from(value) {
        Ok(C::ServiceUnavailable) => Ok(503),
        Ok(C::NotFound) => Ok(404),
        Ok(C::InternalServerError) => Ok(500),
        Err(_) => Err(ConfigError::field(
            path,
            format!(
                "unknown value {value}; expected SERVICE_UNAVAILABLE, NOT_FOUND or \
                 INTERNAL_SERVER_ERROR"
            ),
        )),
    }
}

/// A route's `priority`: DEFAULT or HIGH.
fn routing_priority(value: i32, path: &str) -> Result<model::breakers::RoutingPriority> {
    match core::RoutingPriority::try_from(value) {
        Ok(core::RoutingPriority::Default) => Ok(model::breakers::RoutingPriority::Default),
        Ok(core::RoutingPriority::High) => Ok(model::breakers::RoutingPriority::High),
        Err(_) => Err(ConfigError::field(
            path,
            format!("unknown priority {value}; use DEFAULT or HIGH"),
        )),
    }
}

/// A route's `hash_policy` list: header, cookie and source IP.
fn hash_policies(
    policies: &[route::route_action::HashPolicy],
    path: &str,
) -> Result<Vec<m::HashPolicy>> {
    use route::route_action::hash_policy::PolicySpecifier as P;
    let mut out = Vec::with_capacity(policies.len());
    for (i, policy) in policies.iter().enumerate() {
        let item = index(path, i);
        let source = match &policy.policy_specifier {
            Some(P::Header(header)) => {
                let name_path = join(&item, "header.header_name");
                if header.header_name.is_empty() {
                    return Err(ConfigError::field(
                        name_path,
                        "missing; name a request header",
                    ));
                }
                let name = if header.header_name.eq_ignore_ascii_case(":authority") {
                    "host".to_owned()
                } else if header.header_name.starts_with(':') {
                    return Err(ConfigError::field(
                        name_path,
                        "keel hashes regular headers and :authority only",
                    ));
                } else {
                    regular_header_name(&header.header_name.to_ascii_lowercase(), &name_path)?
                };
                m::HashSource::Header(
                    ::http::HeaderName::from_bytes(name.as_bytes())
                        .expect("checked by regular_header_name"),
                )
            }
            Some(P::Cookie(cookie)) => {
                let cookie_path = join(&item, "cookie");
                if cookie.name.is_empty()
                    || !cookie.name.bytes().all(|b| is_token_byte(b) && b != b'=')
                {
                    return Err(ConfigError::field(
                        join(&cookie_path, "name"),
                        format!("\"{}\" is not a cookie name (a token)", cookie.name),
                    ));
                }
                let path_value = if cookie.path.is_empty() {
                    None
                } else {
                    header_value(&cookie.path, &join(&cookie_path, "path"))?;
                    if cookie.path.contains(';') || cookie.path.contains('"') {
                        return Err(ConfigError::field(
                            join(&cookie_path, "path"),
                            "must not contain ';' or '\"'",
                        ));
                    }
                    Some(cookie.path.clone())
                };
                m::HashSource::Cookie {
                    name: cookie.name.clone(),
                    ttl: cookie
                        .ttl
                        .as_ref()
                        .map(|d| duration(d, &join(&cookie_path, "ttl")))
                        .transpose()?,
                    path: path_value,
                }
            }
            Some(P::ConnectionProperties(properties)) => {
                if !properties.source_ip {
                    return Err(ConfigError::field(
                        join(&item, "connection_properties.source_ip"),
                        "must be true (otherwise the policy hashes nothing)",
                    ));
                }
                m::HashSource::SourceIp
            }
            // The supported-field check rejects the other policies first.
            Some(_) | None => {
                return Err(ConfigError::field(
                    &item,
                    "missing the policy; set header, cookie or connection_properties",
                ))
            }
        };
        out.push(m::HashPolicy {
            source,
            terminal: policy.terminal,
        });
    }
    Ok(out)
}

/// `RouteAction.max_stream_duration`.
fn stream_duration(
    limits: &route::route_action::MaxStreamDuration,
    path: &str,
) -> Result<m::RouteStreamDuration> {
    let field = |d: &Option<envoy_types::pb::google::protobuf::Duration>, name: &str| {
        d.as_ref()
            .map(|d| duration(d, &join(path, name)))
            .transpose()
    };
    Ok(m::RouteStreamDuration {
        max_stream_duration: field(&limits.max_stream_duration, "max_stream_duration")?,
        grpc_timeout_header_max: field(&limits.grpc_timeout_header_max, "grpc_timeout_header_max")?,
        grpc_timeout_header_offset: field(
            &limits.grpc_timeout_header_offset,
            "grpc_timeout_header_offset",
        )?,
    })
}

/// A route's `upgrade_configs`: (lower-cased type, `enabled`, default true), each type
/// once.
fn route_upgrades(
    upgrades: &[route::route_action::UpgradeConfig],
    path: &str,
) -> Result<Vec<(String, bool)>> {
    let mut out: Vec<(String, bool)> = Vec::with_capacity(upgrades.len());
    for (i, upgrade) in upgrades.iter().enumerate() {
        let type_path = join(&index(path, i), "upgrade_type");
        let upgrade_type = upgrade.upgrade_type.to_ascii_lowercase();
        if upgrade_type.is_empty() {
            return Err(ConfigError::field(
                type_path,
                "missing; name the upgrade, e.g. websocket",
            ));
        }
        if !upgrade_type.bytes().all(is_token_byte) {
            return Err(ConfigError::field(
                type_path,
                format!(
                    "\"{}\" is not a valid Upgrade token (letters, digits and !#$%&'*+-.^_`|~)",
                    upgrade.upgrade_type
                ),
            ));
        }
        if out.iter().any(|(t, _)| *t == upgrade_type) {
            return Err(ConfigError::field(
                type_path,
                format!("duplicate upgrade type \"{upgrade_type}\"; give each upgrade once"),
            ));
        }
        let enabled = upgrade.enabled.as_ref().is_none_or(|b| b.value);
        out.push((upgrade_type, enabled));
    }
    Ok(out)
}

// Envoy still accepts the deprecated fields read here, so keel does too.
#[allow(deprecated)]
fn weighted_clusters(
    weighted: &route::WeightedCluster,
    path: &str,
    clusters: &[model::Cluster],
) -> Result<m::ClusterSpecifier> {
    let list_path = join(path, "clusters");
    if weighted.clusters.is_empty() {
        return Err(ConfigError::field(
            list_path,
            "missing; list the clusters with their weights",
        ));
    }
    let mut total: u64 = 0;
    let mut out = Vec::with_capacity(weighted.clusters.len());
    for (i, c) in weighted.clusters.iter().enumerate() {
        let item = index(&list_path, i);
        let name_path = join(&item, "name");
        if c.name.is_empty() {
            return Err(ConfigError::field(name_path, "missing; name the cluster"));
        }
        known_cluster(&c.name, &name_path, clusters)?;
        // Envoy's default weight is 0.
        let weight = c.weight.as_ref().map_or(0, |w| w.value);
        total += u64::from(weight);
        out.push((c.name.clone(), weight));
    }
    if total == 0 {
        return Err(ConfigError::field(
            list_path,
            "the weights add up to 0; give at least one cluster a weight",
        ));
    }
    if total > u64::from(u32::MAX) {
        return Err(ConfigError::field(
            list_path,
            format!("the weights add up to {total}, more than Envoy's limit of 4294967295"),
        ));
    }
    if let Some(declared) = &weighted.total_weight {
        if u64::from(declared.value) != total {
            return Err(ConfigError::field(
                join(path, "total_weight"),
                format!(
                    "is {} but the weights add up to {total}; remove total_weight (deprecated) or \
                     make it the sum",
                    declared.value
                ),
            ));
        }
    }
    Ok(m::ClusterSpecifier::Weighted(out))
}

/// A `RegexMatchAndSubstitute`. The substitution stays in RE2's syntax, as written (the
/// router turns it into the `regex` crate's); here it is checked: `\0` to `\9` must name
/// groups of the pattern, and `\\` is the only other escape.
fn regex_rewrite(
    rewrite: &matcher::RegexMatchAndSubstitute,
    path: &str,
) -> Result<(regex::Regex, String)> {
    let pattern_path = join(path, "pattern");
    let Some(pattern) = &rewrite.pattern else {
        return Err(ConfigError::field(
            pattern_path,
            "missing; give pattern.regex",
        ));
    };
    let regex = compile(pattern, &pattern_path, Anchor::Anywhere)?;
    let substitution_path = join(path, "substitution");
    header_value(&rewrite.substitution, &substitution_path)?;
    let groups = regex.captures_len();
    let mut chars = rewrite.substitution.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            continue;
        }
        match chars.next() {
            Some(digit @ '0'..='9') => {
                let group = digit as usize - '0' as usize;
                if group >= groups {
                    return Err(ConfigError::field(
                        substitution_path,
                        format!(
                            "\\{group} names no capture group: the pattern has {}",
                            groups - 1
                        ),
                    ));
                }
            }
            Some('\\') => {}
            other => {
                let shown = other.map_or("\\ at the end".to_string(), |c| format!("\\{c}"));
                return Err(ConfigError::field(
                    substitution_path,
                    format!("invalid escape {shown}; RE2 substitutions know \\0 to \\9 and \\\\"),
                ));
            }
        }
    }
    Ok((regex, rewrite.substitution.clone()))
}

fn retry_policy(policy: &route::RetryPolicy, path: &str) -> Result<m::RetryPolicy> {
    let retry_on_path = join(path, "retry_on");
    let mut retry_on = Vec::new();
    let mut conditions = 0;
    for condition in policy.retry_on.split(',').map(str::trim) {
        if condition.is_empty() {
            continue;
        }
        if !RETRY_ON.contains(&condition) {
            return Err(ConfigError::field(
                retry_on_path,
                format!(
                    "unknown retry condition \"{condition}\"; Envoy knows {}",
                    RETRY_ON.join(", ")
                ),
            ));
        }
        conditions |= m::RetryOn::condition(condition).unwrap_or(0);
        retry_on.push(condition.to_string());
    }
    let codes_path = join(path, "retriable_status_codes");
    let retriable_status_codes = policy
        .retriable_status_codes
        .iter()
        .enumerate()
        .map(|(i, &code)| {
            u16::try_from(code)
                .ok()
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(|| {
                    ConfigError::field(
                        index(&codes_path, i),
                        format!("{code} is not an HTTP status code (100 to 599)"),
                    )
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let headers_path = join(path, "retriable_headers");
    let retriable_headers = policy
        .retriable_headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_matcher(h, &index(&headers_path, i)))
        .collect::<Result<Vec<_>>>()?;
    let back_off = match &policy.retry_back_off {
        None => m::RetryBackOff::default(),
        Some(b) => retry_back_off(b, &join(path, "retry_back_off"))?,
    };
    let predicates_path = join(path, "retry_host_predicate");
    let mut previous_hosts = false;
    for (i, predicate) in policy.retry_host_predicate.iter().enumerate() {
        let predicate_path = index(&predicates_path, i);
        if predicate.name != PREVIOUS_HOSTS {
            return Err(ConfigError::field(
                join(&predicate_path, "name"),
                format!(
                    "\"{}\" is not supported; keel knows the retry host predicate {PREVIOUS_HOSTS} \
                     (typed_config @type type.googleapis.com/{PREVIOUS_HOSTS_TYPE})",
                    predicate.name
                ),
            ));
        }
        previous_hosts = true;
    }
    let host_selection_retry_max_attempts = match policy.host_selection_retry_max_attempts {
        0 => 1,
        n if n < 0 => {
            return Err(ConfigError::field(
                join(path, "host_selection_retry_max_attempts"),
                "must not be negative",
            ))
        }
        n => u32::try_from(n).unwrap_or(u32::MAX),
    };
    Ok(m::RetryPolicy {
        retry_on,
        num_retries: policy.num_retries.as_ref().map_or(1, |n| n.value),
        // Zero means not set, as in Envoy: the route timeout bounds each try.
        per_try_timeout: timeout(
            policy.per_try_timeout.as_ref(),
            None,
            &join(path, "per_try_timeout"),
        )?,
        retriable_status_codes,
        conditions: m::RetryOn(conditions),
        per_try_idle_timeout: timeout(
            policy.per_try_idle_timeout.as_ref(),
            None,
            &join(path, "per_try_idle_timeout"),
        )?,
        retriable_headers,
        back_off,
        previous_hosts,
        host_selection_retry_max_attempts,
    })
}

/// `retry_back_off`: `base_interval` is required and above 0; `max_interval`, when
/// given, is at least `base_interval` (Envoy's checks).
fn retry_back_off(b: &route::retry_policy::RetryBackOff, path: &str) -> Result<m::RetryBackOff> {
    let base_path = join(path, "base_interval");
    let Some(base) = &b.base_interval else {
        return Err(ConfigError::field(
            base_path,
            "missing; give the first retry's back-off, e.g. 0.025s (Envoy's default)",
        ));
    };
    let base_interval = duration(base, &base_path)?;
    if base_interval < Duration::from_millis(1) {
        return Err(ConfigError::field(base_path, "must be at least 1ms"));
    }
    let max_interval = match &b.max_interval {
        None => base_interval * 10,
        Some(max) => {
            let max_path = join(path, "max_interval");
            let max = duration(max, &max_path)?;
            if max < base_interval {
                return Err(ConfigError::field(
                    max_path,
                    format!(
                        "{max:?} is less than base_interval ({base_interval:?}); it must be at \
                         least base_interval"
                    ),
                ));
            }
            max
        }
    };
    Ok(m::RetryBackOff {
        base_interval,
        max_interval,
    })
}

/// The request body kept for retries, from `request_body_buffer_limit` or the
/// deprecated `per_request_buffer_limit_bytes` (capped by the listener's limit, which
/// keel keeps at Envoy's default 1 MiB).
fn buffer_limit(
    request_body_buffer_limit: Option<&wkt::UInt64Value>,
    per_request_buffer_limit_bytes: Option<&wkt::UInt32Value>,
    path: &str,
) -> Result<Option<u64>> {
    match (request_body_buffer_limit, per_request_buffer_limit_bytes) {
        (Some(_), Some(_)) => Err(ConfigError::field(
            join(path, "per_request_buffer_limit_bytes"),
            "request_body_buffer_limit is set too; give only one (per_request_buffer_limit_bytes \
             is deprecated)",
        )),
        (Some(limit), None) => Ok(Some(limit.value)),
        (None, Some(limit)) => Ok(Some(u64::from(limit.value).min(LISTENER_BUFFER_LIMIT))),
        (None, None) => Ok(None),
    }
}

fn convert_redirect(redirect: &route::RedirectAction, path: &str) -> Result<m::Redirect> {
    use route::redirect_action::{
        PathRewriteSpecifier as P, RedirectResponseCode as Code, SchemeRewriteSpecifier as S,
    };

    let scheme = match &redirect.scheme_rewrite_specifier {
        Some(S::HttpsRedirect(true)) => Some("https".to_string()),
        Some(S::HttpsRedirect(false)) | None => None,
        Some(S::SchemeRedirect(scheme)) if scheme.is_empty() => None,
        Some(S::SchemeRedirect(scheme)) => {
            let valid = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
            if !valid {
                return Err(ConfigError::field(
                    join(path, "scheme_redirect"),
                    format!("\"{scheme}\" is not a URL scheme such as https"),
                ));
            }
            Some(scheme.clone())
        }
    };
    let host = if redirect.host_redirect.is_empty() {
        None
    } else {
        header_value(&redirect.host_redirect, &join(path, "host_redirect"))?;
        Some(redirect.host_redirect.clone())
    };
    let port = match redirect.port_redirect {
        0 => None,
        port => Some(u16::try_from(port).map_err(|_| {
            ConfigError::field(
                join(path, "port_redirect"),
                format!("{port} is not a port (at most 65535)"),
            )
        })?),
    };
    let (redirect_path, prefix_rewrite) =
        match &redirect.path_rewrite_specifier {
            None => (None, None),
            Some(P::PathRedirect(p)) => {
                header_value(p, &join(path, "path_redirect"))?;
                ((!p.is_empty()).then(|| p.clone()), None)
            }
            Some(P::PrefixRewrite(p)) => {
                header_value(p, &join(path, "prefix_rewrite"))?;
                (None, (!p.is_empty()).then(|| p.clone()))
            }
            // The supported-field check rejects these first.
            Some(_) => return Err(ConfigError::field(
                path,
                "this path rewrite is not supported by keel; use path_redirect or prefix_rewrite",
            )),
        };
    let status = match Code::try_from(redirect.response_code) {
        Ok(Code::MovedPermanently) => 301,
        Ok(Code::Found) => 302,
        Ok(Code::SeeOther) => 303,
        Ok(Code::TemporaryRedirect) => 307,
        Ok(Code::PermanentRedirect) => 308,
        Err(_) => {
            return Err(ConfigError::field(
                join(path, "response_code"),
                format!(
                    "unknown response code {}; expected MOVED_PERMANENTLY, FOUND, SEE_OTHER, \
                     TEMPORARY_REDIRECT or PERMANENT_REDIRECT",
                    redirect.response_code
                ),
            ))
        }
    };
    Ok(m::Redirect {
        scheme,
        host,
        port,
        path: redirect_path,
        prefix_rewrite,
        status,
        strip_query: redirect.strip_query,
    })
}

fn direct_response(
    response: &route::DirectResponseAction,
    path: &str,
    max_body: usize,
) -> Result<m::RouteAction> {
    use core::data_source::Specifier;

    // Envoy's rule: 200 <= status < 600.
    let status = u16::try_from(response.status)
        .ok()
        .filter(|s| (200..=599).contains(s))
        .ok_or_else(|| {
            ConfigError::field(
                join(path, "status"),
                format!(
                    "{} is not a status Envoy sends as a direct response; give 200 to 599",
                    response.status
                ),
            )
        })?;
    let body_path = join(path, "body");
    let body = match response.body.as_ref().and_then(|b| b.specifier.as_ref()) {
        None => None,
        Some(Specifier::InlineString(s)) => Some(bytes::Bytes::copy_from_slice(s.as_bytes())),
        Some(Specifier::InlineBytes(b)) => Some(bytes::Bytes::copy_from_slice(b)),
        // The supported-field check rejects these first.
        Some(_) => {
            return Err(ConfigError::field(
                body_path,
                "keel reads a body only from inline_string or inline_bytes",
            ))
        }
    };
    if let Some(body) = &body {
        if body.len() > max_body {
            return Err(ConfigError::field(
                body_path,
                format!(
                    "the body is {} bytes; the limit for a direct response body is {max_body} \
                     bytes (the route configuration's max_direct_response_body_size_bytes, \
                     default {MAX_DIRECT_RESPONSE_BODY})",
                    body.len()
                ),
            ));
        }
    }
    Ok(m::RouteAction::DirectResponse {
        status,
        body: body.filter(|b| !b.is_empty()),
    })
}

// ---------------------------------------------------------------------------------------
// Headers.

/// The four header lists of a route table, virtual host or route (at `path`).
fn header_mutations(
    request_add: &[core::HeaderValueOption],
    request_remove: &[String],
    response_add: &[core::HeaderValueOption],
    response_remove: &[String],
    path: &str,
) -> Result<m::HeaderMutations> {
    let adds =
        |list: &[core::HeaderValueOption], field: &str| -> Result<Vec<m::HeaderValueOption>> {
            let list_path = join(path, field);
            if list.len() > 1000 {
                return Err(ConfigError::field(
                    list_path,
                    format!("{} entries; Envoy allows at most 1000", list.len()),
                ));
            }
            list.iter()
                .enumerate()
                .map(|(i, h)| header_value_option(h, &index(&list_path, i)))
                .collect()
        };
    let removes = |list: &[String], field: &str| -> Result<Vec<String>> {
        let list_path = join(path, field);
        list.iter()
            .enumerate()
            .map(|(i, name)| modifiable_header_name(name, &index(&list_path, i), "removed"))
            .collect()
    };
    Ok(m::HeaderMutations {
        request_add: adds(request_add, "request_headers_to_add")?,
        request_remove: removes(request_remove, "request_headers_to_remove")?,
        response_add: adds(response_add, "response_headers_to_add")?,
        response_remove: removes(response_remove, "response_headers_to_remove")?,
    })
}

// Envoy still accepts the deprecated fields read here, so keel does too.
#[allow(deprecated)]
pub(super) fn header_value_option(
    h: &core::HeaderValueOption,
    path: &str,
) -> Result<m::HeaderValueOption> {
    use core::header_value_option::HeaderAppendAction as A;

    let header_path = join(path, "header");
    let Some(header) = &h.header else {
        return Err(ConfigError::field(
            header_path,
            "missing; give header.key and header.value",
        ));
    };
    let name = modifiable_header_name(&header.key, &join(&header_path, "key"), "added")?;
    header_value(&header.value, &join(&header_path, "value"))?;
    let action = match A::try_from(h.append_action) {
        Ok(action) => action,
        Err(_) => {
            return Err(ConfigError::field(
                join(path, "append_action"),
                format!(
                    "unknown value {}; expected APPEND_IF_EXISTS_OR_ADD, ADD_IF_ABSENT, \
                     OVERWRITE_IF_EXISTS_OR_ADD or OVERWRITE_IF_EXISTS",
                    h.append_action
                ),
            ))
        }
    };
    // The deprecated `append` maps as in Envoy: true appends, false overwrites; it may
    // not be combined with an append_action other than the default.
    let action =
        match (&h.append, action) {
            (Some(append), A::AppendIfExistsOrAdd) if !append.value => A::OverwriteIfExistsOrAdd,
            (Some(_), A::AppendIfExistsOrAdd) | (None, _) => action,
            (Some(_), _) => return Err(ConfigError::field(
                join(path, "append"),
                "append (deprecated) and append_action are both set; keep append_action (Envoy \
                 rejects both too)",
            )),
        };
    Ok(m::HeaderValueOption {
        name,
        value: header.value.clone(),
        action: match action {
            A::AppendIfExistsOrAdd => m::AppendAction::AppendIfExistsOrAdd,
            A::AddIfAbsent => m::AppendAction::AddIfAbsent,
            A::OverwriteIfExistsOrAdd => m::AppendAction::OverwriteIfExistsOrAdd,
            A::OverwriteIfExists => m::AppendAction::OverwriteIfExists,
        },
        keep_empty_value: h.keep_empty_value,
    })
}

/// A header name for `*_headers_to_add` / `_remove`, lower-cased. Like Envoy, keel does
/// not let configuration add or remove pseudo-headers (`:path`, ...) or `host`.
fn modifiable_header_name(name: &str, path: &str, verb: &str) -> Result<String> {
    if name.is_empty() {
        return Err(ConfigError::field(path, "missing; give the header's name"));
    }
    if name.starts_with(':') {
        return Err(ConfigError::field(
            path,
            format!(
                "\"{name}\": pseudo-headers (names starting with \":\") cannot be {verb} here \
                 (Envoy forbids it too); use the route's rewrite options instead"
            ),
        ));
    }
    if name.eq_ignore_ascii_case("host") {
        return Err(ConfigError::field(
            path,
            format!(
                "\"{name}\" cannot be {verb} here (Envoy forbids it too); to change the host use \
                 the route's host_rewrite_literal"
            ),
        ));
    }
    regular_header_name(name, path)
}

/// A header name to match on (or to read a cluster name from), lower-cased: a regular
/// name or a pseudo-header such as `:authority`.
fn matcher_header_name(name: &str, path: &str) -> Result<String> {
    if name.is_empty() {
        return Err(ConfigError::field(path, "missing; give the header's name"));
    }
    match name.strip_prefix(':') {
        Some(pseudo) if !pseudo.is_empty() && pseudo.bytes().all(is_token_byte) => {
            Ok(name.to_ascii_lowercase())
        }
        Some(_) => Err(ConfigError::field(
            path,
            format!("\"{name}\" is not a valid pseudo-header name such as :authority"),
        )),
        None => regular_header_name(name, path),
    }
}

fn regular_header_name(name: &str, path: &str) -> Result<String> {
    if name.len() > 16384 {
        return Err(ConfigError::field(
            path,
            "longer than Envoy's limit of 16384 bytes",
        ));
    }
    match ::http::HeaderName::from_bytes(name.as_bytes()) {
        Ok(header) => Ok(header.as_str().to_string()),
        Err(_) => Err(ConfigError::field(
            path,
            format!("\"{name}\" is not a valid header name (letters, digits and !#$%&'*+-.^_`|~)"),
        )),
    }
}
