//! What podswitch's pipeline decides about one packet, hop by hop, between
//! two simulated nodes (in-process, over in-memory ports: nothing is sent
//! anywhere).
//!
//! node1 (underlay 192.168.100.1, pods 10.244.1.0/24) and node2
//! (192.168.100.2, 10.244.2.0/24) run flannel's vxlan backend. busybox1
//! (10.244.1.2) on node1 pings busybox2 (10.244.2.2) on node2:
//!
//! 1. node1's pipeline, traced: source checks, FDB learning, the FIB
//!    lookup, the peer, TTL, the VTEP MACs, VXLAN encapsulation.
//! 2. The frame on the underlay, explained field by field.
//! 3. node2's pipeline, traced: decapsulation, the peer and VNI checks,
//!    the inner source check, the FIB lookup, delivery to busybox2.
//!
//! Run: `cargo run --example pipeline_walkthrough`.

use std::net::Ipv4Addr;
use std::sync::Arc;

use podswitch_encap::dissect::{dissect, DissectOptions};
use podswitch_encap::ethernet::{EtherType, EthernetRepr};
use podswitch_encap::ipv4::Ipv4Repr;
use podswitch_encap::{checksum, IpProtocol, MacAddr, Vni};
use podswitch_engine::config::{Backend, NodeConfig};
use podswitch_engine::peer::PeerSpec;
use podswitch_engine::pipeline::Pipeline;
use podswitch_engine::port::PortId;
use podswitch_engine::tables::{PortSpec, Tables};

const BUSYBOX1_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02]);
const BUSYBOX2_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x02, 0x02]);

struct SimNode {
    config: NodeConfig,
    tables: Arc<Tables>,
    pipeline: Pipeline,
    underlay: PortId,
    pod: PortId,
}

fn node(name: &str, x: u8, pod_mac: MacAddr) -> SimNode {
    let config = NodeConfig::flannel(
        name,
        format!("10.244.{x}.0/24").parse().unwrap(),
        Ipv4Addr::new(192, 168, 100, x),
    );
    let tables = Tables::new(config.clone(), 16);
    let underlay = tables.attach_port(PortSpec::underlay("eth0")).unwrap();
    tables.attach_port(PortSpec::host("podswitch0")).unwrap();
    let pod = tables
        .attach_port(PortSpec::pod(
            &format!("veth-busybox{x}"),
            Ipv4Addr::new(10, 244, x, 2),
            pod_mac,
        ))
        .unwrap();
    SimNode {
        pipeline: Pipeline::new(Arc::clone(&tables)),
        config,
        tables,
        underlay,
        pod,
    }
}

/// Each node learns the other as flannel's lease would tell it.
fn peer_of(other: &SimNode) -> PeerSpec {
    PeerSpec {
        name: other.config.name.clone(),
        underlay_ip: other.config.underlay_ip,
        underlay_mac: other.config.underlay_mac,
        pod_cidr: other.config.pod_cidr,
        backend: Backend::Vxlan,
        vni: Vni::FLANNEL,
        vtep_mac: other.config.vtep_mac,
    }
}

/// busybox1's ping to busybox2, as it leaves busybox1 (to its gateway's MAC).
fn ping(gateway_mac: MacAddr) -> Vec<u8> {
    let data = b"hello from busybox1";
    let icmp_len = 8 + data.len();
    let mut f = vec![0u8; 14 + 20 + icmp_len];
    EthernetRepr {
        src: BUSYBOX1_MAC,
        dst: gateway_mac,
        ethertype: EtherType::Ipv4,
    }
    .emit(&mut f);
    Ipv4Repr {
        src: Ipv4Addr::new(10, 244, 1, 2),
        dst: Ipv4Addr::new(10, 244, 2, 2),
        protocol: IpProtocol::Icmp,
        payload_len: icmp_len,
        ttl: 64,
        tos: 0,
        ident: 0x2f2f,
        dont_frag: true,
    }
    .emit(&mut f[14..]);
    let icmp = &mut f[34..];
    icmp[0] = 8;
    icmp[4..8].copy_from_slice(&[0x00, 0x2a, 0x00, 0x01]);
    icmp[8..].copy_from_slice(data);
    let c = checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    f
}

fn main() {
    let mut node1 = node("node1", 1, BUSYBOX1_MAC);
    let mut node2 = node("node2", 2, BUSYBOX2_MAC);
    node1.tables.add_peer(peer_of(&node2)).unwrap();
    node2.tables.add_peer(peer_of(&node1)).unwrap();

    println!("busybox1 10.244.1.2 (node1, 192.168.100.1) pings busybox2 10.244.2.2 (node2, 192.168.100.2), flannel vxlan\n");
    println!(
        "-- node1: the ping arrives from busybox1's veth (port {})",
        node1.pod
    );
    let frame = ping(node1.config.gateway_mac);
    let hop1 = node1.pipeline.trace(&frame, node1.pod, 0);
    print!("{hop1}");
    let Some((port, outer)) = hop1.outputs.first().cloned() else {
        eprintln!("node1 dropped the ping");
        std::process::exit(1);
    };
    assert_eq!(port, node1.underlay);

    println!("\n-- on the underlay, between the nodes:");
    print!("{}", dissect(&outer, &DissectOptions::default()));

    println!(
        "\n-- node2: the VXLAN packet arrives on its underlay port (port {})",
        node2.underlay
    );
    let hop2 = node2.pipeline.trace(&outer, node2.underlay, 0);
    print!("{hop2}");
    match hop2.outputs.first() {
        Some((port, delivered)) if *port == node2.pod => {
            println!("\n-- delivered to busybox2's veth:");
            print!("{}", dissect(delivered, &DissectOptions::default()));
        }
        _ => {
            eprintln!("node2 did not deliver the ping");
            std::process::exit(1);
        }
    }
}
