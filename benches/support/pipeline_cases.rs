//! The pipeline cases the benches measure, shared by the criterion bench
//! (`benches/pipeline.rs`, time) and the instruction counter
//! (`benches/instructions.rs`, instructions per packet under callgrind).

use std::net::Ipv4Addr;
use std::sync::Arc;

use podswitch_engine::config::{Backend, NodeConfig};
use podswitch_engine::encap::{FrameBuf, MacAddr, OuterPath, Tunnel, TunnelConfig, Vni};
use podswitch_engine::packet::{PacketPool, BATCH_SIZE, DEFAULT_BUF_SIZE};
use podswitch_engine::peer::PeerSpec;
use podswitch_engine::pipeline::{Outputs, Pipeline};
use podswitch_engine::port::{MemoryPort, Port, PortId};
use podswitch_engine::tables::{PortSpec, Tables};

use super::frames::frame64;

const POD1_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02]);
const POD2_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x03]);
const NODE2_MAC: MacAddr = MacAddr([0x02, 0, 0xc0, 0xa8, 0x64, 0x02]);
const NODE2_VTEP: MacAddr = MacAddr([0xd6, 0x8a, 0x5e, 0x47, 0x3c, 0x02]);

pub(crate) struct Setup {
    tables: Arc<Tables>,
    input: MemoryPort,
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
    }
}

/// Every case, by name: a pod to a pod on the node's bridge, a pod to a
/// VXLAN peer (encapsulation), a VXLAN frame to a pod (decapsulation), a
/// pod to an IPIP peer (Calico's /26 blocks); and the first three on a
/// node with Service connections to look up.
pub(crate) fn cases() -> Vec<(&'static str, Setup)> {
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
    let same_node_switch = || {
        setup(flannel.clone(), Backend::Vxlan, false, |_| {
            frame64(POD1_MAC, POD2_MAC, p("10.244.1.2"), p("10.244.1.3"))
        })
    };
    let vxlan_encap = || {
        setup(flannel.clone(), Backend::Vxlan, false, |n| {
            frame64(POD1_MAC, n.gateway_mac, p("10.244.1.2"), p("10.244.2.5"))
        })
    };
    let vxlan_decap = || {
        setup(flannel.clone(), Backend::Vxlan, true, |n| {
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
        })
    };
    vec![
        ("same-node-switch", same_node_switch()),
        ("vxlan-encap", vxlan_encap()),
        ("vxlan-decap", vxlan_decap()),
        (
            "ipip-encap",
            setup(calico, Backend::Ipip, false, |n| {
                frame64(POD1_MAC, n.gateway_mac, p("10.244.1.65"), p("10.244.2.70"))
            }),
        ),
        // The same frames on a node whose host port handed on Service
        // connections: each frame for a pod (and a pod's for another
        // node's pod) is looked up among them, and is none of theirs.
        (
            "same-node-switch-services",
            with_service_connections(same_node_switch()),
        ),
        (
            "vxlan-encap-services",
            with_service_connections(vxlan_encap()),
        ),
        (
            "vxlan-decap-services",
            with_service_connections(vxlan_decap()),
        ),
    ]
}

/// `setup` after its host port handed on 10,000 connections from pods
/// to pods (none the case's frames belong to).
fn with_service_connections(setup: Setup) -> Setup {
    use podswitch_engine::host_connections::Flow;
    for i in 0..10_000u32 {
        let flow = Flow {
            protocol: 6,
            src: (
                Ipv4Addr::new(10, 244, 1, 10 + (i % 200) as u8),
                30_000 + (i / 200) as u16,
            ),
            dst: (Ipv4Addr::new(10, 244, 2, 10), 443),
            closing: false,
            opening: false,
            fragment: false,
        };
        setup.tables.host_connections.record(&flow, 0);
    }
    setup
}

/// One case set to run: the pipeline, its pool and ports.
pub(crate) struct Runner {
    setup: Setup,
    pipeline: Pipeline,
    pool: PacketPool,
    out: Outputs,
    sink: MemoryPort,
    batch: Vec<podswitch_engine::packet::PacketBuf>,
}

impl Runner {
    /// Ready to run `setup`, checked once: every frame of a batch leaves.
    pub(crate) fn new(name: &str, setup: Setup) -> Runner {
        let mut runner = Runner {
            pipeline: Pipeline::new(Arc::clone(&setup.tables)),
            setup,
            pool: PacketPool::new(512, DEFAULT_BUF_SIZE),
            out: Outputs::new(),
            sink: MemoryPort::discarding("out", PortId(0)),
            batch: Vec::with_capacity(BATCH_SIZE),
        };
        runner
            .setup
            .input
            .recv(&mut runner.pool, &mut runner.batch)
            .unwrap();
        runner
            .pipeline
            .process(&mut runner.batch, &mut runner.pool, &mut runner.out, 1);
        assert_eq!(runner.out.len(), BATCH_SIZE, "{name}: every frame leaves");
        let (sink, pool) = (&mut runner.sink, &mut runner.pool);
        runner.out.drain(|_, b| drop(sink.send(b, pool)));
        runner
    }

    /// One batch: received, through the pipeline, sent.
    #[inline]
    pub(crate) fn batch(&mut self) {
        self.setup
            .input
            .recv(&mut self.pool, &mut self.batch)
            .unwrap();
        self.pipeline.process(
            std::hint::black_box(&mut self.batch),
            &mut self.pool,
            &mut self.out,
            1,
        );
        let (sink, pool) = (&mut self.sink, &mut self.pool);
        self.out.drain(|_, b| drop(sink.send(b, pool)));
    }
}
