//! Relay: copy bytes both ways until both directions are done. When one
//! side finishes sending (EOF), its peer's write half is shut down and the
//! other direction keeps flowing, so half-closed protocols work.
use tokio::io::{AsyncRead, AsyncWrite};

/// Bytes moved by one relayed connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    pub client_to_upstream: u64,
    pub upstream_to_client: u64,
}

/// Relays until both directions have ended; on error, the bytes counted
/// so far are lost with the connection, and the error says why.
pub async fn relay<C, U>(client: &mut C, upstream: &mut U) -> std::io::Result<Transferred>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (up, down) = tokio::io::copy_bidirectional(client, upstream).await?;
    Ok(Transferred {
        client_to_upstream: up,
        upstream_to_client: down,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn half_close_keeps_the_other_direction_open() {
        let (mut client, mut client_side) = tokio::io::duplex(64);
        let (mut upstream_side, mut upstream) = tokio::io::duplex(64);
        let task = tokio::spawn(async move { relay(&mut client_side, &mut upstream_side).await });
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        // The upstream sees the request and then EOF...
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        // ...and can still answer after the client's half-close.
        upstream.write_all(b"late reply").await.unwrap();
        upstream.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"late reply");
        let moved = task.await.unwrap().unwrap();
        assert_eq!(
            moved,
            Transferred {
                client_to_upstream: 7,
                upstream_to_client: 10
            }
        );
    }
}
