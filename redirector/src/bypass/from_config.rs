//! The sources the operator writes: the built-ins and `--cluster-cidr`
//! (flags, fixed for the daemon's life) and the configuration's
//! `serviceCidrs` and `noProxy` IPs and CIDRs (hot reloaded).
use ipnet::IpNet;

use super::{Entry, Source, Sources};
use crate::{config::ProxyConfig, policy::Builtins};

/// Replaces the four sources with what `config` and `builtins` say (an
/// empty one is removed).
pub fn apply(sources: &mut Sources, config: &ProxyConfig, builtins: &Builtins) {
    let net = |s: &str| s.parse::<IpNet>().expect("a built-in prefix");
    let mut built_in = Vec::new();
    if builtins.loopback {
        built_in.push(Entry::new(net("127.0.0.0/8"), "loopback"));
        built_in.push(Entry::new(net("::1/128"), "loopback"));
    }
    if builtins.link_local {
        built_in.push(Entry::new(net("169.254.0.0/16"), "link-local"));
        built_in.push(Entry::new(net("fe80::/10"), "link-local"));
    }
    sources.set(Source::BuiltIn, built_in);
    let flags = builtins.cluster_cidrs.iter();
    sources.set(
        Source::ClusterCidrFlag,
        flags.map(|n| Entry::new(*n, "")).collect(),
    );
    let services = config.service_cidrs.iter();
    sources.set(
        Source::ServiceCidrs,
        services.map(|n| Entry::new(*n, "")).collect(),
    );
    let no_proxy = config.no_proxy.kernel_bypass();
    sources.set(
        Source::NoProxy,
        no_proxy.map(|n| Entry::new(*n, "")).collect(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_config_source_is_named() {
        let config = ProxyConfig::parse(
            "t",
            r#"{"noProxy": ["10.249.3.0/24", "example.com", "10.0.0.5:443"],
                "serviceCidrs": ["10.96.0.0/12"]}"#,
        )
        .unwrap();
        let builtins = Builtins {
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            ..Builtins::default()
        };
        let mut sources = Sources::default();
        apply(&mut sources, &config, &builtins);
        let shown: Vec<String> = sources
            .iter()
            .map(|(s, e)| {
                let e: Vec<String> = e.iter().map(Entry::to_string).collect();
                format!("{s}: {}", e.join(", "))
            })
            .collect();
        assert_eq!(
            shown,
            [
                "built-in: 127.0.0.0/8 (loopback), 169.254.0.0/16 (link-local), ::1/128 (loopback), fe80::/10 (link-local)",
                "--cluster-cidr: 10.244.0.0/16",
                "serviceCidrs: 10.96.0.0/12",
                // names and port-restricted entries are the daemon's, not the kernel's
                "noProxy: 10.249.3.0/24",
            ]
        );

        // A reload without them removes them; the flags stay.
        let config = ProxyConfig::parse("t", "{}").unwrap();
        apply(&mut sources, &config, &builtins);
        assert!(sources.get(&Source::ServiceCidrs).is_empty());
        assert!(sources.get(&Source::NoProxy).is_empty());
        assert_eq!(sources.get(&Source::ClusterCidrFlag).len(), 1);
        let off = Builtins {
            loopback: false,
            link_local: false,
            cluster_cidrs: vec![],
        };
        apply(&mut sources, &config, &off);
        assert_eq!(sources, Sources::default());
    }
}
