//! Classify: recover the protocol and the hostname a client wants from its
//! first bytes, before anything is dialled.
//!
//! [`classify`] is pure and is asked again each time more bytes arrive; it
//! answers [`Incomplete`] until the bytes decide. [`peek_classify`] is the
//! only part that touches a socket, and it only peeks: whatever it saw is
//! still there for the relay or the HTTP server that reads next.
//!
//! Fail-open: a connection whose first bytes say nothing useful is still
//! carried, as [`Protocol::Other`] with no hostname, and routed by its IP.
mod http;
mod tls;

use std::{io, mem::MaybeUninit, net::Ipv4Addr, time::Duration};

use socket2::SockRef;
use tokio::{
    io::Interest,
    net::TcpStream,
    time::{self, Instant},
};

/// What the first bytes of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Starts with a TLS handshake record.
    Tls,
    /// Starts with an HTTP/1.x request line.
    Http,
    /// Anything else, including clients that wait for the server to speak.
    Other,
}

/// The verdict on one connection's first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub protocol: Protocol,
    /// Normalized DNS name: ASCII lowercase, no trailing dot, no port, only
    /// `[a-z0-9-_]` labels of 1..=63 bytes, at most 253 bytes in all. IP
    /// literals and anything invalid give `None`.
    pub hostname: Option<String>,
}

impl Classification {
    fn new(protocol: Protocol, hostname: Option<String>) -> Self {
        Self { protocol, hostname }
    }

    fn other() -> Self {
        Self::new(Protocol::Other, None)
    }
}

/// The bytes so far are a valid beginning; more are needed to decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("more bytes are needed to classify the connection")]
pub struct Incomplete;

/// Classifies the bytes a client has sent so far.
///
/// Once this returns `Ok`, longer buffers starting with the same bytes give
/// the same answer, so a caller may stop reading at the first `Ok`.
pub fn classify(buf: &[u8]) -> Result<Classification, Incomplete> {
    match buf.first() {
        None => Err(Incomplete),
        Some(&tls::CONTENT_HANDSHAKE) => match tls::parse_client_hello(buf) {
            Ok(sni) => Ok(Classification::new(
                Protocol::Tls,
                sni.as_deref().and_then(normalize_name),
            )),
            Err(tls::TlsError::Incomplete) => Err(Incomplete),
            // The record header and handshake type were a ClientHello's, so a
            // TLS server is what the client expects, even if it will refuse.
            Err(tls::TlsError::Malformed) => Ok(Classification::new(Protocol::Tls, None)),
            Err(tls::TlsError::NotTls) => Ok(Classification::other()),
        },
        Some(b'A'..=b'Z') => match http::parse_request_head(buf) {
            Ok(host) => Ok(Classification::new(
                Protocol::Http,
                host.as_deref().and_then(normalize_authority),
            )),
            Err(http::HttpError::Incomplete) => Err(Incomplete),
            // A valid request line: an HTTP server will be the one to reject it.
            Err(http::HttpError::Malformed) => Ok(Classification::new(Protocol::Http, None)),
            Err(http::HttpError::NotHttp) => Ok(Classification::other()),
        },
        Some(_) => Ok(Classification::other()),
    }
}

/// The best answer for bytes that will not grow any more (size limit,
/// timeout or end of stream): a decision if there is one, else a guess from
/// how the bytes begin, never with a hostname.
fn settle(buf: &[u8]) -> Classification {
    classify(buf).unwrap_or_else(|Incomplete| {
        if tls::is_client_hello_start(buf) {
            Classification::new(Protocol::Tls, None)
        } else if http::has_request_line(buf) {
            Classification::new(Protocol::Http, None)
        } else {
            Classification::other()
        }
    })
}

/// How long and how far [`peek_classify`] looks before it settles.
#[derive(Debug, Clone, Copy)]
pub struct PeekLimits {
    /// Most bytes buffered; a ClientHello larger than this gets no hostname.
    pub max_bytes: usize,
    /// How long a client may take to send enough to decide; also how long a
    /// server-speaks-first client (SMTP, SSH) waits before being relayed.
    pub timeout: Duration,
}

impl Default for PeekLimits {
    fn default() -> Self {
        Self {
            // Room for a ClientHello with post-quantum key shares several
            // times over, and for a typical HTTP request head.
            max_bytes: 16 * 1024,
            timeout: Duration::from_millis(500),
        }
    }
}

/// Peeks (never consuming) until [`classify`] decides, `max_bytes` are
/// buffered, the client closes its side, or `timeout` passes, and returns
/// the best answer then. Socket errors give [`Protocol::Other`].
#[cfg(test)]
pub async fn peek_classify(stream: &TcpStream, limits: PeekLimits) -> Classification {
    peek_classify_timed(stream, limits).await.0
}

