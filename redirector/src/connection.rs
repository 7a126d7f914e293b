//! One redirected connection, start to end: original destination lookup →
//! classify (peek for the TLS SNI or HTTP Host) → policy → dial → relay.
//! Every connection ends in exactly one [`Outcome`], logged and counted once.
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::{io::AsyncWriteExt, net::TcpStream};

use crate::{
    audit::{AuditLog, Entry},
    caller::{self, Caller, IdentityHeaders, PodDirectory},
    classify::{self, Classification, Opaque, PeekLimits},
    config::{FailMode, ProxyUrl},
    dial::{DialError, Dialer, LinkLocal, Tunnel, Upstream},
    http_forward::{self, Forwarded, Served, Switched},
    lookup::OriginalDst,
    metrics::{Metrics, OutcomeKind, Route},
    policy::{CheckResult, Decision, Mode, NameCheck, Policy, Target, Verdict},
    ratelog::{self, RateLog},
    relay::{BulkLanes, RelayPath, Transferred, relay_spliced, relay_tls},
    resolve::NameResolver,
    swappable::Swappable,
};

// Per-connection warnings, rate-limited (a pod can fail connections at
// will); the metrics count every one.
static NO_ORIGINAL_DST: RateLog = RateLog::default_budget("no_original_destination");
static UPSTREAM_FAILED: RateLog = RateLog::default_budget("upstream_failed");
static PROXY_AUTH_FAILED: RateLog = RateLog::default_budget("proxy_auth_failed");
static FAIL_OPEN: RateLog = RateLog::default_budget("fail_open");
static NAME_NOT_VERIFIED: RateLog = RateLog::default_budget("name_not_verified");
static MISSING_PROXY_REFUSED: RateLog = RateLog::default_budget("missing_proxy_refused");
static UNKNOWN_PROFILE: RateLog = RateLog::default_budget("unknown_profile");

/// What every connection handler shares.
pub struct Shared {
    /// The proxy configuration and built-ins in force, swapped by a reload;
    /// a connection decides on the one in force when it starts.
    pub policy: Swappable<Policy>,
    /// Original destinations saved by the kernel hooks.
    pub original_dst: Arc<dyn OriginalDst>,
    /// How upstream sockets are opened.
    pub dialer: Dialer,
    /// Bounds on waiting for the client's first bytes.
    pub peek: PeekLimits,
    /// Where each connection's decision, outcome and bytes are counted.
    pub metrics: Arc<Metrics>,
    /// Wide buffers for a few bulk connections at once.
    pub lanes: BulkLanes,
    /// The node's resolver, for `noProxy` name rules.
    pub names: NameResolver,
    /// This node's pods by address (filled with `--kube`).
    pub pods: PodDirectory,
    /// The audit log, when the configuration asks for one.
    pub audit: Option<AuditLog>,
}

/// How a connection ended.
#[derive(Debug)]
pub enum Outcome {
    /// Bytes relayed to the end (direct or through a CONNECT tunnel).
    Relayed {
        transferred: Transferred,
        path: RelayPath,
    },
    /// Plain HTTP requests forwarded in absolute form (and, after a `101`,
    /// the new protocol's bytes relayed, counted in `served`).
    HttpServed { served: Served },
    /// The upstream side could not be opened; the client was reset.
    DialFailed(DialError),
    /// The relay or HTTP exchange broke off (a peer reset, for example).
    BrokeOff(String),
    /// Reset by policy (`missingProxy: refuse`), nothing dialed.
    Refused,
}

impl Outcome {
    /// How it is counted. A failure wins over a peek timeout; a peek
    /// timeout wins over plain success.
    pub fn kind(&self, peek_timed_out: bool) -> OutcomeKind {
        let kind = match self {
            Outcome::Relayed { .. } => OutcomeKind::Ok,
            Outcome::HttpServed { served } if served.auth_failures > 0 => OutcomeKind::AuthFailed,
            Outcome::HttpServed { .. } => OutcomeKind::Ok,
            Outcome::DialFailed(e) => dial_failure_kind(e),
            Outcome::BrokeOff(_) => OutcomeKind::BrokeOff,
            Outcome::Refused => OutcomeKind::PolicyRefused,
        };
        match kind {
            OutcomeKind::Ok if peek_timed_out => OutcomeKind::PeekTimeout,
            kind => kind,
        }
    }
}

/// How a failed dial is counted.
fn dial_failure_kind(e: &DialError) -> OutcomeKind {
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
        DialError::NodeLocal { .. } => OutcomeKind::PolicyRefused,
    }
}

/// How a decision is counted: a kernel-bypass decision here means the maps
/// changed after the connect, and it goes direct.
fn route(decision: &Decision) -> Route {
    match decision {
        Decision::KernelBypass { .. } | Decision::Direct { .. } => Route::Direct,
        Decision::Proxy { .. } => Route::Proxy,
        Decision::Refuse { .. } => Route::Refused,
    }
}

