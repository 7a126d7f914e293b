//! Plain HTTP through `httpProxy`, as an env-var client sends it: each
//! request in absolute form (`GET http://host/path HTTP/1.1`) on a
//! keep-alive connection to the proxy, never `CONNECT` (many corporate
//! proxies refuse `CONNECT` to port 80).
//!
//! The client side is a hyper server on the redirected connection, the
//! proxy side a hyper client connection opened on the first request and
//! reopened if the proxy closes it between requests. The proxy's answers,
//! a 407 included, go back to the client as they are; when the proxy
//! cannot be reached the client gets a 502 naming why.
//!
//! A request with `Upgrade` (WebSocket `ws://`, `h2c`) goes to the proxy
//! like any other; if the proxy answers `101 Switching Protocols`, both
//! connections are handed back as [`Forwarded::Switched`], for the caller
//! to relay untouched from then on, as an env-var client's bytes would
//! flow. Any other answer is plain HTTP, and the exchange goes on.
//!
//! Only requests to an origin get here (`classify`): a client that speaks
//! to a proxy of its own (`CONNECT`, absolute form) is carried by address.
//! A `CONNECT` later on the same connection is refused with 400.
use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{
    body::Incoming, client::conn::http1::SendRequest, service::service_fn, upgrade::OnUpgrade,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
    sync::Mutex,
};

use crate::{
    caller::IdentityHeaders,
    config::ProxyUrl,
    dial::{DialError, Dialer, Tunnel, Upstream, proxy_authorization},
    ratelog::{self, RateLog},
    relay::Transferred,
};

type Body = BoxBody<Bytes, hyper::Error>;

/// What one forwarded client connection did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Served {
    /// Requests answered by the proxy (any status).
    pub requests: u64,
    /// Of those, 407 answers (wrong or missing proxy credentials).
    pub auth_failures: u64,
    /// Whether the last answer was `101 Switching Protocols`.
    pub switched_protocols: bool,
    /// Bytes read from and written to the client, as it sent and got them.
    pub transferred: Transferred,
    /// The proxy that answered the last request (with failover, not
    /// necessarily the first one listed), as logs write it: no credentials.
    pub proxy: Option<String>,
}

/// How a forwarded client connection ended.
pub enum Forwarded {
    /// The client closed the connection (or the exchange ended).
    Closed(Served),
    /// The proxy switched protocols (`101`): both sides, to relay untouched.
    Switched(Served, Switched),
}

/// Both sides of a connection after `101 Switching Protocols`. What the
/// client sent after its request head has already gone to the proxy.
pub struct Switched {
    pub client: TcpStream,
    /// The proxy connection, and what it sent after the `101` head (the
    /// client gets that first).
    pub tunnel: Tunnel,
}

/// Why forwarding broke off.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error("switching protocols: {0}")]
    Switch(io::Error),
}

/// Per-connection warnings, rate-limited: a pod can fail requests at will.
static PROXY_FAILED: RateLog = RateLog::default_budget("plain_http_proxy_failed");
static PROXY_AUTH_FAILED: RateLog = RateLog::default_budget("plain_http_proxy_auth_failed");

/// The longest request head a client may send (hyper's buffer bound).
const MAX_HEAD: usize = 64 * 1024;
/// How long a client may take to send a request head (slowloris bound).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The proxy a client's requests go to, and how.
pub struct ProxySide {
    pub proxy: ProxyUrl,
    /// Proxies to fail over to when `proxy` cannot be reached.
    pub fallbacks: Vec<ProxyUrl>,
    pub dialer: Dialer,
    /// A connection to a proxy already open, and which (else the first
    /// request opens one).
    pub preopened: Option<(Upstream, ProxyUrl)>,
    /// The caller's identity headers, put on every request in place of any
    /// the client sent under their names.
    pub identity: IdentityHeaders,
}

