use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::{Instant, sleep},
};

use super::*;
use crate::classify::tls::tests::{CURL, Hello, OPENSSL_TWO_RECORDS, XorShift, records};

fn tls(host: Option<&str>) -> Classification {
    Classification::new(Protocol::Tls, host.map(str::to_owned))
}

fn http(host: Option<&str>) -> Classification {
    Classification::new(Protocol::Http, host.map(str::to_owned))
}

#[test]
fn classify_table() {
    let table: Vec<(&str, Vec<u8>, Result<Classification, Incomplete>)> = vec![
        ("empty", vec![], Err(Incomplete)),
        (
            "captured curl hello",
            CURL.to_vec(),
            Ok(tls(Some("www.example.org"))),
        ),
        (
            "captured two-record hello",
            OPENSSL_TWO_RECORDS.to_vec(),
            Ok(tls(Some("frag.example.net"))),
        ),
        (
            "SNI normalized",
            Hello::new().sni("WWW.Example.COM.").record(),
            Ok(tls(Some("www.example.com"))),
        ),
        (
            "SNI an IP literal",
            Hello::new().sni("192.0.2.1").record(),
            Ok(tls(None)),
        ),
        (
            "SNI with a port is invalid",
            Hello::new().sni("a.example:443").record(),
            Ok(tls(None)),
        ),
        ("no SNI", Hello::new().record(), Ok(tls(None))),
        ("half a hello", CURL[..200].to_vec(), Err(Incomplete)),
        (
            "malformed hello",
            vec![22, 3, 1, 0, 6, 1, 0, 0, 2, 3, 3],
            Ok(tls(None)),
        ),
        (
            "TLS application data",
            vec![22, 1],
            Ok(Classification::other()),
        ),
        (
            "HTTP",
            b"GET / HTTP/1.1\r\nHost: Example.COM:8080\r\n\r\n".to_vec(),
            Ok(http(Some("example.com"))),
        ),
        (
            "HTTP, IPv6 host",
            b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n".to_vec(),
            Ok(http(None)),
        ),
        (
            "HTTP, IPv4 host",
            b"GET / HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n\r\n".to_vec(),
            Ok(http(None)),
        ),
        (
            "HTTP, absolute form",
            b"GET http://abs.example:8080/x HTTP/1.0\r\n\r\n".to_vec(),
            Ok(Classification::opaque(Opaque::ProxyRequest)),
        ),
        (
            "CONNECT",
            b"CONNECT t.example:443 HTTP/1.1\r\n\r\n".to_vec(),
            Ok(Classification::opaque(Opaque::ProxyRequest)),
        ),
        (
            "HTTP, no host",
            b"GET / HTTP/1.0\r\n\r\n".to_vec(),
            Ok(http(None)),
        ),
        (
            "HTTP, head incomplete",
            b"GET / HTTP/1.1\r\nHost: a.example\r\n".to_vec(),
            Err(Incomplete),
        ),
        (
            "HTTP, malformed head",
            b"GET / HTTP/1.1\r\nbad\r\n\r\n".to_vec(),
            Ok(Classification::opaque(Opaque::MalformedHttp)),
        ),
        (
            "SSH banner",
            b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(),
            Ok(Classification::other()),
        ),
        (
            "SSH, first four bytes",
            b"SSH-".to_vec(),
            Ok(Classification::other()),
        ),
        (
            "lowercase",
            b"get / HTTP/1.1\r\n".to_vec(),
            Ok(Classification::other()),
        ),
        ("binary", vec![0, 1, 2, 3], Ok(Classification::other())),
        (
            "SSLv2 hello",
            vec![0x80, 0x2e, 0x01, 0x03, 0x01],
            Ok(Classification::other()),
        ),
        ("one byte of TLS", vec![22], Err(Incomplete)),
        ("one capital", b"G".to_vec(), Err(Incomplete)),
    ];
    for (what, bytes, expected) in table {
        assert_eq!(classify(&bytes), expected, "{what}");
    }
}

