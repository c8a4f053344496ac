//! Step 2: the fields keel supports, as one table, and the check that applies it.
//!
//! Envoy's API is far larger than what keel implements. The rule is that a field keel
//! does not support is a clear error naming the field, never a silent ignore. So after
//! parsing, the bootstrap message is walked generically and every field that is set
//! (present, or non-default for a proto3 scalar) must be listed for its message in
//! [`SUPPORTED_FIELDS`]. `Any` values are unpacked by their type URL and checked the same
//! way; a message with no entry in the table is unsupported as a whole. Well-known types
//! (durations, wrappers, `Struct`) are values, not walked.
//!
//! To support a new field: add its protobuf name (snake_case) to its message's line, or
//! add a line for a new message, then teach `convert` to read it.

use prost_reflect::{DynamicMessage, MapKey, ReflectMessage, Value};

use super::{descriptor_pool, index, join, type_url_message_name, ConfigError};

/// Full names of messages that several tables here name.
const HCM: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const HTTP_FILTER: &str = "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter";
const LISTENER_FILTER: &str = "envoy.config.listener.v3.Filter";
const ACCESS_LOG: &str = "envoy.config.accesslog.v3.AccessLog";
const CLUSTER: &str = "envoy.config.cluster.v3.Cluster";
const CLUSTER_COMMON_LB: &str = "envoy.config.cluster.v3.Cluster.CommonLbConfig";

/// Why `common_lb_config.zone_aware_lb_config` is rejected.
pub const ZONE_AWARE_UNSUPPORTED: &str =
    "zone-aware routing needs the local cluster (cluster_manager.local_cluster_name) to \
     compare zones, which keel does not support (Envoy does no zone-aware routing without it \
     either); use locality_weighted_lb_config or priorities";

