//! Readers forward while writers change routes and peers.
//!
//! Checked: no torn reads (a packet to a peer's pods is always encapsulated
//! to that peer's address, and no route ever names a peer missing from the
//! same snapshot: `peer_gone` stays 0), no lost updates (every route a
//! writer added is there at the end, with two writers racing), and no
//! use-after-free (readers keep forwarding from snapshots that writers
//! replace; Rust and arc-swap's RCU guarantee memory safety, and the test
//! exercises it). Iterations: PODSWITCH_STRESS_ITERATIONS (default 300);
//! scripts/test.sh also runs it in release mode with 3000.

mod support;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use podswitch_engine::config::Backend;
use podswitch_engine::drop::DropReason;
use podswitch_engine::encap::{DecapConfig, Decapsulator, MacAddr, TunnelConfig, Vni};
use podswitch_engine::fib::{NextHop, Prefix};
use podswitch_engine::packet::{PacketPool, DEFAULT_BUF_SIZE};
use podswitch_engine::peer::PeerSpec;
use podswitch_engine::pipeline::{Outputs, Pipeline};
use support::*;

fn iterations() -> usize {
    std::env::var("PODSWITCH_STRESS_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

fn peer_spec(name: &str, underlay: Ipv4Addr, cidr: &str) -> PeerSpec {
    PeerSpec {
        name: name.into(),
        underlay_ip: underlay,
        underlay_mac: MacAddr([2, 0, 0, 0, 0, underlay.octets()[3]]),
        pod_cidr: cidr.parse().unwrap(),
        backend: Backend::Vxlan,
        vni: Vni::FLANNEL,
        vtep_mac: NODE2_VTEP,
    }
}

#[test]
fn readers_forward_while_writers_change_routes_and_peers() {
    let node = Node::flannel(Backend::Vxlan);
    let bb1 = node.pod("veth-bb1", "10.244.1.2", BUSYBOX1_MAC);
    node.tables
        .add_peer(peer_spec("node2", NODE2_UNDERLAY, "10.244.2.0/24"))
        .unwrap();
    let tables = Arc::clone(&node.tables);
    let gw = tables.load().node.gateway_mac;
    let node3 = Ipv4Addr::new(192, 168, 100, 3);
    let n = iterations();
    let stop = Arc::new(AtomicBool::new(false));

    let readers: Vec<_> = (0..2)
        .map(|r| {
            let tables = Arc::clone(&tables);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut pipeline = Pipeline::new(Arc::clone(&tables));
                let mut pool = PacketPool::new(128, DEFAULT_BUF_SIZE);
                let mut out = Outputs::new();
                let decap = Decapsulator::new(DecapConfig::for_tunnel(&TunnelConfig::vxlan()));
                let frames = [
                    ping_frame(BUSYBOX1_MAC, gw, "10.244.1.2", "10.244.2.5", 64),
                    ping_frame(BUSYBOX1_MAC, gw, "10.244.1.2", "10.244.3.5", 64),
                ];
                let mut forwarded = [0u64; 2];
                let mut rounds = 0u64;
                while !stop.load(Ordering::Relaxed) || rounds < 10 {
                    rounds += 1;
                    let mut batch = Vec::new();
                    for i in 0..16 {
                        batch.push(pool.alloc_with(bb1, &frames[i % 2]).unwrap());
                    }
                    pipeline.process(&mut batch, &mut pool, &mut out, 1000);
                    out.drain(|_, b| {
                        for buf in b.drain(..) {
                            let mut outer = buf.frame().to_vec();
                            if let Ok(d) = decap.decapsulate_frame(&mut outer) {
                                let inner_dst =
                                    &outer[d.inner_range.start + 30..d.inner_range.start + 34];
                                let expected = match inner_dst[2] {
                                    2 => NODE2_UNDERLAY,
                                    3 => node3,
                                    other => panic!(
                                        "reader {r}: unexpected inner destination 10.244.{other}.x"
                                    ),
                                };
                                assert_eq!(
                                    d.outer_dst, expected,
                                    "reader {r}: torn read: inner 10.244.{}.5 sent to {}",
                                    inner_dst[2], d.outer_dst
                                );
                                forwarded[usize::from(inner_dst[2] - 2)] += 1;
                            }
                            pool.free(buf);
                        }
                    });
                    assert_eq!(pool.in_use(), 0);
                }
                forwarded
            })
        })
        .collect();

    // Writer 1: peer node3 comes and goes, with an extra route through it.
    let w1 = {
        let tables = Arc::clone(&tables);
        thread::spawn(move || {
            for _ in 0..n {
                let id = tables
                    .add_peer(peer_spec("node3", node3, "10.244.3.0/24"))
                    .unwrap();
                tables
                    .add_route("10.244.9.0/24".parse().unwrap(), NextHop::Peer(id))
                    .unwrap();
                tables.remove_peer("node3").unwrap();
            }
        })
    };
    // Writer 2: adds routes that must all survive writer 1's publishes.
    let w2 = {
        let tables = Arc::clone(&tables);
        thread::spawn(move || {
            for i in 0..n {
                let prefix = Prefix::new_truncating(
                    Ipv4Addr::new(
                        10,
                        100 + (i / 65536) as u8,
                        (i / 256 % 256) as u8,
                        (i % 256) as u8,
                    ),
                    32,
                );
                tables.add_route(prefix, NextHop::Blackhole).unwrap();
            }
        })
    };
    w1.join().unwrap();
    w2.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut total = [0u64; 2];
    for r in readers {
        let f = r.join().unwrap();
        total[0] += f[0];
        total[1] += f[1];
    }
    assert!(total[0] > 0, "packets to node2 were forwarded");

    let snap = tables.load();
    assert!(snap.peers.by_name("node3").is_none());
    assert!(snap.peers.by_name("node2").is_some());
    for i in 0..n {
        let addr = Ipv4Addr::new(
            10,
            100 + (i / 65536) as u8,
            (i / 256 % 256) as u8,
            (i % 256) as u8,
        );
        assert_eq!(
            snap.fib.lookup(addr),
            Some(NextHop::Blackhole),
            "lost update: route {addr}/32"
        );
    }
    assert_eq!(
        snap.fib.lookup("10.244.9.1".parse().unwrap()),
        Some(NextHop::Host),
        "routes through a removed peer go with it"
    );
    assert_eq!(
        tables.stats.snapshot().drop_count(DropReason::PeerGone),
        0,
        "a snapshot named a peer it did not have"
    );
    drop(snap);
    drop(node);
}
