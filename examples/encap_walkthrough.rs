//! How a packet crosses nodes in a flannel or Calico cluster, byte by byte.
//!
//! The scenario of flannel's documentation (shared/seeds): pod 10.244.2.2 on
//! node02 (underlay 100.100.137.202) pings pod 10.244.1.2 on node01
//! (100.100.137.201). node02's route table says
//! `10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink`, its ARP table maps
//! 10.244.1.0 to node01's VTEP MAC 42:88:6a:88:a9:3f, and
//! `bridge fdb show dev flannel.1` maps that MAC to 100.100.137.201. The
//! same inner packet is then sent three ways: VXLAN (flannel's default),
//! IPIP (Calico) and IP-in-UDP (flannel's udp backend). Each outer frame is
//! printed field by field with offsets and hex, and all three are written
//! to a pcap file Wireshark opens.
//!
//! Run: `cargo run --example encap_walkthrough -- [FILE.pcap]`
//! (default `walkthrough.pcap`). Nothing is sent anywhere.

use std::fs::File;
use std::io::BufWriter;
use std::net::Ipv4Addr;
use std::process::ExitCode;

use podswitch_encap::dissect::{dissect, DissectOptions};
use podswitch_encap::ethernet::{EtherType, EthernetRepr};
use podswitch_encap::ipv4::Ipv4Repr;
use podswitch_encap::pcap::PcapWriter;
use podswitch_encap::{
    checksum, FrameBuf, IpProtocol, MacAddr, OuterPath, Tunnel, TunnelConfig, TunnelMode,
};

/// node01's flannel.1 MAC, from the seed's `bridge fdb show dev flannel.1`.
const NODE01_VTEP: MacAddr = MacAddr([0x42, 0x88, 0x6a, 0x88, 0xa9, 0x3f]);
/// node02's flannel.1 MAC. The seed does not show it; this one is made up
/// (locally administered, as flannel's are).
const NODE02_VTEP: MacAddr = MacAddr([0xd6, 0x8a, 0x5e, 0x47, 0x3c, 0x02]);
/// The underlay NICs' MACs (ens192 in the seed), also made up.
const NODE02_NIC: MacAddr = MacAddr([0x02, 0x50, 0x56, 0x89, 0xca, 0x02]);
const NODE01_NIC: MacAddr = MacAddr([0x02, 0x50, 0x56, 0x89, 0xca, 0x01]);
const HEADROOM: usize = 64;

/// The inner frame as node02's kernel hands it to flannel.1: routed once
/// (TTL 64 -> 63), MACs rewritten to the VTEPs.
fn inner_frame() -> Vec<u8> {
    let payload = b"hello from busybox on node02";
    let icmp_len = 8 + payload.len();
    let mut frame = vec![0u8; 14 + 20 + icmp_len];
    EthernetRepr {
        src: NODE02_VTEP,
        dst: NODE01_VTEP,
        ethertype: EtherType::Ipv4,
    }
    .emit(&mut frame);
    Ipv4Repr {
        src: Ipv4Addr::new(10, 244, 2, 2),
        dst: Ipv4Addr::new(10, 244, 1, 2),
        protocol: IpProtocol::Icmp,
        payload_len: icmp_len,
        ttl: 63,
        tos: 0,
        ident: 0x1c46,
        dont_frag: true,
    }
    .emit(&mut frame[14..]);
    let icmp = &mut frame[34..];
    icmp[0] = 8; // echo request
    icmp[4..6].copy_from_slice(&0x0d2fu16.to_be_bytes());
    icmp[6..8].copy_from_slice(&1u16.to_be_bytes());
    icmp[8..].copy_from_slice(payload);
    let c = checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    frame
}

fn story(mode: TunnelMode) -> &'static str {
    match mode {
        TunnelMode::Vxlan => {
            "flannel vxlan: flannel.1 wraps the whole inner Ethernet frame (VTEP MACs) in\n\
             VXLAN (VNI 1) in UDP to port 8472, addressed to the node the FDB names.\n\
             Overhead 50 bytes: a 1500-byte underlay leaves the pod an MTU of 1450."
        }
        TunnelMode::Ipip => {
            "Calico IPIP: tunl0 drops the inner Ethernet header and puts the inner IPv4\n\
             packet straight after an outer IPv4 header with protocol 4; TTL and DF are\n\
             copied from the inner header. Overhead 20 bytes: pod MTU 1480."
        }
        TunnelMode::IpInUdp => {
            "flannel udp: flanneld reads the inner IPv4 packet from its TUN device and\n\
             sends it as the payload of a UDP datagram, port 8285 to 8285.\n\
             Overhead 28 bytes: pod MTU 1472."
        }
    }
}

fn main() -> ExitCode {
    let out_path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "walkthrough.pcap".to_string());
    let path = OuterPath {
        src_mac: NODE02_NIC,
        dst_mac: NODE01_NIC,
        src_ip: Ipv4Addr::new(100, 100, 137, 202),
        dst_ip: Ipv4Addr::new(100, 100, 137, 201),
    };
    let inner = inner_frame();
    println!(
        "pod 10.244.2.2 (node02, 100.100.137.202) -> pod 10.244.1.2 (node01, 100.100.137.201)\n"
    );
    println!("The inner frame, as node02's kernel routes it towards flannel.1:");
    print!("{}", dissect(&inner, &DissectOptions::default()));

    let file = match File::create(&out_path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("encap_walkthrough: cannot create {out_path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut pcap = PcapWriter::new(BufWriter::new(file)).expect("pcap header");
    for (i, mode) in [TunnelMode::Vxlan, TunnelMode::Ipip, TunnelMode::IpInUdp]
        .into_iter()
        .enumerate()
    {
        let tunnel = Tunnel::new(TunnelConfig::for_mode(mode));
        let mut buf = vec![0u8; HEADROOM + inner.len()];
        buf[HEADROOM..].copy_from_slice(&inner);
        let mut frame = FrameBuf::new(&mut buf, HEADROOM, HEADROOM + inner.len());
        tunnel
            .encapsulate(&path, &mut frame, 0x4d00 + i as u16)
            .expect("the walkthrough frame fits");
        println!(
            "\n==== {} ({} bytes on the wire) ====",
            mode.to_string().to_uppercase(),
            frame.len()
        );
        println!("{}\n", story(mode));
        print!("{}", dissect(frame.frame(), &DissectOptions::default()));
        pcap.write_frame(1_700_000_000_000_000 + i as u64 * 1000, frame.frame())
            .expect("write pcap");
    }
    pcap.finish().expect("flush pcap");
    println!("\nwrote the three frames to {out_path}: open it in Wireshark (Decode As UDP 8472 -> VXLAN),");
    println!("or run: podswitchctl explain {out_path}");
    ExitCode::SUCCESS
}
