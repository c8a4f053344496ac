//! Validated HTTP types: the HTTP connection manager, its route table and access
//! logs. `config` builds them from `envoy.extensions.filters.network.
//! http_connection_manager.v3.HttpConnectionManager`; `http` and `router` serve them.
//!
//! Regexes are compiled here, once per configuration, so the request path only
//! matches.

use std::time::Duration;

/// `envoy.filters.network.http_connection_manager`.
#[derive(Debug, Clone)]
pub struct HttpConnectionManager {
    /// `stat_prefix` (stats are `http.<stat_prefix>.*`).
    pub stat_prefix: String,
    /// `codec_type`.
    pub codec: Codec,
    /// `route_config` (inline; RDS comes with xDS).
    pub route_config: RouteConfig,
    /// `http_filters`, in order; the last is the router.
    pub http_filters: Vec<HttpFilter>,
    /// `access_log`.
    pub access_logs: Vec<AccessLog>,
    /// `use_remote_address`.
    pub use_remote_address: bool,
    /// `xff_num_trusted_hops`.
    pub xff_num_trusted_hops: u32,
    /// `generate_request_id` (default true).
    pub generate_request_id: bool,
    /// `server_name` (Envoy's default is "envoy").
    pub server_name: String,
    /// `server_header_transformation`.
    pub server_header: ServerHeader,
    /// Timeouts of the connection manager.
    pub timeouts: HttpTimeouts,
    /// `common_http_protocol_options.max_headers_count` (default 100).
    pub max_headers_count: u32,
    /// `max_request_headers_kb` (default 60).
    pub max_request_headers_kb: u32,
    /// `normalize_path`.
    pub normalize_path: bool,
    /// `merge_slashes`.
    pub merge_slashes: bool,
    /// `common_http_protocol_options.headers_with_underscores_action`.
    pub headers_with_underscores: UnderscoreAction,
    /// `http2_protocol_options`.
    pub http2: Http2Options,
    /// `upgrade_configs[*].upgrade_type`, lower-cased (e.g. "websocket").
    pub upgrade_types: Vec<String>,
    /// The less common settings, all off by default.
    pub options: HcmOptions,
}

/// Connection-manager settings that default to off (Envoy's defaults); grouped so that
/// code building a manager by hand can write `options: HcmOptions::default()`.
#[derive(Debug, Clone, Default)]
pub struct HcmOptions {
    /// `skip_xff_append`: with `use_remote_address`, the peer is not appended to
    /// `x-forwarded-for` (it still decides the trusted client address).
    pub skip_xff_append: bool,
    /// `via`: appended to the `via` header of requests and responses.
    pub via: Option<http::HeaderValue>,
    /// `always_set_request_id_in_response`: responses carry the request's
    /// `x-request-id`.
    pub always_set_request_id_in_response: bool,
    /// `preserve_external_request_id`: an edge request keeps the `x-request-id` it came
    /// with.
    pub preserve_external_request_id: bool,
    /// `strip_matching_host_port` / `strip_any_host_port`.
    pub strip_port: StripPort,
    /// `internal_address_config.cidr_ranges`: peers (or the single `x-forwarded-for`
    /// address) in these ranges make a request internal. Empty: nothing is internal
    /// (Envoy's default since 1.33).
    pub internal_addresses: Vec<super::listener::CidrRange>,
    /// `add_user_agent`: the node's identity, set on requests as
    /// `x-envoy-downstream-service-cluster` / `-node` (and `user-agent` when absent).
    /// Conversion fills it from the bootstrap's `node` (or `--service-cluster` /
    /// `--service-node`).
    pub user_agent: Option<super::Node>,
    /// `http_protocol_options.accept_http_10`: HTTP/1.0 requests are served (else
    /// answered 426, as Envoy).
    pub accept_http_10: bool,
    /// `http_protocol_options.default_host_for_http_10`: the host given to an HTTP/1.0
    /// request without one.
    pub default_host_for_http_10: Option<http::HeaderValue>,
    /// `path_with_escaped_slashes_action`.
    pub escaped_slashes: EscapedSlashesAction,
    /// `local_reply_config`.
    pub local_reply: Option<LocalReplyConfig>,
    /// `stream_error_on_invalid_http_message`: a 400 local reply to an HTTP/1 client
    /// keeps the connection open (Envoy closes it by default). On HTTP/2 hyper's codec
    /// resets the offending stream whatever this says.
    pub stream_error_on_invalid_http_message: bool,
}

