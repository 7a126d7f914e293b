//! The benchmark's own traffic: a tiny binary request/response protocol (not
//! HTTP, so every proxied path tunnels it with CONNECT), its server and the
//! client that measures bulk throughput, connection rate and latency.
//!
//! A request is 16 bytes: [`MAGIC`], one mode byte, three zero bytes and a
//! big-endian `u64` length `n`.
//! - `U` upload: the client sends `n` bytes, the server answers with the
//!   8-byte count it read;
//! - `D` download: the server sends `n` bytes;
//! - `R` request/response: the server answers `n` bytes at once.
//!
//! The client can reach the server directly or through an HTTP proxy with
//! `CONNECT`, as an application with `HTTPS_PROXY` does.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// First four bytes of every request: a zero byte, so that no classifier
/// takes it for TLS or an HTTP request line.
pub const MAGIC: [u8; 4] = *b"\0BN1";
const REQUEST_LEN: usize = 16;
/// Size of the small answer of the rate and latency workloads.
pub const SMALL_REPLY: u64 = 64;
const CHUNK: usize = 256 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// What one request asks the server for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Upload,
    Download,
    Reply,
}

impl Mode {
    fn byte(self) -> u8 {
        match self {
            Mode::Upload => b'U',
            Mode::Download => b'D',
            Mode::Reply => b'R',
        }
    }
}

/// Encodes one request.
pub fn encode_request(mode: Mode, n: u64) -> [u8; REQUEST_LEN] {
    let mut req = [0u8; REQUEST_LEN];
    req[..4].copy_from_slice(&MAGIC);
    req[4] = mode.byte();
    req[8..].copy_from_slice(&n.to_be_bytes());
    req
}

/// Decodes one request; `None` if it is not one of ours.
pub fn decode_request(req: &[u8; REQUEST_LEN]) -> Option<(Mode, u64)> {
    if req[..4] != MAGIC {
        return None;
    }
    let mode = match req[4] {
        b'U' => Mode::Upload,
        b'D' => Mode::Download,
        b'R' => Mode::Reply,
        _ => return None,
    };
    let n = u64::from_be_bytes(req[8..].try_into().expect("8 bytes"));
    Some((mode, n))
}

// ------------------------------------------------------------------ server

/// Serves the protocol on every address, one thread per connection, until
/// killed.
pub fn serve(listen: &[SocketAddr]) -> Result<()> {
    super::raise_open_files_limit();
    let mut listeners = Vec::new();
    for addr in listen {
        listeners.push(TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?);
    }
    println!("bench server ready");
    let handles: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    // Small stacks: the memory workload holds 9,000 of these.
                    let spawned =
                        thread::Builder::new()
                            .stack_size(SERVER_STACK)
                            .spawn(move || {
                                // A client that goes away mid-request is normal under load.
                                let _ = serve_connection(stream);
                            });
                    if spawned.is_err() {
                        // Out of threads: the connection closes; the client counts an error.
                        thread::sleep(Duration::from_millis(10));
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// Stack of a server thread: its buffers are on the heap.
const SERVER_STACK: usize = 128 * 1024;
/// Small answers come from here; larger requests get a heap buffer.
static SMALL_ZEROS: [u8; 4096] = [0; 4096];

fn serve_connection(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    // Allocated by the first request that needs it, so that thousands of
    // idle connections cost a thread and a socket each, not 256 KiB.
    let mut buf = Vec::new();
    loop {
        let mut req = [0u8; REQUEST_LEN];
        match stream.read_exact(&mut req) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let Some((mode, n)) = decode_request(&req) else {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bad request"));
        };
        if n > SMALL_ZEROS.len() as u64 && buf.is_empty() {
            buf = vec![0u8; CHUNK];
        }
        match mode {
            Mode::Upload if buf.is_empty() => {
                let got = discard(&mut stream, n, &mut [0u8; 512])?;
                stream.write_all(&got.to_be_bytes())?;
            }
            Mode::Upload => {
                let got = discard(&mut stream, n, &mut buf)?;
                stream.write_all(&got.to_be_bytes())?;
            }
            Mode::Download | Mode::Reply if buf.is_empty() => {
                send_zeros(&mut stream, n, &SMALL_ZEROS)?
            }
            Mode::Download | Mode::Reply => send_zeros(&mut stream, n, &buf)?,
        }
    }
}

fn discard(stream: &mut TcpStream, n: u64, buf: &mut [u8]) -> io::Result<u64> {
    let mut left = n;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let got = stream.read(&mut buf[..want])?;
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        left -= got as u64;
    }
    Ok(n)
}

fn send_zeros(stream: &mut TcpStream, n: u64, buf: &[u8]) -> io::Result<()> {
    let mut left = n;
    while left > 0 {
        let len = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        stream.write_all(&buf[..len])?;
        left -= len as u64;
    }
    Ok(())
}

// ------------------------------------------------------------------ client

/// Where the client connects: the server itself, or a proxy it asks to
/// `CONNECT` to the server.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub server: SocketAddr,
    pub proxy: Option<SocketAddr>,
}

