//! The load generator: the client side of the [`protocol`](crate::protocol),
//! measuring bulk throughput, connection rate, latency and idle
//! connections. It reaches the server directly or through an HTTP proxy
//! with `CONNECT`, as an application with `HTTPS_PROXY` does. Each workload
//! returns what it measured as the record `peers load` writes.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use peers::records::{Idle, Latency, Rate, Throughput};

use crate::protocol::{CHUNK, Mode, SMALL_REPLY, discard, encode_request, send_zeros};

const IO_TIMEOUT: Duration = Duration::from_secs(30);

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

/// The bulk workload: one stream, `bytes` up, then `bytes` down.
pub fn bulk(target: Target, bytes: u64) -> Result<Throughput> {
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
    Ok(Throughput {
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
        concurrency,
        ok,
        errors: errors.load(Ordering::Relaxed),
        conn_per_s: ok as f64 / elapsed.as_secs_f64(),
    }
}

/// `count` requests, each on a new connection, paced at `per_second`;
/// connect-to-first-byte in milliseconds.
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
        per_second,
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
pub fn idle(target: Target, count: u32, hold: Duration, ready: impl FnOnce(u64)) -> Idle {
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
    Idle {
        requested: count,
        opened,
        errors,
    }
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
    use crate::server::serve_connection;
    use std::net::TcpListener;

    #[test]
    fn percentiles() {
        let v: Vec<_> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&v, 50.0), 50.0);
        assert_eq!(percentile_ms(&v, 99.0), 99.0);
        assert_eq!(percentile_ms(&[], 50.0), 0.0);
    }

    /// All the workloads against a server on loopback, direct and through
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
            assert_eq!((r.errors, r.concurrency), (0, 4));
            let l = latency(target, 200, 20);
            assert_eq!((l.samples, l.errors), (20, 0));
            assert!(l.p50_ms > 0.0 && l.p99_ms >= l.p50_ms);
            let mut seen = 0;
            let i = idle(target, 10, Duration::ZERO, |n| seen = n);
            assert_eq!((i.requested, i.opened, i.errors, seen), (10, 10, 0, 10));
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