#[test]
fn classify_every_prefix_of_decisive_inputs() {
    let inputs = [
        CURL.to_vec(),
        OPENSSL_TWO_RECORDS.to_vec(),
        records(&Hello::new().sni("three.example").handshake(), &[20, 60]),
        b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n".to_vec(),
        b"CONNECT t.example:443 HTTP/1.1\r\n".to_vec(),
        b"GET http://a.example/ HTTP/1.1\r\n".to_vec(),
        HTTP2_PREFACE.to_vec(),
    ];
    for input in &inputs {
        for n in 0..input.len() {
            assert_eq!(classify(&input[..n]), Err(Incomplete), "prefix {n}");
        }
        assert!(classify(input).is_ok());
    }
}

/// Issue 13: what the HTTP/1 forwarder must not carry is decided at once
/// and carried by address, whatever follows.
#[test]
fn proxy_requests_and_h2c_are_opaque() {
    let proxy = Classification::opaque(Opaque::ProxyRequest);
    let h2 = Classification::opaque(Opaque::Http2PriorKnowledge);
    let table: &[(&str, &[u8], Classification)] = &[
        (
            "CONNECT from HTTPS_PROXY, the name is not the destination's",
            b"CONNECT api.example:443 HTTP/1.1\r\nHost: api.example:443\r\n\r\n",
            proxy.clone(),
        ),
        (
            "CONNECT, request line only",
            b"CONNECT api.example:443 HTTP/1.1\r\n",
            proxy.clone(),
        ),
        (
            "absolute form from HTTP_PROXY",
            b"GET http://api.example/x HTTP/1.1\r\nHost: api.example\r\n\r\n",
            proxy.clone(),
        ),
        (
            "absolute-form WebSocket through a proxy",
            b"GET ws://chat.example/ HTTP/1.1\r\nUpgrade: websocket\r\n",
            proxy.clone(),
        ),
        ("h2c prior knowledge", HTTP2_PREFACE, h2.clone()),
        (
            "h2c with its first frame",
            &[HTTP2_PREFACE, &[0, 0, 0, 4, 0, 0, 0, 0, 0]].concat(),
            h2,
        ),
        (
            "PRI line without the rest of the preface",
            b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
            Classification::other(),
        ),
        (
            "a WebSocket upgrade to the origin stays HTTP",
            b"GET /chat HTTP/1.1\r\nHost: chat.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            http(Some("chat.example")),
        ),
    ];
    for (what, bytes, want) in table {
        assert_eq!(classify(bytes).as_ref(), Ok(want), "{what}");
        // And whatever the client wrote, no name to route by.
        assert_eq!(settle(bytes), *want, "{what}, settled");
    }
    for n in 0..HTTP2_PREFACE.len() {
        assert_eq!(classify(&HTTP2_PREFACE[..n]), Err(Incomplete), "prefix {n}");
        assert_eq!(settle(&HTTP2_PREFACE[..n]), Classification::other());
    }
    assert_eq!(proxy.label(), "proxy-request");
    assert_eq!(http(None).label(), "http");
    assert_eq!(Classification::other().label(), "tcp");
}

#[test]
fn settle_guesses_without_a_hostname() {
    let curl = CURL;
    let table: &[(&str, &[u8], Classification)] = &[
        ("nothing", b"", Classification::other()),
        ("TLS record header", &curl[..5], tls(None)),
        ("half a hello", &curl[..300], tls(None)),
        (
            "less than a record header",
            &curl[..4],
            Classification::other(),
        ),
        (
            "request line",
            b"GET / HTTP/1.1\r\nHost: cut.exa",
            http(None),
        ),
        (
            "part of a request line",
            b"GET /long",
            Classification::other(),
        ),
        (
            "decided",
            b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
            http(Some("a.example")),
        ),
    ];
    for (what, bytes, expected) in table {
        assert_eq!(&settle(bytes), expected, "{what}");
    }
}

