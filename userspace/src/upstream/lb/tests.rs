//! Distribution tests of the pickers: each draws many picks and checks the shares
//! against the expected ones (a chi-square bound where the picks are independent).

use super::*;
use crate::upstream::HealthFlags;

fn host(i: usize, weight: u32, priority: u32) -> Arc<Host> {
    let address = format!("127.0.0.1:{}", 1000 + i).parse().unwrap();
    Arc::new(Host::new(address, weight, priority))
}

fn hosts(weights: &[u32]) -> Vec<Arc<Host>> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| host(i, w, 0))
        .collect()
}

fn counts(
    lb: &LoadBalancer,
    hosts: &[Arc<Host>],
    n: usize,
    hash: impl Fn(usize) -> Option<u64>,
) -> Vec<usize> {
    let mut c = vec![0; hosts.len()];
    for k in 0..n {
        let context = PickContext {
            hash: hash(k),
            ..PickContext::default()
        };
        c[lb.pick(hosts, &context).expect("a host")] += 1;
    }
    c
}

/// Pearson's chi-square statistic of `observed` against expected shares.
fn chi_square(observed: &[usize], shares: &[f64]) -> f64 {
    let n: usize = observed.iter().sum();
    let total: f64 = shares.iter().sum();
    observed
        .iter()
        .zip(shares)
        .filter(|(_, &s)| s > 0.0)
        .map(|(&o, &s)| {
            let e = n as f64 * s / total;
            (o as f64 - e).powi(2) / e
        })
        .sum()
}

/// The 99.9th percentile of chi-square for up to 9 degrees of freedom.
fn chi_square_limit(degrees: usize) -> f64 {
    [
        10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12, 27.88,
    ][degrees - 1]
}

fn assert_distribution(observed: &[usize], shares: &[f64], what: &str) {
    let degrees = shares.iter().filter(|&&s| s > 0.0).count() - 1;
    let x2 = chi_square(observed, shares);
    eprintln!("{what}: observed {observed:?}, expected shares {shares:?}, chi-square {x2:.2}");
    assert!(
        x2 < chi_square_limit(degrees),
        "{what}: {observed:?} against shares {shares:?}: chi-square {x2:.1}"
    );
    for (o, s) in observed.iter().zip(shares) {
        if *s == 0.0 {
            assert_eq!(
                *o, 0,
                "{what}: {observed:?}: a host with no share was picked"
            );
        }
    }
}

fn settings(policy: LbPolicy) -> LbSettings {
    LbSettings::new(policy)
}

#[test]
fn round_robin_is_exactly_weighted() {
    let hosts = hosts(&[1, 2, 3]);
    let lb = LoadBalancer::new(LbPolicy::RoundRobin, &hosts);
    assert_eq!(counts(&lb, &hosts, 6000, |_| None), vec![1000, 2000, 3000]);
}

#[test]
fn random_is_uniform_whatever_the_weights() {
    // As Envoy 1.40's RANDOM: endpoint weights make no difference.
    let hosts = hosts(&[1, 2, 3, 4]);
    let lb = LoadBalancer::new(LbPolicy::Random, &hosts);
    let c = counts(&lb, &hosts, 50_000, |_| None);
    assert_distribution(&c, &[1.0; 4], "random");
}

#[test]
fn least_request_with_equal_weights_is_n_choices() {
    // Host 0 idle, three busy: with N choices host 0 wins unless all N candidates
    // are busy, P = 1 - (3/4)^N.
    for (choice_count, expected) in [(2u32, 1.0 - 0.75f64.powi(2)), (3, 1.0 - 0.75f64.powi(3))] {
        let hosts = hosts(&[1, 1, 1, 1]);
        for h in &hosts[1..] {
            h.active.store(10, Ordering::Relaxed);
        }
        let lb = LoadBalancer::new(
            LbPolicy::LeastRequest {
                choice_count,
                active_request_bias: 1.0,
            },
            &hosts,
        );
        let c = counts(&lb, &hosts, 40_000, |_| None);
        let share = c[0] as f64 / 40_000.0;
        eprintln!("least request, {choice_count} choices: idle host {share:.4} (expected {expected:.4}), {c:?}");
        assert!(
            (share - expected).abs() < 0.015,
            "choice_count {choice_count}: idle host share {share:.3}, expected {expected:.3} ({c:?})"
        );
        // The busy hosts share the rest evenly.
        assert_distribution(&c[1..], &[1.0, 1.0, 1.0], "busy hosts");
    }
}

