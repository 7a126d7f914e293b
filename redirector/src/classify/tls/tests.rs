use super::*;

/// A deterministic xorshift64 generator: fuzz-like inputs, repeatable.
pub(in crate::classify) struct XorShift(pub u64);

impl XorShift {
    pub(in crate::classify) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub(in crate::classify) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(in crate::classify) fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// ClientHellos captured on loopback (a Python listener dumping what it
// received) when these tests were written. One copy in redirector/testdata,
// which the benchmarks and the fuzz target `tls_client_hello` read too.
/// `openssl s_client -servername example.com` (OpenSSL 3.0.19, TLS 1.3
/// by default)
pub(in crate::classify) const OPENSSL_TLS13: &[u8] =
    include_bytes!("../../../testdata/tls_client_hello/openssl_tls13.bin");
/// `curl --resolve www.example.org:PORT:127.0.0.1
/// https://www.example.org:PORT/` (curl 7.88.1, OpenSSL 3.0.19; padded
/// to 512 bytes)
pub(in crate::classify) const CURL: &[u8] =
    include_bytes!("../../../testdata/tls_client_hello/curl.bin");
/// `openssl s_client -tls1_2 -servername api.internal.example`
pub(in crate::classify) const OPENSSL_TLS12: &[u8] =
    include_bytes!("../../../testdata/tls_client_hello/openssl_tls12.bin");
/// `openssl s_client -noservername`
pub(in crate::classify) const OPENSSL_NO_SNI: &[u8] =
    include_bytes!("../../../testdata/tls_client_hello/openssl_no_sni.bin");
/// `openssl s_client -servername frag.example.net -max_send_frag 512
/// -alpn <20 long protocols>`: a 512-byte and a 351-byte handshake record
pub(in crate::classify) const OPENSSL_TWO_RECORDS: &[u8] =
    include_bytes!("../../../testdata/tls_client_hello/openssl_two_records.bin");

/// A synthetic ClientHello, built field by field.
#[derive(Clone)]
pub(in crate::classify) struct Hello {
    pub session_id: Vec<u8>,
    pub suites: Vec<u16>,
    pub extensions: Vec<(u16, Vec<u8>)>,
}

impl Hello {
    pub(in crate::classify) fn new() -> Self {
        Self {
            session_id: vec![0xab; 32],
            suites: vec![0x1301, 0x1302, 0xc02f],
            extensions: Vec::new(),
        }
    }

    pub(in crate::classify) fn ext(mut self, kind: u16, data: Vec<u8>) -> Self {
        self.extensions.push((kind, data));
        self
    }

    pub(in crate::classify) fn sni(self, name: &str) -> Self {
        self.ext(EXT_SERVER_NAME, server_name_list(&[(0, name.as_bytes())]))
    }

    pub(in crate::classify) fn body(&self) -> Vec<u8> {
        let mut b = vec![3, 3];
        b.extend((0..32u8).map(|i| i.wrapping_mul(37)));
        b.push(self.session_id.len() as u8);
        b.extend(&self.session_id);
        b.extend(((self.suites.len() * 2) as u16).to_be_bytes());
        for s in &self.suites {
            b.extend(s.to_be_bytes());
        }
        b.extend([1, 0]);
        let mut exts = Vec::new();
        for (kind, data) in &self.extensions {
            exts.extend(kind.to_be_bytes());
            exts.extend((data.len() as u16).to_be_bytes());
            exts.extend(data);
        }
        b.extend((exts.len() as u16).to_be_bytes());
        b.extend(exts);
        b
    }

    /// The handshake message: type, 24-bit length, body.
    pub(in crate::classify) fn handshake(&self) -> Vec<u8> {
        handshake(&self.body())
    }