#[test]
fn normalization() {
    let long_label = "a".repeat(63);
    let too_long_label = "a".repeat(64);
    let name_253 = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "a".repeat(61));
    let name_254 = format!("{name_253}a");
    let table: Vec<(&str, Option<&str>)> = vec![
        ("example.com", Some("example.com")),
        ("Example.COM", Some("example.com")),
        ("example.com.", Some("example.com")),
        ("example.com:8080", Some("example.com")),
        ("example.com:", Some("example.com")),
        ("EXAMPLE.com.:443", Some("example.com")),
        ("under_score.example", Some("under_score.example")),
        ("x-y.example", Some("x-y.example")),
        ("localhost", Some("localhost")),
        ("1password.example", Some("1password.example")),
        (long_label.as_str(), Some(long_label.as_str())),
        (too_long_label.as_str(), None),
        (name_253.as_str(), Some(name_253.as_str())),
        (name_254.as_str(), None),
        ("", None),
        (".", None),
        (":80", None),
        ("example..com", None),
        (".example.com", None),
        ("example.com..", None),
        ("exa mple.com", None),
        ("exämple.com", None),
        ("xn--exmple-cua.com", Some("xn--exmple-cua.com")),
        ("example.com:http", None),
        ("example.com:80:80", None),
        ("10.0.0.1", None),
        ("10.0.0.1:8080", None),
        ("10.0.0.1.", None),
        ("10.1", None),
        ("2130706433", None),
        ("0x7f.1", None),
        ("example.0x1F", None),
        ("[::1]", None),
        ("[::1]:8080", None),
        ("::1", None),
        ("fe80::1%eth0", None),
        ("user@example.com", None),
        ("example.com/path", None),
    ];
    for (raw, expected) in table {
        assert_eq!(normalize_authority(raw).as_deref(), expected, "{raw:?}");
    }
    // An SNI host_name never carries a port.
    assert_eq!(normalize_name("example.com:443"), None);
    assert_eq!(normalize_name("Example.com."), Some("example.com".into()));
}

#[test]
fn random_bytes_never_panic_and_decisions_are_final() {
    let mut rng = XorShift(0x0123_4567_89ab_cdef);
    let seeds = [
        CURL.to_vec(),
        b"GET / HTTP/1.1\r\nHost: seed.example\r\n\r\n".to_vec(),
    ];
    for _ in 0..10_000 {
        let bytes = if rng.below(2) == 0 {
            let len = rng.below(300);
            rng.bytes(len)
        } else {
            let mut b = seeds[rng.below(seeds.len())].clone();
            let at = rng.below(b.len());
            b[at] = rng.next() as u8;
            b.truncate(1 + rng.below(b.len()));
            b
        };
        let full = classify(&bytes);
        let _ = settle(&bytes);
        for n in (0..bytes.len()).step_by(1 + rng.below(16)) {
            if let Ok(decided) = classify(&bytes[..n]) {
                assert_eq!(Ok(decided), full, "prefix {n} of {bytes:02x?}");
            }
        }
    }
}

/// A listener on loopback port 0, a client connected to it, and the
/// accepted side.
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    (client, accepted)
}

/// Everything the accepted side can read until the client closes.
async fn read_all(mut accepted: TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    accepted.read_to_end(&mut all).await.unwrap();
    all
}

fn limits(timeout_ms: u64) -> PeekLimits {
    PeekLimits {
        timeout: Duration::from_millis(timeout_ms),
        ..PeekLimits::default()
    }
}

#[tokio::test]
async fn peek_hello_in_three_writes_consumes_nothing() {
    let hello = CURL.to_vec();
    let (mut client, accepted) = pair().await;
    let sent = hello.clone();
    let writer = tokio::spawn(async move {
        for chunk in [&sent[..3], &sent[3..200], &sent[200..]] {
            client.write_all(chunk).await.unwrap();
            client.flush().await.unwrap();
            sleep(Duration::from_millis(30)).await;
        }
        client
    });
    let started = Instant::now();
    let got = peek_classify(&accepted, limits(2_000)).await;
    assert_eq!(got, tls(Some("www.example.org")));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let mut client = writer.await.unwrap();
    client.write_all(b"after").await.unwrap();
    drop(client);
    let mut expected = hello;
    expected.extend(b"after");
    assert_eq!(read_all(accepted).await, expected);
}

#[tokio::test]
async fn peek_hello_split_across_records_and_writes() {
    let hello = records(
        &Hello::new().sni("Three.Records.example").handshake(),
        &[30, 70],
    );
    let (mut client, accepted) = pair().await;
    let sent = hello.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(25) {
            client.write_all(chunk).await.unwrap();
            sleep(Duration::from_millis(5)).await;
        }
        client
    });
    let got = peek_classify(&accepted, limits(2_000)).await;
    assert_eq!(got, tls(Some("three.records.example")));
    drop(writer.await.unwrap());
    assert_eq!(read_all(accepted).await, hello);
}

