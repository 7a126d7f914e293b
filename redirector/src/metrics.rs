//! Metrics and health: Prometheus counters for what the daemon does, and
//! `/metrics`, `/healthz`, `/readyz` on `--metrics ADDR`.
//!
//! Label sets are small and fixed (decision, outcome, direction, kernel
//! counter name, reload result); never a hostname or an address. Kernel
//! counters are read from the pinned per-CPU map at scrape time.
use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, text::encode},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::net::TcpListener;

use crate::{
    connection::Outcome,
    dial::DialError,
    hook::{self, PinDir},
    limits::Refusal,
    policy::Decision,
    reload::ReloadStats,
};

/// One label, e.g. `("outcome", "ok")`.
type Label = [(&'static str, &'static str); 1];

/// How one connection ended, as counted in
/// `redirector_connection_outcomes_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    /// Relayed or served to the end.
    Ok,
    /// The proxy answered CONNECT with an error status, or broke the exchange.
    UpstreamRefused,
    /// The proxy (or a direct destination) could not be reached in time.
    UpstreamUnreachable,
    /// The proxy answered 407.
    AuthFailed,
    /// Relayed to the end, but the client sent nothing decisive within
    /// `--peek-timeout`, so it was routed by IP.
    PeekTimeout,
    /// Our hook did not redirect it (no saved destination): refused.
    NoOriginalDestination,
    /// The relay or HTTP exchange broke off (a peer reset, for example).
    BrokeOff,
    /// TLS to an `https://` proxy failed.
    TlsError,
}

impl OutcomeKind {
    pub const ALL: [OutcomeKind; 8] = [
        OutcomeKind::Ok,
        OutcomeKind::UpstreamRefused,
        OutcomeKind::UpstreamUnreachable,
        OutcomeKind::AuthFailed,
        OutcomeKind::PeekTimeout,
        OutcomeKind::NoOriginalDestination,
        OutcomeKind::BrokeOff,
        OutcomeKind::TlsError,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            OutcomeKind::Ok => "ok",
            OutcomeKind::UpstreamRefused => "upstream_refused",
            OutcomeKind::UpstreamUnreachable => "upstream_unreachable",
            OutcomeKind::AuthFailed => "auth_failed",
            OutcomeKind::PeekTimeout => "peek_timeout",
            OutcomeKind::NoOriginalDestination => "no_original_destination",
            OutcomeKind::BrokeOff => "broke_off",
            OutcomeKind::TlsError => "tls_error",
        }
    }

    /// The kind of a finished connection. A failure wins over a peek
    /// timeout; a peek timeout wins over plain success.
    pub fn of(outcome: &Outcome, peek_timed_out: bool) -> Self {
        let kind = match outcome {
            Outcome::Relayed { .. } => OutcomeKind::Ok,
            Outcome::HttpServed { served } if served.auth_failures > 0 => OutcomeKind::AuthFailed,
            Outcome::HttpServed { .. } => OutcomeKind::Ok,
            Outcome::DialFailed(e) => Self::of_dial_error(e),
            Outcome::BrokeOff(_) => OutcomeKind::BrokeOff,
        };
        match kind {
            OutcomeKind::Ok if peek_timed_out => OutcomeKind::PeekTimeout,
            kind => kind,
        }
    }

    pub fn of_dial_error(e: &DialError) -> Self {
        match e {
            DialError::Resolve { .. }
            | DialError::ProxyUnreachable { .. }
            | DialError::Direct { .. }
            | DialError::Timeout(_) => OutcomeKind::UpstreamUnreachable,
            DialError::ProxySpeaksPlainHttp { .. } | DialError::ProxyTls { .. } => {
                OutcomeKind::TlsError
            }
            DialError::AuthFailed { .. } => OutcomeKind::AuthFailed,
            DialError::Refused { .. } | DialError::Connect { .. } | DialError::Protocol { .. } => {
                OutcomeKind::UpstreamRefused
            }
        }
    }
}

/// What `/readyz` waits for. The daemon and the API watcher set the flags.
#[derive(Debug, Default)]
pub struct Readiness {
    /// The hooks are attached to the cgroup.
    pub programs_attached: AtomicBool,
    /// Every `--listen` address is bound and served.
    pub listeners_up: AtomicBool,
    /// A valid proxy configuration is in force.
    pub config_loaded: AtomicBool,
    /// `--kube` is on, so `api_synced` counts.
    pub kube: AtomicBool,
    /// The first complete list of pods and namespaces has been applied.
    pub api_synced: AtomicBool,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        let on = |flag: &AtomicBool| flag.load(Ordering::Relaxed);
        on(&self.programs_attached)
            && on(&self.listeners_up)
            && on(&self.config_loaded)
            && (!on(&self.kube) || on(&self.api_synced))
    }
}

