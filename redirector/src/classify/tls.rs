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
pub(super) mod tests {
    use super::*;

    pub(in crate::classify) fn hex(s: &str) -> Vec<u8> {
        assert!(s.len().is_multiple_of(2), "odd hex length");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
            .collect()
    }

    /// A deterministic xorshift64 generator: fuzz-like inputs, repeatable.
    pub(in crate::classify) struct XorShift(pub u64);

    impl XorShift {
        pub(in crate::classify) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        pub(in crate::classify) fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        pub(in crate::classify) fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    // ClientHellos captured on loopback (a Python listener dumping what it
    // received) when these tests were written.
    /// `openssl s_client -servername example.com` (OpenSSL 3.0.19, TLS 1.3
    /// by default)
    pub(in crate::classify) const OPENSSL_TLS13: &str = concat!(
        "16030101380100013403037805f3557dd80ed75fcb0e754a491a5e320584e77b85ddf01c219a5ad9",
        "8e877b202b740a0698218fb1c27b31e1dcb2037d62f8c335c866b477837240b76521692e003e1302",
        "13031301c02cc030009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039",
        "c009c0130033009d009c003d003c0035002f00ff010000ad00000010000e00000b6578616d706c65",
        "2e636f6d000b000403000102000a00160014001d0017001e00190018010001010102010301040023",
        "00000016000000170000000d002a0028040305030603080708080809080a080b0804080508060401",
        "05010601030303010302040205020602002b0009080304030303020301002d000201010033002600",
        "24001d0020326334435db3ba1304ff7eeb3a2f17eabe3754f42ff8bdd066dbb68f39ce5a4a",
    );
    /// `curl --resolve www.example.org:PORT:127.0.0.1
    /// https://www.example.org:PORT/` (curl 7.88.1, OpenSSL 3.0.19; padded
    /// to 512 bytes)
    pub(in crate::classify) const CURL: &str = concat!(
        "1603010200010001fc0303690c766c1753560f3b3bf4f34bc69e160e4573b454e90972b4a3627f2a",
        "e0be7120ec5807b6ff45b22712c95bcf9ef21fb8bd40a5e9347c762fb462aa9de6d01f5b003e1302",
        "13031301c02cc030009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039",
        "c009c0130033009d009c003d003c0035002f00ff0100017500000014001200000f7777772e657861",
        "6d706c652e6f7267000b000403000102000a00160014001d0017001e001900180100010101020103",
        "01040010000e000c02683208687474702f312e31001600000017000000310000000d002a00280403",
        "05030603080708080809080a080b080408050806040105010601030303010302040205020602002b",
        "0009080304030303020301002d00020101003300260024001d0020be956d8215ef63319065803b1c",
        "5a5c69dc7765ec2a806a08782915df8c0b3250001500ae0000000000000000000000000000000000",
        "00000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "00000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "00000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "00000000000000000000000000000000000000000000000000000000000000000000000000",
    );
    /// `openssl s_client -tls1_2 -servername api.internal.example`
    pub(in crate::classify) const OPENSSL_TLS12: &str = concat!(
        "16030100d4010000d00303476283080f8e5d57cd964dfede1c0181bfa52d4800c311993cd46a6a48",
        "e971a3000038c02cc030009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac014",
        "0039c009c0130033009d009c003d003c0035002f00ff0100006f0000001900170000146170692e69",
        "6e7465726e616c2e6578616d706c65000b000403000102000a000c000a001d0017001e0019001800",
        "2300000016000000170000000d002a0028040305030603080708080809080a080b08040805080604",
        "0105010601030303010302040205020602",
    );
    /// `openssl s_client -noservername`
    pub(in crate::classify) const OPENSSL_NO_SNI: &str = concat!(
        "16030101240100012003033b850392fc773290ec80e7e258d70949317e1e6e0c6d92dc3f7415305d",
        "ea64ef20398ca10e0c7aaa681a90e0a520b83979b53e4746bb72db1214d1b0df7af89cee003e1302",
        "13031301c02cc030009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039",
        "c009c0130033009d009c003d003c0035002f00ff01000099000b000403000102000a00160014001d",
        "0017001e0019001801000101010201030104002300000016000000170000000d002a002804030503",
        "0603080708080809080a080b080408050806040105010601030303010302040205020602002b0009",
        "080304030303020301002d00020101003300260024001d0020d070081205822b1dd3c559db312af9",
        "dfe56985910f2be0e8b185db8538972e7b",
    );
    /// `openssl s_client -servername frag.example.net -max_send_frag 512
    /// -alpn <20 long protocols>`: a 512-byte and a 351-byte handshake record
    pub(in crate::classify) const OPENSSL_TWO_RECORDS: &str = concat!(
        "16030102000100035b030360831da69760829ace2a4dcac715e06a0c21722fe130f107d4d8f5e8fb",
        "a296da20434872359a98e4ad091735885415bd92465443ca9e93bbd1ede90b6cd3a12c58003e1302",
        "13031301c02cc030009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039",
        "c009c0130033009d009c003d003c0035002f00ff010002d4000000150013000010667261672e6578",
        "616d706c652e6e6574000b000403000102000a00160014001d0017001e0019001801000101010201",
        "030104002300000010021e021c1a70726f746f2d3030302d78787878787878787878787878787878",
        "1a70726f746f2d3030312d787878787878787878787878787878781a70726f746f2d3030322d7878",
        "78787878787878787878787878781a70726f746f2d3030332d787878787878787878787878787878",
        "781a70726f746f2d3030342d787878787878787878787878787878781a70726f746f2d3030352d78",
        "7878787878787878787878787878781a70726f746f2d3030362d7878787878787878787878787878",
        "78781a70726f746f2d3030372d787878787878787878787878787878781a70726f746f2d3030382d",
        "787878787878787878787878787878781a70726f746f2d3030392d78787878787878787878787878",
        "7878781a70726f746f2d3031302d787878787878787878787878787878781a70726f746f2d160301",
        "015f3031312d787878787878787878787878787878781a70726f746f2d3031322d78787878787878",
        "7878787878787878781a70726f746f2d3031332d787878787878787878787878787878781a70726f",
        "746f2d3031342d787878787878787878787878787878781a70726f746f2d3031352d787878787878",
        "787878787878787878781a70726f746f2d3031362d787878787878787878787878787878781a7072",
        "6f746f2d3031372d787878787878787878787878787878781a70726f746f2d3031382d7878787878",
        "78787878787878787878781a70726f746f2d3031392d787878787878787878787878787878780016",
        "000000170000000d002a0028040305030603080708080809080a080b080408050806040105010601",
        "030303010302040205020602002b0009080304030303020301002d00020101003300260024001d00",
        "20c2d76891ba0cdcee73a5d4a1fb78476f1ebaf643a6d61ae7c8d49b666760d40c",
    );