#[tokio::test]
async fn peek_silent_client_is_other_after_the_timeout() {
    let (_client, accepted) = pair().await;
    let started = Instant::now();
    let (got, timed_out) = peek_classify_timed(&accepted, limits(100)).await;
    let elapsed = started.elapsed();
    assert_eq!(got, Classification::other());
    assert!(timed_out);
    assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(600), "{elapsed:?}");
}

#[tokio::test]
async fn peek_http_request_consumes_nothing() {
    let request = b"GET /x HTTP/1.1\r\nHost: Web.Example:8080\r\nAccept: */*\r\n\r\n";
    let (mut client, accepted) = pair().await;
    client.write_all(request).await.unwrap();
    let (got, timed_out) = peek_classify_timed(&accepted, limits(2_000)).await;
    assert_eq!(got, http(Some("web.example")));
    assert!(!timed_out);
    drop(client);
    assert_eq!(read_all(accepted).await, request);
}

#[tokio::test]
async fn peek_huge_hello_is_tls_without_a_name_promptly() {
    let hello = Hello::new()
        .sni("huge.example")
        .ext(0x0015, vec![0; 40_000])
        .record();
    let (mut client, accepted) = pair().await;
    let sent = hello.clone();
    let writer = tokio::spawn(async move {
        client.write_all(&sent).await.unwrap();
        client
    });
    let started = Instant::now();
    let got = peek_classify(&accepted, limits(5_000)).await;
    assert_eq!(got, tls(None));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    drop(writer.await.unwrap());
    assert_eq!(read_all(accepted).await, hello);
}

#[tokio::test]
async fn peek_hello_that_fits_after_growing_the_buffer() {
    let hello = Hello::new()
        .sni("grown.example")
        .ext(0x0015, vec![0; 9_000])
        .record();
    let (mut client, accepted) = pair().await;
    client.write_all(&hello).await.unwrap();
    let got = peek_classify(&accepted, limits(2_000)).await;
    assert_eq!(got, tls(Some("grown.example")));
}

#[tokio::test]
async fn peek_settles_promptly_when_the_client_closes() {
    let hello = CURL;
    let table: Vec<(&str, Vec<u8>, Classification)> = vec![
        ("half a hello", hello[..100].to_vec(), tls(None)),
        (
            "request line only",
            b"GET / HTTP/1.1\r\n".to_vec(),
            http(None),
        ),
        ("nothing", vec![], Classification::other()),
    ];
    for (what, bytes, expected) in table {
        let (mut client, accepted) = pair().await;
        client.write_all(&bytes).await.unwrap();
        client.shutdown().await.unwrap();
        let started = Instant::now();
        let got = peek_classify(&accepted, limits(5_000)).await;
        assert_eq!(got, expected, "{what}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{what}: {:?}",
            started.elapsed()
        );
        assert_eq!(read_all(accepted).await, bytes, "{what}");
    }
}

#[tokio::test]
async fn peek_ssh_banner_is_other_at_once() {
    let (mut client, accepted) = pair().await;
    client.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await.unwrap();
    let started = Instant::now();
    let got = peek_classify(&accepted, limits(5_000)).await;
    assert_eq!(got, Classification::other());
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn peek_stalled_head_settles_at_the_timeout() {
    let (mut client, accepted) = pair().await;
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: slow.exa")
        .await
        .unwrap();
    let started = Instant::now();
    let got = peek_classify(&accepted, limits(100)).await;
    assert_eq!(got, http(None));
    assert!(started.elapsed() >= Duration::from_millis(100));
    drop(client);
}

#[tokio::test]
async fn peek_with_no_room_settles_at_once() {
    let (mut client, accepted) = pair().await;
    client.write_all(CURL).await.unwrap();
    let limits = PeekLimits {
        max_bytes: 0,
        timeout: Duration::from_secs(5),
    };
    let started = Instant::now();
    assert_eq!(
        peek_classify(&accepted, limits).await,
        Classification::other()
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    // Ten bytes are a record header and the start of a ClientHello.
    let limits = PeekLimits {
        max_bytes: 10,
        ..limits
    };
    assert_eq!(peek_classify(&accepted, limits).await, tls(None));
}
