//! The HTTPS server the API server calls: `POST /mutate` with an
//! AdmissionReview, `GET /healthz`. Bounded everywhere, as anything facing
//! the network is: a handshake and a request each get a few seconds, a body
//! at most [`review::MAX_BODY`], and at most [`MAX_CONNECTIONS`]
//! connections are served at once (the API server's timeout is shorter
//! than ours anyway: `timeoutSeconds` in the configuration).
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{patch, review};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_CONNECTIONS: usize = 64;

/// The AdmissionReview answering `body`, or the HTTP error for a body that
/// is no AdmissionReview at all.
pub fn respond(body: &[u8]) -> Result<Vec<u8>, review::ReviewError> {
    let request = review::decode(body)?;
    let answer = match request.pod() {
        Ok(pod) if request.operation == "CREATE" || request.operation.is_empty() => {
            let answer = patch::mutate(&pod);
            tracing::info!(
                uid = %request.uid,
                namespace = request.namespace.as_deref().unwrap_or(""),
                pod = pod.metadata.name.as_deref().or(pod.metadata.generate_name.as_deref()).unwrap_or(""),
                patched = answer.patch.is_some(),
                dry_run = request.dry_run.unwrap_or(false),
                "admission review"
            );
            answer
        }
        Ok(_) => review::Answer::default(),
        Err(why) => {
            // Allowed unchanged: the API server decides what the object is;
            // we only decline to add to something we cannot read.
            tracing::warn!(uid = %request.uid, "not injected: {why}");
            review::Answer {
                patch: None,
                warnings: vec![format!("egress-redirector: CA not injected: {why}")],
            }
        }
    };
    Ok(review::encode(&request.uid, &answer))
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: Vec<u8>, kind: &str| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            kind.parse().expect("a valid header"),
        );
        Ok(r)
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, b"ok\n".to_vec(), "text/plain"),
        (&Method::POST, "/mutate") => {
            let body = match Limited::new(req.into_body(), review::MAX_BODY)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    let msg = if e.is::<http_body_util::LengthLimitError>() {
                        format!(
                            "the AdmissionReview is more than the {} bytes accepted\n",
                            review::MAX_BODY
                        )
                    } else {
                        format!("reading the request: {e}\n")
                    };
                    tracing::warn!("refused a review: {}", msg.trim());
                    return reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        msg.into_bytes(),
                        "text/plain",
                    );
                }
            };
            match respond(&body) {
                Ok(out) => reply(StatusCode::OK, out, "application/json"),
                Err(e) => {
                    tracing::warn!("refused a review: {e}");
                    reply(
                        StatusCode::BAD_REQUEST,
                        format!("{e}\n").into_bytes(),
                        "text/plain",
                    )
                }
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            b"POST /mutate or GET /healthz\n".to_vec(),
            "text/plain",
        ),
    }
}

/// Serves on `addr` with `resolver`'s certificate until the process ends.
pub async fn run(addr: SocketAddr, resolver: Arc<super::certs::Resolver>) -> Result<()> {
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS versions")?
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    tracing::info!(%addr, "webhook listening");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Full: close at once; the API server retries or applies the
            // failure policy.
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(TokioIo::new(stream), hyper::service::service_fn(handle));
            if tokio::time::timeout(REQUEST_TIMEOUT * 6, conn)
                .await
                .is_err()
            {
                tracing::debug!(%peer, "connection closed after its time");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reviews_of_other_objects_and_updates_pass_unchanged() {
        let base = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{
            "uid":"u","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"OP",
            "object":{"metadata":{},"spec":{"containers":[{"name":"a"}]}}}}"#;
        let out: serde_json::Value =
            serde_json::from_slice(&respond(base.replace("OP", "CREATE").as_bytes()).unwrap())
                .unwrap();
        assert_eq!(out["response"]["patchType"], "JSONPatch");
        let out: serde_json::Value =
            serde_json::from_slice(&respond(base.replace("OP", "UPDATE").as_bytes()).unwrap())
                .unwrap();
        assert!(out["response"].get("patch").is_none());
        assert_eq!(out["response"]["allowed"], true);
        let broken = base
            .replace("OP", "CREATE")
            .replace(r#""containers":[{"name":"a"}]"#, r#""containers":7"#);
        let out: serde_json::Value =
            serde_json::from_slice(&respond(broken.as_bytes()).unwrap()).unwrap();
        assert_eq!(out["response"]["allowed"], true);
        assert!(
            out["response"]["warnings"][0]
                .as_str()
                .unwrap()
                .contains("spec.containers")
        );
        assert!(respond(b"[]").is_err());
    }
}
