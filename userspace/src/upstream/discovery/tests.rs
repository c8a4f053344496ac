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

/// A one-name DNS server on 127.0.0.1 (UDP): answers A queries for `name` with the
/// current addresses and `ttl`, NODATA for anything else; counts the A queries.
struct TinyDns {
    address: SocketAddr,
    answers: Arc<Mutex<Vec<std::net::Ipv4Addr>>>,
    queries: Arc<AtomicUsize>,
}

impl TinyDns {
    async fn start(name: &str, ttl: u32) -> TinyDns {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = socket.local_addr().unwrap();
        let answers: Arc<Mutex<Vec<std::net::Ipv4Addr>>> = Arc::new(Mutex::new(Vec::new()));
        let queries = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (Arc::clone(&answers), Arc::clone(&queries));
        let wanted: Vec<u8> = name
            .split('.')
            .flat_map(|label| std::iter::once(label.len() as u8).chain(label.bytes()))
            .chain([0])
            .collect();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let query = &buf[..n];
                if n < 12 {
                    continue;
                }
                // The question: QNAME, QTYPE, QCLASS right after the header.
                let mut end = 12;
                while end < n && query[end] != 0 {
                    end += 1 + query[end] as usize;
                }
                let question_end = end + 5;
                if question_end > n {
                    continue;
                }
                let qname = query[12..=end].to_ascii_lowercase();
                let qtype = u16::from_be_bytes([query[end + 1], query[end + 2]]);
                let addresses = if qname == wanted && qtype == 1 {
                    counted.fetch_add(1, Ordering::SeqCst);
                    served.lock().unwrap().clone()
                } else {
                    Vec::new()
                };
                let mut reply = Vec::with_capacity(512);
                reply.extend_from_slice(&query[..2]); // id
                reply.extend_from_slice(&[0x81, 0x80]); // response, RD, RA, NOERROR
                reply.extend_from_slice(&[0, 1]); // one question
                reply.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
                reply.extend_from_slice(&[0, 0, 0, 0]); // no authority, no additional
                reply.extend_from_slice(&query[12..question_end]);
                for ip in addresses {
                    reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]); // name, A, IN
                    reply.extend_from_slice(&ttl.to_be_bytes());
                    reply.extend_from_slice(&[0, 4]);
                    reply.extend_from_slice(&ip.octets());
                }
                let _ = socket.send_to(&reply, peer).await;
            }
        });
        TinyDns {
            address,
            answers,
            queries,
        }
    }

    fn answer(&self, ips: &[&str]) {
        *self.answers.lock().unwrap() = ips.iter().map(|ip| ip.parse().unwrap()).collect();
    }
}

#[tokio::test]
async fn strict_dns_asks_the_configured_name_server_at_its_ttl() {
    let server = TinyDns::start("svc.keel.test", 1).await;
    server.answer(&["127.0.0.11", "127.0.0.12"]);
    let dns = model::Dns {
        refresh_rate: Duration::from_secs(60),
        respect_ttl: true,
        lookup_family: DnsLookupFamily::V4Only,
        resolvers: vec![server.address],
        ..model::Dns::default()
    };
    let cluster = dns_cluster(&[("svc.keel.test", 0)], dns.clone(), false);
    let upstream = Arc::new(ClusterUpstream::new(&cluster));
    let resolver: Arc<dyn Resolve> = Arc::new(HickoryResolver::new(&dns));
    let _task = tokio::spawn(dns_loop(
        Arc::downgrade(&upstream),
        dns_targets(&cluster),
        dns,
        false,
        resolver,
    ));
    tokio::time::timeout(PATIENCE, upstream.initialized())
        .await
        .expect("initialized");
    assert_eq!(addresses(&upstream), ["127.0.0.11:80", "127.0.0.12:80"]);
    // The TTL of 1 s, not the refresh rate of 60 s, paces the next question.
    server.answer(&["127.0.0.13"]);
    eventually("the answer after the TTL", || {
        addresses(&upstream) == ["127.0.0.13:80"]
    })
    .await;
    assert!(server.queries.load(Ordering::SeqCst) >= 2);
}
