//! Runs one pipeline case for a number of batches and nothing else, for
//! counting instructions under valgrind (`scripts/instructions.sh`): the
//! count does not drift with the machine the way time does, so a change
//! to the data path shows its cost per packet exactly. Same cases as
//! `benches/pipeline.rs`.
//!
//! Two more cases are not the pipeline's: what an AF_PACKET port's send
//! does to a batch of 32 datagrams of one flow before the system call,
//! merging them into one super-datagram (`udp-run-merged`) or not
//! (`udp-run-unmerged`: only the batch's copy into pool buffers and its
//! freeing, which both pay); the difference is the merge's cost.
//!
//! Usage: `instructions CASE BATCHES` (no arguments: the case names).

#[path = "support/frames.rs"]
mod frames;
#[path = "support/pipeline_cases.rs"]
mod pipeline_cases;

use std::net::Ipv4Addr;

use podswitch_engine::encap::{checksum, MacAddr};
use podswitch_engine::offload::coalesce_udp_runs;
use podswitch_engine::packet::{PacketPool, BATCH_SIZE, DEFAULT_BUF_SIZE};
use podswitch_engine::port::PortId;

use pipeline_cases::{cases, Runner};

const UDP_RUN_CASES: [&str; 2] = ["udp-run-merged", "udp-run-unmerged"];

/// A 64-byte datagram as a pod's socket sends it: DF, and a UDP checksum.
fn flow_datagram() -> Vec<u8> {
    let (src, dst) = (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 1, 3));
    let mut f = frames::frame64(
        MacAddr([2, 0, 0, 0, 0, 1]),
        MacAddr([2, 0, 0, 0, 0, 2]),
        src,
        dst,
    );
    f[20] = 0x40;
    f[24..26].fill(0);
    let ip = checksum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&ip.to_be_bytes());
    let pseudo = checksum::pseudo_header_v4(src, dst, 17, 30);
    let udp = !checksum::fold(checksum::accumulate(pseudo, &f[34..]));
    f[40..42].copy_from_slice(&udp.to_be_bytes());
    f
}

fn udp_run(merge: bool, batches: u64) {
    let frame = flow_datagram();
    let mut pool = PacketPool::with_large(4 * BATCH_SIZE, DEFAULT_BUF_SIZE, 4);
    let (mut batch, mut datagrams) = (Vec::with_capacity(BATCH_SIZE), Vec::new());
    for _ in 0..batches {
        for _ in 0..BATCH_SIZE {
            batch.push(pool.alloc_with(PortId(1), &frame).expect("a buffer"));
        }
        if merge {
            let merged = coalesce_udp_runs(&mut batch, &mut pool, &mut datagrams);
            assert_eq!(merged, (1, BATCH_SIZE), "one super-datagram");
        }
        pool.free_all(&mut batch);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let all = cases();
    let (Some(name), Some(batches)) = (args.first(), args.get(1)) else {
        for (name, _) in &all {
            println!("{name}");
        }
        for name in UDP_RUN_CASES {
            println!("{name}");
        }
        return;
    };
    let batches: u64 = batches.parse().expect("BATCHES: a number");
    if let Some(i) = UDP_RUN_CASES.iter().position(|c| c == name) {
        udp_run(i == 0, batches);
        return;
    }
    let setup = all
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no case {name}"))
        .1;
    let mut runner = Runner::new(name, setup);
    for _ in 0..batches {
        runner.batch();
    }
}
