//! TLS: the SNI `host_name` of a ClientHello, reassembled from however many
//! handshake records carry it (RFC 8446 §5.1 lets a client fragment it).
//!
//! Only a complete ClientHello gives an answer: a prefix could still turn
//! out malformed, and a name read from one would be a guess.
//!
//! SSLv2-compatible hellos (first byte with the high bit set) are `NotTls`:
//! they cannot carry extensions, so there is no SNI to find, and no client
//! of this century sends one.
use std::borrow::Cow;

/// Why no SNI could be read (yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A valid beginning of a ClientHello; more bytes are needed.
    #[error("ClientHello incomplete")]
    Incomplete,
    /// The first record header or handshake type are not a ClientHello's.
    #[error("not a TLS ClientHello")]
    NotTls,
    /// Began as a ClientHello, but its framing or fields don't add up.
    #[error("malformed ClientHello")]
    Malformed,
}

pub const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const RECORD_HEADER: usize = 5;
const HANDSHAKE_HEADER: usize = 4;
/// RFC 8446 §5.1: a plaintext record carries at most 2^14 bytes.
const MAX_RECORD_PAYLOAD: usize = 1 << 14;
/// The largest body a ClientHello's own length fields can describe; a
/// longer handshake length is rejected as soon as it is read.
const MAX_CLIENT_HELLO: usize = 2 + 32 + (1 + 32) + (2 + 0xfffe) + (1 + 0xff) + (2 + 0xffff);
const EXT_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST_NAME: u8 = 0;

/// The raw SNI `host_name` of the ClientHello at the start of `buf`, or
/// `None` if it has no SNI extension. Bytes after the ClientHello are
/// ignored.
pub fn parse_client_hello(buf: &[u8]) -> Result<Option<String>, TlsError> {
    let message = handshake_message(buf)?;
    parse_body(&message[HANDSHAKE_HEADER..])
}

/// Whether `buf` starts with a record header a ClientHello could be in: the
/// guess when the whole hello never arrives.
pub fn is_client_hello_start(buf: &[u8]) -> bool {
    buf.len() >= RECORD_HEADER && record_header(buf, true).is_ok()
}

/// Checks the record header at the start of `rest`, as far as its bytes
/// have arrived, and returns its payload length.
fn record_header(rest: &[u8], first: bool) -> Result<usize, TlsError> {
    // After the first record, the client has shown it speaks TLS; a bad
    // header then is a broken hello rather than another protocol.
    let bad = if first {
        TlsError::NotTls
    } else {
        TlsError::Malformed
    };
    match rest.first() {
        None => return Err(TlsError::Incomplete),
        Some(&content_type) if content_type != CONTENT_HANDSHAKE => return Err(bad),
        Some(_) => {}
    }
    // Every TLS version's record header says 3.x (RFC 8446 §5.1).
    if rest.get(1).is_some_and(|&major| major != 3) {
        return Err(bad);
    }
    let Some(&[hi, lo]) = rest.get(3..RECORD_HEADER) else {
        return Err(TlsError::Incomplete);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    // Zero-length handshake fragments are forbidden (RFC 8446 §5.1).
    if len == 0 || len > MAX_RECORD_PAYLOAD {
        return Err(bad);
    }
    if first
        && rest
            .get(RECORD_HEADER)
            .is_some_and(|&t| t != HANDSHAKE_CLIENT_HELLO)
    {
        return Err(TlsError::NotTls);
    }
    Ok(len)
}

/// The handshake fragments carried by the records at the start of `buf`,
/// in order; the last may be cut short where `buf` ends.
struct Fragments<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fragments<'a> {
    /// `Ok(None)` once `buf` ends exactly at a record boundary.
    fn next(&mut self) -> Result<Option<(&'a [u8], bool)>, TlsError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        if rest.is_empty() && self.pos > 0 {
            return Ok(None);
        }
        let len = record_header(rest, self.pos == 0)?;
        let payload = &rest[RECORD_HEADER..];
        let complete = payload.len() >= len;
        let fragment = &payload[..len.min(payload.len())];
        self.pos += RECORD_HEADER + len;
        Ok(Some((fragment, complete)))
    }
}

