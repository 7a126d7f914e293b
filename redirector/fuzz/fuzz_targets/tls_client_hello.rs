//! The ClientHello/SNI peek: `classify` on bytes that start like a TLS
//! handshake record, so every input reaches the TLS parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redirector::classify::Protocol;
use redirector_fuzz::classify_checked;

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    let Some(first) = buf.first_mut() else { return };
    // Content type "handshake": what selects the TLS parser.
    *first = 22;
    if let Ok(class) = classify_checked(&buf) {
        assert_ne!(class.protocol, Protocol::Http, "{class:?}");
    }
});