#[test]
fn least_request_with_unequal_weights_divides_by_active_requests() {
    let hosts = hosts(&[1, 3]);
    let lb = LoadBalancer::new(LbPolicy::LEAST_REQUEST, &hosts);
    // Idle: by weight.
    assert_distribution(&counts(&lb, &hosts, 40_000, |_| None), &[1.0, 3.0], "idle");
    // Host 1 has 2 requests: 3 / (2 + 1) = 1, as much as host 0.
    hosts[1].active.store(2, Ordering::Relaxed);
    assert_distribution(
        &counts(&lb, &hosts, 40_000, |_| None),
        &[1.0, 1.0],
        "bias 1",
    );
    // Bias 2: 3 / 9 against 1.
    let lb = LoadBalancer::new(
        LbPolicy::LeastRequest {
            choice_count: 2,
            active_request_bias: 2.0,
        },
        &hosts,
    );
    assert_distribution(
        &counts(&lb, &hosts, 40_000, |_| None),
        &[3.0, 1.0],
        "bias 2",
    );
    // Bias 0: weights only, in round-robin order.
    let lb = LoadBalancer::new(
        LbPolicy::LeastRequest {
            choice_count: 2,
            active_request_bias: 0.0,
        },
        &hosts,
    );
    assert_eq!(counts(&lb, &hosts, 4000, |_| None), vec![1000, 3000]);
}

#[test]
fn least_request_over_many_weighted_hosts_uses_a_window() {
    let weights: Vec<u32> = (0..200).map(|i| 1 + (i % 2) as u32).collect();
    let hosts = hosts(&weights);
    let lb = LoadBalancer::new(LbPolicy::LEAST_REQUEST, &hosts);
    let c = counts(&lb, &hosts, 60_000, |_| None);
    let (odd, even): (usize, usize) =
        (c.iter().skip(1).step_by(2).sum(), c.iter().step_by(2).sum());
    let share = odd as f64 / 60_000.0;
    assert!(
        (share - 2.0 / 3.0).abs() < 0.01,
        "weight-2 hosts took {share:.3} ({even} vs {odd})"
    );
}

#[test]
fn ring_hash_follows_weights_and_keeps_keys() {
    let hosts = hosts(&[1, 1, 2]);
    let lb = LoadBalancer::new(LbPolicy::RING_HASH, &hosts);
    // Hashes spread evenly over the ring: shares by weight, within the ring's
    // granularity (1024 entries for the lightest host).
    let c = counts(&lb, &hosts, 40_000, |k| Some(xxh64(&k.to_le_bytes(), 0)));
    eprintln!("ring hash, weights 1:1:2: {c:?}");
    for (i, expected) in [0.25, 0.25, 0.5].into_iter().enumerate() {
        let share = c[i] as f64 / 40_000.0;
        assert!(
            (share - expected).abs() < 0.04,
            "host {i}: {share:.3} ({c:?})"
        );
    }
    // The same hash, the same host.
    let context = PickContext {
        hash: Some(42),
        ..PickContext::default()
    };
    let first = lb.pick(&hosts, &context);
    assert!((0..100).all(|_| lb.pick(&hosts, &context) == first));
    // Removing a host moves its keys and a few others.
    let fewer: Vec<Arc<Host>> = hosts[..2].to_vec();
    let smaller = LoadBalancer::new(LbPolicy::RING_HASH, &fewer);
    let mut moved = 0;
    for k in 0..10_000u64 {
        let context = PickContext {
            hash: Some(xxh64(&k.to_le_bytes(), 0)),
            ..PickContext::default()
        };
        let before = lb.pick(&hosts, &context).unwrap();
        let after = smaller.pick(&fewer, &context).unwrap();
        if before != 2 && before != after {
            moved += 1;
        }
    }
    // Envoy rescales the ring to the new weights (here from 1024 to 512 entries for
    // each remaining host), so some keys of the remaining hosts move too.
    assert!(
        moved < 1200,
        "{moved} of 10000 keys moved between remaining hosts"
    );
}

#[test]
fn ring_size_follows_envoys_scaling() {
    let hosts = hosts(&[1, 1, 1]);
    let Kind::Priorities(levels) = &LoadBalancer::new(LbPolicy::RING_HASH, &hosts).kind else {
        panic!("priorities")
    };
    let Picker::Ring(ring) = &levels[0].pickers[0] else {
        panic!("a ring")
    };
    // scale = ceil(1/3 × 1024) / (1/3) = 1026 entries, 342 per host.
    assert_eq!(ring.len(), 1026);
    let capped = LoadBalancer::new(
        LbPolicy::RingHash {
            minimum_ring_size: 1024,
            maximum_ring_size: 300,
        },
        &hosts,
    );
    let Kind::Priorities(levels) = &capped.kind else {
        panic!()
    };
    let Picker::Ring(ring) = &levels[0].pickers[0] else {
        panic!()
    };
    assert_eq!(ring.len(), 300);
    // The entries are Envoy's: xxHash64 of "address_i".
    assert!(ring
        .iter()
        .any(|&(h, _)| h == xxh64(b"127.0.0.1:1000_0", 0)));
}