/// For each message keel reads (by full protobuf name), the fields it supports.
pub const SUPPORTED_FIELDS: &[(&str, &[&str])] = &[
    // Bootstrap.
    (
        "envoy.config.bootstrap.v3.Bootstrap",
        &["node", "admin", "static_resources", "bootstrap_extensions"],
    ),
    (
        "envoy.config.bootstrap.v3.Bootstrap.StaticResources",
        &["listeners", "clusters"],
    ),
    ("envoy.config.bootstrap.v3.Admin", &["address"]),
    ("envoy.config.core.v3.Node", &["id", "cluster"]),
    (
        "envoy.config.core.v3.TypedExtensionConfig",
        &["name", "typed_config"],
    ),
    (
        "keel.v1.Datapath",
        &["cgroup_path", "bpffs_path", "on_unavailable"],
    ),
    // Addresses and metadata.
    ("envoy.config.core.v3.Address", &["socket_address"]),
    (
        "envoy.config.core.v3.SocketAddress",
        &["protocol", "address", "port_value"],
    ),
    (
        "envoy.config.core.v3.Metadata",
        &["filter_metadata", "typed_filter_metadata"],
    ),
    ("keel.v1.ListenerOptions", &["balancing"]),
    // Listeners.
    (
        "envoy.config.listener.v3.Listener",
        &[
            "name",
            "address",
            "filter_chains",
            "default_filter_chain",
            "listener_filters",
            "listener_filters_timeout",
            "continue_on_listener_filters_timeout",
            "per_connection_buffer_limit_bytes",
            "metadata",
        ],
    ),
    (
        "envoy.config.listener.v3.FilterChain",
        &["name", "filter_chain_match", "filters"],
    ),
    (
        "envoy.config.listener.v3.FilterChainMatch",
        &[
            "destination_port",
            "prefix_ranges",
            "direct_source_prefix_ranges",
            "source_type",
            "source_prefix_ranges",
            "source_ports",
            "server_names",
            "transport_protocol",
            "application_protocols",
        ],
    ),
    ("envoy.config.core.v3.CidrRange", &["address_prefix", "prefix_len"]),
    ("envoy.config.listener.v3.ListenerFilter", &["name", "typed_config"]),
    (
        "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
        &[],
    ),
    (
        "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
        &[],
    ),
    (LISTENER_FILTER, &["name", "typed_config"]),
    (
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        &["stat_prefix", "cluster", "weighted_clusters", "idle_timeout"],
    ),
    (
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster",
        &["clusters"],
    ),
    (
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight",
        &["name", "weight"],
    ),
    // The HTTP connection manager.
    (
        HCM,
        &[
            "codec_type",
            "stat_prefix",
            "route_config",
            "http_filters",
            "access_log",
            "use_remote_address",
            "xff_num_trusted_hops",
            "generate_request_id",
            "server_name",
            "server_header_transformation",
            "common_http_protocol_options",
            "max_request_headers_kb",
            "normalize_path",
            "merge_slashes",
            "http2_protocol_options",
            "http_protocol_options",
            "upgrade_configs",
            "request_timeout",
            "stream_idle_timeout",
            "request_headers_timeout",
            "drain_timeout",
            "skip_xff_append",
            "via",
            "always_set_request_id_in_response",
            "preserve_external_request_id",
            "strip_matching_host_port",
            "strip_any_host_port",
            "internal_address_config",
            "add_user_agent",
            "local_reply_config",
            "path_with_escaped_slashes_action",
            "delayed_close_timeout",
            "stream_error_on_invalid_http_message",
        ],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.InternalAddressConfig",
        &["cidr_ranges", "unix_sockets"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.LocalReplyConfig",
        &["mappers", "body_format"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.ResponseMapper",
        &["filter", "status_code", "body", "body_format_override", "headers_to_add"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.UpgradeConfig",
        &["upgrade_type", "enabled"],
    ),
    (HTTP_FILTER, &["name", "typed_config"]),
    ("envoy.extensions.filters.http.router.v3.Router", &[]),
    (
        "envoy.config.core.v3.HttpProtocolOptions",
        &[
            "idle_timeout",
            "max_requests_per_connection",
            "max_connection_duration",
            "max_headers_count",
            "max_stream_duration",
            "headers_with_underscores_action",
        ],
    ),
    // The connection manager reads these two; an upstream cluster's options read none
    // (Envoy ignores them there too: they are server-side settings).
    (
        "envoy.config.core.v3.Http1ProtocolOptions",
        &["accept_http_10", "default_host_for_http_10"],
    ),
    (
        "envoy.config.core.v3.Http2ProtocolOptions",
        &[
            "max_concurrent_streams",
            "initial_stream_window_size",
            "initial_connection_window_size",
        ],
    ),
    // Routes.
    (
        "envoy.config.route.v3.RouteConfiguration",
        &[
            "name",
            "virtual_hosts",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "most_specific_header_mutations_wins",
            "ignore_port_in_host_matching",
            "validate_clusters",
            "internal_only_headers",
            "max_direct_response_body_size_bytes",
        ],
    ),
    (
        "envoy.config.route.v3.VirtualHost",
        &[
            "name",
            "domains",
            "routes",
            "retry_policy",
            "include_request_attempt_count",
            "include_attempt_count_in_response",
            "per_request_buffer_limit_bytes",
            "request_body_buffer_limit",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "require_tls",
            "virtual_clusters",
        ],
    ),
    ("envoy.config.route.v3.VirtualCluster", &["name", "headers"]),
    ("envoy.config.route.v3.Decorator", &["operation", "propagate"]),
    (
        "envoy.config.route.v3.Route",
        &[
            "name",
            "match",
            "route",
            "redirect",
            "direct_response",
            "per_request_buffer_limit_bytes",
            "request_body_buffer_limit",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "decorator",
            "metadata",
        ],
    ),
    (
        "envoy.config.route.v3.RouteMatch",
        &[
            "prefix",
            "path",
            "safe_regex",
            "path_separated_prefix",
            "case_sensitive",
            "headers",
            "query_parameters",
            "grpc",
            "runtime_fraction",
        ],
    ),
    ("envoy.config.route.v3.RouteMatch.GrpcRouteMatchOptions", &[]),
    (
        "envoy.config.route.v3.HeaderMatcher",
        &[
            "name",
            "exact_match",
            "prefix_match",
            "suffix_match",
            "contains_match",
            "safe_regex_match",
            "present_match",
            "range_match",
            "string_match",
            "invert_match",
            "treat_missing_header_as_empty",
        ],
    ),
    (
        "envoy.config.route.v3.QueryParameterMatcher",
        &["name", "string_match", "present_match"],
    ),
    (
        "envoy.type.matcher.v3.StringMatcher",
        &[
            "exact",
            "prefix",
            "suffix",
            "contains",
            "safe_regex",
            "ignore_case",
        ],
    ),
    ("envoy.type.matcher.v3.RegexMatcher", &["google_re2", "regex"]),
    ("envoy.type.matcher.v3.RegexMatcher.GoogleRE2", &[]),
    (
        "envoy.type.matcher.v3.RegexMatchAndSubstitute",
        &["pattern", "substitution"],
    ),
    ("envoy.type.v3.Int64Range", &["start", "end"]),
    (
        "envoy.config.core.v3.RuntimeFractionalPercent",
        &["default_value", "runtime_key"],
    ),
    ("envoy.type.v3.FractionalPercent", &["numerator", "denominator"]),
    (
        "envoy.config.route.v3.RouteAction",
        &[
            "cluster",
            "weighted_clusters",
            "cluster_header",
            "prefix_rewrite",
            "regex_rewrite",
            "host_rewrite_literal",
            "auto_host_rewrite",
            "host_rewrite_header",
            "host_rewrite_path_regex",
            "cluster_not_found_response_code",
            "timeout",
            "idle_timeout",
            "upgrade_configs",
            "max_stream_duration",
            "request_mirror_policies",
            "retry_policy",
            "priority",
            "hash_policy",
        ],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy",
        &["header", "cookie", "connection_properties", "terminal"],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy.Header",
        &["header_name"],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy.Cookie",
        &["name", "ttl", "path"],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy.ConnectionProperties",
        &["source_ip"],
    ),
    (
        "envoy.config.route.v3.RouteAction.MaxStreamDuration",
        &[
            "max_stream_duration",
            "grpc_timeout_header_max",
            "grpc_timeout_header_offset",
        ],
    ),
    (
        "envoy.config.route.v3.RouteAction.UpgradeConfig",
        &["upgrade_type", "enabled"],
    ),
    (
        "envoy.config.route.v3.WeightedCluster",
        &["clusters", "total_weight"],
    ),
    (
        "envoy.config.route.v3.WeightedCluster.ClusterWeight",
        &["name", "weight"],
    ),
    (
        "envoy.config.route.v3.RouteAction.RequestMirrorPolicy",
        &["cluster", "runtime_fraction"],
    ),
    (
        "envoy.config.route.v3.RetryPolicy",
        &[
            "retry_on",
            "num_retries",
            "per_try_timeout",
            "per_try_idle_timeout",
            "retriable_status_codes",
            "retriable_headers",
            "retry_back_off",
            "retry_host_predicate",
            "host_selection_retry_max_attempts",
        ],
    ),
    (
        "envoy.config.route.v3.RetryPolicy.RetryBackOff",
        &["base_interval", "max_interval"],
    ),
    (
        "envoy.config.route.v3.RetryPolicy.RetryHostPredicate",
        &["name", "typed_config"],
    ),
    (
        "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
        &[],
    ),
    (
        "envoy.config.route.v3.RedirectAction",
        &[
            "https_redirect",
            "scheme_redirect",
            "host_redirect",
            "port_redirect",
            "path_redirect",
            "prefix_rewrite",
            "response_code",
            "strip_query",
        ],
    ),
    (
        "envoy.config.route.v3.DirectResponseAction",
        &["status", "body"],
    ),
    (
        "envoy.config.core.v3.DataSource",
        &["inline_bytes", "inline_string"],
    ),
    (
        "envoy.config.core.v3.HeaderValueOption",
        &["header", "append", "append_action", "keep_empty_value"],
    ),
    ("envoy.config.core.v3.HeaderValue", &["key", "value"]),
    // Access logs.
    (ACCESS_LOG, &["name", "filter", "typed_config"]),
    (
        "envoy.config.accesslog.v3.AccessLogFilter",
        &[
            "status_code_filter",
            "duration_filter",
            "not_health_check_filter",
            "header_filter",
            "and_filter",
            "or_filter",
        ],
    ),
    ("envoy.config.accesslog.v3.HeaderFilter", &["header"]),
    ("envoy.config.accesslog.v3.StatusCodeFilter", &["comparison"]),
    ("envoy.config.accesslog.v3.DurationFilter", &["comparison"]),
    ("envoy.config.accesslog.v3.NotHealthCheckFilter", &[]),
    ("envoy.config.accesslog.v3.AndFilter", &["filters"]),
    ("envoy.config.accesslog.v3.OrFilter", &["filters"]),
    ("envoy.config.accesslog.v3.ComparisonFilter", &["op", "value"]),
    (
        "envoy.config.core.v3.RuntimeUInt32",
        &["default_value", "runtime_key"],
    ),
    (
        "envoy.extensions.access_loggers.file.v3.FileAccessLog",
        &["path", "format", "json_format", "log_format"],
    ),
    (
        "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
        &["log_format"],
    ),
    (
        "envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
        &["log_format"],
    ),
    (
        "envoy.config.core.v3.SubstitutionFormatString",
        &["text_format", "json_format", "text_format_source", "content_type"],
    ),
    // Clusters.
    (
        CLUSTER,
        &[
            "name",
            "type",
            "connect_timeout",
            "per_connection_buffer_limit_bytes",
            "lb_policy",
            "maglev_lb_config",
            "ring_hash_lb_config",
            "least_request_lb_config",
            "original_dst_lb_config",
            "common_lb_config",
            "load_assignment",
            "typed_extension_protocol_options",
            "http2_protocol_options",
            "circuit_breakers",
            "dns_refresh_rate",
            "dns_failure_refresh_rate",
            "respect_dns_ttl",
            "dns_lookup_family",
            "typed_dns_resolver_config",
            "dns_resolvers",
            "cleanup_interval",
            "health_checks",
            "outlier_detection",
        ],
    ),
    // Health checking and outlier detection (convert/health.rs).
    (
        "envoy.config.core.v3.HealthCheck",
        &[
            "timeout",
            "interval",
            "initial_jitter",
            "interval_jitter",
            "interval_jitter_percent",
            "unhealthy_threshold",
            "healthy_threshold",
            "reuse_connection",
            "no_traffic_interval",
            "no_traffic_healthy_interval",
            "unhealthy_interval",
            "unhealthy_edge_interval",
            "healthy_edge_interval",
            "http_health_check",
            "tcp_health_check",
            "grpc_health_check",
        ],
    ),
    (
        "envoy.config.core.v3.HealthCheck.HttpHealthCheck",
        &[
            "host",
            "path",
            "method",
            "expected_statuses",
            "retriable_statuses",
            "request_headers_to_add",
            "request_headers_to_remove",
            "codec_client_type",
        ],
    ),
    (
        "envoy.config.core.v3.HealthCheck.TcpHealthCheck",
        &["send", "receive"],
    ),
    (
        "envoy.config.core.v3.HealthCheck.GrpcHealthCheck",
        &["service_name", "authority", "initial_metadata"],
    ),
    ("envoy.config.core.v3.HealthCheck.Payload", &["text", "binary"]),
    (
        "envoy.config.cluster.v3.OutlierDetection",
        &[
            "consecutive_5xx",
            "interval",
            "base_ejection_time",
            "max_ejection_percent",
            "enforcing_consecutive_5xx",
            "enforcing_success_rate",
            "success_rate_minimum_hosts",
            "success_rate_request_volume",
            "success_rate_stdev_factor",
            "consecutive_gateway_failure",
            "enforcing_consecutive_gateway_failure",
            "split_external_local_origin_errors",
            "consecutive_local_origin_failure",
            "enforcing_consecutive_local_origin_failure",
            "enforcing_local_origin_success_rate",
            "failure_percentage_threshold",
            "enforcing_failure_percentage",
            "enforcing_failure_percentage_local_origin",
            "failure_percentage_minimum_hosts",
            "failure_percentage_request_volume",
            "max_ejection_time",
            "max_ejection_time_jitter",
            "successful_active_health_check_uneject_host",
        ],
    ),
    ("envoy.config.cluster.v3.CircuitBreakers", &["thresholds"]),
    (
        "envoy.config.cluster.v3.CircuitBreakers.Thresholds",
        &[
            "priority",
            "max_connections",
            "max_pending_requests",
            "max_requests",
            "max_retries",
            "retry_budget",
            "track_remaining",
        ],
    ),
    (
        "envoy.config.cluster.v3.CircuitBreakers.Thresholds.RetryBudget",
        &["budget_percent", "min_retry_concurrency"],
    ),
    ("envoy.type.v3.Percent", &["value"]),
    (
        "envoy.config.cluster.v3.Cluster.MaglevLbConfig",
        &["table_size"],
    ),
    (
        "envoy.config.cluster.v3.Cluster.RingHashLbConfig",
        &["minimum_ring_size", "maximum_ring_size", "hash_function"],
    ),
    (
        "envoy.config.cluster.v3.Cluster.LeastRequestLbConfig",
        &["choice_count", "active_request_bias"],
    ),
    (
        "envoy.config.core.v3.RuntimeDouble",
        &["default_value", "runtime_key"],
    ),
    (
        "envoy.config.cluster.v3.Cluster.OriginalDstLbConfig",
        &["use_http_header", "http_header_name", "upstream_port_override"],
    ),
    (
        CLUSTER_COMMON_LB,
        &[
            "healthy_panic_threshold",
            "locality_weighted_lb_config",
            "update_merge_window",
        ],
    ),
    ("envoy.type.v3.Percent", &["value"]),
    (
        "envoy.config.cluster.v3.Cluster.CommonLbConfig.LocalityWeightedLbConfig",
        &[],
    ),
    (
        "envoy.config.cluster.v3.Cluster.RefreshRate",
        &["base_interval", "max_interval"],
    ),
    (
        "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
        &["resolvers"],
    ),
    (
        "envoy.config.endpoint.v3.ClusterLoadAssignment",
        &["cluster_name", "endpoints", "policy"],
    ),
    (
        "envoy.config.endpoint.v3.ClusterLoadAssignment.Policy",
        &["overprovisioning_factor"],
    ),
    (
        "envoy.config.endpoint.v3.LocalityLbEndpoints",
        &["locality", "lb_endpoints", "load_balancing_weight", "priority"],
    ),
    (
        "envoy.config.core.v3.Locality",
        &["region", "zone", "sub_zone"],
    ),
    (
        "envoy.config.endpoint.v3.LbEndpoint",
        &["endpoint", "load_balancing_weight"],
    ),
    ("envoy.config.endpoint.v3.Endpoint", &["address"]),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        &[
            "explicit_http_config",
            "use_downstream_protocol_config",
            "common_http_protocol_options",
        ],
    ),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig",
        &["http_protocol_options", "http2_protocol_options"],
    ),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.UseDownstreamHttpConfig",
        &["http_protocol_options", "http2_protocol_options"],
    ),
];

