//! Metrics: Prometheus counters for what the daemon does; [`server`] serves
//! them with `/healthz` and `/readyz` on `--metrics ADDR`.
//!
//! This module holds the labels and the counters only: callers say what
//! happened in its terms ([`OutcomeKind`], [`Route`], [`Refusal`],
//! [`ReloadResult`]). Label sets are small and fixed (decision, outcome,
//! direction, kernel counter name, reload result); never a hostname or an
//! address. Kernel counters are read at scrape time, through
//! [`KernelCounters`] (the pinned map, in `hook::counters`).
pub mod scrape;
pub mod server;

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

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

use crate::{
    limits::Refusal,
    policy::CheckResult,
    relay::{RelayPath, lanes::LaneEvent},
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
    /// Reset by policy: `missingProxy: refuse`, or a destination the daemon
    /// never dials directly (the node's own loopback or link).
    PolicyRefused,
}

impl OutcomeKind {
    pub const ALL: [OutcomeKind; 9] = [
        OutcomeKind::Ok,
        OutcomeKind::UpstreamRefused,
        OutcomeKind::UpstreamUnreachable,
        OutcomeKind::AuthFailed,
        OutcomeKind::PeekTimeout,
        OutcomeKind::NoOriginalDestination,
        OutcomeKind::BrokeOff,
        OutcomeKind::TlsError,
        OutcomeKind::PolicyRefused,
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
            OutcomeKind::PolicyRefused => "policy_refused",
        }
    }
}

/// Where the daemon sent a connection, as counted in
/// `redirector_connections_total{decision}` (its `kernel-bypass` series
/// comes from the kernel counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Direct,
    Proxy,
    /// Reset by policy (`missingProxy: refuse`).
    Refused,
}

/// How a configuration reload went, as counted in
/// `redirector_config_reloads_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    /// The new configuration is in force.
    Ok,
    /// Refused (invalid, unreadable, or the kernel tries could not be
    /// updated); the previous configuration stayed in force.
    Failed,
}

impl ReloadResult {
    pub const fn label(self) -> &'static str {
        match self {
            ReloadResult::Ok => "ok",
            ReloadResult::Failed => "failed",
        }
    }
}

/// The kernel hooks' counters, read at scrape time.
pub trait KernelCounters: fmt::Debug + Send + Sync + 'static {
    /// Every counter, summed over CPUs; empty when they cannot be read.
    fn read(&self) -> Vec<(redirector_ebpf::Counter, u64)>;
}

/// Every metric the daemon exports.
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
    /// `noProxy` name rules checked against the name's addresses, by result.
    name_checks: Family<Label, Counter>,
    bytes: Family<Label, Counter>,
    active: Gauge,
    /// Bulk lanes held now, and lanes asked for by result.
    bulk_lanes: Gauge,
    bulk_lane_requests: Family<Label, Counter>,
    /// Connections whose bytes went through the relay, by its path.
    relay_paths: Family<Label, Counter>,
    connect_duration: Histogram,
    exempt_pods: Gauge,
    /// Configuration reloads, by result.
    reloads: Family<Label, Counter>,
    /// Exempt pods whose cgroup could not be put in the kernel map (e.g.
    /// map full): they stay redirected (fail closed).
    exempt_unapplied: Gauge,
    /// Failed writes to the kernel's exempt-cgroup map.
    exempt_write_failures: Counter,
    /// Connections to the metrics listener closed at accept (its cap).
    metrics_refused: Counter,
    /// The connection caps in force, by cap (`global`, `pod`).
    connection_limits: Family<Label, Gauge>,
    /// Per upstream proxy (its URL without credentials): up (1) or down
    /// (0), dials that reached it, dials that could not.
    proxy_up: Family<ProxyLabel, Gauge>,
    proxy_connections: Family<ProxyLabel, Counter>,
    proxy_failures: Family<ProxyLabel, Counter>,
}