/// Serves the client's requests until it closes the connection or the
/// proxy switches protocols.
pub async fn serve(
    client: TcpStream,
    dst: SocketAddr,
    to: ProxySide,
) -> Result<Forwarded, ForwardError> {
    let ProxySide {
        proxy,
        fallbacks,
        dialer,
        preopened,
        identity,
    } = to;
    let forwarder = Arc::new(Forwarder {
        proxy,
        fallbacks,
        dst,
        dialer,
        identity,
        upstream: Mutex::new(None),
        served: std::sync::Mutex::new(Served::default()),
        switching: std::sync::Mutex::new(None),
    });
    if let Some((io, proxy)) = preopened {
        // A failed handshake just leaves the first request to dial again.
        if let Ok(sender) = forwarder.handshake(io, &proxy).await {
            *forwarder.upstream.lock().await = Some((sender, proxy));
        }
    }
    let service = {
        let forwarder = forwarder.clone();
        service_fn(move |req| {
            let forwarder = forwarder.clone();
            async move { Ok::<_, std::convert::Infallible>(forwarder.forward(req).await) }
        })
    };
    let counts = Arc::new(Counts::default());
    let client = Counted {
        io: client,
        counts: counts.clone(),
    };
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // A client may send its request and shut down its write half
        // (`Connection: close` then FIN); it still gets the answer.
        .half_close(true)
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(client), service)
        .with_upgrades()
        .await?;
    let mut served = forwarder
        .served
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    served.transferred = Transferred {
        client_to_upstream: counts.read.load(Ordering::Relaxed),
        upstream_to_client: counts.written.load(Ordering::Relaxed),
    };
    let switching = forwarder
        .switching
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    match switching {
        None => Ok(Forwarded::Closed(served)),
        Some(switching) => Ok(Forwarded::Switched(served, switching.complete().await?)),
    }
}

/// The two halves of a `101` answer, until hyper hands over the sockets.
struct Switching {
    client: OnUpgrade,
    upstream: OnUpgrade,
}

impl Switching {
    /// Takes both sockets back from hyper, with the bytes each side sent
    /// past its head; the client's go on to the proxy at once.
    async fn complete(self) -> Result<Switched, ForwardError> {
        let (client, upstream) = tokio::try_join!(self.client, self.upstream)?;
        // hyper gives back the very streams it was given: the types match.
        let lost = || ForwardError::Switch(io::Error::other("hyper returned another stream type"));
        let client = client.downcast::<TokioIo<Counted>>().map_err(|_| lost())?;
        let upstream = upstream
            .downcast::<TokioIo<ProxyIo>>()
            .map_err(|_| lost())?;
        let mut proxy = upstream.io.into_inner();
        if !client.read_buf.is_empty() {
            let written = async {
                proxy.write_all(&client.read_buf).await?;
                proxy.flush().await
            };
            written.await.map_err(ForwardError::Switch)?;
        }
        let ProxyIo(proxy) = proxy;
        Ok(Switched {
            client: client.io.into_inner().io,
            tunnel: Tunnel {
                upstream: proxy,
                early: upstream.read_buf,
                // The forwarder's `Served` names the proxy.
                proxy: None,
            },
        })
    }
}

/// The proxy connection as hyper's I/O, of a type that can be taken back
/// after a `101` (so that the relay splices a plain TCP one).
struct ProxyIo(Upstream);

