//! `redirector run`: validate the configuration, load the programs, take
//! the listeners over from a running instance or bind them, and only then
//! attach the hooks, so a pod's connect is never redirected to an address
//! nobody listens on because of us. Then serve, supervised, until `drain`
//! says to exit.
use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::{Notify, mpsc},
};

use crate::{
    bypass::{
        self, Automatic, BypassSet, Entry, Source, Sources, from_config, published::Publisher,
    },
    caller::{self, PodDirectory},
    classify::PeekLimits,
    cli::{DEFAULT_PORT, RunArgs},
    config::ProxyConfig,
    connection::Shared,
    dial::{self, Dialer},
    drain,
    exemption::{self, cgroups::PodCgroups},
    handover,
    hook::{self, HookSettings, LoadedHooks, PinDir, PinnedCounters},
    limits::{self, Limits},
    lookup::KernelOriginalDst,
    memory_budget,
    metrics::{self, Metrics},
    policy::{Builtins, Policy},
    ratelog,
    readiness::Readiness,
    reload::{Reloader, Watch},
    server, startup_taint,
    supervise::Supervisor,
    swappable::Swappable,
};

pub async fn run(args: RunArgs) -> Result<()> {
    // Before anything is attached: SIGHUP's default action would kill us.
    let hangup = signal(SignalKind::hangup())?;
    // What `/readyz` waits for, all registered before it is served.
    let readiness = Readiness::default();
    let config_loaded = readiness.register("config loaded");
    let programs_attached = readiness.register("programs attached");
    let listeners_up = readiness.register("listeners up");
    // With --kube: the first complete list of pods and namespaces applied.
    let api_synced = args.kube.kube.then(|| readiness.register("api synced"));
    let mut supervisor = Supervisor::new(readiness.clone())?;
    let open_files = limits::raise_open_files_limit()?;
    let memory = memory_budget::effective_limit(args.memory_limit);
    let sockets = args.socket_options();
    // The queue limits as this kernel sets them, which the cap counts.
    let buffers = sockets
        .kernel_buffers()
        .context("setting the socket options (--socket-buffer, --keepalive)")?;
    if buffers.receive.min(buffers.send) < 2 * sockets.buffer as u64 {
        tracing::warn!(
            socket_buffer = sockets.buffer,
            receive_queue = buffers.receive,
            send_queue = buffers.send,
            "the kernel capped --socket-buffer at net.core.rmem_max / wmem_max: \
             the smaller queues are used and counted"
        );
    }
    // Bulk lanes' wide buffers, reserved at their worst.
    let wide = crate::relay::lanes::kernel_buffers(args.bulk_buffer)
        .context("setting a bulk lane's buffers (--bulk-buffer)")?;
    let small = memory_budget::ConnectionCost::new(buffers);
    let bulk_lanes = small.lanes_that_fit(memory.as_ref(), args.bulk_lanes, wide);
    let cost = small.with_lanes(bulk_lanes, wide);
    let caps = limits::caps(
        open_files,
        memory.as_ref(),
        &cost,
        args.max_connections,
        args.max_connections_per_pod,
    )?;
    let (max_connections, max_connections_per_pod) = (caps.global, caps.per_pod);
    let limits = Limits::new(max_connections, max_connections_per_pod);
    tracing::info!(
        open_files,
        memory_limit = %memory.as_ref().map_or("none found".into(), |m| m.to_string()),
        memory_bound = ?caps.memory_bound,
        fd_bound = caps.fd_bound,
        per_connection_idle_bytes = memory_budget::PER_CONNECTION_IDLE,
        per_connection_userspace_bytes = cost.userspace,
        per_connection_socket_bytes = cost.socket_buffers,
        per_connection_max_bytes = cost.max(),
        socket_receive_queue_bytes = buffers.receive,
        socket_send_queue_bytes = buffers.send,
        keepalive = %sockets.keepalive,
        bulk_lanes,
        bulk_lane_queue_bytes = wide.receive,
        bulk_lanes_reserved_bytes = cost.reserved,
        max_connections,
        max_connections_per_pod,
        "connection caps"
    );
    tokio::spawn(ratelog::report_periodically());
    let (config, config_digest) = ProxyConfig::load_with_digest(&args.proxy_config)?;
    config_loaded.mark_ready();
    let listen = listen_addrs(&args.listen)?;
    let tls = dial::proxy_tls_config(&config.all_trusted_ca())?;
    let policy = Policy::new(config, &args.policy.builtins());
    let automatic = args.policy.automatic();
    let earlier_pins = PinDir::new(&args.pins.bpffs);
    let bypass_sources = initial_bypass(
        &policy,
        &args.policy.builtins(),
        automatic,
        args.kube.kube.then_some(&earlier_pins),
    );

    // Refuses a cgroup v1-only node, named, before anything else.
    let daemon_cgroup = hook::own_cgroup()?.1;
    let (cgroup, pod_cgroups) = attach_root(args.cgroup.as_deref(), daemon_cgroup)?;
    let settings = HookSettings {
        listen: listen.clone(),
        socket_mark: args.socket_mark,
        daemon_cgroup,
        exempt_cgroups: args.exempt_cgroup.clone(),
        bypass: bypass_sources.kernel_prefixes(),
        kernel_debug_logs: tracing::enabled!(target: "redirector::kernel", tracing::Level::DEBUG),
        held_udp_ports: policy.config().refuse_udp_ports.clone(),
        allow_other_streams: policy.config().allow_other_stream_protocols,
    };
    // Named failures (not a cgroup v2 dir, no capability, old kernel)
    // before the loader's bare errno.
    hook::check_cgroup2(&cgroup)?;
    hook::check_kernel()?;
    let pins = PinDir::new(&args.pins.bpffs);
    let mut hooks = LoadedHooks::load(&settings, &pins)?;
    let original_dst = Arc::new(KernelOriginalDst::new(hooks.take_dst_by_client()?));
    if let Some(logger) = hooks.take_logger() {
        tokio::spawn(forward_kernel_logs(logger));
    }

    // Read now: a missing or empty resolv.conf stops the start, named.
    let names = args.resolver.resolver()?;

    let metrics = Arc::new(Metrics::new(Some(Box::new(PinnedCounters::new(
        PinDir::new(&args.pins.bpffs),
    )))));
    metrics.set_connection_limits(max_connections, max_connections_per_pod, bulk_lanes);
    // The audit log is set up at start (a change needs a restart).
    let audit = match &policy.config().audit {
        Some(config) => Some(
            crate::audit::AuditLog::start(config, args.kube.node_name.clone())
                .context("opening the audit log (audit.output)")?,
        ),
        None => None,
    };
    // Failover between listed proxies: probed while marked down.
    let health = {
        let metrics = metrics.clone();
        Arc::new(dial::ProxyHealth::with_observer(Box::new(
            move |proxy, up| metrics.record_proxy(proxy, up),
        )))
    };
    tokio::spawn(health.clone().probe_forever(args.socket_mark));
    let shared = Arc::new(Shared {
        policy: Swappable::new(policy),
        original_dst,
        dialer: Dialer {
            socket_mark: args.socket_mark,
            sockets,
            timeout: Duration::from_secs_f64(args.connect_timeout),
            tls: Swappable::new(tls),
            health: health.clone(),
        },
        peek: PeekLimits {
            timeout: Duration::from_secs_f64(args.peek_timeout),
            ..PeekLimits::default()
        },
        lanes: crate::relay::BulkLanes::new(bulk_lanes, args.bulk_buffer, {
            let metrics = metrics.clone();
            Box::new(move |event| metrics.record_bulk_lane(event))
        }),
        metrics: metrics.clone(),
        names,
        pods: PodDirectory::default(),
        audit,
    });
    // The API client before anything is attached: a bad kubeconfig stops
    // the start, not the watcher later.
    let api = if args.kube.kube || args.kube.remove_taint.is_some() {
        Some(exemption::client::infer(args.socket_mark).await?)
    } else {
        None
    };
    let kube = match (&args.kube.kube, &args.kube.node_name, &api) {
        (true, Some(node), Some(client)) => Some((client.clone(), node.clone())),
        (true, None, _) => bail!("--kube needs --node-name (or NODE_NAME)"),
        _ => None,
    };
    // Bound first: a directory that cannot hold it stops the start before
    // anything is taken from a running instance.
    let handover_server = handover::Server::bind(&args.upgrade.handover_dir)?;
    // The listeners (then the metrics listener): a running instance's, handed
    // over, or bound here.
    let addrs: Vec<SocketAddr> = listen.iter().copied().chain(args.metrics).collect();
    let (predecessor, held) =
        handover::acquire(&args.upgrade.handover_dir, pins.root(), &addrs).await?;
    let held = Arc::new(held);
    // The buffers and keepalive every accepted socket inherits from its
    // listener: set here on a handed-over listener too (the kernel applies
    // them to the connections it accepts from now on), so a changed
    // --socket-buffer takes effect at a hand-over.
    for listener in &held[..listen.len()] {
        sockets
            .apply(socket2::SockRef::from(listener))
            .with_context(|| format!("setting socket options on {}", listener.addr()))?;
    }
    // With --kube, keep what an earlier instance exempted until our first
    // complete view of the API says otherwise: a restart must not send
    // exempt pods to the proxy, even while the API is unreachable.
    let inherited = match &kube {
        Some(_) => hook::read_exempt_cgroups(&pins).unwrap_or_default(),
        None => Vec::new(),
    };
    hooks.exempt_cgroup_ids(&inherited)?;
    if let Some(predecessor) = &predecessor {
        // Its own connects while it drains: our hooks honour the socket
        // mark only from our cgroup, and must not redirect them.
        hooks.exempt_cgroup_ids(&[predecessor.cgroup])?;
    }
    hooks.attach(&cgroup, &pins)?;
    programs_attached.mark_ready();
    let mut accept_loops = Vec::new();
    for listener in &held[..listen.len()] {
        accept_loops.push(supervisor.spawn_forever(
            format!("listener {}", listener.addr()),
            server::serve(listener.serve()?, shared.clone(), limits.clone()),
        ));
    }
    listeners_up.mark_ready();
    let metrics_server = match args.metrics {
        Some(addr) => {
            tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
            let (held, metrics, readiness) = (held.clone(), metrics.clone(), readiness.clone());
            let index = listen.len();
            let mut start: drain::StartMetrics = Box::new(move |supervisor: &mut Supervisor| {
                let listener = held[index].serve()?;
                Ok(supervisor.spawn_forever(
                    "metrics server",
                    metrics::server::serve(listener, metrics.clone(), readiness.clone()),
                ))
            });
            Some((Some(start(&mut supervisor)?), start))
        }
        None => None,
    };
    // Taken after attach, which pins the tries for `redirector status`.
    let bypass = Arc::new(BypassSet::new(
        Box::new(hooks.take_bypass()?),
        bypass_sources,
        Some(Publisher::new(&args.upgrade.handover_dir)),
    )?);
    let reloaded = Arc::new(Notify::new());
    if automatic.node_addresses {
        supervisor.spawn_forever("node addresses", bypass::node::follow(bypass.clone()));
    }
    if automatic.proxy_addresses {
        supervisor.spawn_forever(
            "upstream proxy addresses",
            bypass::proxies::follow(
                bypass.clone(),
                shared.policy.clone(),
                reloaded.clone(),
                bypass::proxies::LOOKUP_TIMEOUT,
            ),
        );
    }
    let reloader = Reloader {
        path: args.proxy_config.clone(),
        builtins: args.policy.builtins(),
        policy: shared.policy.clone(),
        tls: shared.dialer.tls.clone(),
        bypass: bypass.clone(),
        reloaded,
        switches: Box::new(hooks.take_switches()?),
        metrics: metrics.clone(),
        watch: Watch::new(config_digest.clone()),
    };
    supervisor.spawn_forever("config reloader", reloader.run(hangup));
    if let Some((client, node)) = kube {
        // Taken after attach, which pins the map for `redirector status`.
        let exempt = Arc::new(hooks.take_exempt_cgroups()?);
        let static_ids = args
            .exempt_cgroup
            .iter()
            .map(|dir| hook::cgroup_id(dir))
            .collect::<Result<HashSet<_>>>()?;
        let mut reconciler = exemption::reconcile::Reconciler::new(exempt, pod_cgroups, static_ids)
            .with_metrics(metrics.clone())
            .with_settings({
                // The reloaded configuration's values, read on every pass.
                let shared = shared.clone();
                move || exemption::rules::Settings::of(shared.policy.load().config())
            });
        if let Some(synced) = api_synced {
            reconciler = reconciler.with_readiness(synced);
        }
        reconciler.adopt(inherited);
        tracing::info!(node = %node, "following the Kubernetes API for exempt pods and namespaces");
        supervisor.spawn_forever(
            "kubernetes bypass watcher",
            bypass::cluster::follow(
                client.clone(),
                node.clone(),
                bypass.clone(),
                automatic.node_addresses,
            ),
        );
        supervisor.spawn_forever(
            "kubernetes watcher",
            exemption::watcher::run(client, node, reconciler, shared.pods.clone()),
        );
        // For `explain --namespace` and `status`: which profile each
        // namespace selects.
        tokio::spawn(caller::published::publish(
            shared.pods.clone(),
            args.upgrade.handover_dir.clone(),
        ));
    }
    if let (Some(key), Some(node), Some(client)) =
        (&args.kube.remove_taint, &args.kube.node_name, api)
    {
        tracing::info!(%node, taint = %key, "the startup taint goes once the daemon is ready");
        tokio::spawn(startup_taint::run(
            client,
            node.clone(),
            key.clone(),
            readiness.clone(),
        ));
    }
    // Serving now: the next instance finds us, and the one before stops.
    let (handover_events, handover) = mpsc::channel(8);
    handover_server.publish()?;
    supervisor.spawn(
        "hand-over socket",
        handover_server.serve(
            held.clone(),
            handover::Identity::new(pins.root(), settings.daemon_cgroup)?,
            handover_events,
        ),
    );
    if let Some(predecessor) = predecessor {
        let pid = predecessor.pid;
        match predecessor.confirm().await {
            Ok(()) => tracing::info!(pid, "took over from the running instance, which drains"),
            Err(e) => tracing::warn!(
                pid, error = %format!("{e:#}"),
                "the running instance did not confirm the hand-over; both accept until it stops"
            ),
        }
    }
    let policy = shared.policy.load();
    tracing::info!(
        cgroup = %cgroup.display(), listen = ?listen, bpffs = %args.pins.bpffs.display(),
        config_digest,
        https_proxy = ?policy.config().https_proxy,
        http_proxy = ?policy.config().http_proxy,
        no_proxy_rules = policy.config().no_proxy.rules().len(),
        trusted_ca_certs = policy.config().trusted_ca.len(),
        fail_mode = %policy.config().fail_mode,
        allow_pod_opt_out = policy.config().allow_pod_opt_out,
        refuse_udp_ports = ?policy.config().refuse_udp_ports,
        allow_other_stream_protocols = policy.config().allow_other_stream_protocols,
        missing_proxy = %policy.config().missing_proxy,
        exempt_namespaces = ?policy.config().exempt_namespaces,
        exempt_host_network_pods = policy.config().exempt_host_network_pods,
        service_cidrs = ?policy.config().service_cidrs,
        bypass_node_addresses = automatic.node_addresses,
        bypass_proxy_addresses = automatic.proxy_addresses,
        bypass_sources = %args.upgrade.handover_dir.join(bypass::published::FILE_NAME).display(),
        server_first_ports = ?policy.config().server_first_ports,
        resolv_conf = %args.resolver.resolv_conf.display(),
        "ready"
    );

    drop(policy);

    let stops = drain::stop_signals()?;
    drain::Running {
        supervisor,
        readiness,
        limits,
        pins: pins.clone(),
        drain_timeout: args.upgrade.drain_timeout,
        accept_loops,
        metrics: metrics_server,
        held: Some(held),
        handover,
        stops,
    }
    .run()
    .await?;
    // The hooks stay attached (pinned) unless detached: until a new
    // instance listens, pods' connects are refused, never sent around the
    // proxy.
    if pins.pinned_links().is_empty() {
        tracing::info!("stopped; the hooks are detached");
    } else {
        tracing::info!("stopped; hooks stay attached (`redirector detach` removes them)");
    }
    Ok(())
}

