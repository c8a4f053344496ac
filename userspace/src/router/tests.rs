//! Route-table tests: domains, matchers, rewrites, redirects, clusters, header
//! mutations.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::model::http::{
    AppendAction, ClusterSpecifier, ForwardAction, HeaderMatcher, HeaderMutations,
    HeaderValueOption, HostRewrite, PathMatch, QueryParameterMatcher, Redirect, Route, RouteAction,
    RouteConfig, RouteMatch, StringMatchKind, StringMatcher, ValueMatch, VirtualHost,
};
use crate::observe::StreamInfo;

// ------------------------------------------------------------------------------
// Builders
// ------------------------------------------------------------------------------

fn forward(cluster: &str) -> ForwardAction {
    ForwardAction {
        cluster: ClusterSpecifier::Cluster(cluster.into()),
        prefix_rewrite: None,
        regex_rewrite: None,
        host_rewrite: HostRewrite::None,
        cluster_not_found_status: 503,
        timeout: Some(Duration::from_secs(15)),
        idle_timeout: None,
        upgrades: Vec::new(),
        max_stream_duration: None,
        mirrors: Vec::new(),
        retry_policy: None,
        hash_policy: Vec::new(),
        options: Default::default(),
    }
}

fn matcher(path: PathMatch) -> RouteMatch {
    RouteMatch {
        path,
        case_sensitive: true,
        headers: Vec::new(),
        query_parameters: Vec::new(),
        grpc: false,
        runtime_fraction_ppm: None,
    }
}

fn route_to(name: &str, path: PathMatch, cluster: &str) -> Route {
    Route {
        name: name.into(),
        matcher: matcher(path),
        action: RouteAction::Forward(Box::new(forward(cluster))),
        headers: HeaderMutations::default(),
        decorator: None,
        metadata: None,
    }
}

fn prefix(p: &str) -> PathMatch {
    PathMatch::Prefix(p.into())
}

fn vhost(name: &str, domains: &[&str], routes: Vec<Route>) -> VirtualHost {
    VirtualHost {
        name: name.into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        routes,
        headers: HeaderMutations::default(),
        options: Default::default(),
    }
}

fn catch_all(name: &str, domains: &[&str]) -> VirtualHost {
    vhost(name, domains, vec![route_to(name, prefix("/"), name)])
}

fn config(virtual_hosts: Vec<VirtualHost>) -> RouteConfig {
    RouteConfig {
        name: "test".into(),
        virtual_hosts,
        headers: HeaderMutations::default(),
        options: Default::default(),
    }
}

fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut builder = http::Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap().into_parts().0
}

fn get(uri: &str, host: &str) -> http::request::Parts {
    request("GET", uri, &[("host", host)])
}

fn regex(re: &str) -> regex::Regex {
    regex::Regex::new(re).unwrap()
}

fn string_match(kind: StringMatchKind, value: &str, ignore_case: bool) -> ValueMatch {
    ValueMatch::String(StringMatcher {
        kind,
        value: value.into(),
        ignore_case,
    })
}

fn header_matcher(name: &str, rule: ValueMatch) -> HeaderMatcher {
    HeaderMatcher {
        name: name.into(),
        rule,
        invert: false,
        treat_missing_as_empty: false,
    }
}

fn add(name: &str, value: &str, action: AppendAction) -> HeaderValueOption {
    HeaderValueOption {
        name: name.into(),
        value: value.into(),
        action,
        keep_empty_value: false,
    }
}

fn stream_info() -> StreamInfo {
    StreamInfo::new(
        "10.1.2.3:5555".parse::<SocketAddr>().unwrap(),
        "10.0.0.1:80".parse::<SocketAddr>().unwrap(),
        "HTTP/1.1",
    )
}

/// The name of the virtual host chosen for `host`.
fn vhost_name<'t>(table: &'t RouteTable, host: &str) -> Option<&'t str> {
    table
        .virtual_host_for(&get("/", host))
        .map(|v| v.name.as_str())
}

/// The route name chosen for a request, with a fixed random value.
fn route_name(table: &RouteTable, parts: &http::request::Parts) -> Option<String> {
    table
        .route_with(
            parts,
            RequestContext {
                scheme: None,
                random: Some(0),
            },
        )
        .map(|s| s.route.name.clone())
}

/// A table with one catch-all virtual host whose routes are `routes`.
fn single_host(routes: Vec<Route>) -> RouteTable {
    RouteTable::new(&config(vec![vhost("all", &["*"], routes)]))
}

// ------------------------------------------------------------------------------
// Domains
// ------------------------------------------------------------------------------

