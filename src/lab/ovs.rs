//! Open vSwitch's userspace datapath on a lab node: the second reference
//! podswitch is measured against (the kernel's being the first), set up
//! as Open vSwitch's own AF_XDP guide sets up containers on veths
//! (ovs Documentation/intro/install/afxdp.rst) and as its userspace
//! tunnelling guide carries VXLAN (Documentation/howto/userspace-tunneling.rst).
//!
//! Each node runs its own `ovsdb-server` and `ovs-vswitchd` in its
//! namespace, their database, sockets and logs in the lab's directory:
//! - `br-int` (`datapath_type=netdev`, `fail-mode=secure`) holds the
//!   pods' veths as `afxdp` ports in native XDP mode, and `vxlan0`, a
//!   VXLAN port with VNI 1 on port 8472 whose remote is set per flow
//!   (flannel's vxlan backend on the wire);
//! - `br-phy` holds the node's underlay `ul0`, an `afxdp` port too, and
//!   takes over its address: Open vSwitch's userspace tunnels leave
//!   through the bridge that holds the route to the remote end;
//! - one PMD thread per node (`pmd-cpu-mask`), node X's on CPU X-1
//!   (modulo the CPUs), so that two nodes' threads do not share a CPU;
//!   a PMD thread polls its ports without sleeping, as Open vSwitch's
//!   userspace datapath always does;
//! - OpenFlow rules do what flannel's node does for its pods: answer ARP
//!   for the gateway (10.244.X.1, as OVN's ARP responder does), route
//!   to a local pod or into the tunnel with the TTL decremented, bridge
//!   between pods of the node and flood their broadcasts.
//!
//! Open vSwitch's AF_XDP ports do not carry frames whose checksum is left
//! to the device: its guide lists TCP over veths as not working, and the
//! work-around it points to is to turn the pods' transmit checksum
//! offload (and with it TSO) off, which [`attach_pod`] does. The kernel
//! and podswitch labs keep the defaults. Not offered: the other backends,
//! proxy-ARP mode, ICMP errors (a rule's `dec_ttl` drops a packet whose
//! TTL runs out, where a node's kernel answers Time Exceeded).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use podswitch_engine::config::derived_mac;

use super::{in_ns, lab_dir, pod_host_if, Lab, Node};

/// The OpenFlow port number of each node's VXLAN port.
const VXLAN_OFPORT: u32 = 100;

/// Where Debian's openvswitch-common keeps the database schema.
const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// Node `node`'s Open vSwitch directory: its database, sockets, pid files
/// and logs.
fn node_dir(lab: &str, node: &Node) -> PathBuf {
    lab_dir(lab).join(format!("ovs-{}", node.name))
}

/// Runs an Open vSwitch tool in `ns`, pointed at the node's own
/// `ovsdb-server` and `ovs-vswitchd` by the directories Open vSwitch
/// reads from its environment.
fn ovs(dir: &Path, ns: &str, program: &str, args: &[&str]) -> Result<String> {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", ns, program])
        .args(args)
        .env("OVS_RUNDIR", dir)
        .env("OVS_DBDIR", dir)
        .env("OVS_LOGDIR", dir);
    crate::run_command(command, &format!("`{program} {}` in {ns}", args.join(" ")))
}

/// Fails with what to install when Open vSwitch is missing.
pub(super) fn check_installed() -> Result<()> {
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| d.join("ovs-vswitchd").is_file())
    });
    if !on_path || !Path::new(SCHEMA).is_file() {
        bail!("--dataplane ovs needs Open vSwitch (ovs-vswitchd on PATH and {SCHEMA}): run scripts/setup.sh, which installs Debian's openvswitch-switch");
    }
    Ok(())
}

/// A port of `bridge` read through AF_XDP in native mode.
fn afxdp_port<'a>(bridge: &'a str, interface: &'a str) -> [&'a str; 9] {
    [
        "add-port",
        bridge,
        interface,
        "--",
        "set",
        "interface",
        interface,
        "type=afxdp",
        "options:xdp-mode=native",
    ]
}

