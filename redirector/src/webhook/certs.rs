//! The webhook's own TLS: the serving certificate the API server checks
//! against the `caBundle` of the MutatingWebhookConfiguration.
//!
//! Two sources:
//! - generated (default): a CA and a serving certificate made with rcgen,
//!   kept in a Secret of the webhook's namespace so that every replica
//!   serves the same one (the first replica creates it; the others read
//!   it), and the CA written into the configuration's `caBundle` and kept
//!   there;
//! - files (`--tls-cert`/`--tls-key`, e.g. a cert-manager Certificate's
//!   Secret, whose CA injector then fills `caBundle`): re-read when they
//!   change, since cert-manager renews them in place.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, anyhow};
use base64::Engine as _;
use k8s_openapi::{
    ByteString, api::admissionregistration::v1::MutatingWebhookConfiguration, api::core::v1::Secret,
};
use kube::{Api, Client, api::PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::{
    crypto::ring::sign::any_supported_type,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// Validity of generated certificates. Long, because nothing but the
/// webhook and the API server rely on them; delete the Secret and restart
/// the webhook to renew.
const VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// How often the `caBundle` is checked (someone may re-apply the manifest).
pub const CA_BUNDLE_RECHECK: Duration = Duration::from_secs(60);
/// How often the certificate files are looked at for a renewal.
const FILE_RECHECK: Duration = Duration::from_secs(30);

/// A serving certificate with its key and the CA that signed it (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serving {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Serving {
    /// A fresh CA and a certificate for `dns_names`, signed by it.
    pub fn generate(dns_names: &[String]) -> Result<Self> {
        let now = SystemTime::now();
        let ca_key = KeyPair::generate().context("generating the webhook CA key")?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, "egress-redirector CA injector CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.not_before = (now - Duration::from_secs(3600)).into();
        ca.not_after = (now + VALIDITY).into();
        let ca_cert = ca.self_signed(&ca_key).context("signing the webhook CA")?;
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate().context("generating the serving key")?;
        let mut leaf = CertificateParams::new(dns_names.to_vec())
            .context("the service names as certificate names")?;
        leaf.distinguished_name.push(
            DnType::CommonName,
            dns_names.first().cloned().unwrap_or_default(),
        );
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.not_before = (now - Duration::from_secs(3600)).into();
        leaf.not_after = (now + VALIDITY).into();
        let cert = leaf
            .signed_by(&key, &issuer)
            .context("signing the serving certificate")?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    fn to_secret(&self, name: &str) -> Secret {
        let data = [
            ("ca.crt", &self.ca_pem),
            ("tls.crt", &self.cert_pem),
            ("tls.key", &self.key_pem),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect::<BTreeMap<_, _>>();
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(data),
            ..Default::default()
        }
    }

    fn from_secret(secret: &Secret) -> Result<Self> {
        let data = secret.data.as_ref().ok_or_else(|| anyhow!("no data"))?;
        let get = |k: &str| -> Result<String> {
            let v = data.get(k).ok_or_else(|| anyhow!("no {k}"))?;
            String::from_utf8(v.0.clone()).map_err(|_| anyhow!("{k} is not text"))
        };
        Ok(Self {
            ca_pem: get("ca.crt")?,
            cert_pem: get("tls.crt")?,
            key_pem: get("tls.key")?,
        })
    }

    /// rustls' form of the certificate and key.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>> {
        certified_key(self.cert_pem.as_bytes(), self.key_pem.as_bytes())
    }
}

fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("reading the serving certificate")?;
    if chain.is_empty() {
        return Err(anyhow!("no certificate in the serving certificate file"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("reading the serving key")?;
    let key = any_supported_type(&key).context("the serving key")?;
    Ok(Arc::new(CertifiedKey::new(chain, key)))
}

/// The serving certificate in Secret `name` of `namespace`, made and stored
/// there when missing (a replica that loses the race reads the winner's).
pub async fn shared(
    client: Client,
    namespace: &str,
    name: &str,
    dns: &[String],
) -> Result<Serving> {
    let api = Api::<Secret>::namespaced(client, namespace);
    if let Some(secret) = api.get_opt(name).await.context("reading the TLS Secret")? {
        return Serving::from_secret(&secret)
            .with_context(|| format!("Secret {namespace}/{name} (delete it to regenerate)"));
    }
    let fresh = Serving::generate(dns)?;
    match api
        .create(&PostParams::default(), &fresh.to_secret(name))
        .await
    {
        Ok(_) => {
            tracing::info!(secret = %format!("{namespace}/{name}"), "generated the webhook's serving certificate");
            Ok(fresh)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let secret = api.get(name).await.context("reading the TLS Secret")?;
            Serving::from_secret(&secret)
        }
        Err(e) => Err(e).context("creating the TLS Secret"),
    }
}

/// Writes `ca_pem` into every webhook's `caBundle` of configuration `name`
/// when it differs; returns how many were changed.
pub async fn apply_ca_bundle(client: Client, name: &str, ca_pem: &str) -> Result<usize> {
    let api = Api::<MutatingWebhookConfiguration>::all(client);
    let config = api
        .get(name)
        .await
        .with_context(|| format!("reading MutatingWebhookConfiguration {name}"))?;
    let want = ByteString(ca_pem.as_bytes().to_vec());
    let mut ops = Vec::new();
    for (i, hook) in config.webhooks.iter().flatten().enumerate() {
        if hook.client_config.ca_bundle.as_ref() != Some(&want) {
            // The test keeps us from writing into another webhook if the
            // list changed between our read and this patch.
            ops.push(serde_json::json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": hook.name}));
            ops.push(serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"),
                "value": base64::engine::general_purpose::STANDARD.encode(ca_pem)}));
        }
    }
    let changed = ops.len() / 2;
    if changed > 0 {
        let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))?;
        api.patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Json::<()>(patch),
        )
        .await
        .with_context(|| format!("writing caBundle into {name}"))?;
    }
    Ok(changed)
}

