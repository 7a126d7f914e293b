//! The NO_PROXY parser (`NoProxy::parse`) and matcher (`find`, and its
//! index against the plain scan).
//!
//! Input is text, so that seeds are readable and mutations stay plausible:
//! each line is a `noProxy` element (itself possibly a comma-separated
//! list), except lines `@HOST IP PORT`, which are connections to match
//! (`-` for no host, an unparsable IP for none).
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use redirector::noproxy::NoProxy;

struct Query<'a> {
    host: Option<&'a str>,
    ip: Option<IpAddr>,
    port: u16,
}

fn query(line: &str) -> Query<'_> {
    let mut fields = line.rsplitn(3, ' ');
    let port = fields.next().and_then(|p| p.parse().ok()).unwrap_or(443);
    let ip = fields.next().and_then(|ip| ip.parse().ok());
    let host = fields.next().filter(|&h| h != "-");
    Query { host, ip, port }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (queries, entries): (Vec<&str>, Vec<&str>) =
        text.split('\n').partition(|l| l.starts_with('@'));
    let Ok(rules) = NoProxy::parse(&entries) else {
        return;
    };
    let mut queries: Vec<Query> = queries.iter().map(|q| query(&q[1..])).collect();
    if queries.is_empty() {
        queries.push(query(""));
    }

    // The entries as stored read back to the same rules.
    let stored: Vec<&str> = rules.rules().iter().map(|r| r.entry()).collect();
    assert_eq!(
        NoProxy::parse(&stored).as_ref(),
        Ok(&rules),
        "re-parsing {stored:?}"
    );

    // Kernel prefixes have their host bits cleared (the LPM tries key on
    // them), and user space names the kernel rule for an address inside.
    for net in rules.kernel_bypass() {
        assert_eq!(*net, net.trunc(), "host bits set in {net}");
        for q in &queries {
            let found = rules.find(q.host, net.network(), q.port);
            assert!(
                found.is_some_and(|r| r.in_kernel()),
                "{net}: found {found:?}"
            );
        }
    }

    for q in &queries {
        let found = rules.find(q.host, q.ip, q.port);
        // The index (used for long lists) names the very rule a scan in the
        // order written does, whatever the list's length.
        let by_index = rules.find_by_index(q.host, q.ip, q.port);
        let by_scan = rules.find_by_scan(q.host, q.ip, q.port);
        assert!(
            by_index.map(std::ptr::from_ref) == by_scan.map(std::ptr::from_ref),
            "{:?} {:?} {}: index {by_index:?}, scan {by_scan:?}",
            q.host,
            q.ip,
            q.port
        );
        // Matching ignores ASCII letter case.
        let upper = q.host.map(str::to_ascii_uppercase);
        assert_eq!(
            rules.find(upper.as_deref(), q.ip, q.port),
            found,
            "{:?} vs {upper:?}",
            q.host
        );
        // With a destination IP, an in-kernel rule never depends on the
        // hostname (without one, an IP literal host stands in for it).
        if let Some(rule) = found.filter(|r| r.in_kernel() && q.ip.is_some()) {
            assert_eq!(rules.find(None, q.ip, q.port), Some(rule));
        }
    }
});
