//! podswitchd forwarding real traffic between pods in network namespaces,
//! for every backend and both gateway modes (needs root; CI has it).
//!
//! Two simulated nodes joined by an underlay veth, two pods behind each,
//! a podswitchd per node configured from a TOML file, pods attached with
//! `podswitchctl port add`. The pods' veths keep the kernel's default
//! offloads (TX checksum, TSO): their TCP reaches podswitch as 64 KiB
//! frames with partial checksums, which it must complete and segment.
//!
//! Pods attach both ways podswitchd reads a veth: AF_XDP (where the
//! kernel turns the pod's TSO off and leaves partial checksums) and
//! AF_PACKET (where TCP arrives as TSO super-frames to segment).
//!
//! Per cluster, between every pair of pods (same node and across nodes)
//! and from each node's own stack (through its TUN host port) to pods:
//! ping; 10 MB over TCP whose SHA-256 the receiver checks; 20 UDP
//! datagrams in each direction, all of which must arrive.

mod common;

use common::cluster::{Cluster, MODES};
use common::traffic::{
    kernel_counter, ping, tcp_transfer, traffic_matrix, udp_burst, udp_gso_datagrams, TCP_BYTES,
};
use common::{require, Capture, Netns};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use std::fmt::Write as _;
use std::time::Duration;

fn every_path(backend: &str) {
    require(&["ip", "ping", "/usr/bin/python3", "kill"]);
    for (kind, mode) in ["af-xdp", "af-packet"]
        .into_iter()
        .flat_map(|k| MODES.map(|m| (k, m)))
    {
        let mut cluster = Cluster::new(backend, mode, 2);
        cluster.port_kind = kind.into();
        cluster.start_all();
        let ports = cluster.nodes[0].ctl_json(&["port", "list"]).to_string();
        assert!(
            ports.contains(&format!("\"kind\":\"{kind}\"")),
            "{kind} pod ports: {ports}"
        );
        traffic_matrix(&cluster, &format!("{backend}/{mode}/{kind}"));
    }
}

#[test]
fn vxlan_carries_ping_tcp_and_udp_everywhere() {
    every_path("vxlan");
}

#[test]
fn ipip_carries_ping_tcp_and_udp_everywhere() {
    every_path("ipip");
}

#[test]
fn udp_carries_ping_tcp_and_udp_everywhere() {
    every_path("udp");
}

#[test]
fn host_gw_carries_ping_tcp_and_udp_everywhere() {
    every_path("host-gw");
}

#[test]
fn directrouting_carries_ping_tcp_and_udp_everywhere() {
    every_path("directrouting");
}

/// Two workers per node, pods of each kind: a node's two pods sit on
/// different workers and the underlay on the first, so every same-node
/// frame and every frame between a pod and the underlay or the host port
/// passes from one worker to the other through its mailbox.
#[test]
fn two_workers_hand_frames_to_each_other_on_every_path() {
    require(&["ip", "ping", "/usr/bin/python3", "kill"]);
    for (backend, kind) in [("vxlan", "af-packet"), ("host-gw", "af-xdp")] {
        let mut cluster = Cluster::new(backend, "bridge", 2);
        cluster.port_kind = kind.into();
        for n in 0..cluster.nodes.len() {
            cluster.start(n, &["--workers", "2"]);
            cluster.attach_pods(n);
        }
        for (n, node) in cluster.nodes.iter().enumerate() {
            let ports = node.ctl_json(&["port", "list"]);
            let mut workers: Vec<u64> = cluster
                .pods
                .iter()
                .filter(|p| p.node == n)
                .map(|p| {
                    ports
                        .as_array()
                        .and_then(|all| all.iter().find(|q| q["interface"] == p.host_if.as_str()))
                        .and_then(|q| q["worker"].as_u64())
                        .unwrap_or_else(|| panic!("{}: no worker in {ports}", p.host_if))
                })
                .collect();
            workers.sort_unstable();
            assert_eq!(workers, [0, 1], "one pod on each worker: {ports}");
        }
        traffic_matrix(&cluster, &format!("{backend}/{kind}/2 workers"));
        // Idle again, both workers sleep: no mail wakes them.
        for node in &cluster.nodes {
            let used = common::idle_ticks(node.daemon.as_ref().unwrap().pid());
            assert!(
                used <= 2,
                "an idle podswitchd with two workers used {used} clock ticks in 2 s"
            );
        }
        for (n, node) in cluster.nodes.iter().enumerate() {
            let stats = node.ctl_json(&["stats"]);
            let workers = stats["workers"].as_array().expect("workers");
            assert_eq!(workers.len(), 2, "{stats}");
            for w in workers {
                assert!(
                    w["handed_off"].as_u64().unwrap() > 0,
                    "node {n}: every worker handed frames to the other: {stats}"
                );
            }
            assert!(
                stats["drops"].get("handoff_full").is_none(),
                "node {n}: no mailbox overflowed: {stats}"
            );
        }
    }
}

/// A worker per CPU (`per_cpu`), AF_PACKET pod ports split among them:
/// every path still carries ping, TCP and UDP; a ping sent from each CPU
/// in turn between two pods of a node is forwarded by that CPU's worker,
/// which writes the other pod's port itself (no frame handed to another
/// worker), and so are pings to the other node, through an underlay
/// split among the workers too (a UDP socket, a packet socket taking
/// host-gw frames, or both, per worker; for IPIP a packet socket taking
/// IPIP packets); a capture on a split port spans
/// every worker's member; a split port is detached from every worker;
/// an idle node uses no CPU.
#[test]
fn per_cpu_workers_split_pod_ports_and_carry_every_path() {
    require(&["ip", "ping", "/usr/bin/python3", "kill", "taskset", "ss"]);
    for (backend, tunnel_port) in [
        ("vxlan", Some(8472)),
        ("udp", Some(8285)),
        ("host-gw", None),
        ("directrouting", Some(8472)),
        ("ipip", None),
    ] {
        per_cpu_workers(backend, tunnel_port);
    }
}

