//! The bundle's ConfigMap in every opted-in namespace, kept current.
//!
//! Namespaces labelled `egress-redirector/inject-ca=true` are watched; the
//! proxy config file is re-read every [`CONFIG_POLL`] (a mounted Secret or
//! ConfigMap is updated in place by the kubelet), and when its `trustedCA`
//! changes the bundle is rebuilt and applied (server-side apply, one field
//! manager) to each namespace. So a CA rotation reaches new pods within
//! seconds of the file changing; running pods keep the files they started
//! with in `subPath` mounts (the directory mount follows the ConfigMap, but
//! processes read their trust store at start): restart them.
//!
//! With more than one replica, only the holder of the Lease writes.
//! A namespace whose label is removed keeps its ConfigMap: pods admitted
//! earlier still mount it.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    pin::pin,
    time::Duration,
};

use futures_util::StreamExt;
use k8s_openapi::{ByteString, api::core::v1::ConfigMap, api::core::v1::Namespace};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};

use super::{BUNDLE_NAME, NAMESPACE_LABEL, P12_KEY, PEM_KEY, bundle, lease::Elector};
use crate::config::ProxyConfig;

/// How often the proxy config file is looked at.
pub const CONFIG_POLL: Duration = Duration::from_secs(5);
/// How often every ConfigMap is applied again, changed or not (someone may
/// have deleted or edited one).
pub const REAPPLY: Duration = Duration::from_secs(300);
const FIELD_MANAGER: &str = "egress-redirector-webhook";

/// The ConfigMap for `bundle`.
pub fn config_map(namespace: &str, bundle: &bundle::Bundle) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(BUNDLE_NAME.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                "egress-redirector".to_owned(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(PEM_KEY.to_owned(), bundle.pem.clone())])),
        binary_data: Some(BTreeMap::from([(
            P12_KEY.to_owned(),
            ByteString(bundle.p12.clone()),
        )])),
        ..Default::default()
    }
}

/// The namespace's name if it carries our label (the API's label selector
/// says so too; checked again so that a server ignoring it cannot widen
/// what we write).
fn labelled(ns: &Namespace) -> Option<String> {
    let on = ns
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(NAMESPACE_LABEL))
        .is_some_and(|v| v == "true");
    on.then(|| ns.metadata.name.clone()).flatten()
}

/// Runs until the process ends.
pub async fn run(client: Client, config: PathBuf, elector: Option<Elector>) {
    let namespaces = watcher(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default().labels(&format!("{NAMESPACE_LABEL}=true")),
    )
    .default_backoff();
    let mut namespaces = pin!(namespaces);
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    let mut relisting: Option<BTreeSet<String>> = None;
    // namespace -> the digest of the bundle last applied there
    let mut applied: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<(String, bundle::Bundle)> = None;
    let mut last_error: Option<String> = None;
    let mut poll = tokio::time::interval(CONFIG_POLL);
    let mut reapply = tokio::time::interval(REAPPLY);
    reapply.tick().await;
    let mut leading = elector.is_none();
    loop {
        tokio::select! {
            Some(event) = namespaces.next() => match event {
                Ok(watcher::Event::Init) => relisting = Some(BTreeSet::new()),
                Ok(watcher::Event::InitApply(ns)) => {
                    if let (Some(next), Some(name)) = (&mut relisting, labelled(&ns)) {
                        next.insert(name);
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(next) = relisting.take() {
                        wanted = next;
                    }
                }
                Ok(watcher::Event::Apply(ns)) => match labelled(&ns) {
                    Some(name) => { wanted.insert(name); }
                    None => { wanted.remove(ns.metadata.name.as_deref().unwrap_or_default()); }
                },
                Ok(watcher::Event::Delete(ns)) => {
                    wanted.remove(ns.metadata.name.as_deref().unwrap_or_default());
                }
                Err(e) => tracing::warn!(error = %e, "watching namespaces failed; retrying"),
            },
            _ = poll.tick() => {
                if let Some(elector) = &elector {
                    let now = elector.try_lead().await;
                    if now && !leading {
                        applied.clear(); // a new writer checks everything
                    }
                    leading = now;
                }
                match ProxyConfig::load(&config) {
                    Ok(cfg) => {
                        last_error = None;
                        let fresh = bundle::build(&cfg.trusted_ca);
                        let digest = crate::config::digest(fresh.pem.as_bytes());
                        if current.as_ref().is_none_or(|(d, _)| *d != digest) {
                            if current.is_some() {
                                tracing::info!("trustedCA changed; updating the bundles");
                            }
                            current = Some((digest, fresh));
                        }
                    }
                    // The last good bundle stays in force; said once per error.
                    Err(e) if last_error.as_ref() != Some(&e.to_string()) => {
                        tracing::warn!(error = %e, "proxy config not loaded; the bundles stay as they are");
                        last_error = Some(e.to_string());
                    }
                    Err(_) => {}
                }
            }
            _ = reapply.tick() => applied.clear(),
        }
        let (Some((digest, bundle)), true) = (&current, leading) else {
            continue;
        };
        for ns in &wanted {
            if applied.get(ns) == Some(digest) {
                continue;
            }
            let api = Api::<ConfigMap>::namespaced(client.clone(), ns);
            let params = PatchParams::apply(FIELD_MANAGER).force();
            match api
                .patch(BUNDLE_NAME, &params, &Patch::Apply(config_map(ns, bundle)))
                .await
            {
                Ok(_) => {
                    tracing::info!(namespace = %ns, "trust bundle applied");
                    applied.insert(ns.clone(), digest.clone());
                }
                Err(e) => {
                    tracing::warn!(namespace = %ns, error = %e, "trust bundle not applied; retrying")
                }
            }
        }
    }
}
