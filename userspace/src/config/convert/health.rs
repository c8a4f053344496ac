//! A cluster's `health_checks` and `outlier_detection` →
//! [`model::health`](crate::model::health), with Envoy's defaults and checks.

use std::ops::Range;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::r#type::v3 as types;
use envoy_types::pb::google::protobuf as wkt;

use super::{duration, Result};
use crate::config::{index, join, ConfigError};
use crate::model::health as m;

/// Envoy's default `no_traffic_interval`.
const DEFAULT_NO_TRAFFIC_INTERVAL: Duration = Duration::from_secs(60);

/// The health checks and outlier detection of cluster `c` (found at `path`).
pub(super) fn convert(
    c: &cluster::Cluster,
    path: &str,
) -> Result<(Vec<m::HealthCheck>, Option<m::OutlierDetection>)> {
    let checks_path = join(path, "health_checks");
    if c.health_checks.len() > 1 {
        return Err(ConfigError::field(
            index(&checks_path, 1),
            "multiple health checks not supported (nor by Envoy); keep one",
        ));
    }
    let checks = c
        .health_checks
        .iter()
        .enumerate()
        .map(|(i, hc)| health_check(hc, &index(&checks_path, i)))
        .collect::<Result<Vec<_>>>()?;
    let outlier = c
        .outlier_detection
        .as_ref()
        .map(|o| outlier_detection(o, &join(path, "outlier_detection")))
        .transpose()?;
    Ok((checks, outlier))
}

/// A required, positive duration.
fn required_duration(d: Option<&wkt::Duration>, path: &str, example: &str) -> Result<Duration> {
    let Some(d) = d else {
        return Err(ConfigError::field(
            path,
            format!("missing; Envoy requires it (for example {example})"),
        ));
    };
    let d = duration(d, path)?;
    if d.is_zero() {
        return Err(ConfigError::field(path, "must be greater than 0s"));
    }
    Ok(d)
}

/// An optional duration that must be positive when given.
fn optional_duration(d: Option<&wkt::Duration>, path: &str) -> Result<Option<Duration>> {
    match d {
        None => Ok(None),
        Some(d) => {
            let d = duration(d, path)?;
            if d.is_zero() {
                return Err(ConfigError::field(
                    path,
                    "must be greater than 0s (leave it out for the default)",
                ));
            }
            Ok(Some(d))
        }
    }
}

fn health_check(hc: &core::HealthCheck, path: &str) -> Result<m::HealthCheck> {
    use core::health_check::HealthChecker;

    let timeout = required_duration(hc.timeout.as_ref(), &join(path, "timeout"), "timeout: 1s")?;
    let interval = required_duration(
        hc.interval.as_ref(),
        &join(path, "interval"),
        "interval: 5s",
    )?;
    let threshold = |value: Option<&u32>, field: &str| -> Result<u32> {
        match value {
            None => Err(ConfigError::field(
                join(path, field),
                "missing; Envoy requires it (for example 2)",
            )),
            Some(0) => Err(ConfigError::field(join(path, field), "must be at least 1")),
            Some(v) => Ok(*v),
        }
    };
    let unhealthy_threshold = threshold(
        hc.unhealthy_threshold.as_ref().map(|v| &v.value),
        "unhealthy_threshold",
    )?;
    let healthy_threshold = threshold(
        hc.healthy_threshold.as_ref().map(|v| &v.value),
        "healthy_threshold",
    )?;
    let checker = match &hc.health_checker {
        Some(HealthChecker::HttpHealthCheck(http)) => {
            m::Checker::Http(http_check(http, &join(path, "http_health_check"))?)
        }
        Some(HealthChecker::TcpHealthCheck(tcp)) => {
            m::Checker::Tcp(tcp_check(tcp, &join(path, "tcp_health_check"))?)
        }
        Some(HealthChecker::GrpcHealthCheck(grpc)) => {
            m::Checker::Grpc(grpc_check(grpc, &join(path, "grpc_health_check"))?)
        }
        // The supported-field check rejects the other checkers first.
        Some(_) => {
            return Err(ConfigError::field(
                path,
                "this health checker is not supported by keel; use http_health_check, \
                 tcp_health_check or grpc_health_check",
            ))
        }
        None => {
            return Err(ConfigError::field(
                path,
                "missing the checker; set http_health_check, tcp_health_check or \
                 grpc_health_check",
            ))
        }
    };
    Ok(m::HealthCheck {
        timeout,
        interval,
        initial_jitter: optional_duration(
            hc.initial_jitter.as_ref(),
            &join(path, "initial_jitter"),
        )?
        .unwrap_or_default(),
        interval_jitter: optional_duration(
            hc.interval_jitter.as_ref(),
            &join(path, "interval_jitter"),
        )?
        .unwrap_or_default(),
        interval_jitter_percent: hc.interval_jitter_percent,
        unhealthy_threshold,
        healthy_threshold,
        no_traffic_interval: optional_duration(
            hc.no_traffic_interval.as_ref(),
            &join(path, "no_traffic_interval"),
        )?
        .unwrap_or(DEFAULT_NO_TRAFFIC_INTERVAL),
        no_traffic_healthy_interval: optional_duration(
            hc.no_traffic_healthy_interval.as_ref(),
            &join(path, "no_traffic_healthy_interval"),
        )?,
        unhealthy_interval: optional_duration(
            hc.unhealthy_interval.as_ref(),
            &join(path, "unhealthy_interval"),
        )?,
        unhealthy_edge_interval: optional_duration(
            hc.unhealthy_edge_interval.as_ref(),
            &join(path, "unhealthy_edge_interval"),
        )?,
        healthy_edge_interval: optional_duration(
            hc.healthy_edge_interval.as_ref(),
            &join(path, "healthy_edge_interval"),
        )?,
        reuse_connection: hc.reuse_connection.as_ref().is_none_or(|v| v.value),
        checker,
    })
}

