//! Simulated clusters on this machine, for benchmarks and for learning:
//! what `podswitchctl lab` and `podswitchctl bench` build. One network namespace per node, joined by an
//! underlay (a veth from each node to a bridge in an underlay namespace,
//! 192.168.100.0/24), pods as namespaces behind each node, node X owning
//! 10.244.X.0/24 (DESIGN.md's address plan).
//!
//! Three dataplanes on the same topology:
//! - `podswitch`: a podswitchd per node, pods attached through the CNI
//!   plugin as a container runtime would;
//! - `kernel`: exactly what flannel writes into a node's kernel (`cni0`
//!   bridge, `flannel.1` vxlan device with VNI 1 on port 8472 and static
//!   FDB and ARP entries with onlink routes; host-gw routes), or Calico's
//!   pod attachment (proxy ARP, /32 routes) in proxy-arp mode;
//! - `ovs`: Open vSwitch's userspace datapath with AF_XDP ports, routing
//!   and tunnelling as flannel's vxlan backend does (src/lab/ovs.rs).
//!
//! A lab's state (nodes, pods, daemons) is kept in
//! /run/podswitch-lab/NAME/lab.json; every namespace is named
//! `lab-NAME-...`, so labs of different names live side by side and
//! `lab down` finds everything.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;
use podswitch_engine::config::{derived_mac, Backend, GatewayMode};
use podswitch_engine::kernel_port::PodPortKind;
use podswitch_lease::flannel;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::kernel_flannel::{self, VxlanNode, VxlanPeer};

mod ovs;
mod topology;
pub use topology::{
    join_underlay, pod_interface, pod_mtu, underlay_bridge, veth, Namespace, PodInterface,
};

/// Where labs keep their state.
const LAB_ROOT: &str = "/run/podswitch-lab";

#[derive(Debug, Args)]
pub struct UpArgs {
    /// The lab's name (letters, digits, '-'; up to 12).
    #[arg(long, default_value = "lab")]
    name: String,
    /// Nodes (1 to 9).
    #[arg(long, default_value_t = 2)]
    nodes: u8,
    /// Pods per node (0 to 110, Kubernetes' default maxPods).
    #[arg(long, default_value_t = 2)]
    pods_per_node: u8,
    /// vxlan, ipip, udp, host-gw or directrouting.
    #[arg(long, default_value = "vxlan")]
    backend: Backend,
    /// bridge (flannel) or proxy-arp (Calico).
    #[arg(long, default_value = "bridge")]
    gateway_mode: GatewayMode,
    /// podswitch, kernel (what flannel or Calico writes into the node's
    /// kernel) or ovs (Open vSwitch's userspace datapath; vxlan, bridge
    /// mode).
    #[arg(long, default_value = "podswitch")]
    dataplane: Dataplane,
    /// static (every node names the others as peers) or etcd (an etcd in
    /// the underlay namespace at 192.168.100.254 holds flannel's network
    /// config; nodes start with no subnet and no peers, lease their
    /// subnets and learn each other there).
    #[arg(long, default_value = "static")]
    store: String,
    /// With --store etcd: the last N nodes run flannel's kernel data path
    /// (vxlan, bridge mode), their leases written as flanneld writes them
    /// and their kernels programmed from the other nodes' leases, beside
    /// podswitch nodes.
    #[arg(long, default_value_t = 0)]
    kernel_nodes: u8,
    /// With --store etcd: members of the lab's etcd cluster (1 or 3), at
    /// 192.168.100.254, .253 and .252; nodes are given every member.
    #[arg(long, default_value_t = 1)]
    etcd_members: u8,
    /// podswitchd's forwarding threads on each node, owning the ports
    /// (default: podswitchd's own, a worker per CPU).
    #[arg(long, conflicts_with = "per_cpu")]
    workers: Option<usize>,
    /// podswitchd with a worker per CPU, pod ports split among them
    /// (its `per_cpu`, its default too).
    #[arg(long)]
    per_cpu: bool,
    /// The class podswitchd's workers forward in (its `worker_priority`;
    /// default: podswitchd's own, realtime).
    #[arg(long, value_parser = ["realtime", "normal"])]
    worker_priority: Option<String>,
    /// How podswitchd receives tunnel packets: socket or af-xdp (default:
    /// podswitchd's own, socket).
    #[arg(long, value_parser = UNDERLAY_KINDS)]
    underlay_kind: Option<String>,
    /// How podswitchd reads the pods' veths (default: podswitchd's own,
    /// af-packet). A lab's pods are veths, so tap is not offered.
    #[arg(long, value_parser = veth_port_kinds())]
    port_kind: Option<PodPortKind>,
    /// Whether podswitchd gives pods' traffic to outside the cluster the
    /// node's address (its `masquerade`; default: podswitchd's own, true).
    #[arg(long, value_name = "true|false")]
    masquerade: Option<bool>,
}