/// Fields keel knows but does not support, with what to say instead of the generic
/// "field not supported" (message, field, message to the user).
pub const FIELD_HINTS: &[(&str, &str, &str)] = &[
    (
        CLUSTER_COMMON_LB,
        "zone_aware_lb_config",
        ZONE_AWARE_UNSUPPORTED,
    ),
    (
        HCM,
        "rds",
        "RDS comes with xDS, not supported yet; give the routes inline in route_config",
    ),
    (
        HCM,
        "scoped_routes",
        "scoped routes (SRDS) come with xDS, not supported yet; give the routes inline in route_config",
    ),
    (
        HTTP_FILTER,
        "config_discovery",
        "extension config discovery (ECDS) comes with xDS, not supported yet; give typed_config inline",
    ),
    (
        LISTENER_FILTER,
        "config_discovery",
        "extension config discovery (ECDS) comes with xDS, not supported yet; give typed_config inline",
    ),
];

/// For `Any` fields, what keel accepts there (message, field, the choices), added to the
/// error when the `@type` is unknown or not supported.
pub const ANY_HINTS: &[(&str, &str, &str)] = &[
    (
        LISTENER_FILTER,
        "typed_config",
        "the network filters keel supports are envoy.filters.network.tcp_proxy \
         (type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy) and \
         envoy.filters.network.http_connection_manager \
         (type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager)",
    ),
    (
        HTTP_FILTER,
        "typed_config",
        "keel supports one HTTP filter, envoy.filters.http.router \
         (type.googleapis.com/envoy.extensions.filters.http.router.v3.Router)",
    ),
    (
        ACCESS_LOG,
        "typed_config",
        "the access loggers keel supports are envoy.access_loggers.file \
         (type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog), \
         envoy.access_loggers.stdout \
         (type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog) and \
         envoy.access_loggers.stderr \
         (type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog)",
    ),
    (
        CLUSTER,
        "typed_extension_protocol_options",
        "keel reads only envoy.extensions.upstreams.http.v3.HttpProtocolOptions here \
         (type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions)",
    ),
];

