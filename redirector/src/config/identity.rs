//! `identity`: which headers tell the upstream proxy who is calling.
//!
//! ```json
//! "identity": { "forwardedFor": true, "forwarded": true,
//!               "namespaceHeader": "X-Egress-Namespace", "podHeader": "X-Egress-Pod" }
//! ```
//!
//! Off by default: without the key nothing is added or removed.
use http::HeaderName;
use serde::Deserialize;

/// The key as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentity {
    #[serde(rename = "forwardedFor")]
    forwarded_for: Option<bool>,
    forwarded: Option<bool>,
    #[serde(rename = "namespaceHeader")]
    namespace_header: Option<String>,
    #[serde(rename = "podHeader")]
    pod_header: Option<String>,
}

/// The validated `identity` key.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `X-Forwarded-For: <pod address>`.
    pub forwarded_for: bool,
    /// `Forwarded: for=<pod address>` (RFC 7239).
    pub forwarded: bool,
    /// A header naming the pod's namespace, when it is known.
    pub namespace_header: Option<HeaderName>,
    /// A header naming the pod, when it is known.
    pub pod_header: Option<HeaderName>,
}

impl Identity {
    /// Whether any header is added (and the pod's own copies removed).
    pub fn enabled(&self) -> bool {
        self.forwarded_for
            || self.forwarded
            || self.namespace_header.is_some()
            || self.pod_header.is_some()
    }
}

/// Headers an identity header may not be: framing, routing, credentials,
/// and the two address headers we write ourselves.
const RESERVED: &[&str] = &[
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
    "authorization",
    "cookie",
    "x-forwarded-for",
    "forwarded",
];

impl RawIdentity {
    pub(super) fn validate(self) -> Result<Identity, String> {
        let header = |field: &str, value: Option<String>| -> Result<Option<HeaderName>, String> {
            let Some(value) = value else { return Ok(None) };
            let name = HeaderName::from_bytes(value.trim().as_bytes()).map_err(|_| {
                format!(
                    "{field}: `{value}` is not a header name (letters, digits and `-`, e.g. \
                     \"X-Egress-Pod\")"
                )
            })?;
            if RESERVED.contains(&name.as_str()) {
                return Err(format!(
                    "{field}: `{value}` is a header the redirector or HTTP itself uses; \
                     choose another name (e.g. \"X-Egress-Pod\")"
                ));
            }
            Ok(Some(name))
        };
        let namespace_header = header("namespaceHeader", self.namespace_header)?;
        let pod_header = header("podHeader", self.pod_header)?;
        if namespace_header.is_some() && namespace_header == pod_header {
            return Err("namespaceHeader and podHeader name the same header".into());
        }
        Ok(Identity {
            forwarded_for: self.forwarded_for.unwrap_or(false),
            forwarded: self.forwarded.unwrap_or(false),
            namespace_header,
            pod_header,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Identity, String> {
        serde_json::from_str::<RawIdentity>(text)
            .map_err(|e| e.to_string())?
            .validate()
    }

    #[test]
    fn off_unless_asked() {
        assert!(!parse("{}").unwrap().enabled());
        let all = parse(
            r#"{"forwardedFor": true, "forwarded": true,
                "namespaceHeader": "X-Egress-Namespace", "podHeader": "X-Egress-Pod"}"#,
        )
        .unwrap();
        assert!(all.enabled() && all.forwarded_for && all.forwarded);
        assert_eq!(all.pod_header.unwrap().as_str(), "x-egress-pod");
        assert!(parse(r#"{"podHeader": "X-Pod"}"#).unwrap().enabled());
    }

    #[test]
    fn refuses_bad_and_reserved_names() {
        for (text, needle) in [
            (r#"{"podHeader": "X Pod"}"#, "is not a header name"),
            (r#"{"podHeader": ""}"#, "is not a header name"),
            (r#"{"namespaceHeader": "Host"}"#, "choose another name"),
            (
                r#"{"podHeader": "Proxy-Authorization"}"#,
                "choose another name",
            ),
            (r#"{"podHeader": "x-forwarded-for"}"#, "choose another name"),
            (
                r#"{"podHeader": "X-A", "namespaceHeader": "x-a"}"#,
                "the same header",
            ),
            (r#"{"forwardedFor": "yes"}"#, "invalid type"),
            (r#"{"forwardedfor": true}"#, "unknown field"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(needle), "{text}: no {needle:?} in {err}");
        }
    }
}
