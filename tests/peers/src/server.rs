//! `peers serve`: the benchmark server, the far end of every path. It
//! answers the [`protocol`](crate::protocol)'s requests, one thread per
//! connection.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::protocol::{CHUNK, Mode, REQUEST_LEN, decode_request, discard, send_zeros};

/// Stack of a server thread: its buffers are on the heap.
const SERVER_STACK: usize = 128 * 1024;
/// Small answers come from here; larger requests get a heap buffer.
static SMALL_ZEROS: [u8; 4096] = [0; 4096];

/// Serves the protocol on every address, one thread per connection, until
/// killed.
pub fn serve(listen: &[SocketAddr]) -> Result<()> {
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

/// Answers one connection's requests until the client closes it.
pub fn serve_connection(mut stream: TcpStream) -> io::Result<()> {
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
