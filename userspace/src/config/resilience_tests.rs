//! Conversion tests for retries, circuit breakers and connection-pool options:
//! Envoy's defaults, the virtual host's defaults for its routes, and errors that name
//! the field.

use std::time::Duration;

use super::http_tests::{expect_error, forward, load, route_path, with_hcm, with_routes, HCM};
use crate::model::breakers::{RetryBudget, RoutingPriority, Thresholds};
use crate::model::http::{RetryBackOff, RetryOn, RouteAction};
use crate::model::pool::PoolOptions;

#[test]
fn retry_policies_with_back_off_predicates_and_virtual_host_defaults() {
    let yaml = with_hcm(
        r#"
stat_prefix: ingress
http_filters:
- name: envoy.filters.http.router
route_config:
  virtual_hosts:
  - name: any
    domains: ["*"]
    include_request_attempt_count: true
    include_attempt_count_in_response: true
    per_request_buffer_limit_bytes: 4194304
    retry_policy: {retry_on: "gateway-error", num_retries: 4}
    routes:
    - match: {prefix: /own}
      per_request_buffer_limit_bytes: 2048
      route:
        cluster: app
        priority: HIGH
        retry_policy:
          retry_on: "5xx,reset,retriable-headers,unavailable"
          num_retries: 2
          per_try_timeout: 0.25s
          retry_back_off: {base_interval: 0.1s}
          retry_host_predicate:
          - name: envoy.retry_host_predicates.previous_hosts
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate
          host_selection_retry_max_attempts: 3
          retriable_headers:
          - name: x-retry-me
            present_match: true
    - match: {prefix: /}
      route: {cluster: app}
"#,
    );
    let bootstrap = load(&yaml);
    let crate::model::NetworkFilter::HttpConnectionManager(hcm) =
        &bootstrap.listeners[0].filter_chains[0].filters[0]
    else {
        panic!("expected a connection manager");
    };
    let routes = &hcm.route_config.virtual_hosts[0].routes;
    let own = forward(&routes[0]);
    let policy = own.retry_policy.as_ref().expect("the route's policy");
    assert_eq!(
        policy.conditions,
        RetryOn(
            RetryOn::FIVE_XX
                | RetryOn::RESET
                | RetryOn::RETRIABLE_HEADERS
                | RetryOn::GRPC_UNAVAILABLE
        )
    );
    assert_eq!(policy.num_retries, 2);
    assert_eq!(policy.per_try_timeout, Some(Duration::from_millis(250)));
    assert_eq!(
        policy.back_off,
        RetryBackOff {
            base_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(1),
        },
        "max_interval defaults to 10 times base_interval"
    );
    assert!(policy.previous_hosts);
    assert_eq!(policy.host_selection_retry_max_attempts, 3);
    assert_eq!(policy.retriable_headers.len(), 1);
    assert_eq!(own.options.priority, RoutingPriority::High);
    assert_eq!(own.options.buffer_limit, Some(2048));
    assert!(own.options.include_request_attempt_count);
    assert!(own.options.include_attempt_count_in_response);

    let inherited = forward(&routes[1]);
    let policy = inherited
        .retry_policy
        .as_ref()
        .expect("the virtual host's policy");
    assert_eq!(policy.conditions, RetryOn(RetryOn::GATEWAY_ERROR));
    assert_eq!(policy.num_retries, 4);
    assert_eq!(policy.back_off, RetryBackOff::default());
    assert_eq!(policy.host_selection_retry_max_attempts, 1);
    assert_eq!(
        inherited.options.buffer_limit,
        Some(1 << 20),
        "per_request_buffer_limit_bytes is capped by the listener's 1 MiB"
    );
    assert_eq!(inherited.options.priority, RoutingPriority::Default);
    assert!(matches!(routes[1].action, RouteAction::Forward(_)));
}

#[test]
fn retry_policy_errors_name_the_field() {
    expect_error(
        &with_routes(
            "- {match: {prefix: /}, route: {cluster: app, retry_policy: {retry_on: 5xx, retry_back_off: {base_interval: 1s, max_interval: 0.5s}}}}",
        ),
        &format!("{}.route.retry_policy.retry_back_off.max_interval", route_path(0)),
        "less than base_interval",
    );
    expect_error(
        &with_routes(
            "- {match: {prefix: /}, route: {cluster: app, retry_policy: {retry_on: 5xx, retry_back_off: {max_interval: 0.5s}}}}",
        ),
        &format!("{}.route.retry_policy.retry_back_off.base_interval", route_path(0)),
        "missing",
    );
    expect_error(
        &with_routes(
            "- {match: {prefix: /}, route: {cluster: app, retry_policy: {retry_on: 5xx, retry_host_predicate: [{name: envoy.retry_host_predicates.omit_canary_hosts}]}}}",
        ),
        &format!("{}.route.retry_policy.retry_host_predicate[0].name", route_path(0)),
        "previous_hosts",
    );
    expect_error(
        &with_routes(
            "- {match: {prefix: /}, route: {cluster: app, retry_policy: {retry_on: 5xx, retry_priority: {name: x}}}}",
        ),
        &format!("{}.route.retry_policy.retry_priority", route_path(0)),
        "not supported",
    );
}

