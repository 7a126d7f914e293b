//! The proxy configuration: AKS's HTTP proxy JSON, accepted as AKS
//! documents it (`az aks create --http-proxy-config FILE`):
//!
//! ```json
//! { "httpProxy": "http://10.0.0.4:8080/", "httpsProxy": "http://10.0.0.4:8080/",
//!   "noProxy": ["localhost", "10.0.0.0/16"], "trustedCA": "<base64 PEM>" }
//! ```
//!
//! Redirector-only keys extend it: `failMode` (`"closed"`, the default,
//! or `"open"`), `allowPodOptOut` (default `true`, as AKS honours pod
//! annotations), `refuseUdpPorts` (default `[443]`: UDP destination ports
//! redirected pods may not send to, so HTTP/3 falls back to TCP),
//! `allowOtherStreamProtocols` (default `false`: stream sockets other than
//! TCP and MPTCP, such as SCTP, are refused) and `missingProxy` (default
//! `"direct"`, AKS's meaning: what happens to plain HTTP when only
//! `httpsProxy` is set, and to everything else when only `httpProxy` is),
//! `exemptNamespaces` (default `["kube-system"]`: namespaces whose pods are
//! never redirected), `exemptHostNetworkPods` (default `true`),
//! `serviceCidrs` (default none: the cluster's Service ranges, bypassed in
//! the kernel beside `--cluster-cidr`) and `serverFirstPorts` (default
//! [`DEFAULT_SERVER_FIRST_PORTS`]: destination ports whose clients wait for
//! the server to speak, routed by address at once instead of after the
//! peek timeout), `identity` (default off: headers naming the calling
//! pod on requests to the proxy, see [`Identity`]) and `profiles` (proxy
//! settings selected per namespace, see [`Profile`]). Files without them are
//! plain AKS files.
//!
//! Unknown keys are rejected rather than ignored: a typo such as
//! `httpsProxyy` would otherwise silently send traffic direct.
use std::{fmt, path::Path};

use base64::Engine as _;
use ipnet::IpNet;
use serde::Deserialize;
use thiserror::Error;
use url::Url;

use crate::noproxy::{NoProxy, NoProxyError};

mod audit;
mod identity;
mod profiles;
pub use audit::{Audit, AuditOutput};
pub use identity::Identity;
pub use profiles::Profile;

/// Why a proxy configuration file was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The OS error is part of the message, not a `source`: printed with
    /// its chain (`{:#}`), it would appear twice.
    #[error("{file}: cannot read: {error}")]
    Read { file: String, error: std::io::Error },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: field `{field}`: {message}")]
    Field {
        file: String,
        field: &'static str,
        message: String,
    },
}

/// The file as written, before validation. Field names are AKS's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// One URL as AKS writes it, or (redirector extension) a list: the
    /// first healthy one is used.
    #[serde(rename = "httpProxy")]
    http_proxy: Option<ProxyField>,
    #[serde(rename = "httpsProxy")]
    https_proxy: Option<ProxyField>,
    #[serde(rename = "noProxy")]
    no_proxy: Option<NoProxyField>,
    /// AKS's CLI file says `trustedCA`; its ARM API says `trustedCa`.
    #[serde(rename = "trustedCA", alias = "trustedCa")]
    trusted_ca: Option<String>,
    /// Redirector extension: `"closed"` or `"open"`.
    #[serde(rename = "failMode")]
    fail_mode: Option<String>,
    /// Redirector extension: whether pod annotations may exempt a pod.
    #[serde(rename = "allowPodOptOut")]
    allow_pod_opt_out: Option<bool>,
    /// Redirector extension: UDP destination ports refused to redirected
    /// pods. Wide integers, so that 0 or 70000 get our message.
    #[serde(rename = "refuseUdpPorts")]
    refuse_udp_ports: Option<Vec<i64>>,
    /// Redirector extension: let redirected pods open stream sockets of
    /// other protocols than TCP and MPTCP (SCTP), which leave direct.
    #[serde(rename = "allowOtherStreamProtocols")]
    allow_other_stream_protocols: Option<bool>,
    /// Redirector extension: `"direct"`, `"useOther"` or `"refuse"`.
    #[serde(rename = "missingProxy")]
    missing_proxy: Option<String>,
    /// Redirector extension: destination ports routed by address without
    /// waiting for the client's first bytes. Wide integers, as above.
    #[serde(rename = "serverFirstPorts")]
    server_first_ports: Option<Vec<i64>>,
    /// Redirector extension: namespaces whose pods are never redirected.
    #[serde(rename = "exemptNamespaces")]
    exempt_namespaces: Option<Vec<String>>,
    /// Redirector extension: whether hostNetwork pods are never redirected.
    #[serde(rename = "exemptHostNetworkPods")]
    exempt_host_network_pods: Option<bool>,
    /// Redirector extension: the cluster's Service ranges, bypassed in the
    /// kernel.
    #[serde(rename = "serviceCidrs")]
    service_cidrs: Option<Vec<String>>,
    /// Redirector extension: headers that tell the proxy who is calling.
    identity: Option<identity::RawIdentity>,
    /// Redirector extension: one JSON line per connection.
    audit: Option<audit::RawAudit>,
    /// Redirector extension: named proxy settings namespaces select.
    profiles: Option<std::collections::BTreeMap<String, profiles::RawProfile>>,
}

/// `exemptNamespaces` when the file has none: the control plane's own
/// add-ons (CNI agents, kube-proxy, CoreDNS, konnectivity-agent,
/// metrics-server) must not depend on the daemon or speak mTLS through a
/// MITM proxy.
pub const DEFAULT_EXEMPT_NAMESPACES: &[&str] = &["kube-system"];

/// Validates `exemptNamespaces`: namespace names (RFC 1123 labels), each once.
fn parse_namespaces(names: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if !valid {
            return Err(format!(
                "entry {i}: `{name}` is not a namespace name (lowercase letters, digits \
                 and `-`, at most 63, starting and ending with a letter or digit)"
            ));
        }
        if out.contains(name) {
            return Err(format!("entry {i}: namespace `{name}` is listed twice"));
        }
        out.push(name.clone());
    }
    Ok(out)
}

