//! End to end: keel's eBPF programs balance real connections in a child cgroup,
//! inside a network namespace per test. Run as root by `cargo xtask test`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keel::datapath::Datapath;
use keel_tests::{kernel_config, services, tally, Sandbox};

type Endpoints<'a> = &'a [(&'a str, u16, u32)];

const THREE: Endpoints = &[
    ("127.0.0.1", 9001, 1),
    ("127.0.0.1", 9002, 1),
    ("127.0.0.1", 9003, 1),
];

/// Starts backends b1.. on 127.0.0.1:9001.. in the sandbox.
fn backends(sandbox: &Sandbox, n: u16) {
    for i in 1..=n {
        sandbox.tcp_backend(&format!("b{i}"), &format!("127.0.0.1:{}", 9000 + i));
    }
}

fn counts(datapath: &Datapath) -> BTreeMap<u16, u64> {
    datapath
        .endpoint_connections()
        .into_iter()
        .map(|(a, n)| (a.port(), n))
        .collect()
}

/// Waits until every endpoint's connection count is 0 and no socket is tracked.
fn assert_counts_return_to_zero(datapath: &Datapath) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let counts = counts(datapath);
        if counts.values().all(|&n| n == 0) && datapath.tracked_sockets() == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "counts did not return to 0: {counts:?}, {} sockets tracked",
            datapath.tracked_sockets()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn vip(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

#[test]
#[ignore = "needs root, eBPF and network namespaces: run `cargo xtask test` as root"]
fn weighted_round_robin_follows_the_weights_exactly() {
    let sandbox = Sandbox::new("rr");
    backends(&sandbox, 3);
    let weighted: Endpoints = &[
        ("127.0.0.1", 9001, 3),
        ("127.0.0.1", 9002, 1),
        ("127.0.0.1", 9003, 1),
    ];
    let mut datapath = sandbox.datapath();
    datapath
        .sync(&services(&kernel_config(&[(
            "rr",
            "10.96.0.10:80",
            "ROUND_ROBIN",
            weighted,
        )])))
        .unwrap();

    let seen = sandbox.exchanges(true, &["--to", "10.96.0.10:80", "--count", "50"]);
    let expected: BTreeMap<String, usize> = [("b1", 30), ("b2", 10), ("b3", 10)]
        .map(|(b, n)| (b.to_string(), n))
        .into();
    assert_eq!(
        tally(&seen),
        expected,
        "round robin over weights 3:1:1, 50 connections"
    );
    assert_counts_return_to_zero(&datapath);
}

#[test]
#[ignore = "needs root, eBPF and network namespaces: run `cargo xtask test` as root"]
fn random_spreads_by_weight() {
    let sandbox = Sandbox::new("random");
    backends(&sandbox, 3);
    let weighted: Endpoints = &[
        ("127.0.0.1", 9001, 2),
        ("127.0.0.1", 9002, 1),
        ("127.0.0.1", 9003, 1),
    ];
    let mut datapath = sandbox.datapath();
    datapath
        .sync(&services(&kernel_config(&[(
            "random",
            "10.96.0.10:80",
            "RANDOM",
            weighted,
        )])))
        .unwrap();

    let seen = tally(&sandbox.exchanges(true, &["--to", "10.96.0.10:80", "--count", "400"]));
    // Expected 200/100/100; the bounds are five standard deviations wide.
    let b1 = seen.get("b1").copied().unwrap_or(0);
    assert!(
        (150..=250).contains(&b1),
        "b1 (weight 2) got {b1} of 400: {seen:?}"
    );
    for b in ["b2", "b3"] {
        let n = seen.get(b).copied().unwrap_or(0);
        assert!(
            (60..=140).contains(&n),
            "{b} (weight 1) got {n} of 400: {seen:?}"
        );
    }
    assert_counts_return_to_zero(&datapath);
}

#[test]
#[ignore = "needs root, eBPF and network namespaces: run `cargo xtask test` as root"]
fn least_connections_counts_connections_held_open() {
    let sandbox = Sandbox::new("leastconn");
    backends(&sandbox, 3);
    let only_b1: Endpoints = &[("127.0.0.1", 9001, 1)];
    let mut datapath = sandbox.datapath();
    datapath
        .sync(&services(&kernel_config(&[
            ("pin", "10.96.0.9:80", "ROUND_ROBIN", only_b1),
            ("lc", "10.96.0.10:80", "LEAST_REQUEST", THREE),
        ])))
        .unwrap();

    // Four connections held to b1 through another service load b1 ...
    let pinned = sandbox.hold("10.96.0.9:80", 4);
    assert!(pinned.exchanges.iter().all(|e| e.backend == "b1"));
    assert_eq!(counts(&datapath).get(&9001), Some(&4));
    // ... so six held least-connection connections go to b2 and b3, three each.
    let held = sandbox.hold("10.96.0.10:80", 6);
    let expected: BTreeMap<String, usize> = [("b2", 3), ("b3", 3)]
        .map(|(b, n)| (b.to_string(), n))
        .into();
    assert_eq!(tally(&held.exchanges), expected);
    let expected_counts: BTreeMap<u16, u64> = [(9001, 4), (9002, 3), (9003, 3)].into();
    assert_eq!(counts(&datapath), expected_counts);
    // The next one goes to b2 or b3 (3 < 4), never b1.
    let next = sandbox.exchanges(true, &["--to", "10.96.0.10:80"]);
    assert_ne!(next[0].backend, "b1");

    pinned.close();
    held.close();
    assert_counts_return_to_zero(&datapath);
}

/// Backends of each flow from 127.0.0.2..=127.0.0.(1+n), source port 40000.
fn maglev_flows(sandbox: &Sandbox, n: usize) -> Vec<String> {
    sandbox
        .exchanges(
            true,
            &[
                "--to",
                "10.96.0.10:80",
                "--count",
                &n.to_string(),
                "--bind",
                "127.0.0.2:40000",
                "--reset",
            ],
        )
        .into_iter()
        .map(|e| e.backend)
        .collect()
}

#[test]
#[ignore = "needs root, eBPF and network namespaces: run `cargo xtask test` as root"]
fn maglev_keeps_flows_and_remaps_about_one_nth_when_a_backend_leaves() {
    let sandbox = Sandbox::new("maglev");
    backends(&sandbox, 5);
    let five: Vec<(&str, u16, u32)> = (1..=5).map(|i| ("127.0.0.1", 9000 + i, 1)).collect();
    let mut datapath = sandbox.datapath();
    datapath
        .sync(&services(&kernel_config(&[(
            "mg",
            "10.96.0.10:80",
            "MAGLEV",
            &five,
        )])))
        .unwrap();

    const FLOWS: usize = 200;
    let first = maglev_flows(&sandbox, FLOWS);
    let again = maglev_flows(&sandbox, FLOWS);
    assert_eq!(first, again, "the same flows must reach the same backends");
    let spread: std::collections::BTreeSet<&String> = first.iter().collect();
    assert_eq!(
        spread.len(),
        5,
        "flows spread over all backends: {spread:?}"
    );

    // Remove b5: its flows must move, and few others.
    datapath
        .sync(&services(&kernel_config(&[(
            "mg",
            "10.96.0.10:80",
            "MAGLEV",
            &five[..4],
        )])))
        .unwrap();
    let after = maglev_flows(&sandbox, FLOWS);
    let on_b5 = first.iter().filter(|b| *b == "b5").count();
    let moved_others = first
        .iter()
        .zip(&after)
        .filter(|(b, a)| *b != "b5" && b != a)
        .count();
    assert!(
        after.iter().all(|b| b != "b5"),
        "no flow may reach the removed backend"
    );
    let moved = (on_b5 + moved_others) as f64 / FLOWS as f64;
    assert!(
        (0.1..=0.32).contains(&moved),
        "{moved:.3} of flows moved; about 1/5 expected"
    );
    assert!(
        moved_others as f64 / ((FLOWS - on_b5) as f64) < 0.06,
        "{moved_others} flows of the remaining backends moved"
    );
    assert_counts_return_to_zero(&datapath);
}

#[test]
#[ignore = "needs root, eBPF and network namespaces: run `cargo xtask test` as root"]
fn getpeername_shows_the_service_address_over_ipv4_and_ipv6() {
    let sandbox = Sandbox::new("peer");
    backends(&sandbox, 2);
    sandbox.tcp_backend("v6-b1", "[::1]:9101");
    sandbox.tcp_backend("v6-b2", "[::1]:9102");
    let v6: Endpoints = &[("::1", 9101, 1), ("::1", 9102, 1)];
    let mut datapath = sandbox.datapath();
    datapath
        .sync(&services(&kernel_config(&[
            ("v4", "10.96.0.10:80", "ROUND_ROBIN", &THREE[..2]),
            ("v6", "[fd00::10]:80", "ROUND_ROBIN", v6),
        ])))
        .unwrap();

    let seen = sandbox.exchanges(true, &["--to", "10.96.0.10:80", "--count", "4"]);
    assert!(
        seen.iter().all(|e| e.peer == vip("10.96.0.10:80")),
        "{seen:?}"
    );
    assert_eq!(tally(&seen).len(), 2);
    let seen = sandbox.exchanges(true, &["--to", "[fd00::10]:80", "--count", "4"]);
    assert!(
        seen.iter().all(|e| e.peer == vip("[fd00::10]:80")),
        "{seen:?}"
    );
    assert_eq!(
        tally(&seen).keys().cloned().collect::<Vec<_>>(),
        ["v6-b1", "v6-b2"]
    );
    assert_counts_return_to_zero(&datapath);
}

#[test]
#[ignore = "needs root, eBPF and network namespaces: run `cargo xtask test` as root"]
fn unconnected_udp_keeps_its_backend_and_sees_replies_from_the_service() {
    let sandbox = Sandbox::new("udp");
    sandbox.udp_backend("u1", "127.0.0.1:9201");
    sandbox.udp_backend("u2", "127.0.0.1:9202");
    let endpoints: Endpoints = &[("127.0.0.1", 9201, 1), ("127.0.0.1", 9202, 1)];
    let mut datapath = sandbox.datapath();
    datapath
        .sync(&services(&kernel_config(&[(
            "udp-dns",
            "10.96.0.53:53",
            "ROUND_ROBIN",
            endpoints,
        )])))
        .unwrap();

    let mut backends_seen = BTreeMap::new();
    for _ in 0..4 {
        let seen = sandbox.exchanges(true, &["--udp", "--to", "10.96.0.53:53", "--count", "3"]);
        assert!(
            seen.iter().all(|e| e.peer == vip("10.96.0.53:53")),
            "replies must come from the VIP: {seen:?}"
        );
        assert_eq!(
            tally(&seen).len(),
            1,
            "one socket keeps one backend: {seen:?}"
        );
        *backends_seen.entry(seen[0].backend.clone()).or_insert(0) += 1;
    }
    assert_eq!(
        backends_seen.len(),
        2,
        "sockets are spread: {backends_seen:?}"
    );
}

#[test]
#[ignore = "needs root, eBPF and network namespaces: run `cargo xtask test` as root"]
fn processes_outside_the_cgroup_are_untouched() {
    let sandbox = Sandbox::new("outside");
    backends(&sandbox, 1);
    // A real server on the service address: only processes outside the cgroup reach it.
    sandbox.tcp_backend("decoy", "127.0.0.100:8080");
    let mut datapath = sandbox.datapath();
    datapath
        .sync(&services(&kernel_config(&[(
            "svc",
            "127.0.0.100:8080",
            "ROUND_ROBIN",
            &THREE[..1],
        )])))
        .unwrap();

    let inside = sandbox.exchanges(true, &["--to", "127.0.0.100:8080", "--count", "3"]);
    assert!(inside.iter().all(|e| e.backend == "b1"), "{inside:?}");
    let outside = sandbox.exchanges(false, &["--to", "127.0.0.100:8080", "--count", "3"]);
    assert!(outside.iter().all(|e| e.backend == "decoy"), "{outside:?}");
    assert_counts_return_to_zero(&datapath);
}

#[test]
#[ignore = "needs root, eBPF and network namespaces: run `cargo xtask test` as root"]
fn an_endpoint_change_reaches_new_connections_and_leaves_live_ones_alone() {
    let sandbox = Sandbox::new("change");
    backends(&sandbox, 2);
    let mut datapath = sandbox.datapath();
    let config = |endpoints| {
        services(&kernel_config(&[(
            "svc",
            "10.96.0.10:80",
            "LEAST_REQUEST",
            endpoints,
        )]))
    };
    datapath.sync(&config(&THREE[..1])).unwrap();
    let held = sandbox.hold("10.96.0.10:80", 2);
    assert!(held.exchanges.iter().all(|e| e.backend == "b1"));

    datapath.sync(&config(&THREE[1..2])).unwrap();
    let new = sandbox.exchanges(true, &["--to", "10.96.0.10:80", "--count", "3"]);
    assert!(
        new.iter().all(|e| e.backend == "b2"),
        "new connections follow the change: {new:?}"
    );
    // The live connections still count against b1, which left the service.
    assert_eq!(counts(&datapath).get(&9001), Some(&2));
    let state = datapath.state();
    assert_eq!(state.len(), 1);
    assert_eq!(
        state[0]
            .backends
            .iter()
            .map(|b| b.0.port())
            .collect::<Vec<_>>(),
        [9002]
    );

    held.close();
    assert_counts_return_to_zero(&datapath);
}

#[test]
#[ignore = "needs root, eBPF and network namespaces: run `cargo xtask test` as root"]
fn a_restarted_datapath_adopts_pinned_maps_and_live_counts() {
    let sandbox = Sandbox::new("restart");
    backends(&sandbox, 2);
    sandbox.tcp_backend("decoy", "127.0.0.100:8080");
    let wanted = services(&kernel_config(&[(
        "svc",
        "127.0.0.100:8080",
        "LEAST_REQUEST",
        &THREE[..2],
    )]));
    let mut first = sandbox.datapath();
    first.sync(&wanted).unwrap();
    let held = sandbox.hold("127.0.0.100:8080", 3);
    assert!(held.exchanges.iter().all(|e| e.backend != "decoy"));
    drop(first);

    // Detached: connections are no longer rewritten.
    let seen = sandbox.exchanges(true, &["--to", "127.0.0.100:8080"]);
    assert_eq!(
        seen[0].backend, "decoy",
        "hooks must be detached when the datapath is dropped"
    );

    let mut second = sandbox.datapath();
    let adopted: u64 = counts(&second).values().sum();
    assert_eq!(
        adopted, 3,
        "the pinned counts of live connections are adopted"
    );
    second.sync(&wanted).unwrap();
    let seen = sandbox.exchanges(true, &["--to", "127.0.0.100:8080"]);
    assert_ne!(seen[0].backend, "decoy");
    held.close();
    assert_counts_return_to_zero(&second);
}