fn http_check(http: &core::health_check::HttpHealthCheck, path: &str) -> Result<m::HttpCheck> {
    use envoy_types::pb::envoy::r#type::v3::CodecClientType;

    if http.path.is_empty() {
        return Err(ConfigError::field(
            join(path, "path"),
            "missing; give the path to request, e.g. /healthz",
        ));
    }
    if !http.path.starts_with('/') || http.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(ConfigError::field(
            join(path, "path"),
            format!(
                "\"{}\" is not a valid request path (it starts with / and has no spaces)",
                http.path
            ),
        ));
    }
    let codec = match CodecClientType::try_from(http.codec_client_type) {
        Ok(CodecClientType::Http1) => m::HttpCodec::Http1,
        Ok(CodecClientType::Http2) => m::HttpCodec::Http2,
        Ok(CodecClientType::Http3) => {
            return Err(ConfigError::field(
                join(path, "codec_client_type"),
                "HTTP3 needs QUIC, which keel does not support; use HTTP1 or HTTP2",
            ))
        }
        Err(_) => {
            return Err(ConfigError::field(
                join(path, "codec_client_type"),
                format!(
                    "unknown value {}; expected HTTP1 or HTTP2",
                    http.codec_client_type
                ),
            ))
        }
    };
    let method = match core::RequestMethod::try_from(http.method) {
        Ok(core::RequestMethod::MethodUnspecified | core::RequestMethod::Get) => http::Method::GET,
        Ok(core::RequestMethod::Head) => http::Method::HEAD,
        Ok(core::RequestMethod::Post) => http::Method::POST,
        Ok(core::RequestMethod::Put) => http::Method::PUT,
        Ok(core::RequestMethod::Delete) => http::Method::DELETE,
        Ok(core::RequestMethod::Options) => http::Method::OPTIONS,
        Ok(core::RequestMethod::Trace) => http::Method::TRACE,
        Ok(core::RequestMethod::Patch) => http::Method::PATCH,
        Ok(core::RequestMethod::Connect) | Err(_) => {
            return Err(ConfigError::field(
                join(path, "method"),
                "not a method a health check can use (Envoy rejects CONNECT too); use GET, \
                 HEAD, POST, ...",
            ))
        }
    };
    let ranges = |list: &[types::Int64Range], field: &str| -> Result<Vec<Range<u16>>> {
        list.iter()
            .enumerate()
            .map(|(i, r)| status_range(r, &index(&join(path, field), i)))
            .collect()
    };
    let mut expected_statuses = ranges(&http.expected_statuses, "expected_statuses")?;
    if expected_statuses.is_empty() {
        expected_statuses.push(200..201);
    }
    let headers_path = join(path, "request_headers_to_add");
    let request_headers_to_add = http
        .request_headers_to_add
        .iter()
        .enumerate()
        .map(|(i, h)| header(h, &index(&headers_path, i)))
        .collect::<Result<Vec<_>>>()?;
    let remove_path = join(path, "request_headers_to_remove");
    let request_headers_to_remove = http
        .request_headers_to_remove
        .iter()
        .enumerate()
        .map(|(i, name)| header_name(name, &index(&remove_path, i)))
        .collect::<Result<Vec<_>>>()?;
    Ok(m::HttpCheck {
        host: (!http.host.is_empty()).then(|| http.host.clone()),
        path: http.path.clone(),
        method,
        expected_statuses,
        retriable_statuses: ranges(&http.retriable_statuses, "retriable_statuses")?,
        request_headers_to_add,
        request_headers_to_remove,
        codec,
    })
}

