//! podswitch's encapsulation checked against independent sources, byte for
//! byte:
//!
//! - `fixtures/scapy_vectors.json`, made by `fixtures/make_scapy_vectors.py`
//!   with Scapy: one inner frame and Scapy's outer frame per case, VXLAN
//!   (ports 8472 and 4789, zero and computed checksums, DSCP, a non-IP
//!   inner frame, a full-MTU frame, the largest VNI), IPIP and IP-in-UDP.
//! - `fixtures/kernel_vxlan_{csum,nocsum}.pcap`, made by
//!   `fixtures/capture_kernel_vxlan.sh`: what the Linux kernel's vxlan device,
//!   configured as flannel configures flannel.1, put on the wire.
//!
//! Two fields cannot be predicted and are taken from the reference frame
//! and fed to podswitch's encapsulator, so that every other byte, the
//! checksums that cover these two included, must match:
//! - the outer IPv4 identification: the kernel picks it with
//!   `ip_select_ident()` (a hashed per-destination counter), Scapy from its
//!   arguments; podswitch takes it from its caller's counter.
//! - the outer UDP source port: the kernel hashes the inner flow with a seed
//!   chosen at boot (`udp_flow_src_port()`); podswitch uses its own seeded hash
//!   in the same 32768-60999 range (checked separately below).

use std::net::Ipv4Addr;

use podswitch_encap::pcap::PcapReader;
use podswitch_encap::{
    hex, DecapConfig, Decapsulator, DontFragment, Dscp, FrameBuf, Inner, MacAddr, OuterPath,
    SourcePort, Ttl, Tunnel, TunnelConfig, TunnelMode, Vni,
};
use serde_json::Value;

const HEADROOM: usize = 128;

/// Encapsulates `inner` and returns the outer frame.
fn encapsulate(tunnel: &Tunnel, path: &OuterPath, inner: &[u8], ident: u16) -> Vec<u8> {
    let mut buf = vec![0u8; HEADROOM + inner.len()];
    buf[HEADROOM..].copy_from_slice(inner);
    let mut frame = FrameBuf::new(&mut buf, HEADROOM, HEADROOM + inner.len());
    tunnel
        .encapsulate(path, &mut frame, ident)
        .expect("encapsulate");
    frame.frame().to_vec()
}

/// Decapsulates `outer` and returns the inner bytes.
fn decapsulate(config: DecapConfig, outer: &[u8]) -> (podswitch_encap::Decapsulated, Vec<u8>) {
    let mut bytes = outer.to_vec();
    let d = Decapsulator::new(config)
        .decapsulate_frame(&mut bytes)
        .expect("decapsulate");
    let inner = bytes[d.inner_range.clone()].to_vec();
    (d, inner)
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("vector field {key} missing"))
}

fn u64_field(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("vector field {key} missing"))
}

/// Where the carried bytes begin inside the reference inner frame: VXLAN
/// carries the whole frame, IPIP and IP-in-UDP only its IP packet.
fn carried(mode: TunnelMode, inner: &[u8]) -> &[u8] {
    match mode {
        TunnelMode::Vxlan => inner,
        TunnelMode::Ipip | TunnelMode::IpInUdp => &inner[14..],
    }
}

#[test]
fn encapsulation_equals_scapy_byte_for_byte() {
    let text = include_str!("fixtures/scapy_vectors.json");
    let doc: Value = serde_json::from_str(text).expect("fixture is JSON");
    let vectors = doc["vectors"].as_array().expect("vectors");
    assert!(vectors.len() >= 8, "fixture lost its vectors");
    for v in vectors {
        let name = str_field(v, "name");
        let mode = match str_field(v, "mode") {
            "vxlan" => TunnelMode::Vxlan,
            "ipip" => TunnelMode::Ipip,
            "udp" => TunnelMode::IpInUdp,
            other => panic!("{name}: unknown mode {other}"),
        };
        let inner = hex::decode(str_field(v, "inner")).unwrap();
        let expected = hex::decode(str_field(v, "outer")).unwrap();
        let mut config = TunnelConfig::for_mode(mode);
        if mode != TunnelMode::Ipip {
            // Scapy was told these explicitly; IPIP keeps tunl0's inherit
            // defaults, so Scapy's explicit TTL/DF/TOS check our inheritance.
            config.ttl = Ttl::Fixed(u64_field(v, "ttl") as u8);
            config.df = if v["df"].as_bool().unwrap() {
                DontFragment::Set
            } else {
                DontFragment::Clear
            };
            config.dscp = Dscp::Fixed(u64_field(v, "tos") as u8);
            config.dst_port = u64_field(v, "dst_port") as u16;
            config.src_port = SourcePort::Fixed(u64_field(v, "src_port") as u16);
            config.udp_checksum = v["udp_checksum"].as_bool().unwrap();
        }
        if mode == TunnelMode::Vxlan {
            config.vni = Vni::new(u64_field(v, "vni") as u32).unwrap();
        }
        let path = OuterPath {
            src_mac: str_field(v, "outer_src_mac").parse().unwrap(),
            dst_mac: str_field(v, "outer_dst_mac").parse().unwrap(),
            src_ip: str_field(v, "outer_src_ip").parse().unwrap(),
            dst_ip: str_field(v, "outer_dst_ip").parse().unwrap(),
        };
        let ours = encapsulate(
            &Tunnel::new(config),
            &path,
            &inner,
            u64_field(v, "ident") as u16,
        );
        assert_eq!(
            hex::encode(&ours),
            hex::encode(&expected),
            "{name}: podswitch != Scapy"
        );

        let (d, decapsulated) = decapsulate(DecapConfig::for_tunnel(&config), &expected);
        assert_eq!(d.mode, mode, "{name}");
        assert_eq!(
            decapsulated,
            carried(mode, &inner),
            "{name}: decapsulated bytes"
        );
        assert_eq!(d.outer_src, path.src_ip);
        assert_eq!(
            d.inner,
            if mode == TunnelMode::Vxlan {
                Inner::Ethernet
            } else {
                Inner::Ipv4
            }
        );
    }
}

