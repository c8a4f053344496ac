//! `circuit_breakers` of a cluster → [`model::breakers::CircuitBreakers`], and the
//! connection-pool settings of its `HttpProtocolOptions` → [`model::pool::PoolOptions`].
//!
//! Envoy's rules: one `thresholds` entry per priority (a second entry for the same
//! priority is rejected here, Envoy would silently take the last); a threshold left
//! out keeps its default (1024, or 3 for `max_retries`); a `retry_budget` replaces
//! `max_retries` with `budget_percent` (default 20%) of the requests in flight, at
//! least `min_retry_concurrency` (default 3).

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upstream_http;

use super::{decode_any, timeout, Result};
use crate::config::{index, join, type_url_message_name, ConfigError};
use crate::model::breakers::{CircuitBreakers, RetryBudget, RoutingPriority, Thresholds};
use crate::model::pool::{PoolOptions, DEFAULT_IDLE_TIMEOUT};

/// The key (and message) of a cluster's HTTP protocol options.
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// The cluster's circuit breakers (Envoy's defaults when `circuit_breakers` is left out).
pub(super) fn circuit_breakers(c: &cluster::Cluster, path: &str) -> Result<CircuitBreakers> {
    let mut breakers = CircuitBreakers::default();
    let Some(config) = &c.circuit_breakers else {
        return Ok(breakers);
    };
    let list_path = join(&join(path, "circuit_breakers"), "thresholds");
    let mut seen = [false; 2];
    for (i, t) in config.thresholds.iter().enumerate() {
        let item = index(&list_path, i);
        let priority = match core::RoutingPriority::try_from(t.priority) {
            Ok(core::RoutingPriority::Default) => RoutingPriority::Default,
            Ok(core::RoutingPriority::High) => RoutingPriority::High,
            Err(_) => {
                return Err(ConfigError::field(
                    join(&item, "priority"),
                    format!("unknown priority {}; use DEFAULT or HIGH", t.priority),
                ))
            }
        };
        let slot = priority as usize;
        if seen[slot] {
            return Err(ConfigError::field(
                join(&item, "priority"),
                format!(
                    "a second entry for priority {}; give one thresholds entry per priority",
                    priority.stat_name().to_uppercase()
                ),
            ));
        }
        seen[slot] = true;
        let defaults = Thresholds::default();
        let retry_budget = match &t.retry_budget {
            None => None,
            Some(budget) => {
                let budget_path = join(&item, "retry_budget");
                let defaults = RetryBudget::default();
                let budget_percent = match &budget.budget_percent {
                    None => defaults.budget_percent,
                    Some(p) if (0.0..=100.0).contains(&p.value) => p.value,
                    Some(p) => {
                        return Err(ConfigError::field(
                            join(&budget_path, "budget_percent.value"),
                            format!("{} is not a percentage from 0 to 100", p.value),
                        ))
                    }
                };
                Some(RetryBudget {
                    budget_percent,
                    min_retry_concurrency: budget
                        .min_retry_concurrency
                        .as_ref()
                        .map_or(defaults.min_retry_concurrency, |v| v.value),
                })
            }
        };
        let thresholds = Thresholds {
            max_connections: t
                .max_connections
                .as_ref()
                .map_or(defaults.max_connections, |v| v.value),
            max_pending_requests: t
                .max_pending_requests
                .as_ref()
                .map_or(defaults.max_pending_requests, |v| v.value),
            max_requests: t
                .max_requests
                .as_ref()
                .map_or(defaults.max_requests, |v| v.value),
            max_retries: t
                .max_retries
                .as_ref()
                .map_or(defaults.max_retries, |v| v.value),
            retry_budget,
            track_remaining: t.track_remaining,
        };
        match priority {
            RoutingPriority::Default => breakers.default = thresholds,
            RoutingPriority::High => breakers.high = thresholds,
        }
    }
    Ok(breakers)
}

/// The connection-pool settings of the cluster's `HttpProtocolOptions` (the protocol
/// itself and the checks on the entry's key and type are `clusters::upstream_protocol`'s).
#[allow(deprecated)]
pub(super) fn pool_options(c: &cluster::Cluster, path: &str) -> Result<PoolOptions> {
    use upstream_http::http_protocol_options::{
        explicit_http_config::ProtocolConfig, UpstreamProtocolOptions,
    };

    let mut pool = PoolOptions::default();
    let streams = |h2: &core::Http2ProtocolOptions| h2.max_concurrent_streams.map(|v| v.value);
    let mut h2 = c.http2_protocol_options.as_ref().map(|h2| {
        (
            streams(h2),
            join(
                &join(path, "http2_protocol_options"),
                "max_concurrent_streams",
            ),
        )
    });
    let options_path = join(path, "typed_extension_protocol_options");
    if let Some(any) = c
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
    {
        if type_url_message_name(&any.type_url) != Some(HTTP_PROTOCOL_OPTIONS) {
            // Reported by `upstream_protocol`.
            return Ok(pool);
        }
        let entry_path = join(&options_path, HTTP_PROTOCOL_OPTIONS);
        let options: upstream_http::HttpProtocolOptions = decode_any(any, &entry_path)?;
        if let Some(common) = &options.common_http_protocol_options {
            let common_path = join(&entry_path, "common_http_protocol_options");
            for (field, set) in [
                (
                    "max_connection_duration",
                    common.max_connection_duration.is_some(),
                ),
                ("max_headers_count", common.max_headers_count.is_some()),
                ("max_stream_duration", common.max_stream_duration.is_some()),
                (
                    "headers_with_underscores_action",
                    common.headers_with_underscores_action != 0,
                ),
            ] {
                if set {
                    return Err(ConfigError::field(
                        join(&common_path, field),
                        "not supported for upstream connections yet; keel reads idle_timeout and \
                         max_requests_per_connection here",
                    ));
                }
            }
            pool.idle_timeout = timeout(
                common.idle_timeout.as_ref(),
                Some(DEFAULT_IDLE_TIMEOUT),
                &join(&common_path, "idle_timeout"),
            )?;
            pool.max_requests_per_connection = match &common.max_requests_per_connection {
                None => None,
                // Envoy reads 0 as "no limit".
                Some(v) if v.value == 0 => None,
                Some(v) => Some(v.value),
            };
        }
        let explicit_path = join(&entry_path, "explicit_http_config");
        let downstream_path = join(&entry_path, "use_downstream_protocol_config");
        match &options.upstream_protocol_options {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(explicit)) => {
                if let Some(ProtocolConfig::Http2ProtocolOptions(options)) =
                    &explicit.protocol_config
                {
                    h2 = Some((
                        streams(options),
                        join(
                            &join(&explicit_path, "http2_protocol_options"),
                            "max_concurrent_streams",
                        ),
                    ));
                }
            }
            Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(downstream)) => {
                if let Some(options) = &downstream.http2_protocol_options {
                    h2 = Some((
                        streams(options),
                        join(
                            &join(&downstream_path, "http2_protocol_options"),
                            "max_concurrent_streams",
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
    if let Some((Some(streams), streams_path)) = h2 {
        if !(1..=2_147_483_647).contains(&streams) {
            return Err(ConfigError::field(
                streams_path,
                format!("{streams} is out of range: 1 to 2147483647"),
            ));
        }
        pool.max_concurrent_streams = streams;
    }
    Ok(pool)
}
