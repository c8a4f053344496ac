//! The table of admin endpoints, the request and response types handlers use, and the
//! small endpoints (`/`, `/help`, `/ready`, `/listeners`, `/quitquitquit`,
//! `/hot_restart_version`, `/keel/kernel`).

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::{clusters, config_dump, server_info, stats, Admin, ServerState};
use crate::model::{Balancing, Protocol};

/// `Content-Type` of plain-text responses (Envoy's).
pub(crate) const TEXT: &str = "text/plain; charset=UTF-8";
/// `Content-Type` of JSON responses.
pub(crate) const JSON: &str = "application/json";
/// `Content-Type` of the home page.
pub(crate) const HTML: &str = "text/html; charset=UTF-8";

/// An admin request: method, path and decoded query parameters (the body is not read;
/// no endpoint needs one yet).
#[derive(Debug, Clone)]
pub struct AdminRequest {
    /// The HTTP method.
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    /// Query parameters in order, percent-decoded; a parameter without `=` has an
    /// empty value.
    pub query: Vec<(String, String)>,
}

impl AdminRequest {
    /// A request for `path_and_query` (e.g. `/stats?filter=^http&format=json`).
    pub fn new(method: Method, path_and_query: &str) -> AdminRequest {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let query = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(name), percent_decode(value))
            })
            .collect();
        AdminRequest {
            method,
            path: percent_decode(path),
            query,
        }
    }

    /// The first value of parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether parameter `name` is present (with or without a value), as Envoy's
    /// flags (`usedonly`, `pretty`) are.
    pub fn has(&self, name: &str) -> bool {
        self.param(name).is_some()
    }
}

/// Decodes `%XX` escapes; a malformed escape is kept as is. `+` stays a `+` (filters
/// are regular expressions, where `+` means something).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An admin response.
#[derive(Debug, Clone)]
pub struct AdminResponse {
    /// Status code.
    pub status: StatusCode,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Bytes,
}

impl AdminResponse {
    /// A plain-text response.
    pub fn text(status: StatusCode, body: impl Into<String>) -> AdminResponse {
        AdminResponse {
            status,
            content_type: TEXT,
            body: Bytes::from(body.into()),
        }
    }

    /// A JSON response, pretty-printed as Envoy prints its admin JSON.
    pub fn json(status: StatusCode, value: &Value) -> AdminResponse {
        AdminResponse::json_with(status, value, true)
    }

    /// A JSON response, pretty-printed or compact.
    pub fn json_with(status: StatusCode, value: &Value, pretty: bool) -> AdminResponse {
        let mut body = Vec::new();
        let written = if pretty {
            // Envoy's protobuf JSON printer indents by one space.
            let formatter = serde_json::ser::PrettyFormatter::with_indent(b" ");
            let mut serializer = serde_json::Serializer::with_formatter(&mut body, formatter);
            serde::Serialize::serialize(value, &mut serializer)
        } else {
            serde_json::to_writer(&mut body, value)
        };
        if let Err(e) = written {
            return AdminResponse::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot serialise the response: {e}\n"),
            );
        }
        body.push(b'\n');
        AdminResponse {
            status,
            content_type: JSON,
            body: Bytes::from(body),
        }
    }

    /// An HTML response.
    pub fn html(status: StatusCode, body: String) -> AdminResponse {
        AdminResponse {
            status,
            content_type: HTML,
            body: Bytes::from(body),
        }
    }
}

/// What an endpoint runs.
pub type HandlerFn = Arc<dyn Fn(&Admin, &AdminRequest) -> AdminResponse + Send + Sync>;

/// One admin endpoint: a path (matched exactly, as Envoy does), its help line and
/// parameters, and the function that answers it.
#[derive(Clone)]
pub struct Handler {
    /// The path, e.g. `/stats/prometheus`.
    pub path: &'static str,
    /// One line for `/help` and the home page.
    pub help: &'static str,
    /// Query parameters with one line of help each (listed by `/help`).
    pub params: Vec<(&'static str, &'static str)>,
    /// The endpoint changes the server: only POST is accepted (Envoy answers 405).
    pub mutates_state: bool,
    /// The function may block (a lock, syscalls): it runs on the blocking pool so the
    /// admin thread keeps answering other requests.
    pub blocking: bool,
    /// The function.
    pub run: HandlerFn,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("path", &self.path)
            .field("mutates_state", &self.mutates_state)
            .field("blocking", &self.blocking)
            .finish_non_exhaustive()
    }
}

impl Handler {
    /// A read-only, non-blocking endpoint.
    pub fn new(
        path: &'static str,
        help: &'static str,
        run: impl Fn(&Admin, &AdminRequest) -> AdminResponse + Send + Sync + 'static,
    ) -> Handler {
        Handler {
            path,
            help,
            params: Vec::new(),
            mutates_state: false,
            blocking: false,
            run: Arc::new(run),
        }
    }

