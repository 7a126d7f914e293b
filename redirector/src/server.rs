//! The listeners: accept redirected connections, apply the connection
//! caps, and hand each to [`connection::handle`](crate::connection::handle).
use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::{TcpListener, TcpSocket};

use crate::{
    connection::{self, Shared},
    limits::Limits,
    ratelog::{self, RateLog},
};

static ACCEPT_FAILED: RateLog = RateLog::default_budget("accept_failed");

/// Pending connections the kernel queues before accept: a burst of new
/// connections from many pods (thousands at once after a rollout) would
/// overflow the usual 1,024 and wait a second per dropped SYN. The kernel
/// caps it at `net.core.somaxconn` (4,096 by default since Linux 5.4).
const BACKLOG: u32 = 8192;

/// A listening socket on `addr` with [`BACKLOG`].
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
                Err(refusal) => {
                    // Forget the destination the hook saved for this client
                    // address first: left behind, it would be served to (or,
                    // as a second claim of the key, refuse) a later
                    // connection from the same address and port.
                    let _ = shared.original_dst.take(peer);
                    // Reset, not queued: the client learns at once.
                    connection::reset(stream);
                    shared.metrics.record_refusal(refusal);
                    limits.log_refusal(refusal, peer.ip());
                }
            },
            Err(e) => {
                // Out of descriptors, typically: once per pause, so limited.
                ratelog::error!(ACCEPT_FAILED, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