#[test]
fn domain_precedence_exact_suffix_prefix_default() {
    let table = RouteTable::new(&config(vec![
        catch_all("exact", &["www.example.com"]),
        catch_all("suffix_short", &["*.example.com"]),
        catch_all("suffix_long", &["*-bar.example.com"]),
        catch_all("prefix_short", &["www.*"]),
        catch_all("prefix_long", &["www.example.*"]),
        catch_all("default", &["*"]),
    ]));
    assert_eq!(vhost_name(&table, "www.example.com"), Some("exact"));
    assert_eq!(vhost_name(&table, "WWW.Example.COM"), Some("exact"));
    assert_eq!(vhost_name(&table, "api.example.com"), Some("suffix_short"));
    assert_eq!(
        vhost_name(&table, "foo-bar.example.com"),
        Some("suffix_long")
    );
    // Suffixes are tried before prefixes.
    assert_eq!(
        vhost_name(&table, "www.x.example.com"),
        Some("suffix_short")
    );
    assert_eq!(vhost_name(&table, "www.example.org"), Some("prefix_long"));
    assert_eq!(vhost_name(&table, "www.other.org"), Some("prefix_short"));
    assert_eq!(vhost_name(&table, "other.org"), Some("default"));
    // A wildcard does not match the empty string.
    assert_eq!(vhost_name(&table, ".example.com"), Some("default"));
    assert_eq!(vhost_name(&table, "-bar.example.com"), Some("suffix_short"));
    assert_eq!(vhost_name(&table, "www."), Some("default"));
}

#[test]
fn domain_port_matching_follows_envoy() {
    let table = RouteTable::new(&config(vec![
        catch_all("plain", &["example.com"]),
        catch_all("with_port", &["example.com:8443"]),
        catch_all("any_port", &["api.example.com:*"]),
        catch_all("default", &["*"]),
    ]));
    assert_eq!(vhost_name(&table, "example.com"), Some("plain"));
    assert_eq!(vhost_name(&table, "example.com:8443"), Some("with_port"));
    // Envoy matches the authority as received: the port is part of it.
    assert_eq!(vhost_name(&table, "example.com:8080"), Some("default"));
    assert_eq!(vhost_name(&table, "api.example.com:9000"), Some("any_port"));

    let ignoring = RouteTable::with_options(
        &config(vec![
            catch_all("plain", &["example.com"]),
            catch_all("v6", &["[::1]"]),
        ]),
        RouteTableOptions {
            ignore_port_in_host_matching: true,
            ..Default::default()
        },
    );
    assert_eq!(vhost_name(&ignoring, "example.com:8080"), Some("plain"));
    assert_eq!(vhost_name(&ignoring, "[::1]:80"), Some("v6"));
    assert_eq!(vhost_name(&ignoring, "[::1]"), Some("v6"));
    assert_eq!(vhost_name(&ignoring, "other:80"), None);
}

#[test]
fn domain_source_and_fast_path() {
    // Only `*`: every request, even without a host, gets it.
    let only_default = RouteTable::new(&config(vec![catch_all("default", &["*"])]));
    assert!(only_default.route(&request("GET", "/", &[])).is_some());

    let table = RouteTable::new(&config(vec![
        catch_all("a", &["a.test"]),
        catch_all("b", &["b.test"]),
    ]));
    assert!(table.route(&request("GET", "/", &[])).is_none());
    // The URI's authority (HTTP/2, absolute-form) wins over `host`.
    let parts = request("GET", "http://b.test/x", &[("host", "a.test")]);
    assert_eq!(table.route(&parts).unwrap().virtual_host.name, "b");
    assert_eq!(
        table
            .route(&get("/", "c.test"))
            .map(|s| s.route.name.clone()),
        None
    );
}

#[test]
fn duplicate_domains_are_rejected_by_try_new() {
    let cfg = config(vec![
        catch_all("a", &["x.test"]),
        catch_all("b", &["X.test"]),
    ]);
    let err = RouteTable::try_new(&cfg, RouteTableOptions::default()).unwrap_err();
    assert!(err.to_string().contains("x.test"), "{err}");
    let cfg = config(vec![catch_all("a", &["*"]), catch_all("b", &["*"])]);
    assert!(RouteTable::try_new(&cfg, RouteTableOptions::default()).is_err());
}

// ------------------------------------------------------------------------------
// Path matchers
// ------------------------------------------------------------------------------

#[test]
fn path_specifiers() {
    let table = single_host(vec![
        route_to("exact", PathMatch::Exact("/exact".into()), "c"),
        route_to("regex", PathMatch::Regex(regex("/re/[0-9]+|/re/a")), "c"),
        route_to("sep", PathMatch::SeparatedPrefix("/api".into()), "c"),
        route_to("prefix", prefix("/pre"), "c"),
        route_to("fallback", prefix(""), "c"),
    ]);
    let name = |uri: &str| route_name(&table, &get(uri, "h"));
    assert_eq!(name("/exact").as_deref(), Some("exact"));
    assert_eq!(name("/exact?q=1").as_deref(), Some("exact"));
    assert_eq!(name("/exact/").as_deref(), Some("fallback"));
    assert_eq!(name("/re/123").as_deref(), Some("regex"));
    assert_eq!(name("/re/123?x").as_deref(), Some("regex"));
    // Full match: a partial match is no match.
    assert_eq!(name("/re/123x").as_deref(), Some("fallback"));
    assert_eq!(name("/x/re/1").as_deref(), Some("fallback"));
    assert_eq!(name("/re/ab").as_deref(), Some("fallback"));
    assert_eq!(name("/api").as_deref(), Some("sep"));
    assert_eq!(name("/api/v1").as_deref(), Some("sep"));
    assert_eq!(name("/api?x=1").as_deref(), Some("sep"));
    assert_eq!(name("/apix").as_deref(), Some("fallback"));
    assert_eq!(name("/prefix/anything").as_deref(), Some("prefix"));
    assert_eq!(name("/PRE").as_deref(), Some("fallback"));
}

