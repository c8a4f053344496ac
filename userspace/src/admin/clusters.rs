//! `/clusters`: Envoy's per-host text lines (`cluster::host:port::stat::value`) or,
//! with `?format=json`, `envoy.admin.v3.Clusters`.
//!
//! Host stats are read from the stats store under Envoy's per-endpoint names,
//! `cluster.<cluster>.endpoint.<ip>_<port>.<stat>` (see [`endpoint_stat_name`]); a
//! stat nobody records is 0. For clusters behind a kernel-balanced listener,
//! `cx_active` falls back to the kernel's own count of the endpoint's connections.
//! keel does no health checking or outlier detection yet, so every host is `healthy`
//! and success rates are -1, and it enforces no circuit breakers, so Envoy's
//! `*_priority::max_*` lines are left out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;

use http::StatusCode;
use regex::Regex;
use serde_json::{json, Map, Value};

use super::handlers::{address_json, AdminRequest, AdminResponse};
use super::Admin;
use crate::model::{Balancing, Bootstrap, NetworkFilter, Protocol};
use crate::observe::stats::StatValue;

/// Envoy's host counters, in the order Envoy lists them in JSON.
const HOST_COUNTERS: &[&str] = &[
    "cx_connect_fail",
    "cx_total",
    "rq_error",
    "rq_success",
    "rq_timeout",
    "rq_total",
];
/// Envoy's host gauges.
const HOST_GAUGES: &[&str] = &["cx_active", "rq_active", "rq_pending_active"];

/// The stats-store name of an endpoint's stat, as Envoy names per-endpoint stats:
/// `cluster.backend.endpoint.10.0.0.1_8080.cx_active` (`:` becomes `_`).
pub fn endpoint_stat_name(cluster: &str, endpoint: SocketAddr, stat: &str) -> String {
    format!(
        "cluster.{cluster}.endpoint.{}.{stat}",
        endpoint.to_string().replace(':', "_")
    )
}

/// One host of a cluster with its stats.
struct Host {
    address: SocketAddr,
    weight: u32,
    stats: HostStats,
}

/// One cluster and its hosts.
struct ClusterHosts {
    name: String,
    hosts: Vec<Host>,
}

/// One host's stats, sorted by name.
struct HostStats {
    values: BTreeMap<&'static str, i128>,
}

impl HostStats {
    fn get(&self, stat: &str) -> i128 {
        self.values.get(stat).copied().unwrap_or(0)
    }
}

/// Clusters that feed a kernel-balanced listener.
fn kernel_clusters(bootstrap: &Bootstrap) -> HashSet<&str> {
    bootstrap
        .listeners
        .iter()
        .filter(|l| l.balancing == Balancing::Kernel)
        .flat_map(|l| l.filter_chains.iter())
        .flat_map(|chain| chain.filters.iter())
        .filter_map(|filter| match filter {
            NetworkFilter::TcpProxy(proxy) => Some(proxy.cluster.as_str()),
            NetworkFilter::HttpConnectionManager(_) => None,
        })
        .collect()
}

/// Every static cluster whose name `filter` matches, with its hosts and their stats.
fn collect(admin: &Admin, filter: Option<&Regex>) -> Vec<ClusterHosts> {
    let view = admin.config();
    let bootstrap = &view.bootstrap;
    let snapshot: HashMap<String, StatValue> = admin.stats().snapshot().into_iter().collect();
    let kernel_fed = kernel_clusters(bootstrap);
    let kernel_connections = if kernel_fed.is_empty() {
        BTreeMap::new()
    } else {
        admin
            .kernel()
            .map(|k| k.endpoint_connections)
            .unwrap_or_default()
    };
    bootstrap
        .clusters
        .iter()
        .filter(|cluster| filter.is_none_or(|f| f.is_match(&cluster.name)))
        .map(|cluster| {
            let hosts = cluster
                .endpoints
                .iter()
                .map(|endpoint| {
                    let mut values = BTreeMap::new();
                    for &stat in HOST_COUNTERS.iter().chain(HOST_GAUGES) {
                        let name = endpoint_stat_name(&cluster.name, endpoint.address, stat);
                        let value = match snapshot.get(&name) {
                            Some(StatValue::Counter(v)) => Some(i128::from(*v)),
                            Some(StatValue::Gauge(v)) => Some(i128::from(*v)),
                            None if stat == "cx_active"
                                && kernel_fed.contains(cluster.name.as_str()) =>
                            {
                                kernel_connections
                                    .get(&endpoint.address)
                                    .map(|n| i128::from(*n))
                            }
                            None => None,
                        };
                        values.insert(stat, value.unwrap_or(0));
                    }
                    Host {
                        address: endpoint.address,
                        weight: endpoint.weight,
                        stats: HostStats { values },
                    }
                })
                .collect();
            ClusterHosts {
                name: cluster.name.clone(),
                hosts,
            }
        })
        .collect()
}

/// The text form.
fn text(clusters: &[ClusterHosts]) -> String {
    let mut out = String::new();
    for ClusterHosts { name, hosts } in clusters {
        let _ = writeln!(out, "{name}::observability_name::{name}");
        let _ = writeln!(out, "{name}::added_via_api::false");
        for Host {
            address,
            weight,
            stats,
        } in hosts
        {
            let host = format!("{name}::{address}");
            for (stat, value) in &stats.values {
                let _ = writeln!(out, "{host}::{stat}::{value}");
            }
            let _ = writeln!(out, "{host}::hostname::");
            let _ = writeln!(out, "{host}::health_flags::healthy");
            let _ = writeln!(out, "{host}::weight::{weight}");
            let _ = writeln!(out, "{host}::region::");
            let _ = writeln!(out, "{host}::zone::");
            let _ = writeln!(out, "{host}::sub_zone::");
            let _ = writeln!(out, "{host}::canary::false");
            let _ = writeln!(out, "{host}::priority::0");
            let _ = writeln!(out, "{host}::success_rate::-1");
            let _ = writeln!(out, "{host}::local_origin_success_rate::-1");
        }
    }
    out
}

