//! What flanneld's backends make a node's kernel do (flannel-io/flannel,
//! `pkg/backend/vxlan` and `pkg/ip`), as `ip` and `bridge` commands in a
//! network namespace: the reference dataplane that labs, the bench and
//! the interop tests put beside podswitch (DESIGN.md, "Reference
//! behaviour"). Written once here, so that each of them runs the same
//! kernel node.
//!
//! - [`cni_bridge`]: the pods' bridge `cni0` with the gateway address.
//! - [`vxlan_device`]: `flannel.1`, VNI 1 on port 8472 with `nolearning`,
//!   holding the subnet's network address as a /32 (`ensureLink`,
//!   `configureIPv4`).
//! - [`vxlan_peer`]: per other node's lease, the three entries flanneld
//!   adds (`handleSubnetEvents`): a permanent ARP entry for the subnet's
//!   network address, an FDB entry for its VTEP MAC, and an onlink route.

use anyhow::Result;

/// The vxlan device flanneld creates.
pub const VXLAN_DEVICE: &str = "flannel.1";

/// Runs `program` with `args` in network namespace `ns` (`-n NS`, which
/// `ip` and `bridge` both take), failing with its stderr.
fn in_netns(program: &str, ns: &str, args: &[&str]) -> Result<()> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    crate::run(program, &full).map(drop)
}

/// IPv4 forwarding on in `ns`, as flanneld requires of its node.
pub fn enable_forwarding(ns: &str) -> Result<()> {
    crate::run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ],
    )
    .map(drop)
}

/// The pods' bridge `cni0` in `ns`, with `gateway` (like "10.244.1.1/24")
/// and `pod_ifs` (the host ends of the pods' veths) on it.
pub fn cni_bridge(ns: &str, gateway: &str, pod_ifs: &[&str]) -> Result<()> {
    in_netns("ip", ns, &["link", "add", "cni0", "type", "bridge"])?;
    in_netns("ip", ns, &["addr", "add", gateway, "dev", "cni0"])?;
    in_netns("ip", ns, &["link", "set", "cni0", "up"])?;
    for pod_if in pod_ifs {
        in_netns("ip", ns, &["link", "set", pod_if, "master", "cni0"])?;
    }
    Ok(())
}

/// A node's own side of flannel's vxlan backend.
#[derive(Debug, Clone, Copy)]
pub struct VxlanNode<'a> {
    /// The VTEP MAC flannel publishes in the node's lease.
    pub vtep: &'a str,
    /// The node's address on the underlay.
    pub local_ip: &'a str,
    /// The underlay interface.
    pub underlay: &'a str,
    /// The node's subnet's network address (like "10.244.1.0").
    pub network: &'a str,
    /// `Some(true)`: outer UDP checksums on (`udpcsum`), `Some(false)`: off;
    /// `None`: the kernel's default, as flanneld leaves it.
    pub udp_checksum: Option<bool>,
}

/// `flannel.1` in `ns`, as flanneld makes it for `node`: MTU 1450 (1500
/// less VXLAN's 50 bytes) and the subnet's network address as a /32.
pub fn vxlan_device(ns: &str, node: &VxlanNode) -> Result<()> {
    let mut add = vec![
        "link",
        "add",
        VXLAN_DEVICE,
        "address",
        node.vtep,
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        node.local_ip,
        "dev",
        node.underlay,
        "dstport",
        "8472",
        "nolearning",
    ];
    match node.udp_checksum {
        Some(true) => add.push("udpcsum"),
        Some(false) => add.push("noudpcsum"),
        None => {}
    }
    in_netns("ip", ns, &add)?;
    in_netns(
        "ip",
        ns,
        &["link", "set", VXLAN_DEVICE, "mtu", "1450", "up"],
    )?;
    in_netns(
        "ip",
        ns,
        &[
            "addr",
            "add",
            &format!("{}/32", node.network),
            "dev",
            VXLAN_DEVICE,
        ],
    )
}

/// Another node's lease as flanneld programs it on a vxlan node.
#[derive(Debug, Clone, Copy)]
pub struct VxlanPeer<'a> {
    /// Its pod subnet (like "10.244.2.0/24").
    pub subnet: &'a str,
    /// Its VTEP MAC.
    pub vtep: &'a str,
    /// Its address on the underlay (the lease's `PublicIP`).
    pub public_ip: &'a str,
}

/// The three entries flanneld adds in `ns` for `peer`: the subnet's
/// network address resolves permanently to the peer's VTEP MAC, that MAC
/// is reached at the peer's public address (an FDB entry on the device
/// itself), and the subnet is routed onlink through that network address.
pub fn vxlan_peer(ns: &str, peer: &VxlanPeer) -> Result<()> {
    let network = peer
        .subnet
        .split_once('/')
        .map_or(peer.subnet, |(network, _)| network);
    in_netns(
        "ip",
        ns,
        &[
            "neigh",
            "replace",
            network,
            "lladdr",
            peer.vtep,
            "dev",
            VXLAN_DEVICE,
            "nud",
            "permanent",
        ],
    )?;
    in_netns(
        "bridge",
        ns,
        &[
            "fdb",
            "replace",
            peer.vtep,
            "dev",
            VXLAN_DEVICE,
            "dst",
            peer.public_ip,
            "self",
            "permanent",
        ],
    )?;
    in_netns(
        "ip",
        ns,
        &[
            "route",
            "replace",
            peer.subnet,
            "via",
            network,
            "dev",
            VXLAN_DEVICE,
            "onlink",
        ],
    )
}