    pub(in crate::classify) fn record(&self) -> Vec<u8> {
        records(&self.handshake(), &[])
    }
}

pub(in crate::classify) fn handshake(body: &[u8]) -> Vec<u8> {
    let len = body.len() as u32;
    let mut m = vec![HANDSHAKE_CLIENT_HELLO];
    m.extend(&len.to_be_bytes()[1..]);
    m.extend(body);
    m
}

pub(in crate::classify) fn server_name_list(entries: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (kind, name) in entries {
        list.push(*kind);
        list.extend((name.len() as u16).to_be_bytes());
        list.extend(*name);
    }
    let mut data = (list.len() as u16).to_be_bytes().to_vec();
    data.extend(list);
    data
}

/// Wraps `message` in handshake records, cut at `cuts` (ascending
/// offsets into `message`) and wherever a record would exceed 2^14.
pub(in crate::classify) fn records(message: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut bounds = vec![0];
    for &cut in cuts {
        bounds.push(cut);
    }
    bounds.push(message.len());
    let mut out = Vec::new();
    for pair in bounds.windows(2) {
        for chunk in message[pair[0]..pair[1]].chunks(MAX_RECORD_PAYLOAD) {
            out.extend([CONTENT_HANDSHAKE, 3, 1]);
            out.extend((chunk.len() as u16).to_be_bytes());
            out.extend(chunk);
        }
    }
    out
}

fn grease_hello() -> Hello {
    let mut hello = Hello::new();
    hello.suites.insert(0, 0x5a5a);
    hello
        .ext(0x0a0a, vec![])
        .ext(0x000a, vec![0, 4, 0x3a, 0x3a, 0, 0x1d])
        .sni("grease.example")
        .ext(0xfafa, vec![0])
}

/// Every prefix of `full` is `Incomplete`; `full` itself gives `expected`.
#[track_caller]
fn assert_prefixes(full: &[u8], expected: Result<Option<&str>, TlsError>) {
    for n in 0..full.len() {
        assert_eq!(
            parse_client_hello(&full[..n]),
            Err(TlsError::Incomplete),
            "prefix of {n} of {} bytes",
            full.len()
        );
    }
    assert_eq!(
        parse_client_hello(full),
        expected.map(|name| name.map(str::to_owned))
    );
}

#[test]
fn captured_hellos_every_prefix() {
    let table: &[(&[u8], Option<&str>)] = &[
        (OPENSSL_TLS13, Some("example.com")),
        (CURL, Some("www.example.org")),
        (OPENSSL_TLS12, Some("api.internal.example")),
        (OPENSSL_NO_SNI, None),
        (OPENSSL_TWO_RECORDS, Some("frag.example.net")),
    ];
    for &(captured, name) in table {
        assert_prefixes(captured, Ok(name));
    }
}

#[test]
fn captured_two_record_hello_is_two_records() {
    let bytes = OPENSSL_TWO_RECORDS;
    assert_eq!(&bytes[..5], &[22, 3, 1, 2, 0]);
    assert_eq!(&bytes[5 + 512..5 + 512 + 5], &[22, 3, 1, 1, 0x5f]);
    assert_eq!(bytes.len(), 5 + 512 + 5 + 351);
}

#[test]
fn synthetic_hellos_every_prefix() {
    let many = (0..40u16)
        .map(|i| (0x1000 + i, vec![i as u8; usize::from(i)]))
        .collect::<Vec<_>>();
    let mut among_many = Hello::new();
    among_many.extensions = many.clone();
    among_many = among_many.sni("middle.example");
    among_many.extensions.extend(many.clone());

    let table: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        (
            "single record",
            Hello::new().sni("example.com").record(),
            Some("example.com"),
        ),
        (
            "no SNI",
            Hello::new().ext(0x000b, vec![1, 0]).record(),
            None,
        ),
        (
            "no extensions block",
            records(
                &handshake(&{
                    let mut body = Hello::new().body();
                    body.truncate(body.len() - 2);
                    body
                }),
                &[],
            ),
            None,
        ),
        ("empty extensions block", Hello::new().record(), None),
        (
            "SNI among many extensions",
            among_many.record(),
            Some("middle.example"),
        ),
        ("GREASE", grease_hello().record(), Some("grease.example")),
        (
            "SNI last of many",
            {
                let mut h = Hello::new();
                h.extensions = many;
                h.sni("last.example").record()
            },
            Some("last.example"),
        ),
        (
            "other name type first",
            Hello::new()
                .ext(
                    EXT_SERVER_NAME,
                    server_name_list(&[(7, b"opaque"), (0, b"typed.example")]),
                )
                .record(),
            Some("typed.example"),
        ),
        (
            "only another name type",
            Hello::new()
                .ext(EXT_SERVER_NAME, server_name_list(&[(7, b"opaque")]))
                .record(),
            None,
        ),
        (
            "empty session id",
            Hello {
                session_id: vec![],
                ..Hello::new()
            }
            .sni("a.b")
            .record(),
            Some("a.b"),
        ),
        (
            "raw name, not yet normalized",
            Hello::new().sni("WWW.Example.COM.").record(),
            Some("WWW.Example.COM."),
        ),
    ];
    for (what, bytes, name) in &table {
        for n in 0..bytes.len() {
            assert_eq!(
                parse_client_hello(&bytes[..n]),
                Err(TlsError::Incomplete),
                "{what}: prefix {n}"
            );
        }
        assert_eq!(
            parse_client_hello(bytes),
            Ok(name.map(str::to_owned)),
            "{what}"
        );
    }
}