/// Which dataplane a lab's nodes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Dataplane {
    /// A podswitchd per node, pods attached through the CNI plugin.
    Podswitch,
    /// What flannel (or Calico, in proxy-arp mode) writes into a node's
    /// kernel.
    Kernel,
    /// Open vSwitch's userspace datapath (`datapath_type=netdev`), its
    /// ports read through AF_XDP.
    Ovs,
}

impl std::fmt::Display for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dataplane::Podswitch => "podswitch",
            Dataplane::Kernel => "kernel",
            Dataplane::Ovs => "ovs",
        })
    }
}

/// The pod port kinds a lab's pods can be read with, as clap parses them:
/// the pods are veths, so not tap (a device podswitchd makes itself).
pub fn veth_port_kinds() -> impl TypedValueParser<Value = PodPortKind> {
    PossibleValuesParser::new(["af-packet", "af-xdp"]).try_map(|kind| kind.parse::<PodPortKind>())
}

/// podswitchd's `underlay_kind` values.
pub const UNDERLAY_KINDS: [&str; 2] = ["socket", "af-xdp"];

/// The most pods a lab node has: Kubernetes' default `maxPods`.
pub const MAX_PODS_PER_NODE: u8 = 110;

impl UpArgs {
    /// `nodes` nodes of `pods_per_node` pods each.
    pub fn sized(mut self, nodes: u8, pods_per_node: u8) -> UpArgs {
        self.nodes = nodes;
        self.pods_per_node = pods_per_node;
        self
    }

    /// Two nodes with two pods each, bridge mode: the bench's topology.
    pub fn new(name: &str, dataplane: Dataplane, backend: Backend) -> UpArgs {
        UpArgs {
            name: name.to_string(),
            nodes: 2,
            pods_per_node: 2,
            backend,
            gateway_mode: GatewayMode::Bridge,
            dataplane,
            store: "static".to_string(),
            kernel_nodes: 0,
            etcd_members: 1,
            workers: None,
            per_cpu: false,
            worker_priority: None,
            underlay_kind: None,
            port_kind: None,
            masquerade: None,
        }
    }

    /// podswitchd with `workers` forwarding threads.
    pub fn workers(mut self, workers: usize) -> UpArgs {
        self.workers = Some(workers);
        self
    }

    /// podswitchd with a worker per CPU (`per_cpu`).
    pub fn per_cpu(mut self) -> UpArgs {
        self.per_cpu = true;
        self
    }

    /// podswitchd's workers forwarding in `class` (realtime or normal).
    pub fn worker_priority(mut self, class: &str) -> UpArgs {
        self.worker_priority = Some(class.to_string());
        self
    }

    /// podswitchd reading the pods' veths as `kind` says.
    pub fn port_kind(mut self, kind: PodPortKind) -> UpArgs {
        self.port_kind = Some(kind);
        self
    }

    /// podswitchd receiving tunnel packets as `kind` says.
    pub fn underlay_kind(mut self, kind: &str) -> UpArgs {
        self.underlay_kind = Some(kind.to_string());
        self
    }
}

/// A lab as recorded in lab.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lab {
    pub name: String,
    pub dataplane: Dataplane,
    pub backend: Backend,
    pub gateway_mode: GatewayMode,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    /// The client URLs of the etcd the nodes lease their subnets from, if
    /// any (comma-separated).
    #[serde(default)]
    pub store: Option<String>,
    /// podswitchd's forwarding threads, if the lab chose.
    #[serde(default)]
    pub workers: Option<usize>,
    /// podswitchd runs a worker per CPU.
    #[serde(default)]
    pub per_cpu: bool,
    /// The class podswitchd's workers forward in, if the lab chose.
    #[serde(default)]
    pub worker_priority: Option<String>,
    /// How podswitchd receives tunnel packets, if the lab chose.
    #[serde(default)]
    pub underlay_kind: Option<String>,
    /// How podswitchd reads the pods' veths, if the lab chose.
    #[serde(default)]
    pub port_kind: Option<PodPortKind>,
    /// podswitchd's `masquerade`, if the lab chose.
    #[serde(default)]
    pub masquerade: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub index: u8,
    pub netns: String,
    pub underlay_ip: String,
    pub pod_cidr: String,
    /// podswitchd's pid and socket (podswitch dataplane).
    pub pid: Option<u32>,
    pub socket: Option<String>,
    /// A kernel flannel node in a lab of podswitch nodes.
    #[serde(default)]
    pub kernel: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pod {
    pub name: String,
    pub node: String,
    pub netns: String,
    pub ip: String,
}

