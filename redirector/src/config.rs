//! The proxy configuration: AKS's HTTP proxy JSON, accepted as AKS
//! documents it (`az aks create --http-proxy-config FILE`):
//!
//! ```json
//! { "httpProxy": "http://10.0.0.4:8080/", "httpsProxy": "http://10.0.0.4:8080/",
//!   "noProxy": ["localhost", "10.0.0.0/16"], "trustedCA": "<base64 PEM>" }
//! ```
//!
//! Two redirector-only keys extend it: `failMode` (`"closed"`, the default,
//! or `"open"`) and `allowPodOptOut` (default `true`, as AKS honours pod
//! annotations). Files without them are plain AKS files.
//!
//! Unknown keys are rejected rather than ignored: a typo such as
//! `httpsProxyy` would otherwise silently send traffic direct.
use std::{fmt, path::Path};

use base64::Engine as _;
use serde::Deserialize;
use thiserror::Error;
use url::Url;

use crate::noproxy::{NoProxy, NoProxyError};

/// Why a proxy configuration file was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
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
    #[serde(rename = "httpProxy")]
    http_proxy: Option<String>,
    #[serde(rename = "httpsProxy")]
    https_proxy: Option<String>,
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
    /// The `noProxy` rules.
    pub no_proxy: NoProxy,
    /// DER certificates from `trustedCA` (the MITM proxy's CA).
    pub trusted_ca: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// `failMode`: what to do when the upstream proxy is unreachable.
    pub fail_mode: FailMode,
    /// `allowPodOptOut`: whether pod annotations may exempt a pod; when
    /// false only namespace labels count.
    pub allow_pod_opt_out: bool,
}

impl ProxyConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&file, &text)
    }

    /// Parses and validates configuration text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = if path == "." || path.is_empty() {
                inner.to_string()
            } else {
                format!("field `{path}`: {inner}")
            };
            ConfigError::Syntax {
                file: file.to_owned(),
                message,
            }
        })?;
        let field_error = |field: &'static str, message: String| ConfigError::Field {
            file: file.to_owned(),
            field,
            message,
        };
        let http_proxy = ProxyUrl::parse_optional(raw.http_proxy.as_deref())
            .map_err(|m| field_error("httpProxy", m))?;
        let https_proxy = ProxyUrl::parse_optional(raw.https_proxy.as_deref())
            .map_err(|m| field_error("httpsProxy", m))?;
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
        Ok(Self {
            http_proxy,
            https_proxy,
            no_proxy,
            trusted_ca,
            fail_mode,
            allow_pod_opt_out: raw.allow_pod_opt_out.unwrap_or(true),
        })
    }
}

/// `trustedCA` is base64 of one or more PEM certificates.
fn parse_trusted_ca(b64: &str) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let pem = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("not base64: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("decodes to no PEM certificate (expected base64 of a PEM file)".into());
    }
    Ok(certs)
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
    fn parse_optional(value: Option<&str>) -> Result<Option<Self>, String> {
        match value.map(str::trim) {
            None | Some("") => Ok(None),
            Some(v) => Self::parse(v).map(Some),
        }
    }

    /// Parses a proxy URL as Go's `httpproxy` does: no scheme means `http://`,
    /// and a missing port is the scheme's default.
    pub fn parse(value: &str) -> Result<Self, String> {
        let with_scheme = if value.contains("://") {
            value.to_owned()
        } else {
            format!("http://{value}")
        };
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