/// A proxy's URL as a label.
type ProxyLabel = [(&'static str, String); 1];

/// Connections routed by the daemon, read by [`ScrapeCollector`] so that
/// one `redirector_connections_total` family holds all three decisions.
#[derive(Debug, Default)]
struct Routed {
    direct: AtomicU64,
    proxy: AtomicU64,
    refused: AtomicU64,
}

/// What is read at scrape time: the kernel counters and
/// `redirector_connections_total` (its `kernel-bypass` series is the
/// kernel's `skipped_bypass`).
#[derive(Debug)]
struct ScrapeCollector {
    /// `None` in tests, where no map is pinned.
    kernel: Option<Box<dyn KernelCounters>>,
    routed: Arc<Routed>,
}

impl Collector for ScrapeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let kernel = self
            .kernel
            .as_ref()
            .map(|counters| counters.read())
            .unwrap_or_default();
        let bypass = kernel
            .iter()
            .find(|(c, _)| *c == redirector_ebpf::Counter::SkippedBypass)
            .map_or(0, |(_, n)| *n);
        let decisions = [
            ("kernel-bypass", bypass),
            ("direct", self.routed.direct.load(Ordering::Relaxed)),
            ("proxy", self.routed.proxy.load(Ordering::Relaxed)),
            ("refuse", self.routed.refused.load(Ordering::Relaxed)),
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
                "What the cgroup hooks did with connects, UDP sends and socket creations (per-CPU map, summed)",
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for (counter, n) in kernel {
                let labels = [("reason", counter.name())];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// A counter per value of `key`, registered as `name`, with every value's
/// series present (at 0) from the start, so that rates work from zero.
fn labelled_counters<const N: usize>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    key: &'static str,
    values: [&'static str; N],
) -> Family<Label, Counter> {
    let family = Family::<Label, Counter>::default();
    registry.register(name, help, family.clone());
    for value in values {
        let _ = family.get_or_create(&[(key, value)]);
    }
    family
}

impl Metrics {
    /// `kernel`: where the kernel counters are read (`None`: not exported).
    pub fn new(kernel: Option<Box<dyn KernelCounters>>) -> Self {
        let mut registry = Registry::with_prefix("redirector");
        let routed = Arc::new(Routed::default());
        registry.register_collector(Box::new(ScrapeCollector {
            kernel,
            routed: routed.clone(),
        }));
        let outcomes = labelled_counters(
            &mut registry,
            "connection_outcomes",
            "Redirected connections by how they ended",
            "outcome",
            OutcomeKind::ALL.map(OutcomeKind::name),
        );
        let refused = labelled_counters(
            &mut registry,
            "connections_refused",
            "Connections reset at accept because a cap was reached (--max-connections, \
             --max-connections-per-pod)",
            "reason",
            [Refusal::Global, Refusal::Pod].map(Refusal::label),
        );
        let name_checks = labelled_counters(
            &mut registry,
            "name_checks",
            "noProxy name rules (matched on TLS SNI or HTTP Host) checked against the name's \
             addresses: verified went direct, the others through the proxy",
            "result",
            CheckResult::ALL.map(CheckResult::label),
        );
        let fail_open = Counter::default();
        registry.register(
            "fail_open_connections",
            "Connections sent direct because the proxy was unreachable (failMode: open)",
            fail_open.clone(),
        );
        let bytes = labelled_counters(
            &mut registry,
            "bytes",
            "Bytes relayed: upstream (client to destination), downstream (back)",
            "direction",
            ["upstream", "downstream"],
        );
        let active = Gauge::default();
        registry.register(
            "active_connections",
            "Redirected connections open now",
            active.clone(),
        );
        let bulk_lanes = Gauge::default();
        registry.register(
            "bulk_lanes_in_use",
            "Connections relayed with wide socket buffers now (--bulk-lanes)",
            bulk_lanes.clone(),
        );
        let bulk_lane_requests = labelled_counters(
            &mut registry,
            "bulk_lane_requests",
            "Connections that moved enough to ask for a bulk lane: granted, or all_taken \
             (the connection kept its small buffers)",
            "result",
            ["granted", "all_taken"],
        );
        let relay_paths = labelled_counters(
            &mut registry,
            "relayed_connections",
            "Connections whose bytes the relay moved, by the path it took: splice (small \
             buffers), splice_bulk_lane (widened on the way), tls (userspace, to an https:// \
             proxy)",
            "path",
            RelayPath::ALL.map(RelayPath::label),
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
        let reloads = labelled_counters(
            &mut registry,
            "config_reloads",
            "Proxy configuration reloads by result (failed: the old one stayed in force)",
            "result",
            [ReloadResult::Ok, ReloadResult::Failed].map(ReloadResult::label),
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
        let metrics_refused = Counter::default();
        registry.register(
            "metrics_connections_refused",
            "Connections to the metrics listener closed at accept because its cap was reached",
            metrics_refused.clone(),
        );
        let connection_limits = Family::<Label, Gauge>::default();
        registry.register(
            "connection_limit",
            "The connection caps in force (global: --max-connections or what the memory and \
             open-files limits allow; pod: --max-connections-per-pod)",
            connection_limits.clone(),
        );
        let proxy_up = Family::<ProxyLabel, Gauge>::default();
        registry.register(
            "upstream_proxy_up",
            "Whether the daemon counts an upstream proxy as up (failover between listed proxies)",
            proxy_up.clone(),
        );
        let proxy_connections = Family::<ProxyLabel, Counter>::default();
        registry.register(
            "upstream_proxy_connections",
            "Dials that reached an upstream proxy",
            proxy_connections.clone(),
        );
        let proxy_failures = Family::<ProxyLabel, Counter>::default();
        registry.register(
            "upstream_proxy_failures",
            "Dials that could not reach an upstream proxy (the next listed one was tried)",
            proxy_failures.clone(),
        );
        Self {
            proxy_up,
            proxy_connections,
            proxy_failures,
            registry,
            routed,
            outcomes,
            refused,
            fail_open,
            name_checks,
            bytes,
            active,
            bulk_lanes,
            bulk_lane_requests,
            relay_paths,
            connect_duration,
            exempt_pods,
            reloads,
            exempt_unapplied,
            exempt_write_failures,
            metrics_refused,
            connection_limits,
        }
    }

    /// A dial through `proxy` reached it (`up`) or not.
    pub fn record_proxy(&self, proxy: &str, up: bool) {
        let label = [("proxy", proxy.to_owned())];
        self.proxy_up.get_or_create(&label).set(i64::from(up));
        if up {
            self.proxy_connections.get_or_create(&label).inc();
        } else {
            self.proxy_failures.get_or_create(&label).inc();
        }
    }

    /// Counts a connection to the metrics listener closed at accept.
    pub fn record_metrics_refusal(&self) {
        self.metrics_refused.inc();
    }

    /// Exports the connection caps in force.
    pub fn set_connection_limits(&self, global: usize, per_pod: usize, bulk_lanes: usize) {
        for (cap, n) in [
            ("global", global),
            ("pod", per_pod),
            ("bulk_lanes", bulk_lanes),
        ] {
            self.connection_limits
                .get_or_create(&[("cap", cap)])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Counts a connection the daemon routed.
    pub fn record_route(&self, route: Route) {
        let counter = match route {
            Route::Direct => &self.routed.direct,
            Route::Proxy => &self.routed.proxy,
            Route::Refused => &self.routed.refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection sent direct by `failMode: open`.
    pub fn record_fail_open(&self) {
        self.fail_open.inc();
    }

    /// Counts a `noProxy` name rule's check.
    pub fn record_name_check(&self, result: CheckResult) {
        self.name_checks
            .get_or_create(&[("result", result.label())])
            .inc();
    }

    /// Counts a connection a cap refused at accept.
    pub fn record_refusal(&self, refusal: Refusal) {
        self.refused
            .get_or_create(&[("reason", refusal.label())])
            .inc();
    }

    /// Counts how a connection ended; call once per connection.
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

    /// Counts a configuration reload, applied or refused.
    pub fn record_reload(&self, result: ReloadResult) {
        self.reloads
            .get_or_create(&[("result", result.label())])
            .inc();
    }

    /// Counts what happened to a bulk lane.
    pub fn record_bulk_lane(&self, event: LaneEvent) {
        let requested = |result| {
            self.bulk_lane_requests
                .get_or_create(&[("result", result)])
                .inc();
        };
        match event {
            LaneEvent::Granted => {
                requested("granted");
                self.bulk_lanes.inc();
            }
            LaneEvent::AllTaken => requested("all_taken"),
            LaneEvent::GivenBack => {
                self.bulk_lanes.dec();
            }
        }
    }

    /// Counts a connection whose bytes the relay moved, by path.
    pub fn record_relay_path(&self, path: RelayPath) {
        self.relay_paths
            .get_or_create(&[("path", path.label())])
            .inc();
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

#[cfg(test)]
mod tests {
    use super::*;
    use redirector_ebpf::Counter as KernelCounter;

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
        m.record_reload(ReloadResult::Ok);
        m.record_reload(ReloadResult::Failed);
        m.record_reload(ReloadResult::Failed);
        let guard = m.active_guard();
        let _second = m.active_guard();
        drop(guard);
        for lane in [
            LaneEvent::Granted,
            LaneEvent::Granted,
            LaneEvent::AllTaken,
            LaneEvent::GivenBack,
        ] {
            m.record_bulk_lane(lane);
        }
        m.set_connection_limits(100, 50, 2);
        m.record_relay_path(RelayPath::BulkLane);
        m.record_relay_path(RelayPath::Splice);
        m.record_relay_path(RelayPath::Splice);
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
            "redirector_bulk_lanes_in_use 1",
            "redirector_bulk_lane_requests_total{result=\"granted\"} 2",
            "redirector_bulk_lane_requests_total{result=\"all_taken\"} 1",
            "redirector_relayed_connections_total{path=\"splice\"} 2",
            "redirector_relayed_connections_total{path=\"splice_bulk_lane\"} 1",
            "redirector_relayed_connections_total{path=\"tls\"} 0",
            "redirector_connection_limit{cap=\"bulk_lanes\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    /// Kernel counters at scrape time: one `kernel_connects` series per
    /// counter, and `skipped_bypass` as the `kernel-bypass` decision.
    #[test]
    fn kernel_counters_are_read_at_scrape_time() {
        #[derive(Debug)]
        struct Fixed;
        impl KernelCounters for Fixed {
            fn read(&self) -> Vec<(KernelCounter, u64)> {
                KernelCounter::ALL
                    .iter()
                    .map(|c| {
                        (
                            *c,
                            if *c == KernelCounter::SkippedBypass {
                                7
                            } else {
                                1
                            },
                        )
                    })
                    .collect()
            }
        }
        let m = Metrics::new(Some(Box::new(Fixed)));
        m.record_route(Route::Direct);
        m.record_route(Route::Proxy);
        m.record_route(Route::Proxy);
        let text = m.encode();
        let bypass = KernelCounter::SkippedBypass.name();
        for line in [
            "redirector_connections_total{decision=\"kernel-bypass\"} 7".to_string(),
            "redirector_connections_total{decision=\"direct\"} 1".to_string(),
            "redirector_connections_total{decision=\"proxy\"} 2".to_string(),
            format!("redirector_kernel_connects_total{{reason=\"{bypass}\"}} 7"),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in:\n{text}"
            );
        }
        let series = text
            .lines()
            .filter(|l| l.starts_with("redirector_kernel_connects_total{"))
            .count();
        assert_eq!(series, KernelCounter::ALL.len(), "{text}");
    }
}
