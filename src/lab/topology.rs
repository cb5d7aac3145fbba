//! The building blocks of every simulated cluster on this machine, the
//! lab's, the bench's and the integration tests' alike: network
//! namespaces (with a guard that deletes its namespace on drop), the
//! underlay bridge that joins nodes (192.168.100.0/24), a node's `ul0`
//! on it, and a pod's interface as a CNI plugin leaves it.

use anyhow::{Context, Result};
use podswitch_engine::config::{Backend, GatewayMode};
use podswitch_host::netlink::{in_netns, Netlink, POD_GSO_IPV4_MAX_SIZE};

use crate::run;

pub(super) fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

pub(super) fn in_ns(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    ip(&full)
}

/// A network namespace, its loopback up, deleted when the guard drops
/// (a failed set-up included) unless [`Namespace::keep`] hands it over.
#[derive(Debug)]
pub struct Namespace {
    name: String,
    kept: bool,
}

impl Namespace {
    /// Adds the namespace `name` (as `ip netns add`), loopback up.
    pub fn add(name: &str) -> Result<Namespace> {
        ip(&["netns", "add", name])?;
        let namespace = Namespace {
            name: name.to_string(),
            kept: false,
        };
        in_ns(name, &["link", "set", "lo", "up"])?;
        Ok(namespace)
    }

    /// Its name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Keeps the namespace past the guard (a lab's, which `lab down`
    /// removes later); returns its name.
    pub fn keep(mut self) -> String {
        self.kept = true;
        std::mem::take(&mut self.name)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if !self.kept {
            let _ = ip(&["netns", "del", &self.name]);
        }
    }
}

/// A veth pair: `a` in namespace `a_netns`, its peer `b` in `b_netns`,
/// both down.
pub fn veth(a_netns: &str, a: &str, b_netns: &str, b: &str) -> Result<()> {
    ip(&[
        "link", "add", a, "netns", a_netns, "type", "veth", "peer", "name", b, "netns", b_netns,
    ])
    .map(drop)
}

/// Makes `netns` the underlay: a bridge `br0` that every node's `ul0`
/// joins, standing for the switch between a cluster's machines.
pub fn underlay_bridge(netns: &str) -> Result<()> {
    in_ns(netns, &["link", "add", "br0", "type", "bridge"])?;
    in_ns(netns, &["link", "set", "br0", "up"])?;
    Ok(())
}

/// Joins node `index`'s namespace to the underlay: `ul0` in the node with
/// 192.168.100.`index`/24, its peer `n<index>` a port of `br0`. Returns
/// the node's underlay address.
pub fn join_underlay(node_netns: &str, underlay_netns: &str, index: u8) -> Result<String> {
    let port = format!("n{index}");
    veth(node_netns, "ul0", underlay_netns, &port)
        .with_context(|| format!("joining {node_netns} to the underlay"))?;
    in_ns(
        underlay_netns,
        &["link", "set", &port, "master", "br0", "up"],
    )?;
    let underlay_ip = format!("192.168.100.{index}");
    in_ns(
        node_netns,
        &["addr", "add", &format!("{underlay_ip}/24"), "dev", "ul0"],
    )?;
    in_ns(node_netns, &["link", "set", "ul0", "up"])?;
    Ok(underlay_ip)
}

/// The pods' MTU for a backend over a 1500-byte underlay: what flannel
/// (and Calico, for IPIP) give pods, the tunnel's overhead taken off.
pub fn pod_mtu(backend: Backend) -> u32 {
    u32::from(podswitch_engine::config::pod_mtu(backend, 1500))
}

/// A pod's interface, addressed as a CNI plugin leaves it: a veth from
/// the node's namespace (`host_if`) to the pod's (`eth0`), the MTU on the
/// pod's end only (a CNI plugin sets both ends; left at 1500, the node's
/// end lets a pod that raises its own MTU reach the gateway, which must
/// then answer "fragmentation needed"), addressed for the gateway mode
/// (DESIGN.md): in bridge mode (flannel) a /24 and a default
/// route via the node's gateway; in proxy-arp mode (Calico) a /32 and a
/// default route via 169.254.1.1, which the node's side answers for.
#[derive(Debug, Clone, Copy)]
pub struct PodInterface<'a> {
    /// The node's namespace.
    pub node_netns: &'a str,
    /// The pod's namespace.
    pub pod_netns: &'a str,
    /// The veth's name on the node.
    pub host_if: &'a str,
    /// The pod's address.
    pub ip: &'a str,
    /// The pod's MAC (none: the kernel's random one).
    pub mac: Option<&'a str>,
    /// Its MTU ([`pod_mtu`]).
    pub mtu: u32,
    /// How the pod reaches its gateway.
    pub gateway_mode: GatewayMode,
    /// The pod network's gateway (bridge mode).
    pub gateway: &'a str,
    /// Lets both ends carry BIG TCP super-frames, as podswitch's CNI
    /// plugin does (`POD_GSO_IPV4_MAX_SIZE`); flannel's bridge plugin
    /// leaves the kernel's 64 KiB.
    pub big_tcp: bool,
}

/// Makes the pod's interface [`PodInterface`] describes. The node's side
/// is left up and unattached: the dataplane takes it from there.
pub fn pod_interface(pod: &PodInterface) -> Result<()> {
    veth(pod.node_netns, pod.host_if, pod.pod_netns, "eth0")?;
    if pod.big_tcp {
        // iproute2 6.1 has no gso_ipv4_max_size: rtnetlink directly.
        for (netns, name) in [(pod.node_netns, pod.host_if), (pod.pod_netns, "eth0")] {
            in_netns(&format!("/var/run/netns/{netns}"), || {
                let mut nl = Netlink::open()?;
                let link = nl
                    .link(name)?
                    .ok_or_else(|| std::io::Error::other(format!("{name} vanished")))?;
                nl.set_gso_ipv4_max_size(link.index, POD_GSO_IPV4_MAX_SIZE)
            })
            .with_context(|| format!("BIG TCP size on {name} in {netns}"))?;
        }
    }
    let mtu = pod.mtu.to_string();
    let mut eth0 = vec!["link", "set", "eth0"];
    if let Some(mac) = pod.mac {
        eth0.extend(["address", mac]);
    }
    eth0.extend(["mtu", &mtu, "up"]);
    in_ns(pod.pod_netns, &eth0)?;
    in_ns(pod.node_netns, &["link", "set", pod.host_if, "up"])?;
    if pod.gateway_mode == GatewayMode::Bridge {
        in_ns(
            pod.pod_netns,
            &["addr", "add", &format!("{}/24", pod.ip), "dev", "eth0"],
        )?;
        in_ns(
            pod.pod_netns,
            &["route", "add", "default", "via", pod.gateway],
        )?;
    } else {
        in_ns(
            pod.pod_netns,
            &["addr", "add", &format!("{}/32", pod.ip), "dev", "eth0"],
        )?;
        in_ns(
            pod.pod_netns,
            &[
                "route",
                "add",
                "169.254.1.1",
                "dev",
                "eth0",
                "scope",
                "link",
            ],
        )?;
        in_ns(
            pod.pod_netns,
            &["route", "add", "default", "via", "169.254.1.1"],
        )?;
    }
    Ok(())
}
