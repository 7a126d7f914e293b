//! `redirector explain`: how the daemon would route a connection, and the
//! rule that decided. It calls the daemon's own [`Policy::decide`]; only
//! the input differs (a target from the command line instead of a peeked
//! connection). Names are not resolved: a host name is matched by name
//! rules only, as the daemon does when the IP is not in a bypass range.
use std::net::IpAddr;

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::{
    classify::Protocol,
    cli::ExplainArgs,
    config::ProxyConfig,
    policy::{Decision, Mode, Policy, Target},
};

/// A parsed TARGET: what the daemon would know about such a connection.
#[derive(Debug, PartialEq, Eq)]
struct ParsedTarget {
    ip: Option<IpAddr>,
    host: Option<String>,
    port: u16,
    protocol: Protocol,
}

pub fn run(args: &ExplainArgs) -> Result<()> {
    let config = ProxyConfig::load(&args.proxy_config)?;
    let policy = Policy::new(config, &args.policy.builtins());
    let target = parse_target(&args.target, &args.protocol)?;
    let decision = policy.decide(&Target {
        ip: target.ip,
        host: target.host.as_deref(),
        port: target.port,
        protocol: target.protocol,
    });
    if args.json {
        println!("{}", to_json(&args.target, &target, &decision));
    } else {
        print!("{}", to_text(&args.target, &target, &decision));
    }
    Ok(())
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Connect => "connect",
        Mode::AbsoluteForm => "absolute-form",
    }
}

fn protocol_name(p: &Protocol) -> &'static str {
    match p {
        Protocol::Http => "http",
        Protocol::Tls => "tls",
        Protocol::Other => "tcp",
    }
}

fn to_text(raw: &str, t: &ParsedTarget, d: &Decision) -> String {
    let mut out = format!(
        "target: {raw} (host {}, port {}, {})\ndecision: {}\n",
        t.host
            .clone()
            .or(t.ip.map(|i| i.to_string()))
            .unwrap_or_default(),
        t.port,
        protocol_name(&t.protocol),
        d.kind()
    );
    if let Decision::Proxy { proxy, mode, .. } = d {
        out += &format!("proxy: {proxy}\nmode: {}\n", mode_name(*mode));
    }
    out += &format!("rule: {}\n", d.rule());
    out
}

fn to_json(raw: &str, t: &ParsedTarget, d: &Decision) -> serde_json::Value {
    let mut v = json!({
        "target": raw,
        "host": t.host,
        "ip": t.ip.map(|i| i.to_string()),
        "port": t.port,
        "protocol": protocol_name(&t.protocol),
        "decision": d.kind(),
        "rule": d.rule(),
    });
    if let Decision::Proxy { proxy, mode, .. } = d {
        v["proxy"] = json!(proxy.to_string());
        v["mode"] = json!(mode_name(*mode));
    }
    v
}

/// A URL (`https://host/x`), `host:port`, `ip:port` or `[v6]:port`.
fn parse_target(raw: &str, protocol: &str) -> Result<ParsedTarget> {
    let (host, port, protocol) = if raw.contains("://") {
        let url = url::Url::parse(raw).with_context(|| format!("target `{raw}`"))?;
        let protocol = match url.scheme() {
            "http" => Protocol::Http,
            "https" => Protocol::Tls,
            other => bail!("target `{raw}`: scheme `{other}` (use http://, https:// or host:port)"),
        };
        let host = match url.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
            None => bail!("target `{raw}`: no host"),
        };
        let port = url.port_or_known_default().unwrap_or(80);
        (host, port, protocol)
    } else {
        let (host, port) = raw
            .rsplit_once(':')
            .with_context(|| format!("target `{raw}`: expected a URL or host:port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = port
            .parse()
            .with_context(|| format!("target `{raw}`: bad port `{port}`"))?;
        let protocol = match protocol {
            "http" => Protocol::Http,
            "tls" => Protocol::Tls,
            "tcp" => Protocol::Other,
            other => bail!("--protocol `{other}`: expected http, tls or tcp"),
        };
        (host.to_owned(), port, protocol)
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        bail!("target `{raw}`: no host");
    }
    Ok(match host.parse::<IpAddr>() {
        Ok(ip) => ParsedTarget {
            ip: Some(ip),
            host: None,
            port,
            protocol,
        },
        Err(_) => ParsedTarget {
            ip: None,
            host: Some(host),
            port,
            protocol,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = parse_target("https://API.Example.com./x", "tcp").unwrap();
        assert_eq!(
            t,
            ParsedTarget {
                ip: None,
                host: Some("api.example.com".into()),
                port: 443,
                protocol: Protocol::Tls
            }
        );
        let t = parse_target("http://[fd00::1]:8080/", "tcp").unwrap();
        assert_eq!((t.ip, t.port), (Some("fd00::1".parse().unwrap()), 8080));
        let t = parse_target("10.0.0.1:5432", "tcp").unwrap();
        assert_eq!((t.ip.is_some(), t.protocol), (true, Protocol::Other));
        let t = parse_target("example.com:80", "http").unwrap();
        assert_eq!(t.protocol, Protocol::Http);
        for bad in ["example.com", "ftp://x/", "x:y", ":80", "a:80"] {
            let r = parse_target(bad, if bad == "a:80" { "udp" } else { "tcp" });
            assert!(r.is_err(), "{bad}");
        }
    }

    #[test]
    fn output_never_shows_credentials() {
        let cfg = ProxyConfig::parse(
            "t",
            r#"{"httpsProxy": "http://user:s3cret@proxy:3128", "noProxy": ["direct.example"]}"#,
        )
        .unwrap();
        let policy = Policy::new(cfg, &crate::policy::Builtins::default());
        let t = parse_target("https://origin.example/", "tcp").unwrap();
        let d = policy.decide(&Target {
            ip: t.ip,
            host: t.host.as_deref(),
            port: t.port,
            protocol: t.protocol,
        });
        let text = to_text("https://origin.example/", &t, &d);
        assert!(
            text.contains("decision: proxy\nproxy: http://proxy:3128\n"),
            "{text}"
        );
        assert!(text.contains("rule: httpsProxy"), "{text}");
        let json = to_json("https://origin.example/", &t, &d).to_string();
        assert!(
            !json.contains("s3cret") && json.contains(r#""decision":"proxy""#),
            "{json}"
        );
    }
}
