//! The whole pipeline of one node: a frame arrives on a pod, underlay or
//! host port of a node with two pods, an underlay port, a host port and
//! peers, under every backend, and is switched, routed, encapsulated or
//! dropped; what leaves is then finished as an egress port would.
//!
//! Why: every byte a pod or the underlay sends reaches this code, and a
//! panic in it stops the node's data path. The in-memory node is the one
//! `engine/tests/support` and `benches/pipeline.rs` build.
//!
//! Input layout:
//!
//! - byte 0: the port the frame arrives on (`% 4`: pod 1, pod 2, underlay,
//!   host); bit 7 also runs the frame through `Pipeline::trace` (what
//!   `podswitchctl trace --hex` reaches over the control socket);
//! - byte 1: the node (`% 5`: the backend, vxlan, udp, ipip, host-gw or
//!   directrouting; bit 3: Calico's proxy-ARP gateway mode instead of
//!   flannel's bridge; bit 4: the frame comes with a 10-byte virtio-net
//!   header, bytes 2..12, as an AF_PACKET port receives a pod's TSO
//!   super-frames);
//! - the rest: the frame.
//!
//! Invariants: nothing panics; the frame leaves (on a port of the node) or
//! is counted as a drop under a reason (the pipeline's own drop counters);
//! a trace ends in an output or a drop step; every output whose offloads a
//! virtio-net header describes is accepted back by the same checks a port
//! applies on receive; finishing offloads in software gives segments whose
//! IPv4 lengths and header checksums are right; and every buffer returns
//! to the pool.
#![no_main]

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::rc::Rc;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use podswitch_engine::config::{Backend, NodeConfig};
use podswitch_engine::encap::checksum;
use podswitch_engine::encap::{MacAddr, Vni};
use podswitch_engine::offload::{
    accept_vnet_header, finish_in_software, vnet_header_for, VnetHeader, VNET_HDR_LEN,
};
use podswitch_engine::packet::{PacketBuf, PacketPool, DEFAULT_BUF_SIZE};
use podswitch_engine::peer::PeerSpec;
use podswitch_engine::pipeline::{Outputs, Pipeline};
use podswitch_engine::port::PortId;
use podswitch_engine::tables::{PortSpec, Tables};
use podswitch_engine::trace::Step;

const POD1_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02]);
const POD2_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x03]);
const NODE2_MAC: MacAddr = MacAddr([0x02, 0x00, 0xc0, 0xa8, 0x64, 0x02]);
const NODE2_VTEP: MacAddr = MacAddr([0xd6, 0x8a, 0x5e, 0x47, 0x3c, 0x02]);
const NODE3_MAC: MacAddr = MacAddr([0x02, 0x00, 0xc0, 0xa8, 0xc8, 0x03]);
const NODE3_VTEP: MacAddr = MacAddr([0xd6, 0x8a, 0x5e, 0x47, 0x3c, 0x03]);
const NOW: u32 = 1000;

const BACKENDS: [Backend; 5] = [
    Backend::Vxlan,
    Backend::Udp,
    Backend::Ipip,
    Backend::HostGw,
    Backend::DirectRouting,
];

struct Node {
    tables: Arc<Tables>,
    /// Pod 1, pod 2, underlay, host.
    ports: [PortId; 4],
    /// The tables' version once set up.
    version: u64,
}

thread_local! {
    /// Nodes already set up, by backend and gateway mode: setting one up
    /// publishes a snapshot per port and peer, which costs more than a
    /// frame. A node whose tables a frame changed (a neighbour learned
    /// from ARP) is set up anew for the next input, and its FDB is reset
    /// before each, so that an input does the same thing whatever ran
    /// before it.
    static NODES: RefCell<HashMap<(usize, bool), Rc<Node>>> = RefCell::default();
    static POOL: RefCell<PacketPool> =
        RefCell::new(PacketPool::with_large(64, DEFAULT_BUF_SIZE, 8));
}

fn cached_node(backend: usize, proxy_arp: bool) -> Rc<Node> {
    let node = NODES.with_borrow_mut(|nodes| {
        Rc::clone(
            nodes
                .entry((backend, proxy_arp))
                .or_insert_with(|| Rc::new(node(BACKENDS[backend], proxy_arp))),
        )
    });
    node.tables.fdb.flush();
    node.tables.fdb.learn(POD2_MAC, node.ports[1], NOW);
    node
}

/// node1 (10.244.1.0/24, or Calico's 10.244.1.64/26, underlay
/// 192.168.100.1/24) with pods .2 and .3 (.65 and .66), node2 on the
/// underlay subnet and node3 beyond it (DirectRouting's two cases).
fn node(backend: Backend, proxy_arp: bool) -> Node {
    let underlay_ip = Ipv4Addr::new(192, 168, 100, 1);
    let (mut config, pods, peer_cidrs) = if proxy_arp {
        (
            NodeConfig::calico("node1", "10.244.1.64/26".parse().unwrap(), underlay_ip),
            ["10.244.1.65", "10.244.1.66"],
            ["10.244.2.64/26", "10.244.3.64/26"],
        )
    } else {
        (
            NodeConfig::flannel("node1", "10.244.1.0/24".parse().unwrap(), underlay_ip),
            ["10.244.1.2", "10.244.1.3"],
            ["10.244.2.0/24", "10.244.3.0/24"],
        )
    };
    config.backend = backend;
    let tables = Tables::new(config, 16);
    let underlay = tables.attach_port(PortSpec::underlay("eth0")).unwrap();
    let host = tables.attach_port(PortSpec::host("podswitch0")).unwrap();
    let pod1 = tables
        .attach_port(PortSpec::pod("veth1", pods[0].parse().unwrap(), POD1_MAC))
        .unwrap();
    let pod2 = tables
        .attach_port(PortSpec::pod("veth2", pods[1].parse().unwrap(), POD2_MAC))
        .unwrap();
    let peers = [
        (
            "node2",
            Ipv4Addr::new(192, 168, 100, 2),
            NODE2_MAC,
            NODE2_VTEP,
        ),
        (
            "node3",
            Ipv4Addr::new(192, 168, 200, 3),
            NODE3_MAC,
            NODE3_VTEP,
        ),
    ];
    for ((name, ip, mac, vtep), cidr) in peers.into_iter().zip(peer_cidrs) {
        // host-gw refuses a peer off the underlay subnet: node3 is then
        // simply not there.
        let _ = tables.add_peer(PeerSpec {
            name: name.into(),
            underlay_ip: ip,
            underlay_mac: mac,
            pod_cidr: cidr.parse().unwrap(),
            backend,
            vni: Vni::FLANNEL,
            vtep_mac: vtep,
        });
    }
    let version = tables.load().version;
    Node {
        tables,
        ports: [pod1, pod2, underlay, host],
        version,
    }
}

