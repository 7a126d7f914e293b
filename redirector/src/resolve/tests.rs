use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
    sync::atomic::{AtomicUsize, Ordering},
};

use hickory_resolver::{
    config::{ConnectionConfig, NameServerConfig},
    proto::{
        op::{Message, OpCode, ResponseCode},
        rr::{
            Name, RData, Record,
            rdata::{A, AAAA, SOA},
        },
    },
};

use super::*;

/// Answers from a table after `delay`, counting the lookups per name.
struct Table {
    answers: HashMap<&'static str, Answer>,
    delay: Duration,
    lookups: Arc<Mutex<HashMap<String, usize>>>,
}

impl Lookup for Table {
    fn lookup(&self, name: &str) -> Pin<Box<dyn Future<Output = Answer> + Send>> {
        *self
            .lookups
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_default() += 1;
        let answer = self.answers.get(name).cloned().unwrap_or(Answer {
            resolution: Resolution::Addresses(Arc::from([])),
            ttl: Some(Duration::from_secs(3)),
        });
        let delay = self.delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            answer
        })
    }
}

fn ips(list: &[&str]) -> Resolution {
    Resolution::Addresses(list.iter().map(|a| a.parse().unwrap()).collect())
}

fn answer(list: &[&str], ttl_secs: u64) -> Answer {
    Answer {
        resolution: ips(list),
        ttl: Some(Duration::from_secs(ttl_secs)),
    }
}

