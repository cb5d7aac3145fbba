//! What flanneld's vxlan backend makes a node's kernel do
//! (pkg/backend/vxlan in flannel-io/flannel), for tests that put a kernel
//! flannel node beside podswitch nodes: pods on the `cni0` bridge,
//! `flannel.1` (VNI 1, port 8472, nolearning) holding the subnet's network
//! address, and per other node's lease the three entries flanneld adds
//! (`handleSubnetEvents`): a permanent ARP entry for the subnet's network
//! address, an FDB entry for its VTEP MAC, and an onlink route.

use super::{run, Netns};

/// Makes `ns` a kernel flannel node for the /24 `net`.0 (`net` like
/// "10.244.2"), its VTEP `vtep` on `local_ip`, with `pod_ifs` (the host
/// ends of its pods' veths) on `cni0`.
pub fn kernel_flannel_node(ns: &Netns, net: &str, vtep: &str, local_ip: &str, pod_ifs: &[&str]) {
    ns.ip(&["link", "add", "cni0", "type", "bridge"]);
    ns.ip(&["addr", "add", &format!("{net}.1/24"), "dev", "cni0"]);
    ns.ip(&["link", "set", "cni0", "up"]);
    for pod_if in pod_ifs {
        ns.ip(&["link", "set", pod_if, "master", "cni0"]);
    }
    ns.ip(&[
        "link",
        "add",
        "flannel.1",
        "address",
        vtep,
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        local_ip,
        "dev",
        "ul0",
        "dstport",
        "8472",
        "nolearning",
    ]);
    ns.ip(&["link", "set", "flannel.1", "mtu", "1450", "up"]);
    ns.ip(&["addr", "add", &format!("{net}.0/32"), "dev", "flannel.1"]);
    ns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
}

/// What flanneld adds on a kernel node for another node's lease of the
/// /24 `net`.0 with VTEP `vtep` at `public_ip`.
pub fn kernel_flannel_peer(ns: &Netns, net: &str, vtep: &str, public_ip: &str) {
    let gateway = format!("{net}.0");
    ns.ip(&[
        "neigh",
        "add",
        &gateway,
        "lladdr",
        vtep,
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ]);
    run(
        "ip",
        &[
            "netns",
            "exec",
            &ns.name,
            "bridge",
            "fdb",
            "add",
            vtep,
            "dev",
            "flannel.1",
            "dst",
            public_ip,
        ],
    );
    ns.ip(&[
        "route",
        "add",
        &format!("{net}.0/24"),
        "via",
        &gateway,
        "dev",
        "flannel.1",
        "onlink",
    ]);
}