/// `strip_matching_host_port` / `strip_any_host_port`: the `:port` of the
/// `host`/`:authority` removed before routing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StripPort {
    /// Keep the port (the default).
    #[default]
    None,
    /// `strip_matching_host_port`: only when it is the listener's port.
    Matching,
    /// `strip_any_host_port`: any port.
    Any,
}

/// `path_with_escaped_slashes_action`: what to do with `%2F` / `%5C` (any case) in the
/// path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EscapedSlashesAction {
    /// `KEEP_UNCHANGED` (and `IMPLEMENTATION_SPECIFIC_DEFAULT`, Envoy's default).
    #[default]
    KeepUnchanged,
    /// `REJECT_REQUEST`: 400.
    Reject,
    /// `UNESCAPE_AND_REDIRECT`: a redirect to the unescaped path (HTTP/1 307 /
    /// gRPC rejected, as Envoy).
    UnescapeAndRedirect,
    /// `UNESCAPE_AND_FORWARD`: the unescaped path is routed and forwarded.
    UnescapeAndForward,
}

/// `local_reply_config`: how keel's own replies are rewritten.
#[derive(Debug, Clone, Default)]
pub struct LocalReplyConfig {
    /// `mappers`, in order; the first whose filter matches applies.
    pub mappers: Vec<LocalReplyMapper>,
    /// `body_format`: the body of every local reply (after the mapper's body).
    pub body_format: Option<BodyFormat>,
}

/// `local_reply_config.mappers[*]`.
#[derive(Debug, Clone)]
pub struct LocalReplyMapper {
    /// `filter`.
    pub filter: AccessLogFilter,
    /// `status_code`.
    pub status: Option<u16>,
    /// `body` (inline).
    pub body: Option<String>,
    /// `body_format_override`.
    pub body_format: Option<BodyFormat>,
    /// `headers_to_add`.
    pub headers_to_add: Vec<HeaderValueOption>,
}

/// A local reply body format (`SubstitutionFormatString`).
#[derive(Debug, Clone)]
pub struct BodyFormat {
    /// `text_format` / `text_format_source.inline_string`, or `json_format`.
    pub format: AccessLogFormat,
    /// `content_type`, else `text/plain` (text) or `application/json` (JSON).
    pub content_type: String,
}

/// `codec_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// HTTP/1.1, or HTTP/2 by prior knowledge (h2c) or ALPN.
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only (h2c by prior knowledge on plaintext).
    Http2,
}

/// `server_header_transformation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerHeader {
    /// Always set `server: <server_name>` (Envoy's default).
    Overwrite,
    /// Set it only when the upstream sent none.
    AppendIfAbsent,
    /// Pass the upstream's through, add none.
    PassThrough,
}

/// `headers_with_underscores_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnderscoreAction {
    /// Allow (default).
    Allow,
    /// Reject the request with 400.
    RejectRequest,
    /// Drop the header.
    DropHeader,
}

/// Connection-manager timeouts; `None` means disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpTimeouts {
    /// `request_timeout` (default disabled).
    pub request: Option<Duration>,
    /// `stream_idle_timeout` (default 5 minutes).
    pub stream_idle: Option<Duration>,
    /// `request_headers_timeout` (default disabled).
    pub request_headers: Option<Duration>,
    /// `common_http_protocol_options.idle_timeout` (default 1 hour).
    pub connection_idle: Option<Duration>,
    /// `common_http_protocol_options.max_connection_duration`.
    pub max_connection_duration: Option<Duration>,
    /// `common_http_protocol_options.max_stream_duration`.
    pub max_stream_duration: Option<Duration>,
    /// `drain_timeout` (default 5 s).
    pub drain: Duration,
}

/// `http2_protocol_options`. The defaults are Envoy's since 1.36 (before, they were
/// 2147483647 streams and 256 MiB windows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Options {
    /// `max_concurrent_streams`: 1 to 2147483647, default 1024.
    pub max_concurrent_streams: u32,
    /// `initial_stream_window_size`: 65535 to 2147483647, default 16 MiB (16777216).
    pub initial_stream_window_size: u32,
    /// `initial_connection_window_size`: 65535 to 2147483647, default 24 MiB (25165824).
    pub initial_connection_window_size: u32,
}

