//! `/config_dump`: Envoy's `envoy.admin.v3.ConfigDump`, built from the bootstrap's
//! proto3 JSON ([`crate::model::Bootstrap::config_dump`]).
//!
//! The dumps come in Envoy's order: bootstrap, clusters, listeners, scoped routes,
//! routes, secrets (the last ones empty until keel has SDS and scoped routes).
//! Static clusters and listeners come from
//! `static_resources`; route configurations written inline in an HTTP connection
//! manager are the static route configs, as in Envoy. `?resource=static_clusters`
//! (any repeated field of a dump) lists the items alone, each with its own `@type`.
//! Secrets (`private_key`, `password`, ...) are shown as `[redacted]`.

use std::time::SystemTime;

use http::StatusCode;
use serde_json::{json, Map, Value};

use super::handlers::{AdminRequest, AdminResponse};
use super::{Admin, ConfigView};

const TYPE_PREFIX: &str = "type.googleapis.com/";
const BOOTSTRAP_DUMP: &str = "envoy.admin.v3.BootstrapConfigDump";
const CLUSTERS_DUMP: &str = "envoy.admin.v3.ClustersConfigDump";
const LISTENERS_DUMP: &str = "envoy.admin.v3.ListenersConfigDump";
const ROUTES_DUMP: &str = "envoy.admin.v3.RoutesConfigDump";
const SCOPED_ROUTES_DUMP: &str = "envoy.admin.v3.ScopedRoutesConfigDump";
const SECRETS_DUMP: &str = "envoy.admin.v3.SecretsConfigDump";
const CLUSTER: &str = "envoy.config.cluster.v3.Cluster";
const LISTENER: &str = "envoy.config.listener.v3.Listener";
const ROUTE_CONFIGURATION: &str = "envoy.config.route.v3.RouteConfiguration";

/// A dump's type, its repeated fields with the message type of their items, and its
/// fields that are not repeated (`?resource=` on those is a 400, as in Envoy).
type DumpFields = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static [&'static str],
);

/// The fields of each dump keel produces.
const DUMP_FIELDS: &[DumpFields] = &[
    (BOOTSTRAP_DUMP, &[], &["bootstrap", "last_updated"]),
    (
        CLUSTERS_DUMP,
        &[
            ("static_clusters", "StaticCluster"),
            ("dynamic_active_clusters", "DynamicCluster"),
            ("dynamic_warming_clusters", "DynamicCluster"),
        ],
        &["version_info"],
    ),
    (
        LISTENERS_DUMP,
        &[
            ("static_listeners", "StaticListener"),
            ("dynamic_listeners", "DynamicListener"),
        ],
        &["version_info"],
    ),
    (
        SCOPED_ROUTES_DUMP,
        &[
            ("inline_scoped_route_configs", "InlineScopedRouteConfigs"),
            ("dynamic_scoped_route_configs", "DynamicScopedRouteConfigs"),
        ],
        &[],
    ),
    (
        ROUTES_DUMP,
        &[
            ("static_route_configs", "StaticRouteConfig"),
            ("dynamic_route_configs", "DynamicRouteConfig"),
        ],
        &[],
    ),
    (
        SECRETS_DUMP,
        &[
            ("static_secrets", "StaticSecret"),
            ("dynamic_active_secrets", "DynamicSecret"),
            ("dynamic_warming_secrets", "DynamicSecret"),
        ],
        &[],
    ),
];

/// Fields Envoy marks sensitive; every string under them is redacted.
const SENSITIVE: &[&str] = &[
    "private_key",
    "privateKey",
    "password",
    "pkcs12",
    "session_ticket_keys",
    "sessionTicketKeys",
    "generic_secret",
    "genericSecret",
];

/// `field` under its proto name or its JSON (lowerCamelCase) name.
fn field<'a>(object: &'a Value, name: &str) -> Option<&'a Value> {
    object.get(name).or_else(|| object.get(camel_case(name)))
}