/// [`peek_classify`], and whether `timeout` passed before the bytes decided
/// (for the `peek_timeout` metric).
pub async fn peek_classify_timed(stream: &TcpStream, limits: PeekLimits) -> (Classification, bool) {
    let mut peeked = Peeked::new(limits.max_bytes);
    let deadline = Instant::now() + limits.timeout;
    match time::timeout_at(deadline, peek_until_decided(stream, &mut peeked)).await {
        Ok(Ok(Some(decided))) => (decided, false),
        Ok(Ok(None)) => (settle(peeked.bytes()), false),
        Ok(Err(error)) => {
            tracing::debug!(%error, "peeking at the first bytes failed");
            (Classification::other(), false)
        }
        Err(_elapsed) => {
            // Bytes that arrived just as the timer fired still count; the
            // socket is non-blocking, so this cannot wait.
            let class = match peeked.peek(stream) {
                Ok(_) => settle(peeked.bytes()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => settle(peeked.bytes()),
                Err(_) => Classification::other(),
            };
            (class, true)
        }
    }
}

/// `Ok(None)`: no more bytes will help (end of stream or buffer full).
async fn peek_until_decided(
    stream: &TcpStream,
    peeked: &mut Peeked,
) -> io::Result<Option<Classification>> {
    if peeked.is_full() {
        return Ok(None);
    }
    loop {
        // Peeking leaves the bytes queued, so the socket stays readable and
        // a plain `peek().await` would spin. Reporting "no new bytes" as
        // WouldBlock through `try_io` clears tokio's readiness, so the next
        // wake-up is the next segment. A FIN raises no new edge once data is
        // queued (a peek still returns that data, never 0), hence the check
        // of `is_read_closed`, which tokio never clears.
        let ready = stream.ready(Interest::READABLE).await?;
        let before = peeked.len;
        let peek = stream.try_io(Interest::READABLE, || match peeked.peek(stream)? {
            n if n == before && n > 0 => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        });
        match peek {
            Ok(0) => return Ok(None),
            Ok(_) => {
                if let Ok(decided) = classify(peeked.bytes()) {
                    return Ok(Some(decided));
                }
                if peeked.is_full() {
                    return Ok(None);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if ready.is_read_closed() {
                    return Ok(None);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The bytes seen so far, in a buffer that grows only as far as they do.
struct Peeked {
    /// Zero-filled when grown, so every byte is initialized whatever a peek
    /// writes.
    buf: Vec<u8>,
    /// How many bytes of `buf` the last peek filled.
    len: usize,
    /// The buffer never grows past this.
    max: usize,
}

impl Peeked {
    /// Enough for most ClientHellos (curl's is 517 bytes, a browser's with a
    /// post-quantum key share about 1.8 KiB) in one peek.
    const INITIAL: usize = 2048;

    fn new(max: usize) -> Self {
        Self {
            buf: vec![0; Self::INITIAL.min(max)],
            len: 0,
            max,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn is_full(&self) -> bool {
        self.len >= self.max
    }

    /// Peeks at everything queued, up to `max`; returns how many bytes that is.
    fn peek(&mut self, stream: &TcpStream) -> io::Result<usize> {
        let sock = SockRef::from(stream);
        loop {
            // SAFETY: `&mut [u8]` and `&mut [MaybeUninit<u8>]` have the same
            // layout, and socket2 promises `recv` never writes uninitialized
            // bytes, so `buf` stays initialized.
            let uninit =
                unsafe { &mut *(self.buf.as_mut_slice() as *mut [u8] as *mut [MaybeUninit<u8>]) };
            self.len = sock.peek(uninit)?;
            if self.len < self.buf.len() || self.buf.len() >= self.max {
                return Ok(self.len);
            }
            let grown = self.buf.len().saturating_mul(2).min(self.max);
            self.buf.resize(grown, 0);
        }
    }
}

/// Longest DNS name in text form, without the trailing dot.
const MAX_NAME: usize = 253;
/// Longest DNS label.
const MAX_LABEL: usize = 63;

/// Normalizes a TLS SNI `host_name`, which carries no port.
fn normalize_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_NAME {
        return None;
    }
    let valid = name.split('.').all(|label| {
        (1..=MAX_LABEL).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !valid || is_ipv4_like(name) {
        return None;
    }
    Some(name.to_ascii_lowercase())
}

/// Normalizes an HTTP authority (`Host` header or request target): strips
/// the port, refuses IP literals.
fn normalize_authority(authority: &str) -> Option<String> {
    // `[v6]` with or without a port: an IP literal, and no name to find.
    if authority.starts_with('[') {
        return None;
    }
    let host = match authority.split_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        // A second colon (a bare IPv6 address) or a port that isn't digits.
        Some(_) => return None,
        None => authority,
    };
    normalize_name(host)
}

/// An all-numeric last label never names a DNS host (RFC 3696 §2), while
/// URL parsers and `inet_aton` read `10.1`, `0x7f.1` or `2130706433` as
/// IPv4 addresses: a name that could be an address is treated as one.
fn is_ipv4_like(name: &str) -> bool {
    if name.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    let hex = last.strip_prefix("0x").or_else(|| last.strip_prefix("0X"));
    match hex {
        Some(digits) => digits.bytes().all(|b| b.is_ascii_hexdigit()),
        None => last.bytes().all(|b| b.is_ascii_digit()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
        time::{Instant, sleep},
    };

    use super::*;
    use crate::classify::tls::tests::{CURL, Hello, OPENSSL_TWO_RECORDS, XorShift, hex, records};

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
                hex(CURL),
                Ok(tls(Some("www.example.org"))),
            ),
            (
                "captured two-record hello",
                hex(OPENSSL_TWO_RECORDS),
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
            ("half a hello", hex(CURL)[..200].to_vec(), Err(Incomplete)),
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
                Ok(http(Some("abs.example"))),
            ),
            (
                "CONNECT",
                b"CONNECT t.example:443 HTTP/1.1\r\n\r\n".to_vec(),
                Ok(http(Some("t.example"))),
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
                Ok(http(None)),
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
            hex(CURL),
            hex(OPENSSL_TWO_RECORDS),
            records(&Hello::new().sni("three.example").handshake(), &[20, 60]),
            b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n".to_vec(),
        ];
        for input in &inputs {
            for n in 0..input.len() {
                assert_eq!(classify(&input[..n]), Err(Incomplete), "prefix {n}");
            }
            assert!(classify(input).is_ok());
        }
    }

    #[test]
    fn settle_guesses_without_a_hostname() {
        let curl = hex(CURL);
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
            hex(CURL),
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
        let hello = hex(CURL);
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
        let hello = hex(CURL);
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
        client.write_all(&hex(CURL)).await.unwrap();
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
}
