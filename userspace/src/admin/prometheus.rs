//! Prometheus text exposition of the stats store, named and labelled as Envoy does it.
//!
//! A stat name such as `cluster.backend.upstream_rq_200` goes through Envoy's default
//! tag extraction: every extractor that matches contributes a tag and removes its
//! part of the name, giving the "tag-extracted name" `cluster.upstream_rq` with tags
//! `envoy.response_code="200"` and `envoy.cluster_name="backend"`. The metric is then
//! `envoy_` plus that name with every character outside `[a-zA-Z0-9_]` turned into
//! `_`, and the tags become labels the same way:
//!
//! ```text
//! # TYPE envoy_cluster_upstream_rq counter
//! envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="backend"} 7
//! ```
//!
//! The extractors, their order and their matching rules follow Envoy's
//! `source/common/config/well_known_names.cc` (regular expressions, and the tokenized
//! patterns where `*` is one dot-separated token, `**` any number of them and `$` the
//! captured one) and `source/common/stats/tag_producer_impl.cc` (extractors without a
//! leading literal token run first; then those keyed by the name's first token; only
//! the first match of a tag name counts). Per-endpoint stats
//! (`cluster.<name>.endpoint.<ip>_<port>.<stat>`) are labelled with
//! `envoy_cluster_name` and `envoy_endpoint_address`, as Envoy's per-endpoint metrics
//! are.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::ops::Range;
use std::sync::OnceLock;

use regex::Regex;

use crate::observe::stats::StatValue;

/// A tag taken out of a stat name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    /// Envoy's tag name, e.g. `envoy.cluster_name`.
    pub name: &'static str,
    /// The value, e.g. `backend`.
    pub value: String,
}

/// Regular-expression fragments Envoy's default rules are written with.
const TAG_VALUE: &str = r"[^\.]+";
const ADDRESS: &str = r"(?:(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[[a-fA-F_\d]+\])_\d+)";
const CIPHER: &str = r"[\w\-]+";
const TLS_VERSION: &str = r"TLSv\d\.\d";
const ROUTE_CONFIG_NAME: &str = r"[\w\-\.]+";
const LISTENER_OR_CLUSTER_WITH_NAME: &str = r"(?:listener|cluster)\..*?";

fn expand(regex: &str) -> String {
    regex
        .replace("<ADDRESS>", ADDRESS)
        .replace("<CIPHER>", CIPHER)
        .replace("<TLS_VERSION>", TLS_VERSION)
        .replace("<TAG_VALUE>", TAG_VALUE)
        .replace("<ROUTE_CONFIG_NAME>", ROUTE_CONFIG_NAME)
        .replace(
            "<LISTENER_OR_CLUSTER_WITH_NAME>",
            LISTENER_OR_CLUSTER_WITH_NAME,
        )
}

/// Envoy's default regular-expression rules, in Envoy's order:
/// (tag name, regex, required substring, value that must not match).
const REGEX_RULES: &[(&str, &str, &str, &str)] = &[
    ("envoy.response_code", r"_rq(_(\d{3}))$", "_rq_", ""),
    ("envoy.response_code_class", r"_rq_((\d))xx$", "_rq_", ""),
    (
        "envoy.dynamo_partition_id",
        r"^http\.<TAG_VALUE>\.dynamodb\.table\.<TAG_VALUE>\.capacity\.<TAG_VALUE>(\.__partition_id=(\w{7}))$",
        ".dynamodb.table.",
        "",
    ),
    (
        "envoy.dynamo_operation",
        r"^http\.<TAG_VALUE>\.dynamodb.(?:operation|table\.<TAG_VALUE>\.capacity)(\.(<TAG_VALUE>))(?:\.|$)",
        ".dynamodb.",
        "",
    ),
    (
        "envoy.dynamo_table",
        r"^http\.<TAG_VALUE>\.dynamodb.(?:table|error)\.((<TAG_VALUE>)\.)",
        ".dynamodb.",
        "",
    ),
    (
        "envoy.ssl_cipher",
        r"^listener\..*?\.ssl\.ciphers(\.(<CIPHER>))$",
        ".ssl.ciphers.",
        "",
    ),
    (
        "envoy.ssl_curve",
        r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.curves(\.(<CIPHER>))$",
        ".ssl.curves.",
        "",
    ),
    (
        "envoy.ssl_sigalg",
        r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.sigalgs(\.(<CIPHER>))$",
        ".ssl.sigalgs.",
        "",
    ),
    (
        "envoy.ssl_version",
        r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.versions(\.(<TLS_VERSION>))$",
        ".ssl.versions.",
        "",
    ),
    (
        "cipher_suite",
        r"^cluster\.<TAG_VALUE>\.ssl\.ciphers(\.(<CIPHER>))$",
        ".ssl.ciphers.",
        "",
    ),
    (
        "envoy.http_conn_manager_prefix",
        r"^listener\..*?\.http\.((<TAG_VALUE>)\.)",
        ".http.",
        "",
    ),
    (
        "envoy.worker_id",
        r"^(?:listener\.(?:<ADDRESS>|<TAG_VALUE>)\.|server\.|listener_manager\.|thread_local_cluster_manager\.)worker_((\d+)\.)",
        "",
        "",
    ),
    (
        "envoy.listener_address",
        r"^listener\.((<ADDRESS>|<TAG_VALUE>)\.)",
        "",
        "admin",
    ),
    (
        "envoy.rds_route_config",
        r"^http\.<TAG_VALUE>\.rds\.((<ROUTE_CONFIG_NAME>)\.)\w+?$",
        ".rds.",
        "",
    ),
];