    /// Documents a query parameter.
    pub fn param(mut self, name: &'static str, help: &'static str) -> Handler {
        self.params.push((name, help));
        self
    }

    /// Marks the endpoint as changing the server (POST only).
    pub fn mutating(mut self) -> Handler {
        self.mutates_state = true;
        self
    }

    /// Marks the endpoint as possibly blocking.
    pub fn blocking(mut self) -> Handler {
        self.blocking = true;
        self
    }
}

/// Envoy's endpoints that keel serves, and keel's own.
pub(super) fn defaults() -> Vec<Handler> {
    vec![
        Handler::new("/", "Admin home page", home),
        Handler::new("/help", "print out list of admin commands", help),
        Handler::new(
            "/ready",
            "print server state, return 200 if LIVE, otherwise return 503",
            ready,
        ),
        Handler::new(
            "/server_info",
            "print server version/status information",
            server_info::handle,
        ),
        Handler::new(
            "/hot_restart_version",
            "print the hot restart compatibility version",
            |_, _| AdminResponse::text(StatusCode::OK, server_info::HOT_RESTART_VERSION),
        ),
        Handler::new("/stats", "print server stats", stats::handle)
            .param("usedonly", USED_ONLY)
            .param(
                "filter",
                "Regular expression (Google re2) for filtering stats",
            )
            .param("invert_filter", "Invert the filter regex")
            .param("format", "Format to use; One of (text, json, prometheus)")
            .param(
                "type",
                "Stat types to include.; One of (All, Counters, Histograms, Gauges, \
                 TextReadouts)",
            ),
        Handler::new(
            "/stats/prometheus",
            "print server stats in prometheus format",
            stats::handle_prometheus,
        )
        .param("usedonly", USED_ONLY)
        .param(
            "filter",
            "Regular expression (Google re2) for filtering stats",
        )
        .param("invert_filter", "Invert the filter regex"),
        Handler::new("/listeners", "print listener info", listeners)
            .param("format", "File format to use; One of (text, json)"),
        Handler::new("/clusters", "upstream cluster status", clusters::handle)
            .param(
                "filter",
                "Regular expression (Google re2) for filtering clusters by name",
            )
            .param("format", "File format to use; One of (text, json)")
            .blocking(),
        Handler::new(
            "/config_dump",
            "dump current Envoy configs",
            config_dump::handle,
        )
        .param("resource", "The resource to dump"),
        Handler::new("/quitquitquit", "exit the server", quitquitquit).mutating(),
        Handler::new(
            "/keel/kernel",
            "keel: what the kernel data path balances (services, backends, connections)",
            kernel,
        )
        .blocking(),
    ]
}

/// Envoy's help for `usedonly`. keel's store cannot tell whether a stat was ever
/// written, so "used" means "not zero" here.
const USED_ONLY: &str = "Only include stats that have been written by system since restart";

/// The help text: "admin commands are:" then one line per endpoint, sorted by path,
/// `(POST)` after those that change the server, their parameters indented below.
pub(super) fn help_text(admin: &Admin) -> String {
    let mut handlers: Vec<&Handler> = admin.handlers.iter().collect();
    handlers.sort_by_key(|h| h.path);
    let mut out = String::from("admin commands are:\n");
    for handler in handlers {
        let post = if handler.mutates_state { " (POST)" } else { "" };
        let _ = writeln!(out, "  {}{post}: {}", handler.path, handler.help);
        for (name, help) in &handler.params {
            let _ = writeln!(out, "      {name}: {help}");
        }
    }
    out
}

fn help(admin: &Admin, _: &AdminRequest) -> AdminResponse {
    AdminResponse::text(StatusCode::OK, help_text(admin))
}

/// Envoy's answer to an unknown path: 404 with the list of endpoints.
pub(super) fn not_found(admin: &Admin) -> AdminResponse {
    AdminResponse::text(
        StatusCode::NOT_FOUND,
        format!("invalid path. {}", help_text(admin)),
    )
}

/// Envoy's answer to a GET on an endpoint that changes the server.
pub(super) fn post_required(method: &Method) -> AdminResponse {
    AdminResponse::text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("Method {method} not allowed, POST required."),
    )
}

