//! One scenario per row of DESIGN.md's reference table, over in-memory
//! ports. Each asserts the exact bytes that leave, or the drop reason.

mod support;

use podswitch_engine::config::{Backend, GatewayMode, NodeConfig, PROXY_ARP_MAC};
use podswitch_engine::drop::DropReason;
use podswitch_engine::encap::icmpv4::{Icmpv4Packet, Icmpv4Type};
use podswitch_engine::encap::ipv4::Ipv4Packet;
use podswitch_engine::encap::{
    DecapConfig, Decapsulator, MacAddr, OuterPath, TunnelConfig, TunnelMode,
};
use podswitch_engine::fib::NextHop;
use podswitch_engine::trace::Step;
use support::*;

// ---- flannel, bridge mode ---------------------------------------------------

/// busybox1 -> busybox2 on one node: ARP through the bridge, then L2.
#[test]
fn same_node_pods_switch_through_the_bridge() {
    let mut node = Node::flannel(Backend::Vxlan);
    let bb1 = node.pod("veth-bb1", "10.244.1.2", BUSYBOX1_MAC);
    let bb2 = node.pod("veth-bb2", "10.244.1.3", BUSYBOX2_MAC);
    let bb3 = node.pod(
        "veth-bb3",
        "10.244.1.4",
        MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x04]),
    );

    // Who has 10.244.1.3? Flooded to the other pods only: not the
    // underlay, not the host, not back to busybox1.
    let request = arp_request(BUSYBOX1_MAC, "10.244.1.2", "10.244.1.3");
    let out = node.send(bb1, request.clone());
    assert_eq!(out, vec![(bb3, request.clone()), (bb2, request)]);

    // busybox2 answers; busybox1's MAC was learned, so it is unicast.
    let reply = arp_reply(BUSYBOX2_MAC, "10.244.1.3", BUSYBOX1_MAC, "10.244.1.2");
    assert_eq!(node.send(bb2, reply.clone()), vec![(bb1, reply)]);

    // The ping goes over L2, bytes unchanged.
    let ping = ping_frame(BUSYBOX1_MAC, BUSYBOX2_MAC, "10.244.1.2", "10.244.1.3", 64);
    assert_eq!(node.send(bb1, ping.clone()), vec![(bb2, ping)]);
    let s = node.stats();
    assert_eq!(s.port(bb1).rx_packets, 2);
    assert_eq!(s.port(bb2).tx_packets, 2);
    assert_eq!(s.total_drops(), 0);
}

#[test]
fn arp_for_the_gateway_is_answered_and_never_for_the_asker() {
    let mut node = Node::flannel(Backend::Vxlan);
    let bb1 = node.pod("veth-bb1", "10.244.1.2", BUSYBOX1_MAC);
    let gw_mac = node.tables.load().node.gateway_mac;
    let out = node.send(bb1, arp_request(BUSYBOX1_MAC, "10.244.1.2", "10.244.1.1"));
    assert_eq!(
        out,
        vec![(
            bb1,
            arp_reply(gw_mac, "10.244.1.1", BUSYBOX1_MAC, "10.244.1.2")
        )]
    );
    // A gratuitous ARP for its own address: flooded (nobody else here), never answered.
    node.expect_drop(
        bb1,
        arp_request(BUSYBOX1_MAC, "10.244.1.2", "10.244.1.2"),
        DropReason::NoFloodTargets,
    );
}

/// A pod on node 1 pings a pod on node 2 through `backend`'s tunnel and
/// gets the reply: the exact frames on the underlay and at the pod.
fn tunnel_round_trip(backend: Backend, tunnel: TunnelConfig) -> Vec<u8> {
    let (mut node, bb1) = Node::flannel_with_peer(backend);
    let cfg = node.tables.load().node.clone();

    // Out: TTL 63; VXLAN carries the frame VTEP to VTEP (flannel.1's ARP
    // entry for 10.244.2.0), the other tunnels carry only the IP packet.
    let ping = ping_frame(
        BUSYBOX1_MAC,
        cfg.gateway_mac,
        "10.244.1.2",
        "10.244.2.5",
        64,
    );
    let inner = match tunnel.mode {
        TunnelMode::Vxlan => routed(&ping, cfg.vtep_mac, NODE2_VTEP),
        _ => routed(&ping, cfg.gateway_mac, cfg.gateway_mac), // MACs do not travel
    };
    let expected = encapsulate(tunnel, &path_to_node2(&node), &inner, 1);
    assert_eq!(
        node.send(bb1, ping),
        vec![(node.underlay, expected.clone())]
    );

    // In: node 2's pod answers; busybox1 gets it from the gateway MAC, TTL - 1.
    let reply = ping_frame(NODE2_VTEP, cfg.vtep_mac, "10.244.2.5", "10.244.1.2", 64);
    let out = node.send(node.underlay, from_node2(&node, tunnel, &reply));
    assert_eq!(
        out,
        vec![(bb1, routed(&reply, cfg.gateway_mac, BUSYBOX1_MAC))]
    );
    expected
}

