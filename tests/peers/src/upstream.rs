//! `peers upstream`: the benchmark's own CONNECT upstream: it parses `CONNECT ip:port`,
//! answers 200 and tunnels with `splice(2)`, nothing else. squid runs one
//! worker, which is the bottleneck of every proxied path on a small machine;
//! running the same workloads through this one as well shows what the
//! redirector itself costs.
//!
//! One epoll loop per core (edge-triggered), all accepting from the same
//! listeners. A connection holds its two sockets and nothing else while it
//! is idle: the pipes that `splice` moves bytes through are taken from a
//! per-thread pool while data is in flight and given back once they are
//! empty, so 9,000 idle tunnels need 18,000 descriptors, not 54,000.
//! Authorities must be IP literals: a name would need DNS, which the
//! benchmark never uses.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::thread;

use anyhow::{Context, Result};
use redirector::relay::splice;
use socket2::{Domain, Socket, Type};

/// Most bytes of a CONNECT request head.
const MAX_HEAD: usize = 8192;
/// Bytes one `splice` moves at most (the pipe is sized to it if allowed).
const PIPE_BYTES: usize = 1 << 20;
/// Spare pipes a worker keeps.
const POOL_MAX: usize = 256;
const EPOLL_EVENTS: usize = 256;
/// Tokens at and above this one are listeners; below, `slot << 1 | side`.
const LISTENER_TOKEN: u64 = u64::MAX - 64;
const REPLY_200: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// Serves CONNECT on every address with `threads` workers, until killed.
pub fn serve(listen: &[SocketAddr], threads: usize) -> Result<()> {
    let mut listeners = Vec::new();
    for addr in listen {
        let l = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
        l.set_nonblocking(true)?;
        listeners.push(l);
    }
    let listeners = Arc::new(listeners);
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let listeners = listeners.clone();
            thread::spawn(move || Worker::new(&listeners).and_then(|mut w| w.run(&listeners)))
        })
        .collect();
    println!("bench upstream ready");
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("upstream worker panicked"))?
            .context("upstream worker")?;
    }
    Ok(())
}

/// A pipe between the two `splice` calls of one direction.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are new descriptors owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // Larger pipes mean fewer splices per GiB; the default (64 KiB) if
        // the system refuses.
        // SAFETY: plain fcntl on a descriptor we own.
        unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_BYTES as libc::c_int,
            )
        };
        Ok(Self { read, write })
    }
}

/// One direction of a tunnel.
#[derive(Default)]
struct Direction {
    /// Holds `pending` bytes read from the source, not yet written.
    pipe: Option<Pipe>,
    pending: usize,
    /// The source ended and the destination's write side is shut.
    done: bool,
}

enum State {
    /// Reading the CONNECT request head.
    Head(Vec<u8>),
    /// Dialling the target; the bytes the client sent after the head.
    Connecting(Vec<u8>),
    /// Client to target, and target to client.
    Tunnel([Direction; 2]),
}

struct Conn {
    client: TcpStream,
    target: Option<TcpStream>,
    state: State,
}

struct Worker {
    epoll: OwnedFd,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    pool: Vec<Pipe>,
}

/// What one event on a connection leads to.
enum Next {
    Keep,
    Close,
}

