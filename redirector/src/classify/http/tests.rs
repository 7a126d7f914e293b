use super::*;
use crate::classify::tls::tests::XorShift;

/// Every strict prefix of `full` is `Incomplete`.
#[track_caller]
fn assert_prefixes_incomplete(full: &[u8]) {
    for n in 0..full.len() {
        assert_eq!(
            parse_request_head(&full[..n]),
            Err(HttpError::Incomplete),
            "prefix {n}: {:?}",
            String::from_utf8_lossy(&full[..n])
        );
    }
}

#[test]
fn hosts() {
    let table: &[(&str, &[u8], Option<&str>)] = &[
        (
            "GET with Host",
            b"GET / HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n",
            Some("example.com"),
        ),
        (
            "Host with port",
            b"GET /x?y=1 HTTP/1.1\r\nHost: example.com:8080\r\n\r\n",
            Some("example.com:8080"),
        ),
        (
            "IPv6 Host",
            b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
            Some("[::1]:8080"),
        ),
        (
            "IPv4 Host",
            b"GET / HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n\r\n",
            Some("10.0.0.1:8080"),
        ),
        (
            "lowercase header name",
            b"GET / HTTP/1.1\r\nhost: lower.example\r\n\r\n",
            Some("lower.example"),
        ),
        (
            "odd case, tabs and spaces",
            b"GET / HTTP/1.1\r\nX-A: b\r\nhOsT:\t  spaced.example \t\r\n\r\n",
            Some("spaced.example"),
        ),
        (
            "first Host wins",
            b"GET / HTTP/1.1\r\nHost: one.example\r\nHost: two.example\r\n\r\n",
            Some("one.example"),
        ),
        (
            "absolute form, no Host",
            b"GET http://example.com:8080/x HTTP/1.0\r\n\r\n",
            Some("example.com:8080"),
        ),
        (
            "absolute form wins over Host",
            b"GET http://target.example/ HTTP/1.1\r\nHost: header.example\r\n\r\n",
            Some("target.example"),
        ),
        (
            "absolute form with userinfo and query",
            b"GET https://u:p@user.example?q HTTP/1.1\r\n\r\n",
            Some("user.example"),
        ),
        (
            "absolute form, empty authority",
            b"GET http:///x HTTP/1.1\r\nHost: fallback.example\r\n\r\n",
            Some("fallback.example"),
        ),
        ("HTTP/1.0 without Host", b"GET / HTTP/1.0\r\n\r\n", None),
        (
            "HTTP/1.0 with Host",
            b"HEAD / HTTP/1.0\r\nHost: old.example\r\n\r\n",
            Some("old.example"),
        ),
        (
            "CONNECT",
            b"CONNECT tunnel.example:443 HTTP/1.1\r\nHost: tunnel.example:443\r\n\r\n",
            Some("tunnel.example:443"),
        ),
        (
            "CONNECT without Host",
            b"CONNECT tunnel.example:443 HTTP/1.1\r\n\r\n",
            Some("tunnel.example:443"),
        ),
        (
            "POST with body after the head",
            b"POST /api HTTP/1.1\r\nHost: api.example\r\nContent-Length: 4\r\n\r\nbody",
            Some("api.example"),
        ),
        (
            "bare LF line ends",
            b"GET / HTTP/1.1\nHost: lf.example\n\n",
            Some("lf.example"),
        ),
        (
            "mixed line ends",
            b"GET / HTTP/1.1\r\nHost: mixed.example\n\r\n",
            Some("mixed.example"),
        ),
        ("empty Host", b"GET / HTTP/1.1\r\nHost:\r\n\r\n", Some("")),
        (
            "asterisk form",
            b"OPTIONS * HTTP/1.1\r\nHost: star.example\r\n\r\n",
            Some("star.example"),
        ),
        (
            "unknown 20-letter method",
            b"ABCDEFGHIJKLMNOPQRST / HTTP/1.1\r\nHost: m.example\r\n\r\n",
            Some("m.example"),
        ),
        (
            "Host-like header is not Host",
            b"GET / HTTP/1.1\r\nX-Host: no.example\r\nHostname: no.example\r\n\r\n",
            None,
        ),
        (
            "raw, not yet normalized",
            b"GET / HTTP/1.1\r\nHost: WWW.Example.COM.\r\n\r\n",
            Some("WWW.Example.COM."),
        ),
    ];
    for (what, head, host) in table {
        assert_eq!(
            parse_request_head(head),
            Ok(host.map(str::to_owned)),
            "{what}"
        );
    }
}

#[test]
fn head_split_at_every_prefix() {
    let heads: &[&[u8]] = &[
        b"GET /index.html HTTP/1.1\r\nUser-Agent: curl/8\r\nHost: split.example\r\nAccept: */*\r\n\r\n",
        b"GET http://example.com:8080/x HTTP/1.0\r\n\r\n",
        b"CONNECT tunnel.example:443 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\nHost: lf.example\n\n",
    ];
    for head in heads {
        assert_prefixes_incomplete(head);
        assert!(parse_request_head(head).is_ok());
    }
}