/// Envoy's default tokenized rules, in Envoy's order: (tag name, pattern).
const TOKEN_RULES: &[(&str, &str)] = &[
    (
        "envoy.mongo_callsite",
        "mongo.*.collection.*.callsite.$.query.**",
    ),
    ("envoy.mongo_collection", "mongo.*.collection.$.**.query.*"),
    ("envoy.mongo_cmd", "mongo.*.cmd.$.**"),
    ("envoy.grpc_bridge_method", "cluster.*.grpc.*.$.**"),
    ("envoy.http_user_agent", "http.*.user_agent.$.**"),
    ("envoy.virtual_cluster", "vhost.*.vcluster.$.**"),
    ("envoy.fault_downstream_cluster", "http.*.fault.$.**"),
    ("envoy.grpc_bridge_service", "cluster.*.grpc.$.**"),
    ("envoy.tcp_prefix", "tcp.$.**"),
    ("envoy.udp_prefix", "udp.$.**"),
    ("envoy.clientssl_prefix", "auth.clientssl.$.**"),
    ("envoy.ratelimit_prefix", "ratelimit.$.**"),
    ("envoy.cluster_name", "cluster.$.**"),
    ("envoy.http_conn_manager_prefix", "http.$.**"),
    ("envoy.virtual_host", "vhost.$.**"),
    ("envoy.mongo_prefix", "mongo.$.**"),
    ("envoy.route", "vhost.*.route.$.**"),
    ("envoy.thrift_prefix", "thrift.$.**"),
    ("envoy.redis_prefix", "redis.$.**"),
    (
        "envoy.local_http_ratelimit_prefix",
        "$.http_local_rate_limit.**",
    ),
    (
        "envoy.local_network_ratelimit_prefix",
        "local_rate_limit.$.**",
    ),
];

enum Matcher {
    Regex {
        regex: Regex,
        substr: &'static str,
        negative: &'static str,
    },
    Tokens {
        pattern: Vec<&'static str>,
        capture: usize,
    },
}

struct Extractor {
    name: &'static str,
    matcher: Matcher,
    /// Another extractor has the same tag name: only the first match counts.
    shares_name: bool,
}

impl Extractor {
    /// The tag and the byte range of the name it removes.
    fn extract(&self, name: &str, tokens: &[&str]) -> Option<(Tag, Range<usize>)> {
        match &self.matcher {
            Matcher::Regex {
                regex,
                substr,
                negative,
            } => {
                if !substr.is_empty() && !name.contains(substr) {
                    return None;
                }
                let captures = regex.captures(name)?;
                let remove = captures.get(1).filter(|m| !m.is_empty())?;
                let value = captures.get(2).filter(|m| !m.is_empty()).unwrap_or(remove);
                if !negative.is_empty() && value.as_str() == *negative {
                    return None;
                }
                Some((
                    Tag {
                        name: self.name,
                        value: value.as_str().to_string(),
                    },
                    remove.range(),
                ))
            }
            Matcher::Tokens { pattern, capture } => {
                let (mut start, mut matched) = (0, tokens.len());
                if !search_tokens(pattern, *capture, tokens, 0, 0, 0, &mut start, &mut matched) {
                    return None;
                }
                let value = tokens[matched];
                // Remove the token with the dot after it, or the dot before it when it
                // is the last token.
                let mut end = start + value.len();
                if matched + 1 < tokens.len() {
                    end += 1;
                } else {
                    start = start.saturating_sub(1);
                }
                Some((
                    Tag {
                        name: self.name,
                        value: value.to_string(),
                    },
                    start..end,
                ))
            }
        }
    }
}