/// A status range of `expected_statuses` / `retriable_statuses`: within [100, 600).
fn status_range(r: &types::Int64Range, path: &str) -> Result<Range<u16>> {
    if r.start < 100 || r.end > 600 || r.start >= r.end {
        return Err(ConfigError::field(
            path,
            format!(
                "[{}, {}) is not a range of HTTP statuses; start (inclusive) and end \
                 (exclusive) lie in [100, 600) with start < end, e.g. start: 200, end: 300",
                r.start, r.end
            ),
        ));
    }
    Ok(r.start as u16..r.end as u16)
}

fn header_name(name: &str, path: &str) -> Result<http::HeaderName> {
    if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
        return Err(ConfigError::field(
            path,
            format!("\"{name}\" cannot be changed here (use the check's host field for Host)"),
        ));
    }
    http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| ConfigError::field(path, format!("\"{name}\" is not a valid header name")))
}

fn header(
    h: &core::HeaderValueOption,
    path: &str,
) -> Result<(http::HeaderName, http::HeaderValue)> {
    let header_path = join(path, "header");
    let Some(header) = &h.header else {
        return Err(ConfigError::field(
            header_path,
            "missing; give header.key and header.value",
        ));
    };
    let name = header_name(&header.key, &join(&header_path, "key"))?;
    let value = http::HeaderValue::from_str(&header.value).map_err(|_| {
        ConfigError::field(
            join(&header_path, "value"),
            "not a valid header value (no control characters)",
        )
    })?;
    Ok((name, value))
}

fn payload(p: &core::health_check::Payload, path: &str) -> Result<Vec<u8>> {
    use core::health_check::payload::Payload;
    match &p.payload {
        Some(Payload::Text(hex)) => decode_hex(hex).ok_or_else(|| {
            ConfigError::field(
                join(path, "text"),
                format!(
                    "\"{hex}\" is not hex (an even number of 0-9a-f digits, e.g. \"50494e47\")"
                ),
            )
        }),
        Some(Payload::Binary(bytes)) => Ok(bytes.clone()),
        None => Err(ConfigError::field(
            path,
            "missing; give text (hex) or binary (base64 in JSON/YAML)",
        )),
    }
}

/// Hex to bytes, as Envoy reads `Payload.text`; `None` if it is not hex.
fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let hex = hex.as_bytes();
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    hex.chunks(2)
        .map(|pair| {
            let digit = |b: u8| (b as char).to_digit(16);
            Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
        })
        .collect()
}

fn tcp_check(tcp: &core::health_check::TcpHealthCheck, path: &str) -> Result<m::TcpCheck> {
    let send = match &tcp.send {
        Some(p) => payload(p, &join(path, "send"))?,
        None => Vec::new(),
    };
    let receive_path = join(path, "receive");
    let receive = tcp
        .receive
        .iter()
        .enumerate()
        .map(|(i, p)| payload(p, &index(&receive_path, i)))
        .collect::<Result<Vec<_>>>()?;
    Ok(m::TcpCheck { send, receive })
}

fn grpc_check(grpc: &core::health_check::GrpcHealthCheck, path: &str) -> Result<m::GrpcCheck> {
    let metadata_path = join(path, "initial_metadata");
    let initial_metadata = grpc
        .initial_metadata
        .iter()
        .enumerate()
        .map(|(i, h)| header(h, &index(&metadata_path, i)))
        .collect::<Result<Vec<_>>>()?;
    Ok(m::GrpcCheck {
        service_name: grpc.service_name.clone(),
        authority: (!grpc.authority.is_empty()).then(|| grpc.authority.clone()),
        initial_metadata,
    })
}