impl Worker {
    fn new(listeners: &[TcpListener]) -> Result<Self> {
        // SAFETY: epoll_create1 takes no pointers.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("epoll_create1");
        }
        // SAFETY: a new descriptor that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let w = Self {
            epoll,
            conns: Vec::new(),
            free: Vec::new(),
            pool: Vec::new(),
        };
        for (i, l) in listeners.iter().enumerate() {
            // Level-triggered and exclusive: one worker wakes per connection.
            epoll_add(
                w.epoll.as_raw_fd(),
                l.as_raw_fd(),
                LISTENER_TOKEN + i as u64,
                libc::EPOLLIN | libc::EPOLLEXCLUSIVE,
            )
            .context("epoll_ctl listener")?;
        }
        Ok(w)
    }

    fn run(&mut self, listeners: &[TcpListener]) -> Result<()> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EPOLL_EVENTS];
        let epoll = self.epoll.as_raw_fd();
        loop {
            // SAFETY: `events` has room for EPOLL_EVENTS entries.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    EPOLL_EVENTS as libc::c_int,
                    -1,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e).context("epoll_wait");
            }
            for ev in &events[..n as usize] {
                let (token, bits) = (ev.u64, ev.events);
                if token >= LISTENER_TOKEN {
                    self.accept(&listeners[(token - LISTENER_TOKEN) as usize]);
                    continue;
                }
                let slot = (token >> 1) as usize;
                let side = (token & 1) as usize;
                // A slot closed earlier in this batch (and maybe reused):
                // every handler below copes with an event that has nothing
                // to say.
                let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
                    continue;
                };
                let next = match handle(conn, side, bits, &mut self.pool) {
                    Ok(Some(target)) => {
                        let fd = target.as_raw_fd();
                        conn.target = Some(target);
                        match epoll_add(epoll, fd, (slot as u64) << 1 | 1, edge_events()) {
                            Ok(()) => Next::Keep,
                            Err(_) => Next::Close,
                        }
                    }
                    Ok(None) => Next::Keep,
                    Err(_) => Next::Close,
                };
                let finished = matches!(&conn.state, State::Tunnel(d) if d[0].done && d[1].done);
                if matches!(next, Next::Close) || finished {
                    self.close(slot);
                }
            }
        }
    }

    fn accept(&mut self, listener: &TcpListener) {
        loop {
            let client = match listener.accept() {
                Ok((s, _)) => s,
                // WouldBlock: drained. Anything else (EMFILE, a reset before
                // accept): try again on the next event.
                Err(_) => return,
            };
            if client.set_nonblocking(true).is_err() {
                continue;
            }
            let _ = client.set_nodelay(true);
            let slot = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            let fd = client.as_raw_fd();
            self.conns[slot] = Some(Conn {
                client,
                target: None,
                state: State::Head(Vec::new()),
            });
            if epoll_add(
                self.epoll.as_raw_fd(),
                fd,
                (slot as u64) << 1,
                edge_events(),
            )
            .is_err()
            {
                self.close(slot);
            }
        }
    }

    fn close(&mut self, slot: usize) {
        if let Some(conn) = self.conns[slot].take() {
            // Empty pipes go back to the pool; one with bytes in it is dropped.
            if let State::Tunnel(dirs) = conn.state {
                for d in dirs {
                    if let Some(p) = d.pipe
                        && d.pending == 0
                        && self.pool.len() < POOL_MAX
                    {
                        self.pool.push(p);
                    }
                }
            }
            self.free.push(slot);
        }
    }
}

fn epoll_add(epoll: RawFd, fd: RawFd, token: u64, events: libc::c_int) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: events as u32,
        u64: token,
    };
    // SAFETY: `ev` lives across the call; both descriptors are open.
    if unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn edge_events() -> libc::c_int {
    libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET
}

/// One event on one side of a connection. Returns the target socket once
/// it has been created, for the caller to register.
fn handle(
    conn: &mut Conn,
    side: usize,
    bits: u32,
    pool: &mut Vec<Pipe>,
) -> io::Result<Option<TcpStream>> {
    match &mut conn.state {
        State::Head(head) => {
            if side != 0 {
                return Ok(None);
            }
            let Some(early) = read_head(&mut conn.client, head)? else {
                return Ok(None);
            };
            let target = match parse_connect(&head[..head.len() - early]) {
                Ok(t) => t,
                Err(status) => {
                    let _ = conn.client.write_all(status.as_bytes());
                    return Err(io::Error::other(status));
                }
            };
            let early = head[head.len() - early..].to_vec();
            let socket = Socket::new(
                Domain::for_address(target),
                Type::STREAM.nonblocking(),
                None,
            )?;
            socket.set_tcp_nodelay(true)?;
            match socket.connect(&target.into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => {
                    let _ = conn.client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
                    return Err(e);
                }
            }
            conn.state = State::Connecting(early);
            // The connect may already be done (a local target): the event
            // that says so can come before registration, so look now too.
            let target = TcpStream::from(socket);
            if target.peer_addr().is_ok() {
                established(conn, &target, pool)?;
            }
            Ok(Some(target))
        }
        State::Connecting(_) => {
            let Some(target) = conn.target.as_ref() else {
                return Ok(None);
            };
            if side != 1 {
                return Ok(None);
            }
            if let Some(e) = target.take_error()? {
                let _ = conn.client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
                return Err(e);
            }
            if bits & libc::EPOLLOUT as u32 == 0 || target.peer_addr().is_err() {
                return Ok(None);
            }
            let target = conn.target.take().expect("checked above");
            let r = established(conn, &target, pool);
            conn.target = Some(target);
            r.map(|()| None)
        }
        State::Tunnel(_) => {
            pump_both(conn, pool)?;
            Ok(None)
        }
    }
}

