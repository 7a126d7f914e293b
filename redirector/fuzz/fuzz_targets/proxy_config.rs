//! The proxy configuration parser (`ProxyConfig::parse`): AKS JSON, proxy
//! URLs, `noProxy`, base64 PEM `trustedCA`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redirector::config::{ProxyConfig, ProxyUrl};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match ProxyConfig::parse("fuzz", text) {
        Ok(config) => config,
        Err(e) => {
            // Error messages are built lazily: make sure they render.
            let _ = e.to_string();
            return;
        }
    };
    for proxy in [&config.http_proxy, &config.https_proxy].into_iter().flatten() {
        // What logs show (credentials dropped) is a URL that names the same
        // proxy, and the authority that is dialled parses back to it too.
        let shown = proxy.to_string();
        let again = ProxyUrl::parse(&shown).unwrap_or_else(|e| panic!("{shown:?}: {e}"));
        assert_eq!(
            (again.tls, &again.host, again.port),
            (proxy.tls, &proxy.host, proxy.port),
            "{shown:?}"
        );
        assert_eq!(again.credentials, None, "{shown:?} shows credentials");
        let authority = proxy.authority();
        let dialled = ProxyUrl::parse(&authority).unwrap_or_else(|e| panic!("{authority:?}: {e}"));
        assert_eq!(
            (&dialled.host, dialled.port),
            (&proxy.host, proxy.port),
            "{authority:?}"
        );
    }
});
