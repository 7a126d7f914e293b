//! The HTTP endpoint on `--metrics ADDR`: `/metrics` (OpenMetrics text),
//! `/healthz` (the process answers) and `/readyz` (every readiness
//! condition is met).
//!
//! Pods can reach this address, so it is bounded like the data path: one
//! request per connection (no keep-alive; probes and scrapers open one per
//! request anyway), a bound on the request head and on the whole exchange,
//! and at most [`MAX_CONNECTIONS`] open ([`PER_CLIENT`] from one address).
//! Over the total cap the newest connection still gets in and the oldest of
//! the busiest client address is closed: a slowloris from a few pods cannot
//! keep the kubelet's probe out. Its descriptors are a fixed budget, taken
//! off the data path's (`limits::default_global_max`).
use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Notify};

use super::Metrics;
use crate::{
    ratelog::{self, RateLog},
    readiness::Readiness,
};

/// Most connections open at once: a kubelet's probes and a scraper or two
/// need a handful. Also the listener's descriptor budget (plus itself).
pub const MAX_CONNECTIONS: usize = crate::limits::METRICS_MAX_CONNECTIONS;
/// Most connections open at once from one client address; more are closed
/// at accept.
pub const PER_CLIENT: usize = 8;
/// How long a client may take to send its request head (slowloris bound).
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one connection may last, its request and answer included (a
/// client that does not read the answer).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

static ACCEPT_FAILED: RateLog = RateLog::default_budget("metrics_accept_failed");
static REFUSED: RateLog = RateLog::new("metrics_connection_limit", 1, Duration::from_secs(10));

/// Binds `addr` now, so a taken port stops the start; serves in the task.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics {addr}"))
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, readiness: Readiness) {
    let gate = Gate::new(MAX_CONNECTIONS, PER_CLIENT);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                ratelog::warn!(ACCEPT_FAILED, error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (slot, evicted) = match gate.admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(ClientFull) => {
                metrics.record_metrics_refusal();
                ratelog::warn!(
                    REFUSED, client = %peer, per_client = PER_CLIENT,
                    "metrics: too many connections from one address; closed at accept \
                     (counted in redirector_metrics_connections_refused_total)"
                );
                drop(stream);
                continue;
            }
        };
        if evicted {
            metrics.record_metrics_refusal();
        }
        let metrics = metrics.clone();
        let readiness = readiness.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let metrics = metrics.clone();
                let readiness = readiness.clone();
                async move { Ok::<_, Infallible>(respond(&metrics, &readiness, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                ended = conn => if let Err(e) = ended {
                    tracing::debug!(error = %e, "metrics: connection ended");
                },
                () = tokio::time::sleep(CONNECTION_TIMEOUT) => {
                    tracing::debug!(client = %peer, "metrics: connection timed out");
                }
                () = slot.evicted() => {
                    tracing::debug!(client = %peer, "metrics: connection closed for a newer one");
                }
            }
            drop(slot);
        });
    }
}

/// The connection caps of the listener.
struct Gate {
    max: usize,
    per_client: usize,
    state: Mutex<GateState>,
}

#[derive(Default)]
struct GateState {
    /// Open connections by client address, oldest first.
    by_client: HashMap<IpAddr, VecDeque<(u64, Arc<Notify>)>>,
    open: usize,
    next_id: u64,
}

/// A refusal: the client address is at its cap.
#[derive(Debug, PartialEq, Eq)]
struct ClientFull;

/// One admitted connection; dropping it frees its place.
struct Slot {
    gate: Arc<Gate>,
    client: IpAddr,
    id: u64,
    evict: Arc<Notify>,
}

impl Gate {
    fn new(max: usize, per_client: usize) -> Arc<Self> {
        Arc::new(Gate {
            max,
            per_client,
            state: Mutex::new(GateState::default()),
        })
    }

    /// Admits a connection from `client`, or refuses it when that address
    /// is at its cap. At the total cap, the oldest connection of the
    /// busiest address is told to close (`true`: one was).
    fn admit(self: &Arc<Self>, client: IpAddr) -> Result<(Slot, bool), ClientFull> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.by_client.get(&client).map_or(0, VecDeque::len) >= self.per_client {
            return Err(ClientFull);
        }
        let mut evicted = false;
        if state.open >= self.max {
            let busiest = state
                .by_client
                .iter()
                .max_by_key(|(_, conns)| conns.len())
                .map(|(ip, _)| *ip);
            if let Some(victim) = busiest.and_then(|ip| state.by_client.get_mut(&ip)?.pop_front()) {
                // Its slot, when dropped, finds nothing to remove.
                victim.1.notify_one();
                state.open -= 1;
                evicted = true;
            }
            state.by_client.retain(|_, conns| !conns.is_empty());
        }
        let id = state.next_id;
        state.next_id += 1;
        let evict = Arc::new(Notify::new());
        state
            .by_client
            .entry(client)
            .or_default()
            .push_back((id, evict.clone()));
        state.open += 1;
        Ok((
            Slot {
                gate: self.clone(),
                client,
                id,
                evict,
            },
            evicted,
        ))
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).open
    }
}