/// Starts node `node`'s Open vSwitch and builds its two bridges.
pub(super) fn start_node(lab: &Lab, node: &Node) -> Result<()> {
    let dir = node_dir(&lab.name, node);
    std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    let ns = node.netns.as_str();
    let db = dir.join("conf.db");
    crate::run("ovsdb-tool", &["create", &db.to_string_lossy(), SCHEMA])?;
    let remote = format!("--remote=punix:{}", dir.join("db.sock").display());
    let detached = ["--pidfile", "--detach", "--log-file", "--no-chdir"];
    let mut server = vec![db.to_str().context("a UTF-8 lab path")?, remote.as_str()];
    server.extend_from_slice(&detached);
    ovs(&dir, ns, "ovsdb-server", &server)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mask = format!(
        "other_config:pmd-cpu-mask=0x{:x}",
        1u64 << ((usize::from(node.index) - 1) % cpus.min(64))
    );
    ovs(
        &dir,
        ns,
        "ovs-vsctl",
        &["--no-wait", "init", "--", "set", "Open_vSwitch", ".", &mask],
    )?;
    let mut switch = vec!["--disable-system"];
    switch.extend_from_slice(&detached);
    ovs(&dir, ns, "ovs-vswitchd", &switch)?;

    // The underlay: ul0 into br-phy, its address onto br-phy.
    let hwaddr = format!("other_config:hwaddr={}", interface_mac(ns, "ul0")?);
    ovs(
        &dir,
        ns,
        "ovs-vsctl",
        &[
            "add-br",
            "br-phy",
            "--",
            "set",
            "bridge",
            "br-phy",
            "datapath_type=netdev",
            &hwaddr,
        ],
    )?;
    ovs(&dir, ns, "ovs-vsctl", &afxdp_port("br-phy", "ul0"))?;
    in_ns(ns, &["addr", "flush", "dev", "ul0"])?;
    in_ns(
        ns,
        &[
            "addr",
            "add",
            &format!("{}/24", node.underlay_ip),
            "dev",
            "br-phy",
        ],
    )?;
    in_ns(ns, &["link", "set", "br-phy", "up"])?;

    // The pods' bridge and its tunnel port.
    let ofport = format!("ofport_request={VXLAN_OFPORT}");
    ovs(
        &dir,
        ns,
        "ovs-vsctl",
        &[
            "add-br",
            "br-int",
            "--",
            "set",
            "bridge",
            "br-int",
            "datapath_type=netdev",
            "fail-mode=secure",
            "--",
            "add-port",
            "br-int",
            "vxlan0",
            "--",
            "set",
            "interface",
            "vxlan0",
            "type=vxlan",
            "options:remote_ip=flow",
            "options:key=1",
            "options:dst_port=8472",
            &ofport,
        ],
    )?;
    Ok(())
}

/// Attaches a pod's veth (`host_if`, in the node's namespace) to br-int,
/// its own end's transmit offloads off as Open vSwitch's AF_XDP ports
/// need (see the module's docs).
pub(super) fn attach_pod(lab: &Lab, node: &Node, host_if: &str, pod_netns: &str) -> Result<()> {
    crate::run(
        "ip",
        &[
            "netns", "exec", pod_netns, "ethtool", "-K", "eth0", "tx", "off",
        ],
    )?;
    ovs(
        &node_dir(&lab.name, node),
        &node.netns,
        "ovs-vsctl",
        &afxdp_port("br-int", host_if),
    )?;
    Ok(())
}

/// The MAC address of `interface` in namespace `ns`, as sysfs prints it.
fn interface_mac(ns: &str, interface: &str) -> Result<String> {
    let path = format!("/sys/class/net/{interface}/address");
    let mac = crate::run("ip", &["netns", "exec", ns, "cat", &path])?;
    Ok(mac.trim().to_string())
}

/// The gateway's MAC on node `node`'s pod link (OVS answers ARP for it).
fn gateway_mac(node: &Node) -> String {
    derived_mac(0x0b, &node.name).to_string()
}

/// The VTEP MAC of node `node` (as the kernel lab's flannel.1 has it):
/// the inner source and destination of what crosses the tunnel.
fn vtep_mac(node: &Node) -> String {
    derived_mac(0x0e, &node.name).to_string()
}

/// The MAC address as OpenFlow's `load` takes it: 0x and 12 hex digits.
fn mac_as_number(mac: &str) -> String {
    format!("0x{}", mac.replace(':', ""))
}