/// A resolver over a table; the counter says how often each name was looked up.
fn resolver(
    entries: &[(&'static str, Answer)],
    delay: Duration,
    limits: CacheLimits,
) -> (NameResolver, Arc<Mutex<HashMap<String, usize>>>) {
    let lookups = Arc::new(Mutex::new(HashMap::new()));
    let table = Table {
        answers: entries.iter().cloned().collect(),
        delay,
        lookups: lookups.clone(),
    };
    (
        NameResolver::new(table, Duration::from_secs(1), limits),
        lookups,
    )
}

fn count(lookups: &Mutex<HashMap<String, usize>>, name: &str) -> usize {
    lookups.lock().unwrap().get(name).copied().unwrap_or(0)
}

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn connections_needing_one_name_at_once_share_one_lookup() {
    let (r, lookups) = resolver(
        &[("a.example", answer(&["192.0.2.1", "2001:db8::1"], 60))],
        100 * MS,
        CacheLimits::default(),
    );
    let waiting: Vec<_> = (0..20)
        .map(|_| {
            let r = r.clone();
            tokio::spawn(async move { r.resolve("a.example").await })
        })
        .collect();
    for w in waiting {
        assert_eq!(w.await.unwrap(), ips(&["192.0.2.1", "2001:db8::1"]));
    }
    assert_eq!(count(&lookups, "a.example"), 1);
}

#[tokio::test(start_paused = true)]
async fn an_answer_is_reused_within_its_ttl_and_no_longer() {
    let (r, lookups) = resolver(
        &[("a.example", answer(&["192.0.2.1"], 3))],
        MS,
        CacheLimits::default(),
    );
    r.resolve("a.example").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Case and a trailing dot do not make another name.
    assert_eq!(r.resolve("A.Example.").await, ips(&["192.0.2.1"]));
    assert_eq!(count(&lookups, "a.example"), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    r.resolve("a.example").await;
    assert_eq!(count(&lookups, "a.example"), 2);
}

#[tokio::test(start_paused = true)]
async fn long_ttls_are_capped() {
    let limits = CacheLimits::default();
    let (r, lookups) = resolver(&[("a.example", answer(&["192.0.2.1"], 86_400))], MS, limits);
    r.resolve("a.example").await;
    tokio::time::sleep(limits.max_ttl - 10 * MS).await;
    r.resolve("a.example").await;
    assert_eq!(count(&lookups, "a.example"), 1);
    tokio::time::sleep(20 * MS).await;
    r.resolve("a.example").await;
    assert_eq!(count(&lookups, "a.example"), 2);
}

#[tokio::test(start_paused = true)]
async fn no_such_name_is_cached_within_the_negative_bound() {
    let limits = CacheLimits::default();
    let long_negative = Answer {
        resolution: ips(&[]),
        ttl: Some(Duration::from_secs(3600)),
    };
    let (r, lookups) = resolver(&[("gone.example", long_negative)], MS, limits);
    assert_eq!(r.resolve("gone.example").await, ips(&[]));
    tokio::time::sleep(limits.max_negative_ttl - 10 * MS).await;
    r.resolve("gone.example").await;
    assert_eq!(count(&lookups, "gone.example"), 1);
    tokio::time::sleep(20 * MS).await;
    r.resolve("gone.example").await;
    assert_eq!(count(&lookups, "gone.example"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_silent_server_costs_the_timeout_once_per_failure_ttl() {
    let limits = CacheLimits::default();
    let (r, lookups) = resolver(
        &[("slow.example", answer(&["192.0.2.1"], 60))],
        Duration::from_secs(30),
        limits,
    );
    let started = Instant::now();
    let got = r.resolve("slow.example").await;
    assert_eq!(started.elapsed(), r.timeout());
    assert!(
        matches!(&got, Resolution::Failed(why) if why.contains("no answer within")),
        "{got:?}"
    );
    // Failed lookups are remembered briefly: the next connection does not wait.
    let started = Instant::now();
    assert_eq!(r.resolve("slow.example").await, got);
    assert_eq!(started.elapsed(), Duration::ZERO);
    tokio::time::sleep(limits.failure_ttl).await;
    r.resolve("slow.example").await;
    assert_eq!(count(&lookups, "slow.example"), 2);
}

#[tokio::test(start_paused = true)]
async fn what_is_not_a_dns_name_is_never_sent() {
    let (r, lookups) = resolver(&[], MS, CacheLimits::default());
    let long = "a".repeat(64);
    for bad in [
        "",
        ".",
        "a..b",
        "a b.example",
        "x\u{e9}.example",
        long.as_str(),
    ] {
        let got = r.resolve(bad).await;
        assert!(matches!(got, Resolution::Failed(_)), "{bad:?}: {got:?}");
    }
    assert!(lookups.lock().unwrap().is_empty());
    assert_eq!(r.resolve("_svc.a-b.example").await, ips(&[]));
}

#[tokio::test(start_paused = true)]
async fn lookups_under_way_and_names_remembered_are_bounded() {
    let limits = CacheLimits {
        max_names: 4,
        max_in_flight: 2,
        ..CacheLimits::default()
    };
    let (r, lookups) = resolver(&[], 100 * MS, limits);
    let slow: Vec<_> = ["a.example", "b.example"]
        .into_iter()
        .map(|n| {
            let r = r.clone();
            tokio::spawn(async move { r.resolve(n).await })
        })
        .collect();
    tokio::time::sleep(MS).await;
    // A third name while two lookups are under way: not looked up.
    let got = r.resolve("c.example").await;
    assert!(
        matches!(&got, Resolution::Failed(why) if why.contains("under way")),
        "{got:?}"
    );
    for s in slow {
        s.await.unwrap();
    }
    for n in [
        "c.example",
        "d.example",
        "e.example",
        "f.example",
        "g.example",
    ] {
        r.resolve(n).await;
    }
    assert!(r.inner.cache.lock().unwrap().names.len() <= 4);
    assert_eq!(r.inner.cache.lock().unwrap().in_flight, 0);
    assert_eq!(lookups.lock().unwrap().len(), 7);
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_lookup_frees_its_place() {
    let (r, lookups) = resolver(&[], MS, CacheLimits::default());
    // Started, then dropped before it answers (a runtime shutting down).
    let Next::Start(mut answer, lookup) = r.slot_for("a.example".into()) else {
        panic!("a fresh name needs a lookup")
    };
    let Next::Wait(_) = r.slot_for("a.example".into()) else {
        panic!("a second connection waits for the first lookup")
    };
    drop(lookup);
    assert!(answer.wait_for(Option::is_some).await.is_err());
    assert_eq!(r.inner.cache.lock().unwrap().in_flight, 0);
    // The name is looked up afresh.
    assert_eq!(r.resolve("a.example").await, ips(&[]));
    assert_eq!(count(&lookups, "a.example"), 1);
}

// ---------------------------------------------------------------- DnsLookup

/// A name server on loopback answering from a table: `(name, type)` ->
/// records with their TTL; names not in it are NXDOMAIN with a 7 s SOA
/// minimum. Returns its address and a query counter.
async fn fake_name_server(
    table: Vec<(&'static str, RData, u32)>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let queries = Arc::new(AtomicUsize::new(0));
    let counted = queries.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            let query = Message::from_vec(&buf[..n]).unwrap();
            let q = query.queries[0].clone();
            let mut response = Message::response(query.metadata.id, OpCode::Query);
            response.metadata.recursion_desired = query.metadata.recursion_desired;
            response.metadata.recursion_available = true;
            response.add_query(q.clone());
            let qname = q.name().to_ascii().to_lowercase();
            let known: Vec<_> = table
                .iter()
                .filter(|(name, _, _)| format!("{name}.") == qname)
                .collect();
            for (_, rdata, ttl) in &known {
                if rdata.record_type() == q.query_type() {
                    response.add_answer(Record::from_rdata(q.name().clone(), *ttl, rdata.clone()));
                }
            }
            if known.is_empty() {
                response.metadata.response_code = ResponseCode::NXDomain;
            }
            if response.answers.is_empty() {
                let zone = Name::from_str("example.").unwrap();
                let soa = SOA::new(zone.clone(), zone.clone(), 1, 60, 60, 60, 7);
                response.add_authority(Record::from_rdata(zone, 7, RData::SOA(soa)));
            }
            let _ = socket.send_to(&response.to_vec().unwrap(), peer).await;
        }
    });
    (addr, queries)
}

fn dns_lookup(server: SocketAddr) -> DnsLookup {
    let mut ns = NameServerConfig::udp(server.ip());
    let mut udp = ConnectionConfig::udp();
    udp.port = server.port();
    ns.connections = vec![udp];
    DnsLookup::new(
        ResolverConfig::from_parts(None, vec![], vec![ns]),
        ResolverOpts::default(),
        Duration::from_secs(1),
    )
    .unwrap()
}

#[tokio::test]
async fn dns_lookup_asks_a_and_aaaa_and_keeps_the_smallest_ttl() {
    let (server, queries) = fake_name_server(vec![
        ("both.example", RData::A(A(Ipv4Addr::new(192, 0, 2, 1))), 30),
        (
            "both.example",
            RData::AAAA(AAAA(Ipv6Addr::from_str("2001:db8::1").unwrap())),
            20,
        ),
        ("v4.example", RData::A(A(Ipv4Addr::new(192, 0, 2, 2))), 5),
    ])
    .await;
    let lookup = dns_lookup(server);
    let got = lookup.lookup("both.example").await;
    assert_eq!(got.resolution, ips(&["192.0.2.1", "2001:db8::1"]));
    let ttl = got.ttl.unwrap();
    assert!(
        ttl <= Duration::from_secs(20) && ttl > Duration::from_secs(18),
        "{ttl:?}"
    );
    assert_eq!(
        queries.load(Ordering::SeqCst),
        2,
        "one A and one AAAA query"
    );
    // An IPv4-only name: the empty AAAA answer does not hide the A.
    let got = lookup.lookup("v4.example").await;
    assert_eq!(got.resolution, ips(&["192.0.2.2"]));
    // hickory keeps no cache of its own: ours is the only one.
    lookup.lookup("v4.example").await;
    assert_eq!(queries.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn dns_lookup_reads_no_such_name_as_an_empty_answer_with_its_negative_ttl() {
    let (server, _) = fake_name_server(vec![]).await;
    let got = dns_lookup(server).lookup("gone.example").await;
    assert_eq!(got.resolution, ips(&[]));
    assert_eq!(got.ttl, Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn dns_lookup_of_a_silent_server_fails_after_one_query_per_type() {
    // Never answers; counts what it is asked.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server = silent.local_addr().unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let counted = asked.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while silent.recv_from(&mut buf).await.is_ok() {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    let timeout = Duration::from_millis(300);
    let mut ns = NameServerConfig::udp(server.ip());
    let mut udp = ConnectionConfig::udp();
    udp.port = server.port();
    ns.connections = vec![udp];
    let lookup = DnsLookup::new(
        ResolverConfig::from_parts(None, vec![], vec![ns]),
        ResolverOpts::default(),
        timeout,
    )
    .unwrap();
    let r = NameResolver::new(lookup, timeout, CacheLimits::default());
    let started = std::time::Instant::now();
    let got = r.resolve("a.example").await;
    assert!(matches!(got, Resolution::Failed(_)), "{got:?}");
    let took = started.elapsed();
    assert!(
        took >= timeout && took < Duration::from_millis(600),
        "{took:?}"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    // hickory re-sends a UDP query only after 333 ms, and nothing follows
    // the bound.
    assert_eq!(
        asked.load(Ordering::SeqCst),
        2,
        "one A and one AAAA, no retry"
    );
}

#[test]
fn resolv_conf_errors_name_the_flag_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.conf");
    let err = DnsLookup::from_resolv_conf(&missing, DEFAULT_TIMEOUT)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with("--resolv-conf ") && err.contains("missing.conf"),
        "{err}"
    );
    let empty = dir.path().join("empty.conf");
    std::fs::write(&empty, "search example\n").unwrap();
    let err = DnsLookup::from_resolv_conf(&empty, DEFAULT_TIMEOUT)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("nameserver"), "{err}");
}
