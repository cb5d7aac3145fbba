//! Property tests: encapsulation round-trips, etherparse (an independent
//! parser) reads our outer headers, and no input makes decapsulation or the
//! dissector panic. Regressions proptest finds are kept in
//! `proptest-regressions/` beside this file.

use std::net::Ipv4Addr;

use podswitch_encap::dissect::{dissect, DissectOptions};
use podswitch_encap::ipv4::Ipv4Repr;
use podswitch_encap::{
    DecapConfig, Decapsulator, FrameBuf, IpProtocol, MacAddr, OuterPath, Tunnel, TunnelConfig,
    TunnelMode, Vni,
};
use proptest::prelude::*;

const HEADROOM: usize = 64;

fn mode() -> impl Strategy<Value = TunnelMode> {
    prop_oneof![
        Just(TunnelMode::Vxlan),
        Just(TunnelMode::Ipip),
        Just(TunnelMode::IpInUdp)
    ]
}

fn path() -> impl Strategy<Value = OuterPath> {
    (
        any::<[u8; 6]>(),
        any::<[u8; 6]>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(|(s, d, si, di)| OuterPath {
            src_mac: MacAddr(s),
            dst_mac: MacAddr(d),
            src_ip: Ipv4Addr::from(si),
            dst_ip: Ipv4Addr::from(di),
        })
}

/// An Ethernet frame carrying a well-formed IPv4 packet with arbitrary
/// header fields and payload (what IPIP and IP-in-UDP accept).
fn ipv4_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<[u8; 12]>(),
        any::<u32>(),
        any::<u32>(),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..1500),
    )
        .prop_map(|(macs, src, dst, protocol, ttl, tos, df, payload)| {
            let mut f = macs.to_vec();
            f.extend_from_slice(&[0x08, 0x00]);
            let repr = Ipv4Repr {
                src: Ipv4Addr::from(src),
                dst: Ipv4Addr::from(dst),
                protocol: IpProtocol::from(protocol),
                payload_len: payload.len(),
                ttl,
                tos,
                ident: 7,
                dont_frag: df,
            };
            let mut header = [0u8; 20];
            repr.emit(&mut header);
            f.extend_from_slice(&header);
            f.extend_from_slice(&payload);
            f
        })
}

/// Any frame VXLAN can carry: 14..1514 arbitrary bytes, or a real IPv4 frame.
fn vxlan_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![prop::collection::vec(any::<u8>(), 14..1514), ipv4_frame()]
}

fn config(mode: TunnelMode, vni: u32, csum: bool, seed: u32) -> TunnelConfig {
    let mut c = TunnelConfig::for_mode(mode);
    c.vni = Vni::new(vni).unwrap();
    c.udp_checksum = csum;
    c.flow_seed = seed;
    c
}

fn encapsulate(config: TunnelConfig, path: &OuterPath, inner: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; HEADROOM + inner.len()];
    buf[HEADROOM..].copy_from_slice(inner);
    let mut frame = FrameBuf::new(&mut buf, HEADROOM, HEADROOM + inner.len());
    Tunnel::new(config)
        .encapsulate(path, &mut frame, 0x1234)
        .expect("encapsulate");
    frame.frame().to_vec()
}

