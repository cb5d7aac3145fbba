//! podswitch against a live Linux vxlan device, built for this test in
//! fresh network namespaces (needs root; CI has it).
//!
//! Node 1 (`kernel`) runs the kernel's flannel configuration: flannel.1 as
//! a vxlan device with VNI 1 on port 8472, a static FDB and ARP entry for
//! node 2's VTEP and an onlink route to node 2's pod subnet. Node 2 (`peer`)
//! is where podswitch stands: a test capture and an AF_PACKET sender.
//!
//! Node 1 pings pod 10.244.2.5 behind node 2. podswitch decapsulates the
//! request the kernel sent, builds the echo reply, encapsulates it and puts
//! it on node 2's wire. `ping` on node 1 exits 0 only if the kernel's vxlan
//! device accepted podswitch's frame and delivered the inner packet.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::{require, veth, Capture, Netns};
use podswitch::kernel_flannel::{self, VxlanNode, VxlanPeer};
use podswitch_encap::checksum;
use podswitch_encap::{
    DecapConfig, Decapsulator, FrameBuf, Inner, MacAddr, OuterPath, Tunnel, TunnelConfig, Vni,
};

const NODE1_VTEP: &str = "42:88:6a:88:a9:3f";
const NODE2_VTEP: &str = "d6:8a:5e:47:3c:02";

/// Node 1 with the kernel's flannel VXLAN, node 2 bare; joined by a veth.
fn topology(udp_checksum: bool) -> (Netns, Netns) {
    let kernel = Netns::new("kernel");
    let peer = Netns::new("peer");
    veth(&kernel, "ul-a", &peer, "ul-b");
    kernel.ip(&["addr", "add", "192.168.100.1/24", "dev", "ul-a"]);
    peer.ip(&["addr", "add", "192.168.100.2/24", "dev", "ul-b"]);
    // A veth with TX checksum offload hands its peer the outer UDP checksum
    // unfinished (CHECKSUM_PARTIAL: the pseudo-header sum only). A NIC would
    // finish it; with offload off the kernel does, so the capture shows the
    // checksum that goes on a real wire.
    kernel.exec("ethtool", &["-K", "ul-a", "tx", "off"]);
    let node = VxlanNode {
        vtep: NODE1_VTEP,
        local_ip: "192.168.100.1",
        underlay: "ul-a",
        network: "10.244.1.0",
        udp_checksum: Some(udp_checksum),
    };
    kernel_flannel::vxlan_device(&kernel.name, &node).unwrap();
    let node2 = VxlanPeer {
        subnet: "10.244.2.0/24",
        vtep: NODE2_VTEP,
        public_ip: "192.168.100.2",
    };
    kernel_flannel::vxlan_peer(&kernel.name, &node2).unwrap();
    (kernel, peer)
}

/// Turns an inner echo request frame into the echo reply a pod would send.
fn echo_reply(request: &[u8]) -> Vec<u8> {
    let mut f = request.to_vec();
    let (dst, src) = (f[0..6].to_vec(), f[6..12].to_vec());
    f[0..6].copy_from_slice(&src);
    f[6..12].copy_from_slice(&dst);
    let (ip_src, ip_dst) = (f[26..30].to_vec(), f[30..34].to_vec());
    f[26..30].copy_from_slice(&ip_dst);
    f[30..34].copy_from_slice(&ip_src);
    f[22] = 64; // TTL of a fresh packet
    f[24..26].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f[34] = 0; // echo reply
    f[36..38].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(&f[34..]);
    f[36..38].copy_from_slice(&c.to_be_bytes());
    f
}

fn kernel_round_trip(udp_checksum: bool) {
    require(&["ip", "bridge", "tcpdump", "ping", "ethtool"]);
    let (kernel, peer) = topology(udp_checksum);
    let node1_mac = kernel.mac("ul-a");
    let node2_mac = peer.mac("ul-b");
    kernel.ip(&[
        "neigh",
        "replace",
        "192.168.100.2",
        "lladdr",
        &node2_mac.to_string(),
        "dev",
        "ul-a",
    ]);

    let capture = Capture::start(&peer, "ul-b", 1, "udp dst port 8472");
    let mut ping = kernel.spawn(
        "ping",
        &["-c", "1", "-W", "10", "-I", "10.244.1.0", "10.244.2.5"],
    );
    let frames = capture.finish(Duration::from_secs(10));

    // podswitch decapsulates what the kernel sent.
    let mut outer = frames[0].clone();
    let config = TunnelConfig {
        udp_checksum,
        ..TunnelConfig::vxlan()
    };
    let d = Decapsulator::new(DecapConfig::for_tunnel(&config))
        .decapsulate_frame(&mut outer)
        .expect("decapsulate kernel frame");
    assert_eq!(d.vni, Some(Vni::FLANNEL));
    assert_eq!(d.inner, Inner::Ethernet);
    assert_eq!(d.outer_src, Ipv4Addr::new(192, 168, 100, 1));
    let request = &outer[d.inner_range.clone()];
    assert_eq!(
        &request[0..6],
        &NODE2_VTEP.parse::<MacAddr>().unwrap().0,
        "inner dst is node 2's VTEP"
    );
    assert_eq!(&request[30..34], &[10, 244, 2, 5]);
    assert_eq!(request[34], 8, "an ICMP echo request");

    // podswitch encapsulates the reply towards node 1.
    let reply = echo_reply(request);
    let mut buf = vec![0u8; 64 + reply.len()];
    buf[64..].copy_from_slice(&reply);
    let mut frame = FrameBuf::new(&mut buf, 64, 64 + reply.len());
    let path = OuterPath {
        src_mac: node2_mac,
        dst_mac: node1_mac,
        src_ip: Ipv4Addr::new(192, 168, 100, 2),
        dst_ip: Ipv4Addr::new(192, 168, 100, 1),
    };
    Tunnel::new(config)
        .encapsulate(&path, &mut frame, 1)
        .expect("encapsulate");
    peer.send_raw("ul-b", &[frame.frame().to_vec()]);

    // The kernel accepted it: ping got its reply.
    common::wait_child(
        &mut ping,
        Duration::from_secs(15),
        "ping through the kernel's vxlan device",
    );
}

#[test]
fn kernel_vxlan_accepts_podswitch_frames_with_udp_checksum() {
    kernel_round_trip(true);
}

#[test]
fn kernel_vxlan_accepts_podswitch_frames_without_udp_checksum() {
    kernel_round_trip(false);
}