/// The target answered: 200 to the client, the early bytes to the target,
/// then whatever is waiting on either side.
fn established(conn: &mut Conn, target: &TcpStream, pool: &mut Vec<Pipe>) -> io::Result<()> {
    let State::Connecting(early) = &conn.state else {
        return Ok(());
    };
    // Fresh sockets with empty send buffers: these small writes complete.
    (&conn.client).write_all(REPLY_200)?;
    (&*target).write_all(early)?;
    conn.state = State::Tunnel(Default::default());
    let (client, target_fd) = (conn.client.as_raw_fd(), target.as_raw_fd());
    let State::Tunnel(dirs) = &mut conn.state else {
        unreachable!()
    };
    pump(client, target_fd, &mut dirs[0], pool)?;
    pump(target_fd, client, &mut dirs[1], pool)
}

fn pump_both(conn: &mut Conn, pool: &mut Vec<Pipe>) -> io::Result<()> {
    let Some(target) = conn.target.as_ref() else {
        return Ok(());
    };
    let (client, target) = (conn.client.as_raw_fd(), target.as_raw_fd());
    let State::Tunnel(dirs) = &mut conn.state else {
        return Ok(());
    };
    pump(client, target, &mut dirs[0], pool)?;
    pump(target, client, &mut dirs[1], pool)
}

