//! Dial: open the upstream side of a connection, either a `CONNECT` tunnel
//! through the proxy or a direct connection. Every socket opened here
//! carries the daemon's `SO_MARK`, which the kernel hook skips, so the
//! daemon's own connects are never redirected back to itself.
//!
//! An `https://` proxy gets TLS first, verified against `trustedCA` and the
//! system roots; `user:password@` in its URL becomes Basic
//! `Proxy-Authorization`. A refused or failed tunnel is an error: the
//! caller resets the client, it never falls back to direct.
//!
//! A direct socket is opened only through [`Dialer::direct`], which
//! refuses the node's own addresses first (`guard`).
pub mod connect;
pub mod guard;
pub mod health;

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use base64::Engine as _;
use bytes::Bytes;
use http::StatusCode;
use thiserror::Error;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

use crate::{
    caller::IdentityHeaders, config::ProxyUrl, relay, socket_options::SocketOptions,
    swappable::Swappable,
};
pub use connect::ConnectError;
pub use guard::{LinkLocal, NodeLocal};
pub use health::ProxyHealth;

/// The upstream side of a relayed connection.
pub enum Upstream {
    /// A TCP socket: a direct connection, or a tunnel through a plain-HTTP
    /// proxy. Both ends are sockets, so the relay can splice.
    Tcp(TcpStream),
    /// A tunnel inside TLS to an `https://` proxy.
    Tls(Box<TlsStream<TcpStream>>),
}

/// An open `CONNECT` tunnel.
pub struct Tunnel {
    pub upstream: Upstream,
    /// Tunnel bytes that arrived with the proxy's answer (an origin that
    /// speaks first); the client gets them before anything else.
    pub early: Bytes,
    /// The proxy it goes through (none: direct), for the audit log: with
    /// failover it may not be the first one listed. Boxed: the tunnel is
    /// part of every connection task's state.
    pub proxy: Option<Box<ProxyUrl>>,
}

impl Tunnel {
    /// A direct connection to the origin, as the relay takes a tunnel.
    pub fn direct(origin: TcpStream) -> Self {
        Tunnel {
            upstream: Upstream::Tcp(origin),
            early: Bytes::new(),
            proxy: None,
        }
    }
}

/// Why the upstream side could not be opened. Never carries credentials.
#[derive(Debug, Error)]
pub enum DialError {
    #[error("cannot resolve proxy {proxy}: {source}")]
    Resolve { proxy: ProxyUrl, source: io::Error },
    #[error("proxy {proxy} unreachable: {source}")]
    ProxyUnreachable { proxy: ProxyUrl, source: io::Error },
    #[error(
        "proxy {proxy} speaks plain HTTP, not TLS, on that port: the proxy URL says https:// \
         but the proxy answered the TLS handshake in plain HTTP; write http:// in the URL"
    )]
    ProxySpeaksPlainHttp { proxy: ProxyUrl },
    #[error("TLS to proxy {proxy} failed: {source}")]
    ProxyTls { proxy: ProxyUrl, source: io::Error },
    #[error(
        "proxy {proxy} refused CONNECT {authority}: 407 Proxy Authentication Required \
         (auth failed: check the credentials in the proxy URL)"
    )]
    AuthFailed { proxy: ProxyUrl, authority: String },
    #[error("proxy {proxy} refused CONNECT {authority}: {status}")]
    Refused {
        proxy: ProxyUrl,
        authority: String,
        status: StatusCode,
    },
    #[error("proxy {proxy}: CONNECT {authority} failed: {source}")]
    Connect {
        proxy: ProxyUrl,
        authority: String,
        source: ConnectError,
    },
    #[error("proxy {proxy}: {authority} failed: {source}")]
    Protocol {
        proxy: ProxyUrl,
        authority: String,
        source: hyper::Error,
    },
    #[error("direct connect to {dst} failed: {source}")]
    Direct { dst: SocketAddr, source: io::Error },
    #[error("refused to dial {dst} directly: {}", .kind.why())]
    NodeLocal { dst: SocketAddr, kind: NodeLocal },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl DialError {
    /// Whether the proxy could not be reached at all (name, TCP connect or
    /// time out), as opposed to answering with a refusal: only this lets
    /// `failMode: open` go direct; a proxy that says no is obeyed.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            DialError::Resolve { .. } | DialError::ProxyUnreachable { .. } | DialError::Timeout(_)
        )
    }
}

