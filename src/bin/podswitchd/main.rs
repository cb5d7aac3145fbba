//! `podswitchd`: the podswitch data plane of one node.
//!
//! Start-up, in order: settings (file, then command line; any error stops
//! here, naming the key), tables, the worker threads, the underlay port,
//! the host port (TUN) with its cluster route, static peers and ports,
//! then the control socket. It then waits for SIGTERM or SIGINT and takes
//! everything down in reverse: the socket file, the ports (closing the TUN
//! device removes it and its route), the workers. A thread that panics
//! takes the same way down, and podswitchd then exits with status 1
//! ([`stop_on_panic`]).

mod cluster;
mod config;
mod egress;
mod hooks;
mod host_routes;
mod links;
mod state;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use podswitch_control::handler::{DaemonHooks, Handler};
use podswitch_control::protocol::Request;
use podswitch_control::server::Server;
use podswitch_engine::config::{Backend, GatewayMode};
use podswitch_engine::datapath::{Datapath, DatapathOptions, LinuxKernel};
use podswitch_engine::fib::{NextHop, Prefix};
use podswitch_engine::kernel_port::{HostPort, HostPortOptions, UnderlayOptions, UnderlayPort};
use podswitch_engine::port::PortRole;
use podswitch_engine::sys::netdev;
use podswitch_engine::tables::{PortSpec, Tables};
use podswitch_engine::worker::WorkerOptions;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use config::{Cli, Settings};
use hooks::{log_attached, Daemon};
use state::StateFile;

/// Most ports (pods, underlay, host) one daemon serves.
const MAX_PORTS: usize = 4096;

static STARTED: OnceLock<Instant> = OnceLock::new();

/// Some thread of the daemon has panicked.
static PANICKED: AtomicBool = AtomicBool::new(false);

fn clock_secs() -> u32 {
    STARTED.get_or_init(Instant::now).elapsed().as_secs() as u32
}

/// Records in the data path the connections from a pod to a pod that the
/// node's kernel translated before this start (a Service's, after
/// kube-proxy's DNAT) and still tracks: their replies must keep going
/// back through the host port (`podswitch_engine::host_connections`),
/// and a restarted daemon's table is empty. The kernel's conntrack table
/// says which they are: the client is the original source, the server
/// the replies' source.
fn recall_host_connections(tables: &Tables, cluster: Prefix) {
    use podswitch_engine::host_connections::Flow;
    let connections = match podswitch_host::conntrack::translated_connections() {
        Ok(connections) => connections,
        Err(e) => {
            tracing::warn!(
                "the kernel's tracked connections not read ({e}): replies of Service connections opened before this start reach their clients untranslated"
            );
            return;
        }
    };
    let now = clock_secs();
    let mut recalled = 0;
    for connection in connections {
        let (client, server) = (connection.original.src, connection.reply.src);
        if !(cluster.contains(client.0) && cluster.contains(server.0)) {
            continue;
        }
        // Masqueraded as well (hairpin, kube-proxy's --masquerade-all): the
        // backend answers the node, and the host port hands on no packet
        // from the pod, so the data path would not have recorded it.
        if connection.reply.dst != client {
            continue;
        }
        if !Flow::has_ports(connection.original.protocol) {
            continue;
        }
        let flow = Flow {
            protocol: connection.original.protocol,
            src: client,
            dst: server,
            closing: false,
            opening: false,
            fragment: false,
        };
        tables.host_connections.record(&flow, now);
        recalled += 1;
    }
    tracing::info!(
        recalled,
        "Service connections the kernel tracked before this start: their replies go back through the host port"
    );
}