/// Serves one accepted connection to the end.
pub async fn handle(shared: Arc<Shared>, client: TcpStream, peer: SocketAddr) {
    let started = Instant::now();
    let _active = shared.metrics.active_guard();
    let Some(dst) = shared.original_dst.take(peer) else {
        reset(client);
        shared
            .metrics
            .record_outcome(OutcomeKind::NoOriginalDestination);
        ratelog::warn!(
            NO_ORIGINAL_DST,
            client = %peer,
            "refused a connection that our hook did not redirect (no original destination)"
        );
        return;
    };
    let top = shared.policy.load();
    // The profile of the pod's namespace (issue 18), chosen per connection.
    let policy = match top.select(shared.pods.profile_label(peer.ip()).as_deref()) {
        Ok(policy) => policy,
        Err(unknown) => {
            reset(client);
            shared.metrics.record_route(Route::Refused);
            shared.metrics.record_outcome(OutcomeKind::PolicyRefused);
            ratelog::warn!(UNKNOWN_PROFILE, client = %peer, %dst, error = %unknown, "client reset");
            audit_refused_profile(&shared, peer, dst, &unknown.0, started.elapsed());
            return;
        }
    };
    let (class, peek_timed_out) = if policy.config().is_server_first(dst.port()) {
        // The client waits for the server's banner: a peek would only make
        // it wait the whole timeout first.
        (Classification::opaque(Opaque::ServerFirstPort), false)
    } else {
        classify::peek_classify_timed(&client, shared.peek).await
    };
    let verdict = policy.decide(&Target {
        ip: Some(dst.ip()),
        host: class.hostname.as_deref(),
        port: dst.port(),
        protocol: class.protocol,
    });
    let fail_mode = policy.config().fail_mode;
    let identity = identity_headers(&shared, policy, peer);
    let profile = policy.profile().map(str::to_owned);
    drop(top);
    let decision = match verdict {
        Verdict::Final(decision) => decision,
        Verdict::CheckName(rule) => {
            // Boxed: the wait is short, the relay that follows is not.
            let resolution = Box::pin(shared.names.resolve(rule.name())).await;
            let (decision, check) = rule.decide(resolution);
            note_name_check(&shared.metrics, peer, dst, &decision, &check);
            decision
        }
    };
    shared.metrics.record_route(route(&decision));
    // Opening is boxed: its future is large and short-lived, and the task
    // then keeps only the relay's state for the connection's life.
    let opening = open(&shared, client, dst, &class, &decision, fail_mode, identity);
    // The proxy actually used (with failover, maybe not the first listed),
    // for the audit log; a plain HTTP connection's is in its `Served`.
    let mut via = None;
    let outcome = match Box::pin(opening).await {
        Opened::Relay(client, tunnel) => {
            let Tunnel {
                upstream,
                early,
                proxy,
            } = tunnel;
            via = proxy;
            relay_to(client, upstream, early, &shared.lanes, &shared.metrics).await
        }
        Opened::Switched(served, Switched { client, tunnel }) => {
            // Taken apart before the relay: a partly moved tunnel would be
            // kept whole in the task's state while it relays. Its `proxy` is
            // none: `served` names the proxy.
            let Tunnel {
                upstream,
                early,
                proxy,
            } = tunnel;
            drop(proxy);
            let relayed = relay_to(client, upstream, early, &shared.lanes, &shared.metrics).await;
            after_switch(served, relayed)
        }
        Opened::Done(outcome) => outcome,
    };
    record(&shared.metrics, &outcome, peek_timed_out);
    if let Some(audit) = &shared.audit {
        let kind = outcome.kind(peek_timed_out);
        audit_line(
            audit,
            &shared,
            peer,
            dst,
            &class,
            &decision,
            profile.as_deref(),
            via.as_deref(),
            &outcome,
            kind,
            started.elapsed(),
        );
    }
    log_outcome(peer, dst, &class, &decision, &outcome, started.elapsed());
}

/// The audit line of a connection refused because its namespace names a
/// profile the configuration lacks.
fn audit_refused_profile(
    shared: &Shared,
    peer: SocketAddr,
    dst: SocketAddr,
    profile: &str,
    elapsed: Duration,
) {
    let Some(audit) = &shared.audit else { return };
    let pod = shared.pods.pod(peer.ip());
    audit.record(&Entry {
        namespace: pod.as_ref().map(|p| p.namespace.as_str()),
        pod: pod.as_ref().map(|p| p.name.as_str()),
        pod_addr: peer.ip(),
        dst,
        name: None,
        decision: "refuse",
        rule: "unknown profile",
        profile: Some(profile),
        proxy: None,
        outcome: OutcomeKind::PolicyRefused.name(),
        bytes_up: 0,
        bytes_down: 0,
        duration: elapsed,
    });
}

/// The connection's audit line (`audit`).
#[allow(clippy::too_many_arguments)]
fn audit_line(
    audit: &AuditLog,
    shared: &Shared,
    peer: SocketAddr,
    dst: SocketAddr,
    class: &Classification,
    decision: &Decision,
    profile: Option<&str>,
    via: Option<&ProxyUrl>,
    outcome: &Outcome,
    kind: OutcomeKind,
    elapsed: Duration,
) {
    let pod = shared.pods.pod(peer.ip());
    let moved = match outcome {
        Outcome::Relayed { transferred, .. } => *transferred,
        Outcome::HttpServed { served } => served.transferred,
        _ => Transferred::default(),
    };
    audit.record(&Entry {
        namespace: pod.as_ref().map(|p| p.namespace.as_str()),
        pod: pod.as_ref().map(|p| p.name.as_str()),
        pod_addr: peer.ip(),
        dst,
        name: class.hostname.as_deref(),
        decision: decision.kind(),
        rule: decision.rule(),
        profile,
        // The proxy used; for a plain HTTP connection, the last request's;
        // when none was reached (a dial failure), the one chosen first.
        proxy: match (via, outcome, decision) {
            (Some(proxy), ..) => Some(proxy.to_string()),
            (None, Outcome::HttpServed { served }, _) if served.proxy.is_some() => {
                served.proxy.clone()
            }
            (None, _, Decision::Proxy { proxy, .. }) => Some(proxy.to_string()),
            _ => None,
        },
        outcome: kind.name(),
        bytes_up: moved.client_to_upstream,
        bytes_down: moved.upstream_to_client,
        duration: elapsed,
    });
}

/// The `identity` headers for this connection's requests to the proxy
/// (none when it is off: no lookup is made then).
fn identity_headers(shared: &Shared, policy: &Policy, peer: SocketAddr) -> IdentityHeaders {
    let identity = &policy.config().identity;
    if !identity.enabled() {
        return IdentityHeaders::default();
    }
    let named = identity.namespace_header.is_some() || identity.pod_header.is_some();
    let caller = Caller {
        addr: peer.ip().to_canonical(),
        pod: named.then(|| shared.pods.pod(peer.ip())).flatten(),
    };
    caller::headers(identity, &caller)
}

