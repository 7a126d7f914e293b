//! One redirected connection, start to end: original destination lookup →
//! policy → dial → relay. Every connection ends in exactly one
//! [`Outcome`], logged once.
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::net::TcpStream;

use crate::{
    config::ProxyConfig,
    dial::{DialError, Dialer, authority_of},
    lookup::OriginalDst,
    policy::{self, Route},
    relay::{Transferred, relay},
};

/// What every connection handler shares.
pub struct Shared {
    /// The proxy configuration in force.
    pub config: Arc<ProxyConfig>,
    /// Original destinations saved by the kernel hooks.
    pub original_dst: Arc<dyn OriginalDst>,
    /// How upstream sockets are opened.
    pub dialer: Dialer,
}

/// How a connection ended.
#[derive(Debug)]
pub enum Outcome {
    /// Relayed to the end.
    Done {
        route: Route,
        transferred: Transferred,
    },
    /// Not redirected by our hook: refused, so the listener is no open proxy.
    NoOriginalDst,
    /// The upstream side could not be opened; the client was reset.
    DialFailed(DialError),
    /// The relay broke off (a peer reset, for example).
    RelayFailed { route: Route, error: std::io::Error },
}

/// Serves one accepted connection to the end.
pub async fn handle(shared: Arc<Shared>, client: TcpStream, peer: SocketAddr) {
    let started = Instant::now();
    let dst = shared.original_dst.take(peer);
    let outcome = match dst {
        None => {
            reset(client);
            Outcome::NoOriginalDst
        }
        Some(dst) => forward(&shared, client, dst).await,
    };
    log_outcome(peer, dst, &outcome, started.elapsed());
}

async fn forward(shared: &Shared, mut client: TcpStream, dst: SocketAddr) -> Outcome {
    let route = policy::route(&shared.config, dst);
    let upstream = match &route {
        Route::Direct => shared
            .dialer
            .direct(dst)
            .await
            .map(|s| Box::new(s) as Box<dyn crate::dial::UpstreamIo>),
        Route::Proxy(proxy) => shared.dialer.tunnel(proxy, &authority_of(dst)).await,
    };
    let mut upstream = match upstream {
        Ok(u) => u,
        Err(e) => {
            // A reset tells the client at once; it must never hang or go direct.
            reset(client);
            return Outcome::DialFailed(e);
        }
    };
    match relay(&mut client, &mut upstream).await {
        Ok(transferred) => Outcome::Done { route, transferred },
        Err(error) => Outcome::RelayFailed { route, error },
    }
}

/// Closes with RST rather than FIN, so the client sees a failure, not an
/// empty answer.
fn reset(client: TcpStream) {
    let _ = client.set_zero_linger();
    drop(client);
}

fn log_outcome(peer: SocketAddr, dst: Option<SocketAddr>, outcome: &Outcome, elapsed: Duration) {
    let ms = elapsed.as_millis() as u64;
    match outcome {
        Outcome::Done { route, transferred } => tracing::debug!(
            client = %peer, dst = ?dst, route = %route_name(route), ms,
            up = transferred.client_to_upstream, down = transferred.upstream_to_client,
            "connection done"
        ),
        Outcome::NoOriginalDst => tracing::warn!(
            client = %peer,
            "refused a connection that our hook did not redirect (no original destination)"
        ),
        Outcome::DialFailed(e) => {
            tracing::warn!(client = %peer, dst = ?dst, ms, error = %e, "upstream failed")
        }
        Outcome::RelayFailed { route, error } => tracing::debug!(
            client = %peer, dst = ?dst, route = %route_name(route), ms, error = %error,
            "connection broke off"
        ),
    }
}

fn route_name(route: &Route) -> String {
    match route {
        Route::Direct => "direct".to_owned(),
        Route::Proxy(p) => format!("proxy {p}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{collections::HashMap, sync::Mutex};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    /// Original destinations from a table, taken once each.
    #[derive(Default)]
    struct Table(Mutex<HashMap<SocketAddr, SocketAddr>>);
    impl OriginalDst for Table {
        fn take(&self, client: SocketAddr) -> Option<SocketAddr> {
            self.0.lock().unwrap().remove(&client)
        }
    }

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// A listener running `handle` for every connection, with `table`.
    async fn redirector(config: &str, table: Arc<Table>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let shared = Arc::new(Shared {
            config: Arc::new(ProxyConfig::parse("t", config).unwrap()),
            original_dst: table,
            dialer: Dialer {
                socket_mark: 0,
                timeout: Duration::from_secs(2),
            },
        });
        tokio::spawn(async move {
            while let Ok((s, peer)) = l.accept().await {
                tokio::spawn(handle(shared.clone(), s, peer));
            }
        });
        addr
    }

    #[tokio::test]
    async fn relays_to_the_original_destination_and_refuses_strangers() {
        let echo = echo_server().await;
        let table = Arc::new(Table::default());
        let listen = redirector("{}", table.clone()).await;

        // A redirected client: its original destination is known.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        table
            .0
            .lock()
            .unwrap()
            .insert(socket.local_addr().unwrap(), echo);
        let mut c = socket.connect(listen).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        // Half-close: the echo must still come back after our FIN, and
        // then the end of the stream.
        c.shutdown().await.unwrap();
        let mut echoed = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed, b"hello");

        // A stranger: nothing known, the connection is reset without a byte.
        let mut s = TcpStream::connect(listen).await.unwrap();
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    }

    #[tokio::test]
    async fn unreachable_proxy_resets_the_client_promptly() {
        let dead = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let table = Arc::new(Table::default());
        let listen = redirector(
            &format!(r#"{{"httpsProxy": "http://{dead}"}}"#),
            table.clone(),
        )
        .await;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        table
            .0
            .lock()
            .unwrap()
            .insert(socket.local_addr().unwrap(), "127.0.0.1:9".parse().unwrap());
        let mut c = socket.connect(listen).await.unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
            .await
            .unwrap();
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::ConnectionReset);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
