//! podswitchd's configuration: a TOML file, every key of which a command
//! line option can override, checked into [`Settings`] before anything is
//! touched. An error names the file (or option), the key and the reason.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use clap::Parser;
use podswitch_engine::config::{derived_mac, Backend, GatewayMode, NodeConfig};
use podswitch_engine::encap::{MacAddr, TunnelMode, Vni};
use podswitch_engine::fib::Prefix;
use podswitch_engine::kernel_port::{PodPortKind, DEFAULT_TUNNEL_TAP};
use podswitch_engine::sys::{netdev, sched};
use podswitch_engine::worker::{per_cpu_fits, MAX_WORKERS};
use podswitch_lease::etcd::EtcdOptions;
use serde::Deserialize;

/// podswitchd: the podswitch data plane of one node.
///
/// Reads pod veths (AF_XDP, or AF_PACKET) and TAP devices, switches and routes their
/// frames, encapsulates traffic to other nodes (VXLAN, IPIP, IP-in-UDP) or
/// forwards it directly (host-gw), gives the node's own stack a TUN port,
/// and serves a control socket (see `podswitchctl --help`). Settings come
/// from --config FILE (TOML, keys as in the option names: `[node] name`,
/// `[backend] type`, ...); an option on the command line wins over the
/// file. SIGTERM or SIGINT stop it cleanly.
#[derive(Debug, Parser)]
#[command(name = "podswitchd", version)]
pub(crate) struct Cli {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "PODSWITCHD_CONFIG")]
    pub config: Option<PathBuf>,
    /// `[node] name`: this node's name (also seeds its MACs).
    #[arg(long)]
    pub node_name: Option<String>,
    /// `[node] pod_cidr`: this node's pod subnet, e.g. 10.244.1.0/24.
    #[arg(long)]
    pub pod_cidr: Option<String>,
    /// `[node] cluster_cidr`: all pods of the cluster (default: the pod
    /// subnet widened to /16), routed to pods through the host port.
    #[arg(long)]
    pub cluster_cidr: Option<String>,
    /// `[node] underlay_interface`: the interface towards other nodes.
    #[arg(long)]
    pub underlay_interface: Option<String>,
    /// `[node] underlay_ip`: the node's address on it (default: the
    /// interface's first IPv4 address).
    #[arg(long)]
    pub underlay_ip: Option<String>,
    /// `[node] vtep_mac`: the VXLAN VTEP MAC (default: a stable locally
    /// administered MAC derived from the node name).
    #[arg(long)]
    pub vtep_mac: Option<String>,
    /// `[node] gateway_mode`: bridge (flannel: gateway .1 of the pod subnet)
    /// or proxy-arp (Calico: every ARP answered, gateway 169.254.1.1).
    #[arg(long)]
    pub gateway_mode: Option<String>,
    /// `[backend] type`: vxlan, ipip, udp, host-gw or directrouting.
    #[arg(long)]
    pub backend: Option<String>,
    /// `[backend] vni`: VXLAN network identifier (default 1).
    #[arg(long)]
    pub vni: Option<u32>,
    /// `[backend] port`: tunnel UDP port (default 8472 for vxlan, 8285 for udp).
    #[arg(long)]
    pub port: Option<u16>,
    /// `[backend] mtu`: the pods' MTU (default: the underlay's less the
    /// tunnel overhead, 1450 for vxlan over 1500).
    #[arg(long)]
    pub mtu: Option<u16>,
    /// `[control] socket`: the control socket's path.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// `[control] state_file`: where attached pod ports and runtime peers
    /// and routes are kept, so that a restarted daemon brings them back
    /// (default: beside the control socket, named after it:
    /// /run/podswitch/podswitchd.state.json; one file per daemon, as the
    /// socket is one per daemon).
    #[arg(long)]
    pub state_file: Option<PathBuf>,
    /// `[dataplane] host_interface`: the TUN device of the node's host port.
    #[arg(long)]
    pub host_interface: Option<String>,
    /// `[dataplane] port_kind`: how pod ports are read when a request does
    /// not say: af-packet (default: carries the pods' 64 KiB TCP
    /// super-frames whole both ways), af-xdp (native XDP, falling back to
    /// generic XDP, then to af-packet, each fallback logged; the kernel
    /// takes TSO off a veth with XDP, so TCP moves frame by frame) or tap.
    #[arg(long)]
    pub port_kind: Option<String>,
    /// `[dataplane] underlay_kind`: how tunnel packets are received:
    /// socket (default: a UDP socket for VXLAN and IP-in-UDP, a raw socket
    /// for IPIP, through the kernel's IP stack) or af-xdp (an XDP program
    /// on the underlay interface steers the tunnel's packets to an AF_XDP
    /// socket and passes everything else, ARP and the node's own traffic,
    /// to the kernel; packets carrying TCP stay on the socket path, where
    /// the kernel merges them into super-frames; falls back to socket,
    /// logged, where XDP cannot be attached; not for host-gw). On a veth
    /// underlay it saves CPU on small packets and costs TCP and latency
    /// under load (docs/benchmarks.md, "AF_XDP underlay").
    #[arg(long, value_name = "socket|af-xdp")]
    pub underlay_kind: Option<String>,
    /// `[dataplane] tunnel_tap`: the TAP through which VXLAN and IPIP
    /// super-frames (a pod's 64 KiB TCP frames, encapsulated) leave
    /// whole, for the kernel to cut as late as it can, as its own VXLAN
    /// and IPIP devices'; a BPF program sends what enters it out of the
    /// underlay interface (default podswitch-gso; VXLAN needs Linux 6.17,
    /// IPIP 6.6; "none", or a kernel without it, logged: podswitch cuts
    /// them itself, VXLAN into UDP_SEGMENT bursts, IPIP into packets).
    #[arg(long, value_name = "NAME|none")]
    pub tunnel_tap: Option<String>,
    /// `[dataplane] busy_poll_us`: the most microseconds the worker keeps
    /// polling after its last packet from another CPU before it sleeps
    /// (default 200; 0 never spins). Within this bound the window adapts:
    /// it grows while the gaps between packets are shorter and falls to
    /// zero when they are longer (a ping every few ms), and the worker
    /// spins in the SCHED_IDLE class, so a pod on its CPU always runs
    /// first. With a worker per CPU, frames of split ports arrive on
    /// their worker's own CPU, which waking costs no more than spinning:
    /// the worker sleeps at once after those.
    #[arg(long)]
    pub busy_poll_us: Option<u64>,
    /// `[dataplane] pool_buffers`: the most packet buffers of 2 KiB
    /// (default 16384), each allocated when first needed and kept.
    #[arg(long)]
    pub pool_buffers: Option<usize>,
    /// `[dataplane] worker_priority`: realtime (default: the worker
    /// forwards in SCHED_FIFO at the lowest real-time priority, ahead of
    /// the pods, as the kernel forwards in softirq context; it spins in
    /// SCHED_IDLE) or normal (SCHED_OTHER: under load each packet waits
    /// while the pods on the worker's CPU run their time slices).
    #[arg(long, value_name = "realtime|normal")]
    pub worker_priority: Option<String>,
    /// `[dataplane] workers`: forwarding threads (1 to 64), instead of the
    /// default worker per CPU (`per_cpu`); with `per_cpu = false` and no
    /// count, one per four CPUs the daemon may run on, at least one. Each
    /// port is polled by one worker, the one with the fewest ports when it
    /// is attached; a frame for a port another worker owns is handed to
    /// that worker.
    #[arg(long)]
    pub workers: Option<usize>,
    /// `[dataplane] worker_cpus`: CPUs to pin the workers to, worker i to
    /// the i-th (wrapping around), e.g. `2,3` (TOML: `[2, 3]`); without
    /// `workers`, a worker for each CPU listed. Not with `per_cpu`, whose
    /// workers are pinned to every CPU.
    #[arg(long, value_name = "CPU,CPU...", value_delimiter = ',')]
    pub worker_cpus: Vec<usize>,
    /// `[dataplane] per_cpu`: one worker per CPU the daemon may run on,
    /// each pinned to its CPU, and every AF_PACKET pod port, the host
    /// port and the underlay (but IPIP's and AF_XDP's) split among them,
    /// so that a frame is forwarded by the worker of the CPU it arrived
    /// on, each flow kept in order. The default, unless `workers` or
    /// `worker_cpus` is given (not with them), or podswitchd may not run
    /// on every online CPU, the online CPUs are not numbered 0, 1, 2...,
    /// or there are more than 64: a CPU would then share another's
    /// worker, and podswitchd says at start that it keeps one worker per
    /// four CPUs instead.
    /// docs/architecture.md, "A worker per CPU".
    #[arg(long, value_name = "true|false")]
    pub per_cpu: Option<bool>,
    /// `[dataplane] udp_batches`: consecutive small datagrams of one flow
    /// reach an AF_PACKET pod (or leave the host-gw socket) as one
    /// super-datagram that the receiving kernel cuts back where it hands
    /// them to a socket (default true; Linux 6.2+). A UDP socket reads the
    /// same datagrams either way; false for pods whose packet sockets,
    /// firewall rules or conntrack must see each datagram as its own
    /// packet.
    #[arg(long, value_name = "true|false")]
    pub udp_batches: Option<bool>,
    /// `[node] masquerade`: pods' traffic to addresses outside the cluster
    /// CIDR leaves with the node's address (default true; a rule of the
    /// nftables table `podswitch`, which Services need either way and
    /// which goes on exit).
    #[arg(long, value_name = "true|false")]
    pub masquerade: Option<bool>,
    /// `[node] no_masquerade`: more destinations that keep the pod's
    /// address (repeatable), like ip-masq-agent's nonMasqueradeCIDRs.
    #[arg(long = "no-masquerade", value_name = "CIDR")]
    pub no_masquerade: Vec<String>,
    /// `[metrics] listen`: serve Prometheus metrics at
    /// http://ADDRESS:PORT/metrics, for example 127.0.0.1:9469 (default:
    /// no metrics endpoint).
    #[arg(long, value_name = "ADDRESS:PORT")]
    pub metrics_listen: Option<String>,
    /// `[cluster] store`: where peers come from: static (the `[[peer]]`
    /// tables and `podswitchctl peer add`; the default) or etcd (every
    /// node's subnet lease in flannel's layout, watched live; `pod_cidr`,
    /// `cluster_cidr` and the backend then come from the store's network
    /// config unless set here).
    #[arg(long, value_name = "static|etcd")]
    pub store: Option<String>,
    /// `[cluster] endpoints`: etcd client URLs, comma-separated (default
    /// http://127.0.0.1:2379).
    #[arg(long, value_name = "URL,...", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// `[cluster] prefix`: the etcd key prefix (default flannel's
    /// /coreos.com/network).
    #[arg(long)]
    pub etcd_prefix: Option<String>,
    /// `[cluster] ca_file`: CA certificate (PEM) of etcd's servers.
    #[arg(long)]
    pub etcd_cafile: Option<PathBuf>,
    /// `[cluster] cert_file`: client certificate (PEM) for etcd.
    #[arg(long)]
    pub etcd_certfile: Option<PathBuf>,
    /// `[cluster] key_file`: the client certificate's key (PEM).
    #[arg(long)]
    pub etcd_keyfile: Option<PathBuf>,
    /// `[cluster] subnet_file`: where the node's lease is written in
    /// flannel's format for tools that read it (default
    /// /run/flannel/subnet.env; with the etcd store only).
    #[arg(long)]
    pub subnet_file: Option<PathBuf>,
    /// A static peer, repeatable: `name=N,underlay_ip=IP,pod_cidr=CIDR` and
    /// optionally `,vtep_mac=MAC`, `,underlay_mac=MAC`, `,backend=B` (as `[[peer]]`).
    #[arg(long = "peer", value_name = "KEY=VALUE,...")]
    pub peers: Vec<String>,
    /// A static pod port, repeatable: `interface=IF,ip=IP,mac=MAC` and
    /// optionally `,kind=K`, `,container_id=ID` (as `[[port]]`).
    #[arg(long = "pod-port", value_name = "KEY=VALUE,...")]
    pub ports: Vec<String>,
    /// Log level: error, warn, info or debug.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    node: NodeSection,
    #[serde(default)]
    backend: BackendSection,
    #[serde(default)]
    control: ControlSection,
    #[serde(default)]
    dataplane: DataplaneSection,
    #[serde(default)]
    metrics: MetricsSection,
    #[serde(default)]
    cluster: ClusterSection,
    #[serde(default)]
    peer: Vec<PeerConfig>,
    #[serde(default)]
    port: Vec<PortConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSection {
    name: Option<String>,
    pod_cidr: Option<String>,
    cluster_cidr: Option<String>,
    underlay_interface: Option<String>,
    underlay_ip: Option<String>,
    vtep_mac: Option<String>,
    gateway_mode: Option<String>,
    masquerade: Option<bool>,
    #[serde(default)]
    no_masquerade: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendSection {
    #[serde(rename = "type")]
    kind: Option<String>,
    vni: Option<u32>,
    port: Option<u16>,
    mtu: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlSection {
    socket: Option<PathBuf>,
    state_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataplaneSection {
    host_interface: Option<String>,
    port_kind: Option<String>,
    underlay_kind: Option<String>,
    tunnel_tap: Option<String>,
    busy_poll_us: Option<u64>,
    pool_buffers: Option<usize>,
    worker_priority: Option<String>,
    workers: Option<usize>,
    worker_cpus: Option<Vec<usize>>,
    per_cpu: Option<bool>,
    udp_batches: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsSection {
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterSection {
    store: Option<String>,
    endpoints: Option<Vec<String>>,
    prefix: Option<String>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    subnet_file: Option<PathBuf>,
}

/// The lease store, when `[cluster] store = "etcd"`.
#[derive(Debug, Clone)]
pub(crate) struct StoreSettings {
    pub etcd: EtcdOptions,
    /// flannel's subnet file.
    pub subnet_file: PathBuf,
}

/// What the lease store is asked for, once the node's identity is known.
#[derive(Debug, Clone)]
pub(crate) struct LeaseRequest<'a> {
    pub store: &'a StoreSettings,
    pub underlay_ip: Ipv4Addr,
    pub vtep_mac: MacAddr,
    /// The subnet the configuration fixes, if it does.
    pub pod_cidr: Option<Prefix>,
}

/// What the store assigned: the node's subnet and the network's settings.
#[derive(Debug, Clone)]
pub(crate) struct Assignment {
    pub pod_cidr: Prefix,
    pub network: Prefix,
    pub backend: Backend,
    pub vni: Option<u32>,
    pub port: Option<u16>,
}

/// A static peer, as `[[peer]]` or `--peer` gives it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct PeerConfig {
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    pub pod_cidr: Prefix,
    #[serde(default)]
    pub vtep_mac: Option<MacAddr>,
    #[serde(default)]
    pub underlay_mac: Option<MacAddr>,
    #[serde(default)]
    pub backend: Option<Backend>,
}

/// A static pod port, as `[[port]]` or `--pod-port` gives it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct PortConfig {
    pub interface: String,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    #[serde(default)]
    pub kind: Option<PodPortKind>,
    #[serde(default)]
    pub container_id: Option<String>,
}

/// Workers with `per_cpu = false` and no count: one per four CPUs the
/// daemon may run on, at least one. On a node the pods make the traffic a
/// worker forwards, and a worker under load keeps its CPU: three CPUs in
/// four stay the pods'. On this project's 2-vCPU bench machine a second
/// worker of this kind (ports owned, not split) forwarded more small
/// packets between the pods of one node but cost TCP and latency
/// (docs/benchmarks.md, "Two workers").
pub(crate) fn default_workers(cpus: usize) -> usize {
    (cpus / 4).clamp(1, MAX_WORKERS)
}

/// Everything podswitchd runs with, checked.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub node: NodeConfig,
    pub underlay_interface: String,
    pub socket: PathBuf,
    pub state_file: PathBuf,
    pub host_interface: String,
    pub port_kind: PodPortKind,
    /// Tunnel packets received through AF_XDP (`underlay_kind = "af-xdp"`).
    pub underlay_af_xdp: bool,
    /// The TAP VXLAN and IPIP super-frames leave through (`tunnel_tap`;
    /// none: cut by podswitch).
    pub tunnel_tap: Option<String>,
    pub busy_poll_us: u64,
    pub pool_buffers: usize,
    /// The worker forwards in SCHED_FIFO.
    pub realtime: bool,
    /// Forwarding threads.
    pub workers: usize,
    /// CPUs the workers are pinned to (none: unpinned).
    pub worker_cpus: Vec<usize>,
    /// A worker per CPU, pod ports split among them.
    pub per_cpu: bool,
    /// Why a worker per CPU does not give each CPU a worker of its own
    /// ([`per_cpu_fits`]), where that matters: with `per_cpu`, chosen in
    /// spite of it; without, the default it kept from being taken (none
    /// when the config chose the workers).
    pub per_cpu_misfit: Option<String>,
    /// A flow's small datagrams into pods and out of the host-gw socket
    /// as one super-datagram (`udp_batches`).
    pub udp_batches: bool,
    /// Where the Prometheus endpoint listens, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Masquerade pod egress; see `egress`.
    pub masquerade: bool,
    /// Destinations outside the cluster CIDR that keep the pod's address.
    pub no_masquerade: Vec<Prefix>,
    pub peers: Vec<PeerConfig>,
    pub ports: Vec<PortConfig>,
}

/// The default state file.
/// A daemon's state file: beside its control socket, named after it. The
/// socket is what makes a daemon one (a second daemon on the same socket
/// is refused), so two daemons never share a state file by default.
pub(crate) fn state_file_beside(socket: &std::path::Path) -> PathBuf {
    socket.with_extension("state.json")
}
/// The default control socket.
pub(crate) const DEFAULT_SOCKET: &str = "/run/podswitch/podswitchd.sock";

/// Where a value came from, for error messages.
struct Origin<'a> {
    file: Option<&'a Path>,
}