fn outlier_detection(o: &cluster::OutlierDetection, path: &str) -> Result<m::OutlierDetection> {
    let d = m::OutlierDetection::default();
    let percent = |value: Option<&wkt::UInt32Value>, field: &str, default: u32| -> Result<u32> {
        match value {
            None => Ok(default),
            Some(v) if v.value > 100 => Err(ConfigError::field(
                join(path, field),
                format!("{} is not a percentage (0 to 100)", v.value),
            )),
            Some(v) => Ok(v.value),
        }
    };
    let count = |value: Option<&wkt::UInt32Value>, default: u32| value.map_or(default, |v| v.value);
    let positive = |value: Option<&wkt::Duration>, field: &str, default: Duration| {
        optional_duration(value, &join(path, field)).map(|d| d.unwrap_or(default))
    };
    let base_ejection_time = positive(
        o.base_ejection_time.as_ref(),
        "base_ejection_time",
        d.base_ejection_time,
    )?;
    // Envoy: when only base_ejection_time is given and it is above the default maximum,
    // the maximum follows it.
    let max_ejection_time = match o.max_ejection_time.as_ref() {
        Some(_) => positive(
            o.max_ejection_time.as_ref(),
            "max_ejection_time",
            d.max_ejection_time,
        )?,
        None => d.max_ejection_time.max(base_ejection_time),
    };
    if max_ejection_time < base_ejection_time {
        return Err(ConfigError::field(
            join(path, "max_ejection_time"),
            format!(
                "{max_ejection_time:?} is below base_ejection_time ({base_ejection_time:?}); \
                 Envoy rejects this too"
            ),
        ));
    }
    Ok(m::OutlierDetection {
        interval: positive(o.interval.as_ref(), "interval", d.interval)?,
        base_ejection_time,
        max_ejection_time,
        max_ejection_time_jitter: match o.max_ejection_time_jitter.as_ref() {
            Some(j) => duration(j, &join(path, "max_ejection_time_jitter"))?,
            None => Duration::ZERO,
        },
        max_ejection_percent: percent(
            o.max_ejection_percent.as_ref(),
            "max_ejection_percent",
            d.max_ejection_percent,
        )?,
        consecutive_5xx: count(o.consecutive_5xx.as_ref(), d.consecutive_5xx),
        enforcing_consecutive_5xx: percent(
            o.enforcing_consecutive_5xx.as_ref(),
            "enforcing_consecutive_5xx",
            d.enforcing_consecutive_5xx,
        )?,
        consecutive_gateway_failure: count(
            o.consecutive_gateway_failure.as_ref(),
            d.consecutive_gateway_failure,
        ),
        enforcing_consecutive_gateway_failure: percent(
            o.enforcing_consecutive_gateway_failure.as_ref(),
            "enforcing_consecutive_gateway_failure",
            d.enforcing_consecutive_gateway_failure,
        )?,
        split_external_local_origin_errors: o.split_external_local_origin_errors,
        consecutive_local_origin_failure: count(
            o.consecutive_local_origin_failure.as_ref(),
            d.consecutive_local_origin_failure,
        ),
        enforcing_consecutive_local_origin_failure: percent(
            o.enforcing_consecutive_local_origin_failure.as_ref(),
            "enforcing_consecutive_local_origin_failure",
            d.enforcing_consecutive_local_origin_failure,
        )?,
        enforcing_success_rate: percent(
            o.enforcing_success_rate.as_ref(),
            "enforcing_success_rate",
            d.enforcing_success_rate,
        )?,
        enforcing_local_origin_success_rate: percent(
            o.enforcing_local_origin_success_rate.as_ref(),
            "enforcing_local_origin_success_rate",
            d.enforcing_local_origin_success_rate,
        )?,
        success_rate_minimum_hosts: count(
            o.success_rate_minimum_hosts.as_ref(),
            d.success_rate_minimum_hosts,
        ),
        success_rate_request_volume: count(
            o.success_rate_request_volume.as_ref(),
            d.success_rate_request_volume,
        ),
        success_rate_stdev_factor: count(
            o.success_rate_stdev_factor.as_ref(),
            d.success_rate_stdev_factor,
        ),
        failure_percentage_threshold: percent(
            o.failure_percentage_threshold.as_ref(),
            "failure_percentage_threshold",
            d.failure_percentage_threshold,
        )?,
        enforcing_failure_percentage: percent(
            o.enforcing_failure_percentage.as_ref(),
            "enforcing_failure_percentage",
            d.enforcing_failure_percentage,
        )?,
        enforcing_failure_percentage_local_origin: percent(
            o.enforcing_failure_percentage_local_origin.as_ref(),
            "enforcing_failure_percentage_local_origin",
            d.enforcing_failure_percentage_local_origin,
        )?,
        failure_percentage_minimum_hosts: count(
            o.failure_percentage_minimum_hosts.as_ref(),
            d.failure_percentage_minimum_hosts,
        ),
        failure_percentage_request_volume: count(
            o.failure_percentage_request_volume.as_ref(),
            d.failure_percentage_request_volume,
        ),
        successful_active_health_check_uneject_host: o
            .successful_active_health_check_uneject_host
            .as_ref()
            .is_none_or(|v| v.value),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_str, Format};
    use crate::model;

    /// A bootstrap with one cluster whose extra fields are `extra` (YAML at the
    /// cluster's indentation).
    fn load(extra: &str) -> std::result::Result<model::Cluster, String> {
        let yaml = format!(
            r#"
static_resources:
  clusters:
  - name: web
    connect_timeout: 1s
    load_assignment:
      cluster_name: web
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 8080}}}}}}
{extra}"#
        );
        load_str(&yaml, Format::Yaml)
            .map(|b| b.clusters[0].clone())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn health_check_with_envoys_defaults() {
        let cluster = load(
            r#"    health_checks:
    - timeout: 1s
      interval: 5s
      unhealthy_threshold: 3
      healthy_threshold: 2
      http_health_check:
        path: /healthz
        request_headers_to_add: [{header: {key: X-Check, value: keel}}]
"#,
        )
        .unwrap();
        let check = &cluster.health_checks[0];
        assert_eq!(check.interval, Duration::from_secs(5));
        assert_eq!(check.no_traffic_interval, Duration::from_secs(60));
        assert!(check.reuse_connection);
        let m::Checker::Http(http) = &check.checker else {
            panic!("an HTTP check: {check:?}")
        };
        assert_eq!(http.expected_statuses, vec![200..201]);
        assert_eq!(http.codec, m::HttpCodec::Http1);
        assert_eq!(http.request_headers_to_add[0].0.as_str(), "x-check");
        assert_eq!(cluster.outlier_detection, None);
    }

    #[test]
    fn outlier_detection_defaults_are_envoys() {
        let cluster = load(
            "    outlier_detection: {}
",
        )
        .unwrap();
        assert_eq!(
            cluster.outlier_detection,
            Some(m::OutlierDetection::default())
        );
        let cluster = load(
            "    outlier_detection: {consecutive_5xx: 3, base_ejection_time: 400s, max_ejection_percent: 50}
",
        )
        .unwrap();
        let od = cluster.outlier_detection.unwrap();
        assert_eq!(od.consecutive_5xx, 3);
        assert_eq!(od.max_ejection_percent, 50);
        assert_eq!(
            od.max_ejection_time,
            Duration::from_secs(400),
            "follows a larger base"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let check = |fields: &str| {
            format!(
                "    health_checks:\n    - timeout: 1s\n      unhealthy_threshold: 1\n      healthy_threshold: 1\n{fields}"
            )
        };
        let cases = [
            (
                check("      tcp_health_check: {}\n"),
                "static_resources.clusters[0].health_checks[0].interval",
            ),
            (
                check("      interval: 1s\n      tcp_health_check: {send: {text: zz}}\n"),
                "static_resources.clusters[0].health_checks[0].tcp_health_check.send.text",
            ),
            (
                check("      interval: 1s\n      http_health_check: {path: /, expected_statuses: [{start: 200, end: 700}]}\n"),
                "static_resources.clusters[0].health_checks[0].http_health_check.expected_statuses[0]",
            ),
            (
                check("      interval: 1s\n      event_log_path: /tmp/hc.log\n      tcp_health_check: {}\n"),
                "static_resources.clusters[0].health_checks[0].event_log_path",
            ),
            (
                check("      interval: 1s\n      http_health_check: {}\n"),
                "static_resources.clusters[0].health_checks[0].http_health_check.path",
            ),
            (
                "    outlier_detection: {max_ejection_percent: 101}\n".to_string(),
                "static_resources.clusters[0].outlier_detection.max_ejection_percent",
            ),
            (
                "    outlier_detection: {base_ejection_time: 60s, max_ejection_time: 30s}\n".to_string(),
                "static_resources.clusters[0].outlier_detection.max_ejection_time",
            ),
        ];
        for (yaml, path) in cases {
            let error = load(&yaml).expect_err(&yaml);
            assert!(error.contains(path), "{yaml}: expected {path} in: {error}");
        }
        let two = check("      interval: 1s\n      tcp_health_check: {}\n");
        let two = format!("{two}{}", two.replacen("    health_checks:\n", "", 1));
        let error = load(&two).expect_err("two checks");
        assert!(error.contains("health_checks[1]"), "{error}");
    }

    #[test]
    fn hex_payloads_decode_like_envoy() {
        assert_eq!(decode_hex("50494e47"), Some(b"PING".to_vec()));
        assert_eq!(decode_hex("50494E47"), Some(b"PING".to_vec()));
        assert_eq!(decode_hex("5"), None);
        assert_eq!(decode_hex("zz"), None);
        assert_eq!(decode_hex(""), Some(Vec::new()));
    }
}