#[test]
fn not_http() {
    let table: &[(&str, &[u8])] = &[
        ("lowercase first byte", b"g"),
        ("digit first", b"1"),
        ("TLS", &[22, 3, 1]),
        ("NUL", &[0]),
        ("SSH banner, decided at the dash", b"SSH-"),
        ("SSH banner", b"SSH-2.0-OpenSSH_9.6\r\n"),
        ("lowercase method", b"GeT / HTTP/1.1\r\n"),
        ("method of 21 letters", b"ABCDEFGHIJKLMNOPQRSTU"),
        ("no method", b" / HTTP/1.1\r\n"),
        ("two spaces", b"GET  / HTTP/1.1\r\n"),
        ("control byte in target", b"GET /\x01"),
        ("tab in target", b"GET /\t"),
        ("HTTP/0.9", b"GET /\r\n"),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        ("HTTP/1.2", b"GET / HTTP/1.2\r\n"),
        ("lowercase version", b"GET / http/1.1\r\n"),
        ("text after version", b"GET / HTTP/1.1 x\r\n"),
        ("CR not followed by LF", b"GET / HTTP/1.1\rX"),
        ("SMTP-style command", b"EHLO mail.example\r\n"),
        ("version cut wrong early", b"GET / HTTX"),
    ];
    for (what, bytes) in table {
        assert_eq!(parse_request_head(bytes), Err(HttpError::NotHttp), "{what}");
    }
}

#[test]
fn malformed_header_blocks() {
    let table: &[(&str, &[u8])] = &[
        ("no colon", b"GET / HTTP/1.1\r\nHost example.com\r\n\r\n"),
        (
            "space before colon",
            b"GET / HTTP/1.1\r\nHost : example.com\r\n\r\n",
        ),
        (
            "folded line",
            b"GET / HTTP/1.1\r\nX: a\r\n  b\r\nHost: e.example\r\n\r\n",
        ),
        ("empty name", b"GET / HTTP/1.1\r\n: x\r\n\r\n"),
        (
            "bare CR in value",
            b"GET / HTTP/1.1\r\nHost: a\rb.example\r\n\r\n",
        ),
        (
            "NUL in value",
            b"GET / HTTP/1.1\r\nHost: a\0.example\r\n\r\n",
        ),
    ];
    for (what, bytes) in table {
        assert_eq!(
            parse_request_head(bytes),
            Err(HttpError::Malformed),
            "{what}"
        );
    }
    // Decided at the bad line, before the block ends.
    assert_eq!(
        parse_request_head(b"GET / HTTP/1.1\r\nnot a header\r\nHost: x"),
        Err(HttpError::Malformed)
    );
}

#[test]
fn non_utf8_host_is_none() {
    assert_eq!(
        parse_request_head(b"GET / HTTP/1.1\r\nHost: caf\xe9.example\r\n\r\n"),
        Ok(None)
    );
}

#[test]
fn request_line_seen() {
    assert!(has_request_line(b"GET / HTTP/1.1\r\n"));
    assert!(has_request_line(b"GET / HTTP/1.1\r\nHost: partial"));
    assert!(!has_request_line(b"GET / HTTP/1.1\r"));
    assert!(!has_request_line(b"GET /very/long/target"));
    assert!(!has_request_line(b"SSH-2.0-x\r\n"));
}

#[test]
fn random_bytes_never_panic_and_decisions_are_final() {
    let mut rng = XorShift(0xdead_beef_cafe_f00d);
    let alphabet = b"GETPOS HTP/1.0\r\n:hostHOST[]@?#x.example";
    for _ in 0..10_000 {
        let len = rng.below(120);
        let bytes: Vec<u8> = if rng.below(2) == 0 {
            rng.bytes(len)
        } else {
            // Mostly HTTP-ish text, so the fuzzing gets past the first byte.
            let mut b = b"GET / HTTP/1.1\r\n".to_vec();
            b.truncate(rng.below(b.len() + 1));
            b.extend((0..len).map(|_| alphabet[rng.below(alphabet.len())]));
            b
        };
        let full = parse_request_head(&bytes);
        for n in 0..bytes.len() {
            match parse_request_head(&bytes[..n]) {
                Err(HttpError::Incomplete) => {}
                decided => assert_eq!(decided, full, "prefix {n} of {bytes:?}"),
            }
        }
    }
}

#[test]
fn recipients() {
    use Recipient::*;
    let table: &[(&str, &[u8], Result<Recipient, HttpError>)] = &[
        ("origin form", b"GET /x HTTP/1.1\r\n", Ok(Origin)),
        ("asterisk form", b"OPTIONS * HTTP/1.1\r\n", Ok(Origin)),
        (
            "a path that looks like a URL",
            b"GET /a://b HTTP/1.1\r\n",
            Ok(Origin),
        ),
        (
            "absolute form",
            b"GET http://a.example/ HTTP/1.1\r\n",
            Ok(Proxy),
        ),
        (
            "absolute form, https",
            b"GET https://a.example/ HTTP/1.0\n",
            Ok(Proxy),
        ),
        (
            "absolute form, ws",
            b"GET ws://a.example/chat HTTP/1.1\r\n",
            Ok(Proxy),
        ),
        (
            "absolute form, no authority",
            b"GET http:///x HTTP/1.1\r\n",
            Ok(Proxy),
        ),
        (
            "authority form",
            b"CONNECT a.example:443 HTTP/1.1\r\n",
            Ok(Proxy),
        ),
        (
            "CONNECT to an address",
            b"CONNECT 10.0.0.1:22 HTTP/1.0\r\n",
            Ok(Proxy),
        ),
        // Decided by the line: what follows does not matter.
        (
            "a bad header after a proxy request line",
            b"CONNECT a.example:443 HTTP/1.1\r\nno colon\r\n\r\n",
            Ok(Proxy),
        ),
        (
            "line incomplete",
            b"CONNECT a.example:443 HTTP/1.1",
            Err(HttpError::Incomplete),
        ),
        ("not HTTP", b"SSH-2.0-x\r\n", Err(HttpError::NotHttp)),
        (
            "HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            Err(HttpError::NotHttp),
        ),
    ];
    for (what, bytes, want) in table {
        assert_eq!(recipient(bytes), *want, "{what}");
    }
}
