//! The wire-level offload tests: checksums settled and completed,
//! segmentation and coalescing, each checked with etherparse.

use std::net::Ipv4Addr;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

use super::test_frames::{
    big_tcp_frame, cut, encapsulated, refresh_ipv4_checksum, tcp_checksum_ok, tso_frame,
    udp_datagram,
};
use super::*;

/// An outer UDP checksum that verifies, is left partial, or was
/// computed over an inner checksum still partial (LCO) is settled and
/// cleared; a wrong one is kept for the pipeline to drop.
#[test]
fn outer_udp_checksums_are_settled_as_the_kernel_would() {
    // VXLAN around an inner UDP datagram.
    let mut inner = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 3], [2, 0, 0, 0, 0, 4])
        .ipv4([10, 244, 2, 2], [10, 244, 1, 2], 64)
        .udp(5000, 6000)
        .write(&mut inner, &[0x5a; 64])
        .unwrap();
    let mut vxlan = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    vxlan.extend_from_slice(&inner);
    let mut complete = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([192, 168, 100, 2], [192, 168, 100, 1], 64)
        .udp(40000, 8472)
        .write(&mut complete, &vxlan)
        .unwrap();
    const INNER_L3: usize = 14 + 20 + 8 + 8 + 14;
    let outer_len = (complete.len() - 34) as u16;
    let cleared = |mut f: Vec<u8>| {
        assert!(settle_outer_udp_checksum(&mut f, 14, INNER_L3));
        assert_eq!(&f[40..42], &[0, 0]);
        assert_eq!(f[42..], complete[42..], "nothing else touched");
    };
    cleared(complete.clone());
    // Left partial by the sender's kernel.
    let pseudo = checksum::fold(checksum::pseudo_header_v4(
        Ipv4Addr::new(192, 168, 100, 2),
        Ipv4Addr::new(192, 168, 100, 1),
        17,
        outer_len,
    ));
    let mut partial = complete.clone();
    partial[40..42].copy_from_slice(&pseudo.to_be_bytes());
    cleared(partial);
    // Wrong, with a complete inner checksum: kept, and not cleared.
    let mut wrong = complete.clone();
    wrong[40] ^= 0x01;
    assert!(!settle_outer_udp_checksum(&mut wrong, 14, INNER_L3));
    assert_ne!(&wrong[40..42], &[0, 0]);
    // LCO: the outer checksum was computed as if the inner one were
    // complete, and the inner one is left partial.
    let inner_field = INNER_L3 + 20 + 6;
    let inner_pseudo = checksum::fold(checksum::pseudo_header_v4(
        Ipv4Addr::new(10, 244, 2, 2),
        Ipv4Addr::new(10, 244, 1, 2),
        17,
        8 + 64,
    ));
    let mut lco = complete.clone();
    lco[inner_field..inner_field + 2].copy_from_slice(&inner_pseudo.to_be_bytes());
    assert!(settle_outer_udp_checksum(&mut lco, 14, INNER_L3));
    assert_eq!(&lco[40..42], &[0, 0]);
    assert_eq!(
        &lco[inner_field..inner_field + 2],
        &inner_pseudo.to_be_bytes(),
        "the inner checksum stays partial, for the pipeline to carry"
    );
}

#[test]
fn completes_a_partial_tcp_checksum_as_the_nic_would() {
    let payload: Vec<u8> = (0..999u32).map(|i| (i * 7) as u8).collect();
    let (mut frame, hdr) = tso_frame(&payload, false);
    assert!(
        !tcp_checksum_ok(&frame),
        "a partial checksum does not verify"
    );
    complete_checksum(
        &mut frame,
        usize::from(hdr.csum_start),
        usize::from(hdr.csum_offset),
    )
    .unwrap();
    assert!(tcp_checksum_ok(&frame));
    assert_eq!(
        complete_checksum(&mut frame, 34, 2000),
        Err(OffloadError::ChecksumOutOfFrame)
    );
    assert_eq!(
        complete_checksum(&mut frame, 5000, 0),
        Err(OffloadError::ChecksumOutOfFrame)
    );
}

#[test]
fn recognises_partial_checksums_and_leaves_others_alone() {
    let payload: Vec<u8> = (0..300u32).map(|i| (i * 13) as u8).collect();
    let (frame, _) = tso_frame(&payload, false);
    let mut partial = frame.clone();
    assert!(complete_partial_l4(&mut partial), "partial: completed");
    assert!(tcp_checksum_ok(&partial));
    let mut complete = partial.clone();
    assert!(!complete_partial_l4(&mut complete), "complete: untouched");
    assert_eq!(complete, partial);
    let mut corrupt = partial.clone();
    corrupt[60] ^= 0xff;
    let before = corrupt.clone();
    assert!(!complete_partial_l4(&mut corrupt), "corrupt: left corrupt");
    assert_eq!(corrupt, before);
    let mut short = frame[..30].to_vec();
    assert!(!complete_partial_l4(&mut short));
}

