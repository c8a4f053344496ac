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
        &["name", "address", "filter_chains", "metadata"],
    ),
    ("envoy.config.listener.v3.FilterChain", &["name", "filters"]),
    ("envoy.config.listener.v3.Filter", &["name", "typed_config"]),
    (
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        &["stat_prefix", "cluster", "idle_timeout"],
    ),
    // Clusters.
    (
        "envoy.config.cluster.v3.Cluster",
        &[
            "name",
            "type",
            "connect_timeout",
            "lb_policy",
            "maglev_lb_config",
            "load_assignment",
        ],
    ),
    (
        "envoy.config.cluster.v3.Cluster.MaglevLbConfig",
        &["table_size"],
    ),
    (
        "envoy.config.endpoint.v3.ClusterLoadAssignment",
        &["cluster_name", "endpoints"],
    ),
    (
        "envoy.config.endpoint.v3.LocalityLbEndpoints",
        &["locality", "lb_endpoints", "load_balancing_weight"],
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

/// Checks that every field set in `message` (found at `path`) is supported.
pub(super) fn check(message: &DynamicMessage, path: &str) -> Result<(), ConfigError> {
    let desc = message.descriptor();
    let name = desc.full_name();
    if name == "google.protobuf.Any" {
        return check_any(message, path);
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
            return Err(ConfigError::field(
                child,
                format!(
                    "field not supported by keel (keel reads only {} of {name}); remove it",
                    fields.join(", ")
                ),
            ));
        }
        if FREE_FORM_FIELDS.contains(&(name, field.name())) {
            continue;
        }
        check_value(value, &child)?;
    }
    Ok(())
}

fn check_value(value: &Value, path: &str) -> Result<(), ConfigError> {
    match value {
        Value::Message(message) => check(message, path),
        Value::List(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| check_value(item, &index(path, i))),
        Value::Map(entries) => {
            // Sorted, so that the first error is the same every time.
            let mut entries: Vec<_> = entries.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            entries
                .into_iter()
                .try_for_each(|(key, item)| check_value(item, &join(path, &map_key(key))))
        }
        _ => Ok(()),
    }
}

/// Unpacks an `Any` by its type URL and checks the payload at the same path (in JSON the
/// payload's fields sit beside "@type").
fn check_any(any: &DynamicMessage, path: &str) -> Result<(), ConfigError> {
    let type_url = any
        .get_field_by_name("type_url")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let bytes = any
        .get_field_by_name("value")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    let Some(desc) =
        type_url_message_name(&type_url).and_then(|n| descriptor_pool().get_message_by_name(n))
    else {
        return Err(ConfigError::field(
            path,
            format!("unknown @type \"{type_url}\""),
        ));
    };
    if desc.full_name().starts_with("google.protobuf.") {
        return Ok(());
    }
    if supported_fields(desc.full_name()).is_none() {
        return Err(ConfigError::field(
            path,
            format!("@type \"{type_url}\" is not supported by keel"),
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