/// An HTTP filter of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpFilter {
    /// `envoy.filters.http.router`.
    Router,
}

/// `route_config`.
#[derive(Debug, Clone, Default)]
pub struct RouteConfig {
    /// `name`.
    pub name: String,
    /// `virtual_hosts`, in order.
    pub virtual_hosts: Vec<VirtualHost>,
    /// Header changes at route-config level.
    pub headers: HeaderMutations,
    /// The less common settings.
    pub options: RouteConfigOptions,
}

/// The less common route-configuration settings, all off by default.
#[derive(Debug, Clone, Default)]
pub struct RouteConfigOptions {
    /// `ignore_port_in_host_matching`.
    pub ignore_port_in_host_matching: bool,
    /// `most_specific_header_mutations_wins`.
    pub most_specific_header_mutations_wins: bool,
    /// `internal_only_headers`, lower-cased: removed from external requests.
    pub internal_only_headers: Vec<http::HeaderName>,
}

/// A virtual host.
#[derive(Debug, Clone)]
pub struct VirtualHost {
    /// `name`.
    pub name: String,
    /// `domains`, lower-cased: exact, `*.suffix`, `prefix.*` or `*`.
    pub domains: Vec<String>,
    /// `routes`, in order; the first match wins.
    pub routes: Vec<Route>,
    /// Header changes at virtual-host level.
    pub headers: HeaderMutations,
    /// `require_tls`, `virtual_clusters`.
    pub options: VirtualHostOptions,
}

/// The less common virtual-host settings.
#[derive(Debug, Clone, Default)]
pub struct VirtualHostOptions {
    /// `require_tls`.
    pub require_tls: RequireTls,
    /// `virtual_clusters`, in order (the first match counts).
    pub virtual_clusters: Vec<VirtualCluster>,
}

/// `VirtualHost.require_tls`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RequireTls {
    /// `NONE`.
    #[default]
    None,
    /// `EXTERNAL_ONLY`: external requests over plaintext are redirected to https (301).
    ExternalOnly,
    /// `ALL`: every request over plaintext is redirected to https (301).
    All,
}

/// `VirtualHost.virtual_clusters[*]`: requests counted apart
/// (`vhost.<vhost>.vcluster.<name>.upstream_rq_*`).
#[derive(Debug, Clone)]
pub struct VirtualCluster {
    /// `name`.
    pub name: String,
    /// `headers` (`:path`, `:method` included); all must match.
    pub headers: Vec<HeaderMatcher>,
}

/// `request_headers_to_add` / `_remove` and the response counterparts.
#[derive(Debug, Clone, Default)]
pub struct HeaderMutations {
    /// `request_headers_to_add`.
    pub request_add: Vec<HeaderValueOption>,
    /// `request_headers_to_remove`, lower-cased.
    pub request_remove: Vec<String>,
    /// `response_headers_to_add`.
    pub response_add: Vec<HeaderValueOption>,
    /// `response_headers_to_remove`, lower-cased.
    pub response_remove: Vec<String>,
}

/// `HeaderValueOption`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderValueOption {
    /// Header name, lower-cased.
    pub name: String,
    /// Value, with Envoy's `%VARIABLE%` substitutions still in it.
    pub value: String,
    /// `append_action`.
    pub action: AppendAction,
    /// `keep_empty_value`.
    pub keep_empty_value: bool,
}

/// `HeaderValueOption.append_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    /// Append to existing values, or add (the default).
    AppendIfExistsOrAdd,
    /// Add only when absent.
    AddIfAbsent,
    /// Replace existing values, or add.
    OverwriteIfExistsOrAdd,
    /// Replace only when present.
    OverwriteIfExists,
}

/// A route: a match and what to do.
#[derive(Debug, Clone)]
pub struct Route {
    /// `name`.
    pub name: String,
    /// `match`.
    pub matcher: RouteMatch,
    /// `route`, `redirect` or `direct_response`.
    pub action: RouteAction,
    /// Header changes at route level.
    pub headers: HeaderMutations,
    /// `decorator.operation`: recorded for tracing (none yet); not sent anywhere.
    pub decorator: Option<String>,
    /// `metadata.filter_metadata` as JSON (`%METADATA(ROUTE:..)%` reads it).
    pub metadata: Option<std::sync::Arc<serde_json::Map<String, serde_json::Value>>>,
}

