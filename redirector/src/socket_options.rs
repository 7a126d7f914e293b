//! Options on both sockets of every relayed connection: the pod's (set on
//! the listener, which accepted sockets inherit) and the upstream one (set
//! before connect, so the SYN carries the window scale they allow).
//!
//! - **Buffers.** The kernel charges a socket's queued bytes to the
//!   daemon's memory cgroup (cgroup v2 always). Autotuned, one stalled
//!   tunnel could hold megabytes there (`net.ipv4.tcp_rmem`/`tcp_wmem`),
//!   and enough of them would OOM-kill the daemon. Clamped with
//!   `SO_RCVBUF`/`SO_SNDBUF`, each queue has a fixed limit that the
//!   connection cap counts (`memory_budget::ConnectionCost`).
//! - **Keepalive.** A pod deleted with its network namespace sends no FIN
//!   nor reset: without probes its connections would stay open, and count
//!   under the caps, until the upstream ends them. Keepalive closes an
//!   idle one, and `TCP_USER_TIMEOUT` one whose peer stopped acknowledging
//!   data, both within [`Keepalive::dead_peer_bound`].
use std::{fmt, io, str::FromStr, time::Duration};

use socket2::{SockRef, TcpKeepalive};

/// `SO_RCVBUF` and `SO_SNDBUF` when not given: each queue is limited to
/// twice this (the kernel's doubling). Enough for about 1 Gbit/s per
/// connection at 0.5 ms round trip to the proxy (a window of up to twice
/// this over the round trip); see docs/configuration.md for the trade-off.
pub const DEFAULT_BUFFER: usize = 32 << 10;
/// The smallest buffer accepted: below a few segments TCP crawls.
pub const MIN_BUFFER: usize = 4 << 10;
/// The largest buffer accepted; the kernel also caps it at
/// `net.core.rmem_max`/`wmem_max`, and the cap counts what it really set.
pub const MAX_BUFFER: usize = 64 << 20;

/// How long a connection's peer may stay silent before it is probed, how
/// often, and how many unanswered probes close it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

impl Keepalive {
    /// 60 s idle, then a probe every 10 s, 3 unanswered: a vanished peer's
    /// connection closes within 90 s. Idle connections to the proxy also
    /// stay open through NAT and load balancers that drop flows idle for
    /// a few minutes (Azure's default: 4).
    pub const DEFAULT: Keepalive = Keepalive {
        idle: Duration::from_secs(60),
        interval: Duration::from_secs(10),
        count: 3,
    };

    /// The longest a connection stays open once its peer is gone: idle
    /// until probed, then every probe unanswered. Also the
    /// `TCP_USER_TIMEOUT`, so a peer that stops acknowledging data (or
    /// window probes) is dropped on the same bound.
    pub fn dead_peer_bound(&self) -> Duration {
        self.idle + self.interval * self.count
    }
}

impl fmt::Display for Keepalive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{},{},{}",
            self.idle.as_secs(),
            self.interval.as_secs(),
            self.count
        )
    }
}

/// `IDLE,INTERVAL,COUNT`: whole seconds, seconds, probes.
impl FromStr for Keepalive {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("`{s}`: {why}; expected IDLE,INTERVAL,COUNT (e.g. 60,10,3)");
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let [idle, interval, count] = parts[..] else {
            return Err(bad("three numbers"));
        };
        let secs = |v: &str, max: u64| {
            v.parse::<u64>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .map(Duration::from_secs)
        };
        // The kernel's bounds: TCP_KEEPIDLE and TCP_KEEPINTVL up to 32767 s,
        // TCP_KEEPCNT up to 127.
        Ok(Keepalive {
            idle: secs(idle, 32_767).ok_or_else(|| bad("IDLE must be 1 to 32767 seconds"))?,
            interval: secs(interval, 32_767)
                .ok_or_else(|| bad("INTERVAL must be 1 to 32767 seconds"))?,
            count: count
                .parse()
                .ok()
                .filter(|n| (1..=127).contains(n))
                .ok_or_else(|| bad("COUNT must be 1 to 127"))?,
        })
    }
}

