//! podswitchd beside the kernel's own flannel dataplane, and the tunnel
//! MTU (needs root; CI has it).
//!
//! Interop: node 1 runs podswitchd with VXLAN; node 2 runs exactly what
//! flannel writes into a node's kernel: pods on the `cni0` bridge (gateway
//! 10.244.2.1), `flannel.1` as a vxlan device (VNI 1, port 8472,
//! nolearning) with address 10.244.2.0/32, the onlink route to node 1's
//! subnet via 10.244.1.0, the ARP entry for 10.244.1.0 (node 1's VTEP
//! MAC) and the FDB entry sending that MAC to node 1's underlay address.
//! Pods on both nodes must reach each other both ways, TCP included.

mod common;

use common::cluster::{port_kind, Cluster};
use common::flannel::{kernel_flannel_node, kernel_flannel_peer};
use common::require;
use common::traffic::{
    kernel_counter, path_mtu_is_told, ping, tcp_transfer, udp_datagrams, udp_gso_datagrams,
};

const NODE1_VTEP: &str = "02:0e:00:00:01:01";
/// flannel.1's MAC on node 2, as flannel would publish it in its lease.
const NODE2_VTEP: &str = "42:88:6a:88:a9:3f";

#[test]
fn kernel_flannel_node_and_podswitch_node_reach_each_other() {
    require(&[
        "ip",
        "bridge",
        "ping",
        "nstat",
        "/usr/bin/python3",
        "sysctl",
    ]);
    // podswitchd receiving through its sockets, then through AF_XDP
    // (where the kernel's frames reach it as they are on the wire, inner
    // checksums left partial included).
    for underlay_kind in [None, Some("af-xdp")] {
        interop(underlay_kind);
    }
}