fn lab_dir(name: &str) -> PathBuf {
    Path::new(LAB_ROOT).join(name)
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 12
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        bail!("lab name {name:?}: 1 to 12 letters, digits or '-'");
    }
    Ok(())
}

use crate::run;
use topology::{in_ns, ip};

fn sibling(binary: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("where podswitchctl is")?;
    let path = exe.with_file_name(binary);
    if !path.is_file() {
        bail!(
            "{} is missing: build podswitch (cargo build --release)",
            path.display()
        );
    }
    Ok(path)
}

impl Lab {
    /// Reads a lab's state.
    pub fn load(name: &str) -> Result<Lab> {
        check_name(name)?;
        let path = lab_dir(name).join("lab.json");
        let text = fs::read_to_string(&path)
            .with_context(|| format!("no lab {name:?} ({})", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}", path.display()))
    }

    fn save(&self) -> Result<()> {
        let dir = lab_dir(&self.name);
        fs::create_dir_all(&dir)?;
        let tmp = dir.join("lab.json.tmp");
        fs::write(&tmp, serde_json::to_string_pretty(self)?)?;
        fs::rename(&tmp, dir.join("lab.json"))?;
        Ok(())
    }

    /// The pod called `name`.
    pub fn pod(&self, name: &str) -> Result<&Pod> {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("no pod {name:?} in lab {:?}", self.name))
    }
}

/// Builds a lab.
pub fn up(args: &UpArgs) -> Result<Lab> {
    check_name(&args.name)?;
    if !(1..=9).contains(&args.nodes) || args.pods_per_node > MAX_PODS_PER_NODE {
        bail!("--nodes 1 to 9, --pods-per-node 0 to {MAX_PODS_PER_NODE}");
    }
    let kernel = args.dataplane == Dataplane::Kernel;
    let store = match args.store.as_str() {
        "static" => None,
        "etcd" => Some(
            etcd_member_ips(args.etcd_members)?
                .iter()
                .map(|ip| format!("http://{ip}:2379"))
                .collect::<Vec<_>>()
                .join(","),
        ),
        other => bail!("--store {other:?}: static or etcd"),
    };
    if args.etcd_members != 1 && store.is_none() {
        bail!("--etcd-members goes with --store etcd");
    }
    if args.kernel_nodes > 0
        && (store.is_none()
            || kernel
            || args.backend != Backend::Vxlan
            || args.gateway_mode != GatewayMode::Bridge
            || args.kernel_nodes >= args.nodes)
    {
        bail!("--kernel-nodes N mixes kernel flannel nodes into a lab of podswitch nodes: it needs --store etcd, --backend vxlan, bridge mode, and fewer kernel nodes than --nodes");
    }
    if kernel && store.is_some() && args.gateway_mode != GatewayMode::Bridge {
        bail!("--dataplane kernel --store etcd runs flannel's nodes: bridge mode");
    }
    // podswitchd's own settings: the other dataplanes run no podswitchd,
    // and would leave them unused without a word.
    let podswitchd_options = [
        ("--workers", args.workers.is_some()),
        ("--per-cpu", args.per_cpu),
        ("--worker-priority", args.worker_priority.is_some()),
        ("--underlay-kind", args.underlay_kind.is_some()),
        ("--port-kind", args.port_kind.is_some()),
        ("--masquerade", args.masquerade.is_some()),
    ];
    let given: Vec<&str> = podswitchd_options
        .iter()
        .filter(|(_, set)| *set)
        .map(|(option, _)| *option)
        .collect();
    if args.dataplane != Dataplane::Podswitch && !given.is_empty() {
        let settings = if given.len() == 1 {
            "setting"
        } else {
            "settings"
        };
        bail!(
            "{}: podswitchd's {settings}, for --dataplane podswitch",
            given.join(", ")
        );
    }
    if args.port_kind == Some(PodPortKind::Tap) {
        bail!(
            "--port-kind tap: a lab's pods are veths the CNI plugin makes; use af-packet or af-xdp"
        );
    }
    if args.dataplane == Dataplane::Ovs {
        if args.backend != Backend::Vxlan
            || args.gateway_mode != GatewayMode::Bridge
            || args.store != "static"
        {
            bail!("--dataplane ovs runs flannel's vxlan backend in bridge mode with static peers: --backend vxlan --gateway-mode bridge --store static");
        }
        ovs::check_installed()?;
    }
    if kernel && args.backend == Backend::Udp {
        bail!("the kernel has no udp backend: flannel's udp backend is flanneld forwarding in userspace; use --dataplane podswitch");
    }
    // A stale lab of this name goes first.
    down(&args.name)?;
    let mut lab = Lab {
        name: args.name.clone(),
        dataplane: args.dataplane,
        backend: args.backend,
        gateway_mode: args.gateway_mode,
        nodes: Vec::new(),
        pods: Vec::new(),
        store,
        workers: args.workers,
        per_cpu: args.per_cpu,
        worker_priority: args.worker_priority.clone(),
        underlay_kind: args.underlay_kind.clone(),
        port_kind: args.port_kind,
        masquerade: args.masquerade,
    };
    let result = build(&mut lab, args, kernel);
    if let Err(e) = result {
        let _ = down(&lab.name);
        return Err(e);
    }
    Ok(lab)
}

