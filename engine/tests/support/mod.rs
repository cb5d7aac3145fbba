//! A simulated node for scenario tests: tables, a pipeline, a pool and
//! in-memory ports; frames built with etherparse (an independent encoder),
//! so expected bytes do not come from podswitch's own code.

#![allow(dead_code, unreachable_pub)]

use std::net::Ipv4Addr;
use std::sync::Arc;

use etherparse::{IpNumber, Ipv4Header};
use podswitch_engine::config::{Backend, NodeConfig};
use podswitch_engine::drop::DropReason;
use podswitch_engine::encap::{FrameBuf, MacAddr, OuterPath, Tunnel, TunnelConfig, Vni};
use podswitch_engine::packet::{PacketPool, BATCH_SIZE, DEFAULT_BUF_SIZE};
use podswitch_engine::peer::{PeerId, PeerSpec};
use podswitch_engine::pipeline::{Outputs, Pipeline};
use podswitch_engine::port::PortId;
use podswitch_engine::stats::StatsSnapshot;
use podswitch_engine::tables::{PortSpec, Tables};

pub const NODE1_UNDERLAY: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
pub const NODE2_UNDERLAY: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);
pub const NODE2_UNDERLAY_MAC: MacAddr = MacAddr([0x02, 0x00, 0xc0, 0xa8, 0x64, 0x02]);
pub const NODE2_VTEP: MacAddr = MacAddr([0xd6, 0x8a, 0x5e, 0x47, 0x3c, 0x02]);
pub const BUSYBOX1_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02]);
pub const BUSYBOX2_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x03]);

pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// A node with an underlay port, a host port and pods.
pub struct Node {
    pub tables: Arc<Tables>,
    pub pipeline: Pipeline,
    pub pool: PacketPool,
    pub underlay: PortId,
    pub host: PortId,
    pub now: u32,
}

impl Node {
    pub fn new(config: NodeConfig) -> Node {
        let tables = Tables::new(config, 64);
        let underlay = tables.attach_port(PortSpec::underlay("eth0")).unwrap();
        let host = tables.attach_port(PortSpec::host("podswitch0")).unwrap();
        Node {
            pipeline: Pipeline::new(Arc::clone(&tables)),
            tables,
            pool: PacketPool::new(256, DEFAULT_BUF_SIZE),
            underlay,
            host,
            now: 1000,
        }
    }

    /// flannel node 1: 10.244.1.0/24, vxlan, bridge mode.
    pub fn flannel(backend: Backend) -> Node {
        let mut config =
            NodeConfig::flannel("node1", "10.244.1.0/24".parse().unwrap(), NODE1_UNDERLAY);
        config.backend = backend;
        Node::new(config)
    }

    /// flannel node 1 with busybox1 (10.244.1.2) and peer node2
    /// (192.168.100.2, 10.244.2.0/24) on the same backend.
    pub fn flannel_with_peer(backend: Backend) -> (Node, PortId) {
        let node = Node::flannel(backend);
        let bb1 = node.pod("veth-bb1", "10.244.1.2", BUSYBOX1_MAC);
        node.peer(
            "node2",
            NODE2_UNDERLAY,
            NODE2_UNDERLAY_MAC,
            "10.244.2.0/24",
            backend,
        );
        (node, bb1)
    }

    pub fn pod(&self, name: &str, addr: &str, mac: MacAddr) -> PortId {
        self.tables
            .attach_port(PortSpec::pod(name, ip(addr), mac))
            .unwrap()
    }

    pub fn peer(
        &self,
        name: &str,
        underlay: Ipv4Addr,
        underlay_mac: MacAddr,
        pod_cidr: &str,
        backend: Backend,
    ) -> PeerId {
        self.tables
            .add_peer(PeerSpec {
                name: name.into(),
                underlay_ip: underlay,
                underlay_mac,
                pod_cidr: pod_cidr.parse().unwrap(),
                backend,
                vni: Vni::FLANNEL,
                vtep_mac: NODE2_VTEP,
            })
            .unwrap()
    }

