//! `/server_info`: Envoy's `envoy.admin.v3.ServerInfo` as proto3 JSON (snake_case field
//! names, every scalar of `command_line_options` printed, durations as `"Ns"`).

use std::time::{Duration, SystemTime};

use http::StatusCode;
use serde_json::{json, Map, Value};

use super::handlers::{AdminRequest, AdminResponse};
use super::Admin;
use crate::model::Bootstrap;

/// keel has no Envoy-style hot restart (shared memory, parent/child socket passing), so
/// it reports what Envoy reports with `--disable-hot-restart`.
pub(crate) const HOT_RESTART_VERSION: &str = "disabled";

/// The command line keel runs with, in Envoy's `CommandLineOptions` terms. Fields
/// keel does not have are reported with their Envoy defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandLineOptions {
    /// `--concurrency` in effect (worker threads).
    pub concurrency: u32,
    /// `-c` / `--config-path` (empty when not given).
    pub config_path: String,
    /// `--config-yaml` (empty when not given).
    pub config_yaml: String,
    /// `-l` / `--log-level`.
    pub log_level: String,
    /// `--component-log-level` (empty when not given).
    pub component_log_level: String,
    /// `--service-cluster` (empty when not given).
    pub service_cluster: String,
    /// `--service-node` (empty when not given).
    pub service_node: String,
    /// `--drain-time-s`.
    pub drain_time: Duration,
    /// `--mode`: "Serve", "Validate" or "InitOnly".
    pub mode: String,
}

impl Default for CommandLineOptions {
    fn default() -> Self {
        CommandLineOptions {
            concurrency: 1,
            config_path: String::new(),
            config_yaml: String::new(),
            log_level: "info".into(),
            component_log_level: String::new(),
            service_cluster: String::new(),
            service_node: String::new(),
            drain_time: Duration::from_secs(600),
            mode: "Serve".into(),
        }
    }
}

impl CommandLineOptions {
    /// `envoy.admin.v3.CommandLineOptions` as Envoy prints it (all scalars, uint64 as
    /// strings).
    pub fn to_json(&self) -> Value {
        json!({
            "base_id": "0",
            "use_dynamic_base_id": false,
            "base_id_path": "",
            "concurrency": self.concurrency,
            "config_path": self.config_path,
            "config_yaml": self.config_yaml,
            "allow_unknown_static_fields": false,
            "reject_unknown_dynamic_fields": false,
            "ignore_unknown_dynamic_fields": false,
            "admin_address_path": "",
            "local_address_ip_version": "v4",
            "log_level": self.log_level,
            "component_log_level": self.component_log_level,
            "log_format": "",
            "log_format_escaped": false,
            "log_path": "",
            "service_cluster": self.service_cluster,
            "service_node": self.service_node,
            "service_zone": "",
            "drain_time": duration_json(self.drain_time),
            "drain_strategy": "Gradual",
            "mode": self.mode,
            "disable_hot_restart": true,
            "enable_mutex_tracing": false,
            "restart_epoch": 0,
            "cpuset_threads": false,
            "disabled_extensions": [],
            "bootstrap_version": 0,
            "enable_fine_grain_logging": false,
            "socket_path": "",
            "socket_mode": 0,
            "enable_core_dump": false,
        })
    }
}

/// `google.protobuf.Duration` as proto3 JSON: `"600s"`, `"0.250s"`.
pub(crate) fn duration_json(d: Duration) -> String {
    let nanos = d.subsec_nanos();
    if nanos == 0 {
        format!("{}s", d.as_secs())
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{}.{:03}s", d.as_secs(), nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) {
        format!("{}.{:06}s", d.as_secs(), nanos / 1_000)
    } else {
        format!("{}.{:09}s", d.as_secs(), nanos)
    }
}

/// keel's version string, shaped like Envoy's `<revision>/<version>/...` so that tools
/// splitting on `/` find the version second.
pub(crate) fn version() -> String {
    let build = if cfg!(debug_assertions) {
        "DEBUG"
    } else {
        "RELEASE"
    };
    format!("keel/{}/{build}", env!("CARGO_PKG_VERSION"))
}

/// `config.core.v3.Node`: the bootstrap's node (with its metadata and locality), the
/// id and cluster in force, and keel as the user agent.
fn node_json(bootstrap: &Bootstrap) -> Value {
    let mut node = Map::new();
    if let Some(configured) = bootstrap.config_dump.get("node").and_then(Value::as_object) {
        for key in ["metadata", "locality"] {
            if let Some(value) = configured.get(key) {
                node.insert(key.into(), value.clone());
            }
        }
    }
    node.insert("id".into(), json!(bootstrap.node.id));
    node.insert("cluster".into(), json!(bootstrap.node.cluster));
    node.insert("user_agent_name".into(), json!("keel"));
    let mut numbers = env!("CARGO_PKG_VERSION")
        .split(['.', '-', '+'])
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let mut version = Map::new();
    for key in ["major_number", "minor_number", "patch"] {
        let n = numbers.next().unwrap_or(0);
        if n != 0 {
            version.insert(key.into(), json!(n));
        }
    }
    node.insert(
        "user_agent_build_version".into(),
        json!({ "version": version }),
    );
    Value::Object(node)
}

/// The whole `ServerInfo` message at `now`.
pub(crate) fn server_info_json(admin: &Admin, now: SystemTime) -> Value {
    let (uptime_current, uptime_all) = admin.uptime(now);
    let view = admin.config();
    json!({
        "version": version(),
        "state": admin.state().as_str(),
        "uptime_current_epoch": format!("{}s", uptime_current.as_secs()),
        "uptime_all_epochs": format!("{}s", uptime_all.as_secs()),
        "hot_restart_version": HOT_RESTART_VERSION,
        "command_line_options": admin.options().to_json(),
        "node": node_json(&view.bootstrap),
    })
}

/// `/server_info`.
pub(crate) fn handle(admin: &Admin, _: &AdminRequest) -> AdminResponse {
    AdminResponse::json(StatusCode::OK, &server_info_json(admin, SystemTime::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_use_the_proto3_json_form() {
        assert_eq!(duration_json(Duration::from_secs(600)), "600s");
        assert_eq!(duration_json(Duration::from_millis(250)), "0.250s");
        assert_eq!(duration_json(Duration::from_micros(1_000_001)), "1.000001s");
        assert_eq!(duration_json(Duration::from_nanos(5)), "0.000000005s");
    }

    #[test]
    fn command_line_options_print_every_scalar() {
        let options = CommandLineOptions {
            concurrency: 4,
            config_path: "/etc/keel.yaml".into(),
            ..Default::default()
        };
        let json = options.to_json();
        assert_eq!(json["concurrency"], 4);
        assert_eq!(json["config_path"], "/etc/keel.yaml");
        assert_eq!(json["drain_time"], "600s");
        assert_eq!(json["mode"], "Serve");
        assert_eq!(json["base_id"], "0", "uint64 is a string in proto3 JSON");
        assert_eq!(json["disable_hot_restart"], true);
    }

    #[test]
    fn version_puts_the_number_second_like_envoy() {
        let version = version();
        let parts: Vec<&str> = version.split('/').collect();
        assert_eq!(parts[0], "keel");
        assert_eq!(parts[1], env!("CARGO_PKG_VERSION"));
    }
}