/// Envoy's `TagExtractorTokensImpl::searchTags`: does `pattern[pi..]` match
/// `input[ii..]`? On success `start` is the byte offset of the captured token and
/// `matched` its index.
#[allow(clippy::too_many_arguments)]
fn search_tokens(
    pattern: &[&str],
    capture: usize,
    input: &[&str],
    mut ii: usize,
    mut pi: usize,
    mut char_index: usize,
    start: &mut usize,
    matched: &mut usize,
) -> bool {
    while ii < input.len() && pi < pattern.len() {
        if pi == capture {
            *start = char_index;
            *matched = ii;
        } else {
            let expected = pattern[pi];
            if expected == "**" {
                if pi == pattern.len() - 1 {
                    return true;
                }
                // Try the rest of the pattern against every suffix of the input.
                pi += 1;
                while ii < input.len() {
                    if search_tokens(pattern, capture, input, ii, pi, char_index, start, matched) {
                        return true;
                    }
                    char_index += input[ii].len() + 1;
                    ii += 1;
                }
                return false;
            }
            if expected != "*" && expected != input[ii] {
                return false;
            }
        }
        char_index += input[ii].len() + 1;
        ii += 1;
        pi += 1;
    }
    pi == pattern.len() && ii == input.len()
}

/// Envoy's `extractRegexPrefix`: the literal first token a regex requires (`^cluster\.`
/// gives `cluster`), used to skip extractors that cannot match.
fn regex_prefix(regex: &str) -> Option<&str> {
    let rest = regex.strip_prefix('^')?;
    let len = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    let after = &rest[len..];
    (len > 0 && (after.starts_with(r"\.") || after.starts_with(r"(?=\.)") || after == "$"))
        .then(|| &rest[..len])
}

/// Turns stat names into tag-extracted names and tags with Envoy's default rules.
pub struct TagProducer {
    without_prefix: Vec<Extractor>,
    by_prefix: HashMap<String, Vec<Extractor>>,
}

impl std::fmt::Debug for TagProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TagProducer")
            .field("without_prefix", &self.without_prefix.len())
            .field("by_prefix", &self.by_prefix.len())
            .finish()
    }
}

impl TagProducer {
    /// Envoy's default extractors (`use_all_default_tags`).
    pub fn envoy_defaults() -> TagProducer {
        let mut extractors: Vec<(Option<String>, Extractor)> = Vec::new();
        for &(name, regex, substr, negative) in REGEX_RULES {
            let expanded = expand(regex);
            let regex = Regex::new(&expanded)
                .unwrap_or_else(|e| panic!("Envoy's tag rule {name} is a valid regex: {e}"));
            extractors.push((
                regex_prefix(regex.as_str()).map(str::to_string),
                Extractor {
                    name,
                    matcher: Matcher::Regex {
                        regex,
                        substr,
                        negative,
                    },
                    shares_name: false,
                },
            ));
        }
        for &(name, pattern) in TOKEN_RULES {
            let pattern: Vec<&'static str> = pattern.split('.').collect();
            let capture = pattern
                .iter()
                .position(|t| *t == "$")
                .unwrap_or_else(|| panic!("tag rule {name} captures a token"));
            let prefix = Some(pattern[0])
                .filter(|t| !matches!(*t, "$" | "*" | "**"))
                .map(str::to_string);
            extractors.push((
                prefix,
                Extractor {
                    name,
                    matcher: Matcher::Tokens { pattern, capture },
                    shares_name: false,
                },
            ));
        }
        let mut seen = HashSet::new();
        let shared: HashSet<&str> = extractors
            .iter()
            .filter(|(_, e)| !seen.insert(e.name))
            .map(|(_, e)| e.name)
            .collect();
        let mut producer = TagProducer {
            without_prefix: Vec::new(),
            by_prefix: HashMap::new(),
        };
        for (prefix, mut extractor) in extractors {
            extractor.shares_name = shared.contains(extractor.name);
            match prefix {
                Some(prefix) => producer
                    .by_prefix
                    .entry(prefix)
                    .or_default()
                    .push(extractor),
                None => producer.without_prefix.push(extractor),
            }
        }
        producer
    }