    /// Frames in, frames out: runs a batch and returns what leaves.
    pub fn run(&mut self, frames: &[(PortId, Vec<u8>)]) -> Vec<(PortId, Vec<u8>)> {
        let mut batch = Vec::with_capacity(BATCH_SIZE);
        let mut sent = Vec::new();
        let mut out = Outputs::new();
        for chunk in frames.chunks(BATCH_SIZE) {
            for (port, frame) in chunk {
                batch.push(self.pool.alloc_with(*port, frame).expect("pool"));
            }
            self.pipeline
                .process(&mut batch, &mut self.pool, &mut out, self.now);
            let pool = &mut self.pool;
            out.drain(|port, b| {
                for buf in b.drain(..) {
                    sent.push((port, buf.frame().to_vec()));
                    pool.free(buf);
                }
            });
        }
        sent
    }

    /// One frame in.
    pub fn send(&mut self, port: PortId, frame: Vec<u8>) -> Vec<(PortId, Vec<u8>)> {
        self.run(&[(port, frame)])
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.tables.stats.snapshot()
    }

    /// Sends a frame that must be dropped for `reason`, and checks it was
    /// counted under that reason and nothing left.
    pub fn expect_drop(&mut self, port: PortId, frame: Vec<u8>, reason: DropReason) {
        let before = self.stats().drop_count(reason);
        let total_before = self.stats().total_drops();
        let out = self.send(port, frame);
        assert!(
            out.is_empty(),
            "expected a drop for {reason}, got output {out:?}"
        );
        assert_eq!(
            self.stats().drop_count(reason),
            before + 1,
            "not counted under {reason}: {:?}",
            nonzero(&self.stats())
        );
        assert_eq!(
            self.stats().total_drops(),
            total_before + 1,
            "counted under another reason too"
        );
        assert_eq!(self.pool.in_use(), 0, "leaked buffers");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert_eq!(
                self.pool.in_use(),
                0,
                "buffers leaked: the pool's in-use count is not back to zero"
            );
        }
    }
}

pub fn nonzero(s: &StatsSnapshot) -> Vec<(DropReason, u64)> {
    s.drops.iter().filter(|(_, n)| *n > 0).copied().collect()
}

/// An Ethernet + IPv4 + UDP frame from port 40000 to 5201, built by
/// etherparse.
pub fn udp_frame(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: &str,
    dst: &str,
    ttl: u8,
    df: bool,
    payload_len: usize,
) -> Vec<u8> {
    udp_datagram(
        src_mac,
        dst_mac,
        (src, 40000),
        (dst, 5201),
        ttl,
        df,
        payload_len,
    )
}

/// An Ethernet + IPv4 + UDP frame between the addresses and ports given,
/// built by etherparse.
pub fn udp_datagram(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    (src, src_port): (&str, u16),
    (dst, dst_port): (&str, u16),
    ttl: u8,
    df: bool,
    payload_len: usize,
) -> Vec<u8> {
    let payload: Vec<u8> = (0..payload_len).map(|i| i as u8).collect();
    let mut header = Ipv4Header::new(
        (8 + payload_len) as u16,
        ttl,
        IpNumber::UDP,
        ip(src).octets(),
        ip(dst).octets(),
    )
    .unwrap();
    header.dont_fragment = df;
    header.identification = 0x1c46;
    header.header_checksum = header.calc_header_checksum();
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(src_mac.0, dst_mac.0)
        .ip(etherparse::IpHeaders::Ipv4(header, Default::default()))
        .udp(src_port, dst_port)
        .write(&mut out, &payload)
        .unwrap();
    out
}

/// An ICMP echo request frame, built by etherparse.
pub fn ping_frame(src_mac: MacAddr, dst_mac: MacAddr, src: &str, dst: &str, ttl: u8) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(src_mac.0, dst_mac.0)
        .ipv4(ip(src).octets(), ip(dst).octets(), ttl)
        .icmpv4_echo_request(0x0d2f, 1)
        .write(&mut out, b"podswitch ping payload..")
        .unwrap();
    out
}

