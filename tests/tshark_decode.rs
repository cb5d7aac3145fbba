//! tshark, an independent decoder, reads podswitch's encapsulated frames
//! (written to a pcap by this test) as VXLAN / IPIP / flannel UDP with the
//! right VNI, ports and addresses, checksums verified, and no malformed
//! packet or warning.

mod common;

use std::net::Ipv4Addr;

use podswitch_encap::{hex, FrameBuf, MacAddr, OuterPath, Tunnel, TunnelConfig, TunnelMode, Vni};
use serde_json::Value;

/// Wireshark's expert severities (epan/proto.h): chat 0x00200000, note
/// 0x00400000, warn 0x00600000, error 0x00800000.
const PI_WARN: u64 = 0x0060_0000;

struct Case {
    config: TunnelConfig,
    inner: Vec<u8>,
    /// The protocol chain tshark must see.
    protocols: &'static str,
}

fn scapy_inner(name: &str) -> Vec<u8> {
    let doc: Value = serde_json::from_str(include_str!("fixtures/scapy_vectors.json")).unwrap();
    let v = doc["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .expect(name);
    hex::decode(v["inner"].as_str().unwrap()).unwrap()
}

#[test]
fn tshark_decodes_podswitch_tunnels() {
    common::require(&["tshark"]);
    let ping = scapy_inner("vxlan-8472-icmp");
    let udp = scapy_inner("vxlan-4789-udp-csum-dscp");
    let tcp = scapy_inner("ipip-tcp-inherit");
    let arp = scapy_inner("vxlan-8472-arp");
    let vni42 = TunnelConfig {
        vni: Vni::new(42).unwrap(),
        dst_port: 4789,
        udp_checksum: true,
        ..TunnelConfig::vxlan()
    };
    let cases = [
        Case {
            config: TunnelConfig::vxlan(),
            inner: ping.clone(),
            protocols: "eth:ethertype:ip:udp:vxlan:eth:ethertype:ip:icmp:data",
        },
        Case {
            config: vni42,
            inner: udp.clone(),
            protocols: "eth:ethertype:ip:udp:vxlan:eth:ethertype:ip:udp:data",
        },
        Case {
            config: TunnelConfig::vxlan(),
            inner: arp,
            protocols: "eth:ethertype:ip:udp:vxlan:eth:ethertype:arp",
        },
        Case {
            config: TunnelConfig::ipip(),
            inner: tcp,
            protocols: "eth:ethertype:ip:ip:tcp",
        },
        Case {
            config: TunnelConfig::ipip(),
            inner: ping.clone(),
            protocols: "eth:ethertype:ip:ip:icmp:data",
        },
        Case {
            config: TunnelConfig::ip_in_udp(),
            inner: ping,
            protocols: "eth:ethertype:ip:udp:ip:icmp:data",
        },
        Case {
            config: TunnelConfig::ip_in_udp(),
            inner: udp,
            protocols: "eth:ethertype:ip:udp:ip:udp:data",
        },
    ];
    let path = OuterPath {
        src_mac: MacAddr([0x02, 0, 0xc0, 0xa8, 0x64, 0x02]),
        dst_mac: MacAddr([0x02, 0, 0xc0, 0xa8, 0x64, 0x01]),
        src_ip: Ipv4Addr::new(192, 168, 100, 2),
        dst_ip: Ipv4Addr::new(192, 168, 100, 1),
    };
    let mut frames = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let mut buf = vec![0u8; 64 + case.inner.len()];
        buf[64..].copy_from_slice(&case.inner);
        let mut frame = FrameBuf::new(&mut buf, 64, 64 + case.inner.len());
        Tunnel::new(case.config)
            .encapsulate(&path, &mut frame, i as u16)
            .unwrap();
        frames.push(frame.frame().to_vec());
    }
    let lines = common::tshark_fields(
        &frames,
        &["udp.port==8472,vxlan", "udp.port==8285,ip"],
        &[
            "frame.protocols",
            "vxlan.vni",
            "udp.dstport",
            "udp.srcport",
            "ip.src",
            "ip.dst",
            "ip.proto",
            "_ws.malformed",
            "_ws.expert.severity",
            "ip.checksum.status",
            "udp.checksum.status",
        ],
    );
    assert_eq!(lines.len(), cases.len(), "tshark output:\n{lines:?}");
    for (case, f) in cases.iter().zip(&lines) {
        let line = f.join(";");
        let cfg = &case.config;
        assert_eq!(f[0], case.protocols, "{line}");
        let addresses: Vec<&str> = f[4].split(',').collect();
        assert_eq!(addresses[0], "192.168.100.2", "outer source: {line}");
        assert_eq!(
            f[5].split(',').next(),
            Some("192.168.100.1"),
            "outer destination: {line}"
        );
        assert!(
            addresses.len() >= 2 || case.protocols.ends_with("arp"),
            "inner source: {line}"
        );
        match cfg.mode {
            TunnelMode::Vxlan => {
                assert_eq!(f[1], cfg.vni.get().to_string(), "VNI: {line}");
                assert_eq!(
                    f[2].split(',').next(),
                    Some(cfg.dst_port.to_string().as_str()),
                    "{line}"
                );
                let sport: u16 = f[3].split(',').next().unwrap().parse().unwrap();
                assert!(
                    (32768..=60999).contains(&sport),
                    "source port {sport} outside 32768-60999"
                );
            }
            TunnelMode::Ipip => assert!(f[6].starts_with("4,"), "outer protocol 4: {line}"),
            TunnelMode::IpInUdp => {
                assert_eq!(f[2].split(',').next(), Some("8285"), "{line}");
                assert_eq!(f[3].split(',').next(), Some("8285"), "{line}");
            }
        }
        assert!(f[7].is_empty(), "tshark calls it malformed: {line}");
        let worst = f[8]
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<u64>().unwrap())
            .max()
            .unwrap_or(0);
        assert!(
            worst < PI_WARN,
            "tshark expert warning/error (severity {worst:#x}): {line}"
        );
        // Checksum status 1 = good, 2 = unverified (zero UDP checksum); never 0 = bad.
        for status in f[9]
            .split(',')
            .chain(f[10].split(','))
            .filter(|s| !s.is_empty())
        {
            assert_ne!(status, "0", "tshark says a checksum is bad: {line}");
        }
        assert!(
            f[9].split(',').any(|s| s == "1"),
            "tshark verified the IPv4 header checksum: {line}"
        );
    }
}