impl AsyncRead for ProxyIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Upstream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ProxyIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().0 {
            Upstream::Tcp(s) => Pin::new(s).poll_write(cx, data),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Upstream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Upstream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Bytes through a [`Counted`] stream, readable after hyper dropped it.
#[derive(Default)]
struct Counts {
    read: AtomicU64,
    written: AtomicU64,
}

/// The client's stream, counting what passes.
struct Counted {
    io: TcpStream,
    counts: Arc<Counts>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.counts.read.fetch_add(n, Ordering::Relaxed);
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled {
            self.counts.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

struct Forwarder {
    proxy: ProxyUrl,
    fallbacks: Vec<ProxyUrl>,
    /// The original destination: names the origin when a request has no Host.
    dst: SocketAddr,
    dialer: Dialer,
    identity: IdentityHeaders,
    /// The proxy connection, shared by the client's successive requests,
    /// and the proxy it goes to (the first listed one that was up).
    upstream: Mutex<Option<(SendRequest<Incoming>, ProxyUrl)>>,
    served: std::sync::Mutex<Served>,
    /// Set when the proxy answered `101`: the connection ends there.
    switching: std::sync::Mutex<Option<Switching>>,
}

impl Forwarder {
    async fn forward(&self, mut req: Request<Incoming>) -> Response<Body> {
        if req.method() == Method::CONNECT {
            // Only as a later request: a first one is carried by address.
            return error_response(
                StatusCode::BAD_REQUEST,
                "CONNECT after other requests on one connection is not carried; \
                 send it on a connection of its own",
            );
        }
        // hyper offers to hand the client's socket over for a request that
        // asks to upgrade (HTTP/1.1 with `Upgrade`).
        let asks_upgrade =
            req.version() == Version::HTTP_11 && req.headers().contains_key(header::UPGRADE);
        let client_upgrade = hyper::upgrade::on(&mut req);
        match absolute_uri(&req, self.dst) {
            Some(uri) => *req.uri_mut() = uri,
            None => return error_response(StatusCode::BAD_REQUEST, "cannot form an absolute URL"),
        }
        // After the pod's headers are final: its copies of ours go.
        self.identity.apply(req.headers_mut());
        let mut upstream = self.upstream.lock().await;
        let (sender, proxy) = match upstream.as_mut() {
            Some((s, p)) if s.is_ready() => (s, p),
            _ => match self.connect().await {
                Ok(s) => {
                    let (s, p) = upstream.insert(s);
                    (s, p)
                }
                Err(e) => {
                    ratelog::warn!(PROXY_FAILED, error = %e, "plain HTTP: proxy connection failed");
                    return error_response(StatusCode::BAD_GATEWAY, &e.to_string());
                }
            },
        };
        // The credentials of the proxy this connection reached.
        if let Some(value) = proxy_authorization(proxy) {
            req.headers_mut().insert(header::PROXY_AUTHORIZATION, value);
        }
        let proxy = proxy.clone();
        match sender.send_request(req).await {
            Ok(mut response) => {
                let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                if switched {
                    // The proxy connection is the new protocol's now.
                    *upstream = None;
                    if !asks_upgrade {
                        return error_response(
                            StatusCode::BAD_GATEWAY,
                            "the proxy switched protocols unasked",
                        );
                    }
                    let switching = Switching {
                        client: client_upgrade,
                        upstream: hyper::upgrade::on(&mut response),
                    };
                    *self.switching.lock().unwrap_or_else(|p| p.into_inner()) = Some(switching);
                }
                let mut served = self.served.lock().unwrap_or_else(|p| p.into_inner());
                served.requests += 1;
                served.switched_protocols = switched;
                served.proxy = Some(proxy.to_string());
                if response.status() == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
                    served.auth_failures += 1;
                    ratelog::warn!(
                        PROXY_AUTH_FAILED,
                        proxy = %proxy,
                        "proxy answered 407 Proxy Authentication Required (auth failed: \
                         check the credentials in the proxy URL); passed to the client"
                    );
                }
                response.map(BodyExt::boxed)
            }
            Err(e) => {
                *upstream = None;
                ratelog::warn!(PROXY_FAILED, proxy = %proxy, error = %e, "plain HTTP: request to the proxy failed");
                error_response(StatusCode::BAD_GATEWAY, "the proxy connection failed")
            }
        }
    }

    async fn connect(&self) -> Result<(SendRequest<Incoming>, ProxyUrl), DialError> {
        let (io, proxy) = self
            .dialer
            .proxy_connection_any(&self.proxy, &self.fallbacks)
            .await?;
        Ok((self.handshake(io, &proxy).await?, proxy))
    }

    async fn handshake(
        &self,
        io: Upstream,
        proxy: &ProxyUrl,
    ) -> Result<SendRequest<Incoming>, DialError> {
        // The proxy's answers are buffered within the same bound as the
        // client's requests: a response head or body a client does not
        // read costs a bounded amount per connection.
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(MAX_HEAD)
            .handshake(TokioIo::new(ProxyIo(io)))
            .await
            .map_err(|source| DialError::Protocol {
                proxy: proxy.clone(),
                authority: self.dst.to_string(),
                source,
            })?;
        tokio::spawn(async move {
            // With upgrades, a `101` ends this task and hands the socket
            // to the answer's `OnUpgrade`.
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "proxy connection ended");
            }
        });
        Ok(sender)
    }
}

/// `http://host[:port]/path?query` for a request: the Host header names
/// the origin (an absolute-form target is kept as it is); without either,
/// the original destination does.
fn absolute_uri<B>(req: &Request<B>, dst: SocketAddr) -> Option<Uri> {
    if req.uri().scheme().is_some() && req.uri().authority().is_some() {
        return Some(req.uri().clone());
    }
    let authority = req
        .headers()
        .get(header::HOST)
        .and_then(|h: &HeaderValue| h.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| match dst.port() {
            80 => match dst {
                SocketAddr::V4(a) => a.ip().to_string(),
                SocketAddr::V6(a) => format!("[{}]", a.ip()),
            },
            _ => dst.to_string(),
        });
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
        .ok()
}

fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    let body = Full::new(Bytes::from(format!("egress-redirector: {message}\n")))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    #[test]
    fn absolute_uri_forms() {
        let dst: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        let req = |uri: &str, host: Option<&str>| {
            let mut b = Request::builder().uri(uri);
            if let Some(h) = host {
                b = b.header("host", h);
            }
            b.body(()).unwrap()
        };
        let cases = [
            (
                req("/a?b=1", Some("example.com")),
                "http://example.com/a?b=1",
            ),
            (
                req("/", Some("example.com:8080")),
                "http://example.com:8080/",
            ),
            (req("/x", None), "http://10.0.0.1:8080/x"),
            (
                req("http://other.example/y", Some("example.com")),
                "http://other.example/y",
            ),
        ];
        for (r, want) in cases {
            assert_eq!(absolute_uri(&r, dst).unwrap().to_string(), want);
        }
        let v6: SocketAddr = "[fd00::1]:80".parse().unwrap();
        assert_eq!(
            absolute_uri(&req("/", None), v6).unwrap().to_string(),
            "http://[fd00::1]/"
        );
    }

    /// A fake HTTP proxy that records request heads and answers each with
    /// `status`, keeping the connection alive.
    async fn fake_http_proxy(status: u16) -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            loop {
                let mut chunk = [0u8; 1024];
                let n = s.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head: Vec<u8> = buf.drain(..end + 4).collect();
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).into_owned());
                    let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok");
                    s.write_all(reply.as_bytes()).await.unwrap();
                }
            }
        });
        (addr, heads)
    }

    fn dialer() -> Dialer {
        Dialer {
            socket_mark: 0,
            sockets: Default::default(),
            timeout: Duration::from_secs(2),
            tls: crate::swappable::Swappable::new(crate::dial::proxy_tls_config(&[]).unwrap()),
            health: Default::default(),
        }
    }

    /// Runs `serve` on one accepted connection and returns the client end.
    async fn serve_one(proxy: ProxyUrl) -> (TcpStream, tokio::task::JoinHandle<Served>) {
        serve_one_as(proxy, IdentityHeaders::default()).await
    }

    async fn serve_one_as(
        proxy: ProxyUrl,
        identity: IdentityHeaders,
    ) -> (TcpStream, tokio::task::JoinHandle<Served>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let to = ProxySide {
                proxy,
                fallbacks: Vec::new(),
                dialer: dialer(),
                preopened: None,
                identity,
            };
            match serve(s, "10.0.0.1:80".parse().unwrap(), to).await {
                Ok(Forwarded::Closed(served)) => served,
                Ok(Forwarded::Switched(..)) => panic!("switched protocols"),
                Err(e) => panic!("{e}"),
            }
        });
        (TcpStream::connect(addr).await.unwrap(), task)
    }

    #[tokio::test]
    async fn keep_alive_requests_go_in_absolute_form_with_credentials() {
        let (proxy_addr, heads) = fake_http_proxy(200).await;
        let proxy = ProxyUrl::parse(&format!("http://u:p@{proxy_addr}")).unwrap();
        let (mut client, task) = serve_one(proxy).await;
        client
            .write_all(b"GET /one HTTP/1.1\r\nHost: plain.example\r\n\r\nGET /two HTTP/1.1\r\nHost: plain.example\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
        let heads = heads.lock().unwrap().clone();
        assert_eq!(
            heads.len(),
            2,
            "one proxy connection, two requests: {heads:?}"
        );
        assert!(
            heads[0].starts_with("GET http://plain.example/one HTTP/1.1\r\n"),
            "{}",
            heads[0]
        );
        assert!(
            heads[1].starts_with("GET http://plain.example/two HTTP/1.1\r\n"),
            "{}",
            heads[1]
        );
        assert!(
            heads[0]
                .to_ascii_lowercase()
                .contains("proxy-authorization: basic dtpw"),
            "{}",
            heads[0]
        );
        let served = task.await.unwrap();
        assert_eq!((served.requests, served.auth_failures), (2, 0));
        // Both request heads in, both answers out.
        assert!(served.transferred.client_to_upstream > 60, "{served:?}");
        assert!(served.transferred.upstream_to_client > 30, "{served:?}");
    }

    /// Issue 18: every request carries the caller's identity, and what the
    /// pod sent under those names never reaches the proxy.
    #[tokio::test]
    async fn identity_headers_replace_the_pod_s_own() {
        let (proxy_addr, heads) = fake_http_proxy(200).await;
        let proxy = ProxyUrl::parse(&format!("http://{proxy_addr}")).unwrap();
        let identity = crate::config::Identity {
            forwarded_for: true,
            forwarded: true,
            namespace_header: None,
            pod_header: Some(http::HeaderName::from_static("x-egress-pod")),
        };
        let caller = crate::caller::Caller {
            addr: "10.249.40.2".parse().unwrap(),
            pod: Some(crate::caller::PodRef {
                namespace: "shop".into(),
                name: "web-0".into(),
            }),
        };
        let (mut client, task) =
            serve_one_as(proxy, crate::caller::headers(&identity, &caller)).await;
        client
            .write_all(
                b"GET /one HTTP/1.1\r\nHost: a.example\r\nX-Forwarded-For: 10.0.0.66\r\n\
                  Forwarded: for=10.0.0.66\r\nX-Egress-Pod: admin\r\n\r\n\
                  GET /two HTTP/1.1\r\nHost: a.example\r\nx-forwarded-for: 10.0.0.66\r\n\
                  Connection: close\r\n\r\n",
            )
            .await
            .unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
        let heads = heads.lock().unwrap().clone();
        assert_eq!(heads.len(), 2, "{heads:?}");
        for head in &heads {
            let head = head.to_ascii_lowercase();
            assert!(!head.contains("10.0.0.66"), "{head}");
            assert!(!head.contains("admin"), "{head}");
            assert_eq!(
                head.matches("x-forwarded-for: 10.249.40.2\r\n").count(),
                1,
                "{head}"
            );
            assert_eq!(
                head.matches("forwarded: for=10.249.40.2\r\n").count(),
                1,
                "{head}"
            );
            assert_eq!(head.matches("x-egress-pod: web-0\r\n").count(), 1, "{head}");
        }
        task.await.unwrap();
    }

    /// Issue 13: an `Upgrade` the proxy does not take (no `101`) is plain
    /// HTTP, and the connection goes on; a later `CONNECT` is refused here,
    /// never sent on in absolute form.
    #[tokio::test]
    async fn an_upgrade_answered_without_101_goes_on_and_a_later_connect_is_refused() {
        let (proxy_addr, heads) = fake_http_proxy(200).await;
        let (mut client, task) =
            serve_one(ProxyUrl::parse(&format!("http://{proxy_addr}")).unwrap()).await;
        client
            .write_all(
                b"GET /ws HTTP/1.1\r\nHost: ws.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\
                  GET /after HTTP/1.1\r\nHost: ws.example\r\n\r\n\
                  CONNECT other.example:443 HTTP/1.1\r\nHost: other.example:443\r\n\r\n",
            )
            .await
            .unwrap();
        client.shutdown().await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
        assert!(answer.contains("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("CONNECT after other requests"), "{answer}");
        let heads = heads.lock().unwrap().clone();
        assert_eq!(
            heads.len(),
            2,
            "the CONNECT never reached the proxy: {heads:?}"
        );
        assert!(
            heads[0].starts_with("GET http://ws.example/ws HTTP/1.1\r\n"),
            "{}",
            heads[0]
        );
        assert!(
            heads[0].to_ascii_lowercase().contains("upgrade: websocket"),
            "{}",
            heads[0]
        );
        let served = task.await.unwrap();
        assert!(!served.switched_protocols);
    }

    #[tokio::test]
    async fn a_407_goes_back_to_the_client() {
        let (proxy_addr, _) = fake_http_proxy(407).await;
        let (mut client, task) =
            serve_one(ProxyUrl::parse(&format!("http://{proxy_addr}")).unwrap()).await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 407"), "{answer}");
        assert_eq!(task.await.unwrap().auth_failures, 1);
    }

    #[tokio::test]
    async fn unreachable_proxy_gives_502() {
        let dead = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let (mut client, _task) =
            serve_one(ProxyUrl::parse(&format!("http://{dead}")).unwrap()).await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
        assert!(answer.contains("unreachable"), "{answer}");
    }
}