/// Where opening the upstream side led.
enum Opened {
    /// Both sides are open: relay them.
    Relay(TcpStream, Tunnel),
    /// Plain HTTP switched protocols (`101`): relay the rest untouched.
    Switched(Served, Switched),
    /// The connection is over (served as plain HTTP, or the dial failed).
    Done(Outcome),
}

/// Opens the upstream side the decision asks for.
async fn open(
    shared: &Shared,
    client: TcpStream,
    dst: SocketAddr,
    class: &Classification,
    decision: &Decision,
    fail_mode: FailMode,
    identity: IdentityHeaders,
) -> Opened {
    let dialing = Instant::now();
    let tunnel: Result<Tunnel, DialError> = match decision {
        // A kernel-bypass destination only gets here if the maps changed
        // after the connect; it goes direct either way. Its rule, and an
        // address rule, name the address: only they let link-local through.
        Decision::KernelBypass { .. }
        | Decision::Direct {
            address_rule: true, ..
        } => direct(shared, dst, LinkLocal::AllowedByRule).await,
        Decision::Direct { .. } => direct(shared, dst, LinkLocal::Refuse).await,
        Decision::Refuse { .. } => {
            reset(client);
            return Opened::Done(Outcome::Refused);
        }
        Decision::Proxy {
            proxy,
            fallbacks,
            mode: Mode::AbsoluteForm,
            ..
        } => {
            // Failing open needs to know now whether the proxy answers; the
            // connection opened to find out serves the first request.
            let preopened = match fail_mode {
                FailMode::Closed => None,
                FailMode::Open => {
                    match shared.dialer.proxy_connection_any(proxy, fallbacks).await {
                        Ok(opened) => Some(opened),
                        Err(e) if e.is_unreachable() => {
                            // The client's request goes to the origin as it was sent.
                            return match fail_open(shared, dst, &e).await {
                                Ok(upstream) => Opened::Relay(client, Tunnel::direct(upstream)),
                                Err(e) => {
                                    reset(client);
                                    Opened::Done(Outcome::DialFailed(e))
                                }
                            };
                        }
                        Err(_) => None,
                    }
                }
            };
            let to = http_forward::ProxySide {
                proxy: proxy.clone(),
                fallbacks: fallbacks.clone(),
                dialer: shared.dialer.clone(),
                preopened,
                identity,
            };
            let forwarded = http_forward::serve(client, dst, to).await;
            return match forwarded {
                Ok(Forwarded::Closed(served)) => Opened::Done(Outcome::HttpServed { served }),
                Ok(Forwarded::Switched(served, switched)) => Opened::Switched(served, switched),
                Err(e) => Opened::Done(Outcome::BrokeOff(e.to_string())),
            };
        }
        Decision::Proxy {
            proxy,
            fallbacks,
            mode: Mode::Connect,
            ..
        } => {
            // The name, when known, lets the proxy apply domain ACLs and
            // mint a MITM certificate for the right host.
            let authority = match &class.hostname {
                Some(host) => format!("{host}:{}", dst.port()),
                None => dst.to_string(),
            };
            let tunnel = shared
                .dialer
                .tunnel_any(proxy, fallbacks, &authority, &identity);
            match tunnel.await {
                Err(e) if fail_mode == FailMode::Open && e.is_unreachable() => {
                    fail_open(shared, dst, &e).await.map(Tunnel::direct)
                }
                tunnel => tunnel,
            }
        }
    };
    shared.metrics.observe_connect(dialing.elapsed());
    match tunnel {
        Ok(tunnel) => Opened::Relay(client, tunnel),
        Err(e) => {
            // A reset tells the client at once; it must never hang or go direct.
            reset(client);
            Opened::Done(Outcome::DialFailed(e))
        }
    }
}

/// `failMode: open`: the proxy cannot be reached, so connect direct.
async fn fail_open(
    shared: &Shared,
    dst: SocketAddr,
    proxy_error: &DialError,
) -> Result<TcpStream, DialError> {
    ratelog::warn!(
        FAIL_OPEN,
        %dst, error = %proxy_error,
        "upstream proxy unreachable; failMode open: connecting direct"
    );
    shared.metrics.record_fail_open();
    // No rule named the address: never the node's loopback or link.
    shared.dialer.direct(dst, LinkLocal::Refuse).await
}

/// A direct connection as a tunnel without early bytes.
async fn direct(
    shared: &Shared,
    dst: SocketAddr,
    link_local: LinkLocal,
) -> Result<Tunnel, DialError> {
    shared
        .dialer
        .direct(dst, link_local)
        .await
        .map(Tunnel::direct)
}

/// Counts a name rule's check, and says (rate-limited) when it sent the
/// connection through the proxy instead of direct: a client whose name and
/// address disagree is either misconfigured or trying to leave around the
/// proxy, and the operator should hear of both.
fn note_name_check(
    metrics: &Metrics,
    peer: SocketAddr,
    dst: SocketAddr,
    decision: &Decision,
    check: &NameCheck,
) {
    metrics.record_name_check(check.result);
    if check.result != CheckResult::Verified {
        ratelog::warn!(
            NAME_NOT_VERIFIED,
            client = %peer, %dst, host = %check.name, result = check.result.label(),
            %decision, check = %check,
            "noProxy name rule not verified: routed as if no rule matched (counted in \
             redirector_name_checks_total)"
        );
    }
}