/// Opens a connection to the server (through the proxy if any).
pub fn dial(target: Target) -> io::Result<TcpStream> {
    let first = target.proxy.unwrap_or(target.server);
    let mut stream = TcpStream::connect_timeout(&first, IO_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    if target.proxy.is_some() {
        let s = target.server;
        write!(stream, "CONNECT {s} HTTP/1.1\r\nHost: {s}\r\n\r\n")?;
        read_connect_reply(&mut stream)?;
    }
    Ok(stream)
}

/// Reads the proxy's answer to CONNECT byte by byte (nothing of the tunnel
/// may be consumed) and fails unless it is a 2xx.
fn read_connect_reply(stream: &mut TcpStream) -> io::Result<()> {
    let mut head = Vec::with_capacity(128);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 || stream.read(&mut byte)? == 0 {
            return Err(io::Error::other(
                "proxy closed or sent an oversized CONNECT reply",
            ));
        }
        head.push(byte[0]);
    }
    let status = head.split(|&b| b == b' ').nth(1).unwrap_or_default();
    if !status.starts_with(b"2") {
        let line = String::from_utf8_lossy(&head);
        return Err(io::Error::other(format!(
            "proxy refused CONNECT: {}",
            line.trim()
        )));
    }
    Ok(())
}

/// Result of the bulk workload: one stream, upload then download.
#[derive(Debug)]
pub struct Bulk {
    pub bytes: u64,
    pub up_gbps: f64,
    pub down_gbps: f64,
}

pub fn bulk(target: Target, bytes: u64) -> Result<Bulk> {
    let mut stream = dial(target).context("connect")?;
    let mut buf = vec![0u8; CHUNK];
    let start = Instant::now();
    stream.write_all(&encode_request(Mode::Upload, bytes))?;
    send_zeros(&mut stream, bytes, &buf).context("upload")?;
    let mut ack = [0u8; 8];
    stream.read_exact(&mut ack).context("upload ack")?;
    let up = start.elapsed();
    if u64::from_be_bytes(ack) != bytes {
        bail!(
            "server acknowledged {} of {bytes} bytes",
            u64::from_be_bytes(ack)
        );
    }
    let start = Instant::now();
    stream.write_all(&encode_request(Mode::Download, bytes))?;
    discard(&mut stream, bytes, &mut buf).context("download")?;
    let down = start.elapsed();
    let _ = stream.shutdown(Shutdown::Both);
    Ok(Bulk {
        bytes,
        up_gbps: gbps(bytes, up),
        down_gbps: gbps(bytes, down),
    })
}

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 * 8.0 / d.as_secs_f64().max(1e-9) / 1e9
}

/// One request on a new connection; returns connect-to-first-byte.
fn one_request(target: Target) -> io::Result<Duration> {
    let start = Instant::now();
    let mut stream = dial(target)?;
    stream.write_all(&encode_request(Mode::Reply, SMALL_REPLY))?;
    let mut reply = [0u8; SMALL_REPLY as usize];
    stream.read_exact(&mut reply[..1])?;
    let first = start.elapsed();
    stream.read_exact(&mut reply[1..])?;
    Ok(first)
}

/// Result of the connection-rate workload.
#[derive(Debug)]
pub struct Rate {
    pub ok: u64,
    pub errors: u64,
    pub conn_per_s: f64,
}