/// How to dial: the mark and options to put on sockets, how long to wait,
/// whom to trust.
#[derive(Clone)]
pub struct Dialer {
    pub socket_mark: u32,
    /// Buffers and keepalive of every upstream socket, as on the pods' side.
    pub sockets: SocketOptions,
    /// Bound on TCP connect plus the proxy's answer to CONNECT.
    pub timeout: Duration,
    /// TLS settings for `https://` proxies (`trustedCA` follows a reload).
    pub tls: Swappable<rustls::ClientConfig>,
    /// Which proxies are up, for failover between listed ones.
    pub health: Arc<ProxyHealth>,
}

/// TLS client settings for `https://` proxies: `trustedCA` plus the
/// system's roots (a proxy with a public certificate needs no trustedCA).
pub fn proxy_tls_config(
    trusted_ca: &[rustls_pki_types::CertificateDer<'static>],
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in trusted_ca {
        roots
            .add(cert.clone())
            .map_err(|e| anyhow::anyhow!("trustedCA: {e}"))?;
    }
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(
        trusted_ca = trusted_ca.len(),
        system_roots = added,
        "proxy TLS roots"
    );
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl Dialer {
    /// Opens a direct connection to `dst`, unless it is one of the node's
    /// own addresses (see `guard`); `link_local` says whether an operator's
    /// rule names the address.
    pub async fn direct(
        &self,
        dst: SocketAddr,
        link_local: LinkLocal,
    ) -> Result<TcpStream, DialError> {
        guard::check(dst.ip(), link_local).map_err(|kind| DialError::NodeLocal { dst, kind })?;
        tokio::time::timeout(self.timeout, self.connect(dst))
            .await
            .map_err(|_| DialError::Timeout(self.timeout))?
            .map_err(|source| DialError::Direct { dst, source })
    }

    /// Opens a tunnel to `authority` (`host:port`) through `proxy`, the
    /// caller's `identity` headers on the `CONNECT`.
    pub async fn tunnel(
        &self,
        proxy: &ProxyUrl,
        authority: &str,
        identity: &IdentityHeaders,
    ) -> Result<Tunnel, DialError> {
        tokio::time::timeout(self.timeout, self.tunnel_inner(proxy, authority, identity))
            .await
            .map_err(|_| DialError::Timeout(self.timeout))?
    }

    async fn tunnel_inner(
        &self,
        proxy: &ProxyUrl,
        authority: &str,
        identity: &IdentityHeaders,
    ) -> Result<Tunnel, DialError> {
        let mut upstream = self.proxy_stream(proxy).await?;
        let authorization = proxy_authorization(proxy);
        let authorization = authorization.as_ref().and_then(|v| v.to_str().ok());
        let add = &identity.add;
        let exchanged = match &mut upstream {
            Upstream::Tcp(s) => connect::exchange(s, authority, authorization, add).await,
            Upstream::Tls(s) => connect::exchange(s.as_mut(), authority, authorization, add).await,
        };
        let (response, early) = exchanged.map_err(|source| DialError::Connect {
            proxy: proxy.clone(),
            authority: authority.to_owned(),
            source,
        })?;
        let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::BAD_GATEWAY);
        if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            return Err(DialError::AuthFailed {
                proxy: proxy.clone(),
                authority: authority.to_owned(),
            });
        }
        if !status.is_success() {
            return Err(DialError::Refused {
                proxy: proxy.clone(),
                authority: authority.to_owned(),
                status,
            });
        }
        Ok(Tunnel {
            upstream,
            early,
            proxy: Some(Box::new(proxy.clone())),
        })
    }

    /// A tunnel through the first of `first` and `fallbacks` that can be
    /// reached, up ones first ([`health`]). A proxy that answers, even
    /// with a refusal, ends the search: only an unreachable one fails over.
    pub async fn tunnel_any(
        &self,
        first: &ProxyUrl,
        fallbacks: &[ProxyUrl],
        authority: &str,
        identity: &IdentityHeaders,
    ) -> Result<Tunnel, DialError> {
        if fallbacks.is_empty() {
            return self.tunnel(first, authority, identity).await;
        }
        let candidates: Vec<&ProxyUrl> = std::iter::once(first).chain(fallbacks).collect();
        let mut last = None;
        for proxy in self.health.order(&candidates) {
            match self.tunnel(proxy, authority, identity).await {
                Err(e) if e.is_unreachable() => {
                    self.health.mark(proxy, false);
                    last = Some(e);
                }
                Ok(tunnel) => {
                    self.health.mark(proxy, true);
                    return Ok(tunnel);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(DialError::Timeout(self.timeout)))
    }

    /// A connection to the first of `first` and `fallbacks` that can be
    /// reached, as [`Dialer::tunnel_any`] chooses, with the proxy chosen.
    pub async fn proxy_connection_any(
        &self,
        first: &ProxyUrl,
        fallbacks: &[ProxyUrl],
    ) -> Result<(Upstream, ProxyUrl), DialError> {
        if fallbacks.is_empty() {
            return Ok((self.proxy_connection(first).await?, first.clone()));
        }
        let candidates: Vec<&ProxyUrl> = std::iter::once(first).chain(fallbacks).collect();
        let mut last = None;
        for proxy in self.health.order(&candidates) {
            let connected = tokio::time::timeout(self.timeout, self.proxy_stream(proxy))
                .await
                .unwrap_or(Err(DialError::Timeout(self.timeout)));
            match connected {
                Err(e) if e.is_unreachable() => {
                    self.health.mark(proxy, false);
                    last = Some(e);
                }
                Ok(io) => {
                    self.health.mark(proxy, true);
                    return Ok((io, proxy.clone()));
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(DialError::Timeout(self.timeout)))
    }

    /// A connection to the proxy itself (for plain HTTP forwarding).
    pub async fn proxy_connection(&self, proxy: &ProxyUrl) -> Result<Upstream, DialError> {
        self.proxy_stream(proxy).await
    }

    /// A connection to the proxy itself: TCP, and TLS for `https://`.
    async fn proxy_stream(&self, proxy: &ProxyUrl) -> Result<Upstream, DialError> {
        let tcp = self.connect_proxy(proxy).await?;
        if !proxy.tls {
            return Ok(Upstream::Tcp(tcp));
        }
        let name = rustls_pki_types::ServerName::try_from(proxy.host.clone()).map_err(|e| {
            DialError::ProxyTls {
                proxy: proxy.clone(),
                source: io::Error::new(io::ErrorKind::InvalidInput, e),
            }
        })?;
        let connector = tokio_rustls::TlsConnector::from(self.tls.load());
        match connector.connect(name, tcp).await {
            Ok(mut tls) => {
                // What rustls queues for a proxy that reads slowly: one
                // record or so per connection, not its default 64 KiB.
                tls.get_mut()
                    .1
                    .set_buffer_limit(Some(relay::tls::SEND_LIMIT));
                Ok(Upstream::Tls(Box::new(tls)))
            }
            Err(e) if answered_in_plain_http(&e) => Err(DialError::ProxySpeaksPlainHttp {
                proxy: proxy.clone(),
            }),
            Err(source) => Err(DialError::ProxyTls {
                proxy: proxy.clone(),
                source,
            }),
        }
    }

    /// Connects to the proxy, trying each of its addresses in turn.
    async fn connect_proxy(&self, proxy: &ProxyUrl) -> Result<TcpStream, DialError> {
        let addrs = tokio::net::lookup_host((proxy.host.as_str(), proxy.port))
            .await
            .map_err(|source| DialError::Resolve {
                proxy: proxy.clone(),
                source,
            })?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in addrs {
            match self.connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = e,
            }
        }
        Err(DialError::ProxyUnreachable {
            proxy: proxy.clone(),
            source: last,
        })
    }

    /// A TCP connect for a relayed connection: marked, with [`Dialer::sockets`].
    async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        connect_with(addr, self.socket_mark, Some(&self.sockets)).await
    }
}

/// The `Proxy-Authorization` value for a proxy URL with credentials.
pub fn proxy_authorization(proxy: &ProxyUrl) -> Option<http::HeaderValue> {
    let (user, password) = proxy.credentials.as_ref()?;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut value = http::HeaderValue::from_str(&format!("Basic {token}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// Whether a TLS handshake failed because the peer answered with something
/// that is not TLS at all, as a plain-HTTP proxy does ("HTTP/1.1 400 ...").
fn answered_in_plain_http(e: &io::Error) -> bool {
    use rustls::{Error, InvalidMessage};
    matches!(
        e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()),
        Some(Error::InvalidMessage(
            InvalidMessage::InvalidContentType | InvalidMessage::UnknownProtocolVersion
        ))
    )
}

/// A TCP connect from a socket that carries `mark` (needs CAP_NET_ADMIN).
pub async fn connect_marked(addr: SocketAddr, mark: u32) -> io::Result<TcpStream> {
    connect_with(addr, mark, None).await
}

/// A marked connect, with `options` set before it: the SYN offers the
/// window scale the buffers allow.
async fn connect_with(
    addr: SocketAddr,
    mark: u32,
    options: Option<&SocketOptions>,
) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    let sock = socket2::SockRef::from(&socket);
    sock.set_mark(mark)?;
    if let Some(options) = options {
        options.apply(sock)?;
        options.offer_window_scale(socket2::SockRef::from(&socket))?;
    }
    socket.set_nodelay(true)?;
    let stream = socket.connect(addr).await?;
    if let Some(options) = options {
        options.after_connect(socket2::SockRef::from(&stream))?;
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A one-shot fake proxy: reads the request head, answers `reply`,
    /// then echoes. Returns the head it received.
    async fn fake_proxy(reply: &'static str) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                if s.read(&mut b).await.unwrap() == 0 {
                    break;
                }
                head.push(b[0]);
            }
            s.write_all(reply.as_bytes()).await.unwrap();
            let mut buf = [0u8; 64];
            if let Ok(n) = s.read(&mut buf).await {
                let _ = s.write_all(&buf[..n]).await;
            }
            String::from_utf8(head).unwrap()
        });
        (addr, task)
    }

    fn dialer() -> Dialer {
        // Mark 0 is "no mark" and needs no privilege.
        Dialer {
            socket_mark: 0,
            sockets: SocketOptions::default(),
            timeout: Duration::from_secs(5),
            tls: Swappable::new(proxy_tls_config(&[]).unwrap()),
            health: Default::default(),
        }
    }

    #[tokio::test]
    async fn an_unreachable_proxy_fails_over_to_the_next_and_is_skipped_after() {
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dead = ProxyUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let dialer = dialer();
        for _ in 0..2 {
            let (addr, head) = fake_proxy("HTTP/1.1 200 OK\r\n\r\n").await;
            let live = ProxyUrl::parse(&format!("http://{addr}")).unwrap();
            let tunnel = dialer
                .tunnel_any(&dead, &[live], "10.0.0.1:443", &IdentityHeaders::default())
                .await;
            assert!(tunnel.is_ok(), "failed over");
            // The fake proxy hands its head over once the tunnel closes.
            drop(tunnel);
            assert!(head.await.unwrap().starts_with("CONNECT 10.0.0.1:443"));
            assert!(dialer.health.is_down(&dead));
        }
        // A refusal is obeyed: no failover past a proxy that answered.
        let (refusing, _) = fake_proxy("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n").await;
        let refusing = ProxyUrl::parse(&format!("http://{refusing}")).unwrap();
        let err = dialer
            .tunnel_any(
                &refusing,
                std::slice::from_ref(&dead),
                "10.0.0.1:443",
                &IdentityHeaders::default(),
            )
            .await
            .err()
            .unwrap();
        assert!(matches!(err, DialError::Refused { .. }), "{err}");
    }

    #[tokio::test]
    async fn https_url_to_a_plain_http_proxy_says_so() {
        // A plain HTTP server answers the ClientHello's first bytes with 400.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        });
        let proxy = ProxyUrl::parse(&format!("https://user:secret@{addr}")).unwrap();
        let err = dialer()
            .tunnel(&proxy, "10.0.0.1:443", &IdentityHeaders::default())
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, DialError::ProxySpeaksPlainHttp { .. }),
            "{err}"
        );
        let message = err.to_string();
        assert!(message.contains("write http://"), "{message}");
        assert!(!message.contains("secret"), "{message}");
    }

    #[tokio::test]
    async fn proxy_auth_failure_is_named() {
        let (addr, _head) =
            fake_proxy("HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n")
                .await;
        let proxy = ProxyUrl::parse(&format!("http://user:secret@{addr}")).unwrap();
        let err = dialer()
            .tunnel(&proxy, "10.0.0.1:443", &IdentityHeaders::default())
            .await
            .err()
            .unwrap();
        assert!(matches!(err, DialError::AuthFailed { .. }), "{err}");
        assert!(err.to_string().contains("auth failed"));
        assert!(!err.to_string().contains("secret"));
    }

    #[tokio::test]
    async fn tunnel_sends_connect_with_auth_and_carries_bytes() {
        let (addr, head) = fake_proxy("HTTP/1.0 200 Connection established\r\n\r\n").await;
        let proxy = ProxyUrl::parse(&format!("http://us%3Aer:p%40ss@{addr}")).unwrap();
        let tunnel = dialer()
            .tunnel(&proxy, "[fd00::1]:443", &IdentityHeaders::default())
            .await
            .unwrap();
        let Upstream::Tcp(mut io) = tunnel.upstream else {
            panic!("a plain-HTTP proxy gives a TCP tunnel")
        };
        assert!(tunnel.early.is_empty());
        // The relayed connections' socket options, set before connect.
        let sock = socket2::SockRef::from(&io);
        let doubled = 2 * crate::socket_options::DEFAULT_BUFFER;
        assert_eq!(sock.recv_buffer_size().unwrap(), doubled);
        assert_eq!(sock.send_buffer_size().unwrap(), doubled);
        assert!(sock.keepalive().unwrap());
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(90))
        );
        io.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        let head = head.await.unwrap();
        assert!(
            head.starts_with("CONNECT [fd00::1]:443 HTTP/1.1\r\n"),
            "{head}"
        );
        let token = base64::engine::general_purpose::STANDARD.encode("us:er:p@ss");
        assert!(
            head.contains(&format!("Proxy-Authorization: Basic {token}")),
            "{head}"
        );
    }

    #[tokio::test]
    async fn refused_connect_reports_status() {
        let (addr, _head) = fake_proxy("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n").await;
        let proxy = ProxyUrl::parse(&format!("http://{addr}")).unwrap();
        let err = dialer()
            .tunnel(&proxy, "10.0.0.1:443", &IdentityHeaders::default())
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, DialError::Refused { status, .. } if status == 403),
            "{err}"
        );
    }

    /// The escape the guard closes: from the node, `0.0.0.0:port` and
    /// `127.0.0.1:port` reach the node's own loopback services.
    #[tokio::test]
    async fn direct_never_reaches_the_node_s_loopback() {
        let service = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = service.local_addr().unwrap().port();
        for dst in [
            format!("0.0.0.0:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::ffff:127.0.0.1]:{port}"),
            format!("[::]:{port}"),
            format!("[::1]:{port}"),
        ] {
            let dst: SocketAddr = dst.parse().unwrap();
            for link_local in [LinkLocal::Refuse, LinkLocal::AllowedByRule] {
                let err = dialer().direct(dst, link_local).await.err().unwrap();
                assert!(matches!(err, DialError::NodeLocal { .. }), "{dst}: {err}");
                assert!(err.to_string().contains("node's own loopback"), "{err}");
            }
        }
        let link_local = "169.254.169.254:80".parse().unwrap();
        let err = dialer()
            .direct(link_local, LinkLocal::Refuse)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                DialError::NodeLocal {
                    kind: NodeLocal::LinkLocal,
                    ..
                }
            ),
            "{err}"
        );
        // Nothing reached the service.
        let accepted = tokio::time::timeout(Duration::from_millis(100), service.accept()).await;
        assert!(accepted.is_err(), "a refused dial connected");
    }

    #[tokio::test]
    async fn unreachable_proxy_is_reported_fast() {
        // Bind then drop to find a port nobody listens on.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let proxy = ProxyUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let start = std::time::Instant::now();
        let err = dialer()
            .tunnel(&proxy, "10.0.0.1:443", &IdentityHeaders::default())
            .await
            .err()
            .unwrap();
        assert!(matches!(err, DialError::ProxyUnreachable { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}