#[test]
fn segments_tso_frames_like_the_kernel() {
    let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let (frame, hdr) = tso_frame(&payload, true);
    let seg = Segmenter::new(&frame, &hdr).unwrap();
    assert_eq!(seg.count(), 10_000usize.div_ceil(1398));
    let mut joined = Vec::new();
    let mut buf = vec![0u8; 2048];
    for i in 0..seg.count() {
        let len = seg.write(&frame, i, &mut buf).unwrap();
        let s = &buf[..len];
        assert!(tcp_checksum_ok(s), "segment {i} checksums");
        let p = SlicedPacket::from_ethernet(s).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &p.net else {
            panic!()
        };
        let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
            panic!()
        };
        assert_eq!(
            ip.header().identification(),
            0x1234u16.wrapping_add(i as u16)
        );
        assert_eq!(tcp.sequence_number(), 1_000_000 + (i * 1398) as u32);
        assert_eq!(tcp.acknowledgment_number(), 7);
        let last = i + 1 == seg.count();
        assert_eq!(tcp.fin(), last, "FIN only on the last segment");
        assert_eq!(tcp.psh(), last, "PSH only on the last segment");
        assert_eq!(tcp.cwr(), i == 0, "CWR only on the first segment");
        assert!(len <= 14 + 1450);
        joined.extend_from_slice(tcp.payload());
    }
    assert_eq!(joined, payload);
    assert!(
        seg.write(&frame, 0, &mut [0u8; 100]).is_none(),
        "too small a buffer"
    );
}

/// A BIG TCP super-frame (IPv4 total length 0) is cut into pieces an
/// IPv4 length can say, each itself a super-frame with a partial
/// checksum; segmenting the pieces gives byte for byte the segments of
/// the whole, each checked with etherparse.
#[test]
fn big_tcp_super_frames_cut_into_pieces_that_segment_as_the_whole_would() {
    for (len, mss) in [
        (65_600usize, 1398u16),
        (150_000, 1398),
        (196_000, 536),
        (70_000, 65_495),
        // 50 segments of 1,309 bytes and 40 of headers are 65,490: an
        // IPv4 length can say it, but not with VXLAN's 50 bytes around.
        (140_000, 1309),
    ] {
        let payload: Vec<u8> = (0..len)
            .map(|i| (i % 251) as u8 ^ (i / 251) as u8)
            .collect();
        let (frame, _) = big_tcp_frame(&payload, true);
        let whole = Segmenter::at(&frame, 14, GsoKind::TcpV4, mss).unwrap();
        assert_eq!(whole.count(), len.div_ceil(usize::from(mss)));
        let mut direct = Vec::new();
        let mut buf = vec![0u8; 70_000];
        for i in 0..whole.count() {
            let n = whole.write(&frame, i, &mut buf).unwrap();
            assert!(tcp_checksum_ok(&buf[..n]), "segment {i} of the whole");
            direct.push(buf[..n].to_vec());
        }

        let mut through_pieces = Vec::new();
        let mut joined = Vec::new();
        for j in 0..whole.piece_count() {
            let mut piece = vec![0u8; whole.header_bytes()];
            whole.write_piece_headers(&frame, j, &mut piece).unwrap();
            piece.extend_from_slice(&frame[whole.piece(j)]);
            assert!(
                piece.len() - 14 + 50 <= 65535 || whole.segments_per_piece() == 1,
                "piece {j} fits an IPv4 length with VXLAN's headers around it"
            );
            let p = SlicedPacket::from_ethernet(&piece).unwrap();
            let Some(NetSlice::Ipv4(ip)) = &p.net else {
                panic!("piece {j} is not IPv4")
            };
            let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
                panic!("piece {j} is not TCP")
            };
            let ip_header = ip.header().to_header();
            assert_eq!(usize::from(ip_header.total_len), piece.len() - 14);
            assert_eq!(ip_header.calc_header_checksum(), ip_header.header_checksum);
            let last = j + 1 == whole.piece_count();
            assert_eq!((tcp.fin(), tcp.psh(), tcp.cwr()), (last, last, j == 0));
            joined.extend_from_slice(tcp.payload());
            // The checksum is partial: completing it makes it verify.
            let mut completed = piece.clone();
            complete_checksum(&mut completed, 34, 16).unwrap();
            assert!(tcp_checksum_ok(&completed), "piece {j}'s partial checksum");

            let cut = Segmenter::at(&piece, 14, GsoKind::TcpV4, mss).unwrap();
            for i in 0..cut.count() {
                let n = cut.write(&piece, i, &mut buf).unwrap();
                through_pieces.push(buf[..n].to_vec());
            }
        }
        assert_eq!(
            joined, payload,
            "{len}/{mss}: pieces carry the payload in order"
        );
        assert!(
            through_pieces == direct,
            "{len}/{mss}: the same segments either way"
        );
    }
}

