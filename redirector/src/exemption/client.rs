//! The Kubernetes API client, with the daemon's `SO_MARK` on its sockets.
//!
//! The daemon runs under the hooks' attach root (its DaemonSet pod sits in
//! kubepods), so without the mark its own API connections would be
//! redirected to its own listener and sent through the upstream proxy, or
//! refused while it restarts. kube's default stack cannot mark sockets, so
//! the connector is ours and the rest of the stack is kube's own layers.
use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context as TaskContext, Poll},
    time::Duration,
};

use anyhow::{Context, Result};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube::client::ConfigExt;
use tokio::net::TcpStream;

use crate::dial::connect_marked;

/// Bound on connecting to the API server when the configuration sets none.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connector whose sockets carry the daemon's mark (so the hooks skip
/// them) before they connect.
#[derive(Clone)]
struct MarkedConnector {
    mark: u32,
    timeout: Duration,
}

impl tower::Service<http::Uri> for MarkedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (mark, timeout) = (self.mark, self.timeout);
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "API URL has no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("http") => 80,
                _ => 443,
            });
            let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host}: no address"));
            for addr in tokio::net::lookup_host((host.as_str(), port)).await? {
                match tokio::time::timeout(timeout, connect_marked(addr, mark)).await {
                    Ok(Ok(stream)) => {
                        let _ = stream.set_nodelay(true);
                        return Ok(TokioIo::new(stream));
                    }
                    Ok(Err(e)) => last = e,
                    Err(_) => {
                        last = io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("connecting to {addr} timed out"),
                        )
                    }
                }
            }
            Err(last)
        })
    }
}

/// A client for `config` whose connections carry `mark`.
pub fn marked_client(config: kube::Config, mark: u32) -> Result<kube::Client> {
    let connector = MarkedConnector {
        mark,
        timeout: config.connect_timeout.unwrap_or(CONNECT_TIMEOUT),
    };
    let https = config
        .rustls_https_connector_with_connector(connector)
        .context("TLS settings of the Kubernetes API")?;
    let http: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .auth_layer()
                .context("credentials for the Kubernetes API")?,
        )
        .layer(
            config
                .extra_headers_layer()
                .context("headers for the Kubernetes API")?,
        )
        // one error type for the stack: the auth layer's is boxed
        .map_err(tower::BoxError::from)
        .service(http);
    Ok(kube::Client::new(service, config.default_namespace))
}

/// A client configured in-cluster or from KUBECONFIG, marked with `mark`.
pub async fn infer(mark: u32) -> Result<kube::Client> {
    let config = kube::Config::infer().await.context(
        "--kube: no Kubernetes API configuration (not in a pod, and no usable KUBECONFIG)",
    )?;
    tracing::info!(api = %config.cluster_url, "Kubernetes API");
    marked_client(config, mark).context("--kube: creating the API client")
}
