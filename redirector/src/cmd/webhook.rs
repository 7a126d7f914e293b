//! `redirector webhook`: the CA-injection admission webhook (see
//! `crate::webhook`). One binary and one image with the daemon, so that one
//! release carries one version of the config parser on nodes and in the
//! webhook, and no second image has to be built, scanned and mirrored.
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use crate::{
    cli::WebhookArgs,
    webhook::{bundle_sync, certs, lease::Elector},
};

pub async fn run(args: WebhookArgs) -> Result<()> {
    // Refuse a bad config at start, as `run` does; later it is re-read.
    crate::config::ProxyConfig::load(&args.proxy_config)?;
    let dns = args.dns_names();
    let client = if args.no_kube {
        None
    } else {
        Some(
            kube::Client::try_default()
                .await
                .context("the Kubernetes API client (in-cluster or KUBECONFIG)")?,
        )
    };
    let resolver = match (&args.tls_cert, &args.tls_key, &client) {
        (Some(cert), Some(key), _) => certs::Resolver::files(cert.clone(), key.clone())?,
        (None, None, Some(client)) => {
            let serving =
                certs::shared(client.clone(), &args.namespace, &args.tls_secret, &dns).await?;
            if let Some(config) = Some(&args.webhook_config).filter(|c| !c.is_empty()) {
                // Written before serving, so the first review finds it.
                match certs::apply_ca_bundle(client.clone(), config, &serving.ca_pem).await {
                    Ok(n) => tracing::info!(config = %config, changed = n, "caBundle checked"),
                    Err(e) => tracing::warn!(
                        error = format!("{e:#}"),
                        "caBundle not written yet; retrying"
                    ),
                }
                tokio::spawn(certs::keep_ca_bundle(
                    client.clone(),
                    config.clone(),
                    serving.ca_pem.clone(),
                ));
            }
            certs::Resolver::fixed(serving.certified_key()?)
        }
        (None, None, None) => {
            bail!("--no-kube needs --tls-cert and --tls-key (no Secret to keep a generated one in)")
        }
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    if let Some(client) = &client
        && !args.no_bundle_sync
    {
        let elector = (!args.no_leader_election).then(|| {
            Elector::new(
                client.clone(),
                &args.namespace,
                &args.lease,
                &args.identity(),
            )
        });
        tokio::spawn(bundle_sync::run(
            client.clone(),
            args.proxy_config.clone(),
            elector,
        ));
    }
    crate::webhook::serve::run(args.listen, Arc::new(resolver)).await
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    #[test]
    fn the_arguments_parse() {
        let cli = Cli::try_parse_from([
            "redirector",
            "webhook",
            "--proxy-config=/p.json",
            "--webhook-config=",
            "--namespace=ns",
        ])
        .unwrap();
        let Command::Webhook(args) = cli.command else {
            panic!("not webhook")
        };
        assert!(args.webhook_config.is_empty());
        assert_eq!(args.dns_names()[0], "egress-redirector-ca-injector.ns.svc");
        assert!(
            Cli::try_parse_from([
                "redirector",
                "webhook",
                "--proxy-config=/p",
                "--tls-cert=/c"
            ])
            .is_err()
        );
    }
}