/// Validates `serviceCidrs`: CIDRs (`address/prefix-length`), each once.
/// Host bits are cleared, as for `--cluster-cidr`.
fn parse_service_cidrs(cidrs: &[String]) -> Result<Vec<IpNet>, String> {
    let mut out: Vec<IpNet> = Vec::with_capacity(cidrs.len());
    for (i, text) in cidrs.iter().enumerate() {
        let net: IpNet = text.trim().parse().map_err(|_| {
            format!("entry {i}: `{text}` is not a CIDR (address/prefix-length, e.g. 10.0.0.0/16)")
        })?;
        let net = net.trunc();
        if out.contains(&net) {
            return Err(format!("entry {i}: {net} is listed twice"));
        }
        out.push(net);
    }
    Ok(out)
}

/// `refuseUdpPorts` when the file has none: HTTP/3 (QUIC) on 443, the UDP
/// traffic that would otherwise carry web requests around the proxy.
pub const DEFAULT_REFUSE_UDP_PORTS: &[u16] = &[443];

/// Validates `refuseUdpPorts`: ports 1-65535, each once, at most as many as
/// the kernel's set holds.
fn parse_udp_ports(ports: &[i64]) -> Result<Vec<u16>, String> {
    let max = redirector_ebpf::maps::HELD_UDP_PORTS_MAX as usize;
    if ports.len() > max {
        return Err(format!(
            "{} ports; at most {max} (the kernel's set holds no more)",
            ports.len()
        ));
    }
    parse_ports(ports)
}

/// `serverFirstPorts` when the file has none: FTP, SSH, SMTP, POP3, IMAP,
/// mail submission and MySQL, whose servers send a banner before the
/// client says anything.
pub const DEFAULT_SERVER_FIRST_PORTS: &[u16] = &[21, 22, 25, 110, 143, 587, 3306];

/// Most `serverFirstPorts` entries: each connection looks its port up in
/// the list.
const SERVER_FIRST_PORTS_MAX: usize = 1024;

/// Validates `serverFirstPorts`: ports 1-65535, each once.
fn parse_server_first_ports(ports: &[i64]) -> Result<Vec<u16>, String> {
    if ports.len() > SERVER_FIRST_PORTS_MAX {
        return Err(format!(
            "{} ports; at most {SERVER_FIRST_PORTS_MAX}",
            ports.len()
        ));
    }
    parse_ports(ports)
}

/// Ports 1-65535, each once, in the order given.
fn parse_ports(ports: &[i64]) -> Result<Vec<u16>, String> {
    let mut out: Vec<u16> = Vec::with_capacity(ports.len());
    // Entries count from 1, as people count them.
    for (n, &port) in (1..).zip(ports) {
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("entry {n}: {port} is not a port (1-65535)"))?;
        if out.contains(&port) {
            return Err(format!("entry {n}: port {port} is listed twice"));
        }
        out.push(port);
    }
    Ok(out)
}

/// What a connection does when the upstream proxy cannot be reached.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Refuse the client: nothing ever bypasses the proxy.
    #[default]
    Closed,
    /// Connect direct instead: the pod reaches the destination around the
    /// proxy whenever the proxy is unreachable.
    Open,
}

impl FailMode {
    fn parse(value: &str) -> Result<Self, String> {
        match value {
            "closed" => Ok(Self::Closed),
            "open" => Ok(Self::Open),
            other => Err(format!(
                "`{other}` is not a fail mode (allowed: \"closed\", \"open\")"
            )),
        }
    }
}

impl fmt::Display for FailMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Closed => "closed",
            Self::Open => "open",
        })
    }
}

/// What happens to a class of traffic whose proxy key is absent: plain
/// HTTP when only `httpsProxy` is set, TLS and all other TCP when only
/// `httpProxy` is. Which class a connection is in is what its client sends,
/// so with `Direct` a client chooses to leave direct by sending the other
/// class's bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum MissingProxy {
    /// AKS's meaning, as an env-var client does: that class goes direct.
    #[default]
    Direct,
    /// Through the proxy that is set, with `CONNECT host:port`.
    UseOther,
    /// Reset the connection.
    Refuse,
}

impl MissingProxy {
    fn parse(value: &str) -> Result<Self, String> {
        match value {
            "direct" => Ok(Self::Direct),
            "useOther" => Ok(Self::UseOther),
            "refuse" => Ok(Self::Refuse),
            other => Err(format!(
                "`{other}` is not allowed (allowed: \"direct\", \"useOther\", \"refuse\")"
            )),
        }
    }
}

impl fmt::Display for MissingProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Direct => "direct",
            Self::UseOther => "useOther",
            Self::Refuse => "refuse",
        })
    }
}

/// Most proxies one key may list.
const PROXIES_MAX: usize = 8;

/// `httpProxy`/`httpsProxy`: one URL (AKS) or a list of them, for failover.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a proxy URL or a list of proxy URLs")]
enum ProxyField {
    One(String),
    Many(Vec<String>),
}

impl ProxyField {
    /// The first proxy and the others, in order. An empty string or list
    /// means none (direct), as AKS's empty value does.
    fn parse(field: Option<Self>) -> Result<(Option<ProxyUrl>, Vec<ProxyUrl>), String> {
        let values = match field {
            None => return Ok((None, Vec::new())),
            Some(Self::One(one)) => vec![one],
            Some(Self::Many(many)) => many,
        };
        let values: Vec<&str> = values
            .iter()
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .collect();
        if values.len() > PROXIES_MAX {
            return Err(format!("{} proxies; at most {PROXIES_MAX}", values.len()));
        }
        let mut out: Vec<ProxyUrl> = Vec::with_capacity(values.len());
        for (n, value) in (1..).zip(&values) {
            let url = ProxyUrl::parse(value).map_err(|m| {
                if values.len() > 1 {
                    format!("entry {n}: {m}")
                } else {
                    m
                }
            })?;
            if out
                .iter()
                .any(|o| o.authority() == url.authority() && o.tls == url.tls)
            {
                return Err(format!("entry {n}: {url} is listed twice"));
            }
            out.push(url);
        }
        let mut all = out.into_iter();
        Ok((all.next(), all.collect()))
    }
}

/// `noProxy` as AKS writes it (an array) or as a `NO_PROXY` value copied
/// from a pod (one comma-separated string).
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a list of strings or one comma-separated string"
)]
enum NoProxyField {
    List(Vec<String>),
    Csv(String),
}

impl NoProxyField {
    fn entries(self) -> Vec<String> {
        match self {
            Self::List(entries) => entries,
            Self::Csv(csv) => vec![csv],
        }
    }
}