/// Supported fields whose contents are free-form and not walked: Envoy metadata holds
/// anything under any key. `convert` reads the "keel" entry strictly (and checks it
/// against [`SUPPORTED_FIELDS`] itself); other entries are left alone.
pub const FREE_FORM_FIELDS: &[(&str, &str)] = &[
    ("envoy.config.core.v3.Metadata", "filter_metadata"),
    ("envoy.config.core.v3.Metadata", "typed_filter_metadata"),
];

/// The supported fields of a message, or `None` if keel does not support it at all.
pub fn supported_fields(message: &str) -> Option<&'static [&'static str]> {
    SUPPORTED_FIELDS
        .iter()
        .find(|(name, _)| *name == message)
        .map(|(_, fields)| *fields)
}

/// What to tell the user about an unsupported `field` of `message`, if more than the
/// generic message helps.
pub fn field_hint(message: &str, field: &str) -> Option<&'static str> {
    FIELD_HINTS
        .iter()
        .find(|(m, f, _)| *m == message && *f == field)
        .map(|(_, _, hint)| *hint)
}

/// What keel accepts in the `Any` field `field` of `message`, if the table says.
pub fn any_hint(message: &str, field: &str) -> Option<&'static str> {
    ANY_HINTS
        .iter()
        .find(|(m, f, _)| *m == message && *f == field)
        .map(|(_, _, hint)| *hint)
}

