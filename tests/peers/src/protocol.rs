//! The benchmark's own traffic: a tiny binary request/response protocol (not
//! HTTP, so every proxied path tunnels it with CONNECT), spoken by the
//! benchmark server and the load generator.
//!
//! A request is 16 bytes: [`MAGIC`], one mode byte, three zero bytes and a
//! big-endian `u64` length `n`.
//! - `U` upload: the client sends `n` bytes, the server answers with the
//!   8-byte count it read;
//! - `D` download: the server sends `n` bytes;
//! - `R` request/response: the server answers `n` bytes at once.

use std::io::{self, Read, Write};
use std::net::TcpStream;

/// First four bytes of every request: a zero byte, so that no classifier
/// takes it for TLS or an HTTP request line.
pub const MAGIC: [u8; 4] = *b"\0BN1";
pub const REQUEST_LEN: usize = 16;
/// Size of the small answer of the rate and latency workloads.
pub const SMALL_REPLY: u64 = 64;
/// Bytes one read or write of a bulk transfer moves at most.
pub const CHUNK: usize = 256 * 1024;

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

/// Reads and drops exactly `n` bytes, `buf` at a time.
pub fn discard(stream: &mut TcpStream, n: u64, buf: &mut [u8]) -> io::Result<u64> {
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

/// Writes `n` bytes of `buf`'s zeros, `buf` at a time.
pub fn send_zeros(stream: &mut TcpStream, n: u64, buf: &[u8]) -> io::Result<()> {
    let mut left = n;
    while left > 0 {
        let len = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        stream.write_all(&buf[..len])?;
        left -= len as u64;
    }
    Ok(())
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
}
