//! `access_log` of the HTTP connection manager → [`model::http::AccessLog`]: the file,
//! stdout and stderr loggers, their formats and filters.
//!
//! As in Envoy, a logger with no format uses [`m::DEFAULT_ACCESS_LOG_FORMAT`], and a
//! custom text format is used as written: Envoy adds no newline to it. JSON formats are
//! flat objects whose values are format strings; a protobuf `Struct` does not keep the
//! file's key order, so keys come out sorted.

use std::path::PathBuf;

use envoy_types::pb::envoy::config::accesslog::v3 as accesslog;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3 as file;
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3 as stream;
use envoy_types::pb::google::protobuf as wkt;
use prost::Name as _;

use super::{decode_any, Result};
use crate::config::{index, join, type_url_message_name, ConfigError};
use crate::model::http as m;

/// The access loggers keel supports, for error messages.
const LOGGERS: &str = "the access loggers keel supports are \
     type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, \
     type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog and \
     type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog";

/// Converts the list at `path`.
pub(super) fn access_logs(logs: &[accesslog::AccessLog], path: &str) -> Result<Vec<m::AccessLog>> {
    logs.iter()
        .enumerate()
        .map(|(i, log)| access_log(log, &index(path, i)))
        .collect()
}

fn access_log(log: &accesslog::AccessLog, path: &str) -> Result<m::AccessLog> {
    use accesslog::access_log::ConfigType;

    let config_path = join(path, "typed_config");
    let Some(ConfigType::TypedConfig(any)) = &log.config_type else {
        return Err(ConfigError::field(
            config_path,
            format!("missing; give the logger's \"@type\" and settings ({LOGGERS})"),
        ));
    };
    let message = type_url_message_name(&any.type_url);
    let (sink, format) = if message == Some(file::FileAccessLog::full_name().as_str()) {
        let config: file::FileAccessLog = decode_any(any, &config_path)?;
        file_log(&config, &config_path)?
    } else if message == Some(stream::StdoutAccessLog::full_name().as_str()) {
        use stream::stdout_access_log::AccessLogFormat;
        let config: stream::StdoutAccessLog = decode_any(any, &config_path)?;
        let format = match &config.access_log_format {
            None => default_format(),
            Some(AccessLogFormat::LogFormat(f)) => {
                substitution_format(f, &join(&config_path, "log_format"))?
            }
        };
        (m::AccessLogSink::Stdout, format)
    } else if message == Some(stream::StderrAccessLog::full_name().as_str()) {
        use stream::stderr_access_log::AccessLogFormat;
        let config: stream::StderrAccessLog = decode_any(any, &config_path)?;
        let format = match &config.access_log_format {
            None => default_format(),
            Some(AccessLogFormat::LogFormat(f)) => {
                substitution_format(f, &join(&config_path, "log_format"))?
            }
        };
        (m::AccessLogSink::Stderr, format)
    } else {
        return Err(ConfigError::field(
            config_path,
            format!(
                "@type \"{}\" is not an access logger; {LOGGERS}",
                any.type_url
            ),
        ));
    };
    let filter = log
        .filter
        .as_ref()
        .map(|f| access_log_filter(f, &join(path, "filter")))
        .transpose()?;
    Ok(m::AccessLog {
        sink,
        format,
        filter,
    })
}