/// Every metric the daemon exports, and the readiness flags.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Connections the daemon routed, by decision (`direct`, `proxy`);
    /// `kernel-bypass` comes from the kernel counters.
    routed: Arc<Routed>,
    outcomes: Family<Label, Counter>,
    /// Connections reset at accept by a cap, by which cap.
    refused: Family<Label, Counter>,
    /// Connections sent direct because the proxy was unreachable (failMode open).
    fail_open: Counter,
    bytes: Family<Label, Counter>,
    active: Gauge,
    connect_duration: Histogram,
    exempt_pods: Gauge,
    /// The reloader's counts, once it runs.
    reloads: Arc<OnceLock<Arc<ReloadStats>>>,
    pub readiness: Readiness,
    /// Exempt pods whose cgroup could not be put in the kernel map (e.g.
    /// map full): they stay redirected (fail closed).
    exempt_unapplied: Gauge,
    /// Failed writes to the kernel's exempt-cgroup map.
    exempt_write_failures: Counter,
}

/// Connections routed by the daemon, read by [`KernelCollector`] so that
/// one `redirector_connections_total` family holds all three decisions.
#[derive(Debug, Default)]
struct Routed {
    direct: AtomicU64,
    proxy: AtomicU64,
}

/// What is read at scrape time: the kernel counters,
/// `redirector_connections_total` (its `kernel-bypass` series is the
/// kernel's `skipped_bypass`) and the reloader's counts.
#[derive(Debug)]
struct ScrapeCollector {
    /// The pin directory; `None` in tests, where no map is pinned.
    bpffs: Option<PathBuf>,
    routed: Arc<Routed>,
    reloads: Arc<OnceLock<Arc<ReloadStats>>>,
}