/// A validated proxy configuration.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Proxy for plain HTTP (port 80 style traffic); `None` means direct.
    pub http_proxy: Option<ProxyUrl>,
    /// Proxy for TLS and all other TCP, reached with CONNECT; `None` means direct.
    pub https_proxy: Option<ProxyUrl>,
    /// More proxies for plain HTTP, tried in order when those before are
    /// down (`httpProxy` as a list).
    pub http_proxy_fallbacks: Vec<ProxyUrl>,
    /// More proxies for TLS and other TCP (`httpsProxy` as a list).
    pub https_proxy_fallbacks: Vec<ProxyUrl>,
    /// The `noProxy` rules.
    pub no_proxy: NoProxy,
    /// DER certificates from `trustedCA` (the MITM proxy's CA).
    pub trusted_ca: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// `failMode`: what to do when the upstream proxy is unreachable.
    pub fail_mode: FailMode,
    /// `allowPodOptOut`: whether pod annotations may exempt a pod; when
    /// false only namespace labels count.
    pub allow_pod_opt_out: bool,
    /// `refuseUdpPorts`: UDP destination ports redirected pods may not send
    /// to (the kernel's `HELD_UDP_PORTS`); empty: UDP is left alone.
    pub refuse_udp_ports: Vec<u16>,
    /// `allowOtherStreamProtocols`: let redirected pods open stream sockets
    /// of other protocols than TCP and MPTCP (SCTP), which leave direct.
    pub allow_other_stream_protocols: bool,
    /// `missingProxy`: what happens to a class whose proxy is not set.
    pub missing_proxy: MissingProxy,
    /// `serverFirstPorts`: destination ports routed by address at once,
    /// without peeking (the client waits for the server's banner); empty:
    /// every connection is peeked at.
    pub server_first_ports: Vec<u16>,
    /// `exemptNamespaces`: pods in these namespaces are never redirected.
    pub exempt_namespaces: Vec<String>,
    /// `exemptHostNetworkPods`: hostNetwork pods are never redirected.
    pub exempt_host_network_pods: bool,
    /// `serviceCidrs`: the cluster's Service ranges, bypassed in the kernel.
    pub service_cidrs: Vec<IpNet>,
    /// `identity`: the caller's headers on requests to the proxy (off by
    /// default).
    pub identity: Identity,
    /// `audit`: one JSON line per connection, when set.
    pub audit: Option<Audit>,
    /// `profiles`: proxy settings by name, selected per namespace by the
    /// label `egress-redirector/profile`.
    pub profiles: std::collections::BTreeMap<String, Profile>,
}

impl ProxyConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_digest(path).map(|(config, _)| config)
    }

    /// Reads and validates the file once, returning it with the [`digest`]
    /// of the exact bytes that were parsed.
    pub fn load_with_digest(path: &Path) -> Result<(Self, String), ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            file: file.clone(),
            error,
        })?;
        let config = Self::parse(&file, &text)?;
        Ok((config, digest(text.as_bytes())))
    }

    /// Parses and validates configuration text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let syntax = |message: String| ConfigError::Syntax {
            file: file.to_owned(),
            message,
        };
        if text.trim().is_empty() {
            return Err(syntax(
                "the file is empty (expected a JSON object such as \
                 {\"httpsProxy\": \"http://proxy:3128/\"})"
                    .into(),
            ));
        }
        let de = &mut serde_json::Deserializer::from_str(text);
        let raw: RawConfig =
            serde_path_to_error::deserialize(de).map_err(|e| syntax(syntax_message(text, e)))?;
        let field_error = |field: &'static str, message: String| ConfigError::Field {
            file: file.to_owned(),
            field,
            message,
        };
        let (http_proxy, http_proxy_fallbacks) =
            ProxyField::parse(raw.http_proxy).map_err(|m| field_error("httpProxy", m))?;
        let (https_proxy, https_proxy_fallbacks) =
            ProxyField::parse(raw.https_proxy).map_err(|m| field_error("httpsProxy", m))?;
        let no_proxy_entries = raw.no_proxy.map(NoProxyField::entries).unwrap_or_default();
        let no_proxy = NoProxy::parse(&no_proxy_entries)
            .map_err(|e: NoProxyError| field_error("noProxy", e.to_string()))?;
        let trusted_ca = match raw.trusted_ca.as_deref().map(str::trim) {
            None | Some("") => Vec::new(),
            Some(b64) => parse_trusted_ca(b64).map_err(|m| field_error("trustedCA", m))?,
        };
        let fail_mode = match raw.fail_mode.as_deref() {
            None => FailMode::default(),
            Some(v) => FailMode::parse(v).map_err(|m| field_error("failMode", m))?,
        };
        let refuse_udp_ports = match raw.refuse_udp_ports.as_deref() {
            None => DEFAULT_REFUSE_UDP_PORTS.to_vec(),
            Some(ports) => parse_udp_ports(ports).map_err(|m| field_error("refuseUdpPorts", m))?,
        };
        let server_first_ports = match raw.server_first_ports.as_deref() {
            None => DEFAULT_SERVER_FIRST_PORTS.to_vec(),
            Some(ports) => {
                parse_server_first_ports(ports).map_err(|m| field_error("serverFirstPorts", m))?
            }
        };
        let missing_proxy = match raw.missing_proxy.as_deref() {
            None => MissingProxy::default(),
            Some(v) => MissingProxy::parse(v).map_err(|m| field_error("missingProxy", m))?,
        };
        let exempt_namespaces = match raw.exempt_namespaces.as_deref() {
            None => DEFAULT_EXEMPT_NAMESPACES
                .iter()
                .map(|n| n.to_string())
                .collect(),
            Some(names) => {
                parse_namespaces(names).map_err(|m| field_error("exemptNamespaces", m))?
            }
        };
        let service_cidrs = parse_service_cidrs(raw.service_cidrs.as_deref().unwrap_or_default())
            .map_err(|m| field_error("serviceCidrs", m))?;
        let identity = raw
            .identity
            .unwrap_or_default()
            .validate()
            .map_err(|m| field_error("identity", m))?;
        let audit = raw
            .audit
            .map(audit::RawAudit::validate)
            .transpose()
            .map_err(|m| field_error("audit", m))?;
        let profiles = profiles::parse(raw.profiles.unwrap_or_default())
            .map_err(|m| field_error("profiles", m))?;
        if missing_proxy == MissingProxy::UseOther && http_proxy.is_none() && https_proxy.is_none()
        {
            return Err(field_error(
                "missingProxy",
                "\"useOther\" needs httpProxy or httpsProxy to use (neither is set)".into(),
            ));
        }
        Ok(Self {
            http_proxy,
            http_proxy_fallbacks,
            https_proxy,
            https_proxy_fallbacks,
            no_proxy,
            trusted_ca,
            fail_mode,
            allow_pod_opt_out: raw.allow_pod_opt_out.unwrap_or(true),
            refuse_udp_ports,
            allow_other_stream_protocols: raw.allow_other_stream_protocols.unwrap_or(false),
            missing_proxy,
            exempt_namespaces,
            exempt_host_network_pods: raw.exempt_host_network_pods.unwrap_or(true),
            service_cidrs,
            server_first_ports,
            identity,
            audit,
            profiles,
        })
    }

    /// Every proxy the file names: each class's, in order, then each
    /// profile's.
    pub fn all_proxies(&self) -> impl Iterator<Item = &ProxyUrl> {
        let top = [&self.https_proxy, &self.http_proxy].into_iter().flatten();
        let top = top
            .chain(&self.https_proxy_fallbacks)
            .chain(&self.http_proxy_fallbacks);
        let profiles = self.profiles.values().flat_map(|p| {
            [&p.https_proxy, &p.http_proxy]
                .into_iter()
                .flatten()
                .chain(&p.https_proxy_fallbacks)
                .chain(&p.http_proxy_fallbacks)
        });
        top.chain(profiles)
    }

    /// Every certificate the proxies may present: `trustedCA` and every
    /// profile's (one TLS client setting serves all proxies).
    pub fn all_trusted_ca(&self) -> Vec<rustls_pki_types::CertificateDer<'static>> {
        let profiles = self.profiles.values().flat_map(|p| p.trusted_ca.iter());
        self.trusted_ca.iter().chain(profiles).cloned().collect()
    }

    /// Whether connections to `port` are routed by address at once
    /// (`serverFirstPorts`).
    pub fn is_server_first(&self, port: u16) -> bool {
        self.server_first_ports.contains(&port)
    }
}