// Envoy still accepts the deprecated fields read here, so keel does too.
#[allow(deprecated)]
fn file_log(
    config: &file::FileAccessLog,
    path: &str,
) -> Result<(m::AccessLogSink, m::AccessLogFormat)> {
    use file::file_access_log::AccessLogFormat;

    if config.path.is_empty() {
        return Err(ConfigError::field(
            join(path, "path"),
            "missing; give the file to write to, such as /var/log/keel/access.log or /dev/stdout",
        ));
    }
    let format = match &config.access_log_format {
        None => default_format(),
        // The deprecated `format`: empty means the default, as in Envoy.
        Some(AccessLogFormat::Format(text)) if text.is_empty() => default_format(),
        Some(AccessLogFormat::Format(text)) => m::AccessLogFormat::Text(text.clone()),
        Some(AccessLogFormat::JsonFormat(fields)) => {
            json_format(fields, &join(path, "json_format"))?
        }
        Some(AccessLogFormat::LogFormat(f)) => substitution_format(f, &join(path, "log_format"))?,
        // The supported-field check rejects this first.
        Some(AccessLogFormat::TypedJsonFormat(_)) => {
            return Err(ConfigError::field(
                join(path, "typed_json_format"),
                "field not supported by keel; use log_format.json_format",
            ))
        }
    };
    Ok((m::AccessLogSink::File(PathBuf::from(&config.path)), format))
}

fn default_format() -> m::AccessLogFormat {
    m::AccessLogFormat::Text(m::DEFAULT_ACCESS_LOG_FORMAT.to_string())
}

/// A `SubstitutionFormatString` (at `path`).
// Envoy still accepts the deprecated fields read here, so keel does too.
#[allow(deprecated)]
pub(super) fn substitution_format(
    format: &core::SubstitutionFormatString,
    path: &str,
) -> Result<m::AccessLogFormat> {
    use core::data_source::Specifier;
    use core::substitution_format_string::Format;

    let text = match &format.format {
        Some(Format::TextFormat(text)) => (text.clone(), join(path, "text_format")),
        Some(Format::TextFormatSource(source)) => {
            let source_path = join(path, "text_format_source");
            match &source.specifier {
                Some(Specifier::InlineString(text)) => {
                    (text.clone(), join(&source_path, "inline_string"))
                }
                Some(Specifier::InlineBytes(bytes)) => {
                    let bytes_path = join(&source_path, "inline_bytes");
                    let text = String::from_utf8(bytes.clone()).map_err(|_| {
                        ConfigError::field(&bytes_path, "a format must be UTF-8 text")
                    })?;
                    (text, bytes_path)
                }
                // The supported-field check rejects the others first.
                _ => {
                    return Err(ConfigError::field(
                        source_path,
                        "missing; give the format in inline_string",
                    ))
                }
            }
        }
        Some(Format::JsonFormat(fields)) => return json_format(fields, &join(path, "json_format")),
        None => {
            return Err(ConfigError::field(
                path,
                "missing the format; set text_format_source.inline_string or json_format (or \
                 leave log_format out for Envoy's default format)",
            ))
        }
    };
    let (text, text_path) = text;
    if text.is_empty() {
        return Err(ConfigError::field(
            text_path,
            "empty format; leave log_format out for Envoy's default format",
        ));
    }
    Ok(m::AccessLogFormat::Text(text))
}

/// A JSON format: a flat object of format strings, sorted by key.
fn json_format(fields: &wkt::Struct, path: &str) -> Result<m::AccessLogFormat> {
    use wkt::value::Kind;

    if fields.fields.is_empty() {
        return Err(ConfigError::field(
            path,
            "empty; give keys and format strings, e.g. {status: \"%RESPONSE_CODE%\"}",
        ));
    }
    let mut pairs = Vec::with_capacity(fields.fields.len());
    for (key, value) in &fields.fields {
        let value_path = join(path, key);
        match &value.kind {
            Some(Kind::StringValue(format)) => pairs.push((key.clone(), format.clone())),
            Some(Kind::StructValue(_)) => {
                return Err(ConfigError::field(
                    value_path,
                    "nested objects in a JSON format are not supported by keel yet; use a flat \
                     object of format strings",
                ))
            }
            Some(_) | None => {
                return Err(ConfigError::field(
                    value_path,
                    "keel reads only format strings here; write constants as strings too",
                ))
            }
        }
    }
    pairs.sort();
    Ok(m::AccessLogFormat::Json(pairs))
}