    /// A synthetic ClientHello, built field by field.
    #[derive(Clone)]
    pub(in crate::classify) struct Hello {
        pub session_id: Vec<u8>,
        pub suites: Vec<u16>,
        pub extensions: Vec<(u16, Vec<u8>)>,
    }

    impl Hello {
        pub(in crate::classify) fn new() -> Self {
            Self {
                session_id: vec![0xab; 32],
                suites: vec![0x1301, 0x1302, 0xc02f],
                extensions: Vec::new(),
            }
        }

        pub(in crate::classify) fn ext(mut self, kind: u16, data: Vec<u8>) -> Self {
            self.extensions.push((kind, data));
            self
        }

        pub(in crate::classify) fn sni(self, name: &str) -> Self {
            self.ext(EXT_SERVER_NAME, server_name_list(&[(0, name.as_bytes())]))
        }

        pub(in crate::classify) fn body(&self) -> Vec<u8> {
            let mut b = vec![3, 3];
            b.extend((0..32u8).map(|i| i.wrapping_mul(37)));
            b.push(self.session_id.len() as u8);
            b.extend(&self.session_id);
            b.extend(((self.suites.len() * 2) as u16).to_be_bytes());
            for s in &self.suites {
                b.extend(s.to_be_bytes());
            }
            b.extend([1, 0]);
            let mut exts = Vec::new();
            for (kind, data) in &self.extensions {
                exts.extend(kind.to_be_bytes());
                exts.extend((data.len() as u16).to_be_bytes());
                exts.extend(data);
            }
            b.extend((exts.len() as u16).to_be_bytes());
            b.extend(exts);
            b
        }

        /// The handshake message: type, 24-bit length, body.
        pub(in crate::classify) fn handshake(&self) -> Vec<u8> {
            handshake(&self.body())
        }

        pub(in crate::classify) fn record(&self) -> Vec<u8> {
            records(&self.handshake(), &[])
        }
    }

    pub(in crate::classify) fn handshake(body: &[u8]) -> Vec<u8> {
        let len = body.len() as u32;
        let mut m = vec![HANDSHAKE_CLIENT_HELLO];
        m.extend(&len.to_be_bytes()[1..]);
        m.extend(body);
        m
    }