/// flannel vxlan: VNI 1, UDP to 8472.
#[test]
fn cross_node_flannel_vxlan() {
    let outer = tunnel_round_trip(Backend::Vxlan, TunnelConfig::vxlan());
    assert_eq!(&outer[36..38], &[0x21, 0x18], "UDP to 8472");
    assert_eq!(&outer[42..50], &[0x08, 0, 0, 0, 0, 0, 1, 0], "VXLAN, VNI 1");
}

/// flannel udp: the inner IP packet in UDP 8285.
#[test]
fn cross_node_flannel_udp() {
    let outer = tunnel_round_trip(Backend::Udp, TunnelConfig::ip_in_udp());
    assert_eq!(
        &outer[34..38],
        &[0x20, 0x5d, 0x20, 0x5d],
        "UDP 8285 -> 8285"
    );
    assert_eq!(
        outer[42] >> 4,
        4,
        "the inner IPv4 header follows the UDP header"
    );
}

/// flannel host-gw: no tunnel, the frame goes to node 2's underlay MAC.
#[test]
fn cross_node_host_gw() {
    let (mut node, bb1) = Node::flannel_with_peer(Backend::HostGw);
    let cfg = node.tables.load().node.clone();

    let frame = udp_frame(
        BUSYBOX1_MAC,
        cfg.gateway_mac,
        "10.244.1.2",
        "10.244.2.5",
        64,
        true,
        100,
    );
    assert_eq!(
        node.send(bb1, frame.clone()),
        vec![(
            node.underlay,
            routed(&frame, cfg.underlay_mac, NODE2_UNDERLAY_MAC)
        )]
    );

    // Plain frames from node 2's MAC, by source and destination.
    let plain_from_node2 = |src: &str, dst: &str| {
        udp_frame(
            NODE2_UNDERLAY_MAC,
            cfg.underlay_mac,
            src,
            dst,
            63,
            true,
            100,
        )
    };
    // From a pod of node 2, and from node 2 itself, from its own address
    // (a process there bound to it), as the kernel's host-gw route
    // carries both.
    for src in ["10.244.2.5", "192.168.100.2"] {
        let back = plain_from_node2(src, "10.244.1.2");
        assert_eq!(
            node.send(node.underlay, back.clone()),
            vec![(bb1, routed(&back, cfg.gateway_mac, BUSYBOX1_MAC))],
            "from {src}"
        );
    }
    // Not accepted: a source no host-gw peer owns, another address on
    // the underlay (no peer), and node 2's own address to the node's
    // gateway address, which is the kernel's (it takes its own addresses
    // on the underlay too).
    for (src, dst) in [
        ("10.244.9.5", "10.244.1.2"),
        ("192.168.100.9", "10.244.1.2"),
        ("192.168.100.2", "10.244.1.1"),
    ] {
        node.expect_drop(
            node.underlay,
            plain_from_node2(src, dst),
            DropReason::NotTunnel,
        );
    }
}

/// DirectRouting: host-gw for a peer on our underlay subnet, VXLAN otherwise.
#[test]
fn directrouting_picks_host_gw_on_the_same_subnet_and_vxlan_across() {
    let mut config = NodeConfig::flannel("node1", "10.244.1.0/24".parse().unwrap(), NODE1_UNDERLAY);
    config.backend = Backend::DirectRouting;
    config.underlay_prefix_len = 25; // 192.168.100.0/25: .2 is near, .130 is not
    let mut node = Node::new(config);
    let bb1 = node.pod("veth-bb1", "10.244.1.2", BUSYBOX1_MAC);
    let near = node.peer(
        "node2",
        NODE2_UNDERLAY,
        NODE2_UNDERLAY_MAC,
        "10.244.2.0/24",
        Backend::DirectRouting,
    );
    let far_ip = ip("192.168.100.130");
    let far = node.peer(
        "node3",
        far_ip,
        MacAddr([2, 0, 0xc0, 0xa8, 0x64, 0x82]),
        "10.244.3.0/24",
        Backend::DirectRouting,
    );
    let snap = node.tables.load();
    assert_eq!(
        snap.fib.lookup(ip("10.244.2.9")),
        Some(NextHop::Direct(near))
    );
    assert_eq!(snap.fib.lookup(ip("10.244.3.9")), Some(NextHop::Peer(far)));
    let cfg = snap.node.clone();

    let to_near = udp_frame(
        BUSYBOX1_MAC,
        cfg.gateway_mac,
        "10.244.1.2",
        "10.244.2.9",
        64,
        false,
        50,
    );
    assert_eq!(
        node.send(bb1, to_near.clone()),
        vec![(
            node.underlay,
            routed(&to_near, cfg.underlay_mac, NODE2_UNDERLAY_MAC)
        )]
    );

    let to_far = udp_frame(
        BUSYBOX1_MAC,
        cfg.gateway_mac,
        "10.244.1.2",
        "10.244.3.9",
        64,
        false,
        50,
    );
    let out = node.send(bb1, to_far);
    assert_eq!(out.len(), 1);
    let mut outer = out[0].1.clone();
    let d = Decapsulator::new(DecapConfig::for_tunnel(&TunnelConfig::vxlan()))
        .decapsulate_frame(&mut outer)
        .unwrap();
    assert_eq!((d.mode, d.outer_dst), (TunnelMode::Vxlan, far_ip));
}