fn build(lab: &mut Lab, args: &UpArgs, kernel: bool) -> Result<()> {
    let prefix = format!("lab-{}", lab.name);
    fs::create_dir_all(lab_dir(&lab.name))?;
    // Each namespace is the lab's once made: `lab down` removes it, a
    // failed `lab up` included.
    let underlay = Namespace::add(&format!("{prefix}-ul"))?.keep();
    underlay_bridge(&underlay)?;
    if lab.store.is_some() {
        start_etcd(lab, &underlay)?;
    }
    for x in 1..=args.nodes {
        let netns = Namespace::add(&format!("{prefix}-n{x}"))?.keep();
        let underlay_ip = join_underlay(&netns, &underlay, x)?;
        lab.nodes.push(Node {
            name: format!("node{x}"),
            index: x,
            netns,
            underlay_ip,
            pod_cidr: format!("10.244.{x}.0/24"),
            pid: None,
            socket: None,
            kernel: kernel || x > args.nodes - args.kernel_nodes,
        });
    }
    lab.save()?;
    if lab.store.is_some() && lab.nodes.iter().any(|n| n.kernel) {
        // The kernel nodes' leases first, as their flanneld would write
        // them: the podswitch nodes lease around them and learn them.
        lease_for_kernel_nodes(lab, &underlay)?;
    }
    let ovs = lab.dataplane == Dataplane::Ovs;
    for i in 0..lab.nodes.len() {
        if ovs {
            ovs::start_node(lab, &lab.nodes[i])?;
        } else if !lab.nodes[i].kernel {
            start_daemon(lab, i)?;
            lab.save()?;
        }
    }
    kernel_nodes(lab)?;
    for i in 0..lab.nodes.len() {
        for y in 1..=args.pods_per_node {
            let pod = if lab.nodes[i].kernel || ovs {
                kernel_pod(lab, i, y)?
            } else {
                cni_pod(lab, i, y)?
            };
            lab.pods.push(pod);
            lab.save()?;
        }
    }
    if ovs {
        ovs::program_flows(lab)?;
    }
    Ok(())
}

/// The addresses of the lab's etcd members, on the underlay bridge.
fn etcd_member_ips(members: u8) -> Result<Vec<String>> {
    match members {
        1 | 3 => Ok((0..members)
            .map(|i| format!("192.168.100.{}", 254 - i))
            .collect()),
        other => bail!("--etcd-members {other}: 1 or 3"),
    }
}

