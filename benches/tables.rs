//! FIB and FDB: lookups, inserts, memory.
//!
//! FIB route sets are what a large cluster's node holds, in 10.0.0.0/8:
//! a /24 per node, /26 Calico blocks inside them, and /32 pods, in the
//! proportion 1 : 4 : 45. Lookups are for addresses drawn uniformly from
//! 10.0.0.0/8 (so most miss every cache), 1024 per iteration.
//!
//! Reference, in the same run: the tree bitmap of
//! `ip_network_table-deps-treebitmap` (the IpLookupTable used by several
//! Rust VPN and firewall projects) holding the same routes.
//!
//! Run: `cargo bench --bench tables`.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ip_network_table_deps_treebitmap::IpLookupTable;
use podswitch_engine::encap::MacAddr;
use podswitch_engine::fdb::Fdb;
use podswitch_engine::fib::{NextHop, Prefix, RouteTable};
use podswitch_engine::port::PortId;

#[path = "support/routes.rs"]
mod routes;
use routes::{routes, Rng};

fn bench_fib(c: &mut Criterion) {
    let mut group = c.benchmark_group("fib");
    let mut rng = Rng(42);
    let keys: Vec<Ipv4Addr> = (0..1 << 16)
        .map(|_| Ipv4Addr::from(0x0a00_0000 | (rng.next() as u32 & 0x00ff_ffff)))
        .collect();
    for n in [1_000usize, 10_000, 100_000] {
        let set = routes(n);
        let load = |set: &[(Prefix, NextHop)]| {
            let mut table = RouteTable::new();
            for (p, nh) in set {
                table.insert(*p, *nh);
            }
            table.fib()
        };
        let started = Instant::now();
        let fib = load(&set);
        let build = started.elapsed();
        eprintln!(
            "fib {n} routes: build {:.2} ms ({:.1} M routes/s), {:.2} MiB",
            build.as_secs_f64() * 1e3,
            n as f64 / build.as_secs_f64() / 1e6,
            fib.memory_bytes() as f64 / (1 << 20) as f64
        );
        let mut reference = IpLookupTable::new();
        for (p, nh) in &set {
            reference.insert(p.addr(), u32::from(p.prefix_len()), *nh);
        }
        group.throughput(Throughput::Elements(1024));
        let mut at = 0usize;
        group.bench_function(BenchmarkId::new("lookup", n), |b| {
            b.iter(|| {
                let mut hits = 0u32;
                for _ in 0..1024 {
                    at = (at + 1) & 0xffff;
                    hits += fib.lookup(black_box(keys[at])).is_some() as u32;
                }
                hits
            })
        });
        group.bench_function(BenchmarkId::new("reference-treebitmap-lookup", n), |b| {
            b.iter(|| {
                let mut hits = 0u32;
                for _ in 0..1024 {
                    at = (at + 1) & 0xffff;
                    hits += reference.longest_match(black_box(keys[at])).is_some() as u32;
                }
                hits
            })
        });
        group.throughput(Throughput::Elements(n as u64));
        group.sample_size(10);
        group.bench_function(BenchmarkId::new("build", n), |b| {
            b.iter(|| black_box(load(&set).len()))
        });
        group.sample_size(100);
    }
    group.finish();
}

fn bench_fdb(c: &mut Criterion) {
    let mut group = c.benchmark_group("fdb");
    let fdb = Fdb::new(8192, 300);
    let macs: Vec<MacAddr> = (0..4096u32)
        .map(|i| {
            let b = i.to_be_bytes();
            MacAddr([2, 0x42, 0, b[1], b[2], b[3]])
        })
        .collect();
    for (i, m) in macs.iter().enumerate() {
        fdb.learn(*m, PortId(i as u16 % 64), 0);
    }
    group.throughput(Throughput::Elements(1024));
    let mut at = 0usize;
    group.bench_function("lookup-hit", |b| {
        b.iter(|| {
            let mut n = 0u32;
            for _ in 0..1024 {
                at = (at + 1) & 4095;
                n += fdb.lookup(black_box(macs[at]), 1).is_some() as u32;
            }
            n
        })
    });
    group.bench_function("learn-refresh", |b| {
        b.iter(|| {
            for _ in 0..1024 {
                at = (at + 1) & 4095;
                black_box(fdb.learn(black_box(macs[at]), PortId(at as u16 % 64), 1));
            }
        })
    });
    // New MACs: learn into an emptied table, 1024 at a time.
    let fresh = Fdb::new(1 << 20, 300);
    let mut next = 0u32;
    group.bench_function("learn-new", |b| {
        b.iter(|| {
            for _ in 0..1024 {
                next = next.wrapping_add(1);
                let x = next.to_be_bytes();
                black_box(fresh.learn(MacAddr([2, 0x43, x[0], x[1], x[2], x[3]]), PortId(1), 1));
            }
            if fresh.len() > 1 << 19 {
                fresh.flush();
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench_fib, bench_fdb);
criterion_main!(benches);