// ---- Calico, proxy-ARP mode ------------------------------------------------

fn calico_node() -> (Node, support::Ports) {
    let config = NodeConfig::calico("node1", "10.244.1.64/26".parse().unwrap(), NODE1_UNDERLAY);
    let node = Node::new(config);
    let a = node.pod("cali16cfa08a6f9", "10.244.1.65", BUSYBOX1_MAC);
    let b = node.pod("caliae3c1d6879e", "10.244.1.66", BUSYBOX2_MAC);
    node.peer(
        "node2",
        NODE2_UNDERLAY,
        NODE2_UNDERLAY_MAC,
        "10.244.2.64/26",
        Backend::Ipip,
    );
    (node, support::Ports { a, b })
}

#[test]
fn calico_proxy_arp_answers_everything_but_the_pods_own_address() {
    let (mut node, pods) = calico_node();
    assert_eq!(node.tables.load().node.gateway_mode, GatewayMode::ProxyArp);
    for target in ["169.254.1.1", "10.244.1.66", "10.244.2.70", "8.8.8.8"] {
        let out = node.send(pods.a, arp_request(BUSYBOX1_MAC, "10.244.1.65", target));
        assert_eq!(
            out,
            vec![(
                pods.a,
                arp_reply(PROXY_ARP_MAC, target, BUSYBOX1_MAC, "10.244.1.65")
            )],
            "{target}"
        );
    }
    node.expect_drop(
        pods.a,
        arp_request(BUSYBOX1_MAC, "10.244.1.65", "10.244.1.65"),
        DropReason::NotSwitched,
    );
    node.expect_drop(
        pods.a,
        arp_request(BUSYBOX1_MAC, "0.0.0.0", "10.244.1.65"),
        DropReason::NotSwitched,
    );
}

#[test]
fn calico_same_node_is_routed_through_slash32s() {
    let (mut node, pods) = calico_node();
    let frame = ping_frame(
        BUSYBOX1_MAC,
        PROXY_ARP_MAC,
        "10.244.1.65",
        "10.244.1.66",
        64,
    );
    assert_eq!(
        node.send(pods.a, frame.clone()),
        vec![(pods.b, routed(&frame, PROXY_ARP_MAC, BUSYBOX2_MAC))]
    );
    // No L2 between pods: a frame to the other pod's MAC goes nowhere.
    let l2 = ping_frame(BUSYBOX1_MAC, BUSYBOX2_MAC, "10.244.1.65", "10.244.1.66", 64);
    node.expect_drop(pods.a, l2, DropReason::NotSwitched);
}

#[test]
fn calico_ipip_cross_node() {
    let (mut node, pods) = calico_node();
    let cfg = node.tables.load().node.clone();
    let frame = udp_frame(
        BUSYBOX1_MAC,
        PROXY_ARP_MAC,
        "10.244.1.65",
        "10.244.2.70",
        64,
        true,
        200,
    );
    let inner = routed(&frame, PROXY_ARP_MAC, PROXY_ARP_MAC);
    let expected = encapsulate(TunnelConfig::ipip(), &path_to_node2(&node), &inner, 1);
    let out = node.send(pods.a, frame);
    assert_eq!(out, vec![(node.underlay, expected.clone())]);
    assert_eq!(expected[23], 4, "outer protocol 4");
    assert_eq!(
        expected[22], 63,
        "outer TTL inherited from the routed inner packet"
    );

    let back = udp_frame(
        MacAddr::ZERO,
        MacAddr::ZERO,
        "10.244.2.70",
        "10.244.1.65",
        64,
        true,
        200,
    );
    let out = node.send(
        node.underlay,
        from_node2(&node, TunnelConfig::ipip(), &back),
    );
    let mut expected_in = routed(&back, PROXY_ARP_MAC, BUSYBOX1_MAC);
    expected_in[6..12].copy_from_slice(&cfg.gateway_mac.0);
    assert_eq!(out, vec![(pods.a, expected_in)]);
}

#[test]
fn unassigned_address_in_the_block_is_blackholed() {
    let (mut node, pods) = calico_node();
    let frame = ping_frame(
        BUSYBOX1_MAC,
        PROXY_ARP_MAC,
        "10.244.1.65",
        "10.244.1.67",
        64,
    );
    node.expect_drop(pods.a, frame, DropReason::Blackhole);
}

// ---- failures ----------------------------------------------------------------