impl Origin<'_> {
    fn error(&self, key: &str, reason: impl std::fmt::Display) -> String {
        match self.file {
            Some(f) => format!("{}: {key}: {reason}", f.display()),
            None => format!("{key}: {reason}"),
        }
    }
}

/// Parses `key=value,key=value` into a table for one `[[peer]]`/`[[port]]`.
fn key_values<T: serde::de::DeserializeOwned>(option: &str, text: &str) -> Result<T, String> {
    let mut table = toml::Table::new();
    for pair in text.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("--{option} {text:?}: {pair:?} is not KEY=VALUE"))?;
        table.insert(
            k.trim().to_string(),
            toml::Value::String(v.trim().to_string()),
        );
    }
    table
        .try_into()
        .map_err(|e| format!("--{option} {text:?}: {e}"))
}

impl Settings {
    /// Reads the file (if any), applies the command line, and checks
    /// everything, looking at the underlay interface for defaults. A
    /// configuration with a lease store is refused here; see
    /// [`Settings::load_with`].
    #[cfg(test)]
    pub(crate) fn load(cli: &Cli) -> Result<Settings, String> {
        Settings::load_with(cli, &mut |_| Err("no lease store here".into()))
    }

    /// The same, with `assign` asked for the node's subnet and the
    /// network's settings when the configuration names a lease store
    /// (`[cluster] store = "etcd"`): values the configuration gives must
    /// agree with the store's.
    pub(crate) fn load_with(
        cli: &Cli,
        assign: &mut dyn FnMut(&LeaseRequest<'_>) -> Result<Assignment, String>,
    ) -> Result<Settings, String> {
        let file: FileConfig = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let origin = Origin {
            file: cli.config.as_deref(),
        };
        let pick = |cli: &Option<String>, file: &Option<String>| cli.clone().or(file.clone());
        let need = |key: &str, option: &str, v: Option<String>| {
            v.ok_or_else(|| {
                origin.error(
                    key,
                    format!("missing (set it in the file or with --{option})"),
                )
            })
        };
        let name = need(
            "node.name",
            "node-name",
            pick(&cli.node_name, &file.node.name),
        )?;
        if name.is_empty() {
            return Err(origin.error("node.name", "empty"));
        }
        let underlay_interface = need(
            "node.underlay_interface",
            "underlay-interface",
            pick(&cli.underlay_interface, &file.node.underlay_interface),
        )?;
        let iface_addr = netdev::ipv4(&underlay_interface)
            .map_err(|e| origin.error("node.underlay_interface", e))?;
        let (underlay_ip, prefix_len) = match pick(&cli.underlay_ip, &file.node.underlay_ip) {
            Some(t) => {
                let ip: Ipv4Addr = t.parse().map_err(|_| {
                    origin.error("node.underlay_ip", format!("{t:?} is not an IPv4 address"))
                })?;
                let len = iface_addr.filter(|(a, _)| *a == ip).map_or(24, |(_, l)| l);
                (ip, len)
            }
            None => iface_addr.ok_or_else(|| {
                origin.error(
                    "node.underlay_ip",
                    format!("not given, and {underlay_interface} has no IPv4 address"),
                )
            })?,
        };
        let vtep_mac = match pick(&cli.vtep_mac, &file.node.vtep_mac) {
            Some(t) => t.parse().map_err(|e| origin.error("node.vtep_mac", e))?,
            None => derived_mac(0x0e, &name),
        };
        let store = store_settings(cli, &file.cluster).map_err(|e| origin.error("cluster", e))?;
        let pod_cidr_given = match pick(&cli.pod_cidr, &file.node.pod_cidr) {
            Some(t) => Some(
                t.parse::<Prefix>()
                    .map_err(|e| origin.error("node.pod_cidr", e))?,
            ),
            None => None,
        };
        let assigned = match &store {
            Some(store) => Some(assign(&LeaseRequest {
                store,
                underlay_ip,
                vtep_mac,
                pod_cidr: pod_cidr_given,
            })?),
            None => None,
        };
        let pod_cidr = match (&assigned, pod_cidr_given) {
            (Some(a), _) => a.pod_cidr,
            (None, Some(p)) => p,
            (None, None) => {
                return Err(origin.error(
                    "node.pod_cidr",
                    "missing (set it in the file or with --pod-cidr, or lease one from a store: [cluster] store = \"etcd\")",
                ))
            }
        };
        let cluster_cidr: Prefix = match pick(&cli.cluster_cidr, &file.node.cluster_cidr) {
            Some(t) => {
                let given: Prefix = t
                    .parse()
                    .map_err(|e| origin.error("node.cluster_cidr", e))?;
                if let Some(a) = assigned.as_ref().filter(|a| a.network != given) {
                    return Err(origin.error(
                        "node.cluster_cidr",
                        format!("{given}, but the store's network is {}", a.network),
                    ));
                }
                given
            }
            None => match &assigned {
                Some(a) => a.network,
                None => Prefix::new_truncating(pod_cidr.addr(), 16.min(pod_cidr.prefix_len())),
            },
        };
        if !cluster_cidr.covers(&pod_cidr) {
            return Err(origin.error(
                "node.cluster_cidr",
                format!("{cluster_cidr} does not contain the pod CIDR {pod_cidr}"),
            ));
        }
        let gateway_mode = match pick(&cli.gateway_mode, &file.node.gateway_mode) {
            None => GatewayMode::Bridge,
            Some(text) => text
                .parse()
                .map_err(|e| origin.error("node.gateway_mode", e))?,
        };
        let backend: Backend = match pick(&cli.backend, &file.backend.kind) {
            Some(t) => {
                let given: Backend = t.parse().map_err(|e| origin.error("backend.type", e))?;
                if let Some(a) = assigned.as_ref().filter(|a| a.backend != given) {
                    return Err(origin.error(
                        "backend.type",
                        format!("{given}, but the store's network config says {}", a.backend),
                    ));
                }
                given
            }
            None => assigned.as_ref().map_or(Backend::Vxlan, |a| a.backend),
        };
        let mut node = match gateway_mode {
            GatewayMode::Bridge => NodeConfig::flannel(&name, pod_cidr, underlay_ip),
            GatewayMode::ProxyArp => NodeConfig::calico(&name, pod_cidr, underlay_ip),
        };
        node.backend = backend;
        node.cluster_cidr = cluster_cidr;
        node.underlay_prefix_len = prefix_len;
        node.underlay_mac = MacAddr(
            netdev::mac(&underlay_interface)
                .map_err(|e| origin.error("node.underlay_interface", e))?,
        );
        node.vtep_mac = vtep_mac;
        if let Some(v) = cli
            .vni
            .or(file.backend.vni)
            .or(assigned.as_ref().and_then(|a| a.vni))
        {
            node.vni = Vni::new(v)
                .ok_or_else(|| origin.error("backend.vni", format!("{v} does not fit 24 bits")))?;
        }
        if let Some(p) = cli
            .port
            .or(file.backend.port)
            .or(assigned.as_ref().and_then(|a| a.port))
        {
            if p == 0 {
                return Err(origin.error("backend.port", "0 is not a port"));
            }
            match backend {
                Backend::Udp => node.udp_port = p,
                _ => node.vxlan_port = p,
            }
        }
        let overhead = match backend {
            Backend::Vxlan | Backend::DirectRouting => TunnelMode::Vxlan.overhead(),
            Backend::Ipip => TunnelMode::Ipip.overhead(),
            Backend::Udp => TunnelMode::IpInUdp.overhead(),
            Backend::HostGw => 0,
        };
        let iface_mtu = netdev::mtu(&underlay_interface)
            .map_err(|e| origin.error("node.underlay_interface", e))?;
        node.underlay_mtu = match cli.mtu.or(file.backend.mtu) {
            Some(mtu) => {
                if !(576..=9000).contains(&mtu) || u32::from(mtu) + u32::from(overhead) > iface_mtu
                {
                    return Err(origin.error(
                        "backend.mtu",
                        format!(
                            "{mtu} does not fit: 576 at least, and with the {backend} overhead of {overhead} bytes at most the underlay's {iface_mtu}"
                        ),
                    ));
                }
                mtu + overhead
            }
            None => u16::try_from(iface_mtu).unwrap_or(u16::MAX),
        };
        let port_kind = match pick(&cli.port_kind, &file.dataplane.port_kind) {
            Some(kind) => kind
                .parse::<PodPortKind>()
                .map_err(|e| origin.error("dataplane.port_kind", e))?,
            None => PodPortKind::default(),
        };
        let underlay_af_xdp = match pick(&cli.underlay_kind, &file.dataplane.underlay_kind)
            .as_deref()
            .unwrap_or("socket")
        {
            "socket" => false,
            "af-xdp" => true,
            other => {
                return Err(origin.error(
                    "dataplane.underlay_kind",
                    format!("{other:?}: socket or af-xdp"),
                ))
            }
        };
        let tunnel_tap = match pick(&cli.tunnel_tap, &file.dataplane.tunnel_tap) {
            None => Some(DEFAULT_TUNNEL_TAP.to_string()),
            Some(name) if name == "none" => None,
            Some(name) => {
                if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                    return Err(origin.error(
                        "dataplane.tunnel_tap",
                        format!("{name:?}: an interface name of 1 to 15 characters, or \"none\""),
                    ));
                }
                Some(name)
            }
        };
        let host_interface = pick(&cli.host_interface, &file.dataplane.host_interface)
            .unwrap_or_else(|| "podswitch0".into());
        netdev::ifindex(&host_interface).ok(); // validated when created
        let pool_buffers = cli
            .pool_buffers
            .or(file.dataplane.pool_buffers)
            .unwrap_or(16384);
        if pool_buffers < 1024 {
            return Err(origin.error("dataplane.pool_buffers", "at least 1024"));
        }
        let realtime = match pick(&cli.worker_priority, &file.dataplane.worker_priority).as_deref()
        {
            None | Some("realtime") => true,
            Some("normal") => false,
            Some(other) => {
                return Err(origin.error(
                    "dataplane.worker_priority",
                    format!("{other:?}: realtime or normal"),
                ))
            }
        };
        let allowed =
            sched::allowed_cpus().map_err(|e| format!("the CPUs podswitchd may use: {e}"))?;
        let chosen_workers = cli.workers.or(file.dataplane.workers);
        // The CLI's list, if it gives one, else the file's.
        let chosen_cpu_list = if cli.worker_cpus.is_empty() {
            file.dataplane.worker_cpus.as_deref()
        } else {
            Some(&cli.worker_cpus[..])
        };
        let chosen_cpus = chosen_cpu_list.is_some();
        // A worker per CPU unless told otherwise, where each CPU can have
        // its own: the layout the kernel's own forwarding has
        // (docs/architecture.md, "A worker per CPU").
        let fits = || {
            sched::online_cpus()
                .map_err(|e| e.to_string())
                .and_then(|online| per_cpu_fits(&allowed, &online))
        };
        let (per_cpu, per_cpu_misfit) = match cli.per_cpu.or(file.dataplane.per_cpu) {
            Some(true) => (true, fits().err()),
            Some(false) => (false, None),
            None if chosen_workers.is_some() || chosen_cpus => (false, None),
            None => match fits() {
                Ok(()) => (true, None),
                Err(why) => (false, Some(why)),
            },
        };
        if per_cpu && (chosen_workers.is_some() || chosen_cpus) {
            return Err(origin.error(
                "dataplane.per_cpu",
                "it sets the workers (one per CPU) and their CPUs itself: leave out workers and worker_cpus",
            ));
        }
        let workers = if per_cpu {
            allowed.len().min(MAX_WORKERS)
        } else if let Some(workers) = chosen_workers {
            workers
        } else if let Some(cpus) = chosen_cpu_list {
            // A worker for each CPU listed, none left unused (an empty
            // list: one, unpinned).
            cpus.len().clamp(1, MAX_WORKERS)
        } else {
            default_workers(allowed.len())
        };
        if !(1..=MAX_WORKERS).contains(&workers) {
            return Err(origin.error(
                "dataplane.workers",
                format!("{workers}: from 1 to {MAX_WORKERS}"),
            ));
        }
        let worker_cpus = if per_cpu {
            allowed[..workers].to_vec()
        } else {
            chosen_cpu_list.map(<[usize]>::to_vec).unwrap_or_default()
        };
        if let Some(cpu) = worker_cpus.iter().find(|c| !allowed.contains(c)) {
            return Err(origin.error(
                "dataplane.worker_cpus",
                format!("CPU {cpu} is not one podswitchd may run on ({allowed:?})"),
            ));
        }
        let mut peers = file.peer;
        for text in &cli.peers {
            peers.push(key_values("peer", text)?);
        }
        let mut ports = file.port;
        for text in &cli.ports {
            ports.push(key_values("pod-port", text)?);
        }
        let socket_path: PathBuf = cli
            .socket
            .clone()
            .or(file.control.socket.clone())
            .unwrap_or_else(|| DEFAULT_SOCKET.into());
        let no_masquerade = if cli.no_masquerade.is_empty() {
            &file.node.no_masquerade
        } else {
            &cli.no_masquerade
        }
        .iter()
        .map(|c| {
            c.parse::<Prefix>()
                .map_err(|e| origin.error("node.no_masquerade", e))
        })
        .collect::<Result<Vec<_>, _>>()?;
        let metrics_listen = match cli.metrics_listen.clone().or(file.metrics.listen) {
            None => None,
            Some(text) => Some(text.parse().map_err(|_| {
                origin.error(
                    "metrics.listen",
                    format!("{text:?} is not an address and port like 127.0.0.1:9469"),
                )
            })?),
        };
        Ok(Settings {
            node,
            underlay_interface,
            socket: socket_path.clone(),
            state_file: cli
                .state_file
                .clone()
                .or(file.control.state_file)
                .unwrap_or_else(|| state_file_beside(&socket_path)),
            host_interface,
            port_kind,
            underlay_af_xdp,
            tunnel_tap,
            busy_poll_us: cli
                .busy_poll_us
                .or(file.dataplane.busy_poll_us)
                .unwrap_or(200),
            pool_buffers,
            realtime,
            workers,
            worker_cpus,
            per_cpu,
            per_cpu_misfit,
            udp_batches: cli
                .udp_batches
                .or(file.dataplane.udp_batches)
                .unwrap_or(true),
            metrics_listen,
            masquerade: cli.masquerade.or(file.node.masquerade).unwrap_or(true),
            no_masquerade,
            peers,
            ports,
        })
    }
}

