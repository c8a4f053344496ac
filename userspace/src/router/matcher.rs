//! Compiled route matches: path specifiers, header matchers, query-parameter matchers.
//!
//! Everything here is built once per configuration; matching a request reads the
//! request and allocates only when Envoy's semantics force a copy (a header with
//! several values is joined with `,`; a query parameter with `%`-escapes is decoded).

use std::borrow::Cow;

use http::HeaderName;

use crate::model::http::{
    HeaderMatcher, PathMatch, QueryParameterMatcher, RouteMatch, StringMatchKind, StringMatcher,
    ValueMatch,
};

/// What the matchers read from one request, computed lazily and at most once.
pub(crate) struct RequestView<'r> {
    pub parts: &'r http::request::Parts,
    /// `:scheme` when the URI has none.
    pub scheme: &'r str,
    /// The path without query (and without fragment).
    pub path: &'r str,
    /// The stable random value for `runtime_fraction`, drawn on first use.
    random: Option<u64>,
    /// Parsed query parameters, on first use.
    query: Option<Vec<(Cow<'r, str>, Cow<'r, str>)>>,
}

impl<'r> RequestView<'r> {
    pub fn new(parts: &'r http::request::Parts, scheme: &'r str, random: Option<u64>) -> Self {
        RequestView {
            parts,
            scheme,
            path: parts.uri.path(),
            random,
            query: None,
        }
    }

    fn random(&mut self) -> u64 {
        *self.random.get_or_insert_with(rand::random)
    }

    /// `:authority`: the URI's authority (HTTP/2, absolute-form), else the `host` header.
    pub fn authority(&self) -> Option<&'r str> {
        authority(self.parts)
    }

    fn query(&mut self) -> &[(Cow<'r, str>, Cow<'r, str>)] {
        let query = self.parts.uri.query();
        self.query
            .get_or_insert_with(|| parse_query(query.unwrap_or("")))
    }
}

/// `:authority` of a request: the URI's authority, else the `host` header.
pub(crate) fn authority(parts: &http::request::Parts) -> Option<&str> {
    if let Some(authority) = parts.uri.authority() {
        return Some(authority.as_str());
    }
    parts
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
}

/// A compiled route match.
#[derive(Debug, Clone)]
pub(crate) struct CompiledMatch {
    path: PathMatcher,
    headers: Vec<CompiledHeaderMatcher>,
    query: Vec<CompiledQueryMatcher>,
    grpc: bool,
    runtime_ppm: Option<u32>,
}

#[derive(Debug, Clone)]
enum PathMatcher {
    /// `prefix: ""` or `prefix: "/"`-like cases still go through `Prefix`; this one is
    /// only the empty prefix, which matches every path.
    Any,
    Prefix {
        prefix: String,
        case_sensitive: bool,
    },
    Exact {
        path: String,
        case_sensitive: bool,
    },
    SeparatedPrefix {
        prefix: String,
        case_sensitive: bool,
    },
    Regex(regex::Regex),
}

impl CompiledMatch {
    pub fn new(m: &RouteMatch) -> CompiledMatch {
        let cs = m.case_sensitive;
        let path = match &m.path {
            PathMatch::Prefix(p) if p.is_empty() => PathMatcher::Any,
            PathMatch::Prefix(p) => PathMatcher::Prefix {
                prefix: p.clone(),
                case_sensitive: cs,
            },
            PathMatch::Exact(p) => PathMatcher::Exact {
                path: p.clone(),
                case_sensitive: cs,
            },
            PathMatch::SeparatedPrefix(p) => PathMatcher::SeparatedPrefix {
                prefix: p.clone(),
                case_sensitive: cs,
            },
            PathMatch::Regex(re) => PathMatcher::Regex(full_match(re)),
        };
        CompiledMatch {
            path,
            headers: m.headers.iter().map(CompiledHeaderMatcher::new).collect(),
            query: m
                .query_parameters
                .iter()
                .map(CompiledQueryMatcher::new)
                .collect(),
            grpc: m.grpc,
            runtime_ppm: m.runtime_fraction_ppm,
        }
    }