/// An address of a flannel node's own pod subnet that no pod has: the
/// kernel's node forwards the packet to cni0, its ARP goes unanswered, and
/// it answers Host Unreachable from the address of the way back (cni0's
/// 10.244.1.1 to its own pods, flannel.1's 10.244.1.0 into the tunnel).
/// podswitch knows at once that no pod has it and answers alike.
#[test]
fn an_address_no_pod_has_gets_host_unreachable_from_the_way_back() {
    let (mut node, bb1) = Node::flannel_with_peer(Backend::Vxlan);
    let cfg = node.tables.load().node.clone();
    let unreachable = |frame: &[u8]| {
        let ip4 = Ipv4Packet::new_checked(frame).unwrap();
        ip4.verify_checksum().unwrap();
        let icmp = Icmpv4Packet::new_checked(ip4.payload()).unwrap();
        assert!(icmp.checksum_ok());
        assert_eq!(
            (icmp.msg_type(), icmp.code()),
            (Icmpv4Type::DestUnreachable, 1)
        );
        (ip4.src(), ip4.dst(), icmp.data().to_vec())
    };

    // From a pod of the node: the quote carries the TTL the node forwarded
    // it with, as the kernel's does (ip_forward decrements it first).
    let ping = ping_frame(
        BUSYBOX1_MAC,
        cfg.gateway_mac,
        "10.244.1.2",
        "10.244.1.77",
        64,
    );
    let out = node.send(bb1, ping.clone());
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].0, bb1);
    let (src, dst, quote) = unreachable(&out[0].1[14..]);
    assert_eq!((src, dst), (ip("10.244.1.1"), ip("10.244.1.2")));
    let mut forwarded = ping[14..14 + 28].to_vec();
    Ipv4Packet::new_unchecked(&mut forwarded[..]).decrement_ttl();
    assert_eq!(quote, forwarded);
    assert_eq!(node.stats().drop_count(DropReason::NoPod), 1);

    // From a pod of node 2, through the tunnel: the answer goes back in it.
    let from_far = ping_frame(NODE2_VTEP, cfg.vtep_mac, "10.244.2.5", "10.244.1.77", 64);
    let out = node.send(
        node.underlay,
        from_node2(&node, TunnelConfig::vxlan(), &from_far),
    );
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].0, node.underlay);
    let mut outer = out[0].1.clone();
    let d = Decapsulator::new(DecapConfig::for_tunnel(&TunnelConfig::vxlan()))
        .decapsulate_frame(&mut outer)
        .unwrap();
    assert_eq!(d.outer_dst, NODE2_UNDERLAY);
    let (src, dst, _) = unreachable(&outer[d.inner_range.start + 14..d.inner_range.end]);
    assert_eq!((src, dst), (ip("10.244.1.0"), ip("10.244.2.5")));
    assert_eq!(node.stats().drop_count(DropReason::NoPod), 2);

    // TTL 1 expires before it could be delivered: Time Exceeded instead.
    let out = node.send(
        bb1,
        ping_frame(
            BUSYBOX1_MAC,
            cfg.gateway_mac,
            "10.244.1.2",
            "10.244.1.77",
            1,
        ),
    );
    let ip4 = Ipv4Packet::new_checked(&out[0].1[14..]).unwrap();
    let icmp = Icmpv4Packet::new_checked(ip4.payload()).unwrap();
    assert_eq!(icmp.msg_type(), Icmpv4Type::TimeExceeded);
    assert_eq!(node.stats().drop_count(DropReason::NoPod), 2);

    // The subnet's broadcast address gets no error (RFC 1812 §4.3.2.7),
    // and neither does an address of a route an operator blackholed.
    node.tables
        .add_route("10.244.1.64/27".parse().unwrap(), NextHop::Blackhole)
        .unwrap();
    for silent in ["10.244.1.255", "10.244.1.70"] {
        let ping = ping_frame(BUSYBOX1_MAC, cfg.gateway_mac, "10.244.1.2", silent, 64);
        node.expect_drop(bb1, ping, DropReason::Blackhole);
    }
    assert_eq!(node.stats().drop_count(DropReason::NoPod), 2);
}

#[test]
fn ttl_expiry_sends_time_exceeded() {
    let (mut node, bb1) = Node::flannel_with_peer(Backend::Vxlan);
    let cfg = node.tables.load().node.clone();
    let frame = ping_frame(BUSYBOX1_MAC, cfg.gateway_mac, "10.244.1.2", "10.244.2.5", 1);
    let out = node.send(bb1, frame.clone());
    assert_eq!(out.len(), 1, "{out:?}");
    let (port, icmp_frame) = &out[0];
    assert_eq!(*port, bb1);
    assert_eq!(&icmp_frame[0..6], &BUSYBOX1_MAC.0);
    let ip4 = Ipv4Packet::new_checked(&icmp_frame[14..]).unwrap();
    ip4.verify_checksum().unwrap();
    assert_eq!((ip4.src(), ip4.dst()), (ip("10.244.1.1"), ip("10.244.1.2")));
    let icmp = Icmpv4Packet::new_checked(ip4.payload()).unwrap();
    assert_eq!(
        (icmp.msg_type(), icmp.code()),
        (Icmpv4Type::TimeExceeded, 0)
    );
    assert!(icmp.checksum_ok());
    assert_eq!(
        icmp.data(),
        &frame[14..14 + 28],
        "quotes the IP header and 8 bytes"
    );
    assert_eq!(node.stats().drop_count(DropReason::TtlExpired), 1);
    // TTL 0 likewise.
    let out = node.send(
        bb1,
        ping_frame(BUSYBOX1_MAC, cfg.gateway_mac, "10.244.1.2", "10.244.2.5", 0),
    );
    assert_eq!(out.len(), 1);
    assert_eq!(node.stats().drop_count(DropReason::TtlExpired), 2);
}