#[test]
fn split_across_records() {
    let message = Hello::new().sni("split.example").handshake();
    let len = message.len();
    let expected = Ok(Some("split.example"));
    assert_prefixes(&records(&message, &[len / 2]), expected);
    assert_prefixes(&records(&message, &[len / 3, 2 * len / 3]), expected);
    // Cuts inside the handshake header, and one byte per record.
    assert_prefixes(&records(&message, &[1, 2, 3]), expected);
    let every: Vec<usize> = (1..len).collect();
    assert_prefixes(&records(&message, &every), expected);
    for cut in 1..len {
        let bytes = records(&message, &[cut]);
        assert_eq!(
            parse_client_hello(&bytes),
            Ok(Some("split.example".into())),
            "cut at {cut}"
        );
    }
}

#[test]
fn split_captured_hello_into_three_records() {
    let bytes = CURL;
    let message = &bytes[5..];
    assert_prefixes(&records(message, &[100, 300]), Ok(Some("www.example.org")));
}

#[test]
fn hello_larger_than_one_record() {
    let hello = Hello::new().sni("big.example").ext(0x0015, vec![0; 40_000]);
    let bytes = hello.record();
    assert!(bytes.len() > 2 * MAX_RECORD_PAYLOAD);
    assert_eq!(parse_client_hello(&bytes), Ok(Some("big.example".into())));
    // Waiting on a large hello reports Incomplete throughout.
    for n in (0..bytes.len()).step_by(97) {
        assert_eq!(parse_client_hello(&bytes[..n]), Err(TlsError::Incomplete));
    }
}

#[test]
fn trailing_bytes_after_the_hello_are_ignored() {
    let mut bytes = Hello::new().sni("early.example").record();
    bytes.extend([23, 3, 3, 0, 3, 1, 2, 3]); // e.g. early data
    assert_eq!(parse_client_hello(&bytes), Ok(Some("early.example".into())));
    // The same within the hello's own last record.
    let mut message = Hello::new().sni("early.example").handshake();
    message.extend([2, 0, 0, 0]);
    assert_eq!(
        parse_client_hello(&records(&message, &[])),
        Ok(Some("early.example".into()))
    );
}

#[test]
fn not_tls_is_decided_early() {
    let table: &[(&str, &[u8])] = &[
        ("application data", &[23, 3, 3, 0, 10]),
        ("alert", &[21]),
        ("record version 2.x", &[22, 2]),
        ("record version 0x16 0x16", &[22, 22]),
        ("zero-length record", &[22, 3, 1, 0, 0]),
        ("record beyond 2^14", &[22, 3, 1, 0x40, 1]),
        ("ServerHello", &[22, 3, 3, 0, 50, 2]),
        (
            "SSLv2-compatible hello",
            &[0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15],
        ),
        ("HTTP", b"GET / HTTP/1.1\r\n"),
    ];
    for (what, bytes) in table {
        assert_eq!(parse_client_hello(bytes), Err(TlsError::NotTls), "{what}");
    }
}