/// A short digest of a configuration file's bytes: the first 12 hex digits
/// of its SHA-256, for logs and `status`.
pub fn digest(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// What is wrong with a file that does not parse: not JSON at all (with
/// the first bytes seen), cut short (where it ends, and in which field), or
/// a field of the wrong shape.
fn syntax_message(text: &str, e: serde_path_to_error::Error<serde_json::Error>) -> String {
    // serde_path_to_error names a field it has not read yet `?`: say
    // nothing rather than that.
    let path = e.path().to_string();
    let field = if path.is_empty() || path == "." || path.contains('?') {
        String::new()
    } else {
        format!("field `{path}`: ")
    };
    let inner = e.into_inner();
    let at = format!("line {} column {}", inner.line(), inner.column());
    match inner.classify() {
        serde_json::error::Category::Eof => {
            format!("{field}the file ends early, at {at}: is it cut short?")
        }
        serde_json::error::Category::Syntax if !text.trim_start().starts_with('{') => {
            let start: String = text.trim_start().chars().take(24).collect();
            format!("not JSON (a JSON object {{...}} was expected; the file starts with `{start}`)")
        }
        _ => format!("{field}{inner}"),
    }
}

/// `trustedCA` is base64 of one or more PEM certificates.
fn parse_trusted_ca(b64: &str) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let pem = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| base64_message(b64, e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("decodes to no PEM certificate (expected base64 of a PEM file)".into());
    }
    Ok(certs)
}

/// A base64 error with the character shown and positions counted from 1
/// (the decoder says "Invalid symbol 32, offset 3").
fn base64_message(b64: &str, e: base64::DecodeError) -> String {
    let shown = |c: char| match c {
        ' ' => "a space".to_owned(),
        '\n' => "a line break".to_owned(),
        '\t' => "a tab".to_owned(),
        c => format!("`{c}`"),
    };
    match e {
        base64::DecodeError::InvalidByte(offset, _)
        | base64::DecodeError::InvalidLastSymbol(offset, _) => {
            let c = b64[offset..].chars().next().unwrap_or('?');
            format!(
                "not base64: {} at position {} is not a base64 character (the value must be \
                 the PEM file's base64, on one line)",
                shown(c),
                offset + 1
            )
        }
        base64::DecodeError::InvalidLength(len) => {
            format!("not base64: {len} characters cannot be base64 (cut short?)")
        }
        base64::DecodeError::InvalidPadding => "not base64: wrong `=` padding at the end".into(),
    }
}

/// An upstream proxy URL. `Display` and `Debug` never show credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    /// `https://`: TLS to the proxy itself.
    pub tls: bool,
    /// Host name or IP literal (without IPv6 brackets).
    pub host: String,
    pub port: u16,
    /// `user:password` from the URL, percent-decoded, for Basic auth.
    pub credentials: Option<(String, String)>,
}

impl ProxyUrl {
    /// Parses a proxy URL as Go's `httpproxy` does: no scheme means `http://`,
    /// and a missing port is the scheme's default.
    pub fn parse(value: &str) -> Result<Self, String> {
        let with_scheme = if value.contains("://") {
            value.to_owned()
        } else {
            format!("http://{value}")
        };
        // Before the URL parser, which would read these differently from
        // what the operator meant without a word.
        check_credential_delimiters(value).map_err(|e| format!("`{}`: {e}", redact(value)))?;
        let url = Url::parse(&with_scheme).map_err(|e| format!("`{}`: {e}", redact(value)))?;
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            other => {
                return Err(format!(
                    "`{}`: unsupported scheme `{other}` (http:// or https://)",
                    redact(value)
                ));
            }
        };
        let host = match url.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
            None => return Err(format!("`{}`: no host", redact(value))),
        };
        let port = url.port_or_known_default().unwrap_or(80);
        let credentials = if url.username().is_empty() {
            None
        } else {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .map(|c| c.into_owned())
                    .map_err(|_| format!("`{}`: credentials are not UTF-8", redact(value)))
            };
            Some((
                decode(url.username())?,
                decode(url.password().unwrap_or(""))?,
            ))
        };
        Ok(Self {
            tls,
            host,
            port,
            credentials,
        })
    }

    /// `host:port` with brackets for IPv6, as used to dial.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The URL without credentials, fit for logs, errors and `explain`.
impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.authority())
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Refuses a `user:password@` part that holds a delimiter unencoded: a
/// URL parser splits there and reads another URL than the operator meant.
/// `http://user:p/ss@proxy:8080` would name host `user` with port `p` and
/// path `/ss@proxy:8080`; `http://user:p@ss@proxy` (or `us@er`) is split at
/// the last `@` by one parser and the first by another. The message names
/// the character's position and the fix, and never the password.
fn check_credential_delimiters(value: &str) -> Result<(), String> {
    // Where the authority starts: after a real scheme's `://`, else at 0
    // (no scheme: `http://` is implied).
    let start = match value.find("://") {
        Some(s)
            if !value[..s].is_empty()
                && value[..s]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
        {
            s + 3
        }
        _ => 0,
    };
    let rest = &value[start..];
    // 1-based character positions in the value as written.
    let position = |byte: usize| value[..start + byte].chars().count() + 1;
    // The authority ends at the first of these (`\` too: URL parsers
    // treat it as `/` in http(s) URLs).
    let end = rest.find(['/', '?', '#', '\\']);
    let ats: Vec<usize> = rest.match_indices('@').map(|(i, _)| i).collect();
    if let Some(end) = end
        && let Some(&late_at) = ats.iter().find(|&&at| at > end)
    {
        let delimiter = rest[end..].chars().next().unwrap_or('/');
        return Err(format!(
            "the `{delimiter}` at character {} ends the host part, so the `@` at \
             character {} does not end the user:password part: percent-encode `{delimiter}` \
             in a user name or password as {} (in general: `/` %2F, `?` %3F, `#` %23, `@` %40)",
            position(end),
            position(late_at),
            percent_encoded(delimiter),
        ));
    }
    let in_authority: Vec<usize> = ats
        .iter()
        .copied()
        .filter(|&at| end.is_none_or(|end| at < end))
        .collect();
    if in_authority.len() > 1 {
        let positions: Vec<String> = in_authority
            .iter()
            .map(|&at| position(at).to_string())
            .collect();
        return Err(format!(
            "more than one `@` before the host (characters {}): only the last one may \
             end the user:password part; an `@` in a user name or password must be \
             percent-encoded as %40",
            positions.join(", ")
        ));
    }
    Ok(())
}

/// `c` percent-encoded, for the delimiters [`check_credential_delimiters`] names.
fn percent_encoded(c: char) -> String {
    let mut buf = [0u8; 4];
    c.encode_utf8(&mut buf)
        .bytes()
        .map(|b| format!("%{b:02X}"))
        .collect()
}