    /// Whether the request matches. The path is checked first (cheapest, most
    /// selective); the outcome is the same as Envoy's order because every check is a
    /// pure function of the request and its one random value.
    pub fn matches(&self, req: &mut RequestView<'_>) -> bool {
        if !self.path.matches(req.path) {
            return false;
        }
        if self.grpc && !is_grpc(req.parts) {
            return false;
        }
        if !self.headers.iter().all(|h| h.matches(req)) {
            return false;
        }
        if !self.query.is_empty() {
            let params = req.query();
            if !self.query.iter().all(|q| q.matches(params)) {
                return false;
            }
        }
        if let Some(ppm) = self.runtime_ppm {
            // Envoy: featureEnabled(default, random) = random % denominator < numerator.
            if req.random() % 1_000_000 >= u64::from(ppm) {
                return false;
            }
        }
        true
    }
}

impl PathMatcher {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatcher::Any => true,
            PathMatcher::Prefix {
                prefix,
                case_sensitive,
            } => starts_with(path, prefix, *case_sensitive),
            PathMatcher::Exact {
                path: exact,
                case_sensitive,
            } => {
                if *case_sensitive {
                    path == exact
                } else {
                    path.eq_ignore_ascii_case(exact)
                }
            }
            PathMatcher::SeparatedPrefix {
                prefix,
                case_sensitive,
            } => {
                starts_with(path, prefix, *case_sensitive)
                    && (path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/')
            }
            PathMatcher::Regex(re) => re.is_match(path),
        }
    }
}

fn starts_with(text: &str, prefix: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        text.starts_with(prefix)
    } else {
        text.len() >= prefix.len()
            && text.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    }
}

/// Envoy's gRPC test: `content-type` is `application/grpc` or starts with
/// `application/grpc+` (so `application/grpc-web` is not gRPC).
fn is_grpc(parts: &http::request::Parts) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    match parts.headers.get(http::header::CONTENT_TYPE) {
        Some(ct) => {
            let ct = ct.as_bytes();
            ct.starts_with(GRPC) && (ct.len() == GRPC.len() || ct[GRPC.len()] == b'+')
        }
        None => false,
    }
}

/// `re` anchored at both ends: Envoy's `safe_regex` is a full match.
pub(crate) fn full_match(re: &regex::Regex) -> regex::Regex {
    regex::Regex::new(&format!("^(?:{})$", re.as_str())).unwrap_or_else(|_| re.clone())
}

#[derive(Debug, Clone)]
enum HeaderSource {
    Method,
    Path,
    Authority,
    Scheme,
    Named(HeaderName),
    /// A name no request can carry: always absent.
    Never,
}

#[derive(Debug, Clone)]
pub(crate) struct CompiledHeaderMatcher {
    source: HeaderSource,
    rule: CompiledValueMatch,
    invert: bool,
    treat_missing_as_empty: bool,
}

#[derive(Debug, Clone)]
enum CompiledValueMatch {
    Present,
    Absent,
    String(StringMatcher),
    Regex(regex::Regex),
    Range { start: i64, end: i64 },
}

impl CompiledValueMatch {
    fn new(rule: &ValueMatch) -> CompiledValueMatch {
        match rule {
            ValueMatch::Present => CompiledValueMatch::Present,
            ValueMatch::Absent => CompiledValueMatch::Absent,
            ValueMatch::String(s) => CompiledValueMatch::String(s.clone()),
            ValueMatch::Regex(re) => CompiledValueMatch::Regex(full_match(re)),
            ValueMatch::Range { start, end } => CompiledValueMatch::Range {
                start: *start,
                end: *end,
            },
        }
    }

    /// Matches a present value.
    fn matches(&self, value: &str) -> bool {
        match self {
            CompiledValueMatch::Present => true,
            CompiledValueMatch::Absent => false,
            CompiledValueMatch::String(s) => string_matches(s, value),
            CompiledValueMatch::Regex(re) => re.is_match(value),
            CompiledValueMatch::Range { start, end } => {
                value.parse::<i64>().is_ok_and(|v| v >= *start && v < *end)
            }
        }
    }
}

impl CompiledHeaderMatcher {
    pub(crate) fn new(m: &HeaderMatcher) -> CompiledHeaderMatcher {
        let source = match m.name.as_str() {
            ":method" => HeaderSource::Method,
            ":path" => HeaderSource::Path,
            ":authority" | "host" => HeaderSource::Authority,
            ":scheme" => HeaderSource::Scheme,
            name => HeaderName::from_bytes(name.as_bytes())
                .map(HeaderSource::Named)
                .unwrap_or(HeaderSource::Never),
        };
        CompiledHeaderMatcher {
            source,
            rule: CompiledValueMatch::new(&m.rule),
            invert: m.invert,
            treat_missing_as_empty: m.treat_missing_as_empty,
        }
    }