/// An Ethernet/IPv4 ARP frame, laid out here field by field from RFC 826
/// (not with podswitch's encoder).
fn arp_frame(
    eth_dst: [u8; 6],
    op: u16,
    sha: MacAddr,
    spa: &str,
    tha: [u8; 6],
    tpa: &str,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&sha.0);
    f.extend_from_slice(&[0x08, 0x06]); // EtherType ARP
    f.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4]); // Ethernet, IPv4, hlen 6, plen 4
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha.0);
    f.extend_from_slice(&ip(spa).octets());
    f.extend_from_slice(&tha);
    f.extend_from_slice(&ip(tpa).octets());
    f
}

/// An ARP request (broadcast).
pub fn arp_request(sender_mac: MacAddr, sender_ip: &str, target_ip: &str) -> Vec<u8> {
    arp_frame([0xff; 6], 1, sender_mac, sender_ip, [0; 6], target_ip)
}

/// The ARP reply `answer_mac` gives to a request.
pub fn arp_reply(answer_mac: MacAddr, answer_ip: &str, to_mac: MacAddr, to_ip: &str) -> Vec<u8> {
    arp_frame(to_mac.0, 2, answer_mac, answer_ip, to_mac.0, to_ip)
}

/// The frame from `src_mac` to `dst_mac`, unchanged past the MACs.
pub fn with_macs(frame: &[u8], src_mac: MacAddr, dst_mac: MacAddr) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[0..6].copy_from_slice(&dst_mac.0);
    f[6..12].copy_from_slice(&src_mac.0);
    f
}

/// What a router does to a frame: new MACs, TTL - 1, header checksum
/// recomputed from scratch by etherparse.
pub fn routed(frame: &[u8], src_mac: MacAddr, dst_mac: MacAddr) -> Vec<u8> {
    let mut f = with_macs(frame, src_mac, dst_mac);
    let (mut header, _) = Ipv4Header::from_slice(&f[14..]).unwrap();
    header.time_to_live -= 1;
    header.header_checksum = header.calc_header_checksum();
    let len = header.header_len();
    f[14..14 + len].copy_from_slice(&header.to_bytes());
    f
}

/// Two pod ports.
pub struct Ports {
    pub a: PortId,
    pub b: PortId,
}

/// The outer path node 1 uses towards node 2.
pub fn path_to_node2(node: &Node) -> OuterPath {
    let cfg = node.tables.load().node.clone();
    OuterPath {
        src_mac: cfg.underlay_mac,
        dst_mac: NODE2_UNDERLAY_MAC,
        src_ip: NODE1_UNDERLAY,
        dst_ip: NODE2_UNDERLAY,
    }
}

/// `inner` encapsulated by podswitch-encap (checked against Scapy and the
/// kernel in the encap tests) with `config` along `path`.
pub fn encapsulate(config: TunnelConfig, path: &OuterPath, inner: &[u8], ident: u16) -> Vec<u8> {
    let mut buf = vec![0u8; 128 + inner.len()];
    buf[128..].copy_from_slice(inner);
    let mut frame = FrameBuf::new(&mut buf, 128, 128 + inner.len());
    Tunnel::new(config)
        .encapsulate(path, &mut frame, ident)
        .unwrap();
    frame.frame().to_vec()
}

/// What node 2 would send node 1: `inner` encapsulated from node 2.
pub fn from_node2(node: &Node, config: TunnelConfig, inner: &[u8]) -> Vec<u8> {
    let cfg = node.tables.load().node.clone();
    let path = OuterPath {
        src_mac: NODE2_UNDERLAY_MAC,
        dst_mac: cfg.underlay_mac,
        src_ip: NODE2_UNDERLAY,
        dst_ip: NODE1_UNDERLAY,
    };
    encapsulate(config, &path, inner, 77)
}
