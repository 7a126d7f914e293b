//! NO_PROXY decision time with 10 and 10,000 rules: names, `.suffix` and
//! `*.wildcard` names, IPv4/IPv6 CIDRs, IP literals and port-qualified
//! entries, looked up with hits and misses. `cargo xtask bench` runs this and
//! reports the medians; the target is ≤ 1 µs per decision at 10,000 rules.
//!
//! Benchmark ids are `find/<rules>/<query>` (what the daemon calls: a scan
//! for short lists, else the index), `index/<rules>/<query>` (the index
//! alone), `scan/<rules>/<query>` (the linear scan the index replaced) and
//! `decide/<rules>/<query>` (the whole policy decision).
use std::{hint::black_box, net::IpAddr};

use criterion::{Criterion, criterion_group, criterion_main};
use redirector::{
    classify::Protocol,
    config::ProxyConfig,
    noproxy::NoProxy,
    policy::{Builtins, Policy, Target},
};

/// `n` entries cycling through every kind of rule, each distinct.
fn rules(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i % 8 {
            0 => format!("svc{i}.example{}.com", i % 97),
            1 => format!(".team{i}.corp.example"),
            2 => format!("*.api{i}.example.net"),
            3 => format!("10.{}.{}.0/24", (i >> 8) & 0xff, i & 0xff),
            4 => format!("host{i}.example.org:8443"),
            5 => format!("fd00:{:x}::/48", i & 0xffff),
            6 => format!("192.168.{}.{}", (i >> 8) & 0xff, i & 0xff),
            _ => format!("172.16.{}.{}:8080", (i >> 8) & 0xff, i & 0xff),
        })
        .collect()
}

/// The last rule of a kind: a linear scan reaches it last.
fn last(rules: &[String], kind: usize) -> usize {
    (0..rules.len())
        .rev()
        .find(|i| i % 8 == kind)
        .expect("rule")
}

/// One lookup: hostname, destination, port.
struct Query {
    name: &'static str,
    host: Option<String>,
    ip: IpAddr,
    port: u16,
}

fn queries(rules: &[String]) -> Vec<Query> {
    let ext: IpAddr = "203.0.113.7".parse().unwrap();
    let name = last(rules, 0);
    let cidr = last(rules, 3);
    vec![
        // A subdomain of the last plain name rule.
        Query {
            name: "name-hit",
            host: Some(format!("a.b.svc{name}.example{}.com", name % 97)),
            ip: ext,
            port: 443,
        },
        // A wildcard rule near the end.
        Query {
            name: "wildcard-hit",
            host: Some(format!("x.api{}.example.net", last(rules, 2))),
            ip: ext,
            port: 443,
        },
        // Nothing matches: every rule is looked at by a scan.
        Query {
            name: "name-miss",
            host: Some("www.nowhere.example.com".into()),
            ip: ext,
            port: 443,
        },
        // No hostname (raw TCP), destination in the last CIDR.
        Query {
            name: "cidr-hit",
            host: None,
            ip: format!("10.{}.{}.9", (cidr >> 8) & 0xff, cidr & 0xff)
                .parse()
                .unwrap(),
            port: 443,
        },
        // No hostname, destination in no rule: the proxy.
        Query {
            name: "ip-miss",
            host: None,
            ip: ext,
            port: 443,
        },
    ]
}

fn bench(c: &mut Criterion) {
    for n in [10, 10_000] {
        let rules = rules(n);
        let np = NoProxy::parse(&rules).expect("rules parse");
        let json = serde_json::json!({
            "httpsProxy": "http://10.249.0.2:3128/",
            "noProxy": rules,
        })
        .to_string();
        let policy = Policy::new(
            ProxyConfig::parse("bench", &json).expect("config parses"),
            &Builtins::default(),
        );
        for q in queries(&rules) {
            let host = q.host.as_deref();
            c.bench_function(&format!("find/{n}/{}", q.name), |b| {
                b.iter(|| np.find(black_box(host), black_box(q.ip), black_box(q.port)))
            });
            c.bench_function(&format!("index/{n}/{}", q.name), |b| {
                b.iter(|| np.find_by_index(black_box(host), black_box(q.ip), black_box(q.port)))
            });
            c.bench_function(&format!("scan/{n}/{}", q.name), |b| {
                b.iter(|| np.find_by_scan(black_box(host), black_box(q.ip), black_box(q.port)))
            });
            let target = Target {
                ip: Some(q.ip),
                host,
                port: q.port,
                protocol: Protocol::Tls,
            };
            c.bench_function(&format!("decide/{n}/{}", q.name), |b| {
                b.iter(|| policy.decide(black_box(&target)))
            });
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