    pub(in crate::classify) fn server_name_list(entries: &[(u8, &[u8])]) -> Vec<u8> {
        let mut list = Vec::new();
        for (kind, name) in entries {
            list.push(*kind);
            list.extend((name.len() as u16).to_be_bytes());
            list.extend(*name);
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend(list);
        data
    }

    /// Wraps `message` in handshake records, cut at `cuts` (ascending
    /// offsets into `message`) and wherever a record would exceed 2^14.
    pub(in crate::classify) fn records(message: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut bounds = vec![0];
        for &cut in cuts {
            bounds.push(cut);
        }
        bounds.push(message.len());
        let mut out = Vec::new();
        for pair in bounds.windows(2) {
            for chunk in message[pair[0]..pair[1]].chunks(MAX_RECORD_PAYLOAD) {
                out.extend([CONTENT_HANDSHAKE, 3, 1]);
                out.extend((chunk.len() as u16).to_be_bytes());
                out.extend(chunk);
            }
        }
        out
    }

    fn grease_hello() -> Hello {
        let mut hello = Hello::new();
        hello.suites.insert(0, 0x5a5a);
        hello
            .ext(0x0a0a, vec![])
            .ext(0x000a, vec![0, 4, 0x3a, 0x3a, 0, 0x1d])
            .sni("grease.example")
            .ext(0xfafa, vec![0])
    }

    /// Every prefix of `full` is `Incomplete`; `full` itself gives `expected`.
    #[track_caller]
    fn assert_prefixes(full: &[u8], expected: Result<Option<&str>, TlsError>) {
        for n in 0..full.len() {
            assert_eq!(
                parse_client_hello(&full[..n]),
                Err(TlsError::Incomplete),
                "prefix of {n} of {} bytes",
                full.len()
            );
        }
        assert_eq!(
            parse_client_hello(full),
            expected.map(|name| name.map(str::to_owned))
        );
    }

    #[test]
    fn captured_hellos_every_prefix() {
        let table: &[(&str, Option<&str>)] = &[
            (OPENSSL_TLS13, Some("example.com")),
            (CURL, Some("www.example.org")),
            (OPENSSL_TLS12, Some("api.internal.example")),
            (OPENSSL_NO_SNI, None),
            (OPENSSL_TWO_RECORDS, Some("frag.example.net")),
        ];
        for &(captured, name) in table {
            assert_prefixes(&hex(captured), Ok(name));
        }
    }

    #[test]
    fn captured_two_record_hello_is_two_records() {
        let bytes = hex(OPENSSL_TWO_RECORDS);
        assert_eq!(&bytes[..5], &[22, 3, 1, 2, 0]);
        assert_eq!(&bytes[5 + 512..5 + 512 + 5], &[22, 3, 1, 1, 0x5f]);
        assert_eq!(bytes.len(), 5 + 512 + 5 + 351);
    }

    #[test]
    fn synthetic_hellos_every_prefix() {
        let many = (0..40u16)
            .map(|i| (0x1000 + i, vec![i as u8; usize::from(i)]))
            .collect::<Vec<_>>();
        let mut among_many = Hello::new();
        among_many.extensions = many.clone();
        among_many = among_many.sni("middle.example");
        among_many.extensions.extend(many.clone());

        let table: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
            (
                "single record",
                Hello::new().sni("example.com").record(),
                Some("example.com"),
            ),
            (
                "no SNI",
                Hello::new().ext(0x000b, vec![1, 0]).record(),
                None,
            ),
            (
                "no extensions block",
                records(
                    &handshake(&{
                        let mut body = Hello::new().body();
                        body.truncate(body.len() - 2);
                        body
                    }),
                    &[],
                ),
                None,
            ),
            ("empty extensions block", Hello::new().record(), None),
            (
                "SNI among many extensions",
                among_many.record(),
                Some("middle.example"),
            ),
            ("GREASE", grease_hello().record(), Some("grease.example")),
            (
                "SNI last of many",
                {
                    let mut h = Hello::new();
                    h.extensions = many;
                    h.sni("last.example").record()
                },
                Some("last.example"),
            ),
            (
                "other name type first",
                Hello::new()
                    .ext(
                        EXT_SERVER_NAME,
                        server_name_list(&[(7, b"opaque"), (0, b"typed.example")]),
                    )
                    .record(),
                Some("typed.example"),
            ),
            (
                "only another name type",
                Hello::new()
                    .ext(EXT_SERVER_NAME, server_name_list(&[(7, b"opaque")]))
                    .record(),
                None,
            ),
            (
                "empty session id",
                Hello {
                    session_id: vec![],
                    ..Hello::new()
                }
                .sni("a.b")
                .record(),
                Some("a.b"),
            ),
            (
                "raw name, not yet normalized",
                Hello::new().sni("WWW.Example.COM.").record(),
                Some("WWW.Example.COM."),
            ),
        ];
        for (what, bytes, name) in &table {
            for n in 0..bytes.len() {
                assert_eq!(
                    parse_client_hello(&bytes[..n]),
                    Err(TlsError::Incomplete),
                    "{what}: prefix {n}"
                );
            }
            assert_eq!(
                parse_client_hello(bytes),
                Ok(name.map(str::to_owned)),
                "{what}"
            );
        }
    }