/// Only a TCP frame longer than 65535 bytes may say 0, and only where the
/// caller knows it is a super-frame.
#[test]
fn a_zero_total_length_is_big_tcp_only_on_a_long_tcp_super_frame() {
    let payload = vec![7u8; 70_000];
    let (frame, _) = big_tcp_frame(&payload, false);
    let ip = &frame[14..];
    assert!(crate::ipv4::Ipv4Packet::new_checked(ip).is_err());
    let big = crate::ipv4::Ipv4Packet::new_checked_super_frame(ip).unwrap();
    assert_eq!(big.packet_len(), ip.len());
    // Short of 64 KiB, or UDP: still a bad total length.
    assert!(crate::ipv4::Ipv4Packet::new_checked_super_frame(&ip[..60_000]).is_err());
    let mut udp = ip.to_vec();
    udp[9] = 17;
    assert!(crate::ipv4::Ipv4Packet::new_checked_super_frame(&udp[..]).is_err());
    assert!(Segmenter::at(&frame[..60_000], 14, GsoKind::TcpV4, 1398).is_err());
    assert!(Segmenter::at(&frame, 14, GsoKind::UdpL4, 1398).is_err());
    // A segment must fit an IPv4 length too.
    assert!(Segmenter::at(&frame, 14, GsoKind::TcpV4, 65_496).is_err());
}

#[test]
fn segments_udp_gso_and_refuses_what_it_cannot() {
    let payload = vec![0xabu8; 3000];
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4([10, 244, 1, 2], [10, 244, 1, 3], 64)
        .udp(5000, 6000)
        .write(&mut frame, &payload)
        .unwrap();
    let hdr = VnetHeader {
        gso_type: GSO_UDP_L4,
        gso_size: 1000,
        ..VnetHeader::default()
    };
    let seg = Segmenter::new(&frame, &hdr).unwrap();
    assert_eq!(seg.count(), 3);
    let mut buf = vec![0u8; 2048];
    for i in 0..3 {
        let len = seg.write(&frame, i, &mut buf).unwrap();
        let p = SlicedPacket::from_ethernet(&buf[..len]).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &p.net else {
            panic!()
        };
        let Some(TransportSlice::Udp(udp)) = &p.transport else {
            panic!()
        };
        assert_eq!(udp.payload().len(), 1000);
        assert_eq!(
            udp.to_header()
                .calc_checksum_ipv4(&ip.header().to_header(), udp.payload())
                .unwrap(),
            udp.checksum()
        );
    }
    let tcp6 = VnetHeader {
        gso_type: GSO_TCPV6,
        gso_size: 1000,
        ..hdr
    };
    assert_eq!(
        Segmenter::new(&frame, &tcp6).unwrap_err(),
        OffloadError::GsoUnsupported(GSO_TCPV6)
    );
    let wrong = VnetHeader {
        gso_type: GSO_TCPV4,
        ..hdr
    };
    assert!(matches!(
        Segmenter::new(&frame, &wrong),
        Err(OffloadError::GsoMalformed(_))
    ));
    assert!(matches!(
        Segmenter::new(&frame[..20], &hdr),
        Err(OffloadError::GsoMalformed(_))
    ));
    let zero = VnetHeader { gso_size: 0, ..hdr };
    assert!(Segmenter::new(&frame, &zero).is_err());
}

/// A VXLAN super-frame's datagrams as a `UDP_SEGMENT` send carries
/// them, and as a `UDP_GRO` socket hands them over: back to back.
fn burst(payload: &[u8], mss: u16) -> (Vec<u8>, usize, Vec<u8>) {
    let (inner, _) = tso_frame(payload, false);
    let (outer, l3) = encapsulated(&inner, true);
    let segmenter = Segmenter::at(&outer, l3, GsoKind::TcpV4, mss).unwrap();
    let udp_payload = 42;
    // Gathered as the underlay port gathers them: each datagram is its
    // headers (from write_headers) and its payload (from the frame).
    let mut datagrams = Vec::new();
    let mut headers = vec![0u8; segmenter.header_bytes()];
    for i in 0..segmenter.count() {
        segmenter.write_headers(&outer, i, &mut headers).unwrap();
        datagrams.extend_from_slice(&headers[udp_payload..]);
        datagrams.extend_from_slice(&outer[segmenter.chunk(i)]);
    }
    let each = segmenter.datagram_len(udp_payload);
    (datagrams, each, inner)
}

