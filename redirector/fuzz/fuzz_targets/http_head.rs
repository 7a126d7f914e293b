//! The HTTP head peek: `classify` on bytes that start with a capital letter
//! (a method's first byte), so every input reaches the HTTP parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redirector::classify::Protocol;
use redirector_fuzz::classify_checked;

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    let Some(first) = buf.first_mut() else { return };
    if !first.is_ascii_uppercase() {
        *first = b'A' + *first % 26;
    }
    if let Ok(class) = classify_checked(&buf) {
        assert_ne!(class.protocol, Protocol::Tls, "{class:?}");
        // The name is read from the head itself (target or Host), so it is
        // there, in some letter case.
        if let Some(host) = &class.hostname {
            let head = buf.to_ascii_lowercase();
            assert!(
                head.windows(host.len()).any(|w| w == host.as_bytes()),
                "{host:?} is not in the head"
            );
        }
    }
});
