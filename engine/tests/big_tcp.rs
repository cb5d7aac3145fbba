//! BIG TCP super-frames (Linux 6.3: longer than an IPv4 total length can
//! say, which says 0) through the pipeline: whole to a pod, in pieces of
//! at most 64 KiB into a tunnel or across host-gw, each piece checked with
//! etherparse; and the malformed ones dropped under a reason.

mod support;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use podswitch_engine::config::Backend;
use podswitch_engine::drop::DropReason;
use podswitch_engine::encap::checksum;
use podswitch_engine::encap::MacAddr;
use podswitch_engine::offload::{
    accept_vnet_header, complete_checksum, VnetHeader, FLAG_NEEDS_CSUM, GSO_TCPV4,
};
use podswitch_engine::packet::{PacketBuf, PacketPool, DEFAULT_BUF_SIZE};
use podswitch_engine::pipeline::Outputs;
use podswitch_engine::port::PortId;
use support::*;

const MSS: u16 = 1398;
const SEQ: u32 = 7_000_000;

/// A BIG TCP super-frame from busybox1 to `dst` via the gateway, as a
/// pod's veth with `gso_ipv4_max_size` above 64 KiB hands it over: IPv4
/// total length 0, the TCP checksum the pseudo-header sum over the whole
/// (32-bit) TCP length, PSH and FIN on, a payload that tells its bytes'
/// places apart.
fn big_tcp_frame(gw: MacAddr, dst: &str, payload_len: usize) -> (Vec<u8>, Vec<u8>) {
    let payload: Vec<u8> = (0..payload_len)
        .map(|i| (i % 251) as u8 ^ (i / 251) as u8)
        .collect();
    let mut f = Vec::with_capacity(54 + payload_len);
    f.extend_from_slice(&gw.octets());
    f.extend_from_slice(&BUSYBOX1_MAC.octets());
    f.extend_from_slice(&[0x08, 0x00]);
    let (src, dst) = (ip("10.244.1.2"), ip(dst));
    f.extend_from_slice(&[0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    let ip_sum = checksum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&ip_sum.to_be_bytes());
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&5201u16.to_be_bytes());
    f.extend_from_slice(&SEQ.to_be_bytes());
    f.extend_from_slice(&1u32.to_be_bytes());
    f.extend_from_slice(&[0x50, 0x19, 0xff, 0xff, 0, 0, 0, 0]); // ACK PSH FIN
    let tcp_len = 20 + payload_len as u32;
    let pseudo = checksum::accumulate(
        checksum::accumulate(0, &[&src.octets()[..], &dst.octets()[..]].concat()),
        &[
            0,
            6,
            (tcp_len >> 24) as u8,
            (tcp_len >> 16) as u8,
            (tcp_len >> 8) as u8,
            tcp_len as u8,
        ],
    );
    f[50..52].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
    f.extend_from_slice(&payload);
    (f, payload)
}

fn tso_header() -> VnetHeader {
    VnetHeader {
        flags: FLAG_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 54,
        gso_size: MSS,
        csum_start: 34,
        csum_offset: 16,
    }
}

/// Runs one received super-frame through the pipeline and returns what
/// left, with each frame's GSO size.
fn route(node: &mut Node, port: PortId, frame: &[u8]) -> Vec<(PortId, Vec<u8>, Option<u16>)> {
    let mut buf: PacketBuf = node.pool.alloc_with(port, frame).expect("a large buffer");
    accept_vnet_header(&mut buf, &tso_header()).expect("a well-formed BIG TCP super-frame");
    let mut out = Outputs::new();
    let now = node.now;
    node.pipeline
        .process(&mut vec![buf], &mut node.pool, &mut out, now);
    let mut sent = Vec::new();
    let pool = &mut node.pool;
    out.drain(|port, batch| {
        for buf in batch.drain(..) {
            sent.push((
                port,
                buf.frame().to_vec(),
                buf.offload().gso.map(|g| g.size),
            ));
            pool.free(buf);
        }
    });
    sent
}

fn with_large_buffers(backend: Backend) -> (Node, PortId, MacAddr) {
    let (mut node, bb1) = Node::flannel_with_peer(backend);
    node.pool = PacketPool::with_large(256, DEFAULT_BUF_SIZE, 8);
    let gw = node.tables.load().node.gateway_mac;
    (node, bb1, gw)
}

#[test]
fn a_big_tcp_super_frame_reaches_a_pod_on_the_node_whole() {
    let (mut node, bb1, gw) = with_large_buffers(Backend::Vxlan);
    let bb2 = node.pod("veth-bb2", "10.244.1.3", BUSYBOX2_MAC);
    let (frame, _) = big_tcp_frame(gw, "10.244.1.3", 150_000);
    let sent = route(&mut node, bb1, &frame);
    assert_eq!(sent.len(), 1, "one frame, not pieces");
    let (port, out, gso) = &sent[0];
    assert_eq!((*port, out.len(), *gso), (bb2, frame.len(), Some(MSS)));
    assert_eq!(out[22], 63, "TTL decremented");
    assert_eq!(&out[54..], &frame[54..], "payload untouched");
    assert_eq!(node.stats().port(bb1).big_tcp_cut, 0);
}