#[test]
fn maglev_spreads_by_weight_and_is_consistent() {
    let hosts = hosts(&[1, 1, 1, 1]);
    let lb = LoadBalancer::new(LbPolicy::Maglev { table_size: 65537 }, &hosts);
    let c = counts(&lb, &hosts, 40_000, |k| Some(xxh64(&k.to_le_bytes(), 0)));
    assert_distribution(&c, &[1.0; 4], "maglev");
    let context = PickContext {
        hash: Some(7),
        ..PickContext::default()
    };
    let first = lb.pick(&hosts, &context);
    assert!((0..100).all(|_| lb.pick(&hosts, &context) == first));
}

#[test]
fn hash_policies_without_a_hash_pick_at_random() {
    for policy in [LbPolicy::RING_HASH, LbPolicy::Maglev { table_size: 251 }] {
        let hosts = hosts(&[1, 1, 1]);
        let lb = LoadBalancer::new(policy, &hosts);
        let c = counts(&lb, &hosts, 30_000, |_| None);
        for (i, &n) in c.iter().enumerate() {
            let share = n as f64 / 30_000.0;
            assert!(
                (share - 1.0 / 3.0).abs() < 0.04,
                "{policy:?} host {i}: {share:.3}"
            );
        }
    }
}

#[test]
fn priorities_get_load_by_health_with_overprovisioning() {
    let mut hosts: Vec<Arc<Host>> = (0..5).map(|i| host(i, 1, 0)).collect();
    hosts.extend((5..10).map(|i| host(i, 1, 1)));
    // 3 of 5 healthy at priority 0: health 140 × 3/5 = 84 → 84% / 16%.
    hosts[0].health.set(HealthFlags::FAILED_ACTIVE_HC);
    hosts[1].health.set(HealthFlags::FAILED_ACTIVE_HC);
    let lb = LoadBalancer::new(LbPolicy::Random, &hosts);
    let c = counts(&lb, &hosts, 50_000, |_| None);
    assert_eq!(c[0] + c[1], 0, "unhealthy hosts take nothing: {c:?}");
    let p0: usize = c[..5].iter().sum();
    let share = p0 as f64 / 50_000.0;
    assert!((share - 0.84).abs() < 0.01, "priority 0 share {share:.3}");
    let mut shares = vec![0.84 / 3.0; 5];
    shares[0] = 0.0;
    shares[1] = 0.0;
    shares.extend([0.16 / 5.0; 5]);
    assert_distribution(&c, &shares, "priority spill-over");

    // 4 of 5 healthy: 140 × 4/5 = 112 → still 100% at priority 0.
    hosts[1].health.clear(HealthFlags::FAILED_ACTIVE_HC);
    let lb = LoadBalancer::new(LbPolicy::RoundRobin, &hosts);
    let c = counts(&lb, &hosts, 1000, |_| None);
    assert_eq!(c[5..].iter().sum::<usize>(), 0, "{c:?}");

    // None healthy at priority 0: everything to priority 1.
    for h in &hosts[..5] {
        h.health.set(HealthFlags::FAILED_OUTLIER_CHECK);
    }
    let lb = LoadBalancer::new(LbPolicy::RoundRobin, &hosts);
    let c = counts(&lb, &hosts, 1000, |_| None);
    assert_eq!(c[..5].iter().sum::<usize>(), 0, "{c:?}");
    assert_eq!(c[5..], [200; 5]);
}

#[test]
fn panic_threshold_balances_over_all_hosts_and_counts() {
    let hosts = hosts(&[1, 1, 1, 1]);
    for h in &hosts[1..] {
        h.health.set(HealthFlags::FAILED_ACTIVE_HC);
    }
    let stats = Arc::new(LbStats::new("lb_test_panic"));
    let mut s = settings(LbPolicy::RoundRobin);
    s.stats = Some(Arc::clone(&stats));
    // 25% healthy < 50%: panic, every host.
    let lb = LoadBalancer::build(&s, &hosts, &HostLocalities::default());
    assert_eq!(counts(&lb, &hosts, 400, |_| None), vec![100; 4]);
    assert_eq!(stats.lb_healthy_panic.value(), 400);
    assert_eq!(stats.membership_total.value(), 4);
    assert_eq!(stats.membership_healthy.value(), 1);
    // A threshold of 25% is not crossed by 25% healthy: healthy hosts only.
    s.common.healthy_panic_threshold = 25.0;
    let lb = LoadBalancer::build(&s, &hosts, &HostLocalities::default());
    assert_eq!(counts(&lb, &hosts, 400, |_| None), vec![400, 0, 0, 0]);
    assert_eq!(stats.lb_healthy_panic.value(), 400);
    // Panic disabled and nothing healthy: no host.
    hosts[0].health.set(HealthFlags::FAILED_ACTIVE_HC);
    s.common.healthy_panic_threshold = 0.0;
    let lb = LoadBalancer::build(&s, &hosts, &HostLocalities::default());
    assert_eq!(lb.pick(&hosts, &PickContext::default()), None);
}

