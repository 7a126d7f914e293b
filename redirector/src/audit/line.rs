//! One audit line: what happened to one connection, as JSON.
use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::json;

/// One connection, as the audit log records it. Proxies are written
/// without credentials (`ProxyUrl`'s `Display`).
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub namespace: Option<&'a str>,
    pub pod: Option<&'a str>,
    pub pod_addr: IpAddr,
    pub dst: SocketAddr,
    /// The name seen: TLS SNI or HTTP `Host`.
    pub name: Option<&'a str>,
    /// `proxy`, `direct`, `kernel-bypass` or `refuse`.
    pub decision: &'a str,
    pub rule: &'a str,
    /// The profile that decided (`None`: the top level).
    pub profile: Option<&'a str>,
    pub proxy: Option<String>,
    /// How it ended, as `redirector_connection_outcomes_total` counts it.
    pub outcome: &'a str,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration: Duration,
}

impl Entry<'_> {
    /// The line, without its newline; `node`: this node's name (with
    /// `--kube`); `dropped`: lines dropped since the
    /// last one written (bounds), said only when there were any.
    pub fn to_json(&self, node: Option<&str>, dropped: u64) -> String {
        let mut v = json!({
            "time": rfc3339(SystemTime::now()),
            "node": node,
            "namespace": self.namespace,
            "pod": self.pod,
            "pod_addr": self.pod_addr.to_canonical(),
            "dst": self.dst,
            "name": self.name,
            "decision": self.decision,
            "rule": self.rule,
            "profile": self.profile,
            "proxy": self.proxy,
            "outcome": self.outcome,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "duration_ms": self.duration.as_millis() as u64,
        });
        if dropped > 0 {
            v["dropped_before"] = json!(dropped);
        }
        v.to_string()
    }
}

/// `2026-12-05T15:04:05.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub fn sample() -> Entry<'static> {
        Entry {
            namespace: Some("shop"),
            pod: Some("web-0"),
            pod_addr: "::ffff:10.0.0.5".parse().unwrap(),
            dst: "203.0.113.7:443".parse().unwrap(),
            name: Some("api.example.com"),
            decision: "proxy",
            rule: "httpsProxy",
            profile: Some("team-a"),
            proxy: Some("http://proxy:3128".into()),
            outcome: "ok",
            bytes_up: 10,
            bytes_down: 20,
            duration: Duration::from_millis(1500),
        }
    }

    #[test]
    fn a_line_has_every_field() {
        let v: serde_json::Value =
            serde_json::from_str(&sample().to_json(Some("node-1"), 0)).unwrap();
        for (key, want) in [
            ("node", json!("node-1")),
            ("namespace", json!("shop")),
            ("pod", json!("web-0")),
            ("pod_addr", json!("10.0.0.5")),
            ("dst", json!("203.0.113.7:443")),
            ("name", json!("api.example.com")),
            ("decision", json!("proxy")),
            ("rule", json!("httpsProxy")),
            ("profile", json!("team-a")),
            ("proxy", json!("http://proxy:3128")),
            ("outcome", json!("ok")),
            ("bytes_up", json!(10)),
            ("bytes_down", json!(20)),
            ("duration_ms", json!(1500)),
        ] {
            assert_eq!(v[key], want, "{key}");
        }
        assert!(v.get("dropped_before").is_none());
        let v: serde_json::Value = serde_json::from_str(&sample().to_json(None, 4)).unwrap();
        assert_eq!(v["dropped_before"], 4);
    }

    #[test]
    fn rfc3339_dates() {
        let at = |s: u64, ms: u64| UNIX_EPOCH + Duration::from_millis(s * 1000 + ms);
        assert_eq!(rfc3339(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(at(951_782_400, 5)), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(at(1_796_484_510, 732)), "2026-12-05T15:28:30.732Z");
    }
}