/// `[cluster]` and its options: None for the static store.
fn store_settings(cli: &Cli, file: &ClusterSection) -> Result<Option<StoreSettings>, String> {
    match cli.store.as_deref().or(file.store.as_deref()) {
        None | Some("static") => return Ok(None),
        Some("etcd") => {}
        Some(other) => return Err(format!("store {other:?}: static or etcd")),
    }
    let endpoints = if cli.etcd_endpoints.is_empty() {
        file.endpoints
            .clone()
            .unwrap_or_else(|| vec!["http://127.0.0.1:2379".into()])
    } else {
        cli.etcd_endpoints.clone()
    };
    if let Some(bad) = endpoints
        .iter()
        .find(|e| !(e.starts_with("http://") || e.starts_with("https://")))
    {
        return Err(format!("endpoint {bad:?}: an http:// or https:// URL"));
    }
    let prefix = cli
        .etcd_prefix
        .clone()
        .or(file.prefix.clone())
        .unwrap_or_else(|| podswitch_lease::flannel::DEFAULT_PREFIX.into());
    if !prefix.starts_with('/') {
        return Err(format!("prefix {prefix:?}: an etcd key starting with /"));
    }
    let pick = |c: &Option<PathBuf>, f: &Option<PathBuf>| c.clone().or(f.clone());
    let (cert_file, key_file) = (
        pick(&cli.etcd_certfile, &file.cert_file),
        pick(&cli.etcd_keyfile, &file.key_file),
    );
    if cert_file.is_some() != key_file.is_some() {
        return Err("cert_file and key_file go together".into());
    }
    Ok(Some(StoreSettings {
        etcd: EtcdOptions {
            endpoints,
            prefix,
            ca_file: pick(&cli.etcd_cafile, &file.ca_file),
            cert_file,
            key_file,
            timeout: std::time::Duration::from_secs(5),
        },
        subnet_file: pick(&cli.subnet_file, &file.subnet_file)
            .unwrap_or_else(|| podswitch_host::subnet_file::DEFAULT_PATH.into()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from(std::iter::once("podswitchd").chain(args.iter().copied()))
    }

    /// A node on the loopback interface, which exists everywhere (its MTU
    /// is 65536), with `extra` options.
    fn load_node1(extra: &[&str]) -> Result<Settings, String> {
        let node = [
            "--node-name",
            "node1",
            "--pod-cidr",
            "10.244.1.0/24",
            "--underlay-interface",
            "lo",
            "--underlay-ip",
            "127.0.0.1",
        ];
        let args: Vec<&str> = node.iter().chain(extra).copied().collect();
        Settings::load(&cli(&args))
    }

    #[test]
    fn file_errors_name_file_key_and_reason() {
        let dir = std::env::temp_dir().join(format!("psw-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let typo = write("typo.toml", "[node]\nnme = \"node1\"\n");
        let e = Settings::load(&cli(&["--config", typo.to_str().unwrap()])).unwrap_err();
        assert!(e.contains("typo.toml") && e.contains("nme"), "{e}");

        let bad = write(
            "bad.toml",
            "[node]\nname = \"node1\"\npod_cidr = \"10.244.1.0/33\"\nunderlay_interface = \"lo\"\n",
        );
        let e = Settings::load(&cli(&["--config", bad.to_str().unwrap()])).unwrap_err();
        assert!(e.contains("bad.toml: node.pod_cidr:"), "{e}");

        let missing = write("missing.toml", "[backend]\ntype = \"vxlan\"\n");
        let e = Settings::load(&cli(&["--config", missing.to_str().unwrap()])).unwrap_err();
        assert!(
            e.contains("node.name: missing") && e.contains("--node-name"),
            "{e}"
        );

        let e = Settings::load(&cli(&["--config", "/nonexistent/x.toml"])).unwrap_err();
        assert!(e.starts_with("/nonexistent/x.toml:"), "{e}");

        let backend = write(
            "backend.toml",
            "[node]\nname = \"n\"\npod_cidr = \"10.244.1.0/24\"\nunderlay_interface = \"lo\"\nunderlay_ip = \"127.0.0.1\"\n[backend]\ntype = \"gre\"\n",
        );
        let e = Settings::load(&cli(&["--config", backend.to_str().unwrap()])).unwrap_err();
        assert!(e.contains("backend.type") && e.contains("gre"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn command_line_wins_and_defaults_follow_flannel() {
        let s = load_node1(&[
            "--mtu",
            "1450",
            "--peer",
            "name=node2,underlay_ip=192.168.100.2,pod_cidr=10.244.2.0/24,vtep_mac=02:0e:00:00:00:02",
        ])
        .unwrap();
        assert_eq!(s.node.cluster_cidr.to_string(), "10.244.0.0/16");
        assert_eq!(s.node.pod_mtu(), 1450);
        assert_eq!(s.node.vxlan_port, 8472);
        assert_eq!(s.node.vtep_mac, derived_mac(0x0e, "node1"));
        assert_eq!(s.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(s.peers[0].pod_cidr.to_string(), "10.244.2.0/24");
        let e = Settings::load(&cli(&[
            "--node-name",
            "n",
            "--pod-cidr",
            "10.244.1.0/24",
            "--underlay-interface",
            "lo",
            "--peer",
            "name",
        ]))
        .unwrap_err();
        assert!(e.contains("--peer") && e.contains("KEY=VALUE"), "{e}");
    }

    #[test]
    fn without_per_cpu_workers_default_to_one_per_four_cpus_and_pin_only_to_cpus_allowed() {
        assert_eq!(default_workers(1), 1);
        assert_eq!(default_workers(2), 1);
        assert_eq!(default_workers(8), 2);
        assert_eq!(default_workers(1024), MAX_WORKERS);
        let with = load_node1;
        let cpus = sched::allowed_cpus().unwrap();
        let owned = with(&["--per-cpu", "false"]).unwrap();
        assert!(!owned.per_cpu);
        assert_eq!(owned.workers, default_workers(cpus.len()));
        assert!(owned.worker_cpus.is_empty());
        let s = with(&[
            "--workers",
            "3",
            "--worker-cpus",
            &format!("{},{}", cpus[0], cpus[0]),
        ])
        .unwrap();
        assert_eq!((s.workers, s.worker_cpus), (3, vec![cpus[0]; 2]));
        for bad in ["0", "65"] {
            let e = with(&["--workers", bad]).unwrap_err();
            assert!(
                e.contains("dataplane.workers") && e.contains("from 1 to 64"),
                "{e}"
            );
        }
        let e = with(&["--worker-cpus", "100000"]).unwrap_err();
        assert!(
            e.contains("dataplane.worker_cpus") && e.contains("CPU 100000"),
            "{e}"
        );
    }

    /// The file's `worker_cpus` chooses the workers as `--worker-cpus`
    /// does, and the command line's list wins over it.
    #[test]
    fn worker_cpus_from_the_file_give_a_worker_each_unless_the_command_line_lists_its_own() {
        let cpu = sched::allowed_cpus().unwrap()[0];
        let file = std::env::temp_dir().join(format!("psw-cpus-{}.toml", std::process::id()));
        let load = |listed: &str, extra: &[&str]| {
            std::fs::write(&file, format!("[dataplane]\nworker_cpus = [{listed}]\n")).unwrap();
            let path = file.to_str().unwrap().to_string();
            let mut args = vec!["--config", path.as_str()];
            args.extend_from_slice(extra);
            load_node1(&args).unwrap()
        };
        let s = load(&format!("{cpu}, {cpu}"), &[]);
        assert_eq!(
            (s.per_cpu, s.workers, s.worker_cpus),
            (false, 2, vec![cpu; 2])
        );
        let s = load(
            &format!("{cpu}, {cpu}"),
            &["--worker-cpus", &cpu.to_string()],
        );
        assert_eq!((s.per_cpu, s.workers, s.worker_cpus), (false, 1, vec![cpu]));
        let s = load("", &[]);
        assert_eq!((s.per_cpu, s.workers, s.worker_cpus), (false, 1, vec![]));
        std::fs::remove_file(&file).unwrap();
    }

    #[test]
    fn per_cpu_by_default_gives_each_cpu_allowed_a_pinned_worker_and_excludes_choosing_them() {
        let with = load_node1;
        let cpus = sched::allowed_cpus().unwrap();
        for args in [&[][..], &["--per-cpu", "true"]] {
            let s = with(args).unwrap();
            assert!(s.per_cpu, "{args:?}");
            assert_eq!(s.workers, cpus.len().min(MAX_WORKERS));
            assert_eq!(s.worker_cpus, cpus[..s.workers]);
        }
        // A count or CPUs chosen, and nothing said of per_cpu: owned ports,
        // and a worker for each CPU listed.
        for chosen in [
            &["--workers", "2"][..],
            &["--worker-cpus", &cpus[0].to_string()],
        ] {
            assert!(!with(chosen).unwrap().per_cpu, "{chosen:?}");
        }
        let listed = with(&["--worker-cpus", &format!("{0},{0},{0}", cpus[0])]).unwrap();
        assert_eq!(listed.workers, 3);
        for also in [
            &["--workers", "2"][..],
            &["--worker-cpus", &cpus[0].to_string()],
        ] {
            let mut args = vec!["--per-cpu", "true"];
            args.extend_from_slice(also);
            let e = with(&args).unwrap_err();
            assert!(
                e.contains("dataplane.per_cpu") && e.contains("leave out workers"),
                "{e}"
            );
        }
    }

    /// A worker per CPU is the default only where each CPU gets a worker
    /// of its own; otherwise the reason is said.
    #[test]
    fn a_worker_per_cpu_fits_only_every_online_cpu_numbered_from_0() {
        assert_eq!(per_cpu_fits(&[0, 1], &[0, 1]), Ok(()));
        let cases: [(&[usize], &[usize], &str); 3] = [
            (&[1, 2], &[0, 1, 2, 3], "not on every online CPU"),
            (&[0, 2], &[0, 2], "not numbered from 0"),
            (
                &(0..65).collect::<Vec<_>>(),
                &(0..65).collect::<Vec<_>>(),
                "more than the 64",
            ),
        ];
        for (allowed, online, why) in cases {
            let e = per_cpu_fits(allowed, online).unwrap_err();
            assert!(e.contains(why), "{allowed:?} of {online:?}: {e}");
        }
    }

    #[test]
    fn the_worker_forwards_in_real_time_unless_told_otherwise() {
        let with = load_node1;
        assert!(with(&[]).unwrap().realtime);
        assert!(!with(&["--worker-priority", "normal"]).unwrap().realtime);
        assert!(with(&["--worker-priority", "realtime"]).unwrap().realtime);
        let e = with(&["--worker-priority", "high"]).unwrap_err();
        assert!(
            e.contains("dataplane.worker_priority") && e.contains("realtime or normal"),
            "{e}"
        );
    }

    #[test]
    fn a_flows_datagrams_are_batched_unless_told_otherwise() {
        assert!(load_node1(&[]).unwrap().udp_batches);
        assert!(!load_node1(&["--udp-batches", "false"]).unwrap().udp_batches);
    }

    #[test]
    fn vxlan_super_frames_leave_through_the_tunnel_tap_unless_told_otherwise() {
        let with = load_node1;
        assert_eq!(
            with(&[]).unwrap().tunnel_tap.as_deref(),
            Some(DEFAULT_TUNNEL_TAP)
        );
        assert_eq!(with(&["--tunnel-tap", "none"]).unwrap().tunnel_tap, None);
        assert_eq!(
            with(&["--tunnel-tap", "gso0"])
                .unwrap()
                .tunnel_tap
                .as_deref(),
            Some("gso0")
        );
        for bad in ["", "sixteen-chars-xx", "a/b"] {
            let e = with(&["--tunnel-tap", bad]).unwrap_err();
            assert!(
                e.contains("dataplane.tunnel_tap") && e.contains("1 to 15 characters"),
                "{e}"
            );
        }
    }

    #[test]
    fn tunnel_packets_come_through_sockets_unless_af_xdp_is_asked_for() {
        let with = load_node1;
        assert!(!with(&[]).unwrap().underlay_af_xdp);
        assert!(
            !with(&["--underlay-kind", "socket"])
                .unwrap()
                .underlay_af_xdp
        );
        assert!(
            with(&["--underlay-kind", "af-xdp"])
                .unwrap()
                .underlay_af_xdp
        );
        let e = with(&["--underlay-kind", "dpdk"]).unwrap_err();
        assert!(
            e.contains("dataplane.underlay_kind") && e.contains("socket or af-xdp"),
            "{e}"
        );
    }
}
