//! The kernel flannel node of `podswitch::kernel_flannel` (what flanneld's
//! vxlan backend makes a node's kernel do), for tests that put one beside
//! podswitch nodes: pods on `cni0`, `flannel.1`, and per other node's lease
//! the ARP, FDB and route entries flanneld adds.

use podswitch::kernel_flannel::{self, VxlanNode, VxlanPeer};

use super::Netns;

/// Makes `ns` a kernel flannel node for the /24 `net`.0 (`net` like
/// "10.244.2"), its VTEP `vtep` on `local_ip`, with `pod_ifs` (the host
/// ends of its pods' veths) on `cni0`.
pub fn kernel_flannel_node(ns: &Netns, net: &str, vtep: &str, local_ip: &str, pod_ifs: &[&str]) {
    kernel_flannel::enable_forwarding(&ns.name).unwrap();
    kernel_flannel::cni_bridge(&ns.name, &format!("{net}.1/24"), pod_ifs).unwrap();
    let network = format!("{net}.0");
    let node = VxlanNode {
        vtep,
        local_ip,
        underlay: "ul0",
        network: &network,
        udp_checksum: None,
    };
    kernel_flannel::vxlan_device(&ns.name, &node).unwrap();
}

/// What flanneld adds on a kernel node for another node's lease of the
/// /24 `net`.0 with VTEP `vtep` at `public_ip`.
pub fn kernel_flannel_peer(ns: &Netns, net: &str, vtep: &str, public_ip: &str) {
    let subnet = format!("{net}.0/24");
    let peer = VxlanPeer {
        subnet: &subnet,
        vtep,
        public_ip,
    };
    kernel_flannel::vxlan_peer(&ns.name, &peer).unwrap();
}
