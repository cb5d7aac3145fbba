//! Readers forward while writers change routes and peers.
//!
//! Checked: no torn reads (a packet to a peer's pods is always encapsulated
//! to that peer's address, and no route ever names a peer missing from the
//! same snapshot: `peer_gone` stays 0), no lost updates (every route a
//! writer added is there at the end, with two writers racing), and no
//! use-after-free (readers keep forwarding from snapshots that writers
//! replace; Rust and arc-swap's RCU guarantee memory safety, and the test
//! exercises it). The race is asserted to have happened, not assumed: both
//! writers saw the other publish between their own edits, and the readers
//! forwarded both with node3 present and with it gone, across many
//! snapshot versions. Iterations: PODSWITCH_STRESS_ITERATIONS (default
//! 300); scripts/test.sh also runs it in release mode with 3000.

mod support;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
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
    // Readers and writers start together, so every reader runs while the
    // writers publish.
    let start = Arc::new(Barrier::new(4));
    // Each reader says when it has forwarded with node3 gone and seen
    // several snapshot versions; the writers keep going until both have.
    // On two CPUs a reader can be off its CPU for the whole of the
    // writers' `n` edits, so stopping there would leave to the scheduler
    // what the test asserts.
    let readers_saw_race = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);

    let readers: Vec<_> = (0..2)
        .map(|r| {
            let tables = Arc::clone(&tables);
            let stop = Arc::clone(&stop);
            let start = Arc::clone(&start);
            let readers_saw_race = Arc::clone(&readers_saw_race);
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
                let mut node3_absent = 0u64;
                let mut versions_seen = 0u64;
                let mut last_version = u64::MAX;
                let mut rounds = 0u64;
                start.wait();
                while !stop.load(Ordering::Relaxed) || rounds < 10 {
                    rounds += 1;
                    let version = tables.load().version;
                    versions_seen += u64::from(version != last_version);
                    last_version = version;
                    let node3_before = forwarded[1];
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
                    // Half of each batch goes to node3's pods.
                    node3_absent += 8 - (forwarded[1] - node3_before).min(8);
                    if node3_absent > 0 && versions_seen > 2 {
                        readers_saw_race[r].store(true, Ordering::Relaxed);
                    }
                }
                (forwarded, node3_absent, versions_seen)
            })
        })
        .collect();

    // Each writer counts the times the other published between two of its
    // own edits (the snapshot version moved by more than its own step),
    // and both keep going past `n` until each has seen that often and
    // both readers have seen the race: the races happened, however the
    // threads were scheduled.
    let interleaved = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    const ENOUGH: usize = 10;
    let writer = |me: usize, edit: Box<dyn Fn(usize) -> u64 + Send>| {
        let tables = Arc::clone(&tables);
        let interleaved = Arc::clone(&interleaved);
        let readers_saw_race = Arc::clone(&readers_saw_race);
        let start = Arc::clone(&start);
        thread::spawn(move || {
            start.wait();
            let mut done = 0;
            let mut version = tables.load().version;
            loop {
                let before = version;
                let publishes = edit(done);
                version = tables.load().version;
                if version > before + publishes {
                    interleaved[me].fetch_add(1, Ordering::Relaxed);
                }
                done += 1;
                let both = interleaved
                    .iter()
                    .all(|c| c.load(Ordering::Relaxed) >= ENOUGH)
                    && readers_saw_race.iter().all(|r| r.load(Ordering::Relaxed));
                if done >= n && both || done >= 100 * n {
                    return done;
                }
            }
        })
    };
    // Writer 1: peer node3 comes and goes, with an extra route through it.
    let w1 = {
        let tables = Arc::clone(&tables);
        writer(
            0,
            Box::new(move |_| {
                let id = tables
                    .add_peer(peer_spec("node3", node3, "10.244.3.0/24"))
                    .unwrap();
                tables
                    .add_route("10.244.9.0/24".parse().unwrap(), NextHop::Peer(id))
                    .unwrap();
                tables.remove_peer("node3").unwrap();
                3
            }),
        )
    };
    // Writer 2: adds routes that must all survive writer 1's publishes.
    let w2 = {
        let tables = Arc::clone(&tables);
        writer(
            1,
            Box::new(move |i| {
                tables.add_route(w2_prefix(i), NextHop::Blackhole).unwrap();
                1
            }),
        )
    };
    w1.join().unwrap();
    let added = w2.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut total = [0u64; 2];
    for r in readers {
        let (forwarded, node3_absent, versions_seen) = r.join().unwrap();
        total[0] += forwarded[0];
        total[1] += forwarded[1];
        assert!(
            node3_absent > 0 && versions_seen > 2,
            "a reader ran beside the writers: node3 absent for {node3_absent} packets, \
             {versions_seen} versions seen"
        );
    }
    let interleaved = interleaved.each_ref().map(|c| c.load(Ordering::Relaxed));
    assert!(
        interleaved.iter().all(|c| *c >= ENOUGH),
        "the writers never raced: each saw the other publish {interleaved:?} times"
    );
    assert!(total[0] > 0, "packets to node2 were forwarded");
    assert!(
        total[1] > 0,
        "packets to node3 were forwarded while it was there"
    );

    let snap = tables.load();
    assert!(snap.peers.by_name("node3").is_none());
    assert!(snap.peers.by_name("node2").is_some());
    for i in 0..added {
        let addr = w2_prefix(i).addr();
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

/// Writer 2's i-th route: a /32 in 10.100.0.0/14.
fn w2_prefix(i: usize) -> Prefix {
    Prefix::new_truncating(
        Ipv4Addr::new(
            10,
            100 + (i / 65536) as u8,
            (i / 256 % 256) as u8,
            (i % 256) as u8,
        ),
        32,
    )
}