#[test]
fn case_insensitive_paths() {
    let mut exact = route_to("exact", PathMatch::Exact("/Exact".into()), "c");
    exact.matcher.case_sensitive = false;
    let mut pre = route_to("prefix", prefix("/Pre"), "c");
    pre.matcher.case_sensitive = false;
    let mut sep = route_to("sep", PathMatch::SeparatedPrefix("/Api".into()), "c");
    sep.matcher.case_sensitive = false;
    let table = single_host(vec![exact, pre, sep]);
    let name = |uri: &str| route_name(&table, &get(uri, "h"));
    assert_eq!(name("/eXACT").as_deref(), Some("exact"));
    assert_eq!(name("/pre/x").as_deref(), Some("prefix"));
    assert_eq!(name("/PRE").as_deref(), Some("prefix"));
    assert_eq!(name("/API/v1").as_deref(), Some("sep"));
    assert_eq!(name("/apiv1"), None);
}

// ------------------------------------------------------------------------------
// Header, query, gRPC and runtime matchers
// ------------------------------------------------------------------------------

fn with_headers(name: &str, headers: Vec<HeaderMatcher>) -> Route {
    let mut r = route_to(name, prefix("/"), "c");
    r.matcher.headers = headers;
    r
}

#[test]
fn header_matchers() {
    let inverted = HeaderMatcher {
        invert: true,
        ..header_matcher("x-env", string_match(StringMatchKind::Exact, "prod", false))
    };
    let table_for = |m: HeaderMatcher| single_host(vec![with_headers("hit", vec![m])]);
    let hit = |table: &RouteTable, headers: &[(&str, &str)]| {
        route_name(table, &request("GET", "/", headers)).is_some()
    };

    let t = table_for(header_matcher(
        "x-env",
        string_match(StringMatchKind::Exact, "prod", false),
    ));
    assert!(hit(&t, &[("x-env", "prod")]));
    assert!(!hit(&t, &[("x-env", "Prod")]));
    assert!(!hit(&t, &[]));

    let t = table_for(inverted.clone());
    assert!(!hit(&t, &[("x-env", "prod")]));
    assert!(hit(&t, &[("x-env", "dev")]));
    // Envoy: an inverted value matcher on a missing header does not match.
    assert!(!hit(&t, &[]));
    let t = table_for(HeaderMatcher {
        treat_missing_as_empty: true,
        ..inverted
    });
    assert!(hit(&t, &[]));

    let t = table_for(header_matcher("x-a", ValueMatch::Present));
    assert!(hit(&t, &[("x-a", "")]));
    assert!(!hit(&t, &[]));
    let t = table_for(HeaderMatcher {
        invert: true,
        ..header_matcher("x-a", ValueMatch::Present)
    });
    assert!(hit(&t, &[]));
    assert!(!hit(&t, &[("x-a", "1")]));

    let t = table_for(header_matcher("x-a", ValueMatch::Absent));
    assert!(hit(&t, &[]));
    assert!(!hit(&t, &[("x-a", "1")]));

    let t = table_for(header_matcher("x-v", ValueMatch::Regex(regex("v[0-9]"))));
    assert!(hit(&t, &[("x-v", "v1")]));
    assert!(!hit(&t, &[("x-v", "v10")]));

    let t = table_for(header_matcher(
        "x-n",
        ValueMatch::Range { start: 10, end: 20 },
    ));
    assert!(hit(&t, &[("x-n", "10")]));
    assert!(hit(&t, &[("x-n", "19")]));
    assert!(!hit(&t, &[("x-n", "20")]));
    assert!(!hit(&t, &[("x-n", "1x")]));

    let t = table_for(header_matcher(
        "x-s",
        string_match(StringMatchKind::Prefix, "abc", true),
    ));
    assert!(hit(&t, &[("x-s", "ABCdef")]));
    let t = table_for(header_matcher(
        "x-s",
        string_match(StringMatchKind::Suffix, "def", true),
    ));
    assert!(hit(&t, &[("x-s", "abcDEF")]));
    assert!(!hit(&t, &[("x-s", "ef")]));
    let t = table_for(header_matcher(
        "x-s",
        string_match(StringMatchKind::Contains, "cd", true),
    ));
    assert!(hit(&t, &[("x-s", "abCDef")]));
    assert!(!hit(&t, &[("x-s", "abc")]));
    let t = table_for(header_matcher(
        "x-s",
        string_match(StringMatchKind::Contains, "cd", false),
    ));
    assert!(!hit(&t, &[("x-s", "abCDef")]));

    // Several values are joined with ",".
    let t = table_for(header_matcher(
        "x-m",
        string_match(StringMatchKind::Exact, "a,b", false),
    ));
    assert!(hit(&t, &[("x-m", "a"), ("x-m", "b")]));
    assert!(!hit(&t, &[("x-m", "a")]));

    // Every matcher must pass.
    let t = single_host(vec![with_headers(
        "hit",
        vec![
            header_matcher("x-a", ValueMatch::Present),
            header_matcher("x-b", ValueMatch::Present),
        ],
    )]);
    assert!(hit(&t, &[("x-a", "1"), ("x-b", "1")]));
    assert!(!hit(&t, &[("x-a", "1")]));
}