#[test]
fn datagrams_of_one_flow_merge_back_into_the_super_frame() {
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 255) as u8).collect();
    let (mut datagrams, each, inner) = burst(&payload, 1398);
    let count = datagrams.len().div_ceil(each);
    assert_eq!(count, 20_000usize.div_ceil(1398));
    // Every datagram is a complete VXLAN payload a kernel would take.
    for k in 0..count {
        let d = &datagrams[k * each..((k + 1) * each).min(datagrams.len())];
        assert_eq!(&d[..8], &[0x08, 0, 0, 0, 0, 0, 1, 0], "VXLAN header");
        assert!(tcp_checksum_ok(&d[8..]), "datagram {k}");
    }
    let merged = coalesce_datagrams(&mut datagrams, each, VXLAN_L3).unwrap();
    assert_eq!(merged.count, count);
    assert_eq!(merged.gso.size, 1398);
    assert_eq!(merged.gso.header_len, 40);
    let frame = &datagrams[8..merged.len];
    // The original super-frame, with its partial checksum.
    assert_eq!(frame, &inner[..]);
}

const VXLAN_L3: usize = 8 + 14;

#[test]
fn a_whole_tunnel_datagram_is_told_from_a_burst() {
    // A kernel VXLAN device's datagram around a pod's whole UDP_SEGMENT
    // write: the inner packet ends where the datagram does.
    let inner = udp_datagram(5300, 1, false, &[7u8; 10_000]);
    let (outer, _) = encapsulated(&inner, true);
    let payload = &outer[42..];
    assert!(is_one_tunnel_datagram(payload, VXLAN_L3));
    // Cut short, or not IPv4 inside, or too short to say: not one.
    assert!(!is_one_tunnel_datagram(
        &payload[..payload.len() - 1],
        VXLAN_L3
    ));
    let mut other = payload.to_vec();
    other[VXLAN_L3] = 0x65;
    assert!(!is_one_tunnel_datagram(&other, VXLAN_L3));
    assert!(!is_one_tunnel_datagram(&payload[..VXLAN_L3 + 19], VXLAN_L3));
    // A burst of datagrams, each its own inner packet.
    let data: Vec<u8> = (0..6000u32).map(|i| i as u8).collect();
    let (datagrams, each, _) = burst(&data, 1398);
    assert!(datagrams.len() > each);
    assert!(!is_one_tunnel_datagram(&datagrams, VXLAN_L3));
}

#[test]
fn datagrams_that_are_not_one_flow_in_order_stay_as_they_came() {
    let payload: Vec<u8> = (0..6000u32).map(|i| i as u8).collect();
    let (good, each, _) = burst(&payload, 1398);
    let tcp = VXLAN_L3 + 20;
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Damage)> = vec![
        (
            "second out of order",
            Box::new(move |d| d[each + tcp + 4..each + tcp + 8].copy_from_slice(&[0, 0, 0, 1])),
        ),
        (
            "a corrupt payload byte",
            Box::new(move |d| d[each + 100] ^= 0x40),
        ),
        (
            "another destination port",
            Box::new(move |d| d[2 * each + tcp + 3] ^= 1),
        ),
        ("a SYN", Box::new(move |d| d[tcp + 13] |= 0x02)),
        ("another VNI", Box::new(move |d| d[each + 6] ^= 1)),
        (
            "a truncated last datagram",
            Box::new(|d| {
                let n = d.len() - 10;
                d.truncate(n)
            }),
        ),
    ];
    for (what, damage) in cases {
        let mut d = good.clone();
        damage(&mut d);
        let before = d.clone();
        assert!(
            coalesce_datagrams(&mut d, each, VXLAN_L3).is_none(),
            "{what}"
        );
        assert_eq!(d, before, "{what}: left as it came");
    }
    let mut single = good[..each].to_vec();
    assert!(coalesce_datagrams(&mut single, each, VXLAN_L3).is_none());
    assert!(coalesce_datagrams(&mut good.clone(), 0, VXLAN_L3).is_none());
}

