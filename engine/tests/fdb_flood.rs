//! A million frames with random source MACs through the bridge: the FDB
//! stays within its limit and fixed memory, refusals are counted, and
//! known MACs keep being forwarded as unicast.

mod support;

use podswitch_engine::config::{Backend, NodeConfig};
use podswitch_engine::encap::MacAddr;
use podswitch_engine::tables::PortSpec;
use support::*;

#[test]
fn a_million_random_source_macs_stay_bounded() {
    let mut config = NodeConfig::flannel("node1", "10.244.1.0/24".parse().unwrap(), NODE1_UNDERLAY);
    config.backend = Backend::Vxlan;
    config.fdb_limit = 1024;
    let mut node = Node::new(config);
    let mut spec = PortSpec::pod("veth-attacker", ip("10.244.1.2"), BUSYBOX1_MAC);
    spec.anti_spoof = false; // a pod allowed to send from any MAC: the worst case
    let attacker = node.tables.attach_port(spec).unwrap();
    let bb2 = node.pod("veth-bb2", "10.244.1.3", BUSYBOX2_MAC);
    let bb3 = node.pod(
        "veth-bb3",
        "10.244.1.4",
        MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x04]),
    );
    // bb2 speaks first, so its MAC is known.
    node.send(bb2, arp_request(BUSYBOX2_MAC, "10.244.1.3", "10.244.1.1"));
    let memory = node.tables.fdb.memory_bytes();

    let template = ping_frame(BUSYBOX1_MAC, BUSYBOX2_MAC, "10.244.1.2", "10.244.1.3", 64);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let total = 1_000_000usize;
    let chunk = 1000;
    for round in 0..total / chunk {
        let frames: Vec<_> = (0..chunk)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let mut f = template.clone();
                let b = seed.to_be_bytes();
                f[6..12].copy_from_slice(&[b[0] & 0xfe, b[1], b[2], b[3], b[4], b[5]]); // unicast sources
                (attacker, f)
            })
            .collect();
        let out = node.run(&frames);
        // Every frame to bb2's known MAC goes to bb2 only: no flooding.
        assert!(
            out.iter().all(|(p, _)| *p == bb2),
            "round {round}: a known MAC was flooded"
        );
        assert_eq!(out.len(), chunk);
        let fdb = &node.tables.fdb;
        assert!(
            fdb.len() <= fdb.limit(),
            "round {round}: {} entries over the limit",
            fdb.len()
        );
        assert_eq!(fdb.memory_bytes(), memory, "the FDB never grows");
    }
    let tables = std::sync::Arc::clone(&node.tables);
    let fdb = &tables.fdb;
    assert!(
        fdb.refused() > 900_000,
        "refusals are counted: {}",
        fdb.refused()
    );
    assert_eq!(
        fdb.lookup(BUSYBOX2_MAC, node.now),
        Some(bb2),
        "the known MAC survived"
    );
    // bb3, new after the flood, cannot be learned while the table is full,
    // so frames to it are flooded, which is what a full Linux bridge does.
    let to_bb3 = ping_frame(
        BUSYBOX2_MAC,
        MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x04]),
        "10.244.1.3",
        "10.244.1.4",
        64,
    );
    let out = node.send(bb2, to_bb3);
    assert!(out.iter().any(|(p, _)| *p == bb3));
    // After aging, the random entries go and learning works again.
    node.now += 301;
    assert!(fdb.sweep(node.now) > 0);
    assert_eq!(fdb.len(), 0);
}
