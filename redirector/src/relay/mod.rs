//! Relay: move bytes both ways until both directions are done. When one
//! side finishes sending (EOF), its peer's write half is shut down and the
//! other direction keeps flowing, so half-closed protocols work.
//!
//! Socket to socket (direct, or a tunnel through a plain-HTTP proxy) the
//! bytes never enter userspace: `splice(2)` moves them from the source
//! socket into a pipe and from the pipe into the destination socket. An
//! idle connection holds no buffer and no pipe: a direction takes a pipe
//! from a shared pool only when its source is readable and gives it back
//! once the pipe is drained, so memory follows traffic, not connections.
//! A connection that moves a lot may take one of the node's few bulk
//! lanes, which widens its socket buffers ([`lanes`]).
//!
//! A TLS tunnel (an `https://` proxy) goes through userspace, with no
//! buffer held across a wait ([`tls`]).
pub mod lanes;
pub mod tls;

use std::{
    io,
    net::Shutdown,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::Mutex,
};

use tokio::{io::Interest, net::TcpStream};

pub use lanes::{BulkLanes, Promotion};
pub use tls::relay_tls;

/// Which relay moved a connection's bytes: logged with the connection and
/// counted in `redirector_relayed_connections_total{path}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayPath {
    /// `splice(2)` through the small socket buffers (`--socket-buffer`).
    Splice,
    /// `splice(2)`, widened by a bulk lane on the way ([`lanes`]).
    BulkLane,
    /// Through userspace: a TLS tunnel to an `https://` proxy ([`tls`]).
    Tls,
}

impl RelayPath {
    pub const ALL: [RelayPath; 3] = [RelayPath::Splice, RelayPath::BulkLane, RelayPath::Tls];

    /// The metric label and log value.
    pub const fn label(self) -> &'static str {
        match self {
            RelayPath::Splice => "splice",
            RelayPath::BulkLane => "splice_bulk_lane",
            RelayPath::Tls => "tls",
        }
    }
}

/// Bytes moved by one relayed connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    pub client_to_upstream: u64,
    pub upstream_to_client: u64,
}

/// Pipe capacity, and bytes asked of one splice. The default 64 KiB pipe
/// made a 1 GiB transfer ~30 % slower here (more wake-ups per byte); 1 MiB
/// gained nothing over 256 KiB.
const PIPE_SIZE: i32 = 256 * 1024;
/// Idle pipes kept for reuse; more are closed when given back. 128 pipes
/// of 256 KiB stay within Linux's default per-user pipe allowance (64 MiB).
const POOL_MAX: usize = 128;

/// Relays between two sockets with `splice(2)`, until both directions
/// have ended. The first error ends both directions. A connection that
/// moves [`lanes::PROMOTE_AFTER`] bytes asks for a lane through
/// `promotion`, which the caller keeps: it says afterwards which path the
/// bytes took, and gives the lane back when dropped.
pub async fn relay_spliced(
    client: &TcpStream,
    upstream: &TcpStream,
    promotion: &Promotion<'_>,
) -> io::Result<Transferred> {
    let (up, down) = tokio::try_join!(
        pump(client, upstream, promotion),
        pump(upstream, client, promotion)
    )?;
    Ok(Transferred {
        client_to_upstream: up,
        upstream_to_client: down,
    })
}

/// One direction: `src` → pipe → `dst`, then shut down `dst`'s write half
/// at `src`'s EOF. Returns the bytes moved.
async fn pump(src: &TcpStream, dst: &TcpStream, promotion: &Promotion<'_>) -> io::Result<u64> {
    let mut moved = 0u64;
    loop {
        src.readable().await?;
        let pipe = Pipe::take()?;
        let read = src.try_io(Interest::READABLE, || {
            splice(src.as_raw_fd(), pipe.write.as_raw_fd(), PIPE_SIZE as usize)
        });
        let mut left = match read {
            Ok(0) => {
                pipe.give_back();
                // Shutting down a peer that is already gone is no error.
                let _ = socket2::SockRef::from(dst).shutdown(Shutdown::Write);
                return Ok(moved);
            }
            Ok(n) => n,
            // Spurious readiness: wait again, without holding the pipe.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                pipe.give_back();
                continue;
            }
            Err(e) => return Err(e),
        };
        moved += left as u64;
        promotion.after(moved, src, dst);
        while left > 0 {
            writable_unless_reset(dst, src).await?;
            match dst.try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_raw_fd(), dst.as_raw_fd(), left)
            }) {
                // Never 0 from a non-empty pipe; if it were, fail rather than spin.
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => left -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The pipe still holds bytes: it is dropped, not pooled.
                Err(e) => return Err(e),
            }
        }
        pipe.give_back();
    }
}

