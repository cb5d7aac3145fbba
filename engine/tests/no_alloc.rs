//! Nothing allocates per packet: after a warm-up batch, running batches
//! through the pipeline (switching, VXLAN encapsulation and decapsulation,
//! an ICMP error) makes no heap allocation. A counting global allocator
//! checks it, on the test's own thread only: the test harness's main
//! thread allocates while it books the running test, and under load that
//! overlapped the loop (4 allocations counted, none of them the pipeline's).

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use podswitch_engine::config::Backend;
use podswitch_engine::encap::TunnelConfig;
use podswitch_engine::packet::{PacketBuf, BATCH_SIZE};
use podswitch_engine::pipeline::Outputs;
use podswitch_engine::port::PortId;
use support::*;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the thread whose allocations count (a `const` thread-local:
    /// reading it allocates nothing).
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTED.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter has no effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` came from `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn the_data_path_does_not_allocate() {
    let (mut node, bb1) = Node::flannel_with_peer(Backend::Vxlan);
    let bb2 = node.pod("veth-bb2", "10.244.1.3", BUSYBOX2_MAC);
    let cfg = node.tables.load().node.clone();
    let from_node2 = from_node2(
        &node,
        TunnelConfig::vxlan(),
        &ping_frame(NODE2_VTEP, cfg.vtep_mac, "10.244.2.5", "10.244.1.2", 64),
    );
    let cases: Vec<(PortId, Vec<u8>)> = vec![
        (
            bb1,
            ping_frame(BUSYBOX1_MAC, BUSYBOX2_MAC, "10.244.1.2", "10.244.1.3", 64),
        ),
        (
            bb1,
            ping_frame(
                BUSYBOX1_MAC,
                cfg.gateway_mac,
                "10.244.1.2",
                "10.244.2.5",
                64,
            ),
        ),
        (node.underlay, from_node2),
        (
            bb1,
            ping_frame(BUSYBOX1_MAC, cfg.gateway_mac, "10.244.1.2", "10.244.2.5", 1),
        ), // ICMP error
        (
            bb2,
            ping_frame(BUSYBOX2_MAC, BUSYBOX1_MAC, "10.244.1.3", "10.244.1.2", 64),
        ),
    ];
    let mut batch: Vec<PacketBuf> = Vec::with_capacity(BATCH_SIZE);
    let mut out = Outputs::new();
    let mut sent = 0u64;
    let mut round = |node: &mut Node, batch: &mut Vec<PacketBuf>, out: &mut Outputs| {
        for i in 0..BATCH_SIZE {
            let (port, frame) = &cases[i % cases.len()];
            batch.push(node.pool.alloc_with(*port, frame).unwrap());
        }
        node.pipeline.process(batch, &mut node.pool, out, node.now);
        let pool = &mut node.pool;
        out.drain(|_, b| {
            sent += b.len() as u64;
            pool.free_all(b);
        });
    };
    round(&mut node, &mut batch, &mut out); // warm-up: output batches reach their size
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTED.with(|c| c.set(true));
    for _ in 0..1000 {
        round(&mut node, &mut batch, &mut out);
    }
    COUNTED.with(|c| c.set(false));
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(
        allocations, 0,
        "{allocations} heap allocations in 32 000 packets"
    );
    // Every frame left, but the ICMP errors past the rate limit (counted).
    let limited = node
        .stats()
        .drop_count(podswitch_engine::drop::DropReason::IcmpRateLimited);
    assert!(
        sent + limited >= 1001 * BATCH_SIZE as u64,
        "every frame left ({sent}, {limited} ICMP errors rate-limited)"
    );
    assert_eq!(node.pool.in_use(), 0);
}
