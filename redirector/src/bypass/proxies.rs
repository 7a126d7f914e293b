//! The upstream proxies' own addresses: a pod that speaks to the proxy
//! itself (its `HTTPS_PROXY` points there, as AKS injects it) must reach it
//! directly, not through the daemon (which would tunnel a tunnel, and
//! refuse the pod while it restarts).
//!
//! The kernel's tries hold prefixes without ports, so the proxy's address
//! is bypassed whole: every port on it is direct. Where the proxy shares
//! its address with anything that must stay proxied, switch the source off
//! (`--no-bypass-proxy-addresses`).
//!
//! Each host of `httpProxy` and `httpsProxy` is its own source. A name is
//! looked up the way the daemon dials it (the system resolver: the node's
//! `resolv.conf`, search domains, hosts file), so the bypass covers the
//! very addresses the daemon connects to; at start, after every reload and
//! every [`REFRESH`], each lookup bounded in time. A failed lookup keeps
//! what the host had; an answer without addresses empties it. Loopback,
//! unspecified and link-local answers never count.
use std::{net::IpAddr, sync::Arc, time::Duration};

use tokio::sync::Notify;

use super::{BypassSet, Entry, Source, node::is_own_address};
use crate::{config::ProxyConfig, policy::Policy, swappable::Swappable};

/// How often the proxies' names are looked up again.
pub const REFRESH: Duration = Duration::from_secs(30);
/// Bound on one name's lookup (the system resolver's own retries may be
/// slower; the bypassed addresses stay meanwhile).
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The proxies' hosts (listed ones and profiles' too), each once, as written.
pub fn hosts(config: &ProxyConfig) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for proxy in config.all_proxies() {
        if !out.contains(&proxy.host) {
            out.push(proxy.host.clone());
        }
    }
    out
}

/// `host` as an IP literal's entries; `None` for a name.
pub fn literal(host: &str) -> Option<Vec<Entry>> {
    let ip: IpAddr = host.parse().ok()?;
    Some(entries([ip], "IP literal"))
}

fn entries(addrs: impl IntoIterator<Item = IpAddr>, detail: &str) -> Vec<Entry> {
    addrs
        .into_iter()
        .map(|ip| ip.to_canonical())
        .filter(|ip| is_own_address(*ip))
        .map(|ip| Entry::host(ip, detail))
        .collect()
}

/// `host`'s entries: the literal, or the name's addresses as the system
/// resolver gives them within `timeout`; `Err` says why there is no answer.
pub async fn lookup(host: &str, timeout: Duration) -> Result<Vec<Entry>, String> {
    if let Some(entries) = literal(host) {
        return Ok(entries);
    }
    match tokio::time::timeout(timeout, tokio::net::lookup_host((host, 0))).await {
        Ok(Ok(addrs)) => Ok(entries(addrs.map(|a| a.ip()), "resolved")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// Keeps every configured proxy's addresses current in `set`: now, when
/// `reloaded` is notified (a new configuration), and every [`REFRESH`].
pub async fn follow(
    set: Arc<BypassSet>,
    policy: Swappable<Policy>,
    reloaded: Arc<Notify>,
    timeout: Duration,
) {
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let hosts = hosts(policy.load().config());
        let before = set.sources();
        let mut found = Vec::new();
        for host in hosts {
            let source = Source::UpstreamProxy(host.clone());
            let entries = match lookup(&host, timeout).await {
                Ok(entries) => entries,
                Err(error) => {
                    tracing::warn!(
                        proxy = %host,
                        %error,
                        "cannot look up the upstream proxy's addresses; the ones bypassed stay"
                    );
                    before.get(&source).to_vec()
                }
            };
            found.push((source, entries));
        }
        let update = set.update("upstream proxies", |s| {
            s.remove_where(|source| matches!(source, Source::UpstreamProxy(_)));
            for (source, entries) in found {
                s.set(source, entries);
            }
        });
        if let Err(e) = update {
            tracing::warn!(error = %format!("{e:#}"), "cannot bypass the upstream proxies' addresses; retrying");
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = reloaded.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_each_once() {
        let config = ProxyConfig::parse(
            "t",
            r#"{"httpProxy": "http://10.0.0.4:3128", "httpsProxy": "http://u:p@10.0.0.4:3129"}"#,
        )
        .unwrap();
        assert_eq!(hosts(&config), ["10.0.0.4"]);
        let config = ProxyConfig::parse(
            "t",
            r#"{"httpProxy": "http://proxy.corp:3128", "httpsProxy": "https://[fd00::4]:443"}"#,
        )
        .unwrap();
        assert_eq!(hosts(&config), ["fd00::4", "proxy.corp"]);
        assert!(hosts(&ProxyConfig::parse("t", "{}").unwrap()).is_empty());
    }

    #[tokio::test]
    async fn literals() {
        let got = lookup("10.0.0.4", Duration::from_secs(1)).await.unwrap();
        assert_eq!(
            got,
            [Entry::host("10.0.0.4".parse().unwrap(), "IP literal")]
        );
        // The proxy on loopback or link-local opens no path.
        assert!(literal("127.0.0.1").unwrap().is_empty());
        assert!(literal("169.254.169.254").unwrap().is_empty());
        assert!(literal("proxy.corp").is_none());
        // (Names go to the system resolver, which a unit test must not
        // reach: the end-to-end tests cover them.)
    }
}
