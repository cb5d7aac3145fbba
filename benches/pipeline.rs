//! The whole pipeline over in-memory ports, 64-byte frames, one core:
//! receive a batch of 32 (a copy into pool buffers, as a NIC's DMA would
//! make), run the pipeline, hand the outputs to the output port, which
//! gives the buffers back.
//!
//! Reference, in the same run: the same ports moving the same batches with
//! no pipeline in between (receive, then send): the cost floor of the
//! harness, which the pipeline figures include.
//!
//! Run: `cargo bench --bench pipeline`.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use podswitch_engine::config::{Backend, NodeConfig};
use podswitch_engine::encap::{FrameBuf, MacAddr, OuterPath, Tunnel, TunnelConfig, Vni};
use podswitch_engine::packet::{PacketPool, BATCH_SIZE, DEFAULT_BUF_SIZE};
use podswitch_engine::peer::PeerSpec;
use podswitch_engine::pipeline::{Outputs, Pipeline};
use podswitch_engine::port::{MemoryPort, Port, PortId};
use podswitch_engine::tables::{PortSpec, Tables};

#[path = "support/frames.rs"]
mod frames;
use frames::frame64;

const POD1_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02]);
const POD2_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x03]);
const NODE2_MAC: MacAddr = MacAddr([0x02, 0, 0xc0, 0xa8, 0x64, 0x02]);
const NODE2_VTEP: MacAddr = MacAddr([0xd6, 0x8a, 0x5e, 0x47, 0x3c, 0x02]);

struct Setup {
    tables: Arc<Tables>,
    input: MemoryPort,
    pod1: PortId,
}

fn setup(
    config: NodeConfig,
    backend: Backend,
    input_is_underlay: bool,
    frame: impl FnOnce(&NodeConfig) -> Vec<u8>,
) -> Setup {
    let tables = Tables::new(config.clone(), 64);
    let underlay = tables.attach_port(PortSpec::underlay("eth0")).unwrap();
    tables.attach_port(PortSpec::host("podswitch0")).unwrap();
    let pod_ip = if config.pod_cidr.prefix_len() == 24 {
        "10.244.1.2"
    } else {
        "10.244.1.65"
    };
    let pod1 = tables
        .attach_port(PortSpec::pod("veth1", pod_ip.parse().unwrap(), POD1_MAC))
        .unwrap();
    let pod2_ip = if config.pod_cidr.prefix_len() == 24 {
        "10.244.1.3"
    } else {
        "10.244.1.66"
    };
    let pod2 = tables
        .attach_port(PortSpec::pod("veth2", pod2_ip.parse().unwrap(), POD2_MAC))
        .unwrap();
    let peer_cidr = if config.pod_cidr.prefix_len() == 24 {
        "10.244.2.0/24"
    } else {
        "10.244.2.64/26"
    };
    tables
        .add_peer(PeerSpec {
            name: "node2".into(),
            underlay_ip: Ipv4Addr::new(192, 168, 100, 2),
            underlay_mac: NODE2_MAC,
            pod_cidr: peer_cidr.parse().unwrap(),
            backend,
            vni: Vni::FLANNEL,
            vtep_mac: NODE2_VTEP,
        })
        .unwrap();
    tables.fdb.learn(POD2_MAC, pod2, 0);
    let in_port = if input_is_underlay { underlay } else { pod1 };
    Setup {
        input: MemoryPort::replaying("in", in_port, frame(&config)),
        tables,
        pod1,
    }
}

fn run(c: &mut Criterion, name: &str, mut s: Setup) {
    let mut pipeline = Pipeline::new(Arc::clone(&s.tables));
    let mut pool = PacketPool::new(512, DEFAULT_BUF_SIZE);
    let mut out = Outputs::new();
    let mut sink = MemoryPort::discarding("out", PortId(0));
    let mut batch = Vec::with_capacity(BATCH_SIZE);
    // Check once that the case does what it says.
    s.input.recv(&mut pool, &mut batch).unwrap();
    pipeline.process(&mut batch, &mut pool, &mut out, 1);
    assert_eq!(out.len(), BATCH_SIZE, "{name}: every frame leaves");
    out.drain(|_, b| drop(sink.send(b, &mut pool)));
    let _ = s.pod1;
    c.benchmark_group("pipeline")
        .throughput(Throughput::Elements(BATCH_SIZE as u64))
        .bench_function(name, |b| {
            b.iter(|| {
                s.input.recv(&mut pool, &mut batch).unwrap();
                pipeline.process(black_box(&mut batch), &mut pool, &mut out, 1);
                out.drain(|_, b| drop(sink.send(b, &mut pool)));
            })
        });
}

fn bench_pipeline(c: &mut Criterion) {
    let flannel = NodeConfig::flannel(
        "node1",
        "10.244.1.0/24".parse().unwrap(),
        Ipv4Addr::new(192, 168, 100, 1),
    );
    let calico = NodeConfig::calico(
        "node1",
        "10.244.1.64/26".parse().unwrap(),
        Ipv4Addr::new(192, 168, 100, 1),
    );
    let p = |s: &str| s.parse::<Ipv4Addr>().unwrap();

    // Reference: port I/O alone.
    {
        let mut input = MemoryPort::replaying(
            "in",
            PortId(2),
            frame64(POD1_MAC, POD2_MAC, p("10.244.1.2"), p("10.244.1.3")),
        );
        let mut sink = MemoryPort::discarding("out", PortId(0));
        let mut pool = PacketPool::new(512, DEFAULT_BUF_SIZE);
        let mut batch = Vec::with_capacity(BATCH_SIZE);
        c.benchmark_group("pipeline")
            .throughput(Throughput::Elements(BATCH_SIZE as u64))
            .bench_function("reference-io-only", |b| {
                b.iter(|| {
                    input.recv(&mut pool, &mut batch).unwrap();
                    sink.send(black_box(&mut batch), &mut pool).unwrap();
                })
            });
    }
    run(
        c,
        "same-node-switch",
        setup(flannel.clone(), Backend::Vxlan, false, |_| {
            frame64(POD1_MAC, POD2_MAC, p("10.244.1.2"), p("10.244.1.3"))
        }),
    );
    run(
        c,
        "vxlan-encap",
        setup(flannel.clone(), Backend::Vxlan, false, |n| {
            frame64(POD1_MAC, n.gateway_mac, p("10.244.1.2"), p("10.244.2.5"))
        }),
    );
    run(
        c,
        "vxlan-decap",
        setup(flannel, Backend::Vxlan, true, |n| {
            let inner = frame64(NODE2_VTEP, n.vtep_mac, p("10.244.2.5"), p("10.244.1.2"));
            let path = OuterPath {
                src_mac: NODE2_MAC,
                dst_mac: n.underlay_mac,
                src_ip: p("192.168.100.2"),
                dst_ip: n.underlay_ip,
            };
            let mut buf = vec![0u8; 128 + inner.len()];
            buf[128..].copy_from_slice(&inner);
            let mut fb = FrameBuf::new(&mut buf, 128, 128 + inner.len());
            Tunnel::new(TunnelConfig::vxlan())
                .encapsulate(&path, &mut fb, 1)
                .unwrap();
            fb.frame().to_vec()
        }),
    );
    run(
        c,
        "ipip-encap",
        setup(calico, Backend::Ipip, false, |n| {
            frame64(POD1_MAC, n.gateway_mac, p("10.244.1.65"), p("10.244.2.70"))
        }),
    );
}

criterion_group!(benches, bench_pipeline);
criterion_main!(benches);
