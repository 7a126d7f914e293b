//! The `CONNECT` exchange with the upstream proxy, written by hand: one
//! request write, one bounded read of the answer's head. Without hyper's
//! client the tunnel is the proxy socket itself, so the relay can splice a
//! plain TCP tunnel, and no task or upgrade buffer lives per connection.
use std::io;

use bytes::{Bytes, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A header line to add to the request.
pub type Header = (http::HeaderName, http::HeaderValue);

/// The longest answer head we read before giving up on the proxy.
pub const MAX_HEAD: usize = 8 * 1024;
/// Enough for any proxy's usual `200 Connection established` in one read.
const FIRST_READ: usize = 1024;

/// The head of the proxy's answer to `CONNECT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Bytes the head took, including the blank line; what follows is
    /// tunnel data (from an origin that speaks first).
    pub head_len: usize,
}

/// Why the proxy's answer could not be read.
#[derive(Debug, Error)]
pub enum ConnectError {
    #[error("malformed answer to CONNECT: {0}")]
    Malformed(httparse::Error),
    #[error("answer to CONNECT has a head longer than {MAX_HEAD} bytes")]
    TooLong,
    #[error("proxy closed the connection before answering CONNECT")]
    Closed,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Parses the answer head in `buf`: `Ok(None)` while it is incomplete.
/// Never reads past `buf`; `head_len <= buf.len()`.
pub fn parse_response(buf: &[u8]) -> Result<Option<Response>, ConnectError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buf) {
        Ok(httparse::Status::Complete(head_len)) if head_len <= MAX_HEAD => Ok(Some(Response {
            // httparse sets the code on every complete parse.
            status: response.code.unwrap_or_default(),
            head_len,
        })),
        Ok(httparse::Status::Complete(_)) => Err(ConnectError::TooLong),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Err(ConnectError::TooLong),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(ConnectError::Malformed(e)),
    }
}

/// The `CONNECT` request head, with `Proxy-Authorization` when given and
/// the `identity` headers (`caller`) after it.
pub fn request(authority: &str, authorization: Option<&str>, identity: &[Header]) -> Vec<u8> {
    let mut head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n").into_bytes();
    if let Some(value) = authorization {
        head.extend_from_slice(b"Proxy-Authorization: ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    for (name, value) in identity {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Sends `CONNECT` and reads the answer's head. Returns the answer and any
/// tunnel bytes that arrived with it (they belong to the client).
pub async fn exchange<S>(
    stream: &mut S,
    authority: &str,
    authorization: Option<&str>,
    identity: &[Header],
) -> Result<(Response, Bytes), ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    stream
        .write_all(&request(authority, authorization, identity))
        .await?;
    stream.flush().await?;
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(ConnectError::Closed);
        }
        if let Some(response) = parse_response(&buf)? {
            // A copy, not a view: a view would keep the whole read buffer
            // alive for the connection's life (1 KiB per idle tunnel).
            let early = Bytes::copy_from_slice(&buf[response.head_len..]);
            return Ok((response, early));
        }
        // `parse_response` refuses heads over MAX_HEAD, so this stays bounded.
        buf.reserve(FIRST_READ);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_answers() {
        for (text, status) in [
            ("HTTP/1.1 200 Connection established\r\n\r\n", 200),
            ("HTTP/1.0 200 OK\r\nProxy-agent: tinyproxy\r\n\r\n", 200),
            (
                "HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 3\r\n\r\n",
                407,
            ),
        ] {
            let r = parse_response(text.as_bytes()).unwrap().unwrap();
            assert_eq!(
                r,
                Response {
                    status,
                    head_len: text.len()
                }
            );
        }
    }

    #[test]
    fn every_prefix_is_incomplete_and_tunnel_bytes_are_not_head() {
        let text = b"HTTP/1.1 200 Connection established\r\nVia: squid\r\n\r\nSSH-2.0-banner";
        let head_len = text.len() - b"SSH-2.0-banner".len();
        for n in 0..head_len {
            assert!(parse_response(&text[..n]).unwrap().is_none(), "prefix {n}");
        }
        let r = parse_response(text).unwrap().unwrap();
        assert_eq!(r.head_len, head_len);
    }

    #[test]
    fn refuses_garbage_and_endless_heads() {
        assert!(matches!(
            parse_response(b"SSH-2.0-OpenSSH\r\n\r\n"),
            Err(ConnectError::Malformed(_))
        ));
        let mut endless = b"HTTP/1.1 200 OK\r\n".to_vec();
        while endless.len() < MAX_HEAD {
            endless.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert!(matches!(
            parse_response(&endless),
            Err(ConnectError::TooLong | ConnectError::Malformed(_))
        ));
    }

    #[test]
    fn request_carries_authority_and_credentials() {
        assert_eq!(
            request("[fd00::1]:443", Some("Basic dTpw"), &[]),
            b"CONNECT [fd00::1]:443 HTTP/1.1\r\nHost: [fd00::1]:443\r\n\
              Proxy-Authorization: Basic dTpw\r\n\r\n"
        );
    }

    #[test]
    fn request_carries_identity_headers_after_credentials() {
        let identity = [
            (
                crate::caller::X_FORWARDED_FOR,
                http::HeaderValue::from_static("fd00::5"),
            ),
            (
                http::header::FORWARDED,
                http::HeaderValue::from_static("for=\"[fd00::5]\""),
            ),
        ];
        assert_eq!(
            String::from_utf8(request("a.example:443", Some("Basic dTpw"), &identity)).unwrap(),
            "CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\
             Proxy-Authorization: Basic dTpw\r\nx-forwarded-for: fd00::5\r\n\
             forwarded: for=\"[fd00::5]\"\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn exchange_returns_early_tunnel_bytes() {
        let (mut ours, mut proxy) = tokio::io::duplex(4096);
        let peer = tokio::spawn(async move {
            let mut head = vec![0u8; 64];
            let n = proxy.read(&mut head).await.unwrap();
            // The answer and the origin's banner in one write, answer split.
            proxy.write_all(b"HTTP/1.1 200 OK\r").await.unwrap();
            proxy.write_all(b"\n\r\nbanner").await.unwrap();
            String::from_utf8(head[..n].to_vec()).unwrap()
        });
        let (response, early) = exchange(&mut ours, "10.0.0.1:22", None, &[]).await.unwrap();
        assert_eq!(response.status, 200);
        // Either the banner came with the head or it is still in the stream.
        let mut rest = early.to_vec();
        while rest.len() < 6 {
            let mut b = [0u8; 16];
            let n = ours.read(&mut b).await.unwrap();
            rest.extend_from_slice(&b[..n]);
        }
        assert_eq!(rest, b"banner");
        assert!(
            peer.await
                .unwrap()
                .starts_with("CONNECT 10.0.0.1:22 HTTP/1.1\r\n")
        );
    }

    #[tokio::test]
    async fn proxy_closing_early_is_an_error() {
        let (mut ours, proxy) = tokio::io::duplex(4096);
        drop(proxy);
        let err = exchange(&mut ours, "10.0.0.1:22", None, &[])
            .await
            .unwrap_err();
        assert!(
            matches!(err, ConnectError::Io(_) | ConnectError::Closed),
            "{err}"
        );
    }
}