/// Where the underlay is not split among per-CPU workers (the AF_XDP
/// underlay stays with one of them, which the others hand their frames),
/// the pod ports still are, and every path still carries ping, TCP and
/// UDP.
#[test]
fn per_cpu_workers_carry_every_path_where_the_underlay_stays_whole() {
    require(&["ip", "ping", "/usr/bin/python3", "kill"]);
    let cluster = per_cpu_cluster("ipip", Some("af-xdp"));
    for node in &cluster.nodes {
        let ports = node.ctl_json(&["port", "list"]);
        let ports = ports.as_array().expect("a list of ports");
        for port in ports {
            let whole = port["role"] == "underlay";
            assert_eq!(port["split"], !whole, "{port}");
        }
    }
}

/// Two nodes of `backend` whose podswitchd runs a worker per CPU, with
/// AF_PACKET pods and the underlay kind `underlay_kind` (the default if
/// none), once the traffic matrix has passed on it.
fn per_cpu_cluster(backend: &str, underlay_kind: Option<&str>) -> Cluster {
    let mut cluster = Cluster::new(backend, "bridge", 2);
    cluster.port_kind = "af-packet".into();
    cluster.underlay_kind = underlay_kind.map(str::to_string);
    for n in 0..cluster.nodes.len() {
        // A spin window longer than the gaps of `ping_from_each_cpu`:
        // a worker that spun for frames of split ports would spin after
        // each of its pings.
        cluster.start(n, &["--per-cpu", "true", "--busy-poll-us", "5000"]);
        cluster.attach_pods(n);
    }
    traffic_matrix(
        &cluster,
        &format!("{backend}/bridge/af-packet/per-CPU workers"),
    );
    cluster
}