/// `envoy.admin.v3.Clusters` in proto3 JSON (zero values and the default COUNTER type
/// left out, uint64 as strings).
fn json(clusters: &[ClusterHosts]) -> Value {
    let statuses: Vec<Value> = clusters
        .iter()
        .map(|ClusterHosts { name, hosts }| {
            let hosts: Vec<Value> = hosts
                .iter()
                .map(
                    |Host {
                         address,
                         weight,
                         stats,
                     }| {
                        let metric = |stat: &str, gauge: bool| {
                            let mut m = Map::new();
                            m.insert("name".into(), json!(stat));
                            let value = stats.get(stat);
                            if value != 0 {
                                m.insert("value".into(), json!(value.to_string()));
                            }
                            if gauge {
                                m.insert("type".into(), json!("GAUGE"));
                            }
                            Value::Object(m)
                        };
                        let metrics: Vec<Value> = HOST_COUNTERS
                            .iter()
                            .map(|s| metric(s, false))
                            .chain(HOST_GAUGES.iter().map(|s| metric(s, true)))
                            .collect();
                        json!({
                            "address": address_json(*address, Protocol::Tcp),
                            "stats": metrics,
                            "health_status": {"eds_health_status": "HEALTHY"},
                            "weight": weight,
                            "locality": {},
                        })
                    },
                )
                .collect();
            json!({
                "name": name,
                "observability_name": name,
                "host_statuses": hosts,
            })
        })
        .collect();
    json!({ "cluster_statuses": statuses })
}

/// `/clusters` (blocking: it may read the kernel's connection counts).
pub(crate) fn handle(admin: &Admin, request: &AdminRequest) -> AdminResponse {
    let filter = match request.param("filter").filter(|f| !f.is_empty()) {
        Some(pattern) => match Regex::new(pattern) {
            Ok(regex) => Some(regex),
            Err(_) => return AdminResponse::text(StatusCode::BAD_REQUEST, "Invalid re2 regex"),
        },
        None => None,
    };
    let clusters = collect(admin, filter.as_ref());
    if request.param("format") == Some("json") {
        AdminResponse::json(StatusCode::OK, &json(&clusters))
    } else {
        AdminResponse::text(StatusCode::OK, text(&clusters))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(address: &str, weight: u32, pairs: &[(&'static str, i128)]) -> Host {
        let mut values: BTreeMap<&'static str, i128> = HOST_COUNTERS
            .iter()
            .chain(HOST_GAUGES)
            .map(|s| (*s, 0))
            .collect();
        values.extend(pairs.iter().copied());
        Host {
            address: address.parse().unwrap(),
            weight,
            stats: HostStats { values },
        }
    }

    #[test]
    fn endpoint_stat_names_follow_envoy() {
        assert_eq!(
            endpoint_stat_name("web", "10.0.0.1:8080".parse().unwrap(), "cx_active"),
            "cluster.web.endpoint.10.0.0.1_8080.cx_active"
        );
        assert_eq!(
            endpoint_stat_name("web", "[fd00::2]:80".parse().unwrap(), "rq_total"),
            "cluster.web.endpoint.[fd00__2]_80.rq_total"
        );
    }

    #[test]
    fn text_lines_per_host_in_envoys_order() {
        let clusters = vec![ClusterHosts {
            name: "web".into(),
            hosts: vec![host(
                "10.0.0.1:8080",
                3,
                &[("cx_active", 2), ("rq_total", 7)],
            )],
        }];
        let expected = "\
web::observability_name::web
web::added_via_api::false
web::10.0.0.1:8080::cx_active::2
web::10.0.0.1:8080::cx_connect_fail::0
web::10.0.0.1:8080::cx_total::0
web::10.0.0.1:8080::rq_active::0
web::10.0.0.1:8080::rq_error::0
web::10.0.0.1:8080::rq_pending_active::0
web::10.0.0.1:8080::rq_success::0
web::10.0.0.1:8080::rq_timeout::0
web::10.0.0.1:8080::rq_total::7
web::10.0.0.1:8080::hostname::
web::10.0.0.1:8080::health_flags::healthy
web::10.0.0.1:8080::weight::3
web::10.0.0.1:8080::region::
web::10.0.0.1:8080::zone::
web::10.0.0.1:8080::sub_zone::
web::10.0.0.1:8080::canary::false
web::10.0.0.1:8080::priority::0
web::10.0.0.1:8080::success_rate::-1
web::10.0.0.1:8080::local_origin_success_rate::-1
";
        assert_eq!(text(&clusters), expected);
    }

    #[test]
    fn json_follows_proto3_defaults() {
        let clusters = vec![ClusterHosts {
            name: "web".into(),
            hosts: vec![host(
                "[fd00::2]:80",
                1,
                &[("cx_active", 2), ("rq_total", 7)],
            )],
        }];
        let json = json(&clusters);
        let host = &json["cluster_statuses"][0]["host_statuses"][0];
        assert_eq!(
            host["address"],
            json!({"socket_address": {"address": "fd00::2", "port_value": 80}})
        );
        assert_eq!(host["stats"][0], json!({"name": "cx_connect_fail"}));
        assert_eq!(host["stats"][5], json!({"name": "rq_total", "value": "7"}));
        assert_eq!(
            host["stats"][6],
            json!({"name": "cx_active", "value": "2", "type": "GAUGE"})
        );
        assert_eq!(host["weight"], 1);
    }
}