#[test]
fn malformed() {
    let good = Hello::new().sni("x.example");
    let mut odd_suites = good.body();
    odd_suites[2 + 32 + 1 + 32 + 1] = 5; // cipher_suites length low byte
    let mut long_session = Hello::new().sni("x.example");
    long_session.session_id = vec![0; 33];
    let mut bad_ext_len = good.body();
    let ext_len_at = 2 + 32 + 1 + 32 + 2 + 6 + 2;
    bad_ext_len[ext_len_at + 1] += 1;
    let mut trailing = good.body();
    trailing.push(0);
    let mut second_record_alert = records(&good.handshake(), &[10]);
    second_record_alert[5 + 10] = 21;
    let mut oversized = vec![22, 3, 1, 0, 4, 1];
    oversized.extend([0x10, 0, 0]);

    let table: Vec<(&str, Vec<u8>)> = vec![
        ("odd cipher_suites", records(&handshake(&odd_suites), &[])),
        (
            "no cipher_suites",
            records(
                &handshake(
                    &Hello {
                        suites: vec![],
                        ..good.clone()
                    }
                    .body(),
                ),
                &[],
            ),
        ),
        ("session id over 32", long_session.record()),
        ("extensions overrun", records(&handshake(&bad_ext_len), &[])),
        (
            "bytes after extensions",
            records(&handshake(&trailing), &[]),
        ),
        ("alert between fragments", second_record_alert),
        ("handshake length beyond any ClientHello", oversized),
        ("handshake too short", records(&handshake(&[3, 3, 0]), &[])),
        ("two SNI extensions", good.clone().sni("y.example").record()),
        (
            "two host_names",
            Hello::new()
                .ext(
                    EXT_SERVER_NAME,
                    server_name_list(&[(0, b"a.example"), (0, b"b.example")]),
                )
                .record(),
        ),
        (
            "empty host_name",
            Hello::new()
                .ext(EXT_SERVER_NAME, server_name_list(&[(0, b"")]))
                .record(),
        ),
        (
            "empty server_name extension",
            Hello::new().ext(EXT_SERVER_NAME, vec![]).record(),
        ),
        (
            "empty server_name list",
            Hello::new().ext(EXT_SERVER_NAME, vec![0, 0]).record(),
        ),
        (
            "list length overruns",
            Hello::new()
                .ext(EXT_SERVER_NAME, vec![0, 9, 0, 0, 1, b'a'])
                .record(),
        ),
        (
            "bytes after the list",
            Hello::new()
                .ext(EXT_SERVER_NAME, {
                    let mut d = server_name_list(&[(0, b"a.example")]);
                    d.push(0);
                    d
                })
                .record(),
        ),
        (
            "host_name not UTF-8",
            Hello::new()
                .ext(EXT_SERVER_NAME, server_name_list(&[(0, b"\xff\xfe")]))
                .record(),
        ),
    ];
    for (what, bytes) in &table {
        assert_eq!(
            parse_client_hello(bytes),
            Err(TlsError::Malformed),
            "{what}"
        );
    }
}

#[test]
fn huge_declared_lengths() {
    // 16 MiB declared: no ClientHello is that long.
    let bytes = [22, 3, 1, 0x40, 0, 1, 0xff, 0xff, 0xff];
    assert_eq!(parse_client_hello(&bytes), Err(TlsError::Malformed));
    // 64 KiB declared, a few bytes present: wait, reserving nothing.
    let bytes = [22, 3, 1, 0x40, 0, 1, 0x01, 0x00, 0x00, 3, 3];
    assert_eq!(parse_client_hello(&bytes), Err(TlsError::Incomplete));
}

#[test]
fn client_hello_start() {
    assert!(is_client_hello_start(&[22, 3, 1, 2, 0]));
    assert!(is_client_hello_start(&CURL[..200]));
    assert!(!is_client_hello_start(&[22, 3, 1, 2]));
    assert!(!is_client_hello_start(&[22, 3, 1, 0, 0]));
    assert!(!is_client_hello_start(&[22, 3, 1, 2, 0, 2]));
    assert!(!is_client_hello_start(b"GET / HTTP/1.1"));
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..10_000 {
        let len = rng.below(600);
        let mut bytes = rng.bytes(len);
        // Mostly plausible record headers, so the fuzzing gets past them.
        if rng.below(4) != 0 && bytes.len() >= 6 {
            bytes[..3].copy_from_slice(&[22, 3, 1]);
            bytes[5] = 1;
            if rng.below(2) == 0 {
                let payload = (bytes.len() - 5) as u16;
                bytes[3..5].copy_from_slice(&payload.to_be_bytes());
            }
        }
        let _ = parse_client_hello(&bytes);
    }
}

#[test]
fn mutated_hellos_never_panic_and_decisions_are_final() {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let seeds = [
        CURL.to_vec(),
        OPENSSL_TWO_RECORDS.to_vec(),
        records(&Hello::new().sni("m.example").handshake(), &[7, 40]),
    ];
    for _ in 0..3_000 {
        let mut bytes = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(bytes.len());
            bytes[at] = rng.next() as u8;
        }
        let full = parse_client_hello(&bytes);
        // Whatever a prefix decides, the longer input decides too.
        for n in (0..bytes.len()).step_by(1 + rng.below(40)) {
            match parse_client_hello(&bytes[..n]) {
                Err(TlsError::Incomplete) => {}
                decided => assert_eq!(decided, full, "prefix {n} of {bytes:02x?}"),
            }
        }
    }
}