/// Checks what a port that cannot take offloads sends: every segment's
/// IPv4 header (the outer one of an encapsulated frame) is complete.
fn check_finished(frame: &[u8]) {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    assert_eq!(total, ip.len(), "a segment's IPv4 total length is wrong");
    if ihl >= 20 && ihl <= ip.len() {
        assert_eq!(
            checksum::checksum(&ip[..ihl]),
            0,
            "a segment's IPv4 header checksum does not verify"
        );
    }
}

/// What an egress port does with a frame, then gives every buffer back.
fn egress(buf: PacketBuf, pool: &mut PacketPool) {
    if buf.offload().is_none() {
        pool.free(buf);
        return;
    }
    // A port with virtio-net headers (AF_PACKET, TAP) hands it on whole:
    // what it says must pass the checks a receiving port makes.
    if let Some(hdr) = vnet_header_for(&buf) {
        let mut again = pool
            .alloc_with(buf.in_port, buf.frame())
            .expect("the pool keeps a buffer for the check");
        let accepted = accept_vnet_header(&mut again, &hdr);
        pool.free(again);
        assert!(
            accepted.is_ok(),
            "the virtio-net header {hdr:?} a port would send is refused: {accepted:?}"
        );
    }
    // A port without (AF_XDP, the socket underlay) finishes it in software.
    let mut sent = Vec::new();
    let finished = finish_in_software(buf, pool, &mut sent);
    let had_segmented = matches!(
        finished,
        Ok(podswitch_engine::offload::Finished::Segmented(_))
    );
    for seg in sent.drain(..) {
        if had_segmented {
            check_finished(seg.frame());
        }
        pool.free(seg);
    }
}

fuzz_target!(|data: &[u8]| {
    let [select, node_byte, rest @ ..] = data else {
        return;
    };
    let backend = usize::from(node_byte % 5);
    let proxy_arp = node_byte & 0x08 != 0;
    let with_vnet = node_byte & 0x10 != 0;
    let (vnet, frame) = if with_vnet {
        if rest.len() < VNET_HDR_LEN {
            return;
        }
        let (h, f) = rest.split_at(VNET_HDR_LEN);
        (Some(VnetHeader::parse(h.try_into().unwrap())), f)
    } else {
        (None, rest)
    };

    let node = cached_node(backend, proxy_arp);
    let in_port = node.ports[usize::from(select % 4)];
    let mut pipeline = Pipeline::new(Arc::clone(&node.tables));

    if select & 0x80 != 0 && frame.len() <= 65_536 + 14 {
        let traced = pipeline.trace(frame, in_port, NOW);
        assert!(
            !traced.outputs.is_empty() || traced.steps.iter().any(|s| matches!(s, Step::Drop(_))),
            "a trace ends in neither an output nor a drop: {traced}"
        );
    }

    POOL.with_borrow_mut(|pool| run(&node, &mut pipeline, pool, in_port, vnet, frame));
    if node.tables.load().version != node.version {
        NODES.with_borrow_mut(|nodes| nodes.remove(&(backend, proxy_arp)));
    }
});

/// The frame through `process`, as a worker runs it, and out through
/// [`egress`].
fn run(
    node: &Node,
    pipeline: &mut Pipeline,
    pool: &mut PacketPool,
    in_port: PortId,
    vnet: Option<VnetHeader>,
    frame: &[u8],
) {
    let Some(mut buf) = pool.alloc_with(in_port, frame) else {
        return; // longer than a super-frame buffer: no port receives it
    };
    if let Some(hdr) = vnet {
        // As AF_PACKET's receive: a header its checks refuse is a drop
        // there, before the pipeline.
        if accept_vnet_header(&mut buf, &hdr).is_err() {
            pool.free(buf);
            return;
        }
    }
    let drops_before = node.tables.stats.snapshot().total_drops();
    let mut batch = vec![buf];
    let mut out = Outputs::new();
    pipeline.process(&mut batch, pool, &mut out, NOW);
    assert!(batch.is_empty(), "process leaves frames in the batch");
    let drops = node.tables.stats.snapshot().total_drops() - drops_before;

    let mut sent = 0;
    let mut leaving = Vec::new();
    out.drain(|port, frames| {
        assert!(
            node.ports.contains(&port),
            "a frame leaves on port {port:?}, which the node does not have"
        );
        sent += frames.len();
        leaving.append(frames);
    });
    for buf in leaving {
        egress(buf, pool);
    }
    assert!(
        sent + drops as usize >= 1,
        "the frame neither left nor was counted as a drop"
    );
    assert_eq!(pool.in_use(), 0, "buffers leaked");
}