/// A merged super-frame's segments leave again with the first's IPv4
/// identification plus one each. Without DF, segments whose
/// identifications do not already run so stay as they came (a fragment
/// of one would be reassembled with another's); with DF (atomic
/// datagrams, RFC 6864) they merge whatever their identifications.
#[test]
fn segments_merge_only_if_their_identifications_would_come_back() {
    let payload: Vec<u8> = (0..6000u32).map(|i| i as u8).collect();
    let (good, each, _) = burst(&payload, 1398);
    let count = good.len().div_ceil(each);
    // The burst with each datagram's identification `ident(was)` and DF
    // as asked, each inner IPv4 checksum made good again.
    let with = |ident: &dyn Fn(u16) -> u16, dont_fragment: bool| {
        let mut d = good.clone();
        for k in 0..count {
            let end = ((k + 1) * each).min(d.len());
            let inner_frame = &mut d[k * each + 8..end];
            let was = u16::from_be_bytes([inner_frame[18], inner_frame[19]]);
            inner_frame[18..20].copy_from_slice(&ident(was).to_be_bytes());
            inner_frame[20] = if dont_fragment { 0x40 } else { 0 };
            refresh_ipv4_checksum(inner_frame);
        }
        d
    };
    let first = u16::from_be_bytes([good[VXLAN_L3 + 4], good[VXLAN_L3 + 5]]);
    // Each case: what it is, each identification from what it was, DF,
    // and whether the burst merges.
    type Identify<'a> = &'a dyn Fn(u16) -> u16;
    let cases: [(&str, Identify, bool, bool); 5] = [
        ("running on by one", &|id| id, false, true),
        ("all the first's", &|_| first, false, false),
        ("all zero", &|_| 0, false, false),
        ("all zero, DF", &|_| 0, true, true),
        ("scattered, DF", &|id| id.wrapping_mul(7919), true, true),
    ];
    for (what, ident, dont_fragment, merges) in cases {
        let mut d = with(ident, dont_fragment);
        let before = d.clone();
        let merged = coalesce_datagrams(&mut d, each, VXLAN_L3);
        assert_eq!(merged.is_some(), merges, "{what}");
        if !merges {
            assert_eq!(d, before, "{what}: left as it came");
        }
    }
}

proptest::proptest! {
    /// Cut for the wire, merged again: the same super-frame, for any
    /// size and segment size, and every datagram checks with
    /// etherparse.
    #[test]
    fn cut_then_merged_is_the_same_super_frame(len in 1500usize..40_000, mss in 536u16..1410) {
        let payload: Vec<u8> = (0..len as u32).map(|i| (i ^ (i >> 8)) as u8).collect();
        let (mut datagrams, each, inner) = burst(&payload, mss);
        let count = datagrams.len().div_ceil(each);
        for k in 0..count {
            let d = &datagrams[k * each..((k + 1) * each).min(datagrams.len())];
            proptest::prop_assert!(tcp_checksum_ok(&d[8..]));
        }
        if count > 1 {
            let merged = coalesce_datagrams(&mut datagrams, each, VXLAN_L3).unwrap();
            proptest::prop_assert_eq!(&datagrams[8..merged.len], &inner[..]);
        }
    }
}

/// The header a TAP takes for a VXLAN datagram around a TCP super-frame:
/// every offset where etherparse's encoder put the header.
#[test]
fn tunnel_vnet_header_points_at_the_encoders_headers() {
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 255) as u8).collect();
    let (inner, inner_hdr) = tso_frame(&payload, true);
    let (outer, l3) = encapsulated(&inner, true);
    let gso = Gso {
        kind: GsoKind::TcpV4,
        size: inner_hdr.gso_size,
        ecn: true,
        header_len: 40,
    };
    let hdr = TunnelVnetHeader::for_frame(&outer, l3, &gso).unwrap();
    let sliced = SlicedPacket::from_ethernet(&outer).unwrap();
    let Some(TransportSlice::Udp(udp)) = &sliced.transport else {
        panic!("not UDP")
    };
    // The outer UDP header, found by the encoder's own slice.
    let udp_at = udp.slice().as_ptr() as usize - outer.as_ptr() as usize;
    assert_eq!(usize::from(hdr.outer_th_offset), udp_at);
    assert_eq!(usize::from(hdr.inner_nh_offset), l3);
    // The inner headers: the tunnel's inner frame shifted by where it sits.
    let shift = l3 - 14;
    assert_eq!(
        usize::from(hdr.inner.csum_start),
        usize::from(inner_hdr.csum_start) + shift
    );
    assert_eq!(
        usize::from(hdr.inner.hdr_len),
        usize::from(inner_hdr.hdr_len) + shift
    );
    assert_eq!(hdr.inner.csum_offset, 16);
    assert_eq!(hdr.inner.gso_size, 1398);
    assert_eq!(
        hdr.inner.gso_type,
        GSO_UDP_TUNNEL_IPV4 | GSO_TCPV4 | GSO_ECN
    );
    assert_eq!(hdr.inner.flags, FLAG_NEEDS_CSUM);
    let bytes = hdr.to_bytes();
    assert_eq!(bytes.len(), 24);
    assert_eq!(bytes[1], 0x21 | 0x80);
    assert_eq!(
        u16::from_ne_bytes([bytes[20], bytes[21]]),
        hdr.outer_th_offset
    );
    assert_eq!(
        u16::from_ne_bytes([bytes[22], bytes[23]]),
        hdr.inner_nh_offset
    );
    assert!(bytes[10..20].iter().all(|&b| b == 0));
}

