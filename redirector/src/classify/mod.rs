//! Classify: recover the protocol and the hostname a client wants from its
//! first bytes, before anything is dialled.
//!
//! [`classify`] is pure and is asked again each time more bytes arrive; it
//! answers [`Incomplete`] until the bytes decide. [`peek_classify_timed`] is
//! the only part that touches a socket, and it only peeks: whatever it saw
//! is still there for the relay or the HTTP server that reads next.
//!
//! Fail-open: a connection whose first bytes say nothing useful is still
//! carried, as [`Protocol::Other`] with no hostname, and routed by its IP.
//! So is one whose bytes the HTTP/1 forwarder must not touch ([`Opaque`]):
//! a client speaking to a proxy of its own, HTTP/2 with prior knowledge, a
//! request head the forwarder would refuse.
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
    /// Starts with an HTTP/1.x request to an origin server, which the
    /// HTTP/1 forwarder carries.
    Http,
    /// Anything else, including clients that wait for the server to speak:
    /// carried as opaque bytes to the original destination.
    Other,
}

/// Why a connection whose bytes were recognised (or never looked at) is
/// still carried as opaque bytes, by address ([`Protocol::Other`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opaque {
    /// `CONNECT` or an absolute-form request: the client speaks to a proxy
    /// of its own at the destination (`HTTPS_PROXY`, JVM proxy properties),
    /// which must get the request as the client wrote it.
    ProxyRequest,
    /// HTTP/2 with prior knowledge (`h2c`): the `PRI * HTTP/2.0` preface.
    Http2PriorKnowledge,
    /// A valid request line followed by a header block that the HTTP/1
    /// forwarder would refuse; the origin may not.
    MalformedHttp,
    /// The destination port is in `serverFirstPorts`: not peeked at.
    ServerFirstPort,
}

impl Opaque {
    /// The name logs give it.
    pub const fn label(self) -> &'static str {
        match self {
            Opaque::ProxyRequest => "proxy-request",
            Opaque::Http2PriorKnowledge => "h2-prior-knowledge",
            Opaque::MalformedHttp => "malformed-http",
            Opaque::ServerFirstPort => "server-first-port",
        }
    }
}

/// The verdict on one connection's first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub protocol: Protocol,
    /// Normalized DNS name: ASCII lowercase, no trailing dot, no port, only
    /// `[a-z0-9-_]` labels of 1..=63 bytes, at most 253 bytes in all. IP
    /// literals and anything invalid give `None`.
    pub hostname: Option<String>,
    /// For [`Protocol::Other`]: what was recognised, if anything.
    pub opaque: Option<Opaque>,
}

impl Classification {
    fn new(protocol: Protocol, hostname: Option<String>) -> Self {
        Self {
            protocol,
            hostname,
            opaque: None,
        }
    }

    fn other() -> Self {
        Self::new(Protocol::Other, None)
    }

    /// Carried as opaque bytes by address, for `why`.
    pub fn opaque(why: Opaque) -> Self {
        Self {
            opaque: Some(why),
            ..Self::other()
        }
    }

    /// `tls`, `http`, `tcp`, or the [`Opaque`] label: for logs.
    pub fn label(&self) -> &'static str {
        match (self.protocol, self.opaque) {
            (Protocol::Tls, _) => "tls",
            (Protocol::Http, _) => "http",
            (Protocol::Other, Some(why)) => why.label(),
            (Protocol::Other, None) => "tcp",
        }
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
        Some(b'A'..=b'Z') => classify_http(buf),
        Some(_) => Ok(Classification::other()),
    }
}

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bytes that start with a capital letter: HTTP/1 to an origin (the
/// forwarder's), or one of the kinds it must leave untouched.
fn classify_http(buf: &[u8]) -> Result<Classification, Incomplete> {
    // The preface's first line is not HTTP/1, and is decided only once
    // whole, so that every prefix of it gives the same answer.
    if buf.len() < HTTP2_PREFACE.len() && HTTP2_PREFACE.starts_with(buf) {
        return Err(Incomplete);
    }
    if buf.starts_with(HTTP2_PREFACE) {
        return Ok(Classification::opaque(Opaque::Http2PriorKnowledge));
    }
    match http::recipient(buf) {
        Ok(http::Recipient::Proxy) => return Ok(Classification::opaque(Opaque::ProxyRequest)),
        Ok(http::Recipient::Origin) => {}
        Err(http::HttpError::Incomplete) => return Err(Incomplete),
        Err(http::HttpError::NotHttp | http::HttpError::Malformed) => {
            return Ok(Classification::other());
        }
    }
    match http::parse_request_head(buf) {
        Ok(host) => Ok(Classification::new(
            Protocol::Http,
            host.as_deref().and_then(normalize_authority),
        )),
        Err(http::HttpError::Incomplete) => Err(Incomplete),
        // hyper would answer 400 where the origin might not: its bytes go
        // to the origin as they are.
        Err(http::HttpError::Malformed) => Ok(Classification::opaque(Opaque::MalformedHttp)),
        Err(http::HttpError::NotHttp) => Ok(Classification::other()),
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

/// How long and how far [`peek_classify_timed`] looks before it settles.
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

/// [`peek_classify_timed`]'s verdict alone, for tests.
#[cfg(test)]
pub async fn peek_classify(stream: &TcpStream, limits: PeekLimits) -> Classification {
    peek_classify_timed(stream, limits).await.0
}

/// Peeks (never consuming) until [`classify`] decides, `max_bytes` are
/// buffered, the client closes its side, or `timeout` passes, and returns
/// the best answer then, with whether `timeout` passed before the bytes
/// decided (for the `peek_timeout` metric). Socket errors give
/// [`Protocol::Other`].
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
mod tests;