/// Relays until both sides are done, `early` (tunnel bytes that came with
/// the proxy's answer) to the client first. Counts the path the bytes took,
/// whether the relay ends well or not.
async fn relay_to(
    mut client: TcpStream,
    mut upstream: Upstream,
    early: Bytes,
    lanes: &BulkLanes,
    metrics: &Metrics,
) -> Outcome {
    // Held here, not in the relay: it tells the path afterwards, and gives
    // a lane back when this returns.
    let promotion = lanes.promotion();
    let relayed = async {
        let early_bytes = early.len() as u64;
        if !early.is_empty() {
            client.write_all(&early).await?;
        }
        drop(early);
        let mut moved = match &mut upstream {
            Upstream::Tcp(upstream) => relay_spliced(&client, upstream, &promotion).await?,
            Upstream::Tls(upstream) => Box::pin(relay_tls(&client, upstream.as_mut())).await?,
        };
        moved.upstream_to_client += early_bytes;
        Ok::<_, std::io::Error>(moved)
    };
    let relayed = relayed.await;
    let path = match &upstream {
        Upstream::Tls(_) => RelayPath::Tls,
        Upstream::Tcp(_) if promotion.granted() => RelayPath::BulkLane,
        Upstream::Tcp(_) => RelayPath::Splice,
    };
    metrics.record_relay_path(path);
    match relayed {
        Ok(transferred) => Outcome::Relayed { transferred, path },
        Err(error) => {
            // A reset on one side is passed on as a reset, so that a peer
            // can tell a broken transfer from a complete one (a FIN would
            // look like the end of the data).
            let tcp = match &upstream {
                Upstream::Tcp(s) => s,
                Upstream::Tls(s) => s.get_ref().0,
            };
            let _ = tcp.set_zero_linger();
            reset(client);
            Outcome::BrokeOff(error.to_string())
        }
    }
}

/// A connection that switched protocols ends as served HTTP, with the bytes
/// relayed after the `101` counted in.
fn after_switch(mut served: Served, relayed: Outcome) -> Outcome {
    match relayed {
        Outcome::Relayed { transferred, .. } => {
            served.transferred.client_to_upstream += transferred.client_to_upstream;
            served.transferred.upstream_to_client += transferred.upstream_to_client;
            Outcome::HttpServed { served }
        }
        broke_off => broke_off,
    }
}

/// Counts how the connection ended, once, with the bytes it moved.
fn record(metrics: &Metrics, outcome: &Outcome, peek_timed_out: bool) {
    metrics.record_outcome(outcome.kind(peek_timed_out));
    let transferred = match outcome {
        Outcome::Relayed { transferred, .. } => transferred,
        Outcome::HttpServed { served } => &served.transferred,
        Outcome::DialFailed(_) | Outcome::BrokeOff(_) | Outcome::Refused => return,
    };
    metrics.record_bytes(
        transferred.client_to_upstream,
        transferred.upstream_to_client,
    );
}

/// Closes with RST rather than FIN, so the client sees a failure, not an
/// empty answer.
pub fn reset(client: TcpStream) {
    let _ = client.set_zero_linger();
    drop(client);
}