/// What the header cannot describe gets no header (the frame is then
/// cut in userspace instead).
#[test]
fn tunnel_vnet_header_refuses_what_it_cannot_describe() {
    let payload = vec![7u8; 5000];
    let (inner, _) = tso_frame(&payload, false);
    let (outer, l3) = encapsulated(&inner, true);
    let gso = Gso {
        kind: GsoKind::TcpV4,
        size: 1398,
        ecn: false,
        header_len: 40,
    };
    assert!(TunnelVnetHeader::for_frame(&outer, l3, &gso).is_some());
    // An outer UDP checksum (no tunnel checksum offload is asked for).
    let mut with_checksum = outer.clone();
    with_checksum[40..42].copy_from_slice(&[0x12, 0x34]);
    assert!(TunnelVnetHeader::for_frame(&with_checksum, l3, &gso).is_none());
    // UDP segmentation inside, a zero segment size.
    let udp = Gso {
        kind: GsoKind::UdpL4,
        ..gso
    };
    assert!(TunnelVnetHeader::for_frame(&outer, l3, &udp).is_none());
    let zero = Gso { size: 0, ..gso };
    assert!(TunnelVnetHeader::for_frame(&outer, l3, &zero).is_none());
    // IPIP outside; lengths that disagree with the frame; a cut frame.
    let (ipip, ipip_l3) = encapsulated(&inner, false);
    assert!(TunnelVnetHeader::for_frame(&ipip, ipip_l3, &gso).is_none());
    let mut longer = outer.clone();
    longer.push(0);
    assert!(TunnelVnetHeader::for_frame(&longer, l3, &gso).is_none());
    assert!(TunnelVnetHeader::for_frame(&outer[..l3 + 30], l3, &gso).is_none());
    // An inner offset that is not the inner IPv4 header.
    assert!(TunnelVnetHeader::for_frame(&outer, l3 + 2, &gso).is_none());
}