/// Installs every node's OpenFlow rules, from the lab's pods and nodes:
/// called once every pod is attached.
pub(super) fn program_flows(lab: &Lab) -> Result<()> {
    for node in &lab.nodes {
        let dir = node_dir(&lab.name, node);
        let ns = node.netns.as_str();
        let x = node.index;
        let gateway = format!("10.244.{x}.1");
        let gateway_hex = format!("0x0af4{x:02x}01");
        let gw_mac = gateway_mac(node);
        let vtep = vtep_mac(node);
        let mut flows = vec![format!(
            // OVN's ARP responder: the request turned into the reply, sent
            // back where it came from.
            "priority=100,arp,arp_op=1,arp_tpa={gateway} actions=move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],mod_dl_src:{gw_mac},load:0x2->NXM_OF_ARP_OP[],move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],load:{}->NXM_NX_ARP_SHA[],move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],load:{gateway_hex}->NXM_OF_ARP_SPA[],IN_PORT",
            mac_as_number(&gw_mac)
        )];
        let mut pod_ports = Vec::new();
        for pod in lab.pods.iter().filter(|p| p.node == node.name) {
            let host_if = pod_host_if(&pod.name);
            let port = ovs(
                &dir,
                ns,
                "ovs-vsctl",
                &["get", "interface", &host_if, "ofport"],
            )?;
            let port = port.trim().to_string();
            let mac = interface_mac(&pod.netns, "eth0")?;
            let ip = &pod.ip;
            // Routed to the pod: from another pod through the gateway, and
            // out of the tunnel (flannel's node routes from flannel.1 to
            // cni0, a hop of its own).
            flows.push(format!("priority=90,ip,dl_dst={gw_mac},nw_dst={ip} actions=mod_dl_src:{gw_mac},mod_dl_dst:{mac},dec_ttl,output:{port}"));
            flows.push(format!("priority=90,in_port={VXLAN_OFPORT},ip,nw_dst={ip} actions=mod_dl_src:{gw_mac},mod_dl_dst:{mac},dec_ttl,output:{port}"));
            // Bridged on the pods' link.
            flows.push(format!("priority=80,dl_dst={mac} actions=output:{port}"));
            pod_ports.push(format!("output:{port}"));
        }
        for peer in lab.nodes.iter().filter(|n| n.index != x) {
            flows.push(format!(
                "priority=70,ip,dl_dst={gw_mac},nw_dst={} actions=mod_dl_src:{vtep},mod_dl_dst:{},dec_ttl,set_field:{}->tun_dst,output:{VXLAN_OFPORT}",
                peer.pod_cidr,
                vtep_mac(peer),
                peer.underlay_ip
            ));
        }
        if !pod_ports.is_empty() {
            // A broadcast goes to every pod but the sender (OpenFlow
            // leaves out the input port).
            flows.push(format!(
                "priority=10,dl_dst=ff:ff:ff:ff:ff:ff actions={}",
                pod_ports.join(",")
            ));
        }
        let file = dir.join("flows.txt");
        std::fs::write(&file, flows.join("\n") + "\n")
            .with_context(|| format!("{}", file.display()))?;
        ovs(
            &dir,
            ns,
            "ovs-ofctl",
            &["replace-flows", "br-int", &file.to_string_lossy()],
        )?;
    }
    // Open vSwitch learns a tunnel end's MAC from the ARP replies that
    // cross br-phy, and drops what it would send there before it has:
    // the nodes ping each other once, so that a lab's first pod packet
    // across nodes is not lost.
    for node in &lab.nodes {
        for peer in lab.nodes.iter().filter(|n| n.index != node.index) {
            crate::run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &node.netns,
                    "ping",
                    "-c",
                    "1",
                    "-W",
                    "2",
                    &peer.underlay_ip,
                ],
            )
            .with_context(|| format!("{} reaching {} over br-phy", node.name, peer.name))?;
        }
    }
    Ok(())
}

/// Stops (SIGSTOP) or continues (SIGCONT) every node's `ovs-vswitchd`:
/// its PMD thread polls without sleeping, so a lab of Open vSwitch that
/// is built but not being measured would take a CPU from whatever is.
pub(super) fn hold(lab: &Lab, held: bool) -> Result<()> {
    let signal = if held { "-STOP" } else { "-CONT" };
    for node in &lab.nodes {
        let pids = crate::run("ip", &["netns", "pids", &node.netns])?;
        for pid in pids.split_whitespace() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "ovs-vswitchd" {
                crate::run("kill", &[signal, pid])?;
            }
        }
    }
    Ok(())
}