/// The bypass set's sources at start, all in the kernel before the
/// programs attach: the configuration's, the node's interface addresses,
/// the proxies given as IP literals (names follow within moments, from
/// `bypass::proxies::follow`), and, with `earlier` (--kube), what an
/// earlier instance pinned there had in the kernel: pod CIDRs and the API
/// server stay direct until this instance's view of the API is complete,
/// even if the API is unreachable now.
fn initial_bypass(
    policy: &Policy,
    builtins: &Builtins,
    automatic: Automatic,
    earlier: Option<&PinDir>,
) -> Sources {
    let mut sources = Sources::default();
    from_config::apply(&mut sources, policy.config(), builtins);
    if automatic.node_addresses {
        match bypass::node::interface_entries() {
            Ok(entries) => sources.set(Source::NodeInterfaces, entries),
            Err(e) => tracing::warn!(error = %e, "cannot read the node's addresses; retrying"),
        }
    }
    if automatic.proxy_addresses {
        for host in bypass::proxies::hosts(policy.config()) {
            if let Some(entries) = bypass::proxies::literal(&host) {
                sources.set(Source::UpstreamProxy(host), entries);
            }
        }
    }
    // No instance pinned there (the first start): nothing to keep.
    if let Some(Ok(nets)) = earlier
        .filter(|pins| !pins.pinned_links().is_empty())
        .map(hook::read_bypass)
    {
        let kept = nets
            .into_iter()
            .map(|net| Entry::new(net, "until the API is synced"));
        sources.set(Source::EarlierInstance, kept.collect());
    }
    sources
}

