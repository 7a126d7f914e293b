//! Which upstream proxies are up, for failover between the proxies one
//! key lists (`"httpsProxy": ["http://a:3128", "http://b:3128"]`).
//!
//! Passive: a proxy that cannot be reached on a connection's dial is
//! marked down at once, and the dial goes on to the next one. Active: a
//! proxy marked down gets one TCP connect every [`PROBE_EVERY`] (bounded by
//! [`PROBE_TIMEOUT`], one at a time), and is up again when it answers; a
//! successful dial marks it up too. The first proxy in the list that is up
//! wins; when all are down they are all tried, in order. Failover never
//! leaves direct: only `failMode: open` may, after every proxy failed.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::config::ProxyUrl;

/// Told of every dial's result: the proxy (without credentials) and
/// whether it was reached (the daemon's per-proxy metrics).
pub type Observer = Box<dyn Fn(&str, bool) + Send + Sync>;

/// How often proxies marked down are probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);
/// Bound on one probe's TCP connect.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Most proxies remembered (a reload may name new ones; old ones go).
const REMEMBERED_MAX: usize = 256;

/// Up or down, by proxy (its URL without credentials).
#[derive(Default)]
pub struct ProxyHealth {
    down: Mutex<HashMap<String, ProxyUrl>>,
    observer: Option<Observer>,
}

impl ProxyHealth {
    pub fn with_observer(observer: Observer) -> Self {
        Self {
            down: Mutex::default(),
            observer: Some(observer),
        }
    }

    fn down(&self) -> std::sync::MutexGuard<'_, HashMap<String, ProxyUrl>> {
        self.down.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `proxy` is marked down.
    pub fn is_down(&self, proxy: &ProxyUrl) -> bool {
        self.down().contains_key(&proxy.to_string())
    }

    /// The candidates in the order to try: those up first, then those
    /// down, each group in the listed order.
    pub fn order<'a>(&self, candidates: &[&'a ProxyUrl]) -> Vec<&'a ProxyUrl> {
        let down = self.down();
        let (up, mut marked): (Vec<&ProxyUrl>, Vec<&ProxyUrl>) = candidates
            .iter()
            .partition(|p| !down.contains_key(&p.to_string()));
        let mut out = up;
        out.append(&mut marked);
        out
    }

    /// A dial through `proxy` reached it (`up`) or could not.
    pub fn mark(&self, proxy: &ProxyUrl, up: bool) {
        let key = proxy.to_string();
        let changed = {
            let mut down = self.down();
            if up {
                down.remove(&key).is_some()
            } else if down.contains_key(&key) {
                false
            } else {
                if down.len() >= REMEMBERED_MAX {
                    down.clear();
                }
                down.insert(key.clone(), proxy.clone());
                true
            }
        };
        if let Some(observe) = &self.observer {
            observe(&key, up);
        }
        if changed {
            if up {
                tracing::info!(proxy = %key, "upstream proxy is up again");
            } else {
                tracing::warn!(proxy = %key, "upstream proxy unreachable: marked down, later connections use the next one listed");
            }
        }
    }

    /// Probes the proxies marked down until the process ends.
    pub async fn probe_forever(self: Arc<Self>, socket_mark: u32) {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.probe_once(socket_mark).await;
        }
    }

    /// One TCP connect to each proxy marked down; an answer marks it up.
    pub async fn probe_once(&self, socket_mark: u32) {
        let down: Vec<ProxyUrl> = self.down().values().cloned().collect();
        for proxy in down {
            let reached = tokio::time::timeout(PROBE_TIMEOUT, async {
                let addrs = tokio::net::lookup_host((proxy.host.as_str(), proxy.port)).await?;
                let mut last = std::io::Error::other("no address");
                for addr in addrs {
                    match super::connect_marked(addr, socket_mark).await {
                        Ok(_) => return Ok(()),
                        Err(e) => last = e,
                    }
                }
                Err(last)
            })
            .await;
            if matches!(reached, Ok(Ok(()))) {
                self.mark(&proxy, true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> ProxyUrl {
        ProxyUrl::parse(s).unwrap()
    }

    #[test]
    fn the_first_up_wins_and_down_ones_come_last() {
        let health = ProxyHealth::default();
        let (a, b, c) = (url("http://a:1"), url("http://b:1"), url("http://c:1"));
        let all = [&a, &b, &c];
        assert_eq!(health.order(&all), [&a, &b, &c]);
        health.mark(&a, false);
        assert!(health.is_down(&a));
        assert_eq!(health.order(&all), [&b, &c, &a]);
        health.mark(&c, false);
        assert_eq!(health.order(&all), [&b, &a, &c]);
        health.mark(&a, true);
        assert_eq!(health.order(&all), [&a, &b, &c]);
    }

    #[tokio::test]
    async fn a_probe_brings_a_listening_proxy_back() {
        let health = ProxyHealth::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = url(&format!("http://{}", listener.local_addr().unwrap()));
        let port = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dead = url(&format!("http://127.0.0.1:{port}"));
        health.mark(&live, false);
        health.mark(&dead, false);
        health.probe_once(0).await;
        assert!(!health.is_down(&live));
        assert!(health.is_down(&dead));
    }
}