#[test]
fn df_over_the_tunnel_mtu_gets_fragmentation_needed() {
    let (mut node, bb1) = Node::flannel_with_peer(Backend::Vxlan);
    let gw = node.tables.load().node.gateway_mac;
    // 1450 bytes of IP fit (ping -s 1422); 1451 do not.
    let fits = udp_frame(
        BUSYBOX1_MAC,
        gw,
        "10.244.1.2",
        "10.244.2.5",
        64,
        true,
        1450 - 28,
    );
    assert_eq!(node.send(bb1, fits)[0].0, node.underlay);
    let big = udp_frame(
        BUSYBOX1_MAC,
        gw,
        "10.244.1.2",
        "10.244.2.5",
        64,
        true,
        1451 - 28,
    );
    let out = node.send(bb1, big);
    assert_eq!(out.len(), 1);
    let ip4 = Ipv4Packet::new_checked(&out[0].1[14..]).unwrap();
    let icmp = Icmpv4Packet::new_checked(ip4.payload()).unwrap();
    assert_eq!(
        (icmp.msg_type(), icmp.code(), icmp.next_hop_mtu()),
        (Icmpv4Type::DestUnreachable, 4, 1450)
    );
    assert_eq!(node.stats().drop_count(DropReason::FragmentationNeeded), 1);
    let no_df = udp_frame(
        BUSYBOX1_MAC,
        gw,
        "10.244.1.2",
        "10.244.2.5",
        64,
        false,
        1451 - 28,
    );
    node.expect_drop(bb1, no_df, DropReason::TooBigNoDf);
}

#[test]
fn spoofed_sources_are_dropped_unless_anti_spoofing_is_off() {
    let mut node = Node::flannel(Backend::Vxlan);
    let bb1 = node.pod("veth-bb1", "10.244.1.2", BUSYBOX1_MAC);
    let _bb2 = node.pod("veth-bb2", "10.244.1.3", BUSYBOX2_MAC);
    let gw = node.tables.load().node.gateway_mac;
    node.expect_drop(
        bb1,
        ping_frame(BUSYBOX1_MAC, gw, "10.244.1.99", "10.244.1.3", 64),
        DropReason::SpoofedSourceIp,
    );
    node.expect_drop(
        bb1,
        ping_frame(BUSYBOX2_MAC, gw, "10.244.1.2", "10.244.1.3", 64),
        DropReason::SpoofedSourceMac,
    );
    node.expect_drop(
        bb1,
        arp_request(BUSYBOX1_MAC, "10.244.1.3", "10.244.1.1"),
        DropReason::SpoofedSourceIp,
    );
    // An ARP whose sender MAC field is not the pod's, in an honest frame.
    let mut forged = arp_request(BUSYBOX1_MAC, "10.244.1.2", "10.244.1.1");
    forged[22..28].copy_from_slice(&BUSYBOX2_MAC.0);
    node.expect_drop(bb1, forged, DropReason::SpoofedSourceMac);

    let mut spec = podswitch_engine::tables::PortSpec::pod(
        "veth-free",
        ip("10.244.1.9"),
        MacAddr([2, 9, 9, 9, 9, 9]),
    );
    spec.anti_spoof = false;
    let free = node.tables.attach_port(spec).unwrap();
    let out = node.send(
        free,
        ping_frame(
            MacAddr([2, 9, 9, 9, 9, 9]),
            gw,
            "10.244.1.99",
            "10.244.1.3",
            64,
        ),
    );
    assert_eq!(out.len(), 1, "anti-spoofing off: forwarded");
}

