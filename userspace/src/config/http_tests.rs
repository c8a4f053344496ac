//! Unit tests of the HTTP connection manager's conversion: a sidecar-style and an
//! API-gateway-style bootstrap convert to the expected model, Envoy's defaults apply, and
//! each kind of bad configuration is rejected with the exact path of the field.

use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::model::http::{
    AccessLog, AccessLogFilter, AccessLogFormat, AccessLogSink, AppendAction, ClusterSpecifier,
    Codec, Comparison, ComparisonOp, HeaderValueOption, HostRewrite, Http2Options,
    HttpConnectionManager, HttpFilter, HttpTimeouts, PathMatch, RetryOn, RetryPolicy, Route,
    RouteAction, ServerHeader, StringMatchKind, StringMatcher, UnderscoreAction, ValueMatch,
    DEFAULT_ACCESS_LOG_FORMAT,
};
use crate::model::{Bootstrap, NetworkFilter, UpstreamProtocol};

/// Path of the connection manager in [`with_hcm`] configs.
pub(super) const HCM: &str =
    "static_resources.listeners[0].filter_chains[0].filters[0].typed_config";

/// The clusters every test config defines: `app`, `app-v2` and `grpc` (HTTP/2).
const CLUSTERS: &str = r#"
  clusters:
  - name: app
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9001}}}
  - name: app-v2
  - name: grpc
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
"#;