#[test]
fn pseudo_header_matchers() {
    let t = single_host(vec![
        with_headers(
            "post",
            vec![header_matcher(
                ":method",
                string_match(StringMatchKind::Exact, "POST", false),
            )],
        ),
        with_headers(
            "query",
            vec![header_matcher(
                ":path",
                string_match(StringMatchKind::Suffix, "?debug", false),
            )],
        ),
        with_headers(
            "authority",
            vec![header_matcher(
                ":authority",
                string_match(StringMatchKind::Exact, "a.test", false),
            )],
        ),
        with_headers(
            "https",
            vec![header_matcher(
                ":scheme",
                string_match(StringMatchKind::Exact, "https", false),
            )],
        ),
    ]);
    assert_eq!(
        route_name(&t, &request("POST", "/", &[])).as_deref(),
        Some("post")
    );
    assert_eq!(
        route_name(&t, &request("GET", "/x?debug", &[])).as_deref(),
        Some("query")
    );
    assert_eq!(
        route_name(&t, &get("/", "a.test")).as_deref(),
        Some("authority")
    );
    assert_eq!(route_name(&t, &get("/", "b.test")), None);
    let parts = get("/", "b.test");
    let tls = RequestContext {
        scheme: Some("https"),
        random: Some(0),
    };
    assert_eq!(t.route_with(&parts, tls).unwrap().route.name, "https");
    let parts = request("GET", "https://b.test/", &[]);
    assert_eq!(route_name(&t, &parts).as_deref(), Some("https"));
}

#[test]
fn query_parameter_matchers() {
    let mut r = route_to("q", prefix("/"), "c");
    r.matcher.query_parameters = vec![
        QueryParameterMatcher {
            name: "debug".into(),
            rule: ValueMatch::Present,
        },
        QueryParameterMatcher {
            name: "user name".into(),
            rule: string_match(StringMatchKind::Exact, "a&b", false),
        },
    ];
    let t = single_host(vec![r]);
    let hit = |uri: &str| route_name(&t, &get(uri, "h")).is_some();
    assert!(hit("/?debug&user%20name=a%26b"));
    assert!(hit("/?user%20name=a%26b&debug=0"));
    assert!(!hit("/?user%20name=a%26b"));
    assert!(!hit("/?debug"));
    // The first value of a repeated parameter counts.
    assert!(!hit("/?debug&user%20name=x&user%20name=a%26b"));
    assert!(!hit("/"));

    let mut r = route_to("re", prefix("/"), "c");
    r.matcher.query_parameters = vec![QueryParameterMatcher {
        name: "v".into(),
        rule: ValueMatch::Regex(regex("[0-9]+")),
    }];
    let t = single_host(vec![r]);
    assert!(route_name(&t, &get("/?v=12", "h")).is_some());
    assert!(route_name(&t, &get("/?v=12a", "h")).is_none());
}

#[test]
fn query_parsing_and_decoding() {
    let params = matcher::parse_query("a=1&b&&c=%41%zz%4&d=x=y");
    let pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_ref(), v.as_ref()))
        .collect();
    assert_eq!(
        pairs,
        vec![("a", "1"), ("b", ""), ("c", "A%zz%4"), ("d", "x=y")]
    );
    assert!(matches!(matcher::percent_decode("plain"), Cow::Borrowed(_)));
}

#[test]
fn grpc_matcher() {
    let mut r = route_to("grpc", prefix("/"), "c");
    r.matcher.grpc = true;
    let t = single_host(vec![r, route_to("other", prefix("/"), "c")]);
    let name = |ct: &str| route_name(&t, &request("POST", "/svc/M", &[("content-type", ct)]));
    assert_eq!(name("application/grpc").as_deref(), Some("grpc"));
    assert_eq!(name("application/grpc+proto").as_deref(), Some("grpc"));
    assert_eq!(name("application/grpc-web").as_deref(), Some("other"));
    assert_eq!(name("application/json").as_deref(), Some("other"));
    assert_eq!(
        route_name(&t, &request("POST", "/", &[])).as_deref(),
        Some("other")
    );
}

#[test]
fn runtime_fraction() {
    let mut r = route_to("canary", prefix("/"), "canary");
    r.matcher.runtime_fraction_ppm = Some(250_000);
    let t = single_host(vec![r, route_to("stable", prefix("/"), "stable")]);
    let parts = get("/", "h");
    let with = |random: u64| {
        t.route_with(
            &parts,
            RequestContext {
                scheme: None,
                random: Some(random),
            },
        )
        .unwrap()
        .route
        .name
        .clone()
    };
    assert_eq!(with(0), "canary");
    assert_eq!(with(249_999), "canary");
    assert_eq!(with(250_000), "stable");
    assert_eq!(with(1_000_000 + 10), "canary");
    // Drawn per request: about a quarter.
    let n = 40_000;
    let canary = (0..n)
        .filter(|_| t.route(&parts).unwrap().route.name == "canary")
        .count();
    let share = canary as f64 / n as f64;
    assert!((0.23..0.27).contains(&share), "canary share {share}");
}

#[test]
fn first_matching_route_wins() {
    let t = single_host(vec![
        route_to("a", prefix("/a"), "c"),
        route_to("a-longer", prefix("/a/b"), "c"),
    ]);
    assert_eq!(route_name(&t, &get("/a/b", "h")).as_deref(), Some("a"));
    let s = t.route(&get("/a/b", "h")).unwrap();
    assert_eq!((s.virtual_host_index, s.route_index), (0, 0));
}

