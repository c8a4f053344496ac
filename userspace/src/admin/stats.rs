//! `/stats` (Envoy's text `name: value` lines, `?format=json`, `?format=prometheus`)
//! and `/stats/prometheus`, with Envoy's parameters: `filter` (a regular expression
//! searched in the stat name), `usedonly`, `type` and `pretty`.

use std::fmt::Write as _;

use http::StatusCode;
use regex::Regex;
use serde_json::{json, Value};

use super::handlers::{AdminRequest, AdminResponse};
use super::{prometheus, Admin};
use crate::observe::stats::StatValue;

/// Which stats a request wants (`?type=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatKind {
    All,
    Counters,
    Gauges,
    /// Histograms and text readouts: keel has none yet.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    Json,
    Prometheus,
}

#[derive(Debug)]
struct StatsParams {
    filter: Option<Regex>,
    invert_filter: bool,
    used_only: bool,
    kind: StatKind,
    format: Format,
    pretty: bool,
}

impl StatsParams {
    fn parse(request: &AdminRequest, default: Format) -> Result<StatsParams, AdminResponse> {
        let bad = |message: &str| AdminResponse::text(StatusCode::BAD_REQUEST, message);
        let filter = match request.param("filter").filter(|f| !f.is_empty()) {
            Some(pattern) => Some(Regex::new(pattern).map_err(|_| bad("Invalid re2 regex"))?),
            None => None,
        };
        let kind = match request.param("type").unwrap_or("") {
            "" | "All" => StatKind::All,
            "Counters" => StatKind::Counters,
            "Gauges" => StatKind::Gauges,
            "Histograms" | "TextReadouts" => StatKind::None,
            _ => return Err(bad("invalid &type= param")),
        };
        let format = match request.param("format").unwrap_or("") {
            "" => default,
            "text" => Format::Text,
            "json" => Format::Json,
            "prometheus" => Format::Prometheus,
            _ => return Err(bad("usage: /stats?format=(json|prometheus|text)\n\n")),
        };
        Ok(StatsParams {
            filter,
            invert_filter: request.has("invert_filter"),
            used_only: request.has("usedonly"),
            kind,
            format,
            pretty: request.has("pretty"),
        })
    }

    fn shows(&self, name: &str, value: &StatValue) -> bool {
        let kind = matches!(
            (self.kind, value),
            (StatKind::All, _)
                | (StatKind::Counters, StatValue::Counter(_))
                | (StatKind::Gauges, StatValue::Gauge(_))
        );
        kind && (!self.used_only || prometheus::is_used(value))
            && self
                .filter
                .as_ref()
                .is_none_or(|f| f.is_match(name) != self.invert_filter)
    }
}

fn value_string(value: &StatValue) -> String {
    match value {
        StatValue::Counter(v) => v.to_string(),
        StatValue::Gauge(v) => v.to_string(),
    }
}

/// Envoy's text form: `name: value` per line, sorted by name.
pub(crate) fn text(stats: &[(String, StatValue)]) -> String {
    let mut out = String::new();
    for (name, value) in stats {
        let _ = writeln!(out, "{name}: {}", value_string(value));
    }
    out
}

/// Envoy's JSON form: `{"stats":[{"name":..,"value":..}]}`.
pub(crate) fn json(stats: &[(String, StatValue)]) -> Value {
    let stats: Vec<Value> = stats
        .iter()
        .map(|(name, value)| match value {
            StatValue::Counter(v) => json!({ "name": name, "value": v }),
            StatValue::Gauge(v) => json!({ "name": name, "value": v }),
        })
        .collect();
    json!({ "stats": stats })
}

fn respond(admin: &Admin, request: &AdminRequest, default: Format) -> AdminResponse {
    let params = match StatsParams::parse(request, default) {
        Ok(params) => params,
        Err(response) => return response,
    };
    let snapshot = admin.stats().snapshot();
    let selected: Vec<(String, StatValue)> = snapshot
        .into_iter()
        .filter(|(name, value)| params.shows(name, value))
        .collect();
    match params.format {
        Format::Text => AdminResponse::text(StatusCode::OK, text(&selected)),
        Format::Json => AdminResponse::json_with(StatusCode::OK, &json(&selected), params.pretty),
        Format::Prometheus => {
            AdminResponse::text(StatusCode::OK, prometheus::render(&selected, None, false))
        }
    }
}

/// `/stats`.
pub(crate) fn handle(admin: &Admin, request: &AdminRequest) -> AdminResponse {
    respond(admin, request, Format::Text)
}

/// `/stats/prometheus`.
pub(crate) fn handle_prometheus(admin: &Admin, request: &AdminRequest) -> AdminResponse {
    respond(admin, request, Format::Prometheus)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn sample() -> Vec<(String, StatValue)> {
        vec![
            ("cluster.a.upstream_cx_active".into(), StatValue::Gauge(2)),
            ("cluster.a.upstream_rq_total".into(), StatValue::Counter(0)),
            (
                "http.ingress.downstream_rq_total".into(),
                StatValue::Counter(9),
            ),
        ]
    }

    #[test]
    fn text_is_name_colon_value_per_line() {
        assert_eq!(
            text(&sample()),
            "cluster.a.upstream_cx_active: 2\n\
             cluster.a.upstream_rq_total: 0\n\
             http.ingress.downstream_rq_total: 9\n"
        );
    }

    #[test]
    fn json_lists_name_and_value() {
        assert_eq!(
            json(&sample()[..1]),
            json!({"stats": [{"name": "cluster.a.upstream_cx_active", "value": 2}]})
        );
    }

    #[test]
    fn params_filter_usedonly_and_type() {
        let request = AdminRequest::new(Method::GET, "/stats?filter=%5Ecluster&usedonly");
        let params = StatsParams::parse(&request, Format::Text).expect("valid params");
        let shown: Vec<String> = sample()
            .into_iter()
            .filter(|(n, v)| params.shows(n, v))
            .map(|(n, _)| n)
            .collect();
        assert_eq!(shown, vec!["cluster.a.upstream_cx_active"]);

        let request = AdminRequest::new(Method::GET, "/stats?type=Counters");
        let params = StatsParams::parse(&request, Format::Text).expect("valid params");
        assert!(!params.shows("g", &StatValue::Gauge(1)));
        assert!(params.shows("c", &StatValue::Counter(0)));
    }

    #[test]
    fn bad_params_are_400_with_envoys_messages() {
        for (query, message) in [
            ("/stats?filter=(", "Invalid re2 regex"),
            ("/stats?type=Nope", "invalid &type= param"),
            (
                "/stats?format=xml",
                "usage: /stats?format=(json|prometheus|text)\n\n",
            ),
        ] {
            let request = AdminRequest::new(Method::GET, query);
            let response = StatsParams::parse(&request, Format::Text).expect_err(query);
            assert_eq!(response.status, StatusCode::BAD_REQUEST, "{query}");
            assert_eq!(&response.body[..], message.as_bytes(), "{query}");
        }
    }
}
