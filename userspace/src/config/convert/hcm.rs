//! `envoy.filters.network.http_connection_manager` → [`model::http::HttpConnectionManager`]:
//! the manager's own settings, timeouts and protocol options, its HTTP filter chain and
//! upgrade types. The route table is converted by `route`, access logs by `access_log`.
//!
//! Defaults are Envoy's (1.36 and later): `server_name` "envoy", `generate_request_id`
//! true, `stream_idle_timeout` 5 minutes, `drain_timeout` 5 s, connection
//! `idle_timeout` 1 hour, `max_headers_count` 100, `max_request_headers_kb` 60, and for
//! HTTP/2 1024 concurrent streams, a 16 MiB stream window and a 24 MiB connection window.
//!
//! The less common settings go to [`m::HcmOptions`] (all off by default); Envoy's checks
//! apply: `strip_matching_host_port` and `strip_any_host_port` exclude each other,
//! `default_host_for_http_10` needs `accept_http_10`, `via` is a valid header value.
//! `add_user_agent` takes the node's identity, which `convert::bootstrap` fills in;
//! `local_reply_config` is converted by `local_reply`.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::filters::http::router::v3 as router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::google::protobuf as wkt;
use prost::Name as _;

use super::{access_log, duration, route, timeout, Result};
use crate::config::{index, join, type_url_message_name, ConfigError};
use crate::model::{self, http as m};

/// `stream_idle_timeout` when not set.
const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// `drain_timeout` when not set.
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// `common_http_protocol_options.idle_timeout` when not set.
const DEFAULT_CONNECTION_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// `common_http_protocol_options.max_headers_count` when not set.
const DEFAULT_MAX_HEADERS_COUNT: u32 = 100;
/// `max_request_headers_kb`: default and largest value.
const DEFAULT_MAX_REQUEST_HEADERS_KB: u32 = 60;
const MAX_REQUEST_HEADERS_KB: u32 = 8192;
/// `server_name` when not set.
const DEFAULT_SERVER_NAME: &str = "envoy";
/// HTTP/2 defaults (Envoy 1.36 and later) and limits.
const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 1024;
const DEFAULT_H2_STREAM_WINDOW: u32 = 16 * 1024 * 1024;
const DEFAULT_H2_CONNECTION_WINDOW: u32 = 24 * 1024 * 1024;
const H2_MAX: u32 = 2_147_483_647;
const H2_MIN_WINDOW: u32 = 65_535;
/// The name of the router filter.
const ROUTER: &str = "envoy.filters.http.router";