/// The hooks' attach root and where pods' cgroups are: `--cgroup`, or the
/// kubepods directory the daemon's own pod sits under (a DaemonSet's pod
/// is one of the node's pods), with the layout its path shows.
fn attach_root(given: Option<&Path>, daemon_cgroup: u64) -> Result<(PathBuf, PodCgroups)> {
    if let Some(dir) = given {
        let pods = PodCgroups::under_attach_root(dir);
        tracing::info!(cgroup = %dir.display(), pods = %pods, "attach root given (--cgroup)");
        return Ok((dir.to_path_buf(), pods));
    }
    let kubepods = hook::derive_kubepods(daemon_cgroup)
        .context("no --cgroup given, and the attach root cannot be derived")?;
    tracing::info!(
        cgroup = %kubepods.dir.display(),
        layout = %kubepods.layout,
        "attach root derived from the daemon's own cgroup: its pod's kubepods directory"
    );
    Ok((kubepods.dir.clone(), PodCgroups::at(kubepods)))
}

/// `--listen` as given, or `$NODE_IP:15001`. Loopback is refused: a pod's
/// loopback is its own, so it could never reach the daemon there.
fn listen_addrs(given: &[SocketAddr]) -> Result<Vec<SocketAddr>> {
    let addrs = if given.is_empty() {
        node_ips(
            std::env::var("NODE_IPS").ok().as_deref(),
            std::env::var("NODE_IP").ok().as_deref(),
        )?
        .into_iter()
        .map(|ip| SocketAddr::new(ip, DEFAULT_PORT))
        .collect()
    } else {
        given.to_vec()
    };
    for addr in &addrs {
        if addr.ip().is_loopback() || addr.ip().is_unspecified() {
            bail!(
                "--listen {addr}: must be an address of the node that pods can reach \
                 (not loopback, which is the pod's own, nor unspecified)"
            );
        }
    }
    Ok(addrs)
}

