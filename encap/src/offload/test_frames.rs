//! Frames for the offload tests, built with etherparse (an independent
//! encoder): a TSO super-frame as a veth hands it over, the same frame
//! inside a tunnel, and a check of a segment's checksums. Shared by this
//! crate's tests and the engine's (`engine/src/offload.rs`), which include
//! this file: the including module brings `checksum`, `VnetHeader` and its constants.

use std::net::Ipv4Addr;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

use super::{checksum, Segmenter, VnetHeader, FLAG_NEEDS_CSUM, GSO_ECN, GSO_TCPV4};

/// A TSO super-frame as a veth hands it over: full-length headers and
/// only the pseudo-header sum in the TCP checksum field.
pub(crate) fn tso_frame(payload: &[u8], flags_fin_psh_cwr: bool) -> (Vec<u8>, VnetHeader) {
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 244, 1, 2], [10, 244, 2, 2], 64)
        .tcp(40000, 5201, 1_000_000, 64000);
    let builder = if flags_fin_psh_cwr {
        builder.fin().psh().cwr().ack(7)
    } else {
        builder.ack(7)
    };
    let mut frame = Vec::new();
    builder.write(&mut frame, payload).unwrap();
    frame[18..20].copy_from_slice(&0x1234u16.to_be_bytes());
    let ip_sum = checksum::checksum(&{
        let mut h = frame[14..34].to_vec();
        h[10] = 0;
        h[11] = 0;
        h
    });
    frame[24..26].copy_from_slice(&ip_sum.to_be_bytes());
    let tcp_len = (frame.len() - 34) as u16;
    let pseudo = checksum::fold(checksum::pseudo_header_v4(
        Ipv4Addr::new(10, 244, 1, 2),
        Ipv4Addr::new(10, 244, 2, 2),
        6,
        tcp_len,
    ));
    frame[50..52].copy_from_slice(&pseudo.to_be_bytes());
    let hdr = VnetHeader {
        flags: FLAG_NEEDS_CSUM,
        gso_type: GSO_TCPV4 | if flags_fin_psh_cwr { GSO_ECN } else { 0 },
        hdr_len: 54,
        gso_size: 1398,
        csum_start: 34,
        csum_offset: 16,
    };
    (frame, hdr)
}

/// A BIG TCP super-frame (Linux 6.3) as a pod's veth hands it over when
/// its `gso_ipv4_max_size` is above 64 KiB: [`tso_frame`]'s headers
/// (etherparse's) in front of `payload`, longer than an IPv4 total length
/// can say, which is therefore 0 (the kernel's `iph_set_totlen`).
#[allow(dead_code)] // each including crate uses its own share
pub(crate) fn big_tcp_frame(payload: &[u8], flags_fin_psh_cwr: bool) -> (Vec<u8>, VnetHeader) {
    assert!(34 + 20 + payload.len() > 65535, "a BIG TCP payload");
    let (mut frame, hdr) = tso_frame(&payload[..1000], flags_fin_psh_cwr);
    frame.truncate(54);
    frame.extend_from_slice(payload);
    frame[16..18].fill(0);
    frame[24..26].fill(0);
    let ip_sum = checksum::checksum(&frame[14..34]);
    frame[24..26].copy_from_slice(&ip_sum.to_be_bytes());
    (frame, hdr)
}

pub(crate) fn tcp_checksum_ok(seg: &[u8]) -> bool {
    let p = SlicedPacket::from_ethernet(seg).unwrap();
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4")
    };
    let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
        panic!("not TCP")
    };
    let computed = tcp
        .to_header()
        .calc_checksum_ipv4(&ip.header().to_header(), tcp.payload())
        .unwrap();
    // A computed 0 may be sent as 0xffff (its ones' complement twin,
    // as skb_checksum_help does); a receiver's sum verifies either.
    let field = tcp.checksum();
    (computed == field || (computed == 0 && field == 0xffff))
        && ip.header().to_header().calc_header_checksum() == ip.header().header_checksum()
}

/// `inner` behind outer Ethernet/IPv4/UDP/VXLAN headers (or IPv4
/// protocol 4 for IPIP, which carries the inner IPv4 packet only).
pub(crate) fn encapsulated(inner: &[u8], vxlan: bool) -> (Vec<u8>, usize) {
    let mut outer = Vec::new();
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 0xb]).ipv4(
        [192, 168, 100, 1],
        [192, 168, 100, 2],
        64,
    );
    if vxlan {
        let mut payload = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        payload.extend_from_slice(inner);
        builder
            .udp(40000, 8472)
            .write(&mut outer, &payload)
            .unwrap();
        // flannel.1 sends no UDP checksum.
        outer[40..42].fill(0);
        (outer, 14 + 20 + 8 + 8 + 14)
    } else {
        let ip = &inner[14..];
        let mut packet = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 0xb])
            .ipv4([192, 168, 100, 1], [192, 168, 100, 2], 64)
            .write(&mut packet, etherparse::IpNumber::IPV4, ip)
            .unwrap();
        (packet, 14 + 20)
    }
}

/// A UDP datagram of one flow (to `port`) as a pod's socket sends it,
/// built by etherparse: the IPv4 identification `ident`, DF as asked,
/// and full checksums.
pub(crate) fn udp_datagram(port: u16, ident: u16, dont_fragment: bool, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 244, 1, 2], [10, 244, 1, 3], 64)
        .udp(40000, port)
        .write(&mut frame, payload)
        .unwrap();
    frame[18..20].copy_from_slice(&ident.to_be_bytes());
    frame[20] = if dont_fragment { 0x40 } else { 0 };
    refresh_ipv4_checksum(&mut frame);
    frame
}

/// Recomputes the IPv4 header checksum of an untagged frame.
pub(crate) fn refresh_ipv4_checksum(frame: &mut [u8]) {
    frame[24..26].fill(0);
    let sum = checksum::checksum(&frame[14..34]);
    frame[24..26].copy_from_slice(&sum.to_be_bytes());
}

/// Cuts a super-frame as the receiving kernel does (the segmenter
/// follows `__udp_gso_segment`, `tcp_gso_segment` and `inet_gso_segment`).
pub(crate) fn cut(whole: &[u8], vnet: &VnetHeader) -> Vec<Vec<u8>> {
    let segmenter = Segmenter::new(whole, vnet).unwrap();
    (0..segmenter.count())
        .map(|i| {
            let mut d = vec![0; segmenter.max_segment_len()];
            let len = segmenter.write(whole, i, &mut d).unwrap();
            d.truncate(len);
            d
        })
        .collect()
}