/// Converts an HTTP connection manager found at `path` (the filter's `typed_config`).
pub(super) fn http_connection_manager(
    config: &hcm::HttpConnectionManager,
    path: &str,
    clusters: &[model::Cluster],
) -> Result<m::HttpConnectionManager> {
    use hcm::http_connection_manager::RouteSpecifier;

    if config.stat_prefix.is_empty() {
        return Err(ConfigError::field(
            join(path, "stat_prefix"),
            "missing; the HTTP connection manager needs a stat_prefix (its statistics are \
             http.<stat_prefix>.*)",
        ));
    }
    let route_config = match &config.route_specifier {
        Some(RouteSpecifier::RouteConfig(routes)) => {
            route::route_config(routes, &join(path, "route_config"), clusters)?
        }
        // The supported-field check names these first; kept for completeness.
        Some(RouteSpecifier::Rds(_)) => {
            return Err(ConfigError::field(
                join(path, "rds"),
                "RDS comes with xDS, not supported yet; give the routes inline in route_config",
            ))
        }
        Some(RouteSpecifier::ScopedRoutes(_)) => {
            return Err(ConfigError::field(
                join(path, "scoped_routes"),
                "scoped routes come with xDS, not supported yet; give the routes inline in \
                 route_config",
            ))
        }
        None => {
            return Err(ConfigError::field(
                join(path, "route_config"),
                "missing; give the routes inline in route_config (RDS comes with xDS, not \
                 supported yet)",
            ))
        }
    };
    let server_name = if config.server_name.is_empty() {
        DEFAULT_SERVER_NAME.to_string()
    } else {
        header_value(&config.server_name, &join(path, "server_name"))?;
        config.server_name.clone()
    };

    let common_path = join(path, "common_http_protocol_options");
    let common = config.common_http_protocol_options.as_ref();
    if common.is_some_and(|c| c.max_requests_per_connection.is_some()) {
        // The field is supported on clusters (upstream connections); the table of
        // supported fields cannot tell the two places apart.
        return Err(ConfigError::field(
            join(&common_path, "max_requests_per_connection"),
            "not supported for downstream connections yet (keel supports it on a cluster's \
             HttpProtocolOptions)",
        ));
    }
    let timeouts = m::HttpTimeouts {
        request: timeout(
            config.request_timeout.as_ref(),
            None,
            &join(path, "request_timeout"),
        )?,
        stream_idle: timeout(
            config.stream_idle_timeout.as_ref(),
            Some(DEFAULT_STREAM_IDLE_TIMEOUT),
            &join(path, "stream_idle_timeout"),
        )?,
        request_headers: timeout(
            config.request_headers_timeout.as_ref(),
            None,
            &join(path, "request_headers_timeout"),
        )?,
        connection_idle: timeout(
            common.and_then(|c| c.idle_timeout.as_ref()),
            Some(DEFAULT_CONNECTION_IDLE_TIMEOUT),
            &join(&common_path, "idle_timeout"),
        )?,
        max_connection_duration: timeout(
            common.and_then(|c| c.max_connection_duration.as_ref()),
            None,
            &join(&common_path, "max_connection_duration"),
        )?,
        max_stream_duration: timeout(
            common.and_then(|c| c.max_stream_duration.as_ref()),
            None,
            &join(&common_path, "max_stream_duration"),
        )?,
        drain: match &config.drain_timeout {
            None => DEFAULT_DRAIN_TIMEOUT,
            Some(d) => duration(d, &join(path, "drain_timeout"))?,
        },
    };
    let max_headers_count = ranged(
        common.and_then(|c| c.max_headers_count.as_ref()),
        DEFAULT_MAX_HEADERS_COUNT,
        1,
        u32::MAX,
        &join(&common_path, "max_headers_count"),
    )?;
    let headers_with_underscores = match common {
        None => m::UnderscoreAction::Allow,
        Some(c) => underscore_action(
            c.headers_with_underscores_action,
            &join(&common_path, "headers_with_underscores_action"),
        )?,
    };
    let max_request_headers_kb = ranged(
        config.max_request_headers_kb.as_ref(),
        DEFAULT_MAX_REQUEST_HEADERS_KB,
        1,
        MAX_REQUEST_HEADERS_KB,
        &join(path, "max_request_headers_kb"),
    )?;

    Ok(m::HttpConnectionManager {
        stat_prefix: config.stat_prefix.clone(),
        codec: codec(config.codec_type, &join(path, "codec_type"))?,
        route_config,
        http_filters: http_filters(&config.http_filters, &join(path, "http_filters"))?,
        access_logs: access_log::access_logs(&config.access_log, &join(path, "access_log"))?,
        use_remote_address: config.use_remote_address.as_ref().is_some_and(|b| b.value),
        xff_num_trusted_hops: config.xff_num_trusted_hops,
        generate_request_id: config.generate_request_id.as_ref().is_none_or(|b| b.value),
        server_name,
        server_header: server_header(
            config.server_header_transformation,
            &join(path, "server_header_transformation"),
        )?,
        timeouts,
        max_headers_count,
        max_request_headers_kb,
        normalize_path: config.normalize_path.as_ref().is_some_and(|b| b.value),
        merge_slashes: config.merge_slashes,
        headers_with_underscores,
        http2: http2_options(
            config.http2_protocol_options.as_ref(),
            &join(path, "http2_protocol_options"),
        )?,
        upgrade_types: upgrade_types(&config.upgrade_configs, &join(path, "upgrade_configs"))?,
        options: hcm_options(config, path)?,
    })
}

