//! The listeners: accept redirected connections, apply the connection
//! caps, and hand each to [`connection::handle`](crate::connection::handle).
use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::{
    connection::{self, Shared},
    limits::{Limits, Refusal},
    lookup::OriginalDst,
    metrics::Metrics,
    ratelog::{self, RateLog},
};

static ACCEPT_FAILED: RateLog = RateLog::default_budget("accept_failed");

/// Pending connections the kernel queues before accept: a burst of new
/// connections from many pods (thousands at once after a rollout) would
/// overflow the usual 1,024 and wait a second per dropped SYN. The kernel
/// caps it at `net.core.somaxconn` (4,096 by default since Linux 5.4).
const BACKLOG: u32 = 8192;

/// A listening socket on `addr` with [`BACKLOG`]. The relay's socket
/// options go on it afterwards
/// ([`SocketOptions::apply`](crate::socket_options::SocketOptions::apply), in
/// `cmd::daemon`),
/// on a bound and on a handed-over listener alike: every socket accepted
/// later inherits them (the kernel copies the listener's, and the window
/// scale offered in the SYN-ACK follows the buffers).
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Refuses a connection over a cap: reset at once (the client learns at
/// once; never queued), counted, logged (rate-limited).
fn refuse(
    stream: TcpStream,
    peer: SocketAddr,
    refusal: Refusal,
    original_dst: &dyn OriginalDst,
    metrics: &Metrics,
    limits: &Limits,
) {
    // Forget the destination the hook saved for this client address first:
    // left behind, it would be served to (or, as a second claim of the
    // key, make the kernel refuse) a later connection from the same
    // address and port.
    let _ = original_dst.take(peer);
    connection::reset(stream);
    metrics.record_refusal(refusal);
    limits.log_refusal(refusal, peer.ip());
}

/// Accepts until the task is dropped. Accept errors (for example running
/// out of file descriptors) are logged and retried after a pause rather
/// than ending the listener.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, limits: Arc<Limits>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => match limits.admit(peer.ip()) {
                Ok(permit) => {
                    // Relayed writes are the peer's own segments: never hold
                    // a small one back for coalescing (upstream sockets too).
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        connection::handle(shared, stream, peer).await;
                        drop(permit);
                    });
                }
                Err(refusal) => refuse(
                    stream,
                    peer,
                    refusal,
                    shared.original_dst.as_ref(),
                    &shared.metrics,
                    &limits,
                ),
            },
            Err(e) => {
                // Out of descriptors, typically: once per pause, so limited.
                ratelog::error!(ACCEPT_FAILED, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket_options::SocketOptions;
    use std::{collections::HashMap, sync::Mutex};
    use tokio::io::AsyncReadExt;

    #[derive(Default)]
    struct Table(Mutex<HashMap<SocketAddr, SocketAddr>>);
    impl OriginalDst for Table {
        fn take(&self, client: SocketAddr) -> Option<SocketAddr> {
            self.0.lock().unwrap().remove(&client)
        }
    }

    /// Accepted sockets carry the options set on the listener, also when
    /// they are set once it listens (as on a handed-over listener).
    #[tokio::test]
    async fn accepted_sockets_have_the_socket_options() {
        let options = SocketOptions {
            buffer: 8 << 10,
            keepalive: "5,2,2".parse().unwrap(),
            ..SocketOptions::default()
        };
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        options.apply(socket2::SockRef::from(&listener)).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let sock = socket2::SockRef::from(&accepted);
        assert_eq!(sock.recv_buffer_size().unwrap(), 16 << 10);
        assert_eq!(sock.send_buffer_size().unwrap(), 16 << 10);
        assert!(sock.keepalive().unwrap());
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(9))
        );
    }

    /// A refused connection's saved destination is taken, so a later
    /// connection from the same address and port cannot be served it.
    #[tokio::test]
    async fn a_refusal_forgets_the_saved_destination_and_resets() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let table = Table::default();
        let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for key in [peer, other] {
            table
                .0
                .lock()
                .unwrap()
                .insert(key, "10.0.0.9:443".parse().unwrap());
        }
        let metrics = Metrics::new(None);
        let limits = Limits::new(0, 0);
        refuse(stream, peer, Refusal::Pod, &table, &metrics, &limits);
        assert_eq!(table.take(peer), None, "the refused client's entry is gone");
        assert!(table.take(other).is_some(), "nobody else's");
        let mut buf = [0u8; 1];
        assert_eq!(
            client.read(&mut buf).await.unwrap_err().kind(),
            std::io::ErrorKind::ConnectionReset
        );
        assert!(
            metrics
                .encode()
                .contains("redirector_connections_refused_total{reason=\"pod_limit\"} 1")
        );
    }
}
