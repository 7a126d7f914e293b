//! The trust bundle: the Mozilla root set plus the config's `trustedCA`,
//! as the PEM file the system paths and variables name and as the JVM's
//! PKCS#12 truststore.
//!
//! The public roots come from the `webpki-root-certs` crate (Mozilla's set,
//! as whole certificates, versioned with each release of ours): the webhook
//! runs as a Deployment, not on the node, and the nodes' own bundles differ
//! by OS image and cannot be read from the API. Replacing a pod's system
//! bundle with this one therefore never removes public trust; only roots a
//! distribution adds on top of Mozilla's are not in it (add them to
//! `trustedCA`).
use rustls_pki_types::CertificateDer;

use super::{P12_PASSWORD, pkcs12};
use crate::ca::to_pem;

/// The bundle's two renderings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// PEM certificates: `trustedCA` first, then the public roots.
    pub pem: String,
    /// The same certificates as a PKCS#12 truststore.
    pub p12: Vec<u8>,
}

/// The bundle for `trusted_ca` (the config's certificates, DER).
///
/// The PKCS#12 MAC salt is derived from the content, so that the same
/// certificates always give the same bytes: a ConfigMap is rewritten only
/// when the certificates change.
pub fn build(trusted_ca: &[CertificateDer<'_>]) -> Bundle {
    let mut certs: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, der) in trusted_ca.iter().enumerate() {
        certs.push((
            format!("egress-redirector-trusted-ca-{}", i + 1),
            der.to_vec(),
        ));
    }
    for (i, der) in webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().enumerate() {
        certs.push((format!("mozilla-root-{}", i + 1), der.to_vec()));
    }
    let mut pem = String::new();
    for (alias, der) in &certs {
        pem.push_str(&format!("# {alias}\n"));
        pem.push_str(&to_pem(der));
    }
    let fingerprint = ring::digest::digest(&ring::digest::SHA256, pem.as_bytes());
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&fingerprint.as_ref()[..16]);
    Bundle {
        p12: pkcs12::truststore(&certs, P12_PASSWORD, &salt),
        pem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::GeneratedCa;
    use rustls_pki_types::pem::PemObject;

    #[test]
    fn the_bundle_keeps_public_roots_and_adds_the_ca_first() {
        let ca = GeneratedCa::generate().unwrap();
        let der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap();
        let bundle = build(std::slice::from_ref(&der));
        let all: Vec<_> = CertificateDer::pem_slice_iter(bundle.pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(all[0], der);
        assert_eq!(
            all.len(),
            1 + webpki_root_certs::TLS_SERVER_ROOT_CERTS.len()
        );
        assert!(all.len() > 100, "the Mozilla set is there");
        // Deterministic: the same certificates, the same bytes.
        assert_eq!(build(&[der]), bundle);
        // No trustedCA: public roots alone, still a valid store.
        let empty = build(&[]);
        assert_eq!(
            CertificateDer::pem_slice_iter(empty.pem.as_bytes()).count(),
            webpki_root_certs::TLS_SERVER_ROOT_CERTS.len()
        );
        assert_ne!(empty.p12, bundle.p12);
    }
}
