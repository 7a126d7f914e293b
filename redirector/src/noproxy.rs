//! `noProxy` entries, split by where they are enforced.
//!
//! IP and CIDR entries without a port become kernel bypass prefixes: such
//! connects are never redirected. Every other entry (host names, `*`,
//! port-restricted entries) needs the hostname or port and is decided in
//! user space; hostname recovery and name matching arrive with the policy
//! engine, so for now those entries are kept and reported, not applied
//! (their traffic goes through the proxy, which is the safe side).
use std::net::IpAddr;

use ipnet::IpNet;
use thiserror::Error;

/// A `noProxy` entry that could not be understood.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("entry {index} `{entry}`: {reason}")]
pub struct NoProxyError {
    pub index: usize,
    pub entry: String,
    pub reason: String,
}

/// The parsed `noProxy` list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    /// Prefixes bypassed in the kernel.
    bypass: Vec<IpNet>,
    /// Entries that need user-space matching (kept verbatim, normalized).
    names: Vec<String>,
}

impl NoProxy {
    /// Parses the entries. Empty and whitespace-only entries are ignored,
    /// as Go's `httpproxy` does.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, NoProxyError> {
        let mut out = Self::default();
        for (index, raw) in entries.iter().enumerate() {
            let entry = raw.as_ref().trim();
            if entry.is_empty() {
                continue;
            }
            let error = |reason: &str| NoProxyError {
                index,
                entry: entry.to_owned(),
                reason: reason.to_owned(),
            };
            if let Some(net) = parse_ip_or_cidr(entry).map_err(|r| error(&r))? {
                out.bypass.push(net.trunc());
            } else if entry.chars().any(char::is_whitespace) {
                return Err(error("contains whitespace"));
            } else {
                out.names.push(entry.to_ascii_lowercase());
            }
        }
        Ok(out)
    }

    /// Prefixes to load into the kernel bypass tries.
    pub fn kernel_bypass(&self) -> impl Iterator<Item = &IpNet> {
        self.bypass.iter()
    }

    /// Entries that need the hostname or port (not applied yet).
    pub fn name_rules(&self) -> &[String] {
        &self.names
    }
}

/// `Ok(Some)` for an IP (`10.0.0.1`, `::1`, `[::1]`) or CIDR entry,
/// `Ok(None)` for anything else, `Err` for a broken CIDR.
fn parse_ip_or_cidr(entry: &str) -> Result<Option<IpNet>, String> {
    let unbracketed = entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .unwrap_or(entry);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(Some(IpNet::from(ip)));
    }
    if let Some((addr, len)) = entry.split_once('/') {
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("prefix length `{len}` is not 0..={max}"))?;
        return IpNet::new(addr, len).map(Some).map_err(|e| e.to_string());
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_kernel_and_name_entries() {
        let np = NoProxy::parse(&[
            "localhost",
            "10.0.0.0/16",
            "127.0.0.1",
            " ",
            "[::1]",
            "fd00::/8",
            "10.1.2.3/8",
            "Docker.IO",
            "10.0.0.5:8080",
        ])
        .unwrap();
        let bypass: Vec<String> = np.kernel_bypass().map(|n| n.to_string()).collect();
        assert_eq!(
            bypass,
            [
                "10.0.0.0/16",
                "127.0.0.1/32",
                "::1/128",
                "fd00::/8",
                "10.0.0.0/8"
            ]
        );
        assert_eq!(np.name_rules(), ["localhost", "docker.io", "10.0.0.5:8080"]);
    }

    #[test]
    fn rejects_broken_cidrs() {
        for bad in ["10.0.0.0/33", "fd00::/129", "10.0.0/8", "10.0.0.0/x", "a b"] {
            let err = NoProxy::parse(&["ok.example", bad]).unwrap_err();
            assert_eq!(err.index, 1, "{bad}");
            assert_eq!(err.entry, bad);
        }
    }
}