/// Waits until `dst` is writable, or fails when `src` is reset meanwhile: a
/// relay waiting on a peer that does not read must still notice that the
/// other peer is gone (it would otherwise hold the connection, and its
/// place under the caps, until the slow peer moves).
async fn writable_unless_reset(dst: &TcpStream, src: &TcpStream) -> io::Result<()> {
    tokio::select! {
        // The common case, a writable socket, costs no second registration.
        biased;
        ready = dst.writable() => ready,
        ready = src.ready(Interest::ERROR) => {
            ready?;
            Err(src
                .take_error()?
                .unwrap_or_else(|| io::ErrorKind::ConnectionReset.into()))
        }
    }
}

/// `splice(2)` of up to `len` bytes, non-blocking; one end is a pipe.
/// Also the benchmark's CONNECT upstream's (tests/peers), which tunnels
/// the same way.
pub fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the call (borrowed from live
    // owners); null offsets mean "current position", as sockets and pipes need.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A non-blocking pipe, empty whenever it is in the pool.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

impl Pipe {
    /// An empty pipe from the pool, or a new one.
    fn take() -> io::Result<Pipe> {
        if let Some(pipe) = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(pipe);
        }
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid two-int array for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and ours.
        let pipe = unsafe {
            Pipe {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        };
        // Best effort: past the user's pipe page allowance the kernel
        // refuses, and the default 64 KiB pipe still works, only slower.
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(pipe.write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        Ok(pipe)
    }

    /// Returns a drained pipe to the pool (or closes it when the pool is full).
    fn give_back(self) {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOL_MAX {
            pool.push(self);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanes::LaneEvent;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};
    use tokio::{
        io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
        net::TcpListener,
    };

    type Relay = tokio::task::JoinHandle<io::Result<Transferred>>;

    /// Two connected socket pairs: (client, client_side) and
    /// (upstream_side, upstream), relayed between the inner ends.
    async fn spliced_pairs() -> (TcpStream, TcpStream, Relay) {
        let lanes = Arc::new(BulkLanes::none());
        let (client, upstream, _, task) = spliced_pairs_with(lanes).await;
        (client, upstream, task)
    }

    /// As [`spliced_pairs`], with `lanes`; also the relayed sockets.
    async fn spliced_pairs_with(
        lanes: Arc<BulkLanes>,
    ) -> (TcpStream, TcpStream, Arc<(TcpStream, TcpStream)>, Relay) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (client_side, _) = l.accept().await.unwrap();
        let upstream_side = TcpStream::connect(addr).await.unwrap();
        let (upstream, _) = l.accept().await.unwrap();
        let sides = Arc::new((client_side, upstream_side));
        let relayed = sides.clone();
        let task =
            tokio::spawn(
                async move { relay_spliced(&relayed.0, &relayed.1, &lanes.promotion()).await },
            );
        (client, upstream, sides, task)
    }

    /// The client sends and half-closes; the upstream still answers.
    async fn assert_half_close<C, U>(
        mut client: C,
        mut upstream: U,
        task: tokio::task::JoinHandle<io::Result<Transferred>>,
    ) where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
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

    #[tokio::test]
    async fn half_close_keeps_the_other_direction_open() {
        let (client, upstream, task) = spliced_pairs().await;
        assert_half_close(client, upstream, task).await;
    }

    #[tokio::test]
    async fn moves_large_transfers_both_ways_byte_exact() {
        // With a lane: the buffers widen in the middle of the transfer.
        let (lanes, metrics) = counted_lanes(1, 1 << 20);
        let (client, upstream, _, task) = spliced_pairs_with(lanes).await;
        const N: usize = 8 << 20;
        let pattern = |i: usize| (i * 7 % 251) as u8;
        let data: Vec<u8> = (0..N).map(pattern).collect();
        // Each end writes N bytes and reads N bytes at once, so both
        // directions are in flight together (and a slow reader backs up
        // the pipe: the partial-write path runs).
        let run = |mut s: TcpStream, data: Vec<u8>| async move {
            let (mut r, mut w) = s.split();
            let write = async {
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let read = async {
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.unwrap();
                got
            };
            tokio::join!(write, read).1
        };
        let (a, b) = tokio::join!(run(client, data.clone()), run(upstream, data.clone()));
        assert!(a == data && b == data, "relayed bytes differ");
        let moved = task.await.unwrap().unwrap();
        assert_eq!(moved.client_to_upstream, N as u64);
        assert_eq!(moved.upstream_to_client, N as u64);
        assert_eq!(
            lane_metrics(&metrics),
            (0, 1, 0),
            "(in use, granted, all taken)"
        );
    }

    /// Lanes in use, lanes granted, requests that found all taken.
    type LaneCounts = Arc<[AtomicI64; 3]>;

    /// `lanes` lanes of `buffer`, their events counted.
    fn counted_lanes(lanes: usize, buffer: usize) -> (Arc<BulkLanes>, LaneCounts) {
        let counts: LaneCounts = Arc::default();
        let seen = counts.clone();
        let observe = Box::new(move |event| {
            let (slot, by) = match event {
                LaneEvent::Granted => {
                    seen[1].fetch_add(1, Ordering::Relaxed);
                    (0, 1)
                }
                LaneEvent::AllTaken => (2, 1),
                LaneEvent::GivenBack => (0, -1),
            };
            seen[slot].fetch_add(by, Ordering::Relaxed);
        });
        (Arc::new(BulkLanes::new(lanes, buffer, observe)), counts)
    }

    fn lane_metrics(counts: &LaneCounts) -> (i64, i64, i64) {
        let [a, b, c] = &**counts;
        let get = |x: &AtomicI64| x.load(Ordering::Relaxed);
        (get(a), get(b), get(c))
    }

    /// Sends `n` bytes from `from` and reads them at `to`.
    async fn pass(from: &mut TcpStream, to: &mut TcpStream, n: usize) {
        let data = vec![7u8; n];
        let mut got = vec![0u8; n];
        let (w, r) = tokio::join!(from.write_all(&data), to.read_exact(&mut got));
        w.unwrap();
        r.unwrap();
    }

    /// 32 KiB buffers, as the daemon sets them (fixed: no autotuning).
    fn small_buffers(sides: &(TcpStream, TcpStream)) -> [usize; 4] {
        for side in [&sides.0, &sides.1] {
            let s = socket2::SockRef::from(side);
            s.set_recv_buffer_size(32 << 10).unwrap();
            s.set_send_buffer_size(32 << 10).unwrap();
        }
        queue_limits(sides)
    }

    fn queue_limits(sides: &(TcpStream, TcpStream)) -> [usize; 4] {
        let (a, b) = (
            socket2::SockRef::from(&sides.0),
            socket2::SockRef::from(&sides.1),
        );
        [
            a.recv_buffer_size().unwrap(),
            a.send_buffer_size().unwrap(),
            b.recv_buffer_size().unwrap(),
            b.send_buffer_size().unwrap(),
        ]
    }

    #[tokio::test]
    async fn a_bulk_connection_takes_a_lane_and_gives_it_back() {
        let (lanes, metrics) = counted_lanes(1, 2 << 20);
        let (mut client, mut upstream, sides, task) = spliced_pairs_with(lanes.clone()).await;
        let small = small_buffers(&sides);
        // Short exchanges never ask.
        pass(&mut client, &mut upstream, 256 << 10).await;
        pass(&mut upstream, &mut client, 256 << 10).await;
        assert_eq!(queue_limits(&sides), small);
        assert_eq!(lane_metrics(&metrics), (0, 0, 0));
        // Past 1 MiB one way: both sockets widened, both queues (the
        // kernel doubles what is asked).
        pass(&mut upstream, &mut client, 1 << 20).await;
        assert!(
            queue_limits(&sides).iter().all(|&q| q >= 4 << 20),
            "{:?}",
            queue_limits(&sides)
        );
        assert_eq!(lane_metrics(&metrics), (1, 1, 0));
        // Another bulk connection while the only lane is held: small buffers.
        let (mut c2, mut u2, sides2, task2) = spliced_pairs_with(lanes).await;
        let small2 = small_buffers(&sides2);
        pass(&mut c2, &mut u2, 2 << 20).await;
        assert_eq!(queue_limits(&sides2), small2);
        assert_eq!(lane_metrics(&metrics), (1, 1, 1));
        // The first connection's end gives the lane back.
        drop((client, upstream));
        task.await.unwrap().unwrap();
        assert_eq!(lane_metrics(&metrics), (0, 1, 1));
        drop((c2, u2));
        task2.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_reset_ends_the_relay_with_an_error() {
        let (client, upstream, task) = spliced_pairs().await;
        // RST from the upstream while the client stays silent.
        upstream.set_zero_linger().unwrap();
        drop(upstream);
        let r = tokio::time::timeout(std::time::Duration::from_secs(2), task)
            .await
            .expect("relay ended")
            .unwrap();
        assert!(r.is_err() || r.unwrap().upstream_to_client == 0);
        drop(client);
    }

    /// A TLS server on loopback and a client config that trusts it.
    pub(crate) fn tls_server() -> (tokio_rustls::TlsAcceptor, tokio_rustls::TlsConnector) {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["proxy.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (
            tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server)),
            tokio_rustls::TlsConnector::from(std::sync::Arc::new(client)),
        )
    }

    /// (client, TLS server side, relay task): the client's bytes go through
    /// [`relay_tls`] to a TLS server, as through an `https://` proxy's tunnel.
    pub(crate) async fn tls_pairs() -> (
        TcpStream,
        tokio_rustls::server::TlsStream<TcpStream>,
        tokio::task::JoinHandle<io::Result<Transferred>>,
    ) {
        let (acceptor, connector) = tls_server();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (client_side, _) = l.accept().await.unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (server_tcp, _) = l.accept().await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("proxy.test").unwrap();
        let (upstream, server) =
            tokio::join!(connector.connect(name, tcp), acceptor.accept(server_tcp));
        let mut upstream = upstream.unwrap();
        let task = tokio::spawn(async move { relay_tls(&client_side, &mut upstream).await });
        (client, server.unwrap(), task)
    }

    #[tokio::test]
    async fn tls_relay_half_closes_both_ways() {
        let (client, server, task) = tls_pairs().await;
        assert_half_close(client, server, task).await;
    }

    #[tokio::test]
    async fn tls_relay_moves_large_transfers_both_ways_byte_exact() {
        let (client, server, task) = tls_pairs().await;
        const N: usize = 8 << 20;
        let data: Vec<u8> = (0..N).map(|i| (i * 13 % 251) as u8).collect();
        let run = |s: Box<dyn Stream>, data: Vec<u8>| async move {
            let (mut r, mut w) = tokio::io::split(s);
            let write = async {
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let read = async {
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.unwrap();
                got
            };
            tokio::join!(write, read).1
        };
        let (a, b) = tokio::join!(
            run(Box::new(client), data.clone()),
            run(Box::new(server), data.clone())
        );
        assert!(a == data && b == data, "relayed bytes differ");
        let moved = task.await.unwrap().unwrap();
        assert_eq!(moved.client_to_upstream, N as u64);
        assert_eq!(moved.upstream_to_client, N as u64);
    }

    trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
    impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

    /// The proxy reads nothing, so the relay waits to hand it the client's
    /// bytes; a client reset meanwhile ends the relay at once.
    #[tokio::test]
    async fn tls_relay_notices_a_client_reset_while_the_proxy_does_not_read() {
        let (client, _server, task) = tls_pairs().await;
        assert_relay_notices_client_reset(client, task).await;
    }

    /// The same for the splice relay: the upstream reads nothing.
    #[tokio::test]
    async fn spliced_relay_notices_a_client_reset_while_the_upstream_does_not_read() {
        let (client, _upstream, task) = spliced_pairs().await;
        assert_relay_notices_client_reset(client, task).await;
    }

    /// Writes until the relay is stuck writing to a peer that does not
    /// read, resets the client, and expects the relay to end with an error.
    async fn assert_relay_notices_client_reset(
        mut client: TcpStream,
        task: tokio::task::JoinHandle<io::Result<Transferred>>,
    ) {
        let block = vec![0u8; 64 * 1024];
        // Until the relay is stuck writing to the proxy.
        while tokio::time::timeout(
            std::time::Duration::from_millis(300),
            client.write_all(&block),
        )
        .await
        .is_ok()
        {}
        client.set_zero_linger().unwrap();
        drop(client);
        let r = tokio::time::timeout(std::time::Duration::from_secs(2), task)
            .await
            .expect("the relay noticed the reset")
            .unwrap();
        assert!(r.is_err(), "{r:?}");
    }

    #[tokio::test]
    async fn tls_relay_fails_on_a_truncated_tunnel() {
        // The proxy's TCP ends without close_notify: possibly truncated, so
        // an error (the client gets a reset), never a clean end.
        let (mut client, server, task) = tls_pairs().await;
        let (tcp, _) = server.into_inner();
        drop(tcp);
        let r = tokio::time::timeout(std::time::Duration::from_secs(2), task)
            .await
            .expect("relay ended")
            .unwrap();
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        client.shutdown().await.unwrap();
    }
}