/// `match`.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    /// The path specifier.
    pub path: PathMatch,
    /// `case_sensitive` (default true).
    pub case_sensitive: bool,
    /// `headers`.
    pub headers: Vec<HeaderMatcher>,
    /// `query_parameters`.
    pub query_parameters: Vec<QueryParameterMatcher>,
    /// `grpc` set: only gRPC requests match.
    pub grpc: bool,
    /// `runtime_fraction` default value as parts per million.
    pub runtime_fraction_ppm: Option<u32>,
}

/// The path specifier of a route match.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// `prefix`.
    Prefix(String),
    /// `path` (exact).
    Exact(String),
    /// `safe_regex`, matched against the whole path (without the query).
    Regex(regex::Regex),
    /// `path_separated_prefix`: the prefix, then end of path, `?`, or `/`.
    SeparatedPrefix(String),
}

/// `HeaderMatcher`.
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    /// Header name, lower-cased (`:authority`, `:method`, `:path` are pseudo-headers).
    pub name: String,
    /// How the value is matched.
    pub rule: ValueMatch,
    /// `invert_match`.
    pub invert: bool,
    /// `treat_missing_header_as_empty`.
    pub treat_missing_as_empty: bool,
}

/// A value matcher (header or query parameter).
#[derive(Debug, Clone)]
pub enum ValueMatch {
    /// `present_match: true` (or the parameter is present).
    Present,
    /// `present_match: false`: the header is absent.
    Absent,
    /// `exact_match`, `prefix_match`, `suffix_match`, `contains_match` or the same
    /// under `string_match`.
    String(StringMatcher),
    /// `safe_regex_match` / `string_match.safe_regex`: the whole value.
    Regex(regex::Regex),
    /// `range_match`: `start` inclusive, `end` exclusive.
    Range {
        /// Inclusive start.
        start: i64,
        /// Exclusive end.
        end: i64,
    },
}

/// A literal string comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StringMatcher {
    /// How the value is compared.
    pub kind: StringMatchKind,
    /// The literal (lower-cased when `ignore_case`).
    pub value: String,
    /// `ignore_case`.
    pub ignore_case: bool,
}

/// How a [`StringMatcher`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMatchKind {
    /// Equal.
    Exact,
    /// Starts with.
    Prefix,
    /// Ends with.
    Suffix,
    /// Contains.
    Contains,
}

/// `QueryParameterMatcher`.
#[derive(Debug, Clone)]
pub struct QueryParameterMatcher {
    /// Parameter name.
    pub name: String,
    /// `string_match`, or `Present` for `present_match`.
    pub rule: ValueMatch,
}

/// What a route does.
#[derive(Debug, Clone)]
pub enum RouteAction {
    /// `route`: forward upstream.
    Forward(Box<ForwardAction>),
    /// `redirect`.
    Redirect(Redirect),
    /// `direct_response`.
    DirectResponse {
        /// `status`.
        status: u16,
        /// `body.inline_string` (or inline_bytes).
        body: Option<bytes::Bytes>,
    },
}

