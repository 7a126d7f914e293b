//! The CA-injection webhook (`redirector webhook`): pods in namespaces
//! labelled `egress-redirector/inject-ca=true` get a trust bundle (public
//! roots + the proxy config's `trustedCA`) mounted over the system paths
//! and the variables the common runtimes read, so that they trust a MITM
//! proxy without image changes.
//!
//! - `review`: AdmissionReview v1 in and out (size cap, clear errors);
//! - `patch`: the JSON Patch for one pod (mounts, variables, annotation);
//! - `bundle`: the trust bundle as PEM, and `pkcs12` as a JVM truststore;
//! - `certs`: the webhook's own serving certificate (generated and shared
//!   through a Secret, or files from cert-manager) and the `caBundle`;
//! - `serve`: the HTTPS server the API server calls;
//! - `bundle_sync`: the bundle's ConfigMap in every opted-in namespace,
//!   kept current with the config (one writer at a time, `lease`).
pub mod bundle;
pub mod bundle_sync;
pub mod certs;
pub mod lease;
pub mod patch;
pub mod pkcs12;
pub mod review;
pub mod serve;

/// The namespace label that opts a namespace's pods in (value `true`).
pub const NAMESPACE_LABEL: &str = "egress-redirector/inject-ca";
/// The pod annotation that opts one pod out (value `false`); the same key
/// as the namespace label, so one name covers both.
pub const OPT_OUT_ANNOTATION: &str = "egress-redirector/inject-ca";
/// The pod annotation saying what was injected and what was left alone.
pub const STATUS_ANNOTATION: &str = "egress-redirector/inject-ca-status";
/// The ConfigMap (and the pod volume) holding the bundle.
pub const BUNDLE_NAME: &str = "egress-redirector-ca-bundle";
/// Key of the PEM bundle in the ConfigMap.
pub const PEM_KEY: &str = "ca-certificates.crt";
/// Key of the PKCS#12 truststore in the ConfigMap (`binaryData`).
pub const P12_KEY: &str = "truststore.p12";
/// The truststore's password (public: it holds public certificates; the
/// JVM's own `cacerts` uses the same).
pub const P12_PASSWORD: &str = "changeit";
/// Where the whole ConfigMap is mounted in each container.
pub const MOUNT_DIR: &str = "/etc/egress-redirector/ca";