impl Slot {
    /// Resolves when a newer connection took this one's place.
    async fn evicted(&self) {
        self.evict.notified().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.gate.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(conns) = state.by_client.get_mut(&self.client) else {
            return;
        };
        let Some(at) = conns.iter().position(|(id, _)| *id == self.id) else {
            return; // evicted: already uncounted
        };
        conns.remove(at);
        if conns.is_empty() {
            state.by_client.remove(&self.client);
        }
        state.open -= 1;
    }
}

fn respond(
    metrics: &Metrics,
    readiness: &Readiness,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" if readiness.is_ready() => (StatusCode::OK, "text/plain", "ready\n".to_string()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("not ready: {}\n", readiness.pending().join(", ")),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn the_gate_caps_each_address_and_evicts_the_busiest_oldest() {
        let gate = Gate::new(4, 3);
        let a: Vec<_> = (0..3).map(|_| gate.admit(ip(1)).unwrap().0).collect();
        // One address is capped on its own...
        assert_eq!(gate.admit(ip(1)).err(), Some(ClientFull));
        let (b, evicted) = gate.admit(ip(2)).unwrap();
        assert!(!evicted);
        assert_eq!(gate.open(), 4);
        // ...and at the total cap a newcomer gets in: the busiest address's
        // oldest connection is told to go.
        let (c, evicted) = gate.admit(ip(3)).unwrap();
        assert!(evicted);
        assert_eq!(gate.open(), 4);
        {
            let waker = futures_util::task::noop_waker();
            let mut cx = std::task::Context::from_waker(&waker);
            let mut oldest = std::pin::pin!(a[0].evicted());
            assert!(oldest.as_mut().poll(&mut cx).is_ready());
            let mut newer = std::pin::pin!(a[1].evicted());
            assert!(newer.as_mut().poll(&mut cx).is_pending());
        }
        // Dropping the evicted slot frees nothing twice; the others free theirs.
        drop(a);
        assert_eq!(gate.open(), 2);
        drop((b, c));
        assert_eq!(gate.open(), 0);
        assert!(gate.state.lock().unwrap().by_client.is_empty());
    }

    /// Slow request heads from one address fill its share and are cut at
    /// the header timeout; another address is answered at once meanwhile.
    #[tokio::test]
    async fn a_slowloris_does_not_keep_the_probe_out() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            Arc::new(Metrics::new(None)),
            Readiness::default(),
        ));
        let slow_from = |last: u8| async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket
                .bind(SocketAddr::new(IpAddr::from([127, 0, 0, last]), 0))
                .unwrap();
            let mut s = socket.connect(addr).await.unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: a")
                .await
                .unwrap();
            s
        };
        let mut slow = Vec::new();
        for _ in 0..PER_CLIENT * 2 {
            slow.push(slow_from(2).await);
        }
        let started = std::time::Instant::now();
        let mut probe = tokio::net::TcpStream::connect(addr).await.unwrap();
        probe
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        probe.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(1));
        // Beyond its share, a slow client's connections were closed at
        // once; the rest are closed at the header timeout.
        let mut closed_at_once = 0;
        for s in &mut slow[PER_CLIENT..] {
            let mut buf = [0u8; 1];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await
            {
                closed_at_once += 1;
            }
        }
        assert_eq!(closed_at_once, PER_CLIENT);
        let mut buf = [0u8; 64];
        let ended = tokio::time::timeout(HEADER_TIMEOUT * 2, slow[0].read(&mut buf))
            .await
            .expect("a slow head is cut at the header timeout");
        assert!(matches!(ended, Ok(0) | Ok(_) | Err(_)));
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let metrics = Arc::new(Metrics::new(None));
        let readiness = Readiness::default();
        let conditions = [
            readiness.register("programs attached"),
            readiness.register("listeners up"),
            readiness.register("config loaded"),
        ];
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, metrics.clone(), readiness.clone()));
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        for condition in conditions {
            condition.mark_ready();
        }
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        let scraped = get("/metrics").await;
        assert!(scraped.starts_with("HTTP/1.1 200"), "{scraped}");
        assert!(
            scraped.contains("redirector_active_connections 0"),
            "{scraped}"
        );
    }
}
