//! Route churn: what a route change costs a node holding many routes, and
//! what forwarding loses while routes change.
//!
//! Everything goes through [`Tables`], the path the control socket (and the
//! lease store) takes: validate, edit, publish a snapshot.
//!
//! - `routes/add-delete/N`: one /32 added and deleted again, at N routes
//!   (the route sets of the `tables` bench: /24 per node, /26 blocks, /32
//!   pods). Time per iteration is two changes.
//! - `routes/lookup-idle/N` and `routes/lookup-churn/N`: 1024 lookups
//!   through the published snapshot, as a worker does them, without and
//!   with another thread changing a route every millisecond.
//! - `routes/forward-idle/N` and `routes/forward-churn/N`: the whole
//!   pipeline forwarding batches of 32 64-byte frames from a pod to
//!   addresses spread over the routes, the same two ways.
//!
//! Run: `cargo bench --bench routes`.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use podswitch_engine::config::NodeConfig;
use podswitch_engine::encap::MacAddr;
use podswitch_engine::fib::{NextHop, Prefix};
use podswitch_engine::packet::{PacketPool, BATCH_SIZE, DEFAULT_BUF_SIZE};
use podswitch_engine::pipeline::{Outputs, Pipeline};
use podswitch_engine::port::PortId;
use podswitch_engine::tables::{PortSpec, Tables};

#[path = "support/frames.rs"]
mod frames;
use frames::frame64;

#[path = "support/routes.rs"]
mod routes;
use routes::{routes, Rng};

const POD_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02]);

/// A node holding `n` routes, loaded in one edit (one publish), with a
/// host port and one pod (its port id returned).
fn node_with_routes(n: usize) -> (Arc<Tables>, PortId) {
    let node = NodeConfig::flannel(
        "node1",
        "10.244.1.0/24".parse().unwrap(),
        Ipv4Addr::new(192, 168, 100, 1),
    );
    let tables = Tables::new(node, 64);
    // The route sets name peers and ports a bench node does not have; the
    // table's shape is what matters, so every route leads to the host.
    tables
        .edit(|e| {
            for (prefix, _) in routes(n) {
                e.add_route(prefix, NextHop::Host)?;
            }
            Ok(())
        })
        .unwrap();
    tables.attach_port(PortSpec::host("podswitch0")).unwrap();
    let pod = tables
        .attach_port(PortSpec::pod(
            "veth1",
            Ipv4Addr::new(10, 244, 1, 2),
            POD_MAC,
        ))
        .unwrap();
    (tables, pod)
}

/// A /32 no route set uses (172.16.0.0/12 is outside 10.0.0.0/8).
fn churn_prefix(i: u32) -> Prefix {
    Prefix::new_truncating(Ipv4Addr::from(0xac10_0000 | (i & 0xf_ffff)), 32)
}

fn bench_routes(c: &mut Criterion) {
    let mut group = c.benchmark_group("routes");
    let mut rng = Rng(42);
    let keys: Vec<Ipv4Addr> = (0..1 << 16)
        .map(|_| Ipv4Addr::from(0x0a00_0000 | (rng.next() as u32 & 0x00ff_ffff)))
        .collect();
    for n in [1_000usize, 10_000, 100_000] {
        let (tables, pod) = node_with_routes(n);
        let gateway = tables.load().node.gateway_mac;
        let frames: Vec<Vec<u8>> = keys[..1024]
            .iter()
            .map(|dst| frame64(POD_MAC, gateway, Ipv4Addr::new(10, 244, 1, 2), *dst))
            .collect();
        let mut pipeline = Pipeline::new(Arc::clone(&tables));
        let mut pool = PacketPool::new(256, DEFAULT_BUF_SIZE);
        let mut out = Outputs::new();
        let mut batch = Vec::with_capacity(BATCH_SIZE);
        let mut next_frame = 0usize;
        let mut forward = || {
            for _ in 0..BATCH_SIZE {
                next_frame = (next_frame + 1) & 1023;
                batch.push(pool.alloc_with(pod, &frames[next_frame]).unwrap());
            }
            pipeline.process(black_box(&mut batch), &mut pool, &mut out, 1);
            let mut sent = 0;
            out.drain(|_, bufs| {
                for buf in bufs.drain(..) {
                    sent += 1;
                    pool.free(buf);
                }
            });
            sent
        };
        assert_eq!(forward(), BATCH_SIZE, "every frame is forwarded");
        group.sample_size(20);
        group.throughput(Throughput::Elements(2));
        let mut i = 0u32;
        group.bench_function(BenchmarkId::new("add-delete", n), |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let prefix = churn_prefix(i);
                tables.add_route(prefix, NextHop::Blackhole).unwrap();
                tables.remove_route(prefix).unwrap();
            })
        });

        group.sample_size(100);
        group.throughput(Throughput::Elements(1024));
        let lookups = |tables: &Tables, at: &mut usize| {
            let snap = tables.load();
            let mut hits = 0u32;
            for _ in 0..1024 {
                *at = (*at + 1) & 0xffff;
                hits += snap.fib.lookup(black_box(keys[*at])).is_some() as u32;
            }
            hits
        };
        let mut at = 0usize;
        group.bench_function(BenchmarkId::new("lookup-idle", n), |b| {
            b.iter(|| lookups(&tables, &mut at))
        });
        group.throughput(Throughput::Elements(BATCH_SIZE as u64));
        group.bench_function(BenchmarkId::new("forward-idle", n), |b| {
            b.iter(&mut forward)
        });
        group.throughput(Throughput::Elements(1024));

        let stop = Arc::new(AtomicBool::new(false));
        let churn = {
            let (tables, stop) = (Arc::clone(&tables), Arc::clone(&stop));
            thread::spawn(move || {
                let mut changes = 0u64;
                let mut busy = Duration::ZERO;
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let prefix = churn_prefix(changes as u32);
                    let started = Instant::now();
                    if changes % 2 == 0 {
                        tables.add_route(prefix, NextHop::Blackhole).unwrap();
                    } else {
                        tables
                            .remove_route(churn_prefix(changes as u32 - 1))
                            .unwrap();
                    }
                    busy += started.elapsed();
                    changes += 1;
                    next += Duration::from_millis(1);
                    thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                (changes, busy)
            })
        };
        group.bench_function(BenchmarkId::new("lookup-churn", n), |b| {
            b.iter(|| lookups(&tables, &mut at))
        });
        group.throughput(Throughput::Elements(BATCH_SIZE as u64));
        group.bench_function(BenchmarkId::new("forward-churn", n), |b| {
            b.iter(&mut forward)
        });
        stop.store(true, Ordering::Relaxed);
        let (changes, busy) = churn.join().unwrap();
        eprintln!(
            "routes {n}: {changes} changes during lookup-churn, {:.1} us each",
            busy.as_secs_f64() * 1e6 / changes.max(1) as f64
        );
    }
    group.finish();
}

criterion_group!(benches, bench_routes);
criterion_main!(benches);