/// The whole ClientHello handshake message (header included), borrowed
/// when one record holds it.
fn handshake_message(buf: &[u8]) -> Result<Cow<'_, [u8]>, TlsError> {
    // First pass: headers only, so that waiting for the rest of a large
    // hello costs one hop per record rather than a copy of all so far.
    let mut header = [0u8; HANDSHAKE_HEADER];
    let mut have = 0;
    let mut need = None;
    let mut fragments = Fragments { buf, pos: 0 };
    while let Some((fragment, complete)) = fragments.next()? {
        // The handshake header itself may straddle records.
        for (slot, &byte) in header.iter_mut().skip(have).zip(fragment) {
            *slot = byte;
        }
        have += fragment.len();
        if need.is_none() && have >= HANDSHAKE_HEADER {
            let len =
                usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]);
            if len > MAX_CLIENT_HELLO {
                return Err(TlsError::Malformed);
            }
            need = Some(HANDSHAKE_HEADER + len);
        }
        if let Some(need) = need
            && have >= need
        {
            return assemble(buf, need);
        }
        if !complete {
            break;
        }
    }
    Err(TlsError::Incomplete)
}

/// Second pass, once all `need` bytes are known to be in `buf`.
fn assemble(buf: &[u8], need: usize) -> Result<Cow<'_, [u8]>, TlsError> {
    let mut fragments = Fragments { buf, pos: 0 };
    // Bounded: `need` bytes were counted inside `buf`.
    let mut message = Vec::new();
    while let Some((fragment, _)) = fragments.next()? {
        if message.is_empty() && fragment.len() >= need {
            return Ok(Cow::Borrowed(&fragment[..need]));
        }
        let take = (need - message.len()).min(fragment.len());
        message.extend_from_slice(&fragment[..take]);
        if message.len() == need {
            return Ok(Cow::Owned(message));
        }
    }
    Err(TlsError::Incomplete)
}

/// A cursor over a complete message: running out of bytes is `Malformed`.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], TlsError> {
        if n > self.0.len() {
            return Err(TlsError::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, TlsError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, TlsError> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    /// A vector with a one-byte length prefix.
    fn vec8(&mut self) -> Result<&'a [u8], TlsError> {
        let len = self.u8()?;
        self.take(usize::from(len))
    }

    /// A vector with a two-byte length prefix.
    fn vec16(&mut self) -> Result<&'a [u8], TlsError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }
}

/// RFC 8446 §4.1.2 (and RFC 5246 §7.4.1.2 before it).
fn parse_body(body: &[u8]) -> Result<Option<String>, TlsError> {
    let mut r = Reader(body);
    // legacy_version is not checked: the SNI means the same whatever the
    // client offers, and the server is the one to refuse old versions.
    r.take(2)?;
    r.take(32)?; // random
    if r.vec8()?.len() > 32 {
        return Err(TlsError::Malformed); // legacy_session_id
    }
    let suites = r.vec16()?;
    if suites.is_empty() || !suites.len().is_multiple_of(2) {
        return Err(TlsError::Malformed);
    }
    if r.vec8()?.is_empty() {
        return Err(TlsError::Malformed); // compression methods
    }
    // Hellos from before extensions (SSL 3.0) end here.
    if r.is_empty() {
        return Ok(None);
    }
    let mut extensions = Reader(r.vec16()?);
    if !r.is_empty() {
        return Err(TlsError::Malformed);
    }
    let mut sni = None;
    let mut seen_sni = false;
    while !extensions.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        if kind == EXT_SERVER_NAME {
            // Two SNI extensions could make two readers see two names.
            if seen_sni {
                return Err(TlsError::Malformed);
            }
            seen_sni = true;
            sni = host_name(data)?;
        }
    }
    Ok(sni)
}

/// RFC 6066 §3: the first `host_name` entry of a `ServerNameList`.
fn host_name(data: &[u8]) -> Result<Option<String>, TlsError> {
    let mut r = Reader(data);
    let mut list = Reader(r.vec16()?);
    if !r.is_empty() || list.is_empty() {
        return Err(TlsError::Malformed);
    }
    let mut host = None;
    while !list.is_empty() {
        let name_type = list.u8()?;
        // Every name type defined or imagined is an opaque<1..2^16-1>.
        let name = list.vec16()?;
        if name_type == NAME_TYPE_HOST_NAME {
            if host.is_some() || name.is_empty() {
                return Err(TlsError::Malformed);
            }
            let name = std::str::from_utf8(name).map_err(|_| TlsError::Malformed)?;
            host = Some(name.to_owned());
        }
    }
    Ok(host)
}

#[cfg(test)]
pub(super) mod tests;
