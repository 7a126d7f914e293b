//! The proxy configuration parser (`ProxyConfig::parse`): AKS JSON, proxy
//! URLs, `noProxy`, base64 PEM `trustedCA`. The whole input is also tried as
//! a bare proxy URL (`ProxyUrl::parse`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use redirector::config::{ProxyConfig, ProxyUrl};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check_url(text);

    // The proxy URLs as written, to look for their passwords in messages.
    let written: Vec<String> = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .map(|o| {
            ["httpProxy", "httpsProxy"]
                .iter()
                .filter_map(|k| o.get(*k)?.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let secrets: Vec<&str> = written.iter().filter_map(|v| password(v)).collect();

    let config = match ProxyConfig::parse("fuzz", text) {
        Ok(config) => config,
        Err(e) => {
            let message = e.to_string();
            for secret in &secrets {
                assert!(!message.contains(secret), "{secret:?} in {message:?}");
            }
            return;
        }
    };
    let shown = format!("{config:?}");
    for secret in &secrets {
        assert!(!shown.contains(secret), "{secret:?} in {shown:?}");
    }
    for proxy in [&config.http_proxy, &config.https_proxy]
        .into_iter()
        .flatten()
    {
        check_round_trip(proxy);
    }
});

/// A bare proxy URL: an error message never shows its password, and a
/// parsed one round-trips.
fn check_url(value: &str) {
    match ProxyUrl::parse(value) {
        Ok(proxy) => {
            if let Some(secret) = password(value) {
                let shown = format!("{proxy} {proxy:?}");
                assert!(!shown.contains(secret), "{secret:?} in {shown:?}");
            }
            check_round_trip(&proxy);
        }
        Err(message) => {
            if let Some(secret) = password(value) {
                assert!(!message.contains(secret), "{secret:?} in {message:?}");
            }
        }
    }
}

/// What logs show (credentials dropped) is a URL that names the same proxy,
/// and the authority that is dialled parses back to it too.
fn check_round_trip(proxy: &ProxyUrl) {
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

/// The password in `[scheme://]user:password@rest`, when it is unmistakable:
/// at least 6 letters and digits, with both in it (no English word of a
/// message), that occur nowhere else in the value (so a message quoting the
/// rest of the value cannot contain it by chance).
fn password(value: &str) -> Option<&str> {
    let at = value.rfind('@')?;
    let start = value.find("://").filter(|&s| s < at).map_or(0, |s| s + 3);
    let (_, secret) = value[start..at].split_once(':')?;
    let clear = secret.len() >= 6
        && secret.bytes().all(|b| b.is_ascii_alphanumeric())
        && secret.bytes().any(|b| b.is_ascii_digit())
        && secret.bytes().any(|b| b.is_ascii_alphabetic());
    (clear && value.matches(secret).count() == 1).then_some(secret)
}