/// A bootstrap with one listener whose only filter is a connection manager with the
/// settings `body` (YAML at column 0), and the clusters of [`CLUSTERS`].
pub(super) fn with_hcm(body: &str) -> String {
    let mut yaml = String::from(
        r#"
static_resources:
  listeners:
  - name: http
    address: {socket_address: {address: 127.0.0.1, port_value: 8080}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
"#,
    );
    for line in body.trim_matches('\n').lines() {
        yaml.push_str("          ");
        yaml.push_str(line);
        yaml.push('\n');
    }
    yaml.push_str(CLUSTERS);
    yaml
}

/// A connection manager with one virtual host for any domain holding `routes` (YAML
/// list items at column 0) and the router.
pub(super) fn with_routes(routes: &str) -> String {
    let mut body = String::from(
        "stat_prefix: ingress\nhttp_filters:\n- name: envoy.filters.http.router\n\
         route_config:\n  virtual_hosts:\n  - name: any\n    domains: [\"*\"]\n    routes:\n",
    );
    for line in routes.trim_matches('\n').lines() {
        body.push_str("    ");
        body.push_str(line);
        body.push('\n');
    }
    with_hcm(&body)
}

/// Path of route `i` in [`with_routes`] configs.
pub(super) fn route_path(i: usize) -> String {
    format!("{HCM}.route_config.virtual_hosts[0].routes[{i}]")
}

pub(super) fn load(yaml: &str) -> Bootstrap {
    load_str(yaml, Format::Yaml)
        .unwrap_or_else(|e| panic!("expected the config to load, got: {e}\n{yaml}"))
}

/// Loads `yaml`, expects an error, and checks it names `path` and says `what`.
pub(super) fn expect_error(yaml: &str, path: &str, what: &str) -> String {
    let error = match load_str(yaml, Format::Yaml) {
        Ok(_) => panic!("expected an error at {path}, but the config loaded\n{yaml}"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.starts_with(&format!("{path}: ")),
        "error should start with the path `{path}: `, got: {error}"
    );
    assert!(
        error.contains(what),
        "error should say `{what}`, got: {error}"
    );
    error
}

/// The connection manager of the first listener.
fn hcm_of(model: &Bootstrap) -> &HttpConnectionManager {
    match &model.listeners[0].filter_chains[0].filters[..] {
        [NetworkFilter::HttpConnectionManager(hcm)] => hcm,
        other => panic!("expected one http_connection_manager, got {other:?}"),
    }
}

pub(super) fn forward(route: &Route) -> &crate::model::http::ForwardAction {
    match &route.action {
        RouteAction::Forward(forward) => forward,
        other => panic!(
            "expected a forward action in route {:?}, got {other:?}",
            route.name
        ),
    }
}

fn header(name: &str, value: &str, action: AppendAction) -> HeaderValueOption {
    HeaderValueOption {
        name: name.into(),
        value: value.into(),
        action,
        keep_empty_value: false,
    }
}

// ---------------------------------------------------------------------------------------
// Good configurations.

/// A sidecar's inbound listener: everything left at Envoy's defaults.
const SIDECAR: &str = r#"
stat_prefix: inbound_http
route_config:
  name: local
  virtual_hosts:
  - name: local_service
    domains: ["*"]
    routes:
    - match: {prefix: "/"}
      route: {cluster: app}
http_filters:
- name: envoy.filters.http.router
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
access_log:
- name: envoy.access_loggers.stdout
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
"#;

#[test]
fn sidecar_config_converts_with_envoy_defaults() {
    let model = load(&with_hcm(SIDECAR));
    let hcm = hcm_of(&model);
    assert_eq!(hcm.stat_prefix, "inbound_http");
    assert_eq!(hcm.codec, Codec::Auto);
    assert_eq!(hcm.http_filters, vec![HttpFilter::Router]);
    assert!(!hcm.use_remote_address);
    assert_eq!(hcm.xff_num_trusted_hops, 0);
    assert!(
        hcm.generate_request_id,
        "generate_request_id defaults to true"
    );
    assert_eq!(hcm.server_name, "envoy");
    assert_eq!(hcm.server_header, ServerHeader::Overwrite);
    assert_eq!(
        hcm.timeouts,
        HttpTimeouts {
            request: None,
            stream_idle: Some(Duration::from_secs(300)),
            request_headers: None,
            connection_idle: Some(Duration::from_secs(3600)),
            max_connection_duration: None,
            max_stream_duration: None,
            drain: Duration::from_secs(5),
        }
    );
    assert_eq!(hcm.max_headers_count, 100);
    assert_eq!(hcm.max_request_headers_kb, 60);
    assert!(!hcm.normalize_path);
    assert!(!hcm.merge_slashes);
    assert_eq!(hcm.headers_with_underscores, UnderscoreAction::Allow);
    assert_eq!(
        hcm.http2,
        Http2Options {
            max_concurrent_streams: 1024,
            initial_stream_window_size: 16 * 1024 * 1024,
            initial_connection_window_size: 24 * 1024 * 1024,
        },
        "Envoy's HTTP/2 defaults since 1.36"
    );
    assert!(hcm.upgrade_types.is_empty());
    assert_eq!(
        hcm.access_logs.len(),
        1,
        "one access log: {:?}",
        hcm.access_logs
    );
    let AccessLog {
        sink,
        format,
        filter,
    } = &hcm.access_logs[0];
    assert_eq!(sink, &AccessLogSink::Stdout);
    assert_eq!(
        format,
        &AccessLogFormat::Text(DEFAULT_ACCESS_LOG_FORMAT.into())
    );
    assert_eq!(filter, &None);

    let routes = &hcm.route_config;
    assert_eq!(routes.name, "local");
    assert_eq!(routes.virtual_hosts.len(), 1);
    let host = &routes.virtual_hosts[0];
    assert_eq!(host.name, "local_service");
    assert_eq!(host.domains, vec!["*".to_string()]);
    let route = &host.routes[0];
    assert!(matches!(&route.matcher.path, PathMatch::Prefix(p) if p == "/"));
    assert!(
        route.matcher.case_sensitive,
        "case_sensitive defaults to true"
    );
    assert!(!route.matcher.grpc);
    assert_eq!(route.matcher.runtime_fraction_ppm, None);
    let forward = forward(route);
    assert!(matches!(&forward.cluster, ClusterSpecifier::Cluster(c) if c == "app"));
    assert_eq!(
        forward.timeout,
        Some(Duration::from_secs(15)),
        "route timeout default"
    );
    assert_eq!(forward.idle_timeout, None);
    assert_eq!(forward.host_rewrite, HostRewrite::None);
    assert!(forward.prefix_rewrite.is_none() && forward.regex_rewrite.is_none());
    assert!(forward.mirrors.is_empty());
    assert_eq!(forward.retry_policy, None);

    assert_eq!(
        model.cluster("app").map(|c| c.upstream_protocol),
        Some(UpstreamProtocol::Http1),
        "HTTP/1.1 upstream by default"
    );
    assert_eq!(
        model.cluster("grpc").map(|c| c.upstream_protocol),
        Some(UpstreamProtocol::Http2)
    );
}

/// An API gateway: several hosts, rewrites, a canary split, redirects, direct responses,
/// header changes, a JSON access log with a filter, and a gRPC route to an h2 cluster.
const GATEWAY: &str = r#"
stat_prefix: gateway
codec_type: HTTP1
use_remote_address: true
xff_num_trusted_hops: 1
generate_request_id: false
server_name: keel-gateway
server_header_transformation: APPEND_IF_ABSENT
normalize_path: true
merge_slashes: true
max_request_headers_kb: 96
common_http_protocol_options:
  idle_timeout: 0s
  max_connection_duration: 600s
  max_headers_count: 50
  max_stream_duration: 30s
  headers_with_underscores_action: REJECT_REQUEST
http2_protocol_options:
  max_concurrent_streams: 100
  initial_stream_window_size: 65535
  initial_connection_window_size: 1048576
http_protocol_options: {}
upgrade_configs:
- upgrade_type: WebSocket
- upgrade_type: CONNECT
  enabled: false
request_timeout: 60s
stream_idle_timeout: 0s
request_headers_timeout: 10s
drain_timeout: 2.5s
http_filters:
- name: envoy.filters.http.router
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
access_log:
- name: envoy.access_loggers.file
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
    path: /var/log/keel/access.json
    log_format:
      json_format:
        status: "%RESPONSE_CODE%"
        method: "%REQ(:METHOD)%"
        duration: "%DURATION%"
  filter:
    and_filter:
      filters:
      - status_code_filter: {comparison: {op: GE, value: {default_value: 400, runtime_key: access_log.min_status}}}
      - not_health_check_filter: {}
- name: envoy.access_loggers.stderr
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog
    log_format:
      text_format_source: {inline_string: "%REQ(:METHOD)% %RESPONSE_CODE%\n"}
  filter:
    or_filter:
      filters:
      - duration_filter: {comparison: {op: GE, value: {default_value: 1000}}}
      - status_code_filter: {comparison: {op: EQ, value: {default_value: 503}}}
route_config:
  name: gateway
  request_headers_to_add:
  - header: {key: X-Gateway, value: keel}
  response_headers_to_remove: [X-Powered-By]
  virtual_hosts:
  - name: api
    domains: [api.example.com, "API.example.com:8080", "*.api.example.com"]
    request_headers_to_remove: [x-internal-debug]
    response_headers_to_add:
    - header: {key: strict-transport-security, value: max-age=31536000}
      append_action: OVERWRITE_IF_EXISTS_OR_ADD
    routes:
    - name: grpc
      match:
        prefix: /helloworld.Greeter/
        grpc: {}
        headers:
        - name: content-type
          string_match: {prefix: Application/GRPC, ignore_case: true}
      route:
        cluster: grpc
        timeout: 0s
        idle_timeout: 0s
        retry_policy:
          retry_on: "unavailable, cancelled"
          num_retries: 3
          per_try_timeout: 2s
    - name: v1
      match:
        prefix: /v1/
        case_sensitive: false
      route:
        cluster: app
        prefix_rewrite: /
        host_rewrite_literal: app.internal
        timeout: 5s
        request_mirror_policies:
        - cluster: app-v2
          runtime_fraction: {default_value: {numerator: 5, denominator: HUNDRED}}
        - cluster: app-v2
      request_headers_to_add:
      - header: {key: x-api-version, value: "1"}
        append: false
      - header: {key: x-request-start, value: "%START_TIME%"}
        append_action: ADD_IF_ABSENT
        keep_empty_value: true
    - name: canary
      match:
        path_separated_prefix: /shop
        headers:
        - {name: x-canary, present_match: true}
        - {name: x-tier, exact_match: gold, invert_match: true}
        - {name: x-build, range_match: {start: 100, end: 200}}
        query_parameters:
        - {name: debug, present_match: true}
        - {name: lang, string_match: {exact: en}}
        runtime_fraction:
          default_value: {numerator: 25, denominator: TEN_THOUSAND}
          runtime_key: routing.canary
      route:
        weighted_clusters:
          clusters:
          - {name: app, weight: 90}
          - {name: app-v2, weight: 10}
          total_weight: 100
        auto_host_rewrite: true
        regex_rewrite:
          pattern: {google_re2: {}, regex: "^/shop/([^/]+)/(.*)$"}
          substitution: /\2/item/\1
    - name: users
      match:
        safe_regex: {google_re2: {}, regex: "/users/[0-9]+"}
      route:
        cluster_header: X-Target-Cluster
    - name: health
      match: {path: /healthz}
      direct_response:
        status: 200
        body: {inline_string: ok}
    - name: gone
      match: {prefix: /old/}
      direct_response: {status: 410}
  - name: www
    domains: [www.example.com, "example.*"]
    routes:
    - name: to-https
      match: {prefix: /}
      redirect:
        https_redirect: true
        host_redirect: secure.example.com
        port_redirect: 8443
        prefix_rewrite: /new/
        response_code: PERMANENT_REDIRECT
        strip_query: true
  - name: fallback
    domains: ["*"]
    routes:
    - match: {prefix: /}
      redirect: {path_redirect: /maintenance.html}
"#;

#[test]
fn gateway_config_converts_to_the_model() {
    let model = load(&with_hcm(GATEWAY));
    let hcm = hcm_of(&model);

    // The connection manager.
    assert_eq!(hcm.stat_prefix, "gateway");
    assert_eq!(hcm.codec, Codec::Http1);
    assert!(hcm.use_remote_address);
    assert_eq!(hcm.xff_num_trusted_hops, 1);
    assert!(!hcm.generate_request_id);
    assert_eq!(hcm.server_name, "keel-gateway");
    assert_eq!(hcm.server_header, ServerHeader::AppendIfAbsent);
    assert!(hcm.normalize_path && hcm.merge_slashes);
    assert_eq!(hcm.max_request_headers_kb, 96);
    assert_eq!(hcm.max_headers_count, 50);
    assert_eq!(
        hcm.headers_with_underscores,
        UnderscoreAction::RejectRequest
    );
    assert_eq!(
        hcm.timeouts,
        HttpTimeouts {
            request: Some(Duration::from_secs(60)),
            stream_idle: None,
            request_headers: Some(Duration::from_secs(10)),
            connection_idle: None,
            max_connection_duration: Some(Duration::from_secs(600)),
            max_stream_duration: Some(Duration::from_secs(30)),
            drain: Duration::from_millis(2500),
        }
    );
    assert_eq!(
        hcm.http2,
        Http2Options {
            max_concurrent_streams: 100,
            initial_stream_window_size: 65535,
            initial_connection_window_size: 1048576,
        }
    );
    assert_eq!(
        hcm.upgrade_types,
        vec!["websocket".to_string()],
        "lower-cased; the disabled CONNECT upgrade is left out"
    );

    // Access logs.
    assert_eq!(hcm.access_logs.len(), 2);
    assert_eq!(
        hcm.access_logs[0].sink,
        AccessLogSink::File(PathBuf::from("/var/log/keel/access.json"))
    );
    assert_eq!(
        hcm.access_logs[0].format,
        AccessLogFormat::Json(vec![
            ("duration".into(), "%DURATION%".into()),
            ("method".into(), "%REQ(:METHOD)%".into()),
            ("status".into(), "%RESPONSE_CODE%".into()),
        ])
    );
    assert_eq!(
        hcm.access_logs[0].filter,
        Some(AccessLogFilter::And(vec![
            AccessLogFilter::StatusCode(Comparison {
                op: ComparisonOp::Ge,
                value: 400
            }),
            AccessLogFilter::NotHealthCheck,
        ]))
    );
    assert_eq!(hcm.access_logs[1].sink, AccessLogSink::Stderr);
    assert_eq!(
        hcm.access_logs[1].format,
        AccessLogFormat::Text("%REQ(:METHOD)% %RESPONSE_CODE%\n".into())
    );
    assert_eq!(
        hcm.access_logs[1].filter,
        Some(AccessLogFilter::Or(vec![
            AccessLogFilter::Duration(Comparison {
                op: ComparisonOp::Ge,
                value: 1000
            }),
            AccessLogFilter::StatusCode(Comparison {
                op: ComparisonOp::Eq,
                value: 503
            }),
        ]))
    );

    // Route table level.
    let table = &hcm.route_config;
    assert_eq!(table.name, "gateway");
    assert_eq!(
        table.headers.request_add,
        vec![header(
            "x-gateway",
            "keel",
            AppendAction::AppendIfExistsOrAdd
        )]
    );
    assert_eq!(
        table.headers.response_remove,
        vec!["x-powered-by".to_string()]
    );
    assert_eq!(table.virtual_hosts.len(), 3);

    // Virtual host "api".
    let api = &table.virtual_hosts[0];
    assert_eq!(
        api.domains,
        vec![
            "api.example.com".to_string(),
            "api.example.com:8080".to_string(),
            "*.api.example.com".to_string()
        ],
        "domains are lower-cased"
    );
    assert_eq!(
        api.headers.request_remove,
        vec!["x-internal-debug".to_string()]
    );
    assert_eq!(
        api.headers.response_add,
        vec![header(
            "strict-transport-security",
            "max-age=31536000",
            AppendAction::OverwriteIfExistsOrAdd
        )]
    );
    let names: Vec<&str> = api.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["grpc", "v1", "canary", "users", "health", "gone"]);

    // gRPC route to the h2 cluster.
    let grpc = &api.routes[0];
    assert!(grpc.matcher.grpc);
    assert_eq!(grpc.matcher.headers.len(), 1);
    let content_type = &grpc.matcher.headers[0];
    assert_eq!(content_type.name, "content-type");
    assert!(
        matches!(&content_type.rule, ValueMatch::String(m) if *m == StringMatcher {
            kind: StringMatchKind::Prefix,
            value: "application/grpc".into(),
            ignore_case: true,
        }),
        "ignore_case lower-cases the literal: {:?}",
        content_type.rule
    );
    let grpc_forward = forward(grpc);
    assert!(matches!(&grpc_forward.cluster, ClusterSpecifier::Cluster(c) if c == "grpc"));
    assert_eq!(
        model.cluster("grpc").map(|c| c.upstream_protocol),
        Some(UpstreamProtocol::Http2)
    );
    assert_eq!(grpc_forward.timeout, None, "timeout 0s disables it");
    assert_eq!(
        grpc_forward.idle_timeout,
        Some(Duration::ZERO),
        "idle_timeout 0s is kept: it disables the stream idle timeout too"
    );
    assert_eq!(
        grpc_forward.retry_policy,
        Some(RetryPolicy {
            retry_on: vec!["unavailable".into(), "cancelled".into()],
            num_retries: 3,
            per_try_timeout: Some(Duration::from_secs(2)),
            retriable_status_codes: vec![],
            conditions: RetryOn(RetryOn::GRPC_UNAVAILABLE | RetryOn::GRPC_CANCELLED),
            ..RetryPolicy::default()
        })
    );

    // Prefix rewrite, host rewrite, mirrors, header changes with `append` and actions.
    let v1 = &api.routes[1];
    assert!(!v1.matcher.case_sensitive);
    let v1_forward = forward(v1);
    assert_eq!(v1_forward.prefix_rewrite.as_deref(), Some("/"));
    assert_eq!(
        v1_forward.host_rewrite,
        HostRewrite::Literal("app.internal".into())
    );
    assert_eq!(v1_forward.timeout, Some(Duration::from_secs(5)));
    assert_eq!(
        v1_forward.mirrors,
        vec![("app-v2".into(), 50_000), ("app-v2".into(), 1_000_000)],
        "5% is 50000 ppm; no runtime_fraction mirrors everything"
    );
    assert_eq!(
        v1.headers.request_add,
        vec![
            header("x-api-version", "1", AppendAction::OverwriteIfExistsOrAdd),
            HeaderValueOption {
                keep_empty_value: true,
                ..header("x-request-start", "%START_TIME%", AppendAction::AddIfAbsent)
            },
        ],
        "append: false overwrites, as in Envoy"
    );

    // Canary: weighted clusters, matchers, runtime fraction, regex rewrite.
    let canary = &api.routes[2];
    assert!(matches!(&canary.matcher.path, PathMatch::SeparatedPrefix(p) if p == "/shop"));
    assert_eq!(canary.matcher.runtime_fraction_ppm, Some(2_500));
    let rules: Vec<String> = canary
        .matcher
        .headers
        .iter()
        .map(|h| format!("{} {:?} invert={}", h.name, h.rule, h.invert))
        .collect();
    assert_eq!(
        rules,
        [
            "x-canary Present invert=false",
            "x-tier String(StringMatcher { kind: Exact, value: \"gold\", ignore_case: false }) invert=true",
            "x-build Range { start: 100, end: 200 } invert=false",
        ]
    );
    let params: Vec<String> = canary
        .matcher
        .query_parameters
        .iter()
        .map(|q| format!("{} {:?}", q.name, q.rule))
        .collect();
    assert_eq!(
        params,
        [
            "debug Present",
            "lang String(StringMatcher { kind: Exact, value: \"en\", ignore_case: false })",
        ]
    );
    let canary_forward = forward(canary);
    assert!(
        matches!(&canary_forward.cluster, ClusterSpecifier::Weighted(w)
            if *w == vec![("app".to_string(), 90), ("app-v2".to_string(), 10)]),
        "{:?}",
        canary_forward.cluster
    );
    assert_eq!(canary_forward.host_rewrite, HostRewrite::Auto);
    let (pattern, substitution) = canary_forward
        .regex_rewrite
        .as_ref()
        .unwrap_or_else(|| panic!("the canary route has a regex_rewrite"));
    assert_eq!(
        substitution, "/\\2/item/\\1",
        "the substitution stays in RE2 syntax"
    );
    assert!(pattern.is_match("/shop/42/details"));

    // A regex path matches the whole path only.
    let users = &api.routes[3];
    let PathMatch::Regex(regex) = &users.matcher.path else {
        panic!("expected a regex path, got {:?}", users.matcher.path)
    };
    assert!(regex.is_match("/users/42"));
    assert!(!regex.is_match("/users/42/x"), "anchored at the end");
    assert!(!regex.is_match("/v1/users/42"), "anchored at the start");
    assert!(
        matches!(&forward(users).cluster, ClusterSpecifier::Header(h) if h == "x-target-cluster")
    );

    // Direct responses.
    match &api.routes[4].action {
        RouteAction::DirectResponse { status, body } => {
            assert_eq!(*status, 200);
            assert_eq!(body.as_deref(), Some(&b"ok"[..]));
        }
        other => panic!("expected a direct response, got {other:?}"),
    }
    assert!(matches!(
        &api.routes[5].action,
        RouteAction::DirectResponse {
            status: 410,
            body: None
        }
    ));

    // Redirects.
    let www = &table.virtual_hosts[1];
    assert_eq!(www.domains, ["www.example.com", "example.*"]);
    let RouteAction::Redirect(redirect) = &www.routes[0].action else {
        panic!("expected a redirect, got {:?}", www.routes[0].action)
    };
    assert_eq!(redirect.scheme.as_deref(), Some("https"));
    assert_eq!(redirect.host.as_deref(), Some("secure.example.com"));
    assert_eq!(redirect.port, Some(8443));
    assert_eq!(redirect.path, None);
    assert_eq!(redirect.prefix_rewrite.as_deref(), Some("/new/"));
    assert_eq!(redirect.status, 308);
    assert!(redirect.strip_query);
    let RouteAction::Redirect(fallback) = &table.virtual_hosts[2].routes[0].action else {
        panic!("expected a redirect")
    };
    assert_eq!(fallback.status, 301, "MOVED_PERMANENTLY by default");
    assert_eq!(fallback.path.as_deref(), Some("/maintenance.html"));
    assert_eq!(fallback.scheme, None);
    assert!(!fallback.strip_query);
}

#[test]
fn hash_policies_convert_in_order() {
    let model = load(&with_routes(
        "- match: {prefix: /}
  route:
    cluster: app
    hash_policy:
    - header: {header_name: X-User}
      terminal: true
    - cookie: {name: session, ttl: 60s, path: /}
    - connection_properties: {source_ip: true}",
    ));
    let route = &hcm_of(&model).route_config.virtual_hosts[0].routes[0];
    let policies = &forward(route).hash_policy;
    assert_eq!(
        policies,
        &vec![
            crate::model::http::HashPolicy {
                source: crate::model::http::HashSource::Header(http::HeaderName::from_static(
                    "x-user"
                )),
                terminal: true,
            },
            crate::model::http::HashPolicy {
                source: crate::model::http::HashSource::Cookie {
                    name: "session".into(),
                    ttl: Some(Duration::from_secs(60)),
                    path: Some("/".into()),
                },
                terminal: false,
            },
            crate::model::http::HashPolicy {
                source: crate::model::http::HashSource::SourceIp,
                terminal: false,
            },
        ]
    );
}

#[test]
fn deprecated_forms_are_read_like_envoy() {
    let yaml = with_hcm(
        r#"
stat_prefix: s
codec_type: HTTP2
http_filters: [{name: envoy.filters.http.router}]
access_log:
- typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
    path: /dev/stdout
    format: "%RESPONSE_CODE%"
- typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
    path: /dev/stderr
    json_format: {code: "%RESPONSE_CODE%"}
- typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
    path: /tmp/default.log
- typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
    log_format: {text_format: "custom without newline"}
route_config:
  virtual_hosts:
  - name: h
    domains: [a.example.com]
    routes:
    - match:
        prefix: /
        headers:
        - {name: x-a, prefix_match: pre}
        - {name: x-b, suffix_match: suf}
        - {name: x-c, contains_match: mid}
        - {name: x-d, safe_regex_match: {regex: "v[0-9]"}}
        - {name: x-e, present_match: false}
        - {name: ":method", string_match: {exact: GET}}
        - {name: x-f, treat_missing_header_as_empty: true, string_match: {safe_regex: {regex: "a*"}}}
      route:
        cluster: app
        retry_policy: {retry_on: 5xx, retriable_status_codes: [503, 504]}
"#,
    );
    let model = load(&yaml);
    let hcm = hcm_of(&model);
    assert_eq!(hcm.codec, Codec::Http2);
    let formats: Vec<&AccessLogFormat> = hcm.access_logs.iter().map(|l| &l.format).collect();
    assert_eq!(
        formats,
        [
            &AccessLogFormat::Text("%RESPONSE_CODE%".into()),
            &AccessLogFormat::Json(vec![("code".into(), "%RESPONSE_CODE%".into())]),
            &AccessLogFormat::Text(DEFAULT_ACCESS_LOG_FORMAT.into()),
            &AccessLogFormat::Text("custom without newline".into()),
        ],
        "a custom text format is used as written, with no newline added"
    );
    let route = &hcm.route_config.virtual_hosts[0].routes[0];
    let rules: Vec<String> = route
        .matcher
        .headers
        .iter()
        .map(|h| match &h.rule {
            ValueMatch::Regex(r) => format!("{} regex {}", h.name, r.as_str()),
            rule => format!("{} {rule:?}", h.name),
        })
        .collect();
    assert_eq!(
        rules,
        [
            "x-a String(StringMatcher { kind: Prefix, value: \"pre\", ignore_case: false })",
            "x-b String(StringMatcher { kind: Suffix, value: \"suf\", ignore_case: false })",
            "x-c String(StringMatcher { kind: Contains, value: \"mid\", ignore_case: false })",
            "x-d regex ^(?:v[0-9])$",
            "x-e Absent",
            ":method String(StringMatcher { kind: Exact, value: \"GET\", ignore_case: false })",
            "x-f regex ^(?:a*)$",
        ]
    );
    assert!(route.matcher.headers[6].treat_missing_as_empty);
    assert_eq!(
        forward(route).retry_policy,
        Some(RetryPolicy {
            retry_on: vec!["5xx".into()],
            num_retries: 1,
            per_try_timeout: None,
            retriable_status_codes: vec![503, 504],
            conditions: RetryOn(RetryOn::FIVE_XX),
            ..RetryPolicy::default()
        }),
        "num_retries defaults to 1"
    );
}

#[test]
fn cluster_upstream_protocols() {
    let yaml = with_routes("- {match: {prefix: /}, route: {cluster: app}}").replace(
        "  - name: app-v2\n",
        r#"  - name: app-v2
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        use_downstream_protocol_config: {}
  - name: legacy-h2
    http2_protocol_options: {}
  - name: explicit-h1
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http_protocol_options: {}}
"#,
    );
    let model = load(&yaml);
    let protocols: Vec<(&str, UpstreamProtocol)> = model
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.upstream_protocol))
        .collect();
    assert_eq!(
        protocols,
        [
            ("app", UpstreamProtocol::Http1),
            ("app-v2", UpstreamProtocol::UseDownstream),
            ("legacy-h2", UpstreamProtocol::Http2),
            ("explicit-h1", UpstreamProtocol::Http1),
            ("grpc", UpstreamProtocol::Http2),
        ]
    );
}