/// The fields of the kernel's outer headers that podswitch must reproduce.
struct KernelFrame {
    bytes: Vec<u8>,
    path: OuterPath,
    ident: u16,
    src_port: u16,
}

fn kernel_frames(pcap: &[u8]) -> Vec<KernelFrame> {
    let records = PcapReader::new(pcap).unwrap().records().unwrap();
    records
        .into_iter()
        .map(|r| {
            let b = r.data;
            let mac = |at: usize| MacAddr(b[at..at + 6].try_into().unwrap());
            let ip = |at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
            KernelFrame {
                path: OuterPath {
                    dst_mac: mac(0),
                    src_mac: mac(6),
                    src_ip: ip(26),
                    dst_ip: ip(30),
                },
                ident: u16::from_be_bytes([b[18], b[19]]),
                src_port: u16::from_be_bytes([b[34], b[35]]),
                bytes: b,
            }
        })
        .collect()
}

fn check_kernel_capture(pcap: &[u8], udp_checksum: bool) {
    let frames = kernel_frames(pcap);
    assert_eq!(
        frames.len(),
        3,
        "the capture holds a ping, a UDP datagram and a full-MTU ping"
    );
    let mut config = TunnelConfig::vxlan();
    config.udp_checksum = udp_checksum;
    for (i, k) in frames.iter().enumerate() {
        let (d, inner) = decapsulate(DecapConfig::for_tunnel(&config), &k.bytes);
        assert_eq!(
            inner,
            &k.bytes[50..],
            "frame {i}: decapsulation returns the exact inner frame"
        );
        assert_eq!(d.vni, Some(Vni::FLANNEL));
        assert!(
            (32768..=60999).contains(&k.src_port),
            "kernel source port {} outside the range podswitch uses",
            k.src_port
        );
        let mut exact = config;
        exact.src_port = SourcePort::Fixed(k.src_port);
        let ours = encapsulate(&Tunnel::new(exact), &k.path, &inner, k.ident);
        assert_eq!(
            hex::encode(&ours),
            hex::encode(&k.bytes),
            "frame {i}: podswitch != kernel"
        );
    }
    // What the kernel carried: ping, UDP, and a 1450-byte (pod MTU) packet.
    let inner_ip = |i: usize| &frames[i].bytes[50 + 14..];
    assert_eq!(inner_ip(0)[9], 1, "ICMP");
    assert_eq!(&inner_ip(0)[16..20], &[10, 244, 2, 5]);
    assert_eq!(inner_ip(1)[9], 17, "UDP");
    assert!(frames[1].bytes.ends_with(b"podswitch kernel vector"));
    assert_eq!(u16::from_be_bytes([inner_ip(2)[2], inner_ip(2)[3]]), 1450);
    assert_eq!(
        frames[2].bytes.len(),
        14 + 1500,
        "a 1450-byte pod packet fills a 1500-byte underlay"
    );
}

#[test]
fn encapsulation_equals_kernel_vxlan_with_checksum() {
    check_kernel_capture(include_bytes!("fixtures/kernel_vxlan_csum.pcap"), true);
}

#[test]
fn encapsulation_equals_kernel_vxlan_without_checksum() {
    check_kernel_capture(include_bytes!("fixtures/kernel_vxlan_nocsum.pcap"), false);
}

/// The checked-in capture with the outer UDP checksum computed must keep
/// verifying after one bit of its payload flips: podswitch refuses it with
/// its own reason (a wrong non-zero checksum), not as a generic error.
#[test]
fn corrupted_kernel_frame_is_dropped_for_its_checksum() {
    let frames = kernel_frames(include_bytes!("fixtures/kernel_vxlan_csum.pcap"));
    let mut bytes = frames[1].bytes.clone();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    let err = Decapsulator::new(DecapConfig::for_tunnel(&TunnelConfig::vxlan()))
        .decapsulate_frame(&mut bytes)
        .unwrap_err();
    assert!(
        matches!(err, podswitch_encap::DecapError::UdpChecksum { .. }),
        "{err:?}"
    );
}
