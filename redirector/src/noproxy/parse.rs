//! One `noProxy` entry into what it matches and on which port.
//!
//! Whatever is not understood is refused, with the reason, so that the
//! daemon never runs with a half-understood policy (Go ignores most of
//! these silently).
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    num::NonZeroU16,
};

use ipnet::{IpNet, Ipv4Net};
use thiserror::Error;

use super::Target;

/// Why an entry was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum InvalidEntry {
    #[error("a URL is not a NO_PROXY entry; write the host alone, e.g. `{0}`")]
    Url(String),
    #[error("`{0}` before the `/` is not an IP address")]
    CidrAddress(String),
    #[error("prefix length {len} is not 0..={max}")]
    PrefixLength { len: String, max: u8 },
    #[error("missing prefix length after `/`")]
    MissingPrefixLength,
    #[error(
        "a CIDR cannot carry a port (no NO_PROXY implementation supports it); \
         drop the port or list the addresses one by one with it"
    )]
    CidrWithPort,
    #[error("`/` is only allowed in a CIDR (address/prefix-length)")]
    Slash,
    #[error("`[` `]` must enclose an IPv6 address, optionally followed by `:port`")]
    Brackets,
    #[error("`{0}` looks like an IPv6 address but is not one (for a port, write `[address]:port`)")]
    NotIpv6(String),
    #[error("no host before the `:port`")]
    EmptyHost,
    #[error("port `{0}` is not 1..=65535")]
    Port(String),
    #[error("`*` cannot carry a port; write `*` alone to bypass everything")]
    StarWithPort,
    #[error("`*` is only allowed alone or as the whole first label (`*.example.com`)")]
    Wildcard,
    #[error("no name")]
    EmptyName,
    #[error("empty label (`..`)")]
    EmptyLabel,
    #[error("label `{0}` is longer than 63 characters")]
    LabelTooLong(String),
    #[error("name is longer than 253 characters")]
    NameTooLong,
    #[error("contains whitespace; entries are separated by commas")]
    Whitespace,
    #[error(
        "non-ASCII name; write internationalized names in punycode (`xn--...`), \
         as TLS SNI and HTTP Host carry them"
    )]
    NonAscii,
    #[error("character `{0}` is not allowed in a host name (letters, digits, `-`, `_`, `.`)")]
    Char(char),
    #[error("looks like an IP address but is not one")]
    NotAnIp,
}

/// One trimmed, non-empty entry.
pub(super) fn parse_entry(entry: &str) -> Result<(Target, Option<NonZeroU16>), InvalidEntry> {
    if let Some((_, rest)) = entry.split_once("://") {
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host = host.rsplit('@').next().unwrap_or(host);
        return Err(InvalidEntry::Url(host.to_owned()));
    }
    if entry.contains(char::is_whitespace) {
        return Err(InvalidEntry::Whitespace);
    }
    if !entry.is_ascii() {
        return Err(InvalidEntry::NonAscii);
    }
    if entry == "*" {
        return Ok((Target::All, None));
    }
    if let Some(inner) = entry.strip_prefix('[') {
        // `[fd00::1]` or `[fd00::1]:443`: brackets exist to set a port
        // apart from an IPv6 address, so they hold nothing else.
        let (addr, rest) = inner.split_once(']').ok_or(InvalidEntry::Brackets)?;
        let ip: Ipv6Addr = addr.parse().map_err(|_| InvalidEntry::Brackets)?;
        let port = match rest {
            "" => None,
            _ => Some(parse_port(
                rest.strip_prefix(':').ok_or(InvalidEntry::Brackets)?,
            )?),
        };
        return Ok((Target::Net(host_net(IpAddr::V6(ip))), port));
    }
    if let Some((addr, len)) = entry.split_once('/') {
        return parse_cidr(addr, len).map(|net| (Target::Net(net), None));
    }
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Ok((Target::Net(host_net(ip)), None));
    }
    let (host, port) = match entry.matches(':').count() {
        0 => (entry, None),
        // Unbracketed IPv6 is always an address, never `address:port`
        // (`fd00::1:443` is the address fd00::1:443), as in Go.
        1 => {
            let (host, port) = entry.split_once(':').unwrap_or((entry, ""));
            (host, Some(parse_port(port)?))
        }
        _ => return Err(InvalidEntry::NotIpv6(entry.to_owned())),
    };
    if host.is_empty() {
        return Err(InvalidEntry::EmptyHost);
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok((Target::Net(host_net(IpAddr::V4(ip))), port));
    }
    if host == "*" {
        return Err(InvalidEntry::StarWithPort);
    }
    parse_name(host).map(|target| (target, port))
}

/// `addr/len`; a port after the length is refused rather than guessed at.
fn parse_cidr(addr: &str, len: &str) -> Result<IpNet, InvalidEntry> {
    let ip: IpAddr = addr.parse().map_err(|_| {
        if addr.contains(':') || addr.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            InvalidEntry::CidrAddress(addr.to_owned())
        } else {
            InvalidEntry::Slash
        }
    })?;
    if len.contains(':') {
        return Err(InvalidEntry::CidrWithPort);
    }
    if len.is_empty() {
        return Err(InvalidEntry::MissingPrefixLength);
    }
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bad_len = || InvalidEntry::PrefixLength {
        len: len.to_owned(),
        max,
    };
    // All digits: `u8::from_str` would also take `+8`.
    if !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_len());
    }
    let len: u8 = len.parse().ok().filter(|l| *l <= max).ok_or_else(bad_len)?;
    let net = IpNet::new(ip, len).map_err(|_| bad_len())?;
    Ok(canonical_net(net.trunc()))
}

fn parse_port(port: &str) -> Result<NonZeroU16, InvalidEntry> {
    let bad = || InvalidEntry::Port(port.to_owned());
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    port.parse().map_err(|_| bad())
}

/// A DNS name entry, with its `.` or `*.` prefix if any.
fn parse_name(host: &str) -> Result<Target, InvalidEntry> {
    let (name, apex) = match host.strip_prefix("*.") {
        Some(rest) => (rest, false),
        None => match host.strip_prefix('.') {
            Some(rest) => (rest, false),
            None => (host, true),
        },
    };
    // `example.com.` is the same name written fully qualified.
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.contains('*') {
        return Err(InvalidEntry::Wildcard);
    }
    if name.is_empty() {
        return Err(InvalidEntry::EmptyName);
    }
    if name.len() > 253 {
        return Err(InvalidEntry::NameTooLong);
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(InvalidEntry::EmptyLabel);
        }
        if label.len() > 63 {
            return Err(InvalidEntry::LabelTooLong(label.to_owned()));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(InvalidEntry::Char(c));
        }
    }
    // No top-level domain is numeric, and resolvers read `10.0.0` or `123`
    // as IPv4 shorthand; Go and Python would suffix-match `0.0.1` against
    // `10.0.0.1`. Such an entry is a broken IP, not a name.
    if name
        .rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(InvalidEntry::NotAnIp);
    }
    Ok(Target::Name {
        name: name.to_ascii_lowercase(),
        apex,
    })
}

/// An IP literal entry as a one-address prefix.
fn host_net(ip: IpAddr) -> IpNet {
    canonical_net(IpNet::from(ip))
}

/// IPv4-mapped IPv6 prefixes (`::ffff:10.0.0.0/104`) as the IPv4 prefixes
/// they mean: the kernel and [`NoProxy::find`](super::NoProxy::find) see such destinations as
/// IPv4, so a mapped prefix would otherwise never match.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Ok(v4) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(v4);
    }
    net
}