/// A batch's headers say what the kernel needs to cut the batch as it
/// cuts a `UDP_SEGMENT` send: the whole's lengths under a valid IPv4
/// checksum, and a partial UDP checksum which, moved to each datagram's
/// length as `__udp_gso_segment` moves it and then completed as
/// `skb_checksum_help` completes it, verifies in every datagram
/// (checked with etherparse).
#[test]
fn a_batchs_headers_cut_into_datagrams_that_verify() {
    let payloads: Vec<Vec<u8>> = [100, 100, 61]
        .iter()
        .enumerate()
        .map(|(k, len)| vec![0x41 + k as u8; *len])
        .collect();
    let mut first = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 0xb])
        .ipv4([192, 168, 100, 1], [192, 168, 100, 2], 64)
        .udp(40000, 8472)
        .write(&mut first, &payloads[0])
        .unwrap();
    let total: usize = payloads.iter().map(Vec::len).sum();
    let (h, vnet) = udp_batch_headers(&first, total, 100).unwrap();
    assert_eq!(
        (vnet.flags, vnet.gso_type, vnet.gso_size),
        (FLAG_NEEDS_CSUM, GSO_UDP_L4, 100)
    );
    assert_eq!(
        (vnet.hdr_len, vnet.csum_start, vnet.csum_offset),
        (42, 34, 6)
    );
    let whole: Vec<u8> = h.iter().copied().chain(payloads.concat()).collect();
    let p = SlicedPacket::from_ethernet(&whole).unwrap();
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4")
    };
    let ip = ip.header().to_header();
    assert_eq!(usize::from(ip.total_len), 20 + 8 + total);
    assert_eq!(ip.calc_header_checksum(), ip.header_checksum);
    assert_eq!(
        usize::from(u16::from_be_bytes([h[38], h[39]])),
        8 + total,
        "UDP length of the whole"
    );
    // Cut it as the kernel does.
    let partial = u16::from_be_bytes([h[40], h[41]]);
    let whole_len = (8 + total) as u16;
    for payload in &payloads {
        let udp_len = (8 + payload.len()) as u16;
        let mut d = h.to_vec();
        d.extend_from_slice(payload);
        d[16..18].copy_from_slice(&(20 + udp_len).to_be_bytes());
        d[24..26].fill(0);
        let ip_check = checksum::checksum(&d[14..34]);
        d[24..26].copy_from_slice(&ip_check.to_be_bytes());
        d[38..40].copy_from_slice(&udp_len.to_be_bytes());
        // csum16_add(csum16_sub(check, old length), new length)
        let moved = checksum::fold(u32::from(partial) + u32::from(!whole_len) + u32::from(udp_len));
        d[40..42].copy_from_slice(&moved.to_be_bytes());
        let done = checksum::checksum(&d[34..]);
        d[40..42].copy_from_slice(&done.to_be_bytes());
        let p = SlicedPacket::from_ethernet(&d).unwrap();
        let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Udp(udp))) = (&p.net, &p.transport)
        else {
            panic!("not IPv4/UDP")
        };
        let computed = udp
            .to_header()
            .calc_checksum_ipv4(&ip.header().to_header(), udp.payload())
            .unwrap();
        assert_eq!(
            computed,
            udp.checksum(),
            "datagram of {} bytes",
            payload.len()
        );
        assert_eq!(udp.payload(), &payload[..]);
    }
    // What it cannot describe.
    let mut options = first.clone();
    options[14] = 0x46;
    assert!(udp_batch_headers(&options, total, 100).is_none());
    assert!(udp_batch_headers(&first[..41], total, 100).is_none());
    assert!(udp_batch_headers(&first, 65_536, 100).is_none());
}

// ---- a flow's UDP datagrams as one super-datagram ---------------------------

/// `datagrams` merged as the engine merges a run: the first's headers
/// from [`udp_batch_headers`], then every payload.
fn merged(datagrams: &[Vec<u8>]) -> (Vec<u8>, VnetHeader) {
    let segment = datagrams[0].len() - UDP_BATCH_HEADERS;
    let payloads: Vec<u8> = datagrams
        .iter()
        .flat_map(|d| d[UDP_BATCH_HEADERS..].iter().copied())
        .collect();
    let (headers, vnet) = udp_batch_headers(&datagrams[0], payloads.len(), segment as u16).unwrap();
    (headers.iter().copied().chain(payloads).collect(), vnet)
}

proptest::proptest! {
    /// A flow's datagrams (etherparse's), merged into one
    /// super-datagram and cut again as the kernel cuts it, are the same
    /// datagrams byte for byte when their identifications run on by one;
    /// with DF only their identifications may differ (RFC 6864 §4.1).
    #[test]
    fn a_flows_datagrams_merged_and_cut_are_the_same_datagrams(
        count in 2usize..80,
        segment in 1usize..1473,
        last_shorter_by in 0usize..100,
        first_ident in proptest::prelude::any::<u16>(),
        dont_fragment in proptest::prelude::any::<bool>(),
    ) {
        let mut datagrams: Vec<Vec<u8>> = (0..count)
            .map(|k| {
                let payload: Vec<u8> = (0..segment).map(|i| (i * 31 + k * 7) as u8).collect();
                let ident = if dont_fragment { 0 } else { first_ident.wrapping_add(k as u16) };
                udp_datagram(5353, ident, dont_fragment, &payload)
            })
            .collect();
        let shorter = segment.saturating_sub(last_shorter_by).max(1);
        let last = datagrams.len() - 1;
        let ident = if dont_fragment { 0 } else { first_ident.wrapping_add(last as u16) };
        datagrams[last] = udp_datagram(5353, ident, dont_fragment, &vec![0xee; shorter]);
        let run = udp_run_len(datagrams.iter().map(Vec::as_slice));
        // The longest run within both bounds.
        let bytes = |n: usize| (n - 1) * segment + if n == count { shorter } else { segment };
        let most = (1..=count)
            .rev()
            .find(|&n| n <= MAX_UDP_SEGMENTS && bytes(n) <= MAX_UDP_PAYLOAD)
            .unwrap();
        proptest::prop_assert_eq!(run, most);
        if run > 1 {
            let (whole, vnet) = merged(&datagrams[..run]);
            for (k, (cut, original)) in cut(&whole, &vnet).iter().zip(&datagrams).enumerate() {
                if dont_fragment {
                    let mut cut = cut.clone();
                    cut[18..20].fill(0);
                    refresh_ipv4_checksum(&mut cut);
                    proptest::prop_assert_eq!(&cut, original, "datagram {}", k);
                } else {
                    proptest::prop_assert_eq!(cut, original, "datagram {}", k);
                }
            }
        }
    }
}

