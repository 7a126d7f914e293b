//! SNI peek parse time: [`redirector::classify::classify`] over the first
//! bytes of a connection, as the daemon runs it once per connection before
//! it decides. ClientHellos captured on loopback (the same ones as the unit
//! tests in `classify/tls.rs`), an HTTP request head, and the benchmark's own
//! binary protocol (decided from the first byte).
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use redirector::classify::{Protocol, classify};

/// `openssl s_client -servername example.com` (OpenSSL 3.0.19, TLS 1.3).
const OPENSSL_TLS13: &str = concat!(
    "16030101380100013403037805f3557dd80ed75fcb0e754a491a5e320584e77b85ddf01c219a5ad9",
    "8e877b202b740a0698218fb1c27b31e1dcb2037d62f8c335c866b477837240b76521692e003e1302",
    "13031301c02cc030009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039",
    "c009c0130033009d009c003d003c0035002f00ff010000ad00000010000e00000b6578616d706c65",
    "2e636f6d000b000403000102000a00160014001d0017001e00190018010001010102010301040023",
    "00000016000000170000000d002a0028040305030603080708080809080a080b0804080508060401",
    "05010601030303010302040205020602002b0009080304030303020301002d000201010033002600",
    "24001d0020326334435db3ba1304ff7eeb3a2f17eabe3754f42ff8bdd066dbb68f39ce5a4a",
);
/// curl 7.88.1 to `https://www.example.org:PORT/` (padded to 512 bytes).
const CURL: &str = concat!(
    "1603010200010001fc0303690c766c1753560f3b3bf4f34bc69e160e4573b454e90972b4a3627f2a",
    "e0be7120ec5807b6ff45b22712c95bcf9ef21fb8bd40a5e9347c762fb462aa9de6d01f5b003e1302",
    "13031301c02cc030009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039",
    "c009c0130033009d009c003d003c0035002f00ff0100017500000014001200000f7777772e657861",
    "6d706c652e6f7267000b000403000102000a00160014001d0017001e001900180100010101020103",
    "01040010000e000c02683208687474702f312e31001600000017000000310000000d002a00280403",
    "05030603080708080809080a080b080408050806040105010601030303010302040205020602002b",
    "0009080304030303020301002d00020101003300260024001d0020be956d8215ef63319065803b1c",
    "5a5c69dc7765ec2a806a08782915df8c0b3250001500ae0000000000000000000000000000000000",
    "00000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "00000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "00000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "00000000000000000000000000000000000000000000000000000000000000000000000000",
);
const HTTP: &[u8] = b"GET /index.html HTTP/1.1\r\nHost: www.example.org\r\n\
    User-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";
/// What `cargo xtask bench`'s load generator sends first.
const BENCH_PROTOCOL: &[u8] = b"\0BN1R\0\0\0\0\0\0\0\0\0\0\x40";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn bench(c: &mut Criterion) {
    let cases: [(&str, Vec<u8>, Protocol, Option<&str>); 4] = [
        (
            "tls13-openssl",
            hex(OPENSSL_TLS13),
            Protocol::Tls,
            Some("example.com"),
        ),
        (
            "tls-curl-512b",
            hex(CURL),
            Protocol::Tls,
            Some("www.example.org"),
        ),
        (
            "http-host",
            HTTP.to_vec(),
            Protocol::Http,
            Some("www.example.org"),
        ),
        ("other", BENCH_PROTOCOL.to_vec(), Protocol::Other, None),
    ];
    for (name, bytes, protocol, host) in cases {
        // A benchmark of the wrong answer would measure nothing useful.
        let got = classify(&bytes).expect("complete");
        assert_eq!(
            (got.protocol, got.hostname.as_deref()),
            (protocol, host),
            "{name}"
        );
        c.bench_function(&format!("classify/{name}"), |b| {
            b.iter(|| classify(black_box(&bytes)))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