/// Keeps the `caBundle` current until the process ends.
pub async fn keep_ca_bundle(client: Client, name: String, ca_pem: String) {
    let mut tick = tokio::time::interval(CA_BUNDLE_RECHECK);
    loop {
        tick.tick().await;
        match apply_ca_bundle(client.clone(), &name, &ca_pem).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(config = %name, webhooks = n, "caBundle written"),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "caBundle not written; retrying"),
        }
    }
}

/// Serves one fixed certificate, or the files' latest.
#[derive(Debug)]
pub struct Resolver {
    current: Mutex<(Arc<CertifiedKey>, Instant, Option<SystemTime>)>,
    files: Option<(PathBuf, PathBuf)>,
}

impl Resolver {
    pub fn fixed(key: Arc<CertifiedKey>) -> Self {
        Self {
            current: Mutex::new((key, Instant::now(), None)),
            files: None,
        }
    }

    /// From PEM files, re-read when their modification time changes.
    pub fn files(cert: PathBuf, key: PathBuf) -> Result<Self> {
        let loaded = load_files(&cert, &key)?;
        Ok(Self {
            current: Mutex::new((loaded.0, Instant::now(), loaded.1)),
            files: Some((cert, key)),
        })
    }
}

fn load_files(cert: &PathBuf, key: &PathBuf) -> Result<(Arc<CertifiedKey>, Option<SystemTime>)> {
    let mtime = std::fs::metadata(cert).and_then(|m| m.modified()).ok();
    let c = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let k = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
    Ok((certified_key(&c, &k)?, mtime))
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cert, key)) = &self.files
            && current.1.elapsed() >= FILE_RECHECK
        {
            current.1 = Instant::now();
            let mtime = std::fs::metadata(cert).and_then(|m| m.modified()).ok();
            if mtime != current.2 {
                match load_files(cert, key) {
                    Ok((fresh, mtime)) => {
                        tracing::info!(file = %cert.display(), "serving certificate reloaded");
                        current.0 = fresh;
                        current.2 = mtime;
                    }
                    // Half-written by a renewal: keep the old one, retry later.
                    Err(e) => {
                        tracing::warn!(error = format!("{e:#}"), "serving certificate not reloaded")
                    }
                }
            }
        }
        Some(current.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    #[test]
    fn generated_certificates_verify_for_the_service_name() {
        let names = vec![
            "inj.ns.svc".to_owned(),
            "inj.ns.svc.cluster.local".to_owned(),
        ];
        let s = Serving::generate(&names).unwrap();
        assert!(s.certified_key().is_ok());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(s.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let leaf = CertificateDer::from_pem_slice(s.cert_pem.as_bytes()).unwrap();
        for name in &names {
            let name = rustls_pki_types::ServerName::try_from(name.as_str()).unwrap();
            verifier
                .verify_server_cert(&leaf, &[], &name, &[], rustls_pki_types::UnixTime::now())
                .unwrap();
        }
        let other = rustls_pki_types::ServerName::try_from("other.ns.svc").unwrap();
        assert!(
            verifier
                .verify_server_cert(&leaf, &[], &other, &[], rustls_pki_types::UnixTime::now())
                .is_err()
        );
        // Round trip through the Secret's form.
        assert_eq!(Serving::from_secret(&s.to_secret("x")).unwrap(), s);
    }

    #[test]
    fn files_are_reloaded_when_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let a = Serving::generate(&["a.svc".into()]).unwrap();
        std::fs::write(&c, &a.cert_pem).unwrap();
        std::fs::write(&k, &a.key_pem).unwrap();
        let r = Resolver::files(c.clone(), k.clone()).unwrap();
        assert!(Resolver::files(dir.path().join("none"), k).is_err());
        let first = r.current.lock().unwrap().0.cert[0].clone();
        assert_eq!(
            first,
            CertificateDer::from_pem_slice(a.cert_pem.as_bytes()).unwrap()
        );
    }
}