    /// The tag-extracted name and the tags of `name`, tags in extraction order.
    pub fn produce(&self, name: &str) -> (String, Vec<Tag>) {
        let tokens: Vec<&str> = name.split('.').collect();
        let keyed = name
            .split_once('.')
            .and_then(|(first, _)| self.by_prefix.get(first))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let mut tags = Vec::new();
        let mut removed: Vec<Range<usize>> = Vec::new();
        let mut matched_names: HashSet<&str> = HashSet::new();
        for extractor in self.without_prefix.iter().chain(keyed) {
            if extractor.shares_name && matched_names.contains(extractor.name) {
                continue;
            }
            if let Some((tag, range)) = extractor.extract(name, &tokens) {
                if extractor.shares_name {
                    matched_names.insert(extractor.name);
                }
                tags.push(tag);
                removed.push(range);
            }
        }
        (remove_ranges(name, removed), tags)
    }
}

fn remove_ranges(name: &str, mut ranges: Vec<Range<usize>>) -> String {
    if ranges.is_empty() {
        return name.to_string();
    }
    ranges.sort_by_key(|r| r.start);
    let mut out = String::with_capacity(name.len());
    let mut at = 0;
    for range in ranges {
        if range.start > at {
            out.push_str(&name[at..range.start]);
        }
        at = at.max(range.end);
    }
    out.push_str(&name[at.min(name.len())..]);
    out
}

/// The process-wide producer with Envoy's default rules.
pub fn default_tags() -> &'static TagProducer {
    static PRODUCER: OnceLock<TagProducer> = OnceLock::new();
    PRODUCER.get_or_init(TagProducer::envoy_defaults)
}

/// Per-endpoint stats: `cluster.<name>.endpoint.<ip>_<port>.<stat>`.
fn endpoint_stat(name: &str) -> Option<(String, Vec<Tag>)> {
    static ENDPOINT: OnceLock<Regex> = OnceLock::new();
    let regex = ENDPOINT.get_or_init(|| {
        Regex::new(&format!(
            r"^cluster\.({TAG_VALUE})\.endpoint\.({ADDRESS})\.(\w+)$"
        ))
        .expect("the per-endpoint stat regex is valid")
    });
    let captures = regex.captures(name)?;
    let (cluster, address, stat) = (&captures[1], &captures[2], &captures[3]);
    Some((
        format!("cluster.endpoint.{stat}"),
        vec![
            Tag {
                name: "envoy.cluster_name",
                value: cluster.to_string(),
            },
            Tag {
                name: "envoy.endpoint_address",
                value: unsanitize_address(address),
            },
        ],
    ))
}

/// `127.0.0.1_80` → `127.0.0.1:80`, `[__1]_80` → `[::1]:80` (stat names carry `_` for
/// every `:`).
fn unsanitize_address(address: &str) -> String {
    address.replace('_', ":")
}

/// The tag-extracted name and tags of one stat.
pub fn tag_stat(name: &str) -> (String, Vec<Tag>) {
    endpoint_stat(name).unwrap_or_else(|| default_tags().produce(name))
}