/// A pod's egress limit is applied by its worker before the pipeline
/// (worker::shaper); the pipeline leaves it alone, and a trace says
/// whether a frame would leave at once without drawing on the bucket.
#[test]
fn a_trace_tells_a_pods_egress_limit_without_spending_it() {
    use podswitch_engine::egress_limit::{Departure, RateLimit};
    use podswitch_engine::trace::Step;
    use std::time::{Duration, Instant};

    let mut node = Node::flannel(Backend::Vxlan);
    let bb2 = node.pod("veth-bb2", "10.244.1.3", BUSYBOX2_MAC);
    let gw = node.tables.load().node.gateway_mac;
    let frame = ping_frame(BUSYBOX1_MAC, gw, "10.244.1.2", "10.244.1.3", 64);
    // One frame's worth of burst, then a byte a second.
    let mut spec =
        podswitch_engine::tables::PortSpec::pod("veth-bb1", ip("10.244.1.2"), BUSYBOX1_MAC);
    spec.egress_limit = Some(RateLimit {
        bytes_per_sec: 1,
        burst_bytes: frame.len() as u64,
    });
    let bb1 = node.tables.attach_port(spec).unwrap();
    let conforms = |trace: &podswitch_engine::trace::TraceResult| {
        trace.steps.iter().find_map(|s| match s {
            Step::EgressLimit { conforms } => Some(*conforms),
            _ => None,
        })
    };
    for _ in 0..5 {
        let trace = node.pipeline.trace(&frame, bb1, node.now);
        assert_eq!(conforms(&trace), Some(true), "{trace}");
        assert_eq!(trace.outputs.len(), 1, "{trace}");
    }
    let bucket = node
        .tables
        .load()
        .ports
        .get(bb1)
        .unwrap()
        .bucket
        .clone()
        .unwrap();
    let len = frame.len() as u64;
    assert_eq!(
        bucket.schedule(len, Instant::now(), Duration::ZERO),
        Departure::Now,
        "the traces spent nothing"
    );
    let trace = node.pipeline.trace(&frame, bb1, node.now);
    assert_eq!(conforms(&trace), Some(false), "{trace}");
    assert!(trace.to_string().contains("holds the frame"), "{trace}");
    assert_eq!(trace.outputs.len(), 1, "where it goes once it leaves");
    // The pipeline itself forwards: the waiting is the worker's.
    assert_eq!(node.run(&vec![(bb1, frame.clone()); 3]).len(), 3);
    // A pod without a limit has no such step.
    let back = ping_frame(BUSYBOX2_MAC, gw, "10.244.1.3", "10.244.1.2", 64);
    let trace = node.pipeline.trace(&back, bb2, node.now);
    assert_eq!(conforms(&trace), None, "{trace}");
}

#[test]
fn unknown_vni_and_unknown_peer_are_dropped() {
    let (mut node, _bb1) = Node::flannel_with_peer(Backend::Vxlan);
    let cfg = node.tables.load().node.clone();
    let inner = ping_frame(NODE2_VTEP, cfg.vtep_mac, "10.244.2.5", "10.244.1.2", 64);
    let vni2 = TunnelConfig {
        vni: podswitch_engine::encap::Vni::new(2).unwrap(),
        ..TunnelConfig::vxlan()
    };
    node.expect_drop(
        node.underlay,
        from_node2(&node, vni2, &inner),
        DropReason::UnknownVni,
    );

    // From 192.168.100.9, which is no peer: the overlay-injection class.
    let stranger = OuterPath {
        src_mac: NODE2_UNDERLAY_MAC,
        dst_mac: cfg.underlay_mac,
        src_ip: ip("192.168.100.9"),
        dst_ip: NODE1_UNDERLAY,
    };
    node.expect_drop(
        node.underlay,
        encapsulate(TunnelConfig::vxlan(), &stranger, &inner, 1),
        DropReason::UnknownPeer,
    );

    // A known peer carrying a source outside its pod subnet.
    let forged = ping_frame(NODE2_VTEP, cfg.vtep_mac, "10.244.1.50", "10.244.1.2", 64);
    node.expect_drop(
        node.underlay,
        from_node2(&node, TunnelConfig::vxlan(), &forged),
        DropReason::SpoofedTunnelSource,
    );
    // Node 2 itself may send from its own address (a process there bound
    // to it), as through flannel.1; not from another node's.
    let from_node2_itself = ping_frame(NODE2_VTEP, cfg.vtep_mac, "192.168.100.2", "10.244.1.2", 64);
    let out = node.send(
        node.underlay,
        from_node2(&node, TunnelConfig::vxlan(), &from_node2_itself),
    );
    assert_eq!(out.len(), 1, "delivered to the pod");
    let from_node3 = ping_frame(NODE2_VTEP, cfg.vtep_mac, "192.168.100.3", "10.244.1.2", 64);
    node.expect_drop(
        node.underlay,
        from_node2(&node, TunnelConfig::vxlan(), &from_node3),
        DropReason::SpoofedTunnelSource,
    );
    // A known peer sending IPIP while configured for VXLAN is not decapsulated.
    node.expect_drop(
        node.underlay,
        from_node2(&node, TunnelConfig::ipip(), &inner),
        DropReason::NotTunnel,
    );
}

#[test]
fn host_port_reaches_pods_and_pods_reach_the_host() {
    let mut node = Node::flannel(Backend::Vxlan);
    let bb1 = node.pod("veth-bb1", "10.244.1.2", BUSYBOX1_MAC);
    let gw = node.tables.load().node.gateway_mac;
    // curl <pod IP> from the node: TTL untouched (the node is not forwarding).
    let from_host = udp_frame(gw, gw, "192.168.100.1", "10.244.1.2", 64, true, 20);
    let mut expected = from_host.clone();
    expected[0..6].copy_from_slice(&BUSYBOX1_MAC.0);
    let out = node.send(node.host, from_host);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, bb1);
    assert_eq!(out[0].1, expected);
    // The pod pings its gateway (cni0's address): delivered to the host.
    let out = node.send(
        bb1,
        ping_frame(BUSYBOX1_MAC, gw, "10.244.1.2", "10.244.1.1", 64),
    );
    assert_eq!(out[0].0, node.host);
}