/// Checks that every field set in `message` (found at `path`) is supported.
pub(super) fn check(message: &DynamicMessage, path: &str) -> Result<(), ConfigError> {
    check_message(message, path, None)
}

/// [`check`], with the hint to give if `message` is an `Any` of an unsupported type.
fn check_message(
    message: &DynamicMessage,
    path: &str,
    any_hint: Option<&str>,
) -> Result<(), ConfigError> {
    let desc = message.descriptor();
    let name = desc.full_name();
    if name == "google.protobuf.Any" {
        return check_any(message, path, any_hint);
    }
    if name.starts_with("google.protobuf.") {
        return Ok(());
    }
    let Some(fields) = supported_fields(name) else {
        return Err(ConfigError::field(
            path,
            format!("{name} is not supported by keel"),
        ));
    };
    for (field, value) in message.fields() {
        let child = join(path, field.name());
        if !fields.contains(&field.name()) {
            let message = match field_hint(name, field.name()) {
                Some(hint) => hint.to_string(),
                None if fields.is_empty() => {
                    format!(
                        "field not supported by keel (keel reads no field of {name}); remove it"
                    )
                }
                None => format!(
                    "field not supported by keel (keel reads only {} of {name}); remove it",
                    fields.join(", ")
                ),
            };
            return Err(ConfigError::field(child, message));
        }
        if FREE_FORM_FIELDS.contains(&(name, field.name())) {
            continue;
        }
        check_value(value, &child, self::any_hint(name, field.name()))?;
    }
    Ok(())
}

