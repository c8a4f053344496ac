//! What the connection manager does with a selected route: path rewrites, redirect
//! locations, the cluster of a forward.

use http::HeaderMap;

use crate::model::http::{ClusterSpecifier, ForwardAction, PathMatch, Redirect};

/// The request header where Envoy keeps the path as received when a route rewrites
/// it (`%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%` in the default access log reads it).
pub const ORIGINAL_PATH_HEADER: http::HeaderName =
    http::HeaderName::from_static("x-envoy-original-path");

/// The new `:path` (path and query) of a forward, or `None` when the route rewrites
/// nothing.
///
/// As in Envoy (`currentUrlPathAfterRewriteWithMatchedPath`):
/// - `prefix_rewrite` replaces the part of the path the route matched: the prefix of a
///   `prefix` / `path_separated_prefix` route, the whole path of an exact (`path`) route
///   and the whole path (without query) of a `safe_regex` route; the query is kept.
/// - `regex_rewrite` substitutes every match in the path without query (the
///   substitution may use `\1`-style groups, which are turned into `${1}` when
///   compiling the route table); the query is kept.
///
/// When a rewrite happens Envoy records the original path in
/// [`ORIGINAL_PATH_HEADER`] unless the router's `suppress_envoy_headers` is set;
/// [`apply_path_rewrite`] does both.
pub fn rewrite_path(
    route: &ForwardAction,
    matched: &PathMatch,
    path_and_query: &str,
) -> Option<String> {
    if let Some(rewrite) = &route.prefix_rewrite {
        return Some(prefix_rewritten(rewrite, matched, path_and_query));
    }
    if let Some((re, substitution)) = &route.regex_rewrite {
        let substitution = regex_crate_substitution(substitution);
        return Some(regex_rewritten(re, &substitution, path_and_query));
    }
    None
}

/// `path_and_query` with every match of `re` in the path replaced by `substitution`
/// (already in the regex crate's syntax); the query is kept.
pub(crate) fn regex_rewritten(
    re: &regex::Regex,
    substitution: &str,
    path_and_query: &str,
) -> String {
    let (path, query) = split_query(path_and_query);
    let mut out = re.replace_all(path, substitution).into_owned();
    out.push_str(query);
    out
}

/// Rewrites `parts.uri` as [`rewrite_path`] says and, if `record_original` (Envoy's
/// default, i.e. the router's `suppress_envoy_headers` is false), sets
/// `x-envoy-original-path` to the path as received. Returns whether the path changed
/// hands (a rewrite was configured and produced a valid URI).
pub fn apply_path_rewrite(
    parts: &mut http::request::Parts,
    route: &ForwardAction,
    matched: &PathMatch,
    record_original: bool,
) -> bool {
    let original = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let Some(new_path) = rewrite_path(route, matched, original) else {
        return false;
    };
    let original_value = record_original
        .then(|| http::HeaderValue::from_str(original).ok())
        .flatten();
    let mut uri_parts = std::mem::take(&mut parts.uri).into_parts();
    let restore = uri_parts.path_and_query.clone();
    uri_parts.path_and_query = new_path.parse().ok();
    if uri_parts.path_and_query.is_none() {
        uri_parts.path_and_query = restore;
        parts.uri = http::Uri::from_parts(uri_parts).unwrap_or_default();
        return false;
    }
    match http::Uri::from_parts(uri_parts) {
        Ok(uri) => parts.uri = uri,
        Err(_) => return false,
    }
    if let Some(value) = original_value {
        parts.headers.insert(ORIGINAL_PATH_HEADER, value);
    }
    true
}

/// `path_and_query` with the matched part replaced by `rewrite`.
fn prefix_rewritten(rewrite: &str, matched: &PathMatch, path_and_query: &str) -> String {
    let (path, _) = split_query(path_and_query);
    let matched_len = match matched {
        PathMatch::Prefix(p) | PathMatch::SeparatedPrefix(p) | PathMatch::Exact(p) => {
            p.len().min(path.len())
        }
        PathMatch::Regex(_) => path.len(),
    };
    let mut out = String::with_capacity(path_and_query.len() + rewrite.len());
    out.push_str(rewrite);
    out.push_str(&path_and_query[matched_len..]);
    out
}

/// Path and the rest (`?query`, possibly empty); a `#fragment` is cut off the path.
fn split_query(path_and_query: &str) -> (&str, &str) {
    let end = path_and_query
        .find(['?', '#'])
        .unwrap_or(path_and_query.len());
    let rest = &path_and_query[end..];
    let rest = if rest.starts_with('#') {
        ""
    } else {
        rest.split('#').next().unwrap_or("")
    };
    (&path_and_query[..end], rest)
}