impl Collector for ScrapeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let kernel = self
            .bpffs
            .as_ref()
            .and_then(|dir| hook::read_counters(&PinDir::new(dir)).ok())
            .unwrap_or_default();
        let bypass = kernel
            .iter()
            .find(|(c, _)| *c == redirector_ebpf::Counter::SkippedBypass)
            .map_or(0, |(_, n)| *n);
        let decisions = [
            ("kernel-bypass", bypass),
            ("direct", self.routed.direct.load(Ordering::Relaxed)),
            ("proxy", self.routed.proxy.load(Ordering::Relaxed)),
        ];
        {
            let mut family = encoder.encode_descriptor(
                "connections",
                "Pods' TCP connections by routing decision",
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for (decision, n) in decisions {
                let labels = [("decision", decision)];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        if !kernel.is_empty() {
            let mut family = encoder.encode_descriptor(
                "kernel_connects",
                "TCP connects seen by the cgroup hooks, by what they did (per-CPU map, summed)",
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for (counter, n) in kernel {
                let labels = [("reason", counter.name())];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        let (ok, failed) = self.reloads.get().map_or((0, 0), |stats| {
            (
                stats.ok.load(Ordering::Relaxed),
                stats.failed.load(Ordering::Relaxed),
            )
        });
        let mut family = encoder.encode_descriptor(
            "config_reloads",
            "Proxy configuration reloads by result (failed: the old one stayed in force)",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (result, n) in [("ok", ok), ("failed", failed)] {
            let labels = [("result", result)];
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Metrics {
    /// `bpffs`: where the kernel counters are pinned (`None`: not exported).
    pub fn new(bpffs: Option<PathBuf>) -> Self {
        let mut registry = Registry::with_prefix("redirector");
        let routed = Arc::new(Routed::default());
        let reloads = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(ScrapeCollector {
            bpffs,
            routed: routed.clone(),
            reloads: Arc::clone(&reloads),
        }));
        let outcomes = Family::<Label, Counter>::default();
        registry.register(
            "connection_outcomes",
            "Redirected connections by how they ended",
            outcomes.clone(),
        );
        let refused = Family::<Label, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections reset at accept because a cap was reached (--max-connections, \
             --max-connections-per-pod)",
            refused.clone(),
        );
        let fail_open = Counter::default();
        registry.register(
            "fail_open_connections",
            "Connections sent direct because the proxy was unreachable (failMode: open)",
            fail_open.clone(),
        );
        for refusal in [Refusal::Global, Refusal::Pod] {
            let _ = refused.get_or_create(&[("reason", refusal.label())]);
        }
        let bytes = Family::<Label, Counter>::default();
        registry.register(
            "bytes",
            "Bytes relayed: upstream (client to destination), downstream (back)",
            bytes.clone(),
        );
        let active = Gauge::default();
        registry.register(
            "active_connections",
            "Redirected connections open now",
            active.clone(),
        );
        let connect_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "connect_duration_seconds",
            "Time to open the upstream side: CONNECT tunnel or direct connect",
            connect_duration.clone(),
        );
        let exempt_pods = Gauge::default();
        registry.register(
            "exempt_pods",
            "Pods exempted from redirection through the Kubernetes API (--kube)",
            exempt_pods.clone(),
        );
        let exempt_unapplied = Gauge::default();
        registry.register(
            "exempt_pods_unapplied",
            "Exempt pods left redirected because their cgroup could not be put in the kernel map",
            exempt_unapplied.clone(),
        );
        let exempt_write_failures = Counter::default();
        registry.register(
            "exempt_map_write_failures",
            "Failed writes to the kernel's exempt-cgroup map (e.g. map full); retried",
            exempt_write_failures.clone(),
        );
        // Every series present from the start, so rates work from zero.
        for kind in OutcomeKind::ALL {
            let _ = outcomes.get_or_create(&[("outcome", kind.name())]);
        }
        for direction in ["upstream", "downstream"] {
            let _ = bytes.get_or_create(&[("direction", direction)]);
        }
        Self {
            registry,
            routed,
            outcomes,
            refused,
            fail_open,
            bytes,
            active,
            connect_duration,
            exempt_pods,
            reloads,
            readiness: Readiness::default(),
            exempt_unapplied,
            exempt_write_failures,
        }
    }

    /// Counts a connection the daemon routed (a kernel-bypass decision
    /// here means the maps changed after the connect: it went direct).
    pub fn record_decision(&self, decision: &Decision) {
        let counter = match decision {
            Decision::KernelBypass { .. } | Decision::Direct { .. } => &self.routed.direct,
            Decision::Proxy { .. } => &self.routed.proxy,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts how a connection ended; call once per connection.
    /// Counts a connection sent direct by `failMode: open`.
    pub fn record_fail_open(&self) {
        self.fail_open.inc();
    }

    /// Counts a connection a cap refused at accept.
    pub fn record_refusal(&self, refusal: Refusal) {
        self.refused
            .get_or_create(&[("reason", refusal.label())])
            .inc();
    }

    pub fn record_outcome(&self, kind: OutcomeKind) {
        self.outcomes
            .get_or_create(&[("outcome", kind.name())])
            .inc();
    }

    pub fn record_bytes(&self, upstream: u64, downstream: u64) {
        self.bytes
            .get_or_create(&[("direction", "upstream")])
            .inc_by(upstream);
        self.bytes
            .get_or_create(&[("direction", "downstream")])
            .inc_by(downstream);
    }

    pub fn observe_connect(&self, took: Duration) {
        self.connect_duration.observe(took.as_secs_f64());
    }

    pub fn set_exempt_pods(&self, n: usize) {
        self.exempt_pods.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Exports the reloader's counts as `redirector_config_reloads_total`.
    pub fn follow_reloads(&self, stats: Arc<ReloadStats>) {
        let _ = self.reloads.set(stats);
    }

    /// Counts a connection as open until the guard is dropped.
    pub fn active_guard(&self) -> ActiveGuard {
        self.active.inc();
        ActiveGuard(self.active.clone())
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// One reconcile pass's failed exempt-map writes, and how many exempt
    /// pods are left redirected because of them.
    pub fn record_exempt_failures(&self, failed_writes: usize, unapplied: usize) {
        self.exempt_write_failures.inc_by(failed_writes as u64);
        self.exempt_unapplied
            .set(i64::try_from(unapplied).unwrap_or(i64::MAX));
    }
}

/// Decrements `redirector_active_connections` when dropped.
pub struct ActiveGuard(Gauge);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Binds `addr` now, so a taken port stops the start; serves in the task.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics {addr}"))
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&metrics, &req)) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "metrics: connection ended");
            }
        });
    }
}

fn respond(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" if metrics.readiness.is_ready() => {
            (StatusCode::OK, "text/plain", "ready\n".to_string())
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready\n".to_string(),
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
    use crate::{http_forward::Served, relay::Transferred};

    fn proxy() -> crate::config::ProxyUrl {
        crate::config::ProxyConfig::parse("t", r#"{"httpsProxy": "http://u:secret@10.0.0.4:3128"}"#)
            .unwrap()
            .https_proxy
            .unwrap()
    }

    #[test]
    fn outcome_mapping() {
        let io = || std::io::Error::other("x");
        let relayed = Outcome::Relayed {
            transferred: Transferred::default(),
        };
        let served = |auth_failures| Outcome::HttpServed {
            served: Served {
                requests: 1,
                auth_failures,
                transferred: Transferred::default(),
            },
        };
        let dial = |e| Outcome::DialFailed(e);
        let cases = [
            (relayed, false, "ok"),
            (
                Outcome::Relayed {
                    transferred: Transferred::default(),
                },
                true,
                "peek_timeout",
            ),
            (served(0), false, "ok"),
            (served(1), false, "auth_failed"),
            (
                dial(DialError::ProxyUnreachable {
                    proxy: proxy(),
                    source: io(),
                }),
                false,
                "upstream_unreachable",
            ),
            (
                dial(DialError::Timeout(Duration::from_secs(1))),
                true,
                "upstream_unreachable",
            ),
            (
                dial(DialError::Direct {
                    dst: "10.0.0.1:443".parse().unwrap(),
                    source: io(),
                }),
                false,
                "upstream_unreachable",
            ),
            (
                dial(DialError::Refused {
                    proxy: proxy(),
                    authority: "a:443".into(),
                    status: StatusCode::FORBIDDEN,
                }),
                false,
                "upstream_refused",
            ),
            (
                dial(DialError::AuthFailed {
                    proxy: proxy(),
                    authority: "a:443".into(),
                }),
                false,
                "auth_failed",
            ),
            (
                dial(DialError::ProxyTls {
                    proxy: proxy(),
                    source: io(),
                }),
                false,
                "tls_error",
            ),
            (
                dial(DialError::ProxySpeaksPlainHttp { proxy: proxy() }),
                false,
                "tls_error",
            ),
            (Outcome::BrokeOff("reset".into()), true, "broke_off"),
        ];
        for (outcome, timed_out, want) in cases {
            assert_eq!(
                OutcomeKind::of(&outcome, timed_out).name(),
                want,
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn encodes_every_metric() {
        let m = Metrics::new(None);
        m.record_outcome(OutcomeKind::Ok);
        m.record_outcome(OutcomeKind::Ok);
        m.record_outcome(OutcomeKind::AuthFailed);
        m.record_bytes(10, 2000);
        m.record_bytes(5, 0);
        m.observe_connect(Duration::from_millis(3));
        m.set_exempt_pods(4);
        let reloads = Arc::new(ReloadStats::default());
        m.follow_reloads(reloads.clone());
        reloads.ok.fetch_add(1, Ordering::Relaxed);
        reloads.failed.fetch_add(2, Ordering::Relaxed);
        let guard = m.active_guard();
        let _second = m.active_guard();
        drop(guard);
        let text = m.encode();
        for line in [
            "redirector_connections_total{decision=\"kernel-bypass\"} 0",
            "redirector_connections_total{decision=\"proxy\"} 0",
            "redirector_connection_outcomes_total{outcome=\"ok\"} 2",
            "redirector_connection_outcomes_total{outcome=\"auth_failed\"} 1",
            "redirector_connection_outcomes_total{outcome=\"peek_timeout\"} 0",
            "redirector_bytes_total{direction=\"upstream\"} 15",
            "redirector_bytes_total{direction=\"downstream\"} 2000",
            "redirector_active_connections 1",
            "redirector_connect_duration_seconds_count 1",
            "redirector_exempt_pods 4",
            "redirector_config_reloads_total{result=\"ok\"} 1",
            "redirector_config_reloads_total{result=\"failed\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn ready_only_when_everything_is_up() {
        let r = Readiness::default();
        assert!(!r.is_ready());
        r.programs_attached.store(true, Ordering::Relaxed);
        r.listeners_up.store(true, Ordering::Relaxed);
        assert!(!r.is_ready());
        r.config_loaded.store(true, Ordering::Relaxed);
        assert!(r.is_ready());
        r.kube.store(true, Ordering::Relaxed);
        assert!(!r.is_ready());
        r.api_synced.store(true, Ordering::Relaxed);
        assert!(r.is_ready());
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let metrics = Arc::new(Metrics::new(None));
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, metrics.clone()));
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
        metrics
            .readiness
            .programs_attached
            .store(true, Ordering::Relaxed);
        metrics
            .readiness
            .listeners_up
            .store(true, Ordering::Relaxed);
        metrics
            .readiness
            .config_loaded
            .store(true, Ordering::Relaxed);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        let scraped = get("/metrics").await;
        assert!(scraped.starts_with("HTTP/1.1 200"), "{scraped}");
        assert!(
            scraped.contains("redirector_active_connections 0"),
            "{scraped}"
        );
    }
}