/// An `AccessLogFilter` (at `path`).
pub(super) fn access_log_filter(
    filter: &accesslog::AccessLogFilter,
    path: &str,
) -> Result<m::AccessLogFilter> {
    use accesslog::access_log_filter::FilterSpecifier as F;

    Ok(match &filter.filter_specifier {
        Some(F::StatusCodeFilter(f)) => m::AccessLogFilter::StatusCode(comparison(
            f.comparison.as_ref(),
            &join(&join(path, "status_code_filter"), "comparison"),
        )?),
        Some(F::DurationFilter(f)) => m::AccessLogFilter::Duration(comparison(
            f.comparison.as_ref(),
            &join(&join(path, "duration_filter"), "comparison"),
        )?),
        Some(F::NotHealthCheckFilter(_)) => m::AccessLogFilter::NotHealthCheck,
        Some(F::HeaderFilter(f)) => {
            let header_path = join(&join(path, "header_filter"), "header");
            let Some(header) = &f.header else {
                return Err(ConfigError::field(
                    header_path,
                    "missing; give the header matcher, e.g. {name: x-debug, present_match: true}",
                ));
            };
            let matcher = super::route::header_matcher(header, &header_path)?;
            if matcher.name.starts_with(':') {
                return Err(ConfigError::field(
                    join(&header_path, "name"),
                    format!(
                        "keel's header_filter reads regular request headers, not {}",
                        matcher.name
                    ),
                ));
            }
            m::AccessLogFilter::Header(m::HeaderFilter(matcher))
        }
        Some(F::AndFilter(f)) => m::AccessLogFilter::And(filters(
            &f.filters,
            &join(&join(path, "and_filter"), "filters"),
        )?),
        Some(F::OrFilter(f)) => m::AccessLogFilter::Or(filters(
            &f.filters,
            &join(&join(path, "or_filter"), "filters"),
        )?),
        // The supported-field check rejects the others first.
        Some(_) => {
            return Err(ConfigError::field(
                path,
                "this access log filter is not supported by keel",
            ))
        }
        None => {
            return Err(ConfigError::field(
                path,
                "missing the filter; set one of status_code_filter, duration_filter, \
                 not_health_check_filter, header_filter, and_filter or or_filter",
            ))
        }
    })
}

/// The `filters` of an `and_filter` or `or_filter`: at least two, as Envoy requires.
fn filters(list: &[accesslog::AccessLogFilter], path: &str) -> Result<Vec<m::AccessLogFilter>> {
    if list.len() < 2 {
        return Err(ConfigError::field(
            path,
            format!("{} filter(s); Envoy requires at least 2", list.len()),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, f)| access_log_filter(f, &index(path, i)))
        .collect()
}

/// A `ComparisonFilter`. `value.runtime_key` is accepted and ignored: keel has no
/// runtime, so `value.default_value` applies.
fn comparison(c: Option<&accesslog::ComparisonFilter>, path: &str) -> Result<m::Comparison> {
    use accesslog::comparison_filter::Op;

    let Some(c) = c else {
        return Err(ConfigError::field(
            path,
            "missing; give op and value.default_value",
        ));
    };
    let op = match Op::try_from(c.op) {
        Ok(Op::Eq) => m::ComparisonOp::Eq,
        Ok(Op::Ge) => m::ComparisonOp::Ge,
        Ok(Op::Le) => m::ComparisonOp::Le,
        Ok(Op::Ne) => {
            return Err(ConfigError::field(
                join(path, "op"),
                "NE is not supported by keel yet; use EQ, GE or LE (an or_filter of GE and LE \
                 expresses \"not equal\")",
            ))
        }
        Err(_) => {
            return Err(ConfigError::field(
                join(path, "op"),
                format!("unknown operator {}; expected EQ, GE or LE", c.op),
            ))
        }
    };
    let Some(value) = &c.value else {
        return Err(ConfigError::field(
            join(path, "value"),
            "missing; give value.default_value",
        ));
    };
    Ok(m::Comparison {
        op,
        value: u64::from(value.default_value),
    })
}