fn home(admin: &Admin, _: &AdminRequest) -> AdminResponse {
    let mut handlers: Vec<&Handler> = admin.handlers.iter().collect();
    handlers.sort_by_key(|h| h.path);
    let mut rows = String::new();
    for h in handlers.iter().filter(|h| h.path != "/") {
        let path = html_escape(h.path);
        let command = if h.mutates_state {
            format!(
                "<form action='{path}' method='post' class='home-form'>\
                 <button class='button-link'>{path}</button></form>"
            )
        } else {
            format!("<a href='{path}'>{path}</a>")
        };
        let _ = writeln!(
            rows,
            "      <tr class='home-row'><td class='home-data'>{command}</td>\
             <td class='home-data'>{}</td></tr>",
            html_escape(h.help)
        );
    }
    let version = html_escape(&server_info::version());
    AdminResponse::html(
        StatusCode::OK,
        format!(
            "<!DOCTYPE html>\n<html>\n<head>\n  <title>keel admin</title>\n  <style>\n    \
             .home-table {{ font-family: sans-serif; border-collapse: collapse; }}\n    \
             .home-row:nth-child(even) {{ background-color: #dddddd; }}\n    \
             .home-data {{ border: 1px solid #dddddd; text-align: left; padding: 8px; }}\n    \
             .home-form {{ margin-bottom: 0; }}\n  </style>\n</head>\n<body>\n  \
             <p>keel {version}</p>\n  <table class='home-table'>\n    <thead>\n      \
             <th class='home-data'>Command</th>\n      \
             <th class='home-data'>Description</th>\n    </thead>\n    <tbody>\n\
             {rows}    </tbody>\n  </table>\n</body>\n</html>\n"
        ),
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#39;")
        .replace('"', "&quot;")
}

/// `/ready`: the state name and 200 when LIVE, 503 otherwise.
fn ready(admin: &Admin, _: &AdminRequest) -> AdminResponse {
    let state = admin.state();
    let status = if state == ServerState::Live {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    AdminResponse::text(status, format!("{}\n", state.as_str()))
}

/// `/quitquitquit`: asks for the same shutdown as SIGTERM.
fn quitquitquit(admin: &Admin, _: &AdminRequest) -> AdminResponse {
    tracing::info!("shutdown requested through the admin API (/quitquitquit)");
    admin.request_quit();
    AdminResponse::text(StatusCode::OK, "OK\n")
}

/// `/listeners`: `name::address` per line, or Envoy's `admin.v3.Listeners` as JSON.
fn listeners(admin: &Admin, request: &AdminRequest) -> AdminResponse {
    let view = admin.config();
    let listeners = &view.bootstrap.listeners;
    if request.param("format") == Some("json") {
        let statuses: Vec<Value> = listeners
            .iter()
            .map(|l| {
                json!({
                    "name": l.name,
                    "local_address": address_json(view.listener_address(l), l.protocol),
                })
            })
            .collect();
        return AdminResponse::json(StatusCode::OK, &json!({ "listener_statuses": statuses }));
    }
    AdminResponse::text(StatusCode::OK, listeners_text(&view))
}

/// The text form of `/listeners`.
pub(super) fn listeners_text(view: &super::ConfigView) -> String {
    let mut out = String::new();
    for listener in &view.bootstrap.listeners {
        let _ = writeln!(
            out,
            "{}::{}",
            listener.name,
            view.listener_address(listener)
        );
    }
    out
}

/// `config.core.v3.Address` as proto3 JSON (`protocol` is left out when TCP, its
/// default).
pub(super) fn address_json(address: std::net::SocketAddr, protocol: Protocol) -> Value {
    let mut socket_address = json!({
        "address": address.ip().to_string(),
        "port_value": address.port(),
    });
    if protocol == Protocol::Udp {
        socket_address["protocol"] = json!("UDP");
    }
    json!({ "socket_address": socket_address })
}

/// `/keel/kernel`: what the kernel balances, read back from the BPF maps.
fn kernel(admin: &Admin, _: &AdminRequest) -> AdminResponse {
    let view = admin.config();
    let Some(snapshot) = admin.kernel() else {
        return AdminResponse::json(
            StatusCode::OK,
            &json!({
                "loaded": false,
                "built_in": crate::datapath::is_built_in(),
                "services": [],
            }),
        );
    };
    let listener_of = |address: std::net::SocketAddr| {
        view.bootstrap
            .listeners
            .iter()
            .find(|l| l.balancing == Balancing::Kernel && l.address == address)
            .map(|l| l.name.clone())
    };
    let services: Vec<Value> = snapshot
        .services
        .iter()
        .map(|s| {
            let backends: Vec<Value> = s
                .backends
                .iter()
                .map(|(address, weight, connections)| {
                    json!({
                        "address": address.to_string(),
                        "weight": weight,
                        "active_connections": connections,
                    })
                })
                .collect();
            json!({
                "address": s.address.to_string(),
                "listener": listener_of(s.address),
                "policy": s.policy,
                "backend_set": s.backend_set,
                "backends": backends,
            })
        })
        .collect();
    let connections: serde_json::Map<String, Value> = snapshot
        .endpoint_connections
        .iter()
        .map(|(address, n)| (address.to_string(), json!(n)))
        .collect();
    AdminResponse::json(
        StatusCode::OK,
        &json!({
            "loaded": true,
            "built_in": true,
            "cgroup": snapshot.cgroup.display().to_string(),
            "tracked_sockets": snapshot.tracked_sockets,
            "services": services,
            "endpoint_connections": connections,
        }),
    )
}
