//! The AF_XDP underlay (`underlay_kind = "af-xdp"`) between two podswitchd
//! nodes (needs root; CI has it): every tunnel backend carries ping, TCP
//! and UDP everywhere; the packets the XDP program steers bypass the
//! node's IP stack (its kernel counters say so); the node's own traffic,
//! ARP included, is still the kernel's; and nothing stays attached to the
//! underlay after SIGTERM, or after SIGKILL, when a restarted daemon
//! attaches again.

mod common;

use common::cluster::Cluster;
use common::traffic::{kernel_counter, ping, traffic_matrix, udp_datagrams};
use common::{require, Netns};
use std::time::{Duration, Instant};

const PINGS: u32 = 20;

fn xdp_cluster(backend: &str) -> Cluster {
    let mut cluster = Cluster::new(backend, "bridge", 2);
    cluster.port_kind = "af-packet".into();
    cluster.underlay_kind = Some("af-xdp".into());
    cluster.start_all();
    cluster
}

/// Whether an XDP program is attached to the namespace's `ul0`.
fn xdp_attached(ns: &Netns) -> bool {
    let out = ns.ip(&["-d", "link", "show", "dev", "ul0"]);
    assert!(out.status.success(), "ip link show ul0 in {}", ns.name);
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

fn underlay_kind(cluster: &Cluster, n: usize) -> serde_json::Value {
    let ports = cluster.nodes[n].ctl_json(&["port", "list"]);
    common::cluster::port_kind(&ports, "ul0").unwrap_or_else(|| panic!("no ul0 in {ports}"))
}

/// Frames the underlay port of node `n` received.
fn underlay_rx(cluster: &Cluster, n: usize) -> u64 {
    let stats = cluster.nodes[n].ctl_json(&["stats"]);
    stats["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["port"] == "ul0"))
        .and_then(|p| p["rx_packets"].as_u64())
        .unwrap_or_else(|| panic!("no ul0 rx_packets in {stats}"))
}

#[test]
fn af_xdp_underlay_carries_every_tunnel_backend() {
    require(&["ip", "ping", "/usr/bin/python3", "nstat"]);
    for backend in ["vxlan", "ipip", "udp", "directrouting"] {
        let cluster = xdp_cluster(backend);
        for n in 0..2 {
            assert_eq!(
                underlay_kind(&cluster, n),
                "af-xdp",
                "{backend}: node{} underlay\n{}",
                n + 1,
                cluster.logs()
            );
            assert!(xdp_attached(&cluster.nodes[n].ns), "{backend}: node{n}");
        }
        // Pings across nodes reach the other node's podswitch without
        // its kernel delivering them: IP InDelivers (every packet the
        // kernel hands to a socket, UDP or raw) stays put while the
        // underlay port counts them.
        let (from, to) = (&cluster.pods[0], &cluster.pods[2]);
        assert_ne!(from.node, to.node);
        let node = &cluster.nodes[to.node];
        assert!(ping(&from.ns, &to.ip, 1), "{backend}\n{}", cluster.logs());
        let delivered = kernel_counter(&node.ns, "IpInDelivers");
        let received = underlay_rx(&cluster, to.node);
        assert!(
            ping(&from.ns, &to.ip, PINGS),
            "{backend}\n{}",
            cluster.logs()
        );
        let delivered = kernel_counter(&node.ns, "IpInDelivers") - delivered;
        let received = underlay_rx(&cluster, to.node) - received;
        assert!(
            received >= u64::from(PINGS),
            "{backend}: the underlay port counted {received} of {PINGS} echo requests"
        );
        assert!(
            delivered < u64::from(PINGS) / 2,
            "{backend}: node{}'s kernel delivered {delivered} packets during {PINGS} pings: the tunnel packets went through its stack",
            node.index
        );
        traffic_matrix(&cluster, &format!("{backend}/af-xdp underlay"));
        // A batch (one UDP_SEGMENT write of the other node) crosses the
        // veth whole; the XDP program leaves it to the tunnel socket,
        // which takes it whole, where an AF_XDP socket would take one
        // frame of it.
        if matches!(backend, "vxlan" | "udp") {
            cluster.burst_crosses_in_batches(0, 2, &format!("{backend}/af-xdp underlay"));
        }
    }
}

#[test]
fn af_xdp_underlay_leaves_the_node_its_own_traffic_and_nothing_behind() {
    require(&["ip", "ping", "/usr/bin/python3"]);
    let mut cluster = xdp_cluster("vxlan");
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    // ARP and ICMP to the node itself are the kernel's: forget the
    // neighbour, so the ping has to resolve it again.
    n1.ns.ip(&["neigh", "flush", "dev", "ul0"]);
    assert!(
        ping(&n1.ns, &n2.underlay_ip, 3),
        "node1 -> node2's own address\n{}",
        cluster.logs()
    );
    let neigh = n1.ns.ip(&["neigh", "show", "dev", "ul0"]);
    assert!(
        String::from_utf8_lossy(&neigh.stdout).contains(&n2.underlay_ip),
        "node2 answered no ARP: {}",
        String::from_utf8_lossy(&neigh.stdout)
    );
    // The node's own UDP (not to the tunnel port) too.
    let got = udp_datagrams(&n1.ns, &n2.ns, &n2.underlay_ip, 20, 1000);
    assert_eq!(got, 20, "node1 -> node2 UDP\n{}", cluster.logs());

    // SIGTERM: the program goes with the daemon.
    let status = cluster.nodes[1].daemon.as_mut().unwrap().stop();
    assert!(status.success(), "podswitchd on node2 ended {status}");
    assert!(
        !xdp_attached(&cluster.nodes[1].ns),
        "XDP left on node2's ul0 after SIGTERM"
    );
    // SIGKILL: the kernel closes the link with the process. (The pods'
    // ports come back from the state file.)
    cluster.start(1, &[]);
    assert!(xdp_attached(&cluster.nodes[1].ns));
    cluster.nodes[1].daemon.as_mut().unwrap().kill_9();
    assert!(
        !xdp_attached(&cluster.nodes[1].ns),
        "XDP left on node2's ul0 after SIGKILL"
    );
    // A daemon started after SIGKILL attaches again and forwards.
    cluster.start(1, &[]);
    assert_eq!(underlay_kind(&cluster, 1), "af-xdp", "{}", cluster.logs());
    let (from, to) = (&cluster.pods[0], &cluster.pods[2]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ping(&from.ns, &to.ip, 1) {
        assert!(
            Instant::now() < deadline,
            "no traffic after the restart\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