/// The test clusters with `extra` (YAML at column 4) added to `app`.
fn with_app_settings(extra: &str) -> String {
    let mut settings = String::new();
    for line in extra.trim_matches('\n').lines() {
        settings.push_str("    ");
        settings.push_str(line);
        settings.push('\n');
    }
    with_routes("- {match: {prefix: /}, route: {cluster: app}}").replacen(
        "  - name: app\n",
        &format!("  - name: app\n{settings}"),
        1,
    )
}

#[test]
fn circuit_breakers_by_priority_with_envoys_defaults() {
    let bootstrap = load(&with_app_settings(
        r#"
circuit_breakers:
  thresholds:
  - {max_connections: 10, max_requests: 20, track_remaining: true}
  - priority: HIGH
    max_pending_requests: 5
    retry_budget: {budget_percent: {value: 50}}
"#,
    ));
    let breakers = &bootstrap.cluster("app").unwrap().circuit_breakers;
    assert_eq!(
        breakers.default,
        Thresholds {
            max_connections: 10,
            max_requests: 20,
            track_remaining: true,
            ..Thresholds::default()
        }
    );
    assert_eq!(breakers.high.max_pending_requests, 5);
    assert_eq!(breakers.high.max_requests, 1024);
    assert_eq!(breakers.high.max_retries, 3);
    assert_eq!(
        breakers.high.retry_budget,
        Some(RetryBudget {
            budget_percent: 50.0,
            min_retry_concurrency: 3,
        })
    );
    let defaults = &bootstrap.cluster("app-v2").unwrap().circuit_breakers;
    assert_eq!(defaults.default, Thresholds::default());

    expect_error(
        &with_app_settings(
            "circuit_breakers: {thresholds: [{max_requests: 1}, {priority: DEFAULT, max_requests: 2}]}",
        ),
        "static_resources.clusters[0].circuit_breakers.thresholds[1].priority",
        "a second entry for priority DEFAULT",
    );
    expect_error(
        &with_app_settings(
            "circuit_breakers: {thresholds: [{retry_budget: {budget_percent: {value: 150}}}]}",
        ),
        "static_resources.clusters[0].circuit_breakers.thresholds[0].retry_budget.budget_percent.value",
        "not a percentage",
    );
    expect_error(
        &with_app_settings("circuit_breakers: {thresholds: [{max_connection_pools: 1}]}"),
        "static_resources.clusters[0].circuit_breakers.thresholds[0].max_connection_pools",
        "not supported",
    );
}

#[test]
fn pool_options_from_http_protocol_options() {
    let key = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
    let bootstrap = load(&with_app_settings(&format!(
        r#"
typed_extension_protocol_options:
  {key}:
    "@type": type.googleapis.com/{key}
    common_http_protocol_options: {{idle_timeout: 30s, max_requests_per_connection: 100}}
    explicit_http_config:
      http2_protocol_options: {{max_concurrent_streams: 7}}
"#
    )));
    assert_eq!(
        bootstrap.cluster("app").unwrap().pool,
        PoolOptions {
            max_requests_per_connection: Some(100),
            idle_timeout: Some(Duration::from_secs(30)),
            max_concurrent_streams: 7,
        }
    );
    assert_eq!(
        bootstrap.cluster("app-v2").unwrap().pool,
        PoolOptions::default()
    );

    let common = |inner: &str| {
        with_app_settings(&format!(
            "typed_extension_protocol_options:\n  {key}:\n    \"@type\": type.googleapis.com/{key}\n    common_http_protocol_options: {inner}\n    explicit_http_config: {{http_protocol_options: {{}}}}\n"
        ))
    };
    let no_idle = load(&common("{idle_timeout: 0s}"));
    assert_eq!(
        no_idle.cluster("app").unwrap().pool.idle_timeout,
        None,
        "0s disables it"
    );
    expect_error(
        &common("{max_stream_duration: 5s}"),
        &format!(
            "static_resources.clusters[0].typed_extension_protocol_options.{key}.common_http_protocol_options.max_stream_duration"
        ),
        "not supported for upstream connections",
    );
    // The same message on the connection manager: keel does not limit downstream
    // connections by requests yet.
    expect_error(
        &with_hcm(
            "stat_prefix: s\nroute_config: {}\ncommon_http_protocol_options: {max_requests_per_connection: 5}\nhttp_filters: [{name: envoy.filters.http.router}]",
        ),
        &format!("{HCM}.common_http_protocol_options.max_requests_per_connection"),
        "not supported for downstream connections",
    );
}
