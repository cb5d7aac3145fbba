//! Encapsulation and decapsulation per packet, each mode, 64- and 1400-byte
//! inner frames, single core.
//!
//! The reference measured in the same run: etherparse's `PacketBuilder`
//! writing the same outer Ethernet/IPv4/UDP headers in front of a copy of
//! the same VXLAN payload, the way a general-purpose packet library builds a
//! tunnel packet. README reports podswitch as a ratio against it.
//!
//! Run: `cargo bench --bench encap`.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use podswitch_encap::{
    DecapConfig, Decapsulator, FrameBuf, MacAddr, OuterPath, Tunnel, TunnelConfig, TunnelMode,
};

const HEADROOM: usize = 128;

/// An Ethernet + IPv4 + UDP frame of `len` bytes, pod 10.244.1.2 -> 10.244.2.2.
fn inner_frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&[0x0a, 0x58, 0x0a, 0xf4, 0x02, 0x02]);
    f[6..12].copy_from_slice(&[0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (len - 14) as u16;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[20] = 0x40;
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 244, 1, 2]);
    f[30..34].copy_from_slice(&[10, 244, 2, 2]);
    let c = podswitch_encap::checksum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&5201u16.to_be_bytes());
    f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    f
}

fn path() -> OuterPath {
    OuterPath {
        src_mac: MacAddr([0x02, 0, 0, 0, 0, 0x01]),
        dst_mac: MacAddr([0x02, 0, 0, 0, 0, 0x02]),
        src_ip: Ipv4Addr::new(192, 168, 100, 1),
        dst_ip: Ipv4Addr::new(192, 168, 100, 2),
    }
}

fn bench_encap(c: &mut Criterion) {
    let mut group = c.benchmark_group("encap");
    for mode in [TunnelMode::Vxlan, TunnelMode::Ipip, TunnelMode::IpInUdp] {
        let tunnel = Tunnel::new(TunnelConfig::for_mode(mode));
        // The engine keeps one template per peer; this is its per-packet path.
        let template = tunnel.template(&path());
        for len in [64usize, 1400] {
            let inner = inner_frame(len);
            let mut buf = vec![0u8; HEADROOM + len];
            buf[HEADROOM..].copy_from_slice(&inner);
            let eth_header: [u8; 14] = inner[..14].try_into().unwrap();
            group.throughput(Throughput::Elements(1));
            group.bench_function(BenchmarkId::new(mode.to_string(), len), |b| {
                b.iter(|| {
                    // IPIP and IP-in-UDP overwrite the inner Ethernet header
                    // with outer headers; put its 14 bytes back (VXLAN leaves
                    // the frame intact, so this is all a fresh frame needs).
                    buf[HEADROOM..HEADROOM + 14].copy_from_slice(&eth_header);
                    let mut frame = FrameBuf::new(&mut buf, HEADROOM, HEADROOM + len);
                    black_box(&template).encapsulate(&mut frame, 0).unwrap();
                    black_box(frame.start());
                })
            });
        }
    }
    // One-shot: the template built for every packet (no per-peer cache).
    {
        let tunnel = Tunnel::new(TunnelConfig::vxlan());
        let inner = inner_frame(64);
        let mut buf = vec![0u8; HEADROOM + 64];
        buf[HEADROOM..].copy_from_slice(&inner);
        group.bench_function(BenchmarkId::new("vxlan-oneshot", 64), |b| {
            b.iter(|| {
                let mut frame = FrameBuf::new(&mut buf, HEADROOM, HEADROOM + 64);
                tunnel
                    .encapsulate(black_box(&path()), &mut frame, 0)
                    .unwrap();
                black_box(frame.start());
            })
        });
    }
    // Reference: a general-purpose builder writing the same VXLAN packet.
    for len in [64usize, 1400] {
        let inner = inner_frame(len);
        let mut payload = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        payload.extend_from_slice(&inner);
        let mut out = Vec::with_capacity(HEADROOM + len);
        group.bench_function(BenchmarkId::new("reference-etherparse-vxlan", len), |b| {
            b.iter(|| {
                out.clear();
                let p = path();
                etherparse::PacketBuilder::ethernet2(p.src_mac.0, p.dst_mac.0)
                    .ipv4(p.src_ip.octets(), p.dst_ip.octets(), 64)
                    .udp(40000, 8472)
                    .write(&mut out, black_box(&payload))
                    .unwrap();
                black_box(out.len());
            })
        });
    }
    group.finish();
}

fn bench_decap(c: &mut Criterion) {
    let mut group = c.benchmark_group("decap");
    for mode in [TunnelMode::Vxlan, TunnelMode::Ipip, TunnelMode::IpInUdp] {
        let config = TunnelConfig::for_mode(mode);
        let tunnel = Tunnel::new(config);
        let decap = Decapsulator::new(DecapConfig::for_tunnel(&config));
        for len in [64usize, 1400] {
            let inner = inner_frame(len);
            let mut buf = vec![0u8; HEADROOM + len];
            buf[HEADROOM..].copy_from_slice(&inner);
            let mut frame = FrameBuf::new(&mut buf, HEADROOM, HEADROOM + len);
            tunnel.encapsulate(&path(), &mut frame, 0).unwrap();
            let mut outer = frame.frame().to_vec();
            group.throughput(Throughput::Elements(1));
            group.bench_function(BenchmarkId::new(mode.to_string(), len), |b| {
                b.iter(|| {
                    black_box(
                        decap
                            .decapsulate_frame(black_box(&mut outer))
                            .unwrap()
                            .inner_range
                            .start,
                    )
                })
            });
        }
    }
    // Reference: etherparse slicing the same VXLAN packet down to its UDP payload.
    for len in [64usize, 1400] {
        let config = TunnelConfig::vxlan();
        let tunnel = Tunnel::new(config);
        let mut buf = vec![0u8; HEADROOM + len];
        buf[HEADROOM..].copy_from_slice(&inner_frame(len));
        let mut frame = FrameBuf::new(&mut buf, HEADROOM, HEADROOM + len);
        tunnel.encapsulate(&path(), &mut frame, 0).unwrap();
        let outer = frame.frame().to_vec();
        group.bench_function(BenchmarkId::new("reference-etherparse-vxlan", len), |b| {
            b.iter(|| {
                let sliced = etherparse::SlicedPacket::from_ethernet(black_box(&outer)).unwrap();
                match sliced.transport {
                    Some(etherparse::TransportSlice::Udp(u)) => black_box(u.payload().len()),
                    _ => unreachable!(),
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_encap, bench_decap);
criterion_main!(benches);
