//! HTTP/1.x: the host a plain-text request is for, from its request target
//! or its `Host` header.
//!
//! The request line is checked byte by byte as it arrives, so anything else
//! (an SSH banner, a binary protocol) is refused within its first bytes.
//! The host is only given once the whole header block is in: until then a
//! later line could still make the head malformed.
//!
//! [`recipient`] tells, from the request line alone, whether the client
//! writes to an origin server or to a proxy (`CONNECT`, absolute form).
//!
//! HTTP/2 with prior knowledge (`PRI * HTTP/2.0`) is `NotHttp`: its
//! authority is HPACK-encoded, and a proxy expecting HTTP/1 would refuse it.

/// Why no host could be read (yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// A valid beginning of a request head; more bytes are needed.
    #[error("HTTP request head incomplete")]
    Incomplete,
    /// Not an HTTP/1.0 or HTTP/1.1 request line.
    #[error("not an HTTP/1.x request")]
    NotHttp,
    /// A valid request line followed by a header block that isn't.
    #[error("malformed HTTP request head")]
    Malformed,
}

/// Longer than any registered method (`UPDATEREDIRECTREF` is 17), short
/// enough that a run of capitals is soon found not to be one.
const MAX_METHOD: usize = 20;

/// The raw host (with its port, if any) the request head at the start of
/// `buf` is for, or `None` if it names none.
///
/// A target in absolute form (`GET http://host/`) or a `CONNECT` authority
/// wins over the `Host` header, as RFC 9112 §3.2.2 tells servers; otherwise
/// the first `Host` header counts.
pub fn parse_request_head(buf: &[u8]) -> Result<Option<String>, HttpError> {
    let line = request_line(buf)?;
    let mut host_header = None;
    let mut rest = &buf[line.len..];
    loop {
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return Err(HttpError::Incomplete);
        };
        let field = &rest[..end];
        rest = &rest[end + 1..];
        let field = field.strip_suffix(b"\r").unwrap_or(field);
        if field.is_empty() {
            break;
        }
        let (name, value) = header_field(field)?;
        if host_header.is_none() && name.eq_ignore_ascii_case(b"host") {
            host_header = Some(value);
        }
    }
    let host = target_authority(line.method, line.target).or(host_header);
    // Not UTF-8 is not a DNS name either.
    Ok(host
        .and_then(|h| std::str::from_utf8(h).ok())
        .map(str::to_owned))
}

/// Whom a request line is written for (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipient {
    /// origin-form (`GET /path`) or asterisk-form (`OPTIONS *`): an origin
    /// server.
    Origin,
    /// authority-form (`CONNECT host:443`) or absolute-form
    /// (`GET http://host/`): a proxy. Clients send these only to a proxy.
    Proxy,
}

/// Whom the request line at the start of `buf` is written for, decided as
/// soon as the line is complete (the header block does not matter).
pub fn recipient(buf: &[u8]) -> Result<Recipient, HttpError> {
    let line = request_line(buf)?;
    if line.method == b"CONNECT" || after_scheme(line.target).is_some() {
        Ok(Recipient::Proxy)
    } else {
        Ok(Recipient::Origin)
    }
}

/// Whether `buf` starts with a complete, valid request line: the guess when
/// the rest of the head never arrives.
pub fn has_request_line(buf: &[u8]) -> bool {
    request_line(buf).is_ok()
}

struct RequestLine<'a> {
    method: &'a [u8],
    target: &'a [u8],
    /// Bytes up to and including the line's `\n`.
    len: usize,
}

/// `method SP target SP HTTP/1.x CRLF` (a bare LF accepted), judged on as
/// many of its bytes as have arrived.
fn request_line(buf: &[u8]) -> Result<RequestLine<'_>, HttpError> {
    let mut i = 0;
    loop {
        match buf.get(i) {
            None => return Err(HttpError::Incomplete),
            Some(b'A'..=b'Z') if i < MAX_METHOD => i += 1,
            Some(b' ') if i > 0 => break,
            Some(_) => return Err(HttpError::NotHttp),
        }
    }
    let method = &buf[..i];
    let start = i + 1;
    let mut j = start;
    loop {
        match buf.get(j) {
            None => return Err(HttpError::Incomplete),
            Some(b' ') if j > start => break,
            Some(&b) if is_target_byte(b) => j += 1,
            Some(_) => return Err(HttpError::NotHttp),
        }
    }
    let target = &buf[start..j];
    let rest = &buf[j + 1..];
    const VERSION: &[u8] = b"HTTP/1.";
    let seen = rest.len().min(VERSION.len());
    if rest[..seen] != VERSION[..seen] {
        return Err(HttpError::NotHttp);
    }
    let end = match rest.get(VERSION.len()..) {
        None | Some([]) => return Err(HttpError::Incomplete),
        Some([b'0' | b'1', b'\n', ..]) => VERSION.len() + 2,
        Some([b'0' | b'1', b'\r', b'\n', ..]) => VERSION.len() + 3,
        Some([b'0' | b'1'] | [b'0' | b'1', b'\r']) => return Err(HttpError::Incomplete),
        Some(_) => return Err(HttpError::NotHttp),
    };
    Ok(RequestLine {
        method,
        target,
        len: j + 1 + end,
    })
}

/// Anything but controls and space. Bytes above 0x7f are not valid in a
/// target, but some clients send raw UTF-8 paths and servers take them.
fn is_target_byte(b: u8) -> bool {
    b > b' ' && b != 0x7f
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `name ":" OWS value OWS`; the value trimmed. A space before the colon
/// or a folded line is refused, as RFC 9112 §5 tells servers to.
fn header_field(field: &[u8]) -> Result<(&[u8], &[u8]), HttpError> {
    let colon = field
        .iter()
        .position(|&b| b == b':')
        .ok_or(HttpError::Malformed)?;
    let (name, value) = (&field[..colon], &field[colon + 1..]);
    if name.is_empty() || !name.iter().all(|&b| is_token_byte(b)) {
        return Err(HttpError::Malformed);
    }
    // A stray CR or NUL is where request smuggling starts.
    if value.iter().any(|&b| b == b'\r' || b == 0) {
        return Err(HttpError::Malformed);
    }
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    Ok((name, &value[start..end]))
}

/// The authority a request target names itself: all of a `CONNECT`
/// target, or the authority of an absolute-form `scheme://authority/...`.
fn target_authority<'a>(method: &[u8], target: &'a [u8]) -> Option<&'a [u8]> {
    if method == b"CONNECT" {
        return (!target.starts_with(b"/")).then_some(target);
    }
    let rest = after_scheme(target)?;
    let end = rest
        .iter()
        .position(|b| b"/?#".contains(b))
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    // Userinfo (`user:pass@`) is not part of the host.
    let host = match authority.iter().rposition(|&b| b == b'@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    };
    (!host.is_empty()).then_some(host)
}

/// What follows `scheme://` in an absolute-form target; `None` for any
/// other form (a path such as `/a://b` has no valid scheme).
fn after_scheme(target: &[u8]) -> Option<&[u8]> {
    let sep = target.windows(3).position(|w| w == b"://")?;
    let scheme = &target[..sep];
    let valid_scheme = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    valid_scheme.then_some(&target[sep + 3..])
}

#[cfg(test)]
mod tests;