/// The node's addresses from the downward API: `NODE_IPS` (`status.hostIPs`,
/// "v4,v6" on a dual-stack node) or else `NODE_IP` (`status.hostIP`); the
/// first of each family, since the hooks redirect to one address per family.
fn node_ips(node_ips: Option<&str>, node_ip: Option<&str>) -> Result<Vec<IpAddr>> {
    let Some(list) = node_ips.filter(|l| !l.trim().is_empty()).or(node_ip) else {
        bail!(
            "no --listen given and neither NODE_IPS nor NODE_IP is set: give the node's IP, \
             reachable from pods"
        );
    };
    let mut out: Vec<IpAddr> = Vec::new();
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let ip: IpAddr = item
            .parse()
            .with_context(|| format!("node IP `{item}` is not an IP address"))?;
        if !out.iter().any(|o| o.is_ipv4() == ip.is_ipv4()) {
            out.push(ip);
        }
    }
    if out.is_empty() {
        bail!("NODE_IPS/NODE_IP `{list}` holds no address");
    }
    Ok(out)
}

async fn forward_kernel_logs(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns the ring buffer's fd and lives inside the
    // AsyncFd, so the fd stays open for as long as it is registered.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let Ok(mut fd) = registered else {
        tracing::warn!("cannot poll the kernel log ring buffer");
        return;
    };
    while let Ok(mut guard) = fd.readable_mut().await {
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_loopback_and_unspecified_listen() {
        for bad in ["127.0.0.1:15001", "[::1]:15001", "0.0.0.0:15001"] {
            assert!(listen_addrs(&[bad.parse().unwrap()]).is_err(), "{bad}");
        }
        assert!(listen_addrs(&["10.0.0.4:15001".parse().unwrap()]).is_ok());
    }

    #[test]
    fn node_ips_from_the_downward_api() {
        let ips =
            |a, b| node_ips(a, b).map(|v| v.iter().map(|i| i.to_string()).collect::<Vec<_>>());
        assert_eq!(
            ips(Some("10.0.0.4,fd00::4"), Some("10.0.0.4")).unwrap(),
            ["10.0.0.4", "fd00::4"]
        );
        assert_eq!(ips(None, Some("10.0.0.4")).unwrap(), ["10.0.0.4"]);
        assert_eq!(ips(Some(""), Some("10.0.0.4")).unwrap(), ["10.0.0.4"]);
        assert_eq!(ips(Some("10.0.0.4,10.0.0.5"), None).unwrap(), ["10.0.0.4"]);
        assert!(ips(None, None).is_err());
        assert!(ips(Some("nope"), None).is_err());
    }
}