fn check_value(value: &Value, path: &str, any_hint: Option<&str>) -> Result<(), ConfigError> {
    match value {
        Value::Message(message) => check_message(message, path, any_hint),
        Value::List(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| check_value(item, &index(path, i), any_hint)),
        Value::Map(entries) => {
            // Sorted, so that the first error is the same every time.
            let mut entries: Vec<_> = entries.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            entries
                .into_iter()
                .try_for_each(|(key, item)| check_value(item, &join(path, &map_key(key)), any_hint))
        }
        _ => Ok(()),
    }
}

/// Unpacks an `Any` by its type URL and checks the payload at the same path (in JSON the
/// payload's fields sit beside "@type").
fn check_any(any: &DynamicMessage, path: &str, hint: Option<&str>) -> Result<(), ConfigError> {
    let type_url = any
        .get_field_by_name("type_url")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let bytes = any
        .get_field_by_name("value")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    let hint = hint.map(|h| format!("; {h}")).unwrap_or_default();
    let Some(desc) =
        type_url_message_name(&type_url).and_then(|n| descriptor_pool().get_message_by_name(n))
    else {
        return Err(ConfigError::field(
            path,
            format!("unknown @type \"{type_url}\"{hint}"),
        ));
    };
    if desc.full_name().starts_with("google.protobuf.") {
        return Ok(());
    }
    if supported_fields(desc.full_name()).is_none() {
        return Err(ConfigError::field(
            path,
            format!("@type \"{type_url}\" is not supported by keel{hint}"),
        ));
    }
    let payload = DynamicMessage::decode(desc, bytes)
        .map_err(|e| ConfigError::field(path, format!("cannot decode {type_url}: {e}")))?;
    check(&payload, path)
}