#[test]
fn config_dump_is_the_bootstrap_as_proto3_json() {
    let model = load(&with_hcm(SIDECAR));
    let dump = &model.config_dump;
    let hcm =
        &dump["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    assert_eq!(
        hcm["@type"],
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "Any is written with its @type: {dump:#}"
    );
    assert_eq!(
        hcm["stat_prefix"], "inbound_http",
        "proto field names: {hcm:#}"
    );
    assert_eq!(hcm["route_config"]["virtual_hosts"][0]["domains"][0], "*");
    assert_eq!(
        dump["static_resources"]["clusters"][2]["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"],
        serde_json::json!({"http2_protocol_options": {}})
    );
    assert!(
        hcm.get("codec_type").is_none(),
        "default values are left out, as in Envoy's dump: {hcm:#}"
    );
}

#[test]
fn a_listener_may_serve_http_and_another_tcp() {
    let yaml = with_hcm(SIDECAR).replace(
        "  clusters:\n",
        r#"  - name: tcp
    address: {socket_address: {address: 127.0.0.1, port_value: 9000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: app
  clusters:
"#,
    );
    let model = load(&yaml);
    assert!(matches!(
        model.listeners[0].filter_chains[0].filters[..],
        [NetworkFilter::HttpConnectionManager(_)]
    ));
    assert!(matches!(
        model.listeners[1].filter_chains[0].filters[..],
        [NetworkFilter::TcpProxy(_)]
    ));
}

// ---------------------------------------------------------------------------------------
// Rejections the task names, each with its exact path.

#[test]
fn unknown_http_filter_is_rejected_naming_its_type() {
    let yaml = with_hcm(
        r#"
stat_prefix: s
http_filters:
- name: envoy.filters.http.cors
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors
- name: envoy.filters.http.router
route_config: {}
"#,
    );
    let error = expect_error(
        &yaml,
        &format!("{HCM}.http_filters[0].typed_config"),
        "\"type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors\"",
    );
    assert!(
        error.contains("keel supports one HTTP filter, envoy.filters.http.router"),
        "{error}"
    );

    // Without typed_config, the filter is named by its name.
    let yaml = with_hcm(
        "stat_prefix: s\nhttp_filters: [{name: envoy.filters.http.cors}, {name: envoy.filters.http.router}]\nroute_config: {}",
    );
    expect_error(
        &yaml,
        &format!("{HCM}.http_filters[0].name"),
        "HTTP filter \"envoy.filters.http.cors\" is not supported by keel",
    );

    // A message keel knows, used as an HTTP filter.
    let yaml = with_hcm(
        r#"
stat_prefix: s
http_filters:
- name: tcp
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
    stat_prefix: t
route_config: {}
"#,
    );
    expect_error(
        &yaml,
        &format!("{HCM}.http_filters[0].typed_config"),
        "is not an HTTP filter keel supports",
    );
}

#[test]
fn rds_is_rejected() {
    let yaml = with_hcm(
        r#"
stat_prefix: s
http_filters: [{name: envoy.filters.http.router}]
rds:
  route_config_name: local
  config_source: {ads: {}}
"#,
    );
    expect_error(
        &yaml,
        &format!("{HCM}.rds"),
        "RDS comes with xDS, not supported yet",
    );
}

#[test]
fn bad_regex_in_safe_regex_is_rejected() {
    let error = expect_error(
        &with_routes(
            r#"- match: {safe_regex: {google_re2: {}, regex: "/users/(["}}
  route: {cluster: app}"#,
        ),
        &format!("{}.match.safe_regex.regex", route_path(0)),
        "\"/users/([\" is not a valid regular expression",
    );
    assert!(
        !error.contains("^(?:"),
        "the error shows the pattern as written: {error}"
    );
}

#[test]
fn duplicate_domain_across_virtual_hosts_is_rejected() {
    let yaml = with_hcm(
        r#"
stat_prefix: s
http_filters: [{name: envoy.filters.http.router}]
route_config:
  virtual_hosts:
  - name: a
    domains: [a.example.com, shared.example.com]
  - name: b
    domains: [Shared.Example.com]
"#,
    );
    expect_error(
        &yaml,
        &format!("{HCM}.route_config.virtual_hosts[1].domains[0]"),
        &format!(
            "duplicate domain \"shared.example.com\" (first at {HCM}.route_config.virtual_hosts[0].domains[1])"
        ),
    );
}

#[test]
fn route_with_no_action_is_rejected() {
    expect_error(
        &with_routes("- match: {prefix: /}"),
        &route_path(0),
        "the route has no action; set one of route, redirect or direct_response",
    );
}

#[test]
fn direct_response_status_99_is_rejected() {
    expect_error(
        &with_routes("- match: {prefix: /}\n  direct_response: {status: 99}"),
        &format!("{}.direct_response.status", route_path(0)),
        "99 is not a status Envoy sends as a direct response; give 200 to 599",
    );
}

#[test]
fn adding_a_pseudo_header_is_rejected() {
    expect_error(
        &with_routes(
            r#"- match: {prefix: /}
  route: {cluster: app}
  request_headers_to_add:
  - header: {key: ":path", value: /other}"#,
        ),
        &format!("{}.request_headers_to_add[0].header.key", route_path(0)),
        "\":path\": pseudo-headers (names starting with \":\") cannot be added",
    );
}

#[test]
fn unknown_access_logger_type_is_rejected() {
    let yaml = with_hcm(
        r#"
stat_prefix: s
http_filters: [{name: envoy.filters.http.router}]
route_config: {}
access_log:
- name: grpc
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig
"#,
    );
    let error = expect_error(
        &yaml,
        &format!("{HCM}.access_log[0].typed_config"),
        "\"type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig\"",
    );
    assert!(
        error.contains("the access loggers keel supports are envoy.access_loggers.file"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------
// More rejections.

#[test]
fn connection_manager_rejections() {
    let router = "http_filters: [{name: envoy.filters.http.router}]";
    let cases: &[(&str, &str, &str)] = &[
        (
            "route_config: {}\nhttp_filters: [{name: envoy.filters.http.router}]",
            "stat_prefix",
            "missing",
        ),
        (
            "stat_prefix: s\nhttp_filters: [{name: envoy.filters.http.router}]",
            "route_config",
            "missing; give the routes inline",
        ),
        ("stat_prefix: s\nroute_config: {}", "http_filters", "missing"),
        (
            "stat_prefix: s\nroute_config: {}\nhttp_filters: [{name: envoy.filters.http.router}, {name: envoy.filters.http.router}]",
            "http_filters[0]",
            "must be the last filter",
        ),
        (
            "stat_prefix: s\nroute_config: {}\ncodec_type: HTTP3\nHTTP_FILTERS",
            "codec_type",
            "HTTP3 needs QUIC",
        ),
        (
            "stat_prefix: s\nroute_config: {}\nmax_request_headers_kb: 8193\nHTTP_FILTERS",
            "max_request_headers_kb",
            "8193 is out of range; give 1 to 8192",
        ),
        (
            "stat_prefix: s\nroute_config: {}\nhttp2_protocol_options: {initial_stream_window_size: 65534}\nHTTP_FILTERS",
            "http2_protocol_options.initial_stream_window_size",
            "give 65535 to 2147483647",
        ),
        (
            "stat_prefix: s\nroute_config: {}\nhttp2_protocol_options: {max_concurrent_streams: 0}\nHTTP_FILTERS",
            "http2_protocol_options.max_concurrent_streams",
            "give 1 to 2147483647",
        ),
        (
            "stat_prefix: s\nroute_config: {}\ncommon_http_protocol_options: {max_headers_count: 0}\nHTTP_FILTERS",
            "common_http_protocol_options.max_headers_count",
            "out of range",
        ),
        (
            "stat_prefix: s\nroute_config: {}\nupgrade_configs: [{upgrade_type: websocket}, {upgrade_type: WEBSOCKET}]\nHTTP_FILTERS",
            "upgrade_configs[1].upgrade_type",
            "duplicate upgrade type \"websocket\"",
        ),
        (
            "stat_prefix: s\nroute_config: {}\nhttp_protocol_options: {enable_trailers: true}\nHTTP_FILTERS",
            "http_protocol_options.enable_trailers",
            "field not supported by keel",
        ),
        (
            "stat_prefix: s\nroute_config: {}\ntracing: {}\nHTTP_FILTERS",
            "tracing",
            "field not supported by keel",
        ),
        (
            "stat_prefix: s\nroute_config: {}\nstrip_matching_host_port: true\nstrip_any_host_port: true\nHTTP_FILTERS",
            "strip_any_host_port",
            "set only one of strip_matching_host_port and strip_any_host_port",
        ),
        (
            "stat_prefix: s\nroute_config: {}\nvia: \"a\\nb\"\nHTTP_FILTERS",
            "via",
            "cannot hold NUL, CR or LF",
        ),
        (
            "stat_prefix: s\nroute_config: {}\ninternal_address_config: {cidr_ranges: [{address_prefix: 10.0.0.0, prefix_len: 33}]}\nHTTP_FILTERS",
            "internal_address_config.cidr_ranges[0].prefix_len",
            "longer than the address",
        ),
        (
            "stat_prefix: s\nroute_config: {}\ninternal_address_config: {unix_sockets: true}\nHTTP_FILTERS",
            "internal_address_config.unix_sockets",
            "TCP only",
        ),
        (
            "stat_prefix: s\nroute_config: {}\nhttp_protocol_options: {default_host_for_http_10: a.example}\nHTTP_FILTERS",
            "http_protocol_options.default_host_for_http_10",
            "accept_http_10 is not set",
        ),
        (
            "stat_prefix: s\nroute_config: {}\npath_with_escaped_slashes_action: 9\nHTTP_FILTERS",
            "path_with_escaped_slashes_action",
            "unknown value 9",
        ),
        (
            "stat_prefix: s\nroute_config: {}\nlocal_reply_config: {mappers: [{status_code: 410}]}\nHTTP_FILTERS",
            "local_reply_config.mappers[0].filter",
            "missing",
        ),
        (
            "stat_prefix: s\nroute_config: {}\nlocal_reply_config: {mappers: [{filter: {not_health_check_filter: {}}, status_code: 100}]}\nHTTP_FILTERS",
            "local_reply_config.mappers[0].status_code",
            "give 200 to 599",
        ),
        (
            "stat_prefix: s\nroute_config: {}\nlocal_reply_config: {mappers: [{filter: {header_filter: {header: {name: \":path\"}}}}]}\nHTTP_FILTERS",
            "local_reply_config.mappers[0].filter.header_filter.header.name",
            "reads regular request headers",
        ),
        (
            "stat_prefix: s\nroute_config: {}\nlocal_reply_config: {mappers: [{filter: {response_flag_filter: {}}}]}\nHTTP_FILTERS",
            "local_reply_config.mappers[0].filter.response_flag_filter",
            "field not supported by keel",
        ),
        (
            "stat_prefix: s\nroute_config: {}\nlocal_reply_config: {body_format: {text_format: \"%NOPE%\"}}\nHTTP_FILTERS",
            "local_reply_config.body_format",
            "unknown operator NOPE",
        ),
        (
            "stat_prefix: s\nroute_config: {}\nHTTP_FILTERS\naccess_log: [{typed_config: {\"@type\": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog}, filter: {status_code_filter: {comparison: {op: NE, value: {default_value: 200}}}}}]",
            "access_log[0].filter.status_code_filter.comparison.op",
            "NE is not supported by keel yet",
        ),
        (
            "stat_prefix: s\nroute_config: {}\nHTTP_FILTERS\naccess_log: [{typed_config: {\"@type\": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog, log_format: {json_format: {a: {b: \"%PROTOCOL%\"}}}}}]",
            "access_log[0].typed_config.log_format.json_format.a",
            "nested objects",
        ),
        (
            "stat_prefix: s\nroute_config: {}\nHTTP_FILTERS\naccess_log: [{typed_config: {\"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog}}]",
            "access_log[0].typed_config.path",
            "missing",
        ),
        (
            "stat_prefix: s\nroute_config: {}\nHTTP_FILTERS\naccess_log: [{typed_config: {\"@type\": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog}, filter: {and_filter: {filters: [{not_health_check_filter: {}}]}}}]",
            "access_log[0].filter.and_filter.filters",
            "Envoy requires at least 2",
        ),
    ];
    for (body, field, what) in cases {
        let yaml = with_hcm(&body.replace("HTTP_FILTERS", router));
        expect_error(&yaml, &format!("{HCM}.{field}"), what);
    }
}

#[test]
fn route_table_rejections() {
    let vhost_cases: &[(&str, &str, &str)] = &[
        (
            "- {name: a, domains: [\"*\"]}\n- {name: b, domains: [\"*\"]}",
            "virtual_hosts[1].domains[0]",
            "a second \"*\"",
        ),
        (
            "- {name: a, domains: [\"foo.*.com\"]}",
            "virtual_hosts[0].domains[0]",
            "a wildcard may only start",
        ),
        (
            "- {name: a, domains: [\"*foo*\"]}",
            "virtual_hosts[0].domains[0]",
            "a wildcard may only start",
        ),
        (
            "- {name: a, domains: []}",
            "virtual_hosts[0].domains",
            "missing",
        ),
        ("- {domains: [a]}", "virtual_hosts[0].name", "missing"),
        (
            "- {name: a, domains: [a], request_headers_to_remove: [Host]}",
            "virtual_hosts[0].request_headers_to_remove[0]",
            "\"Host\" cannot be removed",
        ),
    ];
    for (hosts, field, what) in vhost_cases {
        let mut body =
            String::from("stat_prefix: s\nhttp_filters: [{name: envoy.filters.http.router}]\nroute_config:\n  virtual_hosts:\n");
        for line in hosts.lines() {
            body.push_str("  ");
            body.push_str(line);
            body.push('\n');
        }
        expect_error(
            &with_hcm(&body),
            &format!("{HCM}.route_config.{field}"),
            what,
        );
    }

    let route_cases: &[(&str, &str, &str)] = &[
        (
            "- {match: {prefix: /}, route: {cluster: app}, decorator: {propagate: true}}",
            "decorator.operation",
            "missing",
        ),
        (
            "- {match: {prefix: /}, route: {cluster: app, host_rewrite_header: \"bad header\"}}",
            "route.host_rewrite_header",
            "",
        ),
        (
            "- {match: {prefix: /}, route: {cluster: app, host_rewrite_path_regex: {pattern: {regex: \"^/(.*)$\"}, substitution: \"\\\\2\"}}}",
            "route.host_rewrite_path_regex.substitution",
            "names no capture group",
        ),
        (
            "- {match: {prefix: /}, route: {cluster: app, cluster_not_found_response_code: 7}}",
            "route.cluster_not_found_response_code",
            "unknown value 7",
        ),
        ("- route: {cluster: app}", "match", "missing"),
        ("- {match: {}, route: {cluster: app}}", "match", "missing the path to match"),
        (
            "- {match: {path_separated_prefix: /api/}, route: {cluster: app}}",
            "match.path_separated_prefix",
            "must not end in /",
        ),
        (
            "- {match: {path_separated_prefix: \"/api?x\"}, route: {cluster: app}}",
            "match.path_separated_prefix",
            "must not contain ? or #",
        ),
        (
            "- {match: {prefix: /}, route: {cluster: nope}}",
            "route.cluster",
            "unknown cluster \"nope\"",
        ),
        (
            "- {match: {prefix: /}, route: {weighted_clusters: {clusters: [{name: app, weight: 1}, {name: gone, weight: 1}]}}}",
            "route.weighted_clusters.clusters[1].name",
            "unknown cluster \"gone\"",
        ),
        (
            "- {match: {prefix: /}, route: {weighted_clusters: {clusters: [{name: app}, {name: app-v2, weight: 0}]}}}",
            "route.weighted_clusters.clusters",
            "the weights add up to 0",
        ),
        (
            "- {match: {prefix: /}, route: {weighted_clusters: {total_weight: 10, clusters: [{name: app, weight: 90}, {name: app-v2, weight: 10}]}}}",
            "route.weighted_clusters.total_weight",
            "is 10 but the weights add up to 100",
        ),
        (
            "- {match: {prefix: /}, route: {cluster: app, request_mirror_policies: [{cluster: shadow}]}}",
            "route.request_mirror_policies[0].cluster",
            "unknown cluster \"shadow\"",
        ),
        (
            "- {match: {prefix: /}, route: {cluster: app, prefix_rewrite: /x, regex_rewrite: {pattern: {regex: a}, substitution: b}}}",
            "route.regex_rewrite",
            "give only one of prefix_rewrite and regex_rewrite",
        ),
        (
            "- {match: {prefix: /}, route: {cluster: app, regex_rewrite: {pattern: {regex: \"(a)\"}, substitution: \"\\\\2\"}}}",
            "route.regex_rewrite.substitution",
            "\\2 names no capture group: the pattern has 1",
        ),
        (
            "- {match: {prefix: /}, route: {cluster: app, retry_policy: {retry_on: \"5xx,timeout\"}}}",
            "route.retry_policy.retry_on",
            "unknown retry condition \"timeout\"",
        ),
        (
            "- {match: {prefix: /}, route: {cluster_header: \"bad header\"}}",
            "route.cluster_header",
            "is not a valid header name",
        ),
        (
            "- {match: {prefix: /, headers: [{name: x, safe_regex_match: {regex: \"(\"}}]}, route: {cluster: app}}",
            "match.headers[0].safe_regex_match.regex",
            "is not a valid regular expression",
        ),
        (
            "- {match: {prefix: /, headers: [{name: x, string_match: {prefix: \"\"}}]}, route: {cluster: app}}",
            "match.headers[0].string_match.prefix",
            "must not be empty",
        ),
        (
            "- {match: {prefix: /, headers: [{name: x, range_match: {start: 5, end: 5}}]}, route: {cluster: app}}",
            "match.headers[0].range_match",
            "is empty",
        ),
        (
            "- {match: {prefix: /, query_parameters: [{string_match: {exact: a}}]}, route: {cluster: app}}",
            "match.query_parameters[0].name",
            "missing",
        ),
        (
            "- {match: {prefix: /}, redirect: {port_redirect: 70000}}",
            "redirect.port_redirect",
            "70000 is not a port",
        ),
        (
            "- {match: {prefix: /}, direct_response: {status: 600}}",
            "direct_response.status",
            "give 200 to 599",
        ),
        (
            "- {match: {prefix: /}, direct_response: {status: 200, body: {filename: /etc/motd}}}",
            "direct_response.body.filename",
            "field not supported by keel",
        ),
        (
            "- {match: {prefix: /}, route: {cluster: app}, response_headers_to_add: [{header: {key: x, value: y}, append: true, append_action: ADD_IF_ABSENT}]}",
            "response_headers_to_add[0].append",
            "append (deprecated) and append_action are both set",
        ),
        (
            "- {match: {prefix: /}, route: {cluster: app}, request_headers_to_remove: [\":authority\"]}",
            "request_headers_to_remove[0]",
            "cannot be removed",
        ),
        (
            "- {match: {prefix: /}, route: {cluster: app, hash_policy: [{query_parameter: {name: x}}]}}",
            "route.hash_policy[0].query_parameter",
            "field not supported by keel",
        ),
    ];
    for (routes, field, what) in route_cases {
        expect_error(
            &with_routes(routes),
            &format!("{}.{field}", route_path(0)),
            what,
        );
    }

    // A body over Envoy's 4 KiB limit.
    let big = "x".repeat(4097);
    expect_error(
        &with_routes(&format!(
            "- {{match: {{prefix: /}}, direct_response: {{status: 200, body: {{inline_string: {big}}}}}}}"
        )),
        &format!("{}.direct_response.body", route_path(0)),
        "the body is 4097 bytes",
    );
}

#[test]
fn cluster_protocol_option_rejections() {
    let options = |inner: &str, key: &str| {
        with_routes("- {match: {prefix: /}, route: {cluster: app}}").replace(
            "  - name: app-v2\n",
            &format!(
                "  - name: app-v2\n    typed_extension_protocol_options:\n      {key}:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n{inner}"
            ),
        )
    };
    let key = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
    let cluster = "static_resources.clusters[1]";
    expect_error(
        &options(
            "        explicit_http_config: {http2_protocol_options: {initial_stream_window_size: 65535}}\n",
            key,
        ),
        &format!("{cluster}.typed_extension_protocol_options.{key}.explicit_http_config.http2_protocol_options.initial_stream_window_size"),
        "not supported yet",
    );
    expect_error(
        &options(
            "        explicit_http_config: {http_protocol_options: {}}\n",
            "http",
        ),
        &format!("{cluster}.typed_extension_protocol_options.http"),
        "keel reads only the key envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    );
    expect_error(
        &options("        auto_config: {}\n", key),
        &format!("{cluster}.typed_extension_protocol_options.{key}.auto_config"),
        "field not supported by keel",
    );
    expect_error(
        &options("", key),
        &format!("{cluster}.typed_extension_protocol_options.{key}"),
        "missing the protocol",
    );
    let both = options(
        "        explicit_http_config: {http2_protocol_options: {}}\n",
        key,
    )
    .replace(
        "  - name: app-v2\n",
        "  - name: app-v2\n    http2_protocol_options: {}\n",
    );
    expect_error(
        &both,
        &format!("{cluster}.http2_protocol_options"),
        "the protocol is given twice",
    );
}

#[test]
fn unknown_network_filter_lists_the_supported_ones() {
    let yaml = with_hcm("stat_prefix: s").replace(
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy",
    );
    let error = expect_error(&yaml, HCM, "RedisProxy");
    assert!(
        error.contains("envoy.filters.network.http_connection_manager"),
        "{error}"
    );
}

#[test]
fn route_upgrades_and_stream_durations() {
    let model = load(&with_routes(
        r#"
- match: {prefix: "/ws/"}
  route:
    cluster: app
    upgrade_configs:
    - {upgrade_type: WebSocket}
    - {upgrade_type: custom, enabled: false}
- match: {prefix: "/grpc/"}
  route:
    cluster: grpc
    timeout: 2s
    max_stream_duration:
      max_stream_duration: 30s
      grpc_timeout_header_max: 10s
      grpc_timeout_header_offset: 0.1s
- match: {prefix: "/"}
  route: {cluster: app, timeout: 2s}
"#,
    ));
    let routes = &hcm_of(&model).route_config.virtual_hosts[0].routes;
    let ws = forward(&routes[0]);
    assert_eq!(
        ws.upgrades,
        vec![
            ("websocket".to_string(), true),
            ("custom".to_string(), false)
        ]
    );
    let grpc = forward(&routes[1]);
    assert_eq!(
        grpc.timeout, None,
        "max_stream_duration replaces the route timeout"
    );
    assert_eq!(
        grpc.max_stream_duration,
        Some(crate::model::http::RouteStreamDuration {
            max_stream_duration: Some(Duration::from_secs(30)),
            grpc_timeout_header_max: Some(Duration::from_secs(10)),
            grpc_timeout_header_offset: Some(Duration::from_millis(100)),
        })
    );
    let plain = forward(&routes[2]);
    assert_eq!(plain.timeout, Some(Duration::from_secs(2)));
    assert!(plain.upgrades.is_empty() && plain.max_stream_duration.is_none());

    expect_error(
        &with_routes(
            "- match: {prefix: \"/\"}\n  route:\n    cluster: app\n    upgrade_configs:\n    - {upgrade_type: websocket}\n    - {upgrade_type: WEBSOCKET}",
        ),
        &format!("{}.route.upgrade_configs[1].upgrade_type", route_path(0)),
        "duplicate upgrade type",
    );
    expect_error(
        &with_routes(
            "- match: {prefix: \"/\"}\n  route:\n    cluster: app\n    upgrade_configs:\n    - {upgrade_type: CONNECT, connect_config: {}}",
        ),
        &format!("{}.route.upgrade_configs[0].connect_config", route_path(0)),
        "not supported",
    );
}

/// The connection-manager options of `HcmOptions` and the route-table options convert
/// to the model; Envoy's defaults apply when they are not set.
#[test]
fn connection_manager_and_route_table_options() {
    let yaml = format!(
        "node: {{id: node-1, cluster: mesh-a}}\n{}",
        with_hcm(
            r#"
stat_prefix: options
use_remote_address: true
skip_xff_append: true
via: "1.1 keel"
always_set_request_id_in_response: true
preserve_external_request_id: true
add_user_agent: true
strip_matching_host_port: true
internal_address_config: {cidr_ranges: [{address_prefix: 10.1.2.3, prefix_len: 8}]}
http_protocol_options: {accept_http_10: true, default_host_for_http_10: old.example}
path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD
delayed_close_timeout: 2s
stream_error_on_invalid_http_message: true
local_reply_config:
  mappers:
  - filter: {status_code_filter: {comparison: {op: GE, value: {default_value: 500}}}}
    status_code: 502
    body: {inline_string: oops}
    body_format_override: {json_format: {m: "%LOCAL_REPLY_BODY%"}}
    headers_to_add: [{header: {key: x-m, value: "1"}}]
  body_format: {text_format: "%LOCAL_REPLY_BODY%", content_type: "text/html"}
http_filters: [{name: envoy.filters.http.router}]
route_config:
  validate_clusters: false
  ignore_port_in_host_matching: true
  most_specific_header_mutations_wins: true
  internal_only_headers: [X-Secret]
  max_direct_response_body_size_bytes: 10
  virtual_hosts:
  - name: any
    domains: ["*"]
    require_tls: EXTERNAL_ONLY
    virtual_clusters:
    - name: api
      headers: [{name: ":path", string_match: {prefix: /api}}]
    typed_per_filter_config: {}
    routes:
    - match: {prefix: /ghost}
      name: ghost
      decorator: {operation: ghost-op}
      metadata: {filter_metadata: {team: {owner: mesh}}}
      route: {cluster: no-such-cluster, cluster_not_found_response_code: INTERNAL_SERVER_ERROR}
    - match: {prefix: /h}
      route: {cluster: app, host_rewrite_header: X-Host}
    - match: {prefix: /p}
      route: {cluster: app, host_rewrite_path_regex: {pattern: {regex: "^/p/(\\w+)"}, substitution: "\\1.svc"}}
    - match: {prefix: /}
      direct_response: {status: 200, body: {inline_string: "ten bytes!"}}
"#
        )
    );
    let model = load(&yaml);
    let hcm = hcm_of(&model);
    let o = &hcm.options;
    assert!(o.skip_xff_append && o.always_set_request_id_in_response);
    assert!(o.preserve_external_request_id && o.accept_http_10);
    assert!(o.stream_error_on_invalid_http_message);
    assert_eq!(o.via.as_ref().unwrap(), "1.1 keel");
    assert_eq!(o.strip_port, crate::model::http::StripPort::Matching);
    assert_eq!(
        o.internal_addresses,
        vec![crate::model::listener::CidrRange::new(
            "10.0.0.0".parse().unwrap(),
            8
        )]
    );
    assert_eq!(
        o.user_agent,
        Some(crate::model::Node {
            id: "node-1".into(),
            cluster: "mesh-a".into()
        }),
        "add_user_agent takes the node's identity"
    );
    assert_eq!(o.default_host_for_http_10.as_ref().unwrap(), "old.example");
    assert_eq!(
        o.escaped_slashes,
        crate::model::http::EscapedSlashesAction::UnescapeAndForward
    );
    let local_reply = o.local_reply.as_ref().expect("local_reply_config");
    assert_eq!(local_reply.mappers.len(), 1);
    let mapper = &local_reply.mappers[0];
    assert_eq!(mapper.status, Some(502));
    assert_eq!(mapper.body.as_deref(), Some("oops"));
    assert_eq!(mapper.headers_to_add[0].name, "x-m");
    assert_eq!(
        mapper.body_format.as_ref().unwrap().content_type,
        "application/json"
    );
    let body_format = local_reply.body_format.as_ref().unwrap();
    assert_eq!(body_format.content_type, "text/html");
    assert_eq!(
        body_format.format,
        AccessLogFormat::Text("%LOCAL_REPLY_BODY%".into())
    );

    let routes = &hcm.route_config;
    assert!(routes.options.ignore_port_in_host_matching);
    assert!(routes.options.most_specific_header_mutations_wins);
    assert_eq!(routes.options.internal_only_headers, vec!["x-secret"]);
    let vhost = &routes.virtual_hosts[0];
    assert_eq!(
        vhost.options.require_tls,
        crate::model::http::RequireTls::ExternalOnly
    );
    assert_eq!(vhost.options.virtual_clusters[0].name, "api");
    let ghost = &vhost.routes[0];
    assert_eq!(ghost.decorator.as_deref(), Some("ghost-op"));
    assert_eq!(
        ghost.metadata.as_ref().unwrap()["team"]["owner"],
        serde_json::json!("mesh")
    );
    assert_eq!(forward(ghost).cluster_not_found_status, 500);
    assert_eq!(
        forward(&vhost.routes[1]).host_rewrite,
        HostRewrite::Header(http::HeaderName::from_static("x-host"))
    );
    match &forward(&vhost.routes[2]).host_rewrite {
        HostRewrite::PathRegex(re, substitution) => {
            assert_eq!(
                re.replace_all("/p/orders", substitution.as_str()),
                "orders.svc"
            );
        }
        other => panic!("expected a path regex host rewrite, got {other:?}"),
    }

    // Defaults: none of it.
    let model = load(&with_routes(
        "- {match: {prefix: /}, route: {cluster: app}}",
    ));
    let hcm = hcm_of(&model);
    assert!(hcm.options.via.is_none() && hcm.options.local_reply.is_none());
    assert!(!hcm.options.accept_http_10 && hcm.options.user_agent.is_none());
    assert_eq!(hcm.options.strip_port, crate::model::http::StripPort::None);
    assert_eq!(
        forward(&hcm.route_config.virtual_hosts[0].routes[0]).cluster_not_found_status,
        503
    );
}

/// Route-table and virtual-host options that Envoy rejects, with the field's path.
#[test]
fn route_table_option_rejections() {
    let table = |route_config: &str| {
        with_hcm(&format!(
            "stat_prefix: s\nhttp_filters: [{{name: envoy.filters.http.router}}]\nroute_config:\n{}",
            route_config
                .trim_matches('\n')
                .lines()
                .map(|l| format!("  {l}\n"))
                .collect::<String>()
        ))
    };
    let rc = format!("{HCM}.route_config");
    expect_error(
        &table("virtual_hosts:\n- {name: a, domains: [\"*\"], routes: [{match: {prefix: /}, route: {cluster: nope}}]}"),
        &format!("{rc}.virtual_hosts[0].routes[0].route.cluster"),
        "",
    );
    expect_error(
        &table("max_direct_response_body_size_bytes: 4\nvirtual_hosts:\n- {name: a, domains: [\"*\"], routes: [{match: {prefix: /}, direct_response: {status: 200, body: {inline_string: hello}}}]}"),
        &format!("{rc}.virtual_hosts[0].routes[0].direct_response.body"),
        "the limit for a direct response body is 4 bytes",
    );
    expect_error(
        &table("internal_only_headers: [\"bad header\"]\nvirtual_hosts: []"),
        &format!("{rc}.internal_only_headers[0]"),
        "",
    );
    expect_error(
        &table("virtual_hosts:\n- {name: a, domains: [\"*\"], virtual_clusters: [{name: v}]}"),
        &format!("{rc}.virtual_hosts[0].virtual_clusters[0].headers"),
        "at least one header matcher",
    );
    expect_error(
        &table("virtual_hosts:\n- {name: a, domains: [\"*\"], virtual_clusters: [{headers: [{name: x, present_match: true}]}]}"),
        &format!("{rc}.virtual_hosts[0].virtual_clusters[0].name"),
        "missing",
    );
    expect_error(
        &table("virtual_hosts:\n- {name: a, domains: [\"*\"], virtual_clusters: [{name: v, headers: [{name: x, present_match: true}]}, {name: v, headers: [{name: x, present_match: true}]}]}"),
        &format!("{rc}.virtual_hosts[0].virtual_clusters[1].name"),
        "duplicate virtual cluster",
    );
    expect_error(
        &table("virtual_hosts:\n- {name: a, domains: [\"*\"], typed_per_filter_config: {envoy.filters.http.router: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}"),
        &format!("{rc}.virtual_hosts[0].typed_per_filter_config"),
        "field not supported by keel",
    );
}