/// `route` action.
#[derive(Debug, Clone)]
pub struct ForwardAction {
    /// Which cluster.
    pub cluster: ClusterSpecifier,
    /// `prefix_rewrite`.
    pub prefix_rewrite: Option<String>,
    /// `regex_rewrite` (pattern, substitution): every match of the (unanchored) pattern
    /// in the path is replaced. The substitution is as written, in RE2's syntax (`\1`
    /// names a group, `\\` is a backslash); config has checked that its groups exist.
    pub regex_rewrite: Option<(regex::Regex, String)>,
    /// Host rewrite.
    pub host_rewrite: HostRewrite,
    /// `cluster_not_found_response_code`: 503 (default), 404 or 500.
    pub cluster_not_found_status: u16,
    /// `timeout` (default 15 s; `None` when `0s` disables it).
    pub timeout: Option<Duration>,
    /// `idle_timeout`: `None` when not set (the connection manager's
    /// `stream_idle_timeout` applies); `Some(Duration::ZERO)` when `0s` disables idle
    /// timeouts for this route, the stream idle timeout included (as in Envoy).
    pub idle_timeout: Option<Duration>,
    /// `upgrade_configs`: (upgrade type lower-cased, `enabled`); one named here
    /// overrides the connection manager's `upgrade_configs` for this route.
    pub upgrades: Vec<(String, bool)>,
    /// `max_stream_duration`. When set, the route uses Envoy's "new timeouts": `timeout`
    /// is not applied (config leaves it `None`) and the stream's duration limit comes
    /// from here.
    pub max_stream_duration: Option<RouteStreamDuration>,
    /// `request_mirror_policies`: (cluster, parts per million of requests).
    pub mirrors: Vec<(String, u32)>,
    /// `retry_policy` (the route's, else its virtual host's).
    pub retry_policy: Option<RetryPolicy>,
    /// `hash_policy`, in order: the request hash for RING_HASH and MAGLEV clusters.
    pub hash_policy: Vec<HashPolicy>,
    /// Priority, buffer limit and attempt-count headers.
    pub options: ForwardOptions,
}

/// One entry of a route's `hash_policy`.
#[derive(Debug, Clone, PartialEq)]
pub struct HashPolicy {
    /// What the hash is computed from.
    pub source: HashSource,
    /// `terminal`: a hash from this policy ends the walk through the list.
    pub terminal: bool,
}

/// What a [`HashPolicy`] hashes.
#[derive(Debug, Clone, PartialEq)]
pub enum HashSource {
    /// `header.header_name` (lower-cased).
    Header(http::HeaderName),
    /// `cookie`: the cookie's value; with a `ttl`, a cookie keel sets when the
    /// request has none.
    Cookie {
        /// `name`.
        name: String,
        /// `ttl`: generate the cookie (with this Max-Age) when absent.
        ttl: Option<Duration>,
        /// `path` of a generated cookie.
        path: Option<String>,
    },
    /// `connection_properties.source_ip`.
    SourceIp,
}

/// `RouteAction.max_stream_duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteStreamDuration {
    /// `max_stream_duration`: `Some(ZERO)` disables the connection manager's limit for
    /// this route; `None` keeps it.
    pub max_stream_duration: Option<Duration>,
    /// `grpc_timeout_header_max`: a gRPC request's `grpc-timeout` is the limit, capped
    /// at this (zero: not capped).
    pub grpc_timeout_header_max: Option<Duration>,
    /// `grpc_timeout_header_offset`: subtracted from the `grpc-timeout` limit.
    pub grpc_timeout_header_offset: Option<Duration>,
}

impl RouteStreamDuration {
    /// The stream's duration limit on this route (Envoy's `refreshDurationTimeout`):
    /// the request's `grpc-timeout` when `grpc_timeout_header_max` is set (capped, less
    /// the offset), else this route's `max_stream_duration`, else the connection
    /// manager's (`hcm_limit`). `None`: no limit.
    pub fn limit(
        &self,
        grpc_timeout: Option<Duration>,
        hcm_limit: Option<Duration>,
    ) -> Option<Duration> {
        match (grpc_timeout, self.grpc_timeout_header_max) {
            (Some(mut timeout), Some(max)) => {
                if !max.is_zero() && timeout > max {
                    timeout = max;
                }
                if let Some(offset) = self.grpc_timeout_header_offset {
                    if !timeout.is_zero() {
                        timeout = timeout.saturating_sub(offset);
                    }
                }
                Some(timeout)
            }
            _ => match self.max_stream_duration {
                Some(limit) if limit.is_zero() => None,
                Some(limit) => Some(limit),
                None => hcm_limit.filter(|limit| !limit.is_zero()),
            },
        }
    }
}

/// Which cluster a forward goes to.
#[derive(Debug, Clone)]
pub enum ClusterSpecifier {
    /// `cluster`.
    Cluster(String),
    /// `weighted_clusters`: (name, weight); the weights are > 0 in total.
    Weighted(Vec<(String, u32)>),
    /// `cluster_header`: the cluster named by this request header (lower-cased).
    Header(String),
}

