//! Relay through a TLS tunnel (an `https://` proxy) with no buffer of the
//! relay's own, so that memory follows bytes in flight and no peer can pin
//! any of it:
//! - towards the proxy, the client is read only once rustls has handed
//!   everything it held to the socket, one TLS record's worth at a time
//!   into a buffer on the thread's stack, and encrypted at once; rustls
//!   then holds at most [`SEND_LIMIT`] bytes for a proxy that reads slowly;
//! - towards the client, the plaintext rustls decrypted is written straight
//!   from rustls's buffer, and the proxy socket is read again only once it
//!   is drained; rustls holds at most one read of records and their
//!   plaintext for a client that reads slowly.
//!
//! A buffer is never held across a wait, so there is nothing to share
//! between connections and nothing to wait for: an idle tunnel costs its
//! rustls state only, and a stalled one at most [`IN_FLIGHT_MAX`] more.
use std::{
    io::{self, BufRead, Read, Write},
    net::Shutdown,
    sync::{Mutex, MutexGuard},
};

use rustls::ClientConnection;
use tokio::{net::TcpStream, sync::Notify};
use tokio_rustls::client::TlsStream;

use super::Transferred;

/// Plaintext read from the client at once: one TLS record's worth.
pub const CHUNK: usize = 16 * 1024;
/// What rustls may hold encrypted for the proxy: one chunk and its record
/// overhead. A bigger limit only queues what the socket buffer would.
pub const SEND_LIMIT: usize = CHUNK;
/// The most a stalled tunnel holds beyond an idle one: rustls's encrypted
/// records for the proxy ([`SEND_LIMIT`]), its read buffer (one record of
/// up to 18 KiB, in a vector that grows to 32 KiB) and the plaintext of
/// what it read (16 KiB). Measured by the allocator with both peers
/// stalled: 60.4 KiB (tests/tls_relay_memory.rs).
pub const IN_FLIGHT_MAX: usize = 72 * 1024;

/// Relays between `client` and the tunnel in `upstream` until both
/// directions have ended. The first error ends both.
pub async fn relay_tls(
    client: &TcpStream,
    upstream: &mut TlsStream<TcpStream>,
) -> io::Result<Transferred> {
    let (tcp, conn) = upstream.get_mut();
    conn.set_buffer_limit(Some(SEND_LIMIT));
    let tcp: &TcpStream = tcp;
    // Shared by the two directions, which run in this one task and never
    // hold it across a wait: never contended.
    let conn = Mutex::new(conn);
    // Rustls queued records while the client was quiet (an alert, a key
    // update): the direction towards the proxy sends them.
    let queued = Notify::new();
    let (up, down) = tokio::try_join!(
        to_proxy(client, tcp, &conn, &queued),
        to_client(client, tcp, &conn, &queued)
    )?;
    Ok(Transferred {
        client_to_upstream: up,
        upstream_to_client: down,
    })
}

fn lock<'a, 'c>(
    conn: &'a Mutex<&'c mut ClientConnection>,
) -> MutexGuard<'a, &'c mut ClientConnection> {
    conn.lock().unwrap_or_else(|e| e.into_inner())
}

/// Client → proxy; at the client's EOF, `close_notify` and a half-close.
async fn to_proxy(
    client: &TcpStream,
    tcp: &TcpStream,
    conn: &Mutex<&mut ClientConnection>,
    queued: &Notify,
) -> io::Result<u64> {
    let mut moved = 0u64;
    loop {
        flush(client, tcp, conn).await?;
        tokio::select! {
            ready = client.readable() => ready?,
            () = queued.notified() => continue,
        }
        let read = encrypt_from(client, &mut lock(conn))?;
        match read {
            None => continue,
            Some(0) => {
                lock(conn).send_close_notify();
                flush(client, tcp, conn).await?;
                // Shutting down a peer that is already gone is no error.
                let _ = socket2::SockRef::from(tcp).shutdown(Shutdown::Write);
                return Ok(moved);
            }
            Some(n) => moved += n as u64,
        }
    }
}

/// Reads what the client sent, one chunk at most, and has rustls encrypt
/// it. `None`: nothing to read now, or rustls still holds records (flush
/// them first: then it takes a whole chunk). `Some(0)`: the client's EOF.
fn encrypt_from(client: &TcpStream, conn: &mut ClientConnection) -> io::Result<Option<usize>> {
    if conn.wants_write() {
        return Ok(None);
    }
    let mut chunk = [0u8; CHUNK];
    let n = match client.try_read(&mut chunk) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
        Err(e) => return Err(e),
    };
    // With nothing queued, rustls takes up to SEND_LIMIT at once.
    conn.writer().write_all(&chunk[..n])?;
    Ok(Some(n))
}

/// Hands every record rustls holds to the proxy socket. A client reset
/// meanwhile ends the wait: with a proxy that does not read, nothing else
/// would notice that the client is gone.
async fn flush(
    client: &TcpStream,
    tcp: &TcpStream,
    conn: &Mutex<&mut ClientConnection>,
) -> io::Result<()> {
    while lock(conn).wants_write() {
        super::writable_unless_reset(tcp, client).await?;
        match lock(conn).write_tls(&mut SocketWriter(tcp)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What rustls holds for the client.
enum Held {
    /// Plaintext to write.
    Plaintext,
    /// Nothing: read more records from the proxy.
    Nothing,
    /// The proxy ended the tunnel cleanly (`close_notify`).
    Closed,
}

/// Proxy → client; at the proxy's `close_notify`, a half-close. A TCP EOF
/// without `close_notify` is an error (possibly truncated), as it was with
/// tokio-rustls's reader.
async fn to_client(
    client: &TcpStream,
    tcp: &TcpStream,
    conn: &Mutex<&mut ClientConnection>,
    queued: &Notify,
) -> io::Result<u64> {
    let mut moved = 0u64;
    loop {
        let held = match lock(conn).reader().fill_buf() {
            Ok([]) => Held::Closed,
            Ok(_) => Held::Plaintext,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Held::Nothing,
            Err(e) => return Err(e),
        };
        match held {
            Held::Plaintext => {
                client.writable().await?;
                let mut conn = lock(conn);
                let mut reader = conn.reader();
                let written = client.try_write(reader.fill_buf()?);
                match written {
                    Ok(n) => {
                        reader.consume(n);
                        moved += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            Held::Nothing => {
                tcp.readable().await?;
                let mut conn = lock(conn);
                match conn.read_tls(&mut SocketReader(tcp)) {
                    // 0 is the proxy's EOF, which rustls remembers: the
                    // reader says next whether it was clean.
                    Ok(_) => {
                        let processed = conn.process_new_packets();
                        if conn.wants_write() {
                            queued.notify_one();
                        }
                        processed.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            Held::Closed => {
                let _ = socket2::SockRef::from(client).shutdown(Shutdown::Write);
                return Ok(moved);
            }
        }
    }
}

/// Non-blocking reads for rustls; `WouldBlock` clears tokio's readiness.
struct SocketReader<'a>(&'a TcpStream);

impl Read for SocketReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

/// Non-blocking writes for rustls; `WouldBlock` clears tokio's readiness.
struct SocketWriter<'a>(&'a TcpStream);

impl Write for SocketWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