/// Hides `user:password@` in a URL string that failed to parse.
fn redact(value: &str) -> String {
    // Everything before the last `@` may be credentials, except a real
    // scheme (`http://`): a `://` later in the value, or after something
    // that is not a scheme (`u:a://b@host`), must not shield the password.
    let Some(at) = value.rfind('@') else {
        return value.to_owned();
    };
    let is_scheme = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    };
    let keep = match value.find("://") {
        Some(s) if s < at && is_scheme(&value[..s]) => s + 3,
        _ => 0,
    };
    format!("{}***{}", &value[..keep], &value[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_b64() -> String {
        crate::ca::GeneratedCa::generate()
            .unwrap()
            .trusted_ca_base64()
    }

    fn parse(text: &str) -> Result<ProxyConfig, ConfigError> {
        ProxyConfig::parse("proxy.json", text)
    }

    /// Messages a newcomer can act on: what is wrong, where, once.
    #[test]
    fn bad_files_say_what_is_wrong() {
        let msg = |text: &str| parse(text).unwrap_err().to_string();
        for empty in ["", "  \n\t"] {
            assert!(msg(empty).contains("the file is empty"), "{:?}", msg(empty));
        }
        let m = msg("httpsProxy: http://proxy:3128/");
        assert!(
            m.contains("not JSON") && m.contains("starts with `httpsProxy: http://proxy`"),
            "{m}"
        );
        let m = msg(r#"{"httpProxy": "http://x:1/", "noProxy": ["#);
        assert!(
            m.contains("field `noProxy`") && m.contains("ends early, at line 1 column 41"),
            "{m}"
        );
        // Cut inside a value: no `?` for a field not read yet.
        let m = msg(r#"{"httpsProxy": "http://x"#);
        assert!(
            m.contains("field `httpsProxy`: the file ends early") && !m.contains("`?`"),
            "{m}"
        );
        let m = msg(r#"{"trustedCA": "abc def"}"#);
        assert!(m.contains("a space at position 4"), "{m}");
        let m = msg(r#"{"trustedCA": "ab!d"}"#);
        assert!(m.contains("`!` at position 3"), "{m}");
        let m = msg(r#"{"noProxy": ["a.example", "10.0.0.0/33"]}"#);
        assert!(m.contains("entry 2 `10.0.0.0/33`"), "{m}");
        let m = msg(r#"{"refuseUdpPorts": [443, 0]}"#);
        assert!(m.contains("entry 2: 0 is not a port"), "{m}");
    }

    /// A missing file: its path and the OS error, once (also through
    /// anyhow's `{:#}`, which prints the source chain).
    #[test]
    fn a_missing_file_says_so_once() {
        let err = ProxyConfig::load(Path::new("/nonexistent/proxy.json")).unwrap_err();
        let shown = format!("{:#}", anyhow::Error::from(err));
        assert!(
            shown.starts_with("/nonexistent/proxy.json: cannot read"),
            "{shown}"
        );
        assert_eq!(shown.matches("os error 2").count(), 1, "{shown}");
    }

    #[test]
    fn digest_is_short_sha256() {
        // SHA-256("") = e3b0c44298fc1c149afbf4c8996fb924...
        assert_eq!(digest(b""), "e3b0c44298fc");
        assert_eq!(digest(b"{}").len(), 12);
        assert_ne!(digest(b"{}"), digest(b"{ }"));
    }

    #[test]
    fn accepts_the_aks_sample() {
        let cfg = parse(&format!(
            r#"{{"httpProxy": "http://10.0.0.4:8080/", "httpsProxy": "http://u%40x:p%3Ass@10.0.0.4:8080/",
                "noProxy": ["localhost", "127.0.0.1", "docker.io", "10.10.0.0/24"], "trustedCA": "{}"}}"#,
            ca_b64()
        ))
        .unwrap();
        let https = cfg.https_proxy.unwrap();
        assert_eq!(https.authority(), "10.0.0.4:8080");
        assert_eq!(
            https.credentials,
            Some(("u@x".to_owned(), "p:ss".to_owned()))
        );
        assert_eq!(https.to_string(), "http://10.0.0.4:8080");
        assert_eq!(cfg.trusted_ca.len(), 1);
        assert_eq!(cfg.no_proxy.kernel_bypass().count(), 2);
    }

    #[test]
    fn unknown_key_names_file_and_field() {
        let err = parse(r#"{"httpsProxyy": "http://p:1"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("proxy.json:"), "{err}");
        assert!(err.contains("httpsProxyy"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let err = parse(r#"{"noProxy": ["a", 3]}"#).unwrap_err().to_string();
        assert!(err.contains("noProxy"), "{err}");
        let err = parse(r#"{"httpProxy": 1}"#).unwrap_err().to_string();
        assert!(err.contains("httpProxy"), "{err}");
    }

    #[test]
    fn malformed_json_is_an_error() {
        let err = parse("{\"httpProxy\": ").unwrap_err().to_string();
        assert!(err.starts_with("proxy.json:"), "{err}");
    }

    #[test]
    fn bad_values_name_their_field() {
        for (text, field) in [
            (r#"{"httpsProxy": "ftp://p:1"}"#, "httpsProxy"),
            (r#"{"noProxy": 3}"#, "noProxy"),
            (r#"{"httpProxy": "http://"}"#, "httpProxy"),
            (r#"{"trustedCA": "!!!"}"#, "trustedCA"),
            (r#"{"trustedCA": "aGVsbG8="}"#, "trustedCA"),
            (r#"{"noProxy": ["10.0.0.0/33"]}"#, "noProxy"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(&format!("field `{field}`")), "{text}: {err}");
        }
    }

    #[test]
    fn proxy_url_forms() {
        assert_eq!(
            ProxyUrl::parse("10.0.0.4:3128").unwrap().authority(),
            "10.0.0.4:3128"
        );
        assert_eq!(ProxyUrl::parse("http://proxy.corp").unwrap().port, 80);
        assert_eq!(
            ProxyUrl::parse("http://[fd00::1]:3128/")
                .unwrap()
                .authority(),
            "[fd00::1]:3128"
        );
        let https = ProxyUrl::parse("https://user:secret@p").unwrap();
        assert!(https.tls);
        assert_eq!(https.port, 443);
        assert_eq!(https.to_string(), "https://p:443");
        let err = ProxyUrl::parse("socks5://user:secret@p:1").unwrap_err();
        assert!(err.contains("unsupported scheme"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn unencoded_delimiters_in_credentials_are_refused_by_position() {
        for (value, needles) in [
            // The `/` ends the host part: `user` would be the host.
            (
                "http://user:p/ss@proxy:8080",
                &["`/` at character 14", "`@` at character 17", "%2F"][..],
            ),
            (
                "user:p/ss@proxy:8080",
                &["`/` at character 7", "`@` at character 10", "%2F"],
            ),
            (
                "http://user:p?ss@proxy:8080",
                &["`?` at character 14", "%3F"],
            ),
            (
                "http://user:p#ss@proxy:8080",
                &["`#` at character 14", "%23"],
            ),
            (
                "http://user:p\\ss@proxy:8080",
                &["`\\` at character 14", "%5C"],
            ),
            // Two `@`: the split would be a guess.
            ("http://user:p@ss@proxy:8080", &["characters 14, 17", "%40"]),
            ("http://us@er:pazz@proxy", &["characters 10, 18", "%40"]),
            ("https://a@b@c@proxy", &["characters 10, 12, 14", "%40"]),
        ] {
            let err = ProxyUrl::parse(value).expect_err(value);
            for needle in needles {
                assert!(err.contains(needle), "{value}: no {needle:?} in {err}");
            }
            assert!(err.contains("percent-encode"), "{value}: {err}");
            for secret in [
                "p/ss", "p?ss", "p#ss", "p\\ss", "p@ss", "ss@", "pazz", "us@er",
            ] {
                assert!(!err.contains(secret), "{value}: {secret:?} in {err}");
            }
            // The file's error names the field too.
            let json = serde_json::json!({ "httpsProxy": value }).to_string();
            let err = parse(&json).unwrap_err().to_string();
            assert!(err.contains("field `httpsProxy`"), "{err}");
            assert!(err.contains("percent-encode"), "{err}");
        }
    }

    #[test]
    fn percent_encoded_delimiters_in_credentials_work() {
        for (value, user, password) in [
            ("http://user:p%2Fss@proxy:8080", "user", "p/ss"),
            ("http://user:p%40ss@proxy:8080", "user", "p@ss"),
            ("http://us%40er:pass@proxy", "us@er", "pass"),
            ("user:p%3Fs%23s%5C@proxy:8080", "user", "p?s#s\\"),
            // `:` needs no encoding in the password: the first one splits.
            ("http://user:p:ss@proxy:8080", "user", "p:ss"),
        ] {
            let url = ProxyUrl::parse(value).unwrap_or_else(|e| panic!("{value}: {e}"));
            assert_eq!(url.host, "proxy", "{value}");
            assert_eq!(
                url.credentials,
                Some((user.to_owned(), password.to_owned())),
                "{value}"
            );
        }
        // A path after the host (ignored) is fine while it holds no `@`.
        assert_eq!(
            ProxyUrl::parse("http://u:p@proxy:8080/x/").unwrap().port,
            8080
        );
    }

    /// Issue 18: a list of proxies for one class, for failover.
    #[test]
    fn a_proxy_key_may_list_several_proxies() {
        let cfg = parse(
            r#"{"httpsProxy": ["http://a:3128", "http://b:3128"], "httpProxy": "http://c:1"}"#,
        )
        .unwrap();
        assert_eq!(cfg.https_proxy.unwrap().host, "a");
        let hosts: Vec<&str> = cfg
            .https_proxy_fallbacks
            .iter()
            .map(|p| p.host.as_str())
            .collect();
        assert_eq!(hosts, ["b"]);
        assert!(cfg.http_proxy_fallbacks.is_empty());
        assert!(
            parse(r#"{"httpsProxy": []}"#)
                .unwrap()
                .https_proxy
                .is_none()
        );
        for (text, needle) in [
            (
                r#"{"httpsProxy": ["http://a:1", "http://a:1/"]}"#,
                "entry 2: http://a:1 is listed twice",
            ),
            (
                r#"{"httpsProxy": ["http://a:1", "socks5://b:1"]}"#,
                "entry 2: ",
            ),
            (
                r#"{"httpsProxy": [1]}"#,
                "a proxy URL or a list of proxy URLs",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(
                err.contains("httpsProxy") && err.contains(needle),
                "{text}: no {needle:?} in {err}"
            );
        }
        let nine: Vec<String> = (1..=9).map(|i| format!("\"http://p{i}:1\"")).collect();
        let err = parse(&format!(r#"{{"httpsProxy": [{}]}}"#, nine.join(","))).unwrap_err();
        assert!(err.to_string().contains("9 proxies; at most 8"), "{err}");
    }

    #[test]
    fn no_proxy_as_one_comma_separated_string() {
        let list = parse(r#"{"noProxy": ["a.example", "10.0.0.0/8"]}"#).unwrap();
        let csv = parse(r#"{"noProxy": "a.example, 10.0.0.0/8"}"#).unwrap();
        assert_eq!(list.no_proxy, csv.no_proxy);
    }

    #[test]
    fn extension_keys_default_for_aks_files() {
        let cfg = parse(r#"{"httpsProxy": "http://10.0.0.4:8080/"}"#).unwrap();
        assert_eq!(cfg.fail_mode, FailMode::Closed);
        assert!(cfg.allow_pod_opt_out);
        assert_eq!(cfg.refuse_udp_ports, [443]);
        assert!(!cfg.allow_other_stream_protocols);
        assert_eq!(cfg.missing_proxy, MissingProxy::Direct);
        assert_eq!(cfg.exempt_namespaces, ["kube-system"]);
        assert!(cfg.exempt_host_network_pods);
        assert!(cfg.service_cidrs.is_empty());
    }

    #[test]
    fn exempt_namespaces_accepts_a_list_or_none() {
        let names = |text: &str| parse(text).unwrap().exempt_namespaces;
        assert_eq!(
            names(r#"{"exemptNamespaces": ["kube-system", "calico-system"]}"#),
            ["kube-system", "calico-system"]
        );
        assert!(
            names(r#"{"exemptNamespaces": []}"#).is_empty(),
            "[] exempts none"
        );
        assert_eq!(names(r#"{"exemptNamespaces": null}"#), ["kube-system"]);
        for (text, needle) in [
            (
                r#"{"exemptNamespaces": ["Kube-System"]}"#,
                "entry 0: `Kube-System` is not a namespace name",
            ),
            (
                r#"{"exemptNamespaces": ["a", ""]}"#,
                "entry 1: `` is not a namespace name",
            ),
            (r#"{"exemptNamespaces": ["-a"]}"#, "is not a namespace name"),
            (
                r#"{"exemptNamespaces": ["a b"]}"#,
                "is not a namespace name",
            ),
            (
                r#"{"exemptNamespaces": ["a", "a"]}"#,
                "entry 1: namespace `a` is listed twice",
            ),
            (r#"{"exemptNamespaces": "kube-system"}"#, "exemptNamespaces"),
            (r#"{"exemptNamespaces": [1]}"#, "exemptNamespaces[0]"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains("exemptNamespaces"), "{text}: {err}");
            assert!(err.contains(needle), "{text}: no {needle:?} in {err}");
        }
        let long = "a".repeat(64);
        assert!(parse(&format!(r#"{{"exemptNamespaces": ["{long}"]}}"#)).is_err());
    }

    #[test]
    fn exempt_host_network_pods_is_a_bool() {
        assert!(
            !parse(r#"{"exemptHostNetworkPods": false}"#)
                .unwrap()
                .exempt_host_network_pods
        );
        let err = parse(r#"{"exemptHostNetworkPods": "no"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("exemptHostNetworkPods"), "{err}");
    }

    #[test]
    fn service_cidrs_are_cidrs() {
        let cidrs = |text: &str| parse(text).unwrap().service_cidrs;
        assert_eq!(
            cidrs(r#"{"serviceCidrs": ["10.0.0.0/16", "fd00:10::/108"]}"#),
            [
                "10.0.0.0/16".parse::<IpNet>().unwrap(),
                "fd00:10::/108".parse().unwrap()
            ]
        );
        // Host bits cleared, as for --cluster-cidr.
        assert_eq!(
            cidrs(r#"{"serviceCidrs": ["10.0.3.1/16"]}"#),
            ["10.0.0.0/16".parse::<IpNet>().unwrap()]
        );
        for (text, needle) in [
            (
                r#"{"serviceCidrs": ["10.0.0.1"]}"#,
                "entry 0: `10.0.0.1` is not a CIDR",
            ),
            (r#"{"serviceCidrs": ["10.0.0.0/33"]}"#, "is not a CIDR"),
            (
                r#"{"serviceCidrs": ["svc.cluster.local"]}"#,
                "is not a CIDR",
            ),
            (
                r#"{"serviceCidrs": ["10.0.0.0/16", "10.0.9.9/16"]}"#,
                "entry 1: 10.0.0.0/16 is listed twice",
            ),
            (r#"{"serviceCidrs": "10.0.0.0/16"}"#, "serviceCidrs"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains("serviceCidrs"), "{text}: {err}");
            assert!(err.contains(needle), "{text}: no {needle:?} in {err}");
        }
    }

    #[test]
    fn missing_proxy_takes_its_three_values_and_nothing_else() {
        let one = r#""httpsProxy": "http://10.0.0.4:8080/""#;
        for (value, want) in [
            ("direct", MissingProxy::Direct),
            ("useOther", MissingProxy::UseOther),
            ("refuse", MissingProxy::Refuse),
        ] {
            let cfg = parse(&format!(r#"{{{one}, "missingProxy": "{value}"}}"#)).unwrap();
            assert_eq!(cfg.missing_proxy, want);
            assert_eq!(cfg.missing_proxy.to_string(), value);
        }
        for bad in [r#""useother""#, r#""proxy""#, "true"] {
            let err = parse(&format!(r#"{{{one}, "missingProxy": {bad}}}"#))
                .unwrap_err()
                .to_string();
            assert!(err.contains("missingProxy"), "{bad}: {err}");
        }
        // Nothing to use: said at load, not found out per connection.
        let err = parse(r#"{"missingProxy": "useOther"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("field `missingProxy`") && err.contains("needs httpProxy or httpsProxy"),
            "{err}"
        );
        assert!(parse(r#"{"missingProxy": "refuse"}"#).is_ok());
    }

    #[test]
    fn refuse_udp_ports_accepts_a_list_or_none() {
        let ports = |text: &str| parse(text).unwrap().refuse_udp_ports;
        assert_eq!(ports(r#"{"refuseUdpPorts": [443, 8443]}"#), [443, 8443]);
        assert_eq!(ports(r#"{"refuseUdpPorts": [1, 65535]}"#), [1, 65535]);
        assert!(ports(r#"{"refuseUdpPorts": []}"#).is_empty(), "[] disables");
        assert_eq!(
            ports(r#"{"refuseUdpPorts": null}"#),
            [443],
            "null is the default"
        );
        let full: Vec<String> = (1..=64).map(|p| p.to_string()).collect();
        let text = format!(r#"{{"refuseUdpPorts": [{}]}}"#, full.join(","));
        assert_eq!(ports(&text).len(), 64);
    }

    #[test]
    fn refuse_udp_ports_rejects_bad_lists() {
        let too_many: Vec<String> = (1..=65).map(|p| p.to_string()).collect();
        let too_many = format!(r#"{{"refuseUdpPorts": [{}]}}"#, too_many.join(","));
        for (text, needle) in [
            (
                r#"{"refuseUdpPorts": [0]}"#,
                "entry 1: 0 is not a port (1-65535)",
            ),
            (
                r#"{"refuseUdpPorts": [443, 65536]}"#,
                "entry 2: 65536 is not a port",
            ),
            (r#"{"refuseUdpPorts": [-1]}"#, "-1 is not a port"),
            (
                r#"{"refuseUdpPorts": [443, 80, 443]}"#,
                "entry 3: port 443 is listed twice",
            ),
            (too_many.as_str(), "65 ports; at most 64"),
            (r#"{"refuseUdpPorts": ["443"]}"#, "refuseUdpPorts[0]"),
            (r#"{"refuseUdpPorts": 443}"#, "refuseUdpPorts"),
            (r#"{"refuseUdpPorts": [44.3]}"#, "refuseUdpPorts[0]"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains("refuseUdpPorts"), "{text}: {err}");
            assert!(err.contains(needle), "{text}: no {needle:?} in {err}");
        }
    }

    #[test]
    fn server_first_ports_default_accept_a_list_and_refuse_bad_ones() {
        let ports = |text: &str| parse(text).unwrap().server_first_ports;
        assert_eq!(ports("{}"), [21, 22, 25, 110, 143, 587, 3306]);
        assert_eq!(ports(r#"{"serverFirstPorts": null}"#), ports("{}"));
        assert!(
            ports(r#"{"serverFirstPorts": []}"#).is_empty(),
            "[] disables"
        );
        assert_eq!(ports(r#"{"serverFirstPorts": [2222, 1]}"#), [2222, 1]);
        let cfg = parse(r#"{"serverFirstPorts": [2222]}"#).unwrap();
        assert!(cfg.is_server_first(2222) && !cfg.is_server_first(22));
        let too_many: Vec<String> = (1..=1025).map(|p| p.to_string()).collect();
        let too_many = format!(r#"{{"serverFirstPorts": [{}]}}"#, too_many.join(","));
        for (text, needle) in [
            (r#"{"serverFirstPorts": [0]}"#, "entry 1: 0 is not a port"),
            (
                r#"{"serverFirstPorts": [22, 65536]}"#,
                "entry 2: 65536 is not a port",
            ),
            (
                r#"{"serverFirstPorts": [22, 22]}"#,
                "port 22 is listed twice",
            ),
            (r#"{"serverFirstPorts": ["22"]}"#, "serverFirstPorts[0]"),
            (r#"{"serverFirstPorts": 22}"#, "serverFirstPorts"),
            (too_many.as_str(), "1025 ports; at most 1024"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains("serverFirstPorts"), "{text}: {err}");
            assert!(err.contains(needle), "{text}: no {needle:?} in {err}");
        }
    }

    #[test]
    fn allow_other_stream_protocols_is_a_bool() {
        let cfg = parse(r#"{"allowOtherStreamProtocols": true}"#).unwrap();
        assert!(cfg.allow_other_stream_protocols);
        let err = parse(r#"{"allowOtherStreamProtocols": "yes"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("allowOtherStreamProtocols"), "{err}");
    }

    #[test]
    fn extension_keys_accept_their_values() {
        let cfg = parse(r#"{"failMode": "open", "allowPodOptOut": false}"#).unwrap();
        assert_eq!(cfg.fail_mode, FailMode::Open);
        assert_eq!(cfg.fail_mode.to_string(), "open");
        assert!(!cfg.allow_pod_opt_out);
        let cfg = parse(r#"{"failMode": "closed", "allowPodOptOut": true}"#).unwrap();
        assert_eq!(cfg.fail_mode, FailMode::Closed);
        assert_eq!(cfg.fail_mode.to_string(), "closed");
        assert!(cfg.allow_pod_opt_out);
    }

    #[test]
    fn extension_keys_reject_bad_values() {
        let err = parse(r#"{"failMode": "Open"}"#).unwrap_err().to_string();
        assert!(err.contains("field `failMode`"), "{err}");
        assert!(err.contains(r#""closed", "open""#), "{err}");
        for text in [
            r#"{"failMode": 1}"#,
            r#"{"allowPodOptOut": "false"}"#,
            r#"{"allowPodOptOut": 0}"#,
        ] {
            let err = parse(text).unwrap_err().to_string();
            let field = if text.contains("failMode") {
                "failMode"
            } else {
                "allowPodOptOut"
            };
            assert!(err.contains(field), "{text}: {err}");
        }
    }

    #[test]
    fn empty_values_mean_direct() {
        let cfg = parse(r#"{"httpProxy": "", "httpsProxy": " "}"#).unwrap();
        assert!(cfg.http_proxy.is_none() && cfg.https_proxy.is_none());
    }
}
