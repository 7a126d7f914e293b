//! What a TLS tunnel's relay (an `https://` proxy) holds in memory, idle and
//! with both peers stalled, counted by the allocator. Its own test binary:
//! the count must see one test's allocations only.
//!
//! The relay runs on a thread of its own, where allocations are counted;
//! the peers (the client and the TLS server standing in for the proxy) run
//! on another, so their buffers are not.
use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicIsize, Ordering},
        mpsc,
    },
    time::Duration,
};

use redirector::relay::{relay_tls, tls::IN_FLIGHT_MAX};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket},
};

struct Counting;

thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}
static LIVE: AtomicIsize = AtomicIsize::new(0);

fn counted() -> bool {
    COUNTED.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: every call is passed on to the system allocator unchanged; the
// counting only reads a thread-local flag and adds to an atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counted() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if counted() {
            LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counted() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const TUNNELS: usize = 20;
/// Small socket buffers, so that a peer that does not read stalls the
/// other side after little data (the kernel's buffers are not the relay's).
const SOCKET_BUFFER: u32 = 32 * 1024;

fn tls_configs() -> (tokio_rustls::TlsAcceptor, tokio_rustls::TlsConnector) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
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
        tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        tokio_rustls::TlsConnector::from(Arc::new(client)),
    )
}

fn small_socket() -> TcpSocket {
    let s = TcpSocket::new_v4().unwrap();
    s.set_recv_buffer_size(SOCKET_BUFFER).unwrap();
    s.set_send_buffer_size(SOCKET_BUFFER).unwrap();
    s
}

async fn small_listener() -> TcpListener {
    let s = small_socket();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    s.listen(64).unwrap()
}

/// Writes until the peer has not read for a while: then it is stalled.
async fn write_until_stalled<W: AsyncWriteExt + Unpin>(w: &mut W) -> usize {
    let block = vec![0x5a; 16 * 1024];
    let mut sent = 0;
    while let Ok(Ok(())) =
        tokio::time::timeout(Duration::from_millis(500), w.write_all(&block)).await
    {
        sent += block.len();
    }
    sent
}

/// The next message the test thread sends that `want` accepts, without
/// blocking the relay's runtime.
async fn wait_for(rx: &mpsc::Receiver<&'static str>, want: impl Fn(&str) -> bool) -> &'static str {
    loop {
        match rx.try_recv() {
            Ok(m) if want(m) => return m,
            Ok(_) | Err(mpsc::TryRecvError::Empty) => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_tls_tunnel_holds_memory_only_for_bytes_in_flight() {
    let (acceptor, connector) = tls_configs();
    let (to_peers, peers_rx) = mpsc::channel::<SocketAddr>();
    let (to_relay, relay_rx) = mpsc::channel::<&'static str>();
    let (report, reports) = mpsc::channel::<(&'static str, isize)>();

    // The relay's thread: accepts clients, opens TLS to the server, relays.
    let relay = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let clients = small_listener().await;
            // Tell the peers where clients connect; learn where the server is.
            to_peers.send(clients.local_addr().unwrap()).unwrap();
            let server_addr: SocketAddr = wait_for(&relay_rx, |_| true).await.parse().unwrap();
            let mut pairs = Vec::new();
            for _ in 0..TUNNELS {
                let (client_side, _) = clients.accept().await.unwrap();
                let tcp = small_socket().connect(server_addr).await.unwrap();
                let name = rustls_pki_types::ServerName::try_from("proxy.test").unwrap();
                let tls = connector.connect(name, tcp).await.unwrap();
                pairs.push((client_side, tls));
            }
            // From here on, what the relay allocates is counted.
            COUNTED.with(|c| c.set(true));
            for (client_side, mut tls) in pairs {
                tokio::spawn(async move {
                    let _ = relay_tls(&client_side, &mut tls).await;
                });
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            report.send(("idle", LIVE.load(Ordering::Relaxed))).unwrap();
            // The peers push both ways without reading until stalled.
            wait_for(&relay_rx, |m| m == "measure").await;
            report
                .send(("stalled", LIVE.load(Ordering::Relaxed)))
                .unwrap();
            wait_for(&relay_rx, |m| m == "done").await;
        });
    });

    // The peers' thread: the TLS server and the clients.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let server = small_listener().await;
        let clients_addr = peers_rx.recv().unwrap();
        let server_addr = server.local_addr().unwrap().to_string();
        to_relay
            .send(Box::leak(server_addr.into_boxed_str()))
            .unwrap();
        let mut clients = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..TUNNELS {
            let (c, s) = tokio::join!(small_socket().connect(clients_addr), async {
                let (tcp, _) = server.accept().await.unwrap();
                acceptor.accept(tcp).await.unwrap()
            });
            clients.push(c.unwrap());
            servers.push(s);
        }
        let (_, idle) = reports.recv().unwrap();
        // Both ends write and nobody reads: every buffer on the way fills.
        let pushed = futures_util::future::join_all(
            clients
                .iter_mut()
                .map(|c| {
                    Box::pin(write_until_stalled(c))
                        as std::pin::Pin<Box<dyn Future<Output = usize>>>
                })
                .chain(servers.iter_mut().map(|s| {
                    Box::pin(write_until_stalled(s))
                        as std::pin::Pin<Box<dyn Future<Output = usize>>>
                })),
        )
        .await;
        assert!(pushed.iter().all(|n| *n > 0), "{pushed:?}");
        to_relay.send("measure").unwrap();
        let (_, stalled) = reports.recv().unwrap();
        let per = |live: isize| live / TUNNELS as isize;
        eprintln!(
            "per tunnel: idle {} B, stalled {} B (bound {} B); pushed {:?} B",
            per(idle),
            per(stalled),
            IN_FLIGHT_MAX,
            &pushed[..2]
        );
        // Idle: the relay's task, no buffer (the old relay: 128 KiB).
        assert!(per(idle) < 4 * 1024, "idle tunnel holds {} B", per(idle));
        // Stalled both ways: at most what rustls may hold (the old relay:
        // 128 KiB of buffers and rustls's 64 KiB send queue).
        assert!(
            per(stalled) <= IN_FLIGHT_MAX as isize,
            "stalled tunnel holds {} B",
            per(stalled)
        );
        // Everything still moves once the peers read.
        let mut buf = vec![0; 64 * 1024];
        let n = clients[0].read(&mut buf).await.unwrap();
        assert!(n > 0);
        to_relay.send("done").unwrap();
    });
    relay.join().unwrap();
}