/// What is set on each relayed connection's sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOptions {
    /// `SO_RCVBUF` and `SO_SNDBUF`, as given to the kernel.
    pub buffer: usize,
    pub keepalive: Keepalive,
    /// The largest receive buffer a connected socket may get later (a bulk
    /// lane's), or 0: an outgoing SYN offers the window scale for it
    /// ([`SocketOptions::offer_window_scale`]).
    pub scale_for: usize,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            buffer: DEFAULT_BUFFER,
            keepalive: Keepalive::DEFAULT,
            scale_for: 0,
        }
    }
}

/// Queue limits as the kernel set them (`sk_rcvbuf`, `sk_sndbuf`): twice
/// the value asked, capped by `net.core.rmem_max`/`wmem_max`, at least its
/// minimums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelBuffers {
    pub receive: u64,
    pub send: u64,
}

impl SocketOptions {
    /// Sets the options on a socket not yet listening or connected.
    pub fn apply(&self, socket: SockRef<'_>) -> io::Result<()> {
        socket.set_recv_buffer_size(self.buffer)?;
        socket.set_send_buffer_size(self.buffer)?;
        let k = self.keepalive;
        socket.set_tcp_keepalive(
            &TcpKeepalive::new()
                .with_time(k.idle)
                .with_interval(k.interval)
                .with_retries(k.count),
        )?;
        socket.set_tcp_user_timeout(Some(k.dead_peer_bound()))
    }

    /// Before a connect: the receive buffer at [`SocketOptions::scale_for`]
    /// for the handshake only. The kernel picks the window scale from the
    /// receive buffer at the SYN, and a small locked one gets scale 0: a
    /// 64 KiB window forever, which no later widening could lift. Once
    /// connected, [`SocketOptions::after_connect`] sets the small buffer
    /// back, before any byte is relayed (the peer's first window is the
    /// SYN's, unscaled: at most 64 KiB).
    pub fn offer_window_scale(&self, socket: SockRef<'_>) -> io::Result<()> {
        if self.scale_for > self.buffer {
            force_recv_buffer(&socket, self.scale_for)?;
        }
        Ok(())
    }

    /// After a connect: the small receive buffer, as counted by the cap.
    pub fn after_connect(&self, socket: SockRef<'_>) -> io::Result<()> {
        if self.scale_for > self.buffer {
            socket.set_recv_buffer_size(self.buffer)?;
        }
        Ok(())
    }

    /// The queue limits these options give on this kernel, read back from a
    /// socket that is never connected.
    pub fn kernel_buffers(&self) -> io::Result<KernelBuffers> {
        KernelBuffers::after(|socket| self.apply(socket))
    }
}

impl KernelBuffers {
    /// The queue limits `set` gives a socket on this kernel, read back from
    /// one that is never connected.
    pub fn after(set: impl FnOnce(SockRef<'_>) -> io::Result<()>) -> io::Result<KernelBuffers> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        set(SockRef::from(&socket))?;
        Ok(KernelBuffers {
            receive: socket.recv_buffer_size()? as u64,
            send: socket.send_buffer_size()? as u64,
        })
    }
}

/// `SO_RCVBUFFORCE` (past `net.core.rmem_max`; needs `CAP_NET_ADMIN`),
/// else `SO_RCVBUF` up to that maximum.
pub fn force_recv_buffer(socket: &SockRef<'_>, buffer: usize) -> io::Result<()> {
    force(socket, libc::SO_RCVBUFFORCE, buffer).or_else(|_| socket.set_recv_buffer_size(buffer))
}

/// `SO_SNDBUFFORCE`, else `SO_SNDBUF` up to `net.core.wmem_max`.
pub fn force_send_buffer(socket: &SockRef<'_>, buffer: usize) -> io::Result<()> {
    force(socket, libc::SO_SNDBUFFORCE, buffer).or_else(|_| socket.set_send_buffer_size(buffer))
}

fn force(socket: &SockRef<'_>, name: libc::c_int, buffer: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(buffer).unwrap_or(libc::c_int::MAX);
    setsockopt_int(socket, libc::SOL_SOCKET, name, value)
}

/// An int-valued `setsockopt`.
pub fn setsockopt_int(
    socket: &SockRef<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open (borrowed from a live socket) and the
    // value is an int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_parses_and_refuses_nonsense() {
        let k: Keepalive = "60,10,3".parse().unwrap();
        assert_eq!(k, Keepalive::DEFAULT);
        assert_eq!(k.dead_peer_bound(), Duration::from_secs(90));
        assert_eq!(k.to_string(), "60,10,3");
        let k: Keepalive = " 2, 1 ,2".parse().unwrap();
        assert_eq!(k.dead_peer_bound(), Duration::from_secs(4));
        for bad in [
            "",
            "60",
            "60,10",
            "60,10,3,1",
            "0,10,3",
            "60,0,3",
            "60,10,0",
            "60,10,128",
            "40000,10,3",
            "1.5,1,1",
            "a,b,c",
            "-1,1,1",
        ] {
            let err = bad.parse::<Keepalive>().unwrap_err();
            assert!(err.contains("IDLE,INTERVAL,COUNT"), "{bad}: {err}");
        }
    }