// ------------------------------------------------------------------------------
// Rewrites
// ------------------------------------------------------------------------------

fn rewriting(
    path: PathMatch,
    prefix_rewrite: Option<&str>,
    regex_rewrite: Option<(&str, &str)>,
) -> Route {
    let mut f = forward("c");
    f.prefix_rewrite = prefix_rewrite.map(Into::into);
    f.regex_rewrite = regex_rewrite.map(|(re, sub)| (regex(re), sub.to_string()));
    Route {
        name: "r".into(),
        matcher: matcher(path),
        action: RouteAction::Forward(Box::new(f)),
        headers: HeaderMutations::default(),
        decorator: None,
        metadata: None,
    }
}

fn forward_of(route: &Route) -> &ForwardAction {
    match &route.action {
        RouteAction::Forward(f) => f,
        _ => panic!("not a forward"),
    }
}

#[test]
fn prefix_rewrite_replaces_the_matched_part() {
    let r = rewriting(prefix("/old"), Some("/new"), None);
    let f = forward_of(&r);
    assert_eq!(
        rewrite_path(f, &r.matcher.path, "/old/x?q=1").as_deref(),
        Some("/new/x?q=1")
    );
    assert_eq!(
        rewrite_path(f, &r.matcher.path, "/old").as_deref(),
        Some("/new")
    );
    let r = rewriting(prefix("/api/"), Some("/"), None);
    assert_eq!(
        rewrite_path(forward_of(&r), &r.matcher.path, "/api/users").as_deref(),
        Some("/users")
    );
    // Exact and regex routes: the whole path (without query) is the matched part.
    let r = rewriting(PathMatch::Exact("/e".into()), Some("/z"), None);
    assert_eq!(
        rewrite_path(forward_of(&r), &r.matcher.path, "/e?k").as_deref(),
        Some("/z?k")
    );
    let r = rewriting(PathMatch::Regex(regex("/v[0-9]/.*")), Some("/flat"), None);
    assert_eq!(
        rewrite_path(forward_of(&r), &r.matcher.path, "/v1/a/b?k=v").as_deref(),
        Some("/flat?k=v")
    );
    // Case-insensitive prefix: the matched length is replaced, whatever its case.
    let mut r = rewriting(prefix("/Old"), Some("/new"), None);
    r.matcher.case_sensitive = false;
    let t = single_host(vec![r]);
    let s = t.route(&get("/OLD/x", "h")).unwrap();
    assert_eq!(s.rewrite_path("/OLD/x").as_deref(), Some("/new/x"));
    // No rewrite configured.
    let r = route_to("plain", prefix("/"), "c");
    assert_eq!(rewrite_path(forward_of(&r), &r.matcher.path, "/a"), None);
}

#[test]
fn regex_rewrite_on_the_path_keeps_the_query() {
    let r = rewriting(
        prefix("/"),
        None,
        Some(("^/service/([^/]+)(/.*)$", "\\2/instance/\\1")),
    );
    let expected = Some("/foo/instance/bar?x=1".to_string());
    assert_eq!(
        rewrite_path(forward_of(&r), &r.matcher.path, "/service/bar/foo?x=1"),
        expected
    );
    let t = single_host(vec![r]);
    let s = t.route(&get("/service/bar/foo?x=1", "h")).unwrap();
    assert_eq!(s.rewrite_path("/service/bar/foo?x=1"), expected);
    // Every match is replaced; `$` is literal.
    let r = rewriting(prefix("/"), None, Some(("o", "$")));
    assert_eq!(
        rewrite_path(forward_of(&r), &r.matcher.path, "/foo?o=o").as_deref(),
        Some("/f$$?o=o")
    );
}

#[test]
fn apply_path_rewrite_records_the_original_path() {
    let r = rewriting(prefix("/old"), Some("/new"), None);
    let mut parts = request("GET", "http://a.test/old/x?q=1", &[]);
    assert!(apply_path_rewrite(
        &mut parts,
        forward_of(&r),
        &r.matcher.path,
        true
    ));
    assert_eq!(parts.uri.to_string(), "http://a.test/new/x?q=1");
    assert_eq!(parts.headers[ORIGINAL_PATH_HEADER], "/old/x?q=1");

    let mut parts = get("/old", "a.test");
    assert!(apply_path_rewrite(
        &mut parts,
        forward_of(&r),
        &r.matcher.path,
        false
    ));
    assert_eq!(parts.uri, "/new");
    assert!(!parts.headers.contains_key(ORIGINAL_PATH_HEADER));

    let plain = route_to("plain", prefix("/"), "c");
    let mut parts = get("/old", "a.test");
    assert!(!apply_path_rewrite(
        &mut parts,
        forward_of(&plain),
        &plain.matcher.path,
        true
    ));
    assert_eq!(parts.uri, "/old");
}

// ------------------------------------------------------------------------------
// Redirects
// ------------------------------------------------------------------------------

fn redirect(f: impl FnOnce(&mut Redirect)) -> Redirect {
    let mut r = Redirect {
        status: 301,
        ..Default::default()
    };
    f(&mut r);
    r
}