fn clock_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.log_level.as_str() {
        "error" => tracing::Level::ERROR,
        "warn" => tracing::Level::WARN,
        "debug" => tracing::Level::DEBUG,
        _ => tracing::Level::INFO,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    // With a lease store, the node's subnet is leased while the settings
    // are read: the rest of them (routes, MTU, gateway) follow from it.
    let mut leased = None;
    let loaded = Settings::load_with(&cli, &mut |request| {
        let (assignment, taken) = cluster::acquire(request)?;
        leased = Some(taken);
        Ok(assignment)
    });
    let settings = match loaded {
        Ok(s) => s,
        Err(e) => {
            eprintln!("podswitchd: {e}");
            return ExitCode::from(2);
        }
    };
    match run(settings, leased) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("podswitchd: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(settings: Settings, leased: Option<cluster::Leased>) -> Result<(), String> {
    STARTED.get_or_init(Instant::now);
    podswitch_engine::sys::xdp::prepare_process();
    if let Err(e) = podswitch_host::fd::raise_open_file_limit() {
        tracing::warn!(
            "cannot raise the open-file limit to its hard limit ({e}): pod ports may fail \
             to open with EMFILE on a node of many CPUs and pods"
        );
    }
    // Register for signals first: a stop during start-up still cleans up.
    let mut signals = Signals::new([SIGTERM, SIGINT]).map_err(|e| format!("signals: {e}"))?;
    stop_on_panic();
    let node = settings.node.clone();
    tracing::info!(
        node = %node.name,
        pod_cidr = %node.pod_cidr,
        backend = %node.backend,
        gateway_mode = %node.gateway_mode,
        underlay = %format!("{} {}", settings.underlay_interface, node.underlay_ip),
        pod_mtu = node.pod_mtu(),
        workers = settings.workers,
        per_cpu = settings.per_cpu,
        "starting"
    );
    let tables = Tables::new(node.clone(), MAX_PORTS);
    // The node's own address towards pods reaches the host stack in both
    // gateway modes (in bridge mode it is the gateway, already routed);
    // so does the tunnel end's, flannel.1's 10.244.X.0, from anywhere.
    let host_address = node.host_address;
    let proxy_arp_host = (node.gateway_mode == GatewayMode::ProxyArp).then_some(host_address);
    for address in [proxy_arp_host, node.tunnel_address()]
        .into_iter()
        .flatten()
    {
        tables
            .add_route(Prefix::new_truncating(address, 32), NextHop::Host)
            .map_err(|e| e.to_string())?;
    }
    // Member k of a split port takes the frames of every CPU numbered k
    // modulo the workers, and worker k runs on worker_cpus[k]: where that
    // leaves a CPU without a worker of its own, some wake-ups cross CPUs.
    match (&settings.per_cpu_misfit, settings.per_cpu) {
        (Some(why), true) => tracing::warn!(
            workers_on = ?settings.worker_cpus,
            "per_cpu: {why}, so a frame that arrives on CPU k is read by the worker on CPU \
             worker_cpus[k mod workers], woken from another CPU (per_cpu = false, or leaving \
             it out, gives ports owned by one worker each)"
        ),
        (Some(why), false) => tracing::info!(
            workers = settings.workers,
            "not a worker per CPU, the default, since {why}: ports owned by one worker each \
             (set workers = N, or per_cpu = true to split them anyway)"
        ),
        (None, _) => {}
    }
    let datapath = Arc::new(
        Datapath::start(
            Arc::clone(&tables),
            DatapathOptions {
                worker: WorkerOptions {
                    pool_buffers: settings.pool_buffers,
                    large_buffers: podswitch_engine::packet::DEFAULT_LARGE_BUFFERS,
                    busy_poll: Duration::from_micros(settings.busy_poll_us),
                    realtime: settings.realtime,
                    clock_secs,
                    clock_micros,
                    split_ports: settings.per_cpu,
                },
                workers: settings.workers,
                worker_cpus: settings.worker_cpus.clone(),
                pod_port: settings.port_kind,
            },
            Box::new(LinuxKernel {
                pod_udp_batches: settings.udp_batches,
            }),
        )
        .map_err(|e| format!("workers: {e}"))?,
    );

    let underlay_options = UnderlayOptions {
        interface: settings.underlay_interface.clone(),
        local_ip: node.underlay_ip,
        backend: node.backend,
        vxlan_port: node.vxlan_port,
        udp_port: node.udp_port,
        pod_cidr: node.pod_cidr,
        cluster_cidr: node.cluster_cidr,
        underlay_subnet: node.underlay_subnet(),
        gateway: host_address,
        af_xdp: settings.underlay_af_xdp,
        tunnel_tap: settings.tunnel_tap.clone(),
        udp_batches: settings.udp_batches,
        // Split among the workers with them: each receives what its CPU
        // receives, and sends itself.
        receivers: if settings.per_cpu {
            settings.workers
        } else {
            1
        },
    };
    if settings.per_cpu && settings.workers > 1 && !underlay_options.splits() {
        tracing::info!(
            backend = %node.backend,
            af_xdp = settings.underlay_af_xdp,
            "per_cpu: this underlay is not split among the workers (the AF_XDP underlay is not \
             yet): one worker owns it, the others hand it their frames"
        );
    }
    let underlay = datapath
        .attach_port(PortSpec::underlay(&settings.underlay_interface), |id| {
            let underlay = UnderlayPort::open(&underlay_options, id, Arc::clone(&tables.stats))?;
            if let Some(mode) = underlay.xdp_mode() {
                tracing::info!(
                    interface = %settings.underlay_interface,
                    mode = ?mode,
                    "tunnel packets are received through AF_XDP",
                );
            }
            let (tunnel, cut) = match node.backend {
                Backend::Ipip => ("IPIP", "into packets"),
                _ => ("VXLAN", "into UDP_SEGMENT bursts"),
            };
            if underlay.tunnel_tap() {
                tracing::info!(
                    tap = settings.tunnel_tap.as_deref().unwrap_or_default(),
                    "{tunnel} super-frames leave whole through a TAP",
                );
            }
            if let Some(why) = underlay.tunnel_tap_refused() {
                tracing::warn!(
                    tap = settings.tunnel_tap.as_deref().unwrap_or_default(),
                    "{tunnel} super-frames cannot leave whole ({why}): podswitch cuts them {cut}",
                );
            }
            if let Some(why) = underlay.kernel_stop_error() {
                tracing::warn!(
                    interface = %settings.underlay_interface,
                    "the node's kernel still handles the host-gw frames podswitch takes ({why}): \
                     a datagram from another node's pod to this node's gateway address arrives twice",
                );
            }
            if let Some(why) = underlay.split_refused() {
                tracing::warn!(
                    interface = %settings.underlay_interface,
                    "per_cpu: IPIP packets cannot be shared out among the workers ({why}): one \
                     worker reads them all, through a raw socket",
                );
            }
            if let Some(why) = underlay.xdp_refused() {
                tracing::warn!(
                    interface = %settings.underlay_interface,
                    "underlay_kind = \"af-xdp\" cannot be set up ({why}): tunnel packets are received through the kernel's sockets",
                );
            }
            Ok(Box::new(underlay))
        })
        .map_err(|e| format!("underlay {e}"))?;
    log_attached(&settings.underlay_interface, PortRole::Underlay, &underlay);

    let host_options = HostPortOptions {
        name: settings.host_interface.clone(),
        mtu: u32::from(node.pod_mtu()),
        address: host_address,
        tunnel_address: node.tunnel_address(),
        gateway_mac: node.gateway_mac,
        // With per_cpu, a TUN queue per worker: each reads what its CPU's
        // processes send to pods, and writes to the node itself.
        multi_queue: settings.per_cpu,
    };
    let host = datapath
        .attach_port(PortSpec::host(&settings.host_interface), |id| {
            let host = HostPort::open(&host_options, id, Arc::clone(&tables.stats))?;
            Ok(Box::new(host))
        })
        .map_err(|e| format!("host port {e}"))?;
    log_attached(&settings.host_interface, PortRole::Host, &host);
    tracing::info!(
        interface = %settings.host_interface,
        address = %host_address,
        "host port up"
    );

    let (state, saved) = StateFile::open(&settings.state_file)?;
    let daemon = Arc::new(Daemon {
        state,
        keep_runtime_changes: std::sync::atomic::AtomicBool::new(false),
        store_health: leased.as_ref().map(|_| Arc::default()),
        host_routes: host_routes::HostRoutes::new(&settings.host_interface, Arc::clone(&tables)),
    });
    // The node routes into podswitch what podswitch sends elsewhere (its
    // subnet now; each peer's as it comes), as flannel routes each lease.
    daemon
        .host_routes
        .sync()
        .map_err(|e| format!("host port {}'s routes: {e}", settings.host_interface))?;
    let handler = Arc::new(Handler::over(
        Arc::clone(&datapath),
        clock_secs,
        Arc::clone(&daemon) as Arc<dyn DaemonHooks>,
    ));
    // The socket first: a daemon refused here (another one serves it)
    // stops before it writes anything, and the state file is the socket's
    // owner's alone. Connections wait in the backlog until it serves.
    let server = Server::bind(&settings.socket, Arc::clone(&handler))
        .map_err(|e| format!("control socket {}: {e}", settings.socket.display()))?;
    // Egress once the daemon owns its socket: a refused second daemon
    // changes nothing in the kernel either.
    let config = egress::EgressConfig {
        pod_cidr: node.pod_cidr,
        cluster_cidr: node.cluster_cidr,
        no_masquerade: settings.no_masquerade.clone(),
        host_interface: settings.host_interface.clone(),
        underlay_interface: settings.underlay_interface.clone(),
        tunnel_ports: vec![node.vxlan_port, node.udp_port],
        masquerade: settings.masquerade,
    };
    let egress = match egress::install(&config, saved.sysctls.clone()) {
        Ok(originals) => {
            daemon
                .state
                .set_sysctls(originals.clone())
                .map_err(|e| format!("state file {}: {e}", settings.state_file.display()))?;
            let pods_egress = match settings.masquerade {
                true => format!("masqueraded outside {}", node.cluster_cidr),
                false => "keeps the pods' addresses (masquerade = false)".to_string(),
            };
            tracing::info!(
                table = egress::TABLE,
                "pod egress {pods_egress}; Services' replies come back through the node"
            );
            Some(originals)
        }
        Err(e) if settings.masquerade => return Err(format!("masquerade: {e}")),
        // Asked for no masquerade, the daemon still forwards without the
        // table: pods reach each other, and the outside as far as the
        // node forwards for them; only Services lose their replies.
        Err(e) => {
            tracing::warn!(
                "Services: {e}; without podswitchd's nftables table a pod's connections to Services get no replies"
            );
            // A table in place with a sysctl that failed after it goes.
            let _ = egress::remove(&Default::default());
            None
        }
    };
    recall_host_connections(&tables, node.cluster_cidr);
    // Without the table's forward chain, nothing keeps the kernel from
    // forwarding host-gw packets for pods as well, if forwarding is on.
    if egress.is_none() && matches!(node.backend, Backend::HostGw | Backend::DirectRouting) {
        let key = format!("ipv4/conf/{}/forwarding", settings.underlay_interface);
        if netdev::net_sysctl(&key).is_ok_and(|v| v == "1") {
            tracing::warn!(
                "net.{} is 1: the kernel would also forward host-gw packets for pods into {}; \
                 set it to 0 for the underlay so that only podswitch does",
                key.replace('/', "."),
                settings.host_interface
            );
        }
    }
    for peer in &settings.peers {
        let request = Request::PeerAdd {
            name: peer.name.clone(),
            underlay_ip: peer.underlay_ip,
            pod_cidr: peer.pod_cidr,
            vtep_mac: peer
                .vtep_mac
                .unwrap_or_else(|| podswitch_engine::config::derived_mac(0x0e, &peer.name)),
            underlay_mac: peer.underlay_mac,
            backend: peer.backend,
            vni: None,
        };
        handler
            .handle(&request)
            .map_err(|e| format!("peer {}: {e}", peer.name))?;
    }
    // Peers programmed at runtime before a restart come back; the config
    // file's win (a saved peer of the same name is dropped).
    daemon
        .keep_runtime_changes
        .store(true, std::sync::atomic::Ordering::Relaxed);
    for request in &saved.peers {
        let Request::PeerAdd { name, .. } = request else {
            continue;
        };
        if settings.peers.iter().any(|p| &p.name == name) {
            tracing::warn!(peer = %name, "saved peer dropped: the config file names it");
            continue;
        }
        match handler.handle(request) {
            Ok(_) => tracing::info!(peer = %name, "saved peer restored"),
            Err(e) => tracing::warn!(peer = %name, "saved peer not restored: {e}"),
        }
    }
    // The config file's ports first: they win over a saved port of the
    // same interface, whatever it says.
    for port in &settings.ports {
        let mut spec = PortSpec::pod(&port.interface, port.ip, port.mac);
        spec.container_id = port.container_id.clone();
        handler
            .add_port(spec, port.kind)
            .map_err(|e| format!("port {}: {e}", port.interface))?;
    }
    // Ports attached before a restart come back; one whose interface is
    // gone (its pod was deleted meanwhile), or was made anew since (another
    // index: another pod may have its name now), is dropped.
    for saved in saved.ports {
        if let Some(port) = settings
            .ports
            .iter()
            .find(|p| p.interface == saved.interface)
        {
            if port.ip != saved.ip || port.mac != saved.mac {
                tracing::warn!(
                    interface = %saved.interface,
                    "saved port ({} {}) dropped: the config file gives it {} {}",
                    saved.ip, saved.mac, port.ip, port.mac
                );
            }
            continue;
        }
        let Ok(ifindex) = netdev::ifindex(&saved.interface) else {
            tracing::warn!(interface = %saved.interface, "saved port dropped: the interface is gone");
            continue;
        };
        if saved.ifindex.is_some_and(|i| i != ifindex) {
            tracing::warn!(
                interface = %saved.interface,
                "saved port dropped: the interface was made anew since (index {} now {ifindex})",
                saved.ifindex.unwrap_or(0)
            );
            continue;
        }
        let pod_end = state::PodEnd::of(&saved.interface);
        if saved.pod_end.is_some() && pod_end != saved.pod_end {
            tracing::warn!(
                interface = %saved.interface,
                "saved port dropped: the pod's end of the veth moved since ({:?}, now {:?})",
                saved.pod_end, pod_end
            );
            continue;
        }
        let mut spec = PortSpec::pod(&saved.interface, saved.ip, saved.mac);
        spec.container_id = saved.container_id;
        spec.ifname = saved.ifname;
        spec.anti_spoof = saved.anti_spoof;
        spec.egress_limit = match saved
            .egress_limit
            .map(podswitch_control::handler::rate_limit)
            .transpose()
        {
            Ok(limit) => limit,
            Err(e) => {
                tracing::warn!(interface = %saved.interface, "saved port dropped: {e}");
                continue;
            }
        };
        let kind = match saved.kind.as_deref().map(str::parse).transpose() {
            Ok(kind) => kind,
            Err(e) => {
                tracing::warn!(interface = %saved.interface, "saved port dropped: {e}");
                continue;
            }
        };
        match handler.add_port(spec, kind) {
            Ok(_) => tracing::info!(interface = %saved.interface, "saved port restored"),
            Err(e) => tracing::warn!(interface = %saved.interface, "saved port not restored: {e}"),
        }
    }
    // Routes programmed at runtime, once the ports and peers they lead to
    // are back.
    for request in &saved.routes {
        let Request::RouteAdd { prefix, .. } = request else {
            continue;
        };
        match handler.handle(request) {
            Ok(_) => tracing::info!(%prefix, "saved route restored"),
            Err(e) => tracing::warn!(%prefix, "saved route not restored: {e}"),
        }
    }
    if let Err(e) = daemon.state.flush() {
        tracing::warn!("state file {}: {e}", settings.state_file.display());
    }
    // Once the saved ports are back: one whose interface went while
    // podswitchd was starting is taken out by the first look.
    let vanished_ports = match links::VanishedPorts::follow(
        Arc::clone(&datapath),
        Arc::clone(&daemon) as Arc<dyn DaemonHooks>,
        stop_from_within,
        || PANICKED.load(Ordering::SeqCst),
    ) {
        Ok(follower) => Some(follower),
        Err(e) => {
            tracing::warn!(
                "link changes cannot be followed ({e}): a pod port whose interface goes \
                 without a CNI DEL stays until its DEL"
            );
            None
        }
    };
    // The other nodes' leases, once our own ports and peers are back.
    let lease_follower = match (leased, &daemon.store_health) {
        (Some(leased), Some(health)) => {
            let file = &leased.settings.subnet_file;
            match cluster::write_subnet_file(
                file,
                &node.cluster_cidr,
                &leased.lease.subnet,
                node.pod_mtu(),
                settings.masquerade,
            ) {
                Ok(()) => tracing::info!(file = %file.display(), "subnet file written"),
                Err(e) => tracing::warn!("subnet file {}: {e}", file.display()),
            }
            let follower = cluster::follow(leased, Arc::clone(&handler), Arc::clone(health))
                .map_err(|e| format!("lease thread: {e}"))?;
            Some(follower)
        }
        _ => None,
    };

    // Metrics once the daemon owns its socket: a refused second daemon
    // never takes the first one's metrics port either.
    if let Some(listen) = settings.metrics_listen {
        let mut metrics = podswitch_control::metrics::Metrics::new(
            Arc::clone(&tables),
            handler.workers(),
            handler.requests(),
        );
        // Weak: the endpoint's thread outlives the data path, which must
        // be the last reference's at exit (its ports close then).
        let counted = Arc::downgrade(&datapath);
        metrics = metrics.before_scrape(podswitch_control::metrics::BeforeScrape(Arc::new(
            move || {
                if let Some(datapath) = counted.upgrade() {
                    datapath.count_device_drops();
                }
            },
        )));
        if let Some(health) = &daemon.store_health {
            let health = Arc::clone(health);
            metrics = metrics.with_store(podswitch_control::metrics::StoreHealth(Arc::new(
                move || health.status(),
            )));
        }
        // The endpoint's thread lives as long as the process.
        metrics
            .serve(listen)
            .map_err(|e| format!("metrics endpoint {listen}: {e}"))?;
        tracing::info!(%listen, "metrics at http://{listen}/metrics");
    }
    let stopper = server.stopper();
    let server_thread = std::thread::Builder::new()
        .name("podswitch-control".into())
        .spawn(move || {
            let served = server.run();
            if let Err(e) = &served {
                // No request reaches the daemon any more: as half alive
                // as with a dead worker (see `stop_on_panic`).
                tracing::error!("control socket: {e}: podswitchd stops");
                stop_from_within();
            }
            served
        })
        .map_err(|e| e.to_string())?;
    tracing::info!(socket = %settings.socket.display(), "ready");

    let signal = signals.forever().next();
    tracing::info!(signal = ?signal, "stopping");
    stopper.stop();
    // Its thread holds the data path, which must be ours alone below.
    let node_port_gone = vanished_ports.and_then(links::VanishedPorts::finish);
    if let Some((thread, stop)) = lease_follower {
        // The lease stays in the store (with its TTL), as flanneld leaves
        // it: a restarted node takes the same subnet back.
        let _ = stop.send(true);
        if thread.join().is_err() {
            tracing::warn!("lease thread panicked");
        }
    }
    let control_failed = match server_thread.join() {
        Ok(Err(e)) => Some(format!("control socket: {e}")),
        // The panic hook has reported it.
        Err(_) | Ok(Ok(())) => None,
    };
    let _ = std::fs::remove_file(&settings.socket);
    if let Some(originals) = &egress {
        for failure in egress::remove(originals) {
            tracing::warn!("undoing egress: {failure}");
        }
        if let Err(e) = daemon.state.set_sysctls(Default::default()) {
            tracing::warn!("state file {}: {e}", settings.state_file.display());
        }
    }
    // The handler holds the data path too: with it gone, the data path is
    // ours alone and its stop closes every port (sockets, XDP programs,
    // the TUN device) before the line below says so.
    drop(handler);
    match Arc::try_unwrap(datapath) {
        Ok(datapath) => {
            datapath.stop();
            tracing::info!("stopped: ports closed, {} removed", settings.host_interface);
        }
        Err(datapath) => {
            // Not expected: their ports close when the process exits.
            tracing::warn!(
                references = Arc::strong_count(&datapath),
                "data path still referenced at exit: its ports close with the process"
            );
        }
    }
    if let Some(failure) = control_failed {
        return Err(format!("stopped: {failure}"));
    }
    if PANICKED.load(Ordering::SeqCst) {
        return Err(
            "stopped after a thread panicked (see above); started again, podswitchd takes its ports back from the state file"
                .into(),
        );
    }
    if let Some(gone) = node_port_gone {
        return Err(format!("stopped: {gone}"));
    }
    Ok(())
}

/// Makes a thread that panics take the daemon down the way SIGTERM does,
/// rather than leave it half alive: a dead worker's pods would lose every
/// frame while the control socket still answered, and a dead control
/// thread would leave a data path no CNI call reaches. After Rust's own
/// report (the message, and the backtrace with `RUST_BACKTRACE`), the
/// hook raises SIGTERM for the main thread's usual stop (the ports closed,
/// their XDP and tcx programs off, the egress rules undone), and
/// [`run`] then returns an error: exit status 1, for the supervisor
/// (systemd's `Restart=`, the DaemonSet's pod) to start podswitchd again.
/// Called once the signals are registered, so that the raised SIGTERM is
/// read by the main thread, not taken as the default kill.
fn stop_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        if !PANICKED.swap(true, Ordering::SeqCst) {
            let thread = std::thread::current();
            tracing::error!(
                thread = thread.name().unwrap_or("unnamed"),
                "a thread panicked: podswitchd stops"
            );
            stop_from_within();
        }
    }));
}

/// Has the main thread stop the daemon as on SIGTERM, from any thread.
fn stop_from_within() {
    if let Err(e) = signal_hook::low_level::raise(SIGTERM) {
        tracing::error!("raising SIGTERM: {e}");
    }
}