    /// Envoy's `HeaderUtility::matchHeaders`.
    pub(crate) fn matches(&self, req: &RequestView<'_>) -> bool {
        let value = self.value(req);
        let value = match value {
            Some(v) => v,
            None if self.treat_missing_as_empty => Cow::Borrowed(""),
            None => {
                return if self.invert {
                    matches!(self.rule, CompiledValueMatch::Present)
                } else {
                    matches!(self.rule, CompiledValueMatch::Absent)
                };
            }
        };
        self.rule.matches(&value) != self.invert
    }

    /// The value, all values joined with `,` when there are several (as Envoy does).
    fn value<'r>(&self, req: &RequestView<'r>) -> Option<Cow<'r, str>> {
        let parts = req.parts;
        match &self.source {
            HeaderSource::Method => Some(Cow::Borrowed(parts.method.as_str())),
            HeaderSource::Path => parts
                .uri
                .path_and_query()
                .map(|pq| Cow::Borrowed(pq.as_str())),
            HeaderSource::Authority => req.authority().map(Cow::Borrowed),
            HeaderSource::Scheme => {
                Some(Cow::Borrowed(parts.uri.scheme_str().unwrap_or(req.scheme)))
            }
            HeaderSource::Named(name) => {
                let mut values = parts.headers.get_all(name).iter();
                let first = values.next()?;
                match values.next() {
                    None => Some(String::from_utf8_lossy(first.as_bytes())),
                    Some(second) => {
                        let mut joined = String::from_utf8_lossy(first.as_bytes()).into_owned();
                        for v in std::iter::once(second).chain(values) {
                            joined.push(',');
                            joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
                        }
                        Some(Cow::Owned(joined))
                    }
                }
            }
            HeaderSource::Never => None,
        }
    }
}

/// A literal comparison; `ignore_case` compares ASCII case-insensitively (the model
/// lower-cases the literal).
pub(crate) fn string_matches(m: &StringMatcher, value: &str) -> bool {
    let (v, pat) = (value.as_bytes(), m.value.as_bytes());
    if !m.ignore_case {
        return match m.kind {
            StringMatchKind::Exact => v == pat,
            StringMatchKind::Prefix => v.starts_with(pat),
            StringMatchKind::Suffix => v.ends_with(pat),
            StringMatchKind::Contains => value.contains(m.value.as_str()),
        };
    }
    match m.kind {
        StringMatchKind::Exact => v.eq_ignore_ascii_case(pat),
        StringMatchKind::Prefix => v.len() >= pat.len() && v[..pat.len()].eq_ignore_ascii_case(pat),
        StringMatchKind::Suffix => {
            v.len() >= pat.len() && v[v.len() - pat.len()..].eq_ignore_ascii_case(pat)
        }
        StringMatchKind::Contains => {
            pat.is_empty() || v.windows(pat.len()).any(|w| w.eq_ignore_ascii_case(pat))
        }
    }
}

#[derive(Debug, Clone)]
struct CompiledQueryMatcher {
    name: String,
    rule: CompiledValueMatch,
}

impl CompiledQueryMatcher {
    fn new(m: &QueryParameterMatcher) -> CompiledQueryMatcher {
        CompiledQueryMatcher {
            name: m.name.clone(),
            rule: CompiledValueMatch::new(&m.rule),
        }
    }

    /// Envoy's `QueryParameterMatcher::matches`: the first parameter of that name must
    /// be present and, unless the rule is presence, match.
    fn matches(&self, params: &[(Cow<'_, str>, Cow<'_, str>)]) -> bool {
        let first = params.iter().find(|(name, _)| name == &self.name);
        match (&self.rule, first) {
            (CompiledValueMatch::Absent, found) => found.is_none(),
            (_, None) => false,
            (rule, Some((_, value))) => rule.matches(value),
        }
    }
}

/// Splits a query string into `(name, value)` pairs, percent-decoded like Envoy's
/// `parseQueryString` (`+` stays `+`). A parameter without `=` has an empty value.
pub(crate) fn parse_query(query: &str) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|param| match param.split_once('=') {
            Some((name, value)) => (percent_decode(name), percent_decode(value)),
            None => (percent_decode(param), Cow::Borrowed("")),
        })
        .collect()
}

/// `%XX` decoding; invalid escapes stay as they are. Borrows when there is nothing
/// to decode.
pub(crate) fn percent_decode(text: &str) -> Cow<'_, str> {
    if !text.contains('%') {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hi = (bytes[i + 1] as char).to_digit(16);
            let lo = (bytes[i + 2] as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hi, lo) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}