/// Host rewrite of a forward.
#[derive(Debug, Clone)]
pub enum HostRewrite {
    /// Keep the host.
    None,
    /// `host_rewrite_literal`.
    Literal(String),
    /// `auto_host_rewrite`: the upstream host's hostname, which only DNS clusters (or
    /// `endpoint.hostname`) give; for keel's STATIC endpoints the host stays, as in
    /// Envoy.
    Auto,
    /// `host_rewrite_header`: the value of this request header (lower-cased), when
    /// present and not empty.
    Header(http::HeaderName),
    /// `host_rewrite_path_regex`: the path (without the query) rewritten by the
    /// pattern, with the substitution in the regex crate's syntax.
    PathRegex(regex::Regex, String),
}

impl PartialEq for HostRewrite {
    fn eq(&self, other: &HostRewrite) -> bool {
        match (self, other) {
            (HostRewrite::None, HostRewrite::None) | (HostRewrite::Auto, HostRewrite::Auto) => true,
            (HostRewrite::Literal(a), HostRewrite::Literal(b)) => a == b,
            (HostRewrite::Header(a), HostRewrite::Header(b)) => a == b,
            (HostRewrite::PathRegex(a, x), HostRewrite::PathRegex(b, y)) => {
                a.as_str() == b.as_str() && x == y
            }
            _ => false,
        }
    }
}

impl Eq for HostRewrite {}

/// `retry_policy` (the route's, else its virtual host's).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// `retry_on`, split on commas.
    pub retry_on: Vec<String>,
    /// `num_retries` (default 1).
    pub num_retries: u32,
    /// `per_try_timeout`.
    pub per_try_timeout: Option<Duration>,
    /// `retriable_status_codes`.
    pub retriable_status_codes: Vec<u16>,
    /// `retry_on`, parsed.
    pub conditions: RetryOn,
    /// `per_try_idle_timeout`: a try whose response stalls this long (before or after
    /// its headers) is cut off (504 UT before the headers, a reset after).
    pub per_try_idle_timeout: Option<Duration>,
    /// `retriable_headers`: a response matching any is retried (`retriable-headers`).
    pub retriable_headers: Vec<HeaderMatcher>,
    /// `retry_back_off` (base 25 ms and 10 times that at most when left out).
    pub back_off: RetryBackOff,
    /// `retry_host_predicate` has `envoy.retry_host_predicates.previous_hosts`: a
    /// retry avoids the hosts tried before.
    pub previous_hosts: bool,
    /// `host_selection_retry_max_attempts`: picks made again when a pick lands on a
    /// previous host (default 1).
    pub host_selection_retry_max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            retry_on: Vec::new(),
            num_retries: 1,
            per_try_timeout: None,
            retriable_status_codes: Vec::new(),
            conditions: RetryOn::default(),
            per_try_idle_timeout: None,
            retriable_headers: Vec::new(),
            back_off: RetryBackOff::default(),
            previous_hosts: false,
            host_selection_retry_max_attempts: 1,
        }
    }
}

impl PartialEq for RetryPolicy {
    fn eq(&self, other: &RetryPolicy) -> bool {
        // Header matchers hold compiled regexes, which have no equality; their
        // descriptions do.
        self.retry_on == other.retry_on
            && self.num_retries == other.num_retries
            && self.per_try_timeout == other.per_try_timeout
            && self.retriable_status_codes == other.retriable_status_codes
            && self.conditions == other.conditions
            && self.per_try_idle_timeout == other.per_try_idle_timeout
            && format!("{:?}", self.retriable_headers) == format!("{:?}", other.retriable_headers)
            && self.back_off == other.back_off
            && self.previous_hosts == other.previous_hosts
            && self.host_selection_retry_max_attempts == other.host_selection_retry_max_attempts
    }
}

/// `retry_back_off`: Envoy's fully jittered exponential back-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBackOff {
    /// `base_interval` (default 25 ms).
    pub base_interval: Duration,
    /// `max_interval` (default 10 times `base_interval`).
    pub max_interval: Duration,
}

impl Default for RetryBackOff {
    fn default() -> RetryBackOff {
        RetryBackOff {
            base_interval: Duration::from_millis(25),
            max_interval: Duration::from_millis(250),
        }
    }
}