/// The settings of [`m::HcmOptions`].
fn hcm_options(config: &hcm::HttpConnectionManager, path: &str) -> Result<m::HcmOptions> {
    use hcm::http_connection_manager::StripPortMode;

    let via = if config.via.is_empty() {
        None
    } else {
        let via_path = join(path, "via");
        header_value(&config.via, &via_path)?;
        Some(
            http::HeaderValue::from_str(&config.via)
                .map_err(|_| ConfigError::field(via_path, "not a valid header value"))?,
        )
    };
    let strip_any = matches!(
        config.strip_port_mode,
        Some(StripPortMode::StripAnyHostPort(true))
    );
    let strip_port =
        match (config.strip_matching_host_port, strip_any) {
            (true, true) => return Err(ConfigError::field(
                join(path, "strip_any_host_port"),
                "strip_matching_host_port is set too; set only one of strip_matching_host_port \
                 and strip_any_host_port (Envoy rejects both)",
            )),
            (true, false) => m::StripPort::Matching,
            (false, true) => m::StripPort::Any,
            (false, false) => m::StripPort::None,
        };
    let internal_addresses = match &config.internal_address_config {
        None => Vec::new(),
        Some(internal) => {
            let internal_path = join(path, "internal_address_config");
            if internal.unix_sockets {
                return Err(ConfigError::field(
                    join(&internal_path, "unix_sockets"),
                    "keel listens on TCP only, so no peer is a unix socket; remove it",
                ));
            }
            super::cidr_ranges(&internal.cidr_ranges, &join(&internal_path, "cidr_ranges"))?
        }
    };
    let http1 = config.http_protocol_options.as_ref();
    let http1_path = join(path, "http_protocol_options");
    let default_host_for_http_10 = match http1 {
        Some(o) if !o.default_host_for_http_10.is_empty() => {
            let host_path = join(&http1_path, "default_host_for_http_10");
            header_value(&o.default_host_for_http_10, &host_path)?;
            if !o.accept_http_10 {
                return Err(ConfigError::field(
                    host_path,
                    "accept_http_10 is not set, so no HTTP/1.0 request is served; set \
                 accept_http_10: true or remove default_host_for_http_10",
                ));
            }
            Some(
                http::HeaderValue::from_str(&o.default_host_for_http_10)
                    .map_err(|_| ConfigError::field(host_path, "not a valid header value"))?,
            )
        }
        _ => None,
    };
    if let Some(d) = &config.delayed_close_timeout {
        // Accepted and validated only: see `http` (Envoy's delayed close waits for the
        // peer's FIN after a reply that closes the connection; keel flushes and closes).
        duration(d, &join(path, "delayed_close_timeout"))?;
    }
    Ok(m::HcmOptions {
        skip_xff_append: config.skip_xff_append,
        via,
        always_set_request_id_in_response: config.always_set_request_id_in_response,
        preserve_external_request_id: config.preserve_external_request_id,
        strip_port,
        internal_addresses,
        // Filled from the bootstrap's node by `convert::bootstrap`.
        user_agent: config
            .add_user_agent
            .as_ref()
            .is_some_and(|b| b.value)
            .then(model::Node::default),
        accept_http_10: http1.is_some_and(|o| o.accept_http_10),
        default_host_for_http_10,
        escaped_slashes: escaped_slashes(
            config.path_with_escaped_slashes_action,
            &join(path, "path_with_escaped_slashes_action"),
        )?,
        stream_error_on_invalid_http_message: config
            .stream_error_on_invalid_http_message
            .as_ref()
            .is_some_and(|b| b.value),
        local_reply: config
            .local_reply_config
            .as_ref()
            .map(|c| super::local_reply::local_reply_config(c, &join(path, "local_reply_config")))
            .transpose()?,
    })
}

fn escaped_slashes(value: i32, path: &str) -> Result<m::EscapedSlashesAction> {
    use hcm::http_connection_manager::PathWithEscapedSlashesAction as A;
    match A::try_from(value) {
        Ok(A::ImplementationSpecificDefault) | Ok(A::KeepUnchanged) => {
            Ok(m::EscapedSlashesAction::KeepUnchanged)
        }
        Ok(A::RejectRequest) => Ok(m::EscapedSlashesAction::Reject),
        Ok(A::UnescapeAndRedirect) => Ok(m::EscapedSlashesAction::UnescapeAndRedirect),
        Ok(A::UnescapeAndForward) => Ok(m::EscapedSlashesAction::UnescapeAndForward),
        Err(_) => Err(ConfigError::field(
            path,
            format!(
                "unknown value {value}; expected KEEP_UNCHANGED, REJECT_REQUEST,                  UNESCAPE_AND_REDIRECT or UNESCAPE_AND_FORWARD"
            ),
        )),
    }
}