/// A run ends at the first datagram the kernel would not cut back out of
/// the first's super-datagram as it came, and never takes in one whose
/// checksums do not hold.
#[test]
fn a_run_ends_where_a_datagram_would_not_come_back_as_it_was() {
    let payload = [0x5a; 100];
    let flow: Vec<Vec<u8>> = (0..4)
        .map(|k| udp_datagram(5353, 7 + k, false, &payload))
        .collect();
    let run_with = |third: Vec<u8>| {
        let mut frames = flow.clone();
        frames[2] = third;
        udp_run_len(frames.iter().map(Vec::as_slice))
    };
    assert_eq!(udp_run_len(flow.iter().map(Vec::as_slice)), 4);
    assert_eq!(udp_run_len(std::iter::empty()), 0);
    assert_eq!(udp_run_len([flow[0].as_slice()]), 1);
    let changed = |at: usize, value: u8| {
        let mut d = flow[2].clone();
        d[at] = value;
        if (14..34).contains(&at) {
            refresh_ipv4_checksum(&mut d);
        }
        d
    };
    // Another destination MAC, TOS (an ECN mark), TTL, source address,
    // destination port; DF where the first has none.
    for (at, value, what) in [
        (5, 9, "MAC"),
        (15, 3, "ECN"),
        (22, 63, "TTL"),
        (29, 9, "source address"),
        (37, 1, "destination port"),
        (20, 0x40, "DF"),
    ] {
        assert_eq!(run_with(changed(at, value)), 2, "{what}");
    }
    // Identifications that do not run on by one, without DF.
    assert_eq!(
        run_with(udp_datagram(5353, 100, false, &payload)),
        2,
        "identification"
    );
    // A longer datagram; a shorter one ends the run after it.
    assert_eq!(
        run_with(udp_datagram(5353, 9, false, &[1; 101])),
        2,
        "longer"
    );
    assert_eq!(
        run_with(udp_datagram(5353, 9, false, &[1; 99])),
        3,
        "shorter"
    );
    // A wrong UDP checksum, none at all, a wrong IPv4 header checksum.
    let mut bad = flow[2].clone();
    bad[60] ^= 1;
    assert_eq!(run_with(bad.clone()), 2, "UDP checksum");
    let mut none = flow[2].clone();
    none[40..42].fill(0);
    assert_eq!(run_with(none), 2, "no UDP checksum");
    let mut bad_ip = flow[2].clone();
    bad_ip[24] ^= 1;
    assert_eq!(run_with(bad_ip), 2, "IPv4 header checksum");
    // A first that goes alone: its checksum is wrong.
    assert_eq!(udp_run_len([bad.as_slice(), &flow[3]]), 1);
    // A fragment, IPv4 options, Ethernet padding, a VLAN tag, TCP.
    let mut fragment = flow[2].clone();
    fragment[20] = 0x20;
    refresh_ipv4_checksum(&mut fragment);
    assert_eq!(run_with(fragment), 2, "fragment");
    let mut padded = flow[2].clone();
    padded.push(0);
    assert_eq!(run_with(padded), 2, "padding");
    let mut options = flow[2].clone();
    options[14] = 0x46;
    assert_eq!(run_with(options), 2, "options");
    let (tcp, _) = tso_frame(&payload, false);
    assert_eq!(udp_run_len([tcp.as_slice(), &flow[0]]), 1, "TCP first");
    assert_eq!(run_with(tcp), 2, "TCP");
    // A checksum left partial by a sender on this node is merged.
    let mut partial = flow[2].clone();
    let pseudo = pseudo_header(&partial[14..34], partial.len() - 34);
    partial[40..42].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
    assert_eq!(run_with(partial), 4, "partial checksum");
}

/// With DF the identifications may be anything (a Linux socket that is
/// not connected sends its DF datagrams with identification 0).
#[test]
fn atomic_datagrams_merge_whatever_their_identification() {
    let frames: Vec<Vec<u8>> = [0, 0, 513, 2]
        .iter()
        .map(|&ident| udp_datagram(5353, ident, true, &[3; 18]))
        .collect();
    assert_eq!(udp_run_len(frames.iter().map(Vec::as_slice)), 4);
}