#[test]
fn total_panic_spreads_by_host_count() {
    let mut hosts: Vec<Arc<Host>> = (0..2).map(|i| host(i, 1, 0)).collect();
    hosts.extend((2..8).map(|i| host(i, 1, 1)));
    for h in &hosts {
        h.health.set(HealthFlags::FAILED_ACTIVE_HC);
    }
    let lb = LoadBalancer::new(LbPolicy::Random, &hosts);
    let c = counts(&lb, &hosts, 40_000, |_| None);
    assert_distribution(&c, &[1.0; 8], "total panic: 25% / 75% by host count");
}

#[test]
fn locality_weighted_balancing_uses_effective_locality_weights() {
    // Locality 0 (weight 1): hosts 0, 1; locality 1 (weight 3): hosts 2, 3.
    let hosts = hosts(&[1, 1, 1, 1]);
    let localities = HostLocalities {
        of_host: vec![0, 0, 1, 1],
        weights: vec![1, 3],
    };
    let mut s = settings(LbPolicy::RoundRobin);
    s.common.locality_weighted = true;
    let lb = LoadBalancer::build(&s, &hosts, &localities);
    assert_eq!(
        counts(&lb, &hosts, 8000, |_| None),
        vec![1000, 1000, 3000, 3000]
    );
    // Half of locality 1 unhealthy: availability min(1, 1.4 × 1/2) = 0.7, effective
    // weight 2.1 against 1.
    hosts[3].health.set(HealthFlags::FAILED_ACTIVE_HC);
    let lb = LoadBalancer::build(&s, &hosts, &localities);
    let c = counts(&lb, &hosts, 31_000, |_| None);
    eprintln!("locality weights 1:3, locality 1 half healthy: {c:?}");
    assert_eq!(c[3], 0);
    let share = c[2] as f64 / 31_000.0;
    assert!(
        (share - 2.1 / 3.1).abs() < 0.005,
        "locality 1 share {share:.3} ({c:?})"
    );
    // A locality without a weight takes nothing.
    let unweighted = HostLocalities {
        of_host: vec![0, 0, 1, 1],
        weights: vec![0, 3],
    };
    hosts[3].health.clear(HealthFlags::FAILED_ACTIVE_HC);
    let lb = LoadBalancer::build(&s, &hosts, &unweighted);
    assert_eq!(counts(&lb, &hosts, 100, |_| None), vec![0, 0, 50, 50]);
}

#[test]
fn previous_hosts_are_avoided_by_every_policy() {
    let policies = [
        LbPolicy::RoundRobin,
        LbPolicy::Random,
        LbPolicy::LEAST_REQUEST,
        LbPolicy::RING_HASH,
        LbPolicy::Maglev { table_size: 251 },
    ];
    for policy in policies {
        for weights in [[1u32, 1], [1, 2]] {
            let hosts = hosts(&weights);
            let lb = LoadBalancer::new(policy, &hosts);
            let previous = [Arc::clone(&hosts[0])];
            for k in 0..200u64 {
                let context = PickContext {
                    hash: (k % 2 == 0).then(|| xxh64(&k.to_le_bytes(), 0)),
                    previous_hosts: &previous,
                    reselect_attempts: 30,
                    ..PickContext::default()
                };
                assert_eq!(
                    lb.pick(&hosts, &context),
                    Some(1),
                    "{policy:?} {weights:?} k={k}"
                );
            }
        }
    }
}

#[test]
fn original_dst_picks_the_host_of_the_destination() {
    let hosts = hosts(&[1, 1]);
    let lb = LoadBalancer::new(LbPolicy::ClusterProvided, &hosts);
    let context = |to: &str| PickContext {
        original_dst: Some(to.parse().unwrap()),
        ..PickContext::default()
    };
    assert_eq!(lb.pick(&hosts, &context("127.0.0.1:1001")), Some(1));
    assert_eq!(lb.pick(&hosts, &context("127.0.0.1:1000")), Some(0));
    assert_eq!(lb.pick(&hosts, &context("127.0.0.1:9")), None);
    assert_eq!(lb.pick(&hosts, &PickContext::default()), None);
}

#[test]
fn no_hosts_means_no_pick() {
    let lb = LoadBalancer::new(LbPolicy::Random, &[]);
    assert_eq!(lb.pick(&[], &PickContext::default()), None);
}
