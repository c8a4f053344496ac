use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::*;
use crate::model::{LbEndpoint, LbPolicy, LocalityEndpoints};
use crate::upstream::PickContext;

/// Answers from a table that the test changes; counts the lookups.
#[derive(Default)]
struct TableResolver {
    answers: Mutex<HashMap<String, Result<Resolved, String>>>,
    lookups: AtomicUsize,
}

impl TableResolver {
    fn set(&self, name: &str, answer: Result<(&[&str], Option<Duration>), &str>) {
        let answer = answer
            .map(|(ips, ttl)| Resolved {
                addresses: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
                ttl,
            })
            .map_err(str::to_owned);
        self.answers.lock().unwrap().insert(name.to_owned(), answer);
    }
}

impl Resolve for TableResolver {
    fn resolve<'a>(
        &'a self,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Resolved, DnsError>> + Send + 'a>> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let answer = self.answers.lock().unwrap().get(name).cloned();
        Box::pin(async move {
            match answer {
                Some(Ok(resolved)) => Ok(resolved),
                Some(Err(message)) => Err(DnsError::Lookup {
                    name: name.to_owned(),
                    message,
                }),
                None => Err(DnsError::Lookup {
                    name: name.to_owned(),
                    message: "unknown name".into(),
                }),
            }
        })
    }
}

fn dns_cluster(names: &[(&str, u32)], dns: model::Dns, logical: bool) -> model::Cluster {
    model::Cluster {
        name: "discovery_test".into(),
        lb_policy: LbPolicy::RoundRobin,
        discovery: if logical {
            Discovery::LogicalDns(dns)
        } else {
            Discovery::StrictDns(dns)
        },
        localities: names
            .iter()
            .map(|&(name, priority)| LocalityEndpoints {
                priority,
                endpoints: vec![LbEndpoint {
                    address: EndpointAddress::Dns {
                        hostname: name.into(),
                        port: 80,
                    },
                    weight: 2,
                }],
                ..LocalityEndpoints::default()
            })
            .collect(),
        ..model::Cluster::default()
    }
}

fn addresses(upstream: &ClusterUpstream) -> Vec<String> {
    upstream
        .hosts()
        .hosts
        .iter()
        .map(|h| h.address.to_string())
        .collect()
}

/// Polls `condition` every 5 ms for at most 5 s.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

fn spawn(
    cluster: &model::Cluster,
    resolver: &Arc<TableResolver>,
) -> (Arc<ClusterUpstream>, JoinHandle<()>) {
    let upstream = Arc::new(ClusterUpstream::new(cluster));
    let (dns, logical) = match &cluster.discovery {
        Discovery::StrictDns(dns) => (dns.clone(), false),
        Discovery::LogicalDns(dns) => (dns.clone(), true),
        _ => unreachable!(),
    };
    let resolver: Arc<dyn Resolve> = Arc::clone(resolver) as Arc<dyn Resolve>;
    let task = tokio::spawn(dns_loop(
        Arc::downgrade(&upstream),
        dns_targets(cluster),
        dns,
        logical,
        resolver,
    ));
    (upstream, task)
}

#[tokio::test]
async fn strict_dns_publishes_changes_and_keeps_hosts_that_stay() {
    let resolver = Arc::new(TableResolver::default());
    resolver.set("a.test", Ok((&["10.0.0.1", "10.0.0.2"], None)));
    resolver.set("b.test", Ok((&["10.0.1.1"], None)));
    let dns = model::Dns {
        refresh_rate: Duration::from_millis(10),
        ..model::Dns::default()
    };
    let cluster = dns_cluster(&[("a.test", 0), ("b.test", 1)], dns, false);
    let (upstream, task) = spawn(&cluster, &resolver);
    tokio::time::timeout(PATIENCE, upstream.initialized())
        .await
        .expect("initialized");
    assert_eq!(
        addresses(&upstream),
        ["10.0.0.1:80", "10.0.0.2:80", "10.0.1.1:80"]
    );
    let set = upstream.hosts();
    assert_eq!(set.hosts[2].priority, 1, "b.test's locality has priority 1");
    assert_eq!(set.hosts[0].weight, 2, "the endpoint's weight");
    assert_eq!(set.localities.of_host, [0, 0, 1]);
    let kept = Arc::clone(&set.hosts[1]);
    drop(set);

    resolver.set("a.test", Ok((&["10.0.0.2", "10.0.0.3"], None)));
    eventually("the new address", || {
        addresses(&upstream).contains(&"10.0.0.3:80".to_string())
    })
    .await;
    assert_eq!(
        addresses(&upstream),
        ["10.0.0.2:80", "10.0.0.3:80", "10.0.1.1:80"]
    );
    let set = upstream.hosts();
    assert!(Arc::ptr_eq(&set.hosts[0], &kept), "10.0.0.2 keeps its host");
    drop(set);

    // A failure keeps the last good answer.
    resolver.set("a.test", Err("timeout"));
    let before = resolver.lookups.load(Ordering::SeqCst);
    eventually("more lookups", || {
        resolver.lookups.load(Ordering::SeqCst) > before + 4
    })
    .await;
    assert_eq!(
        addresses(&upstream),
        ["10.0.0.2:80", "10.0.0.3:80", "10.0.1.1:80"]
    );
    // The cluster gone, the task ends.
    drop(upstream);
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("task ends")
        .unwrap();
}

#[tokio::test]
async fn logical_dns_uses_the_first_address() {
    let resolver = Arc::new(TableResolver::default());
    resolver.set("one.test", Ok((&["10.0.0.7", "10.0.0.8"], None)));
    let cluster = dns_cluster(&[("one.test", 0)], model::Dns::default(), true);
    let (upstream, _task) = spawn(&cluster, &resolver);
    tokio::time::timeout(PATIENCE, upstream.initialized())
        .await
        .expect("initialized");
    assert_eq!(addresses(&upstream), ["10.0.0.7:80"]);
}