/// Moves bytes from `src` to `dst` until one of them would block (the next
/// edge resumes it) or `src` ends (then `dst` is shut for writing).
fn pump(src: RawFd, dst: RawFd, dir: &mut Direction, pool: &mut Vec<Pipe>) -> io::Result<()> {
    loop {
        if dir.pending > 0 {
            let pipe = dir.pipe.as_ref().expect("pending bytes sit in a pipe");
            match splice(pipe.read.as_raw_fd(), dst, dir.pending) {
                Ok(n) => dir.pending -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
            continue;
        }
        if dir.done {
            return Ok(());
        }
        let pipe = match dir.pipe.take() {
            Some(p) => p,
            None => match pool.pop() {
                Some(p) => p,
                None => Pipe::new()?,
            },
        };
        match splice(src, pipe.write.as_raw_fd(), PIPE_BYTES) {
            Ok(0) => {
                give_back(pool, pipe);
                dir.done = true;
                // SAFETY: shutdown on a socket we hold open.
                unsafe { libc::shutdown(dst, libc::SHUT_WR) };
                return Ok(());
            }
            Ok(n) => {
                dir.pending = n;
                dir.pipe = Some(pipe);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                give_back(pool, pipe);
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

fn give_back(pool: &mut Vec<Pipe>, pipe: Pipe) {
    if pool.len() < POOL_MAX {
        pool.push(pipe);
    }
}

/// Reads what is there into `head`; once it holds a whole request head,
/// returns how many bytes of it came after the head.
fn read_head(client: &mut TcpStream, head: &mut Vec<u8>) -> io::Result<Option<usize>> {
    let mut buf = [0u8; 2048];
    loop {
        if let Some(end) = find_head_end(head) {
            return Ok(Some(head.len() - end));
        }
        if head.len() > MAX_HEAD {
            return Err(io::Error::other("request head too long"));
        }
        match client.read(&mut buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// The target of a `CONNECT ip:port HTTP/1.x` head, or the status line to
/// refuse it with.
fn parse_connect(head: &[u8]) -> Result<SocketAddr, &'static str> {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = std::str::from_utf8(line).map_err(|_| "HTTP/1.1 400 Bad Request\r\n\r\n")?;
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("CONNECT"), Some(authority), Some(v)) if v.starts_with("HTTP/1.") => authority
            .parse()
            .map_err(|_| "HTTP/1.1 400 Bad Request (IP literals only)\r\n\r\n"),
        (Some("CONNECT"), _, _) => Err("HTTP/1.1 400 Bad Request\r\n\r\n"),
        _ => Err("HTTP/1.1 405 Method Not Allowed\r\n\r\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Shutdown;
    use std::time::Duration;

    #[test]
    fn parses_connect_heads() {
        let ok = parse_connect(b"CONNECT 10.0.0.1:443 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(ok, Ok("10.0.0.1:443".parse().unwrap()));
        let v6 = parse_connect(b"CONNECT [fd00::1]:80 HTTP/1.0\r\n\r\n");
        assert_eq!(v6, Ok("[fd00::1]:80".parse().unwrap()));
        assert!(parse_connect(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n").is_err());
        assert!(
            parse_connect(b"GET / HTTP/1.1\r\n\r\n")
                .unwrap_err()
                .contains("405")
        );
        assert_eq!(find_head_end(b"a\r\n\r\nxyz"), Some(5));
        assert_eq!(find_head_end(b"a\r\n\r"), None);
    }

    /// Tunnels both ways with half-close, many connections at once, early
    /// bytes after the head, and refuses what it cannot serve.
    #[test]
    fn tunnels_on_loopback() {
        // An echo server that answers after the client half-closes.
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let echo_addr = echo.local_addr().unwrap();
        thread::spawn(move || {
            for s in echo.incoming().flatten() {
                thread::spawn(move || {
                    let mut s = s;
                    let mut all = Vec::new();
                    s.read_to_end(&mut all).unwrap();
                    s.write_all(&all).unwrap();
                });
            }
        });
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        thread::spawn(move || serve(&[addr], 2));
        let mut up = None;
        for _ in 0..100 {
            if let Ok(s) = TcpStream::connect(addr) {
                up = Some(s);
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        drop(up.expect("upstream listens"));

        let clients: Vec<_> = (0..20)
            .map(|i| {
                thread::spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    // Half the clients send data right behind the head.
                    let payload: Vec<u8> = (0..(3 << 20) + i).map(|b| (b % 251) as u8).collect();
                    let head = format!("CONNECT {echo_addr} HTTP/1.1\r\nHost: {echo_addr}\r\n\r\n");
                    let mut first = head.into_bytes();
                    if i % 2 == 0 {
                        first.extend_from_slice(&payload[..100]);
                    }
                    s.write_all(&first).unwrap();
                    let mut reply = [0u8; REPLY_200.len()];
                    s.read_exact(&mut reply).unwrap();
                    assert_eq!(&reply[..], REPLY_200);
                    let rest = if i % 2 == 0 {
                        &payload[100..]
                    } else {
                        &payload[..]
                    };
                    let writer = s.try_clone().unwrap();
                    let rest = rest.to_vec();
                    let w = thread::spawn(move || {
                        let mut writer = writer;
                        writer.write_all(&rest).unwrap();
                        writer.shutdown(Shutdown::Write).unwrap();
                    });
                    let mut back = Vec::new();
                    s.read_to_end(&mut back).unwrap();
                    w.join().unwrap();
                    assert!(back == payload, "client {i}: echo differs");
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }

        let refused = |head: &str| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(head.as_bytes()).unwrap();
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            answer
        };
        assert!(refused("GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(refused("CONNECT name.example:80 HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 400"));
        // Nothing listens on port 1 of loopback.
        assert!(refused("CONNECT 127.0.0.1:1 HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 502"));
    }
}