/// A set of `retry_on` conditions (`x-envoy-retry-on` and `x-envoy-retry-grpc-on` add
/// to it per request).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn(pub u32);

impl RetryOn {
    /// `5xx`: a 5xx response, or no response (reset, connect failure, per-try timeout).
    pub const FIVE_XX: u32 = 1 << 0;
    /// `gateway-error`: 502, 503, 504, or no response.
    pub const GATEWAY_ERROR: u32 = 1 << 1;
    /// `reset`: no response (disconnect, reset, per-try timeout).
    pub const RESET: u32 = 1 << 2;
    /// `connect-failure`: the connection could not be made.
    pub const CONNECT_FAILURE: u32 = 1 << 3;
    /// `retriable-4xx`: 409.
    pub const RETRIABLE_4XX: u32 = 1 << 4;
    /// `refused-stream`: an HTTP/2 REFUSED_STREAM reset.
    pub const REFUSED_STREAM: u32 = 1 << 5;
    /// `retriable-status-codes`.
    pub const RETRIABLE_STATUS_CODES: u32 = 1 << 6;
    /// `retriable-headers`.
    pub const RETRIABLE_HEADERS: u32 = 1 << 7;
    /// `reset-before-request`: reset before the request was sent.
    pub const RESET_BEFORE_REQUEST: u32 = 1 << 8;
    /// `envoy-ratelimited`: `x-envoy-ratelimited` in the response.
    pub const ENVOY_RATELIMITED: u32 = 1 << 9;
    /// `http3-post-connect-failure` (keel has no HTTP/3: never true).
    pub const HTTP3_POST_CONNECT_FAILURE: u32 = 1 << 10;
    /// gRPC `cancelled` (status 1).
    pub const GRPC_CANCELLED: u32 = 1 << 16;
    /// gRPC `deadline-exceeded` (status 4).
    pub const GRPC_DEADLINE_EXCEEDED: u32 = 1 << 17;
    /// gRPC `resource-exhausted` (status 8).
    pub const GRPC_RESOURCE_EXHAUSTED: u32 = 1 << 18;
    /// gRPC `internal` (status 13).
    pub const GRPC_INTERNAL: u32 = 1 << 19;
    /// gRPC `unavailable` (status 14).
    pub const GRPC_UNAVAILABLE: u32 = 1 << 20;
    /// Every gRPC condition.
    pub const GRPC: u32 = Self::GRPC_CANCELLED
        | Self::GRPC_DEADLINE_EXCEEDED
        | Self::GRPC_RESOURCE_EXHAUSTED
        | Self::GRPC_INTERNAL
        | Self::GRPC_UNAVAILABLE;

    /// The bit of one condition name, HTTP or gRPC (`None`: unknown).
    pub fn condition(name: &str) -> Option<u32> {
        Some(match name {
            "5xx" => Self::FIVE_XX,
            "gateway-error" => Self::GATEWAY_ERROR,
            "reset" => Self::RESET,
            "reset-before-request" => Self::RESET_BEFORE_REQUEST,
            "connect-failure" => Self::CONNECT_FAILURE,
            "envoy-ratelimited" => Self::ENVOY_RATELIMITED,
            "retriable-4xx" => Self::RETRIABLE_4XX,
            "refused-stream" => Self::REFUSED_STREAM,
            "retriable-status-codes" => Self::RETRIABLE_STATUS_CODES,
            "retriable-headers" => Self::RETRIABLE_HEADERS,
            "http3-post-connect-failure" => Self::HTTP3_POST_CONNECT_FAILURE,
            "cancelled" => Self::GRPC_CANCELLED,
            "deadline-exceeded" => Self::GRPC_DEADLINE_EXCEEDED,
            "internal" => Self::GRPC_INTERNAL,
            "resource-exhausted" => Self::GRPC_RESOURCE_EXHAUSTED,
            "unavailable" => Self::GRPC_UNAVAILABLE,
            _ => return None,
        })
    }

    /// Parses a comma-separated list; unknown names are skipped (as Envoy does for
    /// the request headers). `grpc_only`: only the gRPC names count.
    pub fn parse_list(list: &str, grpc_only: bool) -> RetryOn {
        let mut bits = 0;
        for name in list.split(',').map(str::trim) {
            if let Some(bit) = Self::condition(name) {
                if !grpc_only || bit & Self::GRPC != 0 {
                    bits |= bit;
                }
            }
        }
        RetryOn(bits)
    }

