//! Inputs that made a fuzz target (redirector/fuzz) fail, kept as plain
//! tests so that `cargo test` catches a regression without a fuzzer.

use redirector::config::{ProxyConfig, ProxyUrl};

/// proxy_config: a proxy URL whose `://` comes after the `@` (so not a
/// scheme) was quoted whole in the error, password included.
#[test]
fn proxy_url_error_never_shows_the_password() {
    for value in [
        "user:s3cretpw@proxy.example:3128/?next=http://x",
        "user:s3cretpw@proxy.example/x://y",
        // As the fuzzer found it (the whole file taken as a URL).
        "{\"httpsPiiiiiiiiiiixxxxxxxxxxxxxxxxxxxxxxxxxxxx:xxdCaxxxxxxx8xxxxxxxxx@.cl,::0\", \
         \"trushtt++++tedCa\"/++++0XallowP+++++p://0512.0.4:ro\"se\n: \"\"}}",
    ] {
        let secret = if value.contains("s3cretpw") {
            "s3cretpw"
        } else {
            "xxdCaxxxxxxx8xxxxxxxxx"
        };
        let message = ProxyUrl::parse(value).expect_err(value);
        assert!(!message.contains(secret), "{message}");

        let json = serde_json::json!({ "httpsProxy": value }).to_string();
        let message = ProxyConfig::parse("proxy.json", &json)
            .expect_err(&json)
            .to_string();
        assert!(message.contains("httpsProxy"), "{message}");
        assert!(!message.contains(secret), "{message}");
    }
}