/// Envoy (RE2) substitutions write groups as `\1`; the regex crate wants `${1}`, and
/// a literal `$` must be `$$`.
pub(crate) fn regex_crate_substitution(substitution: &str) -> String {
    let mut out = String::with_capacity(substitution.len() + 8);
    let mut chars = substitution.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.peek() {
                Some(d) if d.is_ascii_digit() => {
                    out.push_str("${");
                    out.push(*d);
                    out.push('}');
                    chars.next();
                }
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                _ => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

/// A redirect to send: status and `location`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectTarget {
    /// `response_code` (301 by default).
    pub status: http::StatusCode,
    /// The `location` header value.
    pub location: String,
}

/// The redirect for a request that matched a `redirect` route, built as Envoy's
/// `Http::Utility::newUri` does:
///
/// - scheme: `scheme_redirect` / `https_redirect`, else the request's
///   `x-forwarded-proto`, else its URI scheme, else `connection_scheme` (the scheme of
///   the downstream connection, "http" or "https");
/// - host: `host_redirect`, else the request's `:authority`, from which the port is
///   dropped when `port_redirect` is set or when the scheme changes away from the
///   request's and the port was that scheme's default (`:80` for http, `:443` for https);
/// - port: `:port_redirect` when set;
/// - path: `path_redirect` (its own query, if any, wins and is never stripped; else the
///   request's query is kept), else the request's path after `prefix_rewrite` (which
///   replaces the matched part as for forwards); `strip_query` then drops the query.
pub fn redirect_location(
    redirect: &Redirect,
    matched: &PathMatch,
    parts: &http::request::Parts,
    connection_scheme: &str,
) -> RedirectTarget {
    let request_scheme = parts
        .headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .or_else(|| parts.uri.scheme_str())
        .unwrap_or(connection_scheme);
    let scheme = redirect.scheme.as_deref().unwrap_or(request_scheme);

    let mut location = String::with_capacity(64);
    location.push_str(scheme);
    location.push_str("://");

    let port = redirect.port.map(|p| format!(":{p}"));
    match &redirect.host {
        Some(host) => location.push_str(host),
        None => {
            let host = super::matcher::authority(parts).unwrap_or("");
            location.push_str(host_for_redirect(
                host,
                scheme,
                request_scheme,
                port.is_some(),
            ));
        }
    }
    if let Some(port) = &port {
        location.push_str(port);
    }

    let request_path = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let rewritten;
    let current: &str = match &redirect.prefix_rewrite {
        Some(rewrite) if !rewrite.is_empty() => {
            rewritten = prefix_rewritten(rewrite, matched, request_path);
            &rewritten
        }
        _ => request_path,
    };
    let path_start = location.len();
    let mut keep_query = !redirect.strip_query;
    match &redirect.path {
        Some(path) if !path.is_empty() => {
            location.push_str(path);
            if path.contains('?') {
                keep_query = true;
            } else if let Some(q) = current.find('?') {
                location.push_str(&current[q..]);
            }
        }
        _ => location.push_str(current),
    }
    if !location[path_start..].starts_with('/') {
        location.insert(path_start, '/');
    }
    if !keep_query {
        if let Some(q) = location[path_start..].find('?') {
            location.truncate(path_start + q);
        }
    }
    RedirectTarget {
        status: http::StatusCode::from_u16(redirect.status)
            .unwrap_or(http::StatusCode::MOVED_PERMANENTLY),
        location,
    }
}

/// Envoy's `processRequestHost`: the request host, without its port when a new port
/// is set or when the scheme changes and the port was the old scheme's default.
fn host_for_redirect<'h>(
    host: &'h str,
    new_scheme: &str,
    request_scheme: &str,
    new_port: bool,
) -> &'h str {
    let port_start = if host.starts_with('[') {
        host.rfind("]:").map(|i| i + 1)
    } else {
        host.rfind(':')
    };
    let Some(port_start) = port_start else {
        return host;
    };
    let port = &host[port_start..];
    let mut remove = new_port;
    if new_scheme != request_scheme {
        remove |= request_scheme == "https" && port == ":443";
        remove |= request_scheme == "http" && port == ":80";
    }
    if remove {
        &host[..port_start]
    } else {
        host
    }
}

/// The cluster a forward goes to.
///
/// - `cluster`: that name.
/// - `weighted_clusters`: `random % total_weight` falls in one cluster's slice of the
///   cumulative weights, in configuration order (Envoy's `pickWeightedCluster`); pass
///   the same stable random value used for route matching to keep a request id on one
///   cluster.
/// - `cluster_header`: the first value of that request header; `None` when the header
///   is absent or not text (Envoy then answers 503 with flag NC).
pub fn choose_cluster<'a>(
    spec: &'a ClusterSpecifier,
    headers: &'a HeaderMap,
    random: u64,
) -> Option<&'a str> {
    match spec {
        ClusterSpecifier::Cluster(name) => Some(name),
        ClusterSpecifier::Weighted(clusters) => {
            let total: u64 = clusters.iter().map(|(_, w)| u64::from(*w)).sum();
            if total == 0 {
                return None;
            }
            let mut selected = random % total;
            for (name, weight) in clusters {
                let weight = u64::from(*weight);
                if selected < weight {
                    return Some(name);
                }
                selected -= weight;
            }
            None
        }
        ClusterSpecifier::Header(name) => headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty()),
    }
}