#[test]
fn redirects() {
    let any = prefix("/");
    let loc = |r: &Redirect, m: &PathMatch, parts: &http::request::Parts, conn: &str| {
        redirect_location(r, m, parts, conn).location
    };

    // https_redirect drops the default port of the old scheme.
    let https = redirect(|r| r.scheme = Some("https".into()));
    let parts = request(
        "GET",
        "/a?b=c",
        &[("host", "a.test:80"), ("x-forwarded-proto", "http")],
    );
    assert_eq!(loc(&https, &any, &parts, "http"), "https://a.test/a?b=c");
    let parts = get("/a", "a.test:8080");
    assert_eq!(loc(&https, &any, &parts, "http"), "https://a.test:8080/a");
    // Without x-forwarded-proto the connection's scheme is the request's.
    let parts = get("/a", "a.test:80");
    assert_eq!(loc(&https, &any, &parts, "http"), "https://a.test/a");

    // Scheme kept from x-forwarded-proto, else the connection.
    let host = redirect(|r| r.host = Some("b.test".into()));
    let parts = request(
        "GET",
        "/p",
        &[("host", "a.test"), ("x-forwarded-proto", "https")],
    );
    assert_eq!(loc(&host, &any, &parts, "http"), "https://b.test/p");
    assert_eq!(
        loc(&host, &any, &get("/p", "a.test"), "https"),
        "https://b.test/p"
    );

    // A new port replaces the old one.
    let port = redirect(|r| r.port = Some(8443));
    assert_eq!(
        loc(&port, &any, &get("/p", "a.test:80"), "http"),
        "http://a.test:8443/p"
    );
    assert_eq!(
        loc(&port, &any, &get("/p", "[::1]:80"), "http"),
        "http://[::1]:8443/p"
    );

    // path_redirect keeps the request's query unless it has its own.
    let path = redirect(|r| r.path = Some("/new".into()));
    assert_eq!(
        loc(&path, &any, &get("/old?x=1", "a.test"), "http"),
        "http://a.test/new?x=1"
    );
    let path_q = redirect(|r| {
        r.path = Some("/new?y=2".into());
        r.strip_query = true;
    });
    assert_eq!(
        loc(&path_q, &any, &get("/old?x=1", "a.test"), "http"),
        "http://a.test/new?y=2"
    );

    // strip_query.
    let strip = redirect(|r| r.strip_query = true);
    assert_eq!(
        loc(&strip, &any, &get("/old?x=1", "a.test"), "http"),
        "http://a.test/old"
    );

    // prefix_rewrite replaces the matched prefix.
    let rw = redirect(|r| r.prefix_rewrite = Some("/v2".into()));
    assert_eq!(
        loc(&rw, &prefix("/v1"), &get("/v1/users?x", "a.test"), "http"),
        "http://a.test/v2/users?x"
    );

    // Status.
    let found = redirect(|r| {
        r.status = 302;
        r.path = Some("relative".into());
    });
    let target = redirect_location(&found, &any, &get("/", "a.test"), "http");
    assert_eq!(target.status, http::StatusCode::FOUND);
    assert_eq!(target.location, "http://a.test/relative");
}

// ------------------------------------------------------------------------------
// Clusters
// ------------------------------------------------------------------------------

#[test]
fn cluster_choice() {
    let headers = request("GET", "/", &[("x-cluster", "blue")]).headers;
    let single = ClusterSpecifier::Cluster("one".into());
    assert_eq!(choose_cluster(&single, &headers, 7), Some("one"));
    let by_header = ClusterSpecifier::Header("x-cluster".into());
    assert_eq!(choose_cluster(&by_header, &headers, 7), Some("blue"));
    assert_eq!(choose_cluster(&by_header, &http::HeaderMap::new(), 7), None);

    let weighted =
        ClusterSpecifier::Weighted(vec![("a".into(), 1), ("b".into(), 3), ("c".into(), 0)]);
    assert_eq!(choose_cluster(&weighted, &headers, 0), Some("a"));
    assert_eq!(choose_cluster(&weighted, &headers, 1), Some("b"));
    assert_eq!(choose_cluster(&weighted, &headers, 3), Some("b"));
    assert_eq!(choose_cluster(&weighted, &headers, 4), Some("a"));

    // The table's precomputed weights agree with the free function.
    let mut f = forward("unused");
    f.cluster = weighted.clone();
    let route = Route {
        name: "w".into(),
        matcher: matcher(prefix("/")),
        action: RouteAction::Forward(Box::new(f)),
        headers: HeaderMutations::default(),
        decorator: None,
        metadata: None,
    };
    let t = single_host(vec![route]);
    let parts = get("/", "h");
    let s = t.route(&parts).unwrap();
    for random in 0..64u64 {
        assert_eq!(
            s.choose_cluster(&parts.headers, random),
            choose_cluster(&weighted, &headers, random)
        );
    }
}