/// A pod's connection to a Service, which the node's kernel turned
/// towards a backend (kube-proxy's DNAT) and sent into the host port: the
/// backend's replies go back to the host port, whose conntrack turns the
/// Service's address back, whether the backend switches them to its
/// client on the bridge or another node's backend sends them through the
/// tunnel. Other connections between the same pods go straight.
#[test]
fn replies_of_a_connection_the_host_port_handed_on_go_back_through_it() {
    let (mut node, bb1) = Node::flannel_with_peer(Backend::Vxlan);
    let bb2 = node.pod("veth-bb2", "10.244.1.3", BUSYBOX2_MAC);
    let cfg = node.tables.load().node.clone();
    let gw = cfg.gateway_mac;
    let client = ("10.244.1.2", 40000);
    let local_backend = ("10.244.1.3", 8080);
    let remote_backend = ("10.244.2.5", 8080);

    // The request, after the DNAT: to the backend, TTL untouched.
    let request = udp_datagram(gw, BUSYBOX2_MAC, client, local_backend, 63, true, 20);
    let out = node.send(node.host, request.clone());
    assert_eq!(out, vec![(bb2, request)]);
    // The backend answers on the segment (its client is on its subnet):
    // to the host port from and to the gateway MAC, TTL untouched (the
    // kernel forwards it).
    let reply = udp_datagram(
        BUSYBOX2_MAC,
        BUSYBOX1_MAC,
        local_backend,
        client,
        64,
        true,
        20,
    );
    let to_host = with_macs(&reply, gw, gw);
    assert_eq!(node.send(bb2, reply.clone()), vec![(node.host, to_host)]);
    let trace = node.pipeline.trace(&reply, bb2, node.now);
    assert!(
        trace
            .steps
            .iter()
            .any(|s| matches!(s, Step::HostConnection { .. })),
        "{trace}"
    );
    // Another port of the client, and the client's own connection to the
    // backend: switched, bytes unchanged.
    for other in [
        udp_datagram(
            BUSYBOX2_MAC,
            BUSYBOX1_MAC,
            local_backend,
            ("10.244.1.2", 40001),
            64,
            true,
            20,
        ),
        udp_datagram(
            BUSYBOX2_MAC,
            BUSYBOX1_MAC,
            ("10.244.1.3", 40000),
            ("10.244.1.2", 8080),
            64,
            true,
            20,
        ),
    ] {
        assert_eq!(node.send(bb2, other.clone()), vec![(bb1, other)]);
    }

    // A backend on node 2: the request goes through the tunnel, the
    // reply comes back through it and goes to the host port.
    let request = udp_datagram(gw, gw, client, remote_backend, 63, true, 20);
    let out = node.send(node.host, request);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, node.underlay);
    let reply = udp_datagram(
        NODE2_VTEP,
        cfg.vtep_mac,
        remote_backend,
        client,
        63,
        true,
        20,
    );
    let to_host = with_macs(&reply, gw, gw);
    let encapsulated = from_node2(&node, TunnelConfig::vxlan(), &reply);
    assert_eq!(
        node.send(node.underlay, encapsulated),
        vec![(node.host, to_host)]
    );
    // Node 2's pod speaking first to the client is not a reply: delivered.
    let unsolicited = udp_datagram(
        NODE2_VTEP,
        cfg.vtep_mac,
        ("10.244.2.5", 8081),
        client,
        63,
        true,
        20,
    );
    let out = node.send(
        node.underlay,
        from_node2(&node, TunnelConfig::vxlan(), &unsolicited),
    );
    assert_eq!(out, vec![(bb1, routed(&unsolicited, gw, BUSYBOX1_MAC))]);

    // A client on node 2 (its packet to a NodePort of this node's,
    // translated here): the local backend's reply goes to the host port,
    // not into the tunnel.
    let remote_client = ("10.244.2.5", 41000);
    let request = udp_datagram(gw, BUSYBOX2_MAC, remote_client, local_backend, 63, true, 20);
    assert_eq!(node.send(node.host, request.clone()), vec![(bb2, request)]);
    let reply = udp_datagram(BUSYBOX2_MAC, gw, local_backend, remote_client, 64, true, 20);
    assert_eq!(
        node.send(bb2, reply.clone()),
        vec![(node.host, with_macs(&reply, gw, gw))]
    );
    assert_eq!(node.stats().total_drops(), 0);
    assert_eq!(
        node.tables.host_connections.len(),
        6,
        "three connections and their pairs"
    );
}