/// New connection per request, `concurrency` workers, for `duration`.
pub fn rate(target: Target, concurrency: usize, duration: Duration) -> Rate {
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (ok, errors) = (ok.clone(), errors.clone());
            thread::spawn(move || {
                while Instant::now() < deadline {
                    match one_request(target) {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let elapsed = start.elapsed();
    let ok = ok.load(Ordering::Relaxed);
    Rate {
        ok,
        errors: errors.load(Ordering::Relaxed),
        conn_per_s: ok as f64 / elapsed.as_secs_f64(),
    }
}

/// Result of the latency workload (milliseconds).
#[derive(Debug)]
pub struct Latency {
    pub samples: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// `count` requests, each on a new connection, paced at `per_second`.
pub fn latency(target: Target, per_second: u32, count: u32) -> Latency {
    let interval = Duration::from_secs(1) / per_second.max(1);
    let mut times = Vec::with_capacity(count as usize);
    let mut errors = 0;
    let start = Instant::now();
    for i in 0..count {
        let due = start + interval * i;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        match one_request(target) {
            Ok(t) => times.push(t),
            Err(_) => errors += 1,
        }
    }
    times.sort();
    Latency {
        samples: times.len() as u64,
        errors,
        p50_ms: percentile_ms(&times, 50.0),
        p99_ms: percentile_ms(&times, 99.0),
    }
}

/// `count` connections opened one after another, each proven end to end by a
/// one-byte answer, then held open and idle: `ready` is called with how many
/// are open (the caller reads the relay's RSS then), and they are closed
/// after `hold`. Stops opening at the first failure (a relay at its
/// connection limit, e.g. redsocks backing off `accept`) and holds what it
/// has.
pub fn idle(target: Target, count: u32, hold: Duration, ready: impl FnOnce(u64)) -> (u64, u64) {
    let mut open = Vec::with_capacity(count as usize);
    let mut errors = 0;
    for _ in 0..count {
        let conn = dial(target).and_then(|mut s| {
            s.write_all(&encode_request(Mode::Reply, 1))?;
            s.read_exact(&mut [0u8; 1])?;
            Ok(s)
        });
        match conn {
            Ok(s) => open.push(s),
            Err(_) => {
                errors += 1;
                break;
            }
        }
    }
    let opened = open.len() as u64;
    ready(opened);
    thread::sleep(hold);
    drop(open);
    (opened, errors)
}

/// Nearest-rank percentile of sorted durations, in milliseconds (0 if empty).
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips() {
        for mode in [Mode::Upload, Mode::Download, Mode::Reply] {
            let req = encode_request(mode, 1 << 33);
            assert_eq!(decode_request(&req), Some((mode, 1 << 33)));
        }
        let mut bad = encode_request(Mode::Reply, 1);
        bad[0] = b'G';
        assert_eq!(decode_request(&bad), None);
    }

    #[test]
    fn percentiles() {
        let v: Vec<_> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&v, 50.0), 50.0);
        assert_eq!(percentile_ms(&v, 99.0), 99.0);
        assert_eq!(percentile_ms(&[], 50.0), 0.0);
    }

    /// All three workloads against a server on loopback, direct and through
    /// a minimal CONNECT proxy.
    #[test]
    fn workloads_on_loopback() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let server_addr = server.local_addr().unwrap();
        thread::spawn(move || {
            for s in server.incoming().flatten() {
                thread::spawn(move || serve_connection(s));
            }
        });
        let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy_addr = proxy.local_addr().unwrap();
        thread::spawn(move || {
            for s in proxy.incoming().flatten() {
                thread::spawn(move || tiny_connect_proxy(s));
            }
        });
        for proxy in [None, Some(proxy_addr)] {
            let target = Target {
                server: server_addr,
                proxy,
            };
            let b = bulk(target, 3 << 20).unwrap();
            assert_eq!(b.bytes, 3 << 20);
            assert!(b.up_gbps > 0.0 && b.down_gbps > 0.0);
            let r = rate(target, 4, Duration::from_millis(200));
            assert!(r.ok > 0, "{r:?}");
            assert_eq!(r.errors, 0);
            let l = latency(target, 200, 20);
            assert_eq!((l.samples, l.errors), (20, 0));
            assert!(l.p50_ms > 0.0 && l.p99_ms >= l.p50_ms);
            let mut seen = 0;
            let (opened, errors) = idle(target, 10, Duration::ZERO, |n| seen = n);
            assert_eq!((opened, errors, seen), (10, 0, 10));
        }
    }

    fn tiny_connect_proxy(mut client: TcpStream) -> io::Result<()> {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            client.read_exact(&mut byte)?;
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        let authority = head.split(' ').nth(1).unwrap_or_default();
        let upstream = TcpStream::connect(authority)?;
        client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
        let (mut c2, mut u2) = (client.try_clone()?, upstream.try_clone()?);
        let t = thread::spawn(move || {
            let r = io::copy(&mut c2, &mut u2);
            let _ = u2.shutdown(Shutdown::Write);
            r
        });
        let mut u = upstream;
        io::copy(&mut u, &mut client)?;
        let _ = t.join();
        Ok(())
    }
}