fn interop(underlay_kind: Option<&str>) {
    let mut cluster = Cluster::new("vxlan", "bridge", 2);
    cluster.underlay_kind = underlay_kind.map(str::to_string);
    cluster.vtep_macs = vec![Some(NODE1_VTEP.into()), Some(NODE2_VTEP.into())];
    let kernel = &cluster.nodes[1].ns;
    let kernel_pods: Vec<&str> = cluster
        .pods
        .iter()
        .filter(|p| p.node == 1)
        .map(|p| p.host_if.as_str())
        .collect();
    kernel_flannel_node(
        kernel,
        "10.244.2",
        NODE2_VTEP,
        "192.168.100.2",
        &kernel_pods,
    );
    kernel_flannel_peer(kernel, "10.244.1", NODE1_VTEP, "192.168.100.1");
    // Every interface of both nodes keeps its default offloads. Over a
    // veth underlay the kernel node sends VXLAN whose inner TCP checksum
    // is still partial, and whole GSO datagrams of up to 64 KiB (a NIC, or
    // the kernel for a NIC without tunnel offloads, would have finished
    // and cut them); a UDP socket says neither, and podswitch must
    // recognise both (engine/src/offload.rs, recognise_offloads).
    cluster.start(0, &[]);
    cluster.attach_pods(0);
    if let Some(kind) = underlay_kind {
        let ports = cluster.nodes[0].ctl_json(&["port", "list"]);
        assert_eq!(
            port_kind(&ports, "ul0"),
            Some(serde_json::json!(kind)),
            "{ports}"
        );
    }

    let (ours, theirs): (Vec<_>, Vec<_>) = cluster.pods.iter().partition(|p| p.node == 0);
    for a in &ours {
        for b in &theirs {
            assert!(
                ping(&a.ns, &b.ip, 3),
                "podswitch pod {} -> kernel pod {}\n{}\n{}",
                a.ip,
                b.ip,
                cluster.nodes[0].ctl_json(&["stats"]),
                cluster.logs()
            );
            assert!(
                ping(&b.ns, &a.ip, 3),
                "kernel pod {} -> podswitch pod {}\n{}",
                b.ip,
                a.ip,
                cluster.logs()
            );
        }
    }
    let (a, b) = (ours[0], theirs[0]);
    tcp_transfer(&a.ns, &b.ns, &b.ip, 10 << 20)
        .unwrap_or_else(|e| panic!("TCP podswitch -> kernel: {e}\n{}", cluster.logs()));
    tcp_transfer(&b.ns, &a.ns, &a.ip, 10 << 20)
        .unwrap_or_else(|e| panic!("TCP kernel -> podswitch: {e}\n{}", cluster.logs()));
    for (from, to) in [(a, b), (b, a)] {
        let got = udp_datagrams(&from.ns, &to.ns, &to.ip, 20, 1000);
        assert_eq!(
            got,
            20,
            "UDP {} -> {}\n{}\n{}",
            from.ip,
            to.ip,
            cluster.nodes[0].ctl_json(&["stats"]),
            cluster.logs()
        );
    }
    // A pod's UDP_SEGMENT sends (what QUIC stacks write): over this veth
    // underlay the kernel node's flannel.1 sends each as one VXLAN
    // datagram around the whole inner super-datagram, which podswitch's
    // UDP_GRO socket reads with the inner segment size. Each datagram
    // must reach the pod as the sender cut it, both ways.
    for (from, to) in [(b, a), (a, b)] {
        let got = udp_gso_datagrams(&from.ns, &to.ns, &to.ip, 5, 10, 1000);
        assert_eq!(
            got,
            50,
            "UDP_SEGMENT {} -> {}\n{}\n{}",
            from.ip,
            to.ip,
            cluster.nodes[0].ctl_json(&["stats"]),
            cluster.logs()
        );
    }
    // A burst podswitch sends in batches (one UDP_SEGMENT write each)
    // reaches the kernel's pod as it left the podswitch pod: over this
    // veth underlay a batch crosses whole, and flannel.1's socket gets its
    // datagrams one by one.
    let to = cluster.pods.iter().position(|p| p.node == 1).unwrap();
    let from = cluster.pods.iter().position(|p| p.node == 0).unwrap();
    cluster.burst_crosses_in_batches(from, to, "podswitch -> kernel flannel.1");
    // No pod saw a bad checksum: nothing reached it with one.
    for pod in [a, b] {
        let errors = tcp_checksum_errors(&pod.ns);
        assert_eq!(errors, 0, "TcpInCsumErrors in pod {}", pod.ip);
        let errors = kernel_counter(&pod.ns, "UdpInCsumErrors");
        assert_eq!(errors, 0, "UdpInCsumErrors in pod {}", pod.ip);
    }
    // The kernel node's GSO datagrams crossed podswitch as super-frames.
    let stats = cluster.nodes[0].ctl_json(&["stats"]);
    let underlay = stats["ports"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["port"] == "ul0"))
        .unwrap_or_else(|| panic!("no underlay counters: {stats}"));
    assert!(
        underlay["super_frames_in"].as_u64() > Some(0),
        "the kernel node's GSO datagrams were not recognised: {stats}"
    );
    // The kernel node's own stack reaches podswitch's pods over flannel.1.
    assert!(ping(&cluster.nodes[1].ns, &a.ip, 2));
}

/// The pod's TcpInCsumErrors counter (nstat, since the namespace began).
fn tcp_checksum_errors(ns: &common::Netns) -> u64 {
    let out = ns.exec("nstat", &["-asz", "TcpInCsumErrors"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some("TcpInCsumErrors")).then(|| f.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("nstat: {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn vxlan_mtu_is_1450_and_too_big_gets_fragmentation_needed() {
    require(&["ip", "ping", "/usr/bin/python3"]);
    let mut cluster = Cluster::new("vxlan", "bridge", 1);
    cluster.start_all();
    let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
    // podswitch is the one to refuse the oversized packet, and says so.
    path_mtu_is_told(&cluster, 1450, "podswitch vxlan");
    let stats = cluster.nodes[0].ctl_json(&["stats"]);
    assert!(
        stats["drops"]["fragmentation_needed"].as_u64() >= Some(1),
        "{stats}"
    );
    // With the pods' MTU at 1450, TCP crosses.
    tcp_transfer(&a.ns, &b.ns, &b.ip, 10 << 20)
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    tcp_transfer(&b.ns, &a.ns, &a.ip, 10 << 20)
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
}
