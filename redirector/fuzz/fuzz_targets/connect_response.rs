//! The upstream proxy's answer to CONNECT (`dial::connect::parse_response`),
//! which `exchange` calls again after every read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redirector::dial::connect::{MAX_HEAD, parse_response};

fuzz_target!(|buf: &[u8]| {
    let full = parse_response(buf);
    let step = (buf.len() / 64).max(1);
    let prefixes = (0..buf.len())
        .step_by(step)
        .chain(buf.len().saturating_sub(8)..buf.len());
    match &full {
        Ok(Some(response)) => {
            let n = response.head_len;
            assert!(n > 0 && n <= buf.len() && n <= MAX_HEAD, "{response:?}");
            assert!(response.status < 1000, "{response:?}");
            assert!(
                buf[..n].ends_with(b"\n"),
                "head does not end a line: {response:?}"
            );
            // The head alone decides; tunnel bytes after it change nothing.
            assert_eq!(
                parse_response(&buf[..n]).ok().flatten().as_ref(),
                Some(response)
            );
            // A head split across reads is only ever "need more bytes" until
            // its last byte arrives.
            for k in prefixes.filter(|&k| k < n) {
                let part = parse_response(&buf[..k]);
                assert!(
                    matches!(part, Ok(None)),
                    "prefix of {k} bytes of a {n}-byte head: {part:?}"
                );
            }
        }
        Ok(None) => {
            assert!(buf.len() < MAX_HEAD, "incomplete after {} bytes", buf.len());
            for k in prefixes {
                let part = parse_response(&buf[..k]);
                assert!(matches!(part, Ok(None)), "prefix of {k} bytes: {part:?}");
            }
        }
        // A refusal is final: no prefix had accepted a head.
        Err(_) => {
            for k in prefixes {
                let part = parse_response(&buf[..k]);
                assert!(
                    !matches!(part, Ok(Some(_))),
                    "prefix of {k} bytes: {part:?}"
                );
            }
        }
    }
});