#[tokio::test]
async fn respect_dns_ttl_refreshes_at_the_ttl() {
    let resolver = Arc::new(TableResolver::default());
    resolver.set(
        "ttl.test",
        Ok((&["10.0.0.1"], Some(Duration::from_millis(20)))),
    );
    let slow = model::Dns {
        refresh_rate: Duration::from_secs(60),
        ..model::Dns::default()
    };
    // Without respect_dns_ttl: one lookup per minute.
    let (_ignored, _task) = spawn(
        &dns_cluster(&[("ttl.test", 0)], slow.clone(), false),
        &resolver,
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(resolver.lookups.load(Ordering::SeqCst), 1);
    // With it: every 20 ms.
    let ttl = model::Dns {
        respect_ttl: true,
        ..slow
    };
    let (_upstream, _task2) = spawn(&dns_cluster(&[("ttl.test", 0)], ttl, false), &resolver);
    eventually("TTL-paced lookups", || {
        resolver.lookups.load(Ordering::SeqCst) >= 6
    })
    .await;
}

#[tokio::test]
async fn failure_refresh_backs_off() {
    let resolver = Arc::new(TableResolver::default());
    resolver.set("down.test", Err("refused"));
    let dns = model::Dns {
        refresh_rate: Duration::from_secs(60),
        failure_refresh: Some((Duration::from_millis(5), Duration::from_millis(20))),
        ..model::Dns::default()
    };
    let (upstream, _task) = spawn(&dns_cluster(&[("down.test", 0)], dns, false), &resolver);
    tokio::time::timeout(PATIENCE, upstream.initialized())
        .await
        .expect("a failed first round initializes the cluster too");
    assert!(addresses(&upstream).is_empty());
    eventually("retries well before the refresh rate", || {
        resolver.lookups.load(Ordering::SeqCst) >= 5
    })
    .await;
}

#[tokio::test]
async fn hickory_reads_localhost_from_etc_hosts() {
    let resolver = HickoryResolver::new(&model::Dns {
        lookup_family: DnsLookupFamily::V4Only,
        ..model::Dns::default()
    });
    let resolved = tokio::time::timeout(PATIENCE, resolver.resolve("localhost"))
        .await
        .expect("in time")
        .expect("resolves");
    assert_eq!(resolved.addresses, vec![IpAddr::from([127, 0, 0, 1])]);
}

#[test]
fn original_dst_hosts_come_on_demand_and_go_when_idle() {
    let cluster = model::Cluster {
        name: "original_dst_test".into(),
        lb_policy: LbPolicy::ClusterProvided,
        discovery: Discovery::OriginalDst(model::OriginalDst {
            use_http_header: false,
            header_name: http::HeaderName::from_static("x-envoy-original-dst-host"),
            port_override: None,
            cleanup_interval: Duration::from_secs(5),
        }),
        ..model::Cluster::default()
    };
    let upstream = ClusterUpstream::new(&cluster);
    let to = |a: &str| PickContext {
        original_dst: Some(a.parse().unwrap()),
        ..PickContext::default()
    };
    let first = upstream.pick(&to("10.0.0.1:80")).expect("made on demand");
    assert_eq!(first.address.to_string(), "10.0.0.1:80");
    let again = upstream.pick(&to("10.0.0.1:80")).unwrap();
    assert!(Arc::ptr_eq(&first, &again), "one host per destination");
    upstream.pick(&to("10.0.0.2:80")).unwrap();
    assert_eq!(upstream.hosts().hosts.len(), 2);
    assert!(upstream.pick(&PickContext::default()).is_none());

    let mut seen = HashMap::new();
    // First sweep: both new, kept.
    sweep_original_dst(&upstream, &mut seen);
    assert_eq!(upstream.hosts().hosts.len(), 2);
    // 10.0.0.1 serves a request; 10.0.0.2 idles for a whole interval.
    first.stats.rq_total.fetch_add(1, Ordering::Relaxed);
    sweep_original_dst(&upstream, &mut seen);
    assert_eq!(addresses(&upstream), ["10.0.0.1:80"]);
    sweep_original_dst(&upstream, &mut seen);
    assert!(addresses(&upstream).is_empty());
}

#[test]
fn original_destination_from_header_or_local_address() {
    let mut settings = model::OriginalDst {
        use_http_header: true,
        header_name: http::HeaderName::from_static("x-envoy-original-dst-host"),
        port_override: None,
        cleanup_interval: Duration::from_secs(5),
    };
    let local: SocketAddr = "10.9.9.9:8080".parse().unwrap();
    let mut headers = http::HeaderMap::new();
    assert_eq!(
        original_destination(&settings, &headers, local),
        Some(local)
    );
    headers.insert(
        "x-envoy-original-dst-host",
        "10.0.0.5:9000".parse().unwrap(),
    );
    assert_eq!(
        original_destination(&settings, &headers, local),
        Some("10.0.0.5:9000".parse().unwrap())
    );
    settings.port_override = Some(81);
    assert_eq!(
        original_destination(&settings, &headers, local),
        Some("10.0.0.5:81".parse().unwrap())
    );
    headers.insert("x-envoy-original-dst-host", "nonsense".parse().unwrap());
    assert_eq!(original_destination(&settings, &headers, local), None);
    settings.use_http_header = false;
    assert_eq!(
        original_destination(&settings, &headers, local),
        Some("10.9.9.9:81".parse().unwrap())
    );
}

const PATIENCE: Duration = Duration::from_secs(10);