fn accept_all() -> Decapsulator {
    Decapsulator::new(DecapConfig {
        vxlan_port: Some(8472),
        vni: Vni::FLANNEL,
        ip_in_udp_port: Some(8285),
        ipip: true,
        ignore_vxlan_reserved: false,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// decap(encap(x)) == x, and etherparse reads the same outer headers.
    #[test]
    fn round_trip(
        mode in mode(),
        vxlan_inner in vxlan_frame(),
        ip_inner in ipv4_frame(),
        path in path(),
        vni in 0u32..=Vni::MAX,
        csum in any::<bool>(),
        seed in any::<u32>(),
    ) {
        let inner = if mode == TunnelMode::Vxlan { vxlan_inner } else { ip_inner };
        let cfg = config(mode, vni, csum, seed);
        let mut outer = encapsulate(cfg, &path, &inner);
        let independent = outer.clone();

        let d = Decapsulator::new(DecapConfig::for_tunnel(&cfg)).decapsulate_frame(&mut outer).unwrap();
        let carried = if mode == TunnelMode::Vxlan { &inner[..] } else { &inner[14..] };
        prop_assert_eq!(&outer[d.inner_range.clone()], carried);
        prop_assert_eq!(d.outer_src, path.src_ip);
        prop_assert_eq!(d.outer_dst, path.dst_ip);
        prop_assert_eq!(d.vni, (mode == TunnelMode::Vxlan).then_some(cfg.vni));

        // etherparse, written by others, agrees on the outer headers.
        let sliced = etherparse::SlicedPacket::from_ethernet(&independent).unwrap();
        match sliced.net {
            Some(etherparse::NetSlice::Ipv4(ip)) => {
                prop_assert_eq!(Ipv4Addr::from(ip.header().source()), path.src_ip);
                prop_assert_eq!(Ipv4Addr::from(ip.header().destination()), path.dst_ip);
                let expected_proto = if mode == TunnelMode::Ipip { 4 } else { 17 };
                prop_assert_eq!(ip.header().protocol().0, expected_proto);
                let header = etherparse::Ipv4Header::from_slice(&independent[14..]).unwrap().0;
                prop_assert_eq!(header.calc_header_checksum(), header.header_checksum);
            }
            other => prop_assert!(false, "etherparse saw {:?}", other.is_some()),
        }
        if mode != TunnelMode::Ipip {
            match sliced.transport {
                Some(etherparse::TransportSlice::Udp(u)) => {
                    prop_assert_eq!(u.destination_port(), cfg.dst_port);
                    let payload = u.payload();
                    let carried_offset = if mode == TunnelMode::Vxlan { 8 } else { 0 };
                    prop_assert_eq!(&payload[carried_offset..], carried);
                    if csum {
                        let header = u.to_header();
                        let ip = etherparse::Ipv4Header::from_slice(&independent[14..]).unwrap().0;
                        prop_assert_eq!(header.calc_checksum_ipv4(&ip, payload).unwrap(), u.checksum());
                    } else {
                        prop_assert_eq!(u.checksum(), 0);
                    }
                }
                _ => prop_assert!(false, "etherparse found no UDP"),
            }
        }
    }

    /// Arbitrary bytes: decapsulation returns Ok or Err, never panics, and
    /// an Ok range lies inside the buffer. The dissector never panics.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let mut b = bytes.clone();
        if let Ok(d) = accept_all().decapsulate_frame(&mut b) {
            prop_assert!(d.inner_range.end <= b.len());
        }
        let mut b = bytes.clone();
        let _ = accept_all().decapsulate_ipv4(&mut b);
        let _ = dissect(&bytes, &DissectOptions::default()).to_string();
    }

    /// A valid tunnel frame with a few bytes changed and maybe cut short:
    /// the inputs that reach deep into the decoder.
    #[test]
    fn mutated_tunnel_frames_never_panic(
        mode in mode(),
        inner in ipv4_frame(),
        path in path(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
    ) {
        let mut outer = encapsulate(config(mode, 1, true, 0), &path, &inner);
        for (at, value) in flips {
            let i = at.index(outer.len());
            outer[i] = value;
        }
        if do_cut {
            outer.truncate(cut.index(outer.len()));
        }
        let mut b = outer.clone();
        if let Ok(d) = accept_all().decapsulate_frame(&mut b) {
            prop_assert!(d.inner_range.end <= b.len());
        }
        let _ = dissect(&outer, &DissectOptions::default()).to_string();
    }
}

/// Every truncation of every mode's frame is an error, and never a panic.
#[test]
fn every_truncation_is_an_error() {
    let mut inner = vec![0x0au8; 12];
    inner.extend_from_slice(&[0x08, 0x00]);
    let repr = Ipv4Repr {
        src: Ipv4Addr::new(10, 244, 2, 2),
        dst: Ipv4Addr::new(10, 244, 1, 2),
        protocol: IpProtocol::Udp,
        payload_len: 30,
        ttl: 64,
        tos: 0,
        ident: 1,
        dont_frag: true,
    };
    let mut h = [0u8; 20];
    repr.emit(&mut h);
    inner.extend_from_slice(&h);
    inner.extend_from_slice(&[0x55; 30]);
    let path = OuterPath {
        src_mac: MacAddr([2, 0, 0, 0, 0, 2]),
        dst_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        src_ip: Ipv4Addr::new(192, 168, 100, 2),
        dst_ip: Ipv4Addr::new(192, 168, 100, 1),
    };
    for mode in [TunnelMode::Vxlan, TunnelMode::Ipip, TunnelMode::IpInUdp] {
        let outer = encapsulate(config(mode, 1, true, 0), &path, &inner);
        for len in 0..outer.len() {
            let mut cut = outer[..len].to_vec();
            assert!(
                accept_all().decapsulate_frame(&mut cut).is_err(),
                "{mode} cut at {len}"
            );
        }
        let mut whole = outer.clone();
        assert!(
            accept_all().decapsulate_frame(&mut whole).is_ok(),
            "{mode} whole"
        );
    }
}
