//! The tunnel module's tests: encapsulation and decapsulation of every
//! mode, round trips, and each refusal.

use std::net::Ipv4Addr;

use crate::buffer::FrameBuf;
use crate::ethernet::{EtherType, MacAddr};
use crate::ipv4::{IpProtocol, Ipv4Packet, Ipv4Repr};

use super::*;

fn path() -> OuterPath {
    OuterPath {
        src_mac: MacAddr([2, 0, 0, 0, 0, 2]),
        dst_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        src_ip: Ipv4Addr::new(192, 168, 100, 2),
        dst_ip: Ipv4Addr::new(192, 168, 100, 1),
    }
}

/// An Ethernet + IPv4 frame with `tos` and `payload` bytes after the header.
fn inner(tos: u8, payload: usize) -> Vec<u8> {
    let mut f = vec![0u8; 14];
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    Ipv4Repr {
        src: Ipv4Addr::new(10, 244, 2, 2),
        dst: Ipv4Addr::new(10, 244, 1, 2),
        protocol: IpProtocol::Udp,
        payload_len: payload,
        ttl: 63,
        tos,
        ident: 1,
        dont_frag: true,
    }
    .emit(&mut ip);
    f.extend_from_slice(&ip);
    f.resize(14 + 20 + payload, 0x5a);
    f
}

fn encap(config: TunnelConfig, frame: &[u8], headroom: usize) -> Result<Vec<u8>, EncapError> {
    let mut buf = vec![0u8; headroom + frame.len()];
    buf[headroom..].copy_from_slice(frame);
    let mut fb = FrameBuf::new(&mut buf, headroom, headroom + frame.len());
    Tunnel::new(config).encapsulate(&path(), &mut fb, 7)?;
    Ok(fb.frame().to_vec())
}

/// Overhead and pod MTU per mode over a 1500-byte underlay, as flannel
/// and Calico set them.
#[test]
fn overhead_and_inner_mtu() {
    assert_eq!(
        (
            TunnelMode::Vxlan.overhead(),
            TunnelMode::Vxlan.inner_mtu(1500)
        ),
        (50, 1450)
    );
    assert_eq!(
        (
            TunnelMode::Ipip.overhead(),
            TunnelMode::Ipip.inner_mtu(1500)
        ),
        (20, 1480)
    );
    assert_eq!(
        (
            TunnelMode::IpInUdp.overhead(),
            TunnelMode::IpInUdp.inner_mtu(1500)
        ),
        (28, 1472)
    );
    assert_eq!(TunnelMode::Vxlan.inner_mtu(9000), 8950);
    assert_eq!(TunnelMode::Vxlan.inner_mtu(40), 0, "saturates");
    // A pod packet of exactly the inner MTU makes a full-size underlay packet.
    for mode in [TunnelMode::Vxlan, TunnelMode::Ipip, TunnelMode::IpInUdp] {
        let frame = inner(0, usize::from(mode.inner_mtu(1500)) - 20);
        let outer = encap(TunnelConfig::for_mode(mode), &frame, 64).unwrap();
        assert_eq!(outer.len() - 14, 1500, "{mode}");
    }
}

#[test]
fn encapsulation_errors() {
    let frame = inner(0, 10);
    let needed = TunnelMode::Vxlan.headroom_needed();
    assert_eq!(
        encap(TunnelConfig::vxlan(), &frame, needed - 1),
        Err(EncapError::Headroom {
            needed,
            available: needed - 1
        })
    );
    assert!(encap(TunnelConfig::vxlan(), &frame, needed).is_ok());
    assert_eq!(
        TunnelMode::Ipip.headroom_needed(),
        20,
        "IPIP reuses the inner Ethernet header's 14 bytes"
    );
    assert!(encap(TunnelConfig::ipip(), &frame, 20).is_ok());
    let mut arp = frame.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(
        encap(TunnelConfig::ipip(), &arp, 64),
        Err(EncapError::InnerNotIpv4(EtherType::Arp))
    );
    assert!(
        encap(TunnelConfig::vxlan(), &arp, 64).is_ok(),
        "VXLAN carries any Ethernet frame"
    );
    assert!(matches!(
        encap(TunnelConfig::vxlan(), &frame[..10], 64),
        Err(EncapError::Inner(_))
    ));
    let jumbo = vec![0u8; 65_535 - 20];
    assert!(matches!(
        encap(TunnelConfig::vxlan(), &jumbo, 64),
        Err(EncapError::TooLong { .. })
    ));
}

