//! Policy: where a redirected connection goes. Kernel-side bypasses
//! (`noProxy` CIDRs, exempt cgroups) never reach this point; what does is
//! sent through `httpsProxy` with CONNECT, or direct when none is set, as
//! an env-var client would. Hostname-based `noProxy` rules and the
//! `httpProxy` path for plain HTTP come with the hostname classifier.
use std::net::SocketAddr;

use crate::config::{ProxyConfig, ProxyUrl};

/// The decision for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Connect straight to the original destination.
    Direct,
    /// Tunnel through this proxy with `CONNECT`.
    Proxy(ProxyUrl),
}

/// Decides the route for a connection to `_dst`.
pub fn route(config: &ProxyConfig, _dst: SocketAddr) -> Route {
    match &config.https_proxy {
        Some(proxy) => Route::Proxy(proxy.clone()),
        None => Route::Direct,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_proxy_or_direct() {
        let dst = "10.0.0.1:443".parse().unwrap();
        let cfg = ProxyConfig::parse("t", r#"{"httpsProxy": "http://p:3128"}"#).unwrap();
        assert_eq!(
            route(&cfg, dst),
            Route::Proxy(ProxyUrl::parse("http://p:3128").unwrap())
        );
        let cfg = ProxyConfig::parse("t", r#"{"httpProxy": "http://p:3128"}"#).unwrap();
        assert_eq!(route(&cfg, dst), Route::Direct);
    }
}
