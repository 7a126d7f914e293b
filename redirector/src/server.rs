//! The listeners: accept redirected connections and hand each to
//! [`connection::handle`](crate::connection::handle).
use std::{sync::Arc, time::Duration};

use tokio::net::TcpListener;

use crate::connection::{self, Shared};

/// Accepts until the task is dropped. Accept errors (for example running
/// out of file descriptors) are logged and retried after a pause rather
/// than ending the listener.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(connection::handle(shared.clone(), stream, peer));
            }
            Err(e) => {
                tracing::error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