#[test]
fn weighted_clusters_follow_weights() {
    let weighted =
        ClusterSpecifier::Weighted(vec![("a".into(), 10), ("b".into(), 30), ("c".into(), 60)]);
    let headers = http::HeaderMap::new();
    let n = 100_000;
    let mut counts = [0usize; 3];
    for _ in 0..n {
        match choose_cluster(&weighted, &headers, rand::random()) {
            Some("a") => counts[0] += 1,
            Some("b") => counts[1] += 1,
            Some("c") => counts[2] += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    for (count, expected) in counts.iter().zip([0.1, 0.3, 0.6]) {
        let share = *count as f64 / n as f64;
        assert!(
            (share - expected).abs() < 0.01,
            "share {share}, expected {expected}"
        );
    }
}

// ------------------------------------------------------------------------------
// Header mutations
// ------------------------------------------------------------------------------

/// A table where each level adds to `x-level` with `action` and sets `x-<level>`.
fn layered(action: AppendAction, options: RouteTableOptions) -> RouteTable {
    let level = |name: &str| HeaderMutations {
        request_add: vec![
            add("x-level", name, action),
            add(&format!("x-{name}"), "1", action),
        ],
        response_add: vec![add("x-level", name, action)],
        ..Default::default()
    };
    let mut r = route_to("r", prefix("/"), "c");
    r.headers = level("route");
    let mut v = vhost("v", &["*"], vec![r]);
    v.headers = level("vhost");
    let mut c = config(vec![v]);
    c.headers = level("config");
    RouteTable::with_options(&c, options)
}

fn values(headers: &http::HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[test]
fn header_mutation_order_default_and_most_specific() {
    let info = stream_info();
    // Default: route, vhost, config; overwrites leave the config's value.
    let t = layered(
        AppendAction::OverwriteIfExistsOrAdd,
        RouteTableOptions::default(),
    );
    let mut parts = get("/", "h");
    t.route(&parts.clone())
        .unwrap()
        .apply_request_headers(&mut parts, &info, None);
    assert_eq!(values(&parts.headers, "x-level"), ["config"]);
    assert_eq!(values(&parts.headers, "x-route"), ["1"]);
    assert_eq!(values(&parts.headers, "x-vhost"), ["1"]);

    let mut response = http::HeaderMap::new();
    let req = get("/", "h");
    let s = t.route(&req).unwrap();
    s.apply_response_headers(&mut response, &FormatContext::new(&info).with_request(&req));
    assert_eq!(values(&response, "x-level"), ["config"]);

    // most_specific_header_mutations_wins: config, vhost, route.
    let t = layered(
        AppendAction::OverwriteIfExistsOrAdd,
        RouteTableOptions {
            most_specific_header_mutations_wins: true,
            ..Default::default()
        },
    );
    let mut parts = get("/", "h");
    t.route(&parts.clone())
        .unwrap()
        .apply_request_headers(&mut parts, &info, None);
    assert_eq!(values(&parts.headers, "x-level"), ["route"]);

    // Appends keep the order of application.
    let t = layered(
        AppendAction::AppendIfExistsOrAdd,
        RouteTableOptions::default(),
    );
    let mut parts = request("GET", "/", &[("x-level", "client")]);
    t.route(&parts.clone())
        .unwrap()
        .apply_request_headers(&mut parts, &info, None);
    assert_eq!(
        values(&parts.headers, "x-level"),
        ["client", "route", "vhost", "config"]
    );

    // Add-if-absent: the first level that adds wins.
    let t = layered(AppendAction::AddIfAbsent, RouteTableOptions::default());
    let mut parts = get("/", "h");
    t.route(&parts.clone())
        .unwrap()
        .apply_request_headers(&mut parts, &info, None);
    assert_eq!(values(&parts.headers, "x-level"), ["route"]);
    let mut parts = request("GET", "/", &[("x-level", "client")]);
    t.route(&parts.clone())
        .unwrap()
        .apply_request_headers(&mut parts, &info, None);
    assert_eq!(values(&parts.headers, "x-level"), ["client"]);
}

fn one_route_with(mutations: HeaderMutations) -> RouteTable {
    let mut r = route_to("r", prefix("/"), "c");
    r.headers = mutations;
    single_host(vec![r])
}

fn mutate(t: &RouteTable, mut parts: http::request::Parts) -> http::HeaderMap {
    let info = stream_info();
    t.route(&parts.clone())
        .unwrap()
        .apply_request_headers(&mut parts, &info, Some("https"));
    parts.headers
}

#[test]
fn append_actions_within_one_level() {
    let t = one_route_with(HeaderMutations {
        request_add: vec![
            add("x-only-if-present", "new", AppendAction::OverwriteIfExists),
            add("x-absent", "new", AppendAction::OverwriteIfExists),
            add("x-keep", "new", AppendAction::AddIfAbsent),
            add("x-replace", "new", AppendAction::OverwriteIfExistsOrAdd),
            add("x-append", "new", AppendAction::AppendIfExistsOrAdd),
            // Decided against the headers before this level's additions: both added.
            add("x-twice", "1", AppendAction::AddIfAbsent),
            add("x-twice", "2", AppendAction::AddIfAbsent),
        ],
        request_remove: vec!["x-secret".into(), "x-replace".into()],
        ..Default::default()
    });
    let headers = mutate(
        &t,
        request(
            "GET",
            "/",
            &[
                ("x-only-if-present", "old"),
                ("x-keep", "old"),
                ("x-replace", "old1"),
                ("x-replace", "old2"),
                ("x-append", "old"),
                ("x-secret", "s"),
            ],
        ),
    );
    assert_eq!(values(&headers, "x-only-if-present"), ["new"]);
    assert!(!headers.contains_key("x-absent"));
    assert_eq!(values(&headers, "x-keep"), ["old"]);
    assert_eq!(values(&headers, "x-replace"), ["new"]);
    assert_eq!(values(&headers, "x-append"), ["old", "new"]);
    assert_eq!(values(&headers, "x-twice"), ["1", "2"]);
    assert!(!headers.contains_key("x-secret"));
}

#[test]
fn removal_happens_before_addition() {
    let t = one_route_with(HeaderMutations {
        request_add: vec![add("x-a", "mine", AppendAction::AppendIfExistsOrAdd)],
        request_remove: vec!["x-a".into()],
        ..Default::default()
    });
    let headers = mutate(&t, request("GET", "/", &[("x-a", "theirs")]));
    assert_eq!(values(&headers, "x-a"), ["mine"]);
}

#[test]
fn substituted_values() {
    let mut empty_kept = add(
        "x-kept",
        "%REQ(x-missing)%",
        AppendAction::AppendIfExistsOrAdd,
    );
    empty_kept.keep_empty_value = true;
    let t = one_route_with(HeaderMutations {
        request_add: vec![
            add(
                "x-client",
                "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                AppendAction::AppendIfExistsOrAdd,
            ),
            add(
                "x-line",
                "%REQ(:METHOD)% %REQ(:PATH)% %REQ(:SCHEME)% %PROTOCOL%",
                AppendAction::AppendIfExistsOrAdd,
            ),
            // Formatters read the headers as they were before this level's changes.
            add(
                "x-copy",
                "was %REQ(x-orig)%",
                AppendAction::AppendIfExistsOrAdd,
            ),
            add("x-orig", "changed", AppendAction::OverwriteIfExistsOrAdd),
            add(
                "x-empty",
                "%REQ(x-missing)%",
                AppendAction::AppendIfExistsOrAdd,
            ),
            empty_kept,
            add("x-percent", "100%%", AppendAction::AppendIfExistsOrAdd),
        ],
        ..Default::default()
    });
    let headers = mutate(&t, request("POST", "/p?q", &[("x-orig", "first")]));
    assert_eq!(values(&headers, "x-client"), ["10.1.2.3"]);
    assert_eq!(values(&headers, "x-line"), ["POST /p?q https HTTP/1.1"]);
    assert_eq!(values(&headers, "x-copy"), ["was first"]);
    assert_eq!(values(&headers, "x-orig"), ["changed"]);
    assert!(!headers.contains_key("x-empty"));
    assert_eq!(values(&headers, "x-kept"), [""]);
    assert_eq!(values(&headers, "x-percent"), ["100%"]);
}

#[test]
fn response_mutations_read_the_response() {
    let t = one_route_with(HeaderMutations {
        response_add: vec![
            add(
                "x-echo-type",
                "%RESP(content-type)%",
                AppendAction::AppendIfExistsOrAdd,
            ),
            add("x-req", "%REQ(x-id)%", AppendAction::AppendIfExistsOrAdd),
        ],
        response_remove: vec!["server".into()],
        ..Default::default()
    });
    let info = stream_info();
    let req = request("GET", "/", &[("x-id", "42")]);
    let mut response = http::HeaderMap::new();
    response.insert("content-type", "text/plain".parse().unwrap());
    response.insert("server", "upstream".parse().unwrap());
    let s = t.route(&req).unwrap();
    s.apply_response_headers(&mut response, &FormatContext::new(&info).with_request(&req));
    assert_eq!(values(&response, "x-echo-type"), ["text/plain"]);
    assert_eq!(values(&response, "x-req"), ["42"]);
    assert!(!response.contains_key("server"));
}

#[test]
fn invalid_mutations_are_reported() {
    let bad = HeaderMutations {
        request_add: vec![
            add(
                "x-bad",
                "%NOT_AN_OPERATOR%",
                AppendAction::AppendIfExistsOrAdd,
            ),
            add("x-good", "ok", AppendAction::AppendIfExistsOrAdd),
        ],
        ..Default::default()
    };
    let mut r = route_to("r", prefix("/"), "c");
    r.headers = bad;
    let cfg = config(vec![vhost("v", &["*"], vec![r])]);
    let err = RouteTable::try_new(&cfg, RouteTableOptions::default()).unwrap_err();
    assert!(err.to_string().contains("NOT_AN_OPERATOR"), "{err}");
    // `new` leaves the bad entry out and keeps the rest.
    let t = RouteTable::new(&cfg);
    let headers = mutate(&t, get("/", "h"));
    assert!(!headers.contains_key("x-bad"));
    assert_eq!(values(&headers, "x-good"), ["ok"]);
}

#[test]
fn many_mutations_in_one_level() {
    let request_add = (0..12)
        .map(|i| {
            let value = if i % 2 == 0 {
                format!("v{i}")
            } else {
                format!("%REQ(x-in)%{i}")
            };
            add("x-many", &value, AppendAction::AppendIfExistsOrAdd)
        })
        .collect();
    let t = one_route_with(HeaderMutations {
        request_add,
        ..Default::default()
    });
    let headers = mutate(&t, request("GET", "/", &[("x-in", "d")]));
    let expected: Vec<String> = (0..12)
        .map(|i| {
            if i % 2 == 0 {
                format!("v{i}")
            } else {
                format!("d{i}")
            }
        })
        .collect();
    assert_eq!(values(&headers, "x-many"), expected);
}