#[test]
fn a_big_tcp_super_frame_leaves_in_64k_pieces_through_a_tunnel_or_host_gw() {
    for backend in [Backend::Vxlan, Backend::HostGw, Backend::Ipip, Backend::Udp] {
        let (mut node, bb1, gw) = with_large_buffers(backend);
        let (frame, payload) = big_tcp_frame(gw, "10.244.2.5", 150_000);
        let sent = route(&mut node, bb1, &frame);
        let per_piece = (65535 - 40) / usize::from(MSS) * usize::from(MSS);
        assert_eq!(sent.len(), payload.len().div_ceil(per_piece), "{backend:?}");
        let mut joined = Vec::new();
        for (j, (port, out, gso)) in sent.iter().enumerate() {
            assert_eq!(*port, node.underlay, "{backend:?}");
            assert_eq!(*gso, Some(MSS), "{backend:?}: piece {j} is a super-frame");
            // The inner Ethernet frame: behind VXLAN's 50 bytes, IPIP's
            // outer IPv4 header (none: rebuilt here), IP-in-UDP's 28.
            let outer = SlicedPacket::from_ethernet(out).expect("outer frame");
            let Some(NetSlice::Ipv4(outer_ip)) = &outer.net else {
                panic!("{backend:?}: not IPv4 outside")
            };
            assert_eq!(
                usize::from(outer_ip.header().total_len()),
                out.len() - 14,
                "{backend:?}: piece {j} says its own length"
            );
            let mut inner = match backend {
                Backend::Vxlan => out[50..].to_vec(),
                Backend::HostGw | Backend::DirectRouting => out.clone(),
                Backend::Ipip => [&out[..14], &out[34..]].concat(),
                Backend::Udp => [&out[..14], &out[42..]].concat(),
            };
            let ip_len = u16::from_be_bytes([inner[16], inner[17]]);
            assert_eq!(
                usize::from(ip_len),
                inner.len() - 14,
                "{backend:?}: piece {j}"
            );
            assert!(inner.len() - 14 <= 65535);
            // Its checksum is partial: completed, etherparse verifies it.
            complete_checksum(&mut inner, 34, 16).unwrap();
            let p = SlicedPacket::from_ethernet(&inner).expect("inner frame");
            let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(tcp))) = (&p.net, &p.transport)
            else {
                panic!("{backend:?}: piece {j} is not TCP/IPv4")
            };
            let h = ip.header().to_header();
            assert_eq!(h.calc_header_checksum(), h.header_checksum);
            assert_eq!(h.time_to_live, 63);
            let computed = tcp
                .to_header()
                .calc_checksum_ipv4(&h, tcp.payload())
                .unwrap();
            assert_eq!(
                computed,
                tcp.checksum(),
                "{backend:?}: piece {j}'s TCP checksum"
            );
            assert_eq!(tcp.sequence_number(), SEQ + joined.len() as u32);
            let last = j + 1 == sent.len();
            assert_eq!(
                (tcp.fin(), tcp.psh()),
                (last, last),
                "{backend:?}: piece {j}"
            );
            joined.extend_from_slice(tcp.payload());
        }
        assert!(joined == payload, "{backend:?}: the payload, in order");
        assert_eq!(node.stats().port(bb1).big_tcp_cut, 1, "{backend:?}");
        assert!(nonzero(&node.stats()).is_empty(), "{backend:?}: no drops");
    }
}

/// A zero total length without segmentation offload is a malformed packet,
/// not a BIG TCP one; a BIG "super-frame" of UDP is refused by the port.
#[test]
fn a_zero_total_length_is_big_tcp_only_with_tcp_segmentation_offload() {
    let (mut node, bb1, gw) = with_large_buffers(Backend::Vxlan);
    let (frame, _) = big_tcp_frame(gw, "10.244.2.5", 100_000);
    let mut buf = node.pool.alloc_with(bb1, &frame).unwrap();
    let before = node.stats().drop_count(DropReason::Ipv4BadTotalLength);
    let mut out = Outputs::new();
    let now = node.now;
    node.pipeline
        .process(&mut vec![buf], &mut node.pool, &mut out, now);
    assert!(out.is_empty());
    assert_eq!(
        node.stats().drop_count(DropReason::Ipv4BadTotalLength),
        before + 1
    );

    let mut udp = frame.clone();
    udp[23] = 17;
    buf = node.pool.alloc_with(bb1, &udp).unwrap();
    assert!(accept_vnet_header(&mut buf, &tso_header()).is_err());
    let udp_gso = VnetHeader {
        gso_type: 5,
        csum_offset: 6,
        ..tso_header()
    };
    assert!(accept_vnet_header(&mut buf, &udp_gso).is_err());
    node.pool.free(buf);
}
