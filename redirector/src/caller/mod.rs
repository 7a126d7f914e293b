//! Who is calling: the pod behind a redirected connection, and the headers
//! that tell the upstream proxy about it (`identity` in the configuration).
//!
//! The address is the connection's source address, which the kernel gives
//! us, never something the pod sends. The namespace and pod name come from
//! the Kubernetes API (`pods`), when the daemon watches it. On the plain
//! HTTP path the pod writes the request head itself, so every header we
//! would add is first removed from what it sent: a pod cannot name
//! another pod's address to the proxy.
pub mod pods;
pub mod published;

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::config::Identity;
pub use pods::{PodDirectory, PodRef};

/// `X-Forwarded-For` (http has no constant for it).
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The calling pod as far as it is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The connection's source address (IPv4-mapped IPv6 made IPv4).
    pub addr: IpAddr,
    /// Namespace and name, from the API; `None` without `--kube` or for an
    /// address no pod on this node has.
    pub pod: Option<PodRef>,
}

/// The identity headers of one connection: what the pod may not send
/// under our names, and what we add. Empty when `identity` is off.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IdentityHeaders {
    /// Removed from a pod's request before ours are added.
    pub remove: Vec<HeaderName>,
    /// Added, in this order.
    pub add: Vec<(HeaderName, HeaderValue)>,
}

impl IdentityHeaders {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }

    /// Strips the pod's copies from `headers` and appends ours.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// The headers `identity` asks for, for `caller`. Both address headers are
/// removed from a pod's request whenever identity is on (a proxy told to
/// trust the node for one may read the other), and so are the name
/// headers even when the pod is unknown: what reaches the proxy under
/// those names is ours alone.
pub fn headers(identity: &Identity, caller: &Caller) -> IdentityHeaders {
    let mut out = IdentityHeaders::default();
    if !identity.enabled() {
        return out;
    }
    out.remove.extend([X_FORWARDED_FOR, header::FORWARDED]);
    out.remove.extend(
        [&identity.namespace_header, &identity.pod_header]
            .into_iter()
            .flatten()
            .cloned(),
    );
    let addr = caller.addr.to_canonical();
    if identity.forwarded_for {
        out.add.push((X_FORWARDED_FOR, value(&addr.to_string())));
    }
    if identity.forwarded {
        out.add
            .push((header::FORWARDED, value(&forwarded_for(addr))));
    }
    if let Some(pod) = &caller.pod {
        if let Some(name) = &identity.namespace_header {
            out.add.push((name.clone(), value(&pod.namespace)));
        }
        if let Some(name) = &identity.pod_header {
            out.add.push((name.clone(), value(&pod.name)));
        }
    }
    out
}

/// An address or Kubernetes name is always a valid header value; anything
/// else would be a bug upstream of here, and sends an empty value rather
/// than a panic.
fn value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// RFC 7239's `for=` parameter: an IPv4 address as it is, an IPv6 address
/// in brackets and quoted (`:` is not a token character).
pub fn forwarded_for(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => format!("for={a}"),
        IpAddr::V6(a) => format!("for=\"[{a}]\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(ns: Option<&str>, pod: Option<&str>) -> Identity {
        Identity {
            forwarded_for: true,
            forwarded: true,
            namespace_header: ns.map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap()),
            pod_header: pod.map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap()),
        }
    }

    fn caller(addr: &str, pod: Option<(&str, &str)>) -> Caller {
        Caller {
            addr: addr.parse().unwrap(),
            pod: pod.map(|(namespace, name)| PodRef {
                namespace: namespace.into(),
                name: name.into(),
            }),
        }
    }

    fn shown(headers: &IdentityHeaders) -> Vec<String> {
        headers
            .add
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect()
    }

    #[test]
    fn forwarded_quotes_and_brackets_ipv6_only() {
        assert_eq!(forwarded_for("10.1.2.3".parse().unwrap()), "for=10.1.2.3");
        assert_eq!(
            forwarded_for("2001:db8:cafe::17".parse().unwrap()),
            "for=\"[2001:db8:cafe::17]\""
        );
    }

    #[test]
    fn headers_name_the_caller() {
        let id = identity(Some("X-Egress-Namespace"), Some("X-Egress-Pod"));
        assert_eq!(
            shown(&headers(&id, &caller("10.1.2.3", Some(("shop", "web-0"))))),
            [
                "x-forwarded-for: 10.1.2.3",
                "forwarded: for=10.1.2.3",
                "x-egress-namespace: shop",
                "x-egress-pod: web-0",
            ]
        );
        // IPv4-mapped (a dual-stack listener) is the IPv4 address; an
        // unknown pod gets no name headers.
        assert_eq!(
            shown(&headers(&id, &caller("::ffff:10.1.2.3", None))),
            ["x-forwarded-for: 10.1.2.3", "forwarded: for=10.1.2.3"]
        );
        assert_eq!(
            shown(&headers(&id, &caller("fd00::5", None))),
            ["x-forwarded-for: fd00::5", "forwarded: for=\"[fd00::5]\""]
        );
        let only_xff = Identity {
            forwarded_for: true,
            ..Identity::default()
        };
        assert_eq!(
            shown(&headers(&only_xff, &caller("10.1.2.3", Some(("a", "b"))))),
            ["x-forwarded-for: 10.1.2.3"]
        );
        assert!(headers(&Identity::default(), &caller("10.1.2.3", None)).is_empty());
        // An unknown pod still may not send the name headers.
        let unknown = headers(&id, &caller("10.1.2.3", None));
        assert_eq!(unknown.remove.len(), 4);
    }

    #[test]
    fn a_pod_cannot_forge_identity_headers() {
        let id = identity(Some("X-Egress-Namespace"), Some("X-Egress-Pod"));
        let mut sent = HeaderMap::new();
        for (name, value) in [
            ("x-forwarded-for", "10.9.9.9"),
            ("X-Forwarded-For", "10.8.8.8"),
            ("forwarded", "for=10.9.9.9"),
            ("x-egress-namespace", "kube-system"),
            ("X-EGRESS-POD", "admin"),
            ("x-other", "kept"),
        ] {
            sent.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static(value),
            );
        }
        let ours = headers(&id, &caller("10.1.2.3", Some(("shop", "web-0"))));
        ours.apply(&mut sent);
        let all: Vec<String> = sent
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect();
        assert_eq!(
            all,
            [
                "x-other: kept",
                "x-forwarded-for: 10.1.2.3",
                "forwarded: for=10.1.2.3",
                "x-egress-namespace: shop",
                "x-egress-pod: web-0",
            ]
        );
        // Only XFF asked: a forged Forwarded is removed all the same.
        let only_xff = Identity {
            forwarded_for: true,
            ..Identity::default()
        };
        let mut sent = HeaderMap::new();
        sent.insert(header::FORWARDED, HeaderValue::from_static("for=1.1.1.1"));
        headers(&only_xff, &caller("10.1.2.3", None)).apply(&mut sent);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[X_FORWARDED_FOR], "10.1.2.3");
        // Identity off: the pod's headers pass as an env-var client's would.
        let mut sent = HeaderMap::new();
        sent.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        let off = headers(&Identity::default(), &caller("10.1.2.3", None));
        assert!(off.is_empty());
        off.apply(&mut sent);
        assert_eq!(sent[X_FORWARDED_FOR], "1.1.1.1");
    }
}