fn map_key(key: &MapKey) -> String {
    match key {
        MapKey::Bool(v) => v.to_string(),
        MapKey::I32(v) => v.to_string(),
        MapKey::I64(v) => v.to_string(),
        MapKey::U32(v) => v.to_string(),
        MapKey::U64(v) => v.to_string(),
        MapKey::String(v) => v.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message and field named in the table exists in the descriptor pool, so a typo
    /// in the table cannot silently reject (or accept) a field.
    #[test]
    fn table_names_exist() {
        for (message, fields) in SUPPORTED_FIELDS {
            let desc = descriptor_pool()
                .get_message_by_name(message)
                .unwrap_or_else(|| panic!("SUPPORTED_FIELDS names unknown message {message}"));
            for field in *fields {
                assert!(
                    desc.get_field_by_name(field).is_some(),
                    "SUPPORTED_FIELDS: {message} has no field {field}"
                );
            }
        }
        for (message, field, _) in FIELD_HINTS.iter().chain(ANY_HINTS) {
            let desc = descriptor_pool()
                .get_message_by_name(message)
                .unwrap_or_else(|| panic!("a hint names unknown message {message}"));
            assert!(
                desc.get_field_by_name(field).is_some(),
                "a hint names {message}.{field}, which does not exist"
            );
        }
        for (message, field) in FREE_FORM_FIELDS {
            let fields = supported_fields(message).unwrap_or_else(|| {
                panic!("FREE_FORM_FIELDS names {message}, not in SUPPORTED_FIELDS")
            });
            assert!(
                fields.contains(field),
                "FREE_FORM_FIELDS: {message}.{field} is not supported"
            );
        }
    }
}
