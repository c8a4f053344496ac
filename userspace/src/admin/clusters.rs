//! `/clusters`: Envoy's per-host text lines (`cluster::host:port::stat::value`) or,
//! with `?format=json`, `envoy.admin.v3.Clusters`.
//!
//! Hosts come from the live clusters ([`crate::upstream::Upstreams`], published with
//! [`Admin::set_upstreams`]): their health flags (`/failed_active_hc`,
//! `/failed_outlier_check`, ...), priority, success rates and per-host counters
//! ([`crate::upstream::HostStats`]). Clusters no HTTP listener uses (tcp_proxy,
//! kernel) show their configured endpoints, and per-host stats recorded in the stats
//! store under Envoy's per-endpoint names,
//! `cluster.<cluster>.endpoint.<ip>_<port>.<stat>` (see [`endpoint_stat_name`]), are
//! added in. For clusters behind a kernel-balanced listener, `cx_active` falls back to
//! the kernel's own count of the endpoint's connections.
//!
//! Circuit-breaker lines show the cluster's thresholds at both priorities (Envoy's
//! defaults, 1024 connections, pending requests and requests and 3 retries, where
//! `circuit_breakers` leaves them out). Region, zone and sub_zone are the host's
//! locality; canary is not kept, so it is false.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use http::StatusCode;
use regex::Regex;
use serde_json::{json, Map, Value};

use super::handlers::{address_json, AdminRequest, AdminResponse};
use super::Admin;
use crate::model::breakers::{RoutingPriority, Thresholds};
use crate::model::{Balancing, Bootstrap, Locality, NetworkFilter, Protocol};
use crate::observe::stats::StatValue;
use crate::upstream::outlier::SuccessRateFigures;
use crate::upstream::HealthFlags;

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

/// Envoy's health flags in the order `/clusters` lists them, with their text and
/// JSON (`envoy.admin.v3.HostHealthStatus`) names.
const FLAG_NAMES: [(u32, &str, &str); 4] = [
    (
        HealthFlags::FAILED_ACTIVE_HC,
        "/failed_active_hc",
        "failed_active_health_check",
    ),
    (
        HealthFlags::FAILED_OUTLIER_CHECK,
        "/failed_outlier_check",
        "failed_outlier_check",
    ),
    (
        HealthFlags::PENDING_ACTIVE_HC,
        "/pending_active_hc",
        "pending_active_hc",
    ),
    (
        HealthFlags::ACTIVE_HC_TIMEOUT,
        "/active_hc_timeout",
        "active_hc_timeout",
    ),
];

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
    priority: u32,
    locality: Locality,
    /// [`HealthFlags`] bits.
    flags: u32,
    /// Percent, or negative when not computed.
    success_rate: f64,
    local_origin_success_rate: f64,
    stats: HostStats,
}

