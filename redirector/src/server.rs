//! The listeners: accept redirected connections, apply the connection
//! caps, and hand each to [`connection::handle`](crate::connection::handle).
use std::{sync::Arc, time::Duration};

use tokio::net::TcpListener;

use crate::{
    connection::{self, Shared},
    limits::Limits,
};

/// Accepts until the task is dropped. Accept errors (for example running
/// out of file descriptors) are logged and retried after a pause rather
/// than ending the listener.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, limits: Arc<Limits>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => match limits.admit(peer.ip()) {
                Ok(permit) => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        connection::handle(shared, stream, peer).await;
                        drop(permit);
                    });
                }
                Err(refusal) => {
                    // Reset, not queued: the client learns at once.
                    let _ = stream.set_zero_linger();
                    drop(stream);
                    shared.metrics.record_refusal(refusal);
                    limits.log_refusal(refusal, peer.ip());
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