    /// Whether any of `bits` is set.
    #[inline]
    pub fn any(self, bits: u32) -> bool {
        self.0 & bits != 0
    }
}

/// Settings of a forward that Envoy keeps on the route or its virtual host rather
/// than in the route action.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardOptions {
    /// The route action's `priority`: which circuit-breaker thresholds apply.
    pub priority: super::breakers::RoutingPriority,
    /// The request body kept for retries: `request_body_buffer_limit` of the route,
    /// else of its virtual host; or the deprecated `per_request_buffer_limit_bytes`
    /// (capped by the listener's 1 MiB); `None`: the listener's limit, 1 MiB.
    pub buffer_limit: Option<u64>,
    /// The virtual host's `include_request_attempt_count`: `x-envoy-attempt-count`
    /// on upstream requests.
    pub include_request_attempt_count: bool,
    /// The virtual host's `include_attempt_count_in_response`: `x-envoy-attempt-count`
    /// on responses.
    pub include_attempt_count_in_response: bool,
}

/// `redirect`.
#[derive(Debug, Clone, Default)]
pub struct Redirect {
    /// `scheme_redirect` or `https_redirect` ("https").
    pub scheme: Option<String>,
    /// `host_redirect`.
    pub host: Option<String>,
    /// `port_redirect`.
    pub port: Option<u16>,
    /// `path_redirect`.
    pub path: Option<String>,
    /// `prefix_rewrite`.
    pub prefix_rewrite: Option<String>,
    /// `response_code` (default 301).
    pub status: u16,
    /// `strip_query`.
    pub strip_query: bool,
}

/// An access log.
#[derive(Debug, Clone)]
pub struct AccessLog {
    /// Where lines go.
    pub sink: AccessLogSink,
    /// How a line is formatted.
    pub format: AccessLogFormat,
    /// `filter`.
    pub filter: Option<AccessLogFilter>,
}

/// Where an access log writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogSink {
    /// `envoy.access_loggers.file` with `path`.
    File(std::path::PathBuf),
    /// `envoy.access_loggers.stdout`.
    Stdout,
    /// `envoy.access_loggers.stderr`.
    Stderr,
}

/// The format of an access log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// A format string with `%COMMAND%` operators (Envoy's default when unset), used
    /// as-is: like Envoy, keel adds no newline to a custom format (the default format
    /// ends with one).
    Text(String),
    /// `json_format`: keys and format strings, sorted by key (a protobuf `Struct` does
    /// not keep the file's order). One JSON object per line.
    Json(Vec<(String, String)>),
}

/// `AccessLogFilter`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogFilter {
    /// `status_code_filter`.
    StatusCode(Comparison),
    /// `duration_filter` (milliseconds). `value.runtime_key` is accepted and ignored:
    /// keel has no runtime, so `value.default_value` always applies.
    Duration(Comparison),
    /// `not_health_check_filter`.
    NotHealthCheck,
    /// `header_filter`: a request header (a regular one; keel keeps no pseudo-headers
    /// for logging).
    Header(HeaderFilter),
    /// `and_filter`.
    And(Vec<AccessLogFilter>),
    /// `or_filter`.
    Or(Vec<AccessLogFilter>),
}

/// `header_filter.header`.
#[derive(Debug, Clone)]
pub struct HeaderFilter(pub HeaderMatcher);

impl PartialEq for HeaderFilter {
    fn eq(&self, other: &HeaderFilter) -> bool {
        // Regexes compare by their pattern, which Debug shows.
        format!("{:?}", self.0) == format!("{:?}", other.0)
    }
}

impl Eq for HeaderFilter {}

/// `ComparisonFilter` with its runtime default value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Comparison {
    /// `op`.
    pub op: ComparisonOp,
    /// `value.default_value`.
    pub value: u64,
}

/// `ComparisonFilter.Op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComparisonOp {
    /// `EQ`.
    Eq,
    /// `GE`.
    Ge,
    /// `LE`.
    Le,
}

/// Envoy's default access-log format.
pub const DEFAULT_ACCESS_LOG_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";