fn camel_case(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn array<'a>(object: &'a Value, name: &str) -> &'a [Value] {
    field(object, name)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// A `google.protobuf.Timestamp` in proto3 JSON.
pub(crate) fn timestamp(at: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `message` packed in an `Any`: the object with `@type` first.
fn any(type_name: &str, message: &Value) -> Value {
    let mut object = Map::new();
    object.insert("@type".into(), json!(format!("{TYPE_PREFIX}{type_name}")));
    if let Some(fields) = message.as_object() {
        for (k, v) in fields {
            if k != "@type" {
                object.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(object)
}

/// Inline route configurations of HTTP connection managers in `listener`.
fn inline_route_configs(listener: &Value) -> Vec<Value> {
    let chains = array(listener, "filter_chains")
        .iter()
        .chain(field(listener, "default_filter_chain"));
    chains
        .flat_map(|chain| array(chain, "filters").iter())
        .filter_map(|filter| field(filter, "typed_config"))
        .filter(|config| {
            config
                .get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with(".HttpConnectionManager"))
        })
        .filter_map(|config| field(config, "route_config").cloned())
        .collect()
}

/// Every dump, in Envoy's order, each an `Any` (`@type` first).
pub(crate) fn dumps(view: &ConfigView) -> Vec<Value> {
    let bootstrap = &view.bootstrap.config_dump;
    let last_updated = timestamp(view.last_updated);
    let empty = json!({});
    let statics = field(bootstrap, "static_resources").unwrap_or(&empty);
    let item = |key: &str, type_name: &str, message: &Value| json!({ key: any(type_name, message), "last_updated": last_updated });

    let bootstrap_message = if bootstrap.is_object() {
        bootstrap.clone()
    } else {
        json!({})
    };
    let bootstrap_dump = json!({
        "bootstrap": bootstrap_message,
        "last_updated": last_updated,
    });
    let clusters: Vec<Value> = array(statics, "clusters")
        .iter()
        .map(|c| item("cluster", CLUSTER, c))
        .collect();
    let listeners: Vec<Value> = array(statics, "listeners")
        .iter()
        .map(|l| item("listener", LISTENER, l))
        .collect();
    let routes: Vec<Value> = array(statics, "listeners")
        .iter()
        .flat_map(inline_route_configs)
        .map(|r| item("route_config", ROUTE_CONFIGURATION, &r))
        .collect();

    let with = |mut dump: Map<String, Value>, key: &str, items: Vec<Value>| {
        if !items.is_empty() {
            dump.insert(key.into(), Value::Array(items));
        }
        Value::Object(dump)
    };
    let mut all = vec![
        any(BOOTSTRAP_DUMP, &bootstrap_dump),
        any(
            CLUSTERS_DUMP,
            &with(Map::new(), "static_clusters", clusters),
        ),
        any(
            LISTENERS_DUMP,
            &with(Map::new(), "static_listeners", listeners),
        ),
        any(SCOPED_ROUTES_DUMP, &json!({})),
        any(
            ROUTES_DUMP,
            &with(Map::new(), "static_route_configs", routes),
        ),
        any(SECRETS_DUMP, &json!({})),
    ];
    for dump in &mut all {
        redact(dump);
    }
    all
}

/// Replaces every string under a sensitive field with `[redacted]`.
pub(crate) fn redact(value: &mut Value) {
    fn redact_all(value: &mut Value) {
        match value {
            Value::String(s) => *s = "[redacted]".into(),
            Value::Array(items) => items.iter_mut().for_each(redact_all),
            Value::Object(fields) => fields.values_mut().for_each(redact_all),
            _ => {}
        }
    }
    match value {
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::Object(fields) => {
            for (key, value) in fields.iter_mut() {
                if SENSITIVE.contains(&key.as_str()) {
                    redact_all(value);
                } else {
                    redact(value);
                }
            }
        }
        _ => {}
    }
}

/// The items of repeated field `resource`, each an `Any` of its own type; an error
/// response when no dump has such a field or it is not repeated.
fn resource_items(dumps: &[Value], resource: &str) -> Result<Vec<Value>, AdminResponse> {
    for dump in dumps {
        let Some(type_url) = dump.get("@type").and_then(Value::as_str) else {
            continue;
        };
        let type_name = type_url.trim_start_matches(TYPE_PREFIX);
        let Some((_, repeated, singular)) = DUMP_FIELDS.iter().find(|(t, _, _)| *t == type_name)
        else {
            continue;
        };
        if let Some((_, item_type)) = repeated.iter().find(|(f, _)| *f == resource) {
            let item_type = format!("{type_name}.{item_type}");
            return Ok(array(dump, resource)
                .iter()
                .map(|item| any(&item_type, item))
                .collect());
        }
        if singular.contains(&resource) {
            return Err(AdminResponse::text(
                StatusCode::BAD_REQUEST,
                format!(
                    "{resource} is not a repeated field. Use ?mask={resource} to get only this \
                     field"
                ),
            ));
        }
    }
    Err(AdminResponse::text(
        StatusCode::NOT_FOUND,
        format!("{resource} not found in config dump"),
    ))
}

/// `/config_dump`.
pub(crate) fn handle(admin: &Admin, request: &AdminRequest) -> AdminResponse {
    let dumps = dumps(&admin.config());
    let configs = match request.param("resource").filter(|r| !r.is_empty()) {
        Some(resource) => match resource_items(&dumps, resource) {
            Ok(items) => items,
            Err(response) => return response,
        },
        None => dumps,
    };
    AdminResponse::json(StatusCode::OK, &json!({ "configs": configs }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel_case_names_are_found_too() {
        assert_eq!(camel_case("static_resources"), "staticResources");
        let v = json!({"staticResources": {"clusters": [1]}});
        assert_eq!(
            array(field(&v, "static_resources").unwrap(), "clusters").len(),
            1
        );
    }

    #[test]
    fn redaction_reaches_nested_secrets_only() {
        let mut v = json!({
            "tls_certificates": [{
                "certificate_chain": {"filename": "/c.pem"},
                "private_key": {"inline_string": "-----BEGIN KEY"},
            }],
            "name": "x",
        });
        redact(&mut v);
        assert_eq!(
            v["tls_certificates"][0]["private_key"]["inline_string"],
            "[redacted]"
        );
        assert_eq!(
            v["tls_certificates"][0]["certificate_chain"]["filename"],
            "/c.pem"
        );
        assert_eq!(v["name"], "x");
    }

    #[test]
    fn resource_lookup_follows_envoy() {
        let dumps = vec![
            any(BOOTSTRAP_DUMP, &json!({"bootstrap": {}})),
            any(
                CLUSTERS_DUMP,
                &json!({"static_clusters": [{"cluster": {"name": "c"}}]}),
            ),
        ];
        let items = resource_items(&dumps, "static_clusters").expect("found");
        assert_eq!(
            items,
            vec![json!({
                "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.StaticCluster",
                "cluster": {"name": "c"},
            })]
        );
        assert_eq!(
            resource_items(&dumps, "dynamic_active_clusters").expect("known, empty"),
            Vec::<Value>::new()
        );
        let err = resource_items(&dumps, "bootstrap").expect_err("not repeated");
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        let err = resource_items(&dumps, "nope").expect_err("unknown");
        assert_eq!(err.status, StatusCode::NOT_FOUND);
        assert_eq!(&err.body[..], b"nope not found in config dump");
    }

    #[test]
    fn inline_route_configs_of_http_connection_managers() {
        let listener = json!({
            "name": "l",
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.\
                              http_connection_manager.v3.HttpConnectionManager",
                    "route_config": {"name": "local_route"},
                },
            }]}],
        });
        assert_eq!(
            inline_route_configs(&listener),
            vec![json!({"name": "local_route"})]
        );
    }
}