    #[test]
    fn split_across_records() {
        let message = Hello::new().sni("split.example").handshake();
        let len = message.len();
        let expected = Ok(Some("split.example"));
        assert_prefixes(&records(&message, &[len / 2]), expected);
        assert_prefixes(&records(&message, &[len / 3, 2 * len / 3]), expected);
        // Cuts inside the handshake header, and one byte per record.
        assert_prefixes(&records(&message, &[1, 2, 3]), expected);
        let every: Vec<usize> = (1..len).collect();
        assert_prefixes(&records(&message, &every), expected);
        for cut in 1..len {
            let bytes = records(&message, &[cut]);
            assert_eq!(
                parse_client_hello(&bytes),
                Ok(Some("split.example".into())),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn split_captured_hello_into_three_records() {
        let bytes = hex(CURL);
        let message = &bytes[5..];
        assert_prefixes(&records(message, &[100, 300]), Ok(Some("www.example.org")));
    }

    #[test]
    fn hello_larger_than_one_record() {
        let hello = Hello::new().sni("big.example").ext(0x0015, vec![0; 40_000]);
        let bytes = hello.record();
        assert!(bytes.len() > 2 * MAX_RECORD_PAYLOAD);
        assert_eq!(parse_client_hello(&bytes), Ok(Some("big.example".into())));
        // Waiting on a large hello reports Incomplete throughout.
        for n in (0..bytes.len()).step_by(97) {
            assert_eq!(parse_client_hello(&bytes[..n]), Err(TlsError::Incomplete));
        }
    }

    #[test]
    fn trailing_bytes_after_the_hello_are_ignored() {
        let mut bytes = Hello::new().sni("early.example").record();
        bytes.extend([23, 3, 3, 0, 3, 1, 2, 3]); // e.g. early data
        assert_eq!(parse_client_hello(&bytes), Ok(Some("early.example".into())));
        // The same within the hello's own last record.
        let mut message = Hello::new().sni("early.example").handshake();
        message.extend([2, 0, 0, 0]);
        assert_eq!(
            parse_client_hello(&records(&message, &[])),
            Ok(Some("early.example".into()))
        );
    }

    #[test]
    fn not_tls_is_decided_early() {
        let table: &[(&str, &[u8])] = &[
            ("application data", &[23, 3, 3, 0, 10]),
            ("alert", &[21]),
            ("record version 2.x", &[22, 2]),
            ("record version 0x16 0x16", &[22, 22]),
            ("zero-length record", &[22, 3, 1, 0, 0]),
            ("record beyond 2^14", &[22, 3, 1, 0x40, 1]),
            ("ServerHello", &[22, 3, 3, 0, 50, 2]),
            (
                "SSLv2-compatible hello",
                &[0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15],
            ),
            ("HTTP", b"GET / HTTP/1.1\r\n"),
        ];
        for (what, bytes) in table {
            assert_eq!(parse_client_hello(bytes), Err(TlsError::NotTls), "{what}");
        }
    }

    #[test]
    fn malformed() {
        let good = Hello::new().sni("x.example");
        let mut odd_suites = good.body();
        odd_suites[2 + 32 + 1 + 32 + 1] = 5; // cipher_suites length low byte
        let mut long_session = Hello::new().sni("x.example");
        long_session.session_id = vec![0; 33];
        let mut bad_ext_len = good.body();
        let ext_len_at = 2 + 32 + 1 + 32 + 2 + 6 + 2;
        bad_ext_len[ext_len_at + 1] += 1;
        let mut trailing = good.body();
        trailing.push(0);
        let mut second_record_alert = records(&good.handshake(), &[10]);
        second_record_alert[5 + 10] = 21;
        let mut oversized = vec![22, 3, 1, 0, 4, 1];
        oversized.extend([0x10, 0, 0]);

        let table: Vec<(&str, Vec<u8>)> = vec![
            ("odd cipher_suites", records(&handshake(&odd_suites), &[])),
            (
                "no cipher_suites",
                records(
                    &handshake(
                        &Hello {
                            suites: vec![],
                            ..good.clone()
                        }
                        .body(),
                    ),
                    &[],
                ),
            ),
            ("session id over 32", long_session.record()),
            ("extensions overrun", records(&handshake(&bad_ext_len), &[])),
            (
                "bytes after extensions",
                records(&handshake(&trailing), &[]),
            ),
            ("alert between fragments", second_record_alert),
            ("handshake length beyond any ClientHello", oversized),
            ("handshake too short", records(&handshake(&[3, 3, 0]), &[])),
            ("two SNI extensions", good.clone().sni("y.example").record()),
            (
                "two host_names",
                Hello::new()
                    .ext(
                        EXT_SERVER_NAME,
                        server_name_list(&[(0, b"a.example"), (0, b"b.example")]),
                    )
                    .record(),
            ),
            (
                "empty host_name",
                Hello::new()
                    .ext(EXT_SERVER_NAME, server_name_list(&[(0, b"")]))
                    .record(),
            ),
            (
                "empty server_name extension",
                Hello::new().ext(EXT_SERVER_NAME, vec![]).record(),
            ),
            (
                "empty server_name list",
                Hello::new().ext(EXT_SERVER_NAME, vec![0, 0]).record(),
            ),
            (
                "list length overruns",
                Hello::new()
                    .ext(EXT_SERVER_NAME, vec![0, 9, 0, 0, 1, b'a'])
                    .record(),
            ),
            (
                "bytes after the list",
                Hello::new()
                    .ext(EXT_SERVER_NAME, {
                        let mut d = server_name_list(&[(0, b"a.example")]);
                        d.push(0);
                        d
                    })
                    .record(),
            ),
            (
                "host_name not UTF-8",
                Hello::new()
                    .ext(EXT_SERVER_NAME, server_name_list(&[(0, b"\xff\xfe")]))
                    .record(),
            ),
        ];
        for (what, bytes) in &table {
            assert_eq!(
                parse_client_hello(bytes),
                Err(TlsError::Malformed),
                "{what}"
            );
        }
    }

    #[test]
    fn huge_declared_lengths() {
        // 16 MiB declared: no ClientHello is that long.
        let bytes = [22, 3, 1, 0x40, 0, 1, 0xff, 0xff, 0xff];
        assert_eq!(parse_client_hello(&bytes), Err(TlsError::Malformed));
        // 64 KiB declared, a few bytes present: wait, reserving nothing.
        let bytes = [22, 3, 1, 0x40, 0, 1, 0x01, 0x00, 0x00, 3, 3];
        assert_eq!(parse_client_hello(&bytes), Err(TlsError::Incomplete));
    }

    #[test]
    fn client_hello_start() {
        assert!(is_client_hello_start(&[22, 3, 1, 2, 0]));
        assert!(is_client_hello_start(&hex(CURL)[..200]));
        assert!(!is_client_hello_start(&[22, 3, 1, 2]));
        assert!(!is_client_hello_start(&[22, 3, 1, 0, 0]));
        assert!(!is_client_hello_start(&[22, 3, 1, 2, 0, 2]));
        assert!(!is_client_hello_start(b"GET / HTTP/1.1"));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..10_000 {
            let len = rng.below(600);
            let mut bytes = rng.bytes(len);
            // Mostly plausible record headers, so the fuzzing gets past them.
            if rng.below(4) != 0 && bytes.len() >= 6 {
                bytes[..3].copy_from_slice(&[22, 3, 1]);
                bytes[5] = 1;
                if rng.below(2) == 0 {
                    let payload = (bytes.len() - 5) as u16;
                    bytes[3..5].copy_from_slice(&payload.to_be_bytes());
                }
            }
            let _ = parse_client_hello(&bytes);
        }
    }

    #[test]
    fn mutated_hellos_never_panic_and_decisions_are_final() {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let seeds = [
            hex(CURL),
            hex(OPENSSL_TWO_RECORDS),
            records(&Hello::new().sni("m.example").handshake(), &[7, 40]),
        ];
        for _ in 0..3_000 {
            let mut bytes = seeds[rng.below(seeds.len())].clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(bytes.len());
                bytes[at] = rng.next() as u8;
            }
            let full = parse_client_hello(&bytes);
            // Whatever a prefix decides, the longer input decides too.
            for n in (0..bytes.len()).step_by(1 + rng.below(40)) {
                match parse_client_hello(&bytes[..n]) {
                    Err(TlsError::Incomplete) => {}
                    decided => assert_eq!(decided, full, "prefix {n} of {bytes:02x?}"),
                }
            }
        }
    }
}