    /// The kernel doubles what is asked (its bookkeeping overhead), and the
    /// cap counts the doubled value: read back, as the daemon does at start.
    #[test]
    fn the_kernel_doubles_the_buffers() {
        let options = SocketOptions {
            buffer: 16 << 10,
            ..SocketOptions::default()
        };
        let b = options.kernel_buffers().unwrap();
        assert_eq!((b.receive, b.send), (32 << 10, 32 << 10));
    }

    /// What an accepted socket gets from its listener: the buffers, the
    /// keepalive and the user timeout (the kernel copies the listener).
    #[test]
    fn accepted_sockets_inherit_the_listener_s_options() {
        let options = SocketOptions {
            buffer: 8 << 10,
            keepalive: "7,3,2".parse().unwrap(),
            ..SocketOptions::default()
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        options.apply(SockRef::from(&listener)).unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let s = SockRef::from(&accepted);
        assert_eq!(s.recv_buffer_size().unwrap(), 16 << 10);
        assert_eq!(s.send_buffer_size().unwrap(), 16 << 10);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(3));
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 2);
        assert_eq!(s.tcp_user_timeout().unwrap(), Some(Duration::from_secs(13)));
    }

    /// A connect with `scale_for` offers a window scale for the bulk
    /// buffer but keeps the small buffer once connected; without it, a
    /// locked small buffer gets scale 0 (a 64 KiB window for good).
    #[test]
    fn a_connect_offers_the_window_scale_of_a_bulk_lane() {
        fn connected(options: &SocketOptions) -> (std::net::TcpStream, u8) {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            options.apply(SockRef::from(&socket)).unwrap();
            options.offer_window_scale(SockRef::from(&socket)).unwrap();
            socket
                .connect(&listener.local_addr().unwrap().into())
                .unwrap();
            let stream: std::net::TcpStream = socket.into();
            options.after_connect(SockRef::from(&stream)).unwrap();
            let _accepted = listener.accept().unwrap();
            let wscale = rcv_wscale(&stream);
            (stream, wscale)
        }
        let small = SocketOptions::default();
        let (stream, wscale) = connected(&small);
        assert_eq!(wscale, 0);
        let queue = SockRef::from(&stream).recv_buffer_size().unwrap();
        let bulk = SocketOptions {
            scale_for: 4 << 20,
            ..small
        };
        let (stream, wscale) = connected(&bulk);
        assert!(wscale >= 6, "window scale {wscale}");
        assert_eq!(SockRef::from(&stream).recv_buffer_size().unwrap(), queue);
    }

    /// `tcpi_rcv_wscale`, the scale this side offered, from `TCP_INFO`.
    fn rcv_wscale(stream: &std::net::TcpStream) -> u8 {
        use std::os::fd::AsRawFd;
        // SAFETY: tcp_info is plain data; the kernel fills at most `len`.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: a live socket, and a buffer of the size given.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        // The high nibble: the scale we receive with.
        info.tcpi_snd_rcv_wscale >> 4
    }
}