#[test]
fn trace_shows_every_decision_of_the_vxlan_path() {
    let (mut node, bb1) = Node::flannel_with_peer(Backend::Vxlan);
    let gw = node.tables.load().node.gateway_mac;
    let frame = ping_frame(BUSYBOX1_MAC, gw, "10.244.1.2", "10.244.2.5", 64);
    let trace = node.pipeline.trace(&frame, bb1, node.now);
    let text = trace.to_string();
    for expected in [
        "received 66 bytes on port 2",
        "fdb learn 0a:58:0a:f4:01:02 -> port 2 (not applied in a trace)",
        "classified: IPv4 to the gateway: routed",
        "fib lookup 10.244.2.5: 10.244.2.0/24 -> peer 0 (tunnel)",
        "peer 0 node2 at 192.168.100.2, vxlan tunnel",
        "ttl 64 -> 63",
        "encapsulate vxlan: 192.168.100.1 -> 192.168.100.2",
        "vni 1, 116 bytes",
        "output to port 0",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    assert_eq!(trace.outputs.len(), 1);
    assert!(matches!(trace.steps.last(), Some(Step::Output(_))));
    // A trace learns nothing, counts nothing, sends nothing.
    assert!(node.tables.fdb.is_empty());
    assert_eq!(node.stats().port(bb1).rx_packets, 0);
    let dropped = node.pipeline.trace(
        &ping_frame(BUSYBOX1_MAC, gw, "10.244.1.2", "10.244.1.77", 64),
        bb1,
        node.now,
    );
    assert_eq!(dropped.steps.last(), Some(&Step::Drop(DropReason::NoPod)));
}

/// Neighbours are configured with the port, and learned from ARP: a pod
/// that answers for a second address (anti-spoofing off) is reached there.
#[test]
fn neighbours_are_learned_from_arp() {
    let mut node = Node::flannel(Backend::Vxlan);
    let mut spec =
        podswitch_engine::tables::PortSpec::pod("veth-multi", ip("10.244.1.2"), BUSYBOX1_MAC);
    spec.anti_spoof = false;
    let multi = node.tables.attach_port(spec).unwrap();
    let bb2 = node.pod("veth-bb2", "10.244.1.3", BUSYBOX2_MAC);
    node.tables
        .add_route("10.244.1.200/32".parse().unwrap(), NextHop::Local(multi))
        .unwrap();
    let second_mac = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0xc8]);
    assert_eq!(node.tables.load().neighbours.get(&ip("10.244.1.200")), None);
    // A gratuitous ARP announces 10.244.1.200 at another MAC.
    let garp = {
        let mut f = arp_request(second_mac, "10.244.1.200", "10.244.1.200");
        f[6..12].copy_from_slice(&second_mac.0);
        f
    };
    let fib_before = node.tables.snapshot().fib.clone();
    node.send(multi, garp);
    assert!(
        std::sync::Arc::ptr_eq(&fib_before, &node.tables.snapshot().fib),
        "learning a neighbour publishes a snapshot without copying or rebuilding the FIB"
    );
    let n = node
        .tables
        .load()
        .neighbours
        .get(&ip("10.244.1.200"))
        .copied()
        .unwrap();
    assert_eq!((n.mac, n.port, n.learned), (second_mac, multi, true));
    // Routed traffic to that address now uses the learned MAC.
    let gw = node.tables.load().node.gateway_mac;
    let frame = ping_frame(BUSYBOX2_MAC, gw, "10.244.1.3", "10.244.1.200", 64);
    assert_eq!(
        node.send(bb2, frame.clone()),
        vec![(multi, routed(&frame, gw, second_mac))]
    );
    // A configured neighbour is never overwritten by ARP.
    node.send(multi, arp_request(second_mac, "10.244.1.2", "10.244.1.1"));
    assert_eq!(
        node.tables
            .load()
            .neighbours
            .get(&ip("10.244.1.2"))
            .unwrap()
            .mac,
        BUSYBOX1_MAC
    );
}

/// Counters match the traffic, also when outputs pile up over several
/// `process` calls before the caller sends them.
#[test]
fn counters_match_the_traffic() {
    use podswitch_engine::pipeline::Outputs;
    let mut node = Node::flannel(Backend::Vxlan);
    let bb1 = node.pod("veth-bb1", "10.244.1.2", BUSYBOX1_MAC);
    let bb2 = node.pod("veth-bb2", "10.244.1.3", BUSYBOX2_MAC);
    node.tables.fdb.learn(BUSYBOX2_MAC, bb2, node.now);
    let frame = ping_frame(BUSYBOX1_MAC, BUSYBOX2_MAC, "10.244.1.2", "10.244.1.3", 64);
    let mut out = Outputs::new();
    for _ in 0..3 {
        let mut batch = vec![
            node.pool.alloc_with(bb1, &frame).unwrap(),
            node.pool.alloc_with(bb1, &frame).unwrap(),
        ];
        node.pipeline
            .process(&mut batch, &mut node.pool, &mut out, node.now);
    }
    assert_eq!(out.len(), 6);
    let pool = &mut node.pool;
    out.drain(|_, b| pool.free_all(b));
    let s = node.stats();
    assert_eq!(s.port(bb1).rx_packets, 6);
    assert_eq!(s.port(bb1).rx_bytes, 6 * frame.len() as u64);
    assert_eq!(s.port(bb2).tx_packets, 6);
    assert_eq!(s.port(bb2).tx_bytes, 6 * frame.len() as u64);
    node.expect_drop(
        bb1,
        ping_frame(BUSYBOX1_MAC, BUSYBOX1_MAC, "10.244.1.2", "10.244.1.3", 64),
        DropReason::L2Hairpin,
    );
    assert_eq!(node.stats().port(bb1).drops, 1);
}
