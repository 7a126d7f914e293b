//! `redirector gen-ca`: a CA for a TLS-intercepting (MITM) upstream proxy,
//! written in the file set mitmproxy reads from its confdir, and printed as
//! the one-line base64 that the config's `trustedCA` expects.
use std::{fs, io::Write, os::unix::fs::OpenOptionsExt, path::Path};

use anyhow::{Context, Result};
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose,
};

/// One certificate as PEM, 64 base64 characters a line.
pub fn to_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII.
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Common name of generated CAs.
pub const CA_COMMON_NAME: &str = "egress-redirector MITM CA";

/// A generated CA: PEM certificate and PEM (PKCS#8) private key.
pub struct GeneratedCa {
    pub cert_pem: String,
    pub key_pem: String,
}

impl GeneratedCa {
    /// A fresh ECDSA P-256 CA, valid for ten years.
    pub fn generate() -> Result<Self> {
        let key = KeyPair::generate().context("generating the CA key")?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, CA_COMMON_NAME);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "egress-redirector");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // RFC 5280's method 1 (SHA-1 of the public key bits), which is what
        // mitmproxy and OpenSSL put in the Authority Key Identifier of the
        // certificates they issue. rcgen's default (truncated SHA-256) would
        // not match, and clients could not chain to this CA.
        params.key_identifier_method = KeyIdMethod::PreSpecified(
            ring::digest::digest(
                &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
                key.public_key_raw(),
            )
            .as_ref()
            .to_vec(),
        );
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = std::time::SystemTime::now();
        // A day of slack for nodes whose clocks lag.
        params.not_before = (now - std::time::Duration::from_secs(86_400)).into();
        params.not_after = (now + std::time::Duration::from_secs(10 * 365 * 86_400)).into();
        let cert = params.self_signed(&key).context("signing the CA")?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The certificate as one line of base64, the form of `trustedCA`.
    pub fn trusted_ca_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.cert_pem)
    }

    /// Writes `mitmproxy-ca.pem` (key + certificate, what mitmproxy loads),
    /// `mitmproxy-ca-cert.pem` (certificate, for clients) and
    /// `mitmproxy-ca-key.pem` (key alone). Key files are mode 0600.
    pub fn write_to(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_file(
            &dir.join("mitmproxy-ca.pem"),
            &format!("{}{}", self.key_pem, self.cert_pem),
            0o600,
        )?;
        write_file(&dir.join("mitmproxy-ca-cert.pem"), &self.cert_pem, 0o644)?;
        write_file(&dir.join("mitmproxy-ca-key.pem"), &self.key_pem, 0o600)?;
        Ok(())
    }
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProxyConfig;

    #[test]
    fn writes_mitmproxy_files_and_a_valid_trusted_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = GeneratedCa::generate().unwrap();
        ca.write_to(dir.path()).unwrap();
        let combined = fs::read_to_string(dir.path().join("mitmproxy-ca.pem")).unwrap();
        assert!(combined.contains("PRIVATE KEY") && combined.contains("BEGIN CERTIFICATE"));
        let cert = fs::read_to_string(dir.path().join("mitmproxy-ca-cert.pem")).unwrap();
        assert!(!cert.contains("PRIVATE KEY"));
        let b64 = ca.trusted_ca_base64();
        assert!(!b64.contains('\n'));
        let cfg = ProxyConfig::parse("t.json", &format!(r#"{{"trustedCA": "{b64}"}}"#)).unwrap();
        assert_eq!(cfg.trusted_ca.len(), 1);
    }
}