/// flannel's network config for the lab's backend.
fn lab_network(backend: Backend) -> String {
    let backend = match backend {
        Backend::DirectRouting => {
            r#"{"Type": "vxlan", "VNI": 1, "DirectRouting": true}"#.to_string()
        }
        Backend::Vxlan => r#"{"Type": "vxlan", "VNI": 1}"#.to_string(),
        other => format!(r#"{{"Type": "{}"}}"#, flannel::flannel_type(other)),
    };
    format!(r#"{{"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {backend}}}"#)
}

/// Writes each kernel node's lease (its 10.244.X.0/24, its address, the
/// VTEP MAC of its flannel.1) into the lab's etcd, as flanneld would.
fn lease_for_kernel_nodes(lab: &Lab, underlay: &str) -> Result<()> {
    let options = lab_etcd_options(lab);
    let leased = podswitch_host::netlink::in_netns(&format!("/var/run/netns/{underlay}"), || {
        let store =
            podswitch_lease::etcd::Store::connect(options).map_err(std::io::Error::other)?;
        let network = store.network().map_err(std::io::Error::other)?;
        let backend = flannel::flannel_type(lab.backend);
        for node in lab.nodes.iter().filter(|n| n.kernel) {
            let attrs = flannel::LeaseAttrs::own(
                node.underlay_ip.parse().map_err(std::io::Error::other)?,
                backend,
                1,
                &derived_mac(0x0e, &node.name).to_string(),
            );
            let subnet = node.pod_cidr.parse().map_err(std::io::Error::other)?;
            store
                .acquire(&network, &attrs, Some(subnet), None)
                .map_err(std::io::Error::other)?;
        }
        Ok(())
    });
    leased.context("writing the kernel nodes' leases")
}

fn lab_etcd_options(lab: &Lab) -> podswitch_lease::etcd::EtcdOptions {
    podswitch_lease::etcd::EtcdOptions {
        endpoints: lab
            .store
            .iter()
            .flat_map(|urls| urls.split(','))
            .map(str::to_string)
            .collect(),
        prefix: flannel::DEFAULT_PREFIX.into(),
        ca_file: None,
        cert_file: None,
        key_file: None,
        timeout: Duration::from_secs(2),
    }
}

/// etcd in the underlay namespace (one member, or three), its data in the
/// lab's directory, with flannel's network config written.
fn start_etcd(lab: &Lab, underlay: &str) -> Result<()> {
    let dir = lab_dir(&lab.name);
    in_ns(underlay, &["link", "set", "lo", "up"])?;
    let urls: Vec<&str> = lab.store.iter().flat_map(|u| u.split(',')).collect();
    let ips: Vec<&str> = urls
        .iter()
        .map(|u| u.trim_start_matches("http://").trim_end_matches(":2379"))
        .collect();
    let initial: Vec<String> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| format!("lab{i}=http://{ip}:2380"))
        .collect();
    for (i, ip) in ips.iter().enumerate() {
        in_ns(
            underlay,
            &["addr", "add", &format!("{ip}/24"), "dev", "br0"],
        )?;
        let (url, peer) = (urls[i], format!("http://{ip}:2380"));
        Command::new("ip")
            .args([
                "netns",
                "exec",
                underlay,
                "etcd",
                "--name",
                &format!("lab{i}"),
            ])
            .arg("--data-dir")
            .arg(dir.join(format!("etcd{i}")))
            .args([
                "--listen-client-urls",
                url,
                "--advertise-client-urls",
                url,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &initial.join(","),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join(format!("etcd{i}.log")))?)
            .process_group(0)
            .spawn()
            .context("starting etcd (Debian's etcd-server; scripts/setup.sh installs it)")?;
    }
    let options = lab_etcd_options(lab);
    let network = lab_network(lab.backend);
    let written = podswitch_host::netlink::in_netns(&format!("/var/run/netns/{underlay}"), || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let attempt = podswitch_lease::etcd::Store::connect(options.clone())
                .and_then(|store| store.write_network(&network));
            match attempt {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(std::io::Error::other(e)),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    });
    written.with_context(|| {
        let log = fs::read_to_string(dir.join("etcd0.log")).unwrap_or_default();
        format!("etcd did not take the network config:\n{log}")
    })
}

/// podswitchd on node `i`, with every other node as a static peer, or
/// with the lab's etcd as its lease store.
fn start_daemon(lab: &mut Lab, i: usize) -> Result<()> {
    let node = lab.nodes[i].clone();
    let dir = lab_dir(&lab.name);
    let masquerade = lab
        .masquerade
        .map(|m| format!("masquerade = {m}\n"))
        .unwrap_or_default();
    let mut config = format!(
        "[node]\nname = \"{}\"\nunderlay_interface = \"ul0\"\ngateway_mode = \"{}\"\n{masquerade}",
        node.name, lab.gateway_mode
    );
    match &lab.store {
        Some(urls) => config.push_str(&format!(
            "\n[cluster]\nstore = \"etcd\"\nendpoints = [\"{}\"]\nsubnet_file = \"{}\"\n",
            urls.replace(',', "\", \""),
            dir.join(format!("{}.subnet.env", node.name)).display()
        )),
        None => config.push_str(&format!(
            "pod_cidr = \"{}\"\ncluster_cidr = \"10.244.0.0/16\"\n\n[backend]\ntype = \"{}\"\n",
            node.pod_cidr, lab.backend
        )),
    }
    let static_peers = lab
        .nodes
        .iter()
        .filter(|o| lab.store.is_none() && o.index != node.index);
    for other in static_peers {
        config.push_str(&format!(
            "\n[[peer]]\nname = \"{}\"\nunderlay_ip = \"{}\"\npod_cidr = \"{}\"\n",
            other.name, other.underlay_ip, other.pod_cidr
        ));
    }
    let mut dataplane = String::new();
    if let Some(workers) = lab.workers {
        dataplane.push_str(&format!("workers = {workers}\n"));
    }
    if lab.per_cpu {
        dataplane.push_str("per_cpu = true\n");
    }
    if let Some(class) = &lab.worker_priority {
        dataplane.push_str(&format!("worker_priority = \"{class}\"\n"));
    }
    if let Some(kind) = &lab.underlay_kind {
        dataplane.push_str(&format!("underlay_kind = \"{kind}\"\n"));
    }
    if let Some(kind) = lab.port_kind {
        dataplane.push_str(&format!("port_kind = \"{kind}\"\n"));
    }
    if !dataplane.is_empty() {
        config.push_str(&format!("\n[dataplane]\n{dataplane}"));
    }
    let config_path = dir.join(format!("{}.toml", node.name));
    fs::write(&config_path, config)?;
    let socket = dir.join(format!("{}.sock", node.name));
    let log = fs::File::create(dir.join(format!("{}.log", node.name)))?;
    let daemon = sibling("podswitchd")?;
    let child = Command::new("ip")
        .args(["netns", "exec", &node.netns])
        .arg(&daemon)
        .arg("--config")
        .arg(&config_path)
        .arg("--socket")
        .arg(&socket)
        .arg("--state-file")
        .arg(dir.join(format!("{}.ports.json", node.name)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting podswitchd")?;
    lab.nodes[i].pid = Some(child.id());
    lab.nodes[i].socket = Some(socket.display().to_string());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = socket.exists()
            && Command::new(sibling("podswitchctl")?)
                .arg("--socket")
                .arg(&socket)
                .arg("status")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if ready {
            if lab.store.is_some() {
                // The subnet the node leased, for its pods' IPAM.
                let status = run(
                    &sibling("podswitchctl")?.display().to_string(),
                    &[
                        "--socket",
                        &socket.display().to_string(),
                        "--json",
                        "status",
                    ],
                )?;
                let status: serde_json::Value = serde_json::from_str(&status)?;
                lab.nodes[i].pod_cidr = status["pod_cidr"]
                    .as_str()
                    .context("status without pod_cidr")?
                    .to_string();
            }
            return Ok(());
        }
        if Instant::now() > deadline || !alive(child.id()) {
            let log =
                fs::read_to_string(dir.join(format!("{}.log", node.name))).unwrap_or_default();
            bail!("podswitchd on {} did not start:\n{log}", node.name);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

/// The node's podswitchd, if the pid the lab recorded still runs it: a
/// daemon that exited leaves its pid free for any other process, which
/// `lab down` must not signal. Its command line names the node's socket.
fn node_daemon(node: &Node) -> Option<u32> {
    let (pid, socket) = (node.pid?, node.socket.as_deref()?);
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let runs_it = cmdline
        .split(|&b| b == 0)
        .any(|arg| arg == socket.as_bytes());
    (runs_it && alive(pid)).then_some(pid)
}

/// A pod attached the way a container runtime attaches it: the CNI
/// plugin with host-local IPAM.
fn cni_pod(lab: &Lab, i: usize, y: u8) -> Result<Pod> {
    let node = &lab.nodes[i];
    let name = format!("pod{}-{y}", node.index);
    let netns = format!("lab-{}-{name}", lab.name);
    Namespace::add(&netns)?.keep();
    let config = json!({
        "cniVersion": "1.1.0", "name": "lab", "type": "podswitch",
        "socket": node.socket, "mtu": pod_mtu(lab.backend), "gatewayMode": lab.gateway_mode,
        "ipam": {
            "type": "host-local", "dataDir": lab_dir(&lab.name).join("ipam").join(&node.name),
            "ranges": [[{ "subnet": node.pod_cidr }]], "routes": [{ "dst": "0.0.0.0/0" }]
        }
    });
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.netns])
        .arg(sibling("podswitch")?)
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", &netns)
        .env("CNI_NETNS", format!("/var/run/netns/{netns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin:/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        config.to_string().as_bytes(),
    )?;
    let out = child.wait_with_output()?;
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    if !out.status.success() {
        bail!("CNI ADD for {name}: {result}");
    }
    let ip = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .context("the CNI result has no address")?
        .to_string();
    Ok(Pod {
        name,
        node: node.name.clone(),
        netns,
        ip,
    })
}

/// A node as a kernel flannel node programs it: its pod subnet, its
/// address on the underlay, its VTEP MAC.
struct KernelPeer {
    pod_cidr: String,
    underlay_ip: String,
    vtep: String,
}

/// Every node as a kernel node's flanneld learns it: from the leases in
/// the lab's etcd (read once for all kernel nodes), or from the lab's
/// record when there is no store.
fn kernel_peers(lab: &Lab) -> Result<Vec<KernelPeer>> {
    if lab.store.is_none() {
        return Ok(lab
            .nodes
            .iter()
            .map(|o| KernelPeer {
                pod_cidr: o.pod_cidr.clone(),
                underlay_ip: o.underlay_ip.clone(),
                vtep: derived_mac(0x0e, &o.name).to_string(),
            })
            .collect());
    }
    let options = lab_etcd_options(lab);
    let underlay = format!("/var/run/netns/lab-{}-ul", lab.name);
    let leases = podswitch_host::netlink::in_netns(&underlay, || {
        podswitch_lease::etcd::Store::connect(options)
            .and_then(|store| store.leases())
            .map_err(std::io::Error::other)
    })
    .context("reading the leases")?;
    Ok(leases
        .into_iter()
        .map(|(subnet, attrs)| KernelPeer {
            pod_cidr: subnet.to_string(),
            underlay_ip: attrs.public_ip.to_string(),
            vtep: attrs.vxlan().map(|d| d.vtep_mac).unwrap_or_default(),
        })
        .collect())
}

/// flannel's kernel configuration on every kernel node (Calico's pod side
/// in proxy-arp mode).
fn kernel_nodes(lab: &Lab) -> Result<()> {
    if !lab.nodes.iter().any(|n| n.kernel) {
        return Ok(());
    }
    let everyone = kernel_peers(lab)?;
    for node in lab.nodes.iter().filter(|n| n.kernel) {
        let peers: Vec<&KernelPeer> = everyone
            .iter()
            .filter(|p| p.pod_cidr != node.pod_cidr)
            .collect();
        let ns = node.netns.as_str();
        let x = node.index;
        kernel_flannel::enable_forwarding(ns)?;
        if lab.gateway_mode == GatewayMode::ProxyArp {
            // Proxy ARP answers only for addresses the node routes out of
            // another interface; Calico's nodes reach 169.254.1.1 through
            // their default route, and these have none.
            in_ns(ns, &["route", "add", "169.254.1.1/32", "dev", "ul0"])?;
            // Calico's BIRD blackholes the node's own block: an address of
            // it that no pod has is dropped here, not routed on.
            in_ns(ns, &["route", "add", "blackhole", &node.pod_cidr])?;
        }
        if lab.gateway_mode == GatewayMode::Bridge {
            // The pods join it as they are made.
            kernel_flannel::cni_bridge(ns, &format!("10.244.{x}.1/24"), &[])?;
        }
        match lab.backend {
            Backend::Vxlan => {
                let vtep = derived_mac(0x0e, &node.name).to_string();
                let network = format!("10.244.{x}.0");
                let own = VxlanNode {
                    vtep: &vtep,
                    local_ip: &node.underlay_ip,
                    underlay: "ul0",
                    network: &network,
                    udp_checksum: None,
                };
                kernel_flannel::vxlan_device(ns, &own)?;
                for other in peers.iter() {
                    let peer = VxlanPeer {
                        subnet: &other.pod_cidr,
                        vtep: &other.vtep,
                        public_ip: &other.underlay_ip,
                    };
                    kernel_flannel::vxlan_peer(ns, &peer)?;
                }
            }
            Backend::HostGw | Backend::DirectRouting => {
                // All nodes share the underlay subnet: DirectRouting takes
                // host-gw routes for every peer.
                route_to_peers(ns, &peers, &["dev", "ul0"])?;
            }
            Backend::Ipip => {
                let probe = in_ns(ns, &["link", "add", "tunl-probe", "type", "ipip"]);
                if let Err(e) = probe {
                    bail!("this machine's kernel has no IPIP support, so the kernel dataplane cannot run the ipip backend ({e}); use --dataplane podswitch");
                }
                let _ = in_ns(ns, &["link", "del", "tunl-probe"]);
                in_ns(ns, &["link", "set", "tunl0", "up"])?;
                route_to_peers(ns, &peers, &["dev", "tunl0", "onlink"])?;
            }
            Backend::Udp => bail!("backend udp has no kernel configuration"),
        }
    }
    Ok(())
}

/// A route to each peer's pods via its underlay address, out of `via`
/// (the device, and `onlink` for a tunnel).
fn route_to_peers(ns: &str, peers: &[&KernelPeer], via: &[&str]) -> Result<()> {
    for peer in peers {
        let mut args = vec!["route", "add", &peer.pod_cidr, "via", &peer.underlay_ip];
        args.extend_from_slice(via);
        in_ns(ns, &args)?;
    }
    Ok(())
}

/// A pod on the kernel dataplane: on cni0 (bridge) or Calico-style; or
/// on Open vSwitch's br-int.
fn kernel_pod(lab: &Lab, i: usize, y: u8) -> Result<Pod> {
    let node = &lab.nodes[i];
    let x = node.index;
    let name = format!("pod{x}-{y}");
    let netns = format!("lab-{}-{name}", lab.name);
    let addr = format!("10.244.{x}.{}", u32::from(y) + 1);
    let host = pod_host_if(&name);
    Namespace::add(&netns)?.keep();
    pod_interface(&PodInterface {
        node_netns: &node.netns,
        pod_netns: &netns,
        host_if: &host,
        ip: &addr,
        mac: None,
        mtu: pod_mtu(lab.backend),
        gateway_mode: lab.gateway_mode,
        gateway: &format!("10.244.{x}.1"),
        // As flannel's bridge plugin leaves them.
        big_tcp: false,
    })?;
    if lab.dataplane == Dataplane::Ovs {
        ovs::attach_pod(lab, node, &host, &netns)?;
    } else if lab.gateway_mode == GatewayMode::Bridge {
        in_ns(&node.netns, &["link", "set", &host, "master", "cni0"])?;
    } else {
        // Calico's node side: proxy ARP for 169.254.1.1 and a /32 route
        // to the pod.
        run(
            "ip",
            &[
                "netns",
                "exec",
                &node.netns,
                "sysctl",
                "-qw",
                &format!("net.ipv4.conf.{host}.proxy_arp=1"),
            ],
        )?;
        in_ns(
            &node.netns,
            &["route", "add", &format!("{addr}/32"), "dev", &host],
        )?;
    }
    Ok(Pod {
        name,
        node: node.name.clone(),
        netns,
        ip: addr,
    })
}

/// The node-side name of a kernel or Open vSwitch lab pod's veth: pod
/// X-Y's is vethXpY.
fn pod_host_if(pod: &str) -> String {
    format!("veth{}", pod.trim_start_matches("pod").replace('-', "p"))
}

/// Holds (`held`) or releases an Open vSwitch lab's switches, so that a
/// bench measuring several labs in turn runs Open vSwitch's busy-polling
/// threads only in its own turn; nothing for other dataplanes.
pub fn hold_ovs(lab: &Lab, held: bool) -> Result<()> {
    match lab.dataplane {
        Dataplane::Ovs => ovs::hold(lab, held),
        Dataplane::Podswitch | Dataplane::Kernel => Ok(()),
    }
}

/// Removes a lab (and is quiet when there is none).
pub fn down(name: &str) -> Result<()> {
    check_name(name)?;
    if let Ok(lab) = Lab::load(name) {
        for node in &lab.nodes {
            if let Some(pid) = node_daemon(node) {
                stop(pid);
            }
        }
    }
    let prefix = format!("lab-{name}-");
    let list = ip(&["netns", "list"]).unwrap_or_default();
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if ns.starts_with(&prefix) {
            // Anything still running in it (a daemon from a lab whose
            // state was lost) goes with it.
            if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
                for pid in pids.split_whitespace().filter_map(|p| p.parse().ok()) {
                    stop(pid);
                }
            }
            ip(&["netns", "del", ns])?;
        }
    }
    let dir = lab_dir(name);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

fn stop(pid: u32) {
    // CONT after TERM: a process held with SIGSTOP (an Open vSwitch lab
    // the bench held) takes its TERM only once it runs.
    for signal in ["-TERM", "-CONT"] {
        let _ = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive(pid) {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

/// The lab as `lab status --json` prints it.
pub fn status_json(lab: &Lab) -> serde_json::Value {
    json!({
        "name": lab.name,
        "dataplane": lab.dataplane,
        "backend": lab.backend,
        "gateway_mode": lab.gateway_mode,
        "store": lab.store,
        "port_kind": lab.port_kind,
        "nodes": lab.nodes.iter().map(|n| json!({
            "name": n.name, "netns": n.netns, "underlay_ip": n.underlay_ip, "pod_cidr": n.pod_cidr,
            "daemon": n.pid.map(|_| if node_daemon(n).is_some() { "running" } else { "stopped" }),
            "pid": n.pid, "socket": n.socket,
            "dataplane": if n.kernel { Dataplane::Kernel } else { lab.dataplane },
        })).collect::<Vec<_>>(),
        "pods": lab.pods.iter().map(|p| json!({
            "name": p.name, "node": p.node, "ip": p.ip, "netns": p.netns,
        })).collect::<Vec<_>>(),
    })
}
