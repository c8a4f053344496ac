//! `local_reply_config` of the HTTP connection manager → [`m::LocalReplyConfig`]:
//! mappers (an access-log filter, a status, a body, a body format, headers) and the
//! body format of every local reply.
//!
//! Envoy's checks: a mapper needs a filter; `status_code` is 200 to 599; a body is
//! inline. A body format's content type defaults to `text/plain` for `text_format`
//! and `application/json` for `json_format` (Envoy's `SubstitutionFormatStringUtils`).

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;

use super::{access_log, route, Result};
use crate::config::{index, join, ConfigError};
use crate::model::http as m;
use crate::observe::format::{Formatter, JsonFormatter};

/// Converts the `local_reply_config` at `path`.
pub(super) fn local_reply_config(
    config: &hcm::LocalReplyConfig,
    path: &str,
) -> Result<m::LocalReplyConfig> {
    let mappers_path = join(path, "mappers");
    let mappers = config
        .mappers
        .iter()
        .enumerate()
        .map(|(i, mapper)| response_mapper(mapper, &index(&mappers_path, i)))
        .collect::<Result<Vec<_>>>()?;
    Ok(m::LocalReplyConfig {
        mappers,
        body_format: config
            .body_format
            .as_ref()
            .map(|f| body_format(f, &join(path, "body_format")))
            .transpose()?,
    })
}

fn response_mapper(mapper: &hcm::ResponseMapper, path: &str) -> Result<m::LocalReplyMapper> {
    use core::data_source::Specifier;

    let Some(filter) = &mapper.filter else {
        return Err(ConfigError::field(
            join(path, "filter"),
            "missing; a mapper applies to the replies its filter matches, e.g. \
             {status_code_filter: {comparison: {op: EQ, value: {default_value: 503}}}}",
        ));
    };
    let status = match &mapper.status_code {
        None => None,
        Some(code) => Some(
            u16::try_from(code.value)
                .ok()
                .filter(|s| (200..=599).contains(s))
                .ok_or_else(|| {
                    ConfigError::field(
                        join(path, "status_code"),
                        format!("{} is out of range; give 200 to 599", code.value),
                    )
                })?,
        ),
    };
    let body = match mapper.body.as_ref().and_then(|b| b.specifier.as_ref()) {
        None => None,
        Some(Specifier::InlineString(s)) => Some(s.clone()),
        Some(Specifier::InlineBytes(b)) => Some(String::from_utf8(b.clone()).map_err(|_| {
            ConfigError::field(
                join(&join(path, "body"), "inline_bytes"),
                "a local reply body must be UTF-8 text",
            )
        })?),
        // The supported-field check rejects the others first.
        Some(_) => {
            return Err(ConfigError::field(
                join(path, "body"),
                "keel reads a body only from inline_string or inline_bytes",
            ))
        }
    };
    let headers_path = join(path, "headers_to_add");
    let headers_to_add = mapper
        .headers_to_add
        .iter()
        .enumerate()
        .map(|(i, h)| route::header_value_option(h, &index(&headers_path, i)))
        .collect::<Result<Vec<_>>>()?;
    Ok(m::LocalReplyMapper {
        filter: access_log::access_log_filter(filter, &join(path, "filter"))?,
        status,
        body,
        body_format: mapper
            .body_format_override
            .as_ref()
            .map(|f| body_format(f, &join(path, "body_format_override")))
            .transpose()?,
        headers_to_add,
    })
}

fn body_format(format: &core::SubstitutionFormatString, path: &str) -> Result<m::BodyFormat> {
    let converted = access_log::substitution_format(format, path)?;
    // Checked here so that the error names the field (the connection manager compiles
    // the format again when it starts).
    let checked = match &converted {
        m::AccessLogFormat::Text(text) => Formatter::new(text).map(drop),
        m::AccessLogFormat::Json(fields) => JsonFormatter::new(fields).map(drop),
    };
    checked.map_err(|e| ConfigError::field(path, e.to_string()))?;
    let content_type = if format.content_type.is_empty() {
        match converted {
            m::AccessLogFormat::Text(_) => "text/plain",
            m::AccessLogFormat::Json(_) => "application/json",
        }
        .to_string()
    } else {
        super::hcm::header_value(&format.content_type, &join(path, "content_type"))?;
        format.content_type.clone()
    };
    Ok(m::BodyFormat {
        format: converted,
        content_type,
    })
}
