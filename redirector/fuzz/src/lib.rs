//! Checks shared by the fuzz targets. Each panics (a libFuzzer crash) when
//! a parser breaks a promise its documentation makes.
use redirector::classify::{Classification, Incomplete, Protocol, classify};

/// Longest DNS name and label, as `Classification::hostname` promises.
const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

/// Classifies `buf` and checks the verdict: the hostname is normalized, and
/// no prefix of `buf` decided anything else ("once `Ok`, longer buffers
/// starting with the same bytes give the same answer").
pub fn classify_checked(buf: &[u8]) -> Result<Classification, Incomplete> {
    let full = classify(buf);
    if let Ok(class) = &full {
        if let Some(host) = &class.hostname {
            assert_normalized(host);
        }
        if class.protocol == Protocol::Other {
            assert_eq!(class.hostname, None, "Other never carries a hostname");
        }
    }
    // Every prefix would make this quadratic; about 64 evenly spaced ones
    // plus the last 8 (where a decision most often flips) stay cheap.
    let step = (buf.len() / 64).max(1);
    let tail = buf.len().saturating_sub(8);
    let prefixes = (0..buf.len()).step_by(step).chain(tail..buf.len());
    for n in prefixes {
        if let Ok(decided) = classify(&buf[..n]) {
            assert_eq!(
                Ok(&decided),
                full.as_ref(),
                "prefix of {n} bytes decided differently from all {} bytes",
                buf.len()
            );
        }
    }
    full
}

/// Lowercase ASCII, no trailing dot, labels of 1..=63 bytes of
/// `[a-z0-9-_]`, at most 253 bytes, and a last label that is not a number
/// (IP-like names are refused).
pub fn assert_normalized(host: &str) {
    assert!(
        !host.is_empty() && host.len() <= MAX_NAME,
        "hostname length {}: {host:?}",
        host.len()
    );
    for label in host.split('.') {
        assert!(
            (1..=MAX_LABEL).contains(&label.len()),
            "label {label:?} in {host:?}"
        );
        assert!(
            label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'),
            "label {label:?} in {host:?}"
        );
    }
    let last = host.rsplit('.').next().unwrap_or(host);
    assert!(
        !last.bytes().all(|b| b.is_ascii_digit()),
        "numeric last label: {host:?}"
    );
    assert!(
        host.parse::<std::net::IpAddr>().is_err(),
        "IP literal as hostname: {host:?}"
    );
}