fn codec(codec_type: i32, path: &str) -> Result<m::Codec> {
    use hcm::http_connection_manager::CodecType;
    match CodecType::try_from(codec_type) {
        Ok(CodecType::Auto) => Ok(m::Codec::Auto),
        Ok(CodecType::Http1) => Ok(m::Codec::Http1),
        Ok(CodecType::Http2) => Ok(m::Codec::Http2),
        Ok(CodecType::Http3) => Err(ConfigError::field(
            path,
            "HTTP3 needs QUIC, which keel does not support; use AUTO, HTTP1 or HTTP2",
        )),
        Err(_) => Err(ConfigError::field(
            path,
            format!("unknown codec type {codec_type}; expected AUTO, HTTP1 or HTTP2"),
        )),
    }
}

fn server_header(value: i32, path: &str) -> Result<m::ServerHeader> {
    use hcm::http_connection_manager::ServerHeaderTransformation as T;
    match T::try_from(value) {
        Ok(T::Overwrite) => Ok(m::ServerHeader::Overwrite),
        Ok(T::AppendIfAbsent) => Ok(m::ServerHeader::AppendIfAbsent),
        Ok(T::PassThrough) => Ok(m::ServerHeader::PassThrough),
        Err(_) => Err(ConfigError::field(
            path,
            format!("unknown value {value}; expected OVERWRITE, APPEND_IF_ABSENT or PASS_THROUGH"),
        )),
    }
}

fn underscore_action(value: i32, path: &str) -> Result<m::UnderscoreAction> {
    use core::http_protocol_options::HeadersWithUnderscoresAction as A;
    match A::try_from(value) {
        Ok(A::Allow) => Ok(m::UnderscoreAction::Allow),
        Ok(A::RejectRequest) => Ok(m::UnderscoreAction::RejectRequest),
        Ok(A::DropHeader) => Ok(m::UnderscoreAction::DropHeader),
        Err(_) => Err(ConfigError::field(
            path,
            format!("unknown value {value}; expected ALLOW, REJECT_REQUEST or DROP_HEADER"),
        )),
    }
}

/// The HTTP filter chain: keel supports the router, which must be last (as in Envoy).
/// Envoy accepts an empty chain and then answers no request; keel rejects it.
fn http_filters(filters: &[hcm::HttpFilter], path: &str) -> Result<Vec<m::HttpFilter>> {
    use hcm::http_filter::ConfigType;

    if filters.is_empty() {
        return Err(ConfigError::field(
            path,
            format!(
                "missing; the last HTTP filter must be the router: - name: {ROUTER}, typed_config: \
                 {{\"@type\": {}}}",
                router::Router::type_url()
            ),
        ));
    }
    let router_name = router::Router::full_name();
    let mut chain = Vec::with_capacity(filters.len());
    for (i, filter) in filters.iter().enumerate() {
        let item = index(path, i);
        if filter.name.is_empty() {
            return Err(ConfigError::field(
                join(&item, "name"),
                format!("missing; name the filter, e.g. {ROUTER}"),
            ));
        }
        match &filter.config_type {
            Some(ConfigType::TypedConfig(any)) => {
                if type_url_message_name(&any.type_url) != Some(router_name.as_str()) {
                    return Err(ConfigError::field(
                        join(&item, "typed_config"),
                        format!(
                            "@type \"{}\" (filter \"{}\") is not an HTTP filter keel supports; keel \
                             supports one HTTP filter, {ROUTER} ({})",
                            any.type_url,
                            filter.name,
                            router::Router::type_url()
                        ),
                    ));
                }
            }
            Some(ConfigType::ConfigDiscovery(_)) => {
                return Err(ConfigError::field(
                    join(&item, "config_discovery"),
                    "extension config discovery (ECDS) comes with xDS, not supported yet; give \
                     typed_config inline",
                ))
            }
            // Older Envoy found the filter by its name alone; keel still does for the router.
            None if filter.name == ROUTER => {}
            None => {
                return Err(ConfigError::field(
                    join(&item, "name"),
                    format!(
                    "HTTP filter \"{}\" is not supported by keel; keel supports one HTTP filter, \
                         {ROUTER} ({})",
                    filter.name,
                    router::Router::type_url()
                ),
                ))
            }
        }
        if i + 1 < filters.len() {
            return Err(ConfigError::field(
                item,
                format!(
                    "terminal filter \"{}\" ({ROUTER}) must be the last filter of the HTTP filter \
                     chain; remove the filters after it",
                    filter.name
                ),
            ));
        }
        chain.push(m::HttpFilter::Router);
    }
    Ok(chain)
}