/// One cluster and its hosts.
struct ClusterHosts {
    name: String,
    /// `max_connections`, `max_pending_requests`, `max_requests`, `max_retries` at the
    /// DEFAULT and the HIGH priority.
    thresholds: [[(&'static str, u64); 4]; 2],
    /// Success-rate figures when the cluster has outlier detection.
    outlier: Option<SuccessRateFigures>,
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

/// A live host's own counter or gauge (0 for those keel does not keep).
fn live_stat(host: &crate::upstream::Host, stat: &str) -> i128 {
    let s = &host.stats;
    match stat {
        "cx_connect_fail" => i128::from(s.cx_connect_fail.load(Ordering::Relaxed)),
        "cx_total" => i128::from(s.cx_total.load(Ordering::Relaxed)),
        "rq_error" => i128::from(s.rq_error.load(Ordering::Relaxed)),
        "rq_success" => i128::from(s.rq_success.load(Ordering::Relaxed)),
        "rq_timeout" => i128::from(s.rq_timeout.load(Ordering::Relaxed)),
        "rq_total" => i128::from(s.rq_total.load(Ordering::Relaxed)),
        "cx_active" => i128::from(s.cx_active.load(Ordering::Relaxed)),
        "rq_active" => i128::from(s.rq_active.load(Ordering::Relaxed)),
        _ => 0,
    }
}

/// Envoy's text for a host's flags: `healthy`, or the flags as `/flag/flag`.
fn flags_text(flags: u32) -> String {
    let text: String = FLAG_NAMES
        .iter()
        .filter(|(bit, _, _)| flags & bit != 0)
        .map(|(_, name, _)| *name)
        .collect();
    if text.is_empty() {
        "healthy".into()
    } else {
        text
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
    let upstreams = admin.upstreams();
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
    // A stat from the stats store (tcp_proxy records per-endpoint stats there).
    let stored = |cluster: &str, address: SocketAddr, stat: &str| -> Option<i128> {
        match snapshot.get(&endpoint_stat_name(cluster, address, stat)) {
            Some(StatValue::Counter(v)) => Some(i128::from(*v)),
            Some(StatValue::Gauge(v)) => Some(i128::from(*v)),
            None => None,
        }
    };
    let values = |cluster: &str, address: SocketAddr, live: Option<&crate::upstream::Host>| {
        let mut values = BTreeMap::new();
        for &stat in HOST_COUNTERS.iter().chain(HOST_GAUGES) {
            let store = stored(cluster, address, stat);
            let value = match store {
                None if stat == "cx_active" && kernel_fed.contains(cluster) => kernel_connections
                    .get(&address)
                    .map(|n| i128::from(*n))
                    .unwrap_or(0),
                _ => store.unwrap_or(0),
            };
            values.insert(stat, value + live.map_or(0, |h| live_stat(h, stat)));
        }
        HostStats { values }
    };
    bootstrap
        .clusters
        .iter()
        .filter(|cluster| filter.is_none_or(|f| f.is_match(&cluster.name)))
        .map(|cluster| {
            let live = upstreams.as_ref().and_then(|u| u.get(&cluster.name));
            let localities = cluster.effective_localities();
            let hosts = match live {
                Some(live) => {
                    let set = live.hosts();
                    set.hosts
                        .iter()
                        .enumerate()
                        .map(|(i, host)| Host {
                            address: host.address,
                            weight: host.weight,
                            priority: host.priority,
                            locality: set
                                .localities
                                .of_host
                                .get(i)
                                .and_then(|&l| localities.get(l as usize))
                                .map(|l| l.locality.clone())
                                .unwrap_or_default(),
                            flags: host.health.get(),
                            success_rate: host.outlier.success_rate(),
                            local_origin_success_rate: host.outlier.local_origin_success_rate(),
                            stats: values(&cluster.name, host.address, Some(host)),
                        })
                        .collect()
                }
                None => cluster
                    .endpoints
                    .iter()
                    .map(|endpoint| Host {
                        address: endpoint.address,
                        weight: endpoint.weight,
                        priority: 0,
                        locality: Locality::default(),
                        flags: 0,
                        success_rate: -1.0,
                        local_origin_success_rate: -1.0,
                        stats: values(&cluster.name, endpoint.address, None),
                    })
                    .collect(),
            };
            let breakers = &cluster.circuit_breakers;
            ClusterHosts {
                name: cluster.name.clone(),
                thresholds: [
                    thresholds(breakers.at(RoutingPriority::Default)),
                    thresholds(breakers.at(RoutingPriority::High)),
                ],
                outlier: live
                    .and_then(|l| l.health.outlier.as_ref())
                    .map(|d| d.figures())
                    .or_else(|| cluster.outlier_detection.as_ref().map(|_| no_figures())),
                hosts,
            }
        })
        .collect()
}

/// A priority's thresholds as `/clusters` lists them.
fn thresholds(t: &Thresholds) -> [(&'static str, u64); 4] {
    [
        ("max_connections", u64::from(t.max_connections)),
        ("max_pending_requests", u64::from(t.max_pending_requests)),
        ("max_requests", u64::from(t.max_requests)),
        ("max_retries", u64::from(t.max_retries)),
    ]
}

fn no_figures() -> SuccessRateFigures {
    SuccessRateFigures {
        success_rate_average: -1.0,
        success_rate_ejection_threshold: -1.0,
        local_origin_success_rate_average: -1.0,
        local_origin_success_rate_ejection_threshold: -1.0,
    }
}

/// The text form, line for line as Envoy 1.40 prints it.
fn text(clusters: &[ClusterHosts]) -> String {
    let mut out = String::new();
    for ClusterHosts {
        name,
        thresholds,
        outlier,
        hosts,
    } in clusters
    {
        let _ = writeln!(out, "{name}::observability_name::{name}");
        if let Some(figures) = outlier {
            let _ = writeln!(
                out,
                "{name}::outlier::success_rate_average::{}",
                figures.success_rate_average
            );
            let _ = writeln!(
                out,
                "{name}::outlier::success_rate_ejection_threshold::{}",
                figures.success_rate_ejection_threshold
            );
            let _ = writeln!(
                out,
                "{name}::outlier::local_origin_success_rate_average::{}",
                figures.local_origin_success_rate_average
            );
            let _ = writeln!(
                out,
                "{name}::outlier::local_origin_success_rate_ejection_threshold::{}",
                figures.local_origin_success_rate_ejection_threshold
            );
        }
        for (priority, values) in ["default_priority", "high_priority"].iter().zip(thresholds) {
            for (threshold, value) in values {
                let _ = writeln!(out, "{name}::{priority}::{threshold}::{value}");
            }
        }
        let _ = writeln!(out, "{name}::added_via_api::false");
        for host in hosts {
            let prefix = format!("{name}::{}", host.address);
            for (stat, value) in &host.stats.values {
                let _ = writeln!(out, "{prefix}::{stat}::{value}");
            }
            let _ = writeln!(out, "{prefix}::hostname::");
            let _ = writeln!(out, "{prefix}::health_flags::{}", flags_text(host.flags));
            let _ = writeln!(out, "{prefix}::weight::{}", host.weight);
            let _ = writeln!(out, "{prefix}::region::{}", host.locality.region);
            let _ = writeln!(out, "{prefix}::zone::{}", host.locality.zone);
            let _ = writeln!(out, "{prefix}::sub_zone::{}", host.locality.sub_zone);
            let _ = writeln!(out, "{prefix}::canary::false");
            let _ = writeln!(out, "{prefix}::priority::{}", host.priority);
            let _ = writeln!(out, "{prefix}::success_rate::{}", host.success_rate);
            let _ = writeln!(
                out,
                "{prefix}::local_origin_success_rate::{}",
                host.local_origin_success_rate
            );
        }
    }
    out
}

/// `envoy.type.v3.Percent` when `x` was computed: `{"value": x}`, or `{}` for 0 (a
/// proto3 default), as Envoy prints it.
fn percent(value: f64) -> Option<Value> {
    if value < 0.0 {
        return None;
    }
    if value == 0.0 {
        return Some(json!({}));
    }
    if value.fract() == 0.0 && value <= 100.0 {
        return Some(json!({ "value": value as i64 }));
    }
    Some(json!({ "value": value }))
}

/// `envoy.admin.v3.Clusters` in proto3 JSON (zero values and the default COUNTER type
/// left out, uint64 as strings).
fn json(clusters: &[ClusterHosts]) -> Value {
    let statuses: Vec<Value> = clusters
        .iter()
        .map(
            |ClusterHosts {
                 name,
                 thresholds,
                 outlier,
                 hosts,
             }| {
                let hosts: Vec<Value> = hosts.iter().map(host_json).collect();
                let threshold = |priority: Option<&str>, values: &[(&str, u64); 4]| {
                    let mut m = Map::new();
                    if let Some(priority) = priority {
                        m.insert("priority".into(), json!(priority));
                    }
                    for (name, value) in values {
                        m.insert((*name).into(), json!(value));
                    }
                    Value::Object(m)
                };
                let mut cluster = Map::new();
                cluster.insert("name".into(), json!(name));
                cluster.insert("observability_name".into(), json!(name));
                cluster.insert("host_statuses".into(), Value::Array(hosts));
                cluster.insert(
                    "circuit_breakers".into(),
                    json!({"thresholds": [
                        threshold(None, &thresholds[0]),
                        threshold(Some("HIGH"), &thresholds[1]),
                    ]}),
                );
                if let Some(figures) = outlier {
                    if let Some(v) = percent(figures.success_rate_ejection_threshold) {
                        cluster.insert("success_rate_ejection_threshold".into(), v);
                    }
                    if let Some(v) = percent(figures.local_origin_success_rate_ejection_threshold) {
                        cluster.insert("local_origin_success_rate_ejection_threshold".into(), v);
                    }
                }
                Value::Object(cluster)
            },
        )
        .collect();
    json!({ "cluster_statuses": statuses })
}

fn host_json(host: &Host) -> Value {
    let metric = |stat: &str, gauge: bool| {
        let mut m = Map::new();
        m.insert("name".into(), json!(stat));
        let value = host.stats.get(stat);
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
    let mut health = Map::new();
    for (bit, _, name) in FLAG_NAMES {
        if host.flags & bit != 0 {
            health.insert(name.into(), json!(true));
        }
    }
    health.insert("eds_health_status".into(), json!("HEALTHY"));
    let mut out = Map::new();
    out.insert("address".into(), address_json(host.address, Protocol::Tcp));
    out.insert("stats".into(), Value::Array(metrics));
    out.insert("health_status".into(), Value::Object(health));
    out.insert("weight".into(), json!(host.weight));
    let mut locality = Map::new();
    for (key, value) in [
        ("region", &host.locality.region),
        ("zone", &host.locality.zone),
        ("sub_zone", &host.locality.sub_zone),
    ] {
        if !value.is_empty() {
            locality.insert(key.into(), json!(value));
        }
    }
    out.insert("locality".into(), Value::Object(locality));
    if host.priority != 0 {
        out.insert("priority".into(), json!(host.priority));
    }
    if let Some(v) = percent(host.success_rate) {
        out.insert("success_rate".into(), v);
    }
    if let Some(v) = percent(host.local_origin_success_rate) {
        out.insert("local_origin_success_rate".into(), v);
    }
    Value::Object(out)
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
            locality: Locality::default(),
            address: address.parse().unwrap(),
            weight,
            priority: 0,
            flags: 0,
            success_rate: -1.0,
            local_origin_success_rate: -1.0,
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
            thresholds: [
                thresholds(&Thresholds::default()),
                thresholds(&Thresholds::default()),
            ],
            name: "web".into(),
            outlier: None,
            hosts: vec![host(
                "10.0.0.1:8080",
                3,
                &[("cx_active", 2), ("rq_total", 7)],
            )],
        }];
        let expected = "\
web::observability_name::web
web::default_priority::max_connections::1024
web::default_priority::max_pending_requests::1024
web::default_priority::max_requests::1024
web::default_priority::max_retries::3
web::high_priority::max_connections::1024
web::high_priority::max_pending_requests::1024
web::high_priority::max_requests::1024
web::high_priority::max_retries::3
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
            thresholds: [
                thresholds(&Thresholds::default()),
                thresholds(&Thresholds::default()),
            ],
            name: "web".into(),
            outlier: None,
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

#[cfg(test)]
mod health_tests {
    use super::*;

    #[test]
    fn flags_print_in_envoys_order() {
        assert_eq!(flags_text(0), "healthy");
        assert_eq!(
            flags_text(HealthFlags::PENDING_ACTIVE_HC | HealthFlags::FAILED_ACTIVE_HC),
            "/failed_active_hc/pending_active_hc"
        );
        assert_eq!(
            flags_text(
                HealthFlags::ACTIVE_HC_TIMEOUT
                    | HealthFlags::FAILED_OUTLIER_CHECK
                    | HealthFlags::FAILED_ACTIVE_HC
            ),
            "/failed_active_hc/failed_outlier_check/active_hc_timeout"
        );
    }

    #[test]
    fn outlier_lines_and_json_health_status() {
        let clusters = vec![ClusterHosts {
            thresholds: [
                thresholds(&Thresholds::default()),
                thresholds(&Thresholds::default()),
            ],
            name: "hc".into(),
            outlier: Some(SuccessRateFigures {
                success_rate_average: 90.5,
                success_rate_ejection_threshold: 52.0,
                local_origin_success_rate_average: -1.0,
                local_origin_success_rate_ejection_threshold: -1.0,
            }),
            hosts: vec![Host {
                locality: Locality::default(),
                address: "127.0.0.1:19002".parse().unwrap(),
                weight: 1,
                priority: 1,
                flags: HealthFlags::FAILED_ACTIVE_HC | HealthFlags::FAILED_OUTLIER_CHECK,
                success_rate: 40.0,
                local_origin_success_rate: -1.0,
                stats: HostStats {
                    values: BTreeMap::new(),
                },
            }],
        }];
        let text = text(&clusters);
        for line in [
            "hc::outlier::success_rate_average::90.5",
            "hc::outlier::success_rate_ejection_threshold::52",
            "hc::outlier::local_origin_success_rate_average::-1",
            "hc::127.0.0.1:19002::health_flags::/failed_active_hc/failed_outlier_check",
            "hc::127.0.0.1:19002::priority::1",
            "hc::127.0.0.1:19002::success_rate::40",
            "hc::127.0.0.1:19002::local_origin_success_rate::-1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
        let json = json(&clusters);
        let cluster = &json["cluster_statuses"][0];
        assert_eq!(
            cluster["success_rate_ejection_threshold"],
            json!({"value": 52})
        );
        assert!(cluster
            .get("local_origin_success_rate_ejection_threshold")
            .is_none());
        let host = &cluster["host_statuses"][0];
        assert_eq!(
            host["health_status"],
            json!({
                "failed_active_health_check": true,
                "failed_outlier_check": true,
                "eds_health_status": "HEALTHY"
            })
        );
        assert_eq!(host["success_rate"], json!({"value": 40}));
        assert_eq!(percent(0.0), Some(json!({})), "0 is a proto3 default");
        assert_eq!(percent(66.5), Some(json!({"value": 66.5})));
        assert_eq!(
            cluster["circuit_breakers"]["thresholds"][1],
            json!({"priority": "HIGH", "max_connections": 1024, "max_pending_requests": 1024,
                   "max_requests": 1024, "max_retries": 3})
        );
    }
}

#[cfg(test)]
mod live_tests {
    //! `/clusters` over live, health-checked hosts.

    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use http::Method;

    use super::*;
    use crate::upstream::{health, Upstreams};

    fn body(admin: &Admin, path: &str) -> String {
        let response = handle(admin, &AdminRequest::new(Method::GET, path));
        assert_eq!(response.status, StatusCode::OK);
        String::from_utf8(response.body.to_vec()).expect("UTF-8")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clusters_show_health_flags_of_live_hosts() {
        let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = open.local_addr().map(|a| (open, a)).unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let yaml = format!(
            r#"
static_resources:
  clusters:
  - name: hc_admin
    connect_timeout: 1s
    load_assignment:
      cluster_name: hc_admin
      endpoints:
      - locality: {{region: eu-west, zone: eu-west-1a, sub_zone: rack-7}}
        lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}
          load_balancing_weight: 3
    circuit_breakers:
      thresholds:
      - {{max_connections: 7, max_requests: 9}}
      - {{priority: HIGH, max_retries: 5}}
    health_checks:
    - timeout: 1s
      interval: 60s
      unhealthy_threshold: 1
      healthy_threshold: 1
      initial_jitter: 0.3s
      tcp_health_check: {{}}
    outlier_detection: {{}}
"#,
            open.1.port(),
            closed.port()
        );
        let bootstrap = crate::config::load_str(&yaml, crate::config::Format::Yaml).unwrap();
        let upstreams = Arc::new(Upstreams::new(&bootstrap.clusters));
        let admin = Admin::new(Arc::new(bootstrap), Default::default());
        admin.set_upstreams(Some(Arc::clone(&upstreams)));
        let (a, c) = (
            format!("hc_admin::{}", open.1),
            format!("hc_admin::{closed}"),
        );

        // Before the first check (initial_jitter delays it): out of rotation, as Envoy.
        let checkers = health::start(&upstreams).unwrap();
        let text = body(&admin, "/clusters");
        for line in [
            format!("{a}::health_flags::/failed_active_hc"),
            format!("{c}::health_flags::/failed_active_hc"),
            format!("{c}::weight::3"),
            "hc_admin::outlier::success_rate_average::-1".to_string(),
            "hc_admin::default_priority::max_connections::7".to_string(),
            "hc_admin::default_priority::max_pending_requests::1024".to_string(),
            "hc_admin::default_priority::max_requests::9".to_string(),
            "hc_admin::high_priority::max_connections::1024".to_string(),
            "hc_admin::high_priority::max_retries::5".to_string(),
            format!("{a}::region::eu-west"),
            format!("{a}::zone::eu-west-1a"),
            format!("{c}::sub_zone::rack-7"),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }

        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = body(&admin, "/clusters");
            if text.contains(&format!("{a}::health_flags::healthy\n")) {
                assert!(
                    text.contains(&format!("{c}::health_flags::/failed_active_hc\n")),
                    "{text}"
                );
                break;
            }
            assert!(Instant::now() < deadline, "no check passed:\n{text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let json: Value =
            serde_json::from_str(&body(&admin, "/clusters?format=json")).expect("JSON");
        let hosts = &json["cluster_statuses"][0]["host_statuses"];
        assert_eq!(
            hosts[0]["health_status"],
            json!({"eds_health_status": "HEALTHY"})
        );
        assert_eq!(
            hosts[1]["health_status"],
            json!({"failed_active_health_check": true, "eds_health_status": "HEALTHY"})
        );
        assert_eq!(
            hosts[0]["locality"],
            json!({"region": "eu-west", "zone": "eu-west-1a", "sub_zone": "rack-7"})
        );
        assert_eq!(
            json["cluster_statuses"][0]["circuit_breakers"]["thresholds"][0]["max_connections"],
            json!(7)
        );
        drop(checkers);
    }
}