/// [`per_cpu_workers_split_pod_ports_and_carry_every_path`] for `backend`,
/// whose underlay receives on UDP port `tunnel_port` if it has one, and
/// host-gw frames through a packet socket for host-gw and directrouting.
/// Every port is split, so every frame arrives on its worker's own CPU,
/// and no worker spins: each sleeps at once after its frames, whose
/// sender wakes it where it runs.
fn per_cpu_workers(backend: &str, tunnel_port: Option<u16>) {
    let cpus = podswitch_engine::sys::sched::allowed_cpus().unwrap();
    assert!(
        cpus.len() >= 2,
        "this test needs 2 CPUs to see a worker per CPU (this process may use {cpus:?})"
    );
    let cluster = per_cpu_cluster(backend, None);

    let node = &cluster.nodes[0];
    let worker_stats = || -> Vec<(u64, u64)> {
        workers(node)
            .iter()
            .map(|w| {
                (
                    w["batches"].as_u64().unwrap(),
                    w["handed_off"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    // Past any pause of spinning a preemption began (a second at most),
    // so that a worker that would spin for these pings does.
    std::thread::sleep(Duration::from_millis(1100));
    let before = worker_stats();
    let spins_before = spins(&cluster);
    assert_eq!(before.len(), cpus.len(), "a worker per CPU");
    // `port list` says every port is split: the pod ports, the underlay
    // and the host port.
    let ports = node.ctl_json(&["port", "list"]);
    let ports = ports.as_array().expect("a list of ports");
    let mut roles: Vec<&str> = ports.iter().filter_map(|p| p["role"].as_str()).collect();
    roles.sort_unstable();
    assert_eq!(
        roles,
        ["host", "pod", "pod", "underlay"],
        "{backend}: {ports:?}"
    );
    for port in ports {
        assert_eq!(port["split"], true, "{backend}: {port}");
        assert!(port["worker"].is_null(), "{backend}: {port}");
    }
    let (from, to) = {
        let mut local = cluster.pods.iter().filter(|p| p.node == 0);
        (local.next().unwrap(), local.next().unwrap())
    };
    ping_from_each_cpu(from, &cpus, &to.ip);
    each_worker_forwarded_alone(
        &before,
        &worker_stats(),
        "the pings sent from its CPU, writing the other pod's port itself",
    );

    // Across nodes too: the underlay is split (a UDP socket per worker
    // in a reuseport group, a packet socket per worker in a fanout group
    // for host-gw frames), so a ping from each CPU to a pod of the other
    // node and its reply are each handled by one worker on each node.
    // (IP-in-UDP sends from its receiving socket, host-gw frames leave
    // through the packet socket: each member through its own.)
    if let Some(tunnel_port) = tunnel_port {
        let port = format!(":{tunnel_port}");
        let sockets = node.ns.exec("ss", &["-Huln", "sport", "=", &port]);
        assert_eq!(
            String::from_utf8_lossy(&sockets.stdout).lines().count(),
            cpus.len(),
            "{backend}: a tunnel socket per worker: {}",
            String::from_utf8_lossy(&sockets.stdout)
        );
    }
    if matches!(backend, "host-gw" | "directrouting" | "ipip") {
        assert_eq!(
            packet_sockets(node, "ul0"),
            cpus.len(),
            "{backend}: a packet socket per worker taking host-gw frames or IPIP packets"
        );
    }
    let remote = cluster.pods.iter().find(|p| p.node == 1).unwrap();
    let before = worker_stats();
    ping_from_each_cpu(from, &cpus, &remote.ip);
    let after = worker_stats();
    assert_eq!(
        spins(&cluster),
        spins_before,
        "{backend}: no worker of either node spun for frames of split ports (each arrives on its worker's CPU)"
    );
    for (worker, (was, now)) in before.iter().zip(&after).enumerate() {
        assert_eq!(
            now.1, was.1,
            "worker {worker} sent into the underlay and the pod's port itself: {before:?} -> {after:?}"
        );
    }

    // And between the node itself and a pod: the host port's TUN has a
    // queue per worker, and the kernel steers what a process of the node
    // sends to the queue of its CPU.
    let queues = node.ns.exec("ls", &["/sys/class/net/podswitch0/queues"]);
    let queues = String::from_utf8_lossy(&queues.stdout);
    assert_eq!(
        queues.lines().filter(|q| q.starts_with("tx-")).count(),
        cpus.len(),
        "a TUN queue per worker: {queues}"
    );
    let before = worker_stats();
    for cpu in &cpus {
        let cpu = cpu.to_string();
        let ping = node.ns.exec(
            "taskset",
            &[
                "-c", &cpu, "ping", "-c", "3", "-i", "0.05", "-W", "2", &to.ip,
            ],
        );
        assert!(
            ping.status.success(),
            "the node pings {} from CPU {cpu}",
            to.ip
        );
    }
    each_worker_forwarded_alone(
        &before,
        &worker_stats(),
        "the node's pings sent from its CPU, read from its own TUN queue",
    );

    // A capture on a split port spans every worker's member: pings sent
    // from each CPU in turn, whose requests each CPU's member reads, all
    // land in the one file.
    let pcap = common::TempFile::new("split.pcap");
    let pinger = {
        let (ns, ip, cpus) = (from.ns.name.clone(), to.ip.clone(), cpus.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            for cpu in cpus {
                let cpu = cpu.to_string();
                common::run(
                    "ip",
                    &[
                        "netns", "exec", &ns, "taskset", "-c", &cpu, "ping", "-c", "2", "-i",
                        "0.1", &ip,
                    ],
                );
            }
        })
    };
    let captured = node.ctl_json(&[
        "capture",
        &from.host_if,
        "--file",
        pcap.0.to_str().unwrap(),
        "--seconds",
        "3",
    ]);
    pinger.join().unwrap();
    let frames = common::read_pcap(&pcap.0);
    assert_eq!(captured["packets"], frames.len(), "{captured}");
    // IPv4 (no options), ICMP, echo request.
    let requests = frames
        .iter()
        .filter(|f| f.len() > 34 && f[12..14] == [0x08, 0x00] && f[23] == 1 && f[34] == 8)
        .count();
    assert_eq!(
        requests,
        2 * cpus.len(),
        "every echo request, whichever member read it, is in the one file"
    );

    for node in &cluster.nodes {
        let used = common::idle_ticks(node.daemon.as_ref().unwrap().pid());
        assert!(
            used <= 2,
            "an idle podswitchd with a worker per CPU used {used} clock ticks in 2 s"
        );
    }

    // Detached from every worker: no member is left reading its veth.
    assert_eq!(
        packet_sockets(node, &from.host_if),
        cpus.len(),
        "a packet socket per worker on the pod's veth"
    );
    let gone = node.ctl(&["port", "del", &from.host_if]);
    assert!(
        gone.status.success(),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
    assert_eq!(
        packet_sockets(node, &from.host_if),
        0,
        "every member closed with the port"
    );
}

/// The `workers` of `node`'s stats.
fn workers(node: &common::cluster::Node) -> Vec<serde_json::Value> {
    let stats = node.ctl_json(&["stats"]);
    stats["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("no workers in {stats}"))
        .clone()
}

/// For each node, each worker's spins so far: those that caught a frame,
/// ran out, or were preempted.
fn spins(cluster: &Cluster) -> Vec<Vec<u64>> {
    cluster
        .nodes
        .iter()
        .map(|node| {
            workers(node)
                .iter()
                .map(|w| {
                    ["spins_caught", "spins_expired", "spins_preempted"]
                        .iter()
                        .map(|name| w[name].as_u64().unwrap())
                        .sum()
                })
                .collect()
        })
        .collect()
}

/// Each worker's (batches, frames handed off) went from `before` to
/// `after`: every worker forwarded `what`, and none handed a frame to
/// another.
fn each_worker_forwarded_alone(before: &[(u64, u64)], after: &[(u64, u64)], what: &str) {
    for (worker, (was, now)) in before.iter().zip(after).enumerate() {
        assert!(
            now.0 > was.0,
            "worker {worker} forwarded {what}: {before:?} -> {after:?}"
        );
        assert_eq!(
            now.1, was.1,
            "worker {worker} forwarded {what} handing nothing off: {before:?} -> {after:?}"
        );
    }
}

/// How many packet sockets in `node`'s namespace are bound to
/// `interface`.
fn packet_sockets(node: &common::cluster::Node, interface: &str) -> usize {
    let ifindex = node
        .ns
        .exec("cat", &[&format!("/sys/class/net/{interface}/ifindex")]);
    let ifindex = String::from_utf8_lossy(&ifindex.stdout).trim().to_string();
    let table = node.ns.exec("cat", &["/proc/net/packet"]);
    // sk RefCnt Type Proto Iface R Rmem User Inode
    String::from_utf8_lossy(&table.stdout)
        .lines()
        .skip(1)
        .filter(|line| line.split_whitespace().nth(4) == Some(ifindex.as_str()))
        .count()
}

/// Five pings 2 ms apart from `pod` to `ip`, from a process pinned to
/// each of `cpus` in turn.
fn ping_from_each_cpu(pod: &common::cluster::Pod, cpus: &[usize], ip: &str) {
    for cpu in cpus {
        let cpu = cpu.to_string();
        pod.ns.exec(
            "taskset",
            &["-c", &cpu, "ping", "-c", "5", "-i", "0.002", "-W", "2", ip],
        );
    }
}

/// Packets the kernel took from the underlay's sockets and then dropped
/// (its link's peer down, here) are counted, as `tx_device_dropped` of
/// the underlay port, from the interface's own counter: the raw socket
/// that sent them said nothing.
#[test]
fn underlay_drops_after_the_send_are_counted() {
    require(&["ip", "ping"]);
    let mut cluster = Cluster::new("vxlan", "bridge", 1);
    cluster.port_kind = "af-packet".into();
    cluster.start_all();
    let (from, to) = (&cluster.pods[0], &cluster.pods[1]);
    assert_ne!(from.node, to.node);
    let ping = |count: &str| {
        std::process::Command::new("ip")
            .args(["netns", "exec", &from.ns.name, "ping", "-c", count])
            .args(["-i", "0.1", "-W", "1", &to.ip])
            .output()
            .expect("ping")
            .status
            .success()
    };
    assert!(ping("1"), "{}", cluster.logs());
    let dropped = |cluster: &Cluster| {
        let stats = cluster.nodes[from.node].ctl_json(&["stats"]);
        let total = stats["drops"]["tx_device_dropped"].as_u64().unwrap_or(0);
        let underlay = port_stats(cluster, from.node, "ul0");
        (total, counter(&underlay, "drops"))
    };
    assert_eq!(dropped(&cluster).0, 0, "nothing dropped yet");
    // The other node's neighbour entry made permanent: ul0 losing its
    // carrier flushes the others (`neigh_carrier_down`), and the echo
    // requests would then wait, unsent, for an answer to ARP instead.
    let (sender, receiver) = (&cluster.nodes[from.node], &cluster.nodes[to.node]);
    let receiver_mac = receiver.ns.mac("ul0").to_string();
    sender.ns.ip(&[
        "neigh",
        "replace",
        &receiver.underlay_ip,
        "lladdr",
        &receiver_mac,
        "dev",
        "ul0",
        "nud",
        "permanent",
    ]);
    // The node's own IPv6 (router solicitations every few seconds, MLD
    // reports) would be dropped and counted too, at moments of its own:
    // once, in a loaded full suite, two of them fell between the count
    // taken below and the link coming back. Without it, only podswitch's
    // packets and the pings cross ul0.
    sender
        .ns
        .exec("sysctl", &["-qw", "net.ipv6.conf.ul0.disable_ipv6=1"]);
    // The bridge's end of node 1's underlay link goes down: its ul0 still
    // takes packets, and drops them.
    let port = format!("n{}", sender.index);
    cluster.underlay.exec("ip", &["link", "set", &port, "down"]);
    assert!(!ping("5"));
    let (total, underlay) = dropped(&cluster);
    // All five echo requests; the node's own packets, which the same
    // counter holds, may add some.
    assert!(
        total >= 5,
        "the echo requests the link dropped are counted: {total}"
    );
    assert!(underlay >= total, "as the underlay's: {underlay} < {total}");
    cluster.underlay.exec("ip", &["link", "set", &port, "up"]);
    assert!(ping("3"), "back once the link is up");
    assert_eq!(dropped(&cluster).0, total, "no more drops once it is up");
}

/// One port's counters from `podswitchctl stats --json`.
fn port_stats(cluster: &Cluster, node: usize, port: &str) -> serde_json::Value {
    let stats = cluster.nodes[node].ctl_json(&["stats"]);
    stats["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["port"] == port))
        .cloned()
        .unwrap_or_else(|| panic!("no counters for {port} on node {node}: {stats}"))
}

fn counter(port: &serde_json::Value, name: &str) -> u64 {
    port[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in {port}"))
}

/// Bytes per frame: above 3000, most bytes moved as super-frames (a
/// super-frame counts once in the packet counters, with all its bytes).
fn bytes_per_frame(port: &serde_json::Value, dir: &str) -> u64 {
    counter(port, &format!("{dir}_bytes")) / counter(port, &format!("{dir}_packets")).max(1)
}

/// Pods on one node exchange BIG TCP super-frames (both veths take 192
/// KiB, as the CNI plugin sets them) whole: one read and one write each,
/// never cut; a pod whose veth keeps the kernel's 64 KiB still gets and
/// sends the same bytes (the kernel cuts what podswitch writes to it).
#[test]
fn same_node_tcp_moves_big_tcp_super_frames_whole() {
    require(&["ip", "/usr/bin/python3"]);
    let mut cluster = Cluster::new("vxlan", "bridge", 2);
    cluster.port_kind = "af-packet".into();
    cluster.big_tcp_pods = false;
    let small = cluster.add_pod(0, 20, 1450);
    cluster.start_all();
    let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
    assert_eq!(a.node, b.node);
    tcp_transfer(&a.ns, &b.ns, &b.ip, 4 * TCP_BYTES).unwrap_or_else(|e| {
        panic!(
            "{e}
{}",
            cluster.logs()
        )
    });
    let source = port_stats(&cluster, a.node, &a.host_if);
    let destination = port_stats(&cluster, b.node, &b.host_if);
    let all = format!(
        "source pod {source}
destination pod {destination}"
    );
    // Most bytes in frames an IPv4 length could not say, whole both ways.
    assert!(bytes_per_frame(&source, "rx") > 65_535, "{all}");
    assert!(bytes_per_frame(&destination, "tx") > 65_535, "{all}");
    assert_eq!(counter(&source, "big_tcp_cut"), 0, "{all}");
    assert_eq!(counter(&destination, "segmented"), 0, "{all}");
    let drops = &cluster.nodes[a.node].ctl_json(&["stats"])["drops"];
    for reason in ["rx_too_long", "gso_malformed", "offload_checksum"] {
        assert_eq!(drops[reason].as_u64().unwrap_or(0), 0, "{reason}: {drops}");
    }
    let c = &cluster.pods[small];
    tcp_transfer(&a.ns, &c.ns, &c.ip, TCP_BYTES).unwrap_or_else(|e| {
        panic!(
            "BIG TCP pod -> 64 KiB pod: {e}
{}",
            cluster.logs()
        )
    });
    tcp_transfer(&c.ns, &a.ns, &a.ip, TCP_BYTES).unwrap_or_else(|e| {
        panic!(
            "64 KiB pod -> BIG TCP pod: {e}
{}",
            cluster.logs()
        )
    });
}

/// A pod's TCP to a pod on the other node, with default offloads: which
/// path its super-frames take, per backend, as `podswitchctl stats` shows
/// it.
#[test]
fn cross_node_tcp_moves_as_super_frames() {
    require(&["ip", "ping", "/usr/bin/python3"]);
    for case in [
        "vxlan",
        "vxlan-bursts",
        "udp",
        "host-gw",
        "ipip",
        "ipip-cut",
    ] {
        let backend = case.trim_end_matches("-bursts").trim_end_matches("-cut");
        let mut cluster = Cluster::new(backend, "bridge", 1);
        cluster.port_kind = "af-packet".into();
        if case != backend {
            cluster.tunnel_tap = Some("none".into());
        }
        cluster.start_all();
        let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
        assert_ne!(a.node, b.node);
        tcp_transfer(&a.ns, &b.ns, &b.ip, 4 * TCP_BYTES)
            .unwrap_or_else(|e| panic!("{case}: {e}\n{}", cluster.logs()));
        let source = port_stats(&cluster, a.node, &a.host_if);
        let sender_underlay = port_stats(&cluster, a.node, "ul0");
        let receiver_underlay = port_stats(&cluster, b.node, "ul0");
        let destination = port_stats(&cluster, b.node, &b.host_if);
        let all = format!(
            "{case}:\nsource pod {source}\nsender underlay {sender_underlay}\n\
             receiver underlay {receiver_underlay}\ndestination pod {destination}"
        );
        // The pod's TSO segments arrive whole, BIG TCP ones too (its veth
        // takes 192 KiB), which are cut into 64 KiB super-frames for the
        // tunnel or the underlay...
        assert!(counter(&source, "super_frames_in") > 0, "{all}");
        assert!(bytes_per_frame(&source, "rx") > 3000, "{all}");
        assert!(counter(&source, "big_tcp_cut") > 0, "{all}");
        match case {
            // ... leave whole through the tunnel TAP (this kernel has
            // UDP-tunnel GSO on TAPs; IPIP's program marks them), cross
            // the underlay whole and reach the pod whole, nothing to
            // merge;
            "vxlan" | "ipip" => {
                assert!(counter(&sender_underlay, "super_frames_out") > 0, "{all}");
                assert_eq!(counter(&sender_underlay, "segmented"), 0, "{all}");
                assert!(counter(&receiver_underlay, "super_frames_in") > 0, "{all}");
                assert_eq!(counter(&receiver_underlay, "coalesced"), 0, "{all}");
                assert!(counter(&destination, "super_frames_out") > 0, "{all}");
                assert!(bytes_per_frame(&destination, "tx") > 3000, "{all}");
            }
            // ... for IP-in-UDP (and VXLAN without the TAP), leave in
            // UDP_SEGMENT bursts, are merged again on the other node and
            // reach the pod whole;
            "udp" | "vxlan-bursts" => {
                assert!(counter(&sender_underlay, "super_frames_out") > 0, "{all}");
                assert!(counter(&receiver_underlay, "coalesced") > 0, "{all}");
                assert!(counter(&destination, "super_frames_out") > 0, "{all}");
                assert!(bytes_per_frame(&destination, "tx") > 3000, "{all}");
            }
            // ... cross the underlay whole, as the kernel's host-gw does;
            "host-gw" => {
                assert!(counter(&sender_underlay, "super_frames_out") > 0, "{all}");
                assert!(counter(&receiver_underlay, "super_frames_in") > 0, "{all}");
                assert!(bytes_per_frame(&destination, "tx") > 3000, "{all}");
            }
            // ... or, for IPIP without its TAP, are cut once on the
            // sending node.
            _ => {
                assert!(counter(&sender_underlay, "segmented") > 0, "{all}");
                assert_eq!(counter(&sender_underlay, "super_frames_out"), 0, "{all}");
            }
        }
        // The node's own stack and the pods exchange super-frames through
        // the TUN host port both ways.
        let node = &cluster.nodes[a.node];
        tcp_transfer(&node.ns, &b.ns, &b.ip, TCP_BYTES)
            .unwrap_or_else(|e| panic!("{case}: node -> pod: {e}\n{}", cluster.logs()));
        let gateway = format!("10.244.{}.1", node.index);
        tcp_transfer(&b.ns, &node.ns, &gateway, TCP_BYTES)
            .unwrap_or_else(|e| panic!("{case}: pod -> node: {e}\n{}", cluster.logs()));
        let host = port_stats(&cluster, a.node, "podswitch0");
        assert!(
            counter(&host, "super_frames_in") > 0,
            "{case}: host port {host}"
        );
        if case != "ipip-cut" {
            // (IPIP cut on the sending node arrives cut: nothing to
            // merge whole.)
            assert!(
                counter(&host, "super_frames_out") > 0,
                "{case}: host port {host}"
            );
        }
    }
}

/// A VXLAN or IPIP underlay whose device cuts no tunnel packets and
/// computes no checksum (a NIC without those offloads): the super-frames
/// podswitch sends whole through its tunnel TAP are cut by the kernel's
/// software GSO. On the wire every packet fits the MTU, its outer IPv4
/// checksum verifies, and it carries a complete inner TCP checksum, as
/// etherparse computes them, and the transfer arrives intact. (The
/// offloads are turned off to see the kernel's cut, which a NIC without
/// them gets; with them on, a veth carries the super-frames whole and
/// there is nothing on the wire to check segment by segment.)
#[test]
fn tunnel_super_frames_are_cut_by_the_kernel_where_the_underlay_cannot() {
    require(&["ip", "ethtool", "tcpdump", "/usr/bin/python3"]);
    for backend in ["vxlan", "ipip"] {
        super_frames_cut_by_the_kernel(backend);
    }
}

fn super_frames_cut_by_the_kernel(backend: &str) {
    let mut cluster = Cluster::new(backend, "bridge", 1);
    cluster.port_kind = "af-packet".into();
    cluster.start_all();
    let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
    let sender = &cluster.nodes[a.node];
    let (segmentation, protocol): (&[&str], _) = match backend {
        "ipip" => (&["tx-ipxip4-segmentation", "off"], "ip proto 4"),
        _ => (
            &[
                "tx-udp_tnl-segmentation",
                "off",
                "tx-udp_tnl-csum-segmentation",
                "off",
            ],
            "udp",
        ),
    };
    let mut args = vec!["-K", "ul0", "tx", "off"];
    args.extend(segmentation);
    let out = sender.ns.exec("ethtool", &args);
    assert!(out.status.success(), "ethtool: {out:?}");
    let filter = format!("{protocol} and src host {}", sender.underlay_ip);
    let capture = Capture::start(&cluster.nodes[b.node].ns, "ul0", 2000, &filter);
    tcp_transfer(&a.ns, &b.ns, &b.ip, TCP_BYTES)
        .unwrap_or_else(|e| panic!("{backend}: {e}\n{}", cluster.logs()));
    let frames = capture.finish(Duration::from_secs(30));
    let mut tcp_segments = 0;
    for frame in &frames {
        let outer = SlicedPacket::from_ethernet(frame).expect("outer frame");
        let Some(NetSlice::Ipv4(outer_ip)) = &outer.net else {
            panic!("not IPv4: {frame:02x?}")
        };
        let outer_header = outer_ip.header().to_header();
        assert!(
            outer_header.total_len <= 1500,
            "{backend}: a packet longer than the MTU: {}",
            outer_header.total_len
        );
        assert_eq!(
            outer_header.header_checksum,
            outer_header.calc_header_checksum(),
            "{backend}: outer IPv4 checksum: {frame:02x?}"
        );
        let inner = match &outer.transport {
            // Behind the 8-byte VXLAN header, the inner Ethernet frame.
            Some(TransportSlice::Udp(udp)) => {
                SlicedPacket::from_ethernet(&udp.payload()[8..]).expect("inner frame")
            }
            _ => SlicedPacket::from_ip(outer_ip.payload().payload).expect("inner packet"),
        };
        let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(tcp))) =
            (&inner.net, &inner.transport)
        else {
            continue;
        };
        let computed = tcp
            .to_header()
            .calc_checksum_ipv4(&ip.header().to_header(), tcp.payload())
            .unwrap();
        // 0 and 0xffff are the same ones' complement sum.
        let field = tcp.checksum();
        assert!(
            computed == field || (computed == 0 && field == 0xffff),
            "{backend}: inner TCP checksum {field:#06x}, computed {computed:#06x}: {frame:02x?}"
        );
        tcp_segments += 1;
    }
    assert!(
        tcp_segments > 1000,
        "{backend}: {tcp_segments} TCP segments captured"
    );
    let underlay = port_stats(&cluster, a.node, "ul0");
    assert!(counter(&underlay, "super_frames_out") > 0, "{underlay}");
    assert_eq!(counter(&underlay, "segmented"), 0, "{underlay}");
}

/// Where the tunnel TAP cannot be made (here its name is taken by another
/// interface; on a kernel before 6.17 the offload is refused), the daemon
/// says why and VXLAN super-frames leave in `UDP_SEGMENT` bursts, merged
/// again on the other node: TCP still crosses intact.
#[test]
fn vxlan_falls_back_to_udp_segment_bursts_without_the_tunnel_tap() {
    require(&["ip", "/usr/bin/python3"]);
    let mut cluster = Cluster::new("vxlan", "bridge", 1);
    cluster.port_kind = "af-packet".into();
    cluster
        .expected_warnings
        .push("VXLAN super-frames cannot leave whole");
    let sender = cluster.pods[0].node;
    let taken = cluster.nodes[sender].ns.ip(&[
        "link",
        "add",
        "podswitch-gso",
        "type",
        "veth",
        "peer",
        "name",
        "gso-peer",
    ]);
    assert!(taken.status.success(), "ip link add: {taken:?}");
    cluster.start_all();
    let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
    tcp_transfer(&a.ns, &b.ns, &b.ip, 4 * TCP_BYTES)
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let log = cluster.nodes[sender].daemon.as_ref().unwrap().log_text();
    assert!(
        log.contains("VXLAN super-frames cannot leave whole (TUNSETIFF podswitch-gso"),
        "{log}"
    );
    let sender_underlay = port_stats(&cluster, a.node, "ul0");
    let receiver_underlay = port_stats(&cluster, b.node, "ul0");
    assert!(
        counter(&sender_underlay, "super_frames_out") > 0,
        "{sender_underlay}"
    );
    assert!(
        counter(&receiver_underlay, "coalesced") > 0,
        "{receiver_underlay}"
    );
}

/// Where datagrams went, for a failed count: every node's counters and
/// the kernel's UDP and IP counters on each node and in the receiving pod
/// (a full socket shows there as `UdpRcvbufErrors`), then the logs.
fn where_lost(cluster: &Cluster, receiver: &Netns) -> String {
    let mut report = String::new();
    for node in &cluster.nodes {
        let stats = node.ctl_json(&["stats"]);
        let name = format!("node{}", node.index);
        let _ = writeln!(report, "{name} counters: {stats}");
        let _ = writeln!(report, "{name} kernel: {}", kernel_counters(&node.ns));
    }
    let _ = writeln!(
        report,
        "receiving pod kernel: {}",
        kernel_counters(receiver)
    );
    report + &cluster.logs()
}

/// The nonzero IP and UDP counters of a namespace's kernel, as `nstat`
/// prints them since boot.
fn kernel_counters(ns: &Netns) -> String {
    let out = ns.exec("nstat", &["-a"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("Ip") || l.starts_with("Udp"))
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            Some(format!("{}={}", fields.next()?, fields.next()?))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Small datagrams of one flow that find the sending node's worker busy
/// (here: stopped while they queue) leave in batches, one write each, and
/// reach the other node's pod intact, once each and in order, in both UDP
/// tunnels and to both kinds of pod port, when the receiving node reads
/// two batches at once too. (Fails if the batches are not sent:
/// `datagrams_batched` stays 0; and failed when an AF_XDP pod port was
/// handed more than 32 frames at once: the kernel sent 32 and left the
/// rest in the ring.)
#[test]
fn a_burst_of_small_datagrams_crosses_in_batches_intact_and_in_order() {
    require(&["ip", "ping", "/usr/bin/python3", "kill"]);
    for (backend, kind) in [
        ("vxlan", "af-packet"),
        ("vxlan", "af-xdp"),
        ("udp", "af-packet"),
    ] {
        let mut cluster = Cluster::new(backend, "bridge", 1);
        cluster.port_kind = kind.into();
        cluster.start_all();
        let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
        let label = format!("{backend}, {kind} pod ports");
        assert!(ping(&a.ns, &b.ip, 2), "{label}\n{}", cluster.logs());
        cluster.burst_crosses_in_batches(0, 1, &label);
        // And back, where the other node sends the batches.
        cluster.burst_crosses_in_batches(1, 0, &format!("{label}, back"));
    }
}

/// What a batch becomes on the wire, read by tshark, an independent
/// decoder: where the underlay interface cannot carry a batch whole
/// (node 1's `ul0` with UDP segmentation and checksum offload off, as a
/// NIC without them), the kernel cuts it into VXLAN datagrams of the one
/// flow's source port, each with its own lengths, IPv4 and UDP checksums
/// that verify outside and inside, and one of the pod's datagrams within.
/// (With the offloads on, the default, a batch crosses the veth whole; the
/// burst tests check that path end to end.)
#[test]
fn a_batch_leaves_as_datagrams_tshark_verifies() {
    require(&[
        "ip",
        "ping",
        "/usr/bin/python3",
        "kill",
        "tcpdump",
        "tshark",
        "ethtool",
    ]);
    let mut cluster = Cluster::new("vxlan", "bridge", 1);
    cluster.start_all();
    let off = cluster.nodes[0].ns.exec(
        "ethtool",
        &[
            "-K",
            "ul0",
            "tx-udp-segmentation",
            "off",
            "tx-checksumming",
            "off",
        ],
    );
    assert!(off.status.success(), "ethtool: {off:?}");
    let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
    assert!(ping(&a.ns, &b.ip, 2), "{}", cluster.logs());
    // node1's port on the underlay's bridge, frames coming from node1.
    let capture = Capture::start(&cluster.underlay, "n1", 64, "udp dst port 8472");
    cluster.burst_crosses_in_batches(0, 1, "vxlan, cut by the kernel");
    let frames = capture.finish(Duration::from_secs(10));
    let lines = common::tshark_fields(
        &frames,
        &["udp.port==8472,vxlan"],
        &[
            "frame.protocols",
            "vxlan.vni",
            "udp.srcport",
            "udp.dstport",
            "udp.length",
            "ip.checksum.status",
            "udp.checksum.status",
            "_ws.malformed",
        ],
    );
    let text = format!("{lines:?}");
    assert_eq!(lines.len(), 64, "64 datagrams on the wire:\n{text}");
    let source_port = lines[0][2]
        .split(',')
        .next()
        .unwrap_or_default()
        .to_string();
    for line in &lines {
        assert_eq!(
            line[0], "eth:ethertype:ip:udp:vxlan:eth:ethertype:ip:udp:data",
            "{text}"
        );
        assert_eq!(line[1], "1", "VNI: {text}");
        let outer_source = line[2].split(',').next().unwrap_or_default().to_string();
        assert_eq!(
            outer_source, source_port,
            "one flow's outer source port: {text}"
        );
        assert_eq!(line[3], "8472,5301", "destination ports: {text}");
        assert_eq!(line[4], "258,208", "each datagram its own lengths: {text}");
        assert_eq!(
            line[5], "1,1",
            "IPv4 checksums good, outer and inner: {text}"
        );
        assert_eq!(
            line[6], "1,1",
            "UDP checksums good, outer and inner: {text}"
        );
        assert_eq!(line[7], "", "malformed: {text}");
    }
}

/// A burst of one flow's small datagrams between two pods of a node
/// leaves podswitch for the receiving pod in a few writes, each one
/// super-datagram (`GSO_UDP_L4`) that the pod's kernel cuts back into
/// the datagrams: every one reaches the pod's socket intact, once and in
/// order, with no UDP checksum error counted by the pod's kernel, and the
/// pod's eth0 counts fewer frames than datagrams (its own count, not
/// podswitch's). With the segmentation and checksum offloads of the
/// pod's host-side veth off, the node's kernel cuts each super-datagram
/// in software before the veth, and tshark reads every datagram in the
/// pod with its own lengths and IPv4 and UDP checksums that verify.
#[test]
fn a_flows_datagrams_reach_a_pod_in_few_writes_and_arrive_intact() {
    require(&[
        "ip",
        "ping",
        "/usr/bin/python3",
        "kill",
        "nstat",
        "tcpdump",
        "tshark",
        "ethtool",
    ]);
    let mut cluster = Cluster::new("vxlan", "bridge", 2);
    cluster.port_kind = "af-packet".into();
    cluster.start_all();
    let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
    assert_eq!(a.node, b.node, "two pods of one node");
    assert!(ping(&a.ns, &b.ip, 2), "{}", cluster.logs());
    let node = &cluster.nodes[a.node];
    let daemon = node.daemon.as_ref().expect("podswitchd running");
    let count: u32 = 64;
    let rx_packets = || -> u64 {
        let out =
            b.ns.exec("cat", &["/sys/class/net/eth0/statistics/rx_packets"]);
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    // The sending pod's frames wait in its port's socket while the
    // daemon is stopped, so that it reads the burst in full batches.
    let burst = |label: &str| -> (u64, u64) {
        let (batched, frames) = (
            node.port_counter(&b.host_if, "datagrams_batched"),
            rx_packets(),
        );
        let got = udp_burst(&a.ns, &b.ns, &b.ip, count, 200, |stop| daemon.hold(stop));
        assert_eq!(
            got,
            (0..i64::from(count)).collect::<Vec<_>>(),
            "{label}: every datagram, intact, once, in order\n{}",
            where_lost(&cluster, &b.ns)
        );
        (
            node.port_counter(&b.host_if, "datagrams_batched") - batched,
            rx_packets() - frames,
        )
    };
    let _ = b.ns.exec("nstat", &["-n"]);
    let (batched, frames) = burst("default offloads");
    assert!(
        batched >= u64::from(count) / 2,
        "{batched} of {count} datagrams left in batches\n{}",
        node.ctl_json(&["stats"])
    );
    assert!(
        frames <= u64::from(count) / 2,
        "the pod's eth0 took {frames} frames for {count} datagrams"
    );
    assert_eq!(
        kernel_counter(&b.ns, "UdpInCsumErrors"),
        0,
        "UDP checksum errors"
    );

    let off = node.ns.exec(
        "ethtool",
        &[
            "-K",
            &b.host_if,
            "tx-udp-segmentation",
            "off",
            "tx-checksumming",
            "off",
        ],
    );
    assert!(off.status.success(), "ethtool: {off:?}");
    let capture = Capture::start(&b.ns, "eth0", count as usize, "udp dst port 5301");
    let (batched, _) = burst("cut by the node's kernel");
    assert!(
        batched >= u64::from(count) / 2,
        "{batched} of {count} in batches"
    );
    let frames = capture.finish(Duration::from_secs(10));
    let lines = common::tshark_fields(
        &frames,
        &[],
        &[
            "frame.protocols",
            "udp.length",
            "ip.checksum.status",
            "udp.checksum.status",
            "_ws.malformed",
        ],
    );
    let text = format!("{lines:?}");
    assert_eq!(
        lines.len(),
        count as usize,
        "{count} datagrams in the pod:\n{text}"
    );
    for line in &lines {
        assert_eq!(line[0], "eth:ethertype:ip:udp:data", "{text}");
        assert_eq!(line[1], "208", "each datagram its own length: {text}");
        assert_eq!(line[2], "1", "IPv4 checksum good: {text}");
        assert_eq!(line[3], "1", "UDP checksum good: {text}");
        assert_eq!(line[4], "", "malformed: {text}");
    }
}

/// With `udp_batches = false` a node sends a pod each datagram of a
/// flow's burst alone: none batched, one frame on the pod's eth0 for
/// each datagram, every one intact.
#[test]
fn a_node_told_not_to_batch_sends_a_pod_each_datagram_alone() {
    require(&["ip", "ping", "/usr/bin/python3", "kill"]);
    let mut cluster = Cluster::new("vxlan", "bridge", 2);
    cluster.port_kind = "af-packet".into();
    cluster.udp_batches = Some(false);
    cluster.start_all();
    let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
    assert!(ping(&a.ns, &b.ip, 2), "{}", cluster.logs());
    let node = &cluster.nodes[a.node];
    let daemon = node.daemon.as_ref().expect("podswitchd running");
    let rx_packets = || -> u64 {
        let out =
            b.ns.exec("cat", &["/sys/class/net/eth0/statistics/rx_packets"]);
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let count: u32 = 64;
    let frames = rx_packets();
    let got = udp_burst(&a.ns, &b.ns, &b.ip, count, 200, |stop| daemon.hold(stop));
    assert_eq!(
        got,
        (0..i64::from(count)).collect::<Vec<_>>(),
        "every datagram"
    );
    assert!(
        rx_packets() - frames >= u64::from(count),
        "a frame on the pod's eth0 for each datagram"
    );
    assert_eq!(node.port_counter(&b.host_if, "datagrams_batched"), 0);
}

/// A pod's UDP segmentation offload (UDP_SEGMENT, what QUIC stacks use):
/// each send leaves the pod as one super-frame of 16 datagrams, which
/// podswitch takes whole from the pod's port, and every datagram reaches
/// the other pod intact (the sink checks length and content), exactly
/// once, with no UDP checksum error counted by the receiver's kernel,
/// across nodes in every backend and on one node.
#[test]
fn pods_sending_udp_gso_reach_pods_intact() {
    require(&["ip", "ping", "/usr/bin/python3", "nstat"]);
    for backend in ["vxlan", "udp", "host-gw", "ipip"] {
        let mut cluster = Cluster::new(backend, "bridge", 2);
        cluster.port_kind = "af-packet".into();
        cluster.start_all();
        let a = &cluster.pods[0];
        for b in [&cluster.pods[1], &cluster.pods[2]] {
            let where_ = if a.node == b.node {
                "same node"
            } else {
                "cross-node"
            };
            assert!(
                ping(&a.ns, &b.ip, 2),
                "{backend} {where_}\n{}",
                cluster.logs()
            );
            let _ = b.ns.exec("nstat", &["-n"]);
            let before = counter(&port_stats(&cluster, a.node, &a.host_if), "super_frames_in");
            let (sends, segments) = (20, 16);
            let got = udp_gso_datagrams(&a.ns, &b.ns, &b.ip, sends, segments, 1000);
            assert_eq!(
                got,
                sends * segments,
                "{backend} {where_}: every datagram, intact\n{}",
                where_lost(&cluster, &b.ns)
            );
            let after = counter(&port_stats(&cluster, a.node, &a.host_if), "super_frames_in");
            assert!(
                after >= before + u64::from(sends),
                "{backend} {where_}: the sends arrived as super-frames ({before} -> {after})"
            );
            let errors = kernel_counter(&b.ns, "UdpInCsumErrors");
            assert_eq!(errors, 0, "{backend} {where_}: UDP checksum errors");
        }
    }
}