/// One line per connection: debug when it went well, warn when it did not.
fn log_outcome(
    peer: SocketAddr,
    dst: SocketAddr,
    class: &Classification,
    decision: &Decision,
    outcome: &Outcome,
    elapsed: Duration,
) {
    let ms = elapsed.as_millis() as u64;
    let host = class.hostname.as_deref().unwrap_or("-");
    let rule = decision.rule();
    match outcome {
        Outcome::Relayed { transferred, path } => tracing::debug!(
            client = %peer, %dst, host, %decision, rule, ms, protocol = class.label(),
            relay = path.label(),
            up = transferred.client_to_upstream, down = transferred.upstream_to_client,
            "connection done"
        ),
        Outcome::HttpServed { served } => tracing::debug!(
            client = %peer, %dst, host, %decision, rule, ms,
            requests = served.requests, auth_failures = served.auth_failures,
            switched_protocols = served.switched_protocols,
            up = served.transferred.client_to_upstream,
            down = served.transferred.upstream_to_client,
            "plain HTTP connection done"
        ),
        // A 407 is the operator's to fix (credentials), not the upstream's.
        Outcome::DialFailed(e @ DialError::AuthFailed { .. }) => ratelog::warn!(
            PROXY_AUTH_FAILED,
            client = %peer, %dst, host, %decision, rule, ms, error = %e,
            "upstream failed; client reset"
        ),
        Outcome::DialFailed(e) => ratelog::warn!(
            UPSTREAM_FAILED,
            client = %peer, %dst, host, %decision, rule, ms, error = %e,
            "upstream failed; client reset"
        ),
        Outcome::BrokeOff(error) => tracing::debug!(
            client = %peer, %dst, host, %decision, rule, ms, error,
            "connection broke off"
        ),
        Outcome::Refused => ratelog::warn!(
            MISSING_PROXY_REFUSED,
            client = %peer, %dst, host, %decision, rule, protocol = ?class.protocol,
            "refused: no proxy for this kind of traffic (missingProxy: refuse); client reset"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{collections::HashMap, sync::Mutex};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    /// Original destinations from a table, taken once each.
    #[derive(Default)]
    struct Table(Mutex<HashMap<SocketAddr, SocketAddr>>);
    impl OriginalDst for Table {
        fn take(&self, client: SocketAddr) -> Option<SocketAddr> {
            self.0.lock().unwrap().remove(&client)
        }
    }

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// A listener running `handle` for every connection, with `table`.
    async fn redirector(config: &str, table: Arc<Table>) -> SocketAddr {
        redirector_counted(config, table, Arc::new(Metrics::new(None))).await
    }

    /// [`redirector`], counting into `metrics`.
    async fn redirector_counted(
        config: &str,
        table: Arc<Table>,
        metrics: Arc<Metrics>,
    ) -> SocketAddr {
        redirector_with_names(config, table, metrics, &[]).await
    }

    /// Names' addresses from a table (`name`, addresses); other names have none.
    struct Names(Vec<(&'static str, Vec<std::net::IpAddr>)>);
    impl crate::resolve::Lookup for Names {
        fn lookup(
            &self,
            name: &str,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = crate::resolve::Answer> + Send>>
        {
            let addrs = self
                .0
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, a)| a.clone())
                .unwrap_or_default();
            let answer = crate::resolve::Answer {
                resolution: crate::resolve::Resolution::Addresses(addrs.into()),
                ttl: Some(Duration::from_secs(60)),
            };
            Box::pin(async move { answer })
        }
    }

    /// [`redirector_counted`], with names resolving as `names` says.
    async fn redirector_with_names(
        config: &str,
        table: Arc<Table>,
        metrics: Arc<Metrics>,
        names: &[(&'static str, &[&str])],
    ) -> SocketAddr {
        let peek = Duration::from_millis(50);
        redirector_full(config, table, metrics, names, peek).await
    }

    /// [`redirector`], waiting `peek_timeout` for a client's first bytes.
    async fn redirector_peeking(
        config: &str,
        table: Arc<Table>,
        peek_timeout: Duration,
    ) -> SocketAddr {
        let metrics = Arc::new(Metrics::new(None));
        redirector_full(config, table, metrics, &[], peek_timeout).await
    }

    async fn redirector_full(
        config: &str,
        table: Arc<Table>,
        metrics: Arc<Metrics>,
        names: &[(&'static str, &[&str])],
        peek_timeout: Duration,
    ) -> SocketAddr {
        // The tests' origins are on loopback, which the daemon never dials
        // outside tests (`dial::guard`).
        crate::dial::guard::test_loopback::allow();
        let names = Names(
            names
                .iter()
                .map(|(n, a)| (*n, a.iter().map(|a| a.parse().unwrap()).collect()))
                .collect(),
        );
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let config = crate::config::ProxyConfig::parse("t", config).unwrap();
        let tls = crate::dial::proxy_tls_config(&config.trusted_ca).unwrap();
        // No built-ins: the tests' destinations are on loopback.
        let builtins = crate::policy::Builtins {
            loopback: false,
            link_local: false,
            cluster_cidrs: vec![],
        };
        let shared = Arc::new(Shared {
            policy: Swappable::new(Policy::new(config, &builtins)),
            original_dst: table,
            dialer: Dialer {
                socket_mark: 0,
                sockets: Default::default(),
                timeout: Duration::from_secs(2),
                tls: Swappable::new(tls),
                health: Default::default(),
            },
            peek: PeekLimits {
                max_bytes: 1024,
                timeout: peek_timeout,
            },
            lanes: BulkLanes::none(),
            metrics,
            names: NameResolver::new(
                names,
                Duration::from_secs(1),
                crate::resolve::CacheLimits::default(),
            ),
            pods: PodDirectory::default(),
            audit: None,
        });
        tokio::spawn(async move {
            while let Ok((s, peer)) = l.accept().await {
                tokio::spawn(handle(shared.clone(), s, peer));
            }
        });
        addr
    }

    /// A connection from a redirected client, to `dst`.
    async fn redirected(table: &Table, listen: SocketAddr, dst: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        table
            .0
            .lock()
            .unwrap()
            .insert(socket.local_addr().unwrap(), dst);
        socket.connect(listen).await.unwrap()
    }

    fn proxy() -> crate::config::ProxyUrl {
        crate::config::ProxyConfig::parse("t", r#"{"httpsProxy": "http://u:secret@10.0.0.4:3128"}"#)
            .unwrap()
            .https_proxy
            .unwrap()
    }

    #[test]
    fn outcome_mapping() {
        use http::StatusCode;
        let io = || std::io::Error::other("x");
        let relayed = Outcome::Relayed {
            transferred: Transferred::default(),
            path: RelayPath::Splice,
        };
        let served = |auth_failures| Outcome::HttpServed {
            served: Served {
                requests: 1,
                auth_failures,
                ..Served::default()
            },
        };
        let dial = |e| Outcome::DialFailed(e);
        let cases = [
            (relayed, false, "ok"),
            (
                Outcome::Relayed {
                    transferred: Transferred::default(),
                    path: RelayPath::BulkLane,
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
            assert_eq!(outcome.kind(timed_out).name(), want, "{outcome:?}");
        }
    }

    #[tokio::test]
    async fn counts_each_connection_once() {
        let echo = echo_server().await;
        let table = Arc::new(Table::default());
        let metrics = Arc::new(Metrics::new(None));
        let listen = redirector_counted("{}", table.clone(), metrics.clone()).await;
        let echoed = |mut c: TcpStream| async move {
            c.shutdown().await.unwrap();
            let mut out = Vec::new();
            c.read_to_end(&mut out).await.unwrap();
            out
        };

        // Speaks first: classified at once, relayed.
        let mut c = redirected(&table, listen, echo).await;
        c.write_all(b"hello").await.unwrap();
        assert_eq!(echoed(c).await, b"hello");
        // Silent past the peek timeout (50 ms), then speaks: routed by IP.
        let mut c = redirected(&table, listen, echo).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        c.write_all(b"late").await.unwrap();
        assert_eq!(echoed(c).await, b"late");
        // A stranger.
        drop(TcpStream::connect(listen).await.unwrap());

        let want = [
            "redirector_connections_total{decision=\"direct\"} 2",
            "redirector_connections_total{decision=\"proxy\"} 0",
            "redirector_connection_outcomes_total{outcome=\"ok\"} 1",
            "redirector_connection_outcomes_total{outcome=\"peek_timeout\"} 1",
            "redirector_connection_outcomes_total{outcome=\"no_original_destination\"} 1",
            "redirector_bytes_total{direction=\"upstream\"} 9",
            "redirector_bytes_total{direction=\"downstream\"} 9",
            "redirector_connect_duration_seconds_count 2",
            "redirector_active_connections 0",
        ];
        // The handlers finish just after the clients see the end.
        let deadline = Instant::now() + Duration::from_secs(2);
        let text = loop {
            let text = metrics.encode();
            if want.iter().all(|w| text.lines().any(|l| l == *w)) || Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        for w in want {
            assert!(text.lines().any(|l| l == w), "missing `{w}` in:\n{text}");
        }
    }

    #[tokio::test]
    async fn relays_to_the_original_destination_and_refuses_strangers() {
        let echo = echo_server().await;
        let table = Arc::new(Table::default());
        let listen = redirector("{}", table.clone()).await;

        // A redirected client: its original destination is known.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        table
            .0
            .lock()
            .unwrap()
            .insert(socket.local_addr().unwrap(), echo);
        let mut c = socket.connect(listen).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        // Half-close: the echo must still come back after our FIN, and
        // then the end of the stream.
        c.shutdown().await.unwrap();
        let mut echoed = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed, b"hello");

        // A stranger: nothing known, the connection is reset without a byte.
        let mut s = TcpStream::connect(listen).await.unwrap();
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    }

    #[tokio::test]
    async fn an_upstream_reset_reaches_the_client_as_a_reset() {
        // An origin that sends a little, then resets.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(b"partial").await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            s.set_zero_linger().unwrap();
        });
        let table = Arc::new(Table::default());
        let listen = redirector("{}", table.clone()).await;
        let mut c = redirected(&table, listen, origin).await;
        c.write_all(b"go").await.unwrap();
        let mut got = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut got))
            .await
            .expect("the client is not left hanging");
        assert_eq!(got, b"partial");
        assert_eq!(
            r.unwrap_err().kind(),
            std::io::ErrorKind::ConnectionReset,
            "a FIN would make the truncated transfer look complete"
        );
    }

    #[tokio::test]
    async fn unreachable_proxy_resets_the_client_promptly() {
        let dead = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let table = Arc::new(Table::default());
        let listen = redirector(
            &format!(r#"{{"httpsProxy": "http://{dead}"}}"#),
            table.clone(),
        )
        .await;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        table
            .0
            .lock()
            .unwrap()
            .insert(socket.local_addr().unwrap(), "127.0.0.1:9".parse().unwrap());
        let mut c = socket.connect(listen).await.unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
            .await
            .unwrap();
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::ConnectionReset);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    /// A proxy that takes `CONNECT`: keeps each request head, answers 200,
    /// then echoes the tunnel.
    async fn connect_proxy() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Some(head) = read_head(&mut s).await else {
                        return;
                    };
                    seen.lock().unwrap().push(head);
                    let _ = s
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await;
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        (addr, heads)
    }

    /// A real ClientHello naming `sni`.
    fn client_hello(sni: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from(sni.to_owned()).unwrap();
        let mut tls = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        tls.write_tls(&mut out).unwrap();
        out
    }

    /// Waits (2 s at most) until every line of `want` is in the metrics.
    async fn expect_metrics(metrics: &Metrics, want: &[String]) {
        let deadline = Instant::now() + Duration::from_secs(2);
        let text = loop {
            let text = metrics.encode();
            if want.iter().all(|w| text.lines().any(|l| l == w)) || Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        for w in want {
            assert!(text.lines().any(|l| l == w), "missing `{w}` in:\n{text}");
        }
    }

    /// Waits for the proxy's first request head.
    async fn first_head(heads: &Mutex<Vec<String>>) -> String {
        for _ in 0..200 {
            if let Some(head) = heads.lock().unwrap().first() {
                return head.clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the proxy got no request")
    }

    /// Issue 12: an SNI naming a noProxy name no longer opens a direct path
    /// to an address the name does not have; the connection is tunnelled
    /// with the name, counted.
    #[tokio::test]
    async fn a_noproxy_name_on_a_foreign_address_goes_through_the_proxy() {
        let (proxy, heads) = connect_proxy().await;
        let origin = echo_server().await;
        let table = Arc::new(Table::default());
        let metrics = Arc::new(Metrics::new(None));
        let config = format!(r#"{{"httpsProxy": "http://{proxy}", "noProxy": ["direct.test"]}}"#);
        let names: &[(&str, &[&str])] = &[("direct.test", &["192.0.2.10"])];
        let listen = redirector_with_names(&config, table.clone(), metrics.clone(), names).await;
        let mut c = redirected(&table, listen, origin).await;
        let hello = client_hello("direct.test");
        c.write_all(&hello).await.unwrap();
        let head = first_head(&heads).await;
        let want = format!("CONNECT direct.test:{} HTTP/1.1\r\n", origin.port());
        assert!(head.starts_with(&want), "{head}");
        let mut echoed = vec![0u8; hello.len()];
        c.read_exact(&mut echoed).await.unwrap();
        expect_metrics(
            &metrics,
            &[
                "redirector_name_checks_total{result=\"mismatch\"} 1".into(),
                "redirector_name_checks_total{result=\"verified\"} 0".into(),
                "redirector_connections_total{decision=\"proxy\"} 1".into(),
                "redirector_connections_total{decision=\"direct\"} 0".into(),
            ],
        )
        .await;
    }

    /// `missingProxy`: plain HTTP through an https-only config, and other
    /// bytes through an http-only one, are tunnelled (`useOther`) or reset
    /// (`refuse`) instead of going direct.
    #[tokio::test]
    async fn missing_proxy_tunnels_or_refuses_the_class_without_a_proxy() {
        let origin = echo_server().await;
        for (key, first_bytes, want) in [
            (
                "httpsProxy",
                &b"GET /x HTTP/1.1\r\nHost: plain.test\r\n\r\n"[..],
                "CONNECT plain.test:",
            ),
            (
                "httpProxy",
                &b"SSH-2.0-client\r\n"[..],
                "CONNECT 127.0.0.1:",
            ),
        ] {
            let (proxy, heads) = connect_proxy().await;
            let table = Arc::new(Table::default());
            let config = format!(r#"{{"{key}": "http://{proxy}", "missingProxy": "useOther"}}"#);
            let listen = redirector(&config, table.clone()).await;
            let mut c = redirected(&table, listen, origin).await;
            c.write_all(first_bytes).await.unwrap();
            let head = first_head(&heads).await;
            assert!(
                head.starts_with(&format!("{want}{} ", origin.port())),
                "{key}: {head}"
            );

            let metrics = Arc::new(Metrics::new(None));
            let config = format!(r#"{{"{key}": "http://{proxy}", "missingProxy": "refuse"}}"#);
            let listen = redirector_counted(&config, table.clone(), metrics.clone()).await;
            let mut c = redirected(&table, listen, origin).await;
            c.write_all(first_bytes).await.unwrap();
            let mut buf = [0u8; 16];
            let r = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
                .await
                .unwrap();
            assert_eq!(
                r.unwrap_err().kind(),
                std::io::ErrorKind::ConnectionReset,
                "{key}: refused with a reset"
            );
            expect_metrics(
                &metrics,
                &[
                    "redirector_connection_outcomes_total{outcome=\"policy_refused\"} 1".into(),
                    "redirector_connections_total{decision=\"refuse\"} 1".into(),
                ],
            )
            .await;
            assert_eq!(
                heads.lock().unwrap().len(),
                1,
                "{key}: refused before any dial"
            );
        }
    }

    /// Item 2: `0.0.0.0:port` from the node reaches the node's loopback
    /// services. Neither a direct decision nor `failMode: open` dials it.
    #[tokio::test]
    async fn the_node_s_own_addresses_are_never_dialed() {
        let service = echo_server().await;
        let unspecified: SocketAddr = format!("0.0.0.0:{}", service.port()).parse().unwrap();
        let dead = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        for config in [
            "{}".to_owned(),
            format!(r#"{{"httpsProxy": "http://{dead}", "failMode": "open"}}"#),
        ] {
            let table = Arc::new(Table::default());
            let metrics = Arc::new(Metrics::new(None));
            let listen = redirector_counted(&config, table.clone(), metrics.clone()).await;
            let mut c = redirected(&table, listen, unspecified).await;
            c.write_all(b"hello").await.unwrap();
            let mut buf = [0u8; 8];
            let r = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
                .await
                .unwrap();
            assert!(
                matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
                "{config}: {r:?} (an echo means the node's loopback was reached)"
            );
            expect_metrics(
                &metrics,
                &["redirector_connection_outcomes_total{outcome=\"policy_refused\"} 1".into()],
            )
            .await;
        }
    }

    /// Issue 13: a client that speaks to a proxy of its own (`HTTPS_PROXY`,
    /// `HTTP_PROXY`) is tunnelled to that proxy's address through
    /// `httpsProxy`, and its request reaches it byte for byte: never
    /// forwarded in absolute form, never to `httpProxy`, never by the name
    /// it asks for. So is HTTP/2 with prior knowledge.
    #[tokio::test]
    async fn proxy_requests_and_h2c_are_tunnelled_by_address_untouched() {
        let second_proxy = echo_server().await;
        for first_bytes in [
            &b"CONNECT api.example:443 HTTP/1.1\r\nHost: api.example:443\r\n\r\n"[..],
            b"GET http://api.example/x HTTP/1.1\r\nHost: api.example\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
        ] {
            let what = String::from_utf8_lossy(&first_bytes[..14]).into_owned();
            let (https_proxy, connects) = connect_proxy().await;
            let (http_proxy, absolute) = connect_proxy().await;
            let table = Arc::new(Table::default());
            let config = format!(
                r#"{{"httpProxy": "http://{http_proxy}", "httpsProxy": "http://{https_proxy}"}}"#
            );
            let listen = redirector(&config, table.clone()).await;
            let mut c = redirected(&table, listen, second_proxy).await;
            c.write_all(first_bytes).await.unwrap();
            let head = first_head(&connects).await;
            let want = format!("CONNECT {second_proxy} HTTP/1.1\r\n");
            assert!(head.starts_with(&want), "{what}: {head}");
            // The echo is the client's own bytes, as the second proxy got them.
            let mut echoed = vec![0u8; first_bytes.len()];
            tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut echoed))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(echoed, first_bytes, "{what}");
            assert!(
                absolute.lock().unwrap().is_empty(),
                "{what}: httpProxy was used"
            );
        }
    }

    /// A proxy that takes plain HTTP requests, over TLS when `tls` is
    /// given: keeps each head; answers an `Upgrade` with `101` and `early`
    /// bytes in the same write, then echoes; anything else with 200.
    async fn upgrading_proxy(
        early: &'static [u8],
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (seen, tls) = (seen.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(tls) => {
                            serve_upgrades(tls.accept(s).await.unwrap(), seen, early).await
                        }
                        None => serve_upgrades(s, seen, early).await,
                    }
                });
            }
        });
        (addr, heads)
    }

    /// One request head, byte by byte (so nothing after it is consumed);
    /// `None` when the peer closes first.
    async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<String> {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if s.read(&mut b).await.unwrap_or(0) == 0 {
                return None;
            }
            head.push(b[0]);
        }
        Some(String::from_utf8_lossy(&head).into_owned())
    }

    async fn serve_upgrades<S>(mut s: S, seen: Arc<Mutex<Vec<String>>>, early: &[u8])
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        loop {
            let Some(head) = read_head(&mut s).await else {
                return;
            };
            let upgrade = head.to_ascii_lowercase().contains("\r\nupgrade:");
            seen.lock().unwrap().push(head);
            if !upgrade {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                continue;
            }
            let switch = [
                &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                   Connection: Upgrade\r\n\r\n"[..],
                early,
            ]
            .concat();
            let _ = s.write_all(&switch).await;
            let _ = s.flush().await;
            let (mut r, mut w) = tokio::io::split(s);
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
            return;
        }
    }

    /// A TLS acceptor for 127.0.0.1 and the `trustedCA` value that trusts it.
    fn proxy_tls_for_loopback() -> (tokio_rustls::TlsAcceptor, String) {
        use base64::Engine as _;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let ca = base64::engine::general_purpose::STANDARD.encode(cert.pem());
        (tokio_rustls::TlsAcceptor::from(Arc::new(server)), ca)
    }

    /// Issue 13: an `Upgrade` over plain HTTP goes through `httpProxy` in
    /// absolute form; after its `101` the bytes flow both ways untouched:
    /// the proxy's early bytes, the client's bytes sent right behind its
    /// request head, and everything after. Through a plain-HTTP proxy (the
    /// relay splices) and an `https://` one (through rustls).
    #[tokio::test]
    async fn after_101_the_bytes_flow_both_ways_untouched() {
        let (acceptor, ca) = proxy_tls_for_loopback();
        let (plain, plain_heads) = upgrading_proxy(b"\x81\x05early", None).await;
        let (tls, tls_heads) = upgrading_proxy(b"\x81\x05early", Some(acceptor)).await;
        for (config, heads) in [
            (format!(r#"{{"httpProxy": "http://{plain}"}}"#), plain_heads),
            (
                format!(r#"{{"httpProxy": "https://{tls}", "trustedCA": "{ca}"}}"#),
                tls_heads,
            ),
        ] {
            upgrade_and_relay(&config, &heads).await;
        }
    }

    async fn upgrade_and_relay(config: &str, heads: &Mutex<Vec<String>>) {
        let table = Arc::new(Table::default());
        let metrics = Arc::new(Metrics::new(None));
        let listen = redirector_counted(config, table.clone(), metrics.clone()).await;
        let origin: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut c = redirected(&table, listen, origin).await;
        // A GET first: the same connection then upgrades.
        c.write_all(b"GET /first HTTP/1.1\r\nHost: ws.test\r\n\r\n")
            .await
            .unwrap();
        let mut ok = vec![0u8; 0];
        while !ok.ends_with(b"ok") {
            let mut b = [0u8; 1];
            c.read_exact(&mut b).await.unwrap();
            ok.push(b[0]);
        }
        c.write_all(
            b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\
              \x81\x04ping",
        )
        .await
        .unwrap();
        let mut got = Vec::new();
        let want_tail = b"\r\n\r\n\x81\x05early\x81\x04ping";
        while !got.ends_with(want_tail) {
            let mut b = [0u8; 1];
            tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut b))
                .await
                .expect("101, early bytes and the echo")
                .unwrap();
            got.push(b[0]);
        }
        let got = String::from_utf8_lossy(&got);
        assert!(
            got.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{got}"
        );
        // Both ways, any bytes, after the switch.
        let binary: Vec<u8> = (0..=255).collect();
        c.write_all(&binary).await.unwrap();
        let mut echoed = vec![0u8; binary.len()];
        c.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, binary);
        c.shutdown().await.unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{rest:?}");

        let heads = heads.lock().unwrap().clone();
        assert_eq!(heads.len(), 2, "{heads:?}");
        assert!(
            heads[1].starts_with("GET http://ws.test/chat HTTP/1.1\r\n"),
            "{}",
            heads[1]
        );
        for header in [
            "upgrade: websocket",
            "connection: upgrade",
            "sec-websocket-key:",
        ] {
            assert!(
                heads[1].to_ascii_lowercase().contains(header),
                "{header}: {}",
                heads[1]
            );
        }
        expect_metrics(
            &metrics,
            &[
                "redirector_connection_outcomes_total{outcome=\"ok\"} 1".into(),
                "redirector_active_connections 0".into(),
            ],
        )
        .await;
        let text = metrics.encode();
        let up = text
            .lines()
            .find_map(|l| l.strip_prefix("redirector_bytes_total{direction=\"upstream\"} "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap();
        assert!(up > 256 + 6, "the bytes after the switch are counted: {up}");
    }

    /// Issue 13: a destination port in `serverFirstPorts` is routed by
    /// address at once: the proxy gets its CONNECT before the client says
    /// anything, and a banner comes long before the peek timeout. Off the
    /// list, the client waits the peek timeout again.
    #[tokio::test]
    async fn server_first_ports_skip_the_peek() {
        let peek = Duration::from_secs(2);
        let banner = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            tokio::spawn(async move {
                while let Ok((mut s, _)) = l.accept().await {
                    tokio::spawn(async move {
                        let _ = s.write_all(b"220 banner\r\n").await;
                        let mut sink = Vec::new();
                        let _ = s.read_to_end(&mut sink).await;
                    });
                }
            });
            addr
        };
        let time_to_banner = |listen: SocketAddr, table: Arc<Table>| async move {
            let mut c = redirected(&table, listen, banner).await;
            let started = Instant::now();
            let mut got = [0u8; 12];
            tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut got))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&got, b"220 banner\r\n");
            started.elapsed()
        };
        let port = banner.port();
        let table = Arc::new(Table::default());
        let listed = format!(r#"{{"serverFirstPorts": [{port}]}}"#);
        let listen = redirector_peeking(&listed, table.clone(), peek).await;
        let fast = time_to_banner(listen, table.clone()).await;
        assert!(fast < Duration::from_millis(1000), "listed: {fast:?}");
        let listen = redirector_peeking(r#"{"serverFirstPorts": []}"#, table.clone(), peek).await;
        let slow = time_to_banner(listen, table.clone()).await;
        assert!(slow >= peek, "not listed: {slow:?}");

        // Through the proxy: CONNECT by address, with nothing from the client.
        let (proxy, heads) = connect_proxy().await;
        let config = format!(r#"{{"httpsProxy": "http://{proxy}", "serverFirstPorts": [{port}]}}"#);
        let listen = redirector_peeking(&config, table.clone(), peek).await;
        let _c = redirected(&table, listen, banner).await;
        let started = Instant::now();
        let head = first_head(&heads).await;
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "{:?}",
            started.elapsed()
        );
        assert!(
            head.starts_with(&format!("CONNECT {banner} HTTP/1.1\r\n")),
            "{head}"
        );
    }

    /// An idle connection's memory is mostly its task, whose size is the
    /// largest state of `handle`. Opening (TLS, CONNECT, plain HTTP) is
    /// boxed so that a relaying connection does not carry its state.
    #[test]
    fn an_idle_connection_task_stays_small() {
        fn future_size<A, B, C, F>(_: fn(A, B, C) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let size = future_size(|s: Arc<Shared>, c: TcpStream, p: SocketAddr| handle(s, c, p));
        // Measured with rustc 1.96 in a debug build (the unit-test stage):
        // 2,112 bytes since the relay carries a bulk lane's promotion (+64);
        // it was 2.7 KiB before opening was boxed.
        assert!(size <= 2176, "handle's future is {size} bytes");
    }
}