/// `upgrade_configs`: lower-cased upgrade types, each at most once (Envoy rejects
/// duplicates too). An upgrade with `enabled: false` is left out: it is off unless a
/// route's `upgrade_configs` turns it on, which a route may do for any type.
fn upgrade_types(
    upgrades: &[hcm::http_connection_manager::UpgradeConfig],
    path: &str,
) -> Result<Vec<String>> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut types = Vec::new();
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
        if let Some(first) = seen.insert(upgrade_type.clone(), i) {
            return Err(ConfigError::field(
                type_path,
                format!(
                    "duplicate upgrade type \"{upgrade_type}\" (first at {}); give each upgrade \
                     once",
                    index(path, first)
                ),
            ));
        }
        if upgrade.enabled.as_ref().is_none_or(|b| b.value) {
            types.push(upgrade_type);
        }
    }
    Ok(types)
}

fn http2_options(
    options: Option<&core::Http2ProtocolOptions>,
    path: &str,
) -> Result<m::Http2Options> {
    Ok(m::Http2Options {
        max_concurrent_streams: ranged(
            options.and_then(|o| o.max_concurrent_streams.as_ref()),
            DEFAULT_H2_MAX_CONCURRENT_STREAMS,
            1,
            H2_MAX,
            &join(path, "max_concurrent_streams"),
        )?,
        initial_stream_window_size: ranged(
            options.and_then(|o| o.initial_stream_window_size.as_ref()),
            DEFAULT_H2_STREAM_WINDOW,
            H2_MIN_WINDOW,
            H2_MAX,
            &join(path, "initial_stream_window_size"),
        )?,
        initial_connection_window_size: ranged(
            options.and_then(|o| o.initial_connection_window_size.as_ref()),
            DEFAULT_H2_CONNECTION_WINDOW,
            H2_MIN_WINDOW,
            H2_MAX,
            &join(path, "initial_connection_window_size"),
        )?,
    })
}

/// An optional `UInt32Value` within `min..=max`, or `default`.
fn ranged(
    value: Option<&wkt::UInt32Value>,
    default: u32,
    min: u32,
    max: u32,
    path: &str,
) -> Result<u32> {
    let Some(value) = value else {
        return Ok(default);
    };
    if (min..=max).contains(&value.value) {
        Ok(value.value)
    } else {
        Err(ConfigError::field(
            path,
            format!(
                "{} is out of range; give {min} to {max} (the default is {default})",
                value.value
            ),
        ))
    }
}

/// Whether `b` may appear in an HTTP token (RFC 9110 `tchar`).
pub(super) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Checks a header value given in the configuration: Envoy's `HTTP_HEADER_VALUE` rule
/// (no NUL, CR or LF) and its 16 KiB limit.
pub(super) fn header_value(value: &str, path: &str) -> Result<()> {
    if value.len() > 16384 {
        return Err(ConfigError::field(
            path,
            format!(
                "{} bytes is too long for a header value (at most 16384)",
                value.len()
            ),
        ));
    }
    if value.contains(['\0', '\r', '\n']) {
        return Err(ConfigError::field(
            path,
            "a header value cannot hold NUL, CR or LF characters",
        ));
    }
    Ok(())
}