/// RFC 6040 applied to a real packet: outer CE marks an ECT inner
/// packet CE (its checksum still valid) and drops a Not-ECT one.
#[test]
fn decapsulation_applies_ecn() {
    let decap = Decapsulator::new(DecapConfig::for_tunnel(&TunnelConfig::vxlan()));
    for (inner_tos, expect) in [
        (0x02u8, Ok(0x03u8)),
        (0x01, Ok(0x03)),
        (0x00, Err(DecapError::EcnCongestionOnNotEct)),
    ] {
        let mut outer = encap(TunnelConfig::vxlan(), &inner(inner_tos, 8), 64).unwrap();
        // Mark congestion on the underlay: outer ECN CE (fixing the checksum).
        outer[15] |= 0x03;
        Ipv4Packet::new_checked(&mut outer[14..])
            .unwrap()
            .fill_checksum();
        match (decap.decapsulate_frame(&mut outer), expect) {
            (Ok(d), Ok(tos)) => {
                let ip = Ipv4Packet::new_checked(&outer[d.inner_range.start + 14..]).unwrap();
                assert_eq!(ip.tos(), tos);
                ip.verify_checksum().unwrap();
            }
            (got, want) => assert_eq!(got.map(|_| ()), want.map(|_| ())),
        }
    }
    // Outer ECT(1) over inner ECT(0) becomes ECT(1); IPIP likewise.
    let ipip = Decapsulator::new(DecapConfig::for_tunnel(&TunnelConfig::ipip()));
    let mut outer = encap(TunnelConfig::ipip(), &inner(0x02, 8), 64).unwrap();
    outer[15] = (outer[15] & !0x03) | 0x01;
    Ipv4Packet::new_checked(&mut outer[14..])
        .unwrap()
        .fill_checksum();
    let d = ipip.decapsulate_frame(&mut outer).unwrap();
    assert_eq!(outer[d.inner_range.start + 1] & 0x03, 0x01);
}

#[test]
fn decapsulation_refuses_other_protocols_and_ports() {
    let decap = Decapsulator::new(DecapConfig::for_tunnel(&TunnelConfig::vxlan()));
    let mut ipip = encap(TunnelConfig::ipip(), &inner(0, 8), 64).unwrap();
    assert_eq!(
        decap.decapsulate_frame(&mut ipip),
        Err(DecapError::NotTunnelProtocol(IpProtocol::Ipip))
    );
    let mut udp = encap(TunnelConfig::ip_in_udp(), &inner(0, 8), 64).unwrap();
    assert_eq!(
        decap.decapsulate_frame(&mut udp),
        Err(DecapError::NotTunnelPort(PORT_FLANNEL_UDP))
    );
    let mut arp = inner(0, 8);
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(
        decap.decapsulate_frame(&mut arp),
        Err(DecapError::NotIpv4(EtherType::Arp))
    );
    // Reserved bits are dropped by default and ignored on request (RFC 7348 §5).
    let mut reserved = encap(TunnelConfig::vxlan(), &inner(0, 8), 64).unwrap();
    reserved[45] = 0x01;
    assert_eq!(
        decap.decapsulate_frame(&mut reserved.clone()),
        Err(DecapError::VxlanReserved { flags: 0x08 })
    );
    let lenient = Decapsulator::new(DecapConfig {
        ignore_vxlan_reserved: true,
        ..DecapConfig::for_tunnel(&TunnelConfig::vxlan())
    });
    assert!(lenient.decapsulate_frame(&mut reserved).is_ok());
}