/// `envoy_` plus the name with every character outside `[a-zA-Z0-9_]` made `_`.
pub fn metric_name(tag_extracted_name: &str) -> String {
    format!("envoy_{}", sanitize(tag_extracted_name))
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Escapes `\`, newline and `"` in a label value, as the Prometheus text format asks.
fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '\n' => out.push_str(r"\n"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

/// `name="value",...` in tag order.
pub fn format_labels(tags: &[Tag]) -> String {
    tags.iter()
        .map(|t| format!("{}=\"{}\"", sanitize(t.name), escape_label_value(&t.value)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether a stat counts as used for `usedonly`. The store does not remember whether
/// a stat was ever written, so a stat is used when its value is not zero.
pub(crate) fn is_used(value: &StatValue) -> bool {
    match value {
        StatValue::Counter(v) => *v != 0,
        StatValue::Gauge(v) => *v != 0,
    }
}

/// Orders names as Envoy's symbol table does: token by token, `.` separating tokens.
fn token_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.split('.').cmp(b.split('.'))
}

/// One metric family being assembled: its tag-extracted name and its samples
/// (full stat name, labels, value).
struct Family<'a> {
    extracted: String,
    samples: Vec<(&'a str, String, String)>,
}

/// The Prometheus text exposition of `stats`, laid out as Envoy lays it out: counter
/// families, gauge families, then the per-endpoint counter and gauge families, each
/// family opened by its `# TYPE` line; families in order of their tag-extracted
/// names, samples in order of their full stat names (both compared token by token).
/// `filter` is searched in the full stat name; with `used_only`, stats that are zero
/// are left out.
pub fn render(stats: &[(String, StatValue)], filter: Option<&Regex>, used_only: bool) -> String {
    // Keyed by metric name, so that two tag-extracted names that sanitize alike share
    // one family (one `# TYPE` line) instead of making the exposition invalid.
    // Counters, gauges, endpoint counters, endpoint gauges.
    let mut buckets: [HashMap<String, Family>; 4] = Default::default();
    for (name, value) in stats {
        if filter.is_some_and(|f| !f.is_match(name)) || (used_only && !is_used(value)) {
            continue;
        }
        let (endpoint, (extracted, tags)) = match endpoint_stat(name) {
            Some(tagged) => (2, tagged),
            None => (0, default_tags().produce(name)),
        };
        let (families, value) = match value {
            StatValue::Counter(v) => (&mut buckets[endpoint], v.to_string()),
            StatValue::Gauge(v) => (&mut buckets[endpoint + 1], v.to_string()),
        };
        let family = families
            .entry(metric_name(&extracted))
            .or_insert_with(|| Family {
                extracted: extracted.clone(),
                samples: Vec::new(),
            });
        if token_order(&extracted, &family.extracted).is_lt() {
            family.extracted = extracted;
        }
        family
            .samples
            .push((name.as_str(), format_labels(&tags), value));
    }
    let mut out = String::new();
    let kinds = ["counter", "gauge", "counter", "gauge"];
    for (families, kind) in buckets.into_iter().zip(kinds) {
        let mut families: Vec<(String, Family)> = families.into_iter().collect();
        families.sort_by(|a, b| token_order(&a.1.extracted, &b.1.extracted));
        for (metric, mut family) in families {
            family.samples.sort_by(|a, b| token_order(a.0, b.0));
            let _ = writeln!(out, "# TYPE {metric} {kind}");
            for (_, labels, value) in family.samples {
                let _ = writeln!(out, "{metric}{{{labels}}} {value}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(name: &str) -> (String, Vec<(&'static str, String)>) {
        let (extracted, tags) = tag_stat(name);
        (
            extracted,
            tags.into_iter().map(|t| (t.name, t.value)).collect(),
        )
    }

    fn t(name: &'static str, value: &str) -> (&'static str, String) {
        (name, value.to_string())
    }

    #[test]
    fn every_default_rule_compiles() {
        let producer = TagProducer::envoy_defaults();
        let total: usize = producer.without_prefix.len()
            + producer.by_prefix.values().map(Vec::len).sum::<usize>();
        assert_eq!(total, REGEX_RULES.len() + TOKEN_RULES.len());
        // As in Envoy: the response-code rules and the worker rule have no literal first
        // token; `^listener\.` rules are keyed by "listener".
        assert!(producer
            .without_prefix
            .iter()
            .any(|e| e.name == "envoy.response_code"));
        assert!(producer.by_prefix["listener"]
            .iter()
            .any(|e| e.name == "envoy.listener_address"));
        assert!(producer.by_prefix["cluster"]
            .iter()
            .any(|e| e.name == "envoy.cluster_name"));
    }

    #[test]
    fn http_connection_manager_prefix_and_response_code_class() {
        assert_eq!(
            tags("http.ingress.downstream_rq_2xx"),
            (
                "http.downstream_rq_xx".into(),
                vec![
                    t("envoy.response_code_class", "2"),
                    t("envoy.http_conn_manager_prefix", "ingress"),
                ]
            )
        );
        assert_eq!(
            tags("http.ingress.downstream_rq_total"),
            (
                "http.downstream_rq_total".into(),
                vec![t("envoy.http_conn_manager_prefix", "ingress")]
            )
        );
    }

    #[test]
    fn cluster_name_and_response_code() {
        assert_eq!(
            tags("cluster.backend.upstream_rq_200"),
            (
                "cluster.upstream_rq".into(),
                vec![
                    t("envoy.response_code", "200"),
                    t("envoy.cluster_name", "backend"),
                ]
            )
        );
        assert_eq!(
            tags("cluster.backend.upstream_cx_active"),
            (
                "cluster.upstream_cx_active".into(),
                vec![t("envoy.cluster_name", "backend")]
            )
        );
        // A cluster name alone is not a stat: "cluster.$.**" needs a token after it.
        assert_eq!(tags("cluster.backend"), ("cluster.backend".into(), vec![]));
    }

    #[test]
    fn listener_address_ipv4_ipv6_and_named() {
        assert_eq!(
            tags("listener.0.0.0.0_10000.downstream_cx_total"),
            (
                "listener.downstream_cx_total".into(),
                vec![t("envoy.listener_address", "0.0.0.0_10000")]
            )
        );
        assert_eq!(
            tags("listener.[__1]_443.downstream_cx_active"),
            (
                "listener.downstream_cx_active".into(),
                vec![t("envoy.listener_address", "[__1]_443")]
            )
        );
        // "admin" is excluded, as in Envoy.
        assert_eq!(
            tags("listener.admin.downstream_cx_total"),
            ("listener.admin.downstream_cx_total".into(), vec![])
        );
        assert_eq!(
            tags("listener.127.0.0.1_80.http.ingress.downstream_rq_5xx"),
            (
                "listener.http.downstream_rq_xx".into(),
                vec![
                    t("envoy.response_code_class", "5"),
                    t("envoy.http_conn_manager_prefix", "ingress"),
                    t("envoy.listener_address", "127.0.0.1_80"),
                ]
            )
        );
    }

    #[test]
    fn tokenized_rules_capture_in_the_middle_and_at_the_end() {
        assert_eq!(
            tags("tcp.web.downstream_cx_total"),
            (
                "tcp.downstream_cx_total".into(),
                vec![t("envoy.tcp_prefix", "web")]
            )
        );
        assert_eq!(
            tags("vhost.app.vcluster.other.upstream_rq_time"),
            (
                "vhost.vcluster.upstream_rq_time".into(),
                vec![
                    t("envoy.virtual_cluster", "other"),
                    t("envoy.virtual_host", "app"),
                ]
            )
        );
        assert_eq!(
            tags("server.worker_3.watchdog_miss"),
            (
                "server.worker_watchdog_miss".into(),
                vec![t("envoy.worker_id", "3")]
            )
        );
        assert_eq!(
            tags("listener.0.0.0.0_80.ssl.ciphers.ECDHE-RSA-AES128-GCM-SHA256"),
            (
                "listener.ssl.ciphers".into(),
                vec![
                    t("envoy.ssl_cipher", "ECDHE-RSA-AES128-GCM-SHA256"),
                    t("envoy.listener_address", "0.0.0.0_80"),
                ]
            )
        );
    }

    #[test]
    fn untagged_names_pass_through() {
        assert_eq!(
            tags("server.uptime"),
            ("server.uptime".into(), Vec::<(&str, String)>::new())
        );
    }

    #[test]
    fn per_endpoint_stats_get_cluster_and_address_labels() {
        assert_eq!(
            tags("cluster.backend.endpoint.10.0.0.1_8080.cx_active"),
            (
                "cluster.endpoint.cx_active".into(),
                vec![
                    t("envoy.cluster_name", "backend"),
                    t("envoy.endpoint_address", "10.0.0.1:8080"),
                ]
            )
        );
        assert_eq!(
            tags("cluster.backend.endpoint.[fd00__2]_80.rq_total").1[1],
            t("envoy.endpoint_address", "[fd00::2]:80")
        );
    }

    #[test]
    fn metric_and_label_names_are_sanitized_and_values_escaped() {
        assert_eq!(
            metric_name("http.downstream_rq_xx"),
            "envoy_http_downstream_rq_xx"
        );
        assert_eq!(metric_name("cluster.a-b:c"), "envoy_cluster_a_b_c");
        let labels = format_labels(&[Tag {
            name: "envoy.cluster_name",
            value: "we\"ird\\na\nme".into(),
        }]);
        assert_eq!(labels, r#"envoy_cluster_name="we\"ird\\na\nme""#);
    }

    #[test]
    fn render_groups_families_counters_first() {
        let stats = vec![
            (
                "cluster.a.upstream_cx_active".to_string(),
                StatValue::Gauge(2),
            ),
            (
                "cluster.a.upstream_rq_200".to_string(),
                StatValue::Counter(5),
            ),
            (
                "cluster.b.upstream_rq_200".to_string(),
                StatValue::Counter(1),
            ),
            (
                "cluster.b.upstream_rq_503".to_string(),
                StatValue::Counter(0),
            ),
            (
                "http.ingress.downstream_rq_2xx".to_string(),
                StatValue::Counter(6),
            ),
            ("server.live".to_string(), StatValue::Gauge(1)),
        ];
        let expected = "\
# TYPE envoy_cluster_upstream_rq counter
envoy_cluster_upstream_rq{envoy_response_code=\"200\",envoy_cluster_name=\"a\"} 5
envoy_cluster_upstream_rq{envoy_response_code=\"200\",envoy_cluster_name=\"b\"} 1
envoy_cluster_upstream_rq{envoy_response_code=\"503\",envoy_cluster_name=\"b\"} 0
# TYPE envoy_http_downstream_rq_xx counter
envoy_http_downstream_rq_xx{envoy_response_code_class=\"2\",envoy_http_conn_manager_prefix=\"ingress\"} 6
# TYPE envoy_cluster_upstream_cx_active gauge
envoy_cluster_upstream_cx_active{envoy_cluster_name=\"a\"} 2
# TYPE envoy_server_live gauge
envoy_server_live{} 1
";
        assert_eq!(render(&stats, None, false), expected);

        let used = render(&stats, None, true);
        assert!(!used.contains("503"), "usedonly drops zero stats:\n{used}");

        let filter = Regex::new("^http").unwrap();
        assert_eq!(
            render(&stats, Some(&filter), false),
            "# TYPE envoy_http_downstream_rq_xx counter\n\
             envoy_http_downstream_rq_xx{envoy_response_code_class=\"2\",\
             envoy_http_conn_manager_prefix=\"ingress\"} 6\n"
        );
    }

    /// The exposition of a real Envoy 1.40, byte for byte (histograms left out), from
    /// the same counters and gauges.
    #[test]
    fn matches_envoy_1_40_on_its_own_stats() {
        let stats: Vec<(String, StatValue)> = {
            let mut stats: Vec<(String, StatValue)> = include_str!("testdata/envoy-1.40-stats.txt")
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|line| {
                    let fields: Vec<&str> = line.split(' ').collect();
                    let [kind, name, value] = fields[..] else {
                        panic!("bad fixture line {line:?}")
                    };
                    let value = match kind {
                        "counter" => StatValue::Counter(value.parse().expect("a count")),
                        _ => StatValue::Gauge(value.parse().expect("a gauge value")),
                    };
                    (name.to_string(), value)
                })
                .collect();
            stats.sort_by(|a, b| a.0.cmp(&b.0));
            stats
        };
        let expected = include_str!("testdata/envoy-1.40-prometheus.txt");
        let ours = render(&stats, None, false);
        for (i, (e, o)) in expected.lines().zip(ours.lines()).enumerate() {
            assert_eq!(o, e, "line {} differs", i + 1);
        }
        assert_eq!(ours.lines().count(), expected.lines().count());
    }

    #[test]
    fn token_search_matches_envoy_semantics() {
        let pattern: Vec<&str> = "mongo.*.collection.$.**.query.*".split('.').collect();
        let input: Vec<&str> = "mongo.p.collection.c.x.y.query.total".split('.').collect();
        let (mut start, mut matched) = (0, 0);
        assert!(search_tokens(
            &pattern,
            3,
            &input,
            0,
            0,
            0,
            &mut start,
            &mut matched
        ));
        assert_eq!((matched, start), (3, "mongo.p.collection.".len()));
        let input: Vec<&str> = "mongo.p.collection.c.total".split('.').collect();
        assert!(!search_tokens(
            &pattern,
            3,
            &input,
            0,
            0,
            0,
            &mut start,
            &mut matched
        ));
    }
}
