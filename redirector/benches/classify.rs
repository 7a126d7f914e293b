//! SNI peek parse time: [`redirector::classify::classify`] over the first
//! bytes of a connection, as the daemon runs it once per connection before
//! it decides. ClientHellos captured on loopback (from redirector/testdata,
//! as the unit tests in `classify/tls/tests.rs` read them), an HTTP request
//! head, and the benchmark's own binary protocol (decided from the first
//! byte).
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use redirector::classify::{Protocol, classify};

/// `openssl s_client -servername example.com` (OpenSSL 3.0.19, TLS 1.3).
const OPENSSL_TLS13: &[u8] = include_bytes!("../testdata/tls_client_hello/openssl_tls13.bin");
/// curl 7.88.1 to `https://www.example.org:PORT/` (padded to 512 bytes).
const CURL: &[u8] = include_bytes!("../testdata/tls_client_hello/curl.bin");
const HTTP: &[u8] = b"GET /index.html HTTP/1.1\r\nHost: www.example.org\r\n\
    User-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";
/// What `cargo xtask bench`'s load generator sends first.
const BENCH_PROTOCOL: &[u8] = b"\0BN1R\0\0\0\0\0\0\0\0\0\0\x40";

fn bench(c: &mut Criterion) {
    let cases: [(&str, &[u8], Protocol, Option<&str>); 4] = [
        (
            "tls13-openssl",
            OPENSSL_TLS13,
            Protocol::Tls,
            Some("example.com"),
        ),
        (
            "tls-curl-512b",
            CURL,
            Protocol::Tls,
            Some("www.example.org"),
        ),
        ("http-host", HTTP, Protocol::Http, Some("www.example.org")),
        ("other", BENCH_PROTOCOL, Protocol::Other, None),
    ];
    for (name, bytes, protocol, host) in cases {
        // A benchmark of the wrong answer would measure nothing useful.
        let got = classify(bytes).expect("complete");
        assert_eq!(
            (got.protocol, got.hostname.as_deref()),
            (protocol, host),
            "{name}"
        );
        c.bench_function(&format!("classify/{name}"), |b| {
            b.iter(|| classify(black_box(bytes)))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
